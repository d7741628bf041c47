"""Fit time: SoftmaxRegression vs scikit-learn's LogisticRegression(solver="lbfgs").

Synthetic data of shape (60000, 784) with 10 classes drawn from a softmax
model (``fastsoftmax.tools.problems``; (2000, 20) with 3 classes under
FASTSOFTMAX_BENCH_TINY=1).  Both estimators run L-BFGS to a tight tolerance; the final objective
``(1/2) ||W||^2 + C sum_i loss_i`` of each fit is evaluated with the same
float64 code and must agree to 1e-6 relative.  The times and objectives go to
``extra_info`` (and ``--benchmark-json``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression  # noqa: E402

import fastsoftmax as fs  # noqa: E402
from conftest import sized  # noqa: E402
from fastsoftmax.estimator import SoftmaxRegression  # noqa: E402
from fastsoftmax.tools.problems import features, model_labels, weights  # noqa: E402

(M, N, K), C = sized((60_000, 784, 10), (2_000, 20, 3)), 1.0


def synthetic(seed=0):
    """Standard-normal X (M, N) and labels drawn from a softmax model with W ~ N(0, 1/N)."""
    rng = np.random.default_rng(seed)
    X = features(rng, M, N)
    W = weights(rng, K, N)
    return X, model_labels(rng, X, W)


def objective(model, X, y):
    """(1/2)||W||^2 + C * sum of losses, in float64, the same for both."""
    loss, _ = fs.loss_and_grad(model.coef_, X, np.searchsorted(model.classes_, y),
                               b=model.intercept_, reduction="sum")[:2]
    return 0.5 * float(np.sum(model.coef_ ** 2)) + C * loss


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def reference(data):
    X, y = data
    t0 = time.perf_counter()
    ref = LogisticRegression(C=C, tol=1e-8, max_iter=1000).fit(X, y)
    return ref, time.perf_counter() - t0, objective(ref, X, y)


def test_fit_time_vs_logistic_regression(benchmark, data, reference):
    X, y = data
    ref, t_ref, obj_ref = reference
    ours = SoftmaxRegression(C=C, tol=1e-8, max_iter=1000)
    benchmark.group = f"fit ({M} x {N}, {K} classes)"
    t0 = time.perf_counter()  # timed here too: --benchmark-disable keeps no stats
    benchmark.pedantic(ours.fit, args=(X, y), rounds=1, iterations=1, warmup_rounds=0)
    t_ours = time.perf_counter() - t0
    obj_ours = objective(ours, X, y)
    benchmark.extra_info.update(
        sklearn_s=t_ref, fastsoftmax_s=t_ours, speedup=t_ref / t_ours,
        sklearn_iterations=int(ref.n_iter_[0]), fastsoftmax_iterations=int(ours.n_iter_[0]),
        sklearn_objective=obj_ref, fastsoftmax_objective=obj_ours)
    print(f"\nLogisticRegression: {t_ref:.2f} s, {ref.n_iter_[0]} iterations, objective {obj_ref:.10g}"
          f"\nSoftmaxRegression:  {t_ours:.2f} s, {ours.n_iter_[0]} iterations, objective {obj_ours:.10g}"
          f"\nspeed-up {t_ref / t_ours:.2f}x")
    assert obj_ours == pytest.approx(obj_ref, rel=1e-6)
