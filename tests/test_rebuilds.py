"""Exact partial rebuilds: after a complete tiny run, which jobs does `snakemake -n` schedule?

Every value a job depends on reaches it through params; if one did not, a change would either
schedule nothing (missed dependency) or too much (over-broad params) and these tests fail.
"""

from __future__ import annotations

import copy

import pytest

from workflow_helpers import eps_labels, planned_jobs, write_config

pytestmark = [pytest.mark.workflow]


def _plan(tiny_run, change, name):
    workdir, _, config = tiny_run
    changed = copy.deepcopy(config)
    change(changed)
    return planned_jobs(workdir, write_config(workdir, changed, name))


def _model(dataset, eps, method="dpsgd"):
    return f"results/{dataset}/classifiers/{method}/eps_{eps}/seed_0/model.pt"


def _metrics(dataset, eps, method="dpsgd"):
    return f"results/{dataset}/evaluation/{method}/eps_{eps}/seed_0/metrics.parquet"


def _summary(dataset):
    return ("summarise_dataset", f"results/{dataset}/summary/table1.csv")


def _comparison(dataset):
    return ("compare_methods", f"results/{dataset}/comparison/comparison.csv")


def _audit(dataset, eps):
    return ("audit_classifier", f"results/{dataset}/audit/dpsgd/eps_{eps}/seed_0/audit.json")


def _audit_summary(dataset):
    return ("summarise_audit", f"results/{dataset}/audit/audit.csv")


def _audited(config, dataset, finite_only=False):
    """The eps labels the dataset's audit covers (as the workflow spells them)."""
    audit = config["datasets"][dataset].get("audit") or {}
    labels = ["inf" if str(e) == "inf" else f"{float(e):g}" for e in audit.get("epsilons", [])]
    return [e for e in labels if not (finite_only and e == "inf")]


def test_no_change_nothing_to_do(tiny_run):
    workdir, configfile, _ = tiny_run
    assert planned_jobs(workdir, configfile) == set()


def _reversed_keys(value):
    if isinstance(value, dict):
        return {key: _reversed_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


def test_reordered_config_keys_rerun_nothing(tiny_run):
    """Params are canonical: the same values with every mapping's keys in another order."""
    workdir, _, config = tiny_run
    reordered = _reversed_keys(config)
    assert list(reordered["datasets"]["cxr"]["classifier"]) != list(config["datasets"]["cxr"]["classifier"])
    assert planned_jobs(workdir, write_config(workdir, reordered, "reordered.yaml")) == set()


def test_added_epsilon_runs_only_that_epsilon(tiny_run):
    def add(cfg):
        cfg["datasets"]["cxr"]["classifier"]["epsilons"].append(4.0)

    assert _plan(tiny_run, add, "add_eps.yaml") == {
        ("train_classifier", _model("cxr", "4")),
        ("evaluate_classifier", _metrics("cxr", "4")),
        _summary("cxr"),
        # content-aware DP (tests/test_workflow_cadp.py) shares the grid: one more privatised copy
        ("privatise_cadp", "results/cxr/cadp/eps_4/train.h5"),
        ("train_classifier", _model("cxr", "4", "cadp")),
        ("evaluate_classifier", _metrics("cxr", "4", "cadp")),
        ("cadp_comparison", "results/cxr/cadp/auroc_vs_epsilon_cadp.png"),
        ("cadp_examples", "results/cxr/cadp/examples.png"),
        _comparison("cxr"),
    }


def test_dp_hyperparameter_reruns_dp_training_only(tiny_run):
    def lr(cfg):
        for name in ("cxr", "ct"):
            cfg["datasets"][name]["classifier"]["dp"]["lr"] *= 2

    jobs = _plan(tiny_run, lr, "dp_lr.yaml")
    expected = set()
    for name in ("cxr", "ct"):
        for eps in eps_labels(tiny_run[2], name, finite_only=True):
            expected |= {("train_classifier", _model(name, eps)), ("evaluate_classifier", _metrics(name, eps))}
        expected |= {_summary(name), _comparison(name)}
        # the audit's canary runs use the production settings: a DP setting reruns the DP audits
        audited = _audited(tiny_run[2], name, finite_only=True)
        expected |= {_audit(name, eps) for eps in audited}
        if audited:
            expected.add(_audit_summary(name))
    expected.add(("cadp_comparison", "results/cxr/cadp/auroc_vs_epsilon_cadp.png"))  # CADP next to DP-SGD
    assert jobs == expected
    assert not {rule for rule, _ in jobs} & {"preprocess", "pretrain_classifier", "extract_embeddings", "ingest"}


def test_ct_window_reruns_the_ct_chain_only(tiny_run):
    def window(cfg):
        cfg["datasets"]["ct"]["preprocess"]["window"] = [-100, 200]

    expected = {("preprocess", f"results/ct/preprocessed/{s}.h5") for s in ("train", "val", "test")}
    for eps in eps_labels(tiny_run[2], "ct"):
        expected |= {("train_classifier", _model("ct", eps)), ("evaluate_classifier", _metrics("ct", eps))}
    expected |= {_summary("ct"), _comparison("ct")}
    assert _plan(tiny_run, window, "ct_window_plan.yaml") == expected


def test_evaluation_setting_reruns_evaluation_and_summaries(tiny_run):
    """The bootstrap redraws are shared by every evaluated model of every dataset: all of their
    evaluations and every table built on them rerun; no model is retrained."""
    def redraws(cfg):
        cfg.setdefault("evaluation", {})["n_bootstrap"] = 123

    workdir = tiny_run[0]
    evaluated = sorted(p.relative_to(workdir).as_posix() for p in (workdir / "results").glob("*/evaluation/*/*/*/metrics.parquet"))
    expected = {("evaluate_classifier", path) for path in evaluated}
    assert {("evaluate_classifier", _metrics(name, eps)) for name in ("cxr", "ct")
            for eps in eps_labels(tiny_run[2], name)} <= expected
    for name in ("cxr", "ct", "mammography"):
        expected |= {_summary(name), _comparison(name)}
        if _audited(tiny_run[2], name):  # the audit tables show the models' subgroup fairness
            expected.add(_audit_summary(name))
    expected.add(("cadp_comparison", "results/cxr/cadp/auroc_vs_epsilon_cadp.png"))  # CADP next to DP-SGD
    expected.add(("study_b_summary", "results/mammography/summary/study_b_table1.csv"))  # study B's Table 1
    assert _plan(tiny_run, redraws, "redraws.yaml") == expected
