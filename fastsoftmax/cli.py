"""Console entry point: ``fastsoftmax bench`` (also ``python -m fastsoftmax``)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import numpy as np


def _parse_shape(text: str) -> tuple[str, tuple[int, int, int]]:
    from ._bench import QUICK_SHAPES, SHAPES

    known = {**SHAPES, **QUICK_SHAPES}
    if text in known:
        return text, known[text]
    try:
        m, n, K = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must be one of {sorted(known)} or MxNxK, got {text!r}") from None
    if min(m, n, K) < 1:
        raise argparse.ArgumentTypeError(f"every dimension of {text!r} must be at least 1")
    return text, (m, n, K)


def _bench(args) -> int:
    import numba
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from ._bench import QUICK_SHAPES, SHAPES, run_shape

    if args.threads is not None:
        numba.set_num_threads(args.threads)
    shapes = dict(args.shape) if args.shape else (QUICK_SHAPES if args.quick else SHAPES)
    budget = 0.1 if args.quick else 1.0
    console = Console()
    results = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=len(shapes) * len(args.dtype))
        for name, (m, n, K) in shapes.items():
            for dtype in args.dtype:
                def on_method(method, name=name, dtype=dtype):
                    progress.update(task, description=f"{name} {dtype} {method}")
                results += run_shape(name, m, n, K, np.dtype(dtype), budget, on_method=on_method)
                progress.advance(task)

    table = Table(title=f"softmax regression loss + gradient, {numba.get_num_threads()} threads")
    for col in ("shape", "m x n x K", "dtype", "method", "median", "speed-up vs numpy"):
        table.add_column(col, justify="right" if col in ("median", "speed-up vs numpy") else "left")
    base = {(r.shape, r.dtype): r.median_s for r in results if r.method == "numpy"}
    for r in results:
        table.add_row(r.shape, f"{r.m} x {r.n} x {r.K}", r.dtype, r.method,
                      f"{r.median_s * 1e3:.3f} ms", f"{base[(r.shape, r.dtype)] / r.median_s:.2f}x")
    console.print(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{k: v for k, v in asdict(r).items()} for r in results], fh, indent=1)
        console.print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastsoftmax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time every method on the same data")
    bench.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    bench.add_argument("--shape", action="append", type=_parse_shape, metavar="NAME|MxNxK",
                       help="shape to run (repeatable); default: the standard set")
    bench.add_argument("--dtype", action="append", choices=["float64", "float32"],
                       help="dtype (repeatable); default float64")
    bench.add_argument("--threads", type=int, help="numba thread count")
    bench.add_argument("--json", metavar="PATH", help="also write the timings as JSON")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ["float64"]
    return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
