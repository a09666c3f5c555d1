"""Frozen-network embeddings of every record of one or more caches (methods C).

:func:`extract_embeddings` writes an HDF5 file with

* ``record_id`` (N,) UTF-8 strings, in cache order, caches concatenated in the given order;
* ``embedding`` (N, D) float32;
* ``split`` (N,) UTF-8 strings: the ``split`` attribute of the source cache (else its file stem);
* attributes ``encoder`` (JSON description), ``dim``, ``sources`` (JSON list of cache paths).

The file is written under a temporary name and renamed when complete.

Encoders
--------
``model_path`` is either

1. a dpmed ``model.pt`` (from :func:`dpmed.training.classifier.train_classifier`): the network
   without its classification head, i.e. the globally pooled penultimate features (ResNet9:
   ``D`` = channels of the last stage, 512 at width 1). Images are scaled exactly as in
   training (the model file's fixed normalisation constants and channel count); or
2. an encoder *spec* (a mapping, see :func:`load_encoder`): any ``torch.nn.Module`` built by a
   factory named by a dotted import path, with weights from a **local** file. Nothing is
   ever downloaded: a missing weights file is an error naming the file.

Using a DINOv2 checkpoint saved locally
---------------------------------------
On a machine with internet access, save the backbone's weights once, e.g.
``torch.save(torch.hub.load("facebookresearch/dinov2", "dinov2_vitb14").state_dict(),
"models/dinov2_vitb14.pth")``, and install the ``dinov2`` package (or vendor its code) in the
environment. Then::

    spec = {
        "module": "dinov2.hub.backbones:dinov2_vitb14",   # factory; returns an nn.Module
        "kwargs": {"pretrained": False},                  # build only, never download
        "weights": "models/dinov2_vitb14.pth",            # local state_dict
        "channels": 3,                                    # grey repeated to RGB
        "size": 224,                                      # resize (multiple of the 14 px patch)
        "mean": [0.485, 0.456, 0.406],                    # ImageNet constants (public, fixed)
        "std": [0.229, 0.224, 0.225],
    }
    extract_embeddings(spec, ["results/cxr/preprocessed/train.h5"], "emb.h5")

The DINOv2 backbone's ``forward`` returns the 768-d CLS embedding (ViT-B/14; 384-d for ViT-S/14).
For a Hugging Face ``transformers`` ``Dinov2Model`` use
``"module": "transformers:Dinov2Model.from_pretrained"``-style factories only with a local
directory, and ``"output": "pooler_output"`` to pick the field of the returned object.
The normalisation constants of a public foundation model are public: no privacy cost.
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dpmed.errors import ConfigError
from dpmed.io.atomic import atomic_path
from dpmed.training.data import CacheDataset

_SPEC_KEYS = {"module", "weights", "kwargs", "state_dict_key", "strict", "channels", "size", "mean", "std", "output"}


class _Encoder(nn.Module):
    """Wraps a network: per-channel normalisation, optional resize, output selection."""

    def __init__(self, net: nn.Module, *, mean=None, std=None, size=None, output=None):
        super().__init__()
        self.net = net
        self.size = None if size is None else (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(v) for v in size)
        self.output = output
        self.register_buffer("mean", None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, *([1] * 2)))
        self.register_buffer("std", None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, *([1] * 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None:
            if x.dim() != 4:
                raise ConfigError("resizing is supported for 2D images only")
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        out = self.net(x)
        if self.output is not None:
            out = out[self.output] if isinstance(self.output, int) or isinstance(out, Mapping) else getattr(out, self.output)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"encoder returned {type(out).__name__}; set 'output' to select the embedding")
        return out.flatten(1)


def _import_factory(path: str):
    if ":" in path:
        mod_name, attr = path.split(":", 1)
    elif "." in path:
        mod_name, attr = path.rsplit(".", 1)
    else:
        raise ConfigError(f"encoder module {path!r} must look like 'package.module:factory'")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"cannot import encoder module {mod_name!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{path!r} is not callable")
    return obj


def load_encoder(spec: Mapping[str, Any]) -> tuple[nn.Module, dict]:
    """Build an encoder from a spec; returns ``(module_in_eval_mode, input_description)``.

    Spec keys:

    ``module`` (required)
        ``"package.module:factory"`` (or ``"package.module.factory"``); the factory is called
        with ``kwargs`` and must return a ``torch.nn.Module`` (or a module class).
    ``weights`` (required)
        path of a local file holding a ``state_dict`` (``torch.save``); loaded with
        ``weights_only=True``. A missing file raises :class:`ConfigError` naming it.
    ``kwargs``: factory keyword arguments. ``state_dict_key``: take ``obj[key]`` from the loaded
    file (default: ``"state_dict"`` if present, else the object itself). ``strict``: passed to
    ``load_state_dict`` (default True).
    ``channels`` (default 3), ``size`` (resize to size x size, optional), ``mean``/``std``
    (per-channel constants applied after scaling to [0, 1], optional), ``output`` (field or index
    of the network's output holding the embedding, optional).
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"encoder spec must be a mapping, got {type(spec).__name__}")
    if spec.get("file"):
        return _load_file_encoder(spec)
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown encoder spec keys {unknown}; allowed: {sorted(_SPEC_KEYS)}")
    if not spec.get("module"):
        raise ConfigError("encoder spec needs 'module' ('package.module:factory')")
    if not spec.get("weights"):
        raise ConfigError("encoder spec needs 'weights' (a local weights file; nothing is downloaded)")
    weights = Path(spec["weights"])
    if not weights.is_file():
        raise ConfigError(
            f"encoder weights file {weights} not found; save the weights locally first "
            "(dpmed never downloads models)"
        )
    factory = _import_factory(str(spec["module"]))
    net = factory(**dict(spec.get("kwargs") or {}))
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{spec['module']!r} returned {type(net).__name__}, not a torch.nn.Module")
    obj = torch.load(weights, map_location="cpu", weights_only=True)
    key = spec.get("state_dict_key")
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise ConfigError(f"{weights}: no entry {key!r}")
        obj = obj[key]
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{weights}: does not hold a state_dict")
    try:
        net.load_state_dict(obj, strict=bool(spec.get("strict", True)))
    except RuntimeError as e:
        raise ConfigError(f"{weights}: weights do not fit {spec['module']!r}: {str(e)[:500]}") from None
    channels = int(spec.get("channels", 3))
    mean, std = spec.get("mean"), spec.get("std")
    if (mean is None) != (std is None):
        raise ConfigError("encoder spec: give both 'mean' and 'std' or neither")
    if mean is not None:
        mean = [float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean] * channels)]
        std = [float(v) for v in (std if isinstance(std, (list, tuple)) else [std] * channels)]
        if len(mean) != channels or len(std) != channels or not all(v > 0 for v in std):
            raise ConfigError(f"encoder spec: mean/std need {channels} values (std > 0)")
    enc = _Encoder(net, mean=mean, std=std, size=spec.get("size"), output=spec.get("output")).eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    desc = {
        "kind": "spec", "module": str(spec["module"]), "weights": str(weights),
        "channels": channels, "size": spec.get("size"), "mean": mean, "std": std,
        # dataset scaling: value_range -> [0, 1] only; the per-channel constants are in the encoder
        "dataset_mean": 0.0, "dataset_std": 1.0,
    }
    return enc, desc


def _load_file_encoder(spec: Mapping[str, Any]) -> tuple[nn.Module, dict]:
    """A TorchScript / ``torch.export`` encoder file (``file``), fed ``channels`` × ``size``² images
    scaled to [0, 1]; ``dim`` (optional) is the embedding length it must return.

    Raises :class:`~dpmed.errors.ModelFileError` naming the file when it does not load or
    returns the wrong shape (checked on a probe batch before any record is embedded).
    """
    from dpmed.errors import ModelFileError
    from dpmed.models.encoders import load_encoder_file

    channels = int(spec.get("channels", 3))
    if not spec.get("size"):
        raise ConfigError("an encoder 'file' needs 'size' (the square input side it expects)")
    size = int(spec["size"])
    net, _ = load_encoder_file(spec["file"], (channels, size, size), spec.get("dim"))
    try:  # the pipeline feeds batches of any size: an export traced with a fixed batch fails here
        with torch.no_grad():
            net(torch.zeros((3, channels, size, size)))
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"encoder file {Path(spec['file']).name}: fails on a batch of 3 images "
                             f"({type(exc).__name__}); export it with a dynamic batch dimension") from None
    enc = _Encoder(net, mean=None, std=None, size=size, output=None)
    enc.training = False  # not .eval(): an exported program's module refuses train()/eval() (it is in eval)
    desc = {"kind": "file", "file": str(spec["file"]), "channels": channels, "size": size,
            "dataset_mean": 0.0, "dataset_std": 1.0}
    return enc, desc


def load_classifier_encoder(model_path: str | Path) -> tuple[nn.Module, dict]:
    """A dpmed ``model.pt`` as a feature extractor: the network with its head replaced by
    ``Identity`` (globally pooled penultimate features)."""
    from dpmed.models import build_model
    from dpmed.training.classifier import load_model_file

    obj = load_model_file(model_path)
    net = build_model(obj["model_cfg"])
    net.load_state_dict(obj["state_dict"])
    if not hasattr(net, "fc"):
        raise ConfigError(f"{model_path}: network has no 'fc' head to remove")
    feat = copy.deepcopy(net)
    feat.fc = nn.Identity()
    feat.eval()
    for p in feat.parameters():
        p.requires_grad_(False)
    norm = dict(obj.get("normalization") or {})
    desc = {
        "kind": "dpmed-model", "path": str(model_path), "model_cfg": dict(obj["model_cfg"]),
        "channels": int(norm.get("channels", obj["model_cfg"].get("in_channels", 1) or 1)),
        "dataset_mean": float(norm.get("mean", 0.5)), "dataset_std": float(norm.get("std", 0.25)),
    }
    return feat, desc


def extract_embeddings(model_path, cache_paths: Sequence, out_path, device: str = "auto",
                       batch_size: int = 64) -> dict:
    """Embed every record of every cache with a frozen encoder and write ``out_path`` (HDF5).

    ``model_path``: a dpmed ``model.pt`` path, or an encoder spec mapping (see :func:`load_encoder`).
    Returns ``{"n": N, "dim": D, "out_path": ...}``.
    """
    if isinstance(model_path, Mapping):
        enc, desc = load_encoder(model_path)
    else:
        enc, desc = load_classifier_encoder(model_path)
    if isinstance(cache_paths, (str, Path)):
        cache_paths = [cache_paths]
    if not cache_paths:
        raise ConfigError("extract_embeddings: no caches given")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
    dev = torch.device("cuda" if (device in (None, "auto") and torch.cuda.is_available()) else
                       ("cpu" if device in (None, "auto") else device))
    enc = enc.to(dev)

    ids: list[str] = []
    splits: list[str] = []
    chunks: list[np.ndarray] = []
    for cp in cache_paths:
        ds = CacheDataset(cp, None, None, channels=desc["channels"], mean=desc["dataset_mean"], std=desc["dataset_std"])
        with h5py.File(cp, "r") as fh:
            sp = fh.attrs.get("split", Path(cp).stem)
        sp = sp.decode() if isinstance(sp, bytes) else str(sp)
        with torch.no_grad():
            for i in range(0, len(ds), int(batch_size)):
                x = torch.stack([ds.image(j) for j in range(i, min(i + int(batch_size), len(ds)))]).to(dev)
                chunks.append(enc(x).float().cpu().numpy())
        ids += ds.record_ids
        splits += [sp] * len(ds)
        ds.close()
    seen = set()
    for r in ids:
        if r in seen:
            raise ConfigError(f"record_id {r!r} occurs in more than one cache / twice")
        seen.add(r)
    emb = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, 0), dtype=np.float32)
    dim = int(emb.shape[1]) if emb.ndim == 2 else 0
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("record_id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            fh.create_dataset("embedding", data=emb.astype(np.float32))
            fh.create_dataset("split", data=np.array(splits, dtype=object), dtype=h5py.string_dtype("utf-8"))
            fh.attrs["encoder"] = json.dumps(desc, default=str)
            fh.attrs["dim"] = dim
            fh.attrs["sources"] = json.dumps([str(c) for c in cache_paths])
    return {"n": len(ids), "dim": dim, "out_path": str(out_path)}
