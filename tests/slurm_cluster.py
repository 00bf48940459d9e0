"""Finding the Slurm cluster the `slurm` tests run on, and running commands under a hard limit.

The tests use the cluster `scripts/slurm-cluster.sh up` started (or whatever
SLURM_CONF / /etc/slurm/slurm.conf point at). Without one they skip with the
reason, except in CI (CI=true), where a skipped cluster test is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "slurm-cluster.sh"


def script_conf() -> Path:
    base = os.environ.get("STYLEPIPE_SLURM_DIR") or os.path.join(os.environ.get("TMPDIR", "/tmp"), "stylepipe-slurm")
    return Path(base) / "etc" / "slurm.conf"


def slurm_env() -> dict:
    """The environment for Slurm clients: SLURM_CONF set when only the script's config exists."""
    env = dict(os.environ)
    if "SLURM_CONF" not in env and not Path("/etc/slurm/slurm.conf").exists() and script_conf().exists():
        env["SLURM_CONF"] = str(script_conf())
    return env


def unavailable(reason: str):
    """Skip with ``reason`` locally; fail in CI, where the cluster must be there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def require_cluster() -> dict:
    """The Slurm client environment, once `sinfo` shows a node that can take jobs."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        unavailable("no Slurm client commands (apt-get install slurm-client; then scripts/slurm-cluster.sh up)")
    env = slurm_env()
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        unavailable("sinfo did not answer within 15 s: is slurmctld running? (scripts/slurm-cluster.sh up)")
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        unavailable(f"no Slurm node ready (sinfo: {(proc.stdout + proc.stderr).strip()[:200]!r}); "
                    "start one with scripts/slurm-cluster.sh up")
    return env


def run_limited(cmd: list[str], *, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group and kill the whole group at ``timeout``.

    Snakemake ignores SIGTERM while it waits for cluster jobs, so the limit is
    enforced with SIGKILL; the run's Slurm jobs are cancelled too.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        cancel_jobs_of(cwd, env)
        raise AssertionError(f"{' '.join(cmd)} still running after {timeout:.0f} s; killed. Output:\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def cancel_jobs_of(workdir: Path, env: dict) -> None:
    """Cancel the Slurm jobs whose working directory is ``workdir`` (and only those)."""
    try:
        proc = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], env=env, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):  # no Slurm here, or no answer: nothing we can cancel
        return
    ids = [line.split("|")[0] for line in proc.stdout.splitlines()
           if "|" in line and Path(line.split("|", 1)[1]).resolve() == Path(workdir).resolve()]
    if ids:
        subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=15)


def job_record(job_id: str, env: dict) -> dict:
    """`scontrol show job` as a dict (while Slurm still holds the record: MinJobAge)."""
    proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True, timeout=15)
    record = {}
    for field in proc.stdout.split():
        key, _, value = field.partition("=")
        record[key] = value
    return record
