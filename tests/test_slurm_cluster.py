"""scripts/slurm-cluster.sh: `up` twice is harmless, `down` stops only what `up` started.

It brings up a second, private cluster (own directory and ports) beside any
running one, so the cluster the other `slurm` tests use is left alone. With
two nodes (two slurmds on this host) a style trained on both runs through
the Slurm profile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import tiny_params_dict
from slurm_cluster import SCRIPT, job_record, run_limited, unavailable

pytestmark = pytest.mark.slurm


def script(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def pids(state: Path) -> dict:
    return {p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid")}


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def cluster_env(state: Path, **values: str) -> dict:
    """The script's environment for a private cluster in ``state`` (its ports: ``values``)."""
    if os.geteuid() != 0:
        unavailable("the cluster script needs root (slurmd starts jobs as their users)")
    missing = [p for p in ("slurmctld", "slurmd", "munged") if not shutil.which(p, path=os.environ["PATH"] + ":/usr/sbin")]
    if missing:
        unavailable(f"Slurm packages missing ({', '.join(missing)}): apt-get install munge slurmctld slurmd slurm-client")
    env = {**os.environ, "STYLEPIPE_SLURM_DIR": str(state), **values}
    env.pop("SLURM_CONF", None)
    return env


@pytest.fixture
def private_cluster(tmp_path):
    state = tmp_path / "cluster"
    env = cluster_env(state, STYLEPIPE_SLURMCTLD_PORT="6917", STYLEPIPE_SLURMD_PORT="6918", STYLEPIPE_SLURM_GPUS="2")
    yield env, state
    script(env, "down")


@pytest.fixture
def two_node_cluster(tmp_path):
    state = tmp_path / "cluster"
    # ports of its own (slurmd: 6928 and 6929), beside the one-node private cluster's
    env = cluster_env(state, STYLEPIPE_SLURMCTLD_PORT="6927", STYLEPIPE_SLURMD_PORT="6928", STYLEPIPE_SLURM_GPUS="0",
                      STYLEPIPE_SLURM_NODES="2")
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



@pytest.mark.slow
def test_a_style_trained_on_two_nodes_runs_on_both(two_node_cluster, tmp_path):
    from test_slurm import FAST_POLLING, tool_env, workspace

    env, state = two_node_cluster
    site_conf = Path("/etc/slurm/slurm.conf")
    if site_conf.exists() or site_conf.is_symlink():
        # the jobstep's srun inside a job then asks that cluster's controller for the allocation ("invalid job id")
        pytest.skip(f"{site_conf} is another cluster's configuration ({os.path.realpath(site_conf)}): the srun "
                    "inside this cluster's jobs would reach that controller; stop that cluster "
                    "(scripts/slurm-cluster.sh down) to run this test")
    up = script(env, "up")
    assert up.returncode == 0, up.stderr
    started = pids(state)
    assert {"slurmctld", "slurmd-node1", "slurmd-node2"} <= set(started), started
    conf = {**env, "SLURM_CONF": str(state / "etc/slurm.conf")}
    sinfo = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=conf, capture_output=True, text=True, timeout=15)
    assert sinfo.stdout.split() == ["node1", "idle", "node2", "idle"], sinfo.stdout

    params = tiny_params_dict()
    params["resources"]["resize"]["cpus_per_task"] = 1
    params["styles"] = {"nodes": {"generate": "dots", "accelerator": "cpu", "devices": 1, "num_nodes": 2,
                                  "strategy": "ddp", "resources": {"gpu": 0, "cpus_per_task": 1}}}
    root = workspace(tmp_path / "run", params)
    # the nodes' names are this cluster's alone (no DNS knows node1): Lightning finds rank 0 at MASTER_ADDR
    run_env = {**tool_env(conf), "MASTER_ADDR": "127.0.0.1"}
    proc = run_limited(["snakemake", "--profile", "slurm", "--verbose", *FAST_POLLING, "results/models/nodes.pth"],
                       cwd=root, env=run_env, timeout=480)
    assert proc.returncode == 0, proc.stdout[-8000:]
    [call] = [line for line in proc.stdout.splitlines() if "sbatch call: sbatch" in line and "wildcards_nodes" in line]
    assert "--nodes=2" in call and "--gpus" not in call, call
    assert re.search(r"srun --nodes=2 --ntasks-per-node=1 \S+ stylepipe train .*--style nodes", proc.stdout)
    summary = yaml.safe_load((root / "results/train/nodes/summary.json").read_text())
    assert summary["processes"] == 2 and summary["cluster_environment"] == "SLURMEnvironment", summary
    assert (root / "results/models/nodes.onnx").is_file()
    # one task on each node
    [job_log] = (root / "logs/slurm/rule_train/nodes").glob("*.log")
    record = job_record(job_log.stem, conf)
    assert record.get("NodeList") == "node[1-2]", record
    log = (root / "logs/train/nodes.log").read_text()
    assert "MEMBER: 2/2" in log, log[-3000:]

    down = script(env, "down")
    assert down.returncode == 0, down.stderr
    assert not any(alive(pid) for pid in started.values())
