"""The fused full Hessian, for Newton-Cholesky steps when K (n + 1) is small.

With x~_i = (x_i, 1) when there is an intercept (x_i otherwise), n~ its
length and N = K n~, the Hessian of the loss sums is

    H = sum_i w_i s_i (diag p_i - p_i p_i^T) kron x~_i x~_i^T,

an (N, N) matrix in the class-major layout of the (K, n~) matrix [W | b]
(entry (j n~ + l, j' n~ + l')).  Per tile of R kept rows (:func:`full_chunk`),
all in float64 whatever the working dtype:

1. the rows are copied into a float64 buffer with a column of ones appended
   for the intercept, and one GEMM against [W | b] gives the logits;
2. the probabilities come out class-major (one SIMD pass of
   :func:`fastsoftmax._rowmath.exp_nonpositive`);
3. A (R, N) holds the rows p_ij x~_il and B = c A with c_i = w_i s_i; one GEMM
   A^T B (N x R x N) gives the outer-product part, subtracted from the
   chunk's (N, N) float64 slab, and K GEMMs X~^T B_j (n~ x R x n~) give the
   diagonal blocks, added to it.

Chunks of rows run in parallel with their own slabs, summed in chunk order
(deterministic for a given thread count).  Cost O(m K^2 n~^2).

Peak extra memory: ``nchunks * (2 N^2 + tile (2 N + 2 n~ + 2 K + 3) + n~^2) * 8``
bytes, plus the (N, N) float64 result (and its reordering, another N^2 * 8).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._accumulate import allocate, combine
from ._jit import parallel_kernel, serial_kernel
from ._rowmath import exp_nonpositive
from ._tiles import kept_rows


@serial_kernel
def full_chunk(X, Wa, labels, T, sw, eps, start, stop, tile, H):
    """Rows start:stop in tiles: adds their Hessian sum to H (N, N) float64.

    X (m, n) float32 or float64; Wa (K, n~) float64 is [W | b] (n~ = n + 1)
    or W (n~ = n); labels, T, sw, eps as for the gradient kernels.
    """
    n = X.shape[1]
    K, nt = Wa.shape
    N = K * nt
    inv_k = 1.0 / K
    use_labels = labels.shape[0] > 0
    weighted = sw.shape[0] > 0
    rows = np.empty(tile, dtype=np.int64)
    xa = np.empty((tile, nt))
    Zb = np.empty((tile, K))
    P = np.empty((K, tile))
    c = np.empty(tile)
    mx = np.empty(tile)
    Ab = np.empty((tile, N))
    Bb = np.empty((tile, N))
    Yb = np.empty((tile, nt))
    Hd = np.empty((nt, nt))
    Ho = np.empty((N, N))
    for t0 in range(start, stop, tile):
        t1 = min(t0 + tile, stop)
        R = kept_rows(labels, t0, t1, rows)
        if R == 0:
            continue
        Xa = xa[:R]
        for r in range(R):
            for l in range(n):
                Xa[r, l] = X[rows[r], l]
            if nt > n:
                Xa[r, n] = 1.0
        Z = Zb[:R]
        np.dot(Xa, Wa.T, Z)
        # class-major probabilities
        for r in range(R):
            mx[r] = Z[r, 0]
        for k in range(1, K):
            for r in range(R):
                mx[r] = max(mx[r], Z[r, k])
        for k in range(K):
            for r in range(R):
                P[k, r] = exp_nonpositive(Z[r, k] - mx[r])
        for r in range(R):
            mx[r] = 0.0
        for k in range(K):
            for r in range(R):
                mx[r] += P[k, r]
        for k in range(K):
            for r in range(R):
                P[k, r] = P[k, r] / mx[r]
        # c_i = w_i s_i
        for r in range(R):
            i = rows[r]
            s = 1.0
            if not use_labels:
                s = 0.0
                for k in range(K):
                    s += (1.0 - eps) * T[i, k] + eps * inv_k
            c[r] = (sw[i] if weighted else 1.0) * s
        A = Ab[:R]
        B = Bb[:R]
        for r in range(R):
            for j in range(K):
                pj = P[j, r]
                for l in range(nt):
                    a = pj * Xa[r, l] if pj != 0.0 else 0.0  # probability 0 adds nothing
                    A[r, j * nt + l] = a
                    B[r, j * nt + l] = c[r] * a
        np.dot(A.T, B, Ho)
        for q in range(N):
            for e in range(N):
                H[q, e] -= Ho[q, e]
        Y = Yb[:R]
        for j in range(K):
            for r in range(R):
                for l in range(nt):
                    Y[r, l] = B[r, j * nt + l]
            np.dot(Xa.T, Y, Hd)
            for l in range(nt):
                for e in range(nt):
                    H[j * nt + l, j * nt + e] += Hd[l, e]


@parallel_kernel
def full_hessian_sums(X, Wa, labels, T, sw, eps, nchunks, tile):
    """The unnormalised Hessian (N, N) float64 of the loss sums, class-major [W | b] layout."""
    m = X.shape[0]
    N = Wa.shape[0] * Wa.shape[1]
    slabs, bias_slabs, unused = allocate(nchunks, N, N)
    for c in prange(nchunks):
        full_chunk(X, Wa, labels, T, sw, eps, c * m // nchunks, (c + 1) * m // nchunks, tile,
                   slabs[c])
    return combine(slabs, bias_slabs, unused)[1]


@serial_kernel
def full_hessian_sums_serial(X, Wa, labels, T, sw, eps, tile):
    """:func:`full_hessian_sums` with one chunk and no parallel region."""
    N = Wa.shape[0] * Wa.shape[1]
    slabs, bias_slabs, unused = allocate(1, N, N)
    full_chunk(X, Wa, labels, T, sw, eps, 0, X.shape[0], tile, slabs[0])
    return combine(slabs, bias_slabs, unused)[1]
