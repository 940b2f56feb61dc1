"""Control the BLAS thread count numpy uses, for the duration of a simulation.

The simulator's crossbar kernels are BLAS matmuls. On a small, shared machine OpenBLAS's default
(one thread per core, busy-waiting) can be ten times *slower* than one thread when other
processes hold the cores, and a benchmark against onnxruntime is only fair with the same thread
count on both sides. :func:`blas_threads` sets OpenBLAS's (or MKL's) thread count through the
library's own C entry point, found in the loaded shared objects (what ``threadpoolctl`` does),
and restores it afterwards. Where no such library is found it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

_SET = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads_64_",
        "openblas_set_num_threads64_", "MKL_Set_Num_Threads")
_GET = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads_64_",
        "openblas_get_num_threads64_", "MKL_Get_Max_Threads")

_funcs: list[tuple] | None = None


def _libraries() -> list[str]:
    import numpy  # noqa: F401  (make sure numpy's BLAS is loaded)

    paths: list[str] = []
    if sys.platform.startswith("linux") and os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1] if line.strip() else ""
                low = os.path.basename(p).lower()
                if p.startswith("/") and ("openblas" in low or "mkl_rt" in low) and p not in paths:
                    paths.append(p)
    return paths


def _load() -> list[tuple]:
    global _funcs
    if _funcs is None:
        _funcs = []
        for path in _libraries():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            setter = getter = None
            for s, g in zip(_SET, _GET):
                if hasattr(lib, s) and hasattr(lib, g):
                    setter, getter = getattr(lib, s), getattr(lib, g)
                    break
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                getter.restype = ctypes.c_int
                _funcs.append((setter, getter))
    return _funcs


def get_blas_threads() -> int | None:
    f = _load()
    return int(f[0][1]()) if f else None


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Run the block with ``n`` BLAS threads (``None``: leave it alone)."""
    funcs = _load() if n is not None else []
    old = [g() for _, g in funcs]
    try:
        for s, _ in funcs:
            s(int(n))
        yield
    finally:
        for (s, _), v in zip(funcs, old):
            s(int(v))
