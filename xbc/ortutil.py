"""Small onnxruntime helpers shared by the frontend checks, the simulator and the benchmarks."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .errors import ModelError


def session(model: onnx.ModelProto, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    from .frontend import max_supported_ir_version  # noqa: PLC0415

    ir = model.ir_version
    try:    # a model written by a newer onnx than onnxruntime reads: the IR version names the format only
        model.ir_version = min(ir, max_supported_ir_version())
        data = model.SerializeToString()
    finally:
        model.ir_version = ir
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"onnxruntime cannot load the model: {e}") from None


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: list[str] | None = None,
        threads: int = 1) -> dict[str, np.ndarray]:
    sess = session(model, threads)
    names = outputs or [o.name for o in sess.get_outputs()]
    res = sess.run(names, feeds)
    return dict(zip(names, res))


def input_specs(model: onnx.ModelProto, shapes: dict[str, tuple] | None = None) -> dict[str, tuple[tuple, np.dtype]]:
    shapes = shapes or {}
    inits = {t.name for t in model.graph.initializer}
    specs = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dims = tuple(shapes.get(inp.name) or [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim])
        specs[inp.name] = (dims, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)))
    return specs


def random_inputs(model: onnx.ModelProto, seed: int = 0, shapes: dict[str, tuple] | None = None,
                  batch: int | None = None) -> dict[str, np.ndarray]:
    """Deterministic inputs: floats ~ N(0,1), ints in [0, 4), bools random."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (dims, dt) in input_specs(model, shapes).items():
        if batch is not None and dims:
            dims = (batch,) + tuple(dims[1:])
        if np.issubdtype(dt, np.floating):
            feeds[name] = rng.standard_normal(dims).astype(dt)
        elif dt == np.bool_:
            feeds[name] = rng.random(dims) < 0.5
        else:
            feeds[name] = rng.integers(0, 4, size=dims).astype(dt)
    return feeds


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    err = ref - np.asarray(test, np.float64)
    p_sig = float(np.sum(ref * ref))
    p_err = float(np.sum(err * err))
    if p_err == 0.0:
        return float("inf")
    if p_sig == 0.0:
        return float("-inf")
    return 10.0 * np.log10(p_sig / p_err)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))
