"""ADC effects in the simulator: saturating ADCs, exactly as the clipping model predicts."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.graphs import tiny_cnn
from xbc import ortutil
from xbc.backends.sim.engine import CrossbarKernel
from xbc.backends.sim.runner import compare, simulate
from xbc.backends.sim.testing import make_spec
from xbc.bundle import read_bundle, write_bundle
from xbc.compiler import compile_model
from xbc.layer import to_matrix

# ----------------------------------------------------------------------------------------
# a hand-computed case
# ----------------------------------------------------------------------------------------
#
# Gemm, K = 6 inputs, N = 2 outputs, 3-bit weights in one 2-bit cell plane (split encoding),
# 2-bit inputs applied with a 1-bit DAC (2 cycles, LSB first), 3-bit ADC (saturates at 7).
#   column 0: w = [3, 3, 3, 3, 3, 3]   -> positive cells 3,3,3,3,3,3 (no negative column)
#   column 1: w = [1,-2, 3, 0, 1, 1]   -> positive cells 1,0,3,0,1,1 ; negative cells 0,2,0,0,0,0
# input row a: xq = [3, 3, 3, 3, 1, 2]  -> slice d0 = [1,1,1,1,1,0], slice d1 = [1,1,1,1,0,1]
# input row b: xq = [0, 0, 1, 1, 0, 0]  -> slice d0 = [0,0,1,1,0,0], slice d1 = 0
#
# rows_active = 6 (one chunk):
#   a, col 0+: d0 sum 15 -> 7 (clip), d1 sum 15 -> 7 (clip)      acc = 7 + 2*7 = 21   (ideal 45)
#   a, col 1+: d0 1+3+1 = 5, d1 1+3+1 = 5; col 1-: d0 2, d1 2    acc = (5+10) - (2+4) = 9
#   b, col 0+: d0 6; col 1+: d0 3; col 1-: 0                      acc = [6, 3]
#   conversions per row: 2 cycles x 1 chunk x 3 used columns = 6; clipped: 2 (row a, col 0+)
# rows_active = 3 (chunks rows 0-2 and 3-5; physical rows 6-7 are unused and form no chunk):
#   a, col 0+: d0 9->7 and 6, d1 9->7 and 6                       acc = 13 + 2*13 = 39
#   a, col 1: unchanged (no chunk sum exceeds 7)                  acc = 9
#   conversions per row: 2 x 2 x 3 = 12; clipped: 2

W_HAND = np.array([[3, 1], [3, -2], [3, 3], [3, 0], [3, 1], [3, 1]], np.float32)
X_HAND = np.array([[3, 3, 3, 3, 1, 2], [0, 0, 1, 1, 0, 0]], np.float32)


def hand_spec(rows_active, adc_bits=3):
    return make_spec("gemm", W_HAND, w_int=W_HAND.astype(np.int32), w_scale=np.ones(2), bias=np.array([0.5, -1.0]),
                     weight_bits=3, input_bits=2, cell_bits=2, dac_bits=1, adc_bits=adc_bits, rows=8, cols=8,
                     rows_active=rows_active, x_range=(0.0, 3.0), permute=False, share_groups=False)


@pytest.mark.parametrize("rows_active, acc_a0, conv_per_row", [(6, 21, 6), (3, 39, 12)])
def test_hand_computed_gemm_clipping(rows_active, acc_a0, conv_per_row):
    spec = hand_spec(rows_active)
    assert spec.x_scale == 1.0 and spec.x_zero_point == 0
    assert spec.program.n_crossbars == 1 and int((spec.program.col_sign != 0).sum()) == 3
    want = np.array([[acc_a0, 9], [6, 3]])
    for exhaustive in (False, True):
        run = CrossbarKernel(spec, mode="bit-serial", exhaustive=exhaustive).run(X_HAND, record=True)
        np.testing.assert_array_equal(run.acc, want)
        assert run.clipped == 2
        assert run.conversions == 2 * conv_per_row
        np.testing.assert_allclose(run.y, want + np.array([0.5, -1.0]), rtol=0, atol=1e-6)
    ideal = CrossbarKernel(spec, mode="ideal").run(X_HAND, record=True)
    np.testing.assert_array_equal(ideal.acc, [[45, 9], [6, 3]])
    assert ideal.clipped == 0
    # a 4-bit ADC (saturating at 15) holds every sum here: no clipping, ideal result
    wide = CrossbarKernel(hand_spec(rows_active, adc_bits=4), mode="bit-serial").run(X_HAND, record=True)
    np.testing.assert_array_equal(wide.acc, [[45, 9], [6, 3]])
    assert wide.clipped == 0


# ----------------------------------------------------------------------------------------
# the fast exact path against the literal per-cycle model, under heavy and light clipping
# ----------------------------------------------------------------------------------------

CONFIGS = [
    dict(cell_bits=1, dac_bits=1, input_bits=8, adc_bits=2, rows=32, cols=16, rows_active=32),
    dict(cell_bits=2, dac_bits=1, input_bits=8, adc_bits=4, rows=64, cols=32, rows_active=64),
    dict(cell_bits=2, dac_bits=2, input_bits=7, adc_bits=5, rows=24, cols=24, rows_active=8),
    dict(cell_bits=2, dac_bits=1, input_bits=6, adc_bits=5, rows=40, cols=16, rows_active=40, encoding="offset"),
    dict(cell_bits=1, dac_bits=3, input_bits=8, adc_bits=3, rows=16, cols=16, rows_active=4),
    dict(cell_bits=3, dac_bits=1, input_bits=4, adc_bits=2, rows=16, cols=16, rows_active=16),
]


@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
@pytest.mark.parametrize("kind", ["conv", "gemm"])
def test_fast_bit_serial_equals_per_cycle_model(cfg, kind):
    c = CONFIGS[cfg]
    rng = np.random.default_rng(cfg)
    if kind == "conv":
        W = rng.laplace(size=(12, 8, 3, 3)).astype(np.float32)
        spec = make_spec("conv", W, attrs=dict(pads=[1, 1, 1, 1]), groups=2, x_range=(-1, 3), seed=cfg, **c)
        x = rng.uniform(-1, 3, size=(1, 16, 5, 5)).astype(np.float32)
    else:
        W = rng.laplace(size=(70, 9)).astype(np.float32)
        spec = make_spec("gemm", W, x_range=(-1, 3), seed=cfg, **c)
        x = rng.uniform(-1, 3, size=(4, 70)).astype(np.float32)
    fast = CrossbarKernel(spec, mode="bit-serial").run(x, record=True)
    slow = CrossbarKernel(spec, mode="bit-serial", exhaustive=True).run(x, record=True)
    ideal = CrossbarKernel(spec, mode="ideal").run(x, record=True)
    np.testing.assert_array_equal(fast.acc, slow.acc)
    assert fast.clipped == slow.clipped > 0
    assert fast.conversions == slow.conversions
    assert not np.array_equal(fast.acc, ideal.acc)
    # clipping only removes charge from each column set: |acc - ideal| is bounded by the clipped part
    M = to_matrix(spec.kind, spec.w_int.astype(np.int64), spec.groups, spec.attrs)
    assert np.abs(fast.acc - ideal.acc).max() <= (2 ** spec.input_bits - 1) * np.abs(M).sum(1).max()


def test_clipping_only_lowers_positive_and_negative_column_sets():
    """With split encoding and only a positive column set (all weights >= 0) clipping can only
    make the accumulator smaller than ideal."""
    rng = np.random.default_rng(5)
    W = np.abs(rng.laplace(size=(60, 6))).astype(np.float32)
    spec = make_spec("gemm", W, x_range=(0, 2), cell_bits=2, adc_bits=5, rows=64, cols=16)
    x = rng.uniform(0, 2, size=(8, 60)).astype(np.float32)
    clip = CrossbarKernel(spec, mode="bit-serial").run(x, record=True)
    ideal = CrossbarKernel(spec, mode="ideal").run(x, record=True)
    assert clip.clipped > 0
    assert np.all(clip.acc <= ideal.acc) and np.any(clip.acc < ideal.acc)


# ----------------------------------------------------------------------------------------
# whole bundles: --adc-bits at simulate, --set adc_bits at compile, the CLI report
# ----------------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def bitslice_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("adc")
    model = tiny_cnn(seed=12)
    onnx.save(model, d / "tiny.onnx")
    res = compile_model(str(d / "tiny.onnx"), "bitslice")
    write_bundle(res, d / "b")
    return d, model


def test_fewer_adc_bits_clip_more_and_lose_fidelity(bitslice_bundle):
    d, model = bitslice_bundle
    b = read_bundle(d / "b")
    feeds = [ortutil.random_inputs(model, seed=s) for s in range(3)]
    need = max(int(s.program.col_adc_bits.max()) for s in b.layers.values())
    rows = []
    for adc in (need, need - 1, need - 2, need - 3, need - 4):
        c = compare(b, feeds, model=model, adc_bits=adc, mode="bit-serial")
        rows.append((adc, c.sim.clipped, c.sim.clipped_fraction, c.sqnr_db))
    ideal = compare(b, feeds, model=model, mode="ideal")
    assert rows[0][1] == 0 and rows[0][3] == pytest.approx(ideal.sqnr_db, abs=1e-9)
    clipped = [r[1] for r in rows]
    sqnr = [r[3] for r in rows]
    assert all(a <= b_ for a, b_ in zip(clipped, clipped[1:])), rows
    assert clipped[-1] > 0 and all(a >= b_ - 0.05 for a, b_ in zip(sqnr, sqnr[1:])), rows
    assert sqnr[-1] < sqnr[0] - 3, rows


def test_compile_time_adc_bits_equals_simulate_override(bitslice_bundle, tmp_path):
    d, model = bitslice_bundle
    res = compile_model(str(d / "tiny.onnx"), "bitslice", overrides=["adc_bits=4"])
    write_bundle(res, tmp_path / "b4")
    feeds = [ortutil.random_inputs(model, seed=s) for s in range(2)]
    a = simulate(tmp_path / "b4", feeds)
    b = simulate(d / "b", feeds, adc_bits=4)
    assert a.clipped == b.clipped > 0 and a.conversions == b.conversions
    for k in a.outputs:
        np.testing.assert_array_equal(a.outputs[k], b.outputs[k])


def _cli(args, capsys):
    from xbc.cli import main

    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_reports_clipping(bitslice_bundle, capsys):
    d, model = bitslice_bundle
    code, out, _ = _cli(["simulate", str(d / "b"), "--random", "2", "--adc-bits", "4", "--json"], capsys)
    assert code == 0
    rep = json.loads(out)
    # the CLI's --random N draws N(0, 1) samples with seeds seed, seed+1, ...
    api = simulate(d / "b", [{"x": np.random.default_rng(s).standard_normal((1, 3, 16, 16)).astype(np.float32)}
                             for s in range(2)], adc_bits=4)
    assert rep["clipped"] == api.clipped > 0 and rep["conversions"] == api.conversions
    assert rep["clipped_fraction"] == pytest.approx(api.clipped / api.conversions)
    assert sum(layer["clipped"] for layer in rep["layers"]) == rep["clipped"]
    code, out, _ = _cli(["simulate", str(d / "b"), "--random", "2", "--adc-bits", "4", "--compare"], capsys)
    assert code == 0
    assert f"clipped: {api.clipped:,} ({100 * api.clipped / api.conversions:.4f}%)" in out
    assert "top-1 agreement:" in out and "SQNR" in out and "per layer" in out


@pytest.mark.parametrize("density", [0.02, 0.1, 0.3])
def test_fast_bit_serial_equals_per_cycle_model_sparse_inputs(density):
    """Post-ReLU-like inputs (mostly zero): few (chunk, cycle, position) triples can clip, so the
    fast path computes only those column sums; still equal to the literal model."""
    rng = np.random.default_rng(11)
    W = np.abs(rng.laplace(size=(16, 32, 3, 3))).astype(np.float32)
    spec = make_spec("conv", W, attrs=dict(pads=[1, 1, 1, 1]), x_range=(0, 4), cell_bits=2, adc_bits=5,
                     rows=128, cols=64, rows_active=128, seed=3)
    x = rng.uniform(0, 4, size=(2, 32, 6, 6)) * (rng.random((2, 32, 6, 6)) < density)
    fast = CrossbarKernel(spec, mode="bit-serial").run(x.astype(np.float32), record=True)
    slow = CrossbarKernel(spec, mode="bit-serial", exhaustive=True).run(x.astype(np.float32), record=True)
    np.testing.assert_array_equal(fast.acc, slow.acc)
    assert fast.clipped == slow.clipped
