"""`import fastsoftmax` (and calling its core functions) pulls in none of the optional libraries."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("rich", "matplotlib", "sklearn", "dask", "distributed", "torch", "jax")

CODE = """
import sys
import numpy as np
import fastsoftmax as fs
after_import = sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))
X = np.ones((5, 3)); W = np.ones((2, 3)); y = np.array([0, 1, 0, 1, 0])
fs.loss_and_grad(W, X, y); fs.loss_and_grad_logits(X, y % 3); fs.softmax(X)
after_calls = sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))
print(after_import, after_calls)
"""


def test_import_needs_no_optional_library():
    out = subprocess.run([sys.executable, "-c", CODE, *HEAVY], capture_output=True, text=True,
                         check=True, timeout=600)
    assert out.stdout.split() == ["[]", "[]"], out.stdout


def test_the_check_can_fail():
    """The same check sees a library that is imported (so an empty answer means something)."""
    out = subprocess.run([sys.executable, "-c", "import json\n" + CODE, "json"],
                         capture_output=True, text=True, check=True, timeout=600)
    assert out.stdout.split() == ["['json']", "['json']"], out.stdout


BLAS_CODE = """
import sys
import numpy as np
import fastsoftmax as fs
X = np.ones((50, 3)); W = np.ones((2, 3)); y = np.arange(50) % 2
loss64 = fs.loss_and_grad(W, X, y)[0]
print("scipy.linalg" in sys.modules, "scipy.linalg.cython_blas" in sys.modules)
import importlib.util
importlib.util.find_spec("scipy.linalg")  # a look-up (no import) changes nothing
import scipy.linalg
print(scipy.linalg.cython_blas is sys.modules["scipy.linalg.cython_blas"],
      float(scipy.linalg.blas.dgemm(2.0, np.eye(2), np.eye(2))[0, 0]))
loss32 = fs.loss_and_grad(W.astype(np.float32), X.astype(np.float32), y)[0]  # sgemm after
print(round(loss64, 12) == round(float(np.log(2)), 12), abs(loss32 - np.log(2)) < 1e-6)
"""


def test_first_call_loads_scipy_blas_alone_and_scipy_linalg_still_imports_whole():
    """The first kernel call loads SciPy's cython_blas without the rest of
    scipy.linalg (a third of a warm start-up); a later ``import scipy.linalg``
    works as usual, with ``cython_blas`` an attribute, and BLAS keeps working."""
    out = subprocess.run([sys.executable, "-c", BLAS_CODE], capture_output=True, text=True,
                         check=True, timeout=600)
    assert out.stdout.split() == ["False", "True", "True", "2.0", "True", "True"], out.stdout
