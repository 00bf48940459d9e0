"""The style image as the tensor the loss network takes: a float 0–255 batch of one.

Kept apart from the LightningModule so that `stylepipe evaluate`, which
computes the style's Gram matrices too, does not import Lightning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylepipe.data.images import ImageError, load_rgb


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_style_image(path: str | Path, style_size: int | None, min_side: int = 1) -> torch.Tensor:
    """The style image as a float [1, 3, H, W] batch in 0–255, long edge = ``style_size`` (aspect kept),
    refused when a side is shorter than ``min_side`` (the loss network's ``smallest_input``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"style image {path} not found; fetch it with `stylepipe fetch style` (or `snakemake {path}`)")
    try:
        image = load_rgb(path)
    except ImageError as err:
        raise ImageError(path, f"unusable style image: {err.reason}; pass an image file "
                               "(or fetch it again with `stylepipe fetch style`)") from err
    if style_size:
        scale = style_size / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    if min(image.size) < min_side:
        how = f"at train.style_size {style_size} (its long edge)" if style_size else "as it is (train.style_size null)"
        raise ValueError(f"style image {path}: {image.width}x{image.height} px {how}; the loss network's layers "
                         f"need at least {min_side} px on each side (each max-pool halves them): raise "
                         f"train.style_size (or the style's own under styles.<name>), or crop the image to a "
                         f"less elongated shape")
    return to_uint8_tensor(image).unsqueeze(0).float()
