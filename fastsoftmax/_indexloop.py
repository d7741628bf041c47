"""The index-loop kernel: the delta_kj derivation written out term by term.

For sample i with logits z_ij = sum_l W_jl x_il + b_j, probabilities
p_ij = exp(z_ij - lse_i) and targets t_ik, the derivative of the sample's loss
-sum_k t_ik log p_ik with respect to W_jl is

    sum_k t_ik (p_ij - delta_kj) x_il,

because d(log p_ik)/d(W_jl) = (delta_kj - p_ij) x_il.  This kernel evaluates the
coefficient c_ij = sum_k t_ik (p_ij - delta_kj) literally, as a loop over k
with a Kronecker delta, and then adds w_i c_ij x_il to dW[j, l].  The sum
collapses to p_ij sum_k t_ik - t_ij; that is p_ij - t_ij only when the target
row sums to one (one-hot or probability targets).  Keeping the general form
is what lets arbitrary non-negative target rows work.

Every reduction loop below only reads memory: a loop that both stores and
reduces may be vectorised behind a run-time aliasing check, and then the
addresses of scratch buffers would decide the summation order (and so the
last bits of the result).

The cost is O(m (n K + K^2)) and the kernel favours clarity over speed.  It
splits the rows into ``nchunks`` chunks with their own gradient slabs, like
the fused kernel, and so is deterministic for a given ``nchunks``.
Peak extra memory: ``nchunks * (K * n + 5 * K) * 8`` bytes.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._accumulate import allocate, combine
from ._jit import parallel_kernel
from ._sample import add_sample_loss, dense_logits, sample_softmax, soft_cap


@parallel_kernel
def indexloop_sums(X, W, b, labels, T, sw, eps, nchunks, dX, cw, zl, cap, lout):
    """Same contract as :func:`fastsoftmax._fused.fused_sums`.

    The input gradient follows from the same coefficients: z_ij depends on
    x_il through W_jl, so d(loss_i)/d(x_il) = sum_j c_ij W_jl.

    The options (each None when unused) enter term by term as well:

    * class weights ``cw``: the targets become ``cw_k t_ik``;
    * z-loss ``zl``: the term ``zl lse_i^2`` adds ``2 zl lse_i d(lse_i)/dz_ij
      = 2 zl lse_i p_ij`` to c_ij;
    * soft-cap ``cap``: the loss sees ``u_ij = cap tanh(z_ij / cap)``, so
      every derivative with respect to z_ij carries the factor
      ``du_ij/dz_ij = 1 - tanh^2(z_ij / cap)``;
    * ``lout``: each kept sample's weighted loss is written to ``lout[i]``.
    """
    m, n = X.shape
    K = W.shape[0]
    inv_k = 1.0 / K
    use_labels = labels.shape[0] > 0
    weighted = sw.shape[0] > 0
    slabs, bias_slabs, losses = allocate(nchunks, K, n)
    for c in prange(nchunks):
        z = np.empty(K)
        p = np.empty(K)
        t = np.empty(K)
        coef = np.empty(K)
        dcap = np.empty(K)
        loss = 0.0
        for i in range(c * m // nchunks, (c + 1) * m // nchunks):
            if use_labels and labels[i] < 0:
                continue  # dropped by ignore_index
            w = sw[i] if weighted else 1.0
            # logits z_ij; log-sum-exp, probabilities p_ij and targets t_ik;
            # the loss -sum_k t_ik log p_ik
            dense_logits(W, b, X, i, z)
            if cap is not None:
                soft_cap(z, cap, dcap)
            zmax, log_s = sample_softmax(z, p, t, labels, T, i, eps, inv_k)
            if cw is not None:
                for k in range(K):
                    t[k] = cw[k] * t[k]
            if zl is not None or lout is not None:
                li = add_sample_loss(0.0, w, t, z, zmax, log_s)
                if zl is not None:
                    lse = zmax + log_s
                    li += w * zl * lse * lse
                if lout is not None:
                    lout[i] = li
                loss += li
            else:
                loss = add_sample_loss(loss, w, t, z, zmax, log_s)
            # c_ij = sum_k t_ik (p_ij - delta_kj)
            for j in range(K):
                cj = 0.0
                for k in range(K):
                    delta = 1.0 if k == j else 0.0
                    cj += t[k] * (p[j] - delta)
                coef[j] = cj
            if zl is not None:  # + 2 zl lse_i p_ij
                lse = zmax + log_s
                for j in range(K):
                    coef[j] += 2.0 * zl * lse * p[j]
            if cap is not None:  # times du_ij/dz_ij
                for j in range(K):
                    coef[j] = coef[j] * dcap[j]
            # dW[j, l] += w_i c_ij x_il  and  db[j] += w_i c_ij
            for j in range(K):
                wc = w * coef[j]
                bias_slabs[c, j] += wc
                for l in range(n):
                    slabs[c, j, l] += wc * X[i, l]
            # dX[i, l] = sum_j w_i c_ij W_jl  (row i belongs to this chunk alone)
            if dX is not None:
                for l in range(n):
                    acc = 0.0
                    for j in range(K):
                        acc += w * coef[j] * W[j, l]
                    dX[i, l] = acc
        losses[c] = loss
    return combine(slabs, bias_slabs, losses)
