"""Compiled, fused passes over parameter-sized arrays, for Newton-CG on wide X.

On wide X (text classification: N = K n of a few million parameters) every
NumPy expression of a conjugate-gradient step is a pass over tens of MB,
and a step took about 30 ms of such passes around a 46 ms Hessian product
(measured on 20-newsgroups-shaped data: 11314 x 130107, K = 20).  These
kernels fuse them: one pass to finish a gradient or a Hessian product from its sums,
one for the updates of the step and the residual, one for the Jacobi
preconditioner with its class-mean split, one for the new direction; for
Newton-CG on CSR X, which keeps its vectors feature-major (W^T's layout,
the sparse kernel's, which finishes its products itself), the Jacobi pass
on (n, K) rows; a tiled transposition between the two layouts; and
:func:`same_pass`, a serial early-exit comparison of two parameter vectors
(the solvers' check of a cached point).
Each pass has a Python entry point below its kernel that decides, by
:func:`fastsoftmax._dispatch.compiled_vectors`, between the compiled pass
(from ``COMPILED_VECTOR_MIN_ENTRIES`` entries on) and the same arithmetic in
NumPy (below, where waking the worker threads would cost more than the
pass); the callers do not choose.

Every parallel kernel works over blocks of ``block`` entries (columns for
the (K, n) arrays), in parallel; a reduction is summed within each block and the
blocks' sums are added in block order, so results do not depend on the
thread count.  A loop that stores never also reduces to a scalar (see
:mod:`fastsoftmax._rowmath`: the summation order would then depend on
buffer addresses).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from . import _dispatch as policy
from ._jit import parallel_kernel, serial_kernel
from ._threading import parallel_region


@serial_kernel
def in_block_order(parts):
    """The sum of the blocks' partial sums, in block order."""
    total = 0.0
    for q in range(parts.shape[0]):
        total += parts[q]
    return total


@parallel_kernel
def finish_pass(G, denom, l2, V, out, block, squares):
    """``out = G / denom + l2 V`` ((K, n); the sum in float64, rounded once to
    out's dtype; ``out`` may be ``G`` itself; no ``l2 V`` term at all when
    l2 is 0); returns ``sum(V^2)`` in float64 when ``squares`` is True, else
    0.  The finish of a gradient (V = W: the penalty's value comes with it,
    without NumPy's multi-threaded dot product, whose spinning BLAS threads
    then slowed the next kernel call) and of a Hessian product (V the
    direction).  G float64 or of out's dtype, V and out (K, n) C-contiguous,
    of one float dtype."""
    K, n = G.shape
    nblocks = (n + block - 1) // block
    parts = np.empty(nblocks)
    for q in prange(nblocks):
        j0 = q * block
        j1 = min(n, j0 + block)
        # through views of the rows' blocks: indexing the (K, n) arrays element
        # by element took 5.5-6.2 ms on (20, 130107), the views 1.8-2.2 ms
        for k in range(K):
            g, v, o = G[k, j0:j1], V[k, j0:j1], out[k, j0:j1]
            if l2 != 0.0:
                for j in range(j1 - j0):
                    o[j] = g[j] / denom + l2 * np.float64(v[j])
            else:  # V may hold inf where its gradient is 0 (a column X never touches)
                for j in range(j1 - j0):
                    o[j] = g[j] / denom
        s = 0.0
        if squares:
            for k in range(K):
                v = V[k, j0:j1]
                for j in range(j1 - j0):
                    x = np.float64(v[j])
                    s += x * x
        parts[q] = s
    return in_block_order(parts)


@parallel_kernel
def advance_pass(step, r, d, Hd, alpha, block):
    """``step += alpha d`` and ``r -= alpha Hd`` (all (N,) float64); returns
    the new ``||r||^2``."""
    N = r.shape[0]
    nblocks = (N + block - 1) // block
    parts = np.empty(nblocks)
    for q in prange(nblocks):
        i0 = q * block
        i1 = min(N, i0 + block)
        for i in range(i0, i1):
            step[i] += alpha * d[i]
            r[i] -= alpha * Hd[i]
        s = 0.0
        for i in range(i0, i1):
            s += r[i] * r[i]
        parts[q] = s
    return in_block_order(parts)


@parallel_kernel
def jacobi_pass(r, inv, l2, z, block):
    """The Jacobi preconditioner with the class means split off, on (K, n) arrays.

    For each column j, with ``mean_j`` the mean over classes of ``r[:, j]``:
    ``z[k, j] = (r[k, j] - mean_j) inv[k, j]``, then the column's mean over
    classes is removed from ``z[:, j]`` and, when ``l2 > 0``, ``mean_j / l2``
    added (the exact inverse on the class means, where the Hessian is l2).
    ``r``, ``inv``, ``z`` (K, n) float64; returns ``sum(r * z)``.
    """
    K, n = r.shape
    nblocks = (n + block - 1) // block
    parts = np.empty(nblocks)
    for q in prange(nblocks):
        j0 = q * block
        j1 = min(n, j0 + block)
        mean = np.zeros(j1 - j0)
        for k in range(K):
            for j in range(j0, j1):
                mean[j - j0] += r[k, j]
        for j in range(j0, j1):
            mean[j - j0] /= K
        shift = np.zeros(j1 - j0)
        for k in range(K):
            for j in range(j0, j1):
                zkj = (r[k, j] - mean[j - j0]) * inv[k, j]
                z[k, j] = zkj
                shift[j - j0] += zkj
        for j in range(j0, j1):
            shift[j - j0] /= K
            if l2 > 0.0:
                shift[j - j0] -= mean[j - j0] / l2
        for k in range(K):
            for j in range(j0, j1):
                z[k, j] -= shift[j - j0]
        s = 0.0
        for k in range(K):
            for j in range(j0, j1):
                s += r[k, j] * z[k, j]
        parts[q] = s
    return in_block_order(parts)


@parallel_kernel
def jacobi_rows_pass(r, inv, l2, z, block):
    """:func:`jacobi_pass` on feature-major arrays: ``r``, ``inv``, ``z``
    (n, K) float64, row j holding feature j's K classes, so that a column
    mean of :func:`jacobi_pass` is a row mean here, over contiguous
    entries; blocks of ``block`` rows (as many entries as ``block`` columns
    of :func:`jacobi_pass`).  Returns ``sum(r * z)``."""
    n, K = r.shape
    nblocks = (n + block - 1) // block
    parts = np.empty(nblocks)
    for q in prange(nblocks):
        s = 0.0
        for j in range(q * block, min(n, (q + 1) * block)):
            mean = 0.0
            for k in range(K):
                mean += r[j, k]
            mean /= K
            for k in range(K):
                z[j, k] = (r[j, k] - mean) * inv[j, k]
            shift = 0.0  # (a loop that stores never also reduces: module docstring)
            for k in range(K):
                shift += z[j, k]
            shift /= K
            if l2 > 0.0:
                shift -= mean / l2
            for k in range(K):
                z[j, k] -= shift
        for j in range(q * block, min(n, (q + 1) * block)):
            for k in range(K):
                s += r[j, k] * z[j, k]
        parts[q] = s
    return in_block_order(parts)


@parallel_kernel
def direction_pass(d, z, beta, block):
    """``d = z + beta d`` in place ((N,) float64)."""
    N = d.shape[0]
    for q in prange((N + block - 1) // block):
        for i in range(q * block, min(N, (q + 1) * block)):
            d[i] = z[i] + beta * d[i]


@parallel_kernel
def transpose_pass(src, dst, block):
    """``dst[j, i] = src[i, j]`` for ``src`` (a, c) and ``dst`` (c, a) of one
    float dtype, C-contiguous: in square tiles of ``block`` entries a side, in parallel,
    so that each tile's reads and writes stay in the cache (NumPy's copy of
    a transposed (20, 130107) view took 3.4 ms idle, and 10 ms inside a
    Newton-CG fit on 20-newsgroups-shaped data)."""
    a, c = src.shape
    rows = (a + block - 1) // block
    cols = (c + block - 1) // block
    for t in prange(rows * cols):
        i0 = (t // cols) * block
        j0 = (t % cols) * block
        i1 = min(a, i0 + block)
        j1 = min(c, j0 + block)
        for j in range(j0, j1):
            for i in range(i0, i1):
                dst[j, i] = src[i, j]


@serial_kernel
def same_pass(a, b):
    """Whether the (N,) float64 arrays ``a`` and ``b`` hold the same values
    (NaN equal to NaN), stopping at the first difference: one pass when they
    are equal, next to nothing when they differ early."""
    for i in range(a.shape[0]):
        x = a[i]
        y = b[i]
        if x != y and not (x != x and y != y):
            return False
    return True


def same_entries(a, b) -> bool:
    """``np.array_equal(a, b, equal_nan=True)`` for (N,) float64 arrays:
    :func:`same_pass` from ``COMPILED_VECTOR_MIN_ENTRIES`` entries on.
    NumPy's forms a NaN mask of each and compares the rest through a
    boolean index: 13 ms a call on 2.6 M entries (20-newsgroups-shaped
    Newton-CG checks its cached point so at every step), against about
    2 ms for this pass when they are equal."""
    if a.shape != b.shape:
        return False
    if policy.compiled_vectors(a.shape[0]):
        return bool(same_pass(a, b))
    return bool(np.array_equal(a, b, equal_nan=True))


def finish_into(G, denom: float, l2: float, V, out, squares: bool = False) -> float:
    """``out[...] = G / denom + l2 V`` (G (K, n) sums, float64 or of out's
    dtype; V (K, n) of any real dtype; out (K, n) of the working dtype, which
    may be G itself), the sum and penalty in float64, rounded once, no
    ``l2 V`` term when l2 is 0; returns ``sum(V^2)`` (float64) when
    ``squares``, else 0.  :func:`finish_pass` or NumPy."""
    if policy.compiled_vectors(G.size):
        Vk = np.ascontiguousarray(V, dtype=out.dtype)  # the kernel's own types
        Gk = G if G is out else np.ascontiguousarray(G, dtype=np.float64)
        with parallel_region():
            return finish_pass(Gk, float(denom), float(l2), Vk, out,
                               policy.COMPILED_VECTOR_BLOCK, bool(squares))
    total = np.asarray(G, dtype=np.float64) / denom
    V64 = np.asarray(V, dtype=np.float64)
    if l2:
        total += l2 * V64
    out[...] = total
    return float(np.vdot(V64, V64)) if squares else 0.0


def advance(step, r, d, Hd, alpha: float) -> float:
    """``step += alpha d``, ``r -= alpha Hd`` ((N,) float64, in place);
    returns the new ``||r||``.  :func:`advance_pass` or NumPy."""
    if policy.compiled_vectors(r.shape[0]):
        with parallel_region():
            return float(np.sqrt(advance_pass(step, r, d, Hd, alpha,
                                              policy.COMPILED_VECTOR_BLOCK)))
    step += alpha * d
    r -= alpha * Hd
    return float(np.linalg.norm(r))


def new_direction(d, z, beta: float) -> None:
    """``d = z + beta d`` in place ((N,) float64).  :func:`direction_pass` or NumPy."""
    if policy.compiled_vectors(d.shape[0]):
        with parallel_region():
            direction_pass(d, z, beta, policy.COMPILED_VECTOR_BLOCK)
    else:
        d *= beta
        d += z


def jacobi_off_means(r, inv, l2: float, z) -> float:
    """The Jacobi preconditioner with the class means split off, into ``z``
    (see :func:`jacobi_pass`; ``r``, ``inv``, ``z`` (K, n) float64); returns
    ``sum(r * z)``.  :func:`jacobi_pass` or NumPy."""
    if policy.compiled_vectors(r.size):
        with parallel_region():
            return jacobi_pass(r, inv, l2, z, policy.COMPILED_VECTOR_BLOCK)
    return _jacobi_numpy(r, inv, l2, z, axis=0)


def _jacobi_numpy(r, inv, l2: float, z, axis: int) -> float:
    """The arithmetic of :func:`jacobi_pass` in NumPy, the means over classes
    taken along ``axis`` (0 for (K, n) arrays, 1 for feature-major (n, K))."""
    mean = r.mean(axis=axis, keepdims=True)
    np.subtract(r, mean, out=z)
    z *= inv
    shift = z.mean(axis=axis, keepdims=True)
    if l2 > 0.0:
        shift -= mean / l2
    z -= shift
    return float(r.ravel() @ z.ravel())


def jacobi_off_means_rows(r, inv, l2: float, z) -> float:
    """:func:`jacobi_off_means` on feature-major (n, K) float64 arrays (the
    means over classes are row means; see :func:`jacobi_rows_pass`); returns
    ``sum(r * z)``.  :func:`jacobi_rows_pass` or NumPy."""
    if policy.compiled_vectors(r.size):
        with parallel_region():
            return jacobi_rows_pass(r, inv, l2, z, policy.COMPILED_VECTOR_BLOCK)
    return _jacobi_numpy(r, inv, l2, z, axis=1)


def transpose_into(src, dst) -> None:
    """``dst[...] = src.T`` for ``src`` (a, c) and ``dst`` (c, a), C-contiguous,
    of one float dtype.  :func:`transpose_pass` or NumPy."""
    if policy.compiled_vectors(src.size):
        with parallel_region():
            transpose_pass(src, dst, policy.TRANSPOSE_TILE)
    else:
        dst[...] = src.T


def transposed(src):
    """A C-contiguous copy of ``src.T`` (src (a, c) C-contiguous, float32 or
    float64; :func:`transpose_into`)."""
    dst = np.empty((src.shape[1], src.shape[0]), src.dtype)
    transpose_into(src, dst)
    return dst
