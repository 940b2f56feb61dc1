"""ONNX frontend: read a model file and lower it into xbc's IR.

Steps (each failure is a :class:`~xbc.errors.ModelError` naming the file or node):

1. read the file (with external data next to it), check it;
2. fix dynamic input dimensions from ``--input-shape NAME=1,3,224,224``;
3. ONNX shape inference gives every value a concrete shape and type;
4. build the IR (:func:`onnx_to_ir`);
5. recognise crossbar layers (:func:`mark_layers`): Conv, ConvTranspose, Gemm and MatMul whose
   weight operand is a constant.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelError
from .ir import Graph, Node, Value, verify
from .layer import Layer, matrix_shape

CROSSBAR_OPS = {"Conv": "conv", "ConvTranspose": "conv_transpose", "Gemm": "gemm", "MatMul": "matmul"}


def read_model(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {str(path)!r} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except FileNotFoundError as e:
        raise ModelError(f"{path}: external data file missing ({e.filename or e}); keep the weight files "
                         f"next to the model as the exporter wrote them") from None
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e}); "
                         f"check that the file is a complete .onnx export") from None
    return model


def model_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(src: str | Path | onnx.ModelProto,
               input_shapes: dict[str, tuple[int, ...]] | None = None, *, where: str | None = None) -> Graph:
    """Read an ONNX model (path or ModelProto) and lower it to a verified IR graph."""
    model = read_model(src) if not isinstance(src, onnx.ModelProto) else src
    where = where or (str(src) if not isinstance(src, onnx.ModelProto) else "model")
    model = fix_input_shapes(model, input_shapes or {}, where)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ModelError(f"{where}: ONNX shape inference failed: {e}") from None
    graph = onnx_to_ir(inferred, where)
    mark_layers(graph)
    verify(graph)
    return graph


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], where: str) -> onnx.ModelProto:
    init_names = {t.name for t in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in init_names]
    names = {i.name for i in real_inputs}
    for name in shapes:
        if name not in names:
            raise ModelError(f"--input-shape names {name!r}, but the model's inputs are "
                             f"{', '.join(sorted(names))}")
    model = onnx.ModelProto.FromString(model.SerializeToString()) if shapes else model
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if inp.name in shapes:
            want = shapes[inp.name]
            if len(want) != len(dims):
                raise ModelError(f"--input-shape {inp.name}: model input has rank {len(dims)}, got {len(want)} dims")
            for d, w in zip(dims, want):
                if d.HasField("dim_value") and d.dim_value != w:
                    raise ModelError(f"--input-shape {inp.name}: dimension is fixed to {d.dim_value} in the model, got {w}")
                d.Clear()
                d.dim_value = int(w)
        else:
            dyn = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
            if dyn:
                shape = ",".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)
                raise ModelError(f"{where}: input {inp.name!r} has dynamic dimensions ({shape}); fix them "
                                 f"with --input-shape {inp.name}=" + ",".join(
                                     str(d.dim_value) if d.HasField("dim_value") else "1" for d in dims))
    return model


def _shape_of(vi: onnx.ValueInfoProto) -> tuple[tuple | None, int | None]:
    t = vi.type
    if not t.HasField("tensor_type"):
        return None, None
    tt = t.tensor_type
    if not tt.HasField("shape"):
        return None, tt.elem_type or None
    dims = []
    for d in tt.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") else None)
    shape = tuple(dims) if all(d is not None for d in dims) else None
    return shape, tt.elem_type or None


def decode_attribute(a: onnx.AttributeProto) -> Any:
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="surrogateescape")
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [x.decode("utf-8", errors="surrogateescape") for x in v]
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    return v


def onnx_to_ir(model: onnx.ModelProto, where: str = "model") -> Graph:
    g = model.graph
    graph = Graph(g.name or "main")
    graph.opset_imports = {o.domain if o.domain != "ai.onnx" else "": o.version for o in model.opset_import}
    graph.model_meta = {"ir_version": model.ir_version,
                        "metadata_props": {p.key: p.value for p in model.metadata_props},
                        "functions": list(model.functions)}
    infos: dict[str, onnx.ValueInfoProto] = {}
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        infos[vi.name] = vi
    for t in g.initializer:
        try:
            arr = numpy_helper.to_array(t)
        except Exception as e:
            raise ModelError(f"{where}: initializer {t.name!r} cannot be read ({e})") from None
        v = Value(t.name, const=arr)
        graph.values[t.name] = v
    for inp in g.input:
        if inp.name in graph.values:
            continue
        shape, et = _shape_of(inp)
        v = Value(inp.name, shape, et)
        graph.values[inp.name] = v
        graph.inputs.append(v)
    for i, pn in enumerate(g.node):
        name = pn.name or f"{pn.op_type}_{i}"
        attrs = {a.name: decode_attribute(a) for a in pn.attribute}
        types = {a.name: a.type for a in pn.attribute}
        node = Node(pn.op_type, name, pn.domain if pn.domain != "ai.onnx" else "", attrs, types)
        node.graph = graph
        for iname in pn.input:
            if iname == "":
                node.append_input(None)
                continue
            if iname not in graph.values:
                raise ModelError(f"{where}: node {name!r} ({pn.op_type}) reads {iname!r}, which no node, "
                                 f"input or initializer provides (graph not topologically sorted?)")
            node.append_input(graph.values[iname])
        for oname in pn.output:
            if oname == "":
                oname = f"{name}_unused_out{len(node.outputs)}"
            if oname in graph.values:
                raise ModelError(f"{where}: value {oname!r} is produced twice (node {name!r})")
            shape, et = _shape_of(infos[oname]) if oname in infos else (None, None)
            v = Value(oname, shape, et)
            v.producer = node
            graph.values[oname] = v
            node.outputs.append(v)
        graph.nodes.append(node)
    for out in g.output:
        if out.name not in graph.values:
            raise ModelError(f"{where}: graph output {out.name!r} is never produced")
        graph.outputs.append(graph.values[out.name])
    names = set()
    for n in graph.nodes:
        if n.name in names:
            n.name = graph._unique_node_name(n.name + "_dup")
        names.add(n.name)
    return graph


def _layer_id(index: int, node: Node) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in node.name)
    return f"L{index:03d}_{safe}"[:80]


def mark_layers(graph: Graph) -> int:
    """Attach a :class:`Layer` to every Conv/ConvTranspose/Gemm/MatMul with a constant weight."""
    count = 0
    for node in graph.nodes:
        kind = CROSSBAR_OPS.get(node.op_type) if node.domain == "" else None
        if kind is None or node.layer is not None:
            continue
        if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].const is None:
            continue
        W = node.inputs[1].const
        if not np.issubdtype(W.dtype, np.floating):
            continue
        if kind == "matmul" and W.ndim != 2:
            continue
        if kind == "gemm" and (node.attr("transA", 0) or W.ndim != 2):
            continue
        if kind in ("conv", "conv_transpose") and W.ndim < 3:
            continue
        groups = int(node.attr("group", 1)) if kind in ("conv", "conv_transpose") else 1
        G, R, C = matrix_shape(kind, W.shape, groups, node.attrs)
        bias = 2 if len(node.inputs) > 2 and node.inputs[2] is not None else None
        node.layer = Layer(id=_layer_id(count, node), kind=kind, groups=G, rows=R, cols=C, bias_input=bias)
        count += 1
    return count
