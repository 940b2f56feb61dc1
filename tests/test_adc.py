"""adc-size: largest possible column sums per rows_active chunk, ADC bits, histograms, clipping."""

from __future__ import annotations

import numpy as np

from tests.graphs import all_crossbar_models, tiny_cnn
from xbc import frontend, targets
from xbc.layer import empty_program
from xbc.passes.adc_size import bit_length, column_max_sum
from xbc.passmanager import PassContext, PassManager


def test_bit_length_matches_python():
    rng = np.random.default_rng(0)
    vals = np.concatenate(([0, 1, 2, 3, 4, 7, 8, 255, 256, (1 << 40) - 1, 1 << 40],
                           rng.integers(0, 1 << 45, 1000)))
    assert bit_length(vals).tolist() == [int(v).bit_length() for v in vals.tolist()]


def test_column_max_sum_by_hand():
    cells = np.zeros((2, 32, 4), np.uint8)
    cells[0, :20, 0] = 1          # 20 ones: chunks of 16 -> 16, 4
    cells[0, 16:32, 1] = 3        # 16 threes in the second chunk: 48
    cells[0, [0, 31], 2] = 1      # one per chunk: 1
    cells[1, :, 3] = 2            # 32 twos: 32 per chunk of 16
    ms = column_max_sum(cells, rows_active=16, dac_bits=1)
    assert ms.tolist() == [[16, 48, 1, 0], [0, 0, 0, 32]]
    assert bit_length(ms).tolist() == [[5, 6, 1, 0], [0, 0, 0, 6]]
    # 2-bit DACs multiply by 3; all rows at once sums the whole column; ragged last chunk
    assert column_max_sum(cells, 16, 2).tolist() == [[48, 144, 3, 0], [0, 0, 0, 96]]
    assert column_max_sum(cells, 32, 1).tolist() == [[20, 48, 2, 0], [0, 0, 0, 64]]
    assert column_max_sum(cells, 12, 1).tolist() == [[12, 24, 1, 0], [0, 0, 0, 24]]


def _reference_bits(prog, rows_active, dac_bits):
    X, Rx, Cx = prog.cells.shape
    out = np.zeros((X, Cx), np.int64)
    for x in range(X):
        for j in range(Cx):
            col = prog.cells[x, :, j].astype(np.int64)
            out[x, j] = max(int(col[k:k + rows_active].sum()) for k in range(0, Rx, rows_active))
    ms = out * ((1 << dac_bits) - 1)
    return ms, np.array([[int(v).bit_length() for v in row] for row in ms])


def test_pass_on_every_target():
    models = {k: all_crossbar_models()[k] for k in ("dense_conv", "depthwise_conv", "gemm_transB")}
    models["tiny_cnn"] = tiny_cnn()
    for tname in ("isaac", "sme", "bitslice", "mars"):
        t = targets.load(tname)
        for mname, m in models.items():
            g = frontend.load_model(m)
            ctx = PassContext(target=t)
            PassManager("quantize,slice-bits,squeeze,adc-size").run(g, ctx)
            hist_total: dict[int, int] = {}
            for node in g.layers():
                L = node.layer
                p = L.program
                ms, bits = _reference_bits(p, t.rows_active, t.dac_bits)
                assert np.array_equal(p.col_max_sum, ms) and p.col_max_sum.dtype == np.int64
                assert np.array_equal(p.col_adc_bits, bits) and p.col_adc_bits.dtype == np.int32
                used = p.col_group >= 0
                assert np.all(p.col_adc_bits[~used] == 0)
                # a column never needs more than its full chunk at the largest cell value
                cap = min(t.rows, t.rows_active) * ((1 << t.cell_bits) - 1) * ((1 << t.dac_bits) - 1)
                assert p.col_max_sum.max() <= cap
                vals, counts = np.unique(bits[used], return_counts=True)
                assert L.stats["adc_bits_hist"] == dict(zip(vals.tolist(), counts.tolist()))
                assert sum(L.stats["adc_bits_hist"].values()) == int(used.sum()) == L.stats["adc_columns"]
                assert L.stats["adc_clipping_columns"] == int((bits[used] > t.adc_bits).sum())
                assert L.stats["adc_bits_max"] == int(bits[used].max())
                for k, v in L.stats["adc_bits_hist"].items():
                    hist_total[k] = hist_total.get(k, 0) + v
            assert ctx.stats["adc-size"]["adc_bits_hist"] == dict(sorted(hist_total.items()))


def test_mars_rows_active_limits_the_adc():
    # mars turns on 16 word lines at once: with 1-bit cells and DACs no column needs > 5 bits,
    # while the same layer on a 128-row-at-once target needs more
    m = all_crossbar_models()["big_conv"]
    g, ctx = frontend.load_model(m), PassContext(target=targets.load("mars"))
    PassManager("quantize,slice-bits,adc-size").run(g, ctx)
    assert ctx.stats["adc-size"]["adc_bits_max"] <= 5
    g2, ctx2 = frontend.load_model(m), PassContext(target=targets.load("mars", ["rows_active=256"]))
    PassManager("quantize,slice-bits,adc-size").run(g2, ctx2)
    assert ctx2.stats["adc-size"]["adc_bits_max"] > 5


def test_clipping_is_counted():
    # isaac: 2-bit cells, 128 rows on, 8-bit ADC; a dense offset-encoded column can exceed 255
    t = targets.load("isaac")
    p = empty_program(t.rows, t.cols)
    p.cells = np.full((1, t.rows, t.cols), 3, np.uint8)
    p.cells[0, :, 5:] = 0
    p.cells[0, :85, 3] = 3          # 255: fits 8 bits
    p.cells[0, 85:, 3] = 0
    ms = column_max_sum(p.cells, t.rows_active, t.dac_bits)
    bits = bit_length(ms)
    assert ms[0, :5].tolist() == [384, 384, 384, 255, 384]
    assert bits[0, :6].tolist() == [9, 9, 9, 8, 9, 0]
    assert int((bits > t.adc_bits).sum()) == 4
