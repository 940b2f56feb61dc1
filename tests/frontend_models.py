"""Small real-world-shaped ONNX models for the frontend tests, built with onnx.helper.

Each builder is deterministic (``seed``) and returns an ``onnx.ModelProto`` that passes
``onnx.checker`` and runs in onnxruntime. They mimic what exporters write: PyTorch (Gemm
transB, Constant nodes, Shape subgraphs for dynamic batch, Identity/Dropout, constant-left
MatMul), TF2ONNX (auto_pad, Transpose of weights), quantization tools (QDQ, QLinearConv,
ConvInteger / MatMulInteger) and old opsets.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphs import trained_like

F = TensorProto.FLOAT


def _t(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _vi(name, shape, et=F):
    return helper.make_tensor_value_info(name, et, shape)


def make(nodes, inputs, outputs, inits=(), *, opset=17, name="g", ir_version=None, extra_opsets=(),
         check=True) -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    m = helper.make_model(g, opset_imports=ops, producer_name="xbc-tests")
    m.ir_version = ir_version or (8 if opset <= 17 else 9)
    if check:
        onnx.checker.check_model(m)
    return m


class _B:
    """Collects nodes and initializers."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []
        self.n = 0

    def init(self, name, arr):
        self.inits.append(_t(name, arr))
        return name

    def node(self, op, ins, outs=None, **attrs):
        self.n += 1
        name = attrs.pop("name", f"{op.lower()}{self.n}")
        outs = outs or [f"{name}_out"]
        self.nodes.append(helper.make_node(op, ins, outs, name=name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def conv(self, x, cin, cout, k=3, stride=1, groups=1, pad=None, bias=True, name=None, **attrs):
        name = name or f"conv{self.n + 1}"
        w = self.init(name + "_w", trained_like(self.rng, (cout, cin // groups, k, k)))
        ins = [x, w]
        if bias:
            ins.append(self.init(name + "_b", (self.rng.standard_normal(cout) * 0.1).astype(np.float32)))
        if pad is None and "auto_pad" not in attrs:
            pad = k // 2
        if pad is not None:
            attrs["pads"] = [pad] * 4
        return self.node("Conv", ins, name=name, kernel_shape=[k, k], strides=[stride, stride], group=groups,
                         **attrs)

    def bn(self, x, c, name=None):
        name = name or f"bn{self.n + 1}"
        r = self.rng
        ins = [x] + [self.init(f"{name}_{s}", a.astype(np.float32)) for s, a in (
            ("g", r.uniform(0.5, 1.5, c)), ("b", r.standard_normal(c) * 0.1),
            ("m", r.standard_normal(c) * 0.1), ("v", r.uniform(0.5, 1.5, c)))]
        return self.node("BatchNormalization", ins, name=name, epsilon=1e-5)

    def silu(self, x):
        return self.node("Mul", [x, self.node("Sigmoid", [x])])


# ----------------------------------------------------------------------------------------
# CNN blocks
# ----------------------------------------------------------------------------------------

def resnet_bottleneck(c=32, mid=8, hw=8, seed=0) -> onnx.ModelProto:
    """1x1 -> 3x3 -> 1x1 bottleneck (the last conv with an unfused BN) + residual Add + Relu."""
    b = _B(seed)
    h = b.node("Relu", [b.conv("x", c, mid, k=1, name="conv_a")])
    h = b.node("Relu", [b.conv(h, mid, mid, k=3, name="conv_b")])
    h = b.bn(b.conv(h, mid, c, k=1, bias=False, name="conv_c"), c)
    y = b.node("Relu", [b.node("Add", [h, "x"], name="residual")], ["y"])
    return make(b.nodes, [_vi("x", [1, c, hw, hw])], [_vi("y", [1, c, hw, hw])], b.inits, name="bottleneck")


def mobilenet_v2_block(c=16, t=4, hw=8, seed=1) -> onnx.ModelProto:
    """Inverted residual: expand 1x1 + ReLU6 (Clip) -> depthwise 3x3 + ReLU6 -> project 1x1 -> Add."""
    b = _B(seed)
    lo = b.init("relu6_lo", np.array(0.0, np.float32))
    hi = b.init("relu6_hi", np.array(6.0, np.float32))
    e = c * t
    h = b.node("Clip", [b.conv("x", c, e, k=1, name="expand"), lo, hi])
    h = b.node("Clip", [b.conv(h, e, e, k=3, groups=e, name="depthwise"), lo, hi])
    h = b.conv(h, e, c, k=1, name="project")
    b.node("Add", [h, "x"], ["y"])
    return make(b.nodes, [_vi("x", [1, c, hw, hw])], [_vi("y", [1, c, hw, hw])], b.inits, name="mbv2")


def yolo_block(c=8, hw=8, seed=2) -> onnx.ModelProto:
    """C2f-like block with SiLU (Sigmoid*x), Split, Concat, SPPF MaxPools and a nearest Resize x2."""
    b = _B(seed)
    h = b.silu(b.conv("x", c, 2 * c, k=3, name="stem"))
    s1, s2 = b.node("Split", [h, b.init("split_sizes", np.array([c, c], np.int64))], ["s1", "s2"], axis=1)
    br = b.silu(b.conv(s2, c, c, k=3, name="branch"))
    h = b.node("Concat", [s1, s2, br], axis=1)
    h = b.silu(b.conv(h, 3 * c, c, k=1, name="fuse"))
    p1 = b.node("MaxPool", [h], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])
    p2 = b.node("MaxPool", [p1], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])
    h = b.node("Concat", [h, p1, p2], axis=1)
    h = b.silu(b.conv(h, 3 * c, c, k=1, name="sppf_out"))
    b.node("Resize", [h, "", b.init("scales", np.array([1, 1, 2, 2], np.float32))], ["y"], mode="nearest")
    return make(b.nodes, [_vi("x", [1, c, hw, hw])], [_vi("y", [1, c, 2 * hw, 2 * hw])], b.inits, name="yolo")


def hardswish_model(c=8, hw=6, seed=3) -> onnx.ModelProto:
    """Conv -> HardSwish -> Dropout -> (HardSigmoid gate) -> Conv -> Identity (graph output)."""
    b = _B(seed)
    h = b.node("HardSwish", [b.conv("x", 4, c, k=3, name="c1")])
    h, _mask = b.node("Dropout", [h], ["drop", "mask"], name="dropout")
    gate = b.node("HardSigmoid", [b.node("GlobalAveragePool", [h])], alpha=0.2, beta=0.5)
    h = b.node("Mul", [h, gate])
    h = b.conv(h, c, c, k=1, name="c2")
    b.node("Identity", [h], ["y"], name="out_identity")
    return make(b.nodes, [_vi("x", [1, 4, hw, hw])], [_vi("y", [1, c, hw, hw])], b.inits, name="hswish")


def batchnorm_model(c=6, hw=5, seed=4) -> onnx.ModelProto:
    """Conv without bias -> unfused BatchNormalization; plus a BN on the input (no conv producer)."""
    b = _B(seed)
    h = b.bn("x", 3, name="bn_in")
    h = b.conv(h, 3, c, k=3, bias=False, name="conv")
    b.nodes.append(helper.make_node("BatchNormalization", [h] + [b.init(f"bn_{s}", a.astype(np.float32)) for s, a in (
        ("g", b.rng.uniform(0.5, 1.5, c)), ("b", b.rng.standard_normal(c)), ("m", b.rng.standard_normal(c)),
        ("v", b.rng.uniform(0.5, 1.5, c)))], ["y"], name="bn_out", epsilon=1e-3))
    return make(b.nodes, [_vi("x", [1, 3, hw, hw])], [_vi("y", [1, c, hw, hw])], b.inits, name="bn")


def constant_nodes_model(seed=5) -> onnx.ModelProto:
    """Weights in Constant nodes, every value_* form (tensor, floats, ints, float, int, sparse)."""
    rng = np.random.default_rng(seed)
    W = trained_like(rng, (6, 3, 3, 3))
    nodes = [
        helper.make_node("Constant", [], ["cw"], value=_t("cw_t", W)),
        helper.make_node("Constant", [], ["cb"], value_floats=[float(v) for v in rng.standard_normal(6) * 0.1]),
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["half"], value_float=0.5),
        helper.make_node("Mul", ["c", "half"], ["m"]),
        helper.make_node("Constant", [], ["shape"], value_ints=[1, -1]),
        helper.make_node("Reshape", ["m", "shape"], ["flat"]),
    ]
    K, N = 6 * 4 * 4, 5
    dense = trained_like(rng, (K, N), out_axis=1)
    dense[np.abs(dense) < np.quantile(np.abs(dense), 0.7)] = 0.0  # 70% zeros, stored sparse
    nz = np.flatnonzero(dense)
    sparse = helper.make_sparse_tensor(_t("sw_values", dense.ravel()[nz]), _t("sw_indices", nz.astype(np.int64)),
                                       [K, N])
    nodes += [
        helper.make_node("Constant", [], ["sw"], sparse_value=sparse),
        helper.make_node("MatMul", ["flat", "sw"], ["mm"], name="fc"),
        helper.make_node("Constant", [], ["one_idx"], value_int=1),
        helper.make_node("Gather", ["mm", "one_idx"], ["g"], axis=1),
        helper.make_node("Constant", [], ["labels"], value_strings=[b"a", b"b"]),
        helper.make_node("Identity", ["g"], ["y"]),
    ]
    return make(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1])], [], name="constants")


# ----------------------------------------------------------------------------------------
# transformer / recurrent
# ----------------------------------------------------------------------------------------

def transformer_block(T=8, D=16, H=2, seed=6) -> onnx.ModelProto:
    """Pre-LN encoder block: LayerNorm, QKV MatMuls on constants, 2-head attention (Softmax),
    output projection, residuals, a token-mixing MatMul with a constant LEFT operand, FFN."""
    b = _B(seed)
    r = b.rng
    dh = D // H

    def ln(x, name):
        return b.node("LayerNormalization", [x, b.init(name + "_s", r.uniform(0.8, 1.2, D).astype(np.float32)),
                                             b.init(name + "_b", (r.standard_normal(D) * 0.1).astype(np.float32))],
                      name=name, axis=-1, epsilon=1e-5)

    def linear(x, k, n, name):
        mm = b.node("MatMul", [x, b.init(name + "_w", trained_like(r, (k, n), out_axis=1))], name=name)
        return b.node("Add", [mm, b.init(name + "_bias", (r.standard_normal(n) * 0.1).astype(np.float32))])

    def heads(x):
        h = b.node("Reshape", [x, b.init(f"hs{b.n}", np.array([0, 0, H, dh], np.int64))])
        return b.node("Transpose", [h], perm=[0, 2, 1, 3])

    xn = ln("x", "ln1")
    q, k, v = (heads(linear(xn, D, D, n)) for n in ("q", "k", "v"))
    s = b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 1, 3, 2])], name="scores")
    s = b.node("Div", [s, b.init("sqrt_dh", np.array(np.sqrt(dh), np.float32))])
    p = b.node("Softmax", [s], axis=-1)
    o = b.node("MatMul", [p, v], name="attn_v")
    o = b.node("Reshape", [b.node("Transpose", [o], perm=[0, 2, 1, 3]), b.init("merge", np.array([0, 0, D], np.int64))])
    h = b.node("Add", ["x", linear(o, D, D, "proj")])
    # token mixing (MLP-Mixer style): constant [T, T] matrix on the left of h[1, T, D]
    mix = b.node("MatMul", [b.init("mix_w", trained_like(r, (T, T), out_axis=0)), ln(h, "ln_mix")], name="token_mix")
    h = b.node("Add", [h, mix])
    f = b.node("Relu", [linear(ln(h, "ln2"), D, 2 * D, "ffn1")])
    b.node("Add", [h, linear(f, 2 * D, D, "ffn2")], ["y"])
    return make(b.nodes, [_vi("x", [1, T, D])], [_vi("y", [1, T, D])], b.inits, name="encoder")


def lstm_model(T=5, I=8, Hs=12, seed=7) -> onnx.ModelProto:
    """LSTM over a sequence, last hidden state -> Gemm classifier."""
    r = np.random.default_rng(seed)
    inits = [_t("W", (r.standard_normal((1, 4 * Hs, I)) * 0.3).astype(np.float32)),
             _t("R", (r.standard_normal((1, 4 * Hs, Hs)) * 0.3).astype(np.float32)),
             _t("B", (r.standard_normal((1, 8 * Hs)) * 0.1).astype(np.float32)),
             _t("fc_w", trained_like(r, (3, Hs))), _t("fc_b", np.zeros(3, np.float32)),
             _t("hshape", np.array([1, Hs], np.int64))]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "Y_h", "Y_c"], name="lstm", hidden_size=Hs),
             helper.make_node("Reshape", ["Y_h", "hshape"], ["h"]),
             helper.make_node("Gemm", ["h", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
    return make(nodes, [_vi("x", [T, 1, I])], [_vi("y", [1, 3]), _vi("Y", [T, 1, 1, Hs])], inits, name="lstm")


# ----------------------------------------------------------------------------------------
# dynamic shapes, external data, subgraphs
# ----------------------------------------------------------------------------------------

def dynamic_batch_model(seed=8) -> onnx.ModelProto:
    """Batch 'N' is symbolic; the flatten Reshape target is Concat(Shape(x)[0], -1) as PyTorch
    writes it; a ConstantOfShape/Expand pair also takes its shape from the Shape subgraph."""
    b = _B(seed)
    h = b.node("Relu", [b.conv("x", 3, 4, k=3, name="conv")])
    shp = b.node("Shape", ["x"])
    n = b.node("Gather", [shp, b.init("zero", np.array(0, np.int64))], axis=0)
    n1 = b.node("Unsqueeze", [n, b.init("ax0", np.array([0], np.int64))])
    tgt = b.node("Concat", [n1, b.init("minus1", np.array([-1], np.int64))], axis=0)
    flat = b.node("Reshape", [h, tgt], name="flatten")
    fc = b.node("Gemm", [flat, b.init("fc_w", trained_like(b.rng, (10, 4 * 8 * 8))),
                         b.init("fc_b", np.zeros(10, np.float32))], name="fc", transB=1)
    ones_shape = b.node("Concat", [n1, b.init("ten", np.array([10], np.int64))], axis=0)
    ones = b.node("ConstantOfShape", [ones_shape], value=_t("one", np.array([1.0], np.float32)))
    b.node("Add", [fc, ones], ["y"])
    return make(b.nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 10])], b.inits, name="dynbatch")


def subgraph_model(seed=9) -> onnx.ModelProto:
    """If and Loop whose bodies read outer values by name: an Identity output, a Constant node
    output and an initializer. None of them may be renamed or dropped."""
    r = np.random.default_rng(seed)
    b = _B(seed)
    c = b.conv("x", 2, 4, k=3, name="conv")
    b.node("Identity", [c], ["h"], name="keep_identity")          # read only inside the If branches
    b.nodes.append(helper.make_node("Constant", [], ["outer_c"], value=_t("oc", np.array(0.25, np.float32))))
    b.init("loop_w", (r.standard_normal((4, 1, 1)) * 0.5).astype(np.float32))  # read inside the Loop body
    b.node("ReduceSum", [c], ["total"], keepdims=0)
    b.node("Greater", ["total", b.init("zero_f", np.array(0.0, np.float32))], ["cond"])
    then_g = helper.make_graph([helper.make_node("Mul", ["h", "outer_c"], ["then_out"])], "then", [],
                               [_vi("then_out", [1, 4, 5, 5])])
    else_g = helper.make_graph([helper.make_node("Sub", ["h", "outer_c"], ["else_out"])], "else", [],
                               [_vi("else_out", [1, 4, 5, 5])])
    b.nodes.append(helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_g, else_branch=else_g))
    body = helper.make_graph(
        [helper.make_node("Mul", ["state_in", "loop_w"], ["scaled"]),
         helper.make_node("Add", ["scaled", "branch"], ["state_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [_vi("iter", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("state_in", [1, 4, 5, 5])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("state_out", [1, 4, 5, 5])])
    b.init("trip", np.array(3, np.int64))
    b.nodes.append(helper.make_node("Loop", ["trip", "", "branch"], ["looped"], name="loop", body=body))
    b.node("Relu", ["looped"], ["y"])
    return make(b.nodes, [_vi("x", [1, 2, 5, 5])], [_vi("y", [1, 4, 5, 5])], b.inits, name="subgraphs")


# ----------------------------------------------------------------------------------------
# crossbar op variants
# ----------------------------------------------------------------------------------------

def gemm_variants(seed=10) -> onnx.ModelProto:
    """Gemm with transA/alpha/beta and a [M,N] C (-> Add), a scalar C, a non-constant C; MatMul with
    a 1-D input on a constant left matrix; a MatMul with a rank-3 constant (stays digital)."""
    r = np.random.default_rng(seed)
    M, K, N = 3, 12, 7
    inits = [_t("w1", trained_like(r, (K, N), out_axis=1)), _t("c_full", r.standard_normal((M, N)).astype(np.float32)),
             _t("w2", trained_like(r, (N, N))), _t("c_scalar", np.array(0.3, np.float32)),
             _t("w3", trained_like(r, (N, N))),
             _t("w_left", trained_like(r, (5, K))),
             _t("w_batched", trained_like(r, (2, N, 4), out_axis=2))]
    nodes = [helper.make_node("Gemm", ["xT", "w1", "c_full"], ["g1"], name="gemm_transA", transA=1, alpha=0.5, beta=2.0),
             helper.make_node("Gemm", ["g1", "w2", "c_scalar"], ["g2"], name="gemm_scalar_c", transB=1, beta=0.5),
             helper.make_node("Gemm", ["g2", "w3", "g1"], ["g3"], name="gemm_dyn_c", beta=1.5),
             helper.make_node("MatMul", ["w_left", "v"], ["left1d"], name="matmul_left_1d"),
             helper.make_node("MatMul", ["g3", "w_batched"], ["batched"], name="matmul_rank3")]
    return make(nodes, [_vi("xT", [K, M]), _vi("v", [K])],
                [_vi("g3", [M, N]), _vi("left1d", [5]), _vi("batched", [2, M, 4])], inits, name="gemms")


def conv_autopad_model(seed=11) -> onnx.ModelProto:
    """auto_pad everywhere (TF2ONNX style): Conv SAME_UPPER s2, Conv SAME_LOWER, ConvTranspose
    SAME_UPPER k4 s2 and SAME_LOWER k3 s2, ConvTranspose with output_shape, a 1-D Conv (SAME_UPPER)
    and a 3-D Conv (VALID)."""
    r = np.random.default_rng(seed)
    b = _B(seed)
    h = b.conv("x", 3, 6, k=3, stride=2, auto_pad="SAME_UPPER", name="same_upper")     # 9 -> 5
    h = b.conv(h, 6, 6, k=4, auto_pad="SAME_LOWER", name="same_lower")                   # 5 -> 5
    wt1 = b.init("ct1_w", trained_like(r, (6, 4, 4, 4), out_axis=1))
    h = b.node("ConvTranspose", [h, wt1], name="ct_same_upper", strides=[2, 2], auto_pad="SAME_UPPER")   # 10
    wt2 = b.init("ct2_w", trained_like(r, (4, 4, 3, 3), out_axis=1))
    h2 = b.node("ConvTranspose", [h, wt2, b.init("ct2_b", np.ones(4, np.float32))], name="ct_same_lower",
                strides=[2, 2], auto_pad="SAME_LOWER")                                     # 20
    wt3 = b.init("ct3_w", trained_like(r, (4, 2, 3, 3), out_axis=1))
    b.node("ConvTranspose", [h2, wt3], ["y"], name="ct_output_shape", strides=[2, 2], output_shape=[40, 40], group=2)
    # 1-D and 3-D
    w1d = b.init("c1d_w", trained_like(r, (5, 2, 3)))
    b.node("Conv", ["s", w1d], ["y1d"], name="conv1d", strides=[2], auto_pad="SAME_UPPER")
    w3d = b.init("c3d_w", trained_like(r, (3, 2, 2, 3, 3)))
    b.node("Conv", ["v", w3d], ["y3d"], name="conv3d", auto_pad="VALID", dilations=[1, 2, 1])
    return make(b.nodes, [_vi("x", [1, 3, 9, 9]), _vi("s", [1, 2, 11]), _vi("v", [1, 2, 4, 7, 5])],
                [_vi("y", [1, 4, 40, 40]), _vi("y1d", [1, 5, 6]), _vi("y3d", [1, 3, 3, 3, 3])], b.inits,
                name="autopad")


def opset11_model(seed=12) -> onnx.ModelProto:
    """An opset-11 export: Squeeze/Unsqueeze/ReduceMean with axes attributes, Split with a split
    attribute, Clip with min/max inputs; converted to opset 17 by the frontend."""
    b = _B(seed)
    h = b.conv("x", 3, 8, k=3, name="conv")
    h = b.node("Clip", [h, b.init("lo", np.array(0.0, np.float32)), b.init("hi", np.array(6.0, np.float32))])
    a, c = b.node("Split", [h], ["sa", "sb"], axis=1, split=[4, 4])
    m = b.node("ReduceMean", [a], axes=[2, 3], keepdims=1)
    s = b.node("Squeeze", [m], axes=[2, 3])
    fc = b.node("Gemm", [s, b.init("fc_w", trained_like(b.rng, (5, 4))), b.init("fc_b", np.zeros(5, np.float32))],
                name="fc", transB=1)
    b.node("Unsqueeze", [fc], ["y"], axes=[0])
    b.node("Relu", [c], ["y2"])
    return make(b.nodes, [_vi("x", [1, 3, 6, 6])], [_vi("y", [1, 1, 5]), _vi("y2", [1, 4, 6, 6])], b.inits,
                opset=11, ir_version=6, name="opset11")


def contrib_model(seed=13) -> onnx.ModelProto:
    """A com.microsoft op (Gelu) that ONNX shape inference does not know, between two MatMuls."""
    r = np.random.default_rng(seed)
    inits = [_t("w1", trained_like(r, (6, 10), out_axis=1)), _t("w2", trained_like(r, (10, 4), out_axis=1))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="fc1"),
             helper.make_node("Gelu", ["a"], ["g"], name="gelu", domain="com.microsoft"),
             helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2")]
    return make(nodes, [_vi("x", [2, 6])], [helper.make_empty_tensor_value_info("y")], inits,
                extra_opsets=[("com.microsoft", 1)], name="contrib", check=False)


# ----------------------------------------------------------------------------------------
# quantized models
# ----------------------------------------------------------------------------------------

def qdq_model(seed=14) -> onnx.ModelProto:
    """QDQ (onnxruntime quantize_static style): activations Q->DQ, Conv weight int8 per channel
    with an int32 DQ bias, and a MatMul whose int8 per-tensor weight is DequantizeLinear ->
    Transpose (TF2ONNX style)."""
    r = np.random.default_rng(seed)
    cout, cin, k = 6, 3, 3
    Wf = trained_like(r, (cout, cin, k, k))
    w_scale = (np.abs(Wf).reshape(cout, -1).max(1) / 127).astype(np.float32)
    w_int = np.clip(np.round(Wf / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
    x_scale = np.float32(0.02)
    b_int = r.integers(-500, 500, cout).astype(np.int32)
    N, K = 5, cout * 4 * 4
    M = trained_like(r, (N, K))                                  # stored [N, K], transposed by the graph
    m_scale = np.float32(np.abs(M).max() / 127)
    m_int = np.clip(np.round(M / m_scale), -127, 127).astype(np.int8)
    inits = [_t("xs", np.array(x_scale)), _t("xz", np.array(128, np.uint8)),
             _t("w_int", w_int), _t("w_scale", w_scale), _t("w_zp", np.zeros(cout, np.int8)),
             _t("b_int", b_int), _t("b_scale", (x_scale * w_scale).astype(np.float32)), _t("b_zp", np.zeros(cout, np.int32)),
             _t("hs", np.array(0.05, np.float32)), _t("hz", np.array(0, np.uint8)),
             _t("m_int", m_int), _t("m_scale", np.array(m_scale)), _t("m_zp", np.array(0, np.int8)),
             _t("flat_shape", np.array([1, K], np.int64))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_int", "w_scale", "w_zp"], ["w_f"], axis=0),
             helper.make_node("DequantizeLinear", ["b_int", "b_scale", "b_zp"], ["b_f"], axis=0),
             helper.make_node("Conv", ["xd", "w_f", "b_f"], ["c"], name="qconv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "hs", "hz"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "hs", "hz"], ["rd"]),
             helper.make_node("Reshape", ["rd", "flat_shape"], ["flat"]),
             helper.make_node("DequantizeLinear", ["m_int", "m_scale", "m_zp"], ["m_f"]),
             helper.make_node("Transpose", ["m_f"], ["m_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["flat", "m_t"], ["y"], name="qfc")]
    return make(nodes, [_vi("x", [1, cin, 4, 4])], [_vi("y", [1, N])], inits, name="qdq")


def gemm_mlp(seed=16) -> onnx.ModelProto:
    """Two Gemm layers (transB=1 with bias; transB=0 with alpha and beta): onnxruntime's
    QOperator quantizer turns them into com.microsoft QGemm."""
    r = np.random.default_rng(seed)
    W1 = (r.standard_normal((32, 16)) * 0.2).astype(np.float32)
    b1 = (r.standard_normal(32) * 0.1).astype(np.float32)
    W2 = (r.standard_normal((32, 10)) * 0.2).astype(np.float32)
    b2 = (r.standard_normal(10) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Gemm", ["hr", "W2", "b2"], ["y"], name="fc2", alpha=0.5, beta=2.0)]
    return make(nodes, [_vi("x", [2, 16])], [_vi("y", [2, 10])],
                [_t("W1", W1), _t("b1", b1), _t("W2", W2), _t("b2", b2)], name="gemm_mlp")


def qlinear_model(seed=15) -> onnx.ModelProto:
    """QOperator format: QuantizeLinear -> QLinearConv (int8 per-channel weight, int32 bias) ->
    QLinearMatMul -> outputs in uint8; plus a dynamic-quantized branch DynamicQuantizeLinear ->
    MatMulInteger and a ConvInteger."""
    r = np.random.default_rng(seed)
    cout, cin = 6, 4
    w = r.integers(-63, 64, (cout, cin, 3, 3)).astype(np.int8)  # 7-bit: no u8s8 int16 saturation in ORT kernels
    ws = (r.uniform(0.5, 1.5, cout) * 0.004).astype(np.float32)
    B = r.integers(-2000, 2000, cout).astype(np.int32)
    K, N = cout * 4 * 4, 7
    m = r.integers(-63, 64, (K, N)).astype(np.int8)
    ci_w = r.integers(0, 256, (3, cin, 1, 1)).astype(np.uint8)
    inits = [_t("xs", np.array(0.03, np.float32)), _t("xz", np.array(120, np.uint8)),
             _t("w", w), _t("ws", ws), _t("wz", np.zeros(cout, np.int8)),
             _t("ys", np.array(0.05, np.float32)), _t("yz", np.array(100, np.uint8)), _t("B", B),
             _t("flat_shape", np.array([1, K], np.int64)),
             _t("m", m), _t("ms", np.array(0.002, np.float32)), _t("mz", np.array(0, np.int8)),
             _t("zs", np.array(0.1, np.float32)), _t("zz", np.array(128, np.uint8)),
             _t("ci_w", ci_w), _t("ci_wz", np.array(121, np.uint8)),
             _t("mi_w", r.integers(-63, 64, (cin, 5)).astype(np.int8)), _t("mi_wz", np.array(0, np.int8))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "B"], ["yq"],
                              name="qlinearconv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Reshape", ["yq", "flat_shape"], ["flatq"]),
             helper.make_node("QLinearMatMul", ["flatq", "ys", "yz", "m", "ms", "mz", "zs", "zz"], ["zq"],
                              name="qlinearmatmul"),
             # dynamic quantization branch
             helper.make_node("DynamicQuantizeLinear", ["x"], ["dq", "dq_s", "dq_z"]),
             helper.make_node("ConvInteger", ["dq", "ci_w", "dq_z", "ci_wz"], ["ci"], name="convinteger"),
             helper.make_node("Transpose", ["dq"], ["dq_t"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMulInteger", ["dq_t", "mi_w", "dq_z", "mi_wz"], ["mi"], name="matmulinteger")]
    return make(nodes, [_vi("x", [1, cin, 4, 4])],
                [_vi("yq", [1, cout, 4, 4], TensorProto.UINT8), _vi("zq", [1, N], TensorProto.UINT8),
                 _vi("ci", [1, 3, 4, 4], TensorProto.INT32), _vi("mi", [1, 4, 4, 5], TensorProto.INT32)],
                inits, name="qlinear")


# ----------------------------------------------------------------------------------------
# bad models
# ----------------------------------------------------------------------------------------

def nan_weight_model() -> onnx.ModelProto:
    W = np.ones((4, 3, 3, 3), np.float32)
    W[2, 1, 0, 0] = np.nan
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="bad_conv", pads=[1, 1, 1, 1])]
    return make(nodes, [_vi("x", [1, 3, 5, 5])], [_vi("y", [1, 4, 5, 5])], [_t("W", W)], name="nan")


def dynamic_input_model() -> onnx.ModelProto:
    W = np.ones((4, 3, 1, 1), np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv")]
    return make(nodes, [_vi("x", ["batch", 3, "H", "W"])], [_vi("y", ["batch", 4, "H", "W"])], [_t("W", W)],
                name="dyn")


def data_dependent_model() -> onnx.ModelProto:
    """NonZero makes the following shapes data-dependent."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"], name="nonzero"),
             helper.make_node("Transpose", ["nz"], ["nzt"], name="nz_t"),
             helper.make_node("Cast", ["nzt"], ["y"], to=F)]
    return make(nodes, [_vi("x", [3, 4])], [_vi("y", ["n", 2])], [], name="datadep")


def all_roundtrip_models() -> dict[str, tuple[onnx.ModelProto, dict]]:
    """name -> (model, input shapes) for the round-trip test."""
    return {
        "resnet_bottleneck": (resnet_bottleneck(), {}),
        "mobilenet_v2_block": (mobilenet_v2_block(), {}),
        "yolo_block": (yolo_block(), {}),
        "transformer_block": (transformer_block(), {}),
        "lstm": (lstm_model(), {}),
        "dynamic_batch": (dynamic_batch_model(), {"x": (2, 3, 8, 8)}),
        "constant_nodes": (constant_nodes_model(), {}),
        "batchnorm": (batchnorm_model(), {}),
        "hardswish": (hardswish_model(), {}),
        "gemm_variants": (gemm_variants(), {}),
        "conv_autopad": (conv_autopad_model(), {}),
        "opset11": (opset11_model(), {}),
        "subgraphs": (subgraph_model(), {}),
        "contrib": (contrib_model(), {}),
        "qdq": (qdq_model(), {}),
    }
