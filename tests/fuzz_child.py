"""The fuzzing body, run in a child process by test_fuzz.py so that a crash
(segfault, abort) fails that test instead of killing the test session.

Usage: ``python fuzz_child.py TRACE_FILE EXAMPLES``.  The run is reproducible:
hypothesis draws its cases from the seed in ``FASTSOFTMAX_FUZZ_SEED``
(default 0, printed at the start).  Every case is judged by
:func:`fuzzing.check_case`; before each call the case is written to
TRACE_FILE as pasteable Python, so that a crash can be traced to it, and a
failing case is printed the same way (hypothesis shrinks it first).  At least
15% of the calls must return, so that a library that rejected everything
could not pass.

``FASTSOFTMAX_FUZZ_SABOTAGE`` (for the test of this test) wraps the three
loss entry points in a deliberate bug: ``grad`` scales the first gradient (dW, dX or dZ) by 1 + 1e-4, ``reject``
raises ValueError whenever sample weights are given, ``accept`` passes
negative sample weights and label smoothing through ``abs``.  Every one of them must make the
run fail.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
from hypothesis import HealthCheck, given, note, seed, settings

import fastsoftmax as fs
from fuzzing import case_source, cases, check_case

TRACE = sys.argv[1]
EXAMPLES = int(sys.argv[2])
SEED = int(os.environ.get("FASTSOFTMAX_FUZZ_SEED", "0"))
COUNTS = {"returned": 0, "rejected": 0}


def sabotage(kind: str) -> None:
    """Replace the loss entry points (loss_and_grad, linear_cross_entropy,
    loss_and_grad_logits) with deliberately wrong versions."""
    for name in ("loss_and_grad", "linear_cross_entropy", "loss_and_grad_logits"):
        right = getattr(fs, name)

        @functools.wraps(right)
        def wrong(*args, _right=right, **kw):
            if kind == "reject" and kw.get("sample_weight") is not None:
                raise ValueError("sabotaged: sample weights rejected")
            if kind == "accept":
                if kw.get("sample_weight") is not None:
                    kw["sample_weight"] = np.abs(kw["sample_weight"])
                kw["label_smoothing"] = abs(kw.get("label_smoothing", 0.0))
            out = _right(*args, **kw)
            if kind == "grad":  # the second value: dW, or dX, or dZ
                out = (out[0], out[1] * (1 + 1e-4)) + tuple(out[2:])
            return out

        setattr(fs, name, wrong)


@seed(SEED)
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(cases())
def fuzz(case):
    func, args, kw = case
    source = case_source(func, args, kw)
    with open(TRACE, "w") as fh:
        fh.write(source)
    note(f"case as a regression test:\n    {source}")
    COUNTS[check_case(func, args, kw)] += 1


if __name__ == "__main__":
    kind = os.environ.get("FASTSOFTMAX_FUZZ_SABOTAGE")
    if kind:
        sabotage(kind)
    print(f"fuzz seed {SEED}, {EXAMPLES} examples (FASTSOFTMAX_FUZZ_SEED, FASTSOFTMAX_FUZZ_EXAMPLES)",
          flush=True)
    fuzz()
    print("fuzzed:", COUNTS)
    # a library that rejected everything would pass every check above
    assert COUNTS["returned"] >= 0.15 * sum(COUNTS.values()), COUNTS
