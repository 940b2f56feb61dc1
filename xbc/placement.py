"""Placement of physical crossbars onto the tiles of a chip (pure functions, no IR).

The pass ``place`` (passes/place.py) turns the compiled graph into an :class:`Instance` and
calls :func:`place`; everything here works on plain data so it can be tested and benchmarked
on instances built directly.

Instance
--------
Layer ``l`` (topological order) has ``n_l`` physical crossbars (``copies_l`` times when weight
duplication gave it replicas). Crossbar ``i`` of a layer uses ``a_li`` **ADC sets**: a crossbar
is split into ``partitions`` column partitions of ``cols / partitions`` columns, each with its
own ADC set, and a partition holding at least one programmed column needs its ADC set, so
``a_li = #{p : some column of partition p is in use}`` (1 for every non-empty ReRAM crossbar,
``partitions = 1``; up to 4 for a MARS macro). A tile (ISAAC tile / MARS core) holds at most
``crossbars_per_tile`` crossbars and ``adcs_per_tile`` ADC sets. Tile ``t`` sits on the mesh at
``(t // mesh_cols, t % mesh_cols)``. ``edges`` are producer -> consumer layer pairs (through
any digital ops in between) with a weight ``w_e`` (activation volume scaled to 1..100, or 1).

Crossbars of one layer with the same ADC use are interchangeable, so the model **aggregates
them**: this is what makes ResNet-50 (54 layers, thousands of crossbars) a model of a few
thousand variables instead of millions.

Candidate tiles
---------------
The model uses the first ``K`` tiles of a compact order (:func:`tile_order`): a block of the
mesh about ``sqrt(K)`` tiles wide, walked row by row in a snake (boustrophedon) so that
consecutive tiles are mesh neighbours, then the rest of the chip. ``K`` is the number of tiles
the greedy placement uses (an upper bound on the optimum's tiles under lexicographic weights),
or every chip tile when greedy fails.

CP-SAT model (:func:`build_model`)
----------------------------------
Variables, for layer ``l``, ADC class ``j`` (crossbars with ``a`` ADC sets; one class per layer
on ReRAM) and candidate tile ``k``:

* ``x[l,j,k]`` integer in ``[0, min(n_lj, C)]``: crossbars of class ``j`` of ``l`` on ``k``;
* ``y[l,k]`` boolean: layer ``l`` is present on ``k``;  ``u[k]`` boolean: tile ``k`` is used;
* per layer with traffic, the bounding box of its tiles on the mesh ``rmin_l <= rmax_l``,
  ``cmin_l <= cmax_l``; per edge ``e = (l, m)`` hop distances ``dr_e, dc_e >= 0``.

Constraints:

* every crossbar placed exactly once: ``sum_k x[l,j,k] = n_lj``;
* linking: ``y[l,k] <= sum_j x[l,j,k] <= min(n_l, C) * y[l,k]``,  ``y[l,k] <= u[k]``;
* capacity: ``sum_{l,j} x[l,j,k] <= C * u[k]``;  ADC sets: ``sum_{l,j} a_lj x[l,j,k] <= A * u[k]``
  (left out when it cannot bind, ``max_a * C <= A``);
* symmetry breaking: ``u[k] >= u[k+1]`` (used tiles are a prefix of the candidate order; this
  loses nothing for the tile and split terms, and for traffic it restricts the search to
  prefixes of the compact order);
* valid cuts: ``sum_k u[k] >= ceil(N / C)``, ``ceil(sum a / A)``; ``sum_k y[l,k] >= ceil(n_l / C)``;
* ``keep_whole`` (MARS default): a layer whose crossbars and ADC sets fit one tile sits on one tile,
  ``sum_k y[l,k] = 1``, so its partial sums accumulate inside one core;
* boxes: ``y[l,k] => rmin_l <= row_k <= rmax_l  and  cmin_l <= col_k <= cmax_l``;
  ``dr_e >= rmax_m - rmin_l``, ``dr_e >= rmax_l - rmin_m`` and the same for columns, so
  ``D_e = dr_e + dc_e`` is the largest Manhattan distance between the bounding boxes of the
  producer's and the consumer's tiles: the exact hop count between their tiles when each sits on
  one tile, 0 when both share a single tile, and the worst-case hop count of any transfer
  otherwise (the pipeline's slowest link).

Objective (lexicographic through weights)::

    minimize  w_tiles * sum_k u[k]  +  w_split * (sum_{l,k} y[l,k] - L)  +  w_traffic * sum_e w_e D_e

With the weights left to ``None`` they are chosen to make the order strict: ``w_traffic = 1``,
``w_split = TRmax + 1`` and ``w_tiles = w_split * SPmax + TRmax + 1`` where ``TRmax`` and
``SPmax`` bound the traffic and split terms. Fewest tiles first, then fewest layers split over
tiles, then least traffic.

Band (option ``window``)
------------------------
With ``window = w > 0`` layer ``l`` may only use candidate tiles within ``w`` positions of the
tiles the greedy (topological, first-fit) layout gives it. This keeps the model linear in the
number of layers (synthetic ResNet-50, stage 1: 597 instead of 4 905 variables) and keeps producers and
consumers near each other; the model is exact when ``2w + 1 >= K``. ``"restricted": true`` in the
report says the band was active; the reported ``bound`` is then the restriction-free bound
(``ceil(N / C)`` tiles, ``sum_l ceil(n_l / C) - 1`` splits, no traffic), never the band's.

Solving and determinism
-----------------------
The greedy placement is always computed and hints CP-SAT (a complete hint, boxes included).
With lexicographic weights CP-SAT runs in two stages on well-scaled objectives: ``split``
minimizes ``W1 * tiles + split`` (``W1 = SPmax + 1``, no traffic variables) with half the budget;
``traffic`` adds ``W1 * tiles + split <= stage-1 value`` and minimizes traffic with the rest,
hinted by stage 1. Because ``w_tiles = w_split * W1`` the two stages optimize exactly the
weighted objective, and a stage-1 bound ``B1`` gives the valid bound ``w_split * B1``. Explicit
weights give one weighted stage (``all``).

CP-SAT runs with ``num_workers = workers``, ``random_seed = seed`` and, by default
(``deterministic``), stops at ``max_deterministic_time`` (the ``time_limit`` budget, in CP-SAT's
deterministic seconds: about a wall second on an idle modern core, 5-10 wall seconds on a loaded
shared VM); one worker is sequential and reproducible, more workers use ``interleave_search``
(CP-SAT's deterministic parallel mode, independent of the number of workers). A wall-clock cap of
``10 * budget + 10`` s stays as a safety net; if it is what stopped a stage the report says
``"deterministic": false``. With ``deterministic = False`` ``time_limit`` is wall seconds and
parallel workers run freely. The best of greedy and the CP-SAT stages, all scored by
:func:`evaluate` on the same objective, is returned, so CP-SAT is never worse than greedy.

Greedy (:func:`greedy`) and the contiguous DP (:func:`contiguous`)
------------------------------------------------------------------
First fit in topological order over the compact tile order: a layer that must stay whole goes to
the first tile with room for all of it (capacity and ADC sets); any other layer fills the first
tiles with room, splitting as needed, taking crossbars with fewer ADC sets first. Always
feasible when the crossbars fit the chip and no layer must stay whole; it fails only when
``keep_whole`` layers cannot be packed, in which case CP-SAT searches every chip tile.
Its objective is reported as ``greedy_objective``.

Where ADC sets cannot bind and no layer must stay whole (ReRAM targets), an exact dynamic
program also finds the order-preserving layout on ``ceil(N / C)`` tiles with the fewest splits
(empty slots placed before layers so they start on tile boundaries; see :func:`contiguous`). The
better of the two starts CP-SAT (hint and band centre) and is the fallback.

Weight duplication (:func:`duplicate`)
--------------------------------------
In a layer pipeline (PIMCOMP-style), layer ``l`` needs ``P_l`` output positions (``N*H*W`` for a
convolution, the rows of a matmul), each ``dac_cycles = ceil(input_bits / dac_bits)`` crossbar
activations times ``B_l = ceil(rows_used / rows_active)`` word-line groups. With ``r_l`` copies
of its crossbars the positions are shared out, so its stage latency is
``T_l = ceil(P_l / r_l) * dac_cycles * B_l`` crossbar activation cycles and the pipeline runs at
``max_l T_l``. A copy costs ``n_l`` crossbars and ``sum_i a_li`` ADC sets. Greedy: give a copy to
the current bottleneck while the budget (free crossbars and ADC sets on ``dup_tiles`` tiles,
default the tiles the unduplicated placement needs) allows; stop when the bottleneck cannot get
one. For that crossbar / ADC-set budget, incrementing the bottleneck is optimal for
``min max_l T_l`` (to lower the maximum the
bottleneck must get a copy, and the copies needed for a target latency are monotone), and a
final pass takes back copies that do not lower the maximum; if the greedy placement cannot pack
the copies into the budget tiles (``keep_whole``, ADC sets), copies of the least critical
layers are taken back until it can. Copies are placed like extra
crossbars of their layer: the first ``n_l`` crossbars in the slot assignment are the primary copy.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import PlacementError

# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerDemand:
    """What placement needs to know about one crossbar layer."""

    id: str
    n: int                          # physical crossbars of one copy
    adc: tuple[int, ...] = ()       # ADC sets per crossbar (len n); () means 1 each
    positions: int = 1              # output positions per inference (duplication latency)
    row_blocks: int = 1             # ceil(rows_used / rows_active), worst crossbar
    copies: int = 1                 # 1 + replicas

    @property
    def total(self) -> int:
        return self.n * self.copies

    def adc_array(self) -> np.ndarray:
        if not self.adc:
            return np.ones(self.n, np.int64)
        a = np.asarray(self.adc, np.int64)
        if a.shape != (self.n,):
            raise ValueError(f"layer {self.id}: adc has {a.size} entries for {self.n} crossbars")
        return a

    def classes(self) -> tuple[np.ndarray, np.ndarray]:
        """ADC values (ascending) and how many crossbars (all copies) use each."""
        vals, cnt = np.unique(self.adc_array(), return_counts=True)
        return vals.astype(np.int64), cnt.astype(np.int64) * self.copies


@dataclass(frozen=True)
class Instance:
    layers: tuple[LayerDemand, ...]
    edges: tuple[tuple[int, int, int], ...] = ()   # (producer, consumer, weight >= 0)
    capacity: int = 96                             # crossbars_per_tile
    adcs_per_tile: int = 96
    tiles: int = 1024
    mesh_cols: int = 32
    dac_cycles: int = 1
    keep_whole: bool = False
    name: str = "target"

    @property
    def total(self) -> int:
        return int(sum(ly.total for ly in self.layers))

    @property
    def total_adc(self) -> int:
        return int(sum(int(ly.adc_array().sum()) * ly.copies for ly in self.layers))

    def with_copies(self, copies: list[int] | tuple[int, ...]) -> "Instance":
        return replace(self, layers=tuple(replace(ly, copies=int(c)) for ly, c in zip(self.layers, copies)))


@dataclass(frozen=True)
class Options:
    time_limit: float = 2.0         # CP-SAT budget: deterministic seconds (wall seconds if not deterministic)
    seed: int = 0
    workers: int = 1
    w_tiles: int | None = None
    w_split: int | None = None
    w_traffic: int | None = None
    greedy_only: bool = False
    deterministic: bool = True
    window: int = 2                 # band half-width in candidate tiles (0: every layer on every tile)


@dataclass
class Solution:
    """Counts per layer per ADC class per candidate tile (``counts[l]`` is ``[classes, K]``)."""

    order: np.ndarray               # int64 [K] physical tile ids of the candidates
    counts: list[np.ndarray]

    def per_layer(self) -> np.ndarray:
        K = len(self.order)
        return np.stack([c.sum(axis=0) if c.size else np.zeros(K, np.int64) for c in self.counts]) \
            if self.counts else np.zeros((0, K), np.int64)


# ----------------------------------------------------------------------------------------
# checks, tile order, bounds
# ----------------------------------------------------------------------------------------

def check_fits(inst: Instance) -> None:
    """Raise :class:`PlacementError` when the crossbars cannot fit the chip at all."""
    N = inst.total
    cap = inst.capacity * inst.tiles
    if N > cap:
        need = math.ceil(N / inst.capacity)
        raise PlacementError(
            f"placement needs {N} crossbars but target {inst.name!r} has {inst.tiles} tiles x "
            f"{inst.capacity} crossbars per tile = {cap}",
            hint=f"use --set tiles={need} (or more crossbars_per_tile)")
    for ly in inst.layers:
        if ly.n and int(ly.adc_array().max()) > inst.adcs_per_tile:
            raise PlacementError(
                f"layer {ly.id}: a crossbar uses {int(ly.adc_array().max())} ADC sets but a tile of target "
                f"{inst.name!r} has only {inst.adcs_per_tile}",
                hint=f"use --set adcs_per_tile={int(ly.adc_array().max())}")
    A = inst.total_adc
    if A > inst.adcs_per_tile * inst.tiles:
        need = math.ceil(A / inst.adcs_per_tile)
        raise PlacementError(
            f"placement needs {A} ADC sets but target {inst.name!r} has {inst.tiles} tiles x "
            f"{inst.adcs_per_tile} ADC sets = {inst.adcs_per_tile * inst.tiles}",
            hint=f"use --set tiles={need} (or more adcs_per_tile)")


def lower_bound_tiles(inst: Instance) -> int:
    if inst.total == 0:
        return 0
    return max(math.ceil(inst.total / inst.capacity), math.ceil(inst.total_adc / inst.adcs_per_tile))


def tile_order(tiles: int, mesh_cols: int, want: int) -> np.ndarray:
    """All chip tiles, compact first: a snake over a block about ``sqrt(want)`` wide, then the rest."""
    ids = np.arange(tiles, dtype=np.int64)
    r, c = ids // mesh_cols, ids % mesh_cols
    want = max(1, min(want, tiles))
    w = min(mesh_cols, max(1, math.isqrt(want - 1) + 1))
    while w < mesh_cols and int(np.sum(c < w)) < want:
        w += 1
    inb = c < w
    key_c = np.where(r % 2 == 0, c, w - 1 - c)
    block = ids[inb][np.lexsort((key_c[inb], r[inb]))]
    rest = ids[~inb][np.lexsort((r[~inb], c[~inb] + r[~inb]))]
    return np.concatenate([block, rest])


def coords(tile_ids: np.ndarray, mesh_cols: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(tile_ids, np.int64)
    return t // mesh_cols, t % mesh_cols


def split_weight(inst: Instance, order: np.ndarray) -> int:
    """``W1 = SPmax + 1``: one tile outweighs every possible split (stage 1 objective)."""
    K = len(order)
    return sum(max(0, min(ly.total, K) - 1) for ly in inst.layers) + 1


def auto_weights(inst: Instance, order: np.ndarray, opts: Options) -> tuple[int, int, int]:
    """(w_tiles, w_split, w_traffic); ``None`` options become strict lexicographic weights."""
    K = len(order)
    rr, cc = coords(order, inst.mesh_cols)
    span = (int(rr.max() - rr.min()) + int(cc.max() - cc.min())) if K else 0
    wt_r = 1 if opts.w_traffic is None else int(opts.w_traffic)
    tr_max = wt_r * span * sum(w for _, _, w in inst.edges)
    ws = tr_max + 1 if opts.w_split is None else int(opts.w_split)
    sp_max = sum(max(0, min(ly.total, K) - 1) for ly in inst.layers)
    wt = ws * sp_max + tr_max + 1 if opts.w_tiles is None else int(opts.w_tiles)
    return wt, ws, wt_r


# ----------------------------------------------------------------------------------------
# greedy and evaluation
# ----------------------------------------------------------------------------------------

def _must_stay_whole(inst: Instance, ly: LayerDemand) -> bool:
    """keep_whole applies to a layer (with its copies) that fits one tile: crossbars and ADC sets."""
    return (inst.keep_whole and 0 < ly.total <= inst.capacity
            and int(ly.adc_array().sum()) * ly.copies <= inst.adcs_per_tile)


def greedy(inst: Instance, order: np.ndarray | None = None) -> Solution | None:
    """First-fit placement in topological order (see module docstring); ``None`` if it fails."""
    if order is None:
        order = tile_order(inst.tiles, inst.mesh_cols, lower_bound_tiles(inst))
    T = len(order)
    free = np.full(T, inst.capacity, np.int64)
    free_adc = np.full(T, inst.adcs_per_tile, np.int64)
    counts = []
    for ly in inst.layers:
        vals, cnt = ly.classes()
        c = np.zeros((len(vals), T), np.int64)
        if _must_stay_whole(inst, ly):
            need_adc = int((vals * cnt).sum())
            ok = np.nonzero((free >= ly.total) & (free_adc >= need_adc))[0]
            if ok.size == 0:
                return None
            k = int(ok[0])
            c[:, k] = cnt
            free[k] -= ly.total
            free_adc[k] -= need_adc
        else:
            left = cnt.copy()
            for k in range(T):
                if not left.any():
                    break
                if free[k] == 0:
                    continue
                for j in range(len(vals)):            # fewer ADC sets first
                    take = int(min(left[j], free[k], free_adc[k] // vals[j]))
                    if take > 0:
                        c[j, k] += take
                        left[j] -= take
                        free[k] -= take
                        free_adc[k] -= take * vals[j]
            if left.any():
                return None
        counts.append(c)
    used = np.nonzero(free < inst.capacity)[0]
    K = int(used.max()) + 1 if used.size else 0
    return Solution(order=np.asarray(order[:K]), counts=[c[:, :K] for c in counts])


def contiguous(inst: Instance, order: np.ndarray | None = None) -> Solution | None:
    """Fewest splits among order-preserving layouts on ``ceil(N / C)`` tiles (exact DP).

    Layers are laid out one after the other along the candidate order (as first-fit does), but
    up to ``S = K*C - N`` slots may be left empty before any layer so that it starts on a tile
    boundary instead of being split. ``best_i[w]`` = fewest splits of layers ``< i`` having used
    ``w`` empty slots; layer ``i`` starting at position ``p = prefix_i + w`` spans
    ``(p + n_i - 1) // C - p // C`` tile boundaries; ``best_{i+1}[w] = min_{v <= w} best_i[v] +
    splits_i(w)``. O(L * S). Layers stay contiguous and in topological order, so traffic stays
    as low as first-fit's. Only for instances where ADC sets cannot bind and no layer must stay
    whole (``None`` otherwise).
    """
    C = inst.capacity
    if inst.keep_whole or inst.total == 0:
        return None
    if max(int(ly.adc_array().max()) for ly in inst.layers if ly.total) * C > inst.adcs_per_tile:
        return None
    n = np.array([ly.total for ly in inst.layers], np.int64)
    K = math.ceil(int(n.sum()) / C)
    if order is None:
        order = tile_order(inst.tiles, inst.mesh_cols, K)
    if K > len(order):
        return None
    S = K * C - int(n.sum())
    pre = np.concatenate([[0], np.cumsum(n)])
    w = np.arange(S + 1, dtype=np.int64)
    best = np.where(w == 0, 0, np.iinfo(np.int64).max // 4)
    back = []
    for i in range(len(n)):
        run_min = np.minimum.accumulate(best)
        # earliest v <= w reaching the running minimum (least waste on ties)
        is_new = np.concatenate([[True], run_min[1:] < run_min[:-1]])
        arg = np.maximum.accumulate(np.where(is_new, w, 0))
        pos = pre[i] + w
        sp = (pos + n[i] - 1) // C - pos // C if n[i] > 0 else np.zeros_like(w)
        best = run_min + sp
        back.append(arg)
    wi = int(np.argmin(best))
    start = np.zeros(len(n), np.int64)
    for i in range(len(n) - 1, -1, -1):
        start[i] = pre[i] + wi
        wi = int(back[i][wi])
    counts = []
    for ly, st in zip(inst.layers, start.tolist()):
        vals, cnt = ly.classes()
        c = np.zeros((len(vals), K), np.int64)
        if ly.total:
            # positions st .. st+n-1, classes in order
            cls = np.repeat(np.arange(len(vals)), cnt)
            tiles = (st + np.arange(ly.total)) // C
            np.add.at(c, (cls, tiles), 1)
        counts.append(c)
    return Solution(order=np.asarray(order[:K]), counts=counts)


def evaluate(inst: Instance, sol: Solution, weights: tuple[int, int, int]) -> dict[str, int]:
    """The objective terms of a placement: tiles used, layer splits, traffic, weighted sum."""
    X = sol.per_layer()
    present = X > 0
    tiles = int(present.any(axis=0).sum()) if X.size else 0
    nonempty = [i for i, ly in enumerate(inst.layers) if ly.total > 0]
    split = int(present.sum()) - len(nonempty)
    traffic = 0
    if inst.edges and X.size:
        rr, cc = coords(sol.order, inst.mesh_cols)
        box = {}
        for i in nonempty:
            p = present[i]
            box[i] = (rr[p].min(), rr[p].max(), cc[p].min(), cc[p].max())
        for a, b, w in inst.edges:
            if w <= 0 or a not in box or b not in box:
                continue
            A, B = box[a], box[b]
            d = max(B[1] - A[0], A[1] - B[0]) + max(B[3] - A[2], A[3] - B[2])
            traffic += int(w) * int(d)
    wt, ws, wr = weights
    return {"tiles": tiles, "split": split, "traffic": traffic,
            "objective": wt * tiles + ws * split + wr * traffic}


def check_solution(inst: Instance, sol: Solution) -> None:
    """Raise if a tile is over capacity / ADC sets or a crossbar is not placed exactly once."""
    for ly, c in zip(inst.layers, sol.counts):
        vals, cnt = ly.classes()
        if c.shape[0] != len(vals) or not np.array_equal(c.sum(axis=1), cnt) or (c < 0).any():
            raise AssertionError(f"layer {ly.id}: crossbars not placed exactly once")
    X = sol.per_layer()
    if X.size and (X.sum(axis=0) > inst.capacity).any():
        raise AssertionError("a tile is over capacity")
    adc = sum((ly.classes()[0][:, None] * c).sum(axis=0) for ly, c in zip(inst.layers, sol.counts)) \
        if sol.counts else 0
    if np.any(np.asarray(adc) > inst.adcs_per_tile):
        raise AssertionError("a tile is over its ADC sets")


# ----------------------------------------------------------------------------------------
# CP-SAT model
# ----------------------------------------------------------------------------------------

def band(inst: Instance, sol: Solution, K: int, window: int) -> list[np.ndarray]:
    """Candidate tiles each layer may use: within ``window`` positions of the tiles it has in
    ``sol`` (all ``K`` tiles when ``window <= 0`` or the band would cover them anyway)."""
    out = []
    X = sol.per_layer()
    for l in range(len(inst.layers)):
        if window <= 0 or X.size == 0 or 2 * window + 1 >= K:
            out.append(np.arange(K))
            continue
        ks = np.nonzero(X[l] > 0)[0]
        if ks.size == 0:
            out.append(np.arange(K))
            continue
        out.append(np.arange(max(0, int(ks.min()) - window), min(K, int(ks.max()) + window + 1)))
    return out


def build_model(inst: Instance, opts: Options | None = None, order: np.ndarray | None = None,
                hint: Solution | None = None, stage: str = "all", limit: int | None = None,
                allowed: list[np.ndarray] | None = None):
    """Build the CP-SAT model of the module docstring over candidate tiles ``order``.

    ``order`` defaults to the tiles the greedy placement uses (all chip tiles if greedy fails);
    ``allowed[l]`` optionally restricts layer ``l`` to some candidate indices (see :func:`band`).
    ``stage``: ``"all"`` minimizes the weighted objective; ``"split"`` minimizes
    ``W1 * tiles + split`` (no traffic variables); ``"traffic"`` adds ``W1 * tiles + split <=
    limit`` and minimizes traffic. Returns ``(model, vars)`` with ``vars`` holding ``x``
    ({(l, j, k): IntVar}), ``y`` ({(l, k): BoolVar}), ``u``, ``dist`` (per edge),
    ``terms`` (linear expressions tiles / split / traffic), ``weights``, ``order``.
    """
    from ortools.sat.python import cp_model  # noqa: PLC0415

    opts = opts or Options()
    if order is None:
        g = hint if hint is not None else greedy(inst)
        order = g.order if g is not None else tile_order(inst.tiles, inst.mesh_cols, inst.tiles)
    order = np.asarray(order, np.int64)
    K = len(order)
    C, A = inst.capacity, inst.adcs_per_tile
    rr, cc = coords(order, inst.mesh_cols)
    weights = auto_weights(inst, order, opts)
    wt, ws, wr = weights
    m = cp_model.CpModel()
    x: dict[tuple[int, int, int], Any] = {}
    y: dict[tuple[int, int], Any] = {}
    u = [m.new_bool_var(f"u{k}") for k in range(K)]
    tile_load: list[list] = [[] for _ in range(K)]
    tile_adc: list[list] = [[] for _ in range(K)]
    adc_binds = False
    classes = []
    ks_of = []
    for l, ly in enumerate(inst.layers):
        vals, cnt = ly.classes()
        classes.append((vals, cnt))
        ks = np.arange(K) if allowed is None else np.asarray(allowed[l])
        ks_of.append(ks)
        if ly.total == 0:
            continue
        adc_binds |= int(vals.max()) * C > A
        cap_l = min(ly.total, C)
        for k in ks.tolist():
            y[l, k] = m.new_bool_var(f"y{l}_{k}")
            xs = []
            for j in range(len(vals)):
                v = m.new_int_var(0, int(min(cnt[j], C)), f"x{l}_{j}_{k}")
                x[l, j, k] = v
                xs.append(v)
                tile_load[k].append(v)
                tile_adc[k].append(int(vals[j]) * v)
            m.add(sum(xs) <= cap_l * y[l, k])
            m.add(sum(xs) >= y[l, k])
            m.add_implication(y[l, k], u[k])
        for j in range(len(vals)):
            m.add(sum(x[l, j, k] for k in ks.tolist()) == int(cnt[j]))
        ys = [y[l, k] for k in ks.tolist()]
        if _must_stay_whole(inst, ly):
            m.add(sum(ys) == 1)
        else:
            m.add(sum(ys) >= math.ceil(ly.total / C))
    for k in range(K):
        if tile_load[k]:
            m.add(sum(tile_load[k]) <= C * u[k])
            if adc_binds:
                m.add(sum(tile_adc[k]) <= A * u[k])
        else:
            m.add(u[k] == 0)
        if k + 1 < K:
            m.add(u[k] >= u[k + 1])
    if K:
        m.add(sum(u) >= lower_bound_tiles(inst))
    # traffic: bounding boxes and per-edge hop distances
    edges = [(a, b, int(w)) for a, b, w in inst.edges
             if w > 0 and inst.layers[a].total > 0 and inst.layers[b].total > 0]
    dist = []
    box: dict[int, tuple] = {}
    if wr > 0 and edges and K and stage != "split":
        for l in sorted({a for a, _, _ in edges} | {b for _, b, _ in edges}):
            ks = ks_of[l]
            r0, r1 = int(rr[ks].min()), int(rr[ks].max())
            c0, c1 = int(cc[ks].min()), int(cc[ks].max())
            rmin, rmax = m.new_int_var(r0, r1, f"rmin{l}"), m.new_int_var(r0, r1, f"rmax{l}")
            cmin, cmax = m.new_int_var(c0, c1, f"cmin{l}"), m.new_int_var(c0, c1, f"cmax{l}")
            m.add(rmin <= rmax)
            m.add(cmin <= cmax)
            for k in ks.tolist():
                m.add(rmin <= int(rr[k])).only_enforce_if(y[l, k])
                m.add(rmax >= int(rr[k])).only_enforce_if(y[l, k])
                m.add(cmin <= int(cc[k])).only_enforce_if(y[l, k])
                m.add(cmax >= int(cc[k])).only_enforce_if(y[l, k])
            box[l] = (rmin, rmax, cmin, cmax)
        R = int(rr.max() - rr.min())
        Cc = int(cc.max() - cc.min())
        for e, (a, b, w) in enumerate(edges):
            A_, B_ = box[a], box[b]
            dr = m.new_int_var(0, R, f"dr{e}")
            dc = m.new_int_var(0, Cc, f"dc{e}")
            m.add(dr >= B_[1] - A_[0])
            m.add(dr >= A_[1] - B_[0])
            m.add(dc >= B_[3] - A_[2])
            m.add(dc >= A_[3] - B_[2])
            dist.append((a, b, w, dr, dc))
    n_layers = sum(1 for ly in inst.layers if ly.total > 0)
    t_tiles = sum(u)
    t_split = sum(y.values()) - n_layers
    t_traffic = sum(w * (dr + dc) for _, _, w, dr, dc in dist)
    w1 = split_weight(inst, order)
    if stage == "all":
        m.minimize(wt * t_tiles + ws * t_split + wr * t_traffic)
    elif stage == "split":
        m.minimize(w1 * t_tiles + t_split)
    elif stage == "traffic":
        if limit is not None:
            m.add(w1 * t_tiles + t_split <= int(limit))
        m.minimize(t_traffic)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    if hint is not None and len(hint.order) <= K and np.array_equal(hint.order, order[:len(hint.order)]):
        _add_hint(m, inst, hint, x, y, u, K, box, dist)
    return m, {"x": x, "y": y, "u": u, "dist": dist, "box": box, "order": order, "weights": weights,
               "terms": {"tiles": t_tiles, "split": t_split, "traffic": t_traffic},
               "classes": classes, "allowed": ks_of, "w1": w1}


def _add_hint(m, inst: Instance, sol: Solution, x, y, u, K: int, box=None, dist=None) -> None:
    """Hint every variable from ``sol``, including boxes and hop distances (a complete hint)."""
    Kh = len(sol.order)
    for (l, k), yv in y.items():
        c = sol.counts[l]
        tot = int(c[:, k].sum()) if k < Kh else 0
        m.add_hint(yv, tot > 0)
        for j in range(c.shape[0]):
            m.add_hint(x[l, j, k], int(c[j, k]) if k < Kh else 0)
    X = sol.per_layer()
    for k in range(K):
        m.add_hint(u[k], bool(k < Kh and X[:, k].sum() > 0))
    if box:
        rr, cc = coords(sol.order, inst.mesh_cols)
        bx = {}
        for l, (rmin, rmax, cmin, cmax) in box.items():
            p = X[l] > 0
            bx[l] = (int(rr[p].min()), int(rr[p].max()), int(cc[p].min()), int(cc[p].max()))
            for var, val in zip((rmin, rmax, cmin, cmax), bx[l]):
                m.add_hint(var, val)
        for a, b, _, dr, dc in dist or ():
            A_, B_ = bx[a], bx[b]
            m.add_hint(dr, max(B_[1] - A_[0], A_[1] - B_[0]))
            m.add_hint(dc, max(B_[3] - A_[2], A_[3] - B_[2]))


_STATUS = {0: "UNKNOWN", 1: "MODEL_INVALID", 2: "FEASIBLE", 3: "INFEASIBLE", 4: "OPTIMAL"}


def _pad(sol: Solution, order: np.ndarray) -> Solution:
    K = len(order)
    return Solution(order=order, counts=[np.pad(c, ((0, 0), (0, K - c.shape[1]))) for c in sol.counts])


def _run(model, opts: Options, budget: float):
    """Solve with the determinism settings of the module docstring; returns (solver, status, info)."""
    from ortools.sat.python import cp_model  # noqa: PLC0415

    solver = cp_model.CpSolver()
    p = solver.parameters
    p.num_workers = max(1, int(opts.workers))
    p.random_seed = int(opts.seed)
    wall_cap = WALL_FACTOR * budget + 10.0 if opts.deterministic else budget
    if opts.deterministic:
        if p.num_workers > 1:
            p.interleave_search = True
        p.max_deterministic_time = max(1e-3, budget)
    p.max_time_in_seconds = max(1e-3, wall_cap)
    ts = time.perf_counter()
    st = solver.solve(model)
    wall = time.perf_counter() - ts
    done = st in (cp_model.OPTIMAL, cp_model.INFEASIBLE)
    info = {"status": _STATUS.get(int(st), str(st)), "seconds": round(wall, 3),
            "deterministic_time": round(solver.deterministic_time, 3),
            "wall_capped": bool(not done and wall >= 0.98 * wall_cap and solver.deterministic_time < 0.98 * budget),
            "variables": len(model.proto.variables), "constraints": len(model.proto.constraints)}
    if st in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        info["objective"] = int(round(solver.objective_value))
    if math.isfinite(solver.best_objective_bound):
        info["bound"] = int(math.ceil(solver.best_objective_bound - 1e-6))
    return solver, st, info


WALL_FACTOR = 10.0   # wall-clock safety cap = WALL_FACTOR * deterministic budget + 10 s


def solve(inst: Instance, opts: Options | None = None) -> tuple[Solution, dict[str, Any]]:
    """Greedy, then CP-SAT (unless ``greedy_only``); returns the better solution and a report.

    With lexicographic (default) weights CP-SAT runs in two stages, each on a well-scaled
    objective: ``split`` minimizes ``W1 * tiles + split`` (no traffic variables), then
    ``traffic`` minimizes traffic subject to ``W1 * tiles + split <=`` the stage-1 value, hinted
    with the stage-1 solution. Explicit weights give one weighted stage ``all``. Stage 1 gets
    half the budget, stage 2 the rest.
    """
    from ortools.sat.python import cp_model  # noqa: PLC0415

    opts = opts or Options()
    check_fits(inst)
    t0 = time.perf_counter()
    lb = lower_bound_tiles(inst)
    full = tile_order(inst.tiles, inst.mesh_cols, lb)
    g = greedy(inst, full)
    order = g.order if g is not None else full
    K = len(order)
    weights = auto_weights(inst, order, opts)
    wt, ws, wr = weights
    lexi = opts.w_tiles is None and opts.w_split is None and opts.w_traffic is None
    g_eval = evaluate(inst, g, weights) if g is not None else None
    report: dict[str, Any] = {
        "status": "NOT_RUN", "method": "greedy",
        "weights": {"tiles": wt, "split": ws, "traffic": wr},
        "greedy_objective": None if g_eval is None else g_eval["objective"],
        "candidates": int(K), "window": int(opts.window), "deterministic": True, "stages": [],
    }
    best, best_eval = g, g_eval
    h = contiguous(inst, order) if g is not None and len(order) == lb else None
    if h is not None:
        h_eval = evaluate(inst, h, weights)
        report["contiguous_objective"] = h_eval["objective"]
        if h_eval["objective"] < g_eval["objective"]:
            best, best_eval = h, h_eval
            report["method"] = "contiguous"
    bound = _trivial_bound(inst, weights)
    if not opts.greedy_only and inst.total > 0:
        allowed = band(inst, best, K, opts.window) if best is not None else None
        restricted = allowed is not None and any(len(a) < K for a in allowed)
        report["restricted"] = restricted
        hint = _pad(best, order) if best is not None else None
        budget = float(opts.time_limit)
        cands: list[tuple[Solution, str]] = []
        has_traffic = wr > 0 and any(w > 0 and inst.layers[a].total and inst.layers[b].total
                                     for a, b, w in inst.edges)
        if not lexi:
            stages = [("all", budget)]
        elif has_traffic:
            stages = [("split", budget / 2), ("traffic", None)]
        else:
            stages = [("split", budget)]
        w1 = split_weight(inst, order)
        exact = not restricted
        lim = None
        for stage, share in stages:
            used = sum(s_["deterministic_time"] for s_ in report["stages"])
            b = share if share is not None else max(0.05 * budget, budget - used)
            model, v = build_model(inst, opts, order=order, hint=None, stage=stage, limit=lim,
                                   allowed=allowed)
            if hint is not None:
                _add_hint(model, inst, hint, v["x"], v["y"], v["u"], K, v.get("box"), v["dist"])
            solver, st, info = _run(model, opts, b)
            info["stage"] = stage
            report["stages"].append(info)
            if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                if st == cp_model.INFEASIBLE and g is None and not restricted:
                    raise PlacementError(
                        f"no placement of {inst.total} crossbars on target {inst.name!r} keeps every layer "
                        f"that fits one tile on one tile ({inst.tiles} tiles x {inst.capacity})",
                        hint=f"use place{{keep-whole=false}} or --set tiles={2 * inst.tiles}")
                exact = False
                break
            sol = _extract(inst, solver, v)
            cands.append((sol, stage))
            hint = sol
            if stage == "split":
                e = evaluate(inst, sol, weights)
                lim = w1 * e["tiles"] + e["split"]
                if exact and "bound" in info:
                    bound = max(bound, ws * info["bound"])
                exact = exact and st == cp_model.OPTIMAL
            elif stage == "traffic":
                if exact and "bound" in info:
                    bound = max(bound, ws * lim + wr * info["bound"])
            elif exact and "bound" in info:
                bound = max(bound, info["bound"])
        for sol, stage in cands:
            e = evaluate(inst, sol, weights)
            if best_eval is None or e["objective"] < best_eval["objective"]:
                best, best_eval = sol, e
                report["method"] = "cp-sat"
        sts = [s_["status"] for s_ in report["stages"]]
        if not cands:
            report["status"] = sts[-1] if sts else "UNKNOWN"
        elif all(s_ == "OPTIMAL" for s_ in sts) and not restricted and len(sts) == len(stages):
            report["status"] = "OPTIMAL"
        else:
            report["status"] = "FEASIBLE"
        report["deterministic"] = (not opts.deterministic and report["status"] == "OPTIMAL") or (
            opts.deterministic and not any(s_["wall_capped"] for s_ in report["stages"]))
        report["solver_seconds"] = round(sum(s_["seconds"] for s_ in report["stages"]), 3)
        report["deterministic_time"] = round(sum(s_["deterministic_time"] for s_ in report["stages"]), 3)
    if best is None:
        raise PlacementError(
            f"no placement of {inst.total} crossbars found on target {inst.name!r} within the time "
            f"limit ({inst.tiles} tiles x {inst.capacity} crossbars, layers kept whole)",
            hint=f"raise place{{time-limit=...}}, use place{{keep-whole=false}} or --set tiles={2 * inst.tiles}")
    obj = best_eval["objective"]
    bound = min(bound, obj)   # the trivial bound assumes the lexicographic weights
    report.update({
        "objective": int(obj), "bound": int(bound),
        "gap": round((obj - bound) / max(1, abs(obj)), 6),
        "objective_terms": {k: best_eval[k] for k in ("tiles", "split", "traffic")},
        "seconds": round(time.perf_counter() - t0, 3),
    })
    report["bound_terms"] = {"tiles": lower_bound_tiles(inst),
                             "split": sum(max(0, math.ceil(ly.total / inst.capacity) - 1) for ly in inst.layers)}
    if g_eval is not None:
        report["greedy_terms"] = {k: g_eval[k] for k in ("tiles", "split", "traffic")}
    return best, report


def _trivial_bound(inst: Instance, weights: tuple[int, int, int]) -> int:
    wt, ws, _ = weights
    lb = lower_bound_tiles(inst)
    sp = sum(max(0, math.ceil(ly.total / inst.capacity) - 1) for ly in inst.layers)
    return wt * lb + ws * sp


def _extract(inst: Instance, solver, v) -> Solution:
    order = v["order"]
    K = len(order)
    counts = []
    for l, ly in enumerate(inst.layers):
        vals, cnt = v["classes"][l]
        c = np.zeros((len(vals), K), np.int64)
        if ly.total:
            for j in range(len(vals)):
                for k in v["allowed"][l].tolist():
                    c[j, k] = solver.value(v["x"][l, j, k])
        counts.append(c)
    return Solution(order=order, counts=counts)


# ----------------------------------------------------------------------------------------
# slots
# ----------------------------------------------------------------------------------------

def assign_slots(inst: Instance, sol: Solution) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer ``(tile, slot)`` int32 arrays over its ``n * copies`` crossbars (copy-major:
    crossbar ``i`` is copy ``i // n``, crossbar ``i % n`` of the layer). Within a layer and ADC
    class, crossbars take the candidate tiles in order, so the primary copy comes first; slots
    count up per tile in topological layer order, so they are unique per tile."""
    next_slot: dict[int, int] = {}
    out = []
    for ly, c in zip(inst.layers, sol.counts):
        tot = ly.total
        tile = np.full(tot, -1, np.int32)
        slot = np.full(tot, -1, np.int32)
        if tot:
            a = np.tile(ly.adc_array(), ly.copies)
            vals, _ = ly.classes()
            for j, val in enumerate(vals):
                idx = np.nonzero(a == val)[0]
                tiles_j = np.repeat(sol.order[:c.shape[1]], c[j])
                tile[idx] = tiles_j
            for t in np.unique(tile):
                sel = np.nonzero(tile == t)[0]
                s0 = next_slot.get(int(t), 0)
                slot[sel] = s0 + np.arange(sel.size, dtype=np.int32)
                next_slot[int(t)] = s0 + sel.size
        out.append((tile, slot))
    return out


# ----------------------------------------------------------------------------------------
# duplication
# ----------------------------------------------------------------------------------------

def stage_latency(inst: Instance, copies: list[int] | np.ndarray | None = None) -> np.ndarray:
    """``ceil(P_l / r_l) * dac_cycles * B_l`` per layer, in crossbar activation cycles (0 if empty)."""
    r = np.ones(len(inst.layers), np.int64) if copies is None else np.asarray(copies, np.int64)
    P = np.array([ly.positions for ly in inst.layers], np.int64)
    B = np.array([ly.row_blocks for ly in inst.layers], np.int64)
    n = np.array([ly.n for ly in inst.layers], np.int64)
    lat = -(-P // np.maximum(r, 1)) * int(inst.dac_cycles) * B
    return np.where(n > 0, lat, 0)


def duplicate(inst: Instance, budget_tiles: int) -> dict[str, Any]:
    """Greedy bottleneck duplication within ``budget_tiles`` tiles (module docstring).

    Returns ``{"copies": [...], "latency_before", "latency_after", ...}``; the copies are then
    checked by the greedy placement (a copy that greedy cannot pack is taken back).
    """
    L = len(inst.layers)
    copies = np.ones(L, np.int64)
    n = np.array([ly.n for ly in inst.layers], np.int64)
    adc = np.array([int(ly.adc_array().sum()) if ly.n else 0 for ly in inst.layers], np.int64)
    P = np.array([ly.positions for ly in inst.layers], np.int64)
    free = budget_tiles * inst.capacity - int(n.sum())
    free_adc = budget_tiles * inst.adcs_per_tile - int(adc.sum())
    lat0 = stage_latency(inst, copies)
    history: list[int] = []
    while True:
        lat = stage_latency(inst, copies)
        if not lat.any():
            break
        b = int(np.argmax(lat))                  # first bottleneck (topological order on ties)
        if copies[b] >= P[b] or n[b] > free or adc[b] > free_adc:
            break
        copies[b] += 1
        free -= int(n[b])
        free_adc -= int(adc[b])
        history.append(b)
    # take back copies that do not lower the maximum
    best = int(stage_latency(inst, copies).max()) if L else 0
    for b in reversed(history):
        copies[b] -= 1
        if int(stage_latency(inst, copies).max()) > best:
            copies[b] += 1
    # make sure the copies pack into the budget (keep_whole / ADC sets can waste room)
    order = tile_order(inst.tiles, inst.mesh_cols, budget_tiles)[:budget_tiles]
    while copies.sum() > L:
        g = greedy(inst.with_copies(copies.tolist()), order)
        if g is not None:
            break
        cand = np.nonzero(copies > 1)[0]
        b = int(cand[np.argmin(stage_latency(inst, copies)[cand])])
        copies[b] -= 1
    lat1 = stage_latency(inst, copies)
    return {"copies": copies.tolist(), "latency_before": int(lat0.max()) if L else 0,
            "latency_after": int(lat1.max()) if L else 0,
            "bottleneck_before": inst.layers[int(np.argmax(lat0))].id if L else None,
            "bottleneck_after": inst.layers[int(np.argmax(lat1))].id if L else None,
            "extra_crossbars": int(((copies - 1) * n).sum()), "budget_tiles": int(budget_tiles)}


# ----------------------------------------------------------------------------------------
# the whole step
# ----------------------------------------------------------------------------------------

@dataclass
class PlaceResult:
    solution: Solution
    report: dict[str, Any]
    slots: list[tuple[np.ndarray, np.ndarray]]       # per layer, all copies (copy-major)
    instance: Instance                               # with copies
    extra: dict[str, Any] = field(default_factory=dict)


def place(inst: Instance, opts: Options | None = None, *, dup: bool = False,
          dup_tiles: int | None = None) -> PlaceResult:
    """Duplicate (optionally), place, assign slots and build the report of the module docstring."""
    opts = opts or Options()
    check_fits(inst)
    dup_rep: dict[str, Any]
    lat = stage_latency(inst)
    if dup and inst.total:
        base = greedy(inst)
        t_min = len(base.order) if base is not None else lower_bound_tiles(inst)
        budget = min(inst.tiles, dup_tiles if dup_tiles is not None else t_min)
        budget = max(budget, t_min)
        d = duplicate(inst, budget)
        inst = inst.with_copies(d["copies"])
        dup_rep = {"enabled": True, **{k: v for k, v in d.items() if k != "copies"}}
    else:
        dup_rep = {"enabled": False, "latency_before": int(lat.max()) if lat.size else 0,
                   "latency_after": int(lat.max()) if lat.size else 0, "extra_crossbars": 0}
    sol, rep = solve(inst, opts)
    slots = assign_slots(inst, sol)
    X = sol.per_layer()
    load = X.sum(axis=0) if X.size else np.zeros(0, np.int64)
    used = np.nonzero(load > 0)[0]
    tile_ids = sol.order[used]
    srt = np.argsort(tile_ids, kind="stable")
    rep["tiles_used"] = int(used.size)
    rep["tile_ids"] = [int(t) for t in tile_ids[srt]]
    rep["utilization"] = [round(float(v) / inst.capacity, 4) for v in load[used][srt]]
    rep["crossbars"] = int(inst.total)
    rep["capacity"] = {"crossbars_per_tile": inst.capacity, "adcs_per_tile": inst.adcs_per_tile,
                       "tiles": inst.tiles, "mesh_cols": inst.mesh_cols}
    layers = {}
    replicas = {}
    for ly, (tile, slot) in zip(inst.layers, slots):
        prim = tile[:ly.n]
        t, cnt = np.unique(prim, return_counts=True)
        layers[ly.id] = {"tiles": [int(v) for v in t], "counts": [int(v) for v in cnt]}
        if ly.copies > 1:
            reps = []
            for c in range(1, ly.copies):
                tt = tile[c * ly.n:(c + 1) * ly.n]
                t2, cnt2 = np.unique(tt, return_counts=True)
                reps.append({"copy": c, "tiles": [int(v) for v in t2], "counts": [int(v) for v in cnt2],
                             "tile": [int(v) for v in tt], "slot": [int(v) for v in slot[c * ly.n:(c + 1) * ly.n]]})
            replicas[ly.id] = reps
    rep["layers"] = layers
    lat_after = stage_latency(inst, [ly.copies for ly in inst.layers])
    dup_rep["replicas"] = {ly.id: ly.copies - 1 for ly in inst.layers if ly.copies > 1}
    dup_rep["replica_placement"] = replicas
    dup_rep["stage_latency"] = {ly.id: int(v) for ly, v in zip(inst.layers, lat_after)}
    if dup_rep["latency_after"]:
        dup_rep["speedup"] = round(dup_rep["latency_before"] / dup_rep["latency_after"], 4)
    rep["duplication"] = dup_rep
    return PlaceResult(solution=sol, report=rep, slots=slots, instance=inst)


# ----------------------------------------------------------------------------------------
# rendering and benchmark
# ----------------------------------------------------------------------------------------

def render_placement(meta: dict[str, Any]) -> str:
    """A few lines for ``xbc compile``'s summary from ``graph.meta["placement"]``."""
    if not meta:
        return "placement: (not run)"
    util = meta.get("utilization", [])
    mean = sum(util) / len(util) if util else 0.0
    terms = meta.get("objective_terms", {})
    nt = meta.get("tiles_used", "?")
    lines = [
        f"placement: {meta.get('crossbars', '?')} crossbars on {nt} tile{'' if nt == 1 else 's'} "
        f"({meta.get('method')}, {meta.get('status')}, objective {meta.get('objective')}, bound "
        f"{meta.get('bound')}, gap {100 * float(meta.get('gap', 0.0)):.2f}%, {meta.get('seconds')} s)",
        f"  split layers +{terms.get('split', 0)}, traffic {terms.get('traffic', 0)}, greedy objective "
        f"{meta.get('greedy_objective')}",
    ]
    if util:
        ids = list(meta.get("tile_ids", range(len(util))))
        pct = [round(100 * u) for u in util]
        runs: list[list[int]] = []          # [first id, last id, percent] over consecutive ids
        for t, p in zip(ids, pct):
            if runs and runs[-1][1] == t - 1 and runs[-1][2] == p:
                runs[-1][1] = t
            else:
                runs.append([t, t, p])
        cells = " ".join(f"{a}:{p}" if a == b else f"{a}-{b}:{p}" for a, b, p in runs)
        lines.append(f"  utilization % (tiles:use) mean {100 * mean:.1f} min {min(pct)}: {cells}")
    d = meta.get("duplication") or {}
    if d.get("enabled"):
        reps = ", ".join(f"{k} x{v + 1}" for k, v in d.get("replicas", {}).items()) or "none"
        lines.append(f"  duplication: stage latency {d.get('latency_before')} -> {d.get('latency_after')} "
                     f"cycles (x{d.get('speedup', 1)}), +{d.get('extra_crossbars', 0)} crossbars; copies: {reps}")
    elif d:
        lines.append(f"  pipeline stage latency {d.get('latency_before')} cycles (no duplication)")
    return "\n".join(lines)


def bench_placement(inst: Instance, opts: Options | None = None, *, print_fn=print) -> dict[str, Any]:
    """Place ``inst`` with first-fit greedy, the contiguous DP and CP-SAT; print one line each.

    Returns ``{"greedy": report, "contiguous": report | None, "cp-sat": report}`` (each with
    objective, bound, gap, status, seconds, objective_terms)."""
    opts = opts or Options()
    c_sol, c_rep = solve(inst, opts)
    w = tuple(c_rep["weights"][k] for k in ("tiles", "split", "traffic"))
    bound = c_rep["bound"]
    out: dict[str, Any] = {}
    order = tile_order(inst.tiles, inst.mesh_cols, lower_bound_tiles(inst))
    for name, fn in (("greedy", greedy), ("contiguous", contiguous)):
        t0 = time.perf_counter()
        sol = fn(inst, order)
        secs = time.perf_counter() - t0
        if sol is None:
            out[name] = None
            continue
        e = evaluate(inst, sol, w)
        out[name] = {"objective": e["objective"], "bound": bound, "status": "HEURISTIC",
                     "gap": round((e["objective"] - bound) / max(1, e["objective"]), 6),
                     "seconds": round(secs, 3), "objective_terms": {k: e[k] for k in ("tiles", "split", "traffic")}}
    out["cp-sat"] = c_rep
    print_fn(f"placement bench: {len(inst.layers)} layers, {inst.total} crossbars, {inst.capacity}/tile, "
             f"lower bound {c_rep['bound_terms']['tiles']} tiles / {c_rep['bound_terms']['split']} splits, "
             f"time-limit {opts.time_limit} (deterministic={opts.deterministic}, workers={opts.workers})")
    print_fn(f"{'method':10} {'objective':>14} {'tiles':>5} {'split':>5} {'traffic':>7} {'gap':>9} {'seconds':>8}  status")
    for name, r in out.items():
        if r is None:
            print_fn(f"{name:10} {'n/a':>14}")
            continue
        t = r["objective_terms"]
        print_fn(f"{name:10} {r['objective']:>14} {t['tiles']:>5} {t['split']:>5} {t['traffic']:>7} "
                 f"{100 * r['gap']:>8.3f}% {r['seconds']:>8.2f}  {r['status']}")
    return out


def synthetic_resnet50(seed: int = 0, max_count: int = 400, traffic: str = "volume") -> Instance:
    """A ResNet-50-like instance for target sme: its 54 crossbar layers with their real weight
    sizes, output positions and residual data flow; crossbars per layer proportional to the weight
    count (1..``max_count``), jittered by +-15% with ``seed`` (as squeeze leaves them)."""
    rng = np.random.default_rng(seed)
    specs = []   # (id, weights, positions, out volume)
    edges = []

    def add(name, cin, cout, k, hw):
        specs.append((name, cin * cout * k * k, hw * hw, cout * hw * hw))
        return len(specs) - 1

    c1 = add("conv1", 3, 64, 7, 112)
    prev_out = [c1]          # layers whose outputs (through add/relu/pool) form the block input
    cin = 64
    for si, (blocks, width, hw) in enumerate(((3, 64, 56), (4, 128, 28), (6, 256, 14), (3, 512, 7))):
        for b in range(blocks):
            cout = width * 4
            a = add(f"l{si + 1}.{b}.a", cin, width, 1, hw if (b or si == 0) else 2 * hw)
            bb = add(f"l{si + 1}.{b}.b", width, width, 3, hw)
            cc = add(f"l{si + 1}.{b}.c", width, cout, 1, hw)
            for p in prev_out:
                edges.append((p, a))
            edges += [(a, bb), (bb, cc)]
            if b == 0:
                ds = add(f"l{si + 1}.{b}.down", cin, cout, 1, hw)
                for p in prev_out:
                    edges.append((p, ds))
                prev_out = [cc, ds]
            else:
                prev_out = prev_out + [cc]
            cin = cout
    fc = add("fc", 2048, 1000, 1, 1)
    for p in prev_out:
        edges.append((p, fc))
    wmax = max(s[1] for s in specs)
    vmax = max(s[3] for s in specs)
    layers = []
    for name, w, pos, _ in specs:
        n = max(1, min(max_count, int(round(max_count * w / wmax * rng.uniform(0.85, 1.15)))))
        layers.append(LayerDemand(id=name, n=n, positions=pos))
    wts = [(a, b, 1 if traffic == "unit" else max(1, round(100 * specs[a][3] / vmax))) for a, b in edges]
    return Instance(layers=tuple(layers), edges=tuple(wts), capacity=96, adcs_per_tile=96,
                    tiles=1024, mesh_cols=32, dac_cycles=8, name="sme")


def reorder_tiles(inst: Instance, sol: Solution) -> Solution:
    """Lay the tile contents along the candidate order sorted by the mean topological index of
    the crossbars they hold (tiles and splits unchanged; consecutive layers end up close)."""
    X = sol.per_layer()
    if X.size == 0:
        return sol
    load = X.sum(axis=0)
    idx = np.arange(X.shape[0], dtype=np.float64)[:, None]
    key = np.where(load > 0, (X * idx).sum(axis=0) / np.maximum(load, 1), np.inf)
    perm = np.argsort(key, kind="stable")
    return Solution(order=sol.order, counts=[c[:, perm] for c in sol.counts])
