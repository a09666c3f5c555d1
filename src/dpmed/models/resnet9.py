"""ResNet9 with GroupNorm, for 2D radiographs and (via ACS convolutions) 3D CT volumes.

torchvision-style ResNet with one BasicBlock per stage::

    stem   conv 7x7/2 (no bias) - GN - act - maxpool 3x3/2
    layer1 BasicBlock(64,  stride 1)
    layer2 BasicBlock(128, stride 2)   (projection shortcut: conv 1x1/2 + GN)
    layer3 BasicBlock(256, stride 2)   (projection shortcut)
    layer4 BasicBlock(512, stride 2)   (projection shortcut)
    global average pool - Linear(512 -> num_labels)   (logits; sigmoid lives in loss/eval)

Every normalisation is GroupNorm (BatchNorm mixes samples and cannot be used with per-sample
gradients); activations are non-inplace (in-place ops break Opacus' backward hooks). ReLU is the
non-private choice, Mish the DP one.

Channel / group rule (``width`` scaling)
----------------------------------------
For a stage with base channels ``b`` (64/128/256/512) and GroupNorm group count ``groups``:

* ``c = round(b * width)``; if ``c >= groups`` it is rounded to the nearest multiple of
  ``groups`` (at least ``groups``) and GroupNorm uses ``groups`` groups;
* otherwise (small widths) ``c = max(1, c)`` and GroupNorm uses ``c`` groups (one channel per
  group), so ``GroupNorm(g, c)`` is always valid.

See :func:`stage_channels` / :func:`gn_groups`. At ``width=1, groups=32`` this gives the
published 64/128/256/512 with GroupNorm(32, C).

Parameter count (2D, width 1, 1 input channel, 8 labels), by hand::

    stem conv 1*64*49 = 3,136 + GN 128                                   =     3,264
    layer1 2 * 64*64*9 + 2 GN(64)*2 = 73,728 + 256                       =    73,984
    layer2 64*128*9 + 128*128*9 + 64*128 (proj) + 3 GN(128)*2            =   230,144
    layer3 128*256*9 + 256*256*9 + 128*256 + 3*512                       =   919,040
    layer4 256*512*9 + 512*512*9 + 256*512 + 3*1024                      = 3,673,088
    fc     512*8 + 8                                                     =     4,104
    total                                                                = 4,903,624

(:func:`expected_num_parameters` computes the same formula for any configuration; the ACS 3D
network has exactly the same parameters as the 2D one.)
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from dpmed.errors import ConfigError
from dpmed.models.acs import ACSConv3d

BASE_CHANNELS = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 2)
ACTIVATIONS = ("relu", "mish")


def stage_channels(base: int, width: float, groups: int) -> int:
    """Channels of a stage with ``base`` channels at ``width`` (see the module docstring)."""
    c = int(round(base * width))
    if c >= groups:
        return max(groups, int(round(c / groups)) * groups)
    return max(1, c)


def gn_groups(channels: int, groups: int) -> int:
    """GroupNorm group count used for ``channels`` channels."""
    return groups if channels % groups == 0 else channels


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "mish":
        return nn.Mish(inplace=False)
    raise ConfigError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


class _Ops:
    """Layer factories for 2D or 3D (ACS) networks."""

    def __init__(self, dims: int):
        if dims not in (2, 3):
            raise ConfigError(f"dims must be 2 or 3, got {dims!r}")
        self.dims = dims

    def conv(self, cin: int, cout: int, k: int, stride: int) -> nn.Module:
        pad = (k - 1) // 2
        if self.dims == 2:
            return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False)
        return ACSConv3d(cin, cout, k, stride=stride, padding=pad, bias=False)

    def maxpool(self) -> nn.Module:
        return nn.MaxPool2d(3, 2, 1) if self.dims == 2 else nn.MaxPool3d(3, 2, 1)

    def avgpool(self) -> nn.Module:
        return nn.AdaptiveAvgPool2d(1) if self.dims == 2 else nn.AdaptiveAvgPool3d(1)


class BasicBlock(nn.Module):
    """conv3x3(stride) - GN - act - conv3x3 - GN, + shortcut, act."""

    def __init__(self, ops: _Ops, cin: int, cout: int, stride: int, groups: int, activation: str):
        super().__init__()
        self.conv1 = ops.conv(cin, cout, 3, stride)
        self.gn1 = nn.GroupNorm(gn_groups(cout, groups), cout)
        self.act1 = _activation(activation)
        self.conv2 = ops.conv(cout, cout, 3, 1)
        self.gn2 = nn.GroupNorm(gn_groups(cout, groups), cout)
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                ops.conv(cin, cout, 1, stride), nn.GroupNorm(gn_groups(cout, groups), cout)
            )
        else:
            self.downsample = None
        self.act2 = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.gn1(self.conv1(x)))
        out = self.gn2(self.conv2(out))
        return self.act2(out + identity)


class ResNet9(nn.Module):
    """ResNet9-GN; see the module docstring.

    Parameters
    ----------
    in_channels: input channels (1 for grey images; 3 if the images are expanded to RGB).
    num_labels: number of logits (8 CXR findings; 1 for the CT tumour/control task).
    width: channel multiplier (1.0 = published 64/128/256/512).
    activation: ``"relu"`` (non-private) or ``"mish"`` (DP).
    dims: 2 (images ``(N, C, H, W)``) or 3 (volumes ``(N, C, D, H, W)``, ACS convolutions).
    groups: GroupNorm group count (32 in the paper).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_labels: int = 8,
        width: float = 1.0,
        activation: str = "relu",
        dims: int = 2,
        groups: int = 32,
    ):
        super().__init__()
        if in_channels < 1 or num_labels < 1:
            raise ConfigError(f"in_channels and num_labels must be >= 1, got {in_channels}, {num_labels}")
        if not width > 0:
            raise ConfigError(f"width must be > 0, got {width!r}")
        if groups < 1:
            raise ConfigError(f"groups must be >= 1, got {groups!r}")
        _activation(activation)  # validate early
        ops = _Ops(dims)
        self.dims = dims
        self.in_channels = in_channels
        self.num_labels = num_labels
        self.width = width
        self.activation = activation
        self.groups = groups
        chans = [stage_channels(b, width, groups) for b in BASE_CHANNELS]
        self.channels = tuple(chans)

        self.conv1 = ops.conv(in_channels, chans[0], 7, 2)
        self.gn1 = nn.GroupNorm(gn_groups(chans[0], groups), chans[0])
        self.act1 = _activation(activation)
        self.maxpool = ops.maxpool()
        cin = chans[0]
        for i, (c, s) in enumerate(zip(chans, STRIDES), start=1):
            setattr(self, f"layer{i}", BasicBlock(ops, cin, c, s, groups, activation))
            cin = c
        self.avgpool = ops.avgpool()
        self.fc = nn.Linear(cin, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = self.dims + 2
        if x.dim() != want:
            raise ValueError(f"ResNet9(dims={self.dims}) expects a {want}-D input, got shape {tuple(x.shape)}")
        x = self.maxpool(self.act1(self.gn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def config(self) -> dict:
        """The keyword arguments that rebuild this network (see :func:`build_model`)."""
        return dict(
            dims=self.dims,
            in_channels=self.in_channels,
            num_labels=self.num_labels,
            width=self.width,
            activation=self.activation,
            groups=self.groups,
        )


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def expected_num_parameters(
    in_channels: int = 1, num_labels: int = 8, width: float = 1.0, groups: int = 32
) -> int:
    """Closed-form parameter count of :class:`ResNet9` (same for dims 2 and 3)."""
    c = [stage_channels(b, width, groups) for b in BASE_CHANNELS]
    gn = lambda ch: 2 * ch  # noqa: E731 (affine weight + bias)
    total = in_channels * c[0] * 49 + gn(c[0])
    cin = c[0]
    for ch, s in zip(c, STRIDES):
        total += cin * ch * 9 + gn(ch) + ch * ch * 9 + gn(ch)
        if s != 1 or cin != ch:
            total += cin * ch + gn(ch)
        cin = ch
    return total + cin * num_labels + num_labels


_CFG_KEYS = ("dims", "in_channels", "num_labels", "width", "activation", "groups")


def build_model(cfg: Mapping[str, Any]) -> ResNet9:
    """ResNet9 from a config dict with keys ``dims, in_channels, num_labels, width, activation,
    groups`` (all optional; defaults are those of :class:`ResNet9`). Unknown keys are refused so
    that a typo does not silently fall back to a default."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"model config must be a mapping, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(_CFG_KEYS) - {"name", "arch"})
    if unknown:
        raise ConfigError(f"unknown model config keys {unknown}; allowed: {list(_CFG_KEYS)}")
    arch = cfg.get("arch", cfg.get("name", "resnet9"))
    if str(arch).lower() not in ("resnet9", "resnet9-gn", "resnet9_gn"):
        raise ConfigError(f"unknown model architecture {arch!r}; only 'resnet9' is provided")
    kwargs = {k: cfg[k] for k in _CFG_KEYS if k in cfg and cfg[k] is not None}
    try:
        kwargs = {
            **kwargs,
            **{k: int(kwargs[k]) for k in ("dims", "in_channels", "num_labels", "groups") if k in kwargs},
            **({"width": float(kwargs["width"])} if "width" in kwargs else {}),
            **({"activation": str(kwargs["activation"]).lower()} if "activation" in kwargs else {}),
        }
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid model config {dict(cfg)!r}: {e}") from None
    return ResNet9(**kwargs)


def convert_2d_weights_to_acs(model2d: ResNet9, model3d: ResNet9 | None = None) -> ResNet9:
    """Initialise a 3D (ACS) ResNet9 from a 2D one.

    The ACS network holds exactly the 2D parameters (same names, same shapes), so this is a
    ``load_state_dict`` after checking that the architectures match. If ``model3d`` is None a
    3D network with the 2D network's configuration is built. Returns ``model3d``.
    """
    if model3d is None:
        model3d = ResNet9(**{**model2d.config(), "dims": 3})
    if getattr(model3d, "dims", None) != 3:
        raise ConfigError("convert_2d_weights_to_acs: target model is not a 3D (ACS) ResNet9")
    sd = model2d.state_dict()
    own = model3d.state_dict()
    bad = [k for k in own if k not in sd or sd[k].shape != own[k].shape]
    extra = [k for k in sd if k not in own]
    if bad or extra:
        raise ConfigError(
            f"2D and 3D networks do not match (different width/groups/labels/in_channels?): "
            f"mismatched {bad[:5]}, unexpected {extra[:5]}"
        )
    model3d.load_state_dict(sd)
    return model3d
