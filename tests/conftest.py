"""Shared fixtures: tiny, offline params that make every step run in seconds."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import yaml

from stylepipe.config import deep_merge, load_params

REPO = Path(__file__).resolve().parents[1]

# What Snakemake needs to plan the pipeline: the Snakefile, its rules and report captions, and each step's
# source files (inputs of its rule), which dvc.yaml lists
WORKFLOW = ("Snakefile", "workflow", "report", "dvc.yaml", "src")


def copy_checkout(root: Path, names: tuple[str, ...] = WORKFLOW) -> Path:
    """``names`` of this repository copied into ``root``: links as links, without caches or build metadata."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = REPO / name
        if src.is_symlink():
            os.symlink(os.readlink(src), root / name)
        elif src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, root / name)
    return root

# Overrides of config/demo.yaml + config/offline.yaml that shrink every step.
TINY = {
    "resources": {"resize": {"cpus_per_task": 1}},
    "train": {
        "image_size": 32,
        "batch_size": 2,
        "max_steps": 4,
        "style_size": 48,
        "val_check_interval": 2,
        "val_images": 2,
        "checkpoint_every_n_steps": 2,
        "log_every_n_steps": 1,
        "precision": "32-true",
        "num_workers": 0,
    },
    "stylize": {"batch_size": 2, "max_size": 64},
    "evaluate": {"speed_size": 64, "speed_images": 2},
}


def tiny_params_dict() -> dict:
    params = {}
    for name in ("config/demo.yaml", "config/offline.yaml"):
        params = deep_merge(params, yaml.safe_load((REPO / name).read_text()))
    return deep_merge(params, copy.deepcopy(TINY))


@pytest.fixture
def tiny_params_file(tmp_path: Path) -> Path:
    """A complete, valid, offline params file for tiny runs."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    load_params([path])  # fail here, not deep inside a step, if it drifts from the schema
    return path


def file_size_limit(limit: int):
    """A ``preexec_fn`` for a child process: its writes past ``limit`` bytes in a file fail (EFBIG), as
    writes to a full disk fail (ENOSPC): a full disk that needs no mount and leaves the machine's alone."""
    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply
