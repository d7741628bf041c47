"""Peak extra memory and compile time, each measured in a fresh subprocess.

Not timing benchmarks: the numbers are recorded in ``extra_info`` (and so in
``--benchmark-json``) and printed; the memory bound of the fused kernel is
asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

MEMORY_CHILD = r"""
import json, resource, sys
import numpy as np
import fastsoftmax as fs
m, n, K, method = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
fs.loss_and_grad(np.zeros((3, 4)), np.ones((5000, 4)), np.arange(5000) % 3, method=method)  # compile
X = rng.standard_normal((m, n))
W = rng.standard_normal((K, n)) / np.sqrt(n)
y = rng.integers(0, K, m)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss, dW = fs.loss_and_grad(W, X, y, method=method)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_MB": (after - before) / 1024, "X_MB": X.nbytes / 2**20}))
"""


def peak_extra_memory(m, n, K, method):
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(m), str(n), str(K), method],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("method, bound_MB", [("fused", 64), ("numpy", None)])
def test_peak_memory(benchmark, method, bound_MB):
    """(m, n, K) = (200000, 256, 1000) float64: the fused call stays under 64 MB
    beyond its inputs and outputs; the NumPy method needs several GB."""
    result = benchmark.pedantic(peak_extra_memory, args=(200_000, 256, 1_000, method),
                                rounds=1, iterations=1)
    benchmark.group = "peak extra memory (MB) at 200000x256x1000 float64"
    benchmark.extra_info.update(result)
    print(f"\n{method}: peak extra memory {result['extra_MB']:.1f} MB (X is {result['X_MB']:.0f} MB)")
    if bound_MB is not None:
        assert result["extra_MB"] < bound_MB


COMPILE_CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np
import fastsoftmax as fs
X = np.ones((5000, 20)); W = np.zeros((3, 20)); y = np.arange(5000) % 3
fs.loss_and_grad(W, X, y)                 # the default path, float64
fs.loss_and_grad(W, X[:10], y[:10])       # the small-problem path
print(time.perf_counter() - t0)
"""


def first_call_seconds(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", COMPILE_CHILD], env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def test_compile_time(benchmark):
    """Import plus first call in a new process: cold (empty cache), then warm."""
    with tempfile.TemporaryDirectory() as cache:
        def both():
            return first_call_seconds(cache), first_call_seconds(cache)
        cold, warm = benchmark.pedantic(both, rounds=1, iterations=1)
    benchmark.group = "first call in a new process (s)"
    benchmark.extra_info.update(cold_s=cold, warm_s=warm)
    print(f"\nimport + first call: cold cache {cold:.2f} s, warm cache {warm:.2f} s")
