"""Row numerics of the large-vocabulary kernel: softmax, loss and logit
gradient of a group of samples whose logits are stored class-major, in place.

:func:`fastsoftmax._rowmath.tile_loss_and_coef` copies a tile's logits into
float64 scratch and makes seven passes over it (shift, maximum, subtract,
exponentials, sums, scale, targets, copy out).  For the few classes of the
fused kernel the scratch stays in the first-level cache; for a vocabulary of
32000 classes a group of 16 samples has 4 MB of it, and the passes go to
memory: about 8 ns an entry on the development machines, as much as the
three GEMMs of the head.  Here each pass reads the logits themselves (the
working dtype: 2 MB for that group, half the traffic) and there are three:

1. the row maxima ``mx_r`` of ``z_rk = Z[k, r] + b_k``;
2. the sums of exponentials ``sum_k exp(z_rk - mx_r)`` (and, with label
   smoothing or dense targets, the target terms ``sum_k c_rk (z_rk - mx_r)``
   in a pass of their own);
3. the logit gradient ``D[k, r] = w_r (s_r p_rk - c_rk)``, computing each
   exponential again (two exponentials an entry instead of one, which costs
   less than the stores and loads of a float64 copy), written over the
   logits, and its sums over the group's samples added to the intercept
   gradient.

The mathematics, the options (class weights, z-loss, per-sample losses) and
the guards (a zero target never meets a -inf logit) are those of
``tile_loss_and_coef``; soft-capping is not here: the kernel calls
``tile_loss_and_coef`` for it, whose float64 copy holds the capped logits
(recomputing ``tanh`` in every pass would cost more than the copy).
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import serial_kernel
from ._rowmath import exp_nonpositive


@serial_kernel
def group_loss_and_coef(Z, R, r0, G, b, labels, T, sw, eps, rows, gb, cw, zl, lout):
    """Softmax, loss and logit gradient of ``G`` samples, class-major, in place.

    ``Z`` (K R,) 1-D, C-contiguous, working dtype: a super-tile's logits
    without the intercept, class-major, ``Z[k R + r]`` for class k of the
    super-tile's row r; the group is rows ``r0 .. r0 + G - 1``, whose samples
    are ``i = rows[j]`` (``rows`` (G,) int64 indexes ``labels``, ``T``,
    ``sw`` and ``lout``).  ``b`` (K,) the intercept; ``labels``, ``T``,
    ``sw``, ``eps`` the targets, sample weights and smoothing as in
    :mod:`fastsoftmax._rowmath`; ``cw`` (K,) float64 class weights, ``zl``
    the z-loss coefficient, ``lout`` (m,) float64 per-sample losses, each
    None when unused (numba then prunes its code).

    On return the group's entries of ``Z`` hold the weighted logit gradients
    ``w_i (s_i p_ik - c_ik)`` (with a z-loss, ``s_i`` includes
    ``2 zl lse_i``), their sums over the group have been added to ``gb``
    (K,) float64, and the group's weighted loss is returned.
    """
    K = b.shape[0]
    inv_k = 1.0 / K
    use_labels = labels.shape[0] > 0
    weighted = sw.shape[0] > 0
    # Per-sample scratch of the group, allocated here: LLVM then knows that it
    # shares no memory with Z, and vectorises the loops below without run-time
    # overlap checks (measured: 1.9 against 1.1 ns an entry for pass 2).
    mx = np.empty(G)
    ssum = np.empty(G)
    tz = np.empty(G)  # sum_k c_ik (z_ik - mx_i)
    tsum = np.empty(G)  # sum_k c_ik, later the scale w_i s_i / ssum_i
    wr = np.empty(G)  # w_i
    cy = np.empty(G)  # (1 - eps) c_{i, y_i} for class indices
    tmp = np.empty(G)
    ly = np.empty(G, dtype=np.int64)
    for j in range(G):
        i = rows[j]
        mx[j] = -np.inf
        ssum[j] = 0.0
        tz[j] = 0.0
        tsum[j] = 0.0
        wr[j] = sw[i] if weighted else 1.0
    # 1. row maxima
    for k in range(K):
        bk = b[k]
        zk = Z[k * R + r0: k * R + r0 + G]
        for j in range(G):
            mx[j] = max(mx[j], zk[j] + bk)
    # 2. sums of exponentials (one SIMD loop), then the target terms
    for k in range(K):
        bk = b[k]
        zk = Z[k * R + r0: k * R + r0 + G]
        for j in range(G):
            ssum[j] += exp_nonpositive(zk[j] + bk - mx[j])
    if use_labels:
        cwsum = float(K)
        if cw is not None:
            cwsum = 0.0
            for k in range(K):
                cwsum += cw[k]
        if eps > 0.0:  # the smoothing's share: eps / K sum_k cw_k (z_ik - mx_i)
            for k in range(K):
                ck = cw[k] if cw is not None else 1.0
                if ck != 0.0:
                    bk = b[k]
                    base = k * R + r0
                    for j in range(G):
                        tz[j] += ck * (Z[base + j] + bk - mx[j])
        for j in range(G):
            y = labels[rows[j]]
            ly[j] = y
            c = (1.0 - eps) * (cw[y] if cw is not None else 1.0)
            cy[j] = c
            zy = Z[y * R + r0 + j] + b[y] - mx[j]
            tz[j] = (c * zy if c != 0.0 else 0.0) + eps * inv_k * tz[j]
            tsum[j] = c + eps * inv_k * cwsum
    else:
        for k in range(K):
            bk = b[k]
            base = k * R + r0
            ck = cw[k] if cw is not None else 1.0
            for j in range(G):
                t = ck * ((1.0 - eps) * T[rows[j], k] + eps * inv_k)
                tz[j] += t * (Z[base + j] + bk - mx[j]) if t != 0.0 else 0.0
                tsum[j] += t
    # per sample: the loss and the scale of its probabilities
    loss = 0.0
    for j in range(G):
        log_s = math.log(ssum[j])
        li = tsum[j] * log_s - tz[j]
        if zl is not None:
            lse = mx[j] + log_s
            li += zl * lse * lse
            tsum[j] += 2.0 * zl * lse  # the scale of p_i in the gradient
        li = wr[j] * li
        if lout is not None:
            lout[rows[j]] = li
        loss += li
        tsum[j] = wr[j] * tsum[j] / ssum[j]
    # 3. the logit gradient over the logits, and its sums over the group
    for k in range(K):
        bk = b[k]
        zk = Z[k * R + r0: k * R + r0 + G]
        ck = cw[k] if cw is not None else 1.0
        off = eps * inv_k * ck
        if use_labels:
            for j in range(G):
                t = off + (cy[j] if ly[j] == k else 0.0)
                tmp[j] = tsum[j] * exp_nonpositive(zk[j] + bk - mx[j]) - wr[j] * t
        else:
            for j in range(G):
                t = ck * ((1.0 - eps) * T[rows[j], k] + eps * inv_k)
                tmp[j] = tsum[j] * exp_nonpositive(zk[j] + bk - mx[j]) - wr[j] * t
        acc = 0.0
        for j in range(G):
            acc += tmp[j]
        gb[k] += acc
        for j in range(G):
            zk[j] = tmp[j]
    return loss
