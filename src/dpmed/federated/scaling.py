"""Feature scaling into [0, 1] with bounds that do not come from private data.

The CVAE's decoder ends in a Sigmoid, so embeddings are scaled into [0, 1] before training
and synthetic samples are mapped back afterwards. The published code takes per-client min/max
from the private training set: those bounds are a function of the private records released
outside the DP mechanism (the decoder's output range, and the inverse map applied to every
synthetic sample, reveal them). Here the bounds are either fixed constants or computed from the
*public* cohort's embeddings; private values outside the bounds are clipped into them.
:class:`FeatureBounds` records where its bounds came from, for the guarantee's
``non_private_inputs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpmed.errors import ConfigError
from dpmed.privacy.guarantee import NonPrivateInput


@dataclass(frozen=True)
class FeatureBounds:
    """Per-feature bounds ``low < high`` and where they came from.

    Attributes
    ----------
    low, high: ``(D,)`` float arrays.
    source: ``"fixed"`` or ``"public"``.
    description: one sentence for the card (what the bounds are, which cohort).
    """

    low: np.ndarray
    high: np.ndarray
    source: str
    description: str

    def __post_init__(self):
        low, high = np.asarray(self.low, float), np.asarray(self.high, float)
        if low.ndim != 1 or low.shape != high.shape:
            raise ConfigError(f"feature bounds must be two (D,) vectors, got {low.shape}, {high.shape}")
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (high > low).all()):
            raise ConfigError("feature bounds must be finite with high > low for every feature")
        if self.source not in ("fixed", "public"):
            raise ConfigError(f"feature bounds source must be 'fixed' or 'public', got {self.source!r}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    def scale(self, x: np.ndarray) -> np.ndarray:
        """``(x − low) / (high − low)`` clipped into [0, 1] (float32)."""
        x = np.asarray(x, float)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"features of shape {x.shape} do not fit {self.dim}-d bounds")
        return np.clip((x - self.low) / (self.high - self.low), 0.0, 1.0).astype(np.float32)

    def unscale(self, u: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`scale` on [0, 1] (synthetic samples back to embedding space)."""
        u = np.asarray(u, float)
        return (self.low + u * (self.high - self.low)).astype(np.float32)

    def non_private_input(self) -> NonPrivateInput:
        return NonPrivateInput(what="feature scaling bounds (private values clipped into them)",
                               source=self.description)


def fixed_bounds(dim: int, low: float, high: float) -> FeatureBounds:
    """The same constant bounds for every feature (e.g. [-1, 1] for L2-normalised embeddings)."""
    return FeatureBounds(np.full(int(dim), float(low)), np.full(int(dim), float(high)), "fixed",
                         f"fixed constants [{low:g}, {high:g}] for every feature")


def public_bounds(public_embeddings: np.ndarray, cohort: str, margin: float = 0.05) -> FeatureBounds:
    """Per-feature min/max of the public cohort's embeddings, widened by ``margin`` of the range.

    Parameters
    ----------
    public_embeddings: ``(N, D)`` embeddings of a cohort that is public (never a site's data).
    cohort: the cohort's name, for the card.
    margin: fraction of each feature's public range added on both sides, so private values
        slightly outside the public range are not all clipped to the edge.

    Raises
    ------
    ConfigError: empty or non-finite embeddings, or a negative margin.
    """
    e = np.asarray(public_embeddings, float)
    if e.ndim != 2 or len(e) == 0 or not np.isfinite(e).all():
        raise ConfigError(f"public cohort {cohort}: embeddings must be a non-empty finite (N, D) array")
    if margin < 0:
        raise ConfigError(f"feature bounds margin must be >= 0, got {margin}")
    lo, hi = e.min(axis=0), e.max(axis=0)
    width = hi - lo
    pad = np.where(width > 0, margin * width, 1e-3)  # a feature constant on the public cohort
    return FeatureBounds(lo - pad, hi + pad, "public",
                         f"per-feature min/max of the public cohort {cohort}'s embeddings "
                         f"(N = {len(e)}), widened by {margin:g} of the range")
