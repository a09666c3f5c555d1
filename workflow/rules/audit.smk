# Empirical privacy audit (issue 12): per audited (method, eps, seed) one canary training job with
# the production job's inputs and params (the same training function), then the dataset's audit
# tables. Included after train.smk: the methods a rule audits are computed when this file is parsed.
# Model families: `audit_classifier` audits the methods trained by `train_classifier` (DP-SGD
# classifiers); other families register their own audit rule the same way.

AUDITED_RULES = {"train_classifier": "audit_classifier"}


def audit_cfg(dataset):
    return dataset_cfg(dataset).get("audit")


def audit_runs(dataset):
    """Every audited model of ``dataset``: (method, eps label, seed), checked against what runs."""
    cfg = audit_cfg(dataset)
    if not cfg or not dataset_cfg(dataset).get("classifier"):
        return []
    trained = epsilon_labels(dataset)
    runs = []
    for method in cfg["methods"]:
        if method not in run_methods():
            raise ValueError(f"datasets.{dataset}.audit.methods: {method} is not in training.methods {run_methods()}")
        if METHODS[method]["rule"] not in AUDITED_RULES:
            raise ValueError(f"datasets.{dataset}.audit.methods: no audit rule for {method} "
                             f"(trained by {METHODS[method]['rule']}; audited: {sorted(AUDITED_RULES)})")
        for eps in cfg["epsilons"]:
            label = eps_label(float(eps))
            if label not in trained:
                raise ValueError(f"datasets.{dataset}.audit.epsilons: {eps} is not trained (epsilons {trained})")
            runs += [(method, label, seed) for seed in cfg["seeds"]]
    return runs


def audit_dir(dataset="{dataset}", method="{method}", eps="{eps}", seed="{seed}"):
    return f"results/{dataset}/audit/{method}/eps_{eps}/seed_{seed}"


def audit_private_dir(dataset="{dataset}", method="{method}", eps="{eps}", seed="{seed}"):
    return os.path.join(PRIVATE, "audit", dataset, method, f"eps_{eps}", f"seed_{seed}")


def audit_training_params(wildcards):
    """The production job's params, with the audit run's own checkpoint (nothing else differs)."""
    params = copy.deepcopy(method_params(wildcards))
    params["checkpoint"] = private_checkpoint("audit", wildcards.dataset, wildcards.method,
                                              f"eps_{wildcards.eps}", f"seed_{wildcards.seed}")
    return canonical(params)


def audit_settings(wildcards):
    cfg = audit_cfg(wildcards.dataset)
    return canonical({"canaries": cfg["canaries"], "seed": cfg["seed"], "alpha": cfg["alpha"],
                      "design": cfg["design"]})


def audit_targets():
    """What `rule all` asks of the audit: each dataset's audit tables."""
    return [f"results/{d}/audit/{name}" for d in CLASSIFIER_DATASETS if audit_runs(d)
            for name in AUDIT_SUMMARY_FILES]


# Generators that write a memorisation check (dpmed.evaluation.fidelity.memorisation_check, as
# JSON of MemorisationReport.to_dict()) register it here: register_memorisation(fn) with
# fn(dataset) -> {name: path}; the audit section lists them. None registered: the section says so.
MEMORISATION_REPORTS = []


def register_memorisation(fn):
    MEMORISATION_REPORTS.append(fn)


def memorisation_inputs(dataset):
    out = {}
    for fn in MEMORISATION_REPORTS:
        out.update(fn(dataset))
    return out


AUDIT_SUMMARY_FILES = ["audit.csv", "audit.md", "audit_subgroups.csv", "audit_subgroups.md", "memorisation.md"]


localrules:
    summarise_audit,


rule audit_classifier:
    wildcard_constraints:
        method=methods_of_rule("train_classifier"),
    input:
        unpack(method_inputs),
        # the production model of the same method, eps and seed: the reference that calibrates
        # each canary's score (trained without the flips, independent of the inclusion mask)
        reference=f"{classifier_dir('{dataset}')}/model.pt",
    output:
        audit=f"{audit_dir()}/audit.json",
        privacy=f"{audit_dir()}/privacy.json",
        history=f"{audit_dir()}/history.csv",
        model=f"{audit_private_dir()}/model.pt",
        mask=f"{audit_private_dir()}/mask.parquet",
    params:
        training=audit_training_params,
        audit=audit_settings,
        private_dir=PRIVATE,
        work=lambda w: audit_private_dir(w.dataset, w.method, w.eps, w.seed),
        device=config["training"]["device"],
    threads: config["training"]["threads"]
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=config["training"]["gpu"],
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/audit/{method}_eps_{eps}_seed_{seed}.log",
    benchmark:
        "logs/{dataset}/audit/{method}_eps_{eps}_seed_{seed}.benchmark.tsv"
    script:
        "../scripts/audit_classifier.py"


rule summarise_audit:
    input:
        audits=lambda w: [f"{audit_dir(w.dataset, m, e, s)}/audit.json" for m, e, s in audit_runs(w.dataset)],
        metrics=lambda w: [f"results/{w.dataset}/evaluation/{m}/eps_{e}/seed_{s}/metrics.parquet"
                           for m, e, s in audit_runs(w.dataset)],
        memorisation=lambda w: list(memorisation_inputs(w.dataset).values()),
    output:
        audit_csv=report("results/{dataset}/audit/audit.csv", caption="../report/audit.rst",
                         category="{dataset}", subcategory="Privacy audit"),
        audit_md="results/{dataset}/audit/audit.md",
        subgroups_csv=report("results/{dataset}/audit/audit_subgroups.csv",
                             caption="../report/audit_subgroups.rst", category="{dataset}",
                             subcategory="Privacy audit"),
        subgroups_md="results/{dataset}/audit/audit_subgroups.md",
        memorisation=report("results/{dataset}/audit/memorisation.md", caption="../report/memorisation.rst",
                            category="{dataset}", subcategory="Privacy audit"),
    params:
        runs=lambda w: [{"method": m, "eps": e, "seed": s,
                         "audit": f"{audit_dir(w.dataset, m, e, s)}/audit.json",
                         "metrics": f"results/{w.dataset}/evaluation/{m}/eps_{e}/seed_{s}/metrics.parquet"}
                        for m, e, s in audit_runs(w.dataset)],
        memorisation=lambda w: memorisation_inputs(w.dataset),
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/audit/summary.log",
    script:
        "../scripts/summarise_audit.py"
