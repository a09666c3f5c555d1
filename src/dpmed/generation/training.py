"""MCGAN training through the private-training engine, for both variants of study B.

* **DP-MCGAN** (``epsilon`` finite): the discriminator is trained with DP-SGD by
  :class:`~dpmed.training.engine.PrivateTrainer` — Poisson sampling over the real records, one
  clipped per-sample gradient per (real record, paired fake) unit
  (:meth:`~dpmed.generation.gan.MCGANTask.d_losses`), Gaussian noise, the accountant. The
  generator is updated after every D step inside ``trainer.outside_mechanism()``: it sees the
  private data only through the sequence of released discriminators, so it is post-processing
  of D and carries D's guarantee (:func:`generator_guarantee`).
* **MCGAN** (``epsilon = inf``, the study's variant): the same loop without clipping or noise
  (shuffled batches); the generator and everything made from it carry **no** guarantee.

Outputs in ``out_dir``: ``generator.pt`` (the selected generator, see :func:`load_generator`;
it stores the guarantee) and ``history.csv`` (per epoch: mean G loss, sample spread, score, ε
spent; the D loss only without DP — under DP it is an un-noised statistic of the records).
The engine's checkpoint (every random state, the secret noise seed, G, the selection rule)
is written after each epoch to ``checkpoint`` (under the private directory); a killed run
resumes from it, a checkpoint of other settings or data is refused. A divergence raises
:class:`~dpmed.generation.gan.GANDivergenceError` naming the epoch before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from dpmed.errors import ConfigError
from dpmed.settings import settings_from_mapping
from dpmed.generation.gan import (CheckpointRule, GANTrainSettings, MCGANTask, check_collapse, check_finite,
                                  sample_latent, seeds_for)
from dpmed.io.atomic import atomic_path, write_csv
from dpmed.models.mcgan import MCGANGenerator, MCGANSettings, build_mcgan
from dpmed.privacy.guarantee import Guarantee, NonPrivateInput, no_guarantee, post_processing
from dpmed.training.engine import EngineSettings, PrivateTrainer

__all__ = ["GANPrivacySettings", "train_mcgan", "generator_guarantee", "nonprivate_guarantee", "load_generator",
           "load_patches"]

GENERATOR_FILE = "generator.pt"
HISTORY_COLUMNS = ["epoch", "loss_d", "loss_g", "sample_spread", "score", "epsilon", "seconds"]


@dataclass(frozen=True)
class GANPrivacySettings:
    """DP-SGD settings of the discriminator (DP-MCGAN); ``epsilon = inf``: the non-private MCGAN.

    Attributes
    ----------
    epsilon: the generator budget ε_g (``inf``: no DP).
    delta, max_grad_norm (C), accountant: as for the classifiers (paper: δ 1e-4, C 1.0).
    grad_sample_mode: per-pair clipping by ``bk`` or Opacus ``hooks``/``functorch``
        (benchmarks/mcgan.py measures them on this discriminator).
    physical_batch_size: rows per forward/backward (memory only).
    """

    epsilon: float = math.inf
    delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    grad_sample_mode: str = "hooks"
    physical_batch_size: int | None = None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "GANPrivacySettings":
        convert = {"epsilon": float, "delta": float, "max_grad_norm": float, "physical_batch_size": int}
        return settings_from_mapping(cls, cfg, "GAN privacy", convert=convert, drop_none=True)

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    def engine(self, s: GANTrainSettings) -> EngineSettings:
        return EngineSettings(epochs=s.epochs, batch_size=s.batch_size, epsilon=self.epsilon, delta=self.delta,
                              max_grad_norm=self.max_grad_norm, physical_batch_size=self.physical_batch_size,
                              accountant=self.accountant, grad_sample_mode=self.grad_sample_mode)


def load_patches(cache_path, manifest, label: str = "malignant") -> tuple[torch.Tensor, torch.Tensor]:
    """Patches of a cache scaled to [−1, 1] ``(N, 1, S, S)`` and their 0/1 labels ``(N,)`` (long).

    Scaling is by the cache's fixed ``value_range`` only (uint8 0..255 → −1..1), never by
    statistics of the data.
    """
    from dpmed.training.data import CacheDataset

    ds = CacheDataset(cache_path, manifest, [label], channels=1, mean=0.5, std=0.5)
    x = torch.stack([ds.image(i) for i in range(len(ds))]) if len(ds) else torch.zeros(0)
    y = ds.targets[:, 0].long()
    ds.close()
    return x, y


def _fingerprint(net: MCGANSettings, s: GANTrainSettings, dp: GANPrivacySettings, seed: int,
                 images: torch.Tensor, labels: torch.Tensor, score_data: str) -> str:
    h = hashlib.sha256(json.dumps([net.to_dict(), s.to_dict(), asdict(dp) | {"epsilon": repr(dp.epsilon)},
                                   int(seed), score_data], sort_keys=True).encode())
    h.update(images.detach().cpu().numpy().tobytes())
    h.update(labels.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _save(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _probe(g: MCGANGenerator, n: int, seed: int, dev) -> torch.Tensor:
    """``n`` samples for fixed z and labels (the same every epoch), for the collapse check."""
    gen = torch.Generator().manual_seed(seed)
    z, y = sample_latent(n, g.settings.latent_dim, g.settings.num_classes, gen, dev)
    with torch.no_grad():
        return g(z, y)


class _EpochEnd:
    """The engine's per-epoch hook (runs before the checkpoint is written): divergence checks,
    checkpoint selection, the history row. Raising here leaves the previous checkpoint."""

    def __init__(self, trainer: PrivateTrainer, task: MCGANTask, rule: CheckpointRule, probe_seed: int,
                 history: list):
        self.trainer, self.task, self.rule, self.probe_seed, self.history = trainer, task, rule, probe_seed, history

    def __call__(self, epoch: int) -> dict:
        g, s = self.task.g, self.task.settings
        nonfinite, loss_g = self.task.take_epoch_losses()
        check_finite(epoch, discriminator=math.nan if nonfinite else 0.0, generator=loss_g)
        spread = check_collapse(epoch, _probe(g, s.collapse_samples, self.probe_seed, self.trainer.device),
                                s.collapse_tol)
        g.eval()
        self.rule.consider(epoch, g)
        g.train()
        row = {"loss_g": loss_g, "sample_spread": spread, "score": dict(self.rule.scores).get(epoch, math.nan)}
        self.history.append({"epoch": epoch, **row, "epsilon": self.trainer.epsilon()})
        return row

    def state(self) -> dict:
        return {"task": self.task.state_dict(), "rule": self.rule.state(), "history": list(self.history)}


def train_mcgan(
    images: torch.Tensor,
    labels: torch.Tensor,
    out_dir,
    *,
    settings: GANTrainSettings | Mapping[str, Any],
    net: MCGANSettings | Mapping[str, Any],
    seed: int,
    privacy: GANPrivacySettings | Mapping[str, Any] | None = None,
    scorer: Callable[[nn.Module], float] | None = None,
    score_data: str = "",
    device: str = "cpu",
    checkpoint=None,
) -> dict[str, Any]:
    """Train MCGAN (DP-MCGAN when ``privacy.epsilon`` is finite) and write the selected generator.

    Parameters
    ----------
    images: ``(N, 1, S, S)`` real training patches in [−1, 1] (:func:`load_patches`).
    labels: ``(N,)`` class labels in ``0 .. num_classes − 1``.
    out_dir: folder for ``generator.pt`` and ``history.csv``.
    settings, net: :class:`GANTrainSettings` / :class:`MCGANSettings` (or mappings of them).
    seed: config seed (initialisation, shuffling, latent draws, augmentation; never the DP noise).
    privacy: :class:`GANPrivacySettings` (default: non-private).
    scorer, score_data: for ``select: best``: ``scorer(G) -> float`` (lower is better) and a
        description of the **public or held-out** data it reads (it goes on the card).
    device: torch device string.
    checkpoint: the engine's resume checkpoint (default ``out_dir/checkpoint.pt``; put it under
        the private directory: it holds the secret noise seed).

    Returns
    -------
    dict with ``generator_path``, ``selection``, ``history`` (rows), ``resumed_from_epoch`` and
    ``guarantee`` (the generator's :class:`Guarantee`).

    Raises
    ------
    GANDivergenceError: non-finite loss or collapsed samples, naming the epoch; nothing is written.
    ConfigError: invalid settings, ``images`` that do not fit the network, or a checkpoint of
        another run.
    PrivacyError: a discriminator that cannot be privatised.
    """
    s = settings if isinstance(settings, GANTrainSettings) else GANTrainSettings.from_mapping(settings)
    ns = net if isinstance(net, MCGANSettings) else MCGANSettings.from_mapping(net)
    dp = privacy if isinstance(privacy, GANPrivacySettings) else GANPrivacySettings.from_mapping(privacy)
    _check_inputs(images, labels, ns)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / GENERATOR_FILE).unlink(missing_ok=True)  # a stale generator must not survive a failed run
    dev = torch.device(device)
    init_seed, _, _, probe_seed = seeds_for(seed)
    torch.manual_seed(init_seed)
    g, d = (m.to(dev) for m in build_mcgan(ns))
    opt_g = torch.optim.Adam(g.parameters(), lr=s.lr, betas=s.betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=s.lr, betas=s.betas)
    trainer = PrivateTrainer(dp.engine(s), d, opt_d, TensorDataset(images, labels), seed=seed, device=dev,
                             checkpoint=Path(checkpoint) if checkpoint is not None else out / "checkpoint.pt",
                             fingerprint=_fingerprint(ns, s, dp, seed, images, labels, score_data))
    task = MCGANTask(g, opt_g, s, trainer.task_generator)
    rule = CheckpointRule(s.select, s.epochs, s.select_epoch, s.score_every, scorer, score_data)
    history: list = []
    if trainer.task_state is not None:
        task.load_state_dict(trainer.task_state["task"])
        rule.load_state(trainer.task_state["rule"])
        history = list(trainer.task_state["history"])
    end = _EpochEnd(trainer, task, rule, probe_seed, history)
    g.train()
    trainer.run_epochs(s.epochs - trainer.epochs_done, task.d_losses, evaluate=end, after_step=task.after_step,
                       task_state=end.state)
    for row, engine_row in zip(history, trainer.history):
        row["loss_d"] = engine_row["train_loss"]  # NaN under DP: not released
        row["seconds"] = engine_row["seconds"]
    return _finish(out, trainer, ns, s, dp, rule, history, n_train=len(images))


def generator_guarantee(trainer: PrivateTrainer, rule: CheckpointRule) -> Guarantee:
    """The generator's guarantee: post-processing of the discriminator's DP-SGD run (DP-MCGAN),
    or none (the non-private MCGAN)."""
    if not trainer.plan.private:
        return nonprivate_guarantee()
    npi = ()
    if rule.select == "best":
        npi = (NonPrivateInput("checkpoint selection (best epoch by a fidelity score)", rule.score_data),)
    d = trainer.guarantee(released="the discriminator after every step (seen by the generator)", not_guaranteed=(
        "A run that diverges (non-finite loss) stops with an error: that stop is not covered.",),
        non_private_inputs=npi)
    return post_processing(d, released="generator weights (trained only through the DP discriminator) and "
                                       "every synthetic patch sampled from them")


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, ns: MCGANSettings) -> None:
    from dpmed.errors import ConfigError

    S = ns.image_size
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, S, S):
        raise ConfigError(f"MCGAN at {S}x{S} needs patches (N, 1, {S}, {S}), got {tuple(images.shape)}")
    if len(images) == 0 or len(labels) != len(images):
        raise ConfigError(f"need as many labels as patches (> 0), got {len(labels)} and {len(images)}")
    if labels.min() < 0 or labels.max() >= ns.num_classes:
        raise ConfigError(f"labels must lie in 0..{ns.num_classes - 1}")
    if images.min() < -1.0001 or images.max() > 1.0001:
        raise ConfigError("MCGAN patches must be scaled to [-1, 1] (Tanh output); see load_patches")


def nonprivate_guarantee() -> Guarantee:
    """The guarantee of a generator trained without DP on the private records: none."""
    return no_guarantee(
        "record",
        reason="the generator (both networks) was trained without differential privacy on the "
               "private training records; its samples can reproduce them",
        released="generator weights and every synthetic patch sampled from them",
        non_private_inputs=(NonPrivateInput("GAN training", "the private training records, without DP"),),
    )


def _finish(out: Path, trainer: PrivateTrainer, ns: MCGANSettings, s: GANTrainSettings, dp: GANPrivacySettings,
            rule: CheckpointRule, history: list, n_train: int) -> dict[str, Any]:
    guarantee = generator_guarantee(trainer, rule)
    _save(out / GENERATOR_FILE, {
        "kind": "mcgan-generator", "mcgan": ns.to_dict(), "state_dict": rule.best_state,
        "selection": rule.describe(), "training": s.to_dict(), "privacy": asdict(dp), "n_train": n_train,
        "guarantee": guarantee.to_dict()})
    write_csv(pd.DataFrame(history, columns=HISTORY_COLUMNS), out / "history.csv")
    if not s.keep_checkpoint:
        trainer.remove_checkpoint()
    return {"generator_path": str(out / GENERATOR_FILE), "selection": rule.describe(), "history": history,
            "resumed_from_epoch": trainer.resumed_from, "guarantee": guarantee}


def load_generator(path) -> tuple[MCGANGenerator, dict[str, Any]]:
    """The generator of a ``generator.pt`` (eval mode) and the file's other entries."""
    from dpmed.errors import ConfigError

    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, dict) or obj.get("kind") != "mcgan-generator":
        raise ConfigError(f"{path}: not an MCGAN generator file")
    g = MCGANGenerator(MCGANSettings(**obj["mcgan"]))
    g.load_state_dict(obj["state_dict"])
    g.eval()
    info = {k: v for k, v in obj.items() if k != "state_dict"}
    return g, info
