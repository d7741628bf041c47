"""SoftmaxRegression: scikit-learn's estimator checks, agreement with LogisticRegression."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastsoftmax as fs  # noqa: E402
from fastsoftmax.estimator import SoftmaxRegression  # noqa: E402
from helpers import (assert_same_model_as_logistic_regression,  # noqa: E402
                     auto_newton_cg_on_sparse_data, check_quietly, standardised)


# newton-cg runs with a tight tol: at the default 1e-4 its truncated CG steps
# carry the rounding of a different sample order (weighted vs repeated samples
# in check_sample_weight_equivalence) into differences of ~1e-7 in the
# probabilities, above that check's rtol of 1e-7; at 1e-8 they are ~1e-10.
@parametrize_with_checks([
    SoftmaxRegression(), SoftmaxRegression(solver="lbfgs"),
    SoftmaxRegression(solver="newton-cg", tol=1e-8), SoftmaxRegression(solver="newton-cholesky")],
    expected_failed_checks=auto_newton_cg_on_sparse_data, xfail_strict=False)
def test_sklearn_estimator_checks(estimator, check):
    check_quietly(estimator, check)


@pytest.fixture(scope="module")
def digits():
    return standardised(load_digits)


@pytest.mark.parametrize("C", [1.0, 0.05])
def test_same_model_as_logistic_regression_on_digits(digits, C):
    """scikit-learn's bundled digits (1797 x 64, 10 classes), standardised."""
    X, y = digits
    assert_same_model_as_logistic_regression(X, y, C)


def test_sample_weight_and_string_labels(digits):
    X, y = digits
    X, y = X[:600], y[:600]
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven",
                      "eight", "nine"])[y]
    w = np.random.default_rng(0).random(600) + 0.5
    ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(X, names, sample_weight=w)
    ours = SoftmaxRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(X, names, sample_weight=w)
    assert list(ours.classes_) == list(ref.classes_)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-4)
    assert (ours.predict(X) == ref.predict(X)).all()
    assert ours.predict(X).dtype == names.dtype


def test_pipeline_and_grid_search(digits):
    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), SoftmaxRegression(max_iter=300))
    search = GridSearchCV(pipe, {"softmaxregression__C": [0.1, 1.0]}, cv=3).fit(X, y)
    assert search.best_score_ > 0.9
    assert search.predict(X[:5]).shape == (5,)


def test_methods_fit_the_same_model(digits):
    X, y = digits
    fits = [SoftmaxRegression(method=m, tol=1e-8, max_iter=2000).fit(X[:400], y[:400])
            for m in ("fused", "numpy", "indexloop")]
    for f in fits[1:]:
        np.testing.assert_allclose(f.coef_, fits[0].coef_, atol=1e-5)


def test_outputs(digits):
    X, y = digits
    model = SoftmaxRegression(max_iter=500).fit(X, y)
    P = model.predict_proba(X)
    assert P.shape == (len(y), 10)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.exp(model.predict_log_proba(X)), P, rtol=1e-10)
    assert model.decision_function(X).shape == (len(y), 10)
    assert model.n_features_in_ == 64 and model.n_iter_.shape == (1,)
    binary = SoftmaxRegression().fit(X[y < 2], y[y < 2])
    assert binary.coef_.shape == (2, 64) and binary.decision_function(X[:3]).shape == (3,)


def test_convergence_warning_and_warm_start(digits):
    X, y = digits
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        model = SoftmaxRegression(solver="lbfgs", max_iter=3, warm_start=True).fit(X, y)
    first = model.objective_
    with pytest.warns(ConvergenceWarning):
        model.fit(X, y)  # continues from the previous coefficients
    assert model.objective_ < first


def test_float32_data_stays_fast_and_close(digits):
    X, y = digits
    m64 = SoftmaxRegression(tol=1e-6, max_iter=1000).fit(X, y)
    m32 = SoftmaxRegression(tol=1e-6, max_iter=1000).fit(X.astype(np.float32), y)
    np.testing.assert_allclose(m32.coef_, m64.coef_, atol=2e-2)


@pytest.mark.parametrize("params", [
    dict(C=0), dict(C=-1.0), dict(C=True), dict(C=-np.inf), dict(C=np.nan), dict(C="1"),
    dict(max_iter=-1), dict(max_iter=True), dict(max_iter=2.0), dict(tol=-1.0), dict(tol=np.nan),
    dict(tol=False), dict(method="fast"), dict(fit_intercept=1), dict(fit_intercept="yes"),
    dict(warm_start=None), dict(warm_start=0), dict(verbose=-1), dict(verbose=1.5),
    dict(solver="newton"), dict(solver=None), dict(class_weight="auto"), dict(class_weight=[1, 2]),
])
def test_bad_parameters(digits, params):
    """scikit-learn's parameter validation (a ValueError), naming the parameter."""
    from sklearn.utils._param_validation import InvalidParameterError

    X, y = digits
    (name, value), = params.items()
    with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of SoftmaxRegression"):
        SoftmaxRegression(**params).fit(X[:50], y[:50])
    assert issubclass(InvalidParameterError, ValueError)


@pytest.mark.parametrize("params", [
    dict(C=1), dict(C=np.float32(0.5)), dict(max_iter=np.int64(5)), dict(tol=0),
    dict(verbose=True), dict(verbose=2), dict(fit_intercept=np.bool_(False)),
    dict(warm_start=True), dict(C=np.inf), dict(max_iter=0), dict(solver="lbfgs"),
    dict(solver="newton-cg"), dict(solver="newton-cholesky"), dict(class_weight="balanced"),
    dict(class_weight={0: 2.0}),
])
def test_good_parameters(digits, params, capsys):
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = SoftmaxRegression(**params).fit(X[:50], y[:50])
    assert model.coef_.shape == (len(np.unique(y[:50])), 64)
    if params.get("verbose"):
        assert "objective" in capsys.readouterr().out


@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg", "newton-cholesky"])
@pytest.mark.parametrize("max_iter", [0, 2])
def test_convergence_warning_points_at_the_caller(digits, solver, max_iter):
    X, y = digits
    with pytest.warns(ConvergenceWarning) as record:
        SoftmaxRegression(max_iter=max_iter, solver=solver, tol=1e-12).fit(X[:50], y[:50])
    assert record[0].filename == __file__


def test_top_level_name_and_missing_sklearn_message():
    assert fs.SoftmaxRegression is SoftmaxRegression
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "import fastsoftmax as fs\n"
            "try:\n    fs.SoftmaxRegression\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "fastsoftmax[sklearn]" in out.stdout


def test_star_import_without_sklearn():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "from fastsoftmax import *\n"
            "print(loss_and_grad.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "loss_and_grad"
