"""The solvers of ``SoftmaxRegression`` against each other, and the Newton-CG drivers.

Two questions, answered by timing (once each, after a warm-up fit that
compiles the kernels, so the times are noisy on a shared machine):

1. which Newton-CG driver ``solver="newton-cg"`` should run: SciPy's
   trust-ncg on the fused Hessian products, or the Jacobi-preconditioned
   truncated Newton of ``minimize_newton_pcg`` (both from
   ``fastsoftmax._newton``, same objective, same stopping rule);
2. where ``solver="auto"`` should switch from Newton-Cholesky to Newton-CG
   (``AUTO_CHOLESKY_MAX_PARAMS``): both on data of growing N = K (n + 1).

Data: scikit-learn's iris, wine and digits with raw features tiled 10x, a
standardised synthetic set, and synthetic sets of growing n (feature scales
spread over 10^-1..10^1).  C = 1, tol = 1e-6 on max |gradient| of the
scaled objective.  Run from the repository root as
``PYTHONPATH=. python bench/newton_compare.py [drivers|threshold]``.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits, load_iris, load_wine
from sklearn.exceptions import ConvergenceWarning

from fastsoftmax._newton import minimize_newton_pcg, minimize_trust_newton
from fastsoftmax.estimator import SoftmaxRegression
from fastsoftmax.tools.problems import features, model_labels, weights

TOL = 1e-6


def synthetic(m, n, K, spread=1.0, seed=0):
    """Standard-normal features times scales 10^-spread..10^spread, softmax-model labels."""
    rng = np.random.default_rng(seed)
    X = features(rng, m, n)
    y = model_labels(rng, X, weights(rng, K, n) * 3)
    return X * np.logspace(-spread, spread, n), y


def datasets():
    for name, loader in (("iris", load_iris), ("wine", load_wine), ("digits", load_digits)):
        X, y = loader(return_X_y=True)
        yield f"{name} raw x10", np.tile(X, (10, 1)), np.tile(y, 10)
    X, y = synthetic(20_000, 100, 10, spread=0.0)
    yield "synthetic std", X, y


def drivers() -> None:
    print(f"{'data':16} {'driver':10} {'seconds':>8} {'iter':>5} {'hessp':>6} {'objective':>20}")
    for name, X, y in datasets():
        K = int(y.max()) + 1
        l2 = 1.0 / X.shape[0]
        for driver, run in (("trust-ncg", minimize_trust_newton), ("pcg", minimize_newton_pcg)):
            run(X[:200], y[:200], n_classes=K, l2=l2, max_iter=2)  # compile
            r = run(X, y, n_classes=K, l2=l2, tol=TOL, max_iter=1000)
            print(f"{name:16} {driver:10} {r.seconds:8.3f} {r.n_iter:5d} {r.n_hessp:6d} "
                  f"{r.loss:20.14g}{'' if r.converged else '  (not converged)'}")


def fit_time(solver, X, y):
    model = SoftmaxRegression(solver=solver, tol=TOL, max_iter=100_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X[:200], y[:200])  # compile
        start = time.perf_counter()
        model.fit(X, y)
    return time.perf_counter() - start, int(model.n_iter_[0]), model.objective_


def threshold(solvers=("newton-cg", "newton-cholesky")) -> None:
    print(f"{'data':24} {'N':>6} " + " ".join(f"{s:>22}" for s in solvers))
    cases = [(name, X, y) for name, X, y in datasets()]
    cases += [(f"synthetic n={n} K=10", *synthetic(20_000, n, 10)) for n in (20, 50, 100, 200)]
    for name, X, y in cases:
        N = (int(y.max()) + 1) * (X.shape[1] + 1)
        cells = []
        for solver in solvers:
            seconds, nit, _ = fit_time(solver, X, y)
            cells.append(f"{seconds:8.3f} s {nit:6d} it")
        print(f"{name:24} {N:6d} " + " ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    which = sys.argv[1:] or ["drivers", "threshold"]
    if "drivers" in which:
        drivers()
    if "threshold" in which:
        threshold()
