"""Training throughput: stylepipe's default configuration vs a pytorch/examples-style loop.

Both sides use the same image size, batch size, random VGG16 and random
content batches, in one process, alternating round by round so that machine
load hits them alike. Printed: images/s of the reference and of our step
(with ``--ablation`` also of each optimisation on its own), at the image size
that params.yaml trains at unless ``--size`` says otherwise;
`lightning_overhead` (the Lightning
Trainer against a bare loop running the identical step) and, last,
`speedup_vs_reference` (our default configuration from params.yaml vs the reference,
median per-round ratio of CPU time; the wall-time ratio is printed just before).
On a CPU without native bf16 (AVX-512 BF16 or AMX) PyTorch emulates it, many
times slower, and `stylepipe train` tells the user to set 32-true there: the
default configuration is then timed with 32-true, and a line says so.

    python benchmarks/train_throughput.py [--size 256] [--steps 2] [--rounds 4] [--ablation]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections import namedtuple
from pathlib import Path

import torch
import torch.nn.functional as F

from stylepipe.config import parse_yaml
from stylepipe.cpu import native_bf16_cpu
from stylepipe.models.transformer import TransformerNet
from stylepipe.models.vgg import random_state_dict
from stylepipe.module import StyleTransferModule

REPO = Path(__file__).resolve().parents[1]


# --- the reference: pytorch/examples fast_neural_style/neural_style (vgg.py, utils.py, train loop)
class RefVgg16(torch.nn.Module):
    def __init__(self, features: torch.nn.Sequential):
        super().__init__()
        self.slice1, self.slice2, self.slice3, self.slice4 = (torch.nn.Sequential() for _ in range(4))
        for x in range(4):
            self.slice1.add_module(str(x), features[x])
        for x in range(4, 9):
            self.slice2.add_module(str(x), features[x])
        for x in range(9, 16):
            self.slice3.add_module(str(x), features[x])
        for x in range(16, 23):
            self.slice4.add_module(str(x), features[x])
        for param in self.parameters():
            param.requires_grad = False

    def forward(self, X):
        h = self.slice1(X)
        h_relu1_2 = h
        h = self.slice2(h)
        h_relu2_2 = h
        h = self.slice3(h)
        h_relu3_3 = h
        h = self.slice4(h)
        h_relu4_3 = h
        return namedtuple("VggOutputs", ["relu1_2", "relu2_2", "relu3_3", "relu4_3"])(h_relu1_2, h_relu2_2, h_relu3_3, h_relu4_3)


def ref_gram(y):
    (b, ch, h, w) = y.size()
    features = y.view(b, ch, w * h)
    return features.bmm(features.transpose(1, 2)) / (ch * h * w)


def ref_normalize(batch):
    mean = batch.new_tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
    std = batch.new_tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
    return (batch.div_(255.0) - mean) / std


class Reference:
    def __init__(self, vgg_state, style, seed, device="cpu"):
        from stylepipe.models.vgg import _features

        features = _features()
        features.load_state_dict(vgg_state)
        self.vgg = RefVgg16(features).to(device)
        torch.manual_seed(seed)
        self.transformer = TransformerNet().to(device)
        self.optimizer = torch.optim.Adam(self.transformer.parameters(), 1e-3)
        self.gram_style = [ref_gram(y) for y in self.vgg(ref_normalize(style.to(device, copy=True)))]

    def step(self, batch):
        x = batch.float()
        n_batch = len(x)
        self.optimizer.zero_grad()
        y = self.transformer(x)
        y = ref_normalize(y)
        x = ref_normalize(x)
        features_y = self.vgg(y)
        features_x = self.vgg(x)  # content target with autograd, as the example does
        content_loss = 1e5 * F.mse_loss(features_y.relu2_2, features_x.relu2_2)
        style_loss = 0.0
        for ft_y, gm_s in zip(features_y, self.gram_style):
            style_loss += F.mse_loss(ref_gram(ft_y), gm_s.expand(n_batch, -1, -1))
        total = content_loss + 1e10 * style_loss
        total.backward()
        self.optimizer.step()


class Ours:
    """The LightningModule's own loss computation, in a bare loop."""

    def __init__(self, vgg_state, style, seed, bf16: bool, channels_last: bool, device="cpu"):
        torch.manual_seed(seed)
        self.module = StyleTransferModule(style, vgg_state, channels_last=channels_last).to(device)
        self.optimizer = self.module.configure_optimizers()
        self.bf16, self.device_type = bf16, torch.device(device).type
        self.losses = self.module.losses  # torch.compile may replace it
        if bf16:
            self.module.cast_loss_network(torch.bfloat16)  # what the module's setup() does under bf16-mixed

    def step(self, batch):
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            losses, _ = self.losses(self.module._prepare(batch))
        losses["total_loss"].backward()
        self.optimizer.step()


def timed(fn, batches) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier figure."""
    start, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        fn(batch)
    return time.perf_counter() - start, time.process_time() - cpu


def lightning_vs_bare(vgg_state, style, batches, bf16: bool, channels_last: bool, rounds: int) -> float:
    """Per-step time of Trainer.fit over the bare loop running the identical step, in percent (median of rounds)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    class Clock(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 1:
                self.start = time.perf_counter()  # after one warm-up step, as the bare loop
            self.end = time.perf_counter()

    data = torch.cat(batches)
    batch_size = batches[0].shape[0]
    n_steps = len(batches)

    def bare() -> float:
        ours = Ours(vgg_state, style, 0, bf16, channels_last)
        loader = iter(DataLoader(data, batch_size=batch_size))
        ours.step(next(loader))
        return timed(ours.step, loader)[0]

    def lightning() -> float:
        module = StyleTransferModule(style, vgg_state, channels_last=channels_last)
        clock = Clock()
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, precision="bf16-mixed" if bf16 else "32-true", max_steps=n_steps,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock],
        )
        trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=batch_size))
        return clock.end - clock.start

    ratios = []
    for r in range(rounds):
        order = [bare, lightning] if r % 2 == 0 else [lightning, bare]
        times = {fn.__name__: fn() for fn in order}
        ratios.append(times["lightning"] / times["bare"])
    return 100.0 * (statistics.median(ratios) - 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, help="image size (default: train.image_size of params.yaml, 256 as in "
                        "pytorch/examples; 96 takes a minute on a CPU)")
    parser.add_argument("--ablation", action="store_true",
                        help="also time each optimisation on its own (fp32, channels_last, bf16 without channels_last)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)

    train = parse_yaml((REPO / "params.yaml").read_text())["train"]
    default = (train["precision"] == "bf16-mixed", bool(train["channels_last"]))
    emulated_bf16 = default[0] and not native_bf16_cpu()
    if emulated_bf16:  # what `stylepipe train` recommends on this CPU
        default = (False, default[1])
    args.size = args.size or int(train["image_size"])
    vgg_state = {k[len("features."):]: v for k, v in random_state_dict(0).items()}
    gen = torch.Generator().manual_seed(0)
    style = torch.rand(1, 3, args.size, args.size, generator=gen) * 255
    batches = [(torch.rand(args.batch_size, 3, args.size, args.size, generator=gen) * 255).to(torch.uint8)
               for _ in range(args.steps)]

    variants = {
        "reference (pytorch/examples: fp32, eager, content target with autograd)": Reference(vgg_state, style, 0),
        "ours fp32, content target without autograd": Ours(vgg_state, style, 0, False, False),
        "ours fp32 + channels_last (VGG)": Ours(vgg_state, style, 0, False, True),
        "ours bf16 autocast": Ours(vgg_state, style, 0, True, False),
        "ours bf16 autocast + channels_last (VGG)": Ours(vgg_state, style, 0, True, True),
    }
    default_name = {(False, False): "ours fp32, content target without autograd", (False, True): "ours fp32 + channels_last (VGG)",
                    (True, False): "ours bf16 autocast", (True, True): "ours bf16 autocast + channels_last (VGG)"}[default]
    if not args.ablation:
        variants = {name: v for name, v in variants.items() if name.startswith("reference") or name == default_name}
    for v in variants.values():
        v.step(batches[0])  # warm-up
    # rounds in rotating order; medians of per-round figures resist the load of a shared machine
    names = list(variants)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            per_round[name].append(timed(variants[name].step, batches))
    ref_name = names[0]
    images = args.steps * args.batch_size

    def ratio(name: str, k: int) -> float:
        return statistics.median(tr[k] / tv[k] for tr, tv in zip(per_round[ref_name], per_round[name]))

    rate = {name: images / statistics.median(t[0] for t in per_round[name]) for name in names}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px, batch {args.batch_size}, "
          f"{args.rounds} rounds x {args.steps} steps per variant (medians; speedups by wall time / by CPU time)")
    for name in names:
        print(f"{name:<72} {rate[name]:7.2f} images/s  ({ratio(name, 0):.2f}x / {ratio(name, 1):.2f}x)")
    overhead = lightning_vs_bare(vgg_state, style, batches * 3, *default, rounds=max(6, args.rounds))
    print(f"default configuration (params.yaml): {default_name}")
    if emulated_bf16:
        print(f"  (params.yaml says {train['precision']}, but this CPU has no native bf16: timed with 32-true, "
              "as `stylepipe train` recommends here)")
    print(f"lightning_overhead: {overhead:.1f}%")
    print(f"speedup_vs_reference_wall_time: {ratio(default_name, 0):.2f}")
    print(f"speedup_vs_reference: {ratio(default_name, 1):.2f}")


if __name__ == "__main__":
    main()
