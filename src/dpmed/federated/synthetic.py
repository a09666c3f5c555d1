"""Synthetic "global" data: each site decodes z ~ N(0, I) under labels from a public distribution.

The published method draws y "from the class distribution" — the private class counts, used
outside the DP mechanism. Here the labels come from a distribution that touches no private
data, stated on the card through :meth:`LabelDistribution.non_private_input`:

* ``uniform`` (multi-class): every class equally often;
* ``public``: label vectors resampled from the public cohort's labels (multi-label: keeps the
  public co-occurrence of findings; multi-class: the public class frequencies).

The number of synthetic records per site is a configuration value, not the site's record count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dpmed.errors import ConfigError
from dpmed.models.cvae import CVAE, label_condition
from dpmed.privacy.guarantee import NonPrivateInput


@dataclass(frozen=True)
class LabelDistribution:
    """Where synthetic labels come from.

    Attributes
    ----------
    kind: ``"multiclass"`` or ``"multilabel"``.
    n_classes: C.
    source: ``"uniform"`` or ``"public"``.
    public_labels: for ``"public"``: ``(N,)`` class indices or ``(N, C)`` 0/1 rows of the public cohort.
    description: one sentence for the card.
    """

    kind: str
    n_classes: int
    source: str
    public_labels: np.ndarray | None = None
    description: str = ""

    def __post_init__(self):
        if self.source == "uniform" and self.kind != "multiclass":
            raise ConfigError("uniform synthetic labels are defined for multi-class tasks only; "
                              "use the public cohort's label vectors for multi-label tasks")
        if self.source == "public" and (self.public_labels is None or len(self.public_labels) == 0):
            raise ConfigError("synthetic labels from the public cohort need its labels")
        if self.source not in ("uniform", "public"):
            raise ConfigError(f"synthetic label source must be 'uniform' or 'public', got {self.source!r}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` labels: ``(n,)`` class indices or ``(n, C)`` 0/1 rows."""
        if self.source == "uniform":
            return rng.integers(0, self.n_classes, n)
        return np.asarray(self.public_labels)[rng.integers(0, len(self.public_labels), n)]

    def non_private_input(self) -> NonPrivateInput:
        return NonPrivateInput(what="label distribution of the synthetic data",
                               source=self.description or self.source)


def uniform_labels(n_classes: int) -> LabelDistribution:
    return LabelDistribution("multiclass", n_classes, "uniform",
                             description=f"uniform over the {n_classes} classes (no data)")


def public_labels(labels: np.ndarray, kind: str, n_classes: int, cohort: str) -> LabelDistribution:
    return LabelDistribution(kind, n_classes, "public", np.asarray(labels),
                             f"label vectors resampled from the public cohort {cohort} (N = {len(labels)})")


@torch.no_grad()
def synthesize(model: CVAE, labels: LabelDistribution, n: int,
               generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``n`` synthetic records with ``model.decoder`` (scaled features in [0, 1]).

    Returns the features ``(n, D)`` float32 and their labels. Labels and z both come from
    ``generator`` (one site's stream).
    """
    if n < 1:
        raise ConfigError(f"number of synthetic records must be >= 1, got {n}")
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    y = labels.sample(int(n), rng)
    c = label_condition(torch.as_tensor(y), labels.n_classes, labels.kind)
    model.eval()
    x = model.sample(c, generator)
    return x.numpy().astype(np.float32), y
