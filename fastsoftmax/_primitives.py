"""Row-wise softmax, log-softmax and log-sum-exp along the last axis.

The three primitives share one compiled kernel and differ only in what it
writes at the end of each tile of rows (``mode``).  Per row, with ``mx`` its
largest entry:

1. one pass for ``mx`` (a scalar loop: LLVM vectorises a floating-point max
   only under the no-NaNs flag, which the project leaves out; it is cheap
   next to the exponentials);
2. one pass writing the shifted row ``z - mx`` (every entry <= 0) to a
   float64 buffer;
3. one pass of :func:`fastsoftmax._rowmath.exp_nonpositive` over all the
   shifted rows of the tile at once, so that it runs as SIMD code whatever K
   is, even for two or three classes;
4. one sum ``s`` of the exponentials (at least 1: the maximum contributes
   exp(0) = 1) and one ``math.log(s)``;
5. the output: ``exp(z - mx) / s``, ``(z - mx) - log(s)`` or ``mx + log(s)``.

Nothing large is exponentiated and the only subtraction of two large numbers
is ``z - mx`` itself, which is exact when they are close, so rows of any
finite size (around 1e6 or 1e300) give results accurate to a few ulp.

Rows are split into ``nchunks`` contiguous chunks, one per ``prange``
iteration (:func:`_rows_parallel`), or taken as one chunk without a parallel
region for small inputs (:func:`_rows_serial`); both call
:func:`_rows_chunk`.  A chunk writes only its own rows, and no loop that
reduces to a scalar also stores (see ``tile_loss_and_coef``), so the result
depends on the input and the chunk count only: repeated calls with the same
thread count are bitwise identical.

Peak extra memory besides the result: per chunk, float64 scratch buffers of
at most 16 KiB while K <= ``_dispatch.TILE_ELEMENTS`` (512), and of 16 K bytes for larger
K; plus one converted copy of Z when its dtype is not float32 or float64.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
from numba import prange
from numpy.typing import ArrayLike

from . import _dispatch as policy
from ._jit import parallel_kernel, serial_kernel
from ._threading import parallel_region
from ._rowmath import exp_nonpositive
from ._validation import as_numeric_array, working_dtype

# What the kernel writes; compile-time constants inside the kernel.
_SOFTMAX = 0
_LOG_SOFTMAX = 1
_LOGSUMEXP = 2


# --- compiled kernels ----------------------------------------------------------


@serial_kernel
def _rows_chunk(Z, out, mode, lo, hi, tile):
    """Rows ``lo:hi`` of Z (m, K), float32 or float64, any layout, into ``out``.

    ``out`` has Z's dtype and shape (m, K) for softmax and log-softmax, or
    (m, 1) for log-sum-exp (``mode`` picks which).  Rows go through in tiles
    of ``tile`` rows, via float64 scratch buffers of (tile, K): ``S`` for the
    shifted rows, ``E`` for their exponentials.
    """
    K = Z.shape[1]
    S_flat = np.empty(tile * K)
    E_flat = np.empty(tile * K)
    S = S_flat.reshape((tile, K))
    E = E_flat.reshape((tile, K))
    mx = np.empty(tile)
    sums = np.empty(tile)
    # Every inner loop runs over k from 0 on a 2-D index whose row is fixed:
    # an index with a computed start (S_flat[r * K + k]) keeps a negative-index
    # check per element that stops LLVM from vectorising the loop.
    for t0 in range(lo, hi, tile):
        R = min(tile, hi - t0)
        Zt = Z[t0: t0 + R]
        for r in range(R):
            # "v > best" skips a NaN rather than returning it; the NaN still
            # reaches every output of its row through the sum below.
            best = np.float64(Zt[r, 0])
            for k in range(K):
                v = np.float64(Zt[r, k])
                best = v if v > best else best
            mx[r] = best
            for k in range(K):
                S[r, k] = np.float64(Zt[r, k]) - best
        S_tile = S_flat[: R * K]
        E_tile = E_flat[: R * K]
        for q in range(R * K):  # one SIMD pass of exponentials over the tile
            E_tile[q] = exp_nonpositive(S_tile[q])
        for r in range(R):
            # Reduce only, store nothing: a loop that did both would vectorise
            # behind a run-time alias check, and the buffer addresses would
            # then pick the summation order and the result's last bits.
            s = 0.0
            for k in range(K):
                s += E[r, k]
            sums[r] = s
        # The tile's outputs are written only now, from S, E, mx and sums,
        # after the last read of its rows of Z: out may be Z itself.
        Ot = out[t0: t0 + R]
        if mode == _SOFTMAX:
            for r in range(R):
                inv = 1.0 / sums[r]
                for k in range(K):
                    Ot[r, k] = E[r, k] * inv
        elif mode == _LOG_SOFTMAX:
            for r in range(R):
                # (z - mx) - log(s) with z - mx read back from S: written as
                # one expression, "reassoc" could make it z - (mx + log(s)),
                # which rounds away log(s) when |mx| is large.
                lse = math.log(sums[r])
                for k in range(K):
                    Ot[r, k] = S[r, k] - lse
        else:
            for r in range(R):
                Ot[r, 0] = mx[r] + math.log(sums[r])


@parallel_kernel
def _rows_parallel(Z, out, mode, nchunks, tile):
    """:func:`_rows_chunk` over all m rows of Z, in ``nchunks`` parallel chunks."""
    m = Z.shape[0]
    for c in prange(nchunks):
        _rows_chunk(Z, out, mode, c * m // nchunks, (c + 1) * m // nchunks, tile)


@serial_kernel
def _rows_serial(Z, out, mode, tile):
    """:func:`_rows_chunk` over all m rows of Z, as one chunk, without threads."""
    _rows_chunk(Z, out, mode, 0, Z.shape[0], tile)


# --- Python API ----------------------------------------------------------------


def _prepare(Z: ArrayLike, func: str) -> tuple[np.ndarray, np.dtype]:
    """Z as a 1-D or 2-D float32/float64 array, and Z's own dtype.

    The layout is kept: a float32 or float64 Z is used as it is, other dtypes
    are converted (one copy).
    """
    Z = as_numeric_array("Z", Z)  # TypeError for bool, complex, object, strings
    if Z.ndim not in (1, 2):
        raise ValueError(f"{func}: Z must be 1-D (K,) or 2-D (m, K), got shape {Z.shape}")
    if Z.shape[-1] == 0:
        raise ValueError(f"{func}: Z must have at least one entry along its last axis, "
                         f"got shape {Z.shape}")
    return Z.astype(working_dtype(Z, name="Z"), copy=False), Z.dtype


def _check_out(out, shape: tuple, dtype: np.dtype, func: str, z_dtype: np.dtype) -> None:
    """Raise unless ``out`` is a writeable ndarray of exactly ``shape`` and ``dtype``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{func}: out must be a NumPy array or None, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{func}: out must have dtype {dtype} (the result dtype for Z of "
                        f"dtype {z_dtype}), got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"{func}: out must have shape {shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{func}: out must be writeable (it is read-only)")


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b are the same elements in the same order (an in-place call)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides)


def _run(Z: ArrayLike, out: Optional[np.ndarray], mode: int, func: str) -> np.ndarray:
    """Validate, allocate or check ``out``, run the kernel; return ``out``."""
    Z, z_dtype = _prepare(Z, func)
    dtype = Z.dtype
    shape = Z.shape[:-1] if mode == _LOGSUMEXP else Z.shape
    if out is None:
        out = np.empty(shape, dtype)
    else:
        _check_out(out, shape, dtype, func, z_dtype)
        # The kernel reads each tile of rows completely before writing that
        # tile's outputs, and a chunk writes only its own rows, so out may be
        # Z itself; any other overlap is resolved by reading from a copy.
        if np.may_share_memory(out, Z) and not (mode != _LOGSUMEXP and _same_view(out, Z)):
            Z = Z.copy()
    # The kernel always sees Z as (m, K) and out as (m, K), or (m, 1) for
    # log-sum-exp.  New unit axes are views, so the kernel writes into the
    # caller's array; .view(np.ndarray) drops subclasses (np.memmap...).
    out2 = out.view(np.ndarray)
    if mode == _LOGSUMEXP:
        out2 = out2[..., np.newaxis]
    if Z.ndim == 1:
        Z, out2 = Z[np.newaxis, :], out2[np.newaxis]
    m, K = Z.shape
    if m == 0:
        return out
    tile = policy.primitive_tile_rows(K)
    chunks = policy.chunk_count(m)
    if chunks == 1 or m * K < policy.SERIAL_ELEMENTS:
        _rows_serial(Z, out2, mode, tile)
    else:
        with parallel_region():
            _rows_parallel(Z, out2, mode, chunks, tile)
    return out


def softmax(Z: ArrayLike, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Softmax of each row: ``exp(z_k - max z) / sum_j exp(z_j - max z)``.

    Parameters
    ----------
    Z : array_like, shape (K,) or (m, K)
        Logits; the softmax is taken along the last axis, one row at a time.
        Any layout (C, Fortran, strided, read-only) is used without a copy
        when Z is float32 or float64.  Integers are converted to float64 and
        float16 to float32; m may be 0, K may not.
    out : ndarray, optional
        Where to write the result: same shape as Z, the result dtype, and
        writeable.  It may be Z itself (an in-place softmax).

    Returns
    -------
    ndarray, shape of Z
        float32 for float32 or float16 Z, float64 otherwise (``out`` when
        given).  Computed in float64 whatever the dtype; in float64 each
        row sums to 1 within about K ulp.

    Every finite row is handled without overflow (logits of 1e6 or 1e300 are
    fine).  Exponentials below exp(-708) are flushed to 0 rather than
    returned as subnormal numbers.  Non-finite entries: a row containing NaN
    gives NaN everywhere; ``-inf`` entries of a row whose maximum is finite
    get probability 0; a row containing ``+inf``, or made only of ``-inf``,
    gives NaN everywhere (its maximum cannot be subtracted).  For a given
    thread count the result is bitwise reproducible.

    Raises
    ------
    TypeError
        Z (or out) of a non-real dtype (bool, complex, object, strings) or
        ``out`` of the wrong dtype or not an array; Z a Dask collection, a
        SciPy sparse matrix or an object ``np.asarray`` cannot convert (a GPU
        array), as in :func:`fastsoftmax.loss_and_grad`.
    ValueError
        Z not 1-D or 2-D, an empty last axis, ``out`` of the wrong shape or
        read-only.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> fs.softmax(np.array([[0.0, 0.0], [1e6, 1e6]]))
    array([[0.5, 0.5],
           [0.5, 0.5]])
    """
    return _run(Z, out, _SOFTMAX, "softmax")


def log_softmax(Z: ArrayLike, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Log of the softmax of each row: ``(z_k - max z) - log sum_j exp(z_j - max z)``.

    Parameters
    ----------
    Z : array_like, shape (K,) or (m, K)
        Logits, along the last axis; layouts and dtypes as in :func:`softmax`.
    out : ndarray, optional
        Same shape as Z, the result dtype, writeable; may be Z itself.

    Returns
    -------
    ndarray, shape of Z
        float32 for float32 or float16 Z, float64 otherwise (``out`` when
        given).  Computed in float64.

    Accurate for every finite row, with no overflow and no loss of the small
    terms when the logits are large (rows around 1e6 give the exact values).
    Non-finite entries: a row containing NaN gives NaN everywhere; ``-inf``
    entries of a row whose maximum is finite give ``-inf``; a row containing
    ``+inf``, or made only of ``-inf``, gives NaN everywhere.  Bitwise
    reproducible for a given thread count.

    Raises
    ------
    TypeError, ValueError
        As :func:`softmax`.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> fs.log_softmax(np.array([1e6, 1e6]))
    array([-0.69314718, -0.69314718])
    """
    return _run(Z, out, _LOG_SOFTMAX, "log_softmax")


def logsumexp(
    Z: ArrayLike, out: Optional[np.ndarray] = None
) -> Union[np.ndarray, np.floating]:
    """``log sum_k exp(z_k)`` of each row, computed as ``max z + log sum_k exp(z_k - max z)``.

    Parameters
    ----------
    Z : array_like, shape (K,) or (m, K)
        Values, reduced along the last axis; layouts and dtypes as in
        :func:`softmax`.
    out : ndarray, optional
        Shape (m,) for a 2-D Z, shape () for a 1-D Z; the result dtype;
        writeable.

    Returns
    -------
    ndarray of shape (m,), or a NumPy scalar for a 1-D Z
        float32 for float32 or float16 Z, float64 otherwise.  When ``out`` is
        given it is returned (a 0-d array for a 1-D Z).

    Accurate for every finite row, without overflow or underflow, to a few
    ulp of max(1, |row maximum|) absolutely: a result near 0 (``[0, -40]``,
    exactly 4.2e-18) comes back as 0.  Non-finite
    entries: a row containing NaN gives NaN; ``-inf`` entries of a row with a
    finite maximum add nothing; a row containing ``+inf``, or made only of
    ``-inf``, gives NaN (not ``+inf`` or ``-inf`` as the limit would: the
    kernel does not special-case them).  Bitwise reproducible for a given
    thread count.

    Raises
    ------
    TypeError, ValueError
        As :func:`softmax`.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> float(fs.logsumexp(np.array([1e6, 1e6])))  # 1e6 + log(2)
    1000000.6931471806
    >>> fs.logsumexp(np.zeros((3, 4)))
    array([1.38629436, 1.38629436, 1.38629436])
    """
    result = _run(Z, out, _LOGSUMEXP, "logsumexp")
    if out is None and result.ndim == 0:
        return result[()]
    return result
