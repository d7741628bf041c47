"""Class weights for ``SoftmaxRegression``, meaning what they mean in ``LogisticRegression``.

A class weight multiplies the sample weight of every sample of its class
before anything else happens: the loss sums, and the total weight that
scales the penalty (``l2 = 1 / (C sum_i w_i)``), use the products.
``"balanced"`` gives class k the weight ``S / (K S_k)``, where ``S_k`` is
the total sample weight of class k and ``S`` of all samples (scikit-learn's
``compute_class_weight``, which does the work here).
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.class_weight import compute_class_weight


def class_weight_vector(class_weight, classes: np.ndarray, class_totals: np.ndarray) -> np.ndarray:
    """The weight (K,) float64 of each class of ``classes`` (sorted, K labels).

    ``class_weight`` is None, ``"balanced"`` or a dict {label: weight}, read
    by ``compute_class_weight`` (so its ValueErrors are scikit-learn's);
    ``class_totals`` (K,) is the total sample weight of each class (counts
    when unweighted), all that ``"balanced"`` needs: it is handed to
    ``compute_class_weight`` as one sample per class weighted by its total,
    which gives the same weights as the samples themselves.
    """
    if class_weight is None:
        return np.ones(classes.shape[0])
    weights = compute_class_weight(class_weight, classes=classes, y=classes,
                                   sample_weight=np.asarray(class_totals, dtype=np.float64))
    return np.asarray(weights, dtype=np.float64)


def apply_class_weight(class_weight, classes: np.ndarray, y_index: np.ndarray,
                       sample_weight: np.ndarray) -> np.ndarray:
    """``sample_weight * class weight of each sample's class`` (m,) float64 (NumPy input).

    ``y_index`` (m,) int holds each sample's class index in ``classes``.
    Returns ``sample_weight`` itself when ``class_weight`` is None.
    """
    if class_weight is None:
        return sample_weight
    totals = np.bincount(y_index, weights=sample_weight, minlength=classes.shape[0])
    return sample_weight * class_weight_vector(class_weight, classes, totals)[y_index]
