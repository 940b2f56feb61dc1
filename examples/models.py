"""Model builders for the examples and the benchmark: ResNet-50, MobileNet-v2, small variants.

Written with ``onnx.helper`` only (no torch). Every builder is deterministic in ``seed`` and
returns an opset-17 ``onnx.ModelProto`` that passes ``onnx.checker``; input ``"input"``
``[batch, 3, image, image]`` (``batch=None`` gives a dynamic batch ``dim_param "N"``), output
``"logits"`` ``[batch, num_classes]``.

Topologies
----------
* :func:`resnet50` is torchvision's ``resnet50`` (v1.5): 7x7/2 stem conv, BN, ReLU, 3x3/2
  MaxPool; bottlenecks ``[3, 4, 6, 3]`` with widths 64/128/256/512 and expansion 4, the stride on
  the 3x3 conv; a 1x1 conv + BN downsample on the first block of every stage; residual Add then
  ReLU; GlobalAveragePool, Flatten, Gemm ``transB=1``. Convs have no bias and every BN stays
  unfused (``BatchNormalization`` nodes), as a PyTorch export without fusion gives.
  53 convs (1 stem + 16 blocks x 3 + 4 downsample) + 1 Gemm = **54 crossbar layers**,
  25,502,912 weights (23,454,912 conv + 2,048,000 fc; torchvision's 25,557,032 parameters also
  count the 53,120 BN gamma/beta and the 1000 fc biases). "50" counts only the 49 main-path convs
  and the fc; the 4 downsample convs are crossbar layers too.
* :func:`mobilenet_v2` is torchvision's ``mobilenet_v2``: 3x3/2 stem conv (32), 17 inverted
  residual blocks with the standard table ``(t, c, n, s)`` = (1,16,1,1), (6,24,2,2), (6,32,3,2),
  (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1): 1x1 expand (absent when t=1), 3x3 depthwise
  (stride s on the first block of a group), 1x1 linear projection, each followed by BN, ReLU6 as
  ``Clip(0, 6)`` after expand and depthwise; residual Add when stride 1 and cin == cout; 1x1 conv
  to 1280 + BN + ReLU6; GlobalAveragePool, Flatten, Gemm. **53 crossbar layers**: 52 convs
  (1 stem + 2 + 16x3 block convs + 1 head, of which **17 depthwise**) + 1 Gemm; 3,469,760
  weights (2,189,760 conv + 1,280,000 fc; torchvision's 3,504,872 parameters also count 34,112
  BN gamma/beta and the 1000 fc biases).
* :func:`resnet_tiny`, :func:`mobilenet_tiny`: the same block structure, narrow and shallow, on
  32x32 inputs (for tests); :func:`tiny_cnn`: the README's small classifier (dense, depthwise,
  grouped conv, unfused BN, ReLU/ReLU6, a residual Add, pooling and a Gemm; 1x3x32x32).

How the weights are drawn (like trained weights, no sparsification)
-------------------------------------------------------------------
* Conv and Gemm weights (:func:`trained_like`): i.i.d. **Laplace** (heavy-tailed, as trained
  CNN weights are: most weights small, a few large, so the high bit planes of quantized weights
  are sparse the way they are on trained models), He-scaled by the fan-in
  (``Var = 2 / fan_in``), times a **log-normal per-output-channel scale** ``exp(N(0, 0.35^2))``
  (trained layers have channels of different magnitude). No weight is set to zero.
* BatchNormalization: ``gamma ~ U(0.5, 1.5)`` except the last BN of each residual branch, whose
  ``gamma ~ U(0.1, 0.5)`` (trained ResNets keep residual branches small; torchvision's
  zero-init-residual recipe starts them at 0); ``beta ~ N(0, 0.1^2)``; ``epsilon = 1e-5``.
* BN running statistics are the real statistics of the network's own activations, as after
  training: :func:`calibrate` runs the network once on ``calib_batch`` inputs drawn like
  :func:`xbc.ortutil.random_inputs` (``N(0, 1)``, seed ``seed + 1``) with every BN in training
  mode (batch mean and biased batch variance, layer by layer in one onnxruntime run) and stores
  those as ``running_mean`` / ``running_var``. Activations therefore stay well-scaled through all
  50 layers of ResNet-50.
* The classifier bias centres the logits over the same inputs (``bias = -mean(W f)``), as a
  trained classifier predicts the classes evenly over its data; without it every random input
  would get the same top-1 class, because global pooling averages the input noise away.

On ``N(0, 1)`` inputs the float models give finite, input-dependent logits (tests check the
std of the logits and that the top-1 class varies across inputs). These are synthetic networks:
top-1 agreement measured on them is pessimistic compared with a trained network, whose top-1
margins are larger; SQNR is the more meaningful fidelity number.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
EPS = 1e-5

# torchvision mobilenet_v2 inverted residual table: expansion t, channels c, repeats n, stride s
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def trained_like(rng: np.random.Generator, shape: tuple, out_axis: int = 0) -> np.ndarray:
    """Laplace weights, He-scaled by fan-in, with a log-normal per-output-channel scale.

    ``w = Laplace(0, b) * exp(N(0, 0.35^2))[out]`` with ``b = 1/sqrt(fan_in)`` (so
    ``Var(Laplace) = 2 b^2 = 2 / fan_in``, the He variance).
    """
    fan_in = int(np.prod(shape)) // int(shape[out_axis])
    w = rng.laplace(0.0, 1.0 / math.sqrt(fan_in), size=shape)
    scale_shape = [1] * len(shape)
    scale_shape[out_axis] = shape[out_axis]
    w = w * rng.lognormal(0.0, 0.35, size=scale_shape)
    return w.astype(np.float32)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding for MobileNet width multipliers."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


class NetBuilder:
    """Collects nodes and initializers; ``conv``/``bn``/... return the output value name."""

    def __init__(self, name: str, seed: int):
        self.name = name
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.bns: list[dict] = []       # BN node facts for calibration
        self.fc: dict | None = None     # the classifier, for the bias centring
        self._names: set[str] = set()

    def _uniq(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def _init(self, name: str, arr: np.ndarray) -> str:
        self.inits[name] = np.asarray(arr)
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             pad: int | None = None, name: str = "conv", bias: bool = False) -> str:
        n = self._uniq(name)
        pad = (k - 1) // 2 if pad is None else pad
        ins = [x, self._init(f"{n}.weight", trained_like(self.rng, (cout, cin // groups, k, k)))]
        if bias:
            ins.append(self._init(f"{n}.bias", (self.rng.standard_normal(cout) * 0.1).astype(np.float32)))
        self.nodes.append(helper.make_node("Conv", ins, [n], name=n, kernel_shape=[k, k], strides=[stride, stride],
                                           pads=[pad] * 4, dilations=[1, 1], group=groups))
        return n

    def bn(self, x: str, c: int, name: str = "bn", gamma: tuple[float, float] = (0.5, 1.5)) -> str:
        n = self._uniq(name)
        g = self._init(f"{n}.weight", self.rng.uniform(*gamma, c).astype(np.float32))
        b = self._init(f"{n}.bias", (self.rng.standard_normal(c) * 0.1).astype(np.float32))
        m = self._init(f"{n}.running_mean", np.zeros(c, np.float32))
        v = self._init(f"{n}.running_var", np.ones(c, np.float32))
        self.nodes.append(helper.make_node("BatchNormalization", [x, g, b, m, v], [n], name=n, epsilon=EPS))
        self.bns.append({"name": n, "x": x, "gamma": g, "beta": b, "mean": m, "var": v, "c": c})
        return n

    def relu(self, x: str, name: str = "relu") -> str:
        n = self._uniq(name)
        self.nodes.append(helper.make_node("Relu", [x], [n], name=n))
        return n

    def relu6(self, x: str, name: str = "relu6") -> str:
        n = self._uniq(name)
        if "clip.min" not in self.inits:
            self._init("clip.min", np.array(0.0, np.float32))
            self._init("clip.max", np.array(6.0, np.float32))
        self.nodes.append(helper.make_node("Clip", [x, "clip.min", "clip.max"], [n], name=n))
        return n

    def add(self, a: str, b: str, name: str = "add") -> str:
        n = self._uniq(name)
        self.nodes.append(helper.make_node("Add", [a, b], [n], name=n))
        return n

    def maxpool(self, x: str, k: int = 3, stride: int = 2, pad: int = 1, name: str = "maxpool") -> str:
        n = self._uniq(name)
        self.nodes.append(helper.make_node("MaxPool", [x], [n], name=n, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4))
        return n

    def head(self, x: str, c: int, num_classes: int) -> str:
        """GlobalAveragePool -> Flatten -> Gemm(transB=1) producing ``logits``."""
        p = self._uniq("avgpool")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [p], name=p))
        f = self._uniq("flatten")
        self.nodes.append(helper.make_node("Flatten", [p], [f], name=f, axis=1))
        w = self._init("fc.weight", trained_like(self.rng, (num_classes, c)))
        b = self._init("fc.bias", np.zeros(num_classes, np.float32))
        self.nodes.append(helper.make_node("Gemm", [f, w, b], ["logits"], name="fc", transB=1))
        self.fc = {"bias": b}
        return "logits"

    def model(self, batch: int | None, image: int, num_classes: int, doc: str = "") -> onnx.ModelProto:
        bdim = "N" if batch is None else batch
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [bdim, 3, image, image])
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [bdim, num_classes])
        inits = [numpy_helper.from_array(a, n) for n, a in self.inits.items()]
        g = helper.make_graph(self.nodes, self.name, [inp], [out], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="xbc-examples",
                              doc_string=doc)
        m.ir_version = IR_VERSION
        onnx.checker.check_model(m)
        return m


# ----------------------------------------------------------------------------------------
# calibration of BN running statistics and of the classifier bias
# ----------------------------------------------------------------------------------------

def _calibration_graph(net: NetBuilder, image: int, num_classes: int) -> onnx.ModelProto:
    """The network with every BN in training mode (batch statistics), the stats as outputs."""
    nodes: list[onnx.NodeProto] = []
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)]
    inits = dict(net.inits)
    inits["calib.axes_eps"] = np.array(EPS, np.float32)
    bn_by_name = {b["name"]: b for b in net.bns}
    for node in net.nodes:
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        b = bn_by_name[node.name]
        n, x, c = b["name"], b["x"], b["c"]
        inits[f"{n}.g4"] = net.inits[b["gamma"]].reshape(1, c, 1, 1)
        inits[f"{n}.b4"] = net.inits[b["beta"]].reshape(1, c, 1, 1)
        nodes += [
            helper.make_node("ReduceMean", [x], [f"{n}.bmean"], axes=[0, 2, 3], keepdims=1),
            helper.make_node("Sub", [x, f"{n}.bmean"], [f"{n}.d"]),
            helper.make_node("Mul", [f"{n}.d", f"{n}.d"], [f"{n}.d2"]),
            helper.make_node("ReduceMean", [f"{n}.d2"], [f"{n}.bvar"], axes=[0, 2, 3], keepdims=1),
            helper.make_node("Add", [f"{n}.bvar", "calib.axes_eps"], [f"{n}.ve"]),
            helper.make_node("Sqrt", [f"{n}.ve"], [f"{n}.sd"]),
            helper.make_node("Div", [f"{n}.d", f"{n}.sd"], [f"{n}.xn"]),
            helper.make_node("Mul", [f"{n}.xn", f"{n}.g4"], [f"{n}.xg"]),
            helper.make_node("Add", [f"{n}.xg", f"{n}.b4"], [n]),
        ]
        outputs += [helper.make_tensor_value_info(f"{n}.bmean", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info(f"{n}.bvar", TensorProto.FLOAT, None)]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, image, image])
    g = helper.make_graph(nodes, net.name + "_calib", [inp], outputs,
                          [numpy_helper.from_array(a, k) for k, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = IR_VERSION
    return m


def calibrate(net: NetBuilder, image: int, num_classes: int, calib_batch: int = 8) -> None:
    """Set every BN's running mean/var to its batch statistics on ``N(0,1)`` inputs, and the
    classifier bias to minus the mean logit (one onnxruntime run; see the module docstring)."""
    import onnxruntime as ort

    m = _calibration_graph(net, image, num_classes)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(net.seed + 1).standard_normal((calib_batch, 3, image, image)).astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    res = dict(zip(names, sess.run(names, {"input": x})))
    for b in net.bns:
        net.inits[b["mean"]] = res[f"{b['name']}.bmean"].reshape(-1).astype(np.float32)
        net.inits[b["var"]] = res[f"{b['name']}.bvar"].reshape(-1).astype(np.float32)
    if net.fc is not None:
        net.inits[net.fc["bias"]] = (-res["logits"].mean(axis=0)).astype(np.float32)


# ----------------------------------------------------------------------------------------
# ResNet
# ----------------------------------------------------------------------------------------

def resnet(blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem: int = 64, *, seed: int = 0,
           batch: int | None = 1, image: int = 224, num_classes: int = 1000, expansion: int = 4,
           name: str = "resnet", calib_batch: int = 8) -> onnx.ModelProto:
    """torchvision ResNet v1.5 with bottleneck blocks (see the module docstring)."""
    net = NetBuilder(name, seed)
    x = net.conv("input", 3, stem, 7, stride=2, pad=3, name="conv1")
    x = net.relu(net.bn(x, stem, name="bn1"), name="relu")
    x = net.maxpool(x, name="maxpool")
    cin = stem
    for si, (nb, w) in enumerate(zip(blocks, widths)):
        for bi in range(nb):
            stride = 2 if (bi == 0 and si > 0) else 1
            p = f"layer{si + 1}.{bi}"
            cout = w * expansion
            h = net.relu(net.bn(net.conv(x, cin, w, 1, name=f"{p}.conv1"), w, name=f"{p}.bn1"), name=f"{p}.relu1")
            h = net.relu(net.bn(net.conv(h, w, w, 3, stride=stride, name=f"{p}.conv2"), w, name=f"{p}.bn2"),
                         name=f"{p}.relu2")
            h = net.bn(net.conv(h, w, cout, 1, name=f"{p}.conv3"), cout, name=f"{p}.bn3", gamma=(0.1, 0.5))
            if stride != 1 or cin != cout:
                sc = net.bn(net.conv(x, cin, cout, 1, stride=stride, name=f"{p}.downsample.0"), cout,
                            name=f"{p}.downsample.1")
            else:
                sc = x
            x = net.relu(net.add(h, sc, name=f"{p}.add"), name=f"{p}.relu")
            cin = cout
    net.head(x, cin, num_classes)
    calibrate(net, image, num_classes, calib_batch)
    return net.model(batch, image, num_classes, doc=f"{name}: synthetic trained-like weights, seed {seed}")


def resnet50(seed: int = 0, batch: int | None = 1, image: int = 224, num_classes: int = 1000) -> onnx.ModelProto:
    """torchvision resnet50 (v1.5): 54 crossbar layers (53 convs + fc), 25,502,912 weights."""
    return resnet((3, 4, 6, 3), (64, 128, 256, 512), 64, seed=seed, batch=batch, image=image,
                  num_classes=num_classes, name="resnet50")


def resnet_tiny(seed: int = 0, batch: int | None = 1, image: int = 32, num_classes: int = 10) -> onnx.ModelProto:
    """ResNet-50's structure at 1 bottleneck per stage, widths 8/16/32/64: 18 crossbar layers."""
    return resnet((1, 1, 1, 1), (8, 16, 32, 64), 16, seed=seed, batch=batch, image=image,
                  num_classes=num_classes, name="resnet_tiny", calib_batch=256)


# ----------------------------------------------------------------------------------------
# MobileNet-v2
# ----------------------------------------------------------------------------------------

def mobilenet(settings=MOBILENET_V2_SETTINGS, width_mult: float = 1.0, last_channel: int = 1280, *,
              seed: int = 0, batch: int | None = 1, image: int = 224, num_classes: int = 1000,
              name: str = "mobilenet_v2", calib_batch: int = 8) -> onnx.ModelProto:
    """torchvision MobileNetV2 (see the module docstring)."""
    net = NetBuilder(name, seed)
    cin = _make_divisible(32 * width_mult)
    last = _make_divisible(last_channel * max(1.0, width_mult))
    x = net.relu6(net.bn(net.conv("input", 3, cin, 3, stride=2, name="features.0.0"), cin, name="features.0.1"),
                  name="features.0.2")
    idx = 1
    for t, c, n, s in settings:
        cout = _make_divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{idx}"
            hidden = int(round(cin * t))
            h = x
            if t != 1:
                h = net.relu6(net.bn(net.conv(h, cin, hidden, 1, name=f"{p}.expand"), hidden, name=f"{p}.expand_bn"),
                              name=f"{p}.expand_relu6")
            h = net.relu6(net.bn(net.conv(h, hidden, hidden, 3, stride=stride, groups=hidden, name=f"{p}.dw"),
                                 hidden, name=f"{p}.dw_bn"), name=f"{p}.dw_relu6")
            res = stride == 1 and cin == cout
            h = net.bn(net.conv(h, hidden, cout, 1, name=f"{p}.project"), cout, name=f"{p}.project_bn",
                       gamma=(0.1, 0.5) if res else (0.5, 1.5))
            x = net.add(x, h, name=f"{p}.add") if res else h
            cin = cout
            idx += 1
    x = net.relu6(net.bn(net.conv(x, cin, last, 1, name=f"features.{idx}.0"), last, name=f"features.{idx}.1"),
                  name=f"features.{idx}.2")
    net.head(x, last, num_classes)
    calibrate(net, image, num_classes, calib_batch)
    return net.model(batch, image, num_classes, doc=f"{name}: synthetic trained-like weights, seed {seed}")


def mobilenet_v2(seed: int = 0, batch: int | None = 1, image: int = 224, num_classes: int = 1000,
                 width_mult: float = 1.0) -> onnx.ModelProto:
    """torchvision mobilenet_v2: 53 crossbar layers (17 depthwise), 3,469,760 weights at width 1."""
    return mobilenet(MOBILENET_V2_SETTINGS, width_mult, 1280, seed=seed, batch=batch, image=image,
                     num_classes=num_classes, name="mobilenet_v2")


def mobilenet_tiny(seed: int = 0, batch: int | None = 1, image: int = 32, num_classes: int = 10) -> onnx.ModelProto:
    """MobileNet-v2's blocks, 4 of them, narrow (14 crossbar layers, 4 depthwise)."""
    settings = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 1, 2))
    return mobilenet(settings, 0.5, 128, seed=seed, batch=batch, image=image, num_classes=num_classes,
                     name="mobilenet_tiny", calib_batch=256)


# ----------------------------------------------------------------------------------------
# the README example
# ----------------------------------------------------------------------------------------

def tiny_cnn(seed: int = 0, batch: int | None = 1, image: int = 32, num_classes: int = 10) -> onnx.ModelProto:
    """A small classifier: conv3x3+BN+ReLU, depthwise 3x3/2+BN+ReLU6, grouped 1x1 (4 groups)+BN+ReLU,
    a residual 3x3 block, 3x3/2 conv, global pooling and a Gemm (6 crossbar layers, 24,224 weights)."""
    net = NetBuilder("tiny_cnn", seed)
    x = net.relu(net.bn(net.conv("input", 3, 16, 3, name="conv1"), 16, name="bn1"), name="relu1")
    x = net.relu6(net.bn(net.conv(x, 16, 16, 3, stride=2, groups=16, name="dw2"), 16, name="bn2"), name="relu6_2")
    x = net.relu(net.bn(net.conv(x, 16, 32, 1, groups=4, name="pw3"), 32, name="bn3"), name="relu3")
    h = net.bn(net.conv(x, 32, 32, 3, name="res4"), 32, name="bn4", gamma=(0.1, 0.5))
    x = net.relu(net.add(x, h, name="add4"), name="relu4")
    x = net.relu(net.bn(net.conv(x, 32, 48, 3, stride=2, name="conv5"), 48, name="bn5"), name="relu5")
    net.head(x, 48, num_classes)
    calibrate(net, image, num_classes, calib_batch=32)
    return net.model(batch, image, num_classes, doc=f"tiny_cnn: synthetic trained-like weights, seed {seed}")


BUILDERS = {
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "resnet_tiny": resnet_tiny,
    "mobilenet_tiny": mobilenet_tiny,
    "tiny_cnn": tiny_cnn,
}


def build(name: str, **kwargs) -> onnx.ModelProto:
    """Build a model by name (one of :data:`BUILDERS`)."""
    if name not in BUILDERS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[name](**kwargs)
