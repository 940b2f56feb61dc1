"""xbc: an MLIR-free compiler from ONNX models to compute-in-memory crossbar mappings.

Python API::

    import xbc
    result = xbc.compile_model("model.onnx", "sme")          # frontend + the target's pipeline
    xbc.write_bundle(result, "out/")                          # mapping.json + arrays.bin + graph.onnx
"""

__version__ = "0.1.0"

# In a source checkout (``python -m pytest`` from the repo root puts the checkout first on
# sys.path), let ``xbc.passes`` / ``xbc.backends`` resolve to the top-level folders exactly as
# the installed package maps them (pyproject's package-dir).
import os as _os

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(
        _os.path.join(_root, "passes", "__init__.py")):
    __path__.append(_root)  # type: ignore[name-defined]

from .errors import XbcError  # noqa: E402,F401


def __getattr__(name):  # lazy re-exports keep `import xbc` light
    if name == "compile_model":
        from .compiler import compile_model
        return compile_model
    if name == "write_bundle":
        from .bundle import write_bundle
        return write_bundle
    if name in ("PassManager", "PassContext", "Pass", "PassResult", "register", "parse_pipeline"):
        from . import passmanager
        return getattr(passmanager, name)
    if name == "load_model":
        from .frontend import load_model
        return load_model
    if name == "load_target":
        from .targets import load
        return load
    raise AttributeError(name)
