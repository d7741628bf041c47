"""The large-vocabulary kernel (fastsoftmax._vocab) behind linear_cross_entropy
and loss_and_grad for large K.

Small problems are sent to it by monkeypatching the policy (``VOCAB_*`` in
fastsoftmax._dispatch) with block sizes of a few rows, classes and columns, so
that every call has several super-tiles, class blocks, column blocks and row
groups, each with a remainder.  The references are tests/naive.py (float64,
one sample at a time, no shared code) and central differences; tolerances
are helpers.RTOL relative to the oracle's rounding scales.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsoftmax as fs
import fastsoftmax._api as api
import fastsoftmax._dispatch as policy
from helpers import (assert_close, assert_within_vocab_memory, central_differences,
                     draw_linear_ce_problem, options_from_table)
from naive import naive_linear_cross_entropy

DTYPES = [np.float32, np.float64]

#: block sizes: (tile, class_block, column_block, group)
PLANS = {
    "small-blocks": (7, 4, 3, 3),
    "one-group": (5, 64, 64, 8),
    "default-sizes": (None, None, None, None),
}


def force_vocab(monkeypatch, plan=(7, 4, 3, 3), calls=None):
    """Send every dense fused call to the large-vocabulary kernel, with the given
    block sizes (None: the policy's own), counting calls in ``calls``."""
    monkeypatch.setattr(policy, "VOCAB_MIN_CLASSES", 0)
    monkeypatch.setattr(policy, "VOCAB_SLAB_BYTES", -1)
    tile, class_block, column_block, group = plan
    for name, value in (("VOCAB_CLASS_BLOCK", class_block), ("VOCAB_COLUMN_BLOCK", column_block),
                        ("VOCAB_ROW_GROUP", group)):
        if value is not None:
            monkeypatch.setattr(policy, name, value)
    if tile is not None:
        monkeypatch.setattr(policy, "VOCAB_MIN_TILE", tile)
        monkeypatch.setattr(policy, "VOCAB_MAX_TILE", tile)
    real = api.vocab_sums

    def spy(*args, **kwargs):
        if calls is not None:
            calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "vocab_sums", spy)


@pytest.fixture(params=list(PLANS))
def vocab(request, monkeypatch):
    calls = []
    force_vocab(monkeypatch, PLANS[request.param], calls)
    return calls


def data(rng, m, n, K, dtype, target="labels"):
    X = rng.standard_normal((m, n)).astype(dtype)
    W = (0.7 * rng.standard_normal((K, n))).astype(dtype)
    y = rng.integers(0, K, m) if target == "labels" else 2.0 * rng.random((m, K))
    return X, W, y


OPTIONS = {
    "plain": {},
    "bias": {"b": "b"},
    "weights": {"sample_weight": "w"},
    "smoothing": {"label_smoothing": 0.2},
    "l2": {"l2": 0.3},
    "sum": {"reduction": "sum", "b": "b"},
    "all": {"b": "b", "sample_weight": "w", "l2": 0.3, "label_smoothing": 0.1},
    "ignore": {"ignore_index": -100, "sample_weight": "w", "b": "b"},
    # the options of issue 10: soft-capping takes the float64 row numerics,
    # the others the class-major ones (fastsoftmax._vocab_rows)
    "class_weight": {"class_weight": "cw", "label_smoothing": 0.2, "sample_weight": "w",
                     "b": "b"},
    "z_loss_none": {"z_loss": 0.3, "reduction": "none", "sample_weight": "w", "b": "b"},
    "softcap_all": {"softcap": 1.5, "class_weight": "cw", "z_loss": 0.05,
                    "label_smoothing": 0.1, "reduction": "none", "b": "b"},
}


def options(name, rng, m, K, dtype):
    kw = options_from_table(OPTIONS, name, rng, m, K, dtype)
    if "class_weight" in kw:
        cw = 2.0 * rng.random(K)
        cw[0] = 0.0  # a class that does not count
        kw["class_weight"] = cw
    return kw


def check(got, want, scales, dtype, names=("loss", "dX", "dW", "db")):
    assert len(got) == len(want)
    if isinstance(want[0], np.ndarray):  # reduction="none": per-sample float64 losses
        assert isinstance(got[0], np.ndarray) and got[0].dtype == np.float64
    else:
        assert isinstance(got[0], float)
    for name, g, w, s in zip(names, got, want, scales):
        if name != "loss":
            assert g.dtype == np.dtype(dtype) and g.shape == np.shape(w), name
        assert_close(g, w, dtype, name, s)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", ["labels", "dense"])
@pytest.mark.parametrize("opt", list(OPTIONS))
def test_matches_oracle(dtype, target, opt, rng, vocab):
    """Both entry points, every option, against the float64 oracle."""
    m, n, K = 29, 7, 11
    if opt == "ignore" and target != "labels":
        pytest.skip("ignore_index needs class-index targets")
    X, W, y = data(rng, m, n, K, dtype, target)
    kw = options(opt, rng, m, K, dtype)
    if opt == "ignore":
        y[rng.random(m) < 0.3] = -100
        y[8:15] = -100  # a whole super-tile of the small plan dropped
        y[0] = 1
    got = fs.linear_cross_entropy(X, W, y, **kw)
    assert len(vocab) == 1
    want, scales = naive_linear_cross_entropy(X, W, y, return_scales=True, **kw)
    check(got, want, scales, dtype)
    if opt == "ignore":
        assert np.all(got[1][y == -100] == 0.0)
    got = fs.loss_and_grad(W, X, y, **kw)
    assert len(vocab) == 2
    check(got, (want[0],) + tuple(want[2:]), (scales[0],) + tuple(scales[2:]), dtype,
          names=("loss", "dW", "db"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_differences(dtype, rng, monkeypatch):
    """dX, dW and db against central differences of the kernel's own loss (float64:
    h 1e-5, atol 1e-7; float32: h 2^-7, atol 2e-3; relative to the largest entry)."""
    force_vocab(monkeypatch)
    h, atol = (1e-5, 1e-7) if dtype == np.float64 else (2.0**-7, 2e-3)
    m, n, K = 9, 4, 6
    X, W, y = data(rng, m, n, K, dtype)
    y[2] = -1
    kw = dict(sample_weight=rng.random(m) + 0.1, label_smoothing=0.1, ignore_index=-1)
    b = rng.standard_normal(K).astype(dtype)
    loss, dX, dW, db = fs.linear_cross_entropy(X, W, y, b=b, **kw)

    def f(X=X, W=W, b=b):
        return fs.loss_and_grad(W, X, y, b=b, **kw)[0]

    for got, fd in ((dX, central_differences(lambda A: f(X=A), X, h)),
                    (dW, central_differences(lambda A: f(W=A), W, h)),
                    (db, central_differences(lambda A: f(b=A), b, h))):
        np.testing.assert_allclose(got, fd, rtol=0, atol=atol * max(1.0, np.abs(fd).max()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_of_x_and_w(dtype, rng, monkeypatch):
    """Fortran-ordered and strided X, Fortran-ordered W: the C-ordered result."""
    force_vocab(monkeypatch)
    X, W, y = data(rng, 23, 5, 9, dtype)
    want = fs.linear_cross_entropy(X, W, y)
    for Xl, Wl in ((np.asfortranarray(X), W), (np.repeat(X, 2, axis=0)[::2], W),
                   (X, np.asfortranarray(W))):
        got = fs.linear_cross_entropy(Xl, Wl, y)
        assert got[1].flags.c_contiguous
        for g, w in zip(got[1:], want[1:]):
            np.testing.assert_array_equal(g, w)
        assert got[0] == want[0]


@pytest.mark.parametrize("target", ["labels", "dense"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_classes_with_minus_inf_intercept(dtype, target, rng, monkeypatch):
    """Classes masked by a -inf intercept, among them a whole block of classes
    (4-7 with 4-class blocks), get probability 0 and nothing turns NaN: the
    result equals the NumPy method's on the unmasked classes alone, with
    class weights and sample weights (relative tolerance 1e-10 in float64;
    1e-4 in float32, where both compute their sums in float32, in different
    orders)."""
    force_vocab(monkeypatch)
    m, n, K = 29, 7, 11
    X, W, _ = data(rng, m, n, K, dtype)
    keep = np.array([0, 1, 2, 3, 8, 9, 10])
    y_kept = rng.integers(0, keep.size, m)
    b = rng.standard_normal(K).astype(dtype)
    b[[4, 5, 6, 7]] = -np.inf
    cw = rng.random(K) + 0.5
    sw = rng.random(m) + 0.1
    if target == "labels":
        y, y_ref = keep[y_kept], y_kept
    else:
        y_ref = rng.random((m, keep.size))
        y = np.zeros((m, K))
        y[:, keep] = y_ref
    kw = {"sample_weight": sw, "reduction": "sum"}
    got = fs.linear_cross_entropy(X, W, y, b=b, class_weight=cw, **kw)
    want = fs.linear_cross_entropy(X, W[keep], y_ref, b=b[keep], class_weight=cw[keep],
                                   method="numpy", **kw)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    assert np.isfinite(got[0]) and got[0] == pytest.approx(want[0], rel=rtol)
    np.testing.assert_allclose(got[1], want[1], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(got[2][keep], want[2], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(got[3][keep], want[3], rtol=rtol, atol=rtol)
    assert np.all(got[2][4:8] == 0) and np.all(got[3][4:8] == 0)


def test_all_rows_ignored_in_places(rng, monkeypatch):
    """Super-tiles with no kept row, and a last partial one; ignored rows of dX stay 0."""
    force_vocab(monkeypatch)
    X, W, y = data(rng, 30, 4, 6, np.float64)
    y[:14] = -100  # the first two super-tiles of 7 rows
    y[28:] = -100
    got = fs.linear_cross_entropy(X, W, y, ignore_index=-100)
    want, scales = naive_linear_cross_entropy(X, W, y, ignore_index=-100, return_scales=True)
    check(got, want, scales, np.float64)
    assert np.all(got[1][:14] == 0.0) and np.all(got[1][28:] == 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_across_calls_and_thread_counts(dtype, rng, monkeypatch):
    """Bitwise the same result twice, and with 1 and 2 threads (the design's promise:
    the work is cut into blocks of fixed sizes, each summed in a fixed order)."""
    force_vocab(monkeypatch)
    X, W, y = data(rng, 40, 6, 13, dtype)
    kw = dict(b=rng.standard_normal(13).astype(dtype), sample_weight=rng.random(40),
              label_smoothing=0.1)
    threads = numba.get_num_threads()
    try:
        results = []
        for t in (threads, threads, 1):
            numba.set_num_threads(t)
            results.append(fs.linear_cross_entropy(X, W, y, **kw))
    finally:
        numba.set_num_threads(threads)
    for other in results[1:]:
        assert other[0] == results[0][0]
        for g, w in zip(other[1:], results[0][1:]):
            np.testing.assert_array_equal(g, w)


@st.composite
def problems(draw):
    X, W, y, kw, dtype = draw_linear_ce_problem(draw, 30, 9, 14, x_scales=(0.01, 1.0, 10.0))
    plan = (draw(st.integers(1, 9)), draw(st.integers(1, 6)), draw(st.integers(1, 5)),
            draw(st.integers(1, 5)))
    return X, W, y, kw, dtype, plan


@given(problems())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
def test_property_matches_oracle(monkeypatch, problem):
    X, W, y, kw, dtype, plan = problem
    with monkeypatch.context() as mp:
        force_vocab(mp, plan)
        got = fs.linear_cross_entropy(X, W, y, **kw)
    want, scales = naive_linear_cross_entropy(X, W, y, return_scales=True, logit_rounding=False,
                                              **kw)
    check(got, want, scales, dtype)


def test_float32_accumulation_error_within_bound(rng):
    """dW accumulated in float32 over m = 4096 rows (super-tiles of 64 rows, the
    default policy) against a float64 computation: every entry within the
    blocked-sum bound (R + m / R) u sum_i |terms|, u = 2^-24 (besides the
    float32 rounding of the logits, bounded separately by RTOL); and the
    typical error, printed, far below it."""
    m, n, K = 4096, 64, 4096
    X, W, y = data(rng, m, n, K, np.float32)
    W *= 0.3
    with pytest.MonkeyPatch.context() as mp:
        calls = []
        force_vocab(mp, (None, None, None, None), calls)
        loss, dX, dW = fs.linear_cross_entropy(X, W, y, reduction="sum")
        R = policy.vocab_plan(m, n, K, True)["tile"]
    assert len(calls) == 1
    X64, W64 = X.astype(np.float64), W.astype(np.float64)
    Z = X64 @ W64.T
    P = np.exp(Z - Z.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    onehot = np.zeros((m, K))
    onehot[np.arange(m), y] = 1.0
    dW64 = (P - onehot).T @ X64
    scale = (P + onehot).T @ np.abs(X64)  # >= sum_i |D_ik| |x_il|, what rounding scales with
    # the float32 logits are off by up to a u, a = max_ik sum_l |W_kl x_il|, which
    # moves p_ik by up to 2 a u p_ik (naive.py's logit_rounding); D is stored in float32 (u)
    a = float((np.abs(X64) @ np.abs(W64).T).max())
    u = 2.0**-24
    err = np.abs(dW - dW64)
    bound = (R + m / R + 2 * a + 2) * u * scale
    assert np.all(err <= bound), float((err / bound).max())
    typical = float(np.median(err / scale))
    print(f"\nfloat32 dW: median error / scale = {typical:.2e}, max error / bound = "
          f"{float((err / bound).max()):.2f} (u = {u:.1e}, R = {R}, a = {a:.1f})")
    assert typical < np.sqrt(R + m / R + 2 * a + 2) * u


def test_default_policy_keeps_small_shapes_on_the_fused_kernel():
    """The benchmark's shapes keep their kernel at any thread count up to 64; the
    language-model heads of issue 10 take the new one from 2 threads."""
    for m, n, K in [(60_000, 784, 10), (1_000_000, 32, 4), (1_000, 50, 5),
                    (20_000, 256, 1_000), (10**6, 20, 5)]:
        for chunks in (1, 2, 8, 64):
            assert not policy.large_vocabulary(n, K, chunks), (m, n, K, chunks)
    for n, K in [(1024, 32_000), (2048, 128_256), (4096, 50_000)]:
        assert policy.large_vocabulary(n, K, 2)


MEMORY_CHILD = r"""
import json, sys
import numpy as np
import fastsoftmax as fs
import fastsoftmax._dispatch as policy
from fastsoftmax.tools.memory import RESET, peak_extra

m, n, K = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
X = rng.standard_normal((m, n), dtype=np.float32)
W = 0.03 * rng.standard_normal((K, n), dtype=np.float32)
y = rng.integers(0, K, m)
assert policy.large_vocabulary(n, K, policy.chunk_count(m))
saved, policy.VOCAB_SLAB_BYTES = policy.VOCAB_SLAB_BYTES, -1
fs.linear_cross_entropy(X[:100], W[:4096], y[:100] % 4096)  # compile or load; small buffers
policy.VOCAB_SLAB_BYTES = saved
out = []
extra, how = peak_extra(lambda: out.append(fs.linear_cross_entropy(X, W, y)))
assert how == RESET, how
print(json.dumps({"extra": extra, "tile": policy.vocab_plan(m, n, K, True)["tile"],
                  "workers": policy.chunk_count(m)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM reset is Linux-only")
def test_peak_memory_in_a_fresh_process():
    """(m, n, K) = (2048, 512, 16000) float32: the call's peak extra memory (VmHWM
    after a reset) is at most dX + dW + the policy's buffers (logits tile K,
    blocks' partials, X and dX tiles) + 12 MB of slack (interpreter
    and allocator).  The fused kernel's slabs alone would be 131 MB on 2 threads."""
    m, n, K = 2048, 512, 16_000
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pytest.skip("cannot reset VmHWM here")
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(m), str(n), str(K)],
                         check=True, capture_output=True, text=True)
    got = json.loads(out.stdout)
    assert_within_vocab_memory(got, m, n, K, policy.VOCAB_CLASS_BLOCK)
