"""fastsoftmax._blas: the BLAS libraries run on one thread inside its contexts
and get their thread counts back afterwards, nested and across threads.

Thread counts are read through threadpoolctl (not through _blas's own
ctypes calls), and each library is first set to 2 threads so that a
context that did nothing would be seen."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

import fastsoftmax as fs
from fastsoftmax._blas import single_threaded_all_blas, single_threaded_blas


def counts():
    """{library file: thread count} of NumPy's and SciPy's BLAS, per threadpoolctl
    (a BLAS that another package loads later, torch's say, is not limited)."""
    return {c.filepath: c.num_threads
            for c in ThreadpoolController().select(user_api="blas").lib_controllers
            if "numpy.libs" in c.filepath or scipy_owned(c.filepath)}


@pytest.fixture
def two_threads():
    fs.loss_and_grad(np.zeros((2, 3)), np.ones((4, 3)), np.array([0, 1, 0, 1]))  # loads SciPy's
    with threadpool_limits(2, user_api="blas"):
        before = counts()
        if len(before) < 2:
            pytest.skip("NumPy and SciPy share one BLAS here")
        yield before


def scipy_owned(path):
    return "scipy.libs" in path or "scipy_openblas32" in path


def test_all_blas_context_sets_every_library_to_one_and_restores(two_threads):
    with single_threaded_all_blas:
        assert set(counts().values()) == {1}
        with single_threaded_blas:  # nested: leaving it restores nothing yet
            pass
        assert set(counts().values()) == {1}
    assert counts() == two_threads


def test_scipy_context_leaves_numpys_blas_alone(two_threads):
    with single_threaded_blas:
        inside = counts()
    assert inside != two_threads
    for path, threads in inside.items():
        assert threads == (1 if scipy_owned(path) else two_threads[path])
    assert counts() == two_threads


def test_overlapping_contexts_in_two_threads_restore_once_both_left(two_threads):
    entered, release = threading.Event(), threading.Event()

    def hold():
        with single_threaded_blas:
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    with single_threaded_all_blas:
        worker.start()
        assert entered.wait(10)
    # the worker still holds SciPy's BLAS; NumPy's is back
    for path, threads in counts().items():
        assert threads == (1 if scipy_owned(path) else two_threads[path])
    release.set()
    worker.join(10)
    assert counts() == two_threads


def test_estimator_fit_runs_with_blas_on_one_thread(two_threads, monkeypatch):
    """Every kernel call of a fit sees all BLAS on one thread (the solver's own
    NumPy work between the kernels would otherwise wake NumPy's pool)."""
    pytest.importorskip("sklearn")
    from fastsoftmax import estimator

    seen = []
    real = estimator.loss_and_grad

    def spy(*args, **kwargs):
        seen.append(set(counts().values()))
        return real(*args, **kwargs)

    monkeypatch.setattr(estimator, "loss_and_grad", spy)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 300))
    with pytest.warns(estimator.ConvergenceWarning):  # max_iter=3
        estimator.SoftmaxRegression(solver="lbfgs", max_iter=3).fit(X, np.arange(60) % 3)
    assert seen and all(s == {1} for s in seen)
    assert counts() == two_threads
