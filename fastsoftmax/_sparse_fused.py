"""The fused kernel on CSR X: logits, loss and gradient from the non-zeros.

Same contract as :func:`fastsoftmax._fused.fused_sums` (unnormalised loss
sum, G (K, n) and gb (K,) float64), for X given by its CSR arrays ``data``
(nnz,), ``indices`` (nnz,) and ``indptr`` (m + 1,), and W given transposed,
``Wt`` (n, K) C-contiguous in the working dtype (made once per call by the
caller, so that the K weights of one column are contiguous for each
non-zero).  The rows are split into ``nchunks`` contiguous chunks; each
chunk walks its rows in tiles of ``tile`` rows:

1. the tile's logits, ``Z[r, k] = sum over the row's non-zeros of
   x * Wt[col, k]``, accumulated in float64 in a (R, K) buffer;
2. :func:`fastsoftmax._rowmath.tile_loss_and_coef`, the dense kernel's
   per-tile core, adds the intercept and gives the loss and the weighted
   logit gradients D (K, R);
3. each non-zero x of row r adds ``x * D[:, r]`` to the row of the chunk's
   gradient slab that belongs to its column.

Memory: a dense (n, K) float64 slab per chunk costs ``nchunks * n * K * 8``
bytes, 42 MB for 20 newsgroups' 130107 columns and 20 classes on 2 threads
and ten times that on 20.  Dense slabs are used while they take at most
``_dispatch.SPARSE_DENSE_SLAB_BYTES`` (64 MiB) together: slab row j then
belongs to column j, with no lookup per non-zero.  Beyond that, a first pass
gives every chunk a map from the columns its rows touch to consecutive slab
rows (in column order), and the chunk accumulates into an (n_c, K) slab of
just those columns.  Either way the slabs are then added into G column by
column, in chunk order (deterministic: the result depends on the inputs,
``tile``, ``nchunks`` and the slab layout only); G is the caller's, (K, n)
or, for Newton-CG's feature-major vectors, (n, K) (the slabs' own layout).

The slabs go into the caller's workspace when it is large enough (a
Hessian product reuses one across its calls), else into new memory.

Hessian-vector products at a point (W, b) take two kernels: once,
:func:`sparse_curvature` stores the probabilities p_i and the scales
``w_i s_i`` of every row, ``curv`` (m, K + 1) float64 (the logits' gather
and exponentials of one loss evaluation); then every product is the same
pass as the gradient's with ``V^T`` (n, K) in place of ``W^T``: the tile's
directions ``V x_i`` from the non-zeros, the softmax Jacobian applied to them
from the stored probabilities (:func:`tile_cached_coef`), and the scatter.
Measured on 20-newsgroups-shaped data (idle, 2 threads): a product took
48 ms recomputing the probabilities from ``[W; V]^T`` (n, 2K) every time,
and 34 ms with them stored (one thread: 77 and 58 ms).  The Hessian's
diagonal at the point goes through the same driver with
:func:`diagonal_chunk` (the stored probabilities' curvatures scattered
with X's squares, no gather): the whole diagonal took 32 ms on that data
with SciPy's single-threaded product, 22 ms so (medians of 9 calls).
``curv`` is the one m x K array of this module: the caller keeps it for
as long as it makes products at the point.  Newton-CG, which evaluates and
multiplies many times with one X, works by columns from X's transpose
instead when X is not taller than wide (:mod:`fastsoftmax._sparse_columns`).

Peak extra memory, besides the float64 gradient sums G (K n entries, the
caller's): ``n K itemsize`` (Wt) plus either the dense slabs, ``nchunks n
K 8 <= 64 MiB``, or ``nchunks n 8`` (column maps) ``+ sum_c n_c K 8``
(slabs, ``n_c <= min(n, non-zeros of chunk c)``, so their total is at most
``min(nchunks n, nnz) K 8``); plus ``nchunks tile (3 K + 5) 8`` (tile
buffers).  So at most ``n K itemsize + max(64 MiB, nchunks n 8 +
min(nchunks n, nnz) K 8)`` plus the tile buffers.  Nothing of size m x K
besides a Hessian product's ``curv``, and X is never densified.

Compiled variants: one per (data dtype, index dtype) pair, 4 per kernel
(and as many again for column maps instead of dense slabs).  The parallel
kernels call the chunk functions through their addresses
(:mod:`fastsoftmax._compiled`): linked into them, the chunks' code was
compiled again for each of numba's wrappers of the parallel loops (the
first call on CSR X took 16 s to compile, now 8 s, and the first Hessian
product after it 12.5 s, now 5.6 s).
"""

from __future__ import annotations

import numpy as np
from numba import prange, typeof, types
from numba.extending import overload

from ._accumulate import zero
from ._compiled import CompiledFunction, array_key, call_compiled
from ._jit import OVERLOAD_OPTIONS, parallel_kernel, serial_kernel
from ._lanes import row_sums, scatter_rows
from ._rowmath import tile_loss_and_coef, tile_probabilities
from ._tiles import kept_rows


@serial_kernel
def map_columns(indices, indptr, start, stop, colmap):
    """Number the columns rows start:stop touch: colmap[j] = their rank in
    column order, -1 for the others; returns how many there are."""
    n = colmap.shape[0]
    for j in range(n):
        colmap[j] = -1
    for p in range(indptr[start], indptr[stop]):
        colmap[indices[p]] = 0
    count = 0
    for j in range(n):
        if colmap[j] == 0:
            colmap[j] = count
            count += 1
    return count


@serial_kernel
def tile_logits(data, indices, indptr, At, rows, Zr, ahead):
    """``Zr[r, k] = sum over the non-zeros (j, x) of row rows[r] of x At[j, k]``
    (float64 sums), for r < Zr.shape[0] and the C columns of ``At`` (n, C)
    C-contiguous, in vector lanes (:func:`fastsoftmax._lanes.row_sums`).  The At row of
    the non-zero ``ahead`` places on is prefetched (see :func:`sparse_chunk`)."""
    last = indptr[-1] - 1
    for r in range(Zr.shape[0]):
        i = rows[r]
        row_sums(data, indices, indptr[i], indptr[i + 1], last, ahead, At, False, Zr[r])


@serial_kernel
def scatter_tile(data, indices, indptr, colmap, Dm, rows, slab, acc, ahead):
    """Every non-zero (j, x) of row rows[r] adds ``x Dm[:, r]`` to slab row
    colmap[j] (``Dm`` (K, R), ``slab`` (n_c, K) float64, ``acc`` (>= K,)
    scratch); with ``colmap`` None, to slab row j of a dense (n, K) slab, in
    vector lanes (:func:`fastsoftmax._lanes.scatter_rows`).  The slab row of
    the non-zero ``ahead`` places on is prefetched."""
    K, R = Dm.shape
    last = indptr[-1] - 1
    coef = acc[:K]
    for r in range(R):
        i = rows[r]
        for k in range(K):
            coef[k] = Dm[k, r]
        scatter_rows(data, indices, indptr[i], indptr[i + 1], last, ahead, colmap, coef, slab)


@serial_kernel
def gather_tile(data, indices, indptr, At, labels, t0, t1, rows, Z, ahead):
    """The kept rows of tile t0:t1 (:func:`kept_rows`, into ``rows``) and
    their logits against ``At`` (n, C) (:func:`tile_logits`, into the
    float64 buffer ``Z`` (>= (t1 - t0) C,)): returns ``(R, Zr)``, R their
    count and Zr the (R, C) view of Z that holds them."""
    R = kept_rows(labels, t0, t1, rows)
    C = At.shape[1]
    Zr = Z[: R * C].reshape((R, C))
    if R > 0:
        tile_logits(data, indices, indptr, At, rows[:R], Zr, ahead)
    return R, Zr


@serial_kernel
def curvature_chunk(data, indices, indptr, Wt, b, labels, T, sw, eps, start, stop, tile, ahead,
                    curv):
    """Rows start:stop in tiles: row i of ``curv`` (m, K + 1) float64 becomes
    the probabilities ``p_i`` at (W, b) followed by the scale ``w_i s_i`` (see
    :func:`fastsoftmax._rowmath.tile_probabilities`), for the rows that
    ignore_index keeps (the others are left as they are)."""
    K = b.shape[0]
    Z = np.empty(tile * K)
    P = np.empty(K * tile)
    aux = np.empty((3, tile))
    rows = np.empty(tile, dtype=np.int64)
    for t0 in range(start, stop, tile):
        R, Zr = gather_tile(data, indices, indptr, Wt, labels, t0, min(t0 + tile, stop), rows,
                            Z, ahead)
        if R == 0:
            continue
        Pm = P[: K * R].reshape((K, R))
        tile_probabilities(Zr, b, Pm, aux, rows[:R], labels, T, sw, eps)
        for r in range(R):
            i = rows[r]
            for k in range(K):
                curv[i, k] = Pm[k, r]
            curv[i, K] = aux[2, r]


@parallel_kernel
def sparse_curvature(chunk, data, indices, indptr, Wt, b, labels, T, sw, eps, nchunks, tile,
                     ahead, curv):
    """:func:`curvature_chunk` (``chunk``, compiled for these arguments by
    :func:`curvature_entry` and called through its address) over ``nchunks``
    parallel row chunks, into ``curv`` (m, K + 1) float64 (zeroed by the
    caller: rows dropped by ignore_index stay 0).  What a point's Hessian
    products need: one pass of the loss's gather and exponentials, done once
    instead of in every product.  Returns whether some chunk raised (the
    caller then runs :func:`curvature_chunk` on the calling thread, where the
    exception surfaces)."""
    m = indptr.shape[0] - 1
    failures = 0
    for c in prange(nchunks):
        out = call_compiled(chunk, data, indices, indptr, Wt, b, labels, T, sw, eps,
                            np.int64(c * m // nchunks), np.int64((c + 1) * m // nchunks), tile,
                            ahead, curv)
        failures += np.int64(out[1])
    return failures > 0


#: curvature_chunk's entry points, by what the numba types of its arguments depend on.
_curvature_entries: dict = {}


def curvature_entry(data, indices, indptr, Wt, b, labels, T, sw, curv) -> CompiledFunction:
    """:func:`curvature_chunk` compiled for these arguments."""
    arrays = (data, indices, indptr, Wt, b, labels, T, sw, curv)
    key = tuple(array_key(a) for a in arrays)
    entry = _curvature_entries.get(key)
    if entry is None:
        argtypes = (*(typeof(a) for a in arrays[:8]), types.float64, types.int64, types.int64,
                    types.int64, types.int64, typeof(curv))
        entry = _curvature_entries.setdefault(key, CompiledFunction(curvature_chunk, argtypes))
    return entry


@serial_kernel
def tile_cached_coef(Ur, D, curv, vb, rows, gb, pu):
    """The softmax Jacobian applied to a tile's logit directions, from cached
    probabilities.

    ``Ur`` (R, K) holds ``V x_i`` (without ``vb`` (K,)) for the samples
    ``i = rows[r]``; ``curv`` (m, K + 1) float64 their probabilities and
    scales (:func:`curvature_chunk`).  Column r of ``D`` (K, R) becomes
    ``w_i s_i p_i * (u_i - <p_i, u_i>)`` with ``u_i = V x_i + vb`` (a class
    of probability 0 adds nothing, whatever u is), and the tile's sum of
    those columns is added to ``gb`` (K,) float64; ``pu`` (>= R,) float64
    scratch.  Reduction loops only read memory (see
    :mod:`fastsoftmax._rowmath`).
    """
    K, R = D.shape
    for r in range(R):
        i = rows[r]
        acc = 0.0
        for k in range(K):
            p = curv[i, k]
            acc += p * (Ur[r, k] + vb[k]) if p != 0.0 else 0.0
        pu[r] = acc
    for r in range(R):
        i = rows[r]
        scale = curv[i, K]
        for k in range(K):
            p = curv[i, k]
            D[k, r] = scale * p * (Ur[r, k] + vb[k] - pu[r]) if p != 0.0 else 0.0
    for k in range(K):
        acc = 0.0
        for r in range(R):
            acc += D[k, r]
        gb[k] += acc


@serial_kernel
def sparse_chunk(data, indices, indptr, At, b, vb, labels, T, sw, eps, start, stop, tile,
                 ahead, colmap, slab, gb, curv):
    """Rows start:stop in tiles: adds their sums to ``slab`` (n_c, K) float64
    (row colmap[j] for column j; with ``colmap`` None, ``slab`` (n, K) and
    row j) and gb (K,); returns their loss sum.

    ``vb`` None: the loss and gradient, with ``At = W^T`` (n, K) (``curv``
    None).  ``vb`` a (K,) direction for the intercept: the Hessian-vector
    product, with ``At = V^T`` (n, K) and the point's probabilities and
    scales ``curv`` (m, K + 1) (:func:`sparse_curvature`); the loss returned
    is then 0.  numba compiles one of the two per call site.

    The rows of At and of the slab that the non-zero ``ahead`` places on will
    read are prefetched: the columns of text data are scattered over arrays
    larger than the cache, and waiting for each row was the kernel's largest
    cost.
    """
    K = b.shape[0]
    C = At.shape[1]
    Z = np.empty(tile * C)
    D = np.empty(K * tile)
    E = np.empty(tile * C)
    aux = np.empty((4, tile))
    rows = np.empty(tile, dtype=np.int64)
    acc = np.empty(C)
    loss = 0.0
    for t0 in range(start, stop, tile):
        R, Zr = gather_tile(data, indices, indptr, At, labels, t0, min(t0 + tile, stop), rows,
                            Z, ahead)
        if R == 0:
            continue
        Dm = D[: K * R].reshape((K, R))
        if vb is None:
            loss += tile_loss_and_coef(Zr, Dm, E, aux, b, labels, T, sw, eps, rows[:R], gb,
                                       None, None, None, None)
        else:
            tile_cached_coef(Zr, Dm, curv, vb, rows[:R], gb, aux[0])
        scatter_tile(data, indices, indptr, colmap, Dm, rows[:R], slab, acc, ahead)
    return loss


@serial_kernel
def add_slabs(G, colmaps, slabs, offsets, j0, j1, feature_major, denom, l2, V):
    """Column j of the gradient = the sum of the slab rows of column j of the
    chunks, added in chunk order, for j in j0:j1 (G may be uninitialised
    there): ``G[:, j]`` of a (K, n) G, or with ``feature_major`` ``G[j, :]``
    of an (n, K) G (the slabs' own layout: contiguous reads and writes).
    Returns 0, or with ``denom`` > 0 (feature-major Hessian products: ``V``
    the (n, K) direction the chunks gathered from) finishes the product in
    place, ``G[j, k] = sum / denom + l2 V[j, k]`` (no ``l2 V`` term when l2
    is 0, so that an inf of V in a column no row touches stays out), and
    returns these columns' part of ``<V, G>``: what conjugate gradients
    need of a product, without a pass over parameter-sized arrays of their
    own (3 ms a product on 20-newsgroups-shaped data).

    Chunk c's slab is ``slabs[offsets[c] K: offsets[c + 1] K]``, its row for
    column j ``colmaps[c, j]`` (-1: none); with ``colmaps`` None, the slabs
    are dense (n, K) and the row is j."""
    K = G.shape[1] if feature_major else G.shape[0]
    if feature_major:
        for j in range(j0, j1):
            for k in range(K):
                G[j, k] = 0.0
    else:
        for k in range(K):
            for j in range(j0, j1):
                G[k, j] = 0.0
    for c in range(offsets.shape[0] - 1):  # chunk order for every entry
        base = offsets[c]
        for j in range(j0, j1):
            loc = j if colmaps is None else colmaps[c, j]
            if loc >= 0:
                row = (base + loc) * K
                if feature_major:
                    for k in range(K):
                        G[j, k] += slabs[row + k]
                else:
                    for k in range(K):
                        G[k, j] += slabs[row + k]
    if not denom > 0.0:
        return 0.0
    for j in range(j0, j1):
        if l2 != 0.0:
            for k in range(K):
                G[j, k] = G[j, k] / denom + l2 * np.float64(V[j, k])
        else:
            for k in range(K):
                G[j, k] = G[j, k] / denom
    curvature = 0.0  # (a loop that stores never also reduces: see _rowmath)
    for j in range(j0, j1):
        for k in range(K):
            curvature += np.float64(V[j, k]) * G[j, k]
    return curvature


# Allocation and zeroing in serial helpers: in a parallel kernel numba turns
# every np.zeros / np.full and every slice assignment into a parallel loop of
# its own, each compiled as one more function (and each a wake-up of the
# threads at run time).

@serial_kernel
def _chunk_plan(m, n, nchunks):
    """``(bounds (nchunks + 1,), counts (nchunks,) = n, offsets (nchunks + 1,) = 0)``,
    int64: chunk c holds rows bounds[c]:bounds[c + 1]."""
    bounds = np.empty(nchunks + 1, dtype=np.int64)
    for c in range(nchunks + 1):
        bounds[c] = c * m // nchunks
    return bounds, np.full(nchunks, n, dtype=np.int64), np.zeros(nchunks + 1, dtype=np.int64)


@serial_kernel
def _chunk_sums(nchunks, K):
    """Zeroed ``(bias (nchunks, K), losses (nchunks,), failed (nchunks,) bool, gb (K,))``."""
    return (np.zeros((nchunks, K)), np.zeros(nchunks), np.zeros(nchunks, dtype=np.bool_),
            np.zeros(K))


@serial_kernel
def slab_space(work, size):
    """``work[:size]`` when the caller's float64 workspace is large enough,
    else a new array of ``size`` (its contents are overwritten either way)."""
    if work.shape[0] >= size:
        return work[:size]
    return np.empty(size)


def chunk_map(maps, c):
    """Chunk c's column map, ``maps[c]``, or None when ``maps`` is None (dense slabs)."""


@overload(chunk_map, jit_options=OVERLOAD_OPTIONS)
def _chunk_map_impl(maps, c):
    if isinstance(maps, types.NoneType):  # decided at compile time: no branch in the loop
        return lambda maps, c: None
    return lambda maps, c: maps[c]


@parallel_kernel
def sparse_fused_sums(chunk, data, indices, indptr, Wt, b, vb, labels, T, sw, eps, nchunks, tile,
                      ahead, block, maps, work, curv, G, feature_major, denom, l2):
    """Unnormalised ``(loss_sum, G, gb (K,), curvature, failed (nchunks,))``
    of CSR X, in ``nchunks`` parallel chunks, the gradient sums written into
    the caller's float64 ``G``: (K, n), or (n, K) with ``feature_major``;
    with ``denom`` > 0 (a feature-major Hessian product) finished there, with
    the curvature ``<V, HV>`` of its W part (see :func:`add_slabs`; else 0).

    ``chunk`` is :func:`sparse_chunk` (or, for the Hessian's diagonal,
    :func:`diagonal_chunk`) compiled for these arguments
    (:func:`chunk_entry`), called through its address (see
    :mod:`fastsoftmax._compiled`: linked into this kernel, its code was
    compiled again for each of numba's wrappers of the loop).
    ``data`` (nnz,) and ``Wt`` (n, K), ``b`` (K,) of one float dtype;
    ``indices`` (nnz,), ``indptr`` (m + 1,) of one integer dtype; labels, T,
    sw and eps as in :func:`fastsoftmax._fused.fused_sums`; ``ahead`` >= 0 the
    prefetch distance in non-zeros; ``block`` columns of G per combining
    task; ``maps`` None: every chunk accumulates into a dense (n, K) slab,
    else (nchunks, n) int64 scratch for the chunks' column maps, and each
    chunk accumulates into the columns its rows touch (see the module
    docstring).  With a direction ``vb`` (K,) instead of None, ``Wt = V^T``
    (n, K) and the point's ``curv`` (m, K + 1) (:func:`sparse_curvature`;
    None for the gradient), the sums of the Hessian-vector product instead
    (loss 0), as :func:`fastsoftmax._hessian_fused.hessian_sums`.  ``work``
    (float64, 1-D) holds the slabs when it is large enough
    (:func:`slab_space`): a caller that makes many calls on one X (a Hessian
    product in conjugate gradients) passes the same one each time, and new
    slabs then pay no page faults (measured, 20-newsgroups shape: 7 of 46 ms
    a call).  ``failed[c]`` says whether chunk c raised (its sums are then
    incomplete: the caller runs the serial kernel, where the exception
    surfaces).
    """
    m = indptr.shape[0] - 1
    n = Wt.shape[0]
    K = b.shape[0]
    bounds, counts, offsets = _chunk_plan(m, n, nchunks)
    if maps is not None:
        for c in prange(nchunks):
            counts[c] = map_columns(indices, indptr, bounds[c], bounds[c + 1], maps[c])
    for c in range(nchunks):
        offsets[c + 1] = offsets[c] + counts[c]
    slabs = slab_space(work, offsets[nchunks] * K)  # zeroed by the chunks, each its own, in parallel
    bias, losses, failed, gb = _chunk_sums(nchunks, K)
    for c in prange(nchunks):
        slab = slabs[offsets[c] * K: offsets[c + 1] * K].reshape((counts[c], K))
        zero(slab)
        out = call_compiled(chunk, data, indices, indptr, Wt, b, vb, labels, T, sw, eps,
                            bounds[c], bounds[c + 1], tile, ahead, chunk_map(maps, c), slab,
                            bias[c], curv)
        losses[c] = out[0]
        failed[c] = out[1]
    nblocks = (n + block - 1) // block
    parts = np.empty(nblocks)
    for q in prange(nblocks):  # blocks of ``block`` columns of G, each summed in chunk order
        parts[q] = add_slabs(G, maps, slabs, offsets, q * block, min(n, (q + 1) * block),
                             feature_major, denom, l2, Wt)
    loss = 0.0
    for c in range(nchunks):
        loss += losses[c]
        for k in range(K):
            gb[k] += bias[c, k]
    curvature = 0.0
    for q in range(nblocks):  # block order: independent of the thread count
        curvature += parts[q]
    return loss, G, gb, curvature, failed


@serial_kernel
def diagonal_chunk(data, indices, indptr, At, b, vb, labels, T, sw, eps, start, stop, tile,
                   ahead, colmap, slab, gb, curv):
    """The Hessian's diagonal sums of rows start:stop: every stored entry
    (j, x) of row i, ``data`` holding X's squared entries (duplicates summed
    first), adds ``c_ik x`` to slab row colmap[j] (or j) for each class k,
    where ``c_ik = w_i s_i p_ik (1 - p_ik)`` from the point's ``curv``
    (m, K + 1) (:func:`sparse_curvature`); the tile's sums of c are added to
    ``gb`` (the intercepts' diagonal).  Returns 0.  It takes the arguments of
    :func:`sparse_chunk`'s Hessian-product variant, so that the same
    compiled :func:`sparse_fused_sums` runs it (its slabs and their
    combination); ``At``, ``vb``, ``T``, ``sw`` and ``eps`` are not read
    (``b`` gives K)."""
    K = b.shape[0]
    D = np.empty(K * tile)
    rows = np.empty(tile, dtype=np.int64)
    acc = np.empty(K)
    for t0 in range(start, stop, tile):
        R = kept_rows(labels, t0, min(t0 + tile, stop), rows)
        if R == 0:
            continue
        Dm = D[: K * R].reshape((K, R))
        for r in range(R):
            i = rows[r]
            scale = curv[i, K]
            for k in range(K):
                p = curv[i, k]
                Dm[k, r] = p * (1.0 - p) * scale
        for k in range(K):
            total = 0.0
            for r in range(R):
                total += Dm[k, r]
            gb[k] += total
        scatter_tile(data, indices, indptr, colmap, Dm, rows[:R], slab, acc, ahead)
    return 0.0


#: sparse_chunk's and diagonal_chunk's entry points, by the function and what the
#: numba types of its arguments depend on.
_entries: dict = {}


def chunk_entry(data, indices, indptr, At, b, vb, labels, T, sw, maps, curv,
                function=sparse_chunk) -> CompiledFunction:
    """:func:`sparse_chunk` (or ``function``: :func:`diagonal_chunk`) compiled
    for these arguments, with dense slabs (``maps`` None) or column maps
    (``maps`` the (nchunks, n) int64 array of :func:`sparse_fused_sums`)."""
    arrays = (data, indices, indptr, At, b, vb, labels, T, sw, curv)
    key = (function.__name__, *(array_key(a) for a in arrays), maps is None)
    entry = _entries.get(key)
    if entry is None:
        index = types.Array(types.int64, 1, "C")
        argtypes = (*(typeof(a) for a in arrays[:9]), types.float64, types.int64, types.int64,
                    types.int64, types.int64, types.none if maps is None else index,
                    types.Array(types.float64, 2, "C"), types.Array(types.float64, 1, "C"),
                    typeof(curv))
        entry = _entries.setdefault(key, CompiledFunction(function, argtypes))
    return entry


@serial_kernel
def sparse_fused_sums_serial(data, indices, indptr, Wt, b, vb, labels, T, sw, eps, tile,
                             ahead, block, maps, work, curv, G, feature_major, denom, l2):
    """:func:`sparse_fused_sums` with one chunk and no parallel region, for
    small problems: ``(loss_sum, G, gb, curvature)``; ``maps`` None or (1, n)
    int64."""
    m = indptr.shape[0] - 1
    n = Wt.shape[0]
    K = b.shape[0]
    count = n if maps is None else map_columns(indices, indptr, 0, m, maps[0])
    slab = slab_space(work, count * K)
    slab[:] = 0.0
    offsets = np.array([0, count])
    gb = np.zeros(K)
    if maps is None:
        loss = sparse_chunk(data, indices, indptr, Wt, b, vb, labels, T, sw, eps, 0, m, tile,
                            ahead, None, slab.reshape((count, K)), gb, curv)
    else:
        loss = sparse_chunk(data, indices, indptr, Wt, b, vb, labels, T, sw, eps, 0, m, tile,
                            ahead, maps[0], slab.reshape((count, K)), gb, curv)
    curvature = 0.0
    for j0 in range(0, n, block):
        curvature += add_slabs(G, maps, slab, offsets, j0, min(n, j0 + block), feature_major,
                               denom, l2, Wt)
    return loss, G, gb, curvature
