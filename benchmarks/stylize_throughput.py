"""Stylization throughput at 512 px: `stylepipe stylize`'s runner vs eager fp32 PyTorch.

The reference is what pytorch/examples' `stylize` does: the TransformerNet in
eager float32 under no_grad. Ours is `stylepipe.stylize.load_runner` with
its defaults for this machine (on a CPU: the network exported to ONNX and run
by onnxruntime; on CUDA: bf16 autocast + channels_last). Same weights, same
images, alternating round by round in one process. Last line:
`speedup_vs_reference`.

    python benchmarks/stylize_throughput.py [--size 512] [--batch-size 1] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from stylepipe.models.transformer import TransformerNet
from stylepipe.stylize import load_runner, pick_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--images", type=int, default=1, help="images per round and side")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    device = pick_device(args.device)
    torch.manual_seed(0)
    net = TransformerNet().eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pth"
        torch.save(net.state_dict(), path)
        ours = load_runner(path, device)
    reference = net.to(device)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(args.batch_size, 3, args.size, args.size, generator=gen) * 255 for _ in range(args.images)]

    def run_reference(batch):
        with torch.no_grad():
            out = reference(batch.to(device)).cpu()
        return out

    sides = {"reference (eager fp32)": run_reference, "ours (stylepipe stylize)": ours}
    for fn in sides.values():
        fn(batches[0])  # warm-up
    # rounds in alternating order; medians of per-round figures resist the load of a shared machine
    names = list(sides)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            for batch in batches:
                sides[name](batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_round[name].append(time.perf_counter() - start)
    diff = (ours(batches[0]) - run_reference(batches[0])).abs().max().item()
    n = args.rounds * args.images * args.batch_size
    rate = {name: args.images * args.batch_size / statistics.median(t) for name, t in per_round.items()}
    speedup = statistics.median(a / b for a, b in zip(per_round[names[0]], per_round[names[1]]))
    print(f"torch {torch.__version__}, device {device}, {args.size} px, batch {args.batch_size}, {n} images per side")
    for name, r in rate.items():
        print(f"{name:<28} {r:7.3f} images/s")
    print(f"max abs difference (0-255 scale): {diff:.4f}")
    print(f"speedup_vs_reference: {speedup:.2f}")


if __name__ == "__main__":
    main()
