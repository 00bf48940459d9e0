"""Decode any image a real dataset holds into RGB, or say clearly why not.

COCO and photos from the web contain grayscale, CMYK, palette, alpha,
16-bit and EXIF-rotated files next to truncated and broken ones. Every
decoder in the project goes through :func:`open_image`, so they all agree
on what an image looks like and on what counts as unreadable; the one
shortcut, :func:`jpeg_frame` (``stylepipe resize``'s per-file fast path),
accepts only headers that :func:`open_image` opens as RGB or L JPEGs.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

# Pillow's own default (~89.5 M pixels, e.g. 9,459 × 9,459). Larger images are
# refused as possible decompression bombs; override with STYLEPIPE_MAX_IMAGE_PIXELS
# or the ``max_pixels`` argument (``resize --max-pixels``), lower or higher.
DEFAULT_MAX_PIXELS = 89_478_485
RAISE_LIMIT = "if you trust the file, raise the limit with STYLEPIPE_MAX_IMAGE_PIXELS=<pixels>"

WHITE = (255, 255, 255)

# The files read as images everywhere (training folders, stylize inputs, content sets). Defined
# here, not in the datamodule, so the commands that never train do not import Lightning.
# .avif: the pinned Pillow reads AVIF (its wheels bundle libavif: PIL.features.check("avif"))
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif"}


class ImageError(ValueError):
    """An input file is not a usable image; ``reason`` says why in a few words."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def max_pixels_default() -> int:
    value = os.environ.get("STYLEPIPE_MAX_IMAGE_PIXELS")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"STYLEPIPE_MAX_IMAGE_PIXELS={value!r}: give a whole number of pixels, e.g. 200000000")
    return limit


_PILLOW_LIMIT = threading.Lock()


@contextlib.contextmanager
def _pillow_size_check_off() -> Iterator[None]:
    """Pillow's own check of the image size, off while it reads a header.

    :func:`open_image` checks the size itself, against our limit: Pillow's
    (``MAX_IMAGE_PIXELS``, 89.5 M; a warning above it, an error above twice
    that) would refuse larger images whatever STYLEPIPE_MAX_IMAGE_PIXELS says.
    Pillow keeps it in a global, hence the lock (reading a header is quick).
    """
    with _PILLOW_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


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
        with _pillow_size_check_off():  # checked below, against our limit
            image = Image.open(path if data is None else io.BytesIO(data))
    except UnidentifiedImageError as err:
        kind = _signature(path, data)
        if kind:
            raise ImageError(path, f"corrupt or unsupported image: starts like a {kind} file but Pillow cannot "
                                   "read it; if it opens elsewhere, convert it to an 8-bit PNG or JPEG") from err
        raise ImageError(path, "not an image (unrecognised format)") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(path, f"corrupt image header: {err}") from err
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise ImageError(path, f"corrupt image: size {width}x{height}")
    if width * height > limit:
        image.close()
        raise ImageError(
            path, f"decompression bomb refused: {width}x{height} = {width * height:,} pixels > limit {limit:,}; "
                  + (RAISE_LIMIT if max_pixels is None else "if you trust the file, raise the limit (resize --max-pixels)")
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


# ISO base media files (HEIC/HEIF, iPhones' default; AVIF) name their brand after "ftyp" at byte 4
_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC", b"heis": "HEIC", b"mif1": "HEIF",
           b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


def _signature(path: Path, data: bytes | None = None) -> str | None:
    """The format a file's first bytes announce, to tell corrupt or unsupported from not-an-image."""
    if data is not None:
        head = data[:12]
    else:
        with open(path, "rb") as f:
            head = f.read(12)
    if head[4:8] == b"ftyp" and head[8:12] in _BRANDS:
        return _BRANDS[head[8:12]]
    return next((kind for magic, kind in _SIGNATURES.items() if head.startswith(magic)), None)


def pixel_limit(max_pixels: int | None = None) -> int:
    """The pixel count above which :func:`open_image` refuses an image."""
    return max_pixels_default() if max_pixels is None else max_pixels


_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2))  # baseline, extended sequential, progressive (Huffman)
_JPEG_PLAIN = frozenset((0xC4, 0xDD, 0xFE, *range(0xE0, 0xF0)))  # DHT, DRI, COM, APPn
_XMP = b"http://ns.adobe.com/xap/1.0/\0"  # an APP1 segment holding XMP
_XMP_ORIENTATION = b"tiff:Orientation"


def xmp_orientation(image: Image.Image) -> bool:
    """Whether the image's XMP names an orientation (applied by :func:`upright`, unknown to other decoders)."""
    xmp = image.info.get("xmp", b"")
    return _XMP_ORIENTATION in (xmp if isinstance(xmp, bytes) else str(xmp).encode())


def jpeg_frame(data: bytes | bytearray) -> tuple[int, int, int] | None:
    """(width, height, components) of a plain 8-bit JPEG with 1 or 3 components,
    read from its header without Pillow; None for anything else.

    Plain means: SOI, then only well-formed APPn, COM, DQT, DHT, DRI segments
    and one Huffman-coded frame before the first scan, all inside ``data``,
    and none of the segments Pillow's header parser could trip on or turn
    into another format (multi-picture MPF, Photoshop resources, short
    JFIF/Adobe/ICC blocks). For None, :func:`open_image` decides as always,
    so a header this accepts is one Pillow opens as an RGB or L JPEG.
    """
    end = len(data)
    if end < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    frame = None
    pos = 2
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        body, pos = pos + 4, pos + 2 + length
        if length < 2 or pos > end:
            return None
        if marker == 0xDA:  # start of scan: the header is complete
            return frame
        n = length - 2
        if marker in _JPEG_SOF:
            components = data[body + 5] if n >= 6 else 0
            if frame is not None or components not in (1, 3) or n != 6 + 3 * components or data[body] != 8:
                return None
            height, width = (data[body + 1] << 8) | data[body + 2], (data[body + 3] << 8) | data[body + 4]
            if not width or not height:
                return None
            frame = (width, height, components)
        elif marker == 0xDB:  # quantization tables must fill the segment exactly
            q = body
            while q < pos:
                q += 65 if data[q] < 16 else 129
            if q != pos:
                return None
        elif marker not in _JPEG_PLAIN:
            return None
        elif marker == 0xE0 and data[body : body + 4] == b"JFIF" and n < 12:
            return None
        elif marker == 0xE2 and (
            data[body : body + 4] == b"MPF\0" or (data[body : body + 12] == b"ICC_PROFILE\0" and n < 14)
        ):
            return None
        elif marker == 0xED and data[body : body + 14] == b"Photoshop 3.0\0":
            return None
        elif marker == 0xE1 and data[body : body + len(_XMP)] == _XMP and _XMP_ORIENTATION in data[body:pos]:
            return None  # an orientation in XMP, which Pillow applies and the tensor decoder does not
        elif marker == 0xEE and data[body : body + 5] == b"Adobe" and n < 12:
            return None
    return None


def decode(image: Image.Image, path: str | Path) -> Image.Image:
    """Decode the pixel data; truncated or corrupt data raises ImageError."""
    try:
        with warnings.catch_warnings():
            # a few formats check sizes again while loading (a GIF's frames): a warning is a refusal
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # e.g. a GIF frame beyond the limit
        raise ImageError(path, f"decompression bomb refused: {str(err).rstrip('.')}; {RAISE_LIMIT}") from err
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        text = str(err) or type(err).__name__
        reason = "truncated image" if "truncated" in text else "corrupt image data"
        raise ImageError(path, f"{reason}: {text}") from err
    return image


def _keyed_to_rgba(image: Image.Image) -> Image.Image:
    """A palette, gray or RGB image with a transparent colour (PNG tRNS, GIF) → RGBA; others as they are."""
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        return image.convert("RGBA")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB: alpha composited on white, 16/32-bit scaled to 8 bits."""
    image = _keyed_to_rgba(image)
    mode = image.mode
    if mode == "RGB":
        return image
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

    The result's ``info["icc_profile"]`` is the file's embedded ICC profile if
    that describes RGB values (see :func:`rgb_icc_profile`), else absent.
    Raises :class:`ImageError` (a ``ValueError``) naming the file and the
    reason for empty, non-image, truncated, corrupt and oversized files.
    """
    return _rgb(_load_upright(path, max_pixels))


def load_colours(path: str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """``path`` as RGB with any alpha channel dropped, not composited on white: the colours as stored.

    For a stylized PNG of a transparent input that is the network's output,
    which `stylepipe stylize` keeps under the input's alpha.
    """
    image = _load_upright(path, max_pixels)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA").convert("RGB")
    return _rgb(image)


def load_rgb_and_alpha(path: str | Path, *, max_pixels: int | None = None,
                       for_size: tuple[int, int] | None = None) -> tuple[Image.Image, Image.Image | None]:
    """:func:`load_rgb`'s image and the file's transparency (:func:`alpha_channel`, upright too).

    ``for_size`` (upright width, height) is the size the caller will resize
    to: a JPEG much larger than that is decoded at 1/2, 1/4 or 1/8 scale in
    the DCT domain (as Pillow's ``thumbnail`` does), never below twice that
    size, so a 24-megapixel photo stylized at ``--max-size 1024`` never
    occupies memory at full size and the final resize keeps its quality.
    """
    image = _load_upright(path, max_pixels, for_size)
    return _rgb(image), alpha_channel(image)


def _load_upright(path: str | Path, max_pixels: int | None, for_size: tuple[int, int] | None = None) -> Image.Image:
    image = open_image(path, max_pixels=max_pixels)
    try:
        if for_size is not None and is_jpeg(image):
            width, height = for_size
            if _exif_orientation(image) in _QUARTER_TURNS:
                width, height = height, width  # the file's pixels are stored before the rotation
            image.draft(None, (2 * width, 2 * height))
        decode(image, path)  # Pillow closes the file once a single-frame image is loaded
    except ImageError:
        image.close()
        raise
    return upright(image)


def _rgb(image: Image.Image) -> Image.Image:
    rgb = to_rgb(image)
    profile = rgb_icc_profile(image)
    if profile is None:
        rgb.info.pop("icc_profile", None)
    else:
        rgb.info["icc_profile"] = profile
    return rgb


def alpha_channel(image: Image.Image) -> Image.Image | None:
    """The alpha channel (mode L) of an image with transparency; None for an opaque one.

    An alpha channel that is 255 everywhere is no transparency.
    """
    image = _keyed_to_rgba(image)
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La"):
        return None
    alpha = image.getchannel("A")
    return None if alpha.getextrema()[0] == 255 else alpha


def rgb_icc_profile(image: Image.Image) -> bytes | None:
    """The embedded ICC profile that says what ``image``'s RGB values mean, or None.

    Phones write Display P3 (and cameras Adobe RGB) profiles: the same values
    shown without the profile look duller. A CMYK or gray profile describes
    the file's own values, not their RGB conversion, so it does not count.
    """
    profile = image.info.get("icc_profile")
    # the ICC header's data colour space field, bytes 16-19
    return profile if isinstance(profile, bytes) and profile[16:20] == b"RGB " else None


def is_jpeg(image: Image.Image) -> bool:
    """A JPEG, MPO included (the multi-picture JPEG of many phones and cameras): it can be decoded scaled down."""
    return isinstance(image, JpegImagePlugin.JpegImageFile)


EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _exif_orientation(image: Image.Image) -> int:
    try:
        if image.format == "PNG" and "exif" not in image.info and not _png_metadata_after_pixels(image):
            # Pillow's PNG getexif() decodes the whole image to look for EXIF after the pixel data;
            # with none there, the chunks read with the header (EXIF, XMP) are all there is
            return Image.Image.getexif(image).get(EXIF_ORIENTATION, 1)
        return image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block: upright() keeps the image as stored
        return 1


_PNG_METADATA = (b"eXIf", b"iTXt", b"tEXt", b"zTXt")  # chunks that can carry an orientation (EXIF, XMP)


def _png_metadata_after_pixels(image: Image.Image) -> bool:
    """Whether a PNG has a chunk that could carry an orientation after its image data (True when unsure).

    Only the chunks' 8-byte headers are read, skipping their data: no decoding.
    """
    path = getattr(image, "filename", None)
    if not path:
        return True
    with open(path, "rb") as f:
        f.seek(8)  # the signature
        seen_pixels = False
        while len(head := f.read(8)) == 8:
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"IEND":
                return False
            if kind == b"IDAT":
                seen_pixels = True
            elif seen_pixels and kind in _PNG_METADATA:
                return True
            f.seek(length + 4, os.SEEK_CUR)  # data and CRC
    return True  # truncated: let Pillow decide


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, after the EXIF orientation, from the header alone."""
    if image.format == "TIFF":
        return image.size  # Pillow's TIFF reader gives the size after the orientation (and turns as it loads)
    w, h = image.size
    return (h, w) if _exif_orientation(image) in _QUARTER_TURNS else (w, h)


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phones store portraits rotated)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose the picture: keep it as stored
        return image
