"""The index-loop kernel on CSR X: the delta_kj derivation over the non-zeros.

As :mod:`fastsoftmax._indexloop` (see there for the derivation): for each
sample, z_ij = sum over its non-zeros (l, x_il) of W_jl x_il, plus b_j;
c_ij = sum_k t_ik (p_ij - delta_kj) with an explicit Kronecker delta; then
every non-zero adds w_i c_ij x_il to dW[j, l].  Duplicate entries of a row
simply add twice, which is the sum SciPy gives them.

It favours clarity over speed and memory: its per-chunk slabs are dense,
``nchunks * (K * n + 5 * K) * 8`` bytes of peak extra memory, like the dense
index-loop kernel (the fused sparse kernel bounds this).  Deterministic for
a given ``nchunks``.  Compiled variants: one per (data dtype, index dtype).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._accumulate import allocate, combine
from ._jit import parallel_kernel
from ._sample import add_sample_loss, sample_hessian_coef, sample_softmax, sparse_logits


@parallel_kernel
def sparse_indexloop_sums(data, indices, indptr, W, b, labels, T, sw, eps, nchunks):
    """Same contract as :func:`fastsoftmax._sparse_fused.sparse_fused_sums`, with W (K, n)."""
    m = indptr.shape[0] - 1
    K, n = W.shape
    inv_k = 1.0 / K
    use_labels = labels.shape[0] > 0
    weighted = sw.shape[0] > 0
    slabs, bias_slabs, losses = allocate(nchunks, K, n)
    for c in prange(nchunks):
        z = np.empty(K)
        p = np.empty(K)
        t = np.empty(K)
        coef = np.empty(K)
        loss = 0.0
        for i in range(c * m // nchunks, (c + 1) * m // nchunks):
            if use_labels and labels[i] < 0:
                continue  # dropped by ignore_index
            w = sw[i] if weighted else 1.0
            lo, hi = indptr[i], indptr[i + 1]
            # logits z_ij over the row's non-zeros; then as the dense kernel
            sparse_logits(W, b, data, indices, lo, hi, z)
            zmax, log_s = sample_softmax(z, p, t, labels, T, i, eps, inv_k)
            loss = add_sample_loss(loss, w, t, z, zmax, log_s)
            # c_ij = sum_k t_ik (p_ij - delta_kj)
            for j in range(K):
                cj = 0.0
                for k in range(K):
                    delta = 1.0 if k == j else 0.0
                    cj += t[k] * (p[j] - delta)
                coef[j] = cj
            # dW[j, l] += w_i c_ij x_il for each non-zero x_il;  db[j] += w_i c_ij
            for j in range(K):
                wc = w * coef[j]
                bias_slabs[c, j] += wc
                for q in range(lo, hi):
                    slabs[c, j, indices[q]] += wc * data[q]
        losses[c] = loss
    return combine(slabs, bias_slabs, losses)


@parallel_kernel
def sparse_hessian_indexloop_sums(data, indices, indptr, W, b, V, vb, labels, T, sw, eps,
                                  nchunks):
    """The Hessian-vector product's sums on CSR X, term by term: the contract of
    :func:`fastsoftmax._hessian_indexloop.hessian_indexloop_sums` (see there
    for the second derivative of the delta_kj form), over the non-zeros."""
    m = indptr.shape[0] - 1
    K, n = W.shape
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
            lo, hi = indptr[i], indptr[i + 1]
            # logits z_ij, their directional derivatives u_ij, probabilities p_ij
            sparse_logits(W, b, data, indices, lo, hi, z)
            sparse_logits(V, vb, data, indices, lo, hi, u)
            sample_softmax(z, p, t, labels, T, i, eps, inv_k)
            sample_hessian_coef(p, t, u, h)
            # HV[j, l] += w_i h_ij x_il for each non-zero x_il;  Hvb[j] += w_i h_ij
            for j in range(K):
                wh = w * h[j]
                bias_slabs[c, j] += wh
                for q in range(lo, hi):
                    slabs[c, j, indices[q]] += wh * data[q]
    _, G, gb = combine(slabs, bias_slabs, unused)
    return G, gb
