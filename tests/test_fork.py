"""Fork safety: with the TBB layer (the default when tbb is installed), forked children work.

Each scenario runs in its own subprocess with a timeout, so a hang fails the
test instead of blocking the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fastsoftmax._threading import tbb_loadable

CHILD = r"""
import multiprocessing as mp
import numpy as np
import numba
import fastsoftmax as fs
rng = np.random.default_rng(0)
X = rng.standard_normal((20000, 30)); W = rng.standard_normal((5, 30)); y = rng.integers(0, 5, 20000)
ref = fs.loss_and_grad(W, X, y)          # a parallel kernel has run in the parent
def work(_):
    loss, dW = fs.loss_and_grad(W, X, y)
    return loss == ref[0] and np.array_equal(dW, ref[1])
with mp.get_context("fork").Pool(2) as pool:
    results = pool.map(work, range(4))
print(numba.threading_layer(), all(results))
"""


def run(env_extra, timeout=120):
    env = dict(os.environ, **env_extra)
    env.pop("NUMBA_THREADING_LAYER", None)
    return subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork start method")
def test_fork_after_parallel_call_with_tbb():
    if not tbb_loadable():
        pytest.skip("numba's TBB layer is not available (pip install tbb)")
    out = run({})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tbb", "True"], out.stdout + out.stderr


def test_unknown_layer_request_warns():
    code = ("import warnings; warnings.simplefilter('error')\n"
            "try:\n    import fastsoftmax\nexcept RuntimeWarning as w:\n    print(w)\n")
    env = dict(os.environ, FASTSOFTMAX_THREADING_LAYER="fast")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert "not understood" in out.stdout


def test_numba_choice_can_be_kept():
    code = ("import numpy as np, numba, fastsoftmax as fs\n"
            "fs.loss_and_grad(np.ones((3, 40)), np.ones((5000, 40)), np.arange(5000) % 3)\n"
            "print(numba.threading_layer())\n")
    env = dict(os.environ, FASTSOFTMAX_THREADING_LAYER="numba", NUMBA_THREADING_LAYER="workqueue")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "workqueue", out.stderr


def test_explicit_numba_tbb_choice_works():
    """NUMBA_THREADING_LAYER=tbb needs the library fastsoftmax makes loadable."""
    if not tbb_loadable():
        pytest.skip("numba's TBB layer is not available (pip install tbb)")
    code = ("import numpy as np, numba, fastsoftmax as fs\n"
            "fs.loss_and_grad(np.ones((3, 40)), np.ones((5000, 40)), np.arange(5000) % 3)\n"
            "print(numba.threading_layer())\n")
    env = dict(os.environ, NUMBA_THREADING_LAYER="tbb")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "tbb", out.stderr
