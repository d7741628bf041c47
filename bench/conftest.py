"""Shared data for the pytest-benchmark suite.

Run it with OpenBLAS's environment overrides unset (they slow NumPy's BLAS on
some machines and are meant for tests only)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/ --benchmark-only

``--benchmark-json out.json`` keeps the numbers; ``python bench/table.py
out.json`` turns them into the table of docs/performance.md.

``FASTSOFTMAX_BENCH_TINY=1`` switches every file to tiny shapes (seconds in
all): with ``--benchmark-disable`` each benchmark then runs once, checked,
untimed, which is how the test suite keeps this directory from rotting
(tests/test_bench_smoke.py).  The numbers of a tiny run mean nothing.

``FASTSOFTMAX_BENCH_HEAD_SHAPES=lm`` (or ``=lm-32k``, ``=lm-128k``, ``=all``)
runs bench/test_head.py at language-model head shapes instead of its
moderate default (calls of seconds to a minute, GBs for PyTorch's logits);
see that file's docstring.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from fastsoftmax.tools.bench import SHAPES as FULL_SHAPES
from fastsoftmax.tools.problems import make_problem

#: set by FASTSOFTMAX_BENCH_TINY=1: every benchmark on a tiny shape
TINY = os.environ.get("FASTSOFTMAX_BENCH_TINY", "") not in ("", "0")

#: name -> (m, n, K) of the loss-and-gradient groups
SHAPES: dict[str, tuple[int, int, int]] = (
    {"tiny": (300, 7, 3), "tiny-many-classes": (200, 16, 40)} if TINY else FULL_SHAPES)


def sized(full, tiny):
    """``full``, or ``tiny`` under FASTSOFTMAX_BENCH_TINY=1."""
    return tiny if TINY else full


@functools.lru_cache(maxsize=1)
def problem(shape: str, dtype: str):
    """The benchmark data of one shape and dtype (kept while its group runs)."""
    m, n, K = SHAPES[shape]
    return make_problem(m, n, K, np.dtype(dtype))
