"""The mapping bundle: write, read and validate (schema ``xbc.mapping`` version 1.0).

A bundle is a directory (or a ``.xbc`` zip of the same three files)::

    mapping.json   versioned JSON: target, pipeline, model, per-layer quantization, permutations,
                   crossbar program (splice table, row table), per-crossbar tile/slot, placement, stats
    arrays.bin     little-endian binary buffers referenced from mapping.json
    graph.onnx     the whole model for execution: every crossbar layer replaced by a node
                   ``xbc.CrossbarLayer{layer_id=...}`` that reads only the activation input

Array references (glTF style) are ``{"offset", "length", "dtype", "shape", "sha256"}``: the
array is ``numpy.frombuffer(arrays_bin, dtype, count=prod(shape), offset=offset).reshape(shape)``
(C order), ``length`` bytes, ``sha256`` of exactly those bytes. Every stored buffer starts at a
multiple of 8 bytes, padding is zero, and buffers appear in mapping order (layers in graph order,
within a layer: w_scale, w_int, bias, row_perm, col_perm, cells, row_table, splice, col_adc_bits,
col_max_sum). A crossbar's own ``cells`` reference is a view into its layer's stacked ``cells``.

Program encoding per layer with ``X`` crossbars of ``Rx x Cx`` cells (see :mod:`xbc.layer`):

- ``cells``  ``|u1 [X, Rx, Cx]``: the programmed cell values, ``0 <= v < 2**cell_bits``;
- ``row_table`` ``<i4 [X, Rx, 2]``: per physical row ``(group, matrix row)``, ``-1`` when unused;
- ``splice`` ``<i4 [X, Cx, 4]``: per physical column ``(group, output column within group,
  shift, sign)``, group/column ``-1`` and sign ``0`` when unused.

The integer weight matrix the layer computes is (``offset`` is ``2**(weight_bits-1)`` for the
offset encoding, else 0)::

    M[g, r, c] = sum_{x,i,j: row_table[x,i]=(g,r), splice[x,j,:2]=(g,c)} splice[x,j,3] * cells[x,i,j] << splice[x,j,2]
                 - offset

and ``M`` equals the stored ``w_int`` in the matrix view of :func:`xbc.layer.to_matrix`
(invariant 1, conservation), which :func:`validate_bundle` checks for every layer.

Determinism: ``mapping.json`` is ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=True, allow_nan=False)`` plus a newline; floats are Python floats (shortest
round-trip repr); no times, paths (only the model's basename) or hash-order dependent data enter
the bundle, so the same command gives byte-identical files. Writing goes to a temporary
sibling and is renamed into place at the end, so a failure never leaves a partial bundle.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import re
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx

from .errors import BundleError, VerifyError
from .layer import LayerProgram, LayerSpec, matrix_shape, rebuild_matrix, to_matrix

SCHEMA = "xbc.mapping"
SCHEMA_VERSION = "1.0"
KNOWN_SCHEMA_VERSIONS = ("1.0",)
BUNDLE_FILES = ("mapping.json", "arrays.bin", "graph.onnx")
XBC_DOMAIN = "xbc"
XBC_OPSET = 1
CROSSBAR_OP = "CrossbarLayer"
ALIGN = 8

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# ========================================================================================
# JSON helpers
# ========================================================================================

def dumps(obj: Any) -> str:
    """The canonical JSON text of the bundle (sorted keys, compact, ASCII, trailing newline)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n"


def jsonable(obj: Any, where: str = "value") -> Any:
    """Convert numpy scalars/arrays, tuples, sets and non-string keys into plain JSON data.

    Non-finite floats (which JSON cannot hold) become the strings ``"inf"``, ``"-inf"``, ``"nan"``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if math.isfinite(f):
            return f
        return "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), where)
    if isinstance(obj, dict):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, where) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((jsonable(v, where) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, Path):
        return obj.name
    raise BundleError(f"cannot store {where} of type {type(obj).__name__} in mapping.json")


_WALLCLOCK = re.compile(r"^(.*_)?(seconds|secs|elapsed|wall|wall_time|timings?)$")


def drop_wallclock(obj: Any) -> Any:
    """Remove wall-clock measurements (keys ``*seconds``, ``*elapsed``, ``timings`` ...) from a
    JSON-like tree: they differ between runs and would break byte-identical bundles.
    ``deterministic_time`` and option values such as ``time_limit`` are kept."""
    if isinstance(obj, dict):
        return {k: drop_wallclock(v) for k, v in obj.items() if not _WALLCLOCK.match(str(k))}
    if isinstance(obj, list):
        return [drop_wallclock(v) for v in obj]
    return obj


def _finite(x: Any, what: str) -> float:
    f = float(x)
    if not math.isfinite(f):
        raise BundleError(f"{what} is {f}, which a bundle cannot hold; check the calibration data "
                          f"and the weights of this layer")
    return f


# ========================================================================================
# arrays.bin writer
# ========================================================================================

def _le(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not np.little_endian):
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)


_HASH_ASYNC = 1 << 16   # arrays of at least this many bytes are hashed on a worker thread


def _sha_hex(data) -> str:
    return hashlib.sha256(data).hexdigest()


class _ArrayWriter:
    """Appends arrays to ``arrays.bin`` (8-byte aligned, zero padding), returning references.

    Large arrays are hashed on worker threads while the main thread goes on writing (hashlib
    and file writes release the GIL): one worker runs the whole-file hash (in write order),
    another the per-array and per-crossbar hashes. References get their ``sha256`` in
    :meth:`finish`; the bytes and hashes are those of the sequential computation."""

    def __init__(self, f):
        self.f = f
        self.pos = 0
        self.sha = hashlib.sha256()
        self._file_q = None     # one worker: the whole-file hash, in write order
        self._hash_q = None     # per-array / per-crossbar hashes
        self._later: list = []  # (setter, future)

    def _start(self) -> None:
        if self._file_q is None:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            self._file_q = ThreadPoolExecutor(1, thread_name_prefix="xbc-sha-file")
            self._hash_q = ThreadPoolExecutor(1, thread_name_prefix="xbc-sha")

    def _write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        if self._file_q is not None:
            self._file_q.submit(self.sha.update, data)
        else:
            self.sha.update(data)
        self.pos += len(data)

    def add(self, arr: np.ndarray, dtype: str) -> dict[str, Any]:
        a = _le(np.asarray(arr).astype(np.dtype(dtype), copy=False))
        pad = (-self.pos) % ALIGN
        if pad:
            self._write(b"\0" * pad)
        data = memoryview(a).cast("B") if a.size else b""
        ref = {"offset": self.pos, "length": int(a.nbytes), "dtype": a.dtype.str,
               "shape": [int(d) for d in a.shape], "sha256": None}
        if len(data) >= _HASH_ASYNC:
            self._start()
            self._later.append((lambda h, ref=ref: ref.__setitem__("sha256", h), self._hash_q.submit(_sha_hex, data)))
        else:
            ref["sha256"] = _sha_hex(data)
        self._write(data)
        return ref

    def views(self, base: dict[str, Any], arr: np.ndarray) -> list[dict[str, Any]]:
        """References to ``arr[x]`` for every ``x`` inside the stored stacked array ``base``
        (as :func:`_view_ref`)."""
        a = _le(arr)
        X = a.shape[0]
        if X == 0:
            return []
        sub = a[0]
        n = int(sub.nbytes)
        shape = [int(d) for d in sub.shape]
        refs = [{"offset": base["offset"] + x * n, "length": n, "dtype": base["dtype"], "shape": list(shape),
                 "sha256": None} for x in range(X)]
        flat = memoryview(a.reshape(X, -1)).cast("B") if a.size else None

        def hashes():
            if flat is None:
                return [_sha_hex(b"")] * X
            return [_sha_hex(flat[x * n:(x + 1) * n]) for x in range(X)]

        def put(hs):
            for r, h in zip(refs, hs):
                r["sha256"] = h

        if a.nbytes >= _HASH_ASYNC:
            self._start()
            self._later.append((put, self._hash_q.submit(hashes)))
        else:
            put(hashes())
        return refs

    def finish(self) -> dict[str, Any]:
        pad = (-self.pos) % ALIGN
        if pad:
            self._write(b"\0" * pad)
        for put, fut in self._later:
            put(fut.result())
        self._later = []
        self.close()
        return {"length": self.pos, "sha256": self.sha.hexdigest()}

    def close(self) -> None:
        """Wait for and stop the worker threads (idempotent)."""
        for q in (self._file_q, self._hash_q):
            if q is not None:
                q.shutdown(wait=True)
        self._file_q = self._hash_q = None


def _view_ref(base: dict[str, Any], arr: np.ndarray, index: int) -> dict[str, Any]:
    """Reference to ``arr[index]`` inside the stored stacked array ``base`` (C order)."""
    sub = _le(arr[index])
    return {"offset": base["offset"] + index * sub.nbytes, "length": int(sub.nbytes), "dtype": base["dtype"],
            "shape": [int(d) for d in sub.shape],
            "sha256": hashlib.sha256(memoryview(sub).cast("B") if sub.size else b"").hexdigest()}


# ========================================================================================
# layer attributes and graph.onnx
# ========================================================================================

def exec_attrs(node, layer) -> dict[str, Any]:
    """The ONNX attributes needed to execute a crossbar layer, with ONNX defaults filled in.

    conv / conv_transpose: ``kernel_shape, strides, dilations, group, pads`` (explicit
    ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``; Conv's ``auto_pad`` SAME_UPPER /
    SAME_LOWER / VALID is resolved to explicit pads from the concrete input shape), and for
    conv_transpose ``output_padding`` (plus ``auto_pad`` / ``output_shape`` verbatim when the model
    uses them). gemm: ``transB`` (``alpha`` is folded into ``quant.w_scale`` by quantize and
    ``beta`` into the bundle's bias, so neither is an execution attribute). matmul: none.
    """
    a = node.attrs
    kind = layer.kind
    if kind in ("conv", "conv_transpose"):
        W = layer.weight_value(node).const
        nd = W.ndim - 2
        ks = [int(k) for k in a.get("kernel_shape", W.shape[2:])]
        strides = [int(s) for s in a.get("strides", [1] * nd)]
        dil = [int(d) for d in a.get("dilations", [1] * nd)]
        out: dict[str, Any] = {"kernel_shape": ks, "strides": strides, "dilations": dil,
                               "group": int(a.get("group", 1))}
        auto_pad = a.get("auto_pad", "NOTSET") or "NOTSET"
        pads = [int(p) for p in a.get("pads", [0] * (2 * nd))]
        if kind == "conv":
            if auto_pad == "VALID":
                pads = [0] * (2 * nd)
            elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                ins = node.inputs[0].shape[2:]
                begin, end = [], []
                for i in range(nd):
                    o = -(-ins[i] // strides[i])
                    total = max(0, (o - 1) * strides[i] + (ks[i] - 1) * dil[i] + 1 - ins[i])
                    small, big = total // 2, total - total // 2
                    begin.append(small if auto_pad == "SAME_UPPER" else big)
                    end.append(big if auto_pad == "SAME_UPPER" else small)
                pads = begin + end
        else:
            out["output_padding"] = [int(p) for p in a.get("output_padding", [0] * nd)]
            if auto_pad != "NOTSET":
                out["auto_pad"] = str(auto_pad)
            if "output_shape" in a:
                out["output_shape"] = [int(s) for s in a["output_shape"]]
        out["pads"] = pads
        return out
    if kind == "gemm":
        return {"transB": int(a.get("transB", 0))}
    return {}


def _subgraph_inputs(g: onnx.GraphProto, acc: set[str]) -> None:
    for n in g.node:
        acc.update(x for x in n.input if x)
        for at in n.attribute:
            if at.type == onnx.AttributeProto.GRAPH:
                _subgraph_inputs(at.g, acc)
            elif at.type == onnx.AttributeProto.GRAPHS:
                for sg in at.graphs:
                    _subgraph_inputs(sg, acc)


class _GraphWithout:
    """``graph`` as :func:`xbc.ir.to_onnx` sees it, without the constants ``drop``."""

    def __init__(self, graph, drop: set[str]):
        self._graph = graph
        self.values = {k: v for k, v in graph.values.items() if k not in drop}

    def __getattr__(self, name):
        return getattr(self._graph, name)


def _replaced(node, by_name) -> bool:
    """Whether :func:`build_graph` replaces ``node`` by a CrossbarLayer node."""
    return node.name in by_name and (node.domain or "") in ("", "ai.onnx")


def _layer_only_constants(graph, by_name) -> set[str]:
    """Constants read only as weight or bias inputs (not input 0) of nodes that
    :func:`build_graph` replaces, and by nothing else: graph.onnx drops them."""
    from .ir import implicit_reads  # noqa: PLC0415

    sub = implicit_reads(graph)
    outs = {id(v) for v in graph.outputs}
    return {name for name, v in graph.values.items()
            if v.const is not None and v.uses and name not in sub and id(v) not in outs
            and all(idx != 0 and _replaced(n, by_name) for n, idx in v.uses)}


def build_graph(graph) -> onnx.ModelProto:
    """graph.onnx: the IR exported to ONNX with each crossbar layer node replaced by
    ``xbc.CrossbarLayer(activation) {layer_id, <the node's ONNX attributes>}``; weights and
    biases used only by crossbar layers are dropped (they live in arrays.bin).

    The constants that are dropped are left out of the export in the first place (exporting
    the weights of a large model costs more than everything else here); if one of them turns
    out to be needed, the graph is exported again in full (the same result either way)."""
    from .ir import to_onnx  # noqa: PLC0415

    by_name = {n.name: n for n in graph.layers()}
    drop = _layer_only_constants(graph, by_name)
    if drop:
        model, used = _build_graph(to_onnx(_GraphWithout(graph, drop)), by_name)
        if drop.isdisjoint(used):
            return model
    return _build_graph(to_onnx(graph), by_name)[0]


def _build_graph(model: onnx.ModelProto, by_name) -> tuple[onnx.ModelProto, set[str]]:
    from .ir import make_onnx_attribute  # noqa: PLC0415

    new_nodes = []
    for p in model.graph.node:
        node = by_name.get(p.name)
        if node is None or p.domain not in ("", "ai.onnx"):
            new_nodes.append(p)
            continue
        attrs = [make_onnx_attribute(k, v, node.attr_types.get(k)) for k, v in node.attrs.items()]
        attrs.append(onnx.helper.make_attribute("layer_id", node.layer.id))
        q = onnx.helper.make_node(CROSSBAR_OP, [p.input[0]], list(p.output), name=p.name, domain=XBC_DOMAIN)
        q.attribute.extend(sorted(attrs, key=lambda at: at.name))
        new_nodes.append(q)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    used: set[str] = set()
    _subgraph_inputs(model.graph, used)
    used.update(o.name for o in model.graph.output)
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    opsets = {o.domain: o.version for o in model.opset_import}
    opsets[XBC_DOMAIN] = XBC_OPSET
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    return model, used


# ========================================================================================
# write
# ========================================================================================

def _layer_bias(node, layer) -> np.ndarray | None:
    """Effective float32 bias per output channel (Gemm: ``beta * C`` broadcast over rows)."""
    if layer.bias_input is None or layer.bias_input >= len(node.inputs) or node.inputs[layer.bias_input] is None:
        return None
    v = node.inputs[layer.bias_input]
    if v.const is None:
        raise BundleError(f"layer {layer.id} ({node.name!r}): bias input {v.name!r} is not a constant; "
                          f"a bundle needs the bias as data (fold it into a constant first)")
    cout = layer.out_channels
    B = np.asarray(v.const, np.float64)
    if layer.kind == "gemm":
        B = float(node.attrs.get("beta", 1.0)) * B
        if B.size == 1:
            B = np.full(cout, B.reshape(()), np.float64)
        else:
            rows = np.broadcast_to(B, np.broadcast_shapes(B.shape, (1, cout))).reshape(-1, cout)
            if np.any(rows != rows[:1]):
                raise BundleError(f"layer {layer.id} ({node.name!r}): Gemm input C {v.name!r} of shape "
                                  f"{list(v.const.shape)} differs between rows; only a per-column bias "
                                  f"can be stored in a bundle")
            B = rows[0]
    B = B.reshape(-1)
    if B.shape != (cout,):
        raise BundleError(f"layer {layer.id} ({node.name!r}): bias has {B.size} entries, expected {cout}")
    return B.astype(np.float32)


def _adc_summary(col_adc_bits: np.ndarray | None, col_group: np.ndarray) -> dict[str, Any] | None:
    if col_adc_bits is None:
        return None
    used = col_adc_bits[col_group >= 0]
    if used.size == 0:
        return {"min": 0, "max": 0, "columns": 0, "histogram": {}}
    vals, counts = np.unique(used, return_counts=True)
    return {"min": int(used.min()), "max": int(used.max()), "columns": int(used.size),
            "histogram": {str(int(v)): int(c) for v, c in zip(vals, counts)}}


def _replicas(graph, layer_id: str, X: int) -> list[dict[str, Any]]:
    """Weight-duplication copies of a layer's crossbars from the place pass's report
    (``placement.duplication.replica_placement``): per copy the tile and slot of each crossbar.
    A copy holds the same cells as the primary crossbars."""
    rep = graph.meta.get("placement") or {}
    reps = ((rep.get("duplication") or {}).get("replica_placement") or {}).get(layer_id) or []
    out = []
    for r in reps:
        tile = [int(v) for v in r["tile"]]
        slot = [int(v) for v in r["slot"]]
        if len(tile) != X or len(slot) != X:
            raise BundleError(f"layer {layer_id}: replica {r.get('copy')} places {len(tile)} crossbars, "
                              f"the layer has {X}")
        out.append({"copy": int(r["copy"]), "tile": tile, "slot": slot})
    return out


def _stack_i4(parts: list[np.ndarray]) -> np.ndarray:
    """``np.stack(parts, axis=-1).astype(np.int32)`` in one pass when the parts have one shape."""
    parts = [np.asarray(a) for a in parts]
    if any(a.shape != parts[0].shape for a in parts):
        return np.stack(parts, axis=-1).astype(np.int32)
    out = np.empty(parts[0].shape + (len(parts),), np.int32)
    dt = np.result_type(*parts)
    for k, a in enumerate(parts):
        out[..., k] = a if a.dtype == dt else a.astype(dt)
    return out


def _layer_entry(node, aw: _ArrayWriter) -> dict[str, Any]:
    L = node.layer
    where = f"layer {L.id} ({node.name!r})"
    q = L.quant
    p = L.program
    if q is None:
        raise BundleError(f"{where} is not quantized: a bundle needs a pipeline with 'quantize' "
                          f"(the target's default pipeline has it)")
    if p is None:
        raise BundleError(f"{where} has no crossbar program: a bundle needs a pipeline with "
                          f"'slice-bits' (and usually 'squeeze', 'adc-size', 'place')")
    W = L.weight_value(node).const
    cout = L.out_channels
    X, Rx, Cx = (int(d) for d in p.cells.shape)
    e: dict[str, Any] = {
        "id": L.id, "node": node.name, "kind": L.kind, "op_type": node.op_type,
        "attrs": exec_attrs(node, L),
        "input_shape": [int(d) for d in node.inputs[0].shape],
        "output_shape": [int(d) for d in node.outputs[0].shape],
        "groups": int(L.groups), "rows": int(L.rows), "cols": int(L.cols),
        "weight_shape": [int(d) for d in W.shape],
        "offset": int(p.offset),
        "crossbar_shape": [Rx, Cx],
    }
    w_scale = np.asarray(q.w_scale, np.float64).reshape(-1)
    if w_scale.size == 1 and cout > 1:
        w_scale = np.full(cout, w_scale[0])
    if w_scale.shape != (cout,):
        raise BundleError(f"{where}: w_scale has {w_scale.size} entries, expected {cout}")
    if not np.all(np.isfinite(w_scale)):
        raise BundleError(f"{where}: w_scale has non-finite entries; check the layer's weights")
    e["quant"] = {"weight_bits": int(q.weight_bits), "input_bits": int(q.input_bits),
                  "x_scale": _finite(q.x_scale, f"{where}: x_scale"), "x_zero_point": int(q.x_zero_point),
                  "per_channel": bool(q.per_channel), "pow2": bool(q.pow2),
                  "prequantized": bool(q.prequantized), "w_scale": aw.add(w_scale, "<f8")}
    if tuple(q.w_int.shape) != tuple(W.shape):
        raise BundleError(f"{where}: quantized weights have shape {list(q.w_int.shape)}, weight is {list(W.shape)}")
    e["w_int"] = aw.add(q.w_int, "<i4")
    bias = _layer_bias(node, L)
    e["bias"] = None if bias is None else aw.add(bias, "<f4")
    e["row_perm"] = None if L.row_perm is None else aw.add(L.row_perm, "<i4")
    e["col_perm"] = None if L.col_perm is None else aw.add(L.col_perm, "<i4")
    cells = np.asarray(p.cells, np.uint8)
    e["cells"] = aw.add(cells, "|u1")
    e["row_table"] = aw.add(_stack_i4([p.row_group, p.row_index]), "<i4")
    e["splice"] = aw.add(_stack_i4([p.col_group, p.col_index, p.col_shift, p.col_sign.astype(np.int32)]), "<i4")
    e["col_adc_bits"] = None if p.col_adc_bits is None else aw.add(p.col_adc_bits, "<i4")
    e["col_max_sum"] = None if p.col_max_sum is None else aw.add(p.col_max_sum, "<i8")
    e["adc_bits"] = _adc_summary(None if p.col_adc_bits is None else np.asarray(p.col_adc_bits), p.col_group)
    tile = None if p.tile is None else np.asarray(p.tile).reshape(-1)
    slot = None if p.slot is None else np.asarray(p.slot).reshape(-1)
    for name, arr in (("tile", tile), ("slot", slot)):
        if arr is not None and arr.shape != (X,):
            raise BundleError(f"{where}: program.{name} has {arr.size} entries for {X} crossbars")
    rows_used = (p.row_group >= 0).sum(axis=1)
    cols_used = (p.col_group >= 0).sum(axis=1)
    nnz = list(map(np.count_nonzero, cells))    # per crossbar: faster than one call with axis=1
    views = aw.views(e["cells"], cells)
    tile_l = None if tile is None else tile.tolist()
    slot_l = None if slot is None else slot.tolist()
    rows_l, cols_l = rows_used.tolist(), cols_used.tolist()
    e["crossbars"] = [{"index": x, "tile": None if tile_l is None else int(tile_l[x]),
                       "slot": None if slot_l is None else int(slot_l[x]),
                       "rows_used": int(rows_l[x]), "cols_used": int(cols_l[x]),
                       "programmed_cells": int(nnz[x]), "cells": views[x]}
                      for x in range(X)]
    e["replicas"] = _replicas(node.graph, L.id, X)
    return e


def _stats(result) -> dict[str, Any]:
    from .summary import summarize  # noqa: PLC0415

    return summarize(result)


def build_mapping(result, aw: _ArrayWriter, graph_bytes: bytes) -> dict[str, Any]:
    from . import __version__

    graph = result.graph
    tgt = result.target
    layers = [_layer_entry(n, aw) for n in graph.layers()]
    arrays_info = aw.finish()
    model_path = getattr(result, "model_path", None)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "xbc_version": __version__,
        "target": jsonable(tgt.to_dict(), "target"),
        "target_sha256": tgt.sha256,
        "pipeline": result.pipeline,
        "model": {"sha256": result.model_sha256,
                  "path": None if not model_path else os.path.basename(str(model_path)),
                  "inputs": {k: [int(d) for d in v] for k, v in result.input_shapes.items()},
                  "outputs": {v.name: [int(d) for d in v.shape] for v in graph.outputs}},
        "files": {"arrays.bin": arrays_info,
                  "graph.onnx": {"length": len(graph_bytes), "sha256": hashlib.sha256(graph_bytes).hexdigest()}},
        "layers": layers,
        "placement": drop_wallclock(jsonable(graph.meta.get("placement"), "placement")),
        "stats": drop_wallclock(jsonable(_stats(result), "stats")),
    }


def _is_bundle_dir(path: Path) -> bool:
    names = {p.name for p in path.iterdir()}
    return not names or ("mapping.json" in names and names <= set(BUNDLE_FILES))


def _is_bundle_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return "mapping.json" in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def write_bundle(result, out: str | Path, zip: bool = False) -> Path:  # noqa: A002 - CLI name
    """Write ``result`` (a :class:`~xbc.compiler.CompileResult`) as a bundle at ``out``.

    ``zip=False``: a directory with mapping.json, arrays.bin, graph.onnx. ``zip=True``: one zip
    file holding the same three files (fixed timestamps, so the zip is deterministic too).
    The bundle is built in a temporary sibling and renamed into place; an existing bundle at
    ``out`` is replaced, anything else that is in the way is an error and left untouched.
    """
    out = Path(out)
    if out.exists():
        if zip:
            if out.is_dir() or not _is_bundle_zip(out):
                raise BundleError(f"{out} exists and is not an xbc bundle zip; refusing to overwrite it "
                                  f"(remove it or choose another -o path)")
        else:
            if not out.is_dir():
                raise BundleError(f"{out} exists and is a file; refusing to overwrite it with a bundle "
                                  f"directory (use --zip for a single-file bundle, or another -o path)")
            if not _is_bundle_dir(out):
                raise BundleError(f"{out} is a non-empty directory that is not an xbc bundle; refusing to "
                                  f"overwrite it (remove it or choose another -o path)")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BundleError(f"cannot create the directory {parent} for the bundle: {e.strerror or e}") from None
    tmp = parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        model = build_graph(result.graph)
        graph_bytes = model.SerializeToString(deterministic=True)
        with open(tmp / "arrays.bin", "wb") as f:
            aw = _ArrayWriter(f)
            try:
                mapping = build_mapping(result, aw, graph_bytes)
            finally:
                aw.close()
        (tmp / "graph.onnx").write_bytes(graph_bytes)
        (tmp / "mapping.json").write_text(dumps(mapping), encoding="ascii")
        if zip:
            ztmp = parent / f".{out.name}.tmpzip-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                with zipfile.ZipFile(ztmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
                    for name in BUNDLE_FILES:
                        info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                        info.compress_type = zipfile.ZIP_DEFLATED
                        info.external_attr = 0o644 << 16
                        big = (tmp / name).stat().st_size >= (1 << 31) - (1 << 20)
                        with open(tmp / name, "rb") as src, z.open(info, "w", force_zip64=big) as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(ztmp, out)
            finally:
                if ztmp.exists():
                    ztmp.unlink()
        else:
            if out.exists():
                old = parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                os.rename(out, old)
                try:
                    os.rename(tmp, out)
                except BaseException:
                    os.rename(old, out)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, out)
    except OSError as e:
        raise BundleError(f"cannot write the bundle to {out}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# ========================================================================================
# read
# ========================================================================================

class _Source:
    """The three files of a bundle, from a directory or a zip file (read into memory)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        p = self.path
        if not p.exists():
            raise BundleError(f"bundle {p} does not exist")
        self.members: dict[str, bytes] | None = None
        if p.is_dir():
            self.kind = "directory"
            return
        self.kind = "zip"
        try:
            z = zipfile.ZipFile(p)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise BundleError(f"bundle {p} is neither a directory nor a valid .xbc zip file ({e}); "
                              f"rewrite it with 'xbc compile MODEL -o {p.name} --zip'") from None
        with z:
            names = set(z.namelist())
            self.members = {}
            for n in BUNDLE_FILES:
                if n not in names:
                    continue
                try:
                    self.members[n] = z.read(n)
                except Exception as e:  # CRC mismatch, zlib errors inside a damaged member
                    raise BundleError(f"bundle {p}: zip member {n} is damaged ({type(e).__name__}: {e}); "
                                      f"rewrite it with 'xbc compile MODEL -o {p.name} --zip'") from None

    def exists(self, name: str) -> bool:
        if self.members is not None:
            return name in self.members
        return (self.path / name).is_file()

    def read(self, name: str) -> bytes:
        if not self.exists(name):
            raise BundleError(f"bundle {self.path}: {name} is missing; a bundle holds "
                              f"{', '.join(BUNDLE_FILES)}")
        if self.members is not None:
            return self.members[name]
        try:
            return (self.path / name).read_bytes()
        except OSError as e:
            raise BundleError(f"bundle {self.path}: cannot read {name} ({e.strerror or e})") from None

    def buffer(self, name: str):
        """Like :meth:`read`, but memory-maps a directory bundle's file (read-only), so large
        arrays.bin files are paged in on demand instead of copied."""
        if self.members is not None or not self.exists(name):
            return self.read(name)
        try:
            with open(self.path / name, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    return b""
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise BundleError(f"bundle {self.path}: cannot read {name} ({e.strerror or e})") from None


def _parse_mapping(src: _Source) -> dict[str, Any]:
    raw = src.read("mapping.json")
    try:
        mapping = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"bundle {src.path}: mapping.json is not UTF-8 text ({e}); the file is corrupted") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"bundle {src.path}: mapping.json is not valid JSON (line {e.lineno}, column "
                          f"{e.colno}: {e.msg}); the file is truncated or corrupted, rewrite the bundle") from None
    if not isinstance(mapping, dict) or mapping.get("schema") != SCHEMA:
        got = mapping.get("schema") if isinstance(mapping, dict) else type(mapping).__name__
        raise BundleError(f"bundle {src.path}: mapping.json is not an xbc mapping (schema {got!r}, "
                          f"expected {SCHEMA!r})")
    ver = mapping.get("schema_version")
    if ver not in KNOWN_SCHEMA_VERSIONS:
        raise BundleError(f"bundle {src.path}: mapping.json has schema_version {ver!r}, which this xbc "
                          f"does not know (known: {', '.join(KNOWN_SCHEMA_VERSIONS)}); use the xbc that "
                          f"wrote it or recompile the model")
    return mapping


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with every local ``$ref`` replaced by its definition (the schema has no
    recursion); jsonschema then validates without reference resolution, ~10x faster."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = _inline_refs(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
            rest = {k: v for k, v in node.items() if k not in ("$ref", "description")}
            return {**target, **_inline_refs(rest, defs)} if rest else target
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


_VALIDATOR = None


def _validator():
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema  # noqa: PLC0415

        schema = load_schema()
        _VALIDATOR = jsonschema.Draft202012Validator(_inline_refs(schema, schema.get("$defs", {})))
    return _VALIDATOR


_HEX64 = re.compile(r"[0-9a-f]{64}")
_REF_KEYS = {"offset", "length", "dtype", "shape", "sha256"}
_XBAR_KEYS = {"index", "tile", "slot", "rows_used", "cols_used", "programmed_cells", "cells"}


def _is_nonneg(v: Any) -> bool:
    return type(v) is int and v >= 0


def _fast_ref_ok(ref: Any, dtype: str) -> bool:
    return (type(ref) is dict and ref.keys() == _REF_KEYS and _is_nonneg(ref["offset"])
            and _is_nonneg(ref["length"]) and ref["dtype"] == dtype and type(ref["shape"]) is list
            and all(_is_nonneg(d) for d in ref["shape"]) and type(ref["sha256"]) is str
            and _HEX64.fullmatch(ref["sha256"]) is not None)


def _fast_crossbar_ok(c: Any) -> bool:
    """The crossbar item schema, checked in plain Python (jsonschema takes ~1 ms per item,
    which is tens of seconds for ResNet-sized bundles); a failing item is re-checked with
    jsonschema for the message."""
    return (type(c) is dict and c.keys() == _XBAR_KEYS and _is_nonneg(c["index"])
            and (c["tile"] is None or _is_nonneg(c["tile"])) and (c["slot"] is None or _is_nonneg(c["slot"]))
            and _is_nonneg(c["rows_used"]) and _is_nonneg(c["cols_used"]) and _is_nonneg(c["programmed_cells"])
            and _fast_ref_ok(c["cells"], "|u1"))


def _check_schema(mapping: dict[str, Any], path: Path) -> None:
    """JSON Schema check. The per-crossbar lists are checked item by item with an equivalent
    fast test (jsonschema only for an item that fails it, to word the error); everything else
    goes through jsonschema."""
    import jsonschema  # noqa: PLC0415

    validator = _validator()
    skeleton = mapping
    layers = mapping.get("layers")
    if isinstance(layers, list) and all(isinstance(e, dict) for e in layers):
        skeleton = dict(mapping)
        skeleton["layers"] = [{**e, "crossbars": []} if isinstance(e.get("crossbars"), list) else e for e in layers]
    err = jsonschema.exceptions.best_match(validator.iter_errors(skeleton))
    if err is None and skeleton is not mapping:
        schema = validator.schema
        xbar_schema = schema["properties"]["layers"]["items"]["properties"]["crossbars"]["items"]
        sub = jsonschema.Draft202012Validator(xbar_schema)
        for li, e in enumerate(layers):
            for ci, c in enumerate(e["crossbars"]):
                if _fast_crossbar_ok(c):
                    continue
                err = jsonschema.exceptions.best_match(sub.iter_errors(c))
                if err is not None:
                    err.path.extendleft(["layers", li, "crossbars", ci][::-1])
                    break
            if err is not None:
                break
    if err is not None:
        loc = _json_path(err.absolute_path, mapping)
        raise BundleError(f"bundle {path}: mapping.json does not match schema {SCHEMA} "
                          f"{mapping.get('schema_version')}: at {loc}: {err.message}")


def _json_path(parts: Iterable, mapping: dict[str, Any]) -> str:
    out = "mapping"
    node: Any = mapping
    for p in parts:
        if isinstance(p, int):
            name = ""
            if isinstance(node, list) and 0 <= p < len(node) and isinstance(node[p], dict) and "id" in node[p]:
                name = f" (layer {node[p]['id']})"
            out += f"[{p}]{name}"
        else:
            out += f".{p}"
        try:
            node = node[p]
        except (KeyError, IndexError, TypeError):
            node = None
    return out


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of mapping.json shipped with xbc."""
    from importlib import resources  # noqa: PLC0415

    return json.loads((resources.files("xbc") / "schema" / "mapping.schema.json").read_text())


def _ref_array(buf, ref: dict[str, Any], what: str = "array") -> np.ndarray:
    dt = np.dtype(ref["dtype"])
    shape = tuple(int(d) for d in ref["shape"])
    count = int(np.prod(shape, dtype=np.int64))
    if count * dt.itemsize != ref["length"]:
        raise BundleError(f"{what}: length {ref['length']} does not match dtype {ref['dtype']} and shape {list(shape)}")
    if ref["offset"] < 0 or ref["offset"] + ref["length"] > len(buf):
        raise BundleError(f"{what}: bytes {ref['offset']}..{ref['offset'] + ref['length']} lie outside "
                          f"arrays.bin ({len(buf)} bytes); the file is truncated")
    return np.frombuffer(buf, dtype=dt, count=count, offset=ref["offset"]).reshape(shape)


def _layer_spec(e: dict[str, Any], array, target: dict[str, Any]) -> LayerSpec:
    q = e["quant"]
    rows = array(e["row_table"])
    splice = array(e["splice"])
    X = len(e["crossbars"])
    tiles = [c["tile"] for c in e["crossbars"]]
    slots = [c["slot"] for c in e["crossbars"]]
    prog = LayerProgram(
        cells=array(e["cells"]),
        row_group=np.ascontiguousarray(rows[..., 0]), row_index=np.ascontiguousarray(rows[..., 1]),
        col_group=np.ascontiguousarray(splice[..., 0]), col_index=np.ascontiguousarray(splice[..., 1]),
        col_shift=np.ascontiguousarray(splice[..., 2]), col_sign=splice[..., 3].astype(np.int8),
        offset=int(e["offset"]),
        col_adc_bits=None if e["col_adc_bits"] is None else array(e["col_adc_bits"]),
        col_max_sum=None if e["col_max_sum"] is None else array(e["col_max_sum"]),
        tile=None if X == 0 or any(t is None for t in tiles) else np.asarray(tiles, np.int32),
        slot=None if X == 0 or any(s is None for s in slots) else np.asarray(slots, np.int32))
    return LayerSpec(
        id=e["id"], kind=e["kind"], groups=int(e["groups"]), rows=int(e["rows"]), cols=int(e["cols"]),
        attrs=dict(e["attrs"]), weight_shape=tuple(e["weight_shape"]),
        input_bits=int(q["input_bits"]), weight_bits=int(q["weight_bits"]),
        x_scale=float(q["x_scale"]), x_zero_point=int(q["x_zero_point"]),
        w_scale=array(q["w_scale"]), w_int=array(e["w_int"]),
        bias=None if e["bias"] is None else array(e["bias"]),
        row_perm=None if e["row_perm"] is None else array(e["row_perm"]),
        col_perm=None if e["col_perm"] is None else array(e["col_perm"]),
        program=prog, cell_bits=int(target["cell_bits"]), dac_bits=int(target["dac_bits"]),
        adc_bits=int(target["adc_bits"]), rows_active=int(target["rows_active"]))


@dataclass(eq=False)
class Bundle:
    """A bundle read back from disk (see :func:`read_bundle`).

    ``mapping``: the parsed mapping.json; ``graph``: graph.onnx as an ``onnx.ModelProto``;
    ``layers``: layer id -> :class:`xbc.layer.LayerSpec` in graph order; ``target``: the resolved
    target dict; :meth:`array` loads any array reference as a read-only numpy array.
    """

    path: Path
    mapping: dict[str, Any]
    graph: onnx.ModelProto
    layers: dict[str, LayerSpec]
    arrays: Any = field(repr=False)   # bytes or a read-only mmap of arrays.bin

    @property
    def target(self) -> dict[str, Any]:
        return self.mapping["target"]

    @property
    def stats(self) -> dict[str, Any]:
        return self.mapping["stats"]

    @property
    def placement(self) -> Any:
        return self.mapping["placement"]

    def layer_entry(self, layer_id: str) -> dict[str, Any]:
        for e in self.mapping["layers"]:
            if e["id"] == layer_id:
                return e
        raise KeyError(layer_id)

    def array(self, ref: dict[str, Any]) -> np.ndarray:
        return _ref_array(self.arrays, ref, f"bundle {self.path}: array at offset {ref.get('offset')}")


def read_bundle(path: str | Path, *, check_hashes: bool = True) -> Bundle:
    """Read a bundle directory or ``.xbc`` zip.

    Checks the schema name and version, the JSON Schema, and (``check_hashes``) the sha256 of
    arrays.bin and graph.onnx as recorded in mapping.json; any problem is a
    :class:`~xbc.errors.BundleError` naming the file. Run :func:`validate_bundle` for the full
    invariant checks (per-array hashes, conservation, placement, graph consistency).
    """
    src = _Source(path)
    mapping = _parse_mapping(src)
    _check_schema(mapping, src.path)
    arrays = src.buffer("arrays.bin")
    graph_bytes = src.read("graph.onnx")
    if check_hashes:
        for name, data in (("arrays.bin", arrays), ("graph.onnx", graph_bytes)):
            info = mapping["files"][name]
            if len(data) != info["length"]:
                raise BundleError(f"bundle {src.path}: {name} has {len(data)} bytes, mapping.json says "
                                  f"{info['length']}; the file is truncated or from another bundle")
            if hashlib.sha256(data).hexdigest() != info["sha256"]:
                raise BundleError(f"bundle {src.path}: {name} fails its sha256 check; the file is corrupted "
                                  f"(run 'xbc validate {src.path}' to locate the damage)")
    graph = _parse_graph(graph_bytes, src.path)
    target = mapping["target"]
    layers: dict[str, LayerSpec] = {}
    for e in mapping["layers"]:
        def array(ref, _e=e):
            return _ref_array(arrays, ref, f"bundle {src.path}: layer {_e['id']}")
        layers[e["id"]] = _layer_spec(e, array, target)
    return Bundle(path=src.path, mapping=mapping, graph=graph, layers=layers, arrays=arrays)


def _parse_graph(data: bytes, path: Path) -> onnx.ModelProto:
    try:
        return onnx.ModelProto.FromString(data)
    except Exception as e:
        raise BundleError(f"bundle {path}: graph.onnx is not a readable ONNX model ({type(e).__name__}: {e})") from None


# ========================================================================================
# validate
# ========================================================================================

@dataclass
class ValidationReport:
    """What :func:`validate_bundle` checked. ``errors`` is empty for a valid bundle (``ok``);
    ``len(report)`` is the number of problems."""

    path: str
    schema_version: str = ""
    layers: int = 0
    crossbars: int = 0
    arrays: int = 0
    weights: int = 0
    arrays_bytes: int = 0
    tiles_used: int = 0
    max_per_tile: int = 0
    checks: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def __len__(self) -> int:
        """The number of problems, so ``if report:`` reads "if the bundle has problems"."""
        return len(self.errors)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("path", "schema_version", "layers", "crossbars", "arrays",
                                               "weights", "arrays_bytes", "tiles_used", "max_per_tile",
                                               "checks", "errors", "warnings")} | {"ok": self.ok}

    def render(self) -> str:
        head = "valid" if self.ok else f"INVALID ({len(self.errors)} problem(s))"
        lines = [f"bundle {self.path}: {head} (schema {SCHEMA} {self.schema_version}, {self.layers} layers, "
                 f"{self.crossbars} crossbars, {self.arrays} arrays, {self.arrays_bytes:,} bytes)"]
        for name, msg in self.checks.items():
            lines.append(f"  {name:<14} {msg}")
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  error: {e}" for e in self.errors]
        return "\n".join(lines)


def _all_refs(mapping: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(layer id, array name, ref) for every array reference, in file order."""
    out = []
    for e in mapping["layers"]:
        lid = e["id"]
        out.append((lid, "quant.w_scale", e["quant"]["w_scale"]))
        for name in ("w_int", "bias", "row_perm", "col_perm", "cells", "row_table", "splice", "col_adc_bits", "col_max_sum"):
            if e.get(name) is not None:
                out.append((lid, name, e[name]))
        for c in e["crossbars"]:
            out.append((lid, f"crossbars[{c['index']}].cells", c["cells"]))
    return out


def validate_bundle(path: str | Path, *, raise_on_error: bool = True) -> ValidationReport:
    """Check a bundle against the schema and the invariants (DESIGN.md "Invariants").

    Checks, in order: files present and readable (directory or zip); mapping.json is JSON with a
    known ``schema_version``; the JSON Schema; the target hash; arrays.bin and graph.onnx lengths
    and sha256, and every array reference's bounds, length and sha256 (a damaged byte is located
    to the array that holds it); per layer: shapes and value ranges of the program, permutations,
    scales, and conservation (the weights rebuilt from cells / row_table / splice / offset equal
    ``w_int`` in the matrix view); placement capacity (no tile over ``crossbars_per_tile``, every
    crossbar placed once, ``(tile, slot)`` unique); graph.onnx consistency (every
    ``xbc.CrossbarLayer`` names a layer, each layer used once, no crossbar op left unmapped).

    Errors that stop reading (missing file, bad zip, bad JSON, unknown version, schema mismatch)
    raise :class:`~xbc.errors.BundleError` at once; the others are collected in the report and,
    with ``raise_on_error``, raised together as one BundleError at the end.
    """
    src = _Source(path)
    rep = ValidationReport(path=str(src.path))
    for name in BUNDLE_FILES:
        if not src.exists(name):
            raise BundleError(f"bundle {src.path}: {name} is missing; a bundle holds {', '.join(BUNDLE_FILES)}")
    mapping = _parse_mapping(src)
    rep.schema_version = mapping["schema_version"]
    _check_schema(mapping, src.path)
    rep.checks["schema"] = f"ok ({SCHEMA} {rep.schema_version}, draft 2020-12)"
    rep.layers = len(mapping["layers"])
    rep.crossbars = sum(len(e["crossbars"]) for e in mapping["layers"])
    target = mapping["target"]
    blob = json.dumps(target, sort_keys=True, separators=(",", ":")).encode()
    if hashlib.sha256(blob).hexdigest() != mapping["target_sha256"]:
        rep.errors.append("mapping.json: target_sha256 does not match the recorded target; the target "
                          "section was edited or damaged")

    # --- files and arrays ------------------------------------------------------------------
    arrays = src.buffer("arrays.bin")
    graph_bytes = src.read("graph.onnx")
    rep.arrays_bytes = len(arrays)
    bad_layers: set[str] = set()
    ginfo = mapping["files"]["graph.onnx"]
    graph_ok = True
    if len(graph_bytes) != ginfo["length"] or hashlib.sha256(graph_bytes).hexdigest() != ginfo["sha256"]:
        rep.errors.append(f"graph.onnx: {len(graph_bytes)} bytes with sha256 different from mapping.json's "
                          f"record ({ginfo['length']} bytes); the file is corrupted or from another bundle")
        graph_ok = False
    ainfo = mapping["files"]["arrays.bin"]
    refs = _all_refs(mapping)
    rep.arrays = len(refs)
    if len(arrays) != ainfo["length"]:
        rep.errors.append(f"arrays.bin has {len(arrays)} bytes, mapping.json says {ainfo['length']}; "
                          f"the file is truncated or from another bundle")
    n_bad = 0
    mv = memoryview(arrays)
    for lid, name, ref in refs:
        what = f"arrays.bin: layer {lid} array {name}"
        try:
            _ref_array(arrays, ref, what)
        except BundleError as e:
            rep.errors.append(str(e))
            bad_layers.add(lid)
            n_bad += 1
            continue
        if hashlib.sha256(mv[ref["offset"]:ref["offset"] + ref["length"]]).hexdigest() != ref["sha256"]:
            rep.errors.append(f"{what} (offset {ref['offset']}, {ref['length']} bytes) fails its sha256 "
                              f"check; the file is corrupted")
            bad_layers.add(lid)
            n_bad += 1
    if len(arrays) == ainfo["length"] and hashlib.sha256(arrays).hexdigest() != ainfo["sha256"] and n_bad == 0:
        rep.errors.append("arrays.bin fails its whole-file sha256 check although every array matches: "
                          "bytes outside the arrays (alignment padding) were changed")
    if n_bad == 0 and len(arrays) == ainfo["length"]:
        rep.checks["arrays"] = f"ok ({len(refs)} arrays, lengths and sha256)"
    else:
        rep.checks["arrays"] = f"FAILED ({n_bad} of {len(refs)} arrays damaged)"

    # --- layers: program sanity and conservation ----------------------------------------
    cons_fail = 0
    for e in mapping["layers"]:
        if e["id"] in bad_layers:
            continue
        errs = _check_layer(e, arrays, target)
        rep.weights += int(np.prod(e["weight_shape"], dtype=np.int64))
        if errs:
            cons_fail += 1
            rep.errors.extend(errs)
    checked = rep.layers - len(bad_layers)
    skipped = f", {len(bad_layers)} skipped (damaged arrays)" if bad_layers else ""
    rep.checks["conservation"] = (f"ok ({checked} layers, {rep.weights:,} weights rebuilt exactly{skipped})"
                                  if cons_fail == 0 else f"FAILED in {cons_fail} layer(s){skipped}")

    # --- placement -------------------------------------------------------------------------
    rep.checks["placement"] = _check_placement(mapping, rep)

    # --- graph.onnx ------------------------------------------------------------------------
    if graph_ok:
        rep.checks["graph.onnx"] = _check_graph(mapping, graph_bytes, src.path, rep)
    else:
        rep.checks["graph.onnx"] = "FAILED (file damaged)"

    if rep.errors and raise_on_error:
        more = f" (and {len(rep.errors) - 1} more problem(s))" if len(rep.errors) > 1 else ""
        err = BundleError(f"bundle {src.path} is invalid: {rep.errors[0]}{more}")
        err.report = rep  # type: ignore[attr-defined]
        raise err
    return rep


def _check_layer(e: dict[str, Any], arrays: bytes, target: dict[str, Any]) -> list[str]:
    lid = e["id"]
    where = f"layer {lid}"

    def array(ref):
        return _ref_array(arrays, ref, where)

    errs: list[str] = []
    kind, G, R, C = e["kind"], int(e["groups"]), int(e["rows"]), int(e["cols"])
    attrs = e["attrs"]
    q = e["quant"]
    wb = int(q["weight_bits"])
    try:
        mshape = matrix_shape(kind, tuple(e["weight_shape"]), G, attrs)
    except (ValueError, IndexError, ZeroDivisionError) as ex:
        return [f"{where}: weight_shape {e['weight_shape']} does not fit kind {kind!r} ({ex})"]
    if mshape != (G, R, C):
        return [f"{where}: weight_shape {e['weight_shape']} gives matrix {mshape}, layer says {(G, R, C)}"]
    w_int = array(e["w_int"])
    if list(w_int.shape) != list(e["weight_shape"]):
        errs.append(f"{where}: w_int has shape {list(w_int.shape)}, weight_shape is {e['weight_shape']}")
        return errs
    lim = 1 << (wb - 1)
    if w_int.size and (int(w_int.min()) < -lim or int(w_int.max()) > lim):
        errs.append(f"{where}: w_int holds values in [{int(w_int.min())}, {int(w_int.max())}], outside "
                    f"the {wb}-bit range")
    cout = G * C
    w_scale = array(q["w_scale"])
    if w_scale.shape != (cout,) or not np.all(np.isfinite(w_scale)) or np.any(w_scale <= 0):
        errs.append(f"{where}: quant.w_scale must be {cout} finite positive numbers")
    if not (math.isfinite(q["x_scale"]) and q["x_scale"] > 0):
        errs.append(f"{where}: quant.x_scale {q['x_scale']} must be a finite positive number")
    if not 0 <= q["x_zero_point"] < (1 << int(q["input_bits"])):
        errs.append(f"{where}: quant.x_zero_point {q['x_zero_point']} is outside [0, 2^{q['input_bits']})")
    if e["bias"] is not None and array(e["bias"]).shape != (cout,):
        errs.append(f"{where}: bias has shape {e['bias']['shape']}, expected [{cout}]")
    for name, n in (("row_perm", R), ("col_perm", C)):
        if e[name] is None:
            continue
        perm = array(e[name])
        if perm.shape != (G, n) or not np.array_equal(np.sort(perm, axis=1), np.broadcast_to(np.arange(n), (G, n))):
            errs.append(f"{where}: {name} is not a permutation of range({n}) per group (shape {list(perm.shape)})")
    cells = array(e["cells"])
    rows = array(e["row_table"])
    splice = array(e["splice"])
    X = len(e["crossbars"])
    Rx, Cx = e["crossbar_shape"]
    if cells.shape != (X, Rx, Cx) or rows.shape != (X, Rx, 2) or splice.shape != (X, Cx, 4):
        errs.append(f"{where}: program arrays have shapes cells {list(cells.shape)}, row_table {list(rows.shape)}, "
                    f"splice {list(splice.shape)}; expected [{X},{Rx},{Cx}], [{X},{Rx},2], [{X},{Cx},4]")
        return errs
    if Rx > target["rows"] or Cx > target["cols"]:
        errs.append(f"{where}: crossbars of {Rx}x{Cx} cells exceed the target's {target['rows']}x{target['cols']}")
    for x, c in enumerate(e["crossbars"]):
        if c["index"] != x:
            errs.append(f"{where}: crossbar entry {x} has index {c['index']}")
            break
        v = c["cells"]
        if v["offset"] != e["cells"]["offset"] + x * Rx * Cx or v["shape"] != [Rx, Cx]:
            errs.append(f"{where} crossbar {x}: its cells reference is not slice {x} of the layer's cells")
            break
    cb = int(target["cell_bits"])
    if cells.size and int(cells.max()) >= (1 << cb):
        x, i, j = (int(t[0]) for t in np.nonzero(cells >= (1 << cb)))
        errs.append(f"{where} crossbar {x}: cell ({i},{j}) = {int(cells[x, i, j])} does not fit "
                    f"cell_bits = {cb}")
    sign = splice[..., 3]
    if np.any((sign != -1) & (sign != 0) & (sign != 1)):
        errs.append(f"{where}: splice sign must be -1, 0 or +1")
    shift = splice[..., 2]
    if np.any(shift < 0) or np.any(shift > 62):
        errs.append(f"{where}: splice shift outside [0, 62]")
    rg, ri = rows[..., 0], rows[..., 1]
    cg, ci = splice[..., 0], splice[..., 1]
    if np.any(rg >= G) or np.any(ri >= R) or np.any(cg >= G) or np.any(ci >= C) \
            or np.any((rg < 0) != (ri < 0)) or np.any((cg < 0) != (ci < 0)):
        errs.append(f"{where}: row or splice table points outside the {G}x{R}x{C} matrix")
    if errs:
        return errs
    prog = LayerProgram(cells=cells, row_group=rg, row_index=ri, col_group=cg, col_index=ci,
                        col_shift=shift, col_sign=sign, offset=int(e["offset"]))
    try:
        M = rebuild_matrix(prog, G, R, C)
    except VerifyError as ex:
        return [f"{where}: {ex}"]
    ref = to_matrix(kind, w_int.astype(np.int64), G, attrs)
    diff = M != ref
    if np.any(diff):
        g, r, c = (int(t[0]) for t in np.nonzero(diff))
        errs.append(f"{where}: conservation fails: {int(diff.sum())} of {diff.size} weights rebuilt from the "
                    f"crossbars differ from w_int (first at group {g}, row {r}, column {c}: rebuilt "
                    f"{int(M[g, r, c])}, stored {int(ref[g, r, c])})")
    if e["col_adc_bits"] is not None:
        ab = array(e["col_adc_bits"])
        if ab.shape != (X, Cx) or np.any(ab < 0) or np.any(ab > 64):
            errs.append(f"{where}: col_adc_bits must be [{X},{Cx}] values in [0, 64]")
    if e["col_max_sum"] is not None and array(e["col_max_sum"]).shape != (X, Cx):
        errs.append(f"{where}: col_max_sum must have shape [{X},{Cx}]")
    return errs


def _check_placement(mapping: dict[str, Any], rep: ValidationReport) -> str:
    target = mapping["target"]
    cap = int(target["crossbars_per_tile"])
    ntiles = int(target["tiles"])
    tiles, slots, names = [], [], []
    unplaced = 0
    for e in mapping["layers"]:
        for c in e["crossbars"]:
            if c["tile"] is None or c["slot"] is None:
                unplaced += 1
                continue
            tiles.append(c["tile"])
            slots.append(c["slot"])
            names.append(f"layer {e['id']} crossbar {c['index']}")
        for r in e["replicas"]:
            if len(r["tile"]) != len(e["crossbars"]) or len(r["slot"]) != len(e["crossbars"]):
                rep.errors.append(f"placement: layer {e['id']} replica {r['copy']} places {len(r['tile'])} "
                                  f"crossbars, the layer has {len(e['crossbars'])}")
                continue
            tiles.extend(r["tile"])
            slots.extend(r["slot"])
            names.extend(f"layer {e['id']} crossbar {x} (copy {r['copy']})" for x in range(len(r["tile"])))
    total = len(tiles) + unplaced
    if total == 0:
        return "ok (no crossbars)"
    if unplaced == total:
        rep.warnings.append("no crossbar is placed on a tile (the pipeline has no 'place' pass)")
        return "not placed (no 'place' pass)"
    if unplaced:
        rep.errors.append(f"placement: {unplaced} of {total} crossbars have no tile/slot; every crossbar "
                          f"must be placed once")
    t = np.asarray(tiles, np.int64)
    s = np.asarray(slots, np.int64)
    nerr = len(rep.errors)
    out_of_range = np.nonzero((t < 0) | (t >= ntiles) | (s < 0) | (s >= cap))[0]
    if out_of_range.size:
        k = int(out_of_range[0])
        rep.errors.append(f"placement: {names[k]} is at tile {tiles[k]} slot {slots[k]}, outside the target's "
                          f"{ntiles} tiles x {cap} slots ({out_of_range.size} crossbar(s) out of range)")
    counts = np.bincount(t[t >= 0]) if t.size else np.zeros(0, np.int64)
    over = np.nonzero(counts > cap)[0]
    if over.size:
        rep.errors.append(f"placement: tile {int(over[0])} holds {int(counts[over[0]])} crossbars, over its "
                          f"capacity of {cap} ({over.size} tile(s) over capacity)")
    key = t * (cap + 1 + max(int(s.max(initial=0)), 0)) + s
    uniq, first, cnt = np.unique(key, return_index=True, return_counts=True)
    if np.any(cnt > 1):
        k = int(np.nonzero(key == uniq[cnt > 1][0])[0][1])
        j = int(first[cnt > 1][0])
        rep.errors.append(f"placement: {names[k]} and {names[j]} share tile {tiles[k]} slot {slots[k]}")
    rep.tiles_used = int(np.count_nonzero(counts))
    rep.max_per_tile = int(counts.max(initial=0))
    if len(rep.errors) == nerr and not unplaced:
        return (f"ok ({total} crossbars on {rep.tiles_used} tile(s), at most {rep.max_per_tile}/{cap} "
                f"per tile, (tile, slot) unique)")
    return "FAILED"


def _check_graph(mapping: dict[str, Any], data: bytes, path: Path, rep: ValidationReport) -> str:
    nerr = len(rep.errors)
    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as e:
        rep.errors.append(f"graph.onnx is not a readable ONNX model ({type(e).__name__}: {e})")
        return "FAILED"
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        rep.errors.append(f"graph.onnx fails the ONNX checker: {str(e).splitlines()[0]}")
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get(XBC_DOMAIN) != XBC_OPSET:
        rep.errors.append(f"graph.onnx does not import domain {XBC_DOMAIN!r} version {XBC_OPSET}")
    layer_ids = {e["id"]: e for e in mapping["layers"]}
    seen: dict[str, str] = {}
    for n in model.graph.node:
        if n.domain != XBC_DOMAIN:
            continue
        if n.op_type != CROSSBAR_OP:
            rep.errors.append(f"graph.onnx: node {n.name!r} has unknown op {XBC_DOMAIN}.{n.op_type}")
            continue
        lid = next((onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "layer_id"), None)
        lid = lid.decode() if isinstance(lid, bytes) else lid
        if lid is None:
            rep.errors.append(f"graph.onnx: CrossbarLayer node {n.name!r} has no layer_id attribute")
            continue
        if lid not in layer_ids:
            rep.errors.append(f"graph.onnx: CrossbarLayer node {n.name!r} names layer {lid!r}, which "
                              f"mapping.json does not have")
            continue
        if lid in seen:
            rep.errors.append(f"graph.onnx: layer {lid} is used by two nodes, {seen[lid]!r} and {n.name!r}")
            continue
        seen[lid] = n.name
        e = layer_ids[lid]
        if n.name != e["node"]:
            rep.errors.append(f"graph.onnx: layer {lid} belongs to node {e['node']!r}, used by {n.name!r}")
        if len(n.input) != 1 or len(n.output) != 1:
            rep.errors.append(f"graph.onnx: CrossbarLayer {n.name!r} must have one input and one output")
    missing = sorted(set(layer_ids) - set(seen))
    if missing:
        rep.errors.append(f"graph.onnx: layer(s) {', '.join(missing)} of mapping.json have no CrossbarLayer node")
    inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    want = set(mapping["model"]["inputs"])
    if inputs != want:
        rep.errors.append(f"graph.onnx inputs {sorted(inputs)} differ from mapping.json model.inputs {sorted(want)}")
    if len(rep.errors) == nerr:
        return f"ok ({len(seen)} CrossbarLayer nodes, {len(model.graph.node) - len(seen)} other ops)"
    return "FAILED"


# ========================================================================================
# CLI
# ========================================================================================

def _make_validate_cmd():
    import click  # noqa: PLC0415

    @click.command("validate")
    @click.argument("bundle", type=click.Path())
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @click.option("-q", "--quiet", is_flag=True, help="Print nothing when the bundle is valid.")
    def validate_cmd(bundle, as_json, quiet):
        """Check BUNDLE (a directory or .xbc zip): schema, array hashes, conservation, placement,
        graph.onnx consistency. Exit code 0 when valid, 2 with one error line per problem.

        \b
        Example:
          xbc validate out/
          xbc validate model.xbc --json
        """
        rep = validate_bundle(bundle, raise_on_error=False)
        if as_json:
            click.echo(dumps(rep.to_dict()), nl=False)
        elif not quiet or not rep.ok:
            click.echo(rep.render(), err=not rep.ok)
        if not rep.ok:
            more = f" (and {len(rep.errors) - 1} more problem(s), listed above)" if len(rep.errors) > 1 else ""
            raise BundleError(f"bundle {bundle} is invalid: {rep.errors[0]}{more}")

    return validate_cmd


validate_cmd = _make_validate_cmd()
