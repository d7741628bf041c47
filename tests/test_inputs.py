"""Layouts, dtypes, extreme values, NaN propagation, determinism, caching."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import fastsoftmax as fs
from helpers import assert_cached_in_new_process, assert_results_close
from naive import naive_loss_and_grad

METHODS = ["fused", "indexloop", "numpy"]


def problem(rng, m=50, n=7, K=4, dtype=np.float64):
    X = rng.standard_normal((m, n)).astype(dtype)
    W = rng.standard_normal((K, n)).astype(dtype)
    return W, X, rng.integers(0, K, m), rng.standard_normal(K).astype(dtype)


def layouts(X, tmp_path):
    """The same values as X in other memory layouts."""
    F = np.asfortranarray(X)
    big = np.zeros((2 * X.shape[0], 3 * X.shape[1]), X.dtype)
    big[::2, ::3] = X
    ro = X.copy()
    ro.flags.writeable = False
    path = tmp_path / "X.npy"
    np.save(path, X)
    return {"F": F, "strided": big[::2, ::3], "readonly": ro,
            "mmap": np.load(path, mmap_mode="r"), "reversed": X[::-1].copy()[::-1]}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts_give_the_same_result(method, dtype, rng, tmp_path, kernel_path):
    W, X, y, b = problem(rng, dtype=dtype)
    want = fs.loss_and_grad(W, X, y, b=b, method=method)
    for name, Xl in layouts(X, tmp_path).items():
        np.testing.assert_array_equal(Xl, X)
        assert_results_close(fs.loss_and_grad(W, Xl, y, b=b, method=method), want, dtype)
    # a read-only, Fortran-ordered W is fine too
    Wr = np.asfortranarray(W)
    Wr.flags.writeable = False
    assert_results_close(fs.loss_and_grad(Wr, X, y, b=b, method=method), want, dtype)


@pytest.mark.parametrize("method", METHODS)
def test_lists_are_accepted(method, rng):
    W, X, y, b = problem(rng, m=5, n=3, K=2)
    want = fs.loss_and_grad(W, X, y, b=b, method=method)
    got = fs.loss_and_grad(W.tolist(), X.tolist(), y.tolist(), b=b.tolist(), method=method)
    assert_results_close(got, want, np.float64)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "wdt, xdt, expected",
    [
        (np.float32, np.float64, np.float64),
        (np.float64, np.float32, np.float64),
        (np.float32, np.int64, np.float64),
        (np.int32, np.int16, np.float64),
        (np.float16, np.float16, np.float32),
        (np.float16, np.float32, np.float32),
        (np.float32, np.float32, np.float32),
    ],
)
def test_mixed_dtypes_promote_like_numpy(method, wdt, xdt, expected, rng, kernel_path):
    X = rng.integers(-3, 4, (30, 5)).astype(xdt)
    W = rng.integers(-2, 3, (3, 5)).astype(wdt)
    y = rng.integers(0, 3, 30)
    loss, dW, db = fs.loss_and_grad(W, X, y, b=np.zeros(3, np.float32), method=method)
    assert dW.dtype == expected and db.dtype == expected
    want = naive_loss_and_grad(W, X, y, b=np.zeros(3))
    assert_results_close((loss, dW, db), want, expected)


def test_targets_take_the_working_dtype(rng):
    W, X, y, _ = problem(rng, dtype=np.float32)
    T = np.eye(4)[y]  # float64 one-hot rows
    loss, dW = fs.loss_and_grad(W, X, T)
    assert dW.dtype == np.float32
    assert_results_close((loss, dW), fs.loss_and_grad(W, X, y), np.float32)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype, big", [(np.float32, 1e6), (np.float64, 1e6), (np.float64, 1e12)])
def test_extreme_logits_give_the_exact_result(method, dtype, big, kernel_path):
    """Logits around +-1e6 (and +-1e12 in float64): exact loss and gradient.

    X is the identity, so the logits are W's entries, all exactly
    representable; the expected values are worked out by hand.
    """
    W = np.array([[big, -big, 0.0], [big - 1, big, -big], [-big, -big, -big]], dtype=dtype)
    X = np.eye(3, dtype=dtype)
    y = np.array([1, 0, 2])
    # logits of sample i are column i of W:
    # z_0 = (big, big - 1, -big), z_1 = (-big, big, -big), z_2 = (0, -big, -big)
    e = math.exp(-1.0)
    want_loss = ((1.0 + math.log1p(e)) + 2 * big + big) / 3
    P = np.array([[1 / (1 + e), 0.0, 1.0], [e / (1 + e), 1.0, 0.0], [0.0, 0.0, 0.0]])
    Tt = np.eye(3)[y].T  # column i holds t_i
    want_dW = (P - Tt) / 3  # dW[k, i] = (p_ik - t_ik) / m because x_i = e_i
    loss, dW = fs.loss_and_grad(W, X, y, method=method)
    assert np.isfinite(loss) and np.all(np.isfinite(dW))
    rel = 1e-15 if dtype == np.float64 else 1e-7
    assert loss == pytest.approx(want_loss, rel=rel)
    np.testing.assert_allclose(dW, want_dW, rtol=0, atol=1e-15 if dtype == np.float64 else 1e-7)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_propagate(method, bad, rng, kernel_path):
    W, X, y, b = problem(rng, m=20)
    X = X.copy()
    X[3, 2] = bad
    loss, dW, db = fs.loss_and_grad(W, X, y, b=b, method=method)
    ref = fs.loss_and_grad(W, X, y, b=b, method="numpy")
    assert math.isnan(loss) or math.isinf(loss)
    assert not np.all(np.isfinite(dW))
    np.testing.assert_array_equal(np.isfinite(dW), np.isfinite(ref[1]))
    W2 = W.copy()
    W2[1, 1] = np.nan
    loss, dW = fs.loss_and_grad(W2, rng.standard_normal((20, 7)), y, method=method)
    assert math.isnan(loss) and np.isnan(dW).any()


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_row_with_zero_targets_gives_nan_loss(method, rng, kernel_path):
    """A NaN in a sample whose dense target row is all zero: the loss is NaN in
    every method, as its gradient is (found by a review: the index loop
    skipped every zero target and returned a finite loss)."""
    X = rng.standard_normal((3, 2))
    X[1, 0] = np.nan
    W = rng.standard_normal((2, 2))
    T = rng.random((3, 2))
    T[1] = 0.0
    loss, dW = fs.loss_and_grad(W, X, T, method=method)
    assert math.isnan(loss) and np.isnan(dW).all()
    X[1, 0] = 0.5  # the same row finite: a finite loss, the row adding nothing
    loss, dW = fs.loss_and_grad(W, X, T, method=method)
    want = fs.loss_and_grad(W, X[[0, 2]], T[[0, 2]], reduction="sum", method=method)
    assert loss == pytest.approx(want[0] / 3, rel=1e-13)


@pytest.mark.parametrize("method", ["fused", "indexloop"])
def test_bitwise_deterministic(method, rng):
    W, X, y, b = problem(rng, m=5000, n=33, K=9)
    sw = rng.random(5000)
    first = fs.loss_and_grad(W, X, y, b=b, sample_weight=sw, label_smoothing=0.1, method=method)
    for rep in range(12):
        # fresh copies at new addresses: the result must not depend on alignment
        Xc, Wc = (X.copy(), W.copy()) if rep % 2 else (X, W)
        again = fs.loss_and_grad(Wc, Xc, y, b=b, sample_weight=sw, label_smoothing=0.1,
                                 method=method)
        assert again[0] == first[0]
        for a, f in zip(again[1:], first[1:]):
            np.testing.assert_array_equal(a, f)


@pytest.mark.parametrize("entry", ["loss_and_grad", "linear_cross_entropy"])
def test_inline_chunks_equal_parallel_bitwise(entry, rng, monkeypatch):
    """Chunks run one after the other on the calling thread (a short call after
    the workers went idle) give exactly the parallel kernel's result; both
    also match the oracle."""
    import fastsoftmax._dispatch as policy
    import fastsoftmax._fused as fused

    parallel_calls = []
    real = fused._parallel_chunks
    monkeypatch.setattr(fused, "_parallel_chunks",
                        lambda *a: parallel_calls.append(1) or real(*a))
    W, X, y, b = problem(rng, m=3001, n=13, K=6)
    sw = rng.random(3001)
    monkeypatch.setattr(policy, "chunk_count", lambda m: 3)  # same chunks either way
    monkeypatch.setattr(policy, "SERIAL_WORK", 0)
    monkeypatch.setattr(policy, "tile_rows", lambda n, K, itemsize: 64)
    call = getattr(fs, entry)
    args = (W, X, y) if entry == "loss_and_grad" else (X, W, y)
    runs = {}
    for name, inline_work, asleep_after in (("parallel", 0, 1e9), ("inline", 2**62, -1.0)):
        monkeypatch.setattr(policy, "INLINE_WORK", inline_work)
        monkeypatch.setattr(policy, "WORKERS_ASLEEP_AFTER", asleep_after)
        parallel_calls.clear()
        runs[name] = call(*args, b=b, sample_weight=sw, label_smoothing=0.05)
        assert len(parallel_calls) == (name == "parallel"), name  # the path asked for ran
    assert runs["inline"][0] == runs["parallel"][0]
    for a, f in zip(runs["inline"][1:], runs["parallel"][1:]):
        np.testing.assert_array_equal(a, f)
    want, scales = naive_loss_and_grad(W, X, y, b=b, sample_weight=sw, label_smoothing=0.05,
                                       return_scales=True)
    got = runs["inline"] if entry == "loss_and_grad" else (runs["inline"][0], *runs["inline"][2:])
    assert_results_close(got, want, np.float64, scales)


#: The thread counts the next test sets; it needs numba to allow the largest.
THREAD_COUNTS = (1, 2)


@pytest.mark.parametrize("method", ["fused", "indexloop"])
def test_honours_thread_count(method, rng, monkeypatch):
    """Each thread count set is the chunk count the kernel gets; every result matches the oracle.

    numba caps set_num_threads at NUMBA_NUM_THREADS (fixed at start-up), which
    may exceed the cores: on a machine with fewer threads than needed the test
    runs itself in a new process with NUMBA_NUM_THREADS=3.
    """
    if numba.config.NUMBA_NUM_THREADS < max(THREAD_COUNTS):
        env = dict(os.environ, NUMBA_NUM_THREADS="3")
        test = f"{__file__}::test_honours_thread_count[{method}]"
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              test], env=env, capture_output=True, text=True, timeout=600,
                             cwd=os.path.dirname(__file__))
        assert out.returncode == 0 and " passed" in out.stdout, out.stdout[-3000:]
        return

    import fastsoftmax._api as api

    seen = []

    def recording(name, kernel, chunk_arg):
        def wrapper(*args):
            seen.append((name, args[chunk_arg] if chunk_arg is not None else 1))
            return kernel(*args)
        return wrapper

    # the kernels as _api calls them; the chunk count is their eighth argument (tenth
    # for indexloop_sums)
    monkeypatch.setattr(api, "fused_sums", recording("fused_sums", api.fused_sums, 7))
    monkeypatch.setattr(api, "fused_sums_serial",
                        recording("fused_sums_serial", api.fused_sums_serial, None))
    monkeypatch.setattr(api, "indexloop_sums", recording("indexloop_sums", api.indexloop_sums, 9))

    W, X, y, b = problem(rng, m=3000, n=11, K=5)  # m n K above SERIAL_WORK: parallel from 2
    want, scales = naive_loss_and_grad(W, X, y, b=b, return_scales=True)
    before = numba.get_num_threads()
    try:
        for threads in THREAD_COUNTS:
            numba.set_num_threads(threads)
            seen.clear()
            got = fs.loss_and_grad(W, X, y, b=b, method=method)
            kernel = ("fused_sums_serial" if threads == 1 else "fused_sums"
                      ) if method == "fused" else "indexloop_sums"
            assert seen == [(kernel, threads)], (threads, seen)
            assert_results_close(got, want, np.float64, scales)
    finally:
        numba.set_num_threads(before)


def test_float32_loss_is_accumulated_in_float64(rng):
    """A float32 loss over 10^6 samples stays within about 1e-6 relative."""
    m, n, K = 1_000_000, 3, 3
    X = rng.standard_normal((m, n)).astype(np.float32)
    W = rng.standard_normal((K, n)).astype(np.float32)
    y = rng.integers(0, K, m)
    want = fs.loss_and_grad(W.astype(np.float64), X.astype(np.float64), y)
    for method in ("fused", "numpy"):
        got = fs.loss_and_grad(W, X, y, method=method)
        assert got[0] == pytest.approx(want[0], rel=2e-6), method


def test_kernels_are_cached_without_warnings():
    """A new process compiles nothing it has compiled before, with no cache warning."""
    calls = (
        "for m in (4, 40000):  # the serial and the parallel path (above INLINE_WORK)\n"
        "    X = np.ones((m, 30)); W = np.ones((3, 30)); y = np.arange(m) % 3\n"
        "    for method in ('fused', 'indexloop'):\n"
        "        fs.loss_and_grad(W, X, y, method=method)\n"
        "    fs.loss_and_grad_logits(X, np.arange(m) % 30)\n"
    )
    assert_cached_in_new_process(calls, {
        "fused_chunk": "fastsoftmax._fused", "_parallel_chunks": "fastsoftmax._fused",
        "indexloop_sums": "fastsoftmax._indexloop", "logits_sums": "fastsoftmax._logits",
        "logits_sums_serial": "fastsoftmax._logits"})


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", ["labels", "dense"])
def test_masked_class_with_minus_inf_intercept(method, target, rng, kernel_path):
    """A class masked by a -inf intercept gets probability 0; nothing turns NaN."""
    W, X, y, _ = problem(rng, m=40, n=5, K=4)
    y = y % 3  # no sample belongs to the masked class 3
    b = np.array([0.1, -0.2, 0.3, -np.inf])
    yt = y if target == "labels" else np.eye(4)[y]
    loss, dW, db = fs.loss_and_grad(W, X, yt, b=b, method=method)
    want = fs.loss_and_grad(W[:3], X, y, b=b[:3], method="numpy")
    assert loss == pytest.approx(want[0], rel=1e-12)
    np.testing.assert_allclose(dW[:3], want[1], rtol=1e-10, atol=1e-12)
    assert np.all(dW[3] == 0) and db[3] == 0


def test_masked_logits():
    Z = np.array([[1.0, -np.inf, 0.5], [-np.inf, 2.0, 0.0]])
    loss, dZ = fs.loss_and_grad_logits(Z, np.array([0, 1]))
    want, want_dZ = fs.loss_and_grad_logits(np.array([[1.0, 0.5], [2.0, 0.0]]), np.array([0, 0]))
    assert loss == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(dZ[:, [0, 2]][0], want_dZ[0], atol=1e-15)
    assert dZ[0, 1] == 0 and dZ[1, 0] == 0


@pytest.mark.parametrize("method", METHODS)
def test_tiny_float32_loss_is_kept(method):
    """A loss of about 4e-11 in float32 (a row sum of 1 + 4e-11) is not rounded to 0."""
    W = np.array([[24.0], [0.0]], dtype=np.float32)
    X = np.ones((3, 1), dtype=np.float32)
    y = np.zeros(3, dtype=np.int64)
    loss, _ = fs.loss_and_grad(W, X, y, method=method)
    assert loss == pytest.approx(np.log1p(np.exp(-24.0)), rel=1e-6)


@pytest.mark.parametrize("label_dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int8])
@pytest.mark.parametrize("method", ["fused", "indexloop", "numpy"])
def test_ignore_index_with_narrow_or_unsigned_labels(label_dtype, method, rng):
    """Labels of any integer dtype, with an ignore_index inside that dtype's range:
    the same result as int64 labels (the ignored rows' marker must not wrap)."""
    W, X, y, b = problem(rng, m=60, n=5, K=4)
    y = y.copy()
    y[::3] = 100  # ignored
    want = naive_loss_and_grad(W, X, y, b=b, ignore_index=100)
    for entry in ("loss_and_grad", "linear_cross_entropy"):
        call = getattr(fs, entry)
        args = (W, X) if entry == "loss_and_grad" else (X, W)
        got = call(*args, y.astype(label_dtype), b=b, ignore_index=100, method=method)
        ref = call(*args, y.astype(np.int64), b=b, ignore_index=100, method=method)
        assert got[0] == pytest.approx(want[0], rel=1e-10), entry
        for g, r in zip(got[1:], ref[1:]):
            np.testing.assert_array_equal(g, r)


def test_a_chunk_that_fails_in_the_parallel_region_raises(rng, monkeypatch):
    """A chunk that fails inside the parallel loop (where no exception can be
    raised) is run again on the calling thread, so the caller gets the error,
    never a partial sum."""
    import fastsoftmax._dispatch as policy
    import fastsoftmax._fused as fused

    W, X, y, b = problem(rng, m=400, n=6, K=3)
    monkeypatch.setattr(policy, "SERIAL_WORK", 0)
    monkeypatch.setattr(policy, "INLINE_WORK", 0)
    monkeypatch.setattr(policy, "chunk_count", lambda m: 2)
    real = fused._parallel_chunks

    def failing(*args):
        real(*args)
        args[-1][1] = True  # as if chunk 1 had raised

    def raising(*args):
        raise MemoryError("chunk rerun on the calling thread")

    monkeypatch.setattr(fused, "_parallel_chunks", failing)
    monkeypatch.setattr(fused, "fused_chunk", raising)
    with pytest.raises(MemoryError, match="rerun"):
        fs.loss_and_grad(W, X, y, b=b)
    monkeypatch.undo()
    monkeypatch.setattr(policy, "SERIAL_WORK", 0)
    monkeypatch.setattr(policy, "INLINE_WORK", 0)
    monkeypatch.setattr(policy, "chunk_count", lambda m: 2)
    monkeypatch.setattr(fused, "_parallel_chunks", failing)
    got = fs.loss_and_grad(W, X, y, b=b)  # the rerun succeeds: the full, correct sums
    want, scales = naive_loss_and_grad(W, X, y, b=b, return_scales=True)
    assert_results_close(got, want, np.float64, scales)
