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
# Each commit's stylized images get their own saturated colour in the
# self-made history, so a screenshot can tell whether they were drawn.
COLOURS = {"A": (230, 30, 30), "B": (30, 60, 230)}
# The real tiny pipeline (shared with the other end-to-end tests) or artifacts made by hand.
USE_PIPELINE = os.environ.get("STYLEPIPE_COMPARE_PIPELINE", "0") == "1"


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


def _write_artifacts(repo: Path, tag: str, weights: dict[str, float]) -> None:
    """What the pipeline produces, made by hand: metrics, curves, eval and stylized images.

    Only a style whose weight differs from the baseline gets new outputs, as in
    a real rerun.
    """
    metrics = {}
    for i, style in enumerate(STYLES):
        changed = weights[style] != 1e10
        content = 1000.0 + i + (7.0 if changed else 0.0)
        style_loss = weights[style] / 1e7 + i
        metrics[style] = {"content_loss": content, "style_loss": style_loss, "total_loss": content + style_loss,
                          "ssim": 0.5 - 0.01 * i - (0.1 if changed else 0.0), "train_images_per_s": 10.0,
                          "train_wall_time_s": 3.0, "stylize_images_per_s": 20.0, "model_size_mb": 6.4}
        rows = ["step,content_loss,style_loss,tv_loss,total_loss,lr"]
        rows += [f"{s},{content / s},{style_loss * 10 / s},0.0,{content / s + style_loss * 10 / s},0.001"
                 for s in range(1, 5)]
        (repo / f"results/train/{style}").mkdir(parents=True, exist_ok=True)
        (repo / f"results/train/{style}/curves.csv").write_text("\n".join(rows) + "\n")
        (repo / "results/metrics").mkdir(parents=True, exist_ok=True)
        (repo / f"results/metrics/{style}.json").write_text(json.dumps(metrics[style]))
        colour = COLOURS["B" if changed else "A"]
        for j, image in enumerate(IMAGES):
            _png(repo / f"results/stylized/{style}/{image}.png", colour, seed=100 * j + 10 * i + sum(colour))
    for j, image in enumerate(IMAGES):
        _png(repo / f"data/eval/{image}.png", (128, 128, 128), seed=j)
    (repo / "results/metrics.json").write_text(json.dumps(metrics, indent=2))


def _self_made_history(repo: Path) -> dict:
    """Two commits whose artifacts are written by hand and tracked with `dvc add`."""
    run("git", "init", "-q", "-b", "main", cwd=repo)
    run("dvc", "init", "-q", cwd=repo)
    run("git", "commit", "-q", "-m", "Initialize DVC", cwd=repo)
    outs = ["data/eval"] + [f"results/stylized/{s}" for s in STYLES] + [f"results/train/{s}" for s in STYLES]
    shas = {}
    for tag, waves_weight, subject in (("A", 1e10, "Baseline style weight"),
                                       ("B", 5e10, "Stronger waves style weight")):
        params = tiny_params_dict()
        params["styles"]["waves"]["style_weight"] = waves_weight
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _write_artifacts(repo, tag, {"waves": waves_weight, "mosaic": 1e10})
        run("dvc", "add", "-q", *outs, cwd=repo)
        run("git", "add", "-A", cwd=repo)
        run("git", "commit", "-q", "-m", subject, cwd=repo)
        shas[tag] = run("git", "rev-parse", "HEAD", cwd=repo).strip()
    return shas


def _pipeline_history(repo: Path, tmp_path_factory) -> dict:
    """The shared tiny Snakemake run recorded with `dvc commit` (A), then `dvc repro` with a stronger waves weight (B)."""
    from test_pipeline_snakemake import snakemake_workspace

    shutil.copytree(snakemake_workspace(tmp_path_factory), repo, symlinks=True, dirs_exist_ok=True)
    run("dvc", "commit", "-q", "-f", cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-q", "-m", "Baseline style weight", cwd=repo)
    shas = {"A": run("git", "rev-parse", "HEAD", cwd=repo).strip()}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["styles"]["waves"]["style_weight"] = 5e10
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("dvc", "repro", cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-q", "-m", "Stronger waves style weight", cwd=repo)
    shas["B"] = run("git", "rev-parse", "HEAD", cwd=repo).strip()
    return shas


def _history(repo: Path, tmp_path_factory) -> dict:
    shas = _pipeline_history(repo, tmp_path_factory) if USE_PIPELINE else _self_made_history(repo)
    metrics = {tag: json.loads(run("git", "show", f"{sha}:results/metrics.json", cwd=repo))
               for tag, sha in shas.items()}
    return {"repo": repo, **shas, "metrics": metrics,
            "subjects": {"A": "Baseline style weight", "B": "Stronger waves style weight"}}


def _cache_objects(repo: Path, rev: str, target: str) -> set[str]:
    """md5s of a directory output's listing and files at ``rev``."""
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(str(repo), rev=rev)
    try:
        return {fs.info(target)["md5"]} | {fs.info(path)["md5"] for path in fs.find(target)}
    finally:
        fs.close()


def _drop_cache_objects(repo: Path, md5s: set[str]) -> None:
    """Delete objects from the cache, as if they had never been fetched."""
    cache = repo / ".dvc/cache/files/md5"
    for md5 in md5s:
        (cache / md5[:2] / md5[2:]).unlink()
    shutil.rmtree(repo / ".dvc/tmp", ignore_errors=True)  # DVC's memo of directory listings


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Commits A and B of the tiny project, B with a stronger waves style weight."""
    return _history(tmp_path_factory.mktemp("history"), tmp_path_factory)


def _stylized_colours(repo: Path, count: int = 12) -> list[tuple[int, int, int]]:
    """The most common colours (16 levels a channel) of the workspace's stylized images."""
    pixels = np.concatenate([np.asarray(Image.open(p).convert("RGB")).reshape(-1, 3)
                             for p in sorted((repo / "results/stylized").glob("*/*.png"))])
    values, counts = np.unique(pixels // 16, axis=0, return_counts=True)
    return [tuple(int(c) for c in values[i]) for i in np.argsort(counts)[::-1][:count]]


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
    page = html.unescape(report_ab["html"])
    metrics = history["metrics"]
    for tag in ("A", "B"):
        assert _short(history[tag]) in page
        assert history["subjects"][tag] in page
        for style in STYLES:
            for name in ("content_loss", "style_loss", "total_loss", "ssim"):
                assert f"{metrics[tag][style][name]:.4g}" in page, (tag, style, name)
    delta = metrics["B"]["waves"]["style_loss"] - metrics["A"]["waves"]["style_loss"]
    assert delta != 0 and f"{delta:+.4g}" in page
    # the changed params key, with both values
    assert re.search(r"styles\.waves\.style_weight</code></td><td><code>(1e\+10|—)</code></td>"
                     r"<td><code>5e\+10</code>", page)
    assert "missing" not in page.split("<body>")[1].lower().replace("cellmissing", "")


def test_report_embeds_every_image_and_nothing_external(report_ab):
    page = report_ab["html"]
    # per style and image: the content image and one stylization per revision
    assert page.count("data:image/png;base64,") == len(STYLES) * len(IMAGES) * (1 + 2)
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    assert "<link" not in page and "<script" not in page
    for match in re.finditer(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        Image.open(io.BytesIO(base64.b64decode(match.group(1)))).verify()
    # overlaid curves: one line per revision in each chart (total, content, style loss; TV is 0) of each style
    assert page.count("<polyline") == len(STYLES) * 3 * 2


def test_contact_sheet_has_a_cell_per_image_and_revision(history, report_ab):
    sheet = np.asarray(Image.open(report_ab["sheet"]).convert("RGB")).astype(int)
    rows, columns, cell = len(STYLES) * len(IMAGES), 1 + 2, 192
    assert sheet.shape[0] >= rows * cell and sheet.shape[1] >= columns * cell
    # each image is fitted into its cell: the sheet is covered by that much picture
    covered = 0
    for image in IMAGES:
        width, height = Image.open(history["repo"] / f"data/eval/{image}.png").size
        covered += cell * cell * min(width, height) / max(width, height)
    picture = (np.abs(sheet - 255).sum(axis=2) > 30).sum()
    assert picture > 0.9 * covered * len(STYLES) * columns


def test_missing_artifacts_render_with_fetch_hint(history, tmp_path):
    """B's waves images only in an unreachable remote: hint; once it is back, the hint's command works."""
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    shutil.copytree(history["repo"], repo, symlinks=True)
    run("dvc", "remote", "add", "-q", "-d", "store", str(remote), cwd=repo)
    run("dvc", "push", "-q", cwd=repo)
    target = "results/stylized/waves"
    only_b = _cache_objects(repo, history["B"], target) - _cache_objects(repo, history["A"], target)
    assert only_b, "B's waves images should differ from A's"
    _drop_cache_objects(repo, only_b)
    remote.rename(tmp_path / "remote-away")

    out = tmp_path / "report.html"
    log = run("stylepipe", "compare", history["A"], history["B"], "--output", str(out), cwd=repo)
    page = html.unescape(out.read_text())
    hint = f"git checkout {_short(history['B'])} && dvc fetch {target} && git checkout -"
    assert hint in page and f"fetch them with: {hint}" in log
    assert f"dvc fetch --all-commits {target}" in page
    for image in IMAGES:
        assert f"{target}/{image}.png" in page
    # B's waves stylizations are placeholders; everything else is still there
    assert page.count('class="cellmissing"') == len(IMAGES)
    assert page.count("data:image/png;base64,") == len(STYLES) * len(IMAGES) * 3 - len(IMAGES)
    assert f"{history['metrics']['B']['waves']['style_loss']:.4g}" in page

    (tmp_path / "remote-away").rename(remote)
    subprocess.run(hint, shell=True, cwd=repo, env=ENV, check=True, capture_output=True)
    run("stylepipe", "compare", history["A"], history["B"], "--output", str(out), cwd=repo)
    page = out.read_text()
    assert page.count("data:image/png;base64,") == len(STYLES) * len(IMAGES) * 3
    assert 'class="missing"' not in page


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
def test_report_renders_in_headless_chromium(history, report_ab, tmp_path):
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
                   + [f"--screenshot={shot}", "--window-size=1280,7000", report_ab["path"].as_uri()],
                   capture_output=True, text=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 20
    shown = {tuple(int(c) for c in colour) for colour in np.unique(pixels.reshape(-1, 3) // 16, axis=0)}
    expected_colours = _stylized_colours(history["repo"])
    seen = [colour for colour in expected_colours if colour in shown]
    assert len(seen) >= 0.75 * len(expected_colours), "the stylized images' colours are not in the screenshot"


# --------------------------------------------------------------------------- pieces


def test_default_revisions_and_params_flattening():
    from stylepipe.compare import default_revisions, flatten

    assert default_revisions([]) == ["HEAD", "workspace"]
    assert default_revisions(["v1"]) == ["v1", "workspace"]
    assert default_revisions(["v1", "v2", "v3"]) == ["v1", "v2", "v3"]
    assert flatten({"train": {"lr": 1e-3, "layers": ["relu2_2"]}, "styles": {"candy": {}}}) == {
        "train.lr": 1e-3, "train.layers": ["relu2_2"], "styles.candy": {}}


def test_curves_spanning_decades_use_a_log_axis():
    import pandas as pd

    from stylepipe.compare import svg_chart

    steep = pd.DataFrame({"step": [1, 2, 3], "style_loss": [1e6, 1e4, 1e2]})
    flat = pd.DataFrame({"step": [1, 2, 3], "style_loss": [3.0, 2.0, 1.0]})
    one = pd.DataFrame({"step": [5], "style_loss": [2.0]})
    svg = svg_chart([("a", "#000", steep), ("b", "#111", flat)], "style_loss")
    assert "(log y)" in svg and svg.count("<polyline") == 2 and ">1e+06<" in svg
    assert "(log y)" not in svg_chart([("b", "#111", flat)], "style_loss")
    assert "<circle" in svg_chart([("c", "#222", one)], "style_loss")
    assert "no data" in svg_chart([("d", "#333", flat)], "content_loss")
