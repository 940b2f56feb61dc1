"""bias-correct: after it, every layer's mean output over the calibration data equals the float
layer's, for every crossbar op kind; without it, 4-bit weights shift the means visibly."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.graphs import tiny_cnn
from xbc import ortutil
from xbc.compiler import compile_model
from xbc.effective import effective_model
from xbc.errors import OptionError
from xbc.passmanager import PassManager


def _model(kind: str):
    r = np.random.default_rng(0)
    f = lambda *s: (r.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    if kind == "conv":      # padding and stride: border windows see fewer inputs
        x, W, n = [1, 6, 9, 9], f(8, 6, 3, 3), helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1],
                                                              strides=[2, 2])
        inits, y = [W, f(8)], [1, 8, 5, 5]
    elif kind == "depthwise":
        x, n = [1, 6, 7, 7], helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1], group=6)
        inits, y = [f(6, 1, 3, 3)], [1, 6, 7, 7]
    elif kind == "conv_transpose":
        x, n = [1, 4, 5, 5], helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])
        inits, y = [f(4, 5, 3, 3), f(5)], [1, 5, 9, 9]
    elif kind == "gemm":    # no bias: the pass adds one
        x, n = [3, 20], helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)
        inits, y = [f(7, 20)], [3, 7]
    elif kind == "matmul_vector":   # a vector input: no batch axis, each calibration row a sample
        x, n = [20], helper.make_node("MatMul", ["x", "W"], ["y"])
        inits, y = [f(20, 7)], [7]
    else:                   # 3-D MatMul: an Add after it carries the correction
        x, n = [2, 5, 20], helper.make_node("MatMul", ["x", "W"], ["y"])
        inits, y = [f(20, 7)], [2, 5, 7]
    names = ["W", "B"][:len(inits)]
    g = helper.make_graph([n], kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)],
                          [numpy_helper.from_array(a, nm) for a, nm in zip(inits, names)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    shape = [8] + x if len(x) == 1 else [8 * x[0]] + x[1:]
    calib = {"x": (r.standard_normal(shape) + 0.7).astype(np.float32)}  # non-zero mean
    return m, calib


def _mean_error(model, res, calib) -> np.ndarray:
    """Per output channel: mean over calibration data of (crossbar output - float output)."""
    eff = effective_model(res.graph)
    kind_axis = 1 if len(model.graph.output[0].type.tensor_type.shape.dim) == 4 else -1
    d = []
    vector = len(model.graph.input[0].type.tensor_type.shape.dim) == 1
    b = calib["x"].shape[0] // 8
    for i in range(8):                  # the 8 calibration samples, as quantize splits them
        feeds = {"x": calib["x"][i] if vector else calib["x"][i * b:(i + 1) * b]}
        d.append(ortutil.run(eff, feeds)["y"].astype(np.float64) - ortutil.run(model, feeds)["y"])
    d = np.stack(d) if d[0].ndim == 1 else np.concatenate(d)
    return np.moveaxis(d, kind_axis, 0).reshape(d.shape[kind_axis], -1).mean(axis=1)


@pytest.mark.parametrize("kind", ["conv", "depthwise", "conv_transpose", "gemm", "matmul", "matmul_vector"])
def test_mean_output_matches_float(kind):
    model, calib = _model(kind)
    base = "quantize{weight-bits=4,input-bits=16}"
    before = _mean_error(model, compile_model(model, "sme", pipeline=base, calibration=calib), calib)
    res = compile_model(model, "sme", pipeline=base + ",bias-correct", calibration=calib)
    after = _mean_error(model, res, calib)
    assert np.abs(before).max() > 1e-2, kind            # 4-bit weights: a visible shift
    # what is left is float32 rounding and the (zero-mean) 16-bit input rounding
    np.testing.assert_allclose(after, 0.0, atol=5e-4 * np.abs(before).max() + 1e-6)
    st = res.results[-1].stats
    assert st["corrected"] == 1 and st["layers"] == 1
    if kind.startswith("matmul"):
        assert [n.op_type for n in res.graph.nodes] == ["MatMul", "Add"]


def test_full_pipeline_bundle_and_fidelity(tmp_path):
    """In the sme pipeline after orchestrate-bits: the bundle validates and the output SQNR
    does not drop (tiny_cnn, its own calibration inputs)."""
    from xbc.bundle import validate_bundle, write_bundle

    m = tiny_cnn()
    calib = {"x": np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)}
    pipe = "fold-batchnorm,quantize,orchestrate-bits{error-budget=4},{}slice-bits,squeeze,adc-size"
    sq = []
    for extra in ("", "bias-correct,"):
        res = compile_model(m, "sme", pipeline=pipe.replace("{}", extra), calibration=calib)
        validate_bundle(write_bundle(res, tmp_path / f"b{len(extra)}"))
        eff = effective_model(res.graph)
        feeds = {"x": calib["x"][:1]}
        ref = ortutil.run(m, feeds)
        got = ortutil.run(eff, feeds)
        k = next(iter(ref))
        sq.append(ortutil.sqnr_db(ref[k], got[k]))
    assert sq[1] >= sq[0] - 0.5, sq


def test_options_and_spec():
    pm = PassManager("bias-correct{samples=4}")
    assert pm.spec == "bias-correct{samples=4}"
    with pytest.raises(OptionError, match="samples"):
        PassManager("bias-correct{samples=0}")


def test_reuses_quantize_calibration_means_exactly():
    """bias-correct takes the layer-input means quantize recorded in its calibration run when
    the data and the graph are unchanged; they equal a fresh run's means exactly."""
    from xbc.calibration import synthetic_calibration
    from xbc.passes.bias_correct import layer_input_means

    m = tiny_cnn()
    res = compile_model(m, "sme", pipeline="fold-batchnorm,quantize,orchestrate-bits,bias-correct")
    assert res.results[-1].stats["reused_quantize_calibration"] is True
    # the same means as bias-correct's own run would give (on the graph before the correction)
    res0 = compile_model(m, "sme", pipeline="fold-batchnorm,quantize")
    cached = res0.ctx.extra["layer_input_means"]["means"]
    layers = list(res0.graph.layers())
    fresh = layer_input_means(res0.graph, layers, synthetic_calibration(res0.graph.to_onnx(), seed=0, samples=8))
    assert set(fresh) <= set(cached)
    for k in fresh:
        np.testing.assert_array_equal(cached[k], fresh[k])
    # other data (a different sample count): its own run
    res2 = compile_model(m, "sme", pipeline="fold-batchnorm,quantize,bias-correct{samples=4}")
    assert res2.results[-1].stats["reused_quantize_calibration"] is False
