"""The effective model: the network as the crossbars compute it, with ideal ADCs, as plain ONNX.

:func:`effective_model` exports the graph (:meth:`xbc.ir.Graph.to_onnx`) and, for every
quantized crossbar layer,

* fake-quantizes the layer's data input with ONNX ops that reproduce :mod:`xbc.qmath` exactly:
  ``Cast(double) -> Div(x_scale) -> Round -> Add(zp) -> Clip(0, 2**input_bits - 1) -> Sub(zp)
  -> Mul(x_scale) -> Cast(back)``. The division runs in float64 like ``qmath.quantize_input``
  (and the simulator), ``Round`` is half-to-even like ``np.rint``; codes are exact integers in
  float64 for any ``input_bits <= 16``;
* replaces the weight by ``W_int * w_scale[o]`` (computed in float64, rounded once to the
  weight's dtype), where ``W_int`` is rebuilt from the crossbar program
  (:func:`xbc.layer.rebuild_matrix` then :func:`xbc.layer.from_matrix`) when the layer has one,
  else ``quant.w_int``. A Gemm gets ``alpha = 1`` since ``w_scale`` already holds it.

Everything else (bias, padding — a real 0 is the code ``x_zero_point`` —, the digital ops) is
unchanged, so a layer's output is ``x_scale * w_scale[o] * (acc[o] - zp * colsum[o]) + bias[o]``
up to the float32 rounding of the layer's own arithmetic.

:func:`fidelity` compares a float model with an effective (or any) model on the same feeds:
top-1 agreement of the first output (argmax over axis 1), and SQNR / cosine similarity over all
outputs together.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import ortutil
from .errors import XbcError
from .ir import Graph
from .layer import from_matrix, rebuild_matrix, to_matrix


def integer_weight(node) -> np.ndarray:
    """The layer's integer weight in the weight tensor's layout (int64): rebuilt from the
    crossbar program if there is one, else ``quant.w_int``."""
    L = node.layer
    wshape = tuple(L.weight_value(node).const.shape)
    if L.program is not None:
        M = rebuild_matrix(L.program, L.groups, L.rows, L.cols)
        return from_matrix(L.kind, M, wshape, L.groups, node.attrs).astype(np.int64)
    return np.asarray(L.quant.w_int, np.int64)


def effective_weight(node, dtype=None) -> np.ndarray:
    """``W_int * w_scale[o]`` in the weight's layout, in ``dtype`` (default: the weight's own)."""
    L = node.layer
    W = L.weight_value(node).const
    Wi = integer_weight(node)
    M = to_matrix(L.kind, Wi.astype(np.float64), L.groups, node.attrs)
    M = M * np.asarray(L.quant.w_scale, np.float64).reshape(L.groups, 1, L.cols)
    return from_matrix(L.kind, M, tuple(W.shape), L.groups, node.attrs).astype(dtype or W.dtype)


def effective_model(graph: Graph) -> onnx.ModelProto:
    """The ONNX model that computes what the crossbars compute (see the module docstring)."""
    model = graph.to_onnx()
    g = model.graph
    by_name = {n.name: n for n in g.node}
    inits = {t.name for t in g.initializer}
    new_nodes: dict[str, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []
    taken = set(inits) | {o for n in g.node for o in n.output} | {i.name for i in g.input}

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    for node in graph.layers():
        L = node.layer
        if L.quant is None:
            raise XbcError(f"layer {L.id} ({node.name!r}) is not quantized; run the 'quantize' pass "
                           f"before building the effective model")
        q = L.quant
        proto = by_name[node.name]
        x = node.inputs[0]
        x_dt = TensorProto.FLOAT if x.elem_type is None else x.elem_type
        pre = f"xbc_eff/{L.id}/"
        c_scale = fresh(pre + "x_scale")
        c_zp = fresh(pre + "x_zp")
        c_lo = fresh(pre + "lo")
        c_hi = fresh(pre + "hi")
        new_inits += [numpy_helper.from_array(np.array(q.x_scale, np.float64), c_scale),
                      numpy_helper.from_array(np.array(float(q.x_zero_point), np.float64), c_zp),
                      numpy_helper.from_array(np.array(0.0, np.float64), c_lo),
                      numpy_helper.from_array(np.array(float((1 << q.input_bits) - 1), np.float64), c_hi)]
        names = [fresh(pre + s) for s in ("x64", "div", "round", "addzp", "clip", "subzp", "deq", "xq")]
        chain = [
            helper.make_node("Cast", [x.name], [names[0]], name=fresh(pre + "cast_in"), to=TensorProto.DOUBLE),
            helper.make_node("Div", [names[0], c_scale], [names[1]], name=fresh(pre + "div")),
            helper.make_node("Round", [names[1]], [names[2]], name=fresh(pre + "round")),
            helper.make_node("Add", [names[2], c_zp], [names[3]], name=fresh(pre + "add_zp")),
            helper.make_node("Clip", [names[3], c_lo, c_hi], [names[4]], name=fresh(pre + "clip")),
            helper.make_node("Sub", [names[4], c_zp], [names[5]], name=fresh(pre + "sub_zp")),
            helper.make_node("Mul", [names[5], c_scale], [names[6]], name=fresh(pre + "mul_scale")),
            helper.make_node("Cast", [names[6]], [names[7]], name=fresh(pre + "cast_out"), to=x_dt),
        ]
        new_nodes[node.name] = chain
        proto.input[0] = names[7]
        wname = fresh(pre + "weight")
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(effective_weight(node)), wname))
        proto.input[L.weight_input] = wname
        if L.kind == "gemm":
            for a in proto.attribute:
                if a.name == "alpha":
                    a.f = 1.0
    nodes = []
    for n in g.node:
        nodes.extend(new_nodes.get(n.name, []))
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model


def fidelity(float_model: onnx.ModelProto, eff_model: onnx.ModelProto,
             feeds: dict[str, np.ndarray] | list[dict[str, np.ndarray]]) -> dict[str, float]:
    """``{"top1_agreement", "sqnr_db", "cosine"}`` of ``eff_model`` against ``float_model``.

    ``feeds`` is one feed dict or a list of them (each run separately, results concatenated).
    Top-1 compares the argmax over axis 1 of the first output (per sample and position); SQNR
    and cosine are over all outputs (float64).
    """
    feed_list = [feeds] if isinstance(feeds, dict) else list(feeds)
    ref_s = ortutil.session(float_model)
    eff_s = ortutil.session(eff_model)
    names = [o.name for o in ref_s.get_outputs()]
    refs: list[list[np.ndarray]] = [[] for _ in names]
    tests: list[list[np.ndarray]] = [[] for _ in names]
    for f in feed_list:
        a = ref_s.run(names, f)
        b = eff_s.run(names, f)
        for i in range(len(names)):
            refs[i].append(np.asarray(a[i]))
            tests[i].append(np.asarray(b[i]))
    r0 = np.concatenate([np.atleast_1d(x) for x in refs[0]])
    t0 = np.concatenate([np.atleast_1d(x) for x in tests[0]])
    if r0.ndim >= 2:
        top1 = float(np.mean(np.argmax(r0, axis=1) == np.argmax(t0, axis=1)))
    else:
        top1 = float(np.argmax(r0) == np.argmax(t0))
    ref_all = np.concatenate([np.asarray(x, np.float64).ravel() for xs in refs for x in xs])
    test_all = np.concatenate([np.asarray(x, np.float64).ravel() for xs in tests for x in xs])
    return {"top1_agreement": top1, "sqnr_db": float(ortutil.sqnr_db(ref_all, test_all)),
            "cosine": float(ortutil.cosine(ref_all, test_all))}
