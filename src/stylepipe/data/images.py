"""Decode any image a real dataset holds into RGB, or say clearly why not.

COCO and photos from the web contain grayscale, CMYK, palette, alpha,
16-bit and EXIF-rotated files next to truncated and broken ones. Every
decoder in the project goes through :func:`open_image`, so they all agree
on what an image looks like and on what counts as unreadable.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own default (~89.5 M pixels, e.g. 9,459 × 9,459). Larger images are
# refused as possible decompression bombs; override with STYLEPIPE_MAX_IMAGE_PIXELS
# or the ``max_pixels`` argument (``resize --max-pixels``).
DEFAULT_MAX_PIXELS = 89_478_485

WHITE = (255, 255, 255)


class ImageError(ValueError):
    """An input file is not a usable image; ``reason`` says why in a few words."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def max_pixels_default() -> int:
    value = os.environ.get("STYLEPIPE_MAX_IMAGE_PIXELS")
    return int(value) if value else DEFAULT_MAX_PIXELS


def open_image(path: str | Path, *, max_pixels: int | None = None, data: bytes | None = None) -> Image.Image:
    """Open ``path`` lazily (header only) after the empty-file and bomb checks.

    With ``data`` (a zip member's bytes), the image is read from it and
    ``path`` only names it in errors.
    """
    path = Path(path)
    limit = max_pixels_default() if max_pixels is None else max_pixels
    if data is None:
        try:
            size = path.stat().st_size
        except OSError as err:
            raise ImageError(path, f"cannot read: {err.strerror or err}") from err
    else:
        size = len(data)
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; a warning is a refusal here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path if data is None else io.BytesIO(data))
    except UnidentifiedImageError as err:
        kind = _signature(path, data)
        if kind:
            raise ImageError(path, f"corrupt image: starts like a {kind} file but cannot be read") from err
        raise ImageError(path, "not an image (unrecognised format)") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(path, f"decompression bomb refused: {err}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(path, f"corrupt image header: {err}") from err
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise ImageError(path, f"corrupt image: size {width}x{height}")
    if width * height > limit:
        image.close()
        raise ImageError(
            path, f"decompression bomb refused: {width}x{height} = {width * height:,} pixels > limit {limit:,}"
        )
    return image


_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"RIFF": "WebP",
}


def _signature(path: Path, data: bytes | None = None) -> str | None:
    """The format a file's first bytes announce, to tell corrupt from not-an-image."""
    if data is not None:
        head = data[:8]
    else:
        with open(path, "rb") as f:
            head = f.read(8)
    return next((kind for magic, kind in _SIGNATURES.items() if head.startswith(magic)), None)


def decode(image: Image.Image, path: str | Path) -> Image.Image:
    """Decode the pixel data; truncated or corrupt data raises ImageError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except MemoryError:
        raise
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        text = str(err) or type(err).__name__
        reason = "truncated image" if "truncated" in text else "corrupt image data"
        raise ImageError(path, f"{reason}: {text}") from err
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB: alpha composited on white, 16/32-bit scaled to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return background
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV: Pillow converts these directly
    return image.convert("RGB")


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    values = values.astype(np.float64)
    if mode == "F":
        # float images: 0..1 if they fit, else assume 0..255
        scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
    elif mode.startswith("I;16") or values.max(initial=0) > 255:
        scale = 255.0 / 65535.0  # 16-bit samples (PNG/TIFF) stored in I;16 or I
    else:
        scale = 1.0
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def load_rgb(path: str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Open, decode, apply the EXIF orientation and convert ``path`` to RGB.

    Raises :class:`ImageError` (a ``ValueError``) naming the file and the
    reason for empty, non-image, truncated, corrupt and oversized files.
    """
    image = open_image(path, max_pixels=max_pixels)
    try:
        decode(image, path)  # Pillow closes the file once a single-frame image is loaded
    except ImageError:
        image.close()
        raise
    return to_rgb(upright(image))


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phones store portraits rotated)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose the picture: keep it as stored
        return image
