"""Calibration inputs: load them (``--calibration``) and collect each crossbar layer's input range.

:func:`load_calibration` reads either

* an ``.npz`` file: one array per model input, named as the input, with a leading batch axis
  (an array with the input's rank minus one is one sample). A vector input ``[N]`` has no batch
  axis: its array is one vector, or ``[k, N]``: ``k`` vectors, run one at a time (vectors end to
  end, ``[k * N]``, are read the same way); or
* a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``; read with PIL when installed, else
  ``matplotlib.image``), for a model with exactly one 4-D float input ``[N, C, H, W]``.
  Preprocessing, fixed and documented: drop an alpha channel, gray to RGB (or RGB to gray for
  ``C == 1``), scale to ``[0, 1]`` (8-bit images divided by 255), resize to the input's ``H x W``
  by bilinear interpolation (half-pixel centers, like ``cv2.INTER_LINEAR`` without antialiasing),
  normalize with the ImageNet mean ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``
  (per channel; for ``C == 1`` their averages), NCHW float32. Files are taken in sorted name order.

:func:`collect_ranges` runs onnxruntime once (one session) on the graph with every requested
value exposed as an extra output, over the calibration batch (in chunks of the model's own batch
size when its batch dimension is fixed), and returns per value the min / max or the percentiles;
:class:`RangesInBackground` does the same in a background thread (the quantize pass quantizes
the weights meanwhile). :func:`synthetic_calibration` draws the documented default inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .errors import ModelError, OptionError, XbcError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class CalibrationError(XbcError):
    """Calibration data that cannot be used (names the file or input and what to do)."""


def _model_inputs(model_path) -> dict[str, tuple[tuple, int]]:
    if isinstance(model_path, onnx.ModelProto):
        model = model_path
    else:
        from .frontend import read_model  # noqa: PLC0415
        model = read_model(model_path)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        out[inp.name] = (dims, tt.elem_type)
    return out


def load_calibration(path, model_path) -> dict[str, np.ndarray]:
    """Calibration arrays (input name -> array with a batch axis) from an .npz or an image folder."""
    p = Path(path)
    if not p.exists():
        raise CalibrationError(f"calibration data {str(p)!r} does not exist; give an .npz of input "
                               f"arrays or a folder of images")
    inputs = _model_inputs(model_path)
    if p.is_dir():
        return _load_images(p, inputs)
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: np.asarray(z[k]) for k in z.files}
    except Exception as e:  # noqa: BLE001
        raise CalibrationError(f"calibration file {str(p)!r} is not a readable .npz ({type(e).__name__}: "
                               f"{e}); save it with numpy.savez(path, input_name=array)") from None
    missing = sorted(set(inputs) - set(data))
    if missing:
        raise CalibrationError(f"calibration file {str(p)!r} has no array for model input(s) "
                               f"{', '.join(missing)}; it holds {', '.join(sorted(data)) or 'nothing'}")
    return {k: data[k] for k in inputs}


def _read_image(f: Path) -> np.ndarray:
    try:
        from PIL import Image  # noqa: PLC0415
        with Image.open(f) as im:
            arr = np.asarray(im.convert("RGBA") if im.mode in ("P", "LA") else im)
    except ModuleNotFoundError:
        import matplotlib.image as mpimg  # noqa: PLC0415
        arr = mpimg.imread(str(f))
    except Exception as e:  # noqa: BLE001
        raise CalibrationError(f"calibration image {str(f)!r} cannot be read ({e})") from None
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    else:
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return arr


def resize_bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """``[H, W, C]`` -> ``[h, w, C]`` bilinear with half-pixel centers (no antialiasing)."""
    H, W = img.shape[:2]

    def coords(n_out, n_in):
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0, n_in - 1)
        x0 = np.floor(x).astype(np.int64)
        x1 = np.minimum(x0 + 1, n_in - 1)
        return x0, x1, (x - x0)

    y0, y1, fy = coords(h, H)
    x0, x1, fx = coords(w, W)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bot = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return (top * (1 - fy)[:, None, None] + bot * fy[:, None, None]).astype(np.float32)


def _load_images(folder: Path, inputs: dict) -> dict[str, np.ndarray]:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"calibration folder {str(folder)!r} holds no images "
                               f"({', '.join(IMAGE_SUFFIXES)})")
    if len(inputs) != 1:
        raise CalibrationError(f"a folder of images can calibrate a model with one input; this model has "
                               f"{len(inputs)} ({', '.join(inputs)}); use an .npz with one array per input")
    name, (dims, et) = next(iter(inputs.items()))
    if len(dims) != 4 or dims[2] <= 0 or dims[3] <= 0 or dims[1] not in (1, 3):
        raise CalibrationError(f"model input {name!r} has shape {list(dims)}; images need an NCHW input "
                               f"with 1 or 3 channels and fixed H, W; use an .npz instead")
    C, H, W = dims[1], dims[2], dims[3]
    batch = []
    for f in files:
        img = _read_image(f)
        if C == 3 and img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        elif C == 1 and img.shape[2] == 3:
            img = img.mean(axis=2, keepdims=True)
        img = resize_bilinear(img, H, W)
        mean = IMAGENET_MEAN if C == 3 else IMAGENET_MEAN.mean(keepdims=True)
        std = IMAGENET_STD if C == 3 else IMAGENET_STD.mean(keepdims=True)
        img = (img - mean) / std
        batch.append(img.transpose(2, 0, 1))
    dt = helper.tensor_dtype_to_np_dtype(et) if et else np.float32
    return {name: np.stack(batch).astype(dt)}


# ----------------------------------------------------------------------------------------
# running the model over the calibration batch
# ----------------------------------------------------------------------------------------

def _chunks(calib: dict[str, np.ndarray], model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Split the calibration arrays into feeds the model accepts (its own fixed batch size; one
    vector per feed for a vector input)."""
    inits = {t.name for t in model.graph.initializer}
    specs = {i.name: i for i in model.graph.input if i.name not in inits}
    missing = sorted(set(specs) - set(calib))
    if missing:
        raise CalibrationError(f"calibration data has no array for model input(s) {', '.join(missing)}")
    n_chunks = None
    prepared = {}
    for name, vi in specs.items():
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        arr = np.asarray(calib[name])
        row = None
        if len(dims) == 1 and arr.ndim == 2:
            # a vector input [N] has no batch axis: each row of a 2-D array is one sample, and
            # the rows end to end are cut back into one vector per run
            if dims[0] > 0 and arr.shape[1] != dims[0]:
                raise CalibrationError(f"calibration array for input {name!r} has shape {list(arr.shape)}; the "
                                       f"model expects vectors of {dims[0]} (one sample per row)")
            row = max(arr.shape[1], 1)
            arr = arr.reshape(-1)
        elif arr.ndim == len(dims) - 1:
            arr = arr[None]
        if arr.ndim != len(dims) or any(d > 0 and a != d for a, d in zip(arr.shape[1:], dims[1:])):
            raise CalibrationError(f"calibration array for input {name!r} has shape {list(arr.shape)}; the "
                                   f"model expects {dims} (a leading batch axis, then the same dims)")
        et = vi.type.tensor_type.elem_type
        if et:
            arr = arr.astype(helper.tensor_dtype_to_np_dtype(et), copy=False)
        b0 = row if row is not None else dims[0] if dims and dims[0] > 0 else arr.shape[0]
        if not dims:
            b0, k = 1, 1
        else:
            if arr.shape[0] % b0:
                raise CalibrationError(f"calibration array for input {name!r} has {arr.shape[0]} samples, "
                                       f"not a multiple of the model's batch size {b0}")
            k = arr.shape[0] // b0
        if n_chunks is not None and k != n_chunks:
            raise CalibrationError(f"calibration arrays hold different numbers of batches "
                                   f"({n_chunks} vs {k} for input {name!r})")
        n_chunks = k
        prepared[name] = (arr, b0)
    out = []
    for i in range(n_chunks or 0):
        out.append({name: (arr[i * b0:(i + 1) * b0] if arr.ndim else arr) for name, (arr, b0) in prepared.items()})
    return out


def layer_mean(a: np.ndarray) -> np.ndarray:
    """A value's mean over one calibration run's leading axis (kept, size 1), float64; a vector
    (or scalar) value has no batch axis and is kept whole. bias-correct averages these over runs."""
    a = np.asarray(a, np.float64)
    return a.mean(axis=0, keepdims=True) if a.ndim >= 2 else a


def collect_ranges(model: onnx.ModelProto, value_names: list[str], calib: dict[str, np.ndarray], *,
                   method: str = "minmax", percentile: float = 99.99,
                   shapes: dict[str, tuple] | None = None, elem_types: dict[str, int] | None = None,
                   means: dict | None = None) -> dict[str, tuple[float, float]]:
    """Run the model once over the calibration batch; ``(lo, hi)`` per requested value.

    ``method="minmax"`` gives the smallest and largest value seen, ``"percentile"`` the
    ``100-percentile`` and ``percentile`` percentiles of all values seen. With a dict
    ``means``, also fills it with each value's mean over the runs (:func:`layer_mean`).
    """
    return _run_ranges(*_prepare_ranges(model, value_names, calib, method, shapes, elem_types),
                       method=method, percentile=percentile, means=means)


class RangesInBackground:
    """:func:`collect_ranges` in a background thread, started at construction: onnxruntime
    builds the session and runs the model there (it releases the GIL while it runs, so the
    caller can work meanwhile). :meth:`result` waits and returns the ranges (the same) or raises
    the error :func:`collect_ranges` would have raised; :meth:`failed` tells early that it will.
    ``model`` belongs to the thread until then (outputs are added to it for the session)."""

    def __init__(self, model: onnx.ModelProto, value_names: list[str], calib: dict[str, np.ndarray], *,
                 method: str = "minmax", percentile: float = 99.99,
                 shapes: dict[str, tuple] | None = None, elem_types: dict[str, int] | None = None,
                 means: dict | None = None):
        import threading  # noqa: PLC0415

        self._out: dict = {}
        self._error: BaseException | None = None

        def work():
            try:
                self._out = collect_ranges(model, value_names, calib, method=method, percentile=percentile,
                                           shapes=shapes, elem_types=elem_types, means=means)
            except BaseException as e:  # noqa: BLE001  (raised by result())
                self._error = e

        self._thread = threading.Thread(target=work, name="xbc-calibration", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        self._thread.join()

    def failed(self) -> bool:
        """The run has finished, with an error."""
        return not self._thread.is_alive() and self._error is not None

    def result(self) -> dict[str, tuple[float, float]]:
        self._thread.join()
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return self._out


def _prepare_ranges(model, value_names, calib, method, shapes, elem_types):
    """Check the method and the data, build the session (every requested value an output)."""
    from . import ortutil  # noqa: PLC0415

    if method not in ("minmax", "percentile"):
        raise OptionError(f"calibration method {method!r}; allowed: minmax, percentile")
    m = model           # the extra outputs are added for the session only, then removed (no copy)
    n_outputs = len(m.graph.output)
    existing = {o.name for o in m.graph.output}
    input_names = {i.name for i in m.graph.input}
    shapes = shapes or {}
    elem_types = elem_types or {}
    wanted = [n for n in dict.fromkeys(value_names)]
    try:
        for name in wanted:
            if name in existing or name in input_names:
                continue
            m.graph.output.append(helper.make_tensor_value_info(name, elem_types.get(name, onnx.TensorProto.FLOAT),
                                                                shapes.get(name)))
        feeds_list = _chunks(calib, m)
        if not feeds_list:
            raise CalibrationError("calibration data holds no samples")
        sess = ortutil.session(m)
    finally:
        del m.graph.output[n_outputs:]
    return sess, feeds_list, wanted, input_names


def _run_ranges(sess, feeds_list, wanted, input_names, *, method, percentile,
                means: dict | None = None) -> dict[str, tuple[float, float]]:
    fetch = [n for n in wanted if n not in input_names]
    lo = {n: np.inf for n in wanted}
    hi = {n: -np.inf for n in wanted}
    seen: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
    for feeds in feeds_list:
        try:
            res = dict(zip(fetch, sess.run(fetch, feeds))) if fetch else {}
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"onnxruntime failed on the calibration data: {e}") from None
        for n in wanted:
            a = np.asarray(feeds[n] if n in input_names else res[n])   # min/max exact in its own dtype
            if a.dtype.kind not in "fiub":
                a = a.astype(np.float64)
            if a.size == 0:
                continue
            # min and max propagate NaN, and an Inf is the min or the max: both finite <=> all finite
            a_lo, a_hi = float(a.min()), float(a.max())
            if not (np.isfinite(a_lo) and np.isfinite(a_hi)):
                raise CalibrationError(f"value {n!r} is not finite on the calibration data (NaN/Inf); "
                                       f"check the calibration inputs and the model")
            if method == "minmax":
                lo[n] = min(lo[n], a_lo)
                hi[n] = max(hi[n], a_hi)
            else:
                seen[n].append(a.astype(np.float32).ravel())
            if means is not None:
                m = layer_mean(a)
                means[n] = means[n] + m if n in means else m
    if means is not None:
        for n in list(means):
            means[n] = means[n] / len(feeds_list)
    out = {}
    for n in wanted:
        if method == "percentile" and seen[n]:
            allv = np.concatenate(seen[n])
            lo_v, hi_v = np.percentile(allv, [100.0 - percentile, percentile])
            out[n] = (float(lo_v), float(hi_v))
        elif np.isfinite(lo[n]):
            out[n] = (lo[n], hi[n])
        else:
            out[n] = (0.0, 0.0)
    return out


def synthetic_calibration(model: onnx.ModelProto, seed: int = 0, samples: int = 8) -> dict[str, np.ndarray]:
    """The documented default without calibration data: ``samples`` inputs ~ N(0, 1) (floats;
    integers uniform in [0, 4), booleans random), drawn with ``seed`` (see :mod:`xbc.ortutil`)."""
    from . import ortutil  # noqa: PLC0415

    specs = ortutil.input_specs(model)
    out = {}
    rng = np.random.default_rng(seed)
    for name, (dims, dt) in specs.items():
        if len(dims) == 1:      # a vector input has no batch axis: ``samples`` vectors, one per row
            shape = (samples, dims[0])
        else:
            b0 = dims[0] if dims else 1
            shape = ((max(1, samples // max(b0, 1)) * b0,) + tuple(dims[1:])) if dims else ()
        if np.issubdtype(dt, np.floating):
            out[name] = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            out[name] = rng.random(shape) < 0.5
        else:
            out[name] = rng.integers(0, 4, size=shape).astype(dt)
    return out


def calibration_key(ctx, samples: int) -> tuple:
    """What identifies the calibration data a pass runs on: the given arrays (by identity) or the
    synthetic default's seed and sample count."""
    if ctx.calibration is not None:
        return ("given", id(ctx.calibration))
    return ("synthetic", int(ctx.seed), int(samples))


def graph_snapshot(graph) -> list:
    """Every node with its input values and their constant arrays, held by reference: the graph
    computes the same float values later iff :func:`same_graph` (the IR's constants are
    read-only, so a pass that changes a weight installs a new array)."""
    return [(n, tuple(n.inputs), tuple(None if v is None else v.const for v in n.inputs)) for n in graph.nodes]


def same_graph(snapshot: list, graph) -> bool:
    nodes = graph.nodes
    if len(snapshot) != len(nodes):
        return False
    for (n, ins, consts), m in zip(snapshot, nodes):
        if n is not m or len(ins) != len(m.inputs) or any(a is not b for a, b in zip(ins, m.inputs)):
            return False
        if any(c is not (None if v is None else v.const) for c, v in zip(consts, m.inputs)):
            return False
    return True
