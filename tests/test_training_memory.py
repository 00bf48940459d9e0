"""The up-front memory check of `stylepipe train`: what it refuses and the values it offers (the real
refusals under ``ulimit -v``, and training at the offered value, are in test_cli_errors.py)."""

from __future__ import annotations

import pytest

from stylepipe.memory import Available
from stylepipe.training_memory import check_style_image, check_training_step, step_precision

GB = 10**9


def test_a_step_that_fits_at_the_least_is_not_refused():
    # 4 x 256 px needs at least 1.05 GB in float32: 1.1 GB left is not refused, although it may not be enough
    check_training_step(4, 256, "fp32", 1, 1, Available(int(1.1 * GB), "the machine's available memory"))


def test_a_smaller_batch_that_divides_the_batch_is_offered_with_the_accumulation_that_keeps_the_step():
    with pytest.raises(ValueError) as err:
        check_training_step(8, 512, "fp32", 1, 2, Available(int(6.5 * GB), "the cgroup's memory limit"))
    message = str(err.value)
    assert message.startswith("train.batch_size = 8 images of train.image_size = 512 px need at least 8.4 GB per "
                              "training step on the CPU (fp32), and this process has 6.5 GB free under the cgroup's "
                              "memory limit: ")
    # 4 images need at most 1.0 + 5.2 GB; 8 x 2 = 4 x 4 images per optimizer step
    assert ("set train.batch_size to 4 (with train.accumulate_grad_batches = 4 for the same images per "
            "optimizer step; or for one style, under styles.<name>)") in message
    assert "or set train.image_size to 368, or give" in message  # one size for every style: the shards'
    # under Slurm the job's cgroup limit is what resources.train.mem_mb asks for
    assert message.endswith("or give the job more memory (resources.train.mem_mb); nothing was trained")


def test_every_process_on_the_machine_counts_and_bf16_emulation_takes_more():
    free = Available(8 * GB, "the machine's available memory")
    check_training_step(4, 512, "fp32", 1, 1, free)
    with pytest.raises(ValueError, match=r"8\.4 GB per training step on the CPU \(fp32, 2 processes\)"):
        check_training_step(4, 512, "fp32", 2, 1, free)
    with pytest.raises(ValueError) as err:
        check_training_step(4, 512, "bf16 emulated", 1, 1, Available(2 * GB, "the machine's available memory"))
    # at the most 16 kB per pixel: a smaller size than float32 would get
    message = str(err.value)
    assert "need at least 2.1 GB" in message and "set train.image_size to 112," in message
    assert "resources.train.mem_mb" not in message  # not a cgroup's limit


def test_the_precision_names_the_arithmetic_of_a_cpu_step():
    assert step_precision("32-true", True) == step_precision("32", False) == "fp32"
    assert step_precision("bf16-mixed", True) == "bf16 native"
    assert step_precision("16-mixed", False) == step_precision("bf16-true", False) == "bf16 emulated"


def test_a_style_image_is_refused_with_the_style_size_that_fits():
    check_style_image(3000, 4000, None, Available(10 * GB, "the machine's available memory"))  # 9 GB at the least
    with pytest.raises(ValueError) as err:
        check_style_image(3000, 4000, 4000, Available(4 * GB, "the cgroup's memory limit"))
    message = str(err.value)
    assert message.startswith("the style image (4000x3000 px, train.style_size = 4000) needs at least 9.0 GB to "
                              "compute its Gram matrices, and this process has 4.0 GB free under the cgroup's "
                              "memory limit: ")
    # (4 GB - 300 MiB) / 850 bytes = 4.34 MP at 4:3: a long edge of 2405, in steps of 64
    assert "set train.style_size to 2368 or less" in message
    assert message.endswith("or give the job more memory (resources.train.mem_mb)")
    # with no room at all, no train.style_size fits that params.yaml would take (its least is 16)
    with pytest.raises(ValueError) as err:
        check_style_image(3000, 4000, None, Available(200 << 20, "the machine's available memory"))
    assert "style_size to" not in str(err.value) and ": give the job more memory" in str(err.value)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_a_step_out_of_memory_offers_a_smaller_batch_only_where_there_is_one(batch_size):
    from types import SimpleNamespace

    import torch

    from stylepipe.train import training_out_of_memory

    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), global_step=7)
    tp = {"batch_size": batch_size, "image_size": 512, "precision": "32-true", "accumulate_grad_batches": 1}
    message = str(training_out_of_memory(tp, trainer, "kept"))
    assert message.startswith(f"out of memory training at step 7 on cpu, train.batch_size = {batch_size} images")
    assert ("lower train.batch_size" in message) == (batch_size > 1)
    assert "lower train.image_size" in message and message.endswith("; kept")
