"""Scale-out on Dask: the loss and gradient of data chunked by rows.

The loss and its gradient are sums over samples, so each row block can be
reduced where it lives: every block runs :func:`fastsoftmax.loss_and_grad`'s
kernel with ``reduction="sum"`` (no penalty), the blocks' loss, gradient and
weight total are added in a tree, and only the client divides and adds the L2
term.  Only K x n partial sums cross the network, never the data.
:func:`prepare_fit` checks and persists the data of a
``SoftmaxRegression.fit`` on Dask, so that the estimator needs no Dask code
of its own.

Threads: every Dask worker thread runs parallel kernels with numba's thread
count, so keep ``numba threads x worker threads`` at the core count, e.g.
workers with ``--nthreads 1`` and ``NUMBA_NUM_THREADS`` equal to the cores
they may use (``LocalCluster(threads_per_worker=1, env={"NUMBA_NUM_THREADS":
"2"})`` or ``NUMBA_NUM_THREADS=2 dask worker ... --nthreads 1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from ._api import finish, sums
from ._sparse import is_sparse
from ._validation import (
    METHODS,
    as_numeric_array,
    check_finite_scalar,
    check_options,
    denominator,
    is_dask_collection,
    prepare,
    working_dtype,
)

#: the message for row blocks of unknown size (after boolean filtering, say)
UNKNOWN_CHUNKS = "X has unknown chunk sizes; call X.compute_chunk_sizes() first"


def _block_sums(W, b, X, y, sw, eps, ignore_index, method):
    """One row block: ``(loss sum, G (K, n), gb (K,), kept weight)``, all float64."""
    if X.shape[0] == 0:  # an empty block (after filtering, say) adds nothing
        K, n = np.shape(W)
        return 0.0, np.zeros((K, n)), np.zeros(K), 0.0
    p = prepare(W, X, y, b=b, sample_weight=sw, l2=0.0, label_smoothing=eps,
                ignore_index=ignore_index, reduction="sum", method=method)
    loss, G, gb = sums(p, method)
    return (float(loss), np.asarray(G, dtype=np.float64), np.asarray(gb, dtype=np.float64),
            p.kept_weight)


def _add(*parts):
    """The sum of block results, in the order given (deterministic)."""
    loss, G, gb, kept = parts[0]
    G, gb = G.copy(), gb.copy()
    for part in parts[1:]:
        loss += part[0]
        G += part[1]
        gb += part[2]
        kept += part[3]
    return loss, G, gb, kept


def _all_finite(block):
    """Whether a block (dense, or SciPy sparse: its stored values) is finite, as a (1, 1) array."""
    values = block.data if is_sparse(block) else block
    return np.array([[bool(np.isfinite(values).all())]])


def _rows_like(a, chunks, name):
    import dask.array as da

    a = da.asarray(a)
    if a.ndim == 0 or np.isnan(a.shape[0]):
        raise ValueError(f"{name} must be an array of {sum(chunks)} rows with known chunk sizes, "
                         f"got shape {a.shape}")
    if a.shape[0] != sum(chunks):
        raise ValueError(f"{name} has {a.shape[0]} rows but X has {sum(chunks)} samples")
    return a.rechunk((chunks,) + tuple((s,) for s in a.shape[1:]))


def loss_and_grad(
    W, X, y, *, b=None, sample_weight=None, l2: float = 0.0, label_smoothing: float = 0.0,
    ignore_index: int | None = None, reduction: str = "mean", method: str = "fused",
    split_every: int = 8,
) -> Union[tuple[float, np.ndarray], tuple[float, np.ndarray, np.ndarray]]:
    """:func:`fastsoftmax.loss_and_grad` for ``dask.array`` X (m, n) chunked by rows.

    ``y`` (m,) or (m, K) and ``sample_weight`` (m,) may be dask or NumPy
    arrays; they are rechunked to X's row blocks (X's columns to one block).
    ``W`` (K, n) and ``b`` (K,) are small arrays sent to every block (Dask
    ones are computed first).
    ``split_every`` is the fan-in of the tree that adds the blocks' sums.
    Same results as the in-memory call (to rounding: blocks are summed in a
    different order), the same options and the same errors, raised when the
    blocks are computed.  Computes with Dask's current scheduler (a
    ``distributed.Client`` if one is active).

    X's blocks may be SciPy CSR matrices (``X.map_blocks(scipy.sparse.csr_matrix)``,
    or a vectorizer's output): each block then runs the sparse kernels of
    :func:`fastsoftmax.loss_and_grad`, and is never densified.

    Returns ``(loss, dW)`` or ``(loss, dW, db)`` as NumPy values.
    """
    import dask
    import dask.array as da

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(split_every, bool) or not isinstance(split_every, int) or split_every < 2:
        raise ValueError(f"split_every must be an integer >= 2, got {split_every!r}")
    eps = check_options(label_smoothing, ignore_index, reduction)
    l2 = check_finite_scalar("l2", l2, 0.0, np.inf, high_open=True)
    # W and b are small: dask ones are computed here, on purpose, and sent to every block.
    W = as_numeric_array("W", W.compute() if is_dask_collection(W) else W)
    if b is not None:
        b = as_numeric_array("b", b.compute() if is_dask_collection(b) else b)
    X = da.asarray(X)
    if X.ndim != 2 or W.ndim != 2:
        raise ValueError(f"X must be 2-D (m, n) and W 2-D (K, n), got {X.shape} and {W.shape}")
    if np.isnan(X.shape[0]):
        raise ValueError(UNKNOWN_CHUNKS)
    if X.shape[0] == 0:
        raise ValueError(f"X has no samples (shape {X.shape})")
    X = X.rechunk({1: -1})
    rows = X.chunks[0]
    y = _rows_like(y, rows, "y")
    blocks_x = X.to_delayed().ravel()
    blocks_y = y.to_delayed().ravel()
    if sample_weight is None:
        blocks_w = [None] * len(blocks_x)
    else:
        blocks_w = _rows_like(sample_weight, rows, "sample_weight").to_delayed().ravel()
    parts = [dask.delayed(_block_sums)(W, b, xb, yb, wb, eps, ignore_index, method)
             for xb, yb, wb in zip(blocks_x, blocks_y, blocks_w)]
    while len(parts) > 1:
        parts = [dask.delayed(_add)(*parts[i:i + split_every])
                 for i in range(0, len(parts), split_every)]
    (loss_sum, G, gb, kept), = dask.compute(parts[0])

    promote = [W, np.empty(0, X.dtype)] + ([] if b is None else [b])
    return finish(loss_sum, G, gb, denom=denominator(kept, reduction), l2=l2, W=W,
                  dtype=working_dtype(*promote), has_b=b is not None)


@dataclass(frozen=True)
class FitData:
    """Checked training data of ``SoftmaxRegression.fit``, persisted on the workers.

    ``X`` (m, n) float32/float64 dask array chunked by rows only;
    ``y_index`` (m,) int64 dask array of indices into ``classes`` (K,), a
    sorted NumPy array of the distinct labels; ``sample_weight`` (m,) float64
    dask array or None; ``total`` the sum of the weights (m when unweighted);
    ``loss_and_grad`` the evaluator to call with them (this module's).
    """

    X: object
    y_index: object
    classes: np.ndarray
    sample_weight: object
    total: float
    loss_and_grad: Callable


def prepare_fit(X, y, sample_weight=None) -> FitData:
    """Check and persist the data of a fit on Dask; see :class:`FitData`.

    The checks scikit-learn's ``validate_data`` makes on NumPy input are made
    here on the workers (2-D X with known chunk sizes, finite X,
    classification targets with at least two classes, weight shape, sign and
    finiteness); only their outcomes come back to the client.  X's blocks
    may be SciPy CSR matrices (kept sparse).  X of another
    dtype than float32/float64 becomes float64; a scalar ``sample_weight``
    weights every sample alike.  Needs scikit-learn (for its definition of
    classification targets).  Raises ValueError for bad data.
    """
    import dask.array as da
    from sklearn.utils.multiclass import check_classification_targets

    X = da.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (m, n), got shape {X.shape}")
    if np.isnan(X.shape[0]):
        raise ValueError(UNKNOWN_CHUNKS)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    X = X.rechunk({1: -1})
    y = _rows_like(y, X.chunks[0], "y")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (m,), got shape {y.shape}")
    classes = np.unique(da.unique(y).compute())
    check_classification_targets(classes)
    if classes.dtype.kind == "f" and not np.all(np.isfinite(classes)):
        raise ValueError("y contains NaN or infinity")
    if classes.shape[0] < 2:
        raise ValueError(
            f"SoftmaxRegression needs samples of at least 2 classes in the data, "
            f"but the data contain only one class: {classes[0]!r}")
    # per block, so that blocks of SciPy sparse matrices (which np.isfinite
    # does not take) are checked on their stored values
    checks = [X.map_blocks(_all_finite, dtype=bool, chunks=(1, 1),
                           meta=np.empty((0, 0), bool)).all()]
    if sample_weight is None:
        total = float(X.shape[0])
    else:
        if np.ndim(sample_weight) == 0:
            sample_weight = da.full(X.shape[0], float(sample_weight), chunks=(X.chunks[0],))
        sample_weight = _rows_like(da.asarray(sample_weight, dtype=np.float64),
                                   X.chunks[0], "sample_weight")
        if sample_weight.ndim != 1:
            raise ValueError(f"sample_weight must be 1-D, got shape {sample_weight.shape}")
        checks += [sample_weight.min(), sample_weight.sum()]
    results = da.compute(*checks)
    if not results[0]:
        raise ValueError("X contains NaN or infinity")
    if sample_weight is not None:
        lowest, total = results[1], float(results[2])
        if not np.isfinite(total) or lowest < 0:
            raise ValueError("sample_weight must be finite and non-negative")
        sample_weight = sample_weight.persist()
    y_index = y.map_blocks(lambda block: np.searchsorted(classes, block), dtype=np.int64)
    X, y_index = X.persist(), y_index.persist()
    return FitData(X=X, y_index=y_index, classes=classes, sample_weight=sample_weight,
                   total=total, loss_and_grad=loss_and_grad)
