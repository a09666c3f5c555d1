"""Train the conditional INN of content-aware DP (methods.md D) — without privacy.

The network is trained by maximum likelihood (loss :func:`~dpmed.models.inn.bits_per_dim`) on
images scaled to [0, 1] with fixed constants (the cache's ``value_range``; no data statistics),
plus Gaussian input noise (σ = ``input_noise``, 0.1 in the paper) during training only. Adam,
``lr`` 3e-4 and batch 64 in the paper.

Privacy: this training is **not** private. By default the network is trained on the *public*
cohort, so its weights carry no information about the records it later privatises. A config may
train it on the private cohort instead; :class:`INNTrainingData` records which, and the CADP
guarantee (:func:`dpmed.privacy.cadp.cadp_guarantee`) then says that the network is a
non-private function of those images.

Invertibility is checked, not assumed: after every epoch max |f⁻¹(f(x)) − x| on a held-out
batch is logged, and the run fails (:class:`~dpmed.models.inn.InvertibilityError`, no
``inn.pt`` written) if the final network exceeds ``recon_tolerance``.

Outputs in ``out_dir``: ``inn.pt`` (weights + settings + provenance, see :func:`load_inn`),
``history.csv`` (one row per epoch). ``checkpoint.pt`` is replaced atomically after every
epoch; a rerun with the same inputs and settings resumes after the last finished epoch and
produces bit-identical weights (CPU); one with different inputs refuses to mix the two.
Randomness (initial weights, shuffling, input noise) derives from the seeds in the settings.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from dpmed.errors import ConfigError, DpmedError
from dpmed.io.atomic import atomic_path, write_csv
from dpmed.models.inn import (
    ConditionalINN,
    INNSettings,
    InvertibilityError,
    bits_per_dim,
    build_inn,
    check_invertible,
    label_condition,
    reconstruction_error,
    settings_from_mapping,
    trainable_parameters,
)
from dpmed.training.data import CacheDataset

__all__ = ["INNTrainSettings", "INNTrainingData", "INNTrainingError", "load_inn", "open_image_cache", "train_inn"]

INN_FORMAT = "dpmed-cinn-v1"
CHECKPOINT_NAME = "checkpoint.pt"
ROLES = ("public", "private")


class INNTrainingError(DpmedError):
    """INN training failed (diverged: non-finite loss)."""


@dataclass(frozen=True)
class INNTrainSettings:
    """How the INN is trained.

    Attributes
    ----------
    epochs, batch_size, lr: Adam training (paper: lr 3e-4, batch 64).
    input_noise: σ of the Gaussian noise added to training inputs in [0, 1] (paper 0.1); 0 = none.
    grad_clip_norm: clip the gradient's global norm (stability only, not privacy); None = off.
    holdout_size: images of the held-out cache used for the invertibility check and held-out bpd.
    recon_tolerance: largest allowed max |f⁻¹(f(x)) − x| (default 1e-3, a quarter of one 8-bit grey level).
    seed: shuffling and input noise (the network's initial weights come from ``INNSettings.seed``).
    device: ``"auto"`` (CUDA if available) or a torch device string.
    keep_checkpoint: keep ``checkpoint.pt`` after success.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-4
    input_noise: float = 0.1
    grad_clip_norm: float | None = None
    holdout_size: int = 64
    recon_tolerance: float = 1e-3
    seed: int = 0
    device: str = "auto"
    keep_checkpoint: bool = False

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.holdout_size < 1:
            raise ConfigError("INN training epochs, batch_size and holdout_size must be >= 1")
        if not (self.lr > 0) or self.input_noise < 0 or not (self.recon_tolerance > 0):
            raise ConfigError("INN training needs lr > 0, input_noise >= 0 and recon_tolerance > 0")
        if self.grad_clip_norm is not None and not (self.grad_clip_norm > 0):
            raise ConfigError(f"grad_clip_norm must be > 0 or None, got {self.grad_clip_norm!r}")

    @classmethod
    def from_mapping(cls, mapping) -> "INNTrainSettings":
        return settings_from_mapping(cls, mapping, "INN training")


@dataclass(frozen=True)
class INNTrainingData:
    """What the INN is trained on: the cohort, its split, and whether it is the public one."""

    dataset: str
    split: str = "train"
    role: str = "public"

    def __post_init__(self):
        if self.role not in ROLES:
            raise ConfigError(f"INN training data role must be one of {ROLES}, got {self.role!r}")

    def describe(self) -> str:
        return f"{self.dataset}/{self.split} ({self.role} cohort)"


def _resolve_device(device: str) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _hash_ids(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for r in ids:
        h.update(r.encode() + b"\0")
    return h.hexdigest()[:16]


def open_image_cache(path, manifest, labels: Sequence[str], inn: INNSettings) -> CacheDataset:
    """A 2D cache as images in [0, 1] (fixed scaling from ``value_range``) with 0/1 label targets.

    Raises
    ------
    ConfigError: the cache's image size or the number of labels does not fit the network.
    """
    ds = CacheDataset(path, manifest, list(labels), channels=inn.channels, mean=0.0, std=1.0)
    if ds.sample_shape != (inn.image_size, inn.image_size):
        raise ConfigError(f"cache {path}: images of shape {ds.sample_shape}, but the INN expects "
                          f"{inn.image_size}×{inn.image_size} (2D caches only)")
    if 2 * len(labels) != inn.n_conditions:
        raise ConfigError(f"the INN has n_conditions = {inn.n_conditions}, but {len(labels)} label(s) "
                          f"give a condition of {2 * len(labels)} values")
    return ds


def _holdout_batch(ds: CacheDataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = range(min(n, len(ds)))
    x = torch.stack([ds.image(i) for i in idx])
    return x, label_condition(ds.targets[list(idx)])


@torch.no_grad()
def _holdout_metrics(net: ConditionalINN, x: torch.Tensor, c: torch.Tensor) -> tuple[float, float]:
    net.eval()
    z, jac = net(x, c)
    bpd = float(bits_per_dim(z, jac))
    return bpd, reconstruction_error(net, x, c)


def _train_epoch(net, optimizer, loader, noise_gen, s: INNTrainSettings, dev, epoch: int) -> float:
    net.train()
    total, count = 0.0, 0
    for step, (x, y) in enumerate(loader):
        if s.input_noise > 0:  # dequantisation / smoothing noise, training only
            x = x + s.input_noise * torch.randn(x.shape, generator=noise_gen)
        x, c = x.to(dev), label_condition(y).to(dev)
        z, jac = net(x, c)
        loss = bits_per_dim(z, jac)
        if not torch.isfinite(loss):
            raise INNTrainingError(f"INN training diverged at epoch {epoch + 1}, step {step + 1} "
                                   f"(loss {float(loss)}); lower lr or set grad_clip_norm")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable_parameters(net), s.grad_clip_norm)
        optimizer.step()
        total += float(loss.detach()) * x.shape[0]
        count += x.shape[0]
    return total / max(count, 1)


def _on_epoch_end(epoch: int, out_dir: Path) -> None:
    """Called after each epoch's checkpoint is written (tests patch it to simulate a kill)."""


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train_inn(*, train_h5, holdout_h5, manifest, labels: Sequence[str], out_dir, inn: INNSettings,
              settings: INNTrainSettings, trained_on: INNTrainingData) -> dict[str, Any]:
    """Train the cINN on ``train_h5``, check it inverts on ``holdout_h5``, write ``inn.pt``.

    Parameters
    ----------
    train_h5, holdout_h5: 2D HDF5 caches (:mod:`dpmed.io.cache`) of the cohort in ``trained_on``
        (e.g. its train and val splits); images must be ``inn.image_size`` square.
    manifest: ``manifest.parquet`` (path or DataFrame) with ``label_<name>`` columns.
    labels: label names; the condition is :func:`~dpmed.models.inn.label_condition` of them.
    out_dir: folder for ``inn.pt``, ``history.csv`` and the checkpoint.
    inn, settings: network sizes and training settings.
    trained_on: provenance recorded in ``inn.pt`` (and later on every CADP guarantee).

    Returns
    -------
    dict with ``history`` (rows: epoch, train_bpd, holdout_bpd, recon_error, seconds),
    ``reconstruction_error``, ``holdout_bpd``, ``resumed_from_epoch``, ``inn_path``.

    Raises
    ------
    InvertibilityError: the final network's reconstruction error exceeds ``recon_tolerance``.
    INNTrainingError: non-finite loss.
    ConfigError: caches that do not fit the network; a checkpoint from different inputs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = _resolve_device(settings.device)
    labels = list(labels)
    train_ds = open_image_cache(train_h5, manifest, labels, inn)
    hold_ds = open_image_cache(holdout_h5, manifest, labels, inn)
    x_hold, c_hold = (t.to(dev) for t in _holdout_batch(hold_ds, settings.holdout_size))
    fingerprint = json.dumps({
        "inn": inn.to_dict(), "train": {k: v for k, v in asdict(settings).items() if k != "keep_checkpoint"},
        "trained_on": asdict(trained_on), "labels": labels, "train_ids": _hash_ids(train_ds.record_ids),
        "holdout_ids": _hash_ids(hold_ds.record_ids), "device": dev.type,
    }, sort_keys=True)

    seeds = np.random.SeedSequence([int(settings.seed), 0x1A8]).generate_state(2, dtype=np.uint64)
    gens = {"shuffle": torch.Generator().manual_seed(int(seeds[0]) >> 1),
            "noise": torch.Generator().manual_seed(int(seeds[1]) >> 1)}
    net = build_inn(inn).to(dev)
    optimizer = torch.optim.Adam(trainable_parameters(net), lr=settings.lr)
    loader = DataLoader(train_ds, batch_size=settings.batch_size, shuffle=True, generator=gens["shuffle"])
    history, start, resumed_from = _resume(out_dir / CHECKPOINT_NAME, fingerprint, net, optimizer, gens)

    for epoch in range(start, settings.epochs):
        t0 = time.perf_counter()
        train_bpd = _train_epoch(net, optimizer, loader, gens["noise"], settings, dev, epoch)
        hold_bpd, err = _holdout_metrics(net, x_hold, c_hold)
        history.append({"epoch": epoch + 1, "train_bpd": train_bpd, "holdout_bpd": hold_bpd,
                        "recon_error": err, "seconds": time.perf_counter() - t0})
        _save({"fingerprint": fingerprint, "epoch": epoch + 1, "model": net.state_dict(),
               "optimizer": optimizer.state_dict(), "history": history,
               "rng": {k: g.get_state() for k, g in gens.items()}}, out_dir / CHECKPOINT_NAME)
        _on_epoch_end(epoch + 1, out_dir)

    net.eval()
    err = check_invertible(net, x_hold, c_hold, settings.recon_tolerance,
                           where=f"held-out batch of {trained_on.dataset} ({len(x_hold)} images)")
    hold_bpd = history[-1]["holdout_bpd"]
    _save({"format": INN_FORMAT, "settings": inn.to_dict(), "state_dict": net.state_dict(), "labels": labels,
           "trained_on": asdict(trained_on), "train_settings": asdict(settings),
           "reconstruction_error": err, "recon_tolerance": settings.recon_tolerance, "holdout_bpd": hold_bpd},
          out_dir / "inn.pt")
    write_csv(pd.DataFrame(history), out_dir / "history.csv")
    if not settings.keep_checkpoint:
        (out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    return {"history": history, "reconstruction_error": err, "holdout_bpd": hold_bpd,
            "resumed_from_epoch": resumed_from, "inn_path": str(out_dir / "inn.pt")}


def _resume(path: Path, fingerprint: str, net, optimizer, gens) -> tuple[list[dict], int, int | None]:
    """Load a matching checkpoint into net/optimizer/generators; (history, start epoch, resumed_from)."""
    if not path.exists():
        return [], 0, None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("fingerprint") != fingerprint:
        raise ConfigError(f"{path} was written by an INN run with different inputs/settings; "
                          "delete it to start afresh (refusing to mix two runs)")
    net.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    for k, g in gens.items():
        g.set_state(ckpt["rng"][k])
    return list(ckpt["history"]), int(ckpt["epoch"]), int(ckpt["epoch"])


def load_inn(path, device: str | torch.device = "cpu") -> tuple[ConditionalINN, dict[str, Any]]:
    """Read ``inn.pt`` written by :func:`train_inn`.

    Returns
    -------
    (network in eval mode on ``device``, metadata: ``settings`` (:class:`INNSettings`), ``labels``,
    ``trained_on`` (:class:`INNTrainingData`), ``reconstruction_error``, ``recon_tolerance``,
    ``holdout_bpd``).

    Raises
    ------
    ConfigError: not an INN file of this format.
    InvertibilityError: its recorded reconstruction error exceeds its tolerance.
    """
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != INN_FORMAT:
        raise ConfigError(f"{path} is not an INN file written by dpmed (format {INN_FORMAT})")
    inn = INNSettings(**obj["settings"])
    if not (obj["reconstruction_error"] <= obj["recon_tolerance"]):
        raise InvertibilityError(f"{path}: recorded reconstruction error {obj['reconstruction_error']:.3g} "
                                 f"exceeds its tolerance {obj['recon_tolerance']:g}")
    net = build_inn(inn)
    net.load_state_dict(obj["state_dict"])
    net.to(device if isinstance(device, torch.device) else _resolve_device(device)).eval()
    meta = {k: obj[k] for k in ("labels", "reconstruction_error", "recon_tolerance", "holdout_bpd")}
    meta["settings"] = inn
    meta["trained_on"] = INNTrainingData(**obj["trained_on"])
    return net, meta
