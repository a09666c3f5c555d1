"""ACS convolutions: 2D kernels applied to volumes along three orthogonal planes.

An :class:`ACSConv3d` holds an ordinary 2D weight of shape ``(out, in, k, k)``. Its output
channels are split into three groups -- axial, coronal, sagittal, sizes as even as possible
(the first ``out % 3`` groups get one channel more). Each group convolves the volume
``(N, C, D, H, W)`` with its slice of the 2D kernel lifted to 3D along one plane:

========  ===============  ============  ===============
group     kernel           plane         padding
========  ===============  ============  ===============
axial     ``(1, k, k)``    H x W         ``(0, p, p)``
coronal   ``(k, 1, k)``    D x W         ``(p, 0, p)``
sagittal  ``(k, k, 1)``    D x H         ``(p, p, 0)``
========  ===============  ============  ===============

The stride ``s`` is applied along all three axes so that the three outputs have the same
shape (this needs ``2p = k - 1``, i.e. "same"-style padding with an odd kernel, which is
what ResNet uses) and are concatenated along the channel axis.

Because the weight is literally the 2D weight, a 2D network's ``state_dict`` loads into the
ACS network unchanged (see :func:`dpmed.models.resnet9.convert_2d_weights_to_acs`).

Differential privacy
--------------------
Opacus does not know this module, so a per-sample gradient sampler is registered for it
(:func:`compute_acs_grad_sample`). It is used by Opacus' ``hooks`` mode and by the
fast-gradient/ghost-clipping mode (which builds per-sample norms from it); ``functorch``
mode differentiates the module's forward with ``vmap`` and needs no sampler. For each plane
the lifted convolution is a stack of independent 2D convolutions over the slices taken every
``s`` along the remaining axis, so the per-sample gradient is the 2D unfold/matmul gradient
summed over those slices. ``tests/test_models.py`` checks it against a per-sample loop.
"""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler

PLANES = ("axial", "coronal", "sagittal")
# dimension (of the weight / of an (N, C, D, H, W) tensor, counting spatial dims 2..4) where the
# 2D kernel gets its singleton axis, per plane
_UNIT_DIM = {"axial": 2, "coronal": 3, "sagittal": 4}


def acs_split(out_channels: int) -> List[int]:
    """Sizes of the axial, coronal and sagittal channel groups (as even as possible)."""
    base, rest = divmod(out_channels, 3)
    return [base + (1 if i < rest else 0) for i in range(3)]


def _pair(v) -> tuple:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return v


class ACSConv3d(nn.Module):
    """3D convolution made of one 2D kernel applied along the axial, coronal and sagittal planes.

    Parameters
    ----------
    in_channels, out_channels: channel counts.
    kernel_size: square 2D kernel size ``k`` (odd).
    stride: integer stride, applied along D, H and W.
    padding: ``(k - 1) // 2`` (the only value that keeps the three plane outputs equal in shape).
    bias: whether to learn a bias per output channel.

    Attributes
    ----------
    weight: ``nn.Parameter`` of shape ``(out, in, k, k)`` -- the 2D weight.
    bias: ``nn.Parameter`` of shape ``(out,)`` or ``None``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
    ):
        super().__init__()
        kh, kw = _pair(kernel_size)
        if kh != kw:
            raise ValueError(f"ACSConv3d needs a square kernel, got {kernel_size!r}")
        k = kh
        if padding is None:
            padding = (k - 1) // 2
        ph, pw = _pair(padding)
        if ph != pw or 2 * ph != k - 1:
            raise ValueError(
                f"ACSConv3d needs padding (k-1)/2 so the three planes give equal output shapes; "
                f"got kernel_size={k}, padding={padding!r}"
            )
        if not isinstance(stride, int):
            s = tuple(stride)
            if len(set(s)) != 1:
                raise ValueError(f"ACSConv3d needs an isotropic stride, got {stride!r}")
            stride = s[0]
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = k
        self.stride = int(stride)
        self.padding = int(ph)
        self.split = acs_split(self.out_channels)
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, k, k))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # same initialisation as an nn.Conv2d with the same shape
        ref = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, bias=self.bias is not None)
        with torch.no_grad():
            self.weight.copy_(ref.weight)
            if self.bias is not None:
                self.bias.copy_(ref.bias)

    def _plane_params(self, plane: int):
        """(kernel dim to unsqueeze, 3D padding) for plane index 0/1/2."""
        p = self.padding
        pad = [p, p, p]
        pad[plane] = 0
        return 2 + plane, tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"ACSConv3d expects (N, C, D, H, W), got shape {tuple(x.shape)}")
        outs = []
        start = 0
        for plane, size in enumerate(self.split):
            if size == 0:
                continue
            unit_dim, pad = self._plane_params(plane)
            w = self.weight[start : start + size].unsqueeze(unit_dim)
            b = None if self.bias is None else self.bias[start : start + size]
            outs.append(F.conv3d(x, w, b, stride=self.stride, padding=pad))
            start += size
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
            f"split(axial/coronal/sagittal)={self.split}"
        )


def _plane_unfold(x: torch.Tensor, g: torch.Tensor, plane: int, k: int, s: int, p: int):
    """Rearrange input ``x`` (N, C, D, H, W) and output grads ``g`` (N, o, D', H', W') of one plane.

    Returns ``cols`` (N, C*k*k, M) and ``grads`` (N, o, M) whose product over M is the per-sample
    weight gradient ``(N, o, C*k*k)`` (M = number of output positions of this plane).
    """
    n, c = x.shape[:2]
    o = g.shape[1]
    # move the singleton-kernel axis next to the batch; it becomes a batch of 2D images
    xd = 2 + plane  # the axis along which the kernel has size 1 (strided, unpadded)
    xs = x.movedim(xd, 1)  # (N, A, C, U, V)
    xs = xs[:, ::s]  # the slices the strided 3D conv visits: (N, A', C, U, V)
    a = xs.shape[1]
    xs = xs.reshape(n * a, c, xs.shape[-2], xs.shape[-1])
    cols = F.unfold(xs, kernel_size=k, padding=p, stride=s)  # (N*A', C*k*k, L)
    pk, l = cols.shape[1], cols.shape[2]
    cols = cols.view(n, a, pk, l).transpose(1, 2).reshape(n, pk, a * l)
    gs = g.movedim(xd, 2)  # (N, o, A', U', V')
    if gs.shape[2] != a or gs.shape[3] * gs.shape[4] != l:
        raise RuntimeError("ACS grad sampler: unexpected output shape")
    gs = gs.reshape(n, o, a * l)
    return cols, gs


@register_grad_sampler(ACSConv3d)
def compute_acs_grad_sample(
    layer: ACSConv3d, activations: List[torch.Tensor], backprops: torch.Tensor
) -> Dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of an :class:`ACSConv3d` (signature of an Opacus grad sampler)."""
    x = activations[0].to(backprops.dtype)
    n = x.shape[0]
    ret: Dict[nn.Parameter, torch.Tensor] = {}
    if n == 0:
        ret[layer.weight] = torch.zeros_like(layer.weight).unsqueeze(0)
        if layer.bias is not None and layer.bias.requires_grad:
            ret[layer.bias] = torch.zeros_like(layer.bias).unsqueeze(0)
        return ret
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    pieces = []
    start = 0
    for plane, size in enumerate(layer.split):
        if size == 0:
            continue
        g = backprops[:, start : start + size]
        if layer.weight.requires_grad:
            cols, gs = _plane_unfold(x, g, plane, k, s, p)
            pieces.append(torch.bmm(gs, cols.transpose(1, 2)))  # (N, o, C*k*k)
        start += size
    if layer.weight.requires_grad:
        ret[layer.weight] = torch.cat(pieces, dim=1).view(n, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.reshape(n, backprops.shape[1], -1).sum(dim=2)
    return ret
