"""bench/table.py prints the table of docs/performance.md: same columns, same order, same cells."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def documented_header() -> list[str]:
    """The header and rule lines of the loss-and-gradient table in docs/performance.md."""
    lines = (ROOT / "docs" / "performance.md").read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("| shape, dtype |"))
    return lines[i:i + 2]


def run_table(tmp_path, payload) -> list[str]:
    path = tmp_path / "out.json"
    path.write_text(json.dumps(payload))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "table.py"), str(path)],
                         capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def cli_payload():
    """``fastsoftmax bench --json`` output: mnist in two dtypes, peers partly missing."""
    rows = []
    for dtype, times in (("float64", {"numpy": 0.0840, "fused": 0.0311, "jax": 0.0713,
                                      "sklearn": 0.0954}),
                         ("float32", {"fused": 0.0162, "numpy": 0.0498})):
        for impl, t in times.items():
            rows.append({"shape": "mnist", "m": 60000, "n": 784, "K": 10, "dtype": dtype,
                         "impl": impl, "median_s": t, "times_s": [t]})
    return {"machine": {}, "floor": {}, "results": rows, "skipped": {}}


def test_header_is_the_documented_one(tmp_path):
    assert run_table(tmp_path, cli_payload())[:2] == documented_header()


def test_rows_and_cells(tmp_path):
    lines = run_table(tmp_path, cli_payload())
    assert lines[2] == ("| mnist 60000·784·10, f64 | **31.1 ms (2.70x)** | 84.0 ms | – | 95.4 ms "
                        "| – | – | 71.3 ms |")
    assert lines[3] == "| mnist, f32 | **16.2 ms (3.07x)** | 49.8 ms | – | – | – | – | – |"


def test_pytest_benchmark_json(tmp_path):
    """pytest-benchmark output gives the same table; other benchmarks are listed after it."""
    benchmarks = [
        {"name": f"test_loss_and_grad[{r['impl']}-mnist-{r['dtype']}]",
         "group": f"mnist-{r['dtype']}", "stats": {"median": r["median_s"]},
         "extra_info": {k: r[k] for k in ("m", "n", "K", "dtype", "impl")}}
        for r in cli_payload()["results"]]
    benchmarks.append({"name": "test_primitive[softmax-fastsoftmax]", "group": "softmax",
                       "stats": {"median": 0.01},
                       "extra_info": {"impl": "fastsoftmax", "primitive": "softmax"}})
    lines = run_table(tmp_path, {"benchmarks": benchmarks})
    assert lines[:4] == run_table(tmp_path, cli_payload())[:4]
    assert any(line.startswith("test_primitive[softmax-fastsoftmax]:") for line in lines[4:])
