# Functions of the comparison (compare.smk) and audit (audit.smk) rules, included right after
# common.smk so that rule files of other stages can register memorisation checks
# (register_memorisation) before the audit rules read them.
from pathlib import Path


# ---------------------------------------------------------------- comparison (compare.smk)
COMPARISON_FILES = ["comparison.csv", "comparison.md", "best_by_epsilon.csv", "best_by_epsilon.md", "comparison.png"]


def comparison_targets():
    """The default target's share of the comparison: each classifier dataset's page."""
    return [f"results/{d}/comparison/{name}" for d in CLASSIFIER_DATASETS for name in COMPARISON_FILES]


def comparison_runs(dataset):
    return [{**run, "privacy": f"{classifier_dir(dataset, run['method'], run['eps'], run['seed'])}/privacy.json"}
            for run in summary_runs(dataset)]


def comparison_params(wildcards):
    cfg = dataset_cfg(wildcards.dataset)
    return canonical({
        "delta": cfg["classifier"]["dp"]["delta"],
        "metrics": list(cfg.get("reporting", {}).get("comparison_metrics", ["auroc"])),
        "spread": dataset_spread(wildcards.dataset),
    })


# ---------------------------------------------------------------- audit (audit.smk)
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
    """The default target's share of the audit: each dataset's audit tables."""
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


