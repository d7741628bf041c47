"""linear_cross_entropy: the loss and the gradients for X, W and b of an output layer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsoftmax as fs
from helpers import assert_close, central_differences, draw_linear_ce_problem, options_from_table
from naive import naive_linear_cross_entropy

METHODS = ["fused", "indexloop", "numpy"]
DTYPES = [np.float32, np.float64]


def data(rng, m, n, K, dtype, target="labels"):
    X = rng.standard_normal((m, n)).astype(dtype)
    W = (0.7 * rng.standard_normal((K, n))).astype(dtype)
    if target == "labels":
        y = rng.integers(0, K, m)
    else:  # unnormalised non-negative dense targets
        y = 2.0 * rng.random((m, K))
    return X, W, y


def check(got, want, scales, dtype):
    assert len(got) == len(want)
    assert isinstance(got[0], float)
    for name, g, w, s in zip(("loss", "dX", "dW", "db"), got, want, scales):
        if name != "loss":
            assert g.dtype == np.dtype(dtype) and g.shape == np.shape(w), name
        assert_close(g, w, dtype, name, s)


OPTIONS = {
    "plain": {},
    "all": {"b": "b", "sample_weight": "w", "l2": 0.3, "label_smoothing": 0.1},
    "sum": {"b": "b", "reduction": "sum"},
    "ignore": {"ignore_index": -100, "sample_weight": "w"},
}


def options(name, rng, m, K, dtype):
    return options_from_table(OPTIONS, name, rng, m, K, dtype)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", ["labels", "dense"])
@pytest.mark.parametrize("opt", list(OPTIONS))
def test_matches_oracle(method, dtype, target, opt, rng, kernel_path):
    m, n, K = 37, 6, 5
    X, W, y = data(rng, m, n, K, dtype, target)
    kw = options(opt, rng, m, K, dtype)
    if opt == "ignore":
        if target != "labels":
            pytest.skip("ignore_index needs class-index targets")
        y = y.copy()
        y[rng.random(m) < 0.3] = -100
        y[0] = 1
    got = fs.linear_cross_entropy(X, W, y, method=method, **kw)
    want, scales = naive_linear_cross_entropy(X, W, y, return_scales=True, **kw)
    check(got, want, scales, dtype)
    if opt == "ignore":
        assert np.all(got[1][y == -100] == 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_same_loss_and_weights_gradient_as_loss_and_grad(method, rng, kernel_path):
    X, W, y = data(rng, 200, 9, 4, np.float64)
    b = rng.standard_normal(4)
    loss, dX, dW, db = fs.linear_cross_entropy(X, W, y, b=b, l2=0.1, method=method)
    ref = fs.loss_and_grad(W, X, y, b=b, l2=0.1, method=method)
    assert loss == ref[0]
    np.testing.assert_array_equal(dW, ref[1])
    np.testing.assert_array_equal(db, ref[2])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_input_gradient_matches_finite_differences(method, dtype, rng, kernel_path):
    """dX against central differences of the method's own loss (float64 h 1e-5,
    atol 1e-7; float32 h 2^-7, atol 2e-3, relative to dX's largest entry)."""
    h, atol = (1e-5, 1e-7) if dtype == np.float64 else (2.0**-7, 2e-3)
    X, W, y = data(rng, 11, 4, 3, dtype)
    kw = dict(b=rng.standard_normal(3).astype(dtype), sample_weight=rng.random(11),
              label_smoothing=0.1)
    dX = fs.linear_cross_entropy(X, W, y, method=method, **kw)[1]
    fd = central_differences(lambda A: fs.loss_and_grad(W, A, y, method=method, **kw)[0], X, h)
    np.testing.assert_allclose(dX, fd, rtol=0, atol=atol * max(1.0, np.abs(fd).max()))


def test_layouts_of_x(rng, kernel_path):
    X, W, y = data(rng, 60, 5, 3, np.float64)
    want = fs.linear_cross_entropy(X, W, y)
    for Xl in (np.asfortranarray(X), np.repeat(X, 2, axis=0)[::2]):
        got = fs.linear_cross_entropy(Xl, W, y)
        assert got[1].flags.c_contiguous
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-15)


@st.composite
def problems(draw):
    return draw_linear_ce_problem(draw, 40, 7, 6)


@given(problems())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_all_methods_match_oracle(kernel_path, problem):
    X, W, y, kw, dtype = problem
    want, scales = naive_linear_cross_entropy(X, W, y, return_scales=True, **kw)
    for method in METHODS:
        check(fs.linear_cross_entropy(X, W, y, method=method, **kw), want, scales, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [{}, {"label_smoothing": 0.2}, {"ignore_index": 1},
                                  {"reduction": "sum"}])
def test_matches_pytorch(dtype, case, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    X, W, y = data(rng, 50, 8, 6, dtype)
    b = rng.standard_normal(6).astype(dtype)
    Xt = torch.from_numpy(X.copy()).requires_grad_()
    Wt = torch.from_numpy(W.copy()).requires_grad_()
    bt = torch.from_numpy(b.copy()).requires_grad_()
    tkw = dict(case)
    loss_t = F.cross_entropy(F.linear(Xt, Wt, bt), torch.from_numpy(y), **tkw)
    loss_t.backward()
    got = fs.linear_cross_entropy(X, W, y, b=b, **case)
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    assert got[0] == pytest.approx(loss_t.item(), rel=rtol)
    for g, t in zip(got[1:], (Xt.grad, Wt.grad, bt.grad)):
        t = t.numpy()
        np.testing.assert_allclose(g, t, rtol=rtol, atol=rtol * np.abs(t).max())
