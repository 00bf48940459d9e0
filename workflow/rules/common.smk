# Helpers shared by the rules: validated params, the params files to pass on,
# the values each step depends on, and cluster resources.

import os
import re

from snakemake.exceptions import WorkflowError

from stylepipe.config import ParamsError, style_names, style_resources, validate

# The params files in merge order, passed to every command as --params.
PARAMS_FILES = [str(path) for path in workflow.configfiles]

try:
    validate(config, source=" + ".join(PARAMS_FILES))
except ParamsError as err:
    raise WorkflowError(f"invalid params: {err}") from None

STYLES = style_names(config)

wildcard_constraints:
    style="|".join(map(re.escape, STYLES)),


# The params keys each step reads, as dvc.yaml lists them per stage.
TRACKED = {
    "fetch_content": ["data.content"],
    "fetch_eval": ["data.eval"],
    "fetch_style": ["seed", "styles.{style}"],
    "fetch_loss_network": ["seed", "loss_network"],
    "resize": ["data.resize_workers", "train.image_size"],
    "train": ["seed", "train", "styles.{style}"],
    "stylize": ["stylize"],
    "evaluate": ["seed", "train", "styles.{style}", "evaluate"],
    "report": [],
}


def lookup_key(dotted):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def tracked(step):
    """The values a step depends on ({key: value}), as a params function.

    Snakemake records them with each output and reruns the step when one
    changes, like DVC's per-stage params.
    """

    def values(wildcards):
        style = getattr(wildcards, "style", None)
        keys = [key.format(style=style) for key in TRACKED[step]]
        return {key: lookup_key(key) for key in keys}

    return values


# Used when params.yaml names no value for a step (e.g. no `resources.report`).
DEFAULT_RESOURCES = {"gpu": 0, "mem_mb": 2000, "runtime": 60, "cpus_per_task": 1}


def resource(step, name):
    """One cluster resource of a step: `resources.<step>.<name>`, a style's own for train."""

    def value(wildcards):
        style = getattr(wildcards, "style", None)
        return style_resources(config, style, step).get(name, DEFAULT_RESOURCES[name])

    return value
