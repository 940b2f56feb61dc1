"""place: assign every physical crossbar to a tile (ISAAC tile / MARS core) and a slot in it.

Runs after ``squeeze`` and ``adc-size`` (every crossbar layer has ``layer.program``), before
``estimate``. The model, the greedy fallback and weight duplication are in
:mod:`xbc.placement` (pure functions); this pass turns the graph into a
:class:`xbc.placement.Instance` and writes the result back.

Instance from the graph
-----------------------
* layers in topological order, ``n_l = program.n_crossbars``;
* ADC sets per crossbar: the crossbar's ``Cx`` columns form ``target.partitions`` equal
  partitions, each with its own ADC set; a partition with a used column (``col_group >= 0``)
  needs its set (at least 1 per crossbar). Tile resource: ``target.adcs_per_tile`` sets;
* capacity ``target.crossbars_per_tile``, ``target.tiles`` tiles on a ``target.mesh_cols``-wide
  mesh (tile ``t`` at ``(t // mesh_cols, t % mesh_cols)``);
* edges: producer layer -> consumer layer whenever a path of digital ops joins them (residual
  adds and pooling included); weight = the producer's output volume scaled to ``1..100`` of the
  largest (``traffic=volume``) or 1 (``traffic=unit``);
* duplication latency inputs: output positions (``N*H*W`` of a conv / conv-transpose output, the
  rows ``prod(shape[:-1])`` of a Gemm / MatMul output), ``target.dac_cycles``, and
  ``ceil(rows_used / rows_active)`` word-line groups of the layer's fullest crossbar.

MARS (``technology = "sram"``) rules placement enforces: a macro is a crossbar, a core a tile,
at most ``crossbars_per_tile`` macros per core; each macro occupies one ADC set per column
partition in use and a core has ``adcs_per_tile`` ADC sets; ``keep-whole`` defaults to true, so a
layer whose macros fit one core sits in one core (its partial sums accumulate in that core);
``rows_active`` enters the duplication latency (word-line groups per read), not capacity.

Options
-------
``time-limit`` CP-SAT budget (deterministic seconds; wall seconds with ``deterministic=false``;
default 0.5: about 3 s on a loaded shared VM for synthetic ResNet-50, whose objective is the same
at 0.5 and 1.0 and one split better at 2.0 (12 s) — 117 vs 118 splits, same tiles; pass
``place{time-limit=2}`` or more for the last few splits),
``seed`` (None: the compile seed), ``workers``, ``w-tiles`` / ``w-split`` / ``w-traffic``
(None: strict lexicographic weights, solved in two stages), ``traffic`` (volume | unit),
``window`` (band half-width around the greedy layout, 0 = none), ``keep-whole`` (None: true for
SRAM targets), ``duplicate`` and ``dup-tiles`` (tile budget for primary + copies; None: the tiles
the unduplicated placement needs), ``greedy-only``, ``deterministic``.

Output
------
``program.tile`` / ``program.slot`` (int32 ``[X]``) for the primary copy of every crossbar;
``graph.meta["placement"]``: status, objective, bound, gap, seconds, method, tiles_used,
tile_ids, utilization (per used tile, fraction of capacity), greedy_objective, objective_terms,
layers ``{id: {"tiles", "counts"}}``, duplication ``{enabled, latency_before, latency_after,
speedup, replicas, replica_placement: {id: [{copy, tiles, counts, tile, slot}]}, stage_latency}``
(see docs/placement.md). :func:`xbc.placement.render_placement` prints it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from xbc.errors import OptionError, PassError
from xbc.ir import Graph, Node
from xbc.passmanager import Pass, PassContext, PassResult, register
from xbc.placement import Instance, LayerDemand, Options, place
from xbc.targets import Target


def crossbar_adc_sets(col_group: np.ndarray, partitions: int) -> np.ndarray:
    """``[X, Cx]`` column groups -> ADC sets each crossbar needs (partitions with a used column,
    at least 1)."""
    X, Cx = col_group.shape
    if X == 0:
        return np.zeros(0, np.int64)
    used = col_group >= 0
    part = (np.arange(Cx) * partitions) // Cx            # partition of each column
    per = np.stack([used[:, part == p].any(axis=1) for p in range(partitions)], axis=1)
    return np.maximum(per.sum(axis=1), 1).astype(np.int64)


def output_positions(node: Node) -> int:
    shape = node.outputs[0].shape
    if node.layer.kind in ("conv", "conv_transpose"):
        return int(shape[0] * int(np.prod(shape[2:], dtype=np.int64)))
    return int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1


def layer_edges(graph: Graph, layers: list[Node]) -> list[tuple[int, int, int]]:
    """(producer index, consumer index, producer output volume) for every pair of layers joined
    by a path of digital ops."""
    index = {id(n): i for i, n in enumerate(layers)}
    out: dict[tuple[int, int], int] = {}
    for i, node in enumerate(layers):
        vol = int(np.prod(node.outputs[0].shape, dtype=np.int64))
        seen: set[int] = set()
        stack = [v for v in node.outputs]
        while stack:
            v = stack.pop()
            for user, _ in v.uses:
                if id(user) in seen:
                    continue
                seen.add(id(user))
                if id(user) in index:
                    j = index[id(user)]
                    if j != i:
                        out[i, j] = max(out.get((i, j), 0), vol)
                else:
                    stack.extend(user.outputs)
    return [(a, b, w) for (a, b), w in sorted(out.items())]


def instance_from_graph(graph: Graph, target: Target, *, traffic: str = "volume",
                        keep_whole: bool | None = None) -> Instance:
    """The placement instance of a compiled graph (module docstring); its layers are
    ``graph.layers()`` in order."""
    layers = list(graph.layers())
    demands = []
    for node in layers:
        p = node.layer.program
        if p is None:
            raise PassError(f"layer {node.layer.id} ({node.name!r}) has no crossbar program; 'place' "
                            f"needs 'slice-bits' (and usually 'squeeze', 'adc-size') before it")
        X = p.n_crossbars
        adc = crossbar_adc_sets(p.col_group, target.partitions)
        rows_used = (p.row_group >= 0).sum(axis=1) if X else np.zeros(0, np.int64)
        blocks = int(np.max(-(-rows_used // target.rows_active))) if X else 1
        demands.append(LayerDemand(id=node.layer.id, n=X, adc=tuple(int(a) for a in adc),
                                   positions=output_positions(node), row_blocks=max(1, blocks)))
    raw = layer_edges(graph, layers)
    vmax = max((w for _, _, w in raw), default=1)
    edges = tuple((a, b, 1 if traffic == "unit" else max(1, int(round(100 * w / vmax)))) for a, b, w in raw)
    kw = target.technology == "sram" if keep_whole is None else keep_whole
    inst = Instance(layers=tuple(demands), edges=edges, capacity=target.crossbars_per_tile,
                    adcs_per_tile=target.adcs_per_tile, tiles=target.tiles, mesh_cols=target.mesh_cols,
                    dac_cycles=target.dac_cycles, keep_whole=kw, name=target.name)
    return inst


@register
@dataclass(frozen=True)
class Place(Pass):
    name: ClassVar[str] = "place"
    summary: ClassVar[str] = "assign crossbars to tiles (CP-SAT, greedy fallback, optional weight duplication)"

    time_limit: float = 0.5
    seed: int | None = None
    workers: int = 1
    w_tiles: int | None = None
    w_split: int | None = None
    w_traffic: int | None = None
    traffic: Literal["volume", "unit"] = "volume"
    window: int = 2
    keep_whole: bool | None = None
    duplicate: bool = False
    dup_tiles: int | None = None
    greedy_only: bool = False
    deterministic: bool = True

    def __post_init__(self):
        if not (self.time_limit > 0 and math.isfinite(self.time_limit)):
            raise OptionError(f"pass 'place': option 'time-limit' must be a positive number of seconds, "
                              f"got {self.time_limit}")
        if self.workers < 1:
            raise OptionError(f"pass 'place': option 'workers' must be at least 1, got {self.workers}")
        if self.window < 0:
            raise OptionError(f"pass 'place': option 'window' must be >= 0 (0: no band), got {self.window}")
        for k in ("w_tiles", "w_split", "w_traffic"):
            v = getattr(self, k)
            if v is not None and v < 0:
                raise OptionError(f"pass 'place': option '{k.replace('_', '-')}' must be >= 0, got {v}")
        if self.dup_tiles is not None and self.dup_tiles < 1:
            raise OptionError(f"pass 'place': option 'dup-tiles' must be at least 1, got {self.dup_tiles}")

    def options(self, ctx: PassContext) -> Options:
        return Options(time_limit=self.time_limit, seed=ctx.seed if self.seed is None else self.seed,
                       workers=self.workers, w_tiles=self.w_tiles, w_split=self.w_split,
                       w_traffic=self.w_traffic, greedy_only=self.greedy_only,
                       deterministic=self.deterministic, window=self.window)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        inst = instance_from_graph(graph, ctx.target, traffic=self.traffic, keep_whole=self.keep_whole)
        nodes = list(graph.layers())
        if self.dup_tiles is not None and self.dup_tiles > ctx.target.tiles:
            raise OptionError(f"pass 'place': dup-tiles={self.dup_tiles} exceeds the target's "
                              f"{ctx.target.tiles} tiles; use --set tiles={self.dup_tiles} or a smaller dup-tiles")
        res = place(inst, self.options(ctx), dup=self.duplicate, dup_tiles=self.dup_tiles)
        for node, ly, (tile, slot) in zip(nodes, res.instance.layers, res.slots):
            p = node.layer.program
            p.tile = np.ascontiguousarray(tile[:ly.n], np.int32)
            p.slot = np.ascontiguousarray(slot[:ly.n], np.int32)
        rep = res.report
        rep["options"] = self.spec()
        rep["keep_whole"] = inst.keep_whole
        graph.meta["placement"] = rep
        if rep["method"] == "greedy" and rep["status"] not in ("NOT_RUN", "OPTIMAL", "FEASIBLE"):
            ctx.warn(f"CP-SAT found no placement within time-limit={self.time_limit} "
                     f"(status {rep['status']}); using the greedy placement")
        stats = {k: rep[k] for k in ("tiles_used", "objective", "bound", "gap", "status", "method")}
        stats["crossbars"] = rep["crossbars"]
        if rep["duplication"]["enabled"]:
            stats["latency_before"] = rep["duplication"]["latency_before"]
            stats["latency_after"] = rep["duplication"]["latency_after"]
        return PassResult(changed=True, stats=stats)
