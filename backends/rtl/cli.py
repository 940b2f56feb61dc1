"""``xbc emit-rtl``: SystemVerilog, memory images and testbenches for a bundle (see emit.py)."""

from __future__ import annotations

import click

from xbc.errors import OptionError


def _parse_layers(text: str | None) -> list[str] | None:
    if text is None:
        return None
    ids = [t.strip() for t in text.split(",") if t.strip()]
    if not ids:
        raise OptionError("--layers: give one or more layer ids separated by commas, e.g. --layers L000_conv1,L003_fc")
    return ids


@click.command("emit-rtl")
@click.argument("bundle", type=click.Path(exists=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Directory to write (replaced if it exists).")
@click.option("--layers", default=None, metavar="ID,...", help="Only these crossbar layers (default: all).")
@click.option("--vectors", default=8, show_default=True, type=click.IntRange(1, 100000),
              help="Input vectors per layer testbench.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random stimulus.")
@click.option("--stimulus", type=click.Choice(["model", "random"]), default="model", show_default=True,
              help="model: the all-maximum vector plus real layer inputs from a simulator run; random: synthetic.")
@click.option("--run", is_flag=True, help="Run every testbench in Icarus Verilog now (make) and compare.")
@click.option("--lint", is_flag=True, help="Lint every datapath with 'verilator --lint-only -Wall'.")
def emit_rtl_cmd(bundle, output, layers, vectors, seed, stimulus, run, lint):
    """Write SystemVerilog for BUNDLE's crossbar layers: one memory image per physical crossbar,
    the crossbar macro model, a datapath and a self-checking testbench per layer, files.f and a
    Makefile whose default target runs every testbench in Icarus Verilog.

    \b
    Example:
      xbc emit-rtl out/ -o rtl/ --vectors 8 --run
      cd rtl && make && make lint
    """
    from .emit import emit_rtl

    res = emit_rtl(bundle, output, layers=_parse_layers(layers), vectors=vectors, seed=seed, stimulus=stimulus,
                   run=run, lint=lint)
    click.echo(f"{'layer':<28} {'module':<34} {'xbars':>5} {'columns':>7} {'steps':>6} {'acc bits':>8} "
               f"{'cycles/vector':>13}")
    for p in res.plans:
        click.echo(f"{p.layer_id:<28} {p.module:<34} {p.X:>5} {p.E:>7} {p.T:>6} {p.acc_w:>8} {p.cycles:>13}")
    click.echo(f"RTL for {len(res.plans)} layer(s) written to {res.out_dir} "
               f"(expected values from {res.manifest['layers'][0]['expected_from']})")
    if lint:
        click.echo("verilator --lint-only -Wall: clean")
    if run:
        for line in res.log.splitlines():
            if line.startswith("XBC PASS"):
                click.echo(line)
        click.echo(f"all {len(res.plans)} testbench(es) pass in Icarus Verilog; outputs equal the expected values bit for bit")
    else:
        click.echo(f"run the testbenches with: make -C {res.out_dir}")
