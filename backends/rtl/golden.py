"""Numpy golden model of the generated RTL (the same arithmetic, whole layers at once).

For input vectors ``xq[n, g, r]`` (unsigned ``input_bits``-bit integers, one im2col row of the
layer matrix per group) the RTL datapath computes, per physical crossbar ``x``:

* row ``i`` of crossbar ``x`` carries ``in[n, x, i] = xq[n, row_group[x, i], row_index[x, i]]``
  (0 on unused rows);
* bit-serial input, LSB first, in ``S = ceil(input_bits / dac_bits)`` slices
  ``in_k = (in >> (k * dac_bits)) & (2**dac_bits - 1)``;
* the rows are read in ``Q = ceil(Rx / ra)`` chunks of ``ra = min(rows_active, Rx)`` consecutive
  physical rows (chunk ``q`` = rows ``q*ra .. q*ra+ra-1``), one conversion per chunk and slice;
* each column's ADC saturates: ``s[k, q, j] = min(sum_{i in chunk q} cells[x, i, j] * in_k[i],
  2**adc_bits - 1)``;
* the splice table adds ``col_sign * 2**(col_shift + k*dac_bits) * s[k, q, j]`` to the output
  ``acc[col_group, col_index]``;
* offset encoding: ``acc[g, c]`` starts at ``-offset * sum_r xq[g, r]``.

With an ADC wide enough that nothing saturates this equals ``xq @ rebuild_matrix(program)``
exactly (:func:`ideal_acc`), which the tests check as well.
"""

from __future__ import annotations

import math

import numpy as np

from xbc.layer import LayerProgram, LayerSpec, rebuild_matrix


def n_slices(input_bits: int, dac_bits: int) -> int:
    return max(1, math.ceil(input_bits / dac_bits))


def active_rows(rows_active: int, Rx: int) -> int:
    return max(1, min(int(rows_active), int(Rx)))


def program_acc(program: LayerProgram, xq: np.ndarray, *, groups: int, cols: int, input_bits: int,
                dac_bits: int, adc_bits: int, rows_active: int) -> np.ndarray:
    """Integer accumulators ``acc[n, g, c]`` (int64) of the bit-serial, chunked, saturating model."""
    p = program
    xq = np.asarray(xq, dtype=np.int64)
    N = xq.shape[0]
    X, Rx, Cx = p.cells.shape
    acc = np.zeros((N, groups * cols), dtype=np.int64)
    if X:
        used_row = p.row_group >= 0
        inp = xq[:, np.where(used_row, p.row_group, 0), np.where(used_row, p.row_index, 0)]  # [N, X, Rx]
        inp = np.where(used_row[None], inp, 0)
        S = n_slices(input_bits, dac_bits)
        ra = active_rows(rows_active, Rx)
        Q = math.ceil(Rx / ra)
        pad = Q * ra - Rx
        shifts = (np.arange(S, dtype=np.int64) * dac_bits).reshape(S, 1, 1, 1)
        sl = (inp[None] >> shifts) & ((1 << dac_bits) - 1)                              # [S, N, X, Rx]
        sl = np.pad(sl, ((0, 0), (0, 0), (0, 0), (0, pad))).reshape(S, N, X, Q, ra)
        cells = np.pad(p.cells.astype(np.int64), ((0, 0), (0, pad), (0, 0))).reshape(X, Q, ra, Cx)
        colsum = np.einsum("snxqi,xqij->snxqj", sl, cells)                              # [S, N, X, Q, Cx]
        clipped = np.minimum(colsum, (1 << adc_bits) - 1).sum(axis=3)                   # [S, N, X, Cx]
        v = (clipped << shifts).sum(axis=0)                                              # [N, X, Cx]
        xs, js = np.nonzero((p.col_group >= 0) & (p.col_sign != 0))
        term = v[:, xs, js] * p.col_sign[xs, js].astype(np.int64) << p.col_shift[xs, js].astype(np.int64)
        dst = p.col_group[xs, js].astype(np.int64) * cols + p.col_index[xs, js]
        np.add.at(acc, (np.arange(N)[:, None], dst[None, :]), term)
    acc = acc.reshape(N, groups, cols)
    if p.offset:
        acc -= int(p.offset) * xq.sum(axis=2)[:, :, None]
    return acc


def spec_acc(spec: LayerSpec, xq: np.ndarray, adc_bits: int | None = None) -> np.ndarray:
    """:func:`program_acc` with the layer's own target parameters."""
    return program_acc(spec.program, xq, groups=spec.groups, cols=spec.cols, input_bits=spec.input_bits,
                       dac_bits=spec.dac_bits, adc_bits=spec.adc_bits if adc_bits is None else adc_bits,
                       rows_active=spec.rows_active)


def ideal_acc(spec: LayerSpec, xq: np.ndarray) -> np.ndarray:
    """``acc[n, g, c] = sum_r xq[n, g, r] * M[g, r, c]`` with ``M`` rebuilt from the program."""
    M = rebuild_matrix(spec.program, spec.groups, spec.rows, spec.cols)
    return np.einsum("ngr,grc->ngc", np.asarray(xq, np.int64), M)


def clipped_conversions(spec: LayerSpec, xq: np.ndarray) -> int:
    """How many ADC conversions (vector, crossbar, slice, chunk, used column) saturate."""
    p = spec.program
    xq = np.asarray(xq, dtype=np.int64)
    X, Rx, Cx = p.cells.shape
    if X == 0:
        return 0
    used_row = p.row_group >= 0
    inp = np.where(used_row[None], xq[:, np.where(used_row, p.row_group, 0), np.where(used_row, p.row_index, 0)], 0)
    S = n_slices(spec.input_bits, spec.dac_bits)
    ra = active_rows(spec.rows_active, Rx)
    Q = math.ceil(Rx / ra)
    pad = Q * ra - Rx
    shifts = (np.arange(S, dtype=np.int64) * spec.dac_bits).reshape(S, 1, 1, 1)
    sl = (inp[None] >> shifts) & ((1 << spec.dac_bits) - 1)
    sl = np.pad(sl, ((0, 0), (0, 0), (0, 0), (0, pad))).reshape(S, xq.shape[0], X, Q, ra)
    cells = np.pad(p.cells.astype(np.int64), ((0, 0), (0, pad), (0, 0))).reshape(X, Q, ra, Cx)
    colsum = np.einsum("snxqi,xqij->snxqj", sl, cells)
    used_col = (p.col_group >= 0) & (p.col_sign != 0)
    return int(np.count_nonzero((colsum > (1 << spec.adc_bits) - 1) & used_col[None, None, :, None, :]))
