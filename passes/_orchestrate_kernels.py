"""Numba kernels of orchestrate-bits (:mod:`xbc.passes.orchestrate_bits`): the segment clearing
(:class:`~xbc.passes.orchestrate_bits._Clearer` with ``compensate=all`` and dense tables, i.e.
``B**P <= _Clearer.DENSE_MAX``), step 1 for ``cell_bits = 1``, and the layout changes around them.

Imported lazily (numba is slow to import); the numpy code in ``orchestrate_bits`` is the
reference (``_Clearer.KERNELS = False`` selects it everywhere) and tests/test_orchestrate.py
compares both exactly. Every kernel is deterministic and serial; the large ones take a task
range ``t0, t1`` and write disjoint outputs, and :func:`run_tasks` runs the ranges on a thread
pool (``nogil``), so a result does not depend on the number of threads. Floating-point terms are
computed with the same operations in the same order as numpy (no fast-math, no contraction).

Layout: units flat, ``u = (g * nb + b) * C + c``; digits ``Du [U, S, P]`` int8, targets
``T [U * S]``, values ``V [U * S]``, segment counts ``N [U, P, 2]``. A candidate ``k`` is the
segment ``(unit[k], p[k], s[k])``; its *entries* are the rows ``i`` whose plane-``p`` digit has
sign ``s`` (``s = 0``: positive).

Key of a candidate (as ``_Clearer._allowed_keys``): ``mask`` has bit ``2q + s'`` set when the
unit's segment ``(q, s')`` is non-empty; ``compensate=all`` clears the candidate's own bit
(``p_tab = P``), ``compensate=lower`` keeps only the bits below plane ``p`` (``p_tab = p``);
without signed digits only the bits of sign ``s`` stay. ``key = ((p_tab << 2P) + mask) << 5 | limit``
(``limit`` = max-digits, 31 for none).

Cost of a candidate (``compensate=all``, nothing kept above the plane): with ``x = clip(t, -qmax,
qmax)`` per entry and the candidate's dense table (``left[c]`` = largest table value ``< c`` or
-inf, ``right[c]`` = smallest value ``>= c`` or +inf, ``cl`` / ``cr`` their digit counts; column
``c + VB``), the column is ``ceil(x)``; in a unit where some ``x`` lies within ``2**-20`` above an
integer it is ``ceil(x + off) - off`` clipped to ``[-VB, VB + 1]`` with ``off = inv * SPAN``
(``inv``: the rank of the candidate's key among the present keys of its evaluation batch), as the
numpy code's concatenated search rounds. Then ``dl = x - left``, ``dr = right - x`` (+inf when
``right < x``), the right neighbour is taken when ``dr < dl`` or, on a tie, when it has fewer
digits (``cr < cl``); the entry costs ``s2 * ((t - w')^2 - (t - v)^2)`` and the candidate
``sum`` over its entries in row order (as ``np.bincount``), +inf if that is not finite (an
entry without a neighbour). The move gives each feasible entry (a finite ``w'``) the digits of
the table row ``lt[col] - 1 + take_right`` and the value ``w'``; an infeasible entry keeps its
digits and value.

Step 1 (:func:`unit_forms`): per unit the NAF, sign-magnitude and two's-complement bit masks of
its values (see ``_binary_unit_forms``), the form with the fewest non-empty segments (ties: fewer
digits, earlier form), its digits and segment counts, in one pass that also gathers the unit
layouts of the values and targets.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_KW = dict(cache=True, nogil=True)

_POOL = None
MIN_WORK = 1 << 16    # smaller calls run in one piece


def threads() -> int:
    """Threads for the kernels that split into tasks: numba's thread count (``NUMBA_NUM_THREADS``,
    by default the CPUs this process may use), at most 8."""
    return max(1, min(8, int(nb.config.NUMBA_NUM_THREADS)))


def run_tasks(fn, ntasks: int, *args, work: int = 1 << 30) -> None:
    """``fn(*args, t0, t1)`` over the tasks ``[0, ntasks)``: in a few chunks per thread on a thread
    pool (the kernels release the GIL and write disjoint outputs, so the result does not depend on
    the split), or in one call for small ``work`` (about the elements the call touches)."""
    global _POOL
    n = threads()
    if n <= 1 or ntasks < 2 or work < MIN_WORK:
        fn(*args, 0, ntasks)
        return
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="xbc-orchestrate")
    k = min(ntasks, 4 * n)
    bounds = [ntasks * i // k for i in range(k + 1)]
    futs = [_POOL.submit(fn, *args, a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    for f in futs:
        f.result()


@nb.njit(**_KW)
def _count_unit(Du, u, out, j):
    """``out[j] = `` segment counts ``[P, 2]`` of unit ``u`` (positive, negative digits per plane)."""
    S, P = Du.shape[1], Du.shape[2]
    for q in range(P):
        cp = 0
        cn = 0
        for i in range(S):
            d = Du[u, i, q]
            cp += d > 0
            cn += d < 0
        out[j, q, 0] = cp
        out[j, q, 1] = cn


@nb.njit(**_KW)
def unit_counts(Du, units, out):
    """``out[j] = `` segment counts ``[P, 2]`` of unit ``units[j]``."""
    for j in range(units.shape[0]):
        _count_unit(Du, units[j], out, j)


@nb.njit(**_KW)
def set_unit_counts(Du, units, N):
    """``N[units[j]] = `` segment counts of unit ``units[j]`` (in place)."""
    for j in range(units.shape[0]):
        _count_unit(Du, units[j], N, units[j])


@nb.njit(**_KW)
def candidate_keys(Nu, nidx, p, s, all_planes, signed, limit):
    """Per candidate its table key (module docstring) and whether it has an entry; ``Nu[nidx[k]]``
    are candidate ``k``'s unit counts ``[P, 2]``."""
    K = p.shape[0]
    P = Nu.shape[1]
    one = np.int64(1)
    pos_bits = np.int64(0)
    for q in range(P):
        pos_bits |= one << (2 * q)
    kc = np.empty(K, np.int64)
    present = np.empty(K, np.bool_)
    for k in range(K):
        j = nidx[k]
        mask = np.int64(0)
        for q in range(P):
            if Nu[j, q, 0] > 0:
                mask |= one << (2 * q)
            if Nu[j, q, 1] > 0:
                mask |= one << (2 * q + 1)
        pk = np.int64(p[k])
        sk = np.int64(s[k])
        if all_planes:
            mask &= ~(one << (2 * pk + sk))
            ptab = np.int64(P)
        else:
            mask &= (one << (2 * pk)) - 1
            ptab = pk
        if not signed:
            mask &= pos_bits << sk
        kc[k] = (((ptab << (2 * P)) + mask) << 5) | limit
        present[k] = Nu[j, pk, sk] > 0
    return kc, present


@nb.njit(**_KW)
def batch_ranks(kc, present, batch):
    """Per candidate the rank of its key among the sorted distinct keys of the present candidates
    of its batch (candidates ``[a, a + batch)``), ``np.searchsorted`` (left) for absent ones."""
    K = kc.shape[0]
    inv = np.zeros(K, np.int64)
    buf = np.empty(min(batch, K), np.int64)
    for a in range(0, K, batch):
        e = min(a + batch, K)
        n = 0
        for k in range(a, e):
            if present[k]:
                buf[n] = kc[k]
                n += 1
        uk = np.unique(buf[:n])
        inv[a:e] = np.searchsorted(uk, kc[a:e])
    return inv


@nb.njit(**_KW)
def batch_ranks_masks(kc, present, batch, nbits, mark):
    """:func:`batch_ranks` when the keys differ only in their mask bits ``(kc >> 5) & (2**nbits - 1)``
    (one plane count and one limit, as in ``compensate=all``), with a dense ``mark`` array of
    ``2**nbits`` zeros (scratch, left zero) instead of sorting every batch. Also returns each
    candidate's mask and the sorted distinct masks of the present candidates."""
    K = kc.shape[0]
    msk = (np.int64(1) << nbits) - 1
    inv = np.zeros(K, np.int64)
    mk = np.empty(K, np.int64)
    buf = np.empty(min(batch, K), np.int64)
    alls = np.empty(K, np.int64)
    na = 0
    for k in range(K):
        mk[k] = (kc[k] >> 5) & msk
    for a in range(0, K, batch):
        e = min(a + batch, K)
        n = 0
        for k in range(a, e):
            if present[k]:
                m = mk[k]
                if mark[m] == 0:
                    mark[m] = 1
                    buf[n] = m
                    n += 1
        d = np.sort(buf[:n])
        for r in range(n):
            mark[d[r]] = r + 1           # rank + 1 while this batch runs
        for k in range(a, e):
            if present[k]:
                inv[k] = mark[mk[k]] - 1
            else:
                inv[k] = np.searchsorted(d, mk[k])
        for r in range(n):
            mark[d[r]] = 0
            alls[na] = d[r]
            na += 1
    return inv, mk, np.unique(alls[:na])


@nb.njit(**_KW)
def tiny_units(T2, qmax):
    """Per unit (row of ``T2 [U, S]``): some ``x = clip(t, -qmax, qmax)`` has ``ceil(x) - x > 1 - 2**-20``."""
    U, S = T2.shape
    out = np.zeros(U, np.bool_)
    lim = 1.0 - 2.0 ** -20
    q = float(qmax)
    for u in range(U):
        for i in range(S):
            x = min(max(T2[u, i], -q), q)
            if np.ceil(x) - x > lim:
                out[u] = True
                break
    return out


@nb.njit(**_KW)
def _unit_rows(T, V, u, S, q, VB, xs, ts, d0s, cols):
    """Per row of unit ``u``: clipped target, target, ``(t - v)^2`` and dense column ``ceil(x) + VB``."""
    for i in range(S):
        r = u * S + i
        t = T[r]
        x = min(max(t, -q), q)
        xs[i] = x
        ts[i] = t
        d0 = t - V[r]
        d0s[i] = d0 * d0
        cols[i] = np.int64(np.ceil(x)) + VB


@nb.njit(**_KW)
def _entries(Du, u, pk, neg, ent):
    """Rows of unit ``u`` whose plane-``pk`` digit has the sign (negative if ``neg``) -> ``ent[:n]``, n."""
    S = Du.shape[1]
    n = 0
    if neg:
        for i in range(S):
            ent[n] = i
            n += Du[u, i, pk] < 0
    else:
        for i in range(S):
            ent[n] = i
            n += Du[u, i, pk] > 0
    return n


@nb.njit(**_KW)
def _column(x, tiny, off, VB, col):
    """Dense column of an entry: ``ceil(x)`` (given as ``col``), or in a tiny unit the rounded
    ``ceil(x + off) - off`` clipped to ``[-VB, VB + 1]``."""
    if tiny:
        ci = np.ceil(x + off)
        ci -= off
        ci = min(max(ci, -VB), VB + 1)
        return np.int64(ci) + VB
    return col


@nb.njit(**_KW)
def clear_costs(Du, T, V, s2flat, C, nbC, tiny_u, unit, p, s, tid, invc, span, qmax, VB, LR, TIE, cost, k0, k1):
    """Cost of clearing the candidate segments ``k0 <= k < k1`` (module docstring) into ``cost``.
    ``LR [tables, W, 2]``: the left and right neighbours per column, ``TIE [tables, W]``:
    ``cr < cl``. Every cost is computed alone: ranges may run on several threads."""
    S = Du.shape[1]
    q = float(qmax)
    xs = np.empty(S)
    ts = np.empty(S)
    d0s = np.empty(S)
    cols = np.empty(S, np.int64)
    ent = np.empty(S, np.int64)
    prev = -1
    for k in range(k0, k1):
        u = unit[k]
        if u != prev:
            _unit_rows(T, V, u, S, q, VB, xs, ts, d0s, cols)
            prev = u
        n = _entries(Du, u, p[k], s[k] != 0, ent)
        tb = tid[k]
        s2 = s2flat[(u // nbC) * C + u % C]
        acc = 0.0
        if tiny_u[u]:
            off = invc[k] * span
            for j in range(n):
                i = ent[j]
                x = xs[i]
                col = _column(x, True, off, VB, cols[i])
                vl = LR[tb, col, 0]
                vr = LR[tb, col, 1]
                dr = vr - x if vr >= x else np.inf
                dl = x - vl
                w = vr if (dr < dl) | ((dr == dl) & TIE[tb, col]) else vl
                e = ts[i] - w
                e *= e
                e -= d0s[i]
                e *= s2
                acc += e
        else:                  # ceil(x) <= right neighbour: dr >= 0
            for j in range(n):
                i = ent[j]
                x = xs[i]
                col = cols[i]
                vl = LR[tb, col, 0]
                vr = LR[tb, col, 1]
                dr = vr - x
                dl = x - vl
                w = vr if (dr < dl) | ((dr == dl) & TIE[tb, col]) else vl
                e = ts[i] - w
                e *= e
                e -= d0s[i]
                e *= s2
                acc += e
        cost[k] = acc if np.isfinite(acc) else np.inf


@nb.njit(**_KW)
def _record(V, r, orig):
    """Keep ``V[r]`` in ``orig`` before its first change (``orig`` holds its dtype's minimum, which
    no value reaches, until then)."""
    if orig[r] == np.iinfo(orig.dtype).min:
        orig[r] = V[r]


@nb.njit(**_KW)
def clear_apply(Du, T, V, s2flat, C, nbC, tiny_u, unit, p, s, tid, invc, span, qmax, VB, LR, TIE,
                LT, FIRST, DIGS, orig, distinct):
    """Apply the moves: every entry of every candidate gets its new digits and value, computed from
    the state before the call (with ``distinct`` units, as in the greedy rounds, written right
    away, else collected and written in candidate order); returns the costs as
    :func:`clear_costs`. ``LT [tables, W]``: table values below each column, ``DIGS`` the tables'
    digit rows (table ``tb`` from row ``FIRST[tb]``). ``Du`` and ``V`` change in place; the value
    of a row before its first change is kept in ``orig`` (see :func:`_record`)."""
    K = unit.shape[0]
    S, P = Du.shape[1], Du.shape[2]
    q = float(qmax)
    ent = np.empty(S, np.int64)
    E = 0
    if not distinct:
        for k in range(K):
            E += _entries(Du, unit[k], p[k], s[k] != 0, ent)
    rows = np.empty(E, np.int64)
    newd = np.empty((E, P), np.int8)
    newv = np.empty(E, V.dtype)
    dig = np.empty(P, np.int8)
    cost = np.empty(K)
    m = 0
    for k in range(K):
        u = unit[k]
        n = _entries(Du, u, p[k], s[k] != 0, ent)
        tb = tid[k]
        tiny = tiny_u[u]
        off = invc[k] * span
        s2 = s2flat[(u // nbC) * C + u % C]
        acc = 0.0
        for j in range(n):
            i = ent[j]
            r = u * S + i
            t = T[r]                       # (as _unit_rows, for this row only)
            x = min(max(t, -q), q)
            d0 = t - V[r]
            d0 *= d0
            col = _column(x, tiny, off, VB, np.int64(np.ceil(x)) + VB)
            vl = LR[tb, col, 0]
            vr = LR[tb, col, 1]
            if tiny:
                dr = vr - x if vr >= x else np.inf
            else:
                dr = vr - x
            dl = x - vl
            take_r = (dr < dl) | ((dr == dl) & TIE[tb, col])
            w = vr if take_r else vl
            e = t - w
            e *= e
            e -= d0
            e *= s2
            acc += e
            feasible = np.isfinite(w)
            if feasible:
                row = FIRST[tb] + LT[tb, col] - 1 + (1 if take_r else 0)
                for qq in range(P):
                    dig[qq] = DIGS[row, qq]
                nv = np.int64(w)
            else:
                for qq in range(P):
                    dig[qq] = Du[u, i, qq]
                nv = np.int64(V[r])
            if distinct:           # only this candidate reads this unit
                for qq in range(P):
                    Du[u, i, qq] = dig[qq]
                _record(V, r, orig)
                V[r] = nv
            else:
                rows[m] = r
                newd[m] = dig
                newv[m] = nv
                m += 1
        cost[k] = acc if np.isfinite(acc) else np.inf
    for j in range(E):
        r = rows[j]
        u = r // S
        i = r - u * S
        for qq in range(P):
            Du[u, i, qq] = newd[j, qq]
        _record(V, r, orig)
        V[r] = newv[j]
    return cost


@nb.njit(**_KW)
def count_changed(V, orig):
    """Values ``V`` (flat) that differ from their value before the first change (see :func:`clear_apply`)."""
    n = 0
    for r in range(V.shape[0]):
        if orig[r] != np.iinfo(orig.dtype).min and V[r] != orig[r]:
            n += 1
    return n


# ========================================================================================
# step 1 (cell_bits = 1, bit masks) and the layout changes
# ========================================================================================

@intrinsic
def _popcount(typingctx, x):
    """Set bits of an integer (as 64 bits; ``llvm.ctpop``, one instruction)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        i64 = ir.IntType(64)
        if v.type.width < 64:
            v = builder.sext(v, i64) if signature.args[0].signed else builder.zext(v, i64)
        return builder.call(builder.module.declare_intrinsic("llvm.ctpop", [i64]), [v])

    return types.int64(x), codegen


@nb.njit(**_KW)
def _tc_top(lo, hi, P):
    """Smallest ``k < P`` with ``[lo, hi]`` inside ``[-2**k, 2**k - 1]`` (0 if none) and whether there is one."""
    k = 0
    for kk in range(P - 1, -1, -1):
        if lo >= -(1 << kk) and hi <= (1 << kk) - 1:
            k = kk
    return k, (lo >= -(1 << k)) and (hi <= (1 << k) - 1)


@nb.njit(**_KW)
def _form_masks(x, form, low, top):
    """(positive, negative) digit masks of value ``x`` in a unit form: 0 NAF, 1 sign-magnitude,
    2 two's complement (``low``, ``top`` of the unit), 3 mirrored two's complement."""
    if form == 0:
        n = abs(x)
        h = n >> 1
        t = n + h
        c = h ^ t
        pos = t & c
        neg = h & c
        if x > 0:
            return pos, neg
        return neg, pos
    if form == 1:
        if x > 0:
            return x, 0
        return 0, -x
    if form == 2:
        return x & low, (top if x < 0 else 0)
    w = -x
    return (top if w < 0 else 0), w & low


@nb.njit(**_KW)
def _spread8(x):
    """Bits 0..7 of ``x`` (uint64) -> bytes 0..7 (0 or 1) of a uint64."""
    x = (x * np.uint64(0x0101010101010101)) & np.uint64(0x8040201008040201)
    return ((x + np.uint64(0x7F7F7F7F7F7F7F7F)) >> np.uint64(7)) & np.uint64(0x0101010101010101)


@nb.njit(**_KW)
def _unit_form(V, T, perm, S, P, signed, nform, max_digits, Vu, Tu, Du, Dw, N, forms, packed, g, b, c,
               v, lows, tops):
    """One unit of :func:`unit_forms`: returns (chosen form, set bits of the |v|, non-empty
    sign-magnitude segments, max |v|)."""
    R = V.shape[1]
    orp = 0
    orn = 0
    d_sm = 0
    max_sm = 0
    maxmag = 0
    lo = 0
    hi = 0
    for i in range(S):
        rr = b * S + i
        if rr < R:
            r = perm[g, rr]
            x = np.int64(V[g, r, c])
            Tu[g, b, c, i] = T[g, r, c]
        else:
            x = np.int64(0)
            Tu[g, b, c, i] = 0.0
        v[i] = x
        Vu[g, b, c, i] = x
        m = abs(x)
        maxmag = max(maxmag, m)
        pc = _popcount(m)
        d_sm += pc
        max_sm = max(max_sm, pc)
        if x > 0:
            orp |= m
        elif x < 0:
            orn |= m
        lo = min(lo, x)
        hi = max(hi, x)
    n_sm = _popcount(orp) + _popcount(orn)
    if not forms:
        return 0, d_sm, n_sm, maxmag
    best = 1 if not signed else 0
    lows[:] = 0
    tops[:] = 0
    if signed:
        # NAF
        op = 0
        on = 0
        best_d = 0
        for i in range(S):
            pm, nm = _form_masks(v[i], 0, 0, 0)
            op |= pm
            on |= nm
            best_d += _popcount(pm) + _popcount(nm)
        best_n = _popcount(op) + _popcount(on)
        for f in range(1, nform):
            fits = True
            if f == 1:
                n_f, d_f, mx = n_sm, d_sm, max_sm
            else:
                if f == 2:
                    k, fits = _tc_top(lo, hi, P)
                else:
                    k, fits = _tc_top(-hi, -lo, P)
                if fits:
                    tops[f] = 1 << k
                    lows[f] = (1 << k) - 1
                op = 0
                on = 0
                d_f = 0
                mx = 0
                for i in range(S):
                    pm, nm = _form_masks(v[i], f, lows[f], tops[f])
                    op |= pm
                    on |= nm
                    pc = _popcount(pm) + _popcount(nm)
                    d_f += pc
                    mx = max(mx, pc)
                n_f = _popcount(op) + _popcount(on)
            better = (n_f < best_n) or (n_f == best_n and d_f < best_d)
            better = better and fits
            if max_digits >= 0:
                better = better and mx <= max_digits
            if better:
                best, best_n, best_d = f, n_f, d_f
    low, top = lows[best], tops[best]
    if packed:
        cp = np.uint64(0)
        cn = np.uint64(0)
        for i in range(S):
            pm, nm = _form_masks(v[i], best, low, top)
            bp = _spread8(np.uint64(pm))
            bn = _spread8(np.uint64(nm))
            Dw[g, b, c, i] = bp | (bn * np.uint64(0xFF))
            cp += bp
            cn += bn
        for q in range(8):
            N[g, b, c, q, 0] = (cp >> np.uint64(8 * q)) & np.uint64(0xFF)
            N[g, b, c, q, 1] = (cn >> np.uint64(8 * q)) & np.uint64(0xFF)
    else:
        for q in range(P):
            N[g, b, c, q, 0] = 0
            N[g, b, c, q, 1] = 0
        for i in range(S):
            pm, nm = _form_masks(v[i], best, low, top)
            for q in range(P):
                dp = (pm >> q) & 1
                dn = (nm >> q) & 1
                Du[g, b, c, i, q] = dp - dn
                N[g, b, c, q, 0] += dp
                N[g, b, c, q, 1] += dn
    return best, d_sm, n_sm, maxmag


@nb.njit(**_KW)
def unit_forms(V, T, perm, S, P, signed, twos_complement, max_digits, Vu, Tu, Du, Dw, N, choice, part, t0, t1):
    """Step 1 of orchestrate-bits for ``cell_bits = 1`` from the matrix ``V [G, R, C]`` and targets
    ``T`` (any memory layout; rows in ``perm [G, R]`` order, padded with zeros to ``nb * S``), as
    ``_binary_unit_forms``: per unit the form with the fewest non-empty segments, ties: fewer
    digits, forms tried in the order NAF (always allowed), sign-magnitude, two's complement,
    mirrored two's complement (only if the unit fits their top plane), each later one taken only
    if strictly better and (with ``max_digits >= 0``) no weight of it has more than ``max_digits``
    digits; without ``signed`` sign-magnitude.

    Fills ``Vu [G, nb, C, S]`` int64 and ``Tu`` float64 (unit layout), and unless ``N`` is empty
    the chosen digits: ``Du [G, nb, C, S, P]`` int8, or with ``P = 8`` and ``S <= 255`` (``Du``
    empty) ``Dw [G, nb, C, S]`` uint64 (the 8 digits of a weight as bytes, little-endian), their
    counts ``N [G, nb, C, P, 2]`` int32 and the form chosen per unit ``choice [G, nb, C]`` (0 NAF,
    1 sign-magnitude, 2, 3 two's complement). Tasks ``t0 <= t < t1`` of :func:`unit_tasks` (a
    column, or a row block, as ``V`` is laid out; disjoint units: ranges may run on several
    threads), with ``part[t] = [sum of |v|'s set bits, non-empty sign-magnitude segments, max
    |v|]``. Needs ``P <= 30``."""
    G, R, C = V.shape
    nb_ = Vu.shape[1]
    forms = N.shape[0] > 0
    packed = Du.shape[0] == 0
    nform = (4 if twos_complement else 2) if signed else 1
    col_major = V.strides[1] < V.strides[2]     # the rows of a column adjacent: columns outside
    n1, n2 = (C, nb_) if col_major else (nb_, C)
    for t in range(t0, t1):
        g = t // n1
        o1 = t - g * n1
        v = np.empty(S, np.int64)
        lows = np.zeros(4, np.int64)
        tops = np.zeros(4, np.int64)
        s0 = 0
        s1 = 0
        s2 = 0
        for o2 in range(n2):
            if col_major:
                c, b = o1, o2
            else:
                c, b = o2, o1
            f, a0, a1, a2 = _unit_form(V, T, perm, S, P, signed, nform, max_digits, Vu, Tu, Du, Dw, N,
                                       forms, packed, g, b, c, v, lows, tops)
            if forms:
                choice[g, b, c] = f
            s0 += a0
            s1 += a1
            s2 = max(s2, a2)
        part[t, 0] = s0
        part[t, 1] = s1
        part[t, 2] = s2


@nb.njit(**_KW)
def unit_tasks(V, nb_):
    """Tasks of :func:`unit_forms`: ``G`` times the columns (``V``'s rows adjacent) or row blocks."""
    G, R, C = V.shape
    return G * (C if V.strides[1] < V.strides[2] else nb_)


@nb.njit(**_KW)
def from_units(Du, Vu, perm, Vu0, cell_bits, D, Vn, part, t0, t1):
    """Unit layout back to the matrix: digits ``D [P, G, R, C]`` and values ``Vn [G, R, C]`` (any
    memory layout) in the original row order (unit row ``i`` of block ``b`` is row
    ``perm[g, b * S + i]``, a permutation). Tasks ``t0 <= t < t1`` are the row blocks
    ``t = g * nb + b`` (disjoint rows: ranges may run on several threads); ``part[t]`` = the
    number of values that differ from ``Vu0`` (same layout as ``Vu``; 0 if ``Vu0`` is empty) and
    the number whose digits do not add up to them (``sum_q D[q] * 2**(cell_bits q)``)."""
    G, nb_, C, S, P = Du.shape
    R = Vn.shape[1]
    count = Vu0.shape[0] > 0
    for t in range(t0, t1):
        g = t // nb_
        b = t - g * nb_
        changed = 0
        bad = 0
        for i in range(min(S, R - b * S)):
            r = perm[g, b * S + i]
            for c in range(C):
                x = Vu[g, b, c, i]
                Vn[g, r, c] = x
                if count:
                    changed += x != Vu0[g, b, c, i]
                val = np.int64(0)
                for q in range(P):
                    d = Du[g, b, c, i, q]
                    D[q, g, r, c] = d
                    val += np.int64(d) << (cell_bits * q)
                bad += val != x
        part[t, 0] = changed
        part[t, 1] = bad


@nb.njit(**_KW)
def column_tiles(w):
    """(tasks, columns per task) of :func:`support_masks` and :func:`error_terms`: per group the
    tiles of 64 columns when ``w``'s rows are adjacent in memory, else all columns."""
    G, R, C = w.shape
    TB = 64 if w.strides[1] < w.strides[2] else max(C, 1)
    return G * ((C + TB - 1) // TB), TB


@nb.njit(**_KW)
def support_masks(w, P, signed, out, TB, part, t0, t1):
    """``out[g, r, c] = pos | neg << P`` (any integer dtype): the digit masks of ``w [G, R, C]`` (any
    memory layout), NAF with ``signed`` else sign-magnitude, for the tasks ``t0 <= t < t1`` of
    :func:`column_tiles` (disjoint: ranges may run on several threads), with ``part[t]`` = the OR
    of their ``pos | neg`` (the caller checks that they fit ``P`` planes). Needs ``P <= 30``."""
    G, R, C = w.shape
    nt = (C + TB - 1) // TB
    for t in range(t0, t1):
        g = t // nt
        c0 = (t - g * nt) * TB
        c1 = min(C, c0 + TB)
        allbits = 0
        for r in range(R):
            for c in range(c0, c1):
                x = np.int64(w[g, r, c])
                n = abs(x)
                if signed:
                    h = n >> 1
                    tt = n + h
                    cc = h ^ tt
                    pos = tt & cc
                    neg = h & cc
                    if x <= 0:
                        pos, neg = neg, pos
                else:
                    pos = n if x > 0 else 0
                    neg = n if x < 0 else 0
                allbits |= pos | neg
                out[g, r, c] = pos | (neg << P)
        part[t] = allbits


# ========================================================================================
# the greedy rounds (``_Clearer.run``), per unit over its 2P segments ``j = 2 p + s``
# ========================================================================================

@nb.njit(**_KW)
def round_todo(N, blocked, dirty, max_seg):
    """Flat indices ``u * 2P + j`` (ascending, as ``np.nonzero``) of the candidates to evaluate:
    ``0 < N <= max_seg``, not blocked, in a dirty unit. ``N``, ``blocked`` ``[U, 2P]``."""
    U, J = N.shape
    n = 0
    for u in range(U):
        if dirty[u]:
            for j in range(J):
                if N[u, j] > 0 and N[u, j] <= max_seg and not blocked[u, j]:
                    n += 1
    out = np.empty(n, np.int64)
    n = 0
    for u in range(U):
        if dirty[u]:
            for j in range(J):
                if N[u, j] > 0 and N[u, j] <= max_seg and not blocked[u, j]:
                    out[n] = u * J + j
                    n += 1
    return out


@nb.njit(**_KW)
def round_best(N, blocked, cost, max_seg, thr):
    """One round's choice before the budget: every candidate (``0 < N <= max_seg``, not blocked)
    whose cost is not ``<= thr`` becomes blocked; per unit the first remaining candidate of least
    cost (as ``argmin`` over the unit's segments with +inf elsewhere). Returns whether any
    candidate remains, and the units with a finite least cost (ascending), their segment and
    cost."""
    U, J = N.shape
    us = np.empty(U, np.int64)
    js = np.empty(U, np.int64)
    cs = np.empty(U)
    n = 0
    anyc = False
    for u in range(U):
        bv = np.inf
        bj = 0
        for j in range(J):
            if N[u, j] > 0 and N[u, j] <= max_seg and not blocked[u, j]:
                c = cost[u, j]
                if not (c <= thr):
                    blocked[u, j] = True
                else:
                    anyc = True
                    if c < bv:
                        bv = c
                        bj = j
        if np.isfinite(bv):
            us[n] = u
            js[n] = bj
            cs[n] = bv
            n += 1
    return anyc, us[:n], js[:n], cs[:n]


@nb.njit(**_KW)
def error_terms(T, V, s2, d, TB, t0, t1):
    """``d[g, r, c] = (T - V)^2 * s2[g, c]`` in float64, term by term as numpy computes
    ``layer_error_power``'s array (``T``, ``V``, ``d`` in any memory layout), for the tasks
    ``t0 <= t < t1`` of :func:`column_tiles` (of ``T``; disjoint)."""
    G, R, C = T.shape
    nt = (C + TB - 1) // TB
    for t in range(t0, t1):
        g = t // nt
        c0 = (t - g * nt) * TB
        c1 = min(C, c0 + TB)
        for r in range(R):
            for c in range(c0, c1):
                e = T[g, r, c] - np.float64(V[g, r, c])
                e *= e
                e *= s2[g, c]
                d[g, r, c] = e
