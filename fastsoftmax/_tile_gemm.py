"""The two skinny products of a tile with few classes, as compiled micro-kernels.

Per tile of R rows the fused kernels form the logits ``Z = X W^T``
((R, n) x (n, K)) and add the gradient's products ``D X`` ((K, R) x (R, n))
into a float64 slab.  With few classes both are skinny: OpenBLAS runs them at
a fraction of its GEMM rate (measured on one core of a 2-core AMD EPYC VM,
float64, R = 62, n = 784: about 19 GFLOP/s for K = 10 and 8 GFLOP/s for
K = 3, against 45 GFLOP/s for large square products; ``bench/tile_gemm.py``),
because it packs the tile into its own layout before using each of its
entries only K times.  The micro-kernels here read the tile where it lies:

* :func:`tile_logits`: each block of ``ROWS`` rows x ``CLASSES`` classes of Z
  is a set of dot products along the contiguous feature axis of X and W, in
  SIMD vector accumulators (one per pair), summed across lanes at the end;
* :func:`tile_add_products`: each block of ``PRODUCT_CLASSES`` classes x two
  SIMD vectors of columns of the slab is a register block updated row by row
  (the row's columns from X, each class's coefficient broadcast), then added
  into the slab (float32 products are widened to float64 there).

The vector code is written in LLVM IR (:func:`_emit_dot_block`,
:func:`_emit_product_block`; the intrinsics :func:`_dots` and
:func:`_products` pick a register block by its size at run time): Numba's
loop vectoriser turns the register-blocked loops of the second product into
strided gathers.  Every sum is taken in a
fixed order (lanes, then the remainder columns), so the result depends only
on the operands and the tile.  Extra memory: none (registers only).

Preconditions, checked when a call is compiled: C-contiguous 2-d arrays
of one float dtype (the slab float64), int64 offsets.  Not checked (the
callers' shapes guarantee them): X (R, n) with W (K, n) and Z (R, K); D
(K, R) with X (R, n) and G (K, n).  Loads and stores assume their dtype's
alignment only for arrays numba types as aligned (byte alignment
otherwise).  In float32 the products' last ``n % 8`` columns (fewer than a
vector) are summed in float64, the other columns in float32 over the tile.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ._jit import inline_helper, serial_kernel

#: Rows and classes of one logits block (ROWS x CLASSES vector accumulators).
ROWS = 4
CLASSES = 3
#: Classes of one block of the gradient's products (x two vectors of columns).
PRODUCT_CLASSES = 6

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


def _check(arrays, offsets, same) -> None:
    """TypingError unless ``arrays`` are C-contiguous 2-d float arrays, the
    first ``same`` of one dtype, and ``offsets`` int64."""
    for a in arrays:
        if not (isinstance(a, types.Array) and a.layout == "C" and a.ndim == 2
                and isinstance(a.dtype, types.Float)):
            raise TypingError(f"_tile_gemm needs C-contiguous 2-d float arrays, got {a}")
    if len({a.dtype for a in arrays[:same]}) != 1:
        raise TypingError(f"_tile_gemm needs operands of one dtype, got {arrays[:same]}")
    for o in offsets:
        if o != types.int64:
            raise TypingError(f"_tile_gemm needs int64 offsets, got {o}")


def _alignment(arrays, bits: int) -> int:
    """Byte alignment the loads and stores may assume."""
    return bits // 8 if all(a.aligned for a in arrays) else 1


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


def _emit_dot_block(context, builder, signature, args, rows: int, classes: int) -> None:
    """IR of ``Z[i0 + r, k0 + q] = X[i0 + r] . W[k0 + q]`` for r < rows,
    q < classes; ``args`` (X, W, Z, i0, k0, ...)."""
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
    align = _alignment(signature.args[:2], _bits(stype))
    zalign = _alignment(signature.args[2:3], _bits(stype))
    nvec = builder.sdiv(n, ir.Constant(_I64, lanes))
    with cgutils.for_range(builder, nvec) as loop:
        off = builder.mul(loop.index, ir.Constant(_I64, lanes))
        xv = [builder.load(_vector_at(builder, p, off, vtype), align=align) for p in xrows]
        wv = [builder.load(_vector_at(builder, p, off, vtype), align=align) for p in wrows]
        for r in range(rows):
            for q in range(classes):
                builder.store(builder.call(fma, [xv[r], wv[q], builder.load(acc[r][q])]),
                              acc[r][q])
    done = builder.mul(nvec, ir.Constant(_I64, lanes))
    with cgutils.for_range(builder, builder.sub(n, done)) as loop:
        l = builder.add(done, loop.index)
        xs = [builder.load(builder.gep(p, [l]), align=align) for p in xrows]
        ws = [builder.load(builder.gep(p, [l]), align=align) for p in wrows]
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
                                                                ir.Constant(_I64, q))]),
                          align=zalign)


def _emit_product_block(context, builder, signature, args, classes: int, vectors: int) -> None:
    """IR that adds ``sum_r D[k0 + q, r] X[r, l0:l0 + c]`` to
    ``G[k0 + q, l0:l0 + c]`` for q < classes, c = vectors SIMD vectors of X's
    dtype; ``args`` (D, X, G, k0, l0, ...)."""
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
    dalign = _alignment(signature.args[0:1], _bits(stype))
    xalign = _alignment(signature.args[1:2], _bits(stype))
    galign = _alignment(signature.args[2:3], 64)
    acc = [[cgutils.alloca_once_value(builder, ir.Constant(vtype, [0.0] * lanes))
            for _ in range(vectors)] for _ in range(classes)]
    with cgutils.for_range(builder, R) as loop:
        xrow = builder.gep(xcol, [builder.mul(loop.index, ldx)])
        xv = [builder.load(_vector_at(builder, xrow, ir.Constant(_I64, h * lanes), vtype),
                           align=xalign)
              for h in range(vectors)]
        for q in range(classes):
            dq = _broadcast(builder, builder.load(builder.gep(drows[q], [loop.index]),
                                                  align=dalign), vtype)
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
            builder.store(builder.fadd(builder.load(ptr, align=galign), total), ptr,
                          align=galign)


def _switch(builder, selector, cases: dict) -> None:
    """Run ``cases[key](builder)`` for the case whose key equals ``selector``
    (int64); nothing for any other value."""
    after = builder.append_basic_block("after")
    switch = builder.switch(selector, after)
    for key, emit in cases.items():
        block = builder.append_basic_block(f"case{key}")
        switch.add_case(ir.Constant(_I64, key), block)
        builder.position_at_end(block)
        emit(builder)
        builder.branch(after)
    builder.position_at_end(after)


@intrinsic
def _dots(typingctx, X, W, Z, i0, k0, rows, classes):
    """``Z[i0 + r, k0 + q] = X[i0 + r] . W[k0 + q]`` for r < rows, q < classes:
    rows 1 or ROWS, classes 1 to CLASSES (register blocks; other values do
    nothing)."""
    _check((X, W, Z), (i0, k0, rows, classes), 3)
    sig = types.void(X, W, Z, i0, k0, rows, classes)

    def codegen(context, builder, signature, args):
        def case(r, q):
            return lambda b: _emit_dot_block(context, b, signature, args, r, q)
        selector = builder.add(builder.mul(args[5], ir.Constant(_I64, CLASSES + 1)), args[6])
        _switch(builder, selector, {r * (CLASSES + 1) + q: case(r, q)
                                    for r in (1, ROWS) for q in range(1, CLASSES + 1)})
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _products(typingctx, D, X, G, k0, l0, classes, vectors):
    """Adds ``sum_r D[k0 + q, r] X[r, l0:l0 + c]`` to ``G[k0 + q, l0:l0 + c]``
    for q < classes (1 to PRODUCT_CLASSES), c = vectors (1 or 2) SIMD
    vectors of X's dtype (register blocks; other values do nothing)."""
    _check((D, X, G), (k0, l0, classes, vectors), 2)
    if G.dtype != types.float64:
        raise TypingError(f"_tile_gemm: the slab G must be float64, got {G}")
    sig = types.void(D, X, G, k0, l0, classes, vectors)

    def codegen(context, builder, signature, args):
        def case(q, h):
            return lambda b: _emit_product_block(context, b, signature, args, q, h)
        selector = builder.add(builder.mul(args[5], ir.Constant(_I64, 3)), args[6])
        _switch(builder, selector, {q * 3 + h: case(q, h)
                                    for q in range(1, PRODUCT_CLASSES + 1) for h in (1, 2)})
        return context.get_dummy_value()

    return sig, codegen


# Each driver has one call site of its intrinsic, which expands to every
# register block once: a cold compile of the two drivers took 0.85 s here
# (1.9 s when helpers called the blocks from several sites, each inlined).


@serial_kernel
def tile_logits(X, W, Z):
    """``Z = X W^T``: X (R, n), W (K, n), Z (R, K), one float dtype, C-contiguous."""
    R = X.shape[0]
    K = W.shape[0]
    i = 0
    while i < R:
        rows = ROWS if i + ROWS <= R else 1
        k = 0
        while k < K:
            classes = min(CLASSES, K - k)
            _dots(X, W, Z, i, k, rows, classes)
            k += classes
        i += rows


@serial_kernel
def tile_add_products(D, X, G):
    """``G += D X``: D (K, R) and X (R, n) of one float dtype, G (K, n)
    float64, all C-contiguous (float32 products are summed in float32 over the
    tile, then added in float64, except the last ``n % 8`` columns: in
    float64)."""
    K, R = D.shape
    n = X.shape[1]
    lanes = 32 // X.itemsize
    l0 = 0
    while l0 + lanes <= n:  # columns two vectors at a time, then one
        vectors = 2 if l0 + 2 * lanes <= n else 1
        k = 0
        while k < K:
            classes = min(PRODUCT_CLASSES, K - k)
            _products(D, X, G, k, l0, classes, vectors)
            k += classes
        l0 += vectors * lanes
    for k in range(K):  # the last columns, fewer than a vector
        for l in range(l0, n):
            acc = 0.0
            for r in range(R):
                acc += D[k, r] * X[r, l]
            G[k, l] += acc


@inline_helper
def logits_into(X, W, Z, micro):
    """``Z = X W^T`` (see :func:`tile_logits`): by the micro-kernel when
    ``micro`` is True, by BLAS when it is None (numba then compiles no
    micro-kernel code)."""
    if micro is not None:
        tile_logits(X, W, Z)
    else:
        np.dot(X, W.T, Z)


@inline_helper
def add_products_into(D, X, G, scratch, micro):
    """``G += D X`` (see :func:`tile_add_products`): by the micro-kernel when
    ``micro`` is True; by BLAS into ``scratch`` ((K, n) of X's dtype), then
    added, when it is None."""
    if micro is not None:
        tile_add_products(D, X, G)
    else:
        np.dot(D, X, scratch)
        K, n = G.shape
        for k in range(K):
            for l in range(n):
                G[k, l] += scratch[k, l]
