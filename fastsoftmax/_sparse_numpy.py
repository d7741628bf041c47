"""The NumPy method on CSR X: a scipy.sparse reference.

``X @ W.T`` gives the dense (m, K) logits, the softmax and the logit
gradient E are computed by :func:`fastsoftmax._numpy.logits_loss_and_coef`
(as for dense X), and the gradient is ``(X^T E)^T``, a sparse-times-dense product.  Its peak extra memory is about
``3 * m * K * itemsize`` bytes (plus a copy of the kept rows of X when
``ignore_index`` drops samples, and whatever SciPy's products allocate).
"""

from __future__ import annotations

import numpy as np

from ._numpy import logits_loss_and_coef
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
    Z = np.asarray(Xs @ W.T)
    loss, E, gb = logits_loss_and_coef(Z, b, labels, T, sw, eps)
    G = np.asarray(Xs.T @ E).T
    return loss, G, gb
