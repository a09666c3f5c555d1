"""``bk``: single-pass exact per-sample clipping, with one registered rule per layer type.

Opacus' modes either materialise every per-sample gradient (N x P floats, written, normed and
re-read by the clip) or run a second backward pass (ghost clipping). ``bk`` does neither:

1. the forward runs with the parameters *detached from autograd* (``requires_grad`` off while
   the model runs), so the standard backward computes activation gradients only;
2. a hook on every registered layer's output receives the output gradient ``g`` of that use; with
   the stored input ``a`` the layer's per-sample squared gradient norm is computed exactly by the
   layer's :class:`BKRule` (for Conv2d the cheaper of instantiation and the ghost/Gram form,
   chosen from shapes only: :func:`conv_norm_method`);
3. after the backward, clip factors ``c_i = min(1, C / (||grad_i|| + 1e-6))`` over all layers
   (flat clipping, Opacus' formula), and each layer adds its clipped sum ``sum_i c_i G_i``.

The loss whose backward runs is the SUM of per-sample losses, so the gradient reaching a layer
output is already the per-sample gradient of each row (no batch-mean factor).

Modules used more than once in one step
---------------------------------------
A GAN discriminator sees a real and a fake batch; a decoder may be shared. The per-sample
gradient of such a module is the sum over its uses, and its norm is ``||sum_u G_{u,i}||``, not
``sqrt(sum_u ||G_{u,i}||^2)`` (which under-clips: a Linear called twice reached 1.2 C). A module
called more than once in a step is therefore always *instantiated* per use and the uses summed
before any norm is taken; every use must see the same number of rows, paired row by row (row
i of the real and of the fake batch form sample i). Single-use layers keep the fast path.

Adding a layer type
-------------------
One function: per-sample gradients of the layer's own parameters from its input ``a`` and its
output gradient ``g`` (both with the batch first)::

    @bk_rule(nn.Embedding)
    def _embedding(module, a, g):
        return {module.weight: ...}          # (n, *weight.shape)

Optional fast paths (``norm2``/``clipped_sum``) avoid instantiation for single-use layers.
:func:`functorch_grad_sample` is a generic rule (vmap over the sample) for any layer without
buffers. Exactness of every rule against a per-sample loop is tested in tests/test_bk.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dpmed.errors import PrivacyError
from dpmed.training.numerics import full_float32, upcast

GradSample = Callable[[nn.Module, torch.Tensor, torch.Tensor], "dict[nn.Parameter, torch.Tensor]"]


@dataclass(frozen=True)
class BKRule:
    """How ``bk`` handles one layer type.

    Attributes
    ----------
    grad_sample: ``(module, a, g) -> {param: (n, *param.shape)}`` per-sample gradients of the
        module's trainable parameters (exact; used for reused modules and as the default path).
    norm2: optional fast ``(module, a, g) -> (norm2 (n,), cache)`` for a single use.
    clipped_sum: optional ``(module, a, g, w, cache) -> {param: sum_i w_i G_i}`` matching ``norm2``.
    check: optional ``module -> problem or None`` for configurations the rule cannot handle.
    """

    grad_sample: GradSample
    norm2: Callable | None = None
    clipped_sum: Callable | None = None
    check: Callable[[nn.Module], str | None] | None = None


_RULES: dict[type, BKRule] = {}


def register_bk_rule(layer_type: type, rule: BKRule) -> None:
    """Register (or replace) the rule of ``layer_type`` (exact type match, like Opacus)."""
    _RULES[layer_type] = rule


def bk_rule(layer_type: type, **fast) -> Callable[[GradSample], GradSample]:
    """Decorator form of :func:`register_bk_rule` for a ``grad_sample`` function."""

    def deco(fn: GradSample) -> GradSample:
        register_bk_rule(layer_type, BKRule(grad_sample=fn, **fast))
        return fn

    return deco


def rule_for(module: nn.Module) -> BKRule | None:
    return _RULES.get(type(module))


def bk_problems(model: nn.Module) -> list[str]:
    """Why ``bk`` cannot clip ``model`` exactly (empty: it can): trainable parameters held by a
    layer type without a registered rule, or a configuration the rule refuses."""
    problems = []
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        label = f"{name or '<root>'} ({type(module).__name__})"
        rule = rule_for(module)
        if rule is None:
            problems.append(f"{label}: grad_sample_mode='bk' has no rule for this layer type "
                            f"(register one with dpmed.training.bk.bk_rule)")
        elif rule.check is not None and (msg := rule.check(module)):
            problems.append(f"{label}: {msg}")
    return problems


# ----------------------------------------------------------------------------- generic rule
def functorch_grad_sample(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict:
    """Per-sample gradients of any buffer-free layer: vmap over the rows of the vjp of the
    layer's functional forward. Slower than a hand-written rule, exact."""
    from torch.func import functional_call, vjp, vmap

    params = {k: p.detach() for k, p in module.named_parameters(recurse=False) if p.requires_grad}

    def one(ai, gi):
        _, pull = vjp(lambda ps: functional_call(module, ps, (ai.unsqueeze(0),)), params)
        return pull(gi.unsqueeze(0))[0]

    out = vmap(one)(a, g)
    own = dict(module.named_parameters(recurse=False))
    return {own[k]: v for k, v in out.items()}


# ----------------------------------------------------------------------------- Linear
@bk_rule(nn.Linear)
def _linear_grad_sample(m: nn.Linear, a, g):
    n = a.shape[0]
    a3, g3 = a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])
    out = {}
    if m.weight.requires_grad:
        out[m.weight] = torch.bmm(g3.transpose(1, 2), a3)
    if m.bias is not None and m.bias.requires_grad:
        out[m.bias] = g3.sum(1)
    return out


def _linear_norm2(m: nn.Linear, a, g):
    n = a.shape[0]
    a3, g3 = a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])
    if a3.shape[1] == 1:  # ghost norm of a rank-one gradient: ||g|| ||a||
        n2 = a3.pow(2).sum((1, 2)) * g3.pow(2).sum((1, 2))
    else:
        n2 = torch.bmm(g3.transpose(1, 2), a3).pow(2).sum((1, 2))
    if m.bias is not None:
        n2 = n2 + g3.sum(1).pow(2).sum(1)
    return n2, None


def _linear_clipped_sum(m: nn.Linear, a, g, w, cache):
    g2 = (g.reshape(g.shape[0], -1, g.shape[-1]) * w.view(-1, 1, 1)).reshape(-1, g.shape[-1])
    out = {m.weight: g2.t() @ a.reshape(-1, a.shape[-1])}
    if m.bias is not None:
        out[m.bias] = g2.sum(0)
    return out


_RULES[nn.Linear] = BKRule(_linear_grad_sample, _linear_norm2, _linear_clipped_sum)


# ----------------------------------------------------------------------------- Conv2d
def _conv2d_grad_sample(a, g, conv):
    """Per-sample weight gradients ``(n, *weight.shape)`` as ONE grouped weight-gradient call
    (the batch becomes the groups), the fastest instantiation on CPU."""
    n, c = a.shape[:2]
    o = g.shape[1]
    w = torch.nn.grad.conv2d_weight(
        a.reshape(1, n * c, *a.shape[2:]), (n * o, c, *conv.kernel_size), g.reshape(1, n * o, *g.shape[2:]),
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=n,
    )
    return w.reshape(n, o, c, *conv.kernel_size)


def _conv2d_norm2_unfold(a, g, conv):
    n, o = g.shape[:2]
    cols = F.unfold(a, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    return torch.bmm(g.reshape(n, o, -1), cols.transpose(1, 2)).pow(2).sum(dim=(1, 2))


def _conv2d_norm2_grouped(a, g, conv):
    return _conv2d_grad_sample(a, g, conv).reshape(a.shape[0], -1).pow(2).sum(1)


def _conv2d_norm2_gram(a, g, conv):
    # ghost norm: ||sum_l g_l a_l^T||^2 = sum_{l,l'} (a_l . a_l') (g_l . g_l')
    n, o = g.shape[:2]
    cols = F.unfold(a, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    gf = g.reshape(n, o, -1)
    return (torch.bmm(cols.transpose(1, 2), cols) * torch.bmm(gf.transpose(1, 2), gf)).sum(dim=(1, 2))


_CONV_NORM_METHODS = {"grouped": _conv2d_norm2_grouped, "gram": _conv2d_norm2_gram, "unfold": _conv2d_norm2_unfold}


def conv_norm_method(a_shape, g_shape, kernel_size) -> str:
    """Which exact per-sample conv norm to use, from shapes alone.

    A deterministic cost model, not timing: the methods round differently, and a choice that
    depended on machine load would make two runs of the same job differ in the last bits.
    Ghost/Gram costs ~ L^2 (p + o), instantiation ~ L p o (L output positions, p = C_in k^2,
    o = C_out); the grouped weight-gradient call is the fastest instantiation on CPU. The batch
    size cancels, so every batch uses one method.
    """
    positions = 1
    for d in g_shape[2:]:
        positions *= int(d)
    p = int(a_shape[1]) * int(kernel_size[0]) * int(kernel_size[1])
    o = int(g_shape[1])
    if positions <= 1024 and positions * (p + o) < p * o:
        return "gram"
    return "grouped"


def keep_grad_sample(a_shape, weight_shape) -> bool:
    """Whether an instantiated conv keeps its per-sample gradients until the clip: only while
    they are no larger than the layer input that is stored anyway (memory within 2x of the
    non-private backward); then the clipped sum is ``c @ G`` instead of a second weight-gradient
    call. Shape-only, like :func:`conv_norm_method`."""
    per_sample_input = 1
    for d in a_shape[1:]:
        per_sample_input *= int(d)
    params = 1
    for d in weight_shape:
        params *= int(d)
    return params <= per_sample_input


def _conv2d_rule_grad_sample(m: nn.Conv2d, a, g):
    out = {}
    if m.weight.requires_grad:
        out[m.weight] = _conv2d_grad_sample(a, g, m)
    if m.bias is not None and m.bias.requires_grad:
        out[m.bias] = g.sum(dim=(2, 3))
    return out


def _conv2d_norm2(m: nn.Conv2d, a, g):
    kept = None
    if conv_norm_method(a.shape, g.shape, m.kernel_size) == "grouped" and keep_grad_sample(a.shape, m.weight.shape):
        kept = _conv2d_grad_sample(a, g, m)
        n2 = kept.reshape(a.shape[0], -1).pow(2).sum(1)
    else:
        n2 = _CONV_NORM_METHODS[conv_norm_method(a.shape, g.shape, m.kernel_size)](a, g, m)
    if m.bias is not None:
        n2 = n2 + g.sum(dim=(2, 3)).pow(2).sum(1)
    return n2, kept


def _conv2d_clipped_sum(m: nn.Conv2d, a, g, w, kept):
    kw = dict(stride=m.stride, padding=m.padding, dilation=m.dilation)
    if kept is not None:
        gw = torch.tensordot(w, kept, dims=1)
    elif a.numel() < g.numel():  # rescale whichever side is smaller
        gw = torch.nn.grad.conv2d_weight(a * w.view(-1, 1, 1, 1), m.weight.shape, g, **kw)
    else:
        gw = torch.nn.grad.conv2d_weight(a, m.weight.shape, g * w.view(-1, 1, 1, 1), **kw)
    out = {m.weight: gw}
    if m.bias is not None:
        out[m.bias] = w @ g.sum(dim=(2, 3))
    return out


def _conv2d_check(m: nn.Conv2d) -> str | None:
    if m.groups != 1:
        return "grad_sample_mode='bk' supports Conv2d with groups=1 only"
    if m.padding_mode != "zeros":
        return "grad_sample_mode='bk' supports Conv2d with zero padding only"
    return None


_RULES[nn.Conv2d] = BKRule(_conv2d_rule_grad_sample, _conv2d_norm2, _conv2d_clipped_sum, _conv2d_check)


# ----------------------------------------------------------------------------- normalisation
def _norm_grad_sample(a: torch.Tensor, g: torch.Tensor, groups: int, eps: float):
    """Per-sample (weight, bias) gradients of a per-(sample, group) normalisation with a
    per-channel affine: sum over positions of g * xhat and of g.

    With xhat = (a - mean) * rstd per (sample, group): sum g*xhat = rstd * (sum g*a - mean * sum g),
    so only reductions are needed (no normalised copy of a). Mean and variance are accumulated
    in float64 from per-channel sums, avoiding the cancellation of E[a^2] - mean^2 in float32.
    """
    n, ch = a.shape[:2]
    a3, g3 = a.reshape(n, ch, -1), g.reshape(n, ch, -1)
    positions = a3.shape[2] * (ch // groups)
    gb = g3.sum(2)
    ga = torch.einsum("ncl,ncl->nc", g3, a3)
    s1 = a3.sum(2).double().reshape(n, groups, -1).sum(2)
    s2 = torch.einsum("ncl,ncl->nc", a3, a3).double().reshape(n, groups, -1).sum(2)
    mean = s1 / positions
    var = (s2 / positions - mean * mean).clamp_min(0)
    rstd = (var + eps).rsqrt()
    per_channel = ch // groups
    mean_c = mean.repeat_interleave(per_channel, dim=1)
    rstd_c = rstd.repeat_interleave(per_channel, dim=1)
    gw = (rstd_c * (ga.double() - mean_c * gb.double())).to(g.dtype)
    return gw, gb


def _group_norm_grad_sample(a, g, gn: nn.GroupNorm):
    return _norm_grad_sample(a, g, gn.num_groups, gn.eps)


def _affine_norm_rule(groups_of: Callable[[nn.Module, torch.Tensor], int]) -> GradSample:
    def grad_sample(m, a, g):
        gw, gb = _norm_grad_sample(a, g, groups_of(m, a), m.eps)
        out = {}
        if m.weight is not None and m.weight.requires_grad:
            out[m.weight] = gw
        if m.bias is not None and m.bias.requires_grad:
            out[m.bias] = gb
        return out

    return grad_sample


def _instance_norm_check(m) -> str | None:
    if m.track_running_stats:
        return "InstanceNorm with track_running_stats=True updates buffers from private data"
    return None


_RULES[nn.GroupNorm] = BKRule(_affine_norm_rule(lambda m, a: m.num_groups))
# InstanceNorm = GroupNorm with one group per channel
_RULES[nn.InstanceNorm2d] = BKRule(_affine_norm_rule(lambda m, a: a.shape[1]), check=_instance_norm_check)
_RULES[nn.InstanceNorm3d] = BKRule(_affine_norm_rule(lambda m, a: a.shape[1]), check=_instance_norm_check)
_RULES[nn.LayerNorm] = BKRule(functorch_grad_sample)
_RULES[nn.ConvTranspose2d] = BKRule(functorch_grad_sample)


# ----------------------------------------------------------------------------- Embedding
@bk_rule(nn.Embedding, check=lambda m: "Embedding with max_norm renormalises weights in the forward"
         if m.max_norm is not None else None)
def _embedding_grad_sample(m: nn.Embedding, a, g):
    n = a.shape[0]
    idx = a.reshape(n, -1)
    gs = torch.zeros(n, *m.weight.shape, dtype=g.dtype, device=g.device)
    gs.scatter_add_(1, idx.unsqueeze(-1).expand(n, idx.shape[1], m.embedding_dim),
                    g.reshape(n, -1, m.embedding_dim))
    if m.padding_idx is not None:
        gs[:, m.padding_idx] = 0
    return {m.weight: gs}


# ----------------------------------------------------------------------------- ACSConv3d
ACS_UNFOLD_MAX_POSITIONS = 16


def acs_grad_sample_method(g_shape) -> str:
    """``grouped`` or ``unfold`` for an ACSConv3d's per-sample gradients, from the output shape
    alone (deterministic, like :func:`conv_norm_method`). Measured on CPU per layer of a 3D
    ResNet9 (benchmarks/acs_clipping.py): grouped weight-gradient calls are 2-5x faster on
    volumes (and never build the unfold's column matrix, k^2 times the input), the unfold is
    up to 2x faster once a sample has at most ~16 output positions (the last stages)."""
    positions = int(g_shape[2]) * int(g_shape[3]) * int(g_shape[4])
    return "unfold" if positions <= ACS_UNFOLD_MAX_POSITIONS else "grouped"


def _acs_grad_sample(m, a, g):
    """Per-sample gradients of an ACSConv3d: per plane ONE grouped 3D weight-gradient call (the
    batch becomes the groups) with the plane's lifted kernel, as for Conv2d; on tiny outputs
    the unfold of Opacus' sampler (:func:`dpmed.models.acs.compute_acs_grad_sample`)."""
    from dpmed.models.acs import compute_acs_grad_sample

    if acs_grad_sample_method(g.shape) == "unfold":
        return compute_acs_grad_sample(m, [a], g)
    n, c = a.shape[:2]
    out = {}
    if m.weight.requires_grad:
        pieces, start = [], 0
        for plane, size in enumerate(m.split):
            if size == 0:
                continue
            unit_dim, pad = m._plane_params(plane)
            kernel = [m.kernel_size] * 3
            kernel[unit_dim - 2] = 1
            gp = g[:, start:start + size]
            w = torch.nn.grad.conv3d_weight(
                a.reshape(1, n * c, *a.shape[2:]), (n * size, c, *kernel), gp.reshape(1, n * size, *gp.shape[2:]),
                stride=m.stride, padding=pad, groups=n,
            )
            pieces.append(w.reshape(n, size, c, m.kernel_size, m.kernel_size))
            start += size
        out[m.weight] = torch.cat(pieces, dim=1)
    if m.bias is not None and m.bias.requires_grad:
        out[m.bias] = g.sum(dim=(2, 3, 4))
    return out


def _acs_norm2(m, a, g):
    kept = _acs_grad_sample(m, a, g)  # no larger than the volume a sample brings (2D kernel weights)
    n2 = sum(t.reshape(a.shape[0], -1).pow(2).sum(1) for t in kept.values())
    return n2, kept


def _acs_clipped_sum(m, a, g, w, kept):
    return {p: torch.tensordot(w, t, dims=1) for p, t in kept.items()}


def _register_acs() -> None:
    from dpmed.models.acs import ACSConv3d

    register_bk_rule(ACSConv3d, BKRule(_acs_grad_sample, _acs_norm2, _acs_clipped_sum))


_register_acs()


# ============================================================================= the clipper
class _Use:
    __slots__ = ("module", "a", "g")

    def __init__(self, module, a):
        self.module, self.a, self.g = module, a, None


class BKClipper:
    """Per-sample clipping state of one model for ``bk``; see the module docstring.

    Usage per physical batch: ``begin()``, forward(s) through :class:`BKModule`,
    ``losses.sum().backward()``, ``finish(out)`` which adds ``sum_i c_i grad_i`` into the
    tensors of ``out`` (one per trainable parameter, in ``self.params`` order).
    """

    def __init__(self, model: nn.Module, max_grad_norm: float):
        problems = bk_problems(model)
        if problems:
            raise PrivacyError("model cannot be clipped by grad_sample_mode='bk':\n  - " + "\n  - ".join(problems))
        self.max_grad_norm = float(max_grad_norm)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self.enabled = True
        self._handles = [m.register_forward_hook(self._fwd_hook) for m in model.modules()
                         if rule_for(m) is not None and any(p.requires_grad for p in m.parameters(recurse=False))]
        self.per_sample_norms: torch.Tensor | None = None
        self.begin()

    def begin(self) -> None:
        self.uses: list[_Use] = []
        self.count: dict[nn.Module, int] = {}

    def _fwd_hook(self, module, inputs, output):
        if not (self.enabled and torch.is_grad_enabled() and module.training):
            return None
        use = _Use(module, inputs[0].detach())  # kept in the forward's precision until finish
        self.uses.append(use)
        self.count[module] = self.count.get(module, 0) + 1
        if not output.requires_grad:
            # nothing upstream needs a gradient (e.g. an Embedding of labels); a fresh leaf
            # lets the output gradient of this layer reach the hook all the same
            output = output.detach().requires_grad_(True)
        output.register_hook(lambda g, use=use: setattr(use, "g", g.detach()))
        return output

    def _batch_size(self) -> int:
        sizes = {u.a.shape[0] for u in self.uses if u.g is not None}
        if not sizes:
            raise PrivacyError("bk: the backward reached no registered layer (model in eval mode, or "
                               "the loss does not depend on the privatised model?)")
        if len(sizes) > 1:
            raise PrivacyError(f"bk: layers saw batches of sizes {sorted(sizes)} in one step; every use of "
                               "the model must see the same records, paired row by row")
        return sizes.pop()

    def finish(self, out: list[torch.Tensor]) -> None:
        """Clip per sample and add the clipped sum into ``out``, in full float32 whatever the
        precision of the forward (autocast's bf16 activations and gradients are upcast): the
        norm bounded is the norm of what is summed."""
        # a rule may run the layer itself (functorch_grad_sample): hooks off
        with self.disabled(), full_float32():
            self._finish(out)
        self.begin()

    def _finish(self, out: list[torch.Tensor]) -> None:
        n = self._batch_size()
        norm2 = None
        single, shared = [], {}
        for u in self.uses:
            if u.g is None:
                continue
            u.a, u.g = upcast(u.a), upcast(u.g)
            rule = rule_for(u.module)
            if self.count[u.module] > 1 or rule.norm2 is None:
                # instantiate; uses of one module are summed BEFORE the norm (exact under reuse)
                acc = shared.setdefault(u.module, {})
                for p, gs in rule.grad_sample(u.module, u.a, u.g).items():
                    acc[p] = gs if p not in acc else acc[p] + gs
                continue
            n2, cache = rule.norm2(u.module, u.a, u.g)
            norm2 = n2 if norm2 is None else norm2 + n2
            single.append((u, cache))
        for acc in shared.values():
            for gs in acc.values():
                n2 = gs.reshape(n, -1).pow(2).sum(1)
                norm2 = n2 if norm2 is None else norm2 + n2
        norms = norm2.clamp_min(0).sqrt()
        self.per_sample_norms = norms.detach()
        w = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for u, cache in single:
            for p, s in rule_for(u.module).clipped_sum(u.module, u.a, u.g, w.to(u.g.dtype), cache).items():
                out[self._index[id(p)]] += s
        for acc in shared.values():
            for p, gs in acc.items():
                out[self._index[id(p)]] += torch.tensordot(w.to(gs.dtype), gs, dims=1)

    @contextlib.contextmanager
    def disabled(self):
        """Forward/backward passes inside record nothing (outside the private step)."""
        prev, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = prev

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class BKModule(nn.Module):
    """Wraps the model for ``bk``: while training with autograd on, the forward runs with the
    parameters detached (step 1 of the module docstring); the hooks of :class:`BKClipper` do
    the rest. Calling it several times in one step (real and fake batches) is supported."""

    def __init__(self, model: nn.Module, clipper: BKClipper):
        super().__init__()
        self._module = model
        self._clipper = clipper

    def forward(self, *args, **kwargs) -> Any:
        if not (self.training and torch.is_grad_enabled() and self._clipper.enabled):
            return self._module(*args, **kwargs)
        flags = [(p, p.requires_grad) for p in self._clipper.params]
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            return self._module(*args, **kwargs)
        finally:
            for p, f in flags:
                p.requires_grad_(f)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._module, name)
