"""quantize, xbc.qmath and xbc.calibration: the integer contract, min-MSE scales, calibration ranges."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphs
from xbc import ortutil, qmath
from xbc.calibration import CalibrationError, load_calibration, resize_bilinear
from xbc.compiler import compile_model
from xbc.errors import OptionError, XbcError
from xbc.layer import to_matrix


def _quant(model, target="sme", pipeline="quantize", **kw):
    return compile_model(model, target, pipeline=pipeline, **kw)


# ---------------------------------------------------------------------------------------- qmath

def test_quantize_input_rounds_half_to_even_and_clips():
    s, zp = 0.5, 3
    x = np.array([0.25, 0.75, 1.25, -0.25, -1.75, 1000.0, -1000.0], np.float32)
    # x/s = 0.5 1.5 2.5 -0.5 -3.5 -> rint 0 2 2 -0 -4 -> +3 -> 3 5 5 3 -1 -> clip
    np.testing.assert_array_equal(qmath.quantize_input(x, s, zp, 4), [3, 5, 5, 3, 0, 15, 0])
    np.testing.assert_array_equal(qmath.fake_quantize_input(x, s, zp, 4), ([3, 5, 5, 3, 0, 15, 0] - np.float64(zp)) * s)


def test_input_params_contain_zero_and_are_float32_exact():
    s, zp = qmath.input_params(0.5, 6.0, 8)          # range widened to [0, 6]
    assert zp == 0 and s == float(np.float32(6.0 / 255))
    s, zp = qmath.input_params(-1.0, 3.0, 8)
    assert s == float(np.float32(4.0 / 255)) and zp == round(1.0 / s)
    assert qmath.input_params(0.0, 0.0, 8) == (1.0, 0)
    s, zp = qmath.input_params(-2.0, -1.0, 4)        # all negative: zero point at the top
    assert zp == 15


def test_dequantize_acc_equals_float_layer_on_fake_quantized_input():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((7, 5))                  # gemm [K, N]
    w_int, w_scale = qmath.quantize_weights(W, "gemm", 1, {}, 6)
    x = rng.standard_normal((3, 7))
    xs, zp = qmath.input_params(x.min(), x.max(), 5)
    xq = qmath.quantize_input(x, xs, zp, 5).astype(np.int64)
    acc = xq @ w_int.astype(np.int64)
    bias = rng.standard_normal(5)

    class Q:
        x_scale, x_zero_point = xs, zp

    Q.w_scale = w_scale
    y = qmath.dequantize_acc(acc, Q, bias, colsum=qmath.weight_colsum(w_int, "gemm"), axis=-1)
    ref = qmath.fake_quantize_input(x, xs, zp, 5) @ (w_int * w_scale[None, :]) + bias
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        qmath.dequantize_acc(acc, Q, bias)


@pytest.mark.parametrize("bits,gain", [(2, 0.5), (3, 0.7), (4, 0.9), (8, 0.99), (12, 0.99)])
def test_min_mse_scales_beat_max_scaling(bits, gain):
    rng = np.random.default_rng(bits)
    W = graphs.trained_like(rng, (32, 16, 3, 3)).astype(np.float64)
    w_int, s = qmath.quantize_weights(W, "conv", 1, {}, bits)
    qmax = 2 ** (bits - 1) - 1
    assert w_int.dtype == np.int32 and w_int.shape == W.shape and np.abs(w_int).max() <= qmax
    M = to_matrix("conv", W, 1)
    s_max = np.abs(M).max(axis=1).reshape(-1) / qmax
    q_max = np.clip(np.rint(M / s_max.reshape(1, 1, -1)), -qmax, qmax)
    e_max = np.sum((M - q_max * s_max.reshape(1, 1, -1)) ** 2, axis=1).reshape(-1)
    q_opt = to_matrix("conv", w_int.astype(np.float64), 1)
    e_opt = np.sum((M - q_opt * s.reshape(1, 1, -1)) ** 2, axis=1).reshape(-1)
    assert np.all(e_opt <= e_max * (1 + 1e-12))          # never worse, per channel
    assert e_opt.sum() < gain * e_max.sum()              # and better in total (measured 0.41 .. 0.98)


def test_pow2_and_per_tensor_scales():
    m = graphs.conv_model(seed=3)
    L = next(_quant(m, pipeline="quantize{pow2=true}").graph.layers()).layer
    assert np.all(np.exp2(np.round(np.log2(L.quant.w_scale))) == L.quant.w_scale) and L.quant.pow2
    L = next(_quant(m, pipeline="quantize{per-channel=false}").graph.layers()).layer
    assert np.ptp(L.quant.w_scale) == 0 and not L.quant.per_channel


# ---------------------------------------------------------------------------------------- the pass

@pytest.mark.parametrize("name", list(graphs.all_crossbar_models()))
def test_quant_contract_on_every_layer_kind(name):
    m = graphs.all_crossbar_models()[name]
    res = _quant(m, pipeline="quantize{weight-bits=6,input-bits=7}")
    for node in res.graph.layers():
        L, q = node.layer, node.layer.quant
        W = L.weight_value(node).const
        assert q.w_int.dtype == np.int32 and q.w_int.shape == W.shape
        assert np.abs(q.w_int).max() <= 31 and q.weight_bits == 6 and q.input_bits == 7
        assert q.w_scale.dtype == np.float64 and q.w_scale.shape == (L.out_channels,) and np.all(q.w_scale > 0)
        assert np.array_equal(q.w_int_initial, q.w_int) and q.w_int_initial is not q.w_int
        assert 0 <= q.x_zero_point <= 127 and q.x_scale > 0
        assert L.stats["w_sqnr_db"] == q.stats["w_sqnr_db"] and L.stats["w_sqnr_db"] > 25
        # the reported SQNR is the real one
        sig, err = qmath.weight_error(W, q.w_int, q.w_scale, L.kind, L.groups, node.attrs)
        assert abs(qmath.sqnr_db(sig, err) - L.stats["w_sqnr_db"]) < 1e-9
    st = res.ctx.stats["quantize"]
    assert st["layers"] == len(list(res.graph.layers())) and set(st["per_layer"]) == {n.layer.id for n in res.graph.layers()}


def test_input_ranges_come_from_calibration():
    m = graphs.tiny_cnn(seed=2)
    rng = np.random.default_rng(5)
    calib = {"x": rng.uniform(-1.5, 2.5, (6, 3, 16, 16)).astype(np.float32)}
    res = _quant(m, calibration=calib)
    layers = list(res.graph.layers())
    names = [n.inputs[0].name for n in layers]
    # reference: every layer input over the calibration batch, straight from onnxruntime
    probe = res.graph.to_onnx()
    for n in layers[1:]:
        v = n.inputs[0]
        probe.graph.output.append(helper.make_tensor_value_info(v.name, TensorProto.FLOAT, list(v.shape)))
    seen = {k: [] for k in names}
    for i in range(6):
        out = ortutil.run(probe, {"x": calib["x"][i:i + 1]})
        for k in names:
            seen[k].append(calib["x"][i:i + 1] if k == "x" else out[k])
    for n in layers:
        a = np.concatenate([s.ravel() for s in seen[n.inputs[0].name]]).astype(np.float64)
        s, zp = qmath.input_params(a.min(), a.max(), 8)
        assert (n.layer.quant.x_scale, n.layer.quant.x_zero_point) == (s, zp)
    assert not any(d.level == "warning" for d in res.ctx.diagnostics)
    # percentile clips the tails: a smaller scale for the network input
    res_p = _quant(m, pipeline="quantize{calib-method=percentile,percentile=99}", calibration=calib)
    q0 = next(res_p.graph.layers()).layer.quant
    lo, hi = np.percentile(calib["x"].astype(np.float64), [1, 99])
    assert q0.x_scale == qmath.input_params(lo, hi, 8)[0] < layers[0].layer.quant.x_scale


def test_synthetic_calibration_warns_and_is_deterministic():
    m = graphs.tiny_cnn(seed=3)
    r1, r2 = _quant(m, seed=4), _quant(m, seed=4)
    assert any(d.level == "warning" and "no calibration data" in d.message for d in r1.ctx.diagnostics)
    for a, b in zip(r1.graph.layers(), r2.graph.layers()):
        assert a.layer.quant.x_scale == b.layer.quant.x_scale
        assert np.array_equal(a.layer.quant.w_int, b.layer.quant.w_int)
    r3 = _quant(m, seed=5)
    assert any(a.layer.quant.x_scale != b.layer.quant.x_scale for a, b in zip(r1.graph.layers(), r3.graph.layers()))


def test_options_are_checked():
    m = graphs.gemm_model()
    for bad in ("quantize{weight-bits=1}", "quantize{weight-bits=17}", "quantize{input-bits=0}",
                "quantize{percentile=20}"):
        with pytest.raises(OptionError):
            _quant(m, pipeline=bad)


def _dq_conv_model(scale_bits=127):
    rng = np.random.default_rng(7)
    wq = rng.integers(-scale_bits, scale_bits + 1, (6, 3, 3, 3)).astype(np.int8)
    sc = rng.uniform(0.001, 0.01, 6).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], name="dq", axis=0),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 3, 3])],
                          [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(sc, "ws")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, wq, sc


def test_prequantized_weights_are_kept_or_requantized_with_a_warning():
    m, wq, sc = _dq_conv_model()
    res = _quant(m)
    L = next(res.graph.layers()).layer
    if L.prequant is None:
        pytest.fail("the frontend did not record the integer weight of a DequantizeLinear weight")
    assert L.quant.prequantized and np.array_equal(L.quant.w_int, wq.astype(np.int32))
    np.testing.assert_allclose(L.quant.w_scale, sc.astype(np.float64), rtol=0, atol=0)
    assert L.stats["w_sqnr_db"] > 120            # float32 rounding of the dequantized weight only
    res4 = _quant(m, pipeline="quantize{weight-bits=4}")
    L4 = next(res4.graph.layers()).layer
    assert not L4.quant.prequantized and np.abs(L4.quant.w_int).max() <= 7
    assert any("requantizing" in d.message for d in res4.ctx.diagnostics)


# ---------------------------------------------------------------------------------------- calibration files

def test_load_npz_and_errors(tmp_path):
    m = graphs.tiny_cnn()
    mp = tmp_path / "m.onnx"
    onnx.save(m, mp)
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    data = load_calibration(tmp_path / "c.npz", mp)
    assert set(data) == {"x"} and np.array_equal(data["x"], x)
    np.savez(tmp_path / "bad.npz", y=x)
    with pytest.raises(CalibrationError, match="no array for model input"):
        load_calibration(tmp_path / "bad.npz", mp)
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(tmp_path / "nope.npz", mp)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(XbcError):
        load_calibration(tmp_path / "junk.npz", mp)
    with pytest.raises(XbcError, match="calibration array for input 'x' has shape") as ei:
        _quant(m, calibration={"x": np.zeros((2, 3, 8, 8), np.float32)})
    assert ei.value.exit_code == 2


def test_load_image_folder(tmp_path):
    import matplotlib.image as mpimg

    m = graphs.tiny_cnn()
    mp = tmp_path / "m.onnx"
    onnx.save(m, mp)
    d = tmp_path / "imgs"
    d.mkdir()
    img = np.zeros((20, 24, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 0, 51
    mpimg.imsave(d / "a.png", img)
    grad = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    mpimg.imsave(d / "b.png", np.stack([grad] * 3, axis=-1))
    (d / "notes.txt").write_text("ignored")
    data = load_calibration(d, mp)
    x = data["x"]
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32
    want = (np.array([1.0, 0.0, 0.2]) - [0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[0].reshape(3, -1), np.repeat(want[:, None], 256, axis=1), atol=1e-5)
    res = _quant(m, calibration=data)
    assert next(res.graph.layers()).layer.quant.stats["x_range"][0] < 0


def test_resize_bilinear_half_pixel():
    img = np.arange(4, dtype=np.float32).reshape(1, 4, 1)
    out = resize_bilinear(img, 1, 2)
    np.testing.assert_allclose(out.ravel(), [0.5, 2.5])
    same = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(resize_bilinear(same, 5, 7), same, atol=1e-6)


def test_weight_scales_do_not_depend_on_channel_blocks():
    """Channels are processed in cache-sized blocks in the matrix's own memory order: the scales
    equal those of one pass over the whole matrix, bit for bit, for C- and F-ordered matrices."""
    rng = np.random.default_rng(3)
    W = rng.standard_normal((300, 200)) * rng.uniform(0.1, 2.0, 200)
    W[:, 5] = 0.0
    for X in (W, np.asfortranarray(W), W[:, ::-1]):
        for bits, pow2 in ((8, False), (4, False), (16, False), (6, True)):
            whole = qmath.choose_weight_scales(X, bits, pow2, block_bytes=1 << 40)
            blocked = qmath.choose_weight_scales(X, bits, pow2, block_bytes=300 * 8 * 8)
            assert np.array_equal(whole, blocked)


def _scale_cases(rng):
    """Weight matrices [rows, channels] of every layout and kind of tie the search meets."""
    cases = []
    for t in range(18):
        R, K = int(rng.integers(1, 600)), int(rng.integers(1, 50))
        W = rng.laplace(size=(R, K)) * rng.uniform(0.01, 2.0, K)
        if t % 3 == 0:
            W = np.asfortranarray(W)
        if t % 4 == 1:
            W = W[:, ::-1]                             # neither C nor F contiguous
        if t % 5 == 0:
            W[:, 0] = 0.0                              # an all-zero channel
        if t % 6 == 2:
            W = np.round(W * 4) / 4                    # on a power-of-two grid: exact ties
        if t == 7:
            W = np.full((R, K), 0.5)                   # constant channels
        cases.append(W)
    cases.append(rng.standard_normal((5000, 1)))       # per tensor: one tall column
    return cases


def test_weight_scales_equal_the_numpy_definition():
    """choose_weight_scales (numba kernels, provably worse candidates stopped early, ambiguous
    channels decided on the exact einsum errors) returns the bits of the plain numpy definition,
    choose_weight_scales_reference: every layout, bit width, pow2, refinement and blocking."""
    rng = np.random.default_rng(12)
    for W in _scale_cases(rng):
        for bits, pow2 in ((8, False), (4, False), (2, False), (16, False), (6, True), (3, True)):
            for block_bytes, refine in ((1 << 20, 4), (2000, 4), (1 << 20, 0), (2000, 1)):
                want = qmath.choose_weight_scales_reference(W, bits, pow2, refine, block_bytes)
                got = qmath.choose_weight_scales(W, bits, pow2, refine, block_bytes)
                assert np.array_equal(want, got), (W.shape, bits, pow2, refine, block_bytes)


def test_error_kernel_rounds_like_numpy():
    """The kernels' terms e = x - clip(rint(x / s), -q, q) * s are numpy's, bit for bit (no FMA,
    no reciprocal; halves round to even): with one row the kernel's sum is the term squared."""
    rng = np.random.default_rng(3)
    s = np.exp2(rng.integers(-12, 4, 4000).astype(np.float64)) * rng.uniform(0.5, 2.0, 4000)
    x = rng.standard_normal(4000) * s * rng.uniform(1, 200, 4000)
    x[:1000] = (np.rint(x[:1000] / s[:1000]) + 0.5) * s[:1000]          # on (or next to) the halves
    x[1000:1500] = np.nextafter(x[1000:1500], np.inf)
    for qmax in (1, 7, 127):
        F = qmath._kernels()["mse_candidates"](x[:, None], s[None], float(qmax), 2.0, 0.0)[0]
        e = x - np.clip(np.rint(x / s), -qmax, qmax) * s
        assert np.array_equal(F, e * e)


@pytest.mark.parametrize("name", list(graphs.all_crossbar_models()))
def test_quantize_weights_equal_the_numpy_definition(name):
    """Integer weights from the fused kernel: clip(rint(W / s)) in the tensor's layout, as numpy."""
    from xbc.layer import from_matrix
    m = graphs.all_crossbar_models()[name]
    res = _quant(m, pipeline="quantize{weight-bits=5}")
    for node in res.graph.layers():
        L = node.layer
        W = np.asarray(L.weight_value(node).const, np.float64)
        for per_channel in (True, False):
            w_int, s = qmath.quantize_weights(W, L.kind, L.groups, node.attrs, 5, per_channel=per_channel)
            M = to_matrix(L.kind, W, L.groups, node.attrs)
            G, R, C = M.shape
            X = M.transpose(1, 0, 2).reshape(R, G * C) if per_channel else M.reshape(-1, 1)
            s_ref = qmath.choose_weight_scales_reference(X, 5)
            s_ref = s_ref if per_channel else np.full(G * C, s_ref[0])
            Q = np.clip(np.rint(M / s_ref.reshape(G, 1, C)), -15, 15).astype(np.int32)
            want = from_matrix(L.kind, Q, W.shape, L.groups, node.attrs).astype(np.int32)
            assert np.array_equal(s, s_ref) and w_int.dtype == np.int32 and np.array_equal(w_int, want)
            assert w_int.flags.c_contiguous == want.flags.c_contiguous
