"""``SoftmaxRegressionCV``: ``SoftmaxRegression`` with C chosen by cross-validation.

For each fold, the model is fitted along the regularisation path ``Cs`` in the
order given, each fit starting from the previous one's coefficients (warm
starts: along a path of growing C each fit is a few Newton steps; Newton-CG
also goes on with the previous fit's block preconditioner,
:class:`fastsoftmax._newton.BlockInverses`, and, with its compiled steps,
starts from the kernel sums at the previous fit's end point when it last
evaluated there, :class:`fastsoftmax._newton.EndSums`, instead of a first
pass over the fold), and scored on the fold's
held-out samples.  The best C maximises the score summed
over folds; with ``refit`` the model is then fitted on all the data with it,
starting from the folds' mean coefficients at that C.  As scikit-learn's
``LogisticRegressionCV`` (multinomial, L2), with its attributes in the layout
of its ``use_legacy_attributes=False`` (without the l1_ratios axis).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import _fit_context
from sklearn.metrics import check_scoring, get_scorer_names
from sklearn.model_selection import check_cv
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight

from ._api import loss_and_grad
from ._class_weight import apply_class_weight, class_weight_vector
from ._fit_input import validate_fit_data
from ._newton import BlockInverses, EndSums
from ._sparse import is_sparse
from ._validation import is_dask_collection
from .estimator import SoftmaxRegression


class SoftmaxRegressionCV(SoftmaxRegression):
    """Softmax regression with the inverse regularisation C chosen by cross-validation.

    Parameters
    ----------
    Cs : int or array-like of float > 0, default 10
        The path of C values, fitted in this order with warm starts; an int
        gives that many values on a log scale between 1e-4 and 1e4 (as
        ``LogisticRegressionCV``).
    cv : int, cross-validation generator or iterable, default None
        As in ``LogisticRegressionCV``: None is 5-fold, an int that many
        stratified folds.
    scoring : str, callable or None, default None
        A scikit-learn scorer (name or callable); None is accuracy.  With
        ``sample_weight``, each fold is scored with its held-out samples'
        weights (weighted accuracy for None), as ``LogisticRegressionCV``
        does; class weights do not enter the scores.
    refit : bool, default True
        Refit on all the data with the best C (the best mean score over
        folds), from the folds' mean coefficients at it.  Without refit the
        coefficients are the mean over folds of each fold's best model and
        ``C_`` is the mean of the folds' best C.
    fit_intercept, max_iter, tol, method, verbose, solver, class_weight
        As in :class:`SoftmaxRegression`, for every fit.  ``"balanced"`` class
        weights are computed once, on all the data.

    Attributes
    ----------
    Cs_ : ndarray (n_cs,) float64, the path
    C_ : float, the chosen C
    scores_ : ndarray (n_folds, n_cs), the held-out score of each fold and C
    coefs_paths_ : ndarray (n_folds, n_cs, K, n + fit_intercept) float64,
        the coefficients of each fold and C, the intercept in the last column
    n_iter_ : ndarray (n_folds, n_cs) int32, the solver's iterations per fit
    classes_, coef_, intercept_, n_features_in_, feature_names_in_
        As in :class:`SoftmaxRegression`, of the final model.

    Dask X is not supported (use ``SoftmaxRegression``); every training fold
    must hold samples of every class (ValueError otherwise).
    """

    def __init__(self, Cs=10, fit_intercept: bool = True, cv=None, scoring=None,
                 refit: bool = True, max_iter: int = 100, tol: float = 1e-4,
                 method: str = "fused", verbose: int = 0, solver: str = "auto",
                 class_weight=None):
        self.Cs = Cs
        self.fit_intercept = fit_intercept
        self.cv = cv
        self.scoring = scoring
        self.refit = refit
        self.max_iter = max_iter
        self.tol = tol
        self.method = method
        self.verbose = verbose
        self.solver = solver
        self.class_weight = class_weight

    # the parameters it passes on to SoftmaxRegression are checked as there
    _parameter_constraints: dict = {
        "Cs": [Interval(Integral, 1, None, closed="left"), "array-like"],
        "cv": ["cv_object"],
        "scoring": [StrOptions(set(get_scorer_names())), callable, None],
        "refit": ["boolean"],
        **{name: SoftmaxRegression._parameter_constraints[name]
           for name in ("fit_intercept", "max_iter", "tol", "method", "verbose", "solver",
                        "class_weight")},
    }

    def _path(self) -> np.ndarray:
        if isinstance(self.Cs, Integral) and not isinstance(self.Cs, bool):
            return np.logspace(-4, 4, int(self.Cs))
        Cs = np.asarray(self.Cs, dtype=np.float64).ravel()
        if Cs.size == 0 or not np.all(Cs > 0) or np.any(np.isnan(Cs)):
            raise ValueError(f"Cs must hold numbers > 0, got {self.Cs!r}")
        return Cs

    def _model(self, C, class_weight, warm_start=True) -> SoftmaxRegression:
        return SoftmaxRegression(C=C, fit_intercept=self.fit_intercept, max_iter=self.max_iter,
                                 tol=self.tol, warm_start=warm_start, method=self.method,
                                 verbose=max(0, self.verbose - 1), solver=self.solver,
                                 class_weight=class_weight)

    @staticmethod
    def _flat(model) -> np.ndarray:
        """[coef_ | intercept_] (K, n + 1), or coef_ (K, n) without an intercept."""
        if model.fit_intercept:
            return np.column_stack([model.coef_, model.intercept_])
        return model.coef_.copy()

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, sample_weight=None) -> "SoftmaxRegressionCV":
        """Fit the path on every fold, choose C, refit; X (m, n), y (m,), sample_weight (m,)."""
        if is_dask_collection(X):
            raise TypeError("SoftmaxRegressionCV takes NumPy or SciPy sparse X, not Dask "
                            "collections: fit SoftmaxRegression on Dask data instead")
        X, y = validate_fit_data(self, X, y)
        if is_sparse(X):  # before any fold is fitted
            self._check_solver_takes("sparse X", newton_cg=True)
        self._check_targets(y)
        Cs = self._path()
        classes, y_index = np.unique(y, return_inverse=True)
        if classes.shape[0] < 2:
            raise ValueError(
                f"SoftmaxRegressionCV needs samples of at least 2 classes in the data, "
                f"but the data contain only one class: {classes[0]!r}")
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
        class_weight = self.class_weight
        if class_weight == "balanced":  # once, on all the data, as LogisticRegressionCV
            totals = np.bincount(y_index, weights=sw, minlength=classes.shape[0])
            class_weight = dict(zip(classes.tolist(),
                                    class_weight_vector("balanced", classes, totals)))
        unweighted = sample_weight is None and class_weight is None
        folds = list(check_cv(self.cv, y, classifier=True).split(X, y))
        scorer = check_scoring(self, scoring=self.scoring)
        K, n = classes.shape[0], X.shape[1]
        width = n + 1 if self.fit_intercept else n
        paths = np.empty((len(folds), len(Cs), K, width))
        scores = np.empty((len(folds), len(Cs)))
        n_iter = np.empty((len(folds), len(Cs)), dtype=np.int32)
        for f, (train, test) in enumerate(folds):
            y_train = y_index[train]
            if np.unique(y_train).shape[0] != K:
                raise ValueError(
                    f"the training samples of fold {f} lack some classes: every training "
                    f"fold needs samples of all {K} classes (use stratified folds)")
            # the fold is validated with X: each C's fit starts at the solver
            X_train, X_test = X[train], X[test]
            if unweighted:  # the kernels' unit weights, without a vector of ones
                w_train, total = None, float(train.shape[0])
            else:
                w_train = apply_class_weight(class_weight, classes, y_train, sw[train])
                total = float(w_train.sum())
            if not total > 0:
                raise ValueError(f"the sample weights of fold {f}'s training samples sum to "
                                 f"zero")
            model = self._model(Cs[0], class_weight)
            model.n_features_in_ = n
            # Newton-CG's preconditioner and last kernel sums, carried along the path
            blocks, end = BlockInverses(), EndSums()
            for j, C in enumerate(Cs):
                model.C = float(C)
                model._fit_encoded(X_train, y_train, classes, w_train, total, loss_and_grad,
                                   blocks, end)
                paths[f, j] = self._flat(model)
                if self.scoring in (None, "accuracy"):  # without validating X_test again
                    predicted = np.argmax(model._validated_logits(X_test), axis=1)
                    scores[f, j] = float(np.average(predicted == y_index[test],
                                                    weights=sw[test]))
                elif sample_weight is None:
                    scores[f, j] = scorer(model, X_test, y[test])
                else:
                    scores[f, j] = scorer(model, X_test, y[test], sample_weight=sw[test])
                n_iter[f, j] = model.n_iter_[0]
        if self.refit:
            best = int(np.argmax(scores.sum(axis=0)))
            self.C_ = float(Cs[best])
            model = self._model(self.C_, class_weight)
            start = paths[:, best].mean(axis=0)
            model.classes_ = classes
            model.coef_ = np.ascontiguousarray(start[:, :n])
            model.intercept_ = start[:, n] if self.fit_intercept else np.zeros(K)
            model.fit(X, y, sample_weight=None if unweighted else sw)
            coef = self._flat(model)
            self.solver_ = model.solver_
            self.objective_ = model.objective_
        else:
            best = np.argmax(scores, axis=1)
            coef = np.mean([paths[f, best[f]] for f in range(len(folds))], axis=0)
            self.C_ = float(np.mean(Cs[best]))
        self.classes_ = classes
        self.coef_ = np.ascontiguousarray(coef[:, :n])
        self.intercept_ = coef[:, n].copy() if self.fit_intercept else np.zeros(K)
        self.Cs_ = Cs
        self.scores_ = scores
        self.coefs_paths_ = paths
        self.n_iter_ = n_iter
        return self

    def score(self, X, y, sample_weight=None) -> float:
        """The ``scoring`` of the final model on (X, y) (accuracy when None)."""
        if self.scoring is None:
            return super().score(X, y, sample_weight=sample_weight)
        scorer = check_scoring(self, scoring=self.scoring)
        if sample_weight is None:
            return scorer(self, X, y)
        return scorer(self, X, y, sample_weight=sample_weight)
