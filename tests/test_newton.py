"""The second-order solvers of fastsoftmax._newton reach L-BFGS's optimum."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

import fastsoftmax as fs
from fastsoftmax._newton import (minimize_newton_cholesky, minimize_newton_pcg,
                                 minimize_trust_newton)


def lbfgs_reference(X, y, K, fit_intercept, **kw):
    """SciPy's L-BFGS-B on fs.loss_and_grad in float64, run to a gradient of 1e-10."""
    n = X.shape[1]
    X = X.astype(np.float64)

    def fun(x):
        W = x[: K * n].reshape(K, n)
        out = fs.loss_and_grad(W, X, y, b=x[K * n:] if fit_intercept else None, **kw)
        return out[0], np.concatenate([np.ravel(g) for g in out[1:]])

    x0 = np.zeros(K * n + K * fit_intercept)
    res = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B",
                                  options={"gtol": 1e-10, "ftol": 0, "maxiter": 20000})
    return res.fun


SOLVERS = {
    "trust-ncg": lambda *a, **k: minimize_trust_newton(*a, solver="trust-ncg", **k),
    "trust-krylov": lambda *a, **k: minimize_trust_newton(*a, solver="trust-krylov", **k),
    "newton-cholesky": minimize_newton_cholesky,
    "newton-pcg": minimize_newton_pcg,
}


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reaches_the_lbfgs_optimum(solver, fit_intercept, dtype, rng):
    """On a badly scaled problem with weights, smoothing and an L2 penalty:
    max |gradient| <= tol (1e-8 in float64, 1e-5 in float32) and the
    objective within 1e-12 (float64) / 1e-6 (float32) of L-BFGS's, relative."""
    m, n, K = 300, 5, 4
    X = (rng.standard_normal((m, n)) * np.logspace(-1, 1, n)).astype(dtype)
    y = rng.integers(0, K, m)
    kw = dict(sample_weight=rng.random(m) + 0.5, l2=1e-3, label_smoothing=0.05)
    tol, rtol = (1e-8, 1e-12) if dtype == np.float64 else (1e-5, 1e-6)
    best = lbfgs_reference(X, y, K, fit_intercept, **kw)
    res = SOLVERS[solver](X, y, fit_intercept=fit_intercept, tol=tol, **kw)
    assert res.converged, res.message
    assert res.grad_max <= tol
    assert res.W.dtype == dtype and res.W.shape == (K, n)
    assert (res.b is not None) == fit_intercept
    assert abs(res.loss - best) <= rtol * abs(best)
    # the reported loss is the objective at the returned point
    again = fs.loss_and_grad(res.W, X, y, b=res.b, **kw)[0]
    assert again == res.loss


def test_unpenalised_intercept_direction_is_harmless(rng):
    """With l2 = 0 every class shift is a null direction of the Hessian: the
    Cholesky solver still converges and keeps the solution bounded."""
    m, n, K = 200, 3, 3
    X = rng.standard_normal((m, n))
    y = rng.integers(0, K, m)
    res = minimize_newton_cholesky(X, y, l2=0.0, tol=1e-9)
    assert res.converged, res.message
    assert np.all(np.abs(res.W) < 10) and np.all(np.abs(res.b) < 10)


def test_bad_solver_name():
    with pytest.raises(ValueError, match="solver must be"):
        minimize_trust_newton(np.zeros((3, 2)), np.array([0, 1, 0]), solver="lbfgs")


@pytest.mark.parametrize("solver", ["newton-cholesky", "newton-pcg"])
def test_steps_stay_off_the_null_directions(solver, rng):
    """From zero, the intercepts' sum stays 0 (and with l2 = 0 each column of
    W sums to 0): the objective is flat along a common shift, the exact
    Newton step has no component there, and the drivers remove the one
    rounding puts in (amplified ~1e10 by the Cholesky solver's diagonal shift)."""
    m, n, K = 40, 30, 3  # more features than samples: many tiny eigenvalues
    X = rng.random((m, n))
    y = rng.integers(0, K, m)
    w = rng.integers(0, 5, m).astype(float)
    for l2 in (1.0 / w.sum(), 0.0):
        res = SOLVERS[solver](X, y, n_classes=K, sample_weight=w, l2=l2, tol=1e-6, max_iter=50)
        assert abs(res.b.sum()) <= 1e-12 * max(1.0, np.abs(res.b).max())
        if l2 == 0.0:
            assert np.all(np.abs(res.W.sum(axis=0)) <= 1e-12 * max(1.0, np.abs(res.W).max()))
