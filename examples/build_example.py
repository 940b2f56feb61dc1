"""Write ``examples/tiny_cnn.onnx``, the README's example model (opset 17, about 100 KB).

    python examples/build_example.py            # writes examples/tiny_cnn.onnx
    python examples/build_example.py -o my.onnx
    xbc compile examples/tiny_cnn.onnx --target sme -o out/

The model is :func:`models.tiny_cnn` (seed 0): dense, depthwise and grouped convs with unfused
BatchNormalization, ReLU / ReLU6 (Clip), a residual Add, global pooling and a Gemm, on a
1x3x32x32 input named ``input``. The same seed always gives the same bytes.
"""

from __future__ import annotations

import argparse
import os
import sys

import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_cnn.onnx"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    m = models.tiny_cnn(seed=args.seed)
    onnx.checker.check_model(m)
    onnx.save(m, args.output)
    print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes, "
          f"{len(m.graph.node)} nodes, opset {m.opset_import[0].version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
