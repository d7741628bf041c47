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
