"""Conditional invertible network (cINN) for content-aware DP (methods.md D), built with FrEIA 0.2.

Architecture (sizes from :class:`INNSettings`; the paper's are :data:`PAPER_INN`)::

    x (C×H×W, values in [0, 1])
    └─ stage k = 1..stages:
         IRevNetDownsampling                 C·4^(k-1) × H/2^(k-1) → C·4^k × H/2^k (a pixel shuffle)
         blocks_per_stage × [ GLOWCouplingBlock(conv subnet, clamp)  conditioned on c_k
                              PermuteRandom (channel permutation, seeded from settings.seed) ]
    └─ Flatten
    └─ fc_blocks × [ GLOWCouplingBlock(fully connected subnet) conditioned on c ; PermuteRandom ]
    → z (D = C·H·W values)

The condition ``c`` is the label as a vector of ``n_conditions`` values (see
:func:`label_condition`); ``c_k`` is that vector broadcast to the spatial size of stage k
(``n_conditions × H/2^k × W/2^k``), since FrEIA concatenates conditions to the coupling's
passive half along the channel axis.

Subnets: conv = 3×3 conv (c_in → width), ReLU, 3×3 conv (width → width), ReLU, 3×3 conv
(width → c_out); fully connected = the same with Linear layers. The last layer of every subnet
is zero-initialised, so a fresh network is a pure pixel rearrangement (log|det J| = 0). With
the paper's sizes and a binary label (n_conditions = 2) this gives 219,382,432 trainable
parameters (209.9 M of them in the fully connected blocks), the ≈ 219.4 M of the paper's setup.

FrEIA pitfalls handled here: ``PermuteRandom(seed=k)`` reseeds NumPy's *global* RNG, so the
permutations are drawn from a local generator instead (:class:`SeededPermutation`) and the global
state is left as it was; the permutation indices and IRevNet's kernel are registered as
``nn.Parameter(requires_grad=False)``, so optimisers must take :func:`trainable_parameters`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial
from typing import Mapping

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import torch
from torch import nn

from dpmed.errors import ConfigError, DpmedError
from dpmed.settings import settings_from_mapping

__all__ = [
    "DEMO_INN",
    "PAPER_INN",
    "ConditionalINN",
    "INNSettings",
    "InvertibilityError",
    "SeededPermutation",
    "bits_per_dim",
    "bits_per_dim_per_sample",
    "build_inn",
    "check_invertible",
    "expected_num_parameters",
    "label_condition",
    "reconstruction_error",
    "trainable_parameters",
]


class InvertibilityError(DpmedError):
    """f⁻¹(f(x)) does not return x within the tolerance: the network cannot be used as a bijection."""


@dataclass(frozen=True)
class INNSettings:
    """Sizes of the conditional INN.

    Attributes
    ----------
    image_size: H = W of the (square) input; divisible by 2**stages.
    channels: input channels (1 for grey images).
    n_conditions: length of the condition vector (2 per binary label, see :func:`label_condition`).
    stages: number of downsampling stages (each halves H and W, multiplies channels by 4).
    blocks_per_stage: GLOW coupling + permutation pairs per stage.
    conv_width: channels of the hidden 3×3 conv layers of each conv subnet.
    fc_blocks: fully connected GLOW blocks after flattening (0: none).
    fc_width: hidden units of each fully connected subnet.
    clamp: soft clamp of the coupling's log-scale (|s| < clamp).
    seed: seeds the initial weights and the fixed random permutations (not privacy randomness).
    """

    image_size: int = 128
    channels: int = 1
    n_conditions: int = 2
    stages: int = 4
    blocks_per_stage: int = 4
    conv_width: int = 128
    fc_blocks: int = 4
    fc_width: int = 1024
    clamp: float = 1.5
    seed: int = 0

    def __post_init__(self):
        for name in ("image_size", "channels", "n_conditions", "stages", "blocks_per_stage", "conv_width", "fc_width"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"INN setting {name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.fc_blocks) < 0:
            raise ConfigError(f"INN setting fc_blocks must be >= 0, got {self.fc_blocks!r}")
        if self.image_size % (2 ** self.stages):
            raise ConfigError(
                f"INN image_size {self.image_size} is not divisible by 2**stages = {2 ** self.stages}"
            )
        if not (self.clamp > 0):
            raise ConfigError(f"INN clamp must be > 0, got {self.clamp!r}")

    @property
    def latent_dims(self) -> int:
        """D: number of latent dimensions (= input values C·H·W)."""
        return self.channels * self.image_size ** 2

    def stage_shape(self, stage: int) -> tuple[int, int, int]:
        """(channels, H, W) inside stage ``stage`` (1-based), after its downsampling."""
        side = self.image_size // 2 ** stage
        return (self.channels * 4 ** stage, side, side)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> "INNSettings":
        return settings_from_mapping(cls, mapping, "INN")


#: The paper's network (methods.md D): 128², 4 stages × 4 blocks, width 128, 4 FC blocks of width 1024.
PAPER_INN = INNSettings()
#: A small network for the 64² demo CXR cohort (8 labels → 16 condition values), trainable on CPU.
DEMO_INN = INNSettings(image_size=64, n_conditions=16, stages=3, blocks_per_stage=2, conv_width=32,
                       fc_blocks=2, fc_width=256)


class SeededPermutation(Fm.PermuteRandom):
    """FrEIA's channel permutation, drawn from a local generator seeded with ``seed``.

    ``PermuteRandom(seed=k)`` would call ``np.random.seed(k)``; here the parent draws from the
    global NumPy RNG (whose state is saved and restored) and its draw is then replaced.
    """

    def __init__(self, dims_in, dims_c=None, seed: int = 0):
        state = np.random.get_state()
        try:
            super().__init__(dims_in, dims_c, seed=None)
        finally:
            np.random.set_state(state)
        perm = np.random.default_rng(int(seed)).permutation(self.in_channels)
        self.perm = nn.Parameter(torch.as_tensor(perm, dtype=torch.long), requires_grad=False)
        self.perm_inv = nn.Parameter(torch.as_tensor(np.argsort(perm), dtype=torch.long), requires_grad=False)


def _zero_last(net: nn.Sequential) -> nn.Sequential:
    # A zero last layer makes every coupling start as the identity (s = t = 0): stable training.
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def conv_subnet(c_in: int, c_out: int, *, width: int) -> nn.Sequential:
    """Three 3×3 convs (c_in → width → width → c_out) with ReLU, last layer zero."""
    return _zero_last(nn.Sequential(
        nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, c_out, 3, padding=1),
    ))


def fc_subnet(c_in: int, c_out: int, *, width: int) -> nn.Sequential:
    """Three linear layers (c_in → width → width → c_out) with ReLU, last layer zero."""
    return _zero_last(nn.Sequential(
        nn.Linear(c_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, c_out),
    ))


def _permutation_seeds(seed: int, n: int) -> list[int]:
    return [int(s) for s in np.random.SeedSequence([int(seed), 0x1A7]).generate_state(max(n, 1))][:n]


def _graph_nodes(s: INNSettings) -> list:
    """The FrEIA node list (inputs, conditions, blocks, output) of the network ``s``."""
    n_perms = s.stages * s.blocks_per_stage + s.fc_blocks
    perm_seeds = iter(_permutation_seeds(s.seed, n_perms))
    inp = Ff.InputNode(s.channels, s.image_size, s.image_size, name="x")
    conds = [Ff.ConditionNode(s.n_conditions, *s.stage_shape(k)[1:], name=f"c{k}")
             for k in range(1, s.stages + 1)]
    nodes, last = [inp], inp
    for k, cond in enumerate(conds, start=1):
        last = Ff.Node(last, Fm.IRevNetDownsampling, {}, name=f"down{k}")
        nodes.append(last)
        for b in range(s.blocks_per_stage):
            last = Ff.Node(last, Fm.GLOWCouplingBlock,
                           {"subnet_constructor": partial(conv_subnet, width=s.conv_width), "clamp": s.clamp},
                           conditions=cond, name=f"glow{k}.{b}")
            nodes.append(last)
            last = Ff.Node(last, SeededPermutation, {"seed": next(perm_seeds)}, name=f"perm{k}.{b}")
            nodes.append(last)
    last = Ff.Node(last, Fm.Flatten, {}, name="flatten")
    nodes.append(last)
    if s.fc_blocks:
        fc_cond = Ff.ConditionNode(s.n_conditions, name="c_fc")
        conds.append(fc_cond)
        for b in range(s.fc_blocks):
            last = Ff.Node(last, Fm.GLOWCouplingBlock,
                           {"subnet_constructor": partial(fc_subnet, width=s.fc_width), "clamp": s.clamp},
                           conditions=fc_cond, name=f"fc{b}")
            nodes.append(last)
            last = Ff.Node(last, SeededPermutation, {"seed": next(perm_seeds)}, name=f"fcperm{b}")
            nodes.append(last)
    nodes.append(Ff.OutputNode(last, name="z"))
    return nodes + conds


class ConditionalINN(nn.Module):
    """The cINN f: (x, c) ↦ z with its inverse; a thin wrapper around FrEIA's ``GraphINN``.

    ``forward(x, cond)`` → ``(z, log|det J|)`` with ``z`` of shape (B, D);
    ``inverse(z, cond)`` → ``x`` of shape (B, C, H, W). ``cond`` is the (B, n_conditions) label
    vector; its per-stage broadcasts are built here (:meth:`conditions`).
    """

    def __init__(self, settings: INNSettings):
        super().__init__()
        self.settings = settings
        self.graph = Ff.GraphINN(_graph_nodes(settings))

    @property
    def latent_dims(self) -> int:
        return self.settings.latent_dims

    def conditions(self, cond: torch.Tensor) -> list[torch.Tensor]:
        """The condition vector broadcast to every stage (n_conditions × H_k × W_k), then flat for FC."""
        s = self.settings
        if cond.ndim != 2 or cond.shape[1] != s.n_conditions:
            raise ConfigError(f"condition must have shape (batch, {s.n_conditions}), got {tuple(cond.shape)}")
        cond = cond.to(dtype=torch.float32)
        out = []
        for k in range(1, s.stages + 1):
            side = s.stage_shape(k)[1]
            out.append(cond[:, :, None, None].expand(-1, -1, side, side))
        if s.fc_blocks:
            out.append(cond)
        return out

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.settings
        expected = (s.channels, s.image_size, s.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ConfigError(f"INN input must have shape (batch, {expected}), got {tuple(x.shape)}")
        z, log_jac_det = self.graph(x, c=self.conditions(cond), jac=True)
        return z, log_jac_det

    def inverse(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dims:
            raise ConfigError(f"latent must have shape (batch, {self.latent_dims}), got {tuple(z.shape)}")
        x, _ = self.graph(z, c=self.conditions(cond), rev=True, jac=False)
        return x


def build_inn(settings: INNSettings) -> ConditionalINN:
    """Build the network, its initial weights drawn from ``settings.seed`` (global RNGs untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(settings.seed))
        return ConditionalINN(settings)


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    """Parameters an optimiser may update (FrEIA's permutation/kernel buffers excluded)."""
    return [p for p in net.parameters() if p.requires_grad]


def expected_num_parameters(s: INNSettings) -> int:
    """Trainable parameters of :func:`build_inn` ``(s)``, counted from the architecture alone."""
    def conv(ci, co):
        return 9 * ci * co + co

    def lin(ci, co):
        return ci * co + co

    total = 0
    for k in range(1, s.stages + 1):
        ch = s.stage_shape(k)[0]
        h1, h2 = ch // 2, ch - ch // 2
        for c_in, c_out in ((h1 + s.n_conditions, 2 * h2), (h2 + s.n_conditions, 2 * h1)):
            total += s.blocks_per_stage * (conv(c_in, s.conv_width) + conv(s.conv_width, s.conv_width)
                                           + conv(s.conv_width, c_out))
    d = s.latent_dims
    h1, h2 = d // 2, d - d // 2
    for c_in, c_out in ((h1 + s.n_conditions, 2 * h2), (h2 + s.n_conditions, 2 * h1)):
        total += s.fc_blocks * (lin(c_in, s.fc_width) + lin(s.fc_width, s.fc_width) + lin(s.fc_width, c_out))
    return total


def label_condition(targets: torch.Tensor) -> torch.Tensor:
    """The condition vector of 0/1 labels: a one-hot pair ``[1 − y, y]`` per label.

    Parameters
    ----------
    targets: (B, L) tensor of 0/1 labels (a binary task has L = 1).

    Returns
    -------
    float32 (B, 2L) tensor: for one binary label the usual one-hot of the class.

    Raises
    ------
    ConfigError: ``targets`` is not 2-D or holds values other than 0 and 1.
    """
    if targets.ndim != 2:
        raise ConfigError(f"targets must have shape (batch, labels), got {tuple(targets.shape)}")
    y = targets.to(torch.float32)
    if not torch.all((y == 0) | (y == 1)):
        raise ConfigError("labels used as the INN condition must be 0 or 1")
    return torch.stack([1.0 - y, y], dim=2).reshape(y.shape[0], -1)


def bits_per_dim(z: torch.Tensor, log_jac_det: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of x under f and a standard normal latent, in bits per dimension.

    ``bpd = (½‖z‖² + D/2·ln 2π − log|det J|) / (D · ln 2)``, averaged over the batch (D = z's
    values per sample). This is the paper's loss mean(½‖z‖² − log|det J|)/D up to the constant
    ½ln 2π and the factor 1/ln 2, so it is the exact continuous NLL of x in bits.

    Parameters
    ----------
    z: (B, D) latents.
    log_jac_det: (B,) log|det ∂z/∂x|.
    """
    return bits_per_dim_per_sample(z, log_jac_det).mean()


def bits_per_dim_per_sample(z: torch.Tensor, log_jac_det: torch.Tensor) -> torch.Tensor:
    """:func:`bits_per_dim` of each sample, shape (B,) (the training engine's per-sample losses)."""
    d = z[0].numel()
    nll = 0.5 * z.flatten(1).pow(2).sum(dim=1) + 0.5 * d * math.log(2 * math.pi) - log_jac_det
    return nll / (d * math.log(2.0))


@torch.no_grad()
def reconstruction_error(inn: ConditionalINN, x: torch.Tensor, cond: torch.Tensor) -> float:
    """max |f⁻¹(f(x, c), c) − x| over the batch (in the units of x)."""
    z, _ = inn(x, cond)
    return float((inn.inverse(z, cond) - x).abs().max())


def check_invertible(inn: ConditionalINN, x: torch.Tensor, cond: torch.Tensor, tolerance: float,
                     where: str = "held-out batch") -> float:
    """:func:`reconstruction_error`, raising :class:`InvertibilityError` above ``tolerance``.

    Returns the error. Non-finite errors (NaN/inf latents) also raise.
    """
    err = reconstruction_error(inn, x, cond)
    if not (err <= tolerance):
        raise InvertibilityError(
            f"the invertible network does not invert on the {where}: max |f⁻¹(f(x)) − x| = {err:.3g} "
            f"exceeds the tolerance {tolerance:g}"
        )
    return err
