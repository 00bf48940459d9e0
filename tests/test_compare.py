"""`stylepipe compare` and `dvc plots diff` on a real git + DVC history.

The tiny offline pipeline run by Snakemake (shared with the other end-to-end
tests) is recorded with `dvc commit` as commit A; commit B raises the waves style
weight and reruns with `dvc repro`. Artifacts live in the DVC cache, not in git.
The report must name both revisions, show every metric value and embed every
image; a revision whose images are in neither the cache nor a reachable remote
must render with the command that fetches them (and that command must work);
and the page must render in headless Chromium with its images loaded.
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
from test_pipeline_snakemake import snakemake_workspace

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
       "GIT_AUTHOR_NAME": "stylepipe tests", "GIT_AUTHOR_EMAIL": "tests@example.org",
       "GIT_COMMITTER_NAME": "stylepipe tests", "GIT_COMMITTER_EMAIL": "tests@example.org"}
STYLES = tuple(tiny_params_dict()["styles"])
IMAGES = tuple(item["name"] for item in tiny_params_dict()["data"]["eval"])
SUBJECTS = {"A": "Baseline style weight", "B": "Stronger waves style weight"}
# Images a two-revision report embeds: each content image once, each style's stylization per revision.
EMBEDDED = len(IMAGES) * (1 + 2 * len(STYLES))


def run(*cmd: str, cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> dict:
    """Commit A: the shared tiny Snakemake run, recorded by `dvc commit`; B: `dvc repro` with waves' style weight x5."""
    repo = tmp_path_factory.mktemp("history")
    source = snakemake_workspace(tmp_path_factory)
    # scratch (resume checkpoints) and Snakemake's state are neither git's nor DVC's business
    skip = lambda folder, names: {"scratch", ".snakemake"} & set(names) if Path(folder) == source else set()  # noqa: E731
    shutil.copytree(source, repo, symlinks=True, dirs_exist_ok=True, ignore=skip)
    run("dvc", "commit", "-q", "-f", cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-q", "-m", SUBJECTS["A"], cwd=repo)
    shas = {"A": run("git", "rev-parse", "HEAD", cwd=repo).strip()}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["styles"]["waves"]["style_weight"] = 5 * params["train"]["style_weight"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("dvc", "repro", cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-q", "-m", SUBJECTS["B"], cwd=repo)
    shas["B"] = run("git", "rev-parse", "HEAD", cwd=repo).strip()
    metrics = {tag: json.loads(run("git", "show", f"{sha}:results/metrics.json", cwd=repo))
               for tag, sha in shas.items()}
    return {"repo": repo, **shas, "metrics": metrics}


def _cache_objects(repo: Path, rev: str, *outputs: str) -> set[str]:
    """Cache object names (md5) of DVC outputs at ``rev``: directory listings and files."""
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(str(repo), rev=rev)
    try:
        return {md5 for out in outputs for path in [out, *fs.find(out)] if (md5 := fs.info(path).get("md5"))}
    finally:
        fs.close()


def _copy_objects(src: Path, dst: Path, md5s: set[str]) -> None:
    for md5 in md5s:
        rel = Path(".dvc/cache/files/md5", md5[:2], md5[2:])
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)


def _stylized_colours(repo: Path, revs: list[str]) -> tuple[np.ndarray, float]:
    """The colours (16 levels a channel) that make up 95% of the revisions' stylized images,
    and the area those images take in the report (256 px wide each)."""
    from dvc.api import DVCFileSystem

    pixels, area = [], 0.0
    for rev in revs:
        fs = DVCFileSystem(str(repo), rev=rev)
        for path in sorted(p for p in fs.find("results/stylized") if p.endswith(".png")):
            with Image.open(io.BytesIO(fs.read_bytes(path))) as img:
                pixels.append(np.asarray(img.convert("RGB")).reshape(-1, 3) // 16)
                area += 256 * 256 * img.height / img.width
        fs.close()
    values, counts = np.unique(np.concatenate(pixels), axis=0, return_counts=True)
    order = np.argsort(counts)[::-1]
    keep = order[: int(np.searchsorted(np.cumsum(counts[order]), 0.95 * counts.sum())) + 1]
    return values[keep], area


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
        assert SUBJECTS[tag] in page
        for style in STYLES:
            for name in ("content_loss", "style_loss", "total_loss", "ssim"):
                assert f"{metrics[tag][style][name]:.4g}" in page, (tag, style, name)
    delta = metrics["B"]["waves"]["style_loss"] - metrics["A"]["waves"]["style_loss"]
    assert delta != 0 and f"{delta:+.4g}" in page
    # the changed params key: absent in A (the train value applies), 5e+10 in B
    assert re.search(r"styles\.waves\.style_weight</code></td><td><code>—</code></td><td><code>5e\+10</code>", page)
    assert "missing" not in page.split("<body>")[1].lower().replace("cellmissing", "")


def test_report_embeds_every_image_and_nothing_external(report_ab):
    page = report_ab["html"]
    assert page.count("data:image/png;base64,") == EMBEDDED
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
    """A fresh clone with everything but A's waves images, and an unreachable remote: the page says
    what is missing and how to fetch it; once the remote is reachable, that command works."""
    origin, clone, target = history["repo"], tmp_path / "clone", "results/stylized/waves"
    run("git", "clone", "-q", str(origin), str(clone), cwd=tmp_path)
    present = (_cache_objects(origin, history["A"], "data/eval", "results/stylized/mosaic")
               | _cache_objects(origin, history["B"], "data/eval", *(f"results/stylized/{s}" for s in STYLES)))
    _copy_objects(origin, clone, present)
    assert _cache_objects(origin, history["A"], target) - present, "A's waves images should differ from B's"
    run("dvc", "remote", "add", "--local", "-d", "store", str(tmp_path / "unreachable"), cwd=clone)

    out = tmp_path / "report.html"
    log = run("stylepipe", "compare", history["A"], history["B"], "--output", str(out), cwd=clone)
    page = html.unescape(out.read_text())
    hint = f"git checkout {_short(history['A'])} && dvc fetch {target} && git checkout -"
    assert hint in page and f"fetch them with: {hint}" in log
    assert f"dvc fetch --all-commits {target}" in page
    for image in IMAGES:
        assert f"{target}/{image}.png" in page
    # A's waves stylizations are placeholders; everything else is there, metrics and curves from git
    assert page.count('class="cellmissing"') == len(IMAGES)
    assert page.count("data:image/png;base64,") == EMBEDDED - len(IMAGES)
    assert f"{history['metrics']['A']['waves']['style_loss']:.4g}" in page
    assert page.count("<polyline") == len(STYLES) * 3 * 2

    # the origin's cache has the same layout as a local remote
    run("dvc", "remote", "modify", "--local", "store", "url", str(origin / ".dvc/cache"), cwd=clone)
    subprocess.run(hint, shell=True, cwd=clone, env=ENV, check=True, capture_output=True)
    run("stylepipe", "compare", history["A"], history["B"], "--output", str(out), cwd=clone)
    page = out.read_text()
    assert page.count("data:image/png;base64,") == EMBEDDED
    assert 'class="missing"' not in page


def test_fresh_clone_workspace_says_pull_and_names_a_broken_file(history, tmp_path):
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(history["repo"]), str(clone), cwd=tmp_path)
    (clone / "results/metrics.json").write_text("{not json")
    out = tmp_path / "report.html"
    run("stylepipe", "compare", "--repo", str(clone), "--output", str(out), cwd=tmp_path)
    page = html.unescape(out.read_text())
    outputs = " ".join(sorted(["data/eval", *(f"results/stylized/{s}" for s in STYLES)]))
    assert f"dvc pull {outputs}" in page  # the workspace
    assert f"<pre>dvc fetch {outputs}</pre>" in page  # HEAD, which is checked out: no `git checkout` needed
    assert "results/metrics.json</code>: cannot be parsed (JSONDecodeError" in page
    # the per-style metrics files (in git) stand in for the broken combined one
    assert f"{history['metrics']['B']['waves']['style_loss']:.4g}" in page
    assert "data:image/png;base64," not in page  # nothing in this clone's cache, no remote


def test_dvc_plots_diff_shows_curves_and_images(history, tmp_path):
    """The plots dvc.yaml declares: each style's curves and stylized images, for both revisions."""
    a, b = _short(history["A"]), _short(history["B"])
    run("dvc", "plots", "diff", a, b, "-o", str(tmp_path / "plots"), cwd=history["repo"])
    page = (tmp_path / "plots/index.html").read_text()
    static = {p.name for p in (tmp_path / "plots/static").iterdir()}
    for rev in (a, b):
        for style in STYLES:
            for image in IMAGES:
                assert f"{rev}_results_stylized_{style}_{image}.png" in static
        assert len(re.findall(rf'"rev": "{rev}"', page)) >= len(STYLES)  # curve points of each style
    for style in STYLES:
        assert f"results/train/{style}/curves.csv" in page


def test_default_compares_head_with_workspace_and_experiments_by_name(history, tmp_path):
    repo = history["repo"]
    metrics = json.loads((repo / "results/metrics.json").read_text())
    metrics["waves"]["ssim"] = 0.123456
    (repo / "results/metrics.json").write_text(json.dumps(metrics))
    try:
        run("stylepipe", "compare", "--output", str(tmp_path / "default.html"), cwd=repo)
        run("dvc", "exp", "save", "-q", "-n", "tweaked-ssim", cwd=repo)
        run("stylepipe", "compare", "HEAD", "tweaked-ssim", "--output", str(tmp_path / "exp.html"), cwd=repo)
    finally:
        run("git", "checkout", "-q", "--", "results/metrics.json", "dvc.lock", cwd=repo)
    assert run("git", "status", "--porcelain", "--untracked-files=no", cwd=repo) == ""
    page = (tmp_path / "default.html").read_text()
    assert f"HEAD ({_short(history['B'])})" in page and "workspace" in page
    assert "0.1235" in page
    assert page.count("data:image/png;base64,") == EMBEDDED
    page = (tmp_path / "exp.html").read_text()
    assert f"DVC experiment tweaked-ssim (baseline {_short(history['B'])})" in page
    assert "0.1235" in page and "tweaked-ssim (" in page


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
    expected = EMBEDDED
    assert f'data-probe="{expected}:{expected}"' in dom
    # 2. The untouched report's screenshot is not blank and shows both revisions' images.
    shot = tmp_path / "shot.png"
    subprocess.run(_chromium_cmd(exe, tmp_path / "profile2")
                   + [f"--screenshot={shot}", "--window-size=1280,7000", report_ab["path"].as_uri()],
                   capture_output=True, text=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 20
    # as many screenshot pixels in the stylized images' colours as those images cover on the page
    colours, area = _stylized_colours(history["repo"], [history["A"], history["B"]])
    codes = lambda rgb: (rgb[..., 0].astype(int) * 16 + rgb[..., 1]) * 16 + rgb[..., 2]  # noqa: E731
    painted = np.isin(codes(pixels.reshape(-1, 3) // 16), codes(colours)).sum()
    assert painted > 0.6 * area, f"stylized images not visible: {painted} px in their colours, expected ~{area:.0f}"


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
