"""A cache hint for the compiled kernels: fetch a row of an array before it is read."""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def emit_prefetch(builder, ptr):
    """Emit LLVM's ``prefetch`` of the address ``ptr`` (any pointer): read,
    high temporal locality, data cache."""
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
    # read (0), high temporal locality (3), data cache (1)
    builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                      ir.Constant(i32, 1)])


@intrinsic
def prefetch_row(typingctx, arr, i):
    """Ask the CPU to bring row ``i`` of the 2-D C-contiguous ``arr`` into cache
    (LLVM's ``prefetch``: read, high locality).  Only a hint: it changes no
    value, and an address outside the array does not fault."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C"
            and isinstance(i, types.Integer)):
        return None  # no such overload: a typing error
    sig = types.void(arr, i)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        row = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary,
                                       [row, context.get_constant(types.intp, 0)],
                                       wraparound=False)
        emit_prefetch(builder, ptr)
        return context.get_dummy_value()

    return sig, codegen
