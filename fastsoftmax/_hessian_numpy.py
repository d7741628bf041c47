"""The vectorised NumPy Hessian-vector product: the baseline and the reference.

:func:`numpy_curvature` computes, once per point (W, b), the probabilities
P (m, K) of the kept samples and the per-sample factors ``w_i s_i``; every
product then costs one GEMM for the direction's logits, a few (m, K)
elementwise passes and one GEMM for ``D^T X``.  Peak extra memory: the cached
P, ``m * K * itemsize`` bytes, held as long as the product is in use, plus
about ``3 * m * K * itemsize`` bytes during a product (and a copy of the kept
rows of X when ``ignore_index`` drops samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._sparse import CSR
from ._validation import Problem


@dataclass(frozen=True)
class Curvature:
    """What the products at one point need: kept rows X (m', n) (a
    ``scipy.sparse`` CSR matrix for sparse X), their
    probabilities P (m', K) in the working dtype and ``ws`` (m',) float64,
    the factors ``w_i s_i`` (weight times target sum)."""

    X: np.ndarray
    P: np.ndarray
    ws: np.ndarray


def numpy_curvature(p: Problem) -> Curvature:
    """The probabilities and factors of the kept samples at the problem's (W, b)."""
    X, labels, T, sw = p.X, p.labels, p.T, p.sw
    if isinstance(X, CSR):
        X = X.to_scipy()  # a scipy.sparse reference: the same products below
    use_labels = labels.shape[0] > 0
    if use_labels and p.n_ignored:
        keep = labels >= 0
        X = X[keep]
        sw = sw[keep] if sw.shape[0] else sw
    m = X.shape[0]
    K = p.W.shape[0]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        Z = np.asarray(X @ p.W.T)
        Z += p.b
        Z -= Z.max(axis=1, keepdims=True)
        P = np.exp(Z)
        P /= P.sum(axis=1, dtype=np.float64)[:, None].astype(P.dtype)
    if use_labels:
        s = np.ones(m)  # smoothed one-hot rows sum to one
    else:
        s = ((1.0 - p.eps) * T.astype(np.float64) + p.eps / K).sum(axis=1)
    ws = s * sw if sw.shape[0] else s
    return Curvature(X=X, P=P, ws=ws)


def numpy_hessian_sums(c: Curvature, V: np.ndarray, vb: np.ndarray):
    """Same contract as the compiled kernels: ``(HV, Hvb)`` sums, float64.

    NaN and infinity propagate silently, as in the compiled kernels.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        U = np.asarray(c.X @ V.T)
        U += vb
        PU = c.P * U
        pu = PU.sum(axis=1, keepdims=True)
        # p_ik (u_ik - <p_i, u_i>), with a class of probability 0 adding nothing
        D = np.where(c.P != 0, PU - c.P * pu, 0).astype(c.P.dtype, copy=False)
        D *= c.ws.astype(D.dtype, copy=False)[:, None]
        G = D.T @ c.X if isinstance(c.X, np.ndarray) else (c.X.T @ D).T
        gb = D.sum(axis=0, dtype=np.float64)
    return np.asarray(G, dtype=np.float64), gb
