"""One core: the fused kernels' per-tile products on BLAS against the micro-kernels.

GFLOP/s of the tile's logits ``Z = X W^T`` and of the gradient's products
``G += D X`` (float64 slab), for a few tile shapes, through numba's
``np.dot`` (SciPy's BLAS, as the kernels call it) and through
``fastsoftmax._tile_gemm``; best of 5 blocks of back-to-back calls.
Run it with one thread everywhere::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE NUMBA_NUM_THREADS=1 \\
        OPENBLAS_NUM_THREADS=1 python bench/tile_gemm.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit

from fastsoftmax._tile_gemm import tile_add_products, tile_logits

SHAPES = [(62, 784, 10), (62, 784, 3), (62, 784, 20), (62, 784, 64), (62, 784, 128),
          (512, 64, 10), (1024, 14, 3), (100, 30, 7)]


@njit
def blas_logits(X, W, Z):
    np.dot(X, W.T, Z)


@njit
def blas_products(D, X, G, Gt):
    np.dot(D, X, Gt)
    G += Gt


def best_seconds(f, *args, calls=100):
    f(*args)
    best = np.inf
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            f(*args)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", action="append", choices=["float64", "float32"])
    dtypes = parser.parse_args().dtype or ["float64", "float32"]
    rng = np.random.default_rng(0)
    print("tile (rows, n, K), dtype: GFLOP/s BLAS / micro-kernel")
    for name in dtypes:
        dtype = np.dtype(name)
        for R, n, K in SHAPES:
            X = rng.standard_normal((R, n)).astype(dtype)
            W = rng.standard_normal((K, n)).astype(dtype)
            D = rng.standard_normal((K, R)).astype(dtype)
            Z = np.empty((R, K), dtype)
            G = np.zeros((K, n))
            Gt = np.empty((K, n), dtype)
            flops = 2.0 * R * n * K
            rates = [flops / best_seconds(f, *args) / 1e9 for f, args in (
                (blas_logits, (X, W, Z)), (tile_logits, (X, W, Z)),
                (blas_products, (D, X, G, Gt)), (tile_add_products, (D, X, G)))]
            print(f"({R}, {n}, {K}) {name}: logits {rates[0]:.1f} / {rates[1]:.1f}, "
                  f"products {rates[2]:.1f} / {rates[3]:.1f}")


if __name__ == "__main__":
    main()
