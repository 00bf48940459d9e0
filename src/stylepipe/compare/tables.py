"""The page's tables as data: params and packages that differ, metrics with their deltas, and how to write them.

``params_diff``, ``packages_diff`` and ``metrics_table`` are DataFrames with a column per revision;
``format_metric``, ``metric_kind`` and ``direction`` say how a metric is written
and which way is better.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, Iterable

import pandas as pd

from stylepipe.compare.revisions import Revision

# Which way is better, for colouring deltas; metrics not listed are neutral.
LOWER_IS_BETTER = ("loss", "wall_time")
HIGHER_IS_BETTER = ("ssim", "images_per_s")


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
        flat.append({k: param_text(v) for k, v in flatten(rev.params).items()})
    keys = sorted(set().union(*flat)) if flat else []
    rows = {}
    for key in keys:
        values = [f.get(key) for f in flat]
        if len(set(values)) > 1:
            rows[key] = ["—" if v is None else v for v in values]
    return pd.DataFrame.from_dict(rows, orient="index", columns=[r.label for r in revs])


def packages_diff(revs: list[Revision]) -> pd.DataFrame:
    """Rows: packages whose versions differ between the revisions that pin them; columns: revisions.

    A package a revision does not pin is `—`; a revision without constraints.txt
    is `not recorded` throughout and does not make a row differ."""
    pinned = [rev.packages for rev in revs if rev.packages is not None]
    rows = {}
    for name in sorted(set().union(*pinned)) if pinned else []:
        if len({pins.get(name) for pins in pinned}) > 1:
            rows[name] = ["not recorded" if rev.packages is None else rev.packages.get(name, "—") for rev in revs]
    return pd.DataFrame.from_dict(rows, orient="index", columns=[r.label for r in revs])


def training_text(summary: dict | None) -> str:
    """One style's training in a line: device (and threads on a CPU), precision, processes, steps and torch,
    as recorded."""
    if summary is None:
        return "—"
    device = str(summary.get("device", "?"))
    threads = summary.get("cpu_threads")
    if device == "cpu" and isinstance(threads, int):  # on a CPU the weights depend on the thread count
        device += f" ({threads} thread{'s' if threads > 1 else ''})"
    parts = [device, str(summary.get("precision", "?"))]
    if (summary.get("processes") or 1) > 1:
        parts.append(f"{summary['processes']} processes")
    if isinstance(summary.get("steps"), int):
        parts.append(f"{summary['steps']:,} steps")
    torch_version = (summary.get("software") or {}).get("torch")
    if torch_version:
        parts.append(f"torch {torch_version}")
    return " · ".join(parts)


def param_text(value: Any) -> str:
    """A params value as the page writes it."""
    if isinstance(value, float):
        short = f"{value:g}"  # 1e+10, not 10000000000.0
        return short if float(short) == value else repr(value)  # every digit where six would hide a change
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
    order = {s: i for i, s in enumerate(all_styles(revs))}
    table = table.loc[sorted(table.index, key=lambda k: (order.get(k[0], len(order)), k[1]))]
    numeric = table.apply(pd.to_numeric, errors="coerce")
    base = numeric[revs[0].label]
    for rev in revs[1:]:
        table[f"Δ {rev.label}"] = numeric[rev.label] - base
    return table


def all_styles(revs: list[Revision]) -> list[str]:
    """The styles of all revisions, in the order they first appear."""
    out: list[str] = []
    for rev in revs:
        out += [s for s in rev.styles if s not in out]
    return out


def all_images(revs: list[Revision]) -> list[str]:
    """The evaluation images of all revisions, in the order they first appear."""
    out: list[str] = []
    for rev in revs:
        out += [i for i in rev.image_names if i not in out]
    return out


def content_differs(revs: list[Revision], image: str) -> bool:
    """Whether revisions hold different content images under the name ``image`` (a new file or URL in
    ``data.eval``): each revision's stylizations are then of its own photograph."""
    return len({r.content[image] for r in revs if image in r.content}) > 1


def format_metric(value: Any, kind: str = "number", delta: bool = False) -> str:
    """A metric's value (or, with ``delta``, its change against the baseline) as text, by ``metric_kind``."""
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


def metric_kind(metric: str, values: Iterable[Any]) -> str:
    """How a metrics row is written: ``int`` when every value is a whole number in the JSON
    (model_params, eval_images), ``seconds`` for a wall time (``*_s``), else ``number``."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if present and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in present):
        return "int"
    if metric.endswith("_s") and not metric.endswith("_per_s"):
        return "seconds"
    return "number"


def direction(metric: str) -> int:
    """1 if higher is better, -1 if lower is, 0 if neither (not coloured)."""
    if any(word in metric for word in HIGHER_IS_BETTER):
        return 1
    if any(word in metric for word in LOWER_IS_BETTER):
        return -1
    return 0
