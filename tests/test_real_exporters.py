"""Models written by real exporters, end to end.

tests/data/torch/ holds small models exported by PyTorch 2.13 with both of its exporters
(examples/export_torch_models.py): TorchScript (dynamic batch axis, Shape subgraphs, unfused
BatchNormalization, HardSwish, Resize, ConvTranspose, LSTM, GRU) and torch.export / dynamo
(external data files, its own naming). For each one:

* the frontend's IR exported back to ONNX gives onnxruntime's outputs of the original file;
* every target compiles it to a bundle that validates;
* the bit-accurate simulator on the bundle stays close to onnxruntime on the float model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from xbc import ortutil
from xbc.backends.sim.runner import compare
from xbc.bundle import validate_bundle, write_bundle
from xbc.compiler import compile_model
from xbc.frontend import load_model

DATA = Path(__file__).parent / "data" / "torch"
SHAPES = {"convnet": (1, 3, 32, 32), "seqnet": (2, 6, 12), "encoder": (2, 5, 32), "yolo": (1, 3, 16, 16)}
# crossbar layers per model: the LSTM and GRU stay digital; the encoder's attention products
# (activation x activation) too
LAYERS = {"convnet": 4, "seqnet": 2, "encoder": 5, "yolo": 4}
FILES = sorted(DATA.glob("*.onnx"))


def _name(p: Path) -> str:
    return p.stem.rsplit("_", 1)[0]


def _feeds(name: str, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(SHAPES[name]).astype(np.float32)}


def test_fixtures_present():
    assert len(FILES) == 8
    assert {p.stem.rsplit("_", 1)[1] for p in FILES} == {"torchscript", "dynamo"}
    # the TorchScript export keeps the batch axis dynamic; the dynamo export writes external data
    m = onnx.load(str(DATA / "yolo_torchscript.onnx"), load_external_data=False)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert (DATA / "yolo_dynamo.onnx.data").exists()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_roundtrip_matches_onnxruntime(path):
    name = _name(path)
    g = load_model(path, {"x": SHAPES[name]})
    assert sum(1 for _ in g.layers()) == LAYERS[name]
    original = onnx.load(str(path))
    exported = g.to_onnx()
    for seed in (0, 1):
        feeds = _feeds(name, seed)
        ref = ortutil.run(original, feeds)
        got = ortutil.run(exported, feeds, list(ref))
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=f"{path.name}: {k}")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_compile_validate_simulate(path, tmp_path):
    name = _name(path)
    res = compile_model(path, "sme", input_shapes={"x": SHAPES[name]})
    out = write_bundle(res, tmp_path / "b")
    validate_bundle(out)
    c = compare(out, [_feeds(name, s) for s in (5, 6)], model=path)
    # measured 40-62 dB at 8 bits (sme, default error budget); a wrong splice, scale or
    # permutation anywhere gives well under 10 dB
    assert c.sqnr_db > 30.0, (path.name, c.sqnr_db)
    assert c.cosine > 0.999


@pytest.mark.parametrize("target", ["isaac", "bitslice", "mars"])
def test_other_targets_validate(target, tmp_path):
    for path in (DATA / "convnet_torchscript.onnx", DATA / "encoder_dynamo.onnx"):
        res = compile_model(path, target, input_shapes={"x": SHAPES[_name(path)]})
        validate_bundle(write_bundle(res, tmp_path / f"{path.stem}_{target}"))
