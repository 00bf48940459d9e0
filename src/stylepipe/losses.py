"""Perceptual losses of Johnson et al. 2016, scaled as pytorch/examples scales them.

Gram = F Fᵀ / (C·H·W), then the MSE against the style's Gram (a second
average over C·C entries): with this scaling pytorch/examples' weights
(content 1e5, style 1e10) mean the same here.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, C, C], normalised by C·H·W. Computed in fp32."""
    b, c, h, w = features.shape
    if features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous():
        # channels_last: [B, H·W, C] is a free view, where [B, C, H·W] would be a copy
        flat = features.permute(0, 2, 3, 1).reshape(b, h * w, c).float()
        return torch.bmm(flat.transpose(1, 2), flat) / (c * h * w)
    flat = features.reshape(b, c, h * w).float()
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def content_loss(
    features: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], layers: Sequence[str]
) -> torch.Tensor:
    """Mean over ``layers`` of the MSE between the features and the content target's features."""
    losses = [F.mse_loss(features[name].float(), target[name].float()) for name in layers]
    return torch.stack(losses).sum() / len(layers)


def style_loss(
    features: Mapping[str, torch.Tensor],
    target_grams: Mapping[str, torch.Tensor],
    layers: Sequence[str],
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Weighted sum over ``layers`` of the MSE between Gram matrices.

    ``target_grams[name]`` is [1, C, C] (one style image) and is broadcast over
    the batch, as pytorch/examples does.
    """
    weights = [1.0] * len(layers) if weights is None else list(weights)
    if len(weights) != len(layers):
        raise ValueError(f"{len(layers)} style layers but {len(weights)} style layer weights")
    total = 0.0
    for name, weight in zip(layers, weights):
        gram = gram_matrix(features[name])
        total = total + weight * F.mse_loss(gram, target_grams[name].expand_as(gram))
    return total


def tv_loss(images: torch.Tensor) -> torch.Tensor:
    """Total variation: mean absolute difference of neighbouring pixels (both directions)."""
    images = images.float()
    dh = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dw = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return dh + dw
