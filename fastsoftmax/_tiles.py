"""Tiles of rows for the compiled kernels: which rows a tile keeps, and a
contiguous copy of them when BLAS or a vectorised loop needs one."""

from __future__ import annotations

from numba.extending import overload

from ._jit import OVERLOAD_OPTIONS, inline_helper


def kept_tile(X, labels, t0, t1, rows, buf):
    """The rows of tile t0:t1 of X that ignore_index keeps, as a C-contiguous
    (R, n) array, R their count (0 when it keeps none), their indices written
    to ``rows[:R]``: a view when X is C-contiguous and the tile keeps every
    row, else a copy into ``buf`` ((>= t1 - t0, n), C-contiguous; always a
    copy, converted, when ``buf`` has another dtype than X).  ``labels`` as
    in :func:`kept_rows`."""


@overload(kept_tile, jit_options=OVERLOAD_OPTIONS)
def _kept_tile_impl(X, labels, t0, t1, rows, buf):
    same = X.dtype == buf.dtype  # else a converted copy, row by row (the last case)
    if same and X.layout == "C":
        def view_or_gather(X, labels, t0, t1, rows, buf):
            R = kept_rows(labels, t0, t1, rows)
            if R == t1 - t0:
                return X[t0:t1]
            return gather(X, rows[:R], buf)
        return view_or_gather
    if same and X.layout == "F":
        def gather_columns(X, labels, t0, t1, rows, buf):
            R = kept_rows(labels, t0, t1, rows)
            if R < t1 - t0:
                return gather(X, rows[:R], buf)
            out = buf[:R]
            for l in range(X.shape[1]):  # column by column: X's own order
                for r in range(R):
                    out[r, l] = X[t0 + r, l]
            return out
        return gather_columns

    def gather_kept(X, labels, t0, t1, rows, buf):
        return gather(X, rows[:kept_rows(labels, t0, t1, rows)], buf)
    return gather_kept


@inline_helper
def kept_rows(labels, t0, t1, rows):
    """Indices of the tile's samples that ignore_index keeps, into ``rows``; their count."""
    R = 0
    for i in range(t0, t1):
        if labels.shape[0] == 0 or labels[i] >= 0:
            rows[R] = i
            R += 1
    return R


@inline_helper
def gather(X, rows, buf):
    """The rows of X listed in ``rows``, copied into ``buf``."""
    out = buf[: rows.shape[0]]
    for r in range(rows.shape[0]):
        for l in range(X.shape[1]):
            out[r, l] = X[rows[r], l]
    return out
