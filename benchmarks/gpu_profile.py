"""Where a training step's GPU time goes: our step's top CUDA kernels, eager and compiled.

For each mode (eager, `torch.compile` of the loss computation as
``compile: true`` does it, the same with ``max-autotune-no-cudagraphs``,
whose autotuning takes minutes): images/s after warm-up, then a
`torch.profiler` table of the kernels that took the most GPU time over a few
steps, and the share of convolution kernels against everything else.

    python benchmarks/gpu_profile.py [--batch-size 64] [--size 256] [--modes eager compiled [max-autotune]]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from stylepipe.models.vgg import random_state_dict
from train_throughput import Ours

CONV_MARKERS = ("conv", "xmma", "implicit", "cudnn", "wgrad", "dgrad", "fprop", "sm90")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if not torch.cuda.is_available():
        # `make bench` runs every benchmark; on a machine without a GPU this one has nothing to measure
        print("gpu_profile: skipped, no CUDA device")
        return
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    vgg_state = {k[len("features."):]: v for k, v in random_state_dict(0).items()}
    gen = torch.Generator().manual_seed(0)
    style = torch.rand(1, 3, args.size, args.size, generator=gen) * 255
    batch = (torch.rand(args.batch_size, 3, args.size, args.size, generator=gen) * 255).to(torch.uint8).to(device)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {args.size} px, batch {args.batch_size}", flush=True)
    for mode in args.modes:
        ours = Ours(vgg_state, style, 0, True, True, device)
        if mode in ("compiled", "max-autotune"):  # compiled as `compile: true` does
            ours.module.compile_losses(**({"mode": "max-autotune-no-cudagraphs"} if mode == "max-autotune" else {}))
            ours.losses = ours.module.losses
        start = time.perf_counter()
        for _ in range(3):
            ours.step(batch)
        torch.cuda.synchronize()
        warm = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.steps):
            ours.step(batch)
        torch.cuda.synchronize()
        rate = args.steps * args.batch_size / (time.perf_counter() - start)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                ours.step(batch)
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
        total = sum(e.self_device_time_total for e in events)
        conv = sum(e.self_device_time_total for e in events if any(m in e.key.lower() for m in CONV_MARKERS))
        print(f"\n== {mode}: {rate:.1f} images/s (warm-up {warm:.1f} s); GPU busy {total / 3 / 1e3:.1f} ms per step, "
              f"{100 * conv / total:.0f}% in convolution kernels", flush=True)
        for e in sorted(events, key=lambda e: -e.self_device_time_total)[: args.top]:
            print(f"{100 * e.self_device_time_total / total:5.1f}%  {e.count // 3:4d}/step  {e.key[:110]}")
        del ours
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
