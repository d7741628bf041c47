"""The Hessian's per-class diagonal blocks from a tile's curvatures, in parallel over classes.

Block k of the Hessian of the loss sums, with respect to class k's own
parameters ``[W[k], b[k]]``, is ``sum_i c_ik x~_i x~_i^T`` with
``c_ik = w_i s_i p_ik (1 - p_ik)`` and ``x~_i = [x_i, 1]``
(:func:`fastsoftmax._hessian.class_blocks` computes the curvatures and the
rows ``x~`` of a tile in NumPy).  :func:`add_class_blocks` adds one tile's
K symmetric products, the classes split over the threads: for each class
a thread scales the tile's rows by ``sqrt(c_ik)`` into its float64 (R, n~)
buffer and forms ``S^T S`` with one BLAS GEMM (SciPy's, through numba's
``np.dot``; the caller holds it to one thread), whose upper triangle is
added to the block.

Measured on a 2-core Sapphire Rapids VM (a tile of 4000 rows, n~ = 51,
K = 5): 2.2 ms against 4.4 ms for the same scaling and products in NumPy
on one BLAS thread (OpenBLAS gains nothing from a second thread on these
51 x 51 outputs); with the probabilities, a whole ``class_blocks`` 3.0
against 5.5 ms.

Peak extra memory: one (R, n~) and one (n~, n~) float64 buffer per
worker (``workers``, at most the thread count): 8.5 MB for two workers at
the 4096-row tiles and n~ = 129 of Newton-CG's widest blocks.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import parallel_kernel


@parallel_kernel
def add_class_blocks(Xt, roots, blocks, workers):
    """``blocks[k] += S_k^T S_k`` with ``S_k = roots[:, k, None] * Xt``, for every class k.

    Xt (R, n~) and roots (R, K) (the curvatures' square roots) float64,
    C-contiguous; blocks (K, n~, n~) float64; ``workers`` >= 1 contiguous
    runs of classes, one per ``prange`` iteration, each with its own
    buffers, allocated before the parallel loop (an allocation that fails
    raises there, not inside it).  Each class's product is independent of
    the others and of the thread that computes it; its upper triangle is
    added to both triangles, so every block stays exactly symmetric."""
    R, nt = Xt.shape
    K = blocks.shape[0]
    scaled = np.empty((workers, R, nt))
    product = np.empty((workers, nt, nt))
    for w in prange(workers):
        S = scaled[w]
        Pk = product[w]
        for k in range(w * K // workers, (w + 1) * K // workers):
            for i in range(R):
                c = roots[i, k]
                for l in range(nt):
                    S[i, l] = Xt[i, l] * c
            np.dot(S.T, S, Pk)
            for a in range(nt):
                blocks[k, a, a] += Pk[a, a]
                for l in range(a + 1, nt):
                    blocks[k, a, l] += Pk[a, l]
                    blocks[k, l, a] += Pk[a, l]
