"""The compile driver: model file -> IR -> pass pipeline -> :class:`CompileResult`.

``compile_model`` is what ``xbc compile`` and the Python API call. Writing the bundle is a
separate step (:mod:`xbc.bundle`), so a researcher can run passes and inspect the IR without
touching disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from . import frontend, targets
from .ir import Graph
from .passmanager import PassContext, PassManager, PassResult


@dataclass
class CompileResult:
    graph: Graph
    target: targets.Target
    pipeline: str
    ctx: PassContext
    results: list[PassResult]
    model_sha256: str
    model_path: str | None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    source_model: onnx.ModelProto | None = None

    @property
    def stats(self) -> dict[str, Any]:
        from .summary import summarize  # noqa: PLC0415
        return summarize(self)


def compile_model(model: str | Path | onnx.ModelProto, target: str | targets.Target = "sme", *,
                  pipeline: str | None = None, overrides: tuple[str, ...] | list[str] = (),
                  input_shapes: dict[str, tuple[int, ...]] | None = None,
                  calibration: dict[str, np.ndarray] | None = None, verify: bool = True,
                  print_after: tuple[str, ...] = (), seed: int = 0, quiet: bool = True,
                  progress: Callable[[str, int, int], None] | None = None,
                  print_fn: Callable[[str], None] | None = None) -> CompileResult:
    """Compile an ONNX model for a target. ``pipeline=None`` runs the target's default."""
    tgt = target if isinstance(target, targets.Target) else targets.load(target, overrides)
    # parse the pipeline first, so a typo is reported before a large model is loaded
    pm = PassManager(pipeline if pipeline is not None else tgt.pipeline, verify=verify,
                     print_after=print_after, print_fn=print_fn)
    if isinstance(model, onnx.ModelProto):
        proto = model
        sha = __import__("hashlib").sha256(model.SerializeToString()).hexdigest()
        path = None
    else:
        proto = frontend.read_model(model)
        sha = frontend.model_sha256(model)
        path = str(model)
    graph = frontend.load_model(proto, input_shapes, where=path)
    ctx = PassContext(target=tgt, calibration=calibration, seed=seed, quiet=quiet, progress=progress)
    results = pm.run(graph, ctx)
    shapes = {v.name: list(v.shape) for v in graph.inputs}
    return CompileResult(graph=graph, target=tgt, pipeline=pm.spec, ctx=ctx, results=results,
                         model_sha256=sha, model_path=path, input_shapes=shapes, source_model=proto)
