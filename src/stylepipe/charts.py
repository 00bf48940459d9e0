"""Line charts of training curves as SVG: text, so the same curves give the same bytes.

``stylepipe compare`` draws one chart per loss with a line per revision;
``stylepipe report`` draws one per loss with a line per style, as a
standalone picture (``svg_figure``).
"""

from __future__ import annotations

import html
import io
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# One colour per line, in order: Okabe-Ito's colour-blind-safe eight, then eight of Paul Tol's that
# differ from them, so that a report of up to 16 styles gives each its own colour.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442", "#000000",
           "#332288", "#882255", "#999933", "#aa4499", "#661100", "#6699cc", "#888888", "#117733")
# A generous width per character of the 11 px chart font, to size legend entries
CHAR_WIDTH = 7

CHART_CSS = """svg.chart{background:#fff;border:1px solid #eee} svg text{font:11px system-ui,sans-serif;fill:#444}
svg .title{font-size:13px;font-weight:600;fill:#222} svg .note{fill:#777}
svg .grid{stroke:#eee} svg .frame{fill:none;stroke:#bbb} svg .mark{font-size:16px;font-weight:700}
"""


def parse_curves(data: bytes) -> pd.DataFrame:
    """A curves.csv as numbers; a loss that overflowed or became NaN stays in (inf, NaN) for the chart to mark.

    Text that is not a number (a damaged file) raises ValueError naming its line and column, rather
    than being drawn as a run that diverged."""
    frame = pd.read_csv(io.BytesIO(data))
    numbers = frame.apply(pd.to_numeric, errors="coerce")
    garbled = numbers.isna() & frame.notna()
    if garbled.to_numpy().any():
        row, col = next(zip(*garbled.to_numpy().nonzero()))
        raise ValueError(f"line {row + 2}, column {frame.columns[col]}: {frame.iat[row, col]!r} is not a number")
    return numbers


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values from ``lo`` to ``hi`` (finite bounds; none otherwise)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = hi / n - lo / n  # not (hi - lo) / n: that overflows for bounds near the float limit
    if not raw > 0 or not math.isfinite(raw):
        return [lo, hi]
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _linear_axis(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """The y range widened to the round values just outside ``lo`` .. ``hi``, and its ticks: both
    ends of the axis are labelled, so a loss's lowest (last) values can be read off it."""
    ticks = _ticks(lo, hi)
    if len(ticks) < 2:
        return lo, hi, ticks
    step = ticks[1] - ticks[0]
    if ticks[0] > lo + 1e-9 * step:
        ticks.insert(0, ticks[0] - step)
    if ticks[-1] < hi - 1e-9 * step:
        ticks.append(ticks[-1] + step)
    if not all(math.isfinite(t) for t in ticks):  # bounds near the float limit: keep the data's
        return lo, hi, _ticks(lo, hi)
    return ticks[0], ticks[-1], ticks


def _log_axis(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """:func:`_linear_axis` in log10 units: powers of ten, thinned to about 6 when a run that blew
    up spans tens of decades; with 2 and 5 times them where only a few decades are spanned."""
    first, last = math.floor(lo), math.ceil(hi)
    if last - first > 3:
        every = math.ceil((last - first + 1) / 6)
        last = first + every * math.ceil((last - first) / every)
        ticks = [float(e) for e in range(first, last + 1, every)]
        return ticks[0], ticks[-1], ticks
    values = sorted(math.log10(m) + e for e in range(first, last + 1) for m in (1, 2, 5))
    lo = max(v for v in values if v <= lo + 1e-9)
    hi = min(v for v in values if v >= hi - 1e-9)
    return lo, hi, [v for v in values if lo <= v <= hi]


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points of a polyline that show on screen: in each pixel column the first, lowest, highest
    and last, in order. A curve logged at every step of a long run (tens of thousands of rows)
    draws the same picture from a few per column, and the SVG stays small."""
    kept: list[tuple[float, float]] = []
    for _, group in itertools.groupby(points, key=lambda point: round(point[0])):
        column = list(group)
        heights = [y for _, y in column]
        extremes = {0, len(column) - 1, heights.index(min(heights)), heights.index(max(heights))}
        kept.extend(column[i] for i in sorted(extremes))
    return kept


@dataclass
class _Line:
    label: str
    colour: str
    segments: list[tuple[Any, Any]]  # (steps, values): the runs of finite values, drawn as lines
    diverged: tuple[float, str] | None  # (step, "inf" / "-inf" / "NaN") of the first non-finite value
    dashed: bool = False


def _line(label: str, colour: str, frame: pd.DataFrame, column: str, dashed: bool = False) -> _Line | None:
    if column not in frame or "step" not in frame:
        return None
    data = frame[["step", column]].apply(pd.to_numeric, errors="coerce")
    data = data[np.isfinite(data["step"].to_numpy(float))]
    steps, values = data["step"].to_numpy(float), data[column].to_numpy(float)
    finite = [math.isfinite(v) for v in values]
    diverged = None
    for step, value, ok in zip(steps, values, finite):
        if not ok:
            diverged = (float(step), "NaN" if math.isnan(value) else f"{value}")
            break
    segments, start = [], None
    for i, ok in enumerate([*finite, False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            segments.append((steps[start:i], values[start:i]))
            start = None
    if not segments and diverged is None:
        return None
    return _Line(label, colour, segments, diverged, dashed)


def _tick_labels(values: list[float]) -> list[str]:
    """The fewest significant digits, three at least, that tell every tick from the next
    (a loss between 100,000 and 102,000 needs six)."""
    for digits in range(3, 17):
        text = [f"{v:.{digits}g}" for v in values]
        if len(set(text)) == len(text):
            return text
    return [repr(v) for v in values]


def svg_chart(series: list[tuple], column: str, width: int = 380, height: int = 230, tapered: bool = True) -> str:
    """Line chart of ``column`` against ``step``: one line per (label, colour, frame) or
    (label, colour, frame, dashed); a frame without ``column`` draws no line.

    ``tapered``: the first line widest and each next one thinner, so that a line drawn over an
    identical one (the same curve at two revisions) leaves it visible.

    Only finite values are drawn; where a run's loss overflows or turns NaN (a diverged run),
    a dashed line in its colour marks the step, labelled "diverged at step N"."""
    lines = [line for label, colour, frame, *dashed in series if (line := _line(label, colour, frame, column, *dashed))]
    # right: room for half the last step label (centred on the frame's edge), e.g. "41000"
    left, right, top, bottom = 62, 24, 26, 34
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(column)}">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{html.escape(column)}</text>']
    if not lines:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="note">no data</text></svg>')
        return "\n".join(out)
    xs = [x for line in lines for x, _ in line.segments] + [[line.diverged[0]] for line in lines if line.diverged]
    ys = [y for line in lines for _, y in line.segments]
    x_lo, x_hi = min(float(min(x)) for x in xs), max(float(max(x)) for x in xs)
    y_lo = min((float(min(y)) for y in ys), default=0.0)
    y_hi = max((float(max(y)) for y in ys), default=1.0)
    log = y_lo > 0 and y_hi / y_lo > 100  # style losses span decades early in training
    if log:
        y_lo, y_hi = math.log10(y_lo), math.log10(y_hi)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi == y_lo:
        pad = abs(y_hi) * 0.1 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad
    y_lo, y_hi, y_ticks = _log_axis(y_lo, y_hi) if log else _linear_axis(y_lo, y_hi)
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>')
    for t in _ticks(x_lo, x_hi):
        out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + plot_h}" class="grid"/>'
                   f'<text x="{px(t):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{t:g}</text>')
    y_text = _tick_labels([10**t if log else t for t in y_ticks])
    for t, text in zip(y_ticks, y_text):
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + plot_w}" y2="{py(t):.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{text}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle" class="note">step'
               f'{" (log y)" if log else ""}</text>')
    for index, line in enumerate(lines):
        width_px = max(1.2, 3.6 - 1.2 * index) if tapered else 1.6
        for x, y in line.segments:
            if log:
                keep = y > 0
                x, y = x[keep], [math.log10(v) for v in y[keep]]
            if not len(x):
                continue
            points = " ".join(f"{a:.1f},{b:.1f}" for a, b in _thin([(px(a), py(b)) for a, b in zip(x, y)]))
            dash = ' stroke-dasharray="5 3"' if line.dashed else ""
            out.append(f'<polyline points="{points}" fill="none" stroke="{line.colour}" stroke-width="{width_px:.1f}"'
                       f'{dash} stroke-linejoin="round"><title>{html.escape(line.label)}</title></polyline>')
            if len(x) == 1 or (line.dashed and len(x) <= 50):  # a few validations: mark each one
                out.extend(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="{line.colour}"/>'
                           for a, b in zip(x, y))
    marks = [line for line in lines if line.diverged]
    for index, line in enumerate(marks):
        step, value = line.diverged
        x = px(step)
        text = f"{line.label}: diverged at step {step:g} ({value})"
        anchor = "end" if x > left + plot_w / 2 else "start"
        out.append(f'<g class="diverged"><title>{html.escape(text)}</title>'
                   f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="{line.colour}" '
                   f'stroke-width="1.5" stroke-dasharray="4 3"/>'
                   f'<text x="{x:.1f}" y="{top + 10:.1f}" text-anchor="middle" class="mark" '
                   f'style="fill:{line.colour}">×</text>'
                   f'<text x="{x + (-4 if anchor == "end" else 4):.1f}" y="{top + 24 + 13 * index:.1f}" '
                   f'text-anchor="{anchor}" style="fill:{line.colour}">diverged at step {step:g} '
                   f"({html.escape(value)})</text></g>")
    out.append("</svg>")
    return "\n".join(out)


def svg_figure(title: str, charts: list[str], legend: list[tuple[str, str]], columns: int = 2,
               width: int = 380, height: int = 230) -> str:
    """A standalone SVG document: ``title``, a legend of (label, colour) swatches, then ``charts``
    (each from ``svg_chart`` at ``width`` × ``height``) in rows of ``columns``."""
    gap, head, row_h, swatch = 8, 28, 18, 18
    total_w = gap + columns * (width + gap)
    # entries as wide as the longest label needs (at least 160 px, at most a line), so that two
    # names sharing a long prefix stay told apart
    longest = max((len(label) for label, _ in legend), default=0)
    entry = max(160, min(total_w - 2 * gap, swatch + CHAR_WIDTH * longest + 12))
    per_row = max(1, (total_w - 2 * gap) // entry)  # legend entries per line
    legend_rows = math.ceil(len(legend) / per_row)
    top = head + legend_rows * row_h + gap
    rows = math.ceil(len(charts) / columns)
    total_h = top + rows * (height + gap)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
           f'viewBox="0 0 {total_w} {total_h}" role="img" aria-label="{html.escape(title)}">',
           f"<style>\n{CHART_CSS}</style>",
           f'<rect width="{total_w}" height="{total_h}" fill="#fff"/>',
           f'<text x="{gap}" y="20" class="title">{html.escape(title)}</text>']
    for i, (label, colour) in enumerate(legend):
        x, y = gap + (i % per_row) * entry, head + (i // per_row) * row_h
        fits = (entry - swatch - 12) // CHAR_WIDTH  # only a label longer than a whole line is cut
        short = label if len(label) <= fits else label[:fits - 1] + "…"
        out.append(f'<g><title>{html.escape(label)}</title><rect x="{x}" y="{y}" width="12" height="12" rx="2" '
                   f'fill="{colour}"/><text x="{x + swatch}" y="{y + 10}">{html.escape(short)}</text></g>')
    for i, chart in enumerate(charts):
        x, y = gap + (i % columns) * (width + gap), top + (i // columns) * (height + gap)
        out.append(f'<g transform="translate({x},{y})">\n{chart}\n</g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
