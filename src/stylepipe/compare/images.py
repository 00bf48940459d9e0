"""Images embedded in the page: decoded, shrunk to what the page shows and re-encoded."""

from __future__ import annotations

import io

from PIL import Image

# Embedded images: the page shows each one 256 px wide (IMAGE_WIDTH in the CSS), so
# 512 px (sharp on a 2x display) in JPEG at quality 90 is what a reader can see; PNG
# (lossless, the original bytes when they fit) is for pixel-peeping.
IMAGE_WIDTH = 256
IMAGE_FORMATS = ("jpeg", "webp", "png")  # the MIME type is read from the bytes: image_mime
DEFAULT_IMAGE_SIZE = 2 * IMAGE_WIDTH
DEFAULT_IMAGE_FORMAT = "jpeg"
DEFAULT_IMAGE_QUALITY = 90


def encode_image(data: bytes, max_size: int = DEFAULT_IMAGE_SIZE, fmt: str = DEFAULT_IMAGE_FORMAT,
                 quality: int = DEFAULT_IMAGE_QUALITY) -> bytes:
    """Decode (so a broken file fails here, not in the browser), shrink to ``max_size`` (long edge,
    0 = as it is) and encode as ``fmt`` (jpeg, webp or png; a PNG that fits is kept as it is)."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt!r}: expected one of {', '.join(IMAGE_FORMATS)}")
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if fmt == "png" and img.format == "PNG" and (max_size <= 0 or max(img.size) <= max_size):
            return data
        img = img.convert("RGB")
        if max_size > 0 and max(img.size) > max_size:
            img.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        if fmt == "png":
            img.save(out, format="PNG", optimize=True)
        elif fmt == "jpeg":
            img.save(out, format="JPEG", quality=quality, optimize=True)
        else:
            img.save(out, format="WEBP", quality=quality, method=6)
        return out.getvalue()


def image_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes (PNG, JPEG or WebP), from their signature."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError("not a PNG, JPEG or WebP image")
