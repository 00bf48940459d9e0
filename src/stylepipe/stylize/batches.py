"""`stylize_files`: images on disk in, stylized images on disk out, batch by batch.

Images are grouped by target size so that every batch is one tensor, whatever
mix of sizes the inputs are; each is decoded only when its batch runs. An image
that cannot be read is skipped and reported at the end (:class:`UnreadableImages`),
after all the others are written. On a CPU, an image too large for the memory
left is refused before anything runs (:class:`TooLargeForMemory`), rather than
left to the kernel's OOM killer, which ends the process without a word; a batch
that still fails to allocate (on any device) stops the run (:class:`OutOfMemory`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from stylepipe.cpu import native_bf16_cpu
from stylepipe.data.images import ImageError
from stylepipe.memory import Available, available_memory, gigabytes, out_of_memory, round_down
from stylepipe.stylize.colour import preserve_color
from stylepipe.stylize.inputs import Content, expand_inputs, load_content, oriented_size, target_size
from stylepipe.stylize.outputs import check_sizes_fit, output_format, output_paths, save_output
from stylepipe.stylize.runners import Runner, load_runner, stylize_tensor


class UnreadableImages(ValueError):
    """Some inputs could not be read; all the others were stylized and written."""

    def __init__(self, errors: Sequence[ImageError], written: Sequence[Path], total: int):
        listed = "; ".join(str(e) for e in errors[:10]) + (f"; and {len(errors) - 10} more" if len(errors) > 10 else "")
        super().__init__(f"{len(errors)} of {total} image(s) could not be read and were not stylized "
                         f"({len(written)} written): {listed}. Replace or remove them and run again")
        self.errors, self.written = list(errors), list(written)


class OutOfMemory(ValueError):
    """A batch of images is too large to stylize in the memory of its device."""

    def __init__(self, paths: Sequence[Path], size: tuple[int, int], runner: Runner | torch.nn.Module):
        where = f"{runner}" if isinstance(runner, Runner) else "PyTorch"
        names = ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        fix = f"stylize at a smaller size with --max-size (e.g. --max-size {max(1, max(size) // 2)})"
        if len(paths) > 1:
            fix = f"pass --batch-size 1, or {fix}"
        super().__init__(f"{names} ({size[0]}x{size[1]} px): out of memory stylizing in {where} "
                         f"(about 1 GB per megapixel in float32); {fix}")
        self.paths = list(paths)


# Memory one image takes through TransformerNet on a CPU, bytes per pixel, (least, most), measured
# from 0.4 to 6 MP in `stylepipe stylize` (AMD EPYC, AVX2; resident memory, and address space for
# `ulimit -v`): float32 PyTorch 930-1000; onnxruntime 780-1050 resident, up to 1700 of address space
# (its arena grows in steps); bf16 emulated by PyTorch about 5,100; bf16 on a CPU that computes it
# natively about 400. On top of that, up to about 150 MB (threads, buffers, decoding).
# An image is refused only if it cannot fit even at the least; the --max-size offered fits at the most.
_NETWORK_BYTES_PER_PIXEL = {("torch", "fp32"): (900, 1000), ("onnxruntime", "fp32"): (750, 1800)}
_BF16_BYTES_PER_PIXEL = {True: (400, 800), False: (5000, 5500)}  # by native_bf16_cpu()
_OVERHEAD_BYTES = 300 << 20  # at the most
# each image of a batch also sits in memory decoded, as uint8 and float tensors, in and out
_BATCH_BYTES_PER_PIXEL = 33


def bytes_per_pixel(runner: Runner, batch: int) -> tuple[int, int] | None:
    """About how much memory stylizing ``batch`` images takes per pixel on a CPU: (least, most); None: unknown."""
    if runner.device.type != "cpu":
        return None  # a GPU's allocator raises an error that OutOfMemory catches
    if runner.precision == "bf16":
        per_pixel = _BF16_BYTES_PER_PIXEL[native_bf16_cpu()]
    else:
        per_pixel = _NETWORK_BYTES_PER_PIXEL.get((runner.engine, runner.precision))
        if per_pixel is None:
            return None
    # the network takes one image at a time; the batch's tensors are all there at once
    least, most = (n + _BATCH_BYTES_PER_PIXEL * batch for n in per_pixel)
    return least, most


class TooLargeForMemory(OutOfMemory):
    """Images that would need more memory than this process has left; refused before any is stylized."""

    def __init__(self, too_large: Sequence[tuple[Path, tuple[int, int], int]], runner: Runner, free: Available,
                 max_size: int):
        first, size, needed = too_large[0]
        others = f" (and {len(too_large) - 1} more image(s) too large)" if len(too_large) > 1 else ""
        ValueError.__init__(
            self, f"{first} ({size[0]}x{size[1]} px){others}: too large to stylize in {runner}: it needs at least "
                  f"{gigabytes(needed)}, and this process has {free}; nothing was stylized. Stylize at a smaller "
                  f"size with --max-size {max_size} (or on a machine with more memory)")
        self.paths = [p for p, _, _ in too_large]
        self.max_size = max_size


def check_memory(
    runner: Runner, paths: Sequence[Path], groups: dict[tuple[int, int], list[int]], batch_size: int,
    scale: float | None = None, free: Available | None = None,
) -> None:
    """Refuse, naming them and the ``--max-size`` that fits, the images too large for the memory left."""
    free = free if free is not None else available_memory()
    if free is None:
        return
    too_large, fits = [], []
    for size, members in groups.items():
        batch = min(batch_size, len(members))
        per_pixel = bytes_per_pixel(runner, batch)
        pixels = size[0] * size[1]
        if per_pixel is None or per_pixel[0] * pixels <= free.bytes:
            continue
        too_large += [(paths[i], size, per_pixel[0] * pixels) for i in members]
        # the long edge at which it fits even at the most: memory grows with the square of the edge
        room = max(0, free.bytes - _OVERHEAD_BYTES) / per_pixel[1]
        fits.append(int(max(size) * (room / pixels) ** 0.5 / (scale or 1)))
    if too_large:
        raise TooLargeForMemory(too_large, runner, free, round_down(min(fits), 64))


def stylize_files(
    model: str | Path | Runner,
    inputs: Iterable[str | Path],
    output: str | Path,
    max_size: int | None = None,
    scale: float | None = None,
    batch_size: int = 4,
    device: str = "auto",
    preserve_colors: bool = False,
    engine: str = "auto",
    progress: bool = True,
    precision: str = "auto",
) -> list[Path]:
    """Stylize images into ``output``; returns the written paths (in input order).

    ``model`` is a model file, or a runner from `load_runner` (then ``device``,
    ``engine`` and ``precision`` are its own). Images that cannot be read are
    skipped; the others are written, then :class:`UnreadableImages` lists them.
    Images too large for the CPU's memory left are refused first (:class:`TooLargeForMemory`);
    a batch that fails to allocate stops the run with :class:`OutOfMemory`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    paths = expand_inputs(inputs)
    outputs = output_paths(paths, Path(output))
    formats = [output_format(p) for p in outputs]
    runner = model if isinstance(model, Runner) else load_runner(model, device, engine, precision)
    groups, unreadable = _group_by_size(paths, max_size, scale)
    check_sizes_fit({outputs[i]: size for size, members in groups.items() for i in members},
                    dict(zip(outputs, formats)), scale)
    check_memory(runner, paths, groups, batch_size, scale)
    with tqdm(total=len(paths), desc="stylize", unit="img", disable=not progress) as bar:
        bar.update(len(unreadable))
        for size, members in groups.items():
            for start in range(0, len(members), batch_size):
                chunk, contents, errors = _load_batch(paths, members[start : start + batch_size], size)
                unreadable.update(errors)
                bar.update(len(errors))
                if not chunk:
                    continue
                result = _stylize_batch(runner, contents, [paths[i] for i in chunk], size)
                for i, content, out in zip(chunk, contents, result):
                    stylized = Image.fromarray(out.permute(1, 2, 0).numpy())
                    if preserve_colors:
                        stylized = preserve_color(stylized, content.rgb)
                    save_output(stylized, content, outputs[i], formats[i])
                bar.update(len(chunk))
    if unreadable:
        written = [p for i, p in enumerate(outputs) if i not in unreadable]
        raise UnreadableImages([unreadable[i] for i in sorted(unreadable)], written, len(paths))
    return outputs


def _group_by_size(
    paths: Sequence[Path], max_size: int | None, scale: float | None
) -> tuple[dict[tuple[int, int], list[int]], dict[int, ImageError]]:
    """Input indices by target size, so that every batch is one tensor, and the errors of files that are no image.

    Only the headers are read: each image is decoded when its batch runs.
    """
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    unreadable: dict[int, ImageError] = {}
    for i, path in enumerate(paths):
        try:
            groups[target_size(oriented_size(path), max_size, scale)].append(i)
        except ImageError as err:
            unreadable[i] = err
    return groups, unreadable


def _load_batch(
    paths: Sequence[Path], members: Sequence[int], size: tuple[int, int]
) -> tuple[list[int], list[Content], dict[int, ImageError]]:
    """The inputs ``members`` decoded at ``size``: (indices, contents) of those read, and the errors of the others."""
    chunk, contents, errors = [], [], {}
    for i in members:
        try:
            content = load_content(paths[i], size)
        except ImageError as err:  # truncated or corrupt data: only decoding finds out
            errors[i] = err
            continue
        chunk.append(i)
        contents.append(content)
    return chunk, contents, errors


def _stylize_batch(
    runner: Runner | torch.nn.Module, contents: Sequence[Content], paths: Sequence[Path], size: tuple[int, int]
) -> torch.Tensor:
    """``contents`` stylized, uint8 [B, 3, H, W]; :class:`OutOfMemory` names ``paths`` if they do not fit."""
    batch = torch.stack([torch.from_numpy(np.asarray(c.rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
                         for c in contents])
    try:
        return stylize_tensor(runner, batch.float())
    except Exception as err:
        if not out_of_memory(err):
            raise
        raise OutOfMemory(paths, size, runner) from err
