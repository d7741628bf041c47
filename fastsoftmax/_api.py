"""The public loss-and-gradient entry point."""

from __future__ import annotations

from typing import Literal, Union

import numpy as np
from numpy.typing import ArrayLike

from . import _dispatch as policy
from . import _vectors
from ._blas import single_threaded_blas
from ._fused import fused_sums, fused_sums_serial
from ._indexloop import indexloop_sums
from ._numpy import numpy_sums
from ._logits import logits_sums, logits_sums_serial
from ._sparse import CSR
from ._sparse_columns import columns_pass, directions_pass, gradient_pass
from ._sparse_fused import chunk_entry as sparse_chunk_entry
from ._sparse_fused import (curvature_chunk, curvature_entry, diagonal_chunk, sparse_chunk,
                            sparse_curvature, sparse_fused_sums, sparse_fused_sums_serial)
from ._sparse_numpy import sparse_numpy_sums
from ._threading import parallel_region, seconds_since_kernel
from ._validation import LOSS_REDUCTIONS, Problem, prepare, prepare_logits
from ._vocab import add_penalty, vocab_sums

Method = Literal["fused", "indexloop", "numpy"]
Reduction = Literal["mean", "sum", "none"]


def sums(p: Problem, method: str, dX: np.ndarray | None = None,
         losses: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Run ``method`` on a validated problem: unnormalised ``(loss, G, gb)``.

    ``dX``, when given, is a C-ordered (m, n) array of zeros in the working
    dtype that receives the unnormalised input gradient of every kept sample
    (dense X only).  ``losses``, when given, is an (m,) float64 array of
    zeros that receives each kept sample's weighted loss (dense X only).
    """
    if isinstance(p.X, CSR):
        return sparse_sums(p, method)
    if method == "numpy":
        return numpy_sums(p, dX, losses)
    m, n = p.X.shape
    K = p.W.shape[0]
    chunks = policy.chunk_count(m)
    if method == "fused" and policy.large_vocabulary(n, K, chunks):  # no (K, n) slabs
        with single_threaded_blas, parallel_region():
            return vocab_sums(p.X, np.ascontiguousarray(p.W), p.b, p.labels, p.T, p.sw, p.eps,
                              dX, workers=chunks, cw=p.cw, zl=p.zl, cap=p.cap, losses=losses,
                              **policy.vocab_plan(m, n, K, dX is not None))
    if method == "indexloop":
        return indexloop(p, dX=dX, losses=losses)
    tile = policy.tile_rows(n, K, p.X.dtype.itemsize)
    micro = True if policy.tile_gemm(n, K, p.X.dtype.itemsize) else None
    chunks = policy.loss_chunks(m, n, K)
    with single_threaded_blas:
        if chunks == 1:
            return fused_sums_serial(p.X, p.W, p.b, p.labels, p.T, p.sw, p.eps, tile, micro, dX,
                                     p.cw, p.zl, p.cap, losses)
        inline = policy.run_inline(m * n * K, seconds_since_kernel())
        return fused_sums(p.X, p.W, p.b, p.labels, p.T, p.sw, p.eps, chunks, tile, micro, dX,
                          p.cw, p.zl, p.cap, losses, inline)


def sparse_sums(p: Problem, method: str) -> tuple[float, np.ndarray, np.ndarray]:
    """:func:`sums` for a problem whose X is CSR (:class:`fastsoftmax._sparse.CSR`).

    The fused kernel gets W transposed, (n, K) C-contiguous in the working
    dtype (one copy per call; see :func:`sparse_fused`): its per-tile scratch
    is logits-sized, like that of the logits entry point.
    """
    X = p.X
    if method == "numpy":
        return sparse_numpy_sums(X, p.W, p.b, p.labels, p.T, p.sw, p.eps, p.n_ignored)
    if method == "indexloop":
        return indexloop(p)
    return sparse_fused(p, _vectors.transposed(p.W), None)


def indexloop(p: Problem, V: np.ndarray | None = None, vb: np.ndarray | None = None,
              dX: np.ndarray | None = None, losses: np.ndarray | None = None):
    """The index-loop kernel on the problem (dense or CSR X): ``(loss, G, gb)``.

    ``dX`` and ``losses`` as in :func:`sums`.  Along a direction ``V`` (K, n)
    and ``vb`` (K,) in the problem's dtype: the Hessian-vector product's sums
    (the loss is then 0).
    """
    X = p.X
    Xk = (X.data, X.indices, X.indptr) if isinstance(X, CSR) else X
    with parallel_region():
        return indexloop_sums(Xk, p.W, p.b, V, vb, p.labels, p.T, p.sw, p.eps,
                              policy.chunk_count(X.shape[0]), dX, p.cw, p.zl, p.cap, losses)


#: no labels: the column pass then drops no sample
_NO_LABELS = np.empty(0, dtype=np.int64)
#: an empty workspace: the sparse kernel then allocates its slabs
_NO_WORK = np.empty(0)


def _sparse_plan(p: Problem, columns: int) -> tuple[bool, int, bool]:
    """How the fused sparse kernel runs on the problem, for At with
    ``columns`` columns: ``(serial, chunks, dense slabs)``.  Serial (one
    chunk, no parallel region) below ``SERIAL_WORK`` multiply-adds (nnz
    times columns) or on one thread."""
    X = p.X
    n, K = X.shape[1], p.b.shape[0]
    chunks = policy.chunk_count(X.shape[0])
    if chunks == 1 or X.nnz * columns < policy.SERIAL_WORK:
        return True, 1, policy.sparse_dense_slabs(n, K, 1)
    return False, chunks, policy.sparse_dense_slabs(n, K, chunks)


def sparse_fused(p: Problem, At: np.ndarray, vb: np.ndarray | None,
                 work: np.ndarray = _NO_WORK, curv: np.ndarray | None = None):
    """The fused sparse kernel on the problem's CSR X: ``(loss, G, gb)``.

    ``At`` is W transposed, (n, K), for the loss and gradient (``vb`` and
    ``curv`` None), or V transposed, (n, K), with the intercept direction
    ``vb`` and the point's ``curv`` (:func:`sparse_point_curvature`) for a
    Hessian-vector product (the loss is then 0).  In tiles of
    ``logits_tile_rows`` (see :func:`_sparse_plan` for serial or parallel).
    ``work``: a float64 workspace for the gradient slabs, used when large
    enough (see :func:`sparse_slab_entries`), for callers that repeat calls
    on one X; it must not be in use by another call at the same time.
    The gradient sums G come in a new (K, n) float64 array.
    """
    n, K = At.shape
    G = np.empty((K, n))  # every entry set by the kernel
    loss, G, gb, _ = _sparse_run(p, At, vb, work, curv, G, False, 0.0)
    return loss, G, gb


def sparse_finished_product(p: Problem, Vt: np.ndarray, vb: np.ndarray, work: np.ndarray,
                            curv: np.ndarray, HVt: np.ndarray) -> tuple[float, np.ndarray]:
    """A Hessian-vector product on the problem's CSR X in the feature-major
    layout, finished by the kernel: ``HVt`` ((n, K) float64, C-contiguous)
    receives ``(HV)^T = sums / denom + l2 V^T`` for the direction ``Vt``
    ((n, K), the working dtype) and ``vb``; returns ``(<V, HV>, gb)``, the
    curvature of the W part (float64, summed in blocks of columns, in
    block order) and the intercepts' unnormalised sums (K,).  ``work`` and
    ``curv`` as for :func:`sparse_fused`."""
    _, _, gb, curvature = _sparse_run(p, Vt, vb, work, curv, HVt, True, float(p.denom))
    return curvature, gb


def _sparse_run(p: Problem, At, vb, work, curv, G, feature_major: bool, denom: float):
    """The fused sparse kernel, serial or parallel (:func:`_sparse_plan`):
    ``(loss, G, gb, curvature)`` (see
    :func:`fastsoftmax._sparse_fused.sparse_fused_sums`; ``denom`` > 0
    finishes a feature-major product with the problem's l2)."""
    X = p.X
    serial, chunks, dense = _sparse_plan(p, At.shape[1])
    if not serial:
        out = _sparse_parallel(p, X, At, vb, work, curv, G, feature_major, denom, chunks, dense)
        if out is not None:
            return out
        # a chunk raised in the parallel region: all rows again on this thread, as one
        # chunk, where the exception surfaces (or, if it does not recur, the full sums,
        # equal to a parallel call's to rounding: one chunk sums in another order)
    maps = None if dense else np.empty((1, X.shape[1]), dtype=np.int64)  # column map
    return sparse_fused_sums_serial(X.data, X.indices, X.indptr, At, p.b, vb, p.labels, p.T,
                                    p.sw, float(p.eps), policy.logits_tile_rows(At.shape[1]),
                                    policy.SPARSE_PREFETCH_AHEAD, policy.SPARSE_COMBINE_COLUMNS,
                                    maps, work, curv, G, feature_major, denom, float(p.l2))


def _sparse_parallel(p: Problem, X, At, vb, work, curv, G, feature_major: bool, denom: float,
                     chunks: int, dense: bool, function=sparse_chunk):
    """:func:`fastsoftmax._sparse_fused.sparse_fused_sums` over the CSR
    arrays of ``X`` (the problem's X, or its squares for the diagonal) in
    ``chunks`` parallel chunks, each running ``function``
    (:func:`fastsoftmax._sparse_fused.sparse_chunk` or ``diagonal_chunk``),
    into dense slabs or column maps: ``(loss, G, gb, curvature)``, or None
    when a chunk raised (its sums are then incomplete)."""
    args = (X.data, X.indices, X.indptr, At, p.b, vb, p.labels, p.T, p.sw, float(p.eps))
    maps = None if dense else np.empty((chunks, X.shape[1]), dtype=np.int64)  # column maps
    chunk = sparse_chunk_entry(*args[:9], maps, curv, function=function)
    with parallel_region():
        loss, G, gb, curvature, failed = sparse_fused_sums(
            chunk, *args, chunks, policy.logits_tile_rows(At.shape[1]),
            policy.SPARSE_PREFETCH_AHEAD, policy.SPARSE_COMBINE_COLUMNS, maps, work, curv, G,
            feature_major, denom, float(p.l2))
    return None if failed.any() else (loss, G, gb, curvature)


def sparse_by_columns(p: Problem) -> bool:
    """Whether Newton-CG evaluates the problem and makes its Hessian products
    and diagonal on CSR X by columns (:func:`sparse_column_sums`,
    :func:`sparse_column_product`): the policy's shape rule and bound on the
    copy of X^T (:func:`fastsoftmax._dispatch.sparse_by_columns`)."""
    X = p.X
    return policy.sparse_by_columns(*X.shape, X.nnz, X.dtype.itemsize, X.indices.dtype.itemsize)


def _column_pass(p: Problem, D: np.ndarray, square: bool, G: np.ndarray, denom: float,
                 Vt: np.ndarray) -> float:
    """:func:`fastsoftmax._sparse_columns.columns_pass` over X^T
    (:attr:`fastsoftmax._sparse.CSR.transposed`) in the policy's parts."""
    T = p.X.transposed
    bounds = T.parts(policy.SPARSE_COLUMN_PARTS)
    labels = p.labels if p.n_ignored else _NO_LABELS
    tasks = policy.sparse_column_tasks(p.X.shape[0])
    with parallel_region():
        return columns_pass(T.data, T.indices, T.indptr, D, square, labels, G, bounds, denom,
                            float(p.l2), Vt, np.empty((tasks, D.shape[1])),
                            np.empty(bounds.shape[0] - 1), policy.SPARSE_PREFETCH_AHEAD)


def sparse_column_sums(p: Problem) -> tuple[tuple[float, np.ndarray, np.ndarray], np.ndarray]:
    """:func:`sparse_sums` by columns, for Newton-CG on CSR X
    (:mod:`fastsoftmax._sparse_columns`): ``((loss_sum, G, gb), curv)``, the
    unnormalised sums (G (K, n) float64, new) and the point's probabilities
    and scales (m, K + 1) float64 that its Hessian products read (so that
    they need no pass of their own: :func:`sparse_point_curvature` makes the
    same).  Extra memory: the (m, K) float64 logit gradients besides
    ``curv``, two (n, K) float64 arrays (the sums and the gradient), the tile
    scratch of every task and X's transpose (made at the first call, kept
    with X).  The results do not depend on the thread count."""
    X = p.X
    m, n = X.shape
    K = p.b.shape[0]
    tile = policy.sparse_column_tile_rows(K)
    bounds = X.parts(policy.SPARSE_COLUMN_PARTS)
    parts = bounds.shape[0] - 1
    groups = policy.sparse_column_tasks(m)
    R = np.empty((m, K))  # rows ignore_index drops are not written, nor read
    curv = np.zeros((m, K + 1))
    Wt = _vectors.transposed(p.W)
    with parallel_region():
        loss, gb = gradient_pass(X.data, X.indices, X.indptr, Wt, p.b, p.labels, p.T, p.sw,
                                 float(p.eps), bounds, tile, np.empty((groups, tile * K)),
                                 np.empty((groups, K * tile)), np.empty((groups, K * tile)),
                                 np.empty((groups, 4, tile)), np.empty((groups, tile), np.int64),
                                 R, curv, np.empty((parts, K)),
                                 np.empty(parts), policy.SPARSE_PREFETCH_AHEAD)
    Gt = np.empty((n, K))
    _column_pass(p, R, False, Gt, 0.0, np.empty((0, K), p.dtype))  # (no direction is read)
    return (loss, _vectors.transposed(Gt), gb), curv


def sparse_column_product(p: Problem, Vt: np.ndarray, vb: np.ndarray, curv: np.ndarray,
                          D: np.ndarray, HVt: np.ndarray) -> tuple[float, np.ndarray]:
    """:func:`sparse_finished_product` by columns
    (:mod:`fastsoftmax._sparse_columns`): ``HVt`` (n, K) float64 receives
    ``sums / denom + l2 V^T``; returns ``(<V, HV>, gb)`` as there.  ``D``
    (m, K) float64 is scratch (the caller's, so that conjugate gradients
    reuse one); X's transpose is made at the first call and kept with X.
    Each entry is summed in a fixed order: the results do not depend on the
    thread count."""
    X = p.X
    K = vb.shape[0]
    bounds = X.parts(policy.SPARSE_COLUMN_PARTS)
    groups = policy.sparse_column_tasks(X.shape[0])
    tile = policy.sparse_column_tile_rows(K)
    with parallel_region():
        gb = directions_pass(X.data, X.indices, X.indptr, Vt, vb, curv, D, bounds, tile,
                             np.empty((groups, tile), dtype=np.int64), np.empty((groups, K)),
                             np.empty((bounds.shape[0] - 1, K)), policy.SPARSE_PREFETCH_AHEAD)
    return _column_pass(p, D, False, HVt, float(p.denom), Vt), gb


def sparse_column_diagonal(p: Problem, curv: np.ndarray, G: np.ndarray) -> np.ndarray:
    """:func:`sparse_diagonal_sums` by columns: ``G`` (n, K) float64
    receives ``sum_i c_ik x_ij^2`` from X's transpose, squared as it is
    read; returns ``sum_i c_ik`` (K,).  Extra memory: the (m, K) float64
    curvatures."""
    K = p.b.shape[0]
    c = diagonal_curvatures(curv[:, :K], curv[:, K])  # rows ignore_index drops: 0
    _column_pass(p, c, True, G, 0.0, np.empty((0, K), p.dtype))  # (no direction is read)
    return c.sum(axis=0)


def sparse_diagonal_sums(p: Problem, curv: np.ndarray, G: np.ndarray,
                         work: np.ndarray = _NO_WORK) -> np.ndarray:
    """The unnormalised sums of the Hessian's diagonal on the problem's CSR X
    at the point of ``curv`` (:func:`sparse_point_curvature`): ``G`` (n, K)
    float64 receives ``sum_i c_ik x_ij^2`` with ``c_ik = w_i s_i p_ik (1 -
    p_ik)`` (X's squares with duplicate entries summed first,
    :attr:`fastsoftmax._sparse.CSR.squared`); returns ``sum_i c_ik`` (K,)
    float64 (the intercepts').  Rows that ignore_index drops add nothing.
    In parallel by the fused kernel's driver with
    :func:`fastsoftmax._sparse_fused.diagonal_chunk` (its slabs in ``work``
    when large enough, as :func:`sparse_fused`); serial (:func:`_sparse_plan`)
    by scipy.sparse, with the (m, K) curvatures as extra memory."""
    K = p.b.shape[0]
    n = p.X.shape[1]
    squared = p.X.squared
    serial, chunks, dense = _sparse_plan(p, K)
    if not serial:
        At = np.empty((n, K), p.dtype)  # not read: the argument of a product's variant
        out = _sparse_parallel(p, squared, At, np.zeros(K, p.dtype), work, curv, G, True, 0.0,
                               chunks, dense, function=diagonal_chunk)
        if out is not None:
            return out[2]
        # a chunk raised (no memory for its tile buffers): SciPy's product, where
        # errors surface
    stored, squared = curv, squared.to_scipy()
    if p.n_ignored:  # dropped rows may hold inf or NaN: 0 * inf must not enter
        keep = p.labels >= 0
        stored, squared = stored[keep], squared[keep]
    c = diagonal_curvatures(stored[:, :K], stored[:, K])
    G[...] = squared.T @ c
    return c.sum(axis=0)


def diagonal_curvatures(P: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """``w_i s_i p_ik (1 - p_ik)`` (m', K) float64 from the kept samples'
    probabilities P (m', K) and scales ``ws`` (m',): the weight of
    x~_i x~_i^T in the Hessian's class-k diagonal block (and of x_ij^2 in
    its diagonal)."""
    P = P.astype(np.float64, copy=False)
    return P * (1.0 - P) * ws[:, None]


def sparse_point_curvature(p: Problem) -> np.ndarray:
    """The probabilities and scales at the problem's (W, b) that its Hessian
    products on CSR X use: (m, K + 1) float64, row i = ``[p_i, w_i s_i]``
    (zero for rows ignore_index drops); see
    :func:`fastsoftmax._sparse_fused.sparse_curvature`.  Serial or parallel
    by :func:`_sparse_plan`, as :func:`sparse_fused`."""
    X = p.X
    K = p.b.shape[0]
    curv = np.zeros((X.shape[0], K + 1))
    Wt = _vectors.transposed(p.W)
    args = (X.data, X.indices, X.indptr, Wt, p.b, p.labels, p.T, p.sw, float(p.eps))
    serial, chunks, _ = _sparse_plan(p, K)
    tile = policy.logits_tile_rows(K)
    ahead = policy.SPARSE_PREFETCH_AHEAD
    if not serial:
        with parallel_region():
            failed = sparse_curvature(curvature_entry(*args[:8], curv), *args, chunks, tile,
                                      ahead, curv)
        if not failed:
            return curv
        # a chunk raised in the parallel region: all rows again on this thread
    curvature_chunk(*args, 0, X.shape[0], tile, ahead, curv)
    return curv


def sparse_slab_entries(p: Problem, columns: int) -> int:
    """Float64 entries of a workspace that holds the sparse kernel's dense
    gradient slabs for the problem (At with ``columns`` columns) at the
    current thread count: chunks n K, or 0 when the slabs are per-chunk
    column maps, whose size depends on the rows (they are then allocated by
    each call)."""
    _, chunks, dense = _sparse_plan(p, columns)
    return chunks * p.X.shape[1] * p.b.shape[0] if dense else 0


def finish(loss_sum: float, G, gb, *, denom: float, l2: float, W: np.ndarray, dtype,
           has_b: bool):
    """``(loss, dW[, db])`` from the sums: divided by ``denom``, plus ``l2`` on W.

    ``G`` (K, n) and ``gb`` (K,) are the unnormalised gradient sums; the
    results are cast to the working ``dtype``.  Used for in-memory problems
    (with a :class:`Problem`'s fields) and by :mod:`fastsoftmax.dask` (with
    the blocks' summed totals).
    """
    loss = float(loss_sum) / denom
    own = G.dtype == dtype and G.flags.owndata and G.flags.writeable
    if own and not policy.compiled_vectors(G.size):
        # an array of the working dtype that the kernel made for this call (the
        # large-vocabulary kernel's dW): finished in place, no (K, n) temporary
        dW = G
        if denom != 1.0:
            dW /= dW.dtype.type(denom)
        if l2:
            loss += 0.5 * l2 * add_penalty(dW, W, l2)
    else:
        dW = G if own else np.empty(G.shape, dtype)
        squares = _vectors.finish_into(G, denom, l2, W, dW, squares=bool(l2))
        if l2:
            loss += 0.5 * l2 * squares
    if not has_b:
        return loss, dW
    return loss, dW, (np.asarray(gb, dtype=np.float64) / denom).astype(dtype, copy=False)


def loss_and_grad(
    W: ArrayLike,
    X: ArrayLike,
    y: ArrayLike,
    *,
    b: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    reduction: Reduction = "mean",
    class_weight: ArrayLike | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    method: Method = "fused",
) -> Union[tuple[float, np.ndarray], tuple[float, np.ndarray, np.ndarray]]:
    """Loss and gradient of softmax (multinomial logistic) regression.

    With logits ``z_i = W x_i + b``, probabilities ``p_i = softmax(z_i)`` and
    targets ``t_i`` (after label smoothing), the loss is

        J = (1/D) sum_i w_i sum_k t_ik (logsumexp(z_i) - z_ik) + (l2/2) ||W||_F^2

    and its gradient is ``dW = (1/D) sum_i w_i ((sum_k t_ik) p_i - t_i) x_i^T + l2 W``,
    ``db = (1/D) sum_i w_i ((sum_k t_ik) p_i - t_i)``.  For one-hot targets row
    j of dW is ``(1/D) sum_i w_i (p_ij - t_ij) x_i``.  ``D`` is the total weight
    of the samples that are not ignored (their count without weights) when
    ``reduction="mean"`` and 1 when ``reduction="sum"``.  The options
    ``class_weight``, ``z_loss`` and ``softcap`` extend this (see below and
    the README's "Options for large vocabularies").

    Parameters
    ----------
    W : array_like, shape (K, n)
        Weights, one row per class.
    X : array_like, shape (m, n)
        Samples, one per row.  Any layout (C, Fortran, strided) and read-only
        arrays (e.g. ``np.load(..., mmap_mode="r")``) are used without a
        copy, unless X's dtype differs from the working dtype.
        Or a SciPy CSR matrix or array (``csr_matrix``, ``csr_array``):
        used as it is, never densified (its data are copied only to change
        dtype); unsorted column indices, explicit zeros, empty rows and
        duplicate entries (summed, as SciPy does) are allowed, int32 or
        int64 indices.  The fused method's extra memory is then at most
        ``n K itemsize + max(64 MiB, threads n 8 + min(threads n, nnz) K 8)``
        bytes besides dW (see ``fastsoftmax._sparse_fused``).  Other sparse
        formats (CSC, COO...) raise TypeError: convert them once with
        ``X.tocsr()``.
    y : array_like, shape (m,) or (m, K)
        Class indices in ``[0, K)`` (integers, or floats with integral
        values), or non-negative dense targets: one-hot rows, probability
        rows, or any non-negative rows.
    b : array_like, shape (K,), optional
        Intercept.  When given, ``db`` is returned as well; it is not
        penalised by ``l2``.
    sample_weight : array_like, shape (m,), optional
        Non-negative, finite per-sample weights.
    l2 : float, default 0
        L2 penalty strength on W: adds ``(l2/2) ||W||_F^2`` to the loss and
        ``l2 W`` to dW, under either reduction.
    label_smoothing : float in [0, 1], default 0
        Targets become ``(1 - eps) t + eps / K`` (PyTorch's definition; 1
        gives uniform targets).
    ignore_index : int, optional
        With class-index targets, samples whose label equals it are dropped:
        they add nothing and do not count in ``D``.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"``: the loss returned is an (m,) float64 array of per-sample
        losses (``w_i`` times the sample's loss, z-loss included; 0 for
        ignored samples) and the gradients are those of their sum, i.e.
        of ``reduction="sum"`` (what PyTorch's ``loss.sum().backward()``
        gives).  ``l2`` must then be 0.
    class_weight : array_like, shape (K,), optional
        Non-negative, finite per-class weights, with the semantics of
        PyTorch's ``cross_entropy(weight=...)``: targets become
        ``c_ik = cw_k t_ik`` (after label smoothing), so a class-index
        sample i contributes ``w_i (cw_{y_i} (1 - eps) (-log p_{i,y_i}) +
        (eps / K) sum_k cw_k (-log p_ik))``.  Under ``reduction="mean"`` with
        class-index targets ``D = sum_i w_i cw_{y_i}`` over the kept samples
        (sample weight and class weight multiply); with dense targets ``D``
        stays the sample weight total (the number of samples when
        unweighted), as in PyTorch.
    z_loss : float >= 0, default 0
        Adds ``z_loss * lse_i^2`` (``lse_i = logsumexp(z_i)``, PaLM's
        auxiliary loss) per kept sample, weighted by the sample weight
        ``w_i`` only (not by class weights) and, under ``"mean"``, divided
        by the kept sample weight total ``sum_i w_i`` (not by ``D`` when
        class weights change it), as Liger-Kernel does per token.
        Gradient: ``2 z_loss lse_i p_i`` per sample.
    softcap : float > 0, optional
        Logit soft-capping: the logits (intercept included) become
        ``softcap * tanh(z / softcap)`` before the softmax (Gemma 2); the
        gradients carry the factor ``1 - tanh^2(z / softcap)``.
    method : {"fused", "indexloop", "numpy"}, default "fused"
        ``"fused"``: one parallel pass over X in tiles of rows;
        ``"indexloop"``: explicit loops following the delta_kj derivation;
        ``"numpy"``: vectorised NumPy (baseline and reference).

    Returns
    -------
    loss : float, or ndarray of shape (m,) float64 under ``reduction="none"``
    dW : ndarray, shape (K, n), working dtype
    db : ndarray, shape (K,), working dtype (only when ``b`` is given)

    The working dtype is NumPy's promotion of W, X and b (integers become
    float64, float16 becomes float32); dense targets are converted to it.  Sums over samples are
    accumulated in float64 by the compiled methods whatever the working dtype.
    For a given thread count (``numba.set_num_threads``) the compiled methods
    are deterministic: repeated calls give bitwise-identical results.

    Notes
    -----
    ``import fastsoftmax`` chooses numba's threading layer for the whole
    process: unless ``NUMBA_THREADING_LAYER`` is set, it asks numba for TBB
    when TBB can be loaded (GNU OpenMP, numba's fallback, is not fork-safe)
    and loads ``libtbb`` with ``RTLD_GLOBAL``; both affect any other Numba
    library in the same process.  ``FASTSOFTMAX_THREADING_LAYER=numba``, set
    before the import, keeps numba's own choice.

    Raises
    ------
    TypeError
        Non-numeric (including bool and complex) arrays, a non-integer
        ``ignore_index``, non-real scalar options; and, before anything is
        converted, array types this in-memory function does not take: a Dask
        collection (it would be computed whole in this process; use
        :func:`fastsoftmax.dask.loss_and_grad`), a SciPy sparse matrix or
        array other than CSR X (sparse W, y, b or weights; X in another
        sparse format: use ``X.tocsr()``), or an object ``np.asarray`` cannot convert (GPU arrays such
        as CuPy's or CUDA torch tensors).  Accepted are NumPy arrays and
        anything ``np.asarray`` turns into a numeric array: lists,
        memory-mapped arrays, CPU torch tensors, pandas objects.
    ValueError
        Shape mismatches, empty dimensions, labels outside ``[0, K)`` or not
        integral, negative or non-finite targets or weights, zero total weight
        under ``reduction="mean"``, options out of range, unknown ``method``
        or ``reduction``; a malformed CSR structure (``indptr`` not
        non-decreasing from 0, column indices outside ``[0, n)``);
        ``class_weight``, ``z_loss``, ``softcap`` or ``reduction="none"``
        with CSR X (not supported there: pass dense X); ``l2`` with
        ``reduction="none"``.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0]]); y = np.array([0, 1])
    >>> loss, dW = fs.loss_and_grad(np.zeros((2, 2)), X, y)
    >>> round(loss, 6)  # log(2)
    0.693147
    """
    p = prepare(W, X, y, b=b, sample_weight=sample_weight, l2=l2,
                label_smoothing=label_smoothing, ignore_index=ignore_index,
                reduction=reduction, method=method, class_weight=class_weight,
                z_loss=z_loss, softcap=softcap, reductions=LOSS_REDUCTIONS)
    losses = np.zeros(p.X.shape[0]) if reduction == "none" else None
    loss, *grads = finish(*sums(p, method, losses=losses), denom=p.denom, l2=p.l2, W=p.W,
                          dtype=p.dtype, has_b=p.has_b)
    return (loss if losses is None else losses, *grads)


def linear_cross_entropy(
    X: ArrayLike,
    W: ArrayLike,
    y: ArrayLike,
    *,
    b: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    reduction: Reduction = "mean",
    class_weight: ArrayLike | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    method: Method = "fused",
) -> Union[tuple[float, np.ndarray, np.ndarray],
           tuple[float, np.ndarray, np.ndarray, np.ndarray]]:
    """Loss of a linear layer followed by softmax cross-entropy, and its
    gradients for the layer's input X as well as for W and b.

    For the output layer of a network: the same loss as
    :func:`loss_and_grad` (same options, validation and working dtype), plus
    ``dX[i] = (w_i / D) ((sum_k t_ik) p_i - t_i)^T W``, the gradient that
    backpropagation passes to the layers below.  Rows dropped by
    ``ignore_index`` get zero gradient; ``l2`` penalises W only.

    Parameters
    ----------
    X : array_like, shape (m, n)
        The layer's input (hidden states), one row per sample; any layout.
    W : array_like, shape (K, n)
        The layer's weights, one row per class.
    y, b, sample_weight, l2, label_smoothing, ignore_index, reduction, method
        As in :func:`loss_and_grad`.
    class_weight, z_loss, softcap
        As in :func:`loss_and_grad`.

    Returns
    -------
    loss : float, or ndarray of shape (m,) float64 under ``reduction="none"``
        (then the gradients are those of the losses' sum)
    dX : ndarray, shape (m, n), working dtype, C-ordered
    dW : ndarray, shape (K, n), working dtype
    db : ndarray, shape (K,), working dtype (only when ``b`` is given)

    The fused method computes each tile's input gradient with one more GEMM,
    ``D^T W``, in the working dtype, while the tile is in cache; each thread
    writes only its own rows of dX.  Its extra memory is that of
    :func:`loss_and_grad` (per-thread (K, n) float64 slabs and tiles) besides
    dX itself.  For large K (see ``fastsoftmax._dispatch.large_vocabulary``)
    both functions use the large-vocabulary kernel instead
    (:mod:`fastsoftmax._vocab`), with every option: classes split between the
    threads, no slabs, a logits buffer of at most a fifth of the gradients'
    own size (dW, plus dX when wanted; at least 64 rows) plus tiles (with
    ``softcap`` also float64 scratch of threads x 16 x K entries), dW
    accumulated in the working dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`loss_and_grad`.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> X = np.array([[1.0, 2.0]]); W = np.zeros((3, 2))
    >>> loss, dX, dW = fs.linear_cross_entropy(X, W, np.array([0]))
    >>> round(loss, 6), dX  # log(3); all logits equal, so dX = 0
    (1.098612, array([[0., 0.]]))
    """
    p = prepare(W, X, y, b=b, sample_weight=sample_weight, l2=l2,
                label_smoothing=label_smoothing, ignore_index=ignore_index,
                reduction=reduction, method=method, class_weight=class_weight,
                z_loss=z_loss, softcap=softcap, reductions=LOSS_REDUCTIONS)
    if isinstance(p.X, CSR):
        raise TypeError("X is a SciPy sparse matrix: linear_cross_entropy takes dense X only "
                        "(its dX is dense (m, n)); use loss_and_grad for sparse X")
    dX = np.zeros(p.X.shape, p.dtype)
    losses = np.zeros(p.X.shape[0]) if reduction == "none" else None
    loss, dW, *db = finish(*sums(p, method, dX, losses), denom=p.denom, l2=p.l2, W=p.W,
                           dtype=p.dtype, has_b=p.has_b)
    if p.denom != 1.0:
        dX /= dX.dtype.type(p.denom)
    return (loss if losses is None else losses, dX, dW, *db)


def loss_and_grad_logits(
    Z: ArrayLike,
    y: ArrayLike,
    *,
    sample_weight: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    reduction: Reduction = "mean",
    class_weight: ArrayLike | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[float, np.ndarray]:
    """Cross-entropy loss of logits and its gradient with respect to them.

    For the output layer of any model: with ``p_i = softmax(Z[i])`` and
    targets ``t_i`` (after label smoothing), the loss is
    ``(1/D) sum_i w_i sum_k t_ik (logsumexp(Z[i]) - Z[i, k])`` and
    ``dZ[i] = (w_i / D) ((sum_k t_ik) p_i - t_i)``; rows dropped by
    ``ignore_index`` get zero gradient.  The options mean exactly what they
    mean in :func:`loss_and_grad` (which this equals with X = Z, W = I, no
    intercept); for class-index targets the gradient is what PyTorch's
    ``cross_entropy(Z, y, ...)`` backward gives.

    Parameters
    ----------
    Z : array_like, shape (m, K) or (K,)
        Logits, float32 or float64 (integers become float64, float16
        float32); any layout, used without a copy when its dtype is kept.
        A 1-D Z is one un-batched sample, as in PyTorch's ``cross_entropy``:
        y is then a scalar class index or (K,) dense targets, and
        ``sample_weight`` a scalar if given.
    y, sample_weight, label_smoothing, ignore_index, reduction
        As in :func:`loss_and_grad`.
    class_weight, z_loss, softcap
        As in :func:`loss_and_grad`; ``softcap`` caps Z itself, and dZ is
        the gradient with respect to the uncapped Z.

    Returns
    -------
    loss : float, or ndarray of shape (m,) float64 under ``reduction="none"``
        (a 0-d array for a 1-D Z; the gradient is then that of the sum)
    dZ : ndarray, shape of Z ((m, K) or (K,)), Z's working dtype, C-ordered

    Raises
    ------
    TypeError, ValueError
        As :func:`loss_and_grad`, for the same kinds of bad input (Dask
        collections, SciPy sparse matrices and GPU arrays included).
    """
    Z, t, unbatched = prepare_logits(Z, y, sample_weight=sample_weight,
                                     label_smoothing=label_smoothing,
                                     ignore_index=ignore_index, reduction=reduction,
                                     class_weight=class_weight, z_loss=z_loss, softcap=softcap)
    m, K = Z.shape
    dZ = np.empty((m, K), dtype=Z.dtype)
    tile = policy.logits_tile_rows(K)
    chunks = policy.chunk_count(m)
    losses = np.zeros(m) if reduction == "none" else None
    if chunks == 1 or m * K < policy.SERIAL_WORK:
        loss = logits_sums_serial(Z, t.labels, t.T, t.sw, t.eps, tile, dZ, t.cw, t.zl, t.cap,
                                  losses)
    else:
        with parallel_region():
            loss = logits_sums(Z, t.labels, t.T, t.sw, t.eps, chunks, tile, dZ, t.cw, t.zl,
                               t.cap, losses)
    if t.denom != 1.0:
        dZ /= dZ.dtype.type(t.denom)
    if losses is not None:
        return (losses[0, ...] if unbatched else losses), (dZ[0] if unbatched else dZ)
    return float(loss) / t.denom, (dZ[0] if unbatched else dZ)
