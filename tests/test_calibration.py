"""Calibration: vector (1-D) model inputs, the background run of the quantize pass, its errors."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import graphs
from xbc import ortutil, qmath
from xbc.calibration import RangesInBackground, _chunks, collect_ranges, synthetic_calibration
from xbc.compiler import compile_model
from xbc.errors import OptionError, PassError


def _vector_models():
    """A MatMul on a 1-D graph input (x[32] @ W) and a Gemm behind an Unsqueeze of one."""
    rng = np.random.default_rng(0)
    W = graphs.trained_like(rng, (32, 24), out_axis=1)
    mv = graphs._model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                       [graphs._vi("x", [32])], [graphs._vi("y", None)], [graphs._t("W", W)], "mv")
    Wg = graphs.trained_like(rng, (10, 32), out_axis=0)
    gm = graphs._model([helper.make_node("Unsqueeze", ["x", "ax"], ["x2"], name="unsq"),
                        helper.make_node("Gemm", ["x2", "W"], ["h"], name="fc", transB=1),
                        helper.make_node("Relu", ["h"], ["r"], name="relu"),
                        helper.make_node("Gemm", ["r", "W2"], ["y"], name="fc2", transB=1)],
                       [graphs._vi("x", [32])], [graphs._vi("y", None)],
                       [graphs._t("W", Wg), graphs._t("ax", np.array([0], np.int64)),
                        graphs._t("W2", graphs.trained_like(rng, (6, 10), out_axis=0))], "gv")
    return {"matmul": mv, "gemm": gm}


def _reference_ranges(res, samples):
    """Every layer input's min and max over the samples, one onnxruntime run per sample."""
    probe = res.graph.to_onnx()
    layers = list(res.graph.layers())
    names = [n.inputs[0].name for n in layers]
    for n in layers:
        v = n.inputs[0]
        if v.name != "x":
            probe.graph.output.append(helper.make_tensor_value_info(v.name, TensorProto.FLOAT, list(v.shape)))
    seen = {k: [] for k in names}
    for x in samples:
        out = ortutil.run(probe, {"x": x})
        for k in names:
            seen[k].append(x if k == "x" else out[k])
    return {k: (float(np.min([a.min() for a in v])), float(np.max([a.max() for a in v]))) for k, v in seen.items()}


@pytest.mark.parametrize("name", ["matmul", "gemm"])
def test_vector_input_calibration(name):
    """A 1-D graph input has no batch axis: a [k, N] array is k samples (it used to fail: 'the
    model expects [N]'), one vector is one sample, k vectors end to end are k samples."""
    m = _vector_models()[name]
    rng = np.random.default_rng(1)
    X = rng.uniform(-2.0, 3.0, (5, 32)).astype(np.float32)
    want = None
    for calib in ({"x": X}, {"x": X.reshape(-1)}):
        res = compile_model(m, "sme", pipeline="quantize", calibration=calib)
        want = want or _reference_ranges(res, list(X))
        for node in res.graph.layers():
            q = node.layer.quant
            lo, hi = want[node.inputs[0].name]
            assert q.stats["x_range"] == [lo, hi]
            assert (q.x_scale, q.x_zero_point) == qmath.input_params(lo, hi, 8)
        assert not any(d.level == "warning" for d in res.ctx.diagnostics)
    one = compile_model(m, "sme", pipeline="quantize", calibration={"x": X[2]})
    assert next(one.graph.layers()).layer.quant.stats["x_range"] == [float(X[2].min()), float(X[2].max())]
    with pytest.raises(PassError, match="expects vectors of 32"):
        compile_model(m, "sme", pipeline="quantize", calibration={"x": X[:, :16]})


def test_vector_input_synthetic_calibration():
    """Without data a vector input gets calib-samples vectors (one run each), like other inputs."""
    m = _vector_models()["matmul"]
    data = synthetic_calibration(m, seed=3, samples=8)
    assert data["x"].shape == (8, 32) and data["x"].dtype == np.float32
    assert len(_chunks(data, m)) == 8 and all(f["x"].shape == (32,) for f in _chunks(data, m))
    res = compile_model(m, "sme", pipeline="quantize", seed=3)
    assert next(res.graph.layers()).layer.quant.stats["x_range"] == [float(data["x"].min()), float(data["x"].max())]
    img = synthetic_calibration(graphs.tiny_cnn(), seed=3, samples=8)["x"]       # batch axis: unchanged
    assert img.shape == (8, 3, 16, 16)


def test_background_ranges_equal_collect_ranges():
    m = graphs.tiny_cnn(seed=1)
    res = compile_model(m, "sme", pipeline="quantize")
    names = [n.inputs[0].name for n in res.graph.layers()]
    calib = {"x": np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)}
    for method in ("minmax", "percentile"):
        want = collect_ranges(res.graph.to_onnx(), names, calib, method=method, percentile=99.0)
        got = RangesInBackground(res.graph.to_onnx(), names, calib, method=method, percentile=99.0)
        assert got.result() == want and not got.failed()


def test_calibration_errors_come_first_and_name_no_layer():
    """The calibration runs in a background thread: its errors are still raised (before any
    layer's), with no node named, as in a sequential run."""
    m = graphs.tiny_cnn(seed=1)
    bad = np.zeros((2, 3, 16, 16), np.float32)
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(PassError, match="not finite on the calibration data") as ei:
        compile_model(m, "sme", pipeline="quantize", calibration={"x": bad})
    assert " at node " not in str(ei.value)
    with pytest.raises(OptionError, match="calibration method"):
        RangesInBackground(m, ["x"], {"x": bad}, method="mean").result()
