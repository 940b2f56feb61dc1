"""examples/models.py: the builders give the torchvision topologies, valid ONNX, trained-like
weights, calibrated BN statistics and input-dependent finite logits."""

from __future__ import annotations

import os
import sys
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from xbc import ortutil
from xbc.frontend import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
import models  # noqa: E402


# the topology and weight counts do not depend on the image size; 96x96 keeps the tests fast
# (the benchmark builds them at 224x224)
@pytest.fixture(scope="module")
def resnet50():
    return models.resnet50(image=96)


@pytest.fixture(scope="module")
def mobilenet_v2():
    return models.mobilenet_v2(image=96)


def _layers(m):
    return list(load_model(m).layers())


def _ops(m):
    return Counter(n.op_type for n in m.graph.node)


def _run(m, n=16, seed=100):
    sess = ortutil.session(m)
    return np.concatenate([sess.run(["logits"], ortutil.random_inputs(m, seed=seed + i))[0] for i in range(n)])


def test_resnet50_topology(resnet50):
    onnx.checker.check_model(resnet50)
    assert resnet50.opset_import[0].version == 17
    L = _layers(resnet50)
    # 1 stem + 16 bottlenecks x 3 + 4 downsample convs + fc
    assert len(L) == 54
    assert sum(n.op_type == "Conv" for n in L) == 53 and L[-1].op_type == "Gemm"
    assert sum(n.layer.groups * n.layer.rows * n.layer.cols for n in L) == 25_502_912
    assert all(n.layer.groups == 1 for n in L)
    ops = _ops(resnet50)
    assert ops["BatchNormalization"] == 53 and ops["Add"] == 16 and ops["Relu"] == 49
    assert ops["MaxPool"] == 1 and ops["GlobalAveragePool"] == 1 and ops["Flatten"] == 1
    assert all(len(n.inputs) == 2 for n in L[:-1])          # bias-free convs, BN unfused
    stem = L[0]
    assert (stem.layer.rows, stem.layer.cols) == (3 * 7 * 7, 64) and stem.attrs["strides"] == [2, 2]
    fc = L[-1]
    assert (fc.layer.rows, fc.layer.cols) == (2048, 1000) and fc.attrs["transB"] == 1
    # v1.5: stride 2 on the 3x3 conv of each stage's first block, and on its downsample
    strided = sorted(n.name for n in L if n.attrs.get("strides") == [2, 2])
    assert strided == ["conv1", "layer2.0.conv2", "layer2.0.downsample.0", "layer3.0.conv2",
                       "layer3.0.downsample.0", "layer4.0.conv2", "layer4.0.downsample.0"]
    assert sorted(n.name for n in L if "downsample" in n.name) == [
        f"layer{i}.0.downsample.0" for i in range(1, 5)]
    widths = {n.name: n.layer.cols for n in L if n.name.endswith(".0.conv2")}
    assert widths == {"layer1.0.conv2": 64, "layer2.0.conv2": 128, "layer3.0.conv2": 256, "layer4.0.conv2": 512}
    assert Counter(n.name.split(".")[0] for n in L if n.name.endswith("conv3")) == {
        "layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}


def test_resnet50_runs_finite_not_degenerate(resnet50):
    y = _run(resnet50, n=6)
    assert y.shape == (6, 1000) and np.isfinite(y).all()
    assert 0.02 < y.std() < 100
    assert len(set(y.argmax(1))) >= 3          # top-1 depends on the input


def test_mobilenet_v2_topology(mobilenet_v2):
    onnx.checker.check_model(mobilenet_v2)
    L = _layers(mobilenet_v2)
    # 1 stem + (dw, project) + 16 x (expand, dw, project) + 1x1 head + fc
    assert len(L) == 53
    dw = [n for n in L if n.layer.groups > 1]
    assert len(dw) == 17
    assert all(n.layer.rows == 9 and n.layer.cols == 1 and n.layer.groups == n.outputs[0].shape[1] for n in dw)
    assert sum(n.layer.groups * n.layer.rows * n.layer.cols for n in L) == 3_469_760
    ops = _ops(mobilenet_v2)
    assert ops["BatchNormalization"] == 52 and ops["Clip"] == 35 and ops["Add"] == 10
    clip = next(n for n in mobilenet_v2.graph.node if n.op_type == "Clip")
    inits = {t.name: numpy_helper.to_array(t) for t in mobilenet_v2.graph.initializer}
    assert float(inits[clip.input[1]]) == 0.0 and float(inits[clip.input[2]]) == 6.0
    # the standard channel table: depthwise widths = expansion x input channels
    assert [n.layer.groups for n in dw] == [32, 96, 144, 144, 192, 192, 192, 384, 384, 384, 384,
                                            576, 576, 576, 960, 960, 960]
    assert [n.attrs["strides"][0] for n in dw] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert (L[-2].layer.rows, L[-2].layer.cols) == (320, 1280)
    assert (L[-1].layer.rows, L[-1].layer.cols) == (1280, 1000)


def test_mobilenet_v2_runs_finite_not_degenerate(mobilenet_v2):
    y = _run(mobilenet_v2, n=12)
    assert np.isfinite(y).all() and 0.02 < y.std() < 100
    assert len(set(y.argmax(1))) >= 3


def _perturbation_sqnr(m, n=3):
    """Output SQNR (dB) when the input gets N(0, 0.01^2) noise (input SQNR 40 dB)."""
    sess = ortutil.session(m)
    rng = np.random.default_rng(9)
    a, b = [], []
    for _ in range(n):
        hw = m.graph.input[0].type.tensor_type.shape.dim[2].dim_value
        x = rng.standard_normal((1, 3, hw, hw)).astype(np.float32)
        a.append(sess.run(["logits"], {"input": x})[0])
        b.append(sess.run(["logits"], {"input": x + 0.01 * rng.standard_normal(x.shape).astype(np.float32)})[0])
    return ortutil.sqnr_db(np.concatenate(a), np.concatenate(b))


def test_data_aligned_weights_keep_the_network_stable(mobilenet_v2):
    """i.i.d. weights + BN make a chaotic network (a 40 dB input perturbation ends near 15 dB);
    the data-aligned weights keep it near the input's SQNR, like a trained network."""
    assert _perturbation_sqnr(mobilenet_v2) > 27.0
    assert _perturbation_sqnr(models.mobilenet_v2(align=0.0, image=96)) < 20.0


@pytest.mark.parametrize("name,layers,depthwise", [("resnet_tiny", 18, 0), ("mobilenet_tiny", 14, 4),
                                                    ("tiny_cnn", 6, 1)])
def test_tiny_models(name, layers, depthwise):
    m = models.build(name)
    onnx.checker.check_model(m)
    L = _layers(m)
    assert len(L) == layers
    assert sum(1 for n in L if n.layer.groups > 1 and n.layer.cols == 1) == depthwise
    y = _run(m, n=16)
    assert np.isfinite(y).all() and y.std() > 0.02
    assert len(set(y.argmax(1))) >= 4


def test_weights_are_trained_like():
    """Laplace per tensor (excess kurtosis 3), log-normal channel scales, He variance, no zeros."""
    rng = np.random.default_rng(0)
    W = models.trained_like(rng, (256, 128, 3, 3))
    assert W.dtype == np.float32 and np.count_nonzero(W) == W.size
    ch = W.reshape(256, -1)
    z = ch / ch.std(axis=1, keepdims=True)
    kurt = float(np.mean(z ** 4) - 3)
    assert 2.6 < kurt < 3.4                         # Laplace: 3; Gaussian: 0
    log_s = np.log(ch.std(axis=1))
    assert 0.28 < log_s.std() < 0.42                 # log-normal sigma 0.35
    fan_in = 128 * 9
    assert np.exp(np.mean(2 * log_s)) * fan_in == pytest.approx(2.0, rel=0.15)
    assert not np.array_equal(models.trained_like(np.random.default_rng(1), (4, 4)),
                              models.trained_like(np.random.default_rng(2), (4, 4)))
    # with an aligned component: Laplace values ordered like the pattern (correlated with it)
    al = np.random.default_rng(3).standard_normal((256, 128 * 9))
    Wa = models.trained_like(np.random.default_rng(0), (256, 128, 3, 3), aligned=al, align=0.5).reshape(256, -1)
    # the rank transform: one Laplace value per quantile bin, in the pattern's order, no zero
    n = 128 * 9
    pr = np.arange(1, n) / n
    edges = np.where(pr < 0.5, np.log(2 * pr), -np.log(2 * (1 - pr)))     # F^-1 at the bin edges
    q = models.laplace_marginal(np.arange(n, dtype=float)[None], np.random.default_rng(0))[0]
    assert np.all(np.diff(q) > 0) and np.count_nonzero(q) == n
    assert np.all(q[:-1] < edges) and np.all(q[1:] > edges)
    assert np.count_nonzero(Wa) == Wa.size
    corr = [np.corrcoef(Wa[i], al[i])[0, 1] for i in range(8)]
    assert 0.55 < np.mean(corr) < 0.8             # sqrt(0.5) = 0.71 before the rank transform


@pytest.mark.parametrize("name", ["resnet_tiny", "mobilenet_tiny"])
def test_bn_statistics_match_the_activations(name):
    """On fresh N(0,1) inputs every BN normalizes its input to about mean 0, variance 1."""
    m = models.build(name)
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    for n in bns:
        probe.graph.output.append(helper.make_empty_tensor_value_info(n.input[0]))
    x = np.random.default_rng(7).standard_normal((256, 3, 32, 32)).astype(np.float32)
    probe.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 256
    out = ortutil.run(probe, {"input": x}, [n.input[0] for n in bns])
    for n in bns:
        a = out[n.input[0]]
        mean, var = inits[n.input[3]], inits[n.input[4]]
        z = (a - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + 1e-5)
        zm = z.mean(axis=(0, 2, 3))
        zv = z.var(axis=(0, 2, 3))
        assert np.abs(zm).max() < 0.5, n.name
        assert 0.5 < np.median(zv) < 1.6, n.name
        assert np.all(var > 0)


def test_deterministic_and_dynamic_batch():
    a = models.tiny_cnn(seed=3).SerializeToString()
    b = models.tiny_cnn(seed=3).SerializeToString()
    c = models.tiny_cnn(seed=4).SerializeToString()
    assert a == b and a != c
    dyn = models.resnet_tiny(batch=None)
    assert dyn.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    g = load_model(dyn, {"input": (2, 3, 32, 32)})
    assert g.inputs[0].shape == (2, 3, 32, 32) and g.outputs[0].shape == (2, 10)
    with pytest.raises(KeyError, match="unknown model"):
        models.build("vgg16")


def test_committed_example_matches_builder(tmp_path):
    path = os.path.join(ROOT, "examples", "tiny_cnn.onnx")
    assert os.path.getsize(path) < 200_000
    m = onnx.load(path)
    onnx.checker.check_model(m)
    assert m.opset_import[0].version == 17
    ref = models.tiny_cnn(seed=0)
    got = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    want = {t.name: numpy_helper.to_array(t) for t in ref.graph.initializer}
    assert got.keys() == want.keys()
    for k in want:
        # a last-bit BLAS difference may swap two adjacent ranks: allow that, nothing more
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert [n.op_type for n in m.graph.node] == [n.op_type for n in ref.graph.node]
    # the script writes it
    import build_example
    out = tmp_path / "t.onnx"
    assert build_example.main(["-o", str(out)]) == 0
    assert onnx.load(str(out)).graph.node[0].op_type == "Conv"
