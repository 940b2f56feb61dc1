"""estimate: events, energy, area and latency of one inference, from the program and the shapes.

Counts per crossbar layer (``P`` output positions = output elements / output channels, i.e.
batch x output pixels for a convolution, batch rows for Gemm/MatMul; ``D = ceil(input_bits /
dac_bits)`` DAC cycles per input, bit-serial when ``dac_bits = 1``; for crossbar ``x``:
``rows_x`` used rows, ``cols_x`` used columns, ``K_x`` row chunks = chunks of ``rows_active``
physical rows holding a used row, ``nnz_x`` programmed non-zero cells):

* crossbar activations ``= P * D * sum_x K_x`` (one activation reads one row chunk);
* ADC conversions ``= P * D * sum_x K_x * cols_x``, grouped by resolution: with ``adc-size``
  results and ``adc-mode=sized`` a column converts at ``min(col_adc_bits, target.adc_bits)``
  bits (bit-slice paper: ADCs sized per column; empty columns need none), else every used column
  at ``target.adc_bits``;
* DAC (row driver) activations ``= P * D * sum_x rows_x``;
* cell reads ``= P * D * sum_x nnz_x`` (an unprogrammed / zero cell conducts negligibly);
* digital ops: one shift-add per ADC conversion (the splice), per output element 3 ops
  (zero-point correction, requantization, bias), 2 per quantized input element, and with
  offset encoding the periphery's ``offset * sum_r x[r]`` (``G*R + G*C`` per position); every
  other (digital) ONNX node counts its output elements as ops (a rough, documented proxy).

Energy (pJ) ``= e_cell_pj * cell reads + e_dac_pj * DAC activations + sum_b e_adc_pj_8b *
2**(b-8) * conversions(b) + e_digital_op_pj * digital ops``. The ``2**(b-8)`` ADC scaling is the
usual CIM-paper model (energy of a SAR/flash converter roughly doubles per bit at these
resolutions, cf. ISAAC, Shafiee et al., ISCA 2016, Sec. 6, and Murmann's ADC survey); it is an
assumption, not a measurement. Area (mm^2) ``= crossbars (with placement replicas) *
area_xbar_mm2 + ADCs * area_adc_mm2_8b * 2**(adc_bits-8)`` with ADCs = used tiles x
``adcs_per_tile`` when ``place`` ran, else ``ceil(crossbars * adcs_per_tile /
crossbars_per_tile)``. Latency (ns): a layer takes ``P * D * max_x K_x * t_cycle_ns / copies``
(its crossbars work in parallel, placement replicas share the positions); ``latency_ns`` sums
the layers (no inter-layer pipelining), ``pipeline_interval_ns`` is the slowest layer (the
throughput bound of a layer-pipelined chip). Digital ops add energy but no latency (assumed
overlapped). The constants and their citations come from the target (``target.cost`` and
``target.sources``; see ``xbc targets NAME``), and are repeated in the result.

Result: ``graph.meta["estimate"]`` (plain JSON types) with ``totals``, ``energy_pj``,
``area_mm2``, ``latency_ns``, ``adc_conversions_by_bits``, ``layers`` and ``model`` (constants,
sources, assumptions); the pass stats hold the totals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from xbc.errors import PassError
from xbc.passmanager import Pass, PassResult, register


def _numel(v) -> int:
    if v is None or v.shape is None:
        return 0
    return int(np.prod(v.shape, dtype=np.int64))


def crossbar_profile(prog, rows_active: int) -> dict[str, np.ndarray]:
    """Per crossbar: used rows, used columns, row chunks with a used row, non-zero cells."""
    X, Rx, Cx = prog.cells.shape
    used_r = prog.row_group >= 0
    nch = -(-Rx // rows_active)
    padded = np.zeros((X, nch * rows_active), bool)
    padded[:, :Rx] = used_r
    chunks = padded.reshape(X, nch, rows_active).any(axis=2).sum(axis=1)
    nnz = np.count_nonzero(prog.cells.reshape(X, Rx * Cx), axis=1) if X else np.zeros(0, np.int64)
    return {"rows": used_r.sum(axis=1), "cols": (prog.col_group >= 0).sum(axis=1),
            "chunks": chunks, "nnz": nnz}


@register
@dataclass(frozen=True)
class Estimate(Pass):
    name: ClassVar[str] = "estimate"
    summary: ClassVar[str] = "per-inference events, energy, area and latency from target cost constants"
    adc_mode: Literal["sized", "fixed"] = "sized"   # sized: per-column ADC bits from adc-size

    def run(self, graph, ctx) -> PassResult:
        t = ctx.target
        cost = dict(t.cost)
        e_cell = cost.get("e_cell_pj", 0.0)
        e_dac = cost.get("e_dac_pj", 0.0)
        e_adc8 = cost.get("e_adc_pj_8b", 0.0)
        e_dig = cost.get("e_digital_op_pj", 0.0)
        t_cycle = cost.get("t_cycle_ns", 0.0)
        placement = graph.meta.get("placement") or {}
        replicas = (placement.get("duplication") or {}).get("replicas", {}) or {}
        layers = {}
        tot = {"crossbar_activations": 0, "adc_conversions": 0, "dac_activations": 0, "cell_reads": 0,
               "digital_ops": 0, "dac_cycles": 0, "crossbars": 0, "crossbars_with_replicas": 0, "macs": 0}
        adc_hist: dict[int, int] = {}
        energy = {"cells": 0.0, "dac": 0.0, "adc": 0.0, "digital": 0.0}
        lat_total = 0.0
        lat_max = 0.0
        for node in ctx.each_layer(graph):
            L = node.layer
            p = L.program
            if p is None:
                raise PassError(f"layer {L.id} ({node.name!r}) has no crossbar program; run 'slice-bits' "
                                f"(and optionally squeeze, adc-size, place) before 'estimate'")
            ib = L.quant.input_bits if L.quant is not None else t.input_bits
            D = math.ceil(ib / t.dac_bits)
            out = node.outputs[0]
            P = _numel(out) // max(1, L.out_channels)
            prof = crossbar_profile(p, t.rows_active)
            K = prof["chunks"].astype(np.int64)
            conv_per_col = P * D * K                                  # [X]
            used_c = p.col_group >= 0
            if self.adc_mode == "sized" and p.col_adc_bits is not None:
                bits = np.minimum(p.col_adc_bits, t.adc_bits)
            else:
                bits = np.where(used_c, t.adc_bits, 0)
            conv_cols = used_c & (bits > 0)
            hist = {}
            for b in np.unique(bits[conv_cols]).tolist():
                n = int((conv_per_col[:, None] * ((bits == b) & conv_cols)).sum())
                hist[int(b)] = n
                adc_hist[int(b)] = adc_hist.get(int(b), 0) + n
            n_conv = sum(hist.values())
            act = int(P * D * K.sum())
            dac = int(P * D * prof["rows"].sum())
            cells = int(P * D * prof["nnz"].sum())
            dig = n_conv + 3 * P * L.out_channels + 2 * _numel(node.inputs[0])
            if p.offset:
                dig += P * (L.groups * L.rows + L.groups * L.cols)
            copies = 1 + int(replicas.get(L.id, 0))
            lat = P * D * (int(K.max()) if K.size else 0) * t_cycle / copies
            e_adc = sum(e_adc8 * 2.0 ** (b - 8) * n for b, n in hist.items())
            e = {"cells": e_cell * cells, "dac": e_dac * dac, "adc": e_adc, "digital": e_dig * dig}
            for k in energy:
                energy[k] += e[k]
            lat_total += lat
            lat_max = max(lat_max, lat)
            X = p.n_crossbars
            layers[L.id] = {
                "positions": int(P), "dac_cycles": D, "crossbars": X, "copies": copies,
                "crossbar_activations": act, "adc_conversions": n_conv,
                "adc_conversions_by_bits": {str(b): n for b, n in sorted(hist.items())},
                "dac_activations": dac, "cell_reads": cells, "digital_ops": int(dig),
                "macs": int(P * L.groups * L.rows * L.cols),
                "energy_pj": round(sum(e.values()), 6), "latency_ns": round(lat, 6),
            }
            tot["crossbar_activations"] += act
            tot["adc_conversions"] += n_conv
            tot["dac_activations"] += dac
            tot["cell_reads"] += cells
            tot["digital_ops"] += int(dig)
            tot["dac_cycles"] += int(P * D)
            tot["crossbars"] += X
            tot["crossbars_with_replicas"] += X * copies
            tot["macs"] += int(P * L.groups * L.rows * L.cols)
        dig_nodes = sum(_numel(o) for n in graph.nodes if n.layer is None for o in n.outputs)
        tot["digital_ops"] += dig_nodes
        energy["digital"] += e_dig * dig_nodes
        tiles_used = placement.get("tiles_used")
        if tiles_used is not None:
            n_adc = int(tiles_used) * t.adcs_per_tile
        else:
            n_adc = math.ceil(tot["crossbars_with_replicas"] * t.adcs_per_tile / t.crossbars_per_tile)
        area = {"crossbars": tot["crossbars_with_replicas"] * cost.get("area_xbar_mm2", 0.0),
                "adcs": n_adc * cost.get("area_adc_mm2_8b", 0.0) * 2.0 ** (t.adc_bits - 8)}
        area["total"] = area["crossbars"] + area["adcs"]
        energy["total"] = sum(energy.values())
        rnd = lambda d: {k: round(float(v), 6) for k, v in d.items()}  # noqa: E731
        meta = {
            "totals": tot,
            "adcs": n_adc,
            "adc_conversions_by_bits": {str(b): n for b, n in sorted(adc_hist.items())},
            "energy_pj": rnd(energy),
            "energy_uj": round(energy["total"] * 1e-6, 9),
            "area_mm2": rnd(area),
            "latency_ns": round(lat_total, 6),
            "pipeline_interval_ns": round(lat_max, 6),
            "layers": layers,
            "model": {"adc_mode": self.adc_mode, "cost": cost, "sources": dict(t.sources),
                      "adc_energy_scaling": "2**(bits-8)", "digital_node_ops": "output elements",
                      "per": "one run of the model with its input shapes (batch included)"},
        }
        graph.meta["estimate"] = meta
        stats = dict(tot)
        stats.update({"energy_uj": meta["energy_uj"], "area_mm2": round(area["total"], 6),
                      "latency_ns": meta["latency_ns"], "adcs": n_adc})
        return PassResult(changed=True, stats=stats)
