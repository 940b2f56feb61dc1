"""Crossbars against fidelity on the sme target as the lossy bit budget grows.

SME (arXiv 2103.01705) reports 8.7x (ResNet-50) and 2.1x (MobileNet-v2) fewer crossbars with
under 0.3% top-1 drop after fine-tuning. xbc does not retrain, so the honest comparison is a
trade-off curve: for each setting of ``orchestrate-bits`` (error budget, digits per weight) this
prints the physical crossbars, the reduction against the dense sme mapping and against the isaac
baseline, and the effective model's top-1 agreement and output SQNR against the float model on
random inputs.

Run:  python examples/sweep_sme.py [resnet50|mobilenet_v2|FILE.onnx] [--samples N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from xbc import ortutil  # noqa: E402
from xbc.compiler import compile_model  # noqa: E402
from xbc.effective import effective_model  # noqa: E402

BASE = "fold-batchnorm,quantize,{orch}bias-correct,reorder,slice-bits,squeeze"
SETTINGS = [
    ("no orchestrate (squeeze only)", "fold-batchnorm,quantize,bias-correct,slice-bits,squeeze"),
    ("orchestrate lossless", BASE.format(orch="orchestrate-bits{error-budget=0.0},")),
    ("budget 0.25 (default), no bias correction", "fold-batchnorm,quantize,orchestrate-bits,reorder,slice-bits,squeeze"),
    ("orchestrate budget 0.25 (default)", BASE.format(orch="orchestrate-bits,")),
    ("orchestrate budget 1", BASE.format(orch="orchestrate-bits{error-budget=1.0},")),
    ("orchestrate budget 4", BASE.format(orch="orchestrate-bits{error-budget=4.0},")),
    ("orchestrate budget 16", BASE.format(orch="orchestrate-bits{error-budget=16.0},")),
    ("max 2 digits/weight, budget 16", BASE.format(orch="orchestrate-bits{max-digits=2,error-budget=16.0},")),
    ("6-bit weights, max 2 digits, budget 16",
     "fold-batchnorm,quantize{weight-bits=6}," + BASE.format(orch="orchestrate-bits{max-digits=2,error-budget=16.0},")[len("fold-batchnorm,quantize,"):]),
]


def load(name: str) -> onnx.ModelProto:
    if name.endswith(".onnx"):
        return onnx.load(name)
    from xbc.examples import models  # examples/models.py

    return getattr(models, name)()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="mobilenet_v2")
    ap.add_argument("--samples", type=int, default=16)
    args = ap.parse_args()
    model = load(args.model)
    feeds = [ortutil.random_inputs(model, seed=1000 + i) for i in range(args.samples)]
    ref = [ortutil.run(model, f) for f in feeds]
    print(f"model {args.model}, target sme, {args.samples} random inputs")
    print(f"{'setting':<40} {'xbars':>7} {'vs dense':>8} {'vs isaac':>8} {'top1 %':>7} {'SQNR dB':>8} {'s':>6}")
    for label, pipe in SETTINGS:
        t0 = time.perf_counter()
        res = compile_model(model, "sme", pipeline=pipe)
        secs = time.perf_counter() - t0
        xb = res.stats["crossbars"]
        eff = effective_model(res.graph)
        outs = [ortutil.run(eff, f) for f in feeds]
        agree = []
        sq = []
        for r, o in zip(ref, outs):
            k = next(iter(r))
            agree.append(int(np.argmax(r[k].reshape(r[k].shape[0], -1), 1)[0] == np.argmax(o[k].reshape(o[k].shape[0], -1), 1)[0]))
            sq.append(ortutil.sqnr_db(r[k], o[k]))
        print(f"{label:<40} {xb['physical']:>7,} {xb['dense'] / xb['physical']:>7.2f}x {xb['isaac'] / xb['physical']:>7.2f}x "
              f"{100 * np.mean(agree):>6.1f} {np.mean(sq):>8.2f} {secs:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
