"""Which array types the in-memory entry points take, and the TypeError for the others.

Accepted: NumPy arrays and whatever np.asarray turns into a numeric array
(lists, memory-mapped arrays, CPU torch tensors...).  Refused before anything
is converted: Dask collections (they would be computed whole in the calling
process), SciPy sparse matrices and arrays (but CSR X of loss_and_grad), and objects np.asarray cannot
convert (GPU arrays).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

import fastsoftmax as fs
from naive import naive_logits_loss_and_grad, naive_loss_and_grad

RNG = np.random.default_rng(7)
m, n, K = 12, 4, 3
W = RNG.standard_normal((K, n))
X = RNG.standard_normal((m, n))
Y = RNG.integers(0, K, m)
B = RNG.standard_normal(K)
SW = RNG.random(m)
Z = RNG.standard_normal((m, K))


def loss_call(slot, value):
    """fs.loss_and_grad with ``value`` in place of one argument."""
    args = {"W": W, "X": X, "y": Y, "b": B, "sample_weight": SW}
    args[slot] = value
    return fs.loss_and_grad(args["W"], args["X"], args["y"], b=args["b"],
                            sample_weight=args["sample_weight"])


def logits_call(slot, value):
    args = {"Z": Z, "y": Y, "sample_weight": SW}
    args[slot] = value
    return fs.loss_and_grad_logits(args["Z"], args["y"], sample_weight=args["sample_weight"])


ORIGINALS = {"W": W, "X": X, "y": Y, "b": B, "sample_weight": SW, "Z": Z}
# (entry point, argument): every array argument of every public entry point
SLOTS = ([(loss_call, s) for s in ("W", "X", "y", "b", "sample_weight")]
         + [(logits_call, s) for s in ("Z", "y", "sample_weight")]
         + [(lambda slot, v, f=f: f(v), "Z") for f in (fs.softmax, fs.log_softmax, fs.logsumexp)])
IDS = ([f"loss_and_grad-{s}" for s in ("W", "X", "y", "b", "sample_weight")]
       + [f"logits-{s}" for s in ("Z", "y", "sample_weight")]
       + ["softmax", "log_softmax", "logsumexp"])


class NoHostCopy:
    """Stands for a GPU array (CuPy, a CUDA torch tensor): np.asarray refuses it."""

    def __init__(self, a):
        self.shape, self.dtype = a.shape, a.dtype

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed")


class NumpyBacked:
    """Like an xarray object over NumPy: has ``__dask_graph__`` but no graph."""

    def __init__(self, a):
        self.a = a

    def __dask_graph__(self):
        return None

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)


@pytest.mark.parametrize("call, slot", SLOTS, ids=IDS)
def test_dask_collections_are_refused_uncomputed(call, slot):
    da = pytest.importorskip("dask.array")
    import dask

    computed = []

    def block(a):
        computed.append(a.shape)
        return a

    original = ORIGINALS[slot]
    # meta given, so that dask does not call block to learn the result's type
    value = da.from_array(original, chunks=5).map_blocks(
        block, meta=np.empty((0,) * original.ndim, original.dtype))
    with dask.config.set(scheduler="synchronous"):
        with pytest.raises(TypeError) as info:
            call(slot, value)
    message = str(info.value)
    assert slot in message and "Dask" in message
    assert "fastsoftmax.dask.loss_and_grad" in message
    assert computed == []  # nothing was computed on the caller's behalf


@pytest.mark.parametrize("kind", ["csr_matrix", "csr_array", "coo_matrix", "csc_array"])
@pytest.mark.parametrize("call, slot", SLOTS, ids=IDS)
def test_sparse_matrices_are_refused(call, slot, kind):
    """Sparse X of loss_and_grad must be CSR (tests/test_sparse.py); every other slot is dense."""
    value = ORIGINALS[slot]
    sparse = getattr(scipy.sparse, kind)(value if value.ndim == 2 else value[None, :])
    if call is loss_call and slot == "X":
        if kind.startswith("csr"):
            call(slot, sparse)  # accepted
            return
        with pytest.raises(TypeError) as info:
            call(slot, sparse)
        for words in ("X", "CSR", "X.tocsr()", kind[:3].upper()):
            assert words in str(info.value), (words, str(info.value))
        return
    with pytest.raises(TypeError) as info:
        call(slot, sparse)
    message = str(info.value)
    for words in (slot, "sparse", "not supported", f"{slot}.toarray()", "fits in memory"):
        assert words in message, (words, message)


@pytest.mark.parametrize("call, slot", SLOTS, ids=IDS)
def test_unconvertible_objects_name_their_type(call, slot):
    with pytest.raises(TypeError) as info:
        call(slot, NoHostCopy(ORIGINALS[slot]))
    message = str(info.value)
    for words in (slot, "NoHostCopy", "np.asarray", "NumPy arrays", "CPU torch tensors"):
        assert words in message, (words, message)


@pytest.mark.parametrize("call, slot", SLOTS, ids=IDS)
def test_array_likes_are_accepted(call, slot):
    """A NumPy-backed object with a __dask_graph__ method, and a plain list, are converted."""
    want = call(slot, ORIGINALS[slot])
    for value in (NumpyBacked(ORIGINALS[slot]), ORIGINALS[slot].tolist()):
        got = call(slot, value)
        for g, w in zip(want if isinstance(want, tuple) else (want,),
                        got if isinstance(got, tuple) else (got,)):
            np.testing.assert_array_equal(g, w)


def test_cpu_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    loss, dW, db = fs.loss_and_grad(torch.tensor(W), torch.tensor(X), torch.tensor(Y),
                                    b=torch.tensor(B), sample_weight=torch.tensor(SW))
    want = naive_loss_and_grad(W, X, Y, b=B, sample_weight=SW)
    assert loss == pytest.approx(want[0], rel=1e-12)
    np.testing.assert_allclose(dW, want[1], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(db, want[2], rtol=1e-10, atol=1e-14)
    loss, dZ = fs.loss_and_grad_logits(torch.tensor(Z), torch.tensor(Y))
    want = naive_logits_loss_and_grad(Z, Y)
    assert loss == pytest.approx(want[0], rel=1e-12)
    np.testing.assert_allclose(dZ, want[1], rtol=1e-10, atol=1e-14)


def test_torch_tensor_that_requires_grad_says_why():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="torch.Tensor.*detach"):
        fs.softmax(torch.tensor(Z, requires_grad=True))
