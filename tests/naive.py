"""A slow, obviously-correct float64 oracle, one sample at a time.

It shares no code with the package: log-sum-exp comes from SciPy and every
option is applied in the plainest way, straight from the definitions.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def _dot0(t, v):
    """sum_k t_k v_k where a zero target adds nothing, even against an infinite v_k
    (0 log 0 = 0: a class masked by a -inf logit and not targeted costs nothing)."""
    return float(np.sum(np.where(t != 0, t * v, 0.0)))


def _target(y, i, K, eps, ignore_index):
    """The smoothed target row of sample i, or None when it is ignored."""
    if y.ndim == 1:
        if ignore_index is not None and y[i] == ignore_index:
            return None
        t = np.zeros(K)
        t[int(y[i])] = 1.0
    else:
        t = np.asarray(y[i], dtype=np.float64)
    return (1.0 - eps) * t + eps / K


def _sample(z, t, w, class_weight, z_loss, softcap):
    """One sample's terms from its raw logits z and smoothed targets t (float64).

    Returns ``(ce, zl, g_ce, g_zl, s_ce, s_g)``: the weighted cross-entropy
    and z-loss terms, their gradients with respect to the raw logits z, and
    rounding scales of the loss and of the gradient (sums of the absolute
    values of what is added up).
    """
    c = t if class_weight is None else np.asarray(class_weight, dtype=np.float64) * t
    if softcap is None:
        u, du = z, np.ones_like(z)
    else:
        u = softcap * np.tanh(z / softcap)
        # 1 - tanh(x)^2 = 4 e^(-2|x|) / (1 + e^(-2|x|))^2, without the cancellation
        # of 1 - tanh^2 where tanh saturates
        e = np.exp(-2.0 * np.abs(z / softcap))
        du = 4.0 * e / (1.0 + e) ** 2
    lse = logsumexp(u)
    p = np.exp(u - lse)
    ce = w * _dot0(c, lse - u)
    zl = w * z_loss * lse * lse
    g_ce = w * (c.sum() * p - c) * du
    g_zl = w * 2.0 * z_loss * lse * p * du
    # |lse - u| per class, plus s_i * 1: log-sum-exp takes the log of a sum
    # that is at least 1 (the largest term is exp(0)), so it is rounded
    # on the scale of 1 whatever the size of the loss
    s_ce = w * (_dot0(c, np.abs(lse - u)) + c.sum()) + w * z_loss * lse * lse
    s_g = w * (c.sum() * p + c + 2.0 * z_loss * abs(lse) * p) * du
    return ce, zl, g_ce, g_zl, s_ce, s_g


def _denominators(y, K, sample_weight, ignore_index, class_weight, reduction):
    """``(D, Dz)``: what the cross-entropy and the z-loss sums are divided by.

    Under "mean": D is the kept samples' total of w_i cw_{y_i} for class
    indices with class weights (PyTorch), else their total weight; Dz is
    always their total weight.  1 and 1 otherwise.
    """
    if reduction != "mean":
        return 1.0, 1.0
    D = Dz = 0.0
    for i in range(y.shape[0]):
        if _target(y, i, K, 0.0, ignore_index) is None:
            continue
        w = 1.0 if sample_weight is None else float(sample_weight[i])
        Dz += w
        if y.ndim == 1 and class_weight is not None:
            D += w * float(class_weight[int(y[i])])
        else:
            D += w
    return D, Dz


def naive_loss_and_grad(W, X, y, *, b=None, sample_weight=None, l2=0.0,
                        label_smoothing=0.0, ignore_index=None, reduction="mean",
                        class_weight=None, z_loss=0.0, softcap=None,
                        return_scales=False, logit_rounding=False):
    """The loss and gradients; with ``return_scales`` also, for each of them,
    the sum of the absolute values of the terms it adds up (the scale that
    rounding errors of any summation order are proportional to).

    The options of issue 10, straight from their definitions: targets
    ``cw_k t_ik``; z-loss ``w_i z_loss lse_i^2`` divided by the kept sample
    weight under "mean"; soft-capped logits ``softcap tanh(z / softcap)``;
    ``reduction="none"``: the loss is the (m,) array of each sample's
    weighted loss (0 when ignored), the gradients those of their sum.

    With ``logit_rounding`` (which needs ``return_scales``) a third item is
    returned: for each result, what the rounding of the logits themselves
    can do to it, in units of the logits' relative precision.  z_ik =
    sum_l W_kl x_il + b_k is only known to about u * a_ik with a_ik =
    sum_l |W_kl x_il| + |b_k|, and an error of size a_i = max_k a_ik (over
    classes that are not masked by a -inf logit) moves sample i's loss by up
    to 2 s_i a_i and its gradient coefficient s_i p_ij by up to
    2 s_i p_ij a_i.  It matters when logits are huge and nearly tied (the
    fuzz test's inputs); the agreement tests, on O(1) logits, leave it out.
    """
    W = np.asarray(W, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    m = X.shape[0]
    K, n = W.shape
    eps = label_smoothing
    bias = np.zeros(K) if b is None else np.asarray(b, dtype=np.float64)
    D, Dz = _denominators(y, K, sample_weight, ignore_index, class_weight, reduction)
    losses, s_losses = np.zeros(m), np.zeros(m)
    dW, db = np.zeros((K, n)), np.zeros(K)
    s_dW, s_db = np.zeros((K, n)), np.zeros(K)
    r_loss, r_dW, r_db = 0.0, np.zeros((K, n)), np.zeros(K)
    for i in range(m):
        t = _target(y, i, K, eps, ignore_index)
        if t is None:
            continue
        w = 1.0 if sample_weight is None else float(sample_weight[i])
        z = W @ X[i] + bias
        ce, zl, g_ce, g_zl, s_ce, s_g = _sample(z, t, w, class_weight, z_loss, softcap)
        losses[i] = ce / D + zl / Dz
        s_losses[i] = s_ce / min(D, Dz)
        g = g_ce / D + g_zl / Dz
        dW += np.outer(g, X[i])
        db += g
        s_dW += np.outer(s_g / min(D, Dz), np.abs(X[i]))
        s_db += s_g / min(D, Dz)
        if logit_rounding:
            c = t if class_weight is None else class_weight * t
            a = np.abs(W) @ np.abs(X[i]) + np.abs(bias)
            a = np.max(a[np.isfinite(z)], initial=0.0)  # a masked (-inf) class has p = 0
            p = np.exp(z - logsumexp(z))
            r_loss += 2.0 * w * c.sum() * a / D
            r_dW += np.outer(2.0 * w * c.sum() * p * a / D, np.abs(X[i]))
            r_db += 2.0 * w * c.sum() * p * a / D
    if reduction == "none":
        loss, s_loss = losses, s_losses
    else:
        loss = float(np.sum(losses)) + 0.5 * l2 * np.sum(W * W)
        s_loss = float(np.sum(s_losses)) + 0.5 * l2 * np.sum(W * W)
    dW = dW + l2 * W
    out = (loss, dW) if b is None else (loss, dW, db)
    if not return_scales:
        return out
    scales = (s_loss, s_dW + l2 * np.abs(W), s_db)
    if logit_rounding:
        return out, scales[:len(out)], (r_loss, r_dW, r_db)[:len(out)]
    return out, scales[:len(out)]


def naive_logits_loss_and_grad(Z, y, *, sample_weight=None, label_smoothing=0.0,
                               ignore_index=None, reduction="mean", class_weight=None,
                               z_loss=0.0, softcap=None, return_scales=False):
    """Loss and dZ of cross-entropy on logits Z (m, K), one sample at a time;
    with ``return_scales`` also the rounding scales of the loss and of each
    entry of dZ, as in :func:`naive_loss_and_grad` (same options)."""
    Z = np.asarray(Z, dtype=np.float64)
    y = np.asarray(y)
    m, K = Z.shape
    eps = label_smoothing
    D, Dz = _denominators(y, K, sample_weight, ignore_index, class_weight, reduction)
    losses, s_losses = np.zeros(m), np.zeros(m)
    dZ, s_dZ = np.zeros((m, K)), np.zeros((m, K))
    for i in range(m):
        t = _target(y, i, K, eps, ignore_index)
        if t is None:
            continue
        w = 1.0 if sample_weight is None else float(sample_weight[i])
        ce, zl, g_ce, g_zl, s_ce, s_g = _sample(Z[i], t, w, class_weight, z_loss, softcap)
        losses[i] = ce / D + zl / Dz
        s_losses[i] = s_ce / min(D, Dz)
        dZ[i] = g_ce / D + g_zl / Dz
        s_dZ[i] = s_g / min(D, Dz)
    if reduction == "none":
        loss, s_loss = losses, s_losses
    else:
        loss, s_loss = float(np.sum(losses)), float(np.sum(s_losses))
    if return_scales:
        return (loss, dZ), (s_loss, s_dZ)
    return loss, dZ


def naive_linear_cross_entropy(X, W, y, *, b=None, return_scales=False, logit_rounding=False,
                               **options):
    """``(loss, dX, dW[, db])`` of a linear layer and cross-entropy, one sample
    at a time: :func:`naive_loss_and_grad` for the loss, dW and db, and
    dX[i] = g_i^T W with g_i sample i's gradient with respect to its logits
    (``(w_i / D) (s_i p_i - t_i)`` without the options of issue 10); with
    ``return_scales`` also the rounding scales (for dX[i, l]:
    sum_k |scale of g_ik| |W_kl|), and with ``logit_rounding`` the
    logit-rounding scales as well (dX[i, l]: (w_i / D) sum_k 2 s_i p_ik a_i
    |W_kl|)."""
    W = np.asarray(W, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    out, scales, *rounding = naive_loss_and_grad(W, X, y, b=b, return_scales=True,
                                                 logit_rounding=logit_rounding, **options)
    K = W.shape[0]
    eps = options.get("label_smoothing", 0.0)
    sw = options.get("sample_weight")
    cw = options.get("class_weight")
    ignore_index = options.get("ignore_index")
    D, Dz = _denominators(y, K, sw, ignore_index, cw, options.get("reduction", "mean"))
    bias = np.zeros(K) if b is None else np.asarray(b, dtype=np.float64)
    dX, s_dX, r_dX = np.zeros(X.shape), np.zeros(X.shape), np.zeros(X.shape)
    for i in range(X.shape[0]):
        t = _target(y, i, K, eps, ignore_index)
        if t is None:
            continue
        w = 1.0 if sw is None else float(sw[i])
        z = W @ X[i] + bias
        _, _, g_ce, g_zl, _, s_g = _sample(z, t, w, cw, options.get("z_loss", 0.0),
                                           options.get("softcap"))
        dX[i] = (g_ce / D + g_zl / Dz) @ W
        s_dX[i] = (s_g / min(D, Dz)) @ np.abs(W)
        if logit_rounding:
            c = t if cw is None else cw * t
            a = np.abs(W) @ np.abs(X[i]) + np.abs(bias)
            a = np.max(a[np.isfinite(z)], initial=0.0)
            p = np.exp(z - logsumexp(z))
            r_dX[i] = (2.0 * w * c.sum() * p * a / D) @ np.abs(W)
    out = (out[0], dX) + tuple(out[1:])
    if not return_scales:
        return out
    scales = (scales[0], s_dX) + tuple(scales[1:])
    if logit_rounding:
        return out, scales, (rounding[0][0], r_dX) + tuple(rounding[0][1:])
    return out, scales
