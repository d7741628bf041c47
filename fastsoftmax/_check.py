"""``fastsoftmax check``: verify, on the machine at hand, that every method is right.

Random problems, both dtypes, with and without every option, small (serial
path) and large enough for the parallel path: each compiled method is compared
with the NumPy method, and the fused method's gradient with central finite
differences of its loss.  Tolerances are those of the test suite:
``|error| <= rtol (|expected| + max|expected|)`` with rtol 1e-10 (float64) or
1e-4 (float32); finite differences (step 1e-5, on float64 data) to 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._api import loss_and_grad, loss_and_grad_logits

RTOL = {"float64": 1e-10, "float32": 1e-4}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def _close(a, b, rtol) -> tuple[bool, float]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    ok = bool(np.all(np.abs(a - b) <= rtol * (np.abs(b) + scale)))
    return ok, err


def _problem(rng, m, n, K, dtype, options: bool, dense: bool):
    X = rng.standard_normal((m, n)).astype(dtype)
    W = (rng.standard_normal((K, n)) / np.sqrt(n)).astype(dtype)
    if dense:
        T = rng.random((m, K))
        y = T / T.sum(axis=1, keepdims=True)
    else:
        y = rng.integers(0, K, m)
    kw = {}
    if options:
        kw = dict(b=rng.standard_normal(K).astype(dtype), sample_weight=rng.random(m) + 0.1,
                  l2=0.01, label_smoothing=0.1)
        if not dense:
            y = y.copy()
            y[rng.random(m) < 0.2] = -1
            y[0] = 0
            kw["ignore_index"] = -1
    return W, X, y, kw


def run_checks(seed: int = 0) -> list[Check]:
    """Run every check; return their outcomes."""
    rng = np.random.default_rng(seed)
    checks: list[Check] = []
    for dtype in ("float64", "float32"):
        for size, (m, n, K) in (("small", (40, 6, 4)), ("parallel", (6000, 24, 7))):
            for options in (False, True):
                for dense in (False, True):
                    label = (f"{dtype} {size} {'dense' if dense else 'labels'}"
                             f"{' all options' if options else ''}")
                    W, X, y, kw = _problem(rng, m, n, K, dtype, options, dense)
                    ref = loss_and_grad(W, X, y, method="numpy", **kw)
                    for method in ("fused", "indexloop"):
                        got = loss_and_grad(W, X, y, method=method, **kw)
                        results = [_close(g, r, RTOL[dtype]) for g, r in zip(got, ref)]
                        ok = all(r[0] for r in results)
                        worst = max(r[1] for r in results)
                        checks.append(Check(f"{method} = numpy, {label}", ok,
                                            f"max abs difference {worst:.2e}"))
    # finite differences of the fused loss (float64 data, all options)
    for dense in (False, True):
        W, X, y, kw = _problem(rng, 30, 5, 3, "float64", True, dense)
        _, dW, db = loss_and_grad(W, X, y, **kw)
        h, worst = 1e-5, 0.0
        for idx in np.ndindex(W.shape):
            Wp, Wm = W.copy(), W.copy()
            Wp[idx] += h
            Wm[idx] -= h
            fd = (loss_and_grad(Wp, X, y, **kw)[0] - loss_and_grad(Wm, X, y, **kw)[0]) / (2 * h)
            worst = max(worst, abs(fd - dW[idx]))
        checks.append(Check(f"fused gradient = finite differences, {'dense' if dense else 'labels'}",
                            worst <= 1e-6, f"max abs difference {worst:.2e}"))
    # the logits entry point against loss_and_grad with W = I
    Z = rng.standard_normal((500, 6))
    yz = rng.integers(0, 6, 500)
    loss, dZ = loss_and_grad_logits(Z, yz, label_smoothing=0.1)
    loss2, dW = loss_and_grad(np.eye(6), Z, yz, label_smoothing=0.1)
    ok1, e1 = _close(loss, loss2, 1e-10)
    ok2, e2 = _close(dZ.T @ Z, dW, 1e-10)
    checks.append(Check("loss_and_grad_logits = loss_and_grad(W=I)", ok1 and ok2,
                        f"max abs difference {max(e1, e2):.2e}"))
    return checks


def report() -> int:
    """Print versions, threading and every check; 0 when all pass, 1 otherwise."""
    import llvmlite
    import numba
    from rich.console import Console
    from rich.table import Table

    from . import __version__
    from ._threading import active_layer

    checks = run_checks()
    console = Console()
    layer = active_layer() or "none chosen"
    console.print(f"fastsoftmax {__version__}; numba {numba.__version__}, numpy {np.__version__}, "
                  f"llvmlite {llvmlite.__version__}; threading layer {layer}, "
                  f"{numba.get_num_threads()} threads")
    table = Table(title="fastsoftmax check")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for c in checks:
        table.add_row(c.name, "[green]passed[/green]" if c.passed else "[red]FAILED[/red]", c.detail)
    console.print(table)
    failed = sum(not c.passed for c in checks)
    console.print(f"{len(checks) - failed} passed, {failed} failed")
    return 0 if failed == 0 else 1
