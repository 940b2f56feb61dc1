"""Bit-accurate simulator: kernels against independent integer references, whole bundles.

The integer references here do not share code with the simulator: convolutions are computed by
their ONNX definitions (direct sums over kernel offsets; ConvTranspose as a scatter), in int64.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.graphs import all_crossbar_models, tiny_cnn
from xbc import ortutil
from xbc.backends.sim.engine import CrossbarKernel, conv_geometry, im2col, quantize_input
from xbc.backends.sim.runner import Simulator, compare, simulate
from xbc.backends.sim.testing import make_spec
from xbc.bundle import read_bundle, write_bundle
from xbc.compiler import compile_model
from xbc.layer import to_matrix


# ----------------------------------------------------------------------------------------
# independent integer references (ONNX definitions, int64)
# ----------------------------------------------------------------------------------------

def ref_conv(x: np.ndarray, w: np.ndarray, strides, pads, dilations, groups) -> np.ndarray:
    """Direct Conv with explicit pads: y[n,o,i] = sum_{c,k} x[n, g*Cg+c, i*s + k*d - pb] * w[o,c,k]."""
    x = np.asarray(x, np.int64)
    w = np.asarray(w, np.int64)
    nd = w.ndim - 2
    N, Cin = x.shape[:2]
    Cout, Cg = w.shape[:2]
    k = w.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[nd + i]) for i in range(nd)])
    out = tuple((xp.shape[2 + i] - ((k[i] - 1) * dilations[i] + 1)) // strides[i] + 1 for i in range(nd))
    y = np.zeros((N, Cout) + out, np.int64)
    Og = Cout // groups
    for kk in itertools.product(*[range(v) for v in k]):
        sl = tuple(slice(kk[i] * dilations[i], kk[i] * dilations[i] + (out[i] - 1) * strides[i] + 1, strides[i])
                   for i in range(nd))
        xs = xp[(slice(None), slice(None)) + sl]
        for g in range(groups):
            wk = w[(slice(g * Og, (g + 1) * Og), slice(None)) + kk]                  # [Og, Cg]
            y[:, g * Og:(g + 1) * Og] += np.einsum("nc...,oc->no...", xs[:, g * Cg:(g + 1) * Cg], wk)
    return y


def ref_conv_transpose(x, w, strides, pads, dilations, groups, output_padding) -> np.ndarray:
    """ConvTranspose as the scatter of its definition: y[i*s + k*d - pb] += x[i] * w[k]."""
    x = np.asarray(x, np.int64)
    w = np.asarray(w, np.int64)
    nd = w.ndim - 2
    N, Cin = x.shape[:2]
    Og = w.shape[1]
    Ci = Cin // groups
    k = w.shape[2:]
    ins = x.shape[2:]
    full = tuple(strides[i] * (ins[i] - 1) + (k[i] - 1) * dilations[i] + 1 + output_padding[i] for i in range(nd))
    y = np.zeros((N, Og * groups) + full, np.int64)
    for kk in itertools.product(*[range(v) for v in k]):
        sl = tuple(slice(kk[i] * dilations[i], kk[i] * dilations[i] + (ins[i] - 1) * strides[i] + 1, strides[i])
                   for i in range(nd))
        for g in range(groups):
            wk = w[(slice(g * Ci, (g + 1) * Ci), slice(None)) + kk]                  # [Ci, Og]
            y[(slice(None), slice(g * Og, (g + 1) * Og)) + sl] += np.einsum(
                "nc...,co->no...", x[:, g * Ci:(g + 1) * Ci], wk)
    crop = tuple(slice(pads[i], full[i] - pads[nd + i]) for i in range(nd))
    return y[(slice(None), slice(None)) + crop]


def ref_quant(x, scale, zp, bits):
    return np.clip(np.rint(np.asarray(x, np.float64) / scale) + zp, 0, 2 ** bits - 1).astype(np.int64)


def integer_reference(spec, x) -> np.ndarray:
    """acc = sum w_int * xq with real positions only, plus zp * colsum (padding holds zp)."""
    xq = ref_quant(x, spec.x_scale, spec.x_zero_point, spec.input_bits)
    zp = spec.x_zero_point
    w = np.asarray(spec.w_int, np.int64)
    a = spec.attrs
    G = spec.groups
    colsum = to_matrix(spec.kind, w, G, a).sum(axis=1).reshape(-1)
    if spec.kind == "conv":
        nd = w.ndim - 2
        y = ref_conv(xq - zp, w, a.get("strides", [1] * nd), a.get("pads", [0] * 2 * nd),
                     a.get("dilations", [1] * nd), G)
        return y + zp * colsum.reshape((1, -1) + (1,) * nd)
    if spec.kind == "conv_transpose":
        nd = w.ndim - 2
        y = ref_conv_transpose(xq - zp, w, a.get("strides", [1] * nd), a.get("pads", [0] * 2 * nd),
                               a.get("dilations", [1] * nd), G, a.get("output_padding", [0] * nd))
        return y + zp * colsum.reshape((1, -1) + (1,) * nd)
    Wm = w.T if (spec.kind == "gemm" and a.get("transB", 0)) else w
    return np.matmul(xq - zp, Wm) + zp * colsum


# ----------------------------------------------------------------------------------------
# kernel cases: every kind and geometry, hand-built programs (xbc.backends.sim.testing)
# ----------------------------------------------------------------------------------------

def _w(rng, shape):
    return rng.laplace(size=shape).astype(np.float32) * rng.lognormal(0, 0.3, size=(shape[0],) + (1,) * (len(shape) - 1))


KERNEL_CASES = {
    "conv2d": ("conv", (16, 8, 3, 3), dict(pads=[1, 1, 1, 1]), 1, (2, 8, 6, 6)),
    "conv2d_grouped": ("conv", (12, 3, 3, 3), dict(pads=[1, 0, 1, 2]), 3, (1, 9, 7, 5)),
    "conv2d_depthwise": ("conv", (10, 1, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2]), 10, (1, 10, 7, 7)),
    "conv2d_strided_dilated": ("conv", (6, 4, 3, 2), dict(strides=[2, 3], dilations=[2, 1], pads=[2, 1, 0, 1]), 1, (2, 4, 9, 10)),
    "conv1d": ("conv", (7, 5, 4), dict(strides=[2], pads=[1, 2]), 1, (3, 5, 13)),
    "conv3d_grouped": ("conv", (6, 2, 2, 3, 2), dict(pads=[1, 0, 1, 0, 1, 1], dilations=[1, 2, 1]), 2, (1, 4, 4, 6, 5)),
    "conv2d_1x1": ("conv", (20, 30, 1, 1), {}, 1, (1, 30, 3, 4)),
    "conv2d_1x1_grouped": ("conv", (12, 2, 1, 1), {}, 4, (2, 8, 3, 5)),
    "conv2d_one_output_per_group": ("conv", (3, 4, 3, 3), dict(pads=[1, 2, 0, 1], strides=[2, 1], dilations=[1, 2]), 3, (2, 12, 7, 8)),
    "conv3d_depthwise": ("conv", (4, 1, 2, 3, 3), dict(pads=[0, 1, 1, 1, 0, 1], strides=[1, 2, 1]), 4, (1, 4, 3, 6, 5)),
    "convT2d": ("conv_transpose", (6, 5, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]), 1, (1, 6, 4, 5)),
    "convT2d_grouped_dilated": ("conv_transpose", (6, 2, 3, 2), dict(strides=[3, 1], pads=[0, 1, 2, 0], dilations=[1, 2]), 3, (2, 6, 3, 4)),
    "convT1d_bigpad": ("conv_transpose", (4, 3, 5), dict(strides=[2], pads=[5, 4], output_padding=[1]), 1, (1, 4, 6)),
    "gemm": ("gemm", (40, 12), {}, 1, (3, 40)),
    "gemm_transB": ("gemm", (9, 150), dict(transB=1), 1, (2, 150)),
    "matmul_batched": ("matmul", (24, 10), {}, 1, (2, 3, 5, 24)),
    "matmul_vector": ("matmul", (17, 6), {}, 1, (17,)),
}


def _case_spec(name, **kw):
    kind, wshape, attrs, groups, xshape = KERNEL_CASES[name]
    rng = np.random.default_rng(abs(hash(name)) % 1000)
    W = _w(rng, wshape)
    bias = rng.standard_normal(wshape[1] * groups if kind == "conv_transpose" else
                               (wshape[0] if kind == "conv" or (kind == "gemm" and attrs.get("transB")) else wshape[1]))
    spec = make_spec(kind, W, attrs=attrs, groups=groups, bias=bias, x_range=(-1.5, 2.0), seed=len(name), **kw)
    x = rng.uniform(-1.6, 2.1, size=xshape).astype(np.float32)   # a few values clip at the range ends
    return spec, x


@pytest.mark.parametrize("name", sorted(KERNEL_CASES))
def test_kernel_bit_exact_all_kinds(name):
    """Wide ADC: the accumulator equals the integer conv/matmul of the quantized operands."""
    spec, x = _case_spec(name, rows=16, cols=16, adc_bits=12, rows_active=16)
    ref = integer_reference(spec, x)
    for mode, exhaustive in (("ideal", False), ("bit-serial", False), ("bit-serial", True)):
        run = CrossbarKernel(spec, mode=mode, exhaustive=exhaustive).run(x, record=True)
        assert run.acc.shape == ref.shape
        np.testing.assert_array_equal(run.acc, ref, err_msg=f"{name} {mode} exhaustive={exhaustive}")
        assert run.clipped == 0


@pytest.mark.parametrize("name", ["conv2d_grouped", "convT2d_grouped_dilated", "gemm_transB"])
@pytest.mark.parametrize("cfg", [dict(cell_bits=2, encoding="offset", weight_bits=8, input_bits=8),
                                 dict(cell_bits=2, dac_bits=2, input_bits=7),
                                 dict(cell_bits=1, input_bits=12, dac_bits=4)])
def test_kernel_bit_exact_encodings(name, cfg):
    spec, x = _case_spec(name, rows=24, cols=20, adc_bits=16, rows_active=8, **cfg)
    ref = integer_reference(spec, x)
    for exhaustive in (False, True):
        run = CrossbarKernel(spec, mode="bit-serial", exhaustive=exhaustive).run(x, record=True)
        np.testing.assert_array_equal(run.acc, ref)


@pytest.mark.parametrize("name", ["conv2d_1x1", "conv2d_1x1_grouped", "conv2d_depthwise",
                                  "conv2d_one_output_per_group", "conv3d_depthwise"])
def test_direct_conv_path_equals_im2col_path(name):
    """1x1 and one-output-per-group convs skip im2col; the integers are the same."""
    spec, x = _case_spec(name, rows=16, cols=16)
    k = CrossbarKernel(spec)
    xq = quantize_input(x, spec.x_scale, spec.x_zero_point, spec.input_bits)
    direct, P = k._direct(xq)
    patches, finish = k._patches(xq, float(spec.x_zero_point))
    np.testing.assert_array_equal(direct, finish(k._ideal(patches)))
    assert P == patches.shape[1]


def test_kernel_float_output_formula():
    """y = x_scale * w_scale[o] * (acc - zp * colsum(w_int)) + bias, channel axis 1 for conv."""
    spec, x = _case_spec("conv2d_grouped", rows=16, cols=16)
    run = CrossbarKernel(spec).run(x, record=True)
    colsum = to_matrix("conv", spec.w_int.astype(np.int64), spec.groups, spec.attrs).sum(1).reshape(-1)
    want = spec.x_scale * spec.w_scale[None, :, None, None] * (run.acc - spec.x_zero_point * colsum[None, :, None, None]) \
        + spec.bias.astype(np.float64)[None, :, None, None]
    np.testing.assert_allclose(run.y, want.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_row_and_col_indices_undo_permutations():
    """row_index/col_index are original indices, so the kernel applies no permutation itself:
    physical rows carry row_perm's order, yet the cells rebuild the unpermuted w_int matrix, and
    re-applying the permutation (the bug this guards against) would give a different result."""
    spec, x = _case_spec("conv2d", rows=16, cols=16, permute=True)
    k = CrossbarKernel(spec)
    G, R, C = spec.groups, spec.rows, spec.cols
    p = spec.program
    assert not np.array_equal(spec.row_perm[0], np.arange(R))
    np.testing.assert_array_equal(k.M_int, to_matrix("conv", spec.w_int.astype(np.int64), G))
    for xb in range(p.cells.shape[0]):                      # rows of a crossbar: a run of row_perm
        used = p.row_group[xb] >= 0
        ri = p.row_index[xb][used]
        perm = list(spec.row_perm[p.row_group[xb][used][0]])
        start = perm.index(ri[0])
        assert list(ri) == perm[start:start + len(ri)]
    for xb in range(p.cells.shape[0]):                      # columns: in col_perm order per plane
        cols = p.col_index[xb][p.col_sign[xb] != 0]
        pos = np.argsort(spec.col_perm[0])[cols]
        assert np.all(np.diff(pos)[np.diff(pos) < 0].size <= 2 * 8)
    wrong = spec.program
    moved = type(wrong)(**{**wrong.__dict__, "row_index": np.where(wrong.row_index >= 0, np.take_along_axis(
        spec.row_perm[np.maximum(wrong.row_group, 0)], np.maximum(wrong.row_index, 0)[..., None], -1)[..., 0], -1)})
    spec_wrong = type(spec)(**{**spec.__dict__, "program": moved})
    ref = integer_reference(spec, x)
    assert np.array_equal(CrossbarKernel(spec).run(x, record=True).acc, ref)
    assert not np.array_equal(CrossbarKernel(spec_wrong).run(x, record=True).acc, ref)


# ----------------------------------------------------------------------------------------
# geometry against onnxruntime in float (no quantization): auto_pad, output_shape, ...
# ----------------------------------------------------------------------------------------

GEOMETRY = [
    ("Conv", (4, 3, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2]), (1, 3, 7, 8)),
    ("Conv", (4, 3, 2, 4), dict(auto_pad="SAME_LOWER", strides=[2, 3]), (1, 3, 7, 8)),
    ("Conv", (4, 3, 3, 3), dict(auto_pad="VALID", dilations=[2, 1]), (2, 3, 7, 8)),
    ("Conv", (6, 2, 3), dict(pads=[0, 2], strides=[2], group=2), (1, 4, 11)),
    ("ConvTranspose", (3, 4, 3, 3), dict(strides=[2, 2], pads=[1, 0, 1, 2], output_padding=[1, 0]), (1, 3, 4, 5)),
    ("ConvTranspose", (4, 2, 3, 3), dict(strides=[2, 2], output_shape=[9, 10], group=2), (1, 4, 4, 5)),
    ("ConvTranspose", (3, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER"), (1, 3, 4, 5)),
    ("ConvTranspose", (3, 2, 4), dict(strides=[3], dilations=[2], pads=[3, 1]), (2, 3, 5)),
    ("ConvTranspose", (2, 2, 2, 2, 2), dict(strides=[2, 1, 2]), (1, 2, 3, 2, 3)),
]


@pytest.mark.parametrize("case", range(len(GEOMETRY)))
def test_geometry_matches_onnxruntime(case):
    op, wshape, attrs, xshape = GEOMETRY[case]
    rng = np.random.default_rng(case)
    W = rng.standard_normal(wshape).astype(np.float32)
    x = rng.standard_normal(xshape).astype(np.float32)
    g = int(attrs.get("group", 1))
    node = helper.make_node(op, ["x", "W"], ["y"], kernel_shape=list(wshape[2:]), **attrs)
    model = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(xshape))],
        [helper.make_empty_tensor_value_info("y")], [numpy_helper.from_array(W, "W")]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    want = ortutil.run(model, {"x": x})["y"]
    kind = "conv" if op == "Conv" else "conv_transpose"
    geom = conv_geometry(kind, attrs, wshape, xshape[2:])
    assert geom.out_shape == want.shape[2:]
    patches = im2col(x.astype(np.float64), geom, g, 0.0)                          # [G, P, R]
    M = to_matrix(kind, W.astype(np.float64), g)                                   # [G, R, C]
    y = np.matmul(patches, M).transpose(1, 0, 2).reshape(xshape[0], *geom.out_shape, -1)
    y = np.moveaxis(y, -1, 1)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def test_quantize_input_semantics():
    x = np.array([-1.0, -0.25, 0.0, 0.125, 0.375, 0.625, 10.0], np.float32)
    q = quantize_input(x, 0.25, 3, 4)
    # x/s = -4, -1, 0, 0.5 -> 0 (half even), 1.5 -> 2, 2.5 -> 2, 40 -> clip 15
    np.testing.assert_array_equal(q, [0, 2, 3, 3, 5, 5, 15])
    assert q.dtype == np.float32


# ----------------------------------------------------------------------------------------
# whole bundles from the real compile pipeline (the target's default pipeline)
# ----------------------------------------------------------------------------------------


TARGETS = ("sme", "isaac", "bitslice", "mars")


def compile_bundle(model, target, path, overrides=()):
    res = compile_model(model, target, overrides=overrides)
    write_bundle(res, path)
    return res, read_bundle(path)


@pytest.mark.parametrize("target", TARGETS)
def test_bundle_bit_exact_every_kind(target, tmp_path):
    """Invariant 2: with ADCs wide enough every crossbar layer's accumulator equals the integer
    matmul/conv of its quantized operands, for every kind, on bundles of the real pipeline; and
    with the target's own ADCs the fast bit-serial path equals the literal per-cycle model."""
    for name, model in all_crossbar_models().items():
        _, b = compile_bundle(model, target, tmp_path / f"{name}")
        feeds = ortutil.random_inputs(model, seed=3)
        wide = simulate(b, feeds, mode="bit-serial", adc_bits=24, record=True)
        assert wide.clipped == 0
        for lid, spec in b.layers.items():
            ref = integer_reference(spec, wide.layer_inputs[lid])
            np.testing.assert_array_equal(wide.layer_acc[lid], ref, err_msg=f"{target} {name} {lid}")
        fast = simulate(b, feeds, mode="bit-serial", record=True)
        slow = simulate(b, feeds, mode="bit-serial", exhaustive=True, record=True)
        assert fast.clipped == slow.clipped and fast.conversions == slow.conversions > 0
        # the same conversion count as the compiler's 'estimate' pass (one inference)
        assert fast.conversions == b.mapping["stats"]["estimate"]["totals"]["adc_conversions"]
        for lid in b.layers:
            np.testing.assert_array_equal(fast.layer_acc[lid], slow.layer_acc[lid])
        for k in fast.outputs:
            np.testing.assert_array_equal(fast.outputs[k], slow.outputs[k])


def test_bundle_cells_match_w_int_and_adc_size(tmp_path):
    """The kernel's matrix (from cells, splice table and indices) is the stored w_int, and its
    may-clip columns are exactly the columns adc-size says need more than the target's bits."""
    _, b = compile_bundle(tiny_cnn(seed=12), "sme", tmp_path / "b")
    for adc in (3, 5, 8):
        sim = Simulator(b, adc_bits=adc)
        for lid, spec in b.layers.items():
            k = sim.kernels[lid]
            np.testing.assert_array_equal(k.M_int, to_matrix(spec.kind, spec.w_int.astype(np.int64), spec.groups, spec.attrs))
            need = spec.program.col_adc_bits
            used = spec.program.col_sign != 0
            assert k.info.columns_may_clip == int(np.count_nonzero((need > adc) & used))
            assert k.info.columns == int(used.sum())


def test_reorder_permutations_in_bundle(tmp_path):
    """sme runs 'reorder': the bundle's rows sit in permuted order, the simulator still rebuilds
    the unpermuted matrix (row_index/col_index are original indices) and is exact."""
    model = all_crossbar_models()["big_conv"]
    _, b = compile_bundle(model, "sme", tmp_path / "b")
    spec = next(iter(b.layers.values()))
    assert spec.row_perm is not None and not np.array_equal(spec.row_perm[0], np.arange(spec.rows))
    k = CrossbarKernel(spec)
    np.testing.assert_array_equal(k.M_int, to_matrix("conv", spec.w_int.astype(np.int64), spec.groups))


def test_simulator_agrees_with_effective_model(tmp_path):
    """Ideal ADCs: the simulated outputs equal the effective ONNX model's to float rounding."""
    from xbc.effective import effective_model

    for name in ("tiny_cnn", "grouped_conv_transpose", "matmul_left", "gemm", "strided_dilated_conv"):
        model = all_crossbar_models()[name]
        for target in ("sme", "isaac", "mars"):
            res = compile_model(model, target)
            write_bundle(res, tmp_path / f"{name}_{target}")
            feeds = [ortutil.random_inputs(model, seed=s) for s in range(2)]
            sim = simulate(tmp_path / f"{name}_{target}", feeds, mode="ideal")
            sess = ortutil.session(effective_model(res.graph))
            names = [o.name for o in sess.get_outputs()]
            outs = [dict(zip(names, sess.run(None, f))) for f in feeds]
            for k, got in sim.outputs.items():
                want = np.concatenate([o[k] for o in outs])
                assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), (name, target, k)


def test_compare_matches_folded_layers_to_float_tensors(tmp_path):
    """fold-batchnorm makes conv1 compute BN(conv1): the per-layer table compares it with the
    float model's BN output (not the same-named pre-BN tensor), and fidelity is high."""
    model = tiny_cnn(seed=12)
    _, b = compile_bundle(model, "sme", tmp_path / "b")
    feeds = [ortutil.random_inputs(model, seed=s) for s in range(4)]
    c = compare(b, feeds, model=model)
    by = {lf.node: lf for lf in c.layers}
    assert by["conv1"].tensor == "n1"
    assert all(lf.sqnr_db is not None and lf.sqnr_db > 25 for lf in c.layers), [vars(x) for x in c.layers]
    assert c.top1 == 1.0 and c.sqnr_db > 25 and c.cosine > 0.99
    # the float model's own tensors: an independent check of the SQNR computation
    want = c.reference["logits"]
    err = want - c.sim.outputs["logits"]
    assert c.sqnr_db == pytest.approx(10 * np.log10((want ** 2).sum() / (err ** 2).sum()))


def test_runner_segments_multi_io(tmp_path):
    """Two inputs, two outputs, a layer output that is both a graph output and read later, a
    digital subgraph op (If) between layers: every digital op runs with ONNX semantics."""
    rng = np.random.default_rng(0)
    W1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    W2 = rng.standard_normal((8 * 4 * 4, 5)).astype(np.float32) * 0.1
    then_g = helper.make_graph([helper.make_node("Relu", ["c"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", onnx.TensorProto.FLOAT, [1, 8, 4, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["c"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", onnx.TensorProto.FLOAT, [1, 8, 4, 4])])
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("ReduceSum", ["y"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["r"], name="if", then_branch=then_g, else_branch=else_g),
        helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "W2"], ["z"], name="fc"),
        helper.make_node("Softmax", ["z"], ["p"], name="softmax", axis=-1),
    ]
    g = helper.make_graph(nodes, "multi", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4]),
                                           helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1, 8, 4, 4]),
                           helper.make_tensor_value_info("p", onnx.TensorProto.FLOAT, [1, 5])],
                          [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2"),
                           numpy_helper.from_array(np.array(0, np.float32), "zero"),
                           numpy_helper.from_array(np.array([1, -1], np.int64), "shape")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    res = compile_model(model, "isaac")
    write_bundle(res, tmp_path / "b")
    from xbc.effective import effective_model
    eff = ortutil.session(effective_model(res.graph))
    for yv in (np.array([[1, 2, 3]], np.float32), np.array([[-1, -2, 0]], np.float32)):
        feeds = {"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32), "y": yv}
        out = simulate(tmp_path / "b", feeds, mode="ideal")
        want = dict(zip([o.name for o in eff.get_outputs()], eff.run(None, feeds)))
        assert set(out.outputs) == {"c", "p"}
        for k in ("c", "p"):
            np.testing.assert_allclose(out.outputs[k], want[k], rtol=1e-5, atol=1e-6)
        assert np.isclose(out.outputs["p"].sum(), 1.0, atol=1e-5)


def test_simulate_errors_name_the_problem(tmp_path):
    from xbc.backends.sim.engine import SimError
    from xbc.errors import BundleError

    model = all_crossbar_models()["gemm"]
    _, b = compile_bundle(model, "sme", tmp_path / "b")
    with pytest.raises(SimError, match="missing input 'x'"):
        simulate(b, {})
    with pytest.raises(SimError, match=r"input 'x' has shape \[3, 40\].*\[2, 40\]"):
        simulate(b, {"x": np.zeros((3, 40), np.float32)})
    with pytest.raises(SimError, match="'nope' are not inputs"):
        simulate(b, {"x": np.zeros((2, 40), np.float32), "nope": np.zeros(1)})
    with pytest.raises(SimError, match="unknown .*mode"):
        Simulator(b, mode="fast")
    with pytest.raises(BundleError, match="does not exist"):
        simulate(tmp_path / "missing", {})
    with pytest.raises(SimError, match="--compare needs the original float model"):
        compare(b, {"x": np.zeros((2, 40), np.float32)})


# ----------------------------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------------------------

def _cli(args, capsys):
    from xbc.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = tiny_cnn(seed=12)
    onnx.save(model, d / "tiny.onnx")
    res = compile_model(str(d / "tiny.onnx"), "sme")
    write_bundle(res, d / "b")
    write_bundle(res, d / "b.xbc", zip=True)
    return d, model


def test_cli_input_formats_and_output_file(tiny_bundle, capsys):
    d, model = tiny_bundle
    rng = np.random.default_rng(7)
    xs = rng.standard_normal((3, 1, 3, 16, 16)).astype(np.float32)
    api = simulate(d / "b", [{"x": x} for x in xs])
    np.save(d / "x.npy", xs)                                   # a stack of 3 samples
    np.savez(d / "in.npz", x=xs.reshape(3, 3, 16, 16))         # batch-1 model: 3 rows = 3 samples
    for args in (["--input", d / "x.npy"], ["--inputs", d / "in.npz"]):
        code, out, err = _cli(["simulate", d / "b.xbc", *args, "-o", d / "out.npz", "-q"], capsys)
        assert code == 0, err
        assert "simulated 3 samples" in out
        got = np.load(d / "out.npz")
        np.testing.assert_array_equal(got["logits"], api.outputs["logits"])
        assert got["logits"].shape == (3, 10)


def test_cli_images(tiny_bundle, capsys):
    from PIL import Image

    d, _ = tiny_bundle
    img_dir = d / "imgs"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, size=(2, 20, 24, 3), dtype=np.uint8)
    for i in range(2):
        Image.fromarray(pix[i]).save(img_dir / f"im{i}.png")
    (img_dir / "notes.txt").write_text("not an image")
    code, out, err = _cli(["simulate", d / "b", "--images", img_dir, "--compare", "-o", d / "img.npz"], capsys)
    assert code == 0, err
    assert "simulated 2 samples" in out and "top-1 agreement:" in out
    # the CLI preprocesses exactly like compile's --calibration DIR (xbc.calibration)
    from xbc.calibration import load_calibration
    imgs = load_calibration(img_dir, read_bundle(d / "b").graph)["x"]
    assert imgs.shape == (2, 3, 16, 16)
    want = simulate(d / "b", [{"x": imgs[i:i + 1]} for i in range(2)]).outputs["logits"]
    np.testing.assert_array_equal(np.load(d / "img.npz")["logits"], want)


def test_cli_compare_finds_recorded_model_and_prints_layers(tiny_bundle, capsys):
    d, model = tiny_bundle
    code, out, err = _cli(["simulate", d / "b", "--random", "3", "--compare", "--mode", "bit-serial"], capsys)
    assert code == 0, err
    c = compare(d / "b", [{"x": np.random.default_rng(s).standard_normal((1, 3, 16, 16)).astype(np.float32)}
                          for s in range(3)], model=model)
    assert f"top-1 agreement: {round(3 * c.top1)}/3" in out
    assert f"output logits: SQNR {c.sqnr_db:.1f} dB, cosine {c.cosine:.6f}" in out
    for lf in c.layers:
        assert lf.layer_id in out and f"{lf.sqnr_db:.1f}" in out
    code, out, err = _cli(["simulate", d / "b", "--random", "2", "--compare", "--json"], capsys)
    rep = json.loads(out)
    assert rep["compare"]["top1_agreement"] is not None and len(rep["compare"]["layers"]) == 4


@pytest.mark.parametrize("args, msg", [
    (["--inputs", "missing.npz"], "cannot read an .npz"),
    (["--random", "0"], "positive number"),
    (["--adc-bits", "0"], "out of range"),
    (["--input", "x.npy", "--images", "."], "only one of"),
    (["--compare", "--model", "nothere.onnx"], "does not exist"),
])
def test_cli_errors(tiny_bundle, capsys, args, msg):
    d, _ = tiny_bundle
    np.save(d / "x.npy", np.zeros((1, 3, 16, 16), np.float32))
    code, out, err = _cli(["simulate", d / "b", *[d / a if a.endswith((".npz", ".npy")) else a for a in args]], capsys)
    assert code == 2 and msg in err and "Traceback" not in err


def test_cli_wrong_npz_names_the_input(tiny_bundle, capsys):
    d, _ = tiny_bundle
    np.savez(d / "bad.npz", image=np.zeros((1, 3, 16, 16), np.float32))
    code, _, err = _cli(["simulate", d / "b", "--inputs", d / "bad.npz"], capsys)
    assert code == 2 and "no array for input(s) x" in err
    np.save(d / "bad.npy", np.zeros((1, 3, 15, 16), np.float32))
    code, _, err = _cli(["simulate", d / "b", "--input", d / "bad.npy"], capsys)
    assert code == 2 and "[1, 3, 15, 16]" in err and "[1, 3, 16, 16]" in err


def test_bench_sim_rows(tiny_bundle):
    from xbc.backends.sim.bench import bench_sim, format_rows

    d, model = tiny_bundle
    rep = bench_sim(model, "mars", samples=1, exhaustive=True)
    assert [r["mode"] for r in rep["rows"]] == ["bit-serial", "ideal", "bit-serial (exhaustive)"]
    assert rep["ort_ms_per_image"] > 0 and rep["sim_ms_per_image"] > 0
    assert rep["ratio"] == pytest.approx(rep["rows"][0]["ms_per_image"] / rep["ort_ms_per_image"], rel=0.02)
    assert len({r["conversions_per_image"] for r in rep["rows"]}) == 1
    assert "onnxruntime float model" in format_rows(rep)
    # as xbc bench calls it: a bundle path and its feeds; the float model is found next to it
    feeds = [ortutil.random_inputs(model, seed=1)]
    rep = bench_sim(d / "b", feeds=feeds, modes=("bit-serial",))
    assert rep["samples"] == 1 and rep["target"] == "sme" and rep["ort_ms_per_image"] > 0


def test_quantize_input_is_qmath():
    from xbc import qmath

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 3,
                        (np.arange(-40, 40) * 0.0625 + 0.03125).astype(np.float32)])   # exact .5 ties
    for scale, zp, bits in ((0.0625, 7, 8), (0.013, 128, 8), (1e-3, 40000, 16), (0.5, 0, 2)):
        np.testing.assert_array_equal(quantize_input(x, scale, zp, bits), qmath.quantize_input(x, scale, zp, bits))


def test_block_diagonal_crossbars_through_a_bundle(tmp_path):
    """Rows of several groups stacked in one crossbar (block-diagonal sharing), programmed by the
    independent reference programmer, written and read back as a bundle: still exact."""
    from xbc.backends.sim.testing import hand_compile

    for name in ("grouped_conv", "depthwise_conv", "grouped_conv_transpose"):
        model = all_crossbar_models()[name]
        feeds = [ortutil.random_inputs(model, seed=s) for s in range(2)]
        res = hand_compile(model, "bitslice", feeds, share_groups=True)
        write_bundle(res, tmp_path / name)
        b = read_bundle(tmp_path / name)
        spec = next(iter(b.layers.values()))
        rg = spec.program.row_group
        assert max(len(set(r[r >= 0].tolist())) for r in rg) > 1
        out = simulate(b, feeds[0], mode="bit-serial", adc_bits=16, record=True)
        np.testing.assert_array_equal(out.layer_acc[spec.id], integer_reference(spec, out.layer_inputs[spec.id]))


def test_cells_matrix_equals_rebuild_matrix_and_rejects_bad_cells():
    import dataclasses

    from xbc.backends.sim.engine import cells_matrix
    from xbc.errors import BundleError
    from xbc.layer import rebuild_matrix

    for name, kw in (("conv2d_grouped", dict(encoding="offset", cell_bits=2)), ("conv3d_grouped", {}),
                     ("gemm_transB", dict(cell_bits=3)), ("convT2d_grouped_dilated", dict(cell_bits=2))):
        spec, _ = _case_spec(name, rows=12, cols=10, **kw)
        p = spec.program
        np.testing.assert_array_equal(cells_matrix(p, spec.groups, spec.rows, spec.cols),
                                      rebuild_matrix(p, spec.groups, spec.rows, spec.cols))
    spec, _ = _case_spec("conv2d_grouped", rows=12, cols=10)
    p = spec.program
    x, j = np.argwhere(p.col_sign != 0)[0]
    bad = dataclasses.replace(p, row_group=p.row_group.copy(), cells=p.cells.copy())
    i = int(np.flatnonzero(bad.cells[x, :, j])[0])
    bad.row_group[x, i] = -1                                   # a programmed cell on an unused row
    with pytest.raises(BundleError, match="unused row"):
        cells_matrix(bad, spec.groups, spec.rows, spec.cols)
    bad = dataclasses.replace(p, row_group=p.row_group.copy())
    bad.row_group[x, i] = (p.row_group[x, i] + 1) % spec.groups  # joins two groups
    with pytest.raises(BundleError, match="different groups"):
        cells_matrix(bad, spec.groups, spec.rows, spec.cols)
