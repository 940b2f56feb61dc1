"""Whole-model execution of a bundle: crossbar layers bit-accurately, every other op by onnxruntime.

The simulator reads a bundle only (``graph.onnx`` + ``mapping.json`` + ``arrays.bin``), never the
compiler's in-memory IR.

Execution plan
--------------
``graph.onnx`` is walked in its (topological) node order and cut at the ``xbc.CrossbarLayer``
nodes. Every maximal run of standard ONNX nodes between two crossbar layers becomes one
*segment*: a small ONNX model (its nodes, the initializers they read, inputs = values it reads
from outside, outputs = values read later or graph outputs) run by an onnxruntime session with
graph optimizations off — so every digital op has exactly onnxruntime's ONNX semantics, at
onnxruntime's speed (ReLU, pooling, Add, Softmax, Reshape ... and control flow, whose subgraphs'
outer-scope reads count as segment inputs). Segment models are built on first use from the
actual input arrays (dtype and shape) and cached per input signature. Each crossbar node runs
:class:`~xbc.backends.sim.engine.CrossbarKernel` on its activation input (see engine.py for the
hardware model). Values are freed after their last use.

The compiled graph has fixed shapes (the frontend folds shape computations), so a feed must
have exactly the bundle's input shapes; several samples are several feeds (:func:`simulate`
takes a list and concatenates the results along axis 0).

:func:`compare` runs the *original* float model in onnxruntime on the same inputs, with every
crossbar layer's output tensor added as a graph output (matched by tensor name), and reports
top-1 agreement (classifier outputs), SQNR and cosine similarity of the outputs and of every
crossbar layer.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
from onnx import helper

from xbc import ortutil
from xbc.errors import BundleError

from .engine import MODES, CrossbarKernel, SimError, check_spec
from .threads import blas_threads

XBC_DOMAIN = "xbc"
CROSSBAR_OP = "CrossbarLayer"


# ----------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------

@dataclass
class LayerStat:
    layer_id: str
    node: str
    conversions: int = 0
    clipped: int = 0
    columns: int = 0
    columns_may_clip: int = 0
    seconds: float = 0.0

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.conversions if self.conversions else 0.0


@dataclass
class SimResult:
    """Outputs of a simulation (several feeds: concatenated along axis 0, counts summed)."""

    outputs: dict[str, np.ndarray]
    layer_outputs: dict[str, np.ndarray]          # layer id -> float output of the layer
    conversions: int
    clipped: int
    layers: dict[str, LayerStat] = field(default_factory=dict)
    layer_acc: dict[str, np.ndarray] = field(default_factory=dict)    # record=True: int64 accumulators
    layer_xq: dict[str, np.ndarray] = field(default_factory=dict)     # record=True: quantized inputs
    layer_inputs: dict[str, np.ndarray] = field(default_factory=dict)  # record=True: float inputs
    mode: str = "auto"
    seconds: float = 0.0
    samples: int = 1

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.conversions if self.conversions else 0.0


# ----------------------------------------------------------------------------------------
# segments of standard ONNX ops
# ----------------------------------------------------------------------------------------

def _reads(node: onnx.NodeProto) -> list[str]:
    """Every value name a node reads, including outer-scope reads of its subgraphs."""
    names = [x for x in node.input if x]
    for at in node.attribute:
        subs = [at.g] if at.type == onnx.AttributeProto.GRAPH else (
            list(at.graphs) if at.type == onnx.AttributeProto.GRAPHS else [])
        for g in subs:
            inner = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                inner.update(o for o in n.output if o)
            for n in g.node:
                names.extend(x for x in _reads(n) if x not in inner)
            names.extend(o.name for o in g.output if o.name not in inner)
    return names


class _Segment:
    def __init__(self, nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str]):
        self.nodes = nodes
        self.inputs = inputs
        self.outputs = outputs
        self.sessions: dict[tuple, Any] = {}

    @property
    def name(self) -> str:
        return self.nodes[0].name or self.nodes[0].op_type


class Simulator:
    """A bundle prepared for repeated simulation (kernels and onnxruntime sessions cached)."""

    def __init__(self, bundle, *, mode: str = "auto", adc_bits: int | None = None,
                 exhaustive: bool = False, threads: int = 1):
        if isinstance(bundle, (str, Path)):
            from xbc.bundle import read_bundle
            bundle = read_bundle(bundle)
        if mode not in MODES:
            raise SimError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
        if adc_bits is not None and not 1 <= int(adc_bits) <= 32:
            raise SimError(f"--adc-bits {adc_bits} is out of range 1..32")
        self.bundle = bundle
        self.mode = mode
        self.adc_bits = adc_bits
        self.threads = threads
        model: onnx.ModelProto = bundle.graph
        self.model = model
        g = model.graph
        self.init = {t.name: t for t in g.initializer}
        self.types: dict[str, onnx.TypeProto] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            self.types[vi.name] = vi.type
        self.input_names = [i.name for i in g.input if i.name not in self.init]
        self.output_names = [o.name for o in g.output]
        self.opsets = [o for o in model.opset_import if o.domain != XBC_DOMAIN]
        self.kernels: dict[str, CrossbarKernel] = {}
        self.layer_node: dict[str, onnx.NodeProto] = {}
        steps: list[tuple[str, Any]] = []
        run: list[onnx.NodeProto] = []
        for node in g.node:
            if node.domain == XBC_DOMAIN:
                if node.op_type != CROSSBAR_OP:
                    raise BundleError(f"graph.onnx node {node.name!r}: unknown xbc op {node.op_type!r}")
                lid = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "layer_id"), None)
                lid = lid.decode() if isinstance(lid, bytes) else lid
                if lid not in bundle.layers:
                    raise BundleError(f"graph.onnx node {node.name!r} names layer {lid!r}, which "
                                      f"mapping.json does not hold")
                if run:
                    steps.append(("seg", run))
                    run = []
                spec = bundle.layers[lid]
                check_spec(spec)
                with blas_threads(threads):
                    self.kernels[lid] = CrossbarKernel(spec, mode=mode, adc_bits=adc_bits, exhaustive=exhaustive)
                self.layer_node[lid] = node
                steps.append(("xbar", (lid, node)))
            else:
                run.append(node)
        if run:
            steps.append(("seg", run))
        # inputs/outputs of segments, last uses
        reads_after: list[set[str]] = [set() for _ in steps]
        later: set[str] = set(self.output_names)
        for i in range(len(steps) - 1, -1, -1):
            reads_after[i] = set(later)
            kind, obj = steps[i]
            if kind == "xbar":
                later.add(obj[1].input[0])
            else:
                for n in obj:
                    later.update(_reads(n))
        self.steps: list[tuple[str, Any]] = []
        self.free_after: list[list[str]] = []
        for i, (kind, obj) in enumerate(steps):
            if kind == "seg":
                produced: list[str] = []
                reads: list[str] = []
                for n in obj:
                    for x in _reads(n):
                        if x not in produced and x not in self.init and x not in reads:
                            reads.append(x)
                    produced.extend(o for o in n.output if o)
                outs = [o for o in produced if o in reads_after[i]]
                self.steps.append(("seg", _Segment(obj, reads, outs)))
            else:
                self.steps.append((kind, obj))
        seen_reads = set(self.output_names)
        for i in range(len(self.steps) - 1, -1, -1):
            kind, obj = self.steps[i]
            here = [obj[1].input[0]] if kind == "xbar" else list(obj.inputs)
            self.free_after.insert(0, [x for x in here if x not in seen_reads])
            seen_reads.update(here)

    def set_mode(self, mode: str, exhaustive: bool = False) -> None:
        """Switch every layer to another mode without rebuilding the kernels."""
        if mode not in MODES:
            raise SimError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
        self.mode = mode
        for k in self.kernels.values():
            k.mode = mode
            k.exhaustive = exhaustive

    # ---- segments ---------------------------------------------------------------------
    def _session(self, seg: _Segment, env: dict[str, np.ndarray]):
        key = tuple((env[n].dtype.str, env[n].shape) for n in seg.inputs)
        sess = seg.sessions.get(key)
        if sess is not None:
            return sess
        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(env[n].dtype), list(env[n].shape))
                  for n in seg.inputs]
        used = set()
        for n in seg.nodes:
            used.update(_reads(n))
        inits = [self.init[n] for n in sorted(used) if n in self.init]
        outputs = []
        for o in seg.outputs:
            vi = onnx.ValueInfoProto()
            vi.name = o
            if o in self.types and self.types[o].tensor_type.elem_type:
                vi.type.tensor_type.elem_type = self.types[o].tensor_type.elem_type
            outputs.append(vi)
        graph = helper.make_graph(list(seg.nodes), f"segment_{seg.name}", inputs, outputs, inits)
        m = helper.make_model(graph, opset_imports=list(self.opsets))
        m.ir_version = self.model.ir_version
        m.functions.extend(self.model.functions)
        if any(not o.type.tensor_type.elem_type for o in outputs):
            try:
                inf = onnx.shape_inference.infer_shapes(m)
            except Exception as e:  # pragma: no cover - inference failures are model errors
                raise BundleError(f"graph.onnx: cannot type the outputs of the ops starting at "
                                  f"{seg.name!r}: {e}") from None
            known = {vi.name: vi for vi in list(inf.graph.value_info) + list(inf.graph.output)}
            for o in m.graph.output:
                if not o.type.tensor_type.elem_type and o.name in known:
                    o.type.CopyFrom(known[o.name].type)
        sess = ortutil.session(m, self.threads)
        seg.sessions[key] = sess
        return sess

    # ---- running ----------------------------------------------------------------------
    def check_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        g = self.model.graph
        specs = {i.name: i for i in g.input if i.name not in self.init}
        unknown = sorted(set(feeds) - set(specs))
        if unknown:
            raise SimError(f"input(s) {', '.join(map(repr, unknown))} are not inputs of the bundle's model; "
                           f"its inputs are {', '.join(self.input_names)}")
        for name, vi in specs.items():
            tt = vi.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            dt = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
            if name not in feeds:
                raise SimError(f"missing input {name!r} (shape {list(shape)}, {dt.name})")
            a = np.asarray(feeds[name])
            if a.shape != shape and not (len(a.shape) == len(shape) and all(s in (-1, d) for s, d in zip(shape, a.shape))):
                raise SimError(f"input {name!r} has shape {list(a.shape)}, the bundle was compiled for "
                               f"{list(shape)}; pass one sample per feed (or recompile with --input-shape)")
            out[name] = a.astype(dt, copy=False)
        return out

    def run(self, feeds: dict[str, np.ndarray], *, record: bool = False, keep_layers: bool = True) -> SimResult:
        """Simulate one feed dict (BLAS and onnxruntime both limited to ``threads`` threads).
        ``keep_layers=False`` drops the per-layer outputs (less memory over many samples)."""
        with blas_threads(self.threads):
            return self._run(feeds, record, keep_layers)

    def _run(self, feeds: dict[str, np.ndarray], record: bool, keep_layers: bool = True) -> SimResult:
        t0 = time.perf_counter()
        env: dict[str, np.ndarray] = {}
        for t in self.init.values():
            if t.name in self.output_names:
                env[t.name] = onnx.numpy_helper.to_array(t)
        env.update(self.check_feeds(feeds))
        res = SimResult(outputs={}, layer_outputs={}, conversions=0, clipped=0, mode=self.mode)
        for (kind, obj), free in zip(self.steps, self.free_after):
            if kind == "xbar":
                lid, node = obj
                k = self.kernels[lid]
                x = env[node.input[0]] if node.input[0] in env else onnx.numpy_helper.to_array(self.init[node.input[0]])
                ts = time.perf_counter()
                et = self.types.get(node.output[0])
                odt = np.float32
                if et is not None and et.tensor_type.elem_type:
                    odt = np.dtype(helper.tensor_dtype_to_np_dtype(et.tensor_type.elem_type))
                try:
                    r = k.run(x, record=record, out_dtype=odt)
                except SimError as e:
                    raise SimError(f"layer {lid} (node {node.name!r}): {e}") from None
                st = res.layers.setdefault(lid, LayerStat(lid, node.name, columns=k.info.columns,
                                                         columns_may_clip=k.info.columns_may_clip))
                st.conversions += r.conversions
                st.clipped += r.clipped
                st.seconds += time.perf_counter() - ts
                env[node.output[0]] = r.y
                if keep_layers or record:
                    res.layer_outputs[lid] = r.y
                if record:
                    res.layer_acc[lid] = r.acc
                    res.layer_xq[lid] = r.xq
                    res.layer_inputs[lid] = x
            else:
                sess = self._session(obj, env)
                vals = sess.run(obj.outputs, {n: env[n] for n in obj.inputs})
                env.update(zip(obj.outputs, vals))
            for n in free:
                env.pop(n, None)
        for name in self.output_names:
            if name not in env:
                raise BundleError(f"graph.onnx: output {name!r} is never produced")
            res.outputs[name] = env[name]
        res.conversions = sum(s.conversions for s in res.layers.values())
        res.clipped = sum(s.clipped for s in res.layers.values())
        res.seconds = time.perf_counter() - t0
        return res

    def run_many(self, feeds_list: Iterable[dict[str, np.ndarray]], *, record: bool = False,
                 keep_layers: bool = True) -> SimResult:
        results = [self.run(f, record=record, keep_layers=keep_layers) for f in feeds_list]
        if not results:
            raise SimError("no inputs to simulate")
        return merge_results(results)


def merge_results(results: list[SimResult]) -> SimResult:
    """Concatenate outputs along axis 0 and sum the counters of several runs."""
    if len(results) == 1:
        return results[0]

    def cat(key):
        d0 = getattr(results[0], key)
        return {k: np.concatenate([np.asarray(getattr(r, key)[k]).reshape((-1,) + np.shape(d0[k])[1:])
                                   if np.ndim(d0[k]) else np.atleast_1d(getattr(r, key)[k]) for r in results])
                for k in d0}
    layers = {}
    for r in results:
        for lid, s in r.layers.items():
            t = layers.setdefault(lid, LayerStat(lid, s.node, columns=s.columns, columns_may_clip=s.columns_may_clip))
            t.conversions += s.conversions
            t.clipped += s.clipped
            t.seconds += s.seconds
    return SimResult(outputs=cat("outputs"), layer_outputs=cat("layer_outputs"),
                     conversions=sum(r.conversions for r in results), clipped=sum(r.clipped for r in results),
                     layers=layers, layer_acc=cat("layer_acc"), layer_xq=cat("layer_xq"),
                     layer_inputs=cat("layer_inputs"), mode=results[0].mode,
                     seconds=sum(r.seconds for r in results), samples=sum(r.samples for r in results))


def simulate(bundle_or_path, feeds, *, mode: str = "auto", adc_bits: int | None = None,
             exhaustive: bool = False, record: bool = False, threads: int = 1) -> SimResult:
    """Simulate a bundle (path, :class:`xbc.bundle.Bundle` or :class:`Simulator`) on one feed dict
    or a list of feed dicts (results concatenated along axis 0)."""
    sim = bundle_or_path if isinstance(bundle_or_path, Simulator) else Simulator(
        bundle_or_path, mode=mode, adc_bits=adc_bits, exhaustive=exhaustive, threads=threads)
    if isinstance(feeds, dict):
        return sim.run(feeds, record=record)
    return sim.run_many(list(feeds), record=record)


# ----------------------------------------------------------------------------------------
# comparison with the float model
# ----------------------------------------------------------------------------------------

@dataclass
class LayerFidelity:
    layer_id: str
    node: str
    tensor: str
    sqnr_db: float | None
    cosine: float | None
    clipped_fraction: float


@dataclass
class CompareResult:
    samples: int
    outputs: dict[str, dict[str, float]]           # name -> {"sqnr_db", "cosine", "top1"?}
    top1: float | None                             # agreement of the first classifier output
    sqnr_db: float                                 # of the first output
    cosine: float
    layers: list[LayerFidelity]
    sim: SimResult
    reference: dict[str, np.ndarray]
    model_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "top1_agreement": self.top1, "sqnr_db": self.sqnr_db,
                "cosine": self.cosine, "outputs": self.outputs,
                "conversions": self.sim.conversions, "clipped": self.sim.clipped,
                "clipped_fraction": self.sim.clipped_fraction,
                "layers": [vars(lf) for lf in self.layers]}


def is_classifier_output(a: np.ndarray) -> bool:
    """A [batch, classes] (or [batch, 1, ..., classes]) tensor with at least two classes."""
    a = np.asarray(a)
    return a.ndim >= 2 and a.shape[-1] >= 2 and int(np.prod(a.shape[1:-1], dtype=np.int64)) == 1 \
        and np.issubdtype(a.dtype, np.floating)


def find_model(bundle, model: str | Path | onnx.ModelProto | None) -> tuple[onnx.ModelProto, str | None]:
    """The original float model: ``model`` if given, else the bundle's recorded model file
    (looked for next to the bundle and in the current directory)."""
    from xbc.frontend import read_model

    if isinstance(model, onnx.ModelProto):
        return model, None
    if model is not None:
        return read_model(model), str(model)
    rec = (bundle.mapping.get("model") or {}).get("path")
    cands = []
    if rec:
        base = Path(bundle.path)
        cands = [base.parent / rec, base / rec, Path(rec)]
    for c in cands:
        if c.is_file():
            want = bundle.mapping["model"].get("sha256")
            got = hashlib.sha256(c.read_bytes()).hexdigest()
            if want and got != want:
                raise SimError(f"{c} is not the model this bundle was compiled from (sha256 differs); "
                               f"pass the original with --model")
            return read_model(c), str(c)
    raise SimError("--compare needs the original float model: pass it with --model MODEL.onnx"
                   + (f" (the bundle records {rec!r}, not found next to the bundle or here)" if rec else ""))


def float_tensor_map(bundle_model: onnx.ModelProto, float_model: onnx.ModelProto,
                     tensors: dict[str, str]) -> dict[str, str | None]:
    """For each layer id -> output tensor of the bundle graph, the float model's tensor that holds
    the same quantity, or None.

    Passes may fold ops into a layer (fold-batchnorm: ``Conv -> BN`` becomes one layer whose output
    keeps the *conv's* name but holds the *BN's* value), so names alone mislead. The layer's
    output is what its consumers read: a consumer node of the bundle graph is found in the float
    model by its output names (or node name), and the tensor that node reads at the same input
    index is the match. A graph output keeps its name. Without a matching consumer the same-named
    float tensor is used if it exists.
    """
    fg = float_model.graph
    by_out: dict[str, onnx.NodeProto] = {}
    by_name: dict[str, onnx.NodeProto] = {}
    for n in fg.node:
        for o in n.output:
            if o:
                by_out[o] = n
        if n.name:
            by_name[n.name] = n
    float_values = set(by_out) | {i.name for i in fg.input}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in bundle_model.graph.node:
        for k, x in enumerate(n.input):
            consumers.setdefault(x, []).append((n, k))
    outs = {o.name for o in bundle_model.graph.output}
    res: dict[str, str | None] = {}
    for lid, t in tensors.items():
        if t in outs:
            res[lid] = t if t in float_values else None
            continue
        cands = set()
        for n, k in consumers.get(t, []):
            fn = next((by_out[o] for o in n.output if o in by_out), None) or by_name.get(n.name)
            if fn is not None and fn.op_type == n.op_type and k < len(fn.input) and fn.input[k]:
                cands.add(fn.input[k])
        if len(cands) == 1:
            res[lid] = cands.pop()
        elif not cands and t in float_values:
            res[lid] = t
        else:
            res[lid] = None
    return res


def reference_session(model: onnx.ModelProto, extra: list[str], threads: int = 1):
    """An onnxruntime session of the float model with the ``extra`` tensors exposed as outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    produced = {o for n in m.graph.node for o in n.output} | {i.name for i in m.graph.input}
    have = {o.name for o in m.graph.output}
    types = {vi.name: vi.type for vi in m.graph.value_info}
    for name in extra:
        if name in have or name not in produced:
            continue
        vi = onnx.ValueInfoProto()
        vi.name = name
        if name in types:
            vi.type.CopyFrom(types[name])
        else:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        m.graph.output.append(vi)
    return ortutil.session(m, threads)


class _Fidelity:
    """Running sums over samples for SQNR and cosine similarity (no arrays kept)."""

    def __init__(self):
        self.ref2 = self.err2 = self.sim2 = self.dot = 0.0
        self.n = 0

    def add(self, ref, got) -> None:
        r = np.asarray(ref, np.float64).ravel()
        g = np.asarray(got, np.float64).ravel()
        e = r - g
        self.ref2 += float(r @ r)
        self.err2 += float(e @ e)
        self.sim2 += float(g @ g)
        self.dot += float(r @ g)
        self.n += 1

    @property
    def sqnr_db(self) -> float | None:
        if not self.n:
            return None
        if self.err2 == 0.0:
            return float("inf")
        if self.ref2 == 0.0:
            return float("-inf")
        return 10.0 * float(np.log10(self.ref2 / self.err2))

    @property
    def cosine(self) -> float | None:
        if not self.n:
            return None
        if self.ref2 == 0.0 or self.sim2 == 0.0:
            return 1.0 if self.ref2 == self.sim2 else 0.0
        return self.dot / float(np.sqrt(self.ref2 * self.sim2))


def compare(bundle_or_path, feeds, *, model=None, mode: str = "auto", adc_bits: int | None = None,
            exhaustive: bool = False, threads: int = 1, progress=None) -> CompareResult:
    """Simulate ``feeds`` and compare with onnxruntime on the original float model.

    Samples are streamed: per-layer statistics are accumulated sample by sample (SQNR and cosine
    over all samples together), so memory does not grow with the number of samples; only the
    graph outputs (simulated and reference) are kept.
    """
    sim = bundle_or_path if isinstance(bundle_or_path, Simulator) else Simulator(
        bundle_or_path, mode=mode, adc_bits=adc_bits, exhaustive=exhaustive, threads=threads)
    feeds_list = [feeds] if isinstance(feeds, dict) else list(feeds)
    if not feeds_list:
        raise SimError("no inputs to compare")
    proto, mpath = find_model(sim.bundle, model)
    layer_tensor = float_tensor_map(sim.model, proto, {lid: node.output[0] for lid, node in sim.layer_node.items()})
    sess = reference_session(proto, [t for t in layer_tensor.values() if t], sim.threads)
    names = [o.name for o in sess.get_outputs()]
    in_names = {i.name for i in sess.get_inputs()}
    out_fid: dict[str, _Fidelity] = {}
    top: dict[str, list[int]] = {}
    lay_fid = {lid: _Fidelity() for lid in layer_tensor}
    results, refs = [], []
    for i, f in enumerate(feeds_list):
        if progress is not None:
            progress("simulate+compare", i, len(feeds_list))
        r = sim.run(f)
        ref = dict(zip(names, sess.run(names, {k: v for k, v in f.items() if k in in_names})))
        for name, got in r.outputs.items():
            if name not in ref:
                continue
            want = ref[name]
            out_fid.setdefault(name, _Fidelity()).add(want, got)
            if is_classifier_output(want) and want.shape == np.shape(got):
                a = want.reshape(-1, want.shape[-1]).argmax(-1)
                b = np.asarray(got).reshape(-1, want.shape[-1]).argmax(-1)
                t = top.setdefault(name, [0, 0])
                t[0] += int(np.sum(a == b))
                t[1] += int(a.size)
        for lid, tensor in layer_tensor.items():
            got = r.layer_outputs.get(lid)
            want = ref.get(tensor) if tensor else None
            if want is not None and got is not None and want.shape == got.shape:
                lay_fid[lid].add(want, got)
        r.layer_outputs = {}
        results.append(r)
        refs.append({k: ref[k] for k in r.outputs if k in ref})
    res = merge_results(results)
    if not out_fid:
        raise SimError("the float model has none of the bundle's outputs "
                       f"({', '.join(res.outputs)}); is it the model this bundle was compiled from?")
    outs: dict[str, dict[str, float]] = {}
    top1 = None
    for name, fd in out_fid.items():
        d = {"sqnr_db": fd.sqnr_db, "cosine": fd.cosine}
        if name in top:
            d["top1_agree"], d["top1_total"] = top[name]
            d["top1"] = top[name][0] / top[name][1] if top[name][1] else 0.0
            if top1 is None:
                top1 = d["top1"]
        outs[name] = d
    first = next(iter(outs.values()))
    layers = []
    for lid, tensor in layer_tensor.items():
        st = res.layers.get(lid)
        fd = lay_fid[lid]
        layers.append(LayerFidelity(lid, sim.layer_node[lid].name, tensor or "-", fd.sqnr_db, fd.cosine,
                                    st.clipped_fraction if st else 0.0))
    reference = {k: np.concatenate([np.asarray(r[k]).reshape((-1,) + np.shape(r[k])[1:]) if np.ndim(r[k])
                                    else np.atleast_1d(r[k]) for r in refs]) for k in refs[0]}
    return CompareResult(samples=len(feeds_list), outputs=outs, top1=top1, sqnr_db=first["sqnr_db"],
                         cosine=first["cosine"], layers=layers, sim=res, reference=reference, model_path=mpath)
