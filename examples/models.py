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
The network is built op by op while a numpy reference runs it on a calibration batch
(``calib_batch`` inputs ``N(0, 1)``, seed ``seed + 1``, the distribution of
:func:`xbc.ortutil.random_inputs`), so each layer's weights and BN statistics can follow the
data that reaches it, as they do after training.

* Conv and Gemm weights (:func:`trained_like`), per output channel:

  - **pattern**: ``sqrt(a) * aligned + sqrt(1 - a) * isotropic`` with ``a = ALIGN = 0.5``;
    ``aligned`` is a random combination of 512 observed (centred) input patches of the layer,
    i.e. a draw from ``N(0, C)`` with ``C`` the covariance of the layer's input patches (per group
    for grouped / depthwise convs; for the classifier, of the pooled features), ``isotropic`` is
    ``N(0, I)``. Trained filters respond to the directions their inputs actually vary in; i.i.d.
    weights do not, and with BatchNormalization an i.i.d. network is *chaotic*: BN divides by the
    centred variance of ReLU outputs (``1/2 - 1/(2 pi)`` of the second moment) while a
    perturbation passes with the ReLU slope (``1/2``), a gain of about 1.47 (1.7 dB) per layer,
    so a 40 dB input perturbation came out at 15 dB after MobileNet-v2 (and 8-bit quantization at
    7 dB), far more fragile than trained networks. With ``a = 0.5`` it comes out at 31 dB and
    8-bit quantization of weights and inputs at 23 dB (MobileNet-v2) / 30 dB (ResNet-50).
    ``align=0`` in every builder gives the i.i.d. networks.
  - **values**: the pattern's ranks are mapped onto the quantiles of a **Laplace** distribution
    (:func:`laplace_marginal`: heavy-tailed, as trained CNN weights are: most weights small, a
    few large, so the high bit planes of quantized weights are sparse the way they are on trained
    models); He-scaled (``Var = 2 / fan_in``) and times a **log-normal per-output-channel scale**
    ``exp(N(0, 0.35^2))`` (trained layers have channels of different magnitude). No weight is set
    to zero.
* BatchNormalization: ``gamma ~ U(0.5, 1.5)`` except the last BN of each residual branch, whose
  ``gamma ~ U(0.1, 0.5)`` (trained ResNets keep residual branches small; torchvision's
  zero-init-residual recipe starts them at 0); ``beta ~ N(0, 0.1^2)``; ``epsilon = 1e-5``.
  ``running_mean`` / ``running_var`` are the batch mean and (biased) variance of the BN's input
  on the calibration batch, as after training, so activations stay well-scaled through all 50
  layers of ResNet-50.
* The classifier bias centres the logits over the calibration batch (``bias = -mean(W f)``), as a
  trained classifier predicts the classes evenly over its data; without it every random input
  would get the same top-1 class, because global pooling averages the input noise away.

On fresh ``N(0, 1)`` inputs the float models give finite, input-dependent logits (tests check
the std of the logits, that the top-1 class varies across inputs, the BN statistics and the
perturbation gain). These are still synthetic networks: their top-1 margins are smaller than a
trained network's, so top-1 agreement measured on them is pessimistic; SQNR is the more
meaningful fidelity number.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
EPS = 1e-5
ALIGN = 0.5      # share of each weight pattern's variance that follows its input statistics

# torchvision mobilenet_v2 inverted residual table: expansion t, channels c, repeats n, stride s
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def laplace_marginal(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map each row of ``w`` [rows, n] onto a standard Laplace(0, 1) sample with the same ranks:
    the value of rank ``r`` becomes ``F^-1((r + v) / n)``, ``v ~ U(0, 1)`` (one draw per quantile
    bin: stratified, so each row's distribution is Laplace with no exact zero, and its ordering is
    the pattern's)."""
    n = w.shape[1]
    u = (np.arange(n)[None, :] + rng.random(w.shape)) / n
    q = np.where(u < 0.5, np.log(2.0 * u), -np.log(2.0 * (1.0 - u)))
    out = np.empty(w.shape, np.float64)
    np.put_along_axis(out, np.argsort(w, axis=1), q, axis=1)
    return out


def trained_like(rng: np.random.Generator, shape: tuple, out_axis: int = 0,
                 aligned: np.ndarray | None = None, align: float = ALIGN) -> np.ndarray:
    """Trained-like weights of ``shape`` (see the module docstring).

    ``aligned`` (optional, same shape, output axis first) is a component drawn from the layer's
    input statistics; the pattern is ``sqrt(align) * aligned + sqrt(1 - align) * isotropic``
    (each part with unit variance per output channel), each output channel is mapped onto Laplace
    quantiles (:func:`laplace_marginal`), scaled by ``1 / sqrt(fan_in)`` (He variance
    ``2 / fan_in``) and by a log-normal channel scale ``exp(N(0, 0.35^2))``.
    """
    shape = tuple(int(d) for d in shape)
    cout = shape[out_axis]
    fan_in = int(np.prod(shape)) // cout
    moved = (cout,) + tuple(d for i, d in enumerate(shape) if i != out_axis)
    iso = rng.standard_normal((cout, fan_in))
    if aligned is not None and align > 0 and fan_in > 1:
        a = np.asarray(aligned, np.float64).reshape(cout, fan_in)
        sd = a.std(axis=1, keepdims=True)
        a = np.where(sd > 0, a / np.where(sd > 0, sd, 1.0), 0.0)
        pattern = math.sqrt(align) * a + math.sqrt(1.0 - align) * iso
    else:
        pattern = iso
    w = laplace_marginal(pattern, rng) / math.sqrt(fan_in) if fan_in > 1 else \
        rng.laplace(0.0, 1.0, size=(cout, 1))
    w = w * rng.lognormal(0.0, 0.35, size=(cout, 1))
    w = w.reshape(moved)
    return np.moveaxis(w, 0, out_axis).astype(np.float32)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding for MobileNet width multipliers."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


# ----------------------------------------------------------------------------------------
# numpy reference ops on the calibration batch (float32, ONNX semantics of the ops used)
# ----------------------------------------------------------------------------------------

def _windows(x: np.ndarray, k: int, stride: int, pad: int, fill: float = 0.0) -> np.ndarray:
    """``[B, C, H, W]`` -> ``[B, C, Ho, Wo, k, k]`` view of the (padded) input patches."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill) if pad else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    return win[:, :, ::stride, ::stride]


def _conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int, groups: int) -> np.ndarray:
    B, C = x.shape[:2]
    cout, cin_g, k = w.shape[0], w.shape[1], w.shape[2]
    if groups == C and cin_g == 1 and cout == C:          # depthwise: shift and add
        win = _windows(x, k, stride, pad)
        out = np.zeros(win.shape[:4], np.float32)
        for i in range(k):
            for j in range(k):
                out += w[:, 0, i, j][None, :, None, None] * win[..., i, j]
        return out
    outs = []
    co_g = cout // groups
    for g in range(groups):
        xg = x[:, g * cin_g:(g + 1) * cin_g]
        wg = w[g * co_g:(g + 1) * co_g].reshape(co_g, -1)
        if k == 1 and pad == 0:
            xs = xg[:, :, ::stride, ::stride]
            Ho, Wo = xs.shape[2:]
            pm = xs.transpose(0, 2, 3, 1).reshape(-1, cin_g)
        else:
            win = _windows(xg, k, stride, pad)
            Ho, Wo = win.shape[2:4]
            pm = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, cin_g * k * k)
        o = (pm @ wg.T).reshape(B, Ho, Wo, co_g).transpose(0, 3, 1, 2)
        outs.append(o)
    return np.ascontiguousarray(np.concatenate(outs, axis=1), dtype=np.float32)


def _patch_sample(x: np.ndarray, k: int, stride: int, pad: int, groups: int, n: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``n`` random input patches of a conv, centred: ``[G, n, Cin/G*k*k]`` (im2col order)."""
    win = _windows(x, k, stride, pad)
    B, C, Ho, Wo = win.shape[:4]
    bi = rng.integers(0, B, n)
    yi = rng.integers(0, Ho, n)
    xi = rng.integers(0, Wo, n)
    p = win[bi, :, yi, xi].astype(np.float64)             # [n, C, k, k]
    p = p.reshape(n, groups, C // groups, k * k).transpose(1, 0, 2, 3).reshape(groups, n, -1)
    return p - p.mean(axis=1, keepdims=True)


def _aligned(rng: np.random.Generator, patches: np.ndarray, out_per_group: int) -> np.ndarray:
    """Random combinations of the observed (centred) input patches: per group ``[Co/G, R]`` drawn
    from ``N(0, C)`` with ``C`` the patch covariance; stacked to ``[Cout, R]``."""
    G, n, R = patches.shape
    a = rng.standard_normal((G, out_per_group, n)) / math.sqrt(n)
    return np.matmul(a, patches).reshape(G * out_per_group, R)


class NetBuilder:
    """Builds the ONNX graph and, op by op, runs it on the calibration batch (numpy), so that each
    layer's weights can follow its input statistics and each BN gets its data's statistics.
    ``conv``/``bn``/... take and return value names; ``self.act`` holds the live activations."""

    def __init__(self, name: str, seed: int, image: int, calib_batch: int, align: float = ALIGN,
                 patches: int = 512):
        self.name = name
        self.seed = seed
        self.align = align
        self.patches = patches
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self._names: set[str] = set()
        x = np.random.default_rng(seed + 1).standard_normal((calib_batch, 3, image, image)).astype(np.float32)
        self.act: dict[str, np.ndarray] = {"input": x}

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

    def keep(self, *names: str) -> None:
        """Keep only these activations (the ones later ops read); frees memory between blocks."""
        self.act = {n: self.act[n] for n in names}

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             pad: int | None = None, name: str = "conv") -> str:
        n = self._uniq(name)
        pad = (k - 1) // 2 if pad is None else pad
        xa = self.act[x]
        aligned = None
        if self.align > 0:
            pt = _patch_sample(xa, k, stride, pad, groups, self.patches, self.rng)
            aligned = _aligned(self.rng, pt, cout // groups)
        w = trained_like(self.rng, (cout, cin // groups, k, k), aligned=aligned, align=self.align)
        self._init(f"{n}.weight", w)
        self.nodes.append(helper.make_node("Conv", [x, f"{n}.weight"], [n], name=n, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4, dilations=[1, 1],
                                           group=groups))
        self.act[n] = _conv(xa, w, stride, pad, groups)
        return n

    def bn(self, x: str, c: int, name: str = "bn", gamma: tuple[float, float] = (0.5, 1.5)) -> str:
        n = self._uniq(name)
        g = self.rng.uniform(*gamma, c).astype(np.float32)
        b = (self.rng.standard_normal(c) * 0.1).astype(np.float32)
        xa = self.act[x]
        mean = xa.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
        var = xa.var(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
        for suffix, arr in (("weight", g), ("bias", b), ("running_mean", mean), ("running_var", var)):
            self._init(f"{n}.{suffix}", arr)
        self.nodes.append(helper.make_node("BatchNormalization", [x] + [f"{n}.{s}" for s in (
            "weight", "bias", "running_mean", "running_var")], [n], name=n, epsilon=EPS))
        scale = (g / np.sqrt(var + np.float32(EPS))).reshape(1, -1, 1, 1)
        self.act[n] = ((xa - mean.reshape(1, -1, 1, 1)) * scale + b.reshape(1, -1, 1, 1)).astype(np.float32)
        return n

    def relu(self, x: str, name: str = "relu") -> str:
        n = self._uniq(name)
        self.nodes.append(helper.make_node("Relu", [x], [n], name=n))
        self.act[n] = np.maximum(self.act[x], 0)
        return n

    def relu6(self, x: str, name: str = "relu6") -> str:
        n = self._uniq(name)
        if "clip.min" not in self.inits:
            self._init("clip.min", np.array(0.0, np.float32))
            self._init("clip.max", np.array(6.0, np.float32))
        self.nodes.append(helper.make_node("Clip", [x, "clip.min", "clip.max"], [n], name=n))
        self.act[n] = np.clip(self.act[x], 0, 6)
        return n

    def add(self, a: str, b: str, name: str = "add") -> str:
        n = self._uniq(name)
        self.nodes.append(helper.make_node("Add", [a, b], [n], name=n))
        self.act[n] = self.act[a] + self.act[b]
        return n

    def maxpool(self, x: str, k: int = 3, stride: int = 2, pad: int = 1, name: str = "maxpool") -> str:
        n = self._uniq(name)
        self.nodes.append(helper.make_node("MaxPool", [x], [n], name=n, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4))
        self.act[n] = _windows(self.act[x], k, stride, pad, fill=-np.inf).max(axis=(4, 5))
        return n

    def head(self, x: str, c: int, num_classes: int) -> str:
        """GlobalAveragePool -> Flatten -> Gemm(transB=1) producing ``logits``; the bias centres
        the logits over the calibration batch."""
        p = self._uniq("avgpool")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [p], name=p))
        f = self._uniq("flatten")
        self.nodes.append(helper.make_node("Flatten", [p], [f], name=f, axis=1))
        xa = self.act[x]
        feat = xa.mean(axis=(2, 3), dtype=np.float64)                       # [B, c]
        aligned = None
        if self.align > 0:
            # the feature vectors at every position of the calibration batch (pooling averages them)
            pos = xa.transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float64)
            pos = pos[self.rng.choice(len(pos), min(len(pos), self.patches), replace=False)]
            aligned = _aligned(self.rng, (pos - pos.mean(axis=0))[None], num_classes)
        w = trained_like(self.rng, (num_classes, c), aligned=aligned, align=self.align)
        logits = feat @ w.T.astype(np.float64)
        self._init("fc.weight", w)
        self._init("fc.bias", (-logits.mean(axis=0)).astype(np.float32))
        self.nodes.append(helper.make_node("Gemm", [f, "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
        self.act = {}
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
# ResNet
# ----------------------------------------------------------------------------------------

def resnet(blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem: int = 64, *, seed: int = 0,
           batch: int | None = 1, image: int = 224, num_classes: int = 1000, expansion: int = 4,
           name: str = "resnet", calib_batch: int = 8, align: float = ALIGN) -> onnx.ModelProto:
    """torchvision ResNet v1.5 with bottleneck blocks (see the module docstring)."""
    net = NetBuilder(name, seed, image, calib_batch, align)
    x = net.conv("input", 3, stem, 7, stride=2, pad=3, name="conv1")
    x = net.relu(net.bn(x, stem, name="bn1"), name="relu")
    x = net.maxpool(x, name="maxpool")
    net.keep(x)
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
            net.keep(x)
            cin = cout
    net.head(x, cin, num_classes)
    return net.model(batch, image, num_classes, doc=f"{name}: synthetic trained-like weights, seed {seed}")


def resnet50(seed: int = 0, batch: int | None = 1, image: int = 224, num_classes: int = 1000,
             align: float = ALIGN) -> onnx.ModelProto:
    """torchvision resnet50 (v1.5): 54 crossbar layers (53 convs + fc), 25,502,912 weights."""
    return resnet((3, 4, 6, 3), (64, 128, 256, 512), 64, seed=seed, batch=batch, image=image,
                  num_classes=num_classes, name="resnet50", align=align)


def resnet_tiny(seed: int = 0, batch: int | None = 1, image: int = 32, num_classes: int = 10,
                align: float = ALIGN) -> onnx.ModelProto:
    """ResNet-50's structure at 1 bottleneck per stage, widths 8/16/32/64: 18 crossbar layers."""
    return resnet((1, 1, 1, 1), (8, 16, 32, 64), 16, seed=seed, batch=batch, image=image,
                  num_classes=num_classes, name="resnet_tiny", calib_batch=256, align=align)


# ----------------------------------------------------------------------------------------
# MobileNet-v2
# ----------------------------------------------------------------------------------------

def mobilenet(settings=MOBILENET_V2_SETTINGS, width_mult: float = 1.0, last_channel: int = 1280, *,
              seed: int = 0, batch: int | None = 1, image: int = 224, num_classes: int = 1000,
              name: str = "mobilenet_v2", calib_batch: int = 16, align: float = ALIGN) -> onnx.ModelProto:
    """torchvision MobileNetV2 (see the module docstring)."""
    net = NetBuilder(name, seed, image, calib_batch, align)
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
            net.keep(x)
            cin = cout
            idx += 1
    x = net.relu6(net.bn(net.conv(x, cin, last, 1, name=f"features.{idx}.0"), last, name=f"features.{idx}.1"),
                  name=f"features.{idx}.2")
    net.head(x, last, num_classes)
    return net.model(batch, image, num_classes, doc=f"{name}: synthetic trained-like weights, seed {seed}")


def mobilenet_v2(seed: int = 0, batch: int | None = 1, image: int = 224, num_classes: int = 1000,
                 width_mult: float = 1.0, align: float = ALIGN) -> onnx.ModelProto:
    """torchvision mobilenet_v2: 53 crossbar layers (17 depthwise), 3,469,760 weights at width 1."""
    return mobilenet(MOBILENET_V2_SETTINGS, width_mult, 1280, seed=seed, batch=batch, image=image,
                     num_classes=num_classes, name="mobilenet_v2", align=align)


def mobilenet_tiny(seed: int = 0, batch: int | None = 1, image: int = 32, num_classes: int = 10,
                   align: float = ALIGN) -> onnx.ModelProto:
    """MobileNet-v2's blocks, 4 of them, narrow (14 crossbar layers, 4 depthwise)."""
    settings = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 1, 2))
    return mobilenet(settings, 0.5, 128, seed=seed, batch=batch, image=image, num_classes=num_classes,
                     name="mobilenet_tiny", calib_batch=256, align=align)


# ----------------------------------------------------------------------------------------
# the README example
# ----------------------------------------------------------------------------------------

def tiny_cnn(seed: int = 0, batch: int | None = 1, image: int = 32, num_classes: int = 10,
             align: float = ALIGN) -> onnx.ModelProto:
    """A small classifier: conv3x3+BN+ReLU, depthwise 3x3/2+BN+ReLU6, grouped 1x1 (4 groups)+BN+ReLU,
    a residual 3x3 block, 3x3/2 conv, global pooling and a Gemm (6 crossbar layers, 24,224 weights)."""
    net = NetBuilder("tiny_cnn", seed, image, calib_batch=64, align=align)
    x = net.relu(net.bn(net.conv("input", 3, 16, 3, name="conv1"), 16, name="bn1"), name="relu1")
    x = net.relu6(net.bn(net.conv(x, 16, 16, 3, stride=2, groups=16, name="dw2"), 16, name="bn2"), name="relu6_2")
    x = net.relu(net.bn(net.conv(x, 16, 32, 1, groups=4, name="pw3"), 32, name="bn3"), name="relu3")
    h = net.bn(net.conv(x, 32, 32, 3, name="res4"), 32, name="bn4", gamma=(0.1, 0.5))
    x = net.relu(net.add(x, h, name="add4"), name="relu4")
    x = net.relu(net.bn(net.conv(x, 32, 48, 3, stride=2, name="conv5"), 48, name="bn5"), name="relu5")
    net.head(x, 48, num_classes)
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
