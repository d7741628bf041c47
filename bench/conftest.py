"""Shared data for the pytest-benchmark suite.

Run it with OpenBLAS's environment overrides unset (they slow NumPy's BLAS on
some machines and are meant for tests only)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/ --benchmark-only

``--benchmark-json out.json`` keeps the numbers; ``python bench/table.py
out.json`` turns them into the README's table.
"""

from __future__ import annotations

import functools

import numpy as np

from fastsoftmax.tools.bench import SHAPES
from fastsoftmax.tools.problems import make_problem


@functools.lru_cache(maxsize=1)
def problem(shape: str, dtype: str):
    """The benchmark data of one shape and dtype (kept while its group runs)."""
    m, n, K = SHAPES[shape]
    return make_problem(m, n, K, np.dtype(dtype))
