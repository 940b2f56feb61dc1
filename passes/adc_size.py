"""adc-size: the ADC resolution every physical column needs (bit-slice paper, arXiv 1909.08496).

A column ``j`` of crossbar ``x`` is read ``target.rows_active`` word lines at a time: physical
rows ``i`` form chunks ``i // rows_active``, each converted separately. With inputs of
``dac_bits`` bits per cycle (largest value ``2**dac_bits - 1``) the largest possible sum the ADC
sees is::

    col_max_sum[x, j] = (2**dac_bits - 1) * max_k sum_{i in chunk k} cells[x, i, j]

and the ADC needs ``col_adc_bits = ceil(log2(col_max_sum + 1))`` bits to represent every sum
exactly (0 for an empty or unused column, which needs no conversion). A column whose need
exceeds ``target.adc_bits`` saturates at ``2**adc_bits - 1``; the simulator models that clipping.
With 1-bit cells and 1-bit DACs a column with ``n`` ones needs ``ceil(log2(n+1))`` bits, which
is why sparse high-order slices need far fewer bits (the paper's 1-bit ADC for the MSB slice).

Results: ``program.col_max_sum`` (int64 ``[X, Cx]``), ``program.col_adc_bits`` (int32
``[X, Cx]``); layer stats ``adc_bits_hist`` ({bits: columns}, over used columns),
``adc_bits_max``, ``adc_clipping_columns`` (columns needing more than ``target.adc_bits``),
``adc_columns`` (used columns). Vectorized over whole layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from xbc.errors import PassError
from xbc.passmanager import Pass, PassResult, register


def bit_length(a: np.ndarray) -> np.ndarray:
    """Elementwise ``int.bit_length`` of non-negative integers (= ceil(log2(a+1)))."""
    a = np.asarray(a, dtype=np.int64)
    return np.where(a > 0, np.frexp(a.astype(np.float64))[1], 0).astype(np.int32)


def column_max_sum(cells: np.ndarray, rows_active: int, dac_bits: int) -> np.ndarray:
    """``[X, Rx, Cx]`` cells -> ``[X, Cx]`` largest chunk sum times the largest input digit."""
    X, Rx, Cx = cells.shape
    n_chunks = -(-Rx // rows_active)
    pad = n_chunks * rows_active - Rx
    if pad:
        cells = np.concatenate((cells, np.zeros((X, pad, Cx), cells.dtype)), axis=1)
    sums = np.add.reduce(cells.reshape(X, n_chunks, rows_active, Cx), axis=2, dtype=np.int32)
    return sums.max(axis=1, initial=0).astype(np.int64) * ((1 << dac_bits) - 1)


@register
@dataclass(frozen=True)
class AdcSize(Pass):
    name: ClassVar[str] = "adc-size"
    summary: ClassVar[str] = "ADC bits each physical column needs (largest possible column sum)"

    def run(self, graph, ctx) -> PassResult:
        t = ctx.target
        ra, db = t.rows_active, t.dac_bits
        hist_all: dict[int, int] = {}
        clip = 0
        cols = 0
        bmax = 0
        n = 0
        for node in ctx.each_layer(graph):
            L = node.layer
            p = L.program
            if p is None:
                raise PassError(f"layer {L.id} ({node.name!r}) has no crossbar program; run 'slice-bits' "
                                f"before 'adc-size'")
            ms = column_max_sum(p.cells, ra, db)
            bits = bit_length(ms)
            p.col_max_sum = ms
            p.col_adc_bits = bits
            used = p.col_group >= 0
            vals, counts = np.unique(bits[used], return_counts=True)
            hist = {int(v): int(c) for v, c in zip(vals, counts)}
            L.stats["adc_bits_hist"] = hist
            L.stats["adc_bits_max"] = int(bits[used].max()) if used.any() else 0
            L.stats["adc_clipping_columns"] = int(np.count_nonzero(bits[used] > t.adc_bits))
            L.stats["adc_columns"] = int(used.sum())
            for k, v in hist.items():
                hist_all[k] = hist_all.get(k, 0) + v
            clip += L.stats["adc_clipping_columns"]
            cols += L.stats["adc_columns"]
            bmax = max(bmax, L.stats["adc_bits_max"])
            n += 1
        stats = {"layers": n, "columns": cols, "adc_bits_hist": dict(sorted(hist_all.items())),
                 "adc_bits_max": bmax, "clipping_columns": clip, "target_adc_bits": t.adc_bits}
        return PassResult(changed=n > 0, stats=stats)
