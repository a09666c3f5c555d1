"""Radiograph augmentation for non-private training: rotation ±10° and horizontal flip p=0.5.

Applied to a whole batch ``(N, C, H, W)`` in torch (one affine grid per sample, bilinear
``grid_sample``), with every random draw taken from an explicit ``torch.Generator`` so the
run is reproducible and resumable (the generator's state is checkpointed).

Not used under DP-SGD (methods A: no augmentation in private training).

Border handling: ``padding_mode="border"`` repeats the edge pixels into the corners that
the rotation uncovers (no artificial black wedge whose value would depend on the
normalisation constants).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dpmed.errors import ConfigError


def random_affine_params(n: int, generator: torch.Generator, max_degrees: float = 10.0,
                         flip_p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample rotation angles (radians, U[-max, max]) and flip flags (Bernoulli(flip_p))."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    angles = (2.0 * u - 1.0) * math.radians(max_degrees)
    flips = torch.rand(n, generator=generator, dtype=torch.float64) < flip_p
    return angles, flips


def affine_matrices(angles: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """``(N, 2, 3)`` matrices for ``affine_grid``: rotation about the centre, then h-flip.

    ``affine_grid`` maps output coordinates to input coordinates; the flip negates the x
    coordinate of the sampling grid (a mirror), the rotation is a proper rotation.
    """
    c, s = torch.cos(angles), torch.sin(angles)
    sx = torch.where(flips, -torch.ones_like(c), torch.ones_like(c))
    theta = torch.zeros(len(angles), 2, 3, dtype=torch.float64)
    # [x_in, y_in] = R @ [sx * x_out, y_out]
    theta[:, 0, 0] = c * sx
    theta[:, 0, 1] = -s
    theta[:, 1, 0] = s * sx
    theta[:, 1, 1] = c
    return theta


def augment_batch(x: torch.Tensor, generator: torch.Generator, *, max_degrees: float = 10.0,
                  flip_p: float = 0.5) -> torch.Tensor:
    """Randomly rotate (±``max_degrees``) and horizontally flip (p = ``flip_p``) each image.

    ``x``: ``(N, C, H, W)`` float. Returns a new tensor of the same shape/dtype/device.
    Draws exactly ``2 N`` uniforms from ``generator`` (CPU generator), whatever the device of x.
    """
    if x.dim() != 4:
        raise ConfigError(
            f"augmentation is defined for 2D images (N, C, H, W); got shape {tuple(x.shape)} "
            "(set augment: false for volumes)"
        )
    n = x.shape[0]
    if n == 0:
        return x
    angles, flips = random_affine_params(n, generator, max_degrees, flip_p)
    theta = affine_matrices(angles, flips).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
