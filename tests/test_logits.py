"""loss_and_grad_logits: the oracle, finite differences, PyTorch, loss_and_grad, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsoftmax as fs
from fastsoftmax.tools.problems import TARGET_KINDS, features, ignore_labels
from fastsoftmax.tools.problems import targets as make_targets
from helpers import assert_close
from naive import naive_logits_loss_and_grad

DTYPES = [np.float32, np.float64]
TARGETS = list(TARGET_KINDS)


def logits(rng, m, K, dtype, scale=2.0):
    """(m, K) standard-normal logits times ``scale``."""
    return features(rng, m, K, dtype, scale)


OPTIONS = {
    "plain": {},
    "weights": {"sample_weight": "w"},
    "smoothing": {"label_smoothing": 0.2},
    "sum": {"reduction": "sum"},
    "all": {"sample_weight": "w", "label_smoothing": 0.1, "reduction": "sum"},
}


def resolve(opt, rng, m):
    return {k: (rng.random(m) * 2 if v == "w" else v) for k, v in OPTIONS[opt].items()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("opt", list(OPTIONS))
def test_matches_oracle(dtype, target, opt, rng, kernel_path):
    m, K = 45, 6
    Z = logits(rng, m, K, dtype)
    y = make_targets(rng, target, m, K)
    kw = resolve(opt, rng, m)
    loss, dZ = fs.loss_and_grad_logits(Z, y, **kw)
    want_loss, want_dZ = naive_logits_loss_and_grad(Z, y, **kw)
    assert isinstance(loss, float) and dZ.dtype == dtype and dZ.shape == (m, K)
    assert_close(loss, want_loss, dtype, "loss")
    assert_close(dZ, want_dZ, dtype, "dZ")


@pytest.mark.parametrize("dtype", DTYPES)
def test_ignored_rows_have_zero_gradient(dtype, rng, kernel_path):
    m, K = 60, 4
    Z = logits(rng, m, K, dtype)
    y = ignore_labels(rng.integers(0, K, m), rng)
    Z[y == -100] = np.nan  # dropped rows are never read
    sw = rng.random(m)
    for reduction in ("mean", "sum"):
        loss, dZ = fs.loss_and_grad_logits(Z, y, ignore_index=-100, sample_weight=sw,
                                           label_smoothing=0.1, reduction=reduction)
        want_loss, want_dZ = naive_logits_loss_and_grad(
            np.where(np.isnan(Z), 0.0, Z), y, ignore_index=-100, sample_weight=sw,
            label_smoothing=0.1, reduction=reduction)
        assert np.all(dZ[y == -100] == 0)
        assert_close(loss, want_loss, dtype, "loss")
        assert_close(dZ, want_dZ, dtype, "dZ")


@pytest.mark.parametrize("dtype", DTYPES)
def test_equals_loss_and_grad_with_identity_weights(dtype, rng):
    """With X = Z and W = I, loss_and_grad's dW is sum_i dZ_i Z_i^T."""
    m, K = 300, 5
    Z = logits(rng, m, K, dtype)
    y = rng.integers(0, K, m)
    loss, dZ = fs.loss_and_grad_logits(Z, y, label_smoothing=0.1)
    loss2, dW = fs.loss_and_grad(np.eye(K, dtype=dtype), Z, y, label_smoothing=0.1)
    assert loss == pytest.approx(loss2, rel=1e-12 if dtype == np.float64 else 1e-6)
    assert_close(dZ.astype(np.float64).T @ Z.astype(np.float64), dW, dtype, "dW")


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_differences(dtype, rng, kernel_path):
    h, atol = (1e-5, 1e-7) if dtype == np.float64 else (2.0**-7, 2e-3)
    m, K = 9, 4
    Z = logits(rng, m, K, dtype)
    y = make_targets(rng, "probs", m, K)
    kw = {"sample_weight": rng.random(m), "label_smoothing": 0.1}
    _, dZ = fs.loss_and_grad_logits(Z, y, **kw)
    fd = np.zeros((m, K))
    for idx in np.ndindex(Z.shape):
        Zp, Zm = Z.copy(), Z.copy()
        Zp[idx] += h
        Zm[idx] -= h
        step = float(Zp[idx]) - float(Zm[idx])
        fd[idx] = (fs.loss_and_grad_logits(Zp, y, **kw)[0]
                   - fs.loss_and_grad_logits(Zm, y, **kw)[0]) / step
    np.testing.assert_allclose(dZ, fd, rtol=0, atol=atol * max(1.0, np.abs(fd).max()))


TORCH_CASES = [
    dict(),
    dict(label_smoothing=0.15),
    dict(ignore_index=-100),
    dict(ignore_index=2, label_smoothing=0.3, reduction="sum"),
    dict(reduction="sum"),
    dict(targets="probs"),
    dict(targets="probs", label_smoothing=0.2),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=[str(c) for c in TORCH_CASES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_pytorch_cross_entropy(case, dtype, rng):
    torch = pytest.importorskip("torch")
    m, K = 70, 5
    Z = logits(rng, m, K, dtype)
    kw = dict(case)
    kind = kw.pop("targets", "labels")
    if kind == "labels":
        y = rng.integers(0, K, m)
        if kw.get("ignore_index") == -100:
            y = ignore_labels(y, rng)
        target = torch.from_numpy(y)
    else:
        y = make_targets(rng, "probs", m, K).astype(dtype)
        target = torch.from_numpy(y)
    Zt = torch.from_numpy(Z.copy()).requires_grad_()
    torch_kw = {k: v for k, v in kw.items()}
    out = torch.nn.functional.cross_entropy(Zt, target, **torch_kw)
    out.backward()
    loss, dZ = fs.loss_and_grad_logits(Z, y, **kw)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert loss == pytest.approx(out.item(), rel=tol, abs=tol)
    np.testing.assert_allclose(dZ, Zt.grad.numpy(), rtol=tol, atol=tol)


@st.composite
def logit_problems(draw):
    m = draw(st.integers(1, 60))
    K = draw(st.integers(1, 9))
    dtype = draw(st.sampled_from(DTYPES))
    target = draw(st.sampled_from(TARGETS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0, 1e5]))
    Z = logits(rng, m, K, dtype, scale)
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        Z = np.asfortranarray(Z)
    elif layout == "strided":
        big = np.zeros((m, 2 * K), dtype)
        big[:, ::2] = Z
        Z = big[:, ::2]
    y = make_targets(rng, target, m, K)
    kw = {"label_smoothing": draw(st.sampled_from([0.0, 0.05])),
          "reduction": draw(st.sampled_from(["mean", "sum"]))}
    if draw(st.booleans()):
        kw["sample_weight"] = rng.random(m) + 0.01
    if target == "labels" and draw(st.booleans()):
        y = ignore_labels(y, rng)
        kw["ignore_index"] = -100
    return Z, y, kw, dtype


@given(logit_problems())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_matches_oracle(kernel_path, problem):
    Z, y, kw, dtype = problem
    loss, dZ = fs.loss_and_grad_logits(Z, y, **kw)
    want_loss, want_dZ = naive_logits_loss_and_grad(Z, y, **kw)
    assert_close(loss, want_loss, dtype, "loss", scale=abs(want_loss) + np.abs(Z).max())
    assert_close(dZ, want_dZ, dtype, "dZ", scale=max(1.0, float(np.abs(want_dZ).max())))


@pytest.mark.parametrize(
    "args, exc, words",
    [
        (dict(Z=np.ones((4, 3, 1))), ValueError, ["Z", "2-D", "1-D"]),
        (dict(Z=np.ones((0, 3)), y=np.zeros(0, int)), ValueError, ["Z", "(0, 3)"]),
        (dict(Z=np.ones((4, 0))), ValueError, ["Z", "(4, 0)"]),
        (dict(y=np.array([0, 1, 3, 0])), ValueError, ["y", "3", "[0, 3)"]),
        (dict(y=np.array([0, 1])), ValueError, ["y", "2", "4"]),
        (dict(y=np.ones((4, 2))), ValueError, ["y", "(4, 3)"]),
        (dict(sample_weight=-np.ones(4)), ValueError, ["sample_weight"]),
        (dict(label_smoothing=1.5), ValueError, ["label_smoothing"]),
        (dict(reduction="avg"), ValueError, ["reduction"]),
        (dict(Z=np.ones((4, 3), dtype=complex)), TypeError, ["Z", "complex"]),
        (dict(ignore_index=0.5), TypeError, ["ignore_index"]),
    ],
)
def test_bad_input(args, exc, words):
    kw = dict(Z=np.zeros((4, 3)), y=np.array([0, 1, 2, 0]))
    kw.update(args)
    Z, y = kw.pop("Z"), kw.pop("y")
    with pytest.raises(exc) as info:
        fs.loss_and_grad_logits(Z, y, **kw)
    for word in words:
        assert word in str(info.value)


# --- un-batched (K,) logits, as torch.nn.functional.cross_entropy takes them ---------------

UNBATCHED_TARGETS = ["index", "float_index", "onehot", "probs", "nonneg"]


def unbatched_target(rng, kind, K):
    label = int(rng.integers(0, K))
    if kind == "index":
        return label
    if kind == "float_index":
        return np.float64(label)
    return make_targets(rng, {"onehot": "onehot", "probs": "probs", "nonneg": "nonneg"}[kind],
                        1, K)[0]


UNBATCHED_OPTIONS = {"plain": {}, "smoothing": {"label_smoothing": 0.15}, "sum": {"reduction": "sum"},
                     "weight-sum": {"sample_weight": 2.5, "reduction": "sum"},
                     "weight-mean": {"sample_weight": 0.3}, "ignore": {"ignore_index": -100}}
# ignore_index applies to class indices only
UNBATCHED_CASES = [(t, o) for t in UNBATCHED_TARGETS for o in UNBATCHED_OPTIONS
                   if o != "ignore" or t in ("index", "float_index")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target, opt", UNBATCHED_CASES, ids=[f"{t}-{o}" for t, o in UNBATCHED_CASES])
def test_unbatched_matches_oracle(dtype, target, opt, rng):
    K = 7
    kw = UNBATCHED_OPTIONS[opt]
    z = logits(rng, 1, K, dtype)[0]
    y = unbatched_target(rng, target, K)
    loss, dz = fs.loss_and_grad_logits(z, y, **kw)
    oracle_kw = dict(kw)
    if "sample_weight" in oracle_kw:
        oracle_kw["sample_weight"] = np.array([oracle_kw["sample_weight"]])
    want_loss, want_dZ = naive_logits_loss_and_grad(z[None], np.asarray(y)[None], **oracle_kw)
    assert isinstance(loss, float) and dz.shape == (K,) and dz.dtype == dtype
    assert_close(loss, want_loss, dtype, "loss")
    assert_close(dz, want_dZ[0], dtype, "dZ")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", ["index", "probs"])
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.2}, {"reduction": "sum"}],
                         ids=["plain", "smoothing", "sum"])
def test_unbatched_matches_pytorch(dtype, target, kw, rng):
    torch = pytest.importorskip("torch")
    K = 5
    z = logits(rng, 1, K, dtype)[0]
    y = unbatched_target(rng, target, K)
    loss, dz = fs.loss_and_grad_logits(z, y, **kw)
    zt = torch.from_numpy(z.copy()).requires_grad_()
    tt = torch.tensor(y) if target == "index" else torch.from_numpy(y.astype(dtype))
    out = torch.nn.functional.cross_entropy(zt, tt, **kw)
    out.backward()
    assert zt.grad.shape == (K,) and dz.shape == (K,)
    assert_close(loss, out.item(), dtype, "loss")
    assert_close(dz, zt.grad.numpy(), dtype, "dZ")


@pytest.mark.parametrize(
    "z, y, kw, exc, words",
    [
        (np.zeros(3), np.zeros(4), {}, ValueError, ["y", "(3,)", "(4,)"]),
        (np.zeros(3), np.zeros((1, 3)), {}, ValueError, ["y", "scalar"]),
        (np.zeros(3), 3, {}, ValueError, ["y", "3", "[0, 3)"]),
        (np.zeros(3), 1.5, {}, ValueError, ["y", "1.5"]),
        (np.zeros(3), 1, {"sample_weight": np.ones(1)}, ValueError, ["sample_weight", "scalar"]),
        (np.zeros(3), 1, {"sample_weight": -1.0}, ValueError, ["sample_weight"]),
        (np.zeros(3), -100, {"ignore_index": -100}, ValueError, ["total sample weight"]),
        (np.zeros(3), -np.ones(3), {}, ValueError, ["y", "non-negative"]),
        (np.zeros(0), 0, {}, ValueError, ["Z", "(0,)"]),
    ],
)
def test_unbatched_bad_input(z, y, kw, exc, words):
    with pytest.raises(exc) as info:
        fs.loss_and_grad_logits(z, y, **kw)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
