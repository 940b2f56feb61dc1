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


# ---------------------------------------------------------------------------------------- numba kernels
# The numba kernels of the segment clearing (compensate=all, dense tables) must give exactly what the
# numpy reference (_Clearer.KERNELS = False) gives: the same costs (bit for bit: the kernels add the
# entries of a candidate in the same order as np.bincount), the same moves, the same final state.

def _clearer_instance(seed, cell_bits=1, signed=True, max_digits=None, compensate="all", ties=False,
                      near_integers=False, wild=False, G=2, nb=3, C=5, S=16):
    from xbc.passes.orchestrate_bits import _Clearer, _recode_units_general, segment_counts
    rng = np.random.default_rng(seed)
    P = n_planes(8, cell_bits, "split", signed_digit=True)
    Vu = _random_units(seed, G, nb, C, S)
    T = Vu + rng.uniform(-0.5, 0.5, Vu.shape)
    if ties:            # half-integer targets: equally near neighbours, the digit counts decide
        T[:, :, ::2] = Vu[:, :, ::2] + rng.choice([-0.5, 0.5, 1.5, -2.5], Vu[:, :, ::2].shape)
    if near_integers:   # a hair above an integer: the rounded-key branch
        T[::2, :, 1::2] = Vu[::2, :, 1::2] + 1e-15
    if wild:            # targets outside the range, and non-finite ones (a non-finite cost is +inf)
        T[0, 0, 2, :3] = [400.0, np.inf, -np.inf]
    V = Vu.transpose(0, 1, 3, 2).reshape(G, nb * S, C)
    perm = np.tile(np.arange(nb * S), (G, 1))
    Du = _recode_units_general(V, perm, S, cell_bits, P, n_planes(8, cell_bits, "split"), signed, True,
                               max_digits, {})
    s2 = rng.uniform(0.5, 2.0, (G, 1, C, 1))
    s2[0, 0, 1, 0] = 0.0                       # a zero scale
    cl = _Clearer(Du.copy(), Vu.copy(), T, s2, cell_bits, 127, max_digits, signed, compensate == "all")
    return cl, segment_counts(Du)


KERNEL_CASES = [dict(), dict(ties=True), dict(near_integers=True), dict(wild=True), dict(max_digits=2),
                dict(max_digits=3, ties=True), dict(signed=False), dict(cell_bits=2), dict(cell_bits=2, max_digits=2),
                dict(cell_bits=2, ties=True, near_integers=True), dict(signed=False, cell_bits=2, wild=True)]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
@pytest.mark.parametrize("batch", [4096, 7])
def test_kernel_costs_equal_the_numpy_reference(case, batch, monkeypatch, split_threads):
    from xbc.passes.orchestrate_bits import _Clearer
    monkeypatch.setattr(_Clearer, "BATCH", batch)
    for seed in range(3):
        cl, N = _clearer_instance(seed, **case)
        assert cl._kernels_apply()
        g, b, c, p, s = np.nonzero(N > 0)
        ref = np.concatenate([cl._cost_all_planes(g[a:a + batch], b[a:a + batch], c[a:a + batch], p[a:a + batch],
                                                  s[a:a + batch], N) for a in range(0, len(g), batch)])
        got = cl._kernel_costs(g, b, c, p, s, N, batch)
        assert np.array_equal(got, ref)                        # exactly, inf included
        assert np.isfinite(got).any()
        if case.get("wild"):
            assert np.isinf(got).any()
        # candidates without entries cost 0 (as np.bincount), and N=None counts the digits itself
        e = np.nonzero(N == 0)
        z = cl._kernel_costs(*e, N, batch)
        assert np.array_equal(z, np.zeros(len(e[0])))
        assert np.array_equal(cl._kernel_costs(g, b, c, p, s, None, batch), got)
        # the general evaluation gives the same costs (it leaves a NaN of a non-finite target NaN)
        if batch >= len(g) and not case.get("wild"):
            assert np.array_equal(cl.evaluate(g, b, c, p, s, N)[0], got)


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_kernel_moves_equal_the_numpy_reference(case):
    for seed in range(3):
        cl, N = _clearer_instance(seed, **case)
        ref, _ = _clearer_instance(seed, **case)
        ref.KERNELS = False
        rng = np.random.default_rng(seed)
        # one candidate segment per unit with at least one digit (as the greedy rounds take them)
        units = np.argwhere(N.reshape(N.shape[:3] + (-1,)).max(axis=-1) > 0)
        pick = []
        for g, b, c in units:
            ps = np.argwhere(N[g, b, c] > 0)
            pick.append((g, b, c) + tuple(ps[rng.integers(len(ps))]))
        g, b, c, p, s = (np.array(z) for z in zip(*pick))
        cost_k = cl.apply(g, b, c, p, s, N)
        cost_r = ref.apply(g, b, c, p, s, N)
        assert np.array_equal(cost_k, cost_r)
        assert np.array_equal(cl.Du, ref.Du) and np.array_equal(cl.Vu, ref.Vu)
        assert not np.array_equal(cl.Du, _clearer_instance(seed, **case)[0].Du)      # something moved
        # every value still adds up from its digits
        B = 1 << cl.cb
        assert np.array_equal((cl.Du.astype(np.int64) * B ** np.arange(cl.P)).sum(axis=-1), cl.Vu)


def test_kernels_see_infeasible_entries_as_the_reference(monkeypatch):
    """Entries without a neighbour in range (made by cutting the tables) make the cost infinite and
    keep their digits and value in a move, in both implementations."""
    import xbc.passes.orchestrate_bits as ob
    monkeypatch.setattr(ob, "_KERNEL_TABLES", {})
    orig = ob._Clearer._table

    def cut(self, ekey):
        tb = orig(self, ekey)
        if tb[4] is None:
            return tb
        left, right = tb[4].copy(), tb[5].copy()
        mid = len(left) // 2
        left[mid - 20:mid - 3], right[mid - 20:mid - 3] = -np.inf, np.inf    # targets in [-20, -4]
        return tb[:4] + (left, right) + tb[6:]

    monkeypatch.setattr(ob._Clearer, "_table", cut)
    for case in (dict(), dict(cell_bits=2, max_digits=2)):
        cl, N = _clearer_instance(5, **case)
        ref, _ = _clearer_instance(5, **case)
        ref.KERNELS = False
        g, b, c, p, s = np.nonzero(N > 0)
        got = cl._kernel_costs(g, b, c, p, s, N, 4096)
        assert np.array_equal(got, cl._cost_all_planes(g, b, c, p, s, N))
        assert np.isinf(got).any() and np.isfinite(got).any()
        one = np.unique((g * 1000 + b) * 1000 + c, return_index=True)[1]
        args = (g[one], b[one], c[one], p[one], s[one], N)
        assert np.array_equal(cl.apply(*args), ref.apply(*args))
        assert np.array_equal(cl.Du, ref.Du) and np.array_equal(cl.Vu, ref.Vu)


@pytest.mark.parametrize("cell_bits,signed,max_digits,compensate",
                         [(1, True, None, "all"), (1, True, 3, "all"), (1, False, None, "all"), (2, True, None, "all"),
                          (2, True, 2, "all"), (1, True, None, "lower"), (2, True, 2, "lower")])
def test_orchestrate_matrix_same_with_and_without_kernels(cell_bits, signed, max_digits, compensate, monkeypatch):
    from xbc.passes.orchestrate_bits import _Clearer, layer_error_power, orchestrate_matrix
    rng = np.random.default_rng(11)
    G, R, C = 2, 300, 24
    T = np.clip(rng.laplace(0, 15, (G, R, C)), -127, 127)
    T[0, :40] = np.rint(T[0, :40]) + 0.5                 # ties
    T[:, ::7] *= 0.02                                     # nearly empty rows
    V = np.clip(np.rint(T), -127, 127).astype(np.int64)
    frozen = np.zeros(V.shape, bool)
    frozen[1, :5] = V[1, :5] == 0
    perm = np.stack([rng.permutation(R) for _ in range(G)])
    scale = rng.uniform(0.5, 1.5, (G, C))
    kw = dict(cell_bits=cell_bits, planes=n_planes(8, cell_bits, "split", signed_digit=True), signed=signed,
              qmax=127, segment_rows=64, perm=perm, max_digits=max_digits, budget=1.0,
              E_q=layer_error_power(T, V, scale), max_segment_digits=64, max_rounds=16, compensate=compensate)
    out = []
    for kernels in (True, False):
        monkeypatch.setattr(_Clearer, "KERNELS", kernels)
        out.append(orchestrate_matrix(V, T, scale, frozen, **kw))
    (D1, V1, i1), (D2, V2, i2) = out
    assert np.array_equal(D1, D2) and np.array_equal(V1, V2) and i1 == i2
    assert i1["moves"] > 0


def _layouts(A):
    """The same array in C order, Fortran order and rows-adjacent-per-group ([G, C, R]) order."""
    return [np.ascontiguousarray(A), np.asfortranarray(A),
            np.ascontiguousarray(A.transpose(0, 2, 1)).transpose(0, 2, 1)]


@pytest.fixture
def split_threads(monkeypatch):
    """Kernels split into tasks even for tiny inputs, over 3 threads (the result must not change)."""
    from xbc.passes import orchestrate_bits as ob
    ok = ob._kernels()
    monkeypatch.setattr(ok, "MIN_WORK", 0)
    monkeypatch.setattr(ok, "threads", lambda: 3)
    return ok


@pytest.mark.parametrize("signed,tc,maxd,P,S", [(True, True, None, 8, 16), (True, False, None, 8, 16),
                                                (False, True, None, 8, 16), (True, True, 3, 8, 16),
                                                (True, True, None, 6, 16), (True, True, 2, 8, 300)])
def test_fused_unit_forms_equal_the_numpy_path(signed, tc, maxd, P, S, split_threads):
    from xbc.passes.orchestrate_bits import _binary_unit_forms, _fused_unit_forms, _units_layout
    rng = np.random.default_rng(P + S)
    q = 2 ** (P - 1) - 1
    G, R, C = 2, 2 * S + 5, 7
    V = np.clip(np.rint(rng.laplace(0, q / 6, (G, R, C))), -q, q).astype(np.int64)
    V[0, :, 0] = 0
    V[1, :, 1] = np.arange(R) % 9 - 4
    T = V + rng.uniform(-0.5, 0.5, V.shape)
    perm = np.stack([rng.permutation(R) for _ in range(G)])
    Vu = _units_layout(V, perm, S)
    Tu = _units_layout(T, perm, S)
    info = {}
    D_ref, N_ref = _binary_unit_forms(Vu.astype(np.int32), P, P - 1, signed, tc, maxd, info)
    for Vl, Tl in zip(_layouts(V), _layouts(T)[::-1]):
        for dt in (np.int64, np.int32):
            Vk, Tk, Dk, Nk, chosen, st = _fused_unit_forms(Vl.astype(dt), Tl, perm, S, P, signed, tc, maxd, True)
            assert np.array_equal(Vk, Vu) and np.array_equal(Tk, Tu)
            assert np.array_equal(Dk, D_ref) and np.array_equal(Nk, N_ref)
            if signed:
                names = ["signed_digit", "sign_magnitude", "twos_complement", "twos_complement_mirrored"]
                assert dict(zip(names, chosen.tolist())) == info["unit_forms"]
            mag = np.abs(V)
            assert st[0] == sum(bin(int(x)).count("1") for x in mag.ravel())
            assert st[2] == mag.max()
            pos, neg = np.where(V > 0, mag, 0), np.where(V < 0, mag, 0)
            assert st[1] == sum(bin(int(np.bitwise_or.reduce(a[g, perm[g, b * S:(b + 1) * S], c]))).count("1")
                                for a in (pos, neg) for g in range(G) for b in range(-(-R // S)) for c in range(C))
            _, _, D0, N0, _, st0 = _fused_unit_forms(Vl.astype(dt), Tl, perm, S, P, signed, tc, maxd, False)
            assert D0 is None and N0 is None and st0 == st


@pytest.mark.parametrize("G,R,C,S,P", [(1, 100, 9, 32, 8), (2, 20, 7, 32, 8), (3, 50, 4, 16, 4), (2, 9, 1, 1, 8),
                                       (1, 40, 6, 16, 5)])
def test_kernel_matrix_outputs_equal_the_numpy_layouts(G, R, C, S, P, split_threads):
    from xbc.passes.orchestrate_bits import _digits_from_units, _from_units, _matrix_outputs
    ok = split_threads
    rng = np.random.default_rng(R)
    nb = -(-R // S)
    Du = rng.integers(-1, 2, (G, nb, C, S, P)).astype(np.int8)
    Vu = (Du.astype(np.int64) << np.arange(P)).sum(axis=-1)
    Vu0 = Vu.copy()
    Vu0[..., ::3] += 1
    perm = np.stack([rng.permutation(R) for _ in range(G)])
    D_ref, V_ref = _digits_from_units(Du, perm, R), _from_units(Vu, perm, R)
    D, Vn = _matrix_outputs(G, nb, R, C, S, P)
    part = np.zeros((G * nb, 2), np.int64)
    ok.run_tasks(ok.from_units, G * nb, Du, Vu, perm, Vu0, 1, D, Vn, part)
    assert np.array_equal(D, D_ref) and np.array_equal(Vn, V_ref)

    def order(a):   # memory order of the axes longer than 1
        return [ax for ax in np.argsort([-s for s in a.strides], kind="stable") if a.shape[ax] > 1]
    assert order(D) == order(D_ref) and order(Vn) == order(V_ref)
    pad = np.arange(nb * S).reshape(nb, S)[None, :, None, :] < R          # rows past R are not matrix rows
    assert part[:, 0].sum() == np.count_nonzero((Vu != Vu0) & pad) and part[:, 1].sum() == 0
    Du[0, 0, 0, 0, 0] += 1                                                # digits that do not add up
    part[:] = 0
    ok.run_tasks(ok.from_units, G * nb, Du, Vu, perm, Vu0[:0], 1, D, Vn, part)
    assert part[:, 0].sum() == 0 and part[:, 1].sum() == 1


@pytest.mark.parametrize("P", [4, 8, 13])
def test_kernel_support_masks_equal_the_numpy_path(P, split_threads, monkeypatch):
    from xbc.passes.orchestrate_bits import _Clearer, recoded_support_masks
    rng = np.random.default_rng(P)
    q = 2 ** (P - 1) - 1
    W = rng.integers(-q, q + 1, (2, 70, 90))
    for Wl in _layouts(W):
        for signed in (True, False):
            got = recoded_support_masks(Wl.astype(np.int32), 1, P, signed)
            monkeypatch.setattr(_Clearer, "KERNELS", False)
            ref = recoded_support_masks(Wl, 1, P, signed)
            monkeypatch.setattr(_Clearer, "KERNELS", True)
            assert got.dtype == ref.dtype and got.flags.c_contiguous and np.array_equal(got, ref)
    for signed, msg in ((True, "signed binary digits"), (False, "planes of 1 bits")):
        with pytest.raises(ValueError, match=msg):
            recoded_support_masks(np.full((1, 2, 2), 2 ** P), 1, P, signed)


def test_c_order_error_power_sums_as_numpy(split_threads, monkeypatch):
    """_error_power_c_order relies on numpy computing T - V into a C ordered array when V is C
    ordered, whatever T's layout: the same float sum as layer_error_power on a C ordered copy."""
    import itertools

    from xbc.passes.orchestrate_bits import _Clearer, _error_power_c_order, layer_error_power
    rng = np.random.default_rng(3)
    for G, R, C in [(1, 300, 70), (2, 65, 130), (3, 7, 5), (4, 33, 1)]:
        T0 = rng.normal(0, 30, (G, R, C))
        V0 = (np.rint(T0) + rng.integers(-1, 2, T0.shape)).astype(np.int32)
        s = rng.uniform(0.001, 0.1, (G, C))
        for pt, pv in itertools.product(itertools.permutations(range(3)), [(0, 1, 2), (0, 2, 1), (2, 1, 0)]):
            T = np.ascontiguousarray(T0.transpose(pt)).transpose(np.argsort(pt))
            V = np.ascontiguousarray(V0.transpose(pv)).transpose(np.argsort(pv))
            ref = layer_error_power(T, np.ascontiguousarray(V, np.int64), s)
            for kernels in (True, False):
                monkeypatch.setattr(_Clearer, "KERNELS", kernels)
                assert _error_power_c_order(T, V, s) == ref


def test_kernel_moves_with_repeated_units_equal_the_numpy_reference():
    """Several candidates of one unit in one call: every move computed from the state before the
    call, written in candidate order (the later one wins), as the numpy code does."""
    for case in (dict(), dict(cell_bits=2)):
        cl, N = _clearer_instance(2, **case)
        ref, _ = _clearer_instance(2, **case)
        ref.KERNELS = False
        g, b, c, p, s = np.nonzero(N > 0)
        sel = np.concatenate([np.arange(0, len(g), 3), [0, 1]])          # repeated units and a repeated segment
        args = (g[sel], b[sel], c[sel], p[sel], s[sel], N)
        assert np.array_equal(cl.apply(*args), ref.apply(*args))
        assert np.array_equal(cl.Du, ref.Du) and np.array_equal(cl.Vu, ref.Vu)


@pytest.mark.parametrize("name", ["tiny_cnn", "big_conv", "depthwise_conv", "gemm_transB", "grouped_conv_transpose"])
def test_pass_same_with_and_without_kernels(name, split_threads, monkeypatch):
    """The whole pass (pre-reorder, recoding, clearing, outputs, statistics) on the test models."""
    from xbc.passes.orchestrate_bits import _Clearer
    out = []
    for kernels in (True, False):
        monkeypatch.setattr(_Clearer, "KERNELS", kernels)
        res = _run(MODELS[name], "error-budget=1")
        out.append((res.ctx.stats["orchestrate-bits"],
                    [(n.layer.digits, n.layer.digits.strides, n.layer.quant.w_int, n.layer.row_perm)
                     for n in res.graph.layers()]))
    (st1, l1), (st2, l2) = out
    assert st1 == st2 and st1["nonempty_segments"]["final"] < st1["nonempty_segments"]["recoded"]
    for (d1, s1, w1, p1), (d2, s2, w2, p2) in zip(l1, l2):
        assert np.array_equal(d1, d2) and s1 == s2 and np.array_equal(w1, w2) and np.array_equal(p1, p2)
