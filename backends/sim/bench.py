"""Simulator speed against onnxruntime on the same model and inputs.

:func:`bench_sim` times the bit-accurate simulator per image (each requested mode) and
onnxruntime on the *float* model on the same inputs, with the same number of threads on both
sides (BLAS threads for the simulator's kernels, intra-op threads for onnxruntime, default 1),
after one warm-up run of each. onnxruntime runs with its full graph optimizations (the fastest
float baseline, conv+BN+ReLU fused); the simulator's digital ops run in onnxruntime with
optimizations off (exact op-by-op semantics). Reported: ms/image per mode, the ratio to
onnxruntime, the one-off preparation (reading the bundle, building every layer's matrix from its
cells) and the conversion/clipping counts.

Run it on the project's models::

    python -m xbc.backends.sim.bench --model resnet50 --target sme --samples 2
    python -m xbc.backends.sim.bench --model resnet_tiny --target isaac --exhaustive
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx


def _ort_session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _random_feeds(graph: onnx.ModelProto, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    from .cli import build_feeds

    return build_feeds(graph, None, None, None, n, seed)


def bench_sim(model_or_bundle, target: str = "sme", *, feeds: list[dict] | None = None, samples: int = 2,
              modes: tuple[str, ...] = ("bit-serial", "ideal"), exhaustive: bool = False, threads: int = 1,
              pipeline: str | None = None, model: onnx.ModelProto | str | None = None, seed: int = 0,
              adc_bits: int | None = None, print_fn: Callable[[str], None] | None = None) -> dict:
    """Time the simulator against onnxruntime; returns a dict with ``rows`` (one per mode).

    ``model_or_bundle``: an ONNX model (compiled here for ``target``) or a bundle path /
    :class:`xbc.bundle.Bundle` (then ``model``, or the bundle's recorded model file, is the float
    model; without one only the simulator is timed).
    """
    from xbc.bundle import Bundle, read_bundle, write_bundle

    from .runner import Simulator, find_model

    out: dict = {"threads": threads}
    tmp = None
    float_model = None
    if isinstance(model_or_bundle, onnx.ModelProto):
        from xbc.compiler import compile_model

        float_model = model_or_bundle
        t0 = time.perf_counter()
        res = compile_model(model_or_bundle, target, pipeline=pipeline)
        out["compile_s"] = round(time.perf_counter() - t0, 3)
        tmp = tempfile.TemporaryDirectory(prefix="xbc-simbench-")
        path = write_bundle(res, Path(tmp.name) / "bundle")
    else:
        path = model_or_bundle
    try:
        t0 = time.perf_counter()
        b = path if isinstance(path, Bundle) else read_bundle(path)
        out["read_s"] = round(time.perf_counter() - t0, 3)
        out["target"] = b.target.get("name")
        if float_model is None:
            try:
                float_model = find_model(b, model)[0]
            except Exception:  # noqa: BLE001 - timing the simulator alone is still useful
                float_model = None
        feeds = list(feeds) if feeds is not None else _random_feeds(b.graph, samples, seed)
        n = len(feeds)
        out["samples"] = n
        rows = []
        ort_ms = None
        if float_model is not None:
            sess = _ort_session(float_model, threads)
            names = [i.name for i in sess.get_inputs()]
            sess.run(None, {k: feeds[0][k] for k in names})
            t0 = time.perf_counter()
            for f in feeds:
                sess.run(None, {k: f[k] for k in names})
            ort_ms = 1000 * (time.perf_counter() - t0) / n
            out["ort_ms_per_image"] = round(ort_ms, 3)
        runs = [(m, False) for m in modes] + ([("bit-serial", True)] if exhaustive else [])
        t0 = time.perf_counter()
        sim = Simulator(b, mode=runs[0][0] if runs else "auto", threads=threads, adc_bits=adc_bits)
        out["adc_bits"] = adc_bits if adc_bits is not None else b.target.get("adc_bits")
        prep = time.perf_counter() - t0
        out["prepare_s"] = round(prep, 3)
        for mode, ex in runs:
            sim.set_mode(mode, exhaustive=ex)
            sim.run(feeds[0])                                     # warm-up: onnxruntime sessions
            t0 = time.perf_counter()
            conv = clip = 0
            for f in feeds:
                r = sim.run(f, keep_layers=False)
                conv += r.conversions
                clip += r.clipped
            ms = 1000 * (time.perf_counter() - t0) / n
            name = mode + (" (exhaustive)" if ex else "")
            rows.append({"mode": name, "ms_per_image": round(ms, 3),
                         "ratio_vs_ort": None if not ort_ms else round(ms / ort_ms, 2),
                         "conversions_per_image": conv // n, "clipped_fraction": clip / conv if conv else 0.0})
        out["rows"] = rows
        first = next((r for r in rows if r["mode"] == "bit-serial"), rows[0] if rows else None)
        if first is not None:
            out["sim_ms_per_image"] = first["ms_per_image"]
            if first["ratio_vs_ort"] is not None:
                out["ratio"] = first["ratio_vs_ort"]
        for r in rows:
            if r["mode"] == "ideal":
                out["ideal_ms_per_image"] = r["ms_per_image"]
            if r["mode"].endswith("(exhaustive)"):
                out["exhaustive_ms_per_image"] = r["ms_per_image"]
        if print_fn is not None:
            print_fn(format_rows(out))
        return out
    finally:
        if tmp is not None:
            tmp.cleanup()


def format_rows(rep: dict) -> str:
    lines = [f"simulator vs onnxruntime ({rep.get('target')}, ADC {rep.get('adc_bits')} bits, {rep.get('samples')} images, "
             f"{rep.get('threads')} thread(s))"]
    ort = rep.get("ort_ms_per_image")
    lines.append(f"  onnxruntime float model: {ort:.2f} ms/image" if ort is not None else "  onnxruntime: n/a (no float model)")
    for r in rep.get("rows", []):
        ratio = f"x{r['ratio_vs_ort']:.1f}" if r["ratio_vs_ort"] is not None else "-"
        lines.append(f"  {r['mode']:<24} {r['ms_per_image']:10.2f} ms/image  {ratio:>7} vs onnxruntime  "
                     f"({r['conversions_per_image']:,} ADC conversions/image, "
                     f"{100 * r['clipped_fraction']:.4f}% clipped)")
    if rep.get("prepare_s") is not None:
        lines.append(f"  prepare (matrices from the cells, once per bundle): {rep['prepare_s']:.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Time the bit-accurate simulator against onnxruntime.")
    ap.add_argument("--model", default="resnet50", help="a builder of examples/models.py (resnet50, mobilenet_v2, "
                                                        "resnet_tiny, ...) or an .onnx file")
    ap.add_argument("--target", default="sme")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--exhaustive", action="store_true", help="also time the literal per-cycle model")
    ap.add_argument("--adc-bits", type=int, default=None, help="simulate ADCs of this many bits")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="target override KEY=VALUE")
    args = ap.parse_args(argv)
    if args.model.endswith(".onnx"):
        proto = onnx.load(args.model)
    else:
        from xbc.bench import load_builders

        proto = getattr(load_builders(), args.model)(seed=0)
    target = args.target
    if args.overrides:
        from xbc import targets

        target = targets.load(args.target, args.overrides)
    rep = bench_sim(proto, target, samples=args.samples, threads=args.threads, exhaustive=args.exhaustive,
                    adc_bits=args.adc_bits, print_fn=print)
    print(f"  compile {rep.get('compile_s')} s, read bundle {rep.get('read_s')} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
