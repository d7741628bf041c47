"""The benchmark behind ``fastsoftmax bench``: every method on the same data.

Each implementation is warmed up (so JIT compilation is never timed), its
answer is checked against the NumPy method, and then it is timed in a block
of consecutive calls of its own; implementations are never interleaved call
by call, because BLAS threads keep spinning for a while after a NumPy call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ._api import loss_and_grad

#: name -> (m, n, K); the shapes the project's speed targets are stated on.
SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (60_000, 784, 10),
    "many-classes": (20_000, 256, 1_000),
    "small": (1_000, 50, 5),
    "tall": (1_000_000, 32, 4),
}
QUICK_SHAPES: dict[str, tuple[int, int, int]] = {
    "quick-mnist": (6_000, 784, 10),
    "quick-classes": (2_000, 256, 200),
    "small": (1_000, 50, 5),
    "quick-tall": (100_000, 32, 4),
}
METHODS = ("fused", "indexloop", "numpy")

#: above this many multiply-adds per call the index-loop kernel (whose cost
#: has an m K^2 term) is left out of the comparison
INDEXLOOP_MAX_K2M = 2e9


@dataclass
class Timing:
    shape: str
    m: int
    n: int
    K: int
    dtype: str
    method: str
    median_s: float
    times_s: list[float] = field(repr=False, default_factory=list)


def make_problem(m: int, n: int, K: int, dtype, seed: int = 0):
    """Random standard-normal X (m, n), small W (K, n), bias and labels."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n), dtype=np.float64).astype(dtype, copy=False)
    W = (rng.standard_normal((K, n)) / np.sqrt(n)).astype(dtype)
    b = (0.1 * rng.standard_normal(K)).astype(dtype)
    y = rng.integers(0, K, m)
    return W, X, y, b


def time_block(fn, budget_s: float, min_reps: int = 3, max_reps: int = 200) -> list[float]:
    """Call ``fn`` repeatedly for about ``budget_s`` seconds; per-call times."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def methods_for(m: int, n: int, K: int, methods=METHODS) -> list[str]:
    """The methods worth timing on this shape."""
    return [meth for meth in methods if meth != "indexloop" or m * K * (K + n) <= INDEXLOOP_MAX_K2M]


def run_shape(name: str, m: int, n: int, K: int, dtype, budget_s: float,
              methods=METHODS, on_method=None) -> list[Timing]:
    """Check and time each method on one shape; ``on_method(name)`` before each."""
    W, X, y, b = make_problem(m, n, K, dtype)
    ref = loss_and_grad(W, X, y, b=b, method="numpy")
    rtol = 1e-8 if np.dtype(dtype) == np.float64 else 1e-3
    out = []
    for method in methods_for(m, n, K, methods):
        if on_method is not None:
            on_method(method)
        got = loss_and_grad(W, X, y, b=b, method=method)  # warm-up and check
        scale = np.abs(ref[1]).max()
        if not (abs(got[0] - ref[0]) <= rtol * abs(ref[0])
                and np.allclose(got[1], ref[1], rtol=rtol, atol=rtol * scale)):
            raise RuntimeError(f"{method} disagrees with the NumPy reference on {name}")
        times = time_block(lambda: loss_and_grad(W, X, y, b=b, method=method), budget_s)
        out.append(Timing(name, m, n, K, np.dtype(dtype).name, method, float(np.median(times)), times))
    return out
