"""Shared data for the pytest-benchmark suite (``pytest bench/ --benchmark-only``).

Run benchmarks with OpenBLAS's environment overrides unset, e.g.
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/ --benchmark-only``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fastsoftmax._bench import SHAPES, make_problem


@functools.lru_cache(maxsize=2)
def problem(shape: str, dtype: str):
    m, n, K = SHAPES[shape]
    return make_problem(m, n, K, np.dtype(dtype))


@pytest.fixture(params=[(s, d) for s in SHAPES for d in ("float64", "float32")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def case(request):
    shape, dtype = request.param
    return shape, dtype, problem(shape, dtype)
