"""Perceptual losses of Johnson et al. 2016, scaled as pytorch/examples scales them.

Gram = F Fᵀ / (C·H·W), then the MSE against the style's Gram (a second
average over C·C entries): with this scaling pytorch/examples' weights
(content 1e5, style 1e10) mean the same here.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F


class _Gram(torch.autograd.Function):
    """Fᵀ F for F = [B, N, C] (N = H·W), in float32, with its backward written out.

    Autograd would differentiate the float32 product twice (once per operand),
    add the two [B, N, C] float32 results and cast the sum back to the
    features' dtype; d(FᵀF) = F (dG + dGᵀ) is one batched product computed
    straight in that dtype (11 % of a bf16 training step on a CPU at 256 px).
    """

    @staticmethod
    def forward(ctx, flat: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flat)
        flat32 = flat.float()
        return torch.bmm(flat32.transpose(1, 2), flat32)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (flat,) = ctx.saved_tensors
        return torch.bmm(flat, (grad + grad.transpose(1, 2)).to(flat.dtype))


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, C, C], normalised by C·H·W. Computed in fp32."""
    b, c, h, w = features.shape
    if features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous():
        # channels_last: [B, H·W, C] is a free view, where [B, C, H·W] would be a copy
        flat = features.permute(0, 2, 3, 1).reshape(b, h * w, c)
    else:
        flat = features.reshape(b, c, h * w).transpose(1, 2)
    return _Gram.apply(flat) / (c * h * w)


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
