"""SoftmaxRegressionCV: scikit-learn's estimator checks, agreement with LogisticRegressionCV."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import load_wine  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastsoftmax.estimator_cv import SoftmaxRegressionCV  # noqa: E402
from helpers import auto_newton_cg_on_sparse_data, check_quietly, standardised  # noqa: E402


@parametrize_with_checks([SoftmaxRegressionCV(Cs=[0.1, 1.0], cv=2)],
                         expected_failed_checks=auto_newton_cg_on_sparse_data, xfail_strict=False)
def test_sklearn_estimator_checks(estimator, check):
    check_quietly(estimator, check)


@pytest.fixture(scope="module")
def wine():
    return standardised(load_wine)


def reference(X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (ConvergenceWarning, FutureWarning))
        return LogisticRegressionCV(tol=1e-8, max_iter=10_000, use_legacy_attributes=False,
                                    **kw).fit(X, y)


PATH = [0.001, 0.01, 0.1, 1.0, 10.0]  # C up to 10: fits well determined at tol=1e-8


@pytest.mark.parametrize("kw", [
    dict(Cs=PATH[::-1], refit=False, class_weight="balanced"),
    dict(Cs=PATH[1:], scoring="neg_log_loss", fit_intercept=False),
    dict(Cs=PATH, solver="newton-cg"),  # its preconditioner carried along each fold's path
])
def test_same_as_logistic_regression_cv(wine, kw):
    """Same folds and Cs: the same scores (to 1e-6), C_, paths and final
    coefficients as LogisticRegressionCV, both at tol=1e-8.  Each fit stops
    within about tol / (smallest Hessian eigenvalue) of the optimum, which
    grows with C (the penalty's curvature is 1 / (C m)): gaps measured on
    these data are <= 6e-8 for C <= 1 and 1.2e-5 at C = 10, hence
    atol = 2.5e-6 max(1, C)."""
    X, y = wine
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    ref = reference(X, y, cv=cv, **kw)
    ours = SoftmaxRegressionCV(cv=cv, tol=1e-8, max_iter=10_000, **kw).fit(X, y)
    np.testing.assert_allclose(ours.Cs_, ref.Cs_)
    np.testing.assert_allclose(ours.scores_, ref.scores_[:, 0], rtol=0, atol=1e-6)
    assert ours.C_ == pytest.approx(ref.C_)
    for j, C in enumerate(ours.Cs_):
        np.testing.assert_allclose(ours.coefs_paths_[:, j], ref.coefs_paths_[:, 0, j], rtol=0,
                                   atol=2.5e-6 * max(1.0, C))
    atol = 2.5e-6 * max(1.0, ours.C_)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=0, atol=atol)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=0, atol=atol)
    assert ours.n_iter_.shape == (3, len(ours.Cs_)) and np.all(ours.n_iter_ >= 1)
    assert ours.score(X, y) == pytest.approx(ref.score(X, y))


@pytest.mark.parametrize("scoring", [None, "accuracy", "neg_log_loss"])
def test_sample_weights_weigh_the_scores_as_in_logistic_regression_cv(wine, scoring):
    """With sample weights, each fold's held-out score is weighted by them, as
    LogisticRegressionCV weighs it (its scorer, or ``score`` for None): the
    same scores to 1e-6 and the same C_.  Integer weights, so that the
    unweighted scores differ from the weighted ones (checked)."""
    X, y = wine
    w = np.random.default_rng(5).integers(1, 6, X.shape[0]).astype(float)
    cv = list(StratifiedKFold(3, shuffle=True, random_state=2).split(X, y))
    kw = dict(Cs=[0.01, 0.1, 1.0], cv=cv, scoring=scoring)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (ConvergenceWarning, FutureWarning))
        ref = LogisticRegressionCV(tol=1e-8, max_iter=10_000, use_legacy_attributes=False,
                                   **kw).fit(X, y, sample_weight=w)
    ours = SoftmaxRegressionCV(tol=1e-8, max_iter=10_000, **kw).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(ours.scores_, ref.scores_[:, 0], rtol=0, atol=1e-6)
    assert ours.C_ == pytest.approx(ref.C_)
    unweighted = SoftmaxRegressionCV(tol=1e-8, max_iter=10_000, **kw).fit(X, y)
    assert np.max(np.abs(unweighted.scores_ - ours.scores_)) > 1e-4


def test_bad_cs_and_missing_classes(wine):
    X, y = wine
    with pytest.raises(ValueError, match="Cs must hold numbers > 0"):
        SoftmaxRegressionCV(Cs=[1.0, -1.0]).fit(X, y)
    order = np.argsort(y, kind="stable")  # unshuffled folds: a class missing from training
    with pytest.raises(ValueError, match="lack some classes"):
        SoftmaxRegressionCV(Cs=2, cv=[(order[:59], order[59:]), (order[59:], order[:59])]).fit(
            X[order], y[order])


def test_fold_paths_are_the_public_fits_and_accuracy(wine):
    """Each fold's path (fitted on data validated once, through
    ``_fit_encoded``) equals, bit for bit, SoftmaxRegression.fit with warm
    starts along the same Cs on the fold's rows, with class and sample
    weights; the default score is sklearn's accuracy_score of that model's
    predictions on the held-out rows, weighted by their sample weights (as
    LogisticRegressionCV scores)."""
    from sklearn.metrics import accuracy_score

    from fastsoftmax.estimator import SoftmaxRegression

    X, y = wine
    rng = np.random.default_rng(3)
    w = rng.random(X.shape[0]) + 0.5
    cv = StratifiedKFold(3, shuffle=True, random_state=1)
    kw = dict(class_weight={0: 2.0, 2: 0.5}, tol=1e-6)
    ours = SoftmaxRegressionCV(Cs=[0.01, 0.1, 1.0], cv=cv, **kw).fit(X, y, sample_weight=w)
    for f, (train, test) in enumerate(cv.split(X, y)):
        model = SoftmaxRegression(warm_start=True, **kw)
        for j, C in enumerate(ours.Cs_):
            model.set_params(C=C).fit(X[train], y[train], sample_weight=w[train])
            np.testing.assert_array_equal(ours.coefs_paths_[f, j, :, :-1], model.coef_)
            np.testing.assert_array_equal(ours.coefs_paths_[f, j, :, -1], model.intercept_)
            assert ours.n_iter_[f, j] == model.n_iter_[0]
            assert ours.scores_[f, j] == pytest.approx(
                accuracy_score(y[test], model.predict(X[test]), sample_weight=w[test]),
                rel=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_carried_end_sums_change_no_bit_of_the_paths(wine, dtype, monkeypatch, kernel_path):
    """Newton-CG along each fold's path starts each fit from the previous
    fit's last kernel sums (EndSums) instead of evaluating again: the paths,
    iteration counts and scores are bit for bit those of fits that evaluate
    afresh (the same kernel, chunks and tiles), and so are the objectives
    each fit went through; the sums were taken at every C but each fold's
    first.  Both dtypes, one chunk and several (kernel_path)."""
    import fastsoftmax._newton as newton
    import fastsoftmax.estimator as estimator

    X, y = wine
    X = X.astype(dtype)
    w = np.random.default_rng(5).random(X.shape[0]) + 0.5
    cv = StratifiedKFold(3, shuffle=True, random_state=2)
    kw = dict(Cs=[0.01, 0.1, 1.0, 10.0], cv=cv, solver="newton-cg",
              tol=1e-8 if dtype == np.float64 else 1e-4)
    recalled = []
    real = newton.EndSums.recall

    def spy(self, obj, x):
        out = real(self, obj, x)
        recalled.append(out is not None)
        return out

    histories = []
    solve = estimator.minimize_newton_pcg

    def recorded(*args, **kwargs):
        result = solve(*args, **kwargs)
        histories.append((result.history, result.loss, result.grad_max))
        return result

    monkeypatch.setattr(estimator, "minimize_newton_pcg", recorded)
    monkeypatch.setattr(newton.EndSums, "recall", spy)
    ours = SoftmaxRegressionCV(**kw).fit(X, y, sample_weight=w)
    assert recalled == [False, True, True, True] * 3
    carried, histories = histories, []
    monkeypatch.setattr(newton.EndSums, "recall", lambda self, obj, x: None)
    fresh = SoftmaxRegressionCV(**kw).fit(X, y, sample_weight=w)
    assert carried == histories
    np.testing.assert_array_equal(ours.coefs_paths_, fresh.coefs_paths_)
    np.testing.assert_array_equal(ours.n_iter_, fresh.n_iter_)
    np.testing.assert_array_equal(ours.scores_, fresh.scores_)


def test_a_fold_without_weight_is_refused(wine):
    """A training fold whose sample weights are all zero: a ValueError naming
    the fold (the data as a whole have weight)."""
    X, y = wine
    rows = np.arange(X.shape[0])
    w = (rows % 2).astype(float)  # the even rows weigh nothing
    cv = [(rows[rows % 2 == 0], rows[rows % 2 == 1])]
    with pytest.raises(ValueError, match="fold 0's training samples sum to zero"):
        SoftmaxRegressionCV(Cs=[1.0], cv=cv).fit(X, y, sample_weight=w)


def test_sparse_x_with_newton_cholesky_is_refused_up_front(wine):
    """As SoftmaxRegression: a ValueError naming the solvers that fit sparse X."""
    import scipy.sparse

    X, y = wine
    with pytest.raises(ValueError, match="solver='newton-cholesky' needs dense NumPy X"):
        SoftmaxRegressionCV(Cs=[1.0], cv=2, solver="newton-cholesky").fit(
            scipy.sparse.csr_matrix(X), y)
