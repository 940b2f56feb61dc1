"""``xbc report``: one self-contained HTML page of a mapping bundle.

The page (inline CSS, images as ``data:image/png;base64`` URIs, no scripts, no external
resources) has these sections, each an ``<section id=...>``:

``summary``     target, model, pipeline, crossbar totals (physical / dense / ISAAC) and the
                reduction ratios, tiles used, ADC bits (target vs needed), placement status.
``layers``      one row per crossbar layer with its color (the same in every figure).
``crossbars``   per layer, crossbars after each step: ISAAC baseline, dense (no sparsity), sliced
                (dense layout, crossbars with a non-zero cell), physical (in the bundle, = squeezed
                when squeeze ran), with squeeze's lower bound as a tick. Physical counts come from
                the bundle's layers, the others from ``stats`` (:mod:`xbc.summary`).
``bits``        per layer and bit plane (``plane = shift // cell_bits``) and sign, the fraction
                of non-zero cells: ``density[l, p, s] = #{cells != 0 in columns of plane p, sign s}
                / (G * R * C)``; each weight has at most one digit per plane and sign, so this is
                the fraction of the layer's weights with a non-zero digit there (1.0 = dense).
                The last row pools every layer (weighted by weights).
``occupancy``   the cells of one layer's first ``max_crossbars`` physical crossbars, one image
                each, colored by bit plane (see :func:`xbc.plots.crossbar_image`).
``tiles``       the placement on the tile mesh (tile ``t`` at row ``t // mesh_cols``, column
                ``t % mesh_cols``), bands colored by layer, utilization = crossbars / capacity.
``adc``         columns per needed ADC resolution (from ``col_adc_bits`` histograms), and the
                per-layer maximum, against the target's ``adc_bits``.
``sqnr``        with ``--sim``: per-layer SQNR of the simulated model against the float model.
``details``     the bundle's ``stats``, ``placement`` and ``target`` as JSON.

Facts a bundle does not carry (no ``adc-size`` or ``place`` in the pipeline, per-layer step
counts missing from ``stats``) get a panel saying "not in this bundle" and why, never a silent gap.

Simulation results (``--sim FILE``): the output of ``xbc simulate BUNDLE --compare --json``
(per-layer SQNR in ``compare.layers``), or a plain ``{"layers": {ID: {"sqnr_db": x, ...}},
"output": {"sqnr_db": x, "top1": f}}``; see docs/report.md.

Determinism: the page depends only on the bundle, the options and the simulation file: fixed
matplotlib style, PNGs without timestamps, sorted JSON, no clock; same inputs, same bytes.
"""

from __future__ import annotations

import html
import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .errors import BundleError, OptionError

DEFAULT_MAX_CROSSBARS = 16
SECTIONS = ("summary", "layers", "crossbars", "bits", "occupancy", "tiles", "adc", "sqnr", "details")


# ========================================================================================
# facts from the bundle (pure functions; the tests check them)
# ========================================================================================

def _pick(d: Any, names: tuple[str, ...]) -> Any:
    """First of ``names`` present in ``d`` (or in ``d["crossbars"]`` when that is a dict)."""
    if not isinstance(d, dict):
        return None
    for src in (d, d.get("crossbars") if isinstance(d.get("crossbars"), dict) else {}):
        for n in names:
            v = src.get(n)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return v
    return None


STEP_KEYS = {
    "isaac": ("isaac", "crossbars_isaac"),
    "dense": ("dense", "crossbars_dense"),
    "sliced": ("sliced", "crossbars_sliced"),
    "squeezed": ("squeezed", "crossbars_squeezed"),
    "lower_bound": ("lower_bound",),
}


def _stats_layers(stats: dict[str, Any]) -> dict[str, Any]:
    sl = stats.get("layers") if isinstance(stats, dict) else None
    if isinstance(sl, list):
        return {d.get("id"): d for d in sl if isinstance(d, dict)}
    return sl if isinstance(sl, dict) else {}


def step_counts(mapping: dict[str, Any]) -> dict[str, list[int | None]]:
    """Per step, crossbars per layer (graph order); ``None`` where the bundle has no count.
    ``physical`` is counted from the bundle's layers, the others come from ``stats``."""
    ids = [e["id"] for e in mapping["layers"]]
    sl = _stats_layers(mapping.get("stats") or {})
    out: dict[str, list[int | None]] = {}
    for step, keys in STEP_KEYS.items():
        v = [_pick(sl.get(i), keys) for i in ids]
        out[step] = [None if x is None else int(x) for x in v]
    out["physical"] = [len(e["crossbars"]) for e in mapping["layers"]]
    return out


def totals(mapping: dict[str, Any]) -> dict[str, Any]:
    """Crossbar totals: ``physical`` (bundle), ``dense``/``isaac``/``sliced`` (stats, else the sum
    of complete per-layer stats, else None) and where each came from."""
    stats = mapping.get("stats") or {}
    steps = step_counts(mapping)
    out: dict[str, Any] = {"physical": sum(steps["physical"]), "source": {"physical": "bundle layers"}}
    for step, keys in STEP_KEYS.items():
        v = _pick(stats, keys)
        if v is not None:
            out[step], out["source"][step] = int(v), "stats"
        elif steps[step] and all(x is not None for x in steps[step]):
            out[step], out["source"][step] = sum(steps[step]), "sum of per-layer stats"
        else:
            out[step] = None
    return out


def plane_labels(n_planes: int, signs: list[int]) -> tuple[list[tuple[int, int]], list[str]]:
    """Heatmap columns ``(plane, sign)``: for each sign present (+ first), planes MSB first."""
    cols, labels = [], []
    for s in signs:
        for p in range(n_planes - 1, -1, -1):
            cols.append((p, s))
            labels.append(f"{'+' if s > 0 else '−'}p{p}")
    return cols, labels


def bit_density(bundle) -> dict[str, Any]:
    """Non-zero cells per (layer, plane, sign) and the possible cells ``G*R*C`` per layer.

    Returns ``counts`` int64 ``[L, P, 2]`` (sign index 0 = +, 1 = -), ``possible`` int64 ``[L]``,
    ``n_planes`` and the signs present. Vectorized over each layer's whole cell array.
    """
    cb = int(bundle.target.get("cell_bits", 1)) or 1
    specs = list(bundle.layers.values())
    per: list[np.ndarray] = []
    P = 1
    for s in specs:
        p = s.program
        X = p.cells.shape[0]
        if X == 0:
            per.append(np.zeros((0, 2), np.int64))
            continue
        nz_col = np.count_nonzero(p.cells, axis=1)                              # [X, Cx]
        used = p.col_sign != 0
        plane = (p.col_shift // cb).astype(np.int64)[used]
        key = plane * 2 + (p.col_sign[used] < 0)
        c = np.bincount(key, weights=nz_col[used], minlength=2).astype(np.int64)
        c = np.concatenate([c, np.zeros((-len(c)) % 2, np.int64)]).reshape(-1, 2)
        per.append(c)
        P = max(P, c.shape[0])
    counts = np.zeros((len(specs), P, 2), np.int64)
    for i, c in enumerate(per):
        counts[i, : c.shape[0]] = c
    possible = np.array([s.groups * s.rows * s.cols for s in specs], np.int64)
    neg = any(bool(np.any(s.program.col_sign < 0)) for s in specs)
    return {"counts": counts, "possible": possible, "n_planes": P, "signs": [1, -1] if neg else [1]}


def tile_usage(mapping: dict[str, Any]) -> dict[str, Any] | None:
    """Per tile the crossbars of each layer (replicas included); None without placement."""
    tiles: dict[int, dict[int, int]] = {}
    replicas: dict[int, int] = {}
    any_xbar = False
    for li, e in enumerate(mapping["layers"]):
        for c in e["crossbars"]:
            any_xbar = True
            if c.get("tile") is None:
                return None
            tiles.setdefault(int(c["tile"]), {}).setdefault(li, 0)
            tiles[int(c["tile"])][li] += 1
        for r in e.get("replicas") or []:
            for t in r["tile"]:
                tiles.setdefault(int(t), {}).setdefault(li, 0)
                tiles[int(t)][li] += 1
                replicas[int(t)] = replicas.get(int(t), 0) + 1
    if not any_xbar:
        return None
    return {"tiles": {t: sorted(v.items()) for t, v in sorted(tiles.items())}, "replicas": replicas}


def adc_table(mapping: dict[str, Any]) -> dict[str, Any] | None:
    """ADC bits: bit values, columns per (layer, bits), per-layer max; None without adc-size."""
    hs = [e.get("adc_bits") for e in mapping["layers"]]
    if not hs or all(h is None for h in hs):
        return None
    bits = sorted({int(b) for h in hs if h for b in h.get("histogram", {})})
    H = np.zeros((len(hs), len(bits)), np.int64)
    for i, h in enumerate(hs):
        for b, n in (h or {}).get("histogram", {}).items():
            H[i, bits.index(int(b))] = int(n)
    mx = [None if not h or not h.get("columns") else int(h["max"]) for h in hs]
    return {"bits": np.array(bits, np.int64), "hist": H, "max": mx,
            "missing": [mapping["layers"][i]["id"] for i, h in enumerate(hs) if h is None]}


# ========================================================================================
# simulation results
# ========================================================================================

SIM_FORMAT_HELP = ("expected the JSON of 'xbc simulate BUNDLE --compare --json' or "
                   "{\"layers\": {LAYER_ID: {\"sqnr_db\": X}}, \"output\": {\"sqnr_db\": X}}")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return None if math.isnan(v) else float(v)


def load_sim(path: str | Path) -> dict[str, Any]:
    """Read a simulation result (module docstring) into ``{"layers": {id: {sqnr_db, cosine,
    clipped_fraction}}, "output": {...}, "samples", "format"}``."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as e:
        raise OptionError(f"--sim {path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise OptionError(f"--sim {path}: not a UTF-8 JSON file; {SIM_FORMAT_HELP}") from None
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise OptionError(f"--sim {path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                          f"{SIM_FORMAT_HELP}") from None
    if not isinstance(d, dict):
        raise OptionError(f"--sim {path}: {SIM_FORMAT_HELP}")
    layers: dict[str, dict[str, float | None]] = {}
    output: dict[str, Any] = {}
    if isinstance(d.get("compare"), dict) or (isinstance(d.get("layers"), list) and "conversions" in d):
        fmt = "xbc simulate --json"
        cmp = d.get("compare") or {}
        for lf in cmp.get("layers") or []:
            if isinstance(lf, dict) and isinstance(lf.get("layer_id"), str):
                layers[lf["layer_id"]] = {k: _num(lf.get(k)) for k in ("sqnr_db", "cosine", "clipped_fraction")}
        if cmp:
            output = {"sqnr_db": _num(cmp.get("sqnr_db")), "cosine": _num(cmp.get("cosine")),
                      "top1": _num(cmp.get("top1_agreement"))}
        for s in d.get("layers") or []:  # ADC clipping per layer, also without --compare
            if isinstance(s, dict) and isinstance(s.get("layer"), str):
                layers.setdefault(s["layer"], {"sqnr_db": None, "cosine": None, "clipped_fraction": None})
                if layers[s["layer"]].get("clipped_fraction") is None:
                    layers[s["layer"]]["clipped_fraction"] = _num(s.get("clipped_fraction"))
        samples = d.get("samples")
    elif isinstance(d.get("layers"), dict):
        fmt = "layers/output JSON"
        for k, v in d["layers"].items():
            if not isinstance(v, dict):
                raise OptionError(f"--sim {path}: layers[{k!r}] is not an object; {SIM_FORMAT_HELP}")
            layers[str(k)] = {n: _num(v.get(n)) for n in ("sqnr_db", "cosine", "clipped_fraction")}
        out = d.get("output") or {}
        if isinstance(out, dict):
            output = {k: _num(out.get(k)) for k in ("sqnr_db", "cosine", "top1")}
        samples = d.get("samples")
    else:
        raise OptionError(f"--sim {path}: no per-layer results found; {SIM_FORMAT_HELP}")
    return {"layers": layers, "output": output, "samples": samples if isinstance(samples, int) else None,
            "format": fmt, "path": p.name}


# ========================================================================================
# HTML
# ========================================================================================

CSS = """
body{font-family:"DejaVu Sans",Verdana,Arial,sans-serif;font-size:14px;color:#222;margin:0;background:#fafafa}
main{max-width:1140px;margin:0 auto;padding:18px 24px 60px;background:#fff}
h1{font-size:24px;margin:6px 0 2px}h2{font-size:19px;border-bottom:2px solid #e3e3e3;padding-bottom:4px;margin-top:34px}
.sub{color:#666;margin:0 0 12px}
.how{color:#555;font-size:13px;margin:4px 0 10px;max-width:980px}
img{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{padding:2px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0 4px}
.card{border:1px solid #e0e0e0;border-radius:6px;padding:8px 14px;min-width:150px;background:#fcfcfc}
.card .v{font-size:22px;font-weight:bold}.card .k{color:#666;font-size:12px}
.good{color:#1a7f37}.bad{color:#c62828}
.missing{border:2px dashed #d9a400;background:#fff8e1;border-radius:6px;padding:10px 14px;margin:8px 0;color:#5d4300}
.missing b{color:#8a5a00}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:6px;border:1px solid #0002}
.xbars{display:flex;flex-wrap:wrap;gap:10px}
.xbars figure{margin:0;border:1px solid #ddd;padding:4px;background:#fff}
.xbars img{image-rendering:pixelated;outline:1px solid #888}
.xbars figcaption{font-size:11px;color:#444;margin-top:3px;max-width:260px}
.legend{font-size:12px;margin:6px 0}.legend span.i{margin-right:14px;white-space:nowrap}
code{background:#f2f2f2;padding:1px 4px;border-radius:3px;font-size:12px;word-break:break-all}
pre{background:#f6f6f6;padding:10px;overflow-x:auto;font-size:11px;max-height:480px}
details summary{cursor:pointer;font-weight:bold;margin:8px 0}
"""


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _img(png: bytes, alt: str, cls: str = "") -> str:
    w, h = plots.png_size(png)
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} src="{plots.data_uri(png)}" width="{w}" height="{h}" alt="{_e(alt)}">'


def _missing(what: str, why: str) -> str:
    return f'<div class="missing"><b>Not in this bundle:</b> {_e(what)}. {_e(why)}</div>'


def _fmt(v: Any, spec: str = "{:,}") -> str:
    return "–" if v is None else spec.format(v)


def _ratio(a: int | None, b: int | None) -> str:
    return "–" if not a or not b else f"{a / b:.2f}×"


def _good(a: int | None, b: int | None) -> str:
    return "" if not a or not b else ("good" if a > b else ("bad" if a < b else ""))


def _card(k: str, v: str, cls: str = "") -> str:
    return f'<div class="card"><div class="v {cls}">{_e(v)}</div><div class="k">{_e(k)}</div></div>'


@dataclass
class _Ctx:
    bundle: Any
    mapping: dict[str, Any]
    ids: list[str]
    colors: list[str]
    notes: list[str] = field(default_factory=list)


def _section_summary(c: _Ctx, tot: dict[str, Any], adc: dict[str, Any] | None, tiles: dict | None) -> str:
    m = c.mapping
    t = m["target"]
    model = m.get("model") or {}
    pl = m.get("placement") or {}
    phys = tot["physical"]
    need = max((x for x in adc["max"] if x is not None), default=None) if adc else None
    over = int(adc["hist"][:, adc["bits"] > int(t["adc_bits"])].sum()) if adc else None
    cards = [_card("physical crossbars", f"{phys:,}"),
             _card("dense (no sparsity)", _fmt(tot["dense"])),
             _card("ISAAC baseline", _fmt(tot["isaac"])),
             _card("reduction vs dense (dense ÷ physical)", _ratio(tot["dense"], phys), _good(tot["dense"], phys)),
             _card("reduction vs ISAAC (ISAAC ÷ physical)", _ratio(tot["isaac"], phys), _good(tot["isaac"], phys)),
             _card("tiles used", "–" if tiles is None else f"{len(tiles['tiles']):,} / {t.get('tiles', '?')}"),
             _card("ADC bits needed / target", f"{_fmt(need)} / {t['adc_bits']}",
                   "bad" if need is not None and need > int(t["adc_bits"]) else "")]
    weights = sum(s.groups * s.rows * s.cols for s in c.bundle.layers.values())
    cells = sum(cb["programmed_cells"] for e in m["layers"] for cb in e["crossbars"])
    rx, cx = int(t["rows"]), int(t["cols"])
    rows = [
        ("target", f"{t.get('name', '?')}: {t.get('description', '')}"),
        ("crossbar", f"{rx}×{cx} cells, {t['cell_bits']}-bit cells, {t['weight_bits']}-bit weights "
                     f"({t.get('weight_encoding', '?')} encoding), {t['input_bits']}-bit inputs, "
                     f"{t['dac_bits']}-bit DAC, {t['adc_bits']}-bit ADC"),
        ("model", f"{model.get('path') or '(built in memory, no file name)'}"),
        ("model sha256", model.get("sha256", "?")),
        ("inputs", ", ".join(f"{k} {v}" for k, v in (model.get("inputs") or {}).items()) or "–"),
        ("pipeline", m.get("pipeline", "?")),
        ("written by", f"xbc {m.get('xbc_version', '?')}, schema {m.get('schema_version', '?')}"),
        ("crossbar layers", f"{len(c.ids)} layers, {weights:,} weights, {cells:,} programmed cells "
                            f"({100 * cells / max(1, phys * rx * cx):.2f}% of the physical crossbars' cells)"),
    ]
    for step in ("dense", "isaac", "sliced"):
        if tot[step] is not None:
            rows.append((f"{step} crossbars", f"{tot[step]:,} (from {tot['source'][step]})"))
    if over is not None:
        rows.append(("columns that need more ADC bits than the target has",
                     f"{over:,} of {int(adc['hist'].sum()):,}" + (" (the simulator models their clipping)" if over else "")))
    if pl:
        rows.append(("placement", f"{pl.get('method', '?')}, status {pl.get('status', '?')}, objective "
                                  f"{pl.get('objective', '?')}, bound {pl.get('bound', '?')}, gap {pl.get('gap', '?')}"))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v) if k != 'model sha256' else '<code>' + _e(v) + '</code>'}</td></tr>"
                   for k, v in rows)
    miss = []
    if tot["dense"] is None:
        miss.append(_missing("the dense crossbar count", "The bundle's stats do not record it (stats.crossbars.dense), so "
                             "the dense ratio cannot be shown; recompile with an xbc whose summary records it"))
    if tot["isaac"] is None:
        miss.append(_missing("the ISAAC baseline count", "The bundle's stats do not record it (stats.crossbars.isaac)"))
    name = model.get("path") or (model.get("sha256", "")[:12] + "…")
    return (f'<section id="summary"><h1>xbc report: {_e(name)} on {_e(t.get("name", "?"))}</h1>'
            f'<p class="sub">{len(c.ids)} crossbar layers · {phys:,} physical crossbars of {rx}×{cx}</p>'
            f'<div class="cards">{"".join(cards)}</div>{"".join(miss)}'
            f'<table>{body}</table></section>')


def _section_layers(c: _Ctx, steps: dict[str, list], adc: dict | None, tiles: dict | None) -> str:
    rows = []
    for i, e in enumerate(c.mapping["layers"]):
        q = e.get("quant") or {}
        tl = sorted({cb["tile"] for cb in e["crossbars"] if cb.get("tile") is not None})
        tl_s = "–" if not tl else (", ".join(map(str, tl)) if len(tl) <= 6 else f"{tl[0]}…{tl[-1]} ({len(tl)})")
        cells = sum(cb["programmed_cells"] for cb in e["crossbars"])
        mx = "–" if adc is None or adc["max"][i] is None else str(adc["max"][i])
        rows.append(
            f'<tr><td><span class="sw" style="background:{c.colors[i]}"></span>{_e(e["id"])}</td>'
            f'<td>{_e(e.get("op_type", e["kind"]))}</td><td class="n">{e["groups"]}×{e["rows"]}×{e["cols"]}</td>'
            f'<td class="n">{e["groups"] * e["rows"] * e["cols"]:,}</td>'
            f'<td class="n">w{q.get("weight_bits", "?")} a{q.get("input_bits", "?")}</td>'
            f'<td class="n">{_fmt(steps["dense"][i])}</td><td class="n">{len(e["crossbars"]):,}</td>'
            f'<td class="n">{cells:,}</td><td class="n">{mx}</td><td>{_e(tl_s)}</td></tr>')
    head = ('<tr><th>layer</th><th>op</th><th class="n">G×R×C</th><th class="n">weights</th><th class="n">bits</th>'
            '<th class="n">dense</th><th class="n">physical</th><th class="n">programmed cells</th>'
            '<th class="n">ADC bits (max)</th><th>tiles</th></tr>')
    return ('<section id="layers"><h2>Layers</h2><p class="how">Each crossbar layer in graph order; its color '
            'is the same in every figure. G×R×C is the matrix view (groups × rows = inputs per output × columns = '
            f'outputs per group).</p><table>{head}{"".join(rows)}</table></section>')


def _section_crossbars(c: _Ctx, steps: dict[str, list]) -> str:
    head = '<section id="crossbars"><h2>Crossbars per layer and sparsity step</h2>'
    how = ('<p class="how">Bars per layer: <b>ISAAC</b> = the dense ISAAC-style baseline (16-bit offset weights, '
           '2-bit cells); <b>dense</b> = this target without sparsity passes; <b>sliced</b> = crossbars of the '
           'dense layout that still hold a non-zero cell after bit orchestration / reorder / pruning; '
           '<b>physical</b> = crossbars in this bundle (after squeeze when the pipeline has it; the black tick is '
           'the packer\'s lower bound). Shorter is better; the x axis turns logarithmic when the counts span more '
           'than 30×.</p>')
    if not c.ids:
        return head + _missing("crossbar layers", "The model has no crossbar layer") + "</section>"
    squeezed = all(v is not None for v in steps["squeezed"])
    labels = {"isaac": "ISAAC baseline", "dense": "dense (no sparsity)", "sliced": "sliced (non-empty)",
              "physical": "squeezed = physical (in bundle)" if squeezed else "physical (in bundle)"}
    have = [(k, labels[k], steps[k]) for k in ("isaac", "dense", "sliced", "physical")
            if any(v is not None for v in steps[k])]
    lacking = [labels[k] for k in ("isaac", "dense", "sliced") if all(v is None for v in steps[k])]
    partial = [labels[k] for k in ("isaac", "dense", "sliced")
               if any(v is None for v in steps[k]) and not all(v is None for v in steps[k])]
    out = head + how
    if lacking:
        out += _missing("per-layer counts for " + ", ".join(lacking),
                        "The bundle's stats.layers has no such counts (they come from the slice-bits pass and "
                        "xbc's compile summary); the chart shows the steps the bundle has")
    if partial:
        out += f'<p class="how">Some layers have no count for: {_e(", ".join(partial))} (bars left out).</p>'
    mism = [i for i, (q, p) in enumerate(zip(steps["squeezed"], steps["physical"])) if q is not None and q != p]
    if mism:
        out += (f'<p class="how bad">stats says squeeze made a different count than the bundle holds for: '
                f'{_e(", ".join(c.ids[i] for i in mism))} (a pass after squeeze changed the program).</p>')
    bound = steps["lower_bound"] if any(v is not None for v in steps["lower_bound"]) else None
    png = plots.crossbar_steps(c.ids, c.colors, have, bound=bound)
    return out + _img(png, "crossbars per layer and step") + "</section>"


def _section_bits(c: _Ctx, dens: dict[str, Any]) -> str:
    head = '<section id="bits"><h2>Non-zero bits per plane</h2>'
    if not c.ids:
        return head + _missing("crossbar layers", "The model has no crossbar layer") + "</section>"
    cb = int(c.mapping["target"].get("cell_bits", 1))
    how = ('<p class="how">Each weight is stored as digits of <code>cell_bits = '
           f'{cb}</code> bits; plane <i>p</i> is worth 2<sup>{cb}·p</sup>. A cell reads the percentage of the '
           "layer's weights whose digit in that plane (and sign column) is non-zero: dark columns are planes "
           'that hold almost nothing and that squeeze can remove; <b>all layers</b> pools every layer by '
           'weights. The sum over a row times the weights equals the layer\'s programmed cells.</p>')
    if int(c.mapping["target"].get("weight_bits", 0)) and c.mapping["target"].get("weight_encoding") == "offset":
        how += ('<p class="how">Offset encoding: cells store <i>w</i> + 2<sup>weight_bits−1</sup>, so the top '
                'plane is non-zero for every non-negative weight; the periphery subtracts the offset.</p>')
    cols, labels = plane_labels(dens["n_planes"], dens["signs"])
    counts, possible = dens["counts"], dens["possible"]
    mat = np.array([[counts[i, p, 0 if s > 0 else 1] / max(1, possible[i]) for p, s in cols]
                    for i in range(len(c.ids))], float)
    tot = np.array([[counts[:, p, 0 if s > 0 else 1].sum() / max(1, possible.sum()) for p, s in cols]], float)
    split = dens["n_planes"] if len(dens["signs"]) == 2 else None
    png = plots.bits_heatmap(c.ids + ["all layers"], c.colors + ["#444444"], labels, np.vstack([mat, tot]), split)
    return head + how + _img(png, "non-zero bits per plane heatmap") + "</section>"


def _section_occupancy(c: _Ctx, layer_id: str | None, max_crossbars: int) -> str:
    head = '<section id="occupancy"><h2>Crossbar occupancy</h2>'
    if not c.ids:
        return head + _missing("crossbar layers", "The model has no crossbar layer") + "</section>"
    b = c.bundle
    if layer_id is None:
        layer_id = max(c.ids, key=lambda i: (b.layers[i].program.n_crossbars, -c.ids.index(i)))
        chosen = "the layer with the most crossbars; pick another with <code>--layer ID</code>"
    else:
        chosen = "chosen with <code>--layer</code>"
    spec = b.layers[layer_id]
    e = b.layer_entry(layer_id)
    p = spec.program
    X, Rx, Cx = p.cells.shape
    li = c.ids.index(layer_id)
    out = (head + f'<p class="how">Layer <span class="sw" style="background:{c.colors[li]}"></span><b>{_e(layer_id)}</b> '
           f'({chosen}): {X:,} physical crossbars of {Rx}×{Cx} cells, the first {min(X, max_crossbars)} shown. '
           'One pixel block per cell: colored = non-zero cell, color = its column\'s bit plane (lighter = smaller '
           'multi-bit value); light gray = zero cell in a used row and column; white = unused row or column. '
           'The strip on top marks each column\'s sign (blue +, red −).</p>')
    if X == 0:
        return out + _missing(f"crossbars of layer {layer_id}", "Every weight of this layer is zero after the "
                              "lossy passes, so it has no crossbar") + "</section>"
    cbits = int(b.target.get("cell_bits", 1)) or 1
    n_pl = int(p.col_shift[p.col_sign != 0].max() // cbits) + 1 if np.any(p.col_sign != 0) else 1
    pcol = plots.plane_colors(n_pl)
    legend = "".join(f'<span class="i"><span class="sw" style="background:{pcol[k]}"></span>plane {k} '
                     f'(2<sup>{k * cbits}</sup>)</span>' for k in range(n_pl))
    scale = int(min(8, max(1, 256 // max(Rx, Cx))))
    figs = []
    fill = np.count_nonzero(p.cells.reshape(X, -1), axis=1) / float(Rx * Cx)
    for x in range(min(X, max_crossbars)):
        png = plots.crossbar_image(p.cells[x], p.row_group[x] >= 0, p.col_shift[x], p.col_sign[x], cbits, pcol, scale)
        cbe = e["crossbars"][x]
        where = "" if cbe.get("tile") is None else f" · tile {cbe['tile']} slot {cbe['slot']}"
        figs.append(f'<figure>{_img(png, f"crossbar {x} of {layer_id}")}<figcaption>crossbar {x}{where}<br>'
                    f'{cbe["programmed_cells"]:,} cells ({100 * fill[x]:.1f}%) · {cbe["rows_used"]} rows × '
                    f'{cbe["cols_used"]} cols used</figcaption></figure>')
    more = ""
    if X > max_crossbars:
        more = (f'<p class="how">{X - max_crossbars:,} more crossbars not shown (<code>--max-crossbars</code>). '
                f'All {X:,}: mean fill {100 * fill.mean():.2f}%, min {100 * fill.min():.2f}%, '
                f'max {100 * fill.max():.2f}%.</p>')
    return (out + f'<div class="legend">{legend}</div><div class="xbars">{"".join(figs)}</div>{more}</section>')


def _section_tiles(c: _Ctx, tiles: dict | None) -> str:
    head = '<section id="tiles"><h2>Tile map</h2>'
    t = c.mapping["target"]
    if tiles is None:
        return head + _missing("a placement", "The crossbars have no tile (the pipeline did not run 'place'; "
                               f"pipeline: {c.mapping.get('pipeline', '?')})") + "</section>"
    cap = int(t.get("crossbars_per_tile") or 1)
    n_tiles = int(t.get("tiles") or (max(tiles["tiles"]) + 1))
    mesh = int(t.get("mesh_cols") or max(1, math.ceil(math.sqrt(n_tiles))))
    how = ('<p class="how">The chip\'s tile mesh, ' f'{mesh} tiles wide (tile <i>t</i> at row <i>t</i> // {mesh}, '
           f'column <i>t</i> % {mesh}). A used tile fills from the left with one band per layer, as wide as the '
           'layer\'s share of the tile\'s ' f'{cap} crossbar slots; the number is the utilization. Consecutive '
           'layers on neighbouring tiles keep traffic short. Layer colors: see the Layers table.</p>')
    png = plots.tile_map(tiles["tiles"], tiles["replicas"], mesh, cap, n_tiles, c.ids, c.colors)
    util = [sum(n for _, n in v) / cap for v in tiles["tiles"].values()]
    line = (f'<p class="how">{len(util)} tiles used; utilization mean {100 * float(np.mean(util)):.1f}%, '
            f'min {100 * min(util):.1f}%, max {100 * max(util):.1f}%'
            + (f'; {sum(tiles["replicas"].values()):,} replica crossbars (weight duplication)' if tiles["replicas"] else "")
            + '.</p>')
    bars = plots.tile_bars(tiles["tiles"], cap, c.ids, c.colors)
    return head + how + _img(png, "tile map") + line + _img(bars, "crossbars per used tile") + "</section>"


def _section_adc(c: _Ctx, adc: dict | None) -> str:
    head = '<section id="adc"><h2>ADC resolution</h2>'
    if adc is None:
        return head + _missing("ADC bits per column", "The pipeline did not run 'adc-size' "
                               f"(pipeline: {c.mapping.get('pipeline', '?')})") + "</section>"
    avail = int(c.mapping["target"]["adc_bits"])
    how = ('<p class="how">For every used physical column, the ADC bits needed to convert its largest possible '
           f'sum (all inputs at their maximum for one {c.mapping["target"]["dac_bits"]}-bit DAC step) without '
           f'clipping. The dashed line is the target\'s ADC ({avail} bits): columns to its right would clip '
           '(hatched red) and the simulator models that; a lot of room to its left means a smaller ADC would do.</p>')
    out = head + how
    if adc["missing"]:
        out += _missing("ADC bits for " + ", ".join(adc["missing"]), "These layers have no col_adc_bits")
    out += _img(plots.adc_histogram(adc["hist"], adc["bits"], avail, c.ids, c.colors), "ADC bits histogram")
    out += _img(plots.adc_per_layer(c.ids, c.colors, adc["max"], avail), "ADC bits per layer")
    return out + "</section>"


def _section_sqnr(c: _Ctx, sim: dict | None) -> str:
    head = '<section id="sqnr"><h2>Simulated fidelity (SQNR)</h2>'
    if sim is None:
        return head + ('<div class="missing"><b>No simulation result given.</b> Run <code>xbc simulate BUNDLE '
                       '--compare --json &gt; sim.json</code> and pass <code>--sim sim.json</code> to see each '
                       "layer's SQNR against the float model here.</div></section>")
    L = sim["layers"]
    sq = [(L.get(i) or {}).get("sqnr_db") for i in c.ids]
    unknown = sorted(set(L) - set(c.ids))
    out = head + (f'<p class="how">From <code>{_e(sim["path"])}</code> ({_e(sim["format"])}'
                  + (f', {sim["samples"]} samples' if sim.get("samples") else "") + '). SQNR = 10·log10(signal power / '
                  'error power) of each crossbar layer\'s simulated output against the same tensor of the float '
                  'model in onnxruntime; errors accumulate along the network, so later layers are usually lower.</p>')
    o = sim.get("output") or {}
    cards = []
    if o.get("sqnr_db") is not None:
        cards.append(_card("output SQNR", f"{o['sqnr_db']:.1f} dB"))
    if o.get("cosine") is not None:
        cards.append(_card("output cosine", f"{o['cosine']:.5f}"))
    if o.get("top1") is not None:
        cards.append(_card("top-1 agreement", f"{100 * o['top1']:.1f}%"))
    if cards:
        out += f'<div class="cards">{"".join(cards)}</div>'
    if unknown:
        out += (f'<div class="missing"><b>Layers in the simulation result that this bundle does not have:</b> '
                f'{_e(", ".join(unknown))}. Was it simulated from another bundle?</div>')
    if all(v is None for v in sq):
        return out + ('<div class="missing"><b>The simulation result has no per-layer SQNR.</b> Run <code>xbc '
                      'simulate BUNDLE --compare --json</code> (with --compare).</div></section>')
    out += _img(plots.sqnr_bars(c.ids, c.colors, sq, o.get("sqnr_db")), "per-layer SQNR")
    rows = "".join(
        f'<tr><td><span class="sw" style="background:{c.colors[i]}"></span>{_e(lid)}</td>'
        f'<td class="n">{_fmt((L.get(lid) or {}).get("sqnr_db"), "{:.2f}")}</td>'
        f'<td class="n">{_fmt((L.get(lid) or {}).get("cosine"), "{:.6f}")}</td>'
        f'<td class="n">{_fmt(None if (L.get(lid) or {}).get("clipped_fraction") is None else 100 * L[lid]["clipped_fraction"], "{:.4f}")}</td></tr>'
        for i, lid in enumerate(c.ids))
    return (out + '<table><tr><th>layer</th><th class="n">SQNR dB</th><th class="n">cosine</th>'
            f'<th class="n">ADC clipped %</th></tr>{rows}</table></section>')


def _section_details(c: _Ctx) -> str:
    m = c.mapping

    def block(title: str, obj: Any) -> str:
        text = json.dumps(obj, indent=1, sort_keys=True, default=str)
        if len(text) > 200_000:
            text = text[:200_000] + "\n… (truncated)"
        return f"<details><summary>{_e(title)}</summary><pre>{_e(text)}</pre></details>"

    return ('<section id="details"><h2>Details</h2><p class="how">The bundle\'s own records, as JSON.</p>'
            + block("stats (the compile summary)", m.get("stats")) + block("placement report", m.get("placement"))
            + block("target", m.get("target")) + "</section>")


def build_report(bundle: Any, *, layer: str | None = None, sim: str | Path | dict | None = None,
                 max_crossbars: int = DEFAULT_MAX_CROSSBARS) -> str:
    """The report's HTML text for ``bundle`` (a path or a :class:`xbc.bundle.Bundle`)."""
    from .bundle import Bundle, read_bundle

    if max_crossbars < 1:
        raise OptionError(f"--max-crossbars {max_crossbars}: must be at least 1")
    b = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
    m = b.mapping
    ids = [e["id"] for e in m["layers"]]
    if layer is not None and layer not in b.layers:
        raise OptionError(f"--layer {layer!r}: no such layer in {b.path}; layers: {', '.join(ids) or '(none)'}")
    simd = load_sim(sim) if isinstance(sim, (str, Path)) else sim
    try:
        c = _Ctx(bundle=b, mapping=m, ids=ids, colors=plots.layer_colors(len(ids)))
        steps = step_counts(m)
        tot = totals(m)
        adc = adc_table(m)
        tiles = tile_usage(m)
        dens = bit_density(b)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise BundleError(f"bundle {b.path}: inconsistent content ({type(e).__name__}: {e}); run "
                          f"'xbc validate {b.path}'") from None
    parts = [_section_summary(c, tot, adc, tiles), _section_layers(c, steps, adc, tiles), _section_crossbars(c, steps),
             _section_bits(c, dens), _section_occupancy(c, layer, max_crossbars), _section_tiles(c, tiles),
             _section_adc(c, adc), _section_sqnr(c, simd), _section_details(c)]
    name = (m.get("model") or {}).get("path") or "model"
    nav = " · ".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>xbc report: {_e(name)} on {_e(m['target'].get('name', '?'))}</title>"
            f"<style>{CSS}</style></head><body><main><nav class=\"sub\">{nav}</nav>\n"
            + "\n".join(parts) + "\n</main></body></html>\n")


def write_report(bundle: Any, output: str | Path, **kw) -> Path:
    """Write :func:`build_report` to ``output`` atomically (temporary file, then rename)."""
    out = Path(output)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise OptionError(f"-o {output}: is a directory; give a file name such as {out / 'report.html'}")
    if not parent.is_dir():
        raise OptionError(f"-o {output}: directory {parent} does not exist")
    text = build_report(bundle, **kw)
    tmp = parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as f:  # mode from the umask, like any new file
            f.write(text)
        os.replace(tmp, out)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OptionError(f"-o {output}: cannot write ({e.strerror or e})") from None
    return out


def _make_report_cmd():
    import click  # noqa: PLC0415

    @click.command("report")
    @click.argument("bundle", type=click.Path())
    @click.option("-o", "--output", default="report.html", show_default=True, type=click.Path(),
                  help="The HTML file to write.")
    @click.option("--layer", default=None, metavar="ID", help="Layer whose crossbars the occupancy section shows "
                  "(default: the one with the most crossbars).")
    @click.option("--sim", default=None, type=click.Path(), metavar="FILE",
                  help="Simulation result JSON ('xbc simulate BUNDLE --compare --json > FILE') for per-layer SQNR.")
    @click.option("--max-crossbars", default=DEFAULT_MAX_CROSSBARS, show_default=True,
                  help="Crossbar images to show in the occupancy section.")
    def report_cmd(bundle, output, layer, sim, max_crossbars):
        """Write one self-contained HTML page (no external files, no scripts) with plots of BUNDLE:
        crossbars per sparsity step, non-zero bits per plane, crossbar occupancy, tile map, ADC bits,
        and per-layer SQNR with --sim.

        \b
        Example:
          xbc report out/ -o report.html
          xbc simulate out/ --random 8 --compare --json > sim.json
          xbc report out.xbc -o report.html --sim sim.json --layer L003_conv2
        """
        path = write_report(bundle, output, layer=layer, sim=sim, max_crossbars=max_crossbars)
        click.echo(f"report written to {path}")

    return report_cmd


report_cmd = _make_report_cmd()
