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
    the same). The swap refinement builds the support feature-major once per group; block counts
    are integer sums, the leave gain comes from the (rare) features held by one row of a block,
    and only the join counts use a float32 matrix product (exact). Column-order scoring
    (:func:`droppable_row_slots`) cuts every (plane, sign)'s chunks with one ``reduceat``.

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
            break
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
                perm, best, improved = cand, score, True
                break
            n //= 2
        if not improved:
            break
    return perm, best


def support_mask(digits_g: np.ndarray) -> np.ndarray:
    """Digits of one group ``[P, R, C]`` -> the row support as bit masks ``[R, C]`` (unsigned): bit
    ``s*P + p`` is set when the digit of plane ``p`` has sign ``s`` (0: positive, 1: negative) —
    the same information as :func:`row_support`, one word per (row, column)."""
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


def rarity_order(M: np.ndarray, P: int) -> np.ndarray:
    """Rows by rarity score ``sum_f X[r, f] * log(R / n_f)`` descending (stable), from the support
    masks ``M`` ``[R, C]`` (:func:`support_mask`, bit ``s*P + p``).

    The weights are rounded to integers in units of ``2**-k`` (``k`` as large as keeps every sum
    below ``2**53``: ``2**-36`` for a 4608 x 512 layer), so the scores are exact integers whatever
    the order of summation: equal supports (and equal multisets of feature counts) give equal
    scores, the row order breaks ties, on every machine (a float BLAS sum broke such ties by
    rounding noise). The counts ``n_f`` come from per-column histograms of each mask byte, the
    scores from per-column tables ``T[c, byte] = sum of the byte's feature weights``."""
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
    for g in range(G):
        Dg = None if digits is None else digits[:, g]
        M = support_mask(Dg) if masks is None else masks[g]
        cands: list[tuple[str, np.ndarray]] = [("identity", ident)]
        if current is not None:
            cands.append(("current", np.asarray(current[g], np.int64)))
        if R > S:
            cands.append(("rarity", rarity_order(M, P)))
            one = M.dtype.type(1)
            per_plane = [np.add.reduce(((M >> M.dtype.type(p)) | (M >> M.dtype.type(P + p))) & one, axis=1,
                                       dtype=np.int64) for p in range(P)]   # digits per row, plane p
            keys = tuple(-per_plane[p] for p in range(P))        # lexsort: last key is primary
            cands.append(("significance", np.lexsort(keys)))
        scores = [nonempty_count_mask(M, p, S) for _, p in cands]
        k = int(np.argmin(scores))
        name, perm, best = cands[k][0], cands[k][1], scores[k]
        if R > S and swap_rounds > 0:
            XT = feature_support_mask(M, P)
            p2, s2 = _swap_refine(None, perm, S, swap_rounds, M, XT=XT)
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
    chunk's rows at once."""
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


def droppable_row_slots(digits: np.ndarray, row_perm: np.ndarray, col_perm: np.ndarray, S: int, Cx: int) -> int:
    """Proxy for squeeze: per (plane, sign, group, row block), the non-empty columns in
    ``col_perm`` order are cut into chunks of ``Cx``; count (chunk, row) pairs that are all zero."""
    P, G, R, C = digits.shape
    return _droppable(_row_permuted_masks(digits, row_perm, S), col_perm, P, R, S, Cx)


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
    s_id = _droppable(Mp, ident, P, R, S, Cx)
    s_so = _droppable(Mp, sorted_perm, P, R, S, Cx)
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
