"""bench/ runs once, on tiny shapes and untimed, so that it cannot rot.

``FASTSOFTMAX_BENCH_TINY=1`` switches every bench file to tiny shapes and
``--benchmark-disable`` runs each benchmark once without timing it; every
benchmark's own check still runs.  About 1.5 min, 2-2.5 min on an empty
numba cache (bench/test_resources.py's first calls compile the paths they
time; the tests after this one then find them compiled).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("pytest_benchmark")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_bench_runs_on_tiny_shapes():
    env = dict(os.environ, FASTSOFTMAX_BENCH_TINY="1")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "-v", "--benchmark-disable",
         "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "failed" not in summary and "error" not in summary, summary
    # every file ran something; skips only for peers that are not installed (or
    # for the memory check on a system without a resettable high-water mark)
    for path in sorted((ROOT / "bench").glob("test_*.py")):
        assert f"bench/{path.name}::" in out.stdout and any(
            line.startswith(f"bench/{path.name}::") and "PASSED" in line
            for line in out.stdout.splitlines()), path.name
    for line in out.stdout.splitlines():
        if line.startswith("SKIPPED"):
            assert "not installed" in line or "no resettable high-water mark" in line, line


@pytest.mark.parametrize("script", [
    ["head_phases.py", "8", "12", "20"],
    ["head_ab.py", "8", "1280", "20", "TORCH_HEAD_TOUCH_PAGES", "0,1", "--rounds", "1"],
])
def test_head_scripts_run_on_tiny_shapes(script):
    """The bfloat16 head's profiling scripts (not pytest files) run to their
    last line on a tiny head (PyTorch's bfloat16 products without matrix
    units are slow but correct)."""
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, f"bench/{script[0]}", *script[1:]], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "(m, n, K) = (8, " in out.stdout
