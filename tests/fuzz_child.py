"""The fuzzing body, run in a child process by test_fuzz.py so that a crash
(segfault, abort) fails that test instead of killing the test session.

Every call must either return results equal to a reference (NumPy method or
SciPy; for the logits entry point its loss and dZ^T Z), NaN-propagating when
the input holds NaN or inf, or raise ValueError or TypeError; and at least
15% of the calls must return (so that rejecting everything cannot pass).  Before each call the case is written to the file named by the
first argument, so a crash can be traced to it.
"""

from __future__ import annotations

import sys

import numpy as np
import scipy.special as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsoftmax as fs

TRACE = sys.argv[1]
COUNTS = {"returned": 0, "rejected": 0}
DTYPES = ["float64"] * 4 + ["float32"] * 3 + ["int64", "float16", "bool", "complex128", "object"]


def array(draw, shape, dtype, rng):
    a = rng.standard_normal(shape) * draw(st.sampled_from([1e-3, 1.0, 1e3, 1e6]))
    if draw(st.integers(0, 9)) == 0 and a.size:
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    a = a.astype(dtype) if dtype != "object" else a.astype(object)
    layout = draw(st.sampled_from(["C", "F", "strided", "readonly"]))
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim >= 1:
        big = np.zeros((a.shape[0] * 2,) + a.shape[1:], a.dtype)
        big[::2] = a
        a = big[::2]
    elif layout == "readonly":
        a.flags.writeable = False
    return a


@st.composite
def cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    func = draw(st.sampled_from(["loss_and_grad", "logits", "softmax", "log_softmax",
                                 "logsumexp"]))
    m, n, K = draw(st.integers(0, 300)), draw(st.integers(0, 9)), draw(st.integers(0, 7))
    dtype = draw(st.sampled_from(DTYPES))
    kw = {}
    if func in ("softmax", "log_softmax", "logsumexp"):
        shape = draw(st.sampled_from([(m, K), (K,), (m, K, 2)]))
        return func, (array(draw, shape, dtype, rng),), kw
    labels = (rng.integers(-2, K + 2, m) if draw(st.integers(0, 4)) == 0
              else rng.integers(0, max(K, 1), m))
    y = labels if draw(st.booleans()) else rng.random((m, max(K, 1)))
    if draw(st.booleans()):
        kw["sample_weight"] = rng.random(m) * draw(st.sampled_from([1.0] * 6 + [-1.0, np.nan]))
    kw["label_smoothing"] = draw(st.sampled_from([0.0] * 4 + [0.1] * 3 + [-0.5, 1.0]))
    kw["reduction"] = draw(st.sampled_from(["mean"] * 4 + ["sum"] * 3 + ["bad"]))
    if draw(st.integers(0, 3)) == 0:
        kw["ignore_index"] = draw(st.sampled_from([-1, -2, 0, 2.5]))
    if func == "logits":
        return func, (array(draw, (m, K), dtype, rng), y), kw
    if draw(st.booleans()):
        kw["b"] = array(draw, (K,), "float64", rng)
    kw["l2"] = draw(st.sampled_from([0.0] * 4 + [0.5] * 3 + [-1.0]))
    kw["method"] = draw(st.sampled_from(["fused", "indexloop", "numpy"]))
    return func, (array(draw, (K, n), "float64", rng), array(draw, (m, n), dtype, rng), y), kw


def call(func, args, kw):
    if func == "loss_and_grad":
        return fs.loss_and_grad(*args, **kw)
    if func == "logits":
        return fs.loss_and_grad_logits(*args, **kw)
    return getattr(fs, func)(*args)


def reference(func, args, kw):
    if func == "loss_and_grad":
        return fs.loss_and_grad(*args, **{**kw, "method": "numpy"})
    if func == "logits":  # loss_and_grad with W = I: same loss, and dW = dZ^T Z
        Z, y = args
        K = Z.shape[1]
        return fs.loss_and_grad(np.eye(K), Z, y, **{**kw, "method": "numpy"})
    Z = np.asarray(args[0], dtype=np.float64)
    return (getattr(sp, func)(Z, axis=-1),)


@settings(max_examples=int(sys.argv[2]), deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(cases())
def fuzz(case):
    func, args, kw = case
    with open(TRACE, "w") as fh:
        fh.write(repr((func, [getattr(a, "shape", a) for a in args], kw)))
    try:
        got = call(func, args, kw)
    except (ValueError, TypeError):
        COUNTS["rejected"] += 1
        return
    COUNTS["returned"] += 1
    got = got if isinstance(got, tuple) else (got,)
    want = reference(func, args, kw)
    if func == "logits":
        Z = np.asarray(args[0], dtype=np.float64)
        if np.isfinite(Z).all():
            got = (got[0], np.asarray(got[1], dtype=np.float64).T @ Z)
        else:  # dropped rows make 0 * NaN there: compare the losses only
            got, want = got[:1], want[:1]
    for g, w in zip(got, want):
        g = np.asarray(g, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        bad = ~np.isfinite(w)
        if bad.any():  # NaN or inf in the reference: it must show in the result too
            assert not np.isfinite(g).all(), (func, kw, g, w)
            continue
        tol = 1e-3 if any(getattr(a, "dtype", None) in (np.float32, np.float16) for a in args) else 1e-7
        scale = max(1.0, float(np.abs(w).max())) if w.size else 1.0
        assert np.allclose(g, w, rtol=tol, atol=tol * scale), (func, kw, g, w)


if __name__ == "__main__":
    fuzz()
    print("fuzzed:", COUNTS)
    # a library that rejected everything would pass every check above
    assert COUNTS["returned"] >= 0.15 * sum(COUNTS.values()), COUNTS
