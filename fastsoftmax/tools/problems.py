"""Random softmax-regression problems: the one generator of the tests, ``check`` and the benchmarks.

Every function draws from the ``numpy.random.Generator`` it is given, in a
fixed order, so that a seed names one problem.  The pieces (features,
weights, targets, ignored labels, model-drawn labels) are separate so that a
caller draws exactly the ones it needs, in the order it has always drawn
them; :func:`make_problem` is the common combination.

Shapes: X (m, n), W (K, n), b (K,), class labels (m,) int64 in [0, K),
dense targets (m, K) float64.  The library itself never imports this module.
"""

from __future__ import annotations

import numpy as np

#: kinds of targets :func:`targets` draws
TARGET_KINDS = ("labels", "float_labels", "onehot", "probs", "nonneg")


def features(rng: np.random.Generator, m: int, n: int, dtype=np.float64,
             scale: float = 1.0) -> np.ndarray:
    """(m, n) standard-normal entries times ``scale``, drawn in float64, then cast to ``dtype``.

    Also the generator of logits (m, K) for ``loss_and_grad_logits``.
    """
    X = rng.standard_normal((m, n))
    if scale != 1.0:
        X = scale * X
    return X.astype(dtype, copy=False)


def weights(rng: np.random.Generator, K: int, n: int, dtype=np.float64,
            scale: float | None = None) -> np.ndarray:
    """(K, n) standard-normal weights times ``scale``; by default divided by sqrt(n),
    so that the logits of standard-normal features have unit variance."""
    G = rng.standard_normal((K, n))
    W = G / np.sqrt(n) if scale is None else scale * G
    return W.astype(dtype, copy=False)


def bias(rng: np.random.Generator, K: int, dtype=np.float64, scale: float = 1.0) -> np.ndarray:
    """(K,) standard-normal intercept times ``scale``."""
    g = rng.standard_normal(K)
    if scale != 1.0:
        g = scale * g
    return g.astype(dtype, copy=False)


def targets(rng: np.random.Generator, kind: str, m: int, K: int) -> np.ndarray:
    """Targets of one kind (see :data:`TARGET_KINDS`).

    "labels": (m,) int64 uniform in [0, K); "float_labels": the same as
    float64; "onehot": (m, K) one-hot rows; "probs": (m, K) uniform rows
    normalised to sum 1; "nonneg": (m, K) non-negative rows that need not sum
    to 1, about 30% zeros.  Labels are always drawn first, so every kind
    consumes the generator in the same order.
    """
    if kind not in TARGET_KINDS:
        raise ValueError(f"kind must be one of {TARGET_KINDS}, got {kind!r}")
    labels = rng.integers(0, K, m)
    if kind == "labels":
        return labels
    if kind == "float_labels":
        return labels.astype(np.float64)
    if kind == "onehot":
        return np.eye(K)[labels]
    T = rng.random((m, K))
    if kind == "probs":
        return T / T.sum(axis=1, keepdims=True)
    T[rng.random((m, K)) < 0.3] = 0.0  # arbitrary non-negative rows, some all-zero-ish
    return 3.0 * T


def ignore_labels(y, rng: np.random.Generator, fraction: float = 0.35,
                  value: int = -100) -> np.ndarray:
    """A copy of the labels ``y`` with about ``fraction`` of them set to ``value``
    (the first sample is always kept, so never all are ignored)."""
    y = np.array(y, dtype=np.int64)
    drop = rng.random(y.shape[0]) < fraction
    drop[0] = False
    y[drop] = value
    return y


def model_labels(rng: np.random.Generator, X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """(m,) labels drawn from the softmax model with logits ``X @ W.T``."""
    Z = X @ W.T
    P = np.exp(Z - Z.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    return (P.cumsum(axis=1) > rng.random((X.shape[0], 1))).argmax(axis=1)


def problem(rng: np.random.Generator, m: int, n: int, K: int, dtype=np.float64,
            target: str = "labels", weight_scale: float | None = None):
    """``(W, X, y)``: :func:`features` X, :func:`weights` W (scaled by
    ``weight_scale``, by default 1/sqrt(n)) and :func:`targets` y of kind ``target``."""
    X = features(rng, m, n, dtype)
    W = weights(rng, K, n, dtype, weight_scale)
    return W, X, targets(rng, target, m, K)


def make_problem(m: int, n: int, K: int, dtype=np.float64, seed: int = 0):
    """The benchmarks' problem ``(W, X, y, b)``: standard-normal X, W scaled by
    1/sqrt(n), a bias of scale 0.1 and uniform labels."""
    rng = np.random.default_rng(seed)
    X = features(rng, m, n, dtype)
    W = weights(rng, K, n, dtype)
    b = bias(rng, K, dtype, scale=0.1)
    y = targets(rng, "labels", m, K)
    return W, X, y, b
