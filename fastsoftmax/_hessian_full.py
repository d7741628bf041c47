"""The fused full Hessian, for Newton-Cholesky steps when K (n + 1) is small.

With x~_i = (x_i, 1) when there is an intercept (x_i otherwise), n~ its
length and N = K n~, the Hessian of the loss sums is

    H = sum_i w_i s_i (diag p_i - p_i p_i^T) kron x~_i x~_i^T,

an (N, N) matrix in the class-major layout of the (K, n~) matrix [W | b]
(entry (j n~ + l, j' n~ + l')).  Its (j, j') block is
X~^T diag(w s p_j (delta_jj' - p_j')) X~.  Per tile of R kept rows
(:func:`full_chunk`), all in float64 whatever the working dtype:

1. the rows are copied into a float64 buffer with a column of ones appended
   for the intercept, and one GEMM against [W | b] gives the logits;
2. the probabilities come out class-major (one pass of
   :func:`fastsoftmax._rowmath.exp_nonpositive`);
3. for each block j <= j' of the upper block triangle (the Hessian is
   symmetric), the rows scaled by c_i p_ij (delta_jj' - p_ij') with
   c_i = w_i s_i go into a (R, n~) buffer and one GEMM X~^T Y (n~ x R x n~)
   gives the tile's block, added to the chunk's (N, N) float64 slab.

Chunks of rows run in parallel with their own slabs, summed in chunk order
(deterministic for a given thread count).  Cost about m K (K + 1) n~^2 / 2
multiply-adds; the lower block triangle is copied from the upper one at the end.

Peak extra memory: ``nchunks * (N^2 + tile (2 n~ + 2 K + 3) + n~^2) * 8``
bytes, plus the (N, N) float64 result (and its reordering, another N^2 * 8).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._accumulate import allocate, combine
from ._jit import parallel_kernel, serial_kernel
from ._rowmath import tile_probabilities
from ._tiles import gather, kept_rows


@serial_kernel
def full_chunk(X, Wa, labels, T, sw, eps, start, stop, tile, H):
    """Rows start:stop in tiles: adds their Hessian sum to the upper block
    triangle of H (N, N) float64 (blocks (j, j') with j <= j').

    X (m, n) float32 or float64; Wa (K, n~) float64 is [W | b] (n~ = n + 1)
    or W (n~ = n); labels, T, sw, eps as for the gradient kernels.
    """
    n = X.shape[1]
    K, nt = Wa.shape
    rows = np.empty(tile, dtype=np.int64)
    xa = np.empty((tile, nt))
    Zb = np.empty((tile, K))
    Pbuf = np.empty(K * tile)
    aux = np.empty((3, tile))
    c = aux[2]  # c_i = w_i s_i
    zero_b = np.zeros(K)
    Yb = np.empty((tile, nt))
    Hd = np.empty((nt, nt))
    for t0 in range(start, stop, tile):
        t1 = min(t0 + tile, stop)
        R = kept_rows(labels, t0, t1, rows)
        if R == 0:
            continue
        Xa = gather(X, rows[:R], xa)  # float64, and with an intercept its column of ones
        if nt > n:
            for r in range(R):
                Xa[r, n] = 1.0
        Z = Zb[:R]
        np.dot(Xa, Wa.T, Z)
        # class-major probabilities, and c_i = w_i s_i
        P = Pbuf[: K * R].reshape((K, R))  # contiguous
        tile_probabilities(Z, zero_b, P, aux, rows[:R], labels, T, sw, eps)  # b is in Z already
        # block (j, j') = X~^T diag(c p_j (delta_jj' - p_j')) X~, for j <= j'
        Y = Yb[:R]
        for j in range(K):
            for jp in range(j, K):
                delta = 1.0 if jp == j else 0.0
                for r in range(R):
                    g = c[r] * P[j, r] * (delta - P[jp, r])
                    for l in range(nt):
                        Y[r, l] = g * Xa[r, l] if g != 0.0 else 0.0  # 0 adds nothing
                np.dot(Xa.T, Y, Hd)
                for l in range(nt):
                    for e in range(nt):
                        H[j * nt + l, jp * nt + e] += Hd[l, e]


@serial_kernel
def mirror_blocks(H, K, nt):
    """Fill the lower block triangle of H from the upper one; return H."""
    for j in range(K):
        for jp in range(j + 1, K):
            for l in range(nt):
                for e in range(nt):
                    H[jp * nt + e, j * nt + l] = H[j * nt + l, jp * nt + e]
    return H


@parallel_kernel
def full_hessian_sums(X, Wa, labels, T, sw, eps, nchunks, tile):
    """The unnormalised Hessian (N, N) float64 of the loss sums, class-major [W | b] layout."""
    m = X.shape[0]
    N = Wa.shape[0] * Wa.shape[1]
    slabs, bias_slabs, unused = allocate(nchunks, N, N)
    for c in prange(nchunks):
        full_chunk(X, Wa, labels, T, sw, eps, c * m // nchunks, (c + 1) * m // nchunks, tile,
                   slabs[c])
    return mirror_blocks(combine(slabs, bias_slabs, unused)[1], Wa.shape[0], Wa.shape[1])


@serial_kernel
def full_hessian_sums_serial(X, Wa, labels, T, sw, eps, tile):
    """:func:`full_hessian_sums` with one chunk and no parallel region."""
    N = Wa.shape[0] * Wa.shape[1]
    slabs, bias_slabs, unused = allocate(1, N, N)
    full_chunk(X, Wa, labels, T, sw, eps, 0, X.shape[0], tile, slabs[0])
    return mirror_blocks(combine(slabs, bias_slabs, unused)[1], Wa.shape[0], Wa.shape[1])
