"""Hostile input at random for every array entry point, and how each call is judged.

A case is ``(func, args, kw)`` in which every array is an :class:`A` (values,
dtype, memory layout), so that a case can be printed as Python source and
pasted into a regression test (:func:`case_source`) and rebuilt exactly
(:func:`check_case`).

How a call is judged, without the package's own code:

* :func:`expected_errors` states, from the documented contract alone (README,
  "Errors"), which exception types the call must raise: an empty set means the
  input is valid and the call must return.  An invalid input must raise one of
  the types its violations name; a valid one must not raise.
* A returned result must have the documented types, shapes and dtypes, and
  equal the plain float64 oracle of ``naive.py`` (SciPy for the row-wise
  primitives) entry by entry, within the rounding-scale tolerance

      |got - want| <= rtol * (|want| + scale)

  where ``scale`` is, per entry, the size of what that entry is computed
  from: for the losses and gradients the oracle's sums of |w|·|t|·|x|-sized
  terms, of |t|·|lse - z| and of each sample's log-sum-exp scale, plus the
  row-wise primitives the largest finite |z| of the row plus 1 (times p for
  softmax).  rtol is the agreement tests' (``helpers.RTOL``): 1e-10 when the
  result is computed in float64, 1e-4 in float32.  To that is added what the
  rounding of the logits themselves can do (``naive``'s ``logit_rounding``
  scale, in units of the logits' precision) times 1e-13 (about 1000 float64
  ulps: a logit here is a sum of at most 10 terms).  A non-finite oracle entry
  must be non-finite in the result, and the result may hold NaN where the
  oracle's array (row, for dZ and the primitives) has any non-finite entry:
  the kernels let a NaN or infinity poison the whole sample (documented for
  the primitives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.special as sp
from hypothesis import strategies as st

import fastsoftmax as fs
from helpers import RTOL
from naive import naive_linear_cross_entropy, naive_logits_loss_and_grad, naive_loss_and_grad

PRIMITIVES = ("softmax", "log_softmax", "logsumexp")
FUNCS = ("loss_and_grad", "linear_ce", "logits") + PRIMITIVES
DTYPES = ["float64"] * 4 + ["float32"] * 3 + ["int64", "float16", "bool", "complex128", "object"]
LAYOUTS = ("C", "F", "strided", "readonly")
METHODS = ("fused", "indexloop", "numpy")
#: relative precision charged for the rounding of the logits of loss_and_grad
#: (its W is float64 in every case drawn here, so its logits are float64)
LOGIT_PRECISION = 1e-13


@dataclass(frozen=True, repr=False)
class A:
    """An array of a case: float64 values, the dtype and the layout it is passed in."""

    values: np.ndarray
    dtype: str = "float64"
    layout: str = "C"

    def build(self) -> np.ndarray:
        a = np.asarray(self.values, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            a = a.astype(object) if self.dtype == "object" else a.astype(self.dtype)
        if self.layout == "F":
            a = np.asfortranarray(a)
        elif self.layout == "strided" and a.ndim >= 1:
            big = np.zeros((a.shape[0] * 2,) + a.shape[1:], a.dtype)
            big[::2] = a
            a = big[::2]
        elif self.layout == "readonly":
            a.flags.writeable = False
        return a

    def source(self) -> str:
        values = np.asarray(self.values, dtype=np.float64)
        text = f"np.zeros({values.shape})" if 0 in values.shape else _literal(values.tolist())
        return f"A({text}, {self.dtype!r}, {self.layout!r})"

    __repr__ = source


def _literal(value) -> str:
    """Python source for nested lists of floats; NaN and infinities as NAN, INF."""
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INF" if value > 0 else "-INF"
    return repr(value)


#: names the pasted source of a case uses besides ``A`` and ``check_case``
NAN, INF = math.nan, math.inf


def _build(value):
    return value.build() if isinstance(value, A) else value


def case_source(func: str, args: tuple, kw: dict) -> str:
    """The case as a line of Python to paste into a regression test."""
    def src(v):
        return v.source() if isinstance(v, A) else repr(v)
    arg_text = ", ".join(src(a) for a in args)
    kw_text = ", ".join(f"{k!r}: {src(v)}" for k, v in kw.items())
    return f"check_case({func!r}, ({arg_text},), {{{kw_text}}})"


# --- which inputs are valid: the documented contract, stated independently ------

def _numeric(a: np.ndarray) -> bool:
    return a.dtype.kind in "iuf"


def expected_errors(func: str, args: tuple, kw: dict) -> set[type]:
    """The exception types the call must raise (empty when the input is valid)."""
    args = tuple(_build(a) for a in args)
    kw = {k: _build(v) for k, v in kw.items()}
    errors: set[type] = set()
    if func in PRIMITIVES:
        (Z,) = args
        if not _numeric(Z):
            errors.add(TypeError)
        if Z.ndim not in (1, 2) or Z.shape[-1] == 0:
            errors.add(ValueError)
        return errors

    reduction = kw.get("reduction", "mean")
    if reduction not in ("mean", "sum"):
        errors.add(ValueError)
    ignore = kw.get("ignore_index")
    if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, (int, np.integer))):
        errors.add(TypeError)
        ignore = None
    eps = kw.get("label_smoothing", 0.0)
    if not (math.isfinite(eps) and 0.0 <= eps <= 1.0):
        errors.add(ValueError)
    if func in ("loss_and_grad", "linear_ce"):
        W, X, y = args if func == "loss_and_grad" else (args[1], args[0], args[2])
        if kw.get("method", "fused") not in METHODS:
            errors.add(ValueError)
        l2 = kw.get("l2", 0.0)
        if not (math.isfinite(l2) and l2 >= 0.0):
            errors.add(ValueError)
        arrays = [W, X] + ([kw["b"]] if kw.get("b") is not None else [])
        if not all(_numeric(a) for a in arrays):
            errors.add(TypeError)
        K, n = W.shape
        m = X.shape[0]
        if K == 0 or n == 0 or m == 0 or X.shape[1] != n:
            errors.add(ValueError)
        if kw.get("b") is not None and kw["b"].shape != (K,):
            errors.add(ValueError)
    else:
        Z, y = args
        if not _numeric(Z):
            errors.add(TypeError)
        if Z.ndim == 1:  # one un-batched sample: y a scalar or (K,), a scalar weight
            if np.ndim(y) not in (0, 1) or (np.ndim(y) == 1 and np.shape(y) != Z.shape):
                return errors | {ValueError}
            sw = kw.get("sample_weight")
            if sw is not None and np.ndim(sw) != 0:
                return errors | {ValueError}
            return errors | expected_errors(
                func, (Z[np.newaxis], np.asarray(y)[np.newaxis]),
                {**kw, **({} if sw is None else {"sample_weight": np.asarray(sw)[np.newaxis]})})
        m, K = Z.shape
        if m == 0 or K == 0:
            errors.add(ValueError)

    kept = np.ones(y.shape[:1], bool)
    if y.ndim == 1:
        if y.shape[0] != m:
            errors.add(ValueError)
        else:
            if ignore is not None:
                kept = y != ignore
            if np.any((y[kept] < 0) | (y[kept] >= K)):
                errors.add(ValueError)
    elif y.ndim == 2:
        if y.shape != (m, K):
            errors.add(ValueError)
        if kw.get("ignore_index") is not None:
            errors.add(ValueError)
        if not np.all(np.isfinite(y)) or np.any(y < 0):
            errors.add(ValueError)
    else:
        errors.add(ValueError)

    sw = kw.get("sample_weight")
    if sw is not None:
        if sw.shape != (m,) or not np.all(np.isfinite(sw)) or np.any(sw < 0):
            errors.add(ValueError)
    if reduction == "mean" and not errors:
        total = float(np.sum(sw[kept])) if sw is not None else float(np.count_nonzero(kept))
        if total <= 0.0:
            errors.add(ValueError)
    return errors


# --- what a returned result must be ---------------------------------------------

#: exp(-708): the kernels' exponential returns 0 below it (README, primitives)
_FLUSHED = math.exp(-708.0)


def _working_dtype(*arrays: np.ndarray) -> np.dtype:
    """NumPy's promotion mapped to float32/float64 (README: "working dtype")."""
    dtype = np.result_type(*arrays)
    if dtype.kind in "iu" or dtype.itemsize > 4:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def assert_matches(what: str, got, want, scale, rtol: float, excuse: str = "array",
                   logit_scale=0.0) -> None:
    """Entry by entry: close within the rounding scale, non-finite where the oracle is.

    Besides ``rtol * (|want| + scale)`` an entry may be off by the smallest
    normal number of its dtype (an underflow flushed to zero), or by
    exp(-708), below which the kernels' exponential returns 0 (documented).
    NaN or infinity in the input propagates, but not necessarily to the same
    entries: the kernels let a non-finite logit poison its whole sample, the
    oracle only the classes it touches.  So NaN in ``got`` is excused where
    the oracle has any non-finite entry in the same array (``excuse="array"``)
    or the same row (``excuse="row"``: dZ and the row-wise primitives); a
    finite entry of ``got`` must always match.
    """
    floor = max(_FLUSHED, float(np.finfo(np.asarray(got).dtype).tiny)
                if np.asarray(got).dtype.kind == "f" else 0.0)
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), want.shape)
    finite = np.isfinite(want)
    if excuse == "row" and want.ndim >= 1:
        poisoned = ~finite.all(axis=-1, keepdims=True)
    else:
        poisoned = ~finite.all()
    excused = poisoned & np.isnan(got)
    with np.errstate(invalid="ignore"):  # inf - inf where both are infinite
        bound = rtol * (np.abs(want) + scale) + LOGIT_PRECISION * np.asarray(logit_scale) + floor
        ok_finite = np.abs(got - want) <= bound
    ok = np.where(finite, ok_finite | excused, ~np.isfinite(got))
    assert ok.all(), (f"{what}: {np.count_nonzero(~ok)} entries wrong\n got {got[~ok][:5]}\n"
                      f"want {want[~ok][:5]}\nscale {scale[~ok][:5]}")


def _primitive_scale(func: str, Z: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per entry, the size of what it is computed from: the row's largest
    finite |z| (+1 for the log of a sum >= 1), times p for softmax."""
    big = np.max(np.where(np.isfinite(Z), np.abs(Z), 0.0), axis=-1, keepdims=True) + 1.0
    if func == "logsumexp":
        return big[..., 0]
    if func == "softmax":
        return np.abs(want) * big
    return big


def check_case(func: str, args: tuple, kw: dict) -> str:
    """Run one case and judge it; return "returned" or "rejected"."""
    errors = expected_errors(func, args, kw)
    built = tuple(_build(a) for a in args)
    bkw = {k: _build(v) for k, v in kw.items()}
    try:
        if func == "loss_and_grad":
            got = fs.loss_and_grad(*built, **bkw)
        elif func == "linear_ce":
            got = fs.linear_cross_entropy(*built, **bkw)
        elif func == "logits":
            got = fs.loss_and_grad_logits(*built, **bkw)
        else:
            got = getattr(fs, func)(*built)
    except (ValueError, TypeError) as exc:
        assert errors, f"valid input rejected: {type(exc).__name__}: {exc}"
        assert type(exc) in errors, (
            f"raised {type(exc).__name__} ({exc}); the contract names {sorted(e.__name__ for e in errors)}")
        return "rejected"
    assert not errors, f"invalid input accepted (should raise {sorted(e.__name__ for e in errors)})"

    if func in PRIMITIVES:
        Z = built[0]
        Z64 = np.asarray(Z, dtype=np.float64)
        with np.errstate(all="ignore"):
            want = getattr(sp, func)(Z64, axis=-1)
        dtype = np.float32 if Z.dtype.itemsize <= 4 and Z.dtype.kind == "f" else np.float64
        assert np.asarray(got).dtype == dtype and np.shape(got) == np.shape(want), (got, want)
        rtol = RTOL[np.dtype(dtype)]
        assert_matches(func, got, want, _primitive_scale(func, Z64, want), rtol, excuse="row")
        return "returned"

    with np.errstate(all="ignore"):
        if func in ("loss_and_grad", "linear_ce"):
            W, X, y = built if func == "loss_and_grad" else (built[1], built[0], built[2])
            dtype = _working_dtype(*[W, X] + ([bkw["b"]] if bkw.get("b") is not None else []))
            oracle_kw = {k: v for k, v in bkw.items() if k != "method"}
            if func == "loss_and_grad":
                oracle, names = naive_loss_and_grad, ("loss", "dW", "db")
            else:
                oracle, names = naive_linear_cross_entropy, ("loss", "dX", "dW", "db")
            want, scales, logit_scales = oracle(
                W=W, X=X, y=y, return_scales=True, logit_rounding=True, **oracle_kw)
        else:
            Z, y = built
            dtype = _working_dtype(Z)
            unbatched = Z.ndim == 1
            if unbatched:
                Z, y = Z[np.newaxis], np.asarray(y)[np.newaxis]
                if bkw.get("sample_weight") is not None:
                    bkw["sample_weight"] = np.asarray(bkw["sample_weight"])[np.newaxis]
            want, scales = naive_logits_loss_and_grad(Z, y, return_scales=True, **bkw)
            if unbatched:
                want, scales = (want[0], want[1][0]), (scales[0], scales[1][0])
            logit_scales = (0.0, 0.0)  # the logits are the input: nothing rounds them
            names = ("loss", "dZ")
    assert isinstance(got, tuple) and len(got) == len(want), got
    assert isinstance(got[0], float), type(got[0])
    rtol = RTOL[dtype]
    for name, g, w, s, r in zip(names, got, want, scales, logit_scales):
        if name != "loss":
            assert isinstance(g, np.ndarray) and g.dtype == dtype, (name, g.dtype, dtype)
        assert_matches(name, g, w, s, rtol, excuse="row" if name in ("dZ", "dX") else "array",
                       logit_scale=r)
    return "returned"


# --- random cases -----------------------------------------------------------------

@st.composite
def cases(draw):
    """A random case: shapes including zeros, every dtype and layout, valid and
    invalid options, NaN and infinities."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def array(shape, dtype="float64"):
        a = rng.standard_normal(shape) * draw(st.sampled_from([1e-3, 1.0, 1e3, 1e6]))
        if draw(st.integers(0, 9)) == 0 and a.size:
            a.flat[draw(st.integers(0, a.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf]))
        return A(a, dtype, draw(st.sampled_from(LAYOUTS)))

    func = draw(st.sampled_from(FUNCS))
    m, n, K = draw(st.integers(0, 300)), draw(st.integers(0, 9)), draw(st.integers(0, 7))
    dtype = draw(st.sampled_from(DTYPES))
    kw: dict = {}
    if func in PRIMITIVES:
        shape = draw(st.sampled_from([(m, K), (K,), (m, K, 2)]))
        return func, (array(shape, dtype),), kw
    labels = (rng.integers(-2, K + 2, m) if draw(st.integers(0, 4)) == 0
              else rng.integers(0, max(K, 1), m))
    y = A(labels, "int64") if draw(st.booleans()) else A(rng.random((m, max(K, 1))))
    if draw(st.booleans()):
        kw["sample_weight"] = A(rng.random(m) * draw(st.sampled_from([1.0] * 6 + [-1.0, np.nan])))
    kw["label_smoothing"] = draw(st.sampled_from([0.0] * 4 + [0.1] * 3 + [-0.5, 1.0]))
    kw["reduction"] = draw(st.sampled_from(["mean"] * 4 + ["sum"] * 3 + ["bad"]))
    if draw(st.integers(0, 3)) == 0:
        kw["ignore_index"] = draw(st.sampled_from([-1, -2, 0, 2.5]))
    if func == "logits":
        if draw(st.integers(0, 3)) == 0:  # one un-batched sample
            y1 = (A(rng.integers(-1, K + 1, ()), "int64") if draw(st.booleans())
                  else A(rng.random(max(K, 1))))
            if "sample_weight" in kw and draw(st.booleans()):
                kw["sample_weight"] = A(np.asarray(kw["sample_weight"].values[:1].sum()))
            return func, (array((K,), dtype), y1), kw
        return func, (array((m, K), dtype), y), kw
    if draw(st.booleans()):
        kw["b"] = array((K,))
    kw["l2"] = draw(st.sampled_from([0.0] * 4 + [0.5] * 3 + [-1.0]))
    kw["method"] = draw(st.sampled_from(list(METHODS)))
    W, X = array((K, n)), array((m, n), dtype)
    return func, ((W, X, y) if func == "loss_and_grad" else (X, W, y)), kw
