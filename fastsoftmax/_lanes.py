"""Sums of scaled rows in vector lanes: the inner loops of the sparse kernels.

The sparse passes spend their time in two loops over the stored entries
``p`` of one row of a CSR matrix: a gather, ``out += x_p * A[j_p, :]``
(:func:`row_sums`: the logits by rows of X, the gradient by rows of X^T),
and a scatter, ``slab[j_p, :] += x_p * coef`` (:func:`scatter_rows`: the
gradient by rows of X into per-chunk slabs).  Written in numba over a
runtime class count C, LLVM vectorises the loop over C in steps of 32
doubles (four 512-bit registers), so C < 32 (K = 8 or 20, as in text
classification) runs in its narrower remainder loops, after a check per
entry that the row written does not overlap the row read and a sign check
of the row index.  Measured on the docstrings corpus (754 k non-zeros,
K = 8, one thread, AMD Zen 4): 3.1-3.4 ms a gather; with the class count a
compile-time constant LLVM vectorised over the entries instead (with
gathers) and took 4.0 ms.

Here the loops are written in LLVM's vector types: up to
``GROUP_REGISTERS`` registers of 8 float64 lanes (32 sums or
coefficients) per walk over the row's entries (a second walk for the next
32, and so on), the rows read and written with masked loads and stores
(the lanes past C are not touched, so nothing is padded), one broadcast of
x_p and one fused multiply-add per register and entry, the entries taken
in order: the same sums, bit for bit, as the scalar loops compiled with
the kernels' fast-math flags (tested).  The gather above took 1.4-1.8 ms
so; at K = 50 on RCV1-sized data (19 M non-zeros, A 19 MB), 270 against
430 ms with one register a walk (a first version).  On machines without 512-bit
registers LLVM splits each register in two (AVX2) or into scalars.
"""

from __future__ import annotations

import contextlib

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._prefetch import emit_prefetch

#: float64 lanes of one vector register
LANES = 8
#: registers of sums per walk over a row's entries (32 sums)
GROUP_REGISTERS = 4
GROUP_LANES = LANES * GROUP_REGISTERS


def _is_indices(array) -> bool:
    """Whether ``array`` types as a 1-D C-contiguous integer array."""
    return (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and isinstance(array.dtype, types.Integer))


def _are_entries(data, indices, *integers) -> bool:
    """Whether ``data`` and ``indices`` type as a CSR matrix's value and
    index arrays (1-D, C-contiguous: the code indexes their memory
    directly) and ``integers`` (start, stop, last, ahead) as integers."""
    return (isinstance(data, types.Array) and data.ndim == 1 and data.layout == "C"
            and isinstance(data.dtype, types.Float) and _is_indices(indices)
            and all(isinstance(t, types.Integer) for t in integers))


def _is_rows(array, dtypes) -> bool:
    """Whether ``array`` types as a 2-D C-contiguous array of one of ``dtypes``."""
    return (isinstance(array, types.Array) and array.ndim == 2 and array.layout == "C"
            and array.dtype in dtypes)


def _is_vector(array) -> bool:
    """Whether ``array`` types as a 1-D C-contiguous float64 array."""
    return (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and array.dtype == types.float64)


class _LaneCode:
    """LLVM IR for loops over a CSR row's entries with sums in vector lanes:
    the pieces :func:`row_sums` and :func:`scatter_rows` share.  Both take
    ``(data, indices, start, stop, last, ahead, ...)`` first: the CSR
    arrays (``self.data``; the integer arrays by argument position, see
    :meth:`index`) and the entries' range and prefetch distance (int64
    values)."""

    def __init__(self, context, builder, signature, args):
        self.builder = builder
        self.i64, self.i32, self.f64 = ir.IntType(64), ir.IntType(32), ir.DoubleType()
        self.sums_type = ir.VectorType(self.f64, LANES)
        self.mask_type = ir.VectorType(ir.IntType(1), LANES)
        self.arrays = {k: context.make_array(signature.args[k])(context, builder, args[k])
                       for k, t in enumerate(signature.args) if isinstance(t, types.Array)}
        self.signed = {k: t.dtype.signed for k, t in enumerate(signature.args)
                       if isinstance(t, types.Array) and isinstance(t.dtype, types.Integer)}
        self.data = self.arrays[0]
        self.start, self.stop, self.last, self.ahead = (
            context.cast(builder, args[k], signature.args[k], types.int64) for k in (2, 3, 4, 5))
        self.lane_index = ir.Constant(ir.VectorType(self.i64, LANES), list(range(LANES)))

    def constant(self, value):
        """The int64 constant ``value``."""
        return ir.Constant(self.i64, value)

    def splat(self, value):
        """A vector of LANES copies of the scalar ``value``."""
        b = self.builder
        vector = ir.VectorType(value.type, LANES)
        first = b.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(self.i32, 0))
        return b.shuffle_vector(first, ir.Constant(vector, ir.Undefined),
                                ir.Constant(ir.VectorType(self.i32, LANES), [0] * LANES))

    def function(self, name, result, arguments):
        """The declaration of the LLVM function (an intrinsic) ``name``."""
        return cgutils.get_or_insert_function(self.builder.module,
                                              ir.FunctionType(result, arguments), name)

    def load(self, element, pointer, mask):
        """The masked lanes from ``pointer`` on (``element`` values), as
        float64 (LLVM's masked load)."""
        b = self.builder
        vector = ir.VectorType(element, LANES)
        single = element != self.f64
        function = self.function(f"llvm.masked.load.v{LANES}{'f32' if single else 'f64'}.p0",
                                 vector, [vector.as_pointer(), self.i32, self.mask_type, vector])
        value = b.call(function, [b.bitcast(pointer, vector.as_pointer()),
                                  ir.Constant(self.i32, 4 if single else 8), mask,
                                  ir.Constant(vector, [ir.Constant(element, 0.0)] * LANES)])
        return b.fpext(value, self.sums_type) if single else value

    def store(self, value, pointer, mask):
        """The masked lanes of the float64 vector ``value`` to ``pointer`` on
        (LLVM's masked store)."""
        b = self.builder
        function = self.function(f"llvm.masked.store.v{LANES}f64.p0", ir.VoidType(),
                                 [self.sums_type, self.sums_type.as_pointer(), self.i32,
                                  self.mask_type])
        b.call(function, [value, b.bitcast(pointer, self.sums_type.as_pointer()),
                          ir.Constant(self.i32, 8), mask])

    def fma(self, x, y, z):
        """``x * y + z`` of LANES float64 values (LLVM's ``fmuladd``: fused
        where the CPU has FMA)."""
        function = self.function(f"llvm.fmuladd.v{LANES}f64", self.sums_type,
                                 [self.sums_type] * 3)
        return self.builder.call(function, [x, y, z])

    def prefetch(self, row, registers):
        """Prefetch the cache lines of ``registers`` registers from the
        element pointer ``row`` on."""
        for r in range(registers):
            emit_prefetch(self.builder, self.register(row, r))

    def masks(self, left, registers):
        """The lanes below ``left`` of each of ``registers`` registers."""
        b = self.builder
        left = self.splat(left)
        return [b.icmp_signed("<", b.add(self.lane_index, self.splat(self.constant(LANES * r))),
                              left) for r in range(registers)]

    def register(self, pointer, r):
        """The element pointer of register r's first lane from ``pointer`` on."""
        return self.builder.gep(pointer, [self.constant(LANES * r)])

    def index(self, k, p):
        """``array[p]`` of the integer array of argument k, as int64."""
        b = self.builder
        value = b.load(b.gep(self.arrays[k].data, [p]))
        if value.type.width == 64:
            return value
        return b.sext(value, self.i64) if self.signed[k] else b.zext(value, self.i64)

    def element(self, rows, width, row, k0):
        """A pointer to ``rows[row, k0]`` of a C-contiguous array ``width`` wide."""
        b = self.builder
        return b.gep(rows.data, [b.add(b.mul(row, width), k0)])

    def value(self, p, square):
        """``data[p]`` (its square when ``square``) as float64, in every lane."""
        b = self.builder
        x = b.load(b.gep(self.data.data, [p]))
        x = b.fpext(x, self.f64) if x.type != self.f64 else x
        return self.splat(b.select(square, b.fmul(x, x), x))

    @contextlib.contextmanager
    def entries(self):
        """A loop over the entries start:stop, its body the ``with`` block:
        gives ``(p, q)``, q the entry ``ahead`` places on (at most ``last``)
        to prefetch for."""
        b = self.builder
        with cgutils.for_range(b, b.sub(self.stop, self.start), intp=self.i64) as loop:
            p = b.add(self.start, loop.index)
            q = b.add(p, self.ahead)
            yield p, b.select(b.icmp_signed("<", q, self.last), q, self.last)

    def groups(self, width, walk):
        """``walk(k0, registers)`` for k0 = 0, GROUP_LANES, ... < width, with
        as many registers (at most GROUP_REGISTERS) as the lanes left need:
        one compiled walk per register count, chosen at run time."""
        b = self.builder
        count = b.udiv(b.add(width, self.constant(GROUP_LANES - 1)), self.constant(GROUP_LANES))
        with cgutils.for_range(b, count, intp=self.i64) as group:
            k0 = b.mul(group.index, self.constant(GROUP_LANES))
            needed = b.udiv(b.add(b.sub(width, k0), self.constant(LANES - 1)),
                            self.constant(LANES))
            most = self.constant(GROUP_REGISTERS)
            needed = b.select(b.icmp_signed(">", needed, most), most, needed)
            done = b.append_basic_block("lanes.done")
            switch = b.switch(needed, done)
            for registers in range(1, GROUP_REGISTERS + 1):
                block = b.append_basic_block(f"lanes.registers{registers}")
                switch.add_case(self.constant(registers), block)
                b.position_at_end(block)
                walk(k0, registers)
                b.branch(done)
            b.position_at_end(done)


@intrinsic
def row_sums(typingctx, data, indices, start, stop, last, ahead, A, square, out):
    """``out[k] = sum over p in start:stop of x_p * A[indices[p], k]`` for
    every k < C, in float64, with ``x_p = data[p]`` (``data[p]**2`` when
    ``square``), the entries added in order.

    ``data`` (nnz,) float32 or float64 and ``indices`` (nnz,) integer are a
    CSR matrix's arrays (every index in [0, rows of A)); ``A`` (rows, C)
    C-contiguous float32 or float64; ``out`` (>= C,) C-contiguous float64
    (not checked: the caller's slice).  The row of A that the entry
    ``ahead`` places on reads (at most the entry ``last``) is prefetched,
    one cache line a register."""
    if not (_are_entries(data, indices, start, stop, last, ahead) and _is_vector(out)
            and _is_rows(A, (types.float32, types.float64)) and isinstance(square, types.Boolean)):
        return None  # no such overload: a typing error
    sig = types.void(data, indices, start, stop, last, ahead, A, square, out)

    def codegen(context, builder, signature, args):
        code = _LaneCode(context, builder, signature, args)
        A_a, out_a = code.arrays[6], code.arrays[8]
        square_ = context.cast(builder, args[7], signature.args[7], types.boolean)
        C = cgutils.unpack_tuple(builder, A_a.shape, 2)[1]
        element = context.get_value_type(signature.args[6].dtype)
        zero = ir.Constant(code.sums_type, [ir.Constant(code.f64, 0.0)] * LANES)

        def walk(k0, registers):
            masks = code.masks(builder.sub(C, k0), registers)
            sums = [cgutils.alloca_once_value(builder, zero) for _ in range(registers)]
            with code.entries() as (p, q):
                code.prefetch(code.element(A_a, C, code.index(1, q), k0), registers)
                x = code.value(p, square_)
                row = code.element(A_a, C, code.index(1, p), k0)
                for r in range(registers):
                    a = code.load(element, code.register(row, r), masks[r])
                    builder.store(code.fma(x, a, builder.load(sums[r])), sums[r])
            for r in range(registers):
                code.store(builder.load(sums[r]),
                           code.register(builder.gep(out_a.data, [k0]), r), masks[r])

        code.groups(C, walk)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def scatter_rows(typingctx, data, indices, start, stop, last, ahead, colmap, coef, slab):
    """``slab[q_p, k] += x_p * coef[k]`` for every entry p in start:stop and
    k < K, in float64, with ``x_p = data[p]`` and ``q_p = indices[p]``, or
    ``colmap[indices[p]]`` when ``colmap`` is not None; the entries in
    order (an index repeated in the row adds twice, as the scalar loop did).

    ``data`` (nnz,) float32 or float64 and ``indices`` (nnz,) integer are a
    CSR matrix's arrays; ``colmap`` (n,) integer (every q_p in [0, rows of
    slab)) or None; ``coef`` (>= K,) and ``slab`` (rows, K) C-contiguous
    float64, apart (``coef`` is read once, before the entries).  The slab
    row of the entry ``ahead`` places on (at most the entry ``last``; row 0
    for a negative colmap entry, a column the slab does not hold) is
    prefetched, one cache line a register."""
    mapped = colmap is not types.none
    if not (_are_entries(data, indices, start, stop, last, ahead) and _is_vector(coef)
            and _is_rows(slab, (types.float64,))
            and (not mapped or _is_indices(colmap))):
        return None  # no such overload: a typing error
    sig = types.void(data, indices, start, stop, last, ahead, colmap, coef, slab)

    def codegen(context, builder, signature, args):
        code = _LaneCode(context, builder, signature, args)
        coef_a, slab_a = code.arrays[7], code.arrays[8]
        K = cgutils.unpack_tuple(builder, slab_a.shape, 2)[1]
        no = ir.Constant(ir.IntType(1), 0)

        def slab_row(p):
            q = code.index(1, p)
            return code.index(6, q) if mapped else q

        def walk(k0, registers):
            masks = code.masks(builder.sub(K, k0), registers)
            coefs = [code.load(code.f64, code.register(builder.gep(coef_a.data, [k0]), r),
                               masks[r]) for r in range(registers)]
            with code.entries() as (p, q):
                ahead_row = slab_row(q)
                ahead_row = builder.select(builder.icmp_signed("<", ahead_row, code.constant(0)),
                                           code.constant(0), ahead_row)
                code.prefetch(code.element(slab_a, K, ahead_row, k0), registers)
                x = code.value(p, no)
                row = code.element(slab_a, K, slab_row(p), k0)
                for r in range(registers):
                    target = code.register(row, r)
                    total = code.fma(x, coefs[r], code.load(code.f64, target, masks[r]))
                    code.store(total, target, masks[r])

        code.groups(K, walk)
        return context.get_dummy_value()

    return sig, codegen
