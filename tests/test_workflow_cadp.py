"""Study D (content-aware DP) in the workflow, on the shared tiny run: the INN, the privatised
caches, the cadp classifiers and their cards, the comparison with DP-SGD, and exact partial rebuilds."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from dpmed.io.cache import read_cache
from dpmed.privacy.card import read_privacy_card
from dpmed.privacy.guarantee import Guarantee
from workflow_helpers import eps_labels, planned_jobs, write_config

pytestmark = [pytest.mark.workflow]

DATASET = "cxr"


def _cadp(config):
    return config["datasets"][DATASET]["cadp"]


def _seeds(config):
    return _cadp(config).get("seeds") or config["training"]["seeds"]


def _clf(eps, seed=0, method="cadp"):
    return f"results/{DATASET}/classifiers/{method}/eps_{eps}/seed_{seed}"


def test_every_cadp_model_inherits_the_local_per_image_guarantee(tiny_run):
    workdir, _, config = tiny_run
    for eps in eps_labels(config, DATASET, finite_only=True):
        release = read_privacy_card(workdir / f"results/{DATASET}/cadp/eps_{eps}/privacy.json")
        for seed in _seeds(config):
            card = read_privacy_card(workdir / _clf(eps, seed) / "privacy.json")
            g = Guarantee.from_dict(card["typed_guarantee"])
            assert (g.kind, g.unit, g.delta, card["guarantee_type"]) == ("derived", "record", 0.0, "local")
            (source,) = g.derived_from
            assert source == Guarantee.from_dict(release["typed_guarantee"])
            assert (source.kind, source.mechanism, source.delta) == ("local", "cadp-laplace", 0.0)
            s, b = source.parameters["sensitivity"], source.parameters["laplace_scale"]
            # re-derived from the card's own numbers: s = min(eps/2, 4) (paper rule), b = 2s/eps, eps = 2s/b
            assert s == pytest.approx(min(float(eps) / 2, 4.0)) and b == pytest.approx(2 * s / float(eps))
            assert card["epsilon_spent"] == g.epsilon == pytest.approx(2 * s / b) == pytest.approx(float(eps))
            text = " ".join(card["not_guaranteed"])
            assert "label is released in the clear" in text and "ORIGINAL images" in text
            assert "LOCAL" in card["local_vs_central"] and "CENTRAL" in card["local_vs_central"]
            assert any(x["source"] == "cxr_public/train (public cohort)" for x in card["non_private_inputs"])
            assert "secrets.randbits" in source.noise_source


def test_cadp_reference_at_infinity_is_the_dpsgd_model_copied_not_retrained(tiny_run):
    workdir, _, config = tiny_run
    ref = _cadp(config).get("compare_with", "dpsgd")
    for seed in _seeds(config):
        ours, theirs = workdir / _clf("inf", seed), workdir / _clf("inf", seed, ref)
        assert (ours / "model.pt").read_bytes() == (theirs / "model.pt").read_bytes()
        pd.testing.assert_frame_equal(pd.read_parquet(ours / "predictions.parquet"),
                                      pd.read_parquet(theirs / "predictions.parquet"))
        card = read_privacy_card(ours / "privacy.json")
        assert card["kind"] == "none" and math.isinf(card["epsilon_spent"])
        assert f"identical to method {ref}" in card["guarantee"]


def test_privatised_caches_exist_per_epsilon_with_the_original_record_ids(tiny_run):
    workdir, _, config = tiny_run
    for eps in eps_labels(config, DATASET, finite_only=True):
        folder = workdir / f"results/{DATASET}/cadp/eps_{eps}"
        assert sorted(p.name for p in folder.iterdir()) == ["privacy.json", "train.h5", "val.h5"]  # no test copy
        for split in ("train", "val"):
            images, ids, attrs = read_cache(folder / f"{split}.h5")
            real, real_ids, real_attrs = read_cache(workdir / f"results/{DATASET}/preprocessed/{split}.h5")
            assert ids == real_ids and images.shape == real.shape and images.dtype == real.dtype
            assert attrs["value_range"] == real_attrs["value_range"]
            assert Guarantee.from_dict(attrs["privatised"]).epsilon == pytest.approx(float(eps))
            assert np.abs(images.astype(float) - real.astype(float)).mean() > 1.0  # really privatised


def test_cadp_classifiers_are_tested_on_the_original_test_images(tiny_run):
    from dpmed.models import build_model
    from dpmed.training.classifier import load_model_file, predict
    from dpmed.training.data import CacheDataset

    workdir, _, config = tiny_run
    labels = config["datasets"][DATASET]["labels"]
    eps = eps_labels(config, DATASET, finite_only=True)[0]
    folder = workdir / _clf(eps)
    model = load_model_file(folder / "model.pt")
    net = build_model(model["model_cfg"])
    net.load_state_dict(model["state_dict"])
    norm = model["normalization"]
    test = CacheDataset(workdir / f"results/{DATASET}/preprocessed/test.h5",
                        workdir / f"results/{DATASET}/manifest.parquet", labels, mean=norm["mean"], std=norm["std"])
    preds = pd.read_parquet(folder / "predictions.parquet")
    preds = preds[preds["split"] == "test"]
    assert preds["record_id"].tolist() == test.record_ids
    scores = predict(net, test, 64, torch.device("cpu"))
    np.testing.assert_allclose(preds[[f"score_{lb}" for lb in labels]].to_numpy(), scores, rtol=1e-4, atol=1e-5)


def test_inn_is_trained_on_the_public_cohort_and_checked_to_invert(tiny_run):
    workdir, _, config = tiny_run
    obj = torch.load(workdir / f"results/{DATASET}/cadp/inn/inn.pt", map_location="cpu", weights_only=True)
    assert obj["trained_on"] == {"dataset": "cxr_public", "split": "train", "role": "public"}
    assert obj["reconstruction_error"] <= obj["recon_tolerance"]
    history = pd.read_csv(workdir / f"results/{DATASET}/cadp/inn/history.csv")
    assert len(history) == _cadp(config)["training"]["epochs"]
    assert history["recon_error"].iloc[-1] == pytest.approx(obj["reconstruction_error"])
    assert obj["reconstruction_error"] <= obj["recon_tolerance"]
    assert not list((workdir / config["private_dir"] / "checkpoints").glob("**/cadp_inn.pt"))  # removed when done


def test_cadp_is_summarised_and_compared_with_its_kind_of_guarantee(tiny_run):
    workdir, _, config = tiny_run
    comparisons = pd.read_csv(workdir / f"results/{DATASET}/summary/comparisons.csv")
    finite = {float(e) for e in eps_labels(config, DATASET, finite_only=True)}
    assert set(comparisons.loc[comparisons["method"] == "cadp", "epsilon"]) == finite
    table = pd.read_csv(workdir / f"results/{DATASET}/cadp/cadp_vs_dpsgd.csv")
    kinds = {(r.method, r.epsilon): r.guarantee for r in table.itertuples()}
    ref = _cadp(config).get("compare_with", "dpsgd")
    for e in finite:
        assert kinds[("cadp", e)] == "local" and kinds[(ref, e)] == "central"
    assert kinds[("cadp", math.inf)] == kinds[(ref, math.inf)] == "none"
    inf = table[np.isinf(table["epsilon"])].set_index("method")
    assert inf.loc["cadp", "auroc"] == inf.loc[ref, "auroc"]  # the same non-private model
    assert ((table["auroc"] > 0.3) & (table["auroc"] <= 1)).all()
    for name in ("examples.png", "auroc_vs_epsilon_cadp.png"):
        assert (workdir / f"results/{DATASET}/cadp/{name}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ct" not in [p.name for p in (workdir / "results").iterdir() if (p / "cadp").exists()]


# ----------------------------------------------------------------------------- partial rebuilds
def _plan(tiny_run, change, name):
    workdir, _, config = tiny_run
    changed = copy.deepcopy(config)
    change(changed)
    return planned_jobs(workdir, write_config(workdir, changed, name))


def _downstream_of_privatisation(config):
    jobs = {("summarise_dataset", f"results/{DATASET}/summary/table1.csv"),
            ("compare_methods", f"results/{DATASET}/comparison/comparison.csv"),  # every method on one page
            ("cadp_comparison", f"results/{DATASET}/cadp/auroc_vs_epsilon_cadp.png")}
    for eps in eps_labels(config, DATASET, finite_only=True):
        jobs.add(("privatise_cadp", f"results/{DATASET}/cadp/eps_{eps}/train.h5"))
        for seed in _seeds(config):
            jobs.add(("train_classifier", f"{_clf(eps, seed)}/model.pt"))
            jobs.add(("evaluate_classifier", f"results/{DATASET}/evaluation/cadp/eps_{eps}/seed_{seed}/metrics.parquet"))
    return jobs


def test_changed_clip_bound_reprivatises_and_retrains_cadp_only_not_the_inn(tiny_run):
    def clip(cfg):
        cfg["datasets"][DATASET]["cadp"].setdefault("privatise", {})["sensitivity"] = 0.1

    expected = _downstream_of_privatisation(tiny_run[2])
    expected.add(("cadp_examples", f"results/{DATASET}/cadp/examples.png"))  # same mechanism, new s
    assert _plan(tiny_run, clip, "cadp_clip.yaml") == expected


def test_changed_inn_setting_retrains_the_inn_and_only_what_follows_it(tiny_run):
    def width(cfg):
        cfg["datasets"][DATASET]["cadp"]["inn"]["conv_width"] += 4

    expected = _downstream_of_privatisation(tiny_run[2])
    expected |= {("train_inn", f"results/{DATASET}/cadp/inn/inn.pt"),
                 ("cadp_examples", f"results/{DATASET}/cadp/examples.png")}
    assert _plan(tiny_run, width, "cadp_inn.yaml") == expected
