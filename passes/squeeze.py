"""squeeze: drop empty columns and rows, then pack the rest into few crossbars (SME step 3).

1. Per segment (from slice-bits): drop logical columns whose cells are all zero, then rows whose
   cells in the kept columns are all zero.
2. Items. Three candidate item sets are built per layer and each is packed with the heuristic of
   :func:`xbc.packing.pack`; the one with the fewest crossbars wins (ties: the simpler one):

   * ``whole``: each squeezed segment is one item (the packer may split its columns; each piece
     conservatively reserves all the segment's rows);
   * ``chunks`` (option ``split``): the segment's columns sorted by row-support size (descending)
     then by support pattern (so columns with similar row support sit together) and cut into
     ``Cx``-wide chunks plus a remainder; each chunk keeps only the rows its columns use, so the
     remainder (the sparsest columns) is short and can share a crossbar with other items;
   * ``chunks+tail``: as ``chunks``, with the remainder split once more into a denser and a
     sparser part at the cut that minimizes the summed bounding areas ``rows x cols`` (taken
     only when it is smaller than the unsplit remainder's area).
3. The winning item set is packed again with CP-SAT allowed (see :mod:`xbc.packing`: exact when
   at most ``exact-limit`` shareable items remain, a proven heuristic beyond, always with a lower
   bound). Rectangles with disjoint rows and columns share a crossbar block-diagonally; an
   item's columns may be split across crossbars, and every piece is cut to the rows its own
   columns use (never more than the packer reserved).

Packing scope: per layer. A crossbar holds cells of one layer only, because all of a crossbar's
rows are driven by one input vector at a time and the crossbar belongs to one pipeline stage;
mixing layers would serialize them.

Result: ``layer.segments`` becomes the placed pieces, ``layer.program`` the packed program
(:func:`xbc.layer.assemble_program`, same offset), and layer stats ``crossbars_squeezed``,
``lower_bound``, ``pack_method``, ``pack_status``, ``squeeze_variant``, ``squeeze_items``,
``kept_columns``. Deterministic: seeded heuristic orders, CP-SAT with fixed seed and workers,
unproven CP-SAT results discarded (``seed`` None takes the compile seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from xbc.errors import OptionError, PassError
from xbc.layer import Segment, assemble_program
from xbc.packing import pack
from xbc.passmanager import Pass, PassResult, register


def sub_segment(seg: Segment, cols: np.ndarray) -> Segment | None:
    """Columns ``cols`` of ``seg`` restricted to the rows they use (None if all zero)."""
    cells = seg.cells[:, cols]
    rows = cells.any(axis=1)
    if not rows.any():
        return None
    return Segment(group=seg.group, rows=seg.rows[rows], col_index=seg.col_index[cols],
                   col_shift=seg.col_shift[cols], col_sign=seg.col_sign[cols],
                   cells=np.ascontiguousarray(cells[rows]))


def squeeze_segment(seg: Segment) -> Segment | None:
    """Drop empty columns, then empty rows."""
    keep = np.flatnonzero(seg.cells.any(axis=0))
    if keep.size == 0:
        return None
    return sub_segment(seg, keep)


def support_order(seg: Segment) -> np.ndarray:
    """Column order: row-support size descending, then support pattern (lexicographic)."""
    sup = seg.cells != 0
    count = sup.sum(axis=0)
    packed = np.packbits(sup, axis=0)  # [ceil(r/8), c]
    keys = [packed[k] for k in range(packed.shape[0] - 1, -1, -1)] + [-count]
    return np.lexsort(keys)


def _union_rows(sup: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prefix and suffix row-union sizes of a column-ordered support matrix ``[r, m]``."""
    pre = np.logical_or.accumulate(sup, axis=1).sum(axis=0)           # rows of cols [0..t]
    suf = np.logical_or.accumulate(sup[:, ::-1], axis=1).sum(axis=0)[::-1]  # rows of cols [t..m)
    return pre, suf


def chunk_items(seg: Segment, Cx: int, tail_split: bool) -> list[Segment]:
    order = support_order(seg)
    n = order.size
    out: list[Segment] = []
    full = (n // Cx) * Cx
    for a in range(0, full, Cx):
        s = sub_segment(seg, order[a:a + Cx])
        out.append(s)
    rem = order[full:]
    if rem.size == 0:
        return out
    if tail_split and rem.size >= 2:
        sup = seg.cells[:, rem] != 0
        pre, suf = _union_rows(sup)
        m = rem.size
        t = np.arange(1, m)
        area = t * pre[t - 1] + (m - t) * suf[t]
        best = int(np.argmin(area))
        whole = m * int(pre[-1])
        if area[best] < whole:
            cut = int(t[best])
            out.append(sub_segment(seg, rem[:cut]))
            out.append(sub_segment(seg, rem[cut:]))
            return out
    out.append(sub_segment(seg, rem))
    return out


def squeeze_layer(segments: list[Segment], Rx: int, Cx: int, *, split: bool, exact_limit: int,
                  time_limit: float, seed: int, workers: int):
    """Returns (pieces, placements, info) for :func:`assemble_program`."""
    base = [s for s in (squeeze_segment(seg) for seg in segments) if s is not None]
    variants = [("whole", base)]
    if split:
        variants.append(("chunks", [p for s in base for p in chunk_items(s, Cx, False)]))
        variants.append(("chunks+tail", [p for s in base for p in chunk_items(s, Cx, True)]))
    best = None
    for name, items in variants:
        shapes = [(len(s.rows), s.col_index.size) for s in items]
        plc, lb, _, _ = pack(shapes, Rx, Cx, exact_limit=0, time_limit=0, seed=seed)
        if best is None or len(plc) < best[2]:
            best = (name, items, len(plc))
    name, items, _ = best
    shapes = [(len(s.rows), s.col_index.size) for s in items]
    plc, lb, method, status = pack(shapes, Rx, Cx, exact_limit=exact_limit, time_limit=time_limit,
                                   seed=seed, workers=workers)
    pieces: list[Segment] = []
    placements: list[list[tuple[int, int, int, int, int]]] = []
    for bin_ in plc:
        row0 = col0 = 0
        out = []
        for item, _r0, _c0, a, b in bin_:
            p = sub_segment(items[item], np.arange(a, b))
            if p is None:  # cannot happen: squeezed columns are non-empty
                continue
            out.append((len(pieces), row0, col0, 0, b - a))
            pieces.append(p)
            row0 += len(p.rows)
            col0 += b - a
        placements.append(out)
    info = {"lower_bound": int(lb), "pack_method": method, "pack_status": status,
            "squeeze_variant": name, "squeeze_items": len(items),
            "kept_columns": int(sum(s.col_index.size for s in base)),
            "kept_cells": int(sum(np.count_nonzero(s.cells) for s in base))}
    return pieces, placements, info


@register
@dataclass(frozen=True)
class Squeeze(Pass):
    name: ClassVar[str] = "squeeze"
    summary: ClassVar[str] = "drop empty columns/rows, pack the rest into few crossbars (SME step 3)"
    exact_limit: int = 24        # CP-SAT when at most this many shareable items remain
    time_limit: float = 5.0      # CP-SAT deterministic time limit per layer (seconds)
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
            pieces, placements, info = squeeze_layer(
                L.segments, t.rows, t.cols, split=self.split, exact_limit=self.exact_limit,
                time_limit=self.time_limit, seed=seed, workers=self.workers)
            L.program = assemble_program(pieces, placements, t.rows, t.cols, L.program.offset)
            L.segments = pieces
            info["crossbars_squeezed"] = L.program.n_crossbars
            L.stats.update(info)
            tot["layers"] += 1
            tot["crossbars_before"] += before
            tot["crossbars_squeezed"] += L.program.n_crossbars
            tot["lower_bound"] += info["lower_bound"]
            tot["optimal_layers"] += info["pack_status"] == "OPTIMAL"
            tot["cp_sat_layers"] += info["pack_method"] == "cp-sat"
        return PassResult(changed=tot["layers"] > 0, stats=tot)
