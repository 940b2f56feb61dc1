"""reorder: permute each layer matrix's rows and columns so that more column segments are empty
(SME "reorder bit patterns").

Objective
    A column segment is ``(plane p, sign s, group g, row block b, column c)`` with ``b`` a block of
    ``segment-rows`` (default ``target.rows``) consecutive rows *in the permuted order*; it is
    empty when none of its rows holds a digit of that plane and sign in column ``c``. With the
    row support ``X[r, f]`` (``f = (p, s, c)``: row ``r`` has such a digit), the number of
    non-empty segments of a group is ``sum_b |union_{r in b} X[r]|``: rows that share their
    support (and rows with little support) should share blocks. Column order does not change
    this count; it decides which columns share a crossbar after squeeze.

Row permutation, per group (``layer.row_perm[g, i]`` = original row at permuted position ``i``):
    candidates, each scored exactly, the best kept (ties: the earlier one, identity first):

    1. identity; the layer's current ``row_perm`` (e.g. from orchestrate-bits' ``pre-reorder``);
    2. *rarity sort*: rows sorted by ``sum_f X[r, f] * log(R / n_f)`` (``n_f`` rows use feature
       ``f``) descending, so that rows carrying rare digits (high planes) gather in few blocks;
    3. *significance sort*: rows sorted lexicographically by their number of digits on the
       highest plane, then the next plane, ... (descending);
    4. *swap refinement* of the best so far: for every row the gain of leaving its block
       (features it alone brings) and the cost of joining each other block (its features that
       block lacks) — one matrix product ``X @ [N_b == 0]^T`` — give the best target block;
       rows wanting ``a -> b`` are paired with rows wanting ``b -> a`` by decreasing gain, the
       pairs swapped, and the batch kept only if the exact count drops (up to ``swap-rounds``
       rounds; a rejected batch is retried with its better half).

    The result is never worse than the identity (tested) and deterministic (no randomness).

    Implementation: candidates are scored on bit masks (one word per (row, column), a bit per
    (plane, sign): :func:`support_mask`), never on the ``[R, P*2*C]`` support matrix. The rarity
    score is an exact integer sum of the weights rounded to ``2**-k`` units (:func:`rarity_order`),
    so rows with equal supports tie exactly and keep their order on every machine (a float BLAS
    sum broke such ties by rounding noise; on synthetic ResNet-50 and MobileNet-v2 the orders are
    the same). The hot loops are numba kernels (``_k_*``, compiled on first use) on the masks,
    for the swap refinement packed 64 bits to a word: per round, which features one row / two
    rows of a block hold (two OR accumulators), then the leave gains and the join counts as
    popcounts of ANDs; all exact integers, so the results are those of the numpy code they
    replace, which stays as the reference (:func:`_swap_refine`, :func:`_rarity_order_reference`,
    :func:`_droppable`, :func:`_support_mask_numpy`; tested equal). Column-order scoring
    (:func:`droppable_row_slots`) walks each block's columns once with one OR accumulator per
    row for all (plane, sign) bits.

Column permutation, per group (``layer.col_perm``): squeeze packs, per (plane, sign, row block),
    the non-empty columns side by side into crossbars of ``target.cols`` columns and can drop a
    row of such a chunk when it is zero in all the chunk's columns. The proxy score is the number
    of (chunk, row) pairs that are all zero; candidates: identity, and columns sorted
    lexicographically by their non-empty-segment pattern (highest plane first); the better is kept.

Digits: ``layer.digits`` when set (orchestrate-bits), else what slice-bits would cut: sign-
magnitude digits of ``quant.w_int`` (:func:`xbc.layer.sign_magnitude_digits`), or, with the offset
encoding, the non-negative digits of ``w_int + 2**(weight_bits-1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from xbc.errors import OptionError
from xbc.ir import Graph
from xbc.layer import n_planes, sign_magnitude_digits, to_matrix
from xbc.passmanager import Pass, PassContext, PassResult, register


# ----------------------------------------------------------------------------------------
# numba kernels (compiled, or loaded from numba's cache, on first use: numba is imported then)
#
# Plain Python here; :func:`_kernels` compiles them. They work on the bit masks of
# :func:`support_mask`, often packed 64 bits to a word (:func:`_packed`: the masks of a row side
# by side), and compute exact integers: the same numbers as the numpy code they replace (kept as
# the reference and tested against it).
# ----------------------------------------------------------------------------------------

def _k_support_mask(D, P, out):
    # out[i] = sum_p [D[p, i] > 0] << p  |  [D[p, i] < 0] << (P + p)   (out zeroed by the caller)
    n = D.shape[1]
    zero = out.dtype.type(0)
    for p in range(P):
        bp = out.dtype.type(np.uint64(1) << np.uint64(p))
        bn = out.dtype.type(np.uint64(1) << np.uint64(P + p))
        d = D[p]
        for i in range(n):
            out[i] |= (bp if d[i] > 0 else zero) | (bn if d[i] < 0 else zero)


def _k_bit_counts(M, nbits):
    # out[q, c] = rows r with bit q of M[r, c] set
    R, C = M.shape
    out = np.zeros((nbits, C), np.int64)
    one = M.dtype.type(1)
    for r in range(R):
        row = M[r]
        for q in range(nbits):
            sh = M.dtype.type(q)
            o = out[q]
            for c in range(C):
                o[c] += np.int64((row[c] >> sh) & one)
    return out


def _k_plane_counts(M, P):
    # out[p, r] = columns c where row r has a digit of plane p (bit p or bit P + p)
    R, C = M.shape
    out = np.zeros((P, R), np.int64)
    one = M.dtype.type(1)
    shP = M.dtype.type(P)
    for r in range(R):
        row = M[r]
        for p in range(P):
            sh = M.dtype.type(p)
            a = 0
            for c in range(C):
                a += np.int64(((row[c] | (row[c] >> shP)) >> sh) & one)
            out[p, r] = a
    return out


def _k_rarity_score(M, wq):
    # score[r] = sum over the set bits q of M[r, c] of wq[q, c] (exact int64)
    R, C = M.shape
    nbits = wq.shape[0]
    score = np.zeros(R, np.int64)
    one = M.dtype.type(1)
    for r in range(R):
        row = M[r]
        a = 0
        for q in range(nbits):
            sh = M.dtype.type(q)
            w = wq[q]
            for c in range(C):
                a += w[c] & -np.int64((row[c] >> sh) & one)
        score[r] = a
    return score


def _k_nonempty(Mw, perm, S):
    # sum over row blocks of the set bits of the OR of the block's rows (rows in perm order)
    R, W = Mw.shape
    acc = np.zeros(W, np.uint64)
    total = 0
    for b0 in range(0, R, S):
        acc[:] = 0
        for i in range(b0, min(R, b0 + S)):
            row = Mw[perm[i]]
            for w in range(W):
                acc[w] |= row[w]
        for w in range(W):
            total += np.int64(_popcnt(acc[w]))
    return total


def _k_swap_round(Xw, perm, blk, S, nb):
    # one round of the swap refinement's targets: per row r the block b != blk[r] with the
    # largest gain leave[r] - join[r, b] (the first such b) and that gain; Xw the packed kept
    # features. A1[b] = features some row of b has, A2[b] = features two rows of b have.
    R, W = Xw.shape
    A1 = np.zeros((nb, W), np.uint64)
    A2 = np.zeros((nb, W), np.uint64)
    for i in range(R):
        b = i // S
        row = Xw[perm[i]]
        for w in range(W):
            A2[b, w] |= A1[b, w] & row[w]
            A1[b, w] |= row[w]
    O1 = A1 & ~A2                      # features exactly one row of b has
    Z = ~A1                            # features b lacks
    tgt = np.empty(R, np.int64)
    g = np.empty(R, np.float32)
    for r in range(R):
        row = Xw[r]
        own = blk[r]
        leave = 0
        for w in range(W):
            leave += np.int64(_popcnt(row[w] & O1[own, w]))
        best = 0
        tb = -1
        for b in range(nb):
            if b == own:
                continue
            j = 0
            zb = Z[b]
            for w in range(W):
                j += np.int64(_popcnt(row[w] & zb[w]))
            v = leave - j
            if tb < 0 or v > best:
                best = v
                tb = b
        tgt[r] = tb
        g[r] = best
    return tgt, g


def _k_droppable(At, cp, P, R, S, Cx):
    # _droppable on At [G, nb, C, S] (each block's column contiguous), cp [G, C]. Per block the
    # columns are walked in cp order with one OR accumulator per row for all bits at once: a
    # column empty for bit q in the block adds nothing to bit q, so bit q of the accumulator is
    # the OR over bit q's current chunk; when bit q starts a new chunk its rows are counted and
    # the bit cleared.
    G, nb, C, _ = At.shape
    dt = At.dtype.type
    zero = dt(0)
    one = dt(1)
    total = 0
    acc = np.zeros(S, At.dtype)
    cnt = np.zeros(2 * P, np.int64)
    for g in range(G):
        for b in range(nb):
            rows_used = min(S, R - b * S)
            acc[:] = zero
            cnt[:] = 0
            pairs = 0
            for ci in range(C):
                col = At[g, b, cp[g, ci]]
                o = zero
                for s in range(S):
                    o |= col[s]
                if o == zero:
                    continue
                new = zero
                for q in range(2 * P):
                    if (o >> dt(q)) & one:
                        if cnt[q] > 0 and cnt[q] % Cx == 0:
                            new |= one << dt(q)
                        cnt[q] += 1
                if new != zero:
                    keep = ~new
                    for s in range(S):
                        pairs += np.int64(_popcnt(acc[s] & new))
                        acc[s] &= keep
                for s in range(S):
                    acc[s] |= col[s]
            for s in range(S):
                pairs += np.int64(_popcnt(acc[s]))
            chunks = 0
            for q in range(2 * P):
                chunks += (cnt[q] + Cx - 1) // Cx
            total += chunks * rows_used - pairs
    return total


_popcnt = None
_KERNELS: dict = {}


def _kernels() -> dict:
    """The numba kernels above, compiled on first use."""
    global _popcnt  # noqa: PLW0603
    if not _KERNELS:
        import numba  # noqa: PLC0415
        from numba import types  # noqa: PLC0415
        from numba.extending import intrinsic  # noqa: PLC0415

        @intrinsic
        def popcnt(typingctx, x):
            if not isinstance(x, types.Integer):
                return None

            def codegen(context, builder, sig, args):
                return builder.ctpop(args[0])
            return x(x), codegen

        _popcnt = popcnt
        jit = numba.njit(cache=True, nogil=True)
        _KERNELS.update(support_mask=jit(_k_support_mask), bit_counts=jit(_k_bit_counts),
                        plane_counts=jit(_k_plane_counts), rarity_score=jit(_k_rarity_score),
                        nonempty=jit(_k_nonempty), swap_round=jit(_k_swap_round), droppable=jit(_k_droppable))
    return _KERNELS


def _packed(M: np.ndarray) -> np.ndarray:
    """Masks ``[R, C]`` (unsigned) -> ``[R, W]`` uint64: each row's masks side by side (columns
    padded with zeros to whole words)."""
    R, C = M.shape
    per = 8 // M.dtype.itemsize
    W = -(-C // per)
    out = np.zeros((R, W * per), M.dtype)
    out[:, :C] = M
    return out.view(np.uint64)


# ----------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------

def row_support(digits_g: np.ndarray) -> np.ndarray:
    """Digits of one group ``[P, R, C]`` -> bool support ``[R, P*2*C]``."""
    P, R, C = digits_g.shape
    X = np.stack([digits_g > 0, digits_g < 0], axis=1)        # [P, 2, R, C]
    return np.ascontiguousarray(X.transpose(2, 0, 1, 3).reshape(R, P * 2 * C))


def feature_support(digits_g: np.ndarray) -> np.ndarray:
    """``row_support(digits_g).T`` built directly: bool ``[P*2*C, R]`` (feature-major)."""
    P, R, C = digits_g.shape
    XT = np.empty((P, 2, C, R), bool)
    XT[:, 0] = (digits_g > 0).transpose(0, 2, 1)
    XT[:, 1] = (digits_g < 0).transpose(0, 2, 1)
    return XT.reshape(P * 2 * C, R)


def feature_support_mask(M: np.ndarray, P: int) -> np.ndarray:
    """:func:`feature_support` from a :func:`support_mask` ``[R, C]`` (bit ``s*P + p``)."""
    R, C = M.shape
    XT = np.empty((P, 2, C, R), bool)
    MT = np.ascontiguousarray(M.T)
    one = M.dtype.type(1)
    for s in range(2):
        for p in range(P):
            np.bitwise_and(MT >> M.dtype.type(s * P + p), one, out=XT[p, s].view(np.uint8), casting="unsafe")
    return XT.reshape(P * 2 * C, R)


def nonempty_count(X: np.ndarray, perm: np.ndarray, S: int) -> int:
    """Non-empty segments of one group's support ``X [R, F]`` in row order ``perm``."""
    R, F = X.shape
    nb = -(-R // S)
    Xp = np.zeros((nb * S, F), bool)
    Xp[:R] = X[perm]
    return int(Xp.reshape(nb, S, F).any(axis=1).sum())


def _block_counts(Xf: np.ndarray, perm: np.ndarray, S: int) -> np.ndarray:
    """Rows per block having each feature ``[nb, F]`` (float32 support ``Xf``; exact below 2**24)."""
    R = Xf.shape[0]
    nb = -(-R // S)
    pos = np.empty(R, np.int64)
    pos[perm] = np.arange(R)
    ind = np.zeros((nb, R), np.float32)
    ind[pos // S, np.arange(R)] = 1.0
    return ind @ Xf


def _pair_and_swap(pos, blk, tgt, g, nb, perm, best, count):
    """One swap round shared by the numpy and the kernel refinement: pair rows that want to move
    from block a to b with rows that want b to a, then apply the best-gain pairs all at once,
    halving their number until the count improves. Returns (perm, best, improved)."""
    R = len(pos)
    ar = np.arange(R, dtype=np.int64)
    want = g > -np.inf
    # pair rows a->b with rows b->a: per (a, b), both lists by decreasing gain (ties: row)
    idx = np.flatnonzero(want)
    idx = idx[np.lexsort((idx, -g[idx], tgt[idx], blk[idx]))]
    key = blk[idx] * nb + tgt[idx]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(idx)]
    group = {int(key[s]): (s, e) for s, e in zip(starts, ends)}
    PI, PJ, PV = [], [], []
    for kk, (s, e) in group.items():
        a, b = divmod(kk, nb)
        if a >= b or (b * nb + a) not in group:
            continue
        s2, e2 = group[b * nb + a]
        m = min(e - s, e2 - s2)
        ia, ib = idx[s:s + m], idx[s2:s2 + m]
        tot = g[ia] + g[ib]
        ok = tot > 0
        PI.append(ia[ok])
        PJ.append(ib[ok])
        PV.append(tot[ok].astype(np.float64))
    if not PI or not sum(len(x) for x in PI):
        return perm, best, False
    PI, PJ, PV = np.concatenate(PI), np.concatenate(PJ), np.concatenate(PV)
    order = np.lexsort((PJ, PI, -PV))                         # by gain, then rows
    PI, PJ = PI[order], PJ[order]
    improved = False
    n = len(PI)
    while n:
        pi = pos.copy()                # every row is in at most one pair: swap all at once
        pi[PI[:n]], pi[PJ[:n]] = pos[PJ[:n]], pos[PI[:n]]
        cand = np.empty(R, np.int64)
        cand[pi] = ar
        score = count(cand)
        if score < best:
            return cand, score, True
        n //= 2
    return perm, best, improved


def _swap_refine(X: np.ndarray | None, perm: np.ndarray, S: int, rounds: int,
                 M: np.ndarray | None = None, XT: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Swap refinement (module docstring) of ``perm`` on the support ``X`` ``[R, F]`` (or its
    feature-major transpose ``XT`` ``[F, R]``, cheaper to slice); ``M`` its
    :func:`support_mask`, for exact counting.

    Per round: block counts ``N = ind @ X`` and the joins ``X @ [N == 0]^T`` are float32 matrix
    products of 0/1 matrices (exact below 2**24); the leave gain uses that ``N[b, f] == 1``
    has exactly one row of block ``b`` with feature ``f`` (found directly)."""
    if XT is None:
        XT = X.T
    F, R = XT.shape
    nb = -(-R // S)
    perm = perm.copy()
    if M is None:
        Xr = np.ascontiguousarray(XT.T)
        count = lambda q: nonempty_count(Xr, q, S)  # noqa: E731
    else:
        count = lambda q: nonempty_count_mask(M, q, S)  # noqa: E731
    best = count(perm)
    if nb < 2:
        return perm, best
    # only features that can be empty in some block matter
    nf = np.add.reduce(XT.view(np.uint8), axis=1, dtype=np.int64)
    keep = (nf > 0) & (nf <= (nb - 1) * S)
    if not keep.any():
        return perm, best
    XTk = XT[keep]                                              # [F', R]
    Xf = XTk.astype(np.float32).T                               # [R, F'] (a transposed view)
    XTp = np.zeros((XTk.shape[0], R + 1), bool)                 # column R: an empty padding row
    XTp[:, :R] = XTk
    del XTk
    ar = np.arange(R)
    for _ in range(rounds):
        pos = np.empty(R, np.int64)
        pos[perm] = ar
        blk = pos // S                                          # block of each original row
        permp = np.full(nb * S, R, np.int64)
        permp[:R] = perm
        # rows per block having each feature [nb, F'] (= _block_counts(Xf, perm, S), in integers)
        N = np.add.reduce(np.take(XTp, permp, axis=1).view(np.uint8).reshape(len(XTp), nb, S), axis=2,
                          dtype=np.int32).T
        # features only r brings to its block: for N[b, f] == 1 the one row of b having f
        bi, fi = np.nonzero(N == 1)
        leave = np.zeros(R, np.float32)
        if len(bi):
            rows = permp.reshape(nb, S)[bi]                     # [k, S] rows of each block (R: padding)
            has = XTp[fi[:, None], rows]
            np.add.at(leave, rows[np.arange(len(bi)), has.argmax(axis=1)], 1.0)
        join = Xf @ (N == 0).T.astype(np.float32)               # [R, nb] features block lacks
        gain = leave[:, None] - join                             # approx. benefit of r -> b
        gain[ar, blk] = -np.inf
        tgt = np.argmax(gain, axis=1)
        g = gain[ar, tgt]
        perm, best, improved = _pair_and_swap(pos, blk, tgt, g, nb, perm, best, count)
        if not improved:
            break
    return perm, best


def _swap_refine_mask(M: np.ndarray, P: int, perm: np.ndarray, S: int, rounds: int, Mw: np.ndarray | None = None,
                      counts: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """:func:`_swap_refine` on the masks ``M`` (:func:`support_mask`) alone, the same result
    (tested): per round the block counts, the leave gains and the join counts come from one
    kernel on the kept features packed 64 to a word (exact integers, as the float32 products of
    0/1 matrices there); the pairing and the exact counts are those of :func:`_swap_refine`.
    ``Mw`` (:func:`_packed` ``M``) and ``counts`` (rows per (bit, column), ``[2P, C]``) if known."""
    kern = _kernels()
    R, C = M.shape
    nb = -(-R // S)
    perm = np.array(perm, np.int64)
    Mw = _packed(M) if Mw is None else Mw
    count = lambda q: int(kern["nonempty"](Mw, q, S))  # noqa: E731
    best = count(perm)
    if nb < 2:
        return perm, best
    # only features that can be empty in some block matter
    nf = kern["bit_counts"](M, 2 * P) if counts is None else counts   # [2P, C] rows per (bit, column)
    keep = (nf > 0) & (nf <= (nb - 1) * S)
    if not keep.any():
        return perm, best
    bits = np.zeros(C, M.dtype)
    for q in range(2 * P):
        bits[keep[q]] |= M.dtype.type(1 << q)
    Xw = _packed(M & bits)                                      # the kept features
    ar = np.arange(R)
    for _ in range(rounds):
        pos = np.empty(R, np.int64)
        pos[perm] = ar
        blk = pos // S                                          # block of each original row
        tgt, g = kern["swap_round"](Xw, perm, blk, S, nb)      # best target block, its gain
        perm, best, improved = _pair_and_swap(pos, blk, tgt, g, nb, perm, best, count)
        if not improved:
            break
    return perm, best


def support_mask(digits_g: np.ndarray) -> np.ndarray:
    """Digits of one group ``[P, R, C]`` -> the row support as bit masks ``[R, C]`` (unsigned): bit
    ``s*P + p`` is set when the digit of plane ``p`` has sign ``s`` (0: positive, 1: negative) —
    the same information as :func:`row_support`, one word per (row, column). (Any trailing shape:
    ``[P, G, R, C]`` gives ``[G, R, C]``.)"""
    P = digits_g.shape[0]
    dts = [np.dtype(d) for d in (np.uint8, np.uint16, np.uint32, np.uint64)]
    dt = next((d for d in dts if 8 * d.itemsize >= 2 * P), None)
    if dt is None:
        raise ValueError(f"{P} digit planes do not fit a 64-bit support mask")
    shape = digits_g.shape[1:]
    n = int(np.prod(shape))
    D = np.asarray(digits_g)
    if P == 0 or n == 0 or D.dtype.kind not in "iu":
        return _support_mask_numpy(D)
    out = np.zeros(n, dt)
    _kernels()["support_mask"](np.ascontiguousarray(D).reshape(P, n), P, out)
    return out.reshape(shape)


def _support_mask_numpy(digits_g: np.ndarray) -> np.ndarray:
    """:func:`support_mask` in numpy (the reference)."""
    P = digits_g.shape[0]
    dts = [np.dtype(d) for d in (np.uint8, np.uint16, np.uint32, np.uint64)]
    dp = next(d for d in dts if 8 * d.itemsize >= P)
    dt = next((d for d in dts if 8 * d.itemsize >= 2 * P), None)
    if dt is None:
        raise ValueError(f"{P} digit planes do not fit a 64-bit support mask")
    pm = np.zeros(digits_g.shape[1:], dp)
    nm = np.zeros(digits_g.shape[1:], dp)
    for p in range(P):
        pm |= (digits_g[p] > 0).view(np.uint8).astype(dp, copy=False) << dp.type(p)
        nm |= (digits_g[p] < 0).view(np.uint8).astype(dp, copy=False) << dp.type(p)
    return pm.astype(dt) | (nm.astype(dt) << dt.type(P))


def nonempty_count_mask(M: np.ndarray, perm: np.ndarray, S: int) -> int:
    """:func:`nonempty_count` from :func:`support_mask` (the same number)."""
    R, C = M.shape
    nb = -(-R // S)
    Mp = np.zeros((nb * S, C), M.dtype)
    Mp[:R] = M[perm]
    return int(np.bitwise_count(np.bitwise_or.reduce(Mp.reshape(nb, S, C), axis=1)).sum(dtype=np.int64))


_BYTE_BITS = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(np.int64)   # [256, 8]


def rarity_order(M: np.ndarray, P: int, counts: np.ndarray | None = None) -> np.ndarray:
    """Rows by rarity score ``sum_f X[r, f] * log(R / n_f)`` descending (stable), from the support
    masks ``M`` ``[R, C]`` (:func:`support_mask`, bit ``s*P + p``).

    The weights are rounded to integers in units of ``2**-k`` (``k`` as large as keeps every sum
    below ``2**53``: ``2**-36`` for a 4608 x 512 layer), so the scores are exact integers whatever
    the order of summation: equal supports (and equal multisets of feature counts) give equal
    scores, the row order breaks ties, on every machine (a float BLAS sum broke such ties by
    rounding noise). The counts ``n_f`` (``counts`` if given) and the scores come from numba
    kernels on the masks (:func:`_rarity_order_reference`: the same, from byte histograms and
    tables in numpy)."""
    R, C = M.shape
    M = np.ascontiguousarray(M)
    kern = _kernels()
    # the counts n_f [2P, C] (bit s*P + p; ``counts`` if given): int64, laid out as the histograms gave them
    nf = kern["bit_counts"](M, 2 * P) if counts is None else np.ascontiguousarray(counts, np.int64)
    nf = nf.reshape(2, P, C).transpose(1, 0, 2)                              # [P, 2, C]
    w = np.where(nf > 0, np.log(R / np.maximum(nf, 1)), 0.0)
    total = float(w.sum()) + 1.0                   # bounds every row's score
    k = 52 - int(np.ceil(np.log2(total)))
    wq = np.ascontiguousarray(np.round(np.ldexp(w, k)).astype(np.int64).transpose(1, 0, 2).reshape(2 * P, C))
    score = kern["rarity_score"](M, wq)            # exact integers: any order of summation
    return np.argsort(-score, kind="stable")


def _rarity_order_reference(M: np.ndarray, P: int) -> np.ndarray:
    """:func:`rarity_order` with numpy histograms and tables (the reference)."""
    R, C = M.shape
    M = np.ascontiguousarray(M)
    nbytes = M.dtype.itemsize
    by = M.astype(M.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(R, C, nbytes)
    cbase = (np.arange(C, dtype=np.int64) * 256)[None, :]
    hist = [np.bincount((cbase + by[..., k]).reshape(-1), minlength=C * 256).reshape(C, 256)
            for k in range(nbytes)]
    nf = np.concatenate([(h @ _BYTE_BITS).T for h in hist])[:2 * P]          # [2P, C] (bit s*P + p)
    nf = nf.reshape(2, P, C).transpose(1, 0, 2)                              # [P, 2, C]
    w = np.where(nf > 0, np.log(R / np.maximum(nf, 1)), 0.0)
    total = float(w.sum()) + 1.0                   # bounds every row's score
    k = 52 - int(np.ceil(np.log2(total)))
    wq = np.zeros((8 * nbytes, C), np.int64)
    wq[:2 * P] = np.round(np.ldexp(w, k)).astype(np.int64).transpose(1, 0, 2).reshape(2 * P, C)
    score = np.zeros(R, np.int64)
    for kb in range(nbytes):
        T = np.ascontiguousarray((_BYTE_BITS @ wq[8 * kb:8 * kb + 8]).T).reshape(-1)   # [C * 256]
        score += T[cbase + by[..., kb]].sum(axis=1)
    return np.argsort(-score, kind="stable")


def choose_row_perm(digits: np.ndarray | None, S: int, current: np.ndarray | None = None,
                    swap_rounds: int = 4, masks: np.ndarray | None = None,
                    planes: int | None = None) -> tuple[np.ndarray, dict]:
    """Best row permutation per group for matrix-view digits ``[P, G, R, C]`` (module docstring).

    Returns (``[G, R]`` int32, {"identity": count, "chosen": count, "method": {name: groups}}).
    Candidates are scored on the bit-mask support (:func:`support_mask`, or ``masks`` ``[G, R,
    C]`` when given; then ``digits`` may be None with ``planes`` = P); the ``[R, P*2*C]``
    support matrix is only built for the swap refinement.
    """
    if digits is None:
        G, R, C = masks.shape
        P = int(planes)
    else:
        P, G, R, C = digits.shape
    out = np.empty((G, R), np.int32)
    ident_total = chosen_total = 0
    methods: dict[str, int] = {}
    ident = np.arange(R, dtype=np.int64)
    if R <= S:  # one row block: every order gives the same segments
        base = np.tile(ident, (G, 1)) if current is None else np.asarray(current, np.int64)
        if digits is None:
            n = int(np.bitwise_count(np.bitwise_or.reduce(masks, axis=1)).sum(dtype=np.int64))
        else:
            n = int(np.count_nonzero(np.stack([(digits > 0).any(axis=2), (digits < 0).any(axis=2)])))
        return base.astype(np.int32), {"identity": n, "chosen": n,
                                       "method": {"current" if current is not None else "identity": G}}
    kern = _kernels()
    for g in range(G):
        Dg = None if digits is None else digits[:, g]
        M = np.ascontiguousarray(support_mask(Dg) if masks is None else masks[g])
        Mw = _packed(M)
        counts = kern["bit_counts"](M, 2 * P) if R > S else None      # rows per (bit, column)
        cands: list[tuple[str, np.ndarray]] = [("identity", ident)]
        if current is not None:
            cands.append(("current", np.asarray(current[g], np.int64)))
        if R > S:
            cands.append(("rarity", rarity_order(M, P, counts)))
            per_plane = kern["plane_counts"](M, P)               # [P, R] digits per row, plane p
            keys = tuple(-per_plane[p] for p in range(P))        # lexsort: last key is primary
            cands.append(("significance", np.lexsort(keys)))
        # nonempty_count_mask of each candidate (the same count, on packed masks)
        scores = [int(kern["nonempty"](Mw, np.ascontiguousarray(p, np.int64), S)) for _, p in cands]
        k = int(np.argmin(scores))
        name, perm, best = cands[k][0], cands[k][1], scores[k]
        if R > S and swap_rounds > 0:
            p2, s2 = _swap_refine_mask(M, P, perm, S, swap_rounds, Mw, counts)
            if s2 < best:
                name, perm, best = name + "+swap", p2, s2
        out[g] = perm
        ident_total += scores[0]
        chosen_total += best
        methods[name] = methods.get(name, 0) + 1
    return out, {"identity": ident_total, "chosen": chosen_total, "method": methods}


def _row_permuted_masks(digits: np.ndarray, row_perm: np.ndarray, S: int,
                        masks: np.ndarray | None = None) -> np.ndarray:
    """:func:`support_mask` of every group (``masks`` if given), rows in ``row_perm`` order,
    padded to whole blocks: ``[G, nb * S, C]``."""
    P, G, R, C = digits.shape
    nb = -(-R // S)
    M = support_mask(digits) if masks is None else masks               # [G, R, C]
    Mp = np.zeros((G, nb * S, C), M.dtype)
    Mp[:, :R] = M[np.arange(G)[:, None], np.asarray(row_perm, np.intp)]
    return Mp


def _droppable(Mp: np.ndarray, col_perm: np.ndarray, P: int, R: int, S: int, Cx: int) -> int:
    """:func:`droppable_row_slots` on row-permuted masks (:func:`_row_permuted_masks`).

    Per mask bit (plane, sign): the non-empty columns of each (group, block) in ``col_perm``
    order are cut into chunks of ``Cx``; slots = ``sum rows_used * chunks`` minus the (chunk,
    row) pairs holding a bit. Columns that are empty for that bit in a block hold no such bit
    there, so each chunk is the contiguous column range from its first to the next chunk's first
    column, and one ``np.bitwise_or.reduceat`` over the (group, block, column) axis gives every
    chunk's rows at once. (The numpy reference of :func:`_droppable_fast`.)"""
    G, RS, C = Mp.shape
    nb = RS // S
    cp = np.asarray(col_perm, np.intp)
    if np.array_equal(cp, np.broadcast_to(np.arange(C), cp.shape)):
        A = Mp.reshape(G, nb, S, C)
    else:
        A = np.take_along_axis(Mp, cp[:, None, :], axis=2).reshape(G, nb, S, C)
    Ob = np.bitwise_or.reduce(A, axis=2)                                # [G, nb, C]
    At = np.ascontiguousarray(A.transpose(2, 0, 1, 3)).reshape(S, G * nb * C)
    rows_used = np.minimum(S, R - np.arange(nb) * S)
    dt = Mp.dtype.type
    total = 0
    for q in range(2 * P):
        bit = dt(1 << q)
        ne = (Ob & bit) != 0                                            # [G, nb, C]
        cnt = np.add.reduce(ne.view(np.uint8), axis=2, dtype=np.int64)   # non-empty columns
        if not cnt.any():
            continue
        total += int(((-(-cnt // Cx)) * rows_used[None, :]).sum())
        rank = np.cumsum(ne, axis=2) - 1
        start = np.flatnonzero((ne & (rank % Cx == 0)).reshape(-1))
        total -= int(np.count_nonzero(np.bitwise_or.reduceat(At, start, axis=1) & bit))
    return total


def _droppable_fast(At: np.ndarray, col_perm: np.ndarray, P: int, R: int, S: int, Cx: int) -> int:
    """:func:`_droppable` from the masks transposed to ``[G, nb, C, S]`` (:func:`_block_columns`),
    one kernel (the same number)."""
    return int(_kernels()["droppable"](At, np.ascontiguousarray(col_perm, np.int64), P, R, S, Cx))


def _block_columns(Mp: np.ndarray, S: int) -> np.ndarray:
    """Row-permuted masks ``[G, nb * S, C]`` -> ``[G, nb, C, S]``: each block's column contiguous."""
    G, RS, C = Mp.shape
    return np.ascontiguousarray(Mp.reshape(G, RS // S, S, C).transpose(0, 1, 3, 2))


def droppable_row_slots(digits: np.ndarray, row_perm: np.ndarray, col_perm: np.ndarray, S: int, Cx: int) -> int:
    """Proxy for squeeze: per (plane, sign, group, row block), the non-empty columns in
    ``col_perm`` order are cut into chunks of ``Cx``; count (chunk, row) pairs that are all zero."""
    P, G, R, C = digits.shape
    return _droppable_fast(_block_columns(_row_permuted_masks(digits, row_perm, S), S), col_perm, P, R, S, Cx)


def choose_col_perm(digits: np.ndarray, row_perm: np.ndarray, S: int, Cx: int,
                    masks: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    P, G, R, C = digits.shape
    ident = np.tile(np.arange(C, dtype=np.int32), (G, 1))
    if C <= 1:
        return ident, {"identity": 0, "chosen": 0, "sorted": False}
    nb = -(-R // S)
    Mp = _row_permuted_masks(digits, row_perm, S, masks)
    Ob = np.bitwise_or.reduce(Mp.reshape(G, nb, S, C), axis=2)          # [G, nb, C]
    dt = Mp.dtype.type
    sorted_perm = np.empty((G, C), np.int32)
    for g in range(G):
        # pattern [P, 2, nb, C]: column's non-empty segments; keys highest plane first
        pat = np.stack([np.stack([(Ob[g] & dt(1 << (s * P + p))) != 0 for s in range(2)]) for p in range(P)])
        keys = pat[::-1].reshape(-1, C)
        sorted_perm[g] = np.lexsort(tuple(~k for k in keys[::-1]))
    At = _block_columns(Mp, S)
    s_id = _droppable_fast(At, ident, P, R, S, Cx)
    s_so = _droppable_fast(At, sorted_perm, P, R, S, Cx)
    if s_so > s_id:
        return sorted_perm, {"identity": s_id, "chosen": s_so, "sorted": True}
    return ident, {"identity": s_id, "chosen": s_id, "sorted": False}


def layer_digits(node, target) -> np.ndarray:
    """Digits the layer will be cut into (module docstring)."""
    L = node.layer
    if L.digits is not None:
        return np.asarray(L.digits)
    q = L.quant
    W = to_matrix(L.kind, np.asarray(q.w_int, np.int64), L.groups, node.attrs)
    if target.weight_encoding == "offset":
        P = n_planes(q.weight_bits, target.cell_bits, "offset")
        return sign_magnitude_digits(W + (1 << (q.weight_bits - 1)), target.cell_bits, P)
    P = n_planes(q.weight_bits, target.cell_bits, "split")
    return sign_magnitude_digits(W, target.cell_bits, P)


@register
@dataclass(frozen=True)
class Reorder(Pass):
    name: ClassVar[str] = "reorder"
    summary: ClassVar[str] = "permute rows/columns of each layer so non-zero bits cluster (more empty segments)"

    segment_rows: int | None = None   # none: target.rows
    swap_rounds: int = 4
    columns: bool = True              # also choose a column order

    def __post_init__(self):
        if self.segment_rows is not None and self.segment_rows < 1:
            raise OptionError(f"reorder: segment-rows = {self.segment_rows} must be at least 1")
        if self.swap_rounds < 0:
            raise OptionError(f"reorder: swap-rounds = {self.swap_rounds} must be >= 0")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        t = ctx.target
        S = self.segment_rows or t.rows
        per_layer = {}
        tot_id = tot_ch = 0
        changed = False
        for node in ctx.each_layer(graph):
            L = node.layer
            if L.quant is None:
                raise OptionError(f"reorder: layer {L.id} is not quantized; run 'quantize' first")
            D = layer_digits(node, t)
            masks = support_mask(D)
            rp, rinfo = choose_row_perm(D, S, current=L.row_perm, swap_rounds=self.swap_rounds, masks=masks)
            if self.columns:
                cp, cinfo = choose_col_perm(D, rp, S, t.cols, masks=masks)
            else:
                cp, cinfo = np.tile(np.arange(L.cols, dtype=np.int32), (L.groups, 1)), {}
            if L.row_perm is None or not np.array_equal(L.row_perm, rp):
                changed = True
            if L.col_perm is None or not np.array_equal(L.col_perm, cp):
                changed = True
            L.row_perm = np.ascontiguousarray(rp, dtype=np.int32)
            L.col_perm = np.ascontiguousarray(cp, dtype=np.int32)
            info = {"nonempty_segments_identity": rinfo["identity"], "nonempty_segments": rinfo["chosen"],
                    "row_method": rinfo["method"], "segment_rows": S,
                    "droppable_row_slots_identity": cinfo.get("identity"),
                    "droppable_row_slots": cinfo.get("chosen")}
            L.stats["reorder"] = info
            per_layer[L.id] = info
            tot_id += rinfo["identity"]
            tot_ch += rinfo["chosen"]
        stats = {"layers": len(per_layer), "nonempty_segments_identity": tot_id, "nonempty_segments": tot_ch,
                 "segments_saved": tot_id - tot_ch, "per_layer": per_layer}
        return PassResult(changed, stats)
