# Shared set-up: config validation (defaults filled, unknown keys refused) and helpers.
import copy

from dpmed.config import load_schema, validate_config

validate_config(config, load_schema(workflow.source_path("../schemas/config.schema.yaml")))

DATASETS = list(config["datasets"])
SPLITS = ["train", "val", "test"]
PRIVATE = config["private_dir"]
DEMO_COHORTS = ["cxr", "cxr_public", "ct", "mammography"]


wildcard_constraints:
    dataset="|".join(DATASETS),
    split="train|val|test",


def dataset_cfg(dataset):
    return config["datasets"][dataset]


INGEST_KEYS = (
    "kind", "adapter", "table", "description_csvs", "root", "labels", "grades", "split",
    "age_groups", "demographics_required",
)


def ingest_slice(dataset):
    """Exactly what ingestion reads (not preprocessing or classifier settings)."""
    cfg = dataset_cfg(dataset)
    return {key: copy.deepcopy(cfg[key]) for key in INGEST_KEYS if key in cfg}


def ingest_tables(wildcards):
    cfg = dataset_cfg(wildcards.dataset)
    if cfg["adapter"] == "cbis_ddsm":
        return [p for paths in cfg["description_csvs"].values() for p in paths]
    return [cfg["table"]]


def demo_params(cohort):
    """Each demo cohort gets its own seed offset: the public CXR cohort shares nothing with the private one."""
    return {
        "cohort": cohort,
        "seed": config["demo"]["seed"] + DEMO_COHORTS.index(cohort),
        **config["demo"][cohort],
    }


# ---------------------------------------------------------------- classifiers and evaluation

import math

import numpy as np


def eps_label(eps):
    """One canonical wildcard string per budget: 0.29, 1.06, 8, inf."""
    eps = float(eps)
    return "inf" if math.isinf(eps) else np.format_float_positional(eps, trim="-")


CLASSIFIER_DATASETS = [d for d in DATASETS if dataset_cfg(d).get("classifier")]
SEEDS = config["training"]["seeds"]
METHODS = ["dpsgd"]


wildcard_constraints:
    eps=r"inf|\d+(\.\d+)?",
    seed=r"\d+",
    method="|".join(METHODS),


def epsilon_labels(dataset):
    finite = sorted(float(e) for e in dataset_cfg(dataset)["classifier"]["epsilons"])
    return [eps_label(e) for e in finite] + ["inf"]


def classifier_dir(dataset, method="{method}", eps="{eps}", seed="{seed}"):
    return f"results/{dataset}/classifiers/{method}/eps_{eps}/seed_{seed}"


def model_cfg(dataset):
    cfg = dataset_cfg(dataset)
    return {
        "dims": 3 if cfg["kind"] == "ct" else 2,
        "in_channels": 1,
        "num_labels": len(cfg["labels"]),
        **cfg["classifier"]["model"],
    }


def caches(dataset):
    return {split: f"results/{dataset}/preprocessed/{split}.h5" for split in SPLITS}


def classifier_inputs(wildcards):
    clf = dataset_cfg(wildcards.dataset)["classifier"]
    inputs = {"manifest": f"results/{wildcards.dataset}/manifest.parquet", **caches(wildcards.dataset)}
    if clf["pretrain"]:
        inputs["pretrained"] = f"results/{wildcards.dataset}/pretrained/model.pt"
    weights_from = clf["dp"]["class_weights_from"]
    if wildcards.eps != "inf" and weights_from:
        inputs["weights_manifest"] = f"results/{weights_from}/manifest.parquet"
    return inputs


def classifier_params(wildcards):
    """Exactly what a training job depends on: the DP block for finite eps, else the non-private one."""
    cfg = dataset_cfg(wildcards.dataset)
    clf = cfg["classifier"]
    private = wildcards.eps != "inf"
    return {
        "epsilon": float(wildcards.eps),
        "seed": int(wildcards.seed),
        "labels": list(cfg["labels"]),
        "model": model_cfg(wildcards.dataset),
        "settings": copy.deepcopy(clf["dp"] if private else clf["nonprivate"]),
        "pretrain": copy.deepcopy(clf["pretrain"]),
    }


def pretrain_params(wildcards):
    cfg = dataset_cfg(wildcards.dataset)
    pretrain = cfg["classifier"]["pretrain"]
    return {
        "source": pretrain["dataset"],
        "labels": list(dataset_cfg(pretrain["dataset"])["labels"]),
        "model": {**model_cfg(wildcards.dataset), "dims": 2},
        "settings": {k: v for k, v in pretrain.items() if k != "dataset"},
        "seed": 0,
    }


def pretrain_inputs(wildcards):
    source = dataset_cfg(wildcards.dataset)["classifier"]["pretrain"]["dataset"]
    return {"manifest": f"results/{source}/manifest.parquet", **caches(source)}


def all_predictions(dataset):
    return [
        f"{classifier_dir(dataset, 'dpsgd', eps, seed)}/predictions.parquet"
        for eps in epsilon_labels(dataset)
        for seed in SEEDS
    ]


def all_metrics(dataset):
    return [
        f"results/{dataset}/evaluation/dpsgd/eps_{eps}/seed_{seed}/metrics.parquet"
        for eps in epsilon_labels(dataset)
        for seed in SEEDS
    ]


def evaluation_params(wildcards):
    ev = config["evaluation"]
    return {**copy.deepcopy(ev), "labels": list(dataset_cfg(wildcards.dataset)["labels"])}


def encoder_inputs(wildcards):
    spec = config["embeddings"]["encoders"][wildcards.encoder]
    inputs = caches(wildcards.dataset)
    if "pretrained" in spec:
        inputs["encoder"] = f"results/{spec['pretrained']}/pretrained/model.pt"
    else:
        inputs["encoder"] = spec["weights"]
    return inputs


SUMMARY_FILES = [
    "table1.csv",
    "table1.md",
    "correlations.csv",
    "comparisons.csv",
    "auroc_vs_epsilon.png",
    "auroc_vs_epsilon_by_age.png",
    "auroc_vs_epsilon_by_sex.png",
    "label_auroc_vs_epsilon.png",
    "auroc_vs_positives.png",
    "parity_vs_epsilon.png",
]
