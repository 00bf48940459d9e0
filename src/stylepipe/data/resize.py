"""`stylepipe resize`: a folder or zip of images → square N×N shards + manifest.

Every image becomes short side N (antialiased bilinear, torchvision's
``Resize`` default that pytorch/examples trains with) and a centre crop N×N.
Unreadable files are skipped and listed with the reason, never fatal.

Speed, without losing quality:
- JPEGs at least 4N on their short side are decoded at 1/2, 1/4 or 1/8 scale
  in the DCT domain (``Image.draft``), never below 2N, so the final resize
  still has real pixels to average;
- other JPEGs are decoded straight into a tensor (``torchvision.io``), skipping
  Pillow's copies; a file with a plain header (:func:`jpeg_frame`) is read
  once into a buffer the decoder uses in place, and is not opened by Pillow;
- only the centre square is resampled, with PyTorch's vectorised uint8
  antialiased kernel (fed a packed channels-last copy, which it reads
  faster than a strided view), height first, then laid out channels-first
  for the shards.

Inputs are processed in sorted order and written by one process, so the
output is byte-identical whatever ``--workers`` is. A zip input (COCO's
``train2014.zip`` as downloaded) is read in place: one large file for the
workflow tools to check instead of 80,000 small ones; each worker opens it
once and decodes its members from memory.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import warnings
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stylepipe.arguments import positive_int
from stylepipe.data.images import (ImageError, decode, is_jpeg, jpeg_frame, open_image, pixel_limit, to_rgb,
                                   upright, xmp_orientation)
from stylepipe.data.shards import MANIFEST, ShardWriter, atomic_directory
from stylepipe.forking import blocked, unblock

RESAMPLE = "bilinear, antialiased (torch.nn.functional.interpolate), short side to N then centre crop N x N"


def list_files(folder: str | Path) -> list[str]:
    """Every file under ``folder`` (recursively), relative POSIX paths, sorted.

    Hidden files and folders (``.snakemake_timestamp``, ``.DS_Store``, ``.git``)
    are not inputs and are ignored silently. Links to folders are followed
    (``photos/coco -> /data/coco``); a folder reached a second time (a link
    back up the tree, two links to one folder) is read once.
    """
    folder = Path(folder)
    found = []
    seen = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # sorted: which of two links is read is fixed
        rel_root = Path(root).relative_to(folder)
        found.extend((rel_root / f).as_posix() for f in files if not f.startswith("."))
    return sorted(found)


def list_members(archive: str | Path) -> list[str]:
    """Every file member of the zip ``archive``, sorted; folders and hidden entries
    (``.snakemake_timestamp``, ``__MACOSX/`` resource forks) are not inputs."""
    with zipfile.ZipFile(archive) as zf:
        names = {info.filename for info in zf.infolist() if not info.is_dir()}
    return sorted(n for n in names if not any(p.startswith(".") or p == "__MACOSX" for p in n.split("/")))


_ZIPS: dict[str, zipfile.ZipFile] = {}


def _zip_member(archive: str, name: str) -> bytes:
    """A member's bytes; the zip is opened once per process (workers fork without it)."""
    zf = _ZIPS.get(archive)
    if zf is None:
        zf = _ZIPS[archive] = zipfile.ZipFile(archive)
    return zf.read(name)


def _close_zips() -> None:
    while _ZIPS:
        _ZIPS.popitem()[1].close()


def _crop_resize(chw: torch.Tensor, size: int) -> np.ndarray:
    """Centre square of a uint8 [3, H, W] tensor, resampled to [3, size, size]."""
    _, height, width = chw.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    # batch axis added on the pixel layout: chw[None] gets a stride that makes
    # interpolate treat a channels-last crop as channels-first (twice as slow)
    square = chw.permute(1, 2, 0)[None, top : top + side, left : left + side].permute(0, 3, 1, 2)
    if side != size:
        # the uint8 kernel works on packed pixels: a strided crop costs more than this copy
        square = square.contiguous(memory_format=torch.channels_last)
        # height first, then width: the width pass (the dearer one per pixel) then
        # runs on `size` rows instead of `side`; a single call does width first
        for shape in ((size, side), (size, size)):
            square = F.interpolate(square, size=shape, mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(square[0].numpy())


def _jpeg_decoder():
    """torchvision's libjpeg-turbo decoder (straight into a tensor), or None.

    torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec;
    the version is pinned, and without it the Pillow path below takes over.
    """
    global _DECODE_JPEG
    if _DECODE_JPEG is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from torchvision.io import ImageReadMode, decode_jpeg

            rgb = ImageReadMode.RGB
            op = getattr(torch.ops.image, "decode_jpeg", None)
            if op is not None:
                # the registered op that decode_jpeg calls for one CPU tensor; the
                # wrapper only adds a deprecation warning per call (~2 % of a decode)
                def _decode(data: torch.Tensor) -> torch.Tensor:
                    return op(data, rgb.value, True)
            else:
                def _decode(data: torch.Tensor) -> torch.Tensor:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeprecationWarning)  # warned on every call
                        return decode_jpeg(data, mode=rgb, apply_exif_orientation=True)

            _DECODE_JPEG = _decode
        except ImportError:
            _DECODE_JPEG = False
    return _DECODE_JPEG or None


_DECODE_JPEG = None


def _decode_jpeg_tensor(path: Path, decoder, data: bytes | bytearray | None = None) -> torch.Tensor:
    if not isinstance(data, bytearray):  # the decoder wants a writable buffer
        data = bytearray(path.read_bytes() if data is None else data)
    try:
        return decoder(torch.frombuffer(data, dtype=torch.uint8))
    except RuntimeError as err:
        text = str(err).rsplit(",", 1)[-1].strip() or "decoder error"
        reason = "truncated image" if "truncated" in text or "incomplete" in text else "corrupt image data"
        raise ImageError(path, f"{reason}: {text}") from err


# Files above this are not read whole up front (a large TIFF or PNG is opened
# lazily by Pillow); the JPEGs the direct path takes are far smaller.
_DIRECT_MAX_BYTES = 32 << 20


def _direct_jpeg(path: Path, size: int, max_pixels: int | None, data: bytes | None) -> bytearray | None:
    """The bytes of a JPEG that goes straight to the tensor decoder, or None.

    Only a plain header (:func:`jpeg_frame`) for an image within the pixel
    limit and below the draft size qualifies: exactly the files the Pillow
    path below would also hand to that decoder, minus Pillow's header parse
    and the second read of the file.
    """
    if data is None:
        try:
            with open(path, "rb", buffering=0) as f:
                length = os.fstat(f.fileno()).st_size
                if not 0 < length <= _DIRECT_MAX_BYTES:
                    return None
                buffer = bytearray(length)
                if f.readinto(buffer) != length:
                    return None
        except OSError:
            return None  # open_image says why
    else:
        buffer = data
    frame = jpeg_frame(buffer)
    if frame is None:
        return None
    width, height, _ = frame
    if min(width, height) >= 4 * size or width * height > pixel_limit(max_pixels):
        return None
    return buffer if isinstance(buffer, bytearray) else bytearray(buffer)


def resize_file(
    path: str | Path, size: int, *, max_pixels: int | None = None, data: bytes | None = None
) -> np.ndarray:
    """One image file (or its bytes ``data``, named ``path``) → uint8 array [3, size, size].

    Raises ImageError if unusable.
    """
    path = Path(path)
    decoder = _jpeg_decoder()
    if decoder is not None and (buffer := _direct_jpeg(path, size, max_pixels, data)) is not None:
        return _crop_resize(_decode_jpeg_tensor(path, decoder, buffer), size)
    image = open_image(path, max_pixels=max_pixels, data=data)
    try:
        short = min(image.size)
        if is_jpeg(image):
            if short >= 4 * size:
                # DCT-domain downscale by 2, 4 or 8; keeps the short side >= 2 * size
                image.draft(None, (2 * size, 2 * size))
            elif image.format == "JPEG" and image.mode in ("RGB", "L") and decoder is not None \
                    and not xmp_orientation(image):
                image.close()
                return _crop_resize(_decode_jpeg_tensor(path, decoder, data), size)
        decode(image, path)
        rgb = np.asarray(to_rgb(upright(image)))
    finally:
        image.close()
    with warnings.catch_warnings():
        # Pillow's buffer is read-only; it is only read, never written
        warnings.simplefilter("ignore", UserWarning)
        chw = torch.from_numpy(rgb).permute(2, 0, 1)
    return _crop_resize(chw, size)


def _work(job: tuple[str, bool, str, int, int | None]) -> tuple[str, bytes | None, str | None]:
    source, is_zip, rel, size, max_pixels = job
    try:
        if is_zip:
            try:
                data = _zip_member(source, rel)
            except (RuntimeError, NotImplementedError) as err:  # encrypted, or a compression zipfile lacks
                return rel, None, f"unreadable zip member: {err}"
            return rel, resize_file(rel, size, max_pixels=max_pixels, data=data).tobytes(), None
        return rel, resize_file(Path(source) / rel, size, max_pixels=max_pixels).tobytes(), None
    except ImageError as err:
        return rel, None, err.reason
    except MemoryError:
        return rel, None, "out of memory while decoding (image too large?)"
    except (zipfile.BadZipFile, zlib.error) as err:  # the member's bytes fail their CRC or inflate
        return rel, None, f"damaged zip member: {err}"


def _init_worker() -> None:
    torch.set_num_threads(1)
    # ^C reaches every process of the terminal's group: the parent stops the pool, the workers say nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM (`scancel`'s, to every process of the job) ends a worker at once, not as the command does;
    # the executor sees it gone and stops the others
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    unblock(_STOP_SIGNALS)  # blocked while the executor forked this worker


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def resize_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    size: int,
    *,
    workers: int = 1,
    per_shard: int | None = None,
    max_pixels: int | None = None,
    progress: bool = True,
) -> dict:
    """Resize every image under the folder ``input_dir``, or in the zip file
    ``input_dir``, into shards in ``output_dir``; return the manifest."""
    input_dir = Path(input_dir)
    if not input_dir.exists():
        raise FileNotFoundError(f"{input_dir}: input does not exist (run `stylepipe fetch content` first)")
    is_zip = not input_dir.is_dir()
    if is_zip and not zipfile.is_zipfile(input_dir):
        raise ValueError(f"{input_dir}: not a zip file; give a folder of images or a zip of them "
                         f"(`stylepipe fetch content` writes one)")
    if size < 1:
        raise ValueError(f"--size must be positive, got {size}")
    output_dir = Path(output_dir)
    if output_dir.resolve() in (input_dir.resolve(), *input_dir.resolve().parents):
        raise ValueError(f"{output_dir}: the output would replace the input {input_dir}; give another folder")

    target = atomic_directory(output_dir, ours=lambda path: (path / MANIFEST).is_file(), what="resized set")
    target.check()  # before any work: refuse to replace what `resize` did not write
    try:
        files = list_members(input_dir) if is_zip else list_files(input_dir)
        if not is_zip and output_dir.resolve().is_relative_to(input_dir.resolve()):
            # an output inside the input folder: a rerun does not take the shards of the last run for input
            inside = output_dir.resolve().relative_to(input_dir.resolve()).parts
            files = [f for f in files if Path(f).parts[:len(inside)] != inside]
    except zipfile.BadZipFile as err:
        raise ValueError(f"{input_dir}: damaged zip file ({err}); fetch it again") from err
    jobs = [(str(input_dir), is_zip, rel, size, max_pixels) for rel in files]
    skipped: list[dict] = []
    bar = tqdm(total=len(jobs), desc=f"resize to {size}px", unit="img", disable=not progress, dynamic_ncols=True)
    threads = torch.get_num_threads()
    pool = None
    try:
        if workers > 1 and len(jobs) > 1:
            # fork where available (as DataLoader does): workers start at once
            # with torch already imported; elsewhere the platform default
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            # concurrent.futures, not multiprocessing.Pool: a worker that dies (the out-of-memory killer,
            # a SIGTERM to the job's processes) breaks the executor, where a Pool waits for it forever
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
            with blocked(_STOP_SIGNALS):  # the executor forks its workers at the first submit
                results = pool.map(_work, jobs, chunksize=max(1, min(16, len(jobs) // (workers * 8))))
        else:
            torch.set_num_threads(1)  # same kernels, same bytes as the workers
            results = map(_work, jobs)
        with target as tmp:
            writer = ShardWriter(tmp, size, per_shard)
            with writer:
                for rel, data, reason in results:
                    if data is None:
                        skipped.append({"file": rel, "reason": reason})
                        bar.set_postfix(skipped=len(skipped))
                    else:
                        writer.add(np.frombuffer(data, dtype=np.uint8).reshape(3, size, size), rel)
                    bar.update()
                if not writer.images:
                    reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5])
                    raise ValueError(f"{input_dir}: none of {len(files)} files is a usable image ({reasons})")
                manifest = writer.close(
                    skipped=skipped,
                    input_count=len(files),
                    skipped_count=len(skipped),
                    resample=RESAMPLE,
                )
    except BrokenProcessPool as err:
        raise ChildProcessError(
            f"{input_dir}: a worker process ended before its images were done (killed, perhaps for want of "
            f"memory: dmesg says); nothing was written to {output_dir}; run again, with fewer --workers if "
            f"memory is short") from err
    finally:
        bar.close()
        torch.set_num_threads(threads)
        if pool is not None:
            # on an error or a signal the queued images are dropped: the workers end after those handed to them
            pool.shutdown(wait=True, cancel_futures=True)
        _close_zips()
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=Path, help="folder of images (searched recursively) or a zip of them")
    parser.add_argument("--output", required=True, type=Path, help="output folder: shard-*.npy + manifest.json")
    parser.add_argument("--size", type=positive_int, help="side N of the square N x N images")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes decoding in parallel (default 1; the output is the same for any count)")
    parser.add_argument(
        "--params", nargs="+", type=Path, metavar="FILE",
        help="the pipeline's params files instead of --size: validated first (no hours of resizing on a value "
        "that training would refuse), N from train.image_size, and unless --workers is given, "
        "resources.resize.cpus_per_task workers (at most the CPUs this process may use)",
    )
    parser.add_argument(
        "--images-per-shard", type=positive_int, default=None,
        help="images per shard file (default: about 1 GiB per shard)"
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=None,
        help="refuse larger images as decompression bombs (default: Pillow's 89,478,485, "
        "or $STYLEPIPE_MAX_IMAGE_PIXELS)",
    )


def size_and_workers(args: argparse.Namespace) -> tuple[int, int]:
    """The image size and worker count from the options, or from the params files (``--params``)."""
    if args.params is None:
        if args.size is None:
            raise ValueError("give --size N, or --params params.yaml to take N from train.image_size")
        return args.size, args.workers or 1
    if args.size is not None:
        raise ValueError("give --size or --params, not both: with --params the size is train.image_size")
    from stylepipe.config import load_params

    params = load_params(args.params)
    if args.workers is not None:
        return params["train"]["image_size"], args.workers
    wanted = params.get("resources", {}).get("resize", {}).get("cpus_per_task", 1)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return params["train"]["image_size"], max(1, min(wanted, usable))


def main(args: argparse.Namespace) -> int:
    try:
        size, workers = size_and_workers(args)
        manifest = resize_folder(
            args.input,
            args.output,
            size,
            workers=workers,
            per_shard=args.images_per_shard,
            max_pixels=args.max_pixels,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"stylepipe resize: error: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.output}: {manifest['count']} images of {size}x{size} in "
        f"{len(manifest['shards'])} shard(s); {manifest['skipped_count']} skipped"
    )
    for item in manifest["skipped"][:20]:
        print(f"  skipped {item['file']}: {item['reason']}")
    if manifest["skipped_count"] > 20:
        print(f"  ... {manifest['skipped_count'] - 20} more in {args.output / 'manifest.json'}")
    return 0
