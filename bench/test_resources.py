"""Peak extra memory and compile time, each measured in a fresh subprocess.

Not timing benchmarks: the numbers are recorded in ``extra_info`` (and so in
``--benchmark-json``) and printed; the memory bound of the fused kernel is
asserted.

Peak memory is measured by ``fastsoftmax.tools.memory.peak_extra`` (the
benchmarks' one helper): ``ru_maxrss`` is the high-water mark of the whole
process, so its growth during a call hides the call's peak whenever an earlier
moment of the process was higher; on Linux the child resets the mark just
before the call (``/proc/self/clear_refs``) and reports ``VmHWM`` after the
call minus ``VmRSS`` before it, elsewhere the growth of ``ru_maxrss``, a lower
bound, and says so (``"method"`` in the result);
``test_peak_measurement_sees_a_known_allocation`` shows the difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from conftest import TINY, sized

#: the children's imports: peak_extra(fn) -> (extra bytes, how it was measured)
PEAK_EXTRA = r"""
import sys
from fastsoftmax.tools.memory import maxrss_bytes, peak_extra
"""

MEMORY_CHILD = PEAK_EXTRA + r"""
import json, sys
import numpy as np
import fastsoftmax as fs
from fastsoftmax.tools.problems import problem
m, n, K, method = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fs.loss_and_grad(np.zeros((3, 4)), np.ones((5000, 4)), np.arange(5000) % 3, method=method)  # compile
W, X, y = problem(np.random.default_rng(0), m, n, K)
out = []
extra, how = peak_extra(lambda: out.append(fs.loss_and_grad(W, X, y, method=method)))
print(json.dumps({"extra_MB": extra / 2**20, "X_MB": X.nbytes / 2**20, "method": how}))
"""


def peak_extra_memory(m, n, K, method):
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(m), str(n), str(K), method],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


MEMORY_SHAPE = sized((200_000, 256, 1_000), (20_000, 64, 100))


@pytest.mark.parametrize("method, bound_MB", [("fused", 64), ("numpy", None)])
def test_peak_memory(benchmark, method, bound_MB):
    """(m, n, K) = (200000, 256, 1000) float64: the fused call stays under 64 MB
    beyond its inputs and outputs; the NumPy method needs several GB."""
    m, n, K = MEMORY_SHAPE
    result = benchmark.pedantic(peak_extra_memory, args=(m, n, K, method),
                                rounds=1, iterations=1)
    benchmark.group = f"peak extra memory (MB) at {m}x{n}x{K} float64"
    benchmark.extra_info.update(result)
    print(f"\n{method}: peak extra memory {result['extra_MB']:.1f} MB (X is {result['X_MB']:.0f} MB; "
          f"{result['method']})")
    if bound_MB is not None:
        assert result["extra_MB"] < bound_MB


KNOWN_CHILD = PEAK_EXTRA + r"""
import json
import numpy as np
MB = 2**20
big = np.ones(1000 * MB // 8)       # an earlier, larger peak: 1000 MB, then freed
del big

def temporary():
    t = np.ones(500 * MB // 8)      # 500 MB, touched, freed on return
    return float(t[::4096].sum())

maxrss_before = maxrss_bytes()     # the old measurement, first (the reset below changes ru_maxrss)
temporary()
maxrss_growth = maxrss_bytes() - maxrss_before
extra, how = peak_extra(temporary)
print(json.dumps({"extra_MB": extra / MB, "method": how, "maxrss_growth_MB": maxrss_growth / MB}))
"""


def test_peak_measurement_sees_a_known_allocation():
    """A 500 MB temporary inside a function is seen after a larger earlier peak
    (where plain ru_maxrss differences see nothing)."""
    out = subprocess.run([sys.executable, "-c", KNOWN_CHILD], check=True,
                         capture_output=True, text=True)
    result = json.loads(out.stdout)
    print(f"\nknown 500 MB temporary: measured {result['extra_MB']:.1f} MB ({result['method']}); "
          f"ru_maxrss growth {result['maxrss_growth_MB']:.1f} MB")
    if result["method"].startswith("ru_maxrss"):
        pytest.skip("no resettable high-water mark here: the measurement is a lower bound")
    assert 490 <= result["extra_MB"] <= 540
    assert result["maxrss_growth_MB"] < 100  # the old measurement: the temporary hidden


COMPILE_CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np
import fastsoftmax as fs
X = np.ones((60000, 20)); W = np.zeros((3, 20)); y = np.arange(60000) % 3
fs.loss_and_grad(W, X, y)                 # the default path, float64, parallel
fs.loss_and_grad(W, X[:10], y[:10])       # the small-problem path (serial)
print(time.perf_counter() - t0)
"""


def first_call_seconds(cache_dir):
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", COMPILE_CHILD], env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def test_compile_time(benchmark):
    """Import plus first call in a new process: cold (empty cache), then warm.

    Under FASTSOFTMAX_BENCH_TINY=1 both processes use the package's own cache
    (a cold compile takes longer than the whole tiny run may)."""
    with tempfile.TemporaryDirectory() as cache:
        def both():
            where = None if TINY else cache
            return first_call_seconds(where), first_call_seconds(where)
        cold, warm = benchmark.pedantic(both, rounds=1, iterations=1)
    benchmark.group = "first call in a new process (s)"
    benchmark.extra_info.update(cold_s=cold, warm_s=warm, cold_cache=not TINY)
    print(f"\nimport + first call: {'cold' if not TINY else 'first'} cache {cold:.2f} s, "
          f"warm cache {warm:.2f} s")


#: Other compiled paths' first calls: (setup, {step: code}) run in order in
#: one new process; each step is timed.  Shapes: (full, tiny).
FIRST_CALLS = {
    "wide rows (micro-kernels) and a Hessian product": (
        "m, n, K = {shape}\n"
        "X = np.ones((m, n)); W = np.zeros((K, n)); y = np.arange(m) % K\n",
        {"loss_and_grad": "fs.loss_and_grad(W, X, y)",
         "hessian product": "fs.loss_grad_hessp(W, X, y, b=np.zeros(K))[-1](W, np.zeros(K))"},
        ((6000, 784, 10), (300, 40, 3))),
    "CSR X and a Hessian product": (
        "import scipy.sparse\nm, n, K = {shape}\n"
        "X = scipy.sparse.random(m, n, density=0.01, format='csr', random_state=0)\n"
        "W = np.zeros((K, n)); y = np.arange(m) % K\n",
        {"loss_and_grad": "fs.loss_and_grad(W, X, y)",
         "hessian product": "fs.loss_grad_hessp(W, X, y)[-1](W)"},
        ((20000, 5000, 10), (300, 200, 3))),
    "full Hessian and its diagonal": (
        "m, n, K = {shape}\n"
        "X = np.random.default_rng(0).standard_normal((m, n)); W = np.zeros((K, n))\n"
        "y = np.arange(m) % K\n",
        {"hessian": "fs.hessian(W, X, y)",
         "diagonal": "fs.loss_grad_hessp(W, X, y)[-1].diagonal()"},
        ((20000, 10, 4), (300, 5, 3))),
    "SoftmaxRegression fits": (
        "rng = np.random.default_rng(0)\n"
        "def data(m, n, K):\n"
        "    return rng.standard_normal((m, n)) * np.logspace(-1, 1, n), np.arange(m) % K\n"
        "small, medium = {shape}\n",
        {"fit, newton-cholesky": "fs.SoftmaxRegression().fit(*data(*small))",
         "fit, newton-cg": "fs.SoftmaxRegression(solver='newton-cg').fit(*data(*medium))"},
        (((1500, 4, 3), (5000, 64, 10)), ((300, 4, 3), (300, 20, 3)))),
}

FIRST_CALL_CHILD = r"""
import json, time
import numpy as np
import fastsoftmax as fs
{setup}
times = {{}}
for step, code in {steps!r}.items():
    t = time.perf_counter()
    exec(code)
    times[step] = time.perf_counter() - t
print(json.dumps(times))
"""


@pytest.mark.parametrize("name", list(FIRST_CALLS))
def test_first_calls_of_other_paths(benchmark, name):
    """First calls of the paths besides the default one, in a new process on
    an empty cache (under FASTSOFTMAX_BENCH_TINY=1, tiny shapes and the
    package's own cache): what a user waits for once after installing."""
    setup, steps, (full, tiny) = FIRST_CALLS[name]
    code = FIRST_CALL_CHILD.format(setup=setup.format(shape=tiny if TINY else full),
                                   steps=steps)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ)
        if not TINY:
            env["NUMBA_CACHE_DIR"] = cache

        def run():
            out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                 capture_output=True, text=True)
            return json.loads(out.stdout.splitlines()[-1])
        times = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.group = "first calls in a new process (s)"
    benchmark.extra_info.update(times, cold_cache=not TINY)
    print(f"\n{name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
