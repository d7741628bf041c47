"""The options large-vocabulary users ask for (issue 10): class_weight, reduction="none",
label_smoothing up to 1, z_loss and softcap, on loss_and_grad, linear_cross_entropy and
loss_and_grad_logits, every method, both dtypes.

Checked against the float64 oracle (tests/naive.py), central finite differences and
PyTorch's F.cross_entropy (class weights, per-sample losses, smoothing 1).
Tolerances: helpers.RTOL relative to the oracle's rounding scales; finite differences
as in test_linear_ce.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsoftmax as fs
from helpers import assert_close, central_differences
from naive import naive_linear_cross_entropy, naive_logits_loss_and_grad

METHODS = ["fused", "indexloop", "numpy"]
DTYPES = [np.float32, np.float64]
M, N, K = 37, 6, 5

#: Named option sets; "cw", "sw" and "b" are replaced by random arrays.
OPTION_SETS = {
    "class_weight": {"class_weight": "cw"},
    "class_weight_smoothing": {"class_weight": "cw", "label_smoothing": 0.2,
                               "sample_weight": "sw", "b": "b"},
    "none": {"reduction": "none", "sample_weight": "sw", "b": "b"},
    "smoothing_1": {"label_smoothing": 1.0, "sample_weight": "sw"},
    "z_loss": {"z_loss": 0.3, "sample_weight": "sw"},
    "softcap": {"softcap": 1.5, "b": "b"},
    "all": {"class_weight": "cw", "reduction": "none", "z_loss": 0.05, "softcap": 2.0,
            "label_smoothing": 0.1, "sample_weight": "sw", "b": "b"},
    "all_mean": {"class_weight": "cw", "z_loss": 0.05, "softcap": 2.0,
                 "label_smoothing": 0.1, "sample_weight": "sw", "b": "b", "l2": 0.2},
}


def options(name, rng, m, K, dtype):
    kw = dict(OPTION_SETS[name])
    if "class_weight" in kw:
        cw = rng.random(K) * 2.0
        cw[0] = 0.0  # a class that does not count
        cw[-1] = 1.5
        kw["class_weight"] = cw
    if "sample_weight" in kw:
        kw["sample_weight"] = rng.random(m) + 0.1
    if "b" in kw:
        kw["b"] = (2.0 * rng.standard_normal(K)).astype(dtype)
    return kw


def data(rng, m, n, K, dtype, target):
    """Logits of a few units (so that soft-capping at 1.5 matters); labels with some
    ignored (-100) rows, or unnormalised dense targets."""
    X = rng.standard_normal((m, n)).astype(dtype)
    W = rng.standard_normal((K, n)).astype(dtype)
    if target == "labels":
        y = rng.integers(0, K, m)
        y[rng.random(m) < 0.2] = -100
        y[:K] = np.arange(K)  # every class present, class K-1 with positive weight
    else:
        y = 2.0 * rng.random((m, K))
    return X, W, y


def check(got, want, scales, dtype, names, reduction):
    assert len(got) == len(want)
    for name, g, w, s in zip(names, got, want, scales):
        if name == "loss":
            if reduction == "none":
                assert isinstance(g, np.ndarray) and g.dtype == np.float64 and g.shape == w.shape
            else:
                assert isinstance(g, float)
        else:
            assert g.dtype == np.dtype(dtype) and g.shape == np.shape(w), name
        assert_close(g, w, dtype, name, s)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", ["labels", "dense"])
@pytest.mark.parametrize("opt", list(OPTION_SETS))
def test_matches_oracle(opt, target, dtype, method, rng):
    X, W, y = data(rng, M, N, K, dtype, target)
    kw = options(opt, rng, M, K, dtype)
    if target == "labels":
        kw["ignore_index"] = -100
    want, scales = naive_linear_cross_entropy(X, W, y, return_scales=True, **kw)
    names = ("loss", "dX", "dW", "db")[:len(want)]
    got = fs.linear_cross_entropy(X, W, y, method=method, **kw)
    check(got, want, scales, dtype, names, kw.get("reduction"))
    got = fs.loss_and_grad(W, X, y, method=method, **kw)
    keep = [0] + list(range(2, len(want)))
    check(got, [want[i] for i in keep], [scales[i] for i in keep], dtype,
          [names[i] for i in keep], kw.get("reduction"))
    if target == "labels" and kw.get("reduction") == "none":
        assert np.all(got[0][y == -100] == 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", ["class_weight", "all", "all_mean"])
def test_parallel_path_matches_oracle(opt, dtype, rng, kernel_path):
    """The fused kernel's parallel path with 3-row tiles (and the serial one)."""
    X, W, y = data(rng, M, N, K, dtype, "labels")
    kw = options(opt, rng, M, K, dtype)
    kw["ignore_index"] = -100
    want, scales = naive_linear_cross_entropy(X, W, y, return_scales=True, **kw)
    got = fs.linear_cross_entropy(X, W, y, **kw)
    check(got, want, scales, dtype, ("loss", "dX", "dW", "db"), kw.get("reduction"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", ["labels", "dense"])
@pytest.mark.parametrize("opt", list(OPTION_SETS))
def test_logits_match_oracle(opt, target, dtype, rng, kernel_path):
    Z = (3.0 * rng.standard_normal((M, K))).astype(dtype)
    _, _, y = data(rng, M, 1, K, dtype, target)
    kw = options(opt, rng, M, K, dtype)
    kw.pop("b", None)
    kw.pop("l2", None)
    if target == "labels":
        kw["ignore_index"] = -100
    want, scales = naive_logits_loss_and_grad(Z, y, return_scales=True, **kw)
    got = fs.loss_and_grad_logits(Z, y, **kw)
    check(got, want, scales, dtype, ("loss", "dZ"), kw.get("reduction"))


def test_unbatched_logits_reduction_none(rng):
    Z = rng.standard_normal(K)
    loss, dZ = fs.loss_and_grad_logits(Z, 2, reduction="none", z_loss=0.1, softcap=2.0)
    want, want_dZ = naive_logits_loss_and_grad(Z[None], [2], reduction="none", z_loss=0.1,
                                               softcap=2.0)
    assert loss.shape == () and dZ.shape == (K,)
    np.testing.assert_allclose(loss, want[0], rtol=1e-12)
    np.testing.assert_allclose(dZ, want_dZ[0], rtol=1e-12, atol=1e-15)


FD_SETS = ["class_weight_smoothing", "none", "smoothing_1", "z_loss", "softcap", "all",
           "all_mean"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", FD_SETS)
def test_gradients_match_finite_differences(opt, dtype, method, rng):
    """dX, dW and db against central differences of the method's own loss (of the
    per-sample losses' sum under reduction="none"): float64 h 1e-5, atol 1e-7;
    float32 h 2^-7, atol 2e-3, relative to the gradient's largest entry."""
    h, atol = (1e-5, 1e-7) if dtype == np.float64 else (2.0**-7, 2e-3)
    m, n, k = 11, 4, 3
    X, W, y = data(rng, m, n, k, dtype, "labels")
    kw = options(opt, rng, m, k, dtype)
    kw.setdefault("b", rng.standard_normal(k).astype(dtype))
    kw["ignore_index"] = -100
    b = kw.pop("b")

    def loss(X_, W_, b_):
        return float(np.sum(fs.loss_and_grad(W_, X_, y, b=b_, method=method, **kw)[0]))

    _, dX, dW, db = fs.linear_cross_entropy(X, W, y, b=b, method=method, **kw)
    for got, fd in ((dX, central_differences(lambda A: loss(A, W, b), X, h)),
                    (dW, central_differences(lambda A: loss(X, A, b), W, h)),
                    (db, central_differences(lambda A: loss(X, W, A), b, h))):
        np.testing.assert_allclose(got, fd, rtol=0, atol=atol * max(1.0, np.abs(fd).max()))


def test_reduction_none_sums_to_reduction_sum(rng):
    X, W, y = data(rng, M, N, K, np.float64, "labels")
    kw = options("all", rng, M, K, np.float64)
    kw["ignore_index"] = -100
    for method in METHODS:
        losses, *grads = fs.linear_cross_entropy(X, W, y, method=method, **kw)
        kw_sum = dict(kw, reduction="sum")
        total, *grads_sum = fs.linear_cross_entropy(X, W, y, method=method, **kw_sum)
        assert np.sum(losses) == pytest.approx(total, rel=1e-12)
        for g, gs in zip(grads, grads_sum):
            np.testing.assert_allclose(g, gs, rtol=1e-12, atol=1e-14)


def test_unit_class_weights_change_nothing(rng):
    X, W, y = data(rng, M, N, K, np.float64, "labels")
    for method in METHODS:
        plain = fs.loss_and_grad(W, X, y, ignore_index=-100, label_smoothing=0.2, method=method)
        ones = fs.loss_and_grad(W, X, y, ignore_index=-100, label_smoothing=0.2,
                                class_weight=np.ones(K), method=method)
        assert ones[0] == pytest.approx(plain[0], rel=1e-13)
        np.testing.assert_allclose(ones[1], plain[1], rtol=1e-12, atol=1e-15)


def test_z_loss_is_normalised_by_sample_weight_not_class_weight(rng):
    """Under "mean" the z-loss term is sum_i w_i z lse_i^2 / sum_i w_i (kept samples),
    whatever the class weights; the cross-entropy is divided by sum_i w_i cw_{y_i}."""
    Z = rng.standard_normal((20, 4))
    y = rng.integers(0, 4, 20)
    sw = rng.random(20) + 0.5
    cw = np.array([0.5, 2.0, 1.0, 3.0])
    lse = np.log(np.exp(Z).sum(axis=1))
    ce = np.sum(sw * cw[y] * (lse - Z[np.arange(20), y])) / np.sum(sw * cw[y])
    zl = 0.1 * np.sum(sw * lse**2) / np.sum(sw)
    loss, _ = fs.loss_and_grad_logits(Z, y, sample_weight=sw, class_weight=cw, z_loss=0.1)
    assert loss == pytest.approx(ce + zl, rel=1e-12)


def test_softcap_bounds_the_logits():
    """Capped logits lie in (-cap, cap): a huge logit gap costs at most 2 cap."""
    Z = np.array([[1e6, -1e6]])
    loss, dZ = fs.loss_and_grad_logits(Z, [1], softcap=5.0)
    assert loss == pytest.approx(10.0 + np.log1p(np.exp(-10.0)), rel=1e-12)
    assert np.all(np.abs(dZ) < 1e-12)  # tanh is saturated: no gradient flows back


@st.composite
def option_problems(draw):
    """Small problems with every new option on (class weights, z-loss and soft-cap,
    so that only the kernels' "all options" specialisations are compiled), random
    values, every reduction, target kind and dtype."""
    m, n, k = draw(st.integers(1, 30)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    target = draw(st.sampled_from(["labels", "dense"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.standard_normal((m, n)).astype(dtype)
    W = (draw(st.sampled_from([0.1, 1.0, 5.0])) * rng.standard_normal((k, n))).astype(dtype)
    y = rng.integers(0, k, m) if target == "labels" else 2.0 * rng.random((m, k))
    kw = {"class_weight": rng.random(k) * 2.0 + 0.05,
          "z_loss": draw(st.sampled_from([1e-4, 0.1])),
          # caps for which 1 / cosh^2(z / cap) stays far above float32's smallest
          # normal number (a saturated cap is test_softcap_bounds_the_logits')
          "softcap": draw(st.sampled_from([2.0, 5.0, 50.0])),
          "label_smoothing": draw(st.sampled_from([0.0, 0.3, 1.0])),
          "reduction": draw(st.sampled_from(["mean", "sum", "none"]))}
    if draw(st.booleans()):
        kw["b"] = rng.standard_normal(k).astype(dtype)
    if draw(st.booleans()):
        kw["sample_weight"] = rng.random(m) + 0.01
    if target == "labels" and m > 1 and draw(st.booleans()):
        y[1:][rng.random(m - 1) < 0.4] = -1
        kw["ignore_index"] = -1
    return X, W, y, kw, dtype


@given(option_problems())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_all_methods_match_oracle(problem):
    X, W, y, kw, dtype = problem
    want, scales = naive_linear_cross_entropy(X, W, y, return_scales=True, **kw)
    names = ("loss", "dX", "dW", "db")[:len(want)]
    for method in METHODS:
        check(fs.linear_cross_entropy(X, W, y, method=method, **kw), want, scales, dtype,
              names, kw["reduction"])
    kw.pop("b", None)
    Z = X @ W.T
    want, scales = naive_logits_loss_and_grad(Z, y, return_scales=True, **kw)
    check(fs.loss_and_grad_logits(Z, y, **kw), want, scales, dtype, ("loss", "dZ"),
          kw["reduction"])


# --- PyTorch -------------------------------------------------------------------------


def _torch_case(torch, X, W, b, y, **kw):
    F = torch.nn.functional
    Xt = torch.from_numpy(X.copy()).requires_grad_()
    Wt = torch.from_numpy(W.copy()).requires_grad_()
    bt = torch.from_numpy(b.copy()).requires_grad_()
    if "weight" in kw:
        kw["weight"] = torch.from_numpy(kw["weight"].astype(X.dtype))
    yt = torch.from_numpy(y)
    loss = F.cross_entropy(F.linear(Xt, Wt, bt), yt, **kw)
    loss.sum().backward()
    return loss.detach().numpy(), Xt.grad.numpy(), Wt.grad.numpy(), bt.grad.numpy()


TORCH_CASES = {
    "weight": dict(weight="cw"),
    "weight_smoothing_ignore": dict(weight="cw", label_smoothing=0.3, ignore_index=-100),
    "weight_sum": dict(weight="cw", reduction="sum", ignore_index=-100),
    "none": dict(reduction="none", ignore_index=-100),
    "none_weight_smoothing": dict(reduction="none", weight="cw", label_smoothing=0.2,
                                  ignore_index=-100),
    "smoothing_1": dict(label_smoothing=1.0, ignore_index=-100),
    "smoothing_1_weight": dict(label_smoothing=1.0, weight="cw", ignore_index=-100),
    "dense_weight": dict(weight="cw", label_smoothing=0.1),
    "dense_weight_none": dict(weight="cw", reduction="none"),
    "dense_smoothing_1": dict(label_smoothing=1.0),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_matches_pytorch(case, dtype, method, rng):
    """Against F.cross_entropy(F.linear(X, W, b), y, ...) and its backward (of .sum()
    under reduction="none"): rtol 1e-10 (float64) or 1e-4 (float32), atol rtol times
    the largest entry."""
    torch = pytest.importorskip("torch")
    X, W, y = data(rng, 50, 8, 6, dtype, "dense" if case.startswith("dense") else "labels")
    if y.ndim == 2:
        y = (y / y.sum(axis=1, keepdims=True)).astype(dtype)  # probabilities, as torch wants
    b = rng.standard_normal(6).astype(dtype)
    cw = rng.random(6) + 0.2
    tkw = {k: (cw if v == "cw" else v) for k, v in TORCH_CASES[case].items()}
    if y.ndim == 1:
        tkw["ignore_index"] = -100  # torch's default; fastsoftmax's is None
    want = _torch_case(torch, X, W, b, y, **dict(tkw))
    fkw = dict(tkw)
    if "weight" in fkw:
        fkw["class_weight"] = fkw.pop("weight")
    got = fs.linear_cross_entropy(X, W, y, b=b, method=method, **fkw)
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    for g, t in zip(got, want):
        np.testing.assert_allclose(g, t, rtol=rtol, atol=rtol * np.abs(t).max())
    if y.ndim == 1:  # and the logits entry point, on the same logits
        Z = (X.astype(np.float64) @ W.T.astype(np.float64) + b).astype(dtype)
        Zt = torch.from_numpy(Z.copy()).requires_grad_()
        tk = dict(tkw)
        if "weight" in tk:
            tk["weight"] = torch.from_numpy(tk["weight"].astype(dtype))
        lt = torch.nn.functional.cross_entropy(Zt, torch.from_numpy(y), **tk)
        lt.sum().backward()
        loss, dZ = fs.loss_and_grad_logits(Z, y, **fkw)
        np.testing.assert_allclose(loss, lt.detach().numpy(), rtol=rtol,
                                   atol=rtol * np.abs(lt.detach().numpy()).max())
        np.testing.assert_allclose(dZ, Zt.grad.numpy(), rtol=rtol,
                                   atol=rtol * np.abs(Zt.grad.numpy()).max())


# --- validation ----------------------------------------------------------------------


def _message(call, kind) -> str:
    with pytest.raises(kind) as info:
        call()
    return str(info.value)


W0, X0, Y0 = np.zeros((3, 2)), np.ones((4, 2)), np.array([0, 1, 2, 1])


@pytest.mark.parametrize("kw, kind, words", [
    (dict(class_weight=np.ones(4)), ValueError, ["class_weight", "(3,)", "(4,)", "3 classes"]),
    (dict(class_weight=np.ones((3, 1))), ValueError, ["class_weight", "(3, 1)"]),
    (dict(class_weight=[1.0, -1.0, 1.0]), ValueError, ["class_weight", "non-negative", "-1.0"]),
    (dict(class_weight=[1.0, np.nan, 1.0]), ValueError, ["class_weight", "NaN"]),
    (dict(class_weight=[1.0, np.inf, 1.0]), ValueError, ["class_weight", "infinite"]),
    (dict(class_weight=["a", "b", "c"]), TypeError, ["class_weight"]),
    (dict(class_weight=[0.0, 0.0, 0.0]), ValueError, ["class_weight", "zero", "mean"]),
    (dict(z_loss=-0.1), ValueError, ["z_loss", "-0.1"]),
    (dict(z_loss=float("nan")), ValueError, ["z_loss", "nan"]),
    (dict(z_loss=float("inf")), ValueError, ["z_loss"]),
    (dict(z_loss="0.1"), TypeError, ["z_loss"]),
    (dict(softcap=0.0), ValueError, ["softcap", "positive"]),
    (dict(softcap=-1.0), ValueError, ["softcap", "-1.0"]),
    (dict(softcap=float("inf")), ValueError, ["softcap"]),
    (dict(softcap=True), TypeError, ["softcap"]),
    (dict(label_smoothing=1.5), ValueError, ["label_smoothing", "[0.0, 1.0]"]),
    (dict(reduction="none", l2=0.1), ValueError, ["l2", "reduction='none'"]),
    (dict(reduction="avg"), ValueError, ["reduction", "'none'"]),
])
def test_validation_names_the_argument(kw, kind, words):
    calls = [lambda: fs.loss_and_grad(W0, X0, Y0, **kw),
             lambda: fs.linear_cross_entropy(X0, W0, Y0, **kw)]
    if "l2" not in kw:  # the logits entry point has no l2
        calls.append(lambda: fs.loss_and_grad_logits(X0 @ W0.T, Y0, **kw))
    for call in calls:
        text = _message(call, kind)
        for word in words:
            assert word in text, text


@pytest.mark.parametrize("kw, name", [
    (dict(class_weight=np.ones(3)), "class_weight"),
    (dict(z_loss=0.1), "z_loss"),
    (dict(softcap=3.0), "softcap"),
    (dict(reduction="none"), "reduction='none'"),
])
def test_sparse_x_rejects_the_new_options(kw, name):
    sparse = pytest.importorskip("scipy.sparse")
    text = _message(lambda: fs.loss_and_grad(W0, sparse.csr_matrix(X0), Y0, **kw), ValueError)
    assert name in text and "sparse" in text


def test_sparse_x_takes_label_smoothing_1():
    sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(3)
    X, W, y = rng.standard_normal((9, 4)), rng.standard_normal((3, 4)), rng.integers(0, 3, 9)
    for method in METHODS:
        got = fs.loss_and_grad(W, sparse.csr_matrix(X), y, label_smoothing=1.0, method=method)
        want = fs.loss_and_grad(W, X, y, label_smoothing=1.0, method="numpy")
        assert got[0] == pytest.approx(want[0], rel=1e-12)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-15)
