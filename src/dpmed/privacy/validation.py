"""Refuse models that cannot be trained with DP-SGD *before* a training job starts.

:func:`assert_privatisable` collects every problem and raises one :class:`PrivacyError`
that names each offending submodule by its path (``layer1.0.bn1``), so the user can fix
all of them at once:

* Opacus' own module validators (``opacus.validators.ModuleValidator``): BatchNorm
  (mixes samples of a batch), and whatever else Opacus registers (LSTM, MultiheadAttention
  needing DP replacements, ...). We run them per submodule so the message carries the path.
  BatchNorm is refused even when it is frozen/affine-free: in training mode it still
  normalises with batch statistics, and its running statistics are a non-private release.
* Trainable modules that hold buffers (what ``GradSampleModule.validate`` refuses: their
  buffers are updated from private data outside the mechanism).
* In-place activations / dropout (``inplace=True``): they overwrite the activations that
  Opacus' backward hooks saved, so per-sample gradients are wrong or the backward fails.
* For ``grad_sample_mode="bk"`` every trainable layer needs a registered rule
  (:mod:`dpmed.training.bk`); any other trainable layer is refused.
* The model must be in training mode (Opacus requirement).
"""

from __future__ import annotations

import torch.nn as nn

from dpmed.errors import PrivacyError

__all__ = ["privatisation_problems", "assert_privatisable", "GRAD_SAMPLE_MODES"]

#: The one list of per-sample clipping modes (dpmed.training.engine.privatise implements them).
GRAD_SAMPLE_MODES = ("bk", "hooks", "functorch")

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _label(name: str, module: nn.Module) -> str:
    return f"{name or '<root>'} ({type(module).__name__})"


def _first_sentence(text: str) -> str:
    text = " ".join(str(text).split())
    cut = text.find(". ")
    return text if cut < 0 else text[: cut + 1]


def privatisation_problems(model: nn.Module, grad_sample_mode: str = "bk") -> list[str]:
    """All reasons ``model`` cannot be trained with Opacus DP-SGD (empty list: fine)."""
    from opacus.validators import ModuleValidator

    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise PrivacyError(f"unknown grad_sample_mode {grad_sample_mode!r}; choose one of {', '.join(GRAD_SAMPLE_MODES)}")
    problems: list[str] = []
    if not model.training:
        problems.append("<root>: the model must be in training mode (call model.train())")

    for name, module in model.named_modules():
        label = _label(name, module)
        own_params = [p for p in module.parameters(recurse=False) if p.requires_grad]

        # 1. Opacus' registered validators, per submodule so the path is known.
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if isinstance(module, _BATCHNORM):
            problems.append(
                f"{label}: BatchNorm mixes the samples of a batch and is incompatible with "
                "per-sample gradients; replace it with GroupNorm (e.g. GroupNorm(32, C))"
            )
        elif validator is not None and own_params:
            for err in validator(module):
                problems.append(f"{label}: {_first_sentence(err)}")

        # 2. trainable layers with buffers (non-private state updated from data)
        if own_params and not isinstance(module, _BATCHNORM) and list(module.buffers(recurse=False)):
            problems.append(
                f"{label}: trainable layer with buffers "
                f"({', '.join(n for n, _ in module.named_buffers(recurse=False))}); "
                "Opacus cannot privatise buffers updated from the data"
            )

        # 3. in-place activations / dropout break Opacus' saved activations
        if getattr(module, "inplace", False) is True:
            problems.append(
                f"{label}: inplace=True overwrites activations Opacus' hooks need; "
                f"use {type(module).__name__}(inplace=False)"
            )


    # 4. bk needs a registered rule for every trainable layer
    if grad_sample_mode == "bk":
        from dpmed.training.bk import bk_problems

        problems += [p for p in bk_problems(model) if p not in problems]

    # 5. anything else Opacus' whole-model validation finds that we did not already name
    named = " ".join(problems)
    for err in ModuleValidator.validate(model, strict=False):
        msg = _first_sentence(err)
        if "training mode" in msg or "BatchNorm" in msg:
            continue
        if msg not in named:
            problems.append(f"<model>: {msg}")
    return problems


def assert_privatisable(model: nn.Module, grad_sample_mode: str = "bk") -> None:
    """Raise :class:`PrivacyError` listing every submodule that prevents DP-SGD training."""
    problems = privatisation_problems(model, grad_sample_mode)
    if problems:
        raise PrivacyError(
            f"model cannot be trained with DP-SGD (grad_sample_mode={grad_sample_mode!r}); "
            f"{len(problems)} problem(s):\n  - " + "\n  - ".join(problems)
        )
