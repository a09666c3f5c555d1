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
``bk``        dpmed's single-pass exact clipping (book-keeping with a per-layer, shape-based choice of ghost
              or instantiated norms; see the section at the end of this file). Not Opacus
              code, but Opacus' optimizer (noise, scaling) and accountant. Fastest on CPU.

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

SUPPORTED_MODES = ("hooks", "functorch", "ew", "ghost", "bk")


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
    if grad_sample_mode in ("ghost", "bk") and criterion is None:
        raise PrivacyError(f"grad_sample_mode={grad_sample_mode!r} needs the criterion (its backward does the clipping)")
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
        if grad_sample_mode == "bk":
            out_model, out_opt, out_crit, out_loader = _make_private_bk(
                model, optimizer, data_loader, noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm, poisson_sampling=poisson_sampling, loss=loss,
                engine=engine, secure_mode=secure_mode, noise_generator=noise_generator,
            )
        elif grad_sample_mode == "ghost":
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


# =====================================================================================
# "bk": single-pass exact per-sample clipping (book-keeping + mixed ghost norms)
# =====================================================================================
#
# Opacus' modes either materialise every per-sample gradient (hooks/functorch/ew: N x P floats,
# written, normed and re-read by the clip) or run a second backward pass (ghost). "bk" does
# neither:
#
# 1. forward with the parameters *detached from autograd* (requires_grad off during the forward,
#    input requires grad instead), so the backward computes activation gradients only;
# 2. a hook on every layer output receives the output gradient g_i; with the stored input a_i the
#    layer's per-sample gradient norm is computed exactly, choosing per layer (from shapes only)
#    the cheaper of
#      - instantiation  ||G_i||^2 with G_i = g_i^T unfold(a_i)      cost ~ L * p * o
#      - ghost (Gram)   sum_{l,l'} (a_l . a_l') (g_l . g_l')         cost ~ L^2 * (p + o)
#    (L output positions, p = C_in k^2, o = C_out; "mixed ghost"). GroupNorm per-sample
#    gradients are tiny and come from reductions of a_i and g_i (no normalised copy);
# 3. after the backward, clip factors c_i = min(1, C / (||grad_i|| + 1e-6)) over all layers
#    (flat clipping, same formula as Opacus), and each layer's clipped sum sum_i c_i G_i is
#      - c @ G for instantiated layers whose G is no larger than their stored input (kept from
#        step 2, so the layer's weight gradient is never computed twice), else
#      - ONE ordinary weight-gradient call with the output gradient (or the input, whichever is
#        smaller) rescaled per sample -- the weight gradient the skipped standard backward would
#        have computed anyway.
#    The batch-mean factor n of per-sample gradients is applied to these n scalars, not to
#    every output gradient.
#
# Noise, scaling by the expected batch size and accounting are Opacus' own
# (DPOptimizerFastGradientClipping + the PrivacyEngine accountant hook). Exactness against a
# per-sample loop is tested in tests/test_models.py.


def _conv2d_norm2_unfold(a, g, conv):
    import torch.nn.functional as F

    n, o = g.shape[:2]
    cols = F.unfold(a, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    return torch.bmm(g.reshape(n, o, -1), cols.transpose(1, 2)).pow(2).sum(dim=(1, 2))


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


def _conv2d_norm2_grouped(a, g, conv):
    return _conv2d_grad_sample(a, g, conv).reshape(a.shape[0], -1).pow(2).sum(1)


def _conv2d_norm2_gram(a, g, conv):
    # ghost norm: ||sum_l g_l a_l^T||^2 = sum_{l,l'} (a_l . a_l') (g_l . g_l')
    import torch.nn.functional as F

    n, o = g.shape[:2]
    cols = F.unfold(a, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    gf = g.reshape(n, o, -1)
    return (torch.bmm(cols.transpose(1, 2), cols) * torch.bmm(gf.transpose(1, 2), gf)).sum(dim=(1, 2))


_CONV_NORM_METHODS = {"grouped": _conv2d_norm2_grouped, "gram": _conv2d_norm2_gram, "unfold": _conv2d_norm2_unfold}


def conv_norm_method(a_shape, g_shape, kernel_size) -> str:
    """Which exact per-sample conv norm to use, from shapes alone.

    A deterministic cost model, not timing: the methods round differently, and a choice that
    depended on machine load would make two runs of the same job differ in the last bits (and,
    compounded over training, in the scores). Ghost/Gram costs ~ L^2 (p + o), instantiation
    ~ L p o (L output positions, p = C_in k^2, o = C_out); the grouped weight-gradient call is
    the fastest instantiation on CPU. The batch size cancels, so every batch uses one method.
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
    """Whether an instantiated layer keeps its per-sample gradients until the clip.

    Kept, the clipped sum is ``c @ G`` (n * p * o multiply-adds) instead of a second
    weight-gradient call over all L positions (n * L * p * o). Kept only while they are no larger
    than the layer input that is stored anyway, so memory stays within 2x of the non-private
    backward. Shape-only, like :func:`conv_norm_method`.
    """
    per_sample_input = 1
    for d in a_shape[1:]:
        per_sample_input *= int(d)
    params = 1
    for d in weight_shape:
        params *= int(d)
    return params <= per_sample_input


def _conv2d_norm2(a: torch.Tensor, g: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Exact per-sample squared gradient norm of a Conv2d weight (method: :func:`conv_norm_method`)."""
    return _CONV_NORM_METHODS[conv_norm_method(a.shape, g.shape, conv.kernel_size)](a, g, conv)


class _BKState:
    def __init__(self, model: nn.Module, max_grad_norm: float):
        from dpmed.models.acs import ACSConv3d

        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self.layers = []
        self.params = [p for p in model.parameters() if p.requires_grad]
        for m in model.modules():
            own = [p for p in m.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if type(m) not in (nn.Conv2d, nn.Linear, nn.GroupNorm, ACSConv3d):
                raise PrivacyError(f"grad_sample_mode='bk' does not support {type(m).__name__}")
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise PrivacyError("grad_sample_mode='bk' supports Conv2d with groups=1 only")
            self.layers.append(m)
            m.register_forward_hook(self._fwd_hook)
        self.records = []  # (module, activation, grad_output) per forward use
        self.norm2 = None
        self.batch = 0
        self.enabled = True

    def _fwd_hook(self, module, inputs, output):
        if not (self.enabled and torch.is_grad_enabled() and module.training):
            return
        a = inputs[0].detach()
        rec = [module, a, None]
        self.records.append(rec)
        if output.requires_grad:
            output.register_hook(lambda g, rec=rec: self._bwd(rec, g))

    def _bwd(self, rec, g):
        from dpmed.models.acs import ACSConv3d, compute_acs_grad_sample

        m, a = rec[0], rec[1]
        n = g.shape[0]
        # The loss is the batch mean, so per-sample gradients are n * (backprop gradient). The
        # factor n is applied to the few per-sample scalars in finish(), not to every g here.
        g = g.detach()
        rec[2] = g
        if self.norm2 is None:
            self.norm2 = torch.zeros(n, dtype=g.dtype, device=g.device)
        if isinstance(m, nn.Conv2d):
            if (conv_norm_method(a.shape, g.shape, m.kernel_size) == "grouped"
                    and keep_grad_sample(a.shape, m.weight.shape)):
                gs = _conv2d_grad_sample(a, g, m)
                rec.append(gs)
                self.norm2 += gs.reshape(n, -1).pow(2).sum(1)
            else:
                self.norm2 += _conv2d_norm2(a, g, m)
            if m.bias is not None:
                self.norm2 += g.sum(dim=(2, 3)).pow(2).sum(1)
        elif isinstance(m, nn.Linear):
            a2, g2 = a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])
            if a2.shape[1] == 1:
                self.norm2 += a2.pow(2).sum((1, 2)) * g2.pow(2).sum((1, 2))
            else:
                self.norm2 += torch.bmm(g2.transpose(1, 2), a2).pow(2).sum((1, 2))
            if m.bias is not None:
                self.norm2 += g2.sum(1).pow(2).sum(1)
        elif isinstance(m, nn.GroupNorm):
            gw, gb = _group_norm_grad_sample(a, g, m)
            rec.append((gw, gb))
            self.norm2 += gw.pow(2).sum(1) + gb.pow(2).sum(1)
        elif isinstance(m, ACSConv3d):
            gs = compute_acs_grad_sample(m, [a], g)
            rec.append(gs)
            for t in gs.values():
                self.norm2 += t.reshape(n, -1).pow(2).sum(1)

    def finish(self) -> None:
        """Clip per sample and write sum_i c_i grad_i into p.grad."""
        if self.norm2 is None:
            raise PrivacyError("bk: backward produced no per-sample gradients (was the model in train mode?)")
        n = self.norm2.shape[0]
        norms = self.norm2.clamp_min(0).sqrt() * n
        self.per_sample_norms = norms
        c = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        w = c * n  # weight of each sample's *backprop* gradient in the clipped sum
        for p in self.params:
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad
        for rec in self.records:
            m, a, g = rec[0], rec[1], rec[2]
            if g is None:
                continue
            if isinstance(m, nn.Conv2d):
                if len(rec) > 3:  # kept per-sample gradients
                    m.weight.grad += torch.tensordot(w, rec[3], dims=1)
                elif a.numel() < g.numel():  # scale whichever side is smaller
                    m.weight.grad += torch.nn.grad.conv2d_weight(
                        a * w.view(-1, 1, 1, 1), m.weight.shape, g,
                        stride=m.stride, padding=m.padding, dilation=m.dilation)
                else:
                    m.weight.grad += torch.nn.grad.conv2d_weight(
                        a, m.weight.shape, g * w.view(-1, 1, 1, 1),
                        stride=m.stride, padding=m.padding, dilation=m.dilation)
                if m.bias is not None:
                    m.bias.grad += w @ g.sum(dim=(2, 3))
            elif isinstance(m, nn.Linear):
                g2 = g.reshape(n, -1, g.shape[-1]) * w.view(-1, 1, 1)
                m.weight.grad += g2.reshape(-1, g2.shape[-1]).t() @ a.reshape(-1, a.shape[-1])
                if m.bias is not None:
                    m.bias.grad += g2.reshape(-1, g2.shape[-1]).sum(0)
            elif isinstance(m, nn.GroupNorm):
                gw, gb = rec[3]
                m.weight.grad += w @ gw
                m.bias.grad += w @ gb
            else:  # ACSConv3d: per-sample gradients were instantiated
                for p, t in rec[3].items():
                    p.grad += torch.einsum("n,n...->...", w, t)
        self.records = []
        self.norm2 = None


def _group_norm_grad_sample(a: torch.Tensor, g: torch.Tensor, gn: nn.GroupNorm):
    """Per-sample (weight, bias) gradients of a GroupNorm: sum over positions of g * xhat and g.

    With xhat = (a - mean) * rstd per (sample, group): sum g*xhat = rstd * (sum g*a - mean * sum g),
    so only reductions are needed (no normalised copy of a). Mean and variance are accumulated
    in float64 from per-channel sums, avoiding the cancellation of E[a^2] - mean^2 in float32.
    """
    n, ch = a.shape[:2]
    groups = gn.num_groups
    a3, g3 = a.reshape(n, ch, -1), g.reshape(n, ch, -1)
    positions = a3.shape[2] * (ch // groups)
    gb = g3.sum(2)
    ga = torch.einsum("ncl,ncl->nc", g3, a3)
    s1 = a3.sum(2).double().reshape(n, groups, -1).sum(2)
    s2 = torch.einsum("ncl,ncl->nc", a3, a3).double().reshape(n, groups, -1).sum(2)
    mean = s1 / positions
    var = (s2 / positions - mean * mean).clamp_min(0)
    rstd = (var + gn.eps).rsqrt()
    per_channel = ch // groups
    mean_c = mean.repeat_interleave(per_channel, dim=1)
    rstd_c = rstd.repeat_interleave(per_channel, dim=1)
    gw = (rstd_c * (ga.double() - mean_c * gb.double())).to(g.dtype)
    return gw, gb


class BKModule(nn.Module):
    """Model wrapper for ``grad_sample_mode='bk'`` (see the comment block above)."""

    def __init__(self, model: nn.Module, max_grad_norm: float):
        super().__init__()
        self._module = model
        self._bk = _BKState(model, max_grad_norm)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if not (self.training and torch.is_grad_enabled()):
            return self._module(x, *args, **kwargs)
        self._bk.records = []
        self._bk.norm2 = None
        x = x.detach().requires_grad_(True)
        flags = [(p, p.requires_grad) for p in self._module.parameters()]
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            return self._module(x, *args, **kwargs)
        finally:
            for p, f in flags:
                p.requires_grad_(f)

    def state_dict(self, *args, **kwargs):  # save/load like the bare model
        return self._module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self._module.load_state_dict(*args, **kwargs)


class _BKLossValue:
    def __init__(self, loss: torch.Tensor, state: _BKState):
        self.loss = loss
        self.state = state

    def backward(self):
        self.loss.backward()
        self.state.finish()

    def item(self):
        return self.loss.detach().item()

    def detach(self):
        return self.loss.detach()


class BKLoss:
    """Criterion for ``bk``: ``criterion(out, y).backward()`` runs the backward and the clipping."""

    def __init__(self, module: BKModule, criterion: PerSampleLoss):
        self.module = module
        self.criterion = criterion

    def __call__(self, input, target) -> _BKLossValue:
        return _BKLossValue(self.criterion(input, target), self.module._bk)


def _make_private_bk(model, optimizer, data_loader, *, noise_multiplier, max_grad_norm, poisson_sampling,
                     loss, engine, secure_mode, noise_generator):
    from opacus.data_loader import DPDataLoader
    from opacus.optimizers import DPOptimizerFastGradientClipping

    if poisson_sampling:
        data_loader = DPDataLoader.from_data_loader(
            data_loader, generator=engine.secure_rng if secure_mode else None
        )
    sample_rate = 1.0 / len(data_loader)
    expected_batch_size = int(len(data_loader.dataset) * sample_rate)
    wrapped = BKModule(model, max_grad_norm)
    dpo = DPOptimizerFastGradientClipping(
        optimizer, noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
        expected_batch_size=expected_batch_size, loss_reduction="mean",
        generator=engine.secure_rng if secure_mode else noise_generator, secure_mode=secure_mode,
    )
    dpo.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return wrapped, dpo, BKLoss(wrapped, loss), data_loader
