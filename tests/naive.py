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


def naive_loss_and_grad(W, X, y, *, b=None, sample_weight=None, l2=0.0,
                        label_smoothing=0.0, ignore_index=None, reduction="mean",
                        return_scales=False, logit_rounding=False):
    """The loss and gradients; with ``return_scales`` also, for each of them,
    the sum of the absolute values of the terms it adds up (the scale that
    rounding errors of any summation order are proportional to).

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
    K, n = W.shape
    eps = label_smoothing
    bias = np.zeros(K) if b is None else np.asarray(b, dtype=np.float64)
    loss, dW, db, total = 0.0, np.zeros((K, n)), np.zeros(K), 0.0
    s_loss, s_dW, s_db = 0.0, np.zeros((K, n)), np.zeros(K)
    r_loss, r_dW, r_db = 0.0, np.zeros((K, n)), np.zeros(K)
    for i in range(X.shape[0]):
        t = _target(y, i, K, eps, ignore_index)
        if t is None:
            continue
        w = 1.0 if sample_weight is None else float(sample_weight[i])
        z = W @ X[i] + bias
        lse = logsumexp(z)
        p = np.exp(z - lse)
        loss += w * _dot0(t, lse - z)
        g = w * (t.sum() * p - t)
        dW += np.outer(g, X[i])
        db += g
        # |lse - z| per class, plus s_i * 1: log-sum-exp takes the log of a sum
        # that is at least 1 (the largest term is exp(0)), so it is rounded
        # on the scale of 1 whatever the size of the loss
        s_loss += w * (_dot0(t, np.abs(lse - z)) + t.sum())
        s_dW += np.outer(w * (t.sum() * p + t), np.abs(X[i]))
        s_db += w * (t.sum() * p + t)
        if logit_rounding:
            a = np.abs(W) @ np.abs(X[i]) + np.abs(bias)
            a = np.max(a[np.isfinite(z)], initial=0.0)  # a masked (-inf) class has p = 0
            r_loss += 2.0 * w * t.sum() * a
            r_dW += np.outer(2.0 * w * t.sum() * p * a, np.abs(X[i]))
            r_db += 2.0 * w * t.sum() * p * a
        total += w
    denom = total if reduction == "mean" else 1.0
    loss = loss / denom + 0.5 * l2 * np.sum(W * W)
    dW = dW / denom + l2 * W
    db = db / denom
    out = (loss, dW) if b is None else (loss, dW, db)
    if not return_scales:
        return out
    scales = (s_loss / denom + 0.5 * l2 * np.sum(W * W), s_dW / denom + l2 * np.abs(W), s_db / denom)
    if logit_rounding:
        return out, scales[:len(out)], (r_loss / denom, r_dW / denom, r_db / denom)[:len(out)]
    return out, scales[:len(out)]


def naive_logits_loss_and_grad(Z, y, *, sample_weight=None, label_smoothing=0.0,
                               ignore_index=None, reduction="mean", return_scales=False):
    """Loss and dZ of cross-entropy on logits Z (m, K), one sample at a time;
    with ``return_scales`` also the rounding scales of the loss and of each
    entry of dZ, as in :func:`naive_loss_and_grad`."""
    Z = np.asarray(Z, dtype=np.float64)
    y = np.asarray(y)
    m, K = Z.shape
    eps = label_smoothing
    loss, dZ, total = 0.0, np.zeros((m, K)), 0.0
    s_loss, s_dZ = 0.0, np.zeros((m, K))
    for i in range(m):
        t = _target(y, i, K, eps, ignore_index)
        if t is None:
            continue
        w = 1.0 if sample_weight is None else float(sample_weight[i])
        lse = logsumexp(Z[i])
        p = np.exp(Z[i] - lse)
        loss += w * _dot0(t, lse - Z[i])
        dZ[i] = w * (t.sum() * p - t)
        s_loss += w * (_dot0(t, np.abs(lse - Z[i])) + t.sum())
        s_dZ[i] = w * (t.sum() * p + t)
        total += w
    denom = total if reduction == "mean" else 1.0
    if return_scales:
        return (loss / denom, dZ / denom), (s_loss / denom, s_dZ / denom)
    return loss / denom, dZ / denom


def naive_linear_cross_entropy(X, W, y, *, b=None, return_scales=False, logit_rounding=False,
                               **options):
    """``(loss, dX, dW[, db])`` of a linear layer and cross-entropy, one sample
    at a time: :func:`naive_loss_and_grad` for the loss, dW and db, and
    dX[i] = (w_i / D) (s_i p_i - t_i)^T W; with ``return_scales`` also the
    rounding scales (for dX[i, l]: (w_i / D) sum_k (s_i p_ik + t_ik) |W_kl|),
    and with ``logit_rounding`` the logit-rounding scales as well (dX[i, l]:
    (w_i / D) sum_k 2 s_i p_ik a_i |W_kl|)."""
    W = np.asarray(W, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    out, scales, *rounding = naive_loss_and_grad(W, X, y, b=b, return_scales=True,
                                                 logit_rounding=logit_rounding, **options)
    K = W.shape[0]
    eps = options.get("label_smoothing", 0.0)
    sw = options.get("sample_weight")
    bias = np.zeros(K) if b is None else np.asarray(b, dtype=np.float64)
    dX, s_dX, r_dX, total = np.zeros(X.shape), np.zeros(X.shape), np.zeros(X.shape), 0.0
    for i in range(X.shape[0]):
        t = _target(y, i, K, eps, options.get("ignore_index"))
        if t is None:
            continue
        w = 1.0 if sw is None else float(sw[i])
        z = W @ X[i] + bias
        p = np.exp(z - logsumexp(z))
        dX[i] = (w * (t.sum() * p - t)) @ W
        s_dX[i] = (w * (t.sum() * p + t)) @ np.abs(W)
        if logit_rounding:
            a = np.abs(W) @ np.abs(X[i]) + np.abs(bias)
            a = np.max(a[np.isfinite(z)], initial=0.0)
            r_dX[i] = (2.0 * w * t.sum() * p * a) @ np.abs(W)
        total += w
    denom = total if options.get("reduction", "mean") == "mean" else 1.0
    out = (out[0], dX / denom) + tuple(out[1:])
    if not return_scales:
        return out
    scales = (scales[0], s_dX / denom) + tuple(scales[1:])
    if logit_rounding:
        return out, scales, (rounding[0][0], r_dX / denom) + tuple(rounding[0][1:])
    return out, scales
