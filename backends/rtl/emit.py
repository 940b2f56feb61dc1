"""SystemVerilog from a mapping bundle: memory images, crossbar macro, datapaths, testbenches.

What is generated (``emit_rtl``; ``xbc emit-rtl BUNDLE -o DIR``; user guide: docs/rtl.md), all
under ``DIR``:

``mem/<L>_x<NNN>.memh``
    the cells of physical crossbar ``NNN`` of layer ``L``, ``$readmemh`` format, **one line per
    physical row** (``Rx`` lines), each line ``Cx * cell_bits`` bits in hex with column ``j`` in
    bits ``[j*cell_bits +: cell_bits]`` (the rightmost hex digit holds column 0).
``mem/<L>_splice.memh``
    the schedule ROM: one word per step = (row chunk, used physical column) for every chunk in
    which the column's crossbar has a used row (crossbar, column, group, output column, shift,
    negative sign, chunk, packed from bit 0), each line commented.
``rtl/xbc_crossbar.sv``
    behavioral macro (parameters ROWS, COLS, CELL_BITS, DAC_BITS, ADC_BITS, ROWS_ACTIVE): column
    sums over the active row chunk of the DAC slice, saturating ADC ``min(sum, 2**ADC_BITS-1)``.
``rtl/xbc_layer_<L>.sv``
    the layer datapath (synthesizable style): an input shift register read LSB first in DAC
    slices, slice and step counters, one macro instance per physical crossbar, one shift-and-add
    per clock into ``acc[g][c]``, which starts at ``-offset * sum_r xq[g][r]``.
    The arithmetic, literally: :mod:`xbc.backends.rtl.golden`.
``tb/tb_<L>.sv``, ``tb/<L>_x.memh``, ``tb/<L>_acc.memh``
    testbench, stimulus (xq vectors) and expected integer accumulators.
``files.f``, ``Makefile``, ``rtl_manifest.json``
    file list, ``make`` (runs every testbench in Icarus Verilog, non-zero exit on any mismatch),
    ``make lint`` (Verilator), and a machine-readable description of what was written.

Stimulus (:func:`layer_vectors`): the all-maximum vector (worst case for ADC saturation), then
real layer inputs recorded by a whole-model simulator run (``model``) or uniform random vectors
(``random``). Expected values: the simulator's bit-serial kernel
(:class:`xbc.backends.sim.engine.CrossbarKernel`), cross-checked with the golden model here and,
for real inputs, with the whole-model run's accumulators; any disagreement is an error.

Accumulator width ``ACC_W``: two bits more than the largest magnitude any partial sum can reach,
``offset * R * (2**input_bits-1) + sum_e 2**shift_e * sum_q min(chunk column max, ADC max) *
sum_k 2**(k*dac_bits)``, and at least ``adc_bits + 1``, so the two's complement accumulator
never wraps.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from xbc import __version__
from xbc.errors import BundleError, OptionError, XbcError
from xbc.layer import LayerSpec

from . import golden

ACC_W_MAX = 62   # the golden model and the hex files use int64


class RTLToolError(XbcError):
    """An external tool (iverilog, vvp, verilator, make) is missing."""


class RTLMismatch(XbcError):
    """The generated RTL disagrees with the simulator (a bug: report it)."""

    exit_code = 1


class RTLLintError(XbcError):
    """Verilator found a problem in the generated RTL (a bug: report it)."""

    exit_code = 1


def _template(name: str) -> str:
    return (resources.files(__package__) / "templates" / name).read_text()


def _fill(text: str, values: Mapping[str, Any]) -> str:
    out = re.sub(r"@@([A-Z0-9_]+)@@", lambda m: str(values[m.group(1)]), text)
    return out


def _bits(n: int) -> int:
    """Bits to index ``n`` items (at least 1)."""
    return max(1, (int(n) - 1).bit_length())


def sv_names(layer_ids: list[str]) -> dict[str, str]:
    """Layer id -> unique SystemVerilog-safe identifier suffix."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for lid in layer_ids:
        base = re.sub(r"[^A-Za-z0-9_]", "_", lid) or "layer"
        if not re.match(r"[A-Za-z_]", base):
            base = "L" + base
        name, k = base, 1
        while name.lower() in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name.lower())
        out[lid] = name
    return out


# ----------------------------------------------------------------------------------------
# per-layer plan: widths and the splice table
# ----------------------------------------------------------------------------------------

@dataclass
class LayerPlan:
    layer_id: str
    name: str
    spec: LayerSpec
    X: int
    Rx: int
    Cx: int
    S: int
    ra: int
    Q: int
    acc_w: int
    sh_w: int
    entries: np.ndarray            # int64 [E, 6]: x, j, group, col, shift, sign (used columns)
    steps: np.ndarray              # int64 [T, 7]: chunk, then an entry, for chunks with used rows
    mem_files: list[str] = field(default_factory=list)
    rom_file: str = ""

    @property
    def module(self) -> str:
        return f"xbc_layer_{self.name}"

    @property
    def E(self) -> int:
        return int(self.entries.shape[0])

    @property
    def T(self) -> int:
        return int(self.steps.shape[0])

    @property
    def cycles(self) -> int:
        return self.S * max(1, self.T)


def plan_layer(spec: LayerSpec, name: str) -> LayerPlan:
    p = spec.program
    X, Rx, Cx = p.cells.shape
    S = golden.n_slices(spec.input_bits, spec.dac_bits)
    ra = golden.active_rows(spec.rows_active, Rx)
    Q = math.ceil(Rx / ra) if Rx else 1
    xs, js = np.nonzero((p.col_group >= 0) & (p.col_sign != 0))
    entries = np.stack([xs, js, p.col_group[xs, js], p.col_index[xs, js], p.col_shift[xs, js],
                        p.col_sign[xs, js]], axis=1).astype(np.int64).reshape(-1, 6)
    # accumulator bound (float64: only its magnitude matters, two bits of margin)
    adc_max = (1 << spec.adc_bits) - 1
    dac_max = (1 << spec.dac_bits) - 1
    bound = float(spec.program.offset) * spec.rows * ((1 << spec.input_bits) - 1)
    if len(entries):
        pad = Q * ra - Rx
        used = (p.row_group >= 0)[:, :, None]
        cells = np.where(used, p.cells.astype(np.float64), 0.0)
        chunk_max = np.pad(cells, ((0, 0), (0, pad), (0, 0))).reshape(X, Q, ra, Cx).sum(axis=2) * dac_max
        col_bound = np.minimum(chunk_max, adc_max).sum(axis=1)                    # [X, Cx]
        kweight = float(sum(2.0 ** (k * spec.dac_bits) for k in range(S)))
        term = col_bound[xs, js] * np.exp2(p.col_shift[xs, js]) * kweight
        dst = p.col_group[xs, js].astype(np.int64) * spec.cols + p.col_index[xs, js]
        per_out = np.zeros(spec.groups * spec.cols)
        np.add.at(per_out, dst, term)
        bound += float(per_out.max())
    acc_w = max(spec.adc_bits + 1, int(math.ceil(math.log2(bound + 1.0))) + 2)
    if acc_w > ACC_W_MAX:
        raise OptionError(f"layer {spec.id}: accumulators need {acc_w} bits, more than the {ACC_W_MAX} "
                          f"the RTL backend supports; emit fewer or smaller layers (--layers)")
    max_shift = int(p.col_shift[xs, js].max()) if len(entries) else 0
    # schedule: per row chunk, the entries whose crossbar has a used row in that chunk (the other
    # conversions read 0 and are skipped, as the simulator skips them)
    used = np.pad(p.row_group >= 0, ((0, 0), (0, Q * ra - Rx))).reshape(X, Q, ra).any(axis=2)   # [X, Q]
    steps = np.concatenate([np.concatenate([np.full((int(m.sum()), 1), q, np.int64), entries[m]], axis=1)
                            for q in range(Q) for m in [used[entries[:, 0], q]]] or [np.zeros((0, 7), np.int64)])
    sh_w = max(1, (max_shift + S * spec.dac_bits).bit_length())
    return LayerPlan(layer_id=spec.id, name=name, spec=spec, X=X, Rx=Rx, Cx=Cx, S=S, ra=ra, Q=Q,
                     acc_w=acc_w, sh_w=sh_w, entries=entries, steps=steps)


# ----------------------------------------------------------------------------------------
# hex images
# ----------------------------------------------------------------------------------------

_HEX = np.array(list("0123456789abcdef"))


def cells_hex_lines(cells: np.ndarray, cell_bits: int) -> np.ndarray:
    """``[X, Rx, Cx]`` cells -> ``[X, Rx]`` hex strings, one per row, column 0 in the low bits."""
    X, Rx, Cx = cells.shape
    nbits = Cx * cell_bits
    ndig = max(1, math.ceil(nbits / 4))
    bits = (cells[..., None].astype(np.uint8) >> np.arange(cell_bits, dtype=np.uint8)) & 1   # [X,Rx,Cx,cb]
    bits = bits.reshape(X, Rx, nbits)
    bits = np.pad(bits, ((0, 0), (0, 0), (0, ndig * 4 - nbits)))
    nib = (bits.reshape(X, Rx, ndig, 4) << np.arange(4, dtype=np.uint8)).sum(axis=3)
    chars = np.ascontiguousarray(_HEX[nib[..., ::-1]])                                         # MSB first
    return chars.view(f"<U{ndig}").reshape(X, Rx)


def values_hex(values: np.ndarray, width: int) -> str:
    """Integers (two's complement for negatives) -> ``width``-bit hex, one per line."""
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    ndig = max(1, math.ceil(width / 4))
    masked = v & np.int64((1 << width) - 1) if width < 64 else v
    return "".join(np.char.add(np.char.zfill(np.char.mod("%x", masked), ndig), "\n").tolist())


def parse_hex(text: str, width: int) -> np.ndarray:
    """Inverse of :func:`values_hex` (signed). Unknown bits (x/z) raise ``ValueError``."""
    vals = np.array([int(t, 16) for t in text.split()], dtype=np.int64)
    return np.where(vals >= (1 << (width - 1)), vals - (1 << width), vals)


# ----------------------------------------------------------------------------------------
# stimulus and expected values
# ----------------------------------------------------------------------------------------

def random_stimulus(spec: LayerSpec, n: int, seed: int = 0) -> np.ndarray:
    """``n`` synthetic xq vectors ``[n, G, R]`` (int64): the first drives every input at its
    maximum (the worst case for ADC saturation), the others are uniform in ``[0, 2**input_bits)``,
    every fourth with half of its inputs zeroed. Deterministic in ``seed`` and the layer id."""
    rng = np.random.default_rng([int(seed), zlib.crc32(spec.id.encode())])
    hi = 1 << spec.input_bits
    xq = rng.integers(0, hi, size=(n, spec.groups, spec.rows), dtype=np.int64)
    if n:
        xq[0] = hi - 1
    sparse = np.arange(n) % 4 == 3
    mask = rng.random(size=xq.shape) < 0.5
    xq[sparse] = np.where(mask[sparse], 0, xq[sparse])
    return xq


def model_stimulus(bundle, layer_ids: list[str], n: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Real crossbar inputs: the simulator runs the whole bundle (bit-serial mode) on one random
    N(0, 1) input (``seed``, as ``xbc simulate --random 1``) and records every layer's quantized
    input and integer accumulators. Per layer, up to ``n`` of its input vectors (im2col rows,
    chosen at random without repetition, kept in order) and their accumulators are returned
    as ``{id: (xq [k, G, R], acc [k, G, C])}``."""
    from xbc.backends.sim.cli import build_feeds            # noqa: PLC0415
    from xbc.backends.sim.engine import conv_geometry, im2col  # noqa: PLC0415
    from xbc.backends.sim.runner import Simulator           # noqa: PLC0415

    try:
        sim = Simulator(bundle, mode="bit-serial")
        feeds = build_feeds(bundle.graph, None, None, None, 1, seed)
        res = sim.run(feeds[0], record=True)
    except XbcError as e:
        raise type(e)(f"simulating the bundle for the RTL stimulus failed: {e}",
                      hint="emit with --stimulus random to use synthetic input vectors instead") from None
    out = {}
    for lid in layer_ids:
        spec = bundle.layers[lid]
        xq = np.asarray(res.layer_xq[lid])
        acc = np.asarray(res.layer_acc[lid], dtype=np.int64)
        G, R, C = spec.groups, spec.rows, spec.cols
        if spec.kind in ("conv", "conv_transpose"):
            geom = conv_geometry(spec.kind, spec.attrs, tuple(spec.weight_shape), xq.shape[2:])
            patches = im2col(xq, geom, G, float(spec.x_zero_point))            # [G, P, R]
            acc = np.moveaxis(acc, 1, -1).reshape(-1, G * C)                  # [P, G*C]
        else:
            patches = xq.reshape(1, -1, R)
            acc = acc.reshape(-1, G * C)
        vecs = np.rint(patches).astype(np.int64).transpose(1, 0, 2)           # [P, G, R]
        rng = np.random.default_rng([int(seed), zlib.crc32(lid.encode()), 1])
        pick = np.sort(rng.choice(vecs.shape[0], size=min(n, vecs.shape[0]), replace=False))
        out[lid] = (vecs[pick], acc[pick].reshape(-1, G, C))
    return out


def _vector_view(spec: LayerSpec) -> LayerSpec:
    """The same crossbar program as a grouped 1x1 convolution on a 1x1 image, so that the
    simulator's kernel runs given xq vectors directly (x_scale 1, zero point 0: xq = x)."""
    G, R, C = spec.groups, spec.rows, spec.cols
    wshape = (G * C, R, 1, 1)
    attrs = {"group": G, "kernel_shape": [1, 1], "strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1]}
    return LayerSpec(id=spec.id, kind="conv", groups=G, rows=R, cols=C, attrs=attrs, weight_shape=wshape,
                     input_bits=spec.input_bits, weight_bits=spec.weight_bits, x_scale=1.0, x_zero_point=0,
                     w_scale=np.ones(G * C), w_int=np.zeros(wshape, np.int32), bias=None, row_perm=None,
                     col_perm=None, program=spec.program, cell_bits=spec.cell_bits, dac_bits=spec.dac_bits,
                     adc_bits=spec.adc_bits, rows_active=spec.rows_active)


def simulator_acc(spec: LayerSpec, xq: np.ndarray) -> np.ndarray:
    """Accumulators ``acc[n, g, c]`` of the simulator's bit-serial kernel for given xq vectors."""
    from xbc.backends.sim.engine import CrossbarKernel  # noqa: PLC0415

    N, G, R = xq.shape
    kernel = CrossbarKernel(_vector_view(spec), mode="bit-serial")
    run = kernel.run(np.asarray(xq, np.float32).reshape(N, G * R, 1, 1), record=True)
    return np.asarray(run.acc, dtype=np.int64).reshape(N, G, spec.cols)


SIM_SOURCE = "the xbc simulator's bit-serial kernel (cross-checked with backends/rtl/golden.py)"


def expected_acc(spec: LayerSpec, xq: np.ndarray) -> np.ndarray:
    """Expected ``acc[n, g, c]``: the simulator's bit-serial kernel, which must agree with the
    golden model of this package; a disagreement is an :class:`RTLMismatch`."""
    sim = simulator_acc(spec, xq)
    mine = golden.spec_acc(spec, xq)
    if not np.array_equal(sim, mine):
        raise RTLMismatch(f"layer {spec.id}: the simulator's kernel and the RTL golden model disagree on "
                          f"{int(np.count_nonzero(sim != mine))} accumulator(s); this is a bug in xbc, "
                          f"please report it")
    return sim


STIMULI = ("model", "random")


def layer_vectors(spec: LayerSpec, how: str, n: int, seed: int, recorded=None) -> tuple[np.ndarray, np.ndarray, str]:
    """(xq ``[n, G, R]``, expected acc ``[n, G, C]``, description) for one layer.

    ``how="random"``: :func:`random_stimulus`. ``how="model"``: the all-maximum vector, then the
    layer's real inputs ``recorded = (xq, acc)`` from :func:`model_stimulus` (their recorded
    accumulators must equal the kernel's), then random vectors if the layer has too few.
    """
    if how == "random" or recorded is None:
        xq = random_stimulus(spec, n, seed)
        desc = "synthetic (all-maximum, then uniform random)"
        acc = expected_acc(spec, xq)
        return xq, acc, desc
    rx, racc = recorded
    rx, racc = rx[:max(0, n - 1)], racc[:max(0, n - 1)]
    fill = random_stimulus(spec, n - len(rx), seed)          # starts with the all-maximum vector
    xq = np.concatenate([fill[:1], rx, fill[1:]])
    acc = expected_acc(spec, xq)
    if not np.array_equal(acc[1:1 + len(rx)], racc):
        raise RTLMismatch(f"layer {spec.id}: the simulator's whole-model run and its kernel disagree on "
                          f"{int(np.count_nonzero(acc[1:1 + len(rx)] != racc))} accumulator(s); this is a bug "
                          f"in xbc, please report it")
    desc = (f"1 all-maximum vector, {len(rx)} real input vector(s) of the model"
            + (f", {len(fill) - 1} uniform random" if len(fill) > 1 else ""))
    return xq, acc, desc


# ----------------------------------------------------------------------------------------
# SystemVerilog text
# ----------------------------------------------------------------------------------------

def _xbar_list(plan: LayerPlan) -> str:
    p = plan.spec.program
    lines = []
    for x in range(plan.X):
        tile = int(p.tile[x]) if p.tile is not None else -1
        slot = int(p.slot[x]) if p.slot is not None else -1
        rows = int(np.count_nonzero(p.row_group[x] >= 0))
        cols = int(np.count_nonzero(p.col_group[x] >= 0))
        where = f"tile {tile}, slot {slot}" if tile >= 0 else "not placed"
        lines.append(f"//   crossbar {x:3d}: {where}, {rows} rows x {cols} columns used, {plan.mem_files[x]}")
    return "\n".join(lines) if lines else "//   (none: every weight of this layer is zero)"


def _xbars(plan: LayerPlan) -> str:
    spec, p = plan.spec, plan.spec.program
    D = spec.dac_bits
    out = []
    for x in range(plan.X):
        tile = int(p.tile[x]) if p.tile is not None else -1
        slot = int(p.slot[x]) if p.slot is not None else -1
        where = f"tile {tile} slot {slot}" if tile >= 0 else "not placed"
        out.append(f"    // crossbar {x} of layer {spec.id} ({where}): {plan.mem_files[x]}")
        out.append(f"    logic [XROWS*DAC_BITS-1:0] row_x{x:03d};")
        out.append(f"    logic [XCOLS*ADC_BITS-1:0] col_x{x:03d};")
        # one continuous assignment per crossbar, MSB (last row) first; unused rows are driven 0
        g_of = p.row_group[x].tolist()
        r_of = p.row_index[x].tolist()
        out.append(f"    assign row_x{x:03d} = {{")
        for i in range(plan.Rx - 1, -1, -1):
            sep = "," if i else " "
            if g_of[i] >= 0:
                src = g_of[i] * spec.rows + r_of[i]
                out.append(f"        xsh[{src * spec.input_bits} +: DAC_BITS]{sep}  // row {i}: group {g_of[i]}, matrix row {r_of[i]}")
            else:
                out.append(f"        {D}'d0{sep}  // row {i}: unused")
        out.append("    };")
        out.append(f"    xbc_crossbar #(.ROWS(XROWS), .COLS(XCOLS), .CELL_BITS({spec.cell_bits}), "
                   f".DAC_BITS(DAC_BITS), .ADC_BITS(ADC_BITS),")
        out.append(f"                   .ROWS_ACTIVE({plan.ra}), .CHUNK_W(CHUNK_W), "
                   f".MEMFILE(\"{plan.mem_files[x]}\"))")
        out.append(f"        u_x{x:03d} (.row_in(row_x{x:03d}), .chunk(chunk), .col_out(col_x{x:03d}));")
        out.append("")
    return "\n".join(out)


def rom_image(plan: LayerPlan, widths: dict[str, int]) -> str:
    """The splice table as a ``$readmemh`` image: one word per entry, fields from bit 0: crossbar
    (XSEL_W), column (JSEL_W), group (GRP_W), output column (COL_W), shift (SH_W), negative (1);
    each line ends with a comment naming the entry, its crossbar and tile."""
    xw, jw, gw, cw, sw, qw = (widths[k] for k in ("XSEL_W", "JSEL_W", "GRP_W", "COL_W", "SH_W", "CHUNK_W"))
    rom_w = xw + jw + gw + cw + sw + 1 + qw
    ndig = math.ceil(rom_w / 4)
    p = plan.spec.program
    head = (f"// splice table of xbc layer {plan.layer_id}: {plan.T} steps of {rom_w} bits (crossbar:{xw} "
            f"column:{jw} group:{gw} out_col:{cw} shift:{sw} neg:1 chunk:{qw}, from bit 0)\n")
    if plan.T == 0:   # no crossbar: one step naming a crossbar that does not exist (adc = 0)
        return head + f"{plan.X:0{ndig}x}  // no crossbar in this layer\n"
    q, x, j, g, c, sh, sg = (plan.steps[:, k] for k in range(7))
    word = (x | j << xw | g << (xw + jw) | c << (xw + jw + gw) | sh << (xw + jw + gw + cw)
            | (sg < 0).astype(np.int64) << (xw + jw + gw + cw + sw) | q << (rom_w - qw))
    tile = p.tile[x] if p.tile is not None else np.full(len(x), -1)
    slot = p.slot[x] if p.slot is not None else np.full(len(x), -1)
    lines = [f"{w:0{ndig}x}  // step {e}: chunk {qq}, crossbar {xx} (tile {t} slot {s_}) col {jj} -> "
             f"acc[{gg}][{cc}] {'-' if sgn < 0 else '+'}= adc << {shh}"
             for e, (w, qq, xx, t, s_, jj, gg, cc, shh, sgn) in enumerate(zip(
                 word.tolist(), q.tolist(), x.tolist(), tile.tolist(), slot.tolist(), j.tolist(), g.tolist(),
                 c.tolist(), sh.tolist(), sg.tolist()))]
    return head + "\n".join(lines) + "\n"


def _colmux(plan: LayerPlan, xw: int) -> str:
    return "\n".join(f"            {xw}'d{x}: adc = col_x{x:03d}[int'(rom_j)*ADC_BITS +: ADC_BITS];"
                     for x in range(plan.X))


def layer_widths(plan: LayerPlan) -> dict[str, int]:
    G, C = plan.spec.groups, plan.spec.cols
    return dict(SLICE_W=_bits(plan.S), CHUNK_W=_bits(plan.Q), ENT_W=_bits(max(1, plan.T)), SH_W=plan.sh_w,
                XSEL_W=_bits(plan.X + (plan.T == 0)), JSEL_W=_bits(plan.Cx), GRP_W=_bits(G), COL_W=_bits(C),
                DST_W=_bits(G * C))


def render_layer(plan: LayerPlan, source: str) -> str:
    spec = plan.spec
    G, R, C = spec.groups, spec.rows, spec.cols
    widths = layer_widths(plan)
    off = int(spec.program.offset)
    if off:
        off_decl = ("    // ---- offset encoding: every accumulator starts at -offset * sum_r xq[g][r]\n"
                    f"    localparam int OFFSET = {off};\n"
                    "    function automatic logic [ACC_W-1:0] group_sum(input logic [N_IN*IN_BITS-1:0] xv, input int g);\n"
                    "        logic [ACC_W-1:0] s;\n"
                    "        s = '0;\n"
                    "        for (int r = 0; r < R; r++) s = s + ACC_W'(xv[(g*R + r)*IN_BITS +: IN_BITS]);\n"
                    "        return s;\n"
                    "    endfunction\n"
                    "    logic [ACC_W-1:0] xsum [0:G-1];\n"
                    "    for (genvar g = 0; g < G; g++) begin : g_xsum\n"
                    "        assign xsum[g] = group_sum(x_in, g);\n"
                    "    end\n"
                    "    for (genvar o = 0; o < N_OUT; o++) begin : g_init\n"
                    "        assign acc_init[o*ACC_W +: ACC_W] = ACC_W'(0) - ACC_W'(OFFSET) * xsum[o / C];\n"
                    "    end\n")
    else:
        off_decl = "    assign acc_init = '0;\n"
    waiver = ""
    if plan.X == 0:
        waiver = ("    // Every weight of this layer is zero, so it has no crossbar: the splice and column-select\n"
                  "    // logic below is kept for a uniform interface but reads nothing (documented lint waiver).\n"
                  "    /* verilator lint_off UNUSEDSIGNAL */\n    /* verilator lint_off UNUSEDPARAM */\n")
    vals = dict(widths, MODULE=plan.module, WAIVER=waiver, LAYER_ID=spec.id, KIND=spec.kind, G=G, R=R, C=C, VERSION=__version__,
                SOURCE=source, X=plan.X, RX=plan.Rx, CX=plan.Cx, CELL_BITS=spec.cell_bits, IN_BITS=spec.input_bits,
                DAC_BITS=spec.dac_bits, S=plan.S, RA=plan.ra, Q=plan.Q, ADC_BITS=spec.adc_bits,
                ADC_MAX=(1 << spec.adc_bits) - 1, OFFSET=off, E=plan.E, CYCLES=plan.cycles,
                XBAR_LIST=_xbar_list(plan), XIN_MSB=G * R * spec.input_bits - 1, ACC_MSB=G * C * plan.acc_w - 1,
                ACC_W=plan.acc_w, OFFSET_DECL=off_decl, XBARS=_xbars(plan), ROM_FILE=plan.rom_file, T=plan.T,
                T_ROM=max(1, plan.T), ROM_W=sum(widths[k] for k in ('XSEL_W', 'JSEL_W', 'GRP_W', 'COL_W', 'SH_W',
                                                                     'CHUNK_W')) + 1,
                COLMUX=_colmux(plan, widths["XSEL_W"]), T_LAST=max(0, plan.T - 1),
                S_LAST=plan.S - 1)
    return _fill(_template("layer.sv.tmpl"), vals)


def render_testbench(plan: LayerPlan, n_vectors: int, expected_from: str) -> str:
    spec = plan.spec
    vals = dict(NAME=plan.name, MODULE=plan.module, LAYER_ID=spec.id, VERSION=__version__, NV=n_vectors,
                G=spec.groups, C=spec.cols, N_IN=spec.groups * spec.rows, N_OUT=spec.groups * spec.cols,
                IN_BITS=spec.input_bits, ACC_W=plan.acc_w, MAX_CYCLES=plan.cycles + 16, EXPECTED_FROM=expected_from)
    return _fill(_template("tb.sv.tmpl"), vals)


# ----------------------------------------------------------------------------------------
# bundle input
# ----------------------------------------------------------------------------------------

def load_layers(source) -> tuple[dict[str, LayerSpec], str, Any]:
    """(LayerSpecs, source name, Bundle or None) from a bundle path (validated first with
    :func:`xbc.bundle.validate_bundle`) or an in-memory ``{id: LayerSpec}``."""
    if isinstance(source, Mapping):
        return dict(source), "an in-memory program", None
    path = Path(source)
    if not path.exists():
        raise BundleError(f"bundle {str(path)!r} does not exist; write one with "
                          f"'xbc compile MODEL -o {path}'")
    from xbc.bundle import read_bundle, validate_bundle  # noqa: PLC0415
    validate_bundle(path)       # raises BundleError naming the first problem
    b = read_bundle(path)
    return dict(b.layers), path.name, b


def select_layers(layers: dict[str, LayerSpec], wanted: list[str] | None) -> dict[str, LayerSpec]:
    if not wanted:
        return layers
    unknown = [w for w in wanted if w not in layers]
    if unknown:
        raise OptionError(f"--layers: no crossbar layer {', '.join(map(repr, unknown))} in the bundle; "
                          f"known: {', '.join(layers)}")
    return {k: layers[k] for k in wanted}


# ----------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------

@dataclass
class EmitResult:
    out_dir: Path
    plans: list[LayerPlan]
    stimulus: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    manifest: dict[str, Any]
    log: str = ""


def emit_rtl(source, out_dir: str | os.PathLike, *, layers: list[str] | None = None, vectors: int = 8,
             seed: int = 0, stimulus: str | Mapping[str, np.ndarray] = "model", run: bool = False,
             lint: bool = False) -> EmitResult:
    """Write the RTL for ``source`` (bundle path or ``{id: LayerSpec}``) into ``out_dir``.

    ``stimulus``: ``"model"`` (real layer inputs from a simulator run of the bundle, see
    :func:`layer_vectors`; synthetic for an in-memory source), ``"random"``, or a mapping
    ``{layer id: xq [n, G, R]}``. Expected values always come from the simulator's bit-serial
    kernel, cross-checked with :mod:`.golden`. With ``run`` the testbenches are run (``make``) and
    their outputs compared with the expected values again in Python; with ``lint`` Verilator lints
    every datapath. Everything is generated in a temporary sibling directory first and then moved
    into place, so a failure while generating never leaves a half-written tree.
    """
    if vectors < 1:
        raise OptionError(f"--vectors {vectors}: need at least 1 input vector per layer")
    if isinstance(stimulus, str) and stimulus not in STIMULI:
        raise OptionError(f"--stimulus {stimulus!r}: choose one of {', '.join(STIMULI)}")
    specs, source_name, bundle = load_layers(source)
    specs = select_layers(specs, layers)
    if not specs:
        raise BundleError("the bundle has no crossbar layers: nothing to emit")
    if run:
        require_tools("iverilog", "vvp", "make")
    if lint:
        require_tools("verilator", "make")
    names = sv_names(list(specs))
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"-o {out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "rtl_manifest.json").exists():
        raise OptionError(f"-o {out_dir}: the directory is not empty and is not an earlier emit-rtl output "
                          f"(no rtl_manifest.json); choose a new or empty directory")
    recorded = {}
    if stimulus == "model" and bundle is not None:
        recorded = model_stimulus(bundle, list(specs), max(0, vectors - 1), seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for sub in ("rtl", "mem", "tb", "out", "log", "build"):
            (tmp / sub).mkdir()
        (tmp / "rtl" / "xbc_crossbar.sv").write_text(_template("xbc_crossbar.sv"))
        plans, stim, expect = [], {}, {}
        files = ["rtl/xbc_crossbar.sv"]
        manifest_layers = []
        for lid, spec in specs.items():
            name = names[lid]
            plan = plan_layer(spec, name)
            lines = cells_hex_lines(spec.program.cells, spec.cell_bits) if plan.X else np.zeros((0, 0), str)
            for x in range(plan.X):
                rel = f"mem/{name}_x{x:03d}.memh"
                (tmp / rel).write_text("\n".join(lines[x].tolist()) + "\n")
                plan.mem_files.append(rel)
            plan.rom_file = f"mem/{name}_splice.memh"
            (tmp / plan.rom_file).write_text(rom_image(plan, layer_widths(plan)))
            if isinstance(stimulus, Mapping):
                if lid not in stimulus:
                    raise OptionError(f"stimulus: no input vectors for layer {lid}")
                xq = np.asarray(stimulus[lid], dtype=np.int64).reshape(-1, spec.groups, spec.rows)
                if xq.size == 0 or xq.min() < 0 or xq.max() >= (1 << spec.input_bits):
                    raise OptionError(f"stimulus for layer {lid}: values must lie in [0, 2**{spec.input_bits})")
                acc, desc = expected_acc(spec, xq), "given by the caller"
            else:
                xq, acc, desc = layer_vectors(spec, stimulus, vectors, seed, recorded.get(lid))
            stim[lid], expect[lid] = xq, acc
            (tmp / f"tb/{name}_x.memh").write_text(values_hex(xq, spec.input_bits))
            (tmp / f"tb/{name}_acc.memh").write_text(values_hex(acc, plan.acc_w))
            (tmp / f"rtl/{plan.module}.sv").write_text(render_layer(plan, source_name))
            (tmp / f"tb/tb_{name}.sv").write_text(render_testbench(plan, xq.shape[0], SIM_SOURCE))
            files += [f"rtl/{plan.module}.sv", f"tb/tb_{name}.sv"]
            p = spec.program
            manifest_layers.append({
                "id": lid, "name": name, "module": plan.module, "testbench": f"tb_{name}",
                "kind": spec.kind, "groups": spec.groups, "rows": spec.rows, "cols": spec.cols,
                "input_bits": spec.input_bits, "dac_bits": spec.dac_bits, "adc_bits": spec.adc_bits,
                "cell_bits": spec.cell_bits, "rows_active": plan.ra, "offset": int(p.offset),
                "acc_width": plan.acc_w, "vectors": int(xq.shape[0]), "splice_entries": plan.E,
                "schedule_steps": plan.T,
                "cycles_per_vector": plan.cycles, "crossbar_rows": plan.Rx, "crossbar_cols": plan.Cx,
                "crossbars": [{"index": x, "memory": plan.mem_files[x],
                               "tile": int(p.tile[x]) if p.tile is not None else None,
                               "slot": int(p.slot[x]) if p.slot is not None else None} for x in range(plan.X)],
                "stimulus": f"tb/{name}_x.memh", "stimulus_from": desc, "expected": f"tb/{name}_acc.memh",
                "expected_from": SIM_SOURCE, "result": f"out/{name}_acc.memh",
                "adc_clipped_conversions": golden.clipped_conversions(spec, xq),
            })
            plans.append(plan)
        (tmp / "files.f").write_text("\n".join(files) + "\n")
        (tmp / "Makefile").write_text(_fill(_template("Makefile.tmpl"), dict(
            VERSION=__version__, SOURCE=source_name, LAYERS=" ".join(p.name for p in plans))))
        manifest = {"schema": "xbc.rtl", "xbc_version": __version__, "source": source_name, "seed": int(seed),
                    "memory_image_format": "one line per physical row; column j in bits [j*cell_bits +: cell_bits]",
                    "layers": manifest_layers}
        (tmp / "rtl_manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():   # an earlier emit-rtl output: replace its contents, keep the directory
            for child in out_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            for child in tmp.iterdir():
                child.rename(out_dir / child.name)
            tmp.rmdir()
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    res = EmitResult(out_dir=out_dir, plans=plans, stimulus=stim, expected=expect, manifest=manifest)
    if lint:
        res.log += lint_rtl(out_dir)
    if run:
        res.log += run_rtl(out_dir)
        check_outputs(res)
    return res


# ----------------------------------------------------------------------------------------
# running the tools
# ----------------------------------------------------------------------------------------

_INSTALL = {"iverilog": "apt-get install iverilog", "vvp": "apt-get install iverilog",
            "verilator": "apt-get install verilator", "make": "apt-get install make"}


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        how = sorted({_INSTALL.get(t, f"install {t}") for t in missing})
        raise RTLToolError(f"{', '.join(missing)} not found on PATH: needed to run the generated RTL; "
                           f"install with '{' && '.join(how)}' (or emit without --run and run 'make' later)")


def run_rtl(out_dir: str | os.PathLike, target: str | None = None, timeout: float = 600.0) -> str:
    """``make [target]`` in ``out_dir`` (default: every testbench); returns the log, raises
    :class:`RTLMismatch` on a non-zero exit."""
    require_tools("iverilog", "vvp", "make")
    cmd = ["make", "--no-print-directory", "-C", str(out_dir)] + ([target] if target else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RTLToolError(f"the RTL simulation in {out_dir} did not finish within {timeout:.0f} s; emit fewer "
                           f"--vectors or --layers, or run 'make' there yourself") from None
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        fails = [ln for ln in log.splitlines() if "XBC FAIL" in ln or "XBC MISMATCH" in ln or "error" in ln.lower()]
        raise RTLMismatch(f"RTL simulation in {out_dir} failed (make exit {proc.returncode}): "
                          f"{' | '.join(fails[:6]) or log[-500:]}")
    return log


def lint_rtl(out_dir: str | os.PathLike, timeout: float = 600.0) -> str:
    """``make lint`` (Verilator ``--lint-only -Wall``); raises :class:`RTLLintError` on any warning."""
    require_tools("verilator", "make")
    try:
        proc = subprocess.run(["make", "--no-print-directory", "-C", str(out_dir), "lint"], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RTLToolError(f"verilator lint in {out_dir} did not finish within {timeout:.0f} s; "
                           f"run 'make lint' there yourself") from None
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 or "%Warning" in log or "%Error" in log:
        msgs = [ln for ln in log.splitlines() if ln.startswith("%")]
        raise RTLLintError(f"verilator lint of {out_dir} is not clean: {' | '.join(msgs[:6]) or log[-500:]}")
    return log


def read_outputs(out_dir: str | os.PathLike, manifest_layer: Mapping[str, Any]) -> np.ndarray:
    """What the RTL computed for one layer: ``acc[n, g, c]`` (int64) from ``out/<L>_acc.memh``."""
    m = manifest_layer
    path = Path(out_dir) / m["result"]
    if not path.exists():
        raise RTLMismatch(f"layer {m['id']}: {path} was not written; run 'make' in {out_dir} first")
    try:
        vals = parse_hex(path.read_text(), m["acc_width"])
    except ValueError:
        raise RTLMismatch(f"layer {m['id']}: {path} holds unknown (x/z) bits") from None
    want = m["vectors"] * m["groups"] * m["cols"]
    if vals.size != want:
        raise RTLMismatch(f"layer {m['id']}: {path} has {vals.size} values, expected {want}")
    return vals.reshape(m["vectors"], m["groups"], m["cols"])


def check_outputs(res: EmitResult) -> None:
    for m in res.manifest["layers"]:
        got = read_outputs(res.out_dir, m)
        want = res.expected[m["id"]]
        if not np.array_equal(got, want):
            raise RTLMismatch(f"layer {m['id']}: RTL and simulator differ in "
                              f"{int(np.count_nonzero(got != want))} of {want.size} outputs")
