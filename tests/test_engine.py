"""The private-training engine: the noise actually added, where it comes from, the plan across
several fit calls, the card's ε recomputed independently, TF32, weak δ, the GAN-style pass.

Each privacy test here fails when the mechanism is broken: noise zero or mis-scaled (std test),
noise or batches predictable from the config (different-noise test), σ calibrated for fewer
steps than run (multi-round and card tests), a card whose fields do not give its ε.
"""

from __future__ import annotations

import logging
import math

import dp_accounting
import pytest
import torch
import torch.nn as nn
from dp_accounting.pld import PLDAccountant

from dpmed.errors import ConfigError, PrivacyError
from dpmed.privacy.accounting import epsilon_spent
from dpmed.privacy.card import read_privacy_card, render_guarantee, write_privacy_card
from dpmed.training.engine import TEST_NOISE_ENV, EngineSettings, PrivateTrainer

torch.set_num_threads(1)
N, B = 120, 12


@pytest.fixture(autouse=True, scope="module")
def _calibrate_once():
    """The same plan is calibrated by many tests here: compute each sigma once (RDP at q = 0.1
    takes seconds). The cached function is the real one, so the plans are unchanged."""
    import functools

    from dpmed.privacy import accounting

    mp = pytest.MonkeyPatch()
    mp.setattr(accounting, "calibrate_noise_multiplier", functools.lru_cache(accounting.calibrate_noise_multiplier))
    yield
    mp.undo()


def _dataset(n=N, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, d, generator=g), torch.randn(n, 1, generator=g))


def _zero_grad_losses(model, batch):
    """Per-sample losses whose gradient is exactly zero: the update is the noise alone."""
    x, _ = batch
    return 0.0 * model(x).sum(1)


def _mse(model, batch):
    x, y = batch
    return (model(x) - y).pow(2).mean(1)


def _trainer(model=None, *, seed=0, mode="bk", lr=1.0, **kw):
    torch.manual_seed(0)
    model = model or nn.Linear(20, 400)
    settings = EngineSettings(**{"epochs": 1, "batch_size": B, "epsilon": 2.0, "delta": 1e-3, "accountant": "rdp",
                                 "max_grad_norm": 0.7, "grad_sample_mode": mode, **kw})
    return PrivateTrainer(settings, model, torch.optim.SGD(model.parameters(), lr=lr), _dataset(), seed=seed)


def _updates(trainer, step=_zero_grad_losses, epochs=1):
    """The parameter change of every optimizer step (flattened), recorded from after_step."""
    params = list(trainer.raw_model.parameters())
    last = [torch.cat([p.detach().flatten() for p in params])]
    deltas = []

    def record(_):
        now = torch.cat([p.detach().flatten() for p in params])
        deltas.append(now - last[0])
        last[0] = now

    trainer.run_epochs(epochs, step, after_step=record)
    return torch.stack(deltas)


# ----------------------------------------------------------------------------- the noise itself
@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_update_of_a_zero_gradient_model_has_std_sigma_c_over_b(mode):
    """With zero per-sample gradients and SGD at lr 1 every step moves the weights by -noise / B:
    the measured std must be sigma * C / B with sigma from the card (and the mean zero)."""
    trainer = _trainer(mode=mode)
    deltas = _updates(trainer)
    card = render_guarantee(trainer.guarantee(released="w"), epochs=1)
    expected = card["noise_multiplier"] * card["max_grad_norm"] / card["batch_size"]
    assert deltas.shape == (N // B, 20 * 400 + 400)
    assert deltas.std().item() == pytest.approx(expected, rel=0.02)  # 96k draws: 2 % is > 8 sd
    assert abs(deltas.mean().item()) < 0.02 * expected
    # every step drew fresh noise (a repeated draw would correlate consecutive updates)
    assert torch.corrcoef(deltas[:2])[0, 1].abs() < 0.05


def test_two_runs_with_the_same_config_seed_draw_different_noise_and_batches():
    a, b = _trainer(seed=7), _trainer(seed=7)
    assert a.secret.holds and b.secret.holds and a.secret.value != b.secret.value
    assert not torch.equal(a.generators["sampler"].get_state(), b.generators["sampler"].get_state())
    da, db = _updates(a), _updates(b)
    assert (da - db).abs().max() > 0.1 * da.std()
    # the public randomness (task generator) still follows the config seed
    assert torch.equal(_trainer(seed=7).task_generator.get_state(), _trainer(seed=7).task_generator.get_state())


def test_injected_test_noise_is_reproducible_and_voids_the_guarantee(monkeypatch):
    monkeypatch.setenv(TEST_NOISE_ENV, "3")
    a, b = _trainer(seed=7), _trainer(seed=7)
    assert torch.equal(_updates(a), _updates(b))
    g = a.guarantee(released="the weights")
    assert not g.holds and TEST_NOISE_ENV in g.not_guaranteed[0]
    card = render_guarantee(g)
    assert card["kind"] == "none" and math.isinf(card["epsilon_spent"]) and TEST_NOISE_ENV in card["guarantee"]
    monkeypatch.setenv(TEST_NOISE_ENV, "x")
    with pytest.raises(ConfigError, match=TEST_NOISE_ENV):
        _trainer()


def test_default_noise_source_is_os_entropy_on_the_card(tmp_path):
    trainer = _trainer()
    trainer.run_epochs(1, _mse)
    path = write_privacy_card(tmp_path / "privacy.json", render_guarantee(trainer.guarantee(released="w"), epochs=1))
    card = read_privacy_card(path)
    assert card["kind"] == "central" and "OS entropy" in card["noise_source"]
    assert "TF32" in card["numerics"] and card["grad_sample_mode"] == "bk"
    assert card["n_records"] == N and any(f"N = {N}" in t for t in card["treated_as_public"])
    assert any("size N" in t or "N = " in t for t in card["not_guaranteed"])


# ----------------------------------------------------------------------------- the card's ε
def test_card_epsilon_recomputed_with_dp_accounting_from_its_own_fields(tmp_path):
    model = nn.Linear(20, 1)
    settings = EngineSettings(epochs=3, batch_size=B, epsilon=1.5, delta=1e-3, accountant="prv", max_grad_norm=1.0)
    trainer = PrivateTrainer(settings, model, torch.optim.SGD(model.parameters(), lr=0.1), _dataset(), seed=0)
    trainer.run_epochs(3, _mse)
    card = read_privacy_card(write_privacy_card(tmp_path / "p.json", render_guarantee(trainer.guarantee(released="w"))))
    sigma, q, steps, delta = card["noise_multiplier"], card["sample_rate"], card["steps"], card["delta"]
    assert q == B / N and steps == 3 * round(N / B)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    pld = PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(event)
    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(event)
    eps_pld, eps_rdp = pld.get_epsilon(delta), rdp.get_epsilon(delta)
    assert card["epsilon_spent"] == pytest.approx(eps_pld, rel=0.02)
    assert eps_pld <= 1.5 * 1.005 and card["epsilon_spent"] <= eps_rdp
    assert 0.99 * 1.5 <= card["epsilon_spent"] <= 1.5


def test_weak_delta_is_flagged_on_the_card_and_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="dpmed.training"):
        trainer = _trainer(delta=1.0 / 60)  # delta * N = 2
    assert any("1/N" in r.message for r in caplog.records)
    card = render_guarantee(trainer.guarantee(released="w"))
    assert card["weak_delta"] and card["delta_times_n"] == pytest.approx(2.0)
    assert any("WEAK GUARANTEE" in t for t in card["not_guaranteed"])
    assert not render_guarantee(_trainer(delta=1e-3).guarantee(released="w"))["weak_delta"]


# ----------------------------------------------------------------------------- several fit calls
def test_federated_client_rounds_share_one_plan_and_one_accountant():
    """R rounds x E local epochs: sigma calibrated once for all R*E*k steps; the global model is
    loaded between rounds; running past the plan is refused."""
    rounds, local = 3, 2
    model = nn.Linear(20, 1)
    settings = EngineSettings(epochs=rounds * local, batch_size=B, epsilon=2.0, delta=1e-3, accountant="rdp")
    trainer = PrivateTrainer(settings, model, torch.optim.SGD(model.parameters(), lr=0.1), _dataset(), seed=0)
    k = round(N / B)
    global_state = {n: t.clone() for n, t in model.state_dict().items()}
    for _ in range(rounds):
        model.load_state_dict(global_state)  # the server's model for this round
        trainer.run_epochs(local, _mse)
        global_state = {n: t.clone() for n, t in model.state_dict().items()}
    assert trainer.accountant.steps == rounds * local * k
    assert trainer.epsilon() == epsilon_spent(trainer.plan.noise_multiplier, B / N, rounds * local * k, 1e-3, "rdp")
    # calibrated for all rounds: the target is reached at the last step, not after the first round
    assert 0.99 * 2.0 <= trainer.epsilon() <= 2.0
    with pytest.raises(PrivacyError, match="planned"):
        trainer.run_epochs(1, _mse)


def test_checkpoint_resume_continues_the_same_accountant_and_secret(tmp_path):
    ckpt = tmp_path / "private" / "run.pt"
    model = nn.Linear(20, 1)
    settings = EngineSettings(epochs=2, batch_size=B, epsilon=2.0, delta=1e-3, accountant="rdp")
    first = PrivateTrainer(settings, model, torch.optim.SGD(model.parameters(), lr=0.1), _dataset(), seed=0,
                           checkpoint=ckpt, fingerprint="f")
    first.run_epochs(1, _mse, task_state=lambda: {"round": 1})
    again = PrivateTrainer(settings, nn.Linear(20, 1), torch.optim.SGD(nn.Linear(20, 1).parameters(), lr=0.1),
                           _dataset(), seed=0, checkpoint=ckpt, fingerprint="f")
    assert again.resumed_from == 1 and again.task_state == {"round": 1}
    assert again.secret == first.secret and again.accountant.steps == first.accountant.steps
    assert torch.equal(again.generators["noise"].get_state(), first.generators["noise"].get_state())
    with pytest.raises(ConfigError, match="different"):
        PrivateTrainer(settings, nn.Linear(20, 1), torch.optim.SGD(nn.Linear(20, 1).parameters(), lr=0.1),
                       _dataset(), seed=0, checkpoint=ckpt, fingerprint="g")


# ----------------------------------------------------------------------------- numerics, GAN pass
def test_tf32_is_off_during_private_steps_and_restored():
    seen = []

    def step(model, batch):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return _mse(model, batch)

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        _trainer().run_epochs(1, step)
        assert seen and all(s == (False, False) for s in seen)
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_generator_update_through_the_private_discriminator_is_outside_the_step():
    """A GAN task: D's private step, then G's update through D (post-processing) in after_step."""
    torch.manual_seed(1)
    d = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 1))
    gen = nn.Linear(4, 20)
    g_opt = torch.optim.SGD(gen.parameters(), lr=0.1)
    trainer = _trainer(d, lr=0.1)
    z_gen = trainer.task_generator

    def d_losses(model, batch):
        real, _ = batch
        fake = gen(torch.randn(len(real), 4, generator=z_gen)).detach()
        bce = nn.functional.binary_cross_entropy_with_logits
        return (bce(model(real).squeeze(1), torch.ones(len(real)), reduction="none")
                + bce(model(fake).squeeze(1), torch.zeros(len(real)), reduction="none"))

    g_before = gen.weight.detach().clone()

    def g_update(tr):
        with tr.outside_mechanism() as dm:
            g_opt.zero_grad()
            (-dm(gen(torch.randn(8, 4, generator=z_gen)))).mean().backward()
        assert all(p.grad is None for p in d.parameters())
        g_opt.step()

    trainer.run_epochs(1, d_losses, after_step=g_update)
    assert not torch.equal(gen.weight, g_before)
    assert trainer.accountant.steps == N // B
