"""Hostile input at random, in a child process: no crash, no hang, no wrong number.

The cases and how each is judged are in ``fuzzing.py``; the run itself is in
``fuzz_child.py``.  The run is reproducible: the seed is
``FASTSOFTMAX_FUZZ_SEED`` (default 0, the one CI uses) and the number of cases
``FASTSOFTMAX_FUZZ_EXAMPLES`` (default 600).  To look further with a fresh
seed::

    FASTSOFTMAX_FUZZ_SEED=$RANDOM FASTSOFTMAX_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py -s

A failure prints the shrunk case as a ``check_case(...)`` line: paste it into
``test_regressions`` below.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fuzzing import INF, NAN, A, check_case  # noqa: F401  (NAN, INF: pasted cases use them)

CHILD = os.path.join(os.path.dirname(__file__), "fuzz_child.py")


def run_child(tmp_path, examples: str, **env):
    trace = tmp_path / "last_case.txt"
    try:
        out = subprocess.run([sys.executable, CHILD, str(trace), examples], capture_output=True,
                             text=True, timeout=600, env={**os.environ, **env})
    except subprocess.TimeoutExpired:
        last = trace.read_text() if trace.exists() else "(none)"
        raise AssertionError(f"the fuzzing child hung; last case: {last}") from None
    last = trace.read_text() if trace.exists() else "(none)"
    return out, last


def test_fuzz_in_a_child_process(tmp_path):
    out, last = run_child(tmp_path, os.environ.get("FASTSOFTMAX_FUZZ_EXAMPLES", "600"))
    seed = os.environ.get("FASTSOFTMAX_FUZZ_SEED", "0")
    assert out.returncode == 0, (
        f"FASTSOFTMAX_FUZZ_SEED={seed}: exit code {out.returncode} (negative: killed by a "
        f"signal) after case {last}\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    assert "fuzzed" in out.stdout
    print(out.stdout.strip())


@pytest.mark.parametrize("kind", ["grad", "reject", "accept"])
def test_fuzz_fails_on_a_wrong_library(tmp_path, kind):
    """The fuzz run must catch each deliberate bug (see fuzz_child.sabotage):
    a gradient off by 1e-4 relative, a valid input rejected, an invalid one accepted."""
    out, _ = run_child(tmp_path, "400", FASTSOFTMAX_FUZZ_SABOTAGE=kind,
                       FASTSOFTMAX_FUZZ_SEED="0")
    assert out.returncode != 0, out.stdout[-2000:]
    assert "case as a regression test" in out.stdout + out.stderr
    assert "check_case(" in out.stdout + out.stderr


REGRESSIONS = [
    # issue 13: one class, |x| = 2^63: the fused coefficient (sum t) p - t is one
    # rounding of s p away from 0 (an FMA), times |x| it is 119; relative to the
    # size of the terms it is exact to 4e-17.
    ("loss_and_grad", (A([[1.049e-4]]), A([[-9223372036854775808.0]], "int64"), A([[0.26978671]])),
     {"sample_weight": A([0.04097352]), "label_smoothing": 0.0, "reduction": "mean",
      "method": "fused"}),
    # a -inf intercept masks a class: the oracle's logit-rounding scale must skip it
    ("loss_and_grad", (A([[0.00036159505490948477], [0.0013040000451301373]]),
                       A([[0.0009470809631292422]]),
                       A([[0.2697867137638703, 0.04097352393619469]])),
     {"label_smoothing": 0.0, "reduction": "mean", "b": A([-INF, -0.000535669373161111]),
      "l2": 0.0, "method": "fused"}),
    # an infinite weight: the kernels poison the whole sample, the oracle one class
    ("loss_and_grad", (A([[INF], [-0.000535669373161111]]), A([[0.00036159505490948477]]),
                       A([[0.2697867137638703, 0.04097352393619469]])),
     {"label_smoothing": 0.0, "reduction": "mean", "l2": 0.0, "method": "fused"}),
    # a -inf logit with a zero target adds nothing to the loss (0 log 0 = 0)
    ("logits", (A([[-INF, 0.0003304370761833871, -0.001303157231604361]]), A([1.0], "int64")),
     {"label_smoothing": 0.0, "reduction": "mean", "ignore_index": -1}),
    # a -inf entry next to a finite maximum has probability exactly 0
    ("softmax", (A([-INF, -0.00013210486329130188]),), {}),
    # float16 overflow: rows of +-inf give NaN rows (SciPy too)
    ("softmax", (A([[125730.2, -132104.8, 640422.6, 104900.1], [-535669.3, 361595.0, 1304000.0,
                                                                  947080.9],
                    [-703735.2, -1265421.4, -623274.4, 41325.9]], "float16"),), {}),
    # probabilities below float32's range round to 0
    ("softmax", (A([125.7302210933933, -132.10486329130188], "float32"),), {}),
    # below exp(-708) the kernels' exponential returns 0 (documented)
    ("softmax", (A([[125.7302210933933, -132.10486329130188, 640.422650443282,
                     104.9001171530397]]),), {}),
]


@pytest.mark.parametrize("case", REGRESSIONS, ids=lambda c: c[0])
def test_regressions(case):
    func, args, kw = case
    assert check_case(func, args, kw) == "returned"
