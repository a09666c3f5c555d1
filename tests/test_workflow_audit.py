"""End to end on the tiny run: the empirical privacy audit, the comparison page and the study's
evaluation definitions, as the workflow writes them."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest

from dpmed.privacy.audit import read_audit_json
from dpmed.privacy.card import read_privacy_card
from workflow_helpers import eps_labels, planned_jobs, write_config

pytestmark = [pytest.mark.workflow]


def _audited(config, dataset="cxr"):
    audit = config["datasets"][dataset]["audit"]
    return [("inf" if str(e) == "inf" else f"{float(e):g}") for e in audit["epsilons"]]


def _audit_dir(workdir, eps, dataset="cxr"):
    return workdir / f"results/{dataset}/audit/dpsgd/eps_{eps}/seed_0"


def _auroc_z(auroc, n_pos, n_neg):
    """How many null standard deviations an AUROC lies above chance (Mann-Whitney U without
    ties: var = (n_pos + n_neg + 1) / (12 n_pos n_neg)). The canary mask is drawn afresh
    every run, so a fixed AUROC threshold near the model's typical value is flaky."""
    return (auroc - 0.5) / math.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))


def test_audit_is_sound_for_dp_and_has_power_without_dp(tiny_run):
    """The DP models' noise comes from OS entropy (every CI run differs): for them only the
    sound direction is asserted (the one-run bound never exceeds the card's ε); the
    non-private model must be caught (the audit has power)."""
    workdir, _, config = tiny_run
    m = config["datasets"]["cxr"]["audit"]["canaries"]
    for eps in _audited(config):
        rep = read_audit_json(_audit_dir(workdir, eps) / "audit.json")
        card = read_privacy_card(_audit_dir(workdir, eps) / "privacy.json")
        assert rep["m"] == m and 0 < rep["n_member"] < m
        assert rep["epsilon_lower_method"] == "one_run"
        if eps == "inf":
            assert card["mechanism"] == "none" and math.isinf(rep["card_epsilon"])
            assert rep["epsilon_lower"] > 0.5, rep["bounds"]["one_run"]
            everyone = rep["mia_auroc"][0]
            assert everyone["subgroup"] == "all"
            assert _auroc_z(everyone["auroc"], everyone["n_member"], everyone["n"] - everyone["n_member"]) > 3
        else:
            assert card["kind"] == "central" and rep["card_epsilon"] == pytest.approx(card["epsilon_spent"])
            assert rep["epsilon_lower"] <= card["epsilon_spent"] and rep["holds"] is True
            assert rep["delta"] == card["delta"]


def test_canary_run_has_the_production_settings(tiny_run):
    """Same trainer settings as the production model; only N differs (left-out canaries), and
    σ is calibrated for the canary run's own N to the same target ε."""
    workdir, _, config = tiny_run
    manifest = pd.read_parquet(workdir / "results/cxr/manifest.parquet")
    n_prod = int((manifest["split"] == "train").sum())
    for eps in _audited(config):
        rep = read_audit_json(_audit_dir(workdir, eps) / "audit.json")
        canary_card = read_privacy_card(_audit_dir(workdir, eps) / "privacy.json")
        prod = read_privacy_card(workdir / f"results/cxr/classifiers/dpsgd/eps_{eps}/seed_0/privacy.json")
        run = rep["canary_run"]
        assert run["n_train_production"] == n_prod
        assert run["n_train"] == n_prod - (rep["m"] - rep["n_member"])
        history = pd.read_csv(_audit_dir(workdir, eps) / "history.csv")
        prod_history = pd.read_csv(workdir / f"results/cxr/classifiers/dpsgd/eps_{eps}/seed_0/history.csv")
        assert len(history) == len(prod_history)
        whats = sorted(i["what"] for i in canary_card["non_private_inputs"])
        assert whats == sorted(i["what"] for i in prod["non_private_inputs"])
        if eps == "inf":
            continue
        dp = config["datasets"]["cxr"]["classifier"]["dp"]
        assert canary_card["n_records"] == run["n_train"]
        assert canary_card["sample_rate"] == pytest.approx(dp["batch_size"] / run["n_train"])
        assert canary_card["max_grad_norm"] == prod["max_grad_norm"] == dp["max_grad_norm"]
        assert canary_card["delta"] == prod["delta"] and canary_card["accountant"] == prod["accountant"]
        assert canary_card["epsilon_target"] == prod["epsilon_target"] == float(eps)
        assert 0.99 * float(eps) <= canary_card["epsilon_spent"] <= float(eps)


def test_mask_and_canary_model_stay_private(tiny_run):
    workdir, _, config = tiny_run
    private = workdir / config["private_dir"]
    for eps in _audited(config):
        mask = pd.read_parquet(private / f"audit/cxr/dpsgd/eps_{eps}/seed_0/mask.parquet")
        rep = read_audit_json(_audit_dir(workdir, eps) / "audit.json")
        assert len(mask) == rep["m"] and int(mask["member"].sum()) == rep["n_member"]
        assert (private / f"audit/cxr/dpsgd/eps_{eps}/seed_0/model.pt").exists()
        assert not (private / f"audit/cxr/dpsgd/eps_{eps}/seed_0/train.h5").exists()
        text = (_audit_dir(workdir, eps) / "audit.json").read_text()
        assert not any(rid in text for rid in mask["record_id"])  # no canary is named in results
    assert not list((workdir / "results").rglob("mask.parquet"))
    assert not list((workdir / "results").rglob("audit.key")) and (private / "audit.key").exists()


def test_audit_tables(tiny_run):
    workdir, _, config = tiny_run
    audited = _audited(config)
    table = pd.read_csv(workdir / "results/cxr/audit/audit.csv")
    assert sorted(table["epsilon"]) == sorted(float(e) for e in audited)
    sub = pd.read_csv(workdir / "results/cxr/audit/audit_subgroups.csv")
    assert {"all", "sex=F", "sex=M"} <= set(sub["subgroup"])
    assert any(s.startswith("age_group=") for s in sub["subgroup"])
    # the fairness of accuracy beside the privacy risk comes from the model's own evaluation
    metrics = pd.read_parquet(workdir / "results/cxr/evaluation/dpsgd/eps_inf/seed_0/metrics.parquet")
    row = metrics[(metrics["label"] == "mean") & (metrics["subgroup"] == "sex=F")
                  & (metrics["metric"] == "parity_difference")]
    got = sub[(sub["epsilon"] == math.inf) & (sub["subgroup"] == "sex=F")]["model_parity_difference"]
    assert float(got.iloc[0]) == pytest.approx(float(row["estimate"].iloc[0]))
    assert "No generator" in (workdir / "results/cxr/audit/memorisation.md").read_text()


def test_comparison_page(tiny_run):
    workdir, _, config = tiny_run
    for dataset in ("cxr", "ct"):
        out = workdir / f"results/{dataset}/comparison"
        every = pd.read_csv(out / "comparison.csv")
        # other studies' methods (cadp on cxr) are on the same page; DP-SGD's rows are checked here
        assert "dpsgd" in set(every["method"])
        table = every[every["method"] == "dpsgd"]
        eps = [math.inf if e == "inf" else float(e) for e in eps_labels(config, dataset)]
        assert sorted(table["epsilon"]) == sorted(eps)
        kinds = dict(zip(table["epsilon"], table["kind"]))
        assert kinds.pop(math.inf) == "none" and set(kinds.values()) == {"central"}
        best = pd.read_csv(out / "best_by_epsilon.csv")
        # CADP's classifiers (cxr) are ranked among local guarantees only, in rows of their own
        local = every[every["method"] == "cadp"]
        assert set(best["class"]) == ({"central", "local"} if len(local) else {"central"})
        assert set(best.loc[best["class"] == "local", "method"]) <= {"cadp"}
        best = best[best["class"] == "central"]
        assert sorted(best["epsilon"]) == sorted(e for e in eps if math.isfinite(e))
        # a model qualifies only with card ε <= the row's ε
        assert (best["card_epsilon"] <= best["epsilon"]).all()
        assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
        assert "central DP per record" in (out / "comparison.md").read_text()


def test_summary_uses_the_study_definitions(tiny_run):
    """Table 1 names its spread per row; AUROC against TRAINING positives (the study's relation)."""
    workdir, _, _ = tiny_run
    for dataset in ("cxr", "ct"):
        table = pd.read_csv(workdir / f"results/{dataset}/summary/table1.csv")
        kind = [c for c in table.columns if "kind" in c.lower()]
        assert kind and table[kind[0]].astype(str).str.contains("bootstrap std").all()  # one seed each
    corr = pd.read_csv(workdir / "results/cxr/summary/correlations.csv")
    assert corr.astype(str).apply(lambda c: c.str.contains("n_train_positive")).any().any(), corr


def test_spread_is_the_studys_per_dataset(tiny_run):
    """reporting.spread auto = seeds for CT, bootstrap otherwise: naming the default changes
    nothing for CXR, and setting bootstrap for CT reruns CT's summary and comparison only."""
    workdir, _, config = tiny_run
    changed = copy.deepcopy(config)
    changed["datasets"]["cxr"]["reporting"] = {"spread": "bootstrap"}
    assert planned_jobs(workdir, write_config(workdir, changed, "spread_cxr.yaml")) == set()
    changed = copy.deepcopy(config)
    changed["datasets"]["ct"]["reporting"] = {"spread": "bootstrap"}
    assert planned_jobs(workdir, write_config(workdir, changed, "spread_ct.yaml")) == {
        ("summarise_dataset", "results/ct/summary/table1.csv"),
        ("compare_methods", "results/ct/comparison/comparison.csv")}


def test_audit_setting_reruns_the_audit_only(tiny_run):
    workdir, _, config = tiny_run
    changed = copy.deepcopy(config)
    changed["datasets"]["cxr"]["audit"]["canaries"] += 10
    jobs = planned_jobs(workdir, write_config(workdir, changed, "audit_m.yaml"))
    expected = {("audit_classifier", f"results/cxr/audit/dpsgd/eps_{e}/seed_0/audit.json") for e in _audited(config)}
    expected.add(("summarise_audit", "results/cxr/audit/audit.csv"))
    assert jobs == expected
