"""Conditional VAE and DP-CGAN on embeddings (study C: federated data sharing).

Both work on feature vectors scaled into [0, 1] (:mod:`dpmed.federated.scaling`) and are
conditioned on the label vector of a record: one-hot for a multi-class task, multi-hot for a
multi-label task (:func:`label_condition`).

The losses are *per sample* (shape ``(B,)``) and the loss of record ``i`` depends on record
``i`` only (no batch statistics), so a DP-SGD engine can clip each record's gradient.
Layers are Linear/ReLU/LeakyReLU/Sigmoid only (no in-place activations), which Opacus' hooks
support.
"""

from __future__ import annotations

import torch
from torch import nn

#: Dimensions of methods.md C.
LATENT_DIM = 100
HIDDEN = 256
BETA = 0.1


def label_condition(y: torch.Tensor, n_classes: int, kind: str) -> torch.Tensor:
    """The condition vector of each record.

    Parameters
    ----------
    y: ``(B,)`` integer class indices (``kind="multiclass"``) or ``(B, C)`` 0/1 labels
        (``kind="multilabel"``).
    n_classes: C, the length of the condition vector.
    kind: ``"multiclass"`` (one-hot) or ``"multilabel"`` (multi-hot, the labels themselves).

    Returns
    -------
    ``(B, C)`` float tensor.

    Raises
    ------
    ValueError: unknown kind, or labels that do not fit ``n_classes``.
    """
    if kind == "multiclass":
        y = torch.as_tensor(y).long()
        if y.ndim != 1 or (len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes)):
            raise ValueError(f"multi-class labels must be a (B,) vector in 0..{n_classes - 1}")
        return nn.functional.one_hot(y, n_classes).float()
    if kind == "multilabel":
        y = torch.as_tensor(y).float()
        if y.ndim != 2 or y.shape[1] != n_classes:
            raise ValueError(f"multi-label labels must be (B, {n_classes}), got {tuple(y.shape)}")
        return y
    raise ValueError(f"label kind must be 'multiclass' or 'multilabel', got {kind!r}")


def _mlp(sizes: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return layers


class CVAEEncoder(nn.Module):
    """(x, c) → (μ, log σ²): Linear(D+C→256)–ReLU–256–ReLU–256–ReLU, two linear heads."""

    def __init__(self, feature_dim: int, n_classes: int, latent_dim: int = LATENT_DIM,
                 hidden: int = HIDDEN):
        super().__init__()
        self.body = nn.Sequential(*_mlp([feature_dim + n_classes, hidden, hidden, hidden]))
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(torch.cat([x, c], dim=1))
        return self.mu(h), self.logvar(h)


class CVAEDecoder(nn.Module):
    """(z, c) → x̂ ∈ [0, 1]^D: Linear(100+C→256)–ReLU–256–ReLU–256–ReLU–Linear(256→D)–Sigmoid."""

    def __init__(self, feature_dim: int, n_classes: int, latent_dim: int = LATENT_DIM,
                 hidden: int = HIDDEN):
        super().__init__()
        self.net = nn.Sequential(*_mlp([latent_dim + n_classes, hidden, hidden, hidden]),
                                 nn.Linear(hidden, feature_dim), nn.Sigmoid())

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, c], dim=1))


class CVAE(nn.Module):
    """Conditional VAE of methods.md C; ``decoder`` is the part FedAvg shares.

    Parameters
    ----------
    feature_dim: D, length of an embedding.
    n_classes: C, length of the condition vector.
    latent_dim, hidden: 100 and 256 in the paper.
    beta: weight of the KL term (0.1).
    """

    def __init__(self, feature_dim: int, n_classes: int, latent_dim: int = LATENT_DIM,
                 hidden: int = HIDDEN, beta: float = BETA):
        super().__init__()
        self.feature_dim, self.n_classes, self.latent_dim = feature_dim, n_classes, latent_dim
        self.beta = float(beta)
        self.encoder = CVAEEncoder(feature_dim, n_classes, latent_dim, hidden)
        self.decoder = CVAEDecoder(feature_dim, n_classes, latent_dim, hidden)

    def forward(self, x: torch.Tensor, c: torch.Tensor, generator: torch.Generator | None = None,
                eps: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Reconstruction, μ and log σ² (reparameterised z = μ + σ·ε, ε from ``generator``
        unless given)."""
        mu, logvar = self.encoder(x, c)
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decoder(z, c), mu, logvar

    def per_sample_loss(self, x: torch.Tensor, c: torch.Tensor, generator: torch.Generator | None = None,
                        eps: torch.Tensor | None = None) -> torch.Tensor:
        """MSE + β·KL per record, shape ``(B,)``.

        The MSE is summed over the D features and the KL divergence to N(0, I) over the latent
        dimensions (the negative ELBO of a Gaussian decoder up to constants); a per-feature mean
        would let β·KL, summed over 100 latent dimensions, swamp the reconstruction term.
        """
        recon, mu, logvar = self(x, c, generator, eps)
        mse = ((recon - x) ** 2).sum(dim=1)
        kl = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
        return mse + self.beta * kl

    @torch.no_grad()
    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode z ~ N(0, I) under the conditions ``c`` (one row per synthetic record)."""
        z = torch.randn((c.shape[0], self.latent_dim), generator=generator, dtype=c.dtype,
                        device=c.device)
        return self.decoder(z, c)


def initial_cvae(feature_dim: int, n_classes: int, seed: int, client_index: int | None = None) -> CVAE:
    """A CVAE initialised from the config seed: the server's (``client_index=None``) or a client's.

    The in-process run and the Flower apps build their models with this function, so the same
    seed gives the same initial weights everywhere.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) if client_index is None else int(seed) * 1000 + 1 + int(client_index))
        return CVAE(int(feature_dim), int(n_classes))


class CGANGenerator(nn.Module):
    """DP-CGAN generator: Linear(100+C→512)–LReLU–Linear(512→1024)–LReLU–Linear(1024→D)–Sigmoid.

    The Sigmoid keeps samples in the [0, 1] range the features are scaled to (the paper gives
    the widths only).
    """

    def __init__(self, feature_dim: int, n_classes: int, noise_dim: int = LATENT_DIM):
        super().__init__()
        self.noise_dim = noise_dim
        self.net = nn.Sequential(
            nn.Linear(noise_dim + n_classes, 512), nn.LeakyReLU(0.2),
            nn.Linear(512, 1024), nn.LeakyReLU(0.2),
            nn.Linear(1024, feature_dim), nn.Sigmoid())

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, c], dim=1))

    @torch.no_grad()
    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn((c.shape[0], self.noise_dim), generator=generator, dtype=c.dtype)
        return self(z, c)


class CGANDiscriminator(nn.Module):
    """DP-CGAN discriminator (the privatised network): Linear(D+C→1024)–LReLU–512–LReLU–1 logit."""

    def __init__(self, feature_dim: int, n_classes: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feature_dim + n_classes, 1024), nn.LeakyReLU(0.2),
            nn.Linear(1024, 512), nn.LeakyReLU(0.2),
            nn.Linear(512, 1))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, c], dim=1)).squeeze(1)


def discriminator_per_sample_loss(disc: nn.Module, real: torch.Tensor, real_c: torch.Tensor,
                                  fake: torch.Tensor, fake_c: torch.Tensor) -> torch.Tensor:
    """BCE(D(real_i), 1) + BCE(D(fake_i), 0) per pair i, shape ``(B,)``.

    Record i's loss pairs its real embedding with the i-th fake, so clipping the gradient of
    loss_i bounds record i's whole influence on the step. ``fake_c`` must come from a public or
    DP label distribution (never the batch's own labels: the generator, which is not
    privatised, would then be trained on private labels).
    """
    if fake.shape[0] != real.shape[0]:
        raise ValueError(f"one fake per real record is needed, got {fake.shape[0]} fakes "
                         f"for {real.shape[0]} records")
    bce = nn.functional.binary_cross_entropy_with_logits
    r = disc(real, real_c)
    f = disc(fake, fake_c)
    return bce(r, torch.ones_like(r), reduction="none") + bce(f, torch.zeros_like(f), reduction="none")


def generator_per_sample_loss(disc: nn.Module, fake: torch.Tensor, fake_c: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss BCE(D(fake_i), 1), shape ``(B,)`` (post-processing of D)."""
    f = disc(fake, fake_c)
    return nn.functional.binary_cross_entropy_with_logits(f, torch.ones_like(f), reduction="none")
