"""fused vs indexloop vs numpy, one benchmark group per shape and dtype."""

from __future__ import annotations

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax._bench import SHAPES, methods_for


@pytest.mark.parametrize("method", ["fused", "indexloop", "numpy"])
def test_loss_and_grad(benchmark, case, method):
    shape, dtype, (W, X, y, b) = case
    if method not in methods_for(*SHAPES[shape]):
        pytest.skip("index-loop kernel too slow on this shape")
    benchmark.group = f"{shape}-{dtype}"
    ref = fs.loss_and_grad(W, X, y, b=b, method="numpy")
    got = fs.loss_and_grad(W, X, y, b=b, method=method)  # warm-up (JIT) and check
    rtol = 1e-8 if dtype == "float64" else 1e-3
    np.testing.assert_allclose(got[1], ref[1], rtol=rtol, atol=rtol * np.abs(ref[1]).max())
    benchmark(fs.loss_and_grad, W, X, y, b=b, method=method)
