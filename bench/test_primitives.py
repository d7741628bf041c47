"""softmax, log_softmax and logsumexp against scipy.special on (10**6, 10) float64.

One benchmark group per primitive, with fastsoftmax's function and SciPy's
equivalent along the last axis.  Every answer is checked against SciPy before
it is timed; the check is also the warm-up, so compilation is never timed.
Both sides allocate their result on every call (no ``out=``), as a caller
who just wants the answer would.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.special as sp

import fastsoftmax as fs
from conftest import sized

SHAPE = sized((10**6, 10), (1000, 10))

#: primitive -> (fastsoftmax function, SciPy equivalent, absolute tolerance of the check)
PRIMITIVES = {
    "softmax": (fs.softmax, lambda Z: sp.softmax(Z, axis=-1), 1e-300),
    "log_softmax": (fs.log_softmax, lambda Z: sp.log_softmax(Z, axis=-1), 1e-12),
    "logsumexp": (fs.logsumexp, lambda Z: sp.logsumexp(Z, axis=-1), 1e-12),
}
IMPLS = ["fastsoftmax", "scipy"]


@functools.lru_cache(maxsize=1)
def logits() -> np.ndarray:
    """Standard normal logits scaled by 3, C-contiguous float64 (kept across groups)."""
    return 3.0 * np.random.default_rng(0).standard_normal(SHAPE)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("primitive", list(PRIMITIVES))
def test_primitive(benchmark, primitive, impl):
    ours, scipys, atol = PRIMITIVES[primitive]
    run = ours if impl == "fastsoftmax" else scipys
    Z = logits()
    m, K = SHAPE
    benchmark.group = f"{primitive} {m}x{K} float64"
    benchmark.extra_info.update(m=m, K=K, dtype="float64", impl=impl, primitive=primitive)
    got = run(Z)  # warm-up (JIT compilation or cache load) and check
    np.testing.assert_allclose(got, scipys(Z), rtol=1e-12, atol=atol)
    benchmark(run, Z)
