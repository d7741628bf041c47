"""A slow, obviously-correct float64 oracle, one sample at a time.

It shares no code with the package: log-sum-exp comes from SciPy and every
option is applied in the plainest way, straight from the definitions.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


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
                        return_scales=False):
    """The loss and gradients; with ``return_scales`` also, for each of them,
    the sum of the absolute values of the terms it adds up (the scale that
    rounding errors of any summation order are proportional to)."""
    W = np.asarray(W, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    K, n = W.shape
    eps = label_smoothing
    bias = np.zeros(K) if b is None else np.asarray(b, dtype=np.float64)
    loss, dW, db, total = 0.0, np.zeros((K, n)), np.zeros(K), 0.0
    s_loss, s_dW, s_db = 0.0, np.zeros((K, n)), np.zeros(K)
    for i in range(X.shape[0]):
        t = _target(y, i, K, eps, ignore_index)
        if t is None:
            continue
        w = 1.0 if sample_weight is None else float(sample_weight[i])
        z = W @ X[i] + bias
        lse = logsumexp(z)
        p = np.exp(z - lse)
        loss += w * np.sum(t * (lse - z))
        g = w * (t.sum() * p - t)
        dW += np.outer(g, X[i])
        db += g
        # |lse - z| per class, plus s_i * 1: log-sum-exp takes the log of a sum
        # that is at least 1 (the largest term is exp(0)), so it is rounded
        # on the scale of 1 whatever the size of the loss
        s_loss += w * (np.sum(t * np.abs(lse - z)) + t.sum())
        s_dW += np.outer(w * (t.sum() * p + t), np.abs(X[i]))
        s_db += w * (t.sum() * p + t)
        total += w
    denom = total if reduction == "mean" else 1.0
    loss = loss / denom + 0.5 * l2 * np.sum(W * W)
    dW = dW / denom + l2 * W
    db = db / denom
    out = (loss, dW) if b is None else (loss, dW, db)
    if not return_scales:
        return out
    scales = (s_loss / denom + 0.5 * l2 * np.sum(W * W), s_dW / denom + l2 * np.abs(W), s_db / denom)
    return out, scales[:len(out)]


def naive_logits_loss_and_grad(Z, y, *, sample_weight=None, label_smoothing=0.0,
                               ignore_index=None, reduction="mean"):
    """Loss and dZ of cross-entropy on logits Z (m, K), one sample at a time."""
    Z = np.asarray(Z, dtype=np.float64)
    y = np.asarray(y)
    m, K = Z.shape
    eps = label_smoothing
    loss, dZ, total = 0.0, np.zeros((m, K)), 0.0
    for i in range(m):
        t = _target(y, i, K, eps, ignore_index)
        if t is None:
            continue
        w = 1.0 if sample_weight is None else float(sample_weight[i])
        lse = logsumexp(Z[i])
        loss += w * np.sum(t * (lse - Z[i]))
        dZ[i] = w * (t.sum() * np.exp(Z[i] - lse) - t)
        total += w
    denom = total if reduction == "mean" else 1.0
    return loss / denom, dZ / denom
