"""Shard reader throughput: images/s per core to uint8 tensors at 256 px.

Reference: what a folder of already-resized JPEGs costs per image (open,
decode, convert to a tensor), the way torchvision's ImageFolder feeds
pytorch/examples. Both sides read the same images in the same random order
in one process, timed in CPU seconds (per core), so the ratio does not
depend on the machine or on other processes. The shards
were just written, so they are in the page cache (as after the first epoch).

    python benchmarks/shard_reader.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylepipe.data.shards import ShardReader, ShardWriter

SIZE = 256
IMAGES = 2000
READS = 20000
REFERENCE_READS = 1000


def _photo_like(rng: np.random.Generator) -> np.ndarray:
    # smooth colour fields plus noise: compresses like a photo, not like noise
    x = np.mgrid[0:SIZE, 0:SIZE][1] / SIZE
    base = np.stack([np.sin(x * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)])
    base = 128 + 90 * base + rng.normal(0, 12, size=(3, SIZE, SIZE))
    return np.clip(base, 0, 255).astype(np.uint8)


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        writer = ShardWriter(tmp / "shards", SIZE, per_shard=700)
        jpeg_dir = tmp / "jpeg"
        jpeg_dir.mkdir()
        pool = [_photo_like(rng) for _ in range(16)]
        for i in range(IMAGES):
            img = pool[i % len(pool)]
            writer.add(img, f"{i}.jpg")
            if i < REFERENCE_READS:
                Image.fromarray(img.transpose(1, 2, 0)).save(jpeg_dir / f"{i}.jpg", quality=90)
        writer.close()
        reader = ShardReader(tmp / "shards")

        order = rng.integers(0, IMAGES, size=READS)
        reader[0]  # open the maps outside the timing
        start = time.process_time()
        for i in order:
            t = reader[int(i)]
        shard_rate = READS / (time.process_time() - start)
        assert t.shape == (3, SIZE, SIZE) and t.dtype == torch.uint8

        ref_order = rng.integers(0, REFERENCE_READS, size=REFERENCE_READS)
        start = time.process_time()
        for i in ref_order:
            with Image.open(jpeg_dir / f"{i}.jpg") as im:
                arr = np.array(im.convert("RGB"))
            t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        ref_rate = REFERENCE_READS / (time.process_time() - start)

    print(f"cpu cores visible: {os.cpu_count()}, one process, torch threads 1")
    print(f"reference (decode {SIZE}px JPEG files -> tensor): {ref_rate:,.0f} images/s per core")
    print(f"ShardReader (memory-mapped shards -> tensor):    {shard_rate:,.0f} images/s per core")
    print(f"speedup_vs_reference: {shard_rate / ref_rate:.2f}")


if __name__ == "__main__":
    # no options: --help describes the run instead of starting it
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()
