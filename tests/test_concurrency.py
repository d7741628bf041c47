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


@pytest.mark.parametrize("layer", ["workqueue", "omp", "tbb"])
def test_threads_on_every_layer(layer):
    """Whichever layer numba runs on, eight threads at once neither abort nor differ."""
    import subprocess
    import sys

    code = (
        "import numpy as np, numba, fastsoftmax as fs\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "rng = np.random.default_rng(0)\n"
        "X = rng.standard_normal((20000, 30)); W = rng.standard_normal((5, 30))\n"
        "y = rng.integers(0, 5, 20000)\n"
        "ref = fs.loss_and_grad(W, X, y)\n"
        "def job(_):\n"
        "    return all(fs.loss_and_grad(W, X, y)[0] == ref[0] and\n"
        "               np.array_equal(fs.softmax(X), fs.softmax(X)) for _ in range(5))\n"
        "with ThreadPoolExecutor(8) as pool:\n"
        "    ok = all(pool.map(job, range(8)))\n"
        "print(numba.threading_layer(), ok)\n"
    )
    import os

    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0 and "No threading layer could be loaded" in out.stderr:
        pytest.skip(f"numba's {layer} layer is not available here")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [layer, "True"], out.stdout + out.stderr[-2000:]
