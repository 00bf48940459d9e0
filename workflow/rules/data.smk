# Data: the content set, the evaluation images, style images and the loss
# network are fetched as params.yaml names them; the content set is then
# resized into shards.


rule fetch_content:
    input:
        code=CODE["fetch_content"],
    output:
        "data/raw/content.zip",
    log:
        "logs/fetch_content.log",
    params:
        tracked=tracked("fetch_content"),
    shell:
        "stylepipe fetch content --params {PARAMS_FILES:q} --output {output} > {log} 2>&1"


rule fetch_eval:
    input:
        code=CODE["fetch_eval"],
    output:
        directory("data/eval"),
    log:
        "logs/fetch_eval.log",
    params:
        tracked=tracked("fetch_eval"),
    shell:
        "stylepipe fetch eval --params {PARAMS_FILES:q} --output {output} > {log} 2>&1"


rule fetch_style:
    input:
        code=CODE["fetch_style"],
    output:
        "data/styles/{style}.png",
    log:
        "logs/fetch_style/{style}.log",
    params:
        tracked=tracked("fetch_style"),
    shell:
        "stylepipe fetch style --params {PARAMS_FILES:q} --style {wildcards.style} --output {output} > {log} 2>&1"


rule fetch_loss_network:
    input:
        code=CODE["fetch_loss_network"],
    output:
        "data/models/vgg16_features.pth",
    log:
        "logs/fetch_loss_network.log",
    params:
        tracked=tracked("fetch_loss_network"),
    shell:
        "stylepipe fetch loss-network --params {PARAMS_FILES:q} --output {output} > {log} 2>&1"


rule resize:
    input:
        content="data/raw/content.zip",
        code=CODE["resize"],
    output:
        directory("data/resized"),
    log:
        "logs/resize.log",
    params:
        tracked=tracked("resize"),
    # decoding processes: resources.resize.cpus_per_task, at most the CPUs the job may use (the output
    # is the same for any count, so it is no tracked value)
    threads: resource("resize", "cpus_per_task")
    resources:
        mem_mb=resource("resize", "mem_mb"),
        runtime=resource("resize", "runtime"),
        cpus_per_task=resource("resize", "cpus_per_task"),
    shell:
        "stylepipe resize --params {PARAMS_FILES:q} --input {input.content} --output {output} > {log} 2>&1"
