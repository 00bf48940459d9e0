"""Reading weight files safely: tensors only, and an error that names the file when it is not one."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch


def read_weights(path: Path, what: str, fix: str, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` of a dict, or a ValueError naming ``path``, what it should
    have been and ``fix``, never torch's advice to load it unsafely."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # UnpicklingError, RuntimeError (zip reader), EOFError, ValueError, ...
        raise ValueError(f"{path}: not a {what} ({_load_failure(err)}); {fix}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a {what} (it holds a {type(state).__name__}, not a dict of tensors); {fix}")
    return state


def _load_failure(err: Exception) -> str:
    """torch.load's reason in a few words, without its advice to load the file with weights_only=False."""
    text = str(err)
    if isinstance(err, EOFError) or not text:
        return "empty or cut-short file"
    if "Unsupported global" in text:
        return ("a PyTorch file that holds Python objects besides tensors, e.g. a whole pickled model (if you "
                "trust its source, save its .state_dict() instead) or another program's training checkpoint")
    if "WeightsUnpickler" in text or "Weights only load failed" in text:
        return "not a PyTorch weights file: corrupt or another kind of file"
    if isinstance(err, (KeyError, pickle.UnpicklingError)) or "invalid load key" in text:
        # the legacy format's reader takes the first bytes for a magic number it does not know
        return "not a PyTorch file: corrupt or another kind of file"
    if "central directory" in text or "PytorchStreamReader" in text:
        return "damaged or truncated PyTorch file"
    return "unreadable: " + text.split("\n")[0][:200]
