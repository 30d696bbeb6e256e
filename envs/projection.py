"""Budget projection: the closest policy to what the agent asked for that keeps every budget.

The agent asks for a width position per decision unit (a continuous value; a discrete
choice is the centre of its bin).  When the requested policy is over a budget, the
env does not cut widths layer after layer as HAQ does (that punishes the layers it
happens to visit first); it solves

    minimise   sum_u (x_u - (j_u + 1/2))^2            (intent lost, in width steps)
    subject to base_b + sum_u C_b[u, j_u] <= limit_b  for every budget b

where ``x_u`` is unit u's requested position in index units (``[0, n]``) and
``C_b[u, j]`` its cost at width index j.  Only widths change; the quadratic loss spreads
a necessary cut over many units in proportion to the cost each one saves, instead of
sending a few units to the narrowest width.

Method (a multiple-choice knapsack, solved the standard way):

1. Lagrangian relaxation: for a multiplier ``mu`` every unit independently takes
   ``argmin_j (x_u - j - 1/2)^2 + mu * c_u(j)`` where ``c`` is the sum of the costs of
   the violated budgets, each divided by its limit.  The widths fall monotonically as
   ``mu`` grows; a geometric bisection finds the smallest feasible ``mu``.
2. Repair: between the last infeasible and the first feasible solution, the units that
   differ move from the former to the latter in order of least intent lost per cost
   saved, until every budget is met (so the cut stops at the right unit, not at the
   next multiplier).
3. Refill: slack left by the last move is handed back, one width step at a time, to
   units below their request, most intent regained per cost first.
4. Swap search (up to :data:`SWAP_SEARCH_UNITS` units, i.e. layer granularity, where a
   few coarse units leave a visible Lagrangian gap): raise one unit towards its request
   and pay for it by lowering one other unit, whenever that loses less intent; repeat
   until no such swap helps.

The result meets every budget under the planning costs (per-unit arrays from
:func:`bitsearch.cost.unit_tables`); the walk then checks it against the reference
cost models and, if a non-separable model (a measured latency table at kernel
granularity, where a layer pays its widest kernel) disagrees, lowers further with a
larger multiplier until the reference says it fits.
"""

from __future__ import annotations

import numpy as np

_TINY = 1e-300
# below this many units (layer granularity), a swap search closes most of the small
# Lagrangian gap that coarse per-layer costs leave; kernel-wise units are fine-grained
SWAP_SEARCH_UNITS = 512


def intent_loss(x: np.ndarray, n_choices: int) -> np.ndarray:
    """``(n_units, n_choices)`` squared distance between request and each width index."""
    centres = np.arange(n_choices, dtype=float) + 0.5
    return (x[:, None] - centres[None, :]) ** 2


def planned_costs(costs: np.ndarray, base: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-budget planning cost of width indices ``idx``: ``costs`` is ``(nb, n, nw)``."""
    if costs.shape[1] == 0:
        return base.copy()
    rows = np.arange(costs.shape[1])
    return base + costs[:, rows, idx].sum(axis=1)


def fits(total: np.ndarray, limits: np.ndarray) -> bool:
    return bool(np.all(total <= limits))


class Projection:
    """Result of :func:`project`: width indices, whether anything changed, the intent lost."""

    __slots__ = ("idx", "changed", "intent_lost", "multiplier")

    def __init__(self, idx, changed, intent_lost, multiplier):
        self.idx = idx
        self.changed = changed
        self.intent_lost = intent_lost
        self.multiplier = multiplier


def project(x: np.ndarray, costs: np.ndarray, base: np.ndarray, limits: np.ndarray,
            *, min_multiplier: float = 0.0) -> Projection:
    """Project requested positions ``x`` (index units, ``[0, nw]``) onto the budgets.

    ``costs``: ``(nb, n_units, nw)`` planning costs (activations already fixed);
    ``base``: ``(nb,)`` cost of what is not decided here (pinned layers);
    ``limits``: ``(nb,)``.  ``min_multiplier`` forces at least that multiplier (used by
    the env's fallback when the reference cost models disagree with the plan).
    Raises ``ValueError`` when even the cheapest widths are over a budget.
    """
    n_budgets, n_units, nw = costs.shape
    x = np.clip(np.asarray(x, dtype=float), 0.0, float(nw))
    request = np.minimum(x.astype(int), nw - 1)
    loss = intent_loss(x, nw)
    rows = np.arange(n_units)
    total = planned_costs(costs, base, request)
    if fits(total, limits) and min_multiplier <= 0:
        return Projection(request, False, 0.0, 0.0)
    if n_units == 0:
        raise ValueError("the fixed part of the policy is already over a budget")

    violated = total > limits
    weights = np.where(violated, 1.0, 0.0)
    if not violated.any():
        weights[:] = 1.0
    scaled = costs / np.maximum(limits, _TINY)[:, None, None]

    def solve(weights_):
        combined = np.tensordot(weights_, scaled, axes=1)  # (n, nw)

        def at(mu):
            return np.argmin(loss + mu * combined, axis=1)

        return combined, at

    combined, at = solve(weights)
    cheapest = np.argmin(combined + 1e-12 * loss, axis=1)
    if not fits(planned_costs(costs, base, cheapest), limits):
        # a lowering that serves one budget raised another (non-monotone costs): weigh all
        weights[:] = 1.0
        combined, at = solve(weights)
        cheapest = np.argmin(combined + 1e-12 * loss, axis=1)
        if not fits(planned_costs(costs, base, cheapest), limits):
            raise ValueError("no choice of weight widths meets every budget with these activation widths")

    # scale of the multiplier: intent (width steps^2) against normalised cost per unit
    spread = np.ptp(combined, axis=1)
    typical = float(np.median(spread[spread > 0])) if np.any(spread > 0) else 1.0
    mu_hi = max(min_multiplier, 1.0 / max(typical, _TINY))
    for _ in range(200):
        idx_hi = at(mu_hi)
        if fits(planned_costs(costs, base, idx_hi), limits):
            break
        mu_hi *= 4.0
    else:
        idx_hi, mu_hi = cheapest, float("inf")
    mu_lo = min_multiplier
    if mu_lo <= 0:
        mu_lo = mu_hi
        for _ in range(200):
            mu_lo /= 4.0
            if not fits(planned_costs(costs, base, at(mu_lo)), limits):
                break
            mu_hi, idx_hi = mu_lo, at(mu_lo)
        else:
            mu_lo = 0.0
    idx_lo = at(mu_lo) if mu_lo > 0 else request
    if fits(planned_costs(costs, base, idx_lo), limits):  # min_multiplier already feasible
        return Projection(idx_lo, True, float((loss[rows, idx_lo] - loss[rows, request]).sum()), mu_lo)
    if np.isfinite(mu_hi) and mu_lo > 0:
        for _ in range(48):
            mid = np.sqrt(mu_lo * mu_hi)
            idx_mid = at(mid)
            if fits(planned_costs(costs, base, idx_mid), limits):
                mu_hi, idx_hi = mid, idx_mid
            else:
                mu_lo, idx_lo = mid, idx_mid
            if mu_hi / mu_lo < 1.0 + 1e-9:
                break

    idx = _repair(idx_lo, idx_hi, loss, costs, combined, base, limits)
    idx = _refill(idx, request, loss, costs, combined, base, limits)
    if n_units <= SWAP_SEARCH_UNITS:
        idx = _swap_search(idx, request, loss, costs, base, limits)
    lost = float((loss[rows, idx] - loss[rows, request]).sum())
    return Projection(idx, True, lost, mu_hi)


def _repair(idx_lo, idx_hi, loss, costs, combined, base, limits):
    """Move units from the infeasible to the feasible solution, cheapest intent first."""
    moved = np.flatnonzero(idx_lo != idx_hi)
    if moved.size == 0:
        return idx_hi
    d_loss = loss[moved, idx_hi[moved]] - loss[moved, idx_lo[moved]]
    d_comb = combined[moved, idx_lo[moved]] - combined[moved, idx_hi[moved]]  # saved (>0 normally)
    ratio = np.where(d_comb > 0, d_loss / np.maximum(d_comb, _TINY), np.inf)
    order = moved[np.lexsort((moved, ratio))]
    delta = costs[:, order, idx_hi[order]] - costs[:, order, idx_lo[order]]  # (nb, m)
    running = planned_costs(costs, base, idx_lo)[:, None] + np.cumsum(delta, axis=1)
    ok = np.all(running <= limits[:, None], axis=0)
    first = int(np.argmax(ok)) if ok.any() else order.size - 1
    idx = idx_lo.copy()
    take = order[:first + 1]
    idx[take] = idx_hi[take]
    if not fits(planned_costs(costs, base, idx), limits):
        return idx_hi
    return idx


def _refill(idx, request, loss, costs, combined, base, limits):
    """Give slack back: raise units below their request one step, best gain per cost first."""
    total = planned_costs(costs, base, idx)
    slack = limits - total
    below = np.flatnonzero(idx < request)
    if below.size == 0 or np.any(slack < 0):
        return idx
    up = idx[below] + 1
    delta = costs[:, below, up] - costs[:, below, idx[below]]  # (nb, m)
    cand = np.all(delta <= slack[:, None], axis=0)
    if not cand.any():
        return idx
    below, up, delta = below[cand], up[cand], delta[:, cand]
    gain = loss[below, idx[below]] - loss[below, up]
    d_comb = combined[below, up] - combined[below, idx[below]]
    ratio = gain / np.maximum(d_comb, _TINY)
    order = np.lexsort((below, -ratio))
    idx = idx.copy()
    slack = slack.copy()
    for k in order:
        need = delta[:, k]
        if np.all(need <= slack):
            idx[below[k]] = up[k]
            slack -= need
    return idx


def _swap_search(idx, request, loss, costs, base, limits, max_passes: int = 50):
    """Raise one unit (towards its request) and lower one other to pay, while it helps."""
    n_budgets, n_units, nw = costs.shape
    idx = idx.copy()
    rows = np.arange(n_units)
    levels = np.arange(nw)
    for _ in range(max_passes):
        slack = limits - planned_costs(costs, base, idx)
        current = costs[:, rows, idx]                       # (nb, n)
        saved = current[:, :, None] - costs                 # (nb, n, nw): freed by moving u to d
        extra = loss - loss[rows, idx][:, None]              # (n, nw): intent lost by moving u to d
        lower = levels[None, :] < idx[:, None]               # only lowering moves pay
        best_move = None
        best_net = -1e-12
        for v in np.flatnonzero(idx < request):
            for up in range(idx[v] + 1, request[v] + 1):
                gain = loss[v, idx[v]] - loss[v, up]
                if gain <= -best_net:
                    continue
                deficit = (costs[:, v, up] - current[:, v]) - slack  # (nb,)
                if np.all(deficit <= 0):
                    net = -gain
                    if net < best_net:
                        best_net, best_move = net, (v, up, None, None)
                    continue
                ok = lower & np.all(saved >= deficit[:, None, None], axis=0)
                ok[v] = False
                if not ok.any():
                    continue
                cand = np.where(ok, extra, np.inf)
                u, d = np.unravel_index(int(np.argmin(cand)), cand.shape)
                net = cand[u, d] - gain
                if net < best_net:
                    best_net, best_move = net, (v, up, u, d)
        if best_move is None:
            break
        v, up, u, d = best_move
        idx[v] = up
        if u is not None:
            idx[u] = d
    return idx
