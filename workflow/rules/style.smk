# Per style: train a TransformerNet, stylize the evaluation images with it,
# measure it; then one report over all styles.


rule train:
    input:
        data="data/resized",
        style_image="data/styles/{style}.png",
        loss_network="data/models/vgg16_features.pth",
        code=CODE["train"],
    output:
        model="results/models/{style}.pth",
        onnx="results/models/{style}.onnx",
        checkpoint="results/checkpoints/{style}.ckpt",
        summary="results/train/{style}/summary.json",
        curves="results/train/{style}/curves.csv",
        val_curves="results/train/{style}/val_curves.csv",
    log:
        "logs/train/{style}.log",
    params:
        tracked=tracked("train"),
        # resume checkpoints and TensorBoard runs: not an output, so a rerun keeps them
        scratch="scratch/train/{style}",
    # torch and the decoders use this many threads (Snakemake sets OMP_NUM_THREADS)
    threads: resource("train", "cpus_per_task")
    resources:
        gpu=train_layout("gpu"),
        gpu_model=train_layout("gpu_model"),
        mem_mb=resource("train", "mem_mb"),
        runtime=resource("train", "runtime"),
        cpus_per_task=resource("train", "cpus_per_task"),
        # several processes (train.devices x train.num_nodes): Slurm tasks started by srun;
        # on Slurm even one process is started by srun, as its own job step (common.smk, train_layout)
        gres=train_layout("gres"),
        nodes=train_layout("nodes"),
        tasks_per_node=train_layout("tasks_per_node"),
        tasks=train_layout("tasks"),
        tasks_per_gpu=train_layout("tasks_per_gpu"),
        mpi=train_layout("mpi"),
        launcher=train_layout("launcher"),
    shell:
        "{resources.launcher} stylepipe train --params {PARAMS_FILES:q} --style {wildcards.style} --data {input.data}"
        " --style-image {input.style_image} --loss-network {input.loss_network}"
        " --model {output.model} --onnx {output.onnx} --checkpoint {output.checkpoint}"
        " --summary {output.summary} --curves {output.curves} --val-curves {output.val_curves}"
        " --scratch {params.scratch}"
        " > {log} 2>&1"


rule stylize:
    input:
        model="results/models/{style}.pth",
        images="data/eval",
        code=CODE["stylize"],
    output:
        report(
            directory("results/stylized/{style}"),
            patterns=["{name}.png"],
            caption="../../report/stylized.rst",
            category="Stylized images",
            subcategory="{style}",
        ),
    log:
        "logs/stylize/{style}.log",
    params:
        tracked=tracked("stylize"),
        max_size=config["stylize"]["max_size"],
        batch_size=config["stylize"]["batch_size"],
        precision=config["stylize"]["precision"],
    # torch and the decoders use this many threads (Snakemake sets OMP_NUM_THREADS)
    threads: resource("stylize", "cpus_per_task")
    resources:
        gpu=resource("stylize", "gpu"),
        gpu_model=gpu_model("stylize"),
        mem_mb=resource("stylize", "mem_mb"),
        runtime=resource("stylize", "runtime"),
        cpus_per_task=resource("stylize", "cpus_per_task"),
    shell:
        "stylepipe stylize --model {input.model} --output {output}"
        " --max-size {params.max_size} --batch-size {params.batch_size} --precision {params.precision}"
        " {input.images}"
        " > {log} 2>&1"


rule evaluate:
    input:
        model="results/models/{style}.pth",
        eval_images="data/eval",
        stylized="results/stylized/{style}",
        style_image="data/styles/{style}.png",
        loss_network="data/models/vgg16_features.pth",
        summary="results/train/{style}/summary.json",
        code=CODE["evaluate"],
    output:
        metrics=report(
            "results/metrics/{style}.json",
            caption="../../report/metrics.rst",
            category="Metrics",
            subcategory="{style}",
        ),
        # throughput varies from run to run: kept apart from the metrics
        speed="results/speed/{style}.json",
    log:
        "logs/evaluate/{style}.log",
    params:
        tracked=tracked("evaluate"),
    # torch and the decoders use this many threads (Snakemake sets OMP_NUM_THREADS)
    threads: resource("evaluate", "cpus_per_task")
    resources:
        gpu=resource("evaluate", "gpu"),
        gpu_model=gpu_model("evaluate"),
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
        cpus_per_task=resource("evaluate", "cpus_per_task"),
    shell:
        "stylepipe evaluate --params {PARAMS_FILES:q} --style {wildcards.style} --model {input.model}"
        " --eval-images {input.eval_images} --stylized {input.stylized}"
        " --style-image {input.style_image} --loss-network {input.loss_network}"
        " --train-summary {input.summary} --output {output.metrics} --speed {output.speed} > {log} 2>&1"


rule report:
    input:
        # each style's files by name: the report covers the styles of the params
        # (`--params`), whatever else the folders hold
        metrics=expand("results/metrics/{style}.json", style=sorted(STYLES)),
        eval_images="data/eval",
        stylized=expand("results/stylized/{style}", style=sorted(STYLES)),
        style_images=expand("data/styles/{style}.png", style=sorted(STYLES)),
        curves=expand("results/train/{style}/curves.csv", style=sorted(STYLES)),
        val_curves=expand("results/train/{style}/val_curves.csv", style=sorted(STYLES)),
        code=CODE["report"],
    output:
        metrics=report("results/metrics.json", caption="../../report/metrics.rst", category="Metrics"),
        gallery=report("results/gallery.png", caption="../../report/gallery.rst", category="Gallery"),
        curves=report("results/curves.svg", caption="../../report/curves.rst", category="Training curves"),
    log:
        "logs/report.log",
    params:
        tracked=tracked("report"),
        metrics_dir=lambda wildcards, input: os.path.dirname(input.metrics[0]),
        stylized_root=lambda wildcards, input: os.path.dirname(input.stylized[0]),
        style_images_dir=lambda wildcards, input: os.path.dirname(input.style_images[0]),
        train_dir=lambda wildcards, input: os.path.dirname(os.path.dirname(input.curves[0])),
    shell:
        "stylepipe report --params {PARAMS_FILES:q} --metrics-dir {params.metrics_dir}"
        " --eval-images {input.eval_images} --stylized-root {params.stylized_root}"
        " --style-images-dir {params.style_images_dir}"
        " --output {output.metrics} --gallery {output.gallery}"
        " --train-dir {params.train_dir} --curves {output.curves}"
        " > {log} 2>&1"
