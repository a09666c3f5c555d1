"""Content-aware DP (CADP, methods.md D): privatise each image in the latent space of a cINN.

Mechanism, for each record (x, y) **on its own**::

    z  = f(x, c(y))                        f: the conditional INN, c(y): the label condition
    z  ← z · min(1, s / ‖z‖₁)              clip THIS record's latent to the L1 ball of radius s
    z̃  = z + Laplace(0, b)^D               i.i.d. noise in every one of the D latent dimensions
    x̃  = clamp(f⁻¹(z̃, c(y)), valid range)  post-processing

Why b = 2s/ε gives ε-DP per image
---------------------------------
The Laplace mechanism releasing q(x) + Lap(b)^D is (Δ₁/b)-DP, where Δ₁ = max ‖q(x) − q(x')‖₁
over the two inputs x, x' that a neighbour relation lets differ. Here q(x) is the clipped latent;
after clipping both latents lie in the L1 ball of radius s, so ‖q(x) − q(x')‖₁ ≤ ‖q(x)‖₁ +
‖q(x')‖₁ ≤ 2s (the ball's diameter; reached by z and −z). Hence Δ₁ = 2s and scale b gives
ε = 2s/b; choosing b = 2s/ε makes the release of each privatised image ε-DP (pure, δ = 0).
x̃ is a fixed function of z̃ and y, so it keeps the guarantee (post-processing) — provided f
does not depend on the records being protected (trained on public data). An f trained on private
images is a non-private function of them that every released image passes through: the release
then has NO guarantee (:func:`cadp_guarantee` returns kind ``none``; the nominal per-image ε is
kept in its parameters only).

The published setting b = s/ε protects an L1 sensitivity of s only, i.e. it gives 2ε. It is
offered as the labelled reproduction rule ``"paper_s_over_eps"``, whose guarantee reports 2ε.
The paper's sensitivity rule s = min(ε/2, 4) is :func:`paper_sensitivity`.

What the guarantee is (and is not): local (per-record input perturbation), per image, pure ε.
A patient with k images is protected at k·ε by composition. The label is the condition of
f⁻¹ and is released in the clear. It is not a central (ε, δ) of a training algorithm and must
not be plotted as the same quantity as DP-SGD's ε without saying so.

The Laplace noise comes from OS entropy: a fresh ``torch.Generator`` seeded with
``secrets.randbits(63)`` per call (the config seed never touches it). Clipping and noise are
computed in float64.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dpmed.errors import ConfigError
from dpmed.io.cache import CacheWriter
from dpmed.models.inn import ConditionalINN, check_invertible, label_condition
from dpmed.settings import settings_from_mapping
from dpmed.privacy.guarantee import Guarantee, NonPrivateInput

__all__ = [
    "CADPSettings",
    "MECHANISM",
    "SCALE_RULES",
    "cadp_guarantee",
    "clip_l1",
    "laplace_noise",
    "laplace_scale",
    "local_epsilon",
    "max_records_per_patient",
    "os_entropy_generator",
    "paper_sensitivity",
    "privatise_batch",
    "privatise_cache",
    "privatise_latent",
]

MECHANISM = "cadp-laplace"
#: b = 2s/ε (ε-DP, the default) | b = s/ε (the published setting; 2ε-DP, reproduction only).
SCALE_RULES = ("two_s_over_eps", "paper_s_over_eps")
OS_ENTROPY = "OS entropy: torch.Generator seeded with secrets.randbits(63), fresh per call"
INJECTED = "caller-supplied generator (tests only: not a valid noise source for a release)"


def paper_sensitivity(epsilon: float) -> float:
    """The paper's clip radius s = min(ε/2, 4) (methods.md D)."""
    return min(float(epsilon) / 2.0, 4.0)


def laplace_scale(sensitivity: float, epsilon: float, scale_rule: str = "two_s_over_eps") -> float:
    """Laplace scale b for clip radius s and nominal ε: 2s/ε (``two_s_over_eps``) or s/ε (paper)."""
    if scale_rule not in SCALE_RULES:
        raise ConfigError(f"CADP scale_rule must be one of {SCALE_RULES}, got {scale_rule!r}")
    factor = 2.0 if scale_rule == "two_s_over_eps" else 1.0
    return factor * float(sensitivity) / float(epsilon)


def local_epsilon(sensitivity: float, scale: float) -> float:
    """The ε that holds for L1 clip radius s and Laplace scale b: 2s/b (see the module docstring)."""
    return 2.0 * float(sensitivity) / float(scale)


@dataclass(frozen=True)
class CADPSettings:
    """One CADP release.

    Attributes
    ----------
    epsilon: the nominal ε of the grid (> 0, finite).
    sensitivity: L1 clip radius s; None = the paper's rule min(ε/2, 4).
    scale_rule: one of :data:`SCALE_RULES`; only ``two_s_over_eps`` makes ``epsilon`` hold.
    batch_size: images per forward/inverse pass (speed only).
    recon_tolerance: largest allowed max |f⁻¹(f(x)) − x| on the first batch (checked before use).
    """

    epsilon: float
    sensitivity: float | None = None
    scale_rule: str = "two_s_over_eps"
    batch_size: int = 64
    recon_tolerance: float = 1e-3

    def __post_init__(self):
        if not (math.isfinite(float(self.epsilon)) and self.epsilon > 0):
            raise ConfigError(f"CADP epsilon must be finite and > 0, got {self.epsilon!r}")
        if self.sensitivity is not None and not (math.isfinite(self.sensitivity) and self.sensitivity > 0):
            raise ConfigError(f"CADP sensitivity must be finite and > 0, got {self.sensitivity!r}")
        if self.scale_rule not in SCALE_RULES:
            raise ConfigError(f"CADP scale_rule must be one of {SCALE_RULES}, got {self.scale_rule!r}")
        if self.batch_size < 1 or not (self.recon_tolerance > 0):
            raise ConfigError("CADP batch_size must be >= 1 and recon_tolerance > 0")

    @classmethod
    def from_mapping(cls, mapping) -> "CADPSettings":
        return settings_from_mapping(cls, mapping, "CADP")

    @property
    def clip(self) -> float:
        """s: the clip radius in use."""
        return paper_sensitivity(self.epsilon) if self.sensitivity is None else float(self.sensitivity)

    @property
    def scale(self) -> float:
        """b: the Laplace scale in use."""
        return laplace_scale(self.clip, self.epsilon, self.scale_rule)

    @property
    def epsilon_holding(self) -> float:
        """2s/b: the ε that holds (``epsilon`` for the default rule, 2·``epsilon`` for the paper's)."""
        return local_epsilon(self.clip, self.scale)


def os_entropy_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded from the OS (never from the config)."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def clip_l1(z: torch.Tensor, sensitivity: float) -> torch.Tensor:
    """Scale each sample's latent (row of ``z``, shape (B, D)) into the L1 ball of radius s.

    ``z_i ← z_i · min(1, s / ‖z_i‖₁)``: each row depends on that row only (no batch norm).
    """
    if z.ndim != 2:
        raise ValueError(f"latents must have shape (batch, dims), got {tuple(z.shape)}")
    norms = z.abs().sum(dim=1, keepdim=True)
    factor = torch.clamp(float(sensitivity) / norms.clamp_min(torch.finfo(z.dtype).tiny), max=1.0)
    return z * factor


def laplace_noise(shape: Sequence[int], scale: float, generator: torch.Generator,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """i.i.d. Laplace(0, scale) as the difference of two Exp(1) draws, times ``scale``.

    The difference of two independent Exp(1) variables is Laplace(0, 1); ``exponential_`` takes
    an explicit generator (``torch.distributions.Laplace`` does not), and never yields inf.
    """
    device = generator.device
    e1 = torch.empty(tuple(shape), dtype=dtype, device=device).exponential_(1.0, generator=generator)
    e2 = torch.empty(tuple(shape), dtype=dtype, device=device).exponential_(1.0, generator=generator)
    return float(scale) * (e1 - e2)


@torch.no_grad()
def privatise_batch(inn: ConditionalINN, images: torch.Tensor, condition: torch.Tensor, settings: CADPSettings,
                    *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Privatise a batch of images in [0, 1], each on its own (see the module docstring).

    Parameters
    ----------
    inn: the conditional INN (put in eval mode here).
    images: (B, C, H, W) float in [0, 1].
    condition: (B, n_conditions) label condition (:func:`~dpmed.models.inn.label_condition`).
    settings: ε, s and the scale rule.
    generator: source of the Laplace noise; ``None`` (every release) = fresh OS entropy. Tests only
        pass one, to compare outputs under the same noise.

    Returns
    -------
    (B, C, H, W) float32 privatised images, clamped to [0, 1].
    """
    inn.eval()
    z, _ = inn(images, condition)
    z_noisy = privatise_latent(z, settings, generator=generator)
    x = inn.inverse(z_noisy.to(torch.float32), condition)
    return x.clamp(0.0, 1.0)


def privatise_latent(z: torch.Tensor, settings: CADPSettings, *,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The DP step on latents (B, D): per-sample L1 clip to s, then i.i.d. Laplace(b); float64.

    ``generator``: None = fresh OS entropy (every release); tests pass one.
    """
    gen = generator if generator is not None else os_entropy_generator(z.device)
    clipped = clip_l1(z.to(torch.float64), settings.clip)
    return clipped + laplace_noise(clipped.shape, settings.scale, gen).to(z.device)


def cadp_guarantee(settings: CADPSettings, *, latent_dims: int, inn_trained_on: str, inn_on_private: bool,
                   max_records_per_patient: int | None = None, injected_noise: bool = False) -> Guarantee:
    """The local per-image guarantee of one CADP release, computed from s and b.

    Parameters
    ----------
    settings: the release's settings (ε = 2s/b is computed, not copied from ``settings.epsilon``).
    latent_dims: D, the number of latent values that receive noise.
    inn_trained_on: what the INN was trained on (e.g. ``"cxr_public/train (public cohort)"``).
    inn_on_private: the INN was trained on private images (a cohort that is not public): the
        guarantee is then of kind ``none`` (see below), with the nominal local ε in its parameters.
    max_records_per_patient: k, if known: the per-patient ε is k·ε by composition.
    injected_noise: the noise came from a caller-supplied generator (tests).
    """
    s, b = settings.clip, settings.scale
    eps = local_epsilon(s, b)
    not_guaranteed = [
        "The label is released in the clear: it is the condition of the invertible network.",
        "Local, per-image input perturbation: each privatised image on its own is "
        f"{eps:.6g}-DP. Per patient only by composition over that patient's images "
        "(k images: k·ε)" + (f"; at most {max_records_per_patient} images per patient here: "
                             f"{max_records_per_patient * eps:.6g}" if max_records_per_patient else "") + ".",
        "Not a central (ε, δ) guarantee of a training algorithm: not the same quantity as DP-SGD's ε; "
        "never plot or tabulate them as one without saying so.",
        "Laplace noise is sampled in floating point (float64); exact real-valued noise is assumed.",
    ]
    if settings.scale_rule == "paper_s_over_eps":
        not_guaranteed.append(f"Reproduction of the published scale b = s/ε: ε = {settings.epsilon:g} is "
                              f"NOT what holds; two clipped latents differ by up to 2s, so ε = 2s/b = {eps:.6g}.")
    parameters = {"sensitivity": s, "laplace_scale": b, "clip_norm": "L1", "latent_dims": int(latent_dims),
                  "scale_rule": settings.scale_rule, "epsilon_nominal": float(settings.epsilon),
                  "max_records_per_patient": max_records_per_patient}
    released = "the privatised images and their labels (one privatised copy of each record)"
    npi = (NonPrivateInput("invertible network f (latent encoder/decoder)", inn_trained_on),)
    if inn_on_private:
        # f is a non-private function of the released records, and every privatised image is a
        # function of f: the release as a whole has no DP guarantee. The per-image Laplace step
        # still has its nominal local epsilon, kept in the parameters only.
        reason = (f"No DP guarantee for the release as a whole: the invertible network was trained without "
                  f"privacy on {inn_trained_on}, i.e. on private images, and every privatised image is computed "
                  "through it, so the network is a non-private function of those images that the release "
                  f"exposes. The per-image Laplace step alone would give a local ε = 2s/b = {eps:.6g} "
                  "(parameters.epsilon_local_nominal) for a FIXED network; that ε does not hold here.")
        return Guarantee(kind="none", unit="record", epsilon=math.inf, delta=None, mechanism=MECHANISM,
                         parameters={**parameters, "epsilon_local_nominal": eps}, released=released,
                         not_guaranteed=(reason, *not_guaranteed), non_private_inputs=npi,
                         noise_source=INJECTED if injected_noise else OS_ENTROPY,
                         epsilon_target=float(settings.epsilon))
    return Guarantee(
        kind="local", unit="record", epsilon=eps, delta=0.0, mechanism=MECHANISM, parameters=parameters,
        released=released, not_guaranteed=tuple(not_guaranteed), non_private_inputs=npi,
        noise_source=INJECTED if injected_noise else OS_ENTROPY,
        epsilon_target=float(settings.epsilon),
    )


def max_records_per_patient(manifest, splits: Sequence[str]) -> int | None:
    """k: the most records one patient has in ``splits`` of ``manifest`` (for the per-patient
    statement k·ε; treated as public, as the card says). None without a ``patient_id`` column."""
    if "patient_id" not in manifest.columns:
        return None
    m = manifest[manifest["split"].isin(list(splits))]
    return int(m.groupby("patient_id").size().max()) if len(m) else None


def _cache_attrs(path) -> dict:
    import h5py

    from dpmed.io.cache import decode_attr

    with h5py.File(path, "r") as fh:
        return {k: decode_attr(v) for k, v in fh.attrs.items() if k != "dpmed_version"}


def _to_stored(x01: np.ndarray, value_range: tuple[float, float], dtype: np.dtype) -> np.ndarray:
    """Images in [0, 1] back to the cache's stored values (inverse of CacheDataset's scaling)."""
    lo, hi = value_range
    v = lo + x01.astype(np.float64) * (hi - lo)
    if np.issubdtype(dtype, np.integer):
        v = np.clip(np.rint(v), lo, hi)
    return v.astype(dtype)


def privatise_cache(inn: ConditionalINN, *, inn_trained_on, cache_in, cache_out, manifest, labels: Sequence[str],
                    settings: CADPSettings, device: str | torch.device = "cpu",
                    max_records_per_patient: int | None = None,
                    generator: torch.Generator | None = None) -> Guarantee:
    """Write a privatised copy of one HDF5 cache split, in the same format, and return its guarantee.

    Same record ids in the same order, same dtype, ``value_range`` and attributes (plus
    ``privatised``: the guarantee as JSON), so every later stage reads it like real data. The
    file is written atomically. Labels are not stored in caches; they stay in the manifest,
    unchanged (they are the condition and are released in the clear).

    Parameters
    ----------
    inn: the trained network (eval mode); ``inn_trained_on``: its
        :class:`~dpmed.models.inn_training.INNTrainingData` (or anything with ``role`` and ``describe()``).
    cache_in, cache_out: the split's cache and where to write its privatised copy.
    manifest, labels: the labels ``label_<name>`` that form the condition.
    settings: ε, s, scale rule, batch size, reconstruction tolerance.
    device: where the network runs. ``max_records_per_patient``: for the per-patient statement.
    generator: tests only (see :func:`privatise_batch`); None = OS entropy.

    Raises
    ------
    InvertibilityError: the network does not invert the first batch within ``recon_tolerance``.
    ConfigError: the cache does not fit the network.
    """
    from dpmed.models.inn_training import open_image_cache

    if inn.settings.channels != 1:
        raise ConfigError(f"privatising a cache needs a single-channel INN, got channels = {inn.settings.channels}")
    ds = open_image_cache(cache_in, manifest, labels, inn.settings)
    dev = torch.device(device)
    inn = inn.to(dev).eval()
    guarantee = cadp_guarantee(settings, latent_dims=inn.latent_dims, inn_trained_on=inn_trained_on.describe(),
                               inn_on_private=inn_trained_on.role == "private",
                               max_records_per_patient=max_records_per_patient,
                               injected_noise=generator is not None)
    attrs = {**_cache_attrs(cache_in), "privatised": guarantee.to_dict()}
    gen = generator if generator is not None else os_entropy_generator(dev)
    with CacheWriter(cache_out, len(ds), ds.sample_shape, ds.dtype, attrs) as writer:
        for start in range(0, len(ds), settings.batch_size):
            idx = list(range(start, min(start + settings.batch_size, len(ds))))
            x = torch.stack([ds.image(i) for i in idx]).to(dev)
            c = label_condition(ds.targets[idx]).to(dev)
            if start == 0:
                check_invertible(inn, x, c, settings.recon_tolerance, where=f"first batch of {Path(cache_in).name}")
            x_priv = privatise_batch(inn, x, c, settings, generator=gen)[:, 0].cpu().numpy()
            for j, i in enumerate(idx):
                writer.write(i, ds.record_ids[i], _to_stored(x_priv[j], ds.value_range, ds.dtype))
    return guarantee
