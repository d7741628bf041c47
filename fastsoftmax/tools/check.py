"""``fastsoftmax check``: verify, on the machine at hand, that every method is right.

Random problems, both dtypes, with and without every option, small (serial
path) and large enough for the parallel path: every array each compiled
method returns (loss, dW and, with an intercept, db) is compared with the
NumPy method's, and the fused method's dW and db with central finite
differences of its loss.  Tolerances are those of the test suite:
``|error| <= rtol (|expected| + max|expected|)`` with rtol 1e-10 (float64) or
1e-4 (float32); finite differences (step 1e-5, on float64 data) to 1e-6.  The Hessian-vector
product (``hessian_product``) is checked the same way: each compiled method
against the NumPy method, and the fused product against central differences
of the fused gradient along the direction.  Each check reports its worst
absolute difference and which output it is in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastsoftmax import hessian_product, loss_and_grad, loss_and_grad_logits

from .problems import bias, ignore_labels, problem

RTOL = {"float64": 1e-10, "float32": 1e-4}
FD_STEP, FD_ATOL = 1e-5, 1e-6
OUTPUTS = ("loss", "dW", "db")
PRODUCT_OUTPUTS = ("HV", "Hvb")


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def _close(a, b, rtol) -> tuple[bool, float]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False, float("inf")
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    ok = bool(np.all(np.abs(a - b) <= rtol * (np.abs(b) + scale)))
    return ok, err


def compare(got, ref, rtol, names=OUTPUTS) -> tuple[bool, str]:
    """Compare every returned value of ``got`` with ``ref``: whether all pass,
    and the worst absolute difference with the output it is in."""
    if len(got) != len(ref):
        return False, f"{len(got)} values returned, {len(ref)} expected"
    results = [(name, *_close(g, r, rtol)) for name, g, r in zip(names, got, ref)]
    name, _, worst = max(results, key=lambda r: r[2])
    failed = [r[0] for r in results if not r[1]]
    detail = f"max abs difference {worst:.2e} ({name})"
    if failed:
        detail += f"; outside tolerance: {', '.join(failed)}"
    return not failed, detail


def _problem(rng, m, n, K, dtype, options: bool, dense: bool):
    W, X, y = problem(rng, m, n, K, dtype, "probs" if dense else "labels")
    kw = {}
    if options:
        kw = dict(b=bias(rng, K, dtype), sample_weight=rng.random(m) + 0.1,
                  l2=0.01, label_smoothing=0.1)
        if not dense:
            y = ignore_labels(y, rng, fraction=0.2, value=-1)
            kw["ignore_index"] = -1
    return W, X, y, kw


def central_differences(f, A, h=FD_STEP) -> np.ndarray:
    """Central differences of the scalar function ``f`` at every entry of ``A`` (float64)."""
    G = np.zeros(A.shape)
    for idx in np.ndindex(A.shape):
        Ap, Am = A.copy(), A.copy()
        Ap[idx] += h
        Am[idx] -= h
        G[idx] = (f(Ap) - f(Am)) / (2 * h)
    return G


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
                        ok, detail = compare(got, ref, RTOL[dtype])
                        checks.append(Check(f"{method} = numpy, {label}", ok, detail))
    checks += _hessian_checks(rng)
    # finite differences of the fused loss in W and in b (float64 data, all options)
    for dense in (False, True):
        W, X, y, kw = _problem(rng, 30, 5, 3, "float64", True, dense)
        _, dW, db = loss_and_grad(W, X, y, **kw)
        fW = central_differences(lambda A: loss_and_grad(A, X, y, **kw)[0], W)
        fb = central_differences(lambda B: loss_and_grad(W, X, y, **{**kw, "b": B})[0], kw["b"])
        errs = {"dW": float(np.max(np.abs(fW - dW))), "db": float(np.max(np.abs(fb - db)))}
        worst = max(errs, key=errs.get)
        failed = [k for k, e in errs.items() if not e <= FD_ATOL]
        detail = f"max abs difference {errs[worst]:.2e} ({worst})"
        if failed:
            detail += f"; outside tolerance: {', '.join(failed)}"
        checks.append(Check(f"fused gradient = finite differences, {'dense' if dense else 'labels'}",
                            not failed, detail))
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


def _hessian_checks(rng) -> list[Check]:
    """The Hessian-vector product: compiled methods against the NumPy method,
    and the fused product against central differences of the fused gradient."""
    checks = []
    for dtype in ("float64", "float32"):
        for size, (m, n, K) in (("small", (40, 6, 4)), ("parallel", (6000, 24, 7))):
            W, X, y, kw = _problem(rng, m, n, K, dtype, True, False)
            V = rng.standard_normal(W.shape).astype(dtype)
            vb = rng.standard_normal(K).astype(dtype)
            ref = hessian_product(W, X, y, V, vb=vb, method="numpy", **kw)
            for method in ("fused", "indexloop"):
                got = hessian_product(W, X, y, V, vb=vb, method=method, **kw)
                ok, detail = compare(got, ref, RTOL[dtype], PRODUCT_OUTPUTS)
                checks.append(Check(f"Hessian product {method} = numpy, {dtype} {size} all options",
                                    ok, detail))
    W, X, y, kw = _problem(rng, 30, 5, 3, "float64", True, False)
    V = rng.standard_normal(W.shape)
    vb = rng.standard_normal(3)
    HV, Hvb = hessian_product(W, X, y, V, vb=vb, **kw)
    plus = loss_and_grad(W + FD_STEP * V, X, y, **{**kw, "b": kw["b"] + FD_STEP * vb})
    minus = loss_and_grad(W - FD_STEP * V, X, y, **{**kw, "b": kw["b"] - FD_STEP * vb})
    fd = [(p - q) / (2 * FD_STEP) for p, q in zip(plus[1:], minus[1:])]
    errs = {"HV": float(np.max(np.abs(fd[0] - HV))), "Hvb": float(np.max(np.abs(fd[1] - Hvb)))}
    worst = max(errs, key=errs.get)
    failed = [k for k, e in errs.items() if not e <= FD_ATOL]
    detail = f"max abs difference {errs[worst]:.2e} ({worst})"
    if failed:
        detail += f"; outside tolerance: {', '.join(failed)}"
    checks.append(Check("fused Hessian product = finite differences of the gradient",
                        not failed, detail))
    return checks


def report() -> int:
    """Print versions, threading and every check; 0 when all pass, 1 otherwise."""
    import llvmlite
    import numba
    from rich.console import Console
    from rich.table import Table

    from fastsoftmax import __version__
    from fastsoftmax._threading import active_layer

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
