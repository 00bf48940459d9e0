"""`stylepipe train`: train one style's TransformerNet with Lightning.

This module checks the arguments and params, builds objects (DataModule,
LightningModule, callbacks, loggers, Trainer) from them and calls ``fit``,
then exports the outputs (the network as .pth and ONNX, the final
checkpoint, the curves, the summary). It resumes by itself from the newest
checkpoint of the same configuration in ``--scratch`` (``stylepipe.resume``);
the callbacks that keep the curves, act on signals and write checkpoints are
in ``stylepipe.callbacks``.

On SIGTERM, SIGUSR1 or SIGINT (^C) the current step finishes, a checkpoint is written to
``--scratch`` and the command exits with status 128 + signal number, so
Snakemake and Slurm see that the step did not finish; running the same
command again continues from there and ends with the same weights (on CPU,
bit for bit) as a run that was never interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

import torch

from stylepipe.config import check_train_values, load_params, style_resources, train_params
from stylepipe.io import atomic_path, check_output_files, check_writable, disk_full, write_json
from stylepipe.memory import out_of_memory
from stylepipe.training_memory import check_style_image, check_training_step, step_precision


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


def main(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"stylepipe train: error: {err}", file=sys.stderr)
        return 2


OUTPUT_FLAGS = ("model", "onnx", "checkpoint", "summary", "curves", "val_curves")


def check_outputs(args: argparse.Namespace) -> None:
    """Create --scratch and write a scratch file into it and into every output's folder; refuse outputs
    that are folders or that name the same file twice. Raises ValueError naming the flag and the path."""
    check_output_files({flag.replace("_", "-"): getattr(args, flag, None) for flag in OUTPUT_FLAGS})
    check_writable(args.scratch, "scratch")


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


def build_trainer(tp: dict, scratch: Path, callbacks: list, loggers: list):
    """The Trainer of the training values ``tp``, with ``callbacks`` and the ones every run has
    (early stopping, periodic checkpoints into ``scratch``, a progress bar)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, TQDMProgressBar

    from stylepipe.callbacks import PeriodicCheckpoint, ValidatesInTime
    from stylepipe.resume import AtomicCheckpointIO

    accelerator = tp["accelerator"]
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    checkpoint = PeriodicCheckpoint(
        tp["val_check_interval"],
        dirpath=scratch,
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=tp["checkpoint_every_n_steps"],
        save_top_k=1,
        save_last=True,
    )
    early_stopping = []
    if tp["early_stopping_patience"]:
        early_stopping = [EarlyStopping(monitor="val/total_loss", mode="min", patience=tp["early_stopping_patience"]),
                          ValidatesInTime(tp["val_check_interval"])]
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
        # without determinism, let cuDNN time its convolution algorithms and keep the fastest
        # (about 10 % on an H200, benchmarks/README.md); Lightning would leave the flag as it found it
        benchmark=not tp["deterministic"],
        log_every_n_steps=tp["log_every_n_steps"],
        default_root_dir=scratch,
        callbacks=callbacks,
        logger=loggers,
        use_distributed_sampler=False,  # ResumableSampler splits the data between processes itself
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
    )


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
    # a rank past the last node would wait for a process group it can never join
    name = "NODE_RANK" if "NODE_RANK" in os.environ else "GROUP_RANK"
    rank = os.environ[name]
    if not (rank.isdigit() and int(rank) < tp["num_nodes"]):
        raise ValueError(f"{name} is {rank!r} but train.num_nodes is {tp['num_nodes']}: number the nodes 0 to "
                         f"{tp['num_nodes'] - 1} (0 on the node MASTER_ADDR names)")


def check_step_memory(tp: dict, trainer) -> None:
    """On the CPU, refuse steps too large for the memory left (once per machine: its first process counts them all).

    On a GPU a step that does not fit fails with an error of its own, explained by `training_out_of_memory`.
    """
    from stylepipe.cpu import native_bf16_cpu

    if trainer.strategy.root_device.type != "cpu" or trainer.local_rank != 0:
        return
    check_training_step(tp["batch_size"], tp["image_size"], step_precision(str(tp["precision"]), native_bf16_cpu()),
                        trainer.num_devices, tp["accumulate_grad_batches"])


def emulated_bf16_warning(tp: dict, trainer) -> str | None:
    """The warning for a bf16 precision on a CPU that only emulates bf16 (no AVX-512 BF16 or AMX), else None.

    There a bf16-mixed step is 20-40 times slower than a 32-true one (benchmarks/README.md), so a run
    meant to take minutes would take hours. The precision is the params' to change, not ours: the
    weights of the two differ.
    """
    from pytorch_lightning.accelerators import CPUAccelerator

    from stylepipe.cpu import native_bf16_cpu

    # 16-mixed is in the list: on a CPU Lightning runs it as bf16-mixed
    if tp["precision"] == "32-true" or not isinstance(trainer.accelerator, CPUAccelerator) or native_bf16_cpu():
        return None
    return (f"train.precision is {tp['precision']} but this CPU has no native bf16 (AVX-512 BF16 or AMX), so "
            "PyTorch emulates it and each step is about 20-40 times slower than with 32-true; for training on "
            "this machine set train.precision: 32-true in the params (or under styles.<name>)")


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


def _no_tips(record: logging.LogRecord) -> bool:
    """Leave Lightning's suggestions of its cloud services out of the training log."""
    return not record.getMessage().startswith("💡 Tip")


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    tp = train_params(params, args.style)
    check_train_values(tp)
    seed = int(params["seed"])
    threads = cpu_threads(params, args.style)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
    # the loss network is in eval mode on purpose; the DataModule restores the sampler position itself
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    # resuming from the checkpoints in --scratch is what it is for
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    if tp["devices"] == 1 and tp["num_nodes"] == 1:
        # Lightning's hint to start with srun where srun exists (a cluster's login node) is for
        # processes that must meet; one process has none to wait for
        warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_no_tips)

    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from stylepipe.callbacks import (VAL_CURVE_COLUMNS, Curves, Finished, Preempted, Preemption, SameStart,
                                     signal_handlers_kept, write_curves)
    from stylepipe.data.tensors import load_style_image
    from stylepipe.datamodule import ContentDataModule
    from stylepipe.models.vgg import layer_names, load_features_state, smallest_input
    from stylepipe.module import StyleTransferModule
    from stylepipe.resume import TENSORBOARD, find_checkpoints, fingerprint, record_attempt, set_aside

    pl.seed_everything(seed, workers=True, verbose=False)
    style_image = load_style_image(args.style_image, tp["style_size"],
                                   smallest_input(layer_names(tp["content_layers"], tp["style_layers"])))
    check_style_image(*style_image.shape[-2:], tp["style_size"])
    vgg_state = load_features_state(args.loss_network)
    if not args.data.exists():
        raise FileNotFoundError(f"{args.data}: training data not found; create it with `stylepipe resize` "
                                f"(or `snakemake {args.data}`), or pass a folder of images")
    if not args.data.is_dir():
        raise ValueError(f"--data {args.data}: is a file; give the folder `stylepipe resize` writes "
                         "(data/content/<size>), or a folder of images")
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

    # preempted.ckpt, not last.ckpt: that name is ModelCheckpoint's, which would version its own as last-v1
    preemption = Preemption(args.scratch / "preempted.ckpt", tp["val_check_interval"])
    curves, finished = Curves(tp["log_every_n_steps"]), Finished()
    loggers = [TensorBoardLogger(save_dir=args.scratch, name="", version=TENSORBOARD, default_hp_metric=False)]
    # curves first: a preempted step is recorded before the checkpoint is written
    same_start = SameStart(args.scratch)
    trainer = trainer_from_params(tp, args.scratch, [same_start, curves, preemption, finished], loggers)
    check_node_launch(tp, trainer)
    check_step_memory(tp, trainer)
    slow = emulated_bf16_warning(tp, trainer)
    if slow and trainer.is_global_zero:
        print(f"stylepipe train: warning: {slow}", file=sys.stderr)

    on_cpu = trainer.strategy.root_device.type == "cpu"
    module.fingerprint = fp = fingerprint(tp, seed, trainer.world_size, args.style_image, args.loss_network,
                                          data=args.data, cpu_threads=threads if on_cpu else None)
    resume, others = find_checkpoints(args.scratch, fp)
    same_start.checkpoint = resume
    if trainer.is_global_zero:
        set_aside(args.scratch, others)
        if resume is not None:
            print(f"stylepipe train: resuming from {resume}", file=sys.stderr)
        elif others:
            print("stylepipe train: no checkpoint of this configuration; training starts at step 0", file=sys.stderr)
        record_attempt(args.scratch, f"resuming from {resume}" if resume is not None else "started")
    try:
        with signal_handlers_kept():
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    except Preempted as stop:
        if trainer.is_global_zero:
            print(f"stylepipe train: {stop}; checkpoint saved to {stop.path}. "
                  "Run the same command again to resume.", file=sys.stderr)
            record_attempt(args.scratch, f"{stop}; checkpoint saved to {stop.path}")
        return 128 + int(stop.signum)
    except Exception as err:
        explained = explain_failure(err, tp, trainer, resume)
        if explained is None:
            raise
        event, stop = explained
        if trainer.is_global_zero:
            record_attempt(args.scratch, f"{event} at step {trainer.global_step}")
        raise stop from err
    except SIGTERMException:
        # SIGTERM in the start-up moments when Lightning chains its handler with ours, which it acts on:
        # a SystemExit with status 0 otherwise, which would look like success
        print("stylepipe train: interrupted by SIGTERM while starting; run the same command again", file=sys.stderr)
        if trainer.is_global_zero:
            record_attempt(args.scratch, "interrupted by SIGTERM while starting")
        return 128 + signal.SIGTERM
    except SystemExit:  # after SIGTERMException, one of its kind
        if not preemption.keyboard_interrupt:
            raise
        print("stylepipe train: interrupted (^C) before a checkpoint could be written; run the same command "
              "again to resume from the last one", file=sys.stderr)
        if trainer.is_global_zero:
            record_attempt(args.scratch, f"interrupted by ^C at step {trainer.global_step}, without a checkpoint")
        return 128 + signal.SIGINT
    if trainer.interrupted:
        return 1

    final = args.scratch / "final.ckpt"
    curves.finish(trainer, log=False)
    finished.finished = True
    trainer.save_checkpoint(final, weights_only=False)
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


def explain_failure(err: Exception, tp: dict, trainer, resume: Path | None) -> tuple[str, ValueError] | None:
    """For a failure the user can fix (params, memory, disk space): (what happened, for attempts.log;
    the error saying what to change). None for any other error, which keeps its traceback."""
    resumes = "it resumes from the last checkpoint written to --scratch"
    started = trainer.global_step or resume
    kept = f"run it again once changed: {resumes}" if started else "it stopped before the first step"
    if out_of_memory(err):
        return "out of memory", training_out_of_memory(tp, trainer, kept)
    full = disk_full(err)
    if full is not None:
        again = f"run the same command again once there is room: {resumes}" if started else kept
        return "disk full", ValueError(
            f"{full.filename or 'a file of the run'}: {full.strerror or full} at step {trainer.global_step}: free "
            f"space on that disk, or give --scratch a disk with room; {again}")
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if first_line.startswith("DataLoader worker (pid"):
        # PyTorch's line when a worker dies without an error of its own ("is killed by signal: Killed" or
        # "exited unexpectedly"): the kernel's OOM killer is what usually sends that SIGKILL
        return "a data loader worker died", ValueError(
            f"a data loader worker stopped at step {trainer.global_step}: {first_line.rstrip('.')}. A worker that "
            f"ends without an error of its own was usually killed by the kernel's OOM killer: lower "
            f"train.num_workers (now {tp['num_workers']}; each worker holds its own batches), or give the job more "
            f"memory (resources.train.mem_mb); {kept}")
    return None


def training_out_of_memory(tp: dict, trainer, kept: str) -> ValueError:
    """What to change when a training step did not fit in its device's memory, naming the params keys."""
    device = trainer.strategy.root_device
    where = f"{device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    fixes = ["lower train.image_size"]
    if tp["batch_size"] > 1:
        fixes.insert(0, f"lower train.batch_size (train.accumulate_grad_batches = {2 * tp['accumulate_grad_batches']} "
                        f"with half the batch keeps the images per optimizer step)")
    if device.type == "cuda" and tp["precision"] in ("32", "32-true"):
        fixes.append("use train.precision: bf16-mixed (half the activation memory)")
    return ValueError(
        f"out of memory training at step {trainer.global_step} on {where}, train.batch_size = {tp['batch_size']} "
        f"images of train.image_size = {tp['image_size']} px in precision {tp['precision']}: {', or '.join(fixes)} "
        f"(batch_size may also be set for one style, under styles.<name>); {kept}")


# checkpoint paths ModelCheckpoint records, made absolute by Lightning
CHECKPOINT_PATH_KEYS = ("dirpath", "best_model_path", "last_model_path", "kth_best_model_path")


def export_checkpoint(final: Path, path: Path) -> None:
    """Write the final checkpoint to ``path`` with the same bytes for the same run, wherever and whenever it ran.

    It is a DVC output, so what varies between equal runs stays out:
    ModelCheckpoint's absolute paths become relative to the working directory
    (the repository root, for both runners), the accumulated wall time goes
    (it is in the summary), and equal strings become one object (a resumed
    run's strings were loaded from its checkpoint).
    """
    from stylepipe.callbacks import CURVES_STATE_KEY

    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint"):
            for name in CHECKPOINT_PATH_KEYS:
                if state.get(name):
                    state[name] = os.path.relpath(state[name])
            state["best_k_models"] = {os.path.relpath(p): v for p, v in state.get("best_k_models", {}).items()}
        elif key == CURVES_STATE_KEY:
            state.pop("wall_time", None)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(_one_object_per_string(ckpt), f)


def _one_object_per_string(obj):
    """``obj`` with its strings interned, in place: equal strings are then one object.

    Pickle writes an object it has already written as a reference to it, so
    which equal strings are one object shows in the file. A run that never
    stopped shares the code's strings; one resumed from a checkpoint holds the
    copies loaded from it ("step" in the optimizer and in the curves, say).
    """
    if type(obj) is str:
        return sys.intern(obj)
    if isinstance(obj, dict):
        items = [(_one_object_per_string(k), _one_object_per_string(v)) for k, v in obj.items()]
        obj.clear()
        obj.update(items)
    elif isinstance(obj, list):
        obj[:] = [_one_object_per_string(v) for v in obj]
    elif type(obj) is tuple:
        return tuple(_one_object_per_string(v) for v in obj)
    return obj


def _plain_copy(transformer: torch.nn.Module):
    """A CPU fp32 contiguous TransformerNet, loadable anywhere (no channels_last strides in the file)."""
    from stylepipe.models.transformer import TransformerNet

    net = TransformerNet()
    state = {k: v.detach().float().cpu().contiguous() for k, v in transformer.state_dict().items()}
    net.load_state_dict(state)
    return net.eval()


def _summary(style: str, trainer, tp: dict, datamodule, curves) -> dict:
    from stylepipe.callbacks import LOSS_NAMES

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
        # as Lightning ran it: 16-mixed becomes bf16-mixed on a CPU
        "precision": str(trainer.precision),
        "device": device,
        "processes": world,
        "cpu_threads": torch.get_num_threads(),  # per process; on the CPU the weights depend on it
        # who started the processes: SLURMEnvironment under srun, LightningEnvironment when Lightning did
        "cluster_environment": type(getattr(trainer.strategy, "cluster_environment", None)).__name__
        if world > 1 else None,
        "train_losses": {k: last[k] for k in LOSS_NAMES if k in last},
        "val_losses": dict(sorted(curves.val.items())),
        "software": software_versions(),
    }


def software_versions() -> dict:
    """The versions that computed the weights: bit-for-bit reruns need the same ones (constraints.txt pins them)."""
    import platform

    import pytorch_lightning as pl
    import torchvision

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pl.__version__,
        # the toolkit torch was built with; cuDNN's version only where a GPU runs it
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
    }
