"""Snakefile and dvc.yaml describe one pipeline: same stages, commands, outputs, params.

Each side is read by its own tool: Snakemake builds its DAG of jobs (every rule,
wildcards filled in, shell commands formatted) and DVC renders dvc.yaml (foreach
expanded, ${...} interpolated, params read from params.yaml). The test compares
what the tools see, not the files' text.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from stylepipe.cli import COMMANDS
from stylepipe.config import canonical
from conftest import REPO

SNAKEMAKE_JOBS = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (
    ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings, StorageSettings,
)

repo = Path(sys.argv[1]).resolve()
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow_api = api.workflow(
        resource_settings=ResourceSettings(cores=1),
        config_settings=ConfigSettings(),
        storage_settings=StorageSettings(),
        snakefile=repo / "Snakefile",
        workdir=repo,
    )
    dag_api = workflow_api.dag(DAGSettings(forceall=True))
    workflow = workflow_api._workflow
    workflow.dag_settings = dag_api.dag_settings
    workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
    workflow._build_dag()
    jobs = [
        {
            "rule": job.rule.name,
            "wildcards": dict(job.wildcards_dict),
            "input": [str(f) for f in job.input],
            "output": [str(f) for f in job.output],
            "tracked": job.params.get("tracked"),
            "cmd": job.shellcmd,
        }
        for job in workflow.dag.jobs
    ]
print(json.dumps(jobs))
"""

DVC_STAGES = r"""
import json, sys
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo

stages = []
for stage in Repo(sys.argv[1]).index.stages:
    params = {}
    for dep in stage.deps:
        if isinstance(dep, ParamsDependency):
            params.update(dep.read_params())
    stages.append({
        "name": stage.addressing,
        "cmd": stage.cmd,
        "deps": [str(d.def_path) for d in stage.deps if not isinstance(d, ParamsDependency)],
        "outs": [str(o.def_path) for o in stage.outs],
        "params": params,
    })
print(json.dumps(stages))
"""

LOG_REDIRECT = re.compile(r"\s*>\s*\S+\s+2>&1\s*$")


def _run_json(code: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-c", code, str(REPO)],
        cwd=REPO, capture_output=True, text=True, check=False,
        env={**__import__("os").environ, "DVC_NO_ANALYTICS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def snakemake_jobs() -> dict[str, dict]:
    jobs = {}
    for job in _run_json(SNAKEMAKE_JOBS):
        if job["rule"] == "all":
            continue
        name = job["rule"] + ("@" + job["wildcards"]["style"] if "style" in job["wildcards"] else "")
        jobs[name] = job
    return jobs


@pytest.fixture(scope="module")
def dvc_stages() -> dict[str, dict]:
    return {stage["name"]: stage for stage in _run_json(DVC_STAGES)}


def _snakemake_cmd(job: dict) -> list[str]:
    # Snakemake sends each job's output to its log file; DVC shows it.
    return LOG_REDIRECT.sub("", job["cmd"]).split()


def _dvc_cmd(stage: dict) -> list[str]:
    return stage["cmd"].split()


def _covers(path: str, other: str) -> bool:
    return other == path or other.startswith(path.rstrip("/") + "/")


def test_same_stages(snakemake_jobs, dvc_stages):
    assert sorted(snakemake_jobs) == sorted(dvc_stages)
    # one job per style for the per-style steps, on the default params
    styles = {name.split("@")[1] for name in dvc_stages if name.startswith("train@")}
    assert len(styles) >= 2


def test_same_commands(snakemake_jobs, dvc_stages):
    for name, stage in dvc_stages.items():
        assert _dvc_cmd(stage) == _snakemake_cmd(snakemake_jobs[name]), name
        # every step runs a `stylepipe` command that takes the same params file
        assert stage["cmd"].startswith("stylepipe "), name


def test_same_outputs(snakemake_jobs, dvc_stages):
    for name, stage in dvc_stages.items():
        assert sorted(stage["outs"]) == sorted(snakemake_jobs[name]["output"]), name


def test_same_params(snakemake_jobs, dvc_stages):
    for name, stage in dvc_stages.items():
        tracked = snakemake_jobs[name]["tracked"]
        assert tracked is not None, f"{name}: Snakemake rule has no params.tracked"
        assert sorted(tracked) == sorted(stage["params"]), name
        # as Snakemake records them: a canonical text of the values DVC reads
        assert tracked == {key: canonical(value) for key, value in stage["params"].items()}, name


def test_same_inputs_and_source_deps(snakemake_jobs, dvc_stages):
    for name, stage in dvc_stages.items():
        deps = stage["deps"]
        inputs = snakemake_jobs[name]["input"]
        # the same data and source files, though DVC may name a folder where Snakemake lists its files
        for path in inputs:
            assert any(_covers(dep, path) for dep in deps), f"{name}: Snakemake input {path} not a DVC dep"
        for dep in deps:
            assert any(_covers(dep, path) for path in inputs), f"{name}: DVC dep {dep} not a Snakemake input"
        # the stage depends on the module that runs its command, and those files exist
        src = [d for d in deps if d.startswith("src/")]
        command = stage["cmd"].split()[1]
        module = "src/" + COMMANDS[command][0].replace(".", "/")
        module_file = module if (REPO / module).is_dir() else module + ".py"  # a package: its whole folder
        assert any(_covers(dep, module_file) for dep in src), f"{name}: {module_file} not among its deps"
        for dep in src:
            assert (REPO / dep).exists(), f"{name}: dependency {dep} does not exist"
        # a folder of code: Snakemake watches each of its files (a folder's time changes only when files come or go)
        for dep in src:
            if (REPO / dep).is_dir():
                files = {str(f.relative_to(REPO)) for f in (REPO / dep).rglob("*.py")}
                assert files and files <= set(inputs), f"{name}: {dep}'s files are not all Snakemake inputs"


def test_commands_read_no_shell_globs(dvc_stages):
    # A glob reads whatever files the folder holds (a removed style's too), which
    # neither the stage's params nor Snakemake's inputs describe.
    for name, stage in dvc_stages.items():
        assert not any(ch in stage["cmd"] for ch in "*?["), f"{name}: shell glob in {stage['cmd']!r}"


def test_report_follows_the_style_list(snakemake_jobs, dvc_stages):
    # both runners rerun the report when a style is added or removed, and the
    # command takes the style list from the params files it is given
    styles = sorted(name.split("@")[1] for name in dvc_stages if name.startswith("train@"))
    assert sorted(dvc_stages["report"]["params"]["styles"]) == styles
    assert sorted(json.loads(snakemake_jobs["report"]["tracked"]["styles"])) == styles
    assert "--params params.yaml" in dvc_stages["report"]["cmd"]
