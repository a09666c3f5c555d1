"""User-supplied frozen encoders as files: TorchScript or ``torch.export`` programs.

A hospital can use its own foundation model (e.g. a DINOv2 it exported) without any model hub
at run time: it saves the network once, on its own machine, as

* TorchScript: ``torch.jit.save(torch.jit.trace(model.eval(), example), "encoder.pt")``, or
* an exported program: ``torch.export.save(torch.export.export(model.eval(), (example,)),
  "encoder.pt2")`` (a ``.pt2`` file),

and names the file in the configuration. :func:`load_encoder_file` loads it, runs it once on a
probe batch of the shape the pipeline will feed it and checks that it returns one
``(batch, dim)`` feature vector per image, so a wrong file fails before any training starts,
with a message naming the file and the reason.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from dpmed.errors import ModelFileError


def _load(path: Path) -> nn.Module:
    errors = []
    # .pt2 is torch.export's archive; anything else is tried as TorchScript first.
    loaders = ("export", "jit") if path.suffix == ".pt2" else ("jit", "export")
    for kind in loaders:
        try:
            if kind == "jit":
                with warnings.catch_warnings():  # TorchScript is deprecated; existing files still load
                    warnings.simplefilter("ignore", DeprecationWarning)
                    return torch.jit.load(str(path), map_location="cpu").eval()
            # an exported program is traced in eval mode already; its module refuses .train()/.eval()
            return torch.export.load(str(path)).module()
        except Exception as exc:  # noqa: BLE001 — each loader's reason goes into the message
            errors.append(f"{'torch.jit.load' if kind == 'jit' else 'torch.export.load'}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise ModelFileError(f"encoder file {path.name}: cannot be loaded as TorchScript or as an "
                         f"exported program ({'; '.join(errors)})")


def load_encoder_file(path: str | Path, input_shape: Sequence[int],
                      expected_dim: int | None = None) -> tuple[nn.Module, int]:
    """Load and validate a TorchScript / exported encoder file.

    Parameters
    ----------
    path: the file (``.pt``/``.pth`` TorchScript or ``.pt2`` exported program).
    input_shape: shape of one image as the pipeline feeds it, without the batch dimension
        (e.g. ``(3, 224, 224)``).
    expected_dim: the embedding length the configuration expects (``None``: any).

    Returns
    -------
    The encoder (in eval mode, gradients off) and its output dimension D.

    Raises
    ------
    ModelFileError: the file is missing, does not load, fails on the probe batch, or returns
        something other than a ``(batch, D)`` float tensor (or a D other than ``expected_dim``).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"encoder file {path.name}: no such file ({path.parent})")
    enc = _load(path)
    for p in enc.parameters():
        p.requires_grad_(False)
    probe = torch.zeros((2, *map(int, input_shape)))
    try:
        with torch.no_grad():
            out = enc(probe)
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"encoder file {path.name}: fails on an input of shape "
                             f"{tuple(probe.shape)}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelFileError(f"encoder file {path.name}: returns {shape} for input "
                             f"{tuple(probe.shape)}; expected one vector per image, (2, D)")
    dim = int(out.shape[1])
    if expected_dim is not None and dim != int(expected_dim):
        raise ModelFileError(f"encoder file {path.name}: returns {dim}-d embeddings, "
                             f"the configuration expects {expected_dim}")
    if not out.is_floating_point():
        raise ModelFileError(f"encoder file {path.name}: returns {out.dtype}, expected floats")
    return enc, dim
