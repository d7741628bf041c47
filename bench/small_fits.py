"""Small fits, interleaved with scikit-learn's, back to back or with pauses.

bench/test_fit.py times each estimator's short fits as the median of 9, 50
ms apart, one estimator after the other.  On fits of a few milliseconds two
things then weigh as much as the arithmetic: the machine's state drifting
between the two estimators' runs (up to 2x on the development VM), and
numba's worker threads falling asleep in the pauses.  This script separates
them: it alternates one fit of ``SoftmaxRegression()`` (default solver) and
one of ``LogisticRegression(solver="newton-cholesky")`` (scikit-learn's
fastest on these data), with ``--pause`` seconds before each fit (0: back to
back), and reports both medians, quartiles and the ratio.

Data: scikit-learn's iris and wine, raw and standardised, tiled 10x (as in
bench/test_fit.py), C = 1, tol = 1e-8.  Run from the repository root as

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. \\
        python bench/small_fits.py --pause 0 --repeats 41
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.datasets import load_iris, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from fastsoftmax.estimator import SoftmaxRegression

SETS = {
    "iris raw x10": (load_iris, False),
    "wine raw x10": (load_wine, False),
    "iris std x10": (load_iris, True),
    "wine std x10": (load_wine, True),
}


def data(loader, standardise):
    X, y = loader(return_X_y=True)
    if standardise:
        X = StandardScaler().fit_transform(X)
    return np.tile(X, (10, 1)), np.tile(y, 10)


def interleaved(X, y, pause: float, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of ``repeats`` fits of each estimator, alternating which goes first."""
    ours = SoftmaxRegression(C=1.0, tol=1e-8, max_iter=10_000)
    theirs = LogisticRegression(C=1.0, tol=1e-8, solver="newton-cholesky", max_iter=200)
    times = {id(ours): [], id(theirs): []}
    for i in range(repeats):
        for model in (ours, theirs) if i % 2 else (theirs, ours):
            time.sleep(pause)
            fresh = clone(model)
            start = time.perf_counter()
            fresh.fit(X, y)
            times[id(model)].append(time.perf_counter() - start)
    return np.array(times[id(ours)]), np.array(times[id(theirs)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds before each fit (0: back to back)")
    parser.add_argument("--repeats", type=int, default=41, help="fits of each estimator")
    args = parser.parse_args()
    warnings.simplefilter("ignore", (ConvergenceWarning, FutureWarning))
    SoftmaxRegression().fit(*data(load_iris, False))  # compile (or load) the kernels
    for name, (loader, standardise) in SETS.items():
        ours, theirs = (1e3 * t for t in interleaved(*data(loader, standardise), args.pause,
                                                      args.repeats))
        print(f"{name}: SoftmaxRegression {np.median(ours):.2f} ms "
              f"(quartiles {np.percentile(ours, 25):.2f}-{np.percentile(ours, 75):.2f}), "
              f"LogisticRegression newton-cholesky {np.median(theirs):.2f} ms "
              f"({np.percentile(theirs, 25):.2f}-{np.percentile(theirs, 75):.2f}), "
              f"ratio {np.median(theirs) / np.median(ours):.2f}")


if __name__ == "__main__":
    main()
