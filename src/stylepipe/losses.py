"""Perceptual losses of Johnson et al. 2016, scaled as pytorch/examples scales them.

Gram = F Fᵀ / (C·H·W), then the MSE against the style's Gram (a second
average, over the batch's B·C·C entries): with this scaling pytorch/examples'
weights (content 1e5, style 1e10) mean the same here.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F


class _Gram(torch.autograd.Function):
    """``scale · Fᵀ F`` for F = [B, N, C] (N = H·W), with its backward written out.

    The product runs in the features' own dtype, so under ``bf16-mixed`` in
    bfloat16 (see ``gram_matrix`` for its accuracy), except float16: the
    unnormalised sum over H·W positions outgrows float16's range (65504; with
    the seeded random VGG, relu1_2 of a 256 px photograph already reaches
    5·10⁴), so float16 features are multiplied in float32. The scale is BLAS's
    ``alpha``: normalising costs no extra pass. Autograd would differentiate
    the product once per operand and add the two [B, N, C] results;
    d(s·FᵀF) = s·F (dG + dGᵀ) is one batched product in the features' dtype.
    """

    @staticmethod
    def forward(ctx, flat: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(flat)
        ctx.scale = scale
        dtype = torch.float32 if flat.dtype == torch.float16 else flat.dtype
        # autocast would cast the operands (float32 → bfloat16, or the float16 ones back to float16)
        with torch.autocast(flat.device.type, enabled=False):
            flat = flat.to(dtype)
            b, _, c = flat.shape
            zeros = flat.new_zeros(()).expand(b, c, c)  # beta=0: not read
            return torch.baddbmm(zeros, flat.transpose(1, 2), flat, beta=0, alpha=scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (flat,) = ctx.saved_tensors
        symmetric = (grad.float() + grad.transpose(1, 2)).mul_(ctx.scale).to(flat.dtype)
        return torch.bmm(flat, symmetric), None


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, C, C], normalised by C·H·W.

    Float32 features give a float32 Gram, float16 ones too. Bfloat16 features
    (the loss network's under ``bf16-mixed``) give a bfloat16 Gram: on a CPU,
    oneDNN sums in float32 and rounds each entry once, to within 2⁻⁸ of the
    float32 product of the same features. Measured on a batch of four
    photographs at 128 px over 60 training steps, that moved the style loss
    by under 4·10⁻⁴ and the TransformerNet's gradient by about 0.1 % (relative
    norm), where the whole bf16-mixed step is 0.3–0.6 % from a float32 one;
    the bfloat16 product costs a third of the float32 one there.
    """
    b, c, h, w = features.shape
    if features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous():
        # channels_last: [B, H·W, C] is a free view, where [B, C, H·W] would be a copy
        flat = features.permute(0, 2, 3, 1).reshape(b, h * w, c)
    else:
        flat = features.reshape(b, c, h * w).transpose(1, 2)
    return _Gram.apply(flat, 1.0 / (c * h * w))


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
    """Weighted sum over ``layers`` of the MSE between Gram matrices, in float32.

    ``target_grams[name]`` is [1, C, C] (one style image) and is broadcast over
    the batch, as pytorch/examples does.
    """
    weights = [1.0] * len(layers) if weights is None else list(weights)
    if len(weights) != len(layers):
        raise ValueError(f"{len(layers)} style layers but {len(weights)} style layer weights")
    total = 0.0
    for name, weight in zip(layers, weights):
        gram = gram_matrix(features[name]).float()
        total = total + weight * F.mse_loss(gram, target_grams[name].float().expand_as(gram))
    return total


def tv_loss(images: torch.Tensor) -> torch.Tensor:
    """Total variation: mean absolute difference of neighbouring pixels (both directions)."""
    images = images.float()
    dh = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dw = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return dh + dw
