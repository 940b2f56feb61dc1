"""ONNX frontend: read a model file and lower it into xbc's IR.

Steps (each failure is a :class:`~xbc.errors.ModelError` naming the file, node, value or opset):

1. **read** (:func:`read_model`): the protobuf, then the external data files next to it (a
   missing or short file is named); a file that is not an ONNX model is rejected.
2. **opsets** (:func:`prepare_model`): model-local functions are inlined; the default-domain opset
   must be one onnxruntime runs (newer ones are rejected by name); models older than
   :data:`MIN_OPSET` are converted with ``onnx.version_converter`` to :data:`CONVERT_OPSET`;
   every node's domain must be one onnxruntime knows (``ai.onnx``, ``ai.onnx.ml``,
   ``com.microsoft``) and every default-domain op must exist in the model's opset.
3. **input shapes** (:func:`fix_input_shapes`): ``--input-shape NAME=1,3,224,224`` fixes dynamic
   dimensions; an input left dynamic is an error that names it and shows the option to use.
4. **IR and shapes**: :func:`onnx_to_ir`, then ONNX shape inference with data propagation
   (:func:`infer_graph_shapes`; large weights are declared, not copied, so this is fast).
5. **cleanup** (the ``cleanup`` pass, :mod:`xbc.passes.cleanup`): Constant nodes to constants,
   constant folding with exact ONNX semantics (``onnx.reference``), ``Shape``/``Size`` of
   concretely shaped values, Identity/Dropout removal, re-inference until a fixed point. Weight
   ``DequantizeLinear`` nodes fold into float weights that remember their integer form.
6. **canonical crossbar ops** (:func:`canonicalize`), each rewrite exact up to float rounding:

   * dynamic quantization (``DynamicQuantizeLinear`` -> ``MatMulInteger``/``ConvInteger`` ->
     ``Cast`` -> ``Mul(x_scale * w_scale)``, as onnxruntime's ``quantize_dynamic`` writes it) ->
     float ``MatMul``/``Conv`` on the float input with the dequantized weight: the run-time
     activation quantization is dropped, since crossbar inputs get static codes from quantize
     (:func:`_rewrite_dynamic_quant`; not exact against the dynamic model by design);
   * ``QLinearConv``/``QLinearMatMul`` -> ``DequantizeLinear(x)`` -> float ``Conv``/``MatMul``
     with the dequantized weight (QLinearConv's int32 bias becomes ``B * x_scale * w_scale``)
     -> ``QuantizeLinear``; ``ConvInteger``/``MatMulInteger`` -> ``DequantizeLinear(x, 1, x_zp)``
     -> float op with ``w - w_zp`` -> ``Round`` -> ``Cast(int32)``; onnxruntime's ``QGemm``
     (com.microsoft) -> ``DequantizeLinear(A)`` -> float ``Gemm`` -> ``QuantizeLinear`` (or the
     float output as is). The layer keeps the integer weight in ``layer.prequant``.
   * ``MatMul(W, x)`` with a constant left ``W[n,k]``:
     ``Transpose(MatMul(Transpose(x), W^T))`` (a 1-D ``x``: ``MatMul(x, W^T)``), since
     ``W @ x = (x^T @ W^T)^T``.
   * ``Gemm``: ``alpha`` folded into the weight, ``beta`` into a constant ``C``; ``transA`` becomes
     a ``Transpose``; a constant ``C`` broadcastable per output channel becomes the bias ``[N]``,
     any other ``C`` a separate ``Add`` after a C-less Gemm.
   * ``Conv``/``ConvTranspose``: ``auto_pad`` and ``output_shape`` resolved to explicit ``pads`` /
     ``output_padding`` (ONNX formulas, which onnxruntime follows); a non-constant bias becomes
     an ``Add``.
7. **shapes**: every value must have a concrete shape. Values whose shape ONNX inference cannot
   derive but which do not depend on data (contrib ops, Loop outputs) get it from one
   onnxruntime run on deterministic inputs; a data-dependent shape is an error naming the
   value, its producer and ``--input-shape``.
8. **crossbar layers** (:func:`mark_layers`): Conv, ConvTranspose (any kernel rank), Gemm and
   MatMul with a constant float weight of the right rank; NaN/Inf or empty weights are errors.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelError
from .ir import Graph, Node, Value, elem_type_of, np_dtype, verify
from .layer import Layer, matrix_shape, to_matrix

CROSSBAR_OPS = {"Conv": "conv", "ConvTranspose": "conv_transpose", "Gemm": "gemm", "MatMul": "matmul"}

MIN_OPSET = 13        # older default-domain opsets are converted ...
CONVERT_OPSET = 17    # ... to this one
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")

# node inputs that decide an output's shape: if such an input is not constant, the shape is data-dependent
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Resize": (1, 2, 3),
    "Upsample": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2), "TopK": (1,), "OneHot": (1,),
    "Pad": (1, 2, 3), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "CenterCropPad": (1,),
    "Col2Im": (1, 2), "Loop": (0, 1), "If": (0,), "MaxUnpool": (2,), "DFT": (1,), "STFT": (2, 3),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,), "RandomNormalLike": (), "Trilu": (),
}
DATA_DEPENDENT_OPS = {"NonZero", "NonMaxSuppression", "Unique", "Compress", "StringSplit"}


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------

def read_model(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file and the external data files it references (kept next to it)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e}); "
                         f"check that the file is a complete .onnx export") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelError(f"{path}: not an ONNX model (no graph, IR version or opset); "
                         f"check that the file is a complete .onnx export")
    _load_external_data(model, path)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    from onnx import external_data_helper as edh

    tensors = [t for t in edh._get_all_tensors(model) if edh.uses_external_data(t)]
    if not tensors:
        return
    base = path.resolve().parent
    for t in tensors:
        info = edh.ExternalDataInfo(t)
        loc = info.location
        f = (base / loc) if loc else None
        if f is None or not f.is_file():
            raise ModelError(f"{path}: external data file {loc!r} for tensor {t.name!r} is missing "
                             f"(expected at {f}); keep the weight files next to the model as the "
                             f"exporter wrote them")
        need = (info.offset or 0) + (info.length or 0)
        if info.length and f.stat().st_size < need:
            raise ModelError(f"{path}: external data file {loc!r} is too short for tensor {t.name!r} "
                             f"(needs {need} bytes, has {f.stat().st_size}); the file is truncated")
    try:
        edh.load_external_data_for_model(model, str(base))
    except Exception as e:
        raise ModelError(f"{path}: cannot read external data ({type(e).__name__}: {e})") from None


def model_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------
# opsets and domains
# ----------------------------------------------------------------------------------------

def _ort_loads(opset: int, ir_version: int) -> bool:
    """Whether onnxruntime loads a one-Relu model of this default-domain opset and IR version."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", 1, [1])],
                          [helper.make_tensor_value_info("y", 1, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir_version
    try:
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return True
    except Exception:
        return False


def _largest(lo: int, hi: int, ok) -> int:
    """Largest ``v`` in ``[lo, hi]`` with ``ok(v)``, given ``ok(lo)`` and ``ok`` monotone."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


@functools.lru_cache(maxsize=1)
def max_supported_opset() -> int:
    """Newest default-domain opset that both onnx and onnxruntime know (probed once)."""
    hi = onnx.defs.onnx_opset_version()
    try:
        import onnxruntime  # noqa: F401
    except ImportError:  # pragma: no cover
        return hi

    def ok(v: int) -> bool:
        return _ort_loads(v, helper.find_min_ir_version_for([helper.make_opsetid("", v)]))

    if not ok(17):  # pragma: no cover - very old onnxruntime
        return 13
    return _largest(17, hi, ok)


@functools.lru_cache(maxsize=1)
def max_supported_ir_version() -> int:
    """Newest IR version onnxruntime loads (probed once). onnx's helper.make_model writes the
    onnx package's own IR version, which may be newer than the installed onnxruntime reads;
    the IR version only names the file format, so xbc writes at most this one."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:  # pragma: no cover
        return onnx.IR_VERSION
    if not _ort_loads(13, 7):  # pragma: no cover - very old onnxruntime
        return 7
    return _largest(7, onnx.IR_VERSION, lambda v: _ort_loads(13, v))


def _copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _min_ir_version(opsets) -> int:
    """Smallest IR version for the standard domains among ``opsets`` (others are ignored)."""
    std = [o for o in opsets if o.domain in ("", "ai.onnx", "ai.onnx.ml")]
    try:
        return helper.find_min_ir_version_for(std) if std else 3
    except ValueError:
        return 3


def _default_opset(model: onnx.ModelProto) -> int | None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return None


def _all_nodes(graph: onnx.GraphProto):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _all_nodes(g)


def prepare_model(model: onnx.ModelProto, where: str = "model") -> onnx.ModelProto:
    """Inline local functions, check domains/opsets/ops, convert old opsets."""
    if model.functions:
        try:
            from onnx import inliner
            model = inliner.inline_local_functions(model)
        except Exception as e:
            raise ModelError(f"{where}: cannot inline the model's local functions ({e})") from None
    nodes = list(_all_nodes(model.graph))
    opset = _default_opset(model)
    if opset is None:
        if any(n.domain in ("", "ai.onnx") for n in nodes):
            raise ModelError(f"{where}: the model imports no default (ai.onnx) opset")
        opset = CONVERT_OPSET
        model = _copy_model(model)
        model.opset_import.append(helper.make_opsetid("", opset))
    unknown: dict[str, list[str]] = {}
    for n in nodes:
        if n.domain not in KNOWN_DOMAINS:
            unknown.setdefault(n.domain, []).append(f"{n.op_type}" + (f" ({n.name})" if n.name else ""))
    if unknown:
        dom, ops = sorted(unknown.items())[0]
        raise ModelError(f"{where}: custom op domain {dom!r} (nodes {', '.join(ops[:3])}"
                         f"{', ...' if len(ops) > 3 else ''}) is not supported; supported domains are "
                         f"ai.onnx, ai.onnx.ml and com.microsoft: export the model with standard ONNX ops")
    top = max_supported_opset() if opset > 21 else onnx.defs.onnx_opset_version()
    if opset > top:
        raise ModelError(f"{where}: opset {opset} is newer than supported (onnx/onnxruntime here run opsets "
                         f"up to {top}); re-export the model with opset {top} or lower")
    if opset < MIN_OPSET:
        try:
            from onnx import version_converter
            model = version_converter.convert_version(model, CONVERT_OPSET)
        except Exception as e:
            raise ModelError(f"{where}: cannot convert the opset-{opset} model to opset {CONVERT_OPSET} "
                             f"({type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}); "
                             f"re-export it with opset {MIN_OPSET} or newer") from None
        opset = _default_opset(model) or CONVERT_OPSET
        nodes = list(_all_nodes(model.graph))
    checked: set[tuple[str, str]] = set()
    for n in nodes:
        dom = "" if n.domain == "ai.onnx" else n.domain
        if dom not in ("", "ai.onnx.ml") or (dom, n.op_type) in checked:
            continue
        checked.add((dom, n.op_type))
        version = opset if dom == "" else next((o.version for o in model.opset_import if o.domain == dom), 1)
        try:
            onnx.defs.get_schema(n.op_type, version, dom)
        except Exception:
            exists = onnx.defs.has(n.op_type, dom)
            hint = ("it is defined only in newer opsets; re-export with a newer opset" if exists
                    else "it is not an ONNX operator")
            raise ModelError(f"{where}: node {n.name or n.op_type!r} uses op {n.op_type!r}, which opset {version} "
                             f"of domain {dom or 'ai.onnx'!r} does not define ({hint})") from None
    return model


# ----------------------------------------------------------------------------------------
# input shapes
# ----------------------------------------------------------------------------------------

def resolve_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                         where: str) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every real graph input: the model's own, with ``--input-shape`` applied.

    Errors name the input and show the ``--input-shape`` option that fixes it."""
    init_names = {t.name for t in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in init_names]
    names = {i.name for i in real_inputs}
    for name in shapes:
        if name not in names:
            raise ModelError(f"--input-shape names {name!r}, but the model's inputs are "
                             f"{', '.join(repr(n) for n in sorted(names)) or '(none)'}")
    out: dict[str, tuple[int, ...]] = {}
    for inp in real_inputs:
        if not inp.type.HasField("tensor_type"):
            raise ModelError(f"{where}: input {inp.name!r} is not a tensor ({inp.type.WhichOneof('value')}); "
                             f"only tensor inputs are supported")
        tt = inp.type.tensor_type
        dims = list(tt.shape.dim)
        if inp.name in shapes:
            want = tuple(int(w) for w in shapes[inp.name])
            if tt.HasField("shape") and len(want) != len(dims):
                raise ModelError(f"--input-shape {inp.name}: model input has rank {len(dims)}, got {len(want)} dims")
            for d, w in zip(dims, want):
                if d.HasField("dim_value") and d.dim_value != w:
                    raise ModelError(f"--input-shape {inp.name}: dimension is fixed to {d.dim_value} in the model, got {w}")
            out[inp.name] = want
        elif not tt.HasField("shape"):
            raise ModelError(f"{where}: input {inp.name!r} has unknown rank; fix its shape with "
                             f"--input-shape {inp.name}=D1,D2,...")
        else:
            dyn = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
            if dyn:
                shape = ",".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)
                raise ModelError(f"{where}: input {inp.name!r} has dynamic dimensions ({shape}); fix them "
                                 f"with --input-shape {inp.name}=" + ",".join(
                                     str(d.dim_value) if d.HasField("dim_value") else "1" for d in dims))
            out[inp.name] = tuple(int(d.dim_value) for d in dims)
    return out


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], where: str) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs have the concrete shapes of :func:`resolve_input_shapes`
    (the model itself when ``shapes`` is empty and every input is already static)."""
    resolved = resolve_input_shapes(model, shapes, where)
    if not shapes:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for inp in model.graph.input:
        if inp.name in resolved:
            tt = inp.type.tensor_type
            tt.ClearField("shape")
            tt.shape.SetInParent()
            for w in resolved[inp.name]:
                tt.shape.dim.add().dim_value = int(w)
    return model


# ----------------------------------------------------------------------------------------
# ONNX -> IR
# ----------------------------------------------------------------------------------------

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


def _non_tensor_type(vi: onnx.ValueInfoProto) -> onnx.TypeProto | None:
    which = vi.type.WhichOneof("value")
    if which is None or which in ("tensor_type", "sparse_tensor_type"):
        return None
    t = onnx.TypeProto()
    t.CopyFrom(vi.type)
    return t


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
    for st in g.sparse_initializer:
        v = Value(st.values.name, const=sparse_to_dense(st))
        graph.values[v.name] = v
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
        outs = list(pn.output)
        while outs and outs[-1] == "":  # trailing omitted optional outputs
            outs.pop()
        for oname in outs:
            omitted = oname == ""
            if omitted:  # an omitted optional output in the middle: a placeholder value
                oname = graph.unique_name(f"{name}_unused_out{len(node.outputs)}")
            if oname in graph.values:
                raise ModelError(f"{where}: value {oname!r} is produced twice (node {name!r})")
            shape, et = _shape_of(infos[oname]) if oname in infos else (None, None)
            v = Value(oname, shape, et)
            if omitted:
                v.meta["omitted"] = True
            if oname in infos:
                nt = _non_tensor_type(infos[oname])
                if nt is not None:
                    v.meta["onnx_type"] = nt
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


def sparse_to_dense(st: onnx.SparseTensorProto) -> np.ndarray:
    """A SparseTensorProto as a dense numpy array (linear [NNZ] or coordinate [NNZ, rank] indices)."""
    vals = numpy_helper.to_array(st.values)
    idx = numpy_helper.to_array(st.indices).astype(np.int64)
    dims = tuple(int(d) for d in st.dims)
    out = np.zeros(dims, dtype=vals.dtype)
    if vals.size:
        if idx.ndim == 1:
            out.reshape(-1)[idx] = vals
        else:
            out[tuple(idx.T)] = vals
    return out


# ----------------------------------------------------------------------------------------
# shape inference on the IR
# ----------------------------------------------------------------------------------------

def _node_proto(n: Node) -> onnx.NodeProto:
    from .ir import make_onnx_attribute

    proto = helper.make_node(n.op_type, [("" if v is None else v.name) for v in n.inputs],
                             [("" if o.meta.get("omitted") and not o.uses else o.name) for o in n.outputs],
                             name=n.name, domain=n.domain or None)
    proto.attribute.extend(make_onnx_attribute(k, v, n.attr_types.get(k)) for k, v in n.attrs.items())
    return proto


def _vi(v: Value) -> onnx.ValueInfoProto:
    if v.meta.get("onnx_type") is not None:
        return helper.make_value_info(v.name, v.meta["onnx_type"])
    return helper.make_tensor_value_info(v.name, v.elem_type or 0, None if v.shape is None else list(v.shape))


def skeleton_model(graph: Graph, big: int = 4096) -> onnx.ModelProto:
    """The graph as ONNX for shape inference: constants up to ``big`` elements as initializers,
    larger ones only declared (as typed inputs), known shapes as value_info."""
    from .ir import implicit_reads

    sub = implicit_reads(graph)
    inits, decl = [], []
    for name, v in graph.values.items():
        if v.const is None or not (v.uses or name in sub or v in graph.outputs):
            continue
        if v.const.size <= big or v.const.dtype == object:
            try:
                inits.append(numpy_helper.from_array(np.asarray(v.const, order="C"), name))
                continue
            except Exception:
                pass
        decl.append(_vi(v))
    known = [_vi(o) for n in graph.nodes for o in n.outputs if not o.meta.get("omitted") and
             ((o.shape is not None and o.elem_type) or o.meta.get("onnx_type") is not None)]
    out_names = {o.name for o in graph.outputs}
    g = helper.make_graph([_node_proto(n) for n in graph.nodes], graph.name,
                          [_vi(v) for v in graph.inputs] + decl,
                          [_vi(v) for v in graph.outputs], inits,
                          value_info=[k for k in known if k.name not in out_names])
    opsets = [helper.make_opsetid(d, ver) for d, ver in sorted(graph.opset_imports.items())]
    m = helper.make_model(g, opset_imports=opsets, producer_name="xbc")
    m.ir_version = max(int(graph.model_meta.get("ir_version", 8)), _min_ir_version(opsets), 4)
    return m


def unknown_values(graph: Graph) -> list[Value]:
    """Node outputs without a concrete shape or element type (non-tensor values excluded)."""
    return [o for n in graph.nodes for o in n.outputs
            if o.meta.get("onnx_type") is None and not o.meta.get("omitted")
            and (o.shape is None or o.elem_type is None)]


def infer_graph_shapes(graph: Graph, where: str = "model") -> int:
    """Run ONNX shape inference (with data propagation) and fill unknown shapes and types.

    Returns how many values gained a concrete shape or type."""
    if not unknown_values(graph):
        return 0
    model = skeleton_model(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:
        msg = str(e).strip().splitlines()
        raise ModelError(f"{where}: ONNX shape inference failed: {msg[-1] if msg else e}") from None
    gained = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        v = graph.values.get(vi.name)
        if v is None or v.const is not None or v.producer is None:
            continue
        nt = _non_tensor_type(vi)
        if nt is not None:
            if v.meta.get("onnx_type") is None:
                v.meta["onnx_type"] = nt
                gained += 1
            continue
        shape, et = _shape_of(vi)
        if v.shape is None and shape is not None:
            v.shape = shape
            gained += 1
        if v.elem_type is None and et:
            v.elem_type = et
            gained += 1
    return gained


def _data_dependent(node: Node) -> str | None:
    """Why the node's output shapes depend on runtime data (None if they do not)."""
    if node.op_type in DATA_DEPENDENT_OPS:
        return f"{node.op_type} has a data-dependent output shape"
    for i in SHAPE_INPUTS.get(node.op_type, ()):
        if i < len(node.inputs) and node.inputs[i] is not None and node.inputs[i].const is None:
            return f"its input {i} ({node.inputs[i].name!r}) is computed at run time, not a constant"
    if node.op_type.startswith("Reduce") and len(node.inputs) > 1 and node.inputs[1] is not None \
            and node.inputs[1].const is None:
        return f"its axes input ({node.inputs[1].name!r}) is computed at run time"
    return None


def _ort_fill_shapes(graph: Graph, values: list[Value]) -> int:
    """Concrete shapes of ``values`` from one onnxruntime run on deterministic inputs."""
    from . import ortutil

    model = graph.to_onnx()
    for o in model.graph.output:  # outputs of unknown type: let onnxruntime type them
        if o.type.HasField("tensor_type") and not o.type.tensor_type.elem_type:
            o.ClearField("type")
    have = {o.name for o in model.graph.output}
    for v in values:
        if v.name not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=v.name))
    try:
        feeds = ortutil.random_inputs(model, seed=0)
        res = ortutil.run(model, feeds, [v.name for v in values])
    except Exception:
        return 0
    gained = 0
    for v in values:
        arr = res.get(v.name)
        if not isinstance(arr, np.ndarray):
            continue
        if v.shape is None:
            v.shape = tuple(int(d) for d in arr.shape)
            gained += 1
        if v.elem_type is None:
            try:
                v.elem_type = elem_type_of(arr)
                gained += 1
            except Exception:
                pass
    return gained


def resolve_shapes(graph: Graph, where: str = "model", cleanup=None) -> None:
    """Make every value's shape concrete (see module docstring, step 7) or raise ModelError."""
    for _ in range(8):
        unknown = unknown_values(graph)
        if not unknown:
            return
        static = [v for v in unknown if _data_dependent(v.producer) is None]
        first_dyn = next((v for v in unknown if _data_dependent(v.producer) is not None), None)
        if first_dyn is not None and (not static or graph.nodes.index(first_dyn.producer)
                                      < graph.nodes.index(static[0].producer)):
            static = [v for v in static
                      if graph.nodes.index(v.producer) < graph.nodes.index(first_dyn.producer)]
        if not static or not _ort_fill_shapes(graph, static):
            break
        if cleanup is not None:
            cleanup(graph)
    unknown = unknown_values(graph)
    if unknown:
        v = unknown[0]
        p = v.producer
        why = _data_dependent(p)
        reason = f"its shape depends on run-time data ({why})" if why else "its shape cannot be inferred"
        raise ModelError(f"{where}: value {v.name!r} produced by node {p.name!r} ({p.op_type}) has no "
                         f"concrete shape: {reason}; if the model's inputs have dynamic dimensions, fix "
                         f"them with --input-shape NAME=D1,D2,...")


# ----------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------

def load_model(src: str | Path | onnx.ModelProto,
               input_shapes: dict[str, tuple[int, ...]] | None = None, *, where: str | None = None) -> Graph:
    """Read an ONNX model (path or ModelProto) and lower it to a verified IR graph."""
    from .passes.cleanup import cleanup_graph

    model = read_model(src) if not isinstance(src, onnx.ModelProto) else src
    where = where or (str(src) if not isinstance(src, onnx.ModelProto) else "model")
    model = prepare_model(model, where)
    shapes = resolve_input_shapes(model, input_shapes or {}, where)
    graph = onnx_to_ir(model, where)
    for v in graph.inputs:
        v.shape = shapes[v.name]
    graph.model_meta["ir_version"] = max(min(model.ir_version, max_supported_ir_version()),
                                         _min_ir_version(model.opset_import))
    normalize_contrib_qdq(graph)
    infer_graph_shapes(graph, where)

    def clean(g: Graph) -> None:
        cleanup_graph(g, where=where)

    clean(graph)
    resolve_shapes(graph, where, clean)   # canonicalization needs every shape
    if canonicalize(graph, where):
        clean(graph)
        resolve_shapes(graph, where, clean)
    graph.topo_sort()
    mark_layers(graph, where=where)
    verify(graph)
    return graph


# ----------------------------------------------------------------------------------------
# prequantized weights
# ----------------------------------------------------------------------------------------

def _expand_qparam(p: np.ndarray, shape: tuple, axis: int, block_size: int = 0) -> np.ndarray:
    """A DequantizeLinear scale / zero point broadcast to the full tensor shape."""
    p = np.asarray(p)
    if p.size == 1 and block_size == 0:
        return np.broadcast_to(p.reshape(()), shape)
    axis = axis % len(shape)
    if block_size:
        p = np.repeat(p, block_size, axis=axis)
        p = np.take(p, np.arange(shape[axis]), axis=axis)
        return np.broadcast_to(p, shape)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(p.reshape(view), shape)


def prequant_meta(w_int: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1,
                  block_size: int = 0) -> dict[str, np.ndarray]:
    """Full-shape integer weight, scale and zero point (kept on the float weight's Value.meta)."""
    shape = w_int.shape
    zp = np.zeros((), np.int64) if zero_point is None else np.asarray(zero_point)
    # scale and zero point stay broadcast views (no memory per weight element)
    return {"w_int": np.asarray(w_int),
            "scale": _expand_qparam(np.asarray(scale, np.float64), shape, axis, block_size),
            "zp": _expand_qparam(zp.astype(np.int64), shape, axis, block_size)}


def _layer_prequant(kind: str, W: np.ndarray, meta: dict, groups: int, attrs: dict) -> dict | None:
    """Per-output-channel prequant record for a layer, or None if the scale is not per channel."""
    if any(meta[k].shape != W.shape for k in ("w_int", "scale", "zp")):
        return None
    out = {"w_int": np.ascontiguousarray(meta["w_int"]).astype(np.int32)}
    for key, name, dt in (("scale", "w_scale", np.float64), ("zp", "w_zero_point", np.int32)):
        M = to_matrix(kind, np.asarray(meta[key]), groups, attrs)  # [G, R, C]
        if M.shape[1] and not np.all(M == M[:, :1, :]):
            return None
        out[name] = np.ascontiguousarray(M[:, 0, :].reshape(-1)).astype(dt)
    return out


def _transpose_meta(meta: dict | None, perm=None) -> dict | None:
    if meta is None:
        return None
    return {k: np.transpose(v, perm) for k, v in meta.items()}


def _const(graph: Graph, name: str, arr: np.ndarray, prequant: dict | None = None) -> Value:
    v = graph.add_const(name, arr)
    if prequant is not None:
        v.meta["prequant"] = prequant
    return v


# ----------------------------------------------------------------------------------------
# canonicalization
# ----------------------------------------------------------------------------------------

def normalize_contrib_qdq(graph: Graph) -> int:
    """com.microsoft QuantizeLinear/DequantizeLinear with 8-bit types -> the standard ops."""
    n_changed = 0
    opset = graph.opset_imports.get("", 0)
    for n in graph.nodes:
        if n.domain == "com.microsoft" and n.op_type in ("QuantizeLinear", "DequantizeLinear") and opset >= 13:
            zp = n.inputs[2] if len(n.inputs) > 2 else None
            q = n.inputs[0] if n.op_type == "DequantizeLinear" else zp
            dt = None if q is None else (q.const.dtype if q.const is not None else q.dtype)
            if dt is not None and np.dtype(dt) in (np.dtype(np.int8), np.dtype(np.uint8)):
                n.domain = ""
                n_changed += 1
    return n_changed


def _replace_output(graph: Graph, node: Node, idx: int, shape, elem_type) -> tuple[Value, Value]:
    """Give ``node`` a fresh output ``idx``; return (fresh, original) so a new node can produce
    the original value (its name, graph-output role and uses stay)."""
    orig = node.outputs[idx]
    fresh = graph.add_value(orig.name + "_x", shape, elem_type)
    fresh.producer = node
    node.outputs[idx] = fresh
    orig.producer = None
    return fresh, orig


def _produce(graph: Graph, op: str, inputs: list, orig: Value, *, after: Node, attrs: dict | None = None,
             name: str | None = None, domain: str = "") -> Node:
    """Insert a node after ``after`` whose single output is the existing value ``orig``."""
    n = graph.make_node(op, inputs, 1, name=name or f"{after.name}_{op.lower()}", attrs=attrs,
                        shapes=[orig.shape], elem_types=[orig.elem_type], after=after, domain=domain)
    tmp = n.outputs[0]
    del graph.values[tmp.name]
    tmp.producer = None
    n.outputs[0] = orig
    orig.producer = n
    return n


def _truncate_inputs(node: Node, n: int) -> None:
    while len(node.inputs) > n:
        node.set_input(len(node.inputs) - 1, None)
        node.inputs.pop()


def _is_float_const(v: Value | None) -> bool:
    return v is not None and v.const is not None and np.issubdtype(v.const.dtype, np.floating)


def _scalar_param(graph: Graph, v: Value | None) -> Value | None:
    """A 1-element constant quantization parameter as a scalar (DequantizeLinear per tensor)."""
    if v is None or v.const is None or v.const.ndim == 0 or v.const.size != 1:
        return v
    return graph.add_const(v.name + "_scalar", v.const.reshape(()))


def _dequant(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int) -> tuple[np.ndarray, dict]:
    meta = prequant_meta(q, scale, zp, axis)
    dt = np.asarray(scale).dtype if np.issubdtype(np.asarray(scale).dtype, np.floating) else np.float32
    w = ((meta["w_int"].astype(np.int64) - meta["zp"]).astype(dt) * np.asarray(meta["scale"]).astype(dt)).astype(dt)
    return w, meta


def _scalar_like(v: Value | None) -> bool:
    """Absent, or a per-tensor (one-element) quantization parameter."""
    if v is None:
        return True
    if v.const is not None:
        return v.const.size == 1
    return v.shape == ()


def _rewrite_qlinear(graph: Graph, node: Node) -> bool:
    """QLinearConv / QLinearMatMul / ConvInteger / MatMulInteger -> float op between (de)quantizers."""
    op = node.op_type
    ins = list(node.inputs) + [None] * 9
    integer = op in ("ConvInteger", "MatMulInteger")
    if op == "QLinearConv":
        x, xs, xz, w, ws, wz, ys, yz, B = ins[:9]
    elif op == "QLinearMatMul":
        x, xs, xz, w, ws, wz, ys, yz = ins[:8]
        B = None
    else:
        x, w, xz, wz = ins[:4]
        xs = ws = ys = yz = B = None
    float_op, waxis = ("Conv", 0) if op in ("QLinearConv", "ConvInteger") else ("MatMul", -1)
    left = False
    if float_op == "MatMul" and (w is None or w.const is None) and x is not None and x.const is not None \
            and x.const.ndim == 2 and w is not None:
        # constant LEFT operand: it is the weight (per-row parameters), the right one the activation
        x, xs, xz, w, ws, wz = w, ws, wz, x, xs, xz
        left, waxis = True, 0
    y = node.outputs[0]
    # --- what we can rewrite: constant weight, per-tensor activation parameters
    if w is None or w.const is None or x is None or x.shape is None or y.shape is None:
        return False
    if float_op == "MatMul" and w.const.ndim < 2:
        return False
    if wz is not None and wz.const is None:
        return False
    if not (_scalar_like(xs) and _scalar_like(xz) and _scalar_like(ys) and _scalar_like(yz)):
        return False
    if not integer and (ws is None or ws.const is None or xs is None or ys is None):
        return False
    if B is not None and (B.const is None or xs.const is None):
        return False
    fdt = np.dtype(np.float32) if integer else np.dtype(ws.const.dtype)
    f_et = elem_type_of(np.zeros((), fdt))
    base = node.name
    # --- weight
    scale = np.ones((), fdt) if integer else ws.const
    Wf, meta = _dequant(w.const, scale, None if wz is None else wz.const, waxis)
    wv = _const(graph, w.name + "_dq", Wf, meta)
    # --- input dequantization
    if integer:
        dq_in = [x, graph.add_const(base + "_one", np.ones((), np.float32))]
        if xz is not None:
            dq_in.append(_scalar_param(graph, xz))
    else:
        dq_in = [x, _scalar_param(graph, xs)] + ([_scalar_param(graph, xz)] if xz is not None else [])
    xf = graph.make_node("DequantizeLinear", dq_in, 1, name=base + "_dqx", shapes=[x.shape],
                         elem_types=[f_et], before=node).outputs[0]
    # --- float op
    f_inputs = [wv, xf] if left else [xf, wv]
    if B is not None:
        xsc = float(np.asarray(xs.const, np.float64).reshape(-1)[0])
        wsc = np.broadcast_to(np.asarray(ws.const, np.float64).reshape(-1), (Wf.shape[0],))
        f_inputs.append(graph.add_const(B.name + "_f", (B.const.astype(np.float64) * xsc * wsc).astype(fdt)))
    conv_attrs = dict(node.attrs) if float_op == "Conv" else {}
    conv_types = dict(node.attr_types) if float_op == "Conv" else {}
    fnode = graph.make_node(float_op, f_inputs, 1, name=base + "_float", attrs=conv_attrs, attr_types=conv_types,
                            shapes=[y.shape], elem_types=[f_et], before=node)
    yf = fnode.outputs[0]
    # --- output
    if integer:
        r = graph.make_node("Round", [yf], 1, name=base + "_round", shapes=[y.shape], elem_types=[f_et],
                            before=node).outputs[0]
        tail = ("Cast", [r], {"to": onnx.TensorProto.INT32})
    else:
        tail = ("QuantizeLinear", [yf, _scalar_param(graph, ys)] + ([_scalar_param(graph, yz)] if yz is not None else []),
                {})
    _replace_output(graph, node, 0, y.shape, y.elem_type)      # the old node dies; y is produced anew
    _produce(graph, tail[0], tail[1], y, after=node, attrs=tail[2], name=base + "_" + tail[0].lower())
    graph.remove_node(node)
    fnode.meta["prequant_from"] = op
    return True


def _single_use(graph: Graph, v: Value | None) -> Node | None:
    """The one node reading ``v`` (not a graph output), else None."""
    if v is None or len(v.uses) != 1 or v in graph.outputs:
        return None
    return v.uses[0][0]


def _rewrite_dynamic_quant(graph: Graph, node: Node) -> bool:
    """Dynamic quantization (onnxruntime's ``quantize_dynamic``) back to a float layer::

        xq, xs, xz = DynamicQuantizeLinear(x)
        y = Mul(Cast(MatMulInteger(xq, Wq, xz, wz), to=float), Mul(xs, ws))    (or ConvInteger)
          = xs * ws * (xq - xz) @ (Wq - wz)  ~  x @ W,   W = ws * (Wq - wz)

    becomes ``MatMul(x, W)`` (``Conv(x, W)``) with ``W`` dequantized and the integer weight kept
    in ``layer.prequant``. The run-time activation quantization, which a crossbar's static DAC
    codes cannot follow, is replaced by xbc's static input quantization (from calibration data),
    like for a float model. Only this exact pattern is rewritten; anything else keeps the exact
    integer rewrite of :func:`_rewrite_qlinear`."""
    op = node.op_type
    ins = list(node.inputs) + [None] * 4
    xq, w, xz, wz = ins[:4]
    dq = xq.producer if xq is not None else None
    if dq is None or dq.op_type != "DynamicQuantizeLinear" or dq.domain != "" or xz is not dq.outputs[2] \
            or dq.outputs[0] is not xq:
        return False
    if w is None or w.const is None or (wz is not None and wz.const is None) or (op == "MatMulInteger" and w.const.ndim != 2):
        return False
    cast = _single_use(graph, node.outputs[0])
    if cast is None or cast.op_type != "Cast" or int(cast.attr("to", 0)) != onnx.TensorProto.FLOAT:
        return False
    mul = _single_use(graph, cast.outputs[0])
    if mul is None or mul.op_type != "Mul" or len(mul.inputs) != 2:
        return False
    sv = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
    sm = sv.producer if sv is not None else None
    if sm is None or sm.op_type != "Mul" or dq.outputs[1] not in sm.inputs:
        return False
    wsv = sm.inputs[1] if sm.inputs[0] is dq.outputs[1] else sm.inputs[0]
    if wsv is None or wsv.const is None or not np.issubdtype(wsv.const.dtype, np.floating):
        return False
    x = dq.inputs[0]
    y = mul.outputs[0]
    if x is None or x.shape is None or y.shape is None:
        return False
    ws = np.asarray(wsv.const, np.float64)
    if op == "MatMulInteger":
        N = w.const.shape[1]
        if ws.size not in (1, N) or (ws.ndim > 1 and ws.shape[-1] != ws.size):
            return False
        waxis, float_op = 1, "MatMul"
    else:
        N = w.const.shape[0]
        ca = -(w.const.ndim - 1)         # the channel axis of the output, counted from the end
        if ws.size != 1 and not (ws.size == N and ws.ndim >= -ca and ws.shape[ca] == N):
            return False                 # per tensor, or per output channel ([N, 1, 1] broadcast)
        waxis, float_op = 0, "Conv"
    Wf, meta = _dequant(w.const, ws.reshape(-1).astype(np.float32), None if wz is None else wz.const, waxis)
    wv = _const(graph, w.name + "_dq", Wf.astype(np.float32), meta)
    attrs = dict(node.attrs) if float_op == "Conv" else {}
    types = dict(node.attr_types) if float_op == "Conv" else {}
    fnode = graph.make_node(float_op, [x, wv], 1, name=node.name + "_float", attrs=attrs, attr_types=types,
                            shapes=[y.shape], elem_types=[y.elem_type], before=mul)
    _replace_output(graph, mul, 0, y.shape, y.elem_type)       # the Mul chain dies (cleanup drops it)
    _produce(graph, "Identity", [fnode.outputs[0]], y, after=mul, name=node.name + "_out")
    fnode.meta["prequant_from"] = op + " (dynamic)"
    return True


def _rewrite_qgemm(graph: Graph, node: Node) -> bool:
    """com.microsoft ``QGemm`` (onnxruntime's QOperator quantizer writes it for Gemm) ->
    ``DequantizeLinear(A)`` -> float ``Gemm`` with the dequantized weight (same ``alpha``,
    ``transA``, ``transB``; the int32 bias ``C``, which onnxruntime adds to the integer sum before
    the output scale ``alpha * a_scale * b_scale``, becomes ``C * alpha * a_scale * b_scale``) ->
    ``QuantizeLinear(y_scale, y_zp)`` when the op has a quantized output. The layer keeps the
    integer weight in ``layer.prequant``."""
    ins = list(node.inputs) + [None] * 9
    A, As, Az, B, Bs, Bz, C, Ys, Yz = ins[:9]
    y = node.outputs[0]
    if B is None or B.const is None or B.const.ndim != 2 or A is None or A.shape is None or y.shape is None:
        return False
    if Bs is None or Bs.const is None or As is None or (Bz is not None and Bz.const is None):
        return False
    if not (_scalar_like(As) and _scalar_like(Az) and _scalar_like(Ys) and _scalar_like(Yz)):
        return False
    if C is not None and (C.const is None or As.const is None):
        return False
    transB = int(node.attr("transB", 0))
    fdt = np.dtype(Bs.const.dtype)
    f_et = elem_type_of(np.zeros((), fdt))
    base = node.name
    Wf, meta = _dequant(B.const, Bs.const, None if Bz is None else Bz.const, 0 if transB else 1)
    wv = _const(graph, B.name + "_dq", Wf, meta)
    dq_in = [A, _scalar_param(graph, As)] + ([_scalar_param(graph, Az)] if Az is not None else [])
    xf = graph.make_node("DequantizeLinear", dq_in, 1, name=base + "_dqx", shapes=[A.shape],
                         elem_types=[f_et], before=node).outputs[0]
    f_inputs = [xf, wv]
    if C is not None:
        N = Wf.shape[0] if transB else Wf.shape[1]
        asc = float(np.asarray(As.const, np.float64).reshape(-1)[0])
        bsc = np.broadcast_to(np.asarray(Bs.const, np.float64).reshape(-1), (N,))
        alpha = float(node.attr("alpha", 1.0))   # onnxruntime adds C to the int32 sum, then scales by alpha
        Cf = C.const.astype(np.float64) * (alpha * asc) * bsc
        f_inputs.append(graph.add_const(C.name + "_f", Cf.astype(fdt)))
    attrs = {k: node.attrs[k] for k in ("alpha", "transA", "transB") if k in node.attrs}
    types = {k: node.attr_types[k] for k in attrs if k in node.attr_types}
    fnode = graph.make_node("Gemm", f_inputs, 1, name=base + "_float", attrs=attrs, attr_types=types,
                            shapes=[y.shape], elem_types=[f_et], before=node)
    _replace_output(graph, node, 0, y.shape, y.elem_type)      # the old node dies; y is produced anew
    if Ys is None:      # float output
        _produce(graph, "Identity", [fnode.outputs[0]], y, after=node, name=base + "_out")
    else:
        _produce(graph, "QuantizeLinear", [fnode.outputs[0], _scalar_param(graph, Ys)]
                 + ([_scalar_param(graph, Yz)] if Yz is not None else []), y, after=node,
                 name=base + "_quantizelinear")
    graph.remove_node(node)
    fnode.meta["prequant_from"] = "QGemm"
    return True


def _rewrite_matmul_left(graph: Graph, node: Node) -> bool:
    A, B = node.inputs[0], node.inputs[1]
    if not _is_float_const(A) or B is None or B.const is not None or A.const.ndim != 2 or B.shape is None:
        return False
    if len(B.shape) == 0:
        return False
    W = A.const
    wt = _const(graph, A.name + "_T", np.ascontiguousarray(W.T), _transpose_meta(A.meta.get("prequant")))
    y = node.outputs[0]
    if len(B.shape) == 1:
        node.set_input(0, B)
        node.set_input(1, wt)
        return True
    r = len(B.shape)
    perm = list(range(r - 2)) + [r - 1, r - 2]
    xt_shape = tuple(B.shape[p] for p in perm)
    t1 = graph.make_node("Transpose", [B], 1, name=node.name + "_tin", attrs={"perm": perm},
                         shapes=[xt_shape], elem_types=[B.elem_type], before=node)
    node.set_input(0, t1.outputs[0])
    node.set_input(1, wt)
    yr = len(y.shape)
    yperm = list(range(yr - 2)) + [yr - 1, yr - 2]
    fresh, orig = _replace_output(graph, node, 0, tuple(y.shape[p] for p in yperm), y.elem_type)
    _produce(graph, "Transpose", [fresh], orig, after=node, attrs={"perm": yperm}, name=node.name + "_tout")
    return True


def _rewrite_gemm(graph: Graph, node: Node) -> bool:
    A, B = node.inputs[0], node.inputs[1]
    C = node.inputs[2] if len(node.inputs) > 2 else None
    for name, v in (("A", A), ("B", B)):
        if v is not None and v.shape is not None and len(v.shape) != 2:
            raise ModelError(f"node {node.name!r} (Gemm): input {name} {v.name!r} has shape {list(v.shape)}; "
                             f"Gemm takes 2-D matrices (use MatMul, or Flatten/Reshape the input first)")
    if not _is_float_const(B) or B.const.ndim != 2 or A is None:
        return False
    changed = False
    alpha = float(node.attr("alpha", 1.0))
    beta = float(node.attr("beta", 1.0))
    W = B.const
    if alpha != 1.0:
        meta = B.meta.get("prequant")
        if meta is not None:
            meta = dict(meta, scale=meta["scale"] * np.float64(np.float32(alpha)))
        node.set_input(1, _const(graph, B.name + "_alpha", (W * W.dtype.type(alpha)).astype(W.dtype), meta))
        changed = True
    node.attrs.pop("alpha", None)
    node.attr_types.pop("alpha", None)
    if node.attr("transA", 0):
        ash = A.shape
        t = graph.make_node("Transpose", [A], 1, name=node.name + "_ta", attrs={"perm": [1, 0]},
                            shapes=[None if ash is None else (ash[1], ash[0])], elem_types=[A.elem_type],
                            before=node)
        node.set_input(0, t.outputs[0])
        node.attrs.pop("transA", None)
        node.attr_types.pop("transA", None)
        changed = True
    N = W.shape[0] if node.attr("transB", 0) else W.shape[1]
    node.attrs.pop("beta", None)
    node.attr_types.pop("beta", None)
    if C is None:
        return changed
    y = node.outputs[0]
    if beta == 0.0:
        _truncate_inputs(node, 2)
        return True
    if C.const is not None:
        Cb = C.const if beta == 1.0 else (C.const * C.const.dtype.type(beta)).astype(C.const.dtype)
        if Cb.size == 1 or Cb.shape in ((N,), (1, N)):
            bias = np.ascontiguousarray(np.broadcast_to(Cb.reshape(-1), (N,)))
            if beta != 1.0 or C.const.shape != (N,):
                node.set_input(2, graph.add_const(C.name + "_bias", bias))
                changed = True
            return changed
        addend = C if beta == 1.0 else graph.add_const(C.name + "_beta", Cb)
    else:
        addend = C
        if beta != 1.0:
            addend = graph.make_node("Mul", [C, graph.add_const(node.name + "_beta", np.array(beta, np_dtype(C.elem_type)))],
                                     1, name=node.name + "_beta", shapes=[C.shape], elem_types=[C.elem_type],
                                     before=node).outputs[0]
    _truncate_inputs(node, 2)
    fresh, orig = _replace_output(graph, node, 0, y.shape, y.elem_type)
    _produce(graph, "Add", [fresh, addend], orig, after=node, name=node.name + "_c")
    return True


def _conv_geometry(node: Node, x: Value, W: Value):
    sp = len(x.shape) - 2
    k = list(node.attr("kernel_shape", None) or W.shape[2:])
    s = list(node.attr("strides", None) or [1] * sp)
    d = list(node.attr("dilations", None) or [1] * sp)
    return sp, [int(v) for v in x.shape[2:]], k, s, d


def _set_attr(node: Node, name: str, value) -> None:
    node.attrs[name] = value
    node.attr_types.pop(name, None)


def _del_attr(node: Node, name: str) -> None:
    node.attrs.pop(name, None)
    node.attr_types.pop(name, None)


def _rewrite_conv(graph: Graph, node: Node) -> bool:
    x, W = node.inputs[0], node.inputs[1]
    if x is None or W is None or x.shape is None or W.shape is None or len(x.shape) < 3:
        return False
    changed = False
    auto = node.attr("auto_pad", "NOTSET")
    sp, ins, k, s, d = _conv_geometry(node, x, W)
    if node.op_type == "Conv":
        if auto in ("SAME_UPPER", "SAME_LOWER", "VALID"):
            begin, end = [0] * sp, [0] * sp
            if auto != "VALID":
                for i in range(sp):
                    out = -(-ins[i] // s[i])
                    total = max(0, (out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - ins[i])
                    begin[i] = total // 2 if auto == "SAME_UPPER" else total - total // 2
                    end[i] = total - begin[i]
            _set_attr(node, "pads", begin + end)
            changed = True
        if "auto_pad" in node.attrs:
            _del_attr(node, "auto_pad")
            changed = True
    else:
        out_shape = node.attr("output_shape", None)
        opad = list(node.attr("output_padding", None) or [0] * sp)
        if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER", "VALID"):
            if auto == "VALID" and out_shape is None:
                begin, end = [0] * sp, [0] * sp
            else:
                if out_shape is not None:
                    target = [int(v) for v in list(out_shape)[-sp:]]
                else:
                    target = [ins[i] * s[i] for i in range(sp)]
                begin, end = [0] * sp, [0] * sp
                for i in range(sp):
                    total = s[i] * (ins[i] - 1) + opad[i] + ((k[i] - 1) * d[i] + 1) - target[i]
                    if total < 0:
                        opad[i] += -total
                        if opad[i] >= max(s[i], d[i]):
                            node.meta["xbc_digital"] = (f"output_shape {list(out_shape or target)} cannot be "
                                                        f"expressed with pads and output_padding")
                            return changed
                        continue
                    if auto == "SAME_UPPER":
                        begin[i], end[i] = total // 2, total - total // 2
                    else:
                        begin[i], end[i] = total - total // 2, total // 2
            _set_attr(node, "pads", begin + end)
            if any(opad):
                _set_attr(node, "output_padding", opad)
            _del_attr(node, "output_shape")
            changed = True
        if "auto_pad" in node.attrs:
            _del_attr(node, "auto_pad")
            changed = True
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and bias.const is None and bias.shape is not None:
        y = node.outputs[0]
        _truncate_inputs(node, 2)
        shape = [1, int(bias.shape[0])] + [1] * (len(y.shape) - 2)
        rs = graph.make_node("Reshape", [bias, graph.add_const(node.name + "_bshape", np.array(shape, np.int64))], 1,
                             name=node.name + "_bias_reshape", shapes=[tuple(shape)], elem_types=[bias.elem_type],
                             before=node).outputs[0]
        fresh, orig = _replace_output(graph, node, 0, y.shape, y.elem_type)
        _produce(graph, "Add", [fresh, rs], orig, after=node, name=node.name + "_bias")
        changed = True
    elif len(node.inputs) > 2 and node.inputs[2] is None:
        _truncate_inputs(node, 2)
    return changed


def canonicalize(graph: Graph, where: str = "model") -> int:
    """Rewrite crossbar ops into the canonical forms the Layer contract assumes (module docstring)."""
    changed = 0
    for node in list(graph.nodes):
        if node.graph is not graph or node.layer is not None:
            continue
        op = node.op_type
        if node.domain == "com.microsoft" and op == "QGemm":
            changed += _rewrite_qgemm(graph, node)
        elif node.domain == "" and op in ("ConvInteger", "MatMulInteger") and _rewrite_dynamic_quant(graph, node):
            changed += 1
        elif node.domain == "" and op in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"):
            changed += _rewrite_qlinear(graph, node)
    for node in list(graph.nodes):
        if node.graph is not graph or node.domain != "" or node.layer is not None:
            continue
        op = node.op_type
        if op == "MatMul":
            changed += _rewrite_matmul_left(graph, node)
        elif op == "Gemm":
            changed += _rewrite_gemm(graph, node)
        elif op in ("Conv", "ConvTranspose"):
            changed += _rewrite_conv(graph, node)
    if changed:
        graph.topo_sort()
    return changed


# ----------------------------------------------------------------------------------------
# crossbar layers
# ----------------------------------------------------------------------------------------

def _layer_id(index: int, node: Node) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in node.name)
    return f"L{index:03d}_{safe}"[:80]


def crossbar_kind(node: Node) -> str | None:
    """The layer kind a node would get from :func:`mark_layers` (None: digital)."""
    kind = CROSSBAR_OPS.get(node.op_type) if node.domain == "" else None
    if kind is None or node.meta.get("xbc_digital"):
        return None
    if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].const is None:
        return None
    W = node.inputs[1].const
    if not np.issubdtype(W.dtype, np.floating):
        return None
    if node.inputs[0] is None or node.inputs[0].const is not None:
        return None
    if kind == "matmul" and W.ndim != 2:
        return None
    if kind == "gemm" and (node.attr("transA", 0) or W.ndim != 2):
        return None
    if kind in ("conv", "conv_transpose"):
        if W.ndim < 3 or node.attr("auto_pad", "NOTSET") not in ("NOTSET", "") or "output_shape" in node.attrs:
            return None
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].const is None:
            return None
    if kind == "gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        C = node.inputs[2]
        cols = W.shape[0] if node.attr("transB", 0) else W.shape[1]
        if C.const is None or C.const.shape != (cols,) or float(node.attr("beta", 1.0)) != 1.0 \
                or float(node.attr("alpha", 1.0)) != 1.0:
            return None
    if kind == "gemm" and float(node.attr("alpha", 1.0)) != 1.0:
        return None
    return kind


def mark_layers(graph: Graph, *, where: str = "model") -> int:
    """Attach a :class:`Layer` to every Conv/ConvTranspose/Gemm/MatMul with a constant weight.

    Empty weights and weights (or biases) with NaN/Inf are errors naming the node."""
    count = 0
    base = sum(1 for n in graph.nodes if n.layer is not None)
    for node in graph.nodes:
        if node.layer is not None:
            continue
        kind = crossbar_kind(node)
        if kind is None:
            continue
        wv = node.inputs[1]
        W = wv.const
        if W.size == 0:
            raise ModelError(f"{where}: node {node.name!r} ({node.op_type}) has an empty weight {wv.name!r} "
                             f"of shape {tuple(W.shape)}; a crossbar layer needs at least one weight")
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        for what, v in (("weight", wv), ("bias", bias)):
            if v is not None and v.const is not None and np.issubdtype(v.const.dtype, np.floating):
                bad = ~np.isfinite(v.const)
                if bad.any():
                    kinds = sorted({("NaN" if np.isnan(x) else "Inf") for x in v.const[bad].ravel()[:1000]})
                    raise ModelError(f"{where}: node {node.name!r} ({node.op_type}): {what} {v.name!r} has "
                                     f"{int(bad.sum())} {'/'.join(kinds)} value(s); fix or retrain the model")
        groups = int(node.attr("group", 1)) if kind in ("conv", "conv_transpose") else 1
        G, R, C = matrix_shape(kind, W.shape, groups, node.attrs)
        bias_in = 2 if bias is not None else None
        layer = Layer(id=_layer_id(base + count, node), kind=kind, groups=G, rows=R, cols=C, bias_input=bias_in)
        meta = wv.meta.get("prequant")
        if meta is not None:
            layer.prequant = _layer_prequant(kind, W, meta, groups, node.attrs)
        node.layer = layer
        count += 1
    return count
