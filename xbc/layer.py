"""Crossbar layers: the matrix view of a weight tensor and the crossbar program.

Matrix view
-----------
Every crossbar layer computes, per group ``g``, ``y[g, c] = sum_r x[g, r] * M[g, r, c]`` with the
layer matrix ``M`` of shape ``[G, R, C]``:

=================  ===========================  ===========================================
kind               weight tensor ``W``          matrix ``M[g]`` (rows R x cols C)
=================  ===========================  ===========================================
``conv``           ``[Cout, Cin/G, kh, kw]``    R = Cin/G*kh*kw (im2col order ci, ky, kx),
                                                C = Cout/G
``conv_transpose`` ``[Cin, Cout/G, kh, kw]``    the equivalent direct conv of the zero-inserted
                                                input: ``Wc[g*Co+o, i, y, x] = W[g*Ci+i, o,
                                                kh-1-y, kw-1-x]``, then as ``conv``
``gemm``           ``[K, N]`` or ``[N, K]``     R = K, C = N (``transB`` handled), G = 1
                   (``transB=1``)
``matmul``         ``[K, N]`` (right operand)   R = K, C = N, G = 1
=================  ===========================  ===========================================

Output channel ``o = g*C + c``; per-channel quantities (scales, bias) are indexed by ``o``.
:func:`to_matrix` and :func:`from_matrix` are exact inverses.

Digits
------
A signed integer weight ``w`` is a sum of digits in base ``2**cell_bits``:
``w = sum_p D[p] * 2**(cell_bits*p) - offset`` with ``|D[p]| < 2**cell_bits``. With
``weight_encoding = "split"`` positive digits go to one column set and negative digits to another
(``sign = +1 / -1``), ``offset = 0``. With ``"offset"`` (ISAAC) the stored value is ``w + offset``,
``offset = 2**(weight_bits-1)``, all digits non-negative, and the periphery subtracts
``offset * sum_r x[r]``.

Crossbar program
----------------
:class:`LayerProgram` holds the layer's physical crossbars as stacked arrays (``X`` crossbars of
``Rx x Cx`` cells): which matrix row each physical row carries (``row_group``, ``row_index``,
original indices, ``-1`` unused) and, per physical column, the splice table entry
(``col_group``, ``col_index`` = output column within the group, ``col_shift`` = bit shift,
``col_sign`` = +1/-1, 0 unused). Integer output of the layer (ideal ADC)::

    acc[g, c] = sum_{x, j : col_group=g, col_index=c} col_sign * 2**col_shift
                * sum_i cells[x, i, j] * xq[row_group[x, i], row_index[x, i]]
                - offset * sum_r xq[g, r]

A cell may be non-zero only where ``row_group[x, i] == col_group[x, j]``. :func:`rebuild_matrix`
inverts the program into the integer matrix (the conservation check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import VerifyError

KINDS = ("conv", "conv_transpose", "gemm", "matmul")


@dataclass(eq=False)
class Quant:
    """Quantization of one crossbar layer (``xq = clip(round(x/x_scale)+x_zero_point)``)."""

    weight_bits: int
    w_scale: np.ndarray            # float64 [Cout]; equal entries when per tensor
    w_int: np.ndarray              # int32, same layout as the weight tensor (after lossy passes)
    input_bits: int
    x_scale: float
    x_zero_point: int
    per_channel: bool = True
    pow2: bool = False
    prequantized: bool = False
    w_int_initial: np.ndarray | None = None  # right after quantize, before lossy passes
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Segment:
    """A rectangle of one group's sliced matrix: some matrix rows x some logical columns."""

    group: int
    rows: np.ndarray       # int32 [r] original matrix row indices
    col_index: np.ndarray  # int32 [c] output column within the group
    col_shift: np.ndarray  # int32 [c] bit shift of the column's plane
    col_sign: np.ndarray   # int8  [c] +1 or -1
    cells: np.ndarray      # uint8 [r, c]


@dataclass(eq=False)
class LayerProgram:
    """The physical crossbars of one layer (see module docstring)."""

    cells: np.ndarray      # uint8 [X, Rx, Cx]
    row_group: np.ndarray  # int32 [X, Rx], -1 unused
    row_index: np.ndarray  # int32 [X, Rx], -1 unused
    col_group: np.ndarray  # int32 [X, Cx], -1 unused
    col_index: np.ndarray  # int32 [X, Cx], -1 unused
    col_shift: np.ndarray  # int32 [X, Cx]
    col_sign: np.ndarray   # int8  [X, Cx], 0 unused
    offset: int = 0
    col_adc_bits: np.ndarray | None = None   # int32 [X, Cx] ADC bits each column needs (adc-size)
    col_max_sum: np.ndarray | None = None    # int64 [X, Cx] largest possible sum (adc-size)
    tile: np.ndarray | None = None           # int32 [X] tile of each crossbar (place)
    slot: np.ndarray | None = None           # int32 [X] position within the tile (place)

    @property
    def n_crossbars(self) -> int:
        return int(self.cells.shape[0])


@dataclass(eq=False)
class Layer:
    """Crossbar facts about one Conv/ConvTranspose/Gemm/MatMul node.

    ``weight_input`` is the node input holding the constant weight (1 for every kind after the
    frontend, which rewrites a left-constant MatMul into Transpose-MatMul-Transpose).
    """

    id: str
    kind: str
    groups: int
    rows: int
    cols: int
    weight_input: int = 1
    bias_input: int | None = None  # 2 for Conv/ConvTranspose/Gemm with a bias, else None
    quant: Quant | None = None
    digits: np.ndarray | None = None      # int8 [P, G, R, C] signed digits, base 2**cell_bits
    row_perm: np.ndarray | None = None    # int32 [G, R]: position i holds original row row_perm[g, i]
    col_perm: np.ndarray | None = None    # int32 [G, C]
    segments: list[Segment] | None = None
    program: LayerProgram | None = None
    prequant: dict[str, Any] | None = None  # pre-quantized model: {"w_int", "w_scale", "w_zero_point"}
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def out_channels(self) -> int:
        return self.groups * self.cols

    def describe(self) -> str:
        s = f"layer {self.id} {self.kind} G={self.groups} {self.rows}x{self.cols}"
        if self.quant is not None:
            s += f" w{self.quant.weight_bits}a{self.quant.input_bits}"
        if self.program is not None:
            s += f" xbars={self.program.n_crossbars}"
        return s

    def weight_value(self, node):
        return node.inputs[self.weight_input]

    def verify(self, node) -> None:
        w = self.weight_value(node)
        if w is None or w.const is None:
            raise VerifyError(f"crossbar layer {node.name!r} ({node.op_type}) has no constant weight")
        G, R, C = matrix_shape(self.kind, w.const.shape, self.groups, node.attrs)
        if (G, R, C) != (self.groups, self.rows, self.cols):
            raise VerifyError(f"layer {self.id} ({node.name!r}): weight {tuple(w.const.shape)} gives "
                              f"matrix {G}x{R}x{C}, layer says {self.groups}x{self.rows}x{self.cols}")
        if self.quant is not None and self.quant.w_int.shape != w.const.shape:
            raise VerifyError(f"layer {self.id}: quantized weight shape {self.quant.w_int.shape} != "
                              f"weight shape {w.const.shape}")
        if self.program is not None:
            p = self.program
            X = p.cells.shape[0]
            for name in ("row_group", "row_index"):
                if getattr(p, name).shape != (X, p.cells.shape[1]):
                    raise VerifyError(f"layer {self.id}: program.{name} has shape {getattr(p, name).shape}")
            for name in ("col_group", "col_index", "col_shift", "col_sign"):
                if getattr(p, name).shape != (X, p.cells.shape[2]):
                    raise VerifyError(f"layer {self.id}: program.{name} has shape {getattr(p, name).shape}")


@dataclass(eq=False)
class LayerSpec:
    """Everything a backend needs to run one crossbar layer, as read back from a bundle.

    Integer semantics (see passes/quantize.py): ``xq = clip(round_half_even(x / x_scale) +
    x_zero_point, 0, 2**input_bits - 1)``, padding filled with ``x_zero_point``;
    ``acc[o] = sum_r w[r, o] * xq[r]`` (the program computes it); output
    ``y[o] = x_scale * w_scale[o] * (acc[o] - x_zero_point * sum_r w[r, o]) + bias[o]``.
    """

    id: str
    kind: str
    groups: int
    rows: int
    cols: int
    attrs: dict[str, Any]           # ONNX attrs: strides, pads, dilations, group, kernel_shape, output_padding, transB
    weight_shape: tuple
    input_bits: int
    weight_bits: int
    x_scale: float
    x_zero_point: int
    w_scale: np.ndarray             # float64 [Cout]
    w_int: np.ndarray               # int32, weight layout (after lossy passes)
    bias: np.ndarray | None         # float32 [Cout]
    row_perm: np.ndarray | None
    col_perm: np.ndarray | None
    program: LayerProgram
    cell_bits: int
    dac_bits: int
    adc_bits: int
    rows_active: int


# ----------------------------------------------------------------------------------------
# matrix view
# ----------------------------------------------------------------------------------------

def matrix_shape(kind: str, wshape: tuple, groups: int, attrs: dict | None = None) -> tuple[int, int, int]:
    attrs = attrs or {}
    if kind == "conv":
        cout, cin_g = wshape[0], wshape[1]
        k = int(np.prod(wshape[2:], dtype=np.int64))
        return groups, cin_g * k, cout // groups
    if kind == "conv_transpose":
        cin, cout_g = wshape[0], wshape[1]
        k = int(np.prod(wshape[2:], dtype=np.int64))
        return groups, (cin // groups) * k, cout_g
    if kind == "gemm":
        K, N = (wshape[1], wshape[0]) if attrs.get("transB", 0) else (wshape[0], wshape[1])
        return 1, K, N
    if kind == "matmul":
        return 1, wshape[0], wshape[1]
    raise ValueError(f"unknown layer kind {kind!r}")


def to_matrix(kind: str, W: np.ndarray, groups: int, attrs: dict | None = None) -> np.ndarray:
    """Weight tensor -> ``[G, R, C]`` matrix view (see module docstring)."""
    attrs = attrs or {}
    if kind == "conv":
        cout = W.shape[0]
        G = groups
        return W.reshape(G, cout // G, -1).transpose(0, 2, 1)
    if kind == "conv_transpose":
        return to_matrix("conv", convtranspose_as_conv(W, groups), groups)
    if kind == "gemm":
        M = W.T if attrs.get("transB", 0) else W
        return M[None]
    if kind == "matmul":
        return W[None]
    raise ValueError(f"unknown layer kind {kind!r}")


def from_matrix(kind: str, M: np.ndarray, wshape: tuple, groups: int, attrs: dict | None = None) -> np.ndarray:
    """``[G, R, C]`` matrix -> weight tensor of shape ``wshape`` (inverse of :func:`to_matrix`)."""
    attrs = attrs or {}
    if kind == "conv":
        G, R, C = M.shape
        return np.ascontiguousarray(M.transpose(0, 2, 1).reshape(wshape))
    if kind == "conv_transpose":
        cin, cout_g = wshape[0], wshape[1]
        conv_shape = (cout_g * groups, cin // groups) + tuple(wshape[2:])
        Wc = from_matrix("conv", M, conv_shape, groups)
        return conv_as_convtranspose(Wc, groups)
    if kind == "gemm":
        return np.ascontiguousarray(M[0].T if attrs.get("transB", 0) else M[0])
    if kind == "matmul":
        return np.ascontiguousarray(M[0])
    raise ValueError(f"unknown layer kind {kind!r}")


def convtranspose_as_conv(W: np.ndarray, groups: int) -> np.ndarray:
    """ConvTranspose weight ``[Cin, Cout/G, k...]`` -> equivalent conv weight ``[Cout, Cin/G, k...]``."""
    cin, cout_g = W.shape[0], W.shape[1]
    ks = W.shape[2:]
    G = groups
    Wg = W.reshape((G, cin // G, cout_g) + ks)
    Wg = np.swapaxes(Wg, 1, 2)  # [G, Cout/G, Cin/G, k...]
    flip = (slice(None),) * 3 + (slice(None, None, -1),) * len(ks)
    return np.ascontiguousarray(Wg[flip].reshape((G * cout_g, cin // G) + ks))


def conv_as_convtranspose(Wc: np.ndarray, groups: int) -> np.ndarray:
    """Inverse of :func:`convtranspose_as_conv`."""
    cout, cin_g = Wc.shape[0], Wc.shape[1]
    ks = Wc.shape[2:]
    G = groups
    Wg = Wc.reshape((G, cout // G, cin_g) + ks)
    flip = (slice(None),) * 3 + (slice(None, None, -1),) * len(ks)
    Wg = np.swapaxes(Wg[flip], 1, 2)  # [G, Cin/G, Cout/G, k...]
    return np.ascontiguousarray(Wg.reshape((G * cin_g, cout // G) + ks))


def out_channel_axis(kind: str, attrs: dict | None = None) -> int:
    """Axis of the weight tensor that indexes output channels (within groups for conv_transpose)."""
    attrs = attrs or {}
    if kind == "conv":
        return 0
    if kind == "conv_transpose":
        return 1
    if kind == "gemm":
        return 0 if attrs.get("transB", 0) else 1
    return 1


def channel_vector_to_matrix(v: np.ndarray, groups: int) -> np.ndarray:
    """Per-output-channel vector ``[G*C]`` -> broadcastable ``[G, 1, C]``."""
    return np.asarray(v).reshape(groups, 1, -1)


# ----------------------------------------------------------------------------------------
# digits and program helpers shared by passes, bundle and backends
# ----------------------------------------------------------------------------------------

def n_planes(weight_bits: int, cell_bits: int, encoding: str, signed_digit: bool = False) -> int:
    """Digit planes needed for ``weight_bits`` symmetric weights (|w| <= 2**(b-1)-1).

    split, sign-magnitude: ceil((b-1)/cell_bits); split, canonical signed digit: ceil(b/cell_bits)
    (a CSD/NAF form may need one digit more than the magnitude); offset: ceil(b/cell_bits).
    """
    if encoding == "offset" or signed_digit:
        return math.ceil(weight_bits / cell_bits)
    return max(1, math.ceil((weight_bits - 1) / cell_bits))


def sign_magnitude_digits(w_mat: np.ndarray, cell_bits: int, planes: int) -> np.ndarray:
    """``[G,R,C]`` ints -> ``[P,G,R,C]`` int8 digits ``sign(w) * slice_p(|w|)``."""
    mag = np.abs(w_mat.astype(np.int64))
    sign = np.sign(w_mat).astype(np.int8)
    base = 1 << cell_bits
    shifts = (np.arange(planes, dtype=np.int64) * cell_bits).reshape(-1, 1, 1, 1)
    d = ((mag[None] >> shifts) & (base - 1)).astype(np.int8)
    if np.any(mag >> (planes * cell_bits)):
        raise ValueError(f"weights need more than {planes} planes of {cell_bits} bits")
    return d * sign[None]


def digits_value(digits: np.ndarray, cell_bits: int) -> np.ndarray:
    """``[P, ...]`` digits -> integer values ``sum_p D[p] * 2**(cell_bits*p)`` (int64).

    Horner's rule over the planes, in int32 when every partial value fits (small digits and
    ``P * cell_bits <= 30``), so no ``[P, ...]`` int64 temporary is made."""
    digits = np.asarray(digits)
    P = digits.shape[0]
    if P == 0:
        return np.zeros(digits.shape[1:], np.int64)
    small = digits.dtype.itemsize == 1 and P * cell_bits <= 30 - 8 + cell_bits
    acc = digits[P - 1].astype(np.int32 if small else np.int64)
    for p in range(P - 2, -1, -1):
        acc *= 1 << cell_bits
        acc += digits[p]
    return acc.astype(np.int64, copy=False)


def rebuild_matrix(program: LayerProgram, groups: int, rows: int, cols: int,
                   chunk_cells: int = 1 << 22) -> np.ndarray:
    """Integer matrix ``[G, R, C]`` that the program computes (ideal ADC). Vectorized.

    Works on blocks of crossbars (about ``chunk_cells`` cells at a time): each programmed cell
    adds ``sign * cell << shift`` at flat index ``(group*R + row)*C + col`` via ``np.bincount``
    (float64 weights are exact: every partial sum stays far below 2**53).
    Raises :class:`VerifyError` if a cell sits on an unused row/column or joins a row and a
    column of different groups.
    """
    p = program
    X, Rx, Cx = p.cells.shape
    size = groups * rows * cols
    acc = np.zeros(size, dtype=np.float64)
    step = max(1, chunk_cells // max(1, Rx * Cx))
    for a in range(0, X, step):
        b = min(X, a + step)
        cells = p.cells[a:b]
        mask = cells != 0
        if not mask.any():
            continue
        rg = p.row_group[a:b, :, None]
        cg = p.col_group[a:b, None, :]
        if np.any(mask & ((rg < 0) | (cg < 0))):
            raise VerifyError("a programmed cell sits on an unused row or column")
        if np.any(mask & (rg != cg)):
            raise VerifyError("a programmed cell joins a row and a column of different groups")
        rowkey = (p.row_group[a:b].astype(np.int64) * rows + p.row_index[a:b]) * cols
        idx = rowkey[:, :, None] + p.col_index[a:b, None, :].astype(np.int64)
        colw = p.col_sign[a:b].astype(np.float64) * np.exp2(p.col_shift[a:b].astype(np.float64))
        val = cells * colw[:, None, :]
        acc += np.bincount(idx[mask], weights=val[mask], minlength=size)
    out = np.rint(acc).astype(np.int64).reshape(groups, rows, cols)
    if p.offset:
        out -= p.offset
    return out


def empty_program(Rx: int, Cx: int) -> LayerProgram:
    z = lambda *s, dt=np.int32, fill=-1: np.full(s, fill, dtype=dt)  # noqa: E731
    return LayerProgram(cells=np.zeros((0, Rx, Cx), np.uint8), row_group=z(0, Rx), row_index=z(0, Rx),
                        col_group=z(0, Cx), col_index=z(0, Cx), col_shift=z(0, Cx, fill=0),
                        col_sign=z(0, Cx, dt=np.int8, fill=0))


def assemble_program(segments: list[Segment], placements: list[list[tuple[int, int, int, int, int]]],
                     Rx: int, Cx: int, offset: int = 0) -> LayerProgram:
    """Build a :class:`LayerProgram` from segments and their placement in crossbars.

    ``placements[x]`` lists ``(segment, row0, col0, c_from, c_to)``: columns ``c_from:c_to`` of
    ``segments[segment]`` go to crossbar ``x`` at rows ``row0:row0+r`` and columns
    ``col0:col0+(c_to-c_from)``. Overlaps are an error.
    """
    X = len(placements)
    prog = empty_program(Rx, Cx)
    cells = np.zeros((X, Rx, Cx), np.uint8)
    rg = np.full((X, Rx), -1, np.int32)
    ri = np.full((X, Rx), -1, np.int32)
    cg = np.full((X, Cx), -1, np.int32)
    ci = np.full((X, Cx), -1, np.int32)
    cs = np.zeros((X, Cx), np.int32)
    sg = np.zeros((X, Cx), np.int8)
    for x, items in enumerate(placements):
        for s, r0, c0, a, b in items:
            seg = segments[s]
            r = len(seg.rows)
            n = b - a
            if r0 + r > Rx or c0 + n > Cx:
                raise VerifyError(f"segment {s} does not fit crossbar {x} at ({r0},{c0})")
            if np.any(cg[x, c0:c0 + n] >= 0):
                raise VerifyError(f"crossbar {x}: columns {c0}:{c0 + n} used twice")
            used = rg[x, r0:r0 + r] >= 0
            if np.any(used & ((rg[x, r0:r0 + r] != seg.group) | (ri[x, r0:r0 + r] != seg.rows))):
                raise VerifyError(f"crossbar {x}: rows {r0}:{r0 + r} used twice")
            cells[x, r0:r0 + r, c0:c0 + n] = seg.cells[:, a:b]
            rg[x, r0:r0 + r] = seg.group
            ri[x, r0:r0 + r] = seg.rows
            cg[x, c0:c0 + n] = seg.group
            ci[x, c0:c0 + n] = seg.col_index[a:b]
            cs[x, c0:c0 + n] = seg.col_shift[a:b]
            sg[x, c0:c0 + n] = seg.col_sign[a:b]
    prog.cells, prog.row_group, prog.row_index = cells, rg, ri
    prog.col_group, prog.col_index, prog.col_shift, prog.col_sign = cg, ci, cs, sg
    prog.offset = offset
    return prog
