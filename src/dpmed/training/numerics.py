"""Floating-point precision of training, and the part of a private step that is always float32.

A DP step has two parts with different needs:

* the forward and backward passes, which only decide *which* gradient each record contributes:
  they may run in a faster precision (:data:`PRECISIONS`: ``fp32``, ``tf32`` on CUDA, ``bf16``
  autocast on CUDA and CPU) without touching the guarantee;
* the per-sample norms, the clipping factors, the clipped sum and the noise, on which the
  sensitivity rests: they run under :func:`full_float32` (TF32 and autocast off, reduced-precision
  activations and gradients upcast), so that the contribution actually summed for a record is
  the one whose norm was bounded by C, to float32 rounding, whatever the forward's precision.

``fp16`` is not offered: it needs loss scaling, whose scale would enter the per-sample
gradients before clipping.
"""

from __future__ import annotations

import contextlib

import torch

from dpmed.errors import ConfigError

PRECISIONS = ("fp32", "tf32", "bf16")
REDUCED = (torch.float16, torch.bfloat16)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {PRECISIONS}")
    return precision


def upcast(t: torch.Tensor) -> torch.Tensor:
    """A reduced-precision floating tensor (autocast's activations or gradients) in float32."""
    return t.float() if t.dtype in REDUCED else t


def _device_types() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@contextlib.contextmanager
def _tf32(allowed: bool):
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed
    torch.set_float32_matmul_precision("high" if allowed else "highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev[0], prev[1]
        torch.set_float32_matmul_precision(prev[2])


@contextlib.contextmanager
def full_float32():
    """TF32 off for matmul and cuDNN and autocast off on every device: what the sensitivity
    rests on is computed in float32."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_tf32(False))
        for dev in _device_types():
            stack.enter_context(torch.autocast(device_type=dev, enabled=False))
        yield


def compute_precision(precision: str, device: torch.device | str):
    """The context a forward and backward pass run in at ``precision`` on ``device``."""
    check_precision(precision)
    if precision == "fp32":
        return full_float32()
    if precision == "tf32":
        return _tf32(True)
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def numerics_statement(precision: str) -> str:
    """What a privacy card says about the numerics of a run at ``precision``."""
    forward = {"fp32": "forward and backward in full float32 (TF32 off)",
               "tf32": "forward and backward with TF32 matmul and cuDNN convolutions",
               "bf16": "forward and backward under bfloat16 autocast"}[check_precision(precision)]
    return (f"precision {precision}: {forward}; per-sample gradient norms, clipping factors, the clipped "
            "sum and the noise in full float32 (TF32 and autocast off, reduced-precision activations "
            "and gradients upcast), so each record's contribution has norm <= C as summed")
