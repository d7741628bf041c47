"""A slow, obviously-correct float64 oracle for the Hessian, one sample at a time.

It shares no code with the package (nor with tests/naive.py): probabilities
come from SciPy's softmax, and every sample's Hessian block is written out as
the Kronecker product of its logit Hessian s_i (diag p_i - p_i p_i^T) with
x~_i x~_i^T, where x~_i = (x_i, 1) when there is an intercept.  The
coefficient vector is theta = (W[0, :], b[0], W[1, :], b[1], ...) with an
intercept and W.ravel() without, i.e. one row of (K, n~) per class.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax


def _smoothed_row(y, i, K, eps, ignore_index):
    """Target row of sample i after label smoothing, or None when it is ignored."""
    if y.ndim == 2:
        row = np.array(y[i], dtype=np.float64)
    else:
        if ignore_index is not None and y[i] == ignore_index:
            return None
        row = np.zeros(K)
        row[int(y[i])] = 1.0
    return (1.0 - eps) * row + eps / K


def naive_hessian(W, X, y, *, b=None, sample_weight=None, l2=0.0, label_smoothing=0.0,
                  ignore_index=None, reduction="mean", return_scale=False):
    """The full Hessian (K n~, K n~) in the theta layout described above.

    With ``return_scale`` also the entrywise sum of the absolute values of
    the terms each entry adds up.
    """
    W = np.asarray(W, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    K, n = W.shape
    has_b = b is not None
    bias = np.asarray(b, dtype=np.float64) if has_b else np.zeros(K)
    nt = n + int(has_b)
    H = np.zeros((K * nt, K * nt))
    A = np.zeros((K * nt, K * nt))
    total = 0.0
    for i in range(X.shape[0]):
        t = _smoothed_row(y, i, K, label_smoothing, ignore_index)
        if t is None:
            continue
        w = 1.0 if sample_weight is None else float(sample_weight[i])
        total += w
        p = softmax(W @ X[i] + bias)
        logit_hessian = t.sum() * (np.diag(p) - np.outer(p, p))
        xt = np.append(X[i], 1.0) if has_b else X[i]
        block = np.kron(logit_hessian, np.outer(xt, xt))
        H += w * block
        A += w * t.sum() * np.kron(np.diag(p) + np.outer(p, p), np.abs(np.outer(xt, xt)))
    denom = total if reduction == "mean" else 1.0
    H /= denom
    A /= denom
    penalty = np.zeros((K, nt))
    penalty[:, :n] = l2
    H += np.diag(penalty.ravel())
    A += np.diag(penalty.ravel())
    return (H, A) if return_scale else H


def naive_hessian_product(W, X, y, V, *, b=None, vb=None, sample_weight=None, l2=0.0,
                          label_smoothing=0.0, ignore_index=None, reduction="mean",
                          return_scales=False):
    """``HV`` (K, n), or ``(HV, Hvb)`` with an intercept, as a full-Hessian product.

    With ``return_scales`` also, for each result, the sum of the absolute
    values of the terms its entries add up (|H| times |direction|).
    """
    K, n = np.shape(W)
    has_b = b is not None
    H, A = naive_hessian(W, X, y, b=b, sample_weight=sample_weight, l2=l2,
                         label_smoothing=label_smoothing, ignore_index=ignore_index,
                         reduction=reduction, return_scale=True)
    V = np.asarray(V, dtype=np.float64)
    if has_b:
        d = np.zeros(K) if vb is None else np.asarray(vb, dtype=np.float64)
        theta = np.column_stack([V, d]).ravel()
    else:
        theta = V.ravel()
    nt = n + int(has_b)
    out = (H @ theta).reshape(K, nt)
    scale = (A @ np.abs(theta)).reshape(K, nt)
    res = (out[:, :n], out[:, n]) if has_b else out
    scales = (scale[:, :n], scale[:, n]) if has_b else scale
    return (res, scales) if return_scales else res
