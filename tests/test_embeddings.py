"""Frozen-network embeddings: shapes, record ids, encoder specs, no downloads."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from dpmed.errors import ConfigError
from dpmed.models import build_model
from dpmed.training.classifier import predict
from dpmed.training.data import CacheDataset
from dpmed.training.embeddings import extract_embeddings, load_encoder

from training_helpers import LABELS, make_cohort

CFG = {"width": 0.125, "groups": 8, "in_channels": 1, "num_labels": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    paths, man = make_cohort(root, sizes=(10, 6, 4), size=16)
    torch.manual_seed(0)
    net = build_model(CFG)
    model_path = root / "model.pt"
    torch.save({"state_dict": net.state_dict(), "model_cfg": net.config(), "labels": LABELS,
                "normalization": {"mean": 0.5, "std": 0.25, "channels": 1}}, model_path)
    return root, paths, man, net, model_path


def test_embeddings_of_trained_model(setup, tmp_path):
    root, paths, man, net, model_path = setup
    out = tmp_path / "emb.h5"
    res = extract_embeddings(model_path, [paths["train"], paths["val"]], out, device="cpu", batch_size=4)
    d = net.channels[-1]  # penultimate = pooled last-stage features
    assert res == {"n": 16, "dim": d, "out_path": str(out)}
    with h5py.File(out) as fh:
        ids = [s.decode() for s in fh["record_id"][()]]
        emb = fh["embedding"][()]
        splits = [s.decode() for s in fh["split"][()]]
    assert emb.shape == (16, d) and emb.dtype == np.float32
    assert ids == [f"train-{i:04d}" for i in range(10)] + [f"val-{i:04d}" for i in range(6)]
    assert splits == ["train"] * 10 + ["val"] * 6
    # the head applied to the embeddings reproduces the classifier's outputs
    ds = CacheDataset(paths["train"], man, LABELS)
    scores = predict(net, ds, 8, torch.device("cpu"))
    with torch.no_grad():
        again = torch.sigmoid(net.fc(torch.from_numpy(emb[:10]))).numpy()
    np.testing.assert_allclose(again, scores, rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".*partial"))


def test_encoder_spec_local_weights(setup, tmp_path):
    root, paths, man, net, model_path = setup
    torch.manual_seed(1)
    enc_net = build_model({**CFG, "in_channels": 3, "num_labels": 5})
    weights = tmp_path / "encoder.pth"
    torch.save(enc_net.state_dict(), weights)
    spec = {"module": "dpmed.models:build_model", "kwargs": {"cfg": {**CFG, "in_channels": 3, "num_labels": 5}},
            "weights": str(weights), "channels": 3, "size": 32,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    enc, desc = load_encoder(spec)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    out = tmp_path / "spec.h5"
    res = extract_embeddings(spec, [paths["test"]], out, device="cpu")
    assert res["n"] == 4 and res["dim"] == 5
    with h5py.File(out) as fh:
        assert fh["embedding"].shape == (4, 5)


def test_load_encoder_missing_weights_names_file(tmp_path):
    missing = tmp_path / "dinov2_vitb14.pth"
    with pytest.raises(ConfigError, match="dinov2_vitb14.pth"):
        load_encoder({"module": "dpmed.models:build_model", "weights": str(missing)})
    with pytest.raises(ConfigError, match="weights"):
        load_encoder({"module": "dpmed.models:build_model"})
    with pytest.raises(ConfigError, match="unknown"):
        load_encoder({"module": "x:y", "weights": str(missing), "url": "https://example.org"})
