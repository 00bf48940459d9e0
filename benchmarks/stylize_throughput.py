"""Stylization throughput at 512 px: `stylepipe stylize`'s runner vs eager fp32 PyTorch.

The reference is what pytorch/examples' `stylize` does: the TransformerNet in
eager float32 under no_grad. Ours is `stylepipe.stylize.load_runner` with
its defaults for this machine (on a CPU with native bf16: PyTorch with bf16
weights and channels_last; on other CPUs: the network exported to ONNX and
run by onnxruntime in float32; on CUDA: eager float32). Two more rows:
onnxruntime float32, and `--precision fp32` (what the defaults give where
bf16 is not native). Same weights, same images, alternating round by round
in one process. The images are scikit-image's astronaut photograph; the
weights are random, with the last layer scaled so that the output spans about
0-255 as a trained network's does (a random network's barely leaves 0, which
would hide rounding differences). Differences to the reference are on that
0-255 scale, before rounding to uint8. Last line: `speedup_vs_reference`
(ours vs the reference).

    python benchmarks/stylize_throughput.py [--size 512] [--batch-size 1] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import skimage.data
import torch
import torch.nn.functional as F

from stylepipe.models.transformer import TransformerNet
from stylepipe.stylize.runners import load_runner, pick_device


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
    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float()
    photo = F.interpolate(photo, size=(args.size, args.size), mode="bilinear", antialias=True).clamp(0, 255).round()
    batches = [photo.expand(args.batch_size, -1, -1, -1).contiguous() for _ in range(args.images)]
    torch.manual_seed(0)
    net = TransformerNet().eval()
    with torch.no_grad():
        # output mean 127.5, standard deviation 50 on the photograph
        y = net(photo)
        scale = 50 / y.std()
        net.deconv3.conv2d.weight.mul_(scale)
        net.deconv3.conv2d.bias.mul_(scale).add_(127.5 - scale * y.mean())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pth"
        torch.save(net.state_dict(), path)
        ours = load_runner(path, device)
        others = {"onnxruntime fp32": load_runner(path, device, engine="onnxruntime"),
                  "--precision fp32": load_runner(path, device, precision="fp32")}
    reference = net.to(device)

    def run_reference(batch):
        with torch.no_grad():
            out = reference(batch.to(device)).cpu()
        return out

    sides = {"reference (eager fp32)": run_reference, "ours (stylepipe stylize)": ours}
    labels = {"reference (eager fp32)": "torch fp32, eager", "ours (stylepipe stylize)": str(ours)}
    for name, runner in others.items():
        sides[name] = runner
        labels[name] = str(runner)
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
    expected = run_reference(batches[0])
    n = args.rounds * args.images * args.batch_size
    print(f"torch {torch.__version__}, device {device}, {args.size} px, batch {args.batch_size}, {n} images per side")
    for name in names:
        rate = args.images * args.batch_size / statistics.median(per_round[name])
        line = f"{name:<26} {labels[name]:<26} {rate:7.3f} images/s"
        if name != names[0]:
            diff = (sides[name](batches[0]) - expected).abs()
            line += f"  vs reference: max {diff.max().item():.3f}, mean {diff.mean().item():.4f}"
        print(line)
    speedup = statistics.median(a / b for a, b in zip(per_round[names[0]], per_round[names[1]]))
    print(f"speedup_vs_reference: {speedup:.2f}")


if __name__ == "__main__":
    main()
