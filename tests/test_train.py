"""`stylepipe train`: real Lightning runs on tiny data, reproducibility and resume after a signal."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import file_size_limit, tiny_params_dict
from stylepipe import cli
from stylepipe.datamodule import ResumableSampler
from stylepipe.export import check_onnx
from stylepipe.models.transformer import TransformerNet, load_transformer
from stylepipe.models.vgg import random_state_dict

STYLEPIPE = Path(sys.executable).with_name("stylepipe")
SAMPLES = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
           "retina", "camera", "coins", "horse"]
MAX_STEPS = 8  # 8 training images, batch 2: 4 batches an epoch, so runs cross an epoch boundary


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import skimage.data

    root = tmp_path_factory.mktemp("train")
    content = root / "content"
    content.mkdir()
    for name in SAMPLES:
        image = getattr(skimage.data, name)()
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        Image.fromarray(image[..., :3]).resize((64, 48)).save(content / f"{name}.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(root / "style.png")
    params = tiny_params_dict()
    torch.save(random_state_dict(params["seed"]), root / "vgg16_features.pth")
    params["train"].update(max_steps=MAX_STEPS, checkpoint_every_n_steps=2, val_check_interval=3, log_every_n_steps=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def command(root: Path, run: str) -> list[str]:
    out = root / run
    return [
        str(STYLEPIPE), "train", "--params", str(root / "params.yaml"), "--style", "waves",
        "--data", str(root / "content"), "--style-image", str(root / "style.png"),
        "--loss-network", str(root / "vgg16_features.pth"), "--model", str(out / "waves.pth"),
        "--onnx", str(out / "waves.onnx"), "--checkpoint", str(out / "waves.ckpt"),
        "--summary", str(out / "summary.json"), "--curves", str(out / "curves.csv"),
        "--val-curves", str(out / "val_curves.csv"), "--scratch", str(out / "scratch"),
    ]


def variant(root: Path, run: str, **train_values) -> list[str]:
    """The command of run ``run`` with ``train_values`` over the setup's params."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(train_values)
    path = root / f"{run}.yaml"
    path.write_text(yaml.safe_dump(params))
    cmd = command(root, run)
    cmd[cmd.index(str(root / "params.yaml"))] = str(path)
    return cmd


def train(root: Path, run: str, cmd: list[str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd or command(root, run), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def train_interrupted(root: Path, run: str, signum: int, cmd: list[str] | None = None,
                      after: str = "last.ckpt") -> subprocess.CompletedProcess:
    """Start a run, send ``signum`` as soon as the checkpoint ``after`` exists, let it stop; return that process."""
    scratch = root / run / "scratch"
    proc = subprocess.Popen(cmd or command(root, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (scratch / after).exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no {after} appeared"
        time.sleep(0.005)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def tensorboard(run: Path) -> dict[str, list[tuple[int, float | None]]]:
    """(step, value) of every TensorBoard scalar and image tag a run logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged: dict[str, list] = {}
    for path in sorted((run / "scratch" / "tensorboard").glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            logged.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
        for tag in events.Tags()["images"]:
            logged.setdefault(tag, []).extend((e.step, None) for e in events.Images(tag))
    return logged


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ in {different[:5]}"


@pytest.fixture(scope="module")
def uninterrupted(setup):
    train(setup, "a")
    return setup / "a"


def test_outputs(uninterrupted):
    out = uninterrupted
    net = load_transformer(out / "waves.pth")
    ref = TransformerNet()
    ref.load_state_dict(weights(out / "waves.pth"), strict=True)  # a plain TransformerNet state_dict
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in weights(out / "waves.pth").values())
    assert check_onnx(net, out / "waves.onnx") < 0.05  # ONNX parity with onnxruntime

    ckpt = torch.load(out / "waves.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == MAX_STEPS
    # the same bytes wherever it ran: ModelCheckpoint's paths are relative
    [saver] = [state for key, state in ckpt["callbacks"].items() if key.startswith("ModelCheckpoint{")]
    assert saver["dirpath"] == str(Path(os.path.relpath(out / "scratch")))
    assert not Path(saver["last_model_path"]).is_absolute()
    # the callbacks' states under the names checkpoints have always had (older ones resume whole),
    # without the wall time, which differs between equal runs
    assert "wall_time" not in ckpt["callbacks"]["_callbacks.<locals>.Curves"]
    assert ckpt["callbacks"]["_callbacks.<locals>.Finished"] == {"finished": True}
    assert ckpt["hyper_parameters"]["style_weight"] == 1e10
    # stylize takes the checkpoint as --model too: its network is the .pth's
    from_ckpt = load_transformer(out / "waves.ckpt").state_dict()
    assert all(torch.equal(from_ckpt[k], v) for k, v in net.state_dict().items())

    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == MAX_STEPS and summary["images_seen"] == MAX_STEPS * 2
    assert summary["style"] == "waves" and summary["precision"] == "32-true" and summary["device"] == "cpu"
    assert summary["epochs"] == pytest.approx(MAX_STEPS * 2 / 8)
    assert summary["wall_time_s"] > 0 and summary["images_per_s"] > 0
    assert set(summary["train_losses"]) == {"content_loss", "style_loss", "tv_loss", "total_loss"}
    assert set(summary["val_losses"]) == {"content_loss", "style_loss", "tv_loss", "total_loss"}
    # the software that computed the weights, as this process sees it (a CPU run: no cuDNN)
    import pytorch_lightning
    import torchvision

    assert summary["software"]["torch"] == torch.__version__ and summary["software"]["cudnn"] is None
    assert summary["software"]["torchvision"] == torchvision.__version__
    assert summary["software"]["pytorch_lightning"] == pytorch_lightning.__version__

    with (out / "curves.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "content_loss", "style_loss", "tv_loss", "total_loss", "lr"]
    assert [int(r["step"]) for r in rows] == list(range(2, MAX_STEPS + 1, 2))
    assert all(float(r["total_loss"]) > 0 and float(r["lr"]) == 1e-3 for r in rows)
    # TensorBoard: the curves' values at the curves' steps; validation after steps 3 and 6, scalars and grid alike
    logged = tensorboard(out)
    for name in ("content_loss", "style_loss", "total_loss", "lr"):
        tag = "lr" if name == "lr" else f"train/{name}"
        assert [s for s, _ in logged[tag]] == [int(r["step"]) for r in rows]
        assert [v for _, v in logged[tag]] == pytest.approx([float(r[name]) for r in rows], rel=1e-6)
    assert [s for s, _ in logged["val/total_loss"]] == [s for s, _ in logged["val/stylized"]] == [3, 6]
    assert logged["val/total_loss"][-1][1] == pytest.approx(summary["val_losses"]["total_loss"], rel=1e-6)
    # the validation curves: a row per validation, the values TensorBoard has
    with (out / "val_curves.csv").open() as fh:
        val_rows = list(csv.DictReader(fh))
    assert list(val_rows[0]) == ["step", "content_loss", "style_loss", "tv_loss", "total_loss"]
    assert [int(r["step"]) for r in val_rows] == [3, 6]
    for name in ("content_loss", "style_loss", "total_loss"):
        assert [float(r[name]) for r in val_rows] == pytest.approx([v for _, v in logged[f"val/{name}"]], rel=1e-6)
    assert float(val_rows[-1]["total_loss"]) == pytest.approx(summary["val_losses"]["total_loss"], rel=1e-6)


@pytest.mark.slow
def test_cpu_threads_are_the_jobs_whoever_runs_it(setup):
    """Snakemake sets OMP_NUM_THREADS to the job's threads (resources.train.cpus_per_task); run
    without it (dvc repro, by hand) the training takes that count itself, not every core."""
    import json

    params = yaml.safe_load((setup / "params.yaml").read_text())
    params["train"].update(max_steps=1, val_check_interval=1)
    params["resources"]["train"]["cpus_per_task"] = 1
    (setup / "threads.yaml").write_text(yaml.safe_dump(params))
    for run, omp, expected in (("t-own", None, 1), ("t-snakemake", "2", 2)):
        cmd = command(setup, run)
        cmd[cmd.index(str(setup / "params.yaml"))] = str(setup / "threads.yaml")
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        if omp:
            env["OMP_NUM_THREADS"] = omp
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((setup / run / "summary.json").read_text())["cpu_threads"] == expected, run


def test_same_seed_same_weights(setup, uninterrupted):
    train(setup, "b")
    assert_identical(uninterrupted / "waves.pth", setup / "b" / "waves.pth")


@pytest.mark.slow
def test_another_seed_other_weights(setup, uninterrupted):
    """The params' seed is the one that counts: the network's initial weights and the data order follow it."""
    params = yaml.safe_load((setup / "params.yaml").read_text())
    (setup / "seed43.yaml").write_text(yaml.safe_dump(params | {"seed": params["seed"] + 1}))
    cmd = command(setup, "seed43")
    cmd[cmd.index(str(setup / "params.yaml"))] = str(setup / "seed43.yaml")
    train(setup, "seed43", cmd)
    one, other = weights(uninterrupted / "waves.pth"), weights(setup / "seed43" / "waves.pth")
    assert one.keys() == other.keys()
    assert not any(torch.equal(one[k], other[k]) for k in one if one[k].is_floating_point() and one[k].numel() > 1)


# mid-epoch, and at the end of the second epoch
@pytest.mark.parametrize("steps", [pytest.param(3, marks=pytest.mark.slow), MAX_STEPS])
def test_a_finished_run_started_again_rewrites_the_same_bytes(setup, steps):
    # it trains no further and writes its outputs again, checkpoint included, although its
    # strings now come from the checkpoint it resumed from (pickle shows which are one object)
    # and its data loader's position was read back from it
    cmd = variant(setup, f"again{steps}", max_steps=steps)
    train(setup, f"again{steps}", cmd)
    # the summary too: its wall time is the training's, kept in the checkpoint
    outputs = ("waves.pth", "waves.onnx", "waves.ckpt", "curves.csv", "val_curves.csv", "summary.json")
    first = {name: (setup / f"again{steps}" / name).read_bytes() for name in outputs}
    assert "final.ckpt" in train(setup, f"again{steps}", cmd).stderr
    assert [name for name in outputs if (setup / f"again{steps}" / name).read_bytes() != first[name]] == []


def test_sigterm_then_resume_equals_uninterrupted(setup, uninterrupted):
    stopped = train_interrupted(setup, "c", signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "Run the same command again to resume" in stopped.stderr
    assert not (setup / "c" / "waves.pth").exists()
    step = torch.load(setup / "c" / "scratch" / "preempted.ckpt", weights_only=False)["global_step"]
    assert 2 <= step < MAX_STEPS

    resumed = train(setup, "c")
    assert "resuming from" in resumed.stderr
    assert f"resumed at step {step}" in resumed.stderr  # from the checkpoint, not over from step 0
    assert_identical(uninterrupted / "waves.pth", setup / "c" / "waves.pth")
    for curves in ("curves.csv", "val_curves.csv"):  # whole, though written by two processes
        assert (setup / "c" / curves).read_text() == (uninterrupted / curves).read_text()
    # the attempts, in --scratch (which outlives the job's own log): where each started and stopped
    attempts = (setup / "c" / "scratch" / "attempts.log").read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in attempts] == [
        "started", f"interrupted by SIGTERM at step {step}; checkpoint saved to {setup / 'c' / 'scratch' / 'preempted.ckpt'}",
        f"resuming from {setup / 'c' / 'scratch' / 'preempted.ckpt'}", f"resumed at step {step}",
        f"finished at step {MAX_STEPS}"]


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGUSR1"])
def test_a_signal_to_every_process_checkpoints_and_resumes(setup, uninterrupted, signame):
    """^C reaches every process of the terminal's group, and Slurm's signals (`scancel`, `--signal`, the
    time limit) every process of the job step: data loader workers included. The step still finishes,
    is checkpointed, and the rerun ends with the uninterrupted run's weights."""
    signum = getattr(signal, signame)
    run = f"group-{signame}"
    cmd = variant(setup, run, num_workers=2)  # an operational value: the same run
    scratch = setup / run / "scratch"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (scratch / "last.ckpt").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no last.ckpt appeared"
        time.sleep(0.005)
    os.killpg(proc.pid, signum)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert f"interrupted by {signame}" in stderr and "Run the same command again to resume" in stderr
    assert "Traceback" not in stderr and "exited unexpectedly" not in stderr, stderr[-3000:]
    resumed = train(setup, run, cmd)
    assert "resuming from" in resumed.stderr and re.search(r"resumed at step [1-9]", resumed.stderr)
    assert_identical(uninterrupted / "waves.pth", setup / run / "waves.pth")


@pytest.mark.slow
def test_ctrl_c_twice_stops_at_once_with_the_status_of_ctrl_c_and_says_so(setup):
    """The second ^C does not wait for the step to end: Lightning catches the KeyboardInterrupt and would
    exit with status 1, which reads as a crash; the run says what happened and exits 130 instead."""
    cmd = variant(setup, "ctrl-c-twice", image_size=192, batch_size=4)  # steps long enough to land in one
    scratch = setup / "ctrl-c-twice" / "scratch"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (scratch / "last.ckpt").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no last.ckpt appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert "interrupted (^C) before a checkpoint could be written" in stderr and "Traceback" not in stderr
    last = (scratch / "attempts.log").read_text().splitlines()[-1]
    assert last.split(": ", 1)[1].startswith("interrupted by ^C at step "), last
    assert not (setup / "ctrl-c-twice" / "waves.pth").exists()


@pytest.mark.slow
def test_killed_right_after_a_validating_steps_checkpoint_resumes_with_that_validation(setup, uninterrupted):
    # checkpoints every 3 steps, as it validates (an operational value: the same run as the uninterrupted
    # one); SIGKILL leaves nothing to act on, so the run resumes from step 3's periodic checkpoint, which
    # is written after step 3's validation: the resumed run neither skips nor repeats it
    cmd = variant(setup, "killed", checkpoint_every_n_steps=3)
    killed = train_interrupted(setup, "killed", signal.SIGKILL, cmd, after="step0000003.ckpt")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (setup / "killed" / "waves.pth").exists()
    ckpt = torch.load(setup / "killed" / "scratch" / "step0000003.ckpt", map_location="cpu", weights_only=False)
    [curves] = [state for key, state in ckpt["callbacks"].items() if key.endswith("Curves")]
    assert [row["step"] for row in curves["val_rows"]] == [3]  # the checkpoint holds step 3's validation
    resumed = train(setup, "killed", cmd)
    assert "resuming from" in resumed.stderr and "resumed at step 3" in resumed.stderr
    # resuming from --scratch is by design, and the log is about the training, not Lightning's services
    for noise in ("exists and is not empty", "Tip:", "`weights_only` was not set"):
        assert noise not in resumed.stderr, noise
    for curves in ("curves.csv", "val_curves.csv"):
        assert (setup / "killed" / curves).read_text() == (uninterrupted / curves).read_text(), curves
    assert_identical(uninterrupted / "waves.pth", setup / "killed" / "waves.pth")


@pytest.mark.slow
def test_sigusr1_then_resume_equals_uninterrupted(setup, uninterrupted):
    stopped = train_interrupted(setup, "d", signal.SIGUSR1)
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-3000:]
    train(setup, "d")
    assert_identical(uninterrupted / "waves.pth", setup / "d" / "waves.pth")
    # a finished run started again resumes from its final checkpoint and rewrites the same model
    again = train(setup, "d")
    assert "final.ckpt" in again.stderr
    assert_identical(uninterrupted / "waves.pth", setup / "d" / "waves.pth")


def test_missing_loss_network_stops_with_fetch_command(setup, capsys):
    args = command(setup, "e")[1:]
    missing = setup / "missing" / "vgg16_features.pth"
    args[args.index("--loss-network") + 1] = str(missing)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "stylepipe fetch loss-network" in err
    assert not (setup / "e").exists()


@pytest.mark.parametrize("values, message", [
    ({"max_steps": 0}, "train.max_steps is 0, which trains nothing"),
    ({"max_steps": 5, "val_check_interval": 6, "early_stopping_patience": 2},
     r"train.val_check_interval \(6\) exceeds train.max_steps \(5\): the run would never validate"),
])
def test_settings_that_would_do_nothing_are_refused_before_training(setup, capsys, values, message):
    assert cli.main(variant(setup, "refused", **values)[1:]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (setup / "refused" / "scratch").exists()


@pytest.mark.parametrize("values", [{"strategy": "nonsense"}] + ([] if torch.backends.mps.is_available() else
                                                                  [{"accelerator": "mps"}]))
def test_hardware_values_lightning_refuses_are_a_params_error(setup, capsys, values):
    assert cli.main(variant(setup, "hardware", **values)[1:]) == 2  # not a traceback
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stylepipe train: error:")]
    (key, value), = values.items()
    assert f"train.{key} = {value}" in line and line.endswith("override them under styles.<name>).")


def test_sampler_order_depends_on_seed_and_epoch_only():
    a = ResumableSampler(10, batch_size=2, seed=5)
    b = ResumableSampler(10, batch_size=2, seed=5)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    a.set_epoch(1)
    assert list(a) != list(b)
    assert list(a) == ResumableSampler(10, 2, 5).order(1)
    # another seed, another order; and not the same orders shifted by an epoch
    other = ResumableSampler(1000, 2, 6)
    assert other.order(0) != ResumableSampler(1000, 2, 5).order(0)
    assert other.order(0) != ResumableSampler(1000, 2, 5).order(1)


def test_sampler_resumes_mid_epoch_and_after_last_batch():
    full = ResumableSampler(10, batch_size=2, seed=1)
    full.set_epoch(3)
    order = list(full)
    resumed = ResumableSampler(10, batch_size=2, seed=1)
    resumed.load_state_dict({"epoch": 3, "consumed": 2})
    resumed.set_epoch(3)  # what Lightning does right after restoring
    assert list(resumed) == order[4:]
    at_end = ResumableSampler(10, batch_size=2, seed=1)
    at_end.load_state_dict({"epoch": 3, "consumed": 5})  # saved after the epoch's last batch
    assert at_end.state_dict() == {"epoch": 4, "consumed": 0}


def test_sampler_epoch_is_whole_accumulation_windows():
    sampler = ResumableSampler(9, batch_size=2, seed=0, accumulate=3)  # 4 whole batches: one window of 3
    assert sampler.num_batches == 3 and len(sampler) == len(list(sampler)) == 6
    sampler.load_state_dict({"epoch": 0, "consumed": 3})  # saved after the epoch's last step
    assert sampler.state_dict() == {"epoch": 1, "consumed": 0}


def test_too_few_training_images_name_the_params_keys(setup):
    import pytorch_lightning as pl

    from stylepipe.datamodule import ContentDataModule

    with pytest.raises(ValueError, match=r"train.val_images = 10 .* 2 × 1 × 1 = 2 training images: add images"):
        ContentDataModule(setup / "content", 16, batch_size=2, val_images=10, seed=0).setup("fit")
    dm = ContentDataModule(setup / "content", 16, batch_size=2, val_images=2, seed=0)
    dm.trainer = pl.Trainer(accelerator="cpu", accumulate_grad_batches=5, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"train.batch_size × train.accumulate_grad_batches × processes = 2 × 5 × 1"):
        dm.setup("fit")


def test_sampler_splits_between_processes():
    ranks = [ResumableSampler(11, batch_size=2, seed=0, rank=r, world_size=2) for r in range(2)]
    parts = [list(r) for r in ranks]
    assert len(parts[0]) == len(parts[1]) == 4  # 5 each, in whole batches of 2
    assert not set(parts[0]) & set(parts[1])


def test_datamodule_reads_shards_and_holds_out_validation(tmp_path):
    from stylepipe.data.shards import ShardWriter
    from stylepipe.datamodule import ContentDataModule

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (3, 16, 16), dtype=np.uint8) for _ in range(7)]
    with ShardWriter(tmp_path / "resized", 16, per_shard=3) as writer:
        for i, image in enumerate(images):
            writer.add(image, f"img{i}.jpg")
        writer.close()
    dm = ContentDataModule(tmp_path / "resized", image_size=16, batch_size=2, val_images=2, seed=3)
    dm.setup("fit")
    train_batches = list(dm.train_dataloader())
    assert len(train_batches) == 2 and train_batches[0].dtype == torch.uint8  # 5 images, last partial batch dropped
    seen = {tuple(b.flatten()[:8].tolist()) for batch in train_batches for b in batch}
    assert all(tuple(torch.from_numpy(images[i]).flatten()[:8].tolist()) not in seen for i in (5, 6))
    val = torch.cat(list(dm.val_dataloader()))
    assert torch.equal(val, torch.from_numpy(np.stack(images[5:])))
    with pytest.raises(ValueError, match="image_size is 32"):
        ContentDataModule(tmp_path / "resized", 32, 2, 2, 3).setup("fit")


def test_folder_input_resizes_and_crops(setup):
    from stylepipe.datamodule import ContentDataModule

    dm = ContentDataModule(setup / "content", image_size=24, batch_size=2, val_images=2, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (2, 3, 24, 24) and batch.dtype == torch.uint8


def test_style_image_keeps_aspect_and_module_configures_schedules(setup):
    from stylepipe.data.tensors import load_style_image
    from stylepipe.module import StyleTransferModule

    style = load_style_image(setup / "style.png", 35)  # 70×40 → long edge 35
    assert style.shape == (1, 3, 20, 35) and style.dtype == torch.float32 and style.max() > 1
    vgg = {k[len("features."):]: v for k, v in random_state_dict(0).items()}
    module = StyleTransferModule(style, vgg, lr_schedule="cosine", tv_weight=1e-3)
    assert module.hparams.tv_weight == 1e-3 and "style_image" not in module.hparams
    assert module.style_grams["relu4_3"].shape == (1, 512, 512)
    losses, stylized = module.losses(torch.rand(2, 3, 16, 16) * 255)
    assert stylized.shape == (2, 3, 16, 16) and losses["tv_loss"] > 0
    parts = sum(losses[k].item() for k in ("content_loss", "style_loss", "tv_loss"))
    assert losses["total_loss"].item() == pytest.approx(parts, rel=1e-5)
    with pytest.raises(ValueError, match="style_layer_weights"):
        StyleTransferModule(style, vgg, style_layer_weights=[1.0])


@pytest.mark.slow
def test_two_cpu_processes_ddp_resume_equals_uninterrupted(setup):
    """strategy ddp (gloo) with 2 processes: rank 0 writes, SIGTERM + resume still bit for bit."""
    params = yaml.safe_load((setup / "params.yaml").read_text())
    params["train"].update(accelerator="cpu", devices=2, strategy="ddp", max_steps=6)
    ddp_root = setup / "ddp"
    ddp_root.mkdir()
    (ddp_root / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("content", "style.png", "vgg16_features.pth"):
        (ddp_root / name).symlink_to(setup / name)
    train(ddp_root, "full")
    summary = yaml.safe_load((ddp_root / "full" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["images_seen"] == 6 * 2 * 2
    # the curves hold the losses of the whole batch (both shares), as one process with its size computes them
    one = variant(setup, "one-process-batch-4", batch_size=4, max_steps=6)
    train(setup, "one-process-batch-4", one)
    two, single = (np.genfromtxt(run / "curves.csv", delimiter=",", names=True)
                   for run in (ddp_root / "full", setup / "one-process-batch-4"))
    np.testing.assert_array_equal(two["step"], single["step"])
    for name in ("content_loss", "style_loss", "total_loss"):
        np.testing.assert_allclose(two[name], single[name], rtol=1e-4, err_msg=name)
    stopped = train_interrupted(ddp_root, "cut", signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    train(ddp_root, "cut")
    assert_identical(ddp_root / "full" / "waves.pth", ddp_root / "cut" / "waves.pth")


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(setup, uninterrupted):
    # compile: true compiles the whole loss computation; same losses as eager, plain weight names
    params = yaml.safe_load((setup / "params.yaml").read_text())
    params["train"].update(compile=True, channels_last=True)
    (setup / "compiled.yaml").write_text(yaml.safe_dump(params))
    cmd = command(setup, "compiled")
    cmd[cmd.index(str(setup / "params.yaml"))] = str(setup / "compiled.yaml")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    eager, compiled = (np.genfromtxt(run / "curves.csv", delimiter=",", names=True)
                       for run in (uninterrupted, setup / "compiled"))
    np.testing.assert_array_equal(eager["step"], compiled["step"])
    np.testing.assert_allclose(compiled["total_loss"][0], eager["total_loss"][0], rtol=1e-3)
    assert weights(setup / "compiled" / "waves.pth").keys() == weights(uninterrupted / "waves.pth").keys()


def test_lr_schedule_and_validation_count_whole_accumulated_steps(setup):
    # 8 training images, batch 2, 3 batches per optimizer step: an epoch is one step of 3 batches (the
    # 4th batch cannot fill a step and is dropped), so 2 steps in 2 epochs; the cosine schedule reaches 0
    # at step 2, and validating every step validates after steps 1 and 2, not every 3 batches
    cmd = variant(setup, "sched", max_steps=-1, epochs=2, accumulate_grad_batches=3, lr_schedule="cosine",
                  log_every_n_steps=1, val_check_interval=1)
    train(setup, "sched", cmd)
    rows = list(csv.DictReader((setup / "sched" / "curves.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert [float(r["lr"]) for r in rows] == pytest.approx([5e-4, 0], abs=1e-12)
    summary = yaml.safe_load((setup / "sched" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["images_seen"] == 12 and summary["epochs"] == 2.0
    logged = tensorboard(setup / "sched")
    assert [s for s, _ in logged["val/total_loss"]] == [s for s, _ in logged["val/stylized"]] == [1, 2]


@pytest.mark.slow
def test_the_curves_end_with_the_last_step(setup):
    # every 2 steps and the last: the summary's train losses are those of step 3, not step 2
    cmd = variant(setup, "odd", max_steps=3, log_every_n_steps=2, val_check_interval=2, checkpoint_every_n_steps=1)
    train(setup, "odd", cmd)
    curves = (setup / "odd" / "curves.csv").read_text()
    rows = list(csv.DictReader(curves.splitlines()))
    assert [int(r["step"]) for r in rows] == [2, 3]
    summary = yaml.safe_load((setup / "odd" / "summary.json").read_text())
    assert summary["train_losses"]["total_loss"] == pytest.approx(float(rows[-1]["total_loss"]), rel=1e-6)
    assert [s for s, _ in tensorboard(setup / "odd")["train/total_loss"]] == [2, 3]
    # killed after the last step's checkpoint, before the final one: the resumed run still has the row
    (setup / "odd" / "scratch" / "final.ckpt").unlink()
    resumed = train(setup, "odd", cmd).stderr
    assert "resuming from" in resumed and "final.ckpt" not in resumed  # from last.ckpt or step0000003.ckpt
    assert (setup / "odd" / "curves.csv").read_text() == curves


def test_a_row_of_the_curves_is_the_mean_of_its_accumulated_batches(setup):
    # a real fit: 3 batches a step; each row's losses are the means of its step's 3 batches
    import pytorch_lightning as pl

    from stylepipe.datamodule import ContentDataModule
    from stylepipe.data.tensors import load_style_image
    from stylepipe.module import StyleTransferModule
    from stylepipe.callbacks import LOSS_NAMES, Curves

    class Batches(pl.Callback):
        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append({k: float(outputs[k]) for k in LOSS_NAMES})

    curves, batches = Curves(every=1), Batches()
    vgg = {k[len("features."):]: v for k, v in random_state_dict(0).items()}
    module = StyleTransferModule(load_style_image(setup / "style.png", 32), vgg)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, accumulate_grad_batches=3, callbacks=[curves, batches],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, use_distributed_sampler=False)
    trainer.fit(module, datamodule=ContentDataModule(setup / "content", 16, batch_size=2, val_images=2, seed=0))
    assert [row["step"] for row in curves.rows] == [1, 2] and len(batches.losses) == 6
    for row, start in zip(curves.rows, (0, 3)):
        for name in LOSS_NAMES[:2]:
            assert row[name] == pytest.approx(np.mean([b[name] for b in batches.losses[start:start + 3]]), rel=1e-6)


@pytest.mark.slow
def test_preemption_waits_for_the_accumulated_step_and_max_steps_outlasts_epochs(setup):
    # accumulate 2: a signal mid-accumulation is acted on after the optimizer step, so the
    # checkpoint never lacks summed gradients; max_steps 6 runs 3 epochs although epochs is 1
    values = dict(accumulate_grad_batches=2, max_steps=6, epochs=1, checkpoint_every_n_steps=1)
    full = setup / "acc-full"
    train(setup, "acc-full", variant(setup, "acc-full", **values))
    summary = yaml.safe_load((full / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["images_seen"] == 24 and summary["epochs"] == 3.0

    stopped = train_interrupted(setup, "acc-cut", signal.SIGTERM, variant(setup, "acc-cut", **values))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    scratch = setup / "acc-cut" / "scratch"
    ckpt = torch.load(scratch / "preempted.ckpt", weights_only=False)
    assert ckpt["ContentDataModule"]["sampler"]["consumed"] % 2 == 0
    # resumed, the first periodic checkpoint comes after the first whole step too (Lightning's
    # ModelCheckpoint does not know it saved at the resumed step and would save mid-window):
    # kill the run outright as soon as it rewrites last.ckpt, then look at what it wrote
    written = (scratch / "last.ckpt").stat().st_mtime_ns
    proc = subprocess.Popen(variant(setup, "acc-cut", **values), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while (scratch / "last.ckpt").stat().st_mtime_ns == written:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.002)
    proc.kill()
    proc.communicate()
    ckpt = torch.load(scratch / "last.ckpt", weights_only=False)
    assert ckpt["ContentDataModule"]["sampler"]["consumed"] % 2 == 0
    train(setup, "acc-cut", variant(setup, "acc-cut", **values))
    assert_identical(full / "waves.pth", setup / "acc-cut" / "waves.pth")


@pytest.mark.slow
def test_early_stopping_resumes_exactly_and_a_stopped_run_stays_stopped(setup):
    values = dict(max_steps=40, val_check_interval=1, early_stopping_patience=2, lr=0.5, checkpoint_every_n_steps=1)
    cmd = variant(setup, "early", **values)
    train(setup, "early", cmd)
    first = yaml.safe_load((setup / "early" / "summary.json").read_text())
    assert first["steps"] < 40  # stopped early (lr 0.5 makes the validation loss jump)
    # killed after the stopping step's periodic checkpoint, before the final one: that checkpoint
    # is of a finished run too, so the resumed run stops there rather than training on
    (setup / "early" / "scratch" / "final.ckpt").unlink()
    resumed = train(setup, "early", cmd).stderr
    assert "resuming from" in resumed and "final.ckpt" not in resumed
    assert yaml.safe_load((setup / "early" / "summary.json").read_text())["steps"] == first["steps"]
    again = train(setup, "early", cmd)
    assert "final.ckpt" in again.stderr
    assert yaml.safe_load((setup / "early" / "summary.json").read_text())["steps"] == first["steps"]

    # SIGTERM at a step that validates: the preemption checkpoint follows the validation, so the
    # resumed run does not skip it and early stopping decides as in the uninterrupted run
    stopped = train_interrupted(setup, "early-cut", signal.SIGTERM, variant(setup, "early-cut", **values))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    train(setup, "early-cut", variant(setup, "early-cut", **values))
    assert yaml.safe_load((setup / "early-cut" / "summary.json").read_text()) | {"wall_time_s": 0, "images_per_s": 0} \
        == first | {"wall_time_s": 0, "images_per_s": 0}
    assert_identical(setup / "early" / "waves.pth", setup / "early-cut" / "waves.pth")


@pytest.mark.slow
def test_full_disk_while_checkpointing_names_the_file_and_how_to_go_on(setup):
    """torch.save reports the failed write as "unexpected pos ...": the user gets the file, the reason, what to do."""
    run = "full"
    cmd = command(setup, run)
    # the tiny net's checkpoints are about 20 MB, its logs far smaller: the first checkpoint (step 2) fails
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit(10 << 20))
    assert result.returncode == 2, result.stderr[-3000:]
    scratch = setup / run / "scratch"
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"stylepipe train: error: {scratch / 'step0000002.ckpt'}: File too large"), last_line
    assert "at step 2: free space on that disk" in last_line and "run the same command again" in last_line
    assert "Traceback" not in result.stderr and "unexpected pos" not in result.stderr
    # no half-written checkpoint is left to resume from, and the record says what happened
    assert not list(scratch.glob("*.ckpt")) and not list(scratch.glob(".*.part"))
    assert "disk full at step 2" in (scratch / "attempts.log").read_text()
    # with room again, the same command trains to the end
    train(setup, run, cmd)
    assert (setup / run / "waves.pth").is_file()


@pytest.mark.slow
def test_checkpoints_of_another_configuration_are_set_aside_not_lost(setup):
    first = variant(setup, "g", max_steps=2)
    train(setup, "g", first)
    scratch = setup / "g" / "scratch"
    made = {p.name for p in scratch.glob("*.ckpt")}
    assert "final.ckpt" in made
    changed = train(setup, "g", variant(setup, "g-lr", max_steps=2, lr=5e-4)[:-2] + ["--scratch", str(scratch)])
    assert "moved to" in changed.stderr and "resuming" not in changed.stderr
    assert "training starts at step 0" in changed.stderr
    [aside] = (scratch / "superseded").iterdir()
    assert {p.name for p in aside.glob("*.ckpt")} == made
    # its TensorBoard log went with them: the new run's curves are not drawn over the old ones
    assert list((aside / "tensorboard").glob("events.*")) and len(list((scratch / "tensorboard").glob("events.*"))) == 1
    assert "lr: 0.0005" in (scratch / "tensorboard" / "hparams.yaml").read_text()
    # the first configuration again: resumes from its set-aside final checkpoint, trains no further
    back = train(setup, "g", first)
    assert f"resuming from {aside / 'final.ckpt'}" in back.stderr


def test_fingerprint_counts_processes_and_ignores_epochs_under_max_steps(setup):
    from stylepipe.resume import fingerprint

    tp = yaml.safe_load((setup / "params.yaml").read_text())["train"]
    files = (setup / "style.png", setup / "vgg16_features.pth")
    base = fingerprint(tp, 42, 1, *files, data=setup / "content")
    assert fingerprint(tp, 42, 2, *files, data=setup / "content") != base
    assert fingerprint(tp | {"epochs": 7}, 42, 1, *files, data=setup / "content") == base
    assert fingerprint(tp | {"lr": 0.1}, 42, 1, *files, data=setup / "content") != base
    assert fingerprint(tp | {"devices": 4, "num_workers": 9}, 42, 1, *files, data=setup / "content") == base
    # which images train, and when early stopping ends the run, are what a run computes
    assert fingerprint(tp | {"val_images": 3}, 42, 1, *files, data=setup / "content") != base
    # on the CPU the thread count changes the sums, so the weights: a checkpoint of another count is not resumed
    assert fingerprint(tp, 43, 1, *files, data=setup / "content") != base  # another seed, another run
    two = fingerprint(tp, 42, 1, *files, data=setup / "content", cpu_threads=2)
    assert two not in (base, fingerprint(tp, 42, 1, *files, data=setup / "content", cpu_threads=1))
    assert two == fingerprint(tp, 42, 1, *files, data=setup / "content", cpu_threads=2)
    # the rows of the curves a run writes: a finished run of other intervals is not taken for this one's
    assert fingerprint(tp | {"val_check_interval": 5}, 42, 1, *files, data=setup / "content") != base
    assert fingerprint(tp | {"log_every_n_steps": 5}, 42, 1, *files, data=setup / "content") != base
    assert fingerprint(tp | {"checkpoint_every_n_steps": 5}, 42, 1, *files, data=setup / "content") == base
    stopping = tp | {"early_stopping_patience": 2}
    patient = fingerprint(stopping, 42, 1, *files, data=setup / "content")
    assert patient != base and patient != fingerprint(stopping | {"early_stopping_patience": 3}, 42, 1, *files,
                                                      data=setup / "content")


def test_early_stopping_in_a_run_too_short_to_validate_is_refused_before_training(setup):
    """With epochs (max_steps -1) the run's length is known only with the data: checked at the start."""
    result = subprocess.run(variant(setup, "novalidation", max_steps=-1, epochs=1, val_check_interval=1000,
                                    early_stopping_patience=1), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.search(r"error: train.early_stopping_patience is set but train.val_check_interval \(1000\) exceeds "
                     r"the \d+ optimizer steps of this run .*never validate", result.stderr), result.stderr[-3000:]
    assert not (setup / "novalidation" / "waves.pth").exists()


def test_a_diverging_run_stops_naming_the_step_and_what_to_change(setup):
    result = subprocess.run(variant(setup, "diverge", lr=1e30, log_every_n_steps=1), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.search(r"error: the training loss is (nan|inf) at step \d+: the run diverged", result.stderr)
    assert "Traceback" not in result.stderr and not (setup / "diverge" / "waves.pth").exists()


def test_fingerprint_sees_new_pixels_under_the_same_names(setup, tmp_path):
    """New photos under the old names, resized again: the finished run of the old ones is not resumed."""
    import json

    from stylepipe.data.shards import ShardWriter
    from stylepipe.resume import fingerprint

    tp = yaml.safe_load((setup / "params.yaml").read_text())["train"]
    files = (setup / "style.png", setup / "vgg16_features.pth")

    def shards(value: int) -> Path:
        folder = tmp_path / f"shards-{value}"
        with ShardWriter(folder, 8) as writer:
            writer.add(np.full((3, 8, 8), value, np.uint8), "a.png")
            writer.close()
        return folder

    dark, light = shards(0), shards(255)
    assert [s["file"] for s in json.loads((dark / "manifest.json").read_text())["shards"]] == ["shard-00000.npy"]
    assert fingerprint(tp, 42, 1, *files, data=dark) != fingerprint(tp, 42, 1, *files, data=light)
    # a manifest written before it held the pixels' hash: the shard files themselves are hashed
    for folder in (dark, light):
        manifest = json.loads((folder / "manifest.json").read_text())
        del manifest["shards"][0]["sha256"]
        (folder / "manifest.json").write_text(json.dumps(manifest))
    assert (dark / "manifest.json").read_bytes() == (light / "manifest.json").read_bytes()
    assert fingerprint(tp, 42, 1, *files, data=dark) != fingerprint(tp, 42, 1, *files, data=light)
    # a folder of images: a file rewritten with as many bytes
    photos = tmp_path / "photos"
    shutil.copytree(setup / "content", photos)
    before = fingerprint(tp, 42, 1, *files, data=photos)
    first = sorted(p for p in photos.iterdir() if p.is_file())[0]
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert fingerprint(tp, 42, 1, *files, data=photos) != before


def test_folder_input_reads_avif(tmp_path):
    from stylepipe.datamodule import FolderImages

    ramp = np.tile(np.linspace(0, 255, 32).round().astype(np.uint8), (32, 1))
    Image.fromarray(np.stack([ramp] * 3, axis=-1)).save(tmp_path / "photo.avif", quality=90)
    images = FolderImages(tmp_path, 32)
    assert len(images) == 1 and images[0].float().mean().item() == pytest.approx(127.5, abs=2)


def test_folder_input_is_decoded_like_resize_and_unreadable_images_are_listed(tmp_path):
    from stylepipe.datamodule import FolderImages

    folder = tmp_path / "photos"
    folder.mkdir()
    ramp = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(folder / "a_grey16.png")
    rgba = np.zeros((32, 32, 4), np.uint8)  # fully transparent: white, as resize makes it
    Image.fromarray(rgba, "RGBA").save(folder / "b_clear.png")
    images = FolderImages(folder, 32)
    assert images[0].float().mean().item() == pytest.approx(127.5, abs=1)
    assert images[1].min().item() == 255

    (folder / "c_empty.jpg").write_bytes(b"")
    (folder / "d_text.png").write_text("not an image")
    with pytest.raises(ValueError) as info:
        FolderImages(folder, 32)
    message = str(info.value)
    assert "2 of 4 images cannot be read" in message and "stylepipe resize" in message
    assert f"{folder / 'c_empty.jpg'}: empty file" in message and f"{folder / 'd_text.png'}: not an image" in message


def test_folder_input_takes_the_images_its_shards_would_hold(tmp_path, capsys):
    """Same files, same order, so the same held-out validation images: a .ppm is an image to resize too,
    and a file that is not an image is left out (and said) rather than stopping the run."""
    import json

    from stylepipe.data.resize import resize_folder
    from stylepipe.datamodule import FolderImages

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.jpg", "z.ppm"):
        Image.new("RGB", (40, 36), (len(name) * 40, 90, 10)).save(folder / name)
    (folder / "notes.txt").write_text("taken in 2014")
    images = FolderImages(folder, 32)
    assert f"{folder}: 1 file(s) that are not images left out" in capsys.readouterr().err
    resize_folder(folder, tmp_path / "resized", size=32, progress=False)
    manifest = json.loads((tmp_path / "resized" / "manifest.json").read_text())
    assert [p.relative_to(folder).as_posix() for p in images.paths] == manifest["images"] == ["a.png", "b.jpg", "z.ppm"]


@pytest.mark.parametrize("preempted", [False, True], ids=["finished", "preempted"])
def test_lightning_s_slurm_handler_never_installed_and_handlers_restored(setup, monkeypatch, preempted):
    """Under Slurm, Lightning's own SIGUSR1 handler (save mid-step, `scontrol requeue`) is never put in, not even
    for the moments between its set-up and train start; after the command, finished or preempted, the signal
    handlers are those it found (left in, Preemption's would swallow a SIGTERM while the model is exported)."""
    import threading

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train-waves", "SLURM_JOB_ID": "42",
                       "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    installed = []
    real_signal = signal.signal

    def recording_signal(signum, handler):  # the real call, recorded
        installed.append((signum, getattr(handler, "__module__", None) or type(handler).__module__))
        return real_signal(signum, handler)

    monkeypatch.setattr(signal, "signal", recording_signal)
    before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)]
    run = "inproc-preempted" if preempted else "inproc"
    cmd = variant(setup, run, max_steps=4)[1:]
    if preempted:  # SIGUSR1 to this very process once the first checkpoint is written
        scratch = setup / run / "scratch"

        def send():
            deadline = time.monotonic() + 120
            while not (scratch / "last.ckpt").exists() and time.monotonic() < deadline:
                time.sleep(0.005)
            os.kill(os.getpid(), signal.SIGUSR1)

        threading.Thread(target=send, daemon=True).start()
    assert cli.main(cmd) == (128 + signal.SIGUSR1 if preempted else 0)

    assert [s for s, module in installed if s == signal.SIGUSR1 and module.startswith("pytorch_lightning")] == []
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)] == before


@pytest.mark.parametrize("deterministic", [True, False])
def test_cudnn_times_its_algorithms_only_when_runs_need_not_be_deterministic(tmp_path, deterministic):
    """`deterministic: false` lets cuDNN pick the fastest convolution algorithms (Lightning alone would leave
    torch.backends.cudnn.benchmark as it found it, off); `true` keeps cuDNN's fixed, deterministic choice."""
    from stylepipe.train import build_trainer

    tp = tiny_params_dict()["train"] | {"deterministic": deterministic, "accelerator": "cpu"}
    before = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    torch.backends.cudnn.benchmark = deterministic  # the opposite of what the Trainer should set
    try:
        build_trainer(tp, tmp_path, [], [])
        assert torch.backends.cudnn.benchmark is (not deterministic)
        assert torch.are_deterministic_algorithms_enabled() is deterministic
    finally:
        torch.backends.cudnn.benchmark = before[0]
        torch.use_deterministic_algorithms(before[1])


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "16-mixed", "32-true"])
@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "emulated-bf16"])
def test_bf16_on_a_cpu_that_emulates_it_is_warned_about(tmp_path, monkeypatch, precision, native):
    """Without AVX-512 BF16 or AMX a bf16 step is 20-40x slower than float32: the command says so and names
    the key; the precision itself stays the params' (changing it would change the weights)."""
    import stylepipe.cpu
    from stylepipe.train import build_trainer, emulated_bf16_warning

    monkeypatch.setattr(stylepipe.cpu, "native_bf16_cpu", lambda: native)
    tp = tiny_params_dict()["train"] | {"precision": precision, "accelerator": "cpu", "deterministic": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's note that 16-mixed runs as bf16-mixed on a CPU
        trainer = build_trainer(tp, tmp_path, [], [])
    message = emulated_bf16_warning(tp, trainer)
    if native or precision == "32-true":
        assert message is None
    else:
        assert f"train.precision is {precision}" in message and "train.precision: 32-true" in message
