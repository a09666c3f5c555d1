"""MCGAN (methods.md B): networks, per-pair losses, augmentation, training, divergence, sampling."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dpmed.errors import ConfigError
from dpmed.generation import gan, training
from dpmed.generation.gan import (CheckpointRule, GANDivergenceError, GANTrainSettings, augment_patches,
                                  discriminator_pair_losses, draw_real_targets, generator_loss)
from dpmed.generation.training import load_generator, load_patches, train_mcgan
from dpmed.generation.sampling import synthetic_manifest, to_uint8, write_synthetic_set
from dpmed.io.cache import CacheWriter, read_cache
from dpmed.models.mcgan import (MCGANSettings, build_mcgan, discriminator_channels, expected_parameters,
                                generator_channels)
from dpmed.training.data import CacheDataset

torch.set_num_threads(1)


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------ networks
@pytest.mark.parametrize("size,stages", [(32, 4), (64, 5), (128, 6)])
def test_shapes_follow_patch_size(size, stages):
    s = MCGANSettings(image_size=size)
    g, d = build_mcgan(s)
    assert s.stages == stages
    assert len([m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]) == stages
    assert len([m for m in d.modules() if isinstance(m, nn.Conv2d)]) == stages
    z, y = torch.randn(2, 100), torch.tensor([0, 1])
    x = g(z, y)
    assert x.shape == (2, 1, size, size)
    assert x.abs().max() <= 1.0  # Tanh
    assert d(x, y).shape == (2,)


def test_paper_channels_and_parameter_counts():
    s = MCGANSettings()  # 128², paper config
    assert generator_channels(s) == [200, 1024, 512, 256, 128, 64, 1]
    assert discriminator_channels(s) == [2, 64, 128, 256, 512, 1024, 1]
    g, d = build_mcgan(s)
    # hand-computed in the module docstring
    assert _count(g) == expected_parameters(s)["generator"] == 14_428_113
    assert _count(d) == expected_parameters(s)["discriminator"] == 25_948_581
    # the counts measured for the paper-size networks: D 25.9 M, G 14.4 M
    assert round(_count(d) / 1e6, 1) == 25.9 and round(_count(g) / 1e6, 1) == 14.4
    for m in d.modules():
        if isinstance(m, nn.Conv2d):
            assert m.kernel_size == (6, 6) and m.stride == (2, 2) and m.padding == (2, 2)
    for m in g.modules():
        if isinstance(m, nn.ConvTranspose2d):
            assert m.kernel_size == (4, 4)


def test_no_batchnorm_no_inplace_and_leaky_slope():
    g, d = build_mcgan(MCGANSettings(image_size=32))
    mods = list(g.modules()) + list(d.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods)
    assert any(isinstance(m, nn.GroupNorm) for m in d.modules())
    assert all(not getattr(m, "inplace", False) for m in mods)
    assert {m.negative_slope for m in d.modules() if isinstance(m, nn.LeakyReLU)} == {0.1}


def test_discriminator_label_channel_is_an_embedding_table():
    _, d = build_mcgan(MCGANSettings(image_size=32))
    y = torch.tensor([1, 0, 1])
    onehot = F.one_hot(y, 2).float()
    np.testing.assert_allclose(d.embed(onehot).detach(), d.embed.weight.t()[y].detach())


def test_settings_refuse_bad_values():
    with pytest.raises(ConfigError, match="power of two"):
        MCGANSettings(image_size=48)
    with pytest.raises(ConfigError, match="unknown MCGAN setting"):
        MCGANSettings.from_mapping({"size": 64})
    with pytest.raises(ConfigError, match="select_epoch"):
        GANTrainSettings(epochs=3, select_epoch=4)


# ------------------------------------------------------------------------------ losses
def _pair_batch(n=4, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    real = torch.rand(n, 1, size, size, generator=gen) * 2 - 1
    fake = torch.rand(n, 1, size, size, generator=gen) * 2 - 1
    return real, torch.tensor([0, 1, 1, 0][:n]), fake, torch.tensor([1, 1, 0, 0][:n])


def test_pair_loss_matches_hand_formula():
    torch.manual_seed(0)
    _, d = build_mcgan(MCGANSettings(image_size=32))
    real, yr, fake, yf = _pair_batch()
    t = torch.tensor([0.7, 1.0, 1.2, 0.9])
    loss = discriminator_pair_losses(d, real, yr, fake, yf, t)
    assert loss.shape == (4,)
    lr, lf = d(real, yr), d(fake, yf)
    # BCE-with-logits: softplus(x) - t x (valid for t > 1 too); fake target 0: softplus(x)
    want = F.softplus(lr) - t * lr + F.softplus(lf)
    torch.testing.assert_close(loss, want)


def test_pair_loss_of_record_i_depends_only_on_pair_i():
    """Per-sample clipping treats (real_i, fake_i) as one unit: the gradient of ℓ_i from the
    batch must equal the gradient of the same pair alone (GroupNorm, not BatchNorm)."""
    torch.manual_seed(1)
    _, d = build_mcgan(MCGANSettings(image_size=32))
    real, yr, fake, yf = _pair_batch()
    t = torch.full((4,), 0.9)
    batch_loss = discriminator_pair_losses(d, real, yr, fake, yf, t)
    for i in range(4):
        g_batch = torch.autograd.grad(batch_loss[i], list(d.parameters()), retain_graph=True)
        alone = discriminator_pair_losses(d, real[i:i + 1], yr[i:i + 1], fake[i:i + 1], yf[i:i + 1], t[i:i + 1])
        g_alone = torch.autograd.grad(alone.sum(), list(d.parameters()))
        for a, b in zip(g_batch, g_alone):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_pair_loss_refuses_unpaired_batches():
    _, d = build_mcgan(MCGANSettings(image_size=32))
    real, yr, fake, yf = _pair_batch()
    with pytest.raises(ValueError, match="pair one to one"):
        discriminator_pair_losses(d, real, yr, fake[:3], yf[:3], torch.ones(4))


def test_generator_loss_is_non_saturating_bce():
    _, d = build_mcgan(MCGANSettings(image_size=32))
    _, _, fake, yf = _pair_batch()
    torch.testing.assert_close(generator_loss(d, fake, yf), F.softplus(-d(fake, yf)).mean())


def test_real_targets_are_one_sided_smoothing_in_paper_range():
    t = draw_real_targets(20_000, torch.Generator().manual_seed(0))
    assert 0.7 <= t.min() and t.max() <= 1.2 and t.max() > 1.0
    assert abs(t.mean().item() - 0.95) < 0.01


# ------------------------------------------------------------------------------ augmentation
def test_augment_identity_flips_and_seeding():
    x = torch.rand(3, 1, 16, 16)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    same = augment_patches(x, gen(), flip_p=0.0, scale=(1, 1), ratio=(1, 1))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    both = augment_patches(x, gen(), flip_p=1.0, scale=(1, 1), ratio=(1, 1))
    torch.testing.assert_close(both, torch.flip(x, dims=(2, 3)), atol=1e-5, rtol=0)
    a, b = augment_patches(x, gen()), augment_patches(x, gen())
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, augment_patches(x, torch.Generator().manual_seed(6)))
    # a 0.9-area crop enlarges the content: the mean of a centred bright square grows
    sq = torch.zeros(1, 1, 32, 32)
    sq[..., 12:20, 12:20] = 1
    theta_gen = torch.Generator().manual_seed(0)
    zoom = augment_patches(sq.expand(64, 1, 32, 32).contiguous(), theta_gen, flip_p=0,
                           scale=(0.9, 0.9), ratio=(1, 1))
    assert zoom.sum((1, 2, 3)).mean() > sq.sum() * 1.05


# ------------------------------------------------------------------------------ training
def _tiny_data(n=24, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    base = torch.linspace(-1, 1, size)
    x = (base[None, None, :, None] * (2 * y - 1).float()[:, None, None, None]).expand(n, 1, size, size)
    x = (x + 0.2 * torch.randn(n, 1, size, size, generator=gen)).clamp(-1, 1)
    return x.contiguous(), y


TINY = dict(epochs=2, batch_size=8)
NET = dict(image_size=32)


def _kill_after(monkeypatch, epoch):
    """Simulate a job killed right after ``epoch``'s engine checkpoint is written."""
    from dpmed.training.engine import trainer as engine_trainer

    class Killed(Exception):
        pass

    def kill(e, checkpoint):
        if e == epoch:
            raise Killed()

    monkeypatch.setattr(engine_trainer, "_on_epoch_end", kill)
    return Killed


@pytest.mark.parametrize("privacy", [None, dict(epsilon=50.0, delta=1e-3, max_grad_norm=1.0, grad_sample_mode="hooks")])
def test_training_writes_generator_and_resumes_identically(tmp_path, monkeypatch, privacy):
    """Both variants run through the engine; a run killed after epoch 1 resumes from the engine's
    checkpoint to the same generator (under DP too: the secret noise seed is in the checkpoint)."""
    x, y = _tiny_data()
    ref = train_mcgan(x, y, tmp_path / "ref", settings=TINY, net=NET, seed=3, privacy=privacy)
    assert (tmp_path / "ref" / "generator.pt").is_file() and not (tmp_path / "ref" / "checkpoint.pt").exists()
    assert ref["selection"]["epoch"] == 2 and len(ref["history"]) == 2
    hist = pd.read_csv(tmp_path / "ref" / "history.csv")
    assert np.isfinite(hist["loss_g"].to_numpy()).all()
    if privacy is None:
        assert not ref["guarantee"].holds and "without differential privacy" in ref["guarantee"].not_guaranteed[0]
        assert np.isfinite(hist["loss_d"]).all()
    else:  # the D loss is an un-noised statistic of the records: not written under DP
        assert hist["loss_d"].isna().all()

    killed = _kill_after(monkeypatch, 1)
    with pytest.raises(killed):
        train_mcgan(x, y, tmp_path / "run", settings=TINY, net=NET, seed=3, privacy=privacy,
                    checkpoint=tmp_path / "private" / "ck.pt")
    assert not (tmp_path / "run" / "generator.pt").exists() and (tmp_path / "private" / "ck.pt").exists()
    monkeypatch.undo()
    res = train_mcgan(x, y, tmp_path / "run", settings=TINY, net=NET, seed=3, privacy=privacy,
                      checkpoint=tmp_path / "private" / "ck.pt")
    assert res["resumed_from_epoch"] == 1 and not (tmp_path / "private" / "ck.pt").exists()
    g_ref, _ = load_generator(tmp_path / "ref" / "generator.pt")
    g_res, info = load_generator(tmp_path / "run" / "generator.pt")
    if privacy is None:  # bit for bit (the DP run draws a fresh secret seed per fresh run)
        for (k, a), b in zip(g_ref.state_dict().items(), g_res.state_dict().values()):
            torch.testing.assert_close(a, b, msg=k)
        assert info["guarantee"]["kind"] == "none"


def test_dp_mcgan_generator_is_post_processing_of_the_dp_discriminator(tmp_path):
    """The DP-MCGAN generator's card: derived from D's central DP-SGD guarantee whose ε is the
    accountant's for the steps run (recomputed here from the card's own fields)."""
    from dpmed.privacy.accounting import epsilon_for_history
    from dpmed.privacy.guarantee import Guarantee

    x, y = _tiny_data()
    res = train_mcgan(x, y, tmp_path, settings=TINY, net=NET, seed=3,
                      privacy=dict(epsilon=8.0, delta=1e-3, max_grad_norm=1.0, grad_sample_mode="bk"))
    g = Guarantee.from_dict(load_generator(tmp_path / "generator.pt")[1]["guarantee"])
    assert g.kind == "derived" and g.holds and len(g.derived_from) == 1
    d = g.derived_from[0]
    assert d.kind == "central" and d.mechanism == "dp-sgd" and g.epsilon == d.epsilon
    p = d.parameters
    assert p["n_records"] == len(x) and p["steps"] == 2 * p["steps_per_epoch"] and p["noise_multiplier"] > 0
    eps = epsilon_for_history([tuple(h) for h in p["history"]], d.delta, p["accountant"])
    assert eps == pytest.approx(d.epsilon, rel=1e-9) and 7.0 < eps <= 8.0
    assert res["guarantee"].epsilon == g.epsilon


def test_fixed_epoch_selection_keeps_that_epoch(tmp_path):
    x, y = _tiny_data()
    res = train_mcgan(x, y, tmp_path, settings=dict(TINY, select_epoch=1, keep_checkpoint=True), net=NET, seed=3)
    assert res["selection"]["epoch"] == 1
    g1, _ = load_generator(tmp_path / "generator.pt")
    last = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["task"]["task"]["g"]
    assert any(not torch.equal(a, last[k]) for k, a in g1.state_dict().items())
    # a checkpoint of other data is refused (it would mix two datasets in one model)
    with pytest.raises(ConfigError, match="different inputs"):
        train_mcgan(x.flip(0), y.flip(0), tmp_path, settings=dict(TINY, epochs=1), net=NET, seed=3)


def test_best_selection_uses_the_scorer():
    scores = iter([3.0, 1.0, 2.0])
    rule = CheckpointRule("best", 3, scorer=lambda g: next(scores), score_data="public cohort")
    net = nn.Linear(1, 1)
    for e in (1, 2, 3):
        with torch.no_grad():
            net.weight.fill_(e)
        rule.consider(e, net)
    assert rule.describe()["epoch"] == 2 and rule.best_score == 1.0
    assert rule.best_state["weight"].item() == 2.0
    with pytest.raises(ConfigError, match="public or held-out"):
        CheckpointRule("best", 3, scorer=lambda g: 0.0)


def test_nan_loss_stops_naming_the_epoch_and_writes_nothing(tmp_path):
    x, y = _tiny_data()
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(GANDivergenceError, match="diverged in epoch 1: non-finite"):
        train_mcgan(x, y, tmp_path, settings=TINY, net=NET, seed=3)
    assert not (tmp_path / "generator.pt").exists()


def test_collapse_stops_naming_the_epoch_and_writes_nothing(tmp_path):
    with pytest.raises(GANDivergenceError, match="collapsed in epoch 3"):
        gan.check_collapse(3, torch.zeros(8, 1, 4, 4) + 1e-4 * torch.rand(8, 1, 4, 4), tol=5e-3)
    assert gan.check_collapse(1, torch.rand(8, 1, 4, 4) * 2 - 1, tol=5e-3) > 0.1
    x, y = _tiny_data()
    with pytest.raises(GANDivergenceError, match="collapsed in epoch 1"):
        train_mcgan(x, y, tmp_path, settings=dict(TINY, collapse_tol=100.0), net=NET, seed=3)
    assert not (tmp_path / "generator.pt").exists()


def test_inputs_must_be_scaled_to_minus_one_one(tmp_path):
    x, y = _tiny_data()
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        train_mcgan((x + 1) * 127.5, y, tmp_path, settings=TINY, net=NET, seed=3)


# ------------------------------------------------------------------------------ sampling
def test_synthetic_set_reads_like_real_data(tmp_path):
    torch.manual_seed(0)
    g, _ = build_mcgan(MCGANSettings(image_size=32))
    like = pd.DataFrame(columns=["record_id", "patient_id", "split", "sex", "age", "age_group",
                                 "label_malignant", "source_path", "laterality", "view", "breast_density",
                                 "abnormality_id"])
    man = write_synthetic_set(g, tmp_path / "syn.h5", tmp_path / "syn.parquet", n_per_class=5, seed=1,
                              label="malignant", dataset="mammo", like=like, batch_size=3,
                              guarantee=training.nonprivate_guarantee())
    images, ids, attrs = read_cache(tmp_path / "syn.h5")
    assert images.dtype == np.uint8 and images.shape == (10, 32, 32)
    assert ids[:2] == ["syn-0-000000", "syn-0-000001"] and ids[5] == "syn-1-000000"
    assert attrs["kind"] == "mammography" and attrs["value_range"] == [0, 255]
    assert attrs["guarantee"]["kind"] == "none" and attrs["guarantee"]["derived_from"][0]["kind"] == "none"
    read_back = pd.read_parquet(tmp_path / "syn.parquet")
    assert list(read_back.columns)[:len(like.columns)] == list(like.columns)
    assert set(read_back["sex"]) == {"U"} and read_back["age"].isna().all()
    ds = CacheDataset(tmp_path / "syn.h5", tmp_path / "syn.parquet", ["malignant"])
    assert ds.targets[:, 0].tolist() == [0.0] * 5 + [1.0] * 5
    # same generator and seed -> the same patches; the class label reaches the generator
    again, _ = load_patches(tmp_path / "syn.h5", tmp_path / "syn.parquet")
    np.testing.assert_array_equal(to_uint8(again), images)
    with torch.no_grad():
        z = torch.Generator().manual_seed(1)
        zz, _ = gan.sample_latent(3, 100, 2, z)
        np.testing.assert_array_equal(to_uint8(g(zz, torch.zeros(3, dtype=torch.long))), images[:3])
    assert len(man) == 10


def test_uint8_mapping_inverts_cache_scaling(tmp_path):
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    with CacheWriter(tmp_path / "r.h5", 1, (16, 16), np.uint8,
                     {"dataset": "d", "split": "train", "kind": "mammography", "value_range": [0, 255]}) as w:
        w.write(0, "r0", u8[0])
    man = synthetic_manifest(["r0"], np.array([1]), "malignant")
    x, y = load_patches(tmp_path / "r.h5", man)
    assert x.min() == -1 and x.max() == 1 and y.tolist() == [1]
    np.testing.assert_array_equal(to_uint8(x), u8)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_per_sample_gradients_treat_each_pair_as_one_unit():
    """Through Opacus' hooks (D called twice: real, then fake), per-sample gradient row i is the
    gradient of the pair loss ℓ_i alone -- what per-sample clipping must bound."""
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    torch.manual_seed(2)
    _, d = build_mcgan(MCGANSettings(image_size=32))
    assert ModuleValidator.validate(d, strict=False) == []
    real, yr, fake, yf = _pair_batch()
    t = torch.tensor([0.8, 1.1, 0.9, 1.0])
    params = list(d.parameters())
    want = [torch.autograd.grad(discriminator_pair_losses(d, real[i:i + 1], yr[i:i + 1], fake[i:i + 1],
                                                          yf[i:i + 1], t[i:i + 1]).sum(), params)
            for i in range(4)]  # brute force, before the hooks exist
    gsm = GradSampleModule(d, batch_first=True, loss_reduction="sum")
    discriminator_pair_losses(gsm, real, yr, fake, yf, t).sum().backward()
    for i in range(4):
        for p, w in zip(params, want[i]):
            torch.testing.assert_close(p.grad_sample[i], w, rtol=1e-4, atol=1e-6)
    gsm._close()


def test_batch_losses_keep_the_d_step_away_from_g():
    torch.manual_seed(0)
    g, d = build_mcgan(MCGANSettings(image_size=32))
    s = GANTrainSettings(epochs=1)
    real, yr, _, _ = _pair_batch()
    losses, fake, yf = gan.discriminator_batch_losses(d, g, real, yr, s, torch.Generator().manual_seed(0),
                                                      torch.Generator().manual_seed(1))
    assert losses.shape == (4,) and fake.requires_grad
    losses.mean().backward()
    assert all(p.grad is None for p in g.parameters())
    assert all(p.grad is not None for p in d.parameters())
    empty, _, _ = gan.discriminator_batch_losses(d, g, real[:0], yr[:0], s, torch.Generator(), torch.Generator())
    assert empty.shape == (0,)


def test_best_checkpoint_by_fd_on_held_out_patches(tmp_path):
    from dpmed.evaluation.fidelity import generator_fd_scorer
    from dpmed.models import build_model

    x, y = _tiny_data()
    held = to_uint8(_tiny_data(seed=9)[0])
    with CacheWriter(tmp_path / "held.h5", len(held), (32, 32), np.uint8,
                     {"dataset": "d", "split": "val", "kind": "mammography", "value_range": [0, 255]}) as w:
        for i, img in enumerate(held):
            w.write(i, f"h{i}", img)
    torch.manual_seed(0)
    enc = build_model({"width": 0.125, "groups": 8, "in_channels": 1, "num_labels": 1})
    torch.save({"state_dict": enc.state_dict(), "model_cfg": enc.config(), "labels": ["a"],
                "normalization": {"mean": 0.5, "std": 0.25, "channels": 1}}, tmp_path / "enc.pt")
    scorer = generator_fd_scorer(tmp_path / "enc.pt", [tmp_path / "held.h5"], n_per_class=6, seed=0)
    res = train_mcgan(x, y, tmp_path / "run", settings=dict(TINY, select="best"), net=NET, seed=3,
                                 scorer=scorer, score_data="held-out validation patches")
    sel = res["selection"]
    scores = dict(sel["scores"])
    assert sorted(scores) == [1, 2] and sel["score"] == min(scores.values())
    assert sel["epoch"] == min(scores, key=scores.get) and sel["score_data"] == "held-out validation patches"
    g, info = load_generator(tmp_path / "run" / "generator.pt")
    assert scorer(g) == pytest.approx(sel["score"], rel=1e-5)


def test_synthetic_set_inherits_a_dp_generator_guarantee():
    from dpmed.generation.sampling import synthetic_guarantee
    from dpmed.privacy.guarantee import Guarantee

    dp = Guarantee(kind="central", unit="record", epsilon=6.0, delta=1e-4, mechanism="dp-sgd",
                   parameters={"noise_multiplier": 1.1}, noise_source="os entropy")
    syn = synthetic_guarantee(dp.to_dict())
    assert syn.kind == "derived" and (syn.epsilon, syn.delta) == (6.0, 1e-4) and syn.derived_from == (dp,)
    assert not synthetic_guarantee(training.nonprivate_guarantee()).holds


def test_task_contract_for_the_engine():
    """step(model, batch) -> (B,) with CacheDataset-style (B, 1) float targets; after_step
    updates G through D inside the trainer's outside_mechanism (D gets no gradient)."""
    import contextlib

    torch.manual_seed(0)
    g, d = build_mcgan(MCGANSettings(image_size=32))
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3)
    task = gan.MCGANTask(g, opt_g, GANTrainSettings(epochs=1, batch_size=4), torch.Generator().manual_seed(0))
    real, yr, _, _ = _pair_batch()
    losses = task.d_losses(d, (real, yr.float()[:, None]))
    assert losses.shape == (4,) and torch.isfinite(losses).all()

    class Trainer:
        @contextlib.contextmanager
        def outside_mechanism(self):
            for p in d.parameters():
                p.requires_grad_(False)
            yield d
            for p in d.parameters():
                p.requires_grad_(True)

    before = [p.detach().clone() for p in g.parameters()]
    task.after_step(Trainer())
    assert all(p.grad is None for p in d.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, g.parameters()))
    st = task.state_dict()
    nonfinite, g_loss = task.take_epoch_losses()
    assert not nonfinite and math.isfinite(g_loss) and task.g_losses == []
    task.d_losses(d, (real * float("nan"), yr))
    assert task.take_epoch_losses()[0] is True
    task.load_state_dict(st)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_engine_clips_each_real_fake_pair_as_one_unit(mode):
    """With the private-training engine (issue 8; skipped until it is merged): the clipped sum
    its privatiser accumulates for a batch of pair losses equals sum_i clip_C(grad ℓ_i) computed
    pair by pair -- D is called twice per forward, and the two halves of a pair are one unit."""
    engine = pytest.importorskip("dpmed.training.engine")
    import copy

    torch.manual_seed(0)
    _, d = build_mcgan(MCGANSettings(image_size=32))
    real, yr, fake, yf = _pair_batch()
    t = torch.linspace(0.7, 1.2, 4)
    params = list(d.parameters())
    grads = [torch.autograd.grad(discriminator_pair_losses(d, real[i:i + 1], yr[i:i + 1], fake[i:i + 1],
                                                           yf[i:i + 1], t[i:i + 1]).sum(), params)
             for i in range(4)]
    norms = torch.stack([torch.sqrt(sum(g.pow(2).sum() for g in gi)) for gi in grads])
    c = 0.5 * norms.median().item()  # some pairs clipped, some not
    want = [sum(min(1.0, c / (norms[i].item() + 1e-6)) * grads[i][k] for i in range(4)) for k in range(len(params))]
    priv = engine.make_privatiser(copy.deepcopy(d), c, mode)
    priv.reset()
    priv.begin()
    priv.clip_accumulate(discriminator_pair_losses(priv.model, real, yr, fake, yf, t))
    torch.testing.assert_close(priv.per_sample_norms, norms, rtol=1e-5, atol=0)
    for got, w in zip(priv.summed, want):  # per tensor, relative to its norm (float32 sums)
        assert ((got - w).norm() / w.norm()).item() < 1e-5


def test_demo_patches_to_synthetic_set_end_to_end(tmp_path):
    """Demo DICOMs -> ingestion -> 32² patch caches -> MCGAN (1 epoch) -> synthetic cache +
    manifest that concatenates with the real manifest and reads like real data -> fidelity and
    memorisation on pixels."""
    from dpmed.config import validate_config
    from dpmed.demo import generate_mammography_cohort
    from dpmed.evaluation.fidelity import fidelity_table, memorisation_check
    from dpmed.io.ingest import ingest_dataset
    from dpmed.preprocessing.pipeline import preprocess_split

    root = tmp_path / "mg"
    generate_mammography_cohort(root, n_patients=16, image_size=(256, 192), seed=1, test_fraction=0.5)
    cfg = validate_config({"datasets": {"mg": {
        "kind": "mammography", "adapter": "cbis_ddsm", "root": str(root), "labels": ["malignant"],
        "grades": {"min": 0, "max": 1, "positive_from": 1}, "split": {"train": 0.75, "val": 0.25, "test": 0.0},
        "description_csvs": {"train": [str(root / "mass_case_description_train_set.csv")],
                             "test": [str(root / "mass_case_description_test_set.csv")]}}}})["datasets"]["mg"]
    ing = ingest_dataset("mg", cfg, key=bytes(range(32)))
    params = {"margin": 60, "min_side": 128, "size": 32}
    for split in ("train", "test"):
        preprocess_split(ing.manifest, ing.sources, dataset="mg", split=split, kind="mammography", params=params,
                         out_path=tmp_path / f"{split}.h5")
    x, y = load_patches(tmp_path / "train.h5", ing.manifest)
    res = train_mcgan(x, y, tmp_path / "gan", settings={"epochs": 1, "batch_size": 8}, net=NET, seed=0)
    g, info = load_generator(res["generator_path"])
    syn = write_synthetic_set(g, tmp_path / "syn.h5", tmp_path / "syn.parquet", n_per_class=8, seed=0,
                              label="malignant", dataset="mg", like=ing.manifest, guarantee=info["guarantee"])
    both = pd.concat([ing.manifest, syn], ignore_index=True)  # real+syn: one manifest for both caches
    for cache in ("train.h5", "syn.h5"):
        ds = CacheDataset(tmp_path / cache, both, ["malignant"])
        assert ds.sample_shape == (32, 32) and set(ds.targets[:, 0].tolist()) <= {0.0, 1.0}
    real_tr, _, _ = read_cache(tmp_path / "train.h5")
    real_te, ids_te, _ = read_cache(tmp_path / "test.h5")
    syn_img, _, attrs = read_cache(tmp_path / "syn.h5")
    assert attrs["guarantee"]["kind"] == "none"
    y_te = ing.manifest.set_index("record_id").loc[ids_te, "label_malignant"].to_numpy()
    flat = lambda a: a.reshape(len(a), -1).astype(float) / 255  # noqa: E731
    table = fidelity_table(flat(real_te), y_te, flat(syn_img), syn["label_malignant"].to_numpy(),
                           k=2, kid_subsets=3, kid_subset_size=8)
    assert np.isfinite(table[["fd", "kid_mean", "precision", "recall"]].to_numpy()).all()
    mem = memorisation_check(flat(syn_img), flat(real_tr), flat(real_te))
    assert mem.exact_copies == 0 and mem.n_reference == min(len(real_tr), len(real_te))
