"""Loss and gradient with respect to the logits themselves (an output layer).

The same per-tile numerics as the fused kernel
(:func:`fastsoftmax._rowmath.tile_loss_and_coef`), without the two matrix
products: each tile of logit rows gives its loss and its rows of
``dZ = w_i (s_i p_i - t_i)``.  Rows dropped by ``ignore_index`` get zero
gradient.  Chunks of rows run in parallel, each writing only its own rows of
dZ; the chunks' losses are added in chunk order (deterministic for a given
chunk count).  Peak extra memory: ``nchunks * tile * (3 K + 5) * 8`` bytes
besides dZ itself.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import parallel_kernel, serial_kernel
from ._rowmath import tile_loss_and_coef
from ._tiles import gather, kept_rows


@serial_kernel
def _logits_tile(Zt, D, E, aux, b, labels, T, sw, eps, rows, gb, dZ, cw, zl, cap, lout):
    """One tile: its loss; its gradient rows written to ``dZ[rows]``."""
    R, K = Zt.shape
    Dt = D[: K * R].reshape((K, R))
    loss = tile_loss_and_coef(Zt, Dt, E, aux, b, labels, T, sw, eps, rows, gb, cw, zl, cap, lout)
    for r in range(R):
        out = dZ[rows[r]]
        for k in range(K):
            out[k] = Dt[k, r]
    return loss


@serial_kernel
def logits_chunk(Z, labels, T, sw, eps, start, stop, tile, dZ, cw, zl, cap, lout):
    """Rows start:stop of Z (m, K): writes their rows of dZ, returns their loss sum."""
    K = Z.shape[1]
    zbuf = np.empty((tile, K), dtype=Z.dtype)
    D = np.empty(K * tile, dtype=Z.dtype)
    E = np.empty(K * tile)
    aux = np.empty((4, tile))
    rows = np.empty(tile, dtype=np.int64)
    b = np.zeros(K, dtype=Z.dtype)
    gb = np.zeros(K)  # the intercept's gradient: not needed here
    loss = 0.0
    for t0 in range(start, stop, tile):
        t1 = min(t0 + tile, stop)
        R = kept_rows(labels, t0, t1, rows)
        if R == t1 - t0:
            loss += _logits_tile(Z[t0:t1], D, E, aux, b, labels, T, sw, eps, rows[:R], gb, dZ,
                                 cw, zl, cap, lout)
            continue
        for i in range(t1 - t0):  # ignored rows get zero gradient
            row = dZ[t0 + i]
            for k in range(K):
                row[k] = 0.0
        if R > 0:
            Zt = gather(Z, rows[:R], zbuf)
            loss += _logits_tile(Zt, D, E, aux, b, labels, T, sw, eps, rows[:R], gb, dZ,
                                 cw, zl, cap, lout)
    return loss


@parallel_kernel
def logits_sums(Z, labels, T, sw, eps, nchunks, tile, dZ, cw, zl, cap, lout):
    """Loss sum over samples; fills dZ (m, K) with the unnormalised gradient.

    Z (m, K) float32/float64 in any layout; labels, T, sw and eps as in
    :func:`fastsoftmax._fused.fused_sums`; dZ (m, K) of Z's dtype; ``cw``,
    ``zl``, ``cap`` and ``lout`` (each None when unused) as there.
    """
    m = Z.shape[0]
    losses = np.empty(nchunks)
    for c in prange(nchunks):
        losses[c] = logits_chunk(Z, labels, T, sw, eps, c * m // nchunks,
                                 (c + 1) * m // nchunks, tile, dZ, cw, zl, cap, lout)
    total = 0.0
    for c in range(nchunks):
        total += losses[c]
    return total


@serial_kernel
def logits_sums_serial(Z, labels, T, sw, eps, tile, dZ, cw, zl, cap, lout):
    """:func:`logits_sums` in one chunk without a parallel region (small inputs)."""
    return logits_chunk(Z, labels, T, sw, eps, 0, Z.shape[0], tile, dZ, cw, zl, cap, lout)
