"""orchestrate-bits: lossless recoding (exact), budgeted clearing (the budget holds, measured from
the float weights), max-digits, other cell widths, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import graphs
from xbc.compiler import compile_model
from xbc.errors import XbcError
from xbc.layer import digits_value, n_planes, sign_magnitude_digits, to_matrix
from xbc.passes.orchestrate_bits import (closest_with_max_digits, count_nonempty_segments, min_weight_digits,
                                         naf_digits, representable_table)

MODELS = graphs.all_crossbar_models()


def _run(model, opts="", target="sme", overrides=(), pre="fold-batchnorm,quantize"):
    return compile_model(model, target, pipeline=f"{pre},orchestrate-bits{{{opts}}}" if opts else
                         f"{pre},orchestrate-bits", overrides=overrides)


def _float_error(node):
    """(E, E_q) from the float weight, independent of the pass's bookkeeping."""
    L = node.layer
    q = L.quant
    M = to_matrix(L.kind, L.weight_value(node).const.astype(np.float64), L.groups, node.attrs)
    s = q.w_scale.reshape(L.groups, 1, L.cols)
    V = to_matrix(L.kind, q.w_int.astype(np.float64), L.groups, node.attrs)
    V0 = to_matrix(L.kind, q.w_int_initial.astype(np.float64), L.groups, node.attrs)
    return float(np.sum((M - V * s) ** 2)), float(np.sum((M - V0 * s) ** 2))


# ---------------------------------------------------------------------------------------- digit math

def _brute_min_counts(cell_bits, planes):
    B = 1 << cell_bits
    combos = np.array(list(itertools.product(range(-(B - 1), B), repeat=planes)))
    vals = (combos * (B ** np.arange(planes))).sum(axis=1)
    cnt = (combos != 0).sum(axis=1)
    best = {}
    for v, c in zip(vals.tolist(), cnt.tolist()):
        best[v] = min(best.get(v, 99), c)
    return best


def test_naf_is_lossless_non_adjacent_and_minimal():
    v = np.arange(-(2 ** 15 - 1), 2 ** 15, dtype=np.int64)
    d = naf_digits(v, 16)
    assert d.dtype == np.int8 and d.shape == (16, v.size)
    assert np.array_equal(digits_value(d, 1), v)
    assert not np.any((d[1:] != 0) & (d[:-1] != 0))
    best = _brute_min_counts(1, 7)
    small = np.arange(-63, 64)
    assert np.array_equal(np.count_nonzero(naf_digits(small, 7), axis=0), [best[int(x)] for x in small])


@pytest.mark.parametrize("cell_bits,planes", [(2, 4), (3, 3), (2, 3)])
def test_radix_signed_digits_are_lossless_and_minimal(cell_bits, planes):
    best = _brute_min_counts(cell_bits, planes)
    hi = 2 ** (cell_bits * planes - 1) - 1
    v = np.arange(-hi, hi + 1)
    d, ok = min_weight_digits(v, cell_bits, planes)
    assert ok.all() and np.array_equal(digits_value(d, cell_bits), v)
    assert np.all(np.abs(d) < (1 << cell_bits))
    assert np.array_equal(np.count_nonzero(d, axis=0), [best[int(x)] for x in v])


def test_representable_table_matches_enumeration():
    for mask in (0b111111, 0b010101, 0b100110, 0):
        vals, digs, cnt = representable_table(1, 3, mask)
        allowed = [[0] + ([1] if mask >> (2 * q) & 1 else []) + ([-1] if mask >> (2 * q + 1) & 1 else [])
                   for q in range(3)]
        ref = {}
        for c in itertools.product(*allowed):
            val = sum(x << q for q, x in enumerate(c))
            ref[val] = min(ref.get(val, 9), sum(x != 0 for x in c))
        assert vals.tolist() == sorted(ref) and cnt.tolist() == [ref[x] for x in sorted(ref)]
        assert np.array_equal(digits_value(digs.T, 1), vals)


def test_closest_with_max_digits_is_the_closest():
    t = np.random.default_rng(0).uniform(-130, 130, 2000)
    for k in (1, 2, 3):
        got = closest_with_max_digits(t, k, 127, 1, 8, True)
        cand = np.array([v for v in range(-127, 128) if np.count_nonzero(naf_digits(np.array([v]), 8)) <= k])
        best = np.abs(np.clip(t, -127, 127)[:, None] - cand[None, :]).min(axis=1)
        np.testing.assert_allclose(np.abs(np.clip(t, -127, 127) - got), best, atol=1e-12)


# ---------------------------------------------------------------------------------------- the pass

@pytest.mark.parametrize("name", list(MODELS))
def test_lossless_mode_keeps_every_weight(name):
    res = _run(MODELS[name], "error-budget=0")
    st = res.ctx.stats["orchestrate-bits"]
    for node in res.graph.layers():
        L, q = node.layer, node.layer.quant
        P = n_planes(q.weight_bits, 1, "split", signed_digit=True)
        assert L.digits.dtype == np.int8 and L.digits.shape == (P, L.groups, L.rows, L.cols)
        assert np.all(np.abs(L.digits) <= 1)
        W = to_matrix(L.kind, q.w_int.astype(np.int64), L.groups, node.attrs)
        assert np.array_equal(digits_value(L.digits, 1), W)
        assert np.array_equal(q.w_int, q.w_int_initial)
        info = L.stats["orchestrate"]
        assert info["error_increase"] == 0.0
        # independent recount of the segments, baseline and final
        sm = sign_magnitude_digits(W, 1, n_planes(q.weight_bits, 1, "split"))
        assert count_nonempty_segments(sm, 128, L.row_perm) == info["nonempty_segments_sign_magnitude"]
        assert count_nonempty_segments(L.digits, 128, L.row_perm) == info["nonempty_segments_final"]
        assert info["nonempty_segments_final"] <= info["nonempty_segments_sign_magnitude"]
    assert st["nonempty_segments"]["final"] <= st["nonempty_segments"]["sign_magnitude"]


@pytest.mark.parametrize("name", ["big_conv", "dense_conv", "tiny_cnn", "gemm_transB", "depthwise_conv"])
def test_budget_holds_and_buys_empty_segments(name):
    finals = []
    for budget in (0.25, 1.0, 4.0):
        res = _run(MODELS[name], f"error-budget={budget}")
        for node in res.graph.layers():
            L = node.layer
            E, E_q = _float_error(node)
            assert E <= (1 + budget) * E_q * (1 + 1e-9)
            assert abs(L.stats["orchestrate"]["error_increase"] - (E / E_q - 1)) < 1e-6
            W = to_matrix(L.kind, L.quant.w_int.astype(np.int64), L.groups, node.attrs)
            assert np.array_equal(digits_value(L.digits, 1), W)
            assert np.abs(W).max() <= 127
        st = res.ctx.stats["orchestrate-bits"]
        assert st["nonempty_segments"]["final"] < st["nonempty_segments"]["recoded"]
        finals.append(st["nonempty_segments"]["final"])
    assert finals[0] >= finals[1] >= finals[2]


def test_max_digits_bounds_every_weight():
    res = _run(MODELS["dense_conv"], "max-digits=2,error-budget=2")
    for node in res.graph.layers():
        d = node.layer.digits
        assert np.count_nonzero(d, axis=0).max() <= 2
        W = to_matrix(node.layer.kind, node.layer.quant.w_int.astype(np.int64), node.layer.groups, node.attrs)
        assert np.array_equal(digits_value(d, 1), W)
    assert res.ctx.stats["orchestrate-bits"]["digits_per_weight"]["final"] < \
        res.ctx.stats["orchestrate-bits"]["digits_per_weight"]["binary"]


@pytest.mark.parametrize("overrides,signed", [(("cell_bits=2",), True), (("signed_digits=false",), False)])
def test_other_digit_systems(overrides, signed):
    res = _run(MODELS["dense_conv"], "error-budget=1", overrides=overrides)
    cb = res.target.cell_bits
    for node in res.graph.layers():
        L = node.layer
        E, E_q = _float_error(node)
        assert E <= 2.0 * E_q * (1 + 1e-9)
        W = to_matrix(L.kind, L.quant.w_int.astype(np.int64), L.groups, node.attrs)
        assert L.digits.shape[0] == n_planes(8, cb, "split", signed_digit=True)
        assert np.all(np.abs(L.digits) < (1 << cb))
        assert np.array_equal(digits_value(L.digits, cb), W)
        if not signed:  # sign-magnitude: every digit has its weight's sign
            assert np.all(L.digits * np.sign(W)[None] >= 0)


def test_deterministic_and_offset_target_rejected():
    a = _run(MODELS["tiny_cnn"])
    b = _run(MODELS["tiny_cnn"])
    for x, y in zip(a.graph.layers(), b.graph.layers()):
        assert np.array_equal(x.layer.digits, y.layer.digits)
        assert np.array_equal(x.layer.row_perm, y.layer.row_perm)
    with pytest.raises(XbcError, match="weight_encoding"):
        _run(MODELS["gemm"], target="isaac")


def test_pruned_weights_stay_zero():
    res = compile_model(MODELS["dense_conv"], "sme",
                        pipeline="quantize,cim-sparsity{sparsity=0.3,row-block=16,col-block=4},orchestrate-bits{error-budget=4}")
    node = next(res.graph.layers())
    q = node.layer.quant
    pruned = (q.w_int_initial != 0) & (q.w_int == 0)
    assert pruned.sum() > 0
    mask = node.layer.stats["cim_pruned_groups"]
    assert mask.sum() > 0
    W = to_matrix(node.layer.kind, q.w_int, 1, node.attrs)
    from xbc.passes.cim_sparsity import group_mask_to_matrix
    z = group_mask_to_matrix(mask, W.shape, None, None, 16, 4)
    assert np.all(W[z] == 0)


def test_twos_complement_form_on_mixed_sign_units():
    from xbc.passes.orchestrate_bits import orchestrate_matrix

    rng = np.random.default_rng(4)
    V = np.clip(np.rint(rng.laplace(0, 20, (1, 128, 16))), -127, 127).astype(np.int64)
    kw = dict(cell_bits=1, planes=8, signed=True, qmax=127, segment_rows=128, perm=None, max_digits=None,
              budget=0.0, E_q=1.0, max_segment_digits=128, max_rounds=8)
    D, Vn, info = orchestrate_matrix(V, V.astype(np.float64), np.ones((1, 16)), np.zeros(V.shape, bool), **kw)
    assert np.array_equal(Vn, V) and np.array_equal(digits_value(D, 1), V)
    sm = info["nonempty_segments_sign_magnitude"]
    assert info["nonempty_segments_final"] <= 0.65 * sm                    # 14 -> 8 pairs per unit
    assert info["unit_forms"]["twos_complement"] + info["unit_forms"]["twos_complement_mirrored"] > 0
    D2, _, info2 = orchestrate_matrix(V, V.astype(np.float64), np.ones((1, 16)), np.zeros(V.shape, bool),
                                      twos_complement=False, **kw)
    assert info2["nonempty_segments_recoded"] >= 0.9 * sm
    assert np.array_equal(digits_value(D2, 1), V)


def test_lower_plane_compensation_keeps_the_budget():
    res = _run(MODELS["dense_conv"], "compensate=lower,error-budget=1")
    node = next(res.graph.layers())
    E, E_q = _float_error(node)
    assert E <= 2.0 * E_q * (1 + 1e-9)
    st = res.ctx.stats["orchestrate-bits"]["nonempty_segments"]
    assert st["final"] < st["recoded"]


# ---------------------------------------------------------------------------------------- fast paths
# The vectorized fast paths must give exactly what the general digit-array code gives.

def _random_units(seed, G=2, nb=3, C=5, S=16, wb=8):
    rng = np.random.default_rng(seed)
    q = 2 ** (wb - 1) - 1
    V = np.clip(np.rint(rng.laplace(0, q / 6, (G, nb, C, S))), -q, q).astype(np.int64)
    V[0, 0, 0] = np.arange(S) - S // 2          # a unit of small mixed values
    V[0, 0, 1] = 0                               # an empty unit
    V[-1, -1, -1] = -q                           # a unit needing every plane
    return V


@pytest.mark.parametrize("signed,tc,maxd", [(True, True, None), (True, False, None), (False, True, None),
                                            (True, True, 3)])
def test_binary_unit_forms_equal_the_digit_array_path(signed, tc, maxd):
    from xbc.passes.orchestrate_bits import _binary_unit_forms, _recode_units_general, segment_counts
    for seed in range(3):
        Vu = _random_units(seed)
        G, nb, C, S = Vu.shape
        V = Vu.transpose(0, 1, 3, 2).reshape(G, nb * S, C)       # identity row order
        perm = np.tile(np.arange(nb * S), (G, 1))
        i1, i2 = {}, {}
        D1 = _recode_units_general(V, perm, S, 1, 8, 7, signed, tc, maxd, i1)
        D2, N2 = _binary_unit_forms(Vu.astype(np.int32), 8, 7, signed, tc, maxd, i2)
        assert D2.dtype == np.int8 and np.array_equal(D1, D2) and i1 == i2
        assert np.array_equal(segment_counts(D1), N2)


def test_naf_digits_and_digits_value_match_the_definitions():
    from xbc.passes.orchestrate_bits import naf_masks
    v = np.arange(-(2 ** 11), 2 ** 11).reshape(64, 64)[:, ::-1]     # not contiguous
    d = naf_digits(v, 13)
    ref = np.zeros((13,) + v.shape, np.int8)                        # NAF by the textbook loop
    n = v.copy()
    for p in range(13):
        r = np.where(n % 2 != 0, 2 - (n % 4), 0)
        ref[p] = r
        n = (n - r) // 2
    assert np.array_equal(d, ref)
    pm, nm = naf_masks(v, 13)
    assert pm.dtype == np.uint16 and not np.any(pm & nm)
    for P, cb, dt in ((8, 1, np.int8), (4, 2, np.int8), (24, 1, np.int8), (5, 3, np.int16), (40, 1, np.int64)):
        dg = np.random.default_rng(P).integers(-(2 ** cb - 1), 2 ** cb, (P, 3, 7)).astype(dt)
        naive = sum(dg[p].astype(np.int64) * (1 << (cb * p)) for p in range(P))
        out = digits_value(dg, cb)
        assert out.dtype == np.int64 and np.array_equal(out, naive)


@pytest.mark.parametrize("near_integers", [False, True])
def test_clearer_fast_costs_equal_the_general_evaluation(near_integers, monkeypatch):
    from xbc.passes.orchestrate_bits import _binary_unit_forms, _Clearer, segment_counts
    rng = np.random.default_rng(7)
    Vu = _random_units(3)
    T = Vu + rng.uniform(-0.5, 0.5, Vu.shape)
    if near_integers:          # targets a hair above an integer: the rounded-key branch
        T[::2] = Vu[::2] + 1e-15
    Du, N = _binary_unit_forms(Vu.astype(np.int32), 8, 7, True, True, None, {})
    s2 = rng.uniform(0.5, 2.0, (Vu.shape[0], 1, Vu.shape[2], 1))
    cl = _Clearer(Du.copy(), Vu.copy(), T, s2, 1, 127)
    g, b, c, p, s = np.nonzero(N > 0)
    fast = cl.evaluate(g, b, c, p, s, N, cost_only=True)[0]
    general = cl.evaluate(g, b, c, p, s, N)[0]
    assert np.array_equal(fast, general) and np.isfinite(fast).any()
    monkeypatch.setattr(_Clearer, "DENSE_MAX", 0)           # wide weights: binary search instead
    cl2 = _Clearer(Du.copy(), Vu.copy(), T, s2, 1, 127)
    assert np.array_equal(cl2.evaluate(g, b, c, p, s, N, cost_only=True)[0], fast)
