"""The packing heuristic's numba kernels give the bins of the plain Python reference, decision
for decision (greedy in both modes, every order, the repair moves)."""

from __future__ import annotations

import numpy as np

import xbc.packing as P


def _same(items, Rx, Cx, lb, seed):
    idx = list(range(len(items)))
    a = P._heuristic_py(idx, items, Rx, Cx, lb, seed)
    b = P._heuristic(idx, items, Rx, Cx, lb, seed)
    assert a.n == b.n
    assert [list(d.items()) for d in a.content] == [list(d.items()) for d in b.content]


def test_heuristic_kernels_equal_the_reference_on_random_instances():
    rng = np.random.default_rng(0)
    for trial in range(120):
        k = int(rng.integers(1, 30))
        Rx, Cx = int(rng.integers(2, 20)), int(rng.integers(2, 20))
        items = [(int(rng.integers(1, Rx + 1)), int(rng.integers(1, 3 * Cx))) for _ in range(k)]
        for lb in (P.lower_bound(items, Rx, Cx), 0):   # lb = 0: every greedy result and the repair run
            _same(items, Rx, Cx, lb, trial)


def test_heuristic_kernels_equal_the_reference_when_repair_moves_pieces():
    rng = np.random.default_rng(1)
    improved = 0
    for trial in range(50):
        items = [(int(rng.integers(1, 9)), int(rng.integers(1, 12))) for _ in range(int(rng.integers(5, 60)))]
        r = np.array([i[0] for i in items])
        c = np.array([i[1] for i in items])
        greedy = min(P._greedy(o.tolist(), items, 16, 16, s).n for o in P._orders(r, c, 16, trial)
                     for s in (False, True))
        improved += P._heuristic_py(list(range(len(items))), items, 16, 16, 0, trial).n < greedy
        _same(items, 16, 16, 0, trial)
    assert improved > 5   # the repair step really moved pieces in many of these


def test_heuristic_kernels_on_depthwise_like_layers():
    rng = np.random.default_rng(2)
    shapes = [(8, 6), (8, 7), (8, 8), (9, 6), (9, 7), (7, 5), (2, 1), (3, 2)]
    for trial in range(6):
        items = [shapes[int(rng.integers(0, len(shapes)))] for _ in range(int(rng.integers(100, 700)))]
        _same(items, 128, 128, P.lower_bound(items, 128, 128), trial)
        _same(items, 128, 128, 0, trial)


def test_pack_is_the_same_with_and_without_kernels(monkeypatch):
    rng = np.random.default_rng(3)
    items = [(int(r), int(c)) for r, c in zip(rng.integers(1, 129, 300), rng.integers(1, 400, 300))]
    a = P.pack(items, 128, 128, seed=7, exact_limit=0)
    monkeypatch.setattr(P, "KERNELS", False)
    b = P.pack(items, 128, 128, seed=7, exact_limit=0)
    assert a == b
