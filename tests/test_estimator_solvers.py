"""SoftmaxRegression's solvers, class weights, C=inf and max_iter=0 against LogisticRegression.

Every solver minimises the same objective and stops on the same rule
(max |gradient of the scaled objective| <= tol); with tol=1e-10 each reaches
LogisticRegression's coefficients (its own solver of the same name, or lbfgs,
run to tol=1e-10) within 1e-5 absolute in float64 (the optimum is that
well determined on these standardised data), 1e-3 in float32 (run to 1e-6).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import load_iris, load_wine  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import fastsoftmax as fs  # noqa: E402
from fastsoftmax.estimator import SoftmaxRegression  # noqa: E402

SOLVERS = ["lbfgs", "newton-cg", "newton-cholesky", "auto"]
TIGHT = dict(tol=1e-10, max_iter=10_000)


@pytest.fixture(scope="module")
def wine():
    X, y = load_wine(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def fit_both(X, y, solver, sample_weight=None, **kw):
    ref = LogisticRegression(solver="lbfgs" if solver == "auto" else solver, **TIGHT, **kw)
    ref.fit(X, y, sample_weight=sample_weight)
    ours = SoftmaxRegression(solver=solver, **TIGHT, **kw).fit(X, y, sample_weight=sample_weight)
    return ours, ref


def assert_same(ours, ref, atol=1e-5):
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=0, atol=atol)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=0, atol=atol)


@pytest.mark.parametrize("solver", SOLVERS)
def test_same_coefficients_as_logistic_regression(wine, solver):
    X, y = wine
    with warnings.catch_warnings():  # at 1e-10 a solver may stop on rounding first
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, ref = fit_both(X, y, solver, C=0.5)
        assert_same(ours, ref)
        ours, ref = fit_both(X, y, solver, C=2.0, fit_intercept=False)
        assert_same(ours, ref)
        assert np.all(ours.intercept_ == 0)
        # raw iris: badly scaled, where the Newton solvers shine
        Xi, yi = load_iris(return_X_y=True)
        ours, ref = fit_both(Xi, yi, solver, C=1.0)
        assert_same(ours, ref, atol=1e-4)


@pytest.mark.parametrize("solver", SOLVERS)
def test_sample_weight_class_weight_and_float32(wine, solver, rng):
    X, y = wine
    w = rng.random(len(y)) + 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, ref = fit_both(X, y, solver, sample_weight=w, C=0.3, class_weight="balanced")
        assert_same(ours, ref)
        ours, ref = fit_both(X, y, solver, class_weight={0: 3.0, 2: 0.5, 1: 1.0})
        assert_same(ours, ref)
        ref = LogisticRegression(**TIGHT).fit(X, y)
        # float32: converges to tol=1e-6; the coefficients' error is about
        # tol / (smallest Hessian eigenvalue ~ l2 = 1 / 178) = 2e-4
        ours = SoftmaxRegression(solver=solver, tol=1e-6, max_iter=1000).fit(
            X.astype(np.float32), y)
        assert_same(ours, ref, atol=1e-3)


def test_class_weight_is_a_sample_weight_and_scales_the_penalty(wine):
    """Class weights are sample weights, including in the total that scales l2:
    the fit equals the one with the products as sample_weight."""
    X, y = wine
    cw = {0: 2.0, 1: 0.25, 2: 1.0}
    a = SoftmaxRegression(class_weight=cw, **TIGHT).fit(X, y)
    b = SoftmaxRegression(**TIGHT).fit(X, y, sample_weight=np.array([cw[c] for c in y]))
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=0, atol=1e-9)
    balanced = SoftmaxRegression(class_weight="balanced", **TIGHT).fit(X, y)
    counts = np.bincount(y)
    w = (len(y) / (3 * counts))[y]
    c = SoftmaxRegression(**TIGHT).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(balanced.coef_, c.coef_, rtol=0, atol=1e-9)


def test_class_weight_errors_are_scikit_learns(wine):
    X, y = wine
    with pytest.raises(ValueError, match="not in class_weight"):
        SoftmaxRegression(class_weight={0: 2.0, 7: 1.0}).fit(X, y)


@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg", "newton-cholesky"])
def test_two_classes_match_binomial_logistic_regression(wine, solver):
    """Two classes: the multinomial fit's row difference W1 - W0 is the
    binomial fit with twice the C (the penalty splits evenly between the rows)."""
    X, y = wine
    keep = y < 2
    X, y = X[keep], y[keep]
    ours = SoftmaxRegression(solver=solver, C=0.4, **TIGHT).fit(X, y)
    ref = LogisticRegression(C=0.8, **TIGHT).fit(X, y)
    np.testing.assert_allclose(ours.coef_[1] - ours.coef_[0], ref.coef_[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.intercept_[1] - ours.intercept_[0], ref.intercept_[0],
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.predict_proba(X)[:, 1], ref.predict_proba(X)[:, 1],
                               atol=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
def test_tol_means_the_same_for_every_solver(wine, solver):
    """At the returned point the gradient of the scaled objective (mean loss +
    l2/2 ||W||^2, l2 = 1/(C m)), computed independently here, meets tol."""
    X, y = wine
    tol = 1e-6
    model = SoftmaxRegression(solver=solver, tol=tol, C=0.7, max_iter=1000).fit(X, y)
    _, dW, db = fs.loss_and_grad(model.coef_, X, y, b=model.intercept_,
                                 l2=1.0 / (0.7 * len(y)), method="numpy")
    assert max(np.max(np.abs(dW)), np.max(np.abs(db))) <= tol
    assert model.n_iter_[0] >= 1


def test_no_penalty_matches_logistic_regression(rng):
    """C=inf: no penalty (overlapping classes, so the optimum is finite)."""
    m, n, K = 400, 4, 3
    X = rng.standard_normal((m, n))
    y = rng.integers(0, K, m)
    ref = LogisticRegression(C=np.inf, **TIGHT).fit(X, y)
    for solver in ("lbfgs", "newton-cg", "newton-cholesky"):
        ours = SoftmaxRegression(C=np.inf, solver=solver, **TIGHT).fit(X, y)
        # no penalty: the rows are determined up to a common shift; compare
        # the centred rows (LogisticRegression's are centred by its solver)
        np.testing.assert_allclose(ours.coef_ - ours.coef_.mean(0),
                                   ref.coef_ - ref.coef_.mean(0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-8)


@pytest.mark.parametrize("solver", SOLVERS)
def test_max_iter_zero_keeps_the_start_and_warns(wine, solver):
    X, y = wine
    with pytest.warns(ConvergenceWarning, match="max_iter=0"):
        model = SoftmaxRegression(solver=solver, max_iter=0).fit(X, y)
    assert np.all(model.coef_ == 0) and np.all(model.intercept_ == 0)
    assert model.n_iter_[0] == 0
    np.testing.assert_allclose(model.objective_, np.log(3))
    # warm start: max_iter=0 keeps the previous coefficients, without a
    # warning when they already meet tol
    model.set_params(max_iter=100, warm_start=True).fit(X, y)
    coef = model.coef_.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model.set_params(max_iter=0).fit(X, y)
    np.testing.assert_array_equal(model.coef_, coef)


@pytest.mark.parametrize("solver", SOLVERS)
def test_convergence_warning_and_warm_start(solver):
    X, y = load_iris(return_X_y=True)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        model = SoftmaxRegression(solver=solver, max_iter=1, tol=1e-10,
                                  warm_start=True).fit(X, y)
    assert model.n_iter_[0] == 1
    first = model.objective_
    model.set_params(max_iter=1000, tol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)  # continues from the previous coefficients
        cold = SoftmaxRegression(solver=solver, max_iter=1000, tol=1e-8).fit(X, y)
    assert model.objective_ < first
    np.testing.assert_allclose(model.coef_, cold.coef_, rtol=0, atol=1e-4)


def test_auto_rule():
    from fastsoftmax._dispatch import AUTO_CHOLESKY_MAX_PARAMS, PCG_BLOCK_MAX_WIDTH

    X, y = load_iris(return_X_y=True)
    assert SoftmaxRegression().fit(X, y).solver_ == "newton-cholesky"
    rng = np.random.default_rng(0)
    n = AUTO_CHOLESKY_MAX_PARAMS // 3  # N = 3 (n + 1) > the threshold
    assert n + 1 <= PCG_BLOCK_MAX_WIDTH  # the block preconditioner applies
    wide = PCG_BLOCK_MAX_WIDTH  # n + 1 > PCG_BLOCK_MAX_WIDTH: it does not
    Xn = rng.standard_normal((60, n))
    Xw = rng.standard_normal((60, wide))
    Xs = rng.standard_normal((60, n - 1))
    Xw_spread = Xw * np.logspace(-2, 2, wide)  # standard deviations 10^-2..10^2
    Xw_spread[:, 0] = 5.0  # a constant column does not count
    labels = np.arange(60) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert SoftmaxRegression(max_iter=2).fit(Xn, labels).solver_ == "newton-cg"
        # wide, alike scales (standard-normal columns): L-BFGS
        assert SoftmaxRegression(max_iter=2).fit(Xw, labels).solver_ == "lbfgs"
        assert SoftmaxRegression(max_iter=2, fit_intercept=False).fit(
            Xw, labels).solver_ == "newton-cg"  # n = PCG_BLOCK_MAX_WIDTH
        assert SoftmaxRegression(max_iter=2).fit(Xw_spread, labels).solver_ == "newton-cg"
        assert SoftmaxRegression(max_iter=2).fit(Xs, labels).solver_ == "newton-cholesky"


def test_scale_spread_is_the_ratio_of_column_standard_deviations():
    """Against NumPy's std (a different formula: mean of squared deviations),
    constant columns left out, float32 and an offset column included."""
    from fastsoftmax._newton import scale_spread

    rng = np.random.default_rng(3)
    X = rng.standard_normal((500, 6)) * np.array([1.0, 3.0, 0.5, 7.0, 1.0, 1.0])
    X[:, 4] = 2.5  # constant
    X[:, 5] = 1e3 + 0.2 * X[:, 5]  # large mean, small spread
    std = X.std(axis=0)
    keep = std > 0
    want = std[keep].max() / std[keep].min()
    assert scale_spread(X) == pytest.approx(want, rel=1e-6)
    assert scale_spread(X.astype(np.float32)) == pytest.approx(want, rel=1e-3)
    assert scale_spread(np.ones((10, 3))) == 1.0


def test_sparse_input(wine):
    import scipy.sparse as sp

    X, y = wine
    Xs = sp.csr_matrix(X)
    model = SoftmaxRegression(**TIGHT).fit(Xs, y)
    assert model.solver_ == "newton-cg"  # "auto" on sparse X
    dense = SoftmaxRegression(solver="newton-cholesky", **TIGHT).fit(X, y)
    np.testing.assert_allclose(model.coef_, dense.coef_, rtol=0, atol=1e-6)
    lbfgs = SoftmaxRegression(solver="lbfgs", **TIGHT).fit(Xs, y)
    np.testing.assert_allclose(lbfgs.coef_, dense.coef_, rtol=0, atol=1e-6)
    with pytest.raises(ValueError,
                       match="solver='newton-cholesky' needs dense NumPy X.*sparse.*'newton-cg'"):
        SoftmaxRegression(solver="newton-cholesky").fit(Xs, y)


def test_dask_input(wine):
    da = pytest.importorskip("dask.array")
    X, y = wine
    Xd, yd = da.from_array(X, chunks=(60, -1)), da.from_array(y, chunks=60)
    cw = {0: 2.0, 1: 0.5, 2: 1.0}
    model = SoftmaxRegression(class_weight=cw, **TIGHT).fit(Xd, yd)
    assert model.solver_ == "lbfgs"
    dense = SoftmaxRegression(class_weight=cw, **TIGHT).fit(X, y)
    np.testing.assert_allclose(model.coef_, dense.coef_, rtol=0, atol=1e-6)
    balanced = SoftmaxRegression(class_weight="balanced", **TIGHT).fit(
        Xd, yd, sample_weight=np.linspace(0.5, 1.5, len(y)))
    dense = SoftmaxRegression(class_weight="balanced", **TIGHT).fit(
        X, y, sample_weight=np.linspace(0.5, 1.5, len(y)))
    np.testing.assert_allclose(balanced.coef_, dense.coef_, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="solver='newton-cg' needs dense NumPy or SciPy CSR X.*Dask"):
        SoftmaxRegression(solver="newton-cg").fit(Xd, yd)


@pytest.mark.parametrize("sparse", [False, True])
def test_newton_cg_stops_when_float32_rounding_is_reached(wine, sparse):
    """tol=1e-10 is below what float32 resolves: Newton-CG stops after a few
    steps without a decrease, with a ConvergenceWarning, not at max_iter
    (it ran all 10000 iterations, 350 s on sparse digits, before)."""
    import scipy.sparse as sp

    X, y = wine
    X32 = X.astype(np.float32)
    model = SoftmaxRegression(solver="newton-cg", tol=1e-10, max_iter=10_000)
    with pytest.warns(ConvergenceWarning, match="did not decrease"):
        model.fit(sp.csr_matrix(X32) if sparse else X32, y)
    assert model.n_iter_[0] < 200


def test_lbfgs_warns_when_it_stops_on_rounding_above_tol():
    """SciPy's L-BFGS-B also ends with status 0 when the objective's relative
    decrease falls to rounding level (ftol), with the gradient above gtol:
    the fit then warns, as the docs say every stop short of tol does.  The
    gradient at the result is computed here with loss_and_grad, apart from
    the solver; a tol the same fit meets gives no warning."""
    rng = np.random.default_rng(213)
    X = rng.standard_normal((200, 10))
    y = rng.integers(0, 3, 200)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = SoftmaxRegression(C=1.0, tol=1e-10, solver="lbfgs", max_iter=1000).fit(X, y)
    _, dW, db = fs.loss_and_grad(model.coef_, X, y, b=model.intercept_, l2=1.0 / 200)
    largest = max(np.abs(dW).max(), np.abs(db).max())
    assert largest > 1e-10 and model.n_iter_[0] < 1000  # stopped early, above tol
    assert [w for w in record if issubclass(w.category, ConvergenceWarning)
            and "rounding level" in str(w.message)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        SoftmaxRegression(C=1.0, tol=largest * 10, solver="lbfgs", max_iter=1000).fit(X, y)
