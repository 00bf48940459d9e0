"""`stylepipe compare` on a real git + DVC history.

A temporary repository gets commits with different style weights; their
artifacts live in the DVC cache (not in git). The report must name every
revision, show every metric value and embed every image; a revision whose cache
objects are gone must render with the command that fetches them; and the page
must render in headless Chromium with its images loaded.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import tiny_params_dict

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       "GIT_AUTHOR_NAME": "stylepipe tests", "GIT_AUTHOR_EMAIL": "tests@example.org",
       "GIT_COMMITTER_NAME": "stylepipe tests", "GIT_COMMITTER_EMAIL": "tests@example.org"}
STYLES = ("waves", "mosaic")
IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
# Each commit's stylized images get their own saturated colour, so the browser
# screenshot can tell that they were drawn.
COLOURS = {"A": (230, 30, 30), "B": (30, 60, 230), "C": (20, 200, 60)}


def run(*cmd: str, cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _png(path: Path, colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (48, 36)) -> None:
    """A noisy image around ``colour`` (noise so files differ between images)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None, :] + rng.integers(-20, 21, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _write_artifacts(repo: Path, tag: str, style_weight: float) -> dict:
    """What the pipeline would produce: metrics, curves, eval and stylized images."""
    metrics = {}
    for i, style in enumerate(STYLES):
        content = 1000.0 + i + (7.0 if tag != "A" else 0.0)
        style_loss = style_weight / 1e7 + i
        metrics[style] = {"content_loss": content, "style_loss": style_loss, "total_loss": content + style_loss,
                          "ssim": 0.5 - 0.01 * i - (0.1 if tag != "A" else 0.0), "train_images_per_s": 10.0,
                          "train_wall_time_s": 3.0, "stylize_images_per_s": 20.0, "model_size_mb": 6.4}
        steps = np.arange(1, 5)
        rows = ["step,content_loss,style_loss,tv_loss,total_loss,lr"]
        rows += [f"{s},{content / s},{style_loss * 10 / s},0.0,{content / s + style_loss * 10 / s},0.001" for s in steps]
        curves = repo / f"results/train/{style}/curves.csv"
        curves.parent.mkdir(parents=True, exist_ok=True)
        curves.write_text("\n".join(rows) + "\n")
        (repo / f"results/metrics/{style}.json").parent.mkdir(parents=True, exist_ok=True)
        (repo / f"results/metrics/{style}.json").write_text(json.dumps(metrics[style]))
        for j, image in enumerate(IMAGES):
            _png(repo / f"results/stylized/{style}/{image}.png", COLOURS[tag], seed=100 * j + 10 * i + ord(tag))
    for j, image in enumerate(IMAGES):
        _png(repo / f"data/eval/{image}.png", (128, 128, 128), seed=j)
    (repo / "results/metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _commit(repo: Path, tag: str, style_weight: float, subject: str) -> tuple[str, dict]:
    params = tiny_params_dict()
    params["styles"]["waves"]["style_weight"] = style_weight
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    metrics = _write_artifacts(repo, tag, style_weight)
    run("dvc", "add", "-q", "data/eval", "results/stylized", "results/train", cwd=repo)
    run("git", "add", "params.yaml", "results/metrics.json", "results/metrics", "data/eval.dvc",
        "results/stylized.dvc", "results/train.dvc", "data/.gitignore", "results/.gitignore", cwd=repo)
    run("git", "commit", "-q", "-m", subject, cwd=repo)
    return run("git", "rev-parse", "HEAD", cwd=repo).strip(), metrics


def _drop_cache_objects(repo: Path, dvc_file: str) -> None:
    """Delete a directory output's objects from the cache, as if never fetched."""
    md5 = yaml.safe_load((repo / dvc_file).read_text())["outs"][0]["md5"]
    cache = repo / ".dvc/cache/files/md5"
    listing = cache / md5[:2] / md5[2:]
    for entry in json.loads(listing.read_text()):
        (cache / entry["md5"][:2] / entry["md5"][2:]).unlink(missing_ok=True)
    listing.unlink()
    shutil.rmtree(repo / ".dvc/tmp", ignore_errors=True)  # DVC's own memo of directory listings


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Commits A and B (different waves style weights) with artifacts in the cache; C with its images gone."""
    repo = tmp_path_factory.mktemp("history")
    run("git", "init", "-q", "-b", "main", cwd=repo)
    run("dvc", "init", "-q", cwd=repo)
    run("git", "commit", "-q", "-m", "Initialize DVC", cwd=repo)
    sha_a, metrics_a = _commit(repo, "A", 1e10, "Baseline style weight")
    sha_b, metrics_b = _commit(repo, "B", 5e10, "Stronger waves style weight")
    sha_c, _ = _commit(repo, "C", 2e10, "Images lost from the cache")
    _drop_cache_objects(repo, "results/stylized.dvc")
    run("git", "checkout", "-q", sha_b, cwd=repo)
    run("dvc", "checkout", "-q", "--force", cwd=repo)
    return {"repo": repo, "A": sha_a, "B": sha_b, "C": sha_c, "metrics": {"A": metrics_a, "B": metrics_b}}


@pytest.fixture(scope="module")
def report_ab(history, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    log = run("stylepipe", "compare", history["A"], history["B"], "--repo", str(history["repo"]),
              "--output", str(out / "report.html"), "--png", str(out / "sheet.png"), cwd=out)
    return {"html": (out / "report.html").read_text(), "path": out / "report.html", "sheet": out / "sheet.png",
            "log": log}


def _short(sha: str) -> str:
    return sha[:7]


def test_report_names_revisions_and_shows_metrics(history, report_ab):
    page = report_ab["html"]
    for tag, subject in (("A", "Baseline style weight"), ("B", "Stronger waves style weight")):
        assert _short(history[tag]) in page
        assert subject in page
        for style in STYLES:
            for name in ("content_loss", "style_loss", "ssim"):
                assert f"{history['metrics'][tag][style][name]:.4g}" in page, (tag, style, name)
    # the delta of the waves style loss, B against A: (5e10 - 1e10) / 1e7
    assert "+4000" in page
    # the changed params key, with both values
    assert "styles.waves.style_weight" in page
    assert "1e+10" in page and "5e+10" in page
    assert "missing" not in page.split("<body>")[1].lower().replace("cellmissing", "")


def test_report_embeds_every_image_and_nothing_external(report_ab):
    page = report_ab["html"]
    # per style and image: the content image and one stylization per revision
    assert page.count("data:image/png;base64,") == len(STYLES) * len(IMAGES) * (1 + 2)
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    assert "<link" not in page and "<script" not in page
    for match in re.finditer(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        Image.open(io.BytesIO(base64.b64decode(match.group(1)))).verify()
    # overlaid curves: one line per revision in each chart of each style
    assert page.count("<polyline") == len(STYLES) * 3 * 2  # total, content, style; tv is all zero


def test_contact_sheet_has_a_cell_per_image_and_revision(report_ab):
    sheet = np.asarray(Image.open(report_ab["sheet"]).convert("RGB")).astype(int)
    rows, columns = len(STYLES) * len(IMAGES), 1 + 2
    assert sheet.shape[0] >= rows * 192 and sheet.shape[1] >= columns * 192
    for tag in ("A", "B"):
        near = (np.abs(sheet - np.array(COLOURS[tag])).sum(axis=2) < 70).sum()
        assert near > 0.5 * rows * 48 * 36 * (192 / 48) ** 2, tag  # every cell of that column, scaled up


def test_missing_artifacts_render_with_fetch_hint(history, tmp_path):
    out = tmp_path / "report.html"
    log = run("stylepipe", "compare", history["A"], history["C"], "--repo", str(history["repo"]),
              "--output", str(out), cwd=tmp_path)
    page = html.unescape(out.read_text())
    short_c = _short(history["C"])
    assert f"git checkout {short_c} && dvc fetch results/stylized && git checkout -" in page
    assert "dvc fetch --all-commits results/stylized" in page
    assert "results/stylized/waves/astronaut.png" in page
    assert f"fetch them with: git checkout {short_c}" in log
    # A's images and every content image are still there; C's stylizations are placeholders
    assert page.count("data:image/png;base64,") == len(STYLES) * len(IMAGES) * 2
    assert page.count('class="cellmissing"') == len(STYLES) * len(IMAGES)
    # C's metrics and curves are in git/cache and still compared
    assert "Images lost from the cache" in page


def test_default_compares_head_with_workspace(history, tmp_path):
    repo = history["repo"]
    metrics = json.loads((repo / "results/metrics.json").read_text())
    metrics["waves"]["ssim"] = 0.123456
    (repo / "results/metrics.json").write_text(json.dumps(metrics))
    try:
        out = tmp_path / "report.html"
        run("stylepipe", "compare", "--output", str(out), cwd=repo)
        page = out.read_text()
    finally:
        run("git", "checkout", "-q", "--", "results/metrics.json", cwd=repo)
    assert _short(history["B"]) in page and "workspace" in page
    assert "0.1235" in page
    assert page.count("data:image/png;base64,") == len(STYLES) * len(IMAGES) * 3


def test_unknown_revision_is_a_clear_error(history, tmp_path):
    result = subprocess.run(["stylepipe", "compare", "no-such-rev", "--repo", str(history["repo"]),
                             "--output", str(tmp_path / "r.html")], env=ENV, capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown revision 'no-such-rev'" in result.stderr
    assert not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def _chromium_cmd(exe: str, profile: Path) -> list[str]:
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}"]


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report_ab, tmp_path):
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (CI installs Debian's `chromium` package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    # 1. Every <img> decoded: a copy of the page with a probe script, read back through --dump-dom.
    probe = tmp_path / "probe.html"
    probe.write_text(report_ab["html"].replace(
        "</body>",
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.body.setAttribute('data-probe',i.length+':'+i.filter(x=>x.complete&&x.naturalWidth>0).length);});"
        "</script></body>"))
    dom = subprocess.run(_chromium_cmd(exe, tmp_path / "profile1") + ["--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    expected = len(STYLES) * len(IMAGES) * 3
    assert f'data-probe="{expected}:{expected}"' in dom
    # 2. The untouched report's screenshot is not blank and shows both revisions' images.
    shot = tmp_path / "shot.png"
    subprocess.run(_chromium_cmd(exe, tmp_path / "profile2")
                   + [f"--screenshot={shot}", "--window-size=1280,4000", report_ab["path"].as_uri()],
                   capture_output=True, text=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 20
    for tag in ("A", "B"):
        near = (np.abs(pixels - np.array(COLOURS[tag])).sum(axis=2) < 70).sum()
        assert near > 4 * 48 * 36, f"revision {tag}'s stylized images are not visible in the screenshot"
