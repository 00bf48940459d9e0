"""Loss weights: which losses compare across revisions, and unweighted losses for old metrics.

The weighted losses scale with the params' weights, so where a style's weights differ
between the revisions they are not coloured better or worse, and the page says so
(``loss_notes``); where the loss itself differs (layers, style size, loss network)
no loss compares.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

from stylepipe.compare.revisions import Revision
from stylepipe.compare.tables import all_styles, param_text

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
    """A weight as a number, or None."""
    try:
        return float(value)  # YAML reads 5e10 (no dot) as a string
    except (TypeError, ValueError):
        return None


def loss_weights(rev: Revision, style: str) -> dict[str, float | None]:
    """``{content_weight: ..., style_weight: ..., tv_weight: ...}`` of ``style`` in ``rev``'s params."""
    return {w: _number(style_train_value(rev.params, style, w)) for w in LOSS_WEIGHTS.values()}


def derive_unweighted(rev: Revision) -> None:
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
    for style in all_styles(revs):
        having = [r for r in revs if isinstance(r.metrics.get(style), dict)]
        if len(having) < 2:
            continue
        changed = []
        for key in (*LOSS_WEIGHTS.values(), *LOSS_DEFINITION, "loss_network"):
            values = [r.params.get(key) if key == "loss_network" else style_train_value(r.params, style, key)
                      for r in having]
            # 1e10 and "1e10" are the same weight
            if len({json.dumps(_number(v) if _number(v) is not None else v, sort_keys=True) for v in values}) > 1:
                changed.append((key, " → ".join("—" if v is None else param_text(v) for v in values)))
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
