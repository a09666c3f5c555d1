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
``history.csv`` (one row per epoch). The loop is the training engine's non-private one
(:class:`dpmed.training.engine.PrivateTrainer` at ε = inf), which replaces the checkpoint
atomically after every epoch; a rerun with the same inputs and settings resumes after the last
finished epoch and produces bit-identical weights (CPU); one with different inputs refuses to
mix the two. Randomness (initial weights, shuffling, input noise) derives from the seeds in the
settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from dpmed.errors import ConfigError, DpmedError
from dpmed.io.atomic import atomic_path, write_csv
from dpmed.settings import settings_from_mapping
from dpmed.models.inn import (
    ConditionalINN,
    INNSettings,
    InvertibilityError,
    bits_per_dim,
    bits_per_dim_per_sample,
    build_inn,
    check_invertible,
    label_condition,
    reconstruction_error,
    trainable_parameters,
)
from dpmed.training.data import CacheDataset
from dpmed.training.engine import EngineSettings, PrivateTrainer

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


class _ClipThenStep:
    """The optimizer with the gradient's global norm clipped before each step (stability only,
    not privacy); what the engine calls of an optimizer is delegated."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list, max_norm: float):
        self.optimizer, self.params, self.max_norm = optimizer, params, float(max_norm)

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


def _nll_step(s: INNTrainSettings, noise: torch.Generator):
    """The engine's step: per-sample bits/dim of the noisy inputs (input noise in training only)."""

    def losses(model: ConditionalINN, batch) -> torch.Tensor:
        x, y = batch
        if s.input_noise > 0:  # dequantisation / smoothing noise from the run's public task generator
            x = x + s.input_noise * torch.randn(x.shape, generator=noise).to(x.device)
        bpd = bits_per_dim_per_sample(*model(x, label_condition(y).to(x.device)))
        if not torch.isfinite(bpd).all():
            raise INNTrainingError("INN training diverged (non-finite loss); lower lr or set grad_clip_norm")
        return bpd

    return losses


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train_inn(*, train_h5, holdout_h5, manifest, labels: Sequence[str], out_dir, inn: INNSettings,
              settings: INNTrainSettings, trained_on: INNTrainingData, checkpoint=None) -> dict[str, Any]:
    """Train the cINN on ``train_h5``, check it inverts on ``holdout_h5``, write ``inn.pt``.

    Runs through the training engine's non-private loop (:class:`~dpmed.training.engine.PrivateTrainer`
    at ε = inf: shuffled batches from the config seed, checkpoint and resume, one progress line
    per epoch), as every trainer does.

    Parameters
    ----------
    train_h5, holdout_h5: 2D HDF5 caches (:mod:`dpmed.io.cache`) of the cohort in ``trained_on``
        (e.g. its train and val splits); images must be ``inn.image_size`` square.
    manifest: ``manifest.parquet`` (path or DataFrame) with ``label_<name>`` columns.
    labels: label names; the condition is :func:`~dpmed.models.inn.label_condition` of them.
    out_dir: folder for ``inn.pt`` and ``history.csv``.
    inn, settings: network sizes and training settings.
    trained_on: provenance recorded in ``inn.pt`` (and later on every CADP guarantee).
    checkpoint: where the per-epoch resumable state goes (a workflow keeps it under its private
        directory); None = ``out_dir / "checkpoint.pt"``.

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
    ckpt_path = Path(checkpoint) if checkpoint is not None else out_dir / CHECKPOINT_NAME
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

    net = build_inn(inn).to(dev)
    params = trainable_parameters(net)
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    if settings.grad_clip_norm is not None:
        optimizer = _ClipThenStep(optimizer, params, settings.grad_clip_norm)
    trainer = PrivateTrainer(EngineSettings(epochs=settings.epochs, batch_size=settings.batch_size), net, optimizer,
                             train_ds, seed=settings.seed, device=dev, checkpoint=ckpt_path, fingerprint=fingerprint)

    def evaluate(epoch: int) -> dict:
        bpd, err = _holdout_metrics(net, x_hold, c_hold)
        net.train()
        return {"holdout_bpd": bpd, "recon_error": err}

    net.train()
    trainer.run_epochs(settings.epochs - trainer.epochs_done, _nll_step(settings, trainer.task_generator),
                       evaluate=evaluate)
    history = [{"epoch": r["epoch"], "train_bpd": r["train_loss"], "holdout_bpd": r["holdout_bpd"],
                "recon_error": r["recon_error"], "seconds": r["seconds"]} for r in trainer.history]
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
        trainer.remove_checkpoint()
    return {"history": history, "reconstruction_error": err, "holdout_bpd": hold_bpd,
            "resumed_from_epoch": trainer.resumed_from, "inn_path": str(out_dir / "inn.pt")}


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
