"""Shard writer/reader: exact round trip, random access, worker-process safety."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from stylepipe.data.shards import MANIFEST, ShardReader, ShardWriter, atomic_directory, to_float


def _image(i: int, n: int = 8) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, size=(3, n, n), dtype=np.uint8)


@pytest.fixture
def shard_dir(tmp_path):
    out = tmp_path / "resized"
    with atomic_directory(out) as tmp:
        writer = ShardWriter(tmp, image_size=8, per_shard=3)
        for i in range(7):
            writer.add(_image(i), f"img{i}.jpg")
        writer.close(skipped=[{"file": "bad.jpg", "reason": "truncated"}])
    return out


def test_round_trip_across_shards(shard_dir):
    reader = ShardReader(shard_dir)
    assert len(reader) == 7
    assert reader.image_size == 8
    assert [s["count"] for s in reader.manifest["shards"]] == [3, 3, 1]
    assert reader.manifest["images"] == [f"img{i}.jpg" for i in range(7)]
    assert reader.manifest["skipped"] == [{"file": "bad.jpg", "reason": "truncated"}]
    for i in [6, 0, 3, 2, 5, -1]:
        tensor = reader[i]
        assert tensor.dtype == torch.uint8 and tensor.shape == (3, 8, 8) and tensor.is_contiguous()
        assert np.array_equal(tensor.numpy(), _image(i % 7))
    with pytest.raises(IndexError):
        reader[7]


def test_shards_are_plain_npy(shard_dir):
    arr = np.load(shard_dir / "shard-00001.npy", mmap_mode="r")
    assert arr.shape == (3, 3, 8, 8) and arr.dtype == np.uint8
    assert np.array_equal(arr[0], _image(3))


def test_float_and_tensor_is_writable_copy(shard_dir):
    reader = ShardReader(shard_dir, dtype=torch.float32)
    x = reader[1]
    assert x.dtype == torch.float32 and float(x.max()) <= 255.0
    x.zero_()  # a copy: the shard on disk is untouched
    assert torch.equal(to_float(ShardReader(shard_dir)[1]), torch.from_numpy(_image(1)).float())


def test_reader_pickles_without_open_maps(shard_dir):
    reader = ShardReader(shard_dir)
    reader[0]  # opens the memory maps
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._arrays is None
    assert torch.equal(clone[4], reader[4])


def test_dataloader_workers(shard_dir):
    reader = ShardReader(shard_dir)
    loader = torch.utils.data.DataLoader(reader, batch_size=7, num_workers=2)
    (batch,) = list(loader)
    assert batch.shape == (7, 3, 8, 8)
    assert torch.equal(batch[5], reader[5])


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "resized"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            ShardWriter(tmp, image_size=8).add(_image(0), "a.jpg")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_missing_manifest_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="stylepipe resize"):
        ShardReader(tmp_path)
    assert not (tmp_path / MANIFEST).exists()


def test_shard_not_matching_manifest_is_a_clear_error(shard_dir):
    np.save(shard_dir / "shard-00002.npy", np.zeros((2, 3, 8, 8), np.uint8))  # manifest says 1 image
    with pytest.raises(ValueError, match="shard-00002.npy.*re-run `stylepipe resize`"):
        ShardReader(shard_dir)[0]


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage"])
def test_damaged_shard_names_the_file_and_the_fix(shard_dir, damage):
    shard = shard_dir / "shard-00001.npy"
    if damage == "truncate":  # a copy cut short: the header is intact, the data is not
        shard.write_bytes(shard.read_bytes()[:200])
    elif damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(b"not an array")
    with pytest.raises(ValueError, match="shard-00001.npy: unreadable shard .*re-run `stylepipe resize`"):
        ShardReader(shard_dir)[0]


def test_a_ctrl_c_just_after_the_temporary_folder_is_made_leaves_nothing(tmp_path, monkeypatch):
    # ^C in the instant between making the .part folder and the `with` block taking charge of it
    import os

    real_mkdir = os.mkdir

    def mkdir_then_interrupted(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        if str(path).endswith(".part"):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "mkdir", mkdir_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "out"):
            pass
    assert list(tmp_path.iterdir()) == []
