"""DP-SGD per federated client through the engine: σ for every step the client runs, one
accountant across rounds, ε on the client's card recomputed by dp-accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dp_accounting import PoissonSampledDpEvent, GaussianDpEvent
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from dpmed.errors import PrivacyError, SiteError
from dpmed.federated import ClientState, run_in_process, shared_weights
from dpmed.federated.private import ClientDP, client_guarantee, engine_trainer, linear_loss
from dpmed.federated.downstream import LinearClassifier
from dpmed.models.cvae import initial_cvae, label_condition
from dpmed.privacy.card import render_guarantee

torch.set_num_threads(1)
D, C = 5, 3


def _clients(n_records=(60, 90), seed=0):
    rng = np.random.default_rng(seed)
    states = []
    for i, n in enumerate(n_records):
        y = rng.integers(0, C, n)
        x = np.clip(0.3 + 0.2 * y[:, None] + 0.05 * rng.normal(size=(n, D)), 0, 1).astype(np.float32)
        m = initial_cvae(D, C, 0, client_index=i)
        states.append(ClientState(f"S-{i}", m, m.decoder, torch.from_numpy(x),
                                  label_condition(torch.tensor(y), C, "multiclass")))
    return states


def dpa_epsilon(sigma, q, steps, delta, accountant="pld"):
    """dp-accounting's ε for ``steps`` Poisson-sampled Gaussian steps: its RDP accountant for a
    card accounted with RDP (the same bound, another implementation), else its PLD accountant
    (PRV and PLD both approximate the exact privacy curve)."""
    acc = RdpAccountant() if accountant == "rdp" else PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


def _federate(states, dp, rounds):
    trainers = [engine_trainer(dp, seed=0, client_index=i) for i in range(len(states))]

    def trainer(state, epochs, gen, start):  # each client its own engine-backed trainer
        trainers[states.index(state)](state, epochs, gen, start)
    return run_in_process(states, shared_weights(initial_cvae(D, C, 0).decoder), rounds=rounds,
                          local_epochs=dp.local_epochs, trainer=trainer)


def test_every_client_card_is_recomputed_by_dp_accounting():
    dp = ClientDP(rounds=3, local_epochs=2, batch_size=16, epsilon=1.0, delta=1e-4, accountant="prv")
    states = _clients()
    _federate(states, dp, rounds=3)
    for s in states:
        card = render_guarantee(client_guarantee(s, released="the client's CVAE decoder updates"))
        n = len(s.x)
        spe = max(1, math.floor(n / 16 + 0.5))
        # σ calibrated for, and the accountant charged with, EVERY step: rounds × epochs × steps/epoch
        assert card["typed_guarantee"]["parameters"]["steps"] == 3 * 2 * spe
        assert card["sample_rate"] == pytest.approx(16 / n)
        eps = dpa_epsilon(card["noise_multiplier"], card["sample_rate"], 3 * 2 * spe, card["delta"])
        assert card["epsilon_spent"] == pytest.approx(eps, rel=0.02)
        assert eps <= 1.0 * 1.02  # the target holds for the steps actually run
        assert card["unit"] == "record" and card["per_patient_guarantee"]


def test_sigma_calibrated_for_fewer_steps_would_be_caught():
    """The seed code's bug: σ for one round, three rounds run. The engine refuses the 2nd round;
    and had it run, dp-accounting's ε for the steps run would exceed the target."""
    short = ClientDP(rounds=1, local_epochs=2, batch_size=16, epsilon=1.0, delta=1e-4)
    states = _clients()
    with pytest.raises(PrivacyError, match="exceed the 2 planned"):
        _federate(states, short, rounds=3)
    g = client_guarantee(states[0], released="x")
    p = g.parameters
    assert dpa_epsilon(p["noise_multiplier"], p["sample_rate"], 3 * p["steps"], 1e-4) > 1.5


def test_accountant_persists_across_rounds_and_noise_is_added():
    dp = ClientDP(rounds=2, local_epochs=1, batch_size=16, epsilon=1.0, delta=1e-4)
    states = _clients()
    _federate(states, dp, rounds=1)
    eng = states[0].trainer_state["_engine"]
    first = eng.accountant.steps
    eps1 = states[0].trainer_state["epsilon"]
    before = shared_weights(states[0].shared)
    trainer = engine_trainer(dp, seed=0, client_index=0)
    trainer(states[0], 1, torch.Generator().manual_seed(0), before)  # the same engine: state kept
    assert states[0].trainer_state["_engine"] is eng and eng.accountant.steps == 2 * first
    assert states[0].trainer_state["epsilon"] > eps1
    assert eng.plan.noise_multiplier > 1.0  # ε = 1 at q ≈ 0.2 needs real noise


def test_site_with_fewer_records_than_the_batch_size_is_named():
    dp = ClientDP(rounds=1, local_epochs=1, batch_size=64, epsilon=1.0, delta=1e-4)
    states = _clients((60, 90))
    with pytest.raises(SiteError, match="site S-0: 60 training records, fewer than the batch size 64"):
        _federate(states, dp, rounds=1)


def test_dp_linear_client_learns_through_the_engine():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    x = (rng.normal(size=(400, 4)) + 2.0 * y[:, None]).astype(np.float32)
    m = LinearClassifier(4, 2, "multiclass")
    s = ClientState("S-0", m, m, torch.from_numpy(x), torch.from_numpy(y))
    dp = ClientDP(rounds=1, local_epochs=20, batch_size=50, epsilon=8.0, delta=1e-4, lr=0.05)
    engine_trainer(dp, seed=0, client_index=0, loss=linear_loss, prox_mu=0.05)(
        s, 20, torch.Generator().manual_seed(0), shared_weights(m))
    acc = (m.predict_proba(x).argmax(1) == y).mean()
    assert acc > 0.9
