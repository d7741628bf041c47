"""Keep the BLAS that Numba calls single-threaded while a parallel kernel runs.

Inside a ``prange`` region every Numba thread runs its own small GEMMs.  If
the BLAS library (SciPy's, which Numba's ``np.dot`` calls) started its own
thread pool for each of them, the machine would be oversubscribed and the
calls would queue for the library's global thread server.  ``single_threaded_blas``
sets that library's thread count to one for the duration of a kernel call and
restores it afterwards.  It is reference counted, so concurrent kernel calls
from several Python threads restore the setting only when the last one leaves.

OpenBLAS (what SciPy's wheels ship) is driven through its own
``openblas_set_num_threads`` symbol; other BLAS libraries through
threadpoolctl.  The library is located once, on first use.
"""

from __future__ import annotations

import itertools
import threading

_lock = threading.Lock()
_active = 0
_saved: list = []
_libraries: list | None = None


class _OpenBLAS:
    """get/set of one OpenBLAS's process-wide thread count, straight through ctypes."""

    def __init__(self, dynlib):
        for prefix, suffix in itertools.product(("scipy_", ""), ("", "64_", "_64")):
            name = f"{prefix}openblas_get_num_threads{suffix}"
            if hasattr(dynlib, name):
                self.get = getattr(dynlib, name)
                self.set = getattr(dynlib, f"{prefix}openblas_set_num_threads{suffix}")
                return
        raise LookupError("no openblas_get_num_threads symbol")


class _Other:
    """Any other BLAS that threadpoolctl can limit."""

    def __init__(self, controller):
        self.get = lambda: controller.num_threads
        self.set = controller.set_num_threads


def _belongs_to_scipy(path: str) -> bool:
    """Whether a loaded BLAS is SciPy's own (not NumPy's, which wheels also name
    libscipy_openblas*, but keep under numpy.libs)."""
    import os

    import scipy

    parts = os.path.normpath(path).split(os.sep)
    scipy_dir = os.path.dirname(scipy.__file__)
    return ("scipy.libs" in parts or "scipy_openblas32" in parts
            or os.path.normpath(path).startswith(scipy_dir + os.sep))


def _scipy_blas() -> list:
    global _libraries
    if _libraries is None:
        import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS)
        from threadpoolctl import ThreadpoolController

        found = ThreadpoolController().select(user_api="blas").lib_controllers
        chosen = [c for c in found if _belongs_to_scipy(c.filepath)] or found
        libs = []
        for controller in chosen:
            try:
                libs.append(_OpenBLAS(controller.dynlib))
            except (LookupError, AttributeError):
                libs.append(_Other(controller))
        _libraries = libs
    return _libraries


class _SingleThreadedBLAS:
    def __enter__(self):
        global _active
        with _lock:
            if _active == 0:
                for lib in _scipy_blas():
                    threads = lib.get()
                    if threads != 1:
                        lib.set(1)
                        _saved.append((lib, threads))
            _active += 1

    def __exit__(self, *exc):
        global _active
        with _lock:
            _active -= 1
            if _active == 0:
                for lib, threads in _saved:
                    lib.set(threads)
                _saved.clear()
        return False


#: Context manager: SciPy's BLAS runs on the calling thread only inside it.
single_threaded_blas = _SingleThreadedBLAS()
