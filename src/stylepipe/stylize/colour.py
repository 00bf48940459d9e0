"""``--preserve-color``: keep the photograph's colours, take only the stylization's luminance."""

from __future__ import annotations

import numpy as np
from PIL import Image

# BT.601 luma weights, those of YCbCr (JPEG's and the studio-range one alike) and of YUV
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def preserve_color(stylized: Image.Image, content: Image.Image) -> Image.Image:
    """The stylized luminance with the content's chrominance (YCbCr), rounded once.

    Replacing Y and keeping Cb and Cr adds the same luma difference to R, G and B.
    Pillow's own YCbCr round trip works in 8-bit integers: about one level of 255
    off on average, up to four.
    """
    rgb = np.asarray(content, dtype=np.float32)
    luma_difference = (np.asarray(stylized, dtype=np.float32) - rgb) @ LUMA
    return Image.fromarray(np.rint(np.clip(rgb + luma_difference[..., None], 0, 255)).astype(np.uint8))
