"""The fused kernel: logits, log-sum-exp, loss and gradient in one pass over X.

The rows of X are split into ``nchunks`` contiguous chunks, one per ``prange``
iteration.  Each chunk walks its rows in tiles of ``TILE`` rows:

1. the tile's logits ``Z = X_tile W^T + b`` go into a (TILE, K) float64 buffer;
2. each row of that buffer is turned, in place, into the weighted logit
   gradient ``w_i (s_i p_i - t_i)`` while its loss is added to the chunk's
   loss (:func:`fastsoftmax._rowmath.row_loss_and_coef`);
3. the buffer's transpose times ``X_tile`` is added to the chunk's own
   (K, n) float64 gradient slab, so no two threads ever write the same memory.

The slabs are summed in chunk order at the end, so the result depends only on
the inputs and ``nchunks``, never on which thread ran which chunk.  Loops that
reduce (with reassociation allowed, so vectorised) never also store: such a
loop would be vectorised behind a run-time aliasing check, and the addresses
of scratch buffers would then pick the summation order.

Peak extra memory: ``nchunks * (K * n + K + TILE * K) * 8`` bytes, independent
of m.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import parallel_kernel
from ._rowmath import row_loss_and_coef

#: Rows per tile: the tile's logits and the X rows it touches stay in cache.
TILE = 64


@parallel_kernel
def fused_sums(X, W, b, labels, T, sw, eps, nchunks):
    """Unnormalised loss and gradient sums of softmax regression.

    X (m, n) and W (K, n), b (K,) of one float dtype; labels (m,) int64 or
    empty; T (m, K) or (0, K); sw (m,) float64 or empty; eps float;
    nchunks >= 1.  Returns ``(loss_sum, G, gb)`` with G (K, n) and gb (K,)
    float64: the weighted sums over samples of the loss, of
    ``(s_i p_i - t_i) x_i^T`` and of ``s_i p_i - t_i``.
    """
    m, n = X.shape
    K = W.shape[0]
    use_labels = labels.shape[0] > 0
    weighted = sw.shape[0] > 0
    slabs = np.zeros((nchunks, K, n))
    bias_slabs = np.zeros((nchunks, K))
    losses = np.zeros(nchunks)
    for c in prange(nchunks):
        start = c * m // nchunks
        stop = (c + 1) * m // nchunks
        G = slabs[c]
        gb = bias_slabs[c]
        Z = np.empty((TILE, K))
        keep = np.empty(TILE, dtype=np.bool_)
        loss = 0.0
        for t0 in range(start, stop, TILE):
            t1 = min(t0 + TILE, stop)
            for r in range(t1 - t0):
                i = t0 + r
                keep[r] = (not use_labels) or labels[i] >= 0
                if not keep[r]:
                    continue
                for k in range(K):
                    acc = 0.0
                    for l in range(n):
                        acc += X[i, l] * W[k, l]
                    Z[r, k] = acc + b[k]
                w = sw[i] if weighted else 1.0
                loss += row_loss_and_coef(Z[r], labels, T, i, eps, w)
            for r in range(t1 - t0):
                if not keep[r]:
                    continue
                i = t0 + r
                for k in range(K):
                    d = Z[r, k]
                    gb[k] += d
                    for l in range(n):
                        G[k, l] += d * X[i, l]
        losses[c] = loss
    total = 0.0
    for c in range(nchunks):
        total += losses[c]
    for c in range(1, nchunks):
        slabs[0] += slabs[c]
        bias_slabs[0] += bias_slabs[c]
    return total, slabs[0], bias_slabs[0]
