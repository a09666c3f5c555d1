"""Study B end to end on the tiny run: generators, synthetic sets, fidelity, the five modes' cards,
external-cohort predictions, Table 1, and exact partial rebuilds of a changed generator."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest

from dpmed.io.cache import read_cache
from dpmed.privacy.accounting import epsilon_for_history
from dpmed.privacy.card import read_privacy_card
from dpmed.privacy.guarantee import Guarantee
from workflow_helpers import planned_jobs, write_config

pytestmark = [pytest.mark.workflow]

DS = "mammography"
MODES = ("syn", "realsyn", "synpre", "synprerealft")


def _eps(config):
    return [f"{float(e):g}" for e in config["datasets"][DS]["classifier"]["epsilons"]]


def _runs(config):
    """(method, eps) of every study-B classifier the tiny config trains."""
    runs = [("real", e) for e in _eps(config) + ["inf"]]
    for variant in ("mcgan", "dpmcgan"):
        for mode in MODES:
            grid = ["inf"] if mode in ("syn", "synpre") else _eps(config) + ["inf"]
            runs += [(f"{mode}_{variant}", e) for e in grid]
    return runs


def _guarantee(path) -> Guarantee:
    return Guarantee.from_dict(read_privacy_card(path)["typed_guarantee"])


def _generator_guarantee(workdir, variant) -> Guarantee:
    return _guarantee(workdir / f"results/{DS}/generators/{variant}/privacy.json")


def test_generators_cards_and_synthetic_sets_in_cache_format(tiny_run):
    workdir, _, config = tiny_run
    syn = config["datasets"][DS]["synthetic"]
    size = config["datasets"][DS]["preprocess"]["size"]
    mc, dp = _generator_guarantee(workdir, "mcgan"), _generator_guarantee(workdir, "dpmcgan")
    assert mc.kind == "none" and not mc.holds and "without differential privacy" in mc.not_guaranteed[0]
    assert dp.kind == "derived" and dp.derived_from[0].mechanism == "dp-sgd"
    d = dp.derived_from[0]
    assert d.epsilon == dp.epsilon <= syn["dp"]["epsilon"]
    assert epsilon_for_history([tuple(h) for h in d.parameters["history"]], d.delta,
                               d.parameters["accountant"]) == pytest.approx(dp.epsilon, rel=1e-9)
    real_train = pd.read_parquet(workdir / f"results/{DS}/manifest.parquet").query("split == 'train'")
    assert d.parameters["n_records"] == len(real_train)
    for variant in ("mcgan", "dpmcgan"):
        folder = workdir / f"results/{DS}/synthetic/{variant}"
        images, ids, attrs = read_cache(folder / "synthetic.h5")
        assert images.shape == (2 * syn["n_per_class"], size, size) and images.dtype == np.uint8
        assert attrs["kind"] == "mammography" and attrs["value_range"] == [0, 255]
        manifest = pd.read_parquet(folder / "manifest.parquet").set_index("record_id")
        assert manifest.loc[ids, "synthetic"].all()
        assert manifest.loc[ids, "label_malignant"].value_counts().to_dict() == {0: syn["n_per_class"],
                                                                                   1: syn["n_per_class"]}
        combined, cids, _ = read_cache(folder / "real_and_synthetic.h5")
        assert len(combined) == len(real_train) + len(images) and set(ids) <= set(cids)
        assert set(real_train["record_id"]) <= set(cids)
        assert Guarantee.from_dict(attrs["guarantee"]).holds == (variant == "dpmcgan")


def test_fidelity_and_memorisation_for_every_generator(tiny_run):
    workdir, _, _ = tiny_run
    fid = pd.read_csv(workdir / f"results/{DS}/synthetic/fidelity.csv")
    assert set(fid["generator"]) == {"mcgan", "dpmcgan"}
    assert set(fid["comparison"]) == {"real-vs-real", "real-vs-synthetic"}
    assert {"0", "1", "all"} == set(fid["class"].astype(str))
    assert (fid["fd"] >= -1e-9).all() and fid[["precision", "recall"]].stack().between(0, 1).all()
    memo = pd.read_csv(workdir / f"results/{DS}/synthetic/memorisation.csv")
    assert set(memo["generator"]) == {"mcgan", "dpmcgan"}
    assert memo["fraction_closer_to_train"].between(0, 1).all() and memo["p_value"].between(0, 1).all()
    png = workdir / f"results/{DS}/synthetic/real_vs_synthetic.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cards_tell_the_truth_per_mode_and_generator(tiny_run):
    workdir, _, config = tiny_run
    gen = _generator_guarantee(workdir, "dpmcgan")
    for method, eps in _runs(config):
        folder = workdir / f"results/{DS}/classifiers/{method}/eps_{eps}/seed_0"
        g = _guarantee(folder / "privacy.json")
        mode, _, variant = method.partition("_")
        if eps == "inf" and mode in ("real", "realsyn", "synprerealft"):
            assert not g.holds, (method, eps)  # real records used without DP
        elif variant == "mcgan":
            # the non-private generator saw the same records: no guarantee, and it says why
            assert g.kind == "none" and not g.holds, method
            assert "no DP guarantee" in g.not_guaranteed[0] and g.derived_from, method
        elif mode == "real":
            assert g.kind == "central" and g.epsilon <= float(eps)
        elif mode in ("syn", "synpre"):
            assert g.kind == "derived" and g.epsilon == pytest.approx(gen.epsilon), method
        else:  # DP-SGD on the same records as DP-MCGAN: composed by one accountant, recomputable
            assert g.kind == "composed", (method, eps)
            parts = {p.mechanism for p in g.derived_from}
            assert parts == {"dp-sgd"} and len(g.derived_from) == 2
            history = [tuple(h) for h in g.parameters["history"]]
            assert epsilon_for_history(history, g.delta, g.parameters["accountant"]) == pytest.approx(g.epsilon)
            assert g.epsilon > max(gen.epsilon, float(eps) * 0.9)
            assert g.epsilon < gen.epsilon + float(eps) + 1e-9  # tighter than adding the epsilons


def test_predictions_cover_within_domain_and_external_with_density(tiny_run):
    workdir, _, config = tiny_run
    ext = pd.read_parquet(workdir / "results/mammography_external/manifest.parquet")
    assert set(ext["split"]) == {"test"}
    real = pd.read_parquet(workdir / f"results/{DS}/manifest.parquet")
    for method, eps in _runs(config):
        pred = pd.read_parquet(workdir / f"results/{DS}/classifiers/{method}/eps_{eps}/seed_0/predictions.parquet")
        assert {"breast_density", "age_group"} <= set(pred.columns)
        assert sorted(pred.loc[pred["split"] == "external", "record_id"]) == sorted(ext["record_id"])
        held = real.loc[real["split"].isin(["val", "test"]), "record_id"]
        assert sorted(pred.loc[pred["split"] != "external", "record_id"]) == sorted(held)
        assert pred["breast_density"].astype(str).isin(["1", "2", "3", "4"]).all()
    m = pd.read_parquet(workdir / f"results/{DS}/evaluation/real/eps_inf/seed_0/metrics.parquet")
    assert any(s.startswith("breast_density=") for s in m["subgroup"])


def test_table1_has_every_mode_and_epsilon(tiny_run):
    workdir, _, config = tiny_run
    table = pd.read_csv(workdir / f"results/{DS}/summary/study_b_table1.csv")
    expected = {(m, float(e)) for m, e in _runs(config)}
    assert set(zip(table["method"], table["epsilon"].astype(float))) == expected
    for col in ("auroc_within_mean", "auprc_within_mean", "auroc_external_mean", "auprc_external_mean"):
        assert table[col].between(0, 1).all(), col
    mc = table[table["generator"] == "mcgan"]
    assert np.isinf(mc["card_epsilon"]).all()  # no guarantee with the non-private MCGAN
    md = (workdir / f"results/{DS}/summary/study_b_table1.md").read_text()
    assert md.count("\n| ") == len(table) and "DP-MCGAN" in md and "SynPre+RealFT" in md
    png = workdir / f"results/{DS}/summary/auprc_vs_epsilon_by_mode.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_changed_dp_generator_reruns_it_and_its_downstream_only(tiny_run):
    workdir, _, config = tiny_run
    changed = copy.deepcopy(config)
    changed["datasets"][DS]["synthetic"]["dp"]["epsilon"] = 8.0
    jobs = planned_jobs(workdir, write_config(workdir, changed, "dpmcgan_eps.yaml"))
    rules = {r for r, _ in jobs}
    assert ("train_generator", f"results/{DS}/generators/dpmcgan/generator.pt") in jobs
    assert ("sample_synthetic", f"results/{DS}/synthetic/dpmcgan/synthetic.h5") in jobs
    assert not any("/mcgan/" in out or "_mcgan/" in out for _, out in jobs)  # the other generator's chain
    assert not any(out.startswith(("results/cxr", "results/ct", "results/mammography_external")) for _, out in jobs)
    assert {("train_classifier", f"results/{DS}/classifiers/{m}/eps_{e}/seed_0/model.pt")
            for m, e in _runs(config) if m.endswith("_dpmcgan")} <= jobs
    assert not any(out.startswith(f"results/{DS}/classifiers/real/") for _, out in jobs)
    assert rules <= {"train_generator", "sample_synthetic", "synthetic_fidelity", "train_classifier",
                     "evaluate_classifier", "summarise_dataset", "study_b_summary", "compare_methods"}
