"""quantize: weights to signed integers, crossbar inputs to unsigned integers with a zero point.

For every crossbar layer this pass sets ``node.layer.quant`` (:class:`xbc.layer.Quant`); the
graph itself is unchanged. The integer semantics are those of :mod:`xbc.qmath`::

    xq = clip(rint(x / x_scale) + x_zero_point, 0, 2**input_bits - 1)
    y[o] = x_scale * w_scale[o] * (sum_r w_int[r, o] * xq[r] - x_zero_point * colsum[o]) + bias[o]

Weights
    Signed symmetric ``weight_bits`` integers (``|w| <= 2**(b-1) - 1``), one scale per output
    channel (``per-channel``, default ``target.per_channel``) or one per tensor; float scales or
    powers of two (``pow2``, default ``target.pow2_scale``). The scale minimizes the weight MSE
    (clipping-ratio grid search + alternating least squares, :func:`xbc.qmath.choose_weight_scales`),
    which maximizes the weight SQNR ``10 log10(sum w^2 / sum (w - s w_int)^2)``, reported per
    layer in ``layer.stats["w_sqnr_db"]`` and in the pass stats. ``w_int`` is int32 in the weight
    tensor's own layout, ``w_scale`` float64 ``[Cout]``; ``quant.w_int_initial`` keeps a copy for
    the lossy passes that follow. A Gemm whose ``alpha`` is not 1 (the frontend normally folds
    it) gets ``alpha`` folded into ``w_scale``.

    Pre-quantized layers (``layer.prequant`` from the frontend: QLinear/Integer ops or weight
    DequantizeLinear) keep their own integers and scales if they are symmetric (zero point 0)
    and fit ``weight_bits``; otherwise they are requantized from the float weight with a warning.

Inputs
    Unsigned ``input_bits`` (default ``target.input_bits``), one scale and zero point per
    layer input, from the range of that input over the calibration data: onnxruntime runs once
    on the current graph with every layer input exposed as an extra output
    (:func:`xbc.calibration.collect_ranges`), in a background thread while the weights are
    quantized (:class:`xbc.calibration.RangesInBackground`; the same ranges). ``calib-method=minmax`` takes the min and max,
    ``percentile`` the ``100-p`` and ``p`` percentiles (``percentile`` option, default 99.99).
    The range is widened to contain 0, then ``x_scale = (hi - lo) / (2**bits - 1)`` (rounded to
    float32) and ``x_zero_point = clip(round(-lo / x_scale), 0, 2**bits - 1)``.
    Without calibration data (``ctx.calibration`` is None) the default is ``calib-samples``
    (8) inputs drawn from N(0, 1) with ``ctx.seed`` (:func:`xbc.calibration.synthetic_calibration`),
    and a warning says so: ranges from random inputs are only a placeholder for real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from xbc import qmath
from xbc.calibration import RangesInBackground, calibration_key, graph_snapshot, synthetic_calibration
from xbc.errors import OptionError
from xbc.ir import Graph
from xbc.layer import Quant
from xbc.passmanager import Pass, PassContext, PassResult, register


@register
@dataclass(frozen=True)
class Quantize(Pass):
    name: ClassVar[str] = "quantize"
    summary: ClassVar[str] = "weights to signed integers (min-MSE scales), inputs to unsigned integers from calibration"

    weight_bits: int | None = None     # none: target.weight_bits
    input_bits: int | None = None      # none: target.input_bits
    per_channel: bool | None = None    # none: target.per_channel
    pow2: bool | None = None           # none: target.pow2_scale
    calib_method: Literal["minmax", "percentile"] = "minmax"
    percentile: float = 99.99
    calib_samples: int = 8

    def __post_init__(self):
        if self.weight_bits is not None and not 2 <= self.weight_bits <= 16:
            raise OptionError(f"quantize: weight-bits = {self.weight_bits} is out of range [2, 16]")
        if self.input_bits is not None and not 1 <= self.input_bits <= 16:
            raise OptionError(f"quantize: input-bits = {self.input_bits} is out of range [1, 16]")
        if not 50.0 < self.percentile <= 100.0:
            raise OptionError(f"quantize: percentile = {self.percentile} must be in (50, 100]")
        if self.calib_samples < 1:
            raise OptionError(f"quantize: calib-samples = {self.calib_samples} must be at least 1")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        t = ctx.target
        wb = self.weight_bits if self.weight_bits is not None else t.weight_bits
        ib = self.input_bits if self.input_bits is not None else t.input_bits
        per_channel = self.per_channel if self.per_channel is not None else t.per_channel
        pow2 = self.pow2 if self.pow2 is not None else t.pow2_scale
        layers = list(graph.layers())
        if not layers:
            return PassResult(False, {"layers": 0})

        # onnxruntime runs the calibration data in a background thread (it releases the GIL while
        # it runs) while the weights are quantized here; errors and warnings come out as in a
        # sequential run: the calibration's first, then the layers' in order
        pending = self._input_ranges(graph, layers, ctx)
        weights = []
        try:
            for node in ctx.each_layer(graph):
                if pending.failed():         # stop early: the calibration error comes first
                    break
                weights.append((node, self._weights(node, wb, per_channel, pow2)))
        except BaseException:
            pending.wait()
            if pending.failed():
                ctx.node = None
                pending.result()             # raises the calibration error, as a sequential run would
            raise
        ctx.node = None
        ranges = pending.result()

        per_layer = {}
        sig_total = err_total = 0.0
        for node, (w_int, w_scale, alpha, prequantized, warnings, sig, err, zero_frac) in weights:
            ctx.node = node
            L = node.layer
            for msg in warnings:
                ctx.warn(msg)
            sig_total += sig
            err_total += err
            sq = qmath.sqnr_db(sig, err)
            x_val = node.inputs[0]
            lo, hi = ranges[x_val.name]
            x_scale, x_zp = qmath.input_params(lo, hi, ib)
            pc = bool(per_channel) if not prequantized else bool(np.ptp(w_scale) > 0)
            is_pow2 = bool(np.all(np.exp2(np.round(np.log2(w_scale))) == w_scale))
            L.quant = Quant(weight_bits=wb, w_scale=np.ascontiguousarray(w_scale * alpha, dtype=np.float64),
                            w_int=np.ascontiguousarray(w_int, dtype=np.int32), input_bits=ib,
                            x_scale=float(x_scale), x_zero_point=int(x_zp), per_channel=pc,
                            pow2=is_pow2 if prequantized else bool(pow2), prequantized=prequantized,
                            w_int_initial=np.array(w_int, dtype=np.int32, copy=True))
            L.quant.stats = {"w_sqnr_db": sq, "x_range": [float(lo), float(hi)]}
            L.stats["w_sqnr_db"] = sq
            per_layer[L.id] = {"w_sqnr_db": round(sq, 3), "x_scale": float(x_scale), "x_zero_point": int(x_zp),
                               "x_range": [float(lo), float(hi)], "prequantized": prequantized,
                               "zero_weights": zero_frac}
        ctx.node = None
        sq_all = qmath.sqnr_db(sig_total, err_total)
        vals = [v["w_sqnr_db"] for v in per_layer.values()]
        stats = {"layers": len(per_layer), "weight_bits": wb, "input_bits": ib, "per_channel": bool(per_channel),
                 "pow2": bool(pow2), "w_sqnr_db_total": round(sq_all, 3),
                 "w_sqnr_db_min": float(min(vals)), "calibration": ctx.extra.get("calibration_source", "given"),
                 "per_layer": per_layer}
        return PassResult(True, stats)

    # ------------------------------------------------------------------------------------
    def _weights(self, node, wb: int, per_channel: bool, pow2: bool):
        """One layer's integer weights and scales, their error and warnings (emitted later, in order)."""
        L = node.layer
        W = np.asarray(L.weight_value(node).const)
        alpha = float(node.attrs.get("alpha", 1.0)) if L.kind == "gemm" else 1.0
        qmax = qmath.qmax_weight(wb)
        pre = L.prequant
        w_int = w_scale = None
        prequantized = False
        warnings = []
        if pre is not None:
            wi = np.asarray(pre.get("w_int"))
            zp = np.asarray(pre.get("w_zero_point", 0))
            ws = np.asarray(pre.get("w_scale"), np.float64).reshape(-1)
            if wi.shape != W.shape or ws.size not in (1, L.out_channels):
                warnings.append(f"layer {L.id}: pre-quantized weight record does not match the weight; "
                                f"requantizing to {wb} bits")
            elif np.any(zp != 0):
                warnings.append(f"layer {L.id}: pre-quantized weight has a non-zero zero point; requantizing "
                                f"symmetrically to {wb} bits")
            elif int(np.abs(wi).max(initial=0)) > qmax:
                warnings.append(f"layer {L.id}: pre-quantized weight needs more than {wb} bits "
                                f"(max |w| = {int(np.abs(wi).max())}); requantizing to {wb} bits")
            else:
                w_int = wi.astype(np.int32)
                w_scale = np.broadcast_to(ws, (L.out_channels,)).astype(np.float64)
                prequantized = True
        W64 = np.asarray(W, np.float64)          # (both functions convert so: once here)
        if w_int is None:
            w_int, w_scale = qmath.quantize_weights(W64, L.kind, L.groups, node.attrs, wb,
                                                    per_channel=per_channel, pow2=pow2)
        sig, err = qmath.weight_error(W64, w_int, w_scale, L.kind, L.groups, node.attrs)
        # the fraction of zero weights (of the [G, R, C] matrix: the same elements): an exact count
        zero_frac = (w_int.size - int(np.count_nonzero(w_int))) / w_int.size if w_int.size else 0.0
        return w_int, w_scale, alpha, prequantized, warnings, sig, err, zero_frac

    def _input_ranges(self, graph: Graph, layers, ctx: PassContext) -> RangesInBackground:
        model = graph.to_onnx()
        calib = ctx.calibration
        if calib is None:
            calib = synthetic_calibration(model, seed=ctx.seed, samples=self.calib_samples)
            ctx.extra["calibration_source"] = f"synthetic N(0,1) x{self.calib_samples}, seed {ctx.seed}"
            ctx.warn(f"no calibration data: input ranges come from {self.calib_samples} random N(0,1) "
                     f"inputs (seed {ctx.seed}); pass --calibration FILE.npz or an image folder for "
                     f"real ranges")
        else:
            ctx.extra["calibration_source"] = "given"
        names = [n.inputs[0].name for n in layers]
        shapes = {n.inputs[0].name: list(n.inputs[0].shape) for n in layers if n.inputs[0].shape is not None}
        ets = {n.inputs[0].name: n.inputs[0].elem_type for n in layers if n.inputs[0].elem_type}
        means: dict = {}      # the layer inputs' means, kept for bias-correct (same data, same graph)
        ctx.extra["layer_input_means"] = {"means": means, "graph": graph_snapshot(graph),
                                          "source": calibration_key(ctx, self.calib_samples)}
        return RangesInBackground(model, names, calib, method=self.calib_method, percentile=self.percentile,
                                  shapes=shapes, elem_types=ets, means=means)
