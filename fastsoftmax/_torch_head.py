"""bfloat16 heads on PyTorch's matrix products: loss, dX, dW and db of a linear
layer followed by cross-entropy, for :mod:`fastsoftmax.torch`.

On CPUs with bfloat16 hardware (Intel AMX, AVX-512 BF16: see
:func:`fast_bfloat16_products`) PyTorch's bfloat16 matmuls run two to three
(AVX-512 BF16) to eight (AMX) times faster than its float32 GEMM, so for
bfloat16 tensors this module lets PyTorch do the three products of the
head and fastsoftmax everything between them
(:mod:`fastsoftmax._vocab_blocks`, the numerics of the large-vocabulary
kernel, which read and write the bfloat16 logits in place: maxima,
exponentials and logit gradients in float32, the rows' sums, losses and
scales in float64).  No (m, K) array and no (K, n) float32
accumulator: the logits are computed by tiles, a block of ``classes``
classes by a tile of ``rows`` rows, class-major, in two passes:

1. partials, row tiles outer, class blocks inner: ``Z = W[block] X_t^T``,
   the block's partial softmax sums folded into the tile's (in class
   order); after the last block, the rows' losses and scales
   (:func:`fastsoftmax._vocab_rows.combine_rows`), kept for all m rows
   (40 bytes a row);
2. gradients, class blocks outer, row tiles inner: ``Z`` again, the logit
   gradients ``D`` written over it in bfloat16 (PyTorch's own backward
   rounds them so too), their sums into the intercept gradient, then
   ``dW[block] = D X`` (summed over the rows by one product when one tile
   holds all of them, else in a float32 (classes, n) accumulator) and
   ``dX_t += D^T W[block]`` into a float32 (m, n) accumulator, rounded to
   bfloat16 at the end.

The second pass needs the first pass's logits again.  When one tile holds
every row, dW is wanted and m <= n, they are kept where dW goes: block
``k0 .. k1``'s (m, k1 - k0) logits fit in its own (k1 - k0, n) rows of dW,
and the second pass takes the blocks last first, so each dW block
overwrites only logits it has already used (their copy into the tile
buffer is what ``D`` is written over).  Three products of 2 m n K flops
then, as in PyTorch; otherwise the logits are computed again (the same
products, so the same bits): four.  From ``TORCH_HEAD_ROW_MAJOR_FEATURES``
features the dX product reads a row-major copy of D
(:mod:`fastsoftmax._transpose`), where PyTorch's products of a transposed
operand are slow; with one row tile the copies of several blocks, side by
side, make one product (``dx_classes`` classes, the plan's).

The division by the mean's denominator is folded into the rows' scales, so
D is the gradient of the loss itself, as in PyTorch.  Extra memory besides
the outputs (dX (m, n), dW (K, n) in bfloat16): the float32 dX
accumulator, 4 m n bytes; one logits tile, 2 ``rows classes`` bytes; one
product tile, 2 ``dx_rows n`` bytes (the dX product is made by slices of
``dx_rows`` rows); with the row-major copies, 2 ``rows dx_classes`` bytes
(``dx_classes`` classes by m rows with one row tile, at most
``TORCH_HEAD_DX_CLASSES``, else one block; these tiles are given back
before dX's memory is taken); the partials, 40 ``rows classes / piece``
bytes; the rows' scales, 40 m bytes; with several row
tiles the dW block's float32 accumulator and product, 6 ``classes n``
bytes.

Accuracy: each product is computed by PyTorch in bfloat16 with float32
accumulation and rounded to bfloat16: the logits once; dW once when one row
tile holds every row (up to ``fastsoftmax._dispatch.TORCH_HEAD_ROWS``),
else each row tile's product before their float32 sum, and that sum once
more; dX each product of a group of classes (a block, or with the
row-major copies and one row tile ``dx_classes`` classes) before their
float32 sum, and that sum once more.  PyTorch's own bfloat16 backward
rounds one product for each.  Where a gradient's entry is a sum of terms that cancel, these roundings of
the partial products (2^-9 of each) can be large against the entry itself;
measured against float64 on random heads, the error is PyTorch's ((512,
256, 16384): 3.6e-3 against 3.5e-3 relative; (8200, 128, 2048), two row
tiles: 4.2e-3 against 4.05e-3).  The results depend on the tiles and on
PyTorch's GEMMs (their thread count included), not on numba's threads.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _dispatch as policy
from ._threading import parallel_region
from ._touch import touch_pages
from ._transpose import transpose_bits
from ._validation import Targets
from ._vocab_blocks import tile_gradient, tile_partials
from ._vocab_rows import PARTIALS, combine_rows


def fast_bfloat16_products() -> bool:
    """Whether PyTorch's bfloat16 matmuls run on bfloat16 hardware here: the
    CPU has Intel AMX tiles or the AVX-512 BF16 instructions (AMD Zen 4,
    Intel's Cooper Lake and Sapphire Rapids and later Xeons), which
    PyTorch's oneDNN backend uses, and that backend is available and
    enabled (without it PyTorch's bfloat16 matmuls are a fallback,
    thousands of times slower, measured).  Else bfloat16 heads are computed
    in float32.

    On a 2-core Sapphire Rapids VM (AMX) PyTorch's bfloat16 GEMM ran at
    2.2-2.5 TFLOP/s against 290-310 GFLOP/s in float32; on a 2-core AMD
    EPYC (Zen 4, AVX-512 BF16, no AMX) at 373-409 against 131-171 GFLOP/s
    (NumPy's float32 GEMM 179-194), and the (4096, 1024, 32000) head took
    3.05 s on PyTorch's products against 4.98 s in float32, its extra memory
    1.39x against 4.39x the gradients' size (``bench/test_head.py``)."""
    units = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    probes = [getattr(torch.cpu, name, None) for name in units]
    mkldnn = torch.backends.mkldnn
    return bool(any(probe is not None and probe() for probe in probes)
                and mkldnn.is_available() and mkldnn.enabled)


def bits(t: torch.Tensor) -> np.ndarray:
    """A uint16 NumPy view of a contiguous bfloat16 tensor's memory (no copy)."""
    return t.view(torch.int16).numpy().view(np.uint16).reshape(-1)


def head_sums(X: torch.Tensor, W: torch.Tensor, b: np.ndarray, t: Targets, *,
              want_dx: bool, want_dw: bool, want_db: bool, losses: np.ndarray | None = None):
    """Loss and gradients of a bfloat16 head, normalised by ``t.denom``.

    ``X`` (m, n) and ``W`` (K, n) bfloat16 tensors (any strides), ``b`` (K,)
    float64 (zeros without a bias), ``t`` the validated targets (class
    indices with -1 for ignored samples, or (m, K) probabilities; no
    soft-capping).  ``losses``, when given, (m,) float64 zeros that receive
    the per-sample losses (``reduction="none"``).  Returns ``(loss, dX, dW,
    db)``: the loss a float (the sum of ``losses`` when given, divided by
    the denominator), dX (m, n) and dW (K, n) bfloat16 tensors and db (K,)
    float64, each None when not wanted (with none wanted, only the first
    pass runs).  See the module docstring.
    """
    m, n = X.shape
    K = W.shape[0]
    plan = policy.torch_head_plan(m, n, K, want_dw)
    rows, classes, piece, dx_rows = plan.rows, plan.classes, plan.piece, plan.dx_rows  # <= m
    single = plan.single
    kept = plan.keep_logits  # the first pass's logits in dW's memory (module docstring)
    labels, T, sw, cw = t.labels, t.T, t.sw, t.cw
    logits = torch.empty(classes * rows, dtype=torch.bfloat16)
    Zbits = bits(logits)
    part = np.empty(((classes + piece - 1) // piece, PARTIALS, rows))
    run = np.empty((PARTIALS, rows))
    rowv = np.empty((4, m))
    ly = np.zeros(m, dtype=np.int64)
    loss = 0.0
    dW = torch.empty((K, n), dtype=torch.bfloat16) if want_dw else None
    store = dW.view(-1) if kept else None  # block k0..k1's logits at store[k0 m: k1 m]

    def tile_logits(k0, k1, r0, r1):
        """The class-major logits of classes k0..k1-1 and rows r0..r1-1 (bfloat16)."""
        R = r1 - r0
        Z = (store[k0 * R: k1 * R] if kept else logits[: (k1 - k0) * R]).view(k1 - k0, R)
        torch.mm(W[k0:k1], X[r0:r1].T, out=Z)
        return Z

    Z = D = None  # the current tile: views of the logits' memory
    with parallel_region():
        if plan.touch_pages:
            touch_pages(bits(dW))  # its page faults, before the products that write it
        for r0 in range(0, m, rows):  # 1. partials, losses and the rows' scales
            r1 = min(m, r0 + rows)
            R = r1 - r0
            idx = np.arange(r0, r1, dtype=np.int64)
            run[0, :R] = -np.inf
            run[1:, :R] = 0.0
            for k0 in range(0, K, classes):
                k1 = min(K, k0 + classes)
                Z = bits(tile_logits(k0, k1, r0, r1))
                tile_partials(Z, R, k0, k1, piece, b, labels, T, t.eps, idx, cw, part, run)
            loss += combine_rows(run[None, :, :R], R, b, labels, sw, t.eps, idx, cw, t.zl,
                                 losses, rowv[:, r0:r1], ly[r0:r1])
        rowv[1:3] /= t.denom  # D is then the gradient of the normalised loss
        if losses is not None and t.denom != 1.0:
            losses /= t.denom

        gb = np.zeros(K)
        acc = torch.zeros((m, n), dtype=torch.float32) if want_dx else None
        # a group of classes a dX product: one block, or with row-major copies of
        # D and one row tile several (their copies side by side in Dt)
        group = plan.dx_classes
        Dt = torch.empty(rows * group, dtype=torch.bfloat16) \
            if want_dx and plan.row_major_dx else None
        dW_acc = None if single or not want_dw else torch.empty((classes, n),
                                                                dtype=torch.float32)

        def dx_products(Ds, r0, r1, g0, g1):
            """``acc[r0:r1] += Ds W[g0:g1]`` by slices of rows, ``Ds`` (r1 - r0, g1 - g0)."""
            for s0 in range(r0, r1, dx_rows):
                s1 = min(r1, s0 + dx_rows)
                acc[s0:s1] += torch.mm(Ds[s0 - r0:s1 - r0], W[g0:g1])

        groups = range(0, K if want_dx or want_dw or want_db else 0, group)
        for g0 in reversed(groups) if kept else groups:
            # 2. logit gradients, dW and dX (with kept logits, the last block first:
            # block k0's dW then overwrites only logits already used)
            g1 = min(K, g0 + group)
            G = g1 - g0
            blocks = range(g0, g1, classes)
            for k0 in reversed(blocks) if kept else blocks:
                k1 = min(K, k0 + classes)
                C = k1 - k0
                if dW_acc is not None:
                    dW_acc.zero_()
                for r0 in range(0, m, rows):
                    r1 = min(m, r0 + rows)
                    R = r1 - r0
                    idx = np.arange(r0, r1, dtype=np.int64)
                    D = logits[: C * R].view(C, R)
                    if kept:
                        D.copy_(store[k0 * R: k1 * R].view(C, R))
                    else:
                        tile_logits(k0, k1, r0, r1)
                    tile_gradient(Zbits, R, k0, k1, piece, b, labels, T, t.eps, idx, cw,
                                  rowv[:, r0:r1], ly[r0:r1], gb)
                    if want_dw:
                        if single:
                            torch.mm(D, X, out=dW[k0:k1])
                        else:
                            dW_acc[:C] += torch.mm(D, X[r0:r1])
                    if not want_dx:
                        continue
                    if Dt is None:
                        dx_products(D.T, r0, r1, k0, k1)
                    else:  # D copied row-major into the group's columns k0 - g0 ..
                        transpose_bits(Zbits, bits(Dt)[k0 - g0:], C, R, R, G,
                                       plan.transpose_block)
                        if len(blocks) == 1:
                            dx_products(Dt[: R * G].view(R, G), r0, r1, g0, g1)
                if dW_acc is not None:
                    dW[k0:k1] = dW_acc[:C]
            if Dt is not None and len(blocks) > 1:  # (then one tile holds every row)
                dx_products(Dt[: m * G].view(m, G), 0, m, g0, g1)
    del logits, Zbits, Z, D, Dt  # the tiles' memory given back before dX is made
    dX = None
    if want_dx:
        dX = torch.empty((m, n), dtype=torch.bfloat16)
        dX.copy_(acc)  # rounded to nearest, ties to even
    return loss / t.denom, dX, dW, (gb if want_db else None)
