"""Where the time of a bfloat16 head on PyTorch's products goes (fastsoftmax._torch_head).

Times ``head_sums`` (loss, dX, dW, db of the mean cross-entropy) on random
bfloat16 data, with every PyTorch product (``torch.mm``) and every call of
the two compiled kernels between them timed on the way: the rest is the
dX accumulation, the set-up and Python.  Three calls a second apart after a
warm-up one, numba and PyTorch on the same thread count::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/head_phases.py 4096 1024 32000

Needs torch; meant for CPUs with bfloat16 hardware, AMX or AVX-512 BF16
(elsewhere PyTorch's bfloat16 products are a slow fallback).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable

import numba
import numpy as np
import torch

import fastsoftmax._torch_head as head
from fastsoftmax._validation import check_targets

SPENT: dict[str, float] = defaultdict(float)
FLOPS = [0]


def timed(name, fn):
    def call(*args, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            SPENT[name] += time.perf_counter() - t0
    return call


def head_call(m: int, n: int, K: int) -> Callable[[], tuple]:
    """A call of ``head_sums`` on a random bfloat16 head (mean loss, labels,
    every gradient), PyTorch's threads set to numba's."""
    torch.set_num_threads(numba.get_num_threads())
    g = torch.Generator().manual_seed(0)
    X = torch.randn(m, n, generator=g).bfloat16()
    W = (torch.randn(K, n, generator=g) / n**0.5).bfloat16()
    y = torch.randint(0, K, (m,), generator=g).numpy()
    targets = check_targets(y, m, K, np.dtype(np.float32), sample_weight=None, eps=0.0,
                            ignore_index=-100, reduction="mean", samples="X")
    b = np.zeros(K)
    return lambda: head.head_sums(X, W, b, targets, want_dx=True, want_dw=True, want_db=True)


def main(m: int, n: int, K: int) -> None:
    call = head_call(m, n, K)
    mm = timed("products", torch.mm)

    def counted(a, b, **kw):
        FLOPS[0] += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        return mm(a, b, **kw)

    torch.mm = counted
    head.tile_partials = timed("partial sums", head.tile_partials)
    head.tile_gradient = timed("logit gradients", head.tile_gradient)

    call()
    print(f"(m, n, K) = ({m}, {n}, {K}) bfloat16, {numba.get_num_threads()} threads; "
          f"the products do {FLOPS[0] / 1e12:.2f} Tflop ({FLOPS[0] / (2 * m * n * K):.0f} "
          f"of 2mnK)")
    for _ in range(3):
        time.sleep(1.0)
        SPENT.clear()
        FLOPS[0] = 0
        t0 = time.perf_counter()
        call()
        total = time.perf_counter() - t0
        parts = ", ".join(f"{k} {v:.3f} s" for k, v in SPENT.items())
        print(f"total {total:.3f} s: {parts}, the rest {total - sum(SPENT.values()):.3f} s "
              f"(products at {FLOPS[0] / SPENT['products'] / 1e12:.2f} TFLOP/s)")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:4]) if len(sys.argv) == 4 else (4096, 1024, 32000))
