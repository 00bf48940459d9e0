"""Whether a training run fits in the memory this process has left, checked before it starts.

Two things take memory in proportion to pixels. The style image's Gram matrices are
computed once, on the CPU whatever the accelerator, from VGG16's activations of the
whole style image (``train.style_size: null`` keeps a 24 MP scan at 24 MP). A training
step on the CPU keeps the activations of TransformerNet and VGG16 of every batch image
for the backward pass. On Linux an allocation beyond the memory left usually succeeds
and the kernel's OOM killer ends the process later without a word, so both are refused
here first, naming the params key to change and a value that fits. A GPU's allocator
fails cleanly instead: `stylepipe train` explains that error (``training_out_of_memory``).
`stylepipe evaluate` computes the Gram matrices again, in a job of its own, and checks them too.

Figures measured with `stylepipe train` (AMD EPYC, AVX2; peak resident memory and address
space, the latter for ``ulimit -v``): the style image 775-830 bytes/pixel (1-12 MP). A
float32 step takes, on top of what the process holds before ``fit``, 4,550-4,750 bytes per
batch pixel at 0.25-1 MP per image and up to 8,500 at 0.04 MP (buffers and threads weigh
more there: 680 MB at 128 px, 1.4 GB at 208 px, 4.8 GB at 512 px, batch 4); bf16 emulated
on a CPU without native bf16 up to 3.5 times that. In address space a step takes more, and
varies from run to run: glibc gives threads that allocate at once arenas of their own, 64 MB
of address space each (1.05 GB at 128 px, 1.40-1.49 GB at 176 px, 2.1 GB at 256 px, batch 4;
about 300 MB less with a single arena). A run is refused only if it cannot fit even at the
least; the value offered fits at the most, overhead included.
"""

from __future__ import annotations

import math

from stylepipe.memory import CGROUP_LIMIT, Available, available_memory, gigabytes, round_down

STYLE_BYTES_PER_PIXEL = (750, 850)  # (least, most)
# by precision kind; bf16 on a CPU that computes it natively, and bf16-true, were not measured:
# bf16 activations are half the size of float32's, so half float32's least is the least
STEP_BYTES_PER_PIXEL = {"fp32": (4000, 5000), "bf16 native": (2000, 5000), "bf16 emulated": (2000, 16000)}
STEP_OVERHEAD_BYTES = 1000 << 20  # at the most, besides the pixels' (malloc arenas included)
STYLE_OVERHEAD_BYTES = 300 << 20
STYLE_SIZE_MIN = 16  # the least train.style_size params.schema.yaml takes


def check_style_image(height: int, width: int, style_size: int | None, free: Available | None = None,
                      step: str = "train") -> None:
    """Refuse a style image whose Gram matrices need more memory than is left, offering a train.style_size that fits.

    ``step``: the pipeline step computing them (`train`, `evaluate`), whose job's memory is to raise."""
    free = free if free is not None else available_memory()
    pixels = height * width
    needed = STYLE_BYTES_PER_PIXEL[0] * pixels
    if free is None or needed <= free.bytes:
        return
    room = max(0, free.bytes - STYLE_OVERHEAD_BYTES) / STYLE_BYTES_PER_PIXEL[1]
    fits = round_down(max(height, width) * math.sqrt(room / pixels), 64)
    given = "null" if style_size is None else style_size
    smaller = (f"set train.style_size to {fits} or less (its long edge in px; a style may override it under "
               f"styles.<name>), or " if fits >= STYLE_SIZE_MIN else "")  # else no size params.yaml takes fits
    raise ValueError(
        f"the style image ({width}x{height} px, train.style_size = {given}) needs at least {gigabytes(needed)} "
        f"to compute its Gram matrices, and this process has {free}: {smaller}give the job more memory"
        f"{_job_memory_hint(free, step)}")


def step_precision(precision: str, native_bf16: bool) -> str:
    """The kind of arithmetic a CPU training step does under Lightning's ``precision``."""
    if precision in ("32", "32-true"):
        return "fp32"
    return "bf16 native" if native_bf16 else "bf16 emulated"


def check_training_step(batch_size: int, image_size: int, kind: str, processes: int, accumulate: int,
                        free: Available | None = None) -> None:
    """Refuse CPU training steps that need more memory than is left, with a train.batch_size or
    train.image_size that fits. ``processes``: the training processes on this machine, each with its own steps."""
    free = free if free is not None else available_memory()
    least, _ = STEP_BYTES_PER_PIXEL[kind]
    needed = processes * least * batch_size * image_size**2
    if free is None or needed <= free.bytes:
        return
    per = f", {processes} processes" if processes > 1 else ""
    fixes = []
    # the largest divisor of the batch that fits: accumulating then keeps the images per optimizer step exactly
    b = next((b for b in range(batch_size - 1, 0, -1)
              if batch_size % b == 0 and _step_fits(b, image_size, kind, processes, free)), None)
    if b is not None:
        fixes.append(f"set train.batch_size to {b} (with train.accumulate_grad_batches = "
                     f"{accumulate * batch_size // b} for the same images per optimizer step; or for one "
                     "style, under styles.<name>)")
    sizes = range((image_size - 1) // 16 * 16, 15, -16)  # multiples of 16 below image_size
    size = next((s for s in sizes if _step_fits(batch_size, s, kind, processes, free)), None)
    if size is not None:
        fixes.append(f"set train.image_size to {size}")
    fixes.append(f"give the job more memory{_job_memory_hint(free, 'train')}")
    raise ValueError(
        f"train.batch_size = {batch_size} images of train.image_size = {image_size} px need at least "
        f"{gigabytes(needed)} per training step on the CPU ({kind}{per}), and this process has {free}: "
        f"{', or '.join(fixes)}; nothing was trained")


def _step_fits(batch_size: int, image_size: int, kind: str, processes: int, free: Available) -> bool:
    _, most = STEP_BYTES_PER_PIXEL[kind]
    per_process = STEP_OVERHEAD_BYTES + most * batch_size * image_size**2
    return processes * per_process <= free.bytes


def _job_memory_hint(free: Available, step: str) -> str:
    # under Slurm the job's cgroup is what resources.<step>.mem_mb sets
    return f" (resources.{step}.mem_mb)" if free.limit == CGROUP_LIMIT else ""
