# Study C helpers (federated.smk): config access, inputs/params of the federation job, the
# method registration of fed_cvae and what `rule all` builds.

FED = config.get("federated") or {}
FED_DATASETS = [d for d in (FED.get("datasets") or {}) if d in DATASETS]


def fed_cfg(dataset):
    return FED["datasets"][dataset]


def fed_labels(dataset):
    """The labels the federation models (default: all of the dataset's; a subset may be named)."""
    labels = list(dataset_cfg(dataset)["labels"])
    chosen = list(fed_cfg(dataset).get("labels") or labels)
    unknown = [lb for lb in chosen if lb not in labels]
    if unknown:
        raise ValueError(f"federated.datasets.{dataset}.labels: {unknown} are not labels of {dataset}")
    return chosen


def fed_eps_labels():
    return [eps_label(e) for e in sorted(float(e) for e in FED["epsilons"])] + ["inf"]


def fed_dir(dataset, eps="{eps}", seed="{seed}"):
    return f"results/{dataset}/federated/eps_{eps}/seed_{seed}"


def federate_inputs(wildcards):
    cfg = fed_cfg(wildcards.dataset)
    enc = cfg["encoder"]
    inputs = {
        "manifest": f"results/{wildcards.dataset}/manifest.parquet",
        "embeddings": f"results/{wildcards.dataset}/embeddings/{enc}.h5",
    }
    public = cfg.get("public_dataset")
    if public and cfg["bounds"]["source"] == "public":
        inputs["public_embeddings"] = f"results/{public}/embeddings/{enc}.h5"
    if public and cfg["synthetic_labels"] == "public":
        inputs["public_manifest"] = f"results/{public}/manifest.parquet"
    return inputs


FED_SETTING_KEYS = (
    "rounds", "local_epochs", "batch_size", "lr", "max_grad_norm", "delta", "accountant", "grad_sample_mode",
    "n_synthetic", "classifier_epochs", "classifier_lr", "classifier_batch_size", "gan_lr", "aggregation", "methods",
)


def federate_params(wildcards):
    cfg = fed_cfg(wildcards.dataset)
    return canonical({
        "dataset": wildcards.dataset,
        "labels": fed_labels(wildcards.dataset),
        "task": cfg["task"],
        "epsilon": float(wildcards.eps),
        "seed": int(wildcards.seed),
        "sites": copy.deepcopy(cfg["sites"]),
        "bounds": copy.deepcopy(cfg["bounds"]),
        "synthetic_labels": cfg["synthetic_labels"],
        "public_dataset": cfg.get("public_dataset"),
        "settings": {k: copy.deepcopy(FED[k]) for k in FED_SETTING_KEYS},
        "subgroups": list(config["evaluation"]["subgroups"]),
        "n_bootstrap": int(FED["subgroup_bootstrap"]),
        "evaluation_seed": int(config["evaluation"]["seed"]),
    })


# fed_cvae in the method registry: its classifiers come from the federation job, not train_classifier
register_method("fed_cvae", rule="federate", inputs=federate_inputs, params=federate_params,
                description="study C: per-site classifier lambda-interpolated between local real and federated "
                "DP-CVAE synthetic embeddings (per-record DP per site; the card holds the worst site's epsilon)")


FED_SUMMARY = {
    "table_csv": ("table.csv", "federated_table.rst", "Tables"),
    "table_md": ("table.md", "federated_table.rst", "Tables"),
    "subgroups_csv": ("subgroups.csv", "federated_subgroups.rst", "Tables"),
    "metric_png": ("metric_vs_epsilon.png", "federated_metric_vs_epsilon.rst", "Figures"),
    "w2_png": ("w2_per_site.png", "federated_w2_per_site.rst", "Figures"),
}


def federated_targets():
    """What `rule all` builds of study C."""
    return [f"results/{d}/federated/summary/{name}" for d in FED_DATASETS for name, _, _ in FED_SUMMARY.values()]
