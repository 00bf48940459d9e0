"""Compare git revisions: params, metrics, training curves and stylized images.

`dvc metrics diff` prints numbers; style transfer has to be looked at. For each
revision this reads what the pipeline recorded (params.yaml, results/metrics.json,
each style's curves.csv, the evaluation images and their stylizations) from git
and the DVC cache or remote through `dvc.api.DVCFileSystem`; the special revision
``workspace`` means the files on disk. It writes one self-contained HTML page
(images as data URIs, inline CSS and SVG, nothing fetched when it is opened) and,
with ``--png``, a contact sheet.

A revision whose artifacts cannot be read (not in the cache, no remote) is
rendered with the list of missing files and the command that fetches them.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
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

from stylepipe.io import atomic_path

WORKSPACE = "workspace"

# Pipeline layout (see the README's outputs table).
PARAMS = "params.yaml"
METRICS = "results/metrics.json"
STYLE_METRICS = "results/metrics/{style}.json"
CURVES = "results/train/{style}/curves.csv"
EVAL_DIR = "data/eval"
EVAL_IMAGE = "data/eval/{image}.png"
STYLIZED = "results/stylized/{style}/{image}.png"

CURVE_COLUMNS = ("total_loss", "content_loss", "style_loss", "tv_loss")
# One colour per revision, in order; colour-blind-safe (Okabe-Ito).
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442", "#000000")
# Which way is better, for colouring deltas; metrics not listed are neutral.
LOWER_IS_BETTER = ("loss", "wall_time")
HIGHER_IS_BETTER = ("ssim", "images_per_s")


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
    parser.add_argument("--max-image-size", type=int, default=512, metavar="PX",
                        help="long edge of images embedded in the HTML; 0 keeps them as they are (default: 512)")
    parser.add_argument("--cell-size", type=int, default=192, metavar="PX",
                        help="long edge of one image in the contact sheet (default: 192)")


class CompareError(Exception):
    """A problem the user must fix (unknown revision, not a repository)."""


# --------------------------------------------------------------------------- reading


@dataclass
class Missing:
    path: str
    target: str | None  # the DVC output holding it; None when no revision records it
    error: str | None = None  # set when the file is there but cannot be parsed


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
    images: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (style, image) -> PNG
    content: dict[str, bytes] = field(default_factory=dict)             # image -> PNG
    missing: list[Missing] = field(default_factory=list)
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
    experiment = None
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
        baseline = "".join(experiment.split("/")[2:4])
        subject = f"DVC experiment {name} (baseline {baseline[:7]})"
    return Revision(name=name, sha=sha, short=short, subject=subject, date=date)


def _experiment_ref(repo: Path, name: str) -> str | None:
    """The git ref of a DVC experiment (`dvc exp run -n NAME`, `dvc exp save -n NAME`), if exactly one matches."""
    refs = [ref for ref in _git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").split()
            if ref.count("/") == 4 and ref.rsplit("/", 1)[1] == name]
    return refs[0] if len(refs) == 1 else None


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
        try:
            if self.rev.is_workspace:
                return (self.repo / path).read_bytes()
            return self.fs.read_bytes(path)
        except Exception:  # noqa: BLE001 - dvc raises several kinds; all mean "not readable here"
            self.rev.missing.append(Missing(path, self._output_of(path)))
            return None

    def parse(self, path: str, parser):
        """``parser(bytes)``, or None (recorded in ``rev.missing``) if unreadable or unparsable."""
        raw = self.read(path)
        if raw is None:
            return None
        try:
            return parser(raw)
        except Exception as err:  # noqa: BLE001 - a broken file is reported, not fatal
            self.rev.missing.append(Missing(path, None, f"cannot be parsed ({type(err).__name__}: {err})"))
            return None

    def listdir(self, path: str) -> list[str]:
        try:
            if self.rev.is_workspace:
                return sorted(p.name for p in (self.repo / path).iterdir())
            return sorted(posixpath.basename(p) for p in self.fs.ls(path, detail=False))
        except Exception:  # noqa: BLE001
            return []

    def _output_of(self, path: str) -> str | None:
        """The outermost DVC output containing ``path`` (what `dvc fetch` takes)."""
        target = None
        try:
            fs = self.fs
        except Exception:  # noqa: BLE001 - not a DVC repository
            return None
        parts = path.split("/")
        for i in range(len(parts), 0, -1):
            candidate = "/".join(parts[:i])
            try:
                info = fs.info(candidate)
            except Exception:  # noqa: BLE001 - e.g. the directory's listing is itself missing
                continue
            if info.get("dvc_info", {}).get("isout"):
                target = candidate
        return target


def _parse_curves(data: bytes) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(data))
    return frame.apply(pd.to_numeric, errors="coerce")


def _normalise_png(data: bytes, max_size: int) -> bytes:
    """Decode (so a broken file fails here, not in the browser), shrink, re-encode as PNG."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.format == "PNG" and (max_size <= 0 or max(img.size) <= max_size):
            return data
        img = img.convert("RGB")
        if max_size > 0 and max(img.size) > max_size:
            img.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, format="PNG", optimize=True)
        return out.getvalue()


def read_revision(repo: Path, rev: Revision, max_image_size: int = 512) -> Revision:
    source = _Source(repo, rev)
    try:
        params = source.parse(PARAMS, yaml.safe_load)
        rev.params = params if isinstance(params, dict) else {}
        styles = list(rev.params.get("styles") or {}) if isinstance(rev.params.get("styles"), dict) else []
        metrics = source.parse(METRICS, json.loads)
        if isinstance(metrics, dict):
            rev.metrics = metrics
        else:  # the per-style files are what `report` merges; use them if they are there
            for style in styles:
                style_metrics = source.parse(STYLE_METRICS.format(style=style), json.loads)
                if style_metrics is not None:
                    rev.metrics[style] = style_metrics
        styles += [s for s in rev.metrics if s not in styles]
        eval_items = (rev.params.get("data") or {}).get("eval") or []
        images = [str(item["name"]) for item in eval_items if isinstance(item, dict) and "name" in item]
        if not images:
            images = [posixpath.splitext(n)[0] for n in source.listdir(EVAL_DIR) if n.endswith(".png")]

        for style in styles:
            curves = source.parse(CURVES.format(style=style), _parse_curves)
            if curves is not None:
                rev.curves[style] = curves
        wanted = [(None, image) for image in images] + [(style, image) for style in styles for image in images]
        for style, image in tqdm(wanted, desc=f"compare: {rev.label}", unit="image", file=sys.stderr,
                                 disable=None):
            path = EVAL_IMAGE.format(image=image) if style is None else STYLIZED.format(style=style, image=image)
            raw = source.read(path)
            if raw is None:
                continue
            try:
                png = _normalise_png(raw, max_image_size)
            except Exception as err:  # noqa: BLE001 - unreadable image: say so instead of failing
                rev.missing.append(Missing(path, None, f"not a readable image ({err})"))
                continue
            if style is None:
                rev.content[image] = png
            else:
                rev.images[(style, image)] = png
        rev.styles, rev.image_names = styles, images
    finally:
        source.close()
    return rev


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


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.4g}"
    return str(value)


def _direction(metric: str) -> int:
    if any(word in metric for word in HIGHER_IS_BETTER):
        return 1
    if any(word in metric for word in LOWER_IS_BETTER):
        return -1
    return 0


# --------------------------------------------------------------------------- SVG curves


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def svg_chart(series: list[tuple[str, str, pd.DataFrame]], column: str, width: int = 380, height: int = 230) -> str:
    """Line chart of ``column`` against ``step``: one polyline per (label, colour, frame)."""
    lines = []
    for label, colour, frame in series:
        if column not in frame or "step" not in frame:
            continue
        data = frame[["step", column]].dropna()
        if len(data):
            lines.append((label, colour, data["step"].to_numpy(float), data[column].to_numpy(float)))
    left, right, top, bottom = 62, 12, 26, 34
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(column)}">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{html.escape(column)}</text>']
    if not lines:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="note">no data</text></svg>')
        return "\n".join(out)
    xs = [x for _, _, x, _ in lines]
    ys = [y for _, _, _, y in lines]
    x_lo, x_hi = min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)
    y_lo, y_hi = min(float(y.min()) for y in ys), max(float(y.max()) for y in ys)
    log = y_lo > 0 and y_hi / y_lo > 100  # style losses span decades early in training
    if log:
        y_lo, y_hi = math.log10(y_lo), math.log10(y_hi)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi == y_lo:
        pad = abs(y_hi) * 0.1 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>')
    for t in _ticks(x_lo, x_hi):
        out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + plot_h}" class="grid"/>'
                   f'<text x="{px(t):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{t:g}</text>')
    if log:
        y_ticks = [float(e) for e in range(math.ceil(y_lo), math.floor(y_hi) + 1)] or [y_lo, y_hi]
        y_text = [f"{10 ** t:.3g}" for t in y_ticks]
    else:
        y_ticks = _ticks(y_lo, y_hi)
        y_text = [f"{t:.3g}" for t in y_ticks]
    for t, text in zip(y_ticks, y_text):
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + plot_w}" y2="{py(t):.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{text}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle" class="note">step'
               f'{" (log y)" if log else ""}</text>')
    for index, (label, colour, x, y) in enumerate(lines):
        # the baseline widest, so a later revision with the same curve does not hide it
        width_px = max(1.2, 3.6 - 1.2 * index)
        if log:
            keep = y > 0
            x, y = x[keep], [math.log10(v) for v in y[keep]]
        points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, y))
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="{width_px:.1f}" stroke-linejoin="round">'
                   f'<title>{html.escape(label)}</title></polyline>')
        if len(x) == 1:
            out.append(f'<circle cx="{px(x[0]):.1f}" cy="{py(y[0]):.1f}" r="3" fill="{colour}"/>')
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 12px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0} th,td{border:1px solid #ddd;padding:3px 8px;vertical-align:top}
th{background:#f4f4f4;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.better{color:#087443;font-weight:600} td.worse{color:#b3261e;font-weight:600}
code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace} pre{background:#f6f6f6;padding:8px;overflow-x:auto}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.missing{border:2px solid #b3261e;background:#fff4f2;padding:8px 12px;margin:8px 0;border-radius:4px}
.cellmissing{width:160px;height:120px;display:flex;align-items:center;justify-content:center;
  background:repeating-linear-gradient(45deg,#fafafa,#fafafa 8px,#eee 8px,#eee 16px);color:#b3261e;font-size:12px;text-align:center}
.charts{display:flex;flex-wrap:wrap;gap:8px}
svg.chart{background:#fff;border:1px solid #eee} svg text{font:11px system-ui,sans-serif;fill:#444}
svg .title{font-size:13px;font-weight:600;fill:#222} svg .note{fill:#777}
svg .grid{stroke:#eee} svg .frame{fill:none;stroke:#bbb}
table.images td{text-align:center} table.images img{width:256px;height:auto;display:block;margin:auto}
.muted{color:#777}
"""


def _rev_head(rev: Revision, colour: str) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>{html.escape(rev.label)}'


def fetch_hint(rev: Revision) -> str:
    """The command that makes ``rev``'s missing artifacts readable."""
    targets = sorted({m.target for m in rev.missing if m.target and not m.error})
    if not targets:
        return ""
    joined = " ".join(targets)
    if rev.is_workspace:
        return f"dvc pull {joined}"
    if rev.checked_out:
        return f"dvc fetch {joined}"
    return f"git checkout {rev.short} && dvc fetch {joined} && git checkout -"


def _missing_box(rev: Revision, colour: str) -> str:
    tracked = [m for m in rev.missing if m.target and not m.error]
    absent = [m for m in rev.missing if not m.target and not m.error]
    broken = [m for m in rev.missing if m.error]
    parts = [f'<div class="missing" id="missing-{html.escape(rev.label)}"><strong>{_rev_head(rev, colour)}: '
             f'{len(rev.missing)} artifact(s) missing</strong>']
    if tracked:
        where = "in the workspace" if rev.is_workspace else "in the DVC cache, nor on a reachable remote"
        parts.append(f"<p>Recorded by DVC but not {where}:</p><ul>"
                     + "".join(f"<li><code>{html.escape(m.path)}</code></li>" for m in tracked) + "</ul>")
        parts.append("<p>Fetch them with:</p><pre>" + html.escape(fetch_hint(rev)) + "</pre>")
        if rev.is_workspace:
            parts.append("<p>(or, if the pipeline never produced them, <code>dvc repro</code>)</p>")
        if not rev.is_workspace and not rev.checked_out:
            targets = " ".join(sorted({m.target for m in tracked}))
            parts.append("<p>or, without switching the workspace (fetches these outputs for every commit):</p>"
                         f"<pre>dvc fetch --all-commits {html.escape(targets)}</pre>")
    if absent:
        parts.append("<p>Not recorded in this revision (the pipeline had not produced them"
                     + (": run <code>dvc repro</code>" if rev.is_workspace else "")
                     + "):</p><ul>" + "".join(f"<li><code>{html.escape(m.path)}</code></li>" for m in absent) + "</ul>")
    if broken:
        parts.append("<p>Present but unreadable:</p><ul>" + "".join(
            f"<li><code>{html.escape(m.path)}</code>: {html.escape(m.error or '')}</li>" for m in broken) + "</ul>")
    parts.append("</div>")
    return "\n".join(parts)


def _img(data: bytes | None, alt: str, why: str = "missing") -> str:
    if data is None:
        return f'<div class="cellmissing">{html.escape(why)}</div>'
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}" title="{html.escape(alt)}">'


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
        labels = [r.label for r in revs]
        head = "".join(f"<th>{_rev_head(r, colours[r.label])}</th>" for r in revs)
        head += "".join(f"<th>Δ {html.escape(r.label)}</th>" for r in revs[1:])
        out.append(f'<table class="metrics"><tr><th>style</th><th>metric</th>{head}</tr>')
        for (style, metric), row in table.iterrows():
            cells = "".join(f'<td class="num">{html.escape(_fmt(row[label]))}</td>' for label in labels)
            for rev in revs[1:]:
                delta = row[f"Δ {rev.label}"]
                cls = "num"
                if isinstance(delta, float) and not math.isnan(delta) and delta != 0 and _direction(metric):
                    cls += " better" if (delta > 0) == (_direction(metric) > 0) else " worse"
                if delta is None or (isinstance(delta, float) and math.isnan(delta)):
                    text = "—"
                else:
                    text = "±0" if delta == 0 else f"{delta:+.4g}"
                cells += f'<td class="{cls}">{html.escape(text)}</td>'
            out.append(f"<tr><td>{html.escape(str(style))}</td><td>{html.escape(str(metric))}</td>{cells}</tr>")
        out.append("</table>")

    out.append('<h2 id="curves">Training curves</h2>')
    legend = " ".join(_rev_head(r, colours[r.label]) for r in revs)
    out.append(f"<p>{legend}</p>")
    for style in styles:
        series = [(r.label, colours[r.label], r.curves[style]) for r in revs if style in r.curves]
        out.append(f"<h3>{html.escape(style)}</h3>")
        absent = [r.label for r in revs if style not in r.curves]
        if absent:
            out.append(f'<p class="muted">No curves for: {html.escape(", ".join(absent))}.</p>')
        present = [c for c in CURVE_COLUMNS if any(c in f and f[c].abs().sum() > 0 for _, _, f in series)]
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
    """Rows: (style, image); columns: content, then each revision; a header of revision labels."""
    styles, images = _styles(revs), _images(revs)
    rows = [(style, image) for style in styles for image in images]
    pad, label_w, head_h = 6, 150, 44
    font = _font(13)
    columns = 1 + len(revs)
    sheet = Image.new("RGB", (label_w + columns * (cell + pad) + pad, head_h + max(len(rows), 1) * (cell + pad) + pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    headers = [("content", "#222222")] + [(f"{r.label}\n{r.subject[:28]}", PALETTE[i % len(PALETTE)])
                                          for i, r in enumerate(revs)]
    for col, (text, colour) in enumerate(headers):
        draw.multiline_text((label_w + pad + col * (cell + pad), 6), text, fill=colour, font=font)
    for row, (style, image) in enumerate(rows):
        y = head_h + pad + row * (cell + pad)
        draw.multiline_text((pad, y + 4), f"{style}\n{image}", fill="#222222", font=font)
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


def compare(repo: Path, names: Iterable[str], max_image_size: int = 512) -> list[Revision]:
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
        read_revision(repo, rev, max_image_size)
        if rev.missing:
            print(f"compare: {rev.label}: {len(rev.missing)} artifact(s) missing", file=sys.stderr)
    return revs


def main(args: argparse.Namespace) -> int:
    if args.cell_size < 16:
        print(f"stylepipe compare: error: --cell-size {args.cell_size} is too small (at least 16)", file=sys.stderr)
        return 2
    try:
        revs = compare(args.repo, default_revisions(list(args.revisions)), args.max_image_size)
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
