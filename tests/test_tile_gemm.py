"""The per-tile micro-kernels (``fastsoftmax._tile_gemm``) against NumPy's
float64 products, over shapes that exercise every block and remainder.

Tolerance: the classical bound on a computed dot product of length L,
|fl(x.y) - x.y| <= gamma_L |x|.|y| with gamma_L = L u / (1 - L u) (u the
unit roundoff of the working dtype), taken as 2 L u |x|.|y| (plus one
rounding of the float64 accumulator for the products' sums).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba.core.errors import TypingError

from fastsoftmax._tile_gemm import tile_add_products, tile_logits

DTYPES = (np.float32, np.float64)


def unit_roundoff(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


def operands(rng, shape, dtype):
    # mixed signs and magnitudes over a few decades
    return (rng.standard_normal(shape) * 10.0 ** rng.uniform(-2, 2, shape)).astype(dtype)


def padded(rng, shape, dtype, fill):
    """An array of ``shape`` that is rows 1:-1 of a larger C-contiguous one
    whose first and last rows hold ``fill``: a write past either end shows."""
    outer = np.full((shape[0] + 2, shape[1]), fill, dtype=dtype)
    return outer, outer[1:-1]


def check_logits(R, n, K, dtype, seed):
    rng = np.random.default_rng(seed)
    X, W = operands(rng, (R, n), dtype), operands(rng, (K, n), dtype)
    outer, Z = padded(rng, (R, K), dtype, -7.0)
    Z[...] = np.nan
    tile_logits(X, W, Z)
    assert (outer[0] == -7.0).all() and (outer[-1] == -7.0).all()
    X64, W64 = X.astype(np.float64), W.astype(np.float64)
    bound = 2 * n * unit_roundoff(dtype) * (np.abs(X64) @ np.abs(W64).T)
    np.testing.assert_array_less(np.abs(Z - X64 @ W64.T), bound + 1e-300)


def check_products(R, n, K, dtype, seed):
    rng = np.random.default_rng(seed)
    D, X = operands(rng, (K, R), dtype), operands(rng, (R, n), dtype)
    G0 = rng.standard_normal((K, n))
    outer, G = padded(rng, (K, n), np.float64, -7.0)
    G[...] = G0
    tile_add_products(D, X, G)
    assert (outer[0] == -7.0).all() and (outer[-1] == -7.0).all()
    D64, X64 = D.astype(np.float64), X.astype(np.float64)
    exact = G0 + D64 @ X64
    bound = (2 * R * unit_roundoff(dtype) * (np.abs(D64) @ np.abs(X64))
             + 2 * unit_roundoff(np.float64) * np.abs(exact))
    np.testing.assert_array_less(np.abs(G - exact), bound + 1e-300)


# Every logits block (4 x 3 and the remainders of rows and classes) and every
# products block (6 x two or one vectors of columns, 1-5 remaining classes,
# the scalar columns), in both dtypes (4 and 8 lanes).
GRID = [(R, n, K) for R in (1, 2, 3, 4, 6, 9) for n in (1, 3, 4, 8, 13, 16, 17, 41)
        for K in (1, 2, 3, 4, 5, 6, 7, 10, 11, 13)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_grid(dtype):
    for i, (R, n, K) in enumerate(GRID):
        check_logits(R, n, K, dtype, i)


@pytest.mark.parametrize("dtype", DTYPES)
def test_products_grid(dtype):
    for i, (R, n, K) in enumerate(GRID):
        check_products(R, n, K, dtype, i)


@settings(max_examples=60, deadline=None)
@given(R=st.integers(1, 70), n=st.integers(1, 90), K=st.integers(1, 40),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_products_and_logits_hypothesis(R, n, K, dtype, seed):
    check_logits(R, n, K, dtype, seed)
    check_products(R, n, K, dtype, seed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_rows_leave_products_unchanged(dtype):
    G = np.arange(12.0).reshape(3, 4)
    tile_add_products(np.empty((3, 0), dtype), np.empty((0, 4), dtype), G)
    np.testing.assert_array_equal(G, np.arange(12.0).reshape(3, 4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_entries_propagate(dtype):
    """No fast-math flag may drop a NaN or an infinity: each reaches exactly the
    logits and gradient entries it takes part in."""
    R, n, K = 9, 37, 8  # column 36: a remainder column in both dtypes
    rng = np.random.default_rng(3)
    X, W = operands(rng, (R, n), dtype), operands(rng, (K, n), dtype)
    X[2, 5] = np.nan
    X[6, 30] = np.inf
    X[7, 36] = -np.inf
    Z = np.zeros((R, K), dtype)
    tile_logits(X, W, Z)
    assert np.isnan(Z[2]).all()
    assert not np.isfinite(Z[6]).any() and not np.isfinite(Z[7]).any()
    assert np.isfinite(np.delete(Z, [2, 6, 7], axis=0)).all()
    D = operands(rng, (K, R), dtype)
    G = np.zeros((K, n))
    tile_add_products(D, X, G)
    assert np.isnan(G[:, 5]).all() and not np.isfinite(G[:, 30]).any()
    assert not np.isfinite(G[:, 36]).any()
    assert np.isfinite(np.delete(G, [5, 30, 36], axis=1)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_operands(dtype):
    """Arrays numba types as unaligned (a buffer offset by one byte) give the
    same products: the loads then assume no alignment."""
    R, n, K = 7, 29, 9
    rng = np.random.default_rng(5)
    size = np.dtype(dtype).itemsize

    def unaligned(a):
        raw = np.zeros(a.nbytes + 1, dtype=np.uint8)
        out = raw[1:].view(dtype).reshape(a.shape)
        out[...] = a
        assert not out.flags.aligned or size == 1
        return out

    X, W = operands(rng, (R, n), dtype), operands(rng, (K, n), dtype)
    Z, Zu = np.empty((R, K), dtype), np.empty((R, K), dtype)
    tile_logits(X, W, Z)
    tile_logits(unaligned(X), unaligned(W), Zu)
    np.testing.assert_array_equal(Z, Zu)
    D = operands(rng, (K, R), dtype)
    G, Gu = np.zeros((K, n)), np.zeros((K, n))
    tile_add_products(D, X, G)
    tile_add_products(unaligned(D), unaligned(X), Gu)
    np.testing.assert_array_equal(G, Gu)


def test_operands_of_other_layouts_or_dtypes_are_refused_when_compiled():
    X = np.zeros((4, 6))
    with pytest.raises(TypingError, match="C-contiguous"):
        tile_logits(X[:, ::2], np.zeros((3, 3)), np.zeros((4, 3)))
    with pytest.raises(TypingError, match="float64"):
        tile_add_products(np.zeros((3, 4)), X, np.zeros((3, 6), np.float32))
    with pytest.raises(TypingError, match="one dtype"):
        tile_logits(X.astype(np.float32), np.zeros((3, 6)), np.zeros((4, 3), np.float32))
    with pytest.raises(TypingError, match="one dtype"):
        tile_add_products(np.zeros((3, 4), np.float32), X, np.zeros((3, 6)))
