"""Sparse X: the CSR structure the sparse kernels take, and its validation.

``loss_and_grad`` accepts SciPy's CSR containers for X (``csr_matrix`` and
``csr_array``).  Other sparse formats (CSC, COO, LIL...) are refused with a
TypeError that names CSR rather than converted silently: a conversion copies
all of X, which the caller should see and do once (``X.tocsr()``), not on
every call of an optimiser.  Sparse W, y, b or sample_weight are refused.

The CSR arrays are used as they are, in place: column indices need not be
sorted, explicit zeros and empty rows are allowed, and duplicate entries of
a row are summed (as SciPy's own arithmetic does: every kernel is linear in
each stored entry).  Nothing here modifies the caller's matrix (SciPy's
``sum_duplicates`` or ``sort_indices`` would).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import numpy as np

from ._arrays import kernel_array, type_name


@dataclass(frozen=True)
class CSR:
    """A validated CSR matrix in the encoding the sparse kernels expect.

    ``data`` (nnz,) float32 or float64 (the working dtype), ``indices``
    (nnz,) and ``indptr`` (m + 1,), both int32 or both int64, C-contiguous;
    ``indptr`` starts at 0, never decreases and ends at nnz; every index lies
    in [0, n).  ``shape`` is (m, n).
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def nnz(self) -> int:
        return int(self.data.shape[0])

    def to_scipy(self):
        """The same matrix as a ``scipy.sparse.csr_matrix`` sharing the arrays where SciPy allows."""
        import scipy.sparse

        return scipy.sparse.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape,
                                       copy=False)

    @functools.cached_property
    def squared(self) -> "CSR":
        """The entrywise square (m, n), duplicate entries summed first (as
        SciPy's ``multiply`` sums them), in X's index dtype (SciPy narrows
        int64 indices that fit in int32: the sparse kernels would then be
        compiled for one more index type); made on first use and kept with
        the matrix: the Hessian's diagonal of every Newton step needs it
        (4.4 ms for 0.76 M non-zeros; memory about X's own)."""
        Xs = self.to_scipy()
        S = Xs.multiply(Xs).tocsr()
        return CSR(data=S.data, indices=kernel_array(S.indices, self.indices.dtype),
                   indptr=kernel_array(S.indptr, self.indptr.dtype), shape=self.shape)

    def parts(self, count: int) -> np.ndarray:
        """:func:`balanced_parts` of the rows into ``count`` parts, made once
        per count and kept with the matrix (a call takes about 0.1 ms, a
        Newton-CG product on small data 2-3 ms)."""
        kept = self.__dict__.setdefault("_parts", {})
        bounds = kept.get(count)
        if bounds is None:
            bounds = kept.setdefault(count, balanced_parts(self.indptr, count))
        return bounds

    @functools.cached_property
    def transposed(self) -> "CSR":
        """X^T (n, m) in CSR form, duplicate entries summed, column
        indices (X's rows) sorted, in X's dtypes; made on first use and kept
        with the matrix (memory about X's own): Newton-CG's Hessian products
        by columns need it (:mod:`fastsoftmax._sparse_columns`; 22 ms to make
        for 1.8 M non-zeros)."""
        # SciPy's conversion writes each column's rows in increasing order (and marks
        # them sorted), so X's duplicate entries become neighbours, summed without a
        # sort: 5-7 ms on the docstrings, against 25-36 ms for summing X's
        # duplicates first (which sorts X's rows, in a copy of X)
        T = self.to_scipy().T.tocsr()
        T.sum_duplicates()
        return CSR(data=kernel_array(T.data, self.dtype),
                   indices=kernel_array(T.indices, self.indices.dtype),
                   indptr=kernel_array(T.indptr, self.indptr.dtype), shape=T.shape)


def balanced_parts(indptr: np.ndarray, parts: int) -> np.ndarray:
    """Bounds (<= parts + 1,) int64 of contiguous row ranges of a CSR
    structure holding about equal numbers of non-zeros (row r of ``indptr``
    (rows + 1,) goes to the part its first non-zero falls in); empty parts
    are merged away."""
    rows = indptr.shape[0] - 1
    targets = np.linspace(0, int(indptr[-1]), parts + 1)
    bounds = np.searchsorted(indptr[:-1], targets[1:-1], side="left").astype(np.int64)
    return np.unique(np.concatenate([[0], bounds, [rows]]).astype(np.int64))


def is_sparse(value) -> bool:
    """Whether ``value`` is a SciPy sparse matrix or array (without importing SciPy)."""
    # One can only exist once scipy.sparse has been imported.
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(value)


def check_csr(name: str, value, n_features: int | None = None) -> CSR:
    """The CSR arrays of a SciPy CSR matrix or array, checked; data keep their dtype.

    TypeError for another sparse format (naming CSR and ``.tocsr()``) and for
    a non-numeric dtype (bool and complex included); ValueError for a
    malformed structure: ``indptr`` of the wrong length, not starting at 0,
    decreasing or pointing past the stored entries, or column indices
    outside ``[0, n)``.  These checks read the index arrays once (O(m + nnz))
    and allocate one (m,) temporary.
    """
    fmt = getattr(value, "format", None)
    if fmt != "csr":
        raise TypeError(
            f"{name} is a SciPy sparse matrix in {str(fmt).upper()} format ({type_name(value)}); "
            f"fastsoftmax takes sparse {name} in CSR format only (csr_matrix or csr_array): "
            f"convert it once with {name}.tocsr(), which copies it")
    if len(value.shape) != 2:
        raise ValueError(f"{name} must be 2-D (m, n), got shape {value.shape}")
    m, n = (int(s) for s in value.shape)
    data, indices, indptr = value.data, value.indices, value.indptr
    if data.dtype.kind not in "iuf":
        raise TypeError(f"{name} must have a real integer or floating dtype, got dtype "
                        f"{data.dtype} (from {type_name(value)})")
    if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise TypeError(f"{name}'s index arrays must be integers, got {indices.dtype} and "
                        f"{indptr.dtype}")
    if indptr.ndim != 1 or indptr.shape[0] != m + 1:
        raise ValueError(f"{name}.indptr must have m + 1 = {m + 1} entries, got shape "
                         f"{indptr.shape}")
    nnz = int(indptr[-1])
    if int(indptr[0]) != 0 or nnz > min(indices.shape[0], data.shape[0]):
        raise ValueError(f"{name}.indptr must start at 0 and end at most at the number of "
                         f"stored entries ({min(indices.shape[0], data.shape[0])}), got "
                         f"{int(indptr[0])} and {nnz}")
    if m > 0 and np.any(np.diff(indptr) < 0):
        raise ValueError(f"{name}.indptr must be non-decreasing")
    indices, data = indices[:nnz], data[:nnz]
    if nnz and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise ValueError(f"{name} has column indices outside [0, {n}): "
                         f"{int(indices.min())} to {int(indices.max())}")
    if n_features is not None and n != n_features:
        raise ValueError(f"{name} has {n} features but W has {n_features}")
    # int32 when both fit, else int64: two index types, so each sparse kernel
    # has 4 compiled variants (float32/float64 data x int32/int64 indices).
    both32 = indices.dtype == np.int32 and indptr.dtype == np.int32
    index_dtype = np.int32 if both32 else np.int64
    return CSR(data=data, indices=kernel_array(indices, index_dtype),
               indptr=kernel_array(indptr, index_dtype), shape=(m, n))


def with_dtype(X: CSR, dtype) -> CSR:
    """X with its data in ``dtype`` (C-contiguous, writeable; a copy only if needed)."""
    return CSR(data=kernel_array(X.data, dtype), indices=X.indices,
               indptr=X.indptr, shape=X.shape)
