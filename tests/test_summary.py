"""The compile summary (xbc.summary), ``xbc compile --json`` and the estimate pass."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest

from tests.graphs import all_crossbar_models, gemm_model, tiny_cnn
from xbc import cli, targets
from xbc.compiler import compile_model
from xbc.packing import isaac_crossbars
from xbc.summary import render_text, summarize


def run_cli(args, capsys) -> tuple[int, str]:
    rc = cli.main(args)
    return rc, capsys.readouterr().out


@pytest.mark.parametrize("tname", ["sme", "isaac", "bitslice", "mars"])
def test_compile_json_every_target(tmp_path, capsys, tname):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(seed=1), str(path))
    rc, out = run_cli(["compile", str(path), "-t", tname, "--json", "-q"], capsys)
    assert rc == 0
    s = json.loads(out)
    t = targets.load(tname)
    assert s["target"] == tname and s["pipeline"] == t.pipeline
    layers = s["layers"]
    assert [ly["op"] for ly in layers] == ["Conv", "Conv", "Conv", "Gemm"]
    assert [ly["matrix"] for ly in layers] == [[1, 27, 16], [16, 9, 1], [4, 4, 8], [1, 32, 10]]
    xb = s["crossbars"]
    keys = ("physical", "dense", "isaac", "sliced") + (("squeezed", "lower_bound") if "squeeze" in t.pipeline else ())
    for key in keys:
        assert xb[key] == sum(ly[key] for ly in layers), key
    if "squeeze" in t.pipeline:
        assert xb["squeezed"] == xb["physical"]
        assert all(ly["lower_bound"] <= ly["squeezed"] <= ly["sliced"] <= ly["dense"] for ly in layers)
    else:
        assert "squeezed" not in xb and xb["physical"] == xb["dense"]
    assert s["reduction"] == {"vs_dense": round(xb["dense"] / xb["physical"], 4),
                              "vs_isaac": round(xb["isaac"] / xb["physical"], 4)}
    assert xb["isaac"] == 6   # conv1 1, dw2 2 (14 groups per crossbar), pw3 2, fc 1
    assert s["adc"]["target_bits"] == t.adc_bits
    assert sum(s["adc"]["hist"].values()) == sum(sum(ly["adc_hist"].values()) for ly in layers)
    assert s["estimate"]["totals"]["crossbars"] == xb["physical"]
    assert s["placement"]["crossbars"] >= xb["physical"]
    assert "seconds" not in s["placement"]                      # wall clock left out
    assert {"slice-bits", "adc-size", "estimate"} <= set(s["passes"]) <= set(t.pipeline.split(","))
    # deterministic: the same command prints the same bytes
    rc2, out2 = run_cli(["compile", str(path), "-t", tname, "--json", "-q"], capsys)
    assert out2 == out


def test_text_output(tmp_path, capsys):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(seed=1), str(path))
    rc, out = run_cli(["compile", str(path), "-t", "sme", "-q"], capsys)
    assert rc == 0
    s = compile_model(str(path), "sme").stats
    for ly in s["layers"]:
        assert ly["id"] in out
    assert "total" in out and "paper table" in out
    row = [ln for ln in out.splitlines() if ln.startswith("| tiny.onnx |")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    xb = s["crossbars"]
    assert cells[:6] == ["tiny.onnx", "sme", "1,024", str(xb["isaac"]), str(xb["dense"]), str(xb["physical"])]
    assert cells[7] == f"{xb['isaac'] / xb['physical']:.2f}x"
    assert f"isaac {xb['isaac']}" in out


def test_pipeline_prefixes():
    m = tiny_cnn(seed=2)
    r = compile_model(m, "sme", pipeline="fold-batchnorm,quantize")
    s = summarize(r)
    json.dumps(s)
    assert "physical" not in s["crossbars"] and s["reduction"] == {}
    assert all("sliced" not in ly and "adc_hist" not in ly for ly in s["layers"])
    assert s["crossbars"]["dense"] == 10 and s["crossbars"]["isaac"] == 6
    text = render_text(r)
    assert "no program yet" in text and " - " in text
    r = compile_model(m, "sme", pipeline="fold-batchnorm,quantize,slice-bits")
    s = summarize(r)
    assert s["crossbars"]["physical"] == sum(n.layer.program.n_crossbars for n in r.graph.layers())
    assert "squeezed" not in s["crossbars"] and "estimate" not in s and "placement" not in s
    assert "crossbars:" in render_text(r)
    r = compile_model(m, "sme", pipeline="fold-batchnorm,quantize,slice-bits,squeeze,adc-size")
    s = summarize(r)
    assert s["crossbars"]["squeezed"] == s["crossbars"]["physical"]
    assert "adc" in s and "estimate" not in s
    assert json.loads(json.dumps(s)) == s


def test_layer_fields_match_the_graph():
    r = compile_model(all_crossbar_models()["grouped_conv"], "bitslice")
    s = summarize(r)
    (ly,) = s["layers"]
    node = next(r.graph.layers())
    L = node.layer
    assert ly["physical"] == L.program.n_crossbars and ly["isaac"] == isaac_crossbars(L)
    used = L.program.col_group >= 0
    assert ly["adc_bits_max"] == int(L.program.col_adc_bits[used].max())
    assert ly["weight_bits"] == 8 and ly["stats"]["crossbars_squeezed"] == ly["squeezed"]


def test_estimate_by_hand():
    """Gemm 40 -> 12 on a batch of 2, sme: recount every event from the program."""
    m = gemm_model(k=40, n=12, trans_b=False, batch=2, seed=3)
    r = compile_model(m, "sme", pipeline="fold-batchnorm,quantize,slice-bits,squeeze,adc-size,estimate")
    t = r.target
    node = next(r.graph.layers())
    p = node.layer.program
    P, D = 2, 8
    act = conv = dac = cells = 0
    by_bits: dict[int, int] = {}
    for x in range(p.n_crossbars):
        rows = np.flatnonzero(p.row_group[x] >= 0)
        K = len(set((rows // t.rows_active).tolist()))
        act += P * D * K
        dac += P * D * len(rows)
        cells += P * D * int(np.count_nonzero(p.cells[x]))
        for j in np.flatnonzero(p.col_group[x] >= 0):
            b = min(int(p.col_adc_bits[x, j]), t.adc_bits)
            if b:
                conv += P * D * K
                by_bits[b] = by_bits.get(b, 0) + P * D * K
    digital = conv + 3 * P * 12 + 2 * (2 * 40)
    e = r.graph.meta["estimate"]
    tot = e["totals"]
    assert (tot["crossbar_activations"], tot["adc_conversions"], tot["dac_activations"], tot["cell_reads"]) == \
        (act, conv, dac, cells)
    assert tot["digital_ops"] == digital and tot["macs"] == P * 40 * 12
    assert e["adc_conversions_by_bits"] == {str(k): v for k, v in sorted(by_bits.items())}
    c = t.cost
    energy = (c["e_cell_pj"] * cells + c["e_dac_pj"] * dac + c["e_digital_op_pj"] * digital
              + sum(c["e_adc_pj_8b"] * 2.0 ** (b - 8) * n for b, n in by_bits.items()))
    assert math.isclose(e["energy_pj"]["total"], energy, rel_tol=1e-9)
    assert math.isclose(e["energy_uj"], energy * 1e-6, rel_tol=1e-6)
    X = p.n_crossbars
    n_adc = math.ceil(X * t.adcs_per_tile / t.crossbars_per_tile)
    assert e["adcs"] == n_adc
    assert math.isclose(e["area_mm2"]["total"], X * c["area_xbar_mm2"] + n_adc * c["area_adc_mm2_8b"], rel_tol=1e-9)
    assert math.isclose(e["latency_ns"], P * D * 1 * c["t_cycle_ns"], rel_tol=1e-9)
    # a fixed-resolution ADC model converts every used column at the target's bits
    r2 = compile_model(m, "sme", pipeline="fold-batchnorm,quantize,slice-bits,squeeze,adc-size,estimate{adc-mode=fixed}")
    e2 = r2.graph.meta["estimate"]
    used_cols = int((p.col_group >= 0).sum())
    assert e2["adc_conversions_by_bits"] == {str(t.adc_bits): P * D * used_cols}
    assert e2["energy_pj"]["adc"] >= e["energy_pj"]["adc"]
