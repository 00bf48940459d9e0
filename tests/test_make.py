"""The Makefile's targets as README.md describes them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_bench_skips_the_gpu_benchmarks_without_cuda(tmp_path):
    # `make bench`'s loop (as `make -n` prints it, with no setup run) over stand-in benchmarks
    recipe = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), "bench"], capture_output=True, text=True, check=True)
    loop = recipe.stdout[recipe.stdout.index("for b in"):]
    (tmp_path / "benchmarks").mkdir()
    for name, code in [("a.py", "print('a: 1.0x')"), ("gpu_b.py", "raise SystemExit('CUDA error')"),
                       ("c.py", "print('c: 2.0x')")]:
        (tmp_path / "benchmarks" / name).write_text(code)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = subprocess.run(["bash", "-c", loop], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["a: 1.0x", "c: 2.0x", "benchmarks/gpu_b.py: skipped, no CUDA GPU"]
