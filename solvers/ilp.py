"""``ilp``: the widths that minimise the summed sensitivity under every budget, exactly.

HAWQ-V3 (Yao et al., ICML 2021) and BMPQ choose bit widths by an integer linear program:
one width per decision unit, the objective the sum of the units' estimated loss
increases (a :class:`~bitsearch.sensitivity.table.SensitivityTable`), every budget a
linear constraint.  This module builds that program from a
:class:`~bitsearch.problem.Problem` (costs come from ``bitsearch.cost`` only) and solves
it two ways:

* ``mckp``: one budget over separable costs is a multiple-choice knapsack, solved by
  :func:`bitsearch.solvers.mckp.solve_mckp` (hull greedy, reduced-cost fixing and a small
  exact search) in well under a second for 27k kernels;
* ``mip``: the general program in PuLP, solved by HiGHS (``solver="highs"``, through
  highspy) or CBC (``solver="cbc"``).  It covers several budgets, activations searched
  jointly with weights, tied groups, pins, and latency tables where a kernel-wise layer
  pays its widest kernel.

``method="auto"`` takes ``mckp`` when it applies (at most one budget; at kernel
granularity the budget's cost is a per-kernel sum and activations are not searched) and
the exact search closes the gap within ``mckp_gap``, and ``mip`` otherwise.

The formulation, for decision units ``u`` with choices ``q``::

    minimise    sum_u sum_q  s[u, q] x[u, q]
    subject to  sum_q x[u, q] = 1                       for every unit
                sum (cost terms of budget b) <= limit_b  for every budget

Layer granularity: a unit is a tied group of layers and a choice is a weight width, or a
(weight, activation) pair when activations are searched (the pair's cost is exact: BOPs
are not separable in w and a).  Kernel granularity: a unit is a kernel; activations, when
searched, are one-hot ``y[g, a]`` per tied group, and a layer's per-kernel-sum cost under
searched activations is linearised with ``z[l, j, a]`` = the number of its kernels at
width ``j`` when the layer's activations are at ``a`` (``sum_a z[l, j, a] = n[l, j]``,
``sum_j z[l, j, a] <= K_l y[g, a]``).  A cost that charges a layer its widest kernel
(``per_kernel = "max"``) gets one-hot ``m[l, j, a]`` (the layer's widest width is ``j``):
``n[l, j'] <= K_l sum_{j >= j'} m[l, j, .]`` and ``m[l, j, .] <= n[l, j]``, so ``j`` is
exactly the widest width in use.  Rows are shifted by their least possible value and
scaled to order one before they reach the solver.

Every solution is checked with ``CostModel.cost``.  A solver's feasibility tolerance may
let a budget slip by a hair; then the program is solved again with that budget tightened
by the excess, so the policy returned is within every budget exactly.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from bitsearch.budget import format_cost
from bitsearch.encoding import Encoding
from bitsearch.errors import (InfeasibleBudgetError, SearcherSettingsError, SearcherUnsupportedError,
                              SolverTimeoutError)
from bitsearch.policy import LayerBits, Policy
from bitsearch.search import BaseSearcher, SearchRun
from bitsearch.settings import SearcherSettings, setting

from .mckp import KnapsackInfeasible, solve_mckp
from .refine import refine_policy

SOLVERS = ("highs", "cbc")
METHODS = ("auto", "mckp", "mip")


# --- the formulation as arrays -------------------------------------------------------------
@dataclass
class _Block:
    """Cost or objective terms over a set of variables whose values sum to ``mass``."""

    var_keys: list
    coefs: np.ndarray
    mass: float


@dataclass
class Formulation:
    """The decision units, their objective and cost tables, for one Problem.

    ``weight_units`` has one entry per weight unit (``space.weight_units()`` order).  At
    layer granularity a unit's choices are ``len(weight_bits) * n_act`` (weight-major)
    where ``n_act`` is the number of activation choices when they are searched (else 1).
    """

    problem: object
    granularity: str
    act_searched: bool
    n_w: int
    n_a: int
    groups: tuple
    values: np.ndarray                      # (units, choices): the objective per unit and choice
    unit_layers: list                       # per unit: tuple of layer indices
    budget_limits: list                     # per budget: the limit less the pinned layers' cost
    pinned_costs: list
    kernel_slices: dict = field(default_factory=dict)  # layer index -> slice of kernel units
    act_values: np.ndarray | None = None     # (groups, n_a) at kernel granularity when searched
    unit_costs: list = field(default_factory=list)     # per budget: (units, choices) array or None

    @property
    def space(self):
        return self.problem.space

    @property
    def budgets(self):
        return self.problem.budgets


def _act_choices(space):
    return list(space.act_bits) if space.act_searched else [space.act_choices[0]]


def build_formulation(problem) -> Formulation:
    """Objective and cost tables from the problem's sensitivity table and cost models."""
    space = problem.space
    table = problem.sensitivity
    acts = _act_choices(space)
    n_w, n_a = len(space.weight_bits), len(acts)
    groups = space.groups()
    pins = space.pins
    pinned_costs, limits = [], []
    for budget in problem.budgets:
        model = problem.costs[budget.cost]
        pinned = math.fsum(model.policy_layer_cost(layer, LayerBits(pins[layer.name].weight_bits,
                                                                    pins[layer.name].act_bits))
                           for layer in space.layers if layer.name in pins)
        pinned_costs.append(pinned)
        limits.append(budget.limit - pinned)
    act_of_layer = {}
    if space.act_searched:
        for layer in space.layers:
            if layer.name not in pins:
                act_of_layer[layer.name] = table.act_table(space, layer)
    if space.granularity == "layer":
        values = np.zeros((len(groups), n_w * n_a))
        unit_costs = [np.zeros((len(groups), n_w * n_a)) for _ in problem.budgets]
        for u, group in enumerate(groups):
            for i in group:
                layer = space.layers[i]
                sw = table.unit_table(space, layer)[0]
                sa = act_of_layer[layer.name] if space.act_searched else np.zeros(1)
                values[u] += (sw[:, None] + sa[None, :]).ravel()
                for b, budget in enumerate(problem.budgets):
                    model = problem.costs[budget.cost]
                    unit_costs[b][u] += np.array([model.layer_cost(layer, w, a)
                                                  for w in space.weight_bits for a in acts])
        return Formulation(problem, "layer", space.act_searched, n_w, n_a, groups, values,
                           [g for g in groups], limits, pinned_costs, unit_costs=unit_costs)
    # kernel granularity
    rows, unit_layers, slices = [], [], {}
    start = 0
    for i in space.free_layers():
        layer = space.layers[i]
        rows.append(table.unit_table(space, layer))
        slices[i] = slice(start, start + layer.kernels)
        unit_layers.extend([(i,)] * layer.kernels)
        start += layer.kernels
    values = np.concatenate(rows, axis=0) if rows else np.zeros((0, n_w))
    act_values = None
    if space.act_searched:
        act_values = np.zeros((len(groups), n_a))
        for g, group in enumerate(groups):
            for i in group:
                act_values[g] += act_of_layer[space.layers[i].name]
    unit_costs = []
    for budget in problem.budgets:
        model = problem.costs[budget.cost]
        if model.per_kernel not in ("sum", "max"):
            raise SearcherUnsupportedError(f"ilp: cost {budget.cost!r} has per_kernel={model.per_kernel!r}; "
                                           "only 'sum' and 'max' can be written as linear constraints")
        if model.per_kernel == "sum" and not space.act_searched:
            table_b = np.zeros_like(values)
            for i, sl in slices.items():
                layer = space.layers[i]
                per_kernel = np.array([model.layer_cost(layer, w, acts[0]) for w in space.weight_bits]) / layer.kernels
                table_b[sl] = per_kernel[None, :]
            unit_costs.append(table_b)
        else:
            unit_costs.append(None)  # not separable per kernel: MIP only
    return Formulation(problem, "kernel", space.act_searched, n_w, n_a, groups, values, unit_layers,
                       limits, pinned_costs, kernel_slices=slices, act_values=act_values,
                       unit_costs=unit_costs)


def mckp_applies(form: Formulation) -> tuple[bool, str]:
    """Whether the problem is a multiple-choice knapsack (and why not)."""
    if len(form.budgets) > 1:
        return False, f"{len(form.budgets)} budgets (the knapsack path takes one)"
    if form.granularity == "kernel" and form.act_searched:
        return False, "activations searched at kernel granularity (a layer's cost is not a per-kernel sum)"
    if form.budgets and form.unit_costs[0] is None:
        return False, f"cost {form.budgets[0].cost!r} charges a layer its widest kernel (not separable per kernel)"
    return True, ""


def decode(form: Formulation, unit_choice: np.ndarray, group_act: np.ndarray | None = None) -> Policy:
    """A policy from one choice per unit (and, at kernel granularity, one act per group)."""
    space = form.space
    encoding = Encoding(space)
    unit_choice = np.asarray(unit_choice, dtype=int)
    if form.granularity == "layer":
        weights = unit_choice // form.n_a
        acts = unit_choice % form.n_a if form.act_searched else None
    else:
        weights = unit_choice
        acts = group_act if form.act_searched else None
    return encoding.decode(weights, acts)


# --- the MIP in PuLP ---------------------------------------------------------------------------
@dataclass
class _MIP:
    prob: object
    x: list                 # per unit: list of choice variables
    y: list | None          # per group: list of act variables (kernel granularity, searched)
    budget_rows: list       # per budget: (constraint, scale, constant, rhs before tightening)
    obj_scale: float
    obj_offset: float
    variables: int
    constraints: int


def _affine(pulp, terms):
    expr = pulp.LpAffineExpression()
    for var, coef in terms:
        if coef != 0.0:
            expr[var] = expr.get(var, 0.0) + float(coef)
    return expr


def build_mip(form: Formulation, objective_blocks=None, *, skip_budget: int | None = None, extend=None):
    """The program in PuLP.  ``objective_blocks``: replace the sensitivity objective (used to
    find the cheapest cost under the other budgets); ``skip_budget``: leave that budget's row out.
    ``extend(pulp, prob, x, binary, continuous) -> (blocks, rows)``: add variables and rows
    (the ``iqp`` searcher's linearised products) and objective blocks beside the sensitivity's."""
    import pulp

    space = form.space
    prob = pulp.LpProblem("bitsearch_ilp", pulp.LpMinimize)
    n_units, n_choices = form.values.shape
    binary = _variable_factory(pulp, prob, pulp.LpBinary)
    continuous = _variable_factory(pulp, prob, pulp.LpContinuous)
    x = [[binary(f"x_{u}_{q}") for q in range(n_choices)] for u in range(n_units)]
    for u in range(n_units):
        prob += (pulp.LpAffineExpression([(v, 1.0) for v in x[u]]) == 1, f"one_{u}")
    count = n_units
    acts = _act_choices(space)
    y = None
    layer_blocks: dict[tuple[int, int], list[_Block]] = {}  # (budget, layer) -> blocks (kernel gran.)
    z_vars, m_vars = {}, {}
    if form.granularity == "kernel":
        group_of = {}
        for g, group in enumerate(form.groups):
            for i in group:
                group_of[i] = g
        if form.act_searched:
            y = [[binary(f"y_{g}_{a}") for a in range(form.n_a)]
                 for g in range(len(form.groups))]
            for g in range(len(form.groups)):
                prob += (pulp.LpAffineExpression([(v, 1.0) for v in y[g]]) == 1, f"act_{g}")
            count += len(form.groups)

        def n_expr(i, j):
            sl = form.kernel_slices[i]
            return [(x[u][j], 1.0) for u in range(sl.start, sl.stop)]

        need_z = form.act_searched and any(form.problem.costs[b.cost].per_kernel == "sum" for b in form.budgets)
        need_m = any(form.problem.costs[b.cost].per_kernel == "max" for b in form.budgets)
        for i, sl in form.kernel_slices.items():
            K = space.layers[i].kernels
            if need_z:
                z = [[continuous(f"z_{i}_{j}_{a}", 0, K) for a in range(form.n_a)]
                     for j in range(form.n_w)]
                z_vars[i] = z
                for j in range(form.n_w):
                    prob += (_affine(pulp, [(v, 1.0) for v in z[j]] + [(v, -c) for v, c in n_expr(i, j)]) == 0,
                             f"zsum_{i}_{j}")
                for a in range(form.n_a):
                    prob += (_affine(pulp, [(z[j][a], 1.0) for j in range(form.n_w)]
                                     + [(y[group_of[i]][a], -float(K))]) <= 0, f"zact_{i}_{a}")
                count += form.n_w + form.n_a
            if need_m:
                mv = [[binary(f"m_{i}_{j}_{a}") for a in range(form.n_a)]
                      for j in range(form.n_w)]
                m_vars[i] = mv
                prob += (pulp.LpAffineExpression([(v, 1.0) for row in mv for v in row]) == 1, f"mone_{i}")
                count += 1
                if form.act_searched:
                    for a in range(form.n_a):
                        prob += (_affine(pulp, [(mv[j][a], 1.0) for j in range(form.n_w)]
                                         + [(y[group_of[i]][a], -1.0)]) == 0, f"mact_{i}_{a}")
                    count += form.n_a
                for jp in range(1, form.n_w):
                    # kernels at width jp or wider only if the layer's widest width is >= jp
                    terms = [(v, 1.0) for j in range(jp, form.n_w) for v, _ in n_expr(i, j)]
                    terms += [(mv[j][a], -float(K)) for j in range(jp, form.n_w) for a in range(form.n_a)]
                    prob += (_affine(pulp, terms) <= 0, f"mmax_{i}_{jp}")
                for j in range(form.n_w):
                    # the widest width is in use
                    prob += (_affine(pulp, [(mv[j][a], 1.0) for a in range(form.n_a)]
                                     + [(v, -1.0) for v, _ in n_expr(i, j)]) <= 0, f"muse_{i}_{j}")
                count += 2 * form.n_w - 1
        for b, budget in enumerate(form.budgets):
            model = form.problem.costs[budget.cost]
            for i, sl in form.kernel_slices.items():
                layer = space.layers[i]
                costs = np.array([[model.layer_cost(layer, w, a) for a in acts] for w in space.weight_bits])
                if model.per_kernel == "max":
                    blocks = [_Block([m_vars[i][j][a] for j in range(form.n_w) for a in range(form.n_a)],
                                     costs.ravel(), 1.0)]
                elif form.act_searched:
                    blocks = [_Block([z_vars[i][j][a] for j in range(form.n_w) for a in range(form.n_a)],
                                     costs.ravel() / layer.kernels, float(layer.kernels))]
                else:
                    blocks = [_Block(x[u], costs[:, 0] / layer.kernels, 1.0) for u in range(sl.start, sl.stop)]
                layer_blocks[(b, i)] = blocks

    # budget rows
    budget_rows = []
    for b, budget in enumerate(form.budgets):
        if b == skip_budget:
            budget_rows.append(None)
            continue
        if form.granularity == "layer":
            table_b = form.unit_costs[b]
            blocks = [_Block(x[u], table_b[u], 1.0) for u in range(n_units)]
        else:
            blocks = [blk for i in form.kernel_slices for blk in layer_blocks[(b, i)]]
        expr, constant, scale = _shifted_expression(pulp, blocks)
        rhs = form.budget_limits[b] - constant
        scale = max(scale, abs(rhs), 1e-300)
        row = _affine_scaled(pulp, expr, 1.0 / scale) <= rhs / scale
        prob += (row, f"budget_{b}_{budget.cost}")
        budget_rows.append((_constraint(prob, f"budget_{b}_{budget.cost}"), scale, constant, rhs))
        count += 1

    # objective
    if objective_blocks is None:
        blocks = [_Block(x[u], form.values[u], 1.0) for u in range(n_units)]
        if y is not None:
            blocks += [_Block(y[g], form.act_values[g], 1.0) for g in range(len(form.groups))]
    else:
        blocks = objective_blocks(x, y, layer_blocks, z_vars, m_vars)
    if extend is not None:
        extra, rows = extend(pulp, prob, x, binary, continuous)
        blocks = list(blocks) + list(extra)
        count += rows
    expr, offset, obj_scale = _shifted_expression(pulp, blocks)
    obj_scale = obj_scale if obj_scale > 0 else 1.0
    prob += _affine_scaled(pulp, expr, 1.0 / obj_scale)
    return _MIP(prob, x, y, budget_rows, obj_scale, offset, len(prob.variables()), count)


def _variable_factory(pulp, prob, cat):
    """Variables attached to ``prob`` (PuLP >= 3.3), or free ones on older PuLP."""
    if hasattr(prob, "add_variable"):
        return lambda name, low=0, high=1: prob.add_variable(name, low, high, cat=cat)
    return lambda name, low=0, high=1: pulp.LpVariable(name, low, high, cat=cat)


def _constraint(prob, name):
    if hasattr(prob, "get_constraint_by_name"):
        return prob.get_constraint_by_name(name)
    return prob.constraints[name]


def _shifted_expression(pulp, blocks):
    """sum of blocks = constant + expr, with each block shifted by its least coefficient
    (its variables sum to ``mass``); returns (expr terms, constant, largest |coef|)."""
    terms, constant, largest = [], [], 0.0
    for block in blocks:
        coefs = np.asarray(block.coefs, dtype=float)
        low = float(coefs.min()) if coefs.size else 0.0
        constant.append(block.mass * low)
        shifted = coefs - low
        if shifted.size:
            largest = max(largest, float(shifted.max()))
        terms.extend(zip(block.var_keys, shifted.tolist()))
    return terms, math.fsum(constant), largest


def _affine_scaled(pulp, terms, factor):
    expr = pulp.LpAffineExpression()
    for var, coef in terms:
        if coef != 0.0:
            value = coef * factor
            expr[var] = expr.get(var, 0.0) + value
    return expr


def _make_solver(name: str, *, time_limit, mip_gap, threads, verbose):
    import pulp

    if name == "highs":
        with _quiet_native_stdout(not verbose):
            available = pulp.HiGHS().available()
        if not available:
            raise SearcherUnsupportedError("ilp: HiGHS is not available (pip install highspy), or use solver='cbc'")
        options = {"primal_feasibility_tolerance": 1e-9, "mip_feasibility_tolerance": 1e-9,
                   "random_seed": 0}
        return pulp.HiGHS(msg=bool(verbose), timeLimit=time_limit, gapRel=mip_gap,
                          gapAbs=0.0 if mip_gap == 0 else None, threads=threads, **options)
    if name == "cbc":
        with warnings.catch_warnings():  # PuLP 3.3 deprecates the bundled CBC's class, still the one that works
            warnings.simplefilter("ignore", DeprecationWarning)
            return pulp.PULP_CBC_CMD(msg=bool(verbose), timeLimit=time_limit, gapRel=mip_gap,
                                     gapAbs=0.0 if mip_gap == 0 else None, threads=threads,
                                     options=["randomSeed 1", "randomCbcSeed 1",
                                              # CBC ignores improvements below its cutoff increment
                                              # (1e-5 by default, absolute): too coarse for exact answers
                                              "increment 1e-12"])
    raise SearcherSettingsError(f"ilp: unknown solver {name!r}; known solvers: {', '.join(SOLVERS)}")


@dataclass
class _MIPOutcome:
    status: str
    unit_choice: np.ndarray | None
    group_act: np.ndarray | None
    bound: float | None  # in objective units (scaled back), None when the solver does not say
    seconds: float


@contextlib.contextmanager
def _quiet_native_stdout(active: bool = True):
    """Send what native code prints to the process's standard output to the null device.

    HiGHS 1.16 prints its banner when a model is created, even with ``msg=False``; on
    standard output that would corrupt ``bitsearch search --json``.  With ``verbose`` the
    solver log is wanted and nothing is redirected.
    """
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        try:  # C stdio may still hold the banner in its buffer: flush it into the null device
            import ctypes

            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):  # pragma: no cover - no C library to call
            pass
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _solve_mip(mip: _MIP, solver, solver_name: str) -> _MIPOutcome:
    import pulp

    started = time.perf_counter()
    with _quiet_native_stdout(not getattr(solver, "msg", False)):
        mip.prob.solve(solver)
    seconds = time.perf_counter() - started
    status = pulp.LpStatus[mip.prob.status]
    sol_status = mip.prob.sol_status
    if mip.prob.status == pulp.LpStatusInfeasible or sol_status == pulp.LpSolutionInfeasible:
        return _MIPOutcome("infeasible", None, None, None, seconds)
    if sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return _MIPOutcome("no_solution" if status != "Unbounded" else "unbounded", None, None, None, seconds)
    choice = np.array([int(np.argmax([v.varValue or 0.0 for v in row])) for row in mip.x], dtype=int)
    acts = None
    if mip.y is not None:
        acts = np.array([int(np.argmax([v.varValue or 0.0 for v in row])) for row in mip.y], dtype=int)
    bound = None
    label = "optimal" if sol_status == pulp.LpSolutionOptimal else "feasible"
    if solver_name == "highs":
        model = getattr(mip.prob, "solverModel", None)
        if model is not None:
            info = model.getInfo()
            dual = float(info.mip_dual_bound)
            if math.isfinite(dual):
                bound = mip.obj_offset + mip.obj_scale * dual
            label = {"kOptimal": "optimal", "kTimeLimit": "time_limit", "kInterrupt": "interrupted"}.get(
                model.getModelStatus().name, label)
    return _MIPOutcome(label, choice, acts, bound, seconds)


# --- the searcher ------------------------------------------------------------------------------
@dataclass
class ILPSolution:
    """A policy and what the solve reports (``info``: method, solver, status, objective,
    bound, gap, seconds...)."""

    policy: Policy
    info: dict


@dataclass(frozen=True, kw_only=True)
class ILPSolveSettings(SearcherSettings):
    """How the ILP is solved (shared by ``ilp`` and ``bmpq``, which re-solves it)."""

    method: str = setting("auto", choices=METHODS, help="auto: the knapsack path when it applies, else the MIP")
    solver: str = setting("highs", choices=SOLVERS, help="MIP solver: highs (highspy) or cbc (bundled with PuLP)")
    time_limit: float | None = setting(None, gt=0, help="seconds for the MIP solver, then the best policy found "
                                                        "with its proven gap (None: no limit)")
    mip_gap: float | None = setting(None, ge=0, lt=1, help="relative gap at which the MIP and the knapsack search "
                                                           "may stop (None: 0, exact)")


@dataclass(frozen=True, kw_only=True)
class ILPSettings(ILPSolveSettings):
    mckp_gap: float = setting(1e-4, ge=0, lt=1, help="largest proven gap auto accepts from the knapsack path "
                                                     "before it falls back to the MIP")
    mckp_nodes: int = setting(100_000, ge=0, help="search nodes of the knapsack's exact phase")
    threads: int | None = setting(None, ge=1, help="MIP solver threads (None: the solver's default)")
    verbose: bool = setting(False, help="print the solver's log")
    refine: int = setting(0, ge=0, help="rounds of evaluator-guided local search from the ILP's policy "
                                        "(0: none, as published)")
    refine_evaluations: int | None = setting(None, ge=1, help="fresh evaluations refine may spend (None: no limit)")


class ILPSearcher(BaseSearcher):
    """Minimise the summed sensitivity under every budget (HAWQ-V3 / BMPQ ILP).

    Settings (:class:`ILPSettings`): ``method`` picks the knapsack path or the MIP;
    without ``time_limit`` the MIP is solved to a gap of ``mip_gap`` (default 0: exact),
    with it the best policy found in time is returned with the gap the solver proved.
    ``refine`` rounds of evaluator-guided local search follow the ILP's policy (see
    :mod:`bitsearch.solvers.refine`).
    """

    name = "ilp"
    needs = "sensitivity"
    deterministic = True
    description = "exact ILP over a sensitivity table (HAWQ-V3 style): knapsack path, or PuLP with HiGHS/CBC"
    settings_class = ILPSettings

    def _search(self, problem, run: SearchRun):
        stop_early = not run.emit("progress", step=0, total=1, message="building the program")
        c = self.config
        solution = solve(problem, method=c.method, solver=c.solver, time_limit=c.time_limit, mip_gap=c.mip_gap,
                         mckp_gap=c.mckp_gap, mckp_nodes=c.mckp_nodes, threads=c.threads, verbose=c.verbose,
                         quick=stop_early)
        run.info.update(solution.info)
        run.evaluate(solution.policy, step=1, total=1)
        policy = solution.policy
        if c.refine and not run.stopped:
            policy, run.info["refine"] = refine_policy(problem, run, policy, c.refine,
                                                       max_evaluations=c.refine_evaluations)
        return policy


def solve(problem, *, method="auto", solver="highs", time_limit=None, mip_gap=None, mckp_gap=1e-4,
          mckp_nodes=100_000, threads=None, verbose=False, quick=False) -> ILPSolution:
    """Solve the ILP of ``problem`` (which needs a sensitivity table); see :class:`ILPSearcher`.

    ``quick``: the caller asked to stop: give the MIP at most one second.
    """
    if problem.sensitivity is None:
        raise SearcherUnsupportedError("ilp needs a sensitivity table (--sensitivity, or a --problem file)")
    started = time.perf_counter()
    mip_gap_value = 0.0 if mip_gap is None else float(mip_gap)
    if quick:
        time_limit = 1.0 if time_limit is None else min(float(time_limit), 1.0)
    form = build_formulation(problem)
    build_seconds = time.perf_counter() - started
    applies, why = mckp_applies(form)
    if method == "mckp" and not applies:
        raise SearcherUnsupportedError(f"ilp: method 'mckp' does not apply to this problem: {why}; "
                                       f"use method 'mip' or 'auto'")
    info: dict = {"build_seconds": round(build_seconds, 4)}
    if method in ("auto", "mckp") and applies:
        outcome = _run_mckp(form, mip_gap_value, int(mckp_nodes), info)
        accept = outcome is not None and (method == "mckp" or info["gap"] <= float(mckp_gap) + 1e-15)
        if accept:
            policy, extra = _verified(form, outcome, lambda limits: _mckp_choice(form, limits, mip_gap_value,
                                                                                   int(mckp_nodes)))
            info.update(extra)
            if extra.get("tightened"):  # the policy comes from a re-solve: report its own objective
                objective = form.problem.sensitivity.loss(form.space, policy)
                info["objective"] = objective
                info["gap"] = max(0.0, objective - info["bound"]) / max(abs(objective), 1e-300)
            info["seconds"] = round(time.perf_counter() - started, 4)
            return ILPSolution(policy, info)
        info["mckp_fallback"] = f"the knapsack search proved only gap {info['gap']:.3g} > mckp_gap {mckp_gap}"
    elif method == "auto":
        info["mckp_skipped"] = why
    return _run_mip(form, solver, time_limit, mip_gap_value, threads, verbose, info, started)


def _mckp_arrays(form: Formulation):
    values = form.values
    if form.budgets:
        return values, form.unit_costs[0], form.budget_limits[0]
    return values, np.zeros_like(values), math.inf


def _run_mckp(form, gap, nodes, info):
    values, costs, capacity = _mckp_arrays(form)
    try:
        sol = solve_mckp(values, costs, capacity, gap=gap, max_nodes=nodes)
    except KnapsackInfeasible:
        _raise_infeasible_single(form, 0)
    info.update({"method": "mckp", "solver": "mckp", "status": "optimal" if sol.status == "optimal" else "gap",
                 "objective": sol.objective, "bound": float(sol.bound), "gap": float(sol.gap),
                 "solve_seconds": round(sol.seconds, 4), "lp_bound": sol.lp_bound,
                 "core_units": sol.core_units, "nodes": sol.nodes, "variables": int(values.size),
                 "constraints": int(values.shape[0]) + (1 if form.budgets else 0)})
    return sol.choice


def _mckp_choice(form, limits, gap, nodes):
    values, costs, _ = _mckp_arrays(form)
    sol = solve_mckp(values, costs, limits[0], gap=gap, max_nodes=nodes)
    return sol.choice, None


def _verified(form, first_choice, resolve, first_acts=None):
    """Decode, check every budget with the cost models, and re-solve with tightened limits
    while a solver tolerance let a budget slip.  Returns (policy, info updates)."""
    problem = form.problem
    limits = list(form.budget_limits)
    choice, acts = first_choice, first_acts
    tightened = 0
    for attempt in range(6):
        policy = decode(form, choice, acts)
        costs = problem.cost_of(policy)
        over = [(b, costs[budget.cost] - budget.limit) for b, budget in enumerate(form.budgets)
                if not budget.allows(costs[budget.cost])]
        if not over:
            return policy, {"tightened": tightened}
        tightened += 1
        for b, excess in over:
            limits[b] -= excess + 1e-12 * abs(form.budgets[b].limit) * (10 ** attempt)
        choice, acts = resolve(limits)
        if choice is None:
            break
    raise RuntimeError("ilp: the solver's tolerance let a budget slip and re-solving with tightened "
                       "limits did not repair it; please report this problem")


def _run_mip(form, solver_name, time_limit, mip_gap, threads, verbose, info, started, *, extend=None,
             objective_of=None):
    """Solve the MIP (``extend``: see :func:`build_mip`; ``objective_of(policy)``: the
    objective the program minimises, default the separable sensitivity)."""
    t0 = time.perf_counter()
    mip = build_mip(form, extend=extend)
    info["model_seconds"] = round(time.perf_counter() - t0, 4)
    solver = _make_solver(solver_name, time_limit=time_limit, mip_gap=mip_gap, threads=threads, verbose=verbose)
    outcome = _solve_mip(mip, solver, solver_name)
    if outcome.status == "infeasible":
        _raise_infeasible_joint(form, solver_name, threads)
    if outcome.unit_choice is None:
        if time_limit:
            raise SolverTimeoutError(f"ilp: {solver_name} found no policy within time_limit={time_limit:g} s; "
                                     f"raise the time limit")
        raise RuntimeError(f"ilp: {solver_name} returned no policy ({outcome.status}) without a time limit; "
                           f"please report this problem")
    solve_seconds = outcome.seconds

    def resolve(limits):
        nonlocal solve_seconds
        for b, row in enumerate(mip.budget_rows):
            if row is None:
                continue
            constraint, scale, constant, _ = row
            constraint.constant = -(limits[b] - constant) / scale
        again = _solve_mip(mip, solver, solver_name)
        solve_seconds += again.seconds
        return again.unit_choice, again.group_act

    policy, extra = _verified(form, outcome.unit_choice, resolve, outcome.group_act)
    objective = (objective_of or (lambda p: form.problem.sensitivity.loss(form.space, p)))(policy)
    bound = outcome.bound
    if bound is None and outcome.status == "optimal":
        bound = objective if mip_gap == 0 else objective - mip_gap * abs(objective)
    if bound is not None:
        bound = min(bound, objective)
    gap = None if bound is None else max(0.0, objective - bound) / max(abs(objective), 1e-300)
    info.update({"method": "mip", "solver": solver_name, "status": outcome.status, "objective": objective,
                 "bound": bound, "gap": gap, "solve_seconds": round(solve_seconds, 4),
                 "variables": mip.variables, "constraints": mip.constraints, **extra})
    info["seconds"] = round(time.perf_counter() - started, 4)
    return ILPSolution(policy, info)


def _raise_infeasible_single(form, b):
    from bitsearch.budget import cheapest_cost

    budget = form.budgets[b]
    low = cheapest_cost(form.space, form.problem.costs[budget.cost])
    raise InfeasibleBudgetError(
        f"budget {budget.spec} ({budget.cost} <= {format_cost(budget.limit, budget.unit)}) cannot be met: "
        f"the cheapest policy of this space costs {format_cost(low, budget.unit)}; "
        f"raise the budget or allow narrower widths",
        cost=budget.cost, limit=budget.limit, cheapest=low, unit=budget.unit)


def _raise_infeasible_joint(form, solver_name, threads):
    """The budgets cannot be met together: find, for each budget, its cheapest cost under
    the others, and name the first one that is over its limit."""
    for b, budget in enumerate(form.budgets):
        low = cheapest_under_others(form, b, solver_name, threads)
        if low is None or low > budget.limit:
            others = ", ".join(o.spec for k, o in enumerate(form.budgets) if k != b) or "no other budget"
            shown = "no policy at all" if low is None else format_cost(low, budget.unit)
            raise InfeasibleBudgetError(
                f"the budgets cannot be met together: under {others}, the cheapest {budget.cost} is {shown}, "
                f"over the budget {budget.spec} ({format_cost(budget.limit, budget.unit)}); relax a budget",
                cost=budget.cost, limit=budget.limit, cheapest=low, unit=budget.unit)
    raise InfeasibleBudgetError("the solver reports that no policy meets every budget")


def cheapest_under_others(form, b, solver_name="highs", threads=None):
    """The least cost of budget ``b`` over policies that keep every other budget (None: none do)."""
    def objective(x, y, layer_blocks, z_vars, m_vars):
        if form.granularity == "layer":
            return [_Block(x[u], form.unit_costs[b][u], 1.0) for u in range(len(x))]
        return [blk for i in form.kernel_slices for blk in layer_blocks[(b, i)]]

    mip = build_mip(form, objective, skip_budget=b)
    solver = _make_solver(solver_name, time_limit=None, mip_gap=0.0, threads=threads, verbose=False)
    outcome = _solve_mip(mip, solver, solver_name)
    if outcome.unit_choice is None:
        return None
    policy = decode(form, outcome.unit_choice, outcome.group_act)
    return form.problem.costs[form.budgets[b].cost].cost(form.space, policy)
