"""squeeze: drop empty columns and rows, then pack the rest into few crossbars (SME step 3).

1. Per segment (from slice-bits): drop logical columns whose cells are all zero, then rows whose
   cells in the kept columns are all zero. Row supports are handled as packed bits (one bit per
   cell, :func:`pack_support`), so after one pass over the cells everything else works on 1/8
   of the data.
   Per segment, one numba kernel (:func:`_segment_items_fast`) packs the supports, orders the
   columns and computes every item; the numpy functions here are its reference (``KERNELS``).
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

KERNELS = True   # numba kernels (False: the numpy reference everywhere)


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
        if KERNELS and self.packed.flags.c_contiguous:
            return _kernels()["mask"](self.packed, lo, hi, self.r)
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


def _segment_items_fast(seg: Segment, Cx: int, split: bool, binary: bool):
    """:func:`_segment_items` with its numerical work in one numba kernel (:func:`_k_items`):
    the same items, kept columns (in the same order), packed supports and masks."""
    cells = seg.cells
    if cells.dtype != np.uint8 or cells.ndim != 2 or cells.shape[0] == 0:
        return _segment_items(seg, Cx, split, binary)
    r = cells.shape[0]
    keep, pk, total, masks, counts, nf, m, pre_last, cut, pre_cut, suf_cut = _kernels()["items"](cells, split, Cx)
    n = keep.size
    if n == 0:
        return None
    kept = (int(n), int(total))
    s = _Seg(seg, keep, pk, r)
    counts = counts.tolist()
    whole = [_Item(s, 0, n, counts[nf], masks[nf])]
    if not split:
        return whole, None, None, kept
    chunks = [_Item(s, k * Cx, (k + 1) * Cx, counts[k], masks[k]) for k in range(nf)]
    if m == 0:
        return whole, chunks, chunks, kept
    lo = nf * Cx
    one = chunks + [_Item(s, lo, n, pre_last, masks[nf + 1])]
    if cut < 0:
        return whole, one, one, kept
    return whole, one, chunks + [_Item(s, lo, lo + cut, pre_cut, masks[nf + 2]),
                                 _Item(s, lo + cut, n, suf_cut, masks[nf + 3])], kept


# numba kernels (compiled, or loaded from numba's cache, on first use by :func:`_kernels`); the
# numpy functions above are the reference and the tests compare both.

def _k_unpack(bits, r, out):
    # np.unpackbits(bits, count=r).astype(bool) into out
    for i in range(r):
        out[i] = (bits[i >> 3] >> (7 - (i & 7))) & 1


def _k_popcount(bits):
    t = 0
    for b in range(bits.shape[0]):
        v = bits[b]
        while v:
            v &= v - 1
            t += 1
    return t


def _k_argsort(key):
    # stable argsort of uint64 keys (np.argsort(key, kind="stable")): LSD radix sort, 11-bit
    # digits (6 passes), skipping digits that all keys share
    n = key.shape[0]
    idx = np.arange(n)
    tmp = np.empty(n, np.int64)
    k1 = key.copy()
    k2 = np.empty(n, np.uint64)
    cnt = np.empty(2049, np.int64)
    mask = np.uint64(2047)
    for d in range(6):
        sh = np.uint64(11 * d)
        cnt[:] = 0
        for i in range(n):
            cnt[((k1[i] >> sh) & mask) + 1] += 1
        if n == 0 or cnt[((k1[0] >> sh) & mask) + 1] == n:
            continue
        for b in range(2048):
            cnt[b + 1] += cnt[b]
        for i in range(n):
            v = (k1[i] >> sh) & mask
            j = cnt[v]
            cnt[v] = j + 1
            tmp[j] = idx[i]
            k2[j] = k1[i]
        idx, tmp = tmp, idx
        k1, k2 = k2, k1
    return idx


def _k_items(cells, split, Cx):
    r, L = cells.shape
    nb = (r + 7) >> 3
    # row supports of every column, packed (pack_support) and counted
    tmp = np.zeros((nb, L), np.uint8)
    for b in range(nb):
        dst = tmp[b]
        for i in range(8 * b, min(r, 8 * b + 8)):
            row = cells[i]
            bit = np.uint8(1 << (7 - (i & 7)))
            for c in range(L):
                dst[c] = dst[c] | (bit if row[c] != 0 else np.uint8(0))
    cnt = np.zeros(L, np.int32)
    for b in range(nb):
        src = tmp[b]
        for c in range(L):
            x = src[c]
            x = x - ((x >> np.uint8(1)) & np.uint8(0x55))
            x = (x & np.uint8(0x33)) + ((x >> np.uint8(2)) & np.uint8(0x33))
            cnt[c] += np.int32((x + (x >> np.uint8(4))) & np.uint8(0x0F))
    n = 0
    total = 0
    for c in range(L):
        if cnt[c]:
            n += 1
            total += cnt[c]
    keep = np.empty(n, np.int64)
    j = 0
    for c in range(L):
        if cnt[c]:
            keep[j] = c
            j += 1
    if split and n > 0:
        # support_keys: (r - size) << 51 | the first 51 rows' pattern, stable order
        key = np.empty(n, np.uint64)
        hb = min(8, nb)
        for j in range(n):
            c = keep[j]
            pat = np.uint64(0)
            for b in range(hb):
                pat |= np.uint64(tmp[b, c]) << np.uint64(56 - 8 * b)
            key[j] = (np.uint64(r - cnt[c]) << np.uint64(51)) | (pat >> np.uint64(13))
        keep = keep[_k_argsort_nb(key)]
    pk = np.empty((n, nb), np.uint8)
    for j in range(n):
        c = keep[j]
        for b in range(nb):
            pk[j, b] = tmp[b, c]
    nf = n // Cx if split else 0
    masks = np.zeros((nf + 4, r), np.bool_)   # chunks, whole, remainder, remainder cut in two
    counts = np.zeros(nf + 4, np.int64)
    allb = np.zeros(nb, np.uint8)
    bits = np.zeros(nb, np.uint8)
    for k in range(nf):
        bits[:] = 0
        for j in range(k * Cx, (k + 1) * Cx):
            for b in range(nb):
                bits[b] |= pk[j, b]
        _k_unpack_nb(bits, r, masks[k])
        counts[k] = _k_popcount_nb(bits)
        for b in range(nb):
            allb[b] |= bits[b]
    lo = nf * Cx
    m = n - lo
    pre_last = 0
    cut = -1
    pre_cut = 0
    suf_cut = 0
    if split and m > 0:
        pre = np.empty(m, np.int64)
        suf = np.empty(m, np.int64)
        bits[:] = 0
        for t in range(m):
            for b in range(nb):
                bits[b] |= pk[lo + t, b]
            pre[t] = _k_popcount_nb(bits)
        for b in range(nb):
            allb[b] |= bits[b]
        bits[:] = 0
        for t in range(m - 1, -1, -1):
            for b in range(nb):
                bits[b] |= pk[lo + t, b]
            suf[t] = _k_popcount_nb(bits)
        pre_last = pre[m - 1]
        if m >= 2:
            best = -1
            ba = 0
            for t in range(1, m):
                a = t * pre[t - 1] + (m - t) * suf[t]
                if best < 0 or a < ba:
                    best = t
                    ba = a
            if ba < m * pre_last:
                cut = best
                pre_cut = pre[best - 1]
                suf_cut = suf[best]
                for part in range(2):
                    bits[:] = 0
                    for t in range(cut if part == 0 else m - cut):
                        for b in range(nb):
                            bits[b] |= pk[lo + t + (0 if part == 0 else cut), b]
                    _k_unpack_nb(bits, r, masks[nf + 2 + part])
        bits[:] = 0
        for t in range(m):
            for b in range(nb):
                bits[b] |= pk[lo + t, b]
        _k_unpack_nb(bits, r, masks[nf + 1])
    elif not split:
        for b in range(nb):   # OR over the kept columns = OR over all columns
            src = tmp[b]
            acc = np.uint8(0)
            for c in range(L):
                acc |= src[c]
            allb[b] = acc
    _k_unpack_nb(allb, r, masks[nf])
    counts[nf] = _k_popcount_nb(allb)
    return keep, pk, total, masks, counts, nf, m, pre_last, cut, pre_cut, suf_cut


def _k_mask(packed, lo, hi, r):
    # _Seg.mask: np.unpackbits(OR of packed[lo:hi], count=r).astype(bool)
    nb = packed.shape[1]
    bits = np.zeros(nb, np.uint8)
    for j in range(lo, hi):
        for b in range(nb):
            bits[b] |= packed[j, b]
    out = np.empty(r, np.bool_)
    _k_unpack_nb(bits, r, out)
    return out


def _k_fill(dst, src, cols, P, masks):
    # piece k = P[k] = (x, r0, c0, lo, hi, m): dst[x, r0 + i, c0 + j] = src[row_i, cols[lo + j]]
    # for the rows row_i of src in mask masks[m] (all rows when m < 0), j < hi - lo. Source row
    # by source row (one row of src stays in cache while every piece takes its columns)
    K = P.shape[0]
    row = P[:, 1].copy()
    for a in range(src.shape[0]):
        s = src[a]
        for k in range(K):
            m = P[k, 5]
            if m >= 0 and not masks[m, a]:
                continue
            x, c0, lo, hi = P[k, 0], P[k, 2], P[k, 3], P[k, 4]
            d = dst[x, row[k], c0:c0 + hi - lo]
            cc = cols[lo:hi]
            for j in range(hi - lo):
                d[j] = s[cc[j]]
            row[k] += 1


_k_unpack_nb = _k_popcount_nb = _k_argsort_nb = None
_KERNELS: dict = {}


def _kernels() -> dict:
    """The numba kernels of this pass, compiled on first use."""
    global _k_unpack_nb, _k_popcount_nb, _k_argsort_nb  # noqa: PLW0603
    if not _KERNELS:
        import numba  # noqa: PLC0415

        jit = numba.njit(cache=True, nogil=True)
        _k_unpack_nb = jit(_k_unpack)
        _k_popcount_nb = jit(_k_popcount)
        _k_argsort_nb = jit(_k_argsort)
        _KERNELS.update(items=jit(_k_items), mask=jit(_k_mask), fill=jit(_k_fill))
    return _KERNELS


def squeeze_layer(segments: list[Segment], Rx: int, Cx: int, *, split: bool, exact_limit: int,
                  time_limit: float, seed: int, workers: int, cell_bits: int = 8, offset: int = 0):
    """Squeeze and pack one layer's segments. Returns ``(program, pieces, placements, info)``.

    ``pieces`` are the placed rectangles as :class:`~xbc.layer.Segment` whose ``cells`` are views
    into ``program.cells`` (no second copy of the cells is kept); ``placements`` is in the
    format of :func:`xbc.layer.assemble_program`, and ``assemble_program(pieces, placements, Rx,
    Cx, offset)`` rebuilds ``program`` exactly (the tests check it)."""
    binary = cell_bits == 1
    items_of = _segment_items_fast if KERNELS else _segment_items
    per = [x for x in (items_of(seg, Cx, split, binary) for seg in segments) if x is not None]
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

    def fill_kernel(cells, flat):
        # one kernel call per source segment copies all its pieces (the rows of their masks, the
        # kept columns of their range); pieces never overlap (build_program checked it)
        by_seg: dict[int, list] = {}
        for e in flat:
            by_seg.setdefault(id(sources[e[1]][0]), []).append(e)
        k_fill = _kernels()["fill"]
        for ents in by_seg.values():
            s = sources[ents[0][1]][0]
            rows, masks = [], []
            for x, k, r0, c0, _a, _b in ents:
                _, lo, hi, mask = sources[k]
                if mask is None:
                    rows.append((x, r0, c0, lo, hi, -1))
                else:
                    rows.append((x, r0, c0, lo, hi, len(masks)))
                    masks.append(mask)
            P = np.array(rows, dtype=np.int64).reshape(-1, 6)
            M = np.stack(masks) if masks else np.zeros((0, s.r), np.bool_)
            k_fill(cells, s.seg.cells, s.cols, P, M)
            for x, k, r0, c0, a, b in ents:
                pieces[k].cells = cells[x, r0:r0 + len(pieces[k].rows), c0:c0 + b - a]

    def fill(cells, flat):
        if KERNELS and all(s.seg.cells.dtype == np.uint8 and s.seg.cells.ndim == 2 for s, *_ in sources):
            return fill_kernel(cells, flat)
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
