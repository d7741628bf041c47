"""Keep the BLAS that Numba calls single-threaded while a parallel kernel runs.

Inside a ``prange`` region every Numba thread runs its own small GEMMs; if the
BLAS library (SciPy's, which Numba's ``np.dot`` uses) started its own thread
pool for each of them, the machine would be oversubscribed and the calls
would contend for the library's global thread server.  :func:`single_threaded_blas`
sets that library's thread count to one for the duration of a kernel call and
restores it afterwards.  It is reference counted, so that concurrent kernel
calls from several Python threads restore the setting only when the last one
leaves.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

_lock = threading.Lock()
_active = 0
_saved: list[tuple[object, int]] = []
_controllers: list | None = None


def _scipy_blas_controllers() -> list:
    """threadpoolctl controllers of the BLAS libraries SciPy's ``cython_blas`` uses."""
    global _controllers
    if _controllers is None:
        import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS)
        from threadpoolctl import ThreadpoolController

        libs = ThreadpoolController().select(user_api="blas").lib_controllers
        scipy_libs = [lib for lib in libs if "scipy" in lib.filepath.lower()]
        _controllers = scipy_libs or libs  # a shared system BLAS serves both
    return _controllers


@contextmanager
def single_threaded_blas():
    """Context in which SciPy's BLAS runs on the calling thread only."""
    global _active
    with _lock:
        if _active == 0:
            _saved.clear()
            for lib in _scipy_blas_controllers():
                threads = lib.num_threads
                if threads != 1:
                    lib.set_num_threads(1)
                    _saved.append((lib, threads))
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                for lib, threads in _saved:
                    lib.set_num_threads(threads)
                _saved.clear()
