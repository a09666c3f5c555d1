"""Content-aware DP: the conditional INN, its trainer, the per-image Laplace mechanism, caches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from dpmed.errors import ConfigError
from dpmed.io.cache import read_cache
from dpmed.models.inn import (
    PAPER_INN,
    ConditionalINN,
    INNSettings,
    InvertibilityError,
    SeededPermutation,
    bits_per_dim,
    build_inn,
    check_invertible,
    expected_num_parameters,
    label_condition,
    reconstruction_error,
    trainable_parameters,
)
from dpmed.training.engine import trainer as engine_trainer
from dpmed.models.inn_training import INNTrainingData, INNTrainSettings, load_inn, train_inn
from dpmed.privacy.cadp import (
    CADPSettings,
    cadp_guarantee,
    clip_l1,
    laplace_noise,
    paper_sensitivity,
    privatise_batch,
    privatise_cache,
    privatise_latent,
)
from dpmed.privacy.guarantee import Guarantee, post_processing
from dpmed.training.data import CacheDataset
from training_helpers import LABELS, make_cohort

torch.set_num_threads(1)

# 16×16, 2 labels → 4 condition values; 2 stages (8×8×4, 4×4×16), 1 FC block on 256 values.
TINY = INNSettings(image_size=16, n_conditions=4, stages=2, blocks_per_stage=2, conv_width=8,
                   fc_blocks=1, fc_width=32, seed=3)


def _perturbed(settings: INNSettings = TINY, scale: float = 0.05) -> ConditionalINN:
    """A network whose couplings are far from the identity (the zero-initialised layers made non-zero)."""
    net = build_inn(settings)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in trainable_parameters(net):
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net.eval()


def _batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 2, (n, 2), generator=g)
    return x, label_condition(y)


# ----------------------------------------------------------------------------- network
def test_condition_is_one_hot_per_label_and_broadcast_to_each_stage():
    c = label_condition(torch.tensor([[0, 1], [1, 1]]))
    assert c.tolist() == [[1, 0, 0, 1], [0, 1, 0, 1]]
    conds = build_inn(TINY).conditions(c)
    assert [tuple(t.shape) for t in conds] == [(2, 4, 8, 8), (2, 4, 4, 4), (2, 4)]
    assert torch.equal(conds[1][:, :, 3, 2], c)  # the label, at every position of the stage
    with pytest.raises(ConfigError, match="condition must have shape"):
        build_inn(TINY).conditions(torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="0 or 1"):
        label_condition(torch.tensor([[0.5, 1.0]]))


def test_parameter_count_matches_the_architecture_and_the_paper():
    assert sum(p.numel() for p in trainable_parameters(build_inn(TINY))) == expected_num_parameters(TINY)
    with torch.device("meta"):  # the 219 M network without allocating it
        paper = ConditionalINN(PAPER_INN)
    n = sum(p.numel() for p in trainable_parameters(paper))
    assert n == expected_num_parameters(PAPER_INN) == 219_382_432
    # FrEIA's permutation indices / IRevNet kernels are Parameters but must not be trained
    frozen = [p for p in paper.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.long or p.shape[1:] == (1, 2, 2) for p in frozen)


def test_permutations_come_from_the_config_seed_and_leave_numpy_global_rng_alone():
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    a, b = build_inn(TINY), build_inn(TINY)
    assert np.array_equal(np.random.rand(3), expected)
    perms = lambda net: [m.perm.tolist() for m in net.modules() if isinstance(m, SeededPermutation)]
    assert perms(a) == perms(b)
    other = INNSettings(**{**TINY.to_dict(), "seed": 4})
    assert perms(build_inn(other)) != perms(a)
    for m in a.modules():
        if isinstance(m, SeededPermutation):
            assert torch.equal(m.perm[m.perm_inv], torch.arange(len(m.perm)))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_network_inverts_with_non_trivial_couplings():
    net = _perturbed()
    x, c = _batch()
    z, jac = net(x, c)
    assert z.shape == (6, 256) and jac.abs().min() > 1.0  # the couplings really scale
    assert reconstruction_error(net, x, c) < 1e-5
    _, jac_rev = net.graph(z, c=net.conditions(c), rev=True)
    assert torch.allclose(jac + jac_rev, torch.zeros(6), atol=1e-3)
    # the condition matters: inverting with another label does not give x back
    assert (net.inverse(z, label_condition(1 - torch.zeros(6, 2))) - x).abs().max() > 1e-3


def test_bits_per_dim_of_the_zero_initialised_network_is_the_gaussian_formula():
    net = build_inn(TINY)  # zero last layers: every coupling is the identity, log|det J| = 0
    x = torch.full((2, 1, 16, 16), 0.5)
    with torch.no_grad():
        z, jac = net(x, label_condition(torch.tensor([[0, 1], [1, 0]])))
    assert torch.equal(jac, torch.zeros(2))
    assert torch.equal(z.sort(dim=1).values, x.flatten(1))  # a pure rearrangement of the pixels
    # per dim: (½·0.25 + ½·ln 2π) nats = (0.125 + 0.918939) / ln 2 bits
    assert float(bits_per_dim(z, jac)) == pytest.approx((0.125 + 0.5 * math.log(2 * math.pi)) / math.log(2), rel=1e-6)
    assert float(bits_per_dim(z, jac - 256 * math.log(2))) == pytest.approx(
        (0.125 + 0.5 * math.log(2 * math.pi)) / math.log(2) + 1.0, rel=1e-6)  # doubling the density: −1 bit


def test_bad_settings_and_the_invertibility_check_raise_clear_errors():
    with pytest.raises(ConfigError, match="not divisible by 2\\*\\*stages"):
        INNSettings(image_size=20, stages=3)
    with pytest.raises(ConfigError, match="unknown INN setting\\(s\\) \\['fc_widht'\\]"):
        INNSettings.from_mapping({"image_size": 32, "fc_widht": 8})
    assert INNTrainSettings.from_mapping({"epochs": 3}).epochs == 3
    assert CADPSettings.from_mapping({"epsilon": 2, "scale_rule": "paper_s_over_eps"}).epsilon_holding == 4.0
    x, c = _batch()
    net = _perturbed(scale=3.0)  # exp of clamped scales compounds to overflow / loss of precision
    with pytest.raises(InvertibilityError, match="does not invert on the held-out batch"):
        check_invertible(net, x, c, tolerance=1e-9)
    with pytest.raises(ConfigError, match="scale_rule"):
        CADPSettings(epsilon=1.0, scale_rule="s_over_eps")
    with pytest.raises(ConfigError, match="finite"):
        CADPSettings(epsilon=math.inf)


# ----------------------------------------------------------------------------- mechanism
def test_clipping_is_per_sample_like_a_loop():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 50, generator=g, dtype=torch.float64) * torch.logspace(-2, 3, 8, dtype=torch.float64)[:, None]
    s = 2.0
    loop = torch.stack([row * min(1.0, s / float(row.abs().sum())) for row in z])
    assert torch.allclose(clip_l1(z, s), loop, rtol=1e-12, atol=0)
    assert (clip_l1(z, s).abs().sum(dim=1) <= s * (1 + 1e-12)).all()
    small = z.abs().sum(dim=1) <= s
    assert small.any() and torch.equal(clip_l1(z, s)[small], z[small])


def test_one_huge_sample_does_not_change_the_others_outputs():
    net = _perturbed()
    x, c = _batch()
    settings = CADPSettings(epsilon=1.0)
    huge = x.clone()
    huge[0] = 500.0 * x[0]  # latent L1 norm orders of magnitude above the rest
    out = privatise_batch(net, x, c, settings, generator=torch.Generator().manual_seed(5))
    out_huge = privatise_batch(net, huge, c, settings, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out[1:], out_huge[1:])
    # and each sample's output equals privatising it alone with the same noise row
    noise_gen = torch.Generator().manual_seed(5)
    z, _ = net(x, c)
    z_tilde = privatise_latent(z, settings, generator=noise_gen)
    assert torch.equal(out, net.inverse(z_tilde.float(), c).clamp(0, 1))


def test_added_noise_is_laplace_with_scale_two_s_over_epsilon():
    settings = CADPSettings(epsilon=0.5)  # s = 0.25, b = 2s/ε = 1.0
    assert (settings.clip, settings.scale) == (0.25, 1.0)
    g = torch.Generator().manual_seed(1)
    z = 10 * torch.randn(40, 500, generator=g, dtype=torch.float64)
    z_tilde = privatise_latent(z, settings, generator=torch.Generator().manual_seed(2))
    clipped = clip_l1(z, settings.clip)
    assert (clipped.abs().sum(dim=1) <= settings.clip * (1 + 1e-12)).all()
    noise = (z_tilde - clipped).flatten().numpy()
    assert scipy.stats.kstest(noise, scipy.stats.laplace(scale=1.0).cdf).pvalue > 1e-3
    # the paper's scale s/ε (0.5) is distinguishable at this sample size
    assert scipy.stats.kstest(noise, scipy.stats.laplace(scale=0.5).cdf).pvalue < 1e-6
    draws = laplace_noise((200_000,), 0.7, torch.Generator().manual_seed(3)).numpy()
    assert np.isfinite(draws).all() and np.mean(np.abs(draws)) == pytest.approx(0.7, rel=0.01)


def test_mechanism_would_notice_zero_noise_or_skipped_clipping():
    settings = CADPSettings(epsilon=2.0)  # s = 1, b = 1
    z = torch.full((20, 400), 3.0, dtype=torch.float64)  # ‖z‖₁ = 1200 ≫ s
    z[::2] *= -1
    z_tilde = privatise_latent(z, settings, generator=torch.Generator().manual_seed(0))
    # clipping written out here, not via clip_l1: z · s/‖z‖₁
    residual = z_tilde - z * (settings.clip / z.abs().sum(dim=1, keepdim=True))
    # Laplace(b) has std √2·b; zero noise gives 0, an unclipped latent gives ≈ 3
    assert float(residual.std()) == pytest.approx(math.sqrt(2) * settings.scale, rel=0.05)
    assert float(residual.mean().abs()) < 0.05


def test_noise_comes_from_os_entropy_by_default():
    net = _perturbed()
    x, c = _batch(3)
    settings = CADPSettings(epsilon=1.0)
    torch.manual_seed(0)
    a = privatise_batch(net, x, c, settings)
    torch.manual_seed(0)  # the global seed does not drive the noise
    b = privatise_batch(net, x, c, settings)
    assert not torch.equal(a, b)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0


def test_guarantee_epsilon_is_two_s_over_b_and_the_paper_rule_reports_two_epsilon():
    kw = dict(latent_dims=256, inn_trained_on="pub/train (public cohort)", inn_on_private=False)
    ours = cadp_guarantee(CADPSettings(epsilon=2.0), max_records_per_patient=3, **kw)
    assert (ours.kind, ours.unit, ours.delta, ours.mechanism) == ("local", "record", 0.0, "cadp-laplace")
    p = ours.parameters
    assert p["sensitivity"] == paper_sensitivity(2.0) == 1.0 and p["laplace_scale"] == 1.0
    assert ours.epsilon == 2 * p["sensitivity"] / p["laplace_scale"] == 2.0
    assert (p["clip_norm"], p["latent_dims"], p["scale_rule"]) == ("L1", 256, "two_s_over_eps")
    assert "secrets.randbits" in ours.noise_source
    text = " ".join(ours.not_guaranteed)
    assert "label is released in the clear" in text and "composition" in text and "6" in text
    assert "central" in text and ours.non_private_inputs[0].source.startswith("pub/train")
    paper = cadp_guarantee(CADPSettings(epsilon=2.0, scale_rule="paper_s_over_eps"), **kw)
    assert paper.parameters["laplace_scale"] == 0.5 and paper.epsilon == 4.0 and paper.epsilon_target == 2.0
    assert any("NOT what holds" in t for t in paper.not_guaranteed)
    assert paper_sensitivity(20.0) == 4.0
    private = cadp_guarantee(CADPSettings(epsilon=1.0), **{**kw, "inn_on_private": True})
    assert (private.kind, private.epsilon, private.delta, private.holds) == ("none", math.inf, None, False)
    assert "non-private function of those images" in private.not_guaranteed[0]
    assert private.parameters["epsilon_local_nominal"] == 1.0 == 2 * private.parameters["sensitivity"] / \
        private.parameters["laplace_scale"]
    assert post_processing(private, released="a classifier").kind == "none"
    assert Guarantee.from_dict(ours.to_dict()) == ours
    clf = post_processing(ours, released="a classifier trained on the privatised images")
    assert clf.kind == "derived" and clf.epsilon == 2.0 and clf.derived_from == (ours,)


# ----------------------------------------------------------------------------- caches + training
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cadp"), sizes=(24, 8, 12), size=16)


def test_privatised_cache_has_the_same_format_ids_and_labels(cohort, tmp_path):
    paths, manifest = cohort
    net = _perturbed()
    out = tmp_path / "priv" / "train.h5"
    settings = CADPSettings(epsilon=1.0, batch_size=5)  # batches straddle 24 records
    g = privatise_cache(net, inn_trained_on=INNTrainingData("pub"), cache_in=paths["test"], cache_out=out,
                        manifest=manifest, labels=LABELS, settings=settings)
    images, ids, attrs = read_cache(out)
    src_images, src_ids, src_attrs = read_cache(paths["test"])
    assert ids == src_ids and images.dtype == src_images.dtype == np.uint8 and images.shape == src_images.shape
    for key in ("dataset", "split", "kind", "value_range"):
        assert attrs[key] == src_attrs[key]
    assert Guarantee.from_dict(attrs["privatised"]) == g and g.epsilon == 1.0 and "OS entropy" in g.noise_source
    assert np.abs(images.astype(int) - src_images.astype(int)).mean() > 5  # really perturbed
    priv, real = CacheDataset(out, manifest, LABELS), CacheDataset(paths["test"], manifest, LABELS)
    assert torch.equal(priv.targets, real.targets)
    # the file holds exactly privatise_batch's output, batch by batch, under the same noise stream
    gen_a, gen_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    out2 = tmp_path / "again.h5"
    privatise_cache(net, inn_trained_on=INNTrainingData("pub"), cache_in=paths["test"], cache_out=out2,
                    manifest=manifest, labels=LABELS, settings=settings, generator=gen_a)
    x = torch.stack([CacheDataset(paths["test"], manifest, LABELS, mean=0.0, std=1.0).image(i) for i in range(12)])
    c = label_condition(real.targets)
    expected = torch.cat([privatise_batch(net, x[i:i + 5], c[i:i + 5], settings, generator=gen_b)
                          for i in range(0, 12, 5)])
    expected = np.rint(expected[:, 0].numpy().astype(np.float64) * 255).astype(np.uint8)
    assert np.array_equal(read_cache(out2)[0], expected)


def test_privatise_cache_refuses_a_network_that_does_not_invert(cohort, tmp_path):
    paths, manifest = cohort
    out = tmp_path / "bad.h5"
    with pytest.raises(InvertibilityError, match="first batch of test.h5"):
        privatise_cache(_perturbed(scale=3.0), inn_trained_on=INNTrainingData("pub"), cache_in=paths["test"],
                        cache_out=out, manifest=manifest, labels=LABELS,
                        settings=CADPSettings(epsilon=1.0, recon_tolerance=1e-9))
    assert not out.exists() and not list(tmp_path.iterdir())


def _train(paths, manifest, out_dir, **kw):
    settings = INNTrainSettings(**{"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 1, "device": "cpu", **kw})
    return train_inn(train_h5=paths["train"], holdout_h5=paths["val"], manifest=manifest, labels=LABELS,
                     out_dir=out_dir, inn=TINY, settings=settings,
                     trained_on=INNTrainingData("synthetic", "train", "public"))


def test_inn_training_resumes_bit_identically_and_checks_invertibility(cohort, tmp_path, monkeypatch):
    paths, manifest = cohort
    full = _train(paths, manifest, tmp_path / "full")
    assert [r["epoch"] for r in full["history"]] == [1, 2] and full["resumed_from_epoch"] is None
    assert full["reconstruction_error"] < 1e-3 and all(math.isfinite(r["holdout_bpd"]) for r in full["history"])
    assert not (tmp_path / "full" / "checkpoint.pt").exists()

    def kill(epoch, checkpoint):
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine_trainer, "_on_epoch_end", kill)
    with pytest.raises(KeyboardInterrupt):
        _train(paths, manifest, tmp_path / "resumed")
    monkeypatch.setattr(engine_trainer, "_on_epoch_end", lambda epoch, checkpoint: None)
    resumed = _train(paths, manifest, tmp_path / "resumed")
    assert resumed["resumed_from_epoch"] == 1
    a, meta = load_inn(tmp_path / "full" / "inn.pt")
    b, _ = load_inn(tmp_path / "resumed" / "inn.pt")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert meta["settings"] == TINY and meta["trained_on"].role == "public" and meta["labels"] == LABELS
    # the held-out bpd is measured without input noise (noise is for training only)
    hold = CacheDataset(paths["val"], manifest, LABELS, mean=0.0, std=1.0)
    with torch.no_grad():
        z, jac = a(torch.stack([hold.image(i) for i in range(len(hold))]), label_condition(hold.targets))
    assert float(bits_per_dim(z, jac)) == pytest.approx(meta["holdout_bpd"], rel=1e-5)
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), build_inn(TINY).state_dict().values()))

    # a checkpoint from other settings is refused, not mixed in
    monkeypatch.setattr(engine_trainer, "_on_epoch_end", kill)
    with pytest.raises(KeyboardInterrupt):
        _train(paths, manifest, tmp_path / "mixed")
    with pytest.raises(ConfigError, match="different inputs/settings"):
        _train(paths, manifest, tmp_path / "mixed", lr=5e-4)


def test_inn_training_fails_above_the_reconstruction_tolerance(cohort, tmp_path):
    paths, manifest = cohort
    with pytest.raises(InvertibilityError, match="held-out batch of synthetic"):
        _train(paths, manifest, tmp_path / "strict", epochs=1, recon_tolerance=1e-12)
    assert not (tmp_path / "strict" / "inn.pt").exists()


def test_caches_that_do_not_fit_the_network_are_refused(cohort, tmp_path):
    paths, manifest = cohort
    with pytest.raises(ConfigError, match="the INN expects 32×32"):
        train_inn(train_h5=paths["train"], holdout_h5=paths["val"], manifest=manifest, labels=LABELS,
                  out_dir=tmp_path, inn=INNSettings(image_size=32, n_conditions=4, stages=2, blocks_per_stage=1,
                                                     conv_width=4, fc_blocks=0),
                  settings=INNTrainSettings(epochs=1), trained_on=INNTrainingData("synthetic"))
    with pytest.raises(ConfigError, match="1 label"):
        privatise_cache(build_inn(TINY), inn_trained_on=INNTrainingData("pub"), cache_in=paths["test"],
                        cache_out=tmp_path / "x.h5", manifest=manifest, labels=LABELS[:1],
                        settings=CADPSettings(epsilon=1.0))


def test_inn_gradient_clipping_clips_before_the_optimizer_step():
    from dpmed.models.inn_training import _ClipThenStep

    w = torch.nn.Parameter(torch.zeros(4))
    seen = []

    class Record(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(float(w.grad.norm()))
            return super().step(closure)

    opt = _ClipThenStep(Record([w], lr=1.0), [w], max_norm=0.5)
    w.grad = torch.full((4,), 10.0)  # norm 20
    opt.step()
    assert seen == [pytest.approx(0.5)] and torch.allclose(w.detach(), torch.full((4,), -0.25))
    opt.zero_grad()
    assert w.grad is None and opt.state_dict()["param_groups"][0]["lr"] == 1.0


def test_classifier_on_privatised_images_inherits_the_local_guarantee(cohort, tmp_path):
    from dpmed.privacy.card import read_privacy_card
    from dpmed.training.classifier import ClassifierOutputs, train_classifier

    paths, manifest = cohort
    release = cadp_guarantee(CADPSettings(epsilon=2.0), latent_dims=256, inn_trained_on="pub/train (public cohort)",
                             inn_on_private=False)
    kw = dict(train_h5=paths["train"], val_h5=paths["val"], test_h5=paths["test"], manifest=manifest, labels=LABELS,
              checkpoint=None, settings={"epochs": 1, "batch_size": 8, "lr": 1e-3},
              model_cfg={"dims": 2, "in_channels": 1, "width": 0.125, "groups": 2}, seed=0, device="cpu",
              data_guarantee=release, synthetic_only=True)
    with pytest.raises(ConfigError, match="epsilon must be inf"):  # no DP-SGD on top of a private release
        train_classifier(outputs=ClassifierOutputs.in_folder(tmp_path / "dp"), epsilon=1.0,
                         settings={**kw.pop("settings"), "delta": 1e-3}, **kw)
    train_classifier(outputs=ClassifierOutputs.in_folder(tmp_path / "clf"), epsilon=math.inf,
                     settings={"epochs": 1, "batch_size": 8, "lr": 1e-3}, **kw)
    card = read_privacy_card(tmp_path / "clf" / "privacy.json")
    g = Guarantee.from_dict(card["typed_guarantee"])
    assert (card["kind"], card["guarantee_type"], card["epsilon_spent"], card["delta"]) == ("derived", "local", 2.0, 0.0)
    assert g.derived_from == (release,) and "LOCAL" in card["local_vs_central"]
    assert any("ORIGINAL images" in t for t in card["not_guaranteed"])
    # a release without a guarantee (INN trained on private images) passes none on
    private = cadp_guarantee(CADPSettings(epsilon=2.0), latent_dims=256, inn_trained_on="cxr/train (private cohort)",
                             inn_on_private=True)
    train_classifier(outputs=ClassifierOutputs.in_folder(tmp_path / "none"), epsilon=math.inf,
                     settings={"epochs": 1, "batch_size": 8, "lr": 1e-3}, **{**kw, "data_guarantee": private})
    card = read_privacy_card(tmp_path / "none" / "privacy.json")
    assert card["kind"] == "none" and math.isinf(card["epsilon_spent"])
    assert "non-private function of those images" in card["guarantee"]
