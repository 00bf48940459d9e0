"""GPU throughput: training and stylizing on one CUDA device, in one short run.

Training at 256 px: the pytorch/examples reference loop (fp32, eager, as
`train_throughput.py` defines it) against our step (the LightningModule's
loss computation, bf16 autocast + channels_last loss network) over a range
of batch sizes, with cuDNN's autotuner off and on; `torch.compile` at the
best batch size; then the real Trainer that `stylepipe train` builds
(`build_trainer`: bf16-mixed, checkpointing, progress bar, the DataModule
over shards on disk, worker processes, pinned memory) at that batch size;
whether two short runs under strict ``torch.use_deterministic_algorithms(True)``
run at all and end with the same weights. Stylizing at 512 px: eager fp32 against `stylepipe stylize`'s CUDA runner.

Sections run in order of importance and are skipped once ``--budget``
seconds are spent. Throughput is images per second between CUDA
synchronisations after warm-up steps (the median of three timed runs).
The summary table comes last; ``--json`` keeps every figure.

    python benchmarks/gpu_throughput.py [--size 256] [--batch-sizes 8 16 32 64] [--budget 420] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from stylepipe.config import parse_yaml
from stylepipe.models.transformer import TransformerNet
from stylepipe.models.vgg import random_state_dict
from train_throughput import Ours, Reference

REPO = Path(__file__).resolve().parents[1]
T0 = time.monotonic()
RESULTS: dict = {"train": [], "compile": [], "trainer": [], "stylize": [], "determinism": None}


def log(*args) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s]", *args, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(step, batches, device, steps: int, warmup: int = 3, repeats: int = 3) -> float:
    for i in range(warmup):
        step(batches[i % len(batches)])
    runs = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for i in range(steps):
            step(batches[i % len(batches)])
        sync(device)
        runs.append(steps * batches[0].shape[0] / (time.perf_counter() - start))
    return statistics.median(runs)


def out_of_time(budget: float, section: str) -> bool:
    if time.monotonic() - T0 > budget:
        log(f"skipped ({section}): time budget of {budget:.0f} s spent")
        return True
    return False


def train_sweep(args, device, vgg_state, style) -> tuple[int, bool]:
    """Reference and ours per batch size; returns (best batch size, whether cudnn.benchmark won)."""
    gen = torch.Generator().manual_seed(0)
    best = (0.0, args.batch_sizes[0], False)
    for batch_size in args.batch_sizes:
        if out_of_time(args.budget * 0.45, f"train sweep from batch {batch_size}"):
            break
        batches = [(torch.rand(batch_size, 3, args.size, args.size, generator=gen) * 255).to(torch.uint8).to(device)
                   for _ in range(2)]
        steps = max(3, args.images // batch_size)
        row = {"batch_size": batch_size}
        try:
            torch.backends.cudnn.benchmark = False
            row["reference_fp32"] = images_per_s(Reference(vgg_state, style, 0, device).step, batches, device, steps)
            row["ours_bf16_cl"] = images_per_s(Ours(vgg_state, style, 0, True, True, device).step, batches, device, steps)
            torch.backends.cudnn.benchmark = True
            row["ours_bf16_cl_cudnn_benchmark"] = images_per_s(
                Ours(vgg_state, style, 0, True, True, device).step, batches, device, steps)
            row["ours_bf16_cl_both_nets_cudnn_benchmark"] = images_per_s(
                _ours_all_channels_last(vgg_state, style, device).step, batches, device, steps)
        except torch.OutOfMemoryError:
            log(f"batch {batch_size}: out of memory")
            break
        finally:
            torch.backends.cudnn.benchmark = False
            if device.type == "cuda":
                torch.cuda.empty_cache()
        RESULTS["train"].append(row)
        log(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        for key, bench in (("ours_bf16_cl", False), ("ours_bf16_cl_cudnn_benchmark", True)):
            if row[key] > best[0]:
                best = (row[key], batch_size, bench)
    return best[1], best[2]


def _ours_all_channels_last(vgg_state, style, device) -> Ours:
    ours = Ours(vgg_state, style, 0, True, True, device)
    ours.module.transformer.to(memory_format=torch.channels_last)
    ours.module._input_format = torch.channels_last  # as compile_losses() sets it, without compiling
    return ours


def compile_section(args, device, vgg_state, style, batch_size: int, cudnn_benchmark: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.rand(batch_size, 3, args.size, args.size, generator=gen) * 255).to(torch.uint8).to(device)
               for _ in range(2)]
    steps = max(3, args.images // batch_size)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    for what in ("transformer", "whole loss computation"):
        if out_of_time(args.budget * 0.9, f"torch.compile of the {what}"):
            break
        ours = Ours(vgg_state, style, 0, True, True, device)
        if what == "transformer":
            ours.module.transformer = torch.compile(ours.module.transformer)
        else:  # what `compile: true` in params.yaml does
            ours.module.compile_losses()
            ours.losses = ours.module.losses
        start = time.monotonic()
        try:
            ours.step(batches[0])
            sync(device)
        except Exception as err:  # a missing compiler toolchain, say: report and go on
            log(f"torch.compile of the {what} failed: {type(err).__name__}: {err}")
            continue
        compile_s = time.monotonic() - start
        rate = images_per_s(ours.step, batches, device, steps)
        RESULTS["compile"].append({"compiled": what, "batch_size": batch_size, "compile_s": round(compile_s, 1),
                                   "images_per_s": rate})
        log(f"torch.compile ({what}), batch {batch_size}: first step {compile_s:.1f} s, {rate:.1f} images/s")
    torch.backends.cudnn.benchmark = False


def trainer_section(args, device, vgg_state, style, batch_size: int, deterministic: bool, compile: bool = False) -> None:
    """The Trainer `stylepipe train` builds, fed by the DataModule from shards, timed after warm-up steps
    (with ``compile``, as `compile: true` trains: its first, compiling step is among the warm-up steps)."""
    import logging

    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    from stylepipe.data.shards import ShardWriter
    from stylepipe.datamodule import ContentDataModule
    from stylepipe.module import StyleTransferModule
    from stylepipe.callbacks import Curves, Preemption
    from stylepipe.train import build_trainer

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    tp = dict(parse_yaml((REPO / "params.yaml").read_text())["train"])
    warmup, steps = 10, max(20, 4 * args.images // batch_size)
    tp.update(batch_size=batch_size, max_steps=warmup + steps, epochs=1, val_check_interval=10**6,
              checkpoint_every_n_steps=10**6, val_images=batch_size, deterministic=deterministic,
              num_workers=min(8, os.cpu_count() or 1), accelerator=device.type, compile=compile)

    class Clock(pl.Callback):
        def on_train_batch_end(self, trainer, *_):
            if trainer.global_step == warmup:
                sync(device)
                self.start = time.perf_counter()
            self.end_step = trainer.global_step

        def on_train_end(self, trainer, *_):
            sync(device)
            self.seconds = time.perf_counter() - self.start

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shards"
        pool = np.random.default_rng(0).integers(0, 256, (97, 3, args.size, args.size), dtype=np.uint8)
        writer = ShardWriter(data, args.size)
        for i in range(tp["max_steps"] * batch_size + tp["val_images"]):
            writer.add(pool[i % len(pool)], f"{i:06d}.jpg")
        writer.close()
        module = StyleTransferModule(style, vgg_state, channels_last=tp["channels_last"])
        if compile:
            module.compile_losses()  # as `stylepipe train` does for `compile: true`
        datamodule = ContentDataModule(data, args.size, batch_size, tp["val_images"], 0, tp["num_workers"])
        clock = Clock()
        scratch = Path(tmp) / "scratch"
        logger = TensorBoardLogger(save_dir=scratch, name="", version="tensorboard", default_hp_metric=False)
        preemption = Preemption(scratch / "preempted.ckpt", tp["val_check_interval"])
        trainer = build_trainer(tp, scratch, [Curves(tp["log_every_n_steps"]), preemption, clock], [logger])
        trainer.fit(module, datamodule=datamodule)
        rate = (clock.end_step - warmup) * batch_size / clock.seconds
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = torch.backends.cudnn.benchmark = False
    RESULTS["trainer"].append({"batch_size": batch_size, "precision": tp["precision"], "deterministic": deterministic,
                               "num_workers": tp["num_workers"], "compile": compile, "images_per_s": rate})
    log(f"Trainer ({tp['precision']}, deterministic={deterministic}, compile={compile}), batch {batch_size}, "
        f"{tp['num_workers']} loader workers: {rate:.1f} images/s")


def determinism_section(args, device, vgg_state, style, batch_size: int = 16, steps: int = 3) -> None:
    """Two short runs of our step under torch.use_deterministic_algorithms(True), without warn_only:
    does any op refuse (Lightning's deterministic="warn" would let it run), and are the weights equal bit for bit?"""
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.rand(batch_size, 3, args.size, args.size, generator=gen) * 255).to(torch.uint8).to(device)
               for _ in range(steps)]
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # what Lightning sets for deterministic runs
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            ours = Ours(vgg_state, style, 0, True, True, device)
            for batch in batches:
                ours.step(batch)
            runs.append({k: v.detach().clone() for k, v in ours.module.transformer.state_dict().items()})
        same = all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
        outcome = "identical weights" if same else "weights differ"
    except RuntimeError as err:
        outcome = f"refused: {str(err).splitlines()[0]}"
    finally:
        torch.use_deterministic_algorithms(False)
    RESULTS["determinism"] = f"batch {batch_size}, {steps} steps twice: {outcome}"
    log(f"strict determinism: {RESULTS['determinism']}")


def stylize_section(args, device) -> None:
    from stylepipe.stylize.runners import load_runner

    torch.manual_seed(0)
    net = TransformerNet().eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pth"
        torch.save(net.state_dict(), path)
        ours = load_runner(path, device)
    reference = net.to(device)
    # a variant: the weights themselves in bf16 (no autocast casts), channels_last
    bf16_net = TransformerNet().to(device, torch.bfloat16).to(memory_format=torch.channels_last).eval()
    bf16_net.load_state_dict(net.state_dict())

    @torch.no_grad()
    def run_reference(batch):
        return reference(batch.to(device)).cpu()

    @torch.no_grad()
    def run_bf16_weights(batch):
        x = batch.to(device).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        return bf16_net(x).float().cpu()

    gen = torch.Generator().manual_seed(0)
    for batch_size in (1, 8):
        batches = [torch.rand(batch_size, 3, args.stylize_size, args.stylize_size, generator=gen) * 255 for _ in range(2)]
        steps = max(4, 64 // batch_size)
        row = {"batch_size": batch_size,
               "reference_fp32": images_per_s(run_reference, batches, device, steps),
               "ours": images_per_s(ours, batches, device, steps),
               "bf16_weights_cl": images_per_s(run_bf16_weights, batches, device, steps)}
        RESULTS["stylize"].append(row)
        log(f"stylize {args.stylize_size} px, batch {batch_size}: reference {row['reference_fp32']:.1f}, "
            f"ours {row['ours']:.1f}, bf16 weights {row['bf16_weights_cl']:.1f} images/s")


def summary(args) -> None:
    print()
    print(f"== {RESULTS['device']} | torch {torch.__version__} | {args.size} px training, {args.stylize_size} px stylizing ==")
    if RESULTS["train"]:
        print("batch  reference fp32   ours bf16+CL   +cudnn.benchmark   +CL both nets   best/reference")
        for r in RESULTS["train"]:
            ours = max(r["ours_bf16_cl"], r["ours_bf16_cl_cudnn_benchmark"], r["ours_bf16_cl_both_nets_cudnn_benchmark"])
            print(f"{r['batch_size']:>5}  {r['reference_fp32']:>13.1f}  {r['ours_bf16_cl']:>13.1f}  "
                  f"{r['ours_bf16_cl_cudnn_benchmark']:>17.1f}  {r['ours_bf16_cl_both_nets_cudnn_benchmark']:>14.1f}  "
                  f"{ours / r['reference_fp32']:>14.2f}x")
    for r in RESULTS["compile"]:
        print(f"torch.compile ({r['compiled']}), batch {r['batch_size']}: {r['images_per_s']:.1f} images/s "
              f"(first step {r['compile_s']} s)")
    for r in RESULTS["trainer"]:
        print(f"Trainer (stylepipe train's), {r['precision']}, deterministic={r['deterministic']}, "
              f"compile={r['compile']}, batch {r['batch_size']}: "
              f"{r['images_per_s']:.1f} training images/s")
    if RESULTS["determinism"]:
        print(f"torch.use_deterministic_algorithms(True), bf16 autocast + CL: {RESULTS['determinism']}")
    for r in RESULTS["stylize"]:
        print(f"stylize batch {r['batch_size']}: reference {r['reference_fp32']:.1f}, ours {r['ours']:.1f}, "
              f"bf16 weights + CL {r['bf16_weights_cl']:.1f} images/s, speedup_vs_reference: {r['ours'] / r['reference_fp32']:.2f}")
    ref = {r["batch_size"]: r["reference_fp32"] for r in RESULTS["train"]}
    for r in RESULTS["trainer"]:
        for batch, label in ((4, "pytorch/examples' batch 4"), (r["batch_size"], "the same batch")):
            if batch in ref:
                print(f"Trainer deterministic={r['deterministic']}, compile={r['compile']} vs reference at {label}: "
                      f"{r['images_per_s'] / ref[batch]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--stylize-size", type=int, default=512)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--images", type=int, default=384, help="images per timed run of the sweep")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; later sections are skipped after it")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        # `make bench` runs every benchmark; on a machine without a GPU this one has nothing to measure
        print("gpu_throughput: skipped, no CUDA device (`--device cpu` runs it on the CPU as a smoke test)")
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    RESULTS["device"] = name
    log(f"device {name}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {os.cpu_count()} CPUs")
    vgg_state = {k[len("features."):]: v for k, v in random_state_dict(0).items()}
    style = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 255
    try:
        best_batch, cudnn_benchmark = train_sweep(args, device, vgg_state, style)
        log(f"best batch size {best_batch} (cudnn.benchmark {cudnn_benchmark})")
        determinism_section(args, device, vgg_state, style)
        for deterministic in (False, True):
            if not out_of_time(args.budget * 0.65, "Trainer"):
                trainer_section(args, device, vgg_state, style, best_batch, deterministic)
        if not out_of_time(args.budget * 0.75, "stylize"):
            stylize_section(args, device)
        if not args.no_compile:
            compile_section(args, device, vgg_state, style, best_batch, cudnn_benchmark)
            if not out_of_time(args.budget, "Trainer with compile: true"):
                trainer_section(args, device, vgg_state, style, best_batch, deterministic=False, compile=True)
    finally:
        if args.json:
            args.json.write_text(json.dumps(RESULTS, indent=2))
        summary(args)


if __name__ == "__main__":
    main()
