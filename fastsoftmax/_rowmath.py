"""Per-sample numerics shared by the compiled kernels.

Targets reach the kernels in one of two encodings, so that no kernel is
copied per option:

* class indices: ``labels`` is an int64 array of length m (a negative entry
  marks a sample dropped by ``ignore_index``) and ``T`` is an empty (0, K)
  array;
* dense targets: ``labels`` is empty and ``T`` is the (m, K) target matrix.

Label smoothing ``eps`` turns either into ``(1 - eps) * t + eps / K``.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._jit import exact_kernel, serial_kernel


@serial_kernel
def target_value(labels, T, i, k, eps, inv_k):
    """Smoothed target t_ik of sample ``i`` for class ``k`` (a float64)."""
    if labels.shape[0] > 0:
        t = eps * inv_k
        if labels[i] == k:
            t += 1.0 - eps
        return t
    return (1.0 - eps) * T[i, k] + eps * inv_k


# --- a vectorisable exp ---------------------------------------------------------
#
# Numba calls libm's scalar exp, which LLVM cannot vectorise; softmax needs m*K
# of them, as many as the rest of the work on shapes with many classes.  The
# function below is plain arithmetic on float64 and int64 lanes, so a loop over
# it becomes SIMD code.  Method: exp(x) = 2^n exp(r) with n = round(x / ln 2)
# and r = x - n ln 2 split in two parts (Cody and Waite) so that r is exact to
# double precision; exp(r) for |r| <= ln(2)/2 is its Taylor polynomial of
# degree 13 (truncation error below 2e-17), evaluated by Horner's rule; 2^n is
# assembled from its bits.  n is rounded by adding and subtracting 1.5 * 2^52
# (the "shifter"): the sum's last mantissa bits then hold n, and no conversion
# between float64 and int64 is needed, which AVX2 has no vector instruction
# for (with ``math.floor`` and ``int`` conversions the loop stayed scalar, at
# about 20 ns an exp on the development machine).  Measured against libm over
# 10^7 points of [-50, 0]: at most 1.01 ulp apart.  It is compiled as an
# exact_kernel, without "reassoc", which would undo the shifter and the
# two-part reduction.

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 rounded to 32 significant bits
_LN2_LO = 1.90821492927058770002e-10  # ln 2 - _LN2_HI
_EXP_MIN = -708.0  # exp below this is subnormal; it is returned as 0
_SHIFTER = 6755399441055744.0  # 1.5 * 2^52: x + _SHIFTER rounds x to an integer (|x| < 2^51)
_SHIFTER_BITS = 0x4338000000000000  # its bits
_INV_FACT = tuple(1.0 / math.factorial(k) for k in range(14))


@intrinsic
def _float64_from_bits(typingctx, bits):
    """Reinterpret the 64 bits of an int64 as a float64."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def _bits_from_float64(typingctx, value):
    """Reinterpret the 64 bits of a float64 as an int64."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@exact_kernel
def exp_nonpositive(x):
    """exp(x) for x <= 0 within about 1 ulp; 0 below -708; NaN stays NaN."""
    xc = max(x, _EXP_MIN)
    shifted = xc * _LOG2E + _SHIFTER  # n + 1.5 * 2^52, n = round(x / ln 2) in [-1022, 0]
    n = shifted - _SHIFTER
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    c = _INV_FACT
    p = c[13]
    for k in range(12, -1, -1):  # Horner's rule; LLVM unrolls it (same code, same bits)
        p = p * r + c[k]
    result = p * _float64_from_bits((_bits_from_float64(shifted) - _SHIFTER_BITS + 1023) << 52)
    if x < _EXP_MIN:
        result = 0.0
    if x != x:
        result = x
    return result


# The same method in float32, for logits held in bfloat16 (fastsoftmax._bf16):
# eight lanes a vector instead of four, and a Taylor polynomial of degree 7
# (truncation error below 1.2e-7 for |r| <= ln(2)/2); 2^n from the bits of a
# float32 shifter, 1.5 * 2^23.  Every constant is a float32, so that no
# operation is promoted to float64.

_LOG2E_32 = np.float32(_LOG2E)
_LN2_HI_32 = np.float32(0.693359375)  # ln 2 to 9 significant bits: n * it is exact
_LN2_LO_32 = np.float32(math.log(2.0) - 0.693359375)
_EXP_MIN_32 = np.float32(-87.0)  # exp below this is near float32's smallest normal: 0
_SHIFTER_32 = np.float32(12582912.0)  # 1.5 * 2^23
_SHIFTER_BITS_32 = 0x4B400000
_INV_FACT_32 = tuple(np.float32(1.0 / math.factorial(k)) for k in range(8))
_ZERO_32 = np.float32(0.0)


@intrinsic
def float32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an int64 as a float32."""
    sig = types.float32(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())

    return sig, codegen


@intrinsic
def bits_from_float32(typingctx, value):
    """The 32 bits of a float32, as a non-negative int64."""
    sig = types.int64(types.float32)

    def codegen(context, builder, signature, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))

    return sig, codegen


@exact_kernel
def exp_nonpositive32(x):
    """exp(x) for float32 x <= 0 within a few float32 ulp; 0 below -87; NaN stays NaN."""
    xc = max(x, _EXP_MIN_32)
    shifted = xc * _LOG2E_32 + _SHIFTER_32
    n = shifted - _SHIFTER_32
    r = (xc - n * _LN2_HI_32) - n * _LN2_LO_32
    c = _INV_FACT_32
    p = c[7]
    for k in range(6, -1, -1):
        p = p * r + c[k]
    result = p * float32_from_bits((bits_from_float32(shifted) - _SHIFTER_BITS_32 + 127) << 23)
    if x < _EXP_MIN_32:
        result = _ZERO_32
    if x != x:
        result = x
    return result


@serial_kernel
def tile_shifted_logits(Zr, b, S, mx, cap):
    """Class-major shifted logits of a tile of R samples.

    ``Zr`` (R, >= K) holds the tile's logits without the intercept ``b`` (K,)
    in its first K columns.  Writes ``S[k, r] = z_rk - mx_r`` into ``S``
    (K, R) float64, with ``z_rk = Zr[r, k] + b[k]`` and the row maxima
    ``mx_r`` into ``mx`` (R,).  With a soft-cap ``cap`` (float > 0; None:
    none, and numba compiles the code out) the logits are first mapped to
    ``cap tanh(z_rk / cap)``.  In class-major order every inner loop runs
    over the samples of the tile (see :func:`tile_loss_and_coef`).
    """
    K, R = S.shape
    for k in range(K):
        bk = b[k]
        for r in range(R):
            S[k, r] = Zr[r, k] + bk
    if cap is not None:
        for k in range(K):
            for r in range(R):
                S[k, r] = cap * math.tanh(S[k, r] / cap)
    for r in range(R):
        mx[r] = S[0, r]
    for k in range(1, K):
        for r in range(R):
            mx[r] = max(mx[r], S[k, r])
    for k in range(K):
        for r in range(R):
            S[k, r] = S[k, r] - mx[r]


@serial_kernel
def tile_exp_rowsums(S, ssum):
    """``S <- exp(S)`` in place for shifted logits ``S`` (K, R) float64, C-contiguous,
    in one SIMD pass over the K R entries; ``ssum[r] = sum_k S[k, r]`` (R,)."""
    K, R = S.shape
    flat = S.reshape(K * R)
    for q in range(K * R):
        flat[q] = exp_nonpositive(flat[q])
    for r in range(R):
        ssum[r] = 0.0
    for k in range(K):
        for r in range(R):
            ssum[r] += S[k, r]


@serial_kernel
def tile_softmax_exp(Zr, b, S, mx, ssum):
    """Class-major shifted exponentials of a tile of R samples (the Hessian kernels').

    :func:`tile_shifted_logits` then :func:`tile_exp_rowsums`: on return
    ``S[k, r] = exp(z_rk - mx_r)`` (``S`` (K, R) float64, C-contiguous), ``mx``
    (R,) holds the row maxima and ``ssum`` (R,) the row sums, so that
    ``p_rk = S[k, r] / ssum[r]``.
    """
    tile_shifted_logits(Zr, b, S, mx, None)
    tile_exp_rowsums(S, ssum)


@serial_kernel
def tile_sample_scale(rows, R, labels, T, sw, eps, out):
    """``out[r] = w_i s_i`` for the tile's samples ``i = rows[r]``, r < R.

    ``s_i = sum_k t_ik`` is the smoothed target total (1 for class indices,
    whose smoothed rows sum to one), ``w_i`` the sample weight (1 when ``sw``
    is empty).  ``out`` (>= R,) float64.
    """
    use_labels = labels.shape[0] > 0
    weighted = sw.shape[0] > 0
    K = T.shape[1]
    inv_k = 1.0 / K
    for r in range(R):
        i = rows[r]
        s = 1.0
        if not use_labels:
            s = 0.0
            for k in range(K):
                s += (1.0 - eps) * T[i, k] + eps * inv_k
        out[r] = (sw[i] if weighted else 1.0) * s


@serial_kernel
def tile_probabilities(Zr, b, P, aux, rows, labels, T, sw, eps):
    """Class-major probabilities of a tile of R samples, and the samples' scales
    (the exact Hessian kernels').

    ``Zr`` (R, >= K) holds the logits without the intercept ``b`` (K,).  On
    return ``P`` (K, R) float64, C-contiguous, holds ``p_rk`` and
    ``aux[2, :R]`` the scales ``w_i s_i`` of :func:`tile_sample_scale`;
    ``aux`` (3, >= R) is float64 scratch.
    """
    K, R = P.shape
    ssum = aux[1, :R]
    tile_softmax_exp(Zr, b, P, aux[0, :R], ssum)
    for k in range(K):
        for r in range(R):
            P[k, r] = P[k, r] / ssum[r]
    tile_sample_scale(rows, R, labels, T, sw, eps, aux[2])


@serial_kernel
def tile_loss_and_coef(Zr, D, E, aux, b, labels, T, sw, eps, rows, gb, cw, zl, cap, lout):
    """Softmax, loss and logit gradient for a tile of R samples.

    ``Zr`` (R, K), in the working dtype, holds the tile's logits without the
    intercept ``b`` (K,), one row per sample: row r belongs to sample
    ``i = rows[r]`` (``rows`` (R,) int64 indexes ``labels``, ``T`` and ``sw``).
    ``E`` (>= K*R) and ``aux`` (4, >= R) are float64 scratch buffers.  On
    return ``D`` (K, R), in the working dtype, holds in column r the weighted
    logit gradient ``w_i (s_i p_i - t_i)`` of sample i, and the tile's sum of
    those columns has been added to ``gb`` (K,) float64.  Returns the tile's
    weighted loss ``sum_r w_i sum_k t_ik (lse_i - z_ik)``, computed as
    ``sum_k t_ik (mx_i - z_ik) + s_i log(sum_k exp(z_ik - mx_i))`` so that no
    large logit is exponentiated or subtracted from another one.

    The options of issue 10, each ``None`` when unused (numba then prunes
    its code from the specialisation, so the default path compiles as
    before):

    * ``cw`` (K,) float64 class weights: the targets become
      ``c_ik = cw_k t_ik`` (loss ``sum_k c_ik (lse_i - z_ik)``, logit
      gradient ``w_i (s_i p_i - c_i)`` with ``s_i = sum_k c_ik``);
    * ``zl`` float: adds ``w_i zl lse_i^2`` to the loss and
      ``2 w_i zl lse_i p_i`` to the logit gradient;
    * ``cap`` float > 0: the logits (with the intercept) become
      ``cap tanh(z / cap)``, and the gradient is multiplied by the
      derivative ``1 - tanh^2(z / cap)``, computed as ``1 / cosh^2(z / cap)``
      (no cancellation where tanh saturates);
    * ``lout`` (m,) float64: receives each sample's weighted loss at
      ``lout[i]``.

    The logits are transposed on the first pass: in class-major order every
    inner loop runs over the samples of the tile, so the loops vectorise
    whatever K is, even for two or three classes.  (The GEMMs themselves are
    fastest with row-major logits and a class-major gradient; measured.)
    A loop that reduces to a scalar never also stores: such a loop would be
    vectorised behind a run-time aliasing check, and buffer addresses would
    then decide the summation order and the result's last bits.
    """
    R, K = Zr.shape
    inv_k = 1.0 / K
    S = E[: K * R].reshape((K, R))
    mx = aux[0, :R]
    tz = aux[1, :R]  # sum_k t_ik (z_ik - mx_i), later the weighted scale
    tsum = aux[2, :R]
    ssum = aux[3, :R]
    tile_shifted_logits(Zr, b, S, mx, cap)
    use_labels = labels.shape[0] > 0
    weighted = sw.shape[0] > 0
    # A class whose target is 0 contributes nothing, even when its logit is
    # -inf (a masked class): 0 * (-inf) must not turn the loss into NaN.
    if cw is not None:
        tile_weighted_targets(S, labels, T, eps, rows, cw, tz, tsum)
    elif use_labels:
        for r in range(R):
            tz[r] = 0.0
        if eps > 0.0:
            for k in range(K):
                for r in range(R):
                    tz[r] += S[k, r]
        for r in range(R):
            tz[r] = (1.0 - eps) * S[labels[rows[r]], r] + eps * inv_k * tz[r]
            tsum[r] = 1.0
    else:
        for r in range(R):
            tz[r] = 0.0
            tsum[r] = 0.0
        for k in range(K):
            for r in range(R):
                t = (1.0 - eps) * T[rows[r], k] + eps * inv_k
                tz[r] += t * S[k, r] if t != 0.0 else 0.0
                tsum[r] += t
    tile_exp_rowsums(S, ssum)  # one SIMD pass of exponentials over the tile
    loss = 0.0
    if zl is not None or lout is not None:
        for r in range(R):
            w = sw[rows[r]] if weighted else 1.0
            log_s = math.log(ssum[r])
            li = tsum[r] * log_s - tz[r]
            if zl is not None:
                lse = mx[r] + log_s
                li += zl * lse * lse
                tsum[r] += 2.0 * zl * lse  # the scale of p_i in the gradient
            li = w * li
            if lout is not None:
                lout[rows[r]] = li
            loss += li
    else:
        for r in range(R):
            w = sw[rows[r]] if weighted else 1.0
            loss += w * (tsum[r] * math.log(ssum[r]) - tz[r])
    scale = tz  # reuse: w_i s_i / sum_k exp(z_ik - mx_i)
    for r in range(R):
        w = sw[rows[r]] if weighted else 1.0
        scale[r] = w * tsum[r] / ssum[r]
    for k in range(K):
        for r in range(R):
            S[k, r] = scale[r] * S[k, r]
    if cw is not None:
        tile_subtract_weighted_targets(S, labels, T, sw, eps, rows, cw)
    elif use_labels:
        off = eps * inv_k
        for k in range(K):
            for r in range(R):
                w = sw[rows[r]] if weighted else 1.0
                S[k, r] -= w * off
        for r in range(R):
            w = sw[rows[r]] if weighted else 1.0
            S[labels[rows[r]], r] -= w * (1.0 - eps)
    else:
        for k in range(K):
            for r in range(R):
                w = sw[rows[r]] if weighted else 1.0
                S[k, r] -= w * ((1.0 - eps) * T[rows[r], k] + eps * inv_k)
    if cap is not None:  # d(cap tanh(z / cap))/dz = 1 - tanh^2(z / cap) = 1 / cosh^2(z / cap)
        for k in range(K):  # (1 - tanh^2 would cancel where tanh saturates)
            bk = b[k]
            for r in range(R):
                ch = math.cosh((Zr[r, k] + bk) / cap)
                S[k, r] = S[k, r] / (ch * ch)
    for k in range(K):
        acc = 0.0
        for r in range(R):
            acc += S[k, r]
        gb[k] += acc
        for r in range(R):
            D[k, r] = S[k, r]
    return loss


@serial_kernel
def tile_weighted_targets(S, labels, T, eps, rows, cw, tz, tsum):
    """With class weights ``cw`` (K,): ``tz[r] = sum_k c_ik S[k, r]`` and
    ``tsum[r] = sum_k c_ik`` for the tile's shifted logits ``S`` (K, R), where
    ``c_ik = cw_k t_ik`` (``t`` the smoothed targets).  A zero coefficient
    adds nothing, even against a -inf logit."""
    K, R = S.shape
    inv_k = 1.0 / K
    if labels.shape[0] > 0:
        cwsum = 0.0
        for k in range(K):
            cwsum += cw[k]
        for r in range(R):
            tz[r] = 0.0
        if eps > 0.0:
            for k in range(K):
                ck = cw[k]
                if ck != 0.0:
                    for r in range(R):
                        tz[r] += ck * S[k, r]
        for r in range(R):
            y = labels[rows[r]]
            c = (1.0 - eps) * cw[y]
            tz[r] = (c * S[y, r] if c != 0.0 else 0.0) + eps * inv_k * tz[r]
            tsum[r] = c + eps * inv_k * cwsum
    else:
        for r in range(R):
            tz[r] = 0.0
            tsum[r] = 0.0
        for k in range(K):
            for r in range(R):
                t = cw[k] * ((1.0 - eps) * T[rows[r], k] + eps * inv_k)
                tz[r] += t * S[k, r] if t != 0.0 else 0.0
                tsum[r] += t


@serial_kernel
def tile_subtract_weighted_targets(S, labels, T, sw, eps, rows, cw):
    """``S[k, r] -= w_i c_ik`` with ``c_ik = cw_k t_ik`` (see :func:`tile_weighted_targets`)."""
    K, R = S.shape
    inv_k = 1.0 / K
    weighted = sw.shape[0] > 0
    if labels.shape[0] > 0:
        off = eps * inv_k
        for k in range(K):
            ck = off * cw[k]
            for r in range(R):
                w = sw[rows[r]] if weighted else 1.0
                S[k, r] -= w * ck
        for r in range(R):
            w = sw[rows[r]] if weighted else 1.0
            y = labels[rows[r]]
            S[y, r] -= w * (1.0 - eps) * cw[y]
    else:
        for k in range(K):
            for r in range(R):
                w = sw[rows[r]] if weighted else 1.0
                S[k, r] -= w * cw[k] * ((1.0 - eps) * T[rows[r], k] + eps * inv_k)
