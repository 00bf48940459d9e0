"""The pipeline through the real `dvc` in a temporary git repository.

`dvc repro` runs the same commands as Snakemake and gives the same results;
a second `dvc repro` runs nothing; changing one style's weight reruns only
that style's steps and the report; `dvc metrics diff` shows the change;
removing a style reruns the report, which then leaves the style out, as
Snakemake's does.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml
from PIL import Image

from conftest import tiny_params_dict
from stylepipe.config import load_params
from test_pipeline_snakemake import EVAL, job_counts, make_workspace, sh, snakemake_workspace

STYLES = sorted(tiny_params_dict()["styles"])
CHANGED = "waves"
RAN = re.compile(r"Running stage '([^']+)'")
# what varies from run to run: throughput, and the summary's timing fields
SPEED = re.compile(r"results/speed/.*\.json")
TIMING = ("wall_time_s", "images_per_s")


@pytest.fixture(scope="module")
def dvc_run(tmp_path_factory) -> dict:
    root = make_workspace(tmp_path_factory.mktemp("pipeline-dvc"), tiny_params_dict())
    result = {"root": root}
    # no OMP_NUM_THREADS: the training takes resources.train.cpus_per_task threads itself, the
    # count Snakemake gives its job, so both runners write the same files
    result["first"] = sh(root, "dvc", "repro").stdout
    snapshot = result["snapshot"] = tmp_path_factory.mktemp("dvc-first-run")
    shutil.copytree(root / "results", snapshot / "results")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "first run")
    result["second"] = sh(root, "dvc", "repro").stdout

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["styles"][CHANGED]["style_weight"] = params["train"]["style_weight"] * 10
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result["status"] = sh(root, "dvc", "status").stdout
    result["third"] = sh(root, "dvc", "repro").stdout
    result["metrics_diff"] = json.loads(sh(root, "dvc", "metrics", "diff", "--json").stdout)
    result["params_diff"] = sh(root, "dvc", "params", "diff").stdout
    return result


def test_first_repro_runs_every_stage(dvc_run):
    ran = set(RAN.findall(dvc_run["first"]))
    stages = {"fetch_content", "fetch_eval", "fetch_loss_network", "resize", "report"}
    for style in STYLES:
        stages |= {f"fetch_style@{style}", f"train@{style}", f"stylize@{style}", f"evaluate@{style}"}
    assert ran == stages


def test_same_results_as_snakemake(dvc_run, tmp_path_factory):
    dvc_root, smk_root = dvc_run["root"], snakemake_workspace(tmp_path_factory)
    first = dvc_run["snapshot"]  # results of the first `dvc repro`, before the params change
    # the inputs, byte for byte
    for rel in ("data/resized/manifest.json", "data/models/vgg16_features.pth",
                *(f"data/styles/{s}.png" for s in STYLES)):
        assert (dvc_root / rel).read_bytes() == (smk_root / rel).read_bytes(), rel
    # every result, byte for byte, in another folder and by the other runner, but for the
    # throughput and the summary's timing, which vary from run to run
    results = sorted(p.relative_to(smk_root).as_posix() for p in (smk_root / "results").rglob("*")
                     if p.is_file() and p.name != ".snakemake_timestamp")
    assert results == sorted(p.relative_to(first).as_posix() for p in (first / "results").rglob("*") if p.is_file())
    differ = [rel for rel in results if not SPEED.fullmatch(rel) and not rel.endswith("/summary.json")
              and (first / rel).read_bytes() != (smk_root / rel).read_bytes()]
    assert not differ, differ
    for style in STYLES:
        a, b = (json.loads((root / f"results/train/{style}/summary.json").read_text()) for root in (first, smk_root))
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    # the trained weights (same seed, CPU: bit for bit) and what they produce
    for style in STYLES:
        a = torch.load(first / f"results/models/{style}.pth", weights_only=True)
        b = torch.load(smk_root / f"results/models/{style}.pth", weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), style
        for png in sorted((smk_root / "results/stylized" / style).glob("*.png")):
            assert (first / "results/stylized" / style / png.name).read_bytes() == png.read_bytes()
        m_dvc = json.loads((first / f"results/metrics/{style}.json").read_text())
        m_smk = json.loads((smk_root / f"results/metrics/{style}.json").read_text())
        for key in ("content_loss", "style_loss", "total_loss", "ssim", "model_params"):
            assert m_dvc[key] == pytest.approx(m_smk[key], rel=1e-6), (style, key)
    with Image.open(first / "results/gallery.png") as a, Image.open(smk_root / "results/gallery.png") as b:
        assert a.size == b.size and a.tobytes() == b.tobytes()


def test_second_repro_runs_nothing(dvc_run):
    assert RAN.findall(dvc_run["second"]) == []
    assert "didn't change" in dvc_run["second"] or "up to date" in dvc_run["second"]


def test_changed_weight_reruns_only_that_style(dvc_run):
    ran = set(RAN.findall(dvc_run["third"]))
    must = {f"train@{CHANGED}", f"stylize@{CHANGED}", f"evaluate@{CHANGED}", "report"}
    # fetch_style@waves tracks the whole style entry (image source and overrides
    # side by side), so it reruns too and writes the same image
    assert must <= ran <= must | {f"fetch_style@{CHANGED}"}
    assert not any(stage.endswith(f"@{other}") for stage in ran for other in STYLES if other != CHANGED)
    assert f"train@{CHANGED}" in dvc_run["status"]
    assert f"styles.{CHANGED}" in dvc_run["params_diff"]


def test_metrics_diff_shows_the_change(dvc_run):
    diff = dvc_run["metrics_diff"]
    per_style = diff["results/metrics/" + CHANGED + ".json"]
    assert "style_loss" in per_style and per_style["style_loss"]["diff"] != 0
    combined = diff["results/metrics.json"]
    assert f"{CHANGED}.style_loss" in combined
    # nothing else moved: the other style's metrics are the same, and throughput is no metric
    other = [s for s in STYLES if s != CHANGED][0]
    assert f"results/metrics/{other}.json" not in diff
    assert not [key for key in combined if not key.startswith(f"{CHANGED}.")], combined
    assert not [key for values in diff.values() for key in values if any(word in key for word in TIMING)], diff


def test_snakemake_after_dvc_records_what_dvc_made_with_forceall(dvc_run, tmp_path):
    """Outputs DVC wrote are newer than their inputs: plain `--touch` sees nothing out of date and
    records nothing, so a params change would retrain nothing; `--touch --forceall` (README) records
    every output's params and code, and the change then reruns the steps that read it."""
    for touch, retrains in ((["--touch"], False), (["--touch", "--forceall"], True)):
        work = tmp_path / "-".join(touch)
        shutil.copytree(dvc_run["root"], work, symlinks=True)
        sh(work, "snakemake", *touch, "--cores", "1")
        assert "Nothing to be done" in sh(work, "snakemake", "-n").stdout
        params = yaml.safe_load((work / "params.yaml").read_text())
        params["train"]["lr"] /= 2
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        plan = sh(work, "snakemake", "-n").stdout
        counts = job_counts(plan) if "Job stats:" in plan else {}
        assert (counts.get("train") == str(len(STYLES))) == retrains, (touch, counts)


@pytest.mark.slow
def test_removed_style_leaves_both_reports(tmp_path_factory, tmp_path):
    from stylepipe.report import gallery_size

    work = tmp_path / "copy"
    shutil.copytree(snakemake_workspace(tmp_path_factory), work, symlinks=True)
    sh(work, "dvc", "commit", "--force")
    sh(work, "snakemake", "--touch", "--cores", "1")
    removed, kept = CHANGED, [s for s in STYLES if s != CHANGED]
    params = yaml.safe_load((work / "params.yaml").read_text())
    del params["styles"][removed]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # the removed style's files stay on disk; both runners redo the report only
    status = sh(work, "dvc", "status").stdout
    assert re.search(r"^report:\n(\t.*\n)*\t+modified: +styles$", status, re.M), status
    assert job_counts(sh(work, "snakemake", "-n").stdout) == {"report": "1", "all": "1"}
    assert set(RAN.findall(sh(work, "dvc", "repro").stdout)) == {"report"}
    assert sorted(json.loads((work / "results/metrics.json").read_text())) == kept
    with Image.open(work / "results/gallery.png") as gallery:
        assert gallery.size == gallery_size(1 + len(kept), 1 + len(EVAL))
    by_dvc = [(work / f).read_bytes() for f in ("results/metrics.json", "results/gallery.png")]

    # Snakemake's report (it has not recorded DVC's) writes the same files, so
    # DVC stays up to date: the runners agree instead of taking turns
    sh(work, "snakemake", "--cores", "1")
    assert [(work / f).read_bytes() for f in ("results/metrics.json", "results/gallery.png")] == by_dvc
    assert "up to date" in sh(work, "dvc", "status").stdout


def test_exp_run_sets_numbers_in_exponent_form(tmp_path):
    """`dvc exp run -S` writes params.yaml as YAML 1.2 (`1e-05`, no dot): every command reads a number."""
    root = make_workspace(tmp_path / "repo", tiny_params_dict())
    sh(root, "dvc", "exp", "run", "-n", "small-values", "-S", "+styles.waves.tv_weight=1.0e-05",
       "-S", "train.lr=2.0e-05", "fetch_style@waves")
    written = (root / "params.yaml").read_text()
    assert re.search(r"^    tv_weight: 1e-05$", written, re.M) and re.search(r"^  lr: 2e-05$", written, re.M), written
    assert "small-values" in sh(root, "dvc", "exp", "show", "--csv").stdout
    params = load_params([root / "params.yaml"])
    assert params["styles"]["waves"]["tv_weight"] == 1e-05 and params["train"]["lr"] == 2e-05


@pytest.mark.slow
def test_experiment_through_remotes_to_a_fresh_clone(dvc_run, tmp_path):
    """README, "A remote for DVC": push, clone, pull (clean, nothing to rerun), then an experiment
    pushed by name arrives whole: `stylepipe compare` finds all its files."""
    work, store, origin, clone = (tmp_path / name for name in ("work", "store", "origin.git", "clone"))
    shutil.copytree(dvc_run["root"], work, symlinks=True)
    sh(work, "git", "checkout", "-q", "--", ".")  # back to the first run, committed
    sh(work, "dvc", "checkout", "--force")
    sh(work, "dvc", "remote", "add", "-d", "local", str(store))
    sh(work, "git", "commit", "-q", "-m", "DVC remote", ".dvc/config")
    sh(tmp_path, "git", "init", "-q", "--bare", str(origin))
    sh(work, "git", "remote", "add", "origin", str(origin))
    sh(work, "git", "push", "-q", "origin", "HEAD")
    branch = sh(work, "git", "branch", "--show-current").stdout.strip()
    sh(work, "dvc", "push")
    # the fixture's change again, so DVC's run cache restores the training instead of rerunning it
    weight = yaml.safe_load((dvc_run["root"] / "params.yaml").read_text())["styles"][CHANGED]["style_weight"]
    sh(work, "dvc", "exp", "run", "-n", "heavy", "-S", f"+styles.{CHANGED}.style_weight={weight!r}")
    sh(work, "dvc", "exp", "push", "origin", "heavy")

    sh(tmp_path, "git", "clone", "-q", "--branch", branch, str(origin), str(clone))
    sh(clone, "dvc", "pull")
    assert "up to date" in sh(clone, "dvc", "status").stdout
    assert RAN.findall(sh(clone, "dvc", "repro").stdout) == []
    sh(clone, "dvc", "exp", "pull", "origin", "heavy")
    diff = json.loads(sh(clone, "dvc", "metrics", "diff", "HEAD", "heavy", "--json").stdout)
    assert diff["results/metrics/" + CHANGED + ".json"]["style_loss"]["diff"] > 0
    compared = sh(clone, "stylepipe", "compare", "HEAD", "heavy", "--output", str(tmp_path / "compare.html"))
    assert "missing" not in compared.stdout + compared.stderr, compared.stderr
