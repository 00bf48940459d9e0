"""What the pipeline recorded at a revision, read into its ``Revision``.

params.yaml, the package versions (constraints.txt), the metrics
(results/metrics.json, or each style's file) with each style's throughput
(results/speed/), each style's curves.csv and val_curves.csv and training
summary (device, precision, steps, software), and the evaluation images with
their stylizations. A file that is there but is
not what it should be (a metrics file that is not a mapping, an image that does
not decode) is recorded as missing with the reason, not fatal.
"""

from __future__ import annotations

import json
import posixpath
import re
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stylepipe.charts import parse_curves
from stylepipe.compare.images import DEFAULT_IMAGE_FORMAT, DEFAULT_IMAGE_QUALITY, DEFAULT_IMAGE_SIZE, encode_image
from stylepipe.compare.revisions import Missing, Revision
from stylepipe.compare.source import Source
from stylepipe.compare.weights import derive_unweighted
from stylepipe.config import parse_yaml

# Pipeline layout (see the README's outputs table).
PARAMS = "params.yaml"
CONSTRAINTS = "constraints.txt"  # every package at its exact version (`make setup` installs them)
METRICS = "results/metrics.json"
STYLE_METRICS = "results/metrics/{style}.json"
STYLE_SPEED = "results/speed/{style}.json"  # throughput, apart from the metrics: it varies from run to run
CURVES = "results/train/{style}/curves.csv"
VAL_CURVES = "results/train/{style}/val_curves.csv"
SUMMARY = "results/train/{style}/summary.json"  # how the style was trained (in the DVC cache)
EVAL_DIR = "data/eval"
EVAL_IMAGE = "data/eval/{image}.png"
STYLIZED = "results/stylized/{style}/{image}.png"


def read_revision(repo: Path, rev: Revision, max_image_size: int = DEFAULT_IMAGE_SIZE,
                  image_format: str = DEFAULT_IMAGE_FORMAT, image_quality: int = DEFAULT_IMAGE_QUALITY) -> Revision:
    """Fill ``rev`` with its params, metrics, curves and images (encoded for the page); what cannot
    be read goes to ``rev.missing``."""
    source = Source(repo, rev)
    try:
        params = source.parse(PARAMS, parse_yaml)  # numbers as DVC reads them, like every command
        rev.params = params if isinstance(params, dict) else {}
        styles = list(rev.params.get("styles") or {}) if isinstance(rev.params.get("styles"), dict) else []
        # absent in revisions from before the environment was pinned: nothing is missing there
        rev.packages = _parse_if_there(source, rev, CONSTRAINTS, parse_constraints)
        _read_metrics(source, rev, styles)
        styles += [s for s in rev.metrics if s not in styles]
        _read_speed(source, rev, styles)
        derive_unweighted(rev)
        images = _eval_images(source, rev)
        _read_curves(source, rev, styles)
        _read_summaries(source, rev, styles)
        _read_images(source, rev, styles, images, max_image_size, image_format, image_quality)
        rev.styles, rev.image_names = styles, images
    finally:
        source.close()
    return rev


def _parse_if_there(source: Source, rev: Revision, path: str, parser):
    """``source.parse`` for a file that older revisions lack: its absence is not a missing artifact."""
    before = len(rev.missing)
    parsed = source.parse(path, parser)
    rev.missing[before:] = [m for m in rev.missing[before:] if m.reason != "absent"]
    return parsed


def parse_constraints(raw: bytes) -> dict[str, str]:
    """``{package: version}`` from pip's ``name==version`` lines, names as pip compares them."""
    pins = {}
    for line in raw.decode().splitlines():
        name, sep, version = line.split("#", 1)[0].partition("==")
        if sep and name.strip():
            pins[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
    return pins


def _read_metrics(source: Source, rev: Revision, styles: list[str]) -> None:
    """results/metrics.json, or where it is unusable, each style's results/metrics/STYLE.json."""
    metrics = source.parse(METRICS, json.loads)
    if metrics is not None and not _is_metrics(metrics, nested=True):
        rev.missing.append(Missing(METRICS, None, _not_metrics(metrics, "{style: {metric: value}}"), "unparsable"))
        metrics = None
    if metrics is not None:
        rev.metrics = metrics
    else:  # the per-style files are what `report` merges; use them if they are there
        for style in styles:
            path = STYLE_METRICS.format(style=style)
            style_metrics = source.parse(path, json.loads)
            if style_metrics is not None and not _is_metrics(style_metrics):
                rev.missing.append(Missing(path, None, _not_metrics(style_metrics, "{metric: value}"), "unparsable"))
            elif style_metrics is not None:
                rev.metrics[style] = style_metrics


def _read_speed(source: Source, rev: Revision, styles: list[str]) -> None:
    """Each style's throughput (results/speed/STYLE.json) as rows of its metrics, where recorded."""
    for style in styles:
        path = STYLE_SPEED.format(style=style)
        # absent in revisions that kept throughput among the metrics: nothing is missing there
        speed = _parse_if_there(source, rev, path, json.loads)
        if speed is not None and not _is_metrics(speed):
            rev.missing.append(Missing(path, None, _not_metrics(speed, "{metric: value}"), "unparsable"))
        elif speed is not None:
            rev.metrics.setdefault(style, {}).update(speed)


def _eval_images(source: Source, rev: Revision) -> list[str]:
    """The evaluation images' names: as params.yaml lists them, else the PNGs in data/eval."""
    data = rev.params.get("data")
    eval_items = data.get("eval") if isinstance(data, dict) else None
    if not isinstance(eval_items, list):  # none, or a hand-broken file: the PNGs
        eval_items = []
    images = [str(item["name"]) for item in eval_items if isinstance(item, dict) and "name" in item]
    if not images:
        images = [posixpath.splitext(n)[0] for n in source.listdir(EVAL_DIR) if n.endswith(".png")]
    return images


def _read_curves(source: Source, rev: Revision, styles: list[str]) -> None:
    """Each style's training curves and, where recorded, its validation curves."""
    for style in styles:
        curves = source.parse(CURVES.format(style=style), parse_curves)
        if curves is not None:
            rev.curves[style] = curves
        # absent in revisions from before validation curves were written: nothing is missing there
        val_curves = _parse_if_there(source, rev, VAL_CURVES.format(style=style), parse_curves)
        if val_curves is not None:
            rev.val_curves[style] = val_curves


def _read_summaries(source: Source, rev: Revision, styles: list[str]) -> None:
    """Each style's training summary: on what, in which precision, how long, with which software."""
    for style in styles:
        path = SUMMARY.format(style=style)
        summary = source.parse(path, json.loads)
        if summary is not None and not isinstance(summary, dict):
            rev.missing.append(Missing(path, None, f"not a training summary: a JSON {_json_type(summary)}",
                                       "unparsable"))
        elif summary is not None:
            rev.summaries[style] = summary


def _read_images(source: Source, rev: Revision, styles: list[str], images: list[str],
                 max_image_size: int, image_format: str, image_quality: int) -> None:
    """Each content image, then each style's stylization of it, encoded for the page."""
    wanted = [(None, image) for image in images] + [(style, image) for style in styles for image in images]
    for style, image in tqdm(wanted, desc=f"compare: {rev.label}", unit="image", file=sys.stderr,
                             disable=None):
        path = EVAL_IMAGE.format(image=image) if style is None else STYLIZED.format(style=style, image=image)
        raw = source.read(path)
        if raw is None:
            continue
        try:
            encoded = encode_image(raw, max_image_size, image_format, image_quality)
        except Exception as err:  # noqa: BLE001 - unreadable image: say so instead of failing
            rev.missing.append(Missing(path, None, f"not a readable image ({err})", "unparsable"))
            continue
        if style is None:
            rev.content[image] = encoded
        else:
            rev.images[(style, image)] = encoded


def _is_metrics(data: Any, nested: bool = False) -> bool:
    if not isinstance(data, dict):
        return False
    return all(isinstance(value, dict) for value in data.values()) if nested else True


def _not_metrics(data: Any, expected: str) -> str:
    if isinstance(data, dict):
        bad = sorted(str(k) for k, v in data.items() if not isinstance(v, dict))
        return f"not metrics: expected {expected}, but {', '.join(bad[:5])} {'is' if len(bad) == 1 else 'are'} not a mapping"
    return f"not metrics: expected {expected}, got a JSON {_json_type(data)}"


def _json_type(data: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(data), "null")
