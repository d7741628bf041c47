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
   per block;
2. softmax, loss and logit gradient, parallel over groups of ``group`` rows:
   :func:`fastsoftmax._vocab_rows.group_loss_and_coef` reads the group's
   columns of Z^T in three passes and writes the weighted logit gradients
   ``D = w_i (s_i p_i - t_i)`` over them, in place (with soft-capping,
   :func:`fastsoftmax._rowmath.tile_loss_and_coef`, the fused kernel's own
   per-tile numerics, which reads all of its logits into float64 scratch
   before it writes D; a change to it that re-read them afterwards would
   break this kernel, and tests/test_vocab.py would say so); each group's
   loss and intercept sums go to the group's own slot;
3. input gradient (``dX`` wanted), parallel over blocks of ``column_block``
   columns of X: ``dX_t[:, cols] = D^T W[:, cols]``, one GEMM per block,
   straight into dX's rows (through a buffer when rows were dropped);
4. weight gradient, parallel over class blocks: ``dW[block] += D[block] X_t``,
   one GEMM per block with ``beta = 1`` (:func:`fastsoftmax._gemm.gemm`), so
   the product is added inside BLAS without a temporary; the same owner adds
   the groups' intercept sums for its classes, in group order.

Flops: 2 m n K per GEMM, 6 m n K with dX (4 m n K without), the minimum for
these products, plus O(m K) for the softmax.  Between phases the threads
meet at the end of a parallel region (tens of microseconds each, four per
super-tile), which is why the dispatcher uses this kernel only for large K.

Memory besides the outputs (dX (m, n) and dW (K, n) in the working dtype):
the super-tile's logits ``tile K`` entries of the working dtype, one X tile
(and one dX tile) ``tile n`` entries and the groups' float64 intercept sums
``ceil(tile / group) K 8`` bytes; with soft-capping also float64 softmax
scratch ``workers group K 8`` bytes.  Independent of m, and a fraction of dW
when ``tile`` is a fraction of n (see ``fastsoftmax._dispatch.vocab_plan``:
n / 5, so the whole call stays within 1.25x the gradients' own size).

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
(super-tiles in row order, groups in group order).  So the result depends on
the inputs and on ``tile``, ``class_block``, ``column_block`` and ``group``,
never on the number of threads or on which thread ran what: repeated calls
and calls with different thread counts give bitwise-identical results.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._gemm import gemm, gemm_address
from ._jit import parallel_kernel
from ._rowmath import tile_loss_and_coef
from ._tiles import kept_tile
from ._vocab_rows import group_loss_and_coef


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
    max_groups = (tile + group - 1) // group
    gslab = np.empty((max_groups, K))
    glosses = np.empty(max_groups)
    E = np.empty((workers, K * group if cap is not None else 0))  # soft-capping's float64 copy
    aux = np.empty((workers, 4 if cap is not None else 0, group))
    gb = np.zeros(K)
    nblocks = (K + class_block - 1) // class_block
    ncols = (n + column_block - 1) // column_block
    loss = 0.0
    for t0 in range(0, m, tile):
        t1 = min(t0 + tile, m)
        Xt = kept_tile(X, labels, t0, t1, rows, xbuf)
        R = Xt.shape[0]
        if R == 0:
            continue
        contiguous = R == t1 - t0
        ngroups = (R + group - 1) // group
        # 1. logits, class-major: Z^T[block] = W[block] X_t^T
        for q in prange(nblocks):
            k0 = q * class_block
            k1 = min(K, k0 + class_block)
            gemm(addr, False, True, k1 - k0, R, n, 1.0, W[k0:], n, Xt, n, 0.0, Z[k0 * R:], R)
        # 2. softmax, loss and D in place, by groups of rows
        for w in prange(workers):
            for g in range(w, ngroups, workers):
                r0 = g * group
                r1 = min(R, r0 + group)
                for k in range(K):
                    gslab[g, k] = 0.0
                if cap is None:
                    glosses[g] = group_loss_and_coef(Z, R, r0, r1 - r0, b, labels, T, sw, eps,
                                                     rows[r0:r1], gslab[g], cw, zl, lout)
                else:
                    cols = Z[: K * R].reshape((K, R))[:, r0:r1]
                    glosses[g] = tile_loss_and_coef(cols.T, cols, E[w], aux[w], b, labels, T,
                                                    sw, eps, rows[r0:r1], gslab[g], cw, zl, cap,
                                                    lout)
        # 3. dX rows of the super-tile: D^T W, by blocks of columns
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
        # 4. dW[block] += D[block] X_t (inside BLAS), and the block's intercept sums
        for q in prange(nblocks):
            k0 = q * class_block
            k1 = min(K, k0 + class_block)
            gemm(addr, False, False, k1 - k0, n, R, 1.0, Z[k0 * R:], R, Xt, n, 1.0, G[k0:], n)
            for g in range(ngroups):
                for k in range(k0, k1):
                    gb[k] += gslab[g, k]
        for g in range(ngroups):
            loss += glosses[g]
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
