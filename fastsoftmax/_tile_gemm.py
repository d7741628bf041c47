"""The two skinny products of a tile with few classes, as compiled micro-kernels.

Per tile of R rows the fused kernels form the logits ``Z = X W^T``
((R, n) x (n, K)) and add the gradient's products ``D X`` ((K, R) x (R, n))
into a float64 slab.  With few classes both are skinny: OpenBLAS runs them at
a fraction of its GEMM rate (measured on one core of the development machine,
float64, R = 62, n = 784: about 19 GFLOP/s for K = 10 and 8 GFLOP/s for
K = 3, against 45 GFLOP/s for large square products), because it packs the
tile into its own layout before using each of its entries only K times.  The
micro-kernels here read the tile where it lies:

* :func:`tile_logits`: each block of ``ROWS`` rows x ``CLASSES`` classes of Z
  is a set of dot products along the contiguous feature axis of X and W, in
  SIMD vector accumulators (one per pair), summed across lanes at the end;
* :func:`tile_add_products`: each block of ``PRODUCT_CLASSES`` classes x two
  SIMD vectors of columns of the slab is a register block updated row by row
  (the row's columns from X, each class's coefficient broadcast), then added
  into the slab (float32 products are widened to float64 there).

The vector code is written in LLVM IR (:func:`_dot_block`,
:func:`_product_block`): Numba's loop vectoriser turns the register-blocked
loops of the second product into strided gathers.  Every sum is taken in a
fixed order (lanes, then the remainder columns), so the result depends only
on the operands and the tile.  Extra memory: none (registers only).

Operands are C-contiguous arrays of one float dtype (the slab float64); the
intrinsics refuse any other layout at compile time.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ._jit import serial_kernel

#: Rows and classes of one logits block (ROWS x CLASSES vector accumulators).
ROWS = 4
CLASSES = 3
#: Classes of one block of the gradient's products (x two vectors of columns).
PRODUCT_CLASSES = 6

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


def _contiguous(*arrays) -> None:
    for a in arrays:
        if not (isinstance(a, types.Array) and a.layout == "C" and a.ndim == 2
                and isinstance(a.dtype, types.Float)):
            raise TypingError(f"_tile_gemm needs C-contiguous 2-d float arrays, got {a}")


def _lanes(dtype) -> int:
    """Entries of dtype per 256-bit vector."""
    return 32 // (dtype.bitwidth // 8)


def _vector_at(builder, base, offset, vtype):
    return builder.bitcast(builder.gep(base, [offset]), vtype.as_pointer())


def _horizontal_sum(builder, vec, lanes):
    """Sum of a vector's lanes, pairwise in a fixed order."""
    values = [builder.extract_element(vec, ir.Constant(_I32, j)) for j in range(lanes)]
    while len(values) > 1:
        values = [builder.fadd(values[j], values[j + 1]) for j in range(0, len(values), 2)]
    return values[0]


def _broadcast(builder, value, vtype):
    lanes = vtype.count
    vec = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, ir.Constant(vtype, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


def _bits(stype) -> int:
    return 64 if isinstance(stype, ir.DoubleType) else 32


def _fma(builder, vtype):
    """LLVM's fused multiply-add on vectors of vtype."""
    name = f"llvm.fma.v{vtype.count}f{_bits(vtype.element)}"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vtype, [vtype] * 3), name)


def _scalar_fma(builder, stype):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(stype, [stype] * 3),
                                          f"llvm.fma.f{_bits(stype)}")


def _dot_block(rows: int, classes: int):
    """Intrinsic ``(X, W, Z, i0, k0)``: ``Z[i0 + r, k0 + q] = X[i0 + r] . W[k0 + q]``
    for r < rows, q < classes."""

    @intrinsic
    def dot_block(typingctx, X, W, Z, i0, k0):
        _contiguous(X, W, Z)
        sig = types.void(X, W, Z, i0, k0)

        def codegen(context, builder, signature, args):
            x, w, z = (context.make_array(t)(context, builder, a)
                       for t, a in zip(signature.args[:3], args[:3]))
            stype = context.get_value_type(signature.args[0].dtype)
            lanes = _lanes(signature.args[0].dtype)
            vtype = ir.VectorType(stype, lanes)
            fma, sfma = _fma(builder, vtype), _scalar_fma(builder, stype)
            n = builder.extract_value(x.shape, 1)
            ldz = builder.extract_value(z.shape, 1)
            xrows = [builder.gep(x.data, [builder.mul(builder.add(args[3], ir.Constant(_I64, r)), n)])
                     for r in range(rows)]
            wrows = [builder.gep(w.data, [builder.mul(builder.add(args[4], ir.Constant(_I64, q)), n)])
                     for q in range(classes)]
            acc = [[cgutils.alloca_once_value(builder, ir.Constant(vtype, [0.0] * lanes))
                    for _ in range(classes)] for _ in range(rows)]
            tail = [[cgutils.alloca_once_value(builder, ir.Constant(stype, 0.0))
                     for _ in range(classes)] for _ in range(rows)]
            nvec = builder.sdiv(n, ir.Constant(_I64, lanes))
            with cgutils.for_range(builder, nvec) as loop:
                off = builder.mul(loop.index, ir.Constant(_I64, lanes))
                align = _bits(stype) // 8
                xv = [builder.load(_vector_at(builder, p, off, vtype), align=align) for p in xrows]
                wv = [builder.load(_vector_at(builder, p, off, vtype), align=align) for p in wrows]
                for r in range(rows):
                    for q in range(classes):
                        builder.store(builder.call(fma, [xv[r], wv[q], builder.load(acc[r][q])]),
                                      acc[r][q])
            done = builder.mul(nvec, ir.Constant(_I64, lanes))
            with cgutils.for_range(builder, builder.sub(n, done)) as loop:
                l = builder.add(done, loop.index)
                xs = [builder.load(builder.gep(p, [l])) for p in xrows]
                ws = [builder.load(builder.gep(p, [l])) for p in wrows]
                for r in range(rows):
                    for q in range(classes):
                        builder.store(builder.call(sfma, [xs[r], ws[q], builder.load(tail[r][q])]),
                                      tail[r][q])
            for r in range(rows):
                zrow = builder.gep(z.data, [builder.mul(builder.add(args[3], ir.Constant(_I64, r)),
                                                        ldz)])
                for q in range(classes):
                    total = builder.fadd(_horizontal_sum(builder, builder.load(acc[r][q]), lanes),
                                         builder.load(tail[r][q]))
                    builder.store(total, builder.gep(zrow, [builder.add(args[4],
                                                                        ir.Constant(_I64, q))]))
            return context.get_dummy_value()

        return sig, codegen

    return dot_block


def _product_block(classes: int, vectors: int):
    """Intrinsic ``(D, X, G, k0, l0)``: adds ``sum_r D[k0 + q, r] X[r, l0:l0 + c]``
    to ``G[k0 + q, l0:l0 + c]`` for q < classes, c = vectors SIMD vectors of
    X's dtype; D (K, R) and X (R, n) of one dtype, G (K, n) float64."""

    @intrinsic
    def product_block(typingctx, D, X, G, k0, l0):
        _contiguous(D, X, G)
        if G.dtype != types.float64 or D.dtype != X.dtype:
            raise TypingError("_tile_gemm: G must be float64 and D, X of one dtype")
        sig = types.void(D, X, G, k0, l0)

        def codegen(context, builder, signature, args):
            d, x, g = (context.make_array(t)(context, builder, a)
                       for t, a in zip(signature.args[:3], args[:3]))
            stype = context.get_value_type(signature.args[1].dtype)
            lanes = _lanes(signature.args[1].dtype)
            vtype = ir.VectorType(stype, lanes)
            wide = ir.VectorType(ir.DoubleType(), lanes)
            fma = _fma(builder, vtype)
            R = builder.extract_value(d.shape, 1)
            ldx = builder.extract_value(x.shape, 1)
            ldg = builder.extract_value(g.shape, 1)
            drows = [builder.gep(d.data, [builder.mul(builder.add(args[3], ir.Constant(_I64, q)), R)])
                     for q in range(classes)]
            xcol = builder.gep(x.data, [args[4]])
            acc = [[cgutils.alloca_once_value(builder, ir.Constant(vtype, [0.0] * lanes))
                    for _ in range(vectors)] for _ in range(classes)]
            with cgutils.for_range(builder, R) as loop:
                xrow = builder.gep(xcol, [builder.mul(loop.index, ldx)])
                xv = [builder.load(_vector_at(builder, xrow, ir.Constant(_I64, h * lanes), vtype),
                                   align=_bits(stype) // 8) for h in range(vectors)]
                for q in range(classes):
                    dq = _broadcast(builder, builder.load(builder.gep(drows[q], [loop.index])), vtype)
                    for h in range(vectors):
                        builder.store(builder.call(fma, [dq, xv[h], builder.load(acc[q][h])]),
                                      acc[q][h])
            for q in range(classes):
                grow = builder.gep(g.data, [builder.add(builder.mul(builder.add(args[3],
                                                                                ir.Constant(_I64, q)),
                                                                    ldg), args[4])])
                for h in range(vectors):
                    total = builder.load(acc[q][h])
                    if stype != ir.DoubleType():
                        total = builder.fpext(total, wide)
                    ptr = _vector_at(builder, grow, ir.Constant(_I64, h * lanes), wide)
                    builder.store(builder.fadd(builder.load(ptr, align=8), total), ptr, align=8)
            return context.get_dummy_value()

        return sig, codegen

    return product_block


# The blocks the drivers use: full blocks, then one block of the remaining
# classes.  The drivers call them directly, without helper functions: each
# call site expands to one small loop, and a helper called twice would be
# inlined, optimised and compiled twice (a cold compile of the drivers took
# 1.9 s with helpers, 1.0 s without).
_dot_4x3, _dot_4x2, _dot_4x1 = (_dot_block(ROWS, q) for q in (3, 2, 1))
_dot_1x3, _dot_1x2, _dot_1x1 = (_dot_block(1, q) for q in (3, 2, 1))
(_prod_6x2, _prod_5x2, _prod_4x2, _prod_3x2, _prod_2x2,
 _prod_1x2) = (_product_block(q, 2) for q in range(PRODUCT_CLASSES, 0, -1))
(_prod_6x1, _prod_5x1, _prod_4x1, _prod_3x1, _prod_2x1,
 _prod_1x1) = (_product_block(q, 1) for q in range(PRODUCT_CLASSES, 0, -1))


@serial_kernel
def tile_logits(X, W, Z):
    """``Z = X W^T``: X (R, n), W (K, n), Z (R, K), one float dtype, C-contiguous."""
    R = X.shape[0]
    K = W.shape[0]
    full = R - R % ROWS
    kf = K - K % CLASSES
    for i in range(0, full, ROWS):
        for k in range(0, kf, CLASSES):
            _dot_4x3(X, W, Z, i, k)
        if K - kf == 2:
            _dot_4x2(X, W, Z, i, kf)
        elif K - kf == 1:
            _dot_4x1(X, W, Z, i, kf)
    for i in range(full, R):
        for k in range(0, kf, CLASSES):
            _dot_1x3(X, W, Z, i, k)
        if K - kf == 2:
            _dot_1x2(X, W, Z, i, kf)
        elif K - kf == 1:
            _dot_1x1(X, W, Z, i, kf)


@serial_kernel
def tile_add_products(D, X, G):
    """``G += D X``: D (K, R) and X (R, n) of one float dtype, G (K, n)
    float64, all C-contiguous (float32 products are summed in float32 over the
    tile, then added in float64)."""
    K, R = D.shape
    n = X.shape[1]
    lanes = 32 // X.itemsize
    kf = K - K % PRODUCT_CLASSES
    left = K - kf
    l0 = 0
    while l0 + 2 * lanes <= n:  # columns two vectors at a time
        for k in range(0, kf, PRODUCT_CLASSES):
            _prod_6x2(D, X, G, k, l0)
        if left == 5:
            _prod_5x2(D, X, G, kf, l0)
        elif left == 4:
            _prod_4x2(D, X, G, kf, l0)
        elif left == 3:
            _prod_3x2(D, X, G, kf, l0)
        elif left == 2:
            _prod_2x2(D, X, G, kf, l0)
        elif left == 1:
            _prod_1x2(D, X, G, kf, l0)
        l0 += 2 * lanes
    if l0 + lanes <= n:  # one vector
        for k in range(0, kf, PRODUCT_CLASSES):
            _prod_6x1(D, X, G, k, l0)
        if left == 5:
            _prod_5x1(D, X, G, kf, l0)
        elif left == 4:
            _prod_4x1(D, X, G, kf, l0)
        elif left == 3:
            _prod_3x1(D, X, G, kf, l0)
        elif left == 2:
            _prod_2x1(D, X, G, kf, l0)
        elif left == 1:
            _prod_1x1(D, X, G, kf, l0)
        l0 += lanes
    for k in range(K):  # the last columns, fewer than a vector
        for l in range(l0, n):
            acc = 0.0
            for r in range(R):
                acc += D[k, r] * X[r, l]
            G[k, l] += acc
