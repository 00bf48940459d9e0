"""Compare git revisions: params, metrics, training curves and stylized images.

`dvc metrics diff` prints numbers; style transfer has to be looked at. For each
revision this reads what the pipeline recorded (params.yaml, results/metrics.json
and each style's throughput in results/speed/, each style's curves.csv and
val_curves.csv, the evaluation images and their stylizations) from git and the
DVC cache or remote through `dvc.api.DVCFileSystem`; the special revision
``workspace`` means the files on disk. It writes one self-contained HTML page
(images as data URIs, inline CSS and SVG, nothing fetched when it is opened) and,
with ``--png``, a contact sheet.

A revision whose artifacts cannot be read (not in the cache, no remote) is
rendered with the list of missing files and the command that fetches them;
outputs a revision never recorded are listed as such, and an error DVC raised is
shown as it is. For the workspace, the stages `dvc status` finds out of date are
listed. Losses are coloured better/worse only where they compare: the weighted
losses scale with the params' weights, so when those differ the page says so and
the unweighted ones (``*_loss_unweighted``) are the ones to read.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import numbers
import posixpath
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from stylepipe.charts import CHART_CSS, PALETTE, parse_curves, svg_chart
from stylepipe.io import atomic_path

WORKSPACE = "workspace"

# Pipeline layout (see the README's outputs table).
PARAMS = "params.yaml"
METRICS = "results/metrics.json"
STYLE_METRICS = "results/metrics/{style}.json"
STYLE_SPEED = "results/speed/{style}.json"  # throughput, apart from the metrics: it varies from run to run
CURVES = "results/train/{style}/curves.csv"
VAL_CURVES = "results/train/{style}/val_curves.csv"
EVAL_DIR = "data/eval"
EVAL_IMAGE = "data/eval/{image}.png"
STYLIZED = "results/stylized/{style}/{image}.png"

CURVE_COLUMNS = ("total_loss", "content_loss", "style_loss", "tv_loss")
# Which way is better, for colouring deltas; metrics not listed are neutral.
LOWER_IS_BETTER = ("loss", "wall_time")
HIGHER_IS_BETTER = ("ssim", "images_per_s")

# Embedded images: the page shows each one 256 px wide (IMAGE_WIDTH in the CSS), so
# 512 px (sharp on a 2x display) in JPEG at quality 90 is what a reader can see; PNG
# (lossless, the original bytes when they fit) is for pixel-peeping.
IMAGE_WIDTH = 256
IMAGE_FORMATS = {"jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}
DEFAULT_IMAGE_SIZE = 2 * IMAGE_WIDTH
DEFAULT_IMAGE_FORMAT = "jpeg"
DEFAULT_IMAGE_QUALITY = 90


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "revisions", nargs="*", metavar="REV",
        help=f"git revisions (commit, branch, tag, DVC experiment name) to compare, the first is the baseline; "
             f"`{WORKSPACE}` means the files on disk (default: HEAD {WORKSPACE}; a single REV is compared "
             f"with the {WORKSPACE})",
    )
    parser.add_argument("--output", "-o", type=Path, default=Path("compare.html"), metavar="HTML",
                        help="HTML report to write (default: compare.html)")
    parser.add_argument("--png", type=Path, default=None, metavar="PNG",
                        help="also write a contact sheet of the evaluation images and their stylizations")
    parser.add_argument("--repo", type=Path, default=Path("."), metavar="PATH",
                        help="the git + DVC repository (default: .)")
    parser.add_argument("--max-image-size", type=int, default=DEFAULT_IMAGE_SIZE, metavar="PX",
                        help=f"long edge of images embedded in the HTML, which shows them {IMAGE_WIDTH} px wide; "
                             f"0 keeps them as they are (default: {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--image-format", choices=tuple(IMAGE_FORMATS), default=DEFAULT_IMAGE_FORMAT,
                        help=f"format of the embedded images; png is lossless (default: {DEFAULT_IMAGE_FORMAT})")
    parser.add_argument("--image-quality", type=int, default=DEFAULT_IMAGE_QUALITY, metavar="Q",
                        help=f"jpeg/webp quality, 1-100 (default: {DEFAULT_IMAGE_QUALITY})")
    parser.add_argument("--cell-size", type=int, default=192, metavar="PX",
                        help="long edge of one image in the contact sheet (default: 192)")


class CompareError(Exception):
    """A problem the user must fix (unknown revision, not a repository)."""


# --------------------------------------------------------------------------- reading


@dataclass
class Missing:
    path: str
    target: str | None  # the DVC output holding it, if this revision recorded that output (has its hash)
    error: str | None = None  # why it cannot be read or parsed, when it is not plain "not there"
    reason: str = "absent"  # absent | unparsable | dvc (DVC raised an error other than not-found)


@dataclass
class Revision:
    name: str             # as the user typed it
    sha: str | None       # None for the workspace
    short: str
    subject: str
    date: str
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    val_curves: dict[str, pd.DataFrame] = field(default_factory=dict)  # validation losses, where recorded
    images: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (style, image) -> encoded image
    content: dict[str, bytes] = field(default_factory=dict)             # image -> encoded image
    missing: list[Missing] = field(default_factory=list)
    stale: list[tuple[str, str]] = field(default_factory=list)  # workspace: (stage, what changed), as `dvc status`
    status_error: str | None = None  # workspace: why `dvc status` could not run
    derived: set[str] = field(default_factory=set)  # styles whose unweighted losses are weighted / weight
    styles: list[str] = field(default_factory=list)
    image_names: list[str] = field(default_factory=list)
    label: str = ""
    checked_out: bool = False  # the commit the workspace is on: `dvc fetch` needs no checkout

    @property
    def is_workspace(self) -> bool:
        return self.sha is None


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise CompareError(result.stderr.strip() or f"git {' '.join(args)} failed")
    return result.stdout


def resolve_revision(repo: Path, name: str) -> Revision:
    if name == WORKSPACE:
        changed = _git(repo, "status", "--porcelain", "--untracked-files=no").splitlines()
        subject = f"files on disk ({len(changed)} tracked files changed)" if changed else "files on disk"
        return Revision(name=name, sha=None, short=WORKSPACE, subject=subject, date="")
    experiment = name if name.startswith(EXPERIMENT_REFS) and name.count("/") == 4 else None
    try:
        sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}").strip()
    except CompareError:
        experiment = _experiment_ref(repo, name)
        if experiment is None:
            raise CompareError(f"unknown revision {name!r} in {repo}: give a commit, branch, tag, "
                               f"DVC experiment name or `{WORKSPACE}`") from None
        sha = _git(repo, "rev-parse", experiment).strip()
    short, subject, date = _git(repo, "log", "-1", "--format=%h%x00%s%x00%ci", sha).rstrip("\n").split("\x00")
    if experiment is not None:  # its commit subject is DVC's, not the user's
        subject = f"DVC experiment {experiment.rsplit('/', 1)[1]} (baseline {_baseline(experiment)[:7]})"
    return Revision(name=name, sha=sha, short=short, subject=subject, date=date)


EXPERIMENT_REFS = "refs/exps/"


def _baseline(ref: str) -> str:
    """The baseline commit of an experiment ref ``refs/exps/ab/cdef.../NAME``."""
    return "".join(ref.split("/")[2:4])


def _experiment_ref(repo: Path, name: str) -> str | None:
    """The git ref of a DVC experiment (`dvc exp run -n NAME`, `dvc exp save -n NAME`), found as `dvc` finds it.

    A name saved on several baselines means the one whose baseline is HEAD; with
    none of them on HEAD the name is ambiguous (a CompareError listing them)."""
    refs = [ref for ref in _git(repo, "for-each-ref", "--format=%(refname)", EXPERIMENT_REFS).split()
            if ref.count("/") == 4 and ref.rsplit("/", 1)[1] == name]
    if len(refs) <= 1:
        return refs[0] if refs else None
    try:
        head = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD").strip()
    except CompareError:
        head = None
    on_head = [ref for ref in refs if _baseline(ref) == head]
    if on_head:
        return on_head[0]
    listed = "; ".join(f"{ref} (baseline {_baseline(ref)[:7]})" for ref in sorted(refs))
    raise CompareError(f"DVC experiment name {name!r} is ambiguous: it exists on {len(refs)} baselines and none "
                       f"is HEAD: {listed}. Give the full ref, or check out its baseline first")


class _Source:
    """Read one revision's files: git + DVC for a commit, the disk for the workspace."""

    def __init__(self, repo: Path, rev: Revision):
        self.repo = repo
        self.rev = rev
        self._fs = None

    @property
    def fs(self):
        if self._fs is None:
            from dvc.api import DVCFileSystem  # heavy import, only when comparing

            self._fs = DVCFileSystem(str(self.repo), rev=self.rev.sha)
        return self._fs

    def close(self) -> None:
        if self._fs is not None:
            self._fs.close()

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None (recorded in ``rev.missing``) if it cannot be read."""
        if self.rev.is_workspace:
            try:
                return (self.repo / path).read_bytes()
            except FileNotFoundError:
                self._not_found(path)
            except OSError as err:
                self.rev.missing.append(Missing(path, None, _error_text(err), "unparsable"))
            return None
        try:
            return self.fs.read_bytes(path)
        except _not_there():  # not in git, nor in the cache or a reachable remote
            self._not_found(path)
        except Exception as err:  # noqa: BLE001 - DVC's own errors (dvc.yaml that does not resolve, ...)
            data = self._git_blob(path)  # git-tracked files (params, metrics, curves) need no DVC
            if data is not None:
                return data
            self.rev.missing.append(Missing(path, None, _error_text(err), "dvc"))
        return None

    def _not_found(self, path: str) -> None:
        """Record ``path`` as not there, with the output that holds it if this revision recorded one."""
        try:
            self.rev.missing.append(Missing(path, self._output_of(path)))
        except Exception as err:  # noqa: BLE001 - DVC cannot say what the revision records: show why
            self.rev.missing.append(Missing(path, None, _error_text(err), "dvc"))

    def _git_blob(self, path: str) -> bytes | None:
        result = subprocess.run(["git", "-C", str(self.repo), "cat-file", "blob", f"{self.rev.sha}:{path}"],
                                capture_output=True)
        return result.stdout if result.returncode == 0 else None

    def parse(self, path: str, parser):
        """``parser(bytes)``, or None (recorded in ``rev.missing``) if unreadable or unparsable."""
        raw = self.read(path)
        if raw is None:
            return None
        try:
            return parser(raw)
        except Exception as err:  # noqa: BLE001 - a broken file is reported, not fatal
            self.rev.missing.append(Missing(path, None, f"cannot be parsed ({_error_text(err)})", "unparsable"))
            return None

    def listdir(self, path: str) -> list[str]:
        try:
            if self.rev.is_workspace:
                return sorted(p.name for p in (self.repo / path).iterdir())
            return sorted(posixpath.basename(p) for p in self.fs.ls(path, detail=False))
        except _not_there():
            return []
        except Exception as err:  # noqa: BLE001 - DVC's own errors are shown, not taken for "empty"
            self.rev.missing.append(Missing(path, None, _error_text(err), "dvc"))
            return []

    def _output_of(self, path: str) -> str | None:
        """The outermost DVC output containing ``path`` (what `dvc fetch` takes), if this
        revision recorded it: an output dvc.yaml declares but dvc.lock has no hash for was
        never produced, and there is nothing to fetch."""
        from dvc.exceptions import NotDvcRepoError

        target = None
        parts = path.split("/")
        for i in range(len(parts), 0, -1):
            candidate = "/".join(parts[:i])
            try:
                info = self.fs.info(candidate)  # for the workspace, DVC's view of it (dvc.lock on disk)
            except _not_there():  # e.g. the directory's listing is itself missing
                continue
            except NotDvcRepoError:  # git only: no file is a DVC output
                return None
            dvc_info = info.get("dvc_info") or {}
            if dvc_info.get("isout") and _has_hash(dvc_info):
                target = candidate
        return target


def _not_there() -> tuple[type[BaseException], ...]:
    """What DVC raises for a file that is simply not there (not in git, the cache or a remote)."""
    from dvc_data.index import DataIndexError  # "failed to load directory": its listing is not in the cache

    return FileNotFoundError, IsADirectoryError, NotADirectoryError, DataIndexError


def _has_hash(dvc_info: dict) -> bool:
    """Whether DVC recorded a hash for this output (dvc.lock or .dvc file), i.e. it was produced."""
    entry = dvc_info.get("entry")
    hash_info = getattr(entry, "hash_info", None)
    if hash_info is not None:
        return bool(getattr(hash_info, "value", None))
    return any(dvc_info.get(key) for key in ("md5", "etag", "checksum"))


def _error_text(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def encode_image(data: bytes, max_size: int = DEFAULT_IMAGE_SIZE, fmt: str = DEFAULT_IMAGE_FORMAT,
                 quality: int = DEFAULT_IMAGE_QUALITY) -> bytes:
    """Decode (so a broken file fails here, not in the browser), shrink to ``max_size`` (long edge,
    0 = as it is) and encode as ``fmt`` (jpeg, webp or png; a PNG that fits is kept as it is)."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt!r}: expected one of {', '.join(IMAGE_FORMATS)}")
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if fmt == "png" and img.format == "PNG" and (max_size <= 0 or max(img.size) <= max_size):
            return data
        img = img.convert("RGB")
        if max_size > 0 and max(img.size) > max_size:
            img.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        if fmt == "png":
            img.save(out, format="PNG", optimize=True)
        elif fmt == "jpeg":
            img.save(out, format="JPEG", quality=quality, optimize=True)
        else:
            img.save(out, format="WEBP", quality=quality, method=6)
        return out.getvalue()


def image_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes (PNG, JPEG or WebP), from their signature."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError("not a PNG, JPEG or WebP image")


def read_revision(repo: Path, rev: Revision, max_image_size: int = DEFAULT_IMAGE_SIZE,
                  image_format: str = DEFAULT_IMAGE_FORMAT, image_quality: int = DEFAULT_IMAGE_QUALITY) -> Revision:
    source = _Source(repo, rev)
    try:
        params = source.parse(PARAMS, yaml.safe_load)
        rev.params = params if isinstance(params, dict) else {}
        styles = list(rev.params.get("styles") or {}) if isinstance(rev.params.get("styles"), dict) else []
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
        styles += [s for s in rev.metrics if s not in styles]
        _read_speed(source, rev, styles)
        _derive_unweighted(rev)
        eval_items = (rev.params.get("data") or {}).get("eval") or []
        images = [str(item["name"]) for item in eval_items if isinstance(item, dict) and "name" in item]
        if not images:
            images = [posixpath.splitext(n)[0] for n in source.listdir(EVAL_DIR) if n.endswith(".png")]

        for style in styles:
            curves = source.parse(CURVES.format(style=style), parse_curves)
            if curves is not None:
                rev.curves[style] = curves
            before = len(rev.missing)
            val_curves = source.parse(VAL_CURVES.format(style=style), parse_curves)
            # absent in revisions from before validation curves were written: nothing is missing there
            rev.missing[before:] = [m for m in rev.missing[before:] if m.reason != "absent"]
            if val_curves is not None:
                rev.val_curves[style] = val_curves
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
        rev.styles, rev.image_names = styles, images
    finally:
        source.close()
    return rev


def _read_speed(source: _Source, rev: Revision, styles: list[str]) -> None:
    """Each style's throughput (results/speed/STYLE.json) as rows of its metrics, where recorded."""
    for style in styles:
        path = STYLE_SPEED.format(style=style)
        before = len(rev.missing)
        speed = source.parse(path, json.loads)
        # absent in revisions that kept throughput among the metrics: nothing is missing there
        rev.missing[before:] = [m for m in rev.missing[before:] if m.reason != "absent"]
        if speed is not None and not _is_metrics(speed):
            rev.missing.append(Missing(path, None, _not_metrics(speed, "{metric: value}"), "unparsable"))
        elif speed is not None:
            rev.metrics.setdefault(style, {}).update(speed)


def workspace_status(repo: Path) -> tuple[list[tuple[str, str]], str | None]:
    """``dvc status`` of the workspace: [(stage, what changed)] for stages whose outputs are out of
    date (or not what dvc.lock records), and the error text if DVC could not tell."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo(str(repo)) as dvc_repo:
            status = dvc_repo.status()
    except NotDvcRepoError:  # git only: nothing says what the outputs should be
        return [], None
    except Exception as err:  # noqa: BLE001 - shown on the page: the staleness is unknown
        return [], _error_text(err)
    return [(str(stage), _describe_status(entries)) for stage, entries in status.items()], None


def _describe_status(entries: Any) -> str:
    """One line for a stage's `dvc status` entries (``changed deps``, ``changed outs``, ...)."""
    parts = []
    for item in entries if isinstance(entries, list) else [entries]:
        if not isinstance(item, dict):
            parts.append(str(item))
            continue
        for kind, changes in item.items():
            if not isinstance(changes, dict):
                parts.append(str(kind))
                continue
            things = []
            for path, change in changes.items():
                if isinstance(change, dict):  # params.yaml: {key: modified}
                    things.append(f"{path} ({', '.join(f'{key} {what}' for key, what in change.items())})")
                else:
                    things.append(f"{path} {change}")
            parts.append(f"{kind}: {', '.join(things)}")
    return "; ".join(parts)


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


# --------------------------------------------------------------------------- loss weights

# A loss metric is the training objective's term times its weight (evaluate.py); the
# unweighted one is the measurement itself.
LOSS_WEIGHTS = {"content_loss": "content_weight", "style_loss": "style_weight", "tv_loss": "tv_weight"}
WEIGHTED_LOSSES = (*LOSS_WEIGHTS, "total_loss")
UNWEIGHTED = "_unweighted"
# What the losses measure, weights aside: when these differ no loss compares.
LOSS_DEFINITION = ("content_layers", "style_layers", "style_layer_weights", "style_size")


def style_train_value(params: dict, style: str, key: str) -> Any:
    """``styles.STYLE.KEY`` if the style overrides it, else ``train.KEY`` (as config.train_params merges)."""
    styles = params.get("styles") if isinstance(params.get("styles"), dict) else {}
    entry = styles.get(style) if isinstance(styles.get(style), dict) else {}
    if key in entry:
        return entry[key]
    train = params.get("train") if isinstance(params.get("train"), dict) else {}
    return train.get(key)


def _number(value: Any) -> float | None:
    try:
        return float(value)  # YAML reads 5e10 (no dot) as a string
    except (TypeError, ValueError):
        return None


def loss_weights(rev: Revision, style: str) -> dict[str, float | None]:
    return {w: _number(style_train_value(rev.params, style, w)) for w in LOSS_WEIGHTS.values()}


def _derive_unweighted(rev: Revision) -> None:
    """Unweighted losses for metrics written before evaluate recorded them: weighted / weight."""
    for style, values in rev.metrics.items():
        if not isinstance(values, dict):
            continue
        weights = loss_weights(rev, style)
        for loss, weight in LOSS_WEIGHTS.items():
            value = _number(values.get(loss))
            if loss + UNWEIGHTED in values or value is None or not weights[weight]:
                continue
            values[loss + UNWEIGHTED] = value / weights[weight]
            rev.derived.add(style)


@dataclass
class LossNote:
    """Why a style's losses do not compare across the revisions as they are."""
    text: str
    definition: bool  # the loss itself differs (layers, layer weights, style size, loss network): no loss compares
    weights: frozenset[str] = frozenset()  # the weights that differ

    def comparable(self, metric: str) -> bool:
        if self.definition:
            return not (metric in WEIGHTED_LOSSES or metric.endswith(UNWEIGHTED))
        if metric == "total_loss":
            return not self.weights
        return LOSS_WEIGHTS.get(metric) not in self.weights


def loss_notes(revs: list[Revision]) -> dict[str, LossNote]:
    """``{style: note}`` for styles whose losses do not compare across ``revs`` as they are:
    different weights (the weighted losses) or a different loss definition (every loss)."""
    notes = {}
    for style in _styles(revs):
        having = [r for r in revs if isinstance(r.metrics.get(style), dict)]
        if len(having) < 2:
            continue
        changed = []
        for key in (*LOSS_WEIGHTS.values(), *LOSS_DEFINITION, "loss_network"):
            values = [r.params.get(key) if key == "loss_network" else style_train_value(r.params, style, key)
                      for r in having]
            # 1e10 and "1e10" are the same weight
            if len({json.dumps(_number(v) if _number(v) is not None else v, sort_keys=True) for v in values}) > 1:
                changed.append((key, " → ".join("—" if v is None else _param_text(v) for v in values)))
        if not changed:
            continue
        text = "; ".join(f"<code>{html.escape(key)}</code> {html.escape(values)}" for key, values in changed)
        if any(key not in LOSS_WEIGHTS.values() for key, _ in changed):
            notes[style] = LossNote(f"{text}: the losses measure different things in these revisions; "
                                    "no loss is coloured better or worse.", definition=True)
        else:
            weights = frozenset(key for key, _ in changed)
            losses = [loss for loss, weight in LOSS_WEIGHTS.items() if weight in weights] + ["total_loss"]
            notes[style] = LossNote(f"{text}: {', '.join(losses)} scale with the weights, so they are not "
                                    f"coloured; compare the <code>*{UNWEIGHTED}</code> rows, measured before the "
                                    "weights.", definition=False, weights=weights)
    return notes


def default_revisions(names: list[str]) -> list[str]:
    if not names:
        return ["HEAD", WORKSPACE]
    if len(names) == 1:
        return [names[0], WORKSPACE]
    return names


def _labels(revs: list[Revision]) -> None:
    seen: dict[str, int] = {}
    for rev in revs:
        if rev.is_workspace:
            label = WORKSPACE
        elif rev.short.startswith(rev.name) or rev.name.startswith(rev.short):
            label = rev.short
        else:
            label = f"{rev.name} ({rev.short})"
        seen[label] = seen.get(label, 0) + 1
        rev.label = label if seen[label] == 1 else f"{label} #{seen[label]}"


# --------------------------------------------------------------------------- tables


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys; lists stay whole (a list is one value)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: data}


def params_diff(revs: list[Revision]) -> pd.DataFrame:
    """Rows: params keys whose values differ between revisions; columns: revisions."""
    flat = []
    for rev in revs:
        flat.append({k: _param_text(v) for k, v in flatten(rev.params).items()})
    keys = sorted(set().union(*flat)) if flat else []
    rows = {}
    for key in keys:
        values = [f.get(key) for f in flat]
        if len(set(values)) > 1:
            rows[key] = ["—" if v is None else v for v in values]
    return pd.DataFrame.from_dict(rows, orient="index", columns=[r.label for r in revs])


def _param_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"  # 1e+10, not 10000000000.0
    return json.dumps(value, sort_keys=True)


def metrics_table(revs: list[Revision]) -> pd.DataFrame:
    """Index (style, metric); one column per revision plus `Δ label` for each later one."""
    columns = {}
    for rev in revs:
        columns[rev.label] = pd.Series(
            {(style, name): value for style, values in rev.metrics.items() if isinstance(values, dict)
             for name, value in flatten(values).items()},
            dtype=object,
        )
    table = pd.DataFrame(columns)
    if table.empty:
        return table
    order = {s: i for i, s in enumerate(_styles(revs))}
    table = table.loc[sorted(table.index, key=lambda k: (order.get(k[0], len(order)), k[1]))]
    numeric = table.apply(pd.to_numeric, errors="coerce")
    base = numeric[revs[0].label]
    for rev in revs[1:]:
        table[f"Δ {rev.label}"] = numeric[rev.label] - base
    return table


def _styles(revs: list[Revision]) -> list[str]:
    out: list[str] = []
    for rev in revs:
        out += [s for s in rev.styles if s not in out]
    return out


def _images(revs: list[Revision]) -> list[str]:
    out: list[str] = []
    for rev in revs:
        out += [i for i in rev.image_names if i not in out]
    return out


def _fmt(value: Any, kind: str = "number", delta: bool = False) -> str:
    """A metric's value (or, with ``delta``, its change against the baseline) as text, by ``_kind``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if delta and value == 0:
        return "±0"
    sign = "+" if delta else ""
    if math.isinf(value):
        return f"{value:{sign}}"
    if kind == "int":
        return f"{int(value):{sign}d}"
    if kind == "seconds":
        return f"{value:{sign}.1f} s" if abs(value) >= 1 else f"{value:{sign}.2g} s"
    return f"{value:{sign}.4g}"


def _kind(metric: str, values: Iterable[Any]) -> str:
    """How a metrics row is written: ``int`` when every value is a whole number in the JSON
    (model_params, eval_images), ``seconds`` for a wall time (``*_s``), else ``number``."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if present and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in present):
        return "int"
    if metric.endswith("_s") and not metric.endswith("_per_s"):
        return "seconds"
    return "number"


def _direction(metric: str) -> int:
    if any(word in metric for word in HIGHER_IS_BETTER):
        return 1
    if any(word in metric for word in LOWER_IS_BETTER):
        return -1
    return 0


# --------------------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 12px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0} th,td{border:1px solid #ddd;padding:3px 8px;vertical-align:top}
th{background:#f4f4f4;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.better{color:#087443;font-weight:600} td.worse{color:#b3261e;font-weight:600} td.incomparable{color:#777}
p.note{border-left:4px solid #e69f00;background:#fff8e6;padding:6px 10px;margin:6px 0}
code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace} pre{background:#f6f6f6;padding:8px;overflow-x:auto}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.missing{border:2px solid #b3261e;background:#fff4f2;padding:8px 12px;margin:8px 0;border-radius:4px}
.stale{border:2px solid #e69f00;background:#fff8e6;padding:8px 12px;margin:8px 0;border-radius:4px}
.cellmissing{width:160px;height:120px;display:flex;align-items:center;justify-content:center;
  background:repeating-linear-gradient(45deg,#fafafa,#fafafa 8px,#eee 8px,#eee 16px);color:#b3261e;font-size:12px;text-align:center}
.charts{display:flex;flex-wrap:wrap;gap:8px}
table.images td{text-align:center} table.images img{width:IMAGE_WIDTHpx;height:auto;display:block;margin:auto}
.muted{color:#777}
""".replace("IMAGE_WIDTHpx", f"{IMAGE_WIDTH}px") + CHART_CSS


def _rev_head(rev: Revision, colour: str) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>{html.escape(rev.label)}'


def fetch_hint(rev: Revision) -> str:
    """The command that makes ``rev``'s missing artifacts readable."""
    targets = sorted({m.target for m in rev.missing if m.target and m.reason == "absent"})
    if not targets:
        return ""
    joined = " ".join(targets)
    if rev.is_workspace:
        return f"dvc pull {joined}"
    if rev.checked_out:
        return f"dvc fetch {joined}"
    return f"git checkout {rev.short} && dvc fetch {joined} && git checkout -"


def _paths(items: list[Missing], with_error: bool = False) -> str:
    return "<ul>" + "".join(
        f"<li><code>{html.escape(m.path)}</code>" + (f": {html.escape(m.error or '')}" if with_error else "") + "</li>"
        for m in items) + "</ul>"


def _missing_box(rev: Revision, colour: str) -> str:
    tracked = [m for m in rev.missing if m.reason == "absent" and m.target]
    absent = [m for m in rev.missing if m.reason == "absent" and not m.target]
    broken = [m for m in rev.missing if m.reason == "unparsable"]
    failed = [m for m in rev.missing if m.reason == "dvc"]
    parts = [f'<div class="missing" id="missing-{html.escape(rev.label)}"><strong>{_rev_head(rev, colour)}: '
             f"{len(rev.missing)} artifact(s) missing</strong>"]
    if failed:
        by_error: dict[str, list[Missing]] = {}
        for m in failed:
            by_error.setdefault(m.error or "", []).append(m)
        for error, items in by_error.items():
            parts.append("<p>DVC could not read this revision:</p><pre>" + html.escape(error) + "</pre>"
                         "<p>so these could not be read:</p>" + _paths(items))
    if tracked:
        where = "in the workspace" if rev.is_workspace else "in the DVC cache, nor on a reachable remote"
        parts.append(f"<p>Recorded by DVC but not {where}:</p>" + _paths(tracked))
        parts.append("<p>Fetch them with:</p><pre>" + html.escape(fetch_hint(rev)) + "</pre>")
        if rev.is_workspace:
            parts.append("<p>(or, if the pipeline never produced them, <code>dvc repro</code>)</p>")
        if not rev.is_workspace and not rev.checked_out:
            targets = " ".join(sorted({m.target for m in tracked}))
            parts.append("<p>or, without switching the workspace (fetches these outputs for every commit):</p>"
                         f"<pre>dvc fetch --all-commits {html.escape(targets)}</pre>")
    if absent:
        parts.append("<p>Not recorded in this revision (the pipeline had not produced them"
                     + (": run <code>dvc repro</code>" if rev.is_workspace else "") + "):</p>" + _paths(absent))
    if broken:
        parts.append("<p>Present but unreadable:</p>" + _paths(broken, with_error=True))
    parts.append("</div>")
    return "\n".join(parts)


def _stale_box(rev: Revision, colour: str) -> str:
    """The workspace's stages whose outputs are not what their inputs would give now (as `dvc status`)."""
    parts = [f'<div class="stale" id="stale-{html.escape(rev.label)}"><strong>{_rev_head(rev, colour)}: ']
    if rev.status_error:
        parts.append("<code>dvc status</code> failed, so whether its outputs are up to date is unknown</strong>"
                     f"<pre>{html.escape(rev.status_error)}</pre>")
    else:
        parts.append(f"outputs out of date ({len(rev.stale)} stage(s), as <code>dvc status</code> reports)</strong>"
                     "<p>Its metrics, curves and images are not yet what its params and code would give; "
                     "<code>dvc repro</code> brings them up to date (and the stages after these).</p><ul>"
                     + "".join(f"<li><code>{html.escape(stage)}</code>: {html.escape(what)}</li>"
                               for stage, what in rev.stale) + "</ul>")
    parts.append("</div>")
    return "".join(parts)


def _img(data: bytes | None, alt: str, why: str = "missing") -> str:
    if data is None:
        return f'<div class="cellmissing">{html.escape(why)}</div>'
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:{image_mime(data)};base64,{encoded}" alt="{html.escape(alt)}" title="{html.escape(alt)}">'


def _why_absent(rev: Revision, style: str, image: str) -> str:
    if style not in rev.styles:
        return f"no style {style} in this revision"
    if image not in rev.image_names:
        return f"no evaluation image {image} in this revision"
    return "missing"


def render_html(revs: list[Revision]) -> str:
    colours = {rev.label: PALETTE[i % len(PALETTE)] for i, rev in enumerate(revs)}
    styles, images = _styles(revs), _images(revs)
    title = " vs ".join(rev.label for rev in revs)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>stylepipe compare: {html.escape(title)}</title>", f"<style>{CSS}</style></head><body>",
           f"<h1>stylepipe compare: {html.escape(title)}</h1>",
           f'<p class="muted">Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. '
           "Deltas are against the first revision.</p>"]

    out.append('<h2 id="revisions">Revisions</h2><table><tr><th>revision</th><th>commit</th><th>subject</th><th>date</th></tr>')
    for rev in revs:
        out.append(f"<tr><td>{_rev_head(rev, colours[rev.label])}</td><td><code>{html.escape(rev.short)}</code></td>"
                   f"<td>{html.escape(rev.subject)}</td><td>{html.escape(rev.date)}</td></tr>")
    out.append("</table>")
    for rev in revs:
        if rev.stale or rev.status_error:
            out.append(_stale_box(rev, colours[rev.label]))
        if rev.missing:
            out.append(_missing_box(rev, colours[rev.label]))

    out.append('<h2 id="params">Params that differ</h2>')
    diff = params_diff(revs)
    if diff.empty:
        out.append("<p>All revisions use the same params.</p>")
    else:
        out.append("<table><tr><th>key</th>" + "".join(f"<th>{_rev_head(r, colours[r.label])}</th>" for r in revs) + "</tr>")
        for key, row in diff.iterrows():
            out.append(f"<tr><td><code>{html.escape(str(key))}</code></td>"
                       + "".join(f"<td><code>{html.escape(str(v))}</code></td>" for v in row) + "</tr>")
        out.append("</table>")

    out.append('<h2 id="metrics">Metrics</h2>')
    table = metrics_table(revs)
    if table.empty:
        out.append("<p>No revision has metrics.</p>")
    else:
        notes = loss_notes(revs)
        for style, note in notes.items():
            out.append(f'<p class="note" id="weights-{html.escape(style)}"><strong>{html.escape(style)}</strong>: '
                       f"{note.text}</p>")
        derived = {r.label: sorted(r.derived) for r in revs if r.derived}
        if derived:
            out.append('<p class="muted">Unweighted losses derived as weighted loss ÷ weight (these metrics '
                       "predate the <code>*_unweighted</code> keys): " + html.escape("; ".join(
                           f"{label}: {', '.join(styles_)}" for label, styles_ in derived.items())) + ".</p>")
        labels = [r.label for r in revs]
        head = "".join(f"<th>{_rev_head(r, colours[r.label])}</th>" for r in revs)
        head += "".join(f"<th>Δ {html.escape(r.label)}</th>" for r in revs[1:])
        out.append(f'<table class="metrics"><tr><th>style</th><th>metric</th>{head}</tr>')
        for (style, metric), row in table.iterrows():
            kind = _kind(metric, (row[label] for label in labels))
            comparable = style not in notes or notes[style].comparable(metric)
            cells = "".join(f'<td class="num">{html.escape(_fmt(row[label], kind))}</td>' for label in labels)
            for rev in revs[1:]:
                delta = row[f"Δ {rev.label}"]
                delta = None if delta is None or (isinstance(delta, float) and math.isnan(delta)) else delta
                cls, title = "num", ""
                if not comparable:
                    cls += " incomparable"
                    title = f' title="{html.escape(style)}: not comparable across these revisions (see the note above)"'
                elif delta is not None and delta != 0 and _direction(metric):
                    cls += " better" if (delta > 0) == (_direction(metric) > 0) else " worse"
                text = _fmt(delta, kind, delta=True)
                cells += f'<td class="{cls}"{title}>{html.escape(text)}{"" if comparable else " *"}</td>'
            name = html.escape(str(metric)) + ("" if comparable else " *")
            out.append(f"<tr><td>{html.escape(str(style))}</td><td>{name}</td>{cells}</tr>")
        out.append("</table>")
        if any(not n.comparable(m) for (st, m) in table.index for n in [notes.get(st)] if n):
            out.append('<p class="muted">* not coloured: not comparable across these revisions (see the notes '
                       "above the table).</p>")

    out.append('<h2 id="curves">Training curves</h2>')
    legend = " ".join(_rev_head(r, colours[r.label]) for r in revs)
    dashed = any(style in r.val_curves for r in revs for style in styles)
    out.append(f"<p>{legend}{' (dashed: validation losses)' if dashed else ''}</p>")
    for style in styles:
        series = [(r.label, colours[r.label], r.curves[style]) for r in revs if style in r.curves]
        series += [(f"{r.label}, validation", colours[r.label], r.val_curves[style], True)
                   for r in revs if style in r.val_curves]
        out.append(f"<h3>{html.escape(style)}</h3>")
        absent = [r.label for r in revs if style not in r.curves]
        if absent:
            out.append(f'<p class="muted">No curves for: {html.escape(", ".join(absent))}.</p>')
        present = [c for c in CURVE_COLUMNS if any(c in f and f[c].abs().sum() > 0 for _, _, f, *_ in series)]
        if series:
            out.append('<div class="charts">' + "".join(svg_chart(series, c) for c in present) + "</div>")

    out.append('<h2 id="images">Stylized evaluation images</h2>')
    # One table per evaluation image: its content image once, then a row per style
    # with each revision's stylization side by side.
    for image in images:
        content = next((r.content[image] for r in revs if image in r.content), None)
        out.append(f'<h3>{html.escape(image)}</h3><table class="images"><tr><th>content</th><th>style</th>'
                   + "".join(f"<th>{_rev_head(r, colours[r.label])}</th>" for r in revs) + "</tr>")
        for row, style in enumerate(styles):
            first = (f'<td rowspan="{len(styles)}">{_img(content, f"{image} (content)")}</td>' if row == 0 else "")
            cells = "".join(
                f"<td>{_img(r.images.get((style, image)), f'{style} / {image} @ {r.label}', _why_absent(r, style, image))}</td>"
                for r in revs)
            out.append(f"<tr>{first}<th>{html.escape(style)}</th>{cells}</tr>")
        out.append("</table>")
    out.append("</body></html>\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- contact sheet


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def contact_sheet(revs: list[Revision], cell: int = 192) -> Image.Image:
    """Rows: (style, image); columns: content, then each revision; a header of revision labels.

    Labels too long for their column are wrapped (``wrap_text``), never cut off mid-name."""
    from stylepipe.report import wrap_text

    styles, images = _styles(revs), _images(revs)
    rows = [(style, image) for style in styles for image in images]
    pad, label_w, line_h = 6, 150, 16
    font = _font(13)
    columns = 1 + len(revs)
    headers = [(["content"], "#222222")] + [
        (wrap_text(r.label, font, cell, max_lines=2) + wrap_text(r.subject, font, cell, max_lines=2),
         PALETTE[i % len(PALETTE)]) for i, r in enumerate(revs)]
    head_h = 2 * pad + line_h * max(len(lines) for lines, _ in headers)
    max_label_lines = max(1, (cell - 8) // line_h)
    sheet = Image.new("RGB", (label_w + columns * (cell + pad) + pad, head_h + max(len(rows), 1) * (cell + pad) + pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for col, (lines, colour) in enumerate(headers):
        for i, line in enumerate(lines):
            draw.text((label_w + pad + col * (cell + pad), pad + i * line_h), line, fill=colour, font=font)
    for row, (style, image) in enumerate(rows):
        y = head_h + pad + row * (cell + pad)
        lines = wrap_text(style, font, label_w - 2 * pad) + wrap_text(image, font, label_w - 2 * pad)
        for i, line in enumerate(lines[:max_label_lines]):
            draw.text((pad, y + 4 + i * line_h), line, fill="#222222", font=font)
        content = next((r.content[image] for r in revs if image in r.content), None)
        cells = [content] + [r.images.get((style, image)) for r in revs]
        for col, data in enumerate(cells):
            x = label_w + pad + col * (cell + pad)
            if data is None:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill="#eeeeee", outline="#b3261e")
                draw.text((x + 8, y + cell // 2 - 8), "missing", fill="#b3261e", font=font)
                continue
            with Image.open(io.BytesIO(data)) as img:
                # fit the cell both ways: tiny test-sized outputs are enlarged so they can be seen
                scale = cell / max(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                thumb = img.convert("RGB").resize(size, Image.Resampling.LANCZOS)
            sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
    return sheet


# --------------------------------------------------------------------------- command


def compare(repo: Path, names: Iterable[str], max_image_size: int = DEFAULT_IMAGE_SIZE,
            image_format: str = DEFAULT_IMAGE_FORMAT, image_quality: int = DEFAULT_IMAGE_QUALITY) -> list[Revision]:
    repo = Path(repo)
    try:
        _git(repo, "rev-parse", "--show-toplevel")
    except CompareError as err:
        raise CompareError(f"{repo} is not inside a git repository ({err})") from None
    revs = [resolve_revision(repo, name) for name in names]
    head = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD").strip()
    for rev in revs:
        rev.checked_out = rev.sha == head
    _labels(revs)
    for rev in revs:
        print(f"compare: reading {rev.label}: {rev.subject}", file=sys.stderr)
        read_revision(repo, rev, max_image_size, image_format, image_quality)
        if rev.is_workspace:
            rev.stale, rev.status_error = workspace_status(repo)
            if rev.stale:
                print(f"compare: {rev.label}: outputs out of date in {len(rev.stale)} stage(s) "
                      f"({', '.join(stage for stage, _ in rev.stale)}); `dvc repro` updates them", file=sys.stderr)
            elif rev.status_error:
                print(f"compare: {rev.label}: `dvc status` failed: {rev.status_error}", file=sys.stderr)
        if rev.missing:
            errors = sorted({m.error for m in rev.missing if m.reason == "dvc" and m.error})
            print(f"compare: {rev.label}: {len(rev.missing)} artifact(s) missing"
                  + "".join(f"; DVC: {error}" for error in errors), file=sys.stderr)
    return revs


def main(args: argparse.Namespace) -> int:
    if args.cell_size < 16:
        print(f"stylepipe compare: error: --cell-size {args.cell_size} is too small (at least 16)", file=sys.stderr)
        return 2
    if not 1 <= args.image_quality <= 100:
        print(f"stylepipe compare: error: --image-quality {args.image_quality} is not in 1-100", file=sys.stderr)
        return 2
    try:
        revs = compare(args.repo, default_revisions(list(args.revisions)), args.max_image_size,
                       args.image_format, args.image_quality)
    except CompareError as err:
        print(f"stylepipe compare: error: {err}", file=sys.stderr)
        return 2
    page = render_html(revs)
    with atomic_path(args.output) as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(f"compare: wrote {args.output} ({len(page) / 1e6:.1f} MB)", file=sys.stderr)
    if args.png:
        sheet = contact_sheet(revs, args.cell_size)
        with atomic_path(args.png) as tmp:
            sheet.save(tmp, format="PNG")
        print(f"compare: wrote {args.png} ({sheet.width}x{sheet.height})", file=sys.stderr)
    for rev in revs:
        if rev.missing and fetch_hint(rev):
            print(f"compare: {rev.label} is missing artifacts; fetch them with: {fetch_hint(rev)}", file=sys.stderr)
    return 0
