"""Short calls between other work: (1000, 50, 5) float64, fused and NumPy methods.

A caller's loop around a small model does other Python work between calls;
numba's worker threads may have gone to sleep by the next call and have to be
woken.  Three patterns per method: calls back to back, and calls with 2 ms
and 10 ms of pure-Python work in between.  Only the calls are timed (the
work in between is not); the median per call goes to ``extra_info`` and is
printed.  Compare the fused and the NumPy medians of one pattern: the
question is whether the fused call keeps its lead when it is not called back
to back.  Numbers from a shared or loaded machine mean little.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import fastsoftmax as fs
from conftest import sized
from fastsoftmax.tools.problems import make_problem

SHAPE = (1000, 50, 5)
#: pattern name -> seconds of other work between two calls
PATTERNS = {"back-to-back": 0.0, "0.5ms-between": 0.0005, "2ms-between": 0.002,
            "10ms-between": 0.010}
CALLS = sized(300, 5)


def other_work(seconds: float) -> int:
    """Pure-Python busy work for ``seconds`` (holds the GIL, touches no array)."""
    end = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < end:
        count += 1
    return count


def call_times(run, gap_s: float, calls: int) -> list[float]:
    """Per-call seconds of ``calls`` calls of ``run`` with ``gap_s`` of other work before each."""
    times = []
    for _ in range(calls):
        if gap_s:
            other_work(gap_s)
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("method", ["fused", "numpy"])
def test_short_calls(benchmark, method, pattern):
    m, n, K = SHAPE
    W, X, y, b = make_problem(m, n, K, np.float64)
    ref = fs.loss_and_grad(W, X, y, b=b, method="numpy")

    def run():
        return fs.loss_and_grad(W, X, y, b=b, method=method)

    got = run()  # warm-up (compilation or cache load) and check
    assert got[0] == pytest.approx(ref[0], rel=1e-10)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-10, atol=1e-10 * np.abs(ref[1]).max())
    times = benchmark.pedantic(call_times, args=(run, PATTERNS[pattern], CALLS),
                               rounds=1, iterations=1)
    median = float(np.median(times))
    benchmark.group = f"short calls {m}x{n}x{K} float64, {pattern}"
    benchmark.extra_info.update(method=method, pattern=pattern, gap_s=PATTERNS[pattern],
                                calls=CALLS, median_call_s=median,
                                p90_call_s=float(np.quantile(times, 0.9)))
    print(f"\n{method:6s} {pattern:13s}: median call {median * 1e6:.0f} µs over {CALLS} calls")


def test_one_thread_ceiling(benchmark, monkeypatch):
    """The most the fused call can gain on one thread: both methods with
    one thread (the fused call's chunks inline, BLAS limited to one thread),
    ``CALLS`` calls each in alternating blocks of 50 with a 10 ms pause
    between blocks; the median ratio NumPy / fused goes to ``extra_info``.
    After the workers have gone to sleep this is the speed-up the fused call
    has (see docs/performance.md, "Short calls between other work")."""
    from threadpoolctl import threadpool_limits

    import fastsoftmax._dispatch as policy

    m, n, K = SHAPE
    W, X, y, b = make_problem(m, n, K, np.float64)
    monkeypatch.setattr(policy, "WORKERS_ASLEEP_AFTER", -1.0)  # always inline
    runs = {method: (lambda meth: lambda: fs.loss_and_grad(W, X, y, b=b, method=meth))(method)
            for method in ("fused", "numpy")}

    def measure():
        times = {method: [] for method in runs}
        with threadpool_limits(1):
            for run in runs.values():
                run()
            for _ in range(max(1, CALLS // 50)):
                for method, run in runs.items():
                    times[method] += call_times(run, 0.0, 50)
                    time.sleep(0.01)
        return {method: float(np.median(t)) for method, t in times.items()}

    medians = benchmark.pedantic(measure, rounds=1, iterations=1)
    ratio = medians["numpy"] / medians["fused"]
    benchmark.group = f"short calls {m}x{n}x{K} float64, one thread"
    benchmark.extra_info.update(median_call_s=medians, numpy_over_fused=ratio)
    print(f"\none thread: fused {medians['fused'] * 1e6:.0f} µs, numpy "
          f"{medians['numpy'] * 1e6:.0f} µs, ratio {ratio:.2f}")
