"""Generic DP-SGD wrapper over Opacus with one interface for every ``grad_sample_mode``.

Usage (the same training loop for every mode)::

    priv = make_private(model, optimizer, loader, noise_multiplier=sigma, max_grad_norm=1.5,
                        grad_sample_mode="hooks", criterion=nn.BCEWithLogitsLoss(pos_weight=w))
    model, optimizer, criterion, loader = priv
    for x, y in loader:
        if len(x) == 0:             # Poisson sampling can draw an empty batch
            ...                     # see :func:`step_on_empty_batch`
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()             # ghost mode: two backward passes inside
        optimizer.step()
    eps = priv.privacy_engine.get_epsilon(delta)   # or account the steps yourself

Modes
-----
``hooks``     Opacus' default: forward/backward hooks materialise per-sample gradients with
              per-layer rules (ACSConv3d has its own registered rule).
``functorch`` per-sample gradients of every layer by ``torch.func.vmap(grad(...))``.
``ew``        PyTorch ExpandedWeights (``call_for_per_sample_grads``). Works only for modules
              made of functional ops ExpandedWeights knows (not for ACSConv3d).
``ghost``     Opacus fast gradient clipping: one backward to get per-sample gradient *norms*
              (true ghost norms for Linear, instantiated per-layer gradients for conv/norm
              layers), then a second backward of the re-weighted loss. The optimizer never sees
              per-sample gradients; the returned criterion drives the two passes.

Loss convention
---------------
Opacus' ``loss_reduction="mean"`` assumes ``loss = (1/B) * sum_i loss_i``. The criterion returned
here enforces that form for every mode: :class:`PerSampleLoss` reduces the element-wise loss of
each sample by its mean (e.g. over the 8 CXR labels) and then averages over the batch. For
``BCEWithLogitsLoss`` (with or without ``pos_weight``) this is identical to the plain ``mean``;
for losses whose ``mean`` is a weighted mean (``CrossEntropyLoss(weight=...)``) it is not, and
the weighted mean would not be a per-sample average anyway.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from dpmed.errors import PrivacyError

SUPPORTED_MODES = ("hooks", "functorch", "ew", "ghost")


class PerSampleLoss(nn.Module):
    """Wrap an element-wise criterion so that ``reduction="none"`` gives one value per sample.

    The wrapped criterion is always called with ``reduction="none"``; the result is averaged over
    all non-batch dimensions to give ``loss_i`` and then reduced over the batch according to
    ``self.reduction`` (``"mean"``, ``"sum"`` or ``"none"``). Opacus' ghost-clipping loss wrapper
    sets ``reduction`` to ``"none"`` to obtain per-sample losses.
    """

    def __init__(self, criterion: nn.Module, reduction: str = "mean"):
        super().__init__()
        if not hasattr(criterion, "reduction"):
            raise PrivacyError(
                f"criterion {type(criterion).__name__} has no 'reduction' attribute; "
                "DP training needs an element-wise loss (reduction='none')"
            )
        self.criterion = criterion
        self.reduction = reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        old = self.criterion.reduction
        self.criterion.reduction = "none"
        try:
            per_elem = self.criterion(input, target)
        finally:
            self.criterion.reduction = old
        per_sample = per_elem.reshape(per_elem.shape[0], -1).mean(dim=1) if per_elem.dim() > 1 else per_elem
        if self.reduction == "none":
            return per_sample
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        raise ValueError(f"unknown reduction {self.reduction!r}")


class _PrivateTuple(NamedTuple):
    model: nn.Module
    optimizer: Any
    criterion: Optional[Any]
    data_loader: DataLoader


class PrivateTraining(_PrivateTuple):
    """``(model, optimizer, criterion_or_None, data_loader)``; unpacks like a 4-tuple.

    Extra attributes: ``privacy_engine`` (the Opacus engine whose accountant records every
    optimizer step), ``grad_sample_mode``, ``sample_rate``, ``expected_batch_size``,
    ``noise_multiplier``, ``max_grad_norm``.
    """


def validate_for_dp(model: nn.Module) -> None:
    """Raise :class:`PrivacyError` if Opacus refuses ``model`` (BatchNorm, in-place ops, ...)."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise PrivacyError(
            "model cannot be trained with per-sample gradients: "
            + "; ".join(str(e) for e in errors[:10])
        )


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str,
    poisson_sampling: bool = True,
    criterion: Optional[nn.Module] = None,
    privacy_engine=None,
    accountant: str = "prv",
    secure_mode: bool = False,
    noise_generator: Optional[torch.Generator] = None,
) -> PrivateTraining:
    """Make model/optimizer/loader private with Opacus, uniformly over grad-sample modes.

    Parameters
    ----------
    model, optimizer, data_loader: the non-private objects (optimizer over ``model.parameters()``).
    noise_multiplier: sigma (std of the noise = sigma * max_grad_norm, before averaging).
    max_grad_norm: C, the per-sample L2 clipping bound over all parameters ("flat" clipping).
    grad_sample_mode: one of :data:`SUPPORTED_MODES`.
    poisson_sampling: replace the loader's sampler by Poisson sampling with rate 1/len(loader)
        (required for the accountant's guarantee; ``False`` only for tests/benchmarks).
    criterion: element-wise loss (needs a ``reduction`` attribute). If given, the returned
        criterion is usable in every mode (wrapped in :class:`PerSampleLoss`, and for ``ghost`` in
        Opacus' two-pass loss). Required for ``ghost``; if omitted in other modes, ``None`` is
        returned and the caller must use a per-sample-mean loss itself.
    privacy_engine: an existing ``opacus.PrivacyEngine`` (else one is made with ``accountant``).

    Returns
    -------
    :class:`PrivateTraining` -- ``(model, optimizer, criterion_or_None, data_loader)``.
    """
    from opacus import PrivacyEngine

    if grad_sample_mode not in SUPPORTED_MODES:
        raise PrivacyError(f"grad_sample_mode {grad_sample_mode!r} not supported; use one of {SUPPORTED_MODES}")
    if not (max_grad_norm > 0):
        raise PrivacyError(f"max_grad_norm must be > 0, got {max_grad_norm!r}")
    if not (noise_multiplier >= 0):
        raise PrivacyError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")
    if grad_sample_mode == "ghost" and criterion is None:
        raise PrivacyError("grad_sample_mode='ghost' needs the criterion (it runs the two backward passes)")
    validate_for_dp(model)
    if grad_sample_mode == "ew":
        from dpmed.models.acs import ACSConv3d

        if any(isinstance(m, ACSConv3d) for m in model.modules()):
            raise PrivacyError("grad_sample_mode='ew' does not support ACSConv3d; use 'hooks' or 'functorch'")

    loss = PerSampleLoss(criterion) if criterion is not None else None
    kwargs = dict(
        module=model,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        poisson_sampling=poisson_sampling,
        grad_sample_mode=grad_sample_mode,
        loss_reduction="mean",
        noise_generator=noise_generator,
    )
    with warnings.catch_warnings():
        # Opacus warns about secure_mode=False and full-backward-hook internals; not actionable here.
        warnings.simplefilter("ignore", UserWarning)
        engine = privacy_engine if privacy_engine is not None else PrivacyEngine(
            accountant=accountant, secure_mode=secure_mode
        )
        if grad_sample_mode == "ghost":
            out_model, out_opt, out_crit, out_loader = engine.make_private(criterion=loss, **kwargs)
        else:
            out_model, out_opt, out_loader = engine.make_private(**kwargs)
            out_crit = loss
    res = PrivateTraining(out_model, out_opt, out_crit, out_loader)
    res.privacy_engine = engine
    res.grad_sample_mode = grad_sample_mode
    res.sample_rate = 1.0 / len(out_loader)
    res.expected_batch_size = out_opt.expected_batch_size
    res.noise_multiplier = float(noise_multiplier)
    res.max_grad_norm = float(max_grad_norm)
    return res


def step_on_empty_batch(optimizer) -> None:
    """Take a DP step for an empty Poisson batch: the update is pure noise (and it is accounted).

    Opacus' optimizer needs ``grad_sample``/``summed_grad`` to exist; for an empty batch there is no
    forward pass, so we set zero per-sample gradients of batch size 0 (hooks/functorch/ew) or a
    zero summed gradient (ghost) and call ``optimizer.step()``.
    """
    from opacus.optimizers import DPOptimizerFastGradientClipping

    for p in optimizer.params:
        if isinstance(optimizer, DPOptimizerFastGradientClipping):
            p.grad = torch.zeros_like(p)
        else:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    optimizer.step()
