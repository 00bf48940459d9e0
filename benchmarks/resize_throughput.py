"""`stylepipe resize` throughput against the naive Pillow path, same images, same run.

Images: generated COCO-like JPEGs (640x480, quality 90, photo-like content)
in a temporary folder. Reference: what most training scripts do per image
(open, convert to RGB, antialiased bilinear resize of the short side to N,
centre crop), as torchvision's Resize + CenterCrop in pytorch/examples does.
Both run in this one process with one torch thread and are timed in CPU
seconds (images/s per core), and their outputs compared pixel by pixel; then
the 1-worker vs 2-worker scaling of the real command in wall-clock time.

    python benchmarks/resize_throughput.py
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

from stylepipe.data.resize import list_files, resize_file, resize_folder

SIZE = 256
IMAGES = 300
WIDTH, HEIGHT = 640, 480


def make_images(folder: Path, count: int) -> None:
    """Photo-like JPEGs: smooth gradients, edges and sensor noise (JPEG size ~ COCO's)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    for i in range(count):
        img = np.empty((HEIGHT, WIDTH, 3), np.float32)
        for c in range(3):
            fx, fy, ph = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] = 128 + 80 * np.sin(x * fx + y * fy + ph)
        cx, cy, r = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(40, 200)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] *= 0.5
        img += rng.normal(0, 8, img.shape).astype(np.float32)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def naive(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)))


def rates(fns, paths: list[Path], repeats: int = 3) -> list[float]:
    """Best-of-N images per CPU-second of each function (process CPU time, so
    other processes on a shared machine do not count), runs interleaved."""
    best = [0.0] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.process_time()
            for p in paths:
                fn(p, SIZE)
            best[k] = max(best[k], len(paths) / (time.process_time() - start))
    return best


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "images"
        src.mkdir()
        make_images(src, IMAGES)
        paths = [src / rel for rel in list_files(src)]
        mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        for p in paths[:20]:  # warm the page cache and the code paths
            naive(p, SIZE), resize_file(p, SIZE)

        ref, ours = rates([naive, resize_file], paths)
        # same quality: ours against the reference's pixels (crop-then-resize vs resize-then-crop)
        diff = np.mean(
            [np.abs(naive(p, SIZE).transpose(2, 0, 1) - resize_file(p, SIZE).astype(np.int16)).mean() for p in paths]
        )

        timings = {}
        for workers in (1, 2):
            start = time.perf_counter()
            resize_folder(src, tmp / f"out{workers}", SIZE, workers=workers, progress=False)
            timings[workers] = IMAGES / (time.perf_counter() - start)
        same = all(
            (tmp / "out1" / f).read_bytes() == (tmp / "out2" / f).read_bytes()
            for f in os.listdir(tmp / "out1")
        )

    print(f"{IMAGES} JPEGs {WIDTH}x{HEIGHT} q90 (mean {mean_kb:.0f} KiB) -> {SIZE}x{SIZE}; {os.cpu_count()} cpu cores visible")
    print(f"reference naive Pillow (open, RGB, bilinear resize, crop): {ref:,.0f} images/s per core")
    print(f"stylepipe resize_file:                                    {ours:,.0f} images/s per core")
    print(f"mean absolute difference from the reference's pixels: {diff:.2f} (of 255)")
    print(
        f"stylepipe resize command, wall clock (incl. shard writing, pool start): 1 worker {timings[1]:,.0f} images/s, "
        f"2 workers {timings[2]:,.0f} images/s, scaling {timings[2] / timings[1]:.2f}x; outputs identical: {same}"
    )
    print(f"speedup_vs_reference: {ours / ref:.2f}")


if __name__ == "__main__":
    # no options: --help describes the run instead of starting it
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()
