"""squeeze: drop empty columns and rows, then pack the rest into few crossbars (SME step 3).

1. Per segment (from slice-bits): drop logical columns whose cells are all zero, then rows whose
   cells in the kept columns are all zero. Row supports are handled as packed bits (one bit per
   cell, :func:`pack_support`), so after one pass over the cells everything else works on 1/8
   of the data.
2. Items. Up to three candidate item sets are built per layer and each is packed with the
   heuristic of :mod:`xbc.packing`; the one with the fewest crossbars wins (ties: the first):

   * ``whole``: each squeezed segment is one item (the packer may split its columns; each piece
     conservatively reserves all the segment's rows);
   * ``chunks`` (option ``split``): the segment's kept columns sorted by row-support size
     (descending) then by support pattern (:func:`support_keys`; columns with similar row
     support sit together) and cut into ``Cx``-wide chunks plus a remainder; each chunk keeps
     only the rows its columns use, so the remainder (the sparsest columns) is short and can
     share a crossbar with other items;
   * ``chunks+tail``: as ``chunks``, with the remainder split once more into a denser and a
     sparser part at the cut that minimizes the summed bounding areas ``rows x cols`` (only
     when that is smaller than the unsplit remainder's area, and only if any segment has such
     a cut).
3. The winning item set is packed again with CP-SAT allowed (:func:`xbc.packing.pack`: exact
   when at most ``exact-limit`` shareable items remain, a proven heuristic beyond, always with a
   lower bound). Rectangles with disjoint rows and columns share a crossbar block-diagonally; an
   item's columns may be split across crossbars, and every placed piece is cut to the rows its
   own columns use (never more than the packer reserved). The program is built by
   :func:`xbc.packing.build_program` (same result and checks as
   :func:`xbc.layer.assemble_program`), copying each piece straight from the segment cells.

Packing scope: per layer. A crossbar holds cells of one layer only: all of a crossbar's rows are
driven by one input vector at a time and the crossbar belongs to one pipeline stage, so mixing
layers would serialize them (and place assigns whole crossbars to layers).

Result: ``layer.program`` is the packed program (same offset), ``layer.segments`` the placed
pieces (their ``cells`` are views into ``program.cells``), and layer stats
``crossbars_squeezed``, ``lower_bound``, ``pack_method``, ``pack_status``, ``squeeze_variant``,
``squeeze_items``, ``kept_columns``, ``kept_cells``. Deterministic: seeded heuristic orders,
CP-SAT with fixed seed and workers on deterministic time, unproven CP-SAT results discarded
(``seed`` None takes the compile seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from xbc.errors import OptionError, PassError
from xbc.layer import Segment
from xbc.packing import build_program, pack, pack_count
from xbc.passmanager import Pass, PassResult, register


def _popcount_rows(packed: np.ndarray) -> np.ndarray:
    """Set bits per row of a packed ``[..., bytes]`` uint8 array."""
    return np.add.reduce(np.bitwise_count(packed), axis=-1, dtype=np.int64)


def pack_support(cells: np.ndarray, binary: bool) -> np.ndarray:
    """Row supports of every column of ``[r, c]`` cells as packed bits ``[c, ceil(r/8)]``
    (``== np.packbits(cells.T != 0, axis=1)``, row 0 in the top bit). Eight shift-ors over rows
    of the (row-major) segment; for 0/1 cells no comparison is needed."""
    r, c = cells.shape
    nz = cells if binary else (cells != 0).view(np.uint8)
    out = np.zeros((-(-r // 8), c), np.uint8)
    for i in range(min(8, r)):
        rows = nz[i::8]
        out[:rows.shape[0]] |= rows << np.uint8(7 - i)
    return np.ascontiguousarray(out.T)


def support_keys(packed: np.ndarray, count: np.ndarray, rows: int) -> np.ndarray:
    """Column order from packed row supports ``[c, ceil(r/8)]``: support size descending, then
    the support pattern of the first 51 rows (lexicographic; exact when ``r <= 51``), so columns
    with similar row support sit together. One 64-bit key ``(r - size) << 51 | pattern``
    (13 bits hold any size up to 4096 rows)."""
    n = packed.shape[0]
    head = np.zeros((n, 8), np.uint8)
    k = min(8, packed.shape[1])
    head[:, :k] = packed[:, :k]
    pattern = head.view(">u8")[:, 0].astype(np.uint64) >> np.uint64(13)
    key = ((rows - count.astype(np.int64)).astype(np.uint64) << np.uint64(51)) | pattern
    return np.argsort(key, kind="stable")  # ties keep column order: the same on every platform


class _Seg:
    """A squeezed segment: kept columns ``cols`` (in item order) of ``seg``, their packed row
    supports ``packed`` ``[n, ceil(r/8)]`` and (lazily) their column tables."""

    __slots__ = ("seg", "cols", "packed", "r", "_tables")

    def __init__(self, seg, cols, packed, r):
        self.seg, self.cols, self.packed, self.r = seg, cols, packed, r
        self._tables = None

    def tables(self):
        if self._tables is None:
            c = self.cols
            self._tables = (self.seg.col_index[c], self.seg.col_shift[c], self.seg.col_sign[c])
        return self._tables

    def mask(self, lo: int, hi: int) -> np.ndarray:
        """Row mask of kept columns ``lo:hi``."""
        bits = np.bitwise_or.reduce(self.packed[lo:hi], axis=0)
        return np.unpackbits(bits, count=self.r).astype(bool)


class _Item:
    """Kept columns ``lo:hi`` of a :class:`_Seg` as one rectangle of ``nrows`` rows."""

    __slots__ = ("s", "lo", "hi", "nrows", "mask")

    def __init__(self, s, lo, hi, nrows, mask=None):
        self.s, self.lo, self.hi, self.nrows, self.mask = s, lo, hi, int(nrows), mask


def _segment_items(seg: Segment, Cx: int, split: bool, binary: bool):
    """Squeeze one segment; return its items for the variants ``whole``, ``chunks`` and
    ``chunks+tail`` (the last two None without ``split``) and its kept columns / cells.

    One pass over the cells packs their row supports (1/8 of the data); everything else works
    on the packed bits."""
    r = seg.cells.shape[0]
    packed = pack_support(seg.cells, binary)              # [L, ceil(r/8)], row 0 = MSB
    cnt = _popcount_rows(packed)
    keep = np.flatnonzero(cnt)
    if keep.size == 0:
        return None
    kept = (int(keep.size), int(cnt.sum()))
    if split:
        keep = keep[support_keys(packed[keep], cnt[keep], r)]
    pk = packed[keep]
    s = _Seg(seg, keep, pk, r)
    n = keep.size
    if not split:
        m_all = s.mask(0, n)
        return [_Item(s, 0, n, m_all.sum(), m_all)], None, None, kept
    nf = n // Cx
    lo = nf * Cx
    m = n - lo
    chunk_bits = np.bitwise_or.reduce(pk[:lo].reshape(nf, Cx, pk.shape[1]), axis=1)   # [nf, bytes]
    masks = np.unpackbits(chunk_bits, axis=1, count=r).astype(bool)
    counts = masks.sum(axis=1)
    chunks = [_Item(s, k * Cx, (k + 1) * Cx, counts[k], masks[k]) for k in range(nf)]
    all_bits = np.bitwise_or.reduce(chunk_bits, axis=0) if nf else np.zeros(pk.shape[1], np.uint8)
    if m == 0:
        m_all = np.unpackbits(all_bits, count=r).astype(bool)
        return [_Item(s, 0, n, m_all.sum(), m_all)], chunks, chunks, kept
    acc = np.bitwise_or.accumulate(pk[lo:], axis=0)                   # rows of [0, t]
    pre = _popcount_rows(acc)
    suf = _popcount_rows(np.bitwise_or.accumulate(pk[lo:][::-1], axis=0))[::-1]   # rows of [t, m)
    m_all = np.unpackbits(all_bits | acc[-1], count=r).astype(bool)
    whole = [_Item(s, 0, n, m_all.sum(), m_all)]
    one = chunks + [_Item(s, lo, n, pre[-1])]
    two = one
    if m >= 2:
        t = np.arange(1, m)
        area = t * pre[t - 1] + (m - t) * suf[t]
        k = int(np.argmin(area))
        if area[k] < m * int(pre[-1]):
            cut = int(t[k])
            two = chunks + [_Item(s, lo, lo + cut, pre[cut - 1]), _Item(s, lo + cut, n, suf[cut])]
    return whole, one, two, kept


def squeeze_layer(segments: list[Segment], Rx: int, Cx: int, *, split: bool, exact_limit: int,
                  time_limit: float, seed: int, workers: int, cell_bits: int = 8, offset: int = 0):
    """Squeeze and pack one layer's segments. Returns ``(program, pieces, placements, info)``.

    ``pieces`` are the placed rectangles as :class:`~xbc.layer.Segment` whose ``cells`` are views
    into ``program.cells`` (no second copy of the cells is kept); ``placements`` is in the
    format of :func:`xbc.layer.assemble_program`, and ``assemble_program(pieces, placements, Rx,
    Cx, offset)`` rebuilds ``program`` exactly (the tests check it)."""
    binary = cell_bits == 1
    per = [x for x in (_segment_items(seg, Cx, split, binary) for seg in segments) if x is not None]
    variants = [("whole", [it for w, _, _, _ in per for it in w])]
    if split:
        variants.append(("chunks", [it for _, c, _, _ in per for it in c]))
        if any(t is not c for _, c, t, _ in per):
            variants.append(("chunks+tail", [it for _, _, c, _ in per for it in c]))
    best = None
    for name, items in variants:
        shapes = [(it.nrows, it.hi - it.lo) for it in items]
        count, _, _ = pack_count(shapes, Rx, Cx, seed=seed)
        if best is None or count < best[2]:
            best = (name, items, count, shapes)
    name, items, _, shapes = best
    plc, lb, method, status = pack(shapes, Rx, Cx, exact_limit=exact_limit, time_limit=time_limit,
                                   seed=seed, workers=workers)
    # pieces: every placed column range cut to the rows its own columns use
    pieces: list[Segment] = []
    sources: list[tuple[_Seg, int, int, np.ndarray | None]] = []
    placements: list[list[tuple[int, int, int, int, int]]] = []
    for bin_ in plc:
        row0 = col0 = 0
        out = []
        for item, _r0, _c0, a, b in bin_:
            it = items[item]
            s = it.s
            lo, hi = it.lo + a, it.lo + b
            mask = it.mask if (a == 0 and b == it.hi - it.lo and it.mask is not None) else s.mask(lo, hi)
            nr = int(np.count_nonzero(mask))
            full = nr == s.r
            seg = s.seg
            ci, cs, sg = s.tables()
            p = Segment(group=seg.group, rows=seg.rows if full else seg.rows[mask],
                        col_index=ci[lo:hi], col_shift=cs[lo:hi], col_sign=sg[lo:hi], cells=None)
            out.append((len(pieces), row0, col0, 0, b - a))
            pieces.append(p)
            sources.append((s, lo, hi, None if full else mask))
            row0 += nr
            col0 += b - a
        placements.append(out)

    seg_index = {id(ps): k for k, (w, _, _, _) in enumerate(per) for ps in (w[0].s,)}

    def fill(cells, flat):
        # Visit the pieces segment by segment (in column order), so each segment's kept columns
        # are gathered once; runs of full-width, all-rows pieces in consecutive crossbars (the
        # bulk of a large layer) are copied with one block assignment.
        order = sorted(range(len(flat)), key=lambda e: (seg_index[id(sources[flat[e][1]][0])],
                                                        sources[flat[e][1]][1]))
        i, nflat = 0, len(order)
        while i < nflat:
            g0 = i
            s = sources[flat[order[i]][1]][0]
            while i < nflat and sources[flat[order[i]][1]][0] is s:
                i += 1
            group = order[g0:i]
            whole = np.take(s.seg.cells, s.cols, axis=1) if len(group) >= 4 else None   # [r, kept]
            a = 0
            while a < len(group):
                x, k, r0, c0, _a, n = flat[group[a]]
                _, lo, hi, mask = sources[k]
                b = a + 1
                if mask is None and r0 == 0 and c0 == 0 and n == Cx:
                    while b < len(group):
                        x2, k2, r02, c02, _a2, n2 = flat[group[b]]
                        _, lo2, _, mask2 = sources[k2]
                        if not (lo2 == lo + (b - a) * Cx and x2 == x + (b - a) and mask2 is None
                                and r02 == 0 and c02 == 0 and n2 == Cx):
                            break
                        b += 1
                q = b - a
                if whole is not None:
                    block = whole[:, lo:lo + q * n]
                else:
                    block = np.take(s.seg.cells, s.cols[lo:lo + q * n], axis=1)
                if mask is not None:
                    block = block[mask]
                r = block.shape[0]
                if q == 1:
                    cells[x, r0:r0 + r, c0:c0 + n] = block
                else:
                    cells[x:x + q, :r, :n] = block.reshape(r, q, n).transpose(1, 0, 2)
                for e in group[a:b]:
                    xe, ke, re0, ce0 = flat[e][:4]
                    pieces[ke].cells = cells[xe, re0:re0 + r, ce0:ce0 + n]
                a = b

    prog = build_program(pieces, placements, Rx, Cx, offset, fill=fill)
    info = {"lower_bound": int(lb), "pack_method": method, "pack_status": status,
            "squeeze_variant": name, "squeeze_items": len(items),
            "kept_columns": int(sum(k[0] for *_, k in per)),
            "kept_cells": int(sum(k[1] for *_, k in per))}
    return prog, pieces, placements, info


@register
@dataclass(frozen=True)
class Squeeze(Pass):
    name: ClassVar[str] = "squeeze"
    summary: ClassVar[str] = "drop empty columns/rows, pack the rest into few crossbars (SME step 3)"
    exact_limit: int = 24        # CP-SAT when at most this many shareable items remain
    time_limit: float = 2.0      # CP-SAT deterministic time limit per layer (seconds)
    seed: int | None = None      # None: the compile seed
    workers: int = 1             # CP-SAT workers (deterministic either way)
    split: bool = True           # split segments by row support (chunks / tail variants)

    def __post_init__(self):
        if self.exact_limit < 0:
            raise OptionError("squeeze: exact-limit must be >= 0")
        if self.time_limit < 0:
            raise OptionError("squeeze: time-limit must be >= 0 seconds")
        if self.workers < 1:
            raise OptionError("squeeze: workers must be >= 1")

    def run(self, graph, ctx) -> PassResult:
        t = ctx.target
        seed = ctx.seed if self.seed is None else self.seed
        tot = {"layers": 0, "crossbars_before": 0, "crossbars_squeezed": 0, "lower_bound": 0,
               "optimal_layers": 0, "cp_sat_layers": 0}
        for node in ctx.each_layer(graph):
            L = node.layer
            if L.segments is None or L.program is None:
                raise PassError(f"layer {L.id} ({node.name!r}) has no segments; run 'slice-bits' before 'squeeze'")
            before = L.program.n_crossbars
            L.program, L.segments, _, info = squeeze_layer(
                L.segments, t.rows, t.cols, split=self.split, exact_limit=self.exact_limit,
                time_limit=self.time_limit, seed=seed, workers=self.workers, cell_bits=t.cell_bits,
                offset=L.program.offset)
            info["crossbars_squeezed"] = L.program.n_crossbars
            L.stats.update(info)
            tot["layers"] += 1
            tot["crossbars_before"] += before
            tot["crossbars_squeezed"] += L.program.n_crossbars
            tot["lower_bound"] += info["lower_bound"]
            tot["optimal_layers"] += info["pack_status"] == "OPTIMAL"
            tot["cp_sat_layers"] += info["pack_method"] == "cp-sat"
        return PassResult(changed=tot["layers"] > 0, stats=tot)
