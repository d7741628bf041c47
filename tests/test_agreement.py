"""Every method against the float64 oracle and against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsoftmax as fs
from fastsoftmax.tools.problems import ignore_labels
from helpers import (DTYPES, METHODS, assert_results_close, central_differences,
                     draw_dense_problem, f64, grid_problem, ignore_index_problem, make_problem,
                     over_ignore_index_cases, over_option_grid)
from naive import naive_loss_and_grad



@over_option_grid
def test_matches_oracle(method, dtype, target, opt, rng, kernel_path):
    W, X, y, kw = grid_problem(rng, dtype, target, opt)
    got = fs.loss_and_grad(W, X, y, method=method, **kw)
    want, scales = naive_loss_and_grad(*f64(W, X), y, return_scales=True, **kw)
    assert_results_close(got, want, dtype, scales)


@over_ignore_index_cases
def test_ignore_index_matches_oracle(method, dtype, extra, rng, kernel_path):
    W, X, y, kw = ignore_index_problem(rng, dtype, extra)
    for reduction in ("mean", "sum"):
        got = fs.loss_and_grad(W, X, y, ignore_index=-100, reduction=reduction, method=method, **kw)
        want, scales = naive_loss_and_grad(*f64(W, X), y, ignore_index=-100,
                                           reduction=reduction, return_scales=True, **kw)
        assert_results_close(got, want, dtype, scales)
    # ignoring is the same as leaving the samples out
    keep = y != -100
    sub = {k: (v[keep] if k == "sample_weight" else v) for k, v in kw.items()}
    left_out = fs.loss_and_grad(W, X[keep], y[keep], method=method, **sub)
    assert_results_close(fs.loss_and_grad(W, X, y, ignore_index=-100, method=method, **kw),
                         left_out, dtype)


@pytest.mark.parametrize("method", METHODS)
def test_methods_agree_with_each_other(method, rng):
    """Between methods: the stated rtol, on a larger problem with every option."""
    for dtype in DTYPES:
        m, n, K = 2000, 17, 7
        W, X, y = make_problem(rng, m, n, K, dtype)
        kw = dict(b=rng.standard_normal(K).astype(dtype), sample_weight=rng.random(m),
                  l2=0.01, label_smoothing=0.05)
        ref = fs.loss_and_grad(W, X, y, method="numpy", **kw)
        assert_results_close(fs.loss_and_grad(W, X, y, method=method, **kw), ref, dtype)


# --- finite differences -------------------------------------------------------

FD = {np.dtype(np.float64): (1e-5, 1e-7), np.dtype(np.float32): (2.0**-7, 2e-3)}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", ["labels", "probs", "nonneg"])
@pytest.mark.parametrize("opt", ["plain", "all", "ignore"])
def test_finite_differences(method, dtype, target, opt, rng, kernel_path):
    """dW and db against central differences of the method's own loss.

    Steps and absolute tolerances: float64 h = 1e-5, atol 1e-7;
    float32 h = 2^-7, atol 2e-3 (relative to the gradient's largest entry).
    """
    dtype = np.dtype(dtype)
    h, atol = FD[dtype]
    m, n, K = 23, 4, 3
    W, X, y = make_problem(rng, m, n, K, dtype, target)
    b = rng.standard_normal(K).astype(dtype)
    kw = {"b": b}
    if opt == "all":
        kw.update(sample_weight=rng.random(m), l2=0.3, label_smoothing=0.1)
    elif opt == "ignore":
        if target != "labels":
            pytest.skip("ignore_index needs class-index targets")
        y = ignore_labels(y, rng)
        kw["ignore_index"] = -100
    loss, dW, db = fs.loss_and_grad(W, X, y, method=method, **kw)
    fW = central_differences(
        lambda A: fs.loss_and_grad(A, X, y, method=method, **kw)[0], W, h)
    fb = central_differences(
        lambda B: fs.loss_and_grad(W, X, y, method=method, **{**kw, "b": B})[0], b, h)
    scale = max(np.abs(fW).max(), np.abs(fb).max(), 1.0)
    np.testing.assert_allclose(dW, fW, rtol=0, atol=atol * scale)
    np.testing.assert_allclose(db, fb, rtol=0, atol=atol * scale)


# --- property-based -----------------------------------------------------------

@st.composite
def problems(draw):
    rng, W, X, y, kw, dtype = draw_dense_problem(draw)
    return W, X, y, kw, dtype


def test_float32_gradient_below_the_smallest_normal(kernel_path):
    """A regression found by hypothesis: one float32 sample with logits far
    apart, so two classes' probabilities (about 1e-57) underflow in float32
    and their dW entries (2e-57 in float64) come back as 0, within
    ``finfo(float32).tiny`` of the oracle; everything else to the float32
    tolerance."""
    W = np.array([[-1.7493839, -21.057667, 31.679482], [-31.142288, 42.012337, 0.0934968],
                  [2.3923435, -17.037746, 21.475468], [-12.587622, -5.7172484, -15.535764]],
                 dtype=np.float32)
    X = np.array([[-0.49977124, 0.10508841, 2.9343328]], dtype=np.float32)
    y = np.array([2.0])
    want, scales = naive_loss_and_grad(*f64(W, X), y, return_scales=True)
    assert 0 < np.min(np.abs(want[1])) < 1e-50  # the case: entries below float32's range
    for method in METHODS:
        got = fs.loss_and_grad(W, X, y, method=method)
        assert_results_close(got, want, np.float32, scales)


@pytest.mark.parametrize("targets", ["labels", "one-hot rows"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_float32_true_class_of_probability_near_one(targets, sparse):
    """One float32 sample whose true class has probability 1 - 2e-9.  In
    float32 that probability is 1 and p - 1 is 0, but the gradient entry,
    -exp(-20) / (1 + exp(-20)), is an ordinary float32 number: every method
    returns it to float32 rounding (found by a review: the NumPy method formed
    p - t in float32 and returned 0)."""
    import scipy.sparse

    X = np.array([[1.0]], np.float32)
    W = np.array([[20.0], [0.0]], np.float32)
    y = np.array([0]) if targets == "labels" else np.array([[1.0, 0.0]], np.float32)
    exact = -np.exp(-20.0) / (1.0 + np.exp(-20.0))  # p_0 - 1, in closed form
    Xin = scipy.sparse.csr_matrix(X) if sparse else X
    for method in METHODS:
        loss, dW = fs.loss_and_grad(W, Xin, y, method=method)
        np.testing.assert_allclose(dW[:, 0], [exact, -exact], rtol=1e-6, err_msg=method)
        np.testing.assert_allclose(loss, np.log1p(np.exp(-20.0)), rtol=1e-6, err_msg=method)


@given(problems())
# kernel_path only sets module constants, the same for every example
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_all_methods_match_oracle(kernel_path, problem):
    W, X, y, kw, dtype = problem
    want, scales = naive_loss_and_grad(*f64(W, X), y, return_scales=True, **kw)
    for method in METHODS:
        got = fs.loss_and_grad(W, X, y, method=method, **kw)
        assert_results_close(got, want, dtype, scales)
