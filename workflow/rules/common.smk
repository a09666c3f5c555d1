# Shared set-up: config validation (defaults filled, unknown keys refused) and helpers.
import copy
import os

from dpmed.config import load_schema, validate_config

validate_config(config, load_schema(workflow.source_path("../schemas/config.schema.yaml")))

DATASETS = list(config["datasets"])
SPLITS = ["train", "val", "test"]
PRIVATE = config["private_dir"]
DEMO_COHORTS = ["cxr", "cxr_public", "ct", "mammography", "external_mammography"]


wildcard_constraints:
    dataset="|".join(DATASETS),
    split="train|val|test",


def dataset_cfg(dataset):
    return config["datasets"][dataset]


def canonical(value):
    """``value`` with every mapping's keys sorted, recursively. Snakemake compares params by
    their text, so without this reordering keys in a YAML config (same values) reruns jobs."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


INGEST_KEYS = (
    "kind", "adapter", "table", "description_csvs", "root", "labels", "grades", "split",
    "age_groups", "demographics_required",
)


def ingest_slice(dataset):
    """Exactly what ingestion reads (not preprocessing or classifier settings)."""
    cfg = dataset_cfg(dataset)
    return canonical({key: copy.deepcopy(cfg[key]) for key in INGEST_KEYS if key in cfg})


def ingest_tables(wildcards):
    cfg = dataset_cfg(wildcards.dataset)
    if cfg["adapter"] == "cbis_ddsm":
        return [p for paths in cfg["description_csvs"].values() for p in paths]
    return [cfg["table"]]


def demo_params(cohort):
    """Each demo cohort gets its own seed offset: the public CXR cohort shares nothing with the private one."""
    return canonical({
        "cohort": cohort,
        "seed": config["demo"]["seed"] + DEMO_COHORTS.index(cohort),
        **config["demo"][cohort],
    })


# ---------------------------------------------------------------- classifiers and evaluation

import math

import numpy as np


def eps_label(eps):
    """One canonical wildcard string per budget: 0.29, 1.06, 8, inf."""
    eps = float(eps)
    return "inf" if math.isinf(eps) else np.format_float_positional(eps, trim="-")


CLASSIFIER_DATASETS = [d for d in DATASETS if dataset_cfg(d).get("classifier")]
SEEDS = config["training"]["seeds"]


def epsilon_labels(dataset):
    finite = sorted(float(e) for e in dataset_cfg(dataset)["classifier"]["epsilons"])
    return [eps_label(e) for e in finite] + ["inf"]


def classifier_dir(dataset, method="{method}", eps="{eps}", seed="{seed}"):
    return f"results/{dataset}/classifiers/{method}/eps_{eps}/seed_{seed}"


def private_checkpoint(*parts):
    """A training checkpoint's path under the private directory: it holds the run's secret
    noise seed, so it must never be under results/ or logs/."""
    return os.path.join(PRIVATE, "checkpoints", *parts) + ".pt"


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


# ---------------------------------------------------------------- the method registry
# A method is one way of producing the classifier of (dataset, eps, seed): the rule that trains
# it, its inputs and its params. The `{method}` wildcard ranges over the registered methods;
# `training.methods` in the config chooses which of them the pipeline runs. Methods of other
# rules (cadp, syn, ...) register themselves the same way in their own rule files.
METHODS = {}


def register_method(name, *, rule, inputs, params, description, applies=None, seeds=None, epsilons=None):
    """``inputs(wildcards)`` and ``params(wildcards)`` of the training job; ``rule`` trains it.
    ``applies(dataset)``: whether the method exists for that dataset (default: every classifier
    dataset); ``seeds(dataset)``: its seeds there (default: ``training.seeds``);
    ``epsilons(dataset)``: the eps labels it runs at (default: every label of the dataset's grid)."""
    METHODS[name] = {"rule": rule, "inputs": inputs, "params": params, "description": description,
                     "applies": applies or (lambda dataset: True), "seeds": seeds or (lambda dataset: SEEDS),
                     "epsilons": epsilons}


def methods_of_rule(rule):
    """The wildcard constraint of a training rule: the methods it trains."""
    return "|".join(name for name, m in METHODS.items() if m["rule"] == rule)


def method_inputs(wildcards):
    return METHODS[wildcards.method]["inputs"](wildcards)


def method_params(wildcards):
    return canonical(METHODS[wildcards.method]["params"](wildcards))


def run_methods(dataset=None):
    """The methods a dataset runs: its own ``classifier.methods`` if set, else ``training.methods``;
    only those that apply to it (e.g. cadp needs a ``datasets.<name>.cadp`` block)."""
    own = dataset_cfg(dataset)["classifier"].get("methods") if dataset is not None else None
    methods = own or config["training"]["methods"]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods {unknown} are not registered; registered: {sorted(METHODS)}")
    return [m for m in methods if dataset is None or METHODS[m]["applies"](dataset)]


def method_epsilons(method, dataset):
    eps = METHODS[method]["epsilons"]
    return epsilon_labels(dataset) if eps is None else eps(dataset)


def dataset_subgroups(dataset):
    """The dataset's own ``subgroups`` (manifest columns) if set, else ``evaluation.subgroups``."""
    return dataset_cfg(dataset).get("subgroups") or config["evaluation"]["subgroups"]


def dpsgd_inputs(pretrained):
    def inputs(wildcards):
        clf = dataset_cfg(wildcards.dataset)["classifier"]
        inputs = {"manifest": f"results/{wildcards.dataset}/manifest.parquet", **caches(wildcards.dataset)}
        if pretrained and clf["pretrain"]:
            inputs["pretrained"] = f"results/{wildcards.dataset}/pretrained/model.pt"
        weights_from = clf["dp"]["class_weights_from"]
        if wildcards.eps != "inf" and weights_from:
            inputs["weights_manifest"] = f"results/{weights_from}/manifest.parquet"
        return inputs

    return inputs


def dpsgd_params(pretrained):
    def params(wildcards):
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
            "pretrain": copy.deepcopy(clf["pretrain"]) if pretrained else None,
            "checkpoint": private_checkpoint(wildcards.dataset, wildcards.method, f"eps_{wildcards.eps}",
                                             f"seed_{wildcards.seed}"),
        }

    return params


register_method("dpsgd", rule="train_classifier", inputs=dpsgd_inputs(True), params=dpsgd_params(True),
                description="DP-SGD (non-private at eps = inf), from the public pretraining when configured")
register_method("dpsgd_scratch", rule="train_classifier", inputs=dpsgd_inputs(False), params=dpsgd_params(False),
                description="DP-SGD (non-private at eps = inf) from random initialisation")


wildcard_constraints:
    eps=r"inf|\d+(\.\d+)?",
    seed=r"\d+",
    method="|".join(METHODS),


def pretrain_params(wildcards):
    cfg = dataset_cfg(wildcards.dataset)
    pretrain = cfg["classifier"]["pretrain"]
    return canonical({
        "source": pretrain["dataset"],
        "labels": list(dataset_cfg(pretrain["dataset"])["labels"]),
        "model": {**model_cfg(wildcards.dataset), "dims": 2},
        "settings": {k: v for k, v in pretrain.items() if k != "dataset"},
        "seed": 0,
        "checkpoint": private_checkpoint(wildcards.dataset, "pretrain"),
    })


def pretrain_inputs(wildcards):
    source = dataset_cfg(wildcards.dataset)["classifier"]["pretrain"]["dataset"]
    return {"manifest": f"results/{source}/manifest.parquet", **caches(source)}


def summary_runs(dataset):
    """Every model the dataset's summary covers, keyed by (method, epsilon, seed) with its files."""
    return [
        {
            "method": method, "eps": eps, "seed": seed,
            "metrics": f"results/{dataset}/evaluation/{method}/eps_{eps}/seed_{seed}/metrics.parquet",
            "predictions": f"{classifier_dir(dataset, method, eps, seed)}/predictions.parquet",
        }
        for method in run_methods(dataset)
        for eps in method_epsilons(method, dataset)
        for seed in METHODS[method]["seeds"](dataset)
    ]


def evaluation_params(wildcards):
    ev = config["evaluation"]
    return canonical({**copy.deepcopy(ev), "labels": list(dataset_cfg(wildcards.dataset)["labels"]),
                      "subgroups": list(dataset_subgroups(wildcards.dataset))})


def encoder_params(wildcards):
    return canonical(config["embeddings"]["encoders"][wildcards.encoder])


def encoder_inputs(wildcards):
    spec = config["embeddings"]["encoders"][wildcards.encoder]
    inputs = caches(wildcards.dataset)
    if "pretrained" in spec:
        inputs["encoder"] = f"results/{spec['pretrained']}/pretrained/model.pt"
    else:
        inputs["encoder"] = spec["file"] if "file" in spec else spec["weights"]
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


# ---------------------------------------------------------------- reporting definitions (issue 12)
def dataset_spread(dataset):
    """The +- of Table 1, the figures and the comparison: the study's choice (std over seeds for
    CT, bootstrap std otherwise) unless datasets.<name>.reporting.spread names one."""
    spread = dataset_cfg(dataset).get("reporting", {}).get("spread", "auto")
    if spread == "auto":
        return "seeds" if dataset_cfg(dataset)["kind"] == "ct" else "bootstrap"
    return spread
