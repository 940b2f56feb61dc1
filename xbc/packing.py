"""Crossbar counting and packing of column rectangles into physical crossbars.

Dense count
-----------
:func:`dense_crossbars` is the crossbar count of the dense (no sparsity) mapping that slice-bits
builds: a group's matrix has ``rows`` rows and ``L = cols * planes * signs`` logical columns
(one per output column, digit plane and sign). If one group fits a crossbar (``rows <= Rx`` and
``L <= Cx``, typical of depthwise and grouped convolutions) ``k = min(Rx // rows, Cx // L)``
groups share a crossbar block-diagonally and the count is ``ceil(G / k)``; otherwise every group
is tiled into ``ceil(rows / Rx)`` row blocks times ``ceil(L / Cx)`` column chunks:
``G * ceil(rows / Rx) * ceil(L / Cx)``. :func:`isaac_crossbars` is that count on the ``isaac``
target (16-bit offset-encoded weights in 2-bit cells: 8 planes, 1 sign), the reference every
reduction ratio is measured against.

Packing problem
---------------
An *item* ``i`` is a rectangle of ``r_i`` rows x ``c_i`` columns (a squeezed column segment).
A physical crossbar (bin) has ``Rx`` rows and ``Cx`` columns. Items in one bin sit
block-diagonally (disjoint physical rows and disjoint physical columns), so a bin holds a set
of pieces with ``sum r <= Rx`` and ``sum c <= Cx``. An item's columns may be split over several
bins; each piece needs the item's rows again (conservatively all ``r_i``; squeeze recomputes
the rows a piece really needs afterwards, which can only shrink it). This is two-dimensional
vector bin packing with splittable items; :func:`pack` minimizes the number of bins.

Lower bound (always reported, :func:`lower_bound`), the maximum of:

* columns: ``ceil(sum c_i / Cx)`` (physical columns are never shared);
* rows (Martello-Toth L2 on the row dimension): item ``i`` needs at least ``m_i = ceil(c_i/Cx)``
  distinct bins, each with ``r_i`` rows; L2 of the multiset of ``m_i`` copies of ``r_i`` against
  capacity ``Rx`` (this contains the area-type bound ``ceil(sum m_i r_i / Rx)``);
* conflicts: for a threshold ``t <= Rx/2``, items with ``r > Rx - t`` (set A) can share a bin
  with no item with ``r >= t`` (set B, A included), nor with each other, hence
  ``sum_{A} ceil(c_i/Cx) + ceil(sum_{B \\ A} c_i / Cx)`` bins at least.

Exact reductions: an item that cannot share a bin with any other item (``r_i + min_{j!=i} r_j >
Rx``) takes exactly ``ceil(c_i/Cx)`` bins of its own (full-width pieces plus the rest); this is
optimal for it and removes it from the search.

Heuristic (always run, deterministic in ``seed``): greedy over several item orders (rows
descending, columns descending, area descending, and seeded random perturbations of the rows
order), each in two modes: without splitting (an item's full-width pieces get bins of their
own, its remainder goes whole into the best-fitting open bin, i.e. the smallest normalized
leftover of rows and columns, else into a new bin) and with splitting (pieces also fill the free
columns of the open bin with the most free columns and enough free rows). The four best results
then go through a repair step that tries to empty each bin (least-filled first) by moving its
pieces into the other bins, first where the item already is (no extra rows), whole or split.
It stops as soon as a result meets the lower bound.
The greedy and the repair run in numba kernels (:func:`_heuristic`, compiled on first use and
cached); :func:`_heuristic_py` is the plain Python reference they follow decision for decision
(the tests compare both; ``KERNELS = False`` uses the reference).

Exact model (OR-Tools CP-SAT, when the heuristic is above the bound and at most ``exact_limit``
shareable items remain): bins ``b < B`` with ``B = heuristic - 1``; integer ``x[i,b]`` in
``[0, min(c_i, Cx)]`` columns of item ``i`` in bin ``b``; booleans ``y[i,b]`` (item present,
``y <= x <= min(c_i,Cx) * y``) and ``u[b]`` (bin used, ``y[i,b] <= u[b]``); ``sum_b x[i,b] = c_i``,
``sum_b y[i,b] >= ceil(c_i/Cx)``; per bin ``sum_i x[i,b] <= Cx u[b]`` (columns) and
``sum_i r_i y[i,b] <= Rx u[b]`` (row usage); symmetry breaking ``u[b] >= u[b+1]`` and the first
item (most rows) in bin 0; ``sum_b u[b] >=`` the lower bound; minimize ``sum_b u[b]``. INFEASIBLE
proves the heuristic optimal; OPTIMAL gives a better packing. Determinism: a fixed
``random_seed`` and ``num_workers`` (``interleave_search`` when ``workers > 1``) and
``max_deterministic_time = time_limit``; a result is used only when proven (OPTIMAL or
INFEASIBLE), otherwise the deterministic heuristic result is kept (status FEASIBLE).

Placements use the format of :func:`xbc.layer.assemble_program`: ``placements[b]`` lists
``(item, row0, col0, c_from, c_to)``; pieces are stacked block-diagonally in the bin in the
order they were placed, and each item's pieces take consecutive column ranges in bin order.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from .layer import n_planes

Placement = list[list[tuple[int, int, int, int, int]]]

KERNELS = True   # numba kernels for the heuristic (False: the plain Python reference)


# ----------------------------------------------------------------------------------------
# counting
# ----------------------------------------------------------------------------------------

def signs_of(target) -> int:
    """Column sets per digit plane: 2 (positive/negative) for split encoding, 1 for offset."""
    return 2 if target.weight_encoding == "split" else 1


def dense_crossbars(groups: int, rows: int, cols: int, target, planes: int, signs: int,
                    share_groups: bool = True) -> int:
    """Crossbars of the dense mapping (see module docstring); a pure function of its arguments."""
    Rx, Cx = target.rows, target.cols
    L = cols * planes * signs
    if share_groups and rows <= Rx and L <= Cx:
        k = min(Rx // rows, Cx // L)
        return -(-groups // k)
    return groups * (-(-rows // Rx)) * (-(-L // Cx))


@functools.lru_cache(maxsize=None)
def _isaac():
    from . import targets
    return targets.load("isaac")


def isaac_crossbars(layer) -> int:
    """Crossbars the dense ``isaac`` target needs for this layer (matrix shape only)."""
    t = _isaac()
    P = n_planes(t.weight_bits, t.cell_bits, t.weight_encoding)
    return dense_crossbars(layer.groups, layer.rows, layer.cols, t, P, signs_of(t))


# ----------------------------------------------------------------------------------------
# lower bound
# ----------------------------------------------------------------------------------------

def _l2(sizes: np.ndarray, cap: int) -> int:
    """Martello-Toth L2 bound for 1-D bin packing of ``sizes`` into bins of ``cap``, all
    thresholds ``k`` at once (sorted sizes and prefix sums)."""
    if sizes.size == 0:
        return 0
    s = np.sort(sizes.astype(np.int64))
    cs = np.concatenate(([0], np.cumsum(s)))
    n = s.size
    ks = np.unique(np.concatenate(([0], s[2 * s <= cap])))
    half_hi = np.searchsorted(s, cap // 2, side="right")      # s[:half_hi] <= cap/2
    a = np.searchsorted(s, cap - ks, side="right")            # s[a:] > cap - k   (J1)
    j1 = n - a
    j2n = np.maximum(a - half_hi, 0)                          # cap/2 < s <= cap - k (J2)
    j2s = cs[np.maximum(a, half_hi)] - cs[half_hi]
    lo = np.searchsorted(s, ks, side="left")                  # k <= s <= cap/2    (J3)
    j3s = np.where(lo < half_hi, cs[half_hi] - cs[np.minimum(lo, half_hi)], 0)
    extra = np.maximum(0, -(-(j3s - (j2n * cap - j2s)) // cap))
    return int(max(-(-int(cs[-1]) // cap), int((j1 + j2n + extra).max())))


def lower_bound(items: Sequence[tuple[int, int]], Rx: int, Cx: int) -> int:
    """A lower bound on the bins :func:`pack` needs (see module docstring)."""
    if len(items) == 0:
        return 0
    a = np.asarray(items, dtype=np.int64).reshape(-1, 2)
    r, c = a[:, 0], a[:, 1]
    m = -(-c // Cx)
    lb = int(-(-int(c.sum()) // Cx))
    lb = max(lb, _l2(np.repeat(r, m), Rx))
    # conflict bound; for a fixed set A the smallest t is best, so only t = Rx - r + 1 (r > Rx/2)
    ts = np.unique(Rx - r[2 * r > Rx] + 1)
    ts = ts[ts <= Rx // 2]
    if ts.size:
        o = np.argsort(r, kind="stable")
        rs = r[o]
        cm = np.concatenate(([0], np.cumsum(m[o])))
        cc = np.concatenate(([0], np.cumsum(c[o])))
        a0 = np.searchsorted(rs, Rx - ts, side="right")     # A = rs[a0:]  (r > Rx - t)
        b0 = np.searchsorted(rs, ts, side="left")           # B \ A = rs[b0:a0]  (t <= r <= Rx - t)
        lbt = (cm[-1] - cm[a0]) + (-(-(cc[a0] - cc[np.minimum(b0, a0)]) // Cx))
        lb = max(lb, int(lbt.max()))
    return lb


# ----------------------------------------------------------------------------------------
# heuristic
# ----------------------------------------------------------------------------------------

class _Bins:
    """Open bins: free rows / columns (preallocated numpy) and contents (item -> columns)."""

    def __init__(self, Rx: int, Cx: int, capacity: int):
        self.Rx, self.Cx = Rx, Cx
        self.n = 0
        self.fr = np.zeros(max(capacity, 1), np.int64)
        self.fc = np.zeros(max(capacity, 1), np.int64)
        self.content: list[dict[int, int]] = []
        self.where: dict[int, list[int]] = {}   # item -> bins holding it

    def copy(self) -> "_Bins":
        b = _Bins(self.Rx, self.Cx, 0)
        b.n, b.fr, b.fc = self.n, self.fr.copy(), self.fc.copy()
        b.content = [dict(d) for d in self.content]
        b.where = {k: list(v) for k, v in self.where.items()}
        return b

    def open(self) -> int:
        if self.n == len(self.fr):
            self.fr = np.concatenate((self.fr, np.zeros(len(self.fr), np.int64)))
            self.fc = np.concatenate((self.fc, np.zeros(len(self.fc), np.int64)))
        self.fr[self.n] = self.Rx
        self.fc[self.n] = self.Cx
        self.content.append({})
        self.n += 1
        return self.n - 1

    def open_full(self, item: int, r: int, k: int) -> None:
        """Open ``k`` bins, each holding ``Cx`` columns of ``item``."""
        need = self.n + k
        if need > len(self.fr):
            grow = max(need, 2 * len(self.fr)) - len(self.fr)
            self.fr = np.concatenate((self.fr, np.zeros(grow, np.int64)))
            self.fc = np.concatenate((self.fc, np.zeros(grow, np.int64)))
        self.fr[self.n:need] = self.Rx - r
        self.fc[self.n:need] = 0
        self.content.extend({item: self.Cx} for _ in range(k))
        self.where.setdefault(item, []).extend(range(self.n, need))
        self.n = need

    def put(self, b: int, item: int, r: int, n: int) -> None:
        d = self.content[b]
        if item not in d:
            self.fr[b] -= r
            d[item] = 0
            self.where.setdefault(item, []).append(b)
        d[item] += n
        self.fc[b] -= n

    def remove(self, b: int) -> None:
        keep = np.ones(self.n, bool)
        keep[b] = False
        self.fr = np.concatenate((self.fr[:self.n][keep], np.zeros(len(self.fr) - self.n + 1, np.int64)))
        self.fc = np.concatenate((self.fc[:self.n][keep], np.zeros(len(self.fc) - self.n + 1, np.int64)))
        del self.content[b]
        self.n -= 1
        self.where = {}
        for k, d in enumerate(self.content):
            for i in d:
                self.where.setdefault(i, []).append(k)

    def place(self, item: int, r: int, n: int, split: bool, exclude: int = -1,
              allow_open: bool = True) -> bool:
        """Place ``n`` columns of ``item``; False if impossible without opening (allow_open=False)."""
        rem = n
        while rem > 0:
            nb = self.n
            if nb:
                fr, fc = self.fr[:nb], self.fc[:nb]
                need = np.full(nb, r, np.int64)
                own_bins = self.where.get(item, ())
                if own_bins:
                    need[own_bins] = 0  # bins already holding the item: more columns, no more rows
                ok = (fr >= need) & (fc > 0)
                if exclude >= 0:
                    ok[exclude] = False
                if own_bins:
                    own = np.zeros(nb, bool)
                    own[own_bins] = True
                    own &= ok
                    if own.any():
                        b = int(np.flatnonzero(own)[np.argmax(fc[own])])
                        k = min(rem, int(fc[b]))
                        self.put(b, item, r, k)
                        rem -= k
                        continue
                whole = ok & (fc >= rem)
                if whole.any():
                    idx = np.flatnonzero(whole)
                    slack = (fc[idx] - rem) / self.Cx + (fr[idx] - r) / self.Rx
                    b = int(idx[np.argmin(slack)])
                    self.put(b, item, r, rem)
                    rem = 0
                    continue
                if split and ok.any():
                    idx = np.flatnonzero(ok)
                    b = int(idx[np.lexsort((fr[idx], -fc[idx]))[0]])
                    k = int(fc[b])
                    self.put(b, item, r, k)
                    rem -= k
                    continue
            if not allow_open:
                return False
            if rem >= self.Cx:  # full-width pieces: nothing open can take them, open them at once
                self.open_full(item, r, rem // self.Cx)
                rem -= (rem // self.Cx) * self.Cx
                continue
            b = self.open()
            self.put(b, item, r, rem)
            rem = 0
        return True


def _greedy(order, items, Rx, Cx, split: bool) -> _Bins:
    bins = _Bins(Rx, Cx, sum(-(-items[i][1] // Cx) for i in order))
    if not split:
        # without splitting into open bins, an item's full-width pieces always open bins of their
        # own that nothing else can use: open them all first, then place the remainders
        for i in order:
            r, c = items[i]
            if c >= Cx:
                bins.open_full(i, r, c // Cx)
        for i in order:
            r, c = items[i]
            if c % Cx:
                bins.place(i, r, c % Cx, split)
        return bins
    for i in order:
        r, c = items[i]
        bins.place(i, r, c, split)
    return bins


def _repair(bins: _Bins, items, lb: int, budget: int = 400) -> _Bins:
    """Try to empty bins (least filled first) by moving their pieces elsewhere (at most
    ``budget`` attempts)."""
    improved = True
    while improved and bins.n > lb:
        improved = False
        used = bins.Cx - bins.fc[:bins.n]
        for b in np.argsort(used, kind="stable").tolist():
            budget -= 1
            if budget < 0:
                return bins
            trial = bins.copy()
            ok = True
            for item, n in bins.content[b].items():
                if not trial.place(item, items[item][0], n, True, exclude=b, allow_open=False):
                    ok = False
                    break
            if ok:
                trial.remove(b)
                bins = trial
                improved = True
                break
    return bins


def _orders(r: np.ndarray, c: np.ndarray, Rx: int, seed: int) -> list[np.ndarray]:
    """The greedy's item orders, as positions into ``r`` / ``c``."""
    n = r.size
    orders = [
        np.lexsort((-c, -r)),
        np.lexsort((-r, -c)),
        np.lexsort((-r, -r * c)),
        np.lexsort((c, -r)),
    ]
    rng = np.random.default_rng(seed)
    for _ in range(4 if n <= 200 else 1 if n <= 2000 else 0):
        noise = rng.uniform(0.0, 0.25 * Rx, size=n)
        orders.append(np.argsort(-(r + noise), kind="stable"))
    return orders


def _heuristic_py(idx: list[int], items, Rx, Cx, lb: int, seed: int) -> _Bins:
    """Greedy over several orders and both split modes; the four best results are repaired.
    The reference implementation (plain Python and numpy); :func:`_heuristic` runs the same
    algorithm in compiled kernels and gives the same bins (the tests compare them)."""
    a = np.asarray([items[i] for i in idx], dtype=np.int64).reshape(-1, 2)
    ids = np.asarray(idx)
    orders = [ids[o] for o in _orders(a[:, 0], a[:, 1], Rx, seed)]
    results: list[_Bins] = []
    for order in orders:
        for split in (False, True):
            bins = _greedy(order.tolist(), items, Rx, Cx, split)
            if bins.n <= lb:
                return bins
            results.append(bins)
    results.sort(key=lambda b: b.n)  # stable: ties keep the deterministic order above
    best = results[0]
    for bins in results[:4]:
        bins = _repair(bins, items, lb)
        if bins.n < best.n:
            best = bins
        if best.n <= lb:
            break
    return best


class _KBins:
    """A heuristic result of the kernels: ``n`` bins, per bin ``clen`` entries (item position,
    columns) in insertion order."""

    __slots__ = ("n", "fr", "fc", "clen", "citem", "ccols", "ids")

    def __init__(self, state, ids):
        self.n, self.fr, self.fc, self.clen, self.citem, self.ccols = state
        self.n = int(self.n)
        self.ids = ids

    def state(self):
        """Copies of the bins' arrays (repair never opens a bin: ``n`` rows are enough)."""
        n = max(self.n, 1)
        return (self.fr[:n].copy(), self.fc[:n].copy(), self.clen[:n].copy(), self.citem[:n].copy(),
                self.ccols[:n].copy())

    @property
    def content(self) -> list[dict[int, int]]:
        ids = self.ids.tolist()
        clen = self.clen[:self.n].tolist()
        it, co = self.citem[:self.n].tolist(), self.ccols[:self.n].tolist()
        return [{ids[i]: c for i, c in zip(it[b][:k], co[b][:k])} for b, k in enumerate(clen)]


def _heuristic(idx: list[int], items, Rx, Cx, lb: int, seed: int):
    """:func:`_heuristic_py` in numba kernels (:func:`_k_greedy`, :func:`_k_repair`): the same
    orders, greedy decisions, repair moves and result. Returns an object with ``n`` and
    ``content`` (as :class:`_Bins`)."""
    k = _kernels()
    a = np.asarray([items[i] for i in idx], dtype=np.int64).reshape(-1, 2)
    r, c = np.ascontiguousarray(a[:, 0]), np.ascontiguousarray(a[:, 1])
    ids = np.asarray(idx, dtype=np.int64)
    cap = max(int((-(-c // Cx)).sum()), 1)
    K = max(1, min(Rx, Cx, len(idx)))
    results: list[_KBins] = []
    for order in _orders(r, c, Rx, seed):
        order = order.astype(np.int64)
        for split in (False, True):
            bins = _KBins(k["greedy"](order, r, c, Rx, Cx, split, cap, K), ids)
            if bins.n <= lb:
                return bins
            results.append(bins)
    results.sort(key=lambda b: b.n)  # stable: ties keep the deterministic order above
    best = results[0]
    for bins in results[:4]:
        fr, fc, clen, citem, ccols = bins.state()
        n = k["repair"](bins.n, fr, fc, clen, citem, ccols, r, Rx, Cx, lb, 400)
        bins = _KBins((n, fr, fc, clen, citem, ccols), ids)
        if bins.n < best.n:
            best = bins
        if best.n <= lb:
            break
    return best


# numba kernels of the heuristic (compiled, or loaded from numba's cache, on first use by
# :func:`_kernels`). Bins are arrays: free rows ``fr`` and columns ``fc``, and per bin ``clen``
# entries ``(citem, ccols)`` in insertion order (the dicts of :class:`_Bins`). An entry holds at
# least one row and one column, so a bin has at most ``min(Rx, Cx)`` entries.

def _k_put(fr, fc, clen, citem, ccols, b, item, r, n):
    # _Bins.put; returns True when the item is new in bin b
    L = clen[b]
    for j in range(L):
        if citem[b, j] == item:
            ccols[b, j] += n
            fc[b] -= n
            return False
    fr[b] -= r
    citem[b, L] = item
    ccols[b, L] = n
    clen[b] = L + 1
    fc[b] -= n
    return True


def _k_place(nbins, fr, fc, clen, citem, ccols, Rx, Cx, item, r, n, split, exclude, allow_open,
             own_ptr, own_idx, local, log, nlog):
    # _Bins.place. The item's bins are own_idx[own_ptr[item]:own_ptr[item + 1]] (its bins before
    # this call) plus local[:nloc] (bins it entered in this call); puts are logged to log[nlog:]
    # as (bin, item, columns, new) when log has rows. Returns (ok, nbins, nlog).
    rem = n
    nloc = 0
    while rem > 0:
        if nbins > 0:
            # a bin already holding the item (no more rows): the one with the most free columns
            bo = np.int64(-1)
            for t in range(own_ptr[item], own_ptr[item + 1]):
                b = own_idx[t]
                if b != exclude and fc[b] > 0 and (bo < 0 or fc[b] > fc[bo] or (fc[b] == fc[bo] and b < bo)):
                    bo = b
            for t in range(nloc):
                b = local[t]
                if b != exclude and fc[b] > 0 and (bo < 0 or fc[b] > fc[bo] or (fc[b] == fc[bo] and b < bo)):
                    bo = b
            if bo >= 0:
                k = min(rem, fc[bo])
                new = _k_put_nb(fr, fc, clen, citem, ccols, bo, item, r, k)
                if log.shape[0]:
                    log[nlog, 0], log[nlog, 1], log[nlog, 2], log[nlog, 3] = bo, item, k, new
                    nlog += 1
                rem -= k
                continue
            # (no bin of the item is usable here, so the item's bins drop out below by fc or exclude)
            bw = np.int64(-1)
            bs = 0.0
            for b in range(nbins):
                if b != exclude and fc[b] > 0 and fr[b] >= r and fc[b] >= rem:
                    s = (fc[b] - rem) / Cx + (fr[b] - r) / Rx
                    if bw < 0 or s < bs:
                        bw = b
                        bs = s
            if bw >= 0:
                new = _k_put_nb(fr, fc, clen, citem, ccols, bw, item, r, rem)
                if new:
                    local[nloc] = bw
                    nloc += 1
                if log.shape[0]:
                    log[nlog, 0], log[nlog, 1], log[nlog, 2], log[nlog, 3] = bw, item, rem, new
                    nlog += 1
                rem = 0
                continue
            if split:
                bp = np.int64(-1)
                for b in range(nbins):
                    if b != exclude and fc[b] > 0 and fr[b] >= r and (
                            bp < 0 or fc[b] > fc[bp] or (fc[b] == fc[bp] and fr[b] < fr[bp])):
                        bp = b
                if bp >= 0:
                    k = fc[bp]
                    new = _k_put_nb(fr, fc, clen, citem, ccols, bp, item, r, k)
                    if new:
                        local[nloc] = bp
                        nloc += 1
                    if log.shape[0]:
                        log[nlog, 0], log[nlog, 1], log[nlog, 2], log[nlog, 3] = bp, item, k, new
                        nlog += 1
                    rem -= k
                    continue
        if not allow_open:
            return False, nbins, nlog
        if rem >= Cx:   # full-width pieces: bins of their own (never usable again: no free columns)
            q = rem // Cx
            for b in range(nbins, nbins + q):
                fr[b] = Rx - r
                fc[b] = 0
                clen[b] = 1
                citem[b, 0] = item
                ccols[b, 0] = Cx
            nbins += q
            rem -= q * Cx
            continue
        b = nbins
        fr[b] = Rx
        fc[b] = Cx
        clen[b] = 0
        nbins += 1
        _k_put_nb(fr, fc, clen, citem, ccols, b, item, r, rem)
        local[nloc] = b
        nloc += 1
        rem = 0
    return True, nbins, nlog


def _k_greedy(order, R, C, Rx, Cx, split, cap, K):
    # _greedy on item positions; returns (nbins, fr, fc, clen, citem, ccols)
    N = R.shape[0]
    fr = np.zeros(cap, np.int64)
    fc = np.zeros(cap, np.int64)
    clen = np.zeros(cap, np.int64)
    citem = np.empty((cap, K), np.int64)
    ccols = np.empty((cap, K), np.int64)
    own_ptr = np.zeros(N + 1, np.int64)
    own_idx = np.zeros(0, np.int64)
    local = np.empty(cap, np.int64)
    log = np.zeros((0, 4), np.int64)
    # typed (not literal) constants: every call of _k_place has one signature (one compilation)
    no, yes, minus1, zero = np.bool_(False), np.bool_(True), np.int64(-1), np.int64(0)
    nbins = np.int64(0)
    if not split:
        for i in order:
            if C[i] >= Cx:
                q = C[i] // Cx
                for b in range(nbins, nbins + q):
                    fr[b] = Rx - R[i]
                    fc[b] = 0
                    clen[b] = 1
                    citem[b, 0] = i
                    ccols[b, 0] = Cx
                nbins += q
        for i in order:
            if C[i] % Cx:
                ok, nbins, _ = _k_place_nb(nbins, fr, fc, clen, citem, ccols, Rx, Cx, i, R[i], C[i] % Cx, no,
                                           minus1, yes, own_ptr, own_idx, local, log, zero)
    else:
        for i in order:
            ok, nbins, _ = _k_place_nb(nbins, fr, fc, clen, citem, ccols, Rx, Cx, i, R[i], C[i], yes,
                                       minus1, yes, own_ptr, own_idx, local, log, zero)
    return nbins, fr, fc, clen, citem, ccols


def _k_owners(nbins, clen, citem, N, own_ptr, own_idx):
    # CSR of the bins holding each item (ascending bins)
    own_ptr[:] = 0
    for b in range(nbins):
        for j in range(clen[b]):
            own_ptr[citem[b, j] + 1] += 1
    for i in range(N):
        own_ptr[i + 1] += own_ptr[i]
    fill = own_ptr[:N].copy()
    for b in range(nbins):
        for j in range(clen[b]):
            i = citem[b, j]
            own_idx[fill[i]] = b
            fill[i] += 1


def _k_repair(nbins, fr, fc, clen, citem, ccols, R, Rx, Cx, lb, budget):
    # _repair in place: moves are tried directly on the bins and undone from a log when a bin
    # cannot be emptied (a trial moves at most Cx columns, one put moves at least one)
    N = R.shape[0]
    cap = fr.shape[0]
    own_ptr = np.zeros(N + 1, np.int64)
    own_idx = np.zeros(cap * citem.shape[1], np.int64)
    local = np.empty(cap, np.int64)
    log = np.zeros((Cx + 1, 4), np.int64)
    _k_owners_nb(nbins, clen, citem, N, own_ptr, own_idx)
    no, yes = np.bool_(False), np.bool_(True)
    improved = True
    while improved and nbins > lb:
        improved = False
        used = Cx - fc[:nbins]
        for b in np.argsort(used, kind="mergesort"):
            budget -= 1
            if budget < 0:
                return nbins
            nlog = np.int64(0)
            ok = True
            for j in range(clen[b]):
                ok, nbins, nlog = _k_place_nb(nbins, fr, fc, clen, citem, ccols, Rx, Cx, citem[b, j], R[citem[b, j]],
                                              ccols[b, j], yes, np.int64(b), no, own_ptr, own_idx, local, log, nlog)
                if not ok:
                    break
            if ok:
                # remove bin b (later bins move down by one)
                for x in range(b, nbins - 1):
                    fr[x] = fr[x + 1]
                    fc[x] = fc[x + 1]
                    L = clen[x + 1]
                    clen[x] = L
                    for j in range(L):
                        citem[x, j] = citem[x + 1, j]
                        ccols[x, j] = ccols[x + 1, j]
                nbins -= 1
                _k_owners_nb(nbins, clen, citem, N, own_ptr, own_idx)
                improved = True
                break
            for t in range(nlog - 1, -1, -1):   # undo
                x, i, k, new = log[t, 0], log[t, 1], log[t, 2], log[t, 3]
                fc[x] += k
                if new:
                    clen[x] -= 1
                    fr[x] += R[i]
                else:
                    for j in range(clen[x]):
                        if citem[x, j] == i:
                            ccols[x, j] -= k
                            break
    return nbins


_k_put_nb = _k_place_nb = _k_owners_nb = None
_KERNELS: dict = {}


def _kernels() -> dict:
    """The heuristic's numba kernels ``greedy`` and ``repair``, compiled on first use."""
    global _k_put_nb, _k_place_nb, _k_owners_nb  # noqa: PLW0603
    if not _KERNELS:
        import numba  # noqa: PLC0415

        jit = numba.njit(cache=True, nogil=True)
        _k_put_nb = jit(_k_put)
        _k_place_nb = jit(_k_place)
        _k_owners_nb = jit(_k_owners)
        _KERNELS.update(greedy=jit(_k_greedy), repair=jit(_k_repair))
    return _KERNELS


# ----------------------------------------------------------------------------------------
# exact
# ----------------------------------------------------------------------------------------

def _exact(idx: list[int], items, Rx, Cx, B: int, lb: int, time_limit: float, seed: int,
           workers: int):
    """CP-SAT with at most ``B`` bins. Returns (status, bins) with bins a list of {item: cols}."""
    from ortools.sat.python import cp_model

    m = cp_model.CpModel()
    order = sorted(idx, key=lambda i: (-items[i][0], -items[i][1], i))
    x, y = {}, {}
    u = [m.NewBoolVar(f"u{b}") for b in range(B)]
    for i in order:
        r, c = items[i]
        cap = min(c, Cx)
        for b in range(B):
            x[i, b] = m.NewIntVar(0, cap, f"x{i}_{b}")
            y[i, b] = m.NewBoolVar(f"y{i}_{b}")
            m.Add(x[i, b] <= cap * y[i, b])
            m.Add(x[i, b] >= y[i, b])
            m.AddImplication(y[i, b], u[b])
        m.Add(sum(x[i, b] for b in range(B)) == c)
        m.Add(sum(y[i, b] for b in range(B)) >= -(-c // Cx))
    for b in range(B):
        m.Add(sum(x[i, b] for i in order) <= Cx * u[b])
        m.Add(sum(items[i][0] * y[i, b] for i in order) <= Rx * u[b])
        if b + 1 < B:
            m.Add(u[b] >= u[b + 1])
    m.Add(y[order[0], 0] == 1)
    m.Add(sum(u) >= lb)
    m.Minimize(sum(u))
    s = cp_model.CpSolver()
    s.parameters.random_seed = int(seed)
    s.parameters.num_workers = max(1, int(workers))
    if workers > 1:
        s.parameters.interleave_search = True
    s.parameters.max_deterministic_time = float(time_limit)
    s.parameters.max_time_in_seconds = float(time_limit) * 20 + 10.0  # safety net only
    st = s.Solve(m)
    name = s.StatusName(st)
    if st == cp_model.OPTIMAL:
        bins = []
        for b in range(B):
            if not s.Value(u[b]):
                continue
            d = {i: int(s.Value(x[i, b])) for i in order if s.Value(x[i, b]) > 0}
            bins.append(d)
        return name, bins
    return name, None


# ----------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------

def _solve(items: list[tuple[int, int]], Rx: int, Cx: int, exact_limit: int, time_limit: float,
           seed: int, workers: int):
    """Returns (alone item ids, bins of the other items, count, lower bound, method, status)."""
    for k, (r, c) in enumerate(items):
        if not (1 <= r <= Rx) or c < 1:
            raise ValueError(f"item {k} has shape {r}x{c}; rows must be in 1..{Rx}, columns >= 1")
    if not items:
        return [], [], 0, 0, "heuristic", "OPTIMAL"
    arr = np.asarray(items, dtype=np.int64).reshape(-1, 2)
    lb = lower_bound(arr, Rx, Cx)
    rows = arr[:, 0]
    # items that can share a bin with no other item take ceil(c/Cx) bins of their own
    if len(items) > 1:
        srt = np.sort(rows)
        min_other = np.where(rows == srt[0], srt[1], srt[0])
    else:
        min_other = np.full(1, Rx + 1)
    alone = rows + min_other > Rx
    n_alone = int((-(-arr[alone, 1] // Cx)).sum())
    rest = np.flatnonzero(~alone).tolist()
    method, status = "heuristic", "FEASIBLE"
    rest_bins: list[dict[int, int]] = []
    if rest:
        lb_rest = lower_bound(arr[rest], Rx, Cx)
        h = (_heuristic if KERNELS else _heuristic_py)(rest, items, Rx, Cx, lb_rest, seed)
        rest_bins = h.content
        if len(rest_bins) <= lb_rest:
            status = "OPTIMAL"
        elif len(rest) <= exact_limit and time_limit > 0:
            name, sol = _exact(rest, items, Rx, Cx, len(rest_bins) - 1, lb_rest, time_limit, seed, workers)
            if name == "INFEASIBLE":
                status = "OPTIMAL"
            elif sol is not None:
                rest_bins, method, status = sol, "cp-sat", "OPTIMAL"
    else:
        status = "OPTIMAL"
    count = n_alone + len(rest_bins)
    if status == "OPTIMAL":
        lb = max(lb, count)
    return np.flatnonzero(alone).tolist(), rest_bins, count, int(lb), method, status


def pack_count(items: Sequence[tuple[int, int]], Rx: int, Cx: int, *, seed: int = 0) -> tuple[int, int, str]:
    """Heuristic bin count only (no CP-SAT, no placements): ``(count, lower_bound, status)``."""
    items = [(int(r), int(c)) for r, c in items]
    _, _, count, lb, _, status = _solve(items, Rx, Cx, 0, 0.0, seed, 1)
    return count, lb, status


def pack(items: Sequence[tuple[int, int]], Rx: int, Cx: int, *, exact_limit: int = 24,
         time_limit: float = 5.0, seed: int = 0, workers: int = 1
         ) -> tuple[Placement, int, str, str]:
    """Pack ``items`` = [(rows, cols)] into Rx x Cx bins (see module docstring).

    Returns ``(placements, lower_bound, method, status)``: ``method`` is ``"heuristic"`` or
    ``"cp-sat"``, ``status`` is ``"OPTIMAL"`` (count equals the bound, or CP-SAT proved it) or
    ``"FEASIBLE"``. When optimality is proven the reported bound equals the count.
    """
    items = [(int(r), int(c)) for r, c in items]
    alone, rest_bins, count, lb, method, status = _solve(items, Rx, Cx, exact_limit, time_limit,
                                                         seed, workers)
    placements: Placement = []
    for i in alone:
        c = items[i][1]
        full = c - c % Cx
        placements.extend([(i, 0, 0, a, a + Cx)] for a in range(0, full, Cx))
        if full < c:
            placements.append([(i, 0, 0, full, c)])
    # other items: each item's pieces take consecutive column ranges in bin order
    nxt = [0] * len(items)
    for d in rest_bins:
        row0 = col0 = 0
        plc = []
        for i, n in d.items():
            a = nxt[i]
            plc.append((i, row0, col0, a, a + n))
            nxt[i] = a + n
            row0 += items[i][0]
            col0 += n
        placements.append(plc)
    assert len(placements) == count
    return placements, lb, method, status


# ----------------------------------------------------------------------------------------
# vectorized program builder
# ----------------------------------------------------------------------------------------

def build_program(segments, placements, Rx: int, Cx: int, offset: int = 0, fill=None):
    """Same result and checks as :func:`xbc.layer.assemble_program`, vectorized.

    Metadata (row and column tables) and the overlap checks are computed with whole-array
    operations; only the cell block copies loop over placed pieces (one slice assignment each),
    so tens of thousands of pieces take a fraction of a second. ``fill(cells, flat)``, when
    given, writes the cells instead (``flat`` lists ``(x, segment, row0, col0, c_from, c_to)``);
    it lets squeeze copy straight from its sources without materializing each piece first.
    """
    from .errors import VerifyError
    from .layer import empty_program

    X = len(placements)
    prog = empty_program(Rx, Cx)
    flat = [(x, s, r0, c0, a, b) for x, items in enumerate(placements) for (s, r0, c0, a, b) in items]
    cells = np.zeros((X, Rx, Cx), np.uint8)
    rg = np.full((X, Rx), -1, np.int32)
    ri = np.full((X, Rx), -1, np.int32)
    cg = np.full((X, Cx), -1, np.int32)
    ci = np.full((X, Cx), -1, np.int32)
    cs = np.zeros((X, Cx), np.int32)
    sg = np.zeros((X, Cx), np.int8)
    if flat:
        A = np.asarray([(x, s, r0, c0, a, b, len(segments[s].rows), segments[s].group)
                        for x, s, r0, c0, a, b in flat], dtype=np.int64)
        x, sidx, r0, c0, a, b, r, grp = A.T
        n = b - a
        bad = np.flatnonzero((r0 + r > Rx) | (c0 + n > Cx) | (r0 < 0) | (c0 < 0) | (n < 0))
        if bad.size:
            k = int(bad[0])
            raise VerifyError(f"segment {int(sidx[k])} does not fit crossbar {int(x[k])} at "
                              f"({int(r0[k])},{int(c0[k])})")

        def expand(start, length):
            tot = int(length.sum())
            first = np.repeat(np.cumsum(length) - length, length)
            return np.repeat(start, length) + (np.arange(tot) - first)

        # columns: each physical column at most once
        jx = np.repeat(x, n)
        jj = expand(c0, n)
        key = jx * Cx + jj
        use = np.bincount(key, minlength=X * Cx)
        if use.size and use.max() > 1:
            dup = int(np.argmax(use > 1))
            raise VerifyError(f"crossbar {dup // Cx}: column {dup % Cx} used twice")
        cg[jx, jj] = np.repeat(grp, n)
        ci[jx, jj] = np.concatenate([segments[s].col_index[u:v] for _, s, _, _, u, v in flat])
        cs[jx, jj] = np.concatenate([segments[s].col_shift[u:v] for _, s, _, _, u, v in flat])
        sg[jx, jj] = np.concatenate([segments[s].col_sign[u:v] for _, s, _, _, u, v in flat])
        # rows: a physical row may be shared only by the same (group, matrix row)
        ix = np.repeat(x, r)
        ii = expand(r0, r)
        vg = np.repeat(grp, r)
        vi = np.concatenate([np.asarray(segments[s].rows) for _, s, _, _, _, _ in flat])
        key = ix * Rx + ii
        use = np.bincount(key, minlength=X * Rx)
        if use.size and use.max() > 1:  # shared physical rows must carry the same matrix row
            order = np.argsort(key, kind="stable")
            ks, gs, is_ = key[order], vg[order], vi[order]
            bad = (ks[1:] == ks[:-1]) & ((gs[1:] != gs[:-1]) | (is_[1:] != is_[:-1]))
            if bad.any():
                k = int(ks[1:][bad][0])
                raise VerifyError(f"crossbar {k // Rx}: row {k % Rx} used twice")
        rg[ix, ii] = vg
        ri[ix, ii] = vi
    if fill is not None:
        fill(cells, flat)
    else:
        for xx, s, rr0, cc0, u, v in flat:
            seg = segments[s]
            cells[xx, rr0:rr0 + len(seg.rows), cc0:cc0 + v - u] = seg.cells[:, u:v]
    prog.cells, prog.row_group, prog.row_index = cells, rg, ri
    prog.col_group, prog.col_index, prog.col_shift, prog.col_sign = cg, ci, cs, sg
    prog.offset = offset
    return prog
