"""ONNX export of a TransformerNet, checked against PyTorch with onnxruntime.

The exported graph is ``TransformerNet.forward``: float32 NCHW RGB input in
0–255 of any batch size, height and width, output of the same size. Like
``forward`` it pads the image to a multiple of 4 (at least 8 px) and crops the
result back, with the padding written as index gathers so that the traced graph
computes it from the input's shape rather than fixing the export example's.
(Files exported before this hold only ``TransformerNet.body`` and need height
and width multiples of 4; `stylepipe stylize` pads for them.)
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stylepipe.io import atomic_path
from stylepipe.models.transformer import TransformerNet

OPSET = 17


class _AnySize(nn.Module):
    """``TransformerNet.forward`` in operations the ONNX tracer keeps dynamic.

    ``forward`` pads with ``F.pad`` by amounts computed in Python, which a trace
    would freeze at the example's size; here the padded rows and columns are
    gathered by indices computed from the input's shape (ONNX Shape, Range,
    Where, Gather), the same pixels ``forward``'s reflection (or, for images
    too small to reflect, replication) gives."""

    def __init__(self, net: TransformerNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = torch._shape_as_tensor(x)  # traced as the ONNX Shape of the input, not as constants
        height, width = shape[2], shape[3]
        # as forward(): up to a multiple of 4, at least 8 px; reflect only where both sides can
        target_h = torch.clamp((height + 3) // 4 * 4, min=8)
        target_w = torch.clamp((width + 3) // 4 * 4, min=8)
        reflect = (target_h - height < height) & (target_w - width < width)
        x = x.index_select(2, _padded_indices(height, target_h, reflect))
        x = x.index_select(3, _padded_indices(width, target_w, reflect))
        y = self.net.body(x)
        return y.index_select(2, torch.arange(height)).index_select(3, torch.arange(width))


def _padded_indices(size: torch.Tensor, target: torch.Tensor, reflect: torch.Tensor) -> torch.Tensor:
    """Indices 0..target-1 into a dimension of ``size``: itself, then reflected (``F.pad``'s
    "reflect": size-2, size-3, ...) or the last repeated ("replicate")."""
    index = torch.arange(target)
    beyond = torch.where(reflect, 2 * (size - 1) - index, size - 1)
    return torch.where(index < size, index, beyond)


def export_onnx(net: TransformerNet, path: str | Path, check: bool = True) -> None:
    """Write ``net`` as ONNX (dynamic batch, height, width) atomically, then verify it.

    ``net`` itself is left as it was (device, dtype, training mode); a float32 CPU copy is exported.
    """
    net = _float_cpu_copy(net)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on constant folding and instance_norm
            export_graph(net, str(tmp))
        if check:
            check_onnx(net, tmp)


def _float_cpu_copy(net: TransformerNet) -> TransformerNet:
    """A float32 CPU copy in eval mode; ``.float()``/``.cpu()``/``.eval()`` would change ``net`` in place."""
    copy = TransformerNet()
    copy.load_state_dict({k: v.detach().float().cpu() for k, v in net.state_dict().items()})
    return copy.eval()


def export_graph(net: TransformerNet, target: Any) -> None:
    # the TorchScript-based exporter (dynamo=False) keeps batch, height and width dynamic in this graph
    torch.onnx.export(
        _AnySize(_float_cpu_copy(net)),
        (torch.rand(1, 3, 64, 64) * 255,),
        target,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "height", 3: "width"}},
        opset_version=OPSET,
        dynamo=False,
    )


def check_onnx(net: TransformerNet, path: str | Path, size: tuple[int, int] = (51, 77), atol: float = 0.05) -> float:
    """Run the ONNX file with onnxruntime at another size than the export's (by default one that
    needs padding); return the max abs difference from ``net``'s output."""
    import onnxruntime as ort

    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        expected = net(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    if got.shape != expected.shape:
        raise RuntimeError(f"{path}: ONNX output shape {got.shape} != PyTorch's {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        raise RuntimeError(f"{path}: ONNX output differs from PyTorch's by up to {diff:.4f} (> {atol}) on a 0-255 scale")
    return diff
