"""bfloat16 values inside the compiled kernels, held as their 16 bits (uint16).

NumPy and numba have no bfloat16 type; a bfloat16 is the top half of a
float32's bits, so a kernel can read and write bfloat16 arrays (PyTorch's,
seen through ``tensor.view(torch.int16).numpy().view(np.uint16)``) as uint16
arrays.  Helpers let one kernel serve float arrays and such arrays alike,
with no cost for floats (numba specialises them away):

- :func:`load` ``(v)``: the value of one stored entry: ``v`` itself for a
  float, the bfloat16 whose bits ``v`` holds for a uint16 (exact);
- :func:`store` ``(z, i, value)``: ``z[i] = value``, rounded to float32
  and then to bfloat16 (nearest, ties to even, as PyTorch rounds its float32
  results) for a uint16 ``z``; infinities stay infinities, a NaN stays a
  (quiet) NaN.

The softmax's exponentials are most of the work between the products, and
logits rounded to bfloat16 (relative error 4e-3) do not need them in
float64.  So a kernel computes them at the *working precision* of its
logits: float64 for float arrays, float32 for bfloat16 ones, where vectors
hold twice as many lanes and the polynomial is half as long
(:func:`fastsoftmax._rowmath.exp_nonpositive32`, relative error about
1e-7):

- :func:`work` ``(z, x)``: ``x`` at that precision;
- :func:`work_empty` ``(z, R)``: an (R,) scratch array of that precision;
- :func:`exp_like` ``(z, x)``: ``exp(x)`` for ``x <= 0`` at that precision.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ._jit import OVERLOAD_OPTIONS
from ._rowmath import bits_from_float32, exp_nonpositive, exp_nonpositive32


@intrinsic
def _float32_from_bf16_bits(typingctx, bits):
    """The float32 whose top 16 bits are the uint16 ``bits`` (and the rest 0)."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)),
                               ir.FloatType())

    return sig, codegen


def load(v):
    """The value of a stored entry (see the module docstring)."""


@overload(load, jit_options=OVERLOAD_OPTIONS, inline="always")
def _load_impl(v):
    if isinstance(v, types.Float):
        return lambda v: v
    if v == types.uint16:
        return lambda v: _float32_from_bf16_bits(v)
    return None


def store(z, i, value):
    """``z[i] = value``, rounded to bfloat16 when ``z`` holds bfloat16 bits."""


@overload(store, jit_options=OVERLOAD_OPTIONS, inline="always")
def _store_impl(z, i, value):
    if isinstance(z.dtype, types.Float):
        def store_float(z, i, value):
            z[i] = value
        return store_float
    if z.dtype == types.uint16:
        def store_bf16(z, i, value):
            u = bits_from_float32(np.float32(value))
            if (u & 0x7FFFFFFF) > 0x7F800000:  # NaN: keep sign and quiet it
                z[i] = np.uint16((u >> 16) | 0x40)
            else:  # round to nearest, ties to even (a carry rounds up to infinity)
                z[i] = np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)
        return store_bf16
    return None


def work(z, x):
    """``x`` at the working precision of ``z``'s values (see the module docstring)."""


@overload(work, jit_options=OVERLOAD_OPTIONS, inline="always")
def _work_impl(z, x):
    if isinstance(z.dtype, types.Float):
        return lambda z, x: x
    if z.dtype == types.uint16:
        return lambda z, x: np.float32(x)
    return None


def work_empty(z, R):
    """An uninitialised (R,) array of the working precision of ``z``'s values."""


@overload(work_empty, jit_options=OVERLOAD_OPTIONS, inline="always")
def _work_empty_impl(z, R):
    if isinstance(z.dtype, types.Float):
        return lambda z, R: np.empty(R)
    if z.dtype == types.uint16:
        return lambda z, R: np.empty(R, dtype=np.float32)
    return None


def exp_like(z, x):
    """``exp(x)``, x <= 0, at the working precision of ``z``'s values."""


@overload(exp_like, jit_options=OVERLOAD_OPTIONS, inline="always")
def _exp_like_impl(z, x):
    if isinstance(z.dtype, types.Float):
        return lambda z, x: exp_nonpositive(x)
    if z.dtype == types.uint16:
        return lambda z, x: exp_nonpositive32(np.float32(x))
    return None
