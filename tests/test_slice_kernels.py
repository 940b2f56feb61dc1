"""slice-bits and squeeze: the numba kernels against the numpy reference (same cells, segments,
programs, items, errors), on every crossbar op kind, both digit layouts, every encoding."""

from __future__ import annotations

import numpy as np
import pytest

import xbc.packing as packing
import xbc.passes.slice_bits as sb
import xbc.passes.squeeze as sq
from tests.graphs import all_crossbar_models, conv_model
from xbc import frontend, targets
from xbc.errors import XbcError
from xbc.layer import Segment
from xbc.passmanager import PassContext, PassManager

PROGRAM_FIELDS = ("cells", "row_group", "row_index", "col_group", "col_index", "col_shift", "col_sign")


def _compiled(model, tname, pipeline):
    t = targets.load(tname)
    g = frontend.load_model(model)
    PassManager(pipeline).run(g, PassContext(target=t))
    return g, t


def _same_cells(L, node, t):
    a = sb.layer_cells_np(L, node, t)
    b = sb.layer_cells(L, node, t)
    assert a[1:] == b[1:]
    assert a[0].dtype == b[0].dtype and a[0].shape == b[0].shape
    assert np.array_equal(a[0], b[0])


def _error(f, *args):
    with pytest.raises(XbcError) as e:
        f(*args)
    return type(e.value), str(e.value)


@pytest.mark.parametrize("name", sorted(all_crossbar_models()))
@pytest.mark.parametrize("tname,pipe", [("sme", "quantize,orchestrate-bits,reorder"), ("sme", "quantize"),
                                        ("isaac", "quantize"), ("bitslice", "quantize")])
def test_layer_cells_kernels_equal_numpy(name, tname, pipe):
    g, t = _compiled(all_crossbar_models()[name], tname, pipe)
    rng = np.random.default_rng(0)
    for node in g.layers():
        L = node.layer
        _same_cells(L, node, t)
        if L.row_perm is None:   # permutations (reorder sets them on sme only)
            L.row_perm = np.stack([rng.permutation(L.rows) for _ in range(L.groups)]).astype(np.int32)
            L.col_perm = np.stack([rng.permutation(L.cols) for _ in range(L.groups)]).astype(np.int32)
            _same_cells(L, node, t)
        if L.digits is not None:
            D = np.asarray(L.digits)
            P, G, R, C = D.shape
            # digits stored [P,G,R,C], [G,R,C,P] (one uint64 per weight) and [G,R,P,C], and 9 planes
            for layout in ((0, 1, 2, 3), (1, 2, 3, 0), (1, 2, 0, 3)):
                L.digits = np.ascontiguousarray(D.transpose(layout)).transpose(np.argsort(layout))
                _same_cells(L, node, t)
            L.digits = np.concatenate([D, np.zeros_like(D[:1])])
            _same_cells(L, node, t)
            L.digits = D


def test_layer_cells_kernel_errors_equal_numpy():
    g, t = _compiled(conv_model(cin=8, cout=8, k=3, hw=4, seed=6), "sme", "quantize,orchestrate-bits,reorder")
    node = next(g.layers())
    L = node.layer
    D = np.array(L.digits)
    for p, v in ((0, None), (2, 1), (3, -1)):   # sum off by one; a 2 or -2 digit (1-bit cells)
        E = D.copy()
        E[p, 0, 1, 2] = E[p, 0, 1, 2] + 1 if v is None else 2 * v
        L.digits = E
        assert _error(sb.layer_cells, L, node, t) == _error(sb.layer_cells_np, L, node, t)
    L.digits = D.astype(np.int16)            # not int8: the numpy path
    _same_cells(L, node, t)
    L.digits = None
    w = np.array(L.quant.w_int)
    w.flat[5] = 1 << L.quant.weight_bits
    L.quant.w_int = w
    assert _error(sb.layer_cells, L, node, t) == _error(sb.layer_cells_np, L, node, t)


def _state(g):
    out = []
    for node in g.layers():
        L = node.layer
        p = L.program
        out.append(({k: v for k, v in L.stats.items()}, [getattr(p, f) for f in PROGRAM_FIELDS], p.offset,
                    [(s.group, s.rows, s.col_index, s.col_shift, s.col_sign, s.cells) for s in L.segments]))
    return out


def _equal(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("tname,pipe", [
    ("sme", "quantize,orchestrate-bits,reorder,slice-bits,squeeze"),
    ("sme", "quantize,slice-bits{share-groups=false},squeeze{split=false}"),
    ("bitslice", "quantize,slice-bits,squeeze{exact-limit=0}"),
    ("isaac", "quantize,slice-bits"),
])
def test_passes_with_kernels_equal_the_reference(tname, pipe, monkeypatch):
    for name, model in all_crossbar_models().items():
        g1, _ = _compiled(model, tname, pipe)
        for mod in (sb, sq, packing):
            monkeypatch.setattr(mod, "KERNELS", False)
        g2, _ = _compiled(model, tname, pipe)
        monkeypatch.undo()
        assert _equal(_state(g1), _state(g2)), name


def _random_segment(rng, r, L, binary):
    dens = rng.uniform(0, 1) ** 3
    cells = (rng.random((r, L)) < dens).astype(np.uint8)
    if not binary:
        cells *= rng.integers(0, 4, (r, L)).astype(np.uint8)
    if rng.random() < 0.3:   # repeated columns: ties in the support order
        cells = np.ascontiguousarray(cells[:, rng.integers(0, L, L)])
    return Segment(group=0, rows=np.arange(r, dtype=np.int32), col_index=np.arange(L, dtype=np.int32),
                   col_shift=np.zeros(L, np.int32), col_sign=np.ones(L, np.int8), cells=cells)


def test_segment_items_kernel_equals_numpy(monkeypatch):
    rng = np.random.default_rng(1)
    for _ in range(600):
        r, L = int(rng.integers(1, 140)), int(rng.integers(1, 300))
        binary = bool(rng.integers(0, 2))
        seg = _random_segment(rng, r, L, binary)
        Cx = int(rng.integers(1, 40))
        for split in (True, False):
            monkeypatch.setattr(sq, "KERNELS", False)
            a = sq._segment_items(seg, Cx, split, binary)
            monkeypatch.setattr(sq, "KERNELS", True)
            b = sq._segment_items_fast(seg, Cx, split, binary)
            if a is None:
                assert b is None
                continue
            assert a[3] == b[3] and (a[1] is a[2]) == (b[1] is b[2])
            sa, sb_ = a[0][0].s, b[0][0].s
            assert _equal(sa.cols, sb_.cols) and _equal(sa.packed, sb_.packed) and sa.r == sb_.r
            for va, vb in zip(a[:3], b[:3]):
                assert (va is None) == (vb is None)
                for x, y in zip(va or [], vb or []):
                    assert (x.lo, x.hi, x.nrows) == (y.lo, y.hi, y.nrows)
                    mx = x.mask if x.mask is not None else sa.mask(x.lo, x.hi)
                    assert _equal(mx, y.mask) and int(mx.sum()) == x.nrows


def test_radix_argsort_is_the_stable_argsort():
    k = sq._kernels()  # noqa: F841 - compiles the helpers
    rng = np.random.default_rng(2)
    for _ in range(200):
        n = int(rng.integers(0, 2000))
        key = rng.integers(0, 2 ** 63, n, dtype=np.uint64) >> np.uint64(int(rng.integers(0, 64)))
        if n and rng.random() < 0.5:
            key[rng.integers(0, n, n // 2)] = key[0]
        assert np.array_equal(sq._k_argsort_nb(key), np.argsort(key, kind="stable"))
