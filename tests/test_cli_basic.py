"""The basic CLI commands: inspect, targets, passes, --help, --version."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import onnx
import pytest

import frontend_models as fm
from graphs import tiny_cnn
from xbc import __version__, targets
from xbc.cli import cli, main


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def tiny(tmp_path):
    p = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), str(p))
    return p


def test_inspect_table(capsys, tiny):
    code, out, err = run(capsys, "inspect", str(tiny))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "4 crossbar layers, 1,024 weights"    # 27*16 + 16*9*1 + 4*4*8 + 32*10
    assert lines[1].split() == ["layer", "op", "matrix", "RxC", "groups", "weights"]
    rows = [ln.split() for ln in lines[2:6]]
    assert rows == [["L000_conv1", "Conv", "27x16", "1", "432"], ["L001_dw2", "Conv", "9x1", "16", "144"],
                    ["L002_pw3", "Conv", "4x8", "4", "128"], ["L003_fc", "Gemm", "32x10", "1", "320"]]
    assert lines[6] == "digital ops: 6"
    digital = {ln.split()[0]: int(ln.split()[1]) for ln in lines[7:]}
    assert digital == {"BatchNormalization": 1, "Clip": 1, "Flatten": 1, "GlobalAveragePool": 1, "Relu": 2}


def test_inspect_with_input_shape_and_ir(capsys, tmp_path):
    p = tmp_path / "dyn.onnx"
    onnx.save(fm.dynamic_batch_model(), str(p))
    code, out, err = run(capsys, "inspect", str(p), "--input-shape", "x=4,3,8,8", "--ir")
    assert code == 0, err
    assert out.splitlines()[0] == "2 crossbar layers, 2,668 weights"   # 3*3*3*4 + 256*10
    assert "graph dynbatch(%x: float[4x3x8x8]) {" in out
    assert "%y: float[4x10]" in out


def test_targets_commands(capsys):
    code, out, _ = run(capsys, "targets")
    assert code == 0
    for name in targets.available():
        t = targets.load(name)
        assert f"{name:<10} {t.description}" in out
        assert f"pipeline: {t.pipeline}" in out
    code, out, _ = run(capsys, "targets", "sme")
    assert code == 0
    body, sha = out.rsplit("sha256: ", 1)
    assert json.loads(body)["rows"] == 128 and sha.strip() == targets.load("sme").sha256
    code, out, _ = run(capsys, "targets", "--keys")
    assert code == 0 and out.strip() == targets.keys_table()
    assert "| `cost.e_adc_pj_8b` |" in out


def test_passes_command(capsys):
    code, out, _ = run(capsys, "passes")
    assert code == 0
    lines = out.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("cleanup "))
    assert "Constant nodes to constants" in lines[i]
    assert lines[i + 1].strip() == "fold-limit=10000000" and lines[i + 2].strip() == "max-rounds=8"


def test_every_command_help_has_an_example(capsys):
    ctx = click.Context(cli)
    names = cli.list_commands(ctx)
    assert {"compile", "inspect", "targets", "passes"} <= set(names)
    missing = []
    for name in names:
        code, out, _ = run(capsys, name, "--help")
        assert code == 0, name
        if "Example" not in out:
            missing.append(name)
    assert missing == [], f"--help without an Example: {missing}"
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "Example" in out and "--debug" in out


def test_version_and_console_script(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and __version__ in out
    res = subprocess.run([sys.executable, "-m", "xbc.cli", "targets"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "sme" in res.stdout
