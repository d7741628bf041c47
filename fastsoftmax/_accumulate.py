"""Per-chunk accumulators of the parallel kernels, and their deterministic sum.

Every chunk of rows gets its own (K, n) gradient slab, (K,) intercept slab
and loss, so no two threads ever write the same memory; the chunks' results
are then added in chunk order, which makes the sum independent of which
thread ran which chunk.  These helpers are compiled without ``parallel``: in
a parallel function, Numba would turn each ``np.zeros`` and each whole-array
``+=`` into a parallel region of its own, and every region costs a thread
wake-up, which shows on small problems.
"""

from __future__ import annotations

import numpy as np

from ._jit import serial_kernel


@serial_kernel
def allocate(nchunks, K, n):
    """Zeroed ``(slabs (nchunks, K, n), bias_slabs (nchunks, K), losses (nchunks,))``."""
    return np.zeros((nchunks, K, n)), np.zeros((nchunks, K)), np.zeros(nchunks)


@serial_kernel
def combine(slabs, bias_slabs, losses):
    """``(sum of losses, G (K, n), gb (K,))``, summed in chunk order into chunk 0's slabs."""
    G = slabs[0]
    gb = bias_slabs[0]
    K, n = G.shape
    total = losses[0]
    for c in range(1, losses.shape[0]):
        total += losses[c]
        S = slabs[c]
        for k in range(K):
            gb[k] += bias_slabs[c, k]
            for l in range(n):
                G[k, l] += S[k, l]
    return total, G, gb
