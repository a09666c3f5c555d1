"""The classification task on top of the training engine (methods A of the study).

:func:`train_classifier` trains one multi-label classifier (ResNet9-GN, 2D or ACS 3D),
non-private or with DP-SGD, through :class:`dpmed.training.engine.PrivateTrainer`; this
module holds only what is specific to classification: the loss and its class weights, the
validation AUROC per epoch (:func:`dpmed.evaluation.mean_auroc`), predictions and outputs.

Loss: BCE-with-logits with ``pos_weight``, the mean over labels per sample (the engine clips
and averages per sample). Non-private: ``pos_weight`` given by the caller, else the training
split's inverted class frequencies ``(N - n_pos) / n_pos``; augmentation (rotation ±10°,
horizontal flip) if ``settings["augment"]``. DP: ``pos_weight`` only from the caller (computed
on a public cohort: :func:`public_class_weights`) or unweighted -- class frequencies of the
private labels would leak outside the mechanism and are never computed; no augmentation;
:func:`dpmed.privacy.validation.assert_privatisable` runs before anything else.

Model selection: the released model is the last epoch's (ε is calibrated for the full run);
``history.csv`` holds the validation AUROC per epoch (validation split only, never test).

Checkpoint / resume: the engine writes the checkpoint (under the private directory: it holds
the secret noise seed) after every epoch; its fingerprint covers the settings and a hash of
the training images and labels, so a run whose data changed is refused rather than mixed.
The checkpoint is deleted once ``model.pt``, ``history.csv``, ``predictions.parquet`` and
``privacy.json`` are written (``settings["keep_checkpoint"] = True`` keeps it).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from dpmed.errors import ConfigError
from dpmed.settings import settings_from_mapping
from dpmed.evaluation import mean_auroc
from dpmed.io.atomic import atomic_path, write_csv, write_parquet
from dpmed.privacy.guarantee import Guarantee, NonPrivateInput, post_processing
from dpmed.training.augment import augment_batch
from dpmed.training.data import DEFAULT_MEAN, DEFAULT_STD, CacheDataset, read_manifest
from dpmed.training.engine import EngineSettings, PrivateTrainer, seed_globals

#: grad_sample_mode used when settings do not name one: dpmed's exact single-pass clipping,
#: the fastest on CPU (benchmarks/dp_overhead.py).
DEFAULT_GRAD_SAMPLE_MODE = "bk"
HISTORY_COLUMNS = ["epoch", "train_loss", "val_auroc", "epsilon", "steps", "seconds"]


# =====================================================================================
# settings and outputs
# =====================================================================================
@dataclass(frozen=True)
class TrainSettings:
    """The ``settings`` keys :func:`train_classifier` reads (unknown keys are refused)."""

    epochs: int
    batch_size: int
    lr: float
    physical_batch_size: int | None = None  # default: batch_size
    max_grad_norm: float = 1.5               # DP only (C)
    delta: float | None = None               # DP only; required for finite epsilon
    accountant: str = "prv"                  # "prv" | "rdp" | "pld"
    calibration_rel_tol: float = 0.01        # eps_spent in [(1 - tol) * target, target]
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE
    augment: bool = False                    # non-private only (refused under DP)
    norm_mean: float = DEFAULT_MEAN          # fixed normalisation constants
    norm_std: float = DEFAULT_STD
    eval_batch_size: int = 64
    num_workers: int = 0
    keep_checkpoint: bool = False
    in_memory_max_bytes: int = 256 * 2**20
    trainable: str = "all"                   # "all" | "head" (only the final linear layer trains)
    precision: str = "fp32"                  # forward/backward: "fp32" | "tf32" | "bf16" (clipping is float32)

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> "TrainSettings":
        types = {"epochs": int, "batch_size": int, "lr": float, "physical_batch_size": int, "max_grad_norm": float,
                 "delta": float, "accountant": str, "calibration_rel_tol": float, "grad_sample_mode": str,
                 "augment": bool, "norm_mean": float, "norm_std": float, "eval_batch_size": int, "num_workers": int,
                 "keep_checkpoint": bool, "in_memory_max_bytes": int, "trainable": str, "precision": str}
        s = settings_from_mapping(cls, settings, "training", required=("epochs", "batch_size", "lr"),
                                  convert=types, drop_none=True)
        if s.epochs < 1 or s.batch_size < 1 or (s.physical_batch_size or 1) < 1 or s.eval_batch_size < 1:
            raise ConfigError("epochs, batch_size, physical_batch_size and eval_batch_size must be >= 1")
        if not (s.lr > 0) or not (s.max_grad_norm > 0) or not (s.norm_std > 0):
            raise ConfigError("lr, max_grad_norm and norm_std must be > 0")
        if s.trainable not in ("all", "head"):
            raise ConfigError(f"trainable must be 'all' or 'head', got {s.trainable!r}")
        return s

    def engine(self, epsilon: float) -> EngineSettings:
        """The engine's share of the settings for a run at ``epsilon``."""
        if math.isfinite(epsilon) and self.augment:
            raise ConfigError("augmentation is for non-private training only (settings['augment'] must be false under DP)")
        return EngineSettings(
            epochs=self.epochs, batch_size=self.batch_size, epsilon=epsilon, delta=self.delta,
            max_grad_norm=self.max_grad_norm, physical_batch_size=self.physical_batch_size,
            accountant=self.accountant, calibration_rel_tol=self.calibration_rel_tol,
            grad_sample_mode=self.grad_sample_mode, num_workers=self.num_workers, precision=self.precision,
        )


@dataclass(frozen=True)
class ClassifierOutputs:
    """The files a run writes (explicit paths; ``predictions`` None: not written)."""

    model: Path
    history: Path
    privacy: Path
    predictions: Path | None = None

    @classmethod
    def in_folder(cls, folder: str | Path, predictions: bool = True) -> "ClassifierOutputs":
        """``model.pt``, ``history.csv``, ``privacy.json`` (and ``predictions.parquet``) in ``folder``."""
        f = Path(folder)
        return cls(f / "model.pt", f / "history.csv", f / "privacy.json",
                   f / "predictions.parquet" if predictions else None)


# =====================================================================================
# helpers
# =====================================================================================
def _resolve_device(device: str) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _pos_weight_tensor(pos_weight, labels: Sequence[str]) -> torch.Tensor | None:
    if pos_weight is None:
        return None
    if isinstance(pos_weight, Mapping):
        missing = [lb for lb in labels if lb not in pos_weight]
        if missing:
            raise ConfigError(f"pos_weight has no value for labels {missing}")
        vals = [float(pos_weight[lb]) for lb in labels]
    elif isinstance(pos_weight, (int, float)):
        vals = [float(pos_weight)] * len(labels)
    else:
        vals = [float(v) for v in torch.as_tensor(pos_weight).reshape(-1).tolist()]
    if len(vals) != len(labels):
        raise ConfigError(f"pos_weight has {len(vals)} values for {len(labels)} labels")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise ConfigError(f"pos_weight values must be finite and > 0, got {vals}")
    return torch.tensor(vals, dtype=torch.float32)


def class_balance_pos_weight(targets: torch.Tensor) -> torch.Tensor:
    """``(N - n_pos) / n_pos`` per label from a ``(N, L)`` 0/1 target matrix (n_pos >= 1 guard).

    NON-PRIVATE: only ever called on the training split of non-private runs (or on a public
    cohort by the caller).
    """
    n = targets.shape[0]
    n_pos = targets.sum(0).clamp_min(1.0)
    return ((n - n_pos) / n_pos).clamp_min(1e-6).to(torch.float32)


@torch.no_grad()
def predict(net: nn.Module, ds: CacheDataset, batch_size: int, device: torch.device) -> np.ndarray:
    """Sigmoid scores ``(N, L)`` of ``net`` (eval mode) on every record of ``ds`` in order."""
    was = net.training
    net.eval()
    out = []
    try:
        for i in range(0, len(ds), batch_size):
            x = torch.stack([ds.image(j) for j in range(i, min(i + batch_size, len(ds)))]).to(device)
            out.append(torch.sigmoid(net(x).float()).cpu())
    finally:
        net.train(was)
    if not out:
        return np.zeros((0, getattr(net, "num_labels", 0)), dtype=np.float32)
    return torch.cat(out).numpy()


def load_model_file(path: str | Path) -> dict:
    """Read a ``model.pt`` written by :func:`train_classifier` (tensors only; no pickled code)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"model file {path} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "state_dict" not in obj or "model_cfg" not in obj:
        raise ConfigError(f"{path}: not a dpmed model file (needs 'state_dict' and 'model_cfg')")
    return obj


def _init_from(net: nn.Module, init_weights, labels: Sequence[str]) -> dict:
    """Load ``init_weights`` into ``net``; 2D -> ACS 3D conversion; head re-initialised if the
    labels differ. Returns a description for the privacy card / result."""
    from dpmed.models import build_model, convert_2d_weights_to_acs

    src = load_model_file(init_weights)
    src_cfg = dict(src["model_cfg"])
    src_labels = list(src.get("labels") or [])
    src_sd = src["state_dict"]
    if int(src_cfg.get("dims", 2)) == 2 and getattr(net, "dims", 2) == 3:
        m2 = build_model(src_cfg)
        m2.load_state_dict(src_sd)
        src_sd = convert_2d_weights_to_acs(m2).state_dict()
    own = net.state_dict()
    same_head = (src_labels == list(labels)) if src_labels else (
        "fc.weight" in src_sd and src_sd["fc.weight"].shape == own["fc.weight"].shape
    )
    skip = {k for k in own if k.startswith("fc.")} if not same_head else set()
    bad = [k for k in own if k not in skip and (k not in src_sd or src_sd[k].shape != own[k].shape)]
    if bad:
        raise ConfigError(
            f"init_weights {init_weights}: architecture does not match the model config "
            f"(mismatched {bad[:5]}); check width/groups/in_channels"
        )
    new = {k: (own[k] if k in skip else src_sd[k]) for k in own}
    net.load_state_dict(new)
    return {"path": str(init_weights), "head_reinitialised": bool(skip), "source_labels": src_labels}


def _max_records_per_patient(manifest: pd.DataFrame, train_ids: Sequence[str]) -> int | None:
    if "patient_id" not in manifest.columns:
        return None
    m = manifest[manifest["record_id"].astype(str).isin(set(train_ids))]
    if "split" in manifest.columns:
        m = m[m["split"] == "train"] if (m["split"] == "train").any() else m
    if len(m) == 0:
        return None
    return int(m.groupby("patient_id").size().max())


def public_class_weights(manifest, labels: Sequence[str], cohort: str) -> tuple[list[float], NonPrivateInput]:
    """BCE ``pos_weight`` ``(N - n_pos) / n_pos`` from a PUBLIC cohort's training labels, and
    the entry saying so on the card (the private labels stay inside the DP mechanism)."""
    public = read_manifest(manifest)
    public = public[public["split"] == "train"]
    missing = [f"label_{lb}" for lb in labels if f"label_{lb}" not in public.columns]
    if missing:
        raise ConfigError(f"public cohort {cohort}: manifest has no column(s) {missing}")
    positives = np.array([public[f"label_{lb}"].sum() for lb in labels], dtype=float)
    weights = ((len(public) - positives) / np.maximum(positives, 1.0)).tolist()
    return weights, NonPrivateInput("BCE class weights", f"training labels of the public cohort {cohort} (no private data)")


def hash_dataset(ds: CacheDataset) -> str:
    """SHA-256 of what a run reads: record ids, image bytes and labels (a resumed run whose data
    changed in any of them is refused)."""
    import h5py

    h = hashlib.sha256()
    for r in ds.record_ids:
        h.update(r.encode() + b"\0")
    if ds._memory is not None:
        h.update(np.ascontiguousarray(ds._memory).tobytes())
    else:
        with h5py.File(ds.path, "r") as fh:
            images = fh["images"]
            for i in range(0, ds.n, 256):
                h.update(np.ascontiguousarray(images[i:i + 256]).tobytes())
    h.update(ds.targets.numpy().tobytes())
    return h.hexdigest()


def _non_private_inputs(items: Iterable) -> list[NonPrivateInput]:
    out = []
    for it in items or ():
        if isinstance(it, NonPrivateInput):
            out.append(it)
        elif isinstance(it, str):
            out.append(NonPrivateInput(it, "given by the caller"))
        elif isinstance(it, Mapping) and it.get("what") and it.get("source"):
            out.append(NonPrivateInput(str(it["what"]), str(it["source"])))
        else:
            raise ConfigError(f"non_private_inputs entries must be strings or {{what, source}} mappings, got {it!r}")
    return out


def bce_per_sample(pos_weight: torch.Tensor | None):
    """The task's step: per-sample BCE-with-logits (mean over labels), optionally augmented."""

    def losses(model: nn.Module, batch, augment: torch.Generator | None = None) -> torch.Tensor:
        x, y = batch
        if augment is not None:
            x = augment_batch(x, augment)
        out = F.binary_cross_entropy_with_logits(model(x), y, pos_weight=pos_weight, reduction="none")
        return out.reshape(len(x), -1).mean(1)

    return losses


# =====================================================================================
# main entry point
# =====================================================================================
@dataclass
class _Data:
    man: pd.DataFrame
    train: CacheDataset
    val: CacheDataset | None
    test: CacheDataset | None
    external: CacheDataset | None = None


def _load_data(train_h5, val_h5, test_h5, manifest, labels, s: TrainSettings, channels: int,
               external=None) -> _Data:
    man = read_manifest(manifest)
    kw = dict(channels=channels, mean=s.norm_mean, std=s.norm_std, in_memory_max_bytes=s.in_memory_max_bytes)
    train = CacheDataset(train_h5, man, labels, **kw)
    if len(train) == 0:
        raise ConfigError(f"training cache {train_h5} is empty")
    ext = None
    if external is not None:  # a test-only cohort of another site, with its own manifest
        ext = CacheDataset(external[0], read_manifest(external[1]), labels, **kw)
    return _Data(man, train, CacheDataset(val_h5, man, labels, **kw) if val_h5 is not None else None,
                 CacheDataset(test_h5, man, labels, **kw) if test_h5 is not None else None, ext)


def _freeze_all_but_head(net: nn.Module) -> None:
    """Fine-tune the final linear layer (``fc``) only: every other parameter is frozen (it gets
    no gradient, no clipping share and no noise)."""
    if not hasattr(net, "fc"):
        raise ConfigError("trainable: head needs a network with a final linear layer 'fc'")
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith("fc."))


def _model_config(model_cfg, labels, private: bool) -> dict:
    cfg = dict(model_cfg)
    if cfg.get("activation") is None:  # the study's choice: Mish under DP, ReLU otherwise
        cfg["activation"] = "mish" if private else "relu"
    if cfg.get("num_labels") is not None and int(cfg["num_labels"]) != len(labels):
        raise ConfigError(f"model_cfg num_labels={cfg['num_labels']} but {len(labels)} labels given")
    cfg["num_labels"] = len(labels)
    return cfg


def _loss_weights(pos_weight, labels, train: CacheDataset, private: bool):
    """(weights or None, where they came from). Under DP only the caller's weights (public data)."""
    pw = _pos_weight_tensor(pos_weight, labels)
    if pw is not None:
        return pw, "given by the caller (must come from public data)" if private else "given by the caller"
    if private:
        return None, None
    return class_balance_pos_weight(train.targets), "inverted class frequencies of the training split (non-private)"


def _fingerprint(s: TrainSettings, labels, cfg, seed, epsilon, data: _Data, init_weights, pw, dev) -> str:
    return json.dumps({
        "settings": {k: v for k, v in asdict(s).items() if k not in ("keep_checkpoint", "num_workers", "eval_batch_size")},
        "labels": list(labels), "model_cfg": cfg, "seed": seed, "epsilon": repr(epsilon),
        "train_data_sha256": hash_dataset(data.train),
        "init_weights": None if init_weights is None else str(init_weights),
        "pos_weight": None if pw is None else pw.tolist(), "device": dev.type,
    }, sort_keys=True)


def train_classifier(
    *, train_h5, val_h5, test_h5, manifest, labels: Sequence[str], outputs: ClassifierOutputs,
    checkpoint: str | Path | None, epsilon: float, settings: Mapping[str, Any], model_cfg: Mapping[str, Any],
    seed: int, device: str = "auto", threads: int = 1, init_weights=None, pos_weight=None,
    non_private_inputs: Iterable = (), external=None, subgroup_columns: Sequence[str] = (),
    data_guarantee=None, synthetic_only: bool = False,
) -> dict:
    """Train, evaluate on val/test and write ``outputs``; see the module docstring.

    Parameters
    ----------
    train_h5, val_h5, test_h5: HDF5 caches (``val_h5``/``test_h5`` may be None: not evaluated).
    manifest: ``manifest.parquet`` path or DataFrame (labels ``label_<name>``, demographics).
    labels: label names, in model output order.
    outputs: where the model, history, card (and predictions) go.
    checkpoint: the resumable state's path, under the private directory (it holds the secret
        noise seed); None: no checkpoint.
    epsilon: target ε (``math.inf`` → non-private).
    settings: see :class:`TrainSettings` for the keys.
    model_cfg: :func:`dpmed.models.build_model` config; ``num_labels`` is set to ``len(labels)``.
        Without an ``activation`` the network uses Mish under DP and ReLU otherwise.
    seed: the public randomness (initialisation, shuffling, augmentation) derives from it.
    device: ``"auto"`` (CUDA if available, else CPU) or a torch device string.
    threads: ``torch.set_num_threads`` for the call.
    init_weights: a ``model.pt`` to start from (2D weights are converted for a 3D model; the
        head is re-initialised if its labels differ from ``labels``).
    pos_weight: BCE ``pos_weight`` (scalar, sequence in label order or {label: w}). Non-private:
        ``None`` → inverted class frequencies of the training split. DP: ``None`` → unweighted.
    non_private_inputs: extra inputs outside the DP mechanism for the card (strings,
        ``{"what", "source"}`` mappings or :class:`NonPrivateInput`).
    external: ``(cache, manifest)`` of a test-only cohort of another site: its predictions are
        written with split ``"external"`` (never trained on).
    subgroup_columns: manifest columns copied into the predictions (besides sex, age, age_group)
        when the manifest has them, for subgroup evaluation (e.g. ``breast_density``).
    data_guarantee: the :class:`~dpmed.privacy.guarantee.Guarantee` of generated training data or
        initial weights made from the SAME private records (a generator's synthetic set): the
        card composes it with this run's DP-SGD guarantee, or -- for a non-private run on
        such data only (``synthetic_only``) -- derives the model's guarantee from it
        (post-processing). A non-private run that also reads real records has none.
        Privatised images (:mod:`dpmed.privacy.cadp`, a LOCAL guarantee) are used only
        non-privately (``epsilon = inf``, ``synthetic_only``): no DP-SGD on top of them.
    synthetic_only: the training split holds generated records only (no private record).

    Returns
    -------
    dict with ``epsilon_spent``, ``noise_multiplier``, ``sample_rate``, ``steps``,
    ``steps_per_epoch``, ``epochs``, ``val_auroc``, ``test_auroc``, ``history``,
    ``loss_pos_weight``, ``pos_weight_source``, ``seconds_per_epoch``, ``seconds``,
    ``privacy_card``, ``resumed_from_epoch``, ``init``.

    Raises
    ------
    ConfigError: invalid settings/labels/ε, or a checkpoint of a different run.
    PrivacyError: a model that cannot be trained with DP-SGD (before any step).
    """
    s = TrainSettings.from_mapping(settings)
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ConfigError(f"labels must be a non-empty list of unique names, got {labels}")
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        raise ConfigError(f"epsilon must be a number or inf, got {epsilon!r}") from None
    engine_settings = s.engine(eps)
    if _is_local_release(data_guarantee) and engine_settings.private:
        raise ConfigError("a classifier trained on already-privatised data inherits their guarantee and is "
                          f"trained without DP: epsilon must be inf, got {eps!r}")
    dev = _resolve_device(device)
    prev = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True, warn_only=dev.type != "cpu")
    try:
        return _train(s, engine_settings, train_h5, val_h5, test_h5, manifest, labels, outputs, checkpoint,
                      model_cfg, int(seed), dev, init_weights, pos_weight, non_private_inputs,
                      _Extras(external, tuple(subgroup_columns), data_guarantee, bool(synthetic_only)))
    finally:
        torch.set_num_threads(prev[0])
        torch.use_deterministic_algorithms(prev[1], warn_only=prev[2])


@dataclass(frozen=True)
class _Extras:
    external: Any = None
    subgroup_columns: tuple = ()
    data_guarantee: Any = None
    synthetic_only: bool = False


def _train(s, es, train_h5, val_h5, test_h5, manifest, labels, outputs, checkpoint, model_cfg, seed, dev,
           init_weights, pos_weight, non_private_inputs, extras: _Extras = _Extras()) -> dict:
    from dpmed.models import build_model

    t_start = time.perf_counter()
    cfg = _model_config(model_cfg, labels, es.private)
    data = _load_data(train_h5, val_h5, test_h5, manifest, labels, s, int(cfg.get("in_channels") or 1),
                      extras.external)
    seed_globals(seed)
    net = build_model(cfg).to(dev)
    cfg = net.config() if hasattr(net, "config") else cfg
    init_info = _init_from(net, init_weights, labels) if init_weights is not None else None
    if s.trainable == "head":
        _freeze_all_but_head(net)
    net.train()
    if es.private:  # refuse BatchNorm & co. before anything else (calibration, data loading, any step)
        from dpmed.privacy.validation import assert_privatisable

        assert_privatisable(net, es.grad_sample_mode)
    pw, pw_source = _loss_weights(pos_weight, labels, data.train, es.private)
    trainer = PrivateTrainer(es, net, torch.optim.NAdam([p for p in net.parameters() if p.requires_grad], lr=s.lr),
                             data.train, seed=seed,
                             device=dev, checkpoint=checkpoint,
                             fingerprint=_fingerprint(s, labels, cfg, seed, es.epsilon, data, init_weights, pw, dev))
    losses = bce_per_sample(None if pw is None else pw.to(dev))
    augment = trainer.task_generator if s.augment else None

    def evaluate(epoch: int) -> dict:
        if data.val is None or not len(data.val):
            return {"val_auroc": float("nan")}
        return {"val_auroc": mean_auroc(data.val.targets.numpy(), predict(net, data.val, s.eval_batch_size, dev))[0]}

    trainer.run_epochs(es.epochs - trainer.epochs_done, lambda m, b: losses(m, b, augment), evaluate=evaluate)
    aurocs = _write_outputs(outputs, net, cfg, labels, s, trainer, data, dev, extras.subgroup_columns)
    npi = _card_inputs(non_private_inputs, s, init_info, pw, pw_source, es.private)
    card = _write_card(outputs.privacy, trainer, npi, data, extras.data_guarantee, extras.synthetic_only)
    if not s.keep_checkpoint:
        trainer.remove_checkpoint()
    return _result(trainer, aurocs, pw, pw_source, card, init_info, time.perf_counter() - t_start)


def _write_outputs(outputs: ClassifierOutputs, net, cfg, labels, s: TrainSettings, trainer, data: _Data, dev,
                   subgroup_columns: Sequence[str] = ()) -> dict:
    """model.pt, history.csv and predictions.parquet; returns the val/test mean AUROC."""
    net.eval()
    model_file = {
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "model_cfg": dict(cfg), "labels": labels,
        "normalization": {"mean": s.norm_mean, "std": s.norm_std, "channels": int(cfg.get("in_channels") or 1)},
    }
    Path(outputs.model).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(outputs.model) as tmp:
        torch.save(model_file, tmp)
    write_csv(pd.DataFrame(trainer.history, columns=HISTORY_COLUMNS), outputs.history)
    frames, aurocs = [], {}
    meta_cols = ["sex", "age", "age_group"] + [c for c in subgroup_columns if c not in ("sex", "age", "age_group")
                                               and c in data.man.columns]
    for split, ds in (("val", data.val), ("test", data.test), ("external", data.external)):
        if ds is None:
            continue
        scores = predict(net, ds, s.eval_batch_size, dev)
        aurocs[split] = mean_auroc(ds.targets.numpy(), scores)[0] if len(ds) else float("nan")
        frames.append(_prediction_frame(ds, split, labels, scores, meta_cols))
    if outputs.predictions is not None:
        cols = ["record_id", "split"] + meta_cols + [c for lb in labels for c in (f"y_{lb}", f"score_{lb}")]
        preds = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
        write_parquet(preds[cols], outputs.predictions)
    return aurocs


def _prediction_frame(ds: CacheDataset, split: str, labels, scores: np.ndarray,
                      meta_cols: Sequence[str] = ("sex", "age", "age_group")) -> pd.DataFrame:
    y = ds.targets.numpy()
    df = pd.DataFrame({"record_id": ds.record_ids, "split": split})
    for col in meta_cols:
        df[col] = ds.meta[col].to_numpy() if col in ds.meta.columns else None
    for j, lb in enumerate(labels):
        df[f"y_{lb}"] = y[:, j].astype(np.int8)
        df[f"score_{lb}"] = scores[:, j].astype(np.float64)
    return df


def _card_inputs(items, s: TrainSettings, init_info, pw, pw_source, private: bool) -> list[NonPrivateInput]:
    npi = _non_private_inputs(items)
    npi.append(NonPrivateInput(f"image normalisation: value_range -> [0, 1], then (x - {s.norm_mean:g}) / {s.norm_std:g}",
                               "fixed constants (not computed from any data)"))
    if init_info is not None:
        npi.append(NonPrivateInput("initial model weights", init_info["path"]))
    if private and pw is not None:
        npi.append(NonPrivateInput(f"BCE pos_weight {[round(v, 6) for v in pw.tolist()]}", pw_source))
    return npi


INHERITED_NOTE = (
    "Trained without DP on the released (privatised) training images and labels; the validation AUROC per "
    "epoch uses the privatised validation images. The test split is predicted on the ORIGINAL images: "
    "predictions and metrics on it are not private (as for every method).")


def _is_local_release(data_g) -> bool:
    """Whether training data are a per-record privatised release (content-aware DP), directly or
    as the guarantee-less release of a non-private network (its nominal mechanism is local)."""
    from dpmed.privacy.guarantee import Guarantee

    if data_g is None:
        return False
    data_g = data_g if isinstance(data_g, Guarantee) else Guarantee.from_dict(data_g)
    return data_g.kind == "local" or data_g.mechanism.startswith("cadp")


def _write_card(path, trainer: PrivateTrainer, npi, data: _Data, data_guarantee=None, synthetic_only=False) -> dict:
    from dpmed.privacy.card import render_guarantee, write_privacy_card

    g = trainer.guarantee(released="the trained model weights", non_private_inputs=npi, not_guaranteed=(
        "history.csv's val_auroc and the reported metrics use the validation/test splits, which DP-SGD does not "
        "protect (only training records are covered); the training loss is not recorded under DP because it is "
        "an un-noised statistic of the training records.",))
    if data_guarantee is not None:
        g = _with_data_guarantee(g, data_guarantee, trainer, npi, synthetic_only)
    card = render_guarantee(g, max_records_per_patient=_max_records_per_patient(data.man, data.train.record_ids),
                            epochs=trainer.epochs_done)
    if trainer.plan.private:
        card["steps_rule"] = "steps = epochs * round(1/q), q = batch_size / N_train"
    write_privacy_card(path, card)
    return card


def _with_data_guarantee(run, data_g, trainer: PrivateTrainer, npi, synthetic_only: bool):
    """The model's guarantee when its training data or initial weights were generated from the
    same private records: a non-private run on them is post-processing of the generator's
    guarantee; a DP-SGD run composes with it (one accountant over both DP-SGD histories when the
    generator's guarantee is DP-SGD underneath)."""
    from dpmed.privacy.guarantee import Guarantee, compose, post_processing

    data_g = data_g if isinstance(data_g, Guarantee) else Guarantee.from_dict(data_g)
    released = "the trained model weights"
    if synthetic_only and not trainer.plan.private:
        note = INHERITED_NOTE if _is_local_release(data_g) else (
            "the classifier was trained without DP, only on generated data (and public inputs): it is "
            "post-processing of the generator")
        return post_processing(data_g, released=released, non_private_inputs=tuple(npi), not_guaranteed=(note,))
    base = data_g
    while base.kind == "derived" and len(base.derived_from) == 1:  # the mechanism underneath (its history)
        base = base.derived_from[0]
    delta = float(trainer.settings.delta) if trainer.plan.private else float(base.delta or 1e-5)
    return compose([run, base], delta=delta, released=released,
                   accountant=trainer.settings.accountant, not_guaranteed=(
                       "ε composes the generator's DP-SGD (its discriminator) and this run's DP-SGD on the same "
                       "private records",))


def _result(trainer: PrivateTrainer, aurocs, pw, pw_source, card, init_info, seconds) -> dict:
    p = trainer.plan
    times = [r["seconds"] for r in trainer.history]
    return {
        "epsilon_target": float(trainer.settings.epsilon), "epsilon_spent": trainer.epsilon(),
        "noise_multiplier": p.noise_multiplier, "sample_rate": p.sample_rate, "steps": trainer.steps_done,
        "steps_per_epoch": p.steps_per_epoch, "epochs": trainer.epochs_done,
        "val_auroc": aurocs.get("val", float("nan")), "test_auroc": aurocs.get("test", float("nan")),
        "history": list(trainer.history), "loss_pos_weight": None if pw is None else pw.tolist(),
        "pos_weight_source": pw_source, "seconds_per_epoch": float(np.mean(times)) if times else float("nan"),
        "seconds": seconds, "privacy_card": card, "resumed_from_epoch": trainer.resumed_from, "init": init_info,
    }
