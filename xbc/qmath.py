"""The integer semantics of a quantized crossbar layer, in one place.

The quantize pass, the simulator (``backends/sim``) and the effective model
(:mod:`xbc.effective`) all use these definitions; they are the contract:

Input (activation) quantization, unsigned ``input_bits`` with a zero point::

    xq = clip(round_half_even(float64(x) / float64(x_scale)) + x_zero_point, 0, 2**input_bits - 1)

``round_half_even`` is ``np.rint`` / ``np.round`` (the same rounding as ONNX ``Round``); the
division is done in float64 (a float32 ``x`` converts exactly). Convolution padding (and the
zero-inserted positions of a ConvTranspose) take the value ``x_zero_point``, the code of a real 0.

Weights: signed symmetric integers ``w_int`` with ``|w_int| <= 2**(weight_bits-1) - 1`` and one
scale per output channel ``w_scale[o]`` (equal entries when quantized per tensor).

Crossbar (integer) accumulation, over the matrix rows ``r`` of the output channel's group::

    acc[o] = sum_r w_int[r, o] * xq[r]                 (exact integer)

Digital output::

    y[o] = x_scale * w_scale[o] * (acc[o] - x_zero_point * colsum[o]) + bias[o],
    colsum[o] = sum_r w_int[r, o]

which equals ``sum_r (w_int[r,o] * w_scale[o]) * ((xq[r] - x_zero_point) * x_scale) + bias[o]``:
the float layer applied to the fake-quantized input with the dequantized weight.

Weight quantization (:func:`quantize_weights`): per channel (or per tensor) the scale that
minimizes the mean squared error ``||w - s * clip(round(w / s), -q, q)||^2`` is chosen by a grid
search over clipping ratios ``s = ratio * max|w| / q`` (vectorized over channels), refined by a
few alternating least-squares steps ``s <- <w, q(w; s)> / <q(w; s), q(w; s)>`` (each step cannot
increase the error: for a fixed integer assignment the least-squares scale is optimal, and for a
fixed scale rounding-and-clipping is the optimal assignment). With ``pow2=True`` the scale is the
best power of two among ``2**e`` for ``e`` in ``ceil(log2(max|w|/q)) - 4 .. + 0``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .layer import to_matrix


# ----------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------

def qmax_weight(bits: int) -> int:
    """Largest weight magnitude for ``bits``-bit symmetric weights: ``2**(bits-1) - 1``."""
    return (1 << (int(bits) - 1)) - 1


def input_levels(bits: int) -> int:
    """Largest input code: ``2**bits - 1``."""
    return (1 << int(bits)) - 1


def quantize_input(x: np.ndarray, scale: float, zp: int, bits: int, dtype=np.int32) -> np.ndarray:
    """``clip(rint(float64(x) / scale) + zp, 0, 2**bits - 1)`` (see the module docstring)."""
    q = np.rint(np.asarray(x, dtype=np.float64) / float(scale)) + int(zp)
    np.clip(q, 0, input_levels(bits), out=q)
    return q.astype(dtype)


def dequantize_input(xq: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """``(xq - zp) * scale`` in float64: the real value an input code stands for."""
    return (np.asarray(xq, np.float64) - int(zp)) * float(scale)


def fake_quantize_input(x: np.ndarray, scale: float, zp: int, bits: int) -> np.ndarray:
    """``dequantize_input(quantize_input(x))`` in float64 (what the effective model computes)."""
    q = np.rint(np.asarray(x, dtype=np.float64) / float(scale)) + int(zp)
    np.clip(q, 0, input_levels(bits), out=q)
    return (q - int(zp)) * float(scale)


def input_params(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Scale and zero point for the real range ``[lo, hi]`` (widened to contain 0).

    ``x_scale = (hi - lo) / (2**bits - 1)`` rounded to the nearest float32 (so that a float32
    and a float64 consumer use the very same number), ``x_zero_point = clip(round(-lo /
    x_scale), 0, 2**bits - 1)``. An empty range (``lo == hi == 0``) gives ``(1.0, 0)``.
    """
    lo = min(float(lo), 0.0)
    hi = max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"input range [{lo}, {hi}] is not finite")
    levels = input_levels(bits)
    if hi - lo <= 0.0:
        return 1.0, 0
    scale = float(np.float32((hi - lo) / levels))
    if scale <= 0.0 or not math.isfinite(scale):  # range below float32 resolution
        scale = float(np.finfo(np.float32).tiny)
    zp = int(np.clip(np.rint(-lo / scale), 0, levels))
    return scale, zp


# ----------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------

def weight_colsum(w_int: np.ndarray, kind: str | None = None, groups: int = 1,
                  attrs: dict | None = None) -> np.ndarray:
    """``colsum[o] = sum_r w_int[r, o]`` (int64 ``[Cout]``).

    ``w_int`` is either the weight tensor (then ``kind``, ``groups`` and, for Gemm, ``attrs``
    say how to view it) or, with ``kind=None``, already the ``[G, R, C]`` matrix.
    """
    M = np.asarray(w_int) if kind is None else to_matrix(kind, np.asarray(w_int), groups, attrs)
    return M.astype(np.int64).sum(axis=1).reshape(-1)


def dequantize_acc(acc: np.ndarray, quant: Any, bias: np.ndarray | None = None, *,
                   colsum: np.ndarray | None = None, axis: int = -1) -> np.ndarray:
    """``y = x_scale * w_scale[o] * (acc - x_zero_point * colsum[o]) + bias[o]`` in float64.

    ``acc`` holds integer accumulations with the output channel on ``axis`` (1 for NCHW conv
    outputs, -1 for Gemm/MatMul). ``quant`` is an :class:`xbc.layer.Quant` (or anything with
    ``x_scale``, ``x_zero_point`` and ``w_scale``); ``colsum`` (from :func:`weight_colsum`) is
    needed when the zero point is not 0.
    """
    acc = np.asarray(acc, np.float64)
    ax = axis % acc.ndim
    view = [1] * acc.ndim
    view[ax] = acc.shape[ax]
    ws = np.asarray(quant.w_scale, np.float64).reshape(view)
    zp = int(quant.x_zero_point)
    if zp:
        if colsum is None:
            raise ValueError("dequantize_acc: colsum is needed when x_zero_point != 0")
        acc = acc - zp * np.asarray(colsum, np.float64).reshape(view)
    y = float(quant.x_scale) * ws * acc
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(view)
    return y


def _mse_per_channel(X: np.ndarray, s: np.ndarray, qmax: int) -> np.ndarray:
    e = np.divide(X, s)                 # e = X - clip(rint(X / s)) * s, in one buffer
    np.rint(e, out=e)
    np.clip(e, -qmax, qmax, out=e)
    e *= s
    np.subtract(X, e, out=e)
    return np.einsum("rk,rk->k", e, e)


def _blocks(X: np.ndarray, block_bytes: int) -> list[tuple[int, np.ndarray]]:
    """``(first channel, block)``: blocks of channels of about ``block_bytes`` in ``X``'s own
    memory order (column views of an F-contiguous ``X``, contiguous copies for a C-contiguous
    one), or ``X`` whole. The exact per-channel sums (einsum) run on these blocks."""
    R, K = X.shape
    kb = max(8, (block_bytes // max(8 * R, 1)) // 8 * 8)
    if K > kb and X.flags.f_contiguous:          # column blocks are contiguous views
        return [(a, X[:, a:a + kb]) for a in range(0, K, kb)]
    if K > kb and X.flags.c_contiguous:
        return [(a, np.ascontiguousarray(X[:, a:a + kb])) for a in range(0, K, kb)]
    return [(0, X)]


def choose_weight_scales(X: np.ndarray, bits: int, pow2: bool = False, refine: int = 4,
                         block_bytes: int = 1 << 20) -> np.ndarray:
    """Min-MSE scales for the columns of ``X`` (``[rows, channels]`` float64): ``[channels]``.

    See the module docstring. A channel whose weights are all 0 gets scale 1. Channels are
    independent. The definition is :func:`choose_weight_scales_reference` (numpy: every
    candidate's error summed by ``np.einsum`` over blocks of channels of about ``block_bytes`` in
    ``X``'s own memory order; each channel's sums run over its rows exactly as on the whole
    matrix, so the result does not depend on the blocking); this returns the same bits (tested),
    three to four times faster: the errors come from numba kernels (one fused pass per
    candidate, candidates that are provably worse stopped early) and are decided exactly by
    :func:`_decide`; only the refinement's ``<w, q>`` sums (whose bits make the next scale) are
    still einsums on those blocks.
    """
    X = np.asarray(X, np.float64)
    R, K = X.shape
    if R == 0 or K == 0:
        return choose_weight_scales_reference(X, bits, pow2, refine, block_bytes)
    kern = _kernels()
    qmax = qmax_weight(bits)
    blocks = _blocks(X, block_bytes)
    XT = X.T if X.T.flags.c_contiguous else np.ascontiguousarray(X.T)   # [K, R], rows contiguous
    amax = kern["abs_max"](XT)
    zero = amax == 0
    amax = np.where(zero, 1.0, amax)
    fac, absb = _bounds(R)
    if pow2:
        e0 = np.ceil(np.log2(amax / qmax))
        S = np.stack([np.exp2(e0)] + [np.exp2(e0 - j) for j in range(1, 5)])
        F = kern["mse_candidates"](XT, S, float(qmax), fac, absb)
        return np.where(zero, 1.0, _decide(blocks, S, F, qmax, zero))
    ratios = _weight_ratios(bits)
    S = np.stack([amax / qmax] + [r * amax / qmax for r in ratios[1:]])
    F = kern["mse_candidates"](XT, S, float(qmax), fac, absb)
    best_s = _decide(blocks, S, F, qmax, zero)
    if not refine:
        return np.where(zero, 1.0, best_s)
    # Refinement. The steps' scales depend on the grid's winner only, not on the errors; what the
    # reference loop keeps is the first of the smallest errors over [winner, step 1, ...]. One
    # pass per step gives its integers (for the next step) and its error.
    Fw = np.where(S == best_s, F, np.inf).min(axis=0)                 # the winner's sum
    steps, errs = [best_s], [Fw]
    exact_qq = R * qmax * qmax < 2 ** 53
    QT = np.empty((K, R))
    s = best_s
    for i in range(refine):
        qq, err = kern["refine_pass"](XT, s, float(qmax), QT)
        if i:
            errs.append(err)                                          # the error of step i
        xq = np.empty(K)
        for a, Xb in blocks:
            b = a + Xb.shape[1]
            # q in the block's memory layout, as numpy makes it: the einsum sums in the same order
            qb = QT[a:b].T
            if not qb.flags.f_contiguous or not Xb.flags.f_contiguous:
                qb = np.empty_like(Xb)
                np.copyto(qb, QT[a:b].T)
            if not exact_qq:
                qq[a:b] = np.einsum("rk,rk->k", qb, qb)
            xq[a:b] = np.einsum("rk,rk->k", Xb, qb)
        s = np.where((qq > 0) & (xq > 0), xq / np.where(qq > 0, qq, 1.0), s)
        steps.append(s)
    errs.append(kern["mse_candidates"](XT, s[None], float(qmax), fac, absb)[0])
    best_s = _decide(blocks, np.stack(steps), np.stack(errs), qmax, zero)
    return np.where(zero, 1.0, best_s)


def _weight_ratios(bits: int) -> np.ndarray:
    # clipping ratios: fine near 1 (high bit widths), coarse down to 0.1 (2-3 bit weights)
    ratios = np.concatenate([np.linspace(1.0, 0.5, 21), np.linspace(0.45, 0.1, 8)])
    if bits >= 6:
        ratios = ratios[ratios >= 0.3]
    return ratios


# ----------------------------------------------------------------------------------------
# weight-scale search: numba kernels and the exact decision
#
# The kernels are plain Python here, compiled by numba (imported lazily) on first use
# (:func:`_kernels`; numba's cache keeps the machine code across processes). Every one
# computes ``q = clip(rint(x / s), -qmax, qmax)`` and ``e = x - q * s`` with each operation
# rounded as numpy rounds it (no fastmath: no reciprocal, no fused multiply-add), so the terms
# ``e * e`` are those :func:`_mse_per_channel` sums; only the summation order differs, which
# :func:`_decide` allows for.
# ----------------------------------------------------------------------------------------

_CHUNK = 256     # rows per chunk of the error kernel (an early stop is checked after each)


def _round_err(x, s, qmax, e):
    # e[:len(x)] = x - clip(rint(x / s), -qmax, qmax) * s
    for r in range(x.shape[0]):
        xr = x[r]
        q = np.rint(xr / s)
        if q > qmax:
            q = qmax
        elif q < -qmax:
            q = -qmax
        e[r] = xr - q * s


def _mse_candidates(XT, S, qmax, fac, absb):
    # out[j, k]: sum_r e_r^2 of channel k (row k of XT [K, R]) for the scale S[j, k], in 8
    # partial sums; +inf where the candidate was stopped early: its partial sum exceeded
    # fac * (the smallest full sum of the channel so far) + absb, which proves it worse (see
    # _bounds). The previous channel's best candidate is tried first (channels of a layer tend
    # to agree), then the others in order.
    n, K = S.shape
    R = XT.shape[1]
    out = np.full((n, K), np.inf)
    e = np.empty(_CHUNK)
    prev = 0
    for k in range(K):
        x = XT[k]
        best = np.inf
        bestj = prev
        for t in range(n):
            if t == 0:
                j = prev
            elif t <= prev:
                j = t - 1
            else:
                j = t
            s = S[j, k]
            limit = best * fac + absb
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
            stopped = False
            c0 = 0
            while c0 < R:
                m = min(_CHUNK, R - c0)
                _round_err_nb(x[c0:c0 + m], s, qmax, e)      # (a slice: vectorizes)
                r = 0
                while r + 8 <= m:
                    a0 += e[r] * e[r]
                    a1 += e[r + 1] * e[r + 1]
                    a2 += e[r + 2] * e[r + 2]
                    a3 += e[r + 3] * e[r + 3]
                    a4 += e[r + 4] * e[r + 4]
                    a5 += e[r + 5] * e[r + 5]
                    a6 += e[r + 6] * e[r + 6]
                    a7 += e[r + 7] * e[r + 7]
                    r += 8
                while r < m:
                    a0 += e[r] * e[r]
                    r += 1
                c0 += m
                if c0 < R and ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) > limit:
                    stopped = True
                    break
            if not stopped:
                tot = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
                out[j, k] = tot
                if tot < best:
                    best = tot
                    bestj = j
        prev = bestj
    return out


def _refine_pass(XT, s, qmax, QT):
    # QT[k] = clip(rint(XT[k] / s[k]), -qmax, qmax); returns (qq, err): qq[k] = sum_r QT[k, r]^2
    # (integers: exact in any order while below 2**53) and err[k] the sum of e_r^2 for s[k]
    K, R = XT.shape
    qq = np.zeros(K)
    err = np.zeros(K)
    e = np.empty(R)
    for k in range(K):
        x = XT[k]
        sk = s[k]
        qk = QT[k]
        for r in range(R):
            xr = x[r]
            q = np.rint(xr / sk)
            if q > qmax:
                q = qmax
            elif q < -qmax:
                q = -qmax
            qk[r] = q
            e[r] = xr - q * sk
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = 0.0
        r = 0
        while r + 4 <= R:
            a0 += qk[r] * qk[r]
            a1 += qk[r + 1] * qk[r + 1]
            a2 += qk[r + 2] * qk[r + 2]
            a3 += qk[r + 3] * qk[r + 3]
            b0 += e[r] * e[r]
            b1 += e[r + 1] * e[r + 1]
            b2 += e[r + 2] * e[r + 2]
            b3 += e[r + 3] * e[r + 3]
            r += 4
        while r < R:
            a0 += qk[r] * qk[r]
            b0 += e[r] * e[r]
            r += 1
        qq[k] = (a0 + a1) + (a2 + a3)
        err[k] = (b0 + b1) + (b2 + b3)
    return qq, err


def _quantize_int(XT, s, qmax):
    # int32 clip(rint(XT[k] / s[k]), -qmax, qmax)
    K, R = XT.shape
    Q = np.empty((K, R), np.int32)
    for k in range(K):
        x = XT[k]
        sk = s[k]
        for r in range(R):
            q = np.rint(x[r] / sk)
            if q > qmax:
                q = qmax
            elif q < -qmax:
                q = -qmax
            Q[k, r] = np.int32(q)
    return Q


def _abs_max(XT):
    # max_r |XT[k, r]| (0 for no rows)
    K, R = XT.shape
    out = np.zeros(K)
    for k in range(K):
        m = 0.0
        for r in range(R):
            m = max(m, abs(XT[k, r]))
        out[k] = m
    return out


_round_err_nb = None
_KERNELS: dict = {}


def _kernels() -> dict:
    """The numba kernels, compiled on first use (numba imported then: it is slow to import)."""
    global _round_err_nb  # noqa: PLW0603
    if not _KERNELS:
        import numba  # noqa: PLC0415

        jit = numba.njit(cache=True, nogil=True)
        _round_err_nb = jit(_round_err)
        _KERNELS.update(round_err=_round_err_nb, mse_candidates=jit(_mse_candidates),
                        refine_pass=jit(_refine_pass), quantize_int=jit(_quantize_int), abs_max=jit(_abs_max))
    return _KERNELS


def _bounds(R: int) -> tuple[float, float]:
    """``(fac, absb)`` for sums of ``R`` products. A kernel's sum ``F`` and the einsum ``E`` of
    :func:`_mse_per_channel` add the same rounded terms; each is within ``gamma_R T`` of their
    exact sum ``T`` (any order, with or without FMA; ``gamma_R = R u / (1 - R u)``, ``u =
    2**-53``), and a partial sum ``P`` of them is at most ``(1 + gamma_R) T``. So ``P > fac *
    F_c + absb`` (``fac = 1 + 8 (R + 2) u`` > ``((1 + gamma_R) / (1 - gamma_R))**2``) proves
    ``E > E_c``, and ``|F - E| <= (fac - 1) / 2 * F + absb``; ``absb`` covers the absolute
    rounding of subnormal products, far beyond it."""
    u = 2.0 ** -53
    return 1.0 + 8.0 * (R + 2) * u, (R + 2) * 2.0 ** -1070


def _decide(blocks: list[tuple[int, np.ndarray]], S: np.ndarray, F: np.ndarray, qmax: int,
            zero: np.ndarray) -> np.ndarray:
    """Per channel ``k``: ``S[j, k]`` for the first ``j`` whose :func:`_mse_per_channel` error
    (on ``blocks``) is the smallest, what a loop over ``j`` keeping strictly better errors keeps,
    bit for bit, from the kernels' sums ``F`` (``+inf``: proven worse than another candidate).

    With ``tol = (fac - 1) / 2 * F + absb`` (:func:`_bounds`) each exact error lies within
    ``tol`` of ``F``: candidates whose intervals do not meet the smallest one's compare the same
    way exactly. A channel where another scale's interval meets the smallest is decided on the
    exact :func:`_mse_per_channel` errors of the candidates that come that close (never on
    ResNet-50; exact ties, e.g. of weights on a power-of-two grid, take this path). All-zero
    channels (``zero``) are skipped: their scale is replaced."""
    R = blocks[0][1].shape[0]
    K = F.shape[1]
    ar = np.arange(K)
    fac, absb = _bounds(R)
    done = np.isfinite(F)
    Ff = np.where(done, F, 0.0)
    tol = Ff * ((fac - 1.0) / 2.0) + absb
    m = np.argmin(np.where(done, F, np.inf), axis=0)
    close = done & ((Ff - tol) <= (Ff[m, ar] + tol[m, ar]))                # [n, K], includes m
    best = S[m, ar]
    amb = (close & (S != best)).any(axis=0) & ~zero
    if amb.any():
        exact = np.full(S.shape, np.nan)
        for a, Xb in blocks:
            b = a + Xb.shape[1]
            if not amb[a:b].any():
                continue
            for j in np.flatnonzero(close[:, a:b][:, amb[a:b]].any(axis=1)):
                exact[j, a:b] = _mse_per_channel(Xb, S[j, a:b], qmax)
        for k in np.flatnonzero(amb):
            js = np.flatnonzero(close[:, k])
            best[k] = S[js[int(np.argmin(exact[js, k]))], k]               # first of the smallest
    return best


def choose_weight_scales_reference(X: np.ndarray, bits: int, pow2: bool = False, refine: int = 4,
                                   block_bytes: int = 1 << 20) -> np.ndarray:
    """The definition of :func:`choose_weight_scales` in plain numpy (slow; for the tests)."""
    X = np.asarray(X, np.float64)
    return np.concatenate([_choose_weight_scales_reference(Xb, bits, pow2, refine)
                           for _, Xb in _blocks(X, block_bytes)])


def _choose_weight_scales_reference(X: np.ndarray, bits: int, pow2: bool, refine: int) -> np.ndarray:
    """The definition, on one block (plain numpy): every candidate's error from
    :func:`_mse_per_channel`, the first candidate with the smallest error kept."""
    qmax = qmax_weight(bits)
    amax = np.abs(X).max(axis=0) if X.shape[0] else np.zeros(X.shape[1])
    zero = amax == 0
    amax = np.where(zero, 1.0, amax)
    if pow2:
        e0 = np.ceil(np.log2(amax / qmax))
        best_s = np.exp2(e0)
        best = _mse_per_channel(X, best_s, qmax)
        for j in range(1, 5):
            s = np.exp2(e0 - j)
            err = _mse_per_channel(X, s, qmax)
            better = err < best
            best = np.where(better, err, best)
            best_s = np.where(better, s, best_s)
        return np.where(zero, 1.0, best_s)
    # clipping ratios: fine near 1 (high bit widths), coarse down to 0.1 (2-3 bit weights)
    ratios = np.concatenate([np.linspace(1.0, 0.5, 21), np.linspace(0.45, 0.1, 8)])
    if bits >= 6:
        ratios = ratios[ratios >= 0.3]
    best_s = amax / qmax
    best = _mse_per_channel(X, best_s, qmax)
    for r in ratios[1:]:
        s = r * amax / qmax
        err = _mse_per_channel(X, s, qmax)
        better = err < best
        best = np.where(better, err, best)
        best_s = np.where(better, s, best_s)
    s = best_s
    for _ in range(refine):
        q = np.clip(np.rint(X / s), -qmax, qmax)
        qq = np.einsum("rk,rk->k", q, q)
        xq = np.einsum("rk,rk->k", X, q)
        s_new = np.where((qq > 0) & (xq > 0), xq / np.where(qq > 0, qq, 1.0), s)
        err = _mse_per_channel(X, s_new, qmax)
        better = err < best
        best = np.where(better, err, best)
        best_s = np.where(better, s_new, best_s)
        s = s_new
    return np.where(zero, 1.0, best_s)


def quantize_weights(W: np.ndarray, kind: str, groups: int, attrs: dict | None, bits: int, *,
                     per_channel: bool = True, pow2: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Float weight tensor -> (``w_int`` int32 in the tensor's layout, ``w_scale`` float64 [Cout])."""
    M = to_matrix(kind, np.asarray(W, np.float64), groups, attrs)  # [G, R, C]
    G, R, C = M.shape
    qmax = qmax_weight(bits)
    if per_channel:
        X = M.transpose(1, 0, 2).reshape(R, G * C)
        s = choose_weight_scales(X, bits, pow2)
    else:
        s1 = choose_weight_scales(M.reshape(-1, 1), bits, pow2)
        s = np.full(G * C, s1[0])
    # Q = clip(rint(M / s)) as int32, channel-major ([G*C, R]: rows contiguous), then viewed as [G, R, C]
    XT = M.transpose(0, 2, 1).reshape(G * C, R)
    if G * C and R:
        QT = _kernels()["quantize_int"](np.ascontiguousarray(XT), np.ascontiguousarray(s, np.float64), float(qmax))
    else:
        QT = np.zeros((G * C, R), np.int32)
    Q = QT.reshape(G, C, R).transpose(0, 2, 1)
    from .layer import from_matrix  # noqa: PLC0415
    w_int = from_matrix(kind, Q, tuple(np.shape(W)), groups, attrs)
    if not (w_int.dtype == np.int32 and w_int.flags.c_contiguous):
        w_int = w_int.astype(np.int32)       # (from_matrix's layout, as astype keeps it)
    return w_int, s.astype(np.float64)


def weight_error(W: np.ndarray, w_int: np.ndarray, w_scale: np.ndarray, kind: str, groups: int,
                 attrs: dict | None = None) -> tuple[float, float]:
    """(signal power ``sum w^2``, error power ``sum (w - s*w_int)^2``) of a layer, float64."""
    M = to_matrix(kind, np.asarray(W, np.float64), groups, attrs)
    E = to_matrix(kind, np.array(w_int, np.float64), groups, attrs)   # a fresh array: worked in place
    G, R, C = M.shape
    E *= np.asarray(w_scale, np.float64).reshape(G, 1, C)
    np.subtract(M, E, out=E)                                        # E = M - Q * s
    sig = float(np.sum(M * M))
    E *= E
    return sig, float(np.sum(E))


def sqnr_db(signal_power: float, error_power: float) -> float:
    if error_power <= 0.0:
        return float("inf")
    if signal_power <= 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal_power / error_power)
