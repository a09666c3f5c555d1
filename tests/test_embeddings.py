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


class _Pool(torch.nn.Module):
    """A stand-in for a hospital's own foundation model: per-channel means and maxima, (B, 2C)."""

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_encoder_file_embeds_every_record(setup, tmp_path, kind):
    from dpmed.errors import ModelFileError

    root, paths, man, net, model_path = setup
    example = torch.zeros(2, 3, 24, 24)
    path = tmp_path / ("enc.pt" if kind == "torchscript" else "enc.pt2")
    if kind == "torchscript":
        torch.jit.save(torch.jit.trace(_Pool().eval(), example), str(path))
    else:
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.export.save(torch.export.export(_Pool().eval(), (example,), dynamic_shapes=({0: batch},)), str(path))
        static = tmp_path / "static.pt2"  # traced with a fixed batch of 2: refused, naming the file
        torch.export.save(torch.export.export(_Pool().eval(), (example,)), str(static))
        with pytest.raises(ModelFileError, match="encoder file static.pt2: fails on a batch of 3 images"):
            extract_embeddings({"file": str(static), "size": 24}, [paths["test"]], tmp_path / "s.h5")
    spec = {"file": str(path), "size": 24, "channels": 3, "dim": 6}
    res = extract_embeddings(spec, [paths["test"], paths["val"]], tmp_path / "f.h5", device="cpu")
    assert res["n"] == 10 and res["dim"] == 6
    with h5py.File(tmp_path / "f.h5") as fh:
        emb = fh["embedding"][()]
    # a constant-free grey image gives equal channel means (the three channels are copies)
    np.testing.assert_allclose(emb[:, 0], emb[:, 1], rtol=1e-6)
    with pytest.raises(ModelFileError, match=f"encoder file {path.name}: returns 6-d embeddings, the "
                                             "configuration expects 768"):
        extract_embeddings({**spec, "dim": 768}, [paths["test"]], tmp_path / "g.h5", device="cpu")
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="encoder file broken.pt: cannot be loaded"):
        extract_embeddings({**spec, "file": str(tmp_path / "broken.pt")}, [paths["test"]], tmp_path / "h.h5")
    assert not (tmp_path / "g.h5").exists() and not (tmp_path / "h.h5").exists()
