# Study B's helpers and methods (rules in generate.smk). Study B (methods.md B): synthetic mass patches from MCGAN (the study's, non-private) and DP-MCGAN
# (discriminator by DP-SGD through the engine, generator post-processing of it), their fidelity and
# memorisation, and the classifiers of the study's five modes as registered methods. Included
# BEFORE train.smk: train_classifier's {method} constraint is computed when train.smk is parsed.

GAN_VARIANTS = ["mcgan", "dpmcgan"]
SYNTHETIC_DATASETS = [d for d in DATASETS if dataset_cfg(d).get("synthetic")]


wildcard_constraints:
    variant="|".join(GAN_VARIANTS),


def synthetic_cfg(dataset):
    return dataset_cfg(dataset)["synthetic"]


def generator_dir(dataset, variant="{variant}"):
    return f"results/{dataset}/generators/{variant}"


def synthetic_dir(dataset, variant="{variant}"):
    return f"results/{dataset}/synthetic/{variant}"


def generator_params(wildcards):
    """Exactly what a generator depends on: network, GAN training, and the DP block for DP-MCGAN only."""
    syn = synthetic_cfg(wildcards.dataset)
    return canonical({
        "net": {"image_size": dataset_cfg(wildcards.dataset)["preprocess"]["size"],
                "num_classes": 2, **copy.deepcopy(syn["net"])},
        "gan": copy.deepcopy(syn["gan"]),
        "privacy": copy.deepcopy(syn["dp"]) if wildcards.variant == "dpmcgan" else None,
        "label": dataset_cfg(wildcards.dataset)["labels"][0],
        "seed": syn["seed"],
        "checkpoint": private_checkpoint(wildcards.dataset, "generators", wildcards.variant),
    })


def generator_inputs(wildcards):
    inputs = {"manifest": f"results/{wildcards.dataset}/manifest.parquet", **caches(wildcards.dataset)}
    if synthetic_cfg(wildcards.dataset)["gan"].get("select") == "best":
        inputs["encoder"] = fidelity_encoder(wildcards)  # scores the generator on the held-out val split
    return inputs


def fidelity_encoder(wildcards):
    name = synthetic_cfg(wildcards.dataset)["encoder"]
    spec = config["embeddings"]["encoders"][name]
    return f"results/{spec['pretrained']}/pretrained/model.pt" if "pretrained" in spec else spec["weights"]


def external_of(dataset):
    return dataset_cfg(dataset).get("external")


def generate_outputs():
    """What `rule all` needs of study B (the summaries come with the dataset's summary)."""
    return [
        path
        for d in SYNTHETIC_DATASETS
        for path in [f"results/{d}/synthetic/fidelity.csv", f"results/{d}/synthetic/memorisation.csv",
                     f"results/{d}/synthetic/real_vs_synthetic.png", f"results/{d}/summary/study_b_table1.csv",
                     f"results/{d}/summary/study_b_table1.md", f"results/{d}/summary/auprc_vs_epsilon_by_mode.png"]
    ]


# ---------------------------------------------------------------- the five modes as methods
def _study_b_inputs(mode, variant):
    def inputs(wildcards):
        d = wildcards.dataset
        out = {"manifest": f"results/{d}/manifest.parquet", **caches(d)}
        ext = external_of(d)
        if ext:
            out["external"] = f"results/{ext}/preprocessed/test.h5"
            out["external_manifest"] = f"results/{ext}/manifest.parquet"
        if mode == "real":
            return out
        sd = synthetic_dir(d, variant)
        out["manifest"] = f"{sd}/manifest.parquet"  # real and synthetic records
        out["synthetic"] = f"{sd}/synthetic.h5"
        if mode in ("syn", "synpre"):
            out["train"] = f"{sd}/synthetic.h5"
        elif mode == "realsyn":
            out["train"] = f"{sd}/real_and_synthetic.h5"
        elif mode == "synprerealft":
            out["pretrained"] = f"{classifier_dir(d, f'synpre_{variant}', 'inf', wildcards.seed)}/model.pt"
        return out

    return inputs


def _study_b_params(mode, variant):
    def params(wildcards):
        cfg = dataset_cfg(wildcards.dataset)
        clf = cfg["classifier"]
        private = wildcards.eps != "inf"
        settings = copy.deepcopy(clf["dp"] if private else clf["nonprivate"])
        if mode == "synpre":
            settings = copy.deepcopy(cfg["synthetic"]["pretrain"])
        if mode == "synprerealft":
            settings["trainable"] = cfg["synthetic"]["finetune_trainable"]
        return {
            "epsilon": float(wildcards.eps), "seed": int(wildcards.seed), "labels": list(cfg["labels"]),
            "model": model_cfg(wildcards.dataset), "settings": settings, "pretrain": None,
            "mode": mode, "variant": variant, "synthetic_only": mode in ("syn", "synpre"),
            "subgroups": list(dataset_subgroups(wildcards.dataset)),
            "checkpoint": private_checkpoint(wildcards.dataset, f"{mode}_{variant}" if variant else mode,
                                             f"eps_{wildcards.eps}", f"seed_{wildcards.seed}"),
        }

    return params


STUDY_B_MODES = {
    "real": "DP-SGD on the real training records",
    "syn": "non-private training on synthetic patches only (post-processing of the generator)",
    "realsyn": "DP-SGD on the real records together with the synthetic patches",
    "synpre": "non-private pretraining on synthetic patches (all layers)",
    "synprerealft": "the synpre model fine-tuned on the real records with DP-SGD (trainable layers from config)",
}
register_method("real", rule="train_classifier", inputs=_study_b_inputs("real", None),
                params=_study_b_params("real", None), description=f"study B: {STUDY_B_MODES['real']}",
                epsilons=None)
for _variant in GAN_VARIANTS:
    for _mode in ("syn", "realsyn", "synpre", "synprerealft"):
        register_method(
            f"{_mode}_{_variant}", rule="train_classifier", inputs=_study_b_inputs(_mode, _variant),
            params=_study_b_params(_mode, _variant),
            description=f"study B with {'DP-MCGAN' if _variant == 'dpmcgan' else 'MCGAN (no DP)'}: {STUDY_B_MODES[_mode]}",
            # the classifier of syn/synpre trains without DP: one model, at eps = inf
            epsilons=(lambda dataset: ["inf"]) if _mode in ("syn", "synpre") else None,
        )


wildcard_constraints:
    method="|".join(METHODS),  # now with the methods registered here


