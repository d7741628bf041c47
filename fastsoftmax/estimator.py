"""``SoftmaxRegression``: a scikit-learn classifier fitted with the fused kernel.

It minimises the same objective as scikit-learn's ``LogisticRegression`` with
its default multinomial loss and an L2 penalty,

    (1/2) ||W||_F^2 + C sum_i w_i loss_i,   the intercept not penalised,

so that the same ``C`` gives the same model.  L-BFGS (SciPy) drives it with
one call of :func:`fastsoftmax.loss_and_grad` per evaluation, which returns
the loss and its gradient together.  The objective is divided by
``C sum_i w_i`` before it reaches the optimiser (a mean loss plus
``l2 = 1 / (C sum_i w_i)``), which changes nothing but the scale the
tolerances apply to, as in scikit-learn.

This module needs scikit-learn (the ``sklearn`` extra); the rest of the
package does not.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.optimize
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from ._api import loss_and_grad
from ._primitives import log_softmax, softmax
from ._validation import METHODS, is_dask_collection


class _NotBool(Interval):
    """scikit-learn's ``Interval``, which a bool does not satisfy.

    ``Interval(Real, ...)`` and ``Interval(Integral, ...)`` accept ``True``
    (a bool is an int); it is no meaningful ``C``, ``tol`` or ``max_iter``.
    """

    def is_satisfied_by(self, val):
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)


class _FiniteNotBool(_NotBool):
    """:class:`_NotBool` without infinities (``Interval`` takes ``inf`` when open above)."""

    def is_satisfied_by(self, val):
        return super().is_satisfied_by(val) and math.isfinite(val)


class SoftmaxRegression(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression (softmax regression) with an L2 penalty.

    Parameters
    ----------
    C : float, default 1.0
        Inverse regularisation strength, as in ``LogisticRegression``.
    fit_intercept : bool, default True
        Fit a (K,) intercept (not penalised).
    max_iter : int, default 100
        Maximum number of L-BFGS iterations; stopping there warns with
        ``ConvergenceWarning``.
    tol : float, default 1e-4
        L-BFGS stops when the largest entry of the projected gradient of the
        scaled objective falls below ``tol``.
    warm_start : bool, default False
        Start from the previous fit's coefficients when the classes and
        features match.
    method : {"fused", "indexloop", "numpy"}, default "fused"
        Which :func:`fastsoftmax.loss_and_grad` method evaluates the objective.
    verbose : int, default 0
        Print the (scaled) objective after every iteration when positive.

    Attributes
    ----------
    classes_ : ndarray (K,)
        The class labels (any sortable labels: integers, strings...).
    coef_ : ndarray (K, n) float64
    intercept_ : ndarray (K,) float64 (zeros without an intercept)
    n_features_in_ : int
    feature_names_in_ : ndarray of str, when X had string column names
    n_iter_ : ndarray (1,) int, the number of L-BFGS iterations
    objective_ : float, the final objective divided by ``C sum_i w_i`` (the
        scale L-BFGS works on)

    Notes
    -----
    With two classes the model stays multinomial (two rows of coefficients),
    and ``decision_function`` returns the difference of the two logits, the
    log-odds of the second class; scikit-learn's ``LogisticRegression`` fits
    a single binomial row there, so the two agree on probabilities only up to
    the way the penalty splits between the rows.
    """

    def __init__(self, C: float = 1.0, fit_intercept: bool = True, max_iter: int = 100,
                 tol: float = 1e-4, warm_start: bool = False, method: str = "fused",
                 verbose: int = 0):
        self.C = C
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.method = method
        self.verbose = verbose

    # Checked by scikit-learn (``_fit_context``) when fit starts; a violation
    # raises its InvalidParameterError (a ValueError and a TypeError).
    _parameter_constraints: dict = {
        "C": [_FiniteNotBool(Real, 0, None, closed="neither")],
        "fit_intercept": ["boolean"],
        "max_iter": [_NotBool(Integral, 1, None, closed="left")],
        "tol": [_NotBool(Real, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "method": [StrOptions(set(METHODS))],
        "verbose": ["verbose"],
    }

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None) -> "SoftmaxRegression":
        """Fit on X (m, n) and labels y (m,), optionally weighted (m,).

        X may also be a ``dask.array`` chunked by rows (y and sample_weight
        dask or NumPy arrays): then every loss-and-gradient evaluation runs on
        the Dask workers (:func:`fastsoftmax.dask.loss_and_grad`) and only
        K x n partial sums come back to the client.

        X may be a SciPy sparse matrix or array: CSR is used as it is (never
        densified), other formats are converted to CSR once, as
        scikit-learn's ``accept_sparse="csr"`` does.  The same holds for
        ``predict``, ``predict_proba``, ``decision_function`` and ``score``.

        The parameters are checked first, by scikit-learn's parameter
        validation: a bad one raises ``InvalidParameterError`` (a
        ``ValueError``) naming it.
        """
        if is_dask_collection(X):
            from .dask import prepare_fit

            data = prepare_fit(X, y, sample_weight)
            X, y_index, classes = data.X, data.y_index, data.classes
            sample_weight, total, evaluate = data.sample_weight, data.total, data.loss_and_grad
            self.n_features_in_ = X.shape[1]
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        else:
            X, y = validate_data(self, X, y, accept_sparse="csr",
                                 dtype=[np.float64, np.float32], order="C")
            check_classification_targets(y)
            classes, y_index = np.unique(y, return_inverse=True)
            if sample_weight is not None:
                weights = np.asarray(sample_weight)
                if weights.ndim == 1 and weights.shape[0] != X.shape[0]:
                    raise ValueError(
                        f"sample_weight must hold one weight per sample: {X.shape[0]} for the "
                        f"{X.shape[0]} samples of X, got {weights.shape[0]}")
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
            total = float(sample_weight.sum())
            evaluate = loss_and_grad
        K = classes.shape[0]
        if K < 2:
            raise ValueError(
                f"SoftmaxRegression needs samples of at least 2 classes in the data, "
                f"but the data contain only one class: {classes[0]!r}")
        if total <= 0:
            raise ValueError("the sample weights sum to zero")
        m, n = X.shape
        l2 = 1.0 / (self.C * total)
        width = n + 1 if self.fit_intercept else n

        x0 = np.zeros(K * width)
        if (self.warm_start and getattr(self, "coef_", None) is not None
                and self.coef_.shape == (K, n) and np.array_equal(self.classes_, classes)):
            x0.reshape(K, width)[:, :n] = self.coef_
            if self.fit_intercept:
                x0.reshape(K, width)[:, n] = self.intercept_

        dtype = X.dtype

        def objective(x):
            P = x.reshape(K, width)
            W = P[:, :n].astype(dtype)
            b = P[:, n].astype(dtype) if self.fit_intercept else None
            out = evaluate(W, X, y_index, b=b, sample_weight=sample_weight, l2=l2,
                           method=self.method)
            grad = np.empty((K, width))
            grad[:, :n] = out[1]
            if self.fit_intercept:
                grad[:, n] = out[2]
            return out[0], grad.ravel()

        callback = None
        if self.verbose:
            def callback(intermediate_result):
                print(f"SoftmaxRegression: objective {intermediate_result.fun:.10g}")

        result = scipy.optimize.minimize(
            objective, x0, method="L-BFGS-B", jac=True, callback=callback,
            options={"maxiter": self.max_iter, "maxls": 50, "gtol": self.tol,
                     "ftol": 64 * np.finfo(float).eps})
        if result.status != 0:  # as scikit-learn: any stop short of convergence warns
            reason = (f"it reached max_iter={self.max_iter} iterations"
                      if result.status == 1 else f"of: {result.message}")
            warnings.warn(
                f"L-BFGS stopped without converging because {reason}; increase max_iter "
                f"or scale the data.", ConvergenceWarning, stacklevel=3)
        P = result.x.reshape(K, width)
        self.classes_ = classes
        self.coef_ = np.ascontiguousarray(P[:, :n])
        self.intercept_ = P[:, n].copy() if self.fit_intercept else np.zeros(K)
        self.n_iter_ = np.array([result.nit], dtype=np.int32)
        self.objective_ = float(result.fun)
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def decision_function(self, X) -> np.ndarray:
        """Logits (m, K); for two classes the log-odds of the second, shape (m,)."""
        Z = self._logits(X)
        if Z.shape[1] == 2:
            return Z[:, 1] - Z[:, 0]
        return Z

    def _logits(self, X) -> np.ndarray:
        """Logits (m, K) of new samples, in X's dtype."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, accept_sparse="csr",
                          dtype=[np.float64, np.float32])
        Z = X @ self.coef_.T.astype(X.dtype, copy=False)  # an ndarray for sparse X too
        return np.asarray(Z) + self.intercept_.astype(X.dtype)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (m, K), columns in the order of ``classes_``."""
        return softmax(self._logits(X))

    def predict_log_proba(self, X) -> np.ndarray:
        """Log-probabilities (m, K), computed stably."""
        return log_softmax(self._logits(X))

    def predict(self, X) -> np.ndarray:
        """The most probable class of each sample (m,)."""
        best = np.argmax(self._logits(X), axis=1)
        return self.classes_[best]
