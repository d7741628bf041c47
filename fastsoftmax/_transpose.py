"""Transposing bfloat16 bits (uint16) between class-major and row-major tiles.

:mod:`fastsoftmax._torch_head` writes each tile's logit gradients D class-major,
(classes, rows), the layout of its dW product ``D X``.  Its dX product
``D^T W`` then reads D transposed.  PyTorch's bfloat16 matmul runs such a
product at the plain product's rate up to 1024 features (W's columns), more
slowly from 1280 and at about half the rate from 2048 (measured on a 2-core
Sapphire Rapids VM: 6.3-6.8 ms against 3.3 ms for (2048, 1024) x (1024,
2048); see ``fastsoftmax._dispatch.TORCH_HEAD_ROW_MAJOR_FEATURES``).  There a
row-major copy of D makes it a plain product; the copy costs 0.47 ms for
those 1024 x 2048 entries (PyTorch's own ``copy_`` of the transposed view:
1.5 ms).

The copy moves 4 x 4 blocks of 16-bit entries as four 64-bit words each, and
transposes the block in registers with shifts and masks: two rounds, 16-bit
swaps within pairs of words, then 32-bit swaps.  That needs every row start
and both strides to be multiples of four entries (and the arrays 8-byte
aligned); other shapes take an entry-by-entry loop, three times slower.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import parallel_kernel

_LOW16 = np.uint64(0x0000FFFF0000FFFF)
_HIGH16 = np.uint64(0xFFFF0000FFFF0000)
_LOW32 = np.uint64(0x00000000FFFFFFFF)
_HIGH32 = np.uint64(0xFFFFFFFF00000000)
_S16 = np.uint64(16)
_S32 = np.uint64(32)


@parallel_kernel
def _transpose_words(src, dst, rows, cols, src_stride, dst_stride, block):
    """``dst[j, i] = src[i, j]`` on uint64 views, four uint16 entries a word.

    ``src`` and ``dst`` (1-D uint64) hold (rows, cols) and (cols, rows)
    uint16 entries with row strides ``src_stride`` and ``dst_stride``
    entries; rows, cols and both strides are multiples of 4.  Tiles of
    ``block`` x ``block`` 4 x 4 blocks in parallel.
    """
    qr = rows // 4
    qc = cols // 4
    ws = src_stride // 4  # a row's stride in words
    wd = dst_stride // 4
    nbr = (qr + block - 1) // block
    nbc = (qc + block - 1) // block
    for t in prange(nbr * nbc):
        i0 = (t // nbc) * block
        j0 = (t % nbc) * block
        for j in range(j0, min(qc, j0 + block)):
            for i in range(i0, min(qr, i0 + block)):
                s = 4 * i * ws + j  # word j of the block's first source row
                a0 = src[s]
                a1 = src[s + ws]
                a2 = src[s + 2 * ws]
                a3 = src[s + 3 * ws]
                # 16-bit swaps: t0 = (a00 a10 a02 a12), t1 = (a01 a11 a03 a13), ...
                t0 = (a0 & _LOW16) | ((a1 & _LOW16) << _S16)
                t1 = ((a0 >> _S16) & _LOW16) | (a1 & _HIGH16)
                t2 = (a2 & _LOW16) | ((a3 & _LOW16) << _S16)
                t3 = ((a2 >> _S16) & _LOW16) | (a3 & _HIGH16)
                o = 4 * j * wd + i  # word i of the block's first destination row
                dst[o] = (t0 & _LOW32) | (t2 << _S32)
                dst[o + wd] = (t1 & _LOW32) | (t3 << _S32)
                dst[o + 2 * wd] = (t0 >> _S32) | (t2 & _HIGH32)
                dst[o + 3 * wd] = (t1 >> _S32) | (t3 & _HIGH32)


@parallel_kernel
def _transpose_entries(src, dst, rows, cols, src_stride, dst_stride, block):
    """``dst[j, i] = src[i, j]`` entry by entry (any shape; arguments as above, in entries)."""
    nbr = (rows + block - 1) // block
    nbc = (cols + block - 1) // block
    for t in prange(nbr * nbc):
        i0 = (t // nbc) * block
        j0 = (t % nbc) * block
        for j in range(j0, min(cols, j0 + block)):
            for i in range(i0, min(rows, i0 + block)):
                dst[j * dst_stride + i] = src[i * src_stride + j]


def transpose_bits(src: np.ndarray, dst: np.ndarray, rows: int, cols: int,
                   src_stride: int, dst_stride: int, block: int) -> None:
    """Write the transpose of a (rows, cols) uint16 matrix.

    ``src`` (1-D uint16) holds entry (i, j) at ``src[i * src_stride + j]``;
    ``dst`` (1-D uint16) receives it at ``dst[j * dst_stride + i]``.  Both are
    long enough and do not overlap.  ``block`` is the tile edge in 4 x 4
    blocks (the entry-by-entry loop's tiles are 4 ``block`` entries).
    """
    if rows == 0 or cols == 0:
        return
    if (src.shape[0] < (rows - 1) * src_stride + cols
            or dst.shape[0] < (cols - 1) * dst_stride + rows):
        raise ValueError(f"transpose_bits: ({rows}, {cols}) entries with strides {src_stride}, "
                         f"{dst_stride} do not fit in {src.shape[0]} and {dst.shape[0]} entries")
    if (rows % 4 == 0 and cols % 4 == 0 and src_stride % 4 == 0 and dst_stride % 4 == 0
            and src.ctypes.data % 8 == 0 and dst.ctypes.data % 8 == 0):
        ns = ((rows - 1) * src_stride + cols + 3) // 4 * 4
        nd = ((cols - 1) * dst_stride + rows + 3) // 4 * 4
        _transpose_words(src[:ns].view(np.uint64), dst[:nd].view(np.uint64),
                         rows, cols, src_stride, dst_stride, block)
    else:
        _transpose_entries(src, dst, rows, cols, src_stride, dst_stride, 4 * block)
