"""The Snakemake profiles, dry-run on the default params.yaml: no cluster needed.

`snakemake --profile slurm` must work as typed from the root of a fresh
checkout; here the Slurm commands are hidden from PATH to show that planning
the run needs none of them (the submitting itself does, see test_slurm.py).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, WORKFLOW, copy_checkout
from slurm_cluster import run_limited

BIN = Path(sys.executable).parent
CHECKOUT = (*WORKFLOW, "profiles", "slurm", "params.yaml", "config")
STYLES = list(yaml.safe_load((REPO / "params.yaml").read_text())["styles"])


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("checkout"), CHECKOUT)


def dry_run(root: Path, *args: str, env: dict | None = None) -> str:
    # Only the Python environment and `which` on PATH: no sinfo, sbatch, squeue, sacct.
    tools = root.parent / f"{root.name}-tools"
    tools.mkdir(exist_ok=True)
    for tool in ("which", "sh"):
        found = shutil.which(tool)
        if found and not (tools / tool).exists():
            os.symlink(found, tools / tool)
    env = {"HOME": os.environ.get("HOME", str(root)), "PATH": f"{BIN}{os.pathsep}{tools}", "LANG": "C.UTF-8",
           **(env or {})}
    proc = run_limited(["snakemake", *args, "-n"], cwd=root, env=env, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:]
    return out


def jobs(output: str) -> list[dict]:
    """The jobs of a dry-run listing: rule, wildcards, resources."""
    found = []
    for block in re.split(r"\n(?=(?:local)?rule \S+:)", output):
        head = re.match(r"(?:local)?rule (\S+):", block)
        if not head:
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        found.append({
            "rule": head.group(1),
            "wildcards": dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")) if wildcards else {},
            "resources": dict(kv.split("=", 1) for kv in resources.group(1).split(", ")) if resources else {},
        })
    return found


def test_slurm_profile_plans_one_gpu_train_job_per_style(checkout):
    out = dry_run(checkout, "--profile", "slurm")
    assert "Using profile slurm" in out
    train = [job for job in jobs(out) if job["rule"] == "train"]
    assert sorted(job["wildcards"]["style"] for job in train) == sorted(STYLES)
    for job in train:
        res = job["resources"]
        assert int(res["gpu"]) >= 1, job
        assert int(res["mem_mb"]) > 0 and int(res["runtime"]) > 0 and int(res["cpus_per_task"]) >= 1, job
        # no partition/account of our own: Slurm's defaults (or SBATCH_PARTITION/SBATCH_ACCOUNT, below)
        assert "slurm_partition" not in res and "slurm_account" not in res, job
    # the profile's fallbacks fill in what params.yaml leaves open (the report has no `resources.report`)
    report = next(job for job in jobs(out) if job["rule"] == "report")
    assert report["resources"]["runtime"]


def test_slurm_profile_takes_partition_and_account_from_the_environment(checkout):
    profile = yaml.safe_load((checkout / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-status-command"] == "squeue"
    out = dry_run(checkout, "--profile", "slurm", env={"SBATCH_PARTITION": "gpu-long", "SBATCH_ACCOUNT": "styleproj"})
    train = [job for job in jobs(out) if job["rule"] == "train"]
    assert train and all(job["resources"]["slurm_partition"] == "gpu-long" for job in train)
    assert all(job["resources"]["slurm_account"] == "styleproj" for job in train)


def test_local_profile_plans_the_same_jobs(checkout):
    slurm = sorted((j["rule"], j["wildcards"].get("style", "")) for j in jobs(dry_run(checkout, "--profile", "slurm")))
    local = sorted((j["rule"], j["wildcards"].get("style", "")) for j in jobs(dry_run(checkout, "--profile", "profiles/local")))
    assert local == slurm


def test_gpu_model_reaches_every_gpu_job_and_a_multi_gpu_run_asks_gres(checkout, tmp_path):
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    for step in ("train", "stylize", "evaluate"):
        params["resources"][step]["gpu_model"] = "a100"
    style, other = STYLES[:2]
    params["styles"][style].update(devices=4, strategy="ddp")
    (tmp_path / "gpus.yaml").write_text(yaml.safe_dump(params))
    listed = jobs(dry_run(checkout, "--profile", "slurm", "--configfile", str(tmp_path / "gpus.yaml")))
    train = {job["wildcards"]["style"]: job["resources"] for job in listed if job["rule"] == "train"}
    # one GPU: gpu + gpu_model, which the executor turns into --gpus=a100:1
    assert train[other]["gpu"] == "1" and train[other]["gpu_model"] == "a100", train[other]
    # four processes: a typed gres per node, and no gpu/gpu_model (the executor would add a --gpus=a100:1)
    assert train[style]["gres"] == "gpu:a100:4" and "gpu_model" not in train[style], train[style]
    assert all(job["resources"]["gpu_model"] == "a100" for job in listed if job["rule"] in ("stylize", "evaluate"))
    assert all("gpu_model" not in job["resources"] for job in listed if job["rule"].startswith("fetch"))


def test_slurm_jobs_append_to_their_log_when_requeued(checkout):
    # a requeued job keeps its job id and so its log file: without append the interrupted run's lines are lost
    listed = jobs(dry_run(checkout, "--profile", "slurm"))
    submitted = [job for job in listed if not job["rule"].startswith("fetch") and job["rule"] != "all"]
    assert submitted and all("--open-mode=append" in job["resources"].get("slurm_extra", "") for job in submitted), \
        submitted
