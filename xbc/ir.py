"""xbc's intermediate representation: a small, mutable, verified dataflow graph.

A :class:`Graph` holds :class:`Value` s (tensors with a concrete ``shape`` and ONNX element
type ``elem_type``) and :class:`Node` s (one ONNX op each, ``domain``/``op_type``/``attrs``).
Every value knows its ``producer`` (the node writing it, or ``None`` for graph inputs and
constants) and its ``uses`` (``(node, input_index)`` pairs). Only the methods of :class:`Graph`
and :class:`Node` change inputs and outputs, so the use lists are always right; the verifier
(:func:`verify`) checks this and the other invariants between passes.

Constants (ONNX initializers) are values with ``const`` set to a read-only numpy array.

Crossbar layers (Conv, ConvTranspose, Gemm, MatMul with a constant weight) are ordinary nodes
whose ``layer`` attribute holds an :class:`xbc.layer.Layer`; everything else is a digital op
kept with its exact ONNX semantics, including opaque subgraph attributes (If/Loop/Scan).

:meth:`Graph.to_onnx` exports the graph back to an ONNX ``ModelProto``; a round trip through
the frontend and back gives the same onnxruntime outputs.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import VerifyError

Shape = tuple  # tuple[int, ...]; entries are ints after the frontend


def np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def elem_type_of(array: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(np.asarray(array).dtype)


def _graph_attrs(value: Any) -> list:
    if isinstance(value, onnx.GraphProto):
        return [value]
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], onnx.GraphProto):
        return list(value)
    return []


def _proto_reads(g: onnx.GraphProto, reads: set, defined: set) -> None:
    defined.update(i.name for i in g.input)
    defined.update(t.name for t in g.initializer)
    defined.update(t.values.name for t in g.sparse_initializer)
    for n in g.node:
        reads.update(x for x in n.input if x)
        defined.update(x for x in n.output if x)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _proto_reads(a.g, reads, defined)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _proto_reads(sub, reads, defined)
    reads.update(o.name for o in g.output)


def subgraph_refs(node: "Node") -> set[str]:
    """Names of enclosing-scope values that the node's subgraph attributes (If/Loop/Scan bodies)
    read by name. These reads are not in use lists: never rename or remove such a value."""
    reads: set[str] = set()
    defined: set[str] = set()
    for v in node.attrs.values():
        for g in _graph_attrs(v):
            _proto_reads(g, reads, defined)
    return reads - defined


def implicit_reads(graph: "Graph") -> dict[str, list["Node"]]:
    """Value name -> nodes whose subgraphs read it by name (see :func:`subgraph_refs`)."""
    out: dict[str, list[Node]] = {}
    for n in graph.nodes:
        if any(_graph_attrs(v) for v in n.attrs.values()):
            for name in subgraph_refs(n):
                out.setdefault(name, []).append(n)
    return out


class Value:
    """A tensor in the graph. ``shape`` is a tuple of ints (concrete after the frontend)."""

    __slots__ = ("name", "shape", "elem_type", "producer", "uses", "const", "meta")

    def __init__(self, name: str, shape: Shape | None = None, elem_type: int | None = None,
                 const: np.ndarray | None = None):
        self.name = name
        self.producer: Node | None = None
        self.uses: list[tuple[Node, int]] = []
        self.meta: dict[str, Any] = {}
        self.const: np.ndarray | None = None
        if const is not None:
            arr = np.array(const, copy=True)
            arr.setflags(write=False)
            self.const = arr
            shape = tuple(arr.shape)
            elem_type = elem_type_of(arr)
        self.shape = tuple(shape) if shape is not None else None
        self.elem_type = elem_type

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def dtype(self) -> np.dtype | None:
        return None if self.elem_type is None else np_dtype(self.elem_type)

    def __repr__(self) -> str:
        return f"%{self.name}"


class Node:
    """One op. ``inputs`` may hold ``None`` for an omitted optional input."""

    __slots__ = ("name", "op_type", "domain", "inputs", "outputs", "attrs", "attr_types",
                 "meta", "layer", "graph")

    def __init__(self, op_type: str, name: str, domain: str = "", attrs: dict | None = None,
                 attr_types: dict | None = None):
        self.op_type = op_type
        self.name = name
        self.domain = domain
        self.inputs: list[Value | None] = []
        self.outputs: list[Value] = []
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.attr_types: dict[str, int] = dict(attr_types or {})
        self.meta: dict[str, Any] = {}
        self.layer = None  # xbc.layer.Layer for crossbar layers
        self.graph: Graph | None = None

    # --- attributes -------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    # --- inputs (only these change use lists) ------------------------------------------
    def set_input(self, index: int, value: Value | None) -> None:
        old = self.inputs[index]
        if old is not None:
            old.uses.remove((self, index))
        self.inputs[index] = value
        if value is not None:
            value.uses.append((self, index))

    def append_input(self, value: Value | None) -> None:
        self.inputs.append(None)
        self.set_input(len(self.inputs) - 1, value)

    def __repr__(self) -> str:
        return f"{self.op_type}({self.name})"


class Graph:
    """A topologically ordered list of nodes plus inputs, outputs and constants."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.values: dict[str, Value] = {}
        self.opset_imports: dict[str, int] = {"": 17}
        self.meta: dict[str, Any] = {}
        self.model_meta: dict[str, Any] = {}  # ir_version, producer, doc, metadata_props
        self._counter = itertools.count()

    # --- values ------------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        base = base or "v"
        if base not in self.values:
            return base
        while True:
            cand = f"{base}__{next(self._counter)}"
            if cand not in self.values:
                return cand

    def add_value(self, name: str, shape: Shape | None = None, elem_type: int | None = None) -> Value:
        name = self.unique_name(name)
        v = Value(name, shape, elem_type)
        self.values[name] = v
        return v

    def add_const(self, name: str, array: np.ndarray) -> Value:
        """A new constant (initializer); the array is copied and made read-only."""
        name = self.unique_name(name)
        v = Value(name, const=np.asarray(array))
        self.values[name] = v
        return v

    @property
    def initializers(self) -> dict[str, Value]:
        return {n: v for n, v in self.values.items() if v.const is not None}

    def value(self, name: str) -> Value:
        return self.values[name]

    # --- nodes -------------------------------------------------------------------------
    def make_node(self, op_type: str, inputs: Iterable[Value | None], n_outputs: int = 1, *,
                  name: str | None = None, domain: str = "", attrs: dict | None = None,
                  attr_types: dict | None = None, output_names: list[str] | None = None,
                  shapes: list | None = None, elem_types: list | None = None,
                  before: Node | None = None, after: Node | None = None) -> Node:
        """Create a node, its output values, and insert it (at the end, or before/after a node)."""
        node = Node(op_type, self._unique_node_name(name or op_type), domain, attrs, attr_types)
        for v in inputs:
            node.append_input(v)
        for i in range(n_outputs):
            oname = output_names[i] if output_names else f"{node.name}_out{i}"
            out = self.add_value(oname,
                                 shapes[i] if shapes else None,
                                 elem_types[i] if elem_types else None)
            out.producer = node
            node.outputs.append(out)
        node.graph = self
        if before is not None:
            self.nodes.insert(self.nodes.index(before), node)
        elif after is not None:
            self.nodes.insert(self.nodes.index(after) + 1, node)
        else:
            self.nodes.append(node)
        return node

    def _unique_node_name(self, base: str) -> str:
        names = {n.name for n in self.nodes}
        if base not in names:
            return base
        while True:
            cand = f"{base}__{next(self._counter)}"
            if cand not in names:
                return cand

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused (and not graph outputs)."""
        for out in node.outputs:
            if out.uses or out in self.outputs:
                raise VerifyError(f"cannot remove node {node.name!r}: output {out.name!r} is still used")
        for i in range(len(node.inputs)):
            node.set_input(i, None)
        for out in node.outputs:
            self.values.pop(out.name, None)
            out.producer = None
        self.nodes.remove(node)
        node.graph = None

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Every use of ``old`` (including as a graph output) now reads ``new``."""
        for node, idx in list(old.uses):
            node.set_input(idx, new)
        self.outputs = [new if o is old else o for o in self.outputs]

    def rename_value(self, value: Value, name: str) -> None:
        """Give ``value`` a new name that no other value has (use lists are unaffected).
        Used to keep a graph output's name when a pass removes the node that produced it."""
        if name == value.name:
            return
        if name in self.values:
            raise VerifyError(f"cannot rename {value.name!r} to {name!r}: the name is taken")
        del self.values[value.name]
        value.name = name
        self.values[name] = value

    def consumers(self, value: Value) -> list[Node]:
        return [n for n, _ in value.uses]

    def remove_unused(self) -> int:
        """Drop nodes without side effects whose outputs nobody reads, and unused constants."""
        removed = 0
        outputs = set(map(id, self.outputs))
        outputs.update(id(self.values[n]) for n in implicit_reads(self) if n in self.values)
        changed = True
        while changed:
            changed = False
            for node in reversed(list(self.nodes)):
                if all(not o.uses and id(o) not in outputs for o in node.outputs):
                    self.remove_node(node)
                    removed += 1
                    changed = True
        inputs = set(map(id, self.inputs))
        for name, v in list(self.values.items()):
            if v.producer is None and not v.uses and id(v) not in outputs and id(v) not in inputs:
                if v.const is not None or v.producer is None:
                    del self.values[name]
        return removed

    def topo_sort(self) -> None:
        """Reorder nodes topologically (stable: keeps the current order where possible)."""
        order: list[Node] = []
        done: set[int] = set()
        index = {id(n): i for i, n in enumerate(self.nodes)}
        implicit: dict[int, list[Node]] = {}  # producer -> nodes whose subgraphs read its outputs
        extra: dict[int, int] = {}
        for name, readers in implicit_reads(self).items():
            v = self.values.get(name)
            if v is not None and v.producer is not None:
                for r in readers:
                    implicit.setdefault(id(v.producer), []).append(r)
                    extra[id(r)] = extra.get(id(r), 0) + 1
        pending = {id(n): sum(1 for v in n.inputs if v is not None and v.producer is not None)
                   + extra.get(id(n), 0) for n in self.nodes}
        import heapq
        ready = [(index[id(n)], n) for n in self.nodes if pending[id(n)] == 0]
        heapq.heapify(ready)
        while ready:
            _, n = heapq.heappop(ready)
            order.append(n)
            done.add(id(n))
            users = [user for out in n.outputs for user, _ in out.uses] + implicit.get(id(n), [])
            for user in users:
                pending[id(user)] -= 1
                if pending[id(user)] == 0:
                    heapq.heappush(ready, (index[id(user)], user))
        if len(order) != len(self.nodes):
            stuck = [n.name for n in self.nodes if id(n) not in done][:5]
            raise VerifyError(f"graph has a cycle through nodes {stuck}")
        self.nodes = order

    def layers(self) -> Iterator[Node]:
        """The crossbar layer nodes, in topological order."""
        return (n for n in self.nodes if n.layer is not None)

    # --- printing and export -------------------------------------------------------------
    def dump(self) -> str:
        return format_graph(self)

    def to_onnx(self, *, keep_layer_meta: bool = False) -> onnx.ModelProto:
        return to_onnx(self)


# ----------------------------------------------------------------------------------------
# verifier
# ----------------------------------------------------------------------------------------

def verify(graph: Graph) -> None:
    """Check use lists, topological order, shapes/types and each op's own rules.

    Raises :class:`VerifyError` naming the node and the broken rule.
    """
    seen: set[int] = set()
    for v in graph.inputs:
        seen.add(id(v))
    for v in graph.values.values():
        if v.producer is None:
            seen.add(id(v))
    names: set[str] = set()
    for node in graph.nodes:
        if node.name in names:
            raise VerifyError(f"node name {node.name!r} is used twice")
        names.add(node.name)
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in seen:
                raise VerifyError(f"node {node.name!r} ({node.op_type}) reads {v.name!r} before it is "
                                  f"produced (graph not in topological order or value dangling)")
            if (node, i) not in v.uses:
                raise VerifyError(f"use list of {v.name!r} misses input {i} of node {node.name!r}")
            if graph.values.get(v.name) is not v:
                raise VerifyError(f"node {node.name!r} reads {v.name!r}, which is not in the graph")
        for out in node.outputs:
            if out.producer is not node:
                raise VerifyError(f"value {out.name!r} says it is produced by "
                                  f"{getattr(out.producer, 'name', None)!r}, not {node.name!r}")
            if graph.values.get(out.name) is not out:
                raise VerifyError(f"output {out.name!r} of {node.name!r} is not in the graph")
            seen.add(id(out))
            if out.meta.get("onnx_type") is not None or out.meta.get("omitted"):
                continue  # sequence / optional / map value, or an unnamed optional output
            if out.shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in out.shape):
                raise VerifyError(f"output {out.name!r} of node {node.name!r} ({node.op_type}) has no "
                                  f"concrete shape: {out.shape}")
            if out.elem_type is None:
                raise VerifyError(f"output {out.name!r} of node {node.name!r} has no element type")
        if node.layer is not None:
            node.layer.verify(node)
        if any(_graph_attrs(a) for a in node.attrs.values()):
            for name in sorted(subgraph_refs(node)):
                v = graph.values.get(name)
                if v is None or id(v) not in seen:
                    raise VerifyError(f"a subgraph of node {node.name!r} ({node.op_type}) reads {name!r}, "
                                      f"which is not defined before it")
    for v in graph.values.values():
        for user, idx in v.uses:
            if user.graph is not graph or idx >= len(user.inputs) or user.inputs[idx] is not v:
                raise VerifyError(f"use list of {v.name!r} names input {idx} of {user.name!r}, "
                                  f"which reads something else")
    for v in graph.outputs:
        if id(v) not in seen:
            raise VerifyError(f"graph output {v.name!r} is never produced")


# ----------------------------------------------------------------------------------------
# printer
# ----------------------------------------------------------------------------------------

def _fmt_type(v: Value) -> str:
    dt = "?" if v.elem_type is None else onnx.TensorProto.DataType.Name(v.elem_type).lower()
    shp = "?" if v.shape is None else "x".join(str(d) for d in v.shape)
    return f"{dt}[{shp}]"


def _fmt_attr(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"tensor{list(value.shape)}"
    if isinstance(value, onnx.GraphProto):
        return f"graph({value.name})"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt_attr(x) for x in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def format_graph(graph: Graph) -> str:
    """A stable text form of the graph, for tests and ``--print-after``."""
    lines = [f"graph {graph.name}("
             + ", ".join(f"%{v.name}: {_fmt_type(v)}" for v in graph.inputs) + ") {"]
    for name, v in sorted(graph.initializers.items()):
        lines.append(f"  const %{name}: {_fmt_type(v)}")
    for n in graph.nodes:
        outs = ", ".join(f"%{o.name}: {_fmt_type(o)}" for o in n.outputs)
        ins = ", ".join("_" if v is None else f"%{v.name}" for v in n.inputs)
        op = n.op_type if not n.domain else f"{n.domain}.{n.op_type}"
        attrs = ""
        if n.attrs:
            attrs = " {" + ", ".join(f"{k}={_fmt_attr(v)}" for k, v in sorted(n.attrs.items())) + "}"
        tag = ""
        if n.layer is not None:
            tag = "  # " + n.layer.describe()
        lines.append(f"  {outs} = {op}[{n.name}]({ins}){attrs}{tag}")
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------------------

def make_onnx_attribute(name: str, value: Any, attr_type: int | None = None) -> onnx.AttributeProto:
    if isinstance(value, np.ndarray):
        value = numpy_helper.from_array(value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], np.ndarray):
        value = [numpy_helper.from_array(x) for x in value]
    if attr_type is not None:
        return helper.make_attribute(name, value, attr_type=attr_type)
    return helper.make_attribute(name, value)


def _value_info(v: Value) -> onnx.ValueInfoProto:
    if v.meta.get("onnx_type") is not None:  # sequence / optional / map (a TypeProto)
        return helper.make_value_info(v.name, v.meta["onnx_type"])
    return helper.make_tensor_value_info(v.name, v.elem_type or 0,
                                         None if v.shape is None else list(v.shape))


def is_omitted(v: Value, graph: Graph) -> bool:
    """An optional output the model left unnamed (``""``) that nothing reads: exported as ``""``."""
    return bool(v.meta.get("omitted")) and not v.uses and v not in graph.outputs


def to_onnx(graph: Graph) -> onnx.ModelProto:
    """Export the graph as an ONNX model (weights as initializers, shapes as value_info)."""
    nodes = []
    for n in graph.nodes:
        attrs = [make_onnx_attribute(k, v, n.attr_types.get(k)) for k, v in n.attrs.items()]
        proto = helper.make_node(n.op_type, [("" if v is None else v.name) for v in n.inputs],
                                 [("" if is_omitted(o, graph) else o.name) for o in n.outputs],
                                 name=n.name, domain=n.domain or None)
        proto.attribute.extend(attrs)
        nodes.append(proto)
    sub_reads = implicit_reads(graph)
    used_consts = sorted(name for name, v in graph.values.items()
                         if v.const is not None and (v.uses or v in graph.outputs or name in sub_reads))
    inits = [numpy_helper.from_array(np.asarray(graph.values[n].const, order="C"), n) for n in used_consts]  # (ascontiguousarray would make scalars 1-D)
    produced = [o for n in graph.nodes for o in n.outputs if o not in graph.outputs]
    g = helper.make_graph(nodes, graph.name, [_value_info(v) for v in graph.inputs],
                          [_value_info(v) for v in graph.outputs], inits,
                          value_info=[_value_info(v) for v in produced if not is_omitted(v, graph) and
                                      (v.shape is not None or v.meta.get("onnx_type") is not None)])
    opsets = [helper.make_opsetid(d, ver) for d, ver in sorted(graph.opset_imports.items())]
    model = helper.make_model(g, opset_imports=opsets, producer_name="xbc")
    if "ir_version" in graph.model_meta:
        model.ir_version = max(graph.model_meta["ir_version"], 7)
    for key, val in sorted(graph.model_meta.get("metadata_props", {}).items()):
        p = model.metadata_props.add()
        p.key, p.value = key, val
    for f in graph.model_meta.get("functions", []):
        model.functions.append(f)
    return model
