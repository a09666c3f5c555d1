"""Typed engine settings and the DP plan: q, steps, and σ calibrated for exactly the steps run."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dpmed.errors import ConfigError, PrivacyError
from dpmed.privacy.validation import GRAD_SAMPLE_MODES
from dpmed.training.numerics import check_precision


@dataclass(frozen=True)
class EngineSettings:
    """What the engine needs to train one model (typed once, at the edge).

    Attributes
    ----------
    epochs: epochs planned IN TOTAL for this run, over all :meth:`PrivateTrainer.run_epochs`
        calls (a federated client: rounds x local epochs); σ is calibrated for all of them.
    batch_size: expected logical batch B; under DP the Poisson rate is q = B / N.
    epsilon: target ε (``inf``: non-private training through the same loop).
    delta: δ (required for a finite ε).
    max_grad_norm: C, the flat per-sample L2 clipping bound.
    physical_batch_size: most rows per forward/backward (memory only; default B).
    accountant: ``prv`` | ``rdp`` | ``pld`` (calibration and the reported ε).
    calibration_rel_tol: the spent ε lands in [(1 - tol) target, target].
    grad_sample_mode: one of :data:`dpmed.privacy.validation.GRAD_SAMPLE_MODES`.
    num_workers: DataLoader worker processes (order and values do not depend on it).
    unit: what one row of the dataset is to the guarantee (``record``, or ``patient``/``site``
        when the dataset's rows are those).
    precision: of the forward and backward passes (:data:`dpmed.training.numerics.PRECISIONS`);
        clipping and noise are in float32 at every precision.
    """

    epochs: int
    batch_size: int
    epsilon: float = math.inf
    delta: float | None = None
    max_grad_norm: float = 1.5
    physical_batch_size: int | None = None
    accountant: str = "prv"
    calibration_rel_tol: float = 0.01
    grad_sample_mode: str = "bk"
    num_workers: int = 0
    unit: str = "record"
    precision: str = "fp32"

    def __post_init__(self):
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.physical_batch_size is not None and int(self.physical_batch_size) < 1:
            raise ConfigError("physical_batch_size must be >= 1")
        check_precision(self.precision)
        eps = float(self.epsilon)
        if math.isnan(eps) or eps <= 0:
            raise ConfigError(f"epsilon must be > 0 (or inf), got {self.epsilon!r}")
        if math.isfinite(eps):
            if self.delta is None or not (0 < float(self.delta) < 1):
                raise ConfigError(f"DP training needs delta in (0, 1), got {self.delta!r}")
            if not float(self.max_grad_norm) > 0:
                raise ConfigError(f"max_grad_norm must be > 0, got {self.max_grad_norm!r}")
            if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
                raise ConfigError(f"grad_sample_mode {self.grad_sample_mode!r} is not one of {GRAD_SAMPLE_MODES}")

    @property
    def private(self) -> bool:
        return math.isfinite(float(self.epsilon))

    @property
    def physical(self) -> int:
        return int(self.physical_batch_size or self.batch_size)


@dataclass(frozen=True)
class DPPlan:
    """How many steps run and with which noise.

    The dataset size ``n_records`` is treated as PUBLIC (add/remove-one adjacency with the size
    known): q, the steps and σ depend on it.

    DP steps rule: ``steps_per_epoch = round(N / B)`` (half up, at least 1) Poisson batches, so one
    epoch processes N records in expectation; non-private: ``ceil(N / B)`` shuffled batches.
    """

    n_records: int
    batch_size: int
    epochs: int
    private: bool
    sample_rate: float
    steps_per_epoch: int
    noise_multiplier: float

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @classmethod
    def make(cls, settings: EngineSettings, n_records: int, noise_multiplier: float | None = None) -> "DPPlan":
        """The plan for ``settings`` on ``n_records`` rows; σ is calibrated unless given (resume)."""
        n, b = int(n_records), int(settings.batch_size)
        if n < 1:
            raise ConfigError("the training set is empty")
        if not settings.private:
            return cls(n, b, int(settings.epochs), False, min(1.0, b / n), math.ceil(n / b), 0.0)
        if b > n:
            raise ConfigError(f"batch_size {b} exceeds the {n} training records")
        q = b / n
        spe = max(1, int(math.floor(n / b + 0.5)))
        if noise_multiplier is None:
            from dpmed.privacy import accounting

            noise_multiplier = accounting.calibrate_noise_multiplier(
                float(settings.epsilon), float(settings.delta), q, int(settings.epochs) * spe,
                accountant=settings.accountant, rel_tol=settings.calibration_rel_tol)
        if not noise_multiplier > 0:
            raise PrivacyError(f"a private plan needs a noise multiplier > 0, got {noise_multiplier!r}")
        return cls(n, b, int(settings.epochs), True, q, spe, float(noise_multiplier))
