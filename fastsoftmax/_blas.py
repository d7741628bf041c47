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
threadpoolctl.  The libraries are located once, on first use.
``single_threaded_all_blas`` does the same for every loaded BLAS (NumPy's
too), for a whole solver run.
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
_active: dict = {}  # library -> how many contexts hold it single-threaded
_saved: dict = {}  # library -> its thread count before the first of them
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


def _blas_libraries() -> list:
    """Every loaded BLAS, located once: ``(library, is SciPy's)`` pairs."""
    global _libraries
    if _libraries is None:
        load_cython_blas()  # loads SciPy's BLAS
        from threadpoolctl import ThreadpoolController

        found = ThreadpoolController().select(user_api="blas").lib_controllers
        libs = []
        for controller in found:
            try:
                lib = _OpenBLAS(controller.dynlib)
            except (LookupError, AttributeError):
                lib = _Other(controller)
            libs.append((lib, _belongs_to_scipy(controller.filepath)))
        if not any(scipy for _, scipy in libs):  # SciPy's not told apart: limit them all
            libs = [(lib, True) for lib, _ in libs]
        _libraries = libs
    return _libraries


class _SingleThreadedBLAS:
    """Context manager: the chosen BLAS libraries run on one thread inside it.

    Reference counted per library (shared by every instance), so nested and
    concurrent uses from several Python threads restore a library's thread
    count only when the last of them leaves.
    """

    def __init__(self, scipy_only: bool):
        self._scipy_only = scipy_only

    def _chosen(self):
        return [lib for lib, scipy in _blas_libraries() if scipy or not self._scipy_only]

    def __enter__(self):
        with _lock:
            for lib in self._chosen():
                if _active.get(lib, 0) == 0:
                    threads = lib.get()
                    if threads != 1:
                        lib.set(1)
                        _saved[lib] = threads
                _active[lib] = _active.get(lib, 0) + 1

    def __exit__(self, *exc):
        with _lock:
            for lib in self._chosen():
                _active[lib] -= 1
                if _active[lib] == 0 and lib in _saved:
                    lib.set(_saved.pop(lib))
        return False


#: Context manager: SciPy's BLAS (the one numba's ``np.dot`` calls) runs on
#: the calling thread only inside it.  Used around every kernel call.
single_threaded_blas = _SingleThreadedBLAS(scipy_only=True)

#: Context manager: every loaded BLAS, NumPy's included, runs on one thread
#: inside it.  Used around a whole solver run: between the kernels' parallel
#: regions the solver's own NumPy and SciPy vector and matrix operations
#: would otherwise wake the libraries' thread pools, whose threads then spin
#: on the cores the kernels' workers need (measured on 2 cores: an L-BFGS fit
#: of (60000, 784, 10) took 1.83 s instead of 1.19 s, a Newton-CG fit of
#: standardised digits x10 0.52 s instead of 0.38 s).
single_threaded_all_blas = _SingleThreadedBLAS(scipy_only=False)
