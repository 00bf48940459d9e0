"""`stylepipe train`: train one style's TransformerNet with Lightning.

This module only builds objects (DataModule, LightningModule, callbacks,
loggers, Trainer) from params and calls ``fit``; it resumes by itself from
the newest checkpoint of the same configuration in ``--scratch``.

On SIGTERM or SIGUSR1 the current step finishes, a checkpoint is written to
``--scratch`` and the command exits with status 128 + signal number, so
Snakemake and Slurm see that the step did not finish; running the same
command again continues from there and ends with the same weights (on CPU,
bit for bit) as a run that was never interrupted.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from stylepipe.config import load_params, style_resources, train_params
from stylepipe.io import atomic_path, check_writable, write_json

CURVE_COLUMNS = ["step", "content_loss", "style_loss", "tv_loss", "total_loss", "lr"]
LOSS_NAMES = CURVE_COLUMNS[1:5]
VAL_CURVE_COLUMNS = ["step", *LOSS_NAMES]
# training values that change how a run is carried out, not what it computes (val_images is not one:
# it decides which images train; early stopping and, with it, val_check_interval decide when the run ends)
OPERATIONAL_KEYS = {"num_workers", "log_every_n_steps", "checkpoint_every_n_steps", "val_check_interval",
                    "early_stopping_patience", "devices", "num_nodes", "strategy", "accelerator"}
STOPPING_KEYS = ("early_stopping_patience", "val_check_interval")
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", nargs="+", required=True, metavar="FILE", help="params files, merged in order")
    parser.add_argument("--style", required=True, help="style name (a key of `styles` in params)")
    parser.add_argument("--data", required=True, type=Path, help="resized shard dir (with manifest.json) or a folder of images")
    parser.add_argument("--style-image", required=True, type=Path, help="the style image (data/styles/STYLE.png)")
    parser.add_argument("--loss-network", required=True, type=Path, help="VGG16 features state_dict")
    parser.add_argument("--model", required=True, type=Path, help="output: TransformerNet state_dict (.pth)")
    parser.add_argument("--onnx", type=Path, help="output: ONNX export")
    parser.add_argument("--checkpoint", type=Path, help="output: the final Lightning checkpoint")
    parser.add_argument("--summary", type=Path, help="output: summary JSON")
    parser.add_argument("--curves", type=Path, help="output: per-step loss curves (CSV)")
    parser.add_argument("--val-curves", type=Path,
                        help="output: the validation losses of every validation (CSV)")
    parser.add_argument("--scratch", required=True, type=Path, help="resume checkpoints and TensorBoard logs")


class Preempted(Exception):
    def __init__(self, signum: int, path: Path, step: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.signum, self.path, self.step = signum, path, step


def fingerprint(tp: dict, seed: int, world_size: int, *files: Path, data: Path) -> str:
    """Identifies what a run computes: a checkpoint of another configuration is never resumed.

    The number of processes counts (each takes its own share of every batch
    step's data, so it sets the global batch); how they are spread over
    devices and nodes does not.
    """
    values = {k: v for k, v in tp.items() if k not in OPERATIONAL_KEYS}
    if tp["early_stopping_patience"]:
        values |= {k: tp[k] for k in STOPPING_KEYS}  # when the run stops
    if tp["max_steps"] > 0:
        del values["epochs"]  # max_steps bounds the run alone
    h = hashlib.sha256()
    h.update(json.dumps(values | {"seed": seed, "processes": world_size}, sort_keys=True).encode())
    for path in files:
        h.update(hashlib.sha256(path.read_bytes()).digest())
    manifest = data / "manifest.json"
    if manifest.is_file():
        h.update(manifest.read_bytes())
    else:
        from stylepipe.datamodule import list_images

        for p in list_images(data):
            st = p.stat()
            h.update(f"{p.relative_to(data)}:{st.st_size}".encode())
    return h.hexdigest()[:16]


SUPERSEDED = "superseded"  # scratch/superseded/<fingerprint>/: checkpoints of earlier configurations


def find_checkpoints(scratch: Path, fp: str) -> tuple[Path | None, dict[Path, str]]:
    """The checkpoint to resume from, and the checkpoints of other configurations in ``scratch``.

    Resume candidates are this configuration's checkpoints (ours, Lightning's
    last/hpc_ckpt_*), in ``scratch`` or set aside under ``superseded/<fp>/``
    when another configuration ran in between: the one with the most steps,
    then the newest.
    """
    best: tuple[int, int, Path] | None = None
    others: dict[Path, str] = {}
    for path in [*sorted(scratch.glob("*.ckpt")), *sorted((scratch / SUPERSEDED / fp).glob("*.ckpt"))]:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except FileNotFoundError:  # moved aside meanwhile by rank 0
            continue
        except Exception as err:  # a checkpoint of an older version, or a damaged file: skip it
            print(f"stylepipe train: ignoring unreadable checkpoint {path}: {err}", file=sys.stderr)
            continue
        if ckpt.get("stylepipe_fingerprint") != fp:
            others[path] = str(ckpt.get("stylepipe_fingerprint"))
            continue
        key = (int(ckpt.get("global_step", -1)), path.stat().st_mtime_ns, path)
        if best is None or key[:2] > best[:2]:
            best = key
    return (best[2] if best else None), others


def set_aside(scratch: Path, others: dict[Path, str]) -> None:
    """Move other configurations' checkpoints out of the way: kept, never overwritten, resumable if that configuration returns."""
    for path, fp in others.items():
        target = scratch / SUPERSEDED / fp / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)
    if others:
        print(f"stylepipe train: {len(others)} checkpoint(s) of another configuration moved to "
              f"{scratch / SUPERSEDED}/ (delete them when no longer needed)", file=sys.stderr)


def _callbacks():
    from pytorch_lightning.callbacks import Callback

    class Preemption(Callback):
        """SIGTERM/SIGUSR1 → finish the step, checkpoint into scratch, stop with an error.

        Installed at train start, after Lightning's own handlers, which it
        replaces for the run: Lightning's SIGUSR1 handler under Slurm saves from
        inside the signal handler, mid-step, and requeues the job behind the
        workflow manager's back.

        At a step that validates, it stops after the validation (and after
        early stopping has seen it): a checkpoint written before it would be
        resumed past it, since Lightning does not rerun a validation that was
        due when the checkpoint was written.
        """

        def __init__(self, path: Path, val_every: int):
            self.path = path
            self.val_every = val_every  # optimizer steps between validations
            self.signum: int | None = None
            self._previous: dict[int, Any] = {}
            self._step = 0

        def _handler(self, signum: int, frame: Any) -> None:
            self.signum = signum

        def on_train_start(self, trainer, pl_module) -> None:
            import threading

            check_same_start(trainer, pl_module, self.path.parent)
            if threading.current_thread() is threading.main_thread():
                for sig in PREEMPT_SIGNALS:
                    self._previous[sig] = signal.signal(sig, self._handler)
            self._step = trainer.global_step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == self._step:
                return  # mid gradient accumulation: the summed gradients are not in a checkpoint
            self._step = trainer.global_step
            if trainer.global_step % self.val_every:
                self._stop_if_signalled(trainer)

        def on_validation_end(self, trainer, pl_module) -> None:
            self._stop_if_signalled(trainer)

        def _stop_if_signalled(self, trainer) -> None:
            if trainer.should_stop:
                return  # early stopping just ended the run: it finishes (a checkpoint now would resume past that)
            flag = self.signum is not None
            if trainer.world_size > 1:
                flag = trainer.strategy.reduce_boolean_decision(flag, all=False)
            if flag:
                trainer.save_checkpoint(self.path)
                raise Preempted(self.signum or signal.SIGTERM, self.path, trainer.global_step)

        def teardown(self, trainer, pl_module, stage: str) -> None:
            for sig, handler in self._previous.items():
                if handler is not None:
                    signal.signal(sig, handler)
            self._previous = {}

    class Finished(Callback):
        """Marks the final checkpoint: a finished run started again does not train on.

        (Without it, an early-stopped run resumed from its final checkpoint
        would train until the next validation and stop again, further each time.)
        """

        def __init__(self):
            self.finished = False

        def on_train_start(self, trainer, pl_module) -> None:
            if self.finished:
                trainer.should_stop = True

        def state_dict(self) -> dict:
            return {"finished": self.finished}

        def load_state_dict(self, state: dict) -> None:
            self.finished = bool(state.get("finished", False))

    class Curves(Callback):
        """Per-step losses and learning rate, kept in the checkpoint so resumed runs have whole curves.

        A row every ``every`` optimizer steps, and one for the last step (as
        Lightning logs when a run stops), so the summary's losses are final.
        Its losses are the means over the batches that step accumulated, its
        ``lr`` the rate after the step (what schedules reach at the last step). The same values go to TensorBoard,
        at the same step numbers (optimizer steps done), as do the validation
        losses: the plain file, the scalars and the image grid agree. Each
        validation's losses are a row of ``val_rows``.
        """

        def __init__(self, every: int):
            self.every = every
            self.rows: list[dict] = []
            self.val_rows: list[dict] = []  # one per validation: its step and losses
            self.images = 0  # training images seen, all processes
            self.wall_time = 0.0
            self._start = None
            self._step = 0
            self._window: list[dict[str, torch.Tensor]] = []  # the losses of the batches of the current step
            self._pending: dict | None = None  # the last step's row when it was not written (tensors until needed)

        def on_train_start(self, trainer, pl_module) -> None:
            self._start = time.perf_counter()
            self._step = trainer.global_step

        def elapsed(self) -> float:
            return self.wall_time + (time.perf_counter() - self._start if self._start is not None else 0.0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.images += len(batch) * trainer.world_size
            self._window.append({k: outputs[k].detach() for k in LOSS_NAMES})
            if trainer.global_step == self._step:
                return  # mid gradient accumulation
            self._step = step = trainer.global_step
            window, self._window = self._window, []
            # means as tensors: no device sync on steps without a row
            losses = torch.stack([torch.stack([w[k] for w in window]).float().mean() for k in LOSS_NAMES])
            if trainer.world_size > 1:
                # each process saw its own share of the batch: the batch's losses are the mean over them
                # (every step, on every process alike; asynchronous, like the means)
                losses = trainer.strategy.reduce(losses, reduce_op="mean")
            row = {"step": step, **dict(zip(LOSS_NAMES, losses.unbind())),
                   "lr": float(trainer.optimizers[0].param_groups[0]["lr"])}
            self._pending = None
            if step % self.every:
                self._pending = row
            else:
                self._add_row(trainer, row)

        def on_train_end(self, trainer, pl_module) -> None:
            self.finish(trainer)

        def finish(self, trainer, log: bool = True) -> None:
            """Add the last step's row if it has none. Also called after a fit that resumed at its last
            step (Lightning then skips the training hooks; TensorBoard has closed: the file gets the row)."""
            if self._pending is not None and self._pending["step"] == trainer.global_step:
                self._add_row(trainer, self._pending, log)
            self._pending = None

        def _add_row(self, trainer, row: dict, log: bool = True) -> None:
            row = {k: (v if k == "step" else float(v)) for k, v in row.items()}
            self.rows.append(row)
            if log:
                log_scalars(trainer, {**{f"train/{k}": row[k] for k in LOSS_NAMES}, "lr": row["lr"]}, row["step"])

        def on_validation_end(self, trainer, pl_module) -> None:
            losses = {k: float(trainer.callback_metrics[f"val/{k}"]) for k in LOSS_NAMES}
            if self.val_rows and self.val_rows[-1]["step"] == trainer.global_step:
                self.val_rows.pop()  # validated again at the same step (a resume): the newer values
            self.val_rows.append({"step": trainer.global_step, **losses})
            log_scalars(trainer, {f"val/{k}": v for k, v in losses.items()}, trainer.global_step)

        @property
        def val(self) -> dict[str, float]:
            """The last validation's losses."""
            return {k: v for k, v in self.val_rows[-1].items() if k != "step"} if self.val_rows else {}

        def state_dict(self) -> dict:
            pending = self._pending and {k: v if k == "step" else float(v) for k, v in self._pending.items()}
            return {"rows": self.rows, "val_rows": self.val_rows, "images": self.images,
                    "wall_time": self.elapsed(), "pending": pending}

        def load_state_dict(self, state: dict) -> None:
            self.rows = list(state.get("rows", []))
            self.val_rows = list(state.get("val_rows", []))
            self.images = int(state.get("images", 0))
            self.wall_time = float(state.get("wall_time", 0.0))
            self._pending = state.get("pending")

    return Preemption, Curves, Finished


def check_same_start(trainer, pl_module, scratch: Path) -> None:
    """Every process must start from the same step; they do not when some found no checkpoint to resume from.

    That happens on several nodes when ``--scratch`` is node-local: only rank 0
    writes checkpoints, so the other nodes would start over while it resumes,
    and the processes would wait for each other forever.
    """
    if trainer.world_size == 1:
        return
    step = torch.tensor(trainer.global_step, device=pl_module.device)
    first, last = (int(trainer.strategy.reduce(step.clone(), reduce_op=op)) for op in ("min", "max"))
    if first != last:
        raise ValueError(f"--scratch {scratch}: the processes start at different steps ({first} to {last}): rank 0 "
                         "writes the checkpoints, so every node must see the same --scratch folder (a shared "
                         "filesystem, not a node-local disk)")


def log_scalars(trainer, metrics: dict[str, float], step: int) -> None:
    """To every logger at ``step`` optimizer steps done (Lightning's own x-axis is one less: steps before the batch)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def _atomic_checkpoint_io():
    from lightning_fabric.plugins import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Checkpoints written beside their final name, then renamed: whole even when $TMPDIR is another filesystem.

        (Lightning's own atomic save stages the file in $TMPDIR; from a
        node-local /tmp to network scratch its final move is a copy, which a
        kill can cut short.)
        """

        def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
            if storage_options is not None:
                raise TypeError("storage_options are not supported for local checkpoints")
            # through a file object: torch.save names the zip's folder after a path (here the random temp name)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                torch.save(checkpoint, f)

    return AtomicCheckpointIO()


def write_curves(path: Path, rows: list[dict], columns: list[str] = CURVE_COLUMNS) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (row[k] if k == "step" else f"{row[k]:.8g}") for k in columns})


def build_trainer(tp: dict, scratch: Path, callbacks: list, loggers: list):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar

    accelerator = tp["accelerator"]
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    checkpoint = ModelCheckpoint(
        dirpath=scratch,
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=tp["checkpoint_every_n_steps"],
        save_top_k=1,
        save_last=True,
    )
    early_stopping = []
    if tp["early_stopping_patience"]:
        early_stopping = [EarlyStopping(monitor="val/total_loss", mode="min", patience=tp["early_stopping_patience"])]
    # early stopping first: it has seen a validation before a preemption checkpoint is written after it
    callbacks = [*early_stopping, *callbacks, checkpoint, TQDMProgressBar()]
    return pl.Trainer(
        accelerator=accelerator,
        devices=tp["devices"],
        num_nodes=tp["num_nodes"],
        strategy=tp["strategy"],
        precision=tp["precision"],
        # a positive max_steps bounds the run alone; -1 runs `epochs` epochs
        max_epochs=-1 if tp["max_steps"] > 0 else tp["epochs"],
        max_steps=tp["max_steps"],
        accumulate_grad_batches=tp["accumulate_grad_batches"],
        gradient_clip_val=tp["gradient_clip_val"],
        # validate every N optimizer steps, across epoch boundaries
        val_check_interval=tp["val_check_interval"] * tp["accumulate_grad_batches"],
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        # on CUDA, warn rather than fail should an op lack a deterministic kernel (none of the eager step's does)
        deterministic=("warn" if on_cuda else True) if tp["deterministic"] else False,
        log_every_n_steps=tp["log_every_n_steps"],
        default_root_dir=scratch,
        callbacks=callbacks,
        logger=loggers,
        use_distributed_sampler=False,  # ResumableSampler splits the data between processes itself
        enable_model_summary=False,
        plugins=[_atomic_checkpoint_io()],
    )


def main(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"stylepipe train: error: {err}", file=sys.stderr)
        return 2


OUTPUT_FLAGS = ("model", "onnx", "checkpoint", "summary", "curves", "val_curves")


def check_outputs(args: argparse.Namespace) -> None:
    """Create --scratch and every output's folder and write a scratch file into each; refuse outputs
    that are folders or that name the same file twice. Raises ValueError naming the flag and the path."""
    files = {flag.replace("_", "-"): getattr(args, flag) for flag in OUTPUT_FLAGS
             if getattr(args, flag, None) is not None}
    seen: dict[str, str] = {}
    for flag, path in files.items():
        key = os.path.realpath(path)
        if key in seen:
            raise ValueError(f"--{seen[key]} and --{flag} are both {path}: give each output its own file")
        seen[key] = flag
        if path.is_dir():
            raise ValueError(f"--{flag} {path}: is a folder; give a file path")
    folders = {args.scratch: "scratch", **{path.parent: flag for flag, path in files.items()}}
    for folder, flag in folders.items():
        check_writable(folder, flag)


HARDWARE_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def trainer_from_params(tp: dict, scratch: Path, callbacks: list, loggers: list):
    """``build_trainer``, with Lightning's refusal of the hardware values as a params error naming them."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        return build_trainer(tp, scratch, callbacks, loggers)
    except (MisconfigurationException, ValueError) as err:
        given = ", ".join(f"train.{k} = {tp[k]}" for k in HARDWARE_KEYS)
        raise ValueError(f"Lightning refused {given}: {' '.join(str(err).split())} "
                         "Change them in the params (a style may override them under styles.<name>).") from err


def check_train_values(tp: dict) -> None:
    """Refuse combinations the schema cannot see that would train nothing or ignore a setting."""
    if tp["max_steps"] == 0:
        raise ValueError("train.max_steps is 0, which trains nothing: give a number of optimizer steps, "
                         "or -1 to run train.epochs epochs")
    if tp["early_stopping_patience"] and 0 < tp["max_steps"] < tp["val_check_interval"]:
        raise ValueError(f"train.early_stopping_patience is set but train.val_check_interval "
                         f"({tp['val_check_interval']}) exceeds train.max_steps ({tp['max_steps']}): the run would "
                         "never validate, so never stop early; lower val_check_interval or set the patience to null")


NODE_LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK")


def check_node_launch(tp: dict, trainer) -> None:
    """Several nodes outside Slurm and torchrun: refuse to start without the variables that let the nodes meet.

    Without them this process would wait for the other nodes until the process
    group times out (30 minutes), as no node knows where to find node 0.
    """
    from lightning_fabric.plugins.environments import LightningEnvironment

    if tp["num_nodes"] == 1 or type(getattr(trainer.strategy, "cluster_environment", None)) is not LightningEnvironment:
        return
    given = {*os.environ, *(["NODE_RANK"] if "GROUP_RANK" in os.environ else [])}  # Lightning reads either
    missing = [name for name in NODE_LAUNCH_VARIABLES if name not in given]
    if missing:
        raise ValueError(f"train.num_nodes is {tp['num_nodes']} but the environment lacks {', '.join(missing)}: "
                         "start the same command on every node with MASTER_ADDR (node 0's address), MASTER_PORT "
                         "(a free port on node 0) and NODE_RANK (0 on node 0, 1, ... on the others), or under Slurm "
                         "with srun (docs/training.md); for one node set train.num_nodes to 1")


def cpu_threads(params: dict, style: str) -> int:
    """Set and return the number of threads torch computes with on the CPU.

    Snakemake runs a training job with ``OMP_NUM_THREADS`` set to its threads,
    ``resources.train.cpus_per_task``; that count is kept. Without it (``dvc
    repro``, by hand) the same count is used, at most the CPUs this process
    may run on: under ``bf16-mixed`` the weights depend on the thread count
    (oneDNN splits its sums by thread), so both runners train the same
    weights on any machine with that many CPUs.
    """
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        threads = int(given)
    else:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = min(int(style_resources(params, style, "train").get("cpus_per_task", 1)), usable)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # and the processes Lightning starts for DDP
    torch.set_num_threads(threads)
    return threads


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    tp = train_params(params, args.style)
    check_train_values(tp)
    seed = int(params["seed"])
    cpu_threads(params, args.style)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
    # the loss network is in eval mode on purpose; the DataModule restores the sampler position itself
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")

    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from stylepipe.datamodule import ContentDataModule
    from stylepipe.models.vgg import load_features_state
    from stylepipe.module import StyleTransferModule, load_style_image

    pl.seed_everything(seed, workers=True, verbose=False)
    style_image = load_style_image(args.style_image, tp["style_size"])
    vgg_state = load_features_state(args.loss_network)
    if not args.data.exists():
        raise FileNotFoundError(f"{args.data}: training data not found; create it with `stylepipe resize` "
                                f"(or `snakemake {args.data}`), or pass a folder of images")
    check_outputs(args)  # before any training: an output that cannot be written fails now, not at the end

    datamodule = ContentDataModule(args.data, tp["image_size"], tp["batch_size"], tp["val_images"], seed, tp["num_workers"])
    module = StyleTransferModule(
        style_image,
        vgg_state,
        lr=tp["lr"],
        lr_schedule=tp["lr_schedule"],
        content_weight=tp["content_weight"],
        style_weight=tp["style_weight"],
        tv_weight=tp["tv_weight"],
        content_layers=tp["content_layers"],
        style_layers=tp["style_layers"],
        style_layer_weights=tp["style_layer_weights"],
        channels_last=tp["channels_last"],
    )
    if tp["compile"]:
        module.compile_losses()

    Preemption, Curves, Finished = _callbacks()
    # preempted.ckpt, not last.ckpt: that name is ModelCheckpoint's, which would version its own as last-v1
    preemption = Preemption(args.scratch / "preempted.ckpt", tp["val_check_interval"])
    curves, finished = Curves(tp["log_every_n_steps"]), Finished()
    loggers = [TensorBoardLogger(save_dir=args.scratch, name="", version="tensorboard", default_hp_metric=False)]
    # curves first: a preempted step is recorded before the checkpoint is written
    trainer = trainer_from_params(tp, args.scratch, [curves, preemption, finished], loggers)
    check_node_launch(tp, trainer)

    module.fingerprint = fp = fingerprint(tp, seed, trainer.world_size, args.style_image, args.loss_network, data=args.data)
    resume, others = find_checkpoints(args.scratch, fp)
    if trainer.is_global_zero:
        set_aside(args.scratch, others)
        if resume is not None:
            print(f"stylepipe train: resuming from {resume}", file=sys.stderr)
        record_attempt(args.scratch, f"resuming from {resume}" if resume is not None else "started")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    except Preempted as stop:
        if trainer.is_global_zero:
            print(f"stylepipe train: {stop}; checkpoint saved to {stop.path}. "
                  "Run the same command again to resume.", file=sys.stderr)
            record_attempt(args.scratch, f"{stop}; checkpoint saved to {stop.path}")
        return 128 + int(stop.signum)
    except SIGTERMException:
        # SIGTERM caught by Lightning's own handler before ours was installed (start-up):
        # a SystemExit with status 0 otherwise, which would look like success
        print("stylepipe train: interrupted by SIGTERM while starting; run the same command again", file=sys.stderr)
        if trainer.is_global_zero:
            record_attempt(args.scratch, "interrupted by SIGTERM while starting")
        return 128 + signal.SIGTERM
    if trainer.interrupted:
        return 1

    final = args.scratch / "final.ckpt"
    curves.finish(trainer, log=False)
    finished.finished = True
    trainer.save_checkpoint(final)
    if not trainer.is_global_zero:
        return 0
    net = _plain_copy(module.transformer)  # compile_losses() leaves the module itself unwrapped
    # through a file object: torch.save names the zip's folder after a path (here the random temp name)
    with atomic_path(args.model) as tmp, open(tmp, "wb") as f:
        torch.save(net.state_dict(), f)
    if args.onnx:
        from stylepipe.export import export_onnx

        export_onnx(net, args.onnx)
    if args.checkpoint:
        export_checkpoint(final, args.checkpoint)
    if args.curves:
        write_curves(args.curves, curves.rows)
    if args.val_curves:
        write_curves(args.val_curves, curves.val_rows, VAL_CURVE_COLUMNS)
    if args.summary:
        write_json(args.summary, _summary(args.style, trainer, tp, datamodule, curves))
    record_attempt(args.scratch, f"finished at step {trainer.global_step}")
    return 0


def record_attempt(scratch: Path, event: str) -> None:
    """Append one line to ``scratch/attempts.log``: when (UTC), the Slurm job if any, what happened.

    Snakemake deletes a job's log before every attempt; --scratch outlives them
    all, so this file tells the whole story of a training that was preempted,
    requeued or retried: where each attempt started and stopped.
    """
    from datetime import datetime, timezone

    job = os.environ.get("SLURM_JOB_ID")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(scratch / "attempts.log", "a", encoding="utf-8") as log:
        log.write(f"{when}{f' slurm job {job}' if job else ''}: {event}\n")


# checkpoint paths ModelCheckpoint records, made absolute by Lightning
CHECKPOINT_PATH_KEYS = ("dirpath", "best_model_path", "last_model_path", "kth_best_model_path")


def export_checkpoint(final: Path, path: Path) -> None:
    """Write the final checkpoint to ``path`` with the same bytes for the same run, wherever and whenever it ran.

    It is a DVC output, so what varies between equal runs stays out:
    ModelCheckpoint's absolute paths become relative to the working directory
    (the repository root, for both runners), and the accumulated wall time
    goes (it is in the summary).
    """
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint"):
            for name in CHECKPOINT_PATH_KEYS:
                if state.get(name):
                    state[name] = os.path.relpath(state[name])
            state["best_k_models"] = {os.path.relpath(p): v for p, v in state.get("best_k_models", {}).items()}
        elif key.endswith(".Curves"):
            state.pop("wall_time", None)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(ckpt, f)


def _plain_copy(transformer: torch.nn.Module):
    """A CPU fp32 contiguous TransformerNet, loadable anywhere (no channels_last strides in the file)."""
    from stylepipe.models.transformer import TransformerNet

    net = TransformerNet()
    state = {k: v.detach().float().cpu().contiguous() for k, v in transformer.state_dict().items()}
    net.load_state_dict(state)
    return net.eval()


def _summary(style: str, trainer, tp: dict, datamodule, curves) -> dict:
    steps = int(trainer.global_step)
    world = int(trainer.world_size)
    images_seen = curves.images
    wall = curves.elapsed()
    last = curves.rows[-1] if curves.rows else {}
    device = str(trainer.strategy.root_device)
    if trainer.strategy.root_device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(trainer.strategy.root_device)})"
    return {
        "style": style,
        "steps": steps,
        # epochs trained: an epoch is the images it trains on (whole batches and accumulation windows)
        "epochs": round(images_seen / max(1, len(datamodule.sampler) * world), 4),
        "images_seen": images_seen,
        "wall_time_s": round(wall, 3),
        "images_per_s": round(images_seen / wall, 3) if wall > 0 else None,
        "precision": str(tp["precision"]),
        "device": device,
        "processes": world,
        "cpu_threads": torch.get_num_threads(),  # per process; on the CPU the weights depend on it (bf16)
        # who started the processes: SLURMEnvironment under srun, LightningEnvironment when Lightning did
        "cluster_environment": type(getattr(trainer.strategy, "cluster_environment", None)).__name__
        if world > 1 else None,
        "train_losses": {k: last[k] for k in LOSS_NAMES if k in last},
        "val_losses": dict(sorted(curves.val.items())),
    }
