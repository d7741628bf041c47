"""Console entry points: ``fastsoftmax bench`` and ``fastsoftmax check`` (also via ``python -m fastsoftmax``)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict


def _parse_shape(text: str) -> tuple[str, tuple[int, int, int]]:
    from .bench import QUICK_SHAPES, SHAPES
    from .head import HEAD_QUICK_SHAPES, HEAD_SHAPES

    known = {**SHAPES, **QUICK_SHAPES, **HEAD_SHAPES, **HEAD_QUICK_SHAPES}
    if text in known:
        return text, known[text]
    try:
        m, n, K = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must be one of {', '.join(known)} or MxNxK, got {text!r}") from None
    if min(m, n, K) < 1:
        raise argparse.ArgumentTypeError(f"every dimension of {text!r} must be at least 1")
    return text, (m, n, K)


def _plot(path: str, results, shapes, dtypes, base, baseline: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'fastsoftmax[plot]'") from None
    groups = [(s, d) for s in shapes for d in dtypes]
    impls = list(dict.fromkeys(r.impl for r in results))
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(groups), 4.2))
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for g, (shape, dtype) in enumerate(groups):
            for r in results:
                if r.impl == impl and r.shape == shape and r.dtype == dtype \
                        and (shape, dtype) in base:
                    xs.append(g + (j - (len(impls) - 1) / 2) * width)
                    ys.append(base[(shape, dtype)] / r.median_s)
        ax.bar(xs, ys, width, label=impl)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(groups)), [f"{s}\n{d}" for s, d in groups])
    ax.set_ylabel(f"speed-up over {baseline}")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    label = FuncFormatter(lambda v, _: f"{v:g}x")
    ax.yaxis.set_major_formatter(label)
    ax.yaxis.set_minor_formatter(label)
    ax.set_title(f"{title} (higher is faster)")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _thread_count(text: str) -> int:
    """--threads: an integer from 1 to numba's maximum (``NUMBA_NUM_THREADS``)."""
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 1 <= value <= most:
        raise argparse.ArgumentTypeError(
            f"must be between 1 and {most} (numba's NUMBA_NUM_THREADS), got {value}")
    return value


def _bench(args) -> int:
    """Run the comparison, with every thread pool limited when --threads is given;
    numba's thread count and the pools' limits are restored afterwards."""
    import numba

    if args.threads is None:
        return _run_bench(args)
    # every implementation gets the same thread count: numba's, the BLAS
    # and OpenMP pools of NumPy, SciPy and scikit-learn, and PyTorch's
    # (which follows numba's); JAX sizes its pool at start-up and is not
    import importlib

    importlib.import_module("scipy.linalg")  # so that its BLAS is limited too
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(args.threads)
        with threadpool_limits(limits=args.threads):
            return _run_bench(args)
    finally:
        numba.set_num_threads(before)


#: per family: the table's title, its speed-up column (name, the baseline in
#: words) and how many (m, n, K) matrix products the floor counts
_FAMILY = {
    "regression": ("softmax regression loss + gradient", "vs numpy", "method='numpy'", 2),
    "head": ("network head: loss + dX, dW, db", "vs torch", "the faster torch path", 3),
}

#: short names for the table's dtype column
_SHORT_DTYPE = {"float64": "f64", "float32": "f32"}


def _compact(v: int) -> str:
    """1000000 -> "1M", 60000 -> "60k", 784 -> "784", 1500 -> "1500"."""
    for unit, size in (("M", 10**6), ("k", 10**3)):
        if v >= size and v % size == 0:
            return f"{v // size}{unit}"
    return str(v)


def _milliseconds(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.{3 if ms < 1 else 2 if ms < 10 else 1 if ms < 100 else 0}f} ms"


def _run_bench(args) -> int:
    import numba
    from rich import box
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .bench import QUICK_SHAPES, SHAPES, machine, probe_floor, run_shape

    head = args.family == "head"
    if head:
        from .head import HEAD_QUICK_SHAPES, HEAD_SHAPES, run_head_shape, torch_baseline

        defaults, run = (HEAD_QUICK_SHAPES if args.quick else HEAD_SHAPES), run_head_shape
    else:
        defaults, run = (QUICK_SHAPES if args.quick else SHAPES), run_shape
    title, speedup, baseline, gemms = _FAMILY[args.family]
    shapes = dict(args.shape) if args.shape else defaults
    budget = 0.15 if args.quick else 1.0
    console = Console()
    results, skipped = [], {}
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("measuring the floor", total=len(shapes) * len(args.dtype) + 1)
        floor = probe_floor(quick=args.quick)
        progress.advance(task)
        for name, (m, n, K) in shapes.items():
            for dtype in args.dtype:
                def on_impl(impl, name=name, dtype=dtype):
                    progress.update(task, description=f"{name} {dtype}: {impl}")
                timings, skip = run(name, m, n, K, dtype, budget, peers=not args.no_peers,
                                    on_impl=on_impl)
                results += timings
                skipped.update(skip)
                progress.advance(task)

    info = machine()
    # narrow enough for an 80-column terminal: the shape's name on the first
    # row of its group and its compact dimensions on the second
    table = Table(title=f"{title}: {info['cpu']}, "
                        f"{numba.get_num_threads()} threads ({info['threading_layer']})",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    table.add_column("method", no_wrap=True)
    for col in ("median", speedup, "of floor"):
        table.add_column(col, justify="right", no_wrap=True)
    base = (torch_baseline(results) if head else
            {(r.shape, r.dtype): r.median_s for r in results if r.impl == "numpy"})
    of_floor = []
    row = 0
    last = None
    for r in results:
        key = (r.shape, r.dtype)
        if key != last:
            if last is not None:
                table.add_section()
            row = 0
        last = key
        frac, low, high = floor.fraction(r.m, r.n, r.K, r.dtype, r.median_s, gemms)
        of_floor.append({"median": frac, "min": low, "max": high})
        label = (r.shape if row == 0 else
                 f"{_compact(r.m)}·{_compact(r.n)}·{_compact(r.K)}" if row == 1 else "")
        style = "bold green" if r.impl == "fused" else None
        table.add_row(label, _SHORT_DTYPE.get(r.dtype, r.dtype) if row == 0 else "", r.impl,
                      _milliseconds(r.median_s),
                      f"{base[key] / r.median_s:.2f}x" if key in base else "-",
                      f"{100 * frac:.0f}% ({100 * low:.0f}-{100 * high:.0f})", style=style)
        row += 1
    console.print(table)
    rates = ", ".join(f"{d} {g:.0f} ({floor.gemm_gflop_s_range[d][0]:.0f}-"
                      f"{floor.gemm_gflop_s_range[d][1]:.0f})"
                      for d, g in floor.gemm_gflop_s.items())
    console.print(f"floor: medians (min-max) of {floor.probes} probes: read "
                  f"{floor.read_gb_s:.1f} ({floor.read_gb_s_range[0]:.1f}-{floor.read_gb_s_range[1]:.1f})"
                  f" GB/s; GEMM {rates} GFLOP/s.  'of floor' = max(bytes of X / read rate, "
                  f"{2 * gemms}mnK / GEMM rate) / median at the median rates (in brackets: at the "
                  f"fastest and the slowest probe's rates); '{speedup}': {baseline}'s median / median")
    for impl, why in skipped.items():
        console.print(f"[dim]skipped {impl}: {why}[/dim]")
    if args.json:
        payload = {"family": args.family, "machine": info, "floor": asdict(floor),
                   "results": [{**asdict(r), "of_floor": f} for r, f in zip(results, of_floor)],
                   "skipped": skipped}
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=1)
        console.print(f"wrote {args.json}")
    if args.plot:
        _plot(args.plot, results, list(shapes), args.dtype, base, baseline, title)
        console.print(f"wrote {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastsoftmax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser(
        "bench", help="time every implementation on the same data",
        description="Time fastsoftmax's methods and the installed peers (scikit-learn, "
                    "PyTorch, JAX) on the same data; report medians, speed-ups over "
                    "method='numpy' and the fraction of this machine's floor.")
    bench.add_argument("--family", choices=list(_FAMILY), default="regression",
                       help="regression (default): loss and gradients for W and b, "
                            "fs.loss_and_grad and peers; head: a network's output layer, "
                            "loss and gradients for X, W and b, fs.linear_cross_entropy "
                            "and PyTorch's two ways, at language-model head shapes")
    bench.add_argument("--quick", action="store_true", help="smaller shapes, about 15 seconds")
    bench.add_argument("--shape", action="append", type=_parse_shape, metavar="NAME|MxNxK",
                       help="shape to run (repeatable); default: mnist, many-classes, small, "
                            "tall (--family head: lm-32k, lm-128k; quick: head-8k)")
    bench.add_argument("--dtype", action="append", choices=["float64", "float32"],
                       help="dtype (repeatable); default float64 (--family head: float32)")
    bench.add_argument("--threads", type=_thread_count, metavar="N",
                       help="thread count for every implementation (JAX excepted), from 1 to "
                            "numba's NUMBA_NUM_THREADS; restored afterwards")
    bench.add_argument("--no-peers", action="store_true", help="time fastsoftmax's methods only")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--plot", metavar="PATH", help="also draw the speed-ups as a PNG chart")
    sub.add_parser(
        "check", help="verify every method on this machine",
        description="Check every method against the NumPy reference and finite differences "
                    "on random problems; print versions and each result; exit 0 when all pass.")
    args = parser.parse_args(argv)
    if args.command == "check":
        from .check import report

        return report()
    args.dtype = args.dtype or ["float32" if args.family == "head" else "float64"]
    return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
