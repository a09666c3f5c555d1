# Content-aware DP (study D, methods.md D): a conditional invertible network (INN) trained without
# privacy on a PUBLIC cohort maps each private image to a latent; the latent is clipped to L1 norm
# s, Laplace noise of scale 2s/eps is added and the result mapped back. A privatised copy of the
# train and val caches at every eps of the dataset's grid; classifiers trained WITHOUT DP on them
# (method `cadp`, post-processing: they inherit the local per-image guarantee) and tested on the
# ORIGINAL test images. At eps = inf nothing is privatised: the method's non-private reference is
# the classifier on the original images, i.e. the eps = inf model of the DP-SGD method named by
# `cadp.compare_with` (same initialisation and non-private settings), copied rather than retrained.
#
# Included BEFORE train.smk: `cadp` is trained by train.smk's train_classifier rule, whose
# {method} constraint is computed from the registry when train.smk is parsed.



include: "cadp_common.smk"


localrules:
    cadp_reference,
    cadp_comparison,


# The classifier of method cadp at eps = inf is the non-private reference: copied from compare_with.
ruleorder: cadp_reference > train_classifier


rule train_inn:
    input:
        unpack(inn_inputs),
    output:
        inn="results/{dataset}/cadp/inn/inn.pt",
        history="results/{dataset}/cadp/inn/history.csv",
    params:
        inn=inn_params,
        device=config["training"]["device"],
    threads: config["training"]["threads"]
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=config["training"]["gpu"],
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/cadp/train_inn.log",
    benchmark:
        "logs/{dataset}/cadp/train_inn.benchmark.tsv"
    script:
        "../scripts/train_inn.py"


rule privatise_cadp:
    wildcard_constraints:
        eps=r"\d+(\.\d+)?",
    input:
        inn="results/{dataset}/cadp/inn/inn.pt",
        manifest="results/{dataset}/manifest.parquet",
        train="results/{dataset}/preprocessed/train.h5",
        val="results/{dataset}/preprocessed/val.h5",
    output:
        train=f"{cadp_dir('{dataset}')}/train.h5",
        val=f"{cadp_dir('{dataset}')}/val.h5",
        privacy=f"{cadp_dir('{dataset}')}/privacy.json",
    params:
        cadp=privatise_params,
        device=config["training"]["device"],
    threads: config["training"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["training"]["gpu"],
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/cadp/privatise_eps_{eps}.log",
    benchmark:
        "logs/{dataset}/cadp/privatise_eps_{eps}.benchmark.tsv"
    script:
        "../scripts/privatise_cadp.py"


rule cadp_reference:
    input:
        unpack(lambda w: {name: f"{classifier_dir(w.dataset, cadp_cfg(w.dataset)['compare_with'], 'inf', w.seed)}/{file}"
                          for name, file in CLASSIFIER_FILES.items()}),
    output:
        **{name: f"{classifier_dir('{dataset}', 'cadp', 'inf')}/{file}" for name, file in CLASSIFIER_FILES.items()},
    params:
        reference=lambda w: cadp_cfg(w.dataset)["compare_with"],
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/classifiers/cadp_eps_inf_seed_{seed}.log",
    script:
        "../scripts/cadp_reference.py"


rule cadp_examples:
    input:
        inn="results/{dataset}/cadp/inn/inn.pt",
        manifest=lambda w: f"results/{cadp_examples_source(w.dataset)}/manifest.parquet",
        cache=lambda w: caches(cadp_examples_source(w.dataset))["val"],
    output:
        report(
            "results/{dataset}/cadp/examples.png",
            caption="../report/cadp_examples.rst",
            category="{dataset}",
            subcategory="Content-aware DP",
        ),
    params:
        cadp=lambda w: canonical({**copy.deepcopy(cadp_cfg(w.dataset)["privatise"]),
                                  "epsilons": [float(e) for e in epsilon_labels(w.dataset) if e != "inf"],
                                  "labels": list(dataset_cfg(w.dataset)["labels"]),
                                  "source": cadp_examples_source(w.dataset)}),
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/cadp/examples.log",
    script:
        "../scripts/cadp_examples.py"


rule cadp_comparison:
    input:
        metrics=lambda w: [r["metrics"] for r in cadp_figure_runs(w.dataset)],
        cards=lambda w: [r["card"] for r in cadp_figure_runs(w.dataset)],
    output:
        figure=report(
            "results/{dataset}/cadp/auroc_vs_epsilon_cadp.png",
            caption="../report/cadp_auroc_vs_epsilon.rst",
            category="{dataset}",
            subcategory="Content-aware DP",
        ),
        table="results/{dataset}/cadp/cadp_vs_dpsgd.csv",
    params:
        runs=lambda w: cadp_figure_runs(w.dataset),
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/cadp/comparison.log",
    script:
        "../scripts/cadp_comparison.py"
