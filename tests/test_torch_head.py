"""bfloat16 heads on PyTorch's products (fastsoftmax._torch_head), and the
bfloat16 bits the compiled kernels read and write (fastsoftmax._bf16).

On CPUs with bfloat16 hardware (AMX, AVX-512 BF16) fastsoftmax.torch
computes bfloat16 tensors with PyTorch's bfloat16 matmuls: the logits and
the logit gradients are rounded to bfloat16, as in PyTorch's own bfloat16
path.  These tests force that path whatever the CPU (PyTorch's bfloat16
matmuls are slow but correct without that hardware; the shapes are small),
with small tiles so that several row tiles, class blocks and pieces meet,
and with the default ones.

Oracle: the same rounding written with torch operations (sharing no code
with the kernels): logits ``X W^T`` in float32 rounded to bfloat16, the bias
added in float64, the loss and its logit gradient by PyTorch's
``F.cross_entropy`` in float64 (plus the z-loss written out), the logit
gradient rounded to bfloat16 and the two products in float32, rounded to
bfloat16 where the head rounds them (per block of classes for dX, per row
tile for dW).  Tolerances: the loss before its rounding within 1e-6
relative (the head's exponentials are float32, about 1e-7), after it within
one bfloat16 step; each gradient within bfloat16's ``rtol`` 1.6e-2 plus
``2**-6`` times its largest entry (the products' float32 sums run in another
order, which may move a logit or a product by one bfloat16 step).  The bias gradient,
summed in float64 from the unrounded logit gradients, within 1e-3 of its
largest entry.
"""

from __future__ import annotations

import mmap

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
F = torch.nn.functional

import fastsoftmax.torch as fst  # noqa: E402
from fastsoftmax import _dispatch  # noqa: E402
from fastsoftmax._bf16 import load, store  # noqa: E402
from fastsoftmax._touch import touch_pages  # noqa: E402
from fastsoftmax import _transpose  # noqa: E402
from fastsoftmax._transpose import transpose_bits  # noqa: E402


@pytest.fixture(autouse=True)
def bfloat16_products(monkeypatch):
    """PyTorch's bfloat16 products for bfloat16 tensors, whatever this CPU has."""
    monkeypatch.setattr(fst, "fast_bfloat16_products", lambda: True)


@pytest.fixture(params=["small-tiles", "small-tiles-row-major", "default-tiles"])
def tiles(request, monkeypatch):
    if request.param.startswith("small-tiles"):
        # 3 row tiles, 3 class blocks of 3 pieces (+ remainders)
        monkeypatch.setattr(_dispatch, "TORCH_HEAD_ROWS", 16)
        monkeypatch.setattr(_dispatch, "TORCH_HEAD_CLASSES", 24)
        monkeypatch.setattr(_dispatch, "TORCH_HEAD_PIECE", 8)
        monkeypatch.setattr(_dispatch, "TORCH_HEAD_DX_ROWS", 12)
        monkeypatch.setattr(_dispatch, "TORCH_HEAD_DX_CLASSES", 48)  # 2 blocks a dX product
    if request.param.endswith("row-major"):  # dX from row-major copies of D, whatever n
        monkeypatch.setattr(_dispatch, "TORCH_HEAD_ROW_MAJOR_FEATURES", 1)
    return request.param


# --- the bits --------------------------------------------------------------------------------


@numba.njit
def _stored(values, out):
    for i in range(values.shape[0]):
        store(out, i, values[i])


@numba.njit
def _loaded(bits, out):
    for i in range(bits.shape[0]):
        out[i] = load(bits[i])


def as_bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy().view(np.uint16)


def test_bfloat16_bits_round_and_read_as_pytorch():
    """store rounds float32 values to bfloat16 as PyTorch's conversion does
    (nearest, ties to even; overflow to infinity; NaN kept), load reads them back."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(20000, generator=g) * torch.exp2(torch.randint(-130, 128, (20000,),
                                                                 generator=g).float())
    ties = torch.tensor([1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, -(1.0 + 2.0 ** -8),
                         2.0 ** -133, 3.3895e38, -3.3895e38, 3.4e38], dtype=torch.float32)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45])
    values = torch.cat([f, ties, special]).float()
    out = np.zeros(values.numel(), dtype=np.uint16)
    _stored(values.numpy().astype(np.float64), out)
    want = values.to(torch.bfloat16)
    nan = torch.isnan(values).numpy()
    np.testing.assert_array_equal(out[~nan], as_bits(want)[~nan])
    got = torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)
    assert torch.isnan(got[torch.from_numpy(nan)]).all()
    back = np.empty(out.size, dtype=np.float32)
    _loaded(out, back)
    np.testing.assert_array_equal(back[~nan], want.float().numpy()[~nan])
    float_back = np.empty(3)
    _loaded(np.array([1.5, -2.0, np.inf]), float_back)  # floats: the value itself
    np.testing.assert_array_equal(float_back, [1.5, -2.0, np.inf])


@settings(max_examples=60, deadline=None)
@given(words=st.booleans(), rows=st.integers(0, 70), cols=st.integers(0, 70),
       extra=st.tuples(st.integers(0, 9), st.integers(0, 9)),
       offsets=st.tuples(st.integers(0, 5), st.integers(0, 5)),
       block=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_transpose_bits_as_numpy(words, rows, cols, extra, offsets, block, seed):
    """transpose_bits writes src's (rows, cols) entries (row stride cols +
    extra[0]) transposed into dst (row stride rows + extra[1]), from slices
    starting at the offsets, and changes nothing else in dst.  With
    ``words`` every size, stride and offset is rounded to a multiple of 4
    (8-byte aligned slices of NumPy's 16-byte aligned arrays) and the 4 x 4
    word path must be the one taken; otherwise the entry loop is taken
    unless the draw happens to be so aligned.  Oracle: NumPy's transpose of
    a strided view."""
    if words:
        rows, cols = 4 * (rows // 4), 4 * (cols // 4)
        extra = (4 * (extra[0] // 4), 4 * (extra[1] // 4))
        offsets = (4 * (offsets[0] // 4), 4 * (offsets[1] // 4))
    ss, ds = cols + extra[0], rows + extra[1]
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 2**16, offsets[0] + rows * ss + 8, dtype=np.uint16)
    dst = rng.integers(0, 2**16, offsets[1] + cols * ds + 8, dtype=np.uint16)
    want = dst.copy()
    if rows and cols:
        view = np.lib.stride_tricks.as_strided(want[offsets[1]:], (cols, rows), (2 * ds, 2))
        view[...] = np.lib.stride_tricks.as_strided(src[offsets[0]:], (rows, cols),
                                                    (2 * ss, 2)).T
    paths = []
    kernels = {name: getattr(_transpose, name) for name in ("_transpose_words",
                                                            "_transpose_entries")}
    try:  # each kernel records its call (by hand: hypothesis runs one fixture for all draws)
        for name, kernel in kernels.items():
            setattr(_transpose, name, lambda *a, k=kernel, name=name: paths.append(name) or k(*a))
        transpose_bits(src[offsets[0]:], dst[offsets[1]:], rows, cols, ss, ds, block)
    finally:
        for name, kernel in kernels.items():
            setattr(_transpose, name, kernel)
    np.testing.assert_array_equal(dst, want)
    if words and rows and cols:
        assert paths == ["_transpose_words"]
    elif rows and cols:
        assert len(paths) == 1


def test_transpose_bits_refuses_short_buffers():
    src = np.zeros(4 * 8, dtype=np.uint16)
    with pytest.raises(ValueError, match="do not fit"):
        transpose_bits(src, np.zeros(4 * 8 - 1, dtype=np.uint16), 4, 8, 8, 4, 2)
    with pytest.raises(ValueError, match="do not fit"):
        transpose_bits(src[1:], np.zeros(4 * 8, dtype=np.uint16), 4, 8, 8, 4, 2)


@pytest.mark.parametrize("size", [1, 2047, 2048, 2049, 10000])
@pytest.mark.parametrize("start", [0, 1, 3])
def test_touch_pages_writes_one_zero_a_page(size, start):
    """touch_pages zeroes exactly one entry on each memory page the array
    spans (here also arrays that start inside a page) and leaves every other
    entry as it was.  Oracle: the pages of the entries' addresses."""
    base = np.arange(1, size + start + 1, dtype=np.uint16)
    a = base[start:]
    touch_pages(a)
    addresses = a.ctypes.data + 2 * np.arange(size)
    pages = addresses // mmap.PAGESIZE
    zero = a == 0
    assert np.array_equal(np.unique(pages[zero]), np.unique(pages))  # every page once
    assert zero.sum() == np.unique(pages).size
    np.testing.assert_array_equal(a[~zero], np.arange(1, size + 1, dtype=np.uint16)[~zero]
                                  + start)


# --- the head against the emulated rounding -----------------------------------------------------

#: name -> keywords of fastsoftmax.torch.linear_cross_entropy ("bias", "target": see problem())
CASES = {
    "plain": {},
    "bias": {"bias": True},
    "sum": {"bias": True, "reduction": "sum"},
    "none": {"bias": True, "reduction": "none", "target": "labels-ignored"},
    "ignored": {"bias": True, "target": "labels-ignored"},
    "smoothing": {"label_smoothing": 0.2, "target": "labels-ignored"},
    "smoothing-1": {"bias": True, "label_smoothing": 1.0},
    "probs": {"bias": True, "target": "probs"},
    "probs-smoothing-sum": {"target": "probs", "label_smoothing": 0.1, "reduction": "sum"},
    "weight": {"bias": True, "weight": True, "target": "labels-ignored"},
    "weight-smoothing-sum": {"weight": True, "label_smoothing": 0.3, "reduction": "sum"},
    "weight-probs": {"bias": True, "weight": True, "target": "probs", "label_smoothing": 0.1},
    "z_loss": {"bias": True, "z_loss": 0.03, "target": "labels-ignored"},
    "everything": {"bias": True, "weight": True, "z_loss": 0.01, "label_smoothing": 0.1,
                   "target": "labels-ignored"},
}


def problem(case: str, m=41, n=12, K=70, seed=0):
    """(X, W, y, b, keywords): bfloat16 leaves that require grad, b None without a
    bias; with ignored labels, sample 0 is kept."""
    spec = CASES[case]
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, n, generator=g).bfloat16().requires_grad_()
    W = (0.8 * torch.randn(K, n, generator=g)).bfloat16().requires_grad_()
    b = (0.5 * torch.randn(K, generator=g)).bfloat16().requires_grad_() if spec.get("bias") \
        else None
    kw = {k: v for k, v in spec.items() if k not in ("bias", "target", "weight")}
    if spec.get("weight"):
        kw["weight"] = (0.2 + torch.rand(K, generator=g)).bfloat16()
    target = spec.get("target", "labels")
    if target == "probs":
        y = torch.softmax(torch.randn(m, K, generator=g), -1).bfloat16()
    else:
        y = torch.randint(0, K, (m,), generator=g)
        if target == "labels-ignored":
            y[torch.rand(m, generator=g) < 0.3] = -100
            y[0] = 3 % K
    return X, W, y, b, kw


def emulated(X, W, y, b, kw):
    """(loss, dX, dW, db) of the head with PyTorch's bfloat16 rounding, in torch
    operations (see the module docstring); gradients of the losses' sum for "none".
    The products are rounded where the head rounds them: dX per block of
    ``TORCH_HEAD_CLASSES`` classes (of ``TORCH_HEAD_DX_CLASSES`` rounded down
    to whole blocks with row-major copies and one row tile), dW per tile of ``TORCH_HEAD_ROWS`` rows
    (when there are several), before their float32 sums, and the sums again."""
    z = (X.detach().float() @ W.detach().float().T).bfloat16().double()
    if b is not None:
        z = z + b.detach().double()
    z.requires_grad_()
    reduction = kw.get("reduction", "mean")
    weight = kw.get("weight")
    probs = y.is_floating_point()
    ce = F.cross_entropy(z, y.double() if probs else y,
                         weight=None if weight is None else weight.double(),
                         label_smoothing=kw.get("label_smoothing", 0.0), reduction="none",
                         **({} if probs else {"ignore_index": -100}))
    kept = torch.ones(len(y), dtype=torch.float64) if probs else (y != -100).double()
    per_sample = ce + kw.get("z_loss", 0.0) * torch.logsumexp(z, -1) ** 2 * kept
    if reduction == "none":
        loss = per_sample
    elif reduction == "sum":
        loss = per_sample.sum()
    else:
        if weight is not None and not probs:
            denom = (weight.double()[y.clamp(min=0)] * kept).sum()
            # PyTorch's weighted mean divides the z-loss too; fastsoftmax's z-loss is
            # normalised by the kept samples: the two terms apart
            loss = ce.sum() / denom + kw.get("z_loss", 0.0) * (
                torch.logsumexp(z, -1) ** 2 * kept).sum() / kept.sum()
        else:
            loss = per_sample.sum() / kept.sum()
    (dz,) = torch.autograd.grad(loss.sum(), z)
    dzb = dz.float().bfloat16().float()
    Xf, Wf = X.detach().float(), W.detach().float()
    m, K = dzb.shape
    rows = min(m, _dispatch.TORCH_HEAD_ROWS)  # the head's tiles, whose products it rounds
    classes = min(K, _dispatch.TORCH_HEAD_CLASSES)
    if rows >= m and Xf.shape[1] >= _dispatch.TORCH_HEAD_ROW_MAJOR_FEATURES:
        # dX from row-major copies of the logit gradients, whole blocks at a time
        classes *= max(1, _dispatch.TORCH_HEAD_DX_CLASSES // classes)
    dX = sum((dzb[:, k:k + classes] @ Wf[k:k + classes]).bfloat16().float()
             for k in range(0, K, classes)).bfloat16()
    if rows >= m:
        dW = (dzb.T @ Xf).bfloat16()
    else:
        dW = sum((dzb[r:r + rows].T @ Xf[r:r + rows]).bfloat16().float()
                 for r in range(0, m, rows)).bfloat16()
    db = None if b is None else dz.sum(0)
    return loss.detach(), dX, dW, db


def close(got, want, name):
    assert got.dtype == torch.bfloat16 and got.shape == want.shape, name
    scale = float(want.float().abs().max())
    torch.testing.assert_close(got.float(), want.float(), rtol=1.6e-2, atol=2.0 ** -6 * scale,
                               msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", list(CASES))
def test_head_matches_emulated_rounding(case, tiles):
    X, W, y, b, kw = problem(case)
    spec = fst.prepare(X, W, y, b, kw.get("weight"), kw.get("reduction", "mean"), None,
                       kw.get("label_smoothing", 0.0), kw.get("z_loss", 0.0), None)
    assert spec.head is not None  # the path under test
    loss = fst.linear_cross_entropy(X, W, y, linear_bias=b, **kw)
    leaves = [t for t in (X, W, b) if t is not None]
    got = torch.autograd.grad(loss.sum(), leaves)
    want_loss, *want = emulated(X, W, y, b, kw)
    assert loss.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), want_loss.double(), rtol=2.0 ** -8, atol=0)
    close(got[0], want[0], "d input")
    close(got[1], want[1], "d linear_weight")
    if b is not None:
        assert got[2].dtype == torch.bfloat16
        scale = float(want[2].abs().max())
        torch.testing.assert_close(got[2].double(), want[2], rtol=1.6e-2, atol=1e-3 * scale)


@pytest.mark.parametrize("case", ["bias", "none", "probs", "everything"])
def test_head_keeps_the_logits_where_dw_goes(case, tiles, monkeypatch):
    """With m <= n and one row tile the first pass's logits wait in dW's
    memory: a class block's products are then its logits and its dW (the
    logits not again), with the dX products by slices of rows for each
    block or group of blocks; the blocks go last first, and the results are
    as emulated.  Taking the blocks first first would overwrite logits
    not yet used: the comparison catches it (with small tiles, 3 blocks)."""
    m, n, K = 14, 20, 70
    X, W, y, b, kw = problem(case, m=m, n=n, K=K)
    products = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: products.append(1) or mm(*a, **k))
    loss = fst.linear_cross_entropy(X, W, y, linear_bias=b, **kw)
    leaves = [t for t in (X, W, b) if t is not None]
    got = torch.autograd.grad(loss.sum(), leaves)
    monkeypatch.setattr(torch, "mm", mm)
    classes = min(K, _dispatch.TORCH_HEAD_CLASSES)
    blocks = -(-K // classes)
    slices = -(-m // min(m, _dispatch.TORCH_HEAD_DX_ROWS))
    groups = blocks  # the dX products' blocks of classes
    if n >= _dispatch.TORCH_HEAD_ROW_MAJOR_FEATURES:  # whole blocks at a time
        groups = -(-K // (classes * max(1, _dispatch.TORCH_HEAD_DX_CLASSES // classes)))
    assert len(products) == 2 * blocks + groups * slices
    want_loss, *want = emulated(X, W, y, b, kw)
    torch.testing.assert_close(loss.double(), want_loss.double(), rtol=2.0 ** -8, atol=0)
    close(got[0], want[0], "d input")
    close(got[1], want[1], "d linear_weight")


def test_tiles_given_back_before_dx_is_made(tiles, monkeypatch):
    """The tile of logits (and the row-major copies of D) are no longer
    referenced when dX's memory is taken: they would otherwise add to the
    head's peak at its end (8 MB at (4096, 1024, 32000)).  Checked two ways
    when dX is allocated: the buffers' tensors are gone, and no tensor or
    array that head_sums still holds (its locals, its closures' cells) lies
    in their memory (the NumPy views of their bits included)."""
    import sys
    import weakref

    m, n, K = 30, 20, 70
    X, W, y, b, kw = problem("bias", m=m, n=n, K=K)
    made, spans, at_dx = [], [], []
    empty = torch.empty

    def span(v):
        if isinstance(v, torch.Tensor):
            return v.data_ptr(), v.data_ptr() + v.numel() * v.element_size()
        if isinstance(v, np.ndarray):
            start = v.__array_interface__["data"][0]
            return start, start + v.nbytes
        return None

    def held(frame):
        values = list(frame.f_locals.values())
        for v in list(values):
            for cell in getattr(v, "__closure__", None) or ():
                try:
                    values.append(cell.cell_contents)
                except ValueError:  # an emptied cell (a deleted variable)
                    pass
        return [s for s in map(span, values) if s is not None and s[1] > s[0]]

    def spy(*shape, **k):
        t = empty(*shape, **k)
        if t.dtype == torch.bfloat16 and tuple(t.shape) == (m, n):  # dX
            overlaps = [h for h in held(sys._getframe(1)) for a, z in spans
                        if h[0] < z and a < h[1]]
            at_dx.append(([r() is not None for r in made], overlaps))
        elif t.dtype == torch.bfloat16 and t.dim() == 1:  # a tile buffer
            made.append(weakref.ref(t))
            spans.append(span(t))
        return t

    monkeypatch.setattr(torch, "empty", spy)
    loss = fst.linear_cross_entropy(X, W, y, linear_bias=b, **kw)
    torch.autograd.grad(loss.sum(), (X, W))
    monkeypatch.setattr(torch, "empty", empty)
    assert made and at_dx == [([False] * len(made), [])]


@pytest.mark.parametrize("case", list(CASES))
def test_each_logit_gradient_through_an_identity_input(case, tiles):
    """With X = [I 0] (one-hot rows, m < n) the logits are W's columns
    exactly and dW = D^T X holds each logit gradient D_ik on its own, summed
    with zeros only: the emulated D, rounded to bfloat16, within one bfloat16
    step (2^-7 relative; the head's float32 exponentials, 1e-7, can move a
    rounding) and exactly 0 where it is 0.  The products of the other tests
    mix K terms an entry, whose roundings hide errors of a few percent in
    single entries (dropping the smoothing of dense targets, for one)."""
    m, n = 24, 32
    X, W, y, b, kw = problem(case, m=m, n=n)
    X = torch.eye(m, n).bfloat16().requires_grad_()
    loss = fst.linear_cross_entropy(X, W, y, linear_bias=b, **kw)
    (dW,) = torch.autograd.grad(loss.sum(), (W,))
    want = emulated(X, W, y, b, kw)[2]
    assert torch.count_nonzero(want[:, :m]) > m  # not only zeros
    torch.testing.assert_close(dW.float(), want.float(), rtol=2.0 ** -7, atol=0)


def test_head_loss_before_rounding():
    """The float64 loss the head computes, before its rounding to bfloat16, within
    1e-6 of the emulated one (same bfloat16 logits)."""
    X, W, y, b, kw = problem("everything")
    spec = fst.prepare(X, W, y, b, kw["weight"], "mean", None, 0.1, 0.01, None)
    loss, _ = fst.compute(spec, X, W, b, (False, False, False))
    want = emulated(X, W, y, b, kw)[0]
    assert abs(loss - float(want)) <= 1e-6 * abs(float(want))


def test_only_the_wanted_gradients(tiles):
    """Leaves that do not require grad get none, and the others are unchanged."""
    X, W, y, b, kw = problem("bias")
    full = torch.autograd.grad(fst.linear_cross_entropy(X, W, y, linear_bias=b), (X, W, b))
    Xc = X.detach()
    part = torch.autograd.grad(fst.linear_cross_entropy(Xc, W, y, linear_bias=b), (W, b))
    assert torch.equal(part[0], full[1]) and torch.equal(part[1], full[2])
    with torch.no_grad():
        loss = fst.linear_cross_entropy(X, W, y, linear_bias=b)
    assert loss == fst.linear_cross_entropy(X, W, y, linear_bias=b).detach()


def test_same_bits_on_any_thread_count():
    X, W, y, b, kw = problem("everything", m=300, K=900)
    runs = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            loss = fst.linear_cross_entropy(X, W, y, linear_bias=b, **kw)
            runs.append([loss, *torch.autograd.grad(loss, (X, W, b))])
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for one, many in zip(*runs):
        assert torch.equal(one, many)


@pytest.mark.parametrize("kw", [{"softcap": 2.0}, {}])
def test_which_path(kw, monkeypatch):
    """Soft-capping, other dtypes, an undefined mean and CPUs without the units
    take the float32 path."""
    X, W, y, b, _ = problem("plain")
    spec = fst.prepare(X, W, y, None, None, "mean", None, 0.0, 0.0, kw.get("softcap"))
    assert (spec.head is None) == ("softcap" in kw)
    spec = fst.prepare(X.float(), W.float(), y, None, None, "mean", None, 0.0, 0.0, None)
    assert spec.head is None
    ignored = torch.full_like(y, -100)  # no kept sample: a NaN mean, no products needed
    spec = fst.prepare(X, W, ignored, None, None, "mean", None, 0.0, 0.0, None)
    assert spec.head is None and spec.degenerate == "empty"
    monkeypatch.setattr(fst, "fast_bfloat16_products", lambda: False)
    spec = fst.prepare(X, W, y, None, None, "mean", None, 0.0, 0.0, None)
    assert spec.head is None


@pytest.mark.parametrize("amx, avx512_bf16, onednn, enabled, expected", [
    (True, False, True, True, True), (False, True, True, True, True),
    (False, False, True, True, False), (None, True, True, True, True),
    (None, None, True, True, False), (True, True, False, True, False),
    (True, True, True, False, False)])
def test_bfloat16_products_where_the_cpu_has_bfloat16_hardware(
        amx, avx512_bf16, onednn, enabled, expected, monkeypatch):
    """PyTorch's products for bfloat16 heads on AMX or AVX-512 BF16 CPUs with
    oneDNN available and enabled; float32 elsewhere, and where this torch has
    no such probe (None: the attribute removed).  The probes are stubbed,
    whatever this CPU and this build of torch have."""
    from fastsoftmax._torch_head import fast_bfloat16_products

    for name, has in (("_is_amx_tile_supported", amx),
                      ("_is_avx512_bf16_supported", avx512_bf16)):
        if has is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda has=has: has, raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: onednn)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", enabled)
    assert fast_bfloat16_products() is expected


def test_invalid_targets_named_as_in_float32(monkeypatch):
    """The head validates its targets with the NumPy entry point's checks: the
    same messages on both paths."""
    X, W, y, b, _ = problem("plain")
    bad = y.clone()
    bad[5] = 70
    messages = []
    for fast in (True, False):
        monkeypatch.setattr(fst, "fast_bfloat16_products", lambda fast=fast: fast)
        with pytest.raises(ValueError, match="70") as err:
            fst.linear_cross_entropy(X, W, bad)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_ignored_rows_get_no_gradient_even_from_infinite_logits():
    """An ignored sample whose logits are infinite or NaN adds nothing: its dX row
    is 0 and the loss is finite (PyTorch's own path gives NaN there)."""
    X, W, y, b, kw = problem("ignored")
    X = X.detach().clone()
    i = int(torch.nonzero(y == -100)[0])
    X[i] = float("inf")
    X.requires_grad_()
    loss = fst.linear_cross_entropy(X, W, y, linear_bias=b)
    (dX,) = torch.autograd.grad(loss, (X,))
    assert torch.isfinite(loss)
    assert torch.all(dX[i] == 0) and torch.isfinite(dX).all()


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 40), n=st.integers(1, 48), K=st.integers(2, 60),
       rows=st.integers(1, 50), classes=st.integers(1, 70), piece=st.integers(1, 20),
       case=st.sampled_from(["bias", "none", "smoothing", "probs", "everything"]),
       row_major=st.booleans(), dx_classes=st.integers(1, 100), seed=st.integers(0, 2**16))
def test_head_over_shapes_and_tiles(monkeypatch, m, n, K, rows, classes, piece, case,
                                    row_major, dx_classes, seed):
    """Any shape and any tiles (one row, one class, tiles larger than the problem),
    logits kept in dW's memory (m <= n, one row tile) or computed again, dX from
    row-major copies of D or not, one or several blocks a dX product."""
    for name, value in (("ROWS", rows), ("CLASSES", classes), ("PIECE", piece),
                        ("DX_ROWS", max(1, rows // 2)), ("DX_CLASSES", dx_classes),
                        ("ROW_MAJOR_FEATURES", 1 if row_major else 10**9)):
        monkeypatch.setattr(_dispatch, f"TORCH_HEAD_{name}", value)
    X, W, y, b, kw = problem(case, m=m, n=n, K=K, seed=seed)
    loss = fst.linear_cross_entropy(X, W, y, linear_bias=b, **kw)
    leaves = [t for t in (X, W, b) if t is not None]
    got = torch.autograd.grad(loss.sum(), leaves)
    want_loss, *want = emulated(X, W, y, b, kw)
    torch.testing.assert_close(loss.double(), want_loss.double(), rtol=2.0 ** -8, atol=0)
    close(got[0], want[0], "d input")
    close(got[1], want[1], "d linear_weight")
