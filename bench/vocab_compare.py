"""Alternate timings of the large-vocabulary kernel against one SGEMM, in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/vocab_compare.py M N K [POLICY=VALUE ...]

Float32 data; each round runs every variant three times back to back, in
turn, after a pause of half a second: one SGEMM (m, n) x (n, K) through
NumPy into a preallocated output, ``linear_cross_entropy`` ("lce", with its
fraction of the floor, 3 x the SGEMM time), ``loss_and_grad`` ("lag", with
its fraction of its own floor, 2 x the SGEMM time), and
``linear_cross_entropy`` with one ``fastsoftmax._dispatch`` constant changed
per extra argument (for instance ``VOCAB_COLUMN_BLOCK=256``).  Printed: the
best of the first calls of the rounds ("first") and of the repeated ones
("repeated", what a training loop sees).  On some virtual machines memory
that a process freed more than about a second ago costs much more to touch
again (the host has taken its pages back; measured on one: 0.4-0.8 GB/s
instead of 6 GB/s), which the first call of a variant after the pause pays
for its new output arrays.  Alternating keeps slow drifts of a shared
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
    out = np.empty((m, K), dtype=np.float32)
    variants = {"sgemm": lambda: np.dot(X, W.T, out=out), "lce": lambda: fs.linear_cross_entropy(X, W, y),
                "lag": lambda: fs.loss_and_grad(W, X, y)}
    for spec in argv[3:]:
        name, value = spec.split("=")

        def run(name=name, value=float(value) if "." in value else int(value)):
            old = getattr(policy, name)
            setattr(policy, name, value)
            try:
                return fs.linear_cross_entropy(X, W, y)
            finally:
                setattr(policy, name, old)

        variants["lce " + spec] = run
    first = dict.fromkeys(variants, float("inf"))
    again = dict.fromkeys(variants, float("inf"))
    for _ in range(3):
        for name, f in variants.items():
            time.sleep(0.5)  # let BLAS and numba worker threads go idle
            for call in range(3):
                t = time.perf_counter()
                f()
                spent = time.perf_counter() - t
                if call == 0:
                    first[name] = min(first[name], spent)
                else:
                    again[name] = min(again[name], spent)
    floor = again["sgemm"]
    for name in variants:
        times = f"first {first[name]:.3f} s, repeated {again[name]:.3f} s"
        share = 2 if name == "lag" else 3 if name.startswith("lce") else 0
        if share:
            times += f" ({share * floor / again[name]:.2f} of the floor)"
        print(f"{name:32s} {times}")

if __name__ == "__main__":
    main(sys.argv[1:])
