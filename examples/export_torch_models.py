"""Export small PyTorch models to ONNX with both of PyTorch's exporters (the fixtures of
tests/test_real_exporters.py, in tests/data/torch/).

These files are real exporter output, with what exporters write and hand-built graphs do
not: the TorchScript exporter's Shape/Gather/Unsqueeze/Concat subgraphs for ``view(x.size(0), -1)``
and dynamic batch axes, unfused BatchNormalization (``do_constant_folding=False``), HardSwish,
Resize from ``interpolate``, ConvTranspose, LSTM and GRU, a TransformerEncoderLayer; the
torch.export (dynamo) exporter's external data files, its own node names and its
``dynamic_shapes``.

Needs torch (not a dependency of xbc): ``pip install torch`` then
``python examples/export_torch_models.py [OUT_DIR]``. Exported with torch 2.13.0 (CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn


class ConvNet(nn.Module):
    """Conv + unfused BN + HardSwish, depthwise conv + BN + ReLU, nearest Resize, ConvTranspose,
    global average pool, Linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.act = nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish()
        self.dw, self.bn2 = nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16)
        self.up = nn.ConvTranspose2d(16, 8, 2, 2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.act(self.bn(self.c1(x)))
        y = torch.relu(self.bn2(self.dw(y)))
        y = nn.functional.interpolate(y, scale_factor=2, mode="nearest")
        y = self.up(y)
        return self.fc(y.mean((2, 3)).flatten(1))


class SeqNet(nn.Module):
    """Linear -> LSTM -> GRU -> Linear on the last step (recurrent ops stay digital)."""

    def __init__(self):
        super().__init__()
        self.emb, self.lstm = nn.Linear(12, 32), nn.LSTM(32, 24, batch_first=True)
        self.gru, self.head = nn.GRU(24, 16, batch_first=True), nn.Linear(16, 5)

    def forward(self, x):
        y, _ = self.lstm(torch.relu(self.emb(x)))
        y, _ = self.gru(y)
        return self.head(y[:, -1])


class EncoderNet(nn.Module):
    """One TransformerEncoderLayer (attention, LayerNorm, MLP) and a classifier head."""

    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 7)

    def forward(self, x):
        return self.head(self.enc(x).mean(1))


class YoloNet(nn.Module):
    """SiLU, chunk (Split), Concat, MaxPool, bilinear Resize to the input size, view() with
    x.size(0) (a Shape subgraph feeding Reshape), Sigmoid."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16)
        self.c2, self.c3, self.out = nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(16, 8, 1), nn.Conv2d(8, 6, 1)

    def forward(self, x):
        y = nn.functional.silu(self.bn(self.c1(x)))
        a, b = y.chunk(2, 1)
        y = nn.functional.max_pool2d(torch.cat([a, self.c2(b)], 1), 2)
        y = nn.functional.interpolate(y, size=(x.shape[2], x.shape[3]), mode="bilinear", align_corners=False)
        y = self.c3(y)
        y = y.view(y.size(0), -1, 4, 4).mean(-1)
        return self.out(y.view(x.size(0), 8, -1, 4)).sigmoid()


MODELS = {"convnet": (ConvNet, (1, 3, 32, 32)), "seqnet": (SeqNet, (2, 6, 12)),
          "encoder": (EncoderNet, (2, 5, 32)), "yolo": (YoloNet, (1, 3, 16, 16))}


def export_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (cls, shape) in MODELS.items():
        torch.manual_seed(0)
        m = cls().eval()
        for mod in m.modules():         # trained-looking BatchNorm statistics
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
                mod.weight.data.uniform_(0.5, 1.5)
        x = torch.randn(*shape)
        for exporter in ("torchscript", "dynamo"):
            path = out / f"{name}_{exporter}.onnx"
            if exporter == "torchscript":
                torch.onnx.export(m, (x,), str(path), input_names=["x"], output_names=["y"],
                                  dynamic_axes={"x": {0: "N"}}, dynamo=False, do_constant_folding=False)
            else:
                torch.onnx.export(m, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True,
                                  dynamic_shapes=({0: torch.export.Dim("N", min=1, max=64)},))
            written.append(path)
    return written


if __name__ == "__main__":
    for p in export_all(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/torch")):
        print(p)
