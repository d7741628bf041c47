"""Several Python threads calling the kernels at once get the serial results, bit for bit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastsoftmax as fs


@pytest.mark.parametrize("method", ["fused", "indexloop", "numpy"])
def test_eight_threads_bitwise_identical(method):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((20_000, 30))
    W = rng.standard_normal((5, 30))
    y = rng.integers(0, 5, 20_000)
    b = rng.standard_normal(5)
    ref = fs.loss_and_grad(W, X, y, b=b, method=method)

    def job(_):
        for _ in range(10):
            r = fs.loss_and_grad(W, X, y, b=b, method=method)
            if not (r[0] == ref[0] and np.array_equal(r[1], ref[1]) and np.array_equal(r[2], ref[2])):
                return False
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(job, range(8)))
