"""``xbc simulate``: run a bundle bit-accurately, report ADC clipping, compare with onnxruntime.

Inputs (one of): ``--input x.npy`` (the model's single input), ``--inputs file.npz`` (one array
per input name), ``--images DIR`` (image files, preprocessed exactly like ``xbc compile --calibration DIR``:
:func:`xbc.calibration.load_calibration`), or ``--random N`` (N
deterministic N(0,1) samples, the default with N=1). An array whose shape is the bundle's input
shape is one sample; one with an extra leading axis (or, for batch-1 models, a larger batch) is
several samples, simulated one by one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click
import numpy as np
from onnx import helper

from xbc.errors import OptionError

from .engine import MODES



def input_specs(model) -> dict[str, tuple[tuple, np.dtype]]:
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        out[i.name] = (tuple(d.dim_value for d in tt.shape.dim), np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)))
    return out


def split_samples(name: str, arr: np.ndarray, shape: tuple, where: str) -> list[np.ndarray]:
    """One array -> list of per-sample arrays of exactly ``shape``."""
    arr = np.asarray(arr)
    if arr.shape == shape:
        return [arr]
    if arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
        return [arr[i] for i in range(arr.shape[0])]
    if shape and arr.ndim == len(shape) and arr.shape[1:] == shape[1:] and shape[0] >= 1 \
            and arr.shape[0] % shape[0] == 0:
        b = shape[0]
        return [arr[i:i + b] for i in range(0, arr.shape[0], b)]
    raise OptionError(f"{where}: array for input {name!r} has shape {list(arr.shape)}; the bundle expects "
                      f"{list(shape)} (or a stack of such samples)")


def load_images(folder: str, model) -> list[dict[str, np.ndarray]]:
    """A folder of images -> one feed per image, preprocessed exactly as ``xbc compile
    --calibration DIR`` does (:func:`xbc.calibration.load_calibration`: RGB, [0, 1], bilinear
    resize to the input's H x W, ImageNet mean/std, NCHW)."""
    from xbc.calibration import load_calibration

    if not Path(folder).is_dir():
        raise OptionError(f"--images {folder}: not a directory")
    specs = input_specs(model)
    if len(specs) != 1:
        raise OptionError(f"--images needs a model with a single input; this one has {', '.join(specs)}")
    (name, (shape, dt)), = specs.items()
    arr = load_calibration(folder, model)[name]
    return [{name: s.astype(dt)} for s in split_samples(name, arr, shape, f"--images {folder}")]


def build_feeds(model, input_npy, inputs_npz, images, n_random, seed) -> list[dict[str, np.ndarray]]:
    specs = input_specs(model)
    given = sum(x is not None for x in (input_npy, inputs_npz, images))
    if given > 1:
        raise OptionError("give only one of --input, --inputs, --images")
    if input_npy is not None:
        if len(specs) != 1:
            raise OptionError(f"--input: the model has {len(specs)} inputs ({', '.join(specs)}); use --inputs file.npz")
        try:
            arr = np.load(input_npy, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise OptionError(f"--input {input_npy}: cannot read a .npy array ({e})") from None
        (name, (shape, dt)), = specs.items()
        return [{name: s.astype(dt)} for s in split_samples(name, arr, shape, f"--input {input_npy}")]
    if inputs_npz is not None:
        try:
            z = np.load(inputs_npz, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise OptionError(f"--inputs {inputs_npz}: cannot read an .npz file ({e})") from None
        missing = [n for n in specs if n not in z.files]
        if missing:
            raise OptionError(f"--inputs {inputs_npz}: no array for input(s) {', '.join(missing)} "
                              f"(it holds {', '.join(z.files) or 'nothing'})")
        per = {n: split_samples(n, z[n], shape, f"--inputs {inputs_npz}") for n, (shape, _) in specs.items()}
        counts = {len(v) for v in per.values()}
        if len(counts) != 1:
            raise OptionError(f"--inputs {inputs_npz}: the inputs hold different numbers of samples")
        return [{n: per[n][i].astype(specs[n][1]) for n in specs} for i in range(counts.pop())]
    if images is not None:
        return load_images(images, model)
    n = 1 if n_random is None else n_random
    if n < 1:
        raise OptionError(f"--random {n}: give a positive number of samples")
    rng_feeds = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        f = {}
        for name, (shape, dt) in specs.items():
            if np.issubdtype(dt, np.floating):
                f[name] = rng.standard_normal(shape).astype(dt)
            elif dt == np.bool_:
                f[name] = rng.random(shape) < 0.5
            else:
                f[name] = rng.integers(0, 4, size=shape).astype(dt)
        rng_feeds.append(f)
    return rng_feeds


def _finite(v):
    """JSON-safe: non-finite floats (an exact layer has SQNR +inf) become "inf" / "-inf" / "nan"."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not np.isfinite(v):
        return "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _table(hdr, rows) -> list[str]:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(hdr)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*hdr)] + [fmt.format(*map(str, r)) for r in rows]


def _db(v) -> str:
    if v is None:
        return "-"
    return "inf" if v == float("inf") else f"{v:.1f}"


@click.command("simulate")
@click.argument("bundle", type=click.Path())
@click.option("--input", "input_npy", type=click.Path(), default=None, help="A .npy array for the model's single input.")
@click.option("--inputs", "inputs_npz", type=click.Path(), default=None, help="An .npz file with one array per input name.")
@click.option("--images", type=click.Path(), default=None, help="A folder of images, preprocessed like --calibration DIR at compile (resize, ImageNet mean/std).")
@click.option("--random", "n_random", type=int, default=None, help="Simulate N random N(0,1) samples (default 1 when no input is given).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random samples.")
@click.option("--compare", is_flag=True, help="Also run the original float model in onnxruntime: top-1, SQNR, cosine, per layer.")
@click.option("--model", type=click.Path(), default=None, help="The original float model for --compare (default: the bundle's recorded model file).")
@click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
              help="bit-serial: exact ADC model per DAC cycle and row chunk; ideal: ADCs never clip; auto: bit-serial (same results, fast path where nothing can clip).")
@click.option("--adc-bits", type=int, default=None, help="Simulate ADCs of N bits instead of the target's.")
@click.option("--exhaustive", is_flag=True, help="Compute every DAC cycle and row chunk explicitly (slow; for cross-checking).")
@click.option("-o", "--output", type=click.Path(), default=None, help="Write the simulated outputs to this .npz file.")
@click.option("--threads", default=1, show_default=True, help="Threads for the simulator's BLAS kernels, onnxruntime (digital ops) and --compare.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Only the summary lines (no per-layer tables, no progress).")
def simulate_cmd(bundle, input_npy, inputs_npz, images, n_random, seed, compare, model, mode, adc_bits, exhaustive,
                 output, threads, as_json, quiet):
    """Run BUNDLE bit-accurately (crossbar cells, DAC slices, ADC clipping) on inputs.

    \b
    Example:
      xbc simulate out/ --random 4 --compare
      xbc simulate out/ --inputs batch.npz --adc-bits 5 --compare --model resnet50.onnx
      xbc simulate out.xbc --images photos/ -o logits.npz
    """
    from xbc import progress as prog
    from xbc.bundle import read_bundle

    from . import runner

    b = read_bundle(bundle)
    feeds = build_feeds(b.graph, input_npy, inputs_npz, images, n_random, seed)
    sim = runner.Simulator(b, mode=mode, adc_bits=adc_bits, exhaustive=exhaustive, threads=threads)
    reporter = prog.Progress(enabled=not quiet and not as_json)
    results = []
    cmp = None
    if not compare:
        for f in reporter.track(feeds, "simulate"):
            results.append(sim.run(f, keep_layers=False))
        res = runner.merge_results(results)
    reporter.close()
    if compare:
        proto, mpath = runner.find_model(b, model)
        want = (b.mapping.get("model") or {}).get("sha256")
        if model is not None and want and hashlib.sha256(Path(model).read_bytes()).hexdigest() != want:
            click.echo(f"note: {model} is not the model file this bundle was compiled from (sha256 differs); "
                       f"comparing anyway", err=True)
        cmp = runner.compare(sim, feeds, model=proto, progress=reporter.update)
        reporter.close()
        res = cmp.sim
        cmp.model_path = mpath or model
    if output:
        try:
            np.savez(output, **res.outputs)
        except OSError as e:
            raise OptionError(f"-o {output}: cannot write ({e.strerror or e})") from None
    adc = adc_bits if adc_bits is not None else b.target.get("adc_bits")
    if as_json:
        d = {"bundle": str(bundle), "samples": len(feeds), "mode": mode, "adc_bits": adc, "exhaustive": exhaustive,
             "seconds": res.seconds, "conversions": res.conversions, "clipped": res.clipped,
             "clipped_fraction": res.clipped_fraction,
             "layers": [{"layer": s.layer_id, "node": s.node, "conversions": s.conversions, "clipped": s.clipped,
                         "clipped_fraction": s.clipped_fraction, "columns": s.columns,
                         "columns_may_clip": s.columns_may_clip} for s in res.layers.values()]}
        if cmp is not None:
            d["compare"] = cmp.to_dict()
        click.echo(json.dumps(_finite(d), indent=2, sort_keys=True))
        return
    n = len(feeds)
    may = sum(k.info.columns_may_clip for k in sim.kernels.values())
    if mode == "ideal" and may:
        click.echo(f"note: ideal mode ignores ADC saturation; {may:,} columns could clip with {adc}-bit ADCs "
                   f"(use --mode bit-serial to model it)", err=True)
    click.echo(f"simulated {n} sample{'s' * (n != 1)} of {bundle} (mode {mode}{', exhaustive' if exhaustive else ''}, "
               f"ADC {adc} bits) in {res.seconds:.3f} s ({res.seconds / n:.4f} s/sample)")
    click.echo(f"ADC conversions: {res.conversions:,}  clipped: {res.clipped:,} ({100 * res.clipped_fraction:.4f}%)")
    if not quiet:
        rows = [(s.layer_id, s.node, f"{s.conversions:,}", f"{s.clipped:,}", f"{100 * s.clipped_fraction:.4f}",
                 f"{s.columns_may_clip}/{s.columns}", f"{1000 * s.seconds / n:.2f}") for s in res.layers.values()]
        for line in _table(("layer", "node", "conversions", "clipped", "clipped %", "cols may clip", "ms/sample"), rows):
            click.echo("  " + line)
    if cmp is not None:
        click.echo(f"vs onnxruntime on the float model {cmp.model_path or ''}:")
        first = next((d for d in cmp.outputs.values() if "top1" in d), None)
        if first is not None:
            click.echo(f"  top-1 agreement: {first['top1_agree']}/{first['top1_total']} ({100 * first['top1']:.1f}%)")
        for name, d in cmp.outputs.items():
            click.echo(f"  output {name}: SQNR {_db(d['sqnr_db'])} dB, cosine {d['cosine']:.6f}")
        if not quiet:
            rows = [(lf.layer_id, lf.tensor, _db(lf.sqnr_db), "-" if lf.cosine is None else f"{lf.cosine:.6f}",
                     f"{100 * lf.clipped_fraction:.4f}") for lf in cmp.layers]
            click.echo("  per layer (crossbar output vs the float model's same tensor):")
            for line in _table(("layer", "tensor", "SQNR dB", "cosine", "clipped %"), rows):
                click.echo("    " + line)
    if output:
        click.echo(f"outputs written to {output}")
