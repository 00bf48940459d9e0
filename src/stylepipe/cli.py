"""The `stylepipe` command: one subcommand per pipeline step.

Each step lives in its own module exposing ``add_arguments(parser)`` and
``main(args) -> int``; only the chosen module is imported, so `stylepipe --help`
stays fast and a step's heavy imports are paid only by that step.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from stylepipe import __version__
from stylepipe.config import ParamsError

COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("stylepipe.data.download", "download a file with resume, verify its checksum, optionally extract it"),
    "fetch": ("stylepipe.data.sources", "fetch what params.yaml names: content set, eval images, a style image, the loss network"),
    "resize": ("stylepipe.data.resize", "resize + centre-crop a folder of images into shards with a manifest"),
    "train": ("stylepipe.train", "train one style's TransformerNet with Lightning"),
    "stylize": ("stylepipe.stylize", "stylize images with a trained model (.pth, .onnx or a .ckpt checkpoint)"),
    "evaluate": ("stylepipe.evaluate", "compute one style's metrics on the evaluation set"),
    "report": ("stylepipe.report", "collect all styles' metrics and draw the gallery"),
    "compare": ("stylepipe.compare", "compare params, metrics, curves and images across git revisions"),
}


# What bad input raises: a params error (ParamsError), a missing, unreadable or
# unwritable file (OSError: FileNotFoundError, PermissionError, ...), a file
# that is not what it should be (ValueError: image, model, JSON, ...). The
# steps raise these with messages that name the file or key and the fix; they
# end the command with one line and status 2. Anything else is a bug and keeps
# its traceback (status 1); STYLEPIPE_TRACEBACK=1 shows one for these too.
USER_ERRORS = (ParamsError, OSError, ValueError)


def user_message(err: BaseException) -> str:
    """One line: an OSError as 'file: reason', anything else as its message."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        where = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
        return f"{where}: {err.strerror}"
    text = " ".join(str(err).split()) or type(err).__name__
    return text


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylepipe",
        usage="%(prog)s [-h] [--version] COMMAND [options]",
        description="Reproducible fast neural style transfer: one command per pipeline step.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items())
        + "\n\n`stylepipe COMMAND --help` lists a command's options. Bad input ends a command with one line,\n"
        "`stylepipe COMMAND: error: ...`, and exit status 2. Snakemake and DVC run these commands for\n"
        "you (`snakemake -n -p` prints them); README.md and docs/ describe the pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"stylepipe {__version__}")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="the step to run (see below)")
    return parser


class Terminated(BaseException):
    """SIGTERM (a cluster's time limit, `scancel`, `kill`): raised so that the half-written
    outputs of a step are removed on the way out, as on ^C. A BaseException, like
    KeyboardInterrupt: the handlers that skip a bad input and go on must not catch it."""


def _terminate(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"stylepipe {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    # training checkpoints on SIGTERM and resumes from there (train.py); signals reach the main thread only
    on_sigterm = name != "train" and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_sigterm else None
    try:
        return int(module.main(args) or 0)
    except USER_ERRORS as err:
        if os.environ.get("STYLEPIPE_TRACEBACK"):
            raise
        print(f"stylepipe {name}: error: {user_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("STYLEPIPE_TRACEBACK"):
            raise
        # every output is written whole or not at all, so what is there is complete
        print(f"stylepipe {name}: interrupted (^C); outputs not yet finished were not written", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        if os.environ.get("STYLEPIPE_TRACEBACK"):
            raise
        print(f"stylepipe {name}: stopped by SIGTERM; outputs not yet finished were not written", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if on_sigterm and previous is not None:  # as it was, for a caller that goes on (the tests call main() in one process)
            signal.signal(signal.SIGTERM, previous)
