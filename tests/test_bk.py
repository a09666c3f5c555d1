"""bk: the per-layer rules and the clipper, against a per-sample autograd loop.

Every test compares the clipped sum the privatiser produces with
``sum_i min(1, C / ||grad_i||) grad_i`` computed one sample at a time, with C the median norm
(so some samples are clipped and some are not). Under-clipping a module used twice (adding
||G_use||^2 per use instead of ||sum_use G_use||^2) makes the reused-module tests fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dpmed.errors import PrivacyError
from dpmed.training.bk import (
    _CONV_NORM_METHODS, _group_norm_grad_sample, bk_problems, conv_norm_method, keep_grad_sample,
)
from dpmed.training.engine import make_privatiser

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def _reference(model, sample_loss, n, C):
    """Per-sample loop: grad of sample_loss(model, i) alone, clipped to C, summed; and the norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.autograd.grad(sample_loss(model, slice(i, i + 1)).sum(), params, allow_unused=True)
             for i in range(n)]
    grads = [[torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)] for gs in grads]
    norms = [torch.sqrt(sum((g ** 2).sum() for g in gs)).item() for gs in grads]
    total = [torch.zeros_like(p) for p in params]
    for gs, nm in zip(grads, norms):
        for t, g in zip(total, gs):
            t += min(1.0, C / (nm + 1e-6)) * g
    return total, norms


def _assert_exact(model, sample_loss, n, mode="bk", rtol=1e-6):
    _, norms = _reference(model, sample_loss, n, 1.0)
    C = float(sorted(norms)[n // 2])
    assert min(norms) < C * 0.999 and max(norms) > C * 1.001, norms
    ref, _ = _reference(model, sample_loss, n, C)
    priv = make_privatiser(model, C, mode)
    priv.reset()
    priv.begin()
    priv.clip_accumulate(sample_loss(priv.model, slice(0, n)))
    for got, want in zip(priv.summed, ref):
        torch.testing.assert_close(got, want, rtol=rtol, atol=1e-9)
    torch.testing.assert_close(priv.per_sample_norms, torch.tensor(norms, dtype=priv.per_sample_norms.dtype),
                               rtol=rtol, atol=1e-9)


# ----------------------------------------------------------------------------- reuse
@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_linear_called_twice_is_clipped_on_the_sum_of_its_uses(mode):
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).double()
    x1, x2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)

    def loss(model, i):
        return torch.tanh(model(x1[i])).sum(1) + model(x2[i]).pow(2).sum(1)

    _assert_exact(lin, loss, 6, mode)


class _ConvD(nn.Module):
    """A small conditional discriminator: Embedding + conv k6 stride 2 + norms + Linear."""

    def __init__(self, norm="group"):
        super().__init__()
        self.embed = nn.Embedding(3, 16)
        self.conv = nn.Conv2d(2, 6, 6, stride=2, padding=2)
        self.norm = nn.GroupNorm(3, 6) if norm == "group" else nn.InstanceNorm2d(6, affine=True)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 1)

    def forward(self, x, y):
        lab = self.embed(y).view(-1, 1, 4, 4).repeat_interleave(2, 2).repeat_interleave(2, 3)
        h = F.leaky_relu(self.norm(self.conv(torch.cat([x, lab], 1))), 0.2)
        return self.fc(F.leaky_relu(self.conv2(h), 0.2).flatten(1)).squeeze(1)


@pytest.mark.parametrize("norm", ["group", "instance"])
def test_gan_discriminator_on_real_and_fake_matches_the_paired_loop(norm):
    """Per-sample gradient i = grad(l_real,i + l_fake,i): D sees a real and a fake batch of the same size."""
    torch.manual_seed(1)
    d = _ConvD(norm).double()
    real, fake = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0, 2])

    def loss(model, i):
        ones = torch.ones(len(real[i]), dtype=torch.float64)
        return (F.binary_cross_entropy_with_logits(model(real[i], y[i]), ones, reduction="none")
                + F.binary_cross_entropy_with_logits(model(fake[i], y[i]), 0 * ones, reduction="none"))

    _assert_exact(d, loss, 6, "bk")
    _assert_exact(d, loss, 6, "hooks")


def test_uses_with_different_batch_sizes_are_refused():
    lin = nn.Linear(3, 1)
    priv = make_privatiser(lin, 1.0, "bk")
    priv.begin()
    with pytest.raises(PrivacyError, match="row by row"):
        priv.clip_accumulate(torch.cat([priv.model(torch.randn(2, 3)), priv.model(torch.randn(4, 3))]).sum(1)[:2])


# ----------------------------------------------------------------------------- registered rules
@pytest.mark.parametrize("layer", [
    lambda: nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1),
    lambda: nn.LayerNorm([3, 5, 5]),
    lambda: nn.InstanceNorm2d(3, affine=True),
    lambda: nn.GroupNorm(3, 3),
    lambda: nn.Conv2d(3, 4, 3, stride=2),
], ids=["convtranspose2d", "layernorm", "instancenorm2d", "groupnorm", "conv2d"])
def test_layer_rules_exact(layer):
    torch.manual_seed(2)
    m = nn.Sequential(layer(), nn.Flatten(), nn.LazyLinear(2)).double()
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    m(x)  # materialise the lazy layer
    m[2].weight.data.normal_()

    def loss(model, i):
        return model(x[i]).pow(2).sum(1)

    _assert_exact(m, loss, 6, "bk")


def test_embedding_rule_exact_with_repeated_indices():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Embedding(5, 4, padding_idx=0), nn.Flatten(), nn.Linear(12, 1)).double()
    idx = torch.tensor([[1, 1, 2], [0, 3, 3], [4, 4, 4], [2, 0, 1], [3, 1, 0], [1, 2, 3]])
    _assert_exact(m, lambda model, i: model(idx[i]).pow(2).sum(1) + model(idx[i]).sum(1), 6, "bk")


def test_layer_without_rule_is_refused_with_its_path():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.w

    problems = bk_problems(nn.Sequential(nn.Linear(2, 2), Scale()))
    assert len(problems) == 1 and problems[0].startswith("1 (Scale)")
    with pytest.raises(PrivacyError, match="Scale"):
        make_privatiser(nn.Sequential(nn.Linear(2, 2), Scale()), 1.0, "bk")


# ----------------------------------------------------------------------------- outside the mechanism
@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_generator_pass_through_the_private_discriminator_leaves_its_state_alone(mode):
    """The G update backprops through D: D's clipped sum and p.grad stay untouched, G gets its gradient."""
    torch.manual_seed(4)
    d = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    g = nn.Linear(2, 4)
    priv = make_privatiser(d, 1.0, mode)
    priv.reset()
    priv.begin()
    priv.clip_accumulate(priv.model(torch.randn(5, 4)).squeeze(1))
    before = [s.clone() for s in priv.summed]
    with priv.outside_mechanism() as dm:
        (-dm(g(torch.randn(5, 2)))).sum().backward()
    assert g.weight.grad is not None and g.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, priv.summed))
    assert all(p.requires_grad for p in d.parameters())
    # and the next private step still records normally
    priv.begin()
    priv.clip_accumulate(priv.model(torch.randn(3, 4)).squeeze(1))
    assert priv.per_sample_norms.shape == (3,)


# ----------------------------------------------------------------------------- conv norm internals
@pytest.mark.parametrize("stride,k", [(1, 3), (2, 3), (2, 7), (2, 1)])
def test_bk_conv_norm_methods_agree(stride, k):
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 5, k, stride=stride, padding=(k - 1) // 2, bias=False).double()
    a = torch.randn(4, 3, 11, 9, dtype=torch.float64)
    g = torch.randn_like(conv(a))
    ref = []
    for i in range(4):
        conv.zero_grad()
        (conv(a[i : i + 1]) * g[i : i + 1]).sum().backward()
        ref.append(conv.weight.grad.pow(2).sum())
    ref = torch.stack(ref)
    for name, fn in _CONV_NORM_METHODS.items():
        torch.testing.assert_close(fn(a, g, conv), ref, rtol=1e-10, atol=1e-12, msg=name)


def test_bk_conv_norm_choice_is_deterministic_and_batch_independent():
    """The exact-norm method depends on layer shapes only (never on timing or batch size)."""
    early = conv_norm_method((32, 64, 32, 32), (32, 64, 32, 32), (3, 3))   # L=1024, p=576, o=64
    deep = conv_norm_method((32, 256, 8, 8), (32, 512, 4, 4), (3, 3))      # L=16, p=2304, o=512
    assert (early, deep) == ("grouped", "gram")
    for n in (1, 7, 64):
        assert conv_norm_method((n, 256, 8, 8), (n, 512, 4, 4), (3, 3)) == deep


def test_bk_keeps_per_sample_conv_grads_only_when_no_larger_than_the_stored_input():
    assert keep_grad_sample((32, 64, 32, 32), (64, 64, 3, 3))
    assert not keep_grad_sample((32, 128, 16, 16), (128, 128, 3, 3))
    assert keep_grad_sample((1, 64, 32, 32), (64, 64, 3, 3)) == keep_grad_sample((512, 64, 32, 32), (64, 64, 3, 3))


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_bk_group_norm_per_sample_grads_from_sums(offset):
    """From reductions, in float32, also far from zero mean (where E[a^2] - mean^2 would cancel)."""
    torch.manual_seed(7)
    gn = nn.GroupNorm(4, 12)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-0.5, 0.5)
    a = torch.randn(5, 12, 9, 7) * 2.0 + offset
    g = torch.randn(5, 12, 9, 7)
    gw, gb = _group_norm_grad_sample(a, g, gn)
    for i in range(5):
        gn.zero_grad()
        (gn(a[i : i + 1]) * g[i : i + 1]).sum().backward()
        torch.testing.assert_close(gw[i], gn.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gb[i], gn.bias.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,k,shape", [(1, 3, (5, 6, 7)), (2, 7, (9, 10, 13)), (2, 1, (6, 7, 8)),
                                           (2, 3, (3, 3, 4)), (1, 1, (2, 2, 2))])
def test_acs_rule_grouped_and_unfold_equal_a_per_sample_loop(stride, k, shape):
    """Both of the ACS rule's methods (the shape decides which runs) give each sample's
    autograd gradient, for every plane split, stride and kernel."""
    from dpmed.models.acs import ACSConv3d, compute_acs_grad_sample
    from dpmed.training.bk import _acs_grad_sample, acs_grad_sample_method

    torch.manual_seed(4)
    conv = ACSConv3d(3, 7, k, stride=stride, bias=True).double()
    a = torch.randn(4, 3, *shape, dtype=torch.float64)
    g = torch.randn(conv(a).shape, dtype=torch.float64)
    loop = [torch.autograd.grad(conv(a[i:i + 1]), [conv.weight, conv.bias], g[i:i + 1]) for i in range(4)]
    unfold = compute_acs_grad_sample(conv, [a], g)
    used = _acs_grad_sample(conv, a, g)
    assert acs_grad_sample_method(g.shape) == ("unfold" if g[0, 0].numel() <= 16 else "grouped")
    for j, p in enumerate((conv.weight, conv.bias)):
        want = torch.stack([gr[j] for gr in loop])
        torch.testing.assert_close(used[p], want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(unfold[p], want, rtol=1e-10, atol=1e-12)
