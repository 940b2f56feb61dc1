"""The bundle writer's fast paths give the bytes of the plain ones: hashing on worker threads
(arrays.bin, every sha256 in mapping.json) and graph.onnx exported without the crossbar weights."""

from __future__ import annotations

import pytest

from graphs import all_crossbar_models, tiny_cnn
from xbc import bundle as xb
from xbc.compiler import compile_model


@pytest.fixture(scope="module")
def compiled():
    return [compile_model(tiny_cnn(seed=3), "sme"), compile_model(all_crossbar_models()["grouped_conv"], "bitslice"),
            compile_model(all_crossbar_models()["gemm"], "isaac")]


def _files(path):
    return {n: (path / n).read_bytes() for n in xb.BUNDLE_FILES}


def test_threaded_hashing_gives_the_same_bundle(compiled, tmp_path, monkeypatch):
    for k, res in enumerate(compiled):
        monkeypatch.setattr(xb, "_HASH_ASYNC", 1 << 62)   # everything hashed inline
        xb.write_bundle(res, tmp_path / f"inline{k}")
        monkeypatch.setattr(xb, "_HASH_ASYNC", 0)         # everything on the worker threads
        xb.write_bundle(res, tmp_path / f"threads{k}")
        monkeypatch.undo()
        assert _files(tmp_path / f"inline{k}") == _files(tmp_path / f"threads{k}")
        assert xb.validate_bundle(tmp_path / f"threads{k}").ok


def test_crossbar_views_equal_view_refs(compiled, tmp_path):
    res = compiled[0]
    for node in res.graph.layers():
        cells = node.layer.program.cells
        with open(tmp_path / "a.bin", "wb") as f:
            aw = xb._ArrayWriter(f)
            aw.add(cells[:1, :1], "|u1")      # some offset first
            base = aw.add(cells, "|u1")
            views = aw.views(base, cells)
            aw.finish()
        assert base["sha256"] is not None
        assert views == [xb._view_ref(base, cells, x) for x in range(cells.shape[0])]


def test_graph_export_without_crossbar_weights_is_the_full_export(compiled, monkeypatch):
    for res in compiled:
        g = res.graph
        by_name = {n.name: n for n in g.layers()}
        drop = xb._layer_only_constants(g, by_name)
        assert drop   # the weights of the crossbar layers
        fast = xb.build_graph(g).SerializeToString(deterministic=True)
        monkeypatch.setattr(xb, "_layer_only_constants", lambda graph, by_name: set())
        full = xb.build_graph(g).SerializeToString(deterministic=True)
        # a constant that is still needed makes build_graph export again in full
        needed = {n.inputs[0].name for n in g.nodes if n.inputs and n.inputs[0] is not None} | drop
        monkeypatch.setattr(xb, "_layer_only_constants", lambda graph, by_name: needed)
        again = xb.build_graph(g).SerializeToString(deterministic=True)
        monkeypatch.undo()
        assert fast == full == again
