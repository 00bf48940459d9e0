"""`stylepipe stylize`: apply a trained model (.pth or .onnx) to images.

Inputs are files, folders or glob patterns. Images are grouped by size so
that any mix of sizes batches correctly; each output keeps its input's size
(after ``--max-size`` / ``--scale``).

``--precision auto`` (the default) picks, for a ``.pth`` model:

- on a CPU that computes bf16 natively (AVX-512 BF16 or AMX): PyTorch with the
  network's weights in bf16 and channels_last tensors, about twice the images
  per second of eager float32 PyTorch at 512 px on a 2-core machine, results
  on average within about one level of 255 of float32's (a few pixels off by
  up to about eleven);
- on other CPUs: float32 in onnxruntime (the network is exported in memory
  first), the same results as PyTorch's;
- on CUDA/MPS: float32 in PyTorch.

``--precision fp32`` gives float32 results everywhere. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import glob
import io
import math
import os
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from stylepipe.data.images import ImageError, displayed_size, load_rgb_and_alpha, open_image
from stylepipe.datamodule import IMAGE_SUFFIXES
from stylepipe.io import atomic_path, check_writable

PRECISIONS = ("auto", "fp32", "bf16")
# what an --output image path may end with, and the format written; folders get {stem}.png
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
                  ".bmp": "BMP"}
SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}  # high quality, full-res colour
# formats that embed an ICC profile: an output keeps its input's, so its colours mean what the input's did
ICC_FORMATS = {"PNG", "JPEG", "WEBP", "TIFF"}
ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}  # an input's transparency is kept in these


@dataclass(frozen=True)
class Runner:
    """Maps a float [B, 3, H, W] batch in 0–255 to the stylized batch (float, on the CPU); says what runs it."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    engine: str  # "torch" or "onnxruntime"
    precision: str  # "fp32" or "bf16"
    device: torch.device
    note: str = ""  # why it runs elsewhere than asked

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.fn(batch)

    def __str__(self) -> str:
        return f"{self.engine} {self.precision} on {self.device}" + (f" ({self.note})" if self.note else "")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive: give a value of at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path,
                        help="trained model: .pth state_dict, .onnx, or a checkpoint (.ckpt) of `stylepipe train`")
    parser.add_argument("--output", type=Path, default=Path("stylized"),
                        help="output folder ({stem}.png per input), or, for a single input, an image path whose "
                             f"extension names the format ({', '.join(OUTPUT_FORMATS)}) (default: stylized)")
    parser.add_argument("--max-size", type=positive_int, help="shrink images whose long edge is larger than this")
    parser.add_argument("--scale", type=positive_float, help="resize every image by this factor (after --max-size)")
    parser.add_argument("--batch-size", type=positive_int, default=4,
                        help="images of the same size stylized at once (default 4)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="auto: CUDA, then MPS, then the CPU")
    parser.add_argument("--engine", default="auto", choices=["auto", "torch", "onnxruntime"],
                        help="auto: PyTorch for bf16 and on CUDA/MPS, onnxruntime for fp32 on a CPU")
    parser.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                        help="auto: bf16 on a CPU with native bf16 (AVX-512 BF16/AMX; about 2x faster, "
                             "on average within ~1/255 of fp32), fp32 elsewhere; fp32: float32 results everywhere")
    parser.add_argument("--preserve-color", action="store_true", help="keep the content's colours, transfer luminance only")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device available; use --device auto or cpu")
    if name == "mps" and not _mps_available():
        raise ValueError("--device mps: no Apple MPS device available (this PyTorch or machine has none); "
                         "use --device auto or cpu")
    return torch.device(name)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns → image paths, in order, without repeats.

    A folder's hidden files are left out, as a glob's ``*`` leaves them out: macOS
    writes a ``._name.jpg`` metadata file beside each image on other file systems.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found.append(path)
            continue
        if path.is_dir():
            candidates = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
        else:
            candidates = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
        matches = [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES]
        if not matches:
            raise FileNotFoundError(f"{item}: no images found ({_why_no_images(path, candidates)})")
        found.extend(matches)
    return list(dict.fromkeys(found))


def _why_no_images(path: Path, candidates: Sequence[Path]) -> str:
    if not candidates and path.is_dir():
        if any(p.is_dir() for p in path.iterdir()):
            return f"only subfolders; for the images inside them give a glob such as '{path / '**' / '*.jpg'}'"
        return "an empty folder"
    if not candidates:
        return "no such file or folder, and no file matches it as a glob"
    kinds = sorted({p.suffix.lower() or "no extension" for p in candidates})
    return (f"{len(candidates)} file(s), of kinds {', '.join(kinds[:8])}{', ...' if len(kinds) > 8 else ''}; "
            f"images are read from {', '.join(sorted(IMAGE_SUFFIXES))} files: convert the others "
            "(e.g. HEIC) to JPEG or PNG, or name a file to try it")


def target_size(size: tuple[int, int], max_size: int | None = None, scale: float | None = None) -> tuple[int, int]:
    """(width, height) after shrinking the long edge to ``max_size`` and multiplying by ``scale``."""
    w, h = size
    if (max_size is not None and max_size < 1) or (scale is not None and not scale > 0):
        raise ValueError(f"max_size={max_size}, scale={scale}: both must be positive (or None)")
    factor = 1.0
    if max_size and max(w, h) > max_size:
        factor = max_size / max(w, h)
    if scale:
        factor *= scale
    if factor == 1.0:
        return w, h
    return max(1, round(w * factor)), max(1, round(h * factor))


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX) rather than emulating it."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, name, None)  # private helpers: may be absent from a torch version
        try:
            if check is not None and check():
                return True
        except Exception:
            continue
    return False


def resolve_precision(precision: str, device: torch.device, engine: str = "auto", onnx_model: bool = False) -> str:
    """``auto`` → ``bf16`` where it pays (a .pth model in PyTorch on a native-bf16 CPU), else ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cpu" and engine != "onnxruntime" and not onnx_model and native_bf16_cpu():
        return "bf16"
    return "fp32"


def _torch_runner(net: torch.nn.Module, device: torch.device, precision: str) -> Runner:
    # bf16: weights themselves in bf16 (CPU autocast would re-cast them every call) and
    # channels_last, the layout oneDNN's bf16 convolutions use. fp32 stays plain NCHW,
    # CUDA included: on an H200 at 512 px, float32 NCHW did 157 images/s at batch 1
    # against 123 under bf16 autocast + channels_last and 135 with bf16 weights.
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    memory_format = torch.channels_last if precision == "bf16" else torch.contiguous_format
    net = net.to(device, dtype).to(memory_format=memory_format).eval()
    # on a CPU, one image at a time: at 512 px a batch of 4 ran about 30 % slower per
    # image (its activations outgrow the caches)
    one_by_one = device.type == "cpu"

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(device, non_blocking=True).to(dtype).contiguous(memory_format=memory_format)
        if one_by_one and len(x) > 1:
            return torch.cat([net(x[i : i + 1]).float() for i in range(len(x))])
        return net(x).float().cpu()

    return Runner(run, "torch", precision, device)


def _onnx_runner(model: bytes | str, device: torch.device) -> Runner:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    fix = "export it again with `stylepipe train --onnx`, or pass the .pth model"
    try:
        session = ort.InferenceSession(model, providers=providers)
    except Exception as err:  # onnxruntime's InvalidProtobuf, InvalidArgument, Fail, ...
        if isinstance(model, bytes):
            raise
        reason = str(err).rsplit(":", 1)[-1].strip() or type(err).__name__
        raise ValueError(f"{model}: not an ONNX model (corrupt or another kind of file: {reason}); {fix}") from err
    inputs = session.get_inputs()
    if [i.name for i in inputs] != ["input"] or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
        found = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise ValueError(f"{model}: an ONNX model, but not a TransformerNet export (inputs: {found}; "
                         f"expected one 'input' [batch, 3, height, width]); {fix}")

    # on a CPU, one image at a time, as the PyTorch runner: as fast per image at 512 px, and the
    # memory is one image's (about 1 GB per megapixel), not the batch's
    one_by_one = session.get_providers()[0] == "CPUExecutionProvider"
    note = ""
    if one_by_one and device.type != "cpu":  # a CPU-only onnxruntime, or its CUDA provider failed to load
        note = f"this onnxruntime cannot use {device.type}: pass the .pth model to run on {device.type}"
        device = torch.device("cpu")

    def run_batch(x: torch.Tensor) -> torch.Tensor:
        # the ONNX graph is TransformerNet.body: pad to a multiple of 4 and crop back, as forward() does
        h, w = x.shape[-2:]
        pad_h, pad_w = max(-h % 4, 8 - h), max(-w % 4, 8 - w)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if h > pad_h and w > pad_w else "replicate")
        out = session.run(None, {"input": np.ascontiguousarray(x.numpy())})[0]
        return torch.from_numpy(out)[..., :h, :w]

    def run(batch: torch.Tensor) -> torch.Tensor:
        x = batch.float()
        if one_by_one and len(x) > 1:
            return torch.cat([run_batch(x[i : i + 1]) for i in range(len(x))])
        return run_batch(x)

    return Runner(run, "onnxruntime", "fp32", device, note)


def load_runner(
    model: str | Path, device: str | torch.device = "auto", engine: str = "auto", precision: str = "auto"
) -> Runner:
    """The runner `stylepipe stylize` uses for ``model``: engine and precision resolved for the device."""
    model = Path(model)
    device = pick_device(device) if isinstance(device, str) else device
    if not model.is_file():
        raise FileNotFoundError(f"{model}: model not found; train it with `stylepipe train` (or `snakemake {model}`)")
    onnx_model = model.suffix.lower() == ".onnx"
    precision = resolve_precision(precision, device, engine, onnx_model)
    if precision == "bf16" and onnx_model:
        raise ValueError(f"{model}: an ONNX model runs in float32 (onnxruntime); for --precision bf16 "
                         f"pass the .pth model, or use --precision fp32")
    if precision == "bf16" and engine == "onnxruntime":
        raise ValueError(f"{model}: --precision bf16 runs in PyTorch, not --engine onnxruntime: "
                         "use --engine torch (or auto), or --precision fp32 for onnxruntime")
    if onnx_model:
        if engine == "torch":
            raise ValueError(f"{model}: an ONNX model runs with onnxruntime, not --engine torch")
        return _onnx_runner(str(model), device)
    from stylepipe.models.transformer import load_transformer

    net = load_transformer(model)
    if engine == "onnxruntime" or (engine == "auto" and device.type == "cpu" and precision == "fp32"):
        return _onnx_runner(_onnx_bytes(net), device)
    return _torch_runner(net, device, precision)


def _onnx_bytes(net: torch.nn.Module) -> bytes:
    from stylepipe.export import export_graph

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on constant folding and instance_norm
        export_graph(net, buffer)
    return buffer.getvalue()


def stylize_tensor(runner: Runner | torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Stylize a float [B, 3, H, W] batch in 0–255 → uint8 [B, 3, H, W]."""
    if isinstance(runner, torch.nn.Module):
        with torch.inference_mode():
            out = runner(batch.float())
    else:
        out = runner(batch)
    return out.float().clamp(0, 255).round().to(torch.uint8)


# BT.601 luma weights, those of YCbCr (JPEG's and the studio-range one alike) and of YUV
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def preserve_color(stylized: Image.Image, content: Image.Image) -> Image.Image:
    """The stylized luminance with the content's chrominance (YCbCr), rounded once.

    Replacing Y and keeping Cb and Cr adds the same luma difference to R, G and B.
    Pillow's own YCbCr round trip works in 8-bit integers: about one level of 255
    off on average, up to four.
    """
    rgb = np.asarray(content, dtype=np.float32)
    luma_difference = (np.asarray(stylized, dtype=np.float32) - rgb) @ LUMA
    return Image.fromarray(np.rint(np.clip(rgb + luma_difference[..., None], 0, 255)).astype(np.uint8))


def oriented_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after the EXIF orientation, without decoding the pixels.

    Raises ImageError for a file that is not an image (as ``load_rgb`` would).
    """
    with open_image(path) as img:
        return displayed_size(img)


def is_image_path(output: Path) -> bool:
    """Whether ``--output`` names an image file (an extension Pillow knows) rather than a folder."""
    suffix = output.suffix.lower()
    return bool(suffix) and not output.is_dir() and (suffix in OUTPUT_FORMATS or suffix in IMAGE_SUFFIXES
                                                     or suffix in Image.registered_extensions())


def output_format(path: Path) -> str:
    """The Pillow format written to ``path``: the one its extension names."""
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"--output {path}: cannot write {path.suffix} images; "
                         f"end the name with one of {', '.join(OUTPUT_FORMATS)}, or give a folder")
    return fmt


def output_paths(inputs: Sequence[Path], output: Path) -> list[Path]:
    """Where each input's result goes; refuses ambiguous or destructive combinations before any work."""
    if is_image_path(output):
        if len(inputs) != 1:
            raise ValueError(f"--output {output} names an image file, but {len(inputs)} images were given: "
                             "pass a folder as --output (each image becomes FOLDER/{stem}.png)")
        output_format(output)
        paths = [output]
    else:
        paths = [output / f"{p.stem}.png" for p in inputs]
    # names that differ only in case are one file on macOS's and Windows' file systems
    seen: dict[str, Path] = {}
    sources = {_same_file_key(p): p for p in inputs}
    for src, dst in zip(inputs, paths):
        key = str(dst).casefold()
        if key in seen:
            raise ValueError(f"{seen[key]} and {src} would both be written to {dst}: stylize them into separate "
                             "--output folders (one command each), or rename one of them")
        seen[key] = src
        if _same_file_key(dst) in sources:
            raise ValueError(f"{dst} is an input: writing its stylization there would replace it; "
                             "choose another --output")
    return paths


def _same_file_key(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def check_output_folders(folders: Iterable[Path]) -> None:
    """Write a scratch file into each output folder, so an unusable --output fails before any work.

    Folders created for the check are removed again (writing the images creates them).
    """
    for folder in dict.fromkeys(folders):
        created = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            check_writable(folder, "output")
        finally:
            for path in created:  # deepest first; rmdir removes empty folders only
                try:
                    path.rmdir()
                except OSError:
                    continue


class UnreadableImages(ValueError):
    """Some inputs could not be read; all the others were stylized and written."""

    def __init__(self, errors: Sequence[ImageError], written: Sequence[Path], total: int):
        listed = "; ".join(str(e) for e in errors[:10]) + (f"; and {len(errors) - 10} more" if len(errors) > 10 else "")
        super().__init__(f"{len(errors)} of {total} image(s) could not be read and were not stylized "
                         f"({len(written)} written): {listed}. Replace or remove them and run again")
        self.errors, self.written = list(errors), list(written)


@dataclass(frozen=True)
class Content:
    """An input at its target size: the RGB the network sees, and what its output keeps from the file."""

    rgb: Image.Image
    alpha: Image.Image | None  # transparency, "L"; None for an opaque image
    icc_profile: bytes | None  # what the RGB values mean (e.g. Display P3); None: sRGB


def _load_content(path: Path, size: tuple[int, int]) -> Content:
    rgb, alpha = load_rgb_and_alpha(path, for_size=size)
    profile = rgb.info.get("icc_profile")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        alpha = None if alpha is None else alpha.resize(size, Image.Resampling.LANCZOS)
    return Content(rgb, alpha, profile)


def save_output(stylized: Image.Image, content: Content, path: Path, fmt: str) -> None:
    """Write ``stylized`` atomically, with the input's transparency and colour profile where ``fmt`` holds them.

    JPEG and BMP have no transparency: there the output stays the stylization of
    the image composited on white, as the network saw it.
    """
    options = dict(SAVE_OPTIONS.get(fmt, {}))
    if content.icc_profile and fmt in ICC_FORMATS:
        options["icc_profile"] = content.icc_profile
    if content.alpha is not None and fmt in ALPHA_FORMATS:
        stylized = Image.merge("RGBA", (*stylized.split(), content.alpha))
    with atomic_path(path) as tmp:
        stylized.save(tmp, format=fmt, **options)


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is PyTorch's or onnxruntime's failure to allocate memory (CPU or GPU)."""
    if isinstance(err, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError), torch.cuda.OutOfMemoryError)):
        return True
    text = str(err)
    # PyTorch's CPU allocator, onnxruntime's arena (CPU and CUDA)
    return any(sign in text for sign in ("can't allocate memory", "Failed to allocate memory", "out of memory"))


class OutOfMemory(ValueError):
    """A batch of images is too large to stylize in the memory of its device."""

    def __init__(self, paths: Sequence[Path], size: tuple[int, int], runner: Runner | torch.nn.Module):
        where = f"{runner}" if isinstance(runner, Runner) else "PyTorch"
        names = ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        fix = f"stylize at a smaller size with --max-size (e.g. --max-size {max(1, max(size) // 2)})"
        if len(paths) > 1:
            fix = f"pass --batch-size 1, or {fix}"
        super().__init__(f"{names} ({size[0]}x{size[1]} px): out of memory stylizing in {where} "
                         f"(about 1 GB per megapixel in float32); {fix}")
        self.paths = list(paths)


def stylize_files(
    model: str | Path | Runner,
    inputs: Iterable[str | Path],
    output: str | Path,
    max_size: int | None = None,
    scale: float | None = None,
    batch_size: int = 4,
    device: str = "auto",
    preserve_colors: bool = False,
    engine: str = "auto",
    progress: bool = True,
    precision: str = "auto",
) -> list[Path]:
    """Stylize images into ``output``; returns the written paths (in input order).

    ``model`` is a model file, or a runner from `load_runner` (then ``device``,
    ``engine`` and ``precision`` are its own). Images that cannot be read are
    skipped; the others are written, then :class:`UnreadableImages` lists them.
    An image too large for the device's memory stops the run with :class:`OutOfMemory`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    paths = expand_inputs(inputs)
    outputs = output_paths(paths, Path(output))
    formats = [output_format(p) for p in outputs]
    runner = model if isinstance(model, Runner) else load_runner(model, device, engine, precision)
    # group by target size so every batch is one tensor; decode each image only when its batch runs
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    unreadable: dict[int, ImageError] = {}
    for i, path in enumerate(paths):
        try:
            groups[target_size(oriented_size(path), max_size, scale)].append(i)
        except ImageError as err:
            unreadable[i] = err
    with tqdm(total=len(paths), desc="stylize", unit="img", disable=not progress) as bar:
        bar.update(len(unreadable))
        for size, members in groups.items():
            for start in range(0, len(members), batch_size):
                chunk, contents = [], []
                for i in members[start : start + batch_size]:
                    try:
                        content = _load_content(paths[i], size)
                    except ImageError as err:  # truncated or corrupt data: only decoding finds out
                        unreadable[i] = err
                        bar.update(1)
                        continue
                    chunk.append(i)
                    contents.append(content)
                if not chunk:
                    continue
                batch = torch.stack([torch.from_numpy(np.asarray(c.rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
                                     for c in contents])
                try:
                    result = stylize_tensor(runner, batch.float())
                except Exception as err:
                    if not out_of_memory(err):
                        raise
                    raise OutOfMemory([paths[i] for i in chunk], size, runner) from err
                for i, content, out in zip(chunk, contents, result):
                    stylized = Image.fromarray(out.permute(1, 2, 0).numpy())
                    if preserve_colors:
                        stylized = preserve_color(stylized, content.rgb)
                    save_output(stylized, content, outputs[i], formats[i])
                bar.update(len(chunk))
    if unreadable:
        written = [p for i, p in enumerate(outputs) if i not in unreadable]
        raise UnreadableImages([unreadable[i] for i in sorted(unreadable)], written, len(paths))
    return outputs


def main(args: argparse.Namespace) -> int:
    # wrong inputs and outputs fail before the model loads
    inputs = expand_inputs(args.inputs)
    check_output_folders(p.parent for p in output_paths(inputs, args.output))
    runner = load_runner(args.model, args.device, args.engine, args.precision)
    print(f"stylepipe stylize: {args.model} runs in {runner}", file=sys.stderr)
    written = stylize_files(
        runner, inputs, args.output, args.max_size, args.scale, args.batch_size,
        preserve_colors=args.preserve_color,
    )
    print(f"stylized {len(written)} image(s) into {args.output} ({runner})")
    return 0
