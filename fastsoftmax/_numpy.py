"""The vectorised NumPy method: the baseline and the reference.

It is written to be a fair baseline: one matrix product for the logits, the
row maximum subtracted in place, one pass of exponentials, one matrix product
for the gradient.  It holds several (m, K) arrays of the working dtype, so its
peak extra memory is about ``3 * m * K * itemsize`` bytes (plus a copy of the
kept rows of X when ``ignore_index`` drops samples, and for float32 data the
(m, K) float64 coefficients: they are formed in float64, as the compiled
kernels form them).
"""

from __future__ import annotations

import numpy as np

from ._validation import Problem


def numpy_sums(p: Problem, dX: np.ndarray | None = None, losses: np.ndarray | None = None
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """Same contract as the compiled kernels: ``(loss_sum, G, gb)``, and the
    unnormalised input gradient written into ``dX`` (m, n) when it is given
    (rows dropped by ignore_index are left as they are); each sample's
    weighted loss written into ``losses`` (m,) float64 when it is given.

    NaN and infinity in X or W propagate to the result silently, as they do
    in the compiled kernels (no RuntimeWarning).
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return _numpy_sums(p, dX, losses)


def _numpy_sums(p: Problem, dX: np.ndarray | None,
                losses: np.ndarray | None) -> tuple[float, np.ndarray, np.ndarray]:
    X, labels, T, sw = p.X, p.labels, p.T, p.sw
    use_labels = labels.shape[0] > 0
    keep = None
    if use_labels and p.n_ignored:
        keep = labels >= 0
        X, labels = X[keep], labels[keep]
        sw = sw[keep] if sw.shape[0] else sw
    Z = X @ p.W.T
    if p.cw is None and p.zl is None and p.cap is None and losses is None:
        loss, E, gb = logits_loss_and_coef(Z, p.b, labels, T, sw, p.eps)
    else:
        loss, E, gb, row_loss = options_loss_and_coef(Z, p.b, labels, T, sw, p.eps, p.cw,
                                                      p.zl, p.cap)
        if losses is not None:
            if keep is None:
                losses[:] = row_loss
            else:
                losses[keep] = row_loss
    G = E.T @ X
    if dX is not None:
        if keep is None:
            np.matmul(E, p.W, out=dX)
        else:
            dX[keep] = E @ p.W
    return loss, G, gb


def logits_loss_and_coef(Z: np.ndarray, b: np.ndarray, labels: np.ndarray, T: np.ndarray,
                         sw: np.ndarray, eps: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Softmax, loss and weighted logit gradient from the (m, K) logits without intercept.

    ``Z`` (m, K), in the working dtype, holds ``X W^T`` for the kept rows; it
    is overwritten.  ``b`` (K,) is the intercept; ``labels`` (m,) int64 or
    empty, ``T`` (m, K) or empty, ``sw`` (m,) or empty and ``eps`` are the
    kept rows' targets and weights in the kernels' encoding (see
    :mod:`fastsoftmax._rowmath`).  Returns ``(loss_sum, E, gb)``: the weighted
    loss sum (float), ``E`` (m, K) working dtype with rows
    ``w_i (s_i p_i - t_i)``, and ``gb = sum_i E_i`` (K,) float64.  The caller
    forms ``G = E^T X``.
    """
    m, K = Z.shape
    use_labels = labels.shape[0] > 0
    Z += b
    Z -= Z.max(axis=1, keepdims=True)  # Z now holds z - max <= 0
    E = np.exp(Z)
    # The row sums are at least 1 (the maximum contributes exp(0)); in float32
    # 1 + 1e-11 would round to 1 and lose a tiny loss altogether, so they are
    # summed, and their logarithms taken, in float64.
    s = E.sum(axis=1, dtype=np.float64)
    log_s = np.log(s)
    rows = np.arange(m)
    # The coefficients w_i (s_i p_i - t_i) are formed in float64, as the
    # compiled kernels form them: in float32, p_iy rounds to 1 when the other
    # classes' share is below 6e-8, and p_iy - 1 to 0 (in place for float64)
    wide = E.dtype != np.float64
    if use_labels:
        # t = (1 - eps) onehot + eps / K, which sums to one
        row_loss = log_s - (1.0 - eps) * Z[rows, labels]
        if eps:
            row_loss -= (eps / K) * Z.sum(axis=1)
        C = E / s[:, None] if wide else np.divide(E, s[:, None], out=E)  # p
        C[rows, labels] -= 1.0 - eps
        if eps:
            C -= eps / K
    else:
        Tm = T if not eps else (1.0 - eps) * T + eps / K
        tsum = Tm.sum(axis=1)
        # zero targets add nothing, even against a -inf logit (a masked class)
        row_loss = tsum * log_s - np.where(Tm != 0, Tm * Z, 0).sum(axis=1)
        scale = (tsum / s)[:, None]
        C = E * scale if wide else np.multiply(E, scale, out=E)
        C -= Tm
    if sw.shape[0]:
        C *= sw.astype(C.dtype, copy=False)[:, None]
        loss = float(np.dot(sw, row_loss.astype(np.float64)))
    else:
        loss = float(np.sum(row_loss, dtype=np.float64))
    gb = C.sum(axis=0, dtype=np.float64)
    if C is not E:  # rounded back into E's memory: no fourth (m, K) array
        np.copyto(E, C)
    return loss, E, gb


def options_loss_and_coef(Z: np.ndarray, b: np.ndarray, labels: np.ndarray, T: np.ndarray,
                          sw: np.ndarray, eps: float, cw: np.ndarray | None, zl: float | None,
                          cap: float | None) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`logits_loss_and_coef` with the options of issue 10, in the general form.

    The coefficients ``c_ik = cw_k t_ik`` (class weights ``cw`` (K,) or None)
    are formed as an (m, K) float64 array; the loss of sample i is
    ``sum_k c_ik (lse_i - u_ik) + zl lse_i^2`` for the (soft-capped, when
    ``cap`` is given) logits ``u_i``, and its logit gradient
    ``(s_i + 2 zl lse_i) p_i - c_i`` (``s_i = sum_k c_ik``), times
    ``1 - tanh^2(z_ik / cap) = 1 / cosh^2(z_ik / cap)`` under the soft-cap.
    Returns ``(loss_sum, E, gb, row_loss)``: as :func:`logits_loss_and_coef`,
    plus ``row_loss`` (m,) float64, each sample's weighted loss.
    """
    m, K = Z.shape
    U = Z.astype(np.float64) + b
    if cap is not None:
        cosh = np.cosh(U / cap)  # overflows to inf (derivative 0) for large |z| / cap
        U = cap * np.tanh(U / cap)
    mx = U.max(axis=1, keepdims=True)
    U -= mx
    P = np.exp(U)
    s = P.sum(axis=1)
    log_s = np.log(s)
    P /= s[:, None]
    if labels.shape[0] > 0:
        C = np.full((m, K), eps / K)
        C[np.arange(m), labels] += 1.0 - eps
    else:
        C = (1.0 - eps) * T.astype(np.float64) + eps / K
    if cw is not None:
        C *= cw
    csum = C.sum(axis=1)
    # zero coefficients add nothing, even against a -inf logit
    row_loss = csum * log_s - np.where(C != 0, C * U, 0).sum(axis=1)
    scale = csum
    if zl is not None:
        lse = mx[:, 0] + log_s
        row_loss += zl * lse * lse
        scale = csum + 2.0 * zl * lse
    E = P * scale[:, None] - C
    if cap is not None:  # 1 - tanh^2 = 1 / cosh^2, without cancellation
        E /= cosh * cosh
    if sw.shape[0]:
        E *= sw[:, None]
        row_loss = sw * row_loss
    gb = E.sum(axis=0)
    loss = float(np.sum(row_loss))
    return loss, E.astype(Z.dtype, copy=False), gb, row_loss
