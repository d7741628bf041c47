"""Per-sample steps of the index-loop kernel (dense or CSR X, gradient or Hessian product).

The index-loop kernel works one sample at a time: it forms the sample's K
logits (:func:`row_logits`, from a dense row or from a CSR row's non-zeros),
then calls :func:`sample_softmax` for the maximum, log-sum-exp, probabilities
and targets, then writes out the delta_kj term-by-term part of what it computes,
which it adds to its chunk's slabs with :func:`add_row`.  All buffers are float64 and
of length K.  Reduction loops only read memory (see
:mod:`fastsoftmax._indexloop`).

X reaches the index-loop kernel either as a dense (m, n) array or as the
tuple ``(data, indices, indptr)`` of a CSR matrix; :func:`row_count`,
:func:`row_logits` and :func:`add_row` take either (numba picks the
implementation from the type, so each layout compiles only its own code).
"""

from __future__ import annotations

import math

from numba import types
from numba.extending import overload

from ._jit import OVERLOAD_OPTIONS, serial_kernel
from ._rowmath import target_value


@serial_kernel
def dense_logits(A, c, X, i, z):
    """Write ``z[j] = sum_l A[j, l] X[i, l] + c[j]`` for the K rows of ``A`` (K, n)."""
    K, n = A.shape
    for j in range(K):
        acc = 0.0
        for l in range(n):
            acc += A[j, l] * X[i, l]
        z[j] = acc + c[j]


@serial_kernel
def sparse_logits(A, c, data, indices, lo, hi, z):
    """Write ``z[j] = sum_q A[j, indices[q]] data[q] + c[j]`` over the non-zeros
    q in lo:hi of one CSR row, for the K rows of ``A`` (K, n)."""
    for j in range(A.shape[0]):
        acc = 0.0
        for q in range(lo, hi):
            acc += A[j, indices[q]] * data[q]
        z[j] = acc + c[j]


@serial_kernel
def kept_weight(labels, sw, i):
    """Sample ``i``'s weight (1.0 when ``sw`` is empty), or -1.0 when ignore_index drops it."""
    if labels.shape[0] > 0 and labels[i] < 0:
        return -1.0
    return sw[i] if sw.shape[0] > 0 else 1.0


@serial_kernel
def delta_coef(t, p, coef):
    """``coef[j] = sum_k t_k (p_j - delta_kj)`` for one sample, with the
    Kronecker delta written out (see :mod:`fastsoftmax._indexloop`)."""
    K = p.shape[0]
    for j in range(K):
        cj = 0.0
        for k in range(K):
            delta = 1.0 if k == j else 0.0
            cj += t[k] * (p[j] - delta)
        coef[j] = cj


@serial_kernel
def add_dense_row(slab, bias_slab, w, coef, X, i):
    """``slab[j, l] += w coef_j X[i, l]`` and ``bias_slab[j] += w coef_j`` (a chunk's slabs)."""
    for j in range(slab.shape[0]):
        wc = w * coef[j]
        bias_slab[j] += wc
        for l in range(slab.shape[1]):
            slab[j, l] += wc * X[i, l]


@serial_kernel
def add_sparse_row(slab, bias_slab, w, coef, data, indices, lo, hi):
    """:func:`add_dense_row` for the non-zeros q in lo:hi of one CSR row:
    ``slab[j, indices[q]] += w coef_j data[q]``."""
    for j in range(slab.shape[0]):
        wc = w * coef[j]
        bias_slab[j] += wc
        for q in range(lo, hi):
            slab[j, indices[q]] += wc * data[q]


def row_count(X):
    """The number of rows m of X, dense (m, n) or a CSR tuple ``(data, indices, indptr)``."""


def row_logits(A, c, X, i, z):
    """Write ``z[j] = sum_l A[j, l] x_il + c[j]`` for row i of X (dense or a CSR
    tuple), for the K rows of ``A`` (K, n)."""


def add_row(slab, bias_slab, w, coef, X, i):
    """``slab[j, l] += w coef_j x_il`` over row i of X (dense, or the non-zeros of
    a CSR tuple's row) and ``bias_slab[j] += w coef_j``."""


def _is_csr(X) -> bool:
    return isinstance(X, types.BaseTuple)


@overload(row_count, jit_options=OVERLOAD_OPTIONS)
def _row_count_impl(X):
    if _is_csr(X):
        return lambda X: X[2].shape[0] - 1
    return lambda X: X.shape[0]


@overload(row_logits, jit_options=OVERLOAD_OPTIONS)
def _row_logits_impl(A, c, X, i, z):
    if _is_csr(X):
        return lambda A, c, X, i, z: sparse_logits(A, c, X[0], X[1], X[2][i], X[2][i + 1], z)
    return lambda A, c, X, i, z: dense_logits(A, c, X, i, z)


@overload(add_row, jit_options=OVERLOAD_OPTIONS)
def _add_row_impl(slab, bias_slab, w, coef, X, i):
    if _is_csr(X):
        return lambda slab, bias_slab, w, coef, X, i: add_sparse_row(
            slab, bias_slab, w, coef, X[0], X[1], X[2][i], X[2][i + 1])
    return lambda slab, bias_slab, w, coef, X, i: add_dense_row(slab, bias_slab, w, coef, X, i)


@serial_kernel
def sample_hessian_coef(p, t, u, h):
    """``h_j = sum_j' s p_j (delta_jj' - p_j') u_j'`` for one sample, with
    ``s = sum_k t_k`` (see :mod:`fastsoftmax._indexloop`), into ``h`` (K,)."""
    K = p.shape[0]
    s = 0.0
    for k in range(K):
        s += t[k]
    for j in range(K):
        hj = 0.0
        for jp in range(K):
            delta = 1.0 if jp == j else 0.0
            coef = s * p[j] * (delta - p[jp])
            if coef != 0.0:  # zero (a class of probability 0) adds nothing, whatever u is
                hj += coef * u[jp]
        h[j] = hj


@serial_kernel
def soft_cap(z, cap, dz):
    """Soft-cap the logits in place, ``z_j <- cap tanh(z_j / cap)``, and write
    the derivative of the map, ``1 - tanh^2(z_j / cap) = 1 / cosh^2(z_j / cap)``,
    to ``dz`` (K,) (the second form does not cancel where tanh saturates)."""
    for j in range(z.shape[0]):
        x = z[j] / cap
        z[j] = cap * math.tanh(x)
        ch = math.cosh(x)
        dz[j] = 1.0 / (ch * ch)


@serial_kernel
def sample_softmax(z, p, t, labels, T, i, eps, inv_k):
    """Softmax and smoothed targets of sample ``i`` from its logits ``z`` (K,).

    Writes the probabilities ``p_ij = exp(z_ij - lse_i)`` into ``p`` and the
    targets ``t_ik`` (see :func:`fastsoftmax._rowmath.target_value`) into
    ``t``; returns ``(zmax, log_s)``, the largest logit and
    ``log sum_j exp(z_ij - zmax)``, so that ``log p_ik = (z_ik - zmax) - log_s``.
    """
    K = z.shape[0]
    zmax = z[0]
    for j in range(1, K):
        zmax = max(zmax, z[j])
    s = 0.0
    for j in range(K):
        s += math.exp(z[j] - zmax)
    log_s = math.log(s)
    for j in range(K):
        p[j] = math.exp(z[j] - zmax) / s
    for k in range(K):
        t[k] = target_value(labels, T, i, k, eps, inv_k)
    return zmax, log_s


@serial_kernel
def add_sample_loss(loss, w, t, z, zmax, log_s):
    """``loss - w sum_k t_ik log p_ik``, with log p_ik = (z_ik - zmax) - log_s.

    A zero target adds nothing, even for a -inf logit; a row whose log-sum-exp
    is not finite (a NaN or +inf logit, or every logit -inf) adds NaN even
    when all its targets are zero, as the other methods do.
    """
    loss += 0.0 * (zmax + log_s)  # 0, or NaN for a non-finite row
    for k in range(z.shape[0]):
        if t[k] != 0.0:
            loss -= w * t[k] * ((z[k] - zmax) - log_s)
    return loss
