"""The fused kernel: logits, log-sum-exp, loss and gradient in one pass over X.

The rows of X are split into ``nchunks`` contiguous chunks, one per ``prange``
iteration (:func:`fused_sums`), or taken as one chunk without a parallel
region for small problems (:func:`fused_sums_serial`).  Both call the one
compiled function :func:`fused_chunk`; the parallel loop calls it through its
address (:mod:`fastsoftmax._compiled`), so its code is compiled and cached
once rather than once more for the parallel loop and each of its wrappers
(which tripled the cold start of the default path).  Each chunk walks its
rows in tiles of ``tile`` rows (:func:`fused_chunk`):

1. the tile's logits ``X_tile W^T`` come from one BLAS GEMM into a (R, K)
   buffer (the caller holds BLAS to one thread, so the GEMMs of the chunks run
   side by side without oversubscription);
2. :func:`fastsoftmax._rowmath.tile_loss_and_coef` adds the intercept and
   computes the loss and the weighted logit gradients ``w_i (s_i p_i - t_i)``
   of the tile, class-major (K, R), with one SIMD pass of exponentials;
3. a second GEMM, ``D X_tile``, while the tile is still in cache, goes into
   a scratch (K, n) buffer that is added to the chunk's own float64 gradient
   slab, so no two threads ever write the same memory.

Rows dropped by ``ignore_index`` are skipped: when a tile has any, its kept
rows are first gathered into a contiguous buffer.  Tiles of a non-C-contiguous
X (Fortran order, strided) are gathered the same way, so BLAS always sees
contiguous rows.

With ``dX`` (for :func:`fastsoftmax.linear_cross_entropy`) a third GEMM,
``D^T W``, writes the tile's rows of the input gradient; each chunk writes
only its own rows, so no accumulation is shared.

The slabs are summed in chunk order at the end, so the result depends only on
the inputs, ``tile`` and ``nchunks``, never on which thread ran which chunk.

Peak extra memory: about ``nchunks * (2 K n + tile (n + 3 K + 5)) * 8`` bytes,
independent of m (plus ``nchunks * tile * n`` working-dtype entries when dX is
wanted and a tile has ignored rows).
"""

from __future__ import annotations

import numpy as np
from numba import prange, typeof, types

from ._compiled import CompiledFunction, array_key, call_compiled
from ._jit import inline_helper, parallel_kernel, serial_kernel
from ._rowmath import tile_loss_and_coef
from ._threading import kernel_done, parallel_region
from ._tile_gemm import add_products_into, logits_into
from ._tiles import kept_tile


@inline_helper
def _tile_step(Xt, W, Zbuf, Dbuf, E, aux, b, labels, T, sw, eps, rows, gb, Gt, G, dX, dXbuf,
               contiguous, cw, zl, cap, lout, micro):
    """Loss and gradient of one tile; adds to ``G`` and ``gb``, returns the loss.

    When ``dX`` is not None, also writes the tile's rows of the input
    gradient ``D^T W`` to ``dX[rows]`` (straight into dX when ``contiguous``,
    i.e. the tile is rows rows[0]:rows[0]+R of X, else through ``dXbuf``).
    ``micro``: True for the logits and the gradient's products by the
    micro-kernels of :mod:`fastsoftmax._tile_gemm`, None for BLAS's (through
    ``Gt``; numba then prunes the micro-kernels' code).
    """
    R = Xt.shape[0]
    K, n = G.shape
    Z = Zbuf[: R * K].reshape((R, K))
    D = Dbuf[: K * R].reshape((K, R))
    logits_into(Xt, W, Z, micro)
    loss = tile_loss_and_coef(Z, D, E, aux, b, labels, T, sw, eps, rows, gb, cw, zl, cap, lout)
    add_products_into(D, Xt, G, Gt, micro)  # (K, R) x (R, n)
    if dX is not None:  # (R, K) x (K, n): each chunk writes only its own rows
        if contiguous:
            np.dot(D.T, W, dX[rows[0]: rows[0] + R])
        else:
            out = dXbuf[:R]
            np.dot(D.T, W, out)
            for r in range(R):
                for l in range(n):
                    dX[rows[r], l] = out[r, l]
    return loss


@serial_kernel
def fused_chunk(X, W, b, labels, T, sw, eps, start, stop, tile, micro, G, gb, dX, cw, zl, cap,
                lout):
    """Rows start:stop, in tiles: adds their gradient sums to G (K, n) and
    gb (K,) (float64), writes their rows of dX when dX is not None (rows
    dropped by ignore_index are left as they are), and returns their loss sum.
    ``micro``, ``cw``, ``zl``, ``cap``, ``lout``: see :func:`fused_sums`."""
    n = X.shape[1]
    K = W.shape[0]
    Z = np.empty(K * tile, dtype=X.dtype)
    D = np.empty(K * tile, dtype=X.dtype)
    E = np.empty(tile * K)
    aux = np.empty((4, tile))
    rows = np.empty(tile, dtype=np.int64)
    xbuf = np.empty((tile, n), dtype=X.dtype)
    dxbuf = np.empty((tile if dX is not None else 0, n), dtype=X.dtype)
    Gt = np.empty((0 if micro is not None else K, n), dtype=X.dtype)
    loss = 0.0
    for t0 in range(start, stop, tile):
        t1 = min(t0 + tile, stop)
        Xt = kept_tile(X, labels, t0, t1, rows, xbuf)
        R = Xt.shape[0]
        if R > 0:  # one call site (``contiguous`` a run-time bool): one inlined copy
            loss += _tile_step(Xt, W, Z, D, E, aux, b, labels, T, sw, eps, rows[:R], gb, Gt, G,
                               dX, dxbuf, R == t1 - t0, cw, zl, cap, lout, micro)
    return loss


@parallel_kernel
def _parallel_chunks(chunk, X, W, b, labels, T, sw, eps, tile, micro, dX, cw, zl, cap, lout,
                     slabs, bias_slabs, losses, failed):
    """One ``prange`` iteration per chunk of rows, each a call of ``chunk``
    (:func:`fused_chunk` through its address) into the chunk's own slabs;
    ``failed[c]`` says whether chunk c raised (an exception cannot leave a
    parallel region)."""
    m = X.shape[0]
    nchunks = losses.shape[0]
    for c in prange(nchunks):
        start = np.int64(c * m // nchunks)
        stop = np.int64((c + 1) * m // nchunks)
        out = call_compiled(chunk, X, W, b, labels, T, sw, eps, start, stop, tile, micro,
                            slabs[c], bias_slabs[c], dX, cw, zl, cap, lout)
        losses[c] = out[0]
        failed[c] = out[1]


#: fused_chunk's entry points, by what the numba types of its arguments depend on.
_entries: dict = {}


def chunk_entry(X, W, b, labels, T, sw, micro, dX, cw, zl, cap, lout) -> CompiledFunction:
    """fused_chunk compiled for these arguments (``micro`` True or None, ``zl``
    and ``cap`` None or float)."""
    key = (*(array_key(a) for a in (X, W, b, labels, T, sw, dX, cw, lout)), micro is None,
           zl is None, cap is None)
    entry = _entries.get(key)
    if entry is None:
        slab = types.Array(types.float64, 2, "C")
        argtypes = (*(typeof(a) for a in (X, W, b, labels, T, sw)), types.float64,
                    types.int64, types.int64, types.int64, typeof(micro), slab, slab.copy(ndim=1),
                    *(typeof(a) for a in (dX, cw, zl, cap, lout)))
        entry = _entries.setdefault(key, CompiledFunction(fused_chunk, argtypes))
    return entry


def fused_sums(X, W, b, labels, T, sw, eps, nchunks, tile, micro, dX, cw, zl, cap, lout,
               inline=False):
    """Unnormalised loss and gradient sums of softmax regression.

    X (m, n) and W (K, n), b (K,) of one float dtype; labels (m,) int64 or
    empty; T (m, K) or (0, K); sw (m,) float64 or empty; eps float;
    nchunks >= 1; tile >= 1; ``micro`` True: each tile's two products by
    :mod:`fastsoftmax._tile_gemm`'s micro-kernels, None: by BLAS
    (``fastsoftmax._dispatch.tile_gemm`` decides; with None numba compiles
    no micro-kernel code, so the calls that do not use them do not pay
    their compilation); dX (m, n) zeros of X's dtype, C-contiguous, to
    receive the unnormalised input gradient ``w_i (s_i p_i - t_i)^T W`` of
    every kept sample, or None when it is not wanted (numba then compiles
    a specialisation without the input-gradient code, so the loss-and-gradient
    path neither compiles nor loads it).
    The options of issue 10, each None when unused (so that numba prunes
    their code): ``cw`` (K,) float64 class weights, ``zl`` the z-loss
    coefficient (float), ``cap`` the soft-cap (float > 0), ``lout`` (m,)
    float64 zeros to receive each kept sample's weighted loss (see
    :func:`fastsoftmax._rowmath.tile_loss_and_coef`).
    Returns ``(loss_sum, G, gb)`` with G (K, n) and gb (K,) float64: the
    weighted sums over samples of the loss, of ``(s_i p_i - t_i) x_i^T`` and
    of ``s_i p_i - t_i``.

    ``inline=True`` runs the same chunks one after the other on the calling
    thread (no parallel region; bit-identical result).
    """
    m = X.shape[0]
    K, n = W.shape
    zl = None if zl is None else float(zl)
    cap = None if cap is None else float(cap)
    slabs = np.zeros((nchunks, K, n))
    bias_slabs = np.zeros((nchunks, K))
    losses = np.zeros(nchunks)
    if not inline:
        failed = np.zeros(nchunks, dtype=np.bool_)
        with parallel_region():
            _parallel_chunks(chunk_entry(X, W, b, labels, T, sw, micro, dX, cw, zl, cap, lout), X,
                             W, b, labels, T, sw, float(eps), int(tile), micro, dX, cw, zl, cap,
                             lout, slabs, bias_slabs, losses, failed)
        if failed.any() and lout is not None:
            lout[...] = 0.0
        if failed.any():  # run again on this thread, where the exception is raised
            slabs[...] = 0.0
            bias_slabs[...] = 0.0
            inline = True
    if inline:
        for c in range(nchunks):
            losses[c] = fused_chunk(X, W, b, labels, T, sw, eps, c * m // nchunks,
                                    (c + 1) * m // nchunks, tile, micro, slabs[c],
                                    bias_slabs[c], dX, cw, zl, cap, lout)
        kernel_done()
    return chunk_totals(slabs, bias_slabs, losses)


def chunk_totals(slabs, bias_slabs, losses):
    """``(loss_sum, G, gb)`` of :func:`fused_sums` from the chunks' sums:
    slabs (nchunks, K, n), bias_slabs (nchunks, K) and losses (nchunks,)
    float64, added in chunk order (so the result does not depend on which
    thread ran what) into the first chunk's slabs, which are returned."""
    G, gb, loss = slabs[0], bias_slabs[0], float(losses[0])
    for c in range(1, losses.shape[0]):
        G += slabs[c]
        gb += bias_slabs[c]
        loss += float(losses[c])
    return loss, G, gb


def fused_sums_serial(X, W, b, labels, T, sw, eps, tile, micro, dX, cw, zl, cap, lout):
    """:func:`fused_sums` with one chunk and no parallel region, for small problems.

    Plain Python around the compiled :func:`fused_chunk`, which the parallel
    kernel compiles anyway (same signature), so the serial path adds no
    compilation and no cached code of its own to a process's start-up.
    """
    K, n = W.shape
    G = np.zeros((K, n))
    gb = np.zeros(K)
    loss = fused_chunk(X, W, b, labels, T, sw, eps, 0, X.shape[0], tile, micro, G, gb, dX,
                       cw, zl, cap, lout)
    return loss, G, gb
