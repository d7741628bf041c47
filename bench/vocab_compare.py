"""Alternate timings of the large-vocabulary kernel against one SGEMM, in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/vocab_compare.py M N K [POLICY=VALUE ...]

Float32 data; each round runs every variant once, in turn, and the best of
three rounds is printed: one SGEMM (m, n) x (n, K) through NumPy,
``linear_cross_entropy`` ("lce", with its fraction of the floor, 3 x the
SGEMM time), ``loss_and_grad`` ("lag"), and ``linear_cross_entropy`` with one
``fastsoftmax._dispatch`` constant changed per extra argument (for instance
``VOCAB_COLUMN_BLOCK=256``).  Alternating keeps slow drifts of a shared
machine from favouring one variant; it does not make the numbers quiet.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import fastsoftmax as fs
import fastsoftmax._dispatch as policy


def main(argv: list[str]) -> None:
    m, n, K = map(int, argv[:3])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, n), dtype=np.float32)
    W = 0.03 * rng.standard_normal((K, n), dtype=np.float32)
    y = rng.integers(0, K, m)
    fs.linear_cross_entropy(X[:64], W, y[:64])  # compile or load
    variants = {"sgemm": lambda: np.dot(X, W.T), "lce": lambda: fs.linear_cross_entropy(X, W, y),
                "lag": lambda: fs.loss_and_grad(W, X, y)}
    for spec in argv[3:]:
        name, value = spec.split("=")

        def run(name=name, value=int(value)):
            old = getattr(policy, name)
            setattr(policy, name, value)
            try:
                return fs.linear_cross_entropy(X, W, y)
            finally:
                setattr(policy, name, old)

        variants["lce " + spec] = run
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(3):
        for name, f in variants.items():
            t = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t)
    for name, t in best.items():
        share = f"({3 * best['sgemm'] / t:.2f} of the floor)" if name.startswith("lce") else ""
        print(f"{name:32s} {t:.3f} s {share}")


if __name__ == "__main__":
    main(sys.argv[1:])
