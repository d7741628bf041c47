"""Per-chunk accumulators of the parallel kernels, and their deterministic sum.

Every chunk of rows gets its own (K, n) gradient slab, (K,) intercept slab
and loss, so no two threads ever write the same memory; the chunks' results
are then added in chunk order, which makes the sum independent of which
thread ran which chunk.  :func:`allocate` and :func:`combine` are compiled
without ``parallel``: in a parallel function, Numba would turn each
``np.zeros`` and each whole-array ``+=`` into a parallel region of its own,
and every region costs a thread wake-up, which shows on small problems.
:func:`chunked_sums` does the same in Python around a parallel kernel that
calls a compiled chunk function through its address.
"""

from __future__ import annotations

import numpy as np

from ._jit import serial_kernel


@serial_kernel
def allocate(nchunks, K, n):
    """Zeroed ``(slabs (nchunks, K, n), bias_slabs (nchunks, K), losses (nchunks,))``."""
    return np.zeros((nchunks, K, n)), np.zeros((nchunks, K)), np.zeros(nchunks)


@serial_kernel
def zero(a):
    """Zeros (False for a bool array) into ``a`` in place, for the parallel
    kernels that reuse or allocate their accumulators (``np.zeros`` there
    would be a parallel region of its own)."""
    for i in range(a.size):
        a.flat[i] = 0


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


def chunked_sums(chunk, head, tail, shapes, m, nchunks=1, parallel=None) -> list:
    """Float64 sums over rows 0:m, one zeroed slab of each shape in ``shapes``
    per chunk of rows, added in chunk order (Python around compiled code).

    Chunk c covers rows ``start:stop = c m // nchunks : (c + 1) m // nchunks``
    and adds into its slabs ``s_c``: ``chunk(*head, start, stop, *tail, *s_c)``.
    With ``parallel = (kernel, entry)``, ``kernel(entry, *head, *tail, *slabs,
    failed)`` runs the chunks in a ``prange`` loop (``entry``: ``chunk``
    compiled for these arguments, called through its address, see
    :mod:`fastsoftmax._compiled`) and flags those that raised; if any did,
    every chunk is run again here (the same chunks: the same result, bit for
    bit), where the exception surfaces.  Without, the chunks run one after the
    other on this thread.  Returns the sums, one array per shape (chunk 0's
    slabs).
    """
    slabs = [np.zeros((nchunks, *shape)) for shape in shapes]
    here = parallel is None
    if not here:
        kernel, entry = parallel
        failed = np.zeros(nchunks, dtype=np.bool_)
        kernel(entry, *head, *tail, *slabs, failed)
        here = failed.any()
        if here:  # partial sums: start again from zero
            for s in slabs:
                s[...] = 0.0
    if here:
        for c in range(nchunks):
            chunk(*head, c * m // nchunks, (c + 1) * m // nchunks, *tail, *(s[c] for s in slabs))
    sums = [s[0] for s in slabs]
    for c in range(1, nchunks):
        for total, s in zip(sums, slabs):
            total += s[c]
    return sums
