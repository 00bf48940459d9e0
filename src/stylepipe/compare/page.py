"""The HTML page: one self-contained file (inline CSS and SVG charts, images as data URIs, no script).

Sections in order: the revisions (with boxes for out-of-date and missing outputs
and the commands that fix them), the params that differ, the metrics with their
deltas (coloured only where they compare), the training curves and the stylized
evaluation images side by side.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any

import pandas as pd

from stylepipe.charts import CHART_CSS, PALETTE, svg_chart
from stylepipe.compare.images import IMAGE_WIDTH, image_mime
from stylepipe.compare.revisions import Missing, Revision
from stylepipe.compare.source import fetch_hint
from stylepipe.compare.tables import (all_images, all_styles, content_differs, direction, format_metric, metric_kind,
                                      metrics_table, packages_diff, params_diff, training_text)
from stylepipe.compare.weights import loss_notes

CURVE_COLUMNS = ("total_loss", "content_loss", "style_loss", "tv_loss")

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
    """A revision's label after a swatch of its colour."""
    return f'<span class="swatch" style="background:{colour}"></span>{html.escape(rev.label)}'


def _paths(items: list[Missing], with_error: bool = False) -> str:
    return "<ul>" + "".join(
        f"<li><code>{html.escape(m.path)}</code>" + (f": {html.escape(m.error or '')}" if with_error else "") + "</li>"
        for m in items) + "</ul>"


def _missing_box(rev: Revision, colour: str) -> str:
    """What a revision lacks, grouped by why, with the commands that fetch what can be fetched."""
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
    """An embedded image, or a placeholder saying ``why`` there is none."""
    if data is None:
        return f'<div class="cellmissing">{html.escape(why)}</div>'
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:{image_mime(data)};base64,{encoded}" alt="{html.escape(alt)}" title="{html.escape(alt)}">'


def _why_absent_content(rev: Revision, image: str) -> str:
    return "missing" if image in rev.image_names else f"no evaluation image {image} in this revision"


def _why_absent(rev: Revision, style: str, image: str) -> str:
    """The placeholder's text: no such style or image in ``rev``, or its file is missing."""
    if style not in rev.styles:
        return f"no style {style} in this revision"
    if image not in rev.image_names:
        return f"no evaluation image {image} in this revision"
    return "missing"


def render_html(revs: list[Revision]) -> str:
    """The whole page, self-contained: revisions, params that differ, metrics, curves, images."""
    colours = {rev.label: PALETTE[i % len(PALETTE)] for i, rev in enumerate(revs)}
    title = " vs ".join(rev.label for rev in revs)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>stylepipe compare: {html.escape(title)}</title>", f"<style>{CSS}</style></head><body>",
           f"<h1>stylepipe compare: {html.escape(title)}</h1>",
           # no time of writing: the same revisions give the same page, byte for byte
           '<p class="muted">Deltas are against the first revision.</p>']
    out += _revisions_section(revs, colours)
    out += _params_section(revs, colours)
    out += _packages_section(revs, colours)
    out += _metrics_section(revs, colours)
    out += _training_section(revs, colours)
    out += _curves_section(revs, colours)
    out += _images_section(revs, colours)
    out.append("</body></html>\n")
    return "\n".join(out)


def _revisions_section(revs: list[Revision], colours: dict[str, str]) -> list[str]:
    """Each revision's SHA, subject and date; then the boxes of stale and missing outputs."""
    out = ['<h2 id="revisions">Revisions</h2>'
           "<table><tr><th>revision</th><th>commit</th><th>subject</th><th>date</th></tr>"]
    for rev in revs:
        out.append(f"<tr><td>{_rev_head(rev, colours[rev.label])}</td><td><code>{html.escape(rev.short)}</code></td>"
                   f"<td>{html.escape(rev.subject)}</td><td>{html.escape(rev.date)}</td></tr>")
    out.append("</table>")
    for rev in revs:
        if rev.stale or rev.status_error:
            out.append(_stale_box(rev, colours[rev.label]))
        if rev.missing:
            out.append(_missing_box(rev, colours[rev.label]))
    return out


def _params_section(revs: list[Revision], colours: dict[str, str]) -> list[str]:
    """The flattened params keys whose values are not the same in all revisions."""
    out = ['<h2 id="params">Params that differ</h2>']
    diff = params_diff(revs)
    if diff.empty:
        out.append("<p>All revisions use the same params.</p>")
        return out
    return out + _diff_table(diff, "key", revs, colours)


def _packages_section(revs: list[Revision], colours: dict[str, str]) -> list[str]:
    """The packages whose pinned versions (constraints.txt) differ: other software can move the numbers too."""
    recorded = [rev for rev in revs if rev.packages is not None]
    if not recorded:
        return []  # every revision predates constraints.txt: nothing to say
    out = ['<h2 id="packages">Packages that differ</h2>']
    unrecorded = [rev.label for rev in revs if rev.packages is None]
    if unrecorded:
        out.append(f'<p class="muted">No constraints.txt in {html.escape(", ".join(unrecorded))}: '
                   f"{'its' if len(unrecorded) == 1 else 'their'} package versions are not recorded.</p>")
    diff = packages_diff(revs)
    if diff.empty:
        if len(recorded) > 1:
            out.append("<p>" + ("All revisions" if not unrecorded else "The revisions with a constraints.txt")
                       + " pin the same package versions.</p>")
        return out
    return out + _diff_table(diff, "package", revs, colours)


def _training_section(revs: list[Revision], colours: dict[str, str]) -> list[str]:
    """Per style, what each revision trained it on: throughput compares only on the same device."""
    styles = [style for style in all_styles(revs) if any(style in rev.summaries for rev in revs)]
    if not styles:
        return []
    out = ['<h2 id="training">How each style was trained</h2>',
           '<p class="muted">From each training\'s <code>summary.json</code>; a cell that differs from the first '
           "revision's is in bold.</p>",
           "<table><tr><th>style</th>" + "".join(f"<th>{_rev_head(r, colours[r.label])}</th>" for r in revs) + "</tr>"]
    for style in styles:
        texts = [html.escape(training_text(rev.summaries.get(style))) for rev in revs]
        cells = "".join(f"<td><strong>{text}</strong></td>" if text != texts[0] else f"<td>{text}</td>"
                        for text in texts)
        out.append(f"<tr><td>{html.escape(style)}</td>{cells}</tr>")
    out.append("</table>")
    return out


def _diff_table(diff: pd.DataFrame, what: str, revs: list[Revision], colours: dict[str, str]) -> list[str]:
    """A row per differing key, a column per revision."""
    out = [f"<table><tr><th>{what}</th>"
           + "".join(f"<th>{_rev_head(r, colours[r.label])}</th>" for r in revs) + "</tr>"]
    for key, row in diff.iterrows():
        out.append(f"<tr><td><code>{html.escape(str(key))}</code></td>"
                   + "".join(f"<td><code>{html.escape(str(v))}</code></td>" for v in row) + "</tr>")
    out.append("</table>")
    return out


def _metrics_section(revs: list[Revision], colours: dict[str, str]) -> list[str]:
    """The notes on losses that do not compare, then a row per style and metric with the deltas."""
    out = ['<h2 id="metrics">Metrics</h2>']
    table = metrics_table(revs)
    if table.empty:
        out.append("<p>No revision has metrics.</p>")
        return out
    notes = loss_notes(revs)
    for style, note in notes.items():
        out.append(f'<p class="note" id="weights-{html.escape(style)}"><strong>{html.escape(style)}</strong>: '
                   f"{note.text}</p>")
    derived = {r.label: sorted(r.derived) for r in revs if r.derived}
    if derived:
        out.append('<p class="muted">Unweighted losses derived as weighted loss ÷ weight (these metrics '
                   "predate the <code>*_unweighted</code> keys): " + html.escape("; ".join(
                       f"{label}: {', '.join(styles_)}" for label, styles_ in derived.items())) + ".</p>")
    head = "".join(f"<th>{_rev_head(r, colours[r.label])}</th>" for r in revs)
    head += "".join(f"<th>Δ {html.escape(r.label)}</th>" for r in revs[1:])
    out.append(f'<table class="metrics"><tr><th>style</th><th>metric</th>{head}</tr>')
    for (style, metric), row in table.iterrows():
        comparable = style not in notes or notes[style].comparable(metric)
        out.append(_metrics_row(revs, style, metric, row, comparable))
    out.append("</table>")
    if any(not n.comparable(m) for (st, m) in table.index for n in [notes.get(st)] if n):
        out.append('<p class="muted">* not coloured: not comparable across these revisions (see the notes '
                   "above the table).</p>")
    return out


def _metrics_row(revs: list[Revision], style: str, metric: str, row: pd.Series, comparable: bool) -> str:
    """One metric of one style: each revision's value, then each later revision's change."""
    labels = [r.label for r in revs]
    kind = metric_kind(metric, (row[label] for label in labels))
    cells = "".join(f'<td class="num">{html.escape(format_metric(row[label], kind))}</td>' for label in labels)
    for rev in revs[1:]:
        cells += _delta_cell(row[f"Δ {rev.label}"], style, metric, kind, comparable)
    name = html.escape(str(metric)) + ("" if comparable else " *")
    return f"<tr><td>{html.escape(str(style))}</td><td>{name}</td>{cells}</tr>"


def _delta_cell(delta: Any, style: str, metric: str, kind: str, comparable: bool) -> str:
    """A change against the baseline: green when better, red when worse, grey and starred
    where it does not compare."""
    delta = None if delta is None or (isinstance(delta, float) and math.isnan(delta)) else delta
    cls, title = "num", ""
    if not comparable:
        cls += " incomparable"
        title = f' title="{html.escape(style)}: not comparable across these revisions (see the note above)"'
    elif delta is not None and delta != 0 and direction(metric):
        cls += " better" if (delta > 0) == (direction(metric) > 0) else " worse"
    text = format_metric(delta, kind, delta=True)
    return f'<td class="{cls}"{title}>{html.escape(text)}{"" if comparable else " *"}</td>'


def _curves_section(revs: list[Revision], colours: dict[str, str]) -> list[str]:
    """Per style, a chart per loss with a line per revision (dashed: validation)."""
    styles = all_styles(revs)
    out = ['<h2 id="curves">Training curves</h2>']
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
    return out


def _images_section(revs: list[Revision], colours: dict[str, str]) -> list[str]:
    """One table per evaluation image: its content image once, then a row per style
    with each revision's stylization side by side."""
    styles = all_styles(revs)
    out = ['<h2 id="images">Stylized evaluation images</h2>']
    for image in all_images(revs):
        content = next((r.content[image] for r in revs if image in r.content), None)
        out.append(f'<h3>{html.escape(image)}</h3><table class="images"><tr><th>content</th><th>style</th>'
                   + "".join(f"<th>{_rev_head(r, colours[r.label])}</th>" for r in revs) + "</tr>")
        differs = content_differs(revs, image)
        if differs:  # each revision's own photograph, above its stylizations
            out.append('<tr><td class="muted">differs between revisions: each one\'s is in this row</td>'
                       '<th>content</th>' + "".join(
                           f"<td>{_img(r.content.get(image), f'{image} (content) @ {r.label}', _why_absent_content(r, image))}</td>"
                           for r in revs) + "</tr>")
        for row, style in enumerate(styles):
            shown = "" if differs else _img(content, f"{image} (content)")
            first = f'<td rowspan="{len(styles)}">{shown}</td>' if row == 0 else ""
            cells = "".join(
                f"<td>{_img(r.images.get((style, image)), f'{style} / {image} @ {r.label}', _why_absent(r, style, image))}</td>"
                for r in revs)
            out.append(f"<tr>{first}<th>{html.escape(style)}</th>{cells}</tr>")
        out.append("</table>")
    return out
