"""Helpers shared by the tests: stated tolerances, the compile-cache check."""

import subprocess
import sys

import numpy as np

#: Stated tolerances between an implementation and the float64 reference.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


def assert_close(actual, expected, dtype, what="", scale=None):
    """|actual - expected| <= rtol * (|expected| + scale), elementwise.

    ``scale`` is the magnitude the entries are sums of: by default the
    array's largest entry, or, from the oracle, the sum of the absolute values
    of the terms each entry adds up.  Entries that are sums with cancellation
    (a gradient near an optimum) are so judged relative to the size of what
    was summed, which is what bounds the rounding error of any summation
    order, not relative to their own tiny size.
    """
    rtol = RTOL[np.dtype(dtype)]
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    if scale is None:
        scale = np.max(np.abs(expected)) if expected.size else 0.0
    err = np.abs(actual - expected)
    bound = rtol * (np.abs(expected) + scale)
    bad = ~(err <= bound)
    assert not np.any(bad), (
        f"{what}: {np.count_nonzero(bad)} entries off, worst error {np.max(err[bad])!r} "
        f"vs bound {bound[bad].min() if np.ndim(bound) else bound!r}\nactual {actual}\nexpected {expected}")


def assert_results_close(got, want, dtype, scales=None):
    """Compare ``(loss, dW[, db])`` tuples; check the output types on the way."""
    assert len(got) == len(want)
    assert isinstance(got[0], float)
    scales = scales or (None,) * len(want)
    for name, g, w, s in zip(("loss", "dW", "db"), got, want, scales):
        if name != "loss":
            assert g.dtype == np.dtype(dtype), name
        assert_close(g, w, dtype, name, s)



def assert_cached_in_new_process(calls: str, dispatchers: dict[str, str]) -> None:
    """Run ``calls`` in two new processes: the second must load every kernel
    from the cache (a hit, no miss) and no "Cannot cache" warning may appear.

    ``dispatchers`` maps a name to the import that brings it, e.g.
    ``{"fused_sums": "fastsoftmax._fused"}``; each must have been used by ``calls``.
    """
    imports = "".join(f"from {mod} import {name}\n" for name, mod in dispatchers.items())
    code = (
        "import warnings, numpy as np, fastsoftmax as fs\n"
        "warnings.simplefilter('error')\n" + imports + calls + "\n"
        f"for f in ({', '.join(dispatchers)},):\n"
        "    print(sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values()))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "Cannot cache" not in out.stderr
    counts = [[int(v) for v in line.split()] for line in out.stdout.splitlines()]
    assert counts == [[1, 0]] * len(dispatchers), out.stdout  # (hits, misses) per kernel


def central_differences(f, A, h):
    """Central differences of scalar f with respect to every entry of A."""
    G = np.zeros(A.shape)
    for idx in np.ndindex(A.shape):
        Ap, Am = A.copy(), A.copy()
        Ap[idx] += h
        Am[idx] -= h
        hp = float(Ap[idx]) - float(A[idx])  # the step actually taken in A's dtype
        hm = float(A[idx]) - float(Am[idx])
        G[idx] = (f(Ap) - f(Am)) / (hp + hm)
    return G
