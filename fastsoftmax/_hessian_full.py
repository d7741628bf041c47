"""The fused full Hessian, for Newton-Cholesky steps when K (n + 1) is small.

With x~_i = (x_i, 1) when there is an intercept (x_i otherwise), n~ its
length and N = K n~, the Hessian of the loss sums is

    H = sum_i w_i s_i (diag p_i - p_i p_i^T) kron x~_i x~_i^T,

an (N, N) matrix in the class-major layout of the (K, n~) matrix [W | b]
(entry (j n~ + l, j' n~ + l')).  Its (j, j') block is
sum_i g_i^{jj'} x~_i x~_i^T with g_i^{jj'} = w_i s_i p_ij (delta_jj' - p_ij'):
the blocks are symmetric in (j, j') and each block is symmetric in (l, l').
So the kernel computes only the K (K + 1) / 2 blocks j <= j' and, in each,
the n~ (n~ + 1) / 2 entries l <= l', as one matrix product per tile of R
kept rows (:func:`full_chunk`), all in float64 whatever the working dtype:

1. the rows are copied into a float64 buffer with a column of ones appended
   for the intercept, and one GEMM against [W | b] gives the logits;
2. the probabilities come out class-major (one pass of
   :func:`fastsoftmax._rowmath.exp_nonpositive`);
3. the weights g_i^{jj'} fill an (R, B) matrix (B = K (K + 1) / 2 pairs) and
   the products x~_il x~_il' (l <= l') an (R, Q) matrix (Q = n~ (n~ + 1) / 2);
   one GEMM, (B, R) x (R, Q), gives the tile's packed sums, added to the
   chunk's (B, Q) float64 slab.

Chunks of rows run in parallel with their own slabs, summed in chunk order
(deterministic for a given thread count); :func:`unpack` spreads the packed
sums over the (N, N) matrix, exactly symmetric.  Cost about
m B Q = m K (K + 1) n~ (n~ + 1) / 4 multiply-adds, half of the m K (K + 1)
n~^2 / 2 of whole blocks, in one GEMM per tile rather than one per block.
Measured on one thread against the earlier kernel (a GEMM per block of the
upper block triangle), random float64 data: (1780, 13, 3) 0.46 -> 0.37 ms,
(1797, 64, 10) 28.7 -> 14.6 ms, (5000, 50, 5) 16.2 -> 11.9 ms,
(20000, 20, 10) 59 -> 21 ms.

With at most ``HESSIAN_DIRECT_MAX_PAIRS`` (15) pairs of classes (up to five
classes, or the reduced system of six) the kernel sums each pair's block
directly instead (``direct``): the tile is copied feature-major (n~, R),
each pair's weights times one feature form a row, and entry (l, l') is its
dot product with feature l' over the tile's rows, all loops running over
the rows.  It does the same B Q R multiply-adds without forming the
products of features; a GEMM wins only when many pairs share them.
Measured on one thread, random float64 data, the reduced system (K - 1
classes) with the earlier choice (one GEMM X~^T diag(g) X~ per pair for at
most three pairs, the products of features above) against the direct sums:
(1500, 4, 3) 92 -> 35 us, (1780, 13, 3) 246 -> 122 us, (20000, 20, 3)
4.3 -> 2.4 ms, (10000, 40, 4) 12.5 -> 5.8 ms, (5000, 50, 5) 9.5 -> 6.7 ms,
(20000, 30, 6) 20.3 -> 17.0 ms, (2000, 500, 3) 87 -> 91 ms; with 45 pairs
the products of features stay ahead ((1797, 64, 10) 14.1 against 17.0 ms).
The direct sums run on tiles of ``HESSIAN_DIRECT_TILE`` (128) rows, so
that the n~ + 1 rows of the tile they read again for every pair stay in the
L1 cache (for n~ up to about 45), and form four entries (l, l'), ..., (l, l' + 3) per pass over
the rows.  Measured on one thread (2-core Sapphire Rapids VM, random
float64 data, reduced system), tiles of up to 1024 rows and one entry per
pass against both: (1780, 13, 3) 159-165 -> 81 us, (5000, 50, 5) 7.6 ->
4.4 ms, (20000, 20, 3) 2.8 -> 1.4 ms, (10000, 40, 4) 5.5 -> 3.4 ms,
(20000, 30, 6) 18.8 -> 9.4 ms; with 21 pairs the direct sums then beat the
GEMM only narrowly (14.1 against 15.2 ms) and lose from 28 pairs on, so
the limit stays at 15.

The products of a tile are formed for a block of ``features`` values of l
at a time (:func:`fastsoftmax._dispatch.hessian_plan`: at most
``HESSIAN_PRODUCT_BYTES``, 2 MiB, of them), so that wide X does not need the
tile's n~ (n~ + 1) / 2 products per row at once.

Peak extra memory: at most ``nchunks * (2 B Q + tile (B + n~ + 3 K + 5)
+ (tile + B) features n~) * 8`` bytes (the last term only without the
direct sums), plus the (N, N) float64 result (and its reordering, another
N^2 * 8); B Q is about N^2 / 4.
"""

from __future__ import annotations

import numpy as np
from numba import prange, typeof, types

from ._accumulate import chunked_sums
from ._compiled import CompiledFunction, array_key, call_compiled
from ._jit import inline_helper, parallel_kernel, serial_kernel
from ._rowmath import tile_probabilities
from ._tiles import gather, kept_rows


@inline_helper
def _feature_major_logits(X, rows, Wa, XT, Zc, Z):
    """The tile's rows ``rows`` (R,) of X copied feature-major into XT[:, :R]
    (XT (n~, >= R) float64, with a row of ones for the intercept when
    n~ > n) and their logits ``Z[r, k] = sum_l Wa[k, l] XT[l, r]`` into Z
    (R, K), through the class-major Zc (K, >= R): every inner loop runs
    over the rows."""
    n = X.shape[1]
    K, nt = Wa.shape
    R = rows.shape[0]
    for r in range(R):
        i = rows[r]
        for l in range(n):
            XT[l, r] = X[i, l]
    if nt > n:
        for r in range(R):
            XT[n, r] = 1.0
    for k in range(K):
        z = Zc[k, :R]
        w = Wa[k, 0]
        x = XT[0, :R]
        for r in range(R):
            z[r] = w * x[r]
        for l in range(1, nt):
            w = Wa[k, l]
            x = XT[l, :R]
            for r in range(R):
                z[r] += w * x[r]
    for r in range(R):
        for k in range(K):
            Z[r, k] = Zc[k, r]


@inline_helper
def _add_direct_sums(G, XT, y, M):
    """Adds to M (B, Q) the packed sums of the tile's pairs of classes
    directly: ``M[q, e] += sum_r G[q, r] XT[l, r] XT[l', r]`` for the pair
    of columns e = (l, l'), l <= l' (G (B, R) the pairs' weights, XT
    (n~, >= R) the tile feature-major, y (>= R,) float64 scratch).  Four
    values of l' share each pass over the rows (four sums, one load of
    ``y`` for four multiply-adds)."""
    B, R = G.shape
    nt = XT.shape[0]
    yr = y[:R]
    for q in range(B):
        g = G[q]
        e = 0
        for l in range(nt):
            x = XT[l, :R]
            for r in range(R):
                yr[r] = g[r] * x[r]
            lp = l
            while lp + 4 <= nt:
                x0 = XT[lp, :R]
                x1 = XT[lp + 1, :R]
                x2 = XT[lp + 2, :R]
                x3 = XT[lp + 3, :R]
                a0 = 0.0  # reductions, storing nothing in their loop
                a1 = 0.0
                a2 = 0.0
                a3 = 0.0
                for r in range(R):
                    v = yr[r]
                    a0 += v * x0[r]
                    a1 += v * x1[r]
                    a2 += v * x2[r]
                    a3 += v * x3[r]
                M[q, e] += a0
                M[q, e + 1] += a1
                M[q, e + 2] += a2
                M[q, e + 3] += a3
                e += 4
                lp += 4
            while lp < nt:
                xp = XT[lp, :R]
                acc = 0.0
                for r in range(R):
                    acc += yr[r] * xp[r]
                M[q, e] += acc
                e += 1
                lp += 1


@serial_kernel
def full_chunk(X, Wa, labels, T, sw, eps, start, stop, tile, features, direct, classes, M):
    """Rows start:stop in tiles: adds their packed Hessian sums to M (B, Q) float64.

    X (m, n) float32 or float64; Wa (K, n~) float64 is [W | b] (n~ = n + 1)
    or W (n~ = n); labels, T, sw, eps as for the gradient kernels.  Row q of
    M is the pair of classes (j, j'), j <= j', in the order (0, 0), (0, 1),
    ..., (0, C - 1), (1, 1), ...; column e the pair of columns (l, l'),
    l <= l', in the same order (see :func:`unpack`).  The pairs run over the
    first C = ``classes`` classes, B = C (C + 1) / 2 (C = K for the whole
    Hessian, K - 1 for the reduced Newton system of
    :mod:`fastsoftmax._newton_step`); the probabilities are always those of
    all K classes.  The products of a tile are formed for ``features``
    values of l at a time (columns of M in blocks of at most
    ``features`` n~), so that their buffer stays bounded for wide X.  With
    ``direct`` True (few pairs) each entry is instead summed directly
    (:func:`_add_direct_sums`), without the products; ``direct`` is True or
    None, so that numba compiles only the way of summing a call uses (it
    prunes the branches of a None argument, and of ``is not None`` tests
    of a bool one).
    """
    n = X.shape[1]
    K, nt = Wa.shape
    B = M.shape[0]
    width = features * nt  # the most columns of M one block of l spans
    rows = np.empty(tile, dtype=np.int64)
    on = direct is not None
    xa = np.empty((0 if on else tile, nt))
    XT = np.empty((nt if on else 0, tile))
    Zc = np.empty((K if on else 0, tile))
    Zb = np.empty((tile, K))
    Pbuf = np.empty(K * tile)
    aux = np.empty((3, tile))
    c = aux[2]  # c_i = w_i s_i
    zero_b = np.zeros(K)
    Gbuf = np.empty(B * tile)
    y = np.empty(tile if on else 0)
    Vb = np.empty(0 if on else tile * width)
    Mb = np.empty(0 if on else B * width)
    for t0 in range(start, stop, tile):
        t1 = min(t0 + tile, stop)
        R = kept_rows(labels, t0, t1, rows)
        if R == 0:
            continue
        Z = Zb[:R]
        if direct is not None:
            _feature_major_logits(X, rows[:R], Wa, XT, Zc, Z)
        else:
            Xa = gather(X, rows[:R], xa)  # float64, and with an intercept its column of ones
            if nt > n:
                for r in range(R):
                    Xa[r, n] = 1.0
            np.dot(Xa, Wa.T, Z)
        # class-major probabilities, and c_i = w_i s_i
        P = Pbuf[: K * R].reshape((K, R))  # contiguous
        tile_probabilities(Z, zero_b, P, aux, rows[:R], labels, T, sw, eps)  # b is in Z already
        G = Gbuf[: B * R].reshape((B, R))  # g_i^{jj'} = c_i p_ij (delta_jj' - p_ij')
        q = 0
        for j in range(classes):
            pj = P[j]
            g = G[q]
            for r in range(R):
                a = c[r] * pj[r]
                g[r] = a - a * pj[r]
            q += 1
            for jp in range(j + 1, classes):
                pjp = P[jp]
                g = G[q]
                for r in range(R):
                    g[r] = -(c[r] * pj[r]) * pjp[r]
                q += 1
        if direct is not None:
            _add_direct_sums(G, XT, y, M)
            continue
        first = 0  # M's column of the pair (l0, l0)
        for l0 in range(0, nt, features):
            l1 = min(l0 + features, nt)
            span = (l1 - l0) * nt - ((l1 - l0) * (l0 + l1 - 1)) // 2  # pairs with l in l0:l1
            V = Vb[: R * span].reshape((R, span))  # x~_il x~_il', contiguous for BLAS
            for r in range(R):
                e = 0
                for l in range(l0, l1):  # slices: a constant-offset inner loop vectorises
                    x = Xa[r, l]
                    out = V[r, e: e + nt - l]
                    src = Xa[r, l:]
                    for lp in range(nt - l):
                        out[lp] = x * src[lp]
                    e += nt - l
            Mt = Mb[: B * span].reshape((B, span))
            np.dot(G, V, Mt)
            for q in range(B):
                for e in range(span):
                    M[q, first + e] += Mt[q, e]
            first += span


@serial_kernel
def unpack(M, K, nt, scale):
    """The (K nt, K nt) float64 matrix, exactly symmetric, of the packed sums
    M (B, Q) of :func:`full_chunk` over K classes, times ``scale``."""
    N = K * nt
    H = np.empty((N, N))
    q = 0
    for j in range(K):
        for jp in range(j, K):
            e = 0
            for l in range(nt):
                for lp in range(l, nt):
                    h = M[q, e] * scale
                    H[j * nt + l, jp * nt + lp] = h
                    H[j * nt + lp, jp * nt + l] = h
                    H[jp * nt + lp, j * nt + l] = h
                    H[jp * nt + l, j * nt + lp] = h
                    e += 1
            q += 1
    return H


@parallel_kernel
def _block_chunks(chunk, X, Wa, labels, T, sw, eps, tile, features, direct, classes, slabs,
                     failed):
    """One ``prange`` iteration per chunk of rows, each a call of ``chunk``
    (:func:`full_chunk` through its address, :func:`chunk_entry`) into the
    chunk's own (B, Q) slab; ``failed[c]`` says whether chunk c raised."""
    m = X.shape[0]
    nchunks = failed.shape[0]
    for c in prange(nchunks):
        out = call_compiled(chunk, X, Wa, labels, T, sw, eps, np.int64(c * m // nchunks),
                            np.int64((c + 1) * m // nchunks), tile, features, direct,
                            classes, slabs[c])
        failed[c] = out[1]


def full_hessian_sums(X, Wa, labels, T, sw, eps, nchunks, tile, features, direct, classes):
    """The packed (B, Q) float64 Hessian sums of the loss over the pairs of
    the first ``classes`` classes (:func:`full_chunk`), in ``nchunks``
    parallel chunks summed in chunk order.  If a chunk raised in the
    parallel loop, every chunk is run again here (the same chunks: the same
    result, bit for bit), where the exception surfaces."""
    direct = True if direct else None
    return _packed_sums(X, Wa, labels, T, sw, eps, tile, features, direct, classes, nchunks,
                        (_block_chunks, chunk_entry(X, labels, T, sw, direct)))


def full_hessian_sums_serial(X, Wa, labels, T, sw, eps, tile, features, direct, classes):
    """:func:`full_hessian_sums` with one chunk and no parallel region (plain
    Python around the compiled :func:`full_chunk`)."""
    return _packed_sums(X, Wa, labels, T, sw, eps, tile, features, direct, classes)


def _packed_sums(X, Wa, labels, T, sw, eps, tile, features, direct, classes, nchunks=1,
                 parallel=None):
    """:func:`fastsoftmax._accumulate.chunked_sums` of :func:`full_chunk`, with
    the argument types its compiled entry takes."""
    nt = Wa.shape[1]
    shape = (classes * (classes + 1) // 2, nt * (nt + 1) // 2)
    plan = (int(tile), int(features), True if direct else None, int(classes))
    return chunked_sums(full_chunk, (X, Wa, labels, T, sw, float(eps)), plan, (shape,),
                        X.shape[0], nchunks, parallel)[0]


#: full_chunk's entry points, by the numba types of its array arguments.
_entries: dict = {}


def chunk_entry(X, labels, T, sw, direct) -> CompiledFunction:
    """:func:`full_chunk` compiled for these arrays (Wa and the slab (B, Q)
    float64 C-contiguous) and ``direct`` (True or None), to call from a
    parallel loop through its address (:mod:`fastsoftmax._compiled`)."""
    key = (*(array_key(a) for a in (X, labels, T, sw)), direct is None)
    entry = _entries.get(key)
    if entry is None:
        matrix = types.Array(types.float64, 2, "C")
        argtypes = (typeof(X), matrix, *(typeof(a) for a in (labels, T, sw)), types.float64,
                    types.int64, types.int64, types.int64, types.int64, typeof(direct),
                    types.int64, matrix)
        entry = _entries.setdefault(key, CompiledFunction(full_chunk, argtypes))
    return entry
