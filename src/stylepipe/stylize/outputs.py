"""Where the results go and how they are written.

``--output`` is a folder (``{stem}.png`` per input) or, for a single input, an
image path whose extension names the format. Ambiguous or destructive
combinations (two inputs onto one file, an output that is an input, a folder
that cannot be written) are refused before any work. Each output is written
atomically, with its input's transparency and colour profile where the format
holds them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from stylepipe.data.images import IMAGE_SUFFIXES
from stylepipe.io import atomic_path, check_writable
from stylepipe.stylize.inputs import Content

# what an --output image path may end with, and the format written; folders get {stem}.png
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
                  ".bmp": "BMP"}
SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}  # high quality, full-res colour
# formats that embed an ICC profile: an output keeps its input's, so its colours mean what the input's did
ICC_FORMATS = {"PNG", "JPEG", "WEBP", "TIFF"}
ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}  # an input's transparency is kept in these
# image files Pillow has no writer (or no plugin) for: an --output ending so is a file we cannot
# write, refused, rather than a folder of that name
UNWRITABLE_IMAGE_SUFFIXES = {".heic", ".heif", ".jxl", ".svg", ".dng", ".raw", ".cr2", ".cr3", ".nef", ".arw"}


# the longest side each format can store (PNG and TIFF: far beyond any memory)
MAX_SIDE = {"WEBP": 16383, "JPEG": 65500}  # libjpeg's limit, below the format's 65535


def check_sizes_fit(sizes: dict[Path, tuple[int, int]], formats: dict[Path, str], scale: float | None = None) -> None:
    """Refuse, before any stylizing, an output larger than its format can store."""
    for path, (w, h) in sizes.items():
        limit = MAX_SIDE.get(formats[path])
        if limit is not None and max(w, h) > limit:
            # --scale multiplies after --max-size
            shrink = f"--max-size {int(limit / scale)} with --scale {scale:g}" if scale else f"--max-size {limit}"
            raise ValueError(f"{path}: {w}x{h} pixels, but {formats[path]} stores at most {limit} a side; "
                             f"write a .png or .tif, or shrink the image with {shrink}")


def is_image_path(output: Path) -> bool:
    """Whether ``--output`` names an image file (an extension Pillow knows) rather than a folder."""
    suffix = output.suffix.lower()
    return bool(suffix) and not output.is_dir() and (suffix in OUTPUT_FORMATS or suffix in IMAGE_SUFFIXES
                                                     or suffix in UNWRITABLE_IMAGE_SUFFIXES
                                                     or suffix in Image.registered_extensions())


def output_format(path: Path) -> str:
    """The Pillow format written to ``path``: the one its extension names."""
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"--output {path}: cannot write {path.suffix} images; "
                         f"end the name with one of {', '.join(OUTPUT_FORMATS)}, or give a folder")
    return fmt


def output_paths(inputs: Sequence[Path], output: Path) -> list[Path]:
    """Where each input's result goes; refuses ambiguous or destructive combinations before any work."""
    if is_image_path(output):
        if len(inputs) != 1:
            raise ValueError(f"--output {output} names an image file, but {len(inputs)} images were given: "
                             "pass a folder as --output (each image becomes FOLDER/{stem}.png)")
        output_format(output)
        paths = [output]
    else:
        paths = [output / f"{p.stem}.png" for p in inputs]
    # names that differ only in case are one file on macOS's and Windows' file systems
    seen: dict[str, Path] = {}
    sources = {_same_file_key(p): p for p in inputs}
    for src, dst in zip(inputs, paths):
        key = str(dst).casefold()
        if key in seen:
            raise ValueError(f"{seen[key]} and {src} would both be written to {dst}: stylize them into separate "
                             "--output folders (one command each), or rename one of them")
        seen[key] = src
        if _same_file_key(dst) in sources:
            raise ValueError(f"{dst} is an input: writing its stylization there would replace it; "
                             "choose another --output")
    return paths


def _same_file_key(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def check_output_folders(folders: Iterable[Path]) -> None:
    """Write a scratch file into each output folder, so an unusable --output fails before any work.

    Folders created for the check are removed again (writing the images creates them).
    """
    for folder in dict.fromkeys(folders):
        check_writable(folder, "output", keep=False)


def save_output(stylized: Image.Image, content: Content, path: Path, fmt: str) -> None:
    """Write ``stylized`` atomically, with the input's transparency and colour profile where ``fmt`` holds them.

    JPEG and BMP have no transparency: there the output stays the stylization of
    the image composited on white, as the network saw it.
    """
    options = dict(SAVE_OPTIONS.get(fmt, {}))
    if content.icc_profile and fmt in ICC_FORMATS:
        options["icc_profile"] = content.icc_profile
    if content.alpha is not None and fmt in ALPHA_FORMATS:
        stylized = Image.merge("RGBA", (*stylized.split(), content.alpha))
    with atomic_path(path) as tmp:
        stylized.save(tmp, format=fmt, **options)
