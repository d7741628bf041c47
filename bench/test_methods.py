"""Every implementation on the project's shapes: one benchmark group per shape and dtype.

fastsoftmax's three methods and, where installed, scikit-learn, PyTorch and
JAX.  Every answer is checked against the NumPy method before it is timed; the
check is also the warm-up, so compilation and tracing are never timed.  A peer
that is not installed is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastsoftmax as fs
from conftest import SHAPES, problem
from fastsoftmax.tools.bench import implementations
from fastsoftmax.tools.peers import PEERS

IMPLS = ["fused", "indexloop", "numpy", *PEERS]
CASES = [(s, d) for s in SHAPES for d in ("float64", "float32")]


@pytest.mark.parametrize("shape, dtype", CASES, ids=[f"{s}-{d}" for s, d in CASES])
@pytest.mark.parametrize("impl", IMPLS)
def test_loss_and_grad(benchmark, shape, dtype, impl):
    m, n, K = SHAPES[shape]
    available = implementations(m, n, K)
    if impl not in available:
        pytest.skip("the index-loop kernel is too slow on this shape")
    W, X, y, b = problem(shape, dtype)
    try:
        run = available[impl](W, X, y, b)
    except ImportError as exc:
        pytest.skip(f"{impl} not installed: {exc}")
    benchmark.group = f"{shape}-{dtype}"
    benchmark.extra_info.update(shape=shape, m=m, n=n, K=K, dtype=dtype, impl=impl)
    ref = fs.loss_and_grad(W, X, y, b=b, method="numpy")
    got = run()  # warm-up (JIT, tracing) and check
    rtol = 1e-8 if dtype == "float64" else 2e-3
    assert got[0] == pytest.approx(ref[0], rel=rtol)
    np.testing.assert_allclose(got[1], ref[1], rtol=rtol, atol=rtol * np.abs(ref[1]).max())
    benchmark(run)
