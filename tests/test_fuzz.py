"""Hostile input at random, in a child process: no crash, no hang, no wrong number."""

from __future__ import annotations

import os
import subprocess
import sys


def test_fuzz_in_a_child_process(tmp_path):
    trace = tmp_path / "last_case.txt"
    child = os.path.join(os.path.dirname(__file__), "fuzz_child.py")
    examples = os.environ.get("FASTSOFTMAX_FUZZ_EXAMPLES", "600")
    try:
        out = subprocess.run([sys.executable, child, str(trace), examples], capture_output=True,
                             text=True, timeout=600)
    except subprocess.TimeoutExpired:
        last = trace.read_text() if trace.exists() else "(none)"
        raise AssertionError(f"the fuzzing child hung; last case: {last}") from None
    last = trace.read_text() if trace.exists() else "(none)"
    assert out.returncode == 0, (
        f"exit code {out.returncode} (negative: killed by a signal) after case {last}\n"
        f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    assert "fuzzed" in out.stdout
    print(out.stdout.strip())
