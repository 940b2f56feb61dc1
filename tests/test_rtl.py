"""RTL backend: generated SystemVerilog run in Icarus Verilog equals the simulator bit for bit.

Bundles come from real compiles of tests/graphs.tiny_cnn (dense conv with several crossbars,
depthwise conv, grouped 1x1 conv, Gemm) on small 16x16 crossbars. Every layer's testbench runs
in Icarus Verilog (``make``); the outputs it writes are compared here, in Python, with the
simulator's bit-serial kernel and with the golden model. Cases: the SME target (split encoding,
1-bit cells); ISAAC-style offset encoding with 2-bit cells, 2-bit DAC slices, two row chunks per
crossbar and 5-bit ADCs that clip; SME with 2-bit ADCs that clip; MARS SRAM macros (16 row
chunks of 256 rows). Verilator lints every datapath.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from graphs import tiny_cnn
from xbc.backends.rtl import emit, golden
from xbc.bundle import read_bundle, write_bundle
from xbc.cli import main
from xbc.compiler import compile_model
from xbc.layer import to_matrix

SMALL = ["rows=16", "cols=16", "rows_active=16"]
ISAAC_CLIP = ["rows=16", "cols=16", "rows_active=8", "adc_bits=5", "dac_bits=2", "weight_bits=8", "input_bits=8"]


def _bundle(tmp_path_factory, name, target, overrides):
    d = tmp_path_factory.mktemp(name)
    result = compile_model(tiny_cnn(seed=12), target, overrides=overrides)
    return write_bundle(result, d / "bundle")


@pytest.fixture(scope="module")
def sme(tmp_path_factory):
    bundle = _bundle(tmp_path_factory, "sme", "sme", SMALL)
    out = bundle.parent / "rtl"
    res = emit.emit_rtl(bundle, out, vectors=6, seed=3, run=True)
    return bundle, res


@pytest.fixture(scope="module")
def isaac(tmp_path_factory):
    bundle = _bundle(tmp_path_factory, "isaac", "isaac", ISAAC_CLIP)
    res = emit.emit_rtl(bundle, bundle.parent / "rtl", vectors=5, seed=1, run=True, lint=True)
    return bundle, res


def _check_rtl_equals_simulator(bundle, res):
    b = read_bundle(bundle)
    assert [m["id"] for m in res.manifest["layers"]] == [lid for lid in b.layers if lid in res.stimulus]
    for m in res.manifest["layers"]:
        spec = b.layers[m["id"]]
        got = emit.read_outputs(res.out_dir, m)
        xq = res.stimulus[m["id"]]
        assert got.shape == (m["vectors"], spec.groups, spec.cols)
        np.testing.assert_array_equal(got, emit.simulator_acc(spec, xq))
        np.testing.assert_array_equal(got, golden.spec_acc(spec, xq))
        assert re.search(rf"^XBC PASS {re.escape(m['id'])}: {m['vectors']} vectors", res.log, re.M)
    assert "XBC ALL PASS" in res.log


def test_sme_every_layer_bit_exact_in_icarus(sme):
    bundle, res = sme
    b = read_bundle(bundle)
    kinds = {lid: (s.kind, s.groups, s.cols, s.program.n_crossbars) for lid, s in b.layers.items()}
    # the model covers what the brief asks for
    assert any(k == "conv" and g == 1 and x > 1 for k, g, c, x in kinds.values())          # several crossbars
    assert any(k == "conv" and g > 1 and c == 1 for k, g, c, x in kinds.values())          # depthwise
    assert any(k == "conv" and g > 1 and c > 1 for k, g, c, x in kinds.values())           # grouped
    assert any(k == "gemm" for k, g, c, x in kinds.values())
    _check_rtl_equals_simulator(bundle, res)
    # stimulus: the all-maximum vector and real layer inputs recorded by the simulator
    conv1 = res.manifest["layers"][0]
    assert "5 real input vector(s)" in conv1["stimulus_from"]
    assert np.all(res.stimulus[conv1["id"]][0] == (1 << conv1["input_bits"]) - 1)


def test_offset_encoding_chunks_and_adc_clipping_bit_exact(isaac):
    bundle, res = isaac
    _check_rtl_equals_simulator(bundle, res)
    assert res.log.count("verilator --lint-only -Wall") == len(res.plans)     # emit_rtl(lint=True) ran
    b = read_bundle(bundle)
    differs = 0
    for m in res.manifest["layers"]:
        spec = b.layers[m["id"]]
        assert m["offset"] == 128 and m["cell_bits"] == 2 and m["dac_bits"] == 2
        assert m["crossbar_rows"] == 16 and m["rows_active"] == 8           # two row chunks
        assert m["adc_clipped_conversions"] > 0                               # the ADCs saturate
        ideal = golden.ideal_acc(spec, res.stimulus[m["id"]])
        differs += int(np.count_nonzero(ideal != res.expected[m["id"]]))
    assert differs > 0    # clipping changes the results, and the RTL still matches


def test_mars_sram_macros_skip_row_chunks_without_rows(tmp_path_factory):
    """256x64 SRAM macros with 16 word lines on at once: 16 row chunks, and the schedule visits a
    (chunk, column) pair only where the crossbar has a used row in the chunk."""
    bundle = _bundle(tmp_path_factory, "mars", "mars", [])
    fc = next(lid for lid, s in read_bundle(bundle).layers.items() if s.kind == "gemm")
    res = emit.emit_rtl(bundle, bundle.parent / "rtl", layers=[fc], vectors=3, run=True)
    plan = res.plans[0]
    assert (plan.Rx, plan.Q) == (256, 16) and 0 < plan.T < plan.E * plan.Q
    _check_rtl_equals_simulator(bundle, res)


def test_sme_adc_clipping_via_cli(tmp_path_factory, capsys):
    bundle = _bundle(tmp_path_factory, "sme_clip", "sme", ["rows=16", "cols=16", "rows_active=8", "adc_bits=2"])
    b = read_bundle(bundle)
    ids = [lid for lid, s in b.layers.items() if s.kind == "gemm" or s.groups == 1]
    out = bundle.parent / "rtl"
    code = main(["emit-rtl", str(bundle), "-o", str(out), "--layers", ",".join(ids), "--vectors", "4",
                 "--stimulus", "random", "--run"])
    text = capsys.readouterr()
    assert code == 0, text.err
    assert "all 2 testbench(es) pass" in text.out
    man = json.loads((out / "rtl_manifest.json").read_text())
    assert [m["id"] for m in man["layers"]] == ids
    for m in man["layers"]:
        assert m["adc_clipped_conversions"] > 0
        assert m["stimulus_from"].startswith("synthetic")
        xq = np.loadtxt(out / m["stimulus"], dtype=str, ndmin=1)
        xq = np.array([int(v, 16) for v in xq], np.int64).reshape(m["vectors"], m["groups"], m["rows"])
        np.testing.assert_array_equal(emit.read_outputs(out, m), emit.simulator_acc(b.layers[m["id"]], xq))


def test_verilator_lint_plain_wall_is_clean(sme):
    """Exactly `verilator --lint-only -Wall` (no extra options) on every SME datapath + the macro
    (the offset-encoding datapaths are linted by `make lint` in the isaac fixture)."""
    _, res = sme
    for m in res.manifest["layers"]:
        cmd = ["verilator", "--lint-only", "-Wall", "--top-module", m["module"], "rtl/xbc_crossbar.sv",
               f"rtl/{m['module']}.sv"]
        p = subprocess.run(cmd, cwd=res.out_dir, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "%Warning" not in p.stderr, p.stderr


def test_memory_images_hold_the_bundle_cells(sme):
    bundle, res = sme
    b = read_bundle(bundle)
    for m in res.manifest["layers"]:
        cells = b.layers[m["id"]].program.cells
        cb = m["cell_bits"]
        for x, xb in enumerate(m["crossbars"]):
            lines = (res.out_dir / xb["memory"]).read_text().split()
            assert len(lines) == m["crossbar_rows"]
            words = [int(t, 16) for t in lines]
            back = np.array([[(w >> (j * cb)) & ((1 << cb) - 1) for j in range(m["crossbar_cols"])] for w in words])
            np.testing.assert_array_equal(back, cells[x])
            text = (res.out_dir / f"rtl/{m['module']}.sv").read_text()
            assert f"crossbar {x} of layer {m['id']} (tile {xb['tile']} slot {xb['slot']})" in text


def test_a_wrong_cell_makes_make_fail(sme, tmp_path):
    """The exit status is reliable: one flipped cell bit -> FAIL line and non-zero exit."""
    _, res = sme
    d = tmp_path / "rtl"
    shutil.copytree(res.out_dir, d)
    m = res.manifest["layers"][-1]                       # the Gemm
    spec = res.plans[-1].spec
    p = spec.program
    x, i = np.argwhere(p.row_group >= 0)[0]
    j = int(np.flatnonzero(p.col_sign[x] != 0)[0])
    path = d / m["crossbars"][x]["memory"]
    lines = path.read_text().split()
    w = int(lines[i], 16) ^ (1 << (j * m["cell_bits"]))   # the all-maximum vector reads this cell
    lines[i] = format(w, f"0{len(lines[i])}x")
    path.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(["make", "-C", str(d), f"sim-{m['name']}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"XBC FAIL {m['id']}" in proc.stdout
    with pytest.raises(emit.RTLMismatch):
        emit.run_rtl(d, f"sim-{m['name']}")


def test_golden_model_is_the_integer_matmul_with_a_wide_adc(sme):
    bundle, res = sme
    b = read_bundle(bundle)
    for lid, spec in b.layers.items():
        xq = res.stimulus[lid]
        wide = golden.spec_acc(spec, xq, adc_bits=24)
        M = to_matrix(spec.kind, np.asarray(spec.w_int, np.int64), spec.groups, spec.attrs)
        np.testing.assert_array_equal(wide, np.einsum("ngr,grc->ngc", xq, M))
        np.testing.assert_array_equal(wide, golden.ideal_acc(spec, xq))


def test_emit_is_deterministic(sme, tmp_path):
    bundle, res = sme
    a = emit.emit_rtl(bundle, tmp_path / "a", vectors=6, seed=3).out_dir
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (res.out_dir / f).read_bytes() for f in files
                         if not str(f).startswith(("out/", "log/", "build/")))


def test_cli_errors(sme, tmp_path, capsys, monkeypatch):
    bundle, _ = sme
    code = main(["emit-rtl", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert code == 2 and "does not exist" in capsys.readouterr().err

    code = main(["emit-rtl", str(bundle), "-o", str(tmp_path / "o"), "--layers", "L999_nothing"])
    err = capsys.readouterr().err
    assert code == 2 and "L999_nothing" in err and "known:" in err

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    data = bytearray((bad / "arrays.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "arrays.bin").write_bytes(bytes(data))
    code = main(["emit-rtl", str(bad), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "invalid" in err and not (tmp_path / "o").exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    code = main(["emit-rtl", str(bundle), "-o", str(busy)])
    assert code == 2 and "not empty" in capsys.readouterr().err and (busy / "notes.txt").exists()

    empty = tmp_path / "empty_path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code = main(["emit-rtl", str(bundle), "-o", str(tmp_path / "o"), "--run"])
    err = capsys.readouterr().err
    assert code == 2 and "apt-get install iverilog" in err and not (tmp_path / "o").exists()
    code = main(["emit-rtl", str(bundle), "-o", str(tmp_path / "o"), "--lint"])
    assert code == 2 and "apt-get install verilator" in capsys.readouterr().err
