"""The Lightning callbacks of `stylepipe train`, and the curves files they keep.

- ``Curves``: the training losses of every step and the losses of every
  validation, kept in the checkpoint (a resumed run's curves are whole),
  logged to TensorBoard (``log_scalars``) and written as CSV (``write_curves``).
- ``Preemption``: on SIGTERM/SIGUSR1, finish the step (and its validation),
  checkpoint, stop with ``Preempted``.
- ``Finished``: marks the checkpoints of a finished run, which started again
  trains no further.
- ``PeriodicCheckpoint``: Lightning's ModelCheckpoint every N steps, written
  after the validation at a step that validates.
- ``SameStart``: with several processes, stops them all unless each resumes
  from the same checkpoint (a ``--scratch`` every node sees).

Only ``stylepipe train`` imports this module, once its arguments and params
are checked: it imports Lightning, which ``stylepipe --help``, the other
commands and train's own argument errors do not wait for.
"""

from __future__ import annotations

import contextlib
import csv
import math
import signal
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from stylepipe.io import atomic_path

CURVE_COLUMNS = ["step", "content_loss", "style_loss", "tv_loss", "total_loss", "lr"]
LOSS_NAMES = CURVE_COLUMNS[1:5]
VAL_CURVE_COLUMNS = ["step", *LOSS_NAMES]
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # SIGINT: ^C in a terminal
# Where checkpoints keep the states of Curves and Finished: the names they have had since these
# classes were defined inside a function of train.py. Kept, so that checkpoints written before
# resume whole (their curves, their finished mark) and the exported final checkpoint keeps its bytes.
CURVES_STATE_KEY = "_callbacks.<locals>.Curves"
FINISHED_STATE_KEY = "_callbacks.<locals>.Finished"


class Preempted(Exception):
    """Raised out of ``fit`` by Preemption once its checkpoint is written: the run stops with status 128 + signum."""

    def __init__(self, signum: int, path: Path, step: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.signum, self.path, self.step = signum, path, step


@contextlib.contextmanager
def signal_handlers_kept(signals: tuple[int, ...] = PREEMPT_SIGNALS) -> Iterator[None]:
    """Put the handlers of ``signals`` back as they were when the block ends, however it ends.

    Left in place after a fit, Preemption's handler would swallow a SIGTERM
    while the model is exported; Lightning's exception path skips the
    callbacks' teardown, so this is done around ``fit``, not in a hook.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None:  # None: set outside Python, cannot be put back from here
                signal.signal(sig, handler)


class Preemption(Callback):
    """SIGTERM/SIGUSR1/SIGINT → finish the step, checkpoint into scratch, stop with an error.

    Its handler goes in at setup, before Lightning registers its own:
    Lightning leaves a signal that has a handler already to it, so its Slurm
    SIGUSR1 handler (which saves from inside the signal handler, mid-step,
    and requeues the job behind the workflow manager's back) is never
    installed; SIGTERM, which Lightning chains with ours, is ours alone
    again from train start. Run ``fit`` inside :func:`signal_handlers_kept`:
    Lightning's teardown puts back the handlers it found, ours by then.

    At a step that validates, it stops after the validation (and after
    early stopping has seen it): a checkpoint written before it would be
    resumed past it, since Lightning does not rerun a validation that was
    due when the checkpoint was written.
    """

    def __init__(self, path: Path, val_every: int):
        self.path = path
        self.val_every = val_every  # optimizer steps between validations
        self.signum: int | None = None
        self.keyboard_interrupt = False  # fit ended by a KeyboardInterrupt, which Lightning turns into exit(1)
        self._previous: dict[int, Any] = {}
        self._step = 0

    def _handler(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # ^C twice: stop now, without the checkpoint
        self.signum = signum

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in PREEMPT_SIGNALS:
                self._previous.setdefault(sig, signal.signal(sig, self._handler))

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._install()

    def on_train_start(self, trainer, pl_module) -> None:
        self._install()
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
            trainer.save_checkpoint(self.path, weights_only=False)
            raise Preempted(self.signum or signal.SIGTERM, self.path, trainer.global_step)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # ^C twice, or once before this handler is in: Lightning shuts down and calls sys.exit(1)
        self.keyboard_interrupt = isinstance(exception, KeyboardInterrupt)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous = {}


class SameStart(Callback):
    """Every process must resume from the same checkpoint (or none); stop all of them with an error otherwise.

    They do not when ``--scratch`` is node-local on several nodes: only rank 0
    writes checkpoints, so the other nodes would start over while it resumes
    (or, its run finished, stops at once), and the processes would wait for
    each other forever. Checked at setup, once the processes can talk and
    before any of them restores a checkpoint. Set ``checkpoint`` before fit.
    """

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.checkpoint: Path | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        # the step the restored loop actually starts at, as the history of the attempts has it
        if self.checkpoint is not None and trainer.is_global_zero:
            from stylepipe.resume import record_attempt

            print(f"stylepipe train: resumed at step {trainer.global_step}", file=sys.stderr)
            record_attempt(self.scratch, f"resumed at step {trainer.global_step}")

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.world_size == 1:
            return
        name = "none" if self.checkpoint is None else self.checkpoint.name
        mine = torch.tensor(zlib.crc32(name.encode()), dtype=torch.int64, device=trainer.strategy.root_device)
        first, last = (int(trainer.strategy.reduce(mine.clone(), reduce_op=op)) for op in ("min", "max"))
        if first != last:
            raise ValueError(f"--scratch {self.scratch}: the processes would not resume from the same checkpoint "
                             f"(this one: {name}): rank 0 writes the checkpoints, so every node must see the same "
                             "--scratch folder (a shared filesystem, not a node-local disk)")


class Finished(Callback):
    """Marks the checkpoints of a finished run: started again, it does not train on.

    (Without it, an early-stopped run resumed from its final checkpoint
    would train until the next validation and stop again, further each time.)
    The periodic checkpoint of the step at which early stopping ends the
    run is written after that decision, which a checkpoint does not keep:
    it is marked too, so a run killed before its final checkpoint stops there.
    """

    @property
    def state_key(self) -> str:
        return FINISHED_STATE_KEY

    def __init__(self):
        self.finished = False

    def on_train_start(self, trainer, pl_module) -> None:
        if self.finished:
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module) -> None:
        # EarlyStopping's hook ran before (it comes first); ModelCheckpoint's runs after
        self.finished = self.finished or trainer.should_stop

    def state_dict(self) -> dict:
        return {"finished": self.finished}

    def load_state_dict(self, state: dict) -> None:
        self.finished = bool(state.get("finished", False))


class ValidatesInTime(Callback):
    """With early stopping: refuse, before the first step, a run too short to validate even once.

    config.validate refuses it where train.max_steps bounds the run; with
    epochs, the number of steps is known only once the data is.
    """

    def __init__(self, val_check_interval: int):
        self.val_check_interval = val_check_interval

    def on_fit_start(self, trainer, pl_module) -> None:
        steps = int(trainer.estimated_stepping_batches)
        if steps < self.val_check_interval:
            raise ValueError(
                f"train.early_stopping_patience is set but train.val_check_interval ({self.val_check_interval}) "
                f"exceeds the {steps} optimizer steps of this run (train.epochs = {trainer.max_epochs}): it would "
                "never validate, so never stop early; lower val_check_interval or set the patience to null"
            )


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

    @property
    def state_key(self) -> str:
        return CURVES_STATE_KEY

    def __init__(self, every: int):
        self.every = every
        self.rows: list[dict] = []
        self.val_rows: list[dict] = []  # one per validation: its step and losses
        self.images = 0  # training images seen, all processes
        self.wall_time = 0.0
        self.stopped = False  # the training ended: its time is final
        self._start = None
        self._step = 0
        self._window: list[dict[str, torch.Tensor]] = []  # the losses of the batches of the current step
        self._pending: dict | None = None  # the last step's row when it was not written (tensors until needed)

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.stopped:  # a finished run started again keeps its time
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
        # the training's time: saving, exporting and checking the model afterwards are no part of it
        self.wall_time, self._start, self.stopped = self.elapsed(), None, True

    def finish(self, trainer, log: bool = True) -> None:
        """Add the last step's row if it has none. Also called after a fit that resumed at its last
        step (Lightning then skips the training hooks; TensorBoard has closed: the file gets the row)."""
        if self._pending is not None and self._pending["step"] == trainer.global_step:
            self._add_row(trainer, self._pending, log)
        self._pending = None

    def _add_row(self, trainer, row: dict, log: bool = True) -> None:
        row = {k: (v if k == "step" else float(v)) for k, v in row.items()}
        if not math.isfinite(row["total_loss"]):
            # checked where the row's values reach the host anyway: no extra device sync per step
            raise ValueError(
                f"the training loss is {row['total_loss']} at step {row['step']}: the run diverged, and its "
                "weights would stylize nothing; lower train.lr (or the loss weights), or train in 32-true "
                "precision if it ran in 16-mixed"
            )
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
                "wall_time": self.elapsed(), "stopped": self.stopped, "pending": pending}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state.get("rows", []))
        self.val_rows = list(state.get("val_rows", []))
        self.images = int(state.get("images", 0))
        self.wall_time = float(state.get("wall_time", 0.0))
        self.stopped = bool(state.get("stopped", False))
        self._pending = state.get("pending")


class PeriodicCheckpoint(ModelCheckpoint):
    """``every_n_train_steps`` checkpoints that, at a step that validates, follow its validation.

    Lightning's ModelCheckpoint saves them when the step's last batch ends,
    before the validation due after it; Lightning does not rerun a
    validation that was due when a checkpoint was written, so a run killed
    outright (no signal to act on) after such a checkpoint would resume
    without it: a row missing from the validation curves, and early
    stopping deciding otherwise. At those steps the save waits for the end
    of the validation (after the curves and early stopping have seen it,
    as ModelCheckpoint's hooks run after every other callback's). It
    saves only at a batch that made an optimizer step, resumed runs included.
    """

    def __init__(self, val_every: int, **kwargs):
        super().__init__(**kwargs)
        self.val_every = val_every  # optimizer steps between validations
        self._step = 0
        self._deferred: tuple | None = None  # the step's on_train_batch_end arguments, until its validation ends

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own: checkpoints keep their layout (export_checkpoint finds it by that name)
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stepped, self._step = trainer.global_step != self._step, trainer.global_step
        if not stepped:
            # mid gradient accumulation: the summed gradients are not in a checkpoint. (ModelCheckpoint
            # skips these itself, except after a resume: it does not know it saved at that step.)
            return
        if trainer.global_step % self.val_every == 0:
            self._deferred = (outputs, batch, batch_idx)  # this step validates next
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._deferred is None:
            super().on_validation_end(trainer, pl_module)
            return
        # the step's own save, now that its validation is done (last.ckpt with it: nothing to redo after)
        deferred, self._deferred = self._deferred, None
        super().on_train_batch_end(trainer, pl_module, *deferred)


def log_scalars(trainer, metrics: dict[str, float], step: int) -> None:
    """To every logger at ``step`` optimizer steps done (Lightning's own x-axis is one less: steps before the batch)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def write_curves(path: Path, rows: list[dict], columns: list[str] = CURVE_COLUMNS) -> None:
    """The rows of Curves as CSV, values to 8 significant digits; the file appears whole or not at all."""
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (row[k] if k == "step" else f"{row[k]:.8g}") for k in columns})
