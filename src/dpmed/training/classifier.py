"""Train one multi-label classifier (ResNet9-GN, 2D or ACS 3D), non-private or with DP-SGD.

Entry point: :func:`train_classifier`. Methods A of the reference (``methods.md``).

Modes
-----
``epsilon = inf`` (non-private)
    NAdam (``settings["lr"]``), BCE-with-logits weighted by ``pos_weight`` (given by the
    caller, else the training split's inverted class frequencies ``(N - n_pos) / n_pos``),
    shuffled mini-batches of ``batch_size`` (``ceil(N / batch_size)`` steps per epoch),
    rotation ±10° / horizontal-flip augmentation if ``settings["augment"]``.
finite ``epsilon`` (DP-SGD through Opacus)
    * Poisson sampling with ``q = batch_size / N_train`` exactly (an Opacus ``DPDataLoader``
      built with that rate; Opacus' own ``1/len(loader)`` would round q);
    * **steps rule**: ``steps_per_epoch = round(1 / q) = round(N / batch_size)`` (half up),
      ``steps = epochs * steps_per_epoch`` -- every epoch draws exactly that many Poisson
      batches (so one epoch processes N records in expectation);
    * ``sigma = calibrate_noise_multiplier(epsilon, delta, q, steps, accountant, rel_tol)`` for
      exactly those steps, so the target is reached at the last step;
    * per-sample clipping to ``max_grad_norm``, noise and the mean over the *expected*
      batch size ``q N = batch_size`` by Opacus' DP optimizer (via :func:`dpmed.training.dp.make_private`);
    * physical batches of at most ``physical_batch_size`` by Opacus' ``BatchMemoryManager``
      (one logical Poisson batch = one noisy step);
    * no augmentation; the loss is weighted only by the ``pos_weight`` the caller passes
      (computed on a public cohort) or unweighted -- class frequencies of the private
      training labels would leak outside the mechanism and are never computed here;
    * :func:`dpmed.privacy.validation.assert_privatisable` runs before any step;
    * every step actually run is recorded in a :class:`~dpmed.privacy.accounting.DPSGDAccountant`;
      ``epsilon_spent`` in ``privacy.json`` is that accountant's ε after training.

Model selection: the released model is the last epoch's (ε is calibrated for the full run);
``history.csv`` holds the validation AUROC per epoch (validation split only, never test).

Checkpoint / resume / determinism
---------------------------------
At the end of every epoch ``out_dir/checkpoint.pt`` is replaced atomically (temp file +
``os.replace``). It holds the model and optimizer state, the accountant state, the history,
and every random state the run consumes: torch's global RNG (and CUDA's), numpy's, Python's,
and the run's own generators -- the Poisson/shuffle sampler generator, the DP noise generator
and the augmentation generator. A run that finds a checkpoint whose *fingerprint* (all
arguments that influence training) matches resumes after the last completed epoch and
produces bit-identical weights, steps and ε to the uninterrupted run (tested). A checkpoint
with a different fingerprint is refused (:class:`ConfigError`) rather than silently mixed.
On CPU the run is deterministic: fixed seeds, ``torch.use_deterministic_algorithms(True)``
for the duration of the call (restored afterwards), data loading order fixed by the
generators (``num_workers`` does not change the order or the values).
``checkpoint.pt`` is deleted only after ``model.pt``, ``history.csv``, ``predictions.parquet``
and ``privacy.json`` are all written (``settings["keep_checkpoint"] = True`` keeps it).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from dpmed.errors import ConfigError, PrivacyError
from dpmed.io.atomic import atomic_path, write_csv, write_parquet
from dpmed.training.augment import augment_batch
from dpmed.training.data import DEFAULT_MEAN, DEFAULT_STD, CacheDataset, read_manifest

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1

#: grad_sample_mode used when settings do not name one. ``bk`` is dp.py's single-pass exact
#: per-sample clipping, the fastest mode on CPU (dp.py docstring; benchmarks/dp_overhead.py).
DEFAULT_GRAD_SAMPLE_MODE = "bk"


# =====================================================================================
# settings
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

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> "TrainSettings":
        if not isinstance(settings, Mapping):
            raise ConfigError(f"settings must be a mapping, got {type(settings).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}; allowed: {sorted(known)}")
        missing = [k for k in ("epochs", "batch_size", "lr") if settings.get(k) is None]
        if missing:
            raise ConfigError(f"training settings need {missing}")
        kw = {k: v for k, v in settings.items() if v is not None}
        try:
            s = cls(**kw)
            s = cls(
                epochs=int(s.epochs), batch_size=int(s.batch_size), lr=float(s.lr),
                physical_batch_size=int(s.physical_batch_size or s.batch_size),
                max_grad_norm=float(s.max_grad_norm),
                delta=None if s.delta is None else float(s.delta),
                accountant=str(s.accountant), calibration_rel_tol=float(s.calibration_rel_tol),
                grad_sample_mode=str(s.grad_sample_mode), augment=bool(s.augment),
                norm_mean=float(s.norm_mean), norm_std=float(s.norm_std),
                eval_batch_size=int(s.eval_batch_size), num_workers=int(s.num_workers),
                keep_checkpoint=bool(s.keep_checkpoint), in_memory_max_bytes=int(s.in_memory_max_bytes),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid training settings {dict(settings)!r}: {e}") from None
        if s.epochs < 1 or s.batch_size < 1 or s.physical_batch_size < 1 or s.eval_batch_size < 1:
            raise ConfigError("epochs, batch_size, physical_batch_size and eval_batch_size must be >= 1")
        if not (s.lr > 0) or not (s.max_grad_norm > 0) or not (s.norm_std > 0):
            raise ConfigError("lr, max_grad_norm and norm_std must be > 0")
        return s


# =====================================================================================
# helpers
# =====================================================================================
class _Stop(Exception):
    """Raised by a test hook to simulate a killed job."""


def _on_epoch_end(epoch: int, out_dir: Path) -> None:
    """Called after each epoch's checkpoint is written (tests patch it to simulate a kill)."""


def _resolve_device(device: str) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _seeds(seed: int) -> list[int]:
    """Independent 63-bit seeds for: model init/global torch, numpy, python, sampler, noise, augment."""
    ss = np.random.SeedSequence(int(seed))
    return [int(x) & ((1 << 63) - 1) for x in ss.generate_state(6, dtype=np.uint64)]


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


def mean_auroc(y: np.ndarray, s: np.ndarray) -> tuple[float, list[float]]:
    """Mean AUROC over labels with both classes present (NaN if none), and per label."""
    from sklearn.metrics import roc_auc_score

    per = []
    for j in range(y.shape[1]):
        yj = y[:, j]
        if len(yj) == 0 or yj.min() == yj.max():
            per.append(float("nan"))
        else:
            per.append(float(roc_auc_score(yj, s[:, j])))
    vals = [v for v in per if not math.isnan(v)]
    return (float(np.mean(vals)) if vals else float("nan")), per


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


def _rng_state(gens: Mapping[str, torch.Generator]) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    st = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
        "generators": {k: g.get_state() for k, g in gens.items()},
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict, gens: Mapping[str, torch.Generator]) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = st["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    for k, g in gens.items():
        g.set_state(st["generators"][k])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _save_checkpoint(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _max_records_per_patient(manifest: pd.DataFrame, train_ids: Sequence[str]) -> int | None:
    if "patient_id" not in manifest.columns:
        return None
    m = manifest[manifest["record_id"].astype(str).isin(set(train_ids))]
    if "split" in manifest.columns:
        m = m[m["split"] == "train"] if (m["split"] == "train").any() else m
    if len(m) == 0:
        return None
    return int(m.groupby("patient_id").size().max())


def _npi_entries(items: Iterable) -> list[dict]:
    out = []
    for it in items or ():
        if isinstance(it, str):
            out.append({"what": it, "source": "given by the caller"})
        elif isinstance(it, Mapping):
            out.append({"what": str(it.get("what", "")), "source": str(it.get("source", ""))})
        else:
            raise ConfigError(f"non_private_inputs entries must be strings or {{what, source}} mappings, got {it!r}")
    return out


# =====================================================================================
# main entry point
# =====================================================================================
def train_classifier(
    *,
    train_h5,
    val_h5,
    test_h5,
    manifest,
    labels: Sequence[str],
    out_dir,
    epsilon: float,
    settings: Mapping[str, Any],
    model_cfg: Mapping[str, Any],
    seed: int,
    device: str = "auto",
    threads: int = 1,
    init_weights=None,
    pos_weight=None,
    non_private_inputs: Iterable = (),
) -> dict:
    """Train, evaluate on val/test, write ``model.pt``, ``history.csv``,
    ``predictions.parquet`` and ``privacy.json`` into ``out_dir``; see the module docstring.

    Parameters
    ----------
    train_h5, val_h5, test_h5: HDF5 caches (``val_h5``/``test_h5`` may be None: not evaluated).
    manifest: ``manifest.parquet`` path or DataFrame (labels ``label_<name>``, demographics).
    labels: label names, in model output order.
    epsilon: target ε (``math.inf`` → non-private).
    settings: see :class:`TrainSettings` for the keys.
    model_cfg: :func:`dpmed.models.build_model` config; ``num_labels`` is set to ``len(labels)``.
        Without an ``activation`` the network uses Mish under DP and ReLU otherwise (methods.md A).
    seed: all randomness derives from it.
    device: ``"auto"`` (CUDA if available, else CPU) or a torch device string.
    threads: ``torch.set_num_threads`` for the call.
    init_weights: a ``model.pt`` to start from (2D weights are converted for a 3D model; the
        head is re-initialised if its labels differ from ``labels``).
    pos_weight: BCE ``pos_weight`` (scalar, sequence in label order or {label: w}). Non-private:
        ``None`` → inverted class frequencies of the training split. DP: ``None`` → unweighted.
    non_private_inputs: extra inputs outside the DP mechanism for the privacy card
        (strings or ``{"what", "source"}`` mappings), e.g. the public pretraining cohort.

    Returns a dict with ``epsilon_spent``, ``noise_multiplier``, ``sample_rate``, ``steps``,
    ``steps_per_epoch``, ``epochs``, ``val_auroc``, ``test_auroc``, ``history`` (list of rows),
    ``loss_pos_weight`` (the weight the loss used, or None), ``seconds_per_epoch``, ``out_dir``,
    ``privacy_card``, ``resumed_from_epoch``.
    """
    from dpmed.models import build_model

    s = TrainSettings.from_mapping(settings)
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ConfigError(f"labels must be a non-empty list of unique names, got {labels}")
    try:
        eps_target = float(epsilon)
    except (TypeError, ValueError):
        raise ConfigError(f"epsilon must be a number or inf, got {epsilon!r}") from None
    if math.isnan(eps_target) or eps_target <= 0:
        raise ConfigError(f"epsilon must be > 0 (or inf), got {epsilon!r}")
    private = math.isfinite(eps_target)
    if private:
        if s.delta is None or not (0 < s.delta < 1):
            raise ConfigError(f"DP training needs settings['delta'] in (0, 1), got {s.delta!r}")
        if s.augment:
            raise ConfigError("augmentation is for non-private training only (settings['augment'] must be false under DP)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = _resolve_device(device)

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True, warn_only=dev.type != "cpu")
    try:
        return _train(
            s=s, train_h5=train_h5, val_h5=val_h5, test_h5=test_h5, manifest=manifest, labels=labels,
            out_dir=out_dir, eps_target=eps_target, private=private, model_cfg=model_cfg, seed=int(seed),
            dev=dev, init_weights=init_weights, pos_weight=pos_weight,
            non_private_inputs=non_private_inputs, build_model=build_model,
        )
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_det_warn)


def _train(*, s: TrainSettings, train_h5, val_h5, test_h5, manifest, labels, out_dir: Path, eps_target: float,
           private: bool, model_cfg, seed: int, dev: torch.device, init_weights, pos_weight,
           non_private_inputs, build_model) -> dict:
    t_start = time.perf_counter()
    man = read_manifest(manifest)
    cfg = dict(model_cfg)
    if cfg.get("activation") is None:  # the study's choice: Mish under DP, ReLU otherwise
        cfg["activation"] = "mish" if private else "relu"
    if cfg.get("num_labels") is not None and int(cfg["num_labels"]) != len(labels):
        raise ConfigError(f"model_cfg num_labels={cfg['num_labels']} but {len(labels)} labels given")
    cfg["num_labels"] = len(labels)
    channels = int(cfg.get("in_channels") or 1)
    ds_kw = dict(channels=channels, mean=s.norm_mean, std=s.norm_std, in_memory_max_bytes=s.in_memory_max_bytes)
    train_ds = CacheDataset(train_h5, man, labels, **ds_kw)
    val_ds = CacheDataset(val_h5, man, labels, **ds_kw) if val_h5 is not None else None
    test_ds = CacheDataset(test_h5, man, labels, **ds_kw) if test_h5 is not None else None
    n_train = len(train_ds)
    if n_train == 0:
        raise ConfigError(f"training cache {train_h5} is empty")

    seeds = _seeds(seed)
    torch.manual_seed(seeds[0])
    np.random.seed(seeds[1] % 2**32)
    random.seed(seeds[2])
    net = build_model(cfg).to(dev)
    cfg = net.config() if hasattr(net, "config") else cfg
    if private and s.augment:
        raise ConfigError("no augmentation under DP")
    init_info = _init_from(net, init_weights, labels) if init_weights is not None else None
    net = net.to(dev)
    net.train()
    if private:
        from dpmed.privacy.validation import GRAD_SAMPLE_MODES, assert_privatisable

        # refuse BatchNorm & co. before anything else (calibration, data loading, any step)
        assert_privatisable(net, s.grad_sample_mode if s.grad_sample_mode in GRAD_SAMPLE_MODES else "hooks")

    gens = {
        "sampler": torch.Generator().manual_seed(seeds[3]),
        "noise": torch.Generator(device=dev).manual_seed(seeds[4]),
        "augment": torch.Generator().manual_seed(seeds[5]),
    }

    # ---------------------------------------------------------------- loss weights
    if private:
        # Under DP the weights come ONLY from the caller (public cohort) -- never from the
        # private training labels, which would leak outside the mechanism.
        pw = _pos_weight_tensor(pos_weight, labels)
        pw_source = None if pw is None else "given by the caller (must come from public data)"
    else:
        pw = _pos_weight_tensor(pos_weight, labels)
        pw_source = "given by the caller"
        if pw is None:
            pw = class_balance_pos_weight(train_ds.targets)
            pw_source = "inverted class frequencies of the training split (non-private)"
    criterion = nn.BCEWithLogitsLoss(pos_weight=None if pw is None else pw.to(dev))

    base_opt = torch.optim.NAdam(net.parameters(), lr=s.lr)

    # ---------------------------------------------------------------- plan
    sigma = 0.0
    q = None
    if private:
        if s.batch_size > n_train:
            raise ConfigError(f"batch_size {s.batch_size} exceeds the {n_train} training records")
        q = s.batch_size / n_train
        steps_per_epoch = max(1, int(math.floor(n_train / s.batch_size + 0.5)))  # round(1/q), half up
    else:
        steps_per_epoch = math.ceil(n_train / s.batch_size)
    total_steps = s.epochs * steps_per_epoch

    fingerprint = json.dumps({
        "settings": {k: v for k, v in asdict(s).items() if k not in ("keep_checkpoint", "num_workers", "eval_batch_size")},
        "labels": labels, "model_cfg": cfg, "seed": seed, "epsilon": repr(eps_target),
        "n_train": n_train, "train_ids_hash": hash_ids(train_ds.record_ids),
        "init_weights": None if init_weights is None else str(init_weights),
        "pos_weight": None if pw is None else pw.tolist(), "device": dev.type,
    }, sort_keys=True)

    ckpt_path = out_dir / CHECKPOINT_NAME
    ckpt = None
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("version") != CHECKPOINT_VERSION or ckpt.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{ckpt_path} was written by a run with different inputs/settings; "
                "delete it to start afresh (refusing to mix two runs)"
            )

    accountant = None
    if private:
        from dpmed.privacy.accounting import DPSGDAccountant, calibrate_noise_multiplier

        if ckpt is not None:
            sigma = float(ckpt["noise_multiplier"])
        else:
            sigma = float(calibrate_noise_multiplier(
                eps_target, s.delta, q, total_steps, accountant=s.accountant, rel_tol=s.calibration_rel_tol,
            ))
        accountant = DPSGDAccountant(noise_multiplier=sigma, sample_rate=q)

    # ---------------------------------------------------------------- loaders / privatisation
    if private:
        from opacus.data_loader import DPDataLoader
        from opacus.utils.batch_memory_manager import BatchMemoryManager

        from dpmed.training.dp import make_private, step_on_empty_batch

        loader = DPDataLoader(train_ds, sample_rate=q, generator=gens["sampler"], num_workers=s.num_workers)
        loader.batch_sampler.steps = steps_per_epoch  # Opacus default int(1/q); our rule: round(1/q)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            priv = make_private(
                net, base_opt, loader, noise_multiplier=sigma, max_grad_norm=s.max_grad_norm,
                grad_sample_mode=s.grad_sample_mode, poisson_sampling=False, criterion=criterion,
                noise_generator=gens["noise"],
            )
        model, optimizer, crit, loader = priv
        # mean over the EXPECTED batch size q*N = batch_size (Opacus would use int(N/len(loader)))
        optimizer.expected_batch_size = s.batch_size
        step_counter = {"n": 0}
        prev_hook = optimizer.step_hook

        def _hook(opt, _prev=prev_hook):
            if _prev is not None:
                _prev(opt)
            step_counter["n"] += 1
            accountant.step()

        optimizer.attach_step_hook(_hook)
    else:
        loader = DataLoader(train_ds, batch_size=s.batch_size, shuffle=True, generator=gens["sampler"],
                            num_workers=s.num_workers, drop_last=False)
        model, optimizer, crit = net, base_opt, criterion

    # ---------------------------------------------------------------- resume
    history: list[dict] = []
    start_epoch = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        base_opt.load_state_dict(ckpt["optimizer"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"])
        if accountant is not None:
            accountant.load_state_dict(ckpt["accountant"])
        _set_rng_state(ckpt["rng"], gens)
    resumed_from = start_epoch if ckpt is not None else None

    # ---------------------------------------------------------------- epochs
    epoch_times = []
    for epoch in range(start_epoch, s.epochs):
        t0 = time.perf_counter()
        model.train()
        loss_sum, n_seen = 0.0, 0
        if private:
            before = step_counter["n"]
            with warnings.catch_warnings(), BatchMemoryManager(data_loader=loader, max_physical_batch_size=s.physical_batch_size,
                                    optimizer=optimizer) as mem_loader:
                # Opacus' hooks on the first layer (input needs no grad): harmless, not actionable
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                for x, y in mem_loader:
                    if len(x) == 0:  # empty Poisson batch: a pure-noise step (accounted)
                        step_on_empty_batch(optimizer)
                        optimizer.zero_grad()
                        continue
                    x, y = x.to(dev), y.to(dev)
                    loss = crit(model(x), y)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    loss_sum += float(loss.item()) * len(x)
                    n_seen += len(x)
            done = step_counter["n"] - before
            if done != steps_per_epoch:
                raise PrivacyError(f"epoch {epoch + 1}: {done} DP steps run, {steps_per_epoch} planned")
        else:
            for x, y in loader:
                x, y = x.to(dev), y.to(dev)
                if s.augment:
                    x = augment_batch(x, gens["augment"])
                optimizer.zero_grad()
                for xc, yc in zip(x.split(s.physical_batch_size), y.split(s.physical_batch_size)):
                    loss = crit(model(xc), yc) * (len(xc) / len(x))
                    loss.backward()
                    loss_sum += float(loss.item()) * len(x)
                n_seen += len(x)
                optimizer.step()
        row = {
            "epoch": epoch + 1,
            # Under DP the training loss is an un-noised statistic of the private records:
            # it would escape the mechanism, so it is not recorded.
            "train_loss": float("nan") if private else loss_sum / max(n_seen, 1),
            "val_auroc": float("nan"),
            "epsilon": accountant.epsilon(s.delta, s.accountant) if private else math.inf,
            "steps": (epoch + 1) * steps_per_epoch,
        }
        if val_ds is not None and len(val_ds):
            row["val_auroc"] = mean_auroc(val_ds.targets.numpy(), predict(net, val_ds, s.eval_batch_size, dev))[0]
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        epoch_times.append(row["seconds"])
        _save_checkpoint(ckpt_path, {
            "version": CHECKPOINT_VERSION,
            "fingerprint": fingerprint,
            "epoch": epoch + 1,
            "model": net.state_dict(),
            "optimizer": base_opt.state_dict(),
            "rng": _rng_state(gens),
            "accountant": None if accountant is None else accountant.state_dict(),
            "noise_multiplier": sigma,
            "history": history,
        })
        _on_epoch_end(epoch + 1, out_dir)

    # ---------------------------------------------------------------- outputs
    steps_run = accountant.steps if private else total_steps
    if private and steps_run != total_steps:
        raise PrivacyError(f"{steps_run} DP steps accounted, {total_steps} planned")
    eps_spent = accountant.epsilon(s.delta, s.accountant) if private else math.inf

    net.eval()
    model_file = {
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "model_cfg": dict(cfg),
        "labels": labels,
        "normalization": {"mean": s.norm_mean, "std": s.norm_std, "channels": channels},
    }
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save(model_file, tmp)

    hist_df = pd.DataFrame(history, columns=["epoch", "train_loss", "val_auroc", "epsilon", "steps", "seconds"])
    write_csv(hist_df, out_dir / "history.csv")

    pred_frames = []
    aurocs = {}
    for split, ds in (("val", val_ds), ("test", test_ds)):
        if ds is None:
            continue
        scores = predict(net, ds, s.eval_batch_size, dev)
        y = ds.targets.numpy()
        aurocs[split] = mean_auroc(y, scores)[0] if len(ds) else float("nan")
        df = pd.DataFrame({"record_id": ds.record_ids, "split": split})
        for col in ("sex", "age", "age_group"):
            df[col] = ds.meta[col].to_numpy() if col in ds.meta.columns else None
        for j, lb in enumerate(labels):
            df[f"y_{lb}"] = y[:, j].astype(np.int8)
            df[f"score_{lb}"] = scores[:, j].astype(np.float64)
        pred_frames.append(df)
    cols = ["record_id", "split", "sex", "age", "age_group"] + [c for lb in labels for c in (f"y_{lb}", f"score_{lb}")]
    preds = pd.concat(pred_frames, ignore_index=True) if pred_frames else pd.DataFrame(columns=cols)
    write_parquet(preds[cols], out_dir / "predictions.parquet")

    from dpmed.privacy.card import build_privacy_card, write_privacy_card

    npi = _npi_entries(non_private_inputs)
    npi.append({
        "what": f"image normalisation: value_range -> [0, 1], then (x - {s.norm_mean:g}) / {s.norm_std:g}",
        "source": "fixed constants (not computed from any data)",
    })
    if init_info is not None:
        npi.append({"what": "initial model weights", "source": init_info["path"]})
    if private and pw is not None:
        npi.append({"what": f"BCE pos_weight {[round(v, 6) for v in pw.tolist()]}", "source": pw_source})
    k = _max_records_per_patient(man, train_ds.record_ids)
    extra = [
        "history.csv's val_auroc and the reported metrics use the validation/test splits, which "
        "DP-SGD does not protect (only training records are covered); the training loss is not "
        "recorded under DP because it is an un-noised statistic of the training records.",
    ]
    if private:
        card = build_privacy_card(
            mechanism="dp-sgd", accountant=s.accountant, noise_multiplier=sigma, sample_rate=q,
            steps=steps_run, epochs=s.epochs, max_grad_norm=s.max_grad_norm, delta=s.delta,
            epsilon_target=eps_target, epsilon_spent=eps_spent, unit="record",
            max_records_per_patient=k, non_private_inputs=npi, extra_not_guaranteed=extra,
        )
        card["history"] = accountant.state_dict()["history"]
        card["grad_sample_mode"] = s.grad_sample_mode
        card["steps_rule"] = "steps = epochs * round(1/q), q = batch_size / N_train"
    else:
        card = build_privacy_card(
            mechanism="none", sample_rate=s.batch_size / n_train, steps=steps_run, epochs=s.epochs,
            unit="record", max_records_per_patient=k, non_private_inputs=npi, extra_not_guaranteed=extra,
        )
    write_privacy_card(out_dir / "privacy.json", card)

    if not s.keep_checkpoint and ckpt_path.exists():
        ckpt_path.unlink()

    return {
        "out_dir": str(out_dir),
        "epsilon_target": eps_target,
        "epsilon_spent": eps_spent,
        "noise_multiplier": sigma,
        "sample_rate": q if private else s.batch_size / n_train,
        "steps": steps_run,
        "steps_per_epoch": steps_per_epoch,
        "epochs": s.epochs,
        "val_auroc": aurocs.get("val", float("nan")),
        "test_auroc": aurocs.get("test", float("nan")),
        "history": history,
        "loss_pos_weight": None if pw is None else pw.tolist(),
        "pos_weight_source": pw_source,
        "seconds_per_epoch": float(np.mean(epoch_times)) if epoch_times else float("nan"),
        "seconds": time.perf_counter() - t_start,
        "privacy_card": card,
        "resumed_from_epoch": resumed_from,
        "init": init_info,
    }


def hash_ids(ids: Sequence[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for r in ids:
        h.update(r.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
