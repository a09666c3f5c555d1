# Content-aware DP (study D): settings, checks and the method `cadp` of the registry. The rules
# are in cadp.smk, which includes this file.


CADP_DATASETS = [d for d in CLASSIFIER_DATASETS if dataset_cfg(d).get("cadp")]
CADP_KINDS = ("radiograph", "mammography")  # 2D caches only


def cadp_cfg(dataset):
    return dataset_cfg(dataset)["cadp"]


def cadp_inn_source(dataset):
    return cadp_cfg(dataset)["inn_from"]


def cadp_examples_source(dataset):
    return cadp_cfg(dataset)["examples_from"] or cadp_inn_source(dataset)


def _check_cadp(dataset):
    """Refuse, when the workflow is parsed, a cadp block that cannot work (named, with the reason)."""
    cfg = dataset_cfg(dataset)
    where = f"datasets.{dataset}.cadp"
    if cfg["kind"] not in CADP_KINDS:
        raise ValueError(f"{where}: content-aware DP needs 2D images ({' or '.join(CADP_KINDS)}), {dataset} is {cfg['kind']}")
    for key, source in (("inn_from", cadp_inn_source(dataset)), ("examples_from", cadp_examples_source(dataset))):
        if source not in DATASETS:
            raise ValueError(f"{where}.{key} names {source!r}, which is not a dataset of this config")
        other = dataset_cfg(source)
        if list(other["labels"]) != list(cfg["labels"]) or other["preprocess"].get("size") != cfg["preprocess"].get("size"):
            raise ValueError(f"{where}.{key}: {source} must have the same labels and preprocess.size as {dataset} "
                             "(the INN's condition and input shape)")
    if dataset_cfg(cadp_examples_source(dataset))["role"] != "public":
        raise ValueError(f"{where}.examples_from: the example figure shows one ORIGINAL image next to its "
                         f"privatised copies, so it must come from a public cohort ({cadp_examples_source(dataset)} is not)")


for _d in CADP_DATASETS:
    _check_cadp(_d)


CLASSIFIER_FILES = {"model": "model.pt", "history": "history.csv", "predictions": "predictions.parquet",
                    "privacy": "privacy.json"}


def cadp_seeds(dataset):
    return cadp_cfg(dataset)["seeds"] or SEEDS


def cadp_dir(dataset, eps="{eps}"):
    return f"results/{dataset}/cadp/eps_{eps}"


def cadp_pretrained(dataset):
    """The CADP classifier starts where its DP-SGD counterpart does (public pretraining or not)."""
    return cadp_cfg(dataset)["compare_with"] == "dpsgd" and bool(dataset_cfg(dataset)["classifier"]["pretrain"])


def cadp_inputs(wildcards):
    d = wildcards.dataset
    inputs = {
        "manifest": f"results/{d}/manifest.parquet",
        "train": f"{cadp_dir(d, wildcards.eps)}/train.h5",
        "val": f"{cadp_dir(d, wildcards.eps)}/val.h5",
        "test": f"results/{d}/preprocessed/test.h5",  # ORIGINAL test images
        "release": f"{cadp_dir(d, wildcards.eps)}/privacy.json",  # the guarantee it inherits
    }
    if cadp_pretrained(d):
        inputs["pretrained"] = f"results/{d}/pretrained/model.pt"
    return inputs


def cadp_params(wildcards):
    """Non-private training (no `epsilon`: inf) with the dataset's non-private settings, as the
    eps = inf model of `compare_with`; what the privatisation depends on reaches it via its inputs."""
    d = wildcards.dataset
    clf = dataset_cfg(d)["classifier"]
    return {
        "seed": int(wildcards.seed),
        "labels": list(dataset_cfg(d)["labels"]),
        "model": model_cfg(d),
        "settings": copy.deepcopy(clf["nonprivate"]),
        "pretrain": copy.deepcopy(clf["pretrain"]) if cadp_pretrained(d) else None,
        "checkpoint": private_checkpoint(d, "cadp", f"eps_{wildcards.eps}", f"seed_{wildcards.seed}"),
    }


register_method("cadp", rule="train_classifier", inputs=cadp_inputs, params=cadp_params,
                applies=lambda dataset: dataset in CADP_DATASETS, seeds=cadp_seeds,
                description="content-aware DP: non-private classifier on images privatised by a public cINN "
                "(local per-image eps); eps = inf is compare_with's non-private model")


# The global {method} constraint was fixed in common.smk before cadp existed; rules defined from
# here on (training, evaluation) see the registry as it is now.
wildcard_constraints:
    method="|".join(METHODS),


def inn_settings(dataset):
    """The INN's sizes: the config's `inn` block plus what the data fix (input size, condition)."""
    cfg = dataset_cfg(dataset)
    return {**cadp_cfg(dataset)["inn"], "image_size": int(cfg["preprocess"]["size"]), "channels": 1,
            "n_conditions": 2 * len(cfg["labels"])}


def inn_params(wildcards):
    d = wildcards.dataset
    source = cadp_inn_source(d)
    return canonical({
        "inn": inn_settings(d),
        "training": copy.deepcopy(cadp_cfg(d)["training"]),
        "trained_on": {"dataset": source, "split": "train", "role": dataset_cfg(source)["role"]},
        "labels": list(dataset_cfg(d)["labels"]),
        "checkpoint": private_checkpoint(d, "cadp_inn"),
    })


def inn_inputs(wildcards):
    source = cadp_inn_source(wildcards.dataset)
    return {"manifest": f"results/{source}/manifest.parquet", "train": caches(source)["train"],
            "holdout": caches(source)["val"]}


def privatise_params(wildcards):
    return canonical({**copy.deepcopy(cadp_cfg(wildcards.dataset)["privatise"]), "epsilon": float(wildcards.eps),
                      "labels": list(dataset_cfg(wildcards.dataset)["labels"])})


def cadp_runs(dataset, method):
    seeds = cadp_seeds(dataset)
    return [{"method": method, "eps": eps, "seed": seed,
             "metrics": f"results/{dataset}/evaluation/{method}/eps_{eps}/seed_{seed}/metrics.parquet",
             "card": f"{classifier_dir(dataset, method, eps, seed)}/privacy.json"}
            for eps in epsilon_labels(dataset) for seed in seeds]


def cadp_figure_runs(dataset):
    return cadp_runs(dataset, "cadp") + cadp_runs(dataset, cadp_cfg(dataset)["compare_with"])


def cadp_targets():
    """The targets of this study in the Snakefile's "all": the two figures and the table of every cadp dataset
    (their inputs pull in the INN, the privatised caches, the classifiers and their evaluations)."""
    return [f"results/{d}/cadp/{name}" for d in CADP_DATASETS
            for name in ("examples.png", "auroc_vs_epsilon_cadp.png", "cadp_vs_dpsgd.csv")]
