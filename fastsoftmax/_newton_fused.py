"""Newton-Cholesky in one compiled parallel call, and Newton-CG's steps, for the
fused method on dense X.

On small problems (the bundled iris and wine data sets: a few thousand rows,
a few dozen parameters) a Newton step's arithmetic takes a fraction of a
millisecond, and the Python driver of :mod:`fastsoftmax._newton` (point
objects, kernel dispatch, the line search's evaluations, NumPy on tiny
vectors) spent as long again between the kernels: measured on raw wine x10,
(1780, 13, 3), about 0.55 ms a step of which 0.25 ms in the kernels.
:func:`newton_cholesky_loop` runs the same algorithm as
:func:`fastsoftmax._newton._newton_loop` with
:func:`fastsoftmax._newton._cholesky_step` (the same stopping rule, stall
test, step from the reduced system of :mod:`fastsoftmax._newton_step`,
removal of the null directions and Armijo line search) without returning to
Python.

It is a ``prange`` kernel: each evaluation of the loss and gradient (at a
trial point of the line search; the accepted trial's is the next step's)
runs :func:`fastsoftmax._fused.fused_chunk` on every chunk of rows, and each
Newton step :func:`fastsoftmax._hessian_full.full_chunk` on the first K - 1
classes, both called through their addresses (:mod:`fastsoftmax._compiled`;
so is the step's :func:`fastsoftmax._newton_step.reduced_step`, whose
Cholesky code linked into the loop made its first compilation 8.2 s
instead of 4.4 s), into per-chunk slabs summed in chunk order: the iterates do not depend on
which thread ran which chunk.  Everything between those parallel loops is
plain loops over (K, n~) arrays or calls of serial helpers, so that numba
turns nothing else into parallel regions.  A chunk that raises (a
MemoryError) stops the loop with status ``FAILED``; the caller then runs
the Python driver, where the exception surfaces.

Peak extra memory: ``nchunks`` gradient slabs (K n) and packed Hessian
slabs ((K - 1) K / 2 x n~ (n~ + 1) / 2), the reduced matrix and its factor
(2 ((K - 1) n~)^2), a few (K, n~) arrays, and the two kernels' tile buffers
per chunk; all float64.

:func:`newton_cg_step` is one step of Newton-CG
(:func:`fastsoftmax._newton.minimize_newton_pcg`): the preconditioned
conjugate gradients, each Hessian-vector product
:func:`fastsoftmax._hessian_fused.hessian_chunk` on every row chunk (called
through its address), the null directions' removal and the Armijo line
search, in one call.  The loop around the steps stays in Python
(:func:`fastsoftmax._newton._fused_pcg`), where the preconditioner's blocks
are built between steps (rarely: :class:`fastsoftmax._newton.BlockInverses`)
and the forcing term is kept.  Along a cross-validated path the fits are
2-7 Newton steps of 1-3 products each on a few thousand rows, and the
Python driver's work per product (the direction's validation, dispatch,
NumPy on (K, n~) vectors) cost as much as the product: measured on the CV
benchmark's (5000, 50, 5) set, 0.25 s for 50 fits, 82 ms of it in the
kernels.  Peak extra memory: the loss's and the products' chunk slabs
(nchunks K n and pchunks K n), about ten (K, n~) arrays and the kernels'
tile buffers per chunk; all float64 but the (2K, n) stacked point and
direction in X's dtype.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types

from ._accumulate import zero
from ._compiled import CompiledFunction, call_compiled
from ._jit import exact_kernel, inline_helper, parallel_kernel, serial_kernel
from ._newton_step import class_means, reduced_step

#: reduced_step's entry point (its arguments' types are always the same).
_step_entry: list = []


def step_entry() -> CompiledFunction:
    """:func:`fastsoftmax._newton_step.reduced_step` compiled for the loop's
    arguments ((B, Q), (K, n~) float64, n, denom, l2, jitter, S (K, n~) float64):
    the loop calls it through its address, so that its code (the Cholesky
    factorisation) is not compiled again into the parallel kernel's."""
    if not _step_entry:
        matrix = types.Array(types.float64, 2, "C")
        _step_entry.append(CompiledFunction(reduced_step, (
            matrix, matrix, types.int64, types.float64, types.float64, types.float64, matrix)))
    return _step_entry[0]


#: ``status`` values of :func:`newton_cholesky_loop`.
CONVERGED, MAX_ITER, STALLED, NOT_FACTORED, NO_DECREASE, FAILED = range(6)


@inline_helper
def _loss_chunk(fused, X, Wk, bk, labels, T, sw, eps, c, nchunks, tile, micro, slabs,
                bias_slabs, losses, none):
    """Chunk c of ``nchunks`` of a loss-and-gradient evaluation at (Wk, bk):
    the compiled fused chunk (through its address) into the chunk's own
    slabs and ``losses[c]``; returns whether it raised.  The body of the
    loops' ``prange`` over chunks (inlined there)."""
    m = X.shape[0]
    zero(slabs[c])
    zero(bias_slabs[c])
    out = call_compiled(fused, X, Wk, bk, labels, T, sw, eps, np.int64(c * m // nchunks),
                        np.int64((c + 1) * m // nchunks), tile, micro, slabs[c], bias_slabs[c],
                        none, none, none, none, none)
    losses[c] = out[0]
    return out[1]


@serial_kernel
def _round_point(P, Wk, bk, Wa):
    """The point P (K, n~) float64 in X's dtype, as the Python drivers round
    it: W into Wk (K, n), b into bk (K,) (zeros without an intercept), and
    both back in float64 into Wa (K, n~) for the Hessian kernel."""
    K, nt = P.shape
    n = Wk.shape[1]
    for k in range(K):
        for l in range(n):
            Wk[k, l] = P[k, l]
            Wa[k, l] = np.float64(Wk[k, l])
        bk[k] = P[k, n] if nt > n else 0.0
        if nt > n:
            Wa[k, n] = np.float64(bk[k])


@exact_kernel
def _in_chunk_order(bias_slabs, k):
    """The chunks' sums ``bias_slabs[:, k]`` (nchunks, K) added in chunk order."""
    total = bias_slabs[0, k]
    for c in range(1, bias_slabs.shape[0]):
        total += bias_slabs[c, k]
    return total


@exact_kernel
def _objective(slabs, bias_slabs, losses, Wk, denom, l2, grad):
    """The objective from the chunks' sums (added in chunk order), as
    :func:`fastsoftmax._api.finish` computes it, and its gradient (K, n~)
    into ``grad``: float64 sums rounded once to X's (and Wk's) dtype, as
    the Python drivers' gradient is.  Compiled without fast-math
    reassociation or reciprocals, so that the divisions are divisions, as
    NumPy's; only the sum of W's squares is added in another order than
    ``finish``'s."""
    nchunks, K, n = slabs.shape
    nt = grad.shape[1]
    rounded = np.empty(1, dtype=Wk.dtype)
    loss = losses[0]
    for c in range(1, nchunks):
        loss += losses[c]
    loss /= denom
    squares = 0.0
    for k in range(K):
        for l in range(n):
            total = slabs[0, k, l]
            for c in range(1, nchunks):
                total += slabs[c, k, l]
            w = np.float64(Wk[k, l])
            rounded[0] = total / denom + l2 * w if l2 != 0.0 else total / denom
            grad[k, l] = rounded[0]
            squares += w * w
        if nt > n:
            rounded[0] = _in_chunk_order(bias_slabs, k) / denom
            grad[k, n] = rounded[0]
    return loss + 0.5 * l2 * squares if l2 != 0.0 else loss


@serial_kernel
def _sum_slabs(slabs):
    """The chunks' (B, Q) slabs added in chunk order, into slab 0 (returned)."""
    M = slabs[0]
    B, Q = M.shape
    for c in range(1, slabs.shape[0]):
        for q in range(B):
            for e in range(Q):
                M[q, e] += slabs[c, q, e]
    return M


@serial_kernel
def _any(flags):
    for i in range(flags.size):
        if flags[i]:
            return True
    return False


@serial_kernel
def _max_abs(a):
    top = 0.0
    for i in range(a.size):
        v = abs(a.flat[i])
        if not v <= top:  # NaN wins, as in np.max
            top = v
    return top


@serial_kernel
def _drop_null_directions(S, n, l2):
    """S (K, n~) without its class mean in b's column, and in W's columns
    when l2 = 0 (:func:`fastsoftmax._newton._drop_null_directions`)."""
    K, nt = S.shape
    for l in range(0 if l2 == 0.0 else n, nt):
        mean = 0.0
        for k in range(K):
            mean += S[k, l]
        mean /= K
        for k in range(K):
            S[k, l] -= mean


@serial_kernel
def _dot(a, b):
    total = 0.0
    for i in range(a.size):
        total += a.flat[i] * b.flat[i]
    return total


@serial_kernel
def _move(P, S, t, out):
    """``out = P + t S``."""
    K, nt = P.shape
    for k in range(K):
        for l in range(nt):
            out[k, l] = P[k, l] + t * S[k, l]


@serial_kernel
def _copy(src, dst):
    for i in range(src.size):
        dst.flat[i] = src.flat[i]


@parallel_kernel
def newton_cholesky_loop(fused, hessian, step, X, labels, T, sw, eps, denom, l2, P, tol, max_iter,
                         max_stalled, stall_slack, jitter, tile, micro, hessian_tile,
                         hessian_features, direct, slabs, bias_slabs, losses, hessian_chunks,
                         history, none):
    """Newton-Cholesky from the point P (K, n~) float64 ([W | b], updated in
    place): ``(status, n_iter, loss, grad_max, n_evals)``.

    ``fused`` and ``hessian`` are the compiled chunk functions
    (:func:`fastsoftmax._fused.chunk_entry`, :func:`fastsoftmax._hessian_full.chunk_entry`),
    ``step`` the compiled :func:`fastsoftmax._newton_step.reduced_step` (:func:`step_entry`)
    for X (m, n), ``labels``, ``T``, ``sw``, ``eps``; ``denom`` and ``l2`` as
    in :class:`fastsoftmax._validation.Problem`; ``tile`` and ``micro`` the
    fused chunk's (:func:`fastsoftmax._fused.fused_sums`); ``hessian_tile``,
    ``hessian_features`` and ``direct`` their tiles
    (:func:`fastsoftmax._dispatch.hessian_plan`);
    ``slabs`` (nchunks, K, n), ``bias_slabs`` (nchunks, K) and ``losses``
    (nchunks,) float64 receive each chunk's loss-and-gradient sums (on
    return those of the last evaluation; nchunks as in
    :func:`fastsoftmax.loss_and_grad`), ``hessian_chunks`` is the Hessian's
    row chunk count; ``max_stalled`` steps in a row that lower the objective
    by at most ``stall_slack`` of it end the loop (STALLED), as in
    :class:`fastsoftmax._newton._Stopping`.  ``history`` receives the
    objective at each step's point, as far as it reaches.  ``none`` is None
    (the fused chunk's unused options).
    """
    m, n = X.shape
    K, nt = P.shape
    C = K - 1
    nchunks = losses.shape[0]
    hslabs = np.empty((hessian_chunks, C * (C + 1) // 2, nt * (nt + 1) // 2))
    failed = np.empty(max(nchunks, hessian_chunks), dtype=np.bool_)
    zero(failed)
    Wk = np.empty((K, n), dtype=X.dtype)
    bk = np.empty(K, dtype=X.dtype)
    Wa = np.empty((K, nt))
    grad = np.empty((K, nt))
    trial = np.empty((K, nt))
    trial_grad = np.empty((K, nt))
    S = np.empty((K, nt))
    status = MAX_ITER
    it = 0
    n_evals = 0
    stalled = 0
    loss = 0.0
    previous = 0.0
    slope = 0.0
    t = 1.0
    tries = 0
    searching = False
    _copy(P, trial)
    while True:
        # the objective and gradient at the trial point
        _round_point(trial, Wk, bk, Wa)
        for c in prange(nchunks):
            failed[c] = _loss_chunk(fused, X, Wk, bk, labels, T, sw, eps, c, nchunks, tile, micro,
                                    slabs, bias_slabs, losses, none)
        n_evals += 1
        if _any(failed):
            status = FAILED
            break
        trial_loss = _objective(slabs, bias_slabs, losses, Wk, denom, l2, trial_grad)
        if searching:  # Armijo, with a slack of a few ulps of the loss
            if trial_loss <= loss + 1e-4 * t * slope + 8e-16 * abs(loss):
                searching = False
                it += 1
                _copy(trial, P)
            else:
                tries += 1
                if tries == 40:
                    status = NO_DECREASE
                    break
                t *= 0.5
                _move(P, S, t, trial)
                continue
        # at the point P (== trial, rounded into Wk, bk, Wa)
        _copy(trial_grad, grad)
        previous, loss = loss, trial_loss
        if it < history.shape[0]:
            history[it] = loss
        if _max_abs(grad) <= tol:
            status = CONVERGED
            break
        if it == max_iter:
            break
        lowered = loss < previous - stall_slack * abs(previous)
        stalled = stalled + 1 if it > 0 and not lowered else 0
        if stalled >= max_stalled:
            status = STALLED
            break
        for c in prange(hessian_chunks):
            zero(hslabs[c])
            out = call_compiled(hessian, X, Wa, labels, T, sw, eps,
                                np.int64(c * m // hessian_chunks),
                                np.int64((c + 1) * m // hessian_chunks), hessian_tile,
                                hessian_features, direct, np.int64(C), hslabs[c])
            failed[c] = out[1]
        if _any(failed):
            status = FAILED
            break
        solved = call_compiled(step, _sum_slabs(hslabs), grad, np.int64(n), denom, l2, jitter,
                               S)
        if solved[1]:
            status = FAILED
            break
        if not solved[0]:
            status = NOT_FACTORED
            break
        _drop_null_directions(S, n, l2)
        slope = _dot(grad, S)
        t = 1.0
        tries = 0
        searching = True
        _move(P, S, t, trial)
    return status, it, loss, _max_abs(grad), n_evals


# --- one Newton-CG step ------------------------------------------------------------------

#: ``status`` values of :func:`newton_cg_step` (besides ``NO_DECREASE`` and ``FAILED``).
STEPPED, NO_DESCENT, STAYED = 6, 7, 8
#: Where :func:`newton_cg_step` leaves the loss-and-gradient slabs: as they
#: were (no evaluation), holding the sums at the returned point P, or at a
#: trial point elsewhere.
UNCHANGED, AT_POINT, ELSEWHERE = 0, 1, 2


@serial_kernel
def _round_direction(d, WV, vb):
    """The direction d (K, n~) float64 in X's dtype, as a Hessian product rounds
    it: W's part into rows K..2K-1 of WV (2K, n), b's into vb (K,) (zeros
    without an intercept)."""
    K, nt = d.shape
    n = WV.shape[1]
    for k in range(K):
        for l in range(n):
            WV[K + k, l] = d[k, l]
        vb[k] = d[k, n] if nt > n else 0.0


@exact_kernel
def _finish_product(slabs, bias_slabs, WV, denom, l2, Hd):
    """The Hessian product (K, n~) from the chunks' sums (added in chunk order)
    into Hd, as :func:`fastsoftmax._hessian.finish_product` computes it (to
    rounding: ``l2 V`` may be added by a fused multiply-add):
    ``G / denom + l2 V`` (V the direction rounded into WV's rows K..2K-1) and
    ``gb / denom``, rounded once to X's (WV's) dtype, as the Python drivers'
    product is.  Without fast-math reciprocals, as :func:`_objective`."""
    nchunks, K, n = slabs.shape
    nt = Hd.shape[1]
    rounded = np.empty(1, dtype=WV.dtype)
    for k in range(K):
        for l in range(n):
            total = slabs[0, k, l]
            for c in range(1, nchunks):
                total += slabs[c, k, l]
            if l2 != 0.0:
                rounded[0] = total / denom + l2 * np.float64(WV[K + k, l])
            else:
                rounded[0] = total / denom
            Hd[k, l] = rounded[0]
        if nt > n:
            rounded[0] = _in_chunk_order(bias_slabs, k) / denom
            Hd[k, n] = rounded[0]


@serial_kernel
def _precondition(r, factors, inv_diag, n, l2, z):
    """``z = M^{-1} r`` for r, z (K, n~) float64; returns ``sum(r * z)``.

    The preconditioner of :func:`fastsoftmax._newton._preconditioner`: the class
    means split off (solved exactly, ``mean / l2`` on W's columns when
    l2 > 0), on the rest the per-class blocks, solved with their lower
    Cholesky ``factors`` (K, n~, n~) (forward, then backward substitution),
    or, when that array is empty, the inverted diagonal ``inv_diag`` (K, n~)."""
    K, nt = r.shape
    mean = class_means(r)
    y = np.empty(nt)
    for k in range(K):
        if factors.shape[0] > 0:
            L = factors[k]
            for a in range(nt):  # L y = r_k - mean
                acc = r[k, a] - mean[a]
                for l in range(a):
                    acc -= L[a, l] * y[l]
                y[a] = acc / L[a, a]
            for a in range(nt - 1, -1, -1):  # L^T z_k = y
                acc = y[a]
                for l in range(a + 1, nt):
                    acc -= L[l, a] * z[k, l]
                z[k, a] = acc / L[a, a]
        else:
            for l in range(nt):
                z[k, l] = (r[k, l] - mean[l]) * inv_diag[k, l]
    shift = class_means(z)
    if l2 > 0.0:
        for l in range(n):
            shift[l] -= mean[l] / l2
    total = 0.0
    for k in range(K):
        for l in range(nt):
            z[k, l] -= shift[l]
            total += r[k, l] * z[k, l]
    return total


@serial_kernel
def _advance(step, r, d, Hd, alpha):
    """``step += alpha d``, ``r -= alpha Hd``; returns the new ``||r||``."""
    for i in range(r.size):
        step.flat[i] += alpha * d.flat[i]
        r.flat[i] -= alpha * Hd.flat[i]
    return np.sqrt(_dot(r, r))


@serial_kernel
def _new_direction(d, z, beta):
    """``d = z + beta d``."""
    for i in range(d.size):
        d.flat[i] = z.flat[i] + beta * d.flat[i]


@serial_kernel
def _equal(a, b):
    """Whether a and b hold the same values (NaN never equal)."""
    for i in range(a.size):
        if not a.flat[i] == b.flat[i]:
            return False
    return True


@serial_kernel
def _negate_into(src, dst):
    for i in range(src.size):
        dst.flat[i] = -src.flat[i]


@parallel_kernel
def newton_cg_step(fused, product, X, labels, T, sw, eps, denom, l2, P, grad, loss, factors,
                   inv_diag, stop, max_cg, tile, micro, product_tile, product_micro, slabs,
                   bias_slabs, losses, product_slabs, product_bias_slabs, none):
    """One truncated Newton step from the point P (K, n~) float64 ([W | b]),
    whose objective is ``loss`` and gradient ``grad`` (K, n~) float64:
    ``(status, products, loss, n_evals, where)``.

    The step of :func:`fastsoftmax._newton._pcg_step` and the line search of
    :func:`fastsoftmax._newton._line_search` (with the null directions
    removed in between): preconditioned conjugate gradients on ``H s = -grad``
    (:func:`_precondition` with the blocks' ``factors`` or ``inv_diag``) until the
    residual's norm is at most ``stop`` or after ``max_cg`` Hessian products,
    then Armijo backtracking from the full step.  With status ``STEPPED``, P
    and ``grad`` hold the accepted point and its gradient, ``loss`` its
    objective and the slabs its loss-and-gradient sums; ``NO_DESCENT`` (the
    preconditioned gradient is rounding: no product, no evaluation) and
    ``NO_DECREASE`` (40 halvings without decrease) leave P and ``grad`` as
    they were; ``STAYED``: the accepted trial point is P itself (a step below
    rounding); ``FAILED``: a chunk raised.  ``products`` counts the Hessian
    products, ``n_evals`` the evaluations, and ``where`` says what the slabs
    hold (``UNCHANGED``, ``AT_POINT``, ``ELSEWHERE``).  A trial point equal
    to P is evaluated, and counted, only when an earlier trial moved the
    slabs elsewhere, and its objective is P's: the Python driver's
    evaluations are cached by point, and the counts are the same.

    ``fused`` and ``product`` are the compiled chunk functions
    (:func:`fastsoftmax._fused.chunk_entry`,
    :func:`fastsoftmax._hessian_fused.chunk_entry`) with their tiles; the
    loss-and-gradient chunks' sums go to ``slabs`` (nchunks, K, n),
    ``bias_slabs`` (nchunks, K) and ``losses`` (nchunks,), the products' to
    ``product_slabs`` (pchunks, K, n) and ``product_bias_slabs`` (pchunks, K),
    each summed in chunk order.  ``none`` is None.
    """
    m, n = X.shape
    K, nt = P.shape
    nchunks = losses.shape[0]
    pchunks = product_slabs.shape[0]
    failed = np.empty(max(nchunks, pchunks), dtype=np.bool_)
    zero(failed)
    Wk = np.empty((K, n), dtype=X.dtype)
    bk = np.empty(K, dtype=X.dtype)
    Wa = np.empty((K, nt))
    WV = np.empty((2 * K, n), dtype=X.dtype)
    vb = np.empty(K, dtype=X.dtype)
    step = np.empty((K, nt))
    zero(step)
    r = np.empty((K, nt))
    z = np.empty((K, nt))
    d = np.empty((K, nt))
    Hd = np.empty((K, nt))
    trial = np.empty((K, nt))
    trial_grad = np.empty((K, nt))
    _round_point(P, Wk, bk, Wa)
    for k in range(K):
        for l in range(n):
            WV[k, l] = Wk[k, l]
    _negate_into(grad, r)
    rz = _precondition(r, factors, inv_diag, n, l2, z)
    if not rz > 0.0:  # what is left of the gradient lies along flat directions
        return NO_DESCENT, 0, loss, 0, UNCHANGED
    _copy(z, d)
    products = 0
    for _ in range(max_cg):
        _round_direction(d, WV, vb)
        for c in prange(pchunks):
            zero(product_slabs[c])
            zero(product_bias_slabs[c])
            out = call_compiled(product, X, WV, bk, vb, labels, T, sw, eps,
                                np.int64(c * m // pchunks), np.int64((c + 1) * m // pchunks),
                                product_tile, product_micro, product_slabs[c],
                                product_bias_slabs[c])
            failed[c] = out[1]
        products += 1
        if _any(failed):
            return FAILED, products, loss, 0, UNCHANGED
        _finish_product(product_slabs, product_bias_slabs, WV, denom, l2, Hd)
        curvature = _dot(d, Hd)
        if not curvature > 0.0:  # no positive curvature left (rounding)
            if _max_abs(step) == 0.0:
                _copy(d, step)
            break
        alpha = rz / curvature
        if _advance(step, r, d, Hd, alpha) <= stop:
            break
        rz_new = _precondition(r, factors, inv_diag, n, l2, z)
        if not rz_new > 0.0:  # the residual is rounding along flat directions
            break
        _new_direction(d, z, rz_new / rz)
        rz = rz_new
    _drop_null_directions(step, n, l2)
    slope = _dot(grad, step)
    t = 1.0
    n_evals = 0
    where = UNCHANGED
    for _ in range(40):
        _move(P, step, t, trial)
        at_point = _equal(trial, P)  # a step below rounding
        if at_point and where != ELSEWHERE:
            trial_loss = loss  # P's, known (the Python driver's cache holds P)
        else:
            _round_point(trial, Wk, bk, Wa)
            for c in prange(nchunks):
                failed[c] = _loss_chunk(fused, X, Wk, bk, labels, T, sw, eps, c, nchunks, tile,
                                        micro, slabs, bias_slabs, losses, none)
            n_evals += 1
            if _any(failed):
                return FAILED, products, loss, n_evals, ELSEWHERE
            if at_point:  # P again, as the Python driver evaluates it: the same objective
                trial_loss = loss
                where = AT_POINT
            else:
                trial_loss = _objective(slabs, bias_slabs, losses, Wk, denom, l2, trial_grad)
                where = ELSEWHERE
        # Armijo, with a slack of a few ulps of the loss
        if trial_loss <= loss + 1e-4 * t * slope + 8e-16 * abs(loss):
            if at_point:
                return STAYED, products, loss, n_evals, where
            _copy(trial, P)
            _copy(trial_grad, grad)
            return STEPPED, products, trial_loss, n_evals, AT_POINT
        t *= 0.5
    return NO_DECREASE, products, loss, n_evals, where
