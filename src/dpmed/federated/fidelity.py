"""Fidelity of synthetic embeddings: the Sinkhorn approximation of the 2-Wasserstein distance.

geomloss' ``SamplesLoss("sinkhorn", p=2)`` returns the debiased Sinkhorn divergence for the
cost ½‖x − y‖², which tends to ½·W₂² as blur → 0; :func:`sinkhorn_w2` reports
W₂ = sqrt(2 · loss) (the seed code's sqrt(loss) is W₂/√2). ``backend="tensorized"`` is named
explicitly: ``"auto"`` switches to the KeOps "online" backend for large N·M, which fails
without pykeops. ``scaling=0.9`` (finer ε-annealing than geomloss' 0.5) for accuracy at blur 0.01.
"""

from __future__ import annotations

import numpy as np
import torch

BLUR = 0.01
SCALING = 0.9


def sinkhorn_w2(x: np.ndarray, y: np.ndarray, blur: float = BLUR, scaling: float = SCALING) -> float:
    """Sinkhorn W₂ between two point clouds with uniform weights (rows are points).

    Raises
    ------
    ValueError: empty sets, different dimensions, or non-finite values.
    """
    from geomloss import SamplesLoss

    a = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(f"need two non-empty point sets of the same dimension, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("point sets must be finite")
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=True,
                       backend="tensorized")(a, b)
    # the debiased divergence can be a hair below 0 for identical clouds
    return float(np.sqrt(2.0 * max(float(loss), 0.0)))
