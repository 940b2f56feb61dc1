"""Crossbar kernels of the bit-accurate simulator: one crossbar layer, run from its stored cells.

Hardware model (one crossbar layer, see ``docs/simulator.md``)
--------------------------------------------------------------
1. **Input quantization** (digital, :func:`quantize_input`):
   ``xq = clip(round_half_even(x / x_scale) + x_zero_point, 0, 2**input_bits - 1)``.
2. **Unfolding** (:func:`im2col`): a Conv becomes a matrix product over input patches (any kernel
   rank, groups, strides, dilations, explicit or ``auto_pad`` pads); padding takes the value
   ``x_zero_point`` (the code of a real 0). A ConvTranspose is run as the equivalent direct conv
   of the zero-inserted input (:func:`xbc.layer.convtranspose_as_conv`); inserted positions and
   pads take ``x_zero_point`` too. Gemm rows and MatMul rows (any leading batch dims) are patches
   as they are. Patch ``p`` of group ``g`` is the vector ``xq[p, g, r]`` over matrix rows ``r``.
3. **Crossbars**: physical row ``i`` of crossbar ``x`` is driven by ``xq[p, row_group[x,i],
   row_index[x,i]]`` (0 if unused). The input is applied in ``n_d = ceil(input_bits/dac_bits)``
   DAC cycles, LSB first: ``xq = sum_d 2**(d*dac_bits) * slice_d``. Word lines are switched on in
   chunks of ``rows_active`` consecutive physical rows; in every cycle ``d`` and chunk ``k`` each
   used column ``j`` produces the integer column sum ``s = sum_{i in k} slice_d[i]*cells[x,i,j]``.
4. **ADC**: saturating, unsigned (cells and inputs are non-negative):
   ``adc(s) = min(s, 2**adc_bits - 1)``. Every (input vector, cycle, chunk with a used row, used
   column) is one conversion; it *clips* when ``s > 2**adc_bits - 1``.
5. **Splice** (shift-and-add in the periphery):
   ``acc[g, col_index] += col_sign * 2**col_shift * 2**(d*dac_bits) * adc(s)``, then
   ``acc[g, :] -= offset * sum_r xq[g, r]`` (offset encoding). ``row_index``/``col_index`` are
   original matrix indices, so the reorder permutations are already undone.
6. **Digital output**: ``y[o] = x_scale * w_scale[o] * (acc[o] - x_zero_point * colsum(w_int)[o])
   + bias[o]`` (float64, then cast to the output type).

How it is computed (exact, fast)
--------------------------------
Because ``adc(s) = s - max(s - L, 0)`` with ``L = 2**adc_bits - 1``, the spliced result equals
the *ideal* integer product ``xq @ M`` with ``M = rebuild_matrix(cells, shifts, signs, indices,
offset)`` (the matrix the cells store, not ``w_int``) minus a correction that is non-zero only
for conversions that clip. The kernel therefore computes

* ``xq @ M`` with BLAS, exactly: the rows are split into contiguous parts whose partial sums
  provably stay below 2**24 (``(2**input_bits-1) * max_c sum_{r in part} |M[r,c]|``, see
  :func:`row_parts`), each part a float32 matmul, the parts added in float64; a layer where one
  row alone could reach 2**24 (16-bit weights and inputs) uses float64 (exact below 2**53);
* in ``bit-serial`` mode, the clipping correction, exactly: a chunk whose largest possible column
  sum ``(2**dac_bits-1) * sum_{i in k} cells[i,j]`` stays ``<= L`` for every column can never
  clip (static test); for the other chunks, per cycle and input vector the data bound
  ``sum_i slice_d[i] * max_j cells[i,j] <= L`` proves that no column clips; only where both
  tests fail are the column sums computed cycle by cycle and the clipped part subtracted.

``ideal`` mode skips the correction (an ideal, infinitely wide ADC). ``exhaustive=True`` runs the
literal model above — every crossbar, cycle and chunk as one batched matmul per DAC slice over
stacked ``[X, rows_active, Cx]`` cells — and is used to cross-check the fast path bit for bit.
Conversion counts are exact in every mode; clip counts are exact in ``bit-serial`` and
``exhaustive`` (``ideal`` reports 0 clipped by definition).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from xbc import qmath
from xbc.errors import BundleError, XbcError
from xbc.layer import LayerSpec, to_matrix

MODES = ("auto", "bit-serial", "ideal")
F32_EXACT = 1 << 24
F64_EXACT = 1 << 53
_BLOCK = 1 << 22   # elements per temporary block (keeps memory at tens of MB per layer)


class SimError(XbcError):
    """The simulator cannot run a bundle or an input (names the layer / input and the fix)."""


# ----------------------------------------------------------------------------------------
# quantization and unfolding
# ----------------------------------------------------------------------------------------

def quantize_input(x: np.ndarray, x_scale: float, zero_point: int, bits: int) -> np.ndarray:
    """:func:`xbc.qmath.quantize_input` — ``clip(rint(float64(x) / x_scale) + zero_point, 0,
    2**bits - 1)`` — computed in place on one float64 buffer, the codes returned in float32
    (exact for ``bits <= 16``) so that they feed BLAS directly."""
    q = np.array(x, dtype=np.float64)
    q /= float(x_scale)
    np.rint(q, out=q)
    q += int(zero_point)
    np.clip(q, 0, qmath.input_levels(bits), out=q)
    return q.astype(np.float32)


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class ConvGeometry:
    """A (possibly zero-inserted) direct convolution: what :func:`im2col` needs."""

    kshape: tuple          # kernel spatial shape
    strides: tuple
    dilations: tuple
    pads_begin: tuple      # negative: crop (ConvTranspose with large pads)
    pads_end: tuple
    insert: tuple          # zero-insertion stride of the input (ConvTranspose strides), 1 = none
    out_shape: tuple       # output spatial shape


def conv_geometry(kind: str, attrs: dict, wshape: tuple, in_spatial: tuple) -> ConvGeometry:
    """Geometry of a Conv, or of the direct conv equivalent to a ConvTranspose (ONNX semantics)."""
    nd = len(wshape) - 2
    k = tuple(int(v) for v in wshape[2:])
    ins = tuple(int(v) for v in in_spatial)
    if len(ins) != nd:
        raise SimError(f"input has {len(ins)} spatial dims, the kernel {k} has {nd}")
    s = tuple(int(v) for v in (attrs.get("strides") or [1] * nd))
    d = tuple(int(v) for v in (attrs.get("dilations") or [1] * nd))
    auto_pad = _s(attrs.get("auto_pad", "NOTSET")) or "NOTSET"
    ext = tuple((kk - 1) * dd + 1 for kk, dd in zip(k, d))
    if kind == "conv":
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = tuple(-(-i // st) for i, st in zip(ins, s))
            tot = tuple(max(0, (o - 1) * st + e - i) for o, st, e, i in zip(out, s, ext, ins))
            if auto_pad == "SAME_UPPER":
                pb = tuple(t // 2 for t in tot)
            else:
                pb = tuple(t - t // 2 for t in tot)
            pe = tuple(t - b for t, b in zip(tot, pb))
        elif auto_pad == "VALID":
            pb = pe = (0,) * nd
        else:
            pads = [int(v) for v in (attrs.get("pads") or [0] * (2 * nd))]
            pb, pe = tuple(pads[:nd]), tuple(pads[nd:])
        out = tuple((i + b + e_ - x) // st + 1 for i, b, e_, x, st in zip(ins, pb, pe, ext, s))
        return ConvGeometry(k, s, d, pb, pe, (1,) * nd, out)
    if kind != "conv_transpose":
        raise ValueError(kind)
    op = tuple(int(v) for v in (attrs.get("output_padding") or [0] * nd))
    full = tuple(st * (i - 1) + o + e for st, i, o, e in zip(s, ins, op, ext))
    out_attr = attrs.get("output_shape")
    if out_attr is not None and len(out_attr):
        want = tuple(int(v) for v in list(out_attr)[-nd:])
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        want = tuple(i * st for i, st in zip(ins, s))
    else:
        want = None
    if want is not None:
        tot = tuple(f - w for f, w in zip(full, want))
        if auto_pad == "SAME_UPPER":
            pb = tuple(t // 2 for t in tot)
            pe = tuple(t - t // 2 for t in tot)
        else:
            pb = tuple(t - t // 2 for t in tot)
            pe = tuple(t // 2 for t in tot)
    elif auto_pad == "VALID":
        pb = pe = (0,) * nd
    else:
        pads = [int(v) for v in (attrs.get("pads") or [0] * (2 * nd))]
        pb, pe = tuple(pads[:nd]), tuple(pads[nd:])
    out = tuple(f - b - e_ for f, b, e_ in zip(full, pb, pe))
    # direct conv of the zero-inserted input with the flipped kernel, stride 1
    cb = tuple((kk - 1) * dd - b for kk, dd, b in zip(k, d, pb))
    ce = tuple((kk - 1) * dd - e_ + o for kk, dd, e_, o in zip(k, d, pe, op))
    return ConvGeometry(k, (1,) * nd, d, cb, ce, s, out)


def im2col(x: np.ndarray, geom: ConvGeometry, groups: int, pad_value: float) -> np.ndarray:
    """``[N, Cin, S...]`` -> patches ``[G, N*prod(out), Cin/G*prod(k)]`` (rows in order ci, k...).

    Zero insertion (``geom.insert``), padding and the inserted positions take ``pad_value``.
    """
    N, Cin = x.shape[:2]
    nd = len(geom.kshape)
    if any(st > 1 for st in geom.insert):
        zshape = tuple((n - 1) * st + 1 for n, st in zip(x.shape[2:], geom.insert))
        z = np.full((N, Cin) + zshape, pad_value, dtype=x.dtype)
        z[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in geom.insert)] = x
        x = z
    crop = tuple(slice(max(0, -b), n - max(0, -e)) for b, e, n in zip(geom.pads_begin, geom.pads_end, x.shape[2:]))
    x = x[(slice(None), slice(None)) + crop]
    padw = [(0, 0), (0, 0)] + [(max(0, b), max(0, e)) for b, e in zip(geom.pads_begin, geom.pads_end)]
    if any(p != (0, 0) for p in padw):
        x = np.pad(x, padw, mode="constant", constant_values=pad_value)
    ext = tuple((k - 1) * d + 1 for k, d in zip(geom.kshape, geom.dilations))
    axes = tuple(range(2, 2 + nd))
    win = sliding_window_view(x, ext, axis=axes)  # [N, C, O'..., E...]
    sl = (slice(None), slice(None)) + tuple(slice(None, o * st, st) if o > 0 else slice(0, 0)
                                            for o, st in zip(geom.out_shape, geom.strides)) \
        + tuple(slice(None, None, d) for d in geom.dilations)
    win = win[sl]
    if tuple(win.shape[2:2 + nd]) != tuple(geom.out_shape):
        raise SimError(f"convolution geometry error: windows {win.shape[2:2 + nd]} != output {geom.out_shape}")
    G = groups
    win = win.reshape((N, G, Cin // G) + win.shape[2:])
    # [N, G, Cg, O..., K...] -> [G, N, O..., Cg, K...]
    perm = (1, 0) + tuple(range(3, 3 + nd)) + (2,) + tuple(range(3 + nd, 3 + 2 * nd))
    P = N * int(np.prod(geom.out_shape, dtype=np.int64))
    return np.ascontiguousarray(win.transpose(perm)).reshape(G, P, -1)


# ----------------------------------------------------------------------------------------
# the kernel
# ----------------------------------------------------------------------------------------

@dataclass
class LayerRun:
    """Result of one crossbar layer on one input tensor."""

    y: np.ndarray                       # float output, ONNX layout
    conversions: int = 0
    clipped: int = 0
    acc: np.ndarray | None = None       # int64 accumulator, output layout (record=True)
    xq: np.ndarray | None = None        # quantized input tensor (float32 integers; record=True)


@dataclass
class KernelInfo:
    """Static facts about a layer's crossbars under the simulated ADC."""

    adc_bits: int
    crossbars: int
    conversions_per_vector: int
    columns: int                        # used physical columns
    columns_may_clip: int               # used columns whose largest possible chunk sum > 2**adc-1
    chunks_may_clip: int
    matmul_dtype: str


class CrossbarKernel:
    """Runs one :class:`~xbc.layer.LayerSpec` (see the module docstring for the model).

    ``mode``: ``"bit-serial"`` (exact ADC model) / ``"auto"`` (the same results; the correction
    is simply skipped for layers that cannot clip) / ``"ideal"`` (ideal ADC).
    ``adc_bits`` overrides ``spec.adc_bits``; ``exhaustive`` runs every cycle and chunk literally.
    """

    def __init__(self, spec: LayerSpec, *, mode: str = "auto", adc_bits: int | None = None,
                 exhaustive: bool = False):
        if mode not in MODES:
            raise SimError(f"unknown simulation mode {mode!r}; choose one of {', '.join(MODES)}")
        self.spec = spec
        self.mode = mode
        self.exhaustive = exhaustive
        sp = spec
        p = sp.program
        G, R, C = sp.groups, sp.rows, sp.cols
        self.G, self.R, self.C = G, R, C
        self.adc_bits = int(adc_bits if adc_bits is not None else sp.adc_bits)
        if not 1 <= self.adc_bits <= 32:
            raise SimError(f"layer {sp.id}: ADC bits {self.adc_bits} out of range 1..32")
        if not 1 <= sp.input_bits <= 16:
            raise SimError(f"layer {sp.id}: input_bits {sp.input_bits} out of range 1..16")
        self.L = (1 << self.adc_bits) - 1
        self.dac = int(sp.dac_bits)
        self.dmax = (1 << self.dac) - 1
        self.n_d = math.ceil(sp.input_bits / self.dac)
        self._dshift = (np.arange(self.n_d) * self.dac).astype(np.int32)
        self.qmax = (1 << sp.input_bits) - 1

        # --- the matrix the cells store (ideal ADC), and the exact matmul dtype ---------
        M = cells_matrix(p, G, R, C)                          # int64 [G, R, C], offset included
        self.parts = row_parts(M, self.qmax)
        if self.parts is not None:
            self.dtype = np.float32                     # every part's partial sums < 2**24
        else:
            bound = self.qmax * int(np.abs(M).sum(axis=1).max(initial=0))
            if bound >= F64_EXACT:
                raise SimError(f"layer {sp.id}: integer sums up to {bound} exceed 2**53; not simulable exactly")
            self.dtype = np.float64
            self.parts = [(0, R)]
        self.M = M.astype(self.dtype)
        self.MT = np.ascontiguousarray(self.M.transpose(0, 2, 1))            # [G, C, R]
        self.depthwise = C == 1
        wm = to_matrix(sp.kind, np.asarray(sp.w_int, dtype=np.int64), G, sp.attrs)
        self.colsum = wm.sum(axis=1).reshape(-1).astype(np.float64)   # [Cout]
        self.out_scale = float(sp.x_scale) * np.asarray(sp.w_scale, np.float64).reshape(-1)
        self.bias = None if sp.bias is None else np.asarray(sp.bias, np.float64).reshape(-1)
        self.out_shift = (0.0 if self.bias is None else self.bias) - float(sp.x_zero_point) * self.colsum * self.out_scale
        self.offset = int(p.offset)

        # --- crossbars in chunks of rows_active physical rows --------------------------
        X, Rx, Cx = p.cells.shape
        ra = max(1, min(int(sp.rows_active), Rx)) if Rx else 1
        K = -(-Rx // ra) if Rx else 0
        Rp = K * ra
        if Rp == Rx:
            cells = np.asarray(p.cells)
        else:
            cells = np.zeros((X, Rp, Cx), np.uint8)
            cells[:, :Rx] = p.cells
        rg = np.full((X, Rp), -1, np.int64)
        ri = np.full((X, Rp), -1, np.int64)
        rg[:, :Rx], ri[:, :Rx] = p.row_group, p.row_index
        used_row = rg >= 0
        used_col = np.asarray(p.col_sign) != 0
        self.X, self.Rx, self.Cx, self.ra, self.K = X, Rx, Cx, ra, K
        chunk_used = used_row.reshape(X, K, ra).any(-1)                      # [X, K]
        self.conv_per_vector = int(self.n_d * (chunk_used.sum(1) * used_col.sum(1)).sum())
        chunk_max = cells.reshape(X, K, ra, Cx).sum(2, dtype=np.int64) * self.dmax  # [X, K, Cx]
        may = (chunk_max > self.L) & used_col[:, None, :] & chunk_used[..., None]
        self.may_clip = may
        fx, fk = np.nonzero(may.any(-1))
        self.info = KernelInfo(adc_bits=self.adc_bits, crossbars=X, conversions_per_vector=self.conv_per_vector,
                               columns=int(used_col.sum()), columns_may_clip=int(may.any(1).sum()),
                               chunks_may_clip=len(fx), matmul_dtype=np.dtype(self.dtype).name)
        # splice: physical column -> flat output column and weight col_sign * 2**col_shift
        tgt = np.where(used_col, np.asarray(p.col_group, np.int64) * C + np.asarray(p.col_index, np.int64), 0)
        wsp = np.where(used_col, np.asarray(p.col_sign, np.float64) * np.exp2(np.asarray(p.col_shift, np.float64)), 0.0)
        self.tgt, self.wsp = tgt, wsp                                        # [X, Cx]
        gidx = np.where(used_row, rg, 0)
        ridx = np.where(used_row, ri, 0)
        self.gidx, self.ridx, self.used_row, self.used_col = gidx, ridx, used_row, used_col
        self.cells = cells
        # flagged chunks (may clip): gather indices and bound weights; their cells are gathered
        # block by block at run time (no float copy of the cells is kept)
        if len(fx):
            rows = fk[:, None] * ra + np.arange(ra)[None, :]                 # [F, ra]
            self.f_x, self.f_rows = fx, rows
            self.f_g = gidx[fx[:, None], rows]
            self.f_r = ridx[fx[:, None], rows]
            self.f_used = used_row[fx[:, None], rows]
            self.f_rowmax = np.zeros((len(fx), ra), np.float32)
            step = max(1, _BLOCK // max(1, ra * Cx))
            for a in range(0, len(fx), step):
                cf = cells[fx[a:a + step, None], rows[a:a + step]]           # [f, ra, Cx]
                self.f_rowmax[a:a + step] = np.where(may[fx[a:a + step], fk[a:a + step]][:, None, :], cf, 0).max(-1)
            self.f_tgt = tgt[fx]
            self.f_wsp = wsp[fx]
            self.f_colmask = used_col[fx]
        self.F = len(fx)

    @property
    def M_int(self) -> np.ndarray:
        """The integer matrix ``[G, R, C]`` the cells store (offset included)."""
        return np.rint(self.M).astype(np.int64)

    # ---- shapes -----------------------------------------------------------------------
    def _patches(self, xq: np.ndarray, zp: float):
        """Quantized input tensor -> (patches [G, P, R], finisher mapping [P, Cout] to the output)."""
        sp = self.spec
        kind = sp.kind
        if kind in ("conv", "conv_transpose"):
            if xq.ndim != len(sp.weight_shape):
                raise SimError(f"layer {sp.id} ({kind}): input rank {xq.ndim} does not match weight rank "
                               f"{len(sp.weight_shape)}")
            cin = sp.weight_shape[1] * sp.groups if kind == "conv" else sp.weight_shape[0]
            if xq.shape[1] != cin:
                raise SimError(f"layer {sp.id}: input has {xq.shape[1]} channels, the weights expect {cin}")
            geom = conv_geometry(kind, sp.attrs, tuple(sp.weight_shape), xq.shape[2:])
            if any(o <= 0 for o in geom.out_shape):
                raise SimError(f"layer {sp.id}: output spatial shape {geom.out_shape} is empty")
            patches = im2col(xq, geom, sp.groups, zp)
            N = xq.shape[0]
            out = geom.out_shape
            nd = len(out)

            def finish(a):  # [P, Cout] -> [N, Cout, O...]
                return np.moveaxis(a.reshape((N,) + out + (a.shape[-1],)), -1, 1) if nd else a
            return patches, finish
        K = self.R
        if xq.shape[-1] != K:
            raise SimError(f"layer {sp.id} ({kind}): input's last dimension is {xq.shape[-1]}, expected {K}")
        if kind == "gemm" and xq.ndim != 2:
            raise SimError(f"layer {sp.id}: Gemm input must be 2-D, got shape {xq.shape}")
        lead = xq.shape[:-1]
        patches = np.ascontiguousarray(xq.reshape(1, -1, K))

        def finish(a):
            return a.reshape(lead + (a.shape[-1],))
        return patches, finish

    # ---- run --------------------------------------------------------------------------
    def run(self, x: np.ndarray, *, record: bool = False, out_dtype=np.float32) -> LayerRun:
        sp = self.spec
        xq = quantize_input(x, sp.x_scale, sp.x_zero_point, sp.input_bits)
        direct = None
        if not self.exhaustive and (self.mode == "ideal" or not self.F):
            direct = self._direct(xq)
        if direct is not None:                       # NCHW result, no im2col (same integers)
            acc, P = direct
            clipped = 0
            view = (1, -1) + (1,) * (acc.ndim - 2)
            y = np.multiply(acc, self.out_scale.reshape(view), dtype=np.float64)
            y += self.out_shift.reshape(view)
            run = LayerRun(y=y.astype(out_dtype), conversions=self.conv_per_vector * P, clipped=0)
            if record:
                run.acc = np.rint(acc).astype(np.int64)
                run.xq = xq
            return run
        patches, finish = self._patches(xq, float(sp.x_zero_point))
        P = patches.shape[1]
        if self.exhaustive:
            acc, clipped = self._exhaustive(patches)
        else:
            acc = self._ideal(patches)
            clipped = 0
            if self.mode != "ideal" and self.F:
                acc, clipped = self._correct(patches, acc)
        # y = x_scale * w_scale * (acc - zp * colsum) + bias, as acc * s + (bias - zp * colsum * s)
        y = np.multiply(acc, self.out_scale, dtype=np.float64)
        y += self.out_shift
        run = LayerRun(y=np.ascontiguousarray(finish(y), dtype=out_dtype), conversions=self.conv_per_vector * P,
                       clipped=int(clipped))
        if record:
            run.acc = finish(np.rint(acc).astype(np.int64))
            run.xq = xq
        return run

    def _direct(self, xq: np.ndarray):
        """``xq @ M`` for a Conv without im2col, in the output's NCHW layout, where that is cheaper:
        1x1 convs (stride 1, no padding) as ``M^T @ x`` per group, and convs with one output per
        group (depthwise) as a sum of ``R`` shifted, channel-scaled views of the padded input.
        Returns ``(acc [N, Cout, O...], positions)`` or None. Same exact integers as :meth:`_ideal`
        (the same row parts bound every partial sum)."""
        sp = self.spec
        if sp.kind != "conv" or xq.ndim != len(sp.weight_shape) or xq.shape[1] != sp.weight_shape[1] * sp.groups:
            return None
        G, R, C = self.G, self.R, self.C
        N, Cin = xq.shape[:2]
        geom = conv_geometry("conv", sp.attrs, tuple(sp.weight_shape), xq.shape[2:])
        out = geom.out_shape
        if any(o <= 0 for o in out):
            return None
        P = N * int(np.prod(out, dtype=np.int64))
        Cg = Cin // G
        pt = xq if self.dtype == np.float32 else xq.astype(self.dtype)
        if all(k == 1 for k in geom.kshape) and all(st == 1 for st in geom.strides) \
                and not any(geom.pads_begin) and not any(geom.pads_end):
            xg = pt.reshape(N, G, Cg, -1)                                        # [N, G, R, S]
            acc = None
            for a, b in self.parts:
                part = np.matmul(self.MT[:, :, a:b], xg[:, :, a:b])              # [N, G, C, S]
                acc = part if len(self.parts) == 1 else (part.astype(np.float64) if acc is None else acc + part)
            return acc.reshape((N, G * C) + tuple(out)), P
        if C != 1:
            return None
        padw = [(0, 0), (0, 0)] + [(max(0, b), max(0, e)) for b, e in zip(geom.pads_begin, geom.pads_end)]
        if any(b < 0 or e < 0 for b, e in zip(geom.pads_begin, geom.pads_end)):
            return None
        xp = np.pad(pt, padw, mode="constant", constant_values=float(sp.x_zero_point)) \
            if any(p != (0, 0) for p in padw) else pt
        xp = xp.reshape((N, G, Cg) + xp.shape[2:])
        Mv = self.M[:, :, 0]                                                     # [G, R], rows (c, k...)
        acc = None
        for a, b in self.parts:
            part = np.zeros((N, G) + tuple(out), self.dtype)
            for r in range(a, b):
                c, kk = divmod(r, int(np.prod(geom.kshape)))
                kidx = np.unravel_index(kk, geom.kshape)
                sl = tuple(slice(k * d, k * d + (o - 1) * st + 1, st)
                           for k, d, o, st in zip(kidx, geom.dilations, out, geom.strides))
                w = Mv[:, r].reshape((1, G) + (1,) * len(out))
                part += xp[(slice(None), slice(None), c) + sl] * w
            acc = part if len(self.parts) == 1 else (part.astype(np.float64) if acc is None else acc + part)
        return acc, P

    def _ideal(self, patches: np.ndarray) -> np.ndarray:
        """``xq @ M`` per group -> [P, G*C] (exact integers: every partial sum of a row part
        fits the float type's mantissa; parts are added in float64)."""
        G, C = self.G, self.C
        pt = patches.astype(self.dtype, copy=False)
        acc = None
        for a, b in self.parts:
            if self.depthwise:
                part = np.einsum("gpr,gr->pg", pt[:, :, a:b], self.M[:, a:b, 0], optimize=False)
            elif G == 1:
                part = pt[0, :, a:b] @ self.M[0, a:b]
            else:
                part = np.matmul(pt[:, :, a:b], self.M[:, a:b]).transpose(1, 0, 2).reshape(-1, G * C)
            if len(self.parts) == 1:
                return part
            acc = part.astype(np.float64) if acc is None else acc + part
        return acc

    def _slices(self, xin: np.ndarray) -> np.ndarray:
        """Integer inputs ``[..., P]`` -> DAC slices of every cycle side by side, float32
        ``[..., n_d * P]`` (column ``d*P + p`` is cycle ``d`` of position ``p``), so that one
        matmul computes the column sums of all cycles."""
        sh = (xin[..., None, :] >> (self._dshift[:, None])) & self.dmax          # [..., n_d, P]
        return sh.astype(np.float32).reshape(xin.shape[:-1] + (-1,))

    def _correct(self, patches: np.ndarray, acc: np.ndarray):
        """Subtract the clipped part ``sum 2**(d*dac) * w * max(s - L, 0)`` where conversions clip.

        Per block of flagged chunks, all DAC cycles at once: the data bound ``slices @ rowmax``
        finds the (chunk, cycle, position) triples that could clip; their exact column sums are
        computed (for whole chunks when many triples could clip, else only for those triples),
        and only the conversions that really clip are scattered into the correction.
        """
        P = patches.shape[1]
        GC = self.G * self.C
        L = float(self.L)
        corr = np.zeros(P * GC, np.float64)
        clipped = 0
        F, ra, Cx, nd = self.F, self.ra, self.Cx, self.n_d
        wd = np.exp2(self._dshift.astype(np.float64))                              # 2**(d*dac)

        def scatter(q, jj, f, ex):
            d, pp = np.divmod(q, P)
            idx = pp * GC + self.f_tgt[f, jj]
            val = ex * wd[d] * self.f_wsp[f, jj]
            if len(idx) * 8 < P * GC:
                np.add.at(corr, idx, val)
            else:
                corr[:] += np.bincount(idx, weights=val, minlength=P * GC)

        fb = max(1, _BLOCK // max(1, ra * nd * max(P, Cx)))
        for f0 in range(0, F, fb):
            f1 = min(F, f0 + fb)
            xin = patches[self.f_g[f0:f1], :, self.f_r[f0:f1]]           # [f, ra, P]
            xin = np.where(self.f_used[f0:f1, :, None], xin, 0).astype(np.int32)
            sl = self._slices(xin)                                       # [f, ra, nd*P]
            hit = np.matmul(self.f_rowmax[f0:f1, None, :], sl)[:, 0, :] > L   # [f, nd*P]: may clip
            if not hit.any():
                continue
            cT = self.cells[self.f_x[f0:f1, None], self.f_rows[f0:f1]].transpose(0, 2, 1).astype(np.float32)
            chunks = np.flatnonzero(hit.any(1))
            if hit[chunks].mean() > 0.125:                               # dense over those chunks
                bs = max(1, _BLOCK // max(1, Cx * nd * P))
                for g0 in range(0, len(chunks), bs):
                    blk = chunks[g0:g0 + bs]
                    sums = np.matmul(cT[blk], sl[blk])                   # [b, Cx, nd*P] column sums
                    n_clip = int(np.count_nonzero(sums > L))
                    if not n_clip:
                        continue
                    clipped += n_clip
                    sums -= L
                    np.maximum(sums, 0, out=sums)                        # the clipped excess
                    ex = np.zeros((len(blk), Cx, P), np.float64)
                    for d in range(nd):
                        ex += wd[d] * sums[:, :, d * P:(d + 1) * P]
                    ex *= self.f_wsp[f0 + blk][:, :, None]
                    idx = np.arange(P)[None, None, :] * GC + self.f_tgt[f0 + blk][:, :, None]
                    corr += np.bincount(idx.ravel(), weights=ex.ravel(), minlength=P * GC)
            else:                                                        # only the triples that may clip
                fi, qi = np.nonzero(hit)
                starts = np.flatnonzero(np.r_[True, fi[1:] != fi[:-1]])
                ends = np.r_[starts[1:], len(fi)]
                for a, b in zip(starts, ends):
                    f = fi[a]
                    qq = qi[a:b]
                    sums = cT[f] @ sl[f][:, qq]                          # [Cx, n]
                    jj, kk = np.nonzero(sums > L)
                    if len(jj):
                        clipped += len(jj)
                        scatter(qq[kk], jj, np.full(len(jj), f0 + f), sums[jj, kk] - L)
        return acc.astype(np.float64) - corr.reshape(P, GC), clipped

    def _exhaustive(self, patches: np.ndarray):
        """The literal model: every crossbar, DAC cycle and row chunk; ADC per conversion.

        One batched matmul per block of crossbars computes the column sums of every cycle and
        chunk (:meth:`_slices`). Unused columns hold no programmed cell (checked when the matrix
        is built), so their sums are 0 and never clip."""
        P = patches.shape[1]
        G, R, C = self.G, self.R, self.C
        GC = G * C
        X, K, ra, Cx, nd = self.X, self.K, self.ra, self.Cx, self.n_d
        L = self.L
        acc = np.zeros(P * GC, np.float64)
        clipped = 0
        # spliced partial sums per column stay exact in float32 below 2**24
        tdt = np.float32 if ((1 << (nd * self.dac)) - 1) * K * L < F32_EXACT else np.float64
        xb = max(1, _BLOCK // max(1, K * max(ra, Cx) * nd * P))
        for x0 in range(0, X, xb):
            x1 = min(X, x0 + xb)
            n = x1 - x0
            xin = patches[self.gidx[x0:x1], :, self.ridx[x0:x1]]                # [n, Rp, P]
            xin = np.where(self.used_row[x0:x1, :, None], xin, 0).astype(np.int32)
            sl = self._slices(xin).reshape(n, K, ra, nd * P)
            cT = np.ascontiguousarray(self.cells[x0:x1].reshape(n, K, ra, Cx).transpose(0, 1, 3, 2),
                                      dtype=np.float32)                          # [n, K, Cx, ra]
            s = np.matmul(cT, sl)                                                # [n, K, Cx, nd*P]
            clipped += int(np.count_nonzero(s > L))
            np.minimum(s, L, out=s)                                              # the ADC
            red = s[:, 0] if K == 1 else s.sum(1, dtype=tdt)                     # [n, Cx, nd*P]
            t = np.zeros((n, Cx, P), tdt)
            for d in range(nd):
                t += float(1 << (d * self.dac)) * red[:, :, d * P:(d + 1) * P]
            t = t.astype(np.float64) * self.wsp[x0:x1, :, None]
            idx = np.arange(P)[None, None, :] * GC + self.tgt[x0:x1, :, None]
            acc += np.bincount(idx.ravel(), weights=t.ravel(), minlength=P * GC)
        acc = acc.reshape(P, GC)
        if self.offset:
            xsum = patches.astype(np.float64).sum(-1)                              # [G, P]
            acc -= self.offset * np.repeat(xsum.T, C, axis=1)
        return acc, clipped


def row_parts(M: np.ndarray, qmax: int) -> list[tuple[int, int]] | None:
    """Split the rows of ``M [G, R, C]`` into contiguous parts whose column sums stay exact in
    float32: ``qmax * max_{g,c} sum_{r in part} |M[g, r, c]| < 2**24``. ``None`` if one row alone
    is too large (then float64 is used)."""
    G, R, C = M.shape
    if R == 0:
        return [(0, 0)]
    A = np.abs(M).astype(np.float64) * qmax                # [G, R, C]
    if A.max(initial=0) >= F32_EXACT:
        return None
    cs = np.concatenate([np.zeros((G, 1, C)), np.cumsum(A, axis=1)], axis=1)   # [G, R+1, C]
    parts = []
    a = 0
    while a < R:
        ok = (cs[:, a + 1:, :] - cs[:, a:a + 1, :]).max(axis=(0, 2)) < F32_EXACT  # ends a+1..R
        b = a + 1 + int(np.argmin(ok)) if not ok.all() else R
        parts.append((a, b))
        a = b
    return parts


def cells_matrix(p, G: int, R: int, C: int) -> np.ndarray:
    """The integer matrix ``[G, R, C]`` the cells store (what ``xbc.layer.rebuild_matrix`` gives,
    offset included), computed from the cells block by block of crossbars:

    1. the physical columns of each crossbar are numbered by their distinct output columns
       (local target ids, vectorized with a sort per crossbar);
    2. ``Z[x] = cells[x] @ S[x]`` with ``S[x][j, t] = col_sign * 2**col_shift`` when column ``j``
       feeds local target ``t`` (one batched float32 matmul; every entry of ``Z`` is a partial
       integer weight, exact below 2**24);
    3. ``Z`` is added into ``M`` at (row, target) with one ``bincount`` (float64, exact).

    A programmed cell on an unused row or column, or joining a row and a column of different
    groups, is a :class:`~xbc.errors.BundleError`.
    """
    X, Rx, Cx = p.cells.shape
    n = G * R * C
    out = np.zeros(n + 1, np.float64)                     # bin n: unused rows / columns
    if X == 0:
        return np.zeros((G, R, C), np.int64) - int(p.offset)
    used_r = p.row_group >= 0
    used_c = p.col_sign != 0
    rgi = np.asarray(p.row_group, np.int64)
    # index of M[g, r, c] = (g*R + r)*C + c = rowbase + t with t = g*C + c the output column
    rowbase = np.where(used_r, (rgi * R + np.asarray(p.row_index, np.int64)) * C - rgi * C, n)
    tgt = np.where(used_c, np.asarray(p.col_group, np.int64) * C + p.col_index, -1)
    wsp = np.where(used_c, np.asarray(p.col_sign, np.float32) * np.exp2(np.asarray(p.col_shift, np.float32)),
                   np.float32(0)).astype(np.float32)
    order = np.argsort(tgt, axis=1, kind="stable")
    st = np.take_along_axis(tgt, order, 1)
    first = np.ones_like(st, bool)
    first[:, 1:] = st[:, 1:] != st[:, :-1]
    lid_sorted = np.cumsum(first, axis=1) - 1
    lid = np.empty_like(lid_sorted)
    np.put_along_axis(lid, order, lid_sorted, 1)           # local target id of each column
    T = int(lid_sorted[:, -1].max()) + 1
    tval = np.full((X, T), -1, np.int64)
    np.put_along_axis(tval, lid, tgt, 1)                   # output column of each local id
    ok_t = tval >= 0
    tval = np.where(ok_t, tval, 0)
    step = max(1, (1 << 22) // max(1, Rx * max(Cx, T)))
    for x0 in range(0, X, step):
        x1 = min(X, x0 + step)
        c = p.cells[x0:x1]
        if c[~used_r[x0:x1]].any() or (c * ~used_c[x0:x1, None, :]).any():
            raise BundleError("a programmed cell sits on an unused row or column")
        if G > 1 and ((c != 0) & (p.row_group[x0:x1, :, None] != p.col_group[x0:x1, None, :])).any():
            raise BundleError("a programmed cell joins a row and a column of different groups")
        S = np.zeros((x1 - x0, Cx, T), np.float32)
        S[np.arange(x1 - x0)[:, None], np.arange(Cx)[None, :], lid[x0:x1]] = wsp[x0:x1]
        Z = np.matmul(c.astype(np.float32), S)                                   # [b, Rx, T]
        idx = np.where(ok_t[x0:x1, None, :] & (rowbase[x0:x1, :, None] < n),
                       rowbase[x0:x1, :, None] + tval[x0:x1, None, :], n)
        out += np.bincount(idx.reshape(-1), weights=Z.reshape(-1), minlength=n + 1)
    M = np.rint(out[:n]).astype(np.int64).reshape(G, R, C)
    if p.offset:
        M -= int(p.offset)
    return M


def check_spec(spec: LayerSpec) -> None:
    """Raise :class:`~xbc.errors.BundleError` if a layer's arrays do not fit together."""
    p = spec.program
    if p.cells.ndim != 3:
        raise BundleError(f"layer {spec.id}: cells must be [X, Rx, Cx], got shape {p.cells.shape}")
    X, Rx, Cx = p.cells.shape
    for name, shape in (("row_group", (X, Rx)), ("row_index", (X, Rx)), ("col_group", (X, Cx)),
                        ("col_index", (X, Cx)), ("col_shift", (X, Cx)), ("col_sign", (X, Cx))):
        a = getattr(p, name)
        if tuple(a.shape) != shape:
            raise BundleError(f"layer {spec.id}: program.{name} has shape {tuple(a.shape)}, expected {shape}")
    used_r = p.row_group >= 0
    if np.any(p.row_group[used_r] >= spec.groups) or np.any(p.row_index[used_r] >= spec.rows) \
            or np.any(p.row_index[used_r] < 0):
        raise BundleError(f"layer {spec.id}: a row index is outside the {spec.groups}x{spec.rows} matrix")
    used_c = p.col_sign != 0
    if np.any(p.col_group[used_c] >= spec.groups) or np.any(p.col_group[used_c] < 0) \
            or np.any(p.col_index[used_c] >= spec.cols) or np.any(p.col_index[used_c] < 0):
        raise BundleError(f"layer {spec.id}: a column index is outside the {spec.groups}x{spec.cols} matrix")
    if np.any(p.cells >= (1 << spec.cell_bits)):
        raise BundleError(f"layer {spec.id}: a cell holds more than cell_bits={spec.cell_bits} bits")
