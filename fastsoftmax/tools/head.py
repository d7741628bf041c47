"""The "head" family of ``fastsoftmax bench``: a network's output layer.

The loss of a linear layer followed by softmax cross-entropy and its
gradients for the layer's input X, its weights W and its bias b, the work of
backpropagation through a language model's head: (m, n, K) = (tokens, hidden
size, vocabulary).  :func:`fastsoftmax.linear_cross_entropy` (NumPy level;
its methods, the NumPy one only while its m x K float64 arrays stay
moderate) against PyTorch's two ways (:data:`fastsoftmax.tools.peers.HEAD_PEERS`:
``F.cross_entropy(F.linear(...))`` and ``F.linear_cross_entropy``, each with
``backward()``), on the same data and thread count.

Each implementation is set up, run once (compilation, first touch) and
checked against the NumPy method when it runs, otherwise against the fused
method (then the peers check the fused method: they share no code), and
timed as in :func:`fastsoftmax.tools.bench.run_shape`: blocks of calls, the
implementations taking turns.  The floor of a head is three (m, n, K)
matrix products (logits, dW, dX): 6 m n K flops at the GEMM rate.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fastsoftmax import linear_cross_entropy

from .bench import Timing, method_factories, time_interleaved
from .peers import HEAD_PEERS
from .problems import make_problem

#: name -> (m, n, K): language-model heads (tokens, hidden size, vocabulary)
HEAD_SHAPES: dict[str, tuple[int, int, int]] = {
    "lm-32k": (4096, 1024, 32_000),
    "lm-128k": (2048, 2048, 128_256),
}
#: the quick variant: a moderate head (a few tenths of a second a call)
HEAD_QUICK_SHAPES: dict[str, tuple[int, int, int]] = {
    "head-8k": (1024, 512, 8192),
}

#: the NumPy method keeps several m x K float64 arrays: left out above this many logits
NUMPY_MAX_LOGITS = 2**25

#: the floor of a head: three (m, n, K) matrix products
GEMMS = 3


def implementations(m: int, n: int, K: int, peers: bool = True) -> dict[str, Callable]:
    """name -> factory(W, X, y, b) -> runner returning ``(loss, dX, dW, db)``."""
    impls = method_factories(
        lambda W, X, y, b, meth: linear_cross_entropy(X, W, y, b=b, method=meth), m, n, K,
        NUMPY_MAX_LOGITS)
    if peers:
        impls.update(HEAD_PEERS)
    return impls


def agrees(got, ref, dtype) -> bool:
    """Loss, dX, dW and db within 1e-8 (float64) or 2e-3 (float32) relative,
    the gradients' tolerance scaled by their largest entry."""
    rtol = 1e-8 if np.dtype(dtype) == np.float64 else 2e-3
    if not abs(got[0] - ref[0]) <= rtol * abs(ref[0]):
        return False
    for g, r in zip(got[1:], ref[1:]):
        scale = float(np.abs(r).max())
        if not np.allclose(g, r, rtol=rtol, atol=rtol * scale):
            return False
    return True


def run_head_shape(name: str, m: int, n: int, K: int, dtype, budget_s: float,
                   peers: bool = True, on_impl: Callable[[str], None] | None = None,
                   rounds: int = 3) -> tuple[list[Timing], dict[str, str]]:
    """Check and time every implementation of the head on one shape (at least
    one call a round: a call of a language model's head lasts seconds).
    Returns the timings and, for implementations that could not run, why."""
    W, X, y, b = make_problem(m, n, K, dtype)
    runners, skipped = {}, {}
    ref = None
    impls = implementations(m, n, K, peers)
    # the reference first: the NumPy method if it runs here, else the fused one
    order = sorted(impls, key=lambda i: (i != ("numpy" if "numpy" in impls else "fused")))
    for impl in order:
        if on_impl is not None:
            on_impl(f"{impl} (set-up and check)")
        try:
            run = impls[impl](W, X, y, b)
        except ImportError as exc:
            skipped[impl] = f"not installed ({exc})"
            continue
        got = run()  # warm-up: compilation, first-touch
        if ref is None:
            ref = got
        elif not agrees(got, ref, dtype):
            raise RuntimeError(f"{impl} disagrees with {order[0]} on the head {name} {dtype}")
        del got
        runners[impl] = run
    runners = {impl: runners[impl] for impl in impls if impl in runners}  # the shown order
    del ref
    times = time_interleaved(runners, budget_s, rounds, on_impl, min_reps=1)
    timings = [Timing(name, m, n, K, np.dtype(dtype).name, impl, float(np.median(t)), t)
               for impl, t in times.items()]
    return timings, skipped


def torch_baseline(timings: list[Timing]) -> dict[tuple[str, str], float]:
    """(shape, dtype) -> the median of the faster PyTorch path, where one ran."""
    base: dict[tuple[str, str], float] = {}
    for r in timings:
        if r.impl in HEAD_PEERS:
            key = (r.shape, r.dtype)
            base[key] = min(base.get(key, np.inf), r.median_s)
    return base
