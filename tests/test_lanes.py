"""fastsoftmax._lanes: row_sums and scatter_rows, the sparse kernels' inner loops, on their own.

Every row of a random CSR matrix goes through ``row_sums`` against A; the
oracle is SciPy's product of the matrix (its squares with ``square``) with A
in float64, and the tolerance is stated from the rounding of a sum of at
most ``length`` terms: ``|sum - oracle| <= 4 length eps (|X| @ |A|)`` for
each entry (both sides round at most that much).  The class counts cover
one to four registers of 8 lanes and more than one group of 32 lanes, and
the lanes past C of ``out`` must stay as they were (masked stores).
``scatter_rows`` adds every row's entries times that row's coefficients to
a slab, directly or through a column map; its oracle is SciPy's ``X^T @
coefficients`` added to the slab's start, with the same kind of bound.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsoftmax._jit import FASTMATH
from fastsoftmax._lanes import GROUP_LANES, row_sums, scatter_rows


@numba.njit
def every_row(data, indices, indptr, ahead, A, square, out):
    """``out[i, :C] = row_sums`` of row i, for every row of the CSR arrays."""
    last = max(indptr[-1] - 1, 0)
    C = A.shape[1]
    for i in range(indptr.shape[0] - 1):
        row_sums(data, indices, indptr[i], indptr[i + 1], last, ahead, A, square, out[i, :C])


def random_csr(rng, m, n, density, dtype, index_dtype):
    """Entries in random order within their rows, some duplicated, some explicit zeros."""
    rows, cols = np.nonzero(rng.random((m, n)) < density)
    extra = rng.random(rows.shape[0]) < 0.2  # duplicates of some entries
    rows = np.concatenate([rows, rows[extra]])
    cols = np.concatenate([cols, cols[extra]])
    values = rng.standard_normal(rows.shape[0])
    values[rng.random(values.shape[0]) < 0.05] = 0.0
    order = np.lexsort((rng.random(rows.shape[0]), rows))  # rows in order, columns shuffled
    rows, cols, values = rows[order], cols[order], values[order]
    indptr = np.searchsorted(rows, np.arange(m + 1)).astype(index_dtype)
    return values.astype(dtype), cols.astype(index_dtype), indptr


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 12), n=st.integers(1, 40),
       C=st.integers(1, GROUP_LANES + 40), density=st.sampled_from([0.0, 0.3, 1.0]),
       data_dtype=st.sampled_from([np.float32, np.float64]),
       A_dtype=st.sampled_from([np.float32, np.float64]),
       index_dtype=st.sampled_from([np.int32, np.int64, np.uint32]), square=st.booleans(),
       ahead=st.sampled_from([0, 1, 8, 1000]))
def test_row_sums_against_scipy(seed, m, n, C, density, data_dtype, A_dtype, index_dtype, square,
                                ahead):
    rng = np.random.default_rng(seed)
    data, indices, indptr = random_csr(rng, m, n, density, data_dtype, index_dtype)
    A = rng.standard_normal((n, C)).astype(A_dtype)
    out = np.full((m, C + 8), 7.0)  # the 8 lanes past C must keep their 7.0
    every_row(data, indices, indptr, ahead, A, square, out)

    X = scipy.sparse.csr_matrix((data.astype(np.float64), indices, indptr), shape=(m, n))
    if square:
        X = scipy.sparse.csr_matrix((data.astype(np.float64) ** 2, indices, indptr), shape=(m, n))
    A64 = A.astype(np.float64)
    oracle = X @ A64
    scale = abs(X) @ abs(A64)
    lengths = np.diff(indptr).astype(np.float64)[:, None]
    bound = 4 * np.maximum(lengths, 1) * np.finfo(np.float64).eps * scale
    assert np.all(np.abs(out[:, :C] - oracle) <= bound), np.max(np.abs(out[:, :C] - oracle) - bound)
    assert np.all(out[:, C:] == 7.0)


@numba.njit(fastmath=set(FASTMATH))
def scalar_sums(data, indices, indptr, A, square, out):
    """The loop row_sums replaced (the kernels' fast-math flags): one sum
    per class, the entries in order."""
    C = A.shape[1]
    for i in range(indptr.shape[0] - 1):
        for k in range(C):
            out[i, k] = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            v = np.float64(data[p])
            if square:
                v = v * v
            for k in range(C):
                out[i, k] += v * np.float64(A[indices[p], k])


@pytest.mark.parametrize("C", [3, 8, 20, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("square", [False, True])
def test_row_sums_are_the_scalar_loops_bits(C, dtype, square):
    """Each lane adds its products in the entries' order, with fused
    multiply-adds where LLVM fuses the scalar loop's: the same bits."""
    rng = np.random.default_rng(3)
    data, indices, indptr = random_csr(rng, 30, 50, 0.5, dtype, np.int32)
    A = (rng.standard_normal((50, C)) * 10.0 ** rng.integers(-8, 8, (50, C))).astype(dtype)
    out = np.empty((30, C))
    expected = np.empty((30, C))
    every_row(data, indices, indptr, 8, A, square, out)
    scalar_sums(data, indices, indptr, A, square, expected)
    np.testing.assert_array_equal(out, expected)


def test_row_sums_refuse_strided_arrays():
    """The intrinsics index the arrays' memory directly: a strided data
    array is a typing error, not wrong sums."""
    data = np.arange(10.0)[::2]
    with pytest.raises(numba.core.errors.TypingError):
        every_row(data, np.zeros(5, np.int64), np.array([0, 5]), 8, np.ones((1, 3)), False,
                  np.empty((1, 3)))


def test_row_sums_of_no_entries_are_zero():
    A = np.ones((3, 9))
    out = np.full((2, 9), np.nan)
    every_row(np.empty(0), np.empty(0, np.int64), np.zeros(3, np.int64), 8, A, False, out)
    assert np.all(out == 0.0)


@numba.njit
def scatter_every_row(data, indices, indptr, ahead, colmap, coefs, slab):
    """``scatter_rows`` of row i with ``coefs[i, :K]``, for every row."""
    last = max(indptr[-1] - 1, 0)
    K = slab.shape[1]
    for i in range(indptr.shape[0] - 1):
        scatter_rows(data, indices, indptr[i], indptr[i + 1], last, ahead, colmap, coefs[i, :K],
                     slab)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 12), n=st.integers(1, 40),
       K=st.integers(1, GROUP_LANES + 40), density=st.sampled_from([0.0, 0.3, 1.0]),
       data_dtype=st.sampled_from([np.float32, np.float64]),
       index_dtype=st.sampled_from([np.int32, np.int64]), mapped=st.booleans(),
       ahead=st.sampled_from([0, 1, 8, 1000]))
def test_scatter_rows_against_scipy(seed, m, n, K, density, data_dtype, index_dtype, mapped,
                                    ahead):
    rng = np.random.default_rng(seed)
    data, indices, indptr = random_csr(rng, m, n, density, data_dtype, index_dtype)
    coefs = np.full((m, K + 8), np.nan)  # lanes past K must not be read
    coefs[:, :K] = rng.standard_normal((m, K))
    start = rng.standard_normal((n, K))
    colmap = rng.permutation(n).astype(index_dtype) if mapped else None
    slab = start[np.argsort(colmap)] if mapped else start.copy()
    scatter_every_row(data, indices, indptr, ahead, colmap, coefs, slab)
    if mapped:
        slab = slab[colmap]  # back to column order: row j of the result is column j's

    X = scipy.sparse.csr_matrix((data.astype(np.float64), indices, indptr), shape=(m, n))
    oracle = start + X.T @ coefs[:, :K]
    scale = abs(start) + abs(X.T) @ abs(coefs[:, :K])
    lengths = np.diff(X.T.tocsr().indptr).astype(np.float64)[:, None] + 1
    bound = 4 * lengths * np.finfo(np.float64).eps * scale
    assert np.all(np.abs(slab - oracle) <= bound), np.max(np.abs(slab - oracle) - bound)


@numba.njit(fastmath=set(FASTMATH))
def scalar_scatter(data, indices, indptr, colmap, coefs, slab):
    """The loop scatter_rows replaced (the kernels' fast-math flags), for every row."""
    K = slab.shape[1]
    for i in range(indptr.shape[0] - 1):
        for p in range(indptr[i], indptr[i + 1]):
            q = colmap[indices[p]]
            for k in range(K):
                slab[q, k] += np.float64(data[p]) * coefs[i, k]


@pytest.mark.parametrize("K", [3, 8, 20, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scatter_rows_are_the_scalar_loops_bits(K, dtype):
    rng = np.random.default_rng(4)
    data, indices, indptr = random_csr(rng, 30, 50, 0.5, dtype, np.int64)
    coefs = rng.standard_normal((30, K)) * 10.0 ** rng.integers(-8, 8, (30, K))
    colmap = rng.permutation(50)
    slab = rng.standard_normal((50, K))
    expected = slab.copy()
    scatter_every_row(data, indices, indptr, 8, colmap, coefs, slab)
    scalar_scatter(data, indices, indptr, colmap, coefs, expected)
    np.testing.assert_array_equal(slab, expected)
