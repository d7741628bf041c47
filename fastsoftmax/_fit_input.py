"""The estimators' fit input, validated cheaply where it is plain.

scikit-learn's ``validate_data`` costs about 0.12 ms on every fit besides
its pass over X (the finiteness check, which the test below keeps), 0.45 ms
on iris right after a 50 ms pause (measured on the development VM; a short
fit between other work pays the latter), a fifth of a Newton fit of iris.
For the plainest input its array checks pass and return X and y
unchanged, so :func:`validate_fit_data` tests for that input first
(:func:`plain_arrays`: X a native-endian, C-ordered (m, n) float32 or
float64 ``numpy.ndarray``, m, n >= 1, with a finite sum, so no NaN or
infinity, unless ``sklearn.set_config(assume_finite=True)`` has switched
scikit-learn's own finiteness check off; y a contiguous (m,) ndarray of
integers or bools) and then runs
only scikit-learn's own feature-name and ``n_features_in_`` bookkeeping
(``validate_data(..., skip_check_array=True)``).  Any other input takes the
full checks, which convert it or raise their usual errors.
"""

from __future__ import annotations

import numpy as np
import sklearn
from sklearn.utils.validation import validate_data


def plain_arrays(X, y) -> bool:
    """Whether scikit-learn's checks of X (m, n) and labels y (m,) for a dense
    float fit (``dtype=[float64, float32]``, ``order="C"``, finite X) would
    pass and return both unchanged (see the module's docstring)."""
    if type(X) is not np.ndarray or type(y) is not np.ndarray:
        return False
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] < 1 or X.shape[1] < 1:
        return False
    if X.shape[0] != y.shape[0] or y.dtype.kind not in "biu" or not y.flags.c_contiguous:
        return False
    if X.dtype not in (np.float64, np.float32):  # unequal to them: big-endian floats too
        return False
    if not X.flags.c_contiguous:
        return False
    if sklearn.get_config()["assume_finite"]:  # scikit-learn would not look either
        return True
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum: not plain
        return bool(np.isfinite(X.sum()))


def validate_fit_data(estimator, X, y):
    """X (m, n) float32/float64 C-ordered ndarray or CSR matrix and y (m,),
    validated by ``validate_data`` as the estimators' fit validates them
    (``accept_sparse="csr"``, resetting ``n_features_in_`` and the feature
    names), its array checks skipped for :func:`plain_arrays` input."""
    if plain_arrays(X, y):
        return validate_data(estimator, X, y, skip_check_array=True)
    return validate_data(estimator, X, y, accept_sparse="csr",
                         dtype=[np.float64, np.float32], order="C")
