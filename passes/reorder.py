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


def _swap_refine(X: np.ndarray, perm: np.ndarray, S: int, rounds: int,
                 M: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Swap refinement (module docstring) of ``perm`` on the support ``X``; ``M`` its
    :func:`support_mask`, for exact counting."""
    R, F = X.shape
    nb = -(-R // S)
    perm = perm.copy()
    count = (lambda q: nonempty_count(X, q, S)) if M is None else (lambda q: nonempty_count_mask(M, q, S))
    best = count(perm)
    if nb < 2:
        return perm, best
    # only features that can be empty in some block matter
    nf = X.sum(axis=0)
    keep = (nf > 0) & (nf <= (nb - 1) * S)
    if not keep.any():
        return perm, best
    Xk = X[:, keep]
    Xf = Xk.astype(np.float32)
    for _ in range(rounds):
        pos = np.empty(R, np.int64)
        pos[perm] = np.arange(R)
        blk = pos // S                                          # block of each original row
        N = _block_counts(Xf, perm, S)                          # [nb, F']
        leave = (Xf @ (N == 1).T.astype(np.float32))[np.arange(R), blk]   # features only r brings
        join = Xf @ (N == 0).T.astype(np.float32)               # [R, nb] features block lacks
        gain = leave[:, None] - join                             # approx. benefit of r -> b
        gain[np.arange(R), blk] = -np.inf
        tgt = np.argmax(gain, axis=1)
        g = gain[np.arange(R), tgt]
        want = g > -np.inf
        # pair rows a->b with rows b->a
        pairs = []
        for a in range(nb):
            for b in range(a + 1, nb):
                ia = np.flatnonzero(want & (blk == a) & (tgt == b))
                ib = np.flatnonzero(want & (blk == b) & (tgt == a))
                if len(ia) == 0 or len(ib) == 0:
                    continue
                ia = ia[np.argsort(-g[ia], kind="stable")]
                ib = ib[np.argsort(-g[ib], kind="stable")]
                m = min(len(ia), len(ib))
                tot = g[ia[:m]] + g[ib[:m]]
                ok = tot > 0
                for i, j, v in zip(ia[:m][ok], ib[:m][ok], tot[ok]):
                    pairs.append((float(v), int(i), int(j)))
        if not pairs:
            break
        pairs.sort(key=lambda x: (-x[0], x[1], x[2]))
        improved = False
        while pairs:
            cand = perm.copy()
            pi = pos.copy()
            for _, i, j in pairs:
                pi[i], pi[j] = pi[j], pi[i]
            cand = np.empty(R, np.int64)
            cand[pi] = np.arange(R)
            score = count(cand)
            if score < best:
                perm, best, improved = cand, score, True
                break
            pairs = pairs[: len(pairs) // 2]
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


def rarity_order(pos: np.ndarray, neg: np.ndarray, R: int) -> np.ndarray:
    """Rows by rarity score ``sum_f X[r, f] * log(R / n_f)`` descending (stable), for the support
    ``X`` given as bool planes ``pos`` / ``neg`` ``[P, R, C]``.

    The weights are rounded to integers in units of ``2**-k`` (``k`` as large as keeps every sum
    below ``2**53``, at least 2**-20 resolution in practice), so every row sum is exact whatever
    order the BLAS adds in: equal supports (and equal multisets of feature counts) give equal
    scores, hence the row order, not rounding noise, breaks ties, on every machine."""
    P, _, C = pos.shape
    nf = np.stack([np.add.reduce(pos.view(np.uint8), axis=1, dtype=np.int64),
                   np.add.reduce(neg.view(np.uint8), axis=1, dtype=np.int64)], axis=1)   # [P, 2, C]
    w = np.where(nf > 0, np.log(R / np.maximum(nf, 1)), 0.0)
    total = float(w.sum()) + 1.0                   # bounds every row's score
    k = 52 - int(np.ceil(np.log2(total)))
    wq = np.round(np.ldexp(w, k))
    score = np.zeros(R)
    for p in range(P):
        score += pos[p] @ wq[p, 0]
        score += neg[p] @ wq[p, 1]
    return np.argsort(-score, kind="stable")


def choose_row_perm(digits: np.ndarray, S: int, current: np.ndarray | None = None,
                    swap_rounds: int = 4) -> tuple[np.ndarray, dict]:
    """Best row permutation per group for matrix-view digits ``[P, G, R, C]`` (module docstring).

    Returns (``[G, R]`` int32, {"identity": count, "chosen": count, "method": {name: groups}}).
    Candidates are scored on the bit-mask support (:func:`support_mask`); the ``[R, P*2*C]``
    support matrix is only built for the swap refinement.
    """
    P, G, R, C = digits.shape
    out = np.empty((G, R), np.int32)
    ident_total = chosen_total = 0
    methods: dict[str, int] = {}
    ident = np.arange(R, dtype=np.int64)
    if R <= S:  # one row block: every order gives the same segments
        base = np.tile(ident, (G, 1)) if current is None else np.asarray(current, np.int64)
        n = int(np.count_nonzero(np.stack([(digits > 0).any(axis=2), (digits < 0).any(axis=2)])))
        return base.astype(np.int32), {"identity": n, "chosen": n,
                                       "method": {"current" if current is not None else "identity": G}}
    for g in range(G):
        Dg = digits[:, g]
        M = support_mask(Dg)
        cands: list[tuple[str, np.ndarray]] = [("identity", ident)]
        if current is not None:
            cands.append(("current", np.asarray(current[g], np.int64)))
        if R > S:
            pos, neg = Dg > 0, Dg < 0
            cands.append(("rarity", rarity_order(pos, neg, R)))
            per_plane = np.add.reduce((pos | neg).view(np.uint8), axis=2, dtype=np.int64)   # [P, R]
            keys = tuple(-per_plane[p] for p in range(P))        # lexsort: last key is primary
            cands.append(("significance", np.lexsort(keys)))
            del pos, neg
        scores = [nonempty_count_mask(M, p, S) for _, p in cands]
        k = int(np.argmin(scores))
        name, perm, best = cands[k][0], cands[k][1], scores[k]
        if R > S and swap_rounds > 0:
            p2, s2 = _swap_refine(row_support(Dg), perm, S, swap_rounds, M)
            if s2 < best:
                name, perm, best = name + "+swap", p2, s2
        out[g] = perm
        ident_total += scores[0]
        chosen_total += best
        methods[name] = methods.get(name, 0) + 1
    return out, {"identity": ident_total, "chosen": chosen_total, "method": methods}


def droppable_row_slots(digits: np.ndarray, row_perm: np.ndarray, col_perm: np.ndarray, S: int, Cx: int) -> int:
    """Proxy for squeeze: per (plane, sign, group, row block), the non-empty columns in
    ``col_perm`` order are cut into chunks of ``Cx``; count (chunk, row) pairs that are all zero."""
    P, G, R, C = digits.shape
    nb = -(-R // S)
    total = 0
    for g in range(G):
        D = digits[:, g][:, row_perm[g]][:, :, col_perm[g]]       # [P, R, C] permuted
        Dp = np.zeros((P, nb * S, C), np.int8)
        Dp[:, :R] = D
        for sgn in (1, -1):
            Xs = (Dp * sgn > 0).reshape(P, nb, S, C)               # [P, nb, S, C]
            nonempty = Xs.any(axis=2)                              # [P, nb, C]
            for p in range(P):
                for b in range(nb):
                    cols = np.flatnonzero(nonempty[p, b])
                    if len(cols) == 0:
                        continue
                    rows_used = min(S, R - b * S)
                    blk = Xs[p, b, :rows_used][:, cols]             # [rows, k]
                    n_chunks = -(-len(cols) // Cx)
                    pad = np.zeros((rows_used, n_chunks * Cx), bool)
                    pad[:, :len(cols)] = blk
                    total += int((~pad.reshape(rows_used, n_chunks, Cx).any(axis=2)).sum())
    return total


def choose_col_perm(digits: np.ndarray, row_perm: np.ndarray, S: int, Cx: int) -> tuple[np.ndarray, dict]:
    P, G, R, C = digits.shape
    ident = np.tile(np.arange(C, dtype=np.int32), (G, 1))
    if C <= 1:
        return ident, {"identity": 0, "chosen": 0, "sorted": False}
    nb = -(-R // S)
    sorted_perm = np.empty((G, C), np.int32)
    for g in range(G):
        D = digits[:, g][:, row_perm[g]]
        Dp = np.zeros((P, nb * S, C), np.int8)
        Dp[:, :R] = D
        pat = np.stack([(Dp > 0).reshape(P, nb, S, C).any(axis=2),
                        (Dp < 0).reshape(P, nb, S, C).any(axis=2)], axis=1)   # [P, 2, nb, C]
        keys = pat[::-1].reshape(-1, C)                                      # highest plane first
        sorted_perm[g] = np.lexsort(tuple(~k for k in keys[::-1]))
    s_id = droppable_row_slots(digits, row_perm, ident, S, Cx)
    s_so = droppable_row_slots(digits, row_perm, sorted_perm, S, Cx)
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
            rp, rinfo = choose_row_perm(D, S, current=L.row_perm, swap_rounds=self.swap_rounds)
            if self.columns:
                cp, cinfo = choose_col_perm(D, rp, S, t.cols)
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
