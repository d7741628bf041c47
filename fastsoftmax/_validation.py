"""Input checking and normalisation for :func:`fastsoftmax.loss_and_grad`.

Everything a kernel relies on is established here, in Python, before any
compiled code runs: shapes, dtypes, label ranges, weights and options.  The
kernels themselves never raise.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ._arrays import kernel_array, type_name
from ._sparse import CSR, check_csr, is_sparse, with_dtype

METHODS = ("fused", "indexloop", "numpy")
REDUCTIONS = ("mean", "sum")
#: The reductions of the loss entry points (loss_and_grad, linear_cross_entropy, the logits one).
LOSS_REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class Problem:
    """A validated problem in the encoding the kernels expect.

    X (m, n), W (K, n) and b (K,) share ``dtype`` (float32 or float64); X
    keeps the caller's memory layout, or is a :class:`fastsoftmax._sparse.CSR`
    (its data in ``dtype``) when the caller passed a SciPy CSR matrix.  With class-index targets ``labels`` is
    (m,) int64, -1 marking ignored samples, and ``T`` is an empty (0, K)
    array; with dense targets ``labels`` is empty and ``T`` is (m, K).  ``sw``
    is (m,) float64, or empty when unweighted.  ``kept_weight`` is the total
    weight of the samples ``ignore_index`` keeps (their count when
    unweighted); ``denom`` is what the sums are divided by: ``kept_weight``
    under "mean" (times the class weights of the labels, with class-index
    targets and ``cw``), 1 under "sum" and "none".  The options of issue 10,
    None when unused (the kernels get them as they are): ``cw`` (K,) float64
    class weights, ``zl`` the z-loss coefficient already rescaled by
    ``denom / kept_weight`` under "mean" (so that dividing by ``denom``
    normalises the z-loss by the kept sample weight), ``cap`` the soft-cap.
    """

    X: np.ndarray | CSR
    W: np.ndarray
    b: np.ndarray
    has_b: bool
    labels: np.ndarray
    T: np.ndarray
    sw: np.ndarray
    eps: float
    l2: float
    kept_weight: float
    denom: float
    dtype: np.dtype
    n_ignored: int
    cw: np.ndarray | None = None
    zl: float | None = None
    cap: float | None = None


def is_dask_collection(value) -> bool:
    """Whether ``value`` is a Dask collection (dask.array, dask.dataframe...).

    Dask's own test (``__dask_graph__()`` is not None), made without
    importing dask: an xarray object backed by NumPy has the method but no
    graph.
    """
    method = getattr(type(value), "__dask_graph__", None)
    if method is None:
        return False
    try:
        return value.__dask_graph__() is not None
    except Exception:  # a foreign object's method: any failure means "not Dask"
        return False


#: What the in-memory entry points accept, for error messages.
ACCEPTED = ("NumPy arrays and anything np.asarray turns into a numeric array: lists, "
            "memory-mapped arrays, CPU torch tensors, pandas objects...")


def check_array_type(name: str, value) -> None:
    """Raise TypeError for array types the in-memory entry points must not convert.

    A Dask collection would be computed whole in this process (use
    :func:`fastsoftmax.dask.loss_and_grad`); a SciPy sparse matrix would
    become a 0-d object array (:func:`prepare` takes CSR X before this check).  Both are detected without importing Dask or
    SciPy's sparse module.
    """
    if is_dask_collection(value):
        raise TypeError(
            f"{name} is a Dask collection ({type_name(value)}); fastsoftmax's in-memory "
            f"functions would compute all of it in this process.  For the loss and gradient "
            f"of row-chunked data use fastsoftmax.dask.loss_and_grad(W, X, y, ...), which "
            f"reduces each block where it lives; otherwise pass {name}.compute() explicitly "
            f"if it fits in memory")
    if is_sparse(value):
        raise TypeError(
            f"{name} is a SciPy sparse matrix ({type_name(value)}): sparse {name} is not "
            f"supported here (only X of loss_and_grad may be a CSR matrix); pass "
            f"{name}.toarray() instead, but only if the dense array fits in memory")


def _non_numeric_columns(value) -> str:
    """The names of a data frame's non-numeric columns ("" for anything else).

    Duck-typed on a ``dtypes`` mapping of column names to dtypes (pandas,
    and frames that follow its interface), so no frame library is imported.
    """
    dtypes = getattr(value, "dtypes", None)
    items = getattr(dtypes, "items", None)
    if items is None:
        return ""
    try:
        bad = [str(col) for col, dt in items() if np.dtype(dt).kind not in "iuf"]
    except TypeError:  # extension dtypes NumPy does not know are not numeric here
        bad = [str(col) for col, dt in items()
               if getattr(dt, "kind", "O") not in "iuf"]
    return ", ".join(repr(c) for c in bad)


def as_numeric_array(name: str, value) -> np.ndarray:
    """``value`` as an ndarray of a real integer or floating dtype (no copy when it is one).

    Accepted: :data:`ACCEPTED`.  TypeError, naming ``name``, for anything
    else: Dask collections and SciPy sparse matrices
    (:func:`check_array_type`), objects ``np.asarray`` cannot convert (GPU
    arrays such as CuPy's or CUDA torch tensors, ragged sequences), and bool,
    complex, object or string dtypes.
    """
    if type(value) is not np.ndarray:  # the common case skips the checks
        check_array_type(name, value)
    try:
        arr = np.asarray(value)
    except MemoryError:
        raise
    except Exception as exc:  # ragged lists, GPU arrays, tensors that require grad...
        if isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be array-like of numbers: {exc}") from None
        raise TypeError(
            f"{name} of type {type_name(value)} cannot be converted by np.asarray ({exc}); "
            f"accepted are {ACCEPTED}; copy GPU arrays to the host first") from None
    if arr.dtype.kind not in "iuf":  # bool, complex, object, strings, dates...
        columns = _non_numeric_columns(value)
        if columns:
            raise TypeError(f"{name} must hold real numbers, but its column(s) {columns} of "
                            f"{type_name(value)} are not numeric; encode or drop them")
        origin = "" if isinstance(value, (np.ndarray, list, tuple)) else f" (from {type_name(value)})"
        raise TypeError(
            f"{name} must have a real integer or floating dtype, got dtype {arr.dtype}{origin}"
        )
    return arr


def working_dtype(*arrays: np.ndarray, name: str | None = None) -> np.dtype:
    """NumPy's promotion of the inputs, mapped onto float32 or float64.

    Integers become float64, float16 float32; wider floats raise TypeError
    (naming ``name`` when given).
    """
    dtype = np.result_type(*arrays)
    if dtype.kind in "iu":
        return np.dtype(np.float64)
    if dtype.itemsize <= 4:  # float16 and float32
        return np.dtype(np.float32)
    if dtype.itemsize == 8:
        return np.dtype(np.float64)
    what = f"{name} has dtype {dtype}, which is" if name else f"dtype {dtype} is"
    raise TypeError(f"{what} not supported; use float32 or float64")


def check_finite_scalar(name: str, value, low: float, high: float, high_open: bool) -> float:
    """``value`` as a float in [low, high] (or [low, high) when ``high_open``).

    TypeError for anything but a real number (bool included), ValueError,
    naming ``name``, for NaN, infinity or a value out of range.
    """
    if type(value) not in (float, int) and (  # the common types skip the slower ABC check
            isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {_num(value)}")
    value = float(value)
    ok = math.isfinite(value) and value >= low and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must lie in [{_num(low)}, {_num(high)}{bracket}, got {_num(value)}")
    return value


def _num(value) -> str:
    """A number as it would be typed: 1.5, -1, nan (not np.float64(1.5))."""
    value = value.item() if isinstance(value, np.generic) else value
    return repr(value)


def _labels(y: np.ndarray, K: int, ignore_index, classes: str) -> tuple[np.ndarray, int]:
    """Class indices as C-contiguous int64, ignored samples marked -1; their count.

    ``classes`` names where K comes from in messages ("W's 6 rows", "Z's 6 columns").
    """
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinite class labels")
        if not (y == np.floor(y)).all():
            bad = y[y != np.floor(y)][0]
            raise ValueError(f"y holds class labels, which must be integers; found {_num(bad)}")
    ignored = None if ignore_index is None else (y == ignore_index)
    n_ignored = 0 if ignored is None else int(np.count_nonzero(ignored))
    if n_ignored:
        out_of_range = ((y < 0) | (y >= K)) & ~ignored
        bad_any = out_of_range.any()
    else:
        bad_any = y.min() < 0 or y.max() >= K  # two reductions, no temporaries
    if bad_any:
        bad = y[((y < 0) | (y >= K)) & (True if ignored is None else ~ignored)][0]
        raise ValueError(
            f"y contains class label {int(bad)}, outside [0, {K}) for the {K} classes of "
            f"{classes}"
            + ("" if ignore_index is None else f" (ignore_index is {ignore_index})")
        )
    if n_ignored:
        # int64 first: an unsigned y would wrap the -1 marker to its maximum
        return np.where(ignored, np.int64(-1), y.astype(np.int64)), n_ignored
    return np.ascontiguousarray(y, dtype=np.int64), 0


@dataclass(frozen=True)
class Targets:
    """Validated targets, weights and reduction of a problem with m samples, K classes.

    ``labels`` (m,) int64 with -1 for ignored samples and ``T`` (0, K); or
    ``labels`` empty and ``T`` (m, K) dense targets in the working dtype.
    ``sw`` (m,) float64 or empty (unweighted); ``kept_weight`` the total
    weight of the samples that are not ignored (their count when unweighted);
    ``denom`` is what sums are divided by (``kept_weight`` under "mean", 1
    under "sum").
    """

    labels: np.ndarray
    T: np.ndarray
    sw: np.ndarray
    eps: float
    kept_weight: float
    denom: float
    n_ignored: int
    cw: np.ndarray | None = None
    zl: float | None = None
    cap: float | None = None


def check_options(label_smoothing, ignore_index, reduction, reductions=REDUCTIONS) -> float:
    """Validate the options shared by every loss entry point; return eps.

    ``reductions`` are the values of ``reduction`` the caller takes.
    """
    if reduction not in reductions:
        raise ValueError(f"reduction must be one of {reductions}, got {reduction!r}")
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)
    ):
        raise TypeError(f"ignore_index must be an integer or None, got {_num(ignore_index)}")
    return check_finite_scalar("label_smoothing", label_smoothing, 0.0, 1.0, high_open=False)


def check_extra_options(z_loss, softcap) -> tuple[float | None, float | None]:
    """Validate ``z_loss`` (>= 0, finite) and ``softcap`` (None or > 0, finite);
    return them as floats, None for "unused" (z_loss 0, softcap None)."""
    zl = check_finite_scalar("z_loss", z_loss, 0.0, np.inf, high_open=True)
    cap = None
    if softcap is not None:
        cap = check_finite_scalar("softcap", softcap, 0.0, np.inf, high_open=True)
        if cap == 0.0:
            raise ValueError("softcap must be positive (or None for no soft-capping), got 0.0")
    return (zl if zl > 0.0 else None), cap


def check_class_weight(class_weight, K: int, classes: str) -> np.ndarray | None:
    """``class_weight`` as (K,) C-contiguous float64, or None; ValueError naming it
    for a wrong shape, NaN, infinite or negative entries."""
    if class_weight is None:
        return None
    return check_weights("class_weight", class_weight, K, "class", f"{K} classes of {classes}")


def check_weights(name: str, weights, size: int, unit: str, of: str) -> np.ndarray:
    """``weights`` (one per ``unit``: the ``of`` that a message names) as
    (size,) C-contiguous float64; ValueError naming ``name`` for a wrong
    shape, NaN, infinite or negative entries."""
    w = as_numeric_array(name, weights)
    if w.shape != (size,):
        raise ValueError(f"{name} must hold one weight per {unit}: shape ({size},) for the "
                         f"{of}, got shape {w.shape}")
    w = kernel_array(w, np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(w < 0):
        raise ValueError(f"{name} must be non-negative, found {_num(w.min())}")
    return w


def check_targets(y, m: int, K: int, dtype: np.dtype, *, sample_weight, eps: float,
                  ignore_index, reduction: str, samples: str,
                  classes: str = "W (one row per class)", class_weight=None,
                  zl: float | None = None, cap: float | None = None) -> Targets:
    """Validate y and sample_weight for m samples (rows of ``samples``) and K
    classes (``classes`` says where they come from, for messages); and
    ``class_weight``.  ``zl`` and ``cap`` come from :func:`check_extra_options`.

    The denominator under "mean": the kept sample weight; with class-index
    targets and class weights, ``sum_i sw_i cw_{y_i}`` over the kept samples
    (PyTorch's normalisation); with dense targets class weights do not
    change it (PyTorch divides by the number of samples).  The z-loss is
    normalised by the kept sample weight in every case: ``zl`` is rescaled
    here so that the kernels' sums, divided by the denominator, give that.
    """
    y = as_numeric_array("y", y)
    if y.ndim == 2 and y.shape[1] == 1 and K != 1:
        raise ValueError(
            f"y has shape {y.shape}, a column vector: pass the class labels as a 1-D array "
            f"of length {y.shape[0]} (y.ravel()), or dense targets of shape ({m}, {K})")
    if y.ndim == 1:
        if y.shape[0] != m:
            raise ValueError(f"y has {y.shape[0]} labels but {samples} has {m} samples")
        labels, n_ignored = _labels(y, K, ignore_index, classes)
        T = np.zeros((0, K), dtype)
    elif y.ndim == 2:
        if y.shape != (m, K):
            raise ValueError(f"dense targets y must have shape ({m}, {K}), got {y.shape}")
        if ignore_index is not None:
            raise ValueError("ignore_index applies to class-index targets, not dense (m, K) targets")
        # Targets are data, not parameters: they take the working dtype
        # rather than promoting it (float64 one-hot rows must not turn a
        # float32 problem into a float64 copy of X).  Checked after the cast,
        # which may overflow.  C order and writeable, like every array the
        # kernels get, so that no new specialisation is compiled for them.
        with np.errstate(over="ignore"):  # an overflow is reported just below
            T = kernel_array(y, dtype)
        if not np.all(np.isfinite(T)):
            raise ValueError("dense targets y contain NaN or infinite values "
                             f"(in the working dtype {dtype})")
        if np.any(T < 0):
            raise ValueError(f"dense targets y must be non-negative, found {_num(T.min())}")
        labels, n_ignored = np.zeros(0, np.int64), 0
    else:
        raise ValueError(f"y must be (m,) class labels or (m, K) targets, got shape {y.shape}")

    if sample_weight is None:
        sw = np.zeros(0, np.float64)
        total = float(m - n_ignored)
    else:
        sw = check_weights("sample_weight", sample_weight, m, "sample", f"{m} samples of {samples}")
        with np.errstate(over="ignore"):  # an overflowing total is reported by denominator
            total = float(np.sum(sw[labels >= 0])) if n_ignored else float(np.sum(sw))

    cw = check_class_weight(class_weight, K, classes)
    loss_weight = total
    if cw is not None and labels.shape[0]:
        per_sample = cw[np.maximum(labels, 0)] * (labels >= 0)
        with np.errstate(over="ignore"):
            loss_weight = float(np.dot(per_sample, sw)) if sw.shape[0] \
                else float(np.sum(per_sample))
        if reduction == "mean" and total > 0.0 and not loss_weight > 0.0:
            raise ValueError(
                "the total weight of the kept samples is zero (class_weight is zero for every "
                "kept sample's label), so reduction='mean' is undefined")
    denom = denominator(loss_weight, reduction, every_sample_ignored=n_ignored == m)
    if zl is not None and reduction == "mean":
        zl = zl * denom / total  # normalised by the kept sample weight, not by class weights
    return Targets(labels=labels, T=T, sw=sw, eps=eps, kept_weight=total, denom=denom,
                   n_ignored=n_ignored, cw=cw, zl=zl, cap=cap)


def denominator(kept_weight: float, reduction: str, every_sample_ignored: bool = False) -> float:
    """What the sums are divided by: ``kept_weight`` under "mean", 1 under "sum" and "none".

    ValueError under "mean" when the kept weight is zero (or not positive), or
    when it overflows to infinity (finite weights whose sum does not fit a
    float64: dividing by it would give a NaN loss and a zero gradient).
    """
    if reduction != "mean":
        return 1.0
    if not kept_weight > 0.0:
        raise ValueError(
            "the total sample weight is zero"
            + (" (every sample is ignored)" if every_sample_ignored else "")
            + ", so reduction='mean' is undefined"
        )
    if kept_weight == np.inf:
        raise ValueError("the total weight of the kept samples overflows float64 (the "
                         "weights are finite but their sum is not), so reduction='mean' is "
                         "undefined; scale the weights down")
    return kept_weight


def prepare(W, X, y, *, b, sample_weight, l2, label_smoothing, ignore_index,
            reduction, method, class_weight=None, z_loss=0.0, softcap=None,
            reductions=REDUCTIONS) -> Problem:
    """Validate every argument of ``loss_and_grad``; return a :class:`Problem`.

    ``reductions`` are the reductions the caller takes: with
    :data:`LOSS_REDUCTIONS` ``reduction="none"`` is accepted (the caller then
    asks the kernels for per-sample losses), and ``l2`` must then be 0.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    eps = check_options(label_smoothing, ignore_index, reduction, reductions)
    l2 = check_finite_scalar("l2", l2, 0.0, np.inf, high_open=True)
    if reduction == "none" and l2:
        raise ValueError(f"l2 must be 0 with reduction='none' (per-sample losses have no "
                         f"place for the penalty), got {_num(l2)}; add (l2/2) ||W||^2 and l2 W "
                         f"yourself")
    zl, cap = check_extra_options(z_loss, softcap)

    W = as_numeric_array("W", W)
    X = check_csr("X", X) if is_sparse(X) else as_numeric_array("X", X)
    sparse = isinstance(X, CSR)
    if sparse:
        unsupported = [name for name, used in (("class_weight", class_weight is not None),
                                                ("z_loss", zl is not None),
                                                ("softcap", cap is not None),
                                                ("reduction='none'", reduction == "none"))
                       if used]
        if unsupported:
            raise ValueError(f"{', '.join(unsupported)} not supported for sparse (CSR) X; "
                             f"pass dense X (X.toarray(), if it fits in memory)")
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (K, n), got shape {W.shape}")
    if not sparse and X.ndim != 2:
        raise ValueError(f"X must be 2-D (m, n), got shape {X.shape}")
    K, n = W.shape
    m = X.shape[0]
    if K == 0 or n == 0:
        raise ValueError(f"W must have at least one class and one feature, got shape {W.shape}")
    if X.shape[1] != n:
        raise ValueError(f"X has {X.shape[1]} features but W has {n}: shapes X {X.shape}, W {W.shape}")
    if m == 0:
        raise ValueError(f"X has no samples (shape {X.shape})")

    promote = [W, X.data if sparse else X]
    if b is not None:
        b = as_numeric_array("b", b)
        if b.shape != (K,):
            raise ValueError(f"b must have shape ({K},) to match W {W.shape}, got {b.shape}")
        promote.append(b)
    dtype = working_dtype(*promote)
    targets = check_targets(y, m, K, dtype, sample_weight=sample_weight, eps=eps,
                            ignore_index=ignore_index, reduction=reduction, samples="X",
                            class_weight=class_weight, zl=zl, cap=cap)
    # keeps layout (or the CSR arrays), copies only to change dtype
    X = with_dtype(X, dtype) if sparse else X.astype(dtype, copy=False)
    W = kernel_array(W, dtype)
    b_arr = np.zeros(K, dtype) if b is None else kernel_array(b, dtype)
    return Problem(X=X, W=W, b=b_arr, has_b=b is not None, l2=l2, dtype=dtype, **vars(targets))


def prepare_logits(Z, y, *, sample_weight, label_smoothing, ignore_index, reduction,
                   class_weight=None, z_loss=0.0, softcap=None):
    """Validate the arguments of ``loss_and_grad_logits``; return ``(Z, targets, unbatched)``.

    Z keeps its layout; it is converted (copied) only to change its dtype.
    Un-batched logits, a (K,) Z with a scalar class index or (K,) dense
    targets y (and a scalar ``sample_weight``), are returned as a batch of
    one: Z (1, K), and ``unbatched`` is True.
    """
    eps = check_options(label_smoothing, ignore_index, reduction, LOSS_REDUCTIONS)
    zl, cap = check_extra_options(z_loss, softcap)
    Z = as_numeric_array("Z", Z)
    unbatched = Z.ndim == 1
    if unbatched:
        if Z.shape[0] == 0:
            raise ValueError(f"Z must have at least one class, got shape {Z.shape}")
        y = as_numeric_array("y", y)
        if y.ndim == 1 and y.shape != Z.shape:
            raise ValueError(f"for 1-D (K,) logits Z of shape {Z.shape}, y must be a scalar "
                             f"class index or {Z.shape} targets, got shape {y.shape}")
        if y.ndim > 1:
            raise ValueError(f"for 1-D (K,) logits Z, y must be a scalar class index or "
                             f"(K,) targets, got shape {y.shape}")
        if sample_weight is not None:
            sample_weight = as_numeric_array("sample_weight", sample_weight)
            if sample_weight.ndim != 0:
                raise ValueError(f"for 1-D (K,) logits Z, sample_weight must be a scalar, "
                                 f"got shape {sample_weight.shape}")
            sample_weight = sample_weight[np.newaxis]
        Z, y = Z[np.newaxis], y[np.newaxis]
    elif Z.ndim != 2:
        raise ValueError(f"Z must be 2-D (m, K) or 1-D (K,) logits, got shape {Z.shape}")
    m, K = Z.shape
    if m == 0 or K == 0:
        raise ValueError(f"Z must have at least one sample and one class, got shape {Z.shape}")
    dtype = working_dtype(Z, name="Z")
    targets = check_targets(y, m, K, dtype, sample_weight=sample_weight, eps=eps,
                            ignore_index=ignore_index, reduction=reduction, samples="Z",
                            classes="Z (one column per class)", class_weight=class_weight,
                            zl=zl, cap=cap)
    return Z.astype(dtype, copy=False), targets, unbatched
