"""Small array helpers shared by the validation modules (dense and sparse)."""

from __future__ import annotations

import numpy as np


def type_name(value) -> str:
    """The qualified name of ``value``'s type, for messages (``list``, ``dask.array.core.Array``)."""
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def kernel_array(a: np.ndarray, dtype) -> np.ndarray:
    """A C-contiguous, writeable array of ``dtype`` with a's values (a copy only if needed).

    Small arrays (W, b, weights, targets) are normalised so that their layout
    and read-only flag never make Numba compile another specialisation; X is
    passed as it is, to avoid copying it.
    """
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()
