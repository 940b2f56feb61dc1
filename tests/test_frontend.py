"""The ONNX frontend: reading, opsets, shape folding, cleanup, canonical crossbar ops, prequantized
models. Every rewrite is checked against onnxruntime on the original model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import frontend_models as fm
from graphs import tiny_cnn
from xbc import ortutil
from xbc.errors import ModelError
from xbc.frontend import load_model, mark_layers, onnx_to_ir, prepare_model
from xbc.ir import verify
from xbc.layer import channel_vector_to_matrix, to_matrix
from xbc.passes.cleanup import Cleanup, cleanup_graph
from xbc.passmanager import PassContext, PassManager
from xbc.targets import load as load_target

RTOL, ATOL = 1e-5, 1e-6

EXPECTED_LAYERS = {
    "resnet_bottleneck": {"conv": 3},
    "mobilenet_v2_block": {"conv": 3},
    "yolo_block": {"conv": 4},
    "transformer_block": {"matmul": 7},
    "lstm": {"gemm": 1},
    "dynamic_batch": {"conv": 1, "gemm": 1},
    "constant_nodes": {"conv": 1, "matmul": 1},
    "batchnorm": {"conv": 1},
    "hardswish": {"conv": 2},
    "gemm_variants": {"gemm": 3, "matmul": 1},
    "conv_autopad": {"conv": 4, "conv_transpose": 3},
    "opset11": {"conv": 1, "gemm": 1},
    "subgraphs": {"conv": 1},
    "contrib": {"matmul": 2},
    "qdq": {"conv": 1, "matmul": 1},
}
MODELS = fm.all_roundtrip_models()


def _compare(original: onnx.ModelProto, exported: onnx.ModelProto, shapes=None, seeds=(0, 1), rtol=RTOL, atol=ATOL):
    for seed in seeds:
        feeds = ortutil.random_inputs(original, seed=seed, shapes=shapes)
        ref = ortutil.run(original, feeds)
        got = ortutil.run(exported, feeds, list(ref))
        for name in ref:
            assert got[name].shape == ref[name].shape, name
            assert got[name].dtype == ref[name].dtype, name
            np.testing.assert_allclose(got[name], ref[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_roundtrip_matches_onnxruntime(name):
    model, shapes = MODELS[name]
    g = load_model(model, shapes)
    verify(g)
    kinds = Counter(n.layer.kind for n in g.layers())
    assert dict(kinds) == EXPECTED_LAYERS[name]
    for n in g.nodes:  # every value concrete, no leftovers of cleanup
        assert n.op_type not in ("Constant", "Dropout"), n
        for o in n.outputs:
            assert o.shape is not None and all(isinstance(d, int) for d in o.shape), o
    exported = g.to_onnx()
    onnx.checker.check_model(exported)
    assert [o.name for o in exported.graph.output] == [o.name for o in model.graph.output]
    _compare(model, exported, shapes)


def _layers(g):
    return {n.name: n for n in g.layers()}


def test_layer_matrices_of_cnn_blocks():
    g = load_model(MODELS["mobilenet_v2_block"][0])
    got = {n.name: (n.layer.groups, n.layer.rows, n.layer.cols) for n in g.layers()}
    assert got == {"expand": (1, 16, 64), "depthwise": (64, 9, 1), "project": (1, 64, 16)}
    g = load_model(MODELS["conv_autopad"][0])
    got = {n.name: (n.layer.kind, n.layer.groups, n.layer.rows, n.layer.cols) for n in g.layers()}
    assert got["conv1d"] == ("conv", 1, 6, 5)            # 1-D kernel: 2 channels x 3 taps
    assert got["conv3d"] == ("conv", 1, 36, 3)           # 3-D kernel: 2 x 2*3*3
    assert got["ct_output_shape"] == ("conv_transpose", 2, 18, 2)
    for n in g.layers():
        assert n.layer.bias_input == (2 if len(n.inputs) > 2 else None)


def test_autopad_and_output_shape_resolved_to_pads():
    g = load_model(MODELS["conv_autopad"][0])
    L = _layers(g)
    for n in L.values():
        assert "auto_pad" not in n.attrs and "output_shape" not in n.attrs
    assert L["same_upper"].attrs["pads"] == [1, 1, 1, 1]      # in 9, k3, s2 -> out 5: total 2
    assert L["same_lower"].attrs["pads"] == [2, 2, 1, 1]      # k4, s1: total 3, extra at the start
    assert L["ct_same_upper"].attrs["pads"] == [1, 1, 1, 1]   # k4, s2, 5 -> 10: total 2
    assert L["ct_same_lower"].attrs["pads"] == [1, 1, 0, 0]   # k3, s2, 10 -> 20: total 1 at the start
    assert L["ct_output_shape"].attrs["pads"] == [1, 1, 0, 0]  # 20 -> 40 (natural 41): total 1
    assert L["conv1d"].attrs["pads"] == [1, 1]
    assert L["conv3d"].attrs["pads"] == [0, 0, 0, 0, 0, 0]


def test_convtranspose_output_shape_larger_than_natural_uses_output_padding():
    r = np.random.default_rng(0)
    W = r.standard_normal((3, 2, 3, 3)).astype(np.float32)
    n = helper.make_node("ConvTranspose", ["x", "W"], ["y"], name="ct", strides=[2, 2], output_shape=[12, 12])
    m = fm.make([n], [fm._vi("x", [1, 3, 5, 5])], [fm._vi("y", [1, 2, 12, 12])], [fm._t("W", W)])
    g = load_model(m)
    ct = _layers(g)["ct"]
    assert ct.attrs["pads"] == [0, 0, 0, 0] and ct.attrs["output_padding"] == [1, 1]
    _compare(m, g.to_onnx())


def test_dynamic_batch_shape_subgraph_folds():
    model, shapes = MODELS["dynamic_batch"]
    with pytest.raises(ModelError, match=r"input 'x' has dynamic dimensions \(N,3,8,8\).*--input-shape x=1,3,8,8"):
        load_model(model)
    g = load_model(model, {"x": (2, 3, 8, 8)})
    ops = Counter(n.op_type for n in g.nodes)
    for op in ("Shape", "Gather", "Unsqueeze", "Concat", "ConstantOfShape"):
        assert op not in ops
    reshape = next(n for n in g.nodes if n.op_type == "Reshape")
    assert reshape.inputs[1].const.tolist() == [2, -1]
    assert g.outputs[0].shape == (2, 10)
    g3 = load_model(model, {"x": (3, 3, 8, 8)})
    assert g3.outputs[0].shape == (3, 10)
    _compare(model, g3.to_onnx(), {"x": (3, 3, 8, 8)})
    with pytest.raises(ModelError, match="dimension is fixed to 3"):
        load_model(model, {"x": (2, 4, 8, 8)})
    with pytest.raises(ModelError, match="names 'input'"):
        load_model(model, {"input": (2, 3, 8, 8)})


def test_constant_nodes_become_weights():
    model = MODELS["constant_nodes"][0]
    g = load_model(model)
    L = _layers(g)
    cw = next(n for n in model.graph.node if n.output[0] == "cw")
    np.testing.assert_array_equal(L["conv"].inputs[1].const, numpy_helper.to_array(cw.attribute[0].t))
    # the sparse_value weight is densified exactly
    sw = next(n for n in model.graph.node if n.output[0] == "sw").attribute[0].sparse_tensor
    dense = np.zeros((96, 5), np.float32)
    dense.reshape(-1)[numpy_helper.to_array(sw.indices)] = numpy_helper.to_array(sw.values)
    np.testing.assert_array_equal(L["fc"].inputs[1].const, dense)
    assert L["conv"].inputs[2].const.dtype == np.float32 and L["conv"].inputs[2].const.shape == (6,)
    assert "labels" not in g.values  # unused string constant dropped


def test_identity_and_dropout_removed_outputs_keep_names():
    model = MODELS["hardswish"][0]
    g = load_model(model)
    ops = Counter(n.op_type for n in g.nodes)
    assert "Identity" not in ops and "Dropout" not in ops
    assert [v.name for v in g.outputs] == ["y"]
    assert g.outputs[0].producer.name == "c2"     # the conv now writes 'y' directly
    # Dropout in training mode is random: it stays
    n = [helper.make_node("Dropout", ["x", "ratio", "train"], ["d"], name="drop"), helper.make_node("Relu", ["d"], ["y"])]
    m = fm.make(n, [fm._vi("x", [2, 3])], [fm._vi("y", [2, 3])],
                [fm._t("ratio", np.array(0.5, np.float32)), fm._t("train", np.array(True))])
    assert [x.op_type for x in load_model(m).nodes] == ["Dropout", "Relu"]


def test_subgraph_outer_references_are_kept():
    model = MODELS["subgraphs"][0]
    g = load_model(model)
    names = {n.name for n in g.nodes}
    assert "keep_identity" in names            # its output 'h' is read inside the If branches
    assert g.values["h"].producer.name == "keep_identity"
    assert g.values["outer_c"].const is not None
    exported = g.to_onnx()
    inits = {t.name for t in exported.graph.initializer}
    assert {"outer_c", "loop_w"} <= inits      # read only by subgraphs, still exported
    g.remove_unused()
    assert "keep_identity" in {n.name for n in g.nodes} and "loop_w" in g.values
    g.topo_sort()
    verify(g)


def test_matmul_constant_left_is_canonical():
    g = load_model(MODELS["transformer_block"][0])
    mix = _layers(g)["token_mix"]
    W = numpy_helper.to_array(next(t for t in MODELS["transformer_block"][0].graph.initializer if t.name == "mix_w"))
    np.testing.assert_array_equal(mix.inputs[1].const, W.T)
    assert mix.inputs[0].producer.op_type == "Transpose" and mix.inputs[0].producer.attrs["perm"] == [0, 2, 1]
    (user, _), = mix.outputs[0].uses
    assert user.op_type == "Transpose" and user.attrs["perm"] == [0, 2, 1]
    assert (mix.layer.rows, mix.layer.cols) == (8, 8) and mix.layer.weight_input == 1
    # 1-D right operand: just x @ W^T
    g = load_model(MODELS["gemm_variants"][0])
    left = _layers(g)["matmul_left_1d"]
    assert left.inputs[0].name == "v" and left.inputs[1].const.shape == (12, 5)


def test_gemm_canonical_forms():
    model = MODELS["gemm_variants"][0]
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    g = load_model(model)
    L = _layers(g)
    a = L["gemm_transA"]
    assert "alpha" not in a.attrs and "transA" not in a.attrs and "beta" not in a.attrs
    np.testing.assert_array_equal(a.inputs[1].const, init["w1"] * np.float32(0.5))
    assert a.inputs[0].producer.op_type == "Transpose" and len(a.inputs) == 2 and a.layer.bias_input is None
    (add, _), = a.outputs[0].uses
    assert add.op_type == "Add"
    np.testing.assert_array_equal(add.inputs[1].const, init["c_full"] * np.float32(2.0))
    s = L["gemm_scalar_c"]
    np.testing.assert_array_equal(s.inputs[2].const, np.full(7, np.float32(0.3) * np.float32(0.5)))
    assert s.layer.bias_input == 2 and s.attrs["transB"] == 1
    d = L["gemm_dyn_c"]
    (add, _), = d.outputs[0].uses
    assert add.op_type == "Add" and add.inputs[1].producer.op_type == "Mul"
    assert "matmul_rank3" not in L                 # rank-3 constant: digital


def test_opset11_model_is_converted():
    model = MODELS["opset11"][0]
    g = load_model(model)
    assert g.opset_imports[""] == 17
    sq = next(n for n in g.nodes if n.op_type == "Squeeze")
    assert "axes" not in sq.attrs and sq.inputs[1].const.tolist() == [2, 3]


def test_qdq_weights_fold_with_prequant():
    model = MODELS["qdq"][0]
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    g = load_model(model)
    L = _layers(g)
    conv, fc = L["qconv"], L["qfc"]
    p = conv.layer.prequant
    np.testing.assert_array_equal(p["w_int"], init["w_int"].astype(np.int32))
    np.testing.assert_array_equal(p["w_scale"], init["w_scale"].astype(np.float64))
    np.testing.assert_array_equal(p["w_zero_point"], np.zeros(6, np.int32))
    assert p["w_int"].dtype == np.int32 and p["w_scale"].dtype == np.float64
    W = conv.inputs[1].const
    np.testing.assert_array_equal(W, init["w_int"].astype(np.float32) * init["w_scale"][:, None, None, None])
    # the bias DequantizeLinear folded too
    np.testing.assert_array_equal(conv.inputs[2].const, (init["b_int"].astype(np.float32) * init["b_scale"]))
    # DequantizeLinear -> Transpose weight (TF style): prequant follows the transpose
    q = fc.layer.prequant
    np.testing.assert_array_equal(q["w_int"], init["m_int"].T.astype(np.int32))
    np.testing.assert_array_equal(q["w_scale"], np.full(5, float(init["m_scale"])))
    np.testing.assert_array_equal(fc.inputs[1].const, (init["m_int"].astype(np.float32) * init["m_scale"]).T)
    # activation Q/DQ stay digital ops
    assert Counter(n.op_type for n in g.nodes)["QuantizeLinear"] == 2


def test_qlinear_and_integer_ops_rewritten():
    model = fm.qlinear_model()
    g = load_model(model)
    ops = Counter(n.op_type for n in g.nodes)
    for op in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"):
        assert op not in ops
    L = {n.meta.get("prequant_from"): n for n in g.layers()}
    assert set(L) == {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    p = L["QLinearConv"].layer.prequant
    np.testing.assert_array_equal(p["w_int"], init["w"].astype(np.int32))
    np.testing.assert_array_equal(p["w_scale"], init["ws"].astype(np.float64))
    np.testing.assert_array_equal(L["QLinearConv"].inputs[2].const,
                                  (init["B"] * float(init["xs"]) * init["ws"].astype(np.float64)).astype(np.float32))
    p = L["ConvInteger"].layer.prequant
    np.testing.assert_array_equal(p["w_zero_point"], np.full(3, 121))
    np.testing.assert_array_equal(L["ConvInteger"].inputs[1].const, init["ci_w"].astype(np.float32) - 121)
    assert L["QLinearConv"].outputs[0].uses[0][0].op_type == "QuantizeLinear"
    exported = g.to_onnx()
    # 7-bit weights keep onnxruntime's u8s8 kernels exact, so the float rewrite matches exactly
    # except where a value sits on a rounding boundary: allow one quantization step
    for seed in range(3):
        feeds = ortutil.random_inputs(model, seed=seed)
        ref, got = ortutil.run(model, feeds), ortutil.run(exported, feeds)
        for k in ref:
            assert got[k].dtype == ref[k].dtype
            diff = np.abs(got[k].astype(np.int64) - ref[k].astype(np.int64))
            assert diff.max() <= 1, k
            assert (diff == 0).mean() >= 0.98, k


def test_matmulinteger_rewrite_is_exact_on_full_range():
    """Against exact integer arithmetic (numpy), full 8-bit range, per-column weight zero points."""
    r = np.random.default_rng(3)
    A = r.integers(0, 256, (4, 64)).astype(np.uint8)
    B = r.integers(0, 256, (64, 6)).astype(np.uint8)
    bz = r.integers(100, 150, 6).astype(np.uint8)
    n = [helper.make_node("MatMulInteger", ["a", "B", "az", "bz"], ["y"], name="mmi")]
    m = fm.make(n, [fm._vi("a", [4, 64], TensorProto.UINT8)], [fm._vi("y", [4, 6], TensorProto.INT32)],
                [fm._t("B", B), fm._t("az", np.array(7, np.uint8)), fm._t("bz", bz)])
    g = load_model(m)
    got = ortutil.run(g.to_onnx(), {"a": A})["y"]
    exact = (A.astype(np.int64) - 7) @ (B.astype(np.int64) - bz.astype(np.int64))
    np.testing.assert_array_equal(got, exact)
    p = next(g.layers()).layer.prequant
    np.testing.assert_array_equal(p["w_zero_point"], bz.astype(np.int32))


def test_contrib_op_shapes_from_onnxruntime():
    g = load_model(MODELS["contrib"][0])
    gelu = next(n for n in g.nodes if n.op_type == "Gelu")
    assert gelu.domain == "com.microsoft" and gelu.outputs[0].shape == (2, 10)
    assert g.outputs[0].shape == (2, 4)


def test_data_dependent_shape_is_an_error():
    with pytest.raises(ModelError, match=r"value 'nz' produced by node 'nonzero' \(NonZero\).*--input-shape"):
        load_model(fm.data_dependent_model())


def test_bad_weights_name_the_node():
    with pytest.raises(ModelError, match=r"node 'bad_conv' \(Conv\): weight 'W' has 1 NaN value"):
        load_model(fm.nan_weight_model())
    W = np.ones((4, 3), np.float32)
    W[0, 0] = np.inf
    m = fm.make([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], [fm._vi("x", [1, 4])],
                [fm._vi("y", [1, 3])], [fm._t("W", W)])
    with pytest.raises(ModelError, match=r"node 'fc' \(MatMul\): weight 'W' has 1 Inf"):
        load_model(m)
    m = fm.make([helper.make_node("MatMul", ["x", "W"], ["y"], name="empty_fc")], [fm._vi("x", [1, 4])],
                [fm._vi("y", [1, 0])], [fm._t("W", np.zeros((4, 0), np.float32))])
    with pytest.raises(ModelError, match=r"node 'empty_fc' \(MatMul\) has an empty weight 'W'"):
        load_model(m)


def test_opset_and_domain_errors():
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    io = ([fm._vi("x", [2])], [fm._vi("y", [2])])
    m = fm.make(relu, *io, check=False)
    m.opset_import[0].version = 99
    with pytest.raises(ModelError, match=r"opset 99 is newer than supported .*re-export"):
        load_model(m)
    custom = [helper.make_node("MyOp", ["x"], ["y"], domain="com.acme")]
    m = fm.make(custom, *io, extra_opsets=[("com.acme", 1)], check=False)
    with pytest.raises(ModelError, match=r"custom op domain 'com.acme' \(nodes MyOp\)"):
        load_model(m)
    ln = [helper.make_node("LayerNormalization", ["x", "s"], ["y"], name="ln")]
    m = fm.make(ln, *io, [fm._t("s", np.ones(2, np.float32))], opset=13, check=False)
    with pytest.raises(ModelError, match=r"'LayerNormalization', which opset 13 .* newer opsets"):
        load_model(m)
    m = fm.make([helper.make_node("Frobnicate", ["x"], ["y"], name="f")], *io, check=False)
    with pytest.raises(ModelError, match="not an ONNX operator"):
        load_model(m)


def test_external_data(tmp_path):
    model = fm.resnet_bottleneck()
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    path = tmp_path / "m.onnx"
    onnx.save(fm.resnet_bottleneck(), str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.weights",
              size_threshold=0)
    g = load_model(path)
    for n in g.layers():
        np.testing.assert_array_equal(n.inputs[1].const, init[n.inputs[1].name])
    _compare(model, g.to_onnx())
    data = (tmp_path / "m.weights").read_bytes()
    (tmp_path / "m.weights").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"'m.weights' is too short"):
        load_model(path)
    (tmp_path / "m.weights").unlink()
    with pytest.raises(ModelError, match=r"external data file 'm.weights' for tensor '\w+' is missing"):
        load_model(path)


def test_unreadable_files(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n")
    with pytest.raises(ModelError, match="notes.onnx"):
        load_model(bad)
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(MODELS["resnet_bottleneck"][0].SerializeToString()[:1500])
    with pytest.raises(ModelError, match="trunc.onnx"):
        load_model(trunc)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")


def test_fold_limit_keeps_big_activations_unfolded():
    b = [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=fm._t("v", np.array([1.0], np.float32))),
         helper.make_node("Add", ["x", "big"], ["y"])]
    m = fm.make(b, [fm._vi("x", [4, 64])], [fm._vi("y", [4, 64])], [fm._t("shape", np.array([4, 64], np.int64))])
    g = onnx_to_ir(prepare_model(m))
    cleanup_graph(g, fold_limit=100)
    assert [n.op_type for n in g.nodes] == ["ConstantOfShape", "Add"]
    cleanup_graph(g)
    assert [n.op_type for n in g.nodes] == ["Add"]
    # a weight is folded whatever its size: DequantizeLinear feeding a MatMul
    w = np.arange(-32, 32, dtype=np.int8).reshape(8, 8)
    b = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"]), helper.make_node("MatMul", ["x", "wf"], ["y"])]
    m = fm.make(b, [fm._vi("x", [1, 8])], [fm._vi("y", [1, 8])], [fm._t("w", w), fm._t("s", np.array(0.5, np.float32))])
    g = onnx_to_ir(prepare_model(m))
    cleanup_graph(g, fold_limit=10)
    assert [n.op_type for n in g.nodes] == ["MatMul"]
    assert g.nodes[0].inputs[1].meta["prequant"]["w_int"].tolist() == w.tolist()


def test_cleanup_pass_in_a_pipeline():
    m = MODELS["constant_nodes"][0]
    g = onnx_to_ir(prepare_model(m))                   # raw IR: Constant nodes, unknown shapes
    assert "Constant" in {n.op_type for n in g.nodes}
    ctx = PassContext(target=load_target("sme"))
    (res,) = PassManager("cleanup", verify=False).run(g, ctx)
    assert res.changed and res.stats["constants"] == 7 and res.stats["removed_identity"] == 1
    assert "Constant" not in {n.op_type for n in g.nodes}
    mark_layers(g)
    verify(g)
    _compare(m, g.to_onnx())
    (res,) = PassManager("cleanup").run(g, ctx)          # a fixed point: nothing more to do
    assert not res.changed
    assert Cleanup(fold_limit=5).spec() == "cleanup{fold-limit=5}"


def test_tiny_cnn_layers_and_speed_path():
    m = tiny_cnn()
    g = load_model(m)
    assert [(n.name, n.layer.kind, n.layer.groups, n.layer.rows, n.layer.cols) for n in g.layers()] == [
        ("conv1", "conv", 1, 27, 16), ("dw2", "conv", 16, 9, 1), ("pw3", "conv", 4, 4, 8), ("fc", "gemm", 1, 32, 10)]
    ids = [n.layer.id for n in g.layers()]
    assert len(set(ids)) == 4
    _compare(m, g.to_onnx())


class _Calib:
    """onnxruntime.quantization calibration reader: a few deterministic inputs."""

    def __init__(self, shape):
        rng = np.random.default_rng(0)
        self.data = iter([{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(3)])

    def get_next(self):
        return next(self.data, None)


@pytest.mark.parametrize("fmt", ["qdq", "qoperator", "dynamic"])
def test_models_from_onnxruntime_quantizer(tmp_path, fmt):
    """Real quantization-tool output (per channel, u8 activations, s8 weights). reduce_range (7-bit
    weights) keeps onnxruntime's own u8s8 integer kernels free of int16 saturation; with it the
    float rewrite matches onnxruntime to float rounding."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static

    class Calib(_Calib, CalibrationDataReader):
        pass

    for name, model, shape, n_layers in (("bottleneck", fm.resnet_bottleneck(), (1, 32, 8, 8), 3),
                                         ("encoder", fm.transformer_block(), (1, 8, 16), 7),
                                         ("mlp", fm.gemm_mlp(), (2, 16), 2)):
        src, dst = tmp_path / f"{name}.onnx", tmp_path / f"{name}_{fmt}.onnx"
        onnx.save(model, str(src))
        if fmt == "dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, reduce_range=True, per_channel=False)
        else:
            quantize_static(str(src), str(dst), Calib(shape), per_channel=True, reduce_range=True,
                            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        q = onnx.load(str(dst))
        g = load_model(dst)
        layers = list(g.layers())
        quantized = sum(1 for n in q.graph.node if n.op_type in ("QLinearConv", "QLinearMatMul", "ConvInteger",
                                                                   "MatMulInteger", "QGemm"))
        if name == "mlp" and fmt == "qoperator":   # onnxruntime's contrib QGemm, read back as a layer
            assert sum(n.op_type == "QGemm" and n.domain == "com.microsoft" for n in q.graph.node) == 2
            assert sum(n.meta.get("prequant_from") == "QGemm" for n in g.layers()) == 2
        assert len(layers) == n_layers, (name, fmt)
        with_prequant = [n for n in layers if n.layer.prequant is not None]
        if fmt != "qdq":
            assert len(with_prequant) >= quantized - 2  # only activation x activation MatMuls are not layers
        assert with_prequant, (name, fmt)
        for n in with_prequant:
            p = n.layer.prequant
            W = n.inputs[1].const
            assert p["w_int"].shape == W.shape and p["w_scale"].shape == (n.layer.groups * n.layer.cols,)
            # the float weight is exactly the dequantized integer weight, per output channel
            L = n.layer
            Mi = to_matrix(L.kind, p["w_int"], L.groups, n.attrs).astype(np.float64)
            zp = channel_vector_to_matrix(p["w_zero_point"], L.groups)
            sc = channel_vector_to_matrix(p["w_scale"], L.groups)
            np.testing.assert_allclose((Mi - zp) * sc, to_matrix(L.kind, W, L.groups, n.attrs), rtol=1e-6, atol=0)
        if fmt != "dynamic":
            _compare(q, g.to_onnx(), seeds=(0,), atol=1e-5)
            continue
        # dynamic quantization: the run-time activation quantization is dropped (a crossbar's DAC
        # codes are static; quantize sets them); every MatMulInteger is a float layer with the
        # exactly dequantized weight, so the IR follows the float model up to weight rounding
        assert "MatMulInteger" not in {n.op_type for n in g.nodes}
        assert all(n.meta.get("prequant_from", "").endswith("(dynamic)") for n in with_prequant)
        for seed in (0, 1):
            feeds = ortutil.random_inputs(model, seed=seed)
            ref = ortutil.run(model, feeds)
            got = ortutil.run(g.to_onnx(), feeds, list(ref))
            for k in ref:
                assert ortutil.sqnr_db(ref[k], got[k]) > 30.0, (name, k)


def _edge_models():
    r = np.random.default_rng(0)
    f32 = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    Hs = 4
    lstm = fm.make([helper.make_node("LSTM", ["x", "W", "R"], ["", "Y_h"], hidden_size=Hs),
                    helper.make_node("Relu", ["Y_h"], ["y"])],
                   [fm._vi("x", [3, 1, 2])], [fm._vi("y", [1, 1, Hs])],
                   [fm._t("W", f32(1, 4 * Hs, 2)), fm._t("R", f32(1, 4 * Hs, Hs))])
    seq = fm.make([helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1),
                   helper.make_node("ConcatFromSequence", ["seq"], ["c"], axis=0),
                   helper.make_node("MatMul", ["c", "W"], ["y"])],
                  [fm._vi("x", [2, 3])], [fm._vi("y", [6, 4])], [fm._t("W", f32(1, 4))])
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "one"], ["s_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["s_out"], ["scan"])], "body",
        [fm._vi("i", [], TensorProto.INT64), fm._vi("cond_in", [], TensorProto.BOOL), fm._vi("s_in", [2])],
        [fm._vi("cond_out", [], TensorProto.BOOL), fm._vi("s_out", [2]), fm._vi("scan", [2])])
    loop = fm.make([helper.make_node("Loop", ["M", "", "x"], ["final", "scans"], body=body),
                    helper.make_node("MatMul", ["scans", "W"], ["y"], name="mm")],
                   [fm._vi("x", [2])], [fm._vi("y", ["n", 3]), fm._vi("final", [2])],
                   [fm._t("M", np.array(4, np.int64)), fm._t("one", np.array(1.0, np.float32)), fm._t("W", f32(2, 3))])
    resize = fm.make([helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
                      helper.make_node("Shape", ["a"], ["sh"]), helper.make_node("Mul", ["sh", "two"], ["sz"]),
                      helper.make_node("Resize", ["b", "", "", "sz"], ["y"], mode="linear")],
                     [fm._vi("x", [1, 4, 3, 3])], [fm._vi("y", ["a", "b", "c", "d"])],
                     [fm._t("two", np.array([1, 1, 2, 2], np.int64))], opset=18)
    pool = fm.make([helper.make_node("MaxPool", ["x"], ["p", ""], kernel_shape=[2, 2]),
                    helper.make_node("Conv", ["p", "W"], ["y"])],
                   [fm._vi("x", [1, 2, 4, 4])], [fm._vi("y", [1, 3, 3, 3])], [fm._t("W", f32(3, 2, 1, 1))])
    fp16 = fm.make([helper.make_node("Gemm", ["x", "W", "C"], ["y"], alpha=0.5, transB=1)],
                   [fm._vi("x", [2, 4], TensorProto.FLOAT16)], [fm._vi("y", [2, 3], TensorProto.FLOAT16)],
                   [fm._t("W", f32(3, 4).astype(np.float16)), fm._t("C", f32(3).astype(np.float16))])
    new = fm.make([helper.make_node("Conv", ["x", "W"], ["y"], name="c")], [fm._vi("x", [1, 2, 3, 3])],
                  [fm._vi("y", [1, 3, 3, 3])], [fm._t("W", f32(3, 2, 1, 1))], opset=23, ir_version=11)
    dyn_bias = fm.make([helper.make_node("Relu", ["b"], ["rb"]), helper.make_node("Conv", ["x", "W", "rb"], ["y"], name="c")],
                       [fm._vi("x", [1, 2, 3, 3]), fm._vi("b", [3])], [fm._vi("y", [1, 3, 3, 3])],
                       [fm._t("W", f32(3, 2, 1, 1))])
    return {"conv_dynamic_bias": (dyn_bias, 1),
            "lstm_omitted_output": (lstm, 0), "sequence": (seq, 1), "loop_scan_output": (loop, 1),
            "resize_sizes_from_shape": (resize, 0), "maxpool_omitted_indices": (pool, 1), "fp16_gemm": (fp16, 1),
            "opset23": (new, 1)}


EDGE = _edge_models()


@pytest.mark.parametrize("name", sorted(EDGE))
def test_edge_models_roundtrip(name):
    model, n_layers = EDGE[name]
    g = load_model(model)
    verify(g)
    assert sum(1 for _ in g.layers()) == n_layers
    exported = g.to_onnx()
    for n, pn in zip(g.nodes, exported.graph.node):
        assert list(pn.output).count("") == sum(1 for o in n.outputs if o.meta.get("omitted"))
    _compare(model, exported, atol=1e-3 if name == "fp16_gemm" else ATOL)


def test_opset_newer_than_onnxruntime_is_an_error():
    from xbc.frontend import max_supported_opset

    top = max_supported_opset()
    assert top >= 21
    m = fm.make([helper.make_node("Relu", ["x"], ["y"])], [fm._vi("x", [2])], [fm._vi("y", [2])],
                opset=top + 1, ir_version=11, check=False)
    with pytest.raises(ModelError, match=rf"opset {top + 1} is newer than supported .* up to {top}\)"):
        load_model(m)


def test_ir_version_newer_than_onnxruntime_reads():
    """A file written by an onnx newer than the installed onnxruntime (only the IR version
    number differs): xbc loads it, and its own onnxruntime runs (calibration, reference) work."""
    from xbc.compiler import compile_model
    from xbc.frontend import max_supported_ir_version

    model = MODELS["resnet_bottleneck"][0]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.ir_version = max_supported_ir_version() + 3
    g = load_model(m, MODELS["resnet_bottleneck"][1])
    assert g.to_onnx().ir_version <= max_supported_ir_version()
    feeds = ortutil.random_inputs(model, seed=0, shapes=MODELS["resnet_bottleneck"][1])
    ref = ortutil.run(model, feeds)
    got = ortutil.run(m, feeds)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])
    assert m.ir_version == max_supported_ir_version() + 3      # the caller's proto is unchanged
    compile_model(m, "sme", input_shapes=MODELS["resnet_bottleneck"][1] or None)


def test_gemm_on_a_vector_is_an_error():
    m = fm.make([helper.make_node("Gemm", ["x", "W"], ["y"], name="fc_vec", transB=1)],
                [fm._vi("x", [4])], [fm._vi("y", [1, 3])], [fm._t("W", np.ones((3, 4), np.float32))])
    with pytest.raises(ModelError, match="fc_vec.*2-D"):
        load_model(m)
