"""The large-vocabulary kernel: loss, dX, dW and db without an m x K array and
without per-thread (K, n) gradient slabs.

The fused kernel (:mod:`fastsoftmax._fused`) gives every thread its own
float64 (K, n) gradient slab and adds each tile's (K, n) product into it: for
a language model's head, (m, n, K) = (4096, 1024, 32000), that is 2 x 262 MB
of slabs on two threads and a pass over K n entries per tile.  This kernel
instead splits the *classes* between the threads for the products that reach
dW, so that every entry of dW has one owner and nothing needs a private copy.

Algorithm.  The kept rows of X (``ignore_index`` drops the others) are taken
in super-tiles of at most ``tile`` rows (R); for each super-tile X_t (R, n):

1. logits, parallel over blocks of ``class_block`` classes: the block's rows
   of ``Z^T = W X_t^T`` (K, R), class-major, in the working dtype, one GEMM
   per block, and right after it, while the block is in cache, its partial
   softmax sums per row (:func:`fastsoftmax._vocab_rows.block_partials`:
   maximum, sum of exponentials, target sums);
2. loss and per-row scales, serial over the rows
   (:func:`fastsoftmax._vocab_rows.combine_rows`: the blocks' partials
   combined in class order, a few operations per row and block);
3. weight gradient, parallel over class blocks: the block's weighted logit
   gradients ``D = w_i (s_i p_i - t_i)`` written over its logits and summed
   over the rows into the intercept gradient
   (:func:`fastsoftmax._vocab_rows.block_gradient`), then
   ``dW[block] += D[block] X_t``, one GEMM with ``beta = 1``
   (:func:`fastsoftmax._gemm.gemm`), so the product is added inside BLAS
   without a temporary;
4. input gradient (``dX`` wanted), parallel over blocks of ``column_block``
   columns of X: ``dX_t[:, cols] = D^T W[:, cols]``, one GEMM per block,
   straight into dX's rows (through a buffer when rows were dropped).

With soft-capping, steps 1-3 take the fused kernel's own per-tile numerics
instead (:func:`fastsoftmax._rowmath.tile_loss_and_coef`, parallel over
groups of ``group`` rows, between the logits and the weight gradient; each
group's loss and intercept sums go to the group's own slot): its float64
copy of the logits holds the capped values.  It reads all of its logits
into that scratch before it writes D over them; a change to it that re-read
them afterwards would break this kernel, and tests/test_vocab.py would say
so.

Flops: 2 m n K per GEMM, 6 m n K with dX (4 m n K without), the minimum for
these products, plus O(m K) for the softmax (two exponentials an entry).
Between phases the threads meet at the end of a parallel region (tens of
microseconds each; three per super-tile with dX, two without, one more with
soft-capping), which is why the dispatcher uses this kernel only for large K.

Memory besides the outputs (dX (m, n) and dW (K, n) in the working dtype):
the super-tile's logits ``tile K`` entries of the working dtype, one X tile
(and one dX tile) ``tile n`` entries and the class blocks' partials
``ceil(K / class_block) 5 tile 8`` bytes; with soft-capping instead of the
partials, the groups' intercept sums ``ceil(tile / group) K 8`` bytes and
float64 scratch ``workers group K 8`` bytes.  The tile is bounded whatever
m (``fastsoftmax._dispatch.VOCAB_MAX_TILE`` rows), and chosen so that the
logits take at most a fifth of the gradients' own size
(``fastsoftmax._dispatch.vocab_plan``), unless that is fewer than
``VOCAB_MIN_TILE`` (64) rows: then 64 rows (for n < 320 without dX).

Accumulation.  dW is accumulated in the working dtype, in the output array
itself: a float64 (K, n) accumulator would be twice the size of a float32
dW, and adding each super-tile's product into it a pass over K n float64
entries per super-tile (slower than the GEMMs' own traffic).  BLAS sums
each product's R terms in the working dtype anyway (as it does in the fused
kernel's tiles); here the m / R super-tile products are summed in that dtype
as well.  With unit roundoff u (2^-24 for float32) the error of an entry of
dW is at most about ``(R + m / R) u`` times the sum of the absolute values of
its m terms (the standard bound for a blocked sum of m terms in blocks of
R), typically ``sqrt(R + m / R) u`` for rounding errors of random sign;
``tests/test_vocab.py`` measures it against a float64 reference.  The loss,
the intercept gradient and the softmax itself are computed in float64, as in
the fused kernel.  In float64 the products are float64 GEMMs.

Determinism.  Every block of classes, group of rows and block of columns is
computed by one single-threaded BLAS call or one call of the row numerics,
whichever thread runs it, and partial sums are added in a fixed order
(super-tiles in row order, class blocks in class order, rows in row order,
groups in group order).  So the result depends on
the inputs and on ``tile``, ``class_block``, ``column_block`` and ``group``,
never on the number of threads or on which thread ran what: repeated calls
and calls with different thread counts give bitwise-identical results.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._accumulate import zero
from ._gemm import gemm, gemm_address
from ._jit import parallel_kernel
from ._rowmath import tile_loss_and_coef
from ._tiles import kept_tile
from ._vocab_rows import PARTIALS, block_gradient, block_partials, combine_rows


@parallel_kernel
def _vocab_kernel(X, W, b, labels, T, sw, eps, addr, tile, class_block, column_block, group,
                  workers, dX, G, cw, zl, cap, lout):
    """Unnormalised sums; see :func:`vocab_sums`.  Returns ``(loss_sum, gb)``."""
    m, n = X.shape
    K = W.shape[0]
    Z = np.empty(K * tile, dtype=X.dtype)  # Z^T (K, R), then D in place
    rows = np.empty(tile, dtype=np.int64)
    xbuf = np.empty((tile, n), dtype=X.dtype)
    want_dx = dX.shape[0] > 0
    dxbuf = np.empty((tile if want_dx else 0, n), dtype=X.dtype)
    nblocks = (K + class_block - 1) // class_block
    ncols = (n + column_block - 1) // column_block
    # the class blocks' partial sums and the rows' scales (block numerics), or
    # the row groups' sums and float64 scratch (soft-capping's row numerics)
    capped = cap is not None
    part = np.empty((0 if capped else nblocks, PARTIALS, tile))
    rowv = np.empty((4, 0 if capped else tile))
    ly = np.empty(0 if capped else tile, dtype=np.int64)
    max_groups = (tile + group - 1) // group if capped else 0
    gslab = np.empty((max_groups, K))
    glosses = np.empty(max_groups)
    E = np.empty((workers if capped else 0, K * group))
    aux = np.empty((workers if capped else 0, 4, group))
    gb = np.empty(K)
    zero(gb)  # not np.zeros: a parallel region of its own here
    loss = 0.0
    for t0 in range(0, m, tile):
        t1 = min(t0 + tile, m)
        Xt = kept_tile(X, labels, t0, t1, rows, xbuf)
        R = Xt.shape[0]
        if R == 0:
            continue
        contiguous = R == t1 - t0
        # 1. logits, class-major: Z^T[block] = W[block] X_t^T, and the block's partials
        for q in prange(nblocks):
            k0 = q * class_block
            k1 = min(K, k0 + class_block)
            gemm(addr, False, True, k1 - k0, R, n, 1.0, W[k0:], n, Xt, n, 0.0, Z[k0 * R:], R)
            if cap is None:
                block_partials(Z[k0 * R:], R, k0, k1, b, labels, T, eps, rows, cw, part[q])
        # 2. loss and the rows' scales (or, soft-capped, D in place by groups of rows)
        if cap is None:
            loss += combine_rows(part, R, b, labels, sw, eps, rows, cw, zl, lout, rowv, ly)
        else:
            ngroups = (R + group - 1) // group
            for w in prange(workers):
                for g in range(w, ngroups, workers):
                    r0 = g * group
                    r1 = min(R, r0 + group)
                    for k in range(K):
                        gslab[g, k] = 0.0
                    cols = Z[: K * R].reshape((K, R))[:, r0:r1]
                    glosses[g] = tile_loss_and_coef(cols.T, cols, E[w], aux[w], b, labels, T,
                                                    sw, eps, rows[r0:r1], gslab[g], cw, zl, cap,
                                                    lout)
            for g in range(ngroups):
                loss += glosses[g]
        # 3. D[block] in place, the block's intercept sums, dW[block] += D[block] X_t
        for q in prange(nblocks):
            k0 = q * class_block
            k1 = min(K, k0 + class_block)
            if cap is None:
                block_gradient(Z[k0 * R:], R, k0, k1, b, labels, T, eps, rows, cw, rowv, ly,
                               gb)
            else:
                for g in range((R + group - 1) // group):
                    for k in range(k0, k1):
                        gb[k] += gslab[g, k]
            gemm(addr, False, False, k1 - k0, n, R, 1.0, Z[k0 * R:], R, Xt, n, 1.0, G[k0:], n)
        # 4. dX rows of the super-tile: D^T W, by blocks of columns
        if want_dx:
            for q in prange(ncols):
                c0 = q * column_block
                c1 = min(n, c0 + column_block)
                if contiguous:
                    gemm(addr, True, False, R, c1 - c0, K, 1.0, Z, R, W[:, c0:], n, 0.0,
                         dX[t0:, c0:], n)
                else:
                    gemm(addr, True, False, R, c1 - c0, K, 1.0, Z, R, W[:, c0:], n, 0.0,
                         dxbuf[:, c0:], n)
                    for r in range(R):
                        for l in range(c0, c1):
                            dX[rows[r], l] = dxbuf[r, l]
    return loss, gb


def vocab_sums(X: np.ndarray, W: np.ndarray, b: np.ndarray, labels: np.ndarray,
               T: np.ndarray, sw: np.ndarray, eps: float, dX: np.ndarray | None, *,
               tile: int, class_block: int, column_block: int, group: int, workers: int,
               cw: np.ndarray | None = None, zl: float | None = None, cap: float | None = None,
               losses: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Unnormalised ``(loss_sum, G, gb)`` of softmax regression, for large K.

    X (m, n) any layout, W (K, n) C-contiguous, b (K,), of one float dtype;
    labels, T, sw, eps as for :func:`fastsoftmax._fused.fused_sums`.  ``dX``,
    when given, is a C-ordered (m, n) zero array of the working dtype that
    receives the unnormalised input gradient of every kept row.  Returns G
    (K, n) in the working dtype (a new array: the weighted sum over samples of
    ``(s_i p_i - t_i) x_i^T``) and gb (K,) float64.  ``tile`` rows per
    super-tile, ``class_block`` classes per logits / dW block,
    ``column_block`` columns per dX block, ``group`` rows per call of the row
    numerics, ``workers`` parallel workers for the row numerics.  ``cw``,
    ``zl``, ``cap``, ``losses``: the options of issue 10 as for
    :func:`fastsoftmax._rowmath.tile_loss_and_coef` (``losses`` (m,) float64
    zeros receive the kept samples' weighted losses).  The caller holds BLAS
    to one thread and enters the parallel region.
    """
    m, n = X.shape
    K = W.shape[0]
    G = np.zeros((K, n), dtype=X.dtype)
    if dX is None:
        dX = np.empty((0, n), dtype=X.dtype)
    tile = max(1, min(tile, m))
    loss, gb = _vocab_kernel(X, W, b, labels, T, sw, eps, gemm_address(X.dtype), tile,
                             class_block, column_block, group, workers, dX, G, cw, zl, cap,
                             losses)
    return loss, G, gb


def add_penalty(dW: np.ndarray, W: np.ndarray, l2: float, rows: int = 1024) -> float:
    """``dW += l2 W`` in place, in blocks of ``rows`` rows (no (K, n)
    temporary); returns ``||W||_F^2`` summed in float64."""
    total = 0.0
    for k0 in range(0, W.shape[0], rows):
        Wb = np.asarray(W[k0:k0 + rows], dtype=np.float64)
        total += float(np.vdot(Wb, Wb))
        dW[k0:k0 + rows] += (l2 * Wb).astype(dW.dtype)
    return total
