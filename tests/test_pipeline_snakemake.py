"""The whole pipeline through the real `snakemake` on tiny offline params.

One run is shared by every test here (and by tests/test_pipeline_dvc.py, which
compares `dvc repro`'s outputs with it). The workspace is a temporary git + DVC
repository holding this repository's Snakefile, workflow/, dvc.yaml and the
source files dvc.yaml lists as dependencies; the commands come from the
installed package.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import REPO, WORKFLOW, copy_checkout, tiny_params_dict
from stylepipe.config import deep_merge

BIN = Path(sys.executable).parent
PIPELINE_FILES = (*WORKFLOW, ".dvcignore", ".gitignore")
DONE = ".snakemake-run-done"


def tool_env() -> dict:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "stylepipe tests", "GIT_AUTHOR_EMAIL": "tests@example.org",
        "GIT_COMMITTER_NAME": "stylepipe tests", "GIT_COMMITTER_EMAIL": "tests@example.org",
    }


def sh(root: Path, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=root, env={**tool_env(), **(env or {})}, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def make_workspace(root: Path, params: dict) -> Path:
    """A fresh git + DVC repository with the pipeline files and ``params`` as params.yaml."""
    copy_checkout(root, PIPELINE_FILES)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # the plot templates dvc.yaml names
    sh(root, "dvc", "config", "core.analytics", "false")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "pipeline")
    return root


def snakemake_workspace(tmp_path_factory) -> Path:
    """The tiny pipeline run once by `snakemake --cores 2`, shared by this session's tests."""
    root = tmp_path_factory.getbasetemp() / "pipeline-snakemake"
    if not (root / DONE).exists():
        shutil.rmtree(root, ignore_errors=True)
        make_workspace(root, tiny_params_dict())
        sh(root, "snakemake", "--cores", "2")
        (root / DONE).touch()
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return snakemake_workspace(tmp_path_factory)


STYLES = sorted(tiny_params_dict()["styles"])
EVAL = [item["name"] for item in tiny_params_dict()["data"]["eval"]]


def job_counts(dry_run: str) -> dict[str, str]:
    """{rule: count} from the job stats of `snakemake -n`."""
    stats = dry_run.split("Job stats:")[1].split("total")[0]
    return dict(line.split() for line in stats.splitlines()[3:] if line.strip())


def readme_command(marker: str) -> str:
    """The one shell command of README.md that contains ``marker`` (continued lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "README.md").read_text())
    found = [line.strip() for line in text.splitlines() if marker in line]
    assert len(found) == 1, found
    return found[0]


def test_every_declared_output_exists(run):
    summary = sh(run, "snakemake", "--summary").stdout.splitlines()
    header, rows = summary[0].split("\t"), [line.split("\t") for line in summary[1:] if line.strip()]
    assert header[:3] == ["output_file", "date", "rule"]
    outputs = {row[0]: row for row in rows}
    rules = {row[2] for row in rows}
    assert rules == {"fetch_content", "fetch_eval", "fetch_style", "fetch_loss_network", "resize",
                     "train", "stylize", "evaluate", "report"}
    for path, row in outputs.items():
        assert (run / path).exists(), path
        assert row[header.index("status")] == "ok", row
    for style in STYLES:
        for path in (f"results/models/{style}.pth", f"results/models/{style}.onnx",
                     f"results/checkpoints/{style}.ckpt", f"results/train/{style}/curves.csv",
                     f"results/train/{style}/val_curves.csv",
                     f"results/metrics/{style}.json", f"results/speed/{style}.json", f"logs/train/{style}.log"):
            assert (run / path).is_file(), path
    # nothing left to do
    assert "Nothing to be done" in sh(run, "snakemake", "-n").stdout


def test_a_one_process_training_log_has_no_srun_hint(run):
    # where Slurm's client is installed (a login node), Lightning suggests srun to any run outside it;
    # a one-process training needs none
    if shutil.which("srun") is None:
        pytest.skip("srun is not installed: Lightning has nothing to suggest")
    for style in STYLES:
        log = (run / f"logs/train/{style}.log").read_text()
        assert "Trainer.fit` stopped" in log and "srun" not in log, log[:400]


def test_metrics_are_finite(run):
    metrics = json.loads((run / "results/metrics.json").read_text())
    assert sorted(metrics) == STYLES
    for style, values in metrics.items():
        assert values == json.loads((run / f"results/metrics/{style}.json").read_text())
        for key, value in values.items():
            assert isinstance(value, (int, float)) and math.isfinite(value), (style, key, value)
        assert values["eval_images"] == len(EVAL)
        # throughput varies from run to run: in its own file, not among the metrics DVC diffs
        speed = json.loads((run / f"results/speed/{style}.json").read_text())
        assert speed["train_images_per_s"] > 0 and speed["stylize_images_per_s"] > 0
        assert not set(speed) & set(values)


def test_metrics_do_not_depend_on_the_thread_count(run):
    # Snakemake gives evaluate `threads` (capped by --cores), DVC leaves torch all cores: the
    # same model and images must give the same metrics either way
    import torch

    from stylepipe.config import load_params, train_params
    from stylepipe.evaluate import image_pairs, loss_metrics

    style = STYLES[0]
    train = train_params(load_params([run / "params.yaml"]), style)
    pairs = image_pairs(run / "data/eval", run / "results/stylized" / style)
    threads, results = torch.get_num_threads(), []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(loss_metrics(pairs, run / f"data/styles/{style}.png",
                                        run / "data/models/vgg16_features.pth", train, torch.device("cpu")))
            assert torch.get_num_threads() == n  # left as it was
    finally:
        torch.set_num_threads(threads)
    assert results[0] == results[1]


def test_stylized_images_and_gallery_grid(run):
    from stylepipe.report import gallery_size

    max_size = tiny_params_dict()["stylize"]["max_size"]
    for style in STYLES:
        stylized = sorted(p.stem for p in (run / "results/stylized" / style).glob("*.png"))
        assert stylized == sorted(EVAL)
        for name in EVAL:
            with Image.open(run / "results/stylized" / style / f"{name}.png") as image:
                assert max(image.size) <= max_size
    with Image.open(run / "results/gallery.png") as gallery:
        # a column for the style image, then one per evaluation image
        assert gallery.size == gallery_size(1 + len(STYLES), 1 + len(EVAL))


def test_training_curves_have_the_contract_columns(run):
    for style in STYLES:
        lines = (run / f"results/train/{style}/curves.csv").read_text().splitlines()
        assert lines[0].split(",")[:5] == ["step", "content_loss", "style_loss", "tv_loss", "total_loss"]
        assert len(lines) > 1


def test_snakemake_report_shows_the_gallery_and_curves(run, tmp_path):
    report = tmp_path / "report.html"
    sh(run, "snakemake", "--report", str(report))
    assert report.stat().st_size > 0
    text = report.read_text(errors="replace")
    assert "gallery.png" in text and "curves.svg" in text
    curves = (run / "results/curves.svg").read_text()
    assert all(style in curves for style in STYLES) and "<polyline" in curves


def test_dvc_commit_records_a_snakemake_run(run, tmp_path):
    # on a copy: the run itself stays as Snakemake left it for the DVC tests
    work = tmp_path / "copy"
    shutil.copytree(run, work, symlinks=True)
    status = sh(work, "dvc", "status").stdout
    assert "changed outs" in status or "deleted" in status or "modified" in status
    sh(work, "dvc", "commit", "--force")
    assert "up to date" in sh(work, "dvc", "status").stdout
    # the lock file records every stage, ready for `git commit` and `dvc push`
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    assert {f"train@{s}" for s in STYLES} <= set(lock["stages"])
    # DVC's cache re-created the single-file outputs: Snakemake would redo the
    # steps until `snakemake --touch` records the files as they are (README)
    assert "Nothing to be done" not in sh(work, "snakemake", "-n").stdout
    sh(work, "snakemake", "--touch", "--cores", "1")
    assert "Nothing to be done" in sh(work, "snakemake", "-n").stdout
    assert "up to date" in sh(work, "dvc", "status").stdout


def test_params_file_name_is_no_rerun_trigger(run, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(run, work, symlinks=True)
    (work / "config").mkdir()
    shutil.copy(work / "params.yaml", work / "config/mine.yaml")
    # the same values from another file: nothing to do
    out = sh(work, "snakemake", "-n", "--configfile", "config/mine.yaml").stdout
    assert "Nothing to be done" in out, out[-3000:]
    # a changed value there reruns the steps that read it, and they get that file
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["styles"]["waves"]["style_weight"] = params["train"]["style_weight"] * 10
    (work / "config/mine.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(work, "snakemake", "-n", "-p", "--configfile", "config/mine.yaml").stdout
    assert job_counts(out) == {"fetch_style": "1", "train": "1", "stylize": "1", "evaluate": "1", "report": "1",
                               "all": "1"}
    assert "stylepipe train --params config/mine.yaml --style waves" in out


def test_overlay_run_recorded_with_merged_params(run, tmp_path):
    # README: a run made with --configfile overlays, its merged values written
    # to params.yaml with the README's command, then recorded by DVC
    work = tmp_path / "copy"
    shutil.copytree(run, work, symlinks=True)
    params = tiny_params_dict()
    (work / "config").mkdir()
    base = deep_merge(params, {"loss_network": {"weights": "imagenet"}})
    (work / "config/demo.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    (work / "config/offline.yaml").write_text(yaml.safe_dump({"loss_network": {"weights": "random"}}))
    (work / "params.yaml").write_text("seed: 0\n")  # whatever was there before
    overlays = ("--configfile", "config/demo.yaml", "config/offline.yaml")
    assert "Nothing to be done" in sh(work, "snakemake", "-n", *overlays).stdout

    sh(work, "bash", "-c", readme_command("config/offline.yaml > params.yaml"))
    assert yaml.safe_load((work / "params.yaml").read_text()) == params
    assert "Nothing to be done" in sh(work, "snakemake", "-n").stdout
    sh(work, "dvc", "commit", "--force")
    assert "up to date" in sh(work, "dvc", "status").stdout


def test_changed_weight_reruns_only_that_style(run, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(run, work, symlinks=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["styles"]["waves"]["style_weight"] = params["train"]["style_weight"] * 10
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(work, "snakemake", "-n").stdout
    # Snakemake's params trigger, like DVC's params: the style's steps, then the report
    assert job_counts(out) == {"fetch_style": "1", "train": "1", "stylize": "1", "evaluate": "1", "report": "1",
                               "all": "1"}
    assert "wildcards: style=mosaic" not in out


def test_the_training_thread_count_reruns_training_and_other_resources_do_not(run, tmp_path):
    """On a CPU the weights depend on the thread count (resources.train.cpus_per_task), so it is a
    tracked value like train's (DVC tracks the same key: test_parity); a job's runtime is not."""
    work = tmp_path / "copy"
    shutil.copytree(run, work, symlinks=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["resources"]["train"]["runtime"] += 60
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Nothing to be done" in sh(work, "snakemake", "-n").stdout
    params["resources"]["train"]["cpus_per_task"] += 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(work, "snakemake", "-n").stdout
    assert job_counts(out) == {"train": "2", "stylize": "2", "evaluate": "2", "report": "1", "all": "1"}, out[-3000:]


def test_editing_a_steps_code_reruns_that_step(run, tmp_path):
    """Each rule's inputs hold the source files of its dvc.yaml stage: an edit reruns what DVC reruns."""
    work = tmp_path / "copy"
    shutil.copytree(run, work, symlinks=True)
    with open(work / "src/stylepipe/report.py", "a") as f:
        f.write("\n# edited\n")
    assert job_counts(sh(work, "snakemake", "-n").stdout) == {"report": "1", "all": "1"}
    with open(work / "src/stylepipe/losses.py", "a") as f:  # training's and evaluation's
        f.write("\n# edited\n")
    out = sh(work, "snakemake", "-n").stdout
    assert job_counts(out) == {"train": "2", "stylize": "2", "evaluate": "2", "report": "1", "all": "1"}, out[-3000:]


def test_the_same_values_written_otherwise_rerun_nothing(run, tmp_path):
    """Snakemake compares recorded params as text: keys in another order, or 1 as 1.0, are no change."""
    work = tmp_path / "copy"
    shutil.copytree(run, work, symlinks=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"] = dict(reversed(params["train"].items()))
    assert params["train"]["tv_weight"] == 0.0 and isinstance(params["train"]["tv_weight"], float)
    params["train"]["tv_weight"] = 0  # as `dvc exp run -S train.tv_weight=0` writes it
    text = yaml.safe_dump(params, sort_keys=False)
    assert text != (work / "params.yaml").read_text()
    (work / "params.yaml").write_text(text)
    assert "Nothing to be done" in sh(work, "snakemake", "-n").stdout
