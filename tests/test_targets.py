"""Targets are data: every built-in loads, --set overrides (cost.* too), and every wrong key,
value or type is an OptionError naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xbc import targets
from xbc.errors import OptionError
from xbc.passmanager import parse_pipeline, pipeline_spec

BUILTIN = ("bitslice", "isaac", "mars", "sme")


def test_builtin_targets_are_listed():
    assert set(BUILTIN) <= set(targets.available())


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_target_loads(name):
    t = targets.load(name)
    assert t.name == name and t.description
    assert set(t.cost) == set(targets.COST_KEYS), "every cost constant is given"
    assert t.sources, "numbers cite their sources"
    assert 1 <= t.rows_active <= t.rows and t.cols % t.partitions == 0
    assert t.dac_cycles == -(-t.input_bits // t.dac_bits)
    assert t.capacity == t.crossbars_per_tile * t.tiles
    assert targets.load(name).sha256 == t.sha256          # deterministic hash
    assert len(t.sha256) == 64
    assert json.loads(json.dumps(t.to_dict(), sort_keys=True))["name"] == name


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_target_pipeline_parses(name):
    t = targets.load(name)
    passes = parse_pipeline(t.pipeline)
    assert [p.name for p in passes] == [s.split("{")[0] for s in t.pipeline.split(",")]
    assert parse_pipeline(pipeline_spec(passes)) == passes


def test_design_facts_of_the_targets():
    isaac, sme, bitslice, mars = (targets.load(n) for n in ("isaac", "sme", "bitslice", "mars"))
    assert (isaac.rows, isaac.cols, isaac.cell_bits, isaac.weight_bits, isaac.dac_bits, isaac.adc_bits) == \
        (128, 128, 2, 16, 1, 8)
    assert isaac.weight_encoding == "offset" and isaac.crossbars_per_tile == 96
    assert (sme.cell_bits, sme.weight_bits, sme.weight_encoding) == (1, 8, "split")
    assert bitslice.cell_bits == 2 and bitslice.weight_bits == 8
    assert mars.technology == "sram" and mars.rows_active < mars.rows and mars.partitions > 1
    for t in (sme, bitslice, isaac):
        assert t.technology == "reram"


def test_set_overrides_including_cost():
    base = targets.load("sme")
    t = targets.load("sme", ["rows=256", "cols=64", "cost.e_adc_pj_8b=2.5", "signed_digits=false",
                             "pipeline=cleanup", "description=custom", "tiles=7"])
    assert (t.rows, t.cols, t.signed_digits, t.pipeline, t.description, t.tiles) == (256, 64, False, "cleanup", "custom", 7)
    assert t.cost["e_adc_pj_8b"] == 2.5 and isinstance(t.cost["e_adc_pj_8b"], float)
    assert t.cost["e_cell_pj"] == base.cost["e_cell_pj"]
    assert t.sha256 != base.sha256
    assert targets.load("sme", ["cost.t_cycle_ns=100"]).cost["t_cycle_ns"] == 100.0
    assert t.replace(rows=512).rows == 512
    with pytest.raises(OptionError, match=r"key 'rows' = 1 is out of range \[2, 4096\]"):
        base.replace(rows=1)


@pytest.mark.parametrize("override, match", [
    ("foo=1", r"--set foo: unknown target key; known keys: name, description"),
    ("cost.foo=1", r"--set cost.foo: unknown cost key; known: e_cell_pj"),
    ("rows", r"--set 'rows': expected KEY=VALUE"),
    ("rows=1", r"key 'rows' = 1 is out of range \[2, 4096\] word lines"),
    ("rows=abc", r"--set rows=abc: expected a number \(int\)"),
    ("rows=12.5", r"--set rows=12.5: expected a number \(int\)"),
    ("cell_bits=9", r"key 'cell_bits' = 9 is out of range \[1, 4\] bits"),
    ("cost.e_adc_pj_8b=-1", r"key 'cost.e_adc_pj_8b' = -1.0 is out of range"),
    ("cost.e_adc_pj_8b=fast", r"--set cost.e_adc_pj_8b=fast: expected a number \(float\)"),
    ("signed_digits=maybe", r"--set signed_digits=maybe: expected true or false"),
    ("weight_encoding=gray", r"key 'weight_encoding' is 'gray'; allowed: split, offset"),
    ("technology=pcm", r"key 'technology' is 'pcm'; allowed: reram, sram"),
    ("rows_active=200", r"rows_active = 200 exceeds rows = 128"),
    ("partitions=3", r"cols = 128 is not a multiple of partitions = 3"),
    ("weight_encoding=offset", r"signed_digits needs weight_encoding = 'split'"),
    ("cost=1", r"set the table's entries one by one, e.g. cost.NAME=VALUE"),
])
def test_bad_overrides_are_clear_errors(override, match):
    with pytest.raises(OptionError, match=match):
        targets.load("sme", [override])


def test_target_files(tmp_path: Path):
    src = (targets.target_dir() / "sme.toml").read_text()
    good = tmp_path / "mine.toml"
    good.write_text(src.replace('name = "sme"', 'name = "mine"').replace("rows = 128", "rows = 64")
                    .replace("rows_active = 128", "rows_active = 64"))
    t = targets.load(str(good))
    assert t.name == "mine" and t.rows == 64
    bad = tmp_path / "bad.toml"
    bad.write_text(src.replace("[cost]", "banana = 3\n\n[cost]"))
    with pytest.raises(OptionError, match=r"bad.toml: unknown key\(s\) 'banana'"):
        targets.load(str(bad))
    bad.write_text(src.replace("rows = 128", "rows = 128.5"))
    with pytest.raises(OptionError, match=r"bad.toml: key 'rows' must be int, got 128.5"):
        targets.load(str(bad))
    bad.write_text(src.replace("e_cell_pj = 0.0015", "e_cell_pj = 0.0015\nleakage = 2.0"))
    with pytest.raises(OptionError, match=r"bad.toml: unknown key 'cost.leakage'"):
        targets.load(str(bad))
    bad.write_text(src.replace('technology = "reram"\n', ""))
    with pytest.raises(OptionError, match=r"bad.toml: missing key\(s\) technology"):
        targets.load(str(bad))
    bad.write_text("rows = [")
    with pytest.raises(OptionError, match=r"bad.toml: not valid TOML"):
        targets.load(str(bad))
    bad.write_text(src.replace("signed_digits = true", 'signed_digits = "yes"'))
    with pytest.raises(OptionError, match=r"key 'signed_digits' must be bool, got 'yes'"):
        targets.load(str(bad))
    with pytest.raises(OptionError, match=r"target file '.*nothere.toml' does not exist"):
        targets.load(str(tmp_path / "nothere.toml"))
    with pytest.raises(OptionError, match=r"unknown target 'nosuch'; available: bitslice, isaac, mars, sme"):
        targets.load("nosuch")


def test_keys_table_documents_every_key():
    table = targets.keys_table()
    for k in targets.KEYS:
        assert f"| `{k}` |" in table
    for k in targets.COST_KEYS:
        assert f"| `cost.{k}` |" in table
    assert "| `rows` | int | word lines | 2 .. 4096 |" in table
