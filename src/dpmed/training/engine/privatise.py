"""Per-sample clipping backends: dpmed's ``bk`` and Opacus' per-sample gradients.

A privatiser owns the model the task calls (``privatiser.model``) and, per physical batch,
turns the task's per-sample losses into the clipped sum ``sum_i c_i grad_i`` accumulated in
``privatiser.summed``. Noise, scaling and the optimizer step are the engine's (one
implementation for every backend); so is accounting (one accountant).

Modes (:data:`GRAD_SAMPLE_MODES`)
-------------------------------
``bk``         dpmed's single-pass exact clipping (:mod:`dpmed.training.bk`), the default.
``hooks``      Opacus' ``GradSampleModule`` (per-layer grad samplers, hooks).
``functorch``  Opacus' ``GradSampleModule`` with every layer through ``torch.func``.

Both Opacus modes sum the per-sample gradients of a module used several times in one forward
before clipping (``create_or_accumulate_grad_sample``), like ``bk``.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn as nn

from dpmed.errors import PrivacyError
from dpmed.training.bk import BKClipper, BKModule
from dpmed.training.numerics import full_float32, upcast

from dpmed.privacy.validation import GRAD_SAMPLE_MODES  # noqa: E402  (the one list)


class Privatiser:
    """Common part: the trainable parameters, the clipped-sum accumulator, the bound C."""

    mode: str

    def __init__(self, model: nn.Module, max_grad_norm: float):
        if not (max_grad_norm > 0):
            raise PrivacyError(f"max_grad_norm must be > 0, got {max_grad_norm!r}")
        self.raw_model = model
        self.max_grad_norm = float(max_grad_norm)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.summed = [torch.zeros_like(p) for p in self.params]
        self.per_sample_norms: torch.Tensor | None = None

    def reset(self) -> None:
        """Start a new logical batch (zero clipped sum)."""
        for s in self.summed:
            s.zero_()

    def clip_accumulate(self, losses: torch.Tensor) -> None:
        """Backward of ``losses.sum()`` (``losses``: one per sample) and add the clipped sum."""
        raise NotImplementedError

    @contextlib.contextmanager
    def outside_mechanism(self):
        """Forward/backward through the model that is NOT part of the private step (e.g. the
        generator update through a DP discriminator): no per-sample state is recorded, and the
        model's parameters get no gradient (they are detached for the duration), so neither the
        clipped sum nor ``p.grad`` of the private model changes. Gradients still flow through
        the model to its inputs."""
        flags = [(p, p.requires_grad) for p in self.params]
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            with self._hooks_off():
                yield self.model
        finally:
            for p, f in flags:
                p.requires_grad_(f)

    def _hooks_off(self):
        raise NotImplementedError


class BKPrivatiser(Privatiser):
    mode = "bk"

    def __init__(self, model: nn.Module, max_grad_norm: float):
        super().__init__(model, max_grad_norm)
        self.clipper = BKClipper(model, max_grad_norm)
        self.model = BKModule(model, self.clipper)

    def begin(self) -> None:
        self.clipper.begin()

    def clip_accumulate(self, losses: torch.Tensor) -> None:
        _check_losses(losses)
        losses.sum().backward()
        self.clipper.finish(self.summed)
        self.per_sample_norms = self.clipper.per_sample_norms

    def _hooks_off(self):
        return self.clipper.disabled()


class OpacusPrivatiser(Privatiser):
    def __init__(self, model: nn.Module, max_grad_norm: float, mode: str):
        from opacus import GradSampleModule

        super().__init__(model, max_grad_norm)
        self.mode = mode
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.model = GradSampleModule(model, batch_first=True, loss_reduction="sum",
                                          force_functorch=mode == "functorch")

    def begin(self) -> None:
        for p in self.params:
            p.grad_sample = None
            p.grad = None

    def clip_accumulate(self, losses: torch.Tensor) -> None:
        _check_losses(losses)
        with warnings.catch_warnings():
            # Opacus' full backward hooks on a first layer whose input needs no grad: harmless
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses.sum().backward()
        samples = [p.grad_sample for p in self.params]
        if any(s is None for s in samples):
            raise PrivacyError("Opacus produced no per-sample gradient for some parameter")
        with full_float32():  # under autocast the per-sample gradients are bf16: norm what is summed
            samples = [upcast(s) for s in samples]
            n = samples[0].shape[0]
            norms = torch.sqrt(sum(s.reshape(n, -1).pow(2).sum(1) for s in samples))
            self.per_sample_norms = norms.detach()
            w = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            for acc, s in zip(self.summed, samples):
                acc += torch.tensordot(w, s, dims=1)
        self.begin()  # the unclipped p.grad autograd wrote must not reach the optimizer

    @contextlib.contextmanager
    def _hooks_off(self):
        self.model.disable_hooks()
        try:
            yield
        finally:
            self.model.enable_hooks()


def make_privatiser(model: nn.Module, max_grad_norm: float, mode: str) -> Privatiser:
    """The privatiser of ``mode`` (one of :data:`GRAD_SAMPLE_MODES`) for a validated model."""
    from dpmed.privacy.validation import assert_privatisable

    assert_privatisable(model, mode)
    if mode == "bk":
        return BKPrivatiser(model, max_grad_norm)
    return OpacusPrivatiser(model, max_grad_norm, mode)


def _check_losses(losses: torch.Tensor) -> None:
    if losses.dim() != 1:
        raise PrivacyError(f"the task must return one loss per sample (shape (B,)), got shape {tuple(losses.shape)}")
