"""The training loop every trainer shares: :class:`PrivateTrainer`.

A task (classifier, GAN discriminator, conditional VAE, federated client) supplies the model,
its optimizer, the training dataset and a *step function*::

    def losses(model, batch) -> Tensor  # shape (B,): one loss per sample of this physical batch

and the engine does everything else: Poisson sampling with the secret generator, physical
batches, per-sample clipping (``bk`` or Opacus), Gaussian noise, the optimizer step, the
noise-only step of an empty batch, accounting with ONE accountant, a checkpoint with every
random state after each epoch, and a progress line per epoch. Non-private training
(``epsilon = inf``) runs through the same loop with shuffled batches and no clipping.

Per logical batch (DP): ``sum_i clip_C(grad_i)`` over the physical batches, plus
``N(0, (sigma C)^2)`` per coordinate, divided by the EXPECTED batch size B = qN, is the
gradient handed to the optimizer; then the accountant records one step at (sigma, q).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from dpmed.errors import ConfigError, PrivacyError
from dpmed.io.atomic import atomic_path
from dpmed.privacy.accounting import DPSGDAccountant
from dpmed.privacy.guarantee import Guarantee, NonPrivateInput, no_guarantee
from dpmed.training.engine.plan import DPPlan, EngineSettings
from dpmed.training.engine.privatise import make_privatiser
from dpmed.training.engine.randomness import SecretSeed, draw_secret_seed, make_generators, rng_state, set_rng_state
from dpmed.training.engine.sampling import (
    PoissonBatches, ShuffledBatches, batch_len, make_loader, split_batch, to_device,
)
from dpmed.training.numerics import compute_precision, numerics_statement

log = logging.getLogger("dpmed.training")

CHECKPOINT_VERSION = 2
StepFn = Callable[[nn.Module, Any], torch.Tensor]


class _Stop(Exception):
    """Raised by a test hook to simulate a killed job."""


def _on_epoch_end(epoch: int, checkpoint: Path | None) -> None:
    """Called after each epoch's checkpoint is written (tests patch it to simulate a kill)."""


class PrivateTrainer:
    """One model's training run; see the module docstring.

    Parameters
    ----------
    settings: :class:`EngineSettings` (``epochs`` = ALL epochs this run will ever train).
    model: the bare model, on ``device``, in training mode, initialised by the task.
    optimizer: over ``model.parameters()``.
    dataset: the private training rows; ``len(dataset)`` is treated as public.
    seed: the config seed (public randomness: shuffle, :attr:`task_generator`).
    device: where the model lives (the noise is drawn there).
    checkpoint: where to keep the resumable state (under the private directory: it holds the
        secret seed); ``None``: no checkpoint. An existing one with the same ``fingerprint`` is
        resumed (:attr:`resumed_from`, :attr:`task_state`), a different one refused.
    fingerprint: everything the run depends on (settings, the data's bytes and labels, ...).

    Raises
    ------
    PrivacyError: the model cannot be privatised (before any calibration or step).
    ConfigError: a checkpoint from a different run.
    """

    def __init__(self, settings: EngineSettings, model: nn.Module, optimizer: torch.optim.Optimizer,
                 dataset: Dataset, *, seed: int, device: torch.device | str = "cpu",
                 checkpoint: str | Path | None = None, fingerprint: str = ""):
        self.settings = settings
        self.raw_model = model
        self.optimizer = optimizer
        self.dataset = dataset
        self.seed = int(seed)
        self.device = torch.device(device)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.fingerprint = fingerprint
        self.privatiser = make_privatiser(model, settings.max_grad_norm, settings.grad_sample_mode) \
            if settings.private else None
        self.model = model if self.privatiser is None else self.privatiser.model
        saved = self._read_checkpoint()
        sigma = None if saved is None else saved["plan"]["noise_multiplier"]
        self.plan = DPPlan.make(settings, len(dataset), noise_multiplier=sigma)
        self.secret = draw_secret_seed(self.seed)
        self.generators = make_generators(self.seed, self.secret, self.device)
        self.accountant = DPSGDAccountant(self.plan.noise_multiplier, self.plan.sample_rate) if self.plan.private else None
        self.epochs_done = 0
        self.history: list[dict] = []
        self.resumed_from: int | None = None
        self.task_state: Any = None
        if saved is not None:
            self.load_state_dict(saved)
        self._warn_weak_delta()

    # ------------------------------------------------------------------ public API
    @property
    def task_generator(self) -> torch.Generator:
        """A generator for the task's own public randomness (augmentation, latent draws),
        seeded from the config seed and checkpointed with the run."""
        return self.generators["task"]

    @property
    def steps_done(self) -> int:
        return self.epochs_done * self.plan.steps_per_epoch

    def epsilon(self) -> float:
        """ε spent so far (accountant over the steps actually run); inf when non-private."""
        if not self.plan.private:
            return math.inf
        return self.accountant.epsilon(float(self.settings.delta), self.settings.accountant)

    def run_epochs(self, n: int, step: StepFn, *, evaluate: Callable[[int], Mapping[str, float]] | None = None,
                   after_step: Callable[["PrivateTrainer"], None] | None = None,
                   task_state: Callable[[], Any] | None = None) -> list[dict]:
        """Train ``n`` more epochs (callable repeatedly; one plan, one accountant).

        ``step(model, batch)`` returns per-sample losses of a physical batch. ``evaluate(epoch)``
        returns metrics for the progress line and history (public data only). ``after_step(self)``
        runs after every optimizer step (e.g. a generator update via :meth:`outside_mechanism`).
        ``task_state()`` is saved with the checkpoint and comes back as :attr:`task_state`.

        Raises :class:`PrivacyError` if the run would exceed the epochs σ was calibrated for.
        """
        if self.epochs_done + int(n) > self.plan.epochs:
            raise PrivacyError(f"{self.epochs_done} + {n} epochs exceed the {self.plan.epochs} planned: the noise "
                               "was calibrated for the planned steps only")
        rows = []
        for _ in range(int(n)):
            t0 = time.perf_counter()
            loss = self._private_epoch(step, after_step) if self.plan.private else self._public_epoch(step, after_step)
            rows.append(self._end_epoch(loss, t0, evaluate, task_state))
        return rows

    @contextlib.contextmanager
    def outside_mechanism(self):
        """Yield the (wrapped) model for a forward/backward that is NOT part of the private
        step, e.g. the generator loss through a DP discriminator (post-processing of its
        released weights). The model's parameters get no gradient and no per-sample state is
        recorded; gradients reach the model's inputs."""
        if self.privatiser is not None:
            with self.privatiser.outside_mechanism() as model:
                yield model
            return
        flags = [(p, p.requires_grad) for p in self.raw_model.parameters()]
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield self.model
        finally:
            for p, f in flags:
                p.requires_grad_(f)

    def guarantee(self, *, released: str, not_guaranteed: Iterable[str] = (),
                  non_private_inputs: Iterable[NonPrivateInput] = ()) -> Guarantee:
        """The guarantee of what this run releases, from the steps actually run."""
        npi = tuple(non_private_inputs)
        extra = tuple(not_guaranteed)
        if not self.plan.private:
            return no_guarantee(self.settings.unit, reason="trained without differential privacy (ε = inf)",
                                released=released, non_private_inputs=npi)
        if not self.secret.holds:
            return no_guarantee(self.settings.unit, reason=self.secret.source, released=released,
                                non_private_inputs=npi)
        return Guarantee(
            kind="central", unit=self.settings.unit, epsilon=self.epsilon(), delta=float(self.settings.delta),
            mechanism="dp-sgd", parameters=self.mechanism_parameters(), released=released,
            not_guaranteed=self._not_guaranteed() + extra, non_private_inputs=npi,
            noise_source=self.secret.source, epsilon_target=float(self.settings.epsilon),
        )

    def mechanism_parameters(self) -> dict:
        """What ε is recomputed from, and what it assumes public."""
        s, p = self.settings, self.plan
        return {
            "noise_multiplier": p.noise_multiplier, "sample_rate": p.sample_rate, "steps": self.accountant.steps,
            "max_grad_norm": float(s.max_grad_norm), "accountant": s.accountant, "batch_size": p.batch_size,
            "n_records": p.n_records, "epochs": self.epochs_done, "steps_per_epoch": p.steps_per_epoch,
            "history": [[a, b, c] for a, b, c in self.accountant.history], "grad_sample_mode": s.grad_sample_mode,
            "numerics": numerics_statement(s.precision),
            "adjacency": f"add/remove one {s.unit}; the training-set size N is public",
            "delta_times_n": float(s.delta) * p.n_records,
        }

    def _not_guaranteed(self) -> tuple[str, ...]:
        s, p = self.settings, self.plan
        out = [f"The training-set size N = {p.n_records} is treated as public (it sets q = B/N, the steps and σ): "
               f"the guarantee is for adding or removing one {s.unit} with N known."]
        if float(s.delta) * p.n_records >= 1:
            out.append(f"WEAK GUARANTEE: δ = {float(s.delta):g} ≥ 1/N (δ·N = {float(s.delta) * p.n_records:.3g}); "
                       "a mechanism that publishes one random record in full satisfies such a δ.")
        return tuple(out)

    def _warn_weak_delta(self) -> None:
        if self.plan.private and float(self.settings.delta) * self.plan.n_records >= 1:
            log.warning("delta %g >= 1/N (N = %d, delta*N = %.3g): a weak guarantee; the card says so",
                        float(self.settings.delta), self.plan.n_records, float(self.settings.delta) * self.plan.n_records)

    # ------------------------------------------------------------------ epochs
    def _private_epoch(self, step: StepFn, after_step) -> float:
        batches = PoissonBatches(self.plan.n_records, self.plan.sample_rate, self.plan.steps_per_epoch,
                                 self.generators["sampler"])
        done = 0
        for batch in make_loader(self.dataset, batches, self.settings.num_workers, self.device):
            self.private_step(batch, step)
            done += 1
            if after_step is not None:
                after_step(self)
        if done != self.plan.steps_per_epoch:
            raise PrivacyError(f"{done} DP steps run in an epoch, {self.plan.steps_per_epoch} planned")
        return math.nan  # the training loss is an un-noised statistic of the records: not released

    def private_step(self, batch: Any, step: StepFn) -> None:
        """One noisy step on a logical Poisson batch (``None``: empty, a noise-only step)."""
        priv = self.privatiser
        priv.reset()
        if batch is not None:
            # forward and backward at the run's precision; the privatiser clips in full float32
            with compute_precision(self.settings.precision, self.device):
                for chunk in split_batch(to_device(batch, self.device), self.settings.physical):
                    priv.begin()
                    priv.clip_accumulate(step(priv.model, chunk))
        std = self.plan.noise_multiplier * priv.max_grad_norm
        for p, s in zip(priv.params, priv.summed):
            noise = torch.normal(0.0, std, p.shape, generator=self.generators["noise"], device=p.device, dtype=p.dtype)
            p.grad = (s + noise) / self.plan.batch_size  # mean over the EXPECTED batch size qN
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.accountant.step()

    def _public_epoch(self, step: StepFn, after_step) -> float:
        batches = ShuffledBatches(self.plan.n_records, self.plan.batch_size, self.generators["shuffle"])
        total, seen = 0.0, 0
        for batch in make_loader(self.dataset, batches, self.settings.num_workers, self.device):
            batch = to_device(batch, self.device)
            n = batch_len(batch)
            self.optimizer.zero_grad(set_to_none=True)
            for chunk in split_batch(batch, self.settings.physical):
                with compute_precision(self.settings.precision, self.device):
                    loss = step(self.model, chunk).float().sum() / n
                    loss.backward()
                total += float(loss.item()) * n
            seen += n
            self.optimizer.step()
            if after_step is not None:
                after_step(self)
        return total / max(seen, 1)

    def _end_epoch(self, loss: float, t0: float, evaluate, task_state) -> dict:
        self.epochs_done += 1
        row = {"epoch": self.epochs_done, "train_loss": loss, "epsilon": self.epsilon(), "steps": self.steps_done}
        if evaluate is not None:
            row.update(evaluate(self.epochs_done))
        row["seconds"] = time.perf_counter() - t0
        self.history.append(row)
        self._log_progress(row)
        if self.checkpoint is not None:
            self.save_checkpoint(None if task_state is None else task_state())
        _on_epoch_end(self.epochs_done, self.checkpoint)
        return row

    def _log_progress(self, row: dict) -> None:
        secs = [r["seconds"] for r in self.history]
        per = sum(secs) / len(secs)
        left = (self.plan.epochs - self.epochs_done) * per
        metrics = " ".join(f"{k} {v:.4f}" for k, v in row.items()
                           if k not in ("epoch", "steps", "epsilon", "seconds", "train_loss"))
        eps = "inf" if math.isinf(row["epsilon"]) else f"{row['epsilon']:.4g}"
        log.info("epoch %d/%d steps %d/%d epsilon %s (target %g) %s %.1f s/epoch eta %s",
                 row["epoch"], self.plan.epochs, row["steps"], self.plan.total_steps, eps,
                 float(self.settings.epsilon), metrics or "-", row["seconds"], _hms(left))

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self, task_state: Any = None) -> dict:
        """Everything a resumed run needs to continue bit for bit (holds the secret seed)."""
        p = self.plan
        return {
            "version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "epochs_done": self.epochs_done,
            "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "accountant": None if self.accountant is None else self.accountant.state_dict(),
            "plan": {"noise_multiplier": p.noise_multiplier, "sample_rate": p.sample_rate, "n_records": p.n_records},
            "secret": {"value": self.secret.value, "holds": self.secret.holds, "source": self.secret.source},
            "rng": rng_state(self.generators), "history": list(self.history), "task": task_state,
        }

    def save_checkpoint(self, task_state: Any = None) -> None:
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.checkpoint) as tmp:
            torch.save(self.state_dict(task_state), tmp)

    def _read_checkpoint(self) -> dict | None:
        if self.checkpoint is None or not self.checkpoint.exists():
            return None
        saved = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        if saved.get("version") != CHECKPOINT_VERSION or saved.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{self.checkpoint} was written by a run with different inputs/settings; "
                              "delete it to start afresh (refusing to mix two runs)")
        return saved

    def load_state_dict(self, saved: dict) -> None:
        """Continue the run ``saved`` (from :meth:`state_dict`): same fingerprint, same plan."""
        if saved.get("version") != CHECKPOINT_VERSION or saved.get("fingerprint") != self.fingerprint:
            raise ConfigError("the saved state was written by a run with different inputs/settings")
        plan = saved["plan"]
        if (plan["n_records"], plan["noise_multiplier"], plan["sample_rate"]) != (
                self.plan.n_records, self.plan.noise_multiplier, self.plan.sample_rate):
            raise ConfigError(f"the saved state was planned for {plan}, this run for {self.plan}")
        self.secret = SecretSeed(**saved["secret"])
        self.raw_model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.accountant is not None:
            self.accountant.load_state_dict(saved["accountant"])
        set_rng_state(saved["rng"], self.generators)
        self.epochs_done = int(saved["epochs_done"])
        self.history = list(saved["history"])
        self.resumed_from = self.epochs_done
        self.task_state = saved.get("task")

    def remove_checkpoint(self) -> None:
        """Delete the checkpoint (and with it the secret seed) once the outputs are written."""
        if self.checkpoint is not None and self.checkpoint.exists():
            self.checkpoint.unlink()


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
