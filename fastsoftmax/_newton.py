"""Second-order solvers for the softmax-regression objective.

``SoftmaxRegression(solver="newton-cg")`` runs :func:`minimize_newton_pcg`
and ``solver="newton-cholesky"`` :func:`minimize_newton_cholesky`;
:func:`auto_solver` is the rule of ``solver="auto"``.

Both minimise the objective of :func:`fastsoftmax.loss_and_grad` over (W, b)
and stop when the largest absolute entry of the gradient is at most ``tol``
(the meaning ``gtol`` has for SciPy's L-BFGS-B, which the estimator uses):

* :func:`minimize_trust_newton`: SciPy's ``trust-ncg`` (Steihaug CG) or
  ``trust-krylov`` (Lanczos, trlib) with the fused Hessian-vector product of
  :func:`fastsoftmax.loss_grad_hessp`: each CG step costs about one gradient
  evaluation and no m x K array is stored on dense X (on CSR X, see
  :func:`minimize_newton_pcg`).
* :func:`minimize_newton_pcg`: truncated Newton with conjugate gradients on
  the same products, preconditioned by the Hessian's per-class blocks
  (reused across steps; its diagonal for wide X, mixed with the penalty's
  curvature for sparse X) after splitting off the class means, where the
  Hessian is known exactly (:func:`_preconditioner`), and a backtracking
  line search; for the fused method on dense X each step is one compiled call
  (:func:`fastsoftmax._newton_fused.newton_cg_step`, driven by
  :func:`_fused_pcg`).
* :func:`minimize_newton_cholesky`: Newton steps solved by Cholesky from
  the Hessian's blocks of the first K - 1 classes
  (:meth:`fastsoftmax.HessianProduct.newton_step`, one compiled call after
  the fused kernel; N = K n, plus K with an intercept), with a backtracking
  (Armijo) line search; for the fused method on dense X the whole loop is
  one compiled call (:mod:`fastsoftmax._newton_fused`).  Each iteration
  costs O(m N^2 + N^3) and about N^2 float64 of memory per thread (the
  packed Hessian slabs, N^2 / 4 each, and the reduced matrix and its
  factor): for small N.

The parameter vector is ``theta = [W.ravel(), b]`` (float64).  The objective
is invariant under adding one vector to every row of W (one number to every
b) when ``l2 = 0`` (and always for b), so the Hessian is singular along those
directions.  The Cholesky solver leaves them out of the system it factors
(and shifts its diagonal by ``JITTER * max(diag)`` only when it is singular
along other directions too, e.g. with collinear features); both Newton
drivers remove the steps' components along those directions
(:func:`_drop_null_directions`; the exact step has none).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.optimize
from numpy.typing import ArrayLike

from ._blas import single_threaded_all_blas, single_threaded_blas
from . import _newton_fused as _fused
from . import _vectors
from . import _dispatch as policy
from ._fused import chunk_entry as fused_chunk_entry, chunk_totals as fused_chunk_totals
from ._hessian import (HessianProduct, evaluate, feature_major_diagonal, feature_major_product,
                       flat_from_rows, rows_from_flat)
from ._hessian_full import chunk_entry as hessian_chunk_entry
from ._hessian_fused import chunk_entry as product_chunk_entry
from ._newton_fused import newton_cg_step, newton_cholesky_loop
from ._threading import parallel_region
from ._sparse import is_sparse
from ._validation import is_dask_collection, prepare

#: Relative diagonal shift that makes singular Newton systems solvable.
JITTER = 1e-10

#: Why Newton-CG stops when the preconditioned gradient is rounding.
_NO_DESCENT = "no descent direction left (rounding level reached)"



def auto_solver(n_params: int, width: int, X) -> str:
    """The solver ``SoftmaxRegression(solver="auto")`` uses for N = ``n_params``
    parameters, ``width`` = n + fit_intercept of them per class, and the X
    being fitted (a NumPy array, a SciPy CSR matrix or a Dask array).

    ``"newton-cg"`` for SciPy CSR X (its diagonal-preconditioned
    CG: measured on 20-newsgroups-shaped TF-IDF data, C = 10, tol = 1e-8,
    18 s against 99 s for L-BFGS, whose own updates of the 2.6 M
    coefficients cost as much as the kernels); ``"lbfgs"`` for other
    non-dense X (Dask: no Hessian products).  For a dense NumPy array
    ``"newton-cholesky"`` for N up to
    ``fastsoftmax._dispatch.AUTO_CHOLESKY_MAX_PARAMS``; above it
    ``"newton-cg"`` when its block preconditioner applies (``width`` =
    n + fit_intercept at most ``PCG_BLOCK_MAX_WIDTH``), else ``"lbfgs"``
    when the features' scales are alike (their :func:`scale_spread` at most
    ``AUTO_LBFGS_MAX_SCALE_SPREAD``: standardised data, on which L-BFGS
    needs few iterations and each costs one pass over X), else
    ``"newton-cg"``.
    """
    if is_dask_collection(X):
        return "lbfgs"
    if is_sparse(X):
        return "newton-cg"
    if n_params <= policy.AUTO_CHOLESKY_MAX_PARAMS:
        return "newton-cholesky"
    if width <= policy.PCG_BLOCK_MAX_WIDTH:
        return "newton-cg"
    if scale_spread(X) <= policy.AUTO_LBFGS_MAX_SCALE_SPREAD:
        return "lbfgs"
    return "newton-cg"


def scale_spread(X) -> float:
    """Largest over smallest standard deviation of the columns of X (m, n) that
    are not constant (1.0 with fewer than two): how unequal the features'
    scales are, the cheap signal of conditioning ``auto_solver`` uses.

    Two passes over X without a temporary of its size (the sums of x and of
    x^2 per column, in float64); a column counts as constant when its
    variance is at most 1e-12 of its mean square.
    """
    X = np.asarray(X)
    m = X.shape[0]
    mean = X.sum(axis=0, dtype=np.float64) / m
    square = np.einsum("ij,ij->j", X, X, dtype=np.float64) / m
    var = square - mean * mean
    spread = var[var > 1e-12 * square]
    if spread.size < 2:
        return 1.0
    return float(np.sqrt(spread.max() / spread.min()))


@dataclass
class NewtonResult:
    """Outcome of a solver: the solution, its objective and gradient size, and counts."""

    W: np.ndarray
    b: np.ndarray | None
    theta: np.ndarray  # the solution as the float64 vector [W.ravel(), b]
    loss: float
    grad_max: float
    converged: bool
    n_iter: int
    n_evals: int
    n_hessp: int
    seconds: float
    message: str = ""
    # the objective at each step's point (the compiled Newton-Cholesky loop
    # records the first _dispatch.NEWTON_HISTORY + 1 of them)
    history: list = field(default_factory=list)


class _Objective:
    """Loss, flat gradient and hessp at theta, with the last point cached.

    X and y are validated once (:func:`prepare`, at W = 0); each point only
    replaces the problem's W and b.
    """

    def __init__(self, X, y, K, fit_intercept, options):
        n = X.shape[1]
        zero = np.float32 if X.dtype == np.float32 else np.float64  # X's working dtype
        self.problem = prepare(np.zeros((K, n), zero), X, y,
                               b=np.zeros(K, zero) if fit_intercept else None, **options)
        self.X, self.y, self.K, self.n = X, y, K, n
        self.fit_intercept = fit_intercept
        self.dtype = self.problem.dtype
        self.options = options
        self.n_evals = 0
        self.n_hessp = 0
        self._x = None
        self._out = None

    def split(self, x):
        K, n = self.K, self.n
        W = x[: K * n].reshape(K, n).astype(self.dtype)
        b = x[K * n:].astype(self.dtype) if self.fit_intercept else None
        return W, b

    def at(self, x):
        if self._x is None or not _vectors.same_entries(np.asarray(x, dtype=np.float64),
                                                        self._x):
            self._evaluate(x)
            self.n_evals += 1
        return self._out

    def seed(self, x, totals):
        """Make ``totals``, the unnormalised ``(loss_sum, G, gb)`` of the fused
        kernel at x's point (rounded as :meth:`split` rounds it, summed as
        :func:`fastsoftmax._api.sums` sums them), the evaluation at x,
        without running the kernel again or counting an evaluation."""
        self._evaluate(x, totals)

    def _evaluate(self, x, totals=None):
        W, b = self.split(x)
        point = dataclasses.replace(self.problem, W=W, b=self.problem.b if b is None else b)
        # on CSR X (within the policy) by columns, the point's probabilities kept for its
        # Hessian products
        out = evaluate(point, self.options["method"], totals, by_columns=True)
        grad = (np.concatenate([out[1].ravel(), out[2]]) if self.fit_intercept
                else out[1].ravel()).astype(np.float64, copy=False)
        self._x = np.array(x, dtype=np.float64)
        self._out = (out[0], grad, out[-1])

    def forget(self):
        """Drop the cached evaluation (the next :meth:`at` evaluates)."""
        self._x = self._out = None

    def fun(self, x):
        loss, grad, _ = self.at(x)
        return loss, grad

    def hessp(self, x, v):
        return self.apply(self.at(x)[2], v)

    def apply(self, hessp, v):
        """``hessp(v)`` as float64, counted: for a ``hessp`` that ``at`` returned."""
        self.n_hessp += 1
        return np.asarray(hessp(v), dtype=np.float64)

    def apply_feature_major(self, hessp, v, out):
        """:func:`fastsoftmax._hessian.feature_major_product` into ``out``,
        counted; returns ``<v, H v>``."""
        self.n_hessp += 1
        return feature_major_product(hessp, v, out)


def _setup(X, y, W0, b0, n_classes, fit_intercept, options):
    if not is_sparse(X):
        X = np.asarray(X)
    y_arr = np.asarray(y)
    if W0 is not None:
        K = np.shape(W0)[0]
    elif n_classes is not None:
        K = int(n_classes)
    elif y_arr.ndim == 2:
        K = y_arr.shape[1]
    else:
        K = int(np.max(y_arr)) + 1
    n = X.shape[1]
    x0 = np.zeros(K * n + (K if fit_intercept else 0))
    if W0 is not None:
        x0[: K * n] = np.asarray(W0, dtype=np.float64).ravel()
    if b0 is not None and fit_intercept:
        x0[K * n:] = np.asarray(b0, dtype=np.float64)
    return _Objective(X, y, K, fit_intercept, options), x0


def _result(obj, x, converged, n_iter, start, message, history):
    loss, grad, _ = obj.at(x)
    W, b = obj.split(x)
    return NewtonResult(W=W, b=b, theta=np.array(x, dtype=np.float64), loss=float(loss),
                        grad_max=float(np.max(np.abs(grad))),
                        converged=converged, n_iter=n_iter, n_evals=obj.n_evals,
                        n_hessp=obj.n_hessp, seconds=time.perf_counter() - start,
                        message=message, history=history)


def minimize_trust_newton(
    X: ArrayLike, y: ArrayLike, *, W0: ArrayLike | None = None, b0: ArrayLike | None = None,
    n_classes: int | None = None, fit_intercept: bool = True, sample_weight=None,
    l2: float = 0.0, label_smoothing: float = 0.0, ignore_index: int | None = None,
    reduction: str = "mean", method: str = "fused", tol: float = 1e-6, max_iter: int = 200,
    solver: str = "trust-ncg",
) -> NewtonResult:
    """Trust-region Newton (``solver="trust-ncg"`` or ``"trust-krylov"``) with fused Hessian products.

    Minimises ``loss_and_grad``'s objective over W (K, n) and, with
    ``fit_intercept``, b (K,), from ``W0``/``b0`` (zeros by default; K from
    ``W0``, ``n_classes``, dense targets or ``max(y) + 1``).  Stops when
    ``max |gradient| <= tol`` or after ``max_iter`` outer iterations.  The
    other arguments are those of :func:`fastsoftmax.loss_and_grad`.
    """
    if solver not in ("trust-ncg", "trust-krylov"):
        raise ValueError(f"solver must be 'trust-ncg' or 'trust-krylov', got {solver!r}")
    start = time.perf_counter()
    options = dict(sample_weight=sample_weight, l2=l2, label_smoothing=label_smoothing,
                   ignore_index=ignore_index, reduction=reduction, method=method)
    obj, x0 = _setup(X, y, W0, b0, n_classes, fit_intercept, options)
    history = []

    def callback(intermediate_result):
        grad = obj.at(intermediate_result.x)[1]
        history.append(float(intermediate_result.fun))
        if np.max(np.abs(grad)) <= tol:
            raise StopIteration

    loss, grad = obj.fun(x0)
    if np.max(np.abs(grad)) <= tol:
        return _result(obj, x0, True, 0, start, "converged at the start", history)
    res = scipy.optimize.minimize(obj.fun, x0, jac=True, hessp=obj.hessp, method=solver,
                                  callback=callback, options={"gtol": tol, "maxiter": max_iter})
    converged = float(np.max(np.abs(obj.at(res.x)[1]))) <= tol
    return _result(obj, res.x, converged, int(res.nit), start, str(res.message), history)


def minimize_newton_cholesky(
    X: ArrayLike, y: ArrayLike, *, W0: ArrayLike | None = None, b0: ArrayLike | None = None,
    n_classes: int | None = None, fit_intercept: bool = True, sample_weight=None,
    l2: float = 0.0, label_smoothing: float = 0.0, ignore_index: int | None = None,
    reduction: str = "mean", method: str = "fused", tol: float = 1e-6, max_iter: int = 100,
) -> NewtonResult:
    """Newton's method with Cholesky solves of the reduced Newton system and an Armijo line search.

    Same arguments and stopping rule as :func:`minimize_trust_newton`.  For
    N = K n (+ K) up to a few thousand: each iteration builds the Hessian's
    blocks of K - 1 classes (O(m N^2), fused kernel) and factors them
    (O(N^3)); see :meth:`fastsoftmax.HessianProduct.newton_step`.  The
    step is the same whatever ``method`` (which computes the loss and
    gradient).
    """
    if is_sparse(X):
        raise TypeError("X is a SciPy sparse matrix: Newton-Cholesky builds the full Hessian "
                        "from dense X only; use minimize_newton_pcg")
    start = time.perf_counter()
    options = dict(sample_weight=sample_weight, l2=l2, label_smoothing=label_smoothing,
                   ignore_index=ignore_index, reduction=reduction, method=method)
    obj, x = _setup(X, y, W0, b0, n_classes, fit_intercept, options)
    if method == "fused" and obj.K >= 2 and max_iter >= 0:
        result = _fused_cholesky(obj, x, tol, max_iter, start)
        if result is not None:
            return result
    return _newton_loop(obj, x, _cholesky_step, tol, max_iter, start)


def _fused_cholesky(obj, x, tol, max_iter, start):
    """:func:`_newton_loop` with :func:`_cholesky_step`, in one compiled call
    (:func:`fastsoftmax._newton_fused.newton_cholesky_loop`): the same
    algorithm, stopping rule and messages, iterates equal to rounding.  The
    loss and gradient it reports are those of the Python drivers' evaluation
    (exactly :func:`fastsoftmax.loss_and_grad`'s): ``finish`` applied to the
    loop's last kernel sums, which are the same as the Python path's, or,
    after a failed line search (whose last evaluation was at a trial point),
    that evaluation run again at the returned point, and then counted in
    ``n_evals`` as the Python driver counts it.  None when a
    chunk or the step's factorisation raised (the Python loop then runs, and
    raises)."""
    p = obj.problem
    K, n = obj.K, obj.n
    nt = n + obj.fit_intercept
    m = p.X.shape[0]
    P = rows_from_flat(x, K, n, nt)
    W = np.empty((K, n), dtype=p.X.dtype)
    b = np.empty(K, dtype=p.X.dtype)
    micro = True if policy.tile_gemm(n, K, p.X.dtype.itemsize) else None
    fused = fused_chunk_entry(p.X, W, b, p.labels, p.T, p.sw, micro, None, None, None, None, None)
    hessian_tile, hessian_features, direct = policy.hessian_plan(nt, K, K - 1)
    direct = True if direct else None  # numba compiles only the way of summing used
    hessian = hessian_chunk_entry(p.X, p.labels, p.T, p.sw, direct)
    history = np.empty(min(max_iter, policy.NEWTON_HISTORY) + 1)
    chunks = policy.loss_chunks(m, n, K)
    slabs, bias_slabs, losses = np.empty((chunks, K, n)), np.empty((chunks, K)), np.empty(chunks)
    with single_threaded_blas, parallel_region():
        status, it, _, _, n_evals = newton_cholesky_loop(
            fused, hessian, _fused.step_entry(), p.X, p.labels, p.T, p.sw, float(p.eps),
            float(p.denom), float(p.l2), P, float(tol), int(max_iter),
            int(policy.NEWTON_MAX_STALLED_STEPS), float(policy.NEWTON_STALL_SLACK), JITTER,
            policy.tile_rows(n, K, p.X.dtype.itemsize), micro, hessian_tile, hessian_features,
            direct, slabs, bias_slabs, losses, policy.hessian_chunks(m, K - 1, nt), history,
            None)
    if status == _fused.FAILED:
        return None
    message = {
        _fused.CONVERGED: "converged",
        _fused.MAX_ITER: f"max_iter={max_iter} reached",
        _fused.STALLED: f"the objective did not decrease in {policy.NEWTON_MAX_STALLED_STEPS} "
                        f"steps (rounding level reached)",
        _fused.NOT_FACTORED: "the Hessian could not be factored",
        _fused.NO_DECREASE: _Stopping.NO_DECREASE,
    }[status]
    theta = flat_from_rows(P, n)
    obj.n_evals = int(n_evals)
    if status != _fused.NO_DECREASE and not policy.large_vocabulary(n, K, policy.chunk_count(m)):
        # the loop's last evaluation was at P, with the chunks, tiles and
        # products of loss_and_grad's fused path: its sums are what the
        # Python drivers' evaluation would compute (after a failed line
        # search it was at a trial point, and _result evaluates at P)
        obj.seed(theta, fused_chunk_totals(slabs, bias_slabs, losses))
    return _result(obj, theta, status == _fused.CONVERGED, int(it), start, message,
                   history[: min(it + 1, history.shape[0])].tolist())


def _cholesky_step(obj, x, grad, hessp):
    """The Newton step ``-H^{-1} grad`` by Cholesky, from the reduced system
    of K - 1 classes (:meth:`HessianProduct.newton_step`)."""
    step = hessp.newton_step(grad, JITTER)
    if step is None:
        return "the Hessian could not be factored"
    return step


def _cholesky(H):
    """``cho_factor`` of the symmetric H after adding ``JITTER * max(diag H)``
    to its diagonal, and 100 times more (up to 8 times) while rounding
    leaves it indefinite; None if it never factors.  H is left as it was
    (the shifts go into a copy)."""
    H = np.array(H, dtype=np.float64)
    shift = JITTER * max(float(np.max(np.diag(H))), np.finfo(float).tiny)
    for _ in range(8):
        H[np.diag_indices_from(H)] += shift
        try:
            # one BLAS thread: right after the kernels' parallel region a
            # threaded factorisation contends with their workers (measured
            # 10-100x slower at N = 650 on a busy machine)
            with single_threaded_blas:
                return scipy.linalg.cho_factor(H)
        except np.linalg.LinAlgError:
            shift *= 100.0
    return None


class _Stopping:
    """The Newton drivers' stopping rule, checked at each step's point.

    Stop, converged, when the largest absolute gradient entry is at most
    ``tol``; unconverged after ``max_iter`` steps, or after
    ``NEWTON_MAX_STALLED_STEPS`` steps in a row that did not lower the
    objective by more than ``NEWTON_STALL_SLACK`` of it (the line search
    accepts steps within rounding of the objective; a tol below the working
    dtype's rounding, float32 X with tol 1e-10, would otherwise run to
    max_iter).  ``history`` keeps the objective at each point, ``message``
    why the loop ended (a driver sets it when a step or line search
    fails)."""

    NO_DECREASE = "the line search found no decrease (rounding level reached)"

    def __init__(self, tol: float, max_iter: int):
        self.tol, self.max_iter = tol, max_iter
        self.history: list = []
        self.stalled = 0  # steps in a row that did not lower the objective
        self.converged = False
        self.message = f"max_iter={max_iter} reached"

    def done(self, it: int, loss: float, grad: np.ndarray) -> bool:
        """Whether the loop ends at step ``it``'s point (objective, gradient)."""
        history = self.history
        history.append(float(loss))
        if np.max(np.abs(grad)) <= self.tol:
            self.converged, self.message = True, "converged"
            return True
        if it == self.max_iter:
            return True
        lowered = it == 0 or \
            history[-1] < history[-2] - policy.NEWTON_STALL_SLACK * abs(history[-2])
        self.stalled = 0 if lowered else self.stalled + 1
        if self.stalled >= policy.NEWTON_MAX_STALLED_STEPS:
            self.message = (f"the objective did not decrease in {self.stalled} steps "
                            f"(rounding level reached)")
            return True
        return False


def _newton_loop(obj, x, newton_step, tol, max_iter, start):
    """The Newton drivers' outer loop: stop test (:class:`_Stopping`), step,
    Armijo line search.

    ``newton_step(obj, x, grad, hessp)`` returns the search direction, or a
    message (str) saying why there is none, which ends the loop.
    """
    stop = _Stopping(tol, max_iter)
    it = 0
    for it in range(max_iter + 1):
        loss, grad, hessp = obj.at(x)
        if stop.done(it, loss, grad):
            break
        step = newton_step(obj, x, grad, hessp)
        if isinstance(step, str):
            stop.message = step
            break
        step = _drop_null_directions(obj, step)
        x_new = _line_search(obj, x, loss, grad, step)
        if x_new is None:
            stop.message = _Stopping.NO_DECREASE
            break
        x = x_new
    return _result(obj, x, stop.converged, it, start, stop.message, stop.history)


def _drop_null_directions(obj, step):
    """The step without its components along the objective's null directions,
    removed in place (every ``newton_step`` returns a new array).

    Adding one number to every b_k (and, when l2 = 0, one vector to every row
    of W) changes no probability, so the objective is flat along those
    directions and the exact Newton step has no component there.  A computed
    step does, from rounding amplified by a tiny diagonal shift (Cholesky, on
    collinear features)
    or from the preconditioner (CG); left in, it drifts the intercepts by a
    common constant that depends on the rounding (for instance on the order
    of the samples).  Removing the mean over classes removes it.
    """
    K, n = obj.K, obj.n
    if obj.fit_intercept:
        step[K * n:] -= step[K * n:].mean()
    if obj.options.get("l2", 0.0) == 0.0:
        Ws = step[: K * n].reshape(K, n)
        Ws -= Ws.mean(axis=0)
    return step


def _line_search(obj, x, loss, grad, step):
    """Backtracking (Armijo) from a unit step; the new point, or None."""
    slope = float(grad @ step)
    t = 1.0
    for _ in range(40):
        trial = x + t * step
        # (slack of a few ulps of the loss: near the optimum its decrease is rounding)
        if obj.at(trial)[0] <= loss + 1e-4 * t * slope + 8e-16 * abs(loss):
            return trial
        t *= 0.5
    return None


def minimize_newton_pcg(
    X: ArrayLike, y: ArrayLike, *, W0: ArrayLike | None = None, b0: ArrayLike | None = None,
    n_classes: int | None = None, fit_intercept: bool = True, sample_weight=None,
    l2: float = 0.0, label_smoothing: float = 0.0, ignore_index: int | None = None,
    reduction: str = "mean", method: str = "fused", tol: float = 1e-6, max_iter: int = 100,
    max_cg: int = 500, blocks: BlockInverses | None = None, end: EndSums | None = None,
) -> NewtonResult:
    """Truncated Newton: preconditioned CG on the fused Hessian products, line search.

    Each iteration preconditions with the Hessian's per-class blocks
    estimated from a sample of rows (built at the first step, rebuilt after
    expensive steps: :class:`BlockInverses`), or with its diagonal (one
    pass over X; on sparse X mixed with the penalty's curvature,
    :func:`_inverse_diagonal`) for wide or sparse X or when a block cannot
    be factored (:func:`_preconditioner`), and solves ``H s = -g`` by
    conjugate gradients, to a relative residual set by the Eisenstat-Walker
    forcing term (:class:`_ForcingTerm`; superlinear convergence) or
    ``max_cg`` steps,
    then backtracks from the full step.  Memory: a few vectors of length N,
    the K (n + 1)^2 float64 blocks and, while they are built, two float64
    copies of a tile of 4096 rows besides the kernels'; nothing of size
    m x K on dense X.  On CSR X (both solvers) a step keeps the point's
    probabilities and scales, (m, K + 1) float64; by columns
    (:func:`fastsoftmax._api.sparse_by_columns`) the fit also keeps X's
    transpose (about X's size) and the products an (m, K) float64
    buffer, and an evaluation makes another (m, K) array while it runs
    (see :mod:`fastsoftmax._sparse_columns`).  Same arguments and stopping
    rule as :func:`minimize_trust_newton`; ``blocks``: the
    :class:`BlockInverses` of the previous fit of a warm-started path on the
    same X and targets, to go on with (None: new ones); ``end``: the
    :class:`EndSums` the path carries (None: nothing carried).
    """
    start = time.perf_counter()
    options = dict(sample_weight=sample_weight, l2=l2, label_smoothing=label_smoothing,
                   ignore_index=ignore_index, reduction=reduction, method=method)
    obj, x = _setup(X, y, W0, b0, n_classes, fit_intercept, options)
    blocks = BlockInverses() if blocks is None else blocks
    if _compiled_steps(obj, method) and max_iter >= 0:
        before = copy.copy(blocks)  # its arrays are replaced, never modified in place
        result = _fused_pcg(obj, x, tol, max_iter, start, max_cg, blocks, end)
        if result is not None:
            return result
        # a chunk raised: the Python driver from the start, with the blocks as they were
        blocks.__dict__.update(before.__dict__)
        obj, x = _setup(X, y, W0, b0, n_classes, fit_intercept, options)  # counts afresh
    step = functools.partial(_pcg_step, max_cg=max_cg, blocks=blocks, forcing=_ForcingTerm())
    return _newton_loop(obj, x, step, tol, max_iter, start)


def _compiled_steps(obj, method) -> bool:
    """Whether :func:`minimize_newton_pcg` runs its steps in the compiled
    :func:`fastsoftmax._newton_fused.newton_cg_step`: the fused method on dense
    X whose loss and gradient take the fused kernel (not the large-vocabulary one)."""
    return (method == "fused" and obj.K >= 2 and not is_sparse(obj.X)
            and not policy.large_vocabulary(obj.n, obj.K, policy.chunk_count(obj.X.shape[0])))


def _fused_pcg(obj, x, tol, max_iter, start, max_cg, blocks, end=None):
    """:func:`_newton_loop` with :func:`_pcg_step`, each step (conjugate
    gradients, the null directions' removal and the line search) one call of
    the compiled :func:`fastsoftmax._newton_fused.newton_cg_step`: the same
    algorithm, stopping rule and messages, iterates equal to rounding.  The
    loop around the steps stays in Python: it builds the preconditioner's
    blocks (:class:`BlockInverses`, NumPy) or diagonal between steps and keeps
    the forcing term.  As in :func:`_fused_cholesky`, the loss and gradient
    reported are the Python drivers' (the last kernel sums at the returned
    point, finished in Python, or an evaluation there after a failed line
    search).  With ``end`` (:class:`EndSums`), a start at the previous fit's
    end point takes that fit's last kernel sums instead of a first
    evaluation, and the fit leaves its own there.  None when a chunk raised
    (the caller then runs the Python loop, where the exception surfaces)."""
    p = obj.problem
    K, n = obj.K, obj.n
    nt = n + obj.fit_intercept
    m = p.X.shape[0]
    itemsize = p.X.dtype.itemsize
    carried = end.recall(obj, x) if end is not None else None
    if carried is not None:
        obj.seed(x, carried)
    loss, grad, _ = obj.at(x)
    P = rows_from_flat(x, K, n, nt)
    G = rows_from_flat(grad, K, n, nt)
    W = np.empty((K, n), dtype=p.X.dtype)
    b = np.empty(K, dtype=p.X.dtype)
    WV = np.empty((2 * K, n), dtype=p.X.dtype)
    micro = True if policy.tile_gemm(n, K, itemsize) else None
    fused = fused_chunk_entry(p.X, W, b, p.labels, p.T, p.sw, micro, None, None, None, None, None)
    product_micro = True if policy.tile_gemm(n, 2 * K, itemsize) else None
    product = product_chunk_entry(p.X, WV, b, b, p.labels, p.T, p.sw, product_micro)
    chunks, pchunks = policy.loss_chunks(m, n, K), policy.product_chunks(m, n, K)
    slabs, bias_slabs, losses = np.empty((chunks, K, n)), np.empty((chunks, K)), np.empty(chunks)
    product_slabs, product_bias_slabs = np.empty((pchunks, K, n)), np.empty((pchunks, K))
    no_blocks, no_diagonal = np.empty((0, 0, 0)), np.empty((0, 0))
    forcing = _ForcingTerm()
    stop = _Stopping(tol, max_iter)
    sums = _fused.UNCHANGED  # what the slabs hold (UNCHANGED: no sums yet; the cache has x)
    it = 0
    for it in range(max_iter + 1):
        if stop.done(it, loss, G):
            break
        Wp, bp = obj.split(flat_from_rows(P, n))
        hessp = HessianProduct(dataclasses.replace(p, W=Wp, b=p.b if bp is None else bp),
                               "fused")
        factors = blocks.lower_factors(obj, hessp)
        inv_diag = no_diagonal
        if factors is None:  # Jacobi, as _preconditioner
            inverse = _inverse_diagonal(hessp.diagonal(), float(p.l2), False)
            inv_diag = rows_from_flat(inverse, K, n, nt)
        gnorm = float(np.linalg.norm(G))
        with single_threaded_blas, parallel_region():
            status, products, loss, n_evals, where = newton_cg_step(
                fused, product, p.X, p.labels, p.T, p.sw, float(p.eps), float(p.denom),
                float(p.l2), P, G, float(loss), no_blocks if factors is None else factors,
                inv_diag, forcing.next(gnorm) * gnorm, int(max_cg),
                policy.tile_rows(n, K, itemsize), micro, policy.tile_rows(n, 2 * K, itemsize),
                product_micro, slabs, bias_slabs, losses, product_slabs, product_bias_slabs,
                None)
        obj.n_hessp += products
        obj.n_evals += n_evals
        blocks.update(products)
        if status == _fused.FAILED:
            return None
        if where != _fused.UNCHANGED:
            sums = where
        if status == _fused.NO_DESCENT:
            stop.message = _NO_DESCENT
            break
        if status == _fused.NO_DECREASE:
            stop.message = _Stopping.NO_DECREASE
            break
    theta = flat_from_rows(P, n)
    if sums == _fused.AT_POINT:  # the last evaluation was at P, as loss_and_grad's would be
        totals = fused_chunk_totals(slabs, bias_slabs, losses)
        obj.seed(theta, totals)
        if end is not None:
            end.remember(obj, theta, totals)
    elif sums == _fused.ELSEWHERE:  # last evaluated at a trial point: _result evaluates at P
        obj.forget()
    result = _result(obj, theta, stop.converged, it, start, stop.message, stop.history)
    # the point's objective as reported (finished in Python; the step's own may
    # add the penalty's squares in another order)
    result.history[-1] = result.loss
    return result


class EndSums:
    """The unnormalised loss-and-gradient sums at the end point of the last fit
    of a warm-started path, for the next fit to start from without a pass
    over X.

    ``SoftmaxRegressionCV`` fits each fold along its Cs, each fit starting at
    the previous one's coefficients, on the same X, targets and weights.  The
    sums ``(loss_sum, G, gb)`` do not depend on the penalty, so the next
    fit's first objective and gradient are these sums finished with its own
    ``l2``, bit for bit what an evaluation would give (same kernel, chunks
    and tiles).  :func:`_fused_pcg` keeps them after a fit whose last
    evaluation was at its end point and takes them when a fit starts at
    that point (the same float64 coordinates) on the same problem: the same
    X, targets and sample-weight objects (compared by identity: do not
    modify them in place between fits), the same options but ``l2``, K,
    intercept and chunk count.  The finished loss is a fresh evaluation's bit
    for bit, except that where the kernel's one-chunk path would finish its
    own float64 sums in place (K > 1024 classes) the penalty's squares may
    be added in another order.  Measured, idle, on the CV benchmark's
    (5000, 50, 5) set: a first evaluation cost about 0.3 ms of a 3.4 ms fit."""

    def __init__(self):
        self._point = None  # theta (float64) of the sums
        self._problem = None  # what they belong to: see _key
        self._totals = None

    @staticmethod
    def _key(obj) -> tuple:
        """The problem's X, targets and options but l2 (the objects), its K
        and intercept, and the loss kernel's chunk count (which the thread
        count sets, and the sums' order with it)."""
        options = {key: value for key, value in obj.options.items() if key != "l2"}
        m = obj.X.shape[0]
        return (obj.X, obj.y, options, obj.K, obj.fit_intercept,
                policy.loss_chunks(m, obj.n, obj.K))

    @staticmethod
    def _same(a, b) -> bool:
        if a is b:
            return True
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(EndSums._same(a[k], b[k]) for k in a)
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return False  # arrays: the same object only
        return type(a) is type(b) and a == b

    def remember(self, obj, theta, totals) -> None:
        """Keep ``totals`` (loss_sum, G (K, n), gb (K,)) of obj's problem at theta (copies)."""
        loss_sum, G, gb = totals
        self._point = np.array(theta, dtype=np.float64)
        self._problem = self._key(obj)
        self._totals = (float(loss_sum), np.array(G), np.array(gb))

    def recall(self, obj, x):
        """The kept sums if they are obj's problem's at x, else None: copies,
        handed out as views, as the parallel kernel's chunk sums are (so that
        ``finish`` treats them alike)."""
        if self._point is None or self._point.shape != np.shape(x) \
                or not np.array_equal(self._point, x) \
                or not all(self._same(a, b) for a, b in zip(self._key(obj), self._problem)):
            return None
        loss_sum, G, gb = self._totals
        return loss_sum, G.copy()[...], gb.copy()[...]


class BlockInverses:
    """The inverted blocks of the block preconditioner, kept across the
    Newton steps of one fit and, when the caller passes it on
    (``SoftmaxRegressionCV`` along each fold's path of Cs), across the fits
    of a warm-started path on the same X: built at the first step and after
    a step whose conjugate gradients took more than
    ``PCG_BLOCK_AFTER_CG_STEPS`` Hessian products, reused otherwise.
    Building them costs about n' / 4 products on the rows sampled; when CG
    needs only a few steps (well conditioned data, or the later steps of a
    warm-started regularisation path) blocks from an earlier point still
    precondition well.  Measured, idle: ``SoftmaxRegressionCV`` over 10 Cs
    and 5 folds of (5000, 50, 5) standardised data took 1.1 s with new
    blocks at every step (half of it building them, for 2 CG steps a Newton
    step); switching to the diagonal instead after cheap steps cost
    standardised digits x10 seven more Newton steps (17 against 10).

    The blocks are kept as built, with the penalty ``l2`` they hold; a fit
    with another ``l2`` (the next C of a path) shifts their diagonal by the
    difference and factors them again (K Cholesky factorisations of
    n' x n', no pass over X; the Python driver also inverts them).  Carried along the paths of the CV benchmark's (5000, 50, 5)
    set, 6 builds instead of 41 (measured idle, alternating processes: the
    whole CV 0.27-0.30 s against 0.42-0.51 s); on standardised digits the
    blocks are built again about every other fit anyway (25 builds instead
    of 51; 0.62-0.65 s before and after).  Blocks that cannot be factored
    leave the preconditioner on the diagonal until a step is expensive
    (they were built again at every step before)."""

    def __init__(self):
        self.blocks = None  # (K, n', n') float64 as built, holding the penalty self.l2
        self.l2 = 0.0
        self.inverses = None
        self.inverted_l2 = None  # the penalty of the inverses (None: not inverted)
        self.factors = None
        self.factored_l2 = None  # the penalty of the factors (None: not factored)
        self.stale = True

    def _built(self, obj, hessp) -> bool:
        """Whether the blocks apply (not for wide or sparse X); builds them
        first when stale or of another shape."""
        width = obj.n + obj.fit_intercept
        if width > policy.PCG_BLOCK_MAX_WIDTH or is_sparse(obj.X):
            return False
        if self.stale or self.blocks is None or self.blocks.shape[1:] != (width, width) \
                or self.blocks.shape[0] != obj.K:
            stride = max(1, obj.X.shape[0] // policy.PCG_BLOCK_SAMPLE_ROWS)
            self.blocks, self.l2 = hessp.class_blocks(stride), float(obj.options.get("l2", 0.0))
            self.inverted_l2 = self.factored_l2 = None
        return True

    def _penalised(self, n, l2):
        """The blocks holding the penalty l2 on W's n columns: the blocks as
        built, or a copy with the penalty changed (they stay as built)."""
        if l2 == self.l2:
            return self.blocks
        blocks = self.blocks.copy()
        diagonal = np.arange(n)  # the penalty is on W's entries only
        blocks[:, diagonal, diagonal] += l2 - self.l2
        return blocks

    def get(self, obj, hessp):
        """The blocks' inverses (K, n', n'), or None when the blocks do not apply
        (or cannot be factored)."""
        if not self._built(obj, hessp):
            return None
        l2 = float(obj.options.get("l2", 0.0))
        if self.inverted_l2 != l2:
            self.inverses = _block_inverses(self._penalised(obj.n, l2))
            self.inverted_l2 = l2
        return self.inverses

    def lower_factors(self, obj, hessp):
        """The blocks' lower Cholesky factors (K, n', n') (of the blocks shifted
        as :func:`_block_inverses` shifts them), or None when the blocks do
        not apply (or cannot be factored): what the compiled steps
        (:func:`fastsoftmax._newton_fused.newton_cg_step`) solve with, two
        triangular solves a block instead of a product with its inverse, so
        that no inverse is formed (measured, CV on standardised digits:
        54 sets of inverses took 83 ms of 0.42 s)."""
        if not self._built(obj, hessp):
            return None
        l2 = float(obj.options.get("l2", 0.0))
        if self.factored_l2 != l2:
            self.factors = _block_factors(self._penalised(obj.n, l2))
            self.factored_l2 = l2
        return self.factors

    def update(self, cg_steps):
        self.stale = cg_steps > policy.PCG_BLOCK_AFTER_CG_STEPS


class _ForcingTerm:
    """How accurately CG solves each Newton system: the relative residual
    ``eta_k`` it stops at, for one fit.

    The choice of Eisenstat and Walker ("Choosing the forcing terms in an
    inexact Newton method", SIAM J. Sci. Comput. 17, 1996; their second
    choice with gamma = 1 and alpha = (1 + sqrt 5) / 2):
    ``eta_k = (||g_k|| / ||g_{k-1}||)^alpha``, kept at least
    ``eta_{k-1}^alpha`` when that exceeds 0.1 (so it does not collapse after
    one lucky step), and at most 0.5 (also the first step's).  Loose while
    the gradient falls slowly, tight once Newton converges fast: CG spends
    its products where they pay.  Measured against the earlier
    ``min(0.5, sqrt(||g||))`` (idle, tol 1e-8, same objectives): Hessian
    products on 20-newsgroups-shaped TF-IDF data 158 -> 112 (10.7 -> 7.8 s),
    docstring corpus 236 -> 175, raw digits x10 137 -> 121, standardised
    digits x10 104 -> 85, features scaled 10^-2..10^2 27 -> 20.
    """

    ALPHA = (1.0 + 5.0 ** 0.5) / 2.0
    MAX = 0.5
    KEEP_ABOVE = 0.1

    def __init__(self):
        self.gnorm = None
        self.eta = self.MAX

    def next(self, gnorm: float) -> float:
        """The forcing term of the Newton step whose gradient norm is ``gnorm``."""
        if self.gnorm is None or not self.gnorm > 0.0:
            eta = self.MAX
        else:
            eta = (gnorm / self.gnorm) ** self.ALPHA
            carried = self.eta ** self.ALPHA
            if carried > self.KEEP_ABOVE:
                eta = max(eta, carried)
            eta = min(eta, self.MAX)
        self.gnorm, self.eta = gnorm, eta
        return eta


def _pcg_step(obj, x, grad, hessp, max_cg, blocks, forcing):
    """The truncated Newton step: preconditioned CG on ``H s = -grad``
    (see :func:`minimize_newton_pcg`, :func:`_preconditioner`,
    :class:`BlockInverses` and :class:`_ForcingTerm`); on CSR X with the
    fused method in the feature-major layout (:func:`_feature_major_cg`)."""
    inverses = blocks.get(obj, hessp)
    hessp_before = obj.n_hessp
    gnorm = float(np.linalg.norm(grad))
    stop = forcing.next(gnorm) * gnorm
    if inverses is None and _feature_major(obj):
        step = _feature_major_cg(obj, hessp, grad, max_cg, stop)
    else:
        precondition = _preconditioner(obj, hessp, inverses)

        def product(d):
            Hd = obj.apply(hessp, d)
            return Hd, float(d @ Hd)

        step = _cg(product, grad, precondition, max_cg, stop)
    blocks.update(obj.n_hessp - hessp_before)
    return step


def _feature_major(obj) -> bool:
    """Whether the conjugate gradients run in the feature-major layout
    (:func:`_feature_major_cg`): CSR X with the fused method."""
    return is_sparse(obj.X) and obj.options["method"] == "fused"


def _feature_major_cg(obj, hessp, grad, max_cg, stop):
    """:func:`_cg` with the Jacobi preconditioner of :func:`_preconditioner`
    on CSR X, every vector in the feature-major layout ``[W^T.ravel(), b]``
    (the sparse kernel's: :func:`fastsoftmax._hessian.feature_major_product`):
    the gradient is transposed into it once and the step back, and every
    pass of a CG step reads contiguous memory.  Measured on
    20-newsgroups-shaped data (K = 20, n = 130107, idle, 2 threads): the
    class-major Jacobi pass took 6.0 ms (K strided streams per array),
    this one 2.6 ms; a product no longer copies its direction transposed
    nor makes new arrays of N entries."""
    K, n = obj.K, obj.n
    precondition = _feature_major_preconditioner(obj, hessp)
    Hd = np.empty_like(grad)

    def product(d):
        return Hd, obj.apply_feature_major(hessp, d, Hd)

    step = _cg(product, _transposed_w(grad, K, n), precondition, max_cg, stop)
    return step if isinstance(step, str) else _transposed_w(step, n, K)


def _feature_major_preconditioner(obj, hessp):
    """:func:`_preconditioner` without blocks on CSR X (the diagonal mixed
    with the penalty, :func:`_inverse_diagonal`), for vectors in the
    feature-major layout of :func:`_feature_major_cg`."""
    l2 = float(obj.options.get("l2", 0.0))
    inv = _inverse_diagonal(feature_major_diagonal(hessp), l2, True)
    return _jacobi(inv, obj.K, obj.n, l2, feature_major=True)


def _transposed_w(v, rows, cols):
    """The flat vector ``v`` (N,) whose first ``rows cols`` entries hold a
    (rows, cols) matrix, with that matrix transposed: ``[W.ravel(), b]``
    as ``[W^T.ravel(), b]`` for (rows, cols) = (K, n), and back for (n, K)."""
    out = np.empty_like(v)
    size = rows * cols
    _vectors.transpose_into(v[:size].reshape(rows, cols), out[:size].reshape(cols, rows))
    out[size:] = v[size:]
    return out


def _cg(product, grad, precondition, max_cg, stop):
    """Preconditioned conjugate gradients on ``H s = -grad`` until the
    residual's norm is at most ``stop`` (the forcing term times ``||grad||``,
    :class:`_ForcingTerm`) or ``max_cg`` steps: the step, or a message.
    ``product(d)`` returns ``(H d, d . H d)`` (the point's Hessian product,
    counted; ``H d`` may be overwritten by the next call),
    ``precondition(r, z)`` writes ``M^{-1} r`` into z and returns ``r . M^{-1}
    r``.  The vectors are updated in place, in buffers made once a solve (a
    new array of N entries a step paid page faults), by
    :mod:`fastsoftmax._vectors` (compiled fused passes at
    text-classification sizes, where every NumPy temporary is a pass over
    tens of MB); they may be in any layout that ``product`` and
    ``precondition`` share."""
    step = np.zeros_like(grad)
    r = -grad
    z = np.empty_like(grad)
    rz = precondition(r, z)
    d = z.copy()
    if not rz > 0.0:  # what is left of the gradient lies along flat directions
        return _NO_DESCENT
    for _ in range(max_cg):
        Hd, curvature = product(d)
        if not curvature > 0.0:  # no positive curvature left (rounding)
            if not step.any():
                step = d
            break
        alpha = rz / curvature
        if _vectors.advance(step, r, d, Hd, alpha) <= stop:
            break
        rz_new = precondition(r, z)
        if not rz_new > 0.0:  # the residual is rounding along flat directions
            break
        _vectors.new_direction(d, z, rz_new / rz)
        rz = rz_new
    return step


def _preconditioner(obj, hessp, inverses=None):
    """``precondition(r, z)``, which writes ``M^{-1} r`` into z and returns
    ``r . M^{-1} r``, for the conjugate gradients of one Newton step.

    The parameters are viewed as a (K, n') matrix R, row k = ``[W[k], b[k]]``.
    The Hessian splits exactly into two invariant parts: the class means
    (every row equal: adding one vector to every row of W changes no
    probability, so there H is ``l2`` on W's columns and 0 on b) and the
    rest.  M^{-1} solves the first part exactly (``mean / l2``; nothing
    when l2 = 0 or for b, whose gradient has no class mean) and, on the rest,
    inverts an approximation of H restricted to it: the Hessian's per-class
    diagonal blocks (:meth:`HessianProduct.class_blocks`) through their
    ``inverses`` ((K, n', n'), from :class:`BlockInverses`), or
    without them its diagonal (Jacobi; on sparse X mixed with the penalty's
    curvature, :func:`_inverse_diagonal`).  Without the split, a block or
    diagonal preconditioner mixes the two parts, and CG then spends most of
    its steps on directions of curvature ``l2``.  The blocks capture the
    features' scales and correlations: measured on the benchmark's data
    (bench/test_fit.py), Hessian products per fit fell from 918 to 93 on raw
    digits and from several thousand per Newton step to 2 on features scaled
    10^-2..10^2.
    """
    K, n = obj.K, obj.n
    width = n + obj.fit_intercept
    l2 = float(obj.options.get("l2", 0.0))
    if inverses is None:
        return _jacobi(_inverse_diagonal(hessp.diagonal(), l2, is_sparse(obj.X)), K, n, l2)

    def precondition(r, z):
        R = rows_from_flat(r, K, n, width)
        mean = R.mean(axis=0)
        # one batched product: K (n', n') inverses times K rows
        Z = np.matmul(inverses, (R - mean)[:, :, None])[:, :, 0]
        Z -= Z.mean(axis=0)
        if l2 > 0.0:
            Z[:, :n] += mean[:n] / l2
        z[...] = flat_from_rows(Z, n)
        return float(r @ z)

    return precondition


def _inverse_diagonal(diagonal, l2, sparse):
    """The inverse of the diagonal preconditioner's entries, (N,) float64, in
    the layout of the Hessian's ``diagonal`` (:meth:`HessianProduct.diagonal`
    or :func:`fastsoftmax._hessian.feature_major_diagonal`; overwritten):
    ``1 / (mix d + (1 - mix) l2)`` for its entries ``d`` and ``mix =
    fastsoftmax._dispatch.pcg_diagonal_mix(sparse)`` (1 for dense X: exactly
    ``1 / d``), each entry at least 1e-12 of the largest."""
    mix = policy.pcg_diagonal_mix(sparse)
    mixed = diagonal
    if mix != 1.0:
        mixed *= mix
        mixed += (1.0 - mix) * l2
    floor = max(float(np.max(mixed)), np.finfo(float).tiny) * 1e-12
    np.maximum(mixed, floor, out=mixed)  # in place: N entries, tens of MB on text data
    return np.divide(1.0, mixed, out=mixed)


def _jacobi(inv_diag, K, n, l2, feature_major=False):
    """:func:`_preconditioner` with the inverted diagonal ``inv_diag`` on the
    part off the class means, on the flat vector directly: the W part as a
    (K, n) view (:func:`fastsoftmax._vectors.jacobi_off_means`), or with
    ``feature_major`` (vectors ``[W^T.ravel(), b]``, :func:`_feature_major_cg`)
    as an (n, K) view (:func:`fastsoftmax._vectors.jacobi_off_means_rows`);
    b's K entries apart."""
    shape, off_means = (((n, K), _vectors.jacobi_off_means_rows) if feature_major
                        else ((K, n), _vectors.jacobi_off_means))
    inv_w = inv_diag[: K * n].reshape(shape)
    inv_b = inv_diag[K * n:]

    def precondition(r, z):
        rz = off_means(r[: K * n].reshape(shape), inv_w, l2, z[: K * n].reshape(shape))
        if inv_b.shape[0]:  # the intercepts: the same without the penalty
            zb = (r[K * n:] - r[K * n:].mean()) * inv_b
            z[K * n:] = zb - zb.mean()
            rz += float(r[K * n:] @ z[K * n:])
        return rz

    return precondition


def _block_inverses(blocks):
    """The (K, n', n') inverses of the K symmetric blocks, each
    shifted by ``JITTER`` times its largest diagonal entry as
    :func:`_cholesky` shifts it, exactly symmetric; None when one does not
    factor even with :func:`_cholesky`'s larger shifts.  All K at once
    (batched Cholesky and triangular inverse, one NumPy call each) while
    they factor with the first shift: measured, K = 10, n' = 65, 0.3 ms
    against 2.4 ms for K ``cho_factor`` and ``cho_solve`` calls, which
    ``SoftmaxRegressionCV`` paid at every C of a path on digits."""
    shifted = _jittered(blocks)
    try:
        with single_threaded_all_blas:
            L = np.linalg.cholesky(shifted)
            Linv = np.linalg.inv(L)
            inv = np.matmul(Linv.transpose(0, 2, 1), Linv)
    except np.linalg.LinAlgError:  # indefinite to rounding: larger shifts, block by block
        factors = [_cholesky(block) for block in blocks]
        return None if any(f is None for f in factors) else _inverses(factors)
    if not np.all(np.isfinite(inv)):
        return None
    return 0.5 * (inv + inv.transpose(0, 2, 1))


def _jittered(blocks):
    """A copy of the (K, n', n') blocks with ``JITTER`` times each block's
    largest diagonal entry added to its diagonal (the first shift of
    :func:`_cholesky`)."""
    width = blocks.shape[1]
    diagonal = np.arange(width)
    top = np.maximum(blocks[:, diagonal, diagonal].max(axis=1), np.finfo(float).tiny)
    shifted = blocks.copy()
    shifted[:, diagonal, diagonal] += (JITTER * top)[:, None]
    return shifted


def _block_factors(blocks):
    """The lower Cholesky factors (K, n', n') of the K symmetric blocks, each
    shifted as :func:`_block_inverses` shifts it (by ``JITTER`` times its
    largest diagonal entry, and block by block by :func:`_cholesky`'s larger
    shifts when that does not factor); None when one never factors or a
    factor is not finite."""
    shifted = _jittered(blocks)
    try:
        with single_threaded_all_blas:
            L = np.linalg.cholesky(shifted)
    except np.linalg.LinAlgError:  # indefinite to rounding: larger shifts, block by block
        factors = [_cholesky(block) for block in blocks]
        if any(f is None for f in factors):
            return None
        # cho_factor's upper factor U (H = U^T U; its other triangle is not zeroed)
        L = np.stack([np.triu(c).T if not lower else np.tril(c) for c, lower in factors])
    return L if np.all(np.isfinite(L)) else None


def _inverses(factors):
    """The (K, n', n') inverses of K SPD blocks from their Cholesky factors,
    made exactly symmetric (so that the preconditioner is).  Applying them is
    one batched product per CG step; K ``cho_solve`` calls cost 0.5 ms in
    Python overhead (measured, K = 10, n' = 65: half of a
    ``SoftmaxRegressionCV`` fit on digits went there)."""
    with single_threaded_blas:
        inv = np.stack([scipy.linalg.cho_solve(f, np.eye(f[0].shape[0])) for f in factors])
    return 0.5 * (inv + inv.transpose(0, 2, 1))
