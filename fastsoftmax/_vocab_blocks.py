"""The large-vocabulary numerics over one tile of logits whose GEMMs run elsewhere.

:mod:`fastsoftmax._torch_head` computes a head's matrix products with
PyTorch (its bfloat16 matmuls run on the CPU's bfloat16 hardware) one tile at a
time, a block of classes by a tile of rows, class-major, and calls these two
kernels between them.  Each splits the block into pieces of ``piece``
classes and runs :mod:`fastsoftmax._vocab_rows` on the pieces in parallel:

- :func:`tile_partials`: the pieces' partial sums, folded in class order
  into the tile's running partials (:func:`~fastsoftmax._vocab_rows.merge_partials`);
- :func:`tile_gradient`: the logit gradients written over the logits, and
  their sums over the rows added to the intercept gradient (each piece owns
  its classes' entries).

The logits may be float32 or float64, or bfloat16 held as uint16 bits.
Results depend on ``piece`` and on the tiles, never on the thread count.
"""

from __future__ import annotations

from numba import prange

from ._jit import parallel_kernel
from ._vocab_rows import block_gradient, block_partials, merge_partials


@parallel_kernel
def tile_partials(Z, R, k0, k1, piece, b, labels, T, eps, rows, cw, part, run):
    """Fold the partials of classes ``k0 .. k1 - 1`` of R rows into ``run``.

    ``Z`` 1-D, at least ((k1 - k0) R,): the tile's logits without ``b``,
    class-major; ``rows`` (R,) int64 the tile's samples; ``part``
    (>= ceil((k1 - k0) / piece), PARTIALS, >= R) float64 scratch; ``run``
    (PARTIALS, >= R) float64 the running partials of the classes before
    ``k0`` (see :func:`fastsoftmax._vocab_rows.merge_partials`).  The other
    arguments as for :func:`fastsoftmax._vocab_rows.block_partials`.
    """
    npieces = (k1 - k0 + piece - 1) // piece
    for q in prange(npieces):
        a = k0 + q * piece
        e = min(k1, a + piece)
        block_partials(Z[(a - k0) * R:], R, a, e, b, labels, T, eps, rows, cw, part[q])
    merge_partials(run, part[:npieces], R)


@parallel_kernel
def tile_gradient(Z, R, k0, k1, piece, b, labels, T, eps, rows, cw, rowv, ly, gb):
    """The logit gradients of classes ``k0 .. k1 - 1`` of R rows, over ``Z``.

    As :func:`fastsoftmax._vocab_rows.block_gradient` (``rowv``, ``ly`` of
    the tile's rows), by pieces of ``piece`` classes in parallel; ``gb``
    (K,) float64 receives each class's sum over the R rows.
    """
    npieces = (k1 - k0 + piece - 1) // piece
    for q in prange(npieces):
        a = k0 + q * piece
        e = min(k1, a + piece)
        block_gradient(Z[(a - k0) * R:], R, a, e, b, labels, T, eps, rows, cw, rowv, ly, gb)
