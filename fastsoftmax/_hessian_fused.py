"""The fused Hessian-vector product: logits, direction, softmax Jacobian, GEMM.

For a direction (V (K, n), vb (K,)) the product of the Hessian of the
softmax-regression loss sums with it is (see :mod:`fastsoftmax._hessian`)

    HV  = sum_i w_i s_i (p_i * (u_i - <p_i, u_i>)) x_i^T,
    Hvb = sum_i w_i s_i  p_i * (u_i - <p_i, u_i>),

with ``u_i = V x_i + vb`` the directional derivative of the logits and
``s_i = sum_k t_ik``.  The rows of X are split into ``nchunks`` contiguous
chunks, one per ``prange`` iteration (:func:`hessian_sums`; the parallel
loop calls :func:`hessian_chunk` through its address, as the fused loss
kernel does, so that its code is compiled once: linked into the loop, it
took 9.6 s to compile against about 3 s on its own), or taken as one chunk
without a parallel region for small problems (:func:`hessian_sums_serial`).
Each chunk walks its rows in tiles of
``tile`` rows (:func:`hessian_chunk`):

1. one BLAS GEMM of the tile against the stacked (2K, n) matrix ``[W; V]``
   gives the logits and the logits' directional derivatives side by side in
   one (R, 2K) buffer (the caller holds BLAS to one thread);
2. :func:`tile_hessian_coef` adds the intercepts, transposes both into
   class-major float64 scratch, computes the softmax with one SIMD pass of
   :func:`fastsoftmax._rowmath.exp_nonpositive`, and applies the softmax
   Jacobian to u: column r of D (K, R) becomes
   ``w_i s_i p_i * (u_i - <p_i, u_i>)``, and its sum is added to ``gb``;
3. a second GEMM, ``D X_tile``, while the tile is still in cache, goes into
   a scratch (K, n) buffer that is added to the chunk's float64 slab.

No (m, K) array exists: the probabilities are recomputed from X for every
product (one GEMM twice as wide as the gradient's), which is what keeps the
memory independent of m.  Rows dropped by ``ignore_index`` are skipped
(gathered out of the tile, as in :mod:`fastsoftmax._fused`); tiles of a
non-C-contiguous X are gathered too.  The slabs are summed in chunk order,
so for a given ``nchunks`` and ``tile`` the result is bitwise reproducible.

Peak extra memory: about ``nchunks * (2 K n + tile (n + 5 K + 4)) * 8``
bytes plus the (2K, n) stacked matrix, independent of m.
"""

from __future__ import annotations

import numpy as np
from numba import prange, typeof, types

from ._accumulate import chunked_sums
from ._compiled import CompiledFunction, array_key, call_compiled
from ._jit import inline_helper, parallel_kernel, serial_kernel
from ._rowmath import tile_sample_scale, tile_softmax_exp
from ._tile_gemm import add_products_into, logits_into
from ._tiles import kept_tile


@serial_kernel
def tile_hessian_coef(Zr, D, E, aux, b, vb, labels, T, sw, eps, rows, gb):
    """The softmax Jacobian applied to the logits' directional derivatives of a tile.

    ``Zr`` (R, 2K), in the working dtype: columns 0..K-1 hold ``X_tile W^T``,
    columns K..2K-1 hold ``X_tile V^T`` (both without intercepts); row r
    belongs to sample ``i = rows[r]``.  ``b`` and ``vb`` (K,) are the
    intercept and its direction.  ``E`` (>= 2 K R) and ``aux`` (3, >= R) are
    float64 scratch.  On return column r of ``D`` (K, R), working dtype, is
    ``w_i s_i p_i * (u_i - <p_i, u_i>)`` and the tile's sum of those columns
    (in float64) has been added to ``gb`` (K,).

    Reduction loops only read memory (see :mod:`fastsoftmax._rowmath`), so
    the summation order never depends on buffer addresses.
    """
    R = Zr.shape[0]
    K = b.shape[0]
    S = E[: K * R].reshape((K, R))
    U = E[K * R: 2 * K * R].reshape((K, R))
    mx = aux[0, :R]
    ssum = aux[1, :R]
    pu = aux[2, :R]
    for k in range(K):
        vk = vb[k]
        for r in range(R):
            U[k, r] = Zr[r, K + k] + vk
    tile_softmax_exp(Zr, b, S, mx, ssum)
    for r in range(R):
        pu[r] = 0.0
    for k in range(K):
        for r in range(R):
            # a class of probability 0 (a -inf logit) adds nothing whatever u is
            pu[r] += S[k, r] * U[k, r] if S[k, r] != 0.0 else 0.0
    # mx becomes the scale w_i s_i / sum_k exp(z_ik - mx_i), pu <p_i, u_i>
    for r in range(R):
        pu[r] = pu[r] / ssum[r]
    tile_sample_scale(rows, R, labels, T, sw, eps, mx)
    for r in range(R):
        mx[r] = mx[r] / ssum[r]
    for k in range(K):
        for r in range(R):
            e = S[k, r]
            # a class of probability 0 adds 0, or NaN when the row is not finite
            # (a +inf logit: its scale and <p_i, u_i> are NaN), as in the other methods
            U[k, r] = mx[r] * e * (U[k, r] - pu[r]) if e != 0.0 else 0.0 * (mx[r] * pu[r])
    for k in range(K):
        acc = 0.0
        for r in range(R):
            acc += U[k, r]
        gb[k] += acc
        for r in range(R):
            D[k, r] = U[k, r]


@inline_helper
def _tile_step(Xt, WV, Zbuf, Dbuf, E, aux, b, vb, labels, T, sw, eps, rows, gb, Gt, G, micro):
    """The product's sums over one tile, added to ``G`` and ``gb`` (``micro``:
    see :func:`fastsoftmax._fused.fused_sums`)."""
    R = Xt.shape[0]
    K = G.shape[0]
    Z = Zbuf[: R * 2 * K].reshape((R, 2 * K))
    D = Dbuf[: K * R].reshape((K, R))
    logits_into(Xt, WV, Z, micro)
    tile_hessian_coef(Z, D, E, aux, b, vb, labels, T, sw, eps, rows, gb)
    add_products_into(D, Xt, G, Gt, micro)  # (K, R) x (R, n)


@serial_kernel
def hessian_chunk(X, WV, b, vb, labels, T, sw, eps, start, stop, tile, micro, G, gb):
    """Rows start:stop in tiles: adds their Hessian-product sums to G (K, n)
    and gb (K,), both float64."""
    n = X.shape[1]
    K = b.shape[0]
    Z = np.empty(2 * K * tile, dtype=X.dtype)
    D = np.empty(K * tile, dtype=X.dtype)
    E = np.empty(2 * K * tile)
    aux = np.empty((3, tile))
    rows = np.empty(tile, dtype=np.int64)
    xbuf = np.empty((tile, n), dtype=X.dtype)
    Gt = np.empty((0 if micro is not None else K, n), dtype=X.dtype)
    for t0 in range(start, stop, tile):
        t1 = min(t0 + tile, stop)
        Xt = kept_tile(X, labels, t0, t1, rows, xbuf)
        R = Xt.shape[0]
        if R > 0:
            _tile_step(Xt, WV, Z, D, E, aux, b, vb, labels, T, sw, eps, rows[:R], gb, Gt, G, micro)


@parallel_kernel
def _product_chunks(chunk, X, WV, b, vb, labels, T, sw, eps, tile, micro, slabs, bias_slabs,
                     failed):
    """One ``prange`` iteration per chunk of rows, each a call of ``chunk``
    (:func:`hessian_chunk` through its address, see :mod:`fastsoftmax._compiled`)
    into the chunk's own slabs; ``failed[c]`` says whether chunk c raised."""
    m = X.shape[0]
    nchunks = failed.shape[0]
    for c in prange(nchunks):
        start = np.int64(c * m // nchunks)
        stop = np.int64((c + 1) * m // nchunks)
        out = call_compiled(chunk, X, WV, b, vb, labels, T, sw, eps, start, stop, tile, micro,
                            slabs[c], bias_slabs[c])
        failed[c] = out[1]


#: hessian_chunk's entry points, by what the numba types of its arguments depend on.
_entries: dict = {}


def chunk_entry(X, WV, b, vb, labels, T, sw, micro) -> CompiledFunction:
    """hessian_chunk compiled for these arguments (``micro`` True or None)."""
    key = (*(array_key(a) for a in (X, WV, b, vb, labels, T, sw)), micro is None)
    entry = _entries.get(key)
    if entry is None:
        slab = types.Array(types.float64, 2, "C")
        argtypes = (*(typeof(a) for a in (X, WV, b, vb, labels, T, sw)), types.float64,
                    types.int64, types.int64, types.int64, typeof(micro), slab,
                    slab.copy(ndim=1))
        entry = _entries.setdefault(key, CompiledFunction(hessian_chunk, argtypes))
    return entry


def hessian_sums(X, WV, b, vb, labels, T, sw, eps, nchunks, tile, micro):
    """Unnormalised sums of the Hessian-vector product, in ``nchunks`` parallel chunks.

    X (m, n), WV (2K, n) = [W; V], b and vb (K,), all of one float dtype;
    labels (m,) int64 or empty; T (m, K) or (0, K); sw (m,) float64 or empty;
    eps float; nchunks >= 1; tile >= 1; ``micro`` as in
    :func:`fastsoftmax._fused.fused_sums` (for 2K logits columns).  Returns
    ``(HV, Hvb)``, (K, n) and (K,) float64: the weighted sums over the kept samples of
    ``s_i (p_i * (u_i - <p_i, u_i>)) x_i^T`` and of ``s_i p_i * (u_i - <p_i, u_i>)``,
    the chunks' sums added in chunk order (deterministic).  If a chunk
    raised in the parallel loop, every chunk is run again here (the same
    chunks: the same result, bit for bit), where the exception surfaces.
    """
    head = (X, WV, b, vb, labels, T, sw, float(eps))
    return tuple(chunked_sums(
        hessian_chunk, head, (int(tile), micro), ((b.shape[0], X.shape[1]), b.shape), X.shape[0],
        nchunks, (_product_chunks, chunk_entry(X, WV, b, vb, labels, T, sw, micro))))


def hessian_sums_serial(X, WV, b, vb, labels, T, sw, eps, tile, micro):
    """:func:`hessian_sums` with one chunk and no parallel region, for small problems
    (plain Python around the compiled :func:`hessian_chunk`, which the
    parallel path uses too: no compiled code of its own)."""
    head = (X, WV, b, vb, labels, T, sw, float(eps))
    return tuple(chunked_sums(hessian_chunk, head, (int(tile), micro),
                              ((b.shape[0], X.shape[1]), b.shape), X.shape[0]))
