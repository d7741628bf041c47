"""The Newton step from a reduced system of K - 1 classes, in one compiled call.

The softmax is unchanged when one vector is added to every row of [W | b],
so the Hessian of the loss part, H_L, vanishes along ``1_K kron u`` for every
u, and the Newton system ``(H_L + l2 D) s = -g`` (D = I_K kron D~, D~ the
identity on W's n columns and 0 on b's) splits in two.  Write the step
(K, n~) as ``s = 1 mu^T + U a`` with U = E - (1/K) 1 1^T (K, K - 1), E the
first K - 1 columns of I_K: U's columns are orthogonal to 1, and
H_L U = H_L E because H_L 1 = 0.  Then

* along 1: ``K l2 D~ mu = -sum_k g_k``, so ``mu = -mean_k g_k / l2`` on W's
  columns when l2 > 0; on b's columns (and everywhere when l2 = 0) the mean
  of g is zero, the objective is flat there, and mu = 0 (the step the
  Newton drivers keep, see :func:`fastsoftmax._newton._drop_null_directions`);
* off it: ``A a = -U^T g`` with
  ``A = E^T H_L E + l2 (I_{K-1} - (1/K) 1 1^T) kron D~`` and
  ``(U^T g)_j = g_j - mean_k g_k``: only the Hessian's blocks of the first
  K - 1 classes, (K - 1) n~ rows instead of K n~.

Building those blocks costs (K - 1) / (K + 1) of the whole Hessian's
(a half for three classes), and the factorisation ((K - 1) / K)^3 of its.

:func:`reduced_step` takes the packed sums of the first K - 1 classes'
blocks (:func:`fastsoftmax._hessian_full.full_chunk` with ``classes = K - 1``)
and the gradient and returns the step: unpacking, the penalty, a Cholesky
factorisation (unshifted when A is positive definite without collinear
columns, else with a diagonal shift, :func:`_factor`), two triangular
solves and the assembly of s, without returning to Python between them.
"""

from __future__ import annotations

import numpy as np

from ._hessian_full import unpack
from ._jit import serial_kernel


#: An unshifted factorisation is kept only if every pivot L_ii^2 keeps at
#: least this fraction of its diagonal entry A_ii.  Less means column i is,
#: to rounding, a combination of the earlier ones (duplicated or collinear
#: features): LAPACK may still "succeed" on such a singular matrix with a
#: pivot of rounding size, and the step would then get an arbitrary
#: component along the flat direction.  The ratio does not depend on the
#: features' scales.
COLLINEAR = 1e-12


@serial_kernel
def class_means(a):
    """The mean over classes (rows) of a (K, n~) float64, (n~,) float64, summed
    in class order."""
    K, nt = a.shape
    mean = np.zeros(nt)
    for k in range(K):
        for l in range(nt):
            mean[l] += a[k, l]
    for l in range(nt):
        mean[l] /= K
    return mean


@serial_kernel
def _factor(A, jitter):
    """The lower Cholesky factor of A when A is positive definite and no
    column is collinear with the earlier ones (:data:`COLLINEAR`); else of A
    with ``jitter * max(diag A)`` added to its diagonal, then 100 times more
    (up to 8 shifts) while it does not factor.  An empty (0, 0) array if it
    never factors or A is not finite.  A is modified.  (A MemoryError in
    the factorisation counts as not factoring: numba cannot tell it apart.)"""
    N = A.shape[0]
    top = 0.0
    for i in range(N):
        top = max(top, A[i, i])
    shift = jitter * max(top, 2.2250738585072014e-308)  # the smallest normal float64
    for attempt in range(9):
        if attempt > 0:
            for i in range(N):
                A[i, i] += shift
            shift *= 100.0
        try:
            L = np.linalg.cholesky(A)
        except Exception:  # not positive definite
            continue
        if not np.all(np.isfinite(L)):  # a NaN or inf in A: no shift helps
            break
        if attempt == 0:
            collinear = False
            for i in range(N):
                if L[i, i] * L[i, i] < COLLINEAR * A[i, i]:
                    collinear = True
            if collinear:
                continue
        return L
    return np.empty((0, 0))


@serial_kernel
def _cholesky_solve(L, rhs):
    """``(L L^T)^{-1} rhs`` for the lower factor L, overwriting rhs (N,)."""
    N = L.shape[0]
    for i in range(N):
        s = rhs[i]
        for j in range(i):
            s -= L[i, j] * rhs[j]
        rhs[i] = s / L[i, i]
    for i in range(N - 1, -1, -1):
        s = rhs[i]
        for j in range(i + 1, N):
            s -= L[j, i] * rhs[j]
        rhs[i] = s / L[i, i]


@serial_kernel
def reduced_step(M, g, n, denom, l2, jitter, S):
    """The Newton step S (K, n~) float64 for the gradient g (K, n~) float64
    (class-major [W | b] layout, n of the n~ columns W's); True, or False
    (S untouched) when the reduced matrix does not factor.

    M (B, Q) float64 are the unnormalised packed Hessian sums over the first
    K - 1 classes (B = (K - 1) K / 2, Q = n~ (n~ + 1) / 2), ``denom`` what
    they are divided by, ``l2`` the penalty on W.
    """
    K, nt = g.shape
    C = K - 1
    A = unpack(M, C, nt, 1.0 / denom)
    if l2 != 0.0:
        for j in range(C):
            for jp in range(C):
                coupling = l2 * ((1.0 if j == jp else 0.0) - 1.0 / K)
                for l in range(n):
                    A[j * nt + l, jp * nt + l] += coupling
    mean = class_means(g)
    a = np.empty(C * nt)
    for j in range(C):
        for l in range(nt):
            a[j * nt + l] = mean[l] - g[j, l]
    if C > 0:  # (one class: the loss is constant, only the penalty curves)
        L = _factor(A, jitter)
        if L.shape[0] == 0:
            return False
        _cholesky_solve(L, a)
    for l in range(nt):
        total = 0.0
        for j in range(C):
            total += a[j * nt + l]
        mu = -mean[l] / l2 if l2 != 0.0 and l < n else 0.0
        base = mu - total / K
        for j in range(C):
            S[j, l] = base + a[j * nt + l]
        S[C, l] = base
    return True
