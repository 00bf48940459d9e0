"""The loss network: torchvision VGG16 ``features`` up to relu4_3, frozen.

Weights come from a local file (``stylepipe fetch loss-network`` writes it),
never from the network at training time. The file holds torchvision's key
names ``features.{i}.weight/bias`` for i < 23; a full torchvision VGG16
state_dict works too (the classifier is ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from stylepipe.models.weights import read_weights

# index of each ReLU inside torchvision's vgg16().features
LAYER_INDICES = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}
NUM_FEATURES = 23  # features[:23] ends with relu4_3
# torchvision's VGG16 layer configuration ("D"): conv output channels, "M" a 2x2 max pool
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

# ImageNet statistics, for inputs scaled to 0–1 (pytorch/examples normalize_batch)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FETCH_HINT = (
    "fetch it with `stylepipe fetch loss-network --params params.yaml --output {path}` "
    "(or run `snakemake {path}` / `dvc repro`)"
)


def _vgg16_layers() -> nn.Sequential:
    """torchvision's ``vgg16().features``, built as its ``make_layers`` builds it (same modules, same
    order, so the same random numbers are drawn); written out here because importing torchvision
    costs seconds that `stylepipe evaluate` and `fetch loss-network` otherwise never pay."""
    layers: list[nn.Module] = []
    in_channels = 3
    for v in VGG16_CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


def _features() -> nn.Sequential:
    """``vgg16().features[:23]`` without building (and initialising) the 120 M-parameter classifier."""
    features = _vgg16_layers()[:NUM_FEATURES]
    for module in features.modules():
        if isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(module.bias, 0)
    return features


def random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A seeded random initialisation with the same keys as the ImageNet file (offline runs, tests)."""
    devices = []  # fork the RNG so the caller's global seed stays untouched
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        features = _features()
    return {f"features.{k}": v.detach().clone().contiguous() for k, v in features.state_dict().items()}


def _features_state(state: dict, path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        parts = str(key).split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[1].isdigit() and int(parts[1]) < NUM_FEATURES:
            out[f"{parts[1]}.{parts[2]}"] = value
    if not out:
        raise ValueError(
            f"{path}: no `features.{{i}}.weight/bias` keys (i < {NUM_FEATURES}); "
            f"not a VGG16 state_dict. Re-{FETCH_HINT.format(path=path)}"
        )
    expected = {k: v.shape for k, v in _shapes().items()}
    missing = [f"features.{k}" for k in expected if k not in out]
    wrong = [f"features.{k}" for k, v in out.items()
             if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k])]
    if missing or wrong:
        problem = f"missing {', '.join(missing[:3])}" if missing else f"wrong shape for {', '.join(wrong[:3])}"
        raise ValueError(f"{path}: not a VGG16 state_dict ({problem}). Re-{FETCH_HINT.format(path=path)}")
    return out


def _shapes() -> dict[str, torch.Tensor]:
    """The keys and shapes of ``features[:23]`` (on the meta device: nothing allocated)."""
    with torch.device("meta"):
        return _vgg16_layers()[:NUM_FEATURES].state_dict()


def load_features_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a loss network file → state_dict of ``features[:23]`` (keys ``{i}.weight/bias``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"loss network weights {path} not found: " + FETCH_HINT.format(path=path))
    state = read_weights(path, "VGG16 state_dict", "re-" + FETCH_HINT.format(path=path))
    return _features_state(state, path)


class LossNetwork(nn.Module):
    """Returns the activations at the requested relu layers for a 0–255 RGB batch."""

    def __init__(self, layers: Iterable[str], state_dict: dict | None = None):
        super().__init__()
        layers = list(dict.fromkeys(layers))
        unknown = [name for name in layers if name not in LAYER_INDICES]
        if unknown:
            raise ValueError(f"unknown loss network layer(s) {unknown}; choose from {list(LAYER_INDICES)}")
        self.layers = sorted(layers, key=LAYER_INDICES.get)
        features = _features()
        if state_dict is not None:
            features.load_state_dict(state_dict, strict=True)
        # cut after the deepest requested layer: slices ending at each relu
        bounds = [0] + [LAYER_INDICES[name] + 1 for name in self.layers]
        self.slices = nn.ModuleList(features[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path, layers: Iterable[str]) -> "LossNetwork":
        return cls(layers, load_features_state(path))

    def train(self, mode: bool = True) -> "LossNetwork":
        # always frozen and in eval mode, whatever the parent module does
        return super().train(False)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """0–255 RGB → ImageNet-normalised input (same as pytorch/examples)."""
        return (batch - self.mean) / self.std

    def forward(self, batch: torch.Tensor, layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Activations at ``layers`` (default: all this network was built for).

        Stops after the deepest requested layer: the content target usually needs
        only relu2_2, a third of the work of going on to relu4_3.
        """
        wanted = set(self.layers if layers is None else layers)
        x = self.normalize(batch)
        out = {}
        for name, block in zip(self.layers, self.slices):
            if not wanted:
                break
            x = block(x)
            out[name] = x
            wanted.discard(name)
        return out


def smallest_input(layers: Iterable[str]) -> int:
    """The fewest pixels an input may have on a side to reach the deepest of ``layers``:
    each max-pool before it halves the side (relu4_3: 3 pools, 8 px)."""
    deepest = max(LAYER_INDICES[name] for name in layers)
    index, pools = 0, 0
    for v in VGG16_CONFIG:
        if index > deepest:
            break
        pools += v == "M"
        index += 1 if v == "M" else 2  # a conv and its ReLU
    return 2**pools


def layer_names(*groups: Sequence[str]) -> list[str]:
    """All distinct layers of several layer lists, in network order."""
    names = {name for group in groups for name in group}
    return sorted(names, key=LAYER_INDICES.get)
