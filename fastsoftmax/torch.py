"""PyTorch autograd for a network's output layer: :func:`linear_cross_entropy`
and :class:`LinearCrossEntropyLoss` (needs ``torch``: ``pip install 'fastsoftmax[torch]'``).

Drop-in replacements for ``torch.nn.functional.linear_cross_entropy`` and
``torch.nn.LinearCrossEntropyLoss`` (same arguments, names, order, defaults and
results) on CPU tensors, computed by :func:`fastsoftmax.linear_cross_entropy`:
the loss and the gradients for the input, the weights and the bias in one
pass, without an (N, C) logits tensor kept for backward.  Two extra
keyword-only options, ``z_loss`` and ``softcap``, have no PyTorch counterpart.

How it runs
-----------
The forward pass calls the NumPy entry point on views of the tensors' memory
(no copy; non-contiguous tensors are read through their strides) and keeps
the gradients that autograd will ask for (``ctx.needs_input_grad``); the
backward pass multiplies them by the incoming gradient and returns them in
the tensors' dtype.  float16 tensors are computed in float32 (one float32
copy of each operand; sums accumulate in float64 as for any float32 input)
and their gradients are rounded once, in backward.  bfloat16 tensors too,
unless the CPU has bfloat16 hardware (Intel AMX, or the AVX-512 BF16
instructions of AMD Zen 4 and of Intel's Cooper Lake and Sapphire Rapids
and later Xeons): then PyTorch's
bfloat16 matmuls compute the products, by tiles, and fastsoftmax the
softmax between them (:mod:`fastsoftmax._torch_head`): logits and logit
gradients are rounded to bfloat16, as in PyTorch's own bfloat16 path, and
dX and dW are made in bfloat16 (soft-capping keeps the float32 path).
There, ``reduction="none"`` with an incoming gradient whose entries differ
recomputes dW and db on the float32 path (float32 copies of X and W).

Costs to know about:

- The gradients are computed in the forward pass even when no backward
  follows (under ``torch.no_grad()`` too): the loss alone costs as much as
  loss and gradients.  Gradients that nothing requires are dropped at once.
- ``reduction="none"``: the loss is a vector; backward with an incoming
  gradient whose entries are all equal (``loss.sum()``, ``loss.mean()``)
  costs nothing more, but any other incoming gradient ``g`` needs the weights'
  and bias's gradients ``sum_i g_i dloss_i/dW`` recomputed: one more call of
  the kernel with ``sample_weight=g`` (two when ``g`` has entries of both
  signs: its positive and negative parts separately).  The input's gradient
  never needs the recomputation (row i of it depends on loss i only).
- Double backward (``create_graph=True``) is not supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import _dispatch as policy
from . import linear_cross_entropy as numpy_linear_cross_entropy
from ._torch_arrays import as_numpy, as_tensor, check_tensor, compute_dtype
from ._torch_head import fast_bfloat16_products, head_sums
from ._validation import (LOSS_REDUCTIONS, Targets, check_extra_options, check_options,
                          check_targets)

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]

REDUCTIONS = ("mean", "sum", "none")


@dataclass
class Spec:
    """A validated call: what the forward and backward passes need besides the tensors."""

    reduction: str
    compute: torch.dtype  # the kernels' dtype
    out: torch.dtype  # the tensors' dtype, of the loss and the gradients
    unbatched: bool  # input of shape (in_features,)
    y: np.ndarray  # targets, (m,) class indices or (m, C) probabilities
    kw: dict = field(default_factory=dict)  # keywords of the NumPy entry point besides b
    #: "" normally; "empty" when no sample counts (none given, or a mean over
    #: ignored samples only); "zero-weight" for a mean over kept samples whose
    #: classes all have weight zero (PyTorch's 0/0: NaN gradients but for ignored rows)
    degenerate: str = ""
    #: the validated targets when PyTorch's bfloat16 products compute the call
    #: (:mod:`fastsoftmax._torch_head`), else None (the NumPy entry point does)
    head: Targets | None = None


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: object | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``input @ linear_weight.T + linear_bias`` against ``target``, differentiable.

    The same as ``torch.nn.functional.linear_cross_entropy`` (and so as
    ``F.cross_entropy(F.linear(input, linear_weight, linear_bias), target,
    ...)``) on CPU tensors, computed by :func:`fastsoftmax.linear_cross_entropy`.

    Parameters
    ----------
    input : Tensor, shape (N, in_features) or (in_features,)
        The layer's input, float32, float64, bfloat16 or float16 (float16
        computed in float32, bfloat16 too unless the CPU has bfloat16 matrix
        units: see the module docstring).  As in PyTorch, only these two
        shapes: for a (B, T, in_features) batch pass ``input.flatten(0, -2)``
        and ``target.flatten()``.
    linear_weight : Tensor, shape (C, in_features)
        Weights of the C classes, in input's dtype.
    target : Tensor, shape (N,) or () of class indices, or (N, C) or (C,) of class probabilities
        Integer class indices in ``[0, C)`` (or ``ignore_index``); a target
        of the logits' shape is read as probabilities, as PyTorch does.
    linear_bias : Tensor, shape (C,), optional
        Bias of the logits, in input's dtype.
    weight : Tensor, shape (C,), optional
        Per-class weights (PyTorch's ``weight``): under ``reduction="mean"``
        with class indices the sum is divided by the total weight of the
        kept samples' classes.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns the per-sample losses, shape (N,) (or ()).
    ignore_index : int, optional
        Class-index targets equal to it add nothing and get zero gradient;
        ``None`` means -100 for class-index targets (PyTorch's default).
        Not allowed with probability targets.
    label_smoothing : float in [0, 1], default 0
        Targets become ``(1 - eps) t + eps / C``.
    options : LinearCrossEntropyOptions, optional
        PyTorch's chunking options: accepted for compatibility and not used
        (the kernels choose their own tiles).
    z_loss : float, default 0
        Adds ``z_loss * logsumexp(logits)**2`` per sample (fastsoftmax's
        extra option).
    softcap : float, optional
        Logits become ``softcap * tanh(logits / softcap)`` before the loss
        (fastsoftmax's extra option).

    Returns
    -------
    Tensor
        A scalar in input's dtype, or the (N,) per-sample losses under
        ``reduction="none"``.  As in PyTorch, a mean over no sample, or over
        samples that are all ignored, is NaN with zero gradients, and a mean
        over samples whose classes all have weight zero is NaN with NaN
        gradients (0/0) except for ignored rows.

    Raises
    ------
    TypeError
        Arguments that are not CPU tensors (CUDA, meta... tensors are named
        with their device), unsupported or mismatched dtypes, class
        indices that are not integers.
    ValueError
        Wrong shapes or dimensions, an unknown ``reduction``, ``ignore_index``
        with probability targets, a target or class weight that requires
        grad, and whatever :func:`fastsoftmax.linear_cross_entropy` refuses
        (labels out of range, options out of range).

    Examples
    --------
    >>> import torch
    >>> from fastsoftmax.torch import linear_cross_entropy
    >>> x = torch.ones(2, 3, requires_grad=True)
    >>> w = torch.zeros(4, 3, requires_grad=True)
    >>> loss = linear_cross_entropy(x, w, torch.tensor([0, 3]))
    >>> round(loss.item(), 6)  # log(4)
    1.386294
    >>> loss.backward(); x.grad  # all logits equal: no gradient for the input
    tensor([[0., 0., 0.],
            [0., 0., 0.]])
    """
    spec = prepare(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                   label_smoothing, z_loss, softcap)
    return LinearCrossEntropyFunction.apply(input, linear_weight, linear_bias, spec)


def prepare(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
            label_smoothing, z_loss, softcap) -> Spec:
    """Check the tensors (device, dtype, shape) and build the call's :class:`Spec`."""
    for name, t in (("input", input), ("linear_weight", linear_weight), ("target", target),
                    ("linear_bias", linear_bias), ("weight", weight)):
        if t is not None or name in ("input", "linear_weight", "target"):
            check_tensor(name, t)
    compute = compute_dtype(input)
    for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} and input {input.dtype}: "
                            f"they must have the same dtype")
    if input.dim() not in (1, 2):
        raise ValueError(
            f"input must have shape (N, in_features) or (in_features,), got "
            f"{tuple(input.shape)}; for more leading dimensions pass input.flatten(0, -2) "
            f"and target.flatten()")
    if linear_weight.dim() != 2:
        raise ValueError(f"linear_weight must have shape (C, in_features), got "
                         f"{tuple(linear_weight.shape)} (K-dimensional losses are not supported)")
    C, n = linear_weight.shape
    if input.shape[-1] != n:
        raise ValueError(f"input has {input.shape[-1]} features and linear_weight {n} "
                         f"(shapes {tuple(input.shape)} and {tuple(linear_weight.shape)})")
    for name, t in (("linear_bias", linear_bias), ("weight", weight)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"{name} must have shape ({C},), got {tuple(t.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if torch.is_grad_enabled():
        for name, t in (("target", target), ("weight", weight)):
            if t is not None and t.requires_grad:
                raise ValueError(f"{name} requires grad: fastsoftmax.torch gives gradients for "
                                 f"input, linear_weight and linear_bias only")

    unbatched = input.dim() == 1
    batch = tuple(input.shape[:-1])
    m = 1 if unbatched else input.shape[0]
    probabilities = tuple(target.shape) == (*batch, C)
    if probabilities:
        if not target.is_floating_point():
            raise TypeError(f"target has the logits' shape {(*batch, C)}, so it holds class "
                            f"probabilities, which must be floating point (got {target.dtype})")
        if ignore_index is not None:
            raise ValueError("ignore_index cannot be given when target holds class probabilities")
        y = as_numpy(target.reshape(m, C), compute)
    else:
        if tuple(target.shape) != batch:
            raise ValueError(
                f"target must have shape {batch} (class indices) or {(*batch, C)} (class "
                f"probabilities) for input of shape {tuple(input.shape)}, got {tuple(target.shape)}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"class-index targets must be integers, got {target.dtype}")
        y = as_numpy(target.reshape(m), torch.int64)  # a copy only for other integer dtypes

    kw: dict = {}
    if weight is not None:
        kw["class_weight"] = as_numpy(weight, compute)
    if reduction != "mean":
        kw["reduction"] = reduction
    if not probabilities:
        kw["ignore_index"] = -100 if ignore_index is None else ignore_index
    if label_smoothing:
        kw["label_smoothing"] = label_smoothing
    if z_loss:
        kw["z_loss"] = z_loss
    if softcap is not None:
        kw["softcap"] = softcap
    degenerate = "empty" if m == 0 else ""
    if reduction == "mean" and not probabilities and m:
        degenerate = zero_total_weight(y, kw.get("class_weight"), kw["ignore_index"], C)
    head = None
    if input.dtype == torch.bfloat16 and policy.bfloat16_head(
            C, softcap is not None, bool(degenerate), fast_bfloat16_products()):
        head = head_targets(y, m, C, kw)
    return Spec(reduction, compute, input.dtype, unbatched, y, kw, degenerate, head)


def head_targets(y: np.ndarray, m: int, C: int, kw: dict) -> Targets:
    """The targets validated as :func:`fastsoftmax.linear_cross_entropy` validates
    them (same checks, same messages), for :func:`fastsoftmax._torch_head.head_sums`."""
    eps = check_options(kw.get("label_smoothing", 0.0), kw.get("ignore_index"),
                        kw.get("reduction", "mean"), LOSS_REDUCTIONS)
    zl, cap = check_extra_options(kw.get("z_loss", 0.0), None)
    return check_targets(y, m, C, np.dtype(np.float32), sample_weight=None, eps=eps,
                         ignore_index=kw.get("ignore_index"),
                         reduction=kw.get("reduction", "mean"), samples="X",
                         class_weight=kw.get("class_weight"), zl=zl, cap=cap)


def zero_total_weight(labels: np.ndarray, class_weight, ignore_index, C: int) -> str:
    """Whether a mean over class-index targets divides by zero: "empty" when
    every sample is ignored, "zero-weight" when every kept sample's class has
    weight zero, else "" (labels out of range are left to the kernels'
    validation, which names them)."""
    kept = labels[labels != ignore_index] if isinstance(ignore_index, (int, np.integer)) else labels
    if kept.size == 0:
        return "empty"
    if class_weight is None or kept.min() < 0 or kept.max() >= C:
        return ""
    return "" if np.any(class_weight[kept.astype(np.intp)]) else "zero-weight"


def layer_arrays(spec: Spec, input, linear_weight, linear_bias) -> tuple:
    """``(X (m, n), W (C, n), b (C,) or None)``: the layer's tensors as NumPy
    arrays in ``spec.compute`` (without copies when the dtype is kept)."""
    cd = spec.compute
    X = as_numpy(input.reshape(-1, linear_weight.shape[1]), cd)
    W = as_numpy(linear_weight, cd)
    return X, W, None if linear_bias is None else as_numpy(linear_bias, cd)


def compute(spec: Spec, input, linear_weight, linear_bias, needs) -> tuple:
    """``(loss, [dX, dW, db])`` of the layer: the loss as the kernel returns it
    and the gradients as tensors in ``spec.compute`` (None where ``needs``, the
    three inputs' ``needs_input_grad``, says no), the unreduced-sum gradients
    under ``reduction="none"``; on PyTorch's bfloat16 products
    (``spec.head``) dX and dW in bfloat16."""
    cd = spec.compute
    C, n = linear_weight.shape
    if spec.head is not None:  # bfloat16 on PyTorch's products, gradients in bfloat16
        X = input.detach().reshape(-1, n)
        losses = np.zeros(X.shape[0]) if spec.reduction == "none" else None
        b64 = np.zeros(C) if linear_bias is None else as_numpy(linear_bias, torch.float64)
        loss, dX, dW, db = head_sums(X, linear_weight.detach(), b64, spec.head,
                                     want_dx=needs[0], want_dw=needs[1],
                                     want_db=linear_bias is not None and needs[2],
                                     losses=losses)
        return (loss if losses is None else losses), \
            [dX, dW, None if db is None else as_tensor(db, cd)]
    X, W, b = layer_arrays(spec, input, linear_weight, linear_bias)
    kw = dict(spec.kw)
    if b is not None:
        kw["b"] = b
    if spec.degenerate:
        m = X.shape[0]
        loss = {"mean": float("nan"), "sum": 0.0, "none": np.zeros(m)}[spec.reduction]
        grads = [np.zeros((m, n)), np.zeros((C, n)), np.zeros(C)]
        if spec.degenerate == "zero-weight":  # 0/0 as in PyTorch; ignored rows stay 0
            grads[0][spec.y != spec.kw["ignore_index"]] = np.nan
            grads[1][:] = grads[2][:] = np.nan
    else:
        loss, *grads = numpy_linear_cross_entropy(X, W, spec.y, **kw)
    return loss, [as_tensor(g, cd) if need else None for g, need in zip(grads + [None], needs)]


class LinearCrossEntropyFunction(torch.autograd.Function):
    """The autograd node: ``forward(input, linear_weight, linear_bias, spec)``,
    gradients for the three tensors (``spec`` is a :class:`Spec`)."""

    @staticmethod
    def forward(ctx, input, linear_weight, linear_bias, spec: Spec):
        needs = ctx.needs_input_grad[:3]
        loss, ctx.grads = compute(spec, input, linear_weight, linear_bias, needs)
        ctx.spec = spec
        # the inputs, for a second backward (retain_graph=True; the first one
        # hands the gradients over) and for per-sample output gradients
        ctx.save_for_backward(input, linear_weight, linear_bias)
        if spec.reduction != "none":
            return torch.tensor(float(loss), dtype=spec.out)
        out = torch.tensor(np.asarray(loss), dtype=spec.out)
        return out.reshape(()) if spec.unbatched else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        spec: Spec = ctx.spec
        grads, ctx.grads = ctx.grads, None
        if grads is None:  # a second backward through a retained graph: computed again
            grads = compute(spec, *ctx.saved_tensors, ctx.needs_input_grad[:3])[1]
        # The gradients are this call's own now (ctx no longer holds them): they
        # are scaled in place and handed to autograd, which can then keep them
        # as .grad without a copy (the layer's extra memory stays at about the
        # gradients' own size).
        dX, dW, db = grads
        if spec.reduction != "none":
            g = grad.to(spec.compute)
            if not bool(g == 1):
                for t in (dX, dW, db):
                    if t is not None:
                        t.mul_(g)
            gX, gW, gb = dX, dW, db
        else:
            g = grad.detach().reshape(-1).to(torch.float64)
            gX = None if dX is None else dX.mul_(g.to(spec.compute)[:, None])
            gW, gb = sample_weighted(ctx, g, dW, db) if (dW is not None or db is not None) \
                else (None, None)
        if gX is not None and spec.unbatched:
            gX = gX.reshape(-1)
        return (*(None if t is None else t.to(spec.out) for t in (gX, gW, gb)), None)


def sample_weighted(ctx, g: torch.Tensor, dW, db):
    """``sum_i g_i dloss_i/dW`` and ``.../db`` for ``reduction="none"`` (None where
    not needed): the forward's gradients scaled when the entries of ``g`` are all
    equal, else recomputed with ``sample_weight`` (positive and negative parts
    of ``g`` separately: sample weights are non-negative)."""
    spec: Spec = ctx.spec
    if g.numel() == 0 or spec.degenerate or bool((g == g[0]).all()):
        s = g[0].to(spec.compute) if g.numel() else 0.0
        return (None if dW is None else dW.mul_(s)), (None if db is None else db.mul_(s))
    if not bool(torch.isfinite(g).all()):
        nan = float("nan")
        return (None if dW is None else torch.full_like(dW, nan)), \
               (None if db is None else torch.full_like(db, nan))
    X, W, b = layer_arrays(spec, *ctx.saved_tensors)
    total_W, total_b = weighted_gradients(X, W, b, spec.y, spec.kw, g.numpy(), spec.compute)
    return (None if dW is None else total_W), (None if db is None else total_b)


def weighted_gradients(X: np.ndarray, W: np.ndarray, b: np.ndarray | None, y: np.ndarray,
                       kw: dict, g: np.ndarray, compute: torch.dtype):
    """``(sum_i g_i dloss_i/dW, sum_i g_i dloss_i/db)`` as tensors in ``compute``
    (the second None without ``b``), for any finite real ``g`` of shape (m,):
    :func:`fastsoftmax.linear_cross_entropy` with ``reduction="sum"`` and
    ``sample_weight`` the positive part of ``g``, minus the same with its
    negative part (a part that is all zero is skipped); ``kw`` are the call's
    other keywords."""
    kw = dict(kw, reduction="sum")
    if b is not None:
        kw["b"] = b
    total_W = torch.zeros(W.shape, dtype=compute)
    total_b = None if b is None else torch.zeros(b.shape, dtype=compute)
    for sign, sw in ((1.0, np.maximum(g, 0.0)), (-1.0, np.maximum(-g, 0.0))):
        if not sw.any():
            continue
        _, _, part_W, *part_b = numpy_linear_cross_entropy(X, W, y, sample_weight=sw, **kw)
        total_W.add_(as_tensor(part_W, compute), alpha=sign)
        if total_b is not None:
            total_b.add_(as_tensor(part_b[0], compute), alpha=sign)
    return total_W, total_b


class LinearCrossEntropyLoss(nn.Module):
    """A linear layer followed by cross-entropy, as ``torch.nn.LinearCrossEntropyLoss``
    (same arguments), computed by :func:`linear_cross_entropy`.

    ``self.linear`` is the ``nn.Linear(in_features, num_classes, bias=bias)``
    whose weight (and bias) the loss trains; ``weight`` (per-class weights)
    is a buffer.  ``out_features`` (K-dimensional losses) must be ``()``;
    ``options`` is accepted and not used.  ``forward(input, target)``
    returns :func:`linear_cross_entropy` of them.
    """

    def __init__(self, in_features: int, num_classes: int, *, out_features: tuple = (),
                 bias: bool = False, device=None, dtype=None, reduction: str = "mean",
                 weight: torch.Tensor | None = None, ignore_index: int | None = None,
                 label_smoothing: float = 0.0, options: object | None = None,
                 z_loss: float = 0.0, softcap: float | None = None) -> None:
        super().__init__()
        if tuple(out_features) != ():
            raise ValueError(f"out_features={tuple(out_features)}: K-dimensional losses are "
                             f"not supported by fastsoftmax.torch")
        if weight is not None and tuple(weight.shape) != (num_classes,):
            raise ValueError(f"weight must have shape ({num_classes},), got {tuple(weight.shape)}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.num_classes = num_classes
        self.out_features = ()
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.options = options
        self.z_loss = z_loss
        self.softcap = softcap
        self.register_buffer("weight", weight)
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(
            input, self.linear.weight, target, linear_bias=self.linear.bias, weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap)

    def extra_repr(self) -> str:
        return (f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
                f"bias={self.linear.bias is not None}, reduction={self.reduction}, "
                f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
                f"z_loss={self.z_loss}, softcap={self.softcap}")
