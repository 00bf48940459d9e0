"""GPU training-step variants: candidate speed-ups of `compile: true`, side by side in one short run.

The training step is the one `compile: true` trains with: our LightningModule's
whole loss computation through ``compile_losses()`` (both networks
channels_last), bf16 autocast, the VGG stored in bf16, Adam (``Ours`` of
`train_throughput.py`, compiled as `gpu_throughput.py`'s ``compile_section``
does). Each variant changes one thing, inside this script only, by patching
the model objects or torch's settings (nothing in the package changes):

  baseline        as shipped, with cudnn.benchmark on
  no-benchmark    cudnn.benchmark off: what `stylepipe train` runs with under
                  `deterministic: true` (the Trainer gets benchmark=not deterministic)
  thin-8          the two thin 9x9 convolutions padded with zeros to 8 channels: the
                  first conv's input and weight 3 -> 8 input channels, the last conv's
                  weight and bias 3 -> 8 output channels, its output sliced back to 3
  thin-16         the same to 16 channels
  cudnn-all       cuDNN's autotuner tries every algorithm (benchmark_limit 0) instead
                  of the first 10 its heuristics rank
  batch-N         the baseline at each further ``--batch-sizes`` entry
  max-autotune    torch.compile(mode="max-autotune-no-cudagraphs"): Inductor times
                  its Triton convolution and matmul templates against cuDNN/cuBLAS
                  (minutes of compiling: last, and only while the budget allows)

Every variant must compute the same function: its first step's total loss and
TransformerNet gradient (same initial weights, same batch) are compared with
the baseline's, and the script exits with status 1 if any differ by more than
bf16 rounding explains (``--loss-tol``, ``--grad-tol``, relative). Compiled,
an eager step of the baseline is compared too, for scale: the difference that
compiling alone makes.

Timing: every variant is built and warmed up first (its first step compiles),
then all are timed in rounds, in rotating order, a few steps each between
CUDA synchronisations; images/s is the median over rounds, the ratio to the
baseline the median of per-round ratios. max-autotune is built after the
others are timed (their results are printed and saved first) and then timed
against the baseline. Later variants are skipped once ``--budget`` seconds
are spent; a SIGTERM (a wall-clock limit) still prints the summary and writes
``--json``. The summary table comes last.

    python benchmarks/gpu_variants.py [--batch-sizes 64 128] [--budget 420] [--json FILE]
    python benchmarks/gpu_variants.py --device cpu --size 32 --batch-sizes 2 --no-compile   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stylepipe.models.vgg import random_state_dict
from stylepipe.module import StyleTransferModule
from train_throughput import Ours

T0 = time.monotonic()


def log(*args) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s]", *args, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the variants' patches -------------------------------------------------------------------


class ChannelPaddedConv2d(nn.Conv2d):
    """A Conv2d that runs with its thin channel counts zero-padded to a multiple of ``multiple``.

    Tensor-core convolutions want channel counts in multiples of 8 (16 bytes of
    bf16); with 3 channels cuDNN falls back to slower kernels or pads
    internally at every call. Zero input channels (with zero weights) add
    nothing to the sum; zero output channels are sliced off. The weights stay
    the module's own [out, in, k, k] parameters, padded on the fly, so their
    gradients are those of the real weights and the state_dict is unchanged.
    """

    multiple: int = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra_in = -self.in_channels % self.multiple
        extra_out = -self.out_channels % self.multiple
        weight, bias = self.weight, self.bias
        if extra_in:
            x = _keep_format(F.pad(x, (0, 0, 0, 0, 0, extra_in)), x)
            weight = F.pad(weight, (0, 0, 0, 0, 0, extra_in))
        if extra_out:
            weight = F.pad(weight, (0, 0, 0, 0, 0, 0, 0, extra_out))
            bias = F.pad(bias, (0, extra_out)) if bias is not None else None
        y = self._conv_forward(x, _keep_format(weight, self.weight), bias)
        return y[:, : self.out_channels] if extra_out else y


def _keep_format(padded: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``padded`` in ``like``'s memory format: cuDNN should see NHWC with 8 channels, not an NCHW copy."""
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return padded.contiguous(memory_format=torch.channels_last)
    return padded


def pad_thin_convs(multiple: int) -> Callable[[Ours], None]:
    def apply(ours: Ours) -> None:
        net = ours.module.transformer
        before = {k: v.shape for k, v in net.state_dict().items()}
        for conv in (net.conv1.conv2d, net.deconv3.conv2d):  # 3 -> 32 and 32 -> 3, 9x9, full resolution
            conv.__class__ = ChannelPaddedConv2d
            conv.multiple = multiple
        after = {k: v.shape for k, v in net.state_dict().items()}
        assert after == before, "padding the thin convolutions changed the TransformerNet's state_dict"
    return apply


@contextlib.contextmanager
def cudnn_flags(**flags):
    """Set torch.backends.cudnn flags around a variant's steps (its compiling step included), then restore them."""
    saved = {name: getattr(torch.backends.cudnn, name) for name in flags}
    for name, value in flags.items():
        setattr(torch.backends.cudnn, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(torch.backends.cudnn, name, value)


@dataclass
class Variant:
    name: str
    label: str
    batch_size: int
    patch: Callable[[Ours], None] | None = None
    compile_options: dict = field(default_factory=dict)
    flags: dict = field(default_factory=lambda: {"benchmark": True})
    needs_compile: bool = False
    group: int = 0  # 0: built and timed together; 1: built after group 0 is timed (max-autotune)


def variants(args) -> list[Variant]:
    main, *larger = args.batch_sizes
    out = [
        Variant("baseline", "baseline (compile: true, cudnn.benchmark)", main),
        Variant("no-benchmark", "cudnn.benchmark off (as `stylepipe train`, deterministic: true)", main, flags={"benchmark": False}),
        Variant("thin-8", "thin 9x9 convs padded to 8 channels", main, patch=pad_thin_convs(8)),
        Variant("thin-16", "thin 9x9 convs padded to 16 channels", main, patch=pad_thin_convs(16)),
        # cuDNN caches its autotuner's choice per convolution (shapes, dtype, layout, and the
        # deterministic and allow_tf32 flags), not per benchmark_limit: the baseline's choices
        # would be reused. allow_tf32 only concerns float32 convolutions (these are bf16), so
        # turning it off gives this variant its own cache entries and the same arithmetic.
        Variant("cudnn-all", "cuDNN autotuner tries every algorithm", main,
                flags={"benchmark": True, "benchmark_limit": 0, "allow_tf32": False}),
    ]
    out += [Variant(f"batch-{b}", f"baseline at batch {b}", b) for b in larger]
    out.append(Variant("max-autotune", 'compile mode="max-autotune-no-cudagraphs"', main,
                       compile_options={"mode": "max-autotune-no-cudagraphs"}, needs_compile=True, group=1))
    if args.variants:
        unknown = sorted(set(args.variants) - {v.name for v in out})
        if unknown:
            sys.exit(f"gpu_variants: unknown variant(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(v.name for v in out)}")
        out = [v for v in out if v.name == "baseline" or v.name in args.variants]
    return out


# --- building, checking and timing ------------------------------------------------------------


@dataclass
class Run:
    variant: Variant
    ours: Ours | None = None
    status: str = "not built"
    first_step_s: float | None = None
    loss_rel: float | None = None
    grad_rel: float | None = None
    rates: dict = field(default_factory=dict)  # round -> images/s

    @property
    def name(self) -> str:
        return self.variant.name


def own_losses_copy(module: StyleTransferModule, name: str) -> None:
    """Give ``module`` its own copy of ``losses`` (same code, another code object) before it is compiled.

    Dynamo caches compiled graphs per code object: variants sharing
    ``StyleTransferModule.losses`` would recompile one another (and, seeing a
    new batch size, recompile with a dynamic batch dimension, unlike a real
    run), and a variant could reuse another's graph should its guards miss a
    patch. With a code object each, every variant compiles once, as
    ``compile_losses()`` compiles a single module.
    """
    plain = StyleTransferModule.losses
    code = plain.__code__.replace(co_name=f"losses_{name.replace('-', '_')}")
    fn = types.FunctionType(code, plain.__globals__, code.co_name, plain.__defaults__, plain.__closure__)
    module.losses = types.MethodType(fn, module)


def build(run: Run, args, device, vgg_state, style) -> None:
    variant = run.variant
    ours = Ours(vgg_state, style, 0, True, True, device)  # same seed: same initial weights for every variant
    if variant.patch:
        variant.patch(ours)
    if not args.no_compile:
        own_losses_copy(ours.module, variant.name)
        ours.module.compile_losses(**variant.compile_options)  # as `compile: true` does
        ours.losses = ours.module.losses
    run.ours = ours


def recorded_step(ours: Ours, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ours.step(batch)``, returning its total loss and the TransformerNet's gradient (flattened)."""
    losses_fn, seen = ours.losses, {}

    def recording(images):
        losses, stylized = losses_fn(images)
        seen["loss"] = losses["total_loss"].detach().float()
        return losses, stylized

    ours.losses = recording
    try:
        ours.step(batch)
    finally:
        ours.losses = losses_fn
    grads = [p.grad.detach().float().flatten() for p in ours.module.transformer.parameters()]
    return seen["loss"], torch.cat(grads)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def images_per_s(run: Run, batch: torch.Tensor, steps: int, device) -> float:
    with cudnn_flags(**run.variant.flags):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            run.ours.step(batch)
        sync(device)
    return steps * batch.shape[0] / (time.perf_counter() - start)


class Bench:
    def __init__(self, args, device):
        self.args, self.device = args, device
        self.vgg_state = {k[len("features."):]: v for k, v in random_state_dict(0).items()}
        gen = torch.Generator().manual_seed(0)
        self.style = torch.rand(1, 3, args.size, args.size, generator=gen) * 255
        self.batches: dict[int, torch.Tensor] = {}
        self.first: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # the baseline's first step per batch size
        self.runs = [Run(v) for v in variants(args)]
        self.eager_check: dict | None = None
        self.rounds_done = 0

    def batch(self, batch_size: int) -> torch.Tensor:
        if batch_size not in self.batches:
            gen = torch.Generator().manual_seed(batch_size)
            images = torch.rand(batch_size, 3, self.args.size, self.args.size, generator=gen) * 255
            self.batches[batch_size] = images.to(torch.uint8).to(self.device)
        return self.batches[batch_size]

    @property
    def baseline(self) -> Run:
        return self.runs[0]

    def build_and_check(self, run: Run) -> None:
        v = run.variant
        if v.needs_compile and self.args.no_compile:
            run.status = "skipped: needs torch.compile (--no-compile)"
            log(f"{v.name}: {run.status}")
            return
        log(f"{v.name}: building ({v.label}, batch {v.batch_size})")
        batch = self.batch(v.batch_size)
        try:
            build(run, self.args, self.device, self.vgg_state, self.style)
            with cudnn_flags(**v.flags):
                start = time.monotonic()
                loss, grad = recorded_step(run.ours, batch)  # compiles
                sync(self.device)
                run.first_step_s = time.monotonic() - start
                for _ in range(self.args.warmup):
                    run.ours.step(batch)
                sync(self.device)
        except torch.OutOfMemoryError:
            self.fail(run, "out of memory")
            return
        except Exception as err:  # a compiler toolchain missing, an unsupported flag: report, go on
            self.fail(run, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            return
        if v.batch_size not in self.first:
            self.first[v.batch_size] = (loss, grad)  # the baseline (or batch-N, which is the baseline there)
        else:
            base_loss, base_grad = self.first[v.batch_size]
            run.loss_rel, run.grad_rel = relative(loss, base_loss), relative(grad, base_grad)
        run.status = "ok" if self.same_function(run) else "DIFFERS from the baseline"
        log(f"{v.name}: first step {run.first_step_s:.1f} s; {self.check_text(run)}")
        if run is self.baseline and not self.args.no_compile:
            self.eager_reference(loss, grad)

    def eager_reference(self, loss: torch.Tensor, grad: torch.Tensor) -> None:
        """How far the compiled baseline's first step is from the same step eager: the scale of bf16 differences."""
        try:
            ours = Ours(self.vgg_state, self.style, 0, True, True, self.device)
            with cudnn_flags(benchmark=True):
                eager_loss, eager_grad = recorded_step(ours, self.batch(self.baseline.variant.batch_size))
            self.eager_check = {"loss_rel": relative(loss, eager_loss), "grad_rel": relative(grad, eager_grad)}
            log(f"compiled baseline vs eager: loss {self.eager_check['loss_rel']:.2e}, "
                f"TransformerNet gradient {self.eager_check['grad_rel']:.2e} (relative)")
            del ours
        except torch.OutOfMemoryError:
            log("eager reference step: out of memory")
        self.free()

    def tolerances(self) -> tuple[float, float]:
        """--loss-tol and --grad-tol, or three times what compiling alone changes, if that is more."""
        loss_tol, grad_tol = self.args.loss_tol, self.args.grad_tol
        if self.eager_check:
            loss_tol = max(loss_tol, 3 * self.eager_check["loss_rel"])
            grad_tol = max(grad_tol, 3 * self.eager_check["grad_rel"])
        return loss_tol, grad_tol

    def same_function(self, run: Run) -> bool:
        if run.loss_rel is None:
            return True
        loss_tol, grad_tol = self.tolerances()
        return run.loss_rel <= loss_tol and run.grad_rel <= grad_tol

    @staticmethod
    def check_text(run: Run) -> str:
        if run.loss_rel is None:
            return "reference for its batch size"
        return f"vs baseline: loss {run.loss_rel:.2e}, TransformerNet gradient {run.grad_rel:.2e} (relative)"

    def fail(self, run: Run, why: str) -> None:
        run.status, run.ours = f"failed: {why}", None
        log(f"{run.name}: {run.status}")
        self.free()

    def free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def time_rounds(self, runs: list[Run], deadline: float) -> None:
        """Rounds in rotating order over ``runs``; each round's figures are kept by round number."""
        runs = [r for r in runs if r.ours is not None]
        if not runs:
            return
        for _ in range(self.args.rounds):
            if time.monotonic() - T0 > deadline and self.rounds_done_by(runs) > 0:
                log(f"timing stopped after {self.rounds_done_by(runs)} round(s): time budget spent")
                break
            r = self.rounds_done
            self.rounds_done += 1
            k = r % len(runs)
            for run in runs[k:] + runs[:k]:
                if run.ours is None:
                    continue
                try:
                    run.rates[r] = images_per_s(run, self.batch(run.variant.batch_size), self.args.steps, self.device)
                except torch.OutOfMemoryError:  # next to the other variants' cached memory, say
                    self.fail(run, "out of memory while timed")
            log(f"round {r + 1}: " + ", ".join(f"{run.name} {run.rates[r]:.1f}" for run in runs if r in run.rates)
                + " images/s")
            runs = [run for run in runs if run.ours is not None]
            if not runs:
                break

    @staticmethod
    def rounds_done_by(runs: list[Run]) -> int:
        return min((len(run.rates) for run in runs), default=0)

    def ratio(self, run: Run) -> float | None:
        paired = [run.rates[r] / self.baseline.rates[r] for r in run.rates if r in self.baseline.rates]
        return statistics.median(paired) if paired else None

    def results(self) -> dict:
        rows = []
        for run in self.runs:
            rows.append({
                "variant": run.name, "label": run.variant.label, "batch_size": run.variant.batch_size,
                "status": run.status, "first_step_s": run.first_step_s,
                "images_per_s": statistics.median(run.rates.values()) if run.rates else None,
                "vs_baseline": self.ratio(run), "rounds": len(run.rates),
                "loss_rel_diff": run.loss_rel, "grad_rel_diff": run.grad_rel,
            })
        return {"device": device_name(self.device), "torch": torch.__version__,
                "cudnn": torch.backends.cudnn.version(), "size": self.args.size,
                "compiled": not self.args.no_compile, "eager_vs_compiled_baseline": self.eager_check,
                "variants": rows}

    def save(self) -> None:
        if self.args.json:
            tmp = self.args.json.with_name(self.args.json.name + ".tmp")
            tmp.write_text(json.dumps(self.results(), indent=2))
            os.replace(tmp, self.args.json)

    def summary(self) -> None:
        res = self.results()
        print()
        print(f"== {res['device']} | torch {res['torch']} | cuDNN {res['cudnn']} | {res['size']} px, "
              f"{'compiled as `compile: true`' if res['compiled'] else 'eager (--no-compile)'} ==")
        print(f"{'variant':<14} {'':<44} {'batch':>5} {'1st step':>8} {'images/s':>9} {'vs base':>8} "
              f"{'loss diff':>9} {'grad diff':>9}")
        for row in res["variants"]:
            print(summary_row(row))
        if res["eager_vs_compiled_baseline"]:
            e = res["eager_vs_compiled_baseline"]
            print(f"for scale, the compiled baseline's first step vs eager: loss {e['loss_rel']:.1e}, "
                  f"gradient {e['grad_rel']:.1e} (relative differences)")
        timed = [r for r in res["variants"] if r["vs_baseline"] is not None and r["variant"] != "baseline"]
        if timed:
            best = max(timed, key=lambda r: r["vs_baseline"])
            print(f"best_variant_vs_baseline: {best['vs_baseline']:.2f} ({best['variant']})")


def summary_row(row: dict) -> str:
    cells = [f"{row['variant']:<14} {row['label'][:44]:<44} {row['batch_size']:>5}"]
    if row["first_step_s"] is None:  # never ran
        return " ".join(cells + [f"  {row['status']}"])
    cells.append(f"{row['first_step_s']:>7.1f}s")
    if row["images_per_s"] is None:
        cells.append(f"{'-':>9} {'-':>8}")
    else:
        cells.append(f"{row['images_per_s']:>9.1f} {row['vs_baseline']:>7.2f}x")
    if row["loss_rel_diff"] is not None:
        cells.append(f"{row['loss_rel_diff']:>9.1e} {row['grad_rel_diff']:>9.1e}")
    if row["status"] != "ok":
        cells.append(f"  {row['status']}")
    elif row["images_per_s"] is None:
        cells.append("  not timed")
    return " ".join(cells)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run_all(bench: Bench) -> None:
    args = bench.args
    groups = [[r for r in bench.runs if r.variant.group == g] for g in (0, 1)]
    for run in groups[0]:
        if run is not bench.baseline and time.monotonic() - T0 > args.budget * 0.5:
            run.status = "skipped: time budget"
            log(f"{run.name}: skipped, time budget of {args.budget:.0f} s half spent on building")
            continue
        bench.build_and_check(run)
        if bench.baseline.ours is None:
            return  # nothing to compare with
    bench.time_rounds(groups[0], deadline=args.budget * 0.7)
    bench.save()
    for run in groups[1]:
        if time.monotonic() - T0 > args.budget * 0.6:
            run.status = "skipped: time budget"
            log(f"{run.name}: skipped, less than 40 % of the {args.budget:.0f} s time budget left")
            continue
        bench.build_and_check(run)
        if run.ours is not None:
            bench.time_rounds([bench.baseline, run], deadline=args.budget)
            bench.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128],
                        help="every variant runs at the first; each further one adds the baseline at that batch size")
    parser.add_argument("--variants", nargs="+", help="run only these (the baseline always runs)")
    parser.add_argument("--steps", type=int, help="steps per variant and timed round (default: 10 on a GPU, 1 on a CPU)")
    parser.add_argument("--rounds", type=int, help="timed rounds (default: 5 on a GPU, 1 on a CPU)")
    parser.add_argument("--warmup", type=int, help="steps after the first, compiling one (default: 2 on a GPU, 0 on a CPU)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; later variants are skipped after it")
    parser.add_argument("--loss-tol", type=float, default=1e-2, help="relative difference of the first step's loss")
    parser.add_argument("--grad-tol", type=float, default=5e-2,
                        help="relative difference (norm) of the first step's TransformerNet gradient")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true", help="eager steps (a smoke test on a CPU)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    args.steps = args.steps or (10 if on_gpu else 1)
    args.rounds = args.rounds or (5 if on_gpu else 1)
    args.warmup = (2 if on_gpu else 0) if args.warmup is None else args.warmup
    if on_gpu and not torch.cuda.is_available():
        # `make bench` runs every benchmark; on a machine without a GPU this one has nothing to measure
        print("gpu_variants: skipped, no CUDA device (`--device cpu --size 32 --batch-sizes 2 --no-compile` "
              "runs it on the CPU as a smoke test)")
        return
    log(f"device {device_name(device)}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
        f"{os.cpu_count()} CPUs, {args.size} px")
    # a wall-clock limit's SIGTERM ends the run through `finally`: what was measured is still printed and saved
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    bench = Bench(args, device)
    try:
        run_all(bench)
    finally:
        bench.save()
        bench.summary()
    differing = [run.name for run in bench.runs if run.status.startswith("DIFFERS")]
    if differing:
        loss_tol, grad_tol = bench.tolerances()
        sys.exit(f"gpu_variants: {', '.join(differing)} computed another loss or gradient than the baseline "
                 f"(relative tolerances {loss_tol:.1e} and {grad_tol:.1e}; --loss-tol, --grad-tol)")


if __name__ == "__main__":
    main()
