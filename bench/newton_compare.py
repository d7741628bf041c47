"""Second-order solvers against L-BFGS on scikit-learn's wine and digits data.

Raw features, tiled 10x, C = 1 (a mean loss with l2 = 1 / (C m)), an
intercept, tol = 1e-6 on max |gradient| for every solver.  L-BFGS-B runs as
``SoftmaxRegression`` runs it (gtol = tol, ftol = 64 eps, maxls = 50), on
``fs.loss_and_grad``.  Run from the repository root as
``PYTHONPATH=. python bench/newton_compare.py``; each solver
is timed once after a warm-up call that compiles the kernels, so the times
are noisy on a shared machine.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.optimize
from sklearn.datasets import load_digits, load_wine

import fastsoftmax as fs
from fastsoftmax._newton import (minimize_newton_cholesky, minimize_newton_pcg,
                                 minimize_trust_newton)


def lbfgs(X, y, K, l2, tol):
    n = X.shape[1]
    start = time.perf_counter()

    def fun(x):
        loss, dW, db = fs.loss_and_grad(x[: K * n].reshape(K, n), X, y, b=x[K * n:], l2=l2)
        return loss, np.concatenate([dW.ravel(), db])

    res = scipy.optimize.minimize(fun, np.zeros(K * n + K), jac=True, method="L-BFGS-B",
                                  options={"gtol": tol, "ftol": 64 * np.finfo(float).eps,
                                           "maxls": 50, "maxiter": 100000, "maxfun": 200000})
    gmax = float(np.max(np.abs(fun(res.x)[1])))
    return res.fun, gmax, res.nit, res.nfev, 0, time.perf_counter() - start


def main(tol: float = 1e-6) -> None:
    print(f"{'data':14} {'solver':16} {'seconds':>8} {'iter':>6} {'evals':>6} {'hessp':>6} "
          f"{'max|g|':>9} {'objective - best':>17}")
    for name, loader in (("wine x10", load_wine), ("digits x10", load_digits)):
        X, y = loader(return_X_y=True)
        X, y = np.tile(X, (10, 1)), np.tile(y, 10)
        m, K = X.shape[0], int(y.max()) + 1
        l2 = 1.0 / m
        minimize_newton_cholesky(X[:50], y[:50], n_classes=K, l2=l2, max_iter=1)  # compile
        minimize_trust_newton(X[:50], y[:50], n_classes=K, l2=l2, max_iter=1)
        minimize_newton_pcg(X[:50], y[:50], n_classes=K, l2=l2, max_iter=1)
        rows = {"L-BFGS-B": lbfgs(X, y, K, l2, tol)}
        for solver in ("trust-ncg", "trust-krylov"):
            r = minimize_trust_newton(X, y, l2=l2, tol=tol, solver=solver, max_iter=1000)
            rows[solver] = (r.loss, r.grad_max, r.n_iter, r.n_evals, r.n_hessp, r.seconds)
        r = minimize_newton_pcg(X, y, l2=l2, tol=tol)
        rows["newton-pcg"] = (r.loss, r.grad_max, r.n_iter, r.n_evals, r.n_hessp, r.seconds)
        r = minimize_newton_cholesky(X, y, l2=l2, tol=tol)
        rows["newton-cholesky"] = (r.loss, r.grad_max, r.n_iter, r.n_evals, 0, r.seconds)
        best = min(v[0] for v in rows.values())
        for solver, (loss, gmax, nit, nev, nhp, sec) in rows.items():
            print(f"{name:14} {solver:16} {sec:8.3f} {nit:6d} {nev:6d} {nhp:6d} {gmax:9.1e} "
                  f"{(loss - best) / best:17.1e}")


if __name__ == "__main__":
    main()
