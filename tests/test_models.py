"""ResNet9-GN / ACS models and exact per-sample clipping under every grad_sample_mode."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from dpmed.errors import ConfigError, PrivacyError
from dpmed.models import (
    ACSConv3d,
    ResNet9,
    acs_split,
    build_model,
    convert_2d_weights_to_acs,
    count_parameters,
    expected_num_parameters,
    gn_groups,
    stage_channels,
)
from dpmed.models.acs import compute_acs_grad_sample
from dpmed.training.engine import make_privatiser

torch.set_num_threads(1)
# the first conv's input never requires grad; PyTorch warns about it on every backward hook
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

TINY = dict(width=1 / 16, groups=4, num_labels=3)  # channels 4/8/16/32, GroupNorm(4, C)


# --------------------------------------------------------------------------- architecture


def test_parameter_count_matches_hand_calculation():
    m = ResNet9(in_channels=1, num_labels=8, width=1.0, dims=2)
    # hand count (see resnet9 module docstring): stem 3,264; layer1 73,984; layer2 230,144;
    # layer3 919,040; layer4 3,673,088; fc 4,104
    hand = 3264 + 73984 + 230144 + 919040 + 3673088 + 4104
    assert hand == 4_903_624
    assert count_parameters(m) == hand == expected_num_parameters(1, 8, 1.0, 32)
    assert 4.85e6 < hand < 4.95e6  # "about 4.9 M"
    # 3 input channels adds 2*64*49 stem weights; 3D (ACS) has exactly the same parameters
    assert count_parameters(ResNet9(in_channels=3)) == hand + 2 * 64 * 49
    assert count_parameters(ResNet9(dims=3, **TINY)) == expected_num_parameters(1, 3, 1 / 16, 4)


def test_layout_strides_and_channels():
    m = ResNet9()
    assert m.channels == (64, 128, 256, 512)
    assert m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2)
    assert isinstance(m.maxpool, nn.MaxPool2d) and m.maxpool.kernel_size == 3 and m.maxpool.stride == 2
    assert [getattr(m, f"layer{i}").conv1.stride for i in range(1, 5)] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert m.layer1.downsample is None
    for i in (2, 3, 4):
        ds = getattr(m, f"layer{i}").downsample
        assert isinstance(ds[0], nn.Conv2d) and ds[0].kernel_size == (1, 1) and isinstance(ds[1], nn.GroupNorm)
    assert isinstance(m.fc, nn.Linear) and m.fc.in_features == 512 and m.fc.out_features == 8
    out = m.eval()(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 8)  # logits, no sigmoid


def test_groupnorm_rule():
    assert [stage_channels(b, 1.0, 32) for b in (64, 128, 256, 512)] == [64, 128, 256, 512]
    assert [stage_channels(b, 0.5, 32) for b in (64, 128, 256, 512)] == [32, 64, 128, 256]
    # rounding to a multiple of the group count
    assert stage_channels(128, 0.3, 32) == 32 and stage_channels(512, 0.3, 32) == 160
    # small widths: fewer channels than groups -> one channel per group
    assert stage_channels(64, 1 / 16, 32) == 4 and gn_groups(4, 32) == 4
    for width in (1 / 16, 0.1, 0.25, 0.3, 0.5, 0.75, 1.0, 1.3):
        for groups in (1, 4, 8, 32):
            m = ResNet9(width=width, groups=groups)
            gns = [mod for mod in m.modules() if isinstance(mod, nn.GroupNorm)]
            assert len(gns) == 1 + 2 * 4 + 3
            for gn in gns:
                assert gn.num_channels % gn.num_groups == 0
                if gn.num_channels >= groups:
                    assert gn.num_groups == groups


def test_no_batchnorm_no_inplace_and_opacus_validator():
    from opacus.validators import ModuleValidator

    for dims in (2, 3):
        for act in ("relu", "mish"):
            m = ResNet9(dims=dims, activation=act, **TINY)
            assert ModuleValidator.validate(m, strict=False) == []
            for mod in m.modules():
                assert not isinstance(mod, nn.modules.batchnorm._BatchNorm)
                assert not getattr(mod, "inplace", False), mod


def test_activation_switch():
    m_relu = ResNet9(activation="relu", **TINY)
    m_mish = ResNet9(activation="mish", **TINY)
    acts_r = {type(x) for x in m_relu.modules() if isinstance(x, (nn.ReLU, nn.Mish))}
    acts_m = {type(x) for x in m_mish.modules() if isinstance(x, (nn.ReLU, nn.Mish))}
    assert acts_r == {nn.ReLU} and acts_m == {nn.Mish}
    m_mish.load_state_dict(m_relu.state_dict())  # same parameters, different nonlinearity
    x = torch.randn(2, 1, 32, 32)
    assert not torch.allclose(m_relu(x), m_mish(x))
    with pytest.raises(ConfigError):
        ResNet9(activation="gelu")


def test_build_model_factory():
    m = build_model({"dims": 3, "in_channels": 1, "num_labels": 1, "width": 0.125, "activation": "mish", "groups": 8})
    assert isinstance(m, ResNet9) and m.dims == 3 and m.num_labels == 1 and m.channels == (8, 16, 32, 64)
    assert isinstance(m.conv1, ACSConv3d) and isinstance(m.maxpool, nn.MaxPool3d)
    assert isinstance(m.avgpool, nn.AdaptiveAvgPool3d)
    assert build_model(m.config()).config() == m.config()
    assert build_model({}).channels == (64, 128, 256, 512)
    with pytest.raises(ConfigError):
        build_model({"widht": 1.0})
    with pytest.raises(ConfigError):
        build_model({"dims": 4})


# --------------------------------------------------------------------------- ACS convolutions


def test_acs_split_and_planes():
    assert acs_split(64) == [22, 21, 21] and acs_split(8) == [3, 3, 2] and acs_split(3) == [1, 1, 1]
    torch.manual_seed(0)
    conv = ACSConv3d(2, 6, 3, stride=1).double()
    x2d = torch.randn(1, 2, 9, 11, dtype=torch.float64)
    ref = nn.functional.conv2d(x2d, conv.weight, padding=1)  # (1, 6, 9, 11)
    # constant along D: axial group = 2D conv of the H x W image
    vol = x2d.unsqueeze(2).expand(1, 2, 5, 9, 11)
    out = conv(vol)
    assert out.shape == (1, 6, 5, 9, 11)
    torch.testing.assert_close(out[:, 0:2, 2], ref[:, 0:2])
    # constant along H: coronal group = 2D conv of the D x W image
    vol = x2d.unsqueeze(3).expand(1, 2, 9, 4, 11)
    torch.testing.assert_close(conv(vol)[:, 2:4, :, 1], ref[:, 2:4])
    # constant along W: sagittal group = 2D conv of the D x H image
    vol = x2d.unsqueeze(4).expand(1, 2, 9, 11, 4)
    torch.testing.assert_close(conv(vol)[:, 4:6, :, :, 1], ref[:, 4:6])
    # strided shapes agree across planes
    assert ACSConv3d(2, 5, 7, stride=2)(torch.randn(1, 2, 9, 10, 13)).shape == (1, 5, 5, 5, 7)
    with pytest.raises(ValueError):
        ACSConv3d(2, 5, 3, padding=0)


@pytest.mark.parametrize("stride,k,bias", [(1, 3, True), (2, 3, False), (2, 7, True), (2, 1, False)])
def test_acs_grad_sampler_matches_per_sample_loop(stride, k, bias):
    torch.manual_seed(1)
    conv = ACSConv3d(3, 7, k, stride=stride, bias=bias).double()
    x = torch.randn(4, 3, 6, 7, 9, dtype=torch.float64)
    w_out = torch.randn_like(conv(x))  # loss_i = <w_out_i, conv(x_i)>
    gs = compute_acs_grad_sample(conv, [x], w_out)
    for i in range(len(x)):
        conv.zero_grad()
        (conv(x[i : i + 1]) * w_out[i : i + 1]).sum().backward()
        torch.testing.assert_close(gs[conv.weight][i], conv.weight.grad, rtol=1e-10, atol=1e-10)
        if bias:
            torch.testing.assert_close(gs[conv.bias][i], conv.bias.grad, rtol=1e-10, atol=1e-10)


def test_convert_2d_weights_to_acs():
    torch.manual_seed(2)
    m2 = ResNet9(activation="mish", **TINY)
    m3 = convert_2d_weights_to_acs(m2)
    assert m3.dims == 3 and m3.config() == {**m2.config(), "dims": 3}
    for (n2, p2), (n3, p3) in zip(m2.named_parameters(), m3.named_parameters()):
        assert n2 == n3 and torch.equal(p2, p3)
    # a 3D model built separately can be initialised from a 2D state_dict directly
    m3b = ResNet9(dims=3, activation="mish", **TINY)
    m3b.load_state_dict(m2.state_dict())
    with pytest.raises(ConfigError):
        convert_2d_weights_to_acs(m2, ResNet9(dims=3, width=0.125, groups=4, num_labels=3))


# --------------------------------------------------------------------------- exact per-sample clipping


def _per_sample_loss(criterion):
    def losses(out, y):
        return criterion(out, y).reshape(len(out), -1).mean(1)
    return losses


def _reference_clipped_sum(model, losses, x, y, C):
    """Loop over samples: each sample's gradient alone, flat L2 clip to C, sum."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(len(x)):
        grads = torch.autograd.grad(losses(model(x[i : i + 1]), y[i : i + 1]).sum(), params)
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        norms.append(norm.item())
        f = min(1.0, C / (norm.item() + 1e-6))  # Opacus' clip factor
        for t, g in zip(total, grads):
            t += f * g
    return total, norms


def _data(dims, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1, 40, 40) if dims == 2 else (n, 1, 12, 20, 20)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = (torch.rand(n, 3, generator=g) > 0.5).to(torch.float64)
    return x, y


CASES = [(2, "hooks"), (2, "functorch"), (2, "bk"), (3, "hooks"), (3, "functorch"), (3, "bk")]


@pytest.mark.parametrize("dims,mode", CASES)
def test_dp_clipping_equals_per_sample_loop(dims, mode):
    """The engine's privatiser (every mode) adds exactly sum_i clip_C(grad_i), in two physical batches."""
    torch.manual_seed(3)
    model = ResNet9(dims=dims, activation="mish", **TINY).double()
    losses = _per_sample_loss(nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64),
                                                   reduction="none"))
    x, y = _data(dims)
    _, norms = _reference_clipped_sum(copy.deepcopy(model), losses, x, y, 1.0)
    C = float(sorted(norms)[len(norms) // 2])  # median: some samples clipped, some not
    assert min(norms) < C - 1e-3 and max(norms) > C + 1e-3
    ref, _ = _reference_clipped_sum(copy.deepcopy(model), losses, x, y, C)

    priv = make_privatiser(model, C, mode)
    priv.reset()
    for sl in (slice(0, 4), slice(4, 6)):  # physical batches accumulate into one clipped sum
        priv.begin()
        priv.clip_accumulate(losses(priv.model(x[sl]), y[sl]))
    assert all(p.grad is None for p in model.parameters())  # the unclipped gradient never lands
    num = torch.sqrt(sum(((g - r) ** 2).sum() for g, r in zip(priv.summed, ref)))
    den = torch.sqrt(sum((r**2).sum() for r in ref))
    assert (num / den).item() < 1e-5, (mode, dims, (num / den).item())
    for g, r in zip(priv.summed, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-8)


def test_make_privatiser_argument_checks():
    model = ResNet9(**TINY)
    with pytest.raises(PrivacyError, match="grad_sample_mode"):
        make_privatiser(model, 1.0, "nope")
    with pytest.raises(PrivacyError, match="max_grad_norm"):
        make_privatiser(model, 0.0, "bk")
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    for mode in ("bk", "hooks"):
        with pytest.raises(PrivacyError, match="BatchNorm"):
            make_privatiser(bn, 1.0, mode)
