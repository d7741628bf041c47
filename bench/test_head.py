"""A network's output layer (head) in PyTorch: loss forward and backward, float32 and bfloat16.

Three ways to get the loss and the gradients for the input, the weights and
the bias (dX, dW, db) of a linear layer followed by cross-entropy, on the
same tensors and with the same thread count (torch's intra-op pool set to
``numba.get_num_threads()``):

- ``torch-ce-of-logits``: ``F.cross_entropy(F.linear(X, W, b), y)`` + backward;
- ``torch-linear-ce``: ``torch.nn.functional.linear_cross_entropy`` + backward
  (when this torch has it);
- ``fastsoftmax.torch``: ``fastsoftmax.torch.linear_cross_entropy`` + backward.

Shapes (m, n, K) = (tokens, hidden size, vocabulary):

- default: head-8k (1024, 512, 8192), a few tenths of a second a call;
- ``FASTSOFTMAX_BENCH_HEAD_SHAPES=lm``: the language-model heads lm-32k
  (4096, 1024, 32000) and lm-128k (2048, 2048, 128256) instead (or name
  them, comma-separated: ``=lm-32k``; ``=all`` adds head-8k).  A call takes
  seconds (lm-32k) to a minute (lm-128k, float32 ~3.2 Tflop) and PyTorch's
  logits path needs m·K·4 bytes several times over (about 6 GB at lm-128k);
  these are timed once each, after the checked warm-up call;
- ``FASTSOFTMAX_BENCH_TINY=1``: head-tiny (64, 16, 50), whatever else is set.

The data are the same for both dtypes: float32 values that bfloat16
represents exactly, so one reference serves both (float64 softmax, row
block by row block; its matrix products in float64, or in float32 for the
language-model heads, where float64 would take minutes).  Each
implementation is checked against it before it is timed (the check is the
warm-up): loss and gradients within 2e-3 relative in float32, 2e-2 in
bfloat16 (the gradients' tolerance scaled by their largest entry).

Recorded in ``extra_info`` (``--benchmark-json``) and printed with ``-s``,
per call: the median time; ``of_floor``, the floor over the median, the floor
being 6·m·n·K flops (three matrix products: logits, dW, dX) at this
machine's GEMM rate in the call's dtype, measured once per session at
(1024, 1024) x (1024, 8192), best of 3: for float32 the faster of NumPy's
and torch's float32 GEMM, for bfloat16 torch's bfloat16 GEMM (two to three
times (AVX-512 BF16) to eight times (AMX) the float32 rate on CPUs with
bfloat16 hardware, a slow fallback on others); a fraction above 100% means
the probe ran in a slower spell of a shared machine than the call, and
that the numbers are not to be trusted); ``vs_faster_torch``,
the faster torch path's median over this one (fastsoftmax.torch runs last
in its group, so it always has both); and the peak extra memory of one call
measured in a fresh process (``fastsoftmax.tools.memory.peak_extra``; the
gradients left in ``.grad`` included) next to the gradients' own size,
dX + dW + db in the input's dtype.  The thread counts are recorded too.
Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE FASTSOFTMAX_BENCH_HEAD_SHAPES=lm-32k \\
        python -m pytest bench/test_head.py --benchmark-only -s

Numbers from a shared or loaded machine mean little.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time

import numba
import numpy as np
import pytest

from conftest import TINY
from fastsoftmax.tools.head import HEAD_QUICK_SHAPES, HEAD_SHAPES

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    pytest.skip("torch not installed", allow_module_level=True)

import fastsoftmax.torch as fst  # noqa: E402

torch.set_num_threads(numba.get_num_threads())


def chosen_shapes() -> dict[str, tuple[int, int, int]]:
    """name -> (m, n, K), from FASTSOFTMAX_BENCH_HEAD_SHAPES (see the module's docstring)."""
    if TINY:
        return {"head-tiny": (64, 16, 50)}
    known = {**HEAD_QUICK_SHAPES, **HEAD_SHAPES}
    names: list[str] = []
    for word in os.environ.get("FASTSOFTMAX_BENCH_HEAD_SHAPES", "").replace(",", " ").split():
        names += {"lm": list(HEAD_SHAPES), "all": list(known)}.get(word, [word])
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"FASTSOFTMAX_BENCH_HEAD_SHAPES: unknown {unknown}; "
                         f"names are lm, all, {', '.join(known)}")
    return {n: known[n] for n in dict.fromkeys(names)} or dict(HEAD_QUICK_SHAPES)


#: name -> (m, n, K): samples (tokens), hidden size, classes (vocabulary)
SHAPES = chosen_shapes()
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def torch_linear_ce(X, W, y, b):
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip("F.linear_cross_entropy not installed (torch too old)")
    return F.linear_cross_entropy(X, W, y, linear_bias=b)


def torch_ce_of_logits(X, W, y, b):
    return F.cross_entropy(F.linear(X, W, b), y)


def fastsoftmax_lce(X, W, y, b):
    return fst.linear_cross_entropy(X, W, y, linear_bias=b)


#: in the order they run within a group: fastsoftmax last, when both torch medians are known
IMPLS = {"torch-ce-of-logits": torch_ce_of_logits, "torch-linear-ce": torch_linear_ce,
         "fastsoftmax.torch": fastsoftmax_lce}
TORCH_PATHS = ("torch-ce-of-logits", "torch-linear-ce")


def make_head(m: int, n: int, K: int):
    """float32 hidden states X (m, n), weights W (K, n), bias b (K,), all
    exactly representable in bfloat16, and labels y (m,): logits of a few
    units, as in a trained head."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(m, n, generator=g).bfloat16().float()
    W = (torch.randn(K, n, generator=g) / n**0.5).bfloat16().float()
    b = (0.1 * torch.randn(K, generator=g)).bfloat16().float()
    y = torch.randint(0, K, (m,), generator=g)
    return X, W, y, b


def reference(X, W, y, b, rows: int = 256):
    """(loss, dX, dW, db) in float64 of the mean cross-entropy, written out:
    softmax in float64 a block of rows at a time; the matrix products in
    float64 up to 2^34 m·n·K, in float32 above (each block's dW added in float64)."""
    m, n = X.shape
    g = torch.float64 if m * n * W.shape[0] <= 2**34 else torch.float32
    Wg = W.to(g)
    loss = 0.0
    dX = torch.empty(m, n, dtype=torch.float64)
    dW = torch.zeros(W.shape, dtype=torch.float64)
    db = torch.zeros(W.shape[0], dtype=torch.float64)
    for i in range(0, m, rows):
        Xi, yi = X[i:i + rows].to(g), y[i:i + rows]
        r = torch.arange(Xi.shape[0])
        Z = (Xi @ Wg.T).double() + b.double()
        lse = torch.logsumexp(Z, dim=1)
        loss += float((lse - Z[r, yi]).sum())
        P = torch.exp(Z - lse[:, None])
        del Z
        P[r, yi] -= 1.0
        P /= m
        db += P.sum(dim=0)
        Pg = P.to(g)
        del P
        dX[i:i + rows] = (Pg @ Wg).double()
        dW += (Pg.T @ Xi).double()
    return loss / m, dX, dW, db


@functools.lru_cache(maxsize=1)
def head_data(shape: str):
    """The float32 data of a shape and its float64 reference (kept while its groups run)."""
    X, W, y, b = make_head(*SHAPES[shape])
    return (X, W, y, b), reference(X, W, y, b)


@functools.lru_cache(maxsize=1)
def leaves(shape: str, dtype: str):
    """X, W, y, b in ``dtype``, X, W and b requiring grad."""
    X, W, y, b = head_data(shape)[0]
    d = DTYPES[dtype]
    return (X.detach().to(d).requires_grad_(), W.detach().to(d).requires_grad_(), y,
            b.detach().to(d).requires_grad_())


def forward_backward(fn, X, W, y, b):
    """The loss, and the three gradients left in .grad."""
    for t in (X, W, b):
        t.grad = None
    loss = fn(X, W, y, b)
    loss.backward()
    return loss


@pytest.fixture(scope="module")
def gemm_gflop_s():
    """This machine's GEMM rates (GFLOP/s): float32 in NumPy ("numpy") and torch
    ("torch"), bfloat16 in torch ("torch-bfloat16"), best of 3 at (1024, 1024) x
    (1024, 8192) (tiny under FASTSOFTMAX_BENCH_TINY)."""
    m, n, K = (64, 64, 64) if TINY else (1024, 1024, 8192)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((m, n), dtype=np.float32)
    B = rng.standard_normal((n, K), dtype=np.float32)
    tA, tB = torch.from_numpy(A), torch.from_numpy(B)
    rates = {}
    for lib, mm, args in (("numpy", np.dot, (A, B)), ("torch", torch.mm, (tA, tB)),
                          ("torch-bfloat16", torch.mm, (tA.bfloat16(), tB.bfloat16()))):
        mm(*args)
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            mm(*args)
            best = min(best, time.perf_counter() - t0)
        rates[lib] = 2.0 * m * n * K / best / 1e9
    print(f"\nGEMM: float32 numpy {rates['numpy']:.0f}, torch {rates['torch']:.0f}; bfloat16 "
          f"torch {rates['torch-bfloat16']:.0f} GFLOP/s ({numba.get_num_threads()} threads)")
    return rates


#: (shape, dtype) -> impl -> median seconds, filled as the group runs
MEDIANS: dict[tuple[str, str], dict[str, float]] = {}
#: the rows of the summary printed at the end of the module (with -s)
ROWS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if ROWS:
        print("\n\nshape    dtype     implementation      median   vs faster torch  of floor"
              "  extra peak / gradients (MB)")
        print("\n".join(ROWS))


#: the memory child: one implementation's forward and backward in a fresh process
#: (its warm-up on the first 512 rows, then the measured call on all of them)
MEMORY_CHILD = r"""
import gc, json, sys
sys.path.insert(0, sys.argv[1])
from test_head import DTYPES, IMPLS, forward_backward, make_head
from fastsoftmax.tools.memory import peak_extra

impl, dtype, m, n, K = sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])
X, W, y, b = (t.to(DTYPES[dtype]).requires_grad_() if t.is_floating_point() else t
              for t in make_head(m, n, K))
fn = IMPLS[impl]
# warm-up (compilation or cache load, thread pools) on the first rows: the same
# kernels as the whole call (same n, K, dtypes and thread count), a fraction of its time
Xw = X[:512].detach().clone().requires_grad_()
forward_backward(fn, Xw, W, y[:512], b)
del Xw
for t in (X, W, b):
    t.grad = None
gc.collect()
out = []
extra, how = peak_extra(lambda: out.append(forward_backward(fn, X, W, y, b)))
grads = sum(t.grad.numel() * t.grad.element_size() for t in (X, W, b))
print(json.dumps({"extra": extra, "method": how, "gradients": grads}))
"""


def peak_memory(impl: str, dtype: str, m: int, n: int, K: int) -> dict:
    """Peak extra bytes of one forward and backward in a fresh process, with the
    gradients' own bytes.  glibc gets a fixed mmap threshold, so that large
    blocks freed by the warm-up call go back to the system instead of being
    reused unseen."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, here, impl, dtype, str(m), str(n),
                          str(K)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout)


CASES = [(shape, dtype, impl) for shape in SHAPES for dtype in DTYPES for impl in IMPLS]


@pytest.mark.parametrize("shape, dtype, impl", CASES, ids=["-".join(c) for c in CASES])
def test_head(benchmark, gemm_gflop_s, shape, dtype, impl):
    m, n, K = SHAPES[shape]
    X, W, y, b = leaves(shape, dtype)
    fn = IMPLS[impl]
    ref = head_data(shape)[1]
    rtol = 2e-3 if dtype == "float32" else 2e-2
    got = forward_backward(fn, X, W, y, b)  # warm-up (compilation) and check
    torch.testing.assert_close(float(got.detach()), ref[0], rtol=rtol, atol=0)
    for name, t, r in zip(("dX", "dW", "db"), (X, W, b), ref[1:]):
        scale = float(r.abs().max())
        torch.testing.assert_close(t.grad.double(), r, rtol=rtol, atol=rtol * scale,
                                   msg=lambda msg, name=name: f"{impl} {name}: {msg}")
    rounds = 1 if shape in HEAD_SHAPES else 3
    benchmark.group = f"{shape} ({m}x{n}x{K}) {dtype}, loss + backward"
    benchmark.pedantic(forward_backward, args=(fn, X, W, y, b), rounds=rounds, iterations=1)
    rate = (gemm_gflop_s["torch-bfloat16"] if dtype == "bfloat16"
            else max(gemm_gflop_s["numpy"], gemm_gflop_s["torch"]))
    floor_s = 6.0 * m * n * K / (rate * 1e9)
    info = dict(shape=shape, m=m, n=n, K=K, dtype=dtype, impl=impl,
                torch_threads=torch.get_num_threads(), numba_threads=numba.get_num_threads(),
                gemm_gflop_s=gemm_gflop_s, floor_6mnK_s=floor_s)
    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    if median is not None:
        group = MEDIANS.setdefault((shape, dtype), {})
        group[impl] = median
        torch_medians = [group[p] for p in TORCH_PATHS if p in group]
        info.update(median_s=median, of_floor=floor_s / median,
                    vs_faster_torch=min(torch_medians) / median if torch_medians else None)
    if not TINY or impl == "fastsoftmax.torch":  # the tiny run keeps the child from rotting
        mem = peak_memory(impl, dtype, m, n, K)
        info.update(peak_extra_MB=mem["extra"] / 2**20, gradients_MB=mem["gradients"] / 2**20,
                    extra_over_gradients=mem["extra"] / mem["gradients"], memory_method=mem["method"])
    benchmark.extra_info.update(info)
    if median is not None:
        ratio = f"{info['vs_faster_torch']:.2f}x" if info["vs_faster_torch"] else "-"
        memory = (f"{info['peak_extra_MB']:7.0f} / {info['gradients_MB']:.0f} = "
                  f"{info['extra_over_gradients']:.2f}x" if "peak_extra_MB" in info else "-")
        ROWS.append(f"{shape:8} {dtype:9} {impl:18} {median:8.3f} s {ratio:>10}  "
                    f"{100 * info['of_floor']:7.0f}%   {memory}")
