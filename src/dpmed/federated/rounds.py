"""The federated round loop, written once: :func:`client_update` and :func:`aggregate`.

One round: the server sends the global weights of the *shared* part of every client's model
(the CVAE's decoder; the whole head of a FedAvg/FedProx linear classifier); each client loads
them, trains locally for E epochs with a pluggable local trainer, and returns the shared part's
new weights only (a CVAE's encoder stays at its site); the server averages them.
:func:`run_in_process` runs R rounds in one process (the demo, tests, a single machine);
:mod:`dpmed.federated.flower` runs the same two functions under Flower's deployment engine.

Aggregation weights
-------------------
FedAvg's usual weights n_m / Σn are the sites' private record counts, released to the server
and through the averaged model outside any DP mechanism. The default is uniform weights;
``"counts"`` uses counts that the caller declares public, and :func:`aggregation_weights` returns
the :class:`~dpmed.privacy.guarantee.NonPrivateInput` that says so on the card.

Randomness
----------
Each (client, round) gets its own ``torch.Generator`` from :func:`round_generator`: from OS
entropy in real runs, from a seed only when a test injects one to compare two runs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dpmed.errors import ConfigError
from dpmed.privacy.guarantee import NonPrivateInput

Weights = dict[str, torch.Tensor]


@dataclass
class ClientState:
    """What one client keeps between rounds (it never leaves the site).

    Attributes
    ----------
    site: the site's pseudonym.
    model: the client's whole model (e.g. a :class:`~dpmed.models.cvae.CVAE`).
    shared: the submodule of ``model`` whose weights are averaged (``model.decoder``).
    x, c: training inputs (scaled features) and targets/conditions.
    trainer_state: whatever the local trainer keeps across rounds (the DP engine keeps its
        accountant here, so ε composes over every round).
    """

    site: str
    model: nn.Module
    shared: nn.Module
    x: torch.Tensor
    c: torch.Tensor
    trainer_state: dict[str, Any] = field(default_factory=dict)


#: ``trainer(state, local_epochs, generator, global_weights) -> None`` trains ``state.model``
#: in place on ``state.x, state.c``. ``global_weights`` are the weights the round started from
#: (FedProx's proximal term needs them).
LocalTrainer = Callable[[ClientState, int, torch.Generator, Weights], None]


def shared_weights(module: nn.Module) -> Weights:
    """A detached copy of a module's state (what a client sends to the server)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def client_update(state: ClientState, global_weights: Mapping[str, torch.Tensor] | None, *,
                  local_epochs: int, trainer: LocalTrainer, generator: torch.Generator) -> Weights:
    """One client's round: load the global shared weights, train locally, return the shared weights.

    Parameters
    ----------
    state: the client's state (updated in place).
    global_weights: the server's current shared weights (``None``: keep the client's own, only
        for a first round whose clients were initialised identically).
    local_epochs: E.
    trainer: the local trainer.
    generator: this (client, round)'s randomness (:func:`round_generator`).

    Returns
    -------
    The shared submodule's new weights; nothing else leaves the client.
    """
    if global_weights is not None:
        state.shared.load_state_dict(dict(global_weights))
    start = shared_weights(state.shared)
    trainer(state, int(local_epochs), generator, start)
    return shared_weights(state.shared)


def aggregate(updates: Sequence[Mapping[str, torch.Tensor]],
              weights: Sequence[float] | None = None) -> Weights:
    """Weighted average of the clients' shared weights (FedAvg).

    Parameters
    ----------
    updates: one state dict per client, in a fixed client order (the sum is taken in this
        order, so the same order gives bit-identical results).
    weights: non-negative, normalised here; ``None``: uniform.

    Raises
    ------
    ConfigError: no update, mismatched keys/shapes, or bad weights.
    """
    if not updates:
        raise ConfigError("aggregate: no client update to average")
    w = np.full(len(updates), 1.0) if weights is None else np.asarray(weights, float)
    if w.shape != (len(updates),) or (w < 0).any() or not w.sum() > 0:
        raise ConfigError(f"aggregate: need {len(updates)} non-negative weights with a positive sum")
    w = w / w.sum()
    keys = list(updates[0])
    out: Weights = {}
    for k in keys:
        if any(set(u) != set(keys) for u in updates):
            raise ConfigError("aggregate: client updates have different parameter names")
        shapes = {tuple(u[k].shape) for u in updates}
        if len(shapes) > 1:
            raise ConfigError(f"aggregate: parameter {k} has different shapes {sorted(shapes)}")
        acc = torch.zeros_like(updates[0][k], dtype=torch.float64)
        for wi, u in zip(w, updates):
            acc += float(wi) * u[k].double()
        out[k] = acc.to(updates[0][k].dtype)
    return out


def aggregation_weights(n_clients: int, mode: str = "uniform",
                        public_counts: Sequence[int] | None = None
                        ) -> tuple[np.ndarray, NonPrivateInput | None]:
    """FedAvg weights and, if they come from data, the non-private input to state on the card.

    ``mode="uniform"``: 1/M each, nothing leaks. ``mode="counts"``: n_m / Σn with the sites'
    training-record counts *treated as public* (they are not protected by DP-SGD).
    """
    if mode == "uniform":
        return np.full(n_clients, 1.0 / n_clients), None
    if mode == "counts":
        if public_counts is None or len(public_counts) != n_clients:
            raise ConfigError(f"aggregation 'counts' needs one count per client ({n_clients})")
        c = np.asarray(public_counts, float)
        return c / c.sum(), NonPrivateInput(
            what="FedAvg weights n_m / sum(n)",
            source="each site's number of training records, treated as public (not protected by DP)")
    raise ConfigError(f"aggregation weights must be 'uniform' or 'counts', got {mode!r}")


def round_generator(noise_seed: int | None, client_index: int, round_index: int) -> torch.Generator:
    """The generator of one client in one round.

    ``noise_seed=None`` (every real run): seeded from OS entropy. A seed is accepted only so a
    test can compare the in-process and the Flower run with the same randomness.
    """
    g = torch.Generator()
    if noise_seed is None:
        g.manual_seed(secrets.randbits(63))
    else:
        g.manual_seed(int(np.random.SeedSequence([int(noise_seed), client_index, round_index])
                          .generate_state(1, np.uint64)[0] >> 1))
    return g


def run_in_process(states: Sequence[ClientState], initial: Mapping[str, torch.Tensor], *,
                   rounds: int, local_epochs: int, trainer: LocalTrainer,
                   weights: Sequence[float] | None = None, noise_seed: int | None = None) -> Weights:
    """R rounds of :func:`client_update` + :func:`aggregate` in one process; the final global weights.

    Clients run in the order of ``states`` (client index = position), deterministic given
    the generators.
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    global_w = {k: v.detach().clone() for k, v in initial.items()}
    for r in range(1, rounds + 1):
        updates = [client_update(s, global_w, local_epochs=local_epochs, trainer=trainer,
                                 generator=round_generator(noise_seed, i, r))
                   for i, s in enumerate(states)]
        global_w = aggregate(updates, weights)
    for s in states:  # every client ends with the final global shared part
        s.shared.load_state_dict(global_w)
    return global_w


def adam_trainer(lr: float = 1e-3, batch_size: int = 64, prox_mu: float = 0.0) -> LocalTrainer:
    """A plain, NON-PRIVATE local trainer: Adam on the mean of ``state.model.per_sample_loss``.

    Used where the paper trains without DP (the FedAvg/FedProx baselines at ε = ∞, downstream
    classifiers); private clients use :func:`dpmed.federated.private.engine_trainer` (same
    signature; it keeps its engine in ``state.trainer_state``). Shuffled mini-batches; Adam's moments are reset every
    round (clients hold no optimiser state across rounds). ``prox_mu > 0`` adds FedProx's
    μ/2·‖w − w_global‖² on the shared weights.
    """
    def train(state: ClientState, epochs: int, generator: torch.Generator, start: Weights) -> None:
        model = state.model
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        shared = dict(state.shared.named_parameters())
        n = len(state.x)
        for _ in range(epochs):
            perm = torch.randperm(n, generator=generator)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                loss = model.per_sample_loss(state.x[idx], state.c[idx], generator).mean()
                if prox_mu > 0:
                    loss = loss + 0.5 * prox_mu * sum(((p - start[k]) ** 2).sum() for k, p in shared.items())
                opt.zero_grad()
                loss.backward()
                opt.step()
    return train
