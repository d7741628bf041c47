"""Public entry points for Hessian-vector products of the softmax-regression loss.

The objective is the one :func:`fastsoftmax.loss_and_grad` differentiates,

    J(W, b) = (1/D) sum_i w_i [s_i lse_i - t_i . z_i] + (l2/2) ||W||_F^2,

with z_i = W x_i + b, lse_i = log sum_k exp(z_ik), s_i = sum_k t_ik and the
targets t after label smoothing.  Its logit Hessian for one sample is
s_i (diag p_i - p_i p_i^T), which depends on the targets only through s_i.
For a direction (V (K, n), vb (K,)), with u_i = V x_i + vb,

    HV  = (1/D) sum_i w_i s_i (p_i * (u_i - <p_i, u_i>)) x_i^T + l2 V,
    Hvb = (1/D) sum_i w_i s_i  p_i * (u_i - <p_i, u_i>).

Samples dropped by ``ignore_index`` add nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable, Union

import numpy as np
from numpy.typing import ArrayLike

from . import _dispatch as policy
from . import _vectors
from ._api import (Method, Reduction, diagonal_curvatures, finish, indexloop, sparse_by_columns,
                   sparse_column_diagonal, sparse_column_product, sparse_column_sums,
                   sparse_diagonal_sums, sparse_finished_product, sparse_fused,
                   sparse_point_curvature, sparse_slab_entries, sums)
from ._blas import single_threaded_blas
from ._hessian_blocks import add_class_blocks
from ._hessian_diag import diag_sums, diag_sums_serial
from ._hessian_full import full_hessian_sums, full_hessian_sums_serial, unpack
from ._newton_step import reduced_step
from ._hessian_fused import hessian_sums, hessian_sums_serial
from ._hessian_numpy import Curvature, numpy_curvature, numpy_hessian_sums
from ._threading import parallel_region
# underscore helpers of _validation, to be renamed at merge
from ._arrays import kernel_array
from ._sparse import CSR, is_sparse
from ._validation import Problem, as_numeric_array, prepare, working_dtype


def _dense_problem(W, X, y, **options) -> Problem:
    """:func:`prepare` for the full Hessian, which takes dense X only."""
    if is_sparse(X):
        raise TypeError("X is a SciPy sparse matrix: the full Hessian takes dense X only; "
                        "the Hessian-vector products (hessian_product, loss_grad_hessp) "
                        "and HessianProduct.diagonal() take CSR X")
    return prepare(W, X, y, **options)


def _dense_only(p: Problem, what: str) -> None:
    if isinstance(p.X, CSR):
        raise TypeError(f"X is a SciPy sparse matrix: {what} takes dense X only; the "
                        f"Hessian-vector products and the diagonal take CSR X")


class ProductCache:
    """What a point's Hessian products keep from one product to the next.

    ``curvature``: the NumPy method's probabilities (:func:`numpy_curvature`).
    For CSR X and the fused method: ``curv``, the probabilities and scales
    (m, K + 1) float64 (:func:`fastsoftmax._api.sparse_point_curvature`,
    or the evaluation by columns that made the HessianProduct; read-only
    once made), and a pair of buffers lent to one product (or diagonal) at
    a time (:meth:`borrow`): an (n, K) buffer for the direction transposed
    (or, in :func:`feature_major_product`, rounded to the working dtype) and
    the sparse kernel's slab workspace (by columns, the (m, K) coefficients
    D instead).  All made at the first call that needs them.  (At 20
    newsgroups' shape the slabs take 42 MB, above the size glibc recycles:
    made anew for every product they paid their page faults every time.)
    """

    def __init__(self):
        self.curvature: Curvature | None = None
        self.curv: np.ndarray | None = None
        self._buffers: list[tuple[np.ndarray, np.ndarray]] = []
        self._lock = threading.Lock()

    def borrow(self, shape: tuple[int, int], dtype, entries: int):
        """``(vt, work)``: an (n, K) buffer of ``dtype`` and a float64 workspace
        of at least ``entries``, for one product.  Each pair serves one
        product at a time (the kernels release the GIL, so a HessianProduct
        may be called from several threads at once: each then gets its own
        pair); give it back with :meth:`give_back`."""
        with self._lock:
            pair = self._buffers.pop() if self._buffers else None
        if pair is None or pair[0].shape != shape or pair[0].dtype != dtype:
            pair = (np.empty(shape, dtype), np.empty(entries))
        elif pair[1].shape[0] < entries:
            pair = (pair[0], np.empty(entries))
        return pair

    def give_back(self, pair) -> None:
        with self._lock:
            if not self._buffers:  # one pair is kept; extra ones are freed
                self._buffers.append(pair)


def product_sums(p: Problem, V: np.ndarray, vb: np.ndarray, method: str,
                 cache: ProductCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised ``(HV, Hvb)`` sums (float64) of a validated problem along (V, vb).

    V (K, n) and vb (K,) are C-contiguous in the problem's dtype.  ``cache``
    holds what products at the same point share (:class:`ProductCache`),
    filled here when missing; None: nothing is kept.
    """
    cache = ProductCache() if cache is None else cache
    if method == "numpy":
        if cache.curvature is None:
            cache.curvature = numpy_curvature(p)
        return numpy_hessian_sums(cache.curvature, V, vb)
    if method == "indexloop":
        _, G, gb = indexloop(p, V, vb)
        return G, gb
    if isinstance(p.X, CSR):  # the probabilities once, then V^T (n, K) per product
        K, n = V.shape
        if cache.curv is None:
            cache.curv = sparse_point_curvature(p)
        vt, work = pair = cache.borrow((n, K), p.dtype, sparse_slab_entries(p, K))
        try:
            vt[...] = V.T
            _, G, gb = sparse_fused(p, vt, vb, work, cache.curv)
        finally:
            cache.give_back(pair)
        return G, gb
    m, n = p.X.shape
    K = p.W.shape[0]
    chunks = policy.product_chunks(m, n, K)
    WV = np.concatenate((p.W, V))  # (2K, n): one GEMM gives logits and directions
    tile = policy.tile_rows(n, 2 * K, p.X.dtype.itemsize)
    micro = True if policy.tile_gemm(n, 2 * K, p.X.dtype.itemsize) else None
    with single_threaded_blas:
        if chunks == 1:
            return hessian_sums_serial(p.X, WV, p.b, vb, p.labels, p.T, p.sw, p.eps, tile, micro)
        with parallel_region():
            return hessian_sums(p.X, WV, p.b, vb, p.labels, p.T, p.sw, p.eps, chunks, tile,
                                micro)


def check_direction(p: Problem, V, vb) -> tuple[np.ndarray, np.ndarray]:
    """Validate a direction against a problem; ``(V (K, n), vb (K,))`` in its dtype.

    ``vb=None`` means a zero intercept direction; it must be None when the
    problem has no intercept.
    """
    K, n = p.W.shape
    V = as_numeric_array("V", V)
    working_dtype(V, name="V")  # rejects float128 and wider
    if V.shape != (K, n):
        raise ValueError(f"V must have W's shape ({K}, {n}), got {V.shape}")
    if vb is None:
        vb_arr = np.zeros(K, p.dtype)
    else:
        if not p.has_b:
            raise ValueError("vb is a direction for the intercept, but no intercept b was given")
        vb = as_numeric_array("vb", vb)
        working_dtype(vb, name="vb")
        if vb.shape != (K,):
            raise ValueError(f"vb must have b's shape ({K},), got {vb.shape}")
        vb_arr = kernel_array(vb, p.dtype)
    return kernel_array(V, p.dtype), vb_arr


def finish_product(p: Problem, V: np.ndarray, G: np.ndarray, gb: np.ndarray,
                   flat: bool = False):
    """``HV[, Hvb]`` from the sums: divided by ``denom``, plus ``l2 V``, working dtype.

    ``flat``: one vector ``[HV.ravel(), Hvb]`` instead, written in place (no
    concatenated copy of the (K, n) result).
    """
    K, n = V.shape
    out = np.empty(K * n + (K if p.has_b else 0) if flat else (K, n), dtype=p.dtype)
    HV = out[: K * n].reshape(K, n) if flat else out
    _vectors.finish_into(G, p.denom, p.l2, V, HV)
    if not p.has_b:
        return out
    Hvb = np.asarray(gb, dtype=np.float64) / p.denom
    if flat:
        out[K * n:] = Hvb
        return out
    return out, Hvb.astype(p.dtype)


def rows_from_flat(v: np.ndarray, K: int, n: int, width: int) -> np.ndarray:
    """The flat vector ``[W.ravel(), b]`` (the layout of :class:`HessianProduct`)
    as a (K, width) float64 array, row k = ``[W[k], b[k]]`` (width = n + 1
    with an intercept, n without)."""
    R = np.empty((K, width))
    R[:, :n] = v[: K * n].reshape(K, n)
    if width > n:
        R[:, n] = v[K * n:]
    return R


def flat_from_rows(R: np.ndarray, n: int) -> np.ndarray:
    """The (K, width) array ``[W | b]`` as the flat vector ``[W.ravel(), b]``
    (the inverse of :func:`rows_from_flat`)."""
    return np.concatenate([R[:, :n].ravel(), R[:, n]]) if R.shape[1] > n else R.ravel()


def _packed_hessian(p: Problem, classes: int) -> np.ndarray:
    """The unnormalised Hessian sums of a validated dense problem over the
    pairs of its first ``classes`` classes, packed (B, Q) float64
    (:func:`fastsoftmax._hessian_full.full_chunk`)."""
    m, n = p.X.shape
    K = p.W.shape[0]
    W64 = p.W.astype(np.float64)
    Wa = np.ascontiguousarray(np.column_stack([W64, p.b.astype(np.float64)])) if p.has_b else W64
    nt = Wa.shape[1]
    chunks = policy.hessian_chunks(m, classes, nt)
    plan = policy.hessian_plan(nt, K, classes)
    with single_threaded_blas:
        if chunks == 1:
            return full_hessian_sums_serial(p.X, Wa, p.labels, p.T, p.sw, p.eps, *plan, classes)
        with parallel_region():
            return full_hessian_sums(p.X, Wa, p.labels, p.T, p.sw, p.eps, chunks, *plan,
                                     classes)


def full_hessian(p: Problem) -> np.ndarray:
    """The Hessian (N, N) float64 of a validated problem, in the flat layout
    ``[W.ravel(), b]`` (N = K n, plus K with an intercept), exactly symmetric."""
    n = p.X.shape[1]
    K = p.W.shape[0]
    nt = n + p.has_b
    H = unpack(_packed_hessian(p, K), K, nt, 1.0 / p.denom)
    # class-major [W | b] -> [W.ravel(), b]
    classes = np.arange(K)[:, None] * nt
    order = (classes + np.arange(n)).ravel()
    if p.has_b:
        order = np.concatenate([order, classes.ravel() + n])
    H = H[np.ix_(order, order)]
    if p.l2:
        H[np.arange(K * n), np.arange(K * n)] += p.l2
    return H


def newton_step(p: Problem, grad: np.ndarray, shift: float) -> np.ndarray | None:
    """The Newton step (N,) float64 of a validated dense problem for the flat
    gradient ``grad`` (N,), from the reduced system of its first K - 1
    classes (:mod:`fastsoftmax._newton_step`), or None when that system does
    not factor even with the diagonal shifted by up to 10^14 ``shift`` times
    its largest entry."""
    n = p.X.shape[1]
    K = p.W.shape[0]
    nt = n + p.has_b
    g = rows_from_flat(grad, K, n, nt)
    M = _packed_hessian(p, K - 1)
    S = np.empty((K, nt))
    with single_threaded_blas:  # the factorisation's LAPACK, right after a parallel region
        if not reduced_step(M, g, n, float(p.denom), float(p.l2), float(shift), S):
            return None
    return flat_from_rows(S, n)


def hessian_diagonal(p: Problem, cache: ProductCache | None = None) -> np.ndarray:
    """The Hessian's diagonal (N,) float64 of a validated problem, flat layout
    ``[W.ravel(), b]``; for CSR X from the probabilities of ``cache`` (filled
    when missing)."""
    if isinstance(p.X, CSR):
        return _sparse_hessian_diagonal(p, ProductCache() if cache is None else cache)
    m, n = p.X.shape
    K = p.W.shape[0]
    W64 = p.W.astype(np.float64)
    b64 = p.b.astype(np.float64)
    chunks = policy.chunk_count(m)
    tile = policy.tile_rows(n, K, 8)
    with single_threaded_blas:
        if chunks == 1 or m * n * K < policy.SERIAL_WORK:
            G, gb = diag_sums_serial(p.X, W64, b64, p.labels, p.T, p.sw, p.eps, tile)
        else:
            with parallel_region():
                G, gb = diag_sums(p.X, W64, b64, p.labels, p.T, p.sw, p.eps, chunks, tile)
    dW = G / p.denom + p.l2
    return np.concatenate([dW.ravel(), gb / p.denom]) if p.has_b else dW.ravel()


def class_blocks(p: Problem, stride: int = 1) -> np.ndarray:
    """The Hessian's K diagonal blocks of a validated dense problem, (K, n', n') float64.

    Block k is the Hessian with respect to class k's own parameters, laid
    out as ``[W[k], b[k]]`` (n' = n + 1 with an intercept, n without):

        (1/D) sum_i w_i s_i p_ik (1 - p_ik) x~_i x~_i^T + l2 on W[k]'s diagonal,

    with ``x~_i = [x_i, 1]`` (``[x_i]`` without an intercept).  With
    ``stride`` > 1 the sum runs over every stride-th row only, times stride:
    an estimate at 1/stride of the cost.  Over tiles of ``BLOCK_TILE_ROWS``
    rows: probabilities by :func:`numpy_curvature` on the tile, then one
    symmetric product per class, the classes in parallel
    (:func:`fastsoftmax._hessian_blocks.add_class_blocks`): peak extra
    memory the K n'^2 float64 result plus, per tile, its (rows, K)
    probabilities and curvatures, the rows with their column of ones
    (rows, n') and one scaled copy (rows, n') and product (n', n') per
    thread, float64.  Costs about K n'^2 m / 2 multiply-adds (a symmetric rank update
    per class: about n' / 4 Hessian-vector products).
    """
    m, n = p.X.shape
    K = p.W.shape[0]
    width = n + p.has_b
    blocks = np.zeros((K, width, width))
    rows = policy.BLOCK_TILE_ROWS * stride
    for start in range(0, m, rows):
        rows_of = slice(start, start + rows, stride)
        tile = dataclasses.replace(
            p, X=p.X[rows_of],
            labels=p.labels[rows_of] if p.labels.shape[0] else p.labels,
            T=p.T[rows_of] if p.T.shape[0] else p.T,
            sw=p.sw[rows_of] if p.sw.shape[0] else p.sw)
        c = numpy_curvature(tile)
        Xt = np.empty((c.X.shape[0], width))
        Xt[:, :n] = c.X
        if p.has_b:
            Xt[:, n] = 1.0
        roots = np.sqrt(diagonal_curvatures(c.P, c.ws))
        with single_threaded_blas, parallel_region():
            add_class_blocks(Xt, roots, blocks, policy.chunk_count(K))
    blocks *= stride / p.denom
    if p.l2:
        idx = np.arange(n)
        blocks[:, idx, idx] += p.l2
    return blocks


def _sparse_hessian_diagonal(p: Problem, cache: ProductCache,
                             feature_major: bool = False) -> np.ndarray:
    """:func:`hessian_diagonal` for CSR X: the sums of
    :func:`fastsoftmax._api.sparse_diagonal_sums` from the point's stored
    probabilities (:func:`fastsoftmax._api.sparse_point_curvature`, shared
    with the Hessian products; their slab workspace too), divided by the
    reduction's denominator, plus l2 on W.  ``feature_major``: the W part
    laid out as W^T.ravel() (the layout of :func:`feature_major_product`;
    no transposition of the (n, K) sums; and by columns from X's transpose
    when the products go so, :func:`fastsoftmax._api.sparse_column_diagonal`).
    Extra memory: the (m, K + 1) probabilities (kept in ``cache``), an
    (n, K) float64 array of sums unless ``feature_major``, and X's squared
    non-zeros (made once, kept with X: :attr:`fastsoftmax._sparse.CSR.squared`;
    by columns, the (m, K) curvatures instead)."""
    if cache.curv is None:
        cache.curv = sparse_point_curvature(p)
    K = p.W.shape[0]
    n = p.X.shape[1]
    out = np.empty(K * n + K * p.has_b)  # written once, in place (no copies of N entries)
    sums = out[: K * n].reshape(n, K) if feature_major else np.empty((n, K))
    if feature_major and sparse_by_columns(p):
        gb = sparse_column_diagonal(p, cache.curv, sums)
    else:
        pair = cache.borrow((n, K), p.dtype, sparse_slab_entries(p, K))
        try:
            gb = sparse_diagonal_sums(p, cache.curv, sums, pair[1])
        finally:
            cache.give_back(pair)
    if feature_major:
        out[: K * n] /= p.denom
    else:
        np.divide(sums.T, p.denom, out=out[: K * n].reshape(K, n))
    out[: K * n] += p.l2
    if p.has_b:
        out[K * n:] = gb / p.denom
    return out


def feature_major_diagonal(hessp: "HessianProduct") -> np.ndarray:
    """``hessp.diagonal()`` with the W part in the feature-major layout of
    :func:`feature_major_product`, (N,) float64, by columns or by rows as
    the products go; CSR X and the fused method only (what
    :func:`feature_major_product` takes)."""
    _feature_major_only(hessp)
    return _sparse_hessian_diagonal(hessp._problem, hessp._cache, feature_major=True)


def _feature_major_only(hessp: "HessianProduct") -> None:
    if not (isinstance(hessp._problem.X, CSR) and hessp.method == "fused"):
        raise TypeError("feature-major products take CSR X and the fused method")


def feature_major_product(hessp: "HessianProduct", d: np.ndarray, out: np.ndarray) -> float:
    """``hessp`` applied to a direction in the feature-major layout, for
    Newton-CG on CSR X: returns ``<d, H d>`` (float64).

    ``d`` and ``out`` are (N,) float64 laid out as ``[V^T.ravel(), vb]``
    (V^T (n, K), the layout the sparse kernel gathers from and accumulates
    into; ``vb`` only with an intercept).  ``out`` receives the product in
    the same layout, its W part summed, finished and dotted with the
    direction by the kernel itself as it adds its slabs
    (:func:`fastsoftmax._api.sparse_finished_product`).
    Compared with ``hessp(flat)``: no transposed copy of the direction, no new
    arrays of N entries, the curvature in the same pass, contiguous passes.
    The direction is rounded to the working dtype for the kernel (as
    ``hessp`` does); the product stays float64 (``hessp`` rounds it to the
    working dtype).  By columns from X's transpose when the policy says so
    (:func:`fastsoftmax._api.sparse_by_columns`,
    :func:`fastsoftmax._api.sparse_column_product`), else by the row
    kernel.  CSR X and the fused method only."""
    _feature_major_only(hessp)
    p, cache = hessp._problem, hessp._cache
    K, n = p.W.shape
    vb = kernel_array(d[K * n:], p.dtype) if p.has_b else np.zeros(K, p.dtype)
    if cache.curv is None:
        cache.curv = sparse_point_curvature(p)
    HVt = out[: K * n].reshape(n, K)
    by_columns = sparse_by_columns(p)
    m = p.X.shape[0]
    entries = m * K if by_columns else sparse_slab_entries(p, K)
    vt, work = pair = cache.borrow((n, K), p.dtype, entries)
    try:
        Vt = d[: K * n].reshape(n, K)
        if p.dtype != np.float64:  # the direction rounded into the lent buffer
            vt[...] = Vt
            Vt = vt
        if by_columns:
            D = work[: m * K].reshape(m, K)
            curvature, gb = sparse_column_product(p, Vt, vb, cache.curv, D, HVt)
        else:
            curvature, gb = sparse_finished_product(p, Vt, vb, work, cache.curv, HVt)
    finally:
        cache.give_back(pair)
    if p.has_b:
        np.divide(gb, p.denom, out=out[K * n:])
        curvature += float(vb.astype(np.float64) @ out[K * n:])
    return curvature


class HessianProduct:
    """``hessp(V, vb=None)``: the Hessian of the objective at a fixed (W, b) times (V, vb).

    Returned by :func:`loss_grad_hessp`; it holds the validated problem (a
    copy of W and b, a reference to X, not a copy), so a product does not
    check X again.  Do not modify X, y or sample_weight while it is in use.

    Call it with

    * ``V`` (K, n) and optionally ``vb`` (K,) (only when the problem has an
      intercept; None means zero): returns ``HV`` (K, n), or ``(HV, Hvb)``
      when the problem has an intercept; or
    * one flat vector of length ``K n`` (plus ``K`` with an intercept), W's
      entries in C order followed by b's, the layout of
      ``np.concatenate([W.ravel(), b])``: returns the product in the same
      flat layout, as ``scipy.optimize.minimize(..., hessp=...)`` expects.

    Results are in the problem's working dtype.  With ``method="fused"`` on
    dense X, or ``"indexloop"``, every product recomputes the probabilities
    from X (so nothing of size m x K is ever stored; a product costs about
    one gradient evaluation).  With ``method="numpy"``, and with ``"fused"``
    on CSR X, the probabilities are computed on the first product and kept
    (m x K in the working dtype, resp. m x (K + 1) float64 with the samples'
    scales), so that each later product only gathers the direction's
    columns; on CSR X the fused method also keeps an (n, K) buffer for the
    direction transposed and its gradient slabs (lent to its diagonal too),
    or, for Newton-CG's products by columns, an (m, K) float64 buffer.
    """

    def __init__(self, problem: Problem, method: str):
        self._problem = problem
        self._method = method
        self._cache = ProductCache()

    @property
    def method(self) -> str:
        return self._method

    def __call__(self, V: ArrayLike, vb: ArrayLike | None = None):
        p = self._problem
        K, n = p.W.shape
        size = K * n + (K if p.has_b else 0)
        V_in = as_numeric_array("V", V)
        flat = V_in.ndim == 1
        if flat:
            if vb is not None:
                raise ValueError("vb must be None when V is a flat vector (it holds vb already)")
            if V_in.shape != (size,):
                raise ValueError(
                    f"a flat direction must have length {size} (K n"
                    + (" + K" if p.has_b else "") + f" for W {p.W.shape}), got {V_in.shape}")
            V_in, vb = V_in[: K * n].reshape(K, n), (V_in[K * n:] if p.has_b else None)
        Vk, vbk = check_direction(p, V_in, vb)
        sums_ = product_sums(p, Vk, vbk, self._method, self._cache)
        return finish_product(p, Vk, *sums_, flat=flat)

    def matrix(self) -> np.ndarray:
        """The full Hessian at the same point, (N, N) float64, N = K n (+ K).

        Rows and columns in the flat layout ``[W.ravel(), b]``; exactly
        symmetric.  Built by a fused parallel kernel whatever the method (see
        :func:`hessian`): worth it when N is small (a Newton-Cholesky step).
        """
        _dense_only(self._problem, "HessianProduct.matrix()")
        return full_hessian(self._problem)

    def newton_step(self, grad: ArrayLike, shift: float = 1e-10) -> np.ndarray | None:
        """The Newton step at the same point for the flat gradient ``grad``, (N,) float64.

        The solution s of ``matrix() @ s = -grad`` whose components along the
        objective's flat directions are zero: adding one number to every b_k
        (and, when l2 = 0, one vector to every row of W) changes no
        probability, and ``grad`` has no component there.  Solved from the
        Hessian's blocks of the first K - 1 classes only (about (K - 1) /
        (K + 1) of :meth:`matrix`'s multiply-adds; see
        ``fastsoftmax._newton_step``) by Cholesky.  When that system is
        singular, not positive definite by rounding, or has a column
        collinear with earlier ones (duplicated features), ``shift`` (a
        number >= 0) times its largest diagonal entry is added to its
        diagonal first (100 times more, up to 8 times, while it does not
        factor): a step close to the pseudo-inverse's.  None if it never
        factors (a NaN or inf in the point).  Dense X only.
        """
        _dense_only(self._problem, "HessianProduct.newton_step()")
        if not (isinstance(shift, (int, float, np.floating, np.integer))
                and not isinstance(shift, (bool, np.bool_)) and 0.0 <= float(shift) < np.inf):
            raise ValueError(f"shift must be a finite number >= 0, got {shift!r}")
        p = self._problem
        size = p.W.size + (p.W.shape[0] if p.has_b else 0)
        g = np.asarray(grad, dtype=np.float64)
        if g.shape != (size,):
            raise ValueError(f"grad must be a flat vector of length {size}, got shape {g.shape}")
        return newton_step(p, g, shift)

    def diagonal(self) -> np.ndarray:
        """The Hessian's diagonal at the same point, (N,) float64, flat layout.

        ``(1/D) sum_i w_i s_i p_ij (1 - p_ij) x_il^2 + l2`` for W_jl and the
        same without x_il^2 and l2 for b_j: a Jacobi preconditioner for
        conjugate gradients.  One fused pass over X (like one gradient); for
        CSR X from the probabilities the products keep (computed here if no
        product came first), then one parallel pass over X's squared
        non-zeros (made on the first call and kept with the validated X, for
        the next points of a solver) into per-thread slabs, or on small
        problems SciPy's product with the (m, K) curvatures as extra memory
        (:func:`fastsoftmax._api.sparse_diagonal_sums`).  Sums in float64,
        deterministic for a given thread count, like the products'.
        """
        # the probabilities are kept only where the products use them
        return hessian_diagonal(self._problem,
                                self._cache if self._method == "fused" else None)

    def class_blocks(self, stride: int = 1) -> np.ndarray:
        """The Hessian's diagonal blocks, one per class, (K, n', n') float64.

        Block k holds the second derivatives with respect to ``[W[k], b[k]]``
        (n' = n + 1 with an intercept, n without), the same entries as the
        matching block of :meth:`matrix`: a block-Jacobi preconditioner for
        conjugate gradients that captures the features' scales and
        correlations.  ``stride`` (a positive int) > 1 sums over every
        stride-th row only, times stride: an estimate of the blocks at
        1/stride of the cost, which is enough for a preconditioner.
        Vectorised NumPy over tiles of rows whatever the method: about
        K n'^2 m / stride multiply-adds; extra memory the result plus a tile
        (see :func:`fastsoftmax._hessian.class_blocks`).  Dense X only.
        """
        _dense_only(self._problem, "HessianProduct.class_blocks()")
        if isinstance(stride, (bool, np.bool_)) or not isinstance(stride, (int, np.integer)) \
                or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        return class_blocks(self._problem, int(stride))

    def __repr__(self) -> str:
        K, n = self._problem.W.shape
        return (f"<HessianProduct K={K} n={n} intercept={self._problem.has_b} "
                f"method={self._method!r}>")


def loss_grad_hessp(
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
    method: Method = "fused",
) -> Union[tuple[float, np.ndarray, Callable], tuple[float, np.ndarray, np.ndarray, Callable]]:
    """Loss, gradient and a Hessian-vector product at (W, b), for Newton solvers.

    The loss and gradient are exactly those of :func:`fastsoftmax.loss_and_grad`
    with the same arguments.  The last element, ``hessp``, is a
    :class:`HessianProduct`: ``hessp(V, vb=None)`` applies the Hessian of that
    objective at (W, b) to the direction (V, vb).  With ``u_i = V x_i + vb``
    (the logits' change along the direction), ``s_i = sum_k t_ik`` and the
    probabilities ``p_i`` at (W, b):

        HV  = (1/D) sum_i w_i s_i (p_i * (u_i - <p_i, u_i>)) x_i^T + l2 V
        Hvb = (1/D) sum_i w_i s_i  p_i * (u_i - <p_i, u_i>)

    (``*`` elementwise): the sample's logit Hessian ``s_i (diag p_i - p_i p_i^T)``
    applied to ``u_i``, then mapped back to weights like a gradient.  It is
    positive semi-definite, and positive definite on W when ``l2 > 0``.

    Parameters
    ----------
    W, X, y, b, sample_weight, l2, label_smoothing, ignore_index, reduction, method
        As in :func:`fastsoftmax.loss_and_grad`, validated once here; every
        product uses the same method.

    Returns
    -------
    loss : float
    dW : ndarray, shape (K, n), working dtype
    db : ndarray, shape (K,), working dtype (only when ``b`` is given)
    hessp : HessianProduct
        ``hessp(V)`` -> HV (K, n); with an intercept ``hessp(V, vb=None)``
        -> ``(HV, Hvb)``; also takes and returns flat vectors laid out as
        ``np.concatenate([W.ravel(), b])``.  The fused (dense X) and
        index-loop methods recompute the probabilities for every product
        (memory independent of m); the NumPy method caches them (m x K) and
        the fused method on CSR X the probabilities and sample scales
        (m x (K + 1) float64; see :class:`HessianProduct`) on first use.

    Raises
    ------
    TypeError, ValueError
        As :func:`fastsoftmax.loss_and_grad`; ``hessp`` raises them for a
        direction of the wrong shape or type (bool, complex, object, wider
        than float64).  NaN or infinity in a direction propagates.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> from scipy.optimize import minimize
    >>> X = np.array([[1.0, 2.0], [0.5, -1.0], [-1.0, 0.3]]); y = np.array([0, 1, 2])
    >>> K, n = 3, 2
    >>> def fun(w):
    ...     loss, dW, db, hessp = fs.loss_grad_hessp(w[:K * n].reshape(K, n), X, y,
    ...                                              b=w[K * n:], l2=0.1)
    ...     return loss, np.concatenate([dW.ravel(), db])
    >>> def hessp(w, v):
    ...     return fs.loss_grad_hessp(w[:K * n].reshape(K, n), X, y, b=w[K * n:], l2=0.1)[-1](v)
    >>> res = minimize(fun, np.zeros(K * n + K), jac=True, hessp=hessp, method="trust-ncg")
    >>> bool(res.success)
    True
    """
    p = prepare(W, X, y, b=b, sample_weight=sample_weight, l2=l2,
                label_smoothing=label_smoothing, ignore_index=ignore_index,
                reduction=reduction, method=method)
    # the point is the caller's W and b as they are now, even if they are
    # updated in place afterwards (prepare may return the caller's arrays)
    return evaluate(dataclasses.replace(p, W=p.W.copy(), b=p.b.copy()), method)


def evaluate(p: Problem, method: str, totals: tuple | None = None, by_columns: bool = False):
    """:func:`loss_grad_hessp`'s result for a validated problem, at its (W, b).

    For solvers that validate X and y once (:func:`prepare`) and then move the
    point with ``dataclasses.replace(p, W=..., b=...)`` (C-contiguous arrays
    of the problem's dtype that nobody modifies afterwards: the returned
    ``hessp`` keeps them).  ``totals``: the unnormalised ``(loss_sum, G, gb)``
    that :func:`fastsoftmax._api.sums` would return for the point, when the
    caller has them (the compiled Newton loop); the kernels then do not run.
    ``by_columns``: on CSR X with the fused method, the sums come by columns
    from X's transpose (within the policy's bound on its memory:
    :func:`fastsoftmax._api.sparse_column_sums`) with the point's
    probabilities, which the returned ``hessp`` then uses instead of a pass
    of its own: for solvers that evaluate many points of one X (the
    transpose, made at the first call, stays with X).
    """
    hessp = HessianProduct(p, method)
    if totals is None:
        if by_columns and _columns_apply(p, method):
            totals, hessp._cache.curv = sparse_column_sums(p)
        else:
            totals = sums(p, method)
    return (*finish(*totals, denom=p.denom, l2=p.l2, W=p.W, dtype=p.dtype, has_b=p.has_b),
            hessp)


def _columns_apply(p: Problem, method: str) -> bool:
    """Whether the problem's sums and products may go by columns: CSR X, the
    fused method, X's transpose within the policy's bound."""
    return isinstance(p.X, CSR) and method == "fused" and sparse_by_columns(p)


def hessian_product(
    W: ArrayLike,
    X: ArrayLike,
    y: ArrayLike,
    V: ArrayLike,
    *,
    b: ArrayLike | None = None,
    vb: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    reduction: Reduction = "mean",
    method: Method = "fused",
) -> Union[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The Hessian of :func:`fastsoftmax.loss_and_grad`'s objective at (W, b) times (V, vb).

    One product, without the loss and gradient: ``HV`` (K, n), or
    ``(HV, Hvb)`` when ``b`` is given, with

        HV  = (1/D) sum_i w_i s_i (p_i * (u_i - <p_i, u_i>)) x_i^T + l2 V
        Hvb = (1/D) sum_i w_i s_i  p_i * (u_i - <p_i, u_i>)

    where ``u_i = V x_i + vb``, ``s_i = sum_k t_ik`` (targets after label
    smoothing) and ``D`` is the reduction's denominator (see
    :func:`loss_grad_hessp`).  ``V`` (K, n) and ``vb`` (K,) (allowed only
    with ``b``; None means zero) are converted to the working dtype, which
    they do not promote.  The other arguments are those of
    :func:`fastsoftmax.loss_and_grad`.  Results are in the working dtype;
    sums over samples are accumulated in float64 by the compiled methods and
    are deterministic for a given thread count.
    """
    p = prepare(W, X, y, b=b, sample_weight=sample_weight, l2=l2,
                label_smoothing=label_smoothing, ignore_index=ignore_index,
                reduction=reduction, method=method)
    Vk, vbk = check_direction(p, V, vb)
    return finish_product(p, Vk, *product_sums(p, Vk, vbk, method))


def hessian(
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
) -> np.ndarray:
    """The full Hessian of :func:`fastsoftmax.loss_and_grad`'s objective at (W, b).

    For Newton-Cholesky steps when ``N = K n`` (``K (n + 1)`` with an
    intercept) is small: the (N, N) matrix

        H = (1/D) sum_i w_i s_i (diag p_i - p_i p_i^T) kron x~_i x~_i^T + l2 I_W

    with ``x~_i = (x_i, 1)`` with an intercept, ``s_i = sum_k t_ik`` and
    ``I_W`` the identity on the entries of W (b is not penalised), rows and
    columns in the flat layout ``np.concatenate([W.ravel(), b])`` (the layout
    :class:`HessianProduct` takes and returns).  ``H @ theta`` equals the
    flat ``hessp(theta)``.  Arguments as in :func:`fastsoftmax.loss_and_grad`.

    Always float64 (it is meant for a Cholesky factorisation), whatever the
    working dtype, and exactly symmetric.  Cost about m K (K + 1) n~ (n~ + 1) / 4
    multiply-adds (n~ = n, plus 1 with an intercept; one GEMM per tile of
    rows); memory about ``threads * (2 B Q + tile (B + Q + n~ + 2 K + 3)) * 8``
    bytes (B = K (K + 1) / 2, Q = n~ (n~ + 1) / 2, B Q about N^2 / 4) plus
    two N^2 float64 arrays for the result, independent of m.
    """
    p = _dense_problem(W, X, y, b=b, sample_weight=sample_weight, l2=l2,
                label_smoothing=label_smoothing, ignore_index=ignore_index,
                reduction=reduction, method="fused")
    return full_hessian(p)
