"""`stylepipe stylize`: apply a trained model (.pth, .onnx or a `stylepipe train` .ckpt) to images.

Inputs are files, folders or glob patterns. Images are grouped by size so
that any mix of sizes batches correctly; each output keeps its input's size
(after ``--max-size`` / ``--scale``). ``--precision auto`` (the default) runs
a .pth model in bf16 on a CPU that computes bf16 natively and in float32
elsewhere; ``--precision fp32`` gives float32 results everywhere (see
``runners`` and benchmarks/README.md).

This module is the command, and the Python API: `stylize_files`,
`load_runner` and `stylize_tensor`. The parts are ``inputs`` (which images, at
what size, decoded), ``outputs`` (where the results go, in what format, written
atomically), ``runners`` (device, precision, PyTorch or onnxruntime),
``colour`` (``--preserve-color``) and ``batches`` (the loop that loads,
stylizes and saves batch by batch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stylepipe.arguments import positive_float, positive_int
from stylepipe.stylize.batches import OutOfMemory, TooLargeForMemory, UnreadableImages, stylize_files
from stylepipe.stylize.inputs import expand_inputs
from stylepipe.stylize.outputs import OUTPUT_FORMATS, check_output_folders, output_paths
from stylepipe.stylize.runners import PRECISIONS, Runner, load_runner, stylize_tensor

__all__ = ["OutOfMemory", "Runner", "TooLargeForMemory", "UnreadableImages", "add_arguments", "load_runner", "main",
           "stylize_files", "stylize_tensor"]


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
