"""Small real ONNX graphs built in code, shared by the tests.

Weights are drawn like trained weights: Laplace (heavy-tailed) with a log-normal scale per
output channel, so bit planes and quantization behave as on real models. Every builder is
deterministic in its ``seed`` and returns an ``onnx.ModelProto`` (opset 17) that passes
``onnx.checker``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def trained_like(rng: np.random.Generator, shape: tuple, out_axis: int = 0) -> np.ndarray:
    """Laplace weights with a log-normal per-output-channel scale (like trained conv weights)."""
    w = rng.laplace(0.0, 1.0, size=shape)
    scale_shape = [1] * len(shape)
    scale_shape[out_axis] = shape[out_axis]
    fan_in = int(np.prod(shape)) // shape[out_axis]
    scale = rng.lognormal(0.0, 0.35, size=scale_shape) / np.sqrt(2.0 * fan_in)
    return (w * scale).astype(np.float32)


def _model(nodes, inputs, outputs, inits, name="g"):
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="xbc-tests")
    m.ir_version = 8
    # fill unknown output shapes from shape inference so the model checks
    inferred = onnx.shape_inference.infer_shapes(m)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in m.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            out.type.CopyFrom(known[out.name].type)
    onnx.checker.check_model(m)
    return m


def _t(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _vi(name, shape, et=TensorProto.FLOAT):
    if shape is None:  # unknown shape: leave it to shape inference
        vi = helper.make_empty_tensor_value_info(name)
        vi.type.tensor_type.elem_type = et
        return vi
    return helper.make_tensor_value_info(name, et, shape)


def conv_model(cin=16, cout=32, k=3, groups=1, stride=1, dilation=1, pad=1, hw=8, bias=True,
               bn=False, relu=True, seed=0) -> onnx.ModelProto:
    """x -> Conv(group, stride, dilation, pads) [-> BatchNormalization] [-> Relu]."""
    rng = np.random.default_rng(seed)
    W = trained_like(rng, (cout, cin // groups, k, k))
    inits = [_t("W", W)]
    ins = ["x", "W"]
    if bias:
        inits.append(_t("B", (rng.standard_normal(cout) * 0.1).astype(np.float32)))
        ins.append("B")
    nodes = [helper.make_node("Conv", ins, ["c"], name="conv", group=groups, strides=[stride, stride],
                              dilations=[dilation, dilation], pads=[pad] * 4, kernel_shape=[k, k])]
    last = "c"
    if bn:
        inits += [_t("g", rng.uniform(0.5, 1.5, cout).astype(np.float32)),
                  _t("b", (rng.standard_normal(cout) * 0.1).astype(np.float32)),
                  _t("m", (rng.standard_normal(cout) * 0.1).astype(np.float32)),
                  _t("v", rng.uniform(0.5, 1.5, cout).astype(np.float32))]
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], name="bn", epsilon=1e-5))
        last = "bn"
    if relu:
        nodes.append(helper.make_node("Relu", [last], ["y"], name="relu"))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"], name="id"))
    return _model(nodes, [_vi("x", [1, cin, hw, hw])], [_vi("y", None)], inits, "conv")


def depthwise_model(c=16, k=3, stride=1, hw=8, seed=0) -> onnx.ModelProto:
    return conv_model(cin=c, cout=c, k=k, groups=c, stride=stride, hw=hw, seed=seed)


def gemm_model(k=64, n=10, trans_b=True, alpha=1.0, beta=1.0, batch=2, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    W = trained_like(rng, (n, k) if trans_b else (k, n), out_axis=0 if trans_b else 1)
    C = (rng.standard_normal(n) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="fc", transB=int(trans_b), alpha=alpha, beta=beta)]
    return _model(nodes, [_vi("x", [batch, k])], [_vi("y", None)], [_t("W", W), _t("C", C)], "gemm")


def matmul_model(k=32, n=24, m=5, left=False, seed=0) -> onnx.ModelProto:
    """MatMul with the constant on the right (x[.., m, k] @ W[k, n]) or on the left (W[n, k] @ x[.., k, m])."""
    rng = np.random.default_rng(seed)
    if left:
        W = trained_like(rng, (n, k), out_axis=0)
        nodes = [helper.make_node("MatMul", ["W", "x"], ["y"], name="mm")]
        x = _vi("x", [2, k, m])
    else:
        W = trained_like(rng, (k, n), out_axis=1)
        nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
        x = _vi("x", [2, m, k])
    return _model(nodes, [x], [_vi("y", None)], [_t("W", W)], "matmul")


def conv_transpose_model(cin=8, cout=6, k=3, stride=2, groups=1, hw=5, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    W = trained_like(rng, (cin, cout // groups, k, k), out_axis=1)
    B = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    nodes = [helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], name="deconv", strides=[stride, stride],
                              pads=[1, 1, 1, 1], output_padding=[1, 1], group=groups, kernel_shape=[k, k])]
    return _model(nodes, [_vi("x", [1, cin, hw, hw])], [_vi("y", None)], [_t("W", W), _t("B", B)], "deconv")


def tiny_cnn(seed=0, num_classes=10) -> onnx.ModelProto:
    """conv3x3+BN+relu -> depthwise3x3 s2 + relu6 -> conv1x1 (grouped) -> residual-free pool -> Gemm.

    A small classifier covering dense, depthwise and grouped conv, unfused BN, Clip, pooling and
    a Gemm with transB, on a 1x3x16x16 input.
    """
    rng = np.random.default_rng(seed)
    inits = []
    nodes = []

    def add(name, arr):
        inits.append(_t(name, arr))
        return name

    add("w1", trained_like(rng, (16, 3, 3, 3)))
    add("b1", (rng.standard_normal(16) * 0.1).astype(np.float32))
    nodes.append(helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
    for n, v in (("g1", rng.uniform(0.5, 1.5, 16)), ("be1", rng.standard_normal(16) * 0.1),
                 ("m1", rng.standard_normal(16) * 0.1), ("v1", rng.uniform(0.5, 1.5, 16))):
        add(n, v.astype(np.float32))
    nodes.append(helper.make_node("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["n1"], name="bn1"))
    nodes.append(helper.make_node("Relu", ["n1"], ["r1"], name="relu1"))
    add("w2", trained_like(rng, (16, 1, 3, 3)))
    nodes.append(helper.make_node("Conv", ["r1", "w2"], ["c2"], name="dw2", group=16, strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
    add("lo", np.array(0.0, np.float32))
    add("hi", np.array(6.0, np.float32))
    nodes.append(helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6"))
    add("w3", trained_like(rng, (32, 4, 1, 1)))
    add("b3", (rng.standard_normal(32) * 0.1).astype(np.float32))
    nodes.append(helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="pw3", group=4, kernel_shape=[1, 1]))
    nodes.append(helper.make_node("Relu", ["c3"], ["r3"], name="relu3"))
    nodes.append(helper.make_node("GlobalAveragePool", ["r3"], ["p"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["p"], ["f"], name="flat", axis=1))
    add("wf", trained_like(rng, (num_classes, 32)))
    add("bf", (rng.standard_normal(num_classes) * 0.1).astype(np.float32))
    nodes.append(helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1))
    return _model(nodes, [_vi("x", [1, 3, 16, 16])], [_vi("logits", [1, num_classes])], inits, "tiny_cnn")


def all_crossbar_models() -> dict[str, onnx.ModelProto]:
    """One small model per crossbar op kind (the conservation / bit-exactness test set)."""
    return {
        "dense_conv": conv_model(cin=24, cout=40, k=3, hw=6, seed=1),
        "grouped_conv": conv_model(cin=16, cout=32, k=3, groups=4, hw=6, seed=2),
        "depthwise_conv": depthwise_model(c=24, k=3, stride=2, hw=8, seed=3),
        "strided_dilated_conv": conv_model(cin=8, cout=12, k=3, stride=2, dilation=2, pad=2, hw=9, seed=4),
        "big_conv": conv_model(cin=64, cout=96, k=3, hw=4, seed=5),
        "gemm_transB": gemm_model(k=200, n=30, trans_b=True, seed=6),
        "gemm": gemm_model(k=40, n=12, trans_b=False, alpha=0.5, beta=2.0, seed=7),
        "matmul_right": matmul_model(k=48, n=20, seed=8),
        "matmul_left": matmul_model(k=36, n=16, left=True, seed=9),
        "conv_transpose": conv_transpose_model(seed=10),
        "grouped_conv_transpose": conv_transpose_model(cin=8, cout=8, groups=2, seed=11),
        "tiny_cnn": tiny_cnn(seed=12),
    }
