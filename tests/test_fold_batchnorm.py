"""fold-batchnorm: the folded graph computes what the original did (onnxruntime, rtol 1e-4), the
affine ops are gone where they can fold, and every refusal is reported with its reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphs
from xbc import ortutil
from xbc.compiler import compile_model
from xbc.frontend import load_model
from xbc.passmanager import PassContext, PassManager
from xbc.targets import load as load_target

RNG = np.random.default_rng(123)


def _t(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _bn_params(prefix, c, rng):
    return [_t(prefix + "_g", rng.uniform(0.5, 1.5, c).astype(np.float32)),
            _t(prefix + "_b", (rng.standard_normal(c) * 0.1).astype(np.float32)),
            _t(prefix + "_m", (rng.standard_normal(c) * 0.1).astype(np.float32)),
            _t(prefix + "_v", rng.uniform(0.5, 1.5, c).astype(np.float32))]


def _bn(x, y, prefix, name="bn"):
    return helper.make_node("BatchNormalization", [x, prefix + "_g", prefix + "_b", prefix + "_m", prefix + "_v"],
                            [y], name=name, epsilon=1e-3)


def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _fold(model, pipeline="fold-batchnorm"):
    res = compile_model(model, "sme", pipeline=pipeline)
    return res, res.graph.to_onnx()


def _same_outputs(m0, m1, seed=0):
    feeds = ortutil.random_inputs(m0, seed=seed)
    a = ortutil.run(m0, feeds)
    b = ortutil.run(m1, feeds)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-4 * float(np.abs(a[k]).max()))


def _ops(res):
    return [n.op_type for n in res.graph.nodes]


def _infos(res):
    return [d.message for d in res.ctx.diagnostics if d.level == "info" and d.pass_name == "fold-batchnorm"]


# ---------------------------------------------------------------------------------------- models

def convtranspose_bn(groups=2):
    rng = np.random.default_rng(1)
    cin, cout = 8, 6
    W = graphs.trained_like(rng, (cin, cout // groups, 3, 3), out_axis=1)
    nodes = [helper.make_node("ConvTranspose", ["x", "W"], ["c"], name="deconv", strides=[2, 2], pads=[1, 1, 1, 1],
                              output_padding=[1, 1], group=groups, kernel_shape=[3, 3]),
             _bn("c", "y", "bn")]
    return _model(nodes, [_vi("x", [1, cin, 5, 5])], [_vi("y", [1, cout, 10, 10])], [_t("W", W)] + _bn_params("bn", cout, rng))


def gemm_bn(trans_b=1, with_c=True):
    rng = np.random.default_rng(2)
    k, n = 20, 12
    W = graphs.trained_like(rng, (n, k) if trans_b else (k, n), out_axis=0 if trans_b else 1)
    ins = ["x", "W"] + (["C"] if with_c else [])
    inits = [_t("W", W)] + ([_t("C", (rng.standard_normal(n) * 0.1).astype(np.float32))] if with_c else [])
    nodes = [helper.make_node("Gemm", ins, ["z"], name="fc", transB=trans_b), _bn("z", "y", "bn")]
    return _model(nodes, [_vi("x", [3, k])], [_vi("y", [3, n])], inits + _bn_params("bn", n, rng))


def matmul_bn(with_add=False):
    rng = np.random.default_rng(3)
    k, n = 16, 10
    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"], name="mm")]
    inits = [_t("W", graphs.trained_like(rng, (k, n), out_axis=1))]
    last = "z"
    if with_add:
        inits.append(_t("bias", (rng.standard_normal(n) * 0.1).astype(np.float32)))
        nodes.append(helper.make_node("Add", ["z", "bias"], ["za"], name="bias_add"))
        last = "za"
    nodes.append(_bn(last, "y", "bn"))
    return _model(nodes, [_vi("x", [4, k])], [_vi("y", [4, n])], inits + _bn_params("bn", n, rng))


def conv_mul_add(scalar=False, sub_div=False):
    """Paddle-style BN: Conv -> Mul(per channel or scalar) -> Add(per channel) [-> Sub -> Div] -> Relu."""
    rng = np.random.default_rng(4)
    c = 8
    inits = [_t("W", graphs.trained_like(rng, (c, 4, 3, 3)))]
    mshape = () if scalar else (1, c, 1, 1)
    inits.append(_t("s", rng.uniform(0.5, 1.5, mshape).astype(np.float32)))
    inits.append(_t("a", (rng.standard_normal((c, 1, 1)) * 0.1).astype(np.float32)))
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Mul", ["s", "c"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "a"], ["ad"], name="add")]
    last = "ad"
    if sub_div:
        inits += [_t("k", (rng.standard_normal(c) * 0.1).astype(np.float32).reshape(c, 1, 1)),
                  _t("d", rng.uniform(0.5, 2.0, (c, 1, 1)).astype(np.float32))]
        nodes += [helper.make_node("Sub", ["k", last], ["sb"], name="sub"),
                  helper.make_node("Div", ["sb", "d"], ["dv"], name="div")]
        last = "dv"
    nodes.append(helper.make_node("Relu", [last], ["y"], name="relu"))
    return _model(nodes, [_vi("x", [1, 4, 6, 6])], [_vi("y", [1, c, 6, 6])], inits)


# ---------------------------------------------------------------------------------------- folds

@pytest.mark.parametrize("name", ["tiny_cnn", "conv_bn", "conv_bn_nobias", "depthwise_bn", "grouped_bn"])
def test_shared_models_fold_and_agree(name):
    m = {"tiny_cnn": graphs.tiny_cnn(seed=5),
         "conv_bn": graphs.conv_model(bn=True, seed=6),
         "conv_bn_nobias": graphs.conv_model(bn=True, bias=False, relu=False, seed=7),
         "depthwise_bn": graphs.conv_model(cin=8, cout=8, groups=8, bn=True, seed=8),
         "grouped_bn": graphs.conv_model(cin=8, cout=12, groups=4, bn=True, seed=9)}[name]
    res, m1 = _fold(m)
    assert "BatchNormalization" not in _ops(res)
    assert res.ctx.stats["fold-batchnorm"]["folded"] == 1
    _same_outputs(m, m1)
    # the bias the fold created is the layer's bias input
    for node in res.graph.layers():
        if node.layer.bias_input is not None:
            assert node.inputs[node.layer.bias_input].const.shape == (node.layer.out_channels,)


@pytest.mark.parametrize("groups", [1, 2])
def test_convtranspose_bn(groups):
    m = convtranspose_bn(groups)
    res, m1 = _fold(m)
    assert _ops(res) == ["ConvTranspose"]
    node = next(res.graph.layers())
    assert node.layer.bias_input == 2
    _same_outputs(m, m1)


@pytest.mark.parametrize("trans_b,with_c", [(1, True), (0, True), (1, False)])
def test_gemm_bn(trans_b, with_c):
    m = gemm_bn(trans_b, with_c)
    res, m1 = _fold(m)
    assert _ops(res) == ["Gemm"]
    _same_outputs(m, m1)


@pytest.mark.parametrize("with_add", [False, True])
def test_matmul_bn_gets_bias_add(with_add):
    m = matmul_bn(with_add)
    res, m1 = _fold(m)
    assert _ops(res) == ["MatMul", "Add"]
    add = res.graph.nodes[1]
    assert add.inputs[1].const is not None and add.inputs[1].const.shape == (10,)
    assert res.graph.outputs[0].name == "y"
    _same_outputs(m, m1)


@pytest.mark.parametrize("scalar,sub_div", [(False, False), (True, False), (False, True)])
def test_mul_add_chains(scalar, sub_div):
    m = conv_mul_add(scalar, sub_div)
    res, m1 = _fold(m)
    assert _ops(res) == ["Conv", "Relu"]
    assert res.ctx.stats["fold-batchnorm"]["folded"] == (4 if sub_div else 2)
    _same_outputs(m, m1)


def test_bn_graph_output_keeps_its_name():
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", kernel_shape=[1, 1]), _bn("c", "out", "bn")]
    inits = [_t("W", graphs.trained_like(rng, (6, 3, 1, 1))), _t("B", np.zeros(6, np.float32))] + _bn_params("bn", 6, rng)
    m = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("out", [1, 6, 4, 4])], inits)
    res, m1 = _fold(m)
    assert _ops(res) == ["Conv"] and [o.name for o in m1.graph.output] == ["out"]
    _same_outputs(m, m1)


def test_fold_through_identity():
    """The frontend removes Identity nodes; put one back between the conv and the BN."""
    m = graphs.conv_model(bn=True, relu=True, seed=13)
    g = load_model(m)
    conv = next(g.layers())
    bn = next(n for n in g.nodes if n.op_type == "BatchNormalization")
    c_out = conv.outputs[0]
    ident = g.make_node("Identity", [c_out], name="ident", after=conv, shapes=[c_out.shape],
                        elem_types=[c_out.elem_type])
    bn.set_input(0, ident.outputs[0])
    before = g.to_onnx()
    ctx = PassContext(target=load_target("sme"))
    PassManager("fold-batchnorm").run(g, ctx)
    assert [n.op_type for n in g.nodes] == ["Conv", "Relu"]
    _same_outputs(before, g.to_onnx())


# ---------------------------------------------------------------------------------------- refusals

def _refusal(nodes, inputs, outputs, inits, must_have: str):
    m = _model(nodes, inputs, outputs, inits)
    res, m1 = _fold(m)
    infos = _infos(res)
    assert any(must_have in s for s in infos), infos
    assert res.ctx.stats["fold-batchnorm"]["kept"], res.ctx.stats
    _same_outputs(m, m1)
    return res


def test_refuse_shared_weight():
    rng = np.random.default_rng(20)
    inits = [_t("W", graphs.trained_like(rng, (6, 3, 1, 1)))] + _bn_params("bn", 6, rng)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c1"], name="conv1", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["x", "W"], ["c2"], name="conv2", kernel_shape=[1, 1]),
             _bn("c1", "b1", "bn"), helper.make_node("Add", ["b1", "c2"], ["y"], name="add")]
    res = _refusal(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 6, 4, 4])], inits, "is shared by 2 nodes")
    assert "BatchNormalization" in _ops(res)


def test_refuse_output_with_other_consumers():
    rng = np.random.default_rng(21)
    inits = [_t("W", graphs.trained_like(rng, (6, 3, 1, 1)))] + _bn_params("bn", 6, rng)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", kernel_shape=[1, 1]),
             _bn("c", "b", "bn"), helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["b", "r"], ["y"], name="add")]
    _refusal(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 6, 4, 4])], inits, "has other consumers")


def test_refuse_nonconstant_weight():
    rng = np.random.default_rng(22)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]), _bn("c", "y", "bn")]
    _refusal(nodes, [_vi("x", [1, 3, 4, 4]), _vi("w", [6, 3, 1, 1])], [_vi("y", [1, 6, 4, 4])],
             _bn_params("bn", 6, rng), "non-constant weight")


def test_refuse_not_per_channel_broadcast():
    rng = np.random.default_rng(23)
    inits = [_t("W", graphs.trained_like(rng, (6, 3, 1, 1))), _t("s", rng.uniform(0.5, 1.5, (1, 1, 4, 4)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("Mul", ["c", "s"], ["y"], name="mul")]
    res = _refusal(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 6, 4, 4])], inits, "does not broadcast per output channel")
    assert "Mul" in _ops(res)


def test_refuse_bn_after_residual_add_and_wrong_axis():
    rng = np.random.default_rng(24)
    inits = _bn_params("bn", 3, rng) + _bn_params("bn2", 5, rng) + [_t("W", graphs.trained_like(rng, (4, 6), out_axis=1))]
    nodes = [helper.make_node("Add", ["x", "x"], ["a"], name="residual"), _bn("a", "y", "bn"),
             helper.make_node("MatMul", ["x3", "W"], ["z"], name="mm"), _bn("z", "y2", "bn2", name="bn_mm")]
    res = _refusal(nodes, [_vi("x", [1, 3, 4, 4]), _vi("x3", [2, 5, 4])], [_vi("y", [1, 3, 4, 4]), _vi("y2", [2, 5, 6])],
                   inits, "not from a Conv/ConvTranspose/Gemm/MatMul")
    assert any("normalizes axis 1" in s for s in _infos(res))
    assert _ops(res).count("BatchNormalization") == 2


def test_no_change_without_affine_ops():
    m = graphs.gemm_model(seed=3)
    res, _ = _fold(m)
    assert res.results[0].changed is False
    assert res.ctx.stats["fold-batchnorm"]["folded"] == 0
