"""Helpers shared by the tests: stated tolerances, the compile-cache check, the dense
problems (fixed option sets and a hypothesis strategy) and the estimator comparison."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import strategies as st

from fastsoftmax.tools.problems import TARGET_KINDS, ignore_labels, problem  # noqa: F401
from naive_hessian import naive_hessian_product

METHODS = ["fused", "indexloop", "numpy"]
DTYPES = [np.float32, np.float64]
TARGETS = list(TARGET_KINDS)

#: Stated tolerances between an implementation and the float64 reference.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


def assert_close(actual, expected, dtype, what="", scale=None):
    """|actual - expected| <= rtol * (|expected| + scale), elementwise.

    ``scale`` is the magnitude the entries are sums of: by default the
    array's largest entry, or, from the oracle, the sum of the absolute values
    of the terms each entry adds up.  Entries that are sums with cancellation
    (a gradient near an optimum) are so judged relative to the size of what
    was summed, which is what bounds the rounding error of any summation
    order, not relative to their own tiny size.

    Plus an absolute ``finfo(dtype).tiny`` (float32: 1.2e-38): results come in
    the working dtype, which holds nothing below its smallest normal number
    to relative accuracy (a float32 gradient entry of 2e-57, the product of
    an underflowed probability and x, is 0 there).
    """
    rtol = RTOL[np.dtype(dtype)]
    atol = float(np.finfo(dtype).tiny)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    if scale is None:
        scale = np.max(np.abs(expected)) if expected.size else 0.0
    err = np.abs(actual - expected)
    bound = rtol * (np.abs(expected) + scale) + atol
    bad = ~(err <= bound)
    assert not np.any(bad), (
        f"{what}: {np.count_nonzero(bad)} entries off, worst error {np.max(err[bad])!r} "
        f"vs bound {bound[bad].min() if np.ndim(bound) else bound!r}\nactual {actual}\nexpected {expected}")


def assert_results_close(got, want, dtype, scales=None):
    """Compare ``(loss, dW[, db])`` tuples; check the output types on the way."""
    assert len(got) == len(want)
    assert isinstance(got[0], float)
    scales = scales or (None,) * len(want)
    for name, g, w, s in zip(("loss", "dW", "db"), got, want, scales):
        if name != "loss":
            assert g.dtype == np.dtype(dtype), name
        assert_close(g, w, dtype, name, s)



def assert_cached_in_new_process(calls: str, dispatchers: dict[str, str]) -> None:
    """Run ``calls`` in two new processes: the second must load every kernel
    from the cache (a hit, no miss) and no "Cannot cache" warning may appear.

    ``dispatchers`` maps a name to the import that brings it, e.g.
    ``{"fused_sums": "fastsoftmax._fused"}``; each must have been used by ``calls``.
    """
    imports = "".join(f"from {mod} import {name}\n" for name, mod in dispatchers.items())
    code = (
        "import warnings, numpy as np, fastsoftmax as fs\n"
        "warnings.simplefilter('error')\n" + imports + calls + "\n"
        f"for f in ({', '.join(dispatchers)},):\n"
        "    print(sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values()))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "Cannot cache" not in out.stderr
    counts = [[int(v) for v in line.split()] for line in out.stdout.splitlines()]
    assert counts == [[1, 0]] * len(dispatchers), out.stdout  # (hits, misses) per kernel


def central_differences(f, A, h):
    """Central differences of scalar f with respect to every entry of A."""
    G = np.zeros(A.shape)
    for idx in np.ndindex(A.shape):
        Ap, Am = A.copy(), A.copy()
        Ap[idx] += h
        Am[idx] -= h
        hp = float(Ap[idx]) - float(A[idx])  # the step actually taken in A's dtype
        hm = float(A[idx]) - float(Am[idx])
        G[idx] = (f(Ap) - f(Am)) / (hp + hm)
    return G


def make_problem(rng, m, n, K, dtype, target="labels"):
    """Standard-normal X, W = 0.7 x standard normal, targets of the given kind."""
    return problem(rng, m, n, K, dtype, target, weight_scale=0.7)


#: The named option sets of :func:`options`.
OPTION_NAMES = ["plain", "bias", "weights", "l2", "smoothing", "sum", "all"]


def over_option_grid(test):
    """Parametrise ``test`` over every method, dtype, target kind and named option set."""
    for name, values in (("opt", OPTION_NAMES), ("target", TARGETS), ("dtype", DTYPES),
                         ("method", METHODS)):
        test = pytest.mark.parametrize(name, values)(test)
    return test


def grid_problem(rng, dtype, target, opt, m=37, n=6, K=4):
    """A small problem of the given target kind and the keyword arguments of
    option set ``opt``: ``(W, X, y, kw)``."""
    W, X, y = make_problem(rng, m, n, K, dtype, target)
    return W, X, y, options(opt, rng, m, K, dtype, target)


def options_from_table(table, name, rng, m, K, dtype):
    """The keyword arguments ``table[name]`` with the placeholders made real:
    "b" a random (K,) intercept of ``dtype``, "sample_weight" random positive
    (m,) weights."""
    kw = dict(table[name])
    if "b" in kw:
        kw["b"] = rng.standard_normal(K).astype(dtype)
    if "sample_weight" in kw:
        kw["sample_weight"] = rng.random(m) + 0.1
    return kw


def options(name, rng, m, K, dtype, target=None):
    """Keyword arguments for a named option set."""
    labels_ok = target in ("labels", "float_labels")
    b = (rng.standard_normal(K)).astype(dtype)
    sw = rng.random(m) * 2.0
    out = {
        "plain": {},
        "bias": {"b": b},
        "weights": {"sample_weight": sw},
        "l2": {"l2": 0.37},
        "smoothing": {"label_smoothing": 0.15},
        "sum": {"reduction": "sum"},
        "all": {"b": b, "sample_weight": sw, "l2": 0.2, "label_smoothing": 0.1, "reduction": "sum"},
    }[name]
    return out


def f64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def over_ignore_index_cases(test):
    """Parametrise ``test`` over every method, dtype and two ``extra`` option sets
    of :func:`ignore_index_problem` (none; sample weights, smoothing and intercept)."""
    for name, values in (("extra", [{}, {"sample_weight": "w", "label_smoothing": 0.2, "b": "b"}]),
                         ("dtype", DTYPES), ("method", METHODS)):
        test = pytest.mark.parametrize(name, values)(test)
    return test


def ignore_index_problem(rng, dtype, extra):
    """A (41, 5, 3) labels problem with some labels set to -100 (ignored), and its
    keyword arguments: ``extra`` with "sample_weight" and "b" replaced by random
    arrays.  Returns ``(W, X, y, kw)``."""
    m, n, K = 41, 5, 3
    W, X, y = make_problem(rng, m, n, K, dtype)
    y = ignore_labels(y, rng)
    kw = dict(extra)
    if "sample_weight" in kw:
        kw["sample_weight"] = rng.random(m)
    if "b" in kw:
        kw["b"] = rng.standard_normal(K).astype(dtype)
    return W, X, y, kw


def draw_options(draw, rng, y, K, dtype, target):
    """Draw ``loss_and_grad`` options for targets ``y`` of m samples and K classes
    inside a ``st.composite`` strategy: optional intercept, sample weights (some
    zero), l2, label smoothing, reduction and ignore_index (class indices
    only, marking some labels of a copy of y).  Returns ``(y, kw)``."""
    m = y.shape[0]
    kw = {}
    if draw(st.booleans()):
        kw["b"] = rng.standard_normal(K).astype(dtype)
    if draw(st.booleans()):
        sw = rng.random(m) * draw(st.sampled_from([1.0, 1e3]))
        sw[rng.random(m) < 0.2] = 0.0
        sw[0] = 1.0
        kw["sample_weight"] = sw
    kw["l2"] = draw(st.sampled_from([0.0, 0.5]))
    kw["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 0.9]))
    kw["reduction"] = draw(st.sampled_from(["mean", "sum"]))
    if target == "labels" and draw(st.booleans()):
        y = ignore_labels(y, rng)
        kw["ignore_index"] = -100
    return y, kw


def draw_dense_problem(draw):
    """Draw a small dense problem inside a ``st.composite`` strategy.

    Returns ``(rng, W, X, y, kw, dtype)``: every target kind and dtype, logit
    scales from 0.01 to 30, optional intercept, sample weights (some zero),
    l2, label smoothing, reduction and ignore_index; ``rng`` is the problem's
    generator, for anything the caller draws after it.
    """
    m = draw(st.integers(1, 40))
    n = draw(st.integers(1, 7))
    K = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    target = draw(st.sampled_from(TARGETS))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([0.01, 1.0, 30.0]))
    W, X, y = make_problem(rng, m, n, K, dtype, target)
    W = (W * scale).astype(dtype)
    y, kw = draw_options(draw, rng, y, K, dtype, target)
    return rng, W, X, y, kw, dtype


def draw_linear_ce_problem(draw, max_m, max_n, max_K, x_scales=(1.0,)):
    """Draw a small ``linear_cross_entropy`` problem inside a ``st.composite`` strategy.

    Returns ``(X, W, y, kw, dtype)``: X (m, n) times a scale from ``x_scales``,
    W (K, n) = 0.7 x standard normal, class indices or non-negative dense
    targets, label smoothing, reduction, optional intercept, sample weights and
    (class indices only) ignore_index marking some labels but the first.
    """
    m, n, K = draw(st.integers(1, max_m)), draw(st.integers(1, max_n)), draw(st.integers(1, max_K))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    W, X, y = make_problem(rng, m, n, K, dtype, draw(st.sampled_from(["labels", "nonneg"])))
    X *= draw(st.sampled_from(x_scales))
    kw = {"label_smoothing": draw(st.sampled_from([0.0, 0.2])),
          "reduction": draw(st.sampled_from(["mean", "sum"]))}
    if draw(st.booleans()):
        kw["b"] = rng.standard_normal(K).astype(dtype)
    if draw(st.booleans()):
        kw["sample_weight"] = rng.random(m) + 0.01
    if y.ndim == 1 and m > 1 and draw(st.booleans()):
        y = y.copy()
        y[1:][rng.random(m - 1) < 0.4] = -1
        kw["ignore_index"] = -1
    return X, W, y, kw, dtype


def check_quietly(estimator, check):
    """Run one of scikit-learn's estimator checks with its ConvergenceWarnings silenced."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def auto_newton_cg_on_sparse_data(estimator) -> dict:
    """``expected_failed_checks`` for scikit-learn's estimator checks: with
    ``solver="auto"`` and a tol above 1e-6 (the default 1e-4), sparse X is
    fitted by Newton-CG, whose inexact steps stop anywhere within tol of the
    optimum; fits on weighted and on repeated samples then differ by ~1e-7
    in the probabilities, above check_sample_weight_equivalence's rtol of
    1e-7.  The same check passes with ``solver="newton-cg", tol=1e-8``.
    Not strict: since the sparse preconditioner mixes in the penalty (2026-11)
    the two fits happen to agree to 1e-7 on the check's data, which at
    tol=1e-4 nothing guarantees."""
    if estimator.get_params()["solver"] == "auto" and estimator.get_params()["tol"] > 1e-6:
        return {"check_sample_weight_equivalence_on_sparse_data":
                "Newton-CG at tol=1e-4: weighted and repeated fits differ by ~1e-7"}
    return {}


def standardised(load):
    """``(X, y)`` of one of scikit-learn's bundled data sets (``load_digits``...),
    X standardised."""
    from sklearn.preprocessing import StandardScaler

    X, y = load(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def assert_same_model_as_logistic_regression(X, y, C):
    """Fit SoftmaxRegression and scikit-learn's LogisticRegression with the same C on (X, y)
    and compare coefficients, intercepts, accuracy and probabilities; returns (ours, ref)."""
    from sklearn.linear_model import LogisticRegression

    from fastsoftmax.estimator import SoftmaxRegression

    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
    ours = SoftmaxRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=0, atol=1e-4)
    assert ours.score(X, y) == ref.score(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-5)
    return ours, ref


def assert_product_close(got, want, dtype, scales):
    """``HV`` or ``(HV, Hvb)`` against the oracle, entrywise within
    RTOL[dtype] * (|expected| + scale) (tests/helpers.py: 1e-10 for float64,
    1e-4 for float32), where scale is |H| |direction| from the oracle."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == 2
        for name, g, w, s in zip(("HV", "Hvb"), got, want, scales):
            assert g.dtype == np.dtype(dtype), name
            assert_close(g, w, dtype, name, s)
    else:
        assert isinstance(got, np.ndarray)
        assert got.dtype == np.dtype(dtype)
        assert_close(got, want, dtype, "HV", scales)


def hessian_oracle(W, X, y, V, vb, kw, dtype):
    """The oracle's Hessian product and scales (X dense), the scales widened by an
    underflow floor.

    Results are in the working dtype, whose smallest normal number ``tiny``
    bounds the absolute error of each per-sample term that underflows (a
    probability, or a coefficient w_i s_i p_ik (u_ik - <p_i, u_i>), below
    it).  Summed over samples and mapped through x_i, that is at most
    ``tiny * sum_i (1 + w_i s_i (1 + max|u_i|)) (1 + max|x_i|) / D``, which
    is added to the bound (about 1e-36 in float32 for these problems, so it
    only matters for products that are themselves that small).
    """
    want, scales = naive_hessian_product(*f64(W, X), y, V, vb=vb, return_scales=True, **kw)
    X64, V64 = f64(X, V)
    m = X64.shape[0]
    sw = np.ones(m) if kw.get("sample_weight") is None else np.asarray(kw["sample_weight"])
    keep = np.ones(m, bool) if "ignore_index" not in kw else (np.asarray(y) != kw["ignore_index"])
    s = np.full(m, 1.0) if np.ndim(y) == 1 else np.asarray(y, np.float64).sum(axis=1) + 1.0
    u = np.abs(X64 @ V64.T).max(axis=1) + (0 if vb is None else np.abs(vb).max())
    terms = (1 + sw * s * (1 + u)) * (1 + np.abs(X64).max(axis=1))
    denom = sw[keep].sum() if kw.get("reduction", "mean") == "mean" else 1.0
    floor = np.finfo(dtype).tiny * terms[keep].sum() / denom
    rtol = RTOL[np.dtype(dtype)]
    if isinstance(scales, tuple):
        scales = tuple(sc + floor / rtol for sc in scales)
    else:
        scales = scales + floor / rtol
    return want, scales


def assert_within_vocab_memory(got: dict, m: int, n: int, K: int, class_block: int) -> None:
    """A large-vocabulary call's measured peak extra bytes ``got["extra"]``
    (float32, from a child that reports its ``tile`` and ``workers``) is at
    most dX + dW plus the kernel's buffers as its docstring states them
    (logits tile, class blocks' partials, X and dX tiles, db sums; the child
    uses no soft-capping) and 12 MB of slack for the interpreter and the
    allocator.  ``class_block``: classes per block."""
    tile = got["tile"]
    gradients = (m * n + K * n) * 4
    buffers = tile * K * 4 + -(-K // class_block) * 4 * tile * 8 + 2 * tile * n * 4 + K * 8 * 2
    slack = 12 * 2**20
    print(f"\nextra peak {got['extra'] / 2**20:.1f} MB; gradients {gradients / 2**20:.1f} MB, "
          f"buffers {buffers / 2**20:.1f} MB")
    assert got["extra"] <= gradients + buffers + slack


def newton_by_columns(monkeypatch, on: bool) -> None:
    """Make Newton-CG on CSR X work by columns (from X's transpose) whatever
    the shape and size, or never (fastsoftmax._dispatch.sparse_by_columns)."""
    import fastsoftmax._dispatch as policy

    monkeypatch.setattr(policy, "SPARSE_TRANSPOSED_BYTES", 2**62 if on else -1)
    monkeypatch.setattr(policy, "SPARSE_COLUMNS_MAX_ROWS_PER_COLUMN", float("inf"))
