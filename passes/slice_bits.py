"""slice-bits: weights -> digit planes -> column segments -> the dense crossbar program (SME step 2).

Digits
    With ``weight_encoding = "split"`` a layer's digits are ``layer.digits`` when a previous pass
    (orchestrate-bits) chose them, checked to satisfy ``digits_value(digits) == to_matrix(w_int)``
    and ``|digit| < 2**cell_bits``; otherwise the sign-magnitude digits of the quantized weights
    (:func:`xbc.layer.sign_magnitude_digits`, ``P = n_planes(weight_bits, cell_bits, "split")``).
    With ``"offset"`` (ISAAC) the stored value is ``w + 2**(weight_bits-1)`` in ``P =
    ceil(weight_bits/cell_bits)`` non-negative digits and ``program.offset = 2**(weight_bits-1)``;
    ``layer.digits`` (signed) cannot be stored unsigned, so offset encoding always slices ``w_int``.

Logical columns
    Per group, one logical column per (plane ``p``, sign ``s``, output column): positive digits
    go to the ``s = +1`` set, magnitudes of negative digits to the ``s = -1`` set (offset
    encoding has only ``+1``); ``col_shift = p * cell_bits``. Order: plane-major (plane 0 =
    least significant first), then sign (+, -), then output columns in ``layer.col_perm`` order,
    so one bit plane of one sign occupies whole crossbar columns side by side ("bit slicing
    across crossbars", the splice being a shift-and-add per plane in the periphery).

Rows and segments
    Rows are taken in ``layer.row_perm`` order (identity when ``None``) and cut into blocks of at
    most ``target.rows`` consecutive permuted rows. ``layer.segments`` gets one
    :class:`~xbc.layer.Segment` per (group, row block) holding ALL logical columns, empty ones
    included (squeeze removes them).

Dense program
    Each segment is tiled into ``target.cols``-wide column chunks, one crossbar each. When a
    group's whole matrix fits one crossbar (depthwise and small grouped convolutions),
    ``k = min(Rx // rows, Cx // L)`` groups share a crossbar block-diagonally (option
    ``share-groups``). The count equals :func:`xbc.packing.dense_crossbars`.

Stats per layer: ``crossbars_dense`` (sign-magnitude planes: the no-sparsity mapping of this
target), ``crossbars_dense_layout`` (the program built here, with the digits' planes, which is
one more plane when signed digits are used), ``crossbars_sliced`` (crossbars of this dense layout
holding at least one non-zero cell), ``crossbars_isaac`` (:func:`xbc.packing.isaac_crossbars`),
``planes``, ``signs``, ``nonzero_cells``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from xbc.errors import PassError, VerifyError
from xbc.layer import (Segment, assemble_program, n_planes, sign_magnitude_digits, to_matrix)
from xbc.packing import dense_crossbars, isaac_crossbars, signs_of
from xbc.passmanager import Pass, PassResult, register


def _check_digits(layer, digits: np.ndarray, w_mat: np.ndarray, cell_bits: int) -> None:
    G, R, C = layer.groups, layer.rows, layer.cols
    if digits.ndim != 4 or digits.shape[1:] != (G, R, C):
        raise VerifyError(f"layer {layer.id}: digits have shape {digits.shape}, expected [P, {G}, {R}, {C}]")
    if np.any(np.abs(digits.astype(np.int16)) >= (1 << cell_bits)):
        raise VerifyError(f"layer {layer.id}: a digit does not fit a {cell_bits}-bit cell")
    acc = np.zeros(w_mat.shape, np.int64)
    for p in range(digits.shape[0]):
        acc += digits[p].astype(np.int64) << (p * cell_bits)
    if not np.array_equal(acc, w_mat):
        bad = int(np.count_nonzero(acc != w_mat))
        raise VerifyError(f"layer {layer.id}: digits do not add up to the quantized weights at {bad} "
                          f"position(s); the pass that set layer.digits must keep them equal")


def layer_cells(layer, node, target) -> tuple[np.ndarray, int, int, int]:
    """Cells of every logical column: ``[G, R', L]`` uint8 with rows in ``row_perm`` order.

    Returns ``(cells, planes, signs, offset)``; logical column ``l = (p * signs + s) * C + j``
    holds plane ``p``, sign ``+1`` (s=0) or ``-1`` (s=1), output column ``col_perm[g, j]``.
    """
    q = layer.quant
    if q is None:
        raise PassError(f"layer {layer.id} ({node.name!r}) has no quantized weights; run 'quantize' "
                        f"before 'slice-bits'")
    cb = target.cell_bits
    b = q.weight_bits
    w_mat = to_matrix(layer.kind, np.asarray(q.w_int), layer.groups, node.attrs).astype(np.int64)
    G, R, C = w_mat.shape
    if target.weight_encoding == "split":
        if layer.digits is not None:
            _check_digits(layer, layer.digits, w_mat, cb)
            D = np.asarray(layer.digits, dtype=np.int8)
        else:
            P = n_planes(b, cb, "split")
            try:
                D = sign_magnitude_digits(w_mat, cb, P)
            except ValueError as e:
                raise PassError(f"layer {layer.id}: {e} (weights exceed {b}-bit symmetric range)") from None
        S = 2
        offset = 0
    else:
        P = n_planes(b, cb, "offset")
        offset = 1 << (b - 1)
        v = w_mat + offset
        if v.min() < 0 or v.max() >= (1 << (P * cb)):
            raise PassError(f"layer {layer.id}: weights exceed the {b}-bit range of offset encoding")
        shifts = (np.arange(P, dtype=np.int64) * cb).reshape(-1, 1, 1, 1)
        D = ((v[None] >> shifts) & ((1 << cb) - 1)).astype(np.int8)
        S = 1
    P = D.shape[0]
    if layer.row_perm is not None:
        rp = np.asarray(layer.row_perm, dtype=np.int64)
        D = np.take_along_axis(D, rp[None, :, :, None], axis=2)
    if layer.col_perm is not None:
        cp = np.asarray(layer.col_perm, dtype=np.int64)
        D = np.take_along_axis(D, cp[None, :, None, :], axis=3)
    if S == 2:
        planes = np.stack((np.maximum(D, 0), np.maximum(-D.astype(np.int16), 0).astype(np.int8)), axis=1)
    else:
        planes = D[:, None]
    cells = np.ascontiguousarray(planes.transpose(2, 3, 0, 1, 4)).astype(np.uint8).reshape(G, R, P * S * C)
    return cells, P, S, offset


def logical_columns(layer, planes: int, signs: int, cell_bits: int, g: int):
    """``(col_index, col_shift, col_sign)`` of group ``g``'s logical columns (see layer_cells)."""
    C = layer.cols
    perm = (np.asarray(layer.col_perm[g], dtype=np.int32) if layer.col_perm is not None
            else np.arange(C, dtype=np.int32))
    col_index = np.tile(perm, planes * signs).astype(np.int32)
    col_shift = np.repeat(np.arange(planes, dtype=np.int32) * cell_bits, signs * C)
    sign_vals = np.array([1, -1][:signs], dtype=np.int8)
    col_sign = np.tile(np.repeat(sign_vals, C), planes)
    return col_index, col_shift, col_sign


def slice_layer(layer, node, target, share_groups: bool = True):
    """Segments and dense placements of one layer. Returns (segments, placements, P, S, offset)."""
    Rx, Cx = target.rows, target.cols
    cells, P, S, offset = layer_cells(layer, node, target)
    G, R, L = cells.shape
    rp = (np.asarray(layer.row_perm, dtype=np.int32) if layer.row_perm is not None
          else np.broadcast_to(np.arange(R, dtype=np.int32), (G, R)))
    segments: list[Segment] = []
    for g in range(G):
        ci, cs, sg = logical_columns(layer, P, S, target.cell_bits, g)
        for r0 in range(0, R, Rx):
            segments.append(Segment(group=g, rows=np.ascontiguousarray(rp[g, r0:r0 + Rx]), col_index=ci,
                                    col_shift=cs, col_sign=sg, cells=cells[g, r0:r0 + Rx]))
    placements: list[list[tuple[int, int, int, int, int]]] = []
    if share_groups and R <= Rx and L <= Cx:
        k = min(Rx // R, Cx // L)
        for x0 in range(0, G, k):
            placements.append([(s, j * R, j * L, 0, L) for j, s in enumerate(range(x0, min(G, x0 + k)))])
    else:
        for s in range(len(segments)):
            for a in range(0, L, Cx):
                placements.append([(s, 0, 0, a, min(a + Cx, L))])
    return segments, placements, P, S, offset


@register
@dataclass(frozen=True)
class SliceBits(Pass):
    name: ClassVar[str] = "slice-bits"
    summary: ClassVar[str] = "digit planes -> column segments -> dense crossbar program (SME step 2)"
    share_groups: bool = True   # several small groups share one crossbar block-diagonally

    def run(self, graph, ctx) -> PassResult:
        t = ctx.target
        tot = {"layers": 0, "crossbars_dense": 0, "crossbars_dense_layout": 0, "crossbars_sliced": 0,
               "crossbars_isaac": 0, "segments": 0, "nonzero_cells": 0}
        for node in ctx.each_layer(graph):
            L = node.layer
            segments, placements, P, S, offset = slice_layer(L, node, t, self.share_groups)
            prog = assemble_program(segments, placements, t.rows, t.cols, offset)
            X = prog.n_crossbars
            expect = dense_crossbars(L.groups, L.rows, L.cols, t, P, S, self.share_groups)
            if X != expect:  # pragma: no cover - internal consistency
                raise PassError(f"layer {L.id}: dense layout has {X} crossbars, dense_crossbars says {expect}")
            L.segments = segments
            L.program = prog
            sm_planes = n_planes(L.quant.weight_bits, t.cell_bits, t.weight_encoding)
            nz = prog.cells.reshape(X, -1).any(axis=1) if X else np.zeros(0, bool)
            st = {
                "crossbars_dense": dense_crossbars(L.groups, L.rows, L.cols, t, sm_planes, signs_of(t),
                                                   self.share_groups),
                "crossbars_dense_layout": X,
                "crossbars_sliced": int(nz.sum()),
                "crossbars_isaac": isaac_crossbars(L),
                "planes": P,
                "signs": S,
                "segments": len(segments),
                "nonzero_cells": int(np.count_nonzero(prog.cells)),
            }
            L.stats.update(st)
            tot["layers"] += 1
            for k in ("crossbars_dense", "crossbars_dense_layout", "crossbars_sliced", "crossbars_isaac",
                      "segments", "nonzero_cells"):
                tot[k] += st[k]
        return PassResult(changed=tot["layers"] > 0, stats=tot)
