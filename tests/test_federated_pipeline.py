"""Study C's workflow job on a small synthetic cohort: sites from the manifest, every method,
cards per client (ε recomputed by dp-accounting), per-site outputs, clear errors for bad sites."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from dpmed.errors import SiteError
from dpmed.federated.pipeline import FederatedJob, federate_dataset
from test_federated_private import dpa_epsilon

torch.set_num_threads(1)
LABELS = ["a", "b"]
SETTINGS = {"rounds": 2, "local_epochs": 1, "batch_size": 16, "lr": 1e-3, "max_grad_norm": 1.5, "delta": 1e-3,
            "accountant": "rdp", "n_synthetic": 100, "classifier_epochs": 5, "classifier_batch_size": 32}


def _cohort(tmp_path, n_per_site=(200, 220, 240), d=6, seed=0):
    rng = np.random.default_rng(seed)
    rows, emb = [], []
    for s, n in enumerate(n_per_site):
        for p in range(n):
            y = rng.integers(0, 2, 2)
            split = ("train", "train", "train", "val", "test")[p % 5]
            rows.append({"record_id": f"r{s}_{p:03d}", "patient_id": f"P{s}_{p}", "split": split, "site": f"S-{s}",
                         "sex": "MF"[p % 2], "age": 50.0 + p % 30, "age_group": ["[0,60)", "[60,100)"][p % 2],
                         "label_a": int(y[0]), "label_b": int(y[1])})
            emb.append(0.5 * y.sum() + rng.normal(size=d) + 0.3 * s)
    man = pd.DataFrame(rows)
    man.to_parquet(tmp_path / "manifest.parquet")
    with h5py.File(tmp_path / "emb.h5", "w") as fh:
        fh["record_id"] = np.array(man["record_id"], dtype=object).astype("S")
        fh["embedding"] = np.asarray(emb, np.float32)
    pub = pd.DataFrame({"record_id": [f"q{i}" for i in range(50)], "label_a": rng.integers(0, 2, 50),
                        "label_b": rng.integers(0, 2, 50)})
    pub.to_parquet(tmp_path / "public.parquet")
    with h5py.File(tmp_path / "public_emb.h5", "w") as fh:
        fh["record_id"] = np.array(pub["record_id"], dtype=object).astype("S")
        fh["embedding"] = rng.normal(size=(50, d)).astype(np.float32) * 1.5
    return man


def _job(eps, **settings):
    return FederatedJob.from_params({
        "dataset": "toy", "labels": LABELS, "task": "multilabel", "epsilon": eps, "seed": 0,
        "sites": {"column": "site"}, "bounds": {"source": "public", "margin": 0.05}, "synthetic_labels": "public",
        "public_dataset": "toy_public", "settings": {**SETTINGS, **settings}, "subgroups": ["sex"],
        "n_bootstrap": 20, "evaluation_seed": 0})


def _run(tmp_path, job):
    return federate_dataset(job, manifest=tmp_path / "manifest.parquet", embeddings=tmp_path / "emb.h5",
                            public_embeddings=tmp_path / "public_emb.h5", public_manifest=tmp_path / "public.parquet",
                            out_dir=tmp_path / "out", method_dir=tmp_path / "fed_cvae")


def test_federated_job_outputs_and_cards(tmp_path):
    man = _cohort(tmp_path)
    _run(tmp_path, _job(2.0))
    per_site = pd.read_csv(tmp_path / "out/per_site.csv")
    assert set(per_site["method"]) == {"fed_cvae", "fed_cvae_synthetic", "fed_cgan", "fed_cgan_synthetic",
                                       "fedavg", "fedprox", "local"}
    assert set(per_site["site"]) == {"S-0", "S-1", "S-2"}
    assert per_site["auroc"].between(0, 1).all() and (per_site["w2"].dropna() > 0).all()
    for method in ("fed_cvae", "fed_cgan", "fedavg", "fedprox"):
        eps_clients = []
        for k, n in enumerate((120, 132, 144)):  # training records per site (3 of every 5)
            card = json.loads((tmp_path / f"out/cards/{method}_client_{k}.json").read_text())
            steps = card["typed_guarantee"]["parameters"]["steps"]
            assert steps == 2 * 1 * max(1, int(np.floor(n / 16 + 0.5)))
            assert card["epsilon_spent"] == pytest.approx(
                dpa_epsilon(card["noise_multiplier"], card["sample_rate"], steps, card["delta"],
                           card["typed_guarantee"]["parameters"]["accountant"]), rel=0.02)
            eps_clients.append(card["epsilon_spent"])
        fed = json.loads((tmp_path / f"out/cards/{method}_federation.json").read_text())
        assert fed["epsilon_spent"] == pytest.approx(max(eps_clients)) and fed["kind"] == "derived"
        assert "public cohort toy_public" in json.dumps(fed)  # bounds and synthetic labels: public, said so
    pred = pd.read_parquet(tmp_path / "fed_cvae/predictions.parquet")
    assert sorted(pred["record_id"]) == sorted(man.loc[man["split"].isin(["val", "test"]), "record_id"])
    card = json.loads((tmp_path / "fed_cvae/privacy.json").read_text())
    assert card["unit"] == "record" and card["per_patient_guarantee"]
    sub = pd.read_parquet(tmp_path / "out/subgroups.parquet")
    assert {"S-0", "S-1", "S-2"} == set(sub["site"]) and "sex=F" in " ".join(map(str, sub["subgroup"].unique()))


def test_bad_sites_are_named(tmp_path):
    _cohort(tmp_path, n_per_site=(200, 20, 240))
    with pytest.raises(SiteError, match="site S-1: 12 training records, fewer than the batch size 16"):
        _run(tmp_path, _job(2.0))
    man = _cohort(tmp_path)
    man.loc[(man["site"] == "S-2") & (man["split"] == "test"), "label_b"] = 0
    man.to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(SiteError, match="site S-2: label 'b' has no positive record in the test split"):
        _run(tmp_path, _job(2.0))
