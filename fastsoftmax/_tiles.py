"""Tiles of rows for the compiled kernels: which rows a tile keeps, and a
contiguous copy of them when BLAS or a vectorised loop needs one."""

from __future__ import annotations

from numba.extending import overload

from ._jit import OVERLOAD_OPTIONS, serial_kernel


def tile_view(X, t0, t1, rows, buf):
    """Rows t0:t1 of X as a C-contiguous array: a view when X is C-contiguous,
    else a copy into ``buf`` (``rows`` holds t0..t1-1)."""


@overload(tile_view, jit_options=OVERLOAD_OPTIONS)
def _tile_view_impl(X, t0, t1, rows, buf):
    if X.layout == "C":
        return lambda X, t0, t1, rows, buf: X[t0:t1]
    if X.layout == "F":
        def gather_columns(X, t0, t1, rows, buf):  # column by column: X's own order
            out = buf[: t1 - t0]
            for l in range(X.shape[1]):
                for r in range(t1 - t0):
                    out[r, l] = X[t0 + r, l]
            return out
        return gather_columns
    return lambda X, t0, t1, rows, buf: gather(X, rows, buf)


@serial_kernel
def kept_rows(labels, t0, t1, rows):
    """Indices of the tile's samples that ignore_index keeps, into ``rows``; their count."""
    R = 0
    for i in range(t0, t1):
        if labels.shape[0] == 0 or labels[i] >= 0:
            rows[R] = i
            R += 1
    return R


@serial_kernel
def gather(X, rows, buf):
    """The rows of X listed in ``rows``, copied into ``buf``."""
    out = buf[: rows.shape[0]]
    for r in range(rows.shape[0]):
        for l in range(X.shape[1]):
            out[r, l] = X[rows[r], l]
    return out
