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


DATA_URI = r"data:image/(png|jpeg|webp);base64,([A-Za-z0-9+/=]+)"


def _embedded(page: str) -> int:
    return len(re.findall(DATA_URI, page))


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
    speed = {tag: {style: json.loads(run("git", "show", f"{sha}:results/speed/{style}.json", cwd=repo))
                   for style in STYLES} for tag, sha in shas.items()}
    return {"repo": repo, **shas, "metrics": metrics, "speed": speed}


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


def test_report_says_how_each_style_was_trained(history, report_ab):
    """From each training's summary.json (in the DVC cache): device, precision, steps and torch, per
    style and revision; the same run settings in A and B, so nothing is marked as differing."""
    import torch

    page = html.unescape(report_ab["html"])
    section = page.split('<h2 id="training">How each style was trained</h2>')[1].split("<h2")[0]
    steps = tiny_params_dict()["train"]["max_steps"]
    for style in STYLES:
        row = re.search(rf"<tr><td>{re.escape(style)}</td>(.*?)</tr>", section)
        assert row, style
        cells = re.findall(r"<td>(.*?)</td>", row.group(1))
        assert len(cells) == 2 and cells[0] == cells[1], cells
        assert re.fullmatch(rf"cpu \(\d+ threads?\) · 32-true · {steps:,} steps · torch {re.escape(torch.__version__)}",
                            cells[0]), cells
    assert "<strong>" not in section


def test_report_embeds_every_image_and_nothing_external(report_ab):
    page = report_ab["html"]
    assert _embedded(page) == EMBEDDED
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    assert "<link" not in page and "<script" not in page
    for match in re.finditer(DATA_URI, page):
        Image.open(io.BytesIO(base64.b64decode(match.group(2)))).verify()
    # overlaid curves: in each chart (total, content, style loss; TV is 0) of each style, per revision
    # a training line and a dashed validation line
    assert page.count("<polyline") == len(STYLES) * 3 * 2 * 2
    assert page.count('stroke-dasharray="5 3"') == len(STYLES) * 3 * 2 and "dashed: validation losses" in page


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
    summaries = [f"results/train/{s}/summary.json" for s in STYLES]
    present = (_cache_objects(origin, history["A"], "data/eval", "results/stylized/mosaic", *summaries)
               | _cache_objects(origin, history["B"], "data/eval", *(f"results/stylized/{s}" for s in STYLES),
                                *summaries))
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
    assert _embedded(page) == EMBEDDED - len(IMAGES)
    assert f"{history['metrics']['A']['waves']['style_loss']:.4g}" in page
    assert page.count("<polyline") == len(STYLES) * 3 * 2 * 2

    # the origin's cache has the same layout as a local remote
    run("dvc", "remote", "modify", "--local", "store", "url", str(origin / ".dvc/cache"), cwd=clone)
    subprocess.run(hint, shell=True, cwd=clone, env=ENV, check=True, capture_output=True)
    run("stylepipe", "compare", history["A"], history["B"], "--output", str(out), cwd=clone)
    page = out.read_text()
    assert _embedded(page) == EMBEDDED
    assert 'class="missing"' not in page


def _compare_clone_with_metrics(history, tmp_path, metrics_text: str) -> str:
    """The page `stylepipe compare` writes for a fresh clone whose results/metrics.json holds ``metrics_text``."""
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(history["repo"]), str(clone), cwd=tmp_path)
    (clone / "results/metrics.json").write_text(metrics_text)
    out = tmp_path / "report.html"
    run("stylepipe", "compare", "--repo", str(clone), "--output", str(out), cwd=tmp_path)
    return html.unescape(out.read_text())


def test_fresh_clone_workspace_says_pull_and_names_a_broken_file(history, tmp_path):
    page = _compare_clone_with_metrics(history, tmp_path, "{not json")
    outputs = " ".join(sorted(["data/eval", *(f"results/stylized/{s}" for s in STYLES),
                               *(f"results/train/{s}/summary.json" for s in STYLES)]))
    assert f"dvc pull {outputs}" in page  # the workspace
    assert f"<pre>dvc fetch {outputs}</pre>" in page  # HEAD, which is checked out: no `git checkout` needed
    assert "results/metrics.json</code>: cannot be parsed (JSONDecodeError" in page
    # the per-style metrics files (in git) stand in for the broken combined one
    assert f"{history['metrics']['B']['waves']['style_loss']:.4g}" in page
    assert _embedded(page) == 0  # nothing in this clone's cache, no remote


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
        assert f"results/train/{style}/curves.csv" in page and f"results/train/{style}/val_curves.csv" in page
    assert '"type": "log"' in page  # the losses' template


def test_dvc_plots_draw_the_losses_on_a_log_axis(tmp_path):
    """The losses fall by decades in the first few hundred steps, then by percents: on DVC's linear
    axis the curve is an L whose later part, where runs differ, lies flat on the bottom. Each
    style's curves and validation curves use the `losses` template, a log y axis."""
    from test_pipeline_snakemake import make_workspace

    repo = make_workspace(tmp_path / "repo", tiny_params_dict())
    targets = []
    for style in sorted(tiny_params_dict()["styles"]):
        for name in ("curves.csv", "val_curves.csv"):
            path = repo / "results" / "train" / style / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("step,content_loss,style_loss,tv_loss,total_loss\n10,5e3,9e4,0,9.5e4\n200,2e3,1e3,0,3e3\n")
            targets.append(str(path.relative_to(repo)))
    shown = json.loads(run("dvc", "plots", "show", "--json", *targets, cwd=repo))
    assert not shown.get("errors") and sorted(shown["data"]) == sorted(targets)
    for target, (plot,) in shown["data"].items():
        scales = {json.dumps(layer["encoding"]["y"].get("scale")) for layer in plot["content"]["layer"]
                  if "y" in layer.get("encoding", {})}
        assert scales == {'{"type": "log"}'}, (target, scales)


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
    assert _embedded(page) == EMBEDDED
    page = (tmp_path / "exp.html").read_text()
    assert f"DVC experiment tweaked-ssim (baseline {_short(history['B'])})" in page
    assert "0.1235" in page and "tweaked-ssim (" in page


def test_packages_that_differ_are_listed(history, report_ab, tmp_path):
    """constraints.txt pins the environment: the page lists the packages whose versions differ between
    revisions (other software can move the numbers too) and names the revisions without the file."""
    assert 'id="packages"' not in report_ab["html"]  # neither A nor B records its packages: no section
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(history["repo"]), str(clone), cwd=tmp_path)
    shas = {}
    for tag, pins in (("C", "torch==2.14.1\nnumpy==2.4.6\nruamel.yaml==0.18.0\n"),
                      ("D", "torch==2.14.1\nnumpy==2.5.0  # a comment\nRuamel_YAML==0.18.0\npandas==3.1.1\n")):
        (clone / "constraints.txt").write_text("# the whole environment\n" + pins)
        run("git", "add", "constraints.txt", cwd=clone)
        run("git", "commit", "-q", "-m", f"pins {tag}", cwd=clone)
        shas[tag] = run("git", "rev-parse", "HEAD", cwd=clone).strip()
    out = tmp_path / "report.html"
    run("stylepipe", "compare", history["B"], shas["C"], shas["D"], "--repo", str(clone), "--output", str(out),
        cwd=tmp_path)
    page = html.unescape(out.read_text())
    section = page.split('<h2 id="packages">Packages that differ</h2>')[1].split("<h2")[0]
    assert f"No constraints.txt in {_short(history['B'])}:" in section
    rows = dict(re.findall(r"<tr><td><code>([^<]+)</code></td>(.*?)</tr>", section))
    assert sorted(rows) == ["numpy", "pandas"]  # torch, and ruamel.yaml however spelt, are the same
    assert re.findall(r"<code>([^<]+)</code>", rows["numpy"]) == ["not recorded", "2.4.6", "2.5.0"]
    assert re.findall(r"<code>([^<]+)</code>", rows["pandas"]) == ["not recorded", "—", "3.1.1"]
    assert "constraints.txt</code>" not in page  # its absence in B is no missing artifact


def test_unknown_revision_is_a_clear_error(history, tmp_path):
    result = subprocess.run(["stylepipe", "compare", "no-such-rev", "--repo", str(history["repo"]),
                             "--output", str(tmp_path / "r.html")], env=ENV, capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown revision 'no-such-rev'" in result.stderr
    assert not (tmp_path / "r.html").exists()


def _metric_row(page: str, style: str, metric: str) -> str:
    """The metrics table's row of ``style`` / ``metric`` (its HTML)."""
    match = re.search(rf"<tr><td>{re.escape(style)}</td><td>{re.escape(metric)}( \*)?</td>.*?</tr>", page)
    assert match, (style, metric)
    return match.group(0)


def test_losses_compare_unweighted_when_a_weight_changes(history, report_ab):
    """B only multiplies waves' style weight by 5: the weighted style loss grows ~5x though the
    network barely changed. The page must not call that worse; the unweighted loss is what compares."""
    page = report_ab["html"]
    a, b = history["metrics"]["A"]["waves"], history["metrics"]["B"]["waves"]
    assert b["style_loss"] / a["style_loss"] == pytest.approx(5, rel=0.01)
    assert b["style_loss_unweighted"] == pytest.approx(a["style_loss_unweighted"], rel=0.01)
    for name in ("style_loss_unweighted", "content_loss_unweighted"):
        for tag in ("A", "B"):
            assert f"{history['metrics'][tag]['waves'][name]:.4g}" in page
    for metric in ("style_loss", "total_loss"):
        row = _metric_row(page, "waves", metric)
        assert "incomparable" in row and "better" not in row and "worse" not in row, row
    for metric in ("style_loss_unweighted", "content_loss"):  # content_weight is the same in both
        assert "incomparable" not in _metric_row(page, "waves", metric)
    assert "incomparable" not in _metric_row(page, "waves", "ssim")
    assert "incomparable" not in _metric_row(page, "mosaic", "style_loss")  # mosaic's weights did not change
    note = re.search(r'<p class="note" id="weights-waves">(.*?)</p>', page)
    assert note and "style_weight" in note.group(1) and "1e+10 → 5e+10" in html.unescape(note.group(1))
    assert 'id="weights-mosaic"' not in page


def test_metrics_show_integers_whole_and_seconds_plainly(history, report_ab):
    page = report_ab["html"]
    b = history["metrics"]["B"]["waves"]
    assert isinstance(b["model_params"], int) and f">{b['model_params']}<" in _metric_row(page, "waves", "model_params")
    assert "e+" not in _metric_row(page, "waves", "model_params")
    b = history["speed"]["B"]["waves"]  # throughput, from its own file, among the metrics
    assert f">{b['train_wall_time_s']:.1f} s<" in _metric_row(page, "waves", "train_wall_time_s") or \
        f">{b['train_wall_time_s']:.2g} s<" in _metric_row(page, "waves", "train_wall_time_s")


def test_images_are_embedded_at_the_displayed_size_with_a_lossless_option(history, report_ab, tmp_path):
    """Default: JPEG, at most 2x the 256 px the page draws them; --image-format png --max-image-size 0:
    the PNG files themselves, byte for byte."""
    from dvc.api import DVCFileSystem

    from stylepipe.compare.images import DEFAULT_IMAGE_SIZE, IMAGE_WIDTH

    assert DEFAULT_IMAGE_SIZE <= 2 * IMAGE_WIDTH and f"img{{width:{IMAGE_WIDTH}px" in report_ab["html"]
    kinds = [m.group(1) for m in re.finditer(DATA_URI, report_ab["html"])]
    assert kinds == ["jpeg"] * EMBEDDED
    out = tmp_path / "lossless.html"
    run("stylepipe", "compare", history["A"], history["B"], "--image-format", "png", "--max-image-size", "0",
        "--output", str(out), cwd=history["repo"])
    embedded = {base64.b64decode(m.group(2)) for m in re.finditer(DATA_URI, out.read_text())}
    fs = DVCFileSystem(str(history["repo"]), rev=history["B"])
    try:
        originals = {fs.read_bytes(f"results/stylized/{style}/{image}.png") for style in STYLES for image in IMAGES}
    finally:
        fs.close()
    assert originals <= embedded


def test_diverged_run_is_charted_and_marked(history, tmp_path):
    """A loss that overflowed (inf) or became NaN: the page is written, the finite points are
    charted and the step where it diverged is marked."""
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(history["repo"]), str(clone), cwd=tmp_path)
    curves = clone / "results/train/waves/curves.csv"
    rows = curves.read_text().splitlines()
    last = int(rows[-1].split(",")[0])
    rows += [f"{last + 1},2217.9,3.4e+38,0,inf,0.001", f"{last + 2},nan,nan,0,nan,0.001"]
    curves.write_text("\n".join(rows) + "\n")
    out = tmp_path / "report.html"
    run("stylepipe", "compare", "--repo", str(clone), "--output", str(out), cwd=tmp_path)
    page = out.read_text()
    charts = page.split('<h2 id="curves">')[1].split("<h2")[0].split("<h3>waves</h3>")[1].split("<h3>")[0]
    assert charts.count(f"diverged at step {last + 1} (inf)") >= 2  # total_loss (and its label) at least
    assert f"diverged at step {last + 2} (NaN)" in charts  # content_loss: NaN one step later
    assert "inf," not in charts and "nan," not in charts.lower().replace("nan)", "")


def test_experiment_name_on_several_baselines(history, tmp_path):
    """`exp1` saved on A and on B: from A, `exp1` is A's (as `dvc` resolves it); from a third
    commit the name is ambiguous and the error lists both."""
    repo = tmp_path / "repo"
    shutil.copytree(history["repo"], repo, symlinks=True)

    def save(ssim: float) -> None:
        metrics = json.loads((repo / "results/metrics.json").read_text())
        metrics["waves"]["ssim"] = ssim
        (repo / "results/metrics.json").write_text(json.dumps(metrics))
        run("dvc", "exp", "save", "-q", "-f", "-n", "exp1", cwd=repo)
        run("git", "checkout", "-q", "--", "results/metrics.json", "dvc.lock", cwd=repo)

    save(0.222222)  # on B
    run("git", "checkout", "-q", history["A"], cwd=repo)
    run("dvc", "checkout", "-q", cwd=repo)
    save(0.111111)  # on A
    refs = run("git", "for-each-ref", "--format=%(refname)", "refs/exps", cwd=repo).split()
    assert len([ref for ref in refs if ref.endswith("/exp1")]) == 2
    out = tmp_path / "a.html"
    run("stylepipe", "compare", "HEAD", "exp1", "--output", str(out), cwd=repo)
    page = out.read_text()
    assert f"DVC experiment exp1 (baseline {_short(history['A'])})" in page and "0.1111" in page

    run("git", "checkout", "-q", "-b", "other", history["B"], cwd=repo)
    run("git", "commit", "-q", "--allow-empty", "-m", "C", cwd=repo)
    result = subprocess.run(["stylepipe", "compare", "HEAD", "exp1", "--output", str(tmp_path / "c.html")],
                            cwd=repo, env=ENV, capture_output=True, text=True)
    assert result.returncode == 2 and not (tmp_path / "c.html").exists()
    assert "'exp1' is ambiguous" in result.stderr
    for sha in (history["A"], history["B"]):
        assert f"baseline {_short(sha)}" in result.stderr


def test_outputs_never_recorded_are_not_sent_to_the_cache(history, tmp_path):
    """The first commit has dvc.yaml but no dvc.lock: its outputs were never produced, so the page
    says so and offers no `dvc fetch` (there is no hash to fetch)."""
    first = run("git", "rev-list", "--max-parents=0", "HEAD", cwd=history["repo"]).strip()
    assert run("git", "ls-tree", "--name-only", first, "dvc.lock", cwd=history["repo"]).strip() == ""
    out = tmp_path / "report.html"
    log = run("stylepipe", "compare", first, history["B"], "--output", str(out), cwd=history["repo"])
    page = html.unescape(out.read_text())
    box = page.split('<div class="missing"')[1].split("</div>")[0]
    assert "Not recorded in this revision" in box
    assert f"results/stylized/waves/{IMAGES[0]}.png" in box and f"data/eval/{IMAGES[0]}.png" in box
    assert "Recorded by DVC" not in box and "dvc fetch" not in page and "fetch them with" not in log


def test_dvc_errors_are_shown_not_taken_for_missing_files(history, tmp_path):
    """A commit whose dvc.yaml does not resolve: the page shows DVC's error, and still the params and
    metrics (plain git files)."""
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(history["repo"]), str(clone), cwd=tmp_path)
    dvc_yaml = clone / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("${stylize.max_size}", "${stylize.no_such_key}"))
    run("git", "commit", "-q", "-m", "Broken dvc.yaml", "--", "dvc.yaml", cwd=clone)
    out = tmp_path / "report.html"
    log = run("stylepipe", "compare", "HEAD~1", "HEAD", "--output", str(out), cwd=clone)
    page = html.unescape(out.read_text())
    assert "DVC could not read this revision" in page
    assert "ResolveError" in page and "Could not find 'stylize.no_such_key'" in page
    assert "Could not find 'stylize.no_such_key'" in log
    assert "Not recorded in this revision" not in page
    assert f"{history['metrics']['B']['waves']['ssim']:.4g}" in page


def test_stale_workspace_is_flagged(history, tmp_path):
    """A param edited without `dvc repro`: the workspace's metrics are the old run's, and the page says
    which stages are out of date, as `dvc status` does."""
    repo = history["repo"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["styles"]["mosaic"]["style_weight"] = 2.5e10
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        log = run("stylepipe", "compare", "--output", str(tmp_path / "stale.html"), cwd=repo)
    finally:
        run("git", "checkout", "-q", "--", "params.yaml", cwd=repo)
    page = html.unescape((tmp_path / "stale.html").read_text())
    box = re.search(r'<div class="stale" id="stale-workspace">(.*?)</div>', page, re.S)
    assert box, "no out-of-date note for the workspace"
    for stage in ("train@mosaic", "evaluate@mosaic"):
        assert f"<code>{stage}</code>" in box.group(1) and stage in log
    assert "styles.mosaic" in box.group(1) and "dvc repro" in box.group(1)
    assert "train@waves" not in box.group(1)
    # the committed revision is not flagged, nor is an up-to-date workspace
    run("stylepipe", "compare", "--output", str(tmp_path / "clean.html"), cwd=repo)
    assert 'class="stale"' not in (tmp_path / "clean.html").read_text()


def test_non_mapping_metrics_file_is_named(history, tmp_path):
    page = _compare_clone_with_metrics(history, tmp_path, "[1, 2]")
    assert "results/metrics.json</code>: not metrics: expected {style: {metric: value}}, got a JSON array" in page
    assert f"{history['metrics']['B']['waves']['ssim']:.4g}" in page  # from the per-style files


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


def test_training_that_differs_is_marked():
    from stylepipe.compare.page import _training_section
    from stylepipe.compare.revisions import Revision

    gpu = {"device": "cuda:0 (NVIDIA H100 80GB HBM3)", "precision": "bf16-mixed", "processes": 2, "steps": 41396,
           "software": {"torch": "2.14.1"}}
    cpu = {"device": "cpu", "precision": "32-true", "processes": 1, "steps": 41396}  # from before cpu_threads
    revs = [Revision(name, None, name, "", "", summaries=summaries, styles=["candy", "udnie"], label=name)
            for name, summaries in (("a", {"candy": cpu, "udnie": cpu}), ("b", {"candy": gpu, "udnie": cpu}),
                                    ("c", {"candy": cpu}))]
    rows = re.findall(r"<tr><td>(\w+)</td>(.*?)</tr>", "".join(_training_section(revs, dict.fromkeys("abc", "#000"))))
    assert dict(rows) == {
        "candy": "<td>cpu · 32-true · 41,396 steps</td>"
                 "<td><strong>cuda:0 (NVIDIA H100 80GB HBM3) · bf16-mixed · 2 processes · 41,396 steps · "
                 "torch 2.14.1</strong></td><td>cpu · 32-true · 41,396 steps</td>",
        "udnie": "<td>cpu · 32-true · 41,396 steps</td><td>cpu · 32-true · 41,396 steps</td>"
                 "<td><strong>—</strong></td>"}
    assert _training_section([Revision("a", None, "a", "", "", styles=["candy"], label="a")], {"a": "#000"}) == []
    # on a CPU the thread count changes the weights: shown, and a change of it marked
    threads = [Revision(name, None, name, "", "", summaries={"candy": cpu | {"cpu_threads": n}}, styles=["candy"],
                        label=name) for name, n in (("a", 8), ("b", 1))]
    assert "".join(_training_section(threads, dict.fromkeys("ab", "#000"))).count(
        "<td>cpu (8 threads) · 32-true · 41,396 steps</td><td><strong>cpu (1 thread) · 32-true") == 1


def test_default_revisions_and_params_flattening():
    from stylepipe.compare.revisions import default_revisions
    from stylepipe.compare.tables import flatten

    assert default_revisions([]) == ["HEAD", "workspace"]
    assert default_revisions(["v1"]) == ["v1", "workspace"]
    assert default_revisions(["v1", "v2", "v3"]) == ["v1", "v2", "v3"]
    assert flatten({"train": {"lr": 1e-3, "layers": ["relu2_2"]}, "styles": {"candy": {}}}) == {
        "train.lr": 1e-3, "train.layers": ["relu2_2"], "styles.candy": {}}


def test_params_that_differ_past_six_digits_are_shown_differing():
    from stylepipe.compare.revisions import Revision
    from stylepipe.compare.tables import param_text, params_diff

    assert [param_text(v) for v in (1e10, 1e-3, 0.0, 2, 1.5e-7)] == ["1e+10", "0.001", "0", "2", "1.5e-07"]
    assert [param_text(v) for v in (0.0010000004, 10000004000.0)] == ["0.0010000004", "10000004000.0"]
    revs = [Revision(name, None, name, "", "", params={"train": {"lr": lr, "style_weight": 1e10}}, label=name)
            for name, lr in (("a", 1e-3), ("b", 0.0010000004))]
    table = params_diff(revs)
    assert table.to_dict(orient="index") == {"train.lr": {"a": "0.001", "b": "0.0010000004"}}


def test_an_evaluation_image_that_differs_between_revisions_shows_each_ones_photograph():
    """A new file under an old name (`data.eval`): each revision's stylizations beside its own content."""
    from stylepipe.compare.page import render_html
    from stylepipe.compare.revisions import Revision
    from stylepipe.compare.sheet import contact_sheet

    def png(colour):
        buf = io.BytesIO()
        Image.new("RGB", (8, 6), colour).save(buf, "PNG")
        return buf.getvalue()

    def revs(*contents):
        return [Revision(f"r{i}", None, f"r{i}", "", "", styles=["waves"], image_names=["a.png"],
                         content={"a.png": c}, images={("waves", "a.png"): png("gray")}, label=f"r{i}")
                for i, c in enumerate(contents)]

    changed, same = revs(png("red"), png("blue")), revs(png("red"), png("red"))
    page = render_html(changed)
    assert "differs between revisions" in page
    assert all(base64.b64encode(png(c)).decode() in page for c in ("red", "blue"))
    assert "differs between revisions" not in render_html(same)
    sheet, plain = contact_sheet(changed, cell=32), contact_sheet(same, cell=32)
    assert sheet.height > plain.height  # the row of each revision's content
    colours = {sheet.getpixel((x, y)) for x in range(sheet.width) for y in range(sheet.height)}
    assert {(255, 0, 0), (0, 0, 255)} <= colours and (0, 0, 255) not in {
        plain.getpixel((x, y)) for x in range(plain.width) for y in range(plain.height)}


@pytest.mark.parametrize("data", [["a"], {"eval": "x.png"}, {"eval": [{"name": "astronaut"}, "b"]}])
def test_hand_broken_params_do_not_stop_a_compare(tmp_path, data):
    """The workspace's params.yaml, mid-edit: its evaluation images are read from data/eval instead."""
    from stylepipe.compare.artifacts import _eval_images
    from stylepipe.compare.revisions import Revision
    from stylepipe.compare.source import Source

    (tmp_path / "data" / "eval").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "data" / "eval" / "coffee.png")
    rev = Revision("workspace", None, "workspace", "", "", params={"data": data}, label="workspace")
    expected = ["astronaut"] if isinstance(data, dict) and isinstance(data["eval"], list) else ["coffee"]
    assert _eval_images(Source(tmp_path, rev), rev) == expected


def test_curves_spanning_decades_use_a_log_axis():
    import pandas as pd

    from stylepipe.charts import svg_chart

    steep = pd.DataFrame({"step": [1, 2, 3], "style_loss": [1e6, 1e4, 1e2]})
    flat = pd.DataFrame({"step": [1, 2, 3], "style_loss": [3.0, 2.0, 1.0]})
    one = pd.DataFrame({"step": [5], "style_loss": [2.0]})
    svg = svg_chart([("a", "#000", steep), ("b", "#111", flat)], "style_loss")
    assert "(log y)" in svg and svg.count("<polyline") == 2 and ">1e+06<" in svg
    assert "(log y)" not in svg_chart([("b", "#111", flat)], "style_loss")
    assert "<circle" in svg_chart([("c", "#222", one)], "style_loss")
    assert "no data" in svg_chart([("d", "#333", flat)], "content_loss")


def test_tick_labels_tell_every_tick_apart():
    import re

    import pandas as pd

    from stylepipe.charts import svg_chart

    for lo, hi in ((100000, 102000), (1.0001, 1.0009), (0.5, 3.0)):
        frame = pd.DataFrame({"step": [1, 2, 3], "total_loss": [hi, (lo + hi) / 2, lo]})
        labels = re.findall(r'text-anchor="end">([^<]+)<', svg_chart([("a", "#000", frame)], "total_loss"))
        assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
        assert all(lo * 0.99 <= float(t) <= hi * 1.01 for t in labels), labels


def test_non_finite_curve_values_are_not_charted_but_marked():
    import pandas as pd

    from stylepipe.charts import _ticks, svg_chart

    blown = pd.DataFrame({"step": [1, 2, 3, 4], "total_loss": [7e5, 6e5, float("inf"), float("nan")],
                          "content_loss": [3.0, 2.0, float("nan"), float("nan")]})
    fine = pd.DataFrame({"step": [1, 2, 3, 4], "total_loss": [7e5, 6e5, 5e5, 4e5], "content_loss": [3.0, 2, 1, 1]})
    for column in ("total_loss", "content_loss"):
        svg = svg_chart([("a", "#000", fine), ("b", "#111", blown)], column)
        assert "diverged at step 3" in svg and "inf," not in svg and "nan" not in svg.lower().replace("(nan)", "")
    huge = pd.DataFrame({"step": [1, 2], "style_loss": [1e5, 3.4e38]})  # finite, 33 decades: a readable log axis
    svg = svg_chart([("a", "#000", huge)], "style_loss")
    assert "(log y)" in svg and svg.count('text-anchor="end">') <= 8
    only = pd.DataFrame({"step": [5], "style_loss": [float("inf")]})
    assert "diverged at step 5" in svg_chart([("a", "#000", only)], "style_loss")
    assert _ticks(0.0, float("inf")) == [] and _ticks(float("nan"), 1.0) == []


def test_contact_sheet_wraps_long_style_names():
    """`rain-princess-style-weight-5e10` in the contact sheet: its label stays in the label column."""
    from stylepipe.compare.revisions import Revision
    from stylepipe.compare.sheet import contact_sheet

    image = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image, "PNG")
    style = "rain-princess-style-weight-5e10"
    rev = Revision(name="B", sha="0" * 40, short="0000000", subject="A subject long enough to need wrapping here",
                   date="", styles=[style], image_names=["astronaut"], label="exp-rain-princess-weight (0000000)",
                   content={"astronaut": image.getvalue()}, images={(style, "astronaut"): image.getvalue()})
    cell, pad, label_w = 192, 6, 150
    sheet = np.asarray(contact_sheet([rev], cell))
    dark = sheet.astype(int).sum(axis=2) < 300
    head = sheet.shape[0] - (cell + pad) - pad
    label = dark[head:, :label_w + pad]
    assert label[:, :label_w - pad].any() and not label[:, label_w - pad:].any(), "the label runs under the images"
    rows = label.any(axis=1)
    assert int(np.sum(rows[1:] & ~rows[:-1])) + int(rows[0]) >= 3  # style over two lines or more, then the image
