"""Two or more settings of a bfloat16 head's tiles, alternated in one process.

Times ``fastsoftmax._torch_head.head_sums`` (loss, dX, dW, db of the mean
cross-entropy, random bfloat16 data) with one ``TORCH_HEAD_*`` constant of
``fastsoftmax._dispatch`` set to each value in turn, a round of all values
at a time, half a second apart, after one warm-up call each: the machine's
drift over minutes (15-20% on a shared VM) then reaches every value alike.
Prints each value's median and its times::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/head_ab.py \\
        2048 2048 128256 TORCH_HEAD_DX_CLASSES 1024,4096 --rounds 4

Values are integers (``0``/``1`` for a switch).  Needs torch; meant for CPUs
with bfloat16 hardware (AMX or AVX-512 BF16).
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np
from head_phases import head_call  # this directory is on the path when run as a script

from fastsoftmax import _dispatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("m", type=int)
    parser.add_argument("n", type=int)
    parser.add_argument("K", type=int)
    parser.add_argument("name", help="a TORCH_HEAD_* constant of fastsoftmax._dispatch")
    parser.add_argument("values", help="comma-separated integers")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if not args.name.startswith("TORCH_HEAD_") or not hasattr(_dispatch, args.name):
        parser.error(f"no constant {args.name} in fastsoftmax._dispatch")
    kind = type(getattr(_dispatch, args.name))
    values = [kind(int(v)) for v in args.values.split(",")]
    m, n, K = args.m, args.n, args.K
    call = head_call(m, n, K)
    times: dict = {v: [] for v in values}
    for v in values:  # warm-up
        setattr(_dispatch, args.name, v)
        call()
    for _ in range(args.rounds):
        for v in values:
            setattr(_dispatch, args.name, v)
            time.sleep(0.5)
            t0 = time.perf_counter()
            out = call()
            times[v].append(time.perf_counter() - t0)
            del out
    print(f"(m, n, K) = ({m}, {n}, {K}) bfloat16, {numba.get_num_threads()} threads")
    for v in values:
        print(f"{args.name} = {v!r}: median {np.median(times[v]):.3f} s "
              f"({', '.join(f'{t:.3f}' for t in times[v])})")


if __name__ == "__main__":
    main()
