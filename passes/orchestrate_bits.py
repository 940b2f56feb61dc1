"""orchestrate-bits: choose each weight's signed-digit form and, within an explicit error budget,
clear nearly empty column segments (SME step 1, "bit-sparse pattern orchestration").

Digits
    ``layer.digits`` is int8 ``[P, G, R, C]`` in the matrix view (:func:`xbc.layer.to_matrix`):
    ``w = sum_p D[p] * B**p``, ``B = 2**cell_bits``, ``|D[p]| <= B - 1``,
    ``P = n_planes(weight_bits, cell_bits, encoding, signed_digit=True)``. With the ``split``
    encoding a positive digit of plane ``p`` is a cell of the positive column set of that plane,
    a negative digit one of the negative set.

Column segment
    ``(plane p, sign s, group g, row block b, column c)``: the cells of one physical column over
    ``segment-rows`` consecutive matrix rows (default ``target.rows``, one crossbar row block), in
    the layer's row order (``layer.row_perm`` when set, see ``pre-reorder``). A segment with no
    non-zero digit needs no crossbar column: squeeze drops it. The 2P segments of one ``(g, b, c)``
    form a *unit*; a weight's digits only touch the segments of its own unit.

Steps, per layer (numpy-vectorized over the whole layer; loops run over rounds and batches):

1. **Recoding (lossless).** Canonical signed digits: the non-adjacent form (NAF) for
   ``cell_bits = 1`` (fewest non-zero digits, no two adjacent), the fewest-non-zero-digit radix
   ``2**cell_bits`` signed-digit form for wider cells (2-state Viterbi over the carry), or
   sign-magnitude when ``target.signed_digits`` is false. With signed digits each unit then
   takes, among these forms, the one with the fewest non-empty segments (ties: fewer digits):
   NAF; sign-magnitude (NAF can touch one more plane: ``7 = 8 - 1``); and the
   **two's-complement form** (``twos-complement``, default on): with the unit's smallest top
   plane ``k`` such that all its weights lie in ``[-B**k, B**k - 1]``, a negative weight is
   ``-B**k`` plus the non-negative digits of ``w + B**k``, so the unit uses the positive segments
   of planes ``< k`` and ONE negative segment (plane ``k``) instead of two sign-magnitude sets —
   about half the segments for mixed-sign units, at the price of more non-zero digits (cells)
   per weight (also mirrored, for mostly negative units). Every weight keeps its value.
2. **max-digits k (lossy, optional).** Each weight becomes the value closest to its float target
   ``t = w_float / w_scale`` (in integer units, within ``+-(2**(b-1)-1)``) that has at most ``k``
   non-zero digits in the minimal form — exactly what "keep the k most significant digits and
   round the rest" approximates. This is a user choice and is applied regardless of the budget;
   its error counts against it.
3. **Segment clearing (lossy, within the budget).** Clearing segment ``(p, s)`` of a unit
   removes the plane-``p`` digit of every weight in it and re-represents each such weight as
   the value closest to its target ``t`` that the unit's *other currently non-empty* segments
   can represent, with the fewest digits (``compensate=all``, default: every plane; an
   exhaustive table per allowed (plane, sign) set, cached), or — ``compensate=lower`` — keeping
   the digits above ``p`` and re-quantizing the residual ``t - (digits above p)`` into the
   non-empty segments below ``p``. Values stay within ``+-(2**(b-1)-1)`` and no empty segment is
   refilled. The cost of a move is the increase of the layer's squared weight error against the
   float weights (``sum_o w_scale[o]^2 * sum_r (t - w')^2``, float units); a move of cost 0 is a
   lossless re-representation. Moves are taken greedily, cheapest first, at most one per unit
   per round with costs recomputed for the units that changed, under doubling cost thresholds,
   while the budget lasts.

Error budget (``error-budget``, default 0.25)
    ``E_q = sum w_scale^2 (t - w_int_initial)^2`` is the layer's quantization noise power (after
    quantize). The pass keeps ``E = sum w_scale^2 (t - w_int)^2 <= (1 + error_budget) * E_q``:
    0.25 allows the weight noise power to grow by 25 % (the SQNR to drop by at most
    ``10 log10(1.25) = 0.97 dB``); ``0`` allows only lossless changes. For a pre-quantized layer
    whose float weights are exactly ``w_scale * w_int`` (``E_q = 0``) the nominal rounding noise
    ``sum w_scale^2 / 12`` is used instead. The measured ``E / E_q - 1`` is reported per layer.

Row order (``pre-reorder``, default on)
    Segments depend on which rows share a block. When the layer has no ``row_perm`` yet, the
    pass first picks one with reorder's heuristics on the recoded digits
    (:func:`xbc.passes.reorder.choose_row_perm`, ``pre-reorder-swaps`` refinement rounds), clears
    segments in that order and stores it in ``layer.row_perm``; the reorder pass that follows
    keeps it unless it finds a better one.

Options: ``error-budget``, ``max-digits``, ``segment-rows``, ``max-segment-digits`` (only
segments holding at most this many digits are tried; default all), ``max-rounds`` (greedy
rounds), ``pre-reorder``, ``pre-reorder-swaps``, ``compensate``, ``twos-complement``.

Measured (tests/graphs.py crossbar models, 8-bit, 128-row segments, all 12 models together):
non-empty segments 11,119 (sign-magnitude) -> 6,483 lossless (-42 %), 6,254 at budget 0.25,
5,962 at 1, 4,724 at 16; non-zero digits per weight 2.41 -> 3.79 (lossless) -> 2.65 (budget 16);
after slice-bits + squeeze 101 dense crossbars -> 57 (budget 0.25). ResNet-50 (examples/models.py,
synthetic trained-like weights): 21,878 dense -> 12,059 crossbars at budget 0.25 (weight SQNR
38.21 -> 37.24 dB), non-zero digits per weight 2.27 -> 3.60.

Implementation (speed; every path gives the same digits, values and statistics as the plain
digit-array formulation, which stays as the general path and is tested against the fast ones)
    With ``cell_bits = 1`` step 1 works on bit masks (one bit per plane, positive and negative
    digits apart, per weight in the unit layout): NAF, sign-magnitude and both two's-complement
    forms come straight from the values, per-unit segment and digit counts are popcounts, the
    chosen digits are unpacked once. In step 3 a candidate's cost needs, per entry, the value
    nearest to its target in the candidate's table (the values the unit's other non-empty
    segments can represent): the tables have dense neighbour arrays indexed by ``ceil(x)``, so
    an entry costs a few gathers instead of a binary search, and entries are processed in
    cache-sized blocks. The pre-reorder row order is chosen on bit masks made from the values.
    These numpy paths are the reference; by default numba kernels
    (:mod:`xbc.passes._orchestrate_kernels`, imported on first use, compiled once and cached)
    do the same work in single passes: step 1 with the unit layouts for ``cell_bits = 1``, the
    candidates' costs and moves, the greedy rounds' bookkeeping, the matrix outputs (in the
    numpy path's memory layouts) and the error-power terms, the large ones split over threads
    into disjoint parts. They give the same digits, values and statistics bit for bit (each cost
    adds its entries in the same order; tests/test_orchestrate.py compares them).
    Synthetic ResNet-50 (25.5 M weights): about 5 s instead of 18 s for this pass (2 cores).

``quant.w_int`` is updated to the new values (``quant.w_int_initial`` keeps quantize's).
Weights that a previous lossy pass zeroed (``w_int == 0 != w_int_initial``, e.g. cim-sparsity)
stay zero. Statistics per layer (``layer.stats["orchestrate"]``) and in total: non-zero digits
per weight (sign-magnitude binary, recoded, final), non-empty / empty column segments (for
sign-magnitude planes as slice-bits would cut them without this pass, after recoding, final),
weight SQNR before and after, and the error increase.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np

from xbc import qmath
from xbc.errors import OptionError, VerifyError
from xbc.ir import Graph
from xbc.layer import digits_value, from_matrix, n_planes, sign_magnitude_digits, to_matrix
from xbc.passmanager import Pass, PassContext, PassResult, register


# ========================================================================================
# signed-digit arithmetic (shared with reorder and cim-sparsity)
# ========================================================================================

def _mask_dtype(planes: int):
    """Smallest unsigned dtype holding ``planes`` bits (one bit per digit plane)."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if planes <= 8 * np.dtype(dt).itemsize:
            return np.dtype(dt)
    raise ValueError(f"{planes} digit planes do not fit a 64-bit mask")


def mask_bits(mask: np.ndarray, planes: int, axis: int = 0) -> np.ndarray:
    """Bit planes of unsigned masks: uint8 0/1 ``[planes, *mask.shape]`` (``axis=0``) or
    ``[*mask.shape, planes]`` (``axis=-1``); plane ``p`` is bit ``p``."""
    m = np.asarray(mask)
    if not m.flags.c_contiguous:
        m = m.copy()
    nbytes = m.dtype.itemsize
    by = m.astype(m.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(m.shape + (nbytes,))
    if axis == 0:
        bits = np.unpackbits(np.moveaxis(by, -1, 0), axis=0, bitorder="little")
        return bits[:planes] if planes < 8 * nbytes else bits
    bits = np.unpackbits(by, axis=-1, bitorder="little")
    return np.ascontiguousarray(bits[..., :planes]) if planes < 8 * nbytes else bits


def naf_masks(w: np.ndarray, planes: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-adjacent form of integers ``w`` as bit masks (positive-digit planes, negative-digit
    planes), unsigned, same shape as ``w``."""
    w = np.asarray(w)
    dt = _mask_dtype(planes)
    small = False
    lo, hi = (int(w.min()), int(w.max())) if w.size and w.dtype.kind in "iu" else (0, 1 << 62)
    if planes <= 29 and -(1 << 30) < lo and hi < (1 << 30):
        n = np.abs(w.astype(np.int32, copy=False))                  # every mask fits 31 bits
        small = max(-lo, hi) < (1 << (planes - 1))                  # NAF of n needs <= planes digits
    else:
        n = np.abs(w.astype(np.int64, copy=False))
        if planes <= 29 and n.size and int(n.max()) < (1 << planes):   # then every mask fits 30 bits
            n = n.astype(np.int32)
    h = n >> 1
    t = n + h
    c = h ^ t
    pos = t & c
    neg = h & c
    if not small and np.any((pos | neg) >> planes):
        raise ValueError(f"values need more than {planes} signed binary digits")
    pos, neg = pos.astype(dt), neg.astype(dt)
    gt = w > 0
    return np.where(gt, pos, neg), np.where(gt, neg, pos)


def naf_digits(w: np.ndarray, planes: int) -> np.ndarray:
    """Non-adjacent form of integers ``w`` (any shape) -> int8 ``[planes, *w.shape]``."""
    pm, nm = naf_masks(w, planes)
    return mask_bits(pm, planes).view(np.int8) - mask_bits(nm, planes).view(np.int8)


def min_weight_digits(w: np.ndarray, cell_bits: int, planes: int,
                      allow_pos: np.ndarray | None = None, allow_neg: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Fewest-non-zero signed digits in base ``2**cell_bits`` -> (int8 ``[planes, N]``, ok ``[N]``).

    ``w`` is flattened to ``[N]``. ``allow_pos`` / ``allow_neg`` (bool ``[planes, N]``) restrict
    which planes may hold a positive / negative digit; ``ok`` is False where no representation
    exists (its digits are then 0).
    """
    B = 1 << cell_bits
    v = np.asarray(w, np.int64).reshape(-1)
    N = v.size
    INF = np.iinfo(np.int32).max // 4
    # state k in {0, 1}: remaining value at plane p is floor(v / B**p) + k
    cost = np.stack([np.zeros(N, np.int64), np.full(N, INF, np.int64)])
    back = np.zeros((planes, 2, N), np.int8)     # previous state
    dig = np.zeros((planes, 2, N), np.int8)      # digit chosen to reach state
    for p in range(planes):
        base = np.floor_divide(v, B ** p)
        new = np.full((2, N), INF, np.int64)
        for k in (0, 1):
            r = base + k
            u = np.mod(r, B)
            # choice A: d = u (no carry); choice B: d = u - B (carry), only if u > 0
            for d, carry in ((u, (r - u) // B - np.floor_divide(v, B ** (p + 1))),
                             (u - B, (r - u + B) // B - np.floor_divide(v, B ** (p + 1)))):
                valid = (carry >= 0) & (carry <= 1)
                if d is not u:
                    valid &= u > 0
                if allow_pos is not None:
                    valid &= ~((d > 0) & ~allow_pos[p])
                if allow_neg is not None:
                    valid &= ~((d < 0) & ~allow_neg[p])
                c_new = cost[k] + (d != 0)
                for kk in (0, 1):
                    sel = valid & (carry == kk) & (c_new < new[kk])
                    new[kk] = np.where(sel, c_new, new[kk])
                    back[p, kk] = np.where(sel, k, back[p, kk])
                    dig[p, kk] = np.where(sel, d, dig[p, kk])
        cost = new
    # the remaining value after the last plane must be 0: floor(v / B**P) + k == 0
    top = np.floor_divide(v, B ** planes)
    end_state = np.where(top == 0, 0, np.where(top == -1, 1, -1))
    ok = (end_state >= 0)
    ok &= np.where(end_state == 1, cost[1], cost[0]) < INF
    out = np.zeros((planes, N), np.int8)
    k = np.where(ok, end_state, 0).astype(np.int64)
    idx = np.arange(N)
    for p in range(planes - 1, -1, -1):
        out[p] = np.where(ok, dig[p, k, idx], 0)
        k = back[p, k, idx].astype(np.int64)
    return out, ok


def recode(w: np.ndarray, cell_bits: int, planes: int, signed: bool) -> np.ndarray:
    """Digits ``[planes, *w.shape]`` of integers ``w``: NAF (cell_bits 1) / minimal-weight signed
    digits when ``signed``, else sign-magnitude."""
    w = np.asarray(w)
    if not signed:
        return sign_magnitude_digits(w.reshape((1, 1, -1)), cell_bits, planes).reshape((planes,) + w.shape)
    if cell_bits == 1:
        return naf_digits(w, planes)
    d, ok = min_weight_digits(w, cell_bits, planes)
    if not ok.all():
        raise ValueError(f"values need more than {planes} signed digits of {cell_bits} bits")
    return d.reshape((planes,) + w.shape)


def recoded_support_masks(w: np.ndarray, cell_bits: int, planes: int, signed: bool) -> np.ndarray:
    """:func:`xbc.passes.reorder.support_mask` of ``recode(w)`` per group (``w`` ``[G, R, C]``),
    straight from the values for ``cell_bits = 1`` (NAF / sign-magnitude bit patterns)."""
    from .reorder import support_mask  # noqa: PLC0415
    if cell_bits != 1:
        return support_mask(recode(w, cell_bits, planes, signed))
    w = np.asarray(w)
    if _Clearer.KERNELS and planes <= 30 and w.dtype.kind in "iu" and w.ndim == 3:
        out = np.empty(w.shape, _mask_dtype(2 * planes))
        ok = _kernels()
        nt, TB = ok.column_tiles(w)
        part = np.zeros(nt, np.int64)
        ok.run_tasks(ok.support_masks, nt, w, planes, signed, out, TB, part, work=w.size)
        allbits = int(np.bitwise_or.reduce(part)) if nt else 0
        if allbits >> planes:
            raise ValueError(f"values need more than {planes} signed binary digits" if signed else
                             f"weights need more than {planes} planes of {cell_bits} bits")
        return out
    if signed:
        pm, nm = naf_masks(w, planes)
    else:
        n = np.abs(w.astype(np.int64, copy=False))
        if np.any(n >> planes):
            raise ValueError(f"weights need more than {planes} planes of {cell_bits} bits")
        dp = _mask_dtype(planes)
        pm, nm = np.where(w > 0, n, 0).astype(dp), np.where(w < 0, n, 0).astype(dp)
    dt = _mask_dtype(2 * planes)
    return np.ascontiguousarray(pm.astype(dt) | (nm.astype(dt) << dt.type(planes)))


def digit_count_table(qmax: int, cell_bits: int, planes: int, signed: bool) -> np.ndarray:
    """Non-zero digit count of every integer in ``[-qmax, qmax]`` (index ``v + qmax``)."""
    vals = np.arange(-qmax, qmax + 1, dtype=np.int64)
    return np.count_nonzero(recode(vals, cell_bits, planes, signed), axis=0)


@lru_cache(maxsize=512)
def representable_table(cell_bits: int, p: int, mask: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values representable by planes ``0..p-1`` whose allowed (plane, sign) pairs are the set bits
    of ``mask`` (bit ``2q``: positive digits on plane ``q``, bit ``2q+1``: negative).

    Returns (sorted int64 values, int8 digits ``[n, p]`` with the fewest non-zero digits, counts).
    """
    B = 1 << cell_bits
    vals = np.zeros(1, np.int64)
    digs = np.zeros((1, 0), np.int8)
    cnt = np.zeros(1, np.int64)
    for q in range(p):
        opts = [0]
        if mask >> (2 * q) & 1:
            opts += list(range(1, B))
        if mask >> (2 * q + 1) & 1:
            opts += list(range(-(B - 1), 0))
        opts = np.array(opts, np.int64)
        nv = (vals[:, None] + opts[None, :] * (B ** q)).reshape(-1)
        nc = (cnt[:, None] + (opts != 0)[None, :]).reshape(-1)
        nd = np.concatenate([np.repeat(digs, len(opts), axis=0),
                             np.tile(opts.astype(np.int8), len(vals))[:, None]], axis=1)
        order = np.lexsort((np.abs(nd).sum(axis=1), nc, nv))
        nv, nc, nd = nv[order], nc[order], nd[order]
        first = np.ones(len(nv), bool)
        first[1:] = nv[1:] != nv[:-1]
        vals, cnt, digs = nv[first], nc[first], nd[first]
    for a in (vals, digs, cnt):
        a.setflags(write=False)
    return vals, digs, cnt


@lru_cache(maxsize=512)
def limited_table(cell_bits: int, p: int, mask: int, limit: int):
    """:func:`representable_table` restricted to values with at most ``limit`` non-zero digits."""
    vals, digs, cnt = representable_table(cell_bits, p, mask)
    if limit >= p:
        return vals, digs, cnt
    keep = cnt <= limit
    out = (vals[keep], digs[keep], cnt[keep])
    for a in out:
        a.setflags(write=False)
    return out


def two_complement_units(Vu: np.ndarray, cell_bits: int, planes: int, mirror: bool = False
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Two's-complement-like digits per unit: ``[..., S]`` ints -> ``[..., S, planes]`` int8.

    Each unit (last axis = its rows) gets the smallest top plane ``k`` with all its values in
    ``[-B**k, B**k - 1]``; a negative ``w`` is ``-1 * B**k`` plus the non-negative base-``B``
    digits of ``w + B**k`` on planes ``< k``, a non-negative one its base-``B`` digits. The
    segments used are the positive ones of planes ``< k`` and the negative one of plane ``k``
    (about half of sign-magnitude's). ``mirror`` does the same for ``-w`` and negates (a unit of
    mostly negative weights). Units whose range needs ``k >= planes`` fall back to 0 digits
    there and are reported in the returned ``fits`` mask (``[...]``, per unit)."""
    B = 1 << cell_bits
    v = -np.asarray(Vu, np.int64) if mirror else np.asarray(Vu, np.int64)
    lo = v.min(axis=-1)
    hi = v.max(axis=-1)
    k = np.zeros(lo.shape, np.int64)
    for kk in range(planes - 1, -1, -1):
        ok = (lo >= -(B ** kk)) & (hi <= B ** kk - 1)
        k = np.where(ok, kk, k)
    fits = (lo >= -(B ** k)) & (hi <= B ** k - 1)
    kw = k[..., None]
    neg = v < 0
    r = np.where(neg, v + B ** kw, v)
    out = np.zeros(v.shape + (planes,), np.int8)
    for p in range(planes):
        d = np.where(p < kw, (r // (B ** p)) % B, np.where((p == kw) & neg, -1, 0))
        out[..., p] = np.where(fits[..., None], d, 0)
    return (-out if mirror else out), fits


def closest_with_max_digits(t: np.ndarray, k: int, qmax: int, cell_bits: int, planes: int,
                            signed: bool) -> np.ndarray:
    """The integer in ``[-qmax, qmax]`` closest to each ``t`` whose minimal form has at most
    ``k`` non-zero digits (ties: fewer digits, then the smaller value)."""
    counts = digit_count_table(qmax, cell_bits, planes, signed)
    vals = np.arange(-qmax, qmax + 1, dtype=np.int64)
    ok = counts <= k
    vals, cnt = vals[ok], counts[ok]
    x = np.clip(np.asarray(t, np.float64), -qmax, qmax)
    j = np.clip(np.searchsorted(vals, x), 1, len(vals) - 1)
    left, right = vals[j - 1], vals[j]
    dl, dr = np.abs(x - left), np.abs(right - x)
    take_right = (dr < dl) | ((dr == dl) & (cnt[j] < cnt[j - 1]))
    return np.where(take_right, right, left).astype(np.int64)


# ========================================================================================
# segments
# ========================================================================================

def _units_layout(M: np.ndarray, perm: np.ndarray, S: int, fill=0) -> np.ndarray:
    """``[G, R, C, ...]`` (rows in original order) -> ``[G, nb, C, S, ...]`` in ``perm`` order,
    rows padded with ``fill`` to ``nb * S``."""
    G, R, C = M.shape[:3]
    nb = -(-R // S)
    rest = M.shape[3:]
    out = np.full((G, nb * S, C) + rest, fill, dtype=M.dtype)
    out[:, :R] = M[np.arange(G)[:, None], np.asarray(perm, np.intp)]
    return np.ascontiguousarray(out.reshape((G, nb, S, C) + rest).swapaxes(2, 3))


def _from_units(U: np.ndarray, perm: np.ndarray, R: int) -> np.ndarray:
    """Inverse of :func:`_units_layout`."""
    G, nb, C, S = U.shape[:4]
    rest = U.shape[4:]
    Mp = U.swapaxes(2, 3).reshape((G, nb * S, C) + rest)[:, :R]
    out = np.empty_like(Mp)
    out[np.arange(G)[:, None], np.asarray(perm, np.intp)] = Mp
    return out


def _digits_from_units(Du: np.ndarray, perm: np.ndarray, R: int) -> np.ndarray:
    """Unit-layout digits ``[G, nb, C, S, P]`` -> contiguous ``[P, G, R, C]`` in original row order
    (``np.moveaxis(_from_units(Du, perm, R), -1, 0)``)."""
    G, nb, C, S, P = Du.shape
    Dp = Du.transpose(4, 0, 1, 3, 2).reshape(P, G, nb * S, C)
    inv = np.empty((G, R), np.intp)
    inv[np.arange(G)[:, None], np.asarray(perm, np.intp)] = np.arange(R)
    return Dp[:, np.arange(G)[:, None], inv]


def _matrix_outputs(G: int, nb: int, R: int, C: int, S: int, P: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty digits ``[P, G, R, C]`` int8 and values ``[G, R, C]`` int64 in the memory layouts that
    :func:`_digits_from_units` and :func:`_from_units` give: when the unit layout's merge of row
    blocks and rows is a view (one block, or ``S = 1``) the results follow its strides (digits
    ordered ``[G, R, C, P]`` in memory, values ``[G, C, R]`` unless ``S = 1``), else digits
    ``[G, R, P, C]`` and values in C order. The same layout keeps later float sums over the
    values (the error powers) adding in the same order, bit for bit."""
    view = nb == 1 or S == 1
    D = (np.empty((G, R, C, P), np.int8).transpose(3, 0, 1, 2) if view else
         np.empty((G, R, P, C), np.int8).transpose(2, 0, 1, 3))
    Vn = np.empty((G, C, R), np.int64).transpose(0, 2, 1) if nb == 1 and S > 1 else np.empty((G, R, C), np.int64)
    return D, Vn


def segment_counts(Du: np.ndarray) -> np.ndarray:
    """Digits in unit layout ``[G, nb, C, S, P]`` -> non-zero counts ``[G, nb, C, P, 2]``
    (sign 0: positive digits, 1: negative digits)."""
    return np.stack([(Du > 0).sum(axis=3), (Du < 0).sum(axis=3)], axis=-1).astype(np.int32)


def count_nonempty_segments(digits: np.ndarray, S: int, perm: np.ndarray | None = None) -> int:
    """Non-empty column segments of matrix-view digits ``[P, G, R, C]`` (rows in ``perm`` order)."""
    P, G, R, C = digits.shape
    perm = np.tile(np.arange(R, dtype=np.int64), (G, 1)) if perm is None else perm
    Du = _units_layout(np.moveaxis(digits, 0, -1), perm, S)
    return int(np.count_nonzero(segment_counts(Du)))


# ========================================================================================
# the greedy segment clearing
# ========================================================================================

@lru_cache(maxsize=4096)
def _clear_table(cell_bits: int, P: int, qmax: int, ekey: int, dense: bool) -> tuple:
    """:meth:`_Clearer._table` of one key, shared by the layers (read-only arrays)."""
    k = ekey >> 5
    vals, digs, cnt = limited_table(cell_bits, int(k >> (2 * P)), int(k & ((1 << (2 * P)) - 1)), int(ekey & 31))
    if not dense:
        tb = (vals.astype(np.float64), cnt, digs, None, None, None, None, None, len(vals))
    else:
        VB = (1 << cell_bits) ** P
        lt = np.searchsorted(vals, np.arange(-VB, VB + 2, dtype=np.int64), side="left")
        n = len(vals)
        vpad = np.concatenate([[-np.inf], vals.astype(np.float64), [np.inf]])
        cpad = np.concatenate([[0], cnt, [0]])
        left, right = vpad[lt].copy(), vpad[lt + 1].copy()
        left[left < -qmax] = -np.inf
        right[right > qmax] = np.inf
        tb = (vals.astype(np.float64), cnt, digs, lt, left, right, cpad[lt], cpad[lt + 1], n)
    for a in tb:
        if isinstance(a, np.ndarray):
            a.setflags(write=False)
    return tb


def _kernels():
    """The numba kernels (:mod:`xbc.passes._orchestrate_kernels`), imported when first used."""
    from . import _orchestrate_kernels  # noqa: PLC0415
    return _orchestrate_kernels


def _clear_costs(ok, args: tuple) -> np.ndarray:
    """The costs of the candidates of ``args`` (:meth:`_Clearer._kernel_args_units`), split over threads."""
    K = len(args[7])
    cost = np.empty(K)
    ok.run_tasks(ok.clear_costs, K, *args, cost, work=64 * K)
    return cost


_KERNEL_TABLES: dict = {}
_MASK_SCRATCH: dict = {}    # zeroed scratch per mask width for batch_ranks_masks
_KERNEL_LOCK = threading.Lock()


def _kernel_table_store(cell_bits: int, P: int, qmax: int, n_new: int) -> dict:
    """The kernels' table store of ``(cell_bits, P, qmax)`` (see :meth:`_Clearer._kernel_tables`):
    per table the neighbours ``lr [.., W, 2]`` (left, right), ``tie [.., W]`` (the right one has
    fewer digits), ``lt [.., W]`` (``W = 2 B**P + 2`` columns) and its digit rows from
    ``digs[first[id]]``, grown by doubling; started afresh before it would exceed 4096 tables."""
    key = (cell_bits, P, qmax)
    kt = _KERNEL_TABLES.get(key)
    if kt is None or kt["n"] + n_new > 4096:
        W = 2 * (1 << cell_bits) ** P + 2
        kt = _KERNEL_TABLES[key] = {"ids": {}, "n": 0, "rows": 0, "lr": np.empty((16, W, 2)),
                                    "tie": np.empty((16, W), bool), "lt": np.empty((16, W), np.int64),
                                    "first": np.empty(16, np.int64), "digs": np.empty((256, P), np.int8)}
    return kt


class _Clearer:
    """State of one layer during segment clearing (unit layout, see :func:`_units_layout`).

    With ``compensate=all`` and dense tables the costs and moves come from the numba kernels of
    :mod:`xbc.passes._orchestrate_kernels` (:attr:`KERNELS`); the numpy code
    (:meth:`_cost_all_planes`, :meth:`evaluate`) is the reference they are tested against and
    gives the same numbers."""

    KERNELS = True   # numba kernels where they apply (False: the numpy reference everywhere)

    BATCH = 4096  # candidates evaluated at once (bounds the temporary memory)

    def __init__(self, Du, Vu, Tu, s2u, cell_bits, qmax, max_digits=None, signed=True, all_planes=True):
        self.signed = signed
        self.all_planes = all_planes
        self.Du, self.Vu, self.Tu, self.s2u = Du, Vu, Tu, s2u   # s2u: [G, 1, C, 1] scale^2
        self.max_digits = max_digits
        self.cb = cell_bits
        self.B = 1 << cell_bits
        self.P = Du.shape[-1]
        self.qmax = qmax
        self.pow = (self.B ** np.arange(self.P, dtype=np.int64))
        qs = np.arange(self.P)
        self.wup = (self.pow[None, :] * (qs[None, :] > qs[:, None])).astype(np.int32)   # [p, q]: B^q if q > p
        self.s2flat = s2u.reshape(-1)
        self.VB = self.B ** self.P            # |every table value| < VB
        self._tables: dict = {}
        self._wt = None
        self._tiny_u = None
        self._orig = None

    def _table(self, ekey: int):
        """Table of one key (``(p << 2P | mask) << 5 | limit``, see :meth:`evaluate`) with its
        dense rank array: ``lt[c + VB]`` = number of table values ``< c`` for integer
        ``c in [-VB, VB + 1]`` (``VB = B**P`` bounds every value), which replaces a binary search,
        and, for targets in ``[-qmax, qmax]`` (no digits kept above the table's planes), the
        neighbours ``left[c + VB]`` = largest value ``< c`` if ``>= -qmax`` (else -inf),
        ``right[c + VB]`` = smallest value ``>= c`` if ``<= qmax`` (else +inf) and their digit
        counts."""
        tb = self._tables.get(ekey)
        if tb is None:
            tb = _clear_table(self.cb, self.P, self.qmax, ekey, self.VB <= self.DENSE_MAX)
            self._tables[ekey] = tb
        return tb

    def _allowed_keys(self, g, b, c, p, s, N):
        """Per candidate: the key of its table, ``(p_tab << 2P | mask) << 5 | limit`` (mask: the
        allowed (plane, sign) pairs, see the class docstring) before the per-entry limit, and the
        segment counts ``[K, P, 2]`` of its unit."""
        P = self.P
        if N is None:
            Dk = self.Du[g, b, c]
            Nk = np.stack([(Dk > 0).sum(axis=1), (Dk < 0).sum(axis=1)], axis=-1)   # [K, P, 2]
        else:
            Nk = N[g, b, c]
        # the unit's non-empty (plane, sign) pairs as bits 2q + sign
        by = np.packbits((Nk > 0).reshape(len(g), 2 * P), axis=1, bitorder="little")
        mask = np.zeros(len(g), np.int64)
        for k in range(by.shape[1]):
            mask |= by[:, k].astype(np.int64) << (8 * k)
        p64, s64 = p.astype(np.int64), s.astype(np.int64)
        if self.all_planes:   # every non-empty pair of the unit except the one being cleared
            mask &= ~(np.int64(1) << (2 * p64 + s64))
        else:                 # only the planes below p; the digits above p stay
            mask &= (np.int64(1) << (2 * p64)) - 1
        if not self.signed:  # sign-magnitude: a weight's digits all have the weight's sign
            mask &= np.int64(sum(1 << (2 * q) for q in range(P))) << s64
        ptab = np.full_like(p, P) if self.all_planes else p
        return (ptab.astype(np.int64) << (2 * P)) + mask, Nk

    SUB = 1024  # candidates per block of entries in :meth:`_cost_all_planes` (cache-sized temporaries)

    DENSE_MAX = 1 << 10   # dense lookup tables while B**P <= this (else binary search)

    def _weight_tables(self):
        """Per weight (flat unit layout), for :meth:`_cost_all_planes`: the clipped target ``x``,
        ``ceil(x) + VB`` and, per unit, whether some ``x`` lies within ``2**-20`` above an integer
        (where the concatenated search's rounded key ``x + off`` can cross it)."""
        if self._wt is None:
            x = np.clip(self.Tu, -self.qmax, self.qmax)
            cx = np.ceil(x)
            cxi = cx.astype(np.int32)           # |ceil(x)| <= qmax + 1, VB <= DENSE_MAX
            cxi += self.VB
            np.subtract(cx, x, out=cx)
            tiny = (cx > 1.0 - 2.0 ** -20).any(axis=-1).reshape(-1)   # x - floor(x) in (0, 2**-20)
            self._wt = (x.reshape(-1), cxi.reshape(-1), tiny)
        return self._wt

    def _cost_all_planes(self, g, b, c, p, s, N, entries: bool = False):
        """:meth:`evaluate`'s cost for ``compensate=all`` (no digits are kept, ``H = 0``), the same
        numbers: the batch's tables are numbered as there (sorted keys), each entry's two
        neighbours are read from the dense tables of :meth:`_table` at ``ceil(x)`` (at
        ``ceil(x + off) - off``, as the concatenated search rounds, in blocks where that can
        differ), an infeasible entry makes the sum infinite, and the entries are processed in
        blocks of :attr:`SUB` candidates so the temporaries stay in cache. With ``entries`` also
        the per-entry move as :meth:`evaluate` returns it (cost, entry k, entry row, new digits,
        new values): each entry's chosen value is a row of its table (the left or right
        neighbour), whose digits it takes; an infeasible entry keeps its digits and value."""
        K = len(g)
        G, nb, C, S, P = self.Du.shape
        key, Nk = self._allowed_keys(g, b, c, p, s, N)
        kc = key << 5 | (31 if self.max_digits is None else self.max_digits)
        present = Nk[np.arange(K), p, s] > 0          # candidates with at least one entry
        uk = np.unique(kc[present])
        invc = np.searchsorted(uk, kc)
        tabs = [self._table(int(k)) for k in uk]
        W = 2 * self.VB + 2
        left = np.concatenate([tb[4] for tb in tabs])
        right = np.concatenate([tb[5] for tb in tabs])
        cl = cr = None
        SPAN = float(4 * self.B ** P + 4 * self.qmax + 8)
        unit = (g.astype(np.int64) * nb + b) * C + c
        s2c = self.s2flat[g.astype(np.int64) * C + c]
        sgn = (1 - 2 * s).astype(np.int8)
        Xc, CX, tiny_u = self._weight_tables()
        tiny_c = tiny_u[unit]
        invW = invc * W
        rowoff = unit * S - (np.arange(K) % self.SUB) * S
        Tf, Vf = self.Tu.reshape(-1), self.Vu.reshape(-1)
        cost = np.empty(K)
        if entries:
            lt = np.concatenate([tb[3] for tb in tabs])            # [tables * W] values < c
            sizes = np.array([tb[8] for tb in tabs], np.int64)
            first = np.cumsum(sizes) - sizes                        # first row of each table
            alld = np.zeros((int(sizes.sum()), P), np.int8)
            for tb, o in zip(tabs, first):
                alld[o:o + tb[8], :tb[2].shape[1]] = tb[2]
            out = []
        for a in range(0, K, self.SUB):
            sl = slice(a, a + self.SUB)
            k = len(g[sl])
            dp = self.Du[g[sl], b[sl], c[sl], :, p[sl]]                # [k, S]
            f = np.flatnonzero(dp * sgn[sl, None] > 0)       # entries k * S + i (np.nonzero, faster)
            ek = f // S
            rows = f + rowoff[sl][ek]                          # unit * S + i
            t = Tf[rows]
            v = Vf[rows]
            x = Xc[rows]
            if tiny_c[sl].any():
                off = invc[sl][ek] * SPAN
                ci = np.ceil(x + off)
                ci -= off
                np.clip(ci, -self.VB, self.VB + 1, out=ci)
                idx = ci.astype(np.int64)
                idx += invW[sl][ek] + self.VB
                vl = left[idx]
                vr = right[idx]
                dr = np.where(vr >= x, vr - x, np.inf)
            else:                              # ceil(x + off) - off == ceil(x) <= right neighbour
                idx = CX[rows] + invW[sl][ek]
                vl = left[idx]
                vr = right[idx]
                dr = vr - x
            dl = x - vl                        # vl < x (or -inf)
            take_r = dr < dl
            tie = np.flatnonzero(dr == dl)     # (both infinite: infeasible, any choice)
            if len(tie):
                if cl is None:
                    cl = np.concatenate([tb[6] for tb in tabs])
                    cr = np.concatenate([tb[7] for tb in tabs])
                take_r[tie] = cr[idx[tie]] < cl[idx[tie]]
            if entries:
                feasible = np.isfinite(np.where(take_r, vr, vl))
                row = first[invc[sl][ek]] + lt[idx] - 1 + take_r      # the chosen table row
                out.append((ek + a, f - ek * S, row, feasible))
            np.copyto(vl, vr, where=take_r)    # the chosen value (+-inf where infeasible: the sum is not finite)
            ecost = t - vl
            ecost *= ecost
            d0 = t - v
            d0 *= d0
            ecost -= d0
            ecost *= s2c[sl][ek]
            cst = np.bincount(ek, weights=ecost, minlength=k)
            cst[~np.isfinite(cst)] = np.inf
            cost[sl] = cst
            if entries:
                out[-1] += (vl,)
        if not entries:
            return cost
        ek, ei, row, feasible, nv = (np.concatenate(z) for z in zip(*out))
        rows = (unit[ek] * S + ei)
        dv = self.Du.reshape(-1, P)[rows]
        newd = np.where(feasible[:, None], alld[np.where(feasible, row, 0)], dv)
        newv = np.where(feasible, nv, self.Vu.reshape(-1)[rows]).astype(np.int64)
        return cost, ek, ei, newd, newv

    def _kernels_apply(self) -> bool:
        """Whether the numba kernels compute this layer's costs and moves."""
        return self.KERNELS and self.all_planes and self.VB <= self.DENSE_MAX

    def _kernel_tables(self, keys: np.ndarray) -> tuple:
        """Ids of the (dense) tables of ``keys`` in the kernels' store, which is shared by the
        layers of one ``(cell_bits, P, qmax)`` (:func:`_kernel_table_store`; under
        ``_KERNEL_LOCK``), and the store."""
        kt = _kernel_table_store(self.cb, self.P, self.qmax, len(keys))
        ids = kt["ids"]
        out = np.empty(len(keys), np.int64)
        for j, key in enumerate(keys.tolist()):
            i = ids.get(key)
            if i is None:
                tb = self._table(key)
                i = ids[key] = kt["n"]
                if i == len(kt["first"]):
                    for name in ("lr", "tie", "lt", "first"):
                        kt[name] = np.concatenate([kt[name], np.empty_like(kt[name])])
                n, o = tb[8], kt["rows"]
                while o + n > len(kt["digs"]):
                    kt["digs"] = np.concatenate([kt["digs"], np.empty_like(kt["digs"])])
                kt["lr"][i, :, 0] = tb[4]
                kt["lr"][i, :, 1] = tb[5]
                kt["tie"][i] = tb[7] < tb[6]
                kt["lt"][i] = tb[3]
                kt["first"][i] = o
                kt["digs"][o:o + n] = 0
                kt["digs"][o:o + n, :tb[2].shape[1]] = tb[2]
                kt["rows"] += n
                kt["n"] += 1
            out[j] = i
        return out, kt

    def _kernel_args(self, g, b, c, p, s, N, batch: int) -> tuple:
        """The arguments the kernels share: arrays in flat unit layout, per candidate its unit, table
        id and the rank of its key in its batch of ``batch`` candidates (as the numpy code numbers
        the tables of one call)."""
        G, nb, C, S, P = self.Du.shape
        return self._kernel_args_units((g.astype(np.int64) * nb + b) * C + c, p, s, N, batch)

    def _kernel_args_units(self, unit, p, s, N, batch: int) -> tuple:
        """:meth:`_kernel_args` with the candidates' flat units ``(g * nb + b) * C + c``."""
        ok = _kernels()
        G, nb, C, S, P = self.Du.shape
        U = G * nb * C
        if not (self.Du.flags.c_contiguous and self.Vu.flags.c_contiguous):
            self.Du, self.Vu = np.ascontiguousarray(self.Du), np.ascontiguousarray(self.Vu)
        Du3 = self.Du.reshape(U, S, P)
        p64, s64 = p.astype(np.int64), s.astype(np.int64)
        if N is None:
            Nu = np.empty((len(unit), P, 2), np.int32)
            ok.unit_counts(Du3, unit, Nu)
            nidx = np.arange(len(unit), dtype=np.int64)
        else:
            Nu = np.ascontiguousarray(N).reshape(U, P, 2)
            nidx = unit
        limit = 31 if self.max_digits is None else self.max_digits
        kc, present = ok.candidate_keys(Nu, nidx, p64, s64, self.all_planes, self.signed, limit)
        with _KERNEL_LOCK:    # the shared scratch and table store (compilations in several threads)
            if self.all_planes and 2 * P <= 24:    # keys differ only in the mask: dense ranks and ids
                mark = _MASK_SCRATCH.get(2 * P)
                if mark is None:
                    mark = _MASK_SCRATCH[2 * P] = np.zeros(1 << (2 * P), np.int64)
                invc, mk, masks = ok.batch_ranks_masks(kc, present, max(int(batch), 1), 2 * P, mark)
                ids, kt = self._kernel_tables((((np.int64(P) << (2 * P)) + masks) << 5) | limit)
                lut = np.zeros(int(masks[-1]) + 1 if len(masks) else 1, np.int64)
                lut[masks] = ids
                tid = np.where(present, lut[np.minimum(mk, len(lut) - 1)], 0)
            else:
                invc = ok.batch_ranks(kc, present, max(int(batch), 1))
                uk, inv = np.unique(kc[present], return_inverse=True)
                tid = np.zeros(len(unit), np.int64)
                ids, kt = self._kernel_tables(uk)
                tid[present] = ids[inv]
            n, rows = kt["n"], kt["rows"]
            tabs = (kt["lr"][:n], kt["tie"][:n], kt["lt"][:n], kt["first"][:n], kt["digs"][:rows])
        if self._tiny_u is None:
            self._tiny_u = ok.tiny_units(np.ascontiguousarray(self.Tu, dtype=np.float64).reshape(U, S), self.qmax)
        SPAN = float(4 * self.B ** P + 4 * self.qmax + 8)
        return ok, tabs, (Du3, np.ascontiguousarray(self.Tu, dtype=np.float64).reshape(-1), self.Vu.reshape(-1),
                          np.ascontiguousarray(self.s2flat, dtype=np.float64), C, nb * C, self._tiny_u,
                          unit, p64, s64, tid, invc, SPAN, self.qmax, self.VB, tabs[0], tabs[1])

    def _kernel_costs(self, g, b, c, p, s, N, batch: int) -> np.ndarray:
        """:meth:`evaluate`'s costs (``cost_only``) by the kernel, the tables numbered per ``batch``."""
        if len(g) == 0:
            return np.empty(0)
        ok, _, args = self._kernel_args(g, b, c, p, s, N, batch)
        return _clear_costs(ok, args)

    def _kernel_apply(self, g, b, c, p, s, N) -> np.ndarray:
        """:meth:`apply` by the kernel (one batch)."""
        if len(g) == 0:
            return np.empty(0)
        ok, tabs, args = self._kernel_args(g, b, c, p, s, N, len(g))
        if self._orig is None:      # the values before their first change (see changed_values)
            dt = np.dtype(np.int16 if self.VB < (1 << 15) - 1 else np.int64)   # |values| < VB
            self._orig = np.full(self.Vu.size, np.iinfo(dt).min, dt)
        unit = args[7]
        distinct = len(unit) < 2 or len(np.unique(unit)) == len(unit)
        return ok.clear_apply(*args, *tabs[2:], self._orig, distinct)

    def changed_values(self) -> int | None:
        """How many values differ from their initial ones, if every move was made by the kernel
        (else None)."""
        if not self._kernels_apply():
            return None
        if self._orig is None:
            return 0
        return int(_kernels().count_changed(self.Vu.reshape(-1), self._orig))

    def evaluate(self, g, b, c, p, s, N=None, cost_only=False):
        """Cost of clearing each candidate segment, plus the per-entry result of the move.

        Returns (cost [K] (inf if impossible), entry k [E], entry row [E], new digits [E, P]
        (None with ``cost_only``), new values [E]).

        Every entry (a digit of the segment) is re-represented by the value of its table nearest
        to its target. The tables of a batch are concatenated into one sorted key array (value +
        table index * SPAN); the position of an entry's key ``x + inv * SPAN`` in it is
        ``offset[inv] + #(table values < ceil(x + inv * SPAN) - inv * SPAN)`` (the table values
        are integers), read from the dense rank array of :meth:`_table` instead of a binary
        search over the batch.
        """
        dense = self.VB <= self.DENSE_MAX
        if cost_only and self.all_planes and dense:
            cost = self._kernel_costs(g, b, c, p, s, N, len(g)) if self._kernels_apply() else \
                self._cost_all_planes(g, b, c, p, s, N)
            return cost, None, None, None, None
        K = len(g)
        P, B = self.P, self.B
        G, nb, C, S, _ = self.Du.shape
        dp = self.Du[g, b, c, :, p]                # [K, S]
        match = np.where(s[:, None] == 0, dp > 0, dp < 0)
        ek, ei = np.divmod(np.flatnonzero(match), S)
        unit = (g.astype(np.int64) * nb + b) * C + c
        rows = unit[ek] * S + ei
        pe = p[ek]
        qs = np.arange(P)
        dv = self.Du.reshape(-1, P)[rows]                  # [E, P] int8
        dvi = dv.astype(np.int32)
        if self.all_planes:
            H = np.zeros(len(ek), np.int64)
        else:
            H = np.einsum("ep,ep->e", dvi, self.wup[pe]).astype(np.int64)
        t = self.Tu.reshape(-1)[rows]
        v = self.Vu.reshape(-1)[rows]
        s2 = self.s2flat[g.astype(np.int64) * C + c][ek]
        key, _ = self._allowed_keys(g, b, c, p, s, N)
        pe_tab = np.full_like(pe, P) if self.all_planes else pe
        if self.max_digits is not None and not self.all_planes:
            # digits left for the planes below p (max-digits stays true after a move)
            above = np.count_nonzero(dvi * (qs[None, :] > pe[:, None]), axis=1)
            ekey = key[ek] << 5 | np.maximum(self.max_digits - above, 0).astype(np.int64)
            uk, inv = np.unique(ekey, return_inverse=True)
        else:                 # one key per candidate
            kc = key << 5 | (31 if self.max_digits is None else self.max_digits)
            uk = np.unique(kc[np.bincount(ek, minlength=K) > 0])
            inv = np.searchsorted(uk, kc)[ek]
        # all tables of this batch in one sorted array: value + j * SPAN for table j
        SPAN = float(4 * B ** P + 4 * self.qmax + 8)
        tabs = [self._table(int(k)) for k in uk]
        sizes = np.array([len(tb[0]) for tb in tabs], np.int64)
        tid = np.repeat(np.arange(len(tabs)), sizes)
        allv = np.concatenate([tb[0] for tb in tabs])
        allc = np.concatenate([tb[1] for tb in tabs])
        x = np.clip(t, -self.qmax, self.qmax) - H
        lo, hi = -self.qmax - H, self.qmax - H
        off = inv * SPAN
        if dense:
            rank = np.stack([tb[3] for tb in tabs]) + (np.cumsum(sizes) - sizes)[:, None]
            ci = np.clip(np.ceil(x + off) - off, -self.VB, self.VB + 1).astype(np.int64) + self.VB
            j = rank[inv, ci]                       # == np.searchsorted(allv + tid * SPAN, x + off)
        else:
            j = np.searchsorted(allv + tid * SPAN, x + off)
        jl = np.clip(j - 1, 0, len(allv) - 1)
        jr = np.clip(j, 0, len(allv) - 1)
        vl, vr = allv[jl], allv[jr]
        okl = (tid[jl] == inv) & (vl <= x) & (vl >= lo)
        okr = (tid[jr] == inv) & (vr >= x) & (vr <= hi)
        dl = np.where(okl, np.abs(x - vl), np.inf)
        dr = np.where(okr, np.abs(vr - x), np.inf)
        take_r = (dr < dl) | ((dr == dl) & (allc[jr] < allc[jl]))
        jj = np.where(take_r, jr, jl)
        feasible = np.isfinite(np.minimum(dl, dr))
        newv = np.where(feasible, H + allv[jj].astype(np.int64), v)
        ecost = s2 * ((t - newv) ** 2 - (t - v) ** 2)
        cost = np.bincount(ek, weights=ecost, minlength=K)
        bad = np.bincount(ek, weights=(~feasible).astype(np.float64), minlength=K) > 0
        cost[bad] = np.inf
        alld = np.zeros((len(allv), P), np.int8)
        o = 0
        for tb in tabs:
            n, w = tb[2].shape
            alld[o:o + n, :w] = tb[2]
            o += n
        newd = np.where(qs[None, :] < pe_tab[:, None], alld[jj], np.where(qs[None, :] > pe_tab[:, None], dv, 0))
        newd = np.where(feasible[:, None], newd, dv).astype(np.int8)
        return cost, ek, ei, newd, newv

    def apply(self, g, b, c, p, s, N=None):
        """Make the moves of the candidates (one per unit); returns their costs."""
        if self._kernels_apply():
            return self._kernel_apply(g, b, c, p, s, N)
        if self.all_planes and self.VB <= self.DENSE_MAX:
            cost, ek, ei, newd, newv = self._cost_all_planes(g, b, c, p, s, N, entries=True)
        else:
            cost, ek, ei, newd, newv = self.evaluate(g, b, c, p, s, N)
        self.Du[g[ek], b[ek], c[ek], ei] = newd
        self.Vu[g[ek], b[ek], c[ek], ei] = newv
        return cost

    def run(self, allowed_total: float, E_cur: float, max_seg: int, max_rounds: int, N=None):
        """Greedy clearing; returns (E_final, moves, rounds). ``N``: ``segment_counts(Du)`` if
        known; the counts are kept up to date in ``self.N``."""
        Du = self.Du
        G, nb, C, S, P = Du.shape
        N = segment_counts(Du) if N is None else N               # [G, nb, C, P, 2]
        self.N = N
        cost = np.full(N.shape, np.nan)
        blocked = np.zeros(N.shape, bool)
        dirty = np.ones((G, nb, C), bool)
        tau = 0.0
        moves = rounds = 0
        tiny = 1e-12 * max(allowed_total, 1e-300)
        kern = self._kernels_apply() and N.flags.c_contiguous
        if kern:   # the round's bookkeeping by kernels on [units, 2P] views (the same decisions)
            ok = _kernels()
            N2, blocked2, cost2 = N.reshape(-1, 2 * P), blocked.reshape(-1, 2 * P), cost.reshape(-1, 2 * P)
            dirty1 = dirty.reshape(-1)
        while rounds < max_rounds:
            if kern:
                todo = ok.round_todo(N2, blocked2, dirty1, max_seg)
                u, j = np.divmod(todo, 2 * P)
                if len(todo):   # one call, the tables numbered per BATCH as below
                    ok_args = self._kernel_args_units(u, j >> 1, j & 1, N, self.BATCH)
                    cost2.reshape(-1)[todo] = _clear_costs(ok, ok_args[2])
                dirty[:] = False
                remaining = allowed_total - E_cur
                anyc, uu, jj, uc_cost = ok.round_best(N2, blocked2, cost2, max_seg, max(remaining, 0.0) + tiny)
                if not anyc or len(uu) == 0:
                    break
                ug, rest = np.divmod(uu, nb * C)
                ub, uc = np.divmod(rest, C)
            else:
                cand = (N > 0) & (N <= max_seg) & ~blocked
                todo = cand & dirty[..., None, None]
                gi, bi, ci, pi, si = np.nonzero(todo)
                for a in range(0, len(gi), self.BATCH):
                    sl = slice(a, a + self.BATCH)
                    cst = self.evaluate(gi[sl], bi[sl], ci[sl], pi[sl], si[sl], N, cost_only=True)[0]
                    cost[gi[sl], bi[sl], ci[sl], pi[sl], si[sl]] = cst
                dirty[:] = False
                remaining = allowed_total - E_cur
                cand_cost = np.where(cand, cost, np.nan)
                too_much = cand & ~(cand_cost <= max(remaining, 0.0) + tiny)
                blocked |= too_much
                cand &= ~too_much
                if not cand.any():
                    break
                # best candidate per unit
                flat = np.where(cand, cost, np.inf).reshape(G, nb, C, 2 * P)
                best = flat.argmin(axis=-1)
                bcost = np.take_along_axis(flat, best[..., None], axis=-1)[..., 0]
                ug, ub, uc = np.nonzero(np.isfinite(bcost))
                if len(ug) == 0:
                    break
                uc_cost = bcost[ug, ub, uc]
                jj = best[ug, ub, uc]
            elig = uc_cost <= tau + tiny
            if not elig.any():
                tau = max(2.0 * tau, 2.0 * float(uc_cost.min()))
                continue
            ug, ub, uc, uc_cost = ug[elig], ub[elig], uc[elig], uc_cost[elig]
            up, us = np.divmod(jj[elig], 2)
            order = np.lexsort((ub, ug, uc, uc_cost))
            cum = np.cumsum(np.maximum(uc_cost[order], 0.0))
            take = order[cum <= max(remaining, 0.0) + tiny]
            if len(take) == 0:
                blocked[ug[order[0]], ub[order[0]], uc[order[0]], up[order[0]], us[order[0]]] = True
                continue
            ug, ub, uc, up, us = ug[take], ub[take], uc[take], up[take], us[take]
            realized = self.apply(ug, ub, uc, up, us, N)
            E_cur += float(realized.sum())
            moves += len(take)
            rounds += 1
            # refresh the changed units
            if kern:
                ok.set_unit_counts(self.Du.reshape(-1, S, P), (ug.astype(np.int64) * nb + ub) * C + uc,
                                N.reshape(-1, P, 2))
            else:
                Dk = self.Du[ug, ub, uc]
                N[ug, ub, uc] = np.stack([(Dk > 0).sum(axis=1), (Dk < 0).sum(axis=1)], axis=-1)
            cost[ug, ub, uc] = np.nan
            blocked[ug, ub, uc] = False
            dirty[ug, ub, uc] = True
        return E_cur, moves, rounds


def _popcount_sum(m: np.ndarray, axis=None) -> np.ndarray:
    return np.add.reduce(np.bitwise_count(m), axis=axis, dtype=np.int64)


def _unit_stats(pm: np.ndarray, nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks in unit layout ``[..., S]`` -> (non-empty segments per unit, non-zero digits per unit)."""
    n = (np.bitwise_count(np.bitwise_or.reduce(pm, axis=-1)).astype(np.int64)
         + np.bitwise_count(np.bitwise_or.reduce(nm, axis=-1)))
    return n, _popcount_sum(pm, axis=-1) + _popcount_sum(nm, axis=-1)


def _tc_top_plane(lo: np.ndarray, hi: np.ndarray, planes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per unit the smallest ``k < planes`` with every value in ``[-2**k, 2**k - 1]`` and whether
    there is one (as :func:`two_complement_units`)."""
    k = np.zeros(lo.shape, np.int64)
    for kk in range(planes - 1, -1, -1):
        k = np.where((lo >= -(1 << kk)) & (hi <= (1 << kk) - 1), kk, k)
    return k, (lo >= -(1 << k)) & (hi <= (1 << k) - 1)


def _twos_complement_mask_forms(v: np.ndarray, planes: int):
    """:func:`two_complement_units` for ``cell_bits = 1`` as bit masks, plain and mirrored:
    ``[(pos, neg, fits), (pos, neg, fits)]``. A unit with top plane ``k`` stores ``v mod 2**k``
    (= ``v + 2**k`` for a negative ``v``, the two's-complement bits) on the planes below ``k``
    and a -1 on plane ``k`` for each negative ``v``; the mirrored form does this for ``-v``."""
    it = v.dtype.type
    nbits = 8 * v.dtype.itemsize
    lo = v.min(axis=-1).astype(np.int64)
    hi = v.max(axis=-1).astype(np.int64)
    dt = _mask_dtype(planes)
    out = []
    for w, (k, fits) in ((v, _tc_top_plane(lo, hi, planes)), (-v, _tc_top_plane(-hi, -lo, planes))):
        top = np.where(fits, np.left_shift(1, k), 0).astype(it)[..., None]     # 0: no digits
        low = np.where(fits, np.left_shift(1, k) - 1, 0).astype(it)[..., None]
        pm = (w & low).astype(dt)
        nm = (np.right_shift(w, nbits - 1) & top).astype(dt)                    # -1 where w < 0
        out.append((pm, nm, fits))
    (p1, n1, f1), (p2, n2, f2) = out
    return [(p1, n1, f1), (n2, p2, f2)]


def _binary_unit_forms(Vu0: np.ndarray, P: int, n_planes_sm: int, signed: bool, twos_complement: bool,
                       max_digits: int | None, info: dict, sm=None) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 for ``cell_bits = 1`` on bit masks (one bit per plane, positive and negative digits
    apart) in unit layout: the same forms, counts and choices as the digit arrays of the general
    path, at 1/P of the memory traffic. ``Vu0`` holds integers (int32 when ``P <= 29``), ``sm``
    its sign-magnitude masks if already made. Returns the chosen digits ``[G, nb, C, S, P]``
    int8 and their :func:`segment_counts`."""
    dt = _mask_dtype(P)
    if sm is None:
        n = np.abs(Vu0)
        if np.any(n >> n_planes_sm):
            raise ValueError(f"weights need more than {n_planes_sm} planes of 1 bits")
        sm = (np.where(Vu0 > 0, n, 0).astype(dt), np.where(Vu0 < 0, n, 0).astype(dt))
        del n
    if not signed:
        pm, nm = sm
    else:
        forms = [("signed_digit", naf_masks(Vu0, P) + (None,)), ("sign_magnitude", sm + (None,))]
        if twos_complement:
            forms += list(zip(("twos_complement", "twos_complement_mirrored"),
                              _twos_complement_mask_forms(Vu0, P)))
        pm, nm, _ = forms[0][1]
        best_n, best_d = _unit_stats(pm, nm)
        choice = np.zeros(best_n.shape, np.int8)
        for i, (name, (fp, fn, fits)) in enumerate(forms[1:], start=1):
            n_f, d_f = _unit_stats(fp, fn)
            better = (n_f < best_n) | ((n_f == best_n) & (d_f < best_d))
            if fits is not None:
                better &= fits
            if max_digits is not None:  # these forms may need more digits than max-digits allows
                per_w = np.bitwise_count(fp) + np.bitwise_count(fn)
                better &= per_w.max(axis=-1) <= max_digits
            pm = np.where(better[..., None], fp, pm)
            nm = np.where(better[..., None], fn, nm)
            best_n = np.where(better, n_f, best_n)
            best_d = np.where(better, d_f, best_d)
            choice = np.where(better, i, choice)
        info["unit_forms"] = {f[0]: int(np.count_nonzero(choice == i)) for i, f in enumerate(forms)}
        del forms
    N0 = np.stack([_plane_counts(pm, P), _plane_counts(nm, P)], axis=-1)
    if P <= 8:     # one table lookup per weight: (pos, neg) masks -> 8 int8 digits in a word
        D = _DIGITS8[(pm.astype(np.uint16) << np.uint16(8)) | nm].view(np.int8).reshape(pm.shape + (8,))
        return (D if P == 8 else np.ascontiguousarray(D[..., :P])), N0
    return np.subtract(mask_bits(pm, P, axis=-1).view(np.int8), mask_bits(nm, P, axis=-1).view(np.int8)), N0


_DIGITS8 = np.ascontiguousarray(
    (((np.arange(1 << 16)[:, None] >> (8 + np.arange(8))) & 1) - ((np.arange(1 << 16)[:, None] >> np.arange(8)) & 1))
    .astype(np.int8)).view("<u8").reshape(-1)          # [(pos << 8) | neg] -> digits of planes 0..7


_SPREAD = (((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(np.uint64)
           << (8 * np.arange(8, dtype=np.uint64))).sum(axis=1).astype(np.uint64)   # bit p -> byte p


def _plane_counts(m: np.ndarray, P: int) -> np.ndarray:
    """Set bits of each plane over the last axis of masks ``m`` ``[..., S]``: int32 ``[..., P]``.

    With ``S <= 255`` each mask byte is spread to one byte per plane of a 64-bit word (a table)
    and the words are summed: no byte can carry into the next."""
    S = m.shape[-1]
    nbytes = m.dtype.itemsize
    out = np.zeros(m.shape[:-1] + (8 * nbytes,), np.int32)
    if S <= 255:
        by = np.ascontiguousarray(m).astype(m.dtype.newbyteorder("<"), copy=False).view(np.uint8)
        by = by.reshape(m.shape + (nbytes,))
        for k in range(nbytes):
            tot = np.add.reduce(_SPREAD[by[..., k]], axis=-1, dtype=np.uint64)
            out[..., 8 * k:8 * k + 8] = tot[..., None].view(np.uint8)
    else:
        for p in range(P):
            out[..., p] = np.add.reduce((m >> m.dtype.type(p)) & m.dtype.type(1), axis=-1, dtype=np.int32)
    return out[..., :P]


def _recode_units_general(V, perm, S, cell_bits, P, n_planes_sm, signed, twos_complement, max_digits,
                          info) -> np.ndarray:
    """Step 1 on digit arrays (any ``cell_bits``): the chosen digits ``[G, nb, C, S, P]`` int8."""
    D = recode(V, cell_bits, P, signed)
    Du = _units_layout(np.moveaxis(D, 0, -1), perm, S)
    del D
    if signed:
        Vu0 = _units_layout(V, perm, S)
        D_sm = np.zeros(Vu0.shape + (P,), np.int8)
        D_sm[..., :n_planes_sm] = np.moveaxis(
            sign_magnitude_digits(Vu0.reshape(1, 1, -1), cell_bits, n_planes_sm).reshape((n_planes_sm,) + Vu0.shape), 0, -1)
        forms = [("signed_digit", Du, None), ("sign_magnitude", D_sm, None)]
        if twos_complement:
            forms += [(name,) + two_complement_units(Vu0, cell_bits, P, mirror) for name, mirror in
                      (("twos_complement", False), ("twos_complement_mirrored", True))]
        best = Du
        best_n = np.count_nonzero(segment_counts(Du), axis=(-2, -1))
        best_d = np.count_nonzero(Du, axis=(-2, -1))
        choice = np.zeros(best_n.shape, np.int8)
        for i, (name, F, fits) in enumerate(forms[1:], start=1):
            n = np.count_nonzero(segment_counts(F), axis=(-2, -1))
            d = np.count_nonzero(F, axis=(-2, -1))
            better = (n < best_n) | ((n == best_n) & (d < best_d))
            if fits is not None:
                better &= fits
            if max_digits is not None:  # these forms may need more digits than max-digits allows
                better &= np.count_nonzero(F, axis=-1).max(axis=-1) <= max_digits
            best = np.where(better[..., None, None], F, best)
            best_n = np.where(better, n, best_n)
            best_d = np.where(better, d, best_d)
            choice = np.where(better, i, choice)
        Du = best
        info["unit_forms"] = {f[0]: int(np.count_nonzero(choice == i)) for i, f in enumerate(forms)}
        del forms, D_sm
    return Du


def _fused_unit_forms(V, T, perm, S, P, signed, twos_complement, max_digits, forms):
    """:func:`xbc.passes._orchestrate_kernels.unit_forms` (step 1 for ``cell_bits = 1`` and the
    unit layouts of ``V`` and ``T`` in one pass): (Vu, Tu, Du, N, units per form, stats); Du and N
    are None unless ``forms``."""
    G, R, C = V.shape
    nb = -(-R // S)
    Vu = np.empty((G, nb, C, S), np.int64)
    Tu = np.empty((G, nb, C, S), np.float64)
    Du = np.empty((G, nb, C, S, P), np.int8) if forms else np.empty((0, 1, 1, 1, P), np.int8)
    N = np.zeros((G, nb, C, P, 2), np.int32) if forms else np.zeros((0, 1, 1, P, 2), np.int32)
    packed = forms and P == 8 and S <= 255        # a weight's 8 digits as one word
    Dw = Du.view(np.uint64).reshape(G, nb, C, S) if packed else np.empty((0, 1, 1, 1), np.uint64)
    choice = np.zeros((G, nb, C) if forms else (0, 1, 1), np.int8)
    ok = _kernels()
    nt = ok.unit_tasks(V, nb)
    part = np.zeros((nt, 3), np.int64)
    ok.run_tasks(ok.unit_forms, nt, V, T, perm, S, P, signed, twos_complement,
                 -1 if max_digits is None else int(max_digits), Vu, Tu, Du[:0] if packed else Du, Dw, N,
                 choice, part, work=V.size)
    st = (int(part[:, 0].sum()), int(part[:, 1].sum()), int(part[:, 2].max(initial=0)))
    chosen = np.bincount(choice.reshape(-1), minlength=4)[:4 if twos_complement else 2]
    return Vu, Tu, (Du if forms else None), (N if forms else None), chosen, st


def orchestrate_matrix(V: np.ndarray, T: np.ndarray, scale: np.ndarray, frozen: np.ndarray, *,
                       cell_bits: int, planes: int, signed: bool, qmax: int, segment_rows: int,
                       perm: np.ndarray | None, max_digits: int | None, budget: float,
                       E_q: float, max_segment_digits: int, max_rounds: int,
                       compensate: str = "all", twos_complement: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Steps 1-3 of the module docstring on one layer matrix.

    ``V`` int ``[G, R, C]`` current weights, ``T`` float targets (integer units), ``scale``
    ``[G, C]`` weight scales, ``frozen`` bool ``[G, R, C]`` weights that must stay 0.
    Returns (digits ``[P, G, R, C]`` int8, values ``[G, R, C]`` int64, info).
    """
    G, R, C = V.shape
    S = segment_rows
    P = planes
    perm = np.tile(np.arange(R, dtype=np.int64), (G, 1)) if perm is None else np.asarray(perm, np.int64)
    V = np.asarray(V)                 # read only
    s2 = (np.asarray(scale, np.float64) ** 2).reshape(G, 1, C)
    info: dict = {}
    n_w = V.size

    # baseline: sign-magnitude as slice-bits cuts it without this pass
    P_sm = n_planes_sm = n_planes(int(math.log2(qmax + 1)) + 1, cell_bits, "split", signed_digit=False)
    binary = cell_bits == 1 and P <= 64
    fused = binary and P <= 30 and _Clearer.KERNELS and V.dtype.kind in "iu"   # step 1 and layouts: kernels
    if not fused and V.dtype != np.int64:
        V = V.astype(np.int64)
    Vu = sm = Tu = None
    if fused:
        T64 = np.asarray(T, dtype=np.float64)
        Vu, Tu, Du, N0, chosen, st = _fused_unit_forms(V, T64, perm, S, P, signed, twos_complement, None,
                                                       max_digits is None)
        if st[2] >> n_planes_sm:
            raise ValueError(f"weights need more than {n_planes_sm} planes of {cell_bits} bits")
        info["digits_per_weight_binary"] = float(st[0]) / max(n_w, 1)
        info["nonempty_segments_sign_magnitude"] = int(st[1])
    elif binary:   # bit masks: popcounts of |v| and of the per-unit OR of the sign-split magnitudes
        Vu = _units_layout(V, perm, S)
        Vb = Vu.astype(np.int32) if P <= 29 else Vu       # |v| < 2**P
        mag = np.abs(Vb)
        if np.any(mag >> n_planes_sm):
            raise ValueError(f"weights need more than {n_planes_sm} planes of {cell_bits} bits")
        info["digits_per_weight_binary"] = float(_popcount_sum(mag)) / max(n_w, 1)
        dt = _mask_dtype(P)
        sm = (np.where(Vb > 0, mag, 0).astype(dt), np.where(Vb < 0, mag, 0).astype(dt))
        info["nonempty_segments_sign_magnitude"] = int(_unit_stats(*sm)[0].sum())
        del mag
    else:
        d_sm_base = sign_magnitude_digits(V, cell_bits, n_planes_sm)
        info["digits_per_weight_binary"] = float(np.count_nonzero(d_sm_base)) / max(n_w, 1)
        info["nonempty_segments_sign_magnitude"] = count_nonempty_segments(d_sm_base, S, perm)
        del d_sm_base
    info["segments_sign_magnitude"] = int(2 * P_sm * G * (-(-R // S)) * C)

    # step 2: max-digits
    if max_digits is not None:
        Vk = closest_with_max_digits(T, max_digits, qmax, cell_bits, P, signed)
        V = np.where(frozen, 0, Vk)
        if fused:
            Vu, Tu, Du, N0, chosen, st = _fused_unit_forms(V, T64, perm, S, P, signed, twos_complement, max_digits,
                                                           True)
            if st[2] >> n_planes_sm:
                raise ValueError(f"weights need more than {n_planes_sm} planes of {cell_bits} bits")
        elif binary:
            Vu = _units_layout(V, perm, S)
            Vb = Vu.astype(np.int32) if P <= 29 else Vu
            sm = None

    # step 1: recoding; per unit the form with the fewest non-empty segments
    if fused:          # done above
        if signed:
            names = ("signed_digit", "sign_magnitude", "twos_complement", "twos_complement_mirrored")
            info["unit_forms"] = {n: int(k) for n, k in zip(names, chosen.tolist())}
    elif binary:
        Du, N0 = _binary_unit_forms(Vb, P, n_planes_sm, signed, twos_complement, max_digits, info, sm=sm)
        del Vb, sm
    else:
        Du = _recode_units_general(V, perm, S, cell_bits, P, n_planes_sm, signed, twos_complement,
                                   max_digits, info)
        N0 = segment_counts(Du)
    info["digits_per_weight_recoded"] = float(N0.sum(dtype=np.int64)) / max(n_w, 1)
    info["nonempty_segments_recoded"] = int(np.count_nonzero(N0))
    info["segments"] = int(2 * P * G * Du.shape[1] * C)

    # step 3: clearing
    if Vu is None:
        Vu = _units_layout(V, perm, S)
    if Tu is None:
        Tu = _units_layout(np.asarray(T, np.float64), perm, S)
    # (V in C order when max-digits did not replace it: the float sum adds in that order)
    E_cur = layer_error_power(T, V, scale) if max_digits is not None else _error_power_c_order(T, V, scale)
    allowed = (1.0 + budget) * E_q
    cl = _Clearer(Du, Vu, Tu, s2.reshape(G, 1, C, 1), cell_bits, qmax, max_digits, signed,
                  compensate == "all")
    # the initial values, unless the kernels' moves keep track of the changes themselves
    Vu0 = Vu.copy() if _Clearer.KERNELS and not cl._kernels_apply() else Vu[:0]
    E_fin, moves, rounds = cl.run(allowed, E_cur, max_segment_digits, max_rounds, N=N0)
    if _Clearer.KERNELS:
        D, Vn = _matrix_outputs(G, -(-R // S), R, C, S, P)
        ok = _kernels()
        nbS = -(-R // S)
        part = np.zeros((G * nbS, 2), np.int64)
        # row blocks on several threads only when they write disjoint rows (perm permutes each group)
        is_perm = bool(np.all(np.sort(perm, axis=1) == np.arange(R)))
        ok.run_tasks(ok.from_units, G * nbS, np.ascontiguousarray(cl.Du), np.ascontiguousarray(cl.Vu), perm,
                     np.ascontiguousarray(Vu0), cell_bits, D, Vn, part, work=V.size if is_perm else 0)
        changed, bad = int(part[:, 0].sum()), int(part[:, 1].sum())
        if len(Vu0) == 0:
            changed = cl.changed_values()
        if bad:   # internal invariant (OrchestrateBits.run checks it with digits_value on the numpy path)
            raise VerifyError(f"orchestrate-bits produced digits that do not add up ({bad} weights)")
    else:
        D = _digits_from_units(cl.Du, perm, R)
        Vn = _from_units(cl.Vu, perm, R)
        changed = np.count_nonzero(Vn != V)
    info["moves"] = int(moves)
    info["rounds"] = int(rounds)
    info["digits_per_weight_final"] = float(cl.N.sum(dtype=np.int64)) / max(n_w, 1)
    info["nonempty_segments_final"] = int(np.count_nonzero(cl.N))
    info["changed_weights"] = int(changed)
    return D, Vn, info


# ========================================================================================
# the pass
# ========================================================================================

def layer_targets(node) -> tuple[np.ndarray, np.ndarray]:
    """(float targets ``w / w_scale`` in integer units ``[G, R, C]``, scales ``[G, C]``)."""
    L = node.layer
    q = L.quant
    W = np.asarray(L.weight_value(node).const, np.float64)
    M = to_matrix(L.kind, W, L.groups, node.attrs)
    s = np.asarray(q.w_scale, np.float64).reshape(L.groups, L.cols)
    if L.kind == "gemm":  # quantize folds a Gemm's alpha into w_scale
        M = M * float(node.attrs.get("alpha", 1.0))
    return M / s[:, None, :], s


def layer_error_power(T: np.ndarray, V: np.ndarray, s: np.ndarray) -> float:
    """``sum_o s_o^2 sum_r (t - v)^2`` (float units)."""
    G, R, C = T.shape
    d = np.subtract(T, V, dtype=np.float64)       # in place: s^2 * (T - V)^2, the same numbers
    d *= d
    d *= (np.asarray(s, np.float64) ** 2).reshape(G, 1, C)
    return float(np.sum(d))


def _error_power_c_order(T: np.ndarray, V: np.ndarray, s: np.ndarray) -> float:
    """``layer_error_power(T, np.ascontiguousarray(V, np.int64), s)`` without the copy: with one C
    ordered operand numpy computes the differences into a C ordered array, so this sums the same
    numbers in the same order (tests/test_orchestrate.py checks it for every memory layout)."""
    G, R, C = T.shape
    d = np.empty(T.shape, np.float64)
    s2 = (np.asarray(s, np.float64) ** 2).reshape(G, C)
    if _Clearer.KERNELS and T.dtype == np.float64 and V.dtype.kind in "iu":   # the same terms, one pass
        ok = _kernels()
        nt, TB = ok.column_tiles(T)
        ok.run_tasks(ok.error_terms, nt, T, V, s2, d, TB, work=T.size)
    else:
        np.subtract(T, V, out=d, dtype=np.float64)
        d *= d
        d *= s2.reshape(G, 1, C)
    return float(np.sum(d))


@register
@dataclass(frozen=True)
class OrchestrateBits(Pass):
    name: ClassVar[str] = "orchestrate-bits"
    summary: ClassVar[str] = "signed-digit recoding and budgeted clearing of nearly empty column segments (SME)"

    error_budget: float = 0.25            # allowed relative increase of the weight error power
    max_digits: int | None = None         # at most k non-zero digits per weight (lossy)
    segment_rows: int | None = None       # none: target.rows
    max_segment_digits: int | None = None  # only try segments with at most this many digits (none: all)
    max_rounds: int = 64
    pre_reorder: bool = True              # define segments in a provisional reorder row order
    pre_reorder_swaps: int = 0            # swap-refinement rounds of that provisional order
    compensate: Literal["all", "lower"] = "all"   # planes a cleared weight may be re-represented on
    twos_complement: bool = True          # offer the two's-complement unit form in step 1

    def __post_init__(self):
        if not (self.error_budget >= 0.0 and math.isfinite(self.error_budget)):
            raise OptionError(f"orchestrate-bits: error-budget = {self.error_budget} must be a finite number >= 0")
        if self.max_digits is not None and self.max_digits < 1:
            raise OptionError(f"orchestrate-bits: max-digits = {self.max_digits} must be at least 1")
        if self.segment_rows is not None and self.segment_rows < 1:
            raise OptionError(f"orchestrate-bits: segment-rows = {self.segment_rows} must be at least 1")
        if self.max_segment_digits is not None and self.max_segment_digits < 1:
            raise OptionError(f"orchestrate-bits: max-segment-digits = {self.max_segment_digits} must be at least 1")
        if self.max_rounds < 0:
            raise OptionError(f"orchestrate-bits: max-rounds = {self.max_rounds} must be >= 0")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        t = ctx.target
        if t.weight_encoding != "split":
            raise OptionError(f"orchestrate-bits needs weight_encoding = 'split' (target {t.name!r} uses "
                              f"{t.weight_encoding!r}); drop the pass from the pipeline or --set weight_encoding=split")
        S = self.segment_rows or t.rows
        per_layer = {}
        tot = {"weights": 0, "digits_binary": 0.0, "digits_recoded": 0.0, "digits_final": 0.0,
               "nonempty_segments_sign_magnitude": 0, "nonempty_segments_recoded": 0,
               "nonempty_segments_final": 0, "segments_sign_magnitude": 0, "segments": 0,
               "E_q": 0.0, "E_final": 0.0, "signal": 0.0}
        changed = False
        for node in ctx.each_layer(graph):
            L = node.layer
            q = L.quant
            if q is None:
                raise OptionError(f"orchestrate-bits: layer {L.id} is not quantized; run 'quantize' first")
            wb, cb = q.weight_bits, t.cell_bits
            P = n_planes(wb, cb, "split", signed_digit=True)
            qmax = qmath.qmax_weight(wb)
            T, s = layer_targets(node)
            # (integer views: every use converts them exactly, the error powers to float64)
            V = to_matrix(L.kind, np.asarray(q.w_int), L.groups, node.attrs)
            if q.w_int_initial is None:       # V0 would be made exactly as V
                V0 = V
                frozen = np.zeros(V.shape, bool)
            else:
                V0 = to_matrix(L.kind, np.asarray(q.w_int_initial), L.groups, node.attrs)
                frozen = (V == 0) & (V0 != 0)
            E_q = E_q0 = layer_error_power(T, V0, s)
            if E_q <= 0.0 or q.prequantized:  # float weights say nothing beyond the integers
                E_q = float(np.sum((s ** 2)[:, None, :] * np.ones_like(T)) / 12.0)
            perm = L.row_perm
            if perm is None and self.pre_reorder:
                from .reorder import choose_row_perm  # noqa: PLC0415
                perm, _ = choose_row_perm(None, S, swap_rounds=self.pre_reorder_swaps,
                                          masks=recoded_support_masks(V, cb, P, t.signed_digits), planes=P)
            max_seg = self.max_segment_digits or S
            D, Vn, info = orchestrate_matrix(V, T, s, frozen, cell_bits=cb, planes=P, signed=t.signed_digits,
                                             qmax=qmax, segment_rows=S, perm=perm, max_digits=self.max_digits,
                                             budget=self.error_budget, E_q=E_q, max_segment_digits=max_seg,
                                             max_rounds=self.max_rounds, compensate=self.compensate,
                                             twos_complement=self.twos_complement)
            if not _Clearer.KERNELS and not np.array_equal(digits_value(D, cb), Vn):  # internal invariant
                # (the kernel path checks it while it writes D, see orchestrate_matrix)
                raise VerifyError(f"layer {L.id}: orchestrate-bits produced digits that do not add up")
            # (C ordered values: the C ordered terms that numpy would sum, in one pass)
            E_fin = _error_power_c_order(T, Vn, s) if Vn.flags.c_contiguous else layer_error_power(T, Vn, s)
            sig = float(np.sum((s ** 2)[:, None, :] * T ** 2))
            W_int = from_matrix(L.kind, Vn.astype(np.int32), tuple(q.w_int.shape), L.groups, node.attrs)
            q.w_int = np.ascontiguousarray(W_int, dtype=np.int32)      # (the pass reports a change anyway)
            if q.w_int_initial is None:
                q.w_int_initial = np.array(from_matrix(L.kind, V0.astype(np.int32), tuple(q.w_int.shape),
                                                       L.groups, node.attrs), dtype=np.int32)
            L.digits = D
            if perm is not None and L.row_perm is None:
                L.row_perm = np.ascontiguousarray(perm, dtype=np.int32)
                changed = True
            changed = True
            info.update({"planes": P, "segment_rows": S, "E_q": E_q, "E_final": E_fin,
                         "error_increase": E_fin / E_q - 1.0,
                         "w_sqnr_db_before": qmath.sqnr_db(sig, E_q0),
                         "w_sqnr_db_after": qmath.sqnr_db(sig, E_fin)})
            L.stats["orchestrate"] = info
            L.stats["w_sqnr_db"] = info["w_sqnr_db_after"]
            per_layer[L.id] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in info.items()}
            n = V.size
            tot["weights"] += n
            tot["digits_binary"] += info["digits_per_weight_binary"] * n
            tot["digits_recoded"] += info["digits_per_weight_recoded"] * n
            tot["digits_final"] += info["digits_per_weight_final"] * n
            for k in ("nonempty_segments_sign_magnitude", "nonempty_segments_recoded", "nonempty_segments_final",
                      "segments_sign_magnitude", "segments"):
                tot[k] += info[k]
            tot["E_q"] += E_q
            tot["E_final"] += E_fin
            tot["signal"] += sig
        n = max(tot["weights"], 1)
        stats = {"layers": len(per_layer), "error_budget": self.error_budget, "max_digits": self.max_digits,
                 "digits_per_weight": {"binary": tot["digits_binary"] / n, "recoded": tot["digits_recoded"] / n,
                                       "final": tot["digits_final"] / n},
                 "nonempty_segments": {"sign_magnitude": tot["nonempty_segments_sign_magnitude"],
                                       "recoded": tot["nonempty_segments_recoded"],
                                       "final": tot["nonempty_segments_final"]},
                 "empty_segments": {"sign_magnitude": tot["segments_sign_magnitude"] - tot["nonempty_segments_sign_magnitude"],
                                    "final": tot["segments"] - tot["nonempty_segments_final"]},
                 "nonempty_reduction_vs_sign_magnitude":
                     1.0 - tot["nonempty_segments_final"] / max(tot["nonempty_segments_sign_magnitude"], 1),
                 "error_increase": (tot["E_final"] / tot["E_q"] - 1.0) if tot["E_q"] > 0 else 0.0,
                 "w_sqnr_db_before": qmath.sqnr_db(tot["signal"], tot["E_q"]),
                 "w_sqnr_db_after": qmath.sqnr_db(tot["signal"], tot["E_final"]),
                 "per_layer": per_layer}
        return PassResult(changed, stats)
