"""TransformerNet: the image transformation network of Johnson et al. 2016.

Same layers and parameter names as pytorch/examples ``fast_neural_style`` so
weights move both ways unchanged. Unlike the example, the output always has
the input's height and width: the input is reflect-padded to a multiple of 4
(two stride-2 downsamplings) and the output is cropped back.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stylepipe.models.weights import read_weights

# Keys that old PyTorch versions stored for InstanceNorm2d(affine=True); the
# published pytorch/examples weights still carry them.
_LEGACY_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


class _ReflectionPad(torch.autograd.Function):
    """Reflection padding by ``p`` on all sides, with a backward that folds the border back.

    PyTorch's own backward scatters element by element: on a CPU it took five
    times its forward, and ``torch.compile`` lowers it to a scatter too. Here it
    is two strided copies and four small adds.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: int) -> torch.Tensor:
        ctx.p = p
        return F.pad(x, (p, p, p, p), mode="reflect")

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        p = ctx.p
        # padded column j < p mirrors input column p - j; from the right, W + p + k mirrors W - 2 - k
        cols = grad[..., p:-p].clone()
        cols[..., 1 : p + 1] += grad[..., :p].flip(-1)
        cols[..., -p - 1 : -1] += grad[..., -p:].flip(-1)
        # then the rows, of the column-folded gradient (corners included)
        rows = cols[..., p:-p, :]
        rows[..., 1 : p + 1, :] += cols[..., :p, :].flip(-2)
        rows[..., -p - 1 : -1, :] += cols[..., -p:, :].flip(-2)
        return rows, None


def reflection_pad(pad: nn.ReflectionPad2d, x: torch.Tensor) -> torch.Tensor:
    """``pad(x)`` in ``x``'s own dtype, with a faster backward when one is needed.

    CPU autocast runs reflection padding in float32, which costs two full-size
    casts per layer (to float32 and back for the next convolution) for an op
    that only copies values.
    """
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return _pad(pad, x)
    return _pad(pad, x)


def _pad(pad: nn.ReflectionPad2d, x: torch.Tensor) -> torch.Tensor:
    p = pad.padding[0]
    if (x.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing() and x.dim() == 4
            and 0 < p < min(x.shape[-2:]) and all(side == p for side in pad.padding)):
        return _ReflectionPad.apply(x, p)
    return pad(x)  # no gradient needed (inference, ONNX export): PyTorch's own


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` that keeps a CPU channels_last input channels_last.

    InstanceNorm views its input as [1, B·C, H, W], which copies a channels_last
    tensor to contiguous (and the next convolution converts it back); on a CPU,
    GroupNorm with one channel per group is the same computation and has a
    native channels_last kernel. oneDNN's bf16 convolutions want channels_last,
    so this is what makes bf16 stylizing pay off. Other inputs (contiguous ones,
    hence the ONNX export: InstanceNormalization) take the usual path. Same
    parameters and names as ``nn.InstanceNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.dim() == 4
            and not self.track_running_stats
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)
        return super().forward(x)


class ConvLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(reflection_pad(self.reflection_pad, x))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in1 = InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in2 = InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.in1(self.conv1(x)))
        return self.in2(self.conv2(out)) + x


class UpsampleConvLayer(nn.Module):
    """Nearest-neighbour upsampling then a convolution (no checkerboard artefacts)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, upsample: int | None = None):
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        return self.conv2d(reflection_pad(self.reflection_pad, x))


class TransformerNet(nn.Module):
    """Maps an RGB batch in 0–255 to a stylized RGB batch (roughly 0–255, unclamped)."""

    def __init__(self):
        super().__init__()
        self.conv1 = ConvLayer(3, 32, kernel_size=9, stride=1)
        self.in1 = InstanceNorm2d(32, affine=True)
        self.conv2 = ConvLayer(32, 64, kernel_size=3, stride=2)
        self.in2 = InstanceNorm2d(64, affine=True)
        self.conv3 = ConvLayer(64, 128, kernel_size=3, stride=2)
        self.in3 = InstanceNorm2d(128, affine=True)
        self.res1 = ResidualBlock(128)
        self.res2 = ResidualBlock(128)
        self.res3 = ResidualBlock(128)
        self.res4 = ResidualBlock(128)
        self.res5 = ResidualBlock(128)
        self.deconv1 = UpsampleConvLayer(128, 64, kernel_size=3, stride=1, upsample=2)
        self.in4 = InstanceNorm2d(64, affine=True)
        self.deconv2 = UpsampleConvLayer(64, 32, kernel_size=3, stride=1, upsample=2)
        self.in5 = InstanceNorm2d(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, kernel_size=9, stride=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        # pad right/bottom to a multiple of 4 so both downsamplings divide evenly
        # (and to at least 8 px, which the 9×9 reflection padding needs)
        pad_h, pad_w = max(-height % 4, 8 - height), max(-width % 4, 8 - width)
        if pad_h or pad_w:
            mode = "reflect" if height > pad_h and width > pad_w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        y = self.body(x)
        if pad_h or pad_w:
            y = y[..., :height, :width]
        return y

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """The network proper; H and W must be multiples of 4 (the ONNX export runs this)."""
        y = self.relu(self.in1(self.conv1(x)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def clean_state_dict(state_dict: dict) -> dict:
    """Drop legacy InstanceNorm buffers and a ``module.``/``_orig_mod.`` prefix."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.rsplit(".", 1)[-1] in _LEGACY_SUFFIXES:
            continue
        cleaned[key] = value
    return cleaned


MODEL_FIX = "retrain it with `stylepipe train` or pass the right file"


def load_transformer(path: str | Path, map_location: str | torch.device = "cpu") -> TransformerNet:
    """Load a TransformerNet state_dict (ours or pytorch/examples', legacy keys dropped).

    Anything else (another network's weights, a damaged or non-PyTorch file)
    is a ValueError that names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found; train it with `stylepipe train` (or `snakemake {path}`)")
    what = "TransformerNet state_dict"
    state = read_weights(path, what, MODEL_FIX, map_location)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        # a Lightning checkpoint: keep the transformer's weights
        state = {k[len("transformer."):]: v for k, v in state["state_dict"].items() if k.startswith("transformer.")}
    state = clean_state_dict(state)
    net = TransformerNet()
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        found = f"; it has {', '.join(map(str, unexpected[:3]))}{', ...' if len(unexpected) > 3 else ''}" if unexpected else ""
        raise ValueError(f"{path}: not a {what} ({len(missing)} of its {len(expected)} weights missing{found}); "
                         f"{MODEL_FIX}")
    wrong = [k for k, v in state.items()
             if not isinstance(v, torch.Tensor) or v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{path}: not a {what} (wrong shape or type for {', '.join(wrong[:3])}"
                         f"{', ...' if len(wrong) > 3 else ''}); {MODEL_FIX}")
    broken = sum(int((~torch.isfinite(v)).sum()) for v in state.values() if v.is_floating_point())
    if broken:
        # such a network turns every pixel black (NaN clamps to 0)
        raise ValueError(f"{path}: {broken} of its weights are NaN or infinite (a training that diverged); "
                         "retrain it, with a lower train.lr or in 32-true precision")
    net.load_state_dict(state, strict=True)
    return net.eval()
