"""Cross-validated fits: SoftmaxRegressionCV vs LogisticRegressionCV, same Cs and folds.

For each data set, both estimators get the same path ``Cs`` (10 values,
1e-4..1e4), the same five stratified folds (as a list of index pairs), the
same ``tol`` and accuracy scoring.  LogisticRegressionCV runs with each of
its applicable solvers (lbfgs, newton-cg, and newton-cholesky where the
Hessian has at most ``CHOLESKY_MAX_PARAMS`` rows), capped at
``SKLEARN_MAX_ITER`` iterations per fit; SoftmaxRegressionCV with its
default solver.  Reported per estimator: time (after a warm-up fit that
compiles the kernels), the chosen ``C_`` and whether it
equals SoftmaxRegressionCV's; the speed-up is over the fastest scikit-learn
solver that chose the same C.  Times as in bench/test_fit.py (the median of
9 runs under half a second).  The test asserts the same choice (a
correctness check, not a timing).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_fit_cv.py \\
        --benchmark-disable -s
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits, load_wine  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from conftest import TINY  # noqa: E402
from fastsoftmax.estimator_cv import SoftmaxRegressionCV  # noqa: E402
from test_fit import bundled, synthetic, timed_fit as timed  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

CS = np.logspace(-4, 4, 10)
TOL = 1e-6
SKLEARN_MAX_ITER = 1000
CHOLESKY_MAX_PARAMS = 2000

SUITE = ({
    "wine std": lambda: bundled(load_wine, True, 1),
} if TINY else {
    "wine raw x10": lambda: bundled(load_wine, False, 10),
    "digits std": lambda: bundled(load_digits, True, 1),
    "digits raw": lambda: bundled(load_digits, False, 1),
    "synthetic 5000x50x5 std": lambda: synthetic(5_000, 50, 5),
})


@functools.lru_cache(maxsize=1)
def data(name):
    X, y = SUITE[name]()
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y))
    return X, y, folds


@pytest.mark.parametrize("name", list(SUITE))
def test_cv_time_vs_logistic_regression_cv(benchmark, name):
    X, y, folds = data(name)
    K = len(np.unique(y))
    timed(SoftmaxRegressionCV(Cs=CS[:2], cv=2, tol=TOL), X[::5], y[::5])  # compile
    ours = SoftmaxRegressionCV(Cs=CS, cv=folds, tol=TOL, max_iter=10_000, scoring="accuracy")
    benchmark.group = f"cv {name} ({X.shape[0]} x {X.shape[1]}, {K} classes)"
    seconds = []
    benchmark.pedantic(lambda: seconds.append(timed(ours, X, y)), rounds=1, iterations=1)
    solvers = ["lbfgs", "newton-cg"]
    if K * (X.shape[1] + 1) <= CHOLESKY_MAX_PARAMS:
        solvers.append("newton-cholesky")
    ref = {}
    for solver in solvers:
        model = LogisticRegressionCV(Cs=CS, cv=folds, tol=TOL, solver=solver, l1_ratios=(0.0,),
                                     scoring="accuracy",
                                     max_iter=SKLEARN_MAX_ITER, use_legacy_attributes=False)
        ref[solver] = (timed(model, X, y), float(np.ravel(model.C_)[0]))
    same = {s: r for s, r in ref.items() if np.isclose(r[1], ours.C_, rtol=1e-12)}
    fastest = min(same, key=lambda s: same[s][0]) if same else None
    ratio = same[fastest][0] / seconds[0] if fastest else float("nan")
    benchmark.extra_info.update(
        fastsoftmax_s=seconds[0], fastsoftmax_C=ours.C_, fastest_sklearn=fastest,
        speedup_vs_fastest_sklearn=ratio,
        **{f"sklearn_{s}": dict(seconds=r[0], C=r[1]) for s, r in ref.items()})
    print(f"\n{name}: SoftmaxRegressionCV {seconds[0]:.3f} s, C_ = {ours.C_:.4g}")
    for s, (sec, c) in ref.items():
        print(f"  LogisticRegressionCV {s:16}: {sec:.3f} s, C_ = {c:.4g}"
              f"{'' if s in same else ' (another C)'}")
    print(f"  speed-up vs fastest scikit-learn solver with the same C_ ({fastest}): {ratio:.2f}x")
    assert same, "no scikit-learn solver chose SoftmaxRegressionCV's C_"
