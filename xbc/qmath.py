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


def choose_weight_scales(X: np.ndarray, bits: int, pow2: bool = False, refine: int = 4,
                         block_bytes: int = 1 << 20) -> np.ndarray:
    """Min-MSE scales for the columns of ``X`` (``[rows, channels]`` float64): ``[channels]``.

    See the module docstring. A channel whose weights are all 0 gets scale 1. Channels are
    independent: a C- or F-contiguous ``X`` is processed in blocks of channels of about
    ``block_bytes``, in ``X``'s own memory order (every candidate scale of a block while it is in
    cache); each channel's sums then run over its rows exactly as on the whole matrix, so the
    result does not depend on the blocking.
    """
    X = np.asarray(X, np.float64)
    R, K = X.shape
    kb = max(8, (block_bytes // max(8 * R, 1)) // 8 * 8)
    # blocks keep X's memory order (the order numpy sums each channel's rows in)
    if K > kb and X.flags.f_contiguous:          # column blocks are contiguous views
        return np.concatenate([_choose_weight_scales(X[:, a:a + kb], bits, pow2, refine) for a in range(0, K, kb)])
    if K > kb and X.flags.c_contiguous:
        return np.concatenate([_choose_weight_scales(np.ascontiguousarray(X[:, a:a + kb]), bits, pow2, refine)
                               for a in range(0, K, kb)])
    return _choose_weight_scales(X, bits, pow2, refine)


def _choose_weight_scales(X: np.ndarray, bits: int, pow2: bool, refine: int) -> np.ndarray:
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
    Q = np.clip(np.rint(M / s.reshape(G, 1, C)), -qmax, qmax).astype(np.int32)
    from .layer import from_matrix  # noqa: PLC0415
    w_int = from_matrix(kind, Q, tuple(np.shape(W)), groups, attrs).astype(np.int32)
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
