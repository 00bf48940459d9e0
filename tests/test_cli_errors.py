"""Bad input on the command line: one line `stylepipe <cmd>: error: ...` naming the file, status 2, nothing lost.

Real files and real commands: scikit-image's sample photographs, a randomly
initialised TransformerNet, a seeded random loss network.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from stylepipe import cli
from stylepipe.models.transformer import TransformerNet
from stylepipe.models.vgg import random_state_dict

from conftest import tiny_params_dict

FP32 = ["--device", "cpu", "--engine", "torch", "--precision", "fp32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import skimage.data

    root = tmp_path_factory.mktemp("files")
    photo = skimage.data.astronaut()
    torch.manual_seed(0)
    net = TransformerNet().eval()
    with torch.no_grad():  # spread the output over about 0-255, as a trained network's: a random one stays near 0
        y = net(torch.from_numpy(photo[:64, :64].copy()).permute(2, 0, 1)[None].float())
        scale = 50 / y.std()
        net.deconv3.conv2d.weight.mul_(scale)
        net.deconv3.conv2d.bias.mul_(scale).add_(127.5 - scale * y.mean())
    torch.save(net.state_dict(), root / "model.pth")
    torch.save(random_state_dict(0), root / "vgg.pth")
    content = root / "content"
    content.mkdir()
    for i in range(6):  # 6 images: batch 2 + 2 held out for validation, with room to spare
        Image.fromarray(photo[40 * i : 40 * i + 48, 100:164]).save(content / f"photo{i}.jpg", quality=90)
    Image.fromarray(photo[:40, 200:270]).save(root / "style.png")
    data = (content / "photo0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes.png").write_text("not an image\n")
    (root / "fake.pth").write_text("x\n")
    (root / "a_file").write_text("a file, not a folder\n")
    return root


def run_cli(capsys, *args) -> tuple[int, str]:
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"stylepipe {command}: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- 1. one image loader everywhere ---------------------------------------------------------------

def test_truncated_input_is_named_and_the_others_are_written(files, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "stylize", "--model", files / "model.pth", "--output", out, *FP32,
                        files / "content" / "photo1.jpg", files / "truncated.jpg", files / "notes.png")
    assert code == 2
    line = one_error_line(err, "stylize")
    assert "truncated.jpg: " in line and "truncated" in line.lower() and "notes.png: not an image" in line
    assert "2 of 3" in line
    assert sorted(p.name for p in out.iterdir()) == ["photo1.png"]  # the good image is not lost


def test_16_bit_and_transparent_inputs_decode_like_their_8_bit_rgb_equivalents(files, tmp_path, capsys):
    ramp = np.tile(np.linspace(0, 65535, 40).round().astype(np.uint16), (24, 1))
    Image.fromarray(ramp).save(tmp_path / "grey16.png")  # mode I;16
    grey8 = np.rint(ramp / 65535 * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey8] * 3, axis=-1)).save(tmp_path / "grey8.png")
    rgba = np.zeros((24, 40, 4), np.uint8)
    rgba[:12] = (200, 30, 30, 255)  # top half opaque red, bottom half fully transparent (black underneath)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    on_white = np.full((24, 40, 3), 255, np.uint8)
    on_white[:12] = (200, 30, 30)
    Image.fromarray(on_white).save(tmp_path / "white.png")
    out = tmp_path / "out"
    code, err = run_cli(capsys, "stylize", "--model", files / "model.pth", "--output", out, *FP32,
                        *(tmp_path / n for n in ("grey16.png", "grey8.png", "alpha.png", "white.png")))
    assert code == 0, err
    read = lambda name: np.asarray(Image.open(out / name))  # noqa: E731
    assert read("grey8.png").std() > 20  # the network's output really depends on its input
    assert np.array_equal(read("grey16.png"), read("grey8.png"))
    # the network sees the image on white; the output keeps the input's transparency
    assert np.array_equal(read("alpha.png")[..., :3], read("white.png"))
    assert np.array_equal(read("alpha.png")[..., 3], rgba[..., 3])


def test_style_image_decodes_16_bit_and_refuses_a_non_image(files, tmp_path, tiny_params_file, capsys):
    from stylepipe.data.tensors import load_style_image

    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "style16.png")
    assert load_style_image(tmp_path / "style16.png", None).mean().item() == pytest.approx(127.5, abs=1)
    code, err = run_cli(capsys, *train_args(files, tmp_path, tiny_params_file, style_image=files / "notes.png"))
    assert code == 2
    line = one_error_line(err, "train")
    assert "notes.png" in line and "not an image" in line
    assert not list((tmp_path / "scratch").glob("**/*.ckpt"))


def test_a_style_image_too_thin_for_the_loss_network_is_refused_naming_style_size(files, tmp_path,
                                                                                   tiny_params_file, capsys):
    """At a long edge of style_size, a panorama's short side can fall under the 8 px that relu4_3's
    three max-pools need: one line naming the file and train.style_size, not PyTorch's error."""
    from stylepipe.models.vgg import smallest_input

    assert [smallest_input([name]) for name in ("relu1_2", "relu2_2", "relu3_3", "relu4_3")] == [1, 2, 4, 8]
    assert smallest_input(["relu4_3", "relu1_2"]) == 8
    params = yaml.safe_load(tiny_params_file.read_text())
    Image.new("RGB", (params["train"]["style_size"] * 10, 50), "navy").save(tmp_path / "panorama.png")
    code, err = run_cli(capsys, *train_args(files, tmp_path, tiny_params_file, style_image=tmp_path / "panorama.png"))
    line = one_error_line(err, "train")
    assert code == 2 and "panorama.png" in line and "need at least 8 px on each side" in line
    assert "train.style_size" in line and "Traceback" not in err


def train_args(files: Path, tmp_path: Path, params: Path, **override) -> list:
    values = {"data": files / "content", "style_image": files / "style.png", "loss_network": files / "vgg.pth",
              "model": tmp_path / "out" / "m.pth", "scratch": tmp_path / "scratch", **override}
    args = ["train", "--params", params, "--style", "waves"]
    for key, value in values.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def test_training_folder_with_a_truncated_jpeg_stops_before_the_first_step(files, tmp_path, tiny_params_file, capsys):
    import shutil

    data = tmp_path / "content"
    shutil.copytree(files / "content", data)
    shutil.copy(files / "truncated.jpg", data / "photo9.jpg")
    code, err = run_cli(capsys, *train_args(files, tmp_path, tiny_params_file, data=data))
    assert code == 2
    line = one_error_line(err, "train")
    assert str(data / "photo9.jpg") in line and "truncated" in line.lower() and "stylepipe resize" in line
    assert not list((tmp_path / "scratch").glob("**/*.ckpt")) and not (tmp_path / "out" / "m.pth").exists()


# --- 2. user errors: one line, status 2 ---------------------------------------------------------------

def test_stylize_user_errors(files, tmp_path, capsys):
    model, photo = files / "model.pth", files / "content" / "photo1.jpg"
    (tmp_path / "empty").mkdir()
    (tmp_path / "x").mkdir()
    Image.open(photo).save(tmp_path / "x" / "photo1.png")
    out = tmp_path / "new" / "out"
    cases = {
        "nothere.pth": ["--model", tmp_path / "nothere.pth", "--output", out, photo],
        "empty": ["--model", model, "--output", out, tmp_path / "empty"],
        "would both be written": ["--model", model, "--output", out, photo, tmp_path / "x" / "photo1.png"],
        "a_file": ["--model", model, "--output", files / "a_file" / "out", photo],
    }
    for expected, args in cases.items():
        code, err = run_cli(capsys, "stylize", *FP32, *args)
        assert code == 2, args
        assert expected in one_error_line(err, "stylize")
    assert not (tmp_path / "new").exists(), "a failed command left an output folder behind"


def report_cmd(params, metrics, eval_dir, root):
    return ["report", "--params", params, "--metrics-dir", metrics, "--eval-images", eval_dir,
            "--stylized-root", root, "--output", root / "m.json", "--gallery", root / "g.png"]


def test_report_and_evaluate_user_errors(files, tmp_path, tiny_params_file, capsys):
    (tmp_path / "bad.json").write_text("{")
    eval_dir, partial = tmp_path / "eval", tmp_path / "partial"
    eval_dir.mkdir()
    partial.mkdir()
    for name in ("a", "b"):
        Image.open(files / "content" / "photo1.jpg").save(eval_dir / f"{name}.png")
    Image.open(files / "content" / "photo1.jpg").save(partial / "a.png")
    (tmp_path / "summary.json").write_text(json.dumps({"images_per_s": 1.0, "wall_time_s": 2.0}))

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for style in yaml.safe_load(tiny_params_file.read_text())["styles"]:
        (metrics / f"{style}.json").write_text("{")
    code, err = run_cli(capsys, *report_cmd(tiny_params_file, metrics, eval_dir, tmp_path))
    assert code == 2 and ".json: not valid JSON" in one_error_line(err, "report")
    assert not (tmp_path / "m.json").exists()
    for style in yaml.safe_load(tiny_params_file.read_text())["styles"]:
        (metrics / f"{style}.json").write_bytes(b"\xff\xfe{")  # not even text
    code, err = run_cli(capsys, *report_cmd(tiny_params_file, metrics, eval_dir, tmp_path))
    assert code == 2 and ".json: not valid JSON" in one_error_line(err, "report")

    evaluate = ["evaluate", "--params", tiny_params_file, "--style", "waves", "--model", files / "model.pth",
                "--eval-images", eval_dir, "--style-image", files / "style.png", "--loss-network", files / "vgg.pth",
                "--output", tmp_path / "metrics.json"]
    code, err = run_cli(capsys, *evaluate, "--stylized", partial, "--train-summary", tmp_path / "summary.json")
    assert code == 2 and str(partial / "b.png") in one_error_line(err, "evaluate")
    code, err = run_cli(capsys, *evaluate, "--stylized", eval_dir, "--train-summary", tmp_path / "bad.json")
    assert code == 2 and "bad.json" in one_error_line(err, "evaluate")
    assert not (tmp_path / "metrics.json").exists()
    # NaN is no number JSON can hold: refused with the file's name, before either output is written
    (tmp_path / "nan.json").write_text('{"images_per_s": NaN, "wall_time_s": 2.0}')
    code, err = run_cli(capsys, *evaluate, "--stylized", eval_dir, "--train-summary", tmp_path / "nan.json",
                        "--speed", tmp_path / "speed.json")
    assert code == 2 and "nan.json: images_per_s not a finite number" in one_error_line(err, "evaluate")
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "speed.json").exists()

    # a second output that cannot be written fails before the first is written, not after
    (tmp_path / "speed-folder").mkdir()
    code, err = run_cli(capsys, *evaluate, "--stylized", eval_dir, "--train-summary", tmp_path / "summary.json",
                        "--speed", tmp_path / "speed-folder")
    assert code == 2
    assert one_error_line(err, "evaluate") == f"stylepipe evaluate: error: --speed {tmp_path / 'speed-folder'}: is a folder; give a file path"
    assert not (tmp_path / "metrics.json").exists()
    code, err = run_cli(capsys, *evaluate, "--stylized", eval_dir, "--train-summary", tmp_path / "summary.json",
                        "--speed", tmp_path / "metrics.json")
    assert code == 2 and "--output and --speed are both" in one_error_line(err, "evaluate")


def test_report_and_compare_refuse_an_image_name_of_another_format(capsys, tiny_params_file, tmp_path):
    """The gallery and the contact sheet are PNGs, the curves SVG: a .jpg name would hold PNG bytes."""
    report = ["report", "--params", tiny_params_file, "--metrics-dir", tmp_path, "--eval-images", tmp_path,
              "--stylized-root", tmp_path, "--output", tmp_path / "m.json"]
    code, err = run_cli(capsys, *report, "--gallery", tmp_path / "g.jpg")
    assert code == 2
    assert one_error_line(err, "report") == f"stylepipe report: error: --gallery {tmp_path / 'g.jpg'}: written as PNG; give a name ending in .png"
    code, err = run_cli(capsys, *report, "--gallery", tmp_path / "g.png", "--curves", tmp_path / "c.png",
                        "--train-dir", tmp_path)
    assert code == 2 and "--curves" in err and "ending in .svg" in one_error_line(err, "report")
    code, err = run_cli(capsys, *report, "--gallery", tmp_path / "m.json")
    assert code == 2 and "--output and --gallery are both" in one_error_line(err, "report")
    assert not (tmp_path / "m.json").exists()

    code, err = run_cli(capsys, "compare", "--repo", tmp_path, "--output", tmp_path / "c.html",
                        "--png", tmp_path / "sheet.jpg")
    assert code == 2 and "--png" in err and "ending in .png" in one_error_line(err, "compare")
    assert not (tmp_path / "c.html").exists()


@pytest.mark.parametrize("command, option, value, says", [
    ("resize", "--workers", "0", "0 is not positive"),
    ("resize", "--images-per-shard", "0", "0 is not positive"),
    ("resize", "--max-pixels", "-5", "-5 is not positive"),
    ("resize", "--size", "big", "'big' is not a whole number"),
    ("download", "--retries", "-1", "-1 is negative: give 0 or more"),
    ("compare", "--max-image-size", "-1", "-1 is negative: give 0 or more"),
    ("stylize", "--batch-size", "0", "0 is not positive"),
    ("stylize", "--scale", "nan", "nan is not a positive number"),
])
def test_numeric_options_out_of_range_are_refused_naming_the_option(capsys, tmp_path, command, option, value, says):
    required = {
        "resize": ["--input", tmp_path, "--output", tmp_path / "out", "--size", "8"],
        "download": ["http://127.0.0.1:9/x.zip", "--output", tmp_path / "x.zip", "--md5", "0" * 32],
        "compare": [],
        "stylize": ["--model", tmp_path / "m.pth", tmp_path],
    }[command]
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, *map(str, required), option, value])
    assert exit_.value.code == 2
    assert f"argument {option}: {says}" in one_error_line(capsys.readouterr().err, command)
    assert list(tmp_path.iterdir()) == []


def test_real_command_prints_no_traceback(files, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "stylepipe", "stylize", "--model", str(files / "fake.pth"),
                           "--output", str(tmp_path), str(files / "content" / "photo1.jpg")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("stylepipe stylize: error: ") and "fake.pth" in proc.stderr


def test_traceback_on_request(files, monkeypatch):
    monkeypatch.setenv("STYLEPIPE_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["stylize", "--model", str(files / "model.pth"), str(files / "nothere.jpg")])


# --- 3. files that are not models ------------------------------------------------------------------

def test_files_that_are_not_models(files, tmp_path, capsys):
    data = (files / "model.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "fake.onnx").write_text("x\n")
    photo = files / "content" / "photo1.jpg"
    for model, reason in [(files / "fake.pth", "not a PyTorch weights file"), (files / "vgg.pth", "weights missing"),
                          (tmp_path / "cut.pth", "truncated"), (tmp_path / "fake.onnx", "not an ONNX model")]:
        code, err = run_cli(capsys, "stylize", "--model", model, "--output", tmp_path / "out", photo)
        assert code == 2
        line = one_error_line(err, "stylize")
        assert str(model) in line and reason in line and "weights_only" not in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_train_with_a_fake_loss_network(files, tmp_path, tiny_params_file, capsys):
    code, err = run_cli(capsys, *train_args(files, tmp_path, tiny_params_file, loss_network=files / "fake.pth"))
    assert code == 2
    line = one_error_line(err, "train")
    assert "fake.pth: not a VGG16 state_dict" in line and "stylepipe fetch loss-network" in line


# --- 6. train checks its outputs before training --------------------------------------------------

@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_train_refuses_an_unwritable_output_before_training(files, tmp_path, tiny_params_file, capsys, where):
    model = files / "a_file" / "m.pth" if where == "under_a_file" else Path("/proc/nope/m.pth")
    if where == "proc" and not Path("/proc").is_dir():
        pytest.skip("no /proc")
    code, err = run_cli(capsys, *train_args(files, tmp_path, tiny_params_file, model=model))
    assert code == 2
    line = one_error_line(err, "train")
    assert "--model" in line and str(model.parent) in line
    assert not list((tmp_path / "scratch").glob("**/*.ckpt")), "trained before checking its outputs"


def test_train_data_that_is_a_file_says_which_folder_to_give(files, tmp_path, tiny_params_file, capsys):
    photo = files / "content" / "photo1.jpg"
    code, err = run_cli(capsys, *train_args(files, tmp_path, tiny_params_file, data=photo))
    assert code == 2
    assert one_error_line(err, "train") == (f"stylepipe train: error: --data {photo}: is a file; give the folder "
                                            "`stylepipe resize` writes (data/content/<size>), or a folder of images")
    assert not (tmp_path / "out").exists()


# --- 7. an image too large for the memory: named, with what to do ---------------------------------

# Runs a command with its address space (RLIMIT_AS, `ulimit -v`) or its heap (RLIMIT_DATA, `ulimit -d`)
# capped 2 GB above what it has mapped once PyTorch and onnxruntime are loaded, as a small machine would.
# stylize sees the first and refuses up front; the second it cannot see, so the allocation itself fails.
_CAPPED = """
import resource, sys
import onnxruntime, torch
from stylepipe import cli
limit, field = {"as": (resource.RLIMIT_AS, "VmSize:"), "data": (resource.RLIMIT_DATA, "VmData:")}[sys.argv[1]]
mapped = int(open("/proc/self/status").read().split(field)[1].split()[0]) * 1024
resource.setrlimit(limit, (mapped + (2 << 30), resource.RLIM_INFINITY))
sys.exit(cli.main(sys.argv[2:]))
"""


def _capped_stylize(files, tmp_path, cap, engine, *options, returncode=2):
    # 6000 x 4000 (a 24 MP photograph): the first convolution's output alone is 3 GB in float32
    big = tmp_path / "big photo.jpg"
    if not big.exists():
        Image.new("RGB", (6000, 4000), (90, 120, 150)).save(big)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _CAPPED, cap, "stylize", "--model", str(files / "model.pth"),
                           "--output", str(out), "--device", "cpu", "--engine", engine, "--precision", "fp32",
                           *options, str(files / "content" / "photo1.jpg"), str(big)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == returncode, proc.stderr[-3000:]
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    return (one_error_line(proc.stderr, "stylize") if returncode else proc.stdout), written


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_AS and /proc (Linux)")
@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_stylize_refuses_up_front_an_image_too_large_for_the_memory_left(files, tmp_path, engine):
    """Where overcommitted memory would let the kernel kill the process without a word, it is refused first."""
    line, written = _capped_stylize(files, tmp_path, "as", engine)
    assert f"{tmp_path / 'big photo.jpg'} (6000x4000 px): too large to stylize in {engine} fp32 on cpu" in line
    assert "free under the address-space limit (ulimit -v)" in line
    # at least 18-22 GB needed, under 2 GB free: the edge that fits is under a third of 6000, in steps of 64
    max_size = int(line.split("--max-size ")[1].split()[0])
    assert 512 <= max_size <= 2048 and max_size % 64 == 0, line
    assert written == [], "stylized before refusing"
    # and the size it offers does fit under the same limit
    _, written = _capped_stylize(files, tmp_path, "as", engine, "--max-size", str(max_size), returncode=0)
    assert written == ["big photo.png", "photo1.png"]
    with Image.open(tmp_path / "out" / "big photo.png") as img:
        assert img.size[0] == max_size and abs(img.size[1] - max_size * 2 / 3) < 1, img.size


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_DATA and /proc (Linux)")
@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_stylize_names_an_image_that_runs_out_of_memory(files, tmp_path, engine):
    """A limit the up-front check cannot see: the failed allocation is named, with what to do."""
    line, written = _capped_stylize(files, tmp_path, "data", engine)
    assert f"{tmp_path / 'big photo.jpg'} (6000x4000 px): out of memory" in line
    assert "--max-size 3000" in line
    assert written == ["photo1.png"]  # the image that fits is written


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_DATA and /proc (Linux)")
def test_training_out_of_memory_names_the_params_to_change(files, tmp_path):
    """A CUDA or CPU allocation that fails in a step is one line naming batch_size and image_size, not a traceback."""
    params = tiny_params_dict()
    # a step needs about 5.5 GB: more than the 2 GB heap, less than the machine's memory the up-front check sees
    params["train"].update(image_size=768, batch_size=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run([sys.executable, "-c", _CAPPED, "data",
                           *map(str, train_args(files, tmp_path, tmp_path / "params.yaml"))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc.stderr, "train")
    assert "out of memory training at step 0 on cpu, train.batch_size = 2 images of train.image_size = 768 px" in line
    assert "lower train.batch_size (train.accumulate_grad_batches = 2 with half the batch" in line
    assert line.endswith("it stopped before the first step")
    assert "out of memory at step 0" in (tmp_path / "scratch" / "attempts.log").read_text()
    assert not (tmp_path / "out").exists()


def _capped_train(files, tmp_path, returncode=2, style_image=None, **train_values):
    params = tiny_params_dict()
    params["train"].update(max_steps=2, **train_values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    args = train_args(files, tmp_path, tmp_path / "params.yaml", style_image=style_image or files / "style.png")
    proc = subprocess.run([sys.executable, "-c", _CAPPED, "as", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == returncode, proc.stderr[-3000:]
    return one_error_line(proc.stderr, "train") if returncode else None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_AS and /proc (Linux)")
def test_training_steps_too_large_for_the_memory_left_are_refused_with_a_size_that_fits(files, tmp_path):
    """On a CPU the kernel would kill the step without a word: refused before training, with a value that fits."""
    line = _capped_train(files, tmp_path, image_size=1024, batch_size=4)
    assert ("train.batch_size = 4 images of train.image_size = 1024 px need at least 16.8 GB per training step "
            "on the CPU (fp32)") in line
    assert "free under the address-space limit (ulimit -v)" in line and line.endswith("nothing was trained")
    assert "set train.batch_size" not in line  # even one 1024 px image needs 4.2 GB
    size = int(line.split("set train.image_size to ")[1].split()[0].rstrip(","))
    assert 64 <= size <= 512 and size % 16 == 0, line
    assert not (tmp_path / "scratch").exists() or not list((tmp_path / "scratch").glob("**/*.ckpt"))
    # and the size it offers trains under the same limit
    _capped_train(files, tmp_path, returncode=0, image_size=size, batch_size=4)
    assert (tmp_path / "out" / "m.pth").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_AS and /proc (Linux)")
def test_a_style_image_too_large_for_the_memory_left_is_refused_with_a_style_size_that_fits(files, tmp_path):
    """train.style_size: null keeps a scanned painting at full size: its Gram matrices would need 18 GB."""
    scan = tmp_path / "scan.png"
    Image.new("RGB", (6000, 4000), (200, 80, 40)).save(scan)
    line = _capped_train(files, tmp_path, style_image=scan, style_size=None)
    assert ("the style image (6000x4000 px, train.style_size = null) needs at least 18.0 GB to compute its Gram "
            "matrices") in line
    assert "free under the address-space limit (ulimit -v)" in line
    style_size = int(line.split("set train.style_size to ")[1].split()[0])
    assert 512 <= style_size <= 2048 and style_size % 64 == 0, line
    _capped_train(files, tmp_path, returncode=0, style_image=scan, style_size=style_size)
    assert (tmp_path / "out" / "m.pth").is_file()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_data_loader_worker_killed_by_the_oom_killer_names_num_workers(files, tmp_path):
    """The kernel's OOM killer sends SIGKILL, often to a loader worker: one line naming train.num_workers."""
    import os
    import signal
    import time

    data = tmp_path / "data"
    data.mkdir()
    for i in range(60):  # an epoch long enough that its worker is alive while the test kills it
        os.link(files / "content" / f"photo{i % 6}.jpg", data / f"p{i:02d}.jpg")
    params = tiny_params_dict()
    params["train"].update(num_workers=1, batch_size=1, max_steps=500)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.Popen([sys.executable, "-m", "stylepipe",
                             *map(str, train_args(files, tmp_path, tmp_path / "params.yaml", data=data))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (workers := _children(proc.pid)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no data loader worker appeared"
        time.sleep(0.05)
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 2, stderr[-3000:]
    line = one_error_line(stderr, "train")
    assert "a data loader worker stopped at step" in line and str(workers[0]) in line
    # PyTorch says one or the other, as the worker's end and the next batch's wait happen to meet
    assert f"(pid {workers[0]}) is killed by signal: Killed" in line or f"(pid(s) {workers[0]}) exited unexpectedly" in line
    assert "lower train.num_workers (now 1;" in line and "resources.train.mem_mb" in line
    assert "a data loader worker died at step" in (tmp_path / "scratch" / "attempts.log").read_text()


def test_available_memory_is_the_tightest_of_the_machine_and_cgroup_limits(tmp_path):
    from stylepipe.memory import available_memory

    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal:       32000000 kB\nMemAvailable:   20000000 kB\n")
    (proc / "self" / "status").write_text("VmSize:  1000 kB\n")
    (proc / "self" / "cgroup").write_text("0::/\n")
    root.mkdir()
    (root / "memory.max").write_text("max\n")  # cgroup v2 without a limit: the machine's memory counts
    free = available_memory(proc, root)
    if free.limit == "the address-space limit (ulimit -v)":
        pytest.skip("this test runs under a tighter ulimit -v")
    assert (free.bytes, free.limit) == (20_000_000 * 1024, "the machine's available memory")

    # a Slurm job's cgroup (v2): 8 GB limit, 5 GB used of which 1 GB is page cache the kernel reclaims first
    job = root / "system.slice" / "slurmstepd.scope" / "job_42"
    job.mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("0::/system.slice/slurmstepd.scope/job_42\n")
    (job / "memory.max").write_text(f"{8 << 30}\n")
    (job / "memory.current").write_text(f"{5 << 30}\n")
    (job / "memory.stat").write_text(f"anon {4 << 30}\ninactive_file {1 << 30}\n")
    (root / "memory.current").write_text("1\n")
    free = available_memory(proc, root)
    assert (free.bytes, free.limit) == (4 << 30, "the cgroup's memory limit")
    # a tighter limit on a cgroup above it counts too
    (job.parent / "memory.max").write_text(f"{6 << 30}\n")
    (job.parent / "memory.current").write_text(f"{5 << 30}\n")
    assert available_memory(proc, root).bytes == 1 << 30

    # cgroup v1, inside a container whose cgroup is the mount's root (the host's path is not there)
    v1 = tmp_path / "cgroup1"
    (v1 / "memory").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("4:memory:/docker/abc123\n1:cpu:/\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{3 << 30}\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{1 << 30}\n")
    (v1 / "memory" / "memory.stat").write_text("total_inactive_file 0\n")
    assert available_memory(proc, v1).bytes == 2 << 30
    # v1's "no limit" is 2**63 rounded down to a page
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert available_memory(proc, v1).limit == "the machine's available memory"


def test_a_ctrl_c_just_after_the_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch):
    import os

    from stylepipe.io import write_json

    real_open = os.open

    def open_then_interrupted(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if str(path).endswith(".part"):
            os.close(fd)
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json(tmp_path / "m.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_names_the_output_not_its_temporary_file(tmp_path):
    """Outputs are written under a temporary name and renamed: an error must name the output."""
    import errno

    from stylepipe.io import atomic_path, write_json

    (tmp_path / "adir").mkdir()
    with pytest.raises(OSError) as err:
        write_json(tmp_path / "adir", {"a": 1})
    assert cli.user_message(err.value) == (f"{tmp_path / 'adir'}: is a folder, where this output file goes; move the "
                                           "folder away or choose another output (the output was not written)")
    # a full disk names no file at all (write() only knows a descriptor)
    with pytest.raises(OSError) as err:
        with atomic_path(tmp_path / "m.json") as tmp:
            tmp.write_text("{")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert cli.user_message(err.value) == f"{tmp_path / 'm.json'}: No space left on device (the output was not written)"
    # torch.save's zip writer reports a failed write as its own "RuntimeError: ... unexpected pos"

    class FillsUp(io.RawIOBase):
        written = 0

        def writable(self):
            return True

        def write(self, data):  # the first records fit, a later one does not
            self.written += len(data)
            if self.written > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(data)

    with pytest.raises(OSError) as err:
        with atomic_path(tmp_path / "w.ckpt") as tmp, open(tmp, "wb"):
            torch.save({"w": torch.zeros(10_000)}, FillsUp())
    assert cli.user_message(err.value) == f"{tmp_path / 'w.ckpt'}: No space left on device (the output was not written)"
    # an error about another file (an input read inside the block) keeps its own name
    with pytest.raises(FileNotFoundError) as err:
        with atomic_path(tmp_path / "n.json"):
            (tmp_path / "missing-input.png").read_bytes()
    assert "missing-input.png" in cli.user_message(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]
