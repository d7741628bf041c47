"""Newton-CG on CSR X by columns: gradient, Hessian products and diagonal from X's transpose.

The fused sparse kernel (:mod:`fastsoftmax._sparse_fused`) walks X by rows:
each non-zero gathers its column's row of ``W^T`` (or ``V^T``) and then
scatters into its column's row of a per-chunk (n, K) slab, and the slabs
are added up afterwards.  On text data the scatter lands all over slabs
larger than the cache, and the slabs cost ``chunks n K 8`` bytes and a pass
to combine.  A Newton-CG fit evaluates and multiplies dozens of times with
one X, so it can afford X's transpose (:attr:`fastsoftmax._sparse.CSR.transposed`,
made once a fit) and split each pass into two gathers:

1. by rows of X, an (m, K) float64 array of per-sample coefficients:
   :func:`gradient_pass` writes the weighted logit gradients
   ``w_i (s_i p_i - t_i)`` (and the loss) with, in the same pass, the
   probabilities and scales ``curv`` (m, K + 1) that the point's Hessian
   products read (no pass of their own); :func:`directions_pass` writes a
   product's ``w_i s_i p_i * (u_i - <p_i, u_i>)`` with ``u_i = V x_i + vb``
   from ``curv``.  Each part of the rows sums its rows (the intercepts');
2. :func:`columns_pass`, by rows of X^T: row j of ``G`` (n, K) float64 becomes
   ``sum_i x_ij D[i, :]``, written once; for a product each part also
   finishes its rows (``G / denom + l2 V``) and sums ``<V, G>`` over them.

Every row of D and of G is one sum in a fixed order, and the parts' sums
are added in part order over a fixed partition (:meth:`fastsoftmax._sparse.CSR.parts`,
``SPARSE_COLUMN_PARTS`` parts of about equal non-zeros): the results do not
depend on the thread count.  The parts run in a few tasks a thread, each
with its own tile scratch (:func:`group_parts`).  The Hessian's diagonal
is the second pass alone, over X's squares (``square``) with the
curvatures ``w_i s_i p_ik (1 - p_ik)`` in place of D.  Samples that
ignore_index drops are skipped in both passes (their x may be inf).

The second pass gathers rows of the (m, K) array where the row kernel
scatters into (n, K) slabs, so it wins when m is small beside n and loses
when m is much larger (:data:`fastsoftmax._dispatch.SPARSE_COLUMNS_MAX_ROWS_PER_COLUMN`,
with the measurements).  On 20-newsgroups-shaped data (11314 x 130107,
1.8 M non-zeros, K = 20; idle, 2 threads, medians of calls 0.05 s
apart) an evaluation with the point's probabilities took 28 ms against
60 ms by rows (the loss and gradient, then the curvature pass), a product
28 ms against 35 ms (back to back, in a first prototype: 20 against 34).

Peak extra memory: an evaluation, ``m K 8`` bytes (the coefficients)
besides ``curv`` (``m (K + 1) 8``, kept for the products), its W^T in the
working dtype and two (n, K) float64 arrays (the sums and their transpose,
the gradient); a product, its D (``m K 8``, the caller's); the diagonal,
the curvatures (``m K 8``); per task ``(3 K + 5) tile 8`` bytes of tile
scratch (``tile`` = ``_dispatch.sparse_column_tile_rows(K)``, so about
100 KiB up to K = 256) and 16 K bytes; and X's transpose, about X's own
size, kept with X.  No slabs.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import parallel_kernel, serial_kernel
from ._lanes import row_sums
from ._prefetch import prefetch_row
from ._rowmath import tile_loss_and_coef, tile_probabilities
from ._sparse_fused import gather_tile, tile_logits


@serial_kernel
def direction_rows(data, indices, indptr, Vt, vb, curv, D, start, stop, tile, rows, acc, gb,
                   ahead):
    """Rows start:stop of :func:`directions_pass`, in tiles of ``tile`` rows
    (``rows`` (>= tile,) int64 and ``acc`` (>= K,) float64 scratch); their
    sum of D's rows is written into ``gb`` (K,)."""
    K = vb.shape[0]
    for k in range(K):
        gb[k] = 0.0
    for t0 in range(start, stop, tile):
        t1 = min(t0 + tile, stop)
        for r in range(t1 - t0):
            rows[r] = t0 + r
        tile_logits(data, indices, indptr, Vt, rows[: t1 - t0], D[t0:t1], ahead)
        for i in range(t0, t1):
            pu = 0.0
            for k in range(K):
                p = curv[i, k]
                pu += p * (D[i, k] + vb[k]) if p != 0.0 else 0.0
            scale = curv[i, K]
            for k in range(K):
                p = curv[i, k]
                D[i, k] = scale * p * (D[i, k] + vb[k] - pu) if p != 0.0 else 0.0
        for k in range(K):
            total = 0.0
            for i in range(t0, t1):
                total += D[i, k]
            acc[k] = total
        for k in range(K):
            gb[k] += acc[k]


@parallel_kernel
def directions_pass(data, indices, indptr, Vt, vb, curv, D, bounds, tile, rows, acc, gb, ahead):
    """The first pass of a product (see the module docstring) over the
    parts ``bounds[c]:bounds[c + 1]`` of X's rows, in parallel.

    ``data`` (nnz,), ``Vt`` (n, K) and ``vb`` (K,) of one float dtype,
    ``indices`` (nnz,) and ``indptr`` (m + 1,) of one integer dtype, ``curv``
    (m, K + 1) float64 (rows that ignore_index drops are 0, so their D rows
    are 0 whatever V holds), ``D`` (m, K) float64 out.  Scratch per group
    of parts (one group a task, :func:`group_parts`): ``rows`` (groups,
    tile) int64, ``acc`` (groups, K) float64; ``gb`` (parts, K) float64
    receives each part's sum of D's rows.  Returns the sum of ``gb``'s rows
    in part order (K,)."""
    groups = rows.shape[0]
    parts = bounds.shape[0] - 1
    for g in prange(groups):
        for c in range(group_parts(g, groups, parts), group_parts(g + 1, groups, parts)):
            direction_rows(data, indices, indptr, Vt, vb, curv, D, bounds[c], bounds[c + 1],
                           tile, rows[g], acc[g], gb[c], ahead)
    return part_order_sum(gb)


@serial_kernel
def group_parts(g, groups, parts):
    """The first of the consecutive parts that task g of ``groups`` runs
    (``parts`` of them in all): the parts' sums do not depend on how they
    are grouped, so the groups (and the scratch, one per group) can follow
    the thread count while the results do not."""
    return g * parts // groups


@serial_kernel
def part_order_sum(sums):
    """The sum of the rows of ``sums`` (parts, K) float64, added in part order: (K,)."""
    total = np.zeros(sums.shape[1])
    for c in range(sums.shape[0]):
        for k in range(sums.shape[1]):
            total[k] += sums[c, k]
    return total


@serial_kernel
def gradient_rows(data, indices, indptr, Wt, b, labels, T, sw, eps, start, stop, tile, Z, E,
                  P, aux, rows, R, curv, gb, ahead):
    """Rows start:stop of :func:`gradient_pass` in tiles of ``tile`` rows
    (scratch: ``Z`` (>= tile K,), ``E`` and ``P`` (>= K tile,), ``aux`` (4,
    >= tile) float64, ``rows`` (>= tile,) int64): returns
    their loss sum and writes their sum of R's rows into ``gb`` (K,)."""
    K = b.shape[0]
    for k in range(K):
        gb[k] = 0.0
    loss = 0.0
    for t0 in range(start, stop, tile):
        Rt, Zr = gather_tile(data, indices, indptr, Wt, labels, t0, min(t0 + tile, stop), rows,
                             Z, ahead)
        if Rt == 0:
            continue
        Dm = P[: K * Rt].reshape((K, Rt))
        loss += tile_loss_and_coef(Zr, Dm, E, aux, b, labels, T, sw, eps, rows[:Rt], gb, None,
                                   None, None, None)
        for r in range(Rt):
            i = rows[r]
            for k in range(K):
                R[i, k] = Dm[k, r]
        tile_probabilities(Zr, b, Dm, aux, rows[:Rt], labels, T, sw, eps)
        for r in range(Rt):
            i = rows[r]
            for k in range(K):
                curv[i, k] = Dm[k, r]
            curv[i, K] = aux[2, r]
    return loss


@parallel_kernel
def gradient_pass(data, indices, indptr, Wt, b, labels, T, sw, eps, bounds, tile, Z, E, P, aux,
                  rows, R, curv, gb, losses, ahead):
    """The loss and the first pass of the gradient by columns over the parts
    ``bounds[c]:bounds[c + 1]`` of X's rows, in parallel: returns
    ``(loss sum, gb sum)``.

    ``Wt`` (n, K) is W transposed, ``b`` (K,), labels, T, sw and eps as in
    :func:`fastsoftmax._fused.fused_sums`.  For every row i that ignore_index
    keeps, row i of ``R`` (m, K) float64 becomes the weighted logit gradient
    ``w_i (s_i p_i - t_i)`` (:func:`fastsoftmax._rowmath.tile_loss_and_coef`;
    the gradient is then X^T R, :func:`columns_pass`) and row i of ``curv``
    (m, K + 1) float64 the probabilities and the scale ``w_i s_i`` that the
    point's Hessian products read (as
    :func:`fastsoftmax._sparse_fused.sparse_curvature` makes them; the other
    rows are left as they are).  Scratch per group (:func:`group_parts`):
    ``Z``, ``E``, ``P`` (groups, tile K), ``aux`` (groups, 4, tile)
    float64, ``rows`` (groups, tile) int64; per part ``gb``
    (parts, K) and ``losses`` (parts,) float64, added in part order."""
    groups = rows.shape[0]
    parts = bounds.shape[0] - 1
    for g in prange(groups):
        for c in range(group_parts(g, groups, parts), group_parts(g + 1, groups, parts)):
            losses[c] = gradient_rows(data, indices, indptr, Wt, b, labels, T, sw, eps,
                                      bounds[c], bounds[c + 1], tile, Z[g], E[g], P[g], aux[g],
                                      rows[g], R, curv, gb[c], ahead)
    loss = 0.0
    for c in range(parts):
        loss += losses[c]
    return loss, part_order_sum(gb)


@serial_kernel
def column_rows(data, indices, indptr, D, square, labels, G, start, stop, denom, l2, Vt, acc,
                ahead):
    """Rows start:stop of :func:`columns_pass`; returns their part of
    ``<V, G>`` (0 unless ``denom`` > 0); ``acc`` (>= K,) float64 scratch.
    Without samples to skip the sums go through
    :func:`fastsoftmax._lanes.row_sums` (vector lanes); with them, through
    a loop that checks each sample."""
    check = labels.shape[0] > 0
    K = D.shape[1]
    last = indptr[-1] - 1
    sums = acc[:K]
    for j in range(start, stop):
        if not check:
            row_sums(data, indices, indptr[j], indptr[j + 1], last, ahead, D, square, sums)
        else:
            for k in range(K):
                acc[k] = 0.0
            for p in range(indptr[j], indptr[j + 1]):
                prefetch_row(D, indices[min(p + ahead, last)])
                i = indices[p]
                if labels[i] < 0:
                    continue  # a dropped row: its x may be inf, and 0 * inf must not enter
                v = np.float64(data[p])
                if square:
                    v = v * v
                for k in range(K):
                    acc[k] += v * D[i, k]
        if not denom > 0.0:
            for k in range(K):
                G[j, k] = acc[k]
        elif l2 != 0.0:
            for k in range(K):
                G[j, k] = acc[k] / denom + l2 * np.float64(Vt[j, k])
        else:  # no l2 V term: an inf of V in a column no row touches stays out
            for k in range(K):
                G[j, k] = acc[k] / denom
    if not denom > 0.0:
        return 0.0
    curvature = 0.0
    for j in range(start, stop):
        for k in range(K):
            curvature += np.float64(Vt[j, k]) * G[j, k]
    return curvature


@parallel_kernel
def columns_pass(data, indices, indptr, D, square, labels, G, bounds, denom, l2, Vt, acc, parts,
                 ahead):
    """``G[j, :] = sum over the non-zeros (i, x) of row j of X^T of x D[i, :]``
    (``x**2`` with ``square``), skipping the samples i with ``labels[i] < 0``
    (those ignore_index drops; ``labels`` (m,) int64, or empty: none), over
    the parts ``bounds[c]:bounds[c + 1]`` of X^T's rows, in parallel.

    ``data``, ``indices``, ``indptr``: X^T's CSR arrays (n rows); ``D``
    (m, K) float64; ``G`` (n, K) float64 out.  With ``denom`` > 0 (a
    product; ``Vt`` (n, K) its direction) G is finished, ``G / denom + l2
    Vt`` (no l2 term when l2 is 0), and the result is ``<Vt, G>``, summed
    by parts (``parts``: float64 scratch, one entry a part) in part order;
    else 0.  ``acc`` (groups, K) float64 scratch, one row per group of
    parts (:func:`group_parts`)."""
    groups = acc.shape[0]
    nparts = bounds.shape[0] - 1
    for g in prange(groups):
        for c in range(group_parts(g, groups, nparts), group_parts(g + 1, groups, nparts)):
            parts[c] = column_rows(data, indices, indptr, D, square, labels, G, bounds[c],
                                   bounds[c + 1], denom, l2, Vt, acc[g], ahead)
    curvature = 0.0
    for c in range(nparts):
        curvature += parts[c]
    return curvature
