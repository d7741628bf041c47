"""SciPy CSR X: every method against the float64 oracle on X.toarray().

The matrices are built entry by entry (``make_csr``) with what real CSR data
may hold: unsorted column indices within a row, duplicate entries (which
SciPy's toarray and arithmetic sum), explicit zeros and empty rows, int32 or
int64 index arrays, as ``csr_matrix`` or ``csr_array``.  The oracle
(tests/naive.py) sees only ``X.toarray()``; tolerances are the dense tests'
(tests/helpers.py RTOL, relative to the oracle's rounding scales).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsoftmax as fs
from helpers import (assert_close, assert_product_close, assert_results_close,
                     assert_same_model_as_logistic_regression, draw_options, f64, hessian_oracle,
                     newton_by_columns,
                     options)
from naive import naive_loss_and_grad
from naive_hessian import naive_hessian, naive_hessian_product

METHODS = ["fused", "indexloop", "numpy"]
DTYPES = [np.float32, np.float64]
INDEX_DTYPES = [np.int32, np.int64]
KINDS = ["csr_matrix", "csr_array"]


def make_csr(rng, m, n, density, dtype, index_dtype=np.int32, kind="csr_matrix",
             hostile=True):
    """A random (m, n) CSR matrix; with ``hostile``, rows hold their entries in
    random column order, some values split into two duplicate entries of the
    same sign, some explicit zeros, and one row is emptied."""
    mask = rng.random((m, n)) < density
    if hostile and m > 1:
        mask[rng.integers(m)] = False
    data, indices, indptr = [], [], [0]
    for i in range(m):
        cols = list(np.flatnonzero(mask[i]))
        vals = list(rng.standard_normal(len(cols)))
        if hostile:
            for q in range(len(cols)):
                if rng.random() < 0.3:  # a duplicate: v = f v + (1 - f) v
                    f = rng.random()
                    cols.append(cols[q])
                    vals.append((1.0 - f) * vals[q])
                    vals[q] *= f
            if rng.random() < 0.4:
                cols.append(int(rng.integers(n)))
                vals.append(0.0)  # an explicit zero
            order = rng.permutation(len(cols))
            cols = [cols[q] for q in order]
            vals = [vals[q] for q in order]
        data += vals
        indices += cols
        indptr.append(len(indices))
    X = getattr(scipy.sparse, kind)(
        (np.array(data, dtype=dtype), np.array(indices, dtype=np.int64),
         np.array(indptr, dtype=np.int64)), shape=(m, n))
    X.indices = np.array(indices, dtype=index_dtype)  # SciPy may have chosen int32
    X.indptr = np.array(indptr, dtype=index_dtype)
    assert X.data.dtype == dtype
    return X


def make_targets(rng, kind, m, K):
    labels = rng.integers(0, K, m)
    if kind == "labels":
        return labels
    if kind == "onehot":
        return np.eye(K)[labels]
    T = rng.random((m, K))
    T[rng.random((m, K)) < 0.3] = 0.0
    return 2.0 * T


def oracle(W, X, y, **kw):
    return naive_loss_and_grad(np.asarray(W, np.float64), X.toarray().astype(np.float64), y,
                               return_scales=True, **kw)


def diagonal_oracle(W, X, y, feature_major=False, **kw):
    """The oracle Hessian's diagonal and its scales on X.toarray(), in the
    flat layout ``[W.ravel(), b]`` (``[W^T.ravel(), b]`` with
    ``feature_major``; b's entries only when ``b`` is in kw)."""
    K, n = W.shape
    want, scale = naive_hessian(*f64(W, X.toarray()), y, return_scale=True, **kw)
    nt = n + ("b" in kw)  # the oracle's rows: [W[k], b[k]] class after class
    pairs = [(k, j) for j in range(n) for k in range(K)] if feature_major else \
        [(k, j) for k in range(K) for j in range(n)]
    order = [k * nt + j for k, j in pairs] + [k * nt + n for k in range(K) if "b" in kw]
    return np.diag(want)[order], np.diag(scale)[order]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("target", ["labels", "onehot", "nonneg"])
@pytest.mark.parametrize("opt", ["plain", "bias", "weights", "l2", "smoothing", "sum", "all"])
def test_matches_oracle(method, dtype, index_dtype, target, opt, rng, kernel_path):
    m, n, K = 37, 11, 4
    X = make_csr(rng, m, n, 0.3, dtype, index_dtype, kind=KINDS[len(opt) % 2])
    W = (0.7 * rng.standard_normal((K, n))).astype(dtype)
    y = make_targets(rng, target, m, K)
    kw = options(opt, rng, m, K, dtype)
    got = fs.loss_and_grad(W, X, y, method=method, **kw)
    want, scales = oracle(W, X, y, **kw)
    assert_results_close(got, want, dtype, scales)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ignore_index_matches_oracle(method, dtype, rng, kernel_path):
    m, n, K = 41, 9, 3
    X = make_csr(rng, m, n, 0.4, dtype, np.int64)
    W = rng.standard_normal((K, n)).astype(dtype)
    y = rng.integers(0, K, m)
    y[rng.random(m) < 0.35] = -100
    y[0] = 1
    kw = {"b": rng.standard_normal(K).astype(dtype), "sample_weight": rng.random(m),
          "label_smoothing": 0.2, "ignore_index": -100}
    for reduction in ("mean", "sum"):
        got = fs.loss_and_grad(W, X, y, reduction=reduction, method=method, **kw)
        want, scales = oracle(W, X, y, reduction=reduction, **kw)
        assert_results_close(got, want, dtype, scales)


@pytest.mark.parametrize("method", METHODS)
def test_equals_the_dense_call_on_a_larger_problem(method, rng):
    """Against the dense fused call on X.toarray(), every option, both paths by size."""
    for dtype in DTYPES:
        m, n, K = 1500, 300, 7
        X = make_csr(rng, m, n, 0.02, dtype)
        W = rng.standard_normal((K, n)).astype(dtype)
        y = rng.integers(0, K, m)
        kw = dict(b=rng.standard_normal(K).astype(dtype), sample_weight=rng.random(m),
                  l2=0.01, label_smoothing=0.05)
        ref = fs.loss_and_grad(W, X.toarray(), y, **kw)
        assert_results_close(fs.loss_and_grad(W, X, y, method=method, **kw), ref, dtype)


def test_deterministic_and_caller_matrix_untouched(rng, kernel_path):
    X = make_csr(rng, 60, 20, 0.3, np.float64)
    before = (X.data.copy(), X.indices.copy(), X.indptr.copy())
    W = rng.standard_normal((5, 20))
    y = rng.integers(0, 5, 60)
    first = fs.loss_and_grad(W, X, y)
    for _ in range(3):
        again = fs.loss_and_grad(W, X, y)
        assert again[0] == first[0] and np.array_equal(again[1], first[1])
    for a, b in zip(before, (X.data, X.indices, X.indptr)):
        assert np.array_equal(a, b) and a.dtype == b.dtype


def test_working_dtype_follows_the_dense_rule(rng):
    X = make_csr(rng, 10, 6, 0.5, np.float32)
    y = rng.integers(0, 3, 10)
    assert fs.loss_and_grad(np.zeros((3, 6), np.float32), X, y)[1].dtype == np.float32
    assert fs.loss_and_grad(np.zeros((3, 6)), X, y)[1].dtype == np.float64
    Xi = scipy.sparse.csr_matrix(X.toarray().round().astype(np.int64))
    got = fs.loss_and_grad(np.zeros((3, 6), np.float32), Xi, y)
    assert got[1].dtype == np.float64  # integer data promote to float64, as dense
    want, scales = oracle(np.zeros((3, 6)), Xi, y)
    assert_results_close(got, want, np.float64, scales)


# --- property-based -----------------------------------------------------------

@st.composite
def problems(draw):
    m = draw(st.integers(1, 30))
    n = draw(st.integers(1, 25))
    K = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    index_dtype = draw(st.sampled_from(INDEX_DTYPES))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = make_csr(rng, m, n, density, dtype, index_dtype, kind=draw(st.sampled_from(KINDS)),
                 hostile=draw(st.booleans()))
    W = (draw(st.sampled_from([0.01, 1.0, 10.0])) * rng.standard_normal((K, n))).astype(dtype)
    target = draw(st.sampled_from(["labels", "onehot", "nonneg"]))
    y = make_targets(rng, target, m, K)
    y, kw = draw_options(draw, rng, y, K, dtype, target)
    return W, X, y, kw, dtype


@given(problems())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_all_methods_match_oracle(kernel_path, problem):
    W, X, y, kw, dtype = problem
    want, scales = oracle(W, X, y, **kw)
    for method in METHODS:
        got = fs.loss_and_grad(W, X, y, method=method, **kw)
        assert_results_close(got, want, dtype, scales)


@given(problems())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_newton_evaluations_by_columns_match_oracle(kernel_path, monkeypatch, problem):
    """What Newton-CG evaluates on CSR X (fastsoftmax._hessian.evaluate with
    by_columns: the gradient from X's transpose, the point's probabilities
    kept for its products) against the float64 oracle on X.toarray(): loss
    and gradients, and then the returned hessp's products and diagonal, by
    rows (hessp(V), diagonal()) and by columns (the feature-major ones
    Newton-CG makes), all reading those probabilities (no pass of their
    own)."""
    import fastsoftmax._hessian as hessian
    from fastsoftmax._hessian import evaluate, feature_major_diagonal, feature_major_product

    newton_by_columns(monkeypatch, True)
    W, X, y, kw, dtype = problem
    K, n = W.shape
    p = fs.loss_grad_hessp(W, X, y, **kw)[-1]._problem
    got = evaluate(p, "fused", by_columns=True)
    want, scales = oracle(W, X, y, **kw)
    assert_results_close(got[:-1], want, dtype, scales)
    hessp = got[-1]
    assert hessp._cache.curv is not None  # filled by the evaluation
    real = hessian.sparse_point_curvature
    try:
        hessian.sparse_point_curvature = None  # a product must not need a pass of its own
        rng = np.random.default_rng(X.nnz)
        V = rng.standard_normal((K, n)).astype(dtype)
        vb = rng.standard_normal(K).astype(dtype) if "b" in kw else None
        want, scales = hessian_oracle(W, X.toarray(), y, V, vb, kw, dtype)
        assert_product_close(hessp(V, vb), want, dtype, scales)  # by rows
        out = np.empty(K * n + (K if vb is not None else 0))
        d = np.concatenate([V.T.ravel()] + ([vb] if vb is not None else [])).astype(np.float64)
        feature_major_product(hessp, d, out)  # by columns, Newton-CG's (float64 out)
        want_w, scale_w = (want[0], scales[0]) if vb is not None else (want, scales)
        assert_close(out[: K * n].reshape(n, K).T, want_w, dtype, "HV", scale_w)
        if vb is not None:
            assert_close(out[K * n:], want[1], dtype, "Hvb", scales[1])
        y_seen = y.astype(dtype) if y.ndim == 2 else y
        want, scale = diagonal_oracle(W, X, y_seen, **kw)
        assert_close(hessp.diagonal(), want, dtype, "diagonal", scale)  # by rows
        want_fm, _ = diagonal_oracle(W, X, y_seen, feature_major=True, **kw)
        assert_close(feature_major_diagonal(hessp), want_fm, dtype, "diagonal", scale)
    finally:
        hessian.sparse_point_curvature = real


# --- bad input ----------------------------------------------------------------

def small(rng):
    return make_csr(rng, 8, 5, 0.5, np.float64, hostile=False), np.zeros((3, 5)), \
        rng.integers(0, 3, 8)


@pytest.mark.parametrize("kind", ["csc_matrix", "coo_matrix", "coo_array", "lil_matrix",
                                  "bsr_array", "dok_matrix"])
def test_other_formats_are_refused_naming_csr(kind, rng):
    X, W, y = small(rng)
    with pytest.raises(TypeError, match=r"CSR.*X\.tocsr\(\)"):
        fs.loss_and_grad(W, getattr(scipy.sparse, kind)(X), y)


def test_malformed_structure_is_refused(rng):
    X, W, y = small(rng)
    bad = X.copy()
    bad.indices = bad.indices.copy()
    bad.indices[0] = 5
    with pytest.raises(ValueError, match="column indices outside"):
        fs.loss_and_grad(W, bad, y)
    bad.indices[0] = -1
    with pytest.raises(ValueError, match="column indices outside"):
        fs.loss_and_grad(W, bad, y)
    bad = X.copy()
    bad.indptr = bad.indptr.copy()
    bad.indptr[3], bad.indptr[4] = bad.indptr[4] + 1, bad.indptr[3]
    with pytest.raises(ValueError, match="non-decreasing"):
        fs.loss_and_grad(W, bad, y)
    bad = X.copy()
    bad.indptr = bad.indptr.copy()
    bad.indptr[-1] += 3
    with pytest.raises(ValueError, match="indptr"):
        fs.loss_and_grad(W, bad, y)


def test_bad_dtypes_shapes_and_slots(rng):
    X, W, y = small(rng)
    with pytest.raises(TypeError, match="dtype bool"):
        fs.loss_and_grad(W, X.astype(bool), y)
    with pytest.raises(TypeError, match="dtype complex"):
        fs.loss_and_grad(W, X.astype(np.complex128), y)
    with pytest.raises(ValueError, match="features"):
        fs.loss_and_grad(np.zeros((3, 4)), X, y)
    with pytest.raises(ValueError, match="labels"):
        fs.loss_and_grad(W, X, y[:-1])
    with pytest.raises(ValueError, match="no samples"):
        fs.loss_and_grad(W, scipy.sparse.csr_matrix((0, 5)), y[:0])
    with pytest.raises(TypeError, match="sparse W"):
        fs.loss_and_grad(scipy.sparse.csr_matrix(W), X, y)
    with pytest.raises(TypeError, match="linear_cross_entropy takes dense X"):
        fs.linear_cross_entropy(X, W, y)


# --- the estimator --------------------------------------------------------------

@pytest.fixture(scope="module")
def sparse_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    return scipy.sparse.csr_matrix(X / 16.0), y  # about half the pixels are 0


@pytest.mark.parametrize("C", [1.0, 0.05])
def test_estimator_same_model_as_logistic_regression_on_sparse_data(sparse_digits, C):
    """Tolerances of the dense test (tests/test_estimator.py) on the same data as CSR."""
    X, y = sparse_digits
    ours, ref = assert_same_model_as_logistic_regression(X, y, C)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    np.testing.assert_allclose(ours.decision_function(X), ref.decision_function(X), atol=1e-3)


def test_estimator_sparse_and_dense_inputs_agree(sparse_digits):
    from fastsoftmax.estimator import SoftmaxRegression

    X, y = sparse_digits
    X, y = X[:600], y[:600]
    dense = SoftmaxRegression(tol=1e-10, max_iter=10_000).fit(X.toarray(), y)
    for Xs in (X, scipy.sparse.csr_array(X), X.tocsc(), X.astype(np.float32)):
        model = SoftmaxRegression(tol=1e-10, max_iter=10_000).fit(Xs, y)
        atol = 2e-2 if Xs.dtype == np.float32 else 1e-5  # as the dense float32 test
        np.testing.assert_allclose(model.coef_, dense.coef_, atol=atol)
        np.testing.assert_allclose(model.predict_proba(Xs), dense.predict_proba(X.toarray()),
                                   atol=atol)
    for method in ("indexloop", "numpy"):
        model = SoftmaxRegression(tol=1e-10, max_iter=10_000, method=method).fit(X, y)
        np.testing.assert_allclose(model.coef_, dense.coef_, atol=1e-5)


def test_text_classification_pipeline():
    """The README's example: TF-IDF features straight into the estimator."""
    pytest.importorskip("sklearn")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    from fastsoftmax.estimator import SoftmaxRegression

    docs = ["the cat sat on the mat", "dogs chase cats", "stocks fell sharply today",
            "the market rallied", "a kitten and a puppy", "bond yields rose"]
    labels = ["pets", "pets", "finance", "finance", "pets", "finance"]
    model = make_pipeline(TfidfVectorizer(), SoftmaxRegression(C=10.0)).fit(docs, labels)
    assert list(model.predict(["the puppy sat", "the market fell"])) == ["pets", "finance"]


# --- Dask arrays of CSR blocks ------------------------------------------------------

@pytest.mark.parametrize("opts", [{}, {"b": True, "sample_weight": True, "l2": 0.3,
                                       "label_smoothing": 0.1, "ignore_index": -100}])
def test_dask_blocks_of_csr_matrices(opts, rng):
    da = pytest.importorskip("dask.array")
    import dask

    import fastsoftmax.dask as fsd

    m, n, K = 230, 12, 4
    X = make_csr(rng, m, n, 0.3, np.float64, hostile=False)
    W = rng.standard_normal((K, n))
    y = rng.integers(0, K, m)
    opts = dict(opts)
    if opts.pop("b", False):
        opts["b"] = rng.standard_normal(K)
    if opts.pop("sample_weight", False):
        opts["sample_weight"] = rng.random(m)
    if "ignore_index" in opts:
        y[rng.random(m) < 0.2] = -100
    blocks = da.from_array(X.toarray(), chunks=(60, n)).map_blocks(scipy.sparse.csr_matrix)
    seen = []

    def spy(block):  # what the blocks are when the kernels get them
        seen.append(type(block))
        return block

    blocks = blocks.map_blocks(spy, meta=scipy.sparse.csr_matrix((0, 0)))
    with dask.config.set(scheduler="synchronous"):
        got = fsd.loss_and_grad(W, blocks, da.from_array(y, chunks=60), split_every=2, **opts)
    assert seen and all(t is scipy.sparse.csr_matrix for t in seen)
    want, scales = oracle(W, X, y, **opts)
    assert_results_close(got, want, np.float64, scales)


def test_estimator_fit_on_dask_csr_blocks(sparse_digits):
    da = pytest.importorskip("dask.array")
    import dask

    from fastsoftmax.estimator import SoftmaxRegression

    X, y = sparse_digits
    X, y = X[:500], y[:500]
    Xd = da.from_array(X.toarray(), chunks=(128, 64)).map_blocks(scipy.sparse.csr_matrix)
    with dask.config.set(scheduler="synchronous"):
        model = SoftmaxRegression(tol=1e-10, max_iter=10_000).fit(Xd, da.from_array(y, 128))
    ref = SoftmaxRegression(tol=1e-10, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(model.coef_, ref.coef_, atol=1e-5)
    bad = X.toarray()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        SoftmaxRegression().fit(da.from_array(bad, chunks=(128, 64)).map_blocks(
            scipy.sparse.csr_matrix), da.from_array(y, 128))


# --- compilation ------------------------------------------------------------------

def test_four_compiled_variants_per_kernel_whatever_the_options(rng, monkeypatch):
    """(data dtype) x (index dtype): options, targets and paths add no specialisation."""
    import fastsoftmax._dispatch as policy
    from fastsoftmax._sparse_fused import sparse_fused_sums, sparse_fused_sums_serial
    from fastsoftmax._indexloop import indexloop_sums

    for serial_work in (2**62, 0):
        monkeypatch.setattr(policy, "SERIAL_WORK", serial_work)
        for dtype in DTYPES:
            for index_dtype in INDEX_DTYPES:
                X = make_csr(rng, 20, 7, 0.4, dtype, index_dtype)
                W = rng.standard_normal((3, 7)).astype(dtype)
                y = rng.integers(0, 3, 20)
                for kw in ({}, {"b": np.ones(3, np.float64), "sample_weight": np.ones(20),
                                "label_smoothing": 0.1, "ignore_index": 2},
                           {"y": np.eye(3)[y], "l2": 1.0}):
                    kw = dict(kw)
                    yy = kw.pop("y", y)
                    for method in ("fused", "indexloop"):
                        fs.loss_and_grad(W, X, yy, method=method, **kw)
    for kernel, vb_at, maps_at in ((sparse_fused_sums, 6, 15), (sparse_fused_sums_serial, 5, 13)):
        # gradient variants (vb None); Hessian products (vb an array, as other
        # tests and Newton-CG fits on CSR X make) are variants of their own, and
        # so are column maps (maps an array) instead of dense slabs (maps None,
        # what these small X use), which other tests in this process may have made
        gradient = [sig for sig in kernel.signatures if sig[vb_at] == numba.types.none]
        dense = [sig for sig in gradient if sig[maps_at] == numba.types.none]
        assert len(dense) == 4, kernel.signatures
        assert len(gradient) - len(dense) <= 4, kernel.signatures
    # the index-loop kernel also takes dense X: count its CSR-tuple gradient variants
    sparse = [s for s in indexloop_sums.signatures
              if isinstance(s[0], numba.types.BaseTuple) and s[3] == numba.types.none]
    assert len(sparse) == 4, indexloop_sums.signatures


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_the_diagonal_takes_the_products_compiled_variant(index_dtype, rng, monkeypatch):
    """The parallel diagonal on CSR X runs through the Hessian product's
    compiled variant of the parallel driver: its chunks get X's squares in
    X's own index dtype (SciPy's product narrows int64 indices that fit in
    int32, which compiled one more variant of the driver) and the product's
    other argument types."""
    import fastsoftmax._api as api
    import fastsoftmax._dispatch as policy

    monkeypatch.setattr(policy, "SERIAL_WORK", 0)
    monkeypatch.setattr(policy, "chunk_count", lambda m: 2)
    X = make_csr(rng, 200, 9, 0.4, np.float64, index_dtype)
    W, V = rng.standard_normal((2, 3, 9))
    b, vb = rng.standard_normal((2, 3))
    y = rng.integers(0, 3, 200)
    entries = []
    real = api.sparse_chunk_entry

    def spy(*args, **kw):
        entries.append(tuple(numba.typeof(a) for a in args))
        return real(*args, **kw)

    monkeypatch.setattr(api, "sparse_chunk_entry", spy)
    hessp = fs.loss_grad_hessp(W, X, y, b=b)[-1]
    hessp(V, vb)
    hessp.diagonal()
    assert len(entries) == 3  # the gradient's, the product's, then the diagonal's
    assert entries[2] == entries[1]
    assert entries[2][1] == numba.types.Array(numba.from_dtype(np.dtype(index_dtype)), 1, "C")


@pytest.mark.parametrize("what", ["gradient, dense slabs", "gradient, column maps",
                                  "stored probabilities"])
def test_a_sparse_chunk_that_fails_in_the_parallel_region_raises(what, rng, monkeypatch):
    """A chunk that fails inside a parallel loop (where no exception can be
    raised) makes the call run again on the calling thread: the caller gets
    the error, or, when the rerun succeeds, the full result (against the
    oracle on the dense matrix), never a partial sum.  For the gradient and
    for the probabilities that Hessian products on CSR X store."""
    import fastsoftmax._api as api
    import fastsoftmax._dispatch as policy

    X = make_csr(rng, 300, 9, 0.4, np.float64, np.int32)
    W, V = rng.standard_normal((2, 3, 9))
    b, vb = rng.standard_normal((2, 3))
    y = rng.integers(0, 3, 300)
    monkeypatch.setattr(policy, "SERIAL_WORK", 0)
    monkeypatch.setattr(policy, "chunk_count", lambda m: 2)
    monkeypatch.setattr(policy, "sparse_dense_slabs", lambda n, K, chunks: "dense" in what)
    gradient = what.startswith("gradient")
    kernel, rerun = (("sparse_fused_sums", "sparse_fused_sums_serial") if gradient else
                     ("sparse_curvature", "curvature_chunk"))
    real = getattr(api, kernel)
    parallel_calls = []

    def failing(*args):
        parallel_calls.append(1)
        out = real(*args)
        if gradient:
            out[-1][1] = True  # as if chunk 1 had raised
            return out
        return True  # as if a chunk had raised

    def call():
        if gradient:
            return fs.loss_and_grad(W, X, y, b=b)
        return fs.hessian_product(W, X, y, V, b=b, vb=vb)

    monkeypatch.setattr(api, kernel, failing)
    got = call()  # the rerun succeeds
    assert parallel_calls
    if gradient:
        want, scales = oracle(W, X, y, b=b)
        assert_results_close(got, want, np.float64, scales)
    else:
        want, scales = naive_hessian_product(W, X.toarray(), y, V, b=b, vb=vb,
                                             return_scales=True)
        assert_product_close(got, want, np.float64, scales)

    def raising(*args):
        raise MemoryError("chunk rerun on the calling thread")

    parallel_calls.clear()
    monkeypatch.setattr(api, rerun, raising)
    with pytest.raises(MemoryError, match="rerun"):
        call()
    assert parallel_calls


def test_sparse_kernels_load_from_the_cache_in_a_new_process():
    from helpers import assert_cached_in_new_process

    calls = ("import scipy.sparse\n"
             "X = scipy.sparse.random(4000, 30, density=0.2, format='csr', random_state=0)\n"
             "W = np.ones((3, 30)); y = np.arange(4000) % 3\n"
             "fs.loss_and_grad(W, X, y); fs.loss_and_grad(W, X, y, method='indexloop')\n"
             "fs.loss_and_grad(W, X[:5], y[:5])\n")
    assert_cached_in_new_process(calls, {"sparse_fused_sums": "fastsoftmax._sparse_fused",
                                         "sparse_fused_sums_serial": "fastsoftmax._sparse_fused",
                                         "indexloop_sums": "fastsoftmax._indexloop"})
    # the Hessian products' probabilities, parallel and serial
    products = calls.split("fs.loss_and_grad")[0] + (
        "fs.loss_grad_hessp(W, X, y)[-1](W)\nfs.loss_grad_hessp(W, X[:5], y[:5])[-1](W)\n")
    assert_cached_in_new_process(products, {"sparse_curvature": "fastsoftmax._sparse_fused",
                                            "curvature_chunk": "fastsoftmax._sparse_fused"})
    # the Hessian's diagonal in parallel (the products' driver, its own chunk)
    diagonal = calls.split("fs.loss_and_grad")[0] + "fs.loss_grad_hessp(W, X, y)[-1].diagonal()\n"
    assert_cached_in_new_process(diagonal, {"diagonal_chunk": "fastsoftmax._sparse_fused"})
    # Newton-CG's products and diagonal by columns (X's transpose)
    # (X no taller than wide: the policy's shape rule)
    columns = ("import scipy.sparse\n"
               "X = scipy.sparse.random(300, 400, density=0.05, format='csr', random_state=0)\n"
               "y = np.arange(300) % 3\n"
               "from fastsoftmax._hessian import evaluate, feature_major_diagonal, "
               "feature_major_product\n"
               "h = evaluate(fs.loss_grad_hessp(np.ones((3, 400)), X, y)[-1]._problem, 'fused', "
               "by_columns=True)[-1]\n"
               "feature_major_product(h, np.ones(1200), np.empty(1200))\n"
               "feature_major_diagonal(h)\n")
    assert_cached_in_new_process(columns, {"gradient_pass": "fastsoftmax._sparse_columns",
                                           "directions_pass": "fastsoftmax._sparse_columns",
                                           "columns_pass": "fastsoftmax._sparse_columns"})


def test_read_only_and_mixed_index_arrays(rng, kernel_path):
    """Read-only arrays (a memory-mapped matrix) and indices/indptr of different
    integer dtypes give the same results (copied to the kernels' types)."""
    X = make_csr(rng, 30, 9, 0.4, np.float64, np.int32)
    W = rng.standard_normal((3, 9))
    y = rng.integers(0, 3, 30)
    want, scales = oracle(W, X, y)
    ro = X.copy()
    for a in (ro.data, ro.indices, ro.indptr):
        a.flags.writeable = False
    assert_results_close(fs.loss_and_grad(W, ro, y), want, np.float64, scales)
    mixed = X.copy()
    mixed.indptr = mixed.indptr.astype(np.int64)
    for method in METHODS:
        assert_results_close(fs.loss_and_grad(W, mixed, y, method=method), want, np.float64,
                             scales)


# --- Hessian-vector products --------------------------------------------------------

@given(problems())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_hessian_products_match_oracle(kernel_path, problem):
    """Every method's product on CSR X, from both entry points, against the
    float64 oracle on X.toarray() (the Hessian tests' tolerance)."""
    W, X, y, kw, dtype = problem
    rng = np.random.default_rng(X.nnz)
    K, n = W.shape
    V = rng.standard_normal((K, n)).astype(dtype)
    vb = rng.standard_normal(K).astype(dtype) if "b" in kw else None
    want, scales = hessian_oracle(W, X.toarray(), y, V, vb, kw, dtype)
    for method in METHODS:
        for got in (fs.hessian_product(W, X, y, V, vb=vb, method=method, **kw),
                    fs.loss_grad_hessp(W, X, y, method=method, **kw)[-1](V, vb)):
            assert_product_close(got, want, dtype, scales)


@pytest.mark.parametrize("call", ["hessian", "matrix", "class_blocks"])
def test_full_hessian_and_blocks_refuse_sparse_x(call, rng):
    X = make_csr(rng, 10, 4, 0.5, np.float64)
    W = np.zeros((3, 4))
    y = np.arange(10) % 3
    with pytest.raises(TypeError, match="dense X only.*Hessian-vector products.*take CSR X"):
        if call == "hessian":
            fs.hessian(W, X, y)
        else:
            getattr(fs.loss_grad_hessp(W, X, y)[-1], call)()


@given(problems())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_diagonal_matches_oracle_on_the_dense_matrix(kernel_path, problem):
    """hessp.diagonal() on CSR X against the oracle Hessian's diagonal on
    X.toarray(), at the working dtype's tolerance (the data are in the
    working dtype; the probabilities are float64), for every method; the
    fused method's sums by SciPy (serial) or by the compiled chunks in
    parallel."""
    W, X, y, kw, dtype = problem
    K, n = W.shape
    y_seen = y.astype(dtype) if y.ndim == 2 else y
    want, scale = diagonal_oracle(W, X, y_seen, **kw)
    for method in METHODS:
        d = fs.loss_grad_hessp(W, X, y, method=method, **kw)[-1].diagonal()
        assert d.dtype == np.float64
        assert_close(d, want, dtype, "diagonal", scale)


@pytest.mark.parametrize("slabs", ["dense", "column-maps"])
def test_both_gradient_slab_layouts_match_oracle(slabs, rng, kernel_path, monkeypatch):
    """The fused kernel's two ways of accumulating the gradient (one dense (n, K)
    slab per chunk, or slabs of only the columns a chunk touches; chosen by
    policy.SPARSE_DENSE_SLAB_BYTES) against the oracle, for the gradient and
    the Hessian product, on wide matrices where every chunk misses columns."""
    import fastsoftmax._dispatch as policy

    monkeypatch.setattr(policy, "SPARSE_DENSE_SLAB_BYTES", 2**62 if slabs == "dense" else 0)
    for dtype in DTYPES:
        for index_dtype in INDEX_DTYPES:
            m, n, K = 45, 70, 4
            X = make_csr(rng, m, n, 0.04, dtype, index_dtype)
            W = rng.standard_normal((K, n)).astype(dtype)
            y = rng.integers(0, K, m)
            kw = {"b": rng.standard_normal(K).astype(dtype), "sample_weight": rng.random(m),
                  "l2": 0.1}
            want, scales = oracle(W, X, y, **kw)
            assert_results_close(fs.loss_and_grad(W, X, y, **kw), want, dtype, scales)
            V = rng.standard_normal((K, n)).astype(dtype)
            vb = rng.standard_normal(K).astype(dtype)
            want, scales = hessian_oracle(W, X.toarray(), y, V, vb, kw, dtype)
            assert_product_close(fs.hessian_product(W, X, y, V, vb=vb, **kw), want, dtype,
                                 scales)


@pytest.mark.parametrize("slabs", ["dense", "column-maps"])
def test_repeated_products_reuse_their_buffers_and_match_the_oracle(slabs, rng, kernel_path,
                                                                    monkeypatch):
    """A HessianProduct on CSR X keeps the point's probabilities, a buffer for
    V^T and (dense slabs; column maps allocate per call) the slab workspace
    across its products; its diagonal may come first and fill the
    probabilities, or come after them: every product in a sequence along
    different directions (some with NaN, which must not leak into the next)
    equals the oracle, and the one-shot hessian_product on the same
    direction bit for bit, and the diagonal equals the oracle's."""
    import fastsoftmax._dispatch as policy

    monkeypatch.setattr(policy, "SPARSE_DENSE_SLAB_BYTES", 2**62 if slabs == "dense" else 0)
    m, n, K = 60, 40, 3
    for dtype in DTYPES:
        X = make_csr(rng, m, n, 0.1, dtype, np.int32)
        W = rng.standard_normal((K, n)).astype(dtype)
        y = rng.integers(0, K, m)
        kw = {"b": rng.standard_normal(K).astype(dtype), "l2": 0.05}
        hessp = fs.loss_grad_hessp(W, X, y, **kw)[-1]
        if dtype == np.float64:
            hessp.diagonal()  # fills the stored probabilities before any product
        for step in range(4):
            V = rng.standard_normal((K, n)).astype(dtype)
            vb = rng.standard_normal(K).astype(dtype)
            if step == 1:
                V[0, int(X.indices[0])] = np.nan
            got = hessp(V, vb)
            fresh = fs.hessian_product(W, X, y, V, vb=vb, **kw)
            for a, b in zip(got, fresh):
                np.testing.assert_array_equal(a, b)
            if step != 1:
                want, scales = hessian_oracle(W, X.toarray(), y, V, vb, kw, dtype)
                assert_product_close(got, want, dtype, scales)
        # the diagonal after the products (from their stored probabilities)
        want, scale = diagonal_oracle(W, X, y, **kw)
        assert_close(hessp.diagonal(), want, dtype, "diagonal", scale)


@pytest.mark.parametrize("path", ["dense", "column-maps", "by-columns", "by-columns-1-part"])
def test_feature_major_products_and_diagonal_match_the_oracle(path, rng, kernel_path,
                                                              monkeypatch):
    """What Newton-CG on CSR X uses (fastsoftmax._hessian.feature_major_product
    and feature_major_diagonal): directions, products and the diagonal laid
    out as ``[V^T.ravel(), vb]``, the product written into one buffer again
    and again, float64 whatever the working dtype.  Each product (read back
    through the transposed layout) against the oracle product, its returned
    curvature ``<d, H d>`` against the oracle's, and the diagonal against the
    oracle Hessian's, with and without an intercept and a penalty; by rows
    (the fused kernel's dense slabs or column maps) and by columns (from X's
    transpose, in 3 parts or 1)."""
    import fastsoftmax._dispatch as policy
    from fastsoftmax._hessian import feature_major_diagonal, feature_major_product
    from helpers import RTOL

    by_columns = path.startswith("by-columns")
    newton_by_columns(monkeypatch, by_columns)
    monkeypatch.setattr(policy, "SPARSE_COLUMN_PARTS", 1 if path.endswith("1-part") else 3)
    monkeypatch.setattr(policy, "SPARSE_DENSE_SLAB_BYTES", 2**62 if path == "dense" else 0)
    m, n, K = 50, 40, 3
    for dtype in DTYPES:
        for intercept, l2 in ((True, 0.05), (False, 0.0)):
            X = make_csr(rng, m, n, 0.03, dtype, np.int64)  # some columns untouched
            W = rng.standard_normal((K, n)).astype(dtype)
            y = rng.integers(0, K, m)
            kw = {"l2": l2, "sample_weight": rng.random(m)}
            if intercept:
                kw["b"] = rng.standard_normal(K).astype(dtype)
            hessp = fs.loss_grad_hessp(W, X, y, **kw)[-1]
            N = K * n + K * intercept
            out = np.full(N, np.nan)  # every entry must be written
            for _ in range(3):
                V = rng.standard_normal((K, n)).astype(dtype)  # as the kernel reads it
                vb = rng.standard_normal(K).astype(dtype) if intercept else None
                d = np.concatenate([V.T.ravel()] + ([vb] if intercept else [])).astype(
                    np.float64)
                curvature = feature_major_product(hessp, d, out)
                assert out.dtype == np.float64
                want, scales = hessian_oracle(W, X.toarray(), y, V, vb, kw, dtype)
                want_w, scale_w = (want[0], scales[0]) if intercept else (want, scales)
                assert_close(out[: K * n].reshape(n, K).T, want_w, dtype, "HV", scale_w)
                flat_want = [want_w.T.ravel()]
                flat_scale = [np.broadcast_to(scale_w, (K, n)).T.ravel()]
                if intercept:
                    assert_close(out[K * n:], want[1], dtype, "Hvb", scales[1])
                    flat_want.append(want[1])
                    flat_scale.append(np.broadcast_to(scales[1], (K,)))
                flat_want, flat_scale = np.concatenate(flat_want), np.concatenate(flat_scale)
                bound = RTOL[np.dtype(dtype)] * (np.abs(d) @ (np.abs(flat_want) + flat_scale))
                assert abs(curvature - d @ flat_want) <= bound
                if dtype == np.float32:  # not rounded to float32: hessp's rounding of it
                    public = hessp(V, vb) if intercept else (hessp(V),)
                    got = (out[: K * n].reshape(n, K).T,) + ((out[K * n:],) if intercept else ())
                    assert np.any(got[0] != got[0].astype(np.float32))
                    for g, h in zip(got, public):
                        np.testing.assert_allclose(g.astype(np.float32), h, rtol=2.0 ** -23,
                                                   atol=float(np.finfo(np.float32).tiny))
            untouched = np.setdiff1d(np.arange(n), X.indices)
            if l2 == 0.0 and untouched.size:  # no penalty: an inf there stays out
                V = rng.standard_normal((K, n)).astype(dtype)
                V[:, untouched] = np.inf
                feature_major_product(hessp, V.T.ravel().astype(np.float64), out)
                HVt = out.reshape(n, K)
                assert np.all(HVt[untouched] == 0.0)
                V[:, untouched] = 0.0
                want, scales = hessian_oracle(W, X.toarray(), y, V, None, kw, dtype)
                assert_close(HVt.T, want, dtype, "HV", scales)
            want, scale = diagonal_oracle(W, X, y, feature_major=True, **kw)
            assert_close(feature_major_diagonal(hessp), want, dtype, "diagonal", scale)


def test_newton_by_columns_drops_ignored_rows_and_ignores_the_thread_count(rng, monkeypatch):
    """Newton-CG's evaluation, products and diagonal by columns (X's
    transpose) with ignore_index: a dropped row holding inf and NaN adds
    nothing (0 * inf must not enter the column sums); against the oracle on
    the kept rows alone.  Every entry is summed in a fixed order over a
    fixed partition (the default 128 parts of 600 rows, run in 8 tasks on
    one thread and 16 on two), so the results on 1 and on 2 threads are
    equal bit for bit."""
    from fastsoftmax._hessian import evaluate, feature_major_diagonal, feature_major_product

    newton_by_columns(monkeypatch, True)
    m, n, K = 600, 30, 4
    X = make_csr(rng, m, n, 0.2, np.float64, np.int32).tolil()
    y = rng.integers(0, K, m)
    y[[3, 40]] = -100
    X[3, 5], X[40, 7] = np.inf, np.nan
    X = X.tocsr()
    W = rng.standard_normal((K, n))
    kw = dict(b=rng.standard_normal(K), l2=0.1)
    keep = y >= 0
    Xk = scipy.sparse.csr_matrix(X.toarray()[keep])
    V = rng.standard_normal((K, n))
    vb = rng.standard_normal(K)
    d = np.concatenate([V.T.ravel(), vb])
    results = []
    threads = sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)})
    before = numba.get_num_threads()
    try:
        for count in threads:
            numba.set_num_threads(count)
            p = fs.loss_grad_hessp(W, X, y, ignore_index=-100, **kw)[-1]._problem
            *got, hessp = evaluate(p, "fused", by_columns=True)
            out = np.empty(K * n + K)
            curvature = feature_major_product(hessp, d, out)
            results.append((*got, out, curvature, feature_major_diagonal(hessp)))
    finally:
        numba.set_num_threads(before)
    loss, dW, db, out, curvature, diagonal = results[0]
    want, scales = oracle(W, Xk, y[keep], **kw)
    assert_results_close((loss, dW, db), want, np.float64, scales)
    assert np.all(np.isfinite(out)) and np.isfinite(curvature)
    want, scales = hessian_oracle(W, Xk.toarray(), y[keep], V, vb, kw, np.float64)
    assert_close(out[: K * n].reshape(n, K).T, want[0], np.float64, "HV", scales[0])
    assert_close(out[K * n:], want[1], np.float64, "Hvb", scales[1])
    want, scale = diagonal_oracle(W, Xk, y[keep], feature_major=True, **kw)
    assert_close(diagonal, want, np.float64, "diagonal", scale)
    if len(threads) < 2:
        pytest.skip("numba has one thread here: nothing to compare the results with")
    for a, b in zip(results[0], results[1]):
        np.testing.assert_array_equal(a, b)


def test_products_by_columns_only_within_the_transposes_memory_bound(rng, monkeypatch):
    """Newton-CG's products go by columns exactly when X's transpose (data,
    indices and row pointers, counted here from the dtypes) fits in
    SPARSE_TRANSPOSED_BYTES and X has at most
    SPARSE_COLUMNS_MAX_ROWS_PER_COLUMN rows per column; else they go by
    rows and no transpose is made."""
    import fastsoftmax._api as api
    import fastsoftmax._dispatch as policy
    from fastsoftmax._hessian import feature_major_diagonal, feature_major_product

    m, n, K = 50, 40, 3
    X = make_csr(rng, m, n, 0.2, np.float32, np.int64)
    y = rng.integers(0, K, m)
    calls = []
    real = api.directions_pass
    monkeypatch.setattr(api, "directions_pass", lambda *a: calls.append(1) or real(*a))
    size = X.nnz * (4 + 8) + (n + 1) * 8  # float32 data, int64 indices; X^T has n rows
    for bound, ratio, by_columns in ((size, 1.25, True), (size - 1, 1.25, False),
                                     (size, 1.24, False)):
        monkeypatch.setattr(policy, "SPARSE_TRANSPOSED_BYTES", bound)
        monkeypatch.setattr(policy, "SPARSE_COLUMNS_MAX_ROWS_PER_COLUMN", ratio)
        calls.clear()
        hessp = fs.loss_grad_hessp(np.zeros((K, n), np.float32), X, y)[-1]
        feature_major_product(hessp, np.ones(K * n), np.empty(K * n))
        feature_major_diagonal(hessp)
        assert bool(calls) == by_columns
        assert ("transposed" in vars(hessp._problem.X)) == by_columns


def test_balanced_parts_cover_the_rows_with_even_non_zeros(rng):
    """The column passes' partition: contiguous, increasing bounds from 0 to
    the row count, at most ``parts`` parts, none empty, each holding at most
    its share of the non-zeros plus one row's (a row is never split); checked
    against counts made here from the row lengths."""
    from fastsoftmax._sparse import balanced_parts

    for rows, parts in ((0, 4), (1, 4), (7, 1), (50, 3), (50, 128), (400, 16)):
        lengths = rng.integers(0, 30, rows)
        lengths[: rows // 5] = 0  # empty rows at the start
        if rows > 2:
            lengths[rows // 2] = 500  # one heavy row
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        bounds = balanced_parts(indptr, parts)
        assert bounds.dtype == np.int64 and bounds[0] == 0 and bounds[-1] == rows
        assert np.all(np.diff(bounds) > 0) if rows else bounds.tolist() == [0]
        assert bounds.shape[0] - 1 <= parts
        share = lengths.sum() / parts
        for a, b in zip(bounds[:-1], bounds[1:]):
            assert lengths[a:b].sum() <= share + lengths.max() + 1


def test_the_transpose_is_made_once_per_validated_matrix():
    """X's transpose for the products by columns: made on first use and kept
    with the validated X (so are the partitions of the rows); duplicates
    summed, explicit zeros kept or not but the values those of
    X.toarray().T, column indices sorted, in X's data and index dtypes; the
    caller's X untouched."""
    from fastsoftmax._sparse import check_csr

    for dtype in DTYPES:
        for index_dtype in INDEX_DTYPES:
            X = scipy.sparse.csr_matrix((np.array([1.0, -2.0, 3.0, 0.5, 0.25, 0.0], dtype),
                                         np.array([2, 0, 2, 1, 1, 3], dtype=index_dtype),
                                         np.array([0, 3, 3, 6], dtype=index_dtype)),
                                        shape=(3, 4))
            csr = check_csr("X", X)
            T = csr.transposed
            assert T is csr.transposed and T.shape == (4, 3)
            assert csr.parts(2) is csr.parts(2) and T.parts(2) is T.parts(2)  # kept
            assert T.data.dtype == dtype
            assert T.indices.dtype == T.indptr.dtype == csr.indices.dtype
            np.testing.assert_array_equal(T.to_scipy().toarray(), X.toarray().T)
            for j in range(4):
                cols = T.indices[T.indptr[j]:T.indptr[j + 1]]
                assert np.all(np.diff(cols) > 0)  # sorted, one entry per (j, i)
            assert X.has_canonical_format is False and X.nnz == 6


def test_feature_major_products_take_csr_and_the_fused_method_only(rng):
    from fastsoftmax._hessian import feature_major_diagonal, feature_major_product

    X = make_csr(rng, 20, 6, 0.3, np.float64)
    W, y = np.zeros((3, 6)), rng.integers(0, 3, 20)
    for hessp in (fs.loss_grad_hessp(W, X.toarray(), y)[-1],
                  fs.loss_grad_hessp(W, X, y, method="numpy")[-1]):
        with pytest.raises(TypeError, match="CSR X and the fused method"):
            feature_major_product(hessp, np.ones(18), np.empty(18))
        with pytest.raises(TypeError, match="CSR X and the fused method"):
            feature_major_diagonal(hessp)


def test_one_hessian_product_called_from_several_threads(rng):
    """The kernels release the GIL: threads calling one HessianProduct on CSR
    X at once (dense slabs, the workspace path) get the serial results bit
    for bit (each product borrows its own buffers)."""
    from concurrent.futures import ThreadPoolExecutor

    m, n, K = 3000, 20000, 5
    X = make_csr(rng, m, n, 0.002, np.float64, np.int32)
    W = 0.1 * rng.standard_normal((K, n))
    y = rng.integers(0, K, m)
    hessp = fs.loss_grad_hessp(W, X, y, b=np.zeros(K))[-1]
    directions = [(rng.standard_normal((K, n)), rng.standard_normal(K)) for _ in range(6)]
    refs = [hessp(V, vb) for V, vb in directions]

    def job(k):
        for _ in range(5):
            V, vb = directions[k % len(directions)]
            got = hessp(V, vb)
            if not all(np.array_equal(g, r) for g, r in zip(got, refs[k % len(directions)])):
                return False
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(job, range(12)))


def test_a_diagonal_chunk_that_fails_in_the_parallel_region_falls_back(rng, monkeypatch):
    """The parallel sums of the CSR diagonal with a chunk that raised (its
    sums incomplete, here NaN): the diagonal comes from SciPy's product
    instead, against the oracle."""
    import fastsoftmax._api as api
    import fastsoftmax._dispatch as policy

    X = make_csr(rng, 200, 9, 0.4, np.float64, np.int32)
    W = rng.standard_normal((3, 9))
    b = rng.standard_normal(3)
    y = rng.integers(0, 3, 200)
    monkeypatch.setattr(policy, "SERIAL_WORK", 0)
    monkeypatch.setattr(policy, "chunk_count", lambda m: 2)
    real = api.sparse_fused_sums
    calls = []

    def failing(*args):
        calls.append(1)
        out = real(*args)
        out[1][...] = np.nan  # what a chunk that stopped early leaves
        out[-1][1] = True
        return out

    hessp = fs.loss_grad_hessp(W, X, y, b=b, l2=0.1)[-1]
    monkeypatch.setattr(api, "sparse_fused_sums", failing)
    got = hessp.diagonal()
    assert calls
    want, scale = diagonal_oracle(W, X, y, b=b, l2=0.1)
    assert_close(got, want, np.float64, "diagonal", scale)


def test_diagonal_ignores_non_finite_values_of_dropped_rows(kernel_path):
    """A row dropped by ignore_index may hold inf: the CSR diagonal stays the
    dense one (finite), for every method."""
    X = np.array([[1.0, np.inf, 0.0], [0.0, 2.0, 0.5], [0.5, 0.0, 1.0], [1.0, 1.0, 0.0]])
    y = np.array([-100, 1, 0, 1])
    W = np.array([[0.1, -0.2, 0.3], [0.0, 0.4, -0.1]])
    kw = dict(b=np.zeros(2), ignore_index=-100, l2=0.1)
    want = fs.loss_grad_hessp(W, X, y, **kw)[-1].diagonal()
    assert np.all(np.isfinite(want))
    for method in METHODS:
        got = fs.loss_grad_hessp(W, scipy.sparse.csr_matrix(X), y, method=method,
                                 **kw)[-1].diagonal()
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)


def test_squares_are_made_once_per_validated_matrix():
    """The Hessian diagonal's squared non-zeros are made on first use and kept
    with the validated X (every Newton step of a fit shares them): unsorted
    columns and duplicate entries summed before squaring, as in X.toarray()."""
    from fastsoftmax._sparse import check_csr

    for index_dtype in INDEX_DTYPES:
        X = scipy.sparse.csr_matrix((np.array([1.0, -2.0, 3.0, 0.5, 0.25]),
                                     np.array([2, 0, 2, 1, 1], dtype=index_dtype),
                                     np.array([0, 3, 3, 5], dtype=index_dtype)), shape=(3, 4))
        csr = check_csr("X", X)
        squared = csr.squared
        assert squared is csr.squared
        np.testing.assert_array_equal(squared.to_scipy().toarray(), X.toarray() ** 2)
        # in X's index dtype (SciPy's product narrows int64): the kernels' own variants
        assert squared.indices.dtype == squared.indptr.dtype == csr.indices.dtype
        assert X.has_canonical_format is False and X.nnz == 5  # the caller's X untouched


def test_non_finite_weight_of_an_unused_column_stays_out_of_the_gradient(kernel_path):
    """A column that no row of X touches contributes nothing, even with an
    infinite weight, when l2 is 0 (0 * inf must not turn its gradient into NaN),
    for every method."""
    X = scipy.sparse.csr_matrix(np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.0, 0.0]]))
    W = np.zeros((2, 3))
    W[0, 2] = np.inf
    y = np.array([0, 1, 1])
    want, scales = oracle(np.where(np.isfinite(W), W, 0.0), X, y)
    for method in METHODS:
        got = fs.loss_and_grad(W, X, y, method=method)
        assert_results_close(got, want, np.float64, scales)
