"""The ``xbc`` command line (click).

Errors a user can cause are :class:`~xbc.errors.XbcError`: printed as one ``error:`` line, exit
code 2 (usage/input) or 1, no traceback unless ``--debug`` (accepted anywhere on the line).
Commands provided by other modules (validate, simulate, emit-rtl, report, bench) are loaded
lazily so ``xbc --help`` stays fast.
"""

from __future__ import annotations

import importlib
import json
import sys

import click

from . import __version__
from .errors import OptionError, XbcError

LAZY_COMMANDS = {
    "validate": ("xbc.bundle", "validate_cmd", "Check a bundle: schema, array hashes, conservation, placement."),
    "simulate": ("xbc.backends.sim.cli", "simulate_cmd", "Run a bundle bit-accurately; compare with onnxruntime."),
    "emit-rtl": ("xbc.backends.rtl.cli", "emit_rtl_cmd", "Write SystemVerilog, memory images and testbenches for a bundle."),
    "report": ("xbc.report", "report_cmd", "Write a self-contained HTML report of a bundle."),
    "bench": ("xbc.bench", "bench_cmd", "Benchmark crossbar counts, fidelity and speed on ResNet-50 / MobileNet-v2."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS:
            mod, attr, short = LAZY_COMMANDS[name]
            try:
                return getattr(importlib.import_module(mod), attr)
            except (ImportError, AttributeError) as e:
                why = str(e)

                @click.command(name=name, help=f"{short} (unavailable: {why})")
                def _unavailable():
                    raise XbcError(f"command {name!r} is not available in this build ({why})")
                return _unavailable
        return super().get_command(ctx, name)


def parse_shapes(items: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        if "=" not in item:
            raise OptionError(f"--input-shape {item!r}: expected NAME=D1,D2,..., e.g. input=1,3,224,224")
        name, dims = item.rsplit("=", 1)
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise OptionError(f"--input-shape {item!r}: dimensions must be integers") from None
        if not shape or any(d <= 0 for d in shape):
            raise OptionError(f"--input-shape {item!r}: dimensions must be positive integers")
        shapes[name.strip()] = shape
    return shapes


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xbc")
def cli():
    """xbc: compile ONNX models to compute-in-memory crossbar mappings.

    \b
    Example:
      xbc compile examples/tiny_cnn.onnx --target sme -o out/
      xbc validate out/
      xbc simulate out/ --random 4 --compare
    Add --debug anywhere to see tracebacks.
    """


@cli.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-t", "--target", default="sme", show_default=True, help="Target name (see 'xbc targets') or a .toml file.")
@click.option("-o", "--output", type=click.Path(file_okay=True), default=None, help="Write the mapping bundle to this directory (or .xbc file with --zip).")
@click.option("--zip", "as_zip", is_flag=True, help="Write the bundle as one .xbc zip file.")
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=D1,D2,..", help="Fix a dynamic input shape (repeatable).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a target key (repeatable), e.g. --set rows=256.")
@click.option("-p", "--pipeline", default=None, help="Pass pipeline string; default: the target's pipeline.")
@click.option("--calibration", type=click.Path(exists=False), default=None, help="Calibration inputs: an .npz of input arrays, or a folder of images.")
@click.option("--no-verify", is_flag=True, help="Do not run the IR verifier between passes.")
@click.option("--time-passes", is_flag=True, help="Print seconds per pass.")
@click.option("--print-after", multiple=True, metavar="PASS", help="Print the IR after this pass ('all' for every pass).")
@click.option("--seed", default=0, show_default=True, help="Seed for every randomized choice (synthetic calibration, solver).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of tables.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def compile_cmd(model, target, output, as_zip, input_shape, overrides, pipeline, calibration, no_verify,
                time_passes, print_after, seed, as_json, quiet):
    """Compile MODEL (an .onnx file) for a target and print the crossbar summary.

    \b
    Example:
      xbc compile resnet50.onnx --target sme -o out/ --input-shape input=1,3,224,224
      xbc compile model.onnx -t isaac -p "fold-batchnorm,quantize{weight-bits=8},slice-bits" --json
    """
    from .compiler import compile_model
    from . import calibration as calib
    from . import progress as prog

    shapes = parse_shapes(input_shape)
    reporter = prog.Progress(enabled=not quiet and not as_json)
    calib_data = calib.load_calibration(calibration, model) if calibration else None
    result = compile_model(model, target, pipeline=pipeline, overrides=overrides, input_shapes=shapes,
                           calibration=calib_data, verify=not no_verify, print_after=print_after,
                           seed=seed, quiet=quiet, progress=reporter.update,
                           print_fn=lambda s: click.echo(s, err=True))
    reporter.close()
    if output:
        from .bundle import write_bundle
        write_bundle(result, output, zip=as_zip)
    stats = result.stats
    if as_json:
        click.echo(json.dumps(stats, indent=2, sort_keys=True))
    else:
        from . import summary  # imported late: input errors are reported before it is needed
        click.echo(summary.render_text(result))
        if output:
            click.echo(f"bundle written to {output}")
    for d in result.ctx.diagnostics:
        if d.level == "warning" and not quiet:
            click.echo(str(d), err=True)
    if time_passes:
        click.echo("pass timings (s):", err=True)
        for name, secs in result.ctx.timings.items():
            click.echo(f"  {name:<20} {secs:8.3f}", err=True)


@cli.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=D1,D2,..", help="Fix a dynamic input shape (repeatable).")
@click.option("--ir", is_flag=True, help="Also print the IR as text.")
def inspect_cmd(model, input_shape, ir):
    """List MODEL's crossbar layers (op, matrix rows x cols, groups, weights) and digital ops.

    \b
    Example:
      xbc inspect examples/tiny_cnn.onnx
    """
    from .frontend import load_model

    graph = load_model(model, parse_shapes(input_shape))
    rows = []
    total = 0
    for n in graph.layers():
        L = n.layer
        w = int(L.groups * L.rows * L.cols)
        total += w
        rows.append((L.id, n.op_type, f"{L.rows}x{L.cols}", str(L.groups), f"{w:,}"))
    hdr = ("layer", "op", "matrix RxC", "groups", "weights")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(hdr)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(f"{len(rows)} crossbar layers, {total:,} weights")
    click.echo(fmt.format(*hdr))
    for r in rows:
        click.echo(fmt.format(*r))
    digital: dict[str, int] = {}
    for n in graph.nodes:
        if n.layer is None:
            key = n.op_type if not n.domain else f"{n.domain}.{n.op_type}"
            digital[key] = digital.get(key, 0) + 1
    click.echo(f"digital ops: {sum(digital.values())}")
    for k, v in sorted(digital.items()):
        click.echo(f"  {k:<24} {v}")
    if ir:
        click.echo(graph.dump())


@cli.command("targets")
@click.argument("name", required=False)
@click.option("--keys", is_flag=True, help="Print the table of every target key (meaning, unit, range).")
def targets_cmd(name, keys):
    """List the built-in targets, show one resolved target, or document the keys.

    \b
    Example:
      xbc targets
      xbc targets sme
      xbc targets --keys
    """
    from . import targets

    if keys:
        click.echo(targets.keys_table())
        return
    if name:
        t = targets.load(name)
        click.echo(json.dumps(t.to_dict(), indent=2, sort_keys=True))
        click.echo(f"sha256: {t.sha256}")
        return
    for n in targets.available():
        t = targets.load(n)
        click.echo(f"{n:<10} {t.description}")
        click.echo(f"{'':<10} pipeline: {t.pipeline}")


@cli.command("passes")
def passes_cmd():
    """List the registered passes with their options and defaults.

    \b
    Example:
      xbc passes
    """
    import dataclasses

    from .passmanager import format_option, kebab, registry

    for name, cls in sorted(registry().items()):
        click.echo(f"{name:<18} {cls.summary}")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            click.echo(f"{'':<20}{kebab(f.name)}={format_option(default)}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        cli.main(args=argv, prog_name="xbc", standalone_mode=False)
        return 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as e:
        if debug:
            raise
        e.show()
        return 2
    except XbcError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as e:  # a bug in xbc
        if debug:
            raise
        click.echo(f"internal error: {type(e).__name__}: {e} (this is a bug in xbc; rerun with --debug "
                   f"for the traceback and report it)", err=True)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
