"""Softmax numerics of the large-vocabulary kernel, by blocks of classes.

The kernel (:mod:`fastsoftmax._vocab`) holds a super-tile's logits
class-major, ``Z[k R + r]`` for class k and row r of the super-tile (R
rows), and computes them one block of classes at a time, each block by one
thread.  The softmax needs every class of a row, so it is split in three:

1. :func:`block_partials`, right after the block's logits GEMM, while the
   block (a few hundred KB) is still in cache: per row, the block's maximum
   ``m_q``, its sum of exponentials ``s_q = sum_k exp(z_k - m_q)`` and the
   target sums that smoothing and dense targets need;
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

from ._jit import serial_kernel
from ._rowmath import exp_nonpositive


@serial_kernel
def block_partials(Z, R, k0, k1, b, labels, T, eps, rows, cw, out):
    """Per-row partial sums of classes ``k0 .. k1 - 1`` of a super-tile.

    ``Z`` (K R,) 1-D, working dtype: the super-tile's logits without the
    intercept ``b`` (K,), class-major (see the module docstring); ``rows``
    (>= R,) int64: the super-tile's samples.  ``labels``, ``T``, ``eps`` as in
    :mod:`fastsoftmax._rowmath`, ``cw`` (K,) float64 class weights or None.
    Writes into ``out`` (4, >= R) float64, for each row r with
    ``z_k = Z[k R + r] + b_k``: ``out[0, r] = m = max_k z_k``, ``out[1, r] =
    sum_k exp(z_k - m)`` (0 when m is -inf), and the target sums
    ``out[2, r] = sum_k c_rk z_k``, ``out[3, r] = sum_k c_rk`` over the
    block's classes with ``c_rk`` the (class-weighted, smoothed) target:
    for class indices only the smoothing's share ``cw_k`` (0 without
    smoothing), for dense targets all of it.  A zero ``c_rk`` adds nothing,
    even against a -inf logit.
    """
    K = b.shape[0]
    inv_k = 1.0 / K
    mx = np.empty(R)
    for r in range(R):
        mx[r] = -np.inf
    for k in range(k0, k1):
        bk = b[k]
        zk = Z[k * R: (k + 1) * R]
        for r in range(R):
            mx[r] = max(mx[r], zk[r] + bk)
    shift = np.empty(R)
    for r in range(R):
        shift[r] = 0.0 if mx[r] == -np.inf else mx[r]
    s = np.zeros(R)
    for k in range(k0, k1):
        bk = b[k]
        zk = Z[k * R: (k + 1) * R]
        for r in range(R):
            s[r] += exp_nonpositive(zk[r] + bk - shift[r])
    cz = np.zeros(R)
    cs = np.zeros(R)
    if labels.shape[0] > 0:
        if eps > 0.0:  # the smoothing's share: the same sum_k cw_k for every row
            csum = 0.0
            for k in range(k0, k1):
                ck = cw[k] if cw is not None else 1.0
                if ck != 0.0:
                    bk = b[k]
                    zk = Z[k * R: (k + 1) * R]
                    for r in range(R):
                        cz[r] += ck * (zk[r] + bk)
                    csum += ck
            for r in range(R):
                cs[r] = csum
    else:
        for k in range(k0, k1):
            bk = b[k]
            zk = Z[k * R: (k + 1) * R]
            ck = cw[k] if cw is not None else 1.0
            for r in range(R):
                t = ck * ((1.0 - eps) * T[rows[r], k] + eps * inv_k)
                cz[r] += t * (zk[r] + bk) if t != 0.0 else 0.0
                cs[r] += t
    for r in range(R):
        out[0, r] = mx[r]
        out[1, r] = s[r]
        out[2, r] = cz[r]
        out[3, r] = cs[r]


@serial_kernel
def combine_rows(Z, R, part, b, labels, sw, eps, rows, cw, zl, lout, rowv, ly):
    """Loss and probability scales of a super-tile's rows from their blocks' partials.

    ``part`` (nblocks, 4, >= R) float64: :func:`block_partials` of every block
    of classes, in class order.  ``Z``, ``R``, ``b``, ``labels``, ``eps``,
    ``rows``, ``cw`` as there; ``sw`` sample weights (empty: none), ``zl``
    the z-loss coefficient or None, ``lout`` (m,) float64 per-sample losses
    or None.  Writes per row r, for :func:`block_gradient`: ``rowv[0, r]``
    the row maximum M, ``rowv[1, r] = w_i s_i / sum_k exp(z_k - M)`` (with a
    z-loss ``s_i`` includes ``2 zl lse_i``), ``rowv[2, r] = w_i``,
    ``rowv[3, r] = (1 - eps) cw_{y_i}`` (``1 - eps`` without class weights)
    and ``ly[r] = y_i`` for class indices.  Returns the super-tile's weighted loss
    ``sum_r w_i (s_i lse_i - sum_k c_ik z_ik)`` (plus the z-loss), computed
    as ``s_i log(sum_k exp(z_k - M)) - sum_k c_ik (z_ik - M)``.
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
        for q in range(nblocks):  # a block whose logits are all -inf adds 0 * exp(-inf)
            ssum += part[q, 1, r] * math.exp(part[q, 0, r] - M)
            cz += part[q, 2, r]
            cs += part[q, 3, r]
        # tz = sum_k c_ik (z_ik - M), tsum = sum_k c_ik
        if use_labels:
            y = labels[i]
            c = (1.0 - eps) * (cw[y] if cw is not None else 1.0)
            ly[r] = y
            rowv[3, r] = c
            tz = c * (Z[y * R + r] + b[y] - M) if c != 0.0 else 0.0
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
        rowv[0, r] = M
        rowv[1, r] = w * tsum / ssum
        rowv[2, r] = w
    return loss


@serial_kernel
def block_gradient(Z, R, k0, k1, b, labels, T, eps, rows, cw, rowv, ly, gb):
    """The weighted logit gradient of classes ``k0 .. k1 - 1``, over their logits.

    ``Z``, ``R``, ``b``, ``labels``, ``T``, ``eps``, ``rows``, ``cw`` as for
    :func:`block_partials`; ``rowv`` and ``ly`` as :func:`combine_rows` left
    them.  Writes ``Z[k R + r] = w_i (s_i p_ik - c_ik)`` for the block's
    classes and adds each class's sum over the rows to ``gb[k]`` (K,)
    float64.
    """
    K = b.shape[0]
    inv_k = 1.0 / K
    use_labels = labels.shape[0] > 0
    mx = rowv[0, :R].copy()
    scale = rowv[1, :R].copy()
    w = rowv[2, :R].copy()
    cy = rowv[3, :R].copy()
    y = ly[:R].copy()
    d = np.empty(R)
    for k in range(k0, k1):
        bk = b[k]
        zk = Z[k * R: (k + 1) * R]
        ck = cw[k] if cw is not None else 1.0
        if use_labels:
            off = eps * inv_k * ck
            for r in range(R):
                t = off + (cy[r] if y[r] == k else 0.0)
                d[r] = scale[r] * exp_nonpositive(zk[r] + bk - mx[r]) - w[r] * t
        else:
            for r in range(R):
                t = ck * ((1.0 - eps) * T[rows[r], k] + eps * inv_k)
                d[r] = scale[r] * exp_nonpositive(zk[r] + bk - mx[r]) - w[r] * t
        acc = 0.0
        for r in range(R):
            acc += d[r]
        gb[k] += acc
        for r in range(R):
            zk[r] = d[r]
