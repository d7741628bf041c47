"""Numba compilation settings shared by every kernel.

One place decides how kernels are compiled, so that all of them agree:

* ``cache=True``: compiled machine code is stored next to the module and a new
  process loads it instead of recompiling.  Nothing in a cached function may
  read dynamic globals (``numba.get_num_threads()`` is the classic example);
  the thread-dependent chunk count is therefore computed in Python and passed
  in as an argument.
* ``fastmath=FASTMATH``: a subset of LLVM's fast-math flags that lets
  reductions be reassociated (and so vectorised) while keeping IEEE NaN and
  infinity semantics (``nnan`` and ``ninf`` are deliberately left out), so a
  NaN in the input still propagates to the output.
* ``error_model="numpy"``: division by zero gives inf/nan as in NumPy instead
  of a Python exception check inside hot loops.
* ``nogil=True``: several Python threads may run kernels at once.
"""

from __future__ import annotations

import numba

#: Fast-math flags that keep NaN/inf semantics but allow vectorised reductions.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

_COMMON = dict(cache=True, fastmath=set(FASTMATH), error_model="numpy", nogil=True)


def parallel_kernel(func):
    """Compile ``func`` as a cached, parallel (``prange``) kernel."""
    return numba.njit(parallel=True, **_COMMON)(func)


def serial_kernel(func):
    """Compile ``func`` as a cached serial kernel or helper.

    Helpers are separate functions for Numba (so each keeps its own fast-math
    flags) and are inlined by LLVM where that pays.
    """
    return numba.njit(parallel=False, **_COMMON)(func)
