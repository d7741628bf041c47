"""General matrix products on sub-matrices, with accumulation, from compiled code.

Numba's ``np.dot`` needs contiguous operands and always overwrites its
output.  The large-vocabulary kernel (:mod:`fastsoftmax._vocab`) needs BLAS's
full ``gemm``: operands that are blocks of larger matrices (a leading
dimension larger than their width) and ``C <- alpha A B + beta C`` with
``beta = 1``, which adds a product into an accumulator inside the BLAS
kernel, without a temporary or a second pass over C.

The routine called is SciPy's ``sgemm`` / ``dgemm``
(``scipy.linalg.cython_blas``), the BLAS that Numba's ``np.dot`` uses, so
:data:`fastsoftmax._blas.single_threaded_blas` governs it too.  Its address
is found in Python (:func:`gemm_address`) and passed to the kernels as an
integer at every call: compiled code never embeds it, so cached machine code
stays valid in a new process.

:func:`gemm` takes row-major (C-order) operands, as NumPy lays them out, and
calls the column-major BLAS on the transposed problem: a row-major M x N
matrix with leading dimension ld is the column-major N x M matrix with the
same ld.
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import get_cython_function_address, intrinsic

from ._jit import serial_kernel


@functools.lru_cache(maxsize=None)
def gemm_address(dtype) -> int:
    """Address of SciPy's ``sgemm`` (float32) or ``dgemm`` (float64)."""
    name = {np.dtype(np.float32): "sgemm", np.dtype(np.float64): "dgemm"}[np.dtype(dtype)]
    return int(get_cython_function_address("scipy.linalg.cython_blas", name))


@intrinsic
def _call_gemm(typingctx, addr, trans, dims, scalars, A, B, C):
    """Call the Fortran-convention ``?gemm`` at ``addr`` (int64).

    ``trans`` (2,) uint8: transa, transb as ASCII; ``dims`` (6,) int32: m, n,
    k, lda, ldb, ldc; ``scalars`` (2,): alpha, beta; A, B, C: arrays whose
    data pointers are the operands' first entries (column-major meaning).
    """
    sig = types.void(addr, trans, dims, scalars, A, B, C)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()

        def data(i):
            ary = context.make_array(signature.args[i])(context, builder, args[i])
            return ary.data

        def entry(ptr, j):
            return builder.bitcast(builder.gep(ptr, [ir.Constant(ir.IntType(64), j)]), i8p)

        tr, dm, sc = data(1), data(2), data(3)
        a, b, c = (builder.bitcast(data(i), i8p) for i in (4, 5, 6))
        fnty = ir.FunctionType(ir.VoidType(), [i8p] * 13)
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, [entry(tr, 0), entry(tr, 1), entry(dm, 0), entry(dm, 1), entry(dm, 2),
                          entry(sc, 0), a, entry(dm, 3), b, entry(dm, 4), entry(sc, 1), c,
                          entry(dm, 5)])
        return context.get_dummy_value()

    return sig, codegen


@serial_kernel
def gemm(addr, trans_a, trans_b, M, N, Kd, alpha, A, lda, B, ldb, beta, C, ldc):
    """``C <- alpha op(A) op(B) + beta C`` on row-major blocks.

    ``op(A)`` is M x Kd and ``op(B)`` Kd x N; ``C`` is M x N.  Each of A, B, C
    is an array (any shape or view) whose data pointer is the block's first
    entry; ``lda``, ``ldb``, ``ldc`` are their row strides in elements (row
    length of the matrix the block lies in).  ``trans_a`` true means A is
    stored as the Kd x M block and used transposed (likewise ``trans_b``).
    ``addr`` comes from :func:`gemm_address` for C's dtype; A, B and C share
    that dtype.  Nothing happens when M, N or Kd is 0 (with beta = 1).
    """
    if M == 0 or N == 0:
        return
    trans = np.empty(2, dtype=np.uint8)
    trans[0] = 84 if trans_b else 78  # 'T' / 'N': column-major C^T = op(B)^T op(A)^T
    trans[1] = 84 if trans_a else 78
    dims = np.empty(6, dtype=np.int32)
    dims[0] = N
    dims[1] = M
    dims[2] = Kd
    dims[3] = ldb
    dims[4] = lda
    dims[5] = ldc
    scalars = np.empty(2, dtype=C.dtype)
    scalars[0] = alpha
    scalars[1] = beta
    _call_gemm(addr, trans, dims, scalars, B, A, C)
