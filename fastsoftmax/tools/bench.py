"""The benchmark behind ``fastsoftmax bench``: every implementation on the same data.

Each implementation is set up, run once (so JIT compilation and one-time
conversions are never timed), checked against the NumPy method, and then
timed in a block of consecutive calls of its own: implementations are never
interleaved call by call, because BLAS threads keep spinning for a while after
a NumPy call.  Medians are reported.

The machine's floor for a shape is ``max(bytes of X / read bandwidth,
4 m n K / GEMM rate)``: X must be read once, and the logits and the gradient
are two matrix products' worth of multiply-adds.  Both rates are measured
here by :func:`probe_floor`.
"""

from __future__ import annotations

import os
import platform
import time
import typing
from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np
from numba import prange

from fastsoftmax import loss_and_grad
from fastsoftmax._jit import parallel_kernel
from fastsoftmax._threading import active_layer

from .peers import PEERS
from .problems import make_problem

#: fastsoftmax's methods, read from the public signature of ``loss_and_grad``
METHODS: tuple[str, ...] = typing.get_args(typing.get_type_hints(loss_and_grad)["method"])

#: name -> (m, n, K); the shapes the project's speed targets are stated on.
SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (60_000, 784, 10),
    "many-classes": (20_000, 256, 1_000),
    "small": (1_000, 50, 5),
    "tall": (1_000_000, 32, 4),
}
QUICK_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist/10": (6_000, 784, 10),
    "many-classes/10": (2_000, 256, 1_000),
    "small": (1_000, 50, 5),
    "tall/10": (100_000, 32, 4),
}

#: the index-loop kernel's cost has an m K^2 term; above this many
#: multiply-adds it is left out of the comparison
INDEXLOOP_MAX_WORK = 2e9


@dataclass
class Timing:
    shape: str
    m: int
    n: int
    K: int
    dtype: str
    impl: str
    median_s: float
    times_s: list[float] = field(repr=False, default_factory=list)


@dataclass
class Floor:
    """The machine's rates: medians over ``probes`` short probes, with their ranges (min, max)."""

    read_gb_s: float
    gemm_gflop_s: dict[str, float]
    read_gb_s_range: tuple[float, float] = (0.0, 0.0)
    gemm_gflop_s_range: dict[str, tuple[float, float]] = field(default_factory=dict)
    probes: int = 1

    def seconds(self, m: int, n: int, K: int, dtype, read_gb_s: float | None = None,
                gemm_gflop_s: float | None = None, gemms: int = 2) -> float:
        """The shape's floor: one read of X, or ``gemms`` (m, n, K) matrix
        products, 2 m n K flops each, at the GEMM rate (the median rates
        unless others are given).  Two for the loss and dW (the logits and
        the gradient), three with dX too (a network's head)."""
        dtype = np.dtype(dtype)
        read = m * n * dtype.itemsize / ((read_gb_s or self.read_gb_s) * 1e9)
        flops = 2.0 * gemms * m * n * K / ((gemm_gflop_s or self.gemm_gflop_s[dtype.name]) * 1e9)
        return max(read, flops)

    def fraction(self, m: int, n: int, K: int, dtype, median_s: float,
                 gemms: int = 2) -> tuple[float, float, float]:
        """``(median, min, max)`` fraction of the floor reached by a call of
        ``median_s`` seconds: at the median rates, the fastest probe's rates
        (the smallest floor) and the slowest probe's (the largest floor)."""
        name = np.dtype(dtype).name
        read_lo, read_hi = self.read_gb_s_range
        gemm_lo, gemm_hi = self.gemm_gflop_s_range.get(name, (None, None))
        fast = self.seconds(m, n, K, dtype, read_hi or None, gemm_hi or None, gemms)
        slow = self.seconds(m, n, K, dtype, read_lo or None, gemm_lo or None, gemms)
        return (self.seconds(m, n, K, dtype, gemms=gemms) / median_s, fast / median_s,
                slow / median_s)


def time_block(fn: Callable[[], object], budget_s: float, min_reps: int = 3,
               max_reps: int = 500) -> list[float]:
    """Call ``fn`` back to back for about ``budget_s`` seconds; per-call times."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def method_factories(call: Callable, m: int, n: int, K: int,
                     numpy_max_logits: float = float("inf")) -> dict[str, Callable]:
    """method -> factory(W, X, y, b) -> runner ``lambda: call(W, X, y, b, method)``,
    for each of fastsoftmax's methods worth timing on this shape (the index
    loop up to ``INDEXLOOP_MAX_WORK``, NumPy up to ``numpy_max_logits`` m K)."""
    impls: dict[str, Callable] = {}
    for method in METHODS:
        if method == "indexloop" and m * K * (K + n) > INDEXLOOP_MAX_WORK:
            continue
        if method == "numpy" and m * K > numpy_max_logits:
            continue
        impls[method] = (lambda meth: lambda W, X, y, b: (
            lambda: call(W, X, y, b, meth)))(method)
    return impls


def implementations(m: int, n: int, K: int, peers: bool = True) -> dict[str, Callable]:
    """name -> factory(W, X, y, b) -> runner, for everything worth timing on this shape."""
    impls = method_factories(
        lambda W, X, y, b, meth: loss_and_grad(W, X, y, b=b, method=meth), m, n, K)
    if peers:
        impls.update(PEERS)
    return impls


def _agrees(got, ref, dtype) -> bool:
    rtol = 1e-8 if np.dtype(dtype) == np.float64 else 2e-3
    scale = float(np.abs(ref[1]).max())
    return (abs(got[0] - ref[0]) <= rtol * abs(ref[0])
            and np.allclose(got[1], ref[1], rtol=rtol, atol=rtol * scale)
            and np.allclose(got[2], ref[2], rtol=rtol, atol=rtol * scale))


def run_shape(name: str, m: int, n: int, K: int, dtype, budget_s: float, peers: bool = True,
              on_impl: Callable[[str], None] | None = None,
              rounds: int = 3) -> tuple[list[Timing], dict[str, str]]:
    """Check and time every implementation on one shape.

    Each implementation is timed in ``rounds`` blocks of consecutive calls,
    the implementations taking turns block by block, so that a slow spell of
    a shared machine falls on all of them alike; the median is over all calls.
    Returns the timings and, for implementations that could not run (peer not
    installed), the reason.
    """
    W, X, y, b = make_problem(m, n, K, dtype)
    ref = loss_and_grad(W, X, y, b=b, method="numpy")
    runners, skipped = {}, {}
    for impl, factory in implementations(m, n, K, peers).items():
        if on_impl is not None:
            on_impl(f"{impl} (set-up and check)")
        try:
            run = factory(W, X, y, b)
        except ImportError as exc:
            skipped[impl] = f"not installed ({exc})"
            continue
        got = run()  # warm-up: compilation, tracing, first-touch
        if not _agrees(got, ref, dtype):
            raise RuntimeError(f"{impl} disagrees with the NumPy reference on {name} {dtype}")
        runners[impl] = run
    times = time_interleaved(runners, budget_s, rounds, on_impl)
    timings = [Timing(name, m, n, K, np.dtype(dtype).name, impl, float(np.median(t)), t)
               for impl, t in times.items()]
    return timings, skipped


def time_interleaved(runners: dict[str, Callable[[], object]], budget_s: float, rounds: int = 3,
                     on_impl: Callable[[str], None] | None = None,
                     min_reps: int = 2) -> dict[str, list[float]]:
    """Per-call times of each runner: ``rounds`` blocks of consecutive calls
    each (``budget_s / rounds`` seconds, at least ``min_reps`` calls), the
    runners taking turns block by block."""
    times: dict[str, list[float]] = {impl: [] for impl in runners}
    for rnd in range(rounds):
        for impl, run in runners.items():
            if on_impl is not None:
                on_impl(f"{impl} (round {rnd + 1}/{rounds})")
            time.sleep(0.1)  # let BLAS threads of the previous block stop spinning
            times[impl] += time_block(run, budget_s / rounds, min_reps=min_reps)
    return times


@parallel_kernel
def parallel_sum(a, nchunks):
    """Sum of a 1-D float64 array in ``nchunks`` parallel pieces: a read-bandwidth probe."""
    partial = np.zeros(nchunks)
    m = a.shape[0]
    for c in prange(nchunks):
        piece = a[c * m // nchunks:(c + 1) * m // nchunks]
        s = 0.0
        for i in range(piece.shape[0]):  # from 0: no negative-index wraparound, so SIMD
            s += piece[i]
        partial[c] = s
    return partial.sum()


#: how many times each rate is probed; the median is reported with the range
PROBES = 5


def _median_and_range(rates: list[float]) -> tuple[float, tuple[float, float]]:
    return float(np.median(rates)), (float(min(rates)), float(max(rates)))


def probe_floor(quick: bool = False, probes: int = PROBES) -> Floor:
    """Measure the read bandwidth (numba threads) and NumPy's GEMM rates.

    Each rate is probed ``probes`` times in short blocks (the best call of each
    block), the probes of the different rates taking turns so that a slow spell
    of a shared machine does not fall on one rate only; the median and the
    range over the probes are returned.
    """
    a = np.ones((64 if quick else 256) * 2**20 // 8 * 4)  # 256 MiB, 1 GiB when not quick
    threads = numba.get_num_threads()
    size = 1024 if quick else 2048
    mats = {dtype: np.ones((size, size), dtype) for dtype in ("float64", "float32")}
    parallel_sum(a[:1024], threads)  # compile or load from the cache
    for A in mats.values():
        A @ A
    read_budget = (0.5 if quick else 2.0) / probes
    gemm_budget = (0.5 if quick else 1.5) / probes
    reads: list[float] = []
    gemms: dict[str, list[float]] = {dtype: [] for dtype in mats}
    for _ in range(probes):
        t = min(time_block(lambda: parallel_sum(a, threads), read_budget, min_reps=2))
        reads.append(a.nbytes / t / 1e9)
        for dtype, A in mats.items():
            tg = min(time_block(lambda A=A: A @ A, gemm_budget, min_reps=2))
            gemms[dtype].append(2.0 * size**3 / tg / 1e9)
    del mats  # (a goes with the frame)
    read, read_range = _median_and_range(reads)
    gemm = {d: _median_and_range(r) for d, r in gemms.items()}
    return Floor(read, {d: g[0] for d, g in gemm.items()}, read_range,
                 {d: g[1] for d, g in gemm.items()}, probes)


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import llvmlite

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": active_layer() or "not yet chosen",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "llvmlite": llvmlite.__version__,
    }
