"""End to end on the tiny config: classifiers at each epsilon, evaluation, summary, report."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pandas as pd
import pytest

from dpmed.privacy.card import read_privacy_card
from workflow_helpers import eps_labels, snakemake

pytestmark = [pytest.mark.workflow]


def _models(config):
    for dataset, cfg in config["datasets"].items():
        if cfg.get("classifier") and not cfg["classifier"].get("methods"):  # study B's modes: own tests
            for eps in eps_labels(config, dataset):
                yield dataset, eps, f"results/{dataset}/classifiers/dpsgd/eps_{eps}/seed_0"


def test_every_model_has_its_contract(tiny_run):
    workdir, _, config = tiny_run
    models = list(_models(config))
    assert len(models) == 6
    for dataset, eps, folder in models:
        folder = workdir / folder
        labels = config["datasets"][dataset]["labels"]
        card = read_privacy_card(folder / "privacy.json")
        pred = pd.read_parquet(folder / "predictions.parquet")
        manifest = pd.read_parquet(workdir / f"results/{dataset}/manifest.parquet")
        expected_ids = manifest.loc[manifest["split"].isin(["val", "test"]), "record_id"]
        assert sorted(pred["record_id"]) == sorted(expected_ids)
        assert {"record_id", "split", "sex", "age", "age_group"} <= set(pred.columns)
        for label in labels:
            assert pred[f"score_{label}"].between(0, 1).all()
            merged = pred.merge(manifest, on="record_id")
            assert (merged[f"y_{label}"] == merged[f"label_{label}"]).all()
        history = pd.read_csv(folder / "history.csv")
        assert len(history) == (config["datasets"][dataset]["classifier"]["dp" if eps != "inf" else "nonprivate"]["epochs"])
        if eps == "inf":
            assert card["mechanism"] == "none" and math.isinf(card["epsilon_spent"])
            continue
        target = float(eps)
        assert card["mechanism"] == "dp-sgd" and card["accountant"] == "prv"
        assert 0.99 * target <= card["epsilon_spent"] <= target
        assert card["epsilon_target"] == target and card["unit"] == "record"
        assert card["steps"] == history["steps"].iloc[-1]
        # Under DP nothing trained on private data leaves unaccounted: no training loss logged.
        assert history["train_loss"].isna().all()
        # The epsilon history is the accountant's, increasing to the reported value.
        assert np.all(np.diff(history["epsilon"]) > 0)
        assert history["epsilon"].iloc[-1] == pytest.approx(card["epsilon_spent"])
        assert card["max_records_per_patient"] >= 1
        # the guarantee as released: secret noise, N treated as public, epsilon re-derivable
        assert card["kind"] == "central" and "OS entropy" in card["noise_source"]
        n_train = int((manifest["split"] == "train").sum())
        assert card["n_records"] == n_train and card["sample_rate"] == pytest.approx(card["batch_size"] / n_train)
        assert any("N = " in item for item in card["treated_as_public"])
        log = (workdir / f"logs/{dataset}/classifiers/dpsgd_eps_{eps}_seed_0.log").read_text()
        progress = [line for line in log.splitlines() if " epoch " in line and " eta " in line]
        assert len(progress) == len(history), log[-2000:]
        whats = " ".join(item["what"] for item in card["non_private_inputs"])
        if dataset == "cxr":  # public pretraining and public class weights are declared
            assert "initial" in whats and "pos_weight" in whats


def test_privacy_costs_accuracy_in_order(tiny_run):
    """Non-private clearly above chance; mean AUROC ordered inf >= largest eps >= smallest (CXR),
    up to two bootstrap standard deviations: the DP noise is secret and new in every run, and at
    this tiny scale neighbouring budgets differ by less than the test set can resolve."""
    workdir, _, config = tiny_run
    auroc, std = {}, {}
    for eps in eps_labels(config, "cxr"):
        m = pd.read_parquet(workdir / f"results/cxr/evaluation/dpsgd/eps_{eps}/seed_0/metrics.parquet")
        row = m[(m["label"] == "mean") & (m["subgroup"] == "all") & (m["metric"] == "auroc")]
        auroc[eps], std[eps] = float(row["mean"].iloc[0]), float(row["std"].iloc[0])
    labels = eps_labels(config, "cxr")
    assert auroc["inf"] > 0.62, auroc
    for better, worse in zip(labels[::-1], labels[::-1][1:]):
        slack = 2 * max(std[better], std[worse])
        assert 0 < slack < 0.05 and auroc[better] >= auroc[worse] - slack, (auroc, std)


def test_metrics_and_summary(tiny_run):
    workdir, _, config = tiny_run
    m = pd.read_parquet(workdir / "results/cxr/evaluation/dpsgd/eps_inf/seed_0/metrics.parquet")
    assert list(m.columns) == ["label", "subgroup", "metric", "estimate", "mean", "std", "ci_low", "ci_high", "n_missing"]
    assert {"all", "sex=F", "sex=M", "age_group=[60,70)"} <= set(m["subgroup"])
    assert {"auroc", "auprc", "sensitivity", "specificity", "parity_difference", "underdiagnosis_rate"} <= set(m["metric"])
    for dataset in ("cxr", "ct"):
        summary = workdir / f"results/{dataset}/summary"
        table = (summary / "table1.md").read_text()
        assert table.count("\n| ") >= 4 and "∞" in table
        comparisons = pd.read_csv(summary / "comparisons.csv")
        assert set(comparisons["epsilon"]) == {float(e) for e in config["datasets"][dataset]["classifier"]["epsilons"]}
        assert set(comparisons["method"]) == ({"dpsgd", "cadp"} if dataset == "cxr" else {"dpsgd"})  # cadp: cxr only
        assert comparisons["bootstrap_p_private_worse"].dropna().between(0, 1).all()
        for png in summary.glob("*.png"):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_secret_outside_the_private_directory(tiny_run):
    """Checkpoints (they hold the secret noise seed) live under private_dir and are gone after the run."""
    workdir, _, config = tiny_run
    for folder in ("results", "logs"):
        # model.pt: released classifiers; inn.pt: content-aware DP's network (trained on the public cohort);
        # study B's generator.pt: weights only. The secret noise seeds live in checkpoints under private_dir.
        assert not [p for p in (workdir / folder).rglob("*.pt") if p.name not in ("model.pt", "inn.pt", "generator.pt")]
    assert not list((workdir / config["private_dir"]).rglob("checkpoints/**/*.pt"))


def test_embeddings_cover_every_record(tiny_run):
    workdir, _, _ = tiny_run
    manifest = pd.read_parquet(workdir / "results/cxr/manifest.parquet")
    with h5py.File(workdir / "results/cxr/embeddings/public_resnet9.h5") as fh:
        ids = sorted(s.decode() for s in fh["record_id"][()])
        emb = fh["embedding"][()]
    assert ids == sorted(manifest["record_id"])
    assert emb.shape[0] == len(ids) and emb.shape[1] > 8 and np.isfinite(emb).all()


def test_report_collects_figures(tiny_run, tmp_path):
    workdir, configfile, _ = tiny_run
    report = tmp_path / "report.html"  # outside results/: the shared run stays as the workflow left it
    snakemake(workdir, configfile, "--report", str(report), "--cores", "1")
    html = report.read_text(errors="replace")
    assert "auroc_vs_epsilon.png" in html and "table1" in html
