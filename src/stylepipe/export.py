"""ONNX export of a TransformerNet, checked against PyTorch with onnxruntime.

The exported graph is the network proper (``TransformerNet.body``): float32
NCHW input in 0–255 with height and width multiples of 4, any batch size and
image size. `stylepipe stylize` pads other sizes and crops the result back,
exactly as ``TransformerNet.forward`` does.
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


class _Body(nn.Module):
    def __init__(self, net: TransformerNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.body(x)


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
        _Body(_float_cpu_copy(net)),
        (torch.rand(1, 3, 64, 64) * 255,),
        target,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "height", 3: "width"}},
        opset_version=OPSET,
        dynamo=False,
    )


def check_onnx(net: TransformerNet, path: str | Path, size: tuple[int, int] = (52, 76), atol: float = 0.05) -> float:
    """Run the ONNX file with onnxruntime at another size than the export's; return the max abs difference."""
    import onnxruntime as ort

    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        expected = net.body(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    if got.shape != expected.shape:
        raise RuntimeError(f"{path}: ONNX output shape {got.shape} != PyTorch's {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        raise RuntimeError(f"{path}: ONNX output differs from PyTorch's by up to {diff:.4f} (> {atol}) on a 0-255 scale")
    return diff
