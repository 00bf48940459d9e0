"""Bad params stop `snakemake -n` before any job, with the offending key named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_checkout, tiny_params_dict

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def _workflow_copy(root: Path) -> Path:
    return copy_checkout(root)


def _dry_run(root: Path, params: dict) -> subprocess.CompletedProcess:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run([SNAKEMAKE, "-n", "--cores", "1"], cwd=root, capture_output=True, text=True)


def _with(change) -> dict:
    params = tiny_params_dict()
    change(params)
    return params


CASES = {
    "unknown key": (lambda p: p["train"].update(learning_rate=0.1), "train.learning_rate"),
    "unknown top-level key": (lambda p: p.update(sed=1), "sed"),
    "wrong type": (lambda p: p["train"].update(batch_size="four"), "train.batch_size"),
    # a quoted number (yaml.safe_dump quotes "1.0e+10"; it writes "1e10" plain, which is a number)
    "number read as text": (lambda p: p["train"].update(style_weight="1.0e+10"), "train.style_weight"),
    "unknown style override": (lambda p: p["styles"]["waves"].update(style_wieght=1.0), "styles.waves.style_wieght"),
    "missing style image": (lambda p: p["styles"].update(candy={"file": "images/candy.jpg"}), "styles.candy.file"),
    "missing section": (lambda p: p.pop("evaluate"), "evaluate"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_params_stop_before_any_job(case, tmp_path):
    root = _workflow_copy(tmp_path)
    change, key = CASES[case]
    proc = _dry_run(root, _with(change))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert key in output, output
    assert "Job stats" not in output and "rule fetch" not in output
    assert not (root / "logs").exists() and not (root / "data").exists()


def test_good_params_plan_every_job(tmp_path):
    root = _workflow_copy(tmp_path)
    proc = _dry_run(root, tiny_params_dict())
    assert proc.returncode == 0, proc.stderr
    stats = proc.stdout.split("Job stats:")[1].split("total")[0]
    counts = dict(line.split() for line in stats.splitlines()[3:] if line.strip())
    # two styles: one fetch_style, train, stylize, evaluate each; the rest once
    assert counts == {
        "fetch_content": "1", "fetch_eval": "1", "fetch_loss_network": "1", "fetch_style": "2", "resize": "1",
        "train": "2", "stylize": "2", "evaluate": "2", "report": "1", "all": "1",
    }


def _dry_run_overlays(root: Path, *overlays: dict) -> subprocess.CompletedProcess:
    files = ["params.yaml"]
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    for i, overlay in enumerate(overlays):
        (root / f"over{i}.yaml").write_text(yaml.safe_dump(overlay))
        files.append(f"over{i}.yaml")
    return subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--configfile", *files],
                          cwd=root, capture_output=True, text=True)


def test_overlay_setting_the_old_source_to_null_switches_it(tmp_path):
    root = _workflow_copy(tmp_path)
    (root / "photos").mkdir()
    (root / "waves.png").write_bytes(b"x")
    proc = _dry_run_overlays(root, {"data": {"content": {"skimage": None, "folder": "photos"}},
                                    "styles": {"waves": {"generate": None, "file": "waves.png"}}})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_overlay_naming_a_source_switches_it(tmp_path):
    root = _workflow_copy(tmp_path)
    (root / "photos").mkdir()
    (root / "waves.png").write_bytes(b"x")
    proc = _dry_run_overlays(root, {"data": {"content": {"folder": "photos"}}},
                             {"styles": {"waves": {"file": "waves.png", "style_weight": 1.0}}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rule fetch_content" in proc.stdout


def test_two_sources_in_one_file_say_so(tmp_path):
    root = _workflow_copy(tmp_path)
    proc = _dry_run(root, _with(lambda p: p["data"]["content"].update(folder="photos")))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "key data.content gives both folder and skimage: give one source" in output, output


def test_config_overrides_are_refused(tmp_path):
    # the commands read the params files: a --config value would change Snakemake's view only
    root = _workflow_copy(tmp_path)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    proc = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--config", "seed=1"], cwd=root,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "--config is not supported" in proc.stdout + proc.stderr
