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
from numba import prange, typeof, types

from ._accumulate import chunked_sums
from ._compiled import CompiledFunction, array_key, call_compiled
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
def _diagonal_chunks(chunk, X, W, b, labels, T, sw, eps, tile, slabs, bias_slabs, failed):
    """One ``prange`` iteration per chunk of rows, each a call of ``chunk``
    (:func:`diag_chunk` through its address, :func:`chunk_entry`) into the
    chunk's own slabs; ``failed[c]`` says whether chunk c raised."""
    m = X.shape[0]
    nchunks = failed.shape[0]
    for c in prange(nchunks):
        out = call_compiled(chunk, X, W, b, labels, T, sw, eps, np.int64(c * m // nchunks),
                            np.int64((c + 1) * m // nchunks), tile, slabs[c], bias_slabs[c])
        failed[c] = out[1]


#: diag_chunk's entry points, by what the numba types of its arguments depend on.
_entries: dict = {}


def chunk_entry(X, W, b, labels, T, sw) -> CompiledFunction:
    """:func:`diag_chunk` compiled for these arguments, to call from a
    parallel loop through its address (:mod:`fastsoftmax._compiled`)."""
    key = tuple(array_key(a) for a in (X, W, b, labels, T, sw))
    entry = _entries.get(key)
    if entry is None:
        slab = types.Array(types.float64, 2, "C")
        argtypes = (*(typeof(a) for a in (X, W, b, labels, T, sw)), types.float64, types.int64,
                    types.int64, types.int64, slab, slab.copy(ndim=1))
        entry = _entries.setdefault(key, CompiledFunction(diag_chunk, argtypes))
    return entry


def diag_sums(X, W, b, labels, T, sw, eps, nchunks, tile):
    """Unnormalised Hessian diagonal ``(dW (K, n), db (K,))`` float64 of the loss sums.

    X (m, n) float32 or float64; W (K, n) and b (K,) float64; labels, T, sw,
    eps as for the gradient kernels.  In ``nchunks`` parallel chunks summed in
    chunk order; if a chunk raised in the parallel loop, every chunk is run
    again here (the same chunks: the same result, bit for bit), where the
    exception surfaces.
    """
    head = (X, W, b, labels, T, sw, float(eps))
    return tuple(chunked_sums(diag_chunk, head, (int(tile),), (W.shape, b.shape), X.shape[0],
                              nchunks, (_diagonal_chunks, chunk_entry(X, W, b, labels, T, sw))))


def diag_sums_serial(X, W, b, labels, T, sw, eps, tile):
    """:func:`diag_sums` with one chunk and no parallel region (plain Python
    around the compiled :func:`diag_chunk`)."""
    head = (X, W, b, labels, T, sw, float(eps))
    return tuple(chunked_sums(diag_chunk, head, (int(tile),), (W.shape, b.shape), X.shape[0]))
