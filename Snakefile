# stylepipe: fast neural style transfer, from download to report.
#
#   snakemake --cores all                                    # params.yaml
#   snakemake --cores all --configfile config/demo.yaml config/offline.yaml
#   snakemake --profile slurm                                # on a cluster
#
# Every rule runs one `stylepipe` command on the paths that dvc.yaml uses too
# (tests/test_parity.py keeps the two in step). Values live in params.yaml only;
# rules pass the params files on (`--params`) and list the values they depend on
# under `params: tracked`, so Snakemake reruns a step when one of them changes
# (and not when the same values come from a file with another name).

from snakemake.utils import min_version

min_version("9.0")

# --configfile replaces params.yaml (each overlay set is complete on its own,
# e.g. config/demo.yaml); the files are merged in order.
if not workflow.configfiles:

    configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/style.smk"


# Downloads stay on the submitting node: compute nodes are often offline.
localrules:
    all,
    fetch_content,
    fetch_eval,
    fetch_style,
    fetch_loss_network,
    report,


rule all:
    input:
        "results/metrics.json",
        "results/gallery.png",
        expand("results/models/{style}.onnx", style=STYLES),
