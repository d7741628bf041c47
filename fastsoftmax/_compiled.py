"""Call a compiled chunk function from a parallel kernel through its address.

A ``prange`` kernel that calls another compiled function directly links that
function's code into the loop body, the body's two wrappers and the kernel
itself, and numba optimises and emits all of it again for each of them: for
the fused kernel that made the parallel path compile (and load from the disk
cache) three times the chunk function's code.  Called through its address
instead, the chunk function is compiled once, on its own, and the parallel
kernel only holds a loop of calls.

:class:`CompiledFunction` holds a dispatcher's native entry point for one
signature; numba types it as :class:`CompiledFunctionType`, which carries
that signature, and :func:`call_compiled` (an intrinsic) refuses at compile
time any argument types other than those it was compiled for, so a call can
never pass the wrong layout.  The address is a run-time argument, so the
calling kernel stays cacheable.  An exception in the callee (a MemoryError
from an allocation, say) cannot cross a parallel region: ``call_compiled``
returns ``(value, failed)`` and the caller decides what to do (the fused
kernel reruns the call in Python, where the exception surfaces).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils, errors
from numba.core.callconv import excinfo_t
from numba.extending import (NativeValue, intrinsic, models, register_model, typeof_impl,
                             unbox)


class CompiledFunctionType(types.Type):
    """numba type of a :class:`CompiledFunction`: its argument and return types."""

    def __init__(self, argtypes: tuple, restype):
        self.argtypes = tuple(argtypes)
        self.restype = restype
        super().__init__(name=f"CompiledFunction({', '.join(map(str, argtypes))}) -> {restype}")


@register_model(CompiledFunctionType)
class _AddressModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.IntType(64))


class CompiledFunction:
    """The native entry point of ``dispatcher`` compiled for ``argtypes`` (numba types)."""

    def __init__(self, dispatcher, argtypes: tuple):
        argtypes = tuple(argtypes)
        dispatcher.compile(argtypes)  # loads from the disk cache when it can
        cres = dispatcher.overloads[argtypes]
        self.argtypes = argtypes
        self.restype = cres.signature.return_type
        self.address = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        self.numba_type = CompiledFunctionType(argtypes, self.restype)  # typed once, not per call
        self._keep = cres  # the code lives as long as this object


def array_key(a) -> tuple | None:
    """What numba's type of an ndarray (or None) depends on: dtype, dimensions,
    layout, writeability and alignment; far cheaper than ``numba.typeof``."""
    if a is None:
        return None
    f = a.flags
    return (type(a), a.dtype, a.ndim, f.c_contiguous, f.f_contiguous, f.writeable, f.aligned)


@typeof_impl.register(CompiledFunction)
def _typeof_compiled(val, c):
    return val.numba_type


@unbox(CompiledFunctionType)
def _unbox_compiled(typ, obj, c):
    address = c.pyapi.object_getattr_string(obj, "address")
    value = c.pyapi.long_as_longlong(address)
    c.pyapi.decref(address)
    return NativeValue(value, is_error=cgutils.is_not_null(c.builder, c.pyapi.err_occurred()))


@intrinsic
def call_compiled(typingctx, function, *args):
    """``(function(*args), failed)`` for a :class:`CompiledFunction`: ``failed`` is
    True when the call raised (its value is then 0).  The argument types must
    be exactly those it was compiled for (a typing error otherwise)."""
    if not isinstance(function, CompiledFunctionType):
        raise errors.TypingError(f"call_compiled needs a CompiledFunction, got {function}")
    argtypes = tuple(args)
    if argtypes != function.argtypes:
        raise errors.TypingError(f"call_compiled: arguments {argtypes} do not match {function}")
    restype = function.restype

    def codegen(context, builder, signature, llargs):
        cc = context.call_conv
        fnptr = builder.inttoptr(llargs[0], cc.get_function_type(restype, argtypes).as_pointer())
        values = cgutils.unpack_tuple(builder, llargs[1], len(argtypes))
        retty = cc.get_return_type(restype).pointee
        result = cgutils.alloca_once(builder, retty)
        builder.store(cgutils.get_null_value(retty), result)
        excinfo = cgutils.alloca_once(builder, ir.PointerType(excinfo_t), name="excinfo")
        packed = list(context.get_arg_packer(argtypes).as_arguments(builder, values))
        status = builder.call(fnptr, [result, excinfo] + packed)
        failed = builder.icmp_signed("!=", status, ir.Constant(status.type, 0))
        value = context.get_returned_value(builder, restype, builder.load(result))
        return context.make_tuple(builder, outtype, [value, failed])

    outtype = types.Tuple((restype, types.boolean))
    return outtype(function, types.StarArgTuple.from_types(argtypes)), codegen
