"""The effective model: exact integer semantics on a single layer, high fidelity on a small CNN."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import graphs
from xbc import effective, ortutil, qmath
from xbc.compiler import compile_model
from xbc.errors import XbcError
from xbc.layer import to_matrix


@pytest.mark.parametrize("name,kw", [("gemm_transB", dict(k=200, n=30, trans_b=True, seed=6)),
                                     ("gemm_alpha_beta", dict(k=40, n=12, trans_b=False, alpha=0.5, beta=2.0, seed=7))])
def test_single_gemm_equals_integer_formula(name, kw):
    m = graphs.gemm_model(batch=5, **kw)
    rng = np.random.default_rng(1)
    calib = {"x": rng.uniform(-0.7, 1.9, (10, kw["k"])).astype(np.float32)}   # asymmetric: zp != 0
    res = compile_model(m, "sme", pipeline="quantize{weight-bits=7,input-bits=6}", calibration=calib)
    node = next(res.graph.layers())
    L, q = node.layer, node.layer.quant
    assert q.x_zero_point not in (0, 63)
    eff = effective.effective_model(res.graph)
    # expose the fake-quantized input
    fq = [n for n in eff.graph.node if n.name.endswith("cast_out")][0].output[0]
    eff.graph.output.append(helper.make_tensor_value_info(fq, TensorProto.FLOAT, [5, kw["k"]]))
    x = rng.uniform(-1.0, 2.2, (5, kw["k"])).astype(np.float32)          # includes clipped values
    out = ortutil.run(eff, {"x": x})
    # 1. the fake quantization is qmath's, bit for bit
    np.testing.assert_array_equal(out[fq], qmath.fake_quantize_input(x, q.x_scale, q.x_zero_point, 6).astype(np.float32))
    # 2. the layer output is the integer formula up to float32 rounding
    xq = qmath.quantize_input(x, q.x_scale, q.x_zero_point, 6).astype(np.int64)
    Wm = to_matrix("gemm", q.w_int.astype(np.int64), 1, node.attrs)[0]       # [K, N]
    acc = xq @ Wm
    C = node.inputs[2].const.astype(np.float64) * float(node.attrs.get("beta", 1.0))
    y = qmath.dequantize_acc(acc, q, C, colsum=qmath.weight_colsum(q.w_int, "gemm", 1, node.attrs), axis=-1)
    got = out[res.graph.outputs[0].name]
    np.testing.assert_allclose(got, y, rtol=0, atol=2e-6 * np.abs(y).max())
    # and it is close to the float model (6-bit inputs, some clipped: measured 20.9 dB)
    ref = ortutil.run(m, {"x": x})[res.graph.outputs[0].name]
    assert ortutil.sqnr_db(ref, got) > 15


def test_tiny_cnn_fidelity_and_program_path():
    m = graphs.tiny_cnn(seed=0)
    calib = {"x": np.random.default_rng(100).standard_normal((16, 3, 16, 16)).astype(np.float32)}
    feeds = [ortutil.random_inputs(m, seed=1000 + s) for s in range(32)]
    res = compile_model(m, "sme", pipeline="fold-batchnorm,quantize", calibration=calib)
    f = effective.fidelity(m, effective.effective_model(res.graph), feeds)
    assert set(f) == {"top1_agreement", "sqnr_db", "cosine"}
    assert f["sqnr_db"] > 30 and f["top1_agreement"] >= 0.9 and f["cosine"] > 0.999   # measured 35.7 dB
    # 4-bit weights and inputs: clearly worse, still correlated
    res4 = compile_model(m, "sme", pipeline="fold-batchnorm,quantize{weight-bits=4,input-bits=4}", calibration=calib)
    f4 = effective.fidelity(m, effective.effective_model(res4.graph), feeds)
    assert 5 < f4["sqnr_db"] < f["sqnr_db"] - 10
    # the crossbar program path: weights rebuilt from the cells equal the quantized weights
    full = compile_model(m, "sme", pipeline="fold-batchnorm,quantize,orchestrate-bits,reorder,slice-bits,squeeze",
                         calibration=calib)
    for node in full.graph.layers():
        assert node.layer.program is not None
        assert np.array_equal(effective.integer_weight(node), node.layer.quant.w_int)
    ff = effective.fidelity(m, effective.effective_model(full.graph), feeds)
    assert ff["sqnr_db"] > 30 and ff["top1_agreement"] >= 0.9                          # measured 33.5 dB


def test_program_is_what_counts():
    """A cell flipped in the program changes the effective weight (it is rebuilt, not copied)."""
    m = graphs.gemm_model(k=40, n=12, seed=2)
    res = compile_model(m, "sme", pipeline="quantize,slice-bits")
    node = next(res.graph.layers())
    prog = node.layer.program
    x, i, j = [a[0] for a in np.nonzero(prog.cells)]
    before = effective.integer_weight(node).copy()
    prog.cells[x, i, j] = 0
    after = effective.integer_weight(node)
    diff = np.argwhere(after != before)
    assert len(diff) == 1


def test_needs_quantized_layers():
    res = compile_model(graphs.gemm_model(), "sme", pipeline="fold-batchnorm")
    with pytest.raises(XbcError, match="quantize"):
        effective.effective_model(res.graph)
