"""Multiple-choice knapsack: the fast exact path of the ``ilp`` searcher.

One budget over separable costs is a multiple-choice knapsack problem (MCKP): every
decision unit ``i`` takes exactly one choice ``j`` with value ``values[i, j]`` (the
sensitivity, minimised) and cost ``costs[i, j]``, and the costs add up to at most
``capacity``.

:func:`solve_mckp` solves it in four vectorised steps and one small search:

1. *Dominance and hulls.*  Per unit, choices that cost more without being better are
   dropped, then those above the lower convex hull of (cost, value).
2. *LP relaxation.*  The LP optimum of an MCKP is the greedy walk along the hulls: start
   every unit at its cheapest choice and take the hull steps in order of decreasing
   efficiency (value saved per unit of cost) until the budget is spent.  The step that
   does not fit (the *critical* step) gives the Lagrange multiplier ``lam`` and the LP
   bound, a proven lower bound on the optimum; the steps taken give a feasible solution
   (an upper bound), which a fill pass improves.
3. *Reduced-cost fixing.*  With ``r[i, j] = values[i, j] + lam * costs[i, j] - min_j(...)``
   every feasible solution has ``objective >= L(lam) + sum_i r[i, x_i]``, where
   ``L(lam)`` is the Lagrangian (= LP) bound.  So a solution better than the incumbent
   uses in each unit only choices with ``r < incumbent - L``.  Almost every unit keeps a
   single choice and is fixed; the few left form the *core*.
4. *Branch and bound* over the core, depth first, pruned by that same Lagrangian bound
   (plus ``lam`` times the slack the remaining units cannot fill) and by capacity.

The result is optimal up to ``gap`` (relative) when the search completes, which is
the rule; when ``max_nodes`` is reached first, the incumbent is returned with the
proven LP bound and the gap between them.  numpy only.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["MCKPSolution", "KnapsackInfeasible", "solve_mckp"]


class KnapsackInfeasible(ValueError):
    """Even the cheapest choice of every unit exceeds the capacity."""

    def __init__(self, cheapest: float, capacity: float):
        self.cheapest = cheapest
        self.capacity = capacity
        super().__init__(f"the cheapest choice of every unit costs {cheapest!r}, more than the capacity {capacity!r}")


@dataclass(frozen=True)
class MCKPSolution:
    """``choice[i]`` indexes the columns of the input for unit ``i``.

    ``bound`` is a proven lower bound on the optimum; ``gap`` is
    ``(objective - bound) / max(|objective|, tiny)``.  ``status`` is ``optimal`` when the
    search proved the gap at or under the requested one, ``node_limit`` otherwise.
    """

    choice: np.ndarray
    objective: float
    cost: float
    bound: float
    gap: float
    status: str
    lp_bound: float
    lagrange: float
    core_units: int
    nodes: int
    seconds: float

    def summary(self) -> dict:
        return {"status": self.status, "objective": self.objective, "bound": self.bound, "gap": self.gap,
                "lp_bound": self.lp_bound, "lagrange": self.lagrange, "core_units": self.core_units,
                "nodes": self.nodes, "seconds": round(self.seconds, 4)}


def _relative(gap_abs: float, objective: float) -> float:
    return max(0.0, gap_abs) / max(abs(objective), 1e-300)


def solve_mckp(values, costs, capacity: float, *, gap: float = 0.0, max_nodes: int = 100_000,
               allowed=None, local_rounds: int = 100, max_dp_cells: int = 30_000_000) -> MCKPSolution:
    """Minimise ``sum_i values[i, x_i]`` subject to ``sum_i costs[i, x_i] <= capacity``.

    ``values`` and ``costs`` have shape ``(units, choices)``; a choice with a non-finite
    value or cost, or ``allowed[i, j] == False``, is not available.  ``capacity`` may be
    ``inf`` (no budget).  Raises :class:`KnapsackInfeasible` when no choice fits.
    """
    started = time.perf_counter()
    V = np.asarray(values, dtype=float)
    C = np.asarray(costs, dtype=float)
    if V.ndim != 2 or V.shape != C.shape:
        raise ValueError(f"values and costs must be 2-D arrays of one shape (got {V.shape} and {C.shape})")
    n, m = V.shape
    valid = np.isfinite(V) & np.isfinite(C)
    if allowed is not None:
        valid &= np.asarray(allowed, dtype=bool)
    if n and not valid.any(axis=1).all():
        bad = int(np.flatnonzero(~valid.any(axis=1))[0])
        raise ValueError(f"unit {bad} has no available choice")
    if n == 0:
        if capacity < 0:
            raise KnapsackInfeasible(0.0, capacity)
        return MCKPSolution(np.zeros(0, dtype=int), 0.0, 0.0, 0.0, 0.0, "optimal", 0.0, 0.0, 0, 0,
                            time.perf_counter() - started)

    # --- 1. sort by cost (then value), drop dominated choices, keep the lower hull ----------
    Cm = np.where(valid, C, np.inf)
    Vm = np.where(valid, V, np.inf)
    if m == 1 or bool(np.all(Cm[:, 1:] > Cm[:, :-1])):
        # already sorted by cost (the usual layout: widths in increasing order): no sort
        order = np.broadcast_to(np.arange(m), (n, m))
        Cs, Vs = Cm, Vm
    else:
        order = np.lexsort((Vm, Cm))  # per row (last axis): by cost, then value
        Cs = np.take_along_axis(Cm, order, axis=1)
        Vs = np.take_along_axis(Vm, order, axis=1)
    ok = np.isfinite(Cs)
    best_before = np.minimum.accumulate(np.concatenate([np.full((n, 1), np.inf), Vs[:, :-1]], axis=1), axis=1)
    keep = ok & (Vs < best_before)
    keep[:, 0] = True  # the cheapest choice of each unit (always available)
    cols = np.arange(m)
    rows = np.arange(n)[:, None]
    while True:
        marked = np.where(keep, cols, -1)
        prev = np.maximum.accumulate(np.concatenate([np.full((n, 1), -1), marked[:, :-1]], axis=1), axis=1)
        marked_next = np.where(keep, cols, m)
        nxt = np.minimum.accumulate(np.concatenate([marked_next[:, 1:], np.full((n, 1), m)], axis=1)[:, ::-1],
                                    axis=1)[:, ::-1]
        inner = keep & (prev >= 0) & (nxt < m)
        if not inner.any():
            break
        p = np.clip(prev, 0, m - 1)
        q = np.clip(nxt, 0, m - 1)
        cp, vp = Cs[rows, p], Vs[rows, p]
        cq, vq = Cs[rows, q], Vs[rows, q]
        with np.errstate(invalid="ignore"):
            above = (Vs - vp) * (cq - cp) >= (vq - vp) * (Cs - cp)
        drop = inner & above
        del p, q, cp, vp, cq, vq, above, marked, marked_next, nxt
        if not drop.any():
            break
        keep &= ~drop

    # --- 2. LP relaxation: greedy along the hull steps ---------------------------------------
    base_cost = Cs[:, 0]
    base_value = Vs[:, 0]
    cheapest = math.fsum(base_cost)
    if cheapest > capacity:
        raise KnapsackInfeasible(cheapest, capacity)
    marked = np.where(keep, cols, -1)
    prev = np.maximum.accumulate(np.concatenate([np.full((n, 1), -1), marked[:, :-1]], axis=1), axis=1)
    step_mask = keep & (prev >= 0)
    s_unit, s_to = np.nonzero(step_mask)          # row-major: per unit, steps in hull order
    s_from = prev[s_unit, s_to]
    dc = Cs[s_unit, s_to] - Cs[s_unit, s_from]
    dv = Vs[s_unit, s_to] - Vs[s_unit, s_from]
    eff = -dv / dc
    if eff.size:
        # within a unit the efficiencies decrease; make that hold in floating point too,
        # so that the global order takes each unit's steps in hull order
        same = s_unit[1:] == s_unit[:-1]
        for _ in range(m):
            rising = np.flatnonzero(same & (eff[1:] > eff[:-1])) + 1
            if rising.size == 0:
                break
            eff[rising] = eff[rising - 1]
        del same
    # each unit's steps in hull order (row-major), to find a unit's point after k steps
    step_start = np.concatenate([[0], np.cumsum(np.bincount(s_unit, minlength=n))[:-1]])
    hull_to = s_to.copy()
    order_steps = np.argsort(-eff, kind="stable")  # ties: unit order, then hull order
    s_unit, s_from, s_to, dc, dv, eff = (a[order_steps] for a in (s_unit, s_from, s_to, dc, dv, eff))
    del order_steps
    room = capacity - cheapest
    cum_dc = np.cumsum(dc)
    taken = int(np.searchsorted(cum_dc, room, side="right")) if eff.size else 0
    every = np.arange(n)

    def hull_choice(count: int) -> np.ndarray:
        """The sorted-column index of each unit's choice after the first ``count`` steps."""
        k = np.bincount(s_unit[:count], minlength=n)
        return np.where(k > 0, hull_to[np.minimum(step_start + k - 1, max(hull_to.size - 1, 0))], 0) \
            if hull_to.size else np.zeros(n, dtype=int)

    def cost_after(count: int) -> float:
        return math.fsum(Cs[every, hull_choice(count)])

    total_cost = cost_after(taken)
    if total_cost > capacity and taken > 0:
        # floating-point guard on the cumulative sum: the largest prefix that fits exactly,
        # by bisection inside the band the cumulative sum's rounding can reach
        band = 4 * np.finfo(float).eps * float(np.abs(dc).sum()) * max(1.0, math.log2(max(dc.size, 2)))
        low = int(np.searchsorted(cum_dc, room - band, side="right"))
        low = max(0, min(low, taken) - 1)
        while low > 0 and cost_after(low) > capacity:
            low = max(0, low - max(1, (taken - low)))
        high = taken  # cost_after(high) > capacity >= cost_after(low)
        while high - low > 1:
            mid = (low + high) // 2
            if cost_after(mid) <= capacity:
                low = mid
            else:
                high = mid
        taken = low
        total_cost = cost_after(taken)
    pos = hull_choice(taken)
    incumbent = pos.copy()
    upper = math.fsum(Vs[np.arange(n), pos])
    if taken == eff.size:  # every unit at its best hull point: the budget does not bind
        lam = 0.0
        lower = upper
        lp_bound = upper
    else:
        lam = float(eff[taken])
        prefix_dv = math.fsum(dv[:taken])
        used = float(cum_dc[taken - 1]) if taken else 0.0
        lp_bound = math.fsum(base_value) + prefix_dv + (room - used) / dc[taken] * dv[taken]
        # fill: later steps that still fit; a unit advances only along its hull (a step is
        # taken only from the unit's current point), so a skipped step blocks the later ones
        residual = capacity - total_cost
        later = np.arange(taken + 1, eff.size)
        fits = later[dc[taken + 1:] <= residual]
        point = pos.tolist()
        for u, frm, to, step in zip(s_unit[fits].tolist(), s_from[fits].tolist(), s_to[fits].tolist(),
                                    dc[fits].tolist()):
            if step <= residual and point[u] == frm:
                point[u] = to
                residual -= step
        pos = np.array(point)
        fill_cost = math.fsum(Cs[np.arange(n), pos])
        fill_value = math.fsum(Vs[np.arange(n), pos])
        if fill_cost <= capacity and fill_value < upper:
            incumbent, upper, total_cost = pos.copy(), fill_value, fill_cost
        lower = lp_bound

    eps = 1e-12 * (abs(upper) + abs(lower)) + 1e-300
    tol = max(gap * min(abs(upper), abs(lower)), eps)  # never more than gap of the final objective
    nodes = 0
    core_units = 0
    status = "optimal"
    if upper - lower > tol:
        # --- 3. reduced-cost fixing at the Lagrange multiplier --------------------------------
        R = Vs + lam * Cs
        rmin = np.min(np.where(ok, R, np.inf), axis=1)
        lagrangian = math.fsum(rmin) - lam * capacity
        lower = max(lower, lagrangian) if np.isfinite(lagrangian) else lower
        reduced = np.where(ok, R - rmin[:, None], np.inf)
        useful = ok & ((Vs < best_before) | (cols == 0))  # dominated choices add nothing
        # local search (one move, or a move up paired with a move down) among the choices
        # that could be in a better solution, to bring the incumbent near the optimum first
        improved = _local_search(Cs, Vs, useful & (reduced < upper - lagrangian - tol), incumbent, capacity,
                                 eps, rounds=local_rounds)
        if improved is not None:
            improved_cost = math.fsum(Cs[np.arange(n), improved])
            improved_value = math.fsum(Vs[np.arange(n), improved])
            if improved_cost <= capacity and improved_value < upper:
                incumbent, upper, total_cost = improved, improved_value, improved_cost
                tol = max(gap * min(abs(upper), abs(lower)), eps)  # never more than gap of the final objective
    if upper - lower > tol:
        delta = upper - lagrangian
        survive = useful & (reduced < delta - tol)
        counts = survive.sum(axis=1)
        fixed_units = np.flatnonzero(counts == 1)
        core = np.flatnonzero(counts >= 2)
        core_units = int(core.size)
        fixed_pos = np.argmax(survive[fixed_units], axis=1)
        fixed_cost = math.fsum(Cs[fixed_units, fixed_pos])
        fixed_value = math.fsum(Vs[fixed_units, fixed_pos])
        # --- 4. exact search over the core: dynamic programming when the costs are integers
        # on a small enough grid (sizes in bits usually are), else depth-first branch and bound
        solved = _integer_dp(Cs[core], Vs[core], reduced[core], survive[core], capacity - fixed_cost, lam,
                             delta=delta, tol=tol, max_cells=max_dp_cells)
        if solved is not None:
            best_core, nodes, complete = solved[0], 0, True
            if best_core is not None and math.fsum(Vs[core, best_core]) >= upper - fixed_value - tol:
                best_core = None  # the incumbent is optimal
        else:
            best_core, _, nodes, complete = _branch_and_bound(
                Cs[core], Vs[core], reduced[core], survive[core], capacity - fixed_cost, lam,
                target=upper - fixed_value - tol, delta=delta, tol=tol, max_nodes=max_nodes)
        if best_core is not None:
            candidate = incumbent.copy()
            candidate[fixed_units] = fixed_pos
            candidate[core] = best_core
            cand_cost = math.fsum(Cs[np.arange(n), candidate])
            cand_value = math.fsum(Vs[np.arange(n), candidate])
            if cand_cost <= capacity and cand_value < upper:
                incumbent, upper, total_cost = candidate, cand_value, cand_cost
                if solved is not None:  # the dynamic program is exact over every improving assignment
                    lower = max(lower, upper)
        if complete:
            lower = max(lower, upper - tol)
        else:
            status = "node_limit"
    choice = order[np.arange(n), incumbent]
    objective = math.fsum(V[np.arange(n), choice])
    cost = math.fsum(C[np.arange(n), choice])
    lower = min(lower, objective)
    return MCKPSolution(choice, objective, cost, lower, _relative(objective - lower, objective), status,
                        float(lp_bound), lam, core_units, nodes, time.perf_counter() - started)


def _local_search(C, V, allowed, start, capacity, eps, *, rounds):
    """Improve a feasible assignment by single moves that fit the unused capacity and by
    pairs (one unit to a better, dearer choice; another to a cheaper one that frees the
    room), each round taking the move that gains most.  Only ``allowed`` targets are
    considered.  Returns the new assignment, or None when nothing improved."""
    units = np.flatnonzero(allowed.any(axis=1))
    if units.size == 0 or rounds <= 0:
        return None
    n_all = C.shape[0]
    pos = start.copy()
    Cu, Vu, Au = C[units], V[units], allowed[units]
    local = np.arange(units.size)
    used = math.fsum(C[np.arange(n_all), pos])
    changed = False
    for _ in range(rounds):
        residual = capacity - used
        p = pos[units]
        dC = Cu - Cu[local, p][:, None]
        dV = Vu - Vu[local, p][:, None]
        movable = Au & (np.arange(Cu.shape[1])[None, :] != p[:, None])
        single = movable & (dC <= residual) & (dV < -eps)
        if single.any():
            flat = np.flatnonzero(single.ravel())
            best = flat[np.argmin(dV.ravel()[flat])]
            u, j = divmod(int(best), Cu.shape[1])
            pos[units[u]] = j
            used += float(dC[u, j])
            changed = True
            continue
        up = movable & (dV < -eps) & (dC > residual)
        down = movable & (dC < 0)
        if not up.any() or not down.any():
            break
        d_units, d_cols = np.nonzero(down)
        freed = -dC[d_units, d_cols]
        loss = dV[d_units, d_cols]
        order = np.argsort(freed, kind="stable")
        freed_s, loss_s = freed[order], loss[order]
        suffix = np.minimum.accumulate(loss_s[::-1])[::-1]
        u_units, u_cols = np.nonzero(up)
        need = dC[u_units, u_cols] - residual
        at = np.searchsorted(freed_s, need, side="left")
        reachable = at < freed_s.size
        net = np.full(need.size, np.inf)
        net[reachable] = dV[u_units[reachable], u_cols[reachable]] + suffix[at[reachable]]
        applied = False
        for candidate in np.argsort(net, kind="stable")[:8].tolist():
            if not net[candidate] < -eps:
                break
            u, j = int(u_units[candidate]), int(u_cols[candidate])
            fits = (freed >= need[candidate]) & (d_units != u)
            if not fits.any():
                continue
            k = int(np.flatnonzero(fits)[np.argmin(loss[fits])])
            if dV[u, j] + loss[k] >= -eps:
                continue
            du, dj = int(d_units[k]), int(d_cols[k])
            pos[units[u]] = j
            pos[units[du]] = dj
            used += float(dC[u, j] + dC[du, dj])
            changed = applied = True
            break
        if not applied:
            break
    if not changed:
        return None
    return pos


def _integer_dp(C, V, reduced, survive, capacity, lam, *, delta, tol, max_cells):
    """Exact optimum over the core when every cost difference is an integer multiple of
    one grid step (and the grid is small): a dynamic program over the net change of cost.

    Each core unit starts at its cheapest zero-reduced-cost choice (its *base*); the
    state is the net cost change from the bases, in grid steps.  An improving solution
    has ``lam * slack < delta``, so the final net change lies in a window of width
    ``delta / (lam * step)`` below the room left; partial sums are kept to the window
    that the remaining units can still reach.  Returns ``(choices,)`` with the best
    choices (column indices) in the window, ``(None,)`` when no assignment lies in it (the
    incumbent is optimal), or ``None`` when the costs are not on a grid or the table would
    exceed ``max_cells``.
    """
    k, m = C.shape
    if k == 0 or not lam > 0:
        return None
    rows = np.arange(k)
    rmin = np.min(np.where(survive, reduced, np.inf), axis=1)
    at_zero = survive & (reduced <= rmin[:, None] + tol * 1e-6)
    base = np.argmin(np.where(at_zero, C, np.inf), axis=1)
    diff = np.where(survive, C - C[rows, base][:, None], 0.0)
    if not np.all(np.isfinite(diff)) or np.any(diff != np.round(diff)) or np.abs(diff).max() > 2 ** 52:
        return None
    steps = np.abs(diff[diff != 0]).astype(np.int64)
    step = int(np.gcd.reduce(steps)) if steps.size else 1
    units_dc = (diff / step).astype(np.int64)
    base_cost = math.fsum(C[rows, base])
    room = capacity - base_cost
    if room < 0:
        return None
    top = int(math.floor(room / step))                         # the final net change is <= top
    bottom = top - int(math.floor((delta - tol) / (lam * step)))  # ... and >= bottom to improve
    up = np.where(survive, units_dc, 0).max(axis=1)
    down = np.where(survive, units_dc, 0).min(axis=1)
    up_suffix = np.r_[np.cumsum(up[::-1])[::-1], 0]
    down_suffix = np.r_[np.cumsum(down[::-1])[::-1], 0]
    # window of the partial sum after d units: [bottom - up_suffix[d], top - down_suffix[d]]
    widths = (top - down_suffix) - (bottom - up_suffix) + 1
    if widths.max() <= 0 or int(np.minimum(widths, np.cumsum(np.r_[0, up - down]) + 1).sum()) * m > max_cells:
        return None
    choices = [np.flatnonzero(survive[i]) for i in range(k)]
    value = np.array([0.0])
    low = high = 0  # the window of `value`
    back = []
    for d in range(k):
        js = choices[d]
        dcs = units_dc[d, js]
        dvs = V[d, js] - V[d, base[d]]
        new_low = max(low + int(dcs.min()), bottom - int(up_suffix[d + 1]))
        new_high = min(high + int(dcs.max()), top - int(down_suffix[d + 1]))
        if new_high < new_low:
            return (None,)  # no assignment reaches the window: nothing improves
        new = np.full(new_high - new_low + 1, np.inf)
        pick = np.full(new.size, -1, dtype=np.int16)
        for j, dc, dv in zip(js.tolist(), dcs.tolist(), dvs.tolist()):
            src_low, src_high = max(low, new_low - dc), min(high, new_high - dc)
            if src_high < src_low:
                continue
            src = value[src_low - low:src_high - low + 1] + dv
            dst = slice(src_low + dc - new_low, src_high + dc - new_low + 1)
            better = src < new[dst]
            new[dst] = np.where(better, src, new[dst])
            pick[dst] = np.where(better, j, pick[dst])
        back.append((new_low, pick))
        value, low, high = new, new_low, new_high
    lo, hi = max(low, bottom), min(high, top)
    if hi < lo:
        return (None,)
    window = value[lo - low:hi - low + 1]
    if not np.isfinite(window).any():
        return (None,)
    x = lo + int(np.argmin(window))
    chosen = np.empty(k, dtype=int)
    for d in range(k - 1, -1, -1):
        offset, pick = back[d]
        j = int(pick[x - offset])
        chosen[d] = j
        x -= int(units_dc[d, j])
    return (chosen,)


def _branch_and_bound(C, V, reduced, survive, capacity, lam, *, target, delta, tol, max_nodes):
    """Exact search over the core units, as sets of deviations from the Lagrangian choice.

    Every core unit starts at its *base* choice (reduced cost 0, the cheapest such); a
    solution is a set of *deviations* (unit, other surviving choice), each with its
    reduced cost ``r``.  For a solution, ``objective - L = sum(r) + lam * slack``, so only
    deviation sets with ``sum(r) < delta`` can improve on the incumbent.  Units are sorted
    by their smallest deviation, so a search node extends its set only with units whose
    smallest deviation still fits, and each node is also a complete solution (the other
    units at base), checked in O(1).  Nodes are pruned by that bound, by ``lam`` times the
    slack that the remaining units cannot fill, and by capacity.

    Returns (best choices or None, best value, nodes, complete): the best assignment of
    value < ``target`` within ``capacity``, or None when the search proved there is none.
    """
    k, m = C.shape
    if k == 0:
        return None, math.inf, 0, True
    cols = np.arange(m)
    rows = np.arange(k)
    rmin = np.min(np.where(survive, reduced, np.inf), axis=1)
    at_zero = survive & (reduced <= rmin[:, None] + tol * 1e-6)
    base = np.argmin(np.where(at_zero, C, np.inf), axis=1)
    is_dev = survive & (cols[None, :] != base[:, None])
    dev_order = np.argsort(np.where(is_dev, reduced, np.inf), axis=1, kind="stable")
    counts = is_dev.sum(axis=1)
    dev_r = np.take_along_axis(np.where(is_dev, reduced, np.inf), dev_order, axis=1)
    dev_dc = np.take_along_axis(C - C[rows, base][:, None], dev_order, axis=1)
    dev_dv = np.take_along_axis(V - V[rows, base][:, None], dev_order, axis=1)
    mindev = np.where(counts > 0, dev_r[:, 0], np.inf)
    unit_order = np.argsort(mindev, kind="stable")
    dev_order, counts, dev_r, dev_dc, dev_dv, mindev = (a[unit_order] for a in (dev_order, counts, dev_r, dev_dc,
                                                                                  dev_dv, mindev))
    valid_dc = np.where(cols[None, :] < counts[:, None], dev_dc, 0.0)
    neg = np.minimum(valid_dc.min(axis=1), 0.0)
    pos = np.maximum(valid_dc.max(axis=1), 0.0)
    neg_suffix = np.r_[np.cumsum(neg[::-1])[::-1], 0.0].tolist()  # most cost units > u can shed
    pos_suffix = np.r_[np.cumsum(pos[::-1])[::-1], 0.0].tolist()  # most cost units > u can add
    counts_l = counts.tolist()
    devs = list(zip(dev_order.tolist(), dev_r.tolist(), dev_dc.tolist(), dev_dv.tolist()))
    devs = [(o[:c], r[:c], dc[:c], dv[:c]) for (o, r, dc, dv), c in zip(devs, counts_l)]
    # Bounds on completing a node whose slack is S (capacity left with the other units at
    # base), from the LP over every deviation of the core (a superset of those still open,
    # so the bounds stay valid): filling S upward costs at least fill(S) in sum(r) + lam *
    # slack; freeing F = -S downward costs at least free(F) in sum(r).
    flat_r, flat_dc = dev_r[valid_dc != 0], dev_dc[valid_dc != 0]
    upward = flat_dc > 0
    up_ratio = flat_r[upward] / flat_dc[upward]
    keep_up = up_ratio < lam
    up_order = np.argsort(up_ratio[keep_up], kind="stable")
    up_dc = flat_dc[upward][keep_up][up_order]
    up_gain = (lam - up_ratio[keep_up][up_order]) * up_dc
    up_cum_dc = np.cumsum(up_dc).tolist()
    up_cum_gain = np.cumsum(up_gain).tolist()
    up_rate = (lam - up_ratio[keep_up][up_order]).tolist()
    down = flat_dc < 0
    down_freed = -flat_dc[down]
    down_ratio = flat_r[down] / down_freed
    down_order = np.argsort(down_ratio, kind="stable")
    down_cum_freed = np.cumsum(down_freed[down_order]).tolist()
    down_cum_r = np.cumsum(flat_r[down][down_order]).tolist()
    down_rate = down_ratio[down_order].tolist()

    def completion_bound(slack: float) -> float:
        """Least sum(r) + lam * slack any completion can add, given the node's slack."""
        if slack >= 0:
            i = bisect.bisect_left(up_cum_dc, slack)
            if i == len(up_cum_dc):
                gained = up_cum_gain[-1] if up_cum_gain else 0.0
            else:
                before_dc = up_cum_dc[i - 1] if i else 0.0
                before_gain = up_cum_gain[i - 1] if i else 0.0
                gained = before_gain + (slack - before_dc) * up_rate[i]
            return max(0.0, lam * slack - gained)
        need = -slack
        i = bisect.bisect_left(down_cum_freed, need)
        if i == len(down_cum_freed):
            return math.inf
        before_freed = down_cum_freed[i - 1] if i else 0.0
        before_r = down_cum_r[i - 1] if i else 0.0
        return before_r + (need - before_freed) * down_rate[i]

    mindev = mindev.tolist()
    base_cost = math.fsum(C[rows, base])
    base_value = math.fsum(V[rows, base])

    best_value = target
    best_set = None
    limit = delta - tol  # an improving solution has sum(r) + lam * slack < limit
    nodes = 0
    complete = True
    path: list[tuple[int, int]] = []
    # a frame: [next unit, next deviation of that unit, rho, added cost, added value]
    stack = [[0, 0, 0.0, 0.0, 0.0]]
    cost = base_cost
    if cost <= capacity and base_value < best_value:
        best_value, best_set = base_value - tol, []
        limit = min(limit, lam * (capacity - cost) - tol)
    while stack:
        frame = stack[-1]
        u, t, rho, d_cost, d_value = frame
        child = None
        while u < k and nodes <= max_nodes:
            if rho + mindev[u] >= limit:
                u = k  # units are sorted by their smallest deviation: none further fits
                break
            others, rs, dcs, dvs = devs[u]
            while t < len(others):
                r = rho + rs[t]
                if r >= limit:
                    t = len(others)
                    break
                c = d_cost + dcs[t]
                t += 1
                nodes += 1  # a node: one candidate set examined (kept or pruned)
                if base_cost + c + neg_suffix[u + 1] > capacity:
                    continue
                slack_lb = capacity - (base_cost + c + pos_suffix[u + 1])
                if slack_lb > 0 and r + lam * slack_lb >= limit:
                    continue
                if r + completion_bound(capacity - base_cost - c) >= limit:
                    continue
                child = (u, t - 1, r, c, d_value + dvs[t - 1])
                break
            if child is not None:
                break
            u, t = u + 1, 0
        frame[0], frame[1] = u, t
        if nodes > max_nodes:
            complete = False
            break
        if child is None:
            stack.pop()
            if path:
                path.pop()
            continue
        cu, ct, r, c, v = child
        path.append((cu, ct))
        stack.append([cu + 1, 0, r, c, v])
        total_cost = base_cost + c
        if total_cost <= capacity:
            value = base_value + v
            if value < best_value:
                best_value, best_set = value - tol, list(path)
                limit = min(limit, r + lam * (capacity - total_cost) - tol)
    if best_set is None:
        return None, math.inf, nodes, complete
    chosen = base[unit_order].copy()
    for cu, ct in best_set:
        chosen[cu] = devs[cu][0][ct]
    out = np.empty(k, dtype=int)
    out[unit_order] = chosen
    return out, best_value + tol, nodes, complete
