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

The evaluation images are the ones `stylepipe stylize` reads from the folder,
each paired with the ``{stem}.png`` it writes; each is measured against its
content image as the network saw it (resized to the stylized image's size as
stylize resizes it). A stylized image that is not its content image at some
scale, one too small for the loss network, an unreadable image and a network
with NaN weights (stylize writes its NaN outputs as black images) are refused,
naming the file and what to do.

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
from skimage.metrics import structural_similarity
from tqdm import tqdm

from stylepipe.config import load_params, train_params
from stylepipe.io import check_output_files, read_json, write_json

WARMUP_IMAGES = 2
# what to do about an unreadable image, by kind
STYLIZE_AGAIN = "run `stylepipe stylize` for this style again"
FETCH_AGAIN = "fetch the evaluation images again (`stylepipe fetch eval`)"


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


def evaluation_images(eval_dir: Path) -> list[Path]:
    """The images `stylepipe stylize` reads from ``eval_dir`` (its files, hidden ones left out), each
    with a name of its own: stylize writes ``{stem}.png`` for each."""
    from stylepipe.stylize.inputs import expand_inputs

    fetch = "run `stylepipe fetch eval` first (or pass the right --eval-images)"
    if not eval_dir.is_dir():
        raise FileNotFoundError(f"{eval_dir}: evaluation images folder not found; {fetch}")
    try:
        content = expand_inputs([eval_dir])
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; {fetch}") from err
    names: dict[str, Path] = {}
    for path in content:
        other = names.setdefault(f"{path.stem}.png".casefold(), path)
        if other != path:
            # stylize refuses such a folder; measuring both against one image would be wrong
            raise ValueError(f"{other} and {path}: stylize writes both evaluation images to {path.stem}.png "
                             "(one name, in any case, per image); rename one of them")
    return content


def image_pairs(eval_dir: Path, stylized_dir: Path) -> list[tuple[Path, Path]]:
    """(content image, stylized image) per evaluation image: :func:`evaluation_images` and the
    ``{stem}.png`` stylize writes for each."""
    pairs = [(path, stylized_dir / f"{path.stem}.png") for path in evaluation_images(eval_dir)]
    for _, stylized in pairs:
        if not stylized.is_file():
            raise FileNotFoundError(f"{stylized}: stylized image missing; run `stylepipe stylize` for this style first")
    return pairs


def check_sizes(content: Path, stylized: Path, min_side: int) -> tuple[int, int]:
    """The stylized image's (width, height), once it is known to be the content image at some scale
    (stylize's --max-size or --scale) and large enough to measure."""
    (cw, ch), (sw, sh) = _size(content, FETCH_AGAIN), _size(stylized, STYLIZE_AGAIN)
    if not _same_picture_scaled((cw, ch), (sw, sh)):
        raise ValueError(f"{stylized}: {sw}x{sh} px, but its evaluation image {content} is {cw}x{ch} px, not the "
                         "same picture at another scale (a stylization of other or older images); stylize the "
                         "evaluation images again with `stylepipe stylize`")
    if min(sw, sh) < min_side:
        raise ValueError(f"{stylized}: {sw}x{sh} px, too small to measure: the loss network needs at least "
                         f"{min_side} px on each side; use a larger evaluation image than {content} "
                         "(or a larger stylize.max_size)")
    return sw, sh


def _same_picture_scaled(content: tuple[int, int], stylized: tuple[int, int]) -> bool:
    """Whether one factor f turns ``content`` into ``stylized`` as `stylepipe stylize` rounds:
    max(1, round(side · f)) for both sides."""
    low, high = 0.0, math.inf
    for c, s in zip(content, stylized):
        low = max(low, (s - 0.5) / c if s > 1 else 0.0)
        high = min(high, (s + 0.5) / c)
    return low <= high


def _size(path: Path, fix: str) -> tuple[int, int]:
    """(width, height) as displayed, from the header; an unreadable file is an ImageError that says ``fix``."""
    from stylepipe.data.images import ImageError
    from stylepipe.stylize.inputs import oriented_size

    try:
        return oriented_size(path)
    except ImageError as err:
        raise ImageError(path, f"{err.reason}; {fix}") from err


def _load(path: Path, size: tuple[int, int] | None, fix: str) -> np.ndarray:
    """``path`` as uint8 RGB; with ``size``, resized as `stylepipe stylize` resizes its input (what the
    network saw), else as stored (a stylized image's colours under its alpha are the network's output,
    not the white a viewer would show). An unreadable file is an ImageError that says ``fix``."""
    from stylepipe.data.images import ImageError, load_colours
    from stylepipe.stylize.inputs import load_content

    try:
        image = load_colours(path) if size is None else load_content(path, size).rgb
    except ImageError as err:
        raise ImageError(path, f"{err.reason}; {fix}") from err
    return np.asarray(image, dtype=np.uint8)


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


@contextlib.contextmanager
def _no_tf32():
    """cuDNN's float32 convolutions in float32: by default PyTorch lets them run in TF32 on Ampere and
    later GPUs (10-bit mantissas), which moves the losses in their third or fourth digit."""
    allowed = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = allowed


def loss_metrics(pairs, style_image: Path, loss_network: Path, train: dict, device: torch.device) -> dict:
    """Mean content/style/TV/total loss (weighted, and each term unweighted) and SSIM over the evaluation images.

    On the CPU it runs on one thread, so the numbers do not depend on the thread count; on a GPU
    in float32, not TF32.
    """
    with _one_thread() if device.type == "cpu" else _no_tf32():
        return _loss_metrics(pairs, style_image, loss_network, train, device)


@torch.inference_mode()
def _loss_metrics(pairs, style_image: Path, loss_network: Path, train: dict, device: torch.device) -> dict:
    from stylepipe.losses import content_loss, gram_matrix, style_loss, tv_loss
    from stylepipe.models.vgg import LossNetwork, layer_names, smallest_input
    from stylepipe.data.tensors import load_style_image
    from stylepipe.training_memory import check_style_image

    layers = layer_names(train["content_layers"], train["style_layers"])
    net = LossNetwork.from_file(loss_network, layers).to(device)
    network_side = smallest_input(layers)
    min_side = max(network_side, 3)  # and SSIM's window is 3 pixels
    sizes = [check_sizes(content, stylized, min_side) for content, stylized in pairs]  # all, before measuring any
    style = load_style_image(style_image, train["style_size"], network_side)
    if device.type == "cpu":  # a GPU's allocator fails with an error of its own
        check_style_image(*style.shape[-2:], train["style_size"], step="evaluate")
    style_features = net(style.to(device))
    grams = {name: gram_matrix(style_features[name]) for name in train["style_layers"]}

    sums = dict.fromkeys(("content_loss", "style_loss", "tv_loss", "total_loss", "content_loss_unweighted",
                          "style_loss_unweighted", "tv_loss_unweighted", "ssim"), 0.0)
    for (content_path, stylized_path), size in zip(tqdm(pairs, desc="evaluate", unit="image"), sizes):
        stylized = _load(stylized_path, None, STYLIZE_AGAIN)
        # the content image as the network saw it: at the stylized size (stylize's --max-size), resized as stylize does
        content = _load(content_path, size, FETCH_AGAIN)
        x, y = _tensor(content, device), _tensor(stylized, device)
        # the content target needs the loss network only up to the deepest content layer, as in training
        target, features = net(x, train["content_layers"]), net(y)
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
    bad = sorted(key for key, value in values.items() if not math.isfinite(value))
    if bad:  # JSON cannot hold them: the speed file would fail to write after the metrics file was
        raise ValueError(f"{path}: {', '.join(bad)} not a finite number; {fix}")
    return values


def check_finite(model: torch.nn.Module, path: Path) -> None:
    """Refuse a diverged network: its NaN outputs are written as black images, which would measure as finite."""
    weights = [w for w in model.state_dict().values() if w.is_floating_point()]
    bad = sum(int((~torch.isfinite(w)).sum()) for w in weights)
    if bad:
        total = sum(w.numel() for w in weights)
        raise ValueError(f"{path}: {bad} of its {total} weights are NaN or infinite, the network diverged in training; "
                         "check its training curves, lower train.lr (or the loss weights) and train it again")


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
    check_finite(model, args.model)
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
    # both outputs checked before the work: a bad --speed must not fail after --output is written
    check_output_files({"output": args.output, "speed": args.speed})
    metrics, speed = evaluate(args)
    write_json(args.output, metrics)
    if speed is not None:
        write_json(args.speed, speed)
    values = metrics | (speed or {})
    print(f"{args.style}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())))
    return 0
