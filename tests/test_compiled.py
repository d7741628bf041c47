"""Calls through a compiled function's address (fastsoftmax._compiled)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from numba import types

from fastsoftmax._compiled import CompiledFunction, array_key, call_compiled


@numba.njit
def _weighted_sum(x, w, out):
    s = 0.0
    for i in range(x.shape[0]):
        s += w * x[i]
    out[0] = s
    return s


@numba.njit
def _caller(f, x, w, out):
    return call_compiled(f, x, w, out)


ARGS = (types.Array(types.float64, 1, "C"), types.float64, types.Array(types.float64, 1, "C"))


@numba.njit
def _raises_on_negative(x, w, out):
    if w < 0:
        raise ValueError("negative")
    out[0] = w
    return w


def test_call_through_address_returns_and_writes():
    f = CompiledFunction(_weighted_sum, ARGS)
    out = np.zeros(1)
    assert _caller(f, np.array([1.0, 2.0, 4.0]), 0.5, out) == (3.5, False)
    assert out[0] == 3.5  # the callee wrote through the array it was given


def test_a_raising_callee_is_reported_as_failed():
    """An exception cannot leave the call; it comes back as ``failed``."""
    f = CompiledFunction(_raises_on_negative, ARGS)
    out = np.zeros(1)
    assert _caller(f, np.zeros(2), 2.0, out) == (2.0, False)
    assert _caller(f, np.zeros(2), -1.0, out) == (0.0, True)


def test_other_argument_types_are_refused_at_compile_time():
    f = CompiledFunction(_weighted_sum, ARGS)
    strided = np.arange(6.0)[::2]  # layout "A", not the "C" it was compiled for
    with pytest.raises(numba.core.errors.TypingError, match="do not match"):
        _caller(f, strided, 0.5, np.zeros(1))
    with pytest.raises(numba.core.errors.TypingError, match="do not match"):
        _caller(f, np.zeros(3, np.float32), 0.5, np.zeros(1))


@pytest.mark.parametrize("make", [
    lambda: np.zeros((3, 4)), lambda: np.zeros((3, 4), order="F"), lambda: np.zeros((3, 4))[:, ::2],
    lambda: np.zeros(5, np.float32), lambda: np.zeros((1, 1)), lambda: np.zeros((0, 3)),
])
def test_array_key_decides_numba_type(make):
    """Arrays with equal keys have equal numba types (the key stands in for typeof)."""
    a = make()
    b = make()
    b.flags.writeable = False
    c = make()
    assert array_key(a) == array_key(c) and numba.typeof(a) == numba.typeof(c)
    assert array_key(a) != array_key(b) and numba.typeof(a) != numba.typeof(b)
    assert array_key(None) is None
