"""``SoftmaxRegression``: a scikit-learn classifier fitted with the fused kernels.

It minimises the same objective as scikit-learn's ``LogisticRegression`` with
its default multinomial loss and an L2 penalty,

    (1/2) ||W||_F^2 + C sum_i w_i loss_i,   the intercept not penalised,

so that the same ``C`` (and ``class_weight``) gives the same model; w_i is the
sample weight times the weight of the sample's class.  Every solver works on
that objective divided by ``C sum_i w_i`` (a weighted mean loss plus
``(l2/2) ||W||^2`` with ``l2 = 1 / (C sum_i w_i)``, 0 for ``C=inf``), the
scale scikit-learn's solvers work on, and ``tol`` means the same for all:
stop when the largest absolute entry of the gradient of that scaled objective
is at most ``tol`` (SciPy L-BFGS-B's ``gtol``; the problem has no bounds, so
its projected gradient is the gradient).

Solvers:

* ``"lbfgs"``: SciPy's L-BFGS-B, one :func:`fastsoftmax.loss_and_grad` per
  evaluation; any X (dense, SciPy sparse, Dask).
* ``"newton-cg"``: truncated Newton, conjugate gradients on the fused
  Hessian-vector products preconditioned by the Hessian's per-class blocks
  (its diagonal when n + fit_intercept > 128 or X is sparse), Armijo line
  search (``fastsoftmax._newton.minimize_newton_pcg``); dense NumPy or SciPy
  CSR X.
* ``"newton-cholesky"``: Newton steps solved by Cholesky from the Hessian's
  blocks of the first K - 1 classes (about N^2 float64 with
  N = K (n + fit_intercept)), the whole loop one compiled call for the fused
  method; dense NumPy X, small N.
* ``"auto"``: ``"newton-cg"`` for sparse X, ``"lbfgs"`` for Dask X, else
  ``"newton-cholesky"``
  when N <= ``fastsoftmax._dispatch.AUTO_CHOLESKY_MAX_PARAMS``, else
  ``"newton-cg"`` when n + fit_intercept <= ``PCG_BLOCK_MAX_WIDTH`` (128:
  its block preconditioner applies), else ``"lbfgs"`` when the features'
  standard deviations differ by at most a factor
  ``AUTO_LBFGS_MAX_SCALE_SPREAD`` (10: standardised data) and
  ``"newton-cg"`` otherwise.

This module needs scikit-learn (the ``sklearn`` extra); the rest of the
package does not.
"""

from __future__ import annotations

import functools
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
from ._blas import single_threaded_all_blas
from ._class_weight import apply_class_weight, class_weight_vector
from ._fit_input import validate_fit_data
from ._hessian import rows_from_flat
from ._newton import auto_solver, minimize_newton_cholesky, minimize_newton_pcg
from ._primitives import log_softmax, softmax
from ._sparse import is_sparse
from ._validation import METHODS, is_dask_collection

#: the values of ``solver``
SOLVERS = ("auto", "lbfgs", "newton-cg", "newton-cholesky")


class _NotBool(Interval):
    """scikit-learn's ``Interval``, which a bool does not satisfy.

    ``Interval(Real, ...)`` and ``Interval(Integral, ...)`` accept ``True``
    (a bool is an int); it is no meaningful ``C``, ``tol`` or ``max_iter``.
    """

    def is_satisfied_by(self, val):
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)



class SoftmaxRegression(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression (softmax regression) with an L2 penalty.

    Parameters
    ----------
    C : float, default 1.0
        Inverse regularisation strength, as in ``LogisticRegression``;
        ``np.inf`` means no penalty.
    fit_intercept : bool, default True
        Fit a (K,) intercept (not penalised).
    max_iter : int, default 100
        Maximum number of iterations of the solver (L-BFGS iterations, Newton
        steps); stopping there warns with ``ConvergenceWarning``.  ``0`` keeps
        the starting point (zeros, or the previous fit's with ``warm_start``)
        and warns unless the gradient there already meets ``tol``.
    tol : float, default 1e-4
        Every solver stops when the largest absolute entry of the gradient of
        the scaled objective (the objective divided by ``C sum_i w_i``, see
        the module's docstring) is at most ``tol``; a solver that stops before
        (its line search, or L-BFGS's relative decrease of the objective, at
        rounding level) warns with ``ConvergenceWarning``.
    warm_start : bool, default False
        Start from the previous fit's coefficients when the classes and
        features match.
    method : {"fused", "indexloop", "numpy"}, default "fused"
        Which method of the kernels evaluates the objective (and its
        Hessian products).
    verbose : int, default 0
        Print the (scaled) objective after every iteration when positive.
    solver : {"auto", "lbfgs", "newton-cg", "newton-cholesky"}, default "auto"
        ``"lbfgs"``: SciPy's L-BFGS-B, any X.  ``"newton-cg"``: truncated
        Newton with preconditioned conjugate gradients on the fused
        Hessian-vector products.  ``"newton-cholesky"``: Newton steps by
        Cholesky from the Hessian's blocks of the first K - 1 classes (about
        N^2 float64, N = K (n + fit_intercept): for small N).
        Newton-CG takes dense NumPy or SciPy sparse X, Newton-Cholesky dense
        NumPy X only (other X raises ``ValueError``).  ``"auto"``:
        ``"newton-cg"`` for sparse X, ``"lbfgs"`` for Dask X, else
        ``"newton-cholesky"`` when N <= 200
        (``fastsoftmax._dispatch.AUTO_CHOLESKY_MAX_PARAMS``), else
        ``"newton-cg"`` when n + fit_intercept <= 128 (``PCG_BLOCK_MAX_WIDTH``),
        else ``"lbfgs"`` when the standard deviations of the (non-constant)
        features differ by at most a factor 10
        (``AUTO_LBFGS_MAX_SCALE_SPREAD``: standardised data, where L-BFGS
        needs few iterations) and ``"newton-cg"`` otherwise.
    class_weight : dict, "balanced" or None, default None
        As in ``LogisticRegression``: each sample's weight is multiplied by
        its class's weight (a dict {label: weight}, missing labels weighing
        1; ``"balanced"``: ``S / (K S_k)`` with ``S_k`` the total sample weight
        of class k), and the penalty is scaled by the total of the products.

    Attributes
    ----------
    classes_ : ndarray (K,)
        The class labels (any sortable labels: integers, strings...).
    coef_ : ndarray (K, n) float64
    intercept_ : ndarray (K,) float64 (zeros without an intercept)
    n_features_in_ : int
    feature_names_in_ : ndarray of str, when X had string column names
    n_iter_ : ndarray (1,) int, the number of iterations of the solver
        (L-BFGS iterations or Newton steps)
    solver_ : str, the solver used ("auto" resolved)
    objective_ : float, the final objective divided by ``C sum_i w_i`` (the
        scale every solver works on)

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
                 verbose: int = 0, solver: str = "auto", class_weight=None):
        self.C = C
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.method = method
        self.verbose = verbose
        self.solver = solver
        self.class_weight = class_weight

    # Checked by scikit-learn (``_fit_context``) when fit starts; a violation
    # raises its InvalidParameterError (a ValueError and a TypeError).
    _parameter_constraints: dict = {
        "C": [_NotBool(Real, 0, None, closed="right")],  # inf: no penalty
        "fit_intercept": ["boolean"],
        "max_iter": [_NotBool(Integral, 0, None, closed="left")],
        "tol": [_NotBool(Real, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "method": [StrOptions(set(METHODS))],
        "verbose": ["verbose"],
        "solver": [StrOptions(set(SOLVERS))],
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None) -> "SoftmaxRegression":
        """Fit on X (m, n) and labels y (m,), optionally weighted (m,).

        X may also be a ``dask.array`` chunked by rows (y and sample_weight
        dask or NumPy arrays): then every loss-and-gradient evaluation runs on
        the Dask workers (:func:`fastsoftmax.dask.loss_and_grad`) and only
        K x n partial sums come back to the client.  Only ``solver="lbfgs"``
        (which ``"auto"`` picks) fits Dask X.

        X may be a SciPy sparse matrix or array: CSR is used as it is (never
        densified), other formats are converted to CSR once, as
        scikit-learn's ``accept_sparse="csr"`` does.  The same holds for
        ``predict``, ``predict_proba``, ``decision_function`` and ``score``.
        ``solver="lbfgs"`` and ``"newton-cg"`` (which ``"auto"`` picks) fit
        sparse X; ``"newton-cholesky"`` raises ``ValueError``.

        The parameters are checked first, by scikit-learn's parameter
        validation: a bad one raises ``InvalidParameterError`` (a
        ``ValueError``) naming it.
        """
        dask_input = is_dask_collection(X)
        if dask_input:
            self._check_solver_takes("a Dask array")
            from .dask import prepare_fit

            data = prepare_fit(X, y, sample_weight)
            X, y_index, classes = data.X, data.y_index, data.classes
            sample_weight, total, evaluate = data.sample_weight, data.total, data.loss_and_grad
            if self.class_weight is not None:
                sample_weight, total = _dask_class_weight(
                    self.class_weight, classes, y_index, sample_weight, X.chunks[0])
            self.n_features_in_ = X.shape[1]
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        else:
            X, y = validate_fit_data(self, X, y)
            if is_sparse(X):
                self._check_solver_takes("sparse X", newton_cg=True)
            self._check_targets(y)
            classes, y_index = np.unique(y, return_inverse=True)
            if sample_weight is not None:
                weights = np.asarray(sample_weight)
                if weights.ndim == 1 and weights.shape[0] != X.shape[0]:
                    raise ValueError(
                        f"sample_weight must hold one weight per sample: {X.shape[0]} for the "
                        f"{X.shape[0]} samples of X, got {weights.shape[0]}")
            if sample_weight is None and self.class_weight is None:
                total = float(X.shape[0])  # unweighted: the kernels' unit weights
            else:
                sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
                sample_weight = apply_class_weight(self.class_weight, classes, y_index,
                                                   sample_weight)
                total = float(sample_weight.sum())
            evaluate = loss_and_grad
        return self._fit_encoded(X, y_index, classes, sample_weight, total, evaluate)

    @staticmethod
    def _check_targets(y: np.ndarray) -> None:
        """scikit-learn's ``check_classification_targets`` on the validated
        labels y (m,), skipped where it cannot fail: 1-D labels of a bool,
        integer or string dtype are always binary or multiclass targets.  It
        takes 0.27 ms (several passes of ``np.unique``), a tenth of a small
        Newton fit when this was written (raw iris tiled 10x: 2.5 ms; 1.5-2.0
        ms since, measured on the same 2-core VM)."""
        if not (isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype.kind in "biuU"):
            check_classification_targets(y)

    def _fit_encoded(self, X, y_index, classes, sample_weight, total, evaluate, blocks=None,
                     end=None):
        """The fit after validation: X validated (m, n), ``y_index`` (m,) the
        class indices into ``classes`` (K,), ``sample_weight`` (m,) float64
        with the class weights applied and ``total`` its sum (None and m:
        unweighted, which the kernels compute without weights), ``evaluate``
        the loss-and-gradient function (in memory or Dask).  Sets the fitted
        attributes but ``n_features_in_`` (and feature names); returns self.
        :class:`SoftmaxRegressionCV` calls it for each C of a fold's path,
        on data it validated once, with the fold's
        :class:`fastsoftmax._newton.BlockInverses` as ``blocks`` (Newton-CG's
        preconditioner, carried along the path; None: a fit of its own) and
        :class:`fastsoftmax._newton.EndSums` as ``end`` (the kernel sums at
        the previous fit's end point)."""
        K = classes.shape[0]
        if K < 2:
            raise ValueError(
                f"SoftmaxRegression needs samples of at least 2 classes in the data, "
                f"but the data contain only one class: {classes[0]!r}")
        if not total > 0:
            raise ValueError("the sample weights sum to zero")
        m, n = X.shape
        l2 = 1.0 / (self.C * total)  # 0.0 for C = inf
        width = n + 1 if self.fit_intercept else n
        solver = self.solver
        if solver == "auto":
            solver = auto_solver(K * width, width, X)

        x0 = np.zeros((K, width))  # [W | b]
        if (self.warm_start and getattr(self, "coef_", None) is not None
                and self.coef_.shape == (K, n) and np.array_equal(self.classes_, classes)):
            x0[:, :n] = self.coef_
            if self.fit_intercept:
                x0[:, n] = self.intercept_

        options = dict(sample_weight=sample_weight, l2=l2, method=self.method)
        # BLAS on one thread for the whole run: its idle threads would spin on
        # the cores the kernels' workers need (see fastsoftmax._blas)
        with single_threaded_all_blas:
            if self.max_iter == 0:
                fun, converged, n_iter = self._start_point(evaluate, X, y_index, x0, options)
                P = x0
                if not converged:
                    warnings.warn(
                        "max_iter=0: the coefficients are the starting point, where the "
                        f"gradient does not meet tol={self.tol}; increase max_iter.",
                        ConvergenceWarning, stacklevel=4)
            elif solver == "lbfgs":
                P, fun, n_iter = self._fit_lbfgs(evaluate, X, y_index, x0, options)
            else:
                P, fun, n_iter = self._fit_newton(solver, X, y_index, x0, K, options, blocks,
                                                  end)
        self.classes_ = classes
        self.coef_ = np.ascontiguousarray(P[:, :n])
        self.intercept_ = P[:, n].copy() if self.fit_intercept else np.zeros(K)
        self.n_iter_ = np.array([n_iter], dtype=np.int32)
        self.solver_ = solver
        self.objective_ = float(fun)
        return self

    def _check_solver_takes(self, what: str, newton_cg: bool = False) -> None:
        """ValueError when an explicit Newton solver meets input it cannot fit
        (``newton_cg``: that solver can)."""
        if self.solver == "newton-cholesky" or (self.solver == "newton-cg" and not newton_cg):
            takes = "dense NumPy or SciPy CSR X" if self.solver == "newton-cg" else \
                "dense NumPy X (its full Hessian is built from dense X only)"
            raise ValueError(
                f"solver={self.solver!r} needs {takes}, got {what}: use solver='lbfgs' or "
                f"'auto'" + (" or 'newton-cg'" if newton_cg else ""))

    def _objective(self, evaluate, X, y_index, options, K, n):
        """The scaled objective and its gradient at [W | b] (K, width), flat float64."""
        dtype = X.dtype
        width = n + 1 if self.fit_intercept else n

        def objective(x):
            P = x.reshape(K, width)
            W = P[:, :n].astype(dtype)
            b = P[:, n].astype(dtype) if self.fit_intercept else None
            out = evaluate(W, X, y_index, b=b, **options)
            grad = np.empty((K, width))
            grad[:, :n] = out[1]
            if self.fit_intercept:
                grad[:, n] = out[2]
            return out[0], grad.ravel()

        return objective

    def _start_point(self, evaluate, X, y_index, x0, options):
        """max_iter=0: the objective at the start, whether it meets tol, 0 iterations."""
        K, n = x0.shape[0], X.shape[1]
        fun, grad = self._objective(evaluate, X, y_index, options, K, n)(x0.ravel())
        return fun, bool(np.max(np.abs(grad)) <= self.tol), 0

    def _fit_lbfgs(self, evaluate, X, y_index, x0, options):
        """SciPy's L-BFGS-B on the scaled objective; ([W | b], objective, iterations)."""
        K, n = x0.shape[0], X.shape[1]
        objective = self._objective(evaluate, X, y_index, options, K, n)
        callback = None
        if self.verbose:
            def callback(intermediate_result):
                print(f"SoftmaxRegression: objective {intermediate_result.fun:.10g}")

        result = scipy.optimize.minimize(
            objective, x0.ravel(), method="L-BFGS-B", jac=True, callback=callback,
            options={"maxiter": self.max_iter, "maxls": 50, "gtol": self.tol,
                     "ftol": 64 * np.finfo(float).eps})
        if result.status != 0:  # as scikit-learn: any stop short of convergence warns
            reason = (f"it reached max_iter={self.max_iter} iterations"
                      if result.status == 1 else f"of: {result.message}")
            warnings.warn(
                f"L-BFGS stopped without converging because {reason}; increase max_iter "
                f"or scale the data.", ConvergenceWarning, stacklevel=5)
        elif (grad_max := float(np.max(np.abs(result.jac)))) > self.tol:
            # SciPy also stops, with status 0, when the objective's relative decrease
            # falls to rounding level (ftol); scikit-learn is silent there, but tol
            # is unmet, as when a Newton solver's line search finds no decrease
            warnings.warn(
                f"L-BFGS stopped without converging because the objective's relative "
                f"decrease reached rounding level (largest gradient entry {grad_max:.3g} "
                f"> tol={self.tol}); raise tol, scale the data or use a Newton solver.",
                ConvergenceWarning, stacklevel=5)
        return result.x.reshape(K, -1), result.fun, result.nit

    def _fit_newton(self, solver, X, y_index, x0, K, options, blocks=None, end=None):
        """A Newton solver on the scaled objective; ([W | b], objective, iterations)."""
        n = X.shape[1]
        if solver == "newton-cg":
            driver = functools.partial(minimize_newton_pcg, blocks=blocks, end=end)
        else:
            driver = minimize_newton_cholesky
        result = driver(X, y_index, W0=x0[:, :n], b0=x0[:, n] if self.fit_intercept else None,
                        n_classes=K, fit_intercept=self.fit_intercept, tol=self.tol,
                        max_iter=self.max_iter, **options)
        if self.verbose:
            for value in result.history:
                print(f"SoftmaxRegression: objective {value:.10g}")
        if not result.converged:
            warnings.warn(
                f"{solver} stopped without converging because {result.message} "
                f"(largest gradient entry {result.grad_max:.3g} > tol={self.tol}); increase "
                f"max_iter or scale the data.", ConvergenceWarning, stacklevel=5)
        P = rows_from_flat(result.theta, K, n, n + 1 if self.fit_intercept else n)
        return P, result.loss, result.n_iter

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = self.solver != "newton-cholesky"
        return tags

    def decision_function(self, X) -> np.ndarray:
        """Logits (m, K); for two classes the log-odds of the second, shape (m,)."""
        Z = self._logits(X)
        if Z.shape[1] == 2:
            return Z[:, 1] - Z[:, 0]
        return Z

    def _logits(self, X) -> np.ndarray:
        """Logits (m, K) float64 of new samples (the product with X in X's dtype).

        float64 from there on, so that ``predict_proba`` and
        ``predict_log_proba`` agree where a probability rounds to 1 in float32.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, accept_sparse="csr",
                          dtype=[np.float64, np.float32])
        return self._validated_logits(X)

    def _validated_logits(self, X) -> np.ndarray:
        """:meth:`_logits` of X already validated (float32 or float64, n columns)."""
        Z = X @ self.coef_.T.astype(X.dtype, copy=False)  # an ndarray for sparse X too
        return np.asarray(Z, dtype=np.float64) + self.intercept_

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


def _dask_class_weight(class_weight, classes, y_index, sample_weight, chunks):
    """Dask sample weights times class weights, and their total (one pass for the totals)."""
    import dask.array as da

    K = classes.shape[0]
    if sample_weight is None:
        sample_weight = da.ones(y_index.shape[0], chunks=(chunks,))
    totals = np.asarray(da.bincount(y_index, weights=sample_weight, minlength=K).compute(),
                        dtype=np.float64)
    weights = class_weight_vector(class_weight, classes, totals)
    combined = sample_weight * y_index.map_blocks(lambda block: weights[block],
                                                  dtype=np.float64)
    return combined.persist(), float(totals @ weights)
