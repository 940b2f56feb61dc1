"""Bad input: each case exits with code 2 and exactly one 'error:' line on stderr naming the
thing, no traceback unless --debug (then a traceback)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

import frontend_models as fm
from xbc.cli import main


def _save(model, path):
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture()
def files(tmp_path):
    """name -> (argv, text the error must name)."""
    good = _save(fm.resnet_bottleneck(), tmp_path / "good.onnx")
    notonnx = tmp_path / "notes.onnx"
    notonnx.write_text("these are my notes, not a model\n")
    trunc = tmp_path / "cut.onnx"
    trunc.write_bytes(fm.resnet_bottleneck().SerializeToString()[:2000])
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save(fm.resnet_bottleneck(), str(ext / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.weights", size_threshold=0)
    (ext / "m.weights").unlink()
    dyn = _save(fm.dynamic_input_model(), tmp_path / "dyn.onnx")
    nan = _save(fm.nan_weight_model(), tmp_path / "nan.onnx")
    return {
        "not_onnx": (["inspect", str(notonnx)], ["notes.onnx", "not a readable ONNX model"]),
        "truncated": (["inspect", str(trunc)], ["cut.onnx"]),
        "missing_file": (["inspect", str(tmp_path / "nothere.onnx")], ["nothere.onnx", "does not exist"]),
        "missing_external_data": (["inspect", str(ext / "m.onnx")], ["external data file 'm.weights'", "missing"]),
        "dynamic_dims": (["inspect", dyn], ["input 'x' has dynamic dimensions (batch,3,H,W)",
                                            "--input-shape x=1,3,1,1"]),
        "bad_input_shape_option": (["inspect", dyn, "--input-shape", "x=1,3,a,4"], ["--input-shape", "integers"]),
        "input_shape_unknown_input": (["inspect", dyn, "--input-shape", "img=1,3,4,4"], ["'img'", "'x'"]),
        "nan_weight": (["inspect", nan], ["'bad_conv'", "NaN"]),
        "unknown_target": (["compile", good, "-t", "nosuch", "-p", "cleanup"], ["unknown target 'nosuch'"]),
        "bad_set": (["compile", good, "--set", "rows=1", "-p", "cleanup"], ["'rows'", "out of range"]),
        "malformed_pipeline": (["compile", good, "-p", "cleanup{fold-limit=1"], ["malformed pipeline",
                                                                                 "cleanup{fold-limit=1"]),
        "unknown_pass": (["compile", good, "-p", "cleanup,frobnicate"], ["unknown pass 'frobnicate'"]),
        "unknown_pass_option": (["compile", good, "-p", "cleanup{speed=3}"], ["no option 'speed'", "fold-limit"]),
        "bad_pass_option_value": (["compile", good, "-p", "cleanup{fold-limit=lots}"], ["'fold-limit'", "'lots'"]),
        "nan_weight_compile": (["compile", nan, "-p", "cleanup"], ["'bad_conv'", "NaN"]),
    }


CASES = ["not_onnx", "truncated", "missing_file", "missing_external_data", "dynamic_dims", "bad_input_shape_option",
         "input_shape_unknown_input", "nan_weight", "unknown_target", "bad_set", "malformed_pipeline", "unknown_pass",
         "unknown_pass_option", "bad_pass_option_value", "nan_weight_compile"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_clear_error(case, files, capsys):
    argv, names = files[case]
    code = main(argv + ["-q"] if argv[0] == "compile" else argv)
    cap = capsys.readouterr()
    assert code == 2, (case, cap.err)
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, cap.err
    for text in names:
        assert text in errors[0], (text, errors[0])
    assert "Traceback" not in cap.err
    assert cap.out == ""


def test_debug_shows_the_traceback(files):
    from xbc.errors import ModelError

    argv, _ = files["nan_weight"]
    with pytest.raises(ModelError, match="bad_conv"):
        main(argv + ["--debug"])


@pytest.mark.parametrize("case", ["dynamic_dims", "malformed_pipeline"])
def test_bad_input_through_the_console(case, files):
    argv, names = files[case]
    cmd = [sys.executable, "-m", "xbc.cli"] + argv
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and all(t in errors[0] for t in names), res.stderr
    assert "Traceback" not in res.stderr
    res = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "Traceback" in res.stderr
    assert names[0] in res.stderr


def test_no_partial_output_on_error(files, tmp_path, capsys):
    argv, _ = files["nan_weight_compile"]
    out = tmp_path / "bundle"
    assert main(argv + ["-o", str(out), "-q"]) == 2
    assert not out.exists()
    capsys.readouterr()


def test_inf_and_empty_weights(tmp_path, capsys):
    from onnx import helper

    W = np.ones((4, 3), np.float32)
    W[1, 2] = -np.inf
    m = fm.make([helper.make_node("Gemm", ["x", "W"], ["y"], name="fc_inf")], [fm._vi("x", [1, 4])],
                [fm._vi("y", [1, 3])], [fm._t("W", W)])
    assert main(["inspect", _save(m, tmp_path / "inf.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "'fc_inf'" in err and "Inf" in err
