"""fold-batchnorm: fold BatchNormalization and per-channel Mul/Add by constants into the producing
crossbar layer (MARS's BN-fused quantization: the folded weight is what gets quantized).

Model
    An affine node ``y = a * z + c`` with per-output-channel constants ``a[o]``, ``c[o]`` whose
    input ``z`` is the output of a Conv / ConvTranspose / Gemm / MatMul layer ``z = W x + b``
    (possibly through Identity nodes) is folded::

        W'[.., o, ..] = a[o] * W[.., o, ..]        b'[o] = a[o] * b[o] + c[o]

    BatchNormalization (inference form): ``a = scale / sqrt(var + epsilon)``,
    ``c = B - mean * a``; ``Mul`` by a constant: ``a = k``; ``Add``: ``c = k``; ``Sub``: ``x - k``
    (``c = -k``) or ``k - x`` (``a = -1, c = k``); ``Div`` by a constant: ``a = 1 / k``. A constant
    may be a scalar or broadcast along the output-channel axis only (axis 1 of Conv and
    ConvTranspose outputs, the last axis of Gemm / MatMul outputs; BatchNormalization always
    normalizes axis 1, so after a Gemm/MatMul it folds only into a 2-D output). Chains such as
    Paddle's ``Mul + Add`` or ``BN -> Mul`` fold one after another.

    Where the output channel sits in the weight: Conv ``W[Cout, Cin/G, k..]`` axis 0;
    ConvTranspose ``W[Cin, Cout/G, k..]`` axis 1 within each group (``o = g*Cout/G + j``);
    Gemm ``W[K, N]`` axis 1, or ``W[N, K]`` axis 0 with ``transB=1``; MatMul ``W[K, N]`` axis 1.

Bias
    Conv / ConvTranspose get a bias input if they had none. Gemm: ``C' = a * C + c / beta`` (a
    Gemm with ``beta = 0`` keeps the affine op). MatMul has no bias input: its bias is an
    ``Add`` of a constant right after it (created, or extended when one is there), which stays a
    digital op of the host.

What is not folded (the op stays a digital op; a BatchNormalization already is an exact
per-channel affine op on the host), with the reason recorded as an ``info`` diagnostic and in
the pass stats: the producer is not a crossbar layer (e.g. a residual Add) or its weight is not
a constant; the weight is shared by several nodes (programmed once, it cannot take two
different folds); the producer's output (or an Identity on the way) has other consumers or is a
graph output; the affine constants are not constants or do not broadcast per channel; a BN in
training mode.

All graph changes go through the IR (``make_node``, ``add_const``, ``set_input``,
``replace_all_uses``, ``remove_node``, ``rename_value`` so that a graph output keeps its name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from xbc.ir import Graph, Node, Value, implicit_reads
from xbc.passmanager import Pass, PassContext, PassResult, register

AFFINE_OPS = ("BatchNormalization", "Mul", "Add", "Sub", "Div")


class _NoFold(Exception):
    """Internal: the affine node cannot be folded (message = reason)."""


def _is_float(v: Value | None) -> bool:
    return v is not None and v.elem_type is not None and np.issubdtype(v.dtype, np.floating)


def _const_float(v: Value | None) -> bool:
    return v is not None and v.const is not None and np.issubdtype(v.const.dtype, np.floating)


def channel_vector(k: np.ndarray, out_shape: tuple, axis: int) -> np.ndarray | None:
    """A constant that broadcasts over ``out_shape`` along ``axis`` only -> ``[out_shape[axis]]``
    float64; ``None`` when it varies along another axis or would change the output shape."""
    k = np.asarray(k)
    r = len(out_shape)
    if k.ndim > r:
        return None
    kp = (1,) * (r - k.ndim) + tuple(k.shape)
    for i, d in enumerate(kp):
        if i == axis:
            if d not in (1, out_shape[axis]):
                return None
        elif d != 1:
            return None
    return np.broadcast_to(k.astype(np.float64).reshape(-1), (out_shape[axis],)).copy()


@register
@dataclass(frozen=True)
class FoldBatchnorm(Pass):
    name: ClassVar[str] = "fold-batchnorm"
    summary: ClassVar[str] = "fold BatchNormalization and per-channel Mul/Add by constants into crossbar layers"

    mul_add: bool = True   # also fold Mul/Add/Sub/Div by constants (not only BatchNormalization)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded: dict[str, int] = {}
        kept: dict[str, dict] = {}
        changed = True
        any_change = False
        while changed:
            changed = False
            implicit = implicit_reads(graph)
            for node in list(graph.nodes):
                if node.graph is not graph or node.domain != "" or node.op_type not in AFFINE_OPS:
                    continue
                if node.op_type != "BatchNormalization" and not self.mul_add:
                    continue
                ctx.node = node
                try:
                    ok = self._try_fold(graph, node, implicit)
                except _NoFold as e:
                    kept[node.name] = {"op": node.op_type, "reason": str(e)}
                    continue
                if ok:
                    folded[node.op_type] = folded.get(node.op_type, 0) + 1
                    kept.pop(node.name, None)
                    changed = any_change = True
                    break  # use lists and implicit reads changed: rescan
        ctx.node = None
        present = {n.name: n for n in graph.nodes}
        kept = {k: v for k, v in kept.items() if k in present}
        for name, info in sorted(kept.items()):
            what = "a digital per-channel affine op" if info["op"] == "BatchNormalization" else "a digital op"
            ctx.info(f"{info['op']} {name!r} not folded, stays {what}: {info['reason']}", node=present[name])
        if any_change:
            graph.remove_unused()
        stats = {"folded": sum(folded.values()), "folded_by_op": dict(sorted(folded.items())),
                 "kept": [{"node": k, **v} for k, v in sorted(kept.items())]}
        return PassResult(any_change, stats)

    # ------------------------------------------------------------------------------------
    def _affine(self, node: Node) -> tuple[int, np.ndarray | None, np.ndarray | None, int | None] | None:
        """(data input index, a, c, fixed channel axis) or None if the node is not an affine op
        with constants. a / c are raw constants (broadcastable) or None for 1 / 0."""
        ins = node.inputs
        if node.op_type == "BatchNormalization":
            if len(ins) < 5 or not all(_const_float(v) for v in ins[1:5]):
                raise _NoFold("its scale/bias/mean/var are not all float constants")
            if int(node.attrs.get("training_mode", 0)) or any(o.uses for o in node.outputs[1:]):
                raise _NoFold("it runs in training mode (batch statistics)")
            if int(node.attrs.get("spatial", 1)) == 0 or any(v.const.ndim != 1 for v in ins[1:5]):
                raise _NoFold("its parameters are not per-channel vectors (spatial=0)")
            eps = float(node.attrs.get("epsilon", 1e-5))
            g, b, m, v = (np.asarray(x.const, np.float64) for x in ins[1:5])
            a = g / np.sqrt(v + eps)
            return 0, a, b - m * a, 1
        if len(ins) != 2 or ins[0] is None or ins[1] is None:
            return None
        c0, c1 = _const_float(ins[0]), _const_float(ins[1])
        if c0 == c1:
            return None
        di = 1 if c0 else 0
        k = np.asarray(ins[1 - di].const, np.float64)
        op = node.op_type
        if op == "Mul":
            return di, k, None, None
        if op == "Add":
            return di, None, k, None
        if op == "Sub":
            return (0, None, -k, None) if di == 0 else (1, -np.ones_like(k), k, None)
        if op == "Div":
            if di != 0 or np.any(k == 0):
                return None
            return 0, 1.0 / k, None, None
        return None

    def _matmul_bias(self, add: Node, implicit) -> tuple[Node, int] | None:
        """If ``add`` is the bias Add of a MatMul layer: (matmul node, constant input index)."""
        if add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
            return None
        for ci in (0, 1):
            k, v = add.inputs[ci], add.inputs[1 - ci]
            if not _const_float(k) or v is None or v.const is not None or v.producer is None:
                continue
            m = v.producer
            if m.layer is None or m.layer.kind != "matmul" or m.op_type != "MatMul":
                continue
            if len(v.uses) != 1 or v in m.graph.outputs or v.name in implicit:
                continue
            if v.shape is None or add.outputs[0].shape != v.shape:
                continue
            if channel_vector(k.const, v.shape, len(v.shape) - 1) is None:
                continue
            return m, ci
        return None

    def _try_fold(self, graph: Graph, A: Node, implicit) -> bool:
        aff = self._affine(A)
        if aff is None:
            return False
        di, a_raw, c_raw, fixed_axis = aff
        is_bn = A.op_type == "BatchNormalization"
        out = A.outputs[0]
        z = A.inputs[di]
        if z is None or not _is_float(out) or out.shape is None or z.shape != out.shape:
            if is_bn:
                raise _NoFold("its input and output shapes differ or are unknown")
            return False
        # walk up through Identity nodes
        chain: list[Node] = []
        v = z
        while v.producer is not None and v.producer.op_type == "Identity" and v.producer.domain == "":
            chain.append(v.producer)
            v = v.producer.inputs[0]
        P = v.producer
        if not is_bn and self._matmul_bias(A, implicit) is not None:
            return False  # A is itself the bias of a MatMul layer
        bias_add = None
        if P is not None and (mb := self._matmul_bias(P, implicit)) is not None:
            bias_add, bias_ci = P, mb[1]
            P = mb[0]
        if P is None or P.layer is None:
            if P is not None and P.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and P.domain == "":
                w = P.inputs[1] if len(P.inputs) > 1 else None
                if w is None or w.const is None:
                    raise _NoFold(f"its producer {P.name!r} ({P.op_type}) has a non-constant weight")
                raise _NoFold(f"its producer {P.name!r} ({P.op_type}) is not a crossbar layer")
            if is_bn:
                what = "a graph input or constant" if P is None else f"{P.name!r} ({P.op_type})"
                raise _NoFold(f"its input comes from {what}, not from a Conv/ConvTranspose/Gemm/MatMul")
            return False
        L = P.layer
        # single-consumer path from the layer output to the affine node
        path_values = ([P.outputs[0]] + ([bias_add.outputs[0]] if bias_add is not None else [])
                       + [n.outputs[0] for n in chain])
        for pv in path_values:
            if len(pv.uses) != 1 or pv in graph.outputs or pv.name in implicit:
                raise _NoFold(f"the output {pv.name!r} of {pv.producer.name!r} has other consumers "
                              f"(or is a graph output), so the layer must keep computing it")
        wv = L.weight_value(P)
        if wv is None or wv.const is None or not np.issubdtype(wv.const.dtype, np.floating):
            raise _NoFold(f"the weight of {P.name!r} is not a float constant")
        if len(wv.uses) != 1:
            raise _NoFold(f"the weight {wv.name!r} of {P.name!r} is shared by {len(wv.uses)} nodes")
        rank = len(out.shape)
        ch_axis = 1 if L.kind in ("conv", "conv_transpose") else rank - 1
        if fixed_axis is not None and fixed_axis != ch_axis:
            raise _NoFold(f"it normalizes axis {fixed_axis}, but the output channels of {P.name!r} "
                          f"({P.op_type}, output {list(out.shape)}) are on axis {ch_axis}")
        cout = L.out_channels
        if out.shape[ch_axis] != cout:
            raise _NoFold(f"the output of {P.name!r} has {out.shape[ch_axis]} channels on axis {ch_axis}, "
                          f"the layer {cout}")
        if fixed_axis is not None:
            a = np.asarray(a_raw, np.float64).reshape(-1)
            c = np.asarray(c_raw, np.float64).reshape(-1)
            if a.size != cout or c.size != cout:
                raise _NoFold(f"its parameters have {a.size} entries, the layer has {cout} channels")
        else:
            a = np.ones(cout) if a_raw is None else channel_vector(a_raw, out.shape, ch_axis)
            c = np.zeros(cout) if c_raw is None else channel_vector(c_raw, out.shape, ch_axis)
            if a is None or c is None:
                k = a_raw if a_raw is not None else c_raw
                raise _NoFold(f"its constant of shape {list(np.shape(k))} does not broadcast per output "
                              f"channel over {list(out.shape)} (channel axis {ch_axis})")
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(c))):
            raise _NoFold("its folded factors are not finite (e.g. var + epsilon <= 0)")
        beta = float(P.attrs.get("beta", 1.0)) if L.kind == "gemm" else 1.0
        if L.kind == "gemm" and beta == 0.0 and np.any(c != 0):
            raise _NoFold(f"{P.name!r} is a Gemm with beta=0, whose bias input cannot carry the shift")

        # ---- fold: weight ---------------------------------------------------------------
        W = wv.const
        W64 = W.astype(np.float64)
        if L.kind == "conv":
            W2 = W64 * a.reshape((-1,) + (1,) * (W.ndim - 1))
        elif L.kind == "conv_transpose":
            G = L.groups
            cin, cog = W.shape[0], W.shape[1]
            Wg = W64.reshape((G, cin // G, cog) + W.shape[2:])
            W2 = (Wg * a.reshape((G, 1, cog) + (1,) * (W.ndim - 2))).reshape(W.shape)
        elif L.kind == "gemm":
            W2 = W64 * (a[:, None] if int(P.attrs.get("transB", 0)) else a[None, :])
        else:  # matmul
            W2 = W64 * a[None, :]
        P.set_input(L.weight_input, graph.add_const(wv.name + "_folded", W2.astype(W.dtype)))

        # ---- fold: bias ------------------------------------------------------------------
        result = P.outputs[0]
        need_bias = bool(np.any(c != 0))
        if L.kind in ("conv", "conv_transpose", "gemm"):
            bi = 2
            old = P.inputs[bi] if len(P.inputs) > bi else None
            if old is not None and old.const is None:
                raise _NoFold(f"the bias of {P.name!r} is not a constant")
            if old is not None or need_bias:
                if L.kind == "gemm":
                    b_old = np.zeros(cout) if old is None else old.const.astype(np.float64)
                    b_new = b_old * a + c / beta if old is not None else c / beta
                else:
                    b_old = np.zeros(cout) if old is None else old.const.astype(np.float64).reshape(-1)
                    b_new = b_old * a + c
                bname = old.name + "_folded" if old is not None else P.name + "_bias"
                bval = graph.add_const(bname, np.asarray(b_new).astype(W.dtype))
                while len(P.inputs) <= bi:
                    P.append_input(None)
                P.set_input(bi, bval)
                L.bias_input = bi
        else:  # matmul: bias is a following Add of a constant
            odt = out.dtype
            if bias_add is not None:
                k = bias_add.inputs[bias_ci]
                kk = k.const.astype(np.float64)
                vshape = bias_add.inputs[1 - bias_ci].shape
                kvec = channel_vector(kk, vshape, len(vshape) - 1)
                kb = kvec * a + c
                bias_add.set_input(bias_ci, graph.add_const(k.name + "_folded", kb.astype(odt)))
                result = bias_add.outputs[0]
            elif need_bias:
                cv = graph.add_const(P.name + "_bias", c.astype(odt))
                add = graph.make_node("Add", [P.outputs[0], cv], name=P.name + "_bias_add", after=P,
                                      shapes=[P.outputs[0].shape], elem_types=[P.outputs[0].elem_type])
                result = add.outputs[0]

        # ---- rewire: consumers of the affine output read the layer's result ---------------
        keep_name = out.name if out in graph.outputs else None
        graph.replace_all_uses(out, result)
        graph.remove_node(A)
        for n in chain:  # nearest to the affine node first: each is unused once the next is gone
            graph.remove_node(n)
        if keep_name is not None:
            graph.rename_value(result, keep_name)
        return True
