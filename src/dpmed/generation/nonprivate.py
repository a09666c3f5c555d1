"""Non-private MCGAN training (the study's variant), built from the task functions of
:mod:`dpmed.generation.gan`, with checkpoint/resume.

This is the paper's setting: both networks trained without DP on the training records, so the
generator and everything made from it carry **no** guarantee (the returned
:class:`~dpmed.privacy.guarantee.Guarantee` says so). It is kept small on purpose: it will move
onto the private-training engine's non-private loop, and the DP variant trains the
discriminator through the engine with the same task functions.

Outputs in ``out_dir``: ``generator.pt`` (the selected generator, see :func:`load_generator`),
``history.csv`` (per epoch: mean D and G loss, sample spread, score). ``checkpoint.pt`` holds
the full state after each epoch (removed at the end unless ``keep_checkpoint``); a killed run
restarts from it, a checkpoint written under other settings or data is ignored. A divergence
raises :class:`~dpmed.generation.gan.GANDivergenceError` before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch
import torch.nn as nn

from dpmed.generation.gan import (CheckpointRule, GANTrainSettings, MCGANTask, check_collapse, check_finite,
                                  sample_latent, seeds_for)
from dpmed.io.atomic import atomic_path, write_csv
from dpmed.models.mcgan import MCGANGenerator, MCGANSettings, build_mcgan
from dpmed.privacy.guarantee import Guarantee, NonPrivateInput, no_guarantee

__all__ = ["train_mcgan_nonprivate", "load_generator", "load_patches"]

GENERATOR_FILE = "generator.pt"
CHECKPOINT_FILE = "checkpoint.pt"


def _on_epoch_end(epoch: int, out_dir: Path) -> None:
    """Called after each epoch's checkpoint is written (tests patch it to simulate a kill)."""


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


def _fingerprint(net: MCGANSettings, s: GANTrainSettings, seed: int, images: torch.Tensor,
                 labels: torch.Tensor) -> str:
    h = hashlib.sha256(json.dumps([net.to_dict(), s.to_dict(), int(seed)], sort_keys=True).encode())
    h.update(images.detach().cpu().numpy().tobytes())
    h.update(labels.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _save(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _run_epoch(task: MCGANTask, d, opt_d, images, labels, s: GANTrainSettings, shuffle, dev) -> tuple[float, float]:
    """One pass over the real records in shuffled batches, a G step after each D step;
    returns the mean D loss and the mean G loss."""
    order = torch.randperm(len(images), generator=shuffle)
    d_sum = 0.0
    for start in range(0, len(order), s.batch_size):
        idx = order[start:start + s.batch_size]
        opt_d.zero_grad(set_to_none=True)
        loss_d = task.d_losses(d, (images[idx].to(dev), labels[idx].to(dev))).mean()
        loss_d.backward()
        opt_d.step()
        task.g_step(d)
        d_sum += loss_d.item() * len(idx)
    nonfinite, loss_g = task.take_epoch_losses()
    return (math.nan if nonfinite else d_sum / len(images)), loss_g


def _probe(g: MCGANGenerator, n: int, seed: int, dev) -> torch.Tensor:
    """``n`` samples for fixed z and labels (the same every epoch), for the collapse check."""
    gen = torch.Generator().manual_seed(seed)
    z, y = sample_latent(n, g.settings.latent_dim, g.settings.num_classes, gen, dev)
    with torch.no_grad():
        return g(z, y)


def train_mcgan_nonprivate(
    images: torch.Tensor,
    labels: torch.Tensor,
    out_dir,
    *,
    settings: GANTrainSettings | Mapping[str, Any],
    net: MCGANSettings | Mapping[str, Any],
    seed: int,
    scorer: Callable[[nn.Module], float] | None = None,
    score_data: str = "",
    device: str = "cpu",
    checkpoint=None,
) -> dict[str, Any]:
    """Train MCGAN without DP on ``images`` / ``labels`` and write the selected generator.

    Parameters
    ----------
    images: ``(N, 1, S, S)`` real patches in [−1, 1] (:func:`load_patches`).
    labels: ``(N,)`` class labels in ``0 .. num_classes − 1``.
    out_dir: folder for ``generator.pt``, ``history.csv`` and the checkpoint.
    settings, net: :class:`GANTrainSettings` / :class:`MCGANSettings` (or mappings of them).
    seed: config seed (initialisation, shuffling, latent draws, augmentation).
    scorer, score_data: for ``select: best``: ``scorer(G) -> float`` (lower is better) and a
        description of the **public or held-out** data it reads (see :class:`CheckpointRule`).
    device: torch device string.
    checkpoint: path of the resume checkpoint (default ``out_dir/checkpoint.pt``).

    Returns
    -------
    dict with ``generator_path``, ``selection`` (rule, epoch, score), ``history`` (rows),
    ``resumed_from_epoch`` and ``guarantee`` (a :class:`Guarantee` of kind ``none``).

    Raises
    ------
    GANDivergenceError: non-finite loss or collapsed samples, naming the epoch; nothing is written.
    ConfigError: invalid settings, or ``images`` that do not fit the network.
    """
    s = settings if isinstance(settings, GANTrainSettings) else GANTrainSettings.from_mapping(settings)
    ns = net if isinstance(net, MCGANSettings) else MCGANSettings.from_mapping(net)
    _check_inputs(images, labels, ns)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / GENERATOR_FILE).unlink(missing_ok=True)  # a stale generator must not survive a failed run
    dev = torch.device(device)
    init_seed, shuffle_seed, task_seed, probe_seed = seeds_for(seed)
    torch.manual_seed(init_seed)
    g, d = (m.to(dev) for m in build_mcgan(ns))
    opt_g = torch.optim.Adam(g.parameters(), lr=s.lr, betas=s.betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=s.lr, betas=s.betas)
    gens = {"shuffle": torch.Generator().manual_seed(shuffle_seed), "task": torch.Generator().manual_seed(task_seed)}
    task = MCGANTask(g, opt_g, s, gens["task"])
    rule = CheckpointRule(s.select, s.epochs, s.select_epoch, s.score_every, scorer, score_data)
    state = {"g": g, "d": d, "opt_g": opt_g, "opt_d": opt_d}
    fp = _fingerprint(ns, s, seed, images, labels)
    ck_path = Path(checkpoint) if checkpoint is not None else out / CHECKPOINT_FILE
    history, first = _resume(ck_path, fp, state, gens, rule, dev)
    resumed_from = first - 1 if first > 1 else None
    for epoch in range(first, s.epochs + 1):
        g.train(), d.train()
        loss_d, loss_g = _run_epoch(task, d, opt_d, images, labels, s, gens["shuffle"], dev)
        check_finite(epoch, discriminator=loss_d, generator=loss_g)
        spread = check_collapse(epoch, _probe(g, s.collapse_samples, probe_seed, dev), s.collapse_tol)
        g.eval()
        rule.consider(epoch, g)
        history.append({"epoch": epoch, "loss_d": loss_d, "loss_g": loss_g, "sample_spread": spread,
                        "score": dict(rule.scores).get(epoch, float("nan"))})
        _save(ck_path, {"fingerprint": fp, "epoch": epoch, **{k: v.state_dict() for k, v in state.items()},
                        "gens": {k: v.get_state() for k, v in gens.items()}, "rule": rule.state(),
                        "history": history})
        _on_epoch_end(epoch, out)
    return _finish(out, ck_path, ns, s, rule, history, resumed_from, n_train=len(images))


def _resume(ck_path: Path, fp: str, state: dict, gens: dict, rule: CheckpointRule, dev) -> tuple[list, int]:
    """Load a checkpoint written for the same settings and data; returns (history, first epoch).

    A checkpoint of other settings or data (another fingerprint) is ignored: training restarts.
    """
    if not ck_path.exists():
        return [], 1
    ck = torch.load(ck_path, map_location=dev, weights_only=False)
    if ck.get("fingerprint") != fp:
        return [], 1
    for k, obj in state.items():
        obj.load_state_dict(ck[k])
    for k, gen in gens.items():
        gen.set_state(ck["gens"][k])
    rule.load_state(ck["rule"])
    return ck["history"], ck["epoch"] + 1


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


def _finish(out: Path, ck_path: Path, ns: MCGANSettings, s: GANTrainSettings, rule: CheckpointRule,
            history: list, resumed_from, n_train: int) -> dict[str, Any]:
    guarantee = nonprivate_guarantee()
    _save(out / GENERATOR_FILE, {
        "kind": "mcgan-generator", "mcgan": ns.to_dict(), "state_dict": rule.best_state,
        "selection": rule.describe(), "training": s.to_dict(), "n_train": n_train,
        "guarantee": guarantee.to_dict()})
    write_csv(pd.DataFrame(history, columns=["epoch", "loss_d", "loss_g", "sample_spread", "score"]),
              out / "history.csv")
    if not s.keep_checkpoint:
        ck_path.unlink(missing_ok=True)
    return {"generator_path": str(out / GENERATOR_FILE), "selection": rule.describe(),
            "history": history, "resumed_from_epoch": resumed_from, "guarantee": guarantee}


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
