"""fastsoftmax.torch: the autograd function and module against PyTorch's own.

Oracles: ``torch.nn.functional.linear_cross_entropy`` and
``F.cross_entropy(F.linear(...))`` (PyTorch's code, sharing none with the
kernels), ``torch.autograd.gradcheck`` (finite differences, float64) and,
for fastsoftmax's extra options z_loss and softcap, their formula written
with torch operations.  Tolerances are ``torch.testing.assert_close``'s
defaults for the dtype compared (PyTorch's own: float64 rtol 1e-7 atol 1e-7,
float32 rtol 1.3e-6 atol 1e-5, float16 rtol 1e-3 atol 1e-5, bfloat16 rtol
1.6e-2 atol 1e-5).  bfloat16 and float16 results are compared with PyTorch
run in float32 on the same values (exactly representable), rounded to the
dtype: that is what fastsoftmax computes in float32 (PyTorch's own bfloat16
path rounds its logits to bfloat16 and is less accurate than that).  This
module pins that path for bfloat16; the path of CPUs with bfloat16 matrix
units, on PyTorch's bfloat16 products, is tested in tests/test_torch_head.py.

Options that ``fastsoftmax.linear_cross_entropy`` gains with the options
work of issue 10 (per-class weights, reduction="none", label smoothing 1.0,
z_loss, softcap) are probed on the installed package and their tests
skipped, saying so, until it has them.
"""

from __future__ import annotations

import inspect
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import fastsoftmax as fs  # noqa: E402
import fastsoftmax.torch as fst  # noqa: E402
from helpers import assert_within_vocab_memory  # noqa: E402


def _accepts(**kw) -> bool:
    """Whether fastsoftmax.linear_cross_entropy takes these options (a tiny call)."""
    if not set(kw) <= set(inspect.signature(fs.linear_cross_entropy).parameters):
        return False
    try:
        fs.linear_cross_entropy(np.ones((2, 1)), np.ones((3, 1)), np.array([0, 2]), **kw)
    except (TypeError, ValueError):
        return False
    return True


#: feature -> whether the installed fastsoftmax.linear_cross_entropy has it
FEATURES = {
    "class_weight": _accepts(class_weight=np.ones(3)),
    "none": _accepts(reduction="none"),
    "smoothing-1": _accepts(label_smoothing=1.0),
    "z_loss": _accepts(z_loss=0.1),
    "softcap": _accepts(softcap=5.0),
}

HAS_TORCH_LCE = hasattr(F, "linear_cross_entropy")


@pytest.fixture(autouse=True)
def bfloat16_in_float32(monkeypatch):
    """bfloat16 computed in float32 in this module, the path of CPUs without
    bfloat16 hardware (AMX, AVX-512 BF16), whatever this CPU has (PyTorch's
    bfloat16 products, the other path, have their own tests:
    tests/test_torch_head.py)."""
    monkeypatch.setattr(fst, "fast_bfloat16_products", lambda: False)


def require(*features):
    missing = [f for f in features if not FEATURES[f]]
    if missing:
        pytest.skip(f"fastsoftmax.linear_cross_entropy lacks {missing} (options of issue 10 "
                    f"not merged yet)")


# --- problems ---------------------------------------------------------------------------------

#: name -> (features needed, torch keywords; "bias" and "target" are ours, see problem())
CASES = {
    "plain": ((), {}),
    "bias": ((), {"bias": True}),
    "sum": ((), {"bias": True, "reduction": "sum"}),
    "ignore-default": ((), {"bias": True, "target": "labels-ignored"}),
    "ignore-custom": ((), {"ignore_index": 2}),
    "smoothing": ((), {"bias": True, "label_smoothing": 0.15, "target": "labels-ignored"}),
    "smoothing-sum": ((), {"label_smoothing": 0.3, "reduction": "sum"}),
    "probs": ((), {"bias": True, "target": "probs"}),
    "probs-smoothing-sum": ((), {"target": "probs", "label_smoothing": 0.2, "reduction": "sum"}),
    "none": (("none",), {"bias": True, "reduction": "none", "target": "labels-ignored"}),
    "none-probs": (("none",), {"reduction": "none", "target": "probs"}),
    "smoothing-1": (("smoothing-1",), {"bias": True, "label_smoothing": 1.0}),
    "weight": (("class_weight",), {"bias": True, "weight": True, "target": "labels-ignored"}),
    "weight-smoothing": (("class_weight",), {"weight": True, "label_smoothing": 0.2,
                                             "target": "labels-ignored"}),
    "weight-sum": (("class_weight",), {"weight": True, "reduction": "sum"}),
    "weight-none": (("class_weight", "none"), {"bias": True, "weight": True,
                                               "reduction": "none", "target": "labels-ignored"}),
    "weight-probs": (("class_weight",), {"weight": True, "target": "probs"}),
    "weight-probs-smoothing": (("class_weight",), {"weight": True, "target": "probs",
                                                   "label_smoothing": 0.1}),
}


def problem(case: str, dtype, m=23, n=6, C=5, seed=0, unbatched=False):
    """(tensors, torch keywords) of a case: input, linear_weight, target, linear_bias
    in ``dtype`` (values exact in bfloat16), with requires_grad."""
    features, spec = CASES[case]
    require(*features)
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0):
        t = (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(torch.bfloat16)
        return t.to(dtype).requires_grad_()  # bfloat16 values: exact in every dtype tested

    X, W = leaf(n) if unbatched else leaf(m, n), leaf(C, n, scale=0.7)
    kw = {k: v for k, v in spec.items() if k not in ("bias", "target", "weight")}
    b = leaf(C) if spec.get("bias") else None
    if spec.get("weight"):
        kw["weight"] = (0.2 + torch.rand(C, generator=g, dtype=torch.float64)).to(torch.bfloat16).to(dtype)
    target = spec.get("target", "labels")
    batch = () if unbatched else (m,)
    if target == "probs":
        y = torch.softmax(torch.randn(*batch, C, generator=g, dtype=torch.float64), -1)
        y = y.to(torch.bfloat16).to(dtype)
    else:
        y = torch.randint(0, C, batch, generator=g)
        if target == "labels-ignored" and not unbatched:
            y[torch.rand(m, generator=g) < 0.3] = -100
            y[0] = 1
    return (X, W, y, b), kw


def grad_outputs(loss, seed=1):
    """An incoming gradient: mixed signs for per-sample losses, 0.75 for a scalar
    (values exact in bfloat16, so the same in every dtype)."""
    if loss.dim() == 0:
        return torch.full_like(loss, 0.75)
    g = torch.Generator().manual_seed(seed)
    g = torch.randn(loss.shape, generator=g, dtype=torch.float64).to(torch.bfloat16)
    return g.to(loss.dtype)


def run(fn, tensors, kw, fn_kw=None):
    """Loss and the gradients of the leaves that require grad, for ``fn``."""
    X, W, y, b = tensors
    loss = fn(X, W, y, linear_bias=b, **kw, **(fn_kw or {}))
    leaves = [t for t in (X, W, b) if t is not None]
    grads = torch.autograd.grad(loss, leaves, grad_outputs(loss))
    return [loss.detach(), *grads]


def torch_linear_ce(X, W, y, *, linear_bias=None, **kw):
    return F.linear_cross_entropy(X, W, y, linear_bias=linear_bias, **kw)


def torch_ce_of_logits(X, W, y, *, linear_bias=None, ignore_index=None, **kw):
    """PyTorch's cross_entropy of the logits (its ignore_index default is -100)."""
    return F.cross_entropy(F.linear(X, W, linear_bias), y,
                           ignore_index=-100 if ignore_index is None else ignore_index, **kw)


REFERENCES = {"F.linear_cross_entropy": torch_linear_ce, "F.cross_entropy": torch_ce_of_logits}
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def upcast(tensors, kw, dtype):
    """The problem's tensors in ``dtype`` (new leaves), and its keywords."""
    def up(t):
        if t is None or not t.is_floating_point():
            return t
        return t.detach().to(dtype).requires_grad_(t.requires_grad)
    return [up(t) for t in tensors], {k: up(v) if isinstance(v, torch.Tensor) else v
                                      for k, v in kw.items()}


def assert_results_equal(got, want, dtype):
    names = ["loss", "d input", "d linear_weight", "d linear_bias"]
    for name, g, w in zip(names, got, want):
        assert g.dtype == dtype and g.shape == w.shape, name
        torch.testing.assert_close(g, w.to(dtype), msg=lambda m, name=name: f"{name}: {m}")


# --- agreement with PyTorch -------------------------------------------------------------------


@pytest.mark.parametrize("reference", list(REFERENCES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_pytorch(case, dtype, reference):
    if reference == "F.linear_cross_entropy" and not HAS_TORCH_LCE:
        pytest.skip("this torch has no F.linear_cross_entropy")
    tensors, kw = problem(case, dtype)
    got = run(fst.linear_cross_entropy, tensors, kw)
    ref_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    want = run(REFERENCES[reference], *upcast(tensors, kw, ref_dtype))
    assert_results_equal(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ["plain", "bias", "smoothing", "probs", "none", "weight-probs"])
def test_unbatched_input_matches_pytorch(case, dtype):
    tensors, kw = problem(case, dtype, unbatched=True)
    got = run(fst.linear_cross_entropy, tensors, kw)
    ref_dtype = dtype if dtype != torch.bfloat16 else torch.float32
    want = run(torch_ce_of_logits, *upcast(tensors, kw, ref_dtype))
    assert got[0].shape == () and got[1].shape == tensors[0].shape
    assert_results_equal(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int16])
def test_other_integer_targets(dtype):
    """PyTorch takes Byte as well as Long class indices (fastsoftmax also other integers)."""
    tensors, kw = problem("plain", torch.float64)
    X, W, y, b = tensors
    for ignore in (None, 1):
        got = run(fst.linear_cross_entropy, (X, W, y.to(dtype), b), dict(kw, ignore_index=ignore))
        want = run(torch_ce_of_logits, tensors, dict(kw, ignore_index=ignore))
        assert_results_equal(got, want, torch.float64)


def test_ignore_index_default_is_minus_100_for_class_indices():
    tensors, kw = problem("ignore-default", torch.float64)
    y = tensors[2]
    assert (y == -100).any()
    got = run(fst.linear_cross_entropy, tensors, kw)
    want = run(torch_ce_of_logits, tensors, dict(kw, ignore_index=-100))
    assert_results_equal(got, want, torch.float64)
    assert torch.all(got[1][y == -100] == 0)


# --- finite differences -----------------------------------------------------------------------

#: name -> (features, keywords of fastsoftmax.torch.linear_cross_entropy beyond CASES)
EXTRAS = {
    "z_loss": (("z_loss",), "smoothing", {"z_loss": 0.05}),
    "softcap": (("softcap",), "bias", {"softcap": 1.5}),
    "z_loss-softcap-none": (("z_loss", "softcap", "none"), "none", {"z_loss": 0.1, "softcap": 2.0}),
    "everything": (("z_loss", "softcap", "class_weight"), "weight-smoothing",
                   {"z_loss": 0.02, "softcap": 3.0}),
}


def gradcheck(tensors, kw, fn_kw=None):
    X, W, y, b = tensors
    leaves = tuple(t for t in (X, W, b) if t is not None)

    def f(*args):
        Xa, Wa, *ba = args
        return fst.linear_cross_entropy(Xa, Wa, y, linear_bias=ba[0] if ba else None, **kw,
                                        **(fn_kw or {}))

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_gradcheck(case):
    tensors, kw = problem(case, torch.float64, m=7, n=4, C=3)
    gradcheck(tensors, kw)


@pytest.mark.parametrize("extra", list(EXTRAS))
def test_gradcheck_extra_options(extra):
    features, case, fn_kw = EXTRAS[extra]
    require(*features)
    tensors, kw = problem(case, torch.float64, m=7, n=4, C=3)
    gradcheck(tensors, kw, fn_kw)


def z_loss_softcap_reference(X, W, y, *, linear_bias=None, reduction="mean", ignore_index=-100,
                             label_smoothing=0.0, z_loss=0.0, softcap=None):
    """The extra options' definition in torch operations: logits soft-capped, then
    cross-entropy plus z_loss * logsumexp**2 per kept sample, averaged over kept samples."""
    z = F.linear(X, W, linear_bias)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    ce = F.cross_entropy(z, y, ignore_index=ignore_index, label_smoothing=label_smoothing,
                         reduction="none")
    kept = (y != ignore_index).to(z.dtype)
    per_sample = ce + z_loss * torch.logsumexp(z, -1) ** 2 * kept
    if reduction == "none":
        return per_sample
    return per_sample.sum() / (kept.sum() if reduction == "mean" else 1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("extra", ["z_loss", "softcap", "z_loss-softcap-none"])
def test_extra_options_match_their_definition(extra, dtype):
    features, case, fn_kw = EXTRAS[extra]
    require(*features)
    tensors, kw = problem(case, dtype)
    got = run(fst.linear_cross_entropy, tensors, kw, fn_kw)
    want = run(z_loss_softcap_reference, tensors, kw, fn_kw)
    assert_results_equal(got, want, dtype)


# --- reduction="none": the weighted recomputation ---------------------------------------------


@pytest.mark.parametrize("signs", ["mixed", "positive", "negative", "one-hot"])
def test_weighted_gradients_of_per_sample_losses(signs):
    """sum_i g_i dloss_i/dW (and /db) for any real g, from sample-weighted sums
    (what backward of reduction="none" recomputes), against PyTorch's autograd of
    sum_i g_i F.cross_entropy(..., reduction="none")_i."""
    (X, W, y, b), kw = problem("smoothing", torch.float64)
    g = torch.randn(X.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g = {"mixed": g, "positive": g.abs(), "negative": -g.abs(),
         "one-hot": torch.eye(X.shape[0], dtype=torch.float64)[4]}[signs]
    per_sample = F.cross_entropy(F.linear(X, W, b), y, reduction="none", **kw)
    want = torch.autograd.grad(per_sample, (W, b), g)
    np_kw = {"ignore_index": -100, "label_smoothing": kw["label_smoothing"]}
    got = fst.weighted_gradients(X.detach().numpy(), W.detach().numpy(), b.detach().numpy(),
                                 y.numpy(), np_kw, g.numpy(), torch.float64)
    for gt, wt in zip(got, want):
        torch.testing.assert_close(gt, wt)


def test_none_backward_with_equal_and_unequal_incoming_gradients(monkeypatch):
    """Equal entries of the incoming gradient reuse the forward's gradients (no
    second kernel call); unequal ones recompute them (one call per sign)."""
    require("none")
    tensors, kw = problem("none", torch.float64)
    X, W, y, b = tensors
    calls = []
    real = fst.numpy_linear_cross_entropy
    monkeypatch.setattr(fst, "numpy_linear_cross_entropy",
                        lambda *a, **k: calls.append(k) or real(*a, **k))
    ref = F.cross_entropy(F.linear(X, W, b), y, reduction="none")
    for g, n_calls in ((torch.full((X.shape[0],), 0.3, dtype=torch.float64), 1),
                       (torch.rand(X.shape[0], dtype=torch.float64), 2),
                       (torch.randn(X.shape[0], dtype=torch.float64), 3)):
        calls.clear()
        loss = fst.linear_cross_entropy(X, W, y, linear_bias=b, **kw)
        got = torch.autograd.grad(loss, (X, W, b), g)
        want = torch.autograd.grad(ref, (X, W, b), g, retain_graph=True)
        assert len(calls) == n_calls
        for gt, wt in zip(got, want):
            torch.testing.assert_close(gt, wt)


# --- memory, layouts, autograd plumbing -------------------------------------------------------


def test_cpu_tensors_reach_the_kernel_without_copies(monkeypatch):
    X = torch.randn(40, 8, dtype=torch.float32)
    W = torch.randn(5, 8, dtype=torch.float32, requires_grad=True)
    Xt = torch.randn(8, 40).t()  # a non-contiguous view: read through its strides
    seen = []
    real = fst.numpy_linear_cross_entropy
    monkeypatch.setattr(fst, "numpy_linear_cross_entropy",
                        lambda *a, **k: seen.append(a) or real(*a, **k))
    y = torch.randint(0, 5, (40,))
    for inp in (X, Xt):
        fst.linear_cross_entropy(inp, W, y)
        Xn, Wn, yn = seen[-1]
        assert np.shares_memory(Xn, inp.numpy()) and np.shares_memory(Wn, W.detach().numpy())
        assert np.shares_memory(yn, y.numpy())
    assert not seen[-1][0].flags.c_contiguous


def test_non_contiguous_tensors_give_the_same_results():
    tensors, kw = problem("bias", torch.float64)
    X, W, y, b = tensors
    want = run(fst.linear_cross_entropy, tensors, kw)
    Xs = torch.stack([X.detach(), -X.detach()], -1)[..., 0].requires_grad_()  # stride 2
    Wt = W.detach().t().contiguous().t().requires_grad_()  # Fortran order
    assert Xs.stride() == (2 * X.shape[1], 2) and not Wt.is_contiguous()
    got = run(fst.linear_cross_entropy, (Xs, Wt, y, b), kw)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_only_the_gradients_asked_for():
    tensors, kw = problem("bias", torch.float32)
    X, W, y, b = tensors
    X.requires_grad_(False)
    loss = fst.linear_cross_entropy(X, W, y, linear_bias=b)
    assert loss.grad_fn.grads[0] is None  # dX dropped in forward
    loss.backward()
    assert X.grad is None and W.grad is not None and b.grad is not None
    with torch.no_grad():
        loss2 = fst.linear_cross_entropy(X, W, y, linear_bias=b)
    assert loss2.grad_fn is None and loss2.item() == loss.item()


def test_backward_twice_with_retain_graph_gives_the_same_gradients():
    tensors, kw = problem("bias", torch.float64)
    X, W, y, b = tensors
    loss = fst.linear_cross_entropy(X, W, y, linear_bias=b)
    first = torch.autograd.grad(loss, (X, W, b), retain_graph=True)
    second = torch.autograd.grad(loss, (X, W, b))
    for f, s in zip(first, second):
        assert torch.equal(f, s)


def test_gradients_flow_to_the_layers_below():
    torch.manual_seed(0)
    x = torch.randn(30, 5, dtype=torch.float64)
    lin = torch.nn.Linear(5, 7, dtype=torch.float64)
    W = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (30,))
    fst.linear_cross_entropy(torch.tanh(lin(x)), W, y, label_smoothing=0.1).backward()
    got = [p.grad.clone() for p in (*lin.parameters(), W)]
    for p in (*lin.parameters(), W):
        p.grad = None
    F.cross_entropy(F.linear(torch.tanh(lin(x)), W), y, label_smoothing=0.1).backward()
    for g, p in zip(got, (*lin.parameters(), W)):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("what", ["all-ignored", "empty"])
def test_no_sample_like_pytorch(what, reduction):
    """A mean over no sample is NaN with zero gradients; sum 0; none empty or zeros."""
    if reduction == "none":
        require("none")
    m = 0 if what == "empty" else 5
    X = torch.randn(m, 3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.full((m,), -100)
    got = run(fst.linear_cross_entropy, (X, W, y, None), {"reduction": reduction})
    want = run(torch_ce_of_logits, (X, W, y, None), {"reduction": reduction})
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, equal_nan=True)


def test_mean_over_zero_class_weight_like_pytorch():
    require("class_weight")
    X = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 2, -100, 2])
    w = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    got = run(fst.linear_cross_entropy, (X, W, y, None), {"weight": w})
    want = run(torch_ce_of_logits, (X, W, y, None), {"weight": w})
    for g, wt in zip(got, want):
        torch.testing.assert_close(g, wt, equal_nan=True)


def test_pytorch_options_are_accepted():
    if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        pytest.skip("this torch has no LinearCrossEntropyOptions")
    tensors, kw = problem("plain", torch.float64)
    got = run(fst.linear_cross_entropy, tensors, kw, {"options": torch.nn.LinearCrossEntropyOptions()})
    want = run(fst.linear_cross_entropy, tensors, kw)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_signature_matches_pytorch():
    """PyTorch's arguments, in its order, with its defaults; then our extras."""
    if not HAS_TORCH_LCE:
        pytest.skip("this torch has no F.linear_cross_entropy")
    ours = inspect.signature(fst.linear_cross_entropy).parameters
    theirs = inspect.signature(F.linear_cross_entropy).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    for name, p in theirs.items():
        assert (ours[name].kind, ours[name].default) == (p.kind, p.default), name
    assert list(ours)[len(theirs):] == ["z_loss", "softcap"]
    assert all(ours[n].kind is inspect.Parameter.KEYWORD_ONLY for n in ("z_loss", "softcap"))
    ours_m = inspect.signature(fst.LinearCrossEntropyLoss).parameters
    theirs_m = inspect.signature(torch.nn.LinearCrossEntropyLoss).parameters
    assert list(ours_m)[:len(theirs_m)] == list(theirs_m)
    for name, p in theirs_m.items():
        assert (ours_m[name].kind, ours_m[name].default) == (p.kind, p.default), name


# --- the module -------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_module_matches_pytorch_module(bias):
    if not hasattr(torch.nn, "LinearCrossEntropyLoss"):
        pytest.skip("this torch has no nn.LinearCrossEntropyLoss")
    torch.manual_seed(0)
    kw = dict(bias=bias, dtype=torch.float64, label_smoothing=0.1)
    theirs = torch.nn.LinearCrossEntropyLoss(6, 5, **kw)
    ours = fst.LinearCrossEntropyLoss(6, 5, **kw)
    ours.load_state_dict(theirs.state_dict())  # same parameters, same names
    x = torch.randn(20, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (20,))
    ours(x, y).backward()
    theirs(x, y).backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    torch.testing.assert_close(ours(x, y), theirs(x, y))


def test_module_class_weights_are_a_buffer():
    require("class_weight")
    w = torch.rand(5, dtype=torch.float64) + 0.5
    mod = fst.LinearCrossEntropyLoss(4, 5, weight=w, dtype=torch.float64)
    assert "weight" in dict(mod.named_buffers()) and "weight" not in dict(mod.named_parameters())
    x = torch.randn(9, 4, dtype=torch.float64)
    y = torch.randint(0, 5, (9,))
    torch.testing.assert_close(mod(x, y), F.cross_entropy(mod.linear(x), y, weight=w))


def test_module_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="K-dimensional"):
        fst.LinearCrossEntropyLoss(4, 5, out_features=(2,))
    with pytest.raises(ValueError, match=r"weight must have shape \(5,\)"):
        fst.LinearCrossEntropyLoss(4, 5, weight=torch.ones(4))
    with pytest.raises(ValueError, match="label_smoothing"):
        fst.LinearCrossEntropyLoss(4, 5, label_smoothing=1.5)


# --- errors ------------------------------------------------------------------------------------


def base(dtype=torch.float32):
    X = torch.randn(6, 3, dtype=dtype, requires_grad=True)
    W = torch.randn(4, 3, dtype=dtype, requires_grad=True)
    return X, W, torch.randint(0, 4, (6,))


@pytest.mark.parametrize("which", ["input", "linear_weight", "target", "linear_bias", "weight"])
def test_tensors_on_another_device_are_refused_by_name(which):
    X, W, y = base()
    args = {"input": X, "linear_weight": W, "target": y, "linear_bias": None, "weight": None}
    meta = {"input": torch.empty(6, 3, device="meta"), "linear_weight": torch.empty(4, 3, device="meta"),
            "target": torch.empty(6, dtype=torch.long, device="meta"),
            "linear_bias": torch.empty(4, device="meta"), "weight": torch.empty(4, device="meta")}
    args[which] = meta[which]
    with pytest.raises(TypeError, match=rf"{which} is on device 'meta'.*CPU only.*\.cpu\(\)"):
        fst.linear_cross_entropy(args["input"], args["linear_weight"], args["target"],
                                 linear_bias=args["linear_bias"], weight=args["weight"])


def test_cuda_tensors_are_refused_by_name(monkeypatch):
    """No CUDA here: a CPU tensor that reports a CUDA device stands for one."""
    X, W, y = base()

    class OnCuda(torch.Tensor):
        @property
        def device(self):
            return torch.device("cuda:0")

    fake = X.detach().as_subclass(OnCuda)
    assert fake.device.type == "cuda"
    with pytest.raises(TypeError, match=r"input is on device 'cuda:0'.*CPU only"):
        fst.linear_cross_entropy(fake, W, y)


@pytest.mark.parametrize("bad, error, match", [
    (lambda X, W, y: (X.detach().numpy(), W, y), TypeError, "input must be a torch.Tensor"),
    (lambda X, W, y: (X.detach().long(), W, y), TypeError, "dtype torch.int64"),
    (lambda X, W, y: (X, W.double(), y), TypeError, "same dtype"),
    (lambda X, W, y: (X.reshape(2, 3, 3), W, y.reshape(2, 3)), ValueError, r"flatten\(0, -2\)"),
    (lambda X, W, y: (X, W.reshape(4, 1, 3), y), ValueError, "K-dimensional"),
    (lambda X, W, y: (X, W[:, :2], y), ValueError, "3 features and linear_weight 2"),
    (lambda X, W, y: (X, W, y[:5]), ValueError, r"target must have shape \(6,\)"),
    (lambda X, W, y: (X, W, y.float()), TypeError, "must be integers"),
    (lambda X, W, y: (X, W, torch.zeros(6, 4, dtype=torch.long)), TypeError, "probabilities"),
    (lambda X, W, y: (X, W, torch.tensor([0, 1, 2, 3, 4, 0])), ValueError, r"\[0, 4\)"),
])
def test_bad_arguments(bad, error, match):
    X, W, y = base()
    with pytest.raises(error, match=match):
        fst.linear_cross_entropy(*bad(X, W, y))


def test_bad_options():
    X, W, y = base()
    with pytest.raises(ValueError, match=r"linear_bias must have shape \(4,\)"):
        fst.linear_cross_entropy(X, W, y, linear_bias=torch.zeros(3))
    with pytest.raises(TypeError, match="same dtype"):
        fst.linear_cross_entropy(X, W, y, linear_bias=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        fst.linear_cross_entropy(X, W, y, weight=torch.ones(5))
    with pytest.raises(ValueError, match="reduction must be one of"):
        fst.linear_cross_entropy(X, W, y, reduction="average")
    with pytest.raises(ValueError, match="ignore_index cannot be given"):
        fst.linear_cross_entropy(X, W, torch.rand(6, 4), ignore_index=-100)
    with pytest.raises(ValueError, match="target requires grad"):
        fst.linear_cross_entropy(X, W, torch.rand(6, 4, requires_grad=True))
    with pytest.raises(ValueError, match="label_smoothing"):
        fst.linear_cross_entropy(X, W, y, label_smoothing=-0.1)


MEMORY_CHILD = r"""
import json, sys
import torch
import fastsoftmax._dispatch as policy
import fastsoftmax.torch as fst
from fastsoftmax.tools.memory import peak_extra

m, n, K = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
g = torch.Generator().manual_seed(0)
X = torch.randn(m, n, generator=g).requires_grad_()
W = (0.03 * torch.randn(K, n, generator=g)).requires_grad_()
y = torch.randint(0, K, (m,), generator=g)
assert policy.large_vocabulary(n, K, policy.chunk_count(m))
saved, policy.VOCAB_SLAB_BYTES = policy.VOCAB_SLAB_BYTES, -1
Xw = X[:100].detach().requires_grad_()
fst.linear_cross_entropy(Xw, W[:4096], y[:100] % 4096).backward()  # compile or load
policy.VOCAB_SLAB_BYTES = saved
W.grad = None
out = []
extra, how = peak_extra(lambda: out.append(fst.linear_cross_entropy(X, W, y).backward()))
print(json.dumps({"extra": extra, "how": how, "tile": policy.vocab_plan(m, n, K, True)["tile"],
                  "workers": policy.chunk_count(m),
                  "grads": [X.grad.numel() * 4, W.grad.numel() * 4]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM reset is Linux-only")
def test_backward_adds_no_copy_of_the_gradients():
    """(m, n, K) = (2048, 512, 16000) float32, forward and backward in a fresh
    process: the peak extra memory (VmHWM after a reset) is at most the
    gradients' own size plus the large-vocabulary kernel's buffers and 12 MB
    of slack, the bound of the NumPy-level call in tests/test_vocab.py.  The
    backward hands the forward's gradients to autograd instead of scaling a
    copy (which took twice the gradients' size).  glibc gets a fixed mmap
    threshold, so that large blocks freed before the call (the data's
    temporaries) go back to the system instead of being reused unseen."""
    import json
    import os
    import subprocess

    import fastsoftmax._dispatch as policy
    from fastsoftmax.tools.memory import RESET
    m, n, K = 2048, 512, 16_000
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(m), str(n), str(K)],
                         check=True, capture_output=True, text=True,
                         env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072"))
    got = json.loads(out.stdout)
    if got["how"] != RESET:
        pytest.skip("cannot reset VmHWM here")
    assert got["grads"] == [m * n * 4, K * n * 4]
    assert_within_vocab_memory(got, m, n, K, policy.VOCAB_CLASS_BLOCK)
