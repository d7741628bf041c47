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

The Hessian-vector product is the second derivative of the same form.  Only
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

and adds w_i h_ij x_il to HV[j, l] and w_i h_ij to Hvb[j]: the gradient's
step with h_ij in place of c_ij.  The kernel evaluates s_i as the loop over k
of the smoothed targets t_ik and h_ij as the literal double loop with a
Kronecker delta.

X is dense or CSR (see :mod:`fastsoftmax._sample`): on CSR X, z_ij sums over
the row's non-zeros (l, x_il) and every non-zero adds w_i c_ij x_il to
dW[j, l]; duplicate entries of a row simply add twice, which is the sum SciPy
gives them.

Every reduction loop below only reads memory: a loop that both stores and
reduces may be vectorised behind a run-time aliasing check, and then the
addresses of scratch buffers would decide the summation order (and so the
last bits of the result).

The cost is O(m (n K + K^2)) (O(m (2 n K + K^2)) for the product, n the
row's non-zeros on CSR X) and the kernel favours clarity over speed and
memory.  It splits the rows into ``nchunks`` chunks with their own dense
gradient slabs, like the fused kernel, and so is deterministic for a given
``nchunks``.  Peak extra memory: ``nchunks * (K * n + 6 * K) * 8`` bytes.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._accumulate import allocate, combine
from ._jit import parallel_kernel
from ._sample import (add_row, add_sample_loss, delta_coef, kept_weight, row_count, row_logits,
                      sample_hessian_coef, sample_softmax, soft_cap)


@parallel_kernel
def indexloop_sums(X, W, b, V, vb, labels, T, sw, eps, nchunks, dX, cw, zl, cap, lout):
    """Same contract as :func:`fastsoftmax._fused.fused_sums`, or along a direction.

    X is (m, n) dense or a CSR tuple ``(data, indices, indptr)`` (see
    :mod:`fastsoftmax._sample`), W (K, n).  ``V`` None: the loss and
    gradient sums ``(loss_sum, G, gb)``.  ``V`` (K, n) and ``vb`` (K,), of
    W's dtype: the Hessian-vector product's sums ``(0.0, HV, Hvb)`` (the
    contract of :func:`fastsoftmax._hessian_fused.hessian_sums`); the options
    below must then be None.  numba compiles one of the two per call site.

    The input gradient follows from the same coefficients: z_ij depends on
    x_il through W_jl, so d(loss_i)/d(x_il) = sum_j c_ij W_jl.

    The options (each None when unused; dense X only) enter term by term as well:

    * class weights ``cw``: the targets become ``cw_k t_ik``;
    * z-loss ``zl``: the term ``zl lse_i^2`` adds ``2 zl lse_i d(lse_i)/dz_ij
      = 2 zl lse_i p_ij`` to c_ij;
    * soft-cap ``cap``: the loss sees ``u_ij = cap tanh(z_ij / cap)``, so
      every derivative with respect to z_ij carries the factor
      ``du_ij/dz_ij = 1 - tanh^2(z_ij / cap)``;
    * ``lout``: each kept sample's weighted loss is written to ``lout[i]``.
    """
    m = row_count(X)
    K, n = W.shape
    inv_k = 1.0 / K
    slabs, bias_slabs, losses = allocate(nchunks, K, n)
    for c in prange(nchunks):
        z = np.empty(K)
        p = np.empty(K)
        t = np.empty(K)
        coef = np.empty(K)  # c_ij, or h_ij for the product
        dz = np.empty(K)  # du_ij/dz_ij of the soft-cap, or the direction's u_ij
        loss = 0.0
        for i in range(c * m // nchunks, (c + 1) * m // nchunks):
            w = kept_weight(labels, sw, i)
            if w < 0.0:
                continue  # dropped by ignore_index
            row_logits(W, b, X, i, z)  # logits z_ij
            if V is not None:
                # directional derivatives u_ij, probabilities p_ij, then
                # s_i = sum_k t_ik and h_ij = sum_j' s_i p_ij (delta_jj' - p_ij') u_ij'
                row_logits(V, vb, X, i, dz)
                sample_softmax(z, p, t, labels, T, i, eps, inv_k)
                sample_hessian_coef(p, t, dz, coef)
            else:
                # log-sum-exp, probabilities p_ij and targets t_ik; the loss
                # -sum_k t_ik log p_ik
                if cap is not None:
                    soft_cap(z, cap, dz)
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
                delta_coef(t, p, coef)
                if zl is not None:  # + 2 zl lse_i p_ij
                    lse = zmax + log_s
                    for j in range(K):
                        coef[j] += 2.0 * zl * lse * p[j]
                if cap is not None:  # times du_ij/dz_ij
                    for j in range(K):
                        coef[j] = coef[j] * dz[j]
            # dW[j, l] += w_i c_ij x_il  and  db[j] += w_i c_ij (h_ij for the product)
            add_row(slabs[c], bias_slabs[c], w, coef, X, i)
            # dX[i, l] = sum_j w_i c_ij W_jl  (row i belongs to this chunk alone)
            if dX is not None:
                for l in range(n):
                    acc = 0.0
                    for j in range(K):
                        acc += w * coef[j] * W[j, l]
                    dX[i, l] = acc
        losses[c] = loss
    return combine(slabs, bias_slabs, losses)
