"""Run the crossbar benchmark (same as ``xbc bench``; see ``xbc bench --help``).

    python examples/bench.py                     # ResNet-50 and MobileNet-v2, targets sme and isaac
    python examples/bench.py --quick             # small models, every section, about a minute
    python examples/bench.py --models resnet50 --targets sme,isaac,bitslice --json > bench.json

The models come from ``examples/models.py`` (synthetic, trained-like weights); the table gives
crossbars per target and per sparsity step, the ratios against the dense mapping and the ISAAC
baseline beside the SME paper's claims, fidelity of the compiled model against the float model,
seconds per pass, peak memory, greedy vs CP-SAT placement and simulator vs onnxruntime time.
"""

import sys

from xbc.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
