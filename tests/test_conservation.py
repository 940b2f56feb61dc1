"""Conservation (DESIGN invariant 1) for slice-bits and squeeze on every test graph and target.

For every model of ``tests.graphs.all_crossbar_models()`` and every built-in target, after the
target's own passes up to slice-bits (quantize, and orchestrate-bits / reorder / cim-sparsity
where the target runs them): the crossbar program rebuilds exactly ``to_matrix(quant.w_int)``
after slice-bits alone and after squeeze; no crossbar exceeds Rx x Cx; the program equals what
``assemble_program`` (which rejects any row or column used twice) builds from the same segments
and placements; the dense count is ``dense_crossbars``; squeezed <= dense; count >= bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.graphs import all_crossbar_models
from xbc import frontend, targets
from xbc.layer import assemble_program, n_planes, rebuild_matrix, to_matrix
from xbc.packing import dense_crossbars, signs_of
from xbc.passes.slice_bits import slice_layer
from xbc.passes.squeeze import Squeeze, squeeze_layer
from xbc.passmanager import PassContext, PassManager

MODELS = all_crossbar_models()
FIELDS = ("cells", "row_group", "row_index", "col_group", "col_index", "col_shift", "col_sign")


def same_program(a, b) -> None:
    assert a.offset == b.offset
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y), name


def matrix(node) -> np.ndarray:
    L = node.layer
    return to_matrix(L.kind, np.asarray(L.quant.w_int), L.groups, node.attrs).astype(np.int64)


def prefix(t) -> str:
    """The target's own passes before slice-bits."""
    return t.pipeline.split(",slice-bits")[0]


@pytest.mark.parametrize("tname", ["isaac", "sme", "bitslice", "mars"])
def test_conservation_every_model(tname):
    t = targets.load(tname)
    sq = Squeeze()
    for mname, model in MODELS.items():
        g = frontend.load_model(model)
        ctx = PassContext(target=t)
        PassManager(prefix(t) + ",slice-bits").run(g, ctx)
        direct = {}
        for node in g.layers():
            L = node.layer
            ref = matrix(node)
            p = L.program
            where = f"{tname}/{mname}/{L.id}"
            assert p.cells.shape[1:] == (t.rows, t.cols), where
            assert np.array_equal(rebuild_matrix(p, L.groups, L.rows, L.cols), ref), where
            # same as the reference assembler on the same segments and placements
            segs, plc, _, P, S, off = slice_layer(L, node, t)
            same_program(p, assemble_program(segs, plc, t.rows, t.cols, off))
            assert p.n_crossbars == dense_crossbars(L.groups, L.rows, L.cols, t, P, S), where
            sm = n_planes(L.quant.weight_bits, t.cell_bits, t.weight_encoding)
            assert L.stats["crossbars_dense"] == dense_crossbars(L.groups, L.rows, L.cols, t, sm, signs_of(t))
            assert L.stats["crossbars_sliced"] == int((p.cells.reshape(p.n_crossbars, -1) != 0).any(1).sum())
            assert (p.offset != 0) == (t.weight_encoding == "offset")
            # squeeze, called directly: pieces + placements through assemble_program
            prog, pieces, placements, info = squeeze_layer(
                L.segments, t.rows, t.cols, split=sq.split, exact_limit=sq.exact_limit,
                time_limit=sq.time_limit, seed=ctx.seed, workers=sq.workers, cell_bits=t.cell_bits,
                offset=p.offset)
            same_program(prog, assemble_program(pieces, placements, t.rows, t.cols, p.offset))
            assert np.array_equal(rebuild_matrix(prog, L.groups, L.rows, L.cols), ref), where
            assert prog.cells.shape[1:] == (t.rows, t.cols)
            assert info["lower_bound"] <= prog.n_crossbars <= p.n_crossbars, where
            assert prog.n_crossbars <= L.stats["crossbars_sliced"], where
            # every squeezed crossbar holds a programmed cell; every used column is non-empty
            assert np.all(prog.cells.reshape(prog.n_crossbars, -1).any(axis=1))
            used = prog.col_group >= 0
            assert np.all(prog.cells.any(axis=1)[used])
            direct[L.id] = prog
        # the pass gives the same programs (deterministic) and conserves the weights
        PassManager("squeeze").run(g, ctx)
        total = 0
        for node in g.layers():
            L = node.layer
            same_program(L.program, direct[L.id])
            assert np.array_equal(rebuild_matrix(L.program, L.groups, L.rows, L.cols), matrix(node))
            assert L.stats["crossbars_squeezed"] == L.program.n_crossbars
            total += L.program.n_crossbars
        assert ctx.stats["squeeze"]["crossbars_squeezed"] == total


def test_squeeze_removes_empty_columns_and_rows_exactly():
    """A Gemm whose weights are zero except a 5x3 block: one 5-row item per used plane/sign."""
    import onnx
    from onnx import helper, numpy_helper
    W = np.zeros((300, 40), np.float32)
    W[10:15, 7:10] = np.array([[1, -2, 3], [-4, 5, -6], [7, -8, 9], [1, 1, 1], [-1, -1, -1]]) * 0.01
    W[0, 0] = 0.127
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 300])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 40])
    m = helper.make_model(helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["y"], name="fc")],
                                            "g", [x], [y], [numpy_helper.from_array(W, "W")]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    t = targets.load("sme")
    g = frontend.load_model(m)
    ctx = PassContext(target=t)
    PassManager("quantize{per-channel=false},slice-bits,squeeze").run(g, ctx)
    L = next(g.layers()).layer
    ref = to_matrix(L.kind, np.asarray(L.quant.w_int), 1, {})
    assert np.count_nonzero(ref) == 16
    assert np.array_equal(rebuild_matrix(L.program, 1, 300, 40), ref)
    # dense: 3 row blocks x ceil(40*7*2/128) = 3 x 5
    assert L.stats["crossbars_dense"] == 15
    # kept: one column per non-zero (output column, plane, sign) in each row block
    digits = np.abs(ref)
    n_cols = 0
    for rb in range(0, 300, 128):
        blk = ref[0, rb:rb + 128]
        for p in range(7):
            bit = (np.abs(blk) >> p) & 1
            n_cols += int(((bit * (blk > 0)).any(axis=0)).sum() + ((bit * (blk < 0)).any(axis=0)).sum())
    assert L.stats["kept_columns"] == n_cols
    assert L.stats["kept_cells"] == int(sum(bin(int(v)).count("1") for v in digits.ravel()))
    # everything fits one crossbar; the rows kept are exactly the rows with non-zeros
    assert L.program.n_crossbars == 1 == L.stats["lower_bound"]
    used_rows = set(L.program.row_index[L.program.row_group >= 0].tolist())
    assert used_rows == {0, 10, 11, 12, 13, 14}
