"""A tool that knows only json and numpy can read a bundle: the worked example of docs/bundle.md,
run verbatim in a fresh interpreter where importing xbc is impossible, rebuilds conv layers'
integer weights from the crossbars and matches the compiler's quantized weights."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphs import tiny_cnn
from xbc.bundle import write_bundle
from xbc.compiler import compile_model

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "bundle.md"

# The harness: forbid xbc, run the documented script as __main__, save what it rebuilt.
HARNESS = r"""
import runpy, sys
sys.modules["xbc"] = None          # any 'import xbc...' now raises ImportError
script, out, *args = sys.argv[1:]
sys.argv = [script] + args
ns = runpy.run_path(script, run_name="__main__")
import numpy as np
np.save(out, ns["W"])
leaked = sorted(k for k, v in sys.modules.items() if (k == "xbc" or k.startswith("xbc.")) and v is not None)
assert not leaked, leaked
"""


def doc_script() -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- foreign-reader:begin -->\s*```python\n(.*?)```\s*<!-- foreign-reader:end -->", text, re.S)
    assert m, "docs/bundle.md lost its foreign-reader example"
    return m.group(1)


def test_doc_script_imports_only_json_numpy_and_stdlib():
    imports = set(re.findall(r"^\s*(?:import|from)\s+([\w.]+)", doc_script(), re.M))
    assert imports == {"hashlib", "json", "os", "sys", "numpy"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("foreign")
    out = {}
    for target in ("sme", "isaac"):
        res = compile_model(tiny_cnn(seed=12), target)
        write_bundle(res, d / target)
        out[target] = (res, d / target)
    return out


@pytest.mark.parametrize("target,layer", [("sme", "conv1"), ("sme", "dw2"), ("sme", "pw3"), ("isaac", "conv1")])
def test_foreign_reader_rebuilds_conv_weights(bundles, tmp_path, target, layer):
    res, path = bundles[target]
    node = next(n for n in res.graph.layers() if n.name == layer)
    script = tmp_path / "reader.py"
    script.write_text(doc_script())
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    out = tmp_path / "W.npy"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    r = subprocess.run([sys.executable, "-I", str(harness), str(script), str(out), str(path), node.layer.id],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{node.layer.id}: {node.layer.quant.w_int.size} weights rebuilt exactly" in r.stdout
    W = np.load(out)
    np.testing.assert_array_equal(W, node.layer.quant.w_int)
    assert W.shape == node.inputs[1].const.shape


def test_foreign_reader_detects_corruption(bundles, tmp_path):
    import json
    import shutil

    _, path = bundles["sme"]
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    data = bytearray((bad / "arrays.bin").read_bytes())
    ref = json.loads((bad / "mapping.json").read_text())["layers"][0]["w_int"]
    data[ref["offset"] + 7] ^= 0xFF
    (bad / "arrays.bin").write_bytes(bytes(data))
    script = tmp_path / "reader.py"
    script.write_text(doc_script())
    r = subprocess.run([sys.executable, "-I", str(script), str(bad)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "arrays.bin is corrupted" in r.stderr
