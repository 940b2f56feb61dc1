"""cleanup: Constant nodes to constants, constant/shape folding, Identity/Dropout removal.

The frontend runs this pass on every model (it may also appear in a pipeline). Rounds of

1. **Constant nodes** become constants (every ``value*`` attribute form, sparse included);
2. **folding**: a default-domain node whose inputs are all constant is evaluated once with
   ``onnx.reference.ReferenceEvaluator`` (exact ONNX semantics for the model's opset) and its
   outputs become constants; ``Shape``/``Size`` of a value with a concrete shape fold without
   evaluation. Not folded: random ops, nodes with subgraphs, nodes producing graph outputs,
   crossbar layers, other domains, and results above ``fold-limit`` elements unless a crossbar
   weight/bias or a shape needs them (so a big ``Expand`` of activations stays an op).
   ``DequantizeLinear`` of a constant integer weight folds into the exact float weight and
   remembers ``{w_int, scale, zp}`` (full-shape, in ``Value.meta['prequant']``), carried through
   later layout ops (Transpose/Reshape/Squeeze/Unsqueeze/Flatten/Cast) so the layer can keep the
   model's own quantization;
3. **Identity and Dropout** (inference mode: no ``training_mode`` or a constant false one; an
   unused or constant-true mask) are removed; a graph output keeps its name (the producer is
   renamed to it), and a value that an If/Loop/Scan body reads by name is never renamed or removed;
4. dead nodes and constants are dropped, then ONNX shape inference runs again so values behind a
   folded ``Reshape`` target become concrete.

until nothing changes (at most ``max-rounds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from xbc.errors import ModelError
from xbc.ir import Graph, Node, Value, _graph_attrs, elem_type_of, implicit_reads
from xbc.passmanager import Pass, PassContext, PassResult, register

RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
              "Bernoulli"}
LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"}
# (op, input index) pairs that hold crossbar weights / biases or quantized weights
WEIGHT_SLOTS = {("Conv", 1), ("Conv", 2), ("ConvTranspose", 1), ("ConvTranspose", 2), ("Gemm", 0), ("Gemm", 1),
                ("Gemm", 2), ("MatMul", 0), ("MatMul", 1), ("QLinearConv", 3), ("QLinearConv", 8),
                ("QLinearMatMul", 3), ("ConvInteger", 1), ("MatMulInteger", 1)}


@register
@dataclass(frozen=True)
class Cleanup(Pass):
    """Constant nodes to constants, constant and shape folding, Identity/Dropout removal."""

    name: ClassVar[str] = "cleanup"
    summary: ClassVar[str] = "Constant nodes to constants, constant/shape folding, Identity/Dropout removal"
    fold_limit: int = 10_000_000   # largest folded result (elements) unless a weight or shape needs it
    max_rounds: int = 8

    def __post_init__(self):
        if self.fold_limit < 0:
            raise ValueError(f"fold-limit must be >= 0, got {self.fold_limit}")
        if self.max_rounds < 1:
            raise ValueError(f"max-rounds must be >= 1, got {self.max_rounds}")

    def run(self, graph: Graph, ctx: PassContext | None = None) -> PassResult:
        stats = cleanup_graph(graph, fold_limit=self.fold_limit, max_rounds=self.max_rounds)
        changed = any(v for k, v in stats.items() if k != "rounds")
        return PassResult(changed=changed, stats=stats)


# ----------------------------------------------------------------------------------------

def cleanup_graph(graph: Graph, *, fold_limit: int = 10_000_000, max_rounds: int = 8,
                  where: str = "model", infer: bool = True) -> dict[str, int]:
    """Run cleanup rounds to a fixed point; returns counts of what changed."""
    from xbc.frontend import infer_graph_shapes

    stats = {"constants": 0, "folded": 0, "removed_identity": 0, "removed_dead": 0, "shapes_inferred": 0,
             "rounds": 0}
    for _ in range(max_rounds):
        stats["rounds"] += 1
        c = constants_to_values(graph)
        f = fold_constants(graph, fold_limit=fold_limit)
        i = remove_identities(graph)
        d = graph.remove_unused()
        s = infer_graph_shapes(graph, where) if infer and (c or f or i or d or stats["rounds"] == 1) else 0
        stats["constants"] += c
        stats["folded"] += f
        stats["removed_identity"] += i
        stats["removed_dead"] += d
        stats["shapes_inferred"] += s
        if not (c or f or i or d or s):
            break
    return stats


def _to_const(graph: Graph, node: Node, arrays: list[np.ndarray]) -> None:
    """Turn ``node``'s outputs into constants in place (same Value objects, names and uses)."""
    for out, arr in zip(node.outputs, arrays):
        arr = np.asarray(arr)
        if not arr.flags.owndata or arr.flags.writeable:
            arr = np.array(arr, copy=True)
        arr.setflags(write=False)
        out.const = arr
        out.shape = tuple(arr.shape)
        out.elem_type = elem_type_of(arr)
        out.producer = None
    for i in range(len(node.inputs)):
        node.set_input(i, None)
    node.graph = None


def _drop_nodes(graph: Graph, dead: set[int]) -> None:
    if dead:
        graph.nodes = [n for n in graph.nodes if id(n) not in dead]


def constant_value(node: Node) -> np.ndarray:
    """The tensor a Constant node produces (every ``value*`` attribute form)."""
    from xbc.frontend import sparse_to_dense

    a = node.attrs
    if "value" in a:
        return np.asarray(a["value"])
    if "sparse_value" in a:
        return sparse_to_dense(a["sparse_value"])
    if "value_float" in a:
        return np.array(a["value_float"], np.float32)
    if "value_floats" in a:
        return np.array(list(a["value_floats"]), np.float32)
    if "value_int" in a:
        return np.array(a["value_int"], np.int64)
    if "value_ints" in a:
        return np.array(list(a["value_ints"]), np.int64)
    if "value_string" in a:
        return np.array(a["value_string"], dtype=object)
    if "value_strings" in a:
        return np.array(list(a["value_strings"]), dtype=object)
    raise ModelError(f"Constant node {node.name!r} has no value attribute")


def constants_to_values(graph: Graph) -> int:
    outs = set(map(id, graph.outputs))
    dead: set[int] = set()
    for node in graph.nodes:
        if node.op_type != "Constant" or node.domain != "" or id(node.outputs[0]) in outs:
            continue
        _to_const(graph, node, [constant_value(node)])
        dead.add(id(node))
    _drop_nodes(graph, dead)
    return len(dead)


def _evaluate(node: Node, opsets: dict[str, int], arrays: list[np.ndarray | None]) -> list[Any]:
    from onnx.reference import ReferenceEvaluator

    from xbc.frontend import _node_proto

    proto = _node_proto(node)
    names = [("" if v is None else v.name) for v in node.inputs]
    feeds = {n: a for n, a in zip(names, arrays) if n}
    ops = {d: v for d, v in opsets.items() if d in ("", "ai.onnx.ml")}
    return list(ReferenceEvaluator(proto, opsets=ops).run(None, feeds))


def _needed(v: Value, depth: int = 0) -> bool:
    """Does a crossbar weight/bias (or a layout chain leading to one) read this value?"""
    if depth > 6:
        return False
    for user, idx in v.uses:
        if (user.op_type, idx) in WEIGHT_SLOTS:
            return True
        if user.op_type in LAYOUT_OPS | {"DequantizeLinear"} and idx == 0 and \
                any(_needed(o, depth + 1) for o in user.outputs):
            return True
    return False


def _prequant_through(node: Node, opsets: dict, meta: dict, arrays: list) -> dict | None:
    out = {}
    for key, arr in meta.items():
        try:
            res = _evaluate(node, opsets, [arr] + arrays[1:]) if node.op_type != "Cast" else [arr]
        except Exception:
            return None
        out[key] = np.asarray(res[0])
    return out


def fold_constants(graph: Graph, *, fold_limit: int = 10_000_000) -> int:
    """Fold nodes with all-constant inputs, and Shape/Size of concretely shaped values."""
    from xbc.frontend import prequant_meta

    outs = set(map(id, graph.outputs))
    dead: set[int] = set()
    for node in graph.nodes:
        if node.domain not in ("", "ai.onnx.ml") or node.layer is not None or node.op_type in RANDOM_OPS \
                or node.op_type == "Constant" or not node.outputs or not node.inputs:
            continue
        if any(id(o) in outs or o.meta.get("onnx_type") is not None for o in node.outputs):
            continue
        if any(_graph_attrs(v) for v in node.attrs.values()):
            continue
        x = node.inputs[0]
        if node.op_type in ("Shape", "Size") and x is not None and x.shape is not None and x.const is None:
            shape = np.array(x.shape, np.int64)
            if node.op_type == "Size":
                res = np.array(int(np.prod(shape)), np.int64)
            else:
                r = len(shape)
                start = int(node.attr("start", 0))
                end = node.attr("end", None)
                start = min(max(start + r if start < 0 else start, 0), r)
                end = r if end is None else int(end)
                end = min(max(end + r if end < 0 else end, 0), r)
                res = shape[start:end]
            _to_const(graph, node, [res])
            dead.add(id(node))
            continue
        if any(v is not None and v.const is None for v in node.inputs):
            continue
        big = any(o.shape is not None and int(np.prod(o.shape, dtype=np.int64)) > fold_limit for o in node.outputs)
        if big and not any(_needed(o) for o in node.outputs):
            continue
        arrays = [None if v is None else v.const for v in node.inputs]
        try:
            res = _evaluate(node, graph.opset_imports, arrays)
        except Exception:
            continue  # no reference kernel, or the op fails: leave it to the runtime
        if len(res) < len(node.outputs) or not all(isinstance(r, (np.ndarray, np.generic)) for r in res[:len(node.outputs)]):
            continue
        res = [np.asarray(r) for r in res[:len(node.outputs)]]
        ok = True
        for o, r in zip(node.outputs, res):
            if o.shape is not None and tuple(r.shape) != tuple(o.shape):
                ok = False
            if r.size > fold_limit and not _needed(o):
                ok = False
            try:
                et = elem_type_of(r)
            except Exception:
                ok = False
                continue
            if o.elem_type is not None and et != o.elem_type:
                ok = False
        if not ok:
            continue
        meta = None
        if node.op_type == "DequantizeLinear" and np.issubdtype(arrays[0].dtype, np.integer):
            try:
                meta = prequant_meta(arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None,
                                     int(node.attr("axis", 1)), int(node.attr("block_size", 0)))
            except Exception:
                meta = None
        elif node.op_type in LAYOUT_OPS and x is not None and x.meta.get("prequant") is not None:
            if node.op_type != "Cast" or np.issubdtype(res[0].dtype, np.floating):
                meta = _prequant_through(node, graph.opset_imports, x.meta["prequant"], arrays)
        _to_const(graph, node, res)
        if meta is not None:
            node.outputs[0].meta["prequant"] = meta
        dead.add(id(node))
    _drop_nodes(graph, dead)
    return len(dead)


def _detach(graph: Graph, node: Node, keep: Value | None = None) -> None:
    """Unlink a node whose outputs nobody reads (``keep`` has been handed to another producer)."""
    for i in range(len(node.inputs)):
        node.set_input(i, None)
    for o in node.outputs:
        if o is not keep:
            graph.values.pop(o.name, None)
            o.producer = None
    node.graph = None


def _bypass(graph: Graph, node: Node, src: Value, out: Value, sub: dict, outs: set) -> bool:
    """Remove a pass-through node (out == src), keeping the names that graph outputs and
    subgraphs rely on. The caller drops the detached node from ``graph.nodes``."""
    if out.name in sub:
        return False
    if any(o.uses or id(o) in outs for o in node.outputs if o is not out):
        return False
    if id(out) in outs:
        # the graph output keeps its name: src's producer now writes it directly
        if src.producer is None or id(src) in outs or src.name in sub or src in graph.inputs:
            return False
        prod = src.producer
        k = prod.outputs.index(src)
        _detach(graph, node, keep=out)
        graph.replace_all_uses(src, out)
        prod.outputs[k] = out
        out.producer = prod
        if out.shape is None:
            out.shape, out.elem_type = src.shape, src.elem_type
        graph.values.pop(src.name, None)
        src.producer = None
        return True
    graph.replace_all_uses(out, src)
    _detach(graph, node)
    return True


def remove_identities(graph: Graph) -> int:
    sub = implicit_reads(graph)
    outs = set(map(id, graph.outputs))
    dead: set[int] = set()
    for node in list(graph.nodes):
        if node.domain != "" or node.layer is not None or not node.inputs or node.inputs[0] is None:
            continue
        if node.op_type == "Identity":
            if node.outputs[0].meta.get("onnx_type") is not None:
                continue
        elif node.op_type == "Dropout":
            tm = node.inputs[2] if len(node.inputs) > 2 else None
            if tm is not None and (tm.const is None or bool(np.asarray(tm.const).reshape(-1)[0])):
                continue  # training mode (or unknown): dropout is random, keep it
            if len(node.outputs) > 1:
                mask = node.outputs[1]
                if mask.uses or id(mask) in outs or mask.name in sub:
                    if mask.name in sub or id(mask) in outs or node.inputs[0].shape is None:
                        continue
                    ones = graph.add_const(mask.name + "_ones", np.ones(node.inputs[0].shape, bool))
                    graph.replace_all_uses(mask, ones)
        else:
            continue
        if _bypass(graph, node, node.inputs[0], node.outputs[0], sub, outs):
            dead.add(id(node))
    _drop_nodes(graph, dead)
    return len(dead)
