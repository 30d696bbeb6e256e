"""Several budgets without a MIP: Lagrangian relaxation, primal repair, reduced-cost fixing.

The program of the ``ilp`` searcher with ``k`` separable budgets is a multiple-choice
knapsack with ``k`` constraints: every unit ``u`` takes one choice ``j`` with value
``values[u, j]`` (minimised) and costs ``costs[b][u, j]``; the costs of budget ``b`` add up
to at most ``capacities[b]``.  :func:`solve_lagrangian` solves it in three steps:

1. *Dual.*  Relaxing every budget with a multiplier ``lam[b] >= 0`` leaves one independent
   choice per unit::

       g(lam) = sum_u min_j (values[u, j] + lam . costs[:, u, j]) - lam . capacities

   and every ``g(lam)`` is a proven lower bound on the optimum (its maximum is the LP
   bound).  ``g`` is concave and piecewise linear; it is maximised through its smoothed
   form ``g_tau`` (the min over choices replaced by a soft-min at temperature ``tau``),
   whose gradient and Hessian (k x k) are sums over the units, by damped Newton steps
   from a high temperature down to a tiny one.  Each evaluation is one pass over the
   (units, choices) arrays, so a million units cost tens of milliseconds per step.
2. *Primal repair.*  The choices that attain the minima at the best multipliers almost fit:
   moves with the least value lost per unit of excess removed bring every budget within
   its capacity, then moves (one unit, or a pair: one unit up, another down to pay for
   it) that improve the value and keep every budget spend the slack.  Only the moves with
   the smallest reduced costs are candidates.  The result keeps every budget exactly.
3. *Reduced-cost fixing.*  With ``r[u, j] = values[u, j] + lam . costs[:, u, j] - min_j(..)``
   every feasible solution has ``value >= g(lam) + sum_u r[u, x_u]``, so a solution better
   than the incumbent uses only choices with ``r < incumbent - g(lam)``: :func:`core`
   keeps those, and a small MIP over them (``bitsearch.solvers.ilp``) closes what gap is
   left, when the requested tolerance asks for it.

numpy only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["LagrangianSolution", "JointlyInfeasible", "RepairFailed", "solve_lagrangian", "core", "dual_value"]


class JointlyInfeasible(ValueError):
    """No choice per unit meets every capacity at once (the dual is unbounded)."""


class RepairFailed(RuntimeError):
    """The primal repair found no choice within every capacity.  Not a proof that none
    exists: a feasible policy may lie beyond the candidate moves (the caller solves the
    exact program instead)."""


@dataclass(frozen=True)
class LagrangianSolution:
    """``choice[u]`` indexes the columns of the input; ``costs[b]`` is the solution's cost
    for budget ``b``; ``bound`` a proven lower bound on the optimum; ``multipliers`` the
    (unscaled) Lagrange multipliers of the best bound; ``binding[b]``: the budget has a
    positive multiplier (removing it would lower the bound)."""

    choice: np.ndarray
    objective: float
    costs: tuple
    bound: float
    gap: float
    multipliers: tuple
    binding: tuple
    evaluations: int
    seconds: float

    def summary(self) -> dict:
        return {"objective": self.objective, "bound": self.bound, "gap": self.gap,
                "multipliers": list(self.multipliers), "binding": list(self.binding),
                "evaluations": self.evaluations, "seconds": round(self.seconds, 4)}


def _relative(gap_abs: float, objective: float) -> float:
    return max(0.0, gap_abs) / max(abs(objective), 1e-300)


class _Arrays:
    """The scaled problem: values and costs over (units, choices), capacities 1-ish."""

    def __init__(self, values, costs, capacities):
        V = np.asarray(values, dtype=float)
        self.n, self.m = V.shape
        self.k = len(costs)
        valid = np.isfinite(V)
        Cs = []
        for c in costs:
            c = np.asarray(c, dtype=float)
            if c.shape != V.shape:
                raise ValueError(f"values and costs must have one shape (got {V.shape} and {c.shape})")
            valid &= np.isfinite(c)
            Cs.append(c)
        if self.n and not valid.any(axis=1).all():
            raise ValueError(f"unit {int(np.flatnonzero(~valid.any(axis=1))[0])} has no available choice")
        self.valid = valid
        self.V = np.where(valid, V, np.inf)
        self.C = [np.where(valid, c, 0.0) for c in Cs]
        self.caps = np.array([float(c) for c in capacities])
        # scales: a value of order one per budget and for the objective
        low = [np.where(valid, c, np.inf).min(axis=1) for c in self.C]
        high = [np.where(valid, c, -np.inf).max(axis=1) for c in self.C]
        self.cost_low = np.array([math.fsum(x) for x in low])
        spread = np.array([math.fsum(h - lo) for h, lo in zip(high, low)])
        self.cost_scale = np.maximum(np.maximum(spread, np.abs(self.caps - self.cost_low)), 1e-300)
        vmin = np.where(valid, self.V, np.inf).min(axis=1)
        vmax = np.where(valid, self.V, -np.inf).max(axis=1)
        self.value_scale = max(math.fsum(vmax - vmin), abs(math.fsum(vmin)), 1e-300)
        self.value_high = math.fsum(vmax)

    def reduced(self, lam):
        """values + lam . costs (unscaled multipliers)."""
        A = self.V.copy()
        for b in range(self.k):
            if lam[b]:
                A += lam[b] * self.C[b]
        return A


def dual_value(arrays: _Arrays, lam, A=None):
    """g(lam), the minimising choice of every unit, and the minima."""
    if A is None:
        A = arrays.reduced(lam)
    choice = np.argmin(A, axis=1)
    minima = A[np.arange(arrays.n), choice]
    value = math.fsum(minima) - float(np.dot(lam, arrays.caps))
    return value, choice, minima


def _evaluate(arrays: _Arrays, lam, tau, *, derivatives: bool = True):
    """At multipliers ``lam``: g_tau (smoothed dual), its gradient and Hessian (k x k), and
    the plain dual g.  The soft-min weights below exp(-40) are dropped (exactly zero, and no
    subnormal numbers, which would slow every pass many times), so after the dense passes
    for the minima the sums run over the few entries near each unit's minimum."""
    A = arrays.reduced(lam)
    minima = A.min(axis=1)
    z = A
    z -= minima[:, None]
    z /= tau
    near = np.flatnonzero(z.ravel() < 40.0)
    unit = near // arrays.m
    weight = np.exp(-z.ravel()[near])
    Z = np.bincount(unit, weights=weight, minlength=arrays.n)
    lam_caps = float(np.dot(lam, arrays.caps))
    value = float(np.sum(minima - tau * np.log(Z))) - lam_caps   # compared step to step: pairwise sums do
    plain = float(np.sum(minima)) - lam_caps                      # (the bound reported is an exact sum)
    if not derivatives:
        return value, None, None, plain
    p = weight / Z[unit]
    k = arrays.k
    c = np.stack([arrays.C[b].ravel()[near] for b in range(k)], axis=1)   # (entries, k)
    mean = np.stack([np.bincount(unit, weights=p * c[:, b], minlength=arrays.n) for b in range(k)], axis=1)
    grad = mean.sum(axis=0) - arrays.caps
    # Cov within each unit: E[c c^T] - E[c] E[c]^T, summed over the units
    second = (c * p[:, None]).T @ c
    hess = -(second - mean.T @ mean) / tau
    return value, grad, hess, plain


def _maximise_dual(arrays: _Arrays, *, target: float = 1e-4, deadline: float | None = None,
                   max_stages: int = 12, max_steps: int = 25):
    """Damped projected Newton on g_tau over a falling temperature; returns the best
    multipliers (by the true g), their value and the number of evaluations."""
    k = arrays.k
    # in scaled units (cost / cost_scale, value / value_scale) the multipliers are O(1)
    to_scaled = arrays.cost_scale / arrays.value_scale
    lam = np.zeros(k)
    best_lam, best_value = lam.copy(), -math.inf
    evaluations = 0
    spread = (np.where(arrays.valid, arrays.V, -np.inf).max(axis=1)
              - np.where(arrays.valid, arrays.V, np.inf).min(axis=1))
    spread = spread[np.isfinite(spread) & (spread > 0)]
    typical = float(np.median(spread)) if spread.size else 1.0
    tau = typical * 0.3
    current = _evaluate(arrays, lam, tau)
    evaluations += 1
    stage_best = -math.inf
    for stage in range(max_stages):
        for _ in range(max_steps):
            value, grad, hess, plain = current
            if plain > best_value:
                best_value, best_lam = plain, lam.copy()
            if plain > arrays.value_high + abs(arrays.value_high) * 1e-9 + 1e-300:
                raise JointlyInfeasible("the budgets cannot be met together")
            free = (lam > 0) | (grad > 0)  # a multiplier at zero whose budget has slack stays there
            if not free.any():
                break
            scale = to_scaled[free]
            gs = grad[free] / scale
            Hs = hess[np.ix_(free, free)] / np.outer(scale, scale)
            ridge = 1e-12 * max(1.0, float(np.abs(Hs).max()))
            try:
                step_s = np.linalg.solve(Hs - ridge * np.eye(gs.size), -gs)
            except np.linalg.LinAlgError:
                step_s = gs
            if not np.all(np.isfinite(step_s)) or float(np.dot(step_s, gs)) <= 0:
                step_s = gs / max(1.0, float(np.abs(Hs).max()))  # not an ascent direction: a gradient step
            decrement = float(np.dot(step_s, gs))
            if decrement <= tau * 1e-3:
                break
            direction = np.zeros(k)
            direction[free] = step_s / scale
            t, accepted = 1.0, None
            for _ in range(40):
                trial = np.maximum(lam + t * direction, 0.0)
                result = _evaluate(arrays, trial, tau)
                evaluations += 1
                if result[0] >= value + 1e-4 * float(np.dot(grad, trial - lam)):
                    accepted = result
                    break
                t *= 0.5
            if accepted is None:
                break
            lam, current = trial, accepted
            if deadline is not None and time.perf_counter() > deadline:
                break
        if current[3] > best_value:
            best_value, best_lam = current[3], lam.copy()
        if deadline is not None and time.perf_counter() > deadline:
            break
        # stop when a stage no longer moves the true bound
        if stage >= 2 and best_value - stage_best <= 1e-3 * target * max(abs(best_value), 1e-300):
            break
        stage_best = best_value
        tau *= 0.1
        current = _evaluate(arrays, lam, tau)
        evaluations += 1
    return best_lam, best_value, evaluations


def _repair(arrays: _Arrays, A, choice, lam, *, candidates: int = 20_000, rounds: int = 2_000):
    """A feasible, locally improved choice near ``choice`` (the minimisers of ``A``), or
    None when the candidate moves cannot make it feasible."""
    n, m, k = arrays.n, arrays.m, arrays.k
    rows = np.arange(n)
    x = choice.copy()
    total = np.array([math.fsum(c[rows, x]) for c in arrays.C])
    caps = arrays.caps
    scale = arrays.cost_scale
    # candidate moves: the smallest reduced costs away from the current choice
    R = A - A[rows, x][:, None]
    R[rows, x] = np.inf
    R[~arrays.valid] = np.inf
    flat = R.ravel()
    count = min(candidates, int(np.isfinite(flat).sum()))
    if count == 0:
        return x if np.all(total <= caps) else None
    pick = np.argpartition(flat, count - 1)[:count] if count < flat.size else np.arange(flat.size)
    pick = pick[np.isfinite(flat[pick])]
    cu, cj = np.divmod(pick, m)
    # per candidate: the change of value and costs if applied to the current choice
    def deltas():
        dv = arrays.V[cu, cj] - arrays.V[cu, x[cu]]
        dc = np.stack([c[cu, cj] - c[cu, x[cu]] for c in arrays.C], axis=1)
        return dv, dc

    dv, dc = deltas()
    # the price of a unit of each budget: the multiplier, or (for a budget that does not bind
    # at these multipliers) a small price that still counts it
    price = np.maximum(np.asarray(lam, dtype=float), 1e-9 * arrays.value_scale / scale)

    def apply(index):
        u, j = int(cu[index]), int(cj[index])
        total[:] += dc[index]
        x[u] = j
        same = cu == u
        dv[same] = arrays.V[u, cj[same]] - arrays.V[u, j]
        dc[same] = np.stack([c[u, cj[same]] - c[u, j] for c in arrays.C], axis=1)

    for _ in range(rounds):  # 1. feasibility: remove the excess at the least loss per unit removed
        over = total - caps
        if np.all(over <= 0):
            break
        relief = (np.minimum(-dc, np.maximum(over, 0.0)[None, :]) * np.where(over > 0, price, 0.0)[None, :]).sum(axis=1)
        harm = (np.maximum(dc, 0.0) * np.where(over > 0, 0.0, price)[None, :]).sum(axis=1)
        useful = (relief > 0) & (cj != x[cu])
        if not useful.any():
            return None
        score = np.where(useful, (dv + harm) / np.where(useful, relief, 1.0), np.inf)
        apply(int(np.argmin(score)))
    else:
        return None
    if not np.all(total <= caps):
        return None
    for _ in range(rounds):  # 2. spend the slack: free gains, then the best gain per price of room used
        residual = caps - total
        fits = np.all(dc <= residual[None, :], axis=1) & (dv < 0) & (cj != x[cu])
        if fits.any():
            used = (np.maximum(dc, 0.0) * price[None, :]).sum(axis=1)
            score = np.where(fits, -dv / (used + 1e-300), -np.inf)
            apply(int(np.argmax(score)))
            continue
        pair = _best_pair(dv, dc, cu, cj, x, residual)
        if pair is None:
            break
        (u, j), (u2, j2) = pair
        first = int(np.flatnonzero((cu == u) & (cj == j))[0])
        apply(first)
        second = int(np.flatnonzero((cu == u2) & (cj == j2))[0])
        apply(second)
    # the exact totals (the running sums may drift by rounding)
    total = np.array([math.fsum(c[rows, x]) for c in arrays.C])
    if not np.all(total <= caps):
        return None
    return x


def _best_pair(dv, dc, cu, cj, x, residual, *, ups: int = 64):
    """The pair of moves on two units (one improving but too dear alone, one that frees
    what it lacks) with the best total change of value, or None."""
    active = cj != x[cu]
    up = np.flatnonzero(active & (dv < 0) & ~np.all(dc <= residual[None, :], axis=1))
    if up.size == 0:
        return None
    up = up[np.argsort(dv[up], kind="stable")[:ups]]
    down = np.flatnonzero(active & np.any(dc < 0, axis=1))
    if down.size == 0:
        return None
    best, best_gain = None, 0.0
    for a in up.tolist():
        need = residual - dc[a]  # the second move must cost at most this on every budget
        ok = np.all(dc[down] <= need[None, :], axis=1) & (cu[down] != cu[a])
        if not ok.any():
            continue
        cand = down[ok]
        gain = dv[a] + dv[cand]
        i = int(np.argmin(gain))
        if gain[i] < best_gain - 1e-15 * abs(dv[a]):
            best_gain = float(gain[i])
            best = ((int(cu[a]), int(cj[a])), (int(cu[cand[i]]), int(cj[cand[i]])))
    return best


def solve_lagrangian(values, costs, capacities, *, gap: float = 1e-4, time_limit: float | None = None,
                     candidates: int = 20_000) -> LagrangianSolution:
    """Minimise ``sum_u values[u, x_u]`` subject to ``sum_u costs[b][u, x_u] <= capacities[b]``
    for every budget ``b``; see the module docstring.

    Returns the repaired policy with the best proven bound found; the gap may exceed
    ``gap`` (close it with :func:`core`).  Raises :class:`JointlyInfeasible` when the
    dual proves that no policy meets every budget, :class:`RepairFailed` when the repair
    finds none without a proof that none exists, and ``ValueError`` on malformed input.
    """
    started = time.perf_counter()
    arrays = _Arrays(values, costs, capacities)
    n = arrays.n
    if n == 0:
        if np.any(arrays.caps < 0):
            raise JointlyInfeasible("no units and a negative capacity")
        k = arrays.k
        return LagrangianSolution(np.zeros(0, dtype=int), 0.0, (0.0,) * k, 0.0, 0.0, (0.0,) * k, (False,) * k, 0,
                                  time.perf_counter() - started)
    deadline = None if time_limit is None else started + time_limit
    lam, _, evaluations = _maximise_dual(arrays, target=max(gap, 1e-9), deadline=deadline)
    A = arrays.reduced(lam)
    bound, choice, _ = dual_value(arrays, lam, A)
    x = _repair(arrays, A, choice, lam, candidates=candidates)
    if x is None:  # far from feasible at these multipliers: a wider search from the cheapest side
        x = _repair(arrays, A, choice, lam, candidates=min(arrays.valid.size, 50 * candidates))
    if x is None:
        raise RepairFailed("the Lagrangian repair found no policy within every budget")
    rows = np.arange(n)
    objective = math.fsum(arrays.V[rows, x])
    totals = tuple(math.fsum(c[rows, x]) for c in arrays.C)
    bound = min(bound, objective)
    binding = tuple(bool(v > 0) for v in lam)
    return LagrangianSolution(x, objective, totals, bound, _relative(objective - bound, objective),
                              tuple(float(v) for v in lam), binding, evaluations, time.perf_counter() - started)


@dataclass(frozen=True)
class Core:
    """The units and choices a better solution may use (reduced-cost fixing).

    ``units``: the core's units; ``allowed``: (core units, choices) bool; ``fixed``: the
    choice of every other unit; ``fixed_value``/``fixed_costs``: what those contribute."""

    units: np.ndarray
    allowed: np.ndarray
    fixed: np.ndarray
    fixed_value: float
    fixed_costs: tuple


def core(values, costs, multipliers, incumbent, upper: float, lower: float, *, tol: float = 0.0) -> Core:
    """The reduced-cost-fixed core: every solution with value below ``upper - tol`` takes,
    in each unit, a choice with reduced cost under ``upper - lower`` (``lower`` is the dual
    value at ``multipliers``); units with a single such choice are fixed to it."""
    V = np.asarray(values, dtype=float)
    n, m = V.shape
    valid = np.isfinite(V)
    A = V.copy()
    for lam, c in zip(multipliers, costs):
        c = np.asarray(c, dtype=float)
        valid &= np.isfinite(c)
        if lam:
            A = A + lam * c
    A = np.where(valid, A, np.inf)
    reduced = A - A.min(axis=1)[:, None]
    delta = upper - lower - tol
    survive = valid & (reduced < delta + 1e-12 * (abs(upper) + abs(lower)))
    rows = np.arange(n)
    survive[rows, incumbent] = True  # the incumbent stays a solution of the core
    counts = survive.sum(axis=1)
    units = np.flatnonzero(counts >= 2)
    fixed = np.asarray(incumbent).copy()
    single = counts == 1
    fixed[single] = np.argmax(survive[single], axis=1)
    others = np.flatnonzero(counts < 2)
    fixed_value = math.fsum(V[others, fixed[others]])
    fixed_costs = tuple(math.fsum(np.asarray(c, dtype=float)[others, fixed[others]]) for c in costs)
    return Core(units, survive[units], fixed, fixed_value, fixed_costs)
