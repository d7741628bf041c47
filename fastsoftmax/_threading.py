"""numba's TBB threading layer, so that programs that fork keep working.

numba's default choice on Linux is GNU OpenMP when TBB is not importable, and
GNU OpenMP is not fork-safe: a process that has run a parallel kernel and then
forks (``multiprocessing`` with the ``fork`` start method) gets children that
print "fork() called from a process already using GNU OpenMP, this is
unsafe." and die, and a parent waiting on them hangs.  TBB is fork-safe and
thread-safe; measured on the development machine, a parallel call costs
2-4 µs more with it than with OpenMP (on 60 µs calls), and large problems run
at the same speed.

So fastsoftmax asks numba for TBB when it can be loaded and the user has not
chosen a layer.  The ``tbb`` wheel (a dependency on Linux x86-64) installs
``libtbb.so.12`` in the environment's ``lib/`` folder, where numba's TBB
extension does not look (``numba -s`` reports the layer unavailable); loading
the library once with ``RTLD_GLOBAL`` makes it resolvable.  An explicit
``NUMBA_THREADING_LAYER`` wins; ``FASTSOFTMAX_THREADING_LAYER=numba`` leaves
numba's own choice alone.  The choice is process-wide and is made at import,
before any parallel kernel runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time
import warnings

import numba

ENV = "FASTSOFTMAX_THREADING_LAYER"


def _candidate_paths() -> list[str]:
    names = ("libtbb.so.12", "libtbb.12.dylib", "tbb12.dll")
    import site

    folders = [os.path.join(sys.prefix, "lib"), os.path.join(sys.prefix, "Library", "bin"),
               os.path.join(site.getuserbase(), "lib")]  # pip install --user
    if sys.base_prefix != sys.prefix:
        folders.append(os.path.join(sys.base_prefix, "lib"))
    return [os.path.join(f, n) for f in folders for n in names if os.path.exists(os.path.join(f, n))]


def tbb_loadable() -> bool:
    """Make TBB's shared library resolvable for numba; whether numba's TBB pool imports."""
    for path in _candidate_paths():
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            break
        except OSError:
            continue
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401
    except ImportError:
        return False
    return True


def choose_threading_layer() -> str:
    """Make TBB loadable and, unless told otherwise, ask numba for it.

    Returns numba's threading-layer setting.  TBB's library is made loadable
    even when the user chose a layer through ``NUMBA_THREADING_LAYER`` (their
    choice may be "tbb", "safe" or "forksafe", which need it).
    """
    wanted = os.environ.get(ENV, "tbb").strip().lower() or "tbb"
    if wanted in ("numba", "default"):
        return numba.config.THREADING_LAYER
    if wanted != "tbb":
        warnings.warn(f"{ENV}={wanted!r} is not understood (use 'tbb' or 'numba'); ignored",
                      RuntimeWarning, stacklevel=3)
        return numba.config.THREADING_LAYER
    loadable = tbb_loadable()
    if numba.config.THREADING_LAYER != "default":
        pass  # an explicit NUMBA_THREADING_LAYER (or config) wins
    elif loadable:
        numba.config.THREADING_LAYER = "tbb"
    elif ENV in os.environ:
        warnings.warn(f"{ENV}=tbb, but numba's TBB layer cannot be loaded (pip install tbb); "
                      "numba's default layer is used", RuntimeWarning, stacklevel=3)
    return numba.config.THREADING_LAYER


# --- calls from several Python threads ------------------------------------------
#
# numba's workqueue layer (its fallback when neither TBB nor OpenMP loads) is
# not thread-safe: two Python threads entering parallel regions at once abort
# the process.  Parallel kernel calls are therefore serialised while the layer
# is unknown (before the first parallel call) or is workqueue; TBB and OpenMP
# run them concurrently.

_serial_lock = threading.Lock()
_layer: str | None = None


def active_layer() -> str | None:
    """The threading layer numba runs parallel regions on ("tbb", "omp" or
    "workqueue"), or None before the first parallel region of the process."""
    global _layer
    if _layer is None:
        try:
            _layer = numba.threading_layer()
        except ValueError:  # no parallel region has run yet
            return None
    return _layer


def parallel_region():
    """Context for one call of a parallel kernel: a lock unless the layer is
    thread-safe; its end is recorded (:func:`seconds_since_kernel`)."""
    return _Region(_NO_LOCK if active_layer() in ("tbb", "omp") else _serial_lock)


_NO_LOCK = contextlib.nullcontext()
#: perf_counter() at the end of the process's latest kernel call (-inf: none yet).
_last_kernel_end = float("-inf")


class _Region:
    __slots__ = ("_lock",)

    def __init__(self, lock):
        self._lock = lock

    def __enter__(self):
        self._lock.__enter__()

    def __exit__(self, *exc):
        kernel_done()
        return self._lock.__exit__(*exc)


def kernel_done() -> None:
    """Record that a kernel call ended now (parallel regions record themselves)."""
    global _last_kernel_end
    _last_kernel_end = time.perf_counter()


def seconds_since_kernel() -> float:
    """Seconds since the process's latest kernel call ended (inf: none has run).

    More than a millisecond means the caller is doing other work between
    calls, and numba's worker threads (idle at least that long) are likely
    asleep; less means calls come back to back, and a parallel region, which
    wakes the workers once, pays from the next call on."""
    return time.perf_counter() - _last_kernel_end
