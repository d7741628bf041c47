"""Per-sample steps shared by the index-loop kernels (dense, sparse, Hessian).

Each index-loop kernel works one sample at a time: it forms the sample's K
logits (from a dense row or from a CSR row's non-zeros), then calls
:func:`sample_softmax` for the maximum, log-sum-exp, probabilities and
targets, and then writes out its own delta_kj term-by-term part.  All
buffers are float64 and of length K.  Reduction loops only read memory (see
:mod:`fastsoftmax._indexloop`).
"""

from __future__ import annotations

import math

from ._jit import serial_kernel
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
def sample_hessian_coef(p, t, u, h):
    """``h_j = sum_j' s p_j (delta_jj' - p_j') u_j'`` for one sample, with
    ``s = sum_k t_k`` (see :mod:`fastsoftmax._hessian_indexloop`), into ``h`` (K,)."""
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

    A zero target adds nothing, even for a -inf logit.
    """
    for k in range(z.shape[0]):
        if t[k] != 0.0:
            loss -= w * t[k] * ((z[k] - zmax) - log_s)
    return loss
