"""The compile summary: :func:`summarize` (JSON, what ``xbc compile --json`` prints and the bundle
stores) and :func:`render_text` (the tables ``xbc compile`` prints).

Crossbar counts per layer (absent when the pass that makes them did not run):

* ``isaac``: the dense ``isaac`` target's count for the layer (:func:`xbc.packing.isaac_crossbars`,
  always available: a function of the matrix shape);
* ``dense``: this target's dense mapping, sign-magnitude planes, no sparsity passes (slice-bits'
  ``crossbars_dense``; computed from the target when slice-bits did not run);
* ``sliced``: crossbars of slice-bits' dense layout holding at least one non-zero cell;
* ``squeezed`` and ``lower_bound``: after squeeze, with the packer's bound;
* ``physical``: crossbars of the layer's current program with at least one programmed cell
  (DESIGN.md's definition); ``allocated``: all crossbars of the program (what place, the bundle
  and the simulator use). They differ only without squeeze, where the dense layout may hold
  all-zero crossbars.

Reductions are ``dense / physical`` and ``isaac / physical``. Everything is plain JSON
(numpy values converted, dict keys strings) and deterministic: wall-clock entries (keys such as
``seconds``, ``elapsed``, ``timings``) are left out, the rest depends only on the inputs.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np

from .layer import n_planes
from .packing import dense_crossbars, isaac_crossbars, signs_of

_WALLCLOCK = re.compile(r"^(.*_)?(seconds|secs|elapsed|wall|wall_time|timings?)$")


def jsonable(x: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, keys as strings, wall-clock keys dropped,
    non-finite floats as None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items() if not _WALLCLOCK.match(str(k))}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def _dense_for_target(L, target) -> int:
    bits = L.quant.weight_bits if L.quant is not None else target.weight_bits
    P = n_planes(bits, target.cell_bits, target.weight_encoding)
    return dense_crossbars(L.groups, L.rows, L.cols, target, P, signs_of(target))


def _layer_summary(node, target) -> dict[str, Any]:
    L = node.layer
    st = L.stats
    d: dict[str, Any] = {
        "id": L.id, "name": node.name, "op": node.op_type, "kind": L.kind,
        "matrix": [L.groups, L.rows, L.cols], "weights": L.groups * L.rows * L.cols,
        "isaac": isaac_crossbars(L),
        "dense": int(st.get("crossbars_dense", _dense_for_target(L, target))),
    }
    if L.quant is not None:
        d["weight_bits"] = L.quant.weight_bits
        d["input_bits"] = L.quant.input_bits
    for key, name in (("crossbars_sliced", "sliced"), ("crossbars_squeezed", "squeezed"),
                      ("lower_bound", "lower_bound")):
        if key in st:
            d[name] = int(st[key])
    if L.program is not None:
        X = L.program.n_crossbars
        d["physical"] = int(np.count_nonzero(L.program.cells.reshape(X, -1).any(axis=1))) if X else 0
        d["allocated"] = X
    if "adc_bits_hist" in st:
        d["adc_bits_max"] = int(st.get("adc_bits_max", 0))
        d["adc_hist"] = {str(k): int(v) for k, v in sorted(st["adc_bits_hist"].items())}
        d["adc_clipping_columns"] = int(st.get("adc_clipping_columns", 0))
    d["stats"] = jsonable(st)
    return d


def _ratio(a: int | None, b: int | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 4)


def summarize(result) -> dict[str, Any]:
    """JSON summary of a :class:`xbc.compiler.CompileResult` (see module docstring)."""
    g, t, ctx = result.graph, result.target, result.ctx
    layers = [_layer_summary(n, t) for n in g.layers()]

    def total(key: str) -> int | None:
        vals = [ly[key] for ly in layers if key in ly]
        return int(sum(vals)) if vals and len(vals) == len(layers) else None

    xb: dict[str, Any] = {"dense": total("dense") or 0, "isaac": total("isaac") or 0}
    for key in ("physical", "allocated", "sliced", "squeezed", "lower_bound"):
        v = total(key)
        if v is not None:
            xb[key] = v
    red: dict[str, Any] = {}
    if "physical" in xb:
        red = {"vs_dense": _ratio(xb["dense"], xb["physical"]), "vs_isaac": _ratio(xb["isaac"], xb["physical"])}
    out: dict[str, Any] = {
        "target": t.name,
        "target_sha256": t.sha256,
        "pipeline": result.pipeline,
        "model": {"path": os.path.basename(result.model_path) if result.model_path else None,
                  "sha256": result.model_sha256, "inputs": jsonable(result.input_shapes)},
        "crossbars": xb,
        "reduction": red,
        "weights": int(sum(ly["weights"] for ly in layers)),
        "layers": layers,
        "passes": jsonable(ctx.stats),
        "warnings": [str(d) for d in ctx.diagnostics if d.level == "warning"],
    }
    if any("adc_hist" in ly for ly in layers):
        hist: dict[int, int] = {}
        for ly in layers:
            for k, v in ly.get("adc_hist", {}).items():
                hist[int(k)] = hist.get(int(k), 0) + v
        out["adc"] = {"target_bits": t.adc_bits, "hist": {str(k): v for k, v in sorted(hist.items())},
                      "max_bits": max((ly.get("adc_bits_max", 0) for ly in layers), default=0),
                      "clipping_columns": int(sum(ly.get("adc_clipping_columns", 0) for ly in layers))}
    if g.meta.get("estimate") is not None:
        out["estimate"] = jsonable({k: v for k, v in g.meta["estimate"].items() if k != "layers"})
    if g.meta.get("placement") is not None:
        out["placement"] = jsonable(g.meta["placement"])
    return out


# ----------------------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    return "-" if v is None else str(v)


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(c.rjust(w[i]) if i in right else c.ljust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return [fmt(header), fmt(["-" * x for x in w])] + [fmt(r) for r in rows]


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def render_text(result) -> str:
    """Per-layer table, totals with the isaac count and reductions, ADC, estimate, placement, and
    a one-row table to paste into a paper."""
    s = summarize(result)
    t = result.target
    lines = [f"xbc: {len(s['layers'])} crossbar layers, {s['weights']:,} weights; target {s['target']} "
             f"({t.rows}x{t.cols}, {t.cell_bits}-bit cells, {t.weight_encoding} encoding)",
             f"pipeline: {s['pipeline']}", ""]
    header = ["layer", "op", "matrix GxRxC", f"dense({s['target']})", "sliced", "squeezed", "bound",
              "isaac", "ADC bits max", "clip cols"]
    rows = []
    for ly in s["layers"]:
        G, R, C = ly["matrix"]
        rows.append([ly["id"], ly["op"], f"{G}x{R}x{C}", _fmt(ly["dense"]), _fmt(ly.get("sliced")),
                     _fmt(ly.get("squeezed")), _fmt(ly.get("lower_bound")), _fmt(ly["isaac"]),
                     _fmt(ly.get("adc_bits_max")), _fmt(ly.get("adc_clipping_columns"))])
    xb = s["crossbars"]
    rows.append(["total", "", "", _fmt(xb["dense"]), _fmt(xb.get("sliced")), _fmt(xb.get("squeezed")),
                 _fmt(xb.get("lower_bound")), _fmt(xb["isaac"]),
                 _fmt(s.get("adc", {}).get("max_bits")), _fmt(s.get("adc", {}).get("clipping_columns"))])
    lines += _table(header, rows, set(range(3, 10)))
    lines.append("")
    if "physical" in xb:
        red = s["reduction"]
        lb = f", lower bound {xb['lower_bound']}" if "lower_bound" in xb else ""
        lines.append(f"crossbars: {xb['physical']} physical ({t.rows}x{t.cols}); dense {xb['dense']} on this "
                     f"target ({_x(red.get('vs_dense'))} fewer), isaac {xb['isaac']} "
                     f"({_x(red.get('vs_isaac'))} fewer){lb}")
    else:
        lines.append(f"crossbars: no program yet (run slice-bits); dense {xb['dense']} on this target, "
                     f"isaac {xb['isaac']}")
    if "adc" in s:
        a = s["adc"]
        hist = ", ".join(f"{k}b:{v}" for k, v in a["hist"].items())
        lines.append(f"ADC bits needed per used column: {hist}; max {a['max_bits']} "
                     f"(target {a['target_bits']}); {a['clipping_columns']} columns clip")
    if "estimate" in s:
        e = s["estimate"]
        en = e["energy_pj"]
        lines.append(f"estimate per inference: energy {e['energy_uj']:.4g} uJ (cells {en['cells'] * 1e-6:.3g}, "
                     f"DAC {en['dac'] * 1e-6:.3g}, ADC {en['adc'] * 1e-6:.3g}, digital {en['digital'] * 1e-6:.3g}), "
                     f"area {e['area_mm2']['total']:.4g} mm^2, latency {e['latency_ns'] / 1e3:.4g} us "
                     f"(pipeline interval {e['pipeline_interval_ns'] / 1e3:.4g} us), "
                     f"{e['totals']['adc_conversions']:,} ADC conversions")
    placement = result.graph.meta.get("placement")
    if placement is not None:
        from .placement import render_placement  # noqa: PLC0415
        lines.append(render_placement(placement))
    lines.append("")
    model = s["model"]["path"] or "model"
    head = ["model", "target", "weights", "isaac", "dense", "physical", "bound", "vs isaac", "vs dense",
            "ADC max bits"]
    red = s["reduction"]
    row = [model, s["target"], f"{s['weights']:,}", str(xb["isaac"]), str(xb["dense"]),
           _fmt(xb.get("physical")), _fmt(xb.get("lower_bound")), _x(red.get("vs_isaac")),
           _x(red.get("vs_dense")), _fmt(s.get("adc", {}).get("max_bits"))]
    lines.append("paper table (markdown):")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
