"""MCGAN training as a task: per-pair discriminator loss, generator loss, augmentation, checks.

The pieces a training loop needs, each on its own so that the private-training engine can run
the discriminator under DP-SGD with the same functions as the non-private loop here:

* :func:`discriminator_pair_losses` — ``ℓ_i = BCE(D(x_i, y_i), t_i) + BCE(D(x̃_i, ỹ_i), 0)``
  with ``x̃_i = G(z_i, ỹ_i)``: one value per **pair** (a real record and the fake paired with
  it), shape ``(B,)``. Under DP the pair is the unit clipped together: the fake carries no
  private information of its own, but D's gradient on it depends on D, and D's per-record
  sensitivity is bounded only if both terms sit inside one clipped per-sample gradient.
* :func:`discriminator_batch_losses` — the same for a batch of real records: augmentation, one
  fake per record, smoothed targets (what a private engine calls on each Poisson batch).
* :func:`generator_loss` — the non-saturating loss ``mean BCE(D(G(z, ỹ), ỹ), 1)``.
* :func:`augment_patches` — h/v flips (p = 0.5) and a random resized crop (area scale 0.9–1.1,
  aspect 0.95–1.1), drawn from an explicit generator seeded from the config seed.
* :func:`draw_real_targets` — one-sided label smoothing ``t ~ U[0.7, 1.2]`` (paper).
* :class:`MCGANTask` — the above bundled as a task of the private-training engine's loop
  (``step(model, batch) -> (B,)`` and an ``after_step`` generator update).
* :func:`check_finite` / :func:`check_collapse` — divergence stops the run naming the epoch.
* :class:`CheckpointRule` — which epoch's generator is kept: a fixed epoch, or the best by a
  fidelity scorer on public or held-out data.

Label smoothing with targets above 1
------------------------------------
The paper draws real targets from U[0.7, 1.2]. With BCE-with-logits,
``ℓ(x, t) = softplus(x) − t·x`` is defined for any t; its gradient ``σ(x) − t`` is negative
for every x when t > 1, so for such a sample D is pushed to raise the real logit without bound
(the loss has no minimum, it decreases linearly). We keep the paper's range (it is the fact
being reproduced); its mean 0.95 still smooths the targets, and Adam's step-size bound and the
fake term keep the logits finite in practice. :func:`check_finite` stops a run whose losses do
not stay finite.

Randomness
----------
Shuffling, z, fake labels, smoothing targets and augmentation come from ``torch.Generator`` s
seeded from the config seed: none of them protects privacy (under DP the guarantee rests on
the engine's Poisson sampling and noise, which use OS entropy).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dpmed.errors import ConfigError, DpmedError
from dpmed.settings import pair_of_floats, settings_from_mapping

__all__ = [
    "GANDivergenceError", "GANTrainSettings", "CheckpointRule", "MCGANTask", "draw_real_targets",
    "sample_latent", "augment_patches", "discriminator_pair_losses", "discriminator_batch_losses",
    "generator_loss",
    "check_finite", "check_collapse", "max_pairwise_rms",
]


class GANDivergenceError(DpmedError):
    """A GAN diverged (non-finite loss or collapsed output); no generator is written."""


@dataclass(frozen=True)
class GANTrainSettings:
    """Training settings of MCGAN (methods.md B); unknown keys are refused by :meth:`from_mapping`.

    Attributes
    ----------
    epochs, batch_size (16), lr (1e-4), betas ((0.5, 0.999)): Adam for both networks.
    real_target_range: one-sided label smoothing, real targets ~ U[lo, hi] ((0.7, 1.2)).
    augment: h/v flips and random resized crop on real patches.
    flip_p, crop_scale, crop_ratio: augmentation parameters (0.5, (0.9, 1.1), (0.95, 1.1)).
    select: ``"fixed"`` (keep the generator of ``select_epoch``, default the last epoch) or
        ``"best"`` (lowest score of the scorer, evaluated every ``score_every`` epochs).
    collapse_samples, collapse_tol: the collapse check draws this many samples after every
        epoch; all pairwise RMS distances (images in [−1, 1]) below ``collapse_tol`` → collapsed.
    keep_checkpoint: keep ``checkpoint.pt`` after a finished run.
    """

    epochs: int
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    real_target_range: tuple[float, float] = (0.7, 1.2)
    augment: bool = True
    flip_p: float = 0.5
    crop_scale: tuple[float, float] = (0.9, 1.1)
    crop_ratio: tuple[float, float] = (0.95, 1.1)
    select: str = "fixed"
    select_epoch: int | None = None
    score_every: int = 1
    collapse_samples: int = 32
    collapse_tol: float = 5e-3
    keep_checkpoint: bool = False

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.score_every < 1 or self.collapse_samples < 2:
            raise ConfigError("GAN epochs, batch_size, score_every must be >= 1, collapse_samples >= 2")
        if not self.lr > 0:
            raise ConfigError(f"GAN lr must be > 0, got {self.lr!r}")
        lo, hi = self.real_target_range
        if not 0 <= lo <= hi:
            raise ConfigError(f"real_target_range must be 0 <= lo <= hi, got {self.real_target_range}")
        if self.select not in ("fixed", "best"):
            raise ConfigError(f"GAN checkpoint select must be 'fixed' or 'best', got {self.select!r}")
        if self.select_epoch is not None and not 1 <= self.select_epoch <= self.epochs:
            raise ConfigError(f"select_epoch {self.select_epoch} is outside 1..{self.epochs}")
        for name in ("crop_scale", "crop_ratio"):
            a, b = getattr(self, name)
            if not 0 < a <= b:
                raise ConfigError(f"{name} must be 0 < lo <= hi, got {getattr(self, name)}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "GANTrainSettings":
        convert = dict.fromkeys(("betas", "real_target_range", "crop_scale", "crop_ratio"), pair_of_floats)
        convert.update(dict.fromkeys(("epochs", "batch_size", "score_every", "collapse_samples", "select_epoch"), int))
        return settings_from_mapping(cls, cfg, "GAN training", required=("epochs",), convert=convert)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ------------------------------------------------------------------------- random draws
def draw_real_targets(n: int, generator: torch.Generator, low: float = 0.7, high: float = 1.2,
                      device=None) -> torch.Tensor:
    """Smoothed real targets ``t ~ U[low, high]`` (paper: U[0.7, 1.2]), shape ``(n,)``."""
    t = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float32)
    return t.to(device) if device is not None else t


def sample_latent(n: int, latent_dim: int, num_classes: int, generator: torch.Generator,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``z ~ N(0, I)`` of shape ``(n, latent_dim)`` and uniform fake labels ``ỹ`` of shape ``(n,)``."""
    z = torch.randn(n, latent_dim, generator=generator)
    y = torch.randint(num_classes, (n,), generator=generator)
    return (z, y) if device is None else (z.to(device), y.to(device))


# ------------------------------------------------------------------------- augmentation
def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def crop_flip_matrices(n: int, generator: torch.Generator, *, flip_p: float = 0.5,
                       scale=(0.9, 1.1), ratio=(0.95, 1.1)) -> torch.Tensor:
    """``(n, 2, 3)`` ``affine_grid`` matrices of a random resized crop and h/v flips.

    The crop window covers a fraction ``s ~ U[scale]`` of the image area with aspect
    ``w/h = r`` (``log r`` uniform in ``log ratio``, as torchvision draws it): half-widths
    ``sqrt(s·r)`` and ``sqrt(s/r)`` in normalised coordinates, centred uniformly where it stays
    inside the image (or, for a window larger than the image, where it keeps the image inside);
    the window is resized back to the full image. Draws ``5 n`` uniforms.
    """
    s = _uniform(n, *scale, generator)
    r = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator))
    wx, wy = torch.sqrt(s * r), torch.sqrt(s / r)
    tx = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * (1 - wx).abs()
    ty = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * (1 - wy).abs()
    flips = torch.rand(n, 2, generator=generator, dtype=torch.float64) < flip_p
    sx = torch.where(flips[:, 0], -wx, wx)
    sy = torch.where(flips[:, 1], -wy, wy)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    return theta


def augment_patches(x: torch.Tensor, generator: torch.Generator, *, flip_p: float = 0.5,
                    scale=(0.9, 1.1), ratio=(0.95, 1.1)) -> torch.Tensor:
    """Random resized crop + h/v flips of ``x`` ``(N, C, H, W)`` (bilinear, border padding).

    Each image is transformed on its own (a per-sample function of its record, so it changes
    nothing in per-sample clipping). Returns a new tensor of the same shape, dtype and device.
    """
    if x.dim() != 4:
        raise ConfigError(f"patch augmentation needs (N, C, H, W), got shape {tuple(x.shape)}")
    if len(x) == 0:
        return x
    theta = crop_flip_matrices(len(x), generator, flip_p=flip_p, scale=scale, ratio=ratio)
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ------------------------------------------------------------------------- losses
def discriminator_pair_losses(d: nn.Module, real: torch.Tensor, y_real: torch.Tensor,
                              fake: torch.Tensor, y_fake: torch.Tensor,
                              real_targets: torch.Tensor) -> torch.Tensor:
    """Per-pair discriminator loss ``ℓ_i = BCE(D(x_i, y_i), t_i) + BCE(D(x̃_i, ỹ_i), 0)``.

    Parameters
    ----------
    d: the discriminator (logits out).
    real, y_real: B real patches ``(B, 1, S, S)`` in [−1, 1] and their labels ``(B,)``.
    fake, y_fake: B generated patches (detached from G for the D step) and their labels; fake
        ``i`` is paired with real record ``i``.
    real_targets: ``(B,)`` smoothed real targets (:func:`draw_real_targets`).

    Returns
    -------
    ``(B,)`` losses; the D step minimises their mean. The engine clips each entry's gradient
    as one unit (D is called twice, once per half of the pair).

    Raises
    ------
    ValueError: the real and fake batches differ in size (the pairing would be wrong).
    """
    if len(real) != len(fake) or len(y_real) != len(real) or len(y_fake) != len(fake):
        raise ValueError(f"real ({len(real)}) and fake ({len(fake)}) batches must pair one to one")
    lr = F.binary_cross_entropy_with_logits(d(real, y_real), real_targets.to(real.dtype), reduction="none")
    lf = F.binary_cross_entropy_with_logits(
        d(fake, y_fake), torch.zeros(len(fake), dtype=fake.dtype, device=fake.device), reduction="none")
    return lr + lf


def discriminator_batch_losses(d: nn.Module, g: nn.Module, real: torch.Tensor, y_real: torch.Tensor,
                               settings: "GANTrainSettings", latent_gen: torch.Generator,
                               augment_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Everything of one D step but backward and update, for a batch of real records.

    Augments the real patches (if ``settings.augment``), draws one fake per real record
    (``z``, ``ỹ`` from ``latent_gen``), draws the smoothed targets, and returns
    ``(losses (B,), fake, ỹ)``: the per-pair losses of :func:`discriminator_pair_losses` (the
    fakes enter them detached, so the D backward never reaches G) and the fakes *with* their
    graph, which the G step may reuse. An empty batch (Poisson sampling) gives empty tensors.
    """
    dev = real.device
    st = g.settings
    if settings.augment:
        real = augment_patches(real, augment_gen, flip_p=settings.flip_p, scale=settings.crop_scale,
                               ratio=settings.crop_ratio)
    z, y_fake = sample_latent(len(real), st.latent_dim, st.num_classes, latent_gen, dev)
    t = draw_real_targets(len(real), latent_gen, *settings.real_target_range, dev)
    fake = g(z, y_fake)
    return discriminator_pair_losses(d, real, y_real, fake.detach(), y_fake, t), fake, y_fake


def generator_loss(d: nn.Module, fake: torch.Tensor, y_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``mean_i BCE(D(G(z_i, ỹ_i), ỹ_i), 1)`` (a scalar)."""
    logits = d(fake, y_fake)
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


# ------------------------------------------------------------------------- the task
class MCGANTask:
    """MCGAN as a task of a training loop: D is the trained model, G is updated after each D step.

    Contract of the private-training engine (``dpmed.training.engine``)::

        task = MCGANTask(g, opt_g, settings, trainer.task_generator)
        trainer.run_epochs(n, task.d_losses, after_step=task.after_step, task_state=task.state_dict)

    * :meth:`d_losses` ``(model, batch) -> (B,)``: per-pair losses of a (physical) batch of real
      records ``(images in [−1, 1], labels)``; each real record is paired with its own fake,
      so the engine clips the pair as one unit. Non-finite losses are remembered
      (:attr:`nonfinite`) for the divergence check.
    * :meth:`g_step` ``(d) -> float``: one generator step on ``settings.batch_size`` fresh fakes
      through ``d``; :meth:`after_step` runs it inside ``trainer.outside_mechanism()`` (under DP
      the generator step is post-processing of the released D: no D gradient, no per-sample
      state, no privacy cost).
    * ``rng``: one generator for all task randomness (augmentation, z, fake labels, targets),
      seeded from the config seed (the engine's ``task_generator``).
    """

    def __init__(self, generator: nn.Module, g_optimizer: torch.optim.Optimizer, settings: "GANTrainSettings",
                 rng: torch.Generator):
        self.g = generator
        self.opt_g = g_optimizer
        self.settings = settings
        self.rng = rng
        self.nonfinite = False
        self.g_losses: list[float] = []

    def d_losses(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch[0], batch[1]
        y = y.reshape(len(y), -1)[:, 0] if y.dim() > 1 else y  # CacheDataset targets are (B, 1) floats
        losses, _, _ = discriminator_batch_losses(model, self.g, x, y.long(), self.settings, self.rng, self.rng)
        if not bool(torch.isfinite(losses.detach()).all()):
            self.nonfinite = True
        return losses

    def g_step(self, d: nn.Module) -> float:
        st = self.g.settings
        z, y = sample_latent(self.settings.batch_size, st.latent_dim, st.num_classes, self.rng,
                             next(self.g.parameters()).device)
        self.opt_g.zero_grad(set_to_none=True)
        loss = generator_loss(d, self.g(z, y), y)
        loss.backward()
        self.opt_g.step()
        self.g_losses.append(loss.item())
        return self.g_losses[-1]

    def after_step(self, trainer) -> None:
        with trainer.outside_mechanism() as d:
            self.g_step(d)

    def take_epoch_losses(self) -> tuple[bool, float]:
        """(non-finite D loss seen, mean G loss) since the last call; resets both."""
        out = (self.nonfinite, float(np.mean(self.g_losses)) if self.g_losses else math.nan)
        self.nonfinite, self.g_losses = False, []
        return out

    def state_dict(self) -> dict:
        return {"g": self.g.state_dict(), "opt_g": self.opt_g.state_dict(), "rng": self.rng.get_state()}

    def load_state_dict(self, st: Mapping[str, Any]) -> None:
        self.g.load_state_dict(st["g"])
        self.opt_g.load_state_dict(st["opt_g"])
        self.rng.set_state(st["rng"])


# ------------------------------------------------------------------------- divergence
def check_finite(epoch: int, **losses: float) -> None:
    """Raise :class:`GANDivergenceError` naming ``epoch`` if a loss is NaN or infinite."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(float(v))}
    if bad:
        raise GANDivergenceError(
            f"GAN diverged in epoch {epoch}: non-finite loss {bad}; no generator was written "
            "(lower the learning rate or check the input scaling)")


def max_pairwise_rms(samples: torch.Tensor) -> float:
    """Largest root-mean-square pixel distance between any two of ``samples`` ``(N, ...)``."""
    flat = samples.detach().reshape(len(samples), -1).double()
    return float(torch.cdist(flat, flat).max() / math.sqrt(flat.shape[1]))


def check_collapse(epoch: int, samples: torch.Tensor, tol: float) -> float:
    """Raise :class:`GANDivergenceError` if all samples lie within ``tol`` (RMS) of each other.

    Returns the largest pairwise RMS distance (logged as a diversity measure).
    """
    spread = max_pairwise_rms(samples)
    if not math.isfinite(spread) or spread < tol:
        raise GANDivergenceError(
            f"GAN collapsed in epoch {epoch}: {len(samples)} samples for different z and labels "
            f"are all within RMS distance {spread:.3g} < {tol:g} of each other; no generator was written")
    return spread


# ------------------------------------------------------------------------- checkpoint rule
@dataclass
class CheckpointRule:
    """Which epoch's generator is kept: fixed epoch or best by a fidelity score.

    ``scorer(generator) -> float`` (lower is better) must compare the generator's samples with
    **public or held-out** data: a score computed on the private training records would choose
    the released model with private data outside the DP mechanism. :meth:`describe` says which
    data the caller declared (``score_data``), and it goes on the card.
    """

    select: str
    epochs: int
    select_epoch: int | None = None
    score_every: int = 1
    scorer: Callable[[nn.Module], float] | None = None
    score_data: str = ""
    best_epoch: int | None = None
    best_score: float = math.inf
    best_state: dict | None = field(default=None, repr=False)
    scores: list = field(default_factory=list)

    def __post_init__(self):
        if self.select == "best" and (self.scorer is None or not self.score_data):
            raise ConfigError("checkpoint selection 'best' needs a scorer and the data it reads "
                              "(public or held-out: never the private training records)")
        if self.select == "fixed" and self.select_epoch is None:
            self.select_epoch = self.epochs

    def consider(self, epoch: int, generator: nn.Module) -> None:
        """Called after each epoch; keeps a copy of the generator the rule selects."""
        if self.select == "fixed":
            if epoch == self.select_epoch:
                self._keep(epoch, generator, math.nan)
            return
        if epoch % self.score_every and epoch != self.epochs:
            return
        score = float(self.scorer(generator))
        self.scores.append((epoch, score))
        if math.isfinite(score) and (self.best_epoch is None or score < self.best_score):
            self._keep(epoch, generator, score)

    def _keep(self, epoch: int, generator: nn.Module, score: float) -> None:
        self.best_epoch, self.best_score = epoch, score
        self.best_state = {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()}

    def describe(self) -> dict[str, Any]:
        return {"select": self.select, "epoch": self.best_epoch, "score": self.best_score,
                "score_data": self.score_data or None, "scores": list(self.scores)}

    def state(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "best_score": self.best_score,
                "best_state": self.best_state, "scores": list(self.scores)}

    def load_state(self, st: Mapping[str, Any]) -> None:
        self.best_epoch, self.best_score = st["best_epoch"], st["best_score"]
        self.best_state, self.scores = st["best_state"], list(st["scores"])


def seeds_for(seed: int, n: int = 4) -> list[int]:
    """Independent seeds (init, shuffling, latent draws, augmentation) from the config seed."""
    return [int(x) & ((1 << 63) - 1) for x in np.random.SeedSequence(int(seed)).generate_state(n, np.uint64)]
