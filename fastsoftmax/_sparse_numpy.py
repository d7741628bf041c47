"""The NumPy method on CSR X: a scipy.sparse reference.

``X @ W.T`` gives the dense (m, K) logits, the softmax and the logit
gradient E are computed as in :mod:`fastsoftmax._numpy`, and the gradient is
``(X^T E)^T``, a sparse-times-dense product.  Its peak extra memory is about
``3 * m * K * itemsize`` bytes (plus a copy of the kept rows of X when
``ignore_index`` drops samples, and whatever SciPy's products allocate).
"""

from __future__ import annotations

import numpy as np

from ._sparse import CSR


def sparse_numpy_sums(X: CSR, W, b, labels, T, sw, eps: float, n_ignored: int
                      ) -> tuple[float, np.ndarray, np.ndarray]:
    """Unnormalised ``(loss_sum, G (K, n), gb (K,))``, the compiled kernels' contract.

    NaN and infinity propagate silently, as in the compiled kernels.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return _sums(X, W, b, labels, T, sw, eps, n_ignored)


def _sums(X: CSR, W, b, labels, T, sw, eps, n_ignored):
    Xs = X.to_scipy()
    use_labels = labels.shape[0] > 0
    if use_labels and n_ignored:
        keep = labels >= 0
        Xs, labels = Xs[keep], labels[keep]
        sw = sw[keep] if sw.shape[0] else sw
    m = Xs.shape[0]
    K = W.shape[0]
    Z = np.asarray(Xs @ W.T)
    Z += b
    Z -= Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    s = E.sum(axis=1, dtype=np.float64)
    log_s = np.log(s)
    rows = np.arange(m)
    if use_labels:
        row_loss = log_s - (1.0 - eps) * Z[rows, labels]
        if eps:
            row_loss -= (eps / K) * Z.sum(axis=1)
        E /= s[:, None]
        E[rows, labels] -= 1.0 - eps
        if eps:
            E -= eps / K
    else:
        Tm = T if not eps else (1.0 - eps) * T + eps / K
        tsum = Tm.sum(axis=1)
        row_loss = tsum * log_s - np.where(Tm != 0, Tm * Z, 0).sum(axis=1)
        E *= (tsum / s)[:, None]
        E -= Tm
    if sw.shape[0]:
        E *= sw.astype(E.dtype, copy=False)[:, None]
        loss = float(np.dot(sw, row_loss.astype(np.float64)))
    else:
        loss = float(np.sum(row_loss, dtype=np.float64))
    G = np.asarray(Xs.T @ E).T
    gb = E.sum(axis=0, dtype=np.float64)
    return loss, G, gb
