"""Per-sample numerics shared by the compiled kernels.

Targets reach the kernels in one of two encodings, so that no kernel is
copied per option:

* class indices: ``labels`` is an int64 array of length m (a negative entry
  marks a sample dropped by ``ignore_index``) and ``T`` is an empty (0, K)
  array;
* dense targets: ``labels`` is empty and ``T`` is the (m, K) target matrix.

Label smoothing ``eps`` turns either into ``(1 - eps) * t + eps / K``.
"""

from __future__ import annotations

import math

from ._jit import serial_kernel


@serial_kernel
def target_value(labels, T, i, k, eps, inv_k):
    """Smoothed target t_ik of sample ``i`` for class ``k`` (a float64)."""
    if labels.shape[0] > 0:
        t = eps * inv_k
        if labels[i] == k:
            t += 1.0 - eps
        return t
    return (1.0 - eps) * T[i, k] + eps * inv_k


@serial_kernel
def row_loss_and_coef(z, labels, T, i, eps, w):
    """Loss of one sample and its logit gradient, from its logits.

    ``z`` is a (K,) float64 buffer holding the sample's logits ``W x_i + b``.
    On return it holds ``w * (s_i p_i - t_i)``, the weighted gradient of the
    sample's loss with respect to its logits, where ``s_i = sum_k t_ik``.
    Returns ``w * sum_k t_ik (lse_i - z_ik)``, the weighted loss, written as
    ``sum_k t_ik (max_i - z_ik) + s_i log(sum_k exp(z_ik - max_i))`` so that no
    large logit is ever exponentiated or subtracted from another large value.
    """
    K = z.shape[0]
    inv_k = 1.0 / K
    mx = z[0]
    for k in range(1, K):
        if z[k] > mx:
            mx = z[k]
    tz = 0.0
    tsum = 0.0
    for k in range(K):
        t = target_value(labels, T, i, k, eps, inv_k)
        tz += t * (mx - z[k])
        tsum += t
    s = 0.0
    for k in range(K):
        e = math.exp(z[k] - mx)
        z[k] = e
        s += e
    scale = w * tsum / s
    for k in range(K):
        z[k] = scale * z[k] - w * target_value(labels, T, i, k, eps, inv_k)
    return w * (tz + tsum * math.log(s))
