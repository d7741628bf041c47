"""The estimators' cheap validation of plain fit input (fastsoftmax._fit_input).

The oracle is scikit-learn's full ``validate_data`` (the checks the cheap
path skips), called directly on a fresh estimator: for plain input it must
return the very same arrays; for every other input ``validate_fit_data``
must do exactly what it does (same arrays, or the same error and
warnings), which holds by construction, so there the test's weight is in
``plain_arrays`` saying no.  Which inputs are
plain is known here from how each one is built, not from the function under
test.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse

sklearn = pytest.importorskip("sklearn")

from sklearn.utils.validation import validate_data  # noqa: E402

from fastsoftmax._fit_input import plain_arrays, validate_fit_data  # noqa: E402
from fastsoftmax.estimator import SoftmaxRegression  # noqa: E402
from fastsoftmax.estimator_cv import SoftmaxRegressionCV  # noqa: E402

X64 = np.random.default_rng(5).normal(size=(40, 3))
Y = np.arange(40) % 3


def full_validation(X, y):
    """scikit-learn's own checks, as the estimators asked for them before the cheap path."""
    return validate_data(SoftmaxRegression(), X, y, accept_sparse="csr",
                         dtype=[np.float64, np.float32], order="C")


PLAIN = {
    "float64": (X64, Y),
    "float32": (X64.astype(np.float32), Y),
    "int8 labels": (X64, Y.astype(np.int8)),
    "uint16 labels": (X64, Y.astype(np.uint16)),
    "bool labels": (X64, Y == 1),
    "one sample": (X64[:1].copy(), Y[:1].copy()),
    "one feature": (X64[:, :1].copy(), Y),
    "read-only": (np.frombuffer(X64.tobytes()).reshape(40, 3), Y),
}


@pytest.mark.parametrize("name", list(PLAIN))
def test_plain_input_is_what_full_validation_returns_unchanged(name):
    X, y = PLAIN[name]
    assert plain_arrays(X, y)
    Xf, yf = full_validation(X, y)
    assert Xf is X and np.shares_memory(yf, y) and np.array_equal(yf, y)  # the oracle's view
    assert yf.dtype == y.dtype
    estimator = SoftmaxRegression()
    estimator.feature_names_in_ = np.array(["a", "b", "c"], dtype=object)  # from a former fit
    Xv, yv = validate_fit_data(estimator, X, y)
    assert Xv is X and yv is y
    assert estimator.n_features_in_ == X.shape[1]
    assert not hasattr(estimator, "feature_names_in_")


@pytest.mark.parametrize("name", ["NaN in X", "inf in X", "sum overflows"])
def test_assume_finite_skips_the_sum(name):
    """Under ``sklearn.config_context(assume_finite=True)`` scikit-learn's
    checks let non-finite X through unchanged, so the cheap path takes it
    without summing X (a NaN would otherwise make it not plain)."""
    X, y = NOT_PLAIN[name]
    with sklearn.config_context(assume_finite=True):
        assert plain_arrays(X, y)
        Xf, _ = full_validation(X, y)
        assert Xf is X
        Xv, yv = validate_fit_data(SoftmaxRegression(), X, y)
        assert Xv is X and yv is y
    assert not plain_arrays(X, y)


def _big_endian(X):
    return X.astype(X.dtype.newbyteorder(">"))


NOT_PLAIN = {
    "list X": (X64.tolist(), Y),
    "list y": (X64, Y.tolist()),
    "Fortran X": (np.asfortranarray(X64), Y),
    "strided X": (X64[:, ::2], Y),
    "float16 X": (X64.astype(np.float16), Y),
    "int X": ((X64 * 10).astype(np.int64), Y),
    "big-endian X": (_big_endian(X64), Y),
    "matrix X": (X64.view(np.matrix), Y),
    "NaN in X": (np.where(np.arange(120).reshape(40, 3) == 7, np.nan, X64), Y),
    "inf in X": (np.where(np.arange(120).reshape(40, 3) == 7, -np.inf, X64), Y),
    "sum overflows": (np.full((40, 3), 1e307), Y),
    "1-D X": (X64[:, 0].copy(), Y),
    "3-D X": (X64.reshape(40, 3, 1), Y),
    "no samples": (X64[:0], Y[:0]),
    "no features": (X64[:, :0], Y),
    "complex X": (X64.astype(np.complex128), Y),
    "big-endian float32 X": (_big_endian(X64.astype(np.float32)), Y),
    "float32 sum overflows": (np.full((40, 3), 3e38, dtype=np.float32), Y),
    "CSR X": (scipy.sparse.csr_matrix(X64), Y),
    "float y": (X64, Y.astype(np.float64)),
    "string y": (X64, np.array(["a", "b", "c"])[Y]),
    "object y": (X64, Y.astype(object)),
    "column y": (X64, Y[:, None]),
    "strided y": (X64, np.repeat(Y, 2)[::2]),
    "short y": (X64, Y[:-1]),
}


def _outcome(validate, X, y):
    """One validation's (arrays, None, warnings), or (None, (exception type,
    message), warnings) when it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result, error = validate(X, y), None
        except Exception as raised:  # the outcome under comparison
            result, error = None, (type(raised), str(raised))
    return result, error, [(w.category, str(w.message)) for w in caught]


@pytest.mark.parametrize("name", list(NOT_PLAIN))
def test_other_input_gets_the_full_validation(name):
    X, y = NOT_PLAIN[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # an overflowing sum is not the user's
        assert not plain_arrays(X, y)
    expected, expected_error, expected_warnings = _outcome(full_validation, X, y)
    got, error, got_warnings = _outcome(
        lambda X, y: validate_fit_data(SoftmaxRegression(), X, y), X, y)
    assert error == expected_error and got_warnings == expected_warnings
    if expected is not None:
        for a, b in zip(got, expected):
            assert type(a) is type(b) and a.dtype == b.dtype
            if scipy.sparse.issparse(a):
                assert a.format == "csr"
                a, b = a.toarray(), b.toarray()
            assert a.flags.c_contiguous
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("estimator", [
    SoftmaxRegression(tol=1e-10), SoftmaxRegression(solver="lbfgs", tol=1e-10),
    SoftmaxRegressionCV(Cs=[0.1, 1.0], cv=2, tol=1e-10)], ids=["auto", "lbfgs", "cv"])
def test_plain_input_fits_the_model_of_validated_input(estimator):
    """The same data as plain arrays and as lists (which the full checks
    convert): the same model, bit for bit."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(200, 4)) * [1.0, 10.0, 0.1, 3.0]
    y = rng.integers(0, 3, size=200)
    plain = sklearn.base.clone(estimator).fit(X, y)
    converted = sklearn.base.clone(estimator).fit(X.tolist(), y.tolist())
    np.testing.assert_array_equal(plain.coef_, converted.coef_)
    np.testing.assert_array_equal(plain.intercept_, converted.intercept_)


@pytest.mark.parametrize("method", ["fused", "indexloop", "numpy"])
@pytest.mark.parametrize("solver", ["newton-cholesky", "newton-cg", "lbfgs"])
def test_no_weights_fit_as_unit_weights(solver, method):
    """Without sample or class weights the kernels run unweighted: the compiled
    methods give the very model of unit weights; the NumPy method sums the
    unweighted loss in another order, so there the solver may take another
    path to the same objective."""
    rng = np.random.default_rng(12)
    X = rng.normal(size=(300, 5)) * [1.0, 10.0, 0.1, 3.0, 1.0]
    y = rng.integers(0, 4, size=300)
    model = SoftmaxRegression(solver=solver, method=method, tol=1e-10, max_iter=10_000)
    unweighted = sklearn.base.clone(model).fit(X, y)
    unit = sklearn.base.clone(model).fit(X, y, sample_weight=np.ones(300))
    if method != "numpy":
        np.testing.assert_array_equal(unweighted.coef_, unit.coef_)
        np.testing.assert_array_equal(unweighted.intercept_, unit.intercept_)
        assert unweighted.n_iter_ == unit.n_iter_
        assert unweighted.objective_ == unit.objective_
    else:  # two L-BFGS paths to a gradient below 1e-10: objectives equal to about its square
        assert unweighted.objective_ == pytest.approx(unit.objective_, rel=1e-10)


@pytest.mark.parametrize("method", ["fused", "indexloop"])
def test_cv_without_weights_fits_as_unit_weights(method, monkeypatch):
    """SoftmaxRegressionCV without sample or class weights fits its folds and
    the refit unweighted (no weight vector reaches a fit): the very path,
    scores, choice and model of unit weights (the compiled methods sum both
    the same way)."""
    rng = np.random.default_rng(13)
    X = rng.normal(size=(240, 4)) * [1.0, 5.0, 0.2, 1.0]
    y = rng.integers(0, 3, size=240)
    model = SoftmaxRegressionCV(Cs=[0.1, 1.0, 10.0], cv=3, method=method, tol=1e-8)
    weights = []
    fit_encoded = SoftmaxRegression._fit_encoded
    monkeypatch.setattr(SoftmaxRegression, "_fit_encoded",
                        lambda self, X, y, classes, sw, *a: weights.append(sw)
                        or fit_encoded(self, X, y, classes, sw, *a))
    unweighted = sklearn.base.clone(model).fit(X, y)
    assert len(weights) == 3 * 3 + 1 and all(w is None for w in weights)
    unit = sklearn.base.clone(model).fit(X, y, sample_weight=np.ones(240))
    assert unweighted.C_ == unit.C_
    for name in ("coef_", "intercept_", "coefs_paths_", "scores_", "n_iter_"):
        a, b = getattr(unweighted, name), getattr(unit, name)
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
        else:
            np.testing.assert_array_equal(a, b)
