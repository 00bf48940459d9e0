"""Image shards: a few large, memory-mappable files instead of one file per image.

A shard directory holds ``shard-00000.npy``, ``shard-00001.npy``, ... and
``manifest.json``. Each shard is a plain NumPy ``.npy`` array of dtype uint8
and shape ``[count, 3, N, N]`` (channels first, the layout PyTorch wants), so
``numpy.load(path, mmap_mode="r")`` opens it and reading image ``i`` is one
contiguous copy: no per-image decode. DVC and cluster file systems handle a
few large files far better than 80,000 small ones.

``manifest.json`` lists ``shards`` (``{file, count}`` in order), ``images``
(the source file of every stored image, relative to the resized folder, in
shard order), ``skipped`` (``{file, reason}``), ``image_size`` and counts.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from stylepipe.io import failed_write, naming_output, new_temporary, read_json, write_json

MANIFEST = "manifest.json"
FORMAT = "stylepipe-shards"
VERSION = 1
# ~1 GiB per shard: COCO at 256 px becomes 16 files.
SHARD_BYTES = 1 << 30
# Fixed .npy header size, so the final image count can be written in place
# once the shard is full (the count is not known when writing starts).
_HEADER_BYTES = 128


def images_per_shard(image_size: int, shard_bytes: int = SHARD_BYTES) -> int:
    return max(1, shard_bytes // (3 * image_size * image_size))


def _npy_header(count: int, image_size: int) -> bytes:
    """A version 1.0 .npy header padded to a fixed length (numpy accepts the padding)."""
    desc = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({count}, 3, {image_size}, {image_size}), }}"
    prefix = b"\x93NUMPY\x01\x00"
    body_len = _HEADER_BYTES - len(prefix) - 2
    body = desc.ljust(body_len - 1).encode("latin1") + b"\n"
    if len(body) != body_len:
        raise ValueError(f"shard header too long for shape ({count}, 3, {image_size}, {image_size})")
    return prefix + body_len.to_bytes(2, "little") + body


class ShardWriter:
    """Append [3, N, N] uint8 images to numbered shard files in ``directory``.

    The caller writes into a fresh directory (see :func:`atomic_directory`);
    :meth:`close` finalises the last shard and writes ``manifest.json``.
    """

    def __init__(self, directory: str | Path, image_size: int, per_shard: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.image_size = int(image_size)
        self.per_shard = int(per_shard or images_per_shard(self.image_size))
        if self.per_shard < 1:
            raise ValueError("per_shard must be at least 1")
        self.shards: list[dict[str, Any]] = []
        self.images: list[str] = []
        self._file = None
        self._count = 0

    def add(self, image: np.ndarray, source: str) -> None:
        """Append one image (uint8, shape [3, N, N]); ``source`` names its input file."""
        n = self.image_size
        if image.dtype != np.uint8 or image.shape != (3, n, n):
            raise ValueError(f"{source}: expected uint8 [3, {n}, {n}], got {image.dtype} {list(image.shape)}")
        if self._file is None:
            self._open_next()
        pixels = np.ascontiguousarray(image).data
        self._file.write(pixels)
        self._digest.update(pixels)
        self._count += 1
        self.images.append(source)
        if self._count == self.per_shard:
            self._finish_shard()

    def _open_next(self) -> None:
        name = f"shard-{len(self.shards):05d}.npy"
        self._file = open(self.directory / name, "wb")
        self._file.write(_npy_header(0, self.image_size))
        self.shards.append({"file": name, "count": 0})
        self._count = 0
        self._digest = hashlib.sha256()

    def _finish_shard(self) -> None:
        self._file.seek(0)
        self._file.write(_npy_header(self._count, self.image_size))
        self._file.close()
        self._file = None
        self.shards[-1]["count"] = self._count
        # the pixels' hash: the manifest changes when they do (a resumed training checks it)
        self.shards[-1]["sha256"] = self._digest.hexdigest()

    def close(self, **extra: Any) -> dict:
        """Finish the last shard and write the manifest (``extra`` keys are added to it)."""
        if self._file is not None:
            self._finish_shard()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "image_size": self.image_size,
            "layout": "uint8 [count, 3, N, N] per shard, RGB",
            "shards": self.shards,
            "images": self.images,
            "count": len(self.images),
            **extra,
        }
        write_json(self.directory / MANIFEST, manifest)
        return manifest

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is not None and self._file is not None:
            self._file.close()
            self._file = None


def replace_directory(src: Path, dst: Path) -> None:
    """Move the finished directory ``src`` onto ``dst``, replacing an old ``dst``."""
    dst = Path(dst)
    old = None
    if dst.exists() or dst.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class OutputNotOurs(ValueError):
    """The output path holds something this command did not write; replacing it would lose it."""


class atomic_directory:
    """Context manager: yield a fresh temporary directory beside ``path``; on
    success it replaces ``path``, on error it is removed (no half-written output).

    ``ours(path)`` tells whether an existing, non-empty ``path`` is a previous
    output of the same command, which may be replaced; anything else (a file, a
    folder of the user's photos) is refused before any work starts, since the
    swap would delete it. Without ``ours``, any old folder is replaced.
    """

    def __init__(self, path: str | Path, ours: Callable[[Path], bool] | None = None, what: str = "output"):
        self.path = Path(path)
        self.ours = ours
        self.what = what

    def check(self) -> None:
        """Raise :class:`OutputNotOurs` unless ``path`` is absent, an empty folder or ours to replace."""
        path = self.path
        if path.exists() and not path.is_dir():  # a link to a folder counts as the folder, as before
            raise OutputNotOurs(f"{path}: is a file, not a folder; give a new folder for the {self.what}")
        if self.ours is not None and path.is_dir() and any(path.iterdir()) and not self.ours(path):
            raise OutputNotOurs(
                f"{path}: folder already holds files that are not a previous {self.what}, and writing "
                f"there replaces the whole folder; give a new or empty folder (or delete this one yourself)"
            )

    def __enter__(self) -> Path:
        self.check()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # removed by __exit__, or by new_temporary itself if ^C comes before __enter__ returns
        self.tmp = new_temporary(self.path, folder=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            replace_directory(self.tmp, self.path)
            return
        shutil.rmtree(self.tmp, ignore_errors=True)
        failed = failed_write(exc, self.tmp)
        if failed is not None:
            raise naming_output(failed, self.path, folder=True) from exc


class ShardReader:
    """Random access to a shard directory written by ``stylepipe resize``.

    ``reader[i]`` is a contiguous ``torch.uint8`` tensor ``[3, N, N]`` (or
    float32 in 0..255, the scale pytorch/examples trains on, with
    ``dtype=torch.float32``). Shards are memory-mapped lazily and re-opened in
    each process, so a reader can be handed to DataLoader worker processes.
    """

    def __init__(self, path: str | Path, dtype: Any = None):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{manifest_path}: no shard manifest; create the shards with "
                f"`stylepipe resize --input IMAGES --output {self.path} --size N`"
            )
        self.manifest: dict = read_json(manifest_path)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_path}: not a stylepipe shard manifest")
        self.image_size: int = int(self.manifest["image_size"])
        self.dtype = dtype
        counts = [int(s["count"]) for s in self.manifest["shards"]]
        # starts[k] = index of the first image of shard k
        self._starts = [0]
        for c in counts[:-1]:
            self._starts.append(self._starts[-1] + c)
        self._len = sum(counts)
        self._arrays: list[np.ndarray] | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self._len

    @property
    def images(self) -> Sequence[str]:
        return self.manifest["images"]

    def _open(self) -> list[np.ndarray]:
        # mmaps are not shared across fork/spawn: open once per process
        if self._arrays is None or self._pid != os.getpid():
            arrays = []
            for shard in self.manifest["shards"]:
                file = self.path / shard["file"]
                try:
                    arr = np.load(file, mmap_mode="r")
                except (OSError, ValueError) as err:  # missing, cut short (mmap length), not .npy
                    raise ValueError(f"{file}: unreadable shard ({err}); it may be truncated or damaged: "
                                     f"re-run `stylepipe resize`") from err
                expected = (int(shard["count"]), 3, self.image_size, self.image_size)
                if arr.shape != expected or arr.dtype != np.uint8:
                    raise ValueError(
                        f"{file}: shape {arr.shape} {arr.dtype}, manifest says "
                        f"{expected} uint8; re-run `stylepipe resize`"
                    )
                arrays.append(arr)
            self._arrays, self._pid = arrays, os.getpid()
        return self._arrays

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, position in shard) of image ``index``."""
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"image index {index} out of range for {self._len} images in {self.path}")
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def numpy(self, index: int) -> np.ndarray:
        """Image ``index`` as a fresh uint8 array [3, N, N]."""
        shard, pos = self.locate(int(index))
        return np.array(self._open()[shard][pos])

    def __getitem__(self, index: int):
        import torch

        tensor = torch.from_numpy(self.numpy(index))
        if self.dtype is not None and self.dtype != torch.uint8:
            tensor = tensor.to(self.dtype)
        return tensor

    def __iter__(self) -> Iterator:
        for i in range(self._len):
            yield self[i]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = None  # never pickle memory maps
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"ShardReader({str(self.path)!r}, {self._len} images, {self.image_size} px)"


def to_float(images):
    """uint8 tensor(s) → float32 in 0..255 (pytorch/examples' input scale)."""
    return images.float()
