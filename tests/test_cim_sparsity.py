"""cim-sparsity: whole groups are pruned, the budget holds, zero groups are free, digits follow."""

from __future__ import annotations

import numpy as np
import pytest

import graphs
from xbc.compiler import compile_model
from xbc.errors import OptionError
from xbc.layer import digits_value, to_matrix
from xbc.passes.cim_sparsity import group_mask_to_matrix, group_view

MODELS = graphs.all_crossbar_models()


def _errors(node):
    L, q = node.layer, node.layer.quant
    M = to_matrix(L.kind, L.weight_value(node).const.astype(np.float64), L.groups, node.attrs)
    s = q.w_scale.reshape(L.groups, 1, L.cols)
    V = to_matrix(L.kind, q.w_int.astype(np.float64), L.groups, node.attrs)
    V0 = to_matrix(L.kind, q.w_int_initial.astype(np.float64), L.groups, node.attrs)
    return float(np.sum((M - V * s) ** 2)), float(np.sum((M - V0 * s) ** 2)), V, V0


def _check_whole_groups(node):
    L = node.layer
    RB, CB = L.stats["cim_group_shape"]
    mask = L.stats["cim_pruned_groups"]
    _, _, V, V0 = _errors(node)
    z = group_mask_to_matrix(mask, V.shape, L.row_perm, L.col_perm, RB, CB)
    assert np.all(V[z] == 0)                       # pruned groups are entirely zero
    assert np.array_equal(V[~z], V0[~z])           # everything else is untouched
    gv = group_view(V0, L.row_perm, L.col_perm, RB, CB)
    assert mask.shape == gv.shape[:3]
    return mask


@pytest.mark.parametrize("name", ["dense_conv", "big_conv", "gemm_transB", "tiny_cnn", "grouped_conv_transpose"])
def test_sparsity_target_prunes_whole_groups(name):
    res = compile_model(MODELS[name], "mars", pipeline="quantize,cim-sparsity{sparsity=0.25}")
    for node in res.graph.layers():
        mask = _check_whole_groups(node)
        info = node.layer.stats["cim_sparsity"]
        assert mask.sum() == info["pruned_groups"] == int(np.floor(0.25 * info["groups"] + 1e-9))
        assert node.layer.stats["cim_group_shape"] == [16, 4]   # mars: 16 word lines x 64 // (7*2) channels
    st = res.ctx.stats["cim-sparsity"]
    assert 0.15 < st["group_sparsity"] <= 0.25


@pytest.mark.parametrize("budget", [1.0, 1000.0, 30000.0])
def test_error_budget_holds(budget):
    res = compile_model(MODELS["big_conv"], "mars", pipeline=f"quantize,cim-sparsity{{error-budget={budget}}}")
    node = next(res.graph.layers())
    E, E_q, _, _ = _errors(node)
    assert E <= (1 + budget) * E_q * (1 + 1e-9)
    mask = _check_whole_groups(node)
    if budget >= 1000:
        assert mask.sum() > 0
    # smallest-cost first: every pruned group is cheaper than every kept one
    L, q = node.layer, node.layer.quant
    M = to_matrix(L.kind, L.weight_value(node).const.astype(np.float64), L.groups, node.attrs)
    s2 = (q.w_scale ** 2).reshape(L.groups, 1, L.cols)
    T = M / np.sqrt(s2)
    V0 = to_matrix(L.kind, q.w_int_initial.astype(np.float64), L.groups, node.attrs)
    cost = group_view(s2 * (T ** 2 - (T - V0) ** 2), None, None, 16, 4).sum(axis=(-2, -1))
    if mask.any() and (~mask).any():
        assert cost[mask].max() <= cost[~mask].min() + 1e-12


def test_zero_groups_are_free_and_digits_follow():
    m = graphs.conv_model(cin=32, cout=16, k=1, hw=4, seed=3)
    from onnx import numpy_helper
    W = numpy_helper.to_array(m.graph.initializer[0]).copy()
    W[:, :16] = 0.0                                  # 16 dead input channels = one row block
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(W, "W"))
    res = compile_model(m, "mars", pipeline="quantize,cim-sparsity")
    node = next(res.graph.layers())
    mask = _check_whole_groups(node)
    assert mask[0, 0].all() and not mask[0, 1].any()
    assert node.layer.stats["cim_sparsity"]["error_increase"] == 0.0
    res2 = compile_model(MODELS["dense_conv"], "sme",
                         pipeline="quantize,orchestrate-bits{error-budget=0},cim-sparsity{sparsity=0.5,row-block=16,col-block=8}")
    node = next(res2.graph.layers())
    _check_whole_groups(node)
    W = to_matrix(node.layer.kind, node.layer.quant.w_int.astype(np.int64), 1, node.attrs)
    assert np.array_equal(digits_value(node.layer.digits, 1), W)


def test_options_checked():
    for bad in ("cim-sparsity{sparsity=1.5}", "cim-sparsity{error-budget=-1}", "cim-sparsity{row-block=0}"):
        with pytest.raises(OptionError):
            compile_model(MODELS["gemm"], "mars", pipeline="quantize," + bad)
