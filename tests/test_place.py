"""Tests of the placement model (xbc/placement.py) and the ``place`` pass (passes/place.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests import graphs
from xbc.compiler import compile_model
from xbc.errors import OptionError, PlacementError, XbcError
from xbc.passmanager import parse_pipeline
from xbc.placement import (Instance, LayerDemand, Options, assign_slots, auto_weights, band,
                           build_model, check_solution, contiguous, duplicate, evaluate, greedy, place,
                           render_placement, solve, stage_latency, synthetic_resnet50, tile_order)

PIPE = "fold-batchnorm,quantize,slice-bits,squeeze,adc-size,place"
FAST = Options(time_limit=0.3)


def random_instance(seed: int, *, adc: bool = False, keep_whole: bool = False, edges: bool = True) -> Instance:
    rng = np.random.default_rng(seed)
    L = int(rng.integers(3, 12))
    cap = int(rng.integers(4, 16))
    layers = []
    for i in range(L):
        n = int(rng.integers(0 if i == 1 else 1, 2 * cap + 3))
        a = tuple(int(v) for v in rng.integers(1, 5, n)) if adc else ()
        layers.append(LayerDemand(id=f"L{i}", n=n, adc=a, positions=int(rng.integers(1, 500))))
    e = tuple((i, j, int(rng.integers(1, 20))) for i in range(L) for j in range(i + 1, min(L, i + 3))
              if edges and rng.random() < 0.7)
    total = sum(ly.n for ly in layers)
    return Instance(layers=tuple(layers), edges=e, capacity=cap, adcs_per_tile=(2 * cap if adc else cap),
                    tiles=total + 4, mesh_cols=int(rng.integers(2, 6)), dac_cycles=8,
                    keep_whole=keep_whole, name="rand")


def assert_valid(inst: Instance, slots, tiles_limit: int | None = None) -> None:
    """Every crossbar (all copies) on exactly one (tile, slot); slots unique, below capacity."""
    tiles = np.concatenate([t for t, _ in slots]) if slots else np.zeros(0)
    sl = np.concatenate([s for _, s in slots]) if slots else np.zeros(0)
    assert tiles.size == inst.total
    assert (tiles >= 0).all() and (tiles < (tiles_limit or inst.tiles)).all()
    assert (sl >= 0).all() and (sl < inst.capacity).all()
    keys = tiles.astype(np.int64) * inst.capacity + sl
    assert np.unique(keys).size == keys.size, "two crossbars share a (tile, slot)"
    assert np.bincount(tiles.astype(np.int64)).max(initial=0) <= inst.capacity
    adc_per_tile = np.zeros(inst.tiles, np.int64)
    for ly, (t, _) in zip(inst.layers, slots):
        np.add.at(adc_per_tile, t, np.tile(ly.adc_array(), ly.copies))
    assert adc_per_tile.max(initial=0) <= inst.adcs_per_tile


# ----------------------------------------------------------------------------------------
# model on instances built directly
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_random_instances_feasible_and_cpsat_not_worse(seed):
    inst = random_instance(seed, adc=seed % 2 == 1, keep_whole=seed % 3 == 2)
    g = greedy(inst)                      # the same compact order solve() uses
    assert g is not None
    check_solution(inst, g)
    res = place(inst, FAST)
    check_solution(inst, res.solution)
    assert_valid(inst, res.slots)
    again = assign_slots(inst, res.solution)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(again, res.slots))
    rep = res.report
    w = auto_weights(inst, g.order, FAST)
    assert rep["weights"] == dict(zip(("tiles", "split", "traffic"), w))
    assert rep["objective"] == evaluate(inst, res.solution, w)["objective"]
    assert rep["objective"] <= rep["greedy_objective"] == evaluate(inst, g, w)["objective"]
    assert rep["bound"] <= rep["objective"]
    assert rep["tiles_used"] == len(rep["utilization"]) == len(rep["tile_ids"])
    # counts in the report match the slots of the primary copies
    for ly, (t, _) in zip(inst.layers, res.slots):
        ids, cnt = np.unique(t[:ly.n], return_counts=True)
        assert rep["layers"][ly.id] == {"tiles": ids.tolist(), "counts": cnt.tolist()}


def test_known_optimum_split():
    # capacity 4, layers 3, 2, 3: two tiles, and one layer must be split (3+2 > 4, 3+3 > 4)
    inst = Instance(layers=(LayerDemand("a", 3), LayerDemand("b", 2), LayerDemand("c", 3)),
                    capacity=4, adcs_per_tile=4, tiles=8, mesh_cols=4)
    sol, rep = solve(inst, Options(time_limit=5))
    # no edges: w_traffic = 1, TRmax = 0 -> w_split = 1; SPmax = 1+1+1 = 3 -> w_tiles = 4
    assert rep["weights"] == {"tiles": 4, "split": 1, "traffic": 1}
    assert rep["objective"] == 4 * 2 + 1 * 1
    assert rep["objective_terms"] == {"tiles": 2, "split": 1, "traffic": 0}
    assert rep["status"] == "OPTIMAL" and rep["gap"] == 0.0


def test_known_optimum_traffic_beats_greedy():
    # three single-tile layers, only a -> c talks. Candidates (2-wide snake): tiles 0 (0,0),
    # 1 (0,1), 3 (1,1). Greedy puts a, b, c on 0, 1, 3: distance |a-c| = 2. Optimum: a and c
    # on neighbouring tiles, distance 1.
    inst = Instance(layers=(LayerDemand("a", 2), LayerDemand("b", 2), LayerDemand("c", 2)),
                    edges=((0, 2, 1),), capacity=2, adcs_per_tile=2, tiles=4, mesh_cols=2)
    assert tile_order(4, 2, 3).tolist() == [0, 1, 3, 2]
    sol, rep = solve(inst, Options(time_limit=5, window=0))
    # TRmax = span 2 * weight 1 = 2 -> w_split = 3; SPmax = 3 -> w_tiles = 3*3 + 2 + 1 = 12
    assert rep["weights"] == {"tiles": 12, "split": 3, "traffic": 1}
    assert rep["greedy_objective"] == 12 * 3 + 2
    assert rep["objective"] == 12 * 3 + 1
    assert rep["objective_terms"] == {"tiles": 3, "split": 0, "traffic": 1}
    assert rep["method"] == "cp-sat" and rep["status"] == "OPTIMAL"


def test_contiguous_dp_by_hand():
    # capacity 4, layers 3, 3, 1: first fit splits b over tiles 0/1; one empty slot before b
    # (the only slack: 2*4 - 7 = 1) puts it on tile 1 whole
    inst = Instance(layers=(LayerDemand("a", 3), LayerDemand("b", 3), LayerDemand("c", 1)),
                    capacity=4, adcs_per_tile=4, tiles=4, mesh_cols=2)
    w = (1, 1, 1)
    assert evaluate(inst, greedy(inst), w)["split"] == 1
    h = contiguous(inst)
    check_solution(inst, h)
    assert [c.ravel().tolist() for c in h.counts] == [[3, 0], [0, 3], [0, 1]]
    assert evaluate(inst, h, w)["split"] == 0
    # not applicable where ADC sets bind or layers must stay whole
    assert contiguous(Instance(**{**inst.__dict__, "keep_whole": True})) is None
    assert contiguous(Instance(**{**inst.__dict__, "adcs_per_tile": 3})) is None


@pytest.mark.parametrize("seed", range(4))
def test_contiguous_dp_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    C = int(rng.integers(3, 7))
    n = [int(v) for v in rng.integers(1, 2 * C, int(rng.integers(2, 6)))]
    inst = Instance(layers=tuple(LayerDemand(f"L{i}", v) for i, v in enumerate(n)), capacity=C,
                    adcs_per_tile=C, tiles=64, mesh_cols=8)
    K = -(-sum(n) // C)
    S = K * C - sum(n)
    best = None
    for waste in itertools.product(range(S + 1), repeat=len(n)):   # empty slots before each layer
        if sum(waste) > S:
            continue
        pos, splits = 0, 0
        for v, d in zip(n, waste):
            pos += d
            splits += (pos + v - 1) // C - pos // C
            pos += v
        best = splits if best is None else min(best, splits)
    h = contiguous(inst)
    check_solution(inst, h)
    assert evaluate(inst, h, (1, 1, 1))["split"] == best
    assert evaluate(inst, h, (1, 1, 1))["tiles"] == K
    assert best <= evaluate(inst, greedy(inst), (1, 1, 1))["split"]


def test_explicit_weights_single_stage():
    # with traffic weighted above splits, the split-free but distant layout loses
    inst = Instance(layers=(LayerDemand("a", 2), LayerDemand("b", 2), LayerDemand("c", 2)),
                    edges=((0, 2, 1),), capacity=2, adcs_per_tile=2, tiles=4, mesh_cols=2)
    _, rep = solve(inst, Options(time_limit=5, window=0, w_tiles=100, w_split=1, w_traffic=10))
    assert [s["stage"] for s in rep["stages"]] == ["all"]
    assert rep["objective"] == 100 * 3 + 0 + 10 * 1


def test_adc_sets_bind():
    # 4 crossbars of 2 ADC sets each; a tile has room for 4 crossbars but only 6 ADC sets
    inst = Instance(layers=(LayerDemand("a", 4, adc=(2, 2, 2, 2)),), capacity=4, adcs_per_tile=6,
                    tiles=4, mesh_cols=2)
    res = place(inst, FAST)
    assert res.report["tiles_used"] == 2
    assert_valid(inst, res.slots)


def test_keep_whole():
    layers = (LayerDemand("a", 3), LayerDemand("b", 3), LayerDemand("c", 2))
    free = Instance(layers=layers, capacity=4, adcs_per_tile=4, tiles=8, mesh_cols=4)
    whole = Instance(layers=layers, capacity=4, adcs_per_tile=4, tiles=8, mesh_cols=4, keep_whole=True)
    assert solve(free, FAST)[1]["objective_terms"]["tiles"] == 2
    t = solve(whole, FAST)[1]["objective_terms"]
    assert t["tiles"] == 3 and t["split"] == 0


def test_infeasible_error_message():
    inst = Instance(layers=(LayerDemand("a", 5), LayerDemand("b", 4)), capacity=4, adcs_per_tile=4,
                    tiles=2, mesh_cols=2, name="tiny")
    with pytest.raises(PlacementError) as e:
        place(inst, FAST)
    msg = str(e.value)
    assert "needs 9 crossbars" in msg and "2 tiles x 4" in msg and "= 8" in msg and "--set tiles=3" in msg


def test_infeasible_keep_whole():
    # 3 + 3 + 3 on 2 tiles of 5: fits by count (9 <= 10) but not with every layer whole
    inst = Instance(layers=(LayerDemand("a", 3), LayerDemand("b", 3), LayerDemand("c", 3)), capacity=5,
                    adcs_per_tile=5, tiles=2, mesh_cols=2, keep_whole=True, name="t")
    with pytest.raises(PlacementError, match="keep-whole"):
        place(inst, FAST)
    res = place(Instance(**{**inst.__dict__, "keep_whole": False}), FAST)
    assert res.report["tiles_used"] == 2


def test_build_model_without_solving():
    inst = random_instance(3, adc=True)
    g = greedy(inst)
    K = len(g.order)
    m, v = build_model(inst, Options(window=0), order=g.order, hint=g)
    assert m.validate() == ""
    n_classes = sum(len(ly.classes()[0]) for ly in inst.layers if ly.total)
    assert len(v["x"]) == n_classes * K
    assert len(v["y"]) == sum(1 for ly in inst.layers if ly.total) * K
    assert len(v["u"]) == K
    assert len(v["dist"]) == sum(1 for a, b, w in inst.edges if inst.layers[a].n and inst.layers[b].n)
    # a band shrinks the model and keeps the greedy layout inside it
    al = band(inst, g, K, 1)
    m2, v2 = build_model(inst, Options(window=1), order=g.order, hint=g, allowed=al)
    assert len(v2["y"]) <= len(v["y"])
    X = g.per_layer()
    for l, ks in enumerate(al):
        assert set(np.nonzero(X[l])[0]) <= set(ks.tolist())


def test_determinism_same_options_same_placement():
    inst = synthetic_resnet50(seed=1)
    a = place(inst, Options(time_limit=0.2, seed=3))
    b = place(inst, Options(time_limit=0.2, seed=3))
    for (ta, sa), (tb, sb) in zip(a.slots, b.slots):
        assert np.array_equal(ta, tb) and np.array_equal(sa, sb)
    strip = lambda r: {k: v for k, v in r.items() if "seconds" not in k and k != "stages"}  # noqa: E731
    assert strip(a.report) == strip(b.report)
    # stopped by the deterministic budget, not by proving optimality: the case that needs care
    assert a.report["status"] == "FEASIBLE" and a.report["deterministic"]
    assert a.report["deterministic_time"] == pytest.approx(0.2, abs=0.02)
    assert_valid(inst, a.slots)
    assert a.report["objective"] <= a.report["greedy_objective"]


def test_determinism_two_workers():
    inst = random_instance(11, adc=True)
    o = Options(time_limit=0.2, seed=5, workers=2)
    a, b = place(inst, o), place(inst, o)
    for (ta, sa), (tb, sb) in zip(a.slots, b.slots):
        assert np.array_equal(ta, tb) and np.array_equal(sa, sb)


# ----------------------------------------------------------------------------------------
# duplication
# ----------------------------------------------------------------------------------------

def test_stage_latency_and_duplicate_by_hand():
    inst = Instance(layers=(LayerDemand("a", 1, positions=100, row_blocks=2), LayerDemand("b", 1, positions=10)),
                    capacity=4, adcs_per_tile=4, tiles=4, mesh_cols=2, dac_cycles=8)
    assert stage_latency(inst).tolist() == [100 * 8 * 2, 10 * 8]
    assert stage_latency(inst, [3, 1]).tolist() == [34 * 8 * 2, 80]
    d = duplicate(inst, budget_tiles=1)          # 2 free crossbars: both go to the bottleneck a
    assert d["copies"] == [3, 1]
    assert d["latency_before"] == 1600 and d["latency_after"] == 34 * 16
    assert d["extra_crossbars"] == 2


def test_duplicate_takes_back_useless_copies():
    # a and b tie at 800 cycles; a budget of one extra crossbar cannot lower the maximum
    inst = Instance(layers=(LayerDemand("a", 1, positions=100), LayerDemand("b", 1, positions=100)),
                    capacity=3, adcs_per_tile=3, tiles=4, mesh_cols=2, dac_cycles=8)
    d = duplicate(inst, budget_tiles=1)
    assert d["copies"] == [1, 1] and d["latency_after"] == 800


def test_place_with_duplication_report():
    inst = random_instance(4)
    need = len(greedy(inst).order)
    # a tile budget below what the layers need leaves no room for copies
    d0 = place(inst, FAST, dup=True, dup_tiles=1).report["duplication"]
    assert d0["budget_tiles"] == need and d0["latency_after"] <= d0["latency_before"]
    res = place(inst, FAST, dup=True, dup_tiles=need + 3)
    d = res.report["duplication"]
    assert d["enabled"] and d["latency_after"] < d["latency_before"] and d["budget_tiles"] == need + 3
    assert_valid(res.instance, res.slots)
    assert res.report["tiles_used"] <= need + 3
    assert res.instance.total == inst.total + d["extra_crossbars"]
    for ly, (t, s) in zip(res.instance.layers, res.slots):
        reps = d["replica_placement"].get(ly.id, [])
        assert len(reps) == ly.copies - 1 == d["replicas"].get(ly.id, 0)
        for r in reps:
            c = r["copy"]
            assert r["tile"] == t[c * ly.n:(c + 1) * ly.n].tolist()
            assert r["slot"] == s[c * ly.n:(c + 1) * ly.n].tolist()
    assert int(max(d["stage_latency"].values())) == d["latency_after"]


# ----------------------------------------------------------------------------------------
# the pass on compiled models
# ----------------------------------------------------------------------------------------

def _check_graph_placement(res):
    tgt = res.target
    meta = res.graph.meta["placement"]
    keys = []
    for node in res.graph.layers():
        p = node.layer.program
        assert p.tile is not None and p.tile.dtype == np.int32 and p.tile.shape == (p.n_crossbars,)
        assert p.slot.dtype == np.int32 and p.slot.shape == (p.n_crossbars,)
        keys += list(zip(p.tile.tolist(), p.slot.tolist()))
        for r in meta["duplication"]["replica_placement"].get(node.layer.id, []):
            keys += list(zip(r["tile"], r["slot"]))
        ids, cnt = np.unique(p.tile, return_counts=True)
        assert meta["layers"][node.layer.id] == {"tiles": ids.tolist(), "counts": cnt.tolist()}
    assert len(set(keys)) == len(keys)
    t = np.array([k[0] for k in keys])
    s = np.array([k[1] for k in keys])
    assert (s < tgt.crossbars_per_tile).all() and (t < tgt.tiles).all()
    assert np.bincount(t).max() <= tgt.crossbars_per_tile
    assert meta["tiles_used"] == len(np.unique(t))
    for k in ("status", "objective", "bound", "gap", "seconds", "method", "tiles_used", "utilization",
              "greedy_objective", "layers", "duplication"):
        assert k in meta
    return meta


@pytest.mark.parametrize("target", ["sme", "mars"])
def test_pass_on_tiny_cnn(target):
    res = compile_model(graphs.tiny_cnn(), target, pipeline=PIPE)
    meta = _check_graph_placement(res)
    assert meta["keep_whole"] == (target == "mars")
    assert meta["objective"] <= meta["greedy_objective"]
    text = render_placement(meta)
    assert f"on {meta['tiles_used']} tile" in text and "utilization" in text


def test_pass_duplication_and_determinism_on_compiled_model():
    pipe = PIPE + "{duplicate=true,time-limit=0.5}"
    a = compile_model(graphs.tiny_cnn(), "mars", pipeline=pipe)
    b = compile_model(graphs.tiny_cnn(), "mars", pipeline=pipe)
    meta = _check_graph_placement(a)
    d = meta["duplication"]
    assert d["enabled"] and d["latency_after"] < d["latency_before"] and d["replicas"]
    assert "duplication: stage latency" in render_placement(meta)
    for na, nb in zip(a.graph.layers(), b.graph.layers()):
        assert np.array_equal(na.layer.program.tile, nb.layer.program.tile)
        assert np.array_equal(na.layer.program.slot, nb.layer.program.slot)


def test_pass_infeasible_target():
    ok = compile_model(graphs.tiny_cnn(), "sme", pipeline=PIPE)
    n = ok.graph.meta["placement"]["crossbars"]
    assert n == sum(nd.layer.program.n_crossbars for nd in ok.graph.layers()) and n > 2
    with pytest.raises(XbcError) as e:
        compile_model(graphs.tiny_cnn(), "sme", pipeline=PIPE, overrides=["tiles=1", "crossbars_per_tile=2"])
    msg = str(e.value)
    assert "pass 'place'" in msg and f"needs {n} crossbars" in msg
    assert "1 tiles x 2 crossbars per tile = 2" in msg and f"--set tiles={-(-n // 2)}" in msg
    assert e.value.exit_code == 2


def test_greedy_only():
    inst = random_instance(2)
    res = place(inst, Options(greedy_only=True))
    r = res.report
    assert r["status"] == "NOT_RUN" and r["method"] in ("greedy", "contiguous")
    assert r["objective"] == min(r["greedy_objective"], r.get("contiguous_objective", r["greedy_objective"]))
    assert r["stages"] == [] and r["bound"] <= r["objective"]
    assert_valid(inst, res.slots)


def test_pass_instance_from_graph():
    from xbc.passes.place import crossbar_adc_sets, instance_from_graph
    res = compile_model(graphs.tiny_cnn(), "mars", pipeline=PIPE)
    inst = instance_from_graph(res.graph, res.target)
    nodes = list(res.graph.layers())
    assert [ly.id for ly in inst.layers] == [n.layer.id for n in nodes]
    assert [ly.n for ly in inst.layers] == [n.layer.program.n_crossbars for n in nodes]
    # conv1 (16x16 output) -> dw2 (8x8) -> pw3 (8x8) -> fc (1 row), chained through digital ops
    assert [ly.positions for ly in inst.layers] == [256, 64, 64, 1]
    assert [(a, b) for a, b, _ in inst.edges] == [(0, 1), (1, 2), (2, 3)]
    assert inst.edges[0][2] == 100 and inst.keep_whole and inst.dac_cycles == 8
    # ADC sets: 64 columns in 4 partitions of 16
    cg = np.full((3, 64), -1, np.int32)
    cg[0, :1] = 0
    cg[1, 15:17] = 0
    cg[2, :] = 0
    assert crossbar_adc_sets(cg, 4).tolist() == [1, 2, 4]
    assert crossbar_adc_sets(np.full((1, 64), -1, np.int32), 4).tolist() == [1]


def test_pass_options_are_checked():
    with pytest.raises(OptionError, match="workers"):
        parse_pipeline("place{workers=0}")
    with pytest.raises(OptionError, match="time-limit"):
        parse_pipeline("place{time-limit=-1}")
    p = parse_pipeline("place{duplicate=true,dup-tiles=4,traffic=unit,window=0}")[0]
    assert p.duplicate and p.dup_tiles == 4 and p.traffic == "unit" and p.window == 0
