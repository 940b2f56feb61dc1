"""slice-bits: weights -> digit planes -> column segments -> the dense crossbar program (SME step 2).

Digits
    With ``weight_encoding = "split"`` a layer's digits are ``layer.digits`` when a previous pass
    (orchestrate-bits) chose them, checked to satisfy ``digits_value(digits) == to_matrix(w_int)``
    and ``|digit| < 2**cell_bits``; otherwise the sign-magnitude digits of the quantized weights
    (as :func:`xbc.layer.sign_magnitude_digits`, ``P = n_planes(weight_bits, cell_bits, "split")``).
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
    ``share-groups``). The count equals :func:`xbc.packing.dense_crossbars`. The program is built
    by :func:`xbc.packing.build_program`, the vectorized equivalent of
    :func:`xbc.layer.assemble_program` (same result and checks; tests compare the two).

Stats per layer: ``crossbars_dense`` (sign-magnitude planes: the no-sparsity mapping of this
target), ``crossbars_dense_layout`` (the program built here, with the digits' planes, which is
one more plane when signed digits are used), ``crossbars_sliced`` (crossbars of this dense layout
holding at least one non-zero cell), ``crossbars_isaac`` (:func:`xbc.packing.isaac_crossbars`),
``planes``, ``signs``, ``segments``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from xbc.errors import PassError, VerifyError
from xbc.layer import Segment, empty_program, n_planes, to_matrix
from xbc.packing import build_program, dense_crossbars, isaac_crossbars, signs_of
from xbc.passmanager import Pass, PassResult, register

KERNELS = True   # numba kernels (False: the numpy reference everywhere)


def _check_digits(layer, digits: np.ndarray, w_mat: np.ndarray, cell_bits: int) -> None:
    G, R, C = layer.groups, layer.rows, layer.cols
    if digits.ndim != 4 or digits.shape[1:] != (G, R, C):
        raise VerifyError(f"layer {layer.id}: digits have shape {digits.shape}, expected [P, {G}, {R}, {C}]")
    if np.any(np.abs(digits.astype(np.int16)) >= (1 << cell_bits)):
        raise VerifyError(f"layer {layer.id}: a digit does not fit a {cell_bits}-bit cell")
    acc = np.zeros(w_mat.shape, np.int32)
    for p in range(digits.shape[0]):
        acc += digits[p].astype(np.int32) << (p * cell_bits)
    if not np.array_equal(acc, w_mat):
        bad = int(np.count_nonzero(acc != w_mat))
        raise VerifyError(f"layer {layer.id}: digits do not add up to the quantized weights at {bad} "
                          f"position(s); the pass that set layer.digits must keep them equal")


def _permute(a: np.ndarray, layer, lead: int) -> np.ndarray:
    """Rows by ``row_perm`` and columns by ``col_perm`` of ``[..., G, R, C]`` (``lead`` axes first)."""
    pre = (None,) * lead
    if layer.row_perm is not None:
        rp = np.asarray(layer.row_perm, dtype=np.intp)
        a = np.take_along_axis(a, rp[pre + (slice(None), slice(None), None)], axis=lead + 1)
    if layer.col_perm is not None:
        cp = np.asarray(layer.col_perm, dtype=np.intp)
        a = np.take_along_axis(a, cp[pre + (slice(None), None, slice(None))], axis=lead + 2)
    return a


def layer_cells_np(layer, node, target) -> tuple[np.ndarray, int, int, int]:
    """The numpy reference of :func:`layer_cells` (same result and errors).

    Cells of every logical column: ``[G, R, L]`` uint8 (row-major), rows in ``row_perm`` order.

    Returns ``(cells, planes, signs, offset)``; logical column ``l = (p * signs + s) * C + j``
    holds plane ``p``, sign ``+1`` (s=0) or ``-1`` (s=1), output column ``col_perm[g, j]``.
    Segments are views ``cells[g, r0:r0+Rx]``; the dense program is a block copy of them. Digits
    equal :func:`xbc.layer.sign_magnitude_digits` (computed here per plane in the narrowest
    integer type, several times faster on large layers; a test checks the equality).
    """
    q = layer.quant
    if q is None:
        raise PassError(f"layer {layer.id} ({node.name!r}) has no quantized weights; run 'quantize' "
                        f"before 'slice-bits'")
    cb = target.cell_bits
    b = q.weight_bits
    mask = (1 << cb) - 1
    w_mat = to_matrix(layer.kind, np.asarray(q.w_int), layer.groups, node.attrs).astype(np.int32, copy=False)
    G, R, C = w_mat.shape
    if target.weight_encoding == "split":
        S, offset = 2, 0
        if layer.digits is not None:
            _check_digits(layer, layer.digits, w_mat, cb)
            D = _permute(np.asarray(layer.digits, dtype=np.int8), layer, 1)
            P = D.shape[0]
            cells = np.empty((G, R, P, S, C), np.uint8)
            for p in range(P):
                np.maximum(D[p], 0, out=cells[:, :, p, 0], casting="unsafe")
                np.maximum(-D[p], 0, out=cells[:, :, p, 1], casting="unsafe")
        else:
            P = n_planes(b, cb, "split")
            w = np.ascontiguousarray(_permute(w_mat, layer, 0))           # [G, R, C]
            mx = max(int(w.max(initial=0)), -int(w.min(initial=0)))
            if mx >> (P * cb):
                raise PassError(f"layer {layer.id}: weights need more than {P} planes of {cb} bits "
                                f"(they exceed the {b}-bit symmetric range)")
            st = np.int8 if mx <= 127 else np.int16 if mx <= 32767 else np.int32
            pos = np.empty(w.shape, st)
            neg = np.empty(w.shape, st)
            np.maximum(w, 0, out=pos, casting="unsafe")       # no int32 temporaries
            np.minimum(w, 0, out=neg, casting="unsafe")
            np.negative(neg, out=neg)
            cells = np.empty((G, R, P, S, C), np.uint8)
            for p in range(P):
                np.bitwise_and(pos >> (p * cb), mask, out=cells[:, :, p, 0], casting="unsafe")
                np.bitwise_and(neg >> (p * cb), mask, out=cells[:, :, p, 1], casting="unsafe")
    else:
        S = 1
        P = n_planes(b, cb, "offset")
        offset = 1 << (b - 1)
        v = _permute(w_mat, layer, 0) + offset
        if v.min(initial=0) < 0 or v.max(initial=0) >= (1 << (P * cb)):
            raise PassError(f"layer {layer.id}: weights exceed the {b}-bit range of offset encoding")
        v = v.astype(np.uint8 if P * cb <= 8 else np.uint16)
        cells = np.empty((G, R, P, S, C), np.uint8)
        for p in range(P):
            np.bitwise_and(v >> (p * cb), mask, out=cells[:, :, p, 0], casting="unsafe")
    return cells.reshape(G, R, P * S * C), P, S, offset


def _perm_or_identity(perm, G: int, n: int) -> np.ndarray | None:
    """``perm`` as a C-contiguous int64 ``[G, n]`` array, a permutation of ``range(n)`` per group
    (identity when None); None when it is not one (the numpy path then handles it)."""
    if perm is None:
        return np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int64), (G, n)))
    p = np.asarray(perm)
    if p.shape != (G, n) or p.dtype.kind not in "iu" or (p.size and (int(p.min()) < 0 or int(p.max()) >= n)):
        return None
    p = np.ascontiguousarray(p, dtype=np.int64)
    if p.size and not np.all(np.bincount((p + n * np.arange(G, dtype=np.int64)[:, None]).ravel(),
                                         minlength=G * n) == 1):
        return None
    return p


def layer_cells(layer, node, target) -> tuple[np.ndarray, int, int, int]:
    """Cells of every logical column: ``[G, R, L]`` uint8 (row-major), rows in ``row_perm`` order.

    Returns ``(cells, planes, signs, offset)``; logical column ``l = (p * signs + s) * C + j``
    holds plane ``p``, sign ``+1`` (s=0) or ``-1`` (s=1), output column ``col_perm[g, j]``.
    Segments are views ``cells[g, r0:r0+Rx]``; the dense program is a block copy of them. Digits
    equal :func:`xbc.layer.sign_magnitude_digits` (a test checks the equality).

    One numba kernel per layer reads the weights (or digits) row by row through the permutations
    and writes every plane and sign of that row (and checks ``layer.digits``), with no
    whole-layer temporaries; :func:`layer_cells_np` is the numpy reference (same result and
    errors, the tests compare both).
    """
    q = layer.quant
    if not KERNELS or q is None:
        return layer_cells_np(layer, node, target)
    cb = target.cell_bits
    b = q.weight_bits
    w_mat = to_matrix(layer.kind, np.asarray(q.w_int), layer.groups, node.attrs).astype(np.int32, copy=False)
    G, R, C = w_mat.shape
    rp = _perm_or_identity(layer.row_perm, G, R)
    cp = _perm_or_identity(layer.col_perm, G, C)
    if rp is None or cp is None or w_mat.ndim != 3:
        return layer_cells_np(layer, node, target)
    k = _kernels()
    w = np.ascontiguousarray(w_mat)
    if target.weight_encoding == "split":
        S, offset = 2, 0
        if layer.digits is not None:
            D = layer.digits
            if not isinstance(D, np.ndarray) or D.dtype != np.int8 or D.ndim != 4 or D.shape[1:] != (G, R, C):
                return layer_cells_np(layer, node, target)
            P = D.shape[0]
            cells = np.empty((G, R, P, S, C), np.uint8)
            Dt = D.transpose(1, 2, 3, 0)     # orchestrate-bits stores [G, R, P, C] or [G, R, C, P]
            if P == 8 and Dt.flags.c_contiguous and np.little_endian:
                big, bad = k["digits8"](Dt.view(np.uint64).reshape(G, R, C), w, rp, cp, cb, cells)
            else:
                big, bad = k["digits"](D.transpose(1, 2, 0, 3), w, rp, cp, cb, cells)
            if big:
                raise VerifyError(f"layer {layer.id}: a digit does not fit a {cb}-bit cell")
            if bad:
                raise VerifyError(f"layer {layer.id}: digits do not add up to the quantized weights at {bad} "
                                  f"position(s); the pass that set layer.digits must keep them equal")
        else:
            P = n_planes(b, cb, "split")
            mx = max(int(w.max(initial=0)), -int(w.min(initial=0)))
            if mx >> (P * cb):
                raise PassError(f"layer {layer.id}: weights need more than {P} planes of {cb} bits "
                                f"(they exceed the {b}-bit symmetric range)")
            cells = np.empty((G, R, P, S, C), np.uint8)
            k["magnitude"](w, rp, cp, cb, 0, cells)
    else:
        S = 1
        P = n_planes(b, cb, "offset")
        offset = 1 << (b - 1)
        if w.size and (int(w.min()) + offset < 0 or int(w.max()) + offset >= (1 << (P * cb))):
            raise PassError(f"layer {layer.id}: weights exceed the {b}-bit range of offset encoding")
        cells = np.empty((G, R, P, S, C), np.uint8)
        k["magnitude"](w, rp, cp, cb, offset, cells)
    return cells.reshape(G, R, P * S * C), P, S, offset


# numba kernels (compiled, or loaded from numba's cache, on first use by :func:`_kernels`)

def _k_digits(D4, w, rp, cp, cb, cells):
    # D4 [G, R, P, C] (the digits D[p, g, r, c] as D4[g, r, p, c]); cells[g, r, p, 0/1, c] =
    # positive / negative part of D[p, g, rp[g, r], cp[g, c]]. Returns (some |digit| >= 2**cb,
    # number of positions where the digits do not add up to w).
    G, R, P, C = D4.shape
    lim = 1 << cb
    mn = 0
    mx = 0
    bad = 0
    acc = np.empty(C, np.int64)
    tmp = np.empty(C, np.int8)
    for g in range(G):
        cpg = cp[g]
        for r in range(R):
            rr = rp[g, r]
            blk = D4[g, rr]
            acc[:] = 0
            for p in range(P):
                src = blk[p]
                sh = p * cb
                for c in range(C):
                    d = np.int64(src[c])
                    mn = min(mn, d)
                    mx = max(mx, d)
                    acc[c] += d << sh
                for c in range(C):
                    tmp[c] = src[cpg[c]]
                pos = cells[g, r, p, 0]
                neg = cells[g, r, p, 1]
                for c in range(C):
                    d = tmp[c]
                    pos[c] = max(d, 0)
                    neg[c] = max(-d, 0)   # int8 negation, as numpy's
            wr = w[g, rr]
            for c in range(C):
                if acc[c] != wr[c]:
                    bad += 1
    return mx >= lim or mn <= -lim, bad


def _k_digits8(Du, w, rp, cp, cb, cells):
    # _k_digits for P = 8 planes with each weight's 8 digits in one little-endian uint64
    # (Du [G, R, C]: the bytes of Dt [G, R, C, 8])
    G, R, C = Du.shape
    lim = 1 << cb
    mn = 0
    mx = 0
    bad = 0
    buf = np.empty(C, np.uint64)
    for g in range(G):
        cpg = cp[g]
        for r in range(R):
            rr = rp[g, r]
            row = Du[g, rr]
            wr = w[g, rr]
            for c in range(C):
                x = row[c]
                a = 0
                for p in range(8):
                    d = np.int64(np.int8(np.uint8((x >> np.uint64(8 * p)) & np.uint64(255))))
                    mn = min(mn, d)
                    mx = max(mx, d)
                    a += d << (p * cb)
                if a != wr[c]:
                    bad += 1
            for c in range(C):
                buf[c] = row[cpg[c]]
            for p in range(8):
                pos = cells[g, r, p, 0]
                neg = cells[g, r, p, 1]
                sh = np.uint64(8 * p)
                for c in range(C):
                    d = np.int8(np.uint8((buf[c] >> sh) & np.uint64(255)))
                    pos[c] = max(d, 0)
                    neg[c] = max(-d, 0)   # int8 negation, as numpy's
    return mx >= lim or mn <= -lim, bad


def _k_magnitude(w, rp, cp, cb, offset, cells):
    # offset == 0: sign-magnitude digits of w (planes of |w| into sign 0 / 1 by the sign of w);
    # else the planes of w + offset into sign 0
    G, R, C = w.shape
    P = cells.shape[2]
    mask = (1 << cb) - 1
    for g in range(G):
        cpg = cp[g]
        for r in range(R):
            src = w[g, rp[g, r]]
            for p in range(P):
                sh = p * cb
                if offset == 0:
                    pos = cells[g, r, p, 0]
                    neg = cells[g, r, p, 1]
                    for c in range(C):
                        v = np.int64(src[cpg[c]])
                        pos[c] = ((v if v > 0 else 0) >> sh) & mask
                        neg[c] = ((-v if v < 0 else 0) >> sh) & mask
                else:
                    out = cells[g, r, p, 0]
                    for c in range(C):
                        out[c] = ((np.int64(src[cpg[c]]) + offset) >> sh) & mask


def _k_nonzero(a):
    # per row of a [X, n] uint8: any cell non-zero
    X, n = a.shape
    out = np.zeros(X, np.bool_)
    for x in range(X):
        row = a[x]
        acc = np.uint8(0)
        for i in range(n):
            acc |= row[i]
        out[x] = acc != 0
    return out


_KERNELS: dict = {}


def _kernels() -> dict:
    """The numba kernels of this pass, compiled on first use."""
    if not _KERNELS:
        import numba  # noqa: PLC0415

        jit = numba.njit(cache=True, nogil=True)
        _KERNELS.update(digits=jit(_k_digits), digits8=jit(_k_digits8), magnitude=jit(_k_magnitude),
                        nonzero=jit(_k_nonzero))
    return _KERNELS


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
    """Segments and dense placements of one layer.

    Returns ``(segments, placements, cells, P, S, offset)``; ``placements`` is in the format of
    :func:`xbc.layer.assemble_program`.
    """
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
    return segments, placements, cells, P, S, offset


def dense_program(layer, segments, placements, src, target, offset: int, share_groups: bool):
    """The dense program: one block copy of ``src`` (``[G, R, L]`` cells) when groups are tiled
    (no sharing), else :func:`xbc.packing.build_program`. Equal to ``assemble_program(segments,
    placements, ...)`` (a test checks it)."""
    Rx, Cx = target.rows, target.cols
    G, R, L = src.shape
    if share_groups and R <= Rx and L <= Cx:
        return build_program(segments, placements, Rx, Cx, offset)
    nrb, nch = -(-R // Rx), -(-L // Cx)
    fr, fc = R // Rx, L // Cx
    w, h = L - fc * Cx, R - fr * Rx
    cells = np.zeros((G, nrb, nch, Rx, Cx), np.uint8)
    # full blocks in one block copy (rows of Cx contiguous cells), then the ragged edges
    if fr and fc:
        cells[:, :fr, :fc] = src[:, :fr * Rx, :fc * Cx].reshape(G, fr, Rx, fc, Cx).transpose(0, 1, 3, 2, 4)
    if w and fr:
        cells[:, :fr, fc, :, :w] = src[:, :fr * Rx, fc * Cx:].reshape(G, fr, Rx, w)
    if h and fc:
        cells[:, fr, :fc, :h, :] = src[:, fr * Rx:, :fc * Cx].reshape(G, h, fc, Cx).transpose(0, 2, 1, 3)
    if h and w:
        cells[:, fr, fc, :h, :w] = src[:, fr * Rx:, fc * Cx:]
    X = G * nrb * nch
    prog = empty_program(Rx, Cx)
    prog.cells = cells.reshape(X, Rx, Cx)
    rp = (np.asarray(layer.row_perm, dtype=np.int32) if layer.row_perm is not None
          else np.broadcast_to(np.arange(R, dtype=np.int32), (G, R)))
    ri = np.full((G, nrb * Rx), -1, np.int32)
    ri[:, :R] = rp
    rg = np.where(ri >= 0, np.arange(G, dtype=np.int32)[:, None], -1).astype(np.int32)
    rep = lambda a: np.repeat(a.reshape(G, nrb, 1, Rx), nch, axis=2).reshape(X, Rx)  # noqa: E731
    prog.row_index, prog.row_group = rep(ri), rep(rg)
    ci = np.full((G, nch * Cx), -1, np.int32)
    cs = np.zeros((G, nch * Cx), np.int32)
    sg = np.zeros((G, nch * Cx), np.int8)
    for g in range(G):
        seg = segments[g * nrb]
        ci[g, :L], cs[g, :L], sg[g, :L] = seg.col_index, seg.col_shift, seg.col_sign
    cg = np.where(ci >= 0, np.arange(G, dtype=np.int32)[:, None], -1).astype(np.int32)
    col = lambda a: np.repeat(a.reshape(G, 1, nch, Cx), nrb, axis=1).reshape(X, Cx)  # noqa: E731
    prog.col_index, prog.col_shift, prog.col_sign, prog.col_group = col(ci), col(cs), col(sg), col(cg)
    prog.offset = offset
    return prog


@register
@dataclass(frozen=True)
class SliceBits(Pass):
    name: ClassVar[str] = "slice-bits"
    summary: ClassVar[str] = "digit planes -> column segments -> dense crossbar program (SME step 2)"
    share_groups: bool = True   # several small groups share one crossbar block-diagonally

    def run(self, graph, ctx) -> PassResult:
        t = ctx.target
        tot = {"layers": 0, "crossbars_dense": 0, "crossbars_dense_layout": 0, "crossbars_sliced": 0,
               "crossbars_isaac": 0, "segments": 0}
        for node in ctx.each_layer(graph):
            L = node.layer
            segments, placements, cells, P, S, offset = slice_layer(L, node, t, self.share_groups)
            prog = dense_program(L, segments, placements, cells, t, offset, self.share_groups)
            X = prog.n_crossbars
            expect = dense_crossbars(L.groups, L.rows, L.cols, t, P, S, self.share_groups)
            if X != expect:  # pragma: no cover - internal consistency
                raise PassError(f"layer {L.id}: dense layout has {X} crossbars, dense_crossbars says {expect}")
            L.segments = segments
            L.program = prog
            sm_planes = n_planes(L.quant.weight_bits, t.cell_bits, t.weight_encoding)
            flat = prog.cells.reshape(X, t.rows * t.cols)
            nz = (_kernels()["nonzero"](flat) if KERNELS and flat.flags.c_contiguous and flat.dtype == np.uint8
                  else flat.max(axis=1, initial=0) > 0)
            st = {
                "crossbars_dense": dense_crossbars(L.groups, L.rows, L.cols, t, sm_planes, signs_of(t),
                                                   self.share_groups),
                "crossbars_dense_layout": X,
                "crossbars_sliced": int(nz.sum()),
                "crossbars_isaac": isaac_crossbars(L),
                "planes": P,
                "signs": S,
                "segments": len(segments),
            }
            L.stats.update(st)
            tot["layers"] += 1
            for k in ("crossbars_dense", "crossbars_dense_layout", "crossbars_sliced", "crossbars_isaac",
                      "segments"):
                tot[k] += st[k]
        return PassResult(changed=tot["layers"] > 0, stats=tot)
