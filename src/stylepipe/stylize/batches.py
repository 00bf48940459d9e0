"""`stylize_files`: images on disk in, stylized images on disk out, batch by batch.

Images are grouped by target size so that every batch is one tensor, whatever
mix of sizes the inputs are; each is decoded only when its batch runs. An image
that cannot be read is skipped and reported at the end (:class:`UnreadableImages`),
after all the others are written; a batch too large for its device's memory
stops the run (:class:`OutOfMemory`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from stylepipe.data.images import ImageError
from stylepipe.stylize.colour import preserve_color
from stylepipe.stylize.inputs import Content, expand_inputs, load_content, oriented_size, target_size
from stylepipe.stylize.outputs import output_format, output_paths, save_output
from stylepipe.stylize.runners import Runner, load_runner, stylize_tensor


class UnreadableImages(ValueError):
    """Some inputs could not be read; all the others were stylized and written."""

    def __init__(self, errors: Sequence[ImageError], written: Sequence[Path], total: int):
        listed = "; ".join(str(e) for e in errors[:10]) + (f"; and {len(errors) - 10} more" if len(errors) > 10 else "")
        super().__init__(f"{len(errors)} of {total} image(s) could not be read and were not stylized "
                         f"({len(written)} written): {listed}. Replace or remove them and run again")
        self.errors, self.written = list(errors), list(written)


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is PyTorch's or onnxruntime's failure to allocate memory (CPU or GPU)."""
    if isinstance(err, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError), torch.cuda.OutOfMemoryError)):
        return True
    text = str(err)
    # PyTorch's CPU allocator, onnxruntime's arena (CPU and CUDA)
    return any(sign in text for sign in ("can't allocate memory", "Failed to allocate memory", "out of memory"))


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
    An image too large for the device's memory stops the run with :class:`OutOfMemory`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    paths = expand_inputs(inputs)
    outputs = output_paths(paths, Path(output))
    formats = [output_format(p) for p in outputs]
    runner = model if isinstance(model, Runner) else load_runner(model, device, engine, precision)
    groups, unreadable = _group_by_size(paths, max_size, scale)
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
