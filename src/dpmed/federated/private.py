"""DP-SGD per client through the private-training engine: the federated local trainer.

Every client runs ONE :class:`~dpmed.training.engine.PrivateTrainer` over the whole federation:
its plan covers ``rounds × local_epochs`` epochs of Poisson-sampled steps (q = B / n_m,
``round(n_m / B)`` steps per epoch), so σ is calibrated once for every step the client will run,
and one accountant composes them all. The seed code calibrated σ for 20 epochs and trained 250
(methods.md C); here a round beyond the plan is refused by the engine (``PrivacyError``).

Between rounds the engine lives in ``state.trainer_state["_engine"]`` (in-process) or in its
checkpoint under the private directory (a Flower ClientApp is re-created every round: it passes
``checkpoint`` and the engine resumes, accountant, optimizer and secret seed included). The
global weights the round starts from are loaded into the shared part *after* a resume, so the
client trains the server's decoder, not its own last one.

Unit: one record of that site (``record``); per patient by group privacy on the card. The
server averaging and everything decoded afterwards are post-processing
(:func:`dpmed.federated.guarantee.federation_guarantee`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dpmed.errors import SiteError
from dpmed.federated.rounds import ClientState, LocalTrainer, Weights
from dpmed.privacy.guarantee import Guarantee
from dpmed.training.engine import EngineSettings, PrivateTrainer

#: ``losses(model, x, c, generator, start) -> (b,)`` per-sample losses of a physical batch.
ClientLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator, Weights], torch.Tensor]


@dataclass(frozen=True)
class ClientDP:
    """One client's private-training settings (typed once, from the config).

    Attributes
    ----------
    rounds, local_epochs: R and E; the engine plans R·E epochs.
    batch_size: expected Poisson batch B (q = B / n_m).
    epsilon, delta: the per-client target (``epsilon = inf``: non-private through the same loop).
    max_grad_norm: C.
    lr: Adam's learning rate.
    accountant: ``prv`` | ``rdp`` | ``pld``.
    grad_sample_mode: the engine's per-sample gradient mode.
    """

    rounds: int
    local_epochs: int
    batch_size: int
    epsilon: float = math.inf
    delta: float | None = None
    max_grad_norm: float = 1.5
    lr: float = 1e-3
    accountant: str = "prv"
    grad_sample_mode: str = "bk"

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(epochs=int(self.rounds) * int(self.local_epochs), batch_size=int(self.batch_size),
                              epsilon=float(self.epsilon), delta=self.delta, max_grad_norm=float(self.max_grad_norm),
                              accountant=self.accountant, grad_sample_mode=self.grad_sample_mode, unit="record")


def cvae_loss(model: nn.Module, x: torch.Tensor, c: torch.Tensor, generator: torch.Generator,
              start: Weights) -> torch.Tensor:
    """The CVAE's per-record MSE + β·KL (the reparameterisation noise from the round's generator)."""
    return model.per_sample_loss(x, c, generator)


def linear_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                start: Weights) -> torch.Tensor:
    """A linear classifier's per-record loss (FedProx's term: ``engine_trainer(prox_mu=...)``)."""
    return model.per_sample_loss(x, y)


def client_seed(seed: int, client_index: int) -> int:
    """The public seed of one client's engine (shuffles, task generator; never the DP noise)."""
    return int(seed) * 1000 + 1 + int(client_index)


def _fingerprint(dp: ClientDP, state: ClientState, seed: int) -> str:
    h = hashlib.sha256(repr((dp, seed, state.site)).encode())
    h.update(state.x.numpy().tobytes())
    h.update(state.c.numpy().tobytes())
    return h.hexdigest()


def proximal_step(prox_mu: float, lr: float, shared: nn.Module, start: Weights) -> None:
    """FedProx's proximal term as its exact proximal map after each step:
    w ← (w + lr·μ·w_round) / (1 + lr·μ). It uses no record, so under DP it is post-processing."""
    with torch.no_grad():
        for k, p in shared.named_parameters():
            p.copy_((p + lr * prox_mu * start[k]) / (1.0 + lr * prox_mu))


def engine_trainer(dp: ClientDP, *, seed: int, client_index: int, loss: ClientLoss = cvae_loss,
                   checkpoint: str | Path | None = None, device: str = "cpu",
                   prox_mu: float = 0.0) -> LocalTrainer:
    """The local trainer of one client, backed by one :class:`PrivateTrainer` for all rounds.

    Parameters
    ----------
    dp: the client's settings; the plan covers ``dp.rounds × dp.local_epochs`` epochs.
    seed: the config seed (initialisation-side randomness only).
    client_index: the client's position (gives each client its own public seed).
    loss: per-sample loss (:func:`cvae_loss`, :func:`linear_loss`).
    checkpoint: the engine's checkpoint under the private directory (required where the trainer
        does not survive between rounds, i.e. under Flower); ``None``: kept in memory only.
    prox_mu: FedProx's μ (> 0: :func:`proximal_step` towards the round's weights after every step).

    Returns
    -------
    ``train(state, epochs, generator, start)``; the engine sits in ``state.trainer_state["_engine"]``
    and a JSON summary (``epochs_done``, ``epsilon``) in the other keys.

    Raises
    ------
    SiteError: the site has fewer training records than the batch size (DP only).
    PrivacyError: (from the engine) a round would run beyond the planned epochs.
    """
    settings = dp.engine_settings()

    def train(state: ClientState, epochs: int, generator: torch.Generator, start: Weights) -> None:
        engine = state.trainer_state.get("_engine")
        if engine is None:
            if settings.private and len(state.x) < settings.batch_size:
                raise SiteError(f"site {state.site}: {len(state.x)} training records, fewer than the batch "
                                f"size {settings.batch_size}; lower the batch size or leave the site out")
            opt = torch.optim.Adam(state.model.parameters(), lr=float(dp.lr))
            engine = PrivateTrainer(settings, state.model, opt, TensorDataset(state.x, state.c),
                                    seed=client_seed(seed, client_index), device=device, checkpoint=checkpoint,
                                    fingerprint=_fingerprint(dp, state, seed))
            state.trainer_state["_engine"] = engine
            # a resumed engine restored the client's last local model: start from the server's weights
            state.shared.load_state_dict(start)
        after = None
        if prox_mu > 0:
            after = lambda eng: proximal_step(prox_mu, float(dp.lr), state.shared, start)  # noqa: E731
        engine.run_epochs(int(epochs), lambda model, batch: loss(model, batch[0], batch[1], generator, start),
                          after_step=after)
        state.trainer_state.update(epochs_done=engine.epochs_done, epsilon=engine.epsilon())
    return train


def client_guarantee(state: ClientState, *, released: str, non_private_inputs=()) -> Guarantee:
    """The guarantee of one client's run, from the steps its engine actually ran."""
    engine: PrivateTrainer = state.trainer_state["_engine"]
    return engine.guarantee(released=released, non_private_inputs=non_private_inputs)


def finish_client(state: ClientState) -> None:
    """Delete the engine's checkpoint (and its secret seed) once the outputs are written."""
    engine = state.trainer_state.get("_engine")
    if engine is not None:
        engine.remove_checkpoint()
