"""The last step of a gradient: the sums divided by the denominator, plus the L2 term.

One pass over the (K, n) gradient instead of NumPy's four (a division, the
squared norm of W, a temporary ``l2 W`` and the addition), compiled and, for
large gradients, split over the threads by rows of W.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import parallel_kernel, serial_kernel


@serial_kernel
def finish_row(G, W, denom, l2, out, sq, k):
    """``out[k] = G[k] / denom + l2 W[k]`` (``out`` may be G); ``sq[k]`` the
    float64 sum of W[k]'s squares when ``l2`` is not 0 (W is not read when
    it is: a non-finite weight then leaves the gradient as the sums make it,
    as before)."""
    n = G.shape[1]
    if l2 == 0.0:  # W not read: 0 * inf would be NaN
        for j in range(n):
            out[k, j] = np.float64(G[k, j]) / denom
        return
    s = 0.0
    for j in range(n):  # a reduction only: no store in this loop
        w = np.float64(W[k, j])
        s += w * w
    sq[k] = s
    for j in range(n):
        out[k, j] = np.float64(G[k, j]) / denom + l2 * np.float64(W[k, j])


@serial_kernel
def finish_serial(G, W, denom, l2, out, sq):
    """:func:`finish_parallel` on the calling thread."""
    for k in range(G.shape[0]):
        finish_row(G, W, denom, l2, out, sq, k)


@parallel_kernel
def finish_parallel(G, W, denom, l2, out, sq):
    """``out = G / denom + l2 W`` for G, W and out (K, n) C-contiguous (out of
    W's dtype, possibly G itself), and ``sq[k] = ||W[k]||^2`` (float64) when
    ``l2`` is not 0; rows in parallel.  Each entry is computed the same way
    whatever the thread count."""
    for k in prange(G.shape[0]):
        finish_row(G, W, denom, l2, out, sq, k)
