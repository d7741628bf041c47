"""Fit time: SoftmaxRegression vs scikit-learn's LogisticRegression(solver="lbfgs").

Synthetic data of shape (60000, 784) with 10 classes drawn from a softmax
model.  Both estimators run L-BFGS to a tight tolerance; the final objective
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
from fastsoftmax.estimator import SoftmaxRegression  # noqa: E402

M, N, K, C = 60_000, 784, 10, 1.0


def synthetic(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((M, N))
    W = rng.standard_normal((K, N)) / np.sqrt(N)
    Z = X @ W.T
    P = np.exp(Z - Z.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    y = (P.cumsum(axis=1) > rng.random((M, 1))).argmax(axis=1)
    return X, y


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
    benchmark.group = "fit (60000 x 784, 10 classes)"
    benchmark.pedantic(ours.fit, args=(X, y), rounds=1, iterations=1, warmup_rounds=0)
    t_ours = benchmark.stats.stats.median
    obj_ours = objective(ours, X, y)
    benchmark.extra_info.update(
        sklearn_s=t_ref, fastsoftmax_s=t_ours, speedup=t_ref / t_ours,
        sklearn_iterations=int(ref.n_iter_[0]), fastsoftmax_iterations=int(ours.n_iter_[0]),
        sklearn_objective=obj_ref, fastsoftmax_objective=obj_ours)
    print(f"\nLogisticRegression: {t_ref:.2f} s, {ref.n_iter_[0]} iterations, objective {obj_ref:.10g}"
          f"\nSoftmaxRegression:  {t_ours:.2f} s, {ours.n_iter_[0]} iterations, objective {obj_ours:.10g}"
          f"\nspeed-up {t_ref / t_ours:.2f}x")
    assert obj_ours == pytest.approx(obj_ref, rel=1e-6)
