"""Downstream evaluation of study C: per-site linear classifiers and their metrics.

Per site, two linear classifiers (Adam lr 1e-3, 100 epochs, methods.md C): one on the site's
real training embeddings, one on the global synthetic set the site decoded. Prediction
p = λ·p_local + (1 − λ)·p_global with λ ∈ {0, 0.1, …, 1} chosen on the site's validation split
(accuracy for multi-class, mean AUROC for multi-label; ties go to the smallest λ, i.e. towards
the shared synthetic data). Baselines: FedAvg and FedProx (μ = 0.05) linear classifiers through
the same round loop (:mod:`.rounds`), and local-only (λ = 1).

Metrics: accuracy and balanced accuracy (multi-class, scikit-learn's definitions) or the label
mean AUROC (multi-label, :func:`dpmed.evaluation.bootstrap_replicates`' point estimate), per
site, then mean ± std (ddof 1) over sites.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from torch import nn

from dpmed.evaluation import bootstrap_replicates
from dpmed.federated.rounds import ClientState, adam_trainer, run_in_process, shared_weights

LAMBDAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 1))
#: FedProx's proximal weight in methods.md C.
FEDPROX_MU = 0.05


def _seeded_linear(seed: int, feature_dim: int, n_classes: int, kind: str) -> "LinearClassifier":
    with torch.random.fork_rng(devices=[]):  # init from the config seed, global RNG untouched
        torch.manual_seed(int(seed))
        return LinearClassifier(feature_dim, n_classes, kind)


class LinearClassifier(nn.Module):
    """Linear(D → C) with a per-sample loss: cross-entropy (multi-class) or BCE summed over labels."""

    def __init__(self, feature_dim: int, n_classes: int, kind: str):
        super().__init__()
        if kind not in ("multiclass", "multilabel"):
            raise ValueError(f"kind must be 'multiclass' or 'multilabel', got {kind!r}")
        self.kind = kind
        self.linear = nn.Linear(feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def per_sample_loss(self, x: torch.Tensor, y: torch.Tensor, generator=None) -> torch.Tensor:
        logits = self(x)
        if self.kind == "multiclass":
            return nn.functional.cross_entropy(logits, y.long(), reduction="none")
        return nn.functional.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").sum(1)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> np.ndarray:
        logits = self(torch.as_tensor(x, dtype=torch.float32))
        p = logits.softmax(1) if self.kind == "multiclass" else logits.sigmoid()
        return p.numpy().astype(np.float64)


def _targets(y: np.ndarray, kind: str) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.long if kind == "multiclass" else torch.float32)


def train_linear(x: np.ndarray, y: np.ndarray, kind: str, n_classes: int, *, seed: int,
                 epochs: int = 100, lr: float = 1e-3, batch_size: int = 64) -> LinearClassifier:
    """A linear classifier trained with Adam (non-private: it sees local real data or synthetic data)."""
    model = _seeded_linear(seed, x.shape[1], n_classes, kind)
    state = ClientState("local", model, model, torch.as_tensor(x, dtype=torch.float32), _targets(y, kind))
    gen = torch.Generator().manual_seed(int(seed))
    adam_trainer(lr=lr, batch_size=batch_size)(state, epochs, gen, shared_weights(model))
    return model


def federated_linear(sites_xy: Sequence[tuple[np.ndarray, np.ndarray]], kind: str, n_classes: int, *,
                     rounds: int, local_epochs: int, seed: int, prox_mu: float = 0.0,
                     weights: Sequence[float] | None = None, lr: float = 1e-3, batch_size: int = 64,
                     noise_seed: int | None = None) -> LinearClassifier:
    """FedAvg (``prox_mu = 0``) or FedProx (μ > 0, :data:`FEDPROX_MU`) linear classifier over the
    sites' real data (non-private, as in the paper; the DP variant goes through the engine)."""
    dim = sites_xy[0][0].shape[1]
    init = _seeded_linear(seed, dim, n_classes, kind)
    states = []
    for i, (x, y) in enumerate(sites_xy):
        m = _seeded_linear(seed, dim, n_classes, kind)
        states.append(ClientState(f"site{i}", m, m, torch.as_tensor(x, dtype=torch.float32), _targets(y, kind)))
    final = run_in_process(states, shared_weights(init), rounds=rounds, local_epochs=local_epochs,
                           trainer=adam_trainer(lr=lr, batch_size=batch_size, prox_mu=prox_mu),
                           weights=weights, noise_seed=noise_seed)
    init.load_state_dict(final)
    return init


def site_metrics(p: np.ndarray, y: np.ndarray, kind: str, class_names: Sequence[str]) -> dict[str, float]:
    """Accuracy and balanced accuracy (multi-class) or label-mean AUROC (multi-label)."""
    y = np.asarray(y)
    if kind == "multiclass":
        pred = np.asarray(p).argmax(1)
        return {"accuracy": float(accuracy_score(y, pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y, pred))}
    table = {"record_id": [f"r{i}" for i in range(len(y))], "split": "test"}
    for j, name in enumerate(class_names):
        table[f"y_{name}"] = y[:, j].astype(int)
        table[f"score_{name}"] = np.asarray(p)[:, j]
    rep = bootstrap_replicates(pd.DataFrame(table), list(class_names), {}, n_bootstrap=0)
    return {"auroc": float(rep.estimate[rep.labels.index("mean"), 0, rep.metrics.index("auroc")])}


def selection_score(p: np.ndarray, y: np.ndarray, kind: str, class_names: Sequence[str]) -> float:
    """What λ is chosen by: accuracy (multi-class) or mean AUROC (multi-label)."""
    m = site_metrics(p, y, kind, class_names)
    return m["accuracy"] if kind == "multiclass" else m["auroc"]


def choose_lambda(p_local: np.ndarray, p_global: np.ndarray, y_val: np.ndarray, kind: str,
                  class_names: Sequence[str]) -> float:
    """λ ∈ :data:`LAMBDAS` maximising the validation score of λ·p_local + (1 − λ)·p_global."""
    scores = [selection_score(lam * p_local + (1 - lam) * p_global, y_val, kind, class_names)
              for lam in LAMBDAS]
    return float(LAMBDAS[int(np.nanargmax(scores))])


def mean_std_over_sites(per_site: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof 1) over sites of every metric column, per method.

    ``per_site`` has columns ``method``, ``site`` and one column per metric.
    """
    metrics = [c for c in per_site.columns if c not in ("method", "site")]
    g = per_site.groupby("method", sort=False)[metrics]
    mean, std = g.mean(), g.std(ddof=1)
    out = mean.add_suffix("_mean").join(std.add_suffix("_std"))
    out["n_sites"] = per_site.groupby("method", sort=False)["site"].nunique()
    return out.reset_index()


def site_downstream(real: dict[str, tuple[np.ndarray, np.ndarray]], synthetic: tuple[np.ndarray, np.ndarray],
                    kind: str, class_names: Sequence[str], *, seed: int, epochs: int = 100,
                    lr: float = 1e-3, batch_size: int = 64) -> dict:
    """Study C's downstream step at one site.

    Parameters
    ----------
    real: ``{"train"|"val"|"test": (x, y)}`` — the site's real embeddings (scaled) and labels.
    synthetic: ``(x, y)`` — the global synthetic set this site decoded.
    kind, class_names: the task.
    seed: initialisation/shuffling seed of the two classifiers.

    Returns
    -------
    ``{"lambda": λ, "metrics": {method: {metric: value}}, "predictions": {method: {"val": p,
    "test": p}}}`` for the methods ``local`` (real data only, λ = 1), ``synthetic`` (λ = 0) and
    ``interpolated`` (λ chosen on validation); predictions feed the subgroup evaluation.
    """
    n_classes = len(class_names)
    local = train_linear(*real["train"], kind, n_classes, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size)
    glob = train_linear(*synthetic, kind, n_classes, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size)
    p = {name: {s: m.predict_proba(real[s][0]) for s in ("val", "test")}
         for name, m in (("local", local), ("synthetic", glob))}
    lam = choose_lambda(p["local"]["val"], p["synthetic"]["val"], real["val"][1], kind, class_names)
    p["interpolated"] = {s: lam * p["local"][s] + (1 - lam) * p["synthetic"][s] for s in ("val", "test")}
    metrics = {name: site_metrics(pp["test"], real["test"][1], kind, class_names) for name, pp in p.items()}
    return {"lambda": lam, "metrics": metrics, "predictions": p}
