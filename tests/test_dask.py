"""fastsoftmax.dask on a real dask.distributed LocalCluster (two worker processes)."""

from __future__ import annotations

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import fastsoftmax as fs  # noqa: E402
import fastsoftmax.dask as fsd  # noqa: E402
from helpers import assert_results_close  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, env={"NUMBA_NUM_THREADS": "1"})
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def problem(rng, m=3000, n=9, K=5):
    X = rng.standard_normal((m, n))
    W = rng.standard_normal((K, n)) / 3
    return W, X, rng.integers(0, K, m), rng.standard_normal(K)


CASES = {
    "plain": {},
    "bias": {"b": True},
    "everything": {"b": True, "sample_weight": True, "l2": 0.3, "label_smoothing": 0.1,
                   "ignore_index": -100},
    "sum": {"reduction": "sum", "sample_weight": True},
    "dense": {"dense": True, "label_smoothing": 0.2},
}


@pytest.mark.parametrize("case", list(CASES))
def test_equals_in_memory(client, case, rng):
    opts = dict(CASES[case])
    W, X, y, b = problem(rng)
    if opts.pop("dense", False):
        y = rng.random((3000, 5))
    if opts.get("ignore_index") == -100:
        y = y.copy()
        y[rng.random(3000) < 0.2] = -100
    if opts.pop("b", False):
        opts["b"] = b
    if opts.pop("sample_weight", False):
        opts["sample_weight"] = rng.random(3000)
    want = fs.loss_and_grad(W, X, y, **opts)
    Xd = da.from_array(X, chunks=(700, 9))  # uneven last block
    yd = da.from_array(y, chunks=700)
    got = fsd.loss_and_grad(W, Xd, yd, split_every=2, **opts)
    assert_results_close(got, want, np.float64)


def test_persisted_data(client, rng):
    W, X, y, _ = problem(rng)
    Xd = client.persist(da.from_array(X, chunks=(500, 9)))
    yd = client.persist(da.from_array(y, chunks=500))
    loss, dW = fsd.loss_and_grad(W, Xd, yd)
    assert loss == pytest.approx(fs.loss_and_grad(W, X, y)[0], rel=1e-12)


def test_workers_keep_one_numba_thread(client):
    import numba

    threads = client.run(numba.get_num_threads)
    assert set(threads.values()) == {1}


def test_errors_reach_the_caller(client, rng):
    W, X, y, _ = problem(rng, m=100)
    y = y.copy()
    y[50] = 7
    with pytest.raises(ValueError, match="outside"):
        fsd.loss_and_grad(W, da.from_array(X, chunks=(30, 9)), y)
    with pytest.raises(ValueError, match="total sample weight"):
        fsd.loss_and_grad(W, da.from_array(X, chunks=(30, 9)), y % 5,
                          sample_weight=np.zeros(100))


def test_threaded_scheduler_without_a_cluster(rng):
    import dask

    W, X, y, b = problem(rng)
    with dask.config.set(scheduler="threads"):
        got = fsd.loss_and_grad(W, da.from_array(X, chunks=(400, 9)), y, b=b)
    assert_results_close(got, fs.loss_and_grad(W, X, y, b=b), np.float64)


def test_softmax_regression_fits_dask_arrays(client, rng):
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    from fastsoftmax.estimator import SoftmaxRegression

    m, n = 4000, 12
    X = rng.standard_normal((m, n))
    y = np.array(["a", "b", "c"])[(X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 1)]
    w = rng.random(m) + 0.5
    ref = SoftmaxRegression(C=0.5, tol=1e-10, max_iter=2000).fit(X, y, sample_weight=w)
    model = SoftmaxRegression(C=0.5, tol=1e-10, max_iter=2000).fit(
        da.from_array(X, chunks=(1000, n)), da.from_array(y, chunks=1000),
        sample_weight=da.from_array(w, chunks=1000))
    assert list(model.classes_) == list(ref.classes_)
    np.testing.assert_allclose(model.coef_, ref.coef_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.intercept_, ref.intercept_, rtol=0, atol=1e-6)
    assert (model.predict(X) == ref.predict(X)).all()


def test_empty_blocks_and_bad_arguments(client, rng):
    W, X, y, _ = problem(rng, m=300)
    Xd = da.concatenate([da.from_array(X[:100], chunks=(100, 9)),
                         da.zeros((0, 9), chunks=(0, 9)),
                         da.from_array(X[100:], chunks=(200, 9))])
    got = fsd.loss_and_grad(W, Xd, y)
    assert_results_close(got, fs.loss_and_grad(W, X, y), np.float64)
    for bad in (0, 1, -1, 2.5):
        with pytest.raises(ValueError, match="split_every"):
            fsd.loss_and_grad(W, Xd, y, split_every=bad)
    unknown = da.from_array(X, chunks=(100, 9))
    unknown = unknown[unknown[:, 0] > -10]  # chunk sizes now unknown
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        fsd.loss_and_grad(W, unknown, y)


def test_fit_checks_dask_input_like_numpy_input(client, rng):
    pytest.importorskip("sklearn")
    from fastsoftmax.estimator import SoftmaxRegression

    X = rng.standard_normal((200, 4))
    Xd = da.from_array(X, chunks=(50, 4))
    with pytest.raises(ValueError, match="Unknown label type"):
        SoftmaxRegression().fit(Xd, da.from_array(rng.random(200), chunks=50))
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SoftmaxRegression().fit(da.from_array(Xn, chunks=(50, 4)), np.arange(200) % 2)
    with pytest.raises(ValueError, match="sample_weight"):
        SoftmaxRegression().fit(Xd, np.arange(200) % 2, sample_weight=np.ones(150))
    scalar = SoftmaxRegression(tol=1e-10).fit(Xd, np.arange(200) % 2, sample_weight=2.0)
    plain = SoftmaxRegression(tol=1e-10).fit(X, np.arange(200) % 2, sample_weight=2.0)
    np.testing.assert_allclose(scalar.coef_, plain.coef_, atol=1e-6)


def test_prepare_fit_is_the_one_call_the_estimator_makes(client, rng):
    """fastsoftmax.dask.prepare_fit: checked, persisted data and the evaluator."""
    pytest.importorskip("sklearn")
    X = rng.integers(-3, 4, (300, 5))  # integers become float64
    y = np.array(["b", "a", "c"])[rng.integers(0, 3, 300)]
    w = rng.random(300)
    data = fsd.prepare_fit(da.from_array(X, chunks=(120, 5)), da.from_array(y, chunks=100),
                           sample_weight=w)
    assert list(data.classes) == ["a", "b", "c"]
    assert data.X.dtype == np.float64 and data.X.chunks == ((120, 120, 60), (5,))
    np.testing.assert_array_equal(data.y_index.compute(), np.searchsorted(["a", "b", "c"], y))
    assert data.total == pytest.approx(w.sum(), rel=1e-12)
    assert data.loss_and_grad is fsd.loss_and_grad
    unweighted = fsd.prepare_fit(da.from_array(X, chunks=(120, 5)), y)
    assert unweighted.sample_weight is None and unweighted.total == 300.0
    with pytest.raises(ValueError, match="only one class"):
        fsd.prepare_fit(da.from_array(X, chunks=(120, 5)), np.zeros(300))


def test_small_dask_parameters_are_computed_on_purpose(rng):
    """W and b may be dask arrays here (small; computed and sent to every block)."""
    import dask

    W, X, y, b = problem(rng, m=500)
    with dask.config.set(scheduler="threads"):
        got = fsd.loss_and_grad(da.from_array(W), da.from_array(X, chunks=(200, 9)), y,
                                b=da.from_array(b))
    assert_results_close(got, fs.loss_and_grad(W, X, y, b=b), np.float64)


@pytest.mark.parametrize("w_dtype", [np.float16, ">f8", np.int64])
def test_unusual_w_dtypes_in_the_compiled_finish(w_dtype, rng, monkeypatch):
    """W is handed to the gradient's finish as the caller gave it: float16,
    big-endian and integer W still give the in-memory results when the finish
    runs compiled (COMPILED_VECTOR_MIN_ENTRIES = 0: every size)."""
    import fastsoftmax._dispatch as policy

    monkeypatch.setattr(policy, "COMPILED_VECTOR_MIN_ENTRIES", 0)
    X = rng.standard_normal((200, 6))
    y = rng.integers(0, 3, 200)
    W = (rng.standard_normal((3, 6)) * 2).astype(w_dtype)
    want = fs.loss_and_grad(np.asarray(W, np.float64), X, y, l2=0.3)
    got = fsd.loss_and_grad(W, da.from_array(X, chunks=(50, 6)), y, l2=0.3)
    assert_results_close(got, want, np.float64)
