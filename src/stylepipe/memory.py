"""How much memory this process can still allocate before it is stopped.

On Linux an allocation beyond the machine's memory usually succeeds (memory
is overcommitted) and the kernel's OOM killer ends the process later with
SIGKILL: no error, no message, no traceback. A job that knows how much
memory it will need checks it here first. The limits that apply are the
smallest of: the memory the kernel says is available (``MemAvailable``), the
memory limit of the process's cgroup (a Slurm job, a container; v1 or v2,
its page cache counted as free, as the kernel reclaims it first) and the
address-space limit (``ulimit -v``). Elsewhere nothing is known: ``None``.

`out_of_memory` tells an allocation that failed from other errors.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

# a cgroup limit at or above this is "no limit" (v1 writes 2**63 rounded down to a page)
_UNLIMITED = 1 << 60
CGROUP_LIMIT = "the cgroup's memory limit"  # a Slurm job's or a container's


@dataclass(frozen=True)
class Available:
    """Bytes this process can still allocate, and which limit says so."""

    bytes: int
    limit: str  # e.g. "the machine's available memory", CGROUP_LIMIT

    def __str__(self) -> str:
        return f"{gigabytes(self.bytes)} free under {self.limit}"


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def round_down(n: float, step: int) -> int:
    """A size to offer that fits: ``n`` rounded down to a multiple of ``step``, or ``n`` itself below ``step``."""
    return max(1, int(n) // step * step or int(n))


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is PyTorch's or onnxruntime's failure to allocate memory (CPU or GPU)."""
    import torch

    if isinstance(err, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError), torch.cuda.OutOfMemoryError)):
        return True
    text = str(err)
    # PyTorch's CPU allocator, onnxruntime's arena (CPU and CUDA)
    return any(sign in text for sign in ("can't allocate memory", "Failed to allocate memory", "out of memory"))


def available_memory(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> Available | None:
    """The tightest of the limits that apply to this process, or None where none is known (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    found = [a for a in (_meminfo(proc), _cgroup(proc, cgroup_root), _address_space(proc)) if a is not None]
    return min(found, key=lambda a: a.bytes, default=None)


def _meminfo(proc: Path) -> Available | None:
    fields = _fields(proc / "meminfo")
    if "MemAvailable" not in fields:
        return None
    return Available(fields["MemAvailable"] * 1024, "the machine's available memory")


def _cgroup(proc: Path, root: Path) -> Available | None:
    """Room left under the memory limits of this process's cgroup and of every cgroup above it."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            rooms += _rooms(root, path, "memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
            rooms += _rooms(root / "memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes",
                            "total_inactive_file")
    return Available(min(rooms), CGROUP_LIMIT) if rooms else None


def _rooms(mount: Path, path: str, limit_file: str, usage_file: str, cache_field: str) -> list[int]:
    # in a container the process's cgroup is the mount's root, not the path the host names
    folder = mount / path.lstrip("/")
    if not folder.is_dir():
        folder = mount
    rooms = []
    while True:
        limit = _number(folder / limit_file)
        usage = _number(folder / usage_file)
        if limit is not None and limit < _UNLIMITED and usage is not None:
            cache = _fields(folder / "memory.stat").get(cache_field, 0)
            rooms.append(max(0, limit - max(0, usage - cache)))
        if folder == mount or mount not in folder.parents:
            return rooms
        folder = folder.parent


def _address_space(proc: Path) -> Available | None:
    import resource  # Unix only

    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return None
    mapped = _fields(proc / "self" / "status").get("VmSize")
    if mapped is None:
        return None
    return Available(max(0, limit - mapped * 1024), "the address-space limit (ulimit -v)")


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # v2 writes "max" for no limit


def _fields(path: Path) -> dict[str, int]:
    """``name: value [kB]`` or ``name value`` lines → {name: value}."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[1].isdigit():
            fields[parts[0]] = int(parts[1])
    return fields
