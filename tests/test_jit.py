"""Compile flags come from fastsoftmax._jit alone; FASTSOFTMAX_CACHE=0 turns the disk cache off."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import fastsoftmax

PACKAGE = pathlib.Path(fastsoftmax.__file__).parent

CALLS = (
    "import numpy as np, fastsoftmax as fs\n"
    "from fastsoftmax._fused import fused_chunk\n"
    "from fastsoftmax._primitives import _rows_serial\n"
    "X = np.ones((4, 3)); W = np.ones((2, 3)); y = np.array([0, 1, 0, 1])\n"
    "fs.loss_and_grad(W, X, y)\n"
    "fs.softmax(X)\n"
    "print(*(sum(f.stats.cache_hits.values()) for f in (fused_chunk, _rows_serial)))\n"
)


def run(cache_dir, cache_env: str | None) -> list[int]:
    """CALLS in a new process with its own numba cache folder; the kernels' cache hits."""
    env = {k: v for k, v in os.environ.items() if k != "FASTSOFTMAX_CACHE"}
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    if cache_env is not None:
        env["FASTSOFTMAX_CACHE"] = cache_env
    out = subprocess.run([sys.executable, "-c", CALLS], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return [int(v) for v in out.stdout.split()]


def cache_files(folder):
    return [p for p in pathlib.Path(folder).rglob("*") if p.suffix in (".nbi", ".nbc")]


def test_cache_env_turns_the_disk_cache_off(tmp_path):
    off, on = tmp_path / "off", tmp_path / "on"
    off.mkdir()
    on.mkdir()
    # With the variable set, two processes in a row: nothing written, nothing loaded.
    assert run(off, "0") == [0, 0]
    assert run(off, "0") == [0, 0]
    assert cache_files(off) == []
    # The same calls with the cache on write and then load (so the check above can fail).
    run(on, None)
    assert cache_files(on)
    assert run(on, None) == [1, 1]


def test_only_jit_decides_compile_flags():
    """No library module calls numba.njit/jit or passes its own jit options."""
    pattern = re.compile(r"(?<!jax\.)(?<!`)\bn?jit\(|jit_options\s*=\s*\{|\bcache\s*=\s*True")  # JAX's jit is not numba's
    offenders = []
    for path in PACKAGE.rglob("*.py"):  # the tools' own kernels too
        if path.name == "_jit.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []
