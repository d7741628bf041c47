"""More than 2^31 elements: index arithmetic is 64-bit throughout.

Marked slow (run with ``python -m pytest tests -m slow``): it writes a float32
memory-mapped file of just over 2^31 elements (8.6 GB) and is skipped when
the disk or the memory is short.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import fastsoftmax as fs

N, K = 8, 3
M = 2**31 // N + 4096  # m * n just over 2^31
BLOCK = 2**24  # rows per block of the blockwise reference


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.slow
def test_more_than_2_31_elements(tmp_path):
    need = M * N * 4
    if shutil.disk_usage(tmp_path).free < 2 * need or _available_memory() < 1.5 * need:
        pytest.skip("needs about 17 GB of free disk and 13 GB of free memory")
    path = os.path.join(tmp_path, "X.npy")
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(M, N))
    rng = np.random.default_rng(0)
    for start in range(0, M, BLOCK):
        stop = min(start + BLOCK, M)
        X[start:stop] = rng.standard_normal((stop - start, N), dtype=np.float32)
    X[-4096:] *= 50.0  # rows past element 2^31 weigh heavily: a wrapped index would show
    X.flush()
    del X
    X = np.load(path, mmap_mode="r")
    y = (np.arange(M) % K).astype(np.int64)
    W = rng.standard_normal((K, N)).astype(np.float32)
    loss, dW = fs.loss_and_grad(W, X, y, reduction="sum")

    ref_loss, ref_dW = 0.0, np.zeros((K, N))
    for start in range(0, M, BLOCK):
        stop = min(start + BLOCK, M)
        part = fs.loss_and_grad(W.astype(np.float64), np.asarray(X[start:stop], np.float64),
                                y[start:stop], reduction="sum", method="numpy")
        ref_loss += part[0]
        ref_dW += part[1]
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(dW, ref_dW, rtol=1e-4, atol=1e-4 * np.abs(ref_dW).max())
