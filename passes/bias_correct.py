"""bias-correct: remove the mean output shift that weight rounding and the lossy passes cause.

Quantization and the lossy passes after it (orchestrate-bits' clearing, cim-sparsity's pruning)
replace a layer's float weights ``W`` by effective weights ``W_q`` (``w_int * w_scale``, in the
weight tensor's own layout). The error ``dW = W_q - W`` is small per weight but not zero-mean
against the layer's input: on output channel ``o`` it shifts the output by

    delta[o] = E_{samples, positions}[ (dW (*) x)[o] ]

where ``(*)`` is the layer's own op (Conv, ConvTranspose, Gemm, MatMul with its attributes).
Because the op is linear and independent along the input's leading axis (the batch, or the rows
of a 2-D Gemm/MatMul input; a vector input is averaged over the samples only), ``delta`` is exactly the op applied to the mean input
``xbar = E[x]`` over that axis, averaged over every output axis except the channel axis (axis
1 for Conv/ConvTranspose, the last for Gemm/MatMul); border positions of a padded conv are
accounted for exactly, since the op itself pads ``xbar``. The pass sets the bias to ``b - delta``
(Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction",
ICCV 2019, in its empirical form), which makes the mean of every layer's output over the
calibration data equal that of the float layer. A layer without a bias gets one (Conv,
ConvTranspose, Gemm: the bias input; MatMul: an ``Add`` after it, a digital op).

Calibration data: ``ctx.calibration`` as in quantize, else the same synthetic default
(``samples`` N(0,1) inputs drawn with ``ctx.seed``) and a warning. The means ``xbar`` are those
quantize recorded during its calibration run when the data are the same and the graph has not
changed since (every node, input and constant array the same objects,
:func:`xbc.calibration.same_graph`); otherwise onnxruntime runs the float graph over the data
with every layer input exposed. Then one small graph applies every layer's ``dW`` to its
``xbar``. Run it after the last pass that changes integer weights.

Stats: per layer the RMS and the largest ``|delta|`` (``shift_rms``, ``shift_max``, in the
layer's output units); in total the number of layers corrected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from onnx import helper, numpy_helper

from xbc.calibration import calibration_key, collect_ranges, same_graph, synthetic_calibration
from xbc.errors import OptionError
from xbc.ir import Graph, elem_type_of, make_onnx_attribute
from xbc.effective import effective_weight
from xbc.passmanager import Pass, PassContext, PassResult, register


def effective_weight_error(node) -> np.ndarray:
    """``W_q - W`` in the weight tensor's layout (float64); Gemm's ``alpha`` as quantize folds it."""
    L = node.layer
    W = np.asarray(L.weight_value(node).const, np.float64)
    if L.kind == "gemm":
        W = W * float(node.attrs.get("alpha", 1.0))
    return effective_weight(node, np.float64) - W


def layer_input_means(graph: Graph, layers, calib: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean of every layer input over the calibration data (:func:`xbc.calibration.layer_mean`),
    from one calibration run (:func:`xbc.calibration.collect_ranges`)."""
    names = list(dict.fromkeys(n.inputs[0].name for n in layers))
    vals = {n.inputs[0].name: n.inputs[0] for n in layers}
    means: dict[str, np.ndarray] = {}
    collect_ranges(graph.to_onnx(), names, calib, means=means,
                   shapes={k: list(v.shape) for k, v in vals.items() if v.shape is not None},
                   elem_types={k: v.elem_type for k, v in vals.items() if v.elem_type})
    return means


def output_shifts(graph: Graph, layers, means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``delta[o]`` per layer: its op with weight ``dW`` on ``xbar``, averaged over all but the
    channel axis (one onnxruntime session for all layers)."""
    from xbc import ortutil  # noqa: PLC0415

    nodes, inits, outs, inputs, feeds = [], [], [], [], {}
    for i, n in enumerate(layers):
        L = n.layer
        wdt = np.asarray(L.weight_value(n).const).dtype
        if not np.issubdtype(wdt, np.floating):
            wdt = np.dtype(np.float32)
        xname, wname, yname = f"x{i}", f"w{i}", f"y{i}"
        xbar = means[n.inputs[0].name].astype(wdt)
        feeds[xname] = xbar
        inputs.append(helper.make_tensor_value_info(xname, elem_type_of(xbar), list(xbar.shape)))
        inits.append(numpy_helper.from_array(effective_weight_error(n).astype(wdt), wname))
        attrs = {k: v for k, v in n.attrs.items() if k not in ("alpha", "beta")}
        nd = helper.make_node(n.op_type, [xname, wname], [yname], name=f"dw{i}")
        nd.attribute.extend(make_onnx_attribute(k, v, n.attr_types.get(k)) for k, v in attrs.items())
        nodes.append(nd)
        outs.append(helper.make_tensor_value_info(yname, elem_type_of(xbar), None))
    g = helper.make_graph(nodes, "bias_correct", inputs, outs, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph.opset_imports.get("", 17))])
    model.ir_version = max(8, int(graph.model_meta.get("ir_version", 8)))
    res = ortutil.run(model, feeds)
    out = {}
    for i, n in enumerate(layers):
        y = np.asarray(res[f"y{i}"], np.float64)
        axis = 1 if n.layer.kind in ("conv", "conv_transpose") else y.ndim - 1
        out[n.layer.id] = np.moveaxis(y, axis, 0).reshape(y.shape[axis], -1).mean(axis=1)
    return out


def _set_bias(graph: Graph, node, new_bias: np.ndarray) -> None:
    from xbc.frontend import _produce, _replace_output  # noqa: PLC0415

    L = node.layer
    if L.kind == "matmul":
        y = node.outputs[0]
        b = graph.add_const(node.name + "_bias_correction", new_bias.astype(np.dtype(np.float32) if y.elem_type is None
                                                                          else np.asarray(node.inputs[1].const).dtype))
        fresh, orig = _replace_output(graph, node, 0, y.shape, y.elem_type)
        _produce(graph, "Add", [fresh, b], orig, after=node, name=node.name + "_bias_correction")
        return
    wdt = np.asarray(L.weight_value(node).const).dtype
    v = graph.add_const(node.name + "_bias_corrected", new_bias.astype(wdt))
    while len(node.inputs) < 3:
        node.inputs.append(None)
    node.set_input(2, v)
    L.bias_input = 2


@register
@dataclass(frozen=True)
class BiasCorrect(Pass):
    name: ClassVar[str] = "bias-correct"
    summary: ClassVar[str] = "bias correction: cancel the mean output shift of the quantized weights (calibration data)"

    samples: int = 8             # synthetic calibration samples when ctx.calibration is None

    def __post_init__(self):
        if self.samples < 1:
            raise OptionError(f"bias-correct: samples = {self.samples} must be at least 1")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        layers = [n for n in graph.layers() if n.layer.quant is not None]
        if not layers:
            return PassResult(False, {"layers": 0, "corrected": 0, "per_layer": {}})
        if ctx.calibration is None:
            ctx.warn(f"no calibration data: the mean layer inputs come from {self.samples} random N(0,1) "
                     f"inputs (seed {ctx.seed}); pass --calibration for real data")
        cached = ctx.extra.get("layer_input_means")
        names = {n.inputs[0].name for n in layers}
        if (cached is not None and cached["source"] == calibration_key(ctx, self.samples)
                and names <= set(cached["means"]) and same_graph(cached["graph"], graph)):
            means = cached["means"]          # quantize's run: the same data, the graph unchanged since
            reused = True
        else:
            calib = ctx.calibration
            if calib is None:
                calib = synthetic_calibration(graph.to_onnx(), seed=ctx.seed, samples=self.samples)
            means = layer_input_means(graph, layers, calib)
            reused = False
        shifts = output_shifts(graph, layers, means)
        per_layer, corrected = {}, 0
        for node in ctx.each_layer(graph):
            L = node.layer
            if L.quant is None:
                continue
            delta = shifts[L.id]
            cout = L.out_channels
            if L.kind == "matmul" or L.bias_input is None or node.inputs[L.bias_input] is None:
                b = np.zeros(cout, np.float64)
            else:
                bv = np.asarray(node.inputs[L.bias_input].const, np.float64)
                if L.kind == "gemm":
                    bv = bv * float(node.attrs.get("beta", 1.0))
                    node.attrs.pop("beta", None)
                    node.attr_types.pop("beta", None)
                b = np.broadcast_to(bv.reshape(-1), (cout,)).astype(np.float64)
            per_layer[L.id] = {"shift_rms": float(np.sqrt(np.mean(delta ** 2))),
                               "shift_max": float(np.abs(delta).max(initial=0.0))}
            if not np.any(delta):
                continue
            _set_bias(graph, node, b - delta)
            corrected += 1
        if corrected:
            graph.topo_sort()
        return PassResult(corrected > 0, {"layers": len(layers), "corrected": corrected,
                                          "reused_quantize_calibration": reused, "per_layer": per_layer})
