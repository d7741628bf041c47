"""The second-order solvers of fastsoftmax._newton reach L-BFGS's optimum."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

import fastsoftmax as fs
from fastsoftmax._newton import (minimize_newton_cholesky, minimize_newton_pcg,
                                 minimize_trust_newton)


def lbfgs_reference(X, y, K, fit_intercept, **kw):
    """SciPy's L-BFGS-B on fs.loss_and_grad in float64, run to a gradient of 1e-10."""
    n = X.shape[1]
    X = X.astype(np.float64)

    def fun(x):
        W = x[: K * n].reshape(K, n)
        out = fs.loss_and_grad(W, X, y, b=x[K * n:] if fit_intercept else None, **kw)
        return out[0], np.concatenate([np.ravel(g) for g in out[1:]])

    x0 = np.zeros(K * n + K * fit_intercept)
    res = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B",
                                  options={"gtol": 1e-10, "ftol": 0, "maxiter": 20000})
    return res.fun


SOLVERS = {
    "trust-ncg": lambda *a, **k: minimize_trust_newton(*a, solver="trust-ncg", **k),
    "trust-krylov": lambda *a, **k: minimize_trust_newton(*a, solver="trust-krylov", **k),
    "newton-cholesky": minimize_newton_cholesky,
    "newton-pcg": minimize_newton_pcg,
}


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reaches_the_lbfgs_optimum(solver, fit_intercept, dtype, rng):
    """On a badly scaled problem with weights, smoothing and an L2 penalty:
    max |gradient| <= tol (1e-8 in float64, 1e-5 in float32) and the
    objective within 1e-12 (float64) / 1e-6 (float32) of L-BFGS's, relative."""
    m, n, K = 300, 5, 4
    X = (rng.standard_normal((m, n)) * np.logspace(-1, 1, n)).astype(dtype)
    y = rng.integers(0, K, m)
    kw = dict(sample_weight=rng.random(m) + 0.5, l2=1e-3, label_smoothing=0.05)
    tol, rtol = (1e-8, 1e-12) if dtype == np.float64 else (1e-5, 1e-6)
    best = lbfgs_reference(X, y, K, fit_intercept, **kw)
    res = SOLVERS[solver](X, y, fit_intercept=fit_intercept, tol=tol, **kw)
    assert res.converged, res.message
    assert res.grad_max <= tol
    assert res.W.dtype == dtype and res.W.shape == (K, n)
    assert (res.b is not None) == fit_intercept
    assert abs(res.loss - best) <= rtol * abs(best)
    # the reported loss is the objective at the returned point
    again = fs.loss_and_grad(res.W, X, y, b=res.b, **kw)[0]
    assert again == res.loss


def test_unpenalised_intercept_direction_is_harmless(rng):
    """With l2 = 0 every class shift is a null direction of the Hessian: the
    Cholesky solver still converges and keeps the solution bounded."""
    m, n, K = 200, 3, 3
    X = rng.standard_normal((m, n))
    y = rng.integers(0, K, m)
    res = minimize_newton_cholesky(X, y, l2=0.0, tol=1e-9)
    assert res.converged, res.message
    assert np.all(np.abs(res.W) < 10) and np.all(np.abs(res.b) < 10)


def test_bad_solver_name():
    with pytest.raises(ValueError, match="solver must be"):
        minimize_trust_newton(np.zeros((3, 2)), np.array([0, 1, 0]), solver="lbfgs")


@pytest.mark.parametrize("solver", ["newton-cholesky", "newton-pcg"])
def test_steps_stay_off_the_null_directions(solver, rng):
    """From zero, the intercepts' sum stays 0 (and with l2 = 0 each column of
    W sums to 0): the objective is flat along a common shift, the exact
    Newton step has no component there, and the drivers remove the one
    rounding puts in (amplified ~1e10 by the Cholesky solver's diagonal shift)."""
    m, n, K = 40, 30, 3  # more features than samples: many tiny eigenvalues
    X = rng.random((m, n))
    y = rng.integers(0, K, m)
    w = rng.integers(0, 5, m).astype(float)
    for l2 in (1.0 / w.sum(), 0.0):
        res = SOLVERS[solver](X, y, n_classes=K, sample_weight=w, l2=l2, tol=1e-6, max_iter=50)
        assert abs(res.b.sum()) <= 1e-12 * max(1.0, np.abs(res.b).max())
        if l2 == 0.0:
            assert np.all(np.abs(res.W.sum(axis=0)) <= 1e-12 * max(1.0, np.abs(res.W).max()))


@pytest.fixture(params=["blocks", "jacobi", "jacobi-compiled"])
def preconditioner_kind(request, monkeypatch):
    """Newton-CG's preconditioner: the per-class blocks, or (every width above
    PCG_BLOCK_MAX_WIDTH = 0) the Hessian's diagonal, in NumPy or (every size
    from COMPILED_VECTOR_MIN_ENTRIES = 0 on, with the CG vector updates) in the
    compiled passes of fastsoftmax._vectors."""
    import fastsoftmax._dispatch as policy

    if request.param != "blocks":
        monkeypatch.setattr(policy, "PCG_BLOCK_MAX_WIDTH", 0)
    monkeypatch.setattr(policy, "COMPILED_VECTOR_MIN_ENTRIES",
                        0 if request.param == "jacobi-compiled" else 2**62)
    return request.param


def test_block_inverses_batched_as_one_by_one(rng):
    """The K block inverses computed in one batched call equal those of the
    block-by-block path (_cholesky's shift, cho_solve) to 8 cond(block) ulps
    of their size and are exactly symmetric; a block that is not positive definite
    sends them down that path (larger shifts), and one that never factors
    gives None."""
    from fastsoftmax._newton import _block_inverses, _cholesky, _inverses

    A = rng.standard_normal((4, 7, 7)) * np.logspace(-2, 2, 7)
    blocks = A @ A.transpose(0, 2, 1) + 1e-3 * np.eye(7)
    got = _block_inverses(blocks.copy())
    want = _inverses([_cholesky(block.copy()) for block in blocks])
    for g, w, block in zip(got, want, blocks):  # two algorithms: cond(block) ulps apart
        bound = 8 * np.linalg.cond(block) * np.finfo(float).eps * np.abs(w).max()
        np.testing.assert_allclose(g, w, rtol=0, atol=bound)
    np.testing.assert_array_equal(got, got.transpose(0, 2, 1))
    v = rng.standard_normal(7)
    rounding = blocks.copy()
    rounding[1] = np.outer(v, v) - 1e-9 * np.outer(v, v).max() * np.eye(7)  # indefinite, barely
    got = _block_inverses(rounding.copy())
    want = _inverses([_cholesky(block.copy()) for block in rounding])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    hopeless = blocks.copy()
    hopeless[3] = -np.eye(7)
    assert _block_inverses(hopeless) is None


def test_block_factors_are_the_shifted_blocks_cholesky_factors(rng):
    """_block_factors: lower triangular L with L L^T equal to the blocks
    shifted by JITTER times their largest diagonal entry (to rounding); a
    block indefinite by rounding is factored with _cholesky's larger shifts
    (L L^T within a 1e-6 relative shift of it), one that never factors
    gives None."""
    from fastsoftmax._newton import JITTER, _block_factors

    A = rng.standard_normal((4, 7, 7)) * np.logspace(-2, 2, 7)
    blocks = A @ A.transpose(0, 2, 1) + 1e-3 * np.eye(7)
    L = _block_factors(blocks)
    np.testing.assert_array_equal(L, np.tril(L))
    top = blocks[:, np.arange(7), np.arange(7)].max(axis=1)
    want = blocks + (JITTER * top)[:, None, None] * np.eye(7)
    np.testing.assert_allclose(L @ L.transpose(0, 2, 1), want, rtol=0,
                               atol=1e-13 * np.abs(want).max())
    v = rng.standard_normal(7)
    rounding = blocks.copy()
    rounding[1] = np.outer(v, v) - 1e-9 * np.outer(v, v).max() * np.eye(7)  # indefinite, barely
    L = _block_factors(rounding)
    np.testing.assert_array_equal(L, np.tril(L))
    np.testing.assert_allclose(L @ L.transpose(0, 2, 1), rounding, rtol=0,
                               atol=1e-6 * np.abs(rounding).max())
    hopeless = blocks.copy()
    hopeless[3] = -np.eye(7)
    assert _block_factors(hopeless) is None


def weighted_point(rng, m, n, K, l2, fit_intercept, X=None):
    """``(obj, x, hessp)``: the solvers' objective on (m, n) features scaled
    10^-1..10^1 (or on the given (m, n) ``X``) with random labels and sample
    weights, penalty l2, a random point x near zero and its HessianProduct."""
    from fastsoftmax._newton import _setup

    if X is None:
        X = rng.standard_normal((m, n)) * np.logspace(-1, 1, n)
    y = rng.integers(0, K, m)
    options = dict(sample_weight=rng.random(m), l2=l2, label_smoothing=0.0, ignore_index=None,
                   reduction="mean", method="fused")
    obj, _ = _setup(X, y, None, None, K, fit_intercept, options)
    x = rng.standard_normal(K * n + K * fit_intercept) * 0.3
    return obj, x, obj.at(x)[2]


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("l2", [0.0, 1e-2])
def test_compiled_preconditioner_matches_the_python_one(preconditioner_kind, fit_intercept, l2,
                                                         rng):
    """The compiled steps' preconditioner (_newton_fused._precondition, the
    blocks solved by their Cholesky factors, or the inverted diagonal) gives
    the Python driver's M^{-1} r (the blocks' inverses, or Jacobi, on the
    flat layout) and r . M^{-1} r, to 1e-10 relative."""
    from fastsoftmax._hessian import rows_from_flat
    from fastsoftmax._newton import BlockInverses, _preconditioner
    from fastsoftmax._newton_fused import _precondition

    n, K = 5, 4
    nt = n + fit_intercept
    obj, x, hessp = weighted_point(rng, 400, n, K, l2, fit_intercept)
    path = BlockInverses()
    inverses, factors = path.get(obj, hessp), path.lower_factors(obj, hessp)
    assert (factors is not None) == (inverses is not None) == (preconditioner_kind == "blocks")
    if factors is None:
        diag = hessp.diagonal()
        inv_diag, factors = rows_from_flat(1.0 / diag, K, n, nt), np.empty((0, 0, 0))
    else:
        inv_diag = np.empty((0, 0))
    r = rng.standard_normal(x.size)
    want = np.empty_like(r)
    want_rz = _preconditioner(obj, hessp, inverses)(r, want)
    z = np.empty((K, nt))
    rz = _precondition(rows_from_flat(r, K, n, nt), factors, inv_diag, n, l2, z)
    np.testing.assert_allclose(z, rows_from_flat(want, K, n, nt), rtol=1e-10,
                               atol=1e-10 * np.abs(want).max())
    assert rz == pytest.approx(want_rz, rel=1e-10)


@pytest.mark.parametrize("fit_intercept", [False, True])
def test_sparse_diagonal_preconditioner_mixes_in_the_penalty(fit_intercept, rng):
    """On CSR X the diagonal preconditioner is ``mix d + (1 - mix) l2``
    (``PCG_SPARSE_DIAGONAL_MIX``), written out here from the Hessian's
    diagonal, off the class means (which get ``1 / l2``); the same X dense
    keeps the plain diagonal (the test above)."""
    import scipy.sparse

    import fastsoftmax._dispatch as policy
    from fastsoftmax._newton import _feature_major_preconditioner, _preconditioner

    m, n, K, l2 = 400, 30, 4, 0.02
    X = scipy.sparse.random(m, n, density=0.1, format="csr", random_state=3) * 5.0
    obj, x, hessp = weighted_point(rng, m, n, K, l2, fit_intercept, X)
    mix = policy.PCG_SPARSE_DIAGONAL_MIX
    assert 0.0 < mix < 1.0
    d = hessp.diagonal()
    inv = 1.0 / (mix * d + (1.0 - mix) * l2)
    assert np.abs(inv * d - 1.0).max() > 0.1  # differs from the plain diagonal here
    r = rng.standard_normal(x.size)
    Rw, Iw = r[: K * n].reshape(K, n), inv[: K * n].reshape(K, n)
    mean = Rw.mean(axis=0)
    Zw = (Rw - mean) * Iw
    want = [(Zw - Zw.mean(axis=0) + mean / l2).ravel()]
    if fit_intercept:
        zb = (r[K * n:] - r[K * n:].mean()) * inv[K * n:]
        want.append(zb - zb.mean())
    z = np.empty_like(r)
    rz = _preconditioner(obj, hessp)(r, z)
    np.testing.assert_allclose(z, np.concatenate(want), rtol=1e-12, atol=1e-14)
    assert rz == pytest.approx(float(r @ z), rel=1e-12)
    # what the fits use: the same on vectors laid out [W^T.ravel(), b]
    rows = np.concatenate([Rw.T.ravel(), r[K * n:]])
    z = np.full_like(r, np.nan)
    rz = _feature_major_preconditioner(obj, hessp)(rows, z)
    want[0] = want[0].reshape(K, n).T.ravel()
    np.testing.assert_allclose(z, np.concatenate(want), rtol=1e-12, atol=1e-14)
    assert rz == pytest.approx(float(rows @ z), rel=1e-12)


def test_block_inverses_follow_the_penalty_without_rebuilding(rng):
    """Passed on to a fit with another l2 (the next C of a path), the block
    preconditioner shifts its blocks' W diagonal by the difference and
    inverts them again without building them (no class_blocks call): the
    same inverses, to rounding, as blocks built at the new l2; after an
    expensive step (stale) it builds them again."""
    import fastsoftmax._dispatch as policy
    from fastsoftmax._newton import BlockInverses, _setup

    m, n, K = 300, 5, 4
    X = rng.standard_normal((m, n)) * np.logspace(-1, 1, n)
    y = rng.integers(0, K, m)
    x = rng.standard_normal(K * (n + 1)) * 0.3

    def at(l2):
        options = dict(sample_weight=None, l2=l2, label_smoothing=0.0, ignore_index=None,
                       reduction="mean", method="fused")
        obj, _ = _setup(X, y, None, None, K, True, options)
        return obj, obj.at(x)[2]

    calls = []

    class Spy:  # a HessianProduct that counts the block builds
        def __init__(self, hessp):
            self.hessp = hessp

        def class_blocks(self, stride):
            calls.append(stride)
            return self.hessp.class_blocks(stride)

    blocks = BlockInverses()
    obj_a, hessp_a = at(0.5)
    first = blocks.get(obj_a, Spy(hessp_a)).copy()
    blocks.update(0)  # a cheap step: the blocks stay
    obj_b, hessp_b = at(0.01)
    carried = blocks.get(obj_b, Spy(hessp_b))
    assert calls == [1]
    fresh = BlockInverses().get(obj_b, hessp_b)
    np.testing.assert_allclose(carried, fresh, rtol=0, atol=1e-10 * np.abs(fresh).max())
    assert np.abs(carried - first).max() > 1e-3 * np.abs(fresh).max()
    blocks.update(policy.PCG_BLOCK_AFTER_CG_STEPS + 1)  # an expensive step: built again
    blocks.get(obj_b, Spy(hessp_b))
    assert calls == [1, 1]


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_preconditioner_is_symmetric_positive_and_exact_on_class_means(
        preconditioner_kind, fit_intercept, l2, rng):
    """M^{-1} of _preconditioner: r1 . M^{-1} r2 = r2 . M^{-1} r1, r . M^{-1} r > 0
    for r with no class mean, M^{-1} (one vector added to every row of W) =
    that / l2 (the Hessian there, exactly: checked with hessp), and 0 for a
    common shift of b and, when l2 = 0, of W (flat directions)."""
    from fastsoftmax._newton import BlockInverses, _preconditioner

    n, K = 6, 4
    obj, x, hessp = weighted_point(rng, 500, n, K, l2, fit_intercept)
    inverses = BlockInverses().get(obj, hessp)
    assert (inverses is not None) == (preconditioner_kind == "blocks")
    precondition = _preconditioner(obj, hessp, inverses)

    def apply(r):  # M^{-1} r, and r . M^{-1} r checked on the way
        z = np.full_like(r, np.nan)
        rz = precondition(r, z)
        scale = float(np.linalg.norm(r) * np.linalg.norm(z))
        assert abs(rz - float(np.dot(r, z))) <= 1e-13 * scale
        return z

    N = x.size
    r1, r2 = rng.standard_normal(N), rng.standard_normal(N)
    assert r1 @ apply(r2) == pytest.approx(r2 @ apply(r1), rel=1e-10)
    centred = r1.copy()
    centred[: K * n] -= np.tile(r1[: K * n].reshape(K, n).mean(axis=0), K)
    if fit_intercept:
        centred[K * n:] -= centred[K * n:].mean()
    assert centred @ apply(centred) > 0
    u = rng.standard_normal(n)
    shift_W = np.concatenate([np.tile(u, K), np.zeros(K * fit_intercept)])
    if l2 > 0:
        np.testing.assert_allclose(hessp(shift_W), l2 * shift_W, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(apply(shift_W), shift_W / l2, rtol=1e-12)
    else:
        np.testing.assert_array_equal(apply(shift_W), 0.0 * shift_W)
    if fit_intercept:
        shift_b = np.concatenate([np.zeros(K * n), np.ones(K)])
        np.testing.assert_allclose(apply(shift_b), 0.0, atol=1e-14)
    if preconditioner_kind != "blocks":  # the formula, written out from the diagonal
        inv = 1.0 / hessp.diagonal()
        Rw, Iw = r1[: K * n].reshape(K, n), inv[: K * n].reshape(K, n)
        mean = Rw.mean(axis=0)
        Zw = (Rw - mean) * Iw
        Zw = Zw - Zw.mean(axis=0) + (mean / l2 if l2 > 0 else 0.0)
        want = [Zw.ravel()]
        if fit_intercept:
            rb = r1[K * n:]
            zb = (rb - rb.mean()) * inv[K * n:]
            want.append(zb - zb.mean())
        np.testing.assert_allclose(apply(r1), np.concatenate(want), rtol=1e-12, atol=1e-14)


def test_block_preconditioner_needs_few_products_on_badly_scaled_features(
        preconditioner_kind, rng):
    """Features scaled 10^-2..10^2: Newton-CG converges (tol 1e-8) with the
    blocks in at most 4 Hessian products per Newton iteration (measured: 7 in 4),
    and the Jacobi fallback still converges within its max_iter.  A count,
    not a time."""
    m, n, K = 3000, 12, 5
    X = rng.standard_normal((m, n)) * np.logspace(-2, 2, n)
    y = rng.integers(0, K, m)
    res = minimize_newton_pcg(X, y, n_classes=K, l2=1.0 / m, tol=1e-8, max_iter=100)
    assert res.converged, res.message
    if preconditioner_kind == "blocks":
        assert res.n_hessp <= 4 * res.n_iter, (res.n_hessp, res.n_iter)


def test_block_factors_are_rebuilt_only_after_expensive_steps(rng, monkeypatch):
    """The blocks are built at the first Newton step and rebuilt only after a
    step whose CG took more than PCG_BLOCK_AFTER_CG_STEPS products (counted
    through a spy on class_blocks); the fit converges either way."""
    import fastsoftmax._dispatch as policy
    from fastsoftmax._hessian import HessianProduct

    builds = []
    real = HessianProduct.class_blocks

    def spy(self, stride=1):
        builds.append(stride)
        return real(self, stride)

    monkeypatch.setattr(HessianProduct, "class_blocks", spy)
    m, n, K = 2000, 8, 4
    X = rng.standard_normal((m, n))
    y = rng.integers(0, K, m)
    kw = dict(n_classes=K, l2=1.0 / m, tol=1e-9, max_iter=50)
    for after, want in ((10**6, lambda it: 1), (-1, lambda it: it)):
        monkeypatch.setattr(policy, "PCG_BLOCK_AFTER_CG_STEPS", after)
        builds.clear()
        res = minimize_newton_pcg(X, y, **kw)
        assert res.converged, res.message
        assert len(builds) == want(res.n_iter), (after, len(builds), res.n_iter)


def test_newton_cholesky_refuses_sparse_x_up_front(rng):
    import scipy.sparse as sp

    X = sp.random(30, 4, density=0.5, format="csr", random_state=0)
    with pytest.raises(TypeError, match="full Hessian from dense X only"):
        minimize_newton_cholesky(X, np.arange(30) % 3)
    res = minimize_newton_pcg(X, np.arange(30) % 3, l2=0.1, tol=1e-8)  # takes CSR X
    assert res.converged, res.message


@pytest.mark.parametrize("N, block", [(1, 1), (1000, 7), (1000, 1024), (5000, 64)])
def test_cg_vector_passes_match_numpy(N, block, rng):
    """The compiled CG updates of fastsoftmax._vectors against the NumPy
    expressions they replace (block sizes that do and do not divide N)."""
    from fastsoftmax import _vectors

    step, r, d, Hd, z = (rng.standard_normal(N) for _ in range(5))
    alpha, beta = 0.37, 1.9
    step_ref, r_ref = step + alpha * d, r - alpha * Hd
    rr = _vectors.advance_pass(step, r, d, Hd, alpha, block)
    np.testing.assert_allclose(step, step_ref, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(r, r_ref, rtol=1e-15, atol=1e-15)
    assert rr == pytest.approx(float(r_ref @ r_ref), rel=1e-13)
    d_ref = z + beta * d
    _vectors.direction_pass(d, z, beta, block)
    np.testing.assert_allclose(d, d_ref, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("n, K, block", [(1, 1, 1), (300, 7, 16), (1000, 3, 1024),
                                         (250, 20, 64)])
def test_feature_major_jacobi_pass_matches_numpy(n, K, block, rng):
    """The Jacobi pass of the feature-major conjugate gradients on CSR X
    (fastsoftmax._vectors.jacobi_rows_pass) against NumPy written out here:
    the class means (row means of (n, K)) split off, with and without l2."""
    from fastsoftmax import _vectors

    r = rng.standard_normal((n, K))
    inv = rng.random((n, K)) + 0.5
    for l2 in (0.0, 0.2):
        mean = r.mean(axis=1, keepdims=True)
        zw = (r - mean) * inv
        want = zw - zw.mean(axis=1, keepdims=True) + (mean / l2 if l2 > 0.0 else 0.0)
        z = np.full((n, K), np.nan)
        rz = _vectors.jacobi_rows_pass(r, inv, l2, z, block)
        np.testing.assert_allclose(z, want, rtol=1e-13, atol=1e-13)
        assert rz == pytest.approx(float((r * want).sum()), rel=1e-12)


@pytest.mark.parametrize("shape, tile", [((1, 1), 32), ((3, 70), 32), ((70, 3), 32),
                                         ((33, 65), 7), ((64, 64), 32)])
def test_transpose_pass_matches_numpy(shape, tile, rng):
    """fastsoftmax._vectors.transpose_pass (tiles that do and do not divide the
    sides) against NumPy's transposed copy, float64 and float32."""
    from fastsoftmax import _vectors

    for dtype in (np.float64, np.float32):
        src = rng.standard_normal(shape).astype(dtype)
        dst = np.full(shape[::-1], np.nan, dtype)
        _vectors.transpose_pass(src, dst, tile)
        np.testing.assert_array_equal(dst, np.ascontiguousarray(src.T))


@pytest.mark.parametrize("by_columns", [False, True])
@pytest.mark.parametrize("intercept", [False, True])
def test_sparse_conjugate_gradients_in_either_layout_agree(intercept, by_columns, rng,
                                                          monkeypatch):
    """Newton-CG on CSR X runs its conjugate gradients in the feature-major
    layout (_feature_major_cg: its own products, diagonal and Jacobi passes,
    the products by rows or by columns from X's transpose); switched back to
    the class-major layout of dense X (the public HessianProduct calls, by
    rows), the fit takes the same Newton steps and Hessian products and ends
    at the same point, to rounding: float64 data, with the compiled passes
    and without."""
    import scipy.sparse

    import fastsoftmax._dispatch as policy
    import fastsoftmax._newton as newton
    from helpers import newton_by_columns

    X = scipy.sparse.random(300, 40, density=0.15, format="csr", random_state=4,
                            data_rvs=lambda k: rng.random(k) * 3.0)
    y = rng.integers(0, 4, 300)
    kw = dict(l2=1e-2, tol=1e-9, fit_intercept=intercept)
    for compiled in (0, 2**62):
        monkeypatch.setattr(policy, "COMPILED_VECTOR_MIN_ENTRIES", compiled)
        newton_by_columns(monkeypatch, by_columns)
        calls = []
        real = newton._feature_major_cg
        monkeypatch.setattr(newton, "_feature_major_cg", lambda *a: calls.append(1) or real(*a))
        rows = minimize_newton_pcg(X, y, **kw)
        assert rows.converged and calls and len(calls) == rows.n_iter
        monkeypatch.setattr(newton, "_feature_major", lambda obj: False)
        classes = minimize_newton_pcg(X, y, **kw)
        monkeypatch.undo()
        assert classes.converged
        # a CG stop test within rounding of its threshold may take one product more
        assert rows.n_iter == classes.n_iter
        assert abs(rows.n_hessp - classes.n_hessp) <= rows.n_iter
        np.testing.assert_allclose(rows.theta, classes.theta, rtol=0,
                                   atol=1e-11 * np.abs(classes.theta).max())
        assert rows.loss == pytest.approx(classes.loss, rel=1e-14)


@pytest.mark.parametrize("N", [1, 7, 5000])
def test_same_entries_is_array_equal_with_nans(N, rng, monkeypatch):
    """The compiled cache check of Newton-CG's objective (_vectors.same_pass,
    early exit) and its NumPy branch, against np.array_equal(equal_nan=True)
    written out entry by entry: equal arrays, one entry changed at the start,
    middle or end, NaN against NaN and against a number, 0.0 against -0.0,
    infinities, other shapes."""
    import fastsoftmax._dispatch as policy
    from fastsoftmax import _vectors

    def oracle(a, b):
        return a.shape == b.shape and all(
            x == y or (np.isnan(x) and np.isnan(y)) for x, y in zip(a.tolist(), b.tolist()))

    a = rng.standard_normal(N)
    cases = [(a, a.copy())]
    for where in sorted({0, N // 2, N - 1}):
        for value in (np.nan, np.inf, -np.inf, np.nextafter(a[where], np.inf), 1.0):
            b = a.copy()
            b[where] = value
            cases.append((a, b))
            c = b.copy()  # both NaN (or both the same) at that entry
            cases.append((c, b.copy()))
    z = np.zeros(N)
    cases += [(z, -z), (a, a[: N - 1]), (a, np.concatenate([a, a]))]
    for threshold in (1, 10**9):  # compiled, then NumPy
        monkeypatch.setattr(policy, "COMPILED_VECTOR_MIN_ENTRIES", threshold)
        for x, y in cases:
            assert _vectors.same_entries(x, y) == oracle(x, y)
            assert _vectors.same_entries(y, x) == oracle(y, x)


def test_forcing_term_follows_eisenstat_walker():
    """CG's relative residual target per Newton step: 0.5 at the first step and
    whenever the gradient grew, (ratio of gradient norms)^phi otherwise, but
    not below eta_prev^phi while that exceeds 0.1 (numbers worked by hand)."""
    from fastsoftmax._newton import _ForcingTerm

    phi = (1 + 5 ** 0.5) / 2
    f = _ForcingTerm()
    assert f.next(3.0) == 0.5
    # ratio 0.1: 0.1^phi = 0.024, but 0.5^phi = 0.3257 > 0.1 is kept
    assert f.next(0.3) == pytest.approx(0.5 ** phi, rel=1e-12)
    # ratio 0.5: 0.5^phi = 0.3257 against 0.3257^phi = 0.1629 kept: the larger
    assert f.next(0.15) == pytest.approx(0.5 ** phi, rel=1e-12)
    # ratio 1e-2: 1e-2^phi = 5.8e-4; 0.3257^phi = 0.1629 > 0.1 still kept
    assert f.next(0.0015) == pytest.approx(0.5 ** (phi * phi), rel=1e-12)
    # ratio 1e-2 again: carried 0.1629^phi = 0.0534 < 0.1, so the ratio's 5.8e-4
    assert f.next(1.5e-5) == pytest.approx(1e-2 ** phi, rel=1e-12)
    # the gradient grew: capped at 0.5
    assert f.next(1.0) == 0.5


def test_compiled_vector_passes_load_from_the_cache_in_a_new_process():
    from helpers import assert_cached_in_new_process

    calls = ("from fastsoftmax import _vectors\n"
             "a = np.ones(5000); r = np.ones((4, 3000))\n"
             "_vectors.advance_pass(a.copy(), a.copy(), a, a, 0.5, 1024)\n"
             "_vectors.direction_pass(a.copy(), a, 0.5, 1024)\n"
             "_vectors.jacobi_pass(r, r, 0.1, np.empty_like(r), 1024)\n"
             "_vectors.jacobi_rows_pass(r, r, 0.1, np.empty_like(r), 1024)\n"
             "_vectors.transpose_pass(r, np.empty((3000, 4)), 32)\n"
             "_vectors.same_pass(a, a)\n"
             "W = np.ones((3, 25000)); X = np.ones((10, 25000))\n"
             "fs.loss_and_grad(W, X, np.arange(10) % 3, l2=0.1)\n")
    assert_cached_in_new_process(calls, {name: "fastsoftmax._vectors" for name in
                                         ("advance_pass", "direction_pass", "jacobi_pass",
                                          "jacobi_rows_pass", "finish_pass",
                                          "transpose_pass", "same_pass")})


# --- the compiled Newton-Cholesky loop (fastsoftmax._newton_fused) ---------------------


def python_loop(monkeypatch, *args, **kw):
    """minimize_newton_cholesky through the Python driver (the compiled loop
    switched off), with the same fused kernels."""
    import fastsoftmax._newton as newton

    with monkeypatch.context() as patch:
        patch.setattr(newton, "_fused_cholesky", lambda *a: None)
        return minimize_newton_cholesky(*args, **kw)


CASES = {
    "weights, l2, smoothing": dict(sample_weight="w", l2=1e-3, label_smoothing=0.05),
    "no penalty": dict(),
    "sum, l2": dict(reduction="sum", l2=0.5),
    "ignore_index": dict(ignore_index=2, l2=1e-2),
    "soft targets": dict(l2=1e-2, targets="soft"),
}


def case_problem(case, dtype, rng, m, n, K):
    """``(X, y, options, tol)`` of one of CASES: X (m, n) of ``dtype`` with
    feature scales 10^-1..10^1, K classes (labels, or soft targets), and a
    tol the dtype can reach (m times larger for reduction="sum")."""
    X = (rng.standard_normal((m, n)) * np.logspace(-1, 1, n)).astype(dtype)
    y = rng.integers(0, K, m)
    kw = dict(CASES[case])
    if kw.pop("targets", None) == "soft":
        y = rng.dirichlet(np.ones(K), m)
    if kw.get("sample_weight") == "w":
        kw["sample_weight"] = rng.random(m) + 0.5
    tol = 1e-8 if dtype == np.float64 else 1e-4
    if kw.get("reduction") == "sum":  # the gradient is m times larger
        tol *= m
    return X, y, kw, tol


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_cholesky_loop_takes_the_python_loops_steps(case, fit_intercept, dtype, rng,
                                                              monkeypatch, kernel_path):
    """Every option, with and without intercept, both dtypes, one chunk and
    several (kernel_path): the same number of steps, evaluations and
    message as the Python driver, and iterates that agree to 1e-9
    (float64; 1e-5 float32) relative: the same algorithm on the same
    kernels, whose sums only differ in the order of a few additions."""
    X, y, kw, tol = case_problem(case, dtype, rng, 120, 4, 3)
    K = 3
    ours = minimize_newton_cholesky(X, y, n_classes=K, fit_intercept=fit_intercept, tol=tol,
                                    **kw)
    ref = python_loop(monkeypatch, X, y, n_classes=K, fit_intercept=fit_intercept, tol=tol,
                      **kw)
    assert ours.converged and ref.converged, (ours.message, ref.message)
    assert (ours.n_iter, ours.n_evals, ours.message) == (ref.n_iter, ref.n_evals, ref.message)
    rtol = 1e-9 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(ours.theta, ref.theta, rtol=rtol,
                               atol=rtol * np.abs(ref.theta).max())
    np.testing.assert_allclose(ours.history, ref.history, rtol=rtol)
    assert ours.W.dtype == dtype and ours.n_hessp == 0
    # the reported loss and gradient are loss_and_grad's at the returned point,
    # exactly (finish applied to the loop's last kernel sums)
    out = fs.loss_and_grad(ours.W, X, y, b=ours.b, **kw)
    assert out[0] == ours.loss
    grads = [out[1].ravel()] + ([out[2]] if fit_intercept else [])
    assert ours.grad_max == np.max(np.abs(np.concatenate(grads).astype(np.float64)))


def test_compiled_cholesky_loop_takes_the_stall_slack(rng, monkeypatch):
    """The compiled Newton-Cholesky loop counts a step as stalled by
    NEWTON_STALL_SLACK, as the Python driver does: with a slack of 1e-3 and
    two such steps allowed, the late steps of a converging fit (decreases
    below 0.1% of the objective) end both after the same steps, with the
    same message."""
    import fastsoftmax._dispatch as policy

    monkeypatch.setattr(policy, "NEWTON_STALL_SLACK", 1e-3)
    monkeypatch.setattr(policy, "NEWTON_MAX_STALLED_STEPS", 2)
    X = rng.standard_normal((300, 4))
    y = rng.integers(0, 3, 300)
    kw = dict(tol=1e-14, max_iter=100, l2=1e-3)
    ours = minimize_newton_cholesky(X, y, **kw)
    ref = python_loop(monkeypatch, X, y, **kw)
    assert "did not decrease" in ours.message and ours.n_iter < 100
    assert (ours.n_iter, ours.n_evals, ours.message) == (ref.n_iter, ref.n_evals, ref.message)


def test_compiled_cholesky_loop_stops_as_the_python_loop(rng, monkeypatch):
    """The other ways out, each with the Python driver's message, step and
    evaluation counts and reported loss: max_iter reached, stalled at
    float32 rounding (tol far below it), no factorisation at a NaN starting
    point, a line search that finds no decrease (float32, features scaled
    1e-3..1e3), and a warm start at the optimum (0 steps).

    Whether a float32 problem at rounding level ends in a failed line search
    or in five steps without decrease depends on the machine's rounding (on
    one machine seed 17 gave the one, on another the other): the test takes
    the first of 40 seeds whose Python driver's run ends in a failed line
    search."""
    m, n, K = 200, 3, 3
    X = rng.standard_normal((m, n))
    y = rng.integers(0, K, m)
    runs = {
        "max_iter": (X, y, dict(tol=1e-14, max_iter=2)),
        "stalled": (X.astype(np.float32), y, dict(tol=1e-14, max_iter=100, l2=1e-3)),
        "nan start": (X, y, dict(W0=np.full((K, n), np.nan))),
    }
    wide_kw = dict(tol=1e-14, max_iter=60, l2=1e-3)
    for seed in range(40):  # float32 features scaled 1e-3..1e3, at rounding level
        wide = np.random.default_rng(seed)
        X_wide = (wide.standard_normal((100, 3)) * np.logspace(-3, 3, 3)).astype(np.float32)
        y_wide = wide.integers(0, K, 100)
        ref = python_loop(monkeypatch, X_wide, y_wide, n_classes=K, **wide_kw)
        if "line search found no decrease" in ref.message:
            runs["line search"] = (X_wide, y_wide, wide_kw)
            break
    assert "line search" in runs, "no seed ends in a failed line search"
    for name, (data, labels, kw) in runs.items():
        ours = minimize_newton_cholesky(data, labels, n_classes=K, **kw)
        ref = python_loop(monkeypatch, data, labels, n_classes=K, **kw)
        assert not ours.converged, name
        assert (ours.n_iter, ours.n_evals, ours.message) == \
            (ref.n_iter, ref.n_evals, ref.message), name
        assert ours.loss == ref.loss or np.isnan(ours.loss) and np.isnan(ref.loss), name
    assert "line search found no decrease" in ours.message
    assert "max_iter=2 reached" in minimize_newton_cholesky(X, y, tol=1e-14, max_iter=2).message
    assert "could not be factored" in minimize_newton_cholesky(
        X, y, n_classes=K, W0=np.full((K, n), np.nan)).message
    best = minimize_newton_cholesky(X, y, tol=1e-10, l2=0.1)
    again = minimize_newton_cholesky(X, y, W0=best.W, b0=best.b, tol=1e-6, l2=0.1)
    assert again.converged and again.n_iter == 0 and again.history == [again.loss]


def one_chunk_after_two(solve, second_kernel, X, y, kw, monkeypatch):
    """``solve(X, y, **kw)`` with two row chunks for the loss and for
    ``second_kernel`` (the _dispatch function that sets the other kernel's
    chunk count), twice, bit-identical (the chunks' sums are added in chunk
    order); then with one chunk each, equal to 1e-10 relative.  Returns the
    one-chunk result."""
    import fastsoftmax._dispatch as policy

    monkeypatch.setattr(policy, second_kernel, lambda *shape: 2)
    monkeypatch.setattr(policy, "loss_chunks", lambda m, n, K: 2)
    first = solve(X, y, **kw)
    np.testing.assert_array_equal(solve(X, y, **kw).theta, first.theta)
    monkeypatch.setattr(policy, second_kernel, lambda *shape: 1)
    monkeypatch.setattr(policy, "loss_chunks", lambda m, n, K: 1)
    one = solve(X, y, **kw)
    np.testing.assert_allclose(one.theta, first.theta, rtol=1e-10,
                               atol=1e-10 * np.abs(first.theta).max())
    return one


def test_compiled_cholesky_loop_is_deterministic_and_falls_back(rng, monkeypatch):
    """The same inputs give bit-identical results (the chunks' sums are added
    in chunk order), one chunk or two agree to 1e-10; and when a chunk fails
    (status FAILED) the Python driver takes over and gives its result."""
    import fastsoftmax._newton as newton
    import fastsoftmax._newton_fused as compiled

    m, n, K = 3000, 6, 4
    X = rng.standard_normal((m, n))
    y = rng.integers(0, K, m)
    kw = dict(sample_weight=rng.random(m), l2=1e-3, tol=1e-9)
    one = one_chunk_after_two(minimize_newton_cholesky, "hessian_chunks", X, y, kw, monkeypatch)
    calls = []

    def failing(*args):
        calls.append(args)
        return compiled.FAILED, 0, 0.0, 0.0, 1

    monkeypatch.setattr(newton, "newton_cholesky_loop", failing)
    fallback = minimize_newton_cholesky(X, y, **kw)
    assert len(calls) == 1 and fallback.converged
    np.testing.assert_allclose(fallback.theta, one.theta, rtol=1e-9,
                               atol=1e-9 * np.abs(one.theta).max())


def test_compiled_cholesky_loop_loads_from_the_cache_in_a_new_process():
    """The loop and the Hessian chunk and reduced step it calls by address
    are cached: a second process loads them (one hit each, no miss)."""
    from helpers import assert_cached_in_new_process

    calls = ("from fastsoftmax._newton import minimize_newton_cholesky\n"
             "X = np.random.default_rng(0).standard_normal((3000, 5)); y = np.arange(3000) % 3\n"
             "minimize_newton_cholesky(X, y, l2=1e-3)\n")
    assert_cached_in_new_process(calls, {
        "newton_cholesky_loop": "fastsoftmax._newton_fused",
        "full_chunk": "fastsoftmax._hessian_full",
        "reduced_step": "fastsoftmax._newton_step",
    })


def test_a_step_that_raises_in_the_compiled_cholesky_loop_falls_back(rng, monkeypatch):
    """The compiled loop calls the step's factorisation through its address;
    if that call raises, the loop stops with status FAILED (no exception can
    leave it) and the Python driver gives the fit: the same point as the
    compiled loop's, to rounding."""
    import numba

    import fastsoftmax._newton as newton
    import fastsoftmax._newton_fused as compiled
    from fastsoftmax._compiled import CompiledFunction

    m, n, K = 600, 5, 3
    X = rng.standard_normal((m, n))
    y = rng.integers(0, K, m)
    want = minimize_newton_cholesky(X, y, l2=1e-3, tol=1e-10)

    @numba.njit
    def raising_step(M, g, n, denom, l2, jitter, S):
        if n >= 0:
            raise MemoryError("the step raised")
        return True

    matrix = numba.types.Array(numba.types.float64, 2, "C")
    f64 = numba.types.float64
    entry = CompiledFunction(raising_step, (matrix, matrix, numba.types.int64, f64, f64, f64,
                                            matrix))
    statuses = []
    real = compiled.newton_cholesky_loop

    def spy(*args):
        out = real(*args)
        statuses.append(out[0])
        return out

    monkeypatch.setattr(compiled, "step_entry", lambda: entry)
    monkeypatch.setattr(newton, "newton_cholesky_loop", spy)
    got = minimize_newton_cholesky(X, y, l2=1e-3, tol=1e-10)
    assert statuses == [compiled.FAILED]
    assert got.converged
    np.testing.assert_allclose(got.theta, want.theta, rtol=1e-8,
                               atol=1e-8 * np.abs(want.theta).max())


# --- the compiled Newton-CG steps (fastsoftmax._newton_fused.newton_cg_step) --------------


def python_pcg(monkeypatch, *args, **kw):
    """minimize_newton_pcg through the Python driver (the compiled steps
    switched off), with the same fused kernels."""
    import fastsoftmax._newton as newton

    with monkeypatch.context() as patch:
        patch.setattr(newton, "_compiled_steps", lambda obj, method: False)
        return minimize_newton_pcg(*args, **kw)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("preconditioner", ["blocks", "jacobi"])
def test_compiled_cg_steps_take_the_python_loops_steps(case, fit_intercept, dtype,
                                                        preconditioner, rng, monkeypatch,
                                                        kernel_path):
    """Every option, with and without intercept, both dtypes, both
    preconditioners, one chunk and several (kernel_path): the same numbers of
    steps, evaluations and Hessian products and the same message as the
    Python driver, and iterates that agree to 1e-9 (float64; 1e-5 float32)
    relative: the same algorithm on the same kernels (the blocks solved by
    triangular solves instead of a product with their inverses, sums in
    another order)."""
    import fastsoftmax._dispatch as policy

    if preconditioner == "jacobi":
        monkeypatch.setattr(policy, "PCG_BLOCK_MAX_WIDTH", 0)
    X, y, kw, tol = case_problem(case, dtype, rng, 150, 5, 4)
    K = 4
    ours = minimize_newton_pcg(X, y, n_classes=K, fit_intercept=fit_intercept, tol=tol, **kw)
    ref = python_pcg(monkeypatch, X, y, n_classes=K, fit_intercept=fit_intercept, tol=tol, **kw)
    assert ours.converged and ref.converged, (ours.message, ref.message)
    assert (ours.n_iter, ours.n_evals, ours.n_hessp, ours.message) == \
        (ref.n_iter, ref.n_evals, ref.n_hessp, ref.message)
    assert ours.n_iter >= 2 and ours.n_hessp >= ours.n_iter  # the loop and CG did run
    rtol = 1e-9 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(ours.theta, ref.theta, rtol=rtol,
                               atol=rtol * np.abs(ref.theta).max())
    np.testing.assert_allclose(ours.history, ref.history, rtol=rtol)
    assert ours.W.dtype == dtype
    # the reported loss and gradient are loss_and_grad's at the returned point, exactly
    out = fs.loss_and_grad(ours.W, X, y, b=ours.b, **kw)
    assert out[0] == ours.loss
    grads = [out[1].ravel()] + ([out[2]] if fit_intercept else [])
    assert ours.grad_max == np.max(np.abs(np.concatenate(grads).astype(np.float64)))


def test_compiled_cg_steps_stop_as_the_python_loop(rng, monkeypatch):
    """The other ways out, each with the Python driver's message, counts and
    reported loss: max_iter reached, no descent direction at a NaN starting
    point, and a warm start at the optimum (0 steps)."""
    m, n, K = 200, 3, 3
    X = rng.standard_normal((m, n))
    y = rng.integers(0, K, m)
    runs = {
        "max_iter": (dict(tol=1e-14, max_iter=2), "max_iter=2 reached"),
        "nan start": (dict(W0=np.full((K, n), np.nan)), "no descent direction left"),
    }
    for name, (kw, message) in runs.items():
        ours = minimize_newton_pcg(X, y, n_classes=K, **kw)
        ref = python_pcg(monkeypatch, X, y, n_classes=K, **kw)
        assert not ours.converged and message in ours.message, (name, ours.message)
        assert (ours.n_iter, ours.n_evals, ours.n_hessp, ours.message) == \
            (ref.n_iter, ref.n_evals, ref.n_hessp, ref.message), name
        assert ours.loss == ref.loss or np.isnan(ours.loss) and np.isnan(ref.loss), name
    best = minimize_newton_pcg(X, y, tol=1e-10, l2=0.1)
    again = minimize_newton_pcg(X, y, W0=best.W, b0=best.b, tol=1e-6, l2=0.1)
    assert again.converged and again.n_iter == 0 and again.history == [again.loss]
    assert again.n_evals == 1 and again.n_hessp == 0


def test_compiled_cg_steps_at_rounding_level(monkeypatch):
    """Float32 features scaled 1e-3..1e3 and tol far below rounding: the fit
    ends unconverged at rounding level (five steps without decrease, or a
    line search that finds none), as the Python driver's does, at an
    objective within float32 rounding of the driver's; the reported loss is
    loss_and_grad's at the returned point exactly, and the evaluations are
    counted as the Python driver counts them: the first, each step's, and
    after a failed line search whose last evaluation was at a trial point
    one more at the returned point.  At rounding level the two drivers'
    paths part (sums in other orders), so only these are compared.  Among
    40 seeds, at least one ends in a failed line search."""
    import fastsoftmax._newton as newton
    import fastsoftmax._newton_fused as compiled

    endings = set()
    real = newton.newton_cg_step
    for seed in range(40):
        r = np.random.default_rng(seed)
        X = (r.standard_normal((100, 3)) * np.logspace(-3, 3, 3)).astype(np.float32)
        y = r.integers(0, 3, 100)
        kw = dict(n_classes=3, tol=1e-14, max_iter=60, l2=1e-3)
        evals, wheres = [], []

        def spy(*args):
            out = real(*args)
            evals.append(out[3])
            wheres.append(out[4])
            return out

        with monkeypatch.context() as patch:
            patch.setattr(newton, "newton_cg_step", spy)
            ours = minimize_newton_pcg(X, y, **kw)
        ref = python_pcg(monkeypatch, X, y, **kw)
        assert not ours.converged and "rounding level reached" in ours.message, seed
        assert "rounding level reached" in ref.message, seed
        np.testing.assert_allclose(ours.loss, ref.loss, rtol=1e-6)
        assert ours.loss == fs.loss_and_grad(ours.W, X, y, b=ours.b, l2=1e-3)[0]
        failed = "line search found no decrease" in ours.message
        last = [w for w in wheres if w != compiled.UNCHANGED][-1:]
        assert ours.n_evals == 1 + sum(evals) + (last == [compiled.ELSEWHERE]), seed
        endings.add(failed)
        if endings == {False, True}:
            break
    assert True in endings, "no seed ends in a failed line search"


def test_decreases_of_a_few_ulps_count_as_stalled():
    """_Stopping: steps that lower the objective by 2 ulps (rounding noise
    at the optimum) count as steps without decrease, and the loop ends after
    NEWTON_MAX_STALLED_STEPS of them; decreases of 1e-12 of the objective
    (real progress, however slow) restart the count."""
    import fastsoftmax._dispatch as policy
    from fastsoftmax._newton import _Stopping

    grad = np.array([1.0])  # above tol throughout
    stop = _Stopping(tol=1e-10, max_iter=1000)
    loss, it = 0.7, 0
    assert not stop.done(it, loss, grad)
    for _ in range(3):  # slow but real progress: never stalled
        it, loss = it + 1, loss * (1.0 - 1e-12)
        assert not stop.done(it, loss, grad)
    steps = 0
    while True:  # 2 ulps lower each step
        it, steps = it + 1, steps + 1
        loss = np.nextafter(np.nextafter(loss, 0.0), 0.0)
        if stop.done(it, loss, grad):
            break
        assert steps < 50
    assert steps == policy.NEWTON_MAX_STALLED_STEPS
    assert "did not decrease" in stop.message and not stop.converged


def test_steps_below_rounding_are_counted_as_the_python_loop(rng, monkeypatch):
    """With max_cg = 0 every step is zero: the trial point is the point
    itself, which neither driver evaluates again (the Python driver's
    evaluations are cached by point), and both stop after
    NEWTON_MAX_STALLED_STEPS steps without decrease, with the same counts,
    message and loss."""
    X = rng.standard_normal((300, 4))
    y = rng.integers(0, 3, 300)
    kw = dict(l2=1e-2, max_cg=0, tol=1e-10)
    ours = minimize_newton_pcg(X, y, **kw)
    ref = python_pcg(monkeypatch, X, y, **kw)
    assert "did not decrease" in ours.message
    assert (ours.n_iter, ours.n_evals, ours.n_hessp, ours.message, ours.loss) == \
        (ref.n_iter, ref.n_evals, ref.n_hessp, ref.message, ref.loss)
    assert ours.n_evals == 1 and ours.history == ref.history


def test_fallback_factorisations_leave_the_kept_blocks_as_built(rng):
    """Blocks that need _cholesky's larger shifts (indefinite by rounding):
    the inverses and the factors are computed from shifted copies, and the
    blocks kept for the next fits of a path stay as built; the inverses are
    those of the factors' L L^T."""
    from fastsoftmax._newton import BlockInverses, _setup

    m, n, K = 200, 5, 3
    X = rng.standard_normal((m, n))
    y = rng.integers(0, K, m)
    options = dict(sample_weight=None, l2=0.0, label_smoothing=0.0, ignore_index=None,
                   reduction="mean", method="fused")
    obj, x = _setup(X, y, None, None, K, True, options)
    v = rng.standard_normal(n + 1)
    A = rng.standard_normal((K, n + 1, n + 1))
    built = A @ A.transpose(0, 2, 1) + np.eye(n + 1)
    built[1] = np.outer(v, v) - 1e-9 * np.outer(v, v).max() * np.eye(n + 1)  # barely indefinite
    path = BlockInverses()
    path.blocks, path.l2, path.stale = built.copy(), 0.0, False
    hessp = obj.at(x)[2]
    inverses = path.get(obj, hessp)
    factors = path.lower_factors(obj, hessp)
    np.testing.assert_array_equal(path.blocks, built)
    assert inverses is not None and factors is not None
    LLt = factors @ factors.transpose(0, 2, 1)
    for k in (0, 2):  # well-conditioned blocks: inverse times L L^T is the identity
        np.testing.assert_allclose(inverses[k] @ LLt[k], np.eye(n + 1), atol=1e-8)


def test_a_failed_first_line_search_evaluates_the_start_again(rng, monkeypatch):
    """A step whose line search fails at once leaves the point at the start;
    its last evaluation was at a trial point, so the start is evaluated again
    for the report (as the Python driver does): evaluations 1 + the step's +
    1, and loss_and_grad's loss at the start."""
    import fastsoftmax._newton as newton
    import fastsoftmax._newton_fused as compiled

    X = rng.standard_normal((300, 4))
    y = rng.integers(0, 3, 300)
    monkeypatch.setattr(newton, "newton_cg_step",
                        lambda *args: (compiled.NO_DECREASE, 2, float(args[11]), 40,
                                       compiled.ELSEWHERE))
    res = minimize_newton_pcg(X, y, l2=1e-2)
    assert "line search found no decrease" in res.message and res.n_iter == 0
    assert (res.n_evals, res.n_hessp) == (42, 2)
    assert res.loss == fs.loss_and_grad(np.zeros((3, 4)), X, y, b=np.zeros(3), l2=1e-2)[0]


def test_end_sums_are_taken_only_for_the_same_problem_and_point(rng):
    """EndSums gives back (copies of) the sums kept at a point only for a
    start at that point, on the same X, targets and sample-weight objects
    with the same options but the penalty; anything else gets None."""
    from fastsoftmax._newton import EndSums, _setup

    m, n, K = 50, 3, 3
    X, y, w = rng.standard_normal((m, n)), rng.integers(0, K, m), rng.random(m)
    opts = dict(sample_weight=w, l2=0.1, label_smoothing=0.0, ignore_index=None,
                reduction="mean", method="fused")

    def objective(X=X, y=y, **changes):
        return _setup(X, y, None, None, K, True, {**opts, **changes})[0]

    end = EndSums()
    theta = rng.standard_normal(K * (n + 1))
    G, gb = rng.standard_normal((K, n)), rng.standard_normal(K)
    end.remember(objective(), theta, (1.5, G, gb))
    G[0, 0] = gb[0] = np.nan  # kept as copies
    got = end.recall(objective(l2=0.5), theta.copy())
    assert got[0] == 1.5 and not np.isnan(got[1][0, 0]) and not np.isnan(got[2][0])
    got[1][0, 0] = np.nan  # handed out as copies
    assert not np.isnan(end.recall(objective(), theta)[1][0, 0])
    moved = theta.copy()
    moved[3] = np.nextafter(moved[3], np.inf)
    assert end.recall(objective(), moved) is None
    assert end.recall(objective(X=X.copy()), theta) is None
    assert end.recall(objective(y=y.copy()), theta) is None
    assert end.recall(objective(sample_weight=w.copy()), theta) is None
    assert end.recall(objective(label_smoothing=0.1), theta) is None
    assert end.recall(objective(reduction="sum"), theta) is None
    assert EndSums().recall(objective(), theta) is None
    # the same number of parameters, another problem: K = 4 without intercept
    other = _setup(X, y, None, None, 4, False, opts)[0]
    assert other.K * other.n == theta.size and end.recall(other, theta) is None


def test_compiled_cg_steps_are_deterministic_and_fall_back(rng, monkeypatch):
    """The same inputs give bit-identical results (the chunks' sums are added
    in chunk order), one chunk or two agree to 1e-10; and when a chunk fails
    (status FAILED, at any step) the Python driver takes over from the start
    and gives its result, with its own counts."""
    import fastsoftmax._newton as newton
    import fastsoftmax._newton_fused as compiled

    m, n, K = 3000, 6, 4
    X = rng.standard_normal((m, n)) * np.logspace(-1, 1, n)
    y = rng.integers(0, K, m)
    kw = dict(sample_weight=rng.random(m), l2=1e-3, tol=1e-9)
    one_chunk_after_two(minimize_newton_pcg, "product_chunks", X, y, kw, monkeypatch)
    ref = python_pcg(monkeypatch, X, y, **kw)
    real = compiled.newton_cg_step
    for fail_at in (0, 2):
        calls = []

        def failing(*args):
            calls.append(1)
            if len(calls) > fail_at:
                return compiled.FAILED, 1, 0.0, 0, compiled.ELSEWHERE
            return real(*args)

        monkeypatch.setattr(newton, "newton_cg_step", failing)
        fallback = minimize_newton_pcg(X, y, **kw)
        assert len(calls) == fail_at + 1 and fallback.converged
        assert (fallback.n_iter, fallback.n_evals, fallback.n_hessp) == \
            (ref.n_iter, ref.n_evals, ref.n_hessp)
        np.testing.assert_allclose(fallback.theta, ref.theta, rtol=1e-12,
                                   atol=1e-12 * np.abs(ref.theta).max())


def test_compiled_cg_steps_load_from_the_cache_in_a_new_process():
    """The step kernel, the Hessian-product chunk it calls by address and the
    class blocks' kernel are cached: a second process loads them (one hit
    each, no miss)."""
    from helpers import assert_cached_in_new_process

    calls = ("from fastsoftmax._newton import minimize_newton_pcg\n"
             "X = np.random.default_rng(0).standard_normal((3000, 5)); y = np.arange(3000) % 3\n"
             "minimize_newton_pcg(X, y, l2=1e-3)\n")
    assert_cached_in_new_process(calls, {
        "newton_cg_step": "fastsoftmax._newton_fused",
        "hessian_chunk": "fastsoftmax._hessian_fused",
        "add_class_blocks": "fastsoftmax._hessian_blocks",
    })
