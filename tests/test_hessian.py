"""Hessian-vector products: every method against the float64 oracle
(tests/naive_hessian.py), central differences of the gradient, scikit-learn's
LinearModelLoss, each other, and hostile directions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsoftmax as fs
from fastsoftmax.tools.problems import ignore_labels
from helpers import (DTYPES, METHODS, OPTION_NAMES, TARGETS, assert_cached_in_new_process,
                     assert_product_close, hessian_oracle,
                     assert_close, draw_dense_problem, f64, grid_problem, ignore_index_problem,
                     make_problem, options, over_ignore_index_cases, over_option_grid)
from naive_hessian import naive_hessian, naive_hessian_product



def direction(rng, K, n, dtype, has_b):
    V = rng.standard_normal((K, n)).astype(dtype)
    vb = rng.standard_normal(K).astype(dtype) if has_b else None
    return V, vb


def both_entry_points(W, X, y, V, vb, method, kw):
    """The product from hessian_product and from loss_grad_hessp's hessp."""
    one = fs.hessian_product(W, X, y, V, vb=vb, method=method, **kw)
    hessp = fs.loss_grad_hessp(W, X, y, method=method, **kw)[-1]
    return one, hessp(V, vb) if "b" in kw else hessp(V)


@over_option_grid
def test_matches_oracle(method, dtype, target, opt, rng, kernel_path):
    W, X, y, kw = grid_problem(rng, dtype, target, opt)
    V, vb = direction(rng, *W.shape, dtype, "b" in kw)
    want, scales = hessian_oracle(W, X, y, V, vb, kw, dtype)
    for got in both_entry_points(W, X, y, V, vb, method, kw):
        assert_product_close(got, want, dtype, scales)


@over_ignore_index_cases
def test_ignore_index_matches_oracle(method, dtype, extra, rng, kernel_path):
    W, X, y, kw = ignore_index_problem(rng, dtype, extra)
    K, n = W.shape
    V, vb = direction(rng, K, n, dtype, "b" in kw)
    for reduction in ("mean", "sum"):
        want, scales = naive_hessian_product(*f64(W, X), y, V, vb=vb, ignore_index=-100,
                                             reduction=reduction, return_scales=True, **kw)
        for got in both_entry_points(W, X, y, V, vb, method,
                                     {**kw, "ignore_index": -100, "reduction": reduction}):
            assert_product_close(got, want, dtype, scales)
    # ignoring is the same as leaving the samples out
    keep = y != -100
    sub = {k: (v[keep] if k == "sample_weight" else v) for k, v in kw.items()}
    left_out = fs.hessian_product(W, X[keep], y[keep], V, vb=vb, method=method, **sub)
    got = fs.hessian_product(W, X, y, V, vb=vb, ignore_index=-100, method=method, **kw)
    _, scales = naive_hessian_product(*f64(W, X), y, V, vb=vb, ignore_index=-100,
                                      return_scales=True, **kw)
    assert_product_close(got, left_out, dtype, scales)


def test_a_hessian_chunk_that_fails_in_the_parallel_region_raises(rng, monkeypatch):
    """A chunk of the Hessian product that fails inside the parallel loop
    (where no exception can be raised) is run again on the calling thread:
    the caller gets the error, or, when the rerun succeeds, the full sums
    (against the oracle), never a partial sum."""
    import fastsoftmax._dispatch as policy
    import fastsoftmax._hessian_fused as hf

    m, n, K = 400, 6, 3
    W, X, y = make_problem(rng, m, n, K, np.float64, "labels")
    b = rng.standard_normal(K)
    V, vb = direction(rng, K, n, np.float64, True)
    real = hf._product_chunks
    parallel_calls = []

    def failing(*args):
        parallel_calls.append(1)
        real(*args)
        args[-1][1] = True  # as if chunk 1 had raised

    def raising(*args):
        raise MemoryError("chunk rerun on the calling thread")

    def setup():
        monkeypatch.setattr(policy, "SERIAL_WORK", 0)
        monkeypatch.setattr(policy, "chunk_count", lambda m: 2)
        monkeypatch.setattr(hf, "_product_chunks", failing)

    setup()
    got = fs.hessian_product(W, X, y, V, b=b, vb=vb)  # the rerun succeeds
    assert parallel_calls
    want, scales = naive_hessian_product(W, X, y, V, b=b, vb=vb, return_scales=True)
    assert_product_close(got, want, np.float64, scales)
    parallel_calls.clear()
    monkeypatch.setattr(hf, "hessian_chunk", raising)  # the parallel loop's entry is cached
    with pytest.raises(MemoryError, match="rerun"):
        fs.hessian_product(W, X, y, V, b=b, vb=vb)
    assert parallel_calls


@pytest.mark.parametrize("what", ["hessian", "diagonal"])
def test_a_block_or_diagonal_chunk_that_fails_in_the_parallel_region_raises(what, rng,
                                                                            monkeypatch):
    """The same for the full Hessian's and the diagonal's parallel kernels:
    a failed chunk is run again on the calling thread (the full result,
    against the oracle Hessian, or the chunk's exception)."""
    import importlib

    import fastsoftmax._dispatch as policy

    module, kernel, chunk = {
        "hessian": ("fastsoftmax._hessian_full", "_block_chunks", "full_chunk"),
        "diagonal": ("fastsoftmax._hessian_diag", "_diagonal_chunks", "diag_chunk")}[what]
    mod = importlib.import_module(module)
    m, n, K = 400, 5, 3
    W, X, y = make_problem(rng, m, n, K, np.float64, "labels")
    b = rng.standard_normal(K)
    monkeypatch.setattr(policy, "SERIAL_WORK", 0)
    monkeypatch.setattr(policy, "chunk_count", lambda m: 2)
    monkeypatch.setattr(policy, "hessian_chunks", lambda m, classes, nt: 2)
    real = getattr(mod, kernel)
    parallel_calls = []

    def failing(*args):
        parallel_calls.append(1)
        real(*args)
        args[-1][1] = True  # as if chunk 1 had raised

    def compute():
        if what == "hessian":
            return fs.hessian(W, X, y, b=b)
        return fs.loss_grad_hessp(W, X, y, b=b)[-1].diagonal()

    monkeypatch.setattr(mod, kernel, failing)
    got = compute()  # the rerun succeeds
    assert parallel_calls
    want, scale = naive_hessian(W, X, y, b=b, return_scale=True)
    want = oracle_in_flat_layout(want, K, n, True)
    scale = oracle_in_flat_layout(scale, K, n, True)
    if what == "diagonal":
        want, scale = np.diag(want), np.diag(scale)
    assert_close(got, want, np.float64, what, scale)

    def raising(*args):
        raise MemoryError("chunk rerun on the calling thread")

    parallel_calls.clear()
    monkeypatch.setattr(mod, chunk, raising)  # the parallel loop's entry is cached
    with pytest.raises(MemoryError, match="rerun"):
        compute()
    assert parallel_calls


@pytest.mark.parametrize("method", METHODS)
def test_methods_agree_with_each_other(method, rng):
    """On a larger problem with every option, against the NumPy method: the
    stated rtol relative to the largest entry."""
    for dtype in DTYPES:
        m, n, K = 2000, 17, 7
        W, X, y = make_problem(rng, m, n, K, dtype)
        kw = dict(b=rng.standard_normal(K).astype(dtype), sample_weight=rng.random(m),
                  l2=0.01, label_smoothing=0.05)
        V, vb = direction(rng, K, n, dtype, True)
        ref = fs.hessian_product(W, X, y, V, vb=vb, method="numpy", **kw)
        got = fs.hessian_product(W, X, y, V, vb=vb, method=method, **kw)
        for g, r in zip(got, ref):
            assert_close(g, r, dtype)


# --- finite differences of the gradient -----------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", ["labels", "probs", "nonneg"])
@pytest.mark.parametrize("opt", ["plain", "all", "ignore"])
def test_finite_differences_of_gradient(method, target, opt, rng, kernel_path):
    """(HV, Hvb) against (g(theta + h d) - g(theta - h d)) / 2h of the method's
    own float64 gradient, h = 1e-5; atol 1e-7 times the largest entry (at least 1):
    the truncation error is O(h^2) and the rounding error O(1e-16 / h)."""
    m, n, K = 23, 4, 3
    W, X, y = make_problem(rng, m, n, K, np.float64, target)
    b = rng.standard_normal(K)
    kw = {"b": b}
    if opt == "all":
        kw.update(sample_weight=rng.random(m), l2=0.3, label_smoothing=0.1, reduction="sum")
    elif opt == "ignore":
        if target != "labels":
            pytest.skip("ignore_index needs class-index targets")
        y = ignore_labels(y, rng)
        kw["ignore_index"] = -100
    V, vb = direction(rng, K, n, np.float64, True)
    h = 1e-5

    def grad(s):
        _, dW, db = fs.loss_and_grad(W + s * V, X, y, method=method, **{**kw, "b": b + s * vb})
        return dW, db

    (gWp, gbp), (gWm, gbm) = grad(h), grad(-h)
    fd_W, fd_b = (gWp - gWm) / (2 * h), (gbp - gbm) / (2 * h)
    HV, Hvb = fs.hessian_product(W, X, y, V, vb=vb, method=method, **kw)
    scale = max(np.abs(fd_W).max(), np.abs(fd_b).max(), 1.0)
    np.testing.assert_allclose(HV, fd_W, rtol=0, atol=1e-7 * scale)
    np.testing.assert_allclose(Hvb, fd_b, rtol=0, atol=1e-7 * scale)


# --- scikit-learn ------------------------------------------------------------

@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_matches_sklearn_linear_model_loss(fit_intercept, weighted, method, rng):
    """LinearModelLoss(HalfMultinomialLoss(n_classes=K), fit_intercept) on the same data.

    Mapping: its coef is (K, n + 1) = [W | b] (intercept last column) or
    (K, n) = W; its objective is sum_i sw_i loss_i / sum_i sw_i
    + (l2_reg_strength / 2) ||W||^2 (the intercept not penalised), which is
    fs's reduction="mean" (D = total weight) with l2 = l2_reg_strength;
    HalfMultinomialLoss's loss_i is lse_i - z_iy (not halved).  So its
    gradient and hessp(s) with s = [V | vb] must equal fs's (dW | db) and
    (HV | Hvb).  float64, rtol 1e-10 relative to the largest entry.
    """
    from sklearn._loss.loss import HalfMultinomialLoss
    from sklearn.linear_model._linear_loss import LinearModelLoss

    m, n, K = 60, 5, 4
    W, X, y = make_problem(rng, m, n, K, np.float64)
    b = rng.standard_normal(K) if fit_intercept else None
    sw = rng.random(m) * 3 if weighted else None
    l2 = 0.25
    V, vb = direction(rng, K, n, np.float64, fit_intercept)
    lml = LinearModelLoss(HalfMultinomialLoss(n_classes=K), fit_intercept=fit_intercept)
    coef = np.column_stack([W, b]) if fit_intercept else W.copy()
    s = np.column_stack([V, vb]) if fit_intercept else V.copy()
    grad, hessp = lml.gradient_hessian_product(coef, X, y.astype(np.float64), sample_weight=sw,
                                               l2_reg_strength=l2)
    want = hessp(s)
    out = fs.loss_grad_hessp(W, X, y, b=b, sample_weight=sw, l2=l2, method=method)
    if fit_intercept:
        _, dW, db, fs_hessp = out
        HV, Hvb = fs_hessp(V, vb)
        assert_close(np.column_stack([dW, db]), grad, np.float64, "gradient")
        assert_close(np.column_stack([HV, Hvb]), want, np.float64, "hessp")
    else:
        _, dW, fs_hessp = out
        assert_close(dW, grad, np.float64, "gradient")
        assert_close(fs_hessp(V), want, np.float64, "hessp")


# --- properties of the operator -----------------------------------------------

def test_symmetric_and_positive_semidefinite(rng):
    """<d1, H d2> = <d2, H d1> and <d, H d> >= 0 (float64, every method)."""
    m, n, K = 80, 6, 5
    W, X, y = make_problem(rng, m, n, K, np.float64, "nonneg")
    kw = dict(b=rng.standard_normal(K), sample_weight=rng.random(m), label_smoothing=0.1)
    for method in METHODS:
        hessp = fs.loss_grad_hessp(W, X, y, method=method, **kw)[-1]
        d1 = rng.standard_normal(K * n + K)
        d2 = rng.standard_normal(K * n + K)
        a, c = d1 @ hessp(d2), d2 @ hessp(d1)
        assert abs(a - c) <= 1e-12 * (abs(a) + abs(c) + 1)
        assert d1 @ hessp(d1) >= -1e-12
        # the direction of a constant shift of every class's logits is in the null space
        shift = np.concatenate([np.zeros(K * n), np.ones(K)])
        np.testing.assert_allclose(hessp(shift), 0.0, atol=1e-12)


def test_flat_and_structured_directions_agree(rng):
    m, n, K = 30, 3, 4
    for has_b in (False, True):
        W, X, y = make_problem(rng, m, n, K, np.float64)
        kw = {"b": rng.standard_normal(K)} if has_b else {}
        hessp = fs.loss_grad_hessp(W, X, y, l2=0.1, **kw)[-1]
        V, vb = direction(rng, K, n, np.float64, has_b)
        flat = np.concatenate([V.ravel(), vb]) if has_b else V.ravel()
        got = hessp(flat)
        assert got.shape == flat.shape
        want = hessp(V, vb) if has_b else hessp(V)
        want_flat = np.concatenate([want[0].ravel(), want[1]]) if has_b else want.ravel()
        np.testing.assert_array_equal(got, want_flat)


def test_hessp_keeps_its_point(rng):
    """Updating W and b in place after loss_grad_hessp does not move hessp's point."""
    m, n, K = 30, 3, 4
    W, X, y = make_problem(rng, m, n, K, np.float64)
    b = rng.standard_normal(K)
    V, vb = direction(rng, K, n, np.float64, True)
    want = fs.hessian_product(W, X, y, V, b=b, vb=vb)
    for method in METHODS:
        Wc, bc = W.copy(), b.copy()
        hessp = fs.loss_grad_hessp(Wc, X, y, b=bc, method=method)[-1]
        Wc += 5.0
        bc -= 3.0
        for g, w in zip(hessp(V, vb), want):
            assert_close(g, w, np.float64)


def test_loss_and_gradient_are_loss_and_grads(rng):
    """loss_grad_hessp's first elements are loss_and_grad's, bit for bit."""
    m, n, K = 50, 4, 3
    for dtype in DTYPES:
        W, X, y = make_problem(rng, m, n, K, dtype)
        kw = options("all", rng, m, K, dtype, "labels")
        for method in METHODS:
            want = fs.loss_and_grad(W, X, y, method=method, **kw)
            got = fs.loss_grad_hessp(W, X, y, method=method, **kw)
            assert len(got) == len(want) + 1
            assert got[0] == want[0]
            for g, w in zip(got[1:-1], want[1:]):
                np.testing.assert_array_equal(g, w)
            assert isinstance(got[-1], fs.HessianProduct)


def test_deterministic_and_layout_independent(rng, kernel_path):
    """Repeated calls agree bit for bit; Fortran and strided X give the same
    product within float64 rounding (their tiles are gathered)."""
    m, n, K = 300, 7, 5
    W, X, y = make_problem(rng, m, n, K, np.float64)
    V, vb = direction(rng, K, n, np.float64, True)
    b = rng.standard_normal(K)
    for method in ("fused", "indexloop"):
        first = fs.hessian_product(W, X, y, V, b=b, vb=vb, method=method)
        for _ in range(3):
            again = fs.hessian_product(W, X, y, V, b=b, vb=vb, method=method)
            for a, c in zip(first, again):
                np.testing.assert_array_equal(a, c)
        big = np.zeros((m, 2 * n))
        big[:, ::2] = X
        for Xl in (np.asfortranarray(X), big[:, ::2]):
            got = fs.hessian_product(W, Xl, y, V, b=b, vb=vb, method=method)
            for a, c in zip(got, first):
                assert_close(a, c, np.float64)


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_masked_class_and_extreme_logits(layout, rng, kernel_path):
    """A class with a -inf intercept has probability 0 and adds nothing; logits
    of 1e6 give finite products equal to the oracle's (dense X, and CSR X,
    whose fused products use stored probabilities)."""
    import scipy.sparse

    m, n, K = 20, 3, 4
    W, X, y = make_problem(rng, m, n, K, np.float64)
    y = np.where(y == 3, 0, y)
    b = np.array([0.0, 0.1, -0.2, -np.inf])
    V, vb = direction(rng, K, n, np.float64, True)
    Xin = X if layout == "dense" else scipy.sparse.csr_matrix(X)
    for method in METHODS:
        HV, Hvb = fs.hessian_product(W, Xin, y, V, b=b, vb=vb, method=method)
        assert np.all(np.isfinite(HV)) and np.all(np.isfinite(Hvb))
        assert np.all(HV[3] == 0) and Hvb[3] == 0
        want = naive_hessian_product(W[:3], X, y, V[:3], b=b[:3], vb=vb[:3])
        assert_close(HV[:3], want[0], np.float64)
        HV, Hvb = fs.hessian_product(1e6 * W, Xin, y, V, b=np.zeros(K), vb=vb, method=method)
        assert np.all(np.isfinite(HV)) and np.all(np.isfinite(Hvb))


def test_python_threads_get_the_serial_results(rng):
    """Eight Python threads computing products and Hessians at once get the
    single-threaded caller's results bit for bit (fused and index-loop)."""
    from concurrent.futures import ThreadPoolExecutor

    m, n, K = 20_000, 12, 5
    W, X, y = make_problem(rng, m, n, K, np.float64)
    b = rng.standard_normal(K)
    V, vb = direction(rng, K, n, np.float64, True)
    refs = {meth: fs.hessian_product(W, X, y, V, b=b, vb=vb, method=meth)
            for meth in ("fused", "indexloop")}
    H = fs.hessian(W, X[:2000], y[:2000], b=b)

    def job(k):
        meth = ("fused", "indexloop")[k % 2]
        for _ in range(3):
            got = fs.hessian_product(W, X, y, V, b=b, vb=vb, method=meth)
            if not all(np.array_equal(g, r) for g, r in zip(got, refs[meth])):
                return False
        return np.array_equal(fs.hessian(W, X[:2000], y[:2000], b=b), H)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(job, range(8)))


# --- hostile directions -------------------------------------------------------

@pytest.mark.parametrize("bad, kwargs, error, match", [
    (np.zeros((3, 2)), {}, ValueError, "V must have W's shape"),
    (np.zeros((4, 2)), {"vb": np.zeros(4)}, ValueError, "no intercept"),
    (np.zeros((4, 3), dtype=bool), {}, TypeError, "V must have a real"),
    (np.zeros((4, 3), dtype=complex), {}, TypeError, "V must have a real"),
    (np.zeros((4, 3), dtype=np.longdouble), {}, TypeError, "V has dtype"),
    ([[1, 2, 3]] * 3 + [[1, 2]], {}, TypeError, "V must be array-like"),
])
def test_bad_directions(bad, kwargs, error, match, rng):
    if np.dtype(np.longdouble).itemsize <= 8 and match == "V has dtype":
        pytest.skip("long double is float64 here")
    W, X, y = make_problem(rng, 10, 3, 4, np.float64)
    if match == "no intercept":
        W = W[:, :2]
        X = X[:, :2]
    with pytest.raises(error, match=match):
        fs.hessian_product(W, X, y, bad, **kwargs)
    hessp = fs.loss_grad_hessp(W, X, y)[-1]
    with pytest.raises(error, match=match):
        hessp(bad, **kwargs)


def test_bad_intercept_directions_and_flat_lengths(rng):
    W, X, y = make_problem(rng, 10, 3, 4, np.float64)
    b = np.zeros(4)
    with pytest.raises(ValueError, match="vb must have b's shape"):
        fs.hessian_product(W, X, y, W, b=b, vb=np.zeros(3))
    with pytest.raises(TypeError, match="vb must have a real"):
        fs.hessian_product(W, X, y, W, b=b, vb=np.zeros(4, dtype=complex))
    hessp = fs.loss_grad_hessp(W, X, y, b=b)[-1]
    with pytest.raises(ValueError, match="length 16"):
        hessp(np.zeros(12))
    with pytest.raises(ValueError, match="vb must be None"):
        hessp(np.zeros(16), np.zeros(4))
    # the direction takes the working dtype, it does not promote it
    W32, X32 = W.astype(np.float32), X.astype(np.float32)
    HV, Hvb = fs.loss_grad_hessp(W32, X32, y, b=b.astype(np.float32))[-1](W, np.ones(4))
    assert HV.dtype == Hvb.dtype == np.float32
    # integers are directions too
    HV = fs.hessian_product(W, X, y, np.ones((4, 3), dtype=np.int64))
    assert HV.dtype == np.float64


def test_nan_in_direction_propagates(rng):
    W, X, y = make_problem(rng, 10, 3, 4, np.float64)
    V = np.zeros((4, 3))
    V[1, 2] = np.nan
    for method in METHODS:
        assert np.isnan(fs.hessian_product(W, X, y, V, method=method)).any()


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_infinite_weight_gives_nan_products_in_every_method(sparse, rng):
    """+inf in W gives +inf logits in the rows where its feature is positive;
    those rows' probabilities and curvature are NaN, and every entry of HV
    sums over them (X has no zeros): all NaN in every method (found by a
    review: the dense fused product left the other classes' rows 0)."""
    import scipy.sparse

    X = rng.standard_normal((6, 4)) + 0.1
    W = rng.standard_normal((3, 4))
    y = np.array([1, 2, 1, 2, 1, 1])
    W[0, 0] = np.inf
    assert (X[:, 0] > 0).any() and np.all(X != 0)
    Xin = scipy.sparse.csr_matrix(X) if sparse else X
    for method in METHODS:
        hp = fs.loss_grad_hessp(W, Xin, y, method=method)[-1]
        assert np.isnan(hp(np.ones((3, 4)))).all(), method


# --- property-based -----------------------------------------------------------

@st.composite
def problems(draw):
    rng, W, X, y, kw, dtype = draw_dense_problem(draw)
    K, n = W.shape
    V, vb = direction(rng, K, n, dtype, "b" in kw)
    if vb is not None and draw(st.booleans()):
        vb = None  # a zero intercept direction
    return W, X, y, V, vb, kw, dtype


@given(problems())
# kernel_path only sets module constants, the same for every example
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_all_methods_match_oracle(kernel_path, problem):
    W, X, y, V, vb, kw, dtype = problem
    want, scales = hessian_oracle(W, X, y, V, vb, kw, dtype)
    for method in METHODS:
        for got in both_entry_points(W, X, y, V, vb, method, kw):
            assert_product_close(got, want, dtype, scales)


# --- the full Hessian -----------------------------------------------------------

def oracle_in_flat_layout(H, K, n, has_b):
    """The oracle's class-major [W | b] layout reordered to [W.ravel(), b]."""
    nt = n + int(has_b)
    order = [j * nt + l for j in range(K) for l in range(n)]
    if has_b:
        order += [j * nt + n for j in range(K)]
    return H[np.ix_(order, order)]


def hessian_case(rng, dtype, target, opt, m=31, n=4, K=3):
    """``(W, X, y, kw)`` for the full-Hessian tests: option set ``opt`` of
    :func:`options`, or "ignore" (ignore_index and an intercept; skipped
    for dense targets), or "no penalty, bias" (intercept and sample weights,
    l2 = 0)."""
    W, X, y = make_problem(rng, m, n, K, dtype, target)
    if opt == "ignore":
        if target != "labels":
            pytest.skip("ignore_index needs class-index targets")
        return W, X, ignore_labels(y, rng), {"ignore_index": -100,
                                             "b": rng.standard_normal(K).astype(dtype)}
    if opt == "no penalty, bias":
        return W, X, y, {"b": rng.standard_normal(K).astype(dtype),
                         "sample_weight": rng.random(m) + 0.1}
    return W, X, y, options(opt, rng, m, K, dtype, target)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("opt", OPTION_NAMES + ["ignore"])
def test_full_hessian(dtype, target, opt, rng, kernel_path):
    """fs.hessian against the oracle's Hessian (RTOL[dtype] with the oracle's
    entrywise scale) and against the Hessian assembled column by column from
    the NumPy method's hessp on unit vectors (the same bound); exactly
    symmetric, float64 whatever the working dtype."""
    W, X, y, kw = hessian_case(rng, dtype, target, opt)
    K, n = W.shape
    has_b = "b" in kw
    H = fs.hessian(W, X, y, **kw)
    assert H.dtype == np.float64 and H.shape == (K * n + K * has_b,) * 2
    np.testing.assert_array_equal(H, H.T)
    want, scale = naive_hessian(*f64(W, X), y, return_scale=True, **kw)
    want = oracle_in_flat_layout(want, K, n, has_b)
    scale = oracle_in_flat_layout(scale, K, n, has_b)
    assert_close(H, want, dtype, "H", scale)
    hessp = fs.loss_grad_hessp(W, X, y, method="numpy", **kw)[-1]
    columns = np.column_stack([hessp(e) for e in np.eye(H.shape[0], dtype=dtype)])
    assert_close(H, columns, dtype, "H vs hessp", scale)
    np.testing.assert_array_equal(hessp.matrix(), H)


@given(problems())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_diagonal_matches_oracle(kernel_path, problem):
    """hessp.diagonal() is the oracle Hessian's diagonal at the float64
    tolerance (it computes in float64 whatever the dtype; dense targets are
    rounded to the working dtype for the oracle too), for every method."""
    W, X, y, V, vb, kw, dtype = problem
    K, n = W.shape
    y_seen = y.astype(dtype) if y.ndim == 2 else y
    want, scale = naive_hessian(*f64(W, X), y_seen, return_scale=True, **kw)
    has_b = "b" in kw
    want = np.diag(oracle_in_flat_layout(want, K, n, has_b))
    scale = np.diag(oracle_in_flat_layout(scale, K, n, has_b))
    for method in METHODS:
        d = fs.loss_grad_hessp(W, X, y, method=method, **kw)[-1].diagonal()
        assert d.dtype == np.float64
        assert_close(d, want, np.float64, "diagonal", scale)


def test_full_hessian_parallel_matches_serial(rng, monkeypatch):
    """Bigger than the serial threshold: the parallel kernel against the
    NumPy hessp on unit vectors, float64, rtol 1e-10 of the largest entry."""
    m, n, K = 3000, 6, 5
    W, X, y = make_problem(rng, m, n, K, np.float64, "probs")
    kw = dict(b=rng.standard_normal(K), sample_weight=rng.random(m), l2=0.01)
    H = fs.hessian(W, X, y, **kw)
    hessp = fs.loss_grad_hessp(W, X, y, method="numpy", **kw)[-1]
    assert_close(H, np.column_stack([hessp(e) for e in np.eye(H.shape[0])]), np.float64)
    np.testing.assert_array_equal(H, fs.hessian(W, X, y, **kw))  # deterministic
    import fastsoftmax._dispatch as policy
    monkeypatch.setattr(policy, "SERIAL_WORK", 2**62)
    assert_close(fs.hessian(W, X, y, **kw), H, np.float64)


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("K", [2, 3, 7])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["C, intercept", "F, probs", "ignore_index, intercept"])
@pytest.mark.parametrize("tile", [3, 1024])
def test_full_hessian_both_sum_paths_match_oracle(direct, K, dtype, case, tile, rng,
                                                  monkeypatch):
    """The full-Hessian kernel's two ways of summing (directly, for few
    pairs of classes, or by a GEMM with the products of features), each
    forced for every K, against the float64 oracle (1e-10 with its entrywise
    scale): C- and F-ordered X, with and without intercept, dense targets,
    rows dropped by ignore_index with label smoothing, weights and a
    penalty, partial tiles."""
    import fastsoftmax._dispatch as policy

    monkeypatch.setattr(policy, "hessian_plan", lambda nt, K_, classes: (tile, 2, direct))
    m, n = 23, 5
    W, X, y = make_problem(rng, m, n, K, dtype, "probs" if "probs" in case else "labels")
    kw = dict(sample_weight=rng.random(m) + 0.1, l2=0.03)
    if "intercept" in case:
        kw["b"] = rng.standard_normal(K).astype(dtype)
    if case.startswith("F"):
        X = np.asfortranarray(X)
    if case.startswith("ignore"):
        y = ignore_labels(y, rng)
        kw.update(ignore_index=-100, label_smoothing=0.1)
    H = fs.hessian(W, X, y, **kw)
    y_seen = y.astype(dtype) if y.ndim == 2 else y  # dense targets take the working dtype
    want, scale = naive_hessian(*f64(W, X), y_seen, return_scale=True, **kw)
    has_b = "b" in kw
    assert_close(H, oracle_in_flat_layout(want, K, n, has_b), np.float64, "H",
                 oracle_in_flat_layout(scale, K, n, has_b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, has_b", [(2, False), (6, True), (9, False)])
@pytest.mark.parametrize("ignore", [False, True])
def test_full_hessian_direct_sums_on_default_tiles(dtype, n, has_b, ignore, rng, monkeypatch):
    """The direct sums on the default plan (tiles of
    ``HESSIAN_DIRECT_TILE`` rows, four entries per pass over the rows and
    the rest one by one), in one chunk whatever the thread count: 300 rows
    (two full tiles and a partial one; with ignore_index, tiles that keep
    fewer rows than they span), n~ of 2 (no block of four), 7 and 9 (blocks
    of four and remainders), four classes (10 pairs: direct), against the
    float64 oracle (1e-10 with its entrywise scale)."""
    import fastsoftmax._dispatch as policy

    monkeypatch.setattr(policy, "SERIAL_WORK", 2**62)
    K, m = 4, 300
    nt = n + has_b
    assert policy.hessian_plan(nt, K, K)[::2] == (policy.HESSIAN_DIRECT_TILE, True)
    W, X, y = make_problem(rng, m, n, K, dtype, "labels")
    kw = dict(sample_weight=rng.random(m) + 0.1, l2=0.03)
    if has_b:
        kw["b"] = rng.standard_normal(K).astype(dtype)
    if ignore:
        y = ignore_labels(y, rng)
        kw["ignore_index"] = -100
    H = fs.hessian(W, X, y, **kw)
    want, scale = naive_hessian(*f64(W, X), y, return_scale=True, **kw)
    assert_close(H, oracle_in_flat_layout(want, K, n, has_b), np.float64, "H",
                 oracle_in_flat_layout(scale, K, n, has_b))


def test_kernels_load_from_cache_in_new_process():
    calls = (
        "import numba\n"
        "X = np.random.default_rng(0).standard_normal((4000, 20)); y = np.arange(4000) % 5\n"
        "W = np.zeros((5, 20)); V = np.ones((5, 20))\n"
        "fs.hessian_product(W, X[:10], y[:10], V)\n"
        "fs.hessian_product(W, X, y, V)\n"
        "fs.hessian_product(W, X, y, V, method='indexloop')\n"
        "fs.hessian(W, X[:2], y[:2]); fs.hessian(W, X, y)\n"
        "fs.loss_grad_hessp(W, X[:2], y[:2])[-1].diagonal()\n"
        "fs.loss_grad_hessp(W, X, y)[-1].diagonal()\n"
    )
    if __import__("numba").get_num_threads() < 2:
        pytest.skip("the parallel kernel needs two threads")
    assert_cached_in_new_process(calls, {
        "hessian_chunk": "fastsoftmax._hessian_fused",
        "_product_chunks": "fastsoftmax._hessian_fused",
        "indexloop_sums": "fastsoftmax._indexloop",
        "full_chunk": "fastsoftmax._hessian_full",
        "_block_chunks": "fastsoftmax._hessian_full",
        "diag_chunk": "fastsoftmax._hessian_diag",
        "_diagonal_chunks": "fastsoftmax._hessian_diag",
    })


@given(problems())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_full_hessian_matches_oracle(kernel_path, problem):
    """fs.hessian computes in float64 from the inputs' values whatever their
    dtype, so it meets the float64 tolerance (1e-10 with the oracle's scale)
    even for float32 data (dense targets take the working dtype, so the
    oracle gets them rounded the same way)."""
    W, X, y, V, vb, kw, dtype = problem
    K, n = W.shape
    H = fs.hessian(W, X, y, **kw)
    y_seen = y.astype(dtype) if y.ndim == 2 else y
    want, scale = naive_hessian(*f64(W, X), y_seen, return_scale=True, **kw)
    has_b = "b" in kw
    assert_close(H, oracle_in_flat_layout(want, K, n, has_b), np.float64, "H",
                 oracle_in_flat_layout(scale, K, n, has_b))


# --- the per-class blocks ---------------------------------------------------------

@given(problems())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_class_blocks_match_oracle(problem):
    """hessp.class_blocks() are the oracle Hessian's diagonal blocks (class-major
    [W[k], b[k]]), at the working dtype's tolerance with the oracle's scale
    (the probabilities are computed in the working dtype), for every method;
    tiles of 3 rows give the same blocks as one tile."""
    W, X, y, V, vb, kw, dtype = problem
    K, n = W.shape
    nt = n + ("b" in kw)
    y_seen = y.astype(dtype) if y.ndim == 2 else y
    want, scale = naive_hessian(*f64(W, X), y_seen, return_scale=True, **kw)
    blocks = [slice(k * nt, (k + 1) * nt) for k in range(K)]
    want = np.stack([want[s, s] for s in blocks])
    scale = np.stack([scale[s, s] for s in blocks])
    import fastsoftmax._dispatch as policy
    for method in METHODS:
        B = fs.loss_grad_hessp(W, X, y, method=method, **kw)[-1].class_blocks()
        assert B.dtype == np.float64 and B.shape == (K, nt, nt)
        assert_close(B, want, dtype, "class blocks", scale)
    saved = policy.BLOCK_TILE_ROWS
    try:
        policy.BLOCK_TILE_ROWS = 3
        B3 = fs.loss_grad_hessp(W, X, y, **kw)[-1].class_blocks()
    finally:
        policy.BLOCK_TILE_ROWS = saved
    assert_close(B3, want, dtype, "class blocks, tiles of 3 rows", scale)


@pytest.mark.parametrize("has_b", [False, True])
def test_class_blocks_with_a_stride_use_every_strided_row(has_b, rng, monkeypatch):
    """class_blocks(stride) is stride times the blocks of the problem made of
    every stride-th row (reduction="sum", so no normaliser differs), built by
    the full-Hessian kernel (a different code path), across tile borders."""
    import fastsoftmax._dispatch as policy

    monkeypatch.setattr(policy, "BLOCK_TILE_ROWS", 4)
    m, n, K, stride = 53, 3, 4, 5
    W, X, y = make_problem(rng, m, n, K, np.float64, "labels")
    kw = dict(b=rng.standard_normal(K) if has_b else None, reduction="sum")
    sw = rng.random(m) + 0.1
    got = fs.loss_grad_hessp(W, X, y, sample_weight=sw, **kw)[-1].class_blocks(stride)
    H = fs.hessian(W, X[::stride], y[::stride], sample_weight=sw[::stride], **kw)
    for k in range(K):
        idx = [k * n + j for j in range(n)] + ([K * n + k] if has_b else [])
        np.testing.assert_allclose(got[k], stride * H[np.ix_(idx, idx)], rtol=1e-12,
                                   atol=1e-14 * np.abs(H).max())


def test_class_blocks_rejects_bad_strides_and_sparse_x(rng):
    import scipy.sparse as sp

    W, X, y = make_problem(rng, 20, 3, 2, np.float64, "labels")
    hessp = fs.loss_grad_hessp(W, X, y)[-1]
    for bad in (0, -1, 1.5, True, "2", None):
        with pytest.raises(ValueError, match="stride must be a positive integer"):
            hessp.class_blocks(bad)
    assert hessp.class_blocks(np.int64(2)).shape == (2, 3, 3)
    with pytest.raises(TypeError, match="dense X only"):
        fs.loss_grad_hessp(W, sp.csr_matrix(X), y)[-1].class_blocks()


# --- HessianProduct.newton_step: the Newton step from the reduced system ---------------


def pinv_step(H, g, null_dim=None, rcond=1e-10):
    """``-pinv(H) g`` from the oracle's Hessian (flat layout) by its
    eigendecomposition, and the condition number of H on its range
    (eigenvalues above ``rcond`` times the largest); the condition number is
    inf when H has more than ``null_dim`` vanishing eigenvalues (singular
    beyond the objective's flat directions: there the step is the shifted
    solve's, not pinv's)."""
    values, vectors = np.linalg.eigh(H)
    keep = values > rcond * max(values.max(), 0.0)
    if null_dim is not None and H.shape[0] - keep.sum() > null_dim:
        cond = np.inf
    else:
        cond = values[keep].max() / values[keep].min() if keep.any() else 1.0
    coef = vectors[:, keep].T @ g / values[keep]
    return -(vectors[:, keep] @ coef), cond


def check_newton_step(W, X, y, kw, rng, max_cond=1e6):
    """newton_step against ``-pinv(H) g`` of the oracle Hessian, to 1e-9
    cond(H) relative in norm (1e-6 cond(H) for float32 X, whose problems
    round sample weights and targets to float32 where the oracle keeps them
    in float64: about 1e-7 relative in H), when H is conditioned better than
    ``max_cond`` on its range; else (and always) that it is finite and a
    descent direction for g.

    g is a random vector of H's range, as a gradient is, plus a random
    component along H's null directions that the step must ignore: a class
    mean of b's entries, and of W's when l2 = 0 (the oracle's H vanishes
    exactly there, so ``-pinv(H) g`` drops it; on W's class means H is l2).
    """
    K, n = W.shape
    has_b = "b" in kw
    H = oracle_in_flat_layout(naive_hessian(*f64(W, X), y, **kw), K, n, has_b)
    null = np.zeros((K, n + has_b))
    null[:, n:] = rng.standard_normal(int(has_b))
    if not kw.get("l2"):
        null[:, :n] = rng.standard_normal(n)
    null_flat = np.concatenate([null[:, :n].ravel(), null[:, n]]) if has_b else null.ravel()
    g = H @ rng.standard_normal(H.shape[0]) + null_flat
    s = fs.loss_grad_hessp(W, X, y, **kw)[-1].newton_step(g)
    assert s is not None and s.dtype == np.float64 and s.shape == g.shape
    assert np.all(np.isfinite(s)) and g @ s <= 0.0
    if K == 1:  # no loss curvature at all: only the penalty's
        null_dim = n + has_b if not kw.get("l2") else int(has_b)
    else:  # the class means of b, and of W without penalty
        null_dim = int(has_b) + (n if not kw.get("l2") else 0)
    want, cond = pinv_step(H, g, null_dim)
    if cond <= max_cond:
        rtol = 1e-9 if np.asarray(X).dtype == np.float64 else 1e-6
        assert np.linalg.norm(s - want) <= rtol * cond * np.linalg.norm(want) + 1e-300
    return cond


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("opt", OPTION_NAMES + ["ignore", "no penalty, bias"])
def test_newton_step_is_the_pseudo_inverse_step(dtype, target, opt, rng, kernel_path):
    """Every target kind, dtype and option set, with and without intercept
    and penalty: the step equals the oracle's ``-pinv(H) g`` (the problems
    here are well conditioned, which is checked, so the comparison is tight)."""
    W, X, y, kw = hessian_case(rng, dtype, target, opt)
    assert check_newton_step(W, X, y, kw, rng) <= 1e6


@pytest.mark.parametrize("K", [1, 2, 7])
def test_newton_step_for_one_two_and_many_classes(K, rng):
    """One class (no loss curvature: only the penalty's step), two, and
    seven classes, with intercept and penalty."""
    m, n = 40, 3
    W, X, y = make_problem(rng, m, n, K, np.float64, "labels")
    kw = {"b": rng.standard_normal(K), "l2": 0.05}
    assert check_newton_step(W, X, y, kw, rng) <= 1e6


@given(problems())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_newton_step_matches_the_oracle(kernel_path, problem):
    """Hypothesis over shapes (m from 1), logit scales up to 30 and every
    option: ``-pinv(H) g`` wherever H is singular only along the flat
    directions and conditioned better than 1e6 on its range; elsewhere
    (fewer rows than features, saturated probabilities) a finite descent
    direction."""
    W, X, y, _, _, kw, dtype = problem
    check_newton_step(W, X, y, kw, np.random.default_rng(7))


@pytest.mark.parametrize("seed", range(30))
def test_newton_step_shifts_a_singular_system(seed):
    """A feature that is a combination of two others and no penalty: the
    reduced system is singular along that combination, and LAPACK may
    factor it unshifted with a pivot of rounding size (which would put an
    arbitrary component along the flat direction); the collinearity test
    shifts it by 1e-10 of its largest diagonal entry, and the step is the
    pseudo-inverse's (H s = -g for g in H's range) to 1e-5 relative, where
    an unshifted factor of rounding-size pivots errs by up to O(1).  (The
    shifted solve divides g's rounding-size component along the flat
    direction, about 1e-16 |g|, by the shift: about 1e-6 relative.)  Thirty
    random problems: the unshifted factorisation succeeds on some and fails
    on others."""
    rng = np.random.default_rng(seed)
    m, n, K = 50, 4, 3
    W, X, y = make_problem(rng, m, n, K, np.float64, "labels")
    X[:, 3] = 2.0 * X[:, 1] - 0.5 * X[:, 0]
    b = rng.standard_normal(K)
    H = oracle_in_flat_layout(naive_hessian(W, X, y, b=b), K, n, True)
    g = H @ rng.standard_normal(H.shape[0])  # in H's range, as a gradient is
    s = fs.loss_grad_hessp(W, X, y, b=b)[-1].newton_step(g)
    want, cond = pinv_step(H, g, null_dim=1)
    assert cond == np.inf  # singular beyond b's class mean
    assert np.linalg.norm(s - want) <= 1e-5 * np.linalg.norm(want)
    assert np.linalg.norm(H @ s + g) <= 1e-5 * np.linalg.norm(g)


def test_newton_step_of_a_nan_point_is_none_and_bad_input_raises(rng):
    """A NaN in W makes every shifted factorisation fail: None, as the
    Newton-Cholesky solver expects.  A gradient of the wrong length, and
    sparse X, raise."""
    import scipy.sparse

    m, n, K = 20, 3, 3
    W, X, y = make_problem(rng, m, n, K, np.float64, "labels")
    g = rng.standard_normal(K * n)
    W_nan = W.copy()
    W_nan[1, 2] = np.nan
    assert fs.loss_grad_hessp(W_nan, X, y)[-1].newton_step(g) is None
    hessp = fs.loss_grad_hessp(W, X, y)[-1]
    with pytest.raises(ValueError, match="length 9"):
        hessp.newton_step(np.ones(K * n + 1))
    for shift in (-1e-10, np.nan, np.inf, True, "1e-10"):
        with pytest.raises(ValueError, match="shift must be"):
            hessp.newton_step(g, shift=shift)
    with pytest.raises(TypeError, match="newton_step"):
        fs.loss_grad_hessp(W, scipy.sparse.csr_matrix(X), y)[-1].newton_step(g)
