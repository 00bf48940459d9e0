"""`snakemake --profile slurm` on a real Slurm cluster, tiny offline params.

One pipeline run is shared by the tests here. Besides the two tiny styles it
trains `long` (more steps), which is sent SIGUSR1 and later requeued
mid-training, and `ddp`, trained by two processes (CPU + gloo) that Slurm
starts as two tasks. Start a cluster with `scripts/slurm-cluster.sh up`;
without one these tests skip (and fail when CI=true).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, WORKFLOW, copy_checkout, tiny_params_dict
from slurm_cluster import cancel_jobs_of, job_record, require_cluster, run_limited

# a pipeline on a real cluster takes minutes: CI runs it with the other slow tests
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BIN = Path(sys.executable).parent
WORKFLOW_FILES = (*WORKFLOW, "profiles")
TINY_STYLES = sorted(tiny_params_dict()["styles"])
# status checks every few seconds instead of the plugin's 40 s: the jobs here take seconds
FAST_POLLING = ("--slurm-init-seconds-before-status-checks", "2")
RUN_TIMEOUT = 480
LONG_STEPS = 12


def slurm_params() -> dict:
    params = tiny_params_dict()
    for step in ("train", "stylize", "evaluate"):
        params["resources"][step]["gpu"] = 1
    params["resources"]["resize"]["cpus_per_task"] = 1
    # long enough to be caught mid-training; checkpoints every 2 steps (tiny params)
    params["styles"]["long"] = {"generate": "stripes", "max_steps": LONG_STEPS, "val_check_interval": LONG_STEPS}
    # two processes on one node: 2 Slurm tasks, Lightning's DDP over gloo
    params["styles"]["ddp"] = {"generate": "dots", "accelerator": "cpu", "devices": 2, "strategy": "ddp",
                               "resources": {"gpu": 0, "cpus_per_task": 1}}
    return params


def workspace(root: Path, params: dict) -> Path:
    copy_checkout(root, WORKFLOW_FILES)
    (root / "slurm").symlink_to("profiles/slurm")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def tool_env(slurm: dict) -> dict:
    # jobs inherit the submitting environment (sbatch --export=ALL): `stylepipe` from this venv
    return {**slurm, "PATH": f"{BIN}:{slurm.get('PATH', '')}"}


def reference_train(root: Path, out: Path) -> subprocess.Popen:
    """`long` trained here, never interrupted: the weights the preempted run must end with."""
    cmd = ["stylepipe", "train", "--params", "params.yaml", "--style", "long", "--data", "data/resized",
           "--style-image", "data/styles/long.png", "--loss-network", "data/models/vgg16_features.pth",
           "--model", str(out / "long.pth"), "--scratch", str(out / "scratch")]
    # as many torch threads as the Slurm job (Snakemake sets OMP_NUM_THREADS to the job's threads):
    # on CPU the weights are equal bit for bit only when the sums run in the same order
    threads = str(slurm_params()["resources"]["train"]["cpus_per_task"])
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=(out / "train.log").open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@dataclass
class Preemption:
    """Interrupts the `long` training twice, the two ways a cluster stops a job.

    First `scancel --signal=USR1` (no --full: the signal goes to the job's
    steps, as `sbatch --signal=USR1@<seconds>` sends it): the training saves
    and fails, and Snakemake submits it once more (`retries: 1`). Then, once
    that second job has written a checkpoint of its own, `scontrol requeue`,
    the way Slurm preempts a job. As soon as the first job is queued (its
    inputs are complete), the uninterrupted reference training starts beside
    the cluster run.
    """

    root: Path
    env: dict
    signalled: str | None = None  # the job sent SIGUSR1
    job_id: str | None = None  # the job requeued
    checkpoints_then: list = field(default_factory=list)
    model_existed: bool = False
    reference: subprocess.Popen | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def long_jobs(self) -> list[tuple[str, str]]:
        """(job id, state) of this run's `long` training jobs in squeue."""
        queue = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k|%Z"], env=self.env, capture_output=True,
                               text=True, timeout=15).stdout
        jobs = []
        for line in queue.splitlines():
            job, state, comment, workdir = line.split("|", 3)
            if comment == "rule_train_wildcards_long" and Path(workdir).resolve() == self.root.resolve():
                jobs.append((job, state))
        return jobs

    def watch(self) -> None:
        scratch = self.root / "scratch/train/long"
        while not self.stop.is_set() and self.job_id is None:
            for job, state in self.long_jobs():
                if self.reference is None:
                    self.reference = reference_train(self.root, self.reference_dir)
                if state != "RUNNING":
                    continue
                steps = list(scratch.glob("step*.ckpt"))
                if self.signalled is None and steps:
                    self.checkpoints_then = sorted(p.name for p in scratch.glob("*.ckpt"))
                    self.model_existed = (self.root / "results/models/long.pth").exists()
                    subprocess.run(["scancel", "--signal=USR1", job], env=self.env, check=True, timeout=15)
                    self.signalled = job
                elif self.signalled not in (None, job) and self.saved_since_signal(scratch):
                    subprocess.run(["scontrol", "requeue", job], env=self.env, check=True, timeout=15)
                    self.job_id = job
            time.sleep(0.2)

    @staticmethod
    def saved_since_signal(scratch: Path) -> bool:
        """A step checkpoint newer than the one written on SIGUSR1: the second job is training."""
        try:
            stopped = (scratch / "preempted.ckpt").stat().st_mtime_ns
            return any(p.stat().st_mtime_ns > stopped for p in scratch.glob("step*.ckpt"))
        except FileNotFoundError:
            return False

    @property
    def reference_dir(self) -> Path:
        return self.root.parent / f"{self.root.name}-reference"

    def reference_result(self, timeout: float) -> Path:
        assert self.reference is not None, "the reference training never started"
        try:
            rc = self.reference.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.reference.pid, signal.SIGKILL)
            raise AssertionError(f"reference training still running after {timeout:.0f} s")
        out = self.reference_dir
        assert rc == 0, (out / "train.log").read_text()[-4000:]
        return out / "long.pth"


@dataclass
class Run:
    root: Path
    env: dict
    proc: subprocess.CompletedProcess
    seconds: float
    preemption: Preemption

    def sbatch_calls(self) -> dict[str, list[str]]:
        """Each submitted job's sbatch call, by its comment (rule_<rule>[_wildcards_<style>])."""
        calls: dict[str, list[str]] = {}
        for line in self.proc.stdout.splitlines():
            if "sbatch call: sbatch" in line:
                comment = re.search(r"--comment (\S+)", line).group(1)
                calls.setdefault(comment, []).append(line)
        return calls


@pytest.fixture(scope="module")
def cluster() -> dict:
    return require_cluster()


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    root = workspace(tmp_path_factory.mktemp("slurm-run"), slurm_params())
    env = tool_env(cluster)
    preemption = Preemption(root, env)
    watcher = threading.Thread(target=preemption.watch, daemon=True)
    watcher.start()
    start = time.monotonic()
    try:
        proc = run_limited(["snakemake", "--profile", "slurm", "--verbose", *FAST_POLLING],
                           cwd=root, env=env, timeout=RUN_TIMEOUT)
    finally:
        preemption.stop.set()
        watcher.join()
    run = Run(root, env, proc, time.monotonic() - start, preemption)
    (root / "snakemake-output.log").write_text(proc.stdout)  # for a look after a failure
    print(f"snakemake --profile slurm: {run.seconds:.0f} s")
    yield run
    if preemption.reference is not None and preemption.reference.poll() is None:
        os.killpg(preemption.reference.pid, signal.SIGKILL)


def test_every_job_completes(slurm_run):
    assert slurm_run.proc.returncode == 0, slurm_run.proc.stdout[-8000:]
    root = slurm_run.root
    for style in [*TINY_STYLES, "long", "ddp"]:
        for path in (f"results/models/{style}.pth", f"results/models/{style}.onnx",
                     f"results/metrics/{style}.json", f"results/train/{style}/summary.json"):
            assert (root / path).is_file(), path
    assert (root / "results/metrics.json").is_file() and (root / "results/gallery.png").is_file()
    dry = run_limited(["snakemake", "--profile", "slurm", "-n"], cwd=root, env=slurm_run.env, timeout=120)
    assert "Nothing to be done" in dry.stdout, dry.stdout[-3000:]


def test_compute_steps_went_through_sbatch_with_a_gpu_request(slurm_run):
    calls = slurm_run.sbatch_calls()
    for rule in ("train", "stylize", "evaluate"):
        for style in [*TINY_STYLES, "long"]:
            submitted = calls.get(f"rule_{rule}_wildcards_{style}")
            assert submitted, f"{rule} {style} was not submitted with sbatch"
            assert all("--gpus=1" in call for call in submitted), submitted
    assert "rule_resize" in calls
    # downloads and the report stay on the submitting node (localrules)
    assert not [c for c in calls if c.startswith(("rule_fetch", "rule_report", "rule_all"))], sorted(calls)
    assert not (slurm_run.root / "logs/slurm/rule_fetch_content").exists()


def test_models_are_byte_identical_to_a_local_run(slurm_run, tmp_path_factory):
    from test_pipeline_snakemake import snakemake_workspace

    local = snakemake_workspace(tmp_path_factory)
    for style in TINY_STYLES:
        assert (slurm_run.root / f"results/models/{style}.pth").read_bytes() == \
            (local / f"results/models/{style}.pth").read_bytes(), style


def test_preempted_training_resumes_and_ends_with_uninterrupted_weights(slurm_run):
    preemption, root = slurm_run.preemption, slurm_run.root
    assert preemption.signalled, "the `long` training job was never seen running with a checkpoint"
    assert not preemption.model_existed, "signalled after training had finished: not mid-training"
    assert f"step{LONG_STEPS:07d}.ckpt" not in preemption.checkpoints_then, preemption.checkpoints_then
    # SIGUSR1 reached the training (its own job step): it saved and failed, and Snakemake retried it
    first = (root / f"logs/slurm/rule_train/long/{preemption.signalled}.log").read_text()
    assert "exited with non-zero exit code" in first, first[-3000:]
    assert preemption.job_id, "no second `long` job ran after SIGUSR1, or it never wrote a checkpoint"
    record = job_record(preemption.job_id, slurm_run.env)
    if record:  # Slurm forgets finished jobs after MinJobAge
        assert int(record["Restarts"]) >= 1, record
        assert record["JobState"] == "COMPLETED", record
    # the requeued job ran twice under one job id: its Slurm log holds both runs
    requeued = (root / f"logs/slurm/rule_train/long/{preemption.job_id}.log").read_text()
    assert requeued.count("Workflow ID") >= 4, requeued[:3000]  # Snakemake and the job's own, per run
    log = (root / "logs/train/long.log").read_text()
    assert "resuming from" in log, log[-3000:]
    # Snakemake rewrote that log at each attempt; the attempts' history is in scratch
    attempts = (root / "scratch/train/long/attempts.log").read_text()
    assert "interrupted by SIGUSR1" in attempts and attempts.count("resuming from") >= 1, attempts
    assert re.search(r"resumed at step [1-9]", attempts), attempts  # from the checkpoint, not from step 0
    assert attempts.splitlines()[-1].endswith(f"finished at step {LONG_STEPS}"), attempts
    # started by srun as a job step of its own (Lightning warns when a Slurm job's training is not)
    assert "is available on your system but is not used" not in log, log[-3000:]

    reference = preemption.reference_result(timeout=300)
    resumed = torch.load(root / "results/models/long.pth", weights_only=True)
    uninterrupted = torch.load(reference, weights_only=True)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted[key]), key


def test_two_processes_train_one_style_as_two_slurm_tasks(slurm_run):
    root = slurm_run.root
    [call] = slurm_run.sbatch_calls()["rule_train_wildcards_ddp"][-1:]
    assert "--ntasks-per-node=2" in call and "--gpus" not in call, call
    summary = yaml.safe_load((root / "results/train/ddp/summary.json").read_text())
    # the ranks came from Slurm (srun ran in the job), not from Lightning starting its own processes
    assert summary["processes"] == 2 and summary["cluster_environment"] == "SLURMEnvironment", summary
    log = (root / "logs/train/ddp.log").read_text()
    assert "MEMBER: 2/2" in log, log[-3000:]
    # started by srun inside the allocation, one task per device
    assert re.search(r"srun --nodes=1 --ntasks-per-node=2 \S+ stylepipe train .*--style ddp", slurm_run.proc.stdout)


FAILING = """
rule all:
    input: "never.txt"

rule broken:
    output: "never.txt"
    resources: mem_mb=50, runtime=5
    shell: "echo about to fail; exit 3"
"""


def test_a_failing_job_is_reported_as_failed_not_waited_for(cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(FAILING)
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    (tmp_path / "slurm").symlink_to("profiles/slurm")
    env = tool_env(cluster)
    start = time.monotonic()
    proc = run_limited(["snakemake", "--profile", "slurm", "--retries", "0", *FAST_POLLING],
                       cwd=tmp_path, env=env, timeout=180)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert re.search(r"SLURM-job '\d+' failed, SLURM status is: 'FAILED'", proc.stdout), proc.stdout[-3000:]
    assert not (tmp_path / "never.txt").exists()
    cancel_jobs_of(tmp_path, env)
    print(f"failure reported after {time.monotonic() - start:.0f} s")
