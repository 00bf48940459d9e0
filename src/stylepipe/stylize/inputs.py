"""The images to stylize: which files the inputs name, at what size, and their pixels.

Inputs are files, folders or glob patterns. Each image is stylized at its
displayed size (after the EXIF orientation), shrunk by ``--max-size`` and
resized by ``--scale``; its transparency and colour profile are kept for the
output.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from stylepipe.data.images import IMAGE_SUFFIXES, displayed_size, load_rgb_and_alpha, open_image


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns → image paths, in order, without repeats.

    A folder's hidden files are left out, as a glob's ``*`` leaves them out: macOS
    writes a ``._name.jpg`` metadata file beside each image on other file systems.
    """
    found: list[Path] = []
    left_out: list[Path] = []
    for item in inputs:
        if not str(item).strip():
            # Path("") is the working directory: an unset shell variable would stylize whatever is there
            raise ValueError("an input is empty (an unset variable?); give an image file, a folder or a glob")
        path = Path(item)
        if path.is_file():
            found.append(path)
            continue
        if path.is_dir():
            candidates = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
        else:
            candidates = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
        matches = [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES]
        if not matches:
            raise FileNotFoundError(f"{item}: no images found ({_why_no_images(path, candidates)})")
        found.extend(matches)
        left_out.extend(p for p in candidates if p.suffix.lower() not in IMAGE_SUFFIXES)
    left_out = _once(left_out)
    if left_out:
        names = ", ".join(str(p) for p in left_out[:5]) + (f", and {len(left_out) - 5} more" if len(left_out) > 5 else "")
        print(f"stylepipe: left out {len(left_out)} file(s) that are not images by their suffix: {names} (images are "
              f"read from {', '.join(sorted(IMAGE_SUFFIXES))} files; name a file to try it)", file=sys.stderr)
    return _once(found)


def _once(paths: list[Path]) -> list[Path]:
    """``paths`` without repeats: one path named twice, or two ways (relative and absolute), counts once.
    Links are not followed: two names of one file (a link, a DVC cache link) are two inputs, with two outputs."""
    unique: dict[str, Path] = {}
    for path in paths:
        unique.setdefault(os.path.abspath(path), path)
    return list(unique.values())


def _why_no_images(path: Path, candidates: Sequence[Path]) -> str:
    if not candidates and path.is_dir():
        if any(p.is_dir() for p in path.iterdir()):
            return f"only subfolders; for the images inside them give a glob such as '{path / '**' / '*.jpg'}'"
        return "an empty folder"
    if not candidates:
        return "no such file or folder, and no file matches it as a glob"
    kinds = sorted({p.suffix.lower() or "no extension" for p in candidates})
    return (f"{len(candidates)} file(s), of kinds {', '.join(kinds[:8])}{', ...' if len(kinds) > 8 else ''}; "
            f"images are read from {', '.join(sorted(IMAGE_SUFFIXES))} files: convert the others "
            "(e.g. HEIC) to JPEG or PNG, or name a file to try it")


def target_size(size: tuple[int, int], max_size: int | None = None, scale: float | None = None) -> tuple[int, int]:
    """(width, height) after shrinking the long edge to ``max_size`` and multiplying by ``scale``."""
    w, h = size
    if (max_size is not None and max_size < 1) or (scale is not None and not scale > 0):
        raise ValueError(f"max_size={max_size}, scale={scale}: both must be positive (or None)")
    factor = 1.0
    if max_size and max(w, h) > max_size:
        factor = max_size / max(w, h)
    if scale:
        factor *= scale
    if factor == 1.0:
        return w, h
    return max(1, round(w * factor)), max(1, round(h * factor))


def oriented_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after the EXIF orientation, without decoding the pixels.

    Raises ImageError for a file that is not an image (as ``load_rgb`` would).
    """
    with open_image(path) as img:
        return displayed_size(img)


@dataclass(frozen=True)
class Content:
    """An input at its target size: the RGB the network sees, and what its output keeps from the file."""

    rgb: Image.Image
    alpha: Image.Image | None  # transparency, "L"; None for an opaque image
    icc_profile: bytes | None  # what the RGB values mean (e.g. Display P3); None: sRGB


def load_content(path: Path, size: tuple[int, int]) -> Content:
    """``path`` decoded upright and resized to ``size`` (Lanczos), with its transparency and colour profile."""
    rgb, alpha = load_rgb_and_alpha(path, for_size=size)
    profile = rgb.info.get("icc_profile")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        alpha = None if alpha is None else alpha.resize(size, Image.Resampling.LANCZOS)
    return Content(rgb, alpha, profile)
