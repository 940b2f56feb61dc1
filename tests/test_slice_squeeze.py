"""slice-bits and squeeze: digits, permutations, layouts, options, item variants, errors."""

from __future__ import annotations

import numpy as np
import pytest

from tests.graphs import all_crossbar_models, conv_model, depthwise_model, tiny_cnn
from xbc import frontend, targets
from xbc.errors import OptionError, PassError, XbcError
from xbc.layer import (Segment, digits_value, n_planes, rebuild_matrix, sign_magnitude_digits,
                       to_matrix)
from xbc.passes.slice_bits import layer_cells
from xbc.passes.squeeze import squeeze_layer
from xbc.passmanager import PassContext, PassManager, parse_pipeline


def compiled(model, tname, pipeline):
    t = targets.load(tname)
    g = frontend.load_model(model)
    ctx = PassContext(target=t)
    PassManager(pipeline).run(g, ctx)
    return g, t, ctx


def wmat(node):
    L = node.layer
    return to_matrix(L.kind, np.asarray(L.quant.w_int), L.groups, node.attrs).astype(np.int64)


def test_cells_are_sign_magnitude_digits_with_permutations():
    g, t, _ = compiled(conv_model(cin=32, cout=24, k=3, hw=4, seed=3), "sme", "quantize")
    node = next(g.layers())
    L = node.layer
    rng = np.random.default_rng(0)
    L.row_perm = np.stack([rng.permutation(L.rows) for _ in range(L.groups)]).astype(np.int32)
    L.col_perm = np.stack([rng.permutation(L.cols) for _ in range(L.groups)]).astype(np.int32)
    cells, P, S, off = layer_cells(L, node, t)
    M = wmat(node)
    D = sign_magnitude_digits(M, t.cell_bits, n_planes(L.quant.weight_bits, t.cell_bits, "split"))
    assert (P, S, off) == (D.shape[0], 2, 0)
    Dp = D[:, :, L.row_perm[0]][:, :, :, L.col_perm[0]]           # [P, 1, R, C] permuted
    want = np.stack((np.maximum(Dp, 0), np.maximum(-Dp, 0)), axis=1)  # [P, 2, 1, R, C]
    want = want.transpose(2, 3, 0, 1, 4).reshape(1, L.rows, P * 2 * L.cols)
    assert np.array_equal(cells, want.astype(np.uint8))
    # the pass honours both permutations and still conserves the weights
    PassManager("slice-bits").run(g, PassContext(target=t))
    p = L.program
    assert np.array_equal(rebuild_matrix(p, 1, L.rows, L.cols), M)
    assert np.array_equal(p.row_index[0], L.row_perm[0, :t.rows])
    assert np.array_equal(p.col_index[0], np.tile(L.col_perm[0], 6)[:t.cols])   # plane 0: + then -
    assert np.array_equal(p.col_sign[0, :24], np.ones(24)) and np.array_equal(p.col_sign[0, 24:48], -np.ones(24))
    assert np.array_equal(p.col_shift[0, :48], np.zeros(48)) and np.all(p.col_shift[0, 48:72] == 1)


def test_offset_encoding_digits():
    g, t, _ = compiled(conv_model(cin=8, cout=6, k=3, hw=4, seed=4), "isaac", "quantize,slice-bits")
    node = next(g.layers())
    L = node.layer
    p = L.program
    assert p.offset == 1 << 15 and L.stats["planes"] == 8 and L.stats["signs"] == 1
    assert np.all(p.col_sign[p.col_group >= 0] == 1)
    cells, P, S, off = layer_cells(L, node, t)
    v = wmat(node)[0] + off                           # [R, C]
    for q in range(P):
        assert np.array_equal(cells[0, :, q * L.cols:(q + 1) * L.cols], (v >> (2 * q)) & 3)
    assert np.array_equal(rebuild_matrix(p, 1, L.rows, L.cols), wmat(node))


def test_orchestrated_digits_are_used():
    g, t, _ = compiled(conv_model(cin=16, cout=16, k=3, hw=4, seed=5), "sme",
                       "quantize,orchestrate-bits,slice-bits")
    node = next(g.layers())
    L = node.layer
    assert L.digits is not None
    assert L.stats["planes"] == L.digits.shape[0] == n_planes(8, 1, "split", signed_digit=True)
    assert np.array_equal(digits_value(L.digits, 1), wmat(node))
    # column sets hold exactly the positive / negative digits of the orchestrated form
    p = L.program
    X = p.n_crossbars
    x, i, j = np.nonzero(p.cells)
    plane = p.col_shift[x, j]
    sign = p.col_sign[x, j]
    got = np.zeros(L.digits.shape, np.int64)
    np.add.at(got, (plane, 0, p.row_index[x, i], p.col_index[x, j]), sign * p.cells[x, i, j])
    assert np.array_equal(got, L.digits.astype(np.int64))
    assert X == L.stats["crossbars_dense_layout"]


def test_inconsistent_digits_are_an_error():
    g, t, _ = compiled(conv_model(cin=8, cout=8, k=3, hw=4, seed=6), "sme", "quantize")
    node = next(g.layers())
    L = node.layer
    D = sign_magnitude_digits(wmat(node), 1, 7)
    D[0, 0, 0, 0] += 1 if D[0, 0, 0, 0] == 0 else -D[0, 0, 0, 0]
    L.digits = D
    with pytest.raises(XbcError, match=L.id):
        PassManager("slice-bits").run(g, PassContext(target=t))


def test_share_groups_option_and_dense_counts():
    g, t, ctx = compiled(depthwise_model(c=24, seed=7), "sme", "quantize,slice-bits")
    L = next(g.layers()).layer
    assert L.program.n_crossbars == 3                 # 9 groups of 9 rows x 14 columns per crossbar
    x0 = L.program
    assert sorted(set(x0.row_group[0][x0.row_group[0] >= 0].tolist())) == list(range(9))
    g2, _, _ = compiled(depthwise_model(c=24, seed=7), "sme", "quantize,slice-bits{share-groups=false}")
    L2 = next(g2.layers()).layer
    assert L2.program.n_crossbars == 24
    assert np.array_equal(rebuild_matrix(L2.program, 24, 9, 1), rebuild_matrix(L.program, 24, 9, 1))
    # squeeze packs the 24 small groups again, never worse than the shared dense layout
    PassManager("squeeze").run(g2, PassContext(target=t))
    assert L2.program.n_crossbars <= 3


def test_passes_need_their_inputs():
    t = targets.load("sme")
    g = frontend.load_model(tiny_cnn())
    with pytest.raises(PassError, match="quantize"):
        PassManager("slice-bits").run(g, PassContext(target=t))
    g = frontend.load_model(tiny_cnn())
    with pytest.raises(PassError, match="slice-bits"):
        PassManager("quantize,squeeze").run(g, PassContext(target=t))
    with pytest.raises(PassError, match="slice-bits"):
        PassManager("quantize,adc-size").run(frontend.load_model(tiny_cnn()), PassContext(target=t))


def test_squeeze_options():
    (p,) = parse_pipeline("squeeze{exact-limit=0,time-limit=0.5,seed=3,workers=2,split=false}")
    assert (p.exact_limit, p.time_limit, p.seed, p.workers, p.split) == (0, 0.5, 3, 2, False)
    for bad in ("squeeze{exact-limit=-1}", "squeeze{workers=0}", "squeeze{time-limit=-2}"):
        with pytest.raises(OptionError):
            parse_pipeline(bad)
    # every option combination conserves the weights
    for pipe in ("squeeze{split=false}", "squeeze{exact-limit=0}", "squeeze{workers=2,seed=9}"):
        g, t, _ = compiled(all_crossbar_models()["grouped_conv"], "sme", "quantize,slice-bits," + pipe)
        node = next(g.layers())
        L = node.layer
        assert np.array_equal(rebuild_matrix(L.program, L.groups, L.rows, L.cols), wmat(node))


def _seg(group, cells, rows=None):
    cells = np.asarray(cells, np.uint8)
    r, c = cells.shape
    return Segment(group=group, rows=np.arange(r, dtype=np.int32) if rows is None else np.asarray(rows, np.int32),
                   col_index=np.arange(c, dtype=np.int32), col_shift=np.zeros(c, np.int32),
                   col_sign=np.ones(c, np.int8), cells=cells)


def test_support_split_beats_whole_segments():
    # 8x8 crossbars. Group 0: 8 dense columns on all 8 rows + 4 columns using row 0 only.
    # Group 1: 4 columns on rows 0..3. Whole segments: 8x12 (2 crossbars) + 4x4 (1) = 3.
    # Split by row support: 8x8 chunk | 1x4 tail + 4x4 share one crossbar = 2 (= 16 columns / 8).
    a = np.zeros((8, 12), np.uint8)
    a[:, [0, 2, 3, 5, 7, 8, 10, 11]] = 1
    a[0, [1, 4, 6, 9]] = 1
    b = np.zeros((8, 4), np.uint8)
    b[:4] = 1
    segs = [_seg(0, a), _seg(1, b)]
    prog, pieces, placements, info = squeeze_layer(segs, 8, 8, split=True, exact_limit=24, time_limit=5,
                                                   seed=0, workers=1, cell_bits=1)
    assert prog.n_crossbars == 2 and info["lower_bound"] == 2 and info["squeeze_variant"] != "whole"
    assert info["kept_columns"] == 16 and info["kept_cells"] == 8 * 8 + 4 + 16
    ref = np.zeros((2, 8, 12), np.int64)
    ref[0] = a
    ref[1, :, :4] = b
    assert np.array_equal(rebuild_matrix(prog, 2, 8, 12), ref)
    prog_w, _, _, info_w = squeeze_layer(segs, 8, 8, split=False, exact_limit=24, time_limit=5,
                                         seed=0, workers=1, cell_bits=1)
    assert prog_w.n_crossbars == 3 and info_w["squeeze_variant"] == "whole"
    assert np.array_equal(rebuild_matrix(prog_w, 2, 8, 12), ref)


def test_all_zero_layer_squeezes_to_nothing():
    segs = [_seg(0, np.zeros((5, 6)))]
    prog, pieces, placements, info = squeeze_layer(segs, 8, 8, split=True, exact_limit=24, time_limit=5,
                                                   seed=0, workers=1, cell_bits=1)
    assert prog.n_crossbars == 0 and pieces == [] and info["lower_bound"] == 0
    assert np.array_equal(rebuild_matrix(prog, 1, 5, 6), np.zeros((1, 5, 6)))


def test_multibit_cells_squeeze():
    # 2-bit cells: a column whose cells are 0/2/3 is kept; rows with only zeros go
    cells = np.array([[0, 2, 0], [0, 0, 0], [3, 0, 0], [0, 1, 0]], np.uint8)
    prog, pieces, _, info = squeeze_layer([_seg(0, cells, rows=[5, 6, 7, 8])], 8, 8, split=True,
                                          exact_limit=24, time_limit=5, seed=0, workers=1, cell_bits=2)
    assert prog.n_crossbars == 1 and info["kept_columns"] == 2 and info["kept_cells"] == 3
    assert sorted(prog.row_index[0][prog.row_group[0] >= 0].tolist()) == [5, 7, 8]
    ref = np.zeros((1, 9, 3), np.int64)
    ref[0, 5:9] = cells
    assert np.array_equal(rebuild_matrix(prog, 1, 9, 3), ref)


@pytest.mark.parametrize("tname", ["sme", "isaac"])
def test_weights_out_of_range_are_an_error(tname):
    g, t, _ = compiled(conv_model(cin=8, cout=8, k=3, hw=4, seed=8), tname, "quantize")
    L = next(g.layers()).layer
    w = np.array(L.quant.w_int)
    w.flat[5] = 1 << L.quant.weight_bits          # outside the signed weight_bits range
    L.quant.w_int = w
    with pytest.raises(PassError, match=f"{L.id}.*{L.quant.weight_bits}-bit"):
        PassManager("slice-bits").run(g, PassContext(target=t))
