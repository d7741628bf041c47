"""Several Python threads calling the kernels at once get the serial results, bit for bit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.special

import fastsoftmax as fs
from helpers import assert_results_close
from naive import naive_loss_and_grad


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
def test_threads_on_every_layer(layer, tmp_path):
    """Whichever layer numba runs on, eight threads at once neither abort nor differ.

    The references are computed on the main thread before the pool starts
    (same thread count, so the loss and gradient must match bit for bit;
    softmax is row-wise, so it matches whatever the chunking), and checked
    against SciPy and the oracle so that a wrong reference fails too.
    """
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, numba, fastsoftmax as fs\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "rng = np.random.default_rng(0)\n"
        "X = rng.standard_normal((20000, 30)); W = rng.standard_normal((5, 30))\n"
        "y = rng.integers(0, 5, 20000)\n"
        "ref_loss, ref_dW = fs.loss_and_grad(W, X, y)  # serial references, before any thread\n"
        "ref_softmax = fs.softmax(X)\n"
        "def job(_):\n"
        "    for _ in range(5):\n"
        "        loss, dW = fs.loss_and_grad(W, X, y)\n"
        "        if not (loss == ref_loss and np.array_equal(dW, ref_dW)\n"
        "                and np.array_equal(fs.softmax(X), ref_softmax)):\n"
        "            return False\n"
        "    return True\n"
        "with ThreadPoolExecutor(8) as pool:\n"
        "    ok = all(pool.map(job, range(8)))\n"
        "print(numba.threading_layer(), ok)\n"
        "np.save(sys.argv[1], np.concatenate([[ref_loss], ref_dW.ravel(), ref_softmax.ravel()]))\n"
    )
    import os

    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    refs = tmp_path / "refs.npy"
    out = subprocess.run([sys.executable, "-c", code, str(refs)], env=env, capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0 and "No threading layer could be loaded" in out.stderr:
        pytest.skip(f"numba's {layer} layer is not available here")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [layer, "True"], out.stdout + out.stderr[-2000:]
    # the references themselves are right (the same data, regenerated here)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 30))
    W = rng.standard_normal((5, 30))
    y = rng.integers(0, 5, 20000)
    saved = np.load(refs)
    ref_loss, ref_dW, ref_softmax = saved[0], saved[1:151].reshape(5, 30), saved[151:]
    want, scales = naive_loss_and_grad(W, X, y, return_scales=True)
    assert_results_close((float(ref_loss), ref_dW), want, np.float64, scales)
    np.testing.assert_allclose(ref_softmax.reshape(X.shape), scipy.special.softmax(X, axis=1),
                               rtol=1e-12, atol=0)


def test_bfloat16_head_threads_on_workqueue():
    """The bfloat16 head on PyTorch's products (fastsoftmax._torch_head) calls
    its compiled kernels (page touching, transposes, the numerics) only inside
    the package's parallel region: two Python threads at once on numba's
    workqueue layer, which aborts the process on concurrent use, neither
    abort nor differ from a call made before them, bit for bit."""
    import os
    import subprocess
    import sys

    pytest.importorskip("torch")
    code = (
        "import numpy as np, numba, torch\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from fastsoftmax._torch_head import head_sums\n"
        "from fastsoftmax._validation import check_targets\n"
        "m, n, K = 8, 1280, 100  # n: the dX product from row-major copies\n"
        "g = torch.Generator().manual_seed(0)\n"
        "X = torch.randn(m, n, generator=g).bfloat16()\n"
        "W = torch.randn(K, n, generator=g).bfloat16()\n"
        "y = torch.randint(0, K, (m,), generator=g).numpy()\n"
        "t = check_targets(y, m, K, np.dtype(np.float32), sample_weight=None, eps=0.1,\n"
        "                  ignore_index=-100, reduction='mean', samples='X')\n"
        "b = np.zeros(K)\n"
        "call = lambda: head_sums(X, W, b, t, want_dx=True, want_dw=True, want_db=True)\n"
        "ref = call()\n"
        "def job(_):\n"
        "    for _ in range(10):\n"
        "        r = call()\n"
        "        if not (r[0] == ref[0] and torch.equal(r[1], ref[1])\n"
        "                and torch.equal(r[2], ref[2]) and np.array_equal(r[3], ref[3])):\n"
        "            return False\n"
        "    return True\n"
        "with ThreadPoolExecutor(2) as pool:\n"
        "    ok = all(pool.map(job, range(2)))\n"
        "print(numba.threading_layer(), ok)\n"
    )
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["workqueue", "True"], out.stdout + out.stderr[-2000:]
