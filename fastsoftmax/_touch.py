"""Taking a fresh buffer's page faults up front, in parallel.

A new large array is mapped by the kernel page by page at its first write.
When that first write is a PyTorch matrix product's, the faults stall the
product: at (2048, 2048, 128256) the bfloat16 head's logits products
(:mod:`fastsoftmax._torch_head`, written into dW's fresh memory) took 0.72-0.80
s in all, and 0.55-0.64 s after one write per page beforehand (measured on a
2-core Sapphire Rapids VM, 128 k pages of 4 KiB).  :func:`touch_pages` makes
those writes on all threads.
"""

from __future__ import annotations

import mmap

import numpy as np
from numba import prange

from ._jit import parallel_kernel


@parallel_kernel
def _touch(a, first, step):
    """``a[0] = 0`` and ``a[first + j step] = 0`` for every such index of the
    1-D ``a`` (any dtype), in parallel."""
    a[0] = 0
    for j in prange((a.shape[0] - first + step - 1) // step):
        a[first + j * step] = 0


def touch_pages(a: np.ndarray) -> None:
    """Write 0 into one entry of every memory page that the 1-D contiguous
    ``a`` (whose values are to be overwritten anyway) spans: its first entry
    and the first entry of each page after it."""
    if a.shape[0] == 0:
        return
    page = mmap.PAGESIZE
    step = max(1, page // a.itemsize)
    first = (-a.ctypes.data % page) // a.itemsize  # the first entry on a page boundary
    _touch(a, min(first, a.shape[0]), step)
