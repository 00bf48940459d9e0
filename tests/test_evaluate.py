"""`stylepipe evaluate` and `stylepipe report` on tiny real inputs (random networks)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylepipe.models.transformer import TransformerNet
from stylepipe.models.vgg import random_state_dict
from conftest import tiny_params_dict
from stylepipe.report import gallery_size

STYLES = ("mosaic", "waves")
EVAL = {"astronaut": (48, 40), "coffee": (40, 56), "rocket": (64, 64)}


def _stylepipe(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "stylepipe", *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _image(path: Path, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Inputs for two styles, then evaluate both and report (each command run for real)."""
    import yaml
    from conftest import tiny_params_dict

    root = tmp_path_factory.mktemp("evaluate")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict()))
    torch.save(random_state_dict(0), root / "vgg.pth")
    for i, (name, size) in enumerate(EVAL.items()):
        _image(root / "eval" / f"{name}.png", size, seed=i)
    for s, style in enumerate(STYLES):
        torch.manual_seed(s)
        torch.save(TransformerNet().state_dict(), root / f"{style}.pth")
        _image(root / "styles" / f"{style}.png", (40, 30), seed=10 + s)
        for i, (name, size) in enumerate(EVAL.items()):
            _image(root / "stylized" / style / f"{name}.png", size, seed=100 * s + i)
        (root / f"{style}-summary.json").write_text(json.dumps({"images_per_s": 12.5, "wall_time_s": 3.0}))
        out = root / "metrics" / f"{style}.json"
        _stylepipe(
            "evaluate", "--params", params, "--style", style, "--model", root / f"{style}.pth",
            "--eval-images", root / "eval", "--stylized", root / "stylized" / style,
            "--style-image", root / "styles" / f"{style}.png", "--loss-network", root / "vgg.pth",
            "--train-summary", root / f"{style}-summary.json", "--output", out,
            "--speed", root / "speed" / f"{style}.json",
        )
    report = ["report", "--params", params, "--metrics-dir", root / "metrics", "--eval-images", root / "eval",
              "--stylized-root", root / "stylized"]
    _stylepipe(*report, "--output", root / "metrics.json", "--gallery", root / "gallery.png")
    _stylepipe(*report, "--output", root / "again.json", "--gallery", root / "again.png")
    return root


def test_metrics_are_finite_and_complete(run):
    data = json.loads((run / "metrics" / "waves.json").read_text())
    # only values the same model and images reproduce: throughput has a file of its own
    assert set(data) == {"content_loss", "style_loss", "tv_loss", "total_loss", "content_loss_unweighted",
                         "style_loss_unweighted", "tv_loss_unweighted", "ssim", "model_size_mb", "model_params",
                         "eval_images"}
    assert all(math.isfinite(value) for value in data.values()), data
    assert data["total_loss"] == pytest.approx(data["content_loss"] + data["style_loss"] + data["tv_loss"])
    # the weighted losses are the unweighted ones times the params' weights (tv_weight 0: no TV term)
    train = tiny_params_dict()["train"]
    assert data["content_loss"] == pytest.approx(train["content_weight"] * data["content_loss_unweighted"])
    assert data["style_loss"] == pytest.approx(train["style_weight"] * data["style_loss_unweighted"])
    assert train["tv_weight"] == 0 and data["tv_loss"] == 0 and data["tv_loss_unweighted"] > 0
    assert data["content_loss"] > 0 and data["style_loss"] > 0
    assert -1 <= data["ssim"] <= 1
    assert data["eval_images"] == len(EVAL)
    assert data["model_params"] == sum(p.numel() for p in TransformerNet().parameters())
    speed = json.loads((run / "speed" / "waves.json").read_text())
    assert speed["train_images_per_s"] == 12.5 and speed["train_wall_time_s"] == 3.0
    assert speed["stylize_images_per_s"] > 0 and speed["stylize_size"] == tiny_params_dict()["evaluate"]["speed_size"]


def _evaluate(run: Path, params: Path, style: str, out: Path) -> dict:
    _stylepipe(
        "evaluate", "--params", params, "--style", style, "--model", run / f"{style}.pth",
        "--eval-images", run / "eval", "--stylized", run / "stylized" / style,
        "--style-image", run / "styles" / f"{style}.png", "--loss-network", run / "vgg.pth",
        "--train-summary", run / f"{style}-summary.json", "--output", out,
    )
    return json.loads(out.read_text())


def test_unweighted_losses_do_not_depend_on_the_weights(run, tmp_path):
    """The same network and images evaluated with waves' style weight x5 and content weight x2 (a
    style's overrides, as `dvc exp run -S` sets them): the weighted losses scale, the unweighted stay."""
    import yaml

    params = yaml.safe_load((run / "params.yaml").read_text())
    train = params["train"]
    params["styles"]["waves"].update(style_weight=5 * train["style_weight"], content_weight=2 * train["content_weight"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    before = json.loads((run / "metrics" / "waves.json").read_text())
    after = _evaluate(run, tmp_path / "params.yaml", "waves", tmp_path / "waves.json")
    for loss in ("content_loss", "style_loss", "tv_loss"):
        assert after[f"{loss}_unweighted"] == pytest.approx(before[f"{loss}_unweighted"], rel=1e-6), loss
    assert after["style_loss"] == pytest.approx(5 * before["style_loss"], rel=1e-6)
    assert after["content_loss"] == pytest.approx(2 * before["content_loss"], rel=1e-6)
    assert after["ssim"] == before["ssim"]


def test_evaluate_and_stylize_do_not_import_lightning_or_torchvision(run, tmp_path):
    # they start in about half the time without them (Lightning alone takes 5-10 s to import)
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('loaded:', [m for m in ('pytorch_lightning', 'torchvision', "
            "'torchmetrics') if m in sys.modules]))\n"
            "from stylepipe.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    commands = {
        "evaluate": ["evaluate", "--params", run / "params.yaml", "--style", "waves", "--model", run / "waves.pth",
                     "--eval-images", run / "eval", "--stylized", run / "stylized" / "waves",
                     "--style-image", run / "styles" / "waves.png", "--loss-network", run / "vgg.pth",
                     "--train-summary", run / "waves-summary.json", "--output", tmp_path / "m.json",
                     "--speed", tmp_path / "s.json"],
        "stylize": ["stylize", "--model", run / "waves.pth", "--engine", "torch", "--output", tmp_path / "out",
                    run / "eval"],
    }
    for name, args in commands.items():
        proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.splitlines()[-1] == "loaded: []", (name, proc.stdout[-500:])
    assert (tmp_path / "m.json").is_file() and len(list((tmp_path / "out").glob("*.png"))) == len(EVAL)


def test_losses_differ_between_styles(run):
    a, b = (json.loads((run / "metrics" / f"{s}.json").read_text()) for s in STYLES)
    assert a["style_loss"] != b["style_loss"]


def test_ssim_of_identical_images_is_one():
    from stylepipe.evaluate import ssim

    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert ssim(image, image) == pytest.approx(1.0)
    assert ssim(image, 255 - image) < 0.5


def test_report_collects_all_styles(run):
    data = json.loads((run / "metrics.json").read_text())
    assert list(data) == sorted(STYLES)
    assert data["waves"] == json.loads((run / "metrics" / "waves.json").read_text())


def test_gallery_grid_and_determinism(run):
    with Image.open(run / "gallery.png") as gallery:
        assert gallery.size == gallery_size(1 + len(STYLES), len(EVAL))
        assert gallery.mode == "RGB"
    assert (run / "gallery.png").read_bytes() == (run / "again.png").read_bytes()
    assert (run / "metrics.json").read_bytes() == (run / "again.json").read_bytes()


def test_missing_stylized_image_is_named(run, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "stylepipe", "report", "--params", str(run / "params.yaml"),
         "--metrics-dir", str(run / "metrics"), "--eval-images", str(run / "eval"), "--stylized-root", str(tmp_path),
         "--output", str(tmp_path / "m.json"), "--gallery", str(tmp_path / "g.png")],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "astronaut.png" in proc.stderr
    assert not (tmp_path / "m.json").exists()


def _report(run: Path, out: Path, styles: dict, *extra: str) -> subprocess.CompletedProcess:
    """`stylepipe report` over ``run``'s files with a params file whose `styles` are ``styles``."""
    import yaml

    params = yaml.safe_load((run / "params.yaml").read_text())
    params["styles"] = styles
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run(
        [sys.executable, "-m", "stylepipe", "report", "--params", str(out / "params.yaml"),
         "--metrics-dir", str(run / "metrics"), "--eval-images", str(run / "eval"),
         "--stylized-root", str(run / "stylized"), *extra,
         "--output", str(out / "metrics.json"), "--gallery", str(out / "gallery.png")],
        capture_output=True, text=True,
    )


def test_report_covers_the_styles_of_the_params_only(run, tmp_path):
    # mosaic's files are all still there (a style removed from params.yaml leaves
    # them behind); the report covers the params' styles only
    proc = _report(run, tmp_path, {"waves": {"generate": "waves"}}, "--style-images-dir", str(run / "styles"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mosaic" in proc.stdout  # named as left out
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data == {"waves": json.loads((run / "metrics" / "waves.json").read_text())}
    with Image.open(tmp_path / "gallery.png") as gallery:
        # the header row and waves' row; a column for the style image, then each evaluation image
        assert gallery.size == gallery_size(2, 1 + len(EVAL))


def test_report_names_a_missing_style_of_the_params(run, tmp_path):
    proc = _report(run, tmp_path, {"waves": {"generate": "waves"}, "dots": {"generate": "dots"}})
    assert proc.returncode != 0
    assert "dots.json" in proc.stderr
    assert not (tmp_path / "metrics.json").exists()


def _dark(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(int).sum(axis=2) < 300


def test_gallery_wraps_long_style_names_and_names_the_columns(run, tmp_path):
    """A style named like an experiment (`rain-princess-style-weight-5e10`) is readable in full:
    its label wraps inside the label column instead of running under the images; each column
    has its name (style, then each evaluation image) above it."""
    import shutil

    from stylepipe.report import CELL, LABEL_WIDTH, PAD

    name = "rain-princess-style-weight-5e10"
    metrics, stylized, styles = tmp_path / "metrics", tmp_path / "stylized", tmp_path / "styles"
    metrics.mkdir()
    styles.mkdir()
    shutil.copy(run / "metrics" / "waves.json", metrics / f"{name}.json")
    shutil.copytree(run / "stylized" / "waves", stylized / name)
    shutil.copy(run / "styles" / "waves.png", styles / f"{name}.png")
    import yaml

    params = yaml.safe_load((run / "params.yaml").read_text())
    params["styles"] = {name: {"generate": "waves"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _stylepipe("report", "--params", tmp_path / "params.yaml", "--metrics-dir", metrics, "--eval-images", run / "eval",
               "--stylized-root", stylized, "--style-images-dir", styles,
               "--output", tmp_path / "metrics.json", "--gallery", tmp_path / "gallery.png")
    pixels = np.asarray(Image.open(tmp_path / "gallery.png").convert("RGB"))
    assert pixels.shape[:2] == gallery_size(2, 1 + len(EVAL))[::-1]
    header = pixels.shape[0] - 2 * (CELL + PAD) - PAD  # above the content row and the style's row
    # the style's label: whole lines of text in the label column, none reaching the images
    top = header + PAD + (CELL + PAD)
    label = _dark(pixels[top:top + CELL, :LABEL_WIDTH + PAD])
    assert not label[:, LABEL_WIDTH - PAD:].any(), "the label runs into the image column"
    rows = label.any(axis=1)
    bands = int(rows[0]) + int(np.sum(rows[1:] & ~rows[:-1]))
    assert bands >= 3, f"{name} should wrap into lines (rain-princess- / style-weight- / 5e10), got {bands}"
    # a name above each column: text on a white strip
    for c in range(1 + len(EVAL)):
        left = LABEL_WIDTH + PAD + c * (CELL + PAD)
        strip = pixels[:header, left:left + CELL]
        assert _dark(strip).any(), f"column {c} has no name above it"
        assert (strip.astype(int).sum(axis=2) == 3 * 255).mean() > 0.7


def test_wrap_text_keeps_every_character_within_the_width():
    from PIL import ImageFont

    from stylepipe.report import wrap_text

    font = ImageFont.load_default(size=16)
    for text in ("rain-princess-style-weight-5e10", "a_very_long_name.with.dots and spaces", "x" * 60, "short"):
        lines = wrap_text(text, font, 120)
        assert "".join(lines).replace(" ", "") == text.replace(" ", "")
        assert all(font.getlength(line) <= 120 for line in lines)
    lines = wrap_text("rain-princess-style-weight-5e10", font, 120)
    assert len(lines) >= 2 and all(line.endswith("-") for line in lines[:-1])  # broken at the hyphens
    cut = wrap_text("x" * 200, font, 50, max_lines=2)
    assert len(cut) == 2 and cut[-1].endswith("…")


def _curves(root: Path, style: str, lr: list[float], tv: float = 0.0) -> None:
    """A curves.csv as `stylepipe train` writes it: losses falling over 4 logged steps."""
    path = root / style / "curves.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["step,content_loss,style_loss,tv_loss,total_loss,lr"]
    for i, step in enumerate((10, 20, 30, 40)):
        content, style_loss = 1e5 / (i + 1), 5e5 / (i + 1) ** 2
        rows.append(f"{step},{content},{style_loss},{tv},{content + style_loss + tv},{lr[i]}")
    path.write_text("\n".join(rows) + "\n")


def _charts(svg: str) -> list[str]:
    """The chart titles of a curves picture (which also checks that it is well-formed XML)."""
    import xml.etree.ElementTree as ET

    ns = "{http://www.w3.org/2000/svg}"
    root = ET.fromstring(svg)
    return [t.text for t in root.iter(f"{ns}text") if t.get("class") == "title"][1:]  # [0]: the figure's title


def test_report_draws_the_training_curves_of_each_style(run, tmp_path):
    train = tmp_path / "train"
    _curves(train, "mosaic", lr=[1e-3] * 4)
    _curves(train, "waves", lr=[1e-3] * 4)
    _curves(train, "removed", lr=[1e-3] * 4)  # not under `styles`: left out
    styles = {"mosaic": {"generate": "mosaic"}, "waves": {"generate": "waves"}}
    for out in ("a", "b"):
        proc = _report(run, tmp_path / out, styles, "--train-dir", str(train), "--curves", str(tmp_path / out / "c.svg"))
        assert proc.returncode == 0, proc.stderr[-3000:]
    svg = (tmp_path / "a" / "c.svg").read_text()
    # TV weight 0 (a zero TV loss) and a constant learning rate draw no chart
    assert _charts(svg) == ["total_loss", "content_loss", "style_loss"]
    assert "mosaic" in svg and "waves" in svg and "removed" not in svg
    assert svg.count("<polyline") == 3 * 2  # a line per style in each chart
    assert (tmp_path / "b" / "c.svg").read_bytes() == (tmp_path / "a" / "c.svg").read_bytes()

    # a schedule that moves the learning rate, and a TV term, get their charts
    _curves(train, "waves", lr=[1e-3, 1e-3, 5e-4, 2.5e-4], tv=7.0)
    proc = _report(run, tmp_path / "c", styles, "--train-dir", str(train), "--curves", str(tmp_path / "c" / "c.svg"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _charts((tmp_path / "c" / "c.svg").read_text()) == ["total_loss", "content_loss", "style_loss",
                                                                "tv_loss", "lr"]
    assert "stroke-dasharray" not in (tmp_path / "c" / "c.svg").read_text()

    # validation losses, where training wrote them: a dashed line in the style's colour
    (train / "waves" / "val_curves.csv").write_text("step,content_loss,style_loss,tv_loss,total_loss\n"
                                                    "20,9e4,4e5,7,4.9e5\n40,5e4,1e5,7,1.5e5\n")
    proc = _report(run, tmp_path / "d", styles, "--train-dir", str(train), "--curves", str(tmp_path / "d" / "c.svg"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    svg = (tmp_path / "d" / "c.svg").read_text()
    assert svg.count("stroke-dasharray=") == 4  # total, content, style and TV loss; no validation lr
    assert "<title>waves, validation</title>" in svg and "dashed: validation" in svg
    assert svg.count("<circle") == 4 * 2  # each validation marked, in each of the four charts


def test_report_names_missing_or_broken_curves(run, tmp_path):
    train = tmp_path / "train"
    _curves(train, "waves", lr=[1e-3] * 4)
    styles = {"mosaic": {"generate": "mosaic"}, "waves": {"generate": "waves"}}
    curves = ("--train-dir", str(train), "--curves", str(tmp_path / "c.svg"))
    proc = _report(run, tmp_path / "out", styles, *curves)
    assert proc.returncode == 2
    assert str(train / "mosaic" / "curves.csv") in proc.stderr and "stylepipe train" in proc.stderr
    assert not (tmp_path / "c.svg").exists() and not (tmp_path / "out" / "metrics.json").exists()

    (train / "mosaic").mkdir()
    (train / "mosaic" / "curves.csv").write_text("")
    proc = _report(run, tmp_path / "out", styles, *curves)
    assert proc.returncode == 2 and "mosaic/curves.csv: not a curves CSV" in proc.stderr

    proc = _report(run, tmp_path / "out", styles, "--curves", str(tmp_path / "c.svg"))
    assert proc.returncode == 2 and "--curves needs --train-dir" in proc.stderr


def _evaluate_here(run: Path, eval_dir: Path, stylized: Path, out: Path, capsys, model: Path | None = None):
    """`stylepipe evaluate` of waves in this process: (exit status, stderr, metrics or None)."""
    from stylepipe.cli import main

    capsys.readouterr()
    status = main([
        "evaluate", "--params", str(run / "params.yaml"), "--style", "waves",
        "--model", str(model or run / "waves.pth"), "--eval-images", str(eval_dir), "--stylized", str(stylized),
        "--style-image", str(run / "styles" / "waves.png"), "--loss-network", str(run / "vgg.pth"),
        "--train-summary", str(run / "waves-summary.json"), "--output", str(out),
    ])
    err = capsys.readouterr().err
    return status, err, json.loads(out.read_text()) if status == 0 else None


def test_evaluation_images_are_the_ones_stylize_reads(run, tmp_path, capsys):
    """Hidden files (macOS's ._name copies) and subfolders are no evaluation images, for stylize as here."""
    eval_dir, stylized = tmp_path / "eval", tmp_path / "stylized"
    _image(eval_dir / "a.png", (24, 16), seed=1)
    _image(stylized / "a.png", (24, 16), seed=2)
    (eval_dir / "._a.png").write_bytes(b"\0\5\26\7 AppleDouble")
    _image(eval_dir / "more" / "b.png", (24, 16), seed=3)
    status, err, metrics = _evaluate_here(run, eval_dir, stylized, tmp_path / "m.json", capsys)
    assert status == 0, err
    assert metrics["eval_images"] == 1


def test_two_evaluation_images_of_one_name_are_refused(run, tmp_path, capsys):
    # stylize would write both to a.png: measuring both against it would count one stylization twice
    eval_dir, stylized = tmp_path / "eval", tmp_path / "stylized"
    _image(eval_dir / "a.png", (24, 16), seed=1)
    _image(eval_dir / "A.jpg", (24, 16), seed=2)
    _image(stylized / "a.png", (24, 16), seed=3)
    status, err, _ = _evaluate_here(run, eval_dir, stylized, tmp_path / "m.json", capsys)
    assert status == 2 and "A.jpg" in err and "a.png" in err and "rename one" in err, err
    assert not (tmp_path / "m.json").exists()


def test_stylized_images_that_are_not_their_content_images_are_refused(run, tmp_path, capsys):
    eval_dir, stylized = tmp_path / "eval", tmp_path / "stylized"
    _image(eval_dir / "a.png", (40, 30), seed=1)
    _image(stylized / "a.png", (30, 40), seed=2)  # another picture's shape: never a rescaled stylization of a.png
    status, err, _ = _evaluate_here(run, eval_dir, stylized, tmp_path / "m.json", capsys)
    assert status == 2 and "30x40 px" in err and "40x30 px" in err and "stylepipe stylize" in err, err
    # a broken stylized image says what to do too
    (stylized / "a.png").write_bytes((eval_dir / "a.png").read_bytes()[:60])
    status, err, _ = _evaluate_here(run, eval_dir, stylized, tmp_path / "m.json", capsys)
    assert status == 2 and str(stylized / "a.png") in err and "stylepipe stylize` for this style again" in err, err
    assert not (tmp_path / "m.json").exists()


def test_images_too_small_for_the_loss_network_are_named(run, tmp_path, capsys):
    # relu4_3 lies behind three 2x2 max-pools: under 8 px a side torch fails deep inside VGG
    eval_dir, stylized = tmp_path / "eval", tmp_path / "stylized"
    _image(eval_dir / "strip.png", (300, 5), seed=1)
    _image(stylized / "strip.png", (256, 4), seed=2)  # stylize's --max-size 256
    status, err, _ = _evaluate_here(run, eval_dir, stylized, tmp_path / "m.json", capsys)
    assert status == 2 and "256x4 px, too small" in err and "at least 8 px" in err, err


def test_content_is_measured_as_the_network_saw_it(run, tmp_path, capsys):
    """A 'stylization' that is exactly the network's input (the content image shrunk by stylize's
    --max-size, as stylize shrinks it) loses nothing to its content image."""
    from stylepipe.stylize.inputs import load_content

    eval_dir, stylized = tmp_path / "eval", tmp_path / "stylized"
    _image(eval_dir / "a.png", (64, 48), seed=1)
    stylized.mkdir()
    load_content(eval_dir / "a.png", (32, 24)).rgb.save(stylized / "a.png")
    status, err, metrics = _evaluate_here(run, eval_dir, stylized, tmp_path / "m.json", capsys)
    assert status == 0, err
    assert metrics["content_loss_unweighted"] == 0 and metrics["ssim"] == pytest.approx(1.0)


def test_a_transparent_image_is_measured_on_the_network_s_output_under_its_alpha(run, tmp_path, capsys):
    """The network sees a transparent input on white and stylizes all of it; stylize keeps the input's
    alpha over that output. Measured, the output counts as the network made it, not as shown on white."""
    eval_dir, stylized, opaque = tmp_path / "eval", tmp_path / "stylized", tmp_path / "opaque"
    _image(eval_dir / "a.png", (40, 30), seed=1)
    alpha = np.full((30, 40), 255, np.uint8)
    alpha[:, :20] = 0  # left half transparent
    content = Image.open(eval_dir / "a.png").convert("RGBA")
    content.putalpha(Image.fromarray(alpha))
    content.save(eval_dir / "a.png")
    _image(opaque / "a.png", (40, 30), seed=2)  # the network's output
    stylized.mkdir()
    output = Image.open(opaque / "a.png").convert("RGBA")
    output.putalpha(Image.fromarray(alpha))
    output.save(stylized / "a.png")  # as stylize writes it
    status, err, with_alpha = _evaluate_here(run, eval_dir, stylized, tmp_path / "m1.json", capsys)
    assert status == 0, err
    status, err, without = _evaluate_here(run, eval_dir, opaque, tmp_path / "m2.json", capsys)
    assert status == 0, err
    assert with_alpha == without


def test_a_diverged_network_is_refused(run, tmp_path, capsys):
    # its NaN outputs become black images, which would measure as finite numbers
    state = torch.load(run / "waves.pth")
    state["conv1.conv2d.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    status, err, _ = _evaluate_here(run, run / "eval", run / "stylized" / "waves", tmp_path / "m.json", capsys,
                                    model=tmp_path / "nan.pth")
    assert status == 2 and "nan.pth: 1 of its" in err and "diverged" in err, err
    assert not (tmp_path / "m.json").exists()


def _report_in_process(capsys, run: Path, out: Path, *extra) -> tuple[int, str, str]:
    """`stylepipe report` in this process (faster than a subprocess): exit status, stdout, stderr."""
    from stylepipe import cli

    code = cli.main([str(a) for a in ("report", "--params", run / "params.yaml", *extra,
                                      "--output", out / "metrics.json", "--gallery", out / "gallery.png")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _copy_inputs(run: Path, root: Path) -> list:
    """A copy of ``run``'s report inputs under ``root`` (to damage one file); the report's arguments."""
    import shutil

    for name in ("metrics", "eval", "stylized", "styles"):
        shutil.copytree(run / name, root / name)
    shutil.copy(run / "params.yaml", root / "params.yaml")
    return ["--metrics-dir", root / "metrics", "--eval-images", root / "eval", "--stylized-root", root / "stylized",
            "--style-images-dir", root / "styles"]


def test_report_names_an_unreadable_image_and_the_step_that_writes_it(run, tmp_path, capsys):
    """A truncated or garbled image (an interrupted copy, a disk that filled up) is named with the
    step to rerun, in one line, and nothing is written."""
    from test_cli_errors import one_error_line

    args = _copy_inputs(run, tmp_path)
    cases = {"eval/coffee.png": "run `stylepipe fetch eval` again",
             "stylized/waves/rocket.png": "run `stylepipe stylize` for waves again",
             "styles/mosaic.png": "run `stylepipe fetch style` for mosaic again"}
    for name, remedy in cases.items():
        path = tmp_path / name
        good = path.read_bytes()
        for broken in (good[: len(good) // 3], b"not an image\n"):
            path.write_bytes(broken)
            code, _, err = _report_in_process(capsys, tmp_path, tmp_path / "out", *args)
            line = one_error_line(err, "report")
            assert code == 2 and line.startswith(f"stylepipe report: error: {path}: ") and line.endswith(remedy), line
        path.write_bytes(good)
    assert not (tmp_path / "out").exists()


def test_report_refuses_a_metrics_file_that_is_not_numbers(run, tmp_path, capsys):
    """results/metrics.json must stay what `dvc metrics diff` reads: a damaged per-style file is named
    before any output is written (it was copied in, or failed the final JSON write after the gallery)."""
    from test_cli_errors import one_error_line

    args = _copy_inputs(run, tmp_path)
    for style in STYLES:
        _curves(tmp_path / "train", style, lr=[1e-3] * 4)
    path = tmp_path / "metrics" / "waves.json"
    for text, named in (("[1, 2]", "not an object of metrics"), ('{"ssim": NaN}', "ssim: nan"),
                        ('{"ssim": "0.4"}', "ssim: '0.4'")):
        path.write_text(text)
        code, _, err = _report_in_process(capsys, tmp_path, tmp_path / "out", *args, "--train-dir", tmp_path / "train",
                                          "--curves", tmp_path / "out" / "curves.svg")
        line = one_error_line(err, "report")
        assert code == 2 and f"{path}: not a metrics file ({named})" in line and "stylepipe evaluate" in line, line
        assert not (tmp_path / "out").exists()


def test_report_curves_with_no_rows_or_a_damaged_value(run, tmp_path, capsys):
    """A curves.csv with its header only (a run stopped before its first logged step) draws no line
    instead of failing; text that is not a number is named, not drawn as a diverged run."""
    from test_cli_errors import one_error_line

    train = tmp_path / "train"
    _curves(train, "mosaic", lr=[1e-3] * 4)
    (train / "waves").mkdir()
    (train / "waves" / "curves.csv").write_text("step,content_loss,style_loss,tv_loss,total_loss,lr\n")
    args = ["--metrics-dir", run / "metrics", "--eval-images", run / "eval", "--stylized-root", run / "stylized",
            "--train-dir", train, "--curves", tmp_path / "c.svg"]
    code, _, err = _report_in_process(capsys, run, tmp_path, *args)
    assert code == 0, err
    svg = (tmp_path / "c.svg").read_text()
    assert _charts(svg) == ["total_loss", "content_loss", "style_loss"] and svg.count("<polyline") == 3

    (train / "waves" / "curves.csv").write_text("step,content_loss,style_loss,tv_loss,total_loss,lr\n"
                                                "10,5.0,6.0,0,11.0,0.001\n20,4.0,5.O,0,9.0,0.001\n")
    code, _, err = _report_in_process(capsys, run, tmp_path / "out", *args)
    assert code == 2 and "line 3, column style_loss: '5.O' is not a number" in one_error_line(err, "report")


def _svg_texts(svg: str) -> list:
    import xml.etree.ElementTree as ET

    return list(ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text"))


def test_chart_labels_fit_and_log_axes_name_the_last_values():
    """The last step's label is not cut at the chart's right edge; the y axis ends on labelled values
    on both sides of the data, and a loss falling two decades, as a style loss does early on, gets
    2× and 5× ticks: a loss's final value can be read off the axis."""
    import pandas as pd

    from stylepipe.charts import svg_chart

    frame = pd.DataFrame({"step": [10, 20000, 40000], "total_loss": [5e7, 4e5, 3e5]})  # a last tick at the edge
    svg = svg_chart([("a", "#000", frame)], "total_loss", width=380)
    labels = [t for t in _svg_texts(svg) if t.get("text-anchor") == "middle" and t.get("class") is None]
    assert labels and labels[-1].text == "40000"
    assert all(float(t.get("x")) + 6 * len(t.text) / 2 <= 380 for t in labels)  # 11 px digits: under 6 px each
    y_labels = [t.text for t in _svg_texts(svg) if t.get("text-anchor") == "end"]
    assert "(log y)" in svg and y_labels == ["2e+05", "5e+05", "1e+06", "2e+06", "5e+06", "1e+07", "2e+07", "5e+07"]
    # a linear axis, too, runs from a labelled value below the data to one above it
    frame = pd.DataFrame({"step": [10, 20, 30], "content_loss": [4.4e5, 1.7e5, 1.3e5]})
    svg = svg_chart([("a", "#000", frame)], "content_loss", width=380)
    y_labels = [t.text for t in _svg_texts(svg) if t.get("text-anchor") == "end"]
    assert "(log y)" not in svg and y_labels == ["1e+05", "2e+05", "3e+05", "4e+05", "5e+05"]


def test_curves_legend_tells_twelve_long_named_styles_apart():
    """Twelve styles, two of them experiments whose names differ only at the end: each has a colour
    of its own and its full name in the legend (a tooltip is no help in a printed figure)."""
    import xml.etree.ElementTree as ET

    import pandas as pd

    from stylepipe.report import draw_curves

    names = [f"style{i}" for i in range(10)] + ["rain-princess-style-weight-5e10", "rain-princess-style-weight-1e11"]
    frame = pd.DataFrame({"step": [1, 2], "total_loss": [2.0, 1.0]})
    svg = draw_curves({name: frame for name in sorted(names)})
    ns = "{http://www.w3.org/2000/svg}"
    legend = [g for g in ET.fromstring(svg).findall(f"{ns}g") if g.find(f"{ns}rect") is not None]
    assert sorted(g.find(f"{ns}text").text for g in legend) == sorted(names)
    assert len({g.find(f"{ns}rect").get("fill") for g in legend}) == 12


def test_long_curves_are_thinned_to_what_shows():
    """A curve logged at every step of a long run draws the same picture from a few points per pixel
    column: the SVG stays small, and a spike in the middle still shows."""
    import pandas as pd

    from stylepipe.charts import svg_chart

    steps = list(range(1, 40001))
    loss = [1.0 + (i % 7) / 10 for i in steps]
    loss[20000] = 50.0  # one bad batch
    svg = svg_chart([("a", "#000", pd.DataFrame({"step": steps, "total_loss": loss}))], "total_loss", width=380)
    points = [p.split(",") for p in svg.split('points="')[1].split('"')[0].split()]
    assert len(points) <= 4 * 380 and len(svg) < 40_000
    top = min(float(y) for _, y in points)
    assert top == pytest.approx(26.0)  # the spike reaches the top of the frame


def test_the_gallery_shows_the_evaluation_images_evaluate_measures(run, tmp_path, capsys):
    """A hidden file beside the evaluation images (macOS writes `._name.png` on other file systems)
    is no column of the gallery, as stylize and evaluate leave it out; two images that stylize
    would write to one name are refused, naming both, before anything is written."""
    import shutil

    args = _copy_inputs(run, tmp_path / "in")
    eval_dir = tmp_path / "in" / "eval"
    first = sorted(eval_dir.iterdir())[0]
    (eval_dir / f"._{first.name}").write_bytes(b"\0\5\26\7 resource fork")
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = _report_in_process(capsys, run, out, *args)
    assert code == 0, err
    with Image.open(out / "gallery.png") as gallery:
        assert gallery.size == gallery_size(1 + len(STYLES), 1 + len(EVAL))

    (eval_dir / f"._{first.name}").unlink()
    shutil.copy(first, eval_dir / f"{first.stem}.jpg")
    (out / "metrics.json").unlink()
    code, _, err = _report_in_process(capsys, run, out, *args)
    assert code == 2 and f"{first.stem}.jpg" in err and "rename one of them" in err, err
    assert not (out / "metrics.json").exists()


def test_a_style_image_too_large_for_the_memory_left_is_refused_naming_the_evaluate_job(run, tmp_path, capsys,
                                                                                         monkeypatch):
    """evaluate computes the style's Gram matrices as train does, in a job of its own (resources.evaluate)."""
    import yaml

    from stylepipe import training_memory
    from stylepipe.cli import main
    from stylepipe.memory import Available

    params = yaml.safe_load((run / "params.yaml").read_text())
    params["train"]["style_size"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _image(tmp_path / "scan.png", (3000, 2000), seed=1)
    # a Slurm job's 2 GB: the real limits are exercised by the train tests under `ulimit -v`
    monkeypatch.setattr(training_memory, "available_memory", lambda: Available(2 * 10**9, "the cgroup's memory limit"))
    capsys.readouterr()
    status = main([
        "evaluate", "--params", str(tmp_path / "params.yaml"), "--style", "waves", "--model", str(run / "waves.pth"),
        "--eval-images", str(run / "eval"), "--stylized", str(run / "stylized" / "waves"),
        "--style-image", str(tmp_path / "scan.png"), "--loss-network", str(run / "vgg.pth"),
        "--train-summary", str(run / "waves-summary.json"), "--output", str(tmp_path / "metrics.json"),
    ])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 2
    assert line.startswith("stylepipe evaluate: error: the style image (3000x2000 px, train.style_size = null) needs "
                           "at least 4.5 GB to compute its Gram matrices, and this process has 2.0 GB free under the "
                           "cgroup's memory limit: set train.style_size to "), line
    assert line.endswith("or give the job more memory (resources.evaluate.mem_mb)")
    assert not (tmp_path / "metrics.json").exists()
