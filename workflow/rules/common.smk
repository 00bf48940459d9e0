# Helpers shared by the rules: validated params, the params files to pass on,
# the values each step depends on, and cluster resources.

import os
import re
from pathlib import Path

import yaml

from snakemake.exceptions import WorkflowError

from stylepipe.config import ParamsError, canonical, load_params, style_names, style_resources, train_params


def _relative(path):
    # Snakemake makes --configfile paths absolute; keep commands (and the params
    # Snakemake records for reruns) independent of where the checkout lives
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


# The params files in merge order, passed to every command as --params. Rules
# name this global in `shell:` ({PARAMS_FILES:q}), not under `params:`: Snakemake
# reruns a job when its params or its unformatted shell command change, and the
# values, not the files' paths, decide the outputs (`tracked=` lists them), so
# the same values under another path (`--configfile my.yaml`) rerun nothing.
PARAMS_FILES = [_relative(path) for path in workflow.configfiles]

if workflow.config_settings.config:
    # the commands read the params files, not Snakemake's config: a --config value would reach no command
    raise WorkflowError("--config is not supported: put the values in a params file and pass it with "
                        "--configfile, so that every command reads them too")

try:
    # merged as every command merges them (an overlay naming an image source replaces the base's), then validated
    _merged = load_params(PARAMS_FILES)
except ParamsError as err:
    raise WorkflowError(f"invalid params: {err}") from None
config.clear()
config.update(_merged)

STYLES = style_names(config)

wildcard_constraints:
    style="|".join(map(re.escape, STYLES)),


# The params keys each step reads, as dvc.yaml lists them per stage.
TRACKED = {
    "fetch_content": ["data.content"],
    "fetch_eval": ["data.eval"],
    "fetch_style": ["seed", "styles.{style}"],
    "fetch_loss_network": ["seed", "loss_network"],
    "resize": ["train.image_size"],
    # the thread count: on a CPU the weights depend on it (docs/training.md, "Same results on the CPU")
    "train": ["seed", "train", "styles.{style}", "resources.train.cpus_per_task"],
    "stylize": ["stylize"],
    "evaluate": ["seed", "train", "styles.{style}", "stylize.precision", "evaluate"],
    # the style list: adding or removing a style reruns the report
    "report": ["styles"],
}


def _source_files(stage):
    """The stylepipe source files a step's output depends on: the `src/` deps of its dvc.yaml stage.

    One list for both runners, so that editing a step's code reruns that step under
    Snakemake as under DVC (Snakemake by the files' modification times). A folder
    counts as its Python files: a folder's own time changes only when files come or go.
    """
    stage = _DVC_STAGES[stage]
    files = []
    for dep in stage.get("do", stage)["deps"]:
        if dep.startswith("src/"):
            path = Path(dep)
            files += sorted(str(f) for f in path.rglob("*.py")) if path.is_dir() else [dep]
    return files


_DVC_STAGES = yaml.safe_load(Path(workflow.basedir, "dvc.yaml").read_text())["stages"]
CODE = {step: _source_files(step) for step in TRACKED}


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
        # Snakemake compares what it recorded by its text: in a canonical form, the same values
        # written in another key order, or 0 as 0.0, are no change (as to DVC)
        return {key: canonical(lookup_key(key)) for key in keys}

    return values


# Used when params.yaml names no value for a step (e.g. no `resources.report`).
# gpu_model None: no resource at all (any GPU type)
DEFAULT_RESOURCES = {"gpu": 0, "gpu_model": None, "mem_mb": 2000, "runtime": 60, "cpus_per_task": 1}


def resource(step, name):
    """One cluster resource of a step: `resources.<step>.<name>`, a style's own for train."""

    def value(wildcards):
        style = getattr(wildcards, "style", None)
        return style_resources(config, style, step).get(name, DEFAULT_RESOURCES[name])

    return value



def gpu_model(step):
    """The step's `gpu_model`, for steps that ask for GPUs at all (the executor pairs it with `gpu`)."""

    def value(wildcards):
        return resource(step, "gpu_model")(wildcards) if resource(step, "gpu")(wildcards) else None

    return value


def on_slurm():
    """Whether jobs run through the Slurm executor: on the submitting host, or in the job itself.

    Inside the allocation the job's own Snakemake runs the shell command, in
    remote mode with the local executor; the allocation's SLURM_JOB_ID tells
    it apart (without it, the `srun` launcher would vanish from the command
    that actually runs, and a multi-node run would wait for ranks that never start).
    """
    plugin = workflow.executor_plugin
    if plugin is not None and plugin.cli_prefix.startswith("slurm"):
        return True
    return workflow.remote_exec and "SLURM_JOB_ID" in os.environ


def train_layout(name):
    """A style's training on Slurm: one task per device and node (docs/slurm.md).

    Lightning under Slurm wants ntasks-per-node == devices, each process
    started by `srun`; `train.devices` and `train.num_nodes` (overridable per
    style) decide. On Slurm the training runs as its own job step (`launcher`),
    one process included: only then do signals sent to the job's steps
    (`scancel --signal=USR1`, `sbatch --signal=USR1@300`) reach it, and it is
    alone in its step. `mpi` tells the executor plugin that the command starts
    its own step: present (empty for one process), the job's Snakemake runs it
    without wrapping it in `srun -n1`; non-empty, the plugin asks for the tasks
    of several processes. Outside Slurm (where Lightning starts its processes
    itself) both are empty.
    """

    def value(wildcards):
        tp = train_params(config, wildcards.style)
        per_node = tp["devices"] if isinstance(tp["devices"], int) else 1
        nodes = tp["num_nodes"]
        multi = per_node * nodes > 1
        gpu = resource("train", "gpu")(wildcards)
        model = gpu_model("train")(wildcards)
        layout = {"gpu": gpu, "gpu_model": model, "gres": None, "nodes": None, "tasks_per_node": None,
                  "tasks": None, "tasks_per_gpu": None, "mpi": "", "launcher": ""}
        if multi:
            layout["nodes"] = nodes
            if per_node > 1:
                layout["tasks_per_node"] = per_node
            else:
                layout["tasks"] = nodes
            if gpu:
                # every process of a node sees all of the node's GPUs (Lightning picks by local rank)
                # (--gres, not --gpus: the plugin would add a --gpus=<model>:1 of its own for gpu_model)
                layout["gpu"], layout["gpu_model"] = None, None
                layout["gres"] = f"gpu:{model}:{per_node}" if model else f"gpu:{per_node}"
                layout["tasks_per_gpu"] = 1 if per_node == 1 else None
        if on_slurm():
            cpus = resource("train", "cpus_per_task")(wildcards)
            # a job step sees all of the job's GPUs on its node: no GPU option needed here
            layout["launcher"] = f"srun --nodes={nodes} --ntasks-per-node={per_node} --cpus-per-task={cpus}"
            if multi:
                layout["mpi"] = layout["launcher"]
        return layout[name]

    return value
