"""Small file helpers shared by every step: outputs appear whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Readers never see a half-written file, and a crash leaves the previous
    version (or nothing) under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp_path = new_temporary(path)
    except OSError as err:
        raise naming_output(err, path) from err
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except Exception as err:
        failed = failed_write(err, tmp_path)
        if failed is None:
            raise
        raise naming_output(failed, path) from err
    finally:
        tmp_path.unlink(missing_ok=True)


def new_temporary(path: Path, folder: bool = False) -> Path:
    """Make a new, empty ``.NAME.<random>.part`` file (or folder) beside ``path`` and return it.

    It gets the usual permissions of a new file or folder (the umask applies).
    Unlike mkstemp's, its name is chosen before it is made, so a ^C arriving
    just after it is made, before the caller's cleanup is in place, still
    removes it instead of leaving it behind.
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
        try:
            if folder:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue  # another's: take another name
        except BaseException:
            if folder:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            raise


DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def disk_full(err: BaseException) -> OSError | None:
    """The no-space (or quota, or file-size limit) OSError behind ``err``, if a full disk is its cause.

    Libraries that write through Python file objects report the failure as
    their own error; the OSError is then its cause or context.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return err
        err = err.__cause__ or err.__context__
    return None


def failed_write(err: BaseException, tmp: Path) -> OSError | None:
    """The OSError behind ``err`` that should name the output being written instead: one naming the
    temporary ``tmp`` (a name that means nothing to the user), or a full disk's, which names no file
    at all (write() knows a descriptor only; a writer in C++, torch.save's zip writer, reports it as
    a RuntimeError of its own). None for any other error, which keeps its own message.
    """
    if isinstance(err, OSError) and err.filename in (str(tmp), tmp):
        return err
    full = disk_full(err)
    return full if full is not None and full.filename is None else None


def naming_output(err: OSError, path: Path, folder: bool = False) -> OSError:
    """``err`` about the output ``path`` (not a temporary name, or no name at all), saying it was not written.

    ``folder``: the output is a folder (else an existing folder there is why a file could not be written).
    """
    reason = err.strerror or str(err)
    if not folder and path.is_dir():
        reason = "is a folder, where this output file goes; move the folder away or choose another output"
    return type(err)(err.errno, f"{reason} (the output was not written)", str(path))


def check_writable(folder: Path, flag: str, keep: bool = True) -> None:
    """Create ``folder`` and write a scratch file into it, so an unusable output fails before any work.

    ``keep=False`` removes again the folders created for the check (writing the output creates them).
    """
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".stylepipe-check.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:  # mkdir's "File exists" or "Not a directory" would not say which
            raise ValueError(f"--{flag} {folder}: {blocker} is a file, not a folder; choose another --{flag}") from err
        raise ValueError(f"--{flag} {folder}: cannot write there ({err.strerror or err}); "
                         "choose a folder you can write to") from err
    finally:
        for path in created if not keep else ():  # deepest first; rmdir removes empty folders only
            try:
                path.rmdir()
            except OSError:
                continue


def check_output_files(outputs: Mapping[str, Path | None], suffixes: Mapping[str, Sequence[str]] | None = None) -> None:
    """Before any work, the output files of a command, by flag (``None``: not asked for): none is a
    folder, no two are one file, each has a suffix its format takes (``suffixes``, by flag), and each
    one's folder can be written (folders created for the check are removed again).
    Raises ValueError naming the flag and the path."""
    files = {flag: Path(path) for flag, path in outputs.items() if path is not None}
    seen: dict[str, str] = {}
    for flag, path in files.items():
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise ValueError(f"--{seen[key]} and --{flag} are both {path}: give each output its own file")
        seen[key] = flag
        if path.is_dir():
            raise ValueError(f"--{flag} {path}: is a folder; give a file path")
        allowed = (suffixes or {}).get(flag)
        if allowed and path.suffix.lower() not in allowed:
            raise ValueError(f"--{flag} {path}: written as {allowed[0][1:].upper()}; give a name ending in "
                             + " or ".join(allowed))
    for folder, flag in {path.parent: flag for flag, path in files.items()}.items():
        check_writable(folder, flag, keep=False)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, keys sorted so equal data gives equal bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # ValueErrors: the commands report them in one line
        raise ValueError(f"{path}: not valid JSON ({err}); rerun the step that writes it") from None
