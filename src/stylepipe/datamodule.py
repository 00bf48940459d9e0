"""ContentDataModule: the training photographs, in an order that survives a restart.

Two kinds of input: the shard directory `stylepipe resize` writes (a
``manifest.json`` beside memory-mapped shards, read with ``ShardReader``), or a
plain folder of images (resized on the short side and centre-cropped on the
fly, as `stylepipe resize` does: the same images, order and pixels as its
shards). The last ``val_images`` images are held out for validation.

Lightning 2.x restores model, optimizer and loop counters from a mid-epoch
checkpoint but restarts the dataloader at the first batch of the epoch. The
``ResumableSampler`` below makes the order a pure function of (seed, epoch)
and records how many batches of the current epoch training has consumed; the
DataModule saves that in the checkpoint, so a resumed run sees exactly the
batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

# the one decoder: EXIF, 16-bit, alpha on white, clear errors
from stylepipe.data.images import IMAGE_SUFFIXES, ImageError, load_rgb
from stylepipe.forking import blocked, unblock


def is_shard_dir(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def list_content_files(folder: str | Path) -> list[Path]:
    """The files under ``folder`` (recursively) that `stylepipe resize` reads: hidden files and folders
    left out, sorted by relative path, whatever their suffix (a ``.ppm`` is an image too)."""
    from stylepipe.data.resize import list_files

    folder = Path(folder)
    return [folder / name for name in list_files(folder)]


def _worker_init(worker_id: int, rank: int) -> None:
    """A loader worker ignores the signals that ask the training to stop: a terminal sends ^C to every
    process, and Slurm its signals (`scancel`, `--signal`, the time limit) to every process of the job
    step. The training process finishes its step and checkpoints with the workers still feeding it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    _sigterm_from_the_trainer_only()
    unblock({signal.SIGINT, signal.SIGUSR1})  # ignored from now on: blocked by ContentLoader until here
    if os.environ.get("PL_SEED_WORKERS") == "1":  # what Lightning installs when no worker_init_fn is given
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank)


_CAN_SEE_SENDER = hasattr(signal, "sigwaitinfo")  # not on macOS or Windows
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1}


class ContentLoader(DataLoader):
    """A DataLoader whose workers start with the stop signals blocked (``stylepipe.forking``), in
    every thread they will have: PyTorch starts threads in a worker before its ``worker_init_fn``
    (``_worker_init``) sets their actions."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        with blocked(_STOP_SIGNALS):
            return super().__iter__()  # starts the workers


def _sigterm_from_the_trainer_only() -> None:
    """SIGTERM ends a loader worker only when its training process sends it (as it stops a worker
    that did not end when asked); from anyone else it is ignored. PyTorch's own handler ends the
    worker then too, with the training process's error 'DataLoader worker ... is killed by signal'.
    SIGTERM is blocked in every thread of the worker from its start (``ContentLoader``), and taken
    by the thread started here, which sees the sender."""
    if not _CAN_SEE_SENDER:  # PyTorch's handler stays
        unblock({signal.SIGTERM})
        return
    trainer = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # as ContentLoader started it

    def wait() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != trainer:
            pass
        os._exit(0)  # as PyTorch's handler does for its training process's SIGTERM

    threading.Thread(target=wait, name="sigterm", daemon=True).start()


def _first(reasons: list[str], n: int) -> str:
    """The first ``n`` reasons, and how many more there are."""
    return "; ".join(reasons[:n]) + (f"; and {len(reasons) - n} more" if len(reasons) > n else "")


class FolderImages(Dataset):
    """A folder of images of any size → uint8 [3, size, size] tensors, as `stylepipe resize` makes them.

    Every image is decoded once up front: an unreadable one stops training
    before the first step, listed with the reason, instead of some steps in.
    """

    def __init__(self, folder: str | Path, size: int):
        # resize's rule, so that a folder holds out the images its shards would: every file that decodes
        files = list_content_files(folder)
        self.paths, bad, not_images = [], [], []
        for path in files:
            try:
                load_rgb(path)
                self.paths.append(path)
            except ImageError as err:
                (bad if path.suffix.lower() in IMAGE_SUFFIXES else not_images).append(str(err))
        if bad:
            images = len(self.paths) + len(bad)
            raise ValueError(
                f"{folder}: {len(bad)} of {images} images cannot be read: {_first(bad, 10)}. Remove or replace them, "
                f"or run `stylepipe resize --input {folder} --output DIR --size {size}` (it skips unreadable images "
                "and lists them in DIR/manifest.json) and train on DIR"
            )
        if not self.paths:
            raise FileNotFoundError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
                                    f"and any other file that decodes as one)")
        if not_images:
            print(f"{folder}: {len(not_images)} file(s) that are not images left out, as `stylepipe resize` "
                  f"leaves them out: {_first(not_images, 5)}", file=sys.stderr)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from stylepipe.data.resize import resize_file

        # resize's own resampling: a folder trains on the pixels its shards would hold
        return torch.from_numpy(resize_file(self.paths[index], self.size))


class ShardImages(Dataset):
    """The shard directory written by `stylepipe resize` → uint8 [3, N, N] tensors."""

    def __init__(self, path: str | Path, size: int):
        from stylepipe.data.shards import ShardReader

        self.reader = ShardReader(path)
        self.size = size
        if self.reader.image_size != size:
            # a stale resize step: say so instead of silently training at another size
            raise ValueError(
                f"{path}: shards hold {self.reader.image_size} px images but train.image_size is {size}; "
                "rerun `stylepipe resize` with the same size (snakemake/dvc do this when params change)"
            )

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.reader[index]
        return image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image))


def open_images(path: str | Path, size: int) -> Dataset:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: training data not found; create it with `stylepipe resize` (or `snakemake {path}`), "
            "or pass a folder of images"
        )
    if is_shard_dir(path):
        return ShardImages(path, size)
    return FolderImages(path, size)


class ResumableSampler(Sampler[int]):
    """Seeded shuffling whose order depends only on (seed, epoch), resumable mid-epoch.

    With several processes each rank takes every ``world_size``-th index of
    the same permutation (the tail that does not divide evenly is dropped, so
    all ranks run the same number of batches). An epoch is whole optimizer
    steps: with gradient accumulation the batches that would not fill a last
    window of ``accumulate`` batches are dropped too, like the last partial
    batch, so that every step sums the same number of images and steps count
    ``accumulate`` batches across epochs (what ``val_check_interval`` relies on).
    ``consumed`` counts the batches of the current epoch that training has
    started; ``load_state_dict`` makes the next iterator skip them.
    """

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 accumulate: int = 1):
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.rank, self.world_size, self.accumulate = rank, world_size, accumulate
        self.per_rank = size // world_size
        self.epoch = 0
        self.consumed = 0

    @property
    def num_batches(self) -> int:
        """Batches an epoch trains on: whole batches, in whole accumulation windows."""
        return self.per_rank // self.batch_size // self.accumulate * self.accumulate

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        # Lightning calls this at every epoch start, also right after a restore
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def order(self, epoch: int) -> list[int]:
        if self.shuffle:
            # both numbers mixed, not added: seed + epoch would give seed 43's first epoch seed 42's second
            entropy = np.random.SeedSequence([self.seed, epoch]).generate_state(2, np.uint32)
            generator = torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))
            indices = torch.randperm(self.size, generator=generator).tolist()
        else:
            indices = list(range(self.size))
        return indices[: self.per_rank * self.world_size][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch)[self.consumed * self.batch_size : len(self)])

    def state_dict(self) -> dict[str, int]:
        if self.consumed >= self.num_batches:
            # after the last batch of an epoch: saved as the next epoch's start, the state
            # load_state_dict makes of it, so a finished run started again saves the same bytes
            return {"epoch": self.epoch + 1, "consumed": 0}
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        if self.consumed >= self.num_batches:
            # saved after the last batch of an epoch: Lightning goes on with the next one
            self.epoch, self.consumed = self.epoch + 1, 0


class ContentDataModule(pl.LightningDataModule):
    def __init__(
        self,
        data: str | Path,
        image_size: int,
        batch_size: int,
        val_images: int,
        seed: int,
        num_workers: int = 0,
        shuffle: bool = True,
    ):
        super().__init__()
        self.data, self.image_size, self.batch_size = Path(data), image_size, batch_size
        self.val_images, self.seed, self.num_workers, self.shuffle = val_images, seed, num_workers, shuffle
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.sampler: ResumableSampler | None = None
        self._pending_state: dict | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images = open_images(self.data, self.image_size)
        n = len(images)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        step_images = self.batch_size * accumulate * world
        if self.val_images >= n or (n - self.val_images) // world // self.batch_size < accumulate:
            raise ValueError(
                f"{self.data}: {n} images, of which train.val_images = {self.val_images} are held out for validation; "
                f"one optimizer step needs train.batch_size × train.accumulate_grad_batches × processes = "
                f"{self.batch_size} × {accumulate} × {world} = {step_images} training images: "
                "add images or lower these values"
            )
        self.train_set = Subset(images, range(n - self.val_images))
        self.val_set = Subset(images, range(n - self.val_images, n))
        self.sampler = ResumableSampler(len(self.train_set), self.batch_size, self.seed, self.shuffle, rank, world,
                                        accumulate)
        if self._pending_state is not None:
            self.sampler.load_state_dict(self._pending_state)
            self._pending_state = None

    def _loader(self, dataset: Dataset, sampler: Sampler | None, drop_last: bool) -> DataLoader:
        on_gpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return ContentLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=on_gpu,
            persistent_workers=False,
            worker_init_fn=functools.partial(_worker_init, rank=self.trainer.global_rank if self.trainer else 0),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, None, drop_last=False)

    def batch_started(self) -> None:
        """Called by the LightningModule at each training batch start (counts consumed batches)."""
        if self.sampler is not None:
            self.sampler.consumed += 1

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()} if self.sampler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("sampler")
        if state is None:
            return
        if self.sampler is None:
            self._pending_state = state  # restored before setup(): apply when the sampler exists
        else:
            self.sampler.load_state_dict(state)
