"""A small, independent reference programmer of crossbar layers, for the simulator's own tests.

It turns a float weight tensor into a :class:`~xbc.layer.LayerSpec` without the compiler's
passes, so the simulator kernels can be checked against the LayerSpec contract on their own:

* weights: symmetric per-output-channel quantization to ``weight_bits``
  (``w_int = round(W / s)``, ``s = max|W| / (2**(b-1)-1)``);
* inputs: asymmetric ``input_bits`` quantization of a given range (``x_zero_point`` is the code
  of a real 0);
* digits: ``split`` (sign-magnitude planes of ``cell_bits``, positive and negative column sets)
  or ``offset`` (``w + 2**(b-1)`` stored unsigned);
* rows randomly permuted within each group (``row_perm``), columns likewise (``col_perm``); rows
  tiled into blocks of ``rows`` and all (plane, sign, column) pieces of a row block packed left
  to right into ``rows x cols`` crossbars; all-zero columns of a block dropped (a squeeze);
  with ``share_groups`` the row blocks of several groups are stacked in one crossbar
  (block-diagonal sharing), so ``row_group`` really varies within a crossbar.

Everything is deterministic in ``seed``.
"""

from __future__ import annotations

import numpy as np

from xbc.layer import (LayerSpec, Segment, assemble_program, from_matrix, matrix_shape, n_planes,
                       sign_magnitude_digits, to_matrix)


def quantize_weights(kind: str, W: np.ndarray, groups: int, attrs: dict, bits: int):
    """Per-output-channel symmetric quantization: ``(w_int in weight layout, w_scale [Cout])``."""
    M = to_matrix(kind, np.asarray(W, np.float64), groups, attrs)          # [G, R, C]
    qmax = (1 << (bits - 1)) - 1
    s = np.abs(M).max(axis=1, keepdims=True) / qmax                          # [G, 1, C]
    s = np.where(s > 0, s, 1.0)
    Mi = np.rint(M / s).astype(np.int64)
    w_int = from_matrix(kind, Mi, tuple(W.shape), groups, attrs).astype(np.int32)
    return w_int, s.reshape(-1)


def input_quant(lo: float, hi: float, bits: int) -> tuple[float, int]:
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmax = (1 << bits) - 1
    scale = (hi - lo) / qmax if hi > lo else 1.0
    return scale, int(np.clip(np.rint(-lo / scale), 0, qmax))


def program_matrix(Mi: np.ndarray, *, rows: int, cols: int, cell_bits: int, weight_bits: int,
                   encoding: str = "split", seed: int = 0, permute: bool = True, share_groups: bool = True):
    """Integer matrix ``[G, R, C]`` -> (LayerProgram, row_perm, col_perm)."""
    rng = np.random.default_rng(seed)
    G, R, C = Mi.shape
    row_perm = np.stack([rng.permutation(R) if permute else np.arange(R) for _ in range(G)]).astype(np.int32)
    col_perm = np.stack([rng.permutation(C) if permute else np.arange(C) for _ in range(G)]).astype(np.int32)
    if encoding == "offset":
        offset = 1 << (weight_bits - 1)
        P = n_planes(weight_bits, cell_bits, "offset")
        stored = Mi.astype(np.int64) + offset
        if stored.min() < 0 or stored.max() >> (P * cell_bits):
            raise ValueError("weights out of range for offset encoding")
        shifts = (np.arange(P) * cell_bits).reshape(-1, 1, 1, 1)
        digits = ((stored[None] >> shifts) & ((1 << cell_bits) - 1)).astype(np.int8)
        signs = (1,)
    else:
        offset = 0
        P = n_planes(weight_bits, cell_bits, "split")
        digits = sign_magnitude_digits(Mi, cell_bits, P)
        signs = (1, -1)
    segments: list[Segment] = []
    blocks = []   # (group, rows array, [segment ids])
    for g in range(G):
        order = row_perm[g]
        for r0 in range(0, R, rows):
            rr = order[r0:r0 + rows]
            ids = []
            for p in range(P):
                for sg in signs:
                    d = digits[p, g][np.ix_(rr, col_perm[g])].astype(np.int64) * sg
                    cells = np.where(d > 0, d, 0)
                    keep = cells.any(axis=0) if encoding == "split" else np.ones(C, bool)
                    if not keep.any():
                        continue
                    ci = col_perm[g][keep].astype(np.int32)
                    segments.append(Segment(group=g, rows=rr.astype(np.int32), col_index=ci,
                                            col_shift=np.full(len(ci), p * cell_bits, np.int32),
                                            col_sign=np.full(len(ci), sg, np.int8),
                                            cells=cells[:, keep].astype(np.uint8)))
                    ids.append(len(segments) - 1)
            blocks.append((g, rr, ids))
    # pack: each row block fills crossbars column by column; with share_groups, small row blocks
    # of different groups stack vertically in one crossbar (disjoint rows and columns)
    placements: list[list] = []
    x_rows_used: list[int] = []
    x_cols_used: list[int] = []
    for g, rr, ids in blocks:
        r = len(rr)
        x = None
        if share_groups:
            for cand in range(len(placements)):
                if x_rows_used[cand] + r <= rows and x_cols_used[cand] < cols:
                    x = cand
                    break
        if x is None:
            placements.append([])
            x_rows_used.append(0)
            x_cols_used.append(0)
            x = len(placements) - 1
        r0 = x_rows_used[x]
        x_rows_used[x] += r
        for sid in ids:
            n = len(segments[sid].col_index)
            a = 0
            while a < n:
                if x_cols_used[x] >= cols:
                    placements.append([])
                    x_rows_used.append(r)
                    x_cols_used.append(0)
                    x = len(placements) - 1
                    r0 = 0
                take = min(n - a, cols - x_cols_used[x])
                placements[x].append((sid, r0, x_cols_used[x], a, a + take))
                x_cols_used[x] += take
                a += take
    prog = assemble_program(segments, placements, rows, cols, offset=offset)
    return prog, row_perm, col_perm


def make_spec(kind: str, W: np.ndarray, *, attrs: dict | None = None, bias: np.ndarray | None = None,
              groups: int = 1, x_range: tuple[float, float] = (-1.0, 1.0), weight_bits: int = 8,
              input_bits: int = 8, cell_bits: int = 1, dac_bits: int = 1, adc_bits: int = 8,
              rows: int = 128, cols: int = 128, rows_active: int | None = None,
              encoding: str = "split", seed: int = 0, permute: bool = True, share_groups: bool = True,
              w_int: np.ndarray | None = None, w_scale: np.ndarray | None = None,
              layer_id: str = "L000") -> LayerSpec:
    """A complete LayerSpec for a float (or given integer) weight tensor."""
    attrs = dict(attrs or {})
    if kind in ("conv", "conv_transpose"):
        attrs.setdefault("group", groups)
    G, R, C = matrix_shape(kind, tuple(W.shape), groups, attrs)
    if w_int is None:
        w_int, w_scale = quantize_weights(kind, W, groups, attrs, weight_bits)
    Mi = to_matrix(kind, np.asarray(w_int, np.int64), groups, attrs)
    prog, rp, cp = program_matrix(Mi, rows=rows, cols=cols, cell_bits=cell_bits, weight_bits=weight_bits,
                                  encoding=encoding, seed=seed, permute=permute, share_groups=share_groups)
    xs, zp = input_quant(x_range[0], x_range[1], input_bits)
    return LayerSpec(id=layer_id, kind=kind, groups=G, rows=R, cols=C, attrs=attrs, weight_shape=tuple(W.shape),
                     input_bits=input_bits, weight_bits=weight_bits, x_scale=xs, x_zero_point=zp,
                     w_scale=np.asarray(w_scale, np.float64).reshape(-1), w_int=np.asarray(w_int, np.int32),
                     bias=None if bias is None else np.asarray(bias, np.float32),
                     row_perm=rp, col_perm=cp, program=prog, cell_bits=cell_bits, dac_bits=dac_bits,
                     adc_bits=adc_bits, rows_active=rows_active or rows)


def hand_compile(model, target: str = "sme", feeds: list[dict] | None = None, *, overrides=(),
                 seed: int = 0, share_groups: bool = True):
    """A :class:`~xbc.compiler.CompileResult` programmed by this module instead of the passes.

    Frontend only (no pass pipeline), then every crossbar layer gets per-channel weights, an input
    quantization from the ranges its input takes on ``feeds`` (run through onnxruntime on the
    float model), and a program from :func:`program_matrix` for the target's geometry. Gemm's
    ``alpha`` is folded into ``w_scale`` (the LayerSpec contract: ``y = x_scale * w_scale *
    (...) + bias``). The result can be written with :func:`xbc.bundle.write_bundle`.
    """
    import hashlib

    import onnx

    from xbc import ortutil, targets
    from xbc.compiler import CompileResult
    from xbc.frontend import load_model
    from xbc.layer import Quant
    from xbc.passmanager import PassContext

    tgt = targets.load(target, list(overrides))
    graph = load_model(model)
    feeds = feeds or [ortutil.random_inputs(model, seed=seed)]
    layer_nodes = list(graph.layers())
    names = [n.inputs[0].name for n in layer_nodes]
    m = graph.to_onnx()          # the frontend may rewrite (left MatMul -> Transpose-MatMul-Transpose)
    have = {o.name for o in m.graph.output}
    for nm in names:
        if nm not in have and nm not in {i.name for i in m.graph.input}:
            vi = m.graph.output.add()
            vi.name = nm
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    sess = ortutil.session(m)
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for f in feeds:
        vals = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, f)))
        vals.update(f)
        for nm in names:
            lo[nm] = min(lo.get(nm, 0.0), float(np.min(vals[nm])))
            hi[nm] = max(hi.get(nm, 0.0), float(np.max(vals[nm])))
    for i, node in enumerate(layer_nodes):
        L = node.layer
        W = np.asarray(L.weight_value(node).const, np.float64)
        if L.kind == "gemm":
            W = W * float(node.attrs.get("alpha", 1.0))
        w_int, w_scale = quantize_weights(L.kind, W, L.groups, node.attrs, tgt.weight_bits)
        xs, zp = input_quant(lo[node.inputs[0].name], hi[node.inputs[0].name], tgt.input_bits)
        Mi = to_matrix(L.kind, w_int.astype(np.int64), L.groups, node.attrs)
        prog, rp, cp = program_matrix(Mi, rows=tgt.rows, cols=tgt.cols, cell_bits=tgt.cell_bits,
                                      weight_bits=tgt.weight_bits, encoding=tgt.weight_encoding,
                                      seed=seed + i, share_groups=share_groups)
        L.quant = Quant(weight_bits=tgt.weight_bits, w_scale=w_scale, w_int=w_int, input_bits=tgt.input_bits,
                        x_scale=xs, x_zero_point=zp)
        L.program, L.row_perm, L.col_perm = prog, rp, cp
    ctx = PassContext(target=tgt, seed=seed, quiet=True)
    return CompileResult(graph=graph, target=tgt, pipeline="", ctx=ctx, results=[],
                         model_sha256=hashlib.sha256(model.SerializeToString()).hexdigest(), model_path=None,
                         input_shapes={v.name: list(v.shape) for v in graph.inputs}, source_model=model)
