"""Turn benchmark JSON into a Markdown table.

    python bench/table.py out.json

``out.json`` is either ``pytest bench/ --benchmark-json out.json`` output or
``fastsoftmax bench --json out.json`` output.

One row per benchmark group (shape and dtype); one column per implementation
with its median time in milliseconds and, in brackets, its speed-up over
``method="numpy"``.
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    with open(path) as fh:
        data = json.load(fh)
    groups: dict[str, dict[str, float]] = {}
    order: list[str] = []
    if "results" in data:  # fastsoftmax bench --json
        data = {"benchmarks": [
            {"group": f"{r['shape']} {r['m']}·{r['n']}·{r['K']} {r['dtype']}",
             "extra_info": {"impl": r["impl"]}, "stats": {"median": r["median_s"]}}
            for r in data["results"]]}
    for bench in data["benchmarks"]:
        impl = bench.get("extra_info", {}).get("impl")
        if impl is None:
            continue
        groups.setdefault(bench["group"], {})[impl] = bench["stats"]["median"]
        if impl not in order:
            order.append(impl)
    print("| shape-dtype | " + " | ".join(order) + " |")
    print("|---|" + "---|" * len(order))
    for group, times in groups.items():
        base = times.get("numpy")
        cells = []
        for impl in order:
            t = times.get(impl)
            if t is None:
                cells.append("–")
            else:
                ratio = f" ({base / t:.2f}x)" if base else ""
                cells.append(f"{t * 1e3:.3f} ms{ratio}")
        print(f"| {group} | " + " | ".join(cells) + " |")
    for bench in data["benchmarks"]:
        if "impl" not in bench.get("extra_info", {}):
            print(f"\n{bench['name']}: {json.dumps(bench['extra_info'])}")


if __name__ == "__main__":
    main(sys.argv[1])
