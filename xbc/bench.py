"""``xbc bench``: crossbar counts, fidelity, speed and memory on ResNet-50 / MobileNet-v2.

What it measures, per model (built by ``examples/models.py`` or any ``--model FILE.onnx``)
----------------------------------------------------------------------------------------
* **Crossbars**: physical ``rows x cols`` crossbars of the layers'
  :class:`~xbc.layer.LayerProgram` s, summed: ``crossbars`` = all crossbars the mapping
  allocates (what the chip must provide; a dense mapping reserves its crossbars whether or not
  a plane happens to be all zero) and ``non-empty`` = those with at least one programmed cell
  (DESIGN.md's count; equal to ``crossbars`` after ``squeeze``). Rows:

  - every target given with ``--targets`` (default ``sme,isaac``) on its default pipeline;
  - for a target whose pipeline has sparsity passes (``orchestrate-bits``, ``reorder``,
    ``cim-sparsity``, ``squeeze``), an **ablation**: the *dense* mapping (the same pipeline
    without any sparsity pass and without the post-mapping passes ``adc-size``, ``place``,
    ``estimate``), then ``squeeze`` added (empty column segments of plain bit slices dropped and
    the rest packed), then each other sparsity pass added in pipeline order. The last ablation row
    maps exactly what the full pipeline maps.

  Ratios (of allocated crossbars): ``dense / count`` against the target's dense row, and
  ``isaac / count`` against the ``isaac`` target's count. The per-layer counts the passes record
  in ``layer.stats`` (``crossbars_dense``, ``crossbars_sliced``, ``crossbars_squeezed``,
  ``crossbars_isaac``, ...) are summed and shown for each full compile as a cross-check.
* **Fidelity** of every row: the effective model (:func:`xbc.effective.effective_model`: the
  float model with each crossbar layer replaced by what the compiled layer computes) against the
  float model under onnxruntime on ``--samples`` inputs ``N(0, 1)`` drawn with seeds
  ``seed+1000 .. seed+1000+samples-1`` (:func:`xbc.ortutil.random_inputs`); the compiles
  calibrate on quantize's default, synthetic ``N(0, 1)`` inputs drawn with the compile seed, never
  on the evaluation inputs. Top-1 agreement (%) and SQNR (dB) of the outputs, and ``err offset %``:
  the share of the first output's error power that is the same for every sample (a constant
  offset per output element, such as the bias shift weight quantization causes, which a bias
  correction would remove).
* **Speed**: seconds of the whole compile and of every pass (``ctx.timings``); onnxruntime
  ms/image on the float model; the bit-accurate simulator's ms/image
  (:mod:`xbc.backends.sim.bench`) on the full compile of the first target.
* **Memory**: peak resident set size while the compile runs, sampled every 5 ms from
  ``/proc/self/statm`` (Linux; elsewhere the process peak ``ru_maxrss``), reported as the peak
  and as the increase over the RSS before the compile.
* **Placement**: greedy against CP-SAT on the full compile's placement instance
  (:func:`xbc.placement.bench_placement`).

The claims of the SME paper (arXiv 2103.01705, abstract: "shrinks the use of crossbars up to
8.7x and 2.1x using ResNet-50 and MobileNet-v2 ... with less than 0.3% accuracy drop on
ImageNet") are printed beside the measured ratios. The models here are synthetic (trained-like
weight distributions, see ``examples/models.py``), so top-1 *agreement with the float model on
random inputs* stands in for the ImageNet accuracy drop; it is a stricter test (random networks
have small top-1 margins).

A section that cannot run says ``n/a (reason)``; nothing is left silently empty.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx

from .errors import OptionError, XbcError

DEFAULT_MODELS = ("resnet50", "mobilenet_v2")
QUICK_MODELS = ("tiny_cnn", "mobilenet_tiny")
SPARSITY_PASSES = ("orchestrate-bits", "reorder", "cim-sparsity", "squeeze")
POST_PASSES = ("adc-size", "place", "estimate")
PAPER = {
    "source": "SME, arXiv 2103.01705 (abstract)",
    "resnet50": {"reduction": 8.7, "top1_drop_pct": 0.3},
    "mobilenet_v2": {"reduction": 2.1, "top1_drop_pct": 0.3},
}


# ----------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------

def _na(reason: str) -> dict[str, str]:
    return {"na": reason}


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:160]


class PeakRSS:
    """Peak resident set size (bytes) while the ``with`` block runs (see module docstring)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start = 0
        self.peak = 0
        self.method = "statm"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            r = self._rss()
            if r is not None and r > self.peak:
                self.peak = r

    def __enter__(self) -> "PeakRSS":
        r = self._rss()
        if r is None:
            self.method = "ru_maxrss"
            self.start = 0
            return self
        self.start = self.peak = r
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            r = self._rss()
            if r is not None:
                self.peak = max(self.peak, r)
        else:
            mult = 1 if sys.platform == "darwin" else 1024
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * mult

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def delta_mb(self) -> float:
        return max(0, self.peak - self.start) / 2**20


def load_builders():
    """The model builders, ``examples/models.py`` (installed as ``xbc.examples.models``)."""
    try:
        return importlib.import_module("xbc.examples.models")
    except ImportError as e:
        raise XbcError(f"the model builders (xbc.examples.models) are not available in this installation "
                       f"({e}); reinstall xbc or pass --model FILE.onnx") from None


@dataclass
class ModelSource:
    name: str
    proto: onnx.ModelProto
    origin: str
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    build_seconds: float = 0.0


def count_crossbars(graph) -> tuple[int, int] | None:
    """``(allocated, non_empty)`` physical crossbars over the layers' programs: all crossbars of
    the programs, and those with at least one programmed cell (DESIGN's count). None if no layer
    has a program."""
    alloc, nonempty, seen = 0, 0, False
    for n in graph.layers():
        p = n.layer.program
        if p is None:
            continue
        seen = True
        X = p.cells.shape[0]
        alloc += X
        if X:
            nonempty += int(np.count_nonzero(p.cells.reshape(X, -1).any(axis=1)))
    return (alloc, nonempty) if seen else None


def stage_counts(graph) -> dict[str, int]:
    """Sum of the per-layer ``crossbars_*`` statistics the passes record."""
    out: dict[str, int] = {}
    for n in graph.layers():
        for k, v in n.layer.stats.items():
            if k.startswith("crossbars_") and isinstance(v, (int, np.integer)):
                out[k] = out.get(k, 0) + int(v)
    return out


def _pipeline_items(pipeline: str) -> list[str]:
    """``a,b{x=1},c`` -> ``["a", "b{x=1}", "c"]`` (text only: no pass needs to be registered)."""
    return [m.group(0) for m in re.finditer(r"[A-Za-z0-9_-]+\s*(?:\{[^{}]*\})?", pipeline)]


def pipeline_names(pipeline: str) -> list[str]:
    return [it.split("{")[0].strip() for it in _pipeline_items(pipeline)]


def ablation_pipelines(pipeline: str) -> list[tuple[str, str]]:
    """``(label, pipeline)`` rows: dense, +squeeze, then each other sparsity pass (module doc)."""
    items = [(it.split("{")[0].strip(), it) for it in _pipeline_items(pipeline)]
    sparse = [n for n, _ in items if n in SPARSITY_PASSES]
    if not sparse:
        return []
    keep = [(n, it) for n, it in items if n not in POST_PASSES]

    def spec(enabled: set[str]) -> str:
        return ",".join(it for n, it in keep if n not in SPARSITY_PASSES or n in enabled)

    rows = [("dense", spec(set()))]
    enabled: set[str] = set()
    order = (["squeeze"] if "squeeze" in sparse else []) + [n for n in sparse if n != "squeeze"]
    for n in order:
        enabled.add(n)
        rows.append(("+" + n, spec(enabled)))
    return rows


# ----------------------------------------------------------------------------------------
# adapters to the other parts (each returns a value or raises with a reason)
# ----------------------------------------------------------------------------------------

def _effective_outputs(result, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Outputs of the effective model (:func:`xbc.effective.effective_model`) on ``feeds``."""
    from . import effective  # noqa: PLC0415
    from . import ortutil  # noqa: PLC0415

    eff = effective.effective_model(result.graph)
    sess = ortutil.session(eff)
    names = [o.name for o in sess.get_outputs()]
    return [sess.run(names, f) for f in feeds]


def fidelity_numbers(ref: list[list[np.ndarray]], test: list[list[np.ndarray]]) -> dict[str, float]:
    """Top-1 agreement (%) of the first output (argmax over axis 1, per sample and position, as
    :func:`xbc.effective.fidelity`) and SQNR (dB) / cosine over all outputs (float64)."""
    from .ortutil import cosine, sqnr_db  # noqa: PLC0415

    def top(outs):
        a = np.concatenate([np.atleast_2d(np.asarray(o[0])) for o in outs])
        return np.argmax(a, axis=1)

    r1, t1 = top(ref), top(test)
    agree = float(np.mean(r1 == t1) * 100.0)
    rf = np.concatenate([np.asarray(a, np.float64).ravel() for r in ref for a in r])
    tf = np.concatenate([np.asarray(a, np.float64).ravel() for t in test for a in t])
    out = {"top1_agree_pct": agree, "sqnr_db": float(sqnr_db(rf, tf)), "cosine": float(cosine(rf, tf)),
           "n": int(r1.size)}
    # share of the first output's error power that is the same for every sample (a constant offset
    # per output element, e.g. the bias shift that weight quantization causes)
    e = np.stack([np.asarray(t[0], np.float64) - np.asarray(r[0], np.float64) for r, t in zip(ref, test)])
    p_err = float(np.mean(e * e))
    if len(ref) >= 2 and p_err > 0:
        dc = e.mean(axis=0)
        out["offset_pct"] = 100.0 * float(np.mean(dc * dc)) / p_err
    return out


# ----------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------

@dataclass
class BenchOptions:
    models: tuple[str, ...] = DEFAULT_MODELS
    model_files: tuple[str, ...] = ()
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    targets: tuple[str, ...] = ("sme", "isaac")
    samples: int = 8
    seed: int = 0
    ablation: bool = True
    fidelity: bool = True
    placement: bool = True
    sim: bool = True
    sim_samples: int | None = None
    place_time_limit: float = 2.0
    quick: bool = False


def get_models(opts: BenchOptions, progress=None) -> list[ModelSource]:
    out: list[ModelSource] = []
    if opts.models:
        builders = load_builders()
        for name in opts.models:
            if name not in builders.BUILDERS:
                raise OptionError(f"--models: unknown model {name!r}; known: {', '.join(builders.BUILDERS)}")
            if progress is not None:
                progress.message(f"building {name}")
            t0 = time.perf_counter()
            proto = builders.build(name, seed=opts.seed)
            out.append(ModelSource(name, proto, f"examples/models.py:{name}(seed={opts.seed})",
                                   build_seconds=time.perf_counter() - t0))
    for path in opts.model_files:
        from .frontend import read_model  # noqa: PLC0415
        proto = read_model(path)
        names = {i.name for i in proto.graph.input} - {t.name for t in proto.graph.initializer}
        shapes = {k: v for k, v in opts.input_shapes.items() if k in names}
        out.append(ModelSource(Path(path).stem, proto, str(path), input_shapes=shapes))
    if not out:
        raise OptionError("nothing to benchmark: give --models NAME[,NAME] or --model FILE.onnx")
    return out


def _fixed_model(src: ModelSource) -> onnx.ModelProto:
    """The model with its dynamic input dims fixed by ``--input-shape`` (for onnxruntime feeds)."""
    if not src.input_shapes:
        return src.proto
    from .frontend import fix_input_shapes  # noqa: PLC0415
    return fix_input_shapes(src.proto, src.input_shapes, src.origin)


def _compile(src: ModelSource, target: str, pipeline: str | None, opts: BenchOptions, progress):
    from .compiler import compile_model  # noqa: PLC0415

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        res = compile_model(src.proto, target, pipeline=pipeline, input_shapes=src.input_shapes or None,
                            seed=opts.seed, quiet=True,
                            progress=progress.update if progress is not None else None)
        secs = time.perf_counter() - t0
    return res, secs, mem


def _row(label: str, target: str, pipeline: str | None, src: ModelSource, opts: BenchOptions,
         feeds, ref, progress) -> tuple[dict[str, Any], Any]:
    row: dict[str, Any] = {"label": label, "target": target}
    try:
        res, secs, mem = _compile(src, target, pipeline, opts, progress)
    except XbcError as e:
        row["error"] = str(e)
        return row, None
    except Exception as e:  # noqa: BLE001 - a bug in a pass: report it in the row, keep benchmarking
        row["error"] = f"internal error: {_reason(e)}"
        return row, None
    row.update(pipeline=res.pipeline, seconds=round(secs, 3), peak_rss_mb=round(mem.peak_mb, 1),
               rss_increase_mb=round(mem.delta_mb, 1), memory_method=mem.method,
               pass_seconds={k: round(v, 4) for k, v in res.ctx.timings.items()})
    xb = count_crossbars(res.graph)
    if xb is None:
        row["crossbars"] = row["nonempty"] = _na("no crossbar program: the pipeline has no slice-bits")
    else:
        row["crossbars"], row["nonempty"] = xb
    try:
        from .summary import summarize  # noqa: PLC0415
        summ = summarize(res)
        row["summary_crossbars"] = summ.get("crossbars", {})
        row["summary_reduction"] = summ.get("reduction", {})
        if "adc" in summ:
            row["adc"] = {k: summ["adc"][k] for k in ("max_bits", "clipping_columns", "target_bits") if k in summ["adc"]}
        row["warnings"] = len(summ.get("warnings", []))
    except Exception as e:  # noqa: BLE001
        row["summary_crossbars"] = _na(f"xbc.summary.summarize failed ({_reason(e)})")
    row["stage_counts"] = stage_counts(res.graph)
    if opts.fidelity and feeds:
        try:
            if progress is not None:
                progress.message(f"fidelity {label}")
            test = _effective_outputs(res, feeds)
            row["fidelity"] = fidelity_numbers(ref, test)
        except Exception as e:  # noqa: BLE001 - reported as n/a with the reason
            row["fidelity"] = _na(_reason(e))
    else:
        row["fidelity"] = _na("disabled" if not opts.fidelity else "no samples")
    return row, res


def _placement_section(res, opts: BenchOptions) -> dict[str, Any]:
    try:
        from . import placement  # noqa: PLC0415
    except Exception as e:  # noqa: BLE001
        return _na(f"xbc.placement unavailable ({_reason(e)})")
    if not hasattr(placement, "bench_placement"):
        return _na("xbc.placement has no bench_placement")
    try:
        inst = _placement_instance(res)
    except Exception as e:  # noqa: BLE001
        return _na(f"cannot build the placement instance ({_reason(e)})")
    lines: list[str] = []
    try:
        t0 = time.perf_counter()
        rep = placement.bench_placement(inst, placement.Options(time_limit=opts.place_time_limit, seed=opts.seed),
                                        print_fn=lines.append)
        secs = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001
        return _na(f"bench_placement failed ({_reason(e)})")
    out: dict[str, Any] = {"lines": lines, "seconds": round(secs, 3)}
    for k, r in (rep or {}).items():
        if isinstance(r, dict):
            out[k] = {kk: r.get(kk) for kk in ("objective", "bound", "gap", "status", "seconds", "objective_terms")}
    return out


def _placement_instance(res):
    """The placement instance of a compiled graph, as the ``place`` pass builds it."""
    mod = importlib.import_module("xbc.passes.place")
    for fn in ("instance_from_graph", "build_instance", "make_instance", "graph_instance"):
        if hasattr(mod, fn):
            return getattr(mod, fn)(res.graph, res.target)
    raise XbcError("passes/place.py exposes no instance builder (instance_from_graph)")


def _sim_section(res, src: ModelSource, opts: BenchOptions, feeds) -> dict[str, Any]:
    try:
        simbench = importlib.import_module("xbc.backends.sim.bench")
    except Exception as e:  # noqa: BLE001
        return _na(f"xbc.backends.sim.bench unavailable ({_reason(e)})")
    if not hasattr(simbench, "bench_sim"):
        return _na("xbc.backends.sim.bench has no bench_sim")
    try:
        from .bundle import write_bundle  # noqa: PLC0415
    except Exception as e:  # noqa: BLE001
        return _na(f"xbc.bundle unavailable ({_reason(e)})")
    n = max(1, min(len(feeds), opts.sim_samples if opts.sim_samples is not None else 2))
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="xbc-bench-") as tmp:
        try:
            path = write_bundle(res, os.path.join(tmp, "bundle"))
        except Exception as e:  # noqa: BLE001
            return _na(f"write_bundle failed ({_reason(e)})")
        try:
            out = simbench.bench_sim(path, feeds=feeds[:n], model=_fixed_model(src), seed=opts.seed,
                                     print_fn=lines.append)
        except Exception as e:  # noqa: BLE001
            return _na(f"bench_sim failed ({_reason(e)})")
    out = dict(out) if isinstance(out, dict) else {"result": out}
    out["lines"] = "\n".join(lines).splitlines()
    return out


def bench_model(src: ModelSource, opts: BenchOptions, progress=None) -> dict[str, Any]:
    from . import ortutil, targets  # noqa: PLC0415
    from .frontend import load_model  # noqa: PLC0415

    rep: dict[str, Any] = {"model": src.name, "origin": src.origin, "build_seconds": round(src.build_seconds, 3)}
    graph = load_model(src.proto, src.input_shapes or None, where=src.origin)
    layers = list(graph.layers())
    rep["crossbar_layers"] = len(layers)
    rep["weights"] = int(sum(n.layer.groups * n.layer.rows * n.layer.cols for n in layers))
    rep["depthwise_layers"] = int(sum(1 for n in layers if n.layer.groups > 1 and n.layer.cols == 1))
    fixed = _fixed_model(src)
    feeds = [ortutil.random_inputs(fixed, seed=opts.seed + 1000 + i, shapes=src.input_shapes or None)
             for i in range(opts.samples)]
    ref: list[list[np.ndarray]] = []
    if feeds:
        sess = ortutil.session(fixed)
        names = [o.name for o in sess.get_outputs()]
        sess.run(names, feeds[0])  # warm-up
        t0 = time.perf_counter()
        ref = [sess.run(names, f) for f in feeds]
        rep["ort_ms_per_image"] = round(1000 * (time.perf_counter() - t0) / len(feeds), 3)
        rep["float_logit_std"] = float(np.std(np.concatenate([r[0].ravel() for r in ref])))
    else:
        rep["ort_ms_per_image"] = _na("--samples 0")
    rows: list[dict[str, Any]] = []
    full: dict[str, Any] = {}
    for t in opts.targets:
        tgt = targets.load(t)
        if progress is not None:
            progress.message(f"{src.name}: compiling for {t}")
        row, res = _row(t, t, None, src, opts, feeds, ref, progress)
        row["kind"] = "target"
        if t == opts.targets[0]:
            full[t] = res          # placement and simulator sections use the first target's compile
        del res
        rows.append(row)
        if opts.ablation:
            for label, pipe in ablation_pipelines(tgt.pipeline):
                if progress is not None:
                    progress.message(f"{src.name}: {t} {label}")
                r, _ = _row(f"{t} {label}", t, pipe, src, opts, feeds, ref, progress)
                r["kind"] = "ablation"
                r["step"] = label
                rows.append(r)
    # ratios
    isaac = next((r.get("crossbars") for r in rows if r["target"] == "isaac" and r["kind"] == "target"), None)
    for r in rows:
        xb = r.get("crossbars")
        if not isinstance(xb, int) or xb <= 0:
            continue
        dense = next((d.get("crossbars") for d in rows
                      if d["target"] == r["target"] and d.get("step") == "dense"), None)
        if isinstance(dense, int) and dense > 0:
            r["vs_dense"] = round(dense / xb, 4)
        if isinstance(isaac, int) and isaac > 0:
            r["vs_isaac"] = round(isaac / xb, 4)
    rep["rows"] = rows
    rep["paper"] = PAPER.get(src.name)
    first = opts.targets[0] if opts.targets else None
    res0 = full.get(first) if first else None
    if res0 is None:
        rep["placement"] = _na("the first target did not compile")
        rep["simulator"] = _na("the first target did not compile")
        return rep
    rep["placement_target"] = first
    if opts.placement:
        if progress is not None:
            progress.message(f"{src.name}: placement greedy vs CP-SAT")
        rep["placement"] = _placement_section(res0, opts)
    else:
        rep["placement"] = _na("disabled (--no-placement)")
    if opts.sim and feeds:
        if progress is not None:
            progress.message(f"{src.name}: simulator")
        rep["simulator"] = _sim_section(res0, src, opts, feeds)
    else:
        rep["simulator"] = _na("disabled (--no-sim)" if not opts.sim else "--samples 0")
    return rep


def run_bench(models: tuple[str, ...] | list[str] | None = DEFAULT_MODELS, *, model_files=(), input_shapes=None,
              targets=("sme", "isaac"), samples: int = 8, seed: int = 0, quick: bool = False,
              ablation: bool = True, fidelity: bool = True, placement: bool = True, sim: bool = True,
              place_time_limit: float | None = None, progress=None) -> dict[str, Any]:
    """Run the benchmark and return the report dict (``render_text`` prints it)."""
    if quick:
        models = tuple(QUICK_MODELS if models is None or tuple(models) == DEFAULT_MODELS else models)
    opts = BenchOptions(models=tuple(models or ()), model_files=tuple(model_files), input_shapes=dict(input_shapes or {}),
                        targets=tuple(targets), samples=int(samples), seed=int(seed), ablation=ablation,
                        fidelity=fidelity, placement=placement, sim=sim, quick=quick,
                        place_time_limit=place_time_limit if place_time_limit is not None else 2.0)
    if opts.samples < 0:
        raise OptionError("--samples must be >= 0")
    from . import targets as tg  # noqa: PLC0415
    for t in opts.targets:
        tg.load(t)  # a bad target name fails before anything is built
    t0 = time.perf_counter()
    report: dict[str, Any] = {"schema": "xbc.bench", "version": 1, "samples": opts.samples, "seed": opts.seed,
                              "targets": list(opts.targets), "quick": quick, "paper": PAPER["source"], "models": []}
    for src in get_models(opts, progress):
        report["models"].append(bench_model(src, opts, progress))
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                          * (1 if sys.platform == "darwin" else 1024) / 2**20, 1)
    return report


# ----------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------

def _table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    right = right if right is not None else set(range(1, len(headers)))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def _num(v: Any, fmt: str = "{:,}") -> str:
    if isinstance(v, dict) and "na" in v:
        return "n/a"
    if v is None:
        return "-"
    if isinstance(v, float) and not np.isfinite(v):
        return "inf" if v > 0 else "-inf"
    return fmt.format(v)


def render_text(report: dict[str, Any]) -> str:
    out: list[str] = []
    for m in report["models"]:
        out.append(f"== {m['model']}: {m['crossbar_layers']} crossbar layers ({m['depthwise_layers']} depthwise), "
                   f"{m['weights']:,} weights; {m['origin']}")
        ort = m.get("ort_ms_per_image")
        out.append(f"   built in {m['build_seconds']:.1f} s; onnxruntime float model {_num(ort, '{:.2f}')} ms/image; "
                   f"fidelity on {report['samples']} random N(0,1) inputs")
        hdr = ["configuration", "crossbars", "non-empty", "vs dense", "vs isaac", "top-1 agree %", "SQNR dB",
               "err offset %", "compile s", "peak RSS MB", "+RSS MB"]
        rows, notes = [], []
        for r in m["rows"]:
            if "error" in r:
                rows.append([r["label"]] + ["error"] + ["-"] * 9)
                notes.append(f"   {r['label']}: error: {r['error']}")
                continue
            fid = r.get("fidelity", {})
            if "na" in fid:
                notes.append(f"   {r['label']}: fidelity n/a ({fid['na']})")
            if isinstance(r.get("crossbars"), dict):
                notes.append(f"   {r['label']}: crossbars n/a ({r['crossbars']['na']})")
            rows.append([r["label"], _num(r.get("crossbars")), _num(r.get("nonempty")), _num(r.get("vs_dense"), "{:.2f}x"),
                         _num(r.get("vs_isaac"), "{:.2f}x"), _num(fid.get("top1_agree_pct"), "{:.1f}"),
                         _num(fid.get("sqnr_db"), "{:.1f}"), _num(fid.get("offset_pct"), "{:.0f}"),
                         _num(r.get("seconds"), "{:.2f}"),
                         _num(r.get("peak_rss_mb"), "{:.0f}"), _num(r.get("rss_increase_mb"), "{:.0f}")])
        out += ["   " + s for s in _table(hdr, rows)]
        out += notes
        paper = m.get("paper")
        if paper:
            out.append(f"   paper ({report['paper']}): {paper['reduction']}x fewer crossbars than the dense "
                       f"baseline, < {paper['top1_drop_pct']}% top-1 drop on ImageNet")
        else:
            out.append(f"   paper ({report['paper']}): no claim for this model (claims: ResNet-50 8.7x, "
                       f"MobileNet-v2 2.1x, < 0.3% top-1 drop)")
        for r in m["rows"]:
            if r.get("kind") != "target" or "error" in r:
                continue
            sc = r.get("summary_crossbars")
            if isinstance(sc, dict) and "na" in sc:
                out.append(f"   {r['label']} summary: n/a ({sc['na']})")
            elif sc:
                known = ["isaac", "dense", "sliced", "squeezed", "lower_bound", "physical"]
                order = sorted(sc, key=lambda k: (known.index(k) if k in known else len(known), k))
                line = ", ".join(f"{k} {sc[k]:,}" for k in order if isinstance(sc[k], (int, float)))
                red = r.get("summary_reduction") or {}
                if red:
                    line += "; reduction " + ", ".join(f"{k} {_num(v, '{:.2f}x')}" for k, v in red.items())
                adc = r.get("adc")
                if adc:
                    line += f"; ADC bits needed max {adc.get('max_bits')} (target {adc.get('target_bits')}), " \
                            f"{adc.get('clipping_columns', 0):,} clipping columns"
                out.append(f"   {r['label']} summary crossbars: {line}")
        # seconds per pass
        targ = [r for r in m["rows"] if r.get("kind") == "target" and "pass_seconds" in r]
        if targ:
            names: list[str] = []
            for r in targ:
                names += [n for n in r["pass_seconds"] if n not in names]
            prow = [[n] + [_num(r["pass_seconds"].get(n), "{:.3f}") for r in targ] for n in names]
            prow.append(["total compile"] + [_num(r.get("seconds"), "{:.3f}") for r in targ])
            out.append("   seconds per pass:")
            out += ["   " + s for s in _table(["pass"] + [r["label"] for r in targ], prow)]
        pl = m.get("placement")
        tgt0 = m.get("placement_target", "")
        if isinstance(pl, dict) and "na" in pl:
            out.append(f"   placement ({tgt0}): n/a ({pl['na']})")
        elif pl:
            out.append(f"   placement ({tgt0}), greedy vs CP-SAT:")
            out += ["     " + s for s in pl.get("lines", [])]
        sim = m.get("simulator")
        if isinstance(sim, dict) and "na" in sim:
            out.append(f"   simulator ({tgt0}): n/a ({sim['na']})")
        elif sim:
            lines = sim.get("lines") or [_sim_line(sim, m)]
            out.append(f"   simulator ({tgt0}): " + lines[0])
            out += ["     " + s for s in lines[1:]]
        out.append("")
    out.append(f"total {report['seconds']:.1f} s, process peak RSS {report['process_peak_rss_mb']:.0f} MB")
    return "\n".join(out)


def _sim_line(sim: dict[str, Any], m: dict[str, Any]) -> str:
    ms = sim.get("sim_ms_per_image")
    ort = sim.get("ort_ms_per_image", m.get("ort_ms_per_image"))
    parts = []
    if ms is not None:
        parts.append(f"{ms:.1f} ms/image")
    if isinstance(ort, (int, float)):
        parts.append(f"onnxruntime {ort:.2f} ms/image")
        if ms:
            parts.append(f"x{ms / ort:.0f} slower")
    extra = {k: v for k, v in sim.items() if k not in ("sim_ms_per_image", "ort_ms_per_image") and
             isinstance(v, (int, float, str))}
    if extra:
        parts.append(", ".join(f"{k} {v}" for k, v in sorted(extra.items())))
    return "; ".join(parts) if parts else json.dumps(sim, sort_keys=True, default=str)[:200]


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------

def _split(s: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (s or "").split(",") if x.strip())


@click.command("bench")
@click.option("--models", default=None, metavar="NAME[,NAME]",
              help="Built-in models to build and benchmark (resnet50, mobilenet_v2, resnet_tiny, "
                   "mobilenet_tiny, tiny_cnn). Default: resnet50,mobilenet_v2 (tiny ones with --quick).")
@click.option("--model", "model_files", multiple=True, type=click.Path(dir_okay=False),
              help="Benchmark this ONNX file too (repeatable); with only --model, no built-in model runs.")
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=D1,D2,..",
              help="Fix a dynamic input shape of the --model files that have this input (repeatable).")
@click.option("--targets", default="sme,isaac", show_default=True, help="Targets to compile for (comma separated).")
@click.option("--samples", default=None, type=int, help="Random inputs for fidelity and timing (default 8; 4 with --quick).")
@click.option("--seed", default=0, show_default=True, help="Seed of the model builders and of the compiles.")
@click.option("--quick", is_flag=True, help="Small models and few samples (a smoke test of every section).")
@click.option("--no-ablation", is_flag=True, help="Only the targets' default pipelines, no per-pass ablation rows.")
@click.option("--no-placement", is_flag=True, help="Skip the greedy vs CP-SAT placement comparison.")
@click.option("--no-sim", is_flag=True, help="Skip the simulator timing.")
@click.option("--place-time-limit", default=None, type=float, help="CP-SAT time limit for the placement comparison, in deterministic seconds (default 2, as the place pass).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def bench_cmd(models, model_files, input_shape, targets, samples, seed, quick, no_ablation, no_placement, no_sim,
              place_time_limit, as_json, quiet):
    """Benchmark crossbar counts, fidelity, speed and memory (tables per model).

    \b
    Example:
      xbc bench                                   # ResNet-50 and MobileNet-v2, sme and isaac
      xbc bench --quick                           # small models, a minute
      xbc bench --model my.onnx --input-shape input=1,3,224,224 --targets sme --json
    """
    from .cli import parse_shapes  # noqa: PLC0415
    from .progress import Progress  # noqa: PLC0415

    names = _split(models)
    if models is None:
        names = () if model_files else (QUICK_MODELS if quick else DEFAULT_MODELS)
    if samples is None:
        samples = 4 if quick else 8
    tlist = _split(targets)
    if not tlist:
        raise OptionError("--targets: give at least one target, e.g. --targets sme,isaac")
    with Progress(enabled=not quiet and not as_json) as prog:
        report = run_bench(names, model_files=model_files, input_shapes=parse_shapes(input_shape), targets=tlist,
                           samples=samples, seed=seed, quick=quick, ablation=not no_ablation,
                           placement=not no_placement, sim=not no_sim, place_time_limit=place_time_limit,
                           progress=prog)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True, default=_json_default))
    else:
        click.echo(render_text(report))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
