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

import copy
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import os
import sys
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
    import scipy

    parts = os.path.normpath(path).split(os.sep)
    scipy_dir = os.path.dirname(scipy.__file__)
    return ("scipy.libs" in parts or "scipy_openblas32" in parts
            or os.path.normpath(path).startswith(scipy_dir + os.sep))


#: The module through which numba's np.dot reaches SciPy's BLAS (by this name).
CYTHON_BLAS = "scipy.linalg.cython_blas"


class _SetParentAttribute(importlib.abc.MetaPathFinder):
    """When ``scipy.linalg`` is imported after :func:`load_cython_blas`, make
    ``scipy.linalg.cython_blas`` an attribute of it, as a normal import of the
    submodule would have.  It stays in ``sys.meta_path`` (removing an entry
    would race with imports in other threads) and does nothing once the
    attribute is set, or for any other module."""

    done = False

    def find_spec(self, name, path=None, target=None):
        if self.done or name != "scipy.linalg":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        exec_module = getattr(getattr(spec, "loader", None), "exec_module", None)
        if exec_module is None:
            return None  # the ordinary import, which then sets no attribute

        def exec_then_link(module):
            exec_module(module)
            if CYTHON_BLAS in sys.modules and not hasattr(module, "cython_blas"):
                module.cython_blas = sys.modules[CYTHON_BLAS]
            self.done = True

        spec.loader = copy.copy(spec.loader)
        spec.loader.exec_module = exec_then_link
        return spec


def load_cython_blas() -> None:
    """Load SciPy's ``cython_blas`` extension, which numba's ``np.dot`` looks up
    by name, without importing the rest of ``scipy.linalg``.

    ``import scipy.linalg`` takes about 0.15 s (most of it SciPy's array-API
    set-up), a third of a warm process's start-up; the extension alone loads
    in milliseconds.  It is loaded from its file under its own name, and a
    later ``import scipy.linalg`` gets it as an attribute as usual.  Falls
    back to the plain import if anything about SciPy's layout differs.
    """
    if CYTHON_BLAS in sys.modules:
        return
    try:
        if "scipy.linalg" in sys.modules:
            raise LookupError("scipy.linalg is imported: nothing to save")
        package = importlib.util.find_spec("scipy.linalg")  # imports scipy, not scipy.linalg
        folder = package.submodule_search_locations[0]
        path = next(os.path.join(folder, "cython_blas" + suffix)
                    for suffix in importlib.machinery.EXTENSION_SUFFIXES
                    if os.path.exists(os.path.join(folder, "cython_blas" + suffix)))
        loader = importlib.machinery.ExtensionFileLoader(CYTHON_BLAS, path)
        spec = importlib.util.spec_from_file_location(CYTHON_BLAS, path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        if not hasattr(module, "__pyx_capi__"):
            raise LookupError("not SciPy's Cython BLAS")
    except Exception:  # any surprise: the ordinary import
        importlib.import_module(CYTHON_BLAS)
        return
    sys.modules[CYTHON_BLAS] = module
    sys.meta_path.insert(0, _SetParentAttribute())


def _scipy_blas() -> list:
    global _libraries
    if _libraries is None:
        load_cython_blas()  # loads SciPy's BLAS
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
