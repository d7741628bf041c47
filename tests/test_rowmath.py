"""The vectorisable exponential of the fused kernels (fastsoftmax._rowmath.exp_nonpositive)
against NumPy's (libm's) exp, and a check that a loop over it compiles to SIMD code; the
same for its float32 twin (exp_nonpositive32), against the float64 exp."""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest

from fastsoftmax._rowmath import exp_nonpositive, exp_nonpositive32


def looped(exp):
    """A compiled loop applying ``exp`` to an array, and a caller of it."""
    @numba.njit(cache=False)
    def loop(x, out):
        for i in range(x.shape[0]):
            out[i] = exp(x[i])

    def call(x):
        out = np.empty_like(x)
        loop(x, out)
        return out
    return loop, call


_exp_loop, compiled_exp = looped(exp_nonpositive)


@pytest.mark.parametrize("low", [-708.0, -50.0, -1.0, -1e-3, -1e-12])
def test_within_one_ulp_of_libm(low):
    """At most 1 ulp from np.exp at 10^6 random points of [low, 0]."""
    x = np.random.default_rng(7).uniform(low, 0.0, 10**6)
    want = np.exp(x)
    ulps = np.abs(compiled_exp(x) - want) / np.spacing(want)
    assert ulps.max() <= 1.0


def test_rounding_ties_and_powers_of_two():
    """Where x / ln 2 is an integer or half an integer (the reduction's ties and
    its exact points), and at every power of two down to 2^-1021."""
    k = np.arange(0, 2044)
    x = -(k * 0.5) * np.log(2.0)
    x = x[x >= -708.0]
    want = np.exp(x)
    assert (np.abs(compiled_exp(x) - want) / np.spacing(want)).max() <= 1.0


def test_special_values():
    """0 and -0 give 1; below -708 (subnormal results) and -inf give 0; NaN stays NaN."""
    x = np.array([0.0, -0.0, -5e-324, -708.0, -708.0000001, -745.2, -1e300, -np.inf, np.nan])
    got = compiled_exp(x)
    np.testing.assert_array_equal(got[:3], 1.0)
    assert got[3] == pytest.approx(np.exp(-708.0), rel=2.3e-16)
    np.testing.assert_array_equal(got[4:8], 0.0)
    assert np.isnan(got[8])


def test_loop_compiles_to_simd_code():
    """A loop over it is vectorised: its optimised LLVM IR holds vectors of
    doubles.  (Rounding through float64 -> int64 conversions kept it scalar on
    AVX2, which has no vector instruction for them: about 20 ns an exp.)"""
    x = np.linspace(-5.0, 0.0, 64)
    compiled_exp(x)
    ir = "".join(_exp_loop.inspect_llvm().values())
    assert re.search(r"<\d+ x double>", ir)
    assert not re.search(r"fptosi double", ir)


# --- the float32 exponential of bfloat16 logits (exp_nonpositive32) ---------------------------


_exp32_loop, compiled_exp32 = looped(exp_nonpositive32)


def float32_ulps(got, x):
    """Distance from exp(x) computed in float64, in float32 ulps of the result."""
    want = np.exp(x.astype(np.float64))
    return np.abs(got.astype(np.float64) - want) / np.spacing(want.astype(np.float32))


@pytest.mark.parametrize("low", [-87.0, -20.0, -1.0, -1e-3, -1e-7])
def test_float32_within_one_ulp(low):
    """At most 1 float32 ulp from the float64 exp at 10^6 random float32 points of
    [low, 0] (measured: 0.90 at most, 0.5 being the rounding of the exact value)."""
    x = np.random.default_rng(8).uniform(low, 0.0, 10**6).astype(np.float32)
    got = compiled_exp32(x)
    assert got.dtype == np.float32
    assert float32_ulps(got, x).max() <= 1.0


def test_float32_ties_and_special_values():
    """Multiples of ln(2)/2 (the reduction's exact points and ties) within 1 ulp;
    0 and -0 give 1, below -87 and -inf give 0, NaN stays NaN."""
    x = (-(np.arange(0, 250) * 0.5) * np.log(2.0)).astype(np.float32)
    x = x[x >= -87.0]
    assert float32_ulps(compiled_exp32(x), x).max() <= 1.0
    s = np.array([0.0, -0.0, -1e-45, -87.5, -100.0, -np.inf, np.nan], dtype=np.float32)
    got = compiled_exp32(s)
    np.testing.assert_array_equal(got[:3], 1.0)
    np.testing.assert_array_equal(got[3:6], 0.0)
    assert np.isnan(got[6])


def test_float32_loop_compiles_to_simd_code():
    """A loop over it is vectorised on float32 lanes, with no float64 in it."""
    x = np.linspace(-5.0, 0.0, 64).astype(np.float32)
    compiled_exp32(x)
    ir = "".join(_exp32_loop.inspect_llvm().values())
    assert re.search(r"<\d+ x float>", ir)
    assert not re.search(r"fpext float", ir)
