"""Several nodes without Slurm: one `stylepipe train` per node, started by hand with Lightning's variables.

Each "node" here is a process on this machine (`devices: 1`, CPU, gloo), and
both see one filesystem, as the nodes of a cluster see a shared scratch. The
run of two nodes must be the run of one node with two devices: same world
size and seed, so on the CPU the same weights, bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from stylepipe import cli
from test_train import assert_identical, command, setup, train  # noqa: F401 (setup: the shared fixture)

MAX_STEPS = 6
TWO_PROCESSES = {"accelerator": "cpu", "strategy": "ddp", "max_steps": MAX_STEPS}


def params_file(root: Path, name: str, **train_values) -> Path:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(TWO_PROCESSES, **train_values)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def node_command(root: Path, run: str, params: Path, scratch: Path | None = None) -> list[str]:
    """`stylepipe train` writing into ``root/run``, with ``params`` (and ``scratch``, if given)."""
    cmd = command(root, run)
    cmd[cmd.index(str(root / "params.yaml"))] = str(params)
    if scratch is not None:
        cmd[cmd.index("--scratch") + 1] = str(scratch)
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nodes:
    """The processes of one launch, one per node, each as Lightning's docs start it on its machine."""

    def __init__(self, commands: list[list[str]], logs: Path):
        port = free_port()
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = [logs / f"node{rank}.log" for rank in range(len(commands))]
        self.procs = []
        for rank, (cmd, log) in enumerate(zip(commands, self.logs)):
            env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(rank)}
            # to files, not pipes: a node blocked on a full pipe would stall the other in a collective
            with log.open("w") as out:
                self.procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True))

    def signal_when(self, path: Path, signum: int) -> None:
        deadline = time.monotonic() + 240
        while not path.exists():
            assert all(p.poll() is None for p in self.procs), self.output()
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.02)
        for proc in self.procs:
            proc.send_signal(signum)

    def wait(self) -> list[int]:
        try:
            return [proc.wait(timeout=300) for proc in self.procs]
        except subprocess.TimeoutExpired:
            for proc in self.procs:
                proc.kill()  # SIGTERM would only ask for a checkpoint, which a stalled collective never reaches
            raise AssertionError(f"the nodes did not finish:\n{self.output()}")

    def output(self, rank: int | None = None) -> str:
        logs = self.logs if rank is None else [self.logs[rank]]
        return "\n".join(log.read_text()[-3000:] for log in logs)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_several_nodes_without_the_launch_variables_stop_at_once(setup, capsys, monkeypatch):
    # alone, node 0 would wait for the others until the process group times out (30 minutes)
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    params = params_file(setup, "nodes-unlaunched", devices=1, num_nodes=2)
    assert cli.main(node_command(setup, "unlaunched", params)[1:]) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stylepipe train: error:")]
    assert "train.num_nodes is 2 but the environment lacks MASTER_ADDR, MASTER_PORT, NODE_RANK" in line, line
    assert not (setup / "unlaunched" / "scratch" / "attempts.log").exists()

    # a node numbered past the last one would wait for the others as long
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("NODE_RANK", "2")
    assert cli.main(node_command(setup, "unlaunched", params)[1:]) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stylepipe train: error:")]
    assert "NODE_RANK is '2' but train.num_nodes is 2: number the nodes 0 to 1" in line, line


@pytest.mark.slow
def test_two_nodes_train_what_two_devices_on_one_node_train(setup):
    """Rank 0 alone writes; the weights equal a 1-node × 2-device run's; SIGTERM + restart of both ends there too."""
    two_devices = node_command(setup, "devices", params_file(setup, "two-devices", devices=2, num_nodes=1))
    train(setup, "devices", two_devices)
    nodes_params = params_file(setup, "two-nodes", devices=1, num_nodes=2)

    # node 1 is given outputs and a scratch folder of its own: it must write nothing into either
    node1 = setup / "nodes-rank1"
    nodes = Nodes([node_command(setup, "nodes", nodes_params),
                   node_command(setup, "nodes-rank1", nodes_params, scratch=node1 / "scratch")], setup / "nodes-logs")
    assert nodes.wait() == [0, 0], nodes.output()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in nodes.output(1)
    assert files_under(node1) == []
    run = setup / "nodes"
    for name in ("waves.pth", "waves.onnx", "waves.ckpt", "summary.json", "curves.csv", "val_curves.csv"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["cluster_environment"] == "LightningEnvironment", summary
    # 2 images a batch on each node, each node its own share: 8 training images make 2 steps an epoch
    assert summary["images_seen"] == MAX_STEPS * 2 * 2 and summary["epochs"] == MAX_STEPS / 2, summary
    assert (run / "scratch" / "attempts.log").read_text().count("started") == 1

    # the same process group as two devices on one node: the same batches, sums and weights
    assert_identical(setup / "devices" / "waves.pth", run / "waves.pth")
    assert (setup / "devices" / "waves.onnx").read_bytes() == (run / "waves.onnx").read_bytes()
    for name in ("curves.csv", "val_curves.csv"):
        assert (setup / "devices" / name).read_text() == (run / name).read_text(), name

    # SIGTERM to both nodes mid-run: both save (rank 0 writes), stop, and resume when started again
    cut = Nodes([node_command(setup, "cut", nodes_params)] * 2, setup / "cut-logs")
    cut.signal_when(setup / "cut" / "scratch" / "last.ckpt", signal.SIGTERM)
    assert cut.wait() == [128 + signal.SIGTERM] * 2, cut.output()
    assert not (setup / "cut" / "waves.pth").exists()

    # a node that does not see the scratch folder (node-local disk) would start over while node 0 resumes
    local = setup / "local-scratch"
    (local / "node0").mkdir(parents=True)
    for ckpt in (setup / "cut" / "scratch").glob("*.ckpt"):
        (local / "node0" / ckpt.name).write_bytes(ckpt.read_bytes())
    apart = Nodes([node_command(setup, "apart", nodes_params, scratch=local / f"node{rank}") for rank in (0, 1)],
                  setup / "apart-logs")
    assert apart.wait() == [2, 2], apart.output()
    assert "every node must see the same --scratch folder" in apart.output(1)

    resumed = Nodes([node_command(setup, "cut", nodes_params)] * 2, setup / "resume-logs")
    assert resumed.wait() == [0, 0], resumed.output()
    attempts = (setup / "cut" / "scratch" / "attempts.log").read_text()
    assert "interrupted by SIGTERM" in attempts and "resuming from" in attempts, attempts
    assert re.search(r"resumed at step [1-9]", attempts), attempts  # from the checkpoint, not from step 0
    assert_identical(run / "waves.pth", setup / "cut" / "waves.pth")

    # the same with a finished run's checkpoint on node 0 alone: it would stop at once, node 1 start over
    (local / "done0").mkdir()
    (local / "done0" / "final.ckpt").write_bytes((setup / "cut" / "scratch" / "final.ckpt").read_bytes())
    done = Nodes([node_command(setup, "done", nodes_params, scratch=local / f"done{rank}") for rank in (0, 1)],
                 setup / "done-logs")
    assert done.wait() == [2, 2], done.output()
    assert "every node must see the same --scratch folder" in done.output(1)
