"""A language model's head: loss, dX, dW at (m, n, K) = (4096, 1024, 32000) float32.

fastsoftmax's ``linear_cross_entropy`` (the large-vocabulary kernel,
fastsoftmax._vocab) and ``loss_and_grad`` (dW only; also on the fused
kernel it replaced there, for comparison) against PyTorch's
``F.cross_entropy(X @ W.T)`` + backward and ``F.linear_cross_entropy`` +
backward (gradients for X and W), with the same thread count; and the
floor: 6 m n K flops at this machine's SGEMM rate (one (m, n) x (n, K)
``np.dot``, timed; the floor is three of them).

Each timing checks the loss first (the warm-up).  Peak extra memory is
measured separately in a fresh process per implementation (VmHWM after a
reset, ``fastsoftmax.tools.memory.peak_extra``) and recorded in ``extra_info``;
``-s`` prints it.  Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_vocab.py --benchmark-only -s

Under FASTSOFTMAX_BENCH_TINY=1 the shape is tiny (and its numbers mean nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numba
import numpy as np
import pytest

import fastsoftmax as fs
from conftest import TINY, sized

SHAPE = sized((4096, 1024, 32_000), (64, 32, 5_000))
IMPLS = ["fastsoftmax", "fastsoftmax-dW-only", "fused-dW-only", "torch", "torch-linear-ce"]

#: builds ``run() -> loss`` for an implementation from (X, W, y); shared with the memory child
RUNNERS = r"""
import numpy as np

def runner(impl, X, W, y):
    import fastsoftmax as fs
    import fastsoftmax._dispatch as policy
    if impl == "fastsoftmax":
        return lambda: fs.linear_cross_entropy(X, W, y)[0]
    if impl == "fastsoftmax-dW-only":
        return lambda: fs.loss_and_grad(W, X, y)[0]
    if impl == "fused-dW-only":
        def run():
            saved, policy.VOCAB_SLAB_BYTES = policy.VOCAB_SLAB_BYTES, 2**62
            try:
                return fs.loss_and_grad(W, X, y)[0]
            finally:
                policy.VOCAB_SLAB_BYTES = saved
        return run
    import numba, torch
    torch.set_num_threads(numba.get_num_threads())
    F = torch.nn.functional
    Xt = torch.from_numpy(X).requires_grad_()
    Wt = torch.from_numpy(W).requires_grad_()
    yt = torch.from_numpy(y)
    if impl == "torch-linear-ce" and not hasattr(F, "linear_cross_entropy"):
        raise ImportError("torch.nn.functional.linear_cross_entropy needs a newer PyTorch")
    def run():
        Xt.grad = Wt.grad = None
        if impl == "torch":
            loss = F.cross_entropy(Xt @ Wt.T, yt)
        else:
            loss = F.linear_cross_entropy(Xt, Wt, yt)
        loss.backward()
        return float(loss.detach())
    return run

def data(m, n, K):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, n), dtype=np.float32)
    W = 0.03 * rng.standard_normal((K, n), dtype=np.float32)
    return X, W, rng.integers(0, K, m)
"""

MEMORY_CHILD = RUNNERS + r"""
import json, sys
from fastsoftmax.tools.memory import RESET, peak_extra

impl, m, n, K = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
Xs, Ws, ys = data(64, n, 5000)
runner(impl, Xs, Ws, ys)()                      # compile or load, on a small problem
X, W, y = data(m, n, K)
run = runner(impl, X, W, y)
extra, how = peak_extra(run)
print(json.dumps(extra if how == RESET else None))
"""

namespace: dict = {}
exec(RUNNERS, namespace)


@pytest.fixture(scope="module")
def head():
    return namespace["data"](*SHAPE)


def peak_extra(impl):
    """Peak extra bytes of one call in a fresh process (None: not measured; under
    FASTSOFTMAX_BENCH_TINY it is skipped, to keep the smoke run short)."""
    if TINY:
        return None
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, impl, *map(str, SHAPE)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        if "ImportError" in out.stderr or "ModuleNotFoundError" in out.stderr:
            return None
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout)


@pytest.mark.parametrize("impl", IMPLS)
def test_head(benchmark, head, impl):
    X, W, y = head
    m, n, K = SHAPE
    try:
        run = namespace["runner"](impl, X, W, y)
    except ImportError as exc:
        pytest.skip(f"{impl} not installed: {exc}")
    ref = fs.loss_and_grad_logits((X.astype(np.float64) @ W.T.astype(np.float64)), y)[0]
    assert run() == pytest.approx(ref, rel=1e-4)  # warm-up and check
    benchmark.group = f"head {m}x{n}x{K} float32, {numba.get_num_threads()} threads"
    benchmark.pedantic(run, rounds=3, iterations=1)
    extra = peak_extra(impl)
    grads = (K * n + (0 if impl.endswith("dW-only") else m * n)) * 4
    benchmark.extra_info.update(m=m, n=n, K=K, head_impl=impl, extra_peak_MB=extra and extra / 2**20,
                                gradients_MB=grads / 2**20)
    if extra is not None:
        print(f"\n{impl}: peak extra memory {extra / 2**20:.0f} MB "
              f"(its gradients: {grads / 2**20:.0f} MB)")


def test_sgemm_floor(benchmark, head):
    """One (m, n) x (n, K) SGEMM through NumPy with the process's BLAS threads:
    the floor of loss and all gradients is three of them (6 m n K flops)."""
    X, W, _ = head
    m, n, K = SHAPE
    benchmark.group = f"head {m}x{n}x{K} float32, {numba.get_num_threads()} threads"
    benchmark.pedantic(lambda: np.dot(X, W.T), rounds=3, iterations=1)
    if benchmark.stats is not None:
        t = benchmark.stats.stats.min
        rate = 2.0 * m * n * K / t
        benchmark.extra_info.update(sgemm_GFLOPs=rate / 1e9, floor_6mnK_s=3 * t)
        print(f"\nSGEMM {rate / 1e9:.0f} GFLOP/s: floor 6mnK = {3 * t:.2f} s")
