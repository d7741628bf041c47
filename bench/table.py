"""Turn benchmark JSON into the Markdown table of docs/performance.md.

    python bench/table.py out.json

``out.json`` is either ``fastsoftmax bench --json out.json`` output or
``pytest bench/ --benchmark-json out.json`` output.

One row per shape and dtype ("mnist 60000·784·10, f64" on the shape's first
row, "mnist, f32" after it); the columns, in this order, are the
implementations of :data:`COLUMNS` (a dash where one did not run), each cell
the median time; the fused method's cell is bold with its speed-up over
``method="numpy"`` in brackets.  Other benchmarks in the file (primitives,
memory, compile time, fit, short calls) are listed after the table with
their ``extra_info``.
"""

from __future__ import annotations

import json
import sys

#: implementation name -> column heading, in the table's order
COLUMNS = {
    "fused": "fused",
    "numpy": "numpy",
    "indexloop": "indexloop",
    "sklearn": "scikit-learn",
    "torch": "PyTorch",
    "torch-linear-ce": "PyTorch `linear_cross_entropy`",
    "jax": "JAX",
}
SHORT_DTYPE = {"float64": "f64", "float32": "f32"}


def milliseconds(seconds: float) -> str:
    """0.000105 -> "0.105 ms", 0.0311 -> "31.1 ms", 0.258 -> "258 ms"."""
    ms = seconds * 1e3
    return f"{ms:.{3 if ms < 1 else 1 if ms < 150 else 0}f} ms"


def records(data: dict) -> tuple[list[dict], list[dict]]:
    """(loss-and-gradient timings as dicts with shape, m, n, K, dtype, impl, median_s;
    every other benchmark of a pytest-benchmark file)."""
    if "results" in data:  # fastsoftmax bench --json
        return [r for r in data["results"] if r["impl"] in COLUMNS], []
    rows, others = [], []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("impl") in COLUMNS and "primitive" not in info:
            shape = info.get("shape") or bench["group"].rsplit("-", 1)[0]
            rows.append({"shape": shape, "m": info["m"], "n": info["n"], "K": info["K"],
                         "dtype": info["dtype"], "impl": info["impl"],
                         "median_s": bench["stats"]["median"]})
        else:
            others.append(bench)
    return rows, others


def table(rows: list[dict]) -> list[str]:
    """The Markdown lines of the table."""
    groups: dict[tuple[str, str], dict[str, float]] = {}
    dims: dict[str, tuple[int, int, int]] = {}
    for r in rows:
        groups.setdefault((r["shape"], r["dtype"]), {})[r["impl"]] = r["median_s"]
        dims.setdefault(r["shape"], (r["m"], r["n"], r["K"]))
    lines = ["| shape, dtype | " + " | ".join(COLUMNS.values()) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    seen: set[str] = set()
    for (shape, dtype), times in groups.items():
        m, n, K = dims[shape]
        label = f"{shape}, " if shape in seen else f"{shape} {m}·{n}·{K}, "
        seen.add(shape)
        cells = []
        for impl in COLUMNS:
            t = times.get(impl)
            if t is None:
                cells.append("–")
            elif impl == "fused" and "numpy" in times:
                cells.append(f"**{milliseconds(t)} ({times['numpy'] / t:.2f}x)**")
            else:
                cells.append(milliseconds(t))
        lines.append(f"| {label}{SHORT_DTYPE.get(dtype, dtype)} | " + " | ".join(cells) + " |")
    return lines


def main(path: str) -> None:
    with open(path) as fh:
        data = json.load(fh)
    rows, others = records(data)
    print("\n".join(table(rows)))
    for bench in others:
        print(f"\n{bench['name']}: {json.dumps(bench.get('extra_info', {}))}")


if __name__ == "__main__":
    main(sys.argv[1])
