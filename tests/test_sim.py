"""Bit-accurate simulator: kernels against independent integer references, whole bundles.

The integer references here do not share code with the simulator: convolutions are computed by
their ONNX definitions (direct sums over kernel offsets; ConvTranspose as a scatter), in int64.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from xbc import ortutil
from xbc.backends.sim.engine import CrossbarKernel, conv_geometry, im2col, quantize_input
from xbc.backends.sim.testing import make_spec
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
