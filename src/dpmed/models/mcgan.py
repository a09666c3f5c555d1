"""MCGAN: the conditional DCGAN of the synthetic-mammography study (methods.md B).

Paper configuration (128 × 128 patches, 2 classes)::

    Generator      z ∈ R^100;  label → Embedding(2, 50) → Linear(50 → 100) → LeakyReLU(0.1),
                   concatenated with z → 200 channels at 1 × 1;
                   ConvT k4 s1 p0  200 → 1024   (1 → 4)
                   ConvT k4 s2 p1 1024 → 512    (4 → 8)   ... 256, 128, 64 ...
                   ConvT k4 s2 p1   64 → 1      (64 → 128), Tanh
                   GroupNorm + ReLU after every transposed conv but the last.
    Discriminator  label → Embedding(2, 50) → Linear(50 → H·W) → one extra input channel;
                   Conv k6 s2 p2   2 → 64 → 128 → 256 → 512 → 1024 → 1   (128 → 64 → … → 2),
                   LeakyReLU(0.1) after every conv but the last, GroupNorm after conv 2 … 5;
                   the last conv's 2 × 2 map is averaged into one logit per image.

Kernel 6 in D and 4 in G is the paper's choice against checkerboard artefacts.

Patch size
----------
The number of stages follows the patch size ``S`` (a power of two, at least 16):
``stages = log2(S) − 1`` in both networks (6 at 128², 5 at 64², 4 at 32²). A smaller network
drops the widest stage (G starts at ``64·2^(stages−2)`` channels, D ends there), so the 64²
demo network is the paper network without its 1024-channel layers.

Choices (and why)
-----------------
* **GroupNorm(min(32, C), C)**, not BatchNorm: BatchNorm mixes the samples of a batch, so a
  per-sample gradient (and per-sample clipping) is undefined; GroupNorm normalises each sample
  on its own, has per-sample gradient rules in Opacus and in dpmed's exact ``bk`` clipping, and
  is what Opacus' DP-DCGAN example uses. (InstanceNorm(affine) would also be valid; GroupNorm is
  the one both gradient engines already handle, and it is the same in both networks.)
* **Logits out**: D returns logits and the losses use BCE-with-logits (numerically stable);
  the paper's sigmoid output is ``torch.sigmoid(D(x, y))``.
* **Label embedding in D** is written as a bias-free ``Linear(2, 50)`` applied to the one-hot
  label: the same function and the same 100 parameters as ``Embedding(2, 50)`` (row ``y`` of
  the table is ``W[:, y]``), but a layer every per-sample-gradient rule set knows.
  The generator (never trained under DP: it is post-processing of D) keeps ``nn.Embedding``.
* Activations are non-inplace (in-place activations break per-sample gradient hooks).
* Images are in [−1, 1] (Tanh output); the study's code fed [0, 1] images to a Tanh generator.

Parameter counts at 128² (by hand, GroupNorm affine included)::

    G  label path 100 + 5,100; ConvT weights 200·1024·16 + 1024·512·16 + 512·256·16
       + 256·128·16 + 128·64·16 + 64·16 = 14,418,944; GroupNorm 2·(1024+512+256+128+64)
       = 3,968; no conv biases (a bias before a normalisation is cancelled by it; the last
       layer's bias is kept: 1)                                        = 14,428,113
    D  label path 100 + 50·16,384 + 16,384 = 835,684; conv weights 2·64·36 + 64·128·36
       + 128·256·36 + 256·512·36 + 512·1024·36 + 1024·36 = 25,108,992; conv biases (only the
       first and last conv: the others feed a normalisation) 64 + 1 = 65; GroupNorm
       2·(128+256+512+1024) = 3,840                                     = 25,948,581

(:func:`expected_parameters` computes the same formula for every patch size.) These match
the 25.9 M / 14.4 M measured for the paper-size networks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from dpmed.errors import ConfigError
from dpmed.settings import settings_from_mapping

__all__ = [
    "MCGANSettings", "MCGANGenerator", "MCGANDiscriminator", "build_mcgan", "expected_parameters",
    "generator_channels", "discriminator_channels",
]

#: Width of the widest stage at 128² (G's first, D's last hidden stage).
_BASE = 64
_LEAKY = 0.1


@dataclass(frozen=True)
class MCGANSettings:
    """The network settings of MCGAN (methods.md B).

    Attributes
    ----------
    image_size: patch side ``S`` (power of two ≥ 16); 128 in the paper.
    latent_dim: length of z (100).
    num_classes: number of class labels (2: benign / malignant).
    embed_dim: label-embedding width (50).
    label_features: generator label-path output width (100; 100 + z = 200 channels).
    groups: maximal GroupNorm group count (32).
    """

    image_size: int = 128
    latent_dim: int = 100
    num_classes: int = 2
    embed_dim: int = 50
    label_features: int = 100
    groups: int = 32

    def __post_init__(self):
        s = self.image_size
        if not (isinstance(s, int) and s >= 16 and s & (s - 1) == 0):
            raise ConfigError(f"MCGAN image_size must be a power of two >= 16, got {s!r}")
        for name in ("latent_dim", "num_classes", "embed_dim", "label_features", "groups"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"MCGAN {name} must be a positive integer, got {v!r}")

    @property
    def stages(self) -> int:
        """Up-/down-sampling stages: log2(S) − 1 (6 at 128²)."""
        return int(math.log2(self.image_size)) - 1

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "MCGANSettings":
        """Typed settings from a config mapping; unknown keys are refused."""
        return settings_from_mapping(cls, cfg, "MCGAN", convert=dict.fromkeys(cls.__dataclass_fields__, int))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def generator_channels(s: MCGANSettings) -> list[int]:
    """Channels from the 1×1 input to the image: [200, 1024, 512, 256, 128, 64, 1] at 128²."""
    hidden = [_BASE * 2 ** k for k in range(s.stages - 2, -1, -1)]
    return [s.latent_dim + s.label_features, *hidden, 1]


def discriminator_channels(s: MCGANSettings) -> list[int]:
    """Channels from the input to the logit map: [2, 64, 128, 256, 512, 1024, 1] at 128²."""
    hidden = [_BASE * 2 ** k for k in range(s.stages - 1)]
    return [2, *hidden, 1]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


class MCGANGenerator(nn.Module):
    """``G(z, y)``: (B, latent_dim) noise and (B,) int labels → (B, 1, S, S) images in [−1, 1]."""

    def __init__(self, settings: MCGANSettings = MCGANSettings()):
        super().__init__()
        self.settings = settings
        self.embed = nn.Embedding(settings.num_classes, settings.embed_dim)
        self.label_fc = nn.Linear(settings.embed_dim, settings.label_features)
        self.label_act = nn.LeakyReLU(_LEAKY, inplace=False)
        ch = generator_channels(settings)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(ch[:-1], ch[1:])):
            last = i == len(ch) - 2
            stride, pad = (1, 0) if i == 0 else (2, 1)
            # no bias before a normalisation: the normalisation removes it
            layers.append(nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=last))
            layers += [nn.Tanh()] if last else [_norm(cout, settings.groups), nn.ReLU(inplace=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if z.dim() != 2 or z.shape[1] != s.latent_dim:
            raise ValueError(f"z must have shape (B, {s.latent_dim}), got {tuple(z.shape)}")
        lab = self.label_act(self.label_fc(self.embed(y.long())))
        h = torch.cat([z, lab], dim=1)[:, :, None, None]
        return self.net(h)


class MCGANDiscriminator(nn.Module):
    """``D(x, y)``: (B, 1, S, S) images in [−1, 1] and (B,) int labels → (B,) logits."""

    def __init__(self, settings: MCGANSettings = MCGANSettings()):
        super().__init__()
        self.settings = settings
        s = settings.image_size
        # one-hot @ W == Embedding(num_classes, embed_dim); see the module docstring
        self.embed = nn.Linear(settings.num_classes, settings.embed_dim, bias=False)
        self.label_fc = nn.Linear(settings.embed_dim, s * s)
        ch = discriminator_channels(settings)
        layers: list[nn.Module] = []
        n = len(ch) - 1
        for i, (cin, cout) in enumerate(zip(ch[:-1], ch[1:])):
            normed = 0 < i < n - 1
            layers.append(nn.Conv2d(cin, cout, 6, 2, 2, bias=not normed))
            if normed:
                layers.append(_norm(cout, settings.groups))
            if i < n - 1:
                layers.append(nn.LeakyReLU(_LEAKY, inplace=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.settings.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, s, s):
            raise ValueError(f"D expects images of shape (B, 1, {s}, {s}), got {tuple(x.shape)}")
        onehot = F.one_hot(y.long(), self.settings.num_classes).to(x.dtype)
        lab = self.label_fc(self.embed(onehot)).view(-1, 1, s, s)
        logits = self.net(torch.cat([x, lab], dim=1))
        return logits.mean(dim=(1, 2, 3))


def build_mcgan(settings: MCGANSettings | Mapping[str, Any] = MCGANSettings()
                ) -> tuple[MCGANGenerator, MCGANDiscriminator]:
    """Generator and discriminator for ``settings`` (a :class:`MCGANSettings` or a mapping)."""
    if not isinstance(settings, MCGANSettings):
        settings = MCGANSettings.from_mapping(settings)
    return MCGANGenerator(settings), MCGANDiscriminator(settings)


def expected_parameters(settings: MCGANSettings = MCGANSettings()) -> dict[str, int]:
    """Parameter counts of G and D by the formula of the module docstring."""
    s = settings
    gch = generator_channels(s)
    g = s.num_classes * s.embed_dim + (s.embed_dim + 1) * s.label_features
    g += sum(a * b * 16 for a, b in zip(gch[:-1], gch[1:])) + 1
    g += sum(2 * c for c in gch[1:-1])
    dch = discriminator_channels(s)
    area = s.image_size ** 2
    d = s.num_classes * s.embed_dim + (s.embed_dim + 1) * area
    d += sum(a * b * 36 for a, b in zip(dch[:-1], dch[1:])) + dch[1] + 1
    d += sum(2 * c for c in dch[2:-1])
    return {"generator": g, "discriminator": d}
