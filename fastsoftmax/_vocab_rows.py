"""Softmax numerics of the large-vocabulary kernel, by blocks of classes.

The kernel (:mod:`fastsoftmax._vocab`) holds a super-tile's logits
class-major, ``Z[k R + r]`` for class k and row r of the super-tile (R
rows), and computes them one block of classes at a time, each block by one
thread; each function here gets the logits of its own classes ``k0 .. k1 -
1``, ``Z[(k - k0) R + r]``.  They may be float32 or float64, or bfloat16
held as their bits (uint16, :mod:`fastsoftmax._bf16`: PyTorch's bfloat16
logits in :mod:`fastsoftmax._torch_head`); the arithmetic is float64,
but for bfloat16 logits, whose maxima, exponentials and logit gradients are
computed in float32 (:mod:`fastsoftmax._bf16`'s working precision); the
rows' sums, losses and scales are float64 whatever the logits.  The softmax
needs every class of a row, so it is split in three:

1. :func:`block_partials`, right after the block's logits GEMM, while the
   block (a few hundred KB) is still in cache: per row, the block's maximum
   ``m_q``, its sum of exponentials ``s_q = sum_k exp(z_k - m_q)``, the
   target sums that smoothing and dense targets need and the label's logit
   when the block holds it (:func:`merge_partials` combines the partials of
   consecutive blocks into one, for callers that cannot keep them all);
2. :func:`combine_rows`, per row, serial (a few operations per row and
   block): the row maximum ``M = max_q m_q``, ``sum_k exp(z_k - M) =
   sum_q s_q exp(m_q - M)``, the loss, and the scale of the row's
   probabilities;
3. :func:`block_gradient`, per block, before the block's dW GEMM: the
   weighted logit gradient ``w_i (s_i p_ik - c_ik)`` written over the
   logits, and its sums over the rows added to the intercept gradient.

Two exponentials an entry, each computed in a contiguous loop over the rows
of a class.  The float64 row numerics of the fused kernel
(:func:`fastsoftmax._rowmath.tile_loss_and_coef`) copy a tile to float64
scratch and make seven passes over it, which for 32000 classes does not fit
in cache: measured on a 2-core Xeon VM at (4096, 1024, 32000) float32, 0.55
s of that kernel's 4 s went to them.  The mathematics, the options (class
weights, z-loss, per-sample losses) and the guards (a zero target never
meets a -inf logit; a block whose logits are all -inf adds nothing) are
those of ``tile_loss_and_coef``; soft-capping is not here: the kernel calls
``tile_loss_and_coef`` for it, whose float64 copy holds the capped logits
(recomputing ``tanh`` in every pass would cost more than the copy).

Per-row scratch is allocated inside each function: LLVM then knows that it
shares no memory with Z and vectorises the loops over rows without run-time
overlap checks (measured: 1.1 against 1.9 ns an entry for the sums of
exponentials).  Every result depends only on the blocks, never on which
thread computed them.
"""

from __future__ import annotations

import math

import numpy as np

from ._bf16 import exp_like, load, store, work, work_empty
from ._jit import serial_kernel

#: rows of a block's partial sums (see :func:`block_partials`)
PARTIALS = 5


@serial_kernel
def block_partials(Z, R, k0, k1, b, labels, T, eps, rows, cw, out):
    """Per-row partial sums of classes ``k0 .. k1 - 1`` of a super-tile.

    ``Z`` 1-D, at least ((k1 - k0) R,): the block's logits without the
    intercept ``b`` (K,), class-major, ``Z[(k - k0) R + r]``, float or
    bfloat16 bits (see the module docstring); ``rows`` (>= R,) int64: the
    super-tile's samples.  ``labels``, ``T``, ``eps`` as in
    :mod:`fastsoftmax._rowmath` (a label -1, an ignored sample, is in no
    block), ``cw`` (K,) float64 class weights or None.  Writes into ``out``
    (PARTIALS, >= R) float64, for each row r with ``z_k = Z[(k - k0) R + r]
    + b_k``: ``out[0, r] = m = max_k z_k``, ``out[1, r] = sum_k exp(z_k -
    m)`` (0 when m is -inf), the target sums ``out[2, r] = sum_k c_rk z_k``,
    ``out[3, r] = sum_k c_rk`` over the block's classes with ``c_rk`` the
    (class-weighted, smoothed) target: for class indices only the
    smoothing's share ``cw_k`` (0 without smoothing), for dense targets all
    of it; and ``out[4, r]``, the label's logit ``z_y`` (with ``b_y``) when
    the row's label is in the block, else 0.  A zero ``c_rk`` adds nothing,
    even against a -inf logit.
    """
    K = b.shape[0]
    inv_k = 1.0 / K
    mx = work_empty(Z, R)  # the maxima and exponentials at the logits' precision
    for r in range(R):
        mx[r] = -np.inf
    for k in range(k0, k1):
        bk = work(Z, b[k])
        zk = Z[(k - k0) * R: (k - k0 + 1) * R]
        for r in range(R):
            mx[r] = max(mx[r], load(zk[r]) + bk)
    shift = work_empty(Z, R)
    s = work_empty(Z, R)
    for r in range(R):
        shift[r] = 0.0 if mx[r] == -np.inf else mx[r]
        s[r] = 0.0
    for k in range(k0, k1):
        bk = work(Z, b[k])
        zk = Z[(k - k0) * R: (k - k0 + 1) * R]
        for r in range(R):
            s[r] += exp_like(Z, load(zk[r]) + bk - shift[r])
    cz = np.zeros(R)
    cs = np.zeros(R)
    zy = np.zeros(R)
    if labels.shape[0] > 0:
        for r in range(R):
            y = labels[rows[r]]
            if k0 <= y < k1:
                zy[r] = load(Z[(y - k0) * R + r]) + b[y]  # in b's dtype, as the logits
        if eps > 0.0:  # the smoothing's share: the same sum_k cw_k for every row
            csum = 0.0
            for k in range(k0, k1):
                ck = cw[k] if cw is not None else 1.0
                if ck != 0.0:
                    bk = b[k]
                    zk = Z[(k - k0) * R: (k - k0 + 1) * R]
                    for r in range(R):
                        cz[r] += ck * (load(zk[r]) + bk)
                    csum += ck
            for r in range(R):
                cs[r] = csum
    else:
        for k in range(k0, k1):
            bk = b[k]
            zk = Z[(k - k0) * R: (k - k0 + 1) * R]
            ck = cw[k] if cw is not None else 1.0
            for r in range(R):
                t = ck * ((1.0 - eps) * T[rows[r], k] + eps * inv_k)
                cz[r] += t * (load(zk[r]) + bk) if t != 0.0 else 0.0
                cs[r] += t
    for r in range(R):
        out[0, r] = mx[r]
        out[1, r] = s[r]
        out[2, r] = cz[r]
        out[3, r] = cs[r]
        out[4, r] = zy[r]


@serial_kernel
def merge_partials(run, part, R):
    """Fold the partials of consecutive blocks into a running one, in order.

    ``run`` (PARTIALS, >= R) float64 holds the partials of the classes
    before those of ``part`` (nblocks, PARTIALS, >= R) (all -inf maxima and
    zeros for none); afterwards, those of all of them, as
    :func:`block_partials` would give for their union up to rounding: the
    larger maximum, the sums of exponentials rescaled to it, the other sums
    added.
    """
    for q in range(part.shape[0]):
        for r in range(R):
            m0 = run[0, r]
            m1 = part[q, 0, r]
            M = max(m0, m1)
            if M == -np.inf:  # no finite logit yet: the sums of exponentials stay 0
                s = run[1, r] + part[q, 1, r]
            else:
                s = run[1, r] * math.exp(m0 - M) + part[q, 1, r] * math.exp(m1 - M)
            run[0, r] = M
            run[1, r] = s
            for j in range(2, PARTIALS):
                run[j, r] += part[q, j, r]


@serial_kernel
def combine_rows(part, R, b, labels, sw, eps, rows, cw, zl, lout, rowv, ly):
    """Loss and probability scales of a super-tile's rows from their blocks' partials.

    ``part`` (nblocks, PARTIALS, >= R) float64: :func:`block_partials` of
    every block of classes, in class order.  ``R``, ``b``, ``labels``,
    ``eps``, ``rows``, ``cw`` as there; ``sw`` sample weights (empty: none),
    ``zl`` the z-loss coefficient or None, ``lout`` (m,) float64 per-sample
    losses or None.  Writes per row r, for :func:`block_gradient`:
    ``rowv[0, r]`` the row maximum M, ``rowv[1, r] = w_i s_i / sum_k exp(z_k
    - M)`` (with a z-loss ``s_i`` includes ``2 zl lse_i``), ``rowv[2, r] =
    w_i``, ``rowv[3, r] = (1 - eps) cw_{y_i}`` (``1 - eps`` without class
    weights) and ``ly[r] = y_i`` for class indices.  Returns the
    super-tile's weighted loss ``sum_r w_i (s_i lse_i - sum_k c_ik z_ik)``
    (plus the z-loss), computed as ``s_i log(sum_k exp(z_k - M)) - sum_k
    c_ik (z_ik - M)``.  A row whose label is -1 (ignored) adds nothing:
    its scales and weight are 0, so its logit gradients are 0.
    """
    K = b.shape[0]
    inv_k = 1.0 / K
    nblocks = part.shape[0]
    use_labels = labels.shape[0] > 0
    weighted = sw.shape[0] > 0
    loss = 0.0
    for r in range(R):
        i = rows[r]
        M = -np.inf
        for q in range(nblocks):
            M = max(M, part[q, 0, r])
        ssum = 0.0
        cz = 0.0
        cs = 0.0
        zy = 0.0
        for q in range(nblocks):  # a block whose logits are all -inf adds 0 * exp(-inf)
            ssum += part[q, 1, r] * math.exp(part[q, 0, r] - M)
            cz += part[q, 2, r]
            cs += part[q, 3, r]
            zy += part[q, 4, r]  # one block holds the label: the others add 0
        rowv[0, r] = M
        # tz = sum_k c_ik (z_ik - M), tsum = sum_k c_ik
        if use_labels:
            y = labels[i]
            ly[r] = y
            if y < 0:  # exp(z - M) stays finite (0 when every logit is -inf)
                rowv[0, r] = M if M > -np.inf else 0.0
                for j in range(1, 4):
                    rowv[j, r] = 0.0
                continue
            c = (1.0 - eps) * (cw[y] if cw is not None else 1.0)
            rowv[3, r] = c
            tz = c * (zy - M) if c != 0.0 else 0.0
            tsum = c
            if eps > 0.0:
                tz += eps * inv_k * (cz - cs * M)
                tsum += eps * inv_k * cs
        else:
            tz = cz - cs * M
            tsum = cs
        w = sw[i] if weighted else 1.0
        log_s = math.log(ssum)
        li = tsum * log_s - tz
        if zl is not None:
            lse = M + log_s
            li += zl * lse * lse
            tsum += 2.0 * zl * lse  # the scale of p_i in the gradient
        li = w * li
        if lout is not None:
            lout[i] = li
        loss += li
        rowv[1, r] = w * tsum / ssum
        rowv[2, r] = w
    return loss


@serial_kernel
def block_gradient(Z, R, k0, k1, b, labels, T, eps, rows, cw, rowv, ly, gb):
    """The weighted logit gradient of classes ``k0 .. k1 - 1``, over their logits.

    ``Z``, ``R``, ``b``, ``labels``, ``T``, ``eps``, ``rows``, ``cw`` as for
    :func:`block_partials`; ``rowv`` and ``ly`` as :func:`combine_rows` left
    them.  Writes ``Z[(k - k0) R + r] = w_i (s_i p_ik - c_ik)`` for the
    block's classes (rounded to bfloat16 when Z holds bfloat16 bits) and
    adds each class's sum over the rows (of the unrounded values) to
    ``gb[k]`` (K,) float64.
    """
    K = b.shape[0]
    inv_k = 1.0 / K
    use_labels = labels.shape[0] > 0
    # the rows' values at the logits' precision
    mx = work_empty(Z, R)
    scale = work_empty(Z, R)
    w = work_empty(Z, R)
    cy = work_empty(Z, R)
    d = work_empty(Z, R)
    for r in range(R):
        mx[r] = rowv[0, r]
        scale[r] = rowv[1, r]
        w[r] = rowv[2, r]
        cy[r] = rowv[3, r]
    y = ly[:R].copy()
    none = work(Z, 0.0)
    for k in range(k0, k1):
        bk = work(Z, b[k])
        zk = Z[(k - k0) * R: (k - k0 + 1) * R]
        ck = cw[k] if cw is not None else 1.0
        if use_labels:
            off = work(Z, eps * inv_k * ck)
            for r in range(R):
                t = off + (cy[r] if y[r] == k else none)
                v = scale[r] * exp_like(Z, load(zk[r]) + bk - mx[r]) - w[r] * t
                d[r] = v if y[r] >= 0 else none  # an ignored row: 0, even for a NaN logit
        else:
            for r in range(R):
                t = work(Z, ck * ((1.0 - eps) * T[rows[r], k] + eps * inv_k))
                d[r] = scale[r] * exp_like(Z, load(zk[r]) + bk - mx[r]) - w[r] * t
        acc = 0.0
        for r in range(R):
            acc += d[r]
        gb[k] += acc
        for r in range(R):
            store(zk, r, d[r])
