"""How long the workflow tools take to decide what to run, at COCO scale.

Builds a workspace with the default params.yaml (four styles) whose pipeline
has already run: every output exists and is recorded (`dvc commit`,
`snakemake --touch`), with a COCO-sized content zip and resize manifest
(82,783 entries by default). Then times, best of a few runs:

- `snakemake -n` (parse, validate params, build the DAG, check every output),
- `dvc status` (render dvc.yaml, compare every dependency and output).

The goal is under 3 s each; the last line is the goal divided by the slower of
the two (above 1.00 means both are within it).

    python benchmarks/dag_overhead.py [--entries 82783] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from stylepipe.config import parse_yaml


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GOAL_S = 3.0
PIPELINE_FILES = ("Snakefile", "workflow", "report", "dvc.yaml", ".dvcignore", ".gitignore", "src", "params.yaml")


def run(root: Path, *cmd: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def fake_outputs(root: Path, params: dict, entries: int) -> None:
    """Every output of the pipeline, small but with COCO's number of content images."""
    content = root / "data/raw/content.zip"
    content.parent.mkdir(parents=True)
    with zipfile.ZipFile(content, "w", zipfile.ZIP_STORED) as zf:
        for i in range(entries):
            zf.writestr(f"train2014/COCO_train2014_{i:012d}.jpg", i.to_bytes(4, "little"))
    resized = root / "data/resized"
    resized.mkdir(parents=True)
    (resized / "shard-00000.npy").write_bytes(b"\0" * 1024)
    manifest = {"image_size": params["train"]["image_size"], "skipped": [],
                "images": [f"COCO_train2014_{i:012d}.jpg" for i in range(entries)]}
    (resized / "manifest.json").write_text(json.dumps(manifest))
    (root / "data/eval").mkdir(parents=True)
    for item in params["data"]["eval"]:
        (root / "data/eval" / f"{item['name']}.png").write_bytes(item["name"].encode())
    (root / "data/models").mkdir(parents=True)
    (root / "data/models/vgg16_features.pth").write_bytes(b"vgg")
    (root / "data/styles").mkdir(parents=True)
    metrics = {}
    for style in params["styles"]:
        (root / f"data/styles/{style}.png").write_bytes(style.encode())
        for rel in (f"results/models/{style}.pth", f"results/models/{style}.onnx", f"results/checkpoints/{style}.ckpt"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(rel.encode())
        (root / f"results/train/{style}").mkdir(parents=True)
        (root / f"results/train/{style}/summary.json").write_text("{}")
        for curves in ("curves.csv", "val_curves.csv"):
            (root / f"results/train/{style}/{curves}").write_text("step,content_loss,style_loss,tv_loss,total_loss\n")
        (root / f"results/stylized/{style}").mkdir(parents=True)
        for item in params["data"]["eval"]:
            (root / f"results/stylized/{style}/{item['name']}.png").write_bytes(style.encode())
        metrics[style] = {"total_loss": 1.0}
        (root / "results/metrics").mkdir(parents=True, exist_ok=True)
        (root / f"results/metrics/{style}.json").write_text(json.dumps(metrics[style]))
        (root / "results/speed").mkdir(parents=True, exist_ok=True)
        (root / f"results/speed/{style}.json").write_text(json.dumps({"stylize_images_per_s": 1.0}))
    (root / "results/metrics.json").write_text(json.dumps(metrics))
    (root / "results/gallery.png").write_bytes(b"gallery")
    (root / "results/curves.svg").write_text("<svg/>")


def best_of(root: Path, repeat: int, *cmd: str) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        out = run(root, *cmd)
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=82_783, help="content images (COCO 2014 train: 82,783)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="stylepipe-dag-") as tmp:
        root = Path(tmp)
        for name in PIPELINE_FILES:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy(src, root / name)
        params = parse_yaml((root / "params.yaml").read_text())
        print(f"workspace: default params.yaml, {len(params['styles'])} styles, {args.entries:,} content images", flush=True)
        fake_outputs(root, params, args.entries)
        run(root, "git", "init", "-q")
        run(root, "dvc", "init", "-q")
        start = time.perf_counter()
        run(root, "dvc", "commit", "--force")  # hashes everything once, as after a real run
        print(f"dvc commit (first hashing): {time.perf_counter() - start:.2f} s", flush=True)
        run(root, "snakemake", "--touch", "--cores", "1")

        smk_s, smk_out = best_of(root, args.repeat, "snakemake", "-n")
        dvc_s, dvc_out = best_of(root, args.repeat, "dvc", "status")
        assert "Nothing to be done" in smk_out, smk_out[-2000:]
        assert "up to date" in dvc_out, dvc_out[-2000:]
        # the content set's share: one zip file, fetch_content's output and
        # resize's dependency (a folder of its images was checked file by file, twice)
        content_s, _ = best_of(root, args.repeat, "dvc", "status", "fetch_content", "resize")
        styles = [f"{step}@{style}" for style in params["styles"] for step in ("train", "stylize", "evaluate")]
        rest_s, _ = best_of(root, args.repeat, "dvc", "status", *styles, "report")

    print(f"snakemake -n: {smk_s:.2f} s (goal < {GOAL_S:.0f} s)")
    print(f"dvc status:   {dvc_s:.2f} s (goal < {GOAL_S:.0f} s)")
    print(f"  of which fetch_content + resize (the {args.entries:,}-image zip): {content_s:.2f} s; "
          f"train/stylize/evaluate/report stages: {rest_s:.2f} s")
    print(f"speedup_vs_reference: {GOAL_S / max(smk_s, dvc_s):.2f}")


if __name__ == "__main__":
    main()
