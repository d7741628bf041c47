"""The diagonal of the Hessian, fused: a Jacobi preconditioner for Newton-CG.

The diagonal entries of the Hessian of the loss sums are

    d(W_jl) = sum_i w_i s_i p_ij (1 - p_ij) x_il^2,   d(b_j) = sum_i w_i s_i p_ij (1 - p_ij).

Everything is computed in float64 whatever the working dtype.  Per tile
(:func:`diag_chunk`): the tile's rows and their squares are copied into two
float64 (R, n) buffers; one GEMM gives the logits (R, K); the probabilities
come out class-major and become the coefficients C (K, R) = w s p (1 - p);
one GEMM ``C X_tile^2`` goes into a (K, n) scratch added to the chunk's
float64 slab.  Chunks run in parallel with their own slabs, summed in chunk
order (deterministic for a given thread count).

Peak extra memory: about ``nchunks * (2 K n + tile (2 n + 2 K + 3)) * 8``
bytes, independent of m.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._accumulate import allocate, combine
from ._jit import parallel_kernel, serial_kernel
from ._rowmath import tile_probabilities
from ._tiles import kept_tile


@serial_kernel
def diag_chunk(X, W, b, labels, T, sw, eps, start, stop, tile, G, gb):
    """Rows start:stop in tiles: adds their diagonal sums to G (K, n) and gb (K,)."""
    n = X.shape[1]
    K = W.shape[0]
    rows = np.empty(tile, dtype=np.int64)
    xb = np.empty((tile, n))
    sq = np.empty((tile, n))
    Zb = np.empty((tile, K))
    Cbuf = np.empty(K * tile)
    aux = np.empty((3, tile))
    ws = aux[2]  # w_i s_i
    Gt = np.empty((K, n))
    for t0 in range(start, stop, tile):
        Xt = kept_tile(X, labels, t0, min(t0 + tile, stop), rows, xb)  # float64
        R = Xt.shape[0]
        if R == 0:
            continue
        Xs = sq[:R]
        for r in range(R):
            for l in range(n):
                Xs[r, l] = Xt[r, l] * Xt[r, l]  # squared in float64
        Z = Zb[:R]
        np.dot(Xt, W.T, Z)
        Cr = Cbuf[: K * R].reshape((K, R))  # contiguous, for BLAS
        tile_probabilities(Z, b, Cr, aux, rows[:R], labels, T, sw, eps)
        # C = w_i s_i p_ik (1 - p_ik)
        for k in range(K):
            for r in range(R):
                p = Cr[k, r]
                Cr[k, r] = ws[r] * p * (1.0 - p)
        for k in range(K):
            acc = 0.0
            for r in range(R):
                acc += Cr[k, r]
            gb[k] += acc
        np.dot(Cr, Xs, Gt)
        for k in range(K):
            for l in range(n):
                G[k, l] += Gt[k, l]


@parallel_kernel
def diag_sums(X, W, b, labels, T, sw, eps, nchunks, tile):
    """Unnormalised Hessian diagonal ``(dW (K, n), db (K,))`` float64 of the loss sums.

    X (m, n) float32 or float64; W (K, n) and b (K,) float64; labels, T, sw,
    eps as for the gradient kernels.
    """
    m, n = X.shape
    K = W.shape[0]
    slabs, bias_slabs, unused = allocate(nchunks, K, n)
    for c in prange(nchunks):
        diag_chunk(X, W, b, labels, T, sw, eps, c * m // nchunks, (c + 1) * m // nchunks, tile,
                   slabs[c], bias_slabs[c])
    _, G, gb = combine(slabs, bias_slabs, unused)
    return G, gb


@serial_kernel
def diag_sums_serial(X, W, b, labels, T, sw, eps, tile):
    """:func:`diag_sums` with one chunk and no parallel region."""
    K, n = W.shape
    slabs, bias_slabs, unused = allocate(1, K, n)
    diag_chunk(X, W, b, labels, T, sw, eps, 0, X.shape[0], tile, slabs[0], bias_slabs[0])
    _, G, gb = combine(slabs, bias_slabs, unused)
    return G, gb
