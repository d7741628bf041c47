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
from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np
from numba import prange

from ._api import loss_and_grad
from ._peers import PEERS
from ._threading import active_layer
from ._validation import METHODS

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
    read_gb_s: float
    gemm_gflop_s: dict[str, float]

    def seconds(self, m: int, n: int, K: int, dtype) -> float:
        """The shape's floor: one read of X, or 4 m n K flops at the GEMM rate."""
        dtype = np.dtype(dtype)
        read = m * n * dtype.itemsize / (self.read_gb_s * 1e9)
        flops = 4.0 * m * n * K / (self.gemm_gflop_s[dtype.name] * 1e9)
        return max(read, flops)


def make_problem(m: int, n: int, K: int, dtype, seed: int = 0):
    """Random standard-normal X (m, n), W (K, n) scaled by 1/sqrt(n), bias, labels."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n), dtype=np.float64).astype(dtype, copy=False)
    W = (rng.standard_normal((K, n)) / np.sqrt(n)).astype(dtype)
    b = (0.1 * rng.standard_normal(K)).astype(dtype)
    y = rng.integers(0, K, m)
    return W, X, y, b


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


def implementations(m: int, n: int, K: int, peers: bool = True) -> dict[str, Callable]:
    """name -> factory(W, X, y, b) -> runner, for everything worth timing on this shape."""
    impls: dict[str, Callable] = {}
    for method in METHODS:
        if method == "indexloop" and m * K * (K + n) > INDEXLOOP_MAX_WORK:
            continue
        impls[method] = (lambda meth: lambda W, X, y, b: (
            lambda: loss_and_grad(W, X, y, b=b, method=meth)))(method)
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
    times: dict[str, list[float]] = {impl: [] for impl in runners}
    for rnd in range(rounds):
        for impl, run in runners.items():
            if on_impl is not None:
                on_impl(f"{impl} (round {rnd + 1}/{rounds})")
            time.sleep(0.1)  # let BLAS threads of the previous block stop spinning
            times[impl] += time_block(run, budget_s / rounds, min_reps=2)
    timings = [Timing(name, m, n, K, np.dtype(dtype).name, impl, float(np.median(t)), t)
               for impl, t in times.items()]
    return timings, skipped


@numba.njit(parallel=True, cache=True, fastmath={"reassoc"}, nogil=True)
def _parallel_sum(a, nchunks):
    """Sum of a 1-D array in ``nchunks`` parallel pieces: a read-bandwidth probe."""
    partial = np.zeros(nchunks)
    m = a.shape[0]
    for c in prange(nchunks):
        piece = a[c * m // nchunks:(c + 1) * m // nchunks]
        s = 0.0
        for i in range(piece.shape[0]):  # from 0: no negative-index wraparound, so SIMD
            s += piece[i]
        partial[c] = s
    return partial.sum()


def probe_floor(quick: bool = False) -> Floor:
    """Measure the read bandwidth (numba threads) and NumPy's GEMM rate."""
    a = np.ones((64 if quick else 256) * 2**20 // 8 * 4)  # 256 MiB, 1 GiB when not quick
    threads = numba.get_num_threads()
    _parallel_sum(a[:1024], threads)
    t = min(time_block(lambda: _parallel_sum(a, threads), 0.5 if quick else 2.0, min_reps=3))
    read = a.nbytes / t / 1e9
    del a
    gemm = {}
    size = 1024 if quick else 2048
    for dtype in ("float64", "float32"):
        A = np.ones((size, size), dtype)
        A @ A
        tg = min(time_block(lambda: A @ A, 0.5 if quick else 1.5, min_reps=3))
        gemm[dtype] = 2.0 * size**3 / tg / 1e9
    return Floor(read, gemm)


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
