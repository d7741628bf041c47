"""Every bad input raises a clear ValueError or TypeError before any kernel runs."""

from __future__ import annotations

import numpy as np
import pytest

import fastsoftmax as fs

m, n, K = 6, 3, 4
RNG = np.random.default_rng(0)
W0 = RNG.standard_normal((K, n))
X0 = RNG.standard_normal((m, n))
Y0 = np.array([0, 1, 2, 3, 0, 1])


def call(method, W=W0, X=X0, y=Y0, **kw):
    return fs.loss_and_grad(W, X, y, method=method, **kw)


CASES = [
    # (id, arguments, exception, words the message must contain)
    ("label -1", dict(y=np.array([0, 1, -1, 3, 0, 1])), ValueError, ["y", "-1", "[0, 4)"]),
    ("label K", dict(y=np.array([0, 1, 4, 3, 0, 1])), ValueError, ["y", "4", "[0, 4)"]),
    ("label 2**40", dict(y=np.array([0, 1, 2**40, 3, 0, 1])), ValueError, ["y", str(2**40)]),
    ("uint64 label", dict(y=np.array([0, 1, 2**63 + 5, 3, 0, 1], dtype=np.uint64)), ValueError, ["y", str(2**63 + 5)]),
    ("label -1 with other ignore", dict(y=np.array([0, 1, -1, 3, 0, 1]), ignore_index=-100), ValueError, ["-1", "ignore_index"]),
    ("non-integral float label", dict(y=np.array([0, 1, 2.5, 3, 0, 1])), ValueError, ["y", "2.5", "integer"]),
    ("nan label", dict(y=np.array([0, 1, np.nan, 3, 0, 1])), ValueError, ["y", "NaN"]),
    ("huge float label", dict(y=np.array([0, 1, 1e300, 3, 0, 1])), ValueError, ["y", "outside"]),
    ("labels too few", dict(y=Y0[:5]), ValueError, ["y", "5", "6"]),
    ("targets wrong shape", dict(y=np.ones((m, K + 1))), ValueError, ["y", f"({m}, {K})", f"({m}, {K + 1})"]),
    ("targets negative", dict(y=-np.ones((m, K))), ValueError, ["y", "non-negative"]),
    ("targets nan", dict(y=np.full((m, K), np.nan)), ValueError, ["y", "NaN"]),
    ("targets 3-D", dict(y=np.ones((m, K, 1))), ValueError, ["y", "shape"]),
    ("ignore_index with targets", dict(y=np.ones((m, K)), ignore_index=0), ValueError, ["ignore_index"]),
    ("ignore_index float", dict(ignore_index=1.5), TypeError, ["ignore_index", "1.5"]),
    ("ignore_index bool", dict(ignore_index=True), TypeError, ["ignore_index"]),
    ("X features mismatch", dict(X=np.ones((m, n + 1))), ValueError, ["X", str(n + 1), str(n)]),
    ("X 1-D", dict(X=np.ones(n)), ValueError, ["X", "2-D"]),
    ("W 1-D", dict(W=np.ones(n)), ValueError, ["W", "2-D"]),
    ("m = 0", dict(X=np.ones((0, n)), y=np.zeros(0, int)), ValueError, ["X", "no samples"]),
    ("n = 0", dict(W=np.ones((K, 0)), X=np.ones((m, 0))), ValueError, ["W", f"({K}, 0)"]),
    ("K = 0", dict(W=np.ones((0, n)), y=np.zeros(m, int)), ValueError, ["W", f"(0, {n})"]),
    ("b wrong shape", dict(b=np.ones(K + 1)), ValueError, ["b", f"({K},)", f"({K + 1},)"]),
    ("weights wrong shape", dict(sample_weight=np.ones(m + 1)), ValueError, ["sample_weight", f"({m},)"]),
    ("weights negative", dict(sample_weight=-np.ones(m)), ValueError, ["sample_weight", "non-negative"]),
    ("weights nan", dict(sample_weight=np.full(m, np.nan)), ValueError, ["sample_weight", "NaN"]),
    ("weights inf", dict(sample_weight=np.full(m, np.inf)), ValueError, ["sample_weight", "infinite"]),
    ("zero total weight", dict(sample_weight=np.zeros(m)), ValueError, ["total sample weight", "mean"]),
    ("all ignored", dict(ignore_index=0, y=np.zeros(m, int)), ValueError, ["total sample weight", "ignored"]),
    ("smoothing above 1", dict(label_smoothing=1.5), ValueError, ["label_smoothing", "[0.0, 1.0]"]),
    ("smoothing negative", dict(label_smoothing=-0.1), ValueError, ["label_smoothing"]),
    ("smoothing nan", dict(label_smoothing=float("nan")), ValueError, ["label_smoothing"]),
    ("smoothing string", dict(label_smoothing="0.1"), TypeError, ["label_smoothing"]),
    ("l2 negative", dict(l2=-1.0), ValueError, ["l2"]),
    ("l2 inf", dict(l2=float("inf")), ValueError, ["l2"]),
    ("reduction unknown", dict(reduction="avg"), ValueError, ["reduction", "avg"]),
    ("X strings", dict(X=np.full((m, n), "a")), TypeError, ["X", "dtype"]),
    ("X object", dict(X=np.empty((m, n), dtype=object)), TypeError, ["X", "object"]),
    ("X complex", dict(X=X0 + 0j), TypeError, ["X", "complex"]),
    ("X bool", dict(X=X0 > 0), TypeError, ["X", "bool"]),
    ("W strings", dict(W=[["a"] * n] * K), TypeError, ["W"]),
    ("y strings", dict(y=np.array(["a"] * m)), TypeError, ["y"]),
    ("b complex", dict(b=np.ones(K) + 1j), TypeError, ["b"]),
    ("weights strings", dict(sample_weight=["x"] * m), TypeError, ["sample_weight"]),
    ("ragged X", dict(X=[[1.0, 2.0], [3.0]]), TypeError, ["X"]),
    ("X longdouble", dict(X=X0.astype(np.longdouble)), TypeError, ["float32 or float64"]),
]


@pytest.mark.parametrize("method", ["fused", "indexloop", "numpy"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_clearly(method, case):
    _, kwargs, exc, words = case
    with pytest.raises(exc) as info:
        call(method, **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_unknown_method():
    with pytest.raises(ValueError, match=r"method must be one of .*'fast'"):
        fs.loss_and_grad(W0, X0, Y0, method="fast")


def test_sum_reduction_allows_zero_total_weight():
    loss, dW = fs.loss_and_grad(W0, X0, Y0, sample_weight=np.zeros(m), reduction="sum")
    assert loss == 0.0 and not dW.any()


def test_mean_over_weights_whose_sum_overflows_raises():
    """Finite weights whose total is inf: under "mean" the loss would be NaN
    and the gradient 0 (found by a review); a clear ValueError instead, for
    sample and class weights, in every entry point that divides by it.  The
    same weights scaled to fit give the unweighted result."""
    Z = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    y = np.array([0, 1])
    with np.errstate(over="ignore"):
        assert np.isinf(np.sum([1e308, 1e308]))  # the case: each finite, the sum not
    with pytest.raises(ValueError, match="overflows"):
        fs.loss_and_grad_logits(Z, y, sample_weight=[1e308, 1e308])
    with pytest.raises(ValueError, match="overflows"):
        fs.loss_and_grad_logits(Z, y, class_weight=[1e308, 1e308, 1.0])
    with pytest.raises(ValueError, match="overflows"):
        fs.loss_and_grad(W0, X0, Y0, sample_weight=np.full(m, 1e308))
    fine = fs.loss_and_grad_logits(Z, y, sample_weight=[1e300, 1e300])
    plain = fs.loss_and_grad_logits(Z, y)
    assert fine[0] == pytest.approx(plain[0], rel=1e-14)
    np.testing.assert_allclose(fine[1], plain[1], rtol=1e-14)
    # "sum" divides by nothing: the overflow is the arithmetic's own
    assert np.isinf(fs.loss_and_grad_logits(Z, y, sample_weight=[1e308, 1e308],
                                            reduction="sum")[0])


def test_ignore_index_in_range_of_classes():
    """ignore_index may be a valid class; those samples are then dropped."""
    got = fs.loss_and_grad(W0, X0, Y0, ignore_index=3)
    keep = Y0 != 3
    want = fs.loss_and_grad(W0, X0[keep], Y0[keep])
    assert got[0] == pytest.approx(want[0], rel=1e-12)


def test_dense_targets_overflowing_the_working_dtype():
    W = W0.astype(np.float32)
    X = X0.astype(np.float32)
    T = np.full((m, K), 1e39)  # finite in float64, inf in float32
    with pytest.raises(ValueError, match="infinite"):
        fs.loss_and_grad(W, X, T)
