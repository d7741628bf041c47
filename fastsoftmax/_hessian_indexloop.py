"""The index-loop Hessian-vector product: the second derivative of the delta_kj form.

The gradient of sample i's loss with respect to W_jl is (see
:mod:`fastsoftmax._indexloop`) ``sum_k t_ik (p_ij - delta_kj) x_il``.  Only
p_ij depends on the weights, and d p_ij / d W_j'l' = p_ij (delta_jj' - p_ij') x_il',
so differentiating once more gives

    d^2 J_i / (d W_jl d W_j'l') = sum_k t_ik p_ij (delta_jj' - p_ij') x_il x_il'
                                = s_i p_ij (delta_jj' - p_ij') x_il x_il',

with s_i = sum_k t_ik (the delta_kj term is a constant and drops out).  The
intercept b_j' enters exactly like a weight on a constant feature 1.  Applied
to a direction (V, vb), the sum over (j', l') first forms the logits'
directional derivative u_ij' = sum_l' V_j'l' x_il' + vb_j', then the
coefficient

    h_ij = sum_j' s_i p_ij (delta_jj' - p_ij') u_ij',

and adds w_i h_ij x_il to HV[j, l] and w_i h_ij to Hvb[j].  This kernel
evaluates s_i as the loop over k of the smoothed targets t_ik and h_ij as the
literal double loop with a Kronecker delta.

Reduction loops only read memory (see :mod:`fastsoftmax._indexloop`).  Cost
O(m (2 n K + K^2)); rows split into ``nchunks`` chunks with their own slabs,
so the result is deterministic for a given ``nchunks``.
Peak extra memory: ``nchunks * (K * n + 6 * K) * 8`` bytes.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._accumulate import allocate, combine
from ._jit import parallel_kernel
from ._sample import dense_logits, sample_hessian_coef, sample_softmax


@parallel_kernel
def hessian_indexloop_sums(X, W, b, V, vb, labels, T, sw, eps, nchunks):
    """Same contract as :func:`fastsoftmax._hessian_fused.hessian_sums`, with W
    and V (K, n) passed separately."""
    m, n = X.shape
    K = W.shape[0]
    inv_k = 1.0 / K
    use_labels = labels.shape[0] > 0
    weighted = sw.shape[0] > 0
    slabs, bias_slabs, unused = allocate(nchunks, K, n)
    for c in prange(nchunks):
        z = np.empty(K)
        p = np.empty(K)
        t = np.empty(K)
        u = np.empty(K)
        h = np.empty(K)
        for i in range(c * m // nchunks, (c + 1) * m // nchunks):
            if use_labels and labels[i] < 0:
                continue  # dropped by ignore_index
            w = sw[i] if weighted else 1.0
            # logits z_ij, their directional derivatives u_ij, probabilities p_ij
            dense_logits(W, b, X, i, z)
            dense_logits(V, vb, X, i, u)
            sample_softmax(z, p, t, labels, T, i, eps, inv_k)
            # s_i = sum_k t_ik;  h_ij = sum_j' s_i p_ij (delta_jj' - p_ij') u_ij'
            sample_hessian_coef(p, t, u, h)
            # HV[j, l] += w_i h_ij x_il  and  Hvb[j] += w_i h_ij
            for j in range(K):
                wh = w * h[j]
                bias_slabs[c, j] += wh
                for l in range(n):
                    slabs[c, j, l] += wh * X[i, l]
    _, G, gb = combine(slabs, bias_slabs, unused)
    return G, gb
