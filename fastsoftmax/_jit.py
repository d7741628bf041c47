"""Numba compilation settings shared by every kernel.

One place decides how kernels are compiled, so that all of them agree; no
other module calls ``numba.njit`` or chooses compile flags:

* ``cache=True``: compiled machine code is stored next to the module and a new
  process loads it instead of recompiling.  Nothing in a cached function may
  read dynamic globals (``numba.get_num_threads()`` is the classic example);
  the thread-dependent chunk count is therefore computed in Python and passed
  in as an argument.  A cached kernel is compiled again only when its own
  source file changes: after editing a helper it calls from another module,
  delete the ``*.nbi``/``*.nbc`` files (or set ``FASTSOFTMAX_CACHE=0``), or
  the old machine code runs (and a test of the edit passes or fails on it).
  The environment variable ``FASTSOFTMAX_CACHE=0`` (read
  once, at import) turns the on-disk cache off for every kernel: nothing is
  read from it or written to it, and every process compiles afresh (useful
  on read-only installs, or to rule the cache out when debugging).
* ``fastmath=FASTMATH``: a subset of LLVM's fast-math flags that lets
  reductions be reassociated (and so vectorised) while keeping IEEE NaN and
  infinity semantics (``nnan`` and ``ninf`` are deliberately left out), so a
  NaN in the input still propagates to the output.  Helpers whose arithmetic
  must be evaluated as written (an argument reduction that reassociation
  would undo) use :func:`exact_kernel`, which allows only ``contract`` (fused
  multiply-add).
* ``error_model="numpy"``: division by zero gives inf/nan as in NumPy instead
  of a Python exception check inside hot loops.
* ``nogil=True``: several Python threads may run kernels at once.
"""

from __future__ import annotations

import os

import numba

#: Fast-math flags that keep NaN/inf semantics but allow vectorised reductions.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})
#: Fast-math flags of :func:`exact_kernel`: fused multiply-add only, no reordering.
EXACT_FASTMATH = frozenset({"contract"})

#: The environment variable that turns the on-disk cache off ("0", "false", "no", "off").
CACHE_ENV = "FASTSOFTMAX_CACHE"


def cache_enabled() -> bool:
    """Whether kernels use numba's on-disk cache: unless ``FASTSOFTMAX_CACHE`` says no."""
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


#: Read once at import: every kernel of the process is compiled the same way.
CACHE = cache_enabled()

#: ``jit_options`` for ``numba.extending.overload`` implementations.
OVERLOAD_OPTIONS = {"cache": CACHE}


def _options(fastmath: frozenset) -> dict:
    return dict(cache=CACHE, fastmath=set(fastmath), error_model="numpy", nogil=True)


def parallel_kernel(func):
    """Compile ``func`` as a cached, parallel (``prange``) kernel."""
    return numba.njit(parallel=True, **_options(FASTMATH))(func)


def serial_kernel(func):
    """Compile ``func`` as a cached serial kernel or helper.

    Helpers are separate functions for Numba (so each keeps its own fast-math
    flags) and are inlined by LLVM where that pays.
    """
    return numba.njit(parallel=False, **_options(FASTMATH))(func)


def inline_helper(func):
    """Compile ``func`` as a helper that numba inlines into every calling kernel.

    numba compiles a helper called from another compiled function as a
    library of its own, links that library into the caller's module and
    optimises and emits the linked code again there, once per level of
    calls: a chain of three helpers pays for the innermost one's code three
    times.  With ``inline="always"`` numba copies the helper's code into the
    caller before typing instead, so it is compiled only as part of the
    caller.  For small helpers with one call site per caller (each call site
    gets its own copy; a large function inlined everywhere compiles more
    slowly, measured).  Inlined, its code is compiled with the caller's
    fast-math flags (the kernels' are :data:`FASTMATH`; the tile-gathering
    overload, which only copies, has none); called from Python on its own,
    with :data:`FASTMATH`.  Measured on the default path
    (first ``loss_and_grad`` on (60000, 20, 3) float64, empty cache, 2-core
    VM): 6.6 s with every helper separate, 5.1 s with the tile step, its two
    products and the tile gathering inlined.
    """
    return numba.njit(parallel=False, inline="always", **_options(FASTMATH))(func)


def exact_kernel(func):
    """Compile ``func`` as a cached serial helper whose arithmetic is kept as written.

    Only ``contract`` (fused multiply-add) of the fast-math flags: no
    reassociation, so a two-part argument reduction such as
    ``(x - n*hi) - n*lo`` is not folded back into one rounded subtraction.
    """
    return numba.njit(parallel=False, **_options(EXACT_FASTMATH))(func)
