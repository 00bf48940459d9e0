"""The benchmarks still run: each, at its smallest, ends with the ratio line `make bench` promises.

Nothing here times anything; these only keep the scripts from rotting as the
package changes under them (a benchmark that breaks is found by the next person
who needs its numbers, too late).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RATIO = re.compile(r"^speedup_vs_reference: \d+\.\d\d$")


def run_benchmark(name: str, *args: str) -> list[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout.strip().splitlines()


@pytest.mark.parametrize("name, args", [
    ("shard_reader.py", ()),
    ("stylize_throughput.py", ("--size", "64", "--rounds", "1")),
    ("dag_overhead.py", ("--entries", "200", "--repeat", "1")),
    pytest.param("resize_throughput.py", (), marks=pytest.mark.slow),
    pytest.param("train_throughput.py", ("--size", "32", "--steps", "1", "--rounds", "1"), marks=pytest.mark.slow),
])
def test_cpu_benchmark_ends_with_its_ratio(name, args):
    lines = run_benchmark(name, *args)
    assert RATIO.match(lines[-1]), lines[-5:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the GPU benchmarks would run in full")
@pytest.mark.parametrize("name", ["gpu_profile.py", "gpu_throughput.py"])
def test_gpu_benchmark_without_a_gpu_says_it_is_skipped(name):
    # `make bench` runs every script and stops at the first that fails
    lines = run_benchmark(name)
    assert lines[-1].startswith(f"{name.removesuffix('.py')}: skipped, no CUDA device"), lines
