"""Classifier training: data, augmentation, DP-SGD plan/card, resume, learnability."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from dpmed.errors import ConfigError, PrivacyError
from dpmed.privacy.accounting import calibrate_noise_multiplier
from dpmed.privacy.card import read_privacy_card
from dpmed.training import classifier as clf
from dpmed.training.engine import TEST_NOISE_ENV
from dpmed.training.engine import trainer as engine_trainer
from dpmed.training.augment import affine_matrices, augment_batch
from dpmed.training.data import CacheDataset, DataError

from training_helpers import LABELS, make_cohort

CFG = {"width": 0.125, "groups": 8, "in_channels": 1}
DELTA = 1e-3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    return make_cohort(root)


def _run(cohort, out, eps, seed=3, **kw):
    paths, man = cohort
    settings = {"epochs": 3, "batch_size": 16, "physical_batch_size": 8, "lr": 2e-3}
    if math.isfinite(eps):
        settings.update(delta=DELTA, accountant="rdp", max_grad_norm=1.0)
    settings.update(kw.pop("settings", {}))
    act = "relu" if math.isinf(eps) else "mish"
    return clf.train_classifier(
        train_h5=paths["train"], val_h5=paths["val"], test_h5=paths["test"], manifest=man, labels=LABELS,
        outputs=clf.ClassifierOutputs.in_folder(out), checkpoint=out / "private" / "checkpoint.pt",
        epsilon=eps, settings=settings, model_cfg={**CFG, "activation": act}, seed=seed, **kw,
    )


def _weights(out):
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


# ----------------------------------------------------------------------------- data
def test_dataset_fixed_scaling_lazy_and_join(cohort, tmp_path):
    paths, man = cohort
    ds = CacheDataset(paths["train"], man, LABELS, channels=3)
    lazy = CacheDataset(paths["train"], man, LABELS, channels=3, in_memory_max_bytes=0)
    assert ds._memory is not None and lazy._memory is None
    import h5py

    with h5py.File(paths["train"]) as fh:
        raw = fh["images"][5].astype(np.float32)
    x, y = ds[5]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    np.testing.assert_allclose(x[1].numpy(), (raw / 255 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)
    assert torch.equal(lazy[5][0], x)
    lazy2 = pickle.loads(pickle.dumps(lazy))  # handle re-opened lazily in the new "process"
    assert torch.equal(lazy2[5][0], x)
    mf = pd.read_parquet(man).set_index("record_id")
    assert y.tolist() == [float(mf.loc["train-0005", f"label_{lb}"]) for lb in LABELS]

    bad_paths, bad_man = make_cohort(tmp_path, sizes=(6, 2, 2), extra_cache_ids=("ghost-1",))
    with pytest.raises(DataError, match="ghost-1"):
        CacheDataset(bad_paths["train"], bad_man, LABELS)


# ----------------------------------------------------------------------------- augmentation
def test_augment_seeded_and_flip_exact():
    x = torch.rand(4, 1, 16, 16)
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    theta = affine_matrices(torch.zeros(2, dtype=torch.float64), torch.tensor([True, False])).float()
    grid = torch.nn.functional.affine_grid(theta, [2, 1, 16, 16], align_corners=False)
    out = torch.nn.functional.grid_sample(x[:2], grid, align_corners=False, padding_mode="border")
    torch.testing.assert_close(out[0], x[0].flip(-1))
    torch.testing.assert_close(out[1], x[1])
    with pytest.raises(ConfigError):
        augment_batch(torch.rand(2, 1, 4, 4, 4), torch.Generator())


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("eps", [math.inf, 4.0])
def test_resume_identical(cohort, tmp_path, monkeypatch, eps):
    # resumed vs uninterrupted: the test-only seeded noise makes the two comparable
    monkeypatch.setenv(TEST_NOISE_ENV, "11")
    kw = {} if math.isinf(eps) else {"pos_weight": [2.0, 3.0]}
    if math.isinf(eps):
        kw["settings"] = {"augment": True}
    straight = _run(cohort, tmp_path / "a", eps, **kw)

    def kill(epoch, checkpoint):
        if epoch == 1:
            raise engine_trainer._Stop()

    monkeypatch.setattr(engine_trainer, "_on_epoch_end", kill)
    with pytest.raises(engine_trainer._Stop):
        _run(cohort, tmp_path / "b", eps, **kw)
    assert (tmp_path / "b" / "private" / "checkpoint.pt").exists() and not (tmp_path / "b" / "model.pt").exists()
    monkeypatch.setattr(engine_trainer, "_on_epoch_end", lambda e, o: None)
    resumed = _run(cohort, tmp_path / "b", eps, **kw)

    assert resumed["resumed_from_epoch"] == 1
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed["steps"] == straight["steps"] == 3 * straight["steps_per_epoch"]
    assert resumed["epsilon_spent"] == straight["epsilon_spent"]
    ha = pd.read_csv(tmp_path / "a" / "history.csv").drop(columns="seconds")
    hb = pd.read_csv(tmp_path / "b" / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(ha, hb)
    pa = pd.read_parquet(tmp_path / "a" / "predictions.parquet")
    pb = pd.read_parquet(tmp_path / "b" / "predictions.parquet")
    pd.testing.assert_frame_equal(pa, pb)
    assert not (tmp_path / "b" / "private" / "checkpoint.pt").exists()
    if math.isfinite(eps):
        # DP: the loss weight is exactly the caller's, never derived from the private labels
        assert resumed["loss_pos_weight"] == [2.0, 3.0]
        ca = read_privacy_card(tmp_path / "a" / "privacy.json")
        cb = read_privacy_card(tmp_path / "b" / "privacy.json")
        # seeded (test) noise: the card must say the guarantee does not hold
        assert ca["kind"] == cb["kind"] == "none" and TEST_NOISE_ENV in ca["guarantee"]
        assert hb["epsilon"].tolist() == ha["epsilon"].tolist() and ha["epsilon"].iloc[-1] <= eps


def test_checkpoint_of_other_run_refused(cohort, tmp_path, monkeypatch):
    def kill(epoch, checkpoint):
        raise engine_trainer._Stop()

    monkeypatch.setattr(engine_trainer, "_on_epoch_end", kill)
    with pytest.raises(engine_trainer._Stop):
        _run(cohort, tmp_path, math.inf, settings={"epochs": 1})
    monkeypatch.setattr(engine_trainer, "_on_epoch_end", lambda e, o: None)
    with pytest.raises(ConfigError, match="different"):
        _run(cohort, tmp_path, math.inf, seed=99, settings={"epochs": 1})


@pytest.mark.parametrize("change", ["label", "image"])
def test_resume_refused_when_the_training_data_changed(tmp_path, monkeypatch, change):
    """The fingerprint hashes what the run reads (image bytes and labels), not only the record ids."""
    import h5py

    paths, man = make_cohort(tmp_path / "c", sizes=(24, 8, 8), size=16)
    monkeypatch.setattr(engine_trainer, "_on_epoch_end", lambda e, c: (_ for _ in ()).throw(engine_trainer._Stop()))
    run = dict(train_h5=paths["train"], val_h5=paths["val"], test_h5=None, labels=LABELS, epsilon=4.0, seed=1,
               outputs=clf.ClassifierOutputs.in_folder(tmp_path / "o"), checkpoint=tmp_path / "private" / "c.pt",
               settings={"epochs": 2, "batch_size": 8, "lr": 1e-3, "delta": DELTA, "accountant": "rdp"},
               model_cfg={**CFG, "activation": "mish"})
    with pytest.raises(engine_trainer._Stop):
        clf.train_classifier(manifest=man, **run)
    monkeypatch.setattr(engine_trainer, "_on_epoch_end", lambda e, c: None)
    df = pd.read_parquet(man)
    if change == "label":  # same ids, one training label flipped
        row = df.index[df["record_id"] == "train-0003"][0]
        df.loc[row, "label_blob_a"] = 1 - df.loc[row, "label_blob_a"]
    else:  # same ids and labels, one pixel of one training image changed
        with h5py.File(paths["train"], "r+") as fh:
            fh["images"][3, 0, 0] = (int(fh["images"][3, 0, 0]) + 1) % 256
    with pytest.raises(ConfigError, match="different"):
        clf.train_classifier(manifest=df, **run)


# ----------------------------------------------------------------------------- DP run
def test_dp_run_card_plan_predictions(cohort, tmp_path, monkeypatch):
    def spy(*a, **k):  # must never be called under DP
        raise AssertionError("class frequencies computed from private labels")

    monkeypatch.setattr(clf, "class_balance_pos_weight", spy)
    target = 3.0
    out = tmp_path / "dp"
    res = _run(cohort, out, target, settings={"epochs": 2, "accountant": "prv", "grad_sample_mode": "hooks",
                                              "batch_size": 20},
               non_private_inputs=[{"what": "pretraining", "source": "public cohort X"}])
    n_train, b = 96, 20
    q = b / n_train
    steps = 2 * round(n_train / b)  # 96/20 = 4.8 -> 5 per epoch
    assert res["steps_per_epoch"] == 5 and res["steps"] == steps
    assert res["loss_pos_weight"] is None  # unweighted: no weights from the private labels

    card = read_privacy_card(out / "privacy.json")
    assert card["mechanism"] == "dp-sgd" and card["accountant"] == "prv" and card["unit"] == "record"
    assert card["sample_rate"] == pytest.approx(q) and card["steps"] == steps and card["epochs"] == 2
    assert card["max_grad_norm"] == 1.0 and card["delta"] == DELTA and card["epsilon_target"] == target
    assert 0.99 * target <= card["epsilon_spent"] <= target
    assert card["noise_multiplier"] == calibrate_noise_multiplier(target, DELTA, q, steps, accountant="prv",
                                                                  rel_tol=0.01)
    assert card["max_records_per_patient"] == 2
    # N and the per-patient count come from the private data: the card says they are treated as public
    assert card["n_records"] == n_train and "public" in card["adjacency"]
    assert any("max_records_per_patient" in t for t in card["treated_as_public"])
    assert any(f"N = {n_train}" in t for t in card["treated_as_public"])
    assert card["per_patient_guarantee"]["epsilon"] == pytest.approx(2 * card["epsilon_spent"])
    whats = " ".join(e["what"] + e["source"] for e in card["non_private_inputs"])
    assert "public cohort X" in whats and "normalisation" in whats
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and hist["epsilon"].iloc[-1] == pytest.approx(card["epsilon_spent"])
    assert {"train_loss", "val_auroc"} <= set(hist.columns)

    pred = pd.read_parquet(out / "predictions.parquet")
    cols = ["record_id", "split", "sex", "age", "age_group"] + [c for lb in LABELS for c in (f"y_{lb}", f"score_{lb}")]
    assert list(pred.columns) == cols
    assert len(pred) == 64 and (pred["split"] == "val").sum() == 32 and (pred["split"] == "test").sum() == 32
    assert pred["record_id"].is_unique
    assert set(pred["y_blob_a"].unique()) <= {0, 1}
    assert pred[[f"score_{lb}" for lb in LABELS]].stack().between(0, 1).all()
    man = pd.read_parquet(cohort[1]).set_index("record_id")
    assert (pred.set_index("record_id")["y_blob_b"] == man.loc[pred["record_id"], "label_blob_b"]).all()
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["labels"] == LABELS and model["model_cfg"]["num_labels"] == 2
    assert model["model_cfg"]["activation"] == "mish"  # methods.md A: Mish under DP
    assert not (out / "checkpoint.pt").exists()


def test_dp_refuses_batchnorm_before_any_step(cohort, tmp_path, monkeypatch):
    import dpmed.models

    def bn_model(cfg):
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 2))

    monkeypatch.setattr(dpmed.models, "build_model", bn_model)
    stepped = []
    monkeypatch.setattr(torch.optim.NAdam, "step", lambda self, *a, **k: stepped.append(1))
    calibrated = []
    import dpmed.privacy.accounting as acc

    monkeypatch.setattr(acc, "calibrate_noise_multiplier", lambda *a, **k: calibrated.append(1) or 1.0)
    with pytest.raises(PrivacyError, match="BatchNorm"):
        _run(cohort, tmp_path, 1.0)
    assert not stepped and not calibrated and not (tmp_path / "checkpoint.pt").exists()


def test_settings_validation(cohort, tmp_path):
    with pytest.raises(ConfigError, match="unknown"):
        _run(cohort, tmp_path, math.inf, settings={"epochz": 2})
    with pytest.raises(ConfigError, match="augment"):
        _run(cohort, tmp_path, 1.0, settings={"augment": True})
    with pytest.raises(ConfigError, match="delta"):
        _run(cohort, tmp_path, 1.0, settings={"delta": None})


# ----------------------------------------------------------------------------- learnability
def test_learnable_and_ordered_by_epsilon(cohort, tmp_path):
    common = {"epochs": 4, "batch_size": 16, "physical_batch_size": 16, "lr": 3e-3}
    nonpriv = _run(cohort, tmp_path / "inf", math.inf, settings=common)
    big = _run(cohort, tmp_path / "big", 50.0, settings={**common, "max_grad_norm": 1.0})
    tiny = _run(cohort, tmp_path / "tiny", 0.05, settings={**common, "max_grad_norm": 1.0})
    assert nonpriv["test_auroc"] > 0.8
    assert nonpriv["test_auroc"] >= big["test_auroc"] >= tiny["test_auroc"]
    assert nonpriv["loss_pos_weight"] is not None  # non-private: inverted class frequencies
    assert big["noise_multiplier"] < tiny["noise_multiplier"]
    activation = {run: torch.load(tmp_path / run / "model.pt", weights_only=True)["model_cfg"]["activation"]
                  for run in ("inf", "big")}
    assert activation == {"inf": "relu", "big": "mish"}


# ----------------------------------------------------------------------------- init weights
def test_init_weights_2d_to_3d_and_head_reinit(tmp_path):
    from dpmed.models import build_model

    m2 = build_model({**CFG, "num_labels": 3})
    path = tmp_path / "model.pt"
    torch.save({"state_dict": m2.state_dict(), "model_cfg": m2.config(), "labels": ["x", "y", "z"]}, path)
    m3 = build_model({**CFG, "dims": 3, "num_labels": 2})
    head = {k: v.clone() for k, v in m3.state_dict().items() if k.startswith("fc.")}
    info = clf._init_from(m3, path, ["a", "b"])
    assert info["head_reinitialised"]
    sd2, sd3 = m2.state_dict(), m3.state_dict()
    assert all(torch.equal(sd2[k], sd3[k]) for k in sd3 if not k.startswith("fc."))
    assert all(torch.equal(head[k], sd3[k]) for k in head)
    m2b = build_model({**CFG, "num_labels": 3})
    info = clf._init_from(m2b, path, ["x", "y", "z"])
    assert not info["head_reinitialised"] and torch.equal(m2b.fc.weight, m2.fc.weight)


# ----------------------------------------------------------------------------- 3D (ACS) under DP
def test_ct_volumes_dp_from_2d_init(tmp_path):
    from dpmed.models import build_model
    from training_helpers import make_ct_cohort

    paths, man = make_ct_cohort(tmp_path)
    m2 = build_model({**CFG, "num_labels": 2})
    init = tmp_path / "pre.pt"
    torch.save({"state_dict": m2.state_dict(), "model_cfg": m2.config(), "labels": LABELS}, init)
    res = clf.train_classifier(
        train_h5=paths["train"], val_h5=paths["val"], test_h5=paths["test"], manifest=man, labels=["pdac"],
        outputs=clf.ClassifierOutputs.in_folder(tmp_path / "out"), checkpoint=None, epsilon=8.0, seed=0, init_weights=init,
        settings={"epochs": 1, "batch_size": 6, "physical_batch_size": 4, "lr": 1e-3, "delta": DELTA,
                  "accountant": "rdp", "max_grad_norm": 1.0},
        model_cfg={**CFG, "dims": 3, "activation": "mish"},
    )
    assert res["steps"] == 2 and res["init"]["head_reinitialised"]
    card = read_privacy_card(tmp_path / "out" / "privacy.json")
    assert card["max_records_per_patient"] == 1 and card["epsilon_spent"] <= 8.0
    assert any("initial model weights" in e["what"] for e in card["non_private_inputs"])
    pred = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert len(pred) == 8 and {"y_pdac", "score_pdac"} <= set(pred.columns)


@pytest.mark.parametrize("mode", ["hooks", "bk"])
def test_dp_empty_poisson_batches_are_noise_steps(tmp_path, mode):
    paths, man = make_cohort(tmp_path, sizes=(12, 4, 4), size=16)
    empties = []
    orig = engine_trainer.PrivateTrainer.private_step

    def spy(self, batch, step):
        if batch is None:
            empties.append(1)
        return orig(self, batch, step)

    mp = pytest.MonkeyPatch()
    mp.setattr(engine_trainer.PrivateTrainer, "private_step", spy)
    try:
        res = clf.train_classifier(
            train_h5=paths["train"], val_h5=paths["val"], test_h5=None, manifest=man, labels=LABELS,
            outputs=clf.ClassifierOutputs.in_folder(tmp_path / "o"), checkpoint=None, epsilon=10.0, seed=5,
            settings={"epochs": 2, "batch_size": 1, "lr": 1e-3, "delta": DELTA, "accountant": "rdp",
                      "grad_sample_mode": mode},
            model_cfg={**CFG, "activation": "mish"},
        )
    finally:
        mp.undo()
    assert res["steps"] == 24 and empties  # q = 1/12: P(no empty batch in 24 draws) ~ 3e-5
    assert np.isnan(res["test_auroc"])
    pred = pd.read_parquet(tmp_path / "o" / "predictions.parquet")
    assert set(pred["split"]) == {"val"}


# ----------------------------------------------------------------------------- study B additions
def _dp_generator_guarantee(eps=4.0, steps=20, q=0.1):
    """A DP-MCGAN-like generator guarantee: post-processing of a DP-SGD run with its history."""
    from dpmed.privacy.accounting import calibrate_noise_multiplier
    from dpmed.privacy.guarantee import Guarantee, post_processing

    sigma = calibrate_noise_multiplier(eps, DELTA, q, steps, accountant="rdp", rel_tol=0.01)
    d = Guarantee(kind="central", unit="record", epsilon=eps, delta=DELTA, mechanism="dp-sgd",
                  parameters={"history": [[sigma, q, steps]], "accountant": "rdp"}, released="D")
    return post_processing(d, released="generator")


def test_head_only_finetune_external_predictions_and_composed_card(cohort, tmp_path):
    """trainable: head changes only fc; the external cohort is predicted (split external) with the
    configured subgroup column; a DP run on data from a DP generator composes both histories."""
    from dpmed.privacy.accounting import epsilon_for_history
    from dpmed.privacy.guarantee import Guarantee

    paths, man = cohort
    full = tmp_path / "full"
    _run(cohort, full, math.inf, settings={"epochs": 1})
    ext_man = pd.read_parquet(man).assign(site_group=lambda d: np.where(d.index % 2, "a", "b"))
    ext_man.to_parquet(tmp_path / "ext.parquet")
    gen = _dp_generator_guarantee()
    out = tmp_path / "ft"
    _run(cohort, out, 3.0, init_weights=full / "model.pt", settings={"epochs": 1, "trainable": "head"},
         external=(paths["test"], tmp_path / "ext.parquet"), subgroup_columns=["site_group", "missing_col"],
         data_guarantee=gen)
    before, after = _weights(full), _weights(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}
    pred = pd.read_parquet(out / "predictions.parquet")
    assert (pred["split"] == "external").sum() == 32 and "site_group" not in pred.columns  # not in the run's manifest
    g = Guarantee.from_dict(read_privacy_card(out / "privacy.json")["typed_guarantee"])
    assert g.kind == "composed" and len(g.derived_from) == 2
    hist = [tuple(h) for h in g.parameters["history"]]
    assert epsilon_for_history(hist, DELTA, "rdp") == pytest.approx(g.epsilon)
    assert 4.0 < g.epsilon < 7.0  # more than either part, less than their sum


@pytest.mark.parametrize("eps, synthetic_only, kind", [(math.inf, True, "derived"), (math.inf, False, "none")])
def test_card_of_a_non_private_run_on_generated_data(cohort, tmp_path, eps, synthetic_only, kind):
    """Synthetic-only and non-private: post-processing of the generator (its ε); with real records
    read without DP: no guarantee."""
    from dpmed.privacy.guarantee import Guarantee

    out = tmp_path / "run"
    _run(cohort, out, eps, settings={"epochs": 1}, data_guarantee=_dp_generator_guarantee(),
         synthetic_only=synthetic_only)
    g = Guarantee.from_dict(read_privacy_card(out / "privacy.json")["typed_guarantee"])
    assert g.kind == kind
    assert (g.epsilon == pytest.approx(4.0)) if kind == "derived" else not g.holds
