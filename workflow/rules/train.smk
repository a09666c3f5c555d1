# Classifiers: non-private reference (eps = inf) and DP-SGD at every finite eps, optionally
# starting from a network pretrained without privacy on a public cohort (methods dpsgd and
# dpsgd_scratch of the registry in common.smk).


rule pretrain_classifier:
    input:
        unpack(pretrain_inputs),
    output:
        model="results/{dataset}/pretrained/model.pt",
        history="results/{dataset}/pretrained/history.csv",
        privacy="results/{dataset}/pretrained/privacy.json",
    params:
        training=pretrain_params,
        device=config["training"]["device"],
    threads: config["training"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["training"]["gpu"],
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/pretrain.log",
    benchmark:
        "logs/{dataset}/pretrain.benchmark.tsv"
    script:
        "../scripts/train_classifier.py"


rule train_classifier:
    wildcard_constraints:
        method=methods_of_rule("train_classifier"),
    input:
        unpack(method_inputs),
    output:
        model=f"{classifier_dir('{dataset}')}/model.pt",
        history=f"{classifier_dir('{dataset}')}/history.csv",
        predictions=f"{classifier_dir('{dataset}')}/predictions.parquet",
        privacy=f"{classifier_dir('{dataset}')}/privacy.json",
    params:
        training=method_params,
        device=config["training"]["device"],
    threads: config["training"]["threads"]
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=config["training"]["gpu"],
    conda:
        "../envs/dpmed.yaml"
    log:
        f"logs/{{dataset}}/classifiers/{{method}}_eps_{{eps}}_seed_{{seed}}.log",
    benchmark:
        f"logs/{{dataset}}/classifiers/{{method}}_eps_{{eps}}_seed_{{seed}}.benchmark.tsv"
    script:
        "../scripts/train_classifier.py"


rule extract_embeddings:
    input:
        unpack(encoder_inputs),
    output:
        "results/{dataset}/embeddings/{encoder}.h5",
    params:
        encoder=encoder_params,
        device=config["training"]["device"],
    threads: config["training"]["threads"]
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=config["training"]["gpu"],
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/embeddings_{encoder}.log",
    benchmark:
        "logs/{dataset}/embeddings_{encoder}.benchmark.tsv"
    script:
        "../scripts/extract_embeddings.py"
