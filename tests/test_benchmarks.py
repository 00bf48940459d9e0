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
    pytest.param("dag_overhead.py", ("--entries", "200", "--repeat", "1"), marks=pytest.mark.slow),
    pytest.param("resize_throughput.py", (), marks=pytest.mark.slow),
    pytest.param("train_throughput.py", ("--size", "32", "--steps", "1", "--rounds", "1"), marks=pytest.mark.slow),
])
def test_cpu_benchmark_ends_with_its_ratio(name, args):
    lines = run_benchmark(name, *args)
    assert RATIO.match(lines[-1]), lines[-5:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the GPU benchmarks would run in full")
@pytest.mark.parametrize("name", ["gpu_profile.py", "gpu_throughput.py", "gpu_variants.py"])
def test_gpu_benchmark_without_a_gpu_says_it_is_skipped(name):
    # `make bench` runs every script and stops at the first that fails
    lines = run_benchmark(name)
    assert lines[-1].startswith(f"{name.removesuffix('.py')}: skipped, no CUDA device"), lines


BEST = re.compile(r"^best_variant_vs_baseline: \d+\.\d\d \([\w-]+\)$")


@pytest.mark.slow
def test_gpu_variants_smoke_run_on_cpu_checks_every_variant():
    # one eager step per variant (about 8 s on an idle 2-core machine); exit status 0: every
    # variant's first loss and TransformerNet gradient matched the baseline's
    lines = run_benchmark("gpu_variants.py", "--device", "cpu", "--size", "32", "--batch-sizes", "2", "4",
                          "--no-compile")
    assert BEST.match(lines[-1]), lines[-12:]
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in
            ("baseline", "no-benchmark", "thin-8", "thin-16", "cudnn-all", "batch-4", "max-autotune")}
    assert len(rows) == 7, lines[-12:]
    assert "skipped: needs torch.compile" in rows["max-autotune"]
    assert all("x" in row and "DIFFERS" not in row for name, row in rows.items() if name != "max-autotune"), rows


@pytest.mark.slow
def test_gpu_throughput_smoke_run_on_cpu_reaches_every_section(tmp_path):
    # the script a session with a GPU runs first: a break found there costs the GPU time, so every section
    # but torch.compile runs here at its smallest (about 2 minutes on an idle 2-core machine)
    import json

    lines = run_benchmark("gpu_throughput.py", "--device", "cpu", "--size", "32", "--stylize-size", "64",
                          "--batch-sizes", "2", "--images", "4", "--no-compile", "--budget", "1000",
                          "--json", str(tmp_path / "results.json"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["batch_size"] for row in results["train"]] == [2]
    assert [row["deterministic"] for row in results["trainer"]] == [False, True]
    assert [row["batch_size"] for row in results["stylize"]] == [1, 8]
    assert results["determinism"].endswith("identical weights"), results["determinism"]
    assert any(line.startswith("Trainer deterministic=True") for line in lines), lines[-12:]


@pytest.mark.parametrize("conv", [(3, 32), (32, 3)], ids=["first 3->32", "last 32->3"])
def test_gpu_variants_channel_padded_conv_is_the_same_convolution(conv):
    # the thin-8/thin-16 variants: same output, same gradients on the real weights, same state_dict
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpu_variants import ChannelPaddedConv2d
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(*conv, kernel_size=9)
    padded = torch.nn.Conv2d(*conv, kernel_size=9)
    padded.load_state_dict(plain.state_dict())
    padded.__class__, padded.multiple = ChannelPaddedConv2d, 8
    x = torch.randn(2, conv[0], 20, 20).contiguous(memory_format=torch.channels_last).requires_grad_()
    outputs = [net(x) for net in (plain, padded)]
    assert outputs[1].shape == outputs[0].shape
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    grads = [torch.autograd.grad(out.square().sum(), [x, *net.parameters()]) for net, out in zip((plain, padded), outputs)]
    for got, want in zip(grads[1], grads[0]):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert {k: v.shape for k, v in padded.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
