"""cim-sparsity: CIM-aware structured pruning (MARS) in the unit an SRAM CIM macro can skip.

Unit (a *group*)
    ``row-block`` consecutive matrix rows (default ``target.rows_active``: the word lines a macro
    turns on at once) x ``col-block`` consecutive output columns of one layer group (default: the
    output channels that share one macro, ``max(1, target.cols // (planes * signs))`` with
    ``planes = n_planes(weight_bits, cell_bits, encoding)`` and ``signs`` = 2 for the split
    encoding, 1 for offset; 64 // (7 * 2) = 4 output channels for the ``mars`` target). Rows are
    taken in ``layer.row_perm`` order and columns in ``layer.col_perm`` order when those are set.
    A pruned group is a block of word lines that the macro never turns on for those columns: its
    index code (``layer.stats["cim_pruned_groups"]``, bool ``[G, row blocks, column blocks]``)
    tells the controller to skip it.

Choice
    Pruning group ``k`` sets its integer weights to 0; its cost is the increase of the layer's
    squared weight error against the float weights, ``sum w_scale^2 ((t)^2 - (t - w)^2)`` over the
    group (``t = w_float / w_scale``) — about the group's energy, so smallest-norm groups go
    first. Groups are independent, so taking them cheapest first maximizes the number pruned for
    a given error. Groups whose integer weights are already all 0 cost nothing and are always
    marked. Limits (both optional, whichever binds first):

    * ``error-budget`` (default 1.0 when ``sparsity`` is not given): the layer's weight error
      power may grow to ``(1 + error_budget) * E_q``, ``E_q`` being the quantization noise power
      of ``quant.w_int_initial`` (as in orchestrate-bits; the nominal ``sum w_scale^2 / 12`` for an
      exactly pre-quantized layer). With trained-like dense weights this prunes only groups that
      are (nearly) zero: pruning real weights costs far more than quantization noise.
    * ``sparsity``: the fraction of groups to prune (cheapest first).

``quant.w_int`` (and ``layer.digits`` when set) are zeroed in the pruned groups; stats per layer
(``layer.stats["cim_sparsity"]``) and in total: groups, pruned groups, weight sparsity, error
increase, weight SQNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from xbc import qmath
from xbc.errors import OptionError
from xbc.ir import Graph
from xbc.layer import from_matrix, n_planes, to_matrix
from xbc.passmanager import Pass, PassContext, PassResult, register

from .orchestrate_bits import layer_error_power, layer_targets


def group_view(M: np.ndarray, row_perm, col_perm, RB: int, CB: int) -> np.ndarray:
    """``[G, R, C]`` -> ``[G, nR, nC, RB, CB]`` in permuted order, zero padded."""
    G, R, C = M.shape
    if row_perm is not None:
        M = M[np.arange(G)[:, None], np.asarray(row_perm, np.intp)]
    if col_perm is not None:
        M = np.take_along_axis(M, np.asarray(col_perm, np.intp)[:, None, :], axis=2)
    nR, nC = -(-R // RB), -(-C // CB)
    P = np.zeros((G, nR * RB, nC * CB), M.dtype)
    P[:, :R, :C] = M
    return P.reshape(G, nR, RB, nC, CB).transpose(0, 1, 3, 2, 4)


def group_mask_to_matrix(mask: np.ndarray, shape: tuple, row_perm, col_perm, RB: int, CB: int) -> np.ndarray:
    """Group mask ``[G, nR, nC]`` -> bool ``[G, R, C]`` in original row/column order."""
    G, R, C = shape
    full = np.repeat(np.repeat(mask, RB, axis=1), CB, axis=2)[:, :R, :C]
    out = np.empty_like(full)
    rp = np.tile(np.arange(R), (G, 1)) if row_perm is None else np.asarray(row_perm, np.intp)
    cp = np.tile(np.arange(C), (G, 1)) if col_perm is None else np.asarray(col_perm, np.intp)
    tmp = np.empty_like(full)
    tmp[np.arange(G)[:, None], rp] = full
    np.put_along_axis(out, np.broadcast_to(cp[:, None, :], full.shape).copy(), tmp, axis=2)
    return out


@register
@dataclass(frozen=True)
class CimSparsity(Pass):
    name: ClassVar[str] = "cim-sparsity"
    summary: ClassVar[str] = "structured pruning in groups of rows_active word lines x a macro's columns (MARS)"

    error_budget: float | None = None   # none: 1.0 unless sparsity is given
    sparsity: float | None = None       # fraction of groups to prune
    row_block: int | None = None        # none: target.rows_active
    col_block: int | None = None        # none: output channels per macro

    def __post_init__(self):
        if self.error_budget is not None and not (self.error_budget >= 0 and math.isfinite(self.error_budget)):
            raise OptionError(f"cim-sparsity: error-budget = {self.error_budget} must be a finite number >= 0")
        if self.sparsity is not None and not 0.0 <= self.sparsity <= 1.0:
            raise OptionError(f"cim-sparsity: sparsity = {self.sparsity} must be in [0, 1]")
        for k in ("row_block", "col_block"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise OptionError(f"cim-sparsity: {k.replace('_', '-')} = {v} must be at least 1")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        t = ctx.target
        budget = self.error_budget if (self.error_budget is not None or self.sparsity is not None) else 1.0
        per_layer = {}
        tot = {"groups": 0, "pruned": 0, "weights": 0, "zeros": 0, "E_q": 0.0, "E": 0.0, "sig": 0.0}
        changed = False
        for node in ctx.each_layer(graph):
            L = node.layer
            q = L.quant
            if q is None:
                raise OptionError(f"cim-sparsity: layer {L.id} is not quantized; run 'quantize' first")
            signs = 2 if t.weight_encoding == "split" else 1
            P = n_planes(q.weight_bits, t.cell_bits, t.weight_encoding)
            RB = self.row_block or t.rows_active
            CB = self.col_block or max(1, t.cols // (P * signs))
            T, s = layer_targets(node)
            V = to_matrix(L.kind, np.asarray(q.w_int, np.int64), L.groups, node.attrs)
            V0 = to_matrix(L.kind, np.asarray(q.w_int_initial if q.w_int_initial is not None else q.w_int,
                                              np.int64), L.groups, node.attrs)
            G, R, C = V.shape
            s2 = (s ** 2)[:, None, :]
            E_q = layer_error_power(T, V0, s)
            if E_q <= 0.0 or q.prequantized:  # float weights say nothing beyond the integers
                E_q = float(np.sum(s2 * np.ones_like(T)) / 12.0)
            E_cur = layer_error_power(T, V, s)
            # cost of pruning each group
            dE = s2 * (T ** 2 - (T - V) ** 2)
            cost = group_view(dE, L.row_perm, L.col_perm, RB, CB).sum(axis=(-2, -1))        # [G, nR, nC]
            nz = group_view((V != 0).astype(np.int64), L.row_perm, L.col_perm, RB, CB).sum(axis=(-2, -1))
            real = group_view(np.ones((G, R, C), np.int8), L.row_perm, L.col_perm, RB, CB).sum(axis=(-2, -1)) > 0
            mask = (nz == 0) & real
            n_groups = int(real.sum())
            free_ = int(mask.sum())
            cand = np.flatnonzero((~mask & real).reshape(-1))
            order = cand[np.lexsort((cand, cost.reshape(-1)[cand]))]
            csum = np.cumsum(cost.reshape(-1)[order])
            k = len(order)
            if budget is not None:
                remaining = (1.0 + budget) * E_q - E_cur
                k = int(np.searchsorted(csum, remaining * (1 + 1e-12), side="right")) if remaining > 0 else 0
            if self.sparsity is not None:
                k = min(k, max(0, int(math.floor(self.sparsity * n_groups + 1e-9)) - free_))
            take = order[:k]
            mflat = mask.reshape(-1)
            mflat[take] = True
            mask = mflat.reshape(mask.shape)
            if k:
                zero = group_mask_to_matrix(mask, (G, R, C), L.row_perm, L.col_perm, RB, CB)
                Vn = np.where(zero, 0, V)
                q.w_int = np.ascontiguousarray(from_matrix(L.kind, Vn.astype(np.int32), tuple(q.w_int.shape),
                                                           L.groups, node.attrs), dtype=np.int32)
                if L.digits is not None:
                    L.digits = np.where(zero[None], 0, L.digits).astype(np.int8)
                changed = True
            else:
                Vn = V
            E_fin = layer_error_power(T, Vn, s)
            sig = float(np.sum(s2 * T ** 2))
            info = {"group_shape": [RB, CB], "groups": n_groups, "pruned_groups": int(mask.sum()),
                    "pruned_nonzero_groups": int(k), "weight_sparsity": float(np.mean(Vn == 0)),
                    "E_q": E_q, "E_final": E_fin, "error_increase": E_fin / E_q - 1.0,
                    "w_sqnr_db": qmath.sqnr_db(sig, E_fin)}
            L.stats["cim_pruned_groups"] = mask.copy()
            L.stats["cim_group_shape"] = [RB, CB]
            L.stats["cim_sparsity"] = info
            L.stats["w_sqnr_db"] = info["w_sqnr_db"]
            per_layer[L.id] = {k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in info.items()}
            tot["groups"] += n_groups
            tot["pruned"] += int(mask.sum())
            tot["weights"] += Vn.size
            tot["zeros"] += int(np.count_nonzero(Vn == 0))
            tot["E_q"] += E_q
            tot["E"] += E_fin
            tot["sig"] += sig
        stats = {"layers": len(per_layer), "error_budget": budget, "sparsity_target": self.sparsity,
                 "groups": tot["groups"], "pruned_groups": tot["pruned"],
                 "group_sparsity": tot["pruned"] / max(tot["groups"], 1),
                 "weight_sparsity": tot["zeros"] / max(tot["weights"], 1),
                 "error_increase": (tot["E"] / tot["E_q"] - 1.0) if tot["E_q"] > 0 else 0.0,
                 "w_sqnr_db": qmath.sqnr_db(tot["sig"], tot["E"]), "per_layer": per_layer}
        return PassResult(changed, stats)
