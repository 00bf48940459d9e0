"""Measure one style's network on the fixed evaluation set.

The losses are the training objective, computed with the same loss network,
layers and weights (``train`` with the style's overrides) on the stylized
evaluation images the pipeline wrote, so the numbers say how well the network
does on photographs it never saw. Each loss is written twice: ``content_loss``,
``style_loss``, ``tv_loss`` and ``total_loss`` are the weighted terms of the
training objective (so they change by the factor when a weight changes), and
``content_loss_unweighted``, ``style_loss_unweighted`` and ``tv_loss_unweighted``
are the same measurements before ``content_weight``, ``style_weight`` and
``tv_weight``: those compare across revisions whose weights differ. SSIM to the content image says how much of
the photograph survives, and size what the network costs. Every value is a
finite number, so ``dvc metrics diff`` can compare commits, and the same model
and images give the same numbers, whatever the thread count.

Throughput (training images/s and wall time from the training summary,
stylizing images/s) changes from run to run, so it goes to a file of its own
(``--speed``), which the pipeline keeps out of ``dvc metrics diff``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from skimage.metrics import structural_similarity
from tqdm import tqdm

from stylepipe.config import load_params, train_params
from stylepipe.io import read_json, write_json

WARMUP_IMAGES = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", nargs="+", required=True, metavar="FILE", help="params files, merged in order")
    parser.add_argument("--style", required=True, help="the style's name in params.yaml")
    parser.add_argument("--model", required=True, type=Path, help="trained TransformerNet (.pth)")
    parser.add_argument("--eval-images", required=True, type=Path, help="folder of evaluation (content) images")
    parser.add_argument("--stylized", required=True, type=Path, help="folder of the stylized evaluation images")
    parser.add_argument("--style-image", required=True, type=Path, help="the style image the network was trained on")
    parser.add_argument("--loss-network", required=True, type=Path, help="VGG16 features state_dict")
    parser.add_argument("--train-summary", required=True, type=Path, help="the training run's summary.json")
    parser.add_argument("--output", required=True, type=Path, help="metrics JSON to write (reproducible values)")
    parser.add_argument("--speed", type=Path,
                        help="speed JSON to write: training and stylizing throughput, which vary from run to run "
                             "(without it, stylizing speed is not measured)")


def _load_uint8(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    from stylepipe.data.images import load_rgb

    image = load_rgb(path)
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def image_pairs(eval_dir: Path, stylized_dir: Path) -> list[tuple[Path, Path]]:
    """(content image, stylized image) per evaluation image, matched by file stem."""
    from stylepipe.datamodule import list_images

    content = list_images(eval_dir)
    if not content:
        raise FileNotFoundError(f"{eval_dir}: no evaluation images; run `stylepipe fetch eval` first")
    pairs = []
    for path in content:
        stylized = stylized_dir / f"{path.stem}.png"
        if not stylized.is_file():
            raise FileNotFoundError(f"{stylized}: stylized image missing; run `stylepipe stylize` for this style first")
        pairs.append((path, stylized))
    return pairs


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 RGB images (window shrunk for very small images)."""
    win = min(7, min(a.shape[:2]))
    win -= 1 - win % 2  # odd
    return float(structural_similarity(a, b, channel_axis=2, data_range=255, win_size=win))


def _tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(image.copy()).permute(2, 0, 1).unsqueeze(0).float().to(device)


@contextlib.contextmanager
def _one_thread():
    """Run torch on one CPU thread: oneDNN and torch split their sums by thread, so the losses'
    last digits would depend on the thread count (and differ between Snakemake and DVC runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def loss_metrics(pairs, style_image: Path, loss_network: Path, train: dict, device: torch.device) -> dict:
    """Mean content/style/TV/total loss (weighted, and each term unweighted) and SSIM over the evaluation images.

    On the CPU it runs on one thread, so the numbers do not depend on the thread count.
    """
    if device.type == "cpu":
        with _one_thread():
            return _loss_metrics(pairs, style_image, loss_network, train, device)
    return _loss_metrics(pairs, style_image, loss_network, train, device)


@torch.inference_mode()
def _loss_metrics(pairs, style_image: Path, loss_network: Path, train: dict, device: torch.device) -> dict:
    from stylepipe.losses import content_loss, gram_matrix, style_loss, tv_loss
    from stylepipe.models.vgg import LossNetwork, layer_names
    from stylepipe.module import load_style_image

    layers = layer_names(train["content_layers"], train["style_layers"])
    net = LossNetwork.from_file(loss_network, layers).to(device)
    style_features = net(load_style_image(style_image, train["style_size"]).to(device))
    grams = {name: gram_matrix(style_features[name]) for name in train["style_layers"]}

    sums = dict.fromkeys(("content_loss", "style_loss", "tv_loss", "total_loss", "content_loss_unweighted",
                          "style_loss_unweighted", "tv_loss_unweighted", "ssim"), 0.0)
    for content_path, stylized_path in tqdm(pairs, desc="evaluate", unit="image"):
        stylized = _load_uint8(stylized_path)
        # the stylized image has the content image's size after stylize's --max-size
        content = _load_uint8(content_path, size=(stylized.shape[1], stylized.shape[0]))
        x, y = _tensor(content, device), _tensor(stylized, device)
        target, features = net(x), net(y)
        raw = {
            "content_loss": content_loss(features, target, train["content_layers"]).item(),
            "style_loss": style_loss(features, grams, train["style_layers"], train["style_layer_weights"]).item(),
            "tv_loss": tv_loss(y).item(),
        }
        c = train["content_weight"] * raw["content_loss"]
        s = train["style_weight"] * raw["style_loss"]
        tv = train["tv_weight"] * raw["tv_loss"] if train["tv_weight"] else 0.0
        for key, value in (("content_loss", c), ("style_loss", s), ("tv_loss", tv), ("total_loss", c + s + tv)):
            sums[key] += value
        for key, value in raw.items():
            sums[f"{key}_unweighted"] += value
        sums["ssim"] += ssim(stylized, content)
    return {key: value / len(pairs) for key, value in sums.items()}


def stylize_speed(runner: Callable[[torch.Tensor], torch.Tensor], size: int, images: int, seed: int) -> float:
    """Images per second stylizing ``size``×``size`` images one at a time with ``runner``, after a warm-up.

    ``runner`` is what `stylepipe stylize` uses (`stylize.load_runner`), so the
    figure is the command's own speed; its results come back on the CPU, which
    waits for a GPU to finish.
    """
    from stylepipe.stylize.runners import stylize_tensor

    generator = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, 256, (images + WARMUP_IMAGES, 1, 3, size, size), generator=generator).float()
    for i in range(WARMUP_IMAGES):
        stylize_tensor(runner, batch[i])
    start = time.perf_counter()
    for i in range(WARMUP_IMAGES, WARMUP_IMAGES + images):
        stylize_tensor(runner, batch[i])
    return images / (time.perf_counter() - start)


def _train_summary(path: Path) -> dict:
    """The training run's summary.json, or an error naming it."""
    fix = "run `stylepipe train` again to write it (or pass the right --train-summary)"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training summary not found; {fix}")
    try:
        summary = read_json(path)
        values = {key: float(summary[key]) for key in ("images_per_s", "wall_time_s")}
    except (ValueError, TypeError, KeyError) as err:  # bad JSON, a missing or non-numeric value
        raise ValueError(f"{path}: not a training summary ({type(err).__name__}: {err}); {fix}") from err
    return values


def evaluate(args: argparse.Namespace) -> tuple[dict, dict | None]:
    """(metrics, speed): the reproducible measurements, and the throughput (None without ``--speed``)."""
    from stylepipe.models.transformer import load_transformer
    from stylepipe.stylize.runners import load_runner

    params = load_params(args.params)
    train = train_params(params, args.style)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(params["seed"])

    # every input checked before the slow part
    pairs = image_pairs(args.eval_images, args.stylized)
    summary = _train_summary(args.train_summary)
    model = load_transformer(args.model)
    metrics = loss_metrics(pairs, args.style_image, args.loss_network, train, device)
    metrics.update(
        eval_images=len(pairs),
        model_size_mb=args.model.stat().st_size / 1e6,
        model_params=sum(p.numel() for p in model.parameters()),
    )
    bad = sorted(key for key, value in metrics.items() if not math.isfinite(value))
    if bad:
        raise ValueError(f"{args.style}: non-finite metrics {bad}; the network diverged (check the training curves)")
    if args.speed is None:
        return metrics, None

    timing = params["evaluate"]
    # as the stylize step runs it: its default device, engine and the params' precision
    runner = load_runner(args.model, precision=params["stylize"]["precision"])
    print(f"{args.style}: stylize speed measured with {runner}", file=sys.stderr)
    speed = {
        "train_images_per_s": float(summary["images_per_s"]),
        "train_wall_time_s": float(summary["wall_time_s"]),
        "stylize_size": timing["speed_size"],
        "stylize_images_per_s": stylize_speed(runner, timing["speed_size"], timing["speed_images"], params["seed"]),
    }
    return metrics, speed


def main(args: argparse.Namespace) -> int:
    metrics, speed = evaluate(args)
    write_json(args.output, metrics)
    if speed is not None:
        write_json(args.speed, speed)
    values = metrics | (speed or {})
    print(f"{args.style}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())))
    return 0
