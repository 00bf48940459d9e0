"""What runs the network: the device, the precision, and PyTorch or onnxruntime.

`load_runner` loads a ``.pth`` model (or a ``stylepipe train`` checkpoint) or a
``.onnx`` export and returns a :class:`Runner`. ``precision="auto"`` (the
default) picks, for a ``.pth`` model:

- on a CPU that computes bf16 natively (AVX-512 BF16 or AMX): PyTorch with the
  network's weights in bf16 and channels_last tensors, about twice the images
  per second of eager float32 PyTorch at 512 px on a 2-core machine, results
  on average within about one level of 255 of float32's (a few pixels off by
  up to about eleven);
- on other CPUs: float32 in onnxruntime (the network is exported in memory
  first), the same results as PyTorch's;
- on CUDA/MPS: float32 in PyTorch.

``fp32`` gives float32 results everywhere. See benchmarks/README.md.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stylepipe.cpu import native_bf16_cpu

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Runner:
    """Maps a float [B, 3, H, W] batch in 0–255 to the stylized batch (float, on the CPU); says what runs it."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    engine: str  # "torch" or "onnxruntime"
    precision: str  # "fp32" or "bf16"
    device: torch.device
    note: str = ""  # why it runs elsewhere than asked

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.fn(batch)

    def __str__(self) -> str:
        return f"{self.engine} {self.precision} on {self.device}" + (f" ({self.note})" if self.note else "")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device available; use --device auto or cpu")
    if name == "mps" and not _mps_available():
        raise ValueError("--device mps: no Apple MPS device available (this PyTorch or machine has none); "
                         "use --device auto or cpu")
    return torch.device(name)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_precision(precision: str, device: torch.device, engine: str = "auto", onnx_model: bool = False) -> str:
    """``auto`` → ``bf16`` where it pays (a .pth model in PyTorch on a native-bf16 CPU), else ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cpu" and engine != "onnxruntime" and not onnx_model and native_bf16_cpu():
        return "bf16"
    return "fp32"


def _torch_runner(net: torch.nn.Module, device: torch.device, precision: str) -> Runner:
    # bf16: weights themselves in bf16 (CPU autocast would re-cast them every call) and
    # channels_last, the layout oneDNN's bf16 convolutions use. fp32 stays plain NCHW,
    # CUDA included: on an H200 at 512 px, float32 NCHW did 157 images/s at batch 1
    # against 123 under bf16 autocast + channels_last and 135 with bf16 weights.
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    memory_format = torch.channels_last if precision == "bf16" else torch.contiguous_format
    net = net.to(device, dtype).to(memory_format=memory_format).eval()
    # on a CPU, one image at a time: at 512 px a batch of 4 ran about 30 % slower per
    # image (its activations outgrow the caches)
    one_by_one = device.type == "cpu"

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(device, non_blocking=True).to(dtype).contiguous(memory_format=memory_format)
        if one_by_one and len(x) > 1:
            return torch.cat([net(x[i : i + 1]).float() for i in range(len(x))])
        return net(x).float().cpu()

    return Runner(run, "torch", precision, device)


def _onnx_runner(model: bytes | str, device: torch.device) -> Runner:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    fix = "export it again with `stylepipe train --onnx`, or pass the .pth model"
    try:
        session = ort.InferenceSession(model, providers=providers)
    except Exception as err:  # onnxruntime's InvalidProtobuf, InvalidArgument, Fail, ...
        if isinstance(model, bytes):
            raise
        reason = str(err).rsplit(":", 1)[-1].strip() or type(err).__name__
        raise ValueError(f"{model}: not an ONNX model (corrupt or another kind of file: {reason}); {fix}") from err
    inputs = session.get_inputs()
    if [i.name for i in inputs] != ["input"] or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
        found = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise ValueError(f"{model}: an ONNX model, but not a TransformerNet export (inputs: {found}; "
                         f"expected one 'input' [batch, 3, height, width]); {fix}")
    batch, _, height, width = inputs[0].shape  # a dynamic axis is a name (str) or None, a fixed one an int
    if isinstance(height, int) or isinstance(width, int):
        raise ValueError(f"{model}: exported for {height}x{width} images only (fixed height and width); "
                         f"stylizing takes any size: {fix}")

    # on a CPU, one image at a time, as the PyTorch runner: as fast per image at 512 px, and the
    # memory is one image's (about 1 GB per megapixel), not the batch's
    one_by_one = session.get_providers()[0] == "CPUExecutionProvider" or isinstance(batch, int)
    note = ""
    if one_by_one and device.type != "cpu":  # a CPU-only onnxruntime, or its CUDA provider failed to load
        note = f"this onnxruntime cannot use {device.type}: pass the .pth model to run on {device.type}"
        device = torch.device("cpu")

    def run_batch(x: torch.Tensor) -> torch.Tensor:
        # an export pads and crops itself, but files exported before it did hold TransformerNet.body
        # alone: pad to a multiple of 4 and crop back here, as forward() does (a no-op for the new)
        h, w = x.shape[-2:]
        pad_h, pad_w = max(-h % 4, 8 - h), max(-w % 4, 8 - w)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if h > pad_h and w > pad_w else "replicate")
        out = session.run(None, {"input": np.ascontiguousarray(x.numpy())})[0]
        return torch.from_numpy(out)[..., :h, :w]

    def run(batch: torch.Tensor) -> torch.Tensor:
        x = batch.float()
        if one_by_one and len(x) > 1:
            return torch.cat([run_batch(x[i : i + 1]) for i in range(len(x))])
        return run_batch(x)

    return Runner(run, "onnxruntime", "fp32", device, note)


def load_runner(
    model: str | Path, device: str | torch.device = "auto", engine: str = "auto", precision: str = "auto"
) -> Runner:
    """The runner `stylepipe stylize` uses for ``model``: engine and precision resolved for the device."""
    model = Path(model)
    device = pick_device(device) if isinstance(device, str) else device
    if not model.is_file():
        raise FileNotFoundError(f"{model}: model not found; train it with `stylepipe train` (or `snakemake {model}`)")
    onnx_model = model.suffix.lower() == ".onnx"
    precision = resolve_precision(precision, device, engine, onnx_model)
    if precision == "bf16" and onnx_model:
        raise ValueError(f"{model}: an ONNX model runs in float32 (onnxruntime); for --precision bf16 "
                         f"pass the .pth model, or use --precision fp32")
    if precision == "bf16" and engine == "onnxruntime":
        raise ValueError(f"{model}: --precision bf16 runs in PyTorch, not --engine onnxruntime: "
                         "use --engine torch (or auto), or --precision fp32 for onnxruntime")
    if onnx_model:
        if engine == "torch":
            raise ValueError(f"{model}: an ONNX model runs with onnxruntime, not --engine torch")
        return _onnx_runner(str(model), device)
    from stylepipe.models.transformer import load_transformer

    net = load_transformer(model)
    if engine == "onnxruntime" or (engine == "auto" and device.type == "cpu" and precision == "fp32"):
        return _onnx_runner(_onnx_bytes(net), device)
    return _torch_runner(net, device, precision)


def _onnx_bytes(net: torch.nn.Module) -> bytes:
    from stylepipe.export import export_graph

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on constant folding and instance_norm
        export_graph(net, buffer)
    return buffer.getvalue()


def stylize_tensor(runner: Runner | torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Stylize a float [B, 3, H, W] batch in 0–255 → uint8 [B, 3, H, W]."""
    if isinstance(runner, torch.nn.Module):
        with torch.inference_mode():
            out = runner(batch.float())
    else:
        out = runner(batch)
    return out.float().clamp(0, 255).round().to(torch.uint8)
