"""Models that cannot be trained with DP-SGD are refused, naming every offending module."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dpmed.errors import PrivacyError
from dpmed.privacy.validation import assert_privatisable, privatisation_problems


class Block(nn.Module):
    def __init__(self, norm: nn.Module, act: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn1 = norm
        self.act = act

    def forward(self, x):
        return self.act(self.bn1(self.conv1(x)))


def make_model(norm, act):
    return nn.Sequential(
        Block(norm, act),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 2),
    )


def test_refuses_batchnorm_with_path():
    model = make_model(nn.BatchNorm2d(32), nn.Mish())
    with pytest.raises(PrivacyError) as info:
        assert_privatisable(model)
    msg = str(info.value)
    assert "0.bn1 (BatchNorm2d)" in msg
    assert "GroupNorm" in msg


def test_refuses_inplace_relu_with_path():
    model = make_model(nn.GroupNorm(8, 32), nn.ReLU(inplace=True))
    with pytest.raises(PrivacyError) as info:
        assert_privatisable(model)
    assert "0.act (ReLU)" in str(info.value)
    assert "inplace" in str(info.value)


def test_lists_every_problem_at_once():
    model = make_model(nn.BatchNorm2d(32), nn.ReLU(inplace=True))
    model.append(nn.Dropout(0.1, inplace=True))
    problems = privatisation_problems(model)
    joined = "\n".join(problems)
    assert "0.bn1" in joined and "0.act" in joined and "4 (Dropout)" in joined


def test_frozen_batchnorm_is_still_refused():
    bn = nn.BatchNorm2d(32)
    for p in bn.parameters():
        p.requires_grad_(False)
    with pytest.raises(PrivacyError, match="0.bn1"):
        assert_privatisable(make_model(bn, nn.Mish()))


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_accepts_groupnorm_mish():
    model = make_model(nn.GroupNorm(8, 32), nn.Mish())
    assert_privatisable(model)  # no exception
    assert_privatisable(model, grad_sample_mode="bk")
    assert_privatisable(model, grad_sample_mode="functorch")
    # and Opacus really computes per-sample gradients for it
    from opacus import GradSampleModule

    gsm = GradSampleModule(model)
    out = gsm(torch.randn(4, 3, 8, 8))
    out.sum().backward()
    assert all(p.grad_sample.shape[0] == 4 for p in model.parameters())


def test_eval_mode_is_refused():
    model = make_model(nn.GroupNorm(8, 32), nn.Mish()).eval()
    with pytest.raises(PrivacyError, match="training mode"):
        assert_privatisable(model)


def test_bk_mode_refuses_a_layer_without_a_rule():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.w

    model = nn.Sequential(nn.Linear(4, 4), Scale())
    assert_privatisable(model, grad_sample_mode="hooks")  # functorch fallback handles it
    with pytest.raises(PrivacyError, match="1 \\(Scale\\)"):
        assert_privatisable(model, grad_sample_mode="bk")


def test_unknown_mode():
    with pytest.raises(PrivacyError, match="grad_sample_mode"):
        assert_privatisable(nn.Linear(2, 2), grad_sample_mode="magic")
