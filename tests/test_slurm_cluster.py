"""scripts/slurm-cluster.sh: `up` twice is harmless, `down` stops only what `up` started.

It brings up a second, private cluster (own directory and ports) beside any
running one, so the cluster the other `slurm` tests use is left alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from slurm_cluster import SCRIPT, unavailable

pytestmark = pytest.mark.slurm


def script(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def pids(state: Path) -> dict:
    return {p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid")}


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@pytest.fixture
def private_cluster(tmp_path):
    if os.geteuid() != 0:
        unavailable("the cluster script needs root (slurmd starts jobs as their users)")
    missing = [p for p in ("slurmctld", "slurmd", "munged") if not shutil.which(p, path=os.environ["PATH"] + ":/usr/sbin")]
    if missing:
        unavailable(f"Slurm packages missing ({', '.join(missing)}): apt-get install munge slurmctld slurmd slurm-client")
    state = tmp_path / "cluster"
    env = {**os.environ, "STYLEPIPE_SLURM_DIR": str(state), "STYLEPIPE_SLURMCTLD_PORT": "6917",
           "STYLEPIPE_SLURMD_PORT": "6918", "STYLEPIPE_SLURM_GPUS": "2"}
    env.pop("SLURM_CONF", None)
    yield env, state
    script(env, "down")


def test_up_is_idempotent_and_down_stops_only_its_daemons(private_cluster):
    env, state = private_cluster
    munged_before = subprocess.run(["pgrep", "-x", "munged"], capture_output=True, text=True).stdout.split()

    first = script(env, "up")
    assert first.returncode == 0, first.stderr
    started = pids(state)
    assert {"slurmctld", "slurmd"} <= set(started), started
    assert all(alive(pid) for pid in started.values())

    # the node is there, with its fake GPUs
    conf = {**env, "SLURM_CONF": str(state / "etc/slurm.conf")}
    sinfo = subprocess.run(["sinfo", "-h", "-N", "-o", "%T %G"], env=conf, capture_output=True, text=True, timeout=15)
    assert sinfo.stdout.split()[0] in ("idle", "mixed"), sinfo.stdout
    assert "gpu:2" in sinfo.stdout

    # again: nothing restarted
    second = script(env, "up")
    assert second.returncode == 0, second.stderr
    assert pids(state) == started
    status = script(env, "status")
    assert status.returncode == 0 and "slurmd: running" in status.stdout, status.stdout

    # a job runs on it and gets a GPU
    job = subprocess.run(["sbatch", "--wait", "--parsable", "--gpus=1", "--mem=50", "-o", str(state / "job.out"),
                          "--wrap", "echo gpus=$SLURM_JOB_GPUS"], env=conf, capture_output=True, text=True, timeout=60)
    assert job.returncode == 0, job.stderr
    assert "gpus=0" in (state / "job.out").read_text() or "gpus=1" in (state / "job.out").read_text()

    down = script(env, "down")
    assert down.returncode == 0, down.stderr
    assert not any(alive(pid) for pid in started.values())
    # a munged it did not start (e.g. the other cluster's) is still there
    for pid in munged_before:
        assert alive(int(pid))
    assert script(env, "status").returncode != 0

