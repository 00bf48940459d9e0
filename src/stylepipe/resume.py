"""Resuming `stylepipe train`: which checkpoint in ``--scratch`` to continue from, and checkpoints written whole.

A checkpoint carries the ``fingerprint`` of what its run computes; at start
``find_checkpoints`` picks this configuration's checkpoint with the most
steps, and ``set_aside`` moves other configurations' to
``superseded/<fingerprint>/``, where they wait should that configuration come
back. ``AtomicCheckpointIO`` writes every checkpoint beside its final name,
then renames it, so a kill never leaves half a file; ``record_attempt`` keeps
the history of the attempts in ``attempts.log``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from stylepipe.io import atomic_path

# training values that change how a run is carried out, not what it computes or writes (val_images is
# not one: it decides which images train; log_every_n_steps and val_check_interval decide the rows of the
# curves it writes, and early stopping decides when the run ends)
OPERATIONAL_KEYS = {"num_workers", "checkpoint_every_n_steps", "early_stopping_patience", "devices", "num_nodes",
                    "strategy", "accelerator"}
STOPPING_KEYS = ("early_stopping_patience",)


def fingerprint(tp: dict, seed: int, world_size: int, *files: Path, data: Path, cpu_threads: int | None = None) -> str:
    """Identifies what a run computes: a checkpoint of another configuration is never resumed.

    The number of processes counts (each takes its own share of every batch
    step's data, so it sets the global batch); how they are spread over
    devices and nodes does not. ``cpu_threads``: the thread count of a run
    on the CPU, where the sums, and so the weights, depend on it (None on a GPU).
    """
    values = {k: v for k, v in tp.items() if k not in OPERATIONAL_KEYS}
    if tp["early_stopping_patience"]:
        values |= {k: tp[k] for k in STOPPING_KEYS}  # when the run stops
    if tp["max_steps"] > 0:
        del values["epochs"]  # max_steps bounds the run alone
    if cpu_threads is not None:
        values["cpu_threads"] = cpu_threads
    h = hashlib.sha256()
    h.update(json.dumps(values | {"seed": seed, "processes": world_size}, sort_keys=True).encode())
    for path in files:
        h.update(hashlib.sha256(path.read_bytes()).digest())
    h.update(_data_identity(data))
    return h.hexdigest()[:16]


def _data_identity(data: Path) -> bytes:
    """What tells the training data apart: new pixels under the same file names count.

    Shards: the manifest, which holds each shard's pixel hash (shards written
    without one are hashed here). A folder of images: each file's name, size
    and modification time (hashing a large folder at every start would cost
    minutes; a copied folder then restarts its run rather than resuming it).
    """
    manifest = data / "manifest.json"
    if manifest.is_file():
        h = hashlib.sha256(manifest.read_bytes())
        for shard in json.loads(manifest.read_text()).get("shards", []):
            if "sha256" not in shard:
                with open(data / shard["file"], "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
        return h.digest()
    from stylepipe.datamodule import list_content_files

    h = hashlib.sha256()
    for p in list_content_files(data):
        st = p.stat()
        h.update(f"{p.relative_to(data)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.digest()


SUPERSEDED = "superseded"  # scratch/superseded/<fingerprint>/: checkpoints of earlier configurations
TENSORBOARD = "tensorboard"  # scratch/tensorboard/: the TensorBoard log of the current configuration


def find_checkpoints(scratch: Path, fp: str) -> tuple[Path | None, dict[Path, str]]:
    """The checkpoint to resume from, and the checkpoints of other configurations in ``scratch``.

    Resume candidates are this configuration's checkpoints (ours, Lightning's
    last/hpc_ckpt_*), in ``scratch`` or set aside under ``superseded/<fp>/``
    when another configuration ran in between: the one with the most steps,
    then the newest.
    """
    best: tuple[int, int, Path] | None = None
    others: dict[Path, str] = {}
    for path in [*sorted(scratch.glob("*.ckpt")), *sorted((scratch / SUPERSEDED / fp).glob("*.ckpt"))]:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except FileNotFoundError:  # moved aside meanwhile by rank 0
            continue
        except Exception as err:  # a checkpoint of an older version, or a damaged file: skip it
            print(f"stylepipe train: ignoring unreadable checkpoint {path}: {err}", file=sys.stderr)
            continue
        if ckpt.get("stylepipe_fingerprint") != fp:
            others[path] = str(ckpt.get("stylepipe_fingerprint"))
            continue
        key = (int(ckpt.get("global_step", -1)), path.stat().st_mtime_ns, path)
        if best is None or key[:2] > best[:2]:
            best = key
    return (best[2] if best else None), others


def set_aside(scratch: Path, others: dict[Path, str]) -> None:
    """Move other configurations' checkpoints out of the way: kept, never overwritten, resumable if that configuration returns."""
    newest = max(others, key=lambda path: path.stat().st_mtime_ns, default=None)
    newest_fp = others.get(newest)
    for path, fp in others.items():
        target = scratch / SUPERSEDED / fp / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)
    if others:
        # the TensorBoard log is the last run's: with its checkpoints, not under the new run's curves
        log = scratch / TENSORBOARD
        if log.is_dir():
            target = scratch / SUPERSEDED / newest_fp / TENSORBOARD
            n = 1
            while target.exists():
                n += 1
                target = target.with_name(f"{TENSORBOARD}-{n}")
            log.replace(target)
        print(f"stylepipe train: {len(others)} checkpoint(s) of another configuration moved to "
              f"{scratch / SUPERSEDED}/ (delete them when no longer needed)", file=sys.stderr)


def record_attempt(scratch: Path, event: str) -> None:
    """Append one line to ``scratch/attempts.log``: when (UTC), the Slurm job if any, what happened.

    Snakemake deletes a job's log before every attempt; --scratch outlives them
    all, so this file tells the whole story of a training that was preempted,
    requeued or retried: where each attempt started and stopped.
    """
    from datetime import datetime, timezone

    job = os.environ.get("SLURM_JOB_ID")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        with open(scratch / "attempts.log", "a", encoding="utf-8") as log:
            log.write(f"{when}{f' slurm job {job}' if job else ''}: {event}\n")
    except OSError as err:  # a full disk, say: the error being reported matters more than its record
        print(f"stylepipe train: could not add to {scratch / 'attempts.log'}: {err.strerror or err}", file=sys.stderr)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their final name, then renamed: whole even when $TMPDIR is another filesystem.

    (Lightning's own atomic save stages the file in $TMPDIR; from a
    node-local /tmp to network scratch its final move is a copy, which a
    kill can cut short.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported for local checkpoints")
        # through a file object: torch.save names the zip's folder after a path (here the random temp name)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
