"""Study C at one (ε, seed): every method over the same sites, in one process.

Methods (names used in every output):

* ``fed_cvae`` — DP-CVAE per client through the engine, FedAvg of the decoders, per-site
  synthetic global data, λ-interpolated linear classifier (the paper's method);
* ``fed_cvae_synthetic`` — the classifier on the global synthetic data alone (λ = 0);
* ``fed_cgan`` — the DP-CGAN baseline (discriminator private through the engine, generator
  updated outside the mechanism and averaged), same downstream;
* ``local`` — each site's classifier on its own real data only (non-private, at every ε: the
  site keeps it);
* ``fedavg`` / ``fedprox`` — federated linear classifiers (μ = 0.05): non-private at ε = ∞ (as
  in the paper) and DP-SGD per client at the same finite ε as the generators.

At ε = ∞ the generators train without noise through the same engine loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from dpmed.errors import ConfigError
from dpmed.federated.downstream import (FEDPROX_MU, LinearClassifier, federated_linear, site_downstream,
                                        site_metrics)
from dpmed.federated.fidelity import sinkhorn_w2
from dpmed.federated.private import ClientDP, client_guarantee, engine_trainer, linear_loss
from dpmed.federated.rounds import ClientState, aggregation_weights, run_in_process, shared_weights
from dpmed.federated.synthetic import LabelDistribution, synthesize
from dpmed.models.cvae import (CGANDiscriminator, CGANGenerator, discriminator_per_sample_loss,
                               generator_per_sample_loss, initial_cvae, label_condition)
from dpmed.privacy.guarantee import Guarantee

METHODS = ("fed_cvae", "fed_cgan", "fedavg", "fedprox", "local")
SiteData = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class FederatedSettings:
    """The federation's settings (``federated:`` block of the config, typed once)."""

    rounds: int
    local_epochs: int
    batch_size: int
    lr: float
    max_grad_norm: float
    delta: float
    accountant: str = "prv"
    grad_sample_mode: str = "bk"
    n_synthetic: int = 1000
    classifier_epochs: int = 100
    classifier_lr: float = 1e-3
    classifier_batch_size: int = 64
    gan_lr: float = 2e-4
    aggregation: str = "uniform"
    methods: tuple[str, ...] = METHODS

    @classmethod
    def from_config(cls, cfg: dict) -> "FederatedSettings":
        names = {f.name for f in fields(cls)}
        out = cls(**{k: (tuple(v) if k == "methods" else v) for k, v in cfg.items() if k in names})
        unknown = [m for m in out.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"federated.methods: unknown {unknown}; known: {list(METHODS)}")
        return out

    def client_dp(self, epsilon: float, lr: float | None = None) -> ClientDP:
        return ClientDP(rounds=self.rounds, local_epochs=self.local_epochs, batch_size=self.batch_size,
                        epsilon=epsilon, delta=self.delta if math.isfinite(epsilon) else None,
                        max_grad_norm=self.max_grad_norm, lr=self.lr if lr is None else lr,
                        accountant=self.accountant, grad_sample_mode=self.grad_sample_mode)


@dataclass
class StudyResult:
    per_site: pd.DataFrame               # method, site, metric columns, lambda, w2
    predictions: dict[str, dict[str, dict[str, np.ndarray]]]  # method -> site -> split -> scores
    guarantees: dict[str, list[Guarantee]]                   # DP method -> one guarantee per client


def _conditions(y: np.ndarray, kind: str, n_classes: int) -> torch.Tensor:
    return label_condition(torch.as_tensor(y), n_classes, kind)


def _run(states, init, settings: FederatedSettings, trainers, weights) -> None:
    def trainer(state, epochs, gen, start):
        trainers[states.index(state)](state, epochs, gen, start)
    run_in_process(states, init, rounds=settings.rounds, local_epochs=settings.local_epochs,
                   trainer=trainer, weights=weights)


def federate_cvae(sites: dict[str, SiteData], kind: str, n_classes: int, eps: float, seed: int,
                  settings: FederatedSettings, weights) -> list[ClientState]:
    """The DP-CVAE federation: one engine per client, decoders averaged."""
    dim = next(iter(sites.values()))["train"][0].shape[1]
    dp = settings.client_dp(eps)
    states, trainers = [], []
    for i, (name, data) in enumerate(sites.items()):
        m = initial_cvae(dim, n_classes, seed, client_index=i)
        x, y = data["train"]
        states.append(ClientState(name, m, m.decoder, torch.from_numpy(x), _conditions(y, kind, n_classes)))
        trainers.append(engine_trainer(dp, seed=seed, client_index=i))
    _run(states, shared_weights(initial_cvae(dim, n_classes, seed).decoder), settings, trainers, weights)
    return states


class _CGAN(nn.Module):
    """A client's DP-CGAN: the discriminator is what the engine privatises; ``sample`` decodes."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.generator, self.discriminator = CGANGenerator(dim, n_classes), CGANDiscriminator(dim, n_classes)

    def sample(self, c, generator=None):
        return self.generator.sample(c, generator)


def _cgan_trainer(dp: ClientDP, seed: int, index: int, labels: LabelDistribution, gan_lr: float):
    """Engine-backed discriminator steps; after each, one generator step outside the mechanism
    (post-processing of the private discriminator) on labels from the public distribution."""
    from dpmed.training.engine import PrivateTrainer
    from dpmed.federated.private import client_seed, _fingerprint

    def train(state: ClientState, epochs: int, gen: torch.Generator, start) -> None:
        model: _CGAN = state.model
        eng = state.trainer_state.get("_engine")
        if eng is None:
            opt = torch.optim.Adam(model.discriminator.parameters(), lr=gan_lr, betas=(0.5, 0.999))
            eng = PrivateTrainer(dp.engine_settings(), model.discriminator, opt,
                                 torch.utils.data.TensorDataset(state.x, state.c), seed=client_seed(seed, index),
                                 fingerprint=_fingerprint(dp, state, seed))
            state.trainer_state["_engine"] = eng
            state.trainer_state["_gopt"] = torch.optim.Adam(model.generator.parameters(), lr=gan_lr, betas=(0.5, 0.999))
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))

        def fakes(b: int) -> tuple[torch.Tensor, torch.Tensor]:
            c = label_condition(torch.as_tensor(labels.sample(b, rng)), labels.n_classes, labels.kind)
            return model.generator(torch.randn((b, model.generator.noise_dim), generator=gen), c), c

        def d_loss(disc, batch):
            fake, fc = fakes(len(batch[0]))
            return discriminator_per_sample_loss(disc, batch[0], batch[1], fake.detach(), fc)

        def g_step(engine) -> None:
            gopt = state.trainer_state["_gopt"]
            fake, fc = fakes(dp.batch_size)
            with engine.outside_mechanism() as disc:
                loss = generator_per_sample_loss(disc, fake, fc).mean()
                gopt.zero_grad()
                loss.backward()
            gopt.step()
        eng.run_epochs(int(epochs), d_loss, after_step=g_step)
    return train


def federate_cgan(sites, kind, n_classes, eps, seed, settings: FederatedSettings, labels, weights):
    dim = next(iter(sites.values()))["train"][0].shape[1]
    dp = settings.client_dp(eps, lr=settings.gan_lr)
    states, trainers = [], []
    for i, (name, data) in enumerate(sites.items()):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + 1 + i)
            m = _CGAN(dim, n_classes)
        x, y = data["train"]
        states.append(ClientState(name, m, m.generator, torch.from_numpy(x), _conditions(y, kind, n_classes)))
        trainers.append(_cgan_trainer(dp, seed, i, labels, settings.gan_lr))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        init = CGANGenerator(dim, n_classes)
    _run(states, shared_weights(init), settings, trainers, weights)
    return states


def federate_linear_dp(sites, kind, n_classes, eps, seed, settings: FederatedSettings, prox_mu: float, weights):
    """FedAvg/FedProx linear classifiers with DP-SGD per client at ε (same engine, same accounting)."""
    dim = next(iter(sites.values()))["train"][0].shape[1]
    dp = settings.client_dp(eps, lr=settings.classifier_lr)
    states, trainers = [], []
    for i, (name, data) in enumerate(sites.items()):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            m = LinearClassifier(dim, n_classes, kind)
        x, y = data["train"]
        t = torch.as_tensor(y, dtype=torch.long if kind == "multiclass" else torch.float32)
        states.append(ClientState(name, m, m, torch.from_numpy(x), t))
        trainers.append(engine_trainer(dp, seed=seed, client_index=i, loss=linear_loss, prox_mu=prox_mu))
    init = shared_weights(states[0].model)
    _run(states, init, settings, trainers, weights)
    return states


def _synthetic_downstream(states, sites, kind, class_names, labels, settings, seed, method, rows, preds):
    """Per site: decode the global synthetic set, λ-interpolated classifier, W₂ to the real data."""
    for i, s in enumerate(states):
        real = sites[s.site]
        syn = synthesize(s.model, labels, settings.n_synthetic, torch.Generator().manual_seed(seed * 1000 + i))
        out = site_downstream(real, syn, kind, class_names, seed=seed, epochs=settings.classifier_epochs,
                              lr=settings.classifier_lr, batch_size=settings.classifier_batch_size)
        w2 = sinkhorn_w2(real["train"][0], syn[0])
        rows.append({"method": method, "site": s.site, "lambda": out["lambda"], "w2": w2,
                     **out["metrics"]["interpolated"]})
        rows.append({"method": f"{method}_synthetic", "site": s.site, "lambda": 0.0, "w2": w2,
                     **out["metrics"]["synthetic"]})
        preds.setdefault(method, {})[s.site] = out["predictions"]["interpolated"]
        if method == "fed_cvae" or "local" not in preds:
            if "local" in settings.methods and s.site not in preds.get("local", {}):
                rows.append({"method": "local", "site": s.site, "lambda": 1.0, **out["metrics"]["local"]})
                preds.setdefault("local", {})[s.site] = out["predictions"]["local"]


def _linear_rows(models, sites, kind, class_names, method, rows, preds):
    for name, model in models:
        real = sites[name]
        p = {s: model.predict_proba(real[s][0]) for s in ("val", "test")}
        rows.append({"method": method, "site": name, **site_metrics(p["test"], real["test"][1], kind, class_names)})
        preds.setdefault(method, {})[name] = p


def run_study(sites: dict[str, SiteData], kind: str, class_names: Sequence[str], eps: float, seed: int,
              settings: FederatedSettings, labels: LabelDistribution) -> StudyResult:
    """Every configured method at one (ε, seed) over the same sites.

    Parameters
    ----------
    sites: ``{site pseudonym: {split: (scaled x, y)}}`` (checked by :func:`~.sites.check_site`).
    kind, class_names: the task.
    eps: the per-client target ε (``inf``: the generators and baselines without DP).
    settings: the federation; labels: the public synthetic-label distribution.

    Returns
    -------
    Per-site metrics (+ λ, W₂), per-site val/test scores per method, and each DP method's
    per-client guarantees.
    """
    weights, _ = aggregation_weights(len(sites), settings.aggregation,
                                     [len(d["train"][0]) for d in sites.values()])
    n_classes = len(class_names)
    rows: list[dict] = []
    preds: dict = {}
    guarantees: dict[str, list[Guarantee]] = {}
    released = {"fed_cvae": "the site's CVAE decoder updates (every round)",
                "fed_cgan": "the site's CGAN discriminator (every round) and generator updates"}
    for method, federate in (("fed_cvae", federate_cvae), ("fed_cgan", federate_cgan)):
        if method not in settings.methods:
            continue
        extra = (labels, weights) if method == "fed_cgan" else (weights,)
        states = federate(sites, kind, n_classes, eps, seed, settings, *extra)
        guarantees[method] = [client_guarantee(s, released=released[method]) for s in states]
        _synthetic_downstream(states, sites, kind, class_names, labels, settings, seed, method, rows, preds)
    for method, mu in (("fedavg", 0.0), ("fedprox", FEDPROX_MU)):
        if method not in settings.methods:
            continue
        if math.isfinite(eps):
            states = federate_linear_dp(sites, kind, n_classes, eps, seed, settings, mu, weights)
            guarantees[method] = [client_guarantee(s, released="the site's linear-classifier updates (every round)")
                                  for s in states]
            models = [(s.site, s.model) for s in states]
        else:
            model = federated_linear([d["train"] for d in sites.values()], kind, n_classes, rounds=settings.rounds,
                                     local_epochs=settings.local_epochs, seed=seed, prox_mu=mu, weights=weights,
                                     lr=settings.classifier_lr, batch_size=settings.classifier_batch_size)
            models = [(name, model) for name in sites]
        _linear_rows(models, sites, kind, class_names, method, rows, preds)
    return StudyResult(pd.DataFrame(rows), preds, guarantees)
