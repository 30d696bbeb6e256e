"""``ilp``: the widths that minimise the summed sensitivity under every budget, exactly.

HAWQ-V3 (Yao et al., ICML 2021) and BMPQ choose bit widths by an integer linear program:
one width per decision unit, the objective the sum of the units' estimated loss
increases (a :class:`~bitsearch.sensitivity.table.SensitivityTable`), every budget a
linear constraint.  This module builds that program from a
:class:`~bitsearch.problem.Problem` (costs come from ``bitsearch.cost`` only; the tables
are numpy arrays over the units, built in one pass) and solves it to a proven relative
``gap`` (default 1e-4; 0: exact) three ways:

* ``mckp``: one budget over separable costs is a multiple-choice knapsack, solved by
  :func:`bitsearch.solvers.mckp.solve_mckp` (hull greedy, reduced-cost fixing and a small
  exact search) in well under a second for 27k kernels;
* ``lagrangian``: several separable budgets, solved by
  :func:`bitsearch.solvers.lagrangian.solve_lagrangian` (the Lagrangian dual over every
  budget, maximised by smoothed Newton steps, for a proven bound; a primal repair that
  keeps every budget exactly) in seconds for a million units;
* ``mip``: the general program in PuLP, solved by HiGHS (``solver="highs"``, through
  highspy) or CBC (``solver="cbc"``).  It covers several budgets, activations searched
  jointly with weights, tied groups, pins, and latency tables where a kernel-wise layer
  pays its widest kernel.

``method="auto"`` takes ``mckp`` for one budget and ``lagrangian`` for several when every
budget is a sum over the units (at kernel granularity: activations not searched and no
cost that charges a layer its widest kernel), and ``mip`` otherwise.  When a fast path's
bound leaves more than ``gap``, reduced-cost fixing at its multipliers leaves a small
*core* of units open and a MIP over the core (HiGHS through highspy) closes the rest; only
a core too large for that goes to the full MIP.  Every path reports the objective, the
bound, the gap and, per budget, its slack and whether it binds.

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
import dataclasses
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
from bitsearch.policy import Policy
from bitsearch.search import BaseSearcher, SearchRun
from bitsearch.settings import SearcherSettings, setting

from .lagrangian import JointlyInfeasible, RepairFailed, core, solve_lagrangian
from .mckp import KnapsackInfeasible, solve_mckp
from .refine import refine_policy

SOLVERS = ("highs", "cbc")
METHODS = ("auto", "mckp", "lagrangian", "mip")
DEFAULT_GAP = 1e-4


# --- the formulation as arrays -------------------------------------------------------------
@dataclass
class _Block:
    """Cost or objective terms over a set of variables whose values sum to ``mass``."""

    var_keys: list
    coefs: np.ndarray
    mass: float


@dataclass
class Formulation:
    """The decision units, their objective and cost tables, for one Problem (numpy arrays).

    ``values`` has one row per weight unit (``space.weight_units()`` order).  At layer
    granularity a unit's choices are ``len(weight_bits) * n_act`` (weight-major) where
    ``n_act`` is the number of activation choices when they are searched (else 1).
    ``unit_layer[u]``: the (first) layer index of unit ``u``.
    """

    problem: object
    granularity: str
    act_searched: bool
    n_w: int
    n_a: int
    groups: tuple
    values: np.ndarray                      # (units, choices): the objective per unit and choice
    unit_layer: np.ndarray                  # (units,) layer index of each unit
    budget_limits: list                     # per budget: the limit less the pinned layers' cost
    pinned_costs: list
    kernel_slices: dict = field(default_factory=dict)  # layer index -> slice of kernel units
    act_values: np.ndarray | None = None     # (groups, n_a) at kernel granularity when searched
    unit_costs: list = field(default_factory=list)     # per budget: (units, choices) array or None
    tables: object = None                    # the problem's UnitTables (layer costs for the MIP)

    @property
    def space(self):
        return self.problem.space

    @property
    def budgets(self):
        return self.problem.budgets


def _act_choices(space):
    return list(space.act_bits) if space.act_searched else [space.act_choices[0]]


def build_formulation(problem) -> Formulation:
    """Objective and cost tables from the problem's sensitivity table and the planning cost
    arrays of :func:`bitsearch.cost.unit_tables`, all numpy arrays over the units (linear in
    their number)."""
    from bitsearch.cost import unit_tables

    space = problem.space
    table = problem.sensitivity
    acts = _act_choices(space)
    n_w, n_a = len(space.weight_bits), len(acts)
    groups = space.groups()
    for budget in problem.budgets:
        model = problem.costs[budget.cost]
        if space.granularity == "kernel" and model.per_kernel not in ("sum", "max"):
            raise SearcherUnsupportedError(f"ilp: cost {budget.cost!r} has per_kernel={model.per_kernel!r}; "
                                           "only 'sum' and 'max' can be written as linear constraints")
    encoding = Encoding(space)
    tables = unit_tables(problem, encoding)
    pinned_costs = [float(v) for v in tables.pinned]
    limits = [float(v) for v in tables.free_limits]
    free = encoding.free_layers
    position = encoding.free_position
    if space.granularity == "layer":
        sens = table.layer_rows(space)                      # (free layers, n_w)
        sens_act = table.act_rows(space)                    # (free layers, n_a) or zeros
        layer_values = (sens[:, :, None] + sens_act[:, None, :]).reshape(free.size, n_w * n_a)
        first = encoding.unit_layer
        if all(len(g) == 1 for g in groups):
            values = layer_values[position[first]]
        else:
            members = np.array([i for g in groups for i in g], dtype=np.int64)
            unit_of = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
            values = np.zeros((len(groups), n_w * n_a))
            np.add.at(values, unit_of, layer_values[position[members]])
        unit_costs = [tables.unit_choice_costs(b) for b in range(tables.n_budgets)]
        return Formulation(problem, "layer", space.act_searched, n_w, n_a, groups, values, first,
                           limits, pinned_costs, unit_costs=unit_costs, tables=tables)
    # kernel granularity
    slices = dict(encoding.layer_slices)
    values = table.kernel_rows(space)
    act_values = None
    if space.act_searched:
        sens_act = table.act_rows(space)
        act_values = np.zeros((len(groups), n_a))
        for g, group in enumerate(groups):
            for i in group:
                act_values[g] += sens_act[position[i]]
    unit_costs = []
    for b in range(tables.n_budgets):
        if tables.per_kernel[b] == "sum" and not space.act_searched:
            unit_costs.append(tables.costs[b, 0])
        else:
            unit_costs.append(None)  # not separable per kernel: MIP only
    return Formulation(problem, "kernel", space.act_searched, n_w, n_a, groups, values, encoding.unit_layer,
                       limits, pinned_costs, kernel_slices=slices, act_values=act_values,
                       unit_costs=unit_costs, tables=tables)


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
                costs = form.tables.layer_table(b, i)  # (n_w, n_a): the layer at uniform widths
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
    bound, gap, budgets (limit, cost, slack and whether each binds), seconds...)."""

    policy: Policy
    info: dict


@dataclass(frozen=True, kw_only=True)
class ILPSolveSettings(SearcherSettings):
    """How the ILP is solved (shared by ``ilp`` and ``bmpq``, which re-solves it)."""

    method: str = setting("auto", choices=METHODS, help="auto: the knapsack path (one budget) or the Lagrangian "
                                                        "path (several) when the costs are sums over the units, "
                                                        "else the MIP")
    solver: str = setting("highs", choices=SOLVERS, help="MIP solver: highs (highspy) or cbc (bundled with PuLP)")
    time_limit: float | None = setting(None, gt=0, help="seconds for a MIP solver, then the best policy found "
                                                        "with its proven gap (None: no limit)")
    gap: float = setting(DEFAULT_GAP, ge=0, lt=1, help="relative gap to prove between the policy and a lower bound "
                                                       "on the optimum (0: exact)")


@dataclass(frozen=True, kw_only=True)
class ILPSettings(ILPSolveSettings):
    mckp_nodes: int = setting(100_000, ge=0, help="search nodes of the knapsack's exact phase")
    threads: int | None = setting(None, ge=1, help="MIP solver threads (None: the solver's default)")
    verbose: bool = setting(False, help="print the solver's log")
    refine: int = setting(0, ge=0, help="rounds of evaluator-guided local search from the ILP's policy "
                                        "(0: none, as published)")
    refine_evaluations: int | None = setting(None, ge=1, help="fresh evaluations refine may spend (None: no limit)")


class ILPSearcher(BaseSearcher):
    """Minimise the summed sensitivity under every budget (HAWQ-V3 / BMPQ ILP).

    Settings (:class:`ILPSettings`): ``method`` picks the knapsack path (one budget), the
    Lagrangian path (several; both need costs that are sums over the units) or the MIP;
    ``gap`` is the relative gap to prove between the policy and a lower bound on the
    optimum (default 1e-4; 0: exact): the fast paths close what their bound leaves with a
    small MIP over the units reduced-cost fixing leaves open (the *core*), and fall back to
    the full MIP only when the core is too large.  With ``time_limit`` a MIP returns the
    best policy found in time with the gap it proved.  ``refine`` rounds of
    evaluator-guided local search follow the ILP's policy (see :mod:`bitsearch.solvers.refine`).
    """

    name = "ilp"
    needs = "sensitivity"
    deterministic = True
    description = ("exact ILP over a sensitivity table (HAWQ-V3 style): knapsack or Lagrangian path, "
                   "or PuLP with HiGHS/CBC")
    settings_class = ILPSettings

    def _search(self, problem, run: SearchRun):
        stop_early = not run.emit("progress", step=0, total=1, message="building the program")
        c = self.config
        solution = solve(problem, method=c.method, gap=c.gap, solver=c.solver, time_limit=c.time_limit,
                         mckp_nodes=c.mckp_nodes, threads=c.threads, verbose=c.verbose, quick=stop_early)
        run.info.update(solution.info)
        run.evaluate(solution.policy, step=1, total=1)
        policy = solution.policy
        if c.refine and not run.stopped:
            policy, run.info["refine"] = refine_policy(problem, run, policy, c.refine,
                                                       max_evaluations=c.refine_evaluations)
        return policy


def separable(form: Formulation) -> tuple[bool, str]:
    """Whether every budget is a sum over the units (then the knapsack / Lagrangian paths
    apply), and why not."""
    if form.granularity == "kernel" and form.act_searched:
        return False, "activations searched at kernel granularity (a layer's cost is not a per-kernel sum)"
    for budget, table in zip(form.budgets, form.unit_costs):
        if table is None:
            return False, f"cost {budget.cost!r} charges a layer its widest kernel (not separable per kernel)"
    return True, ""


def solve(problem, *, method="auto", gap=DEFAULT_GAP, solver="highs", time_limit=None, mckp_nodes=100_000,
          threads=None, verbose=False, quick=False) -> ILPSolution:
    """Solve the ILP of ``problem`` (which needs a sensitivity table) to a proven relative
    ``gap``; see :class:`ILPSearcher`.

    ``quick``: the caller asked to stop: give a MIP at most one second.
    """
    if problem.sensitivity is None:
        raise SearcherUnsupportedError("ilp needs a sensitivity table (--sensitivity, or a --problem file)")
    started = time.perf_counter()
    gap = float(gap)
    if quick:
        time_limit = 1.0 if time_limit is None else min(float(time_limit), 1.0)
    form = build_formulation(problem)
    info: dict = {"build_seconds": round(time.perf_counter() - started, 4), "requested_gap": gap}
    fast, why = separable(form)
    if method == "mckp" and not (fast and len(form.budgets) <= 1):
        why = why or f"{len(form.budgets)} budgets (the knapsack path takes one)"
        raise SearcherUnsupportedError(f"ilp: method 'mckp' does not apply to this problem: {why}; "
                                       "use method 'lagrangian', 'mip' or 'auto'")
    if method == "lagrangian" and not fast:
        raise SearcherUnsupportedError(f"ilp: method 'lagrangian' does not apply to this problem: {why}; "
                                       "use method 'mip' or 'auto'")
    if method == "mip" or (method == "auto" and not fast):
        if method == "auto":
            info["fast_path_skipped"] = why
        solution = _run_mip(form, solver, time_limit, gap, threads, verbose, info, started)
        return ILPSolution(solution.policy, _finish_info(form, solution.policy, solution.info, started))
    use_knapsack = method == "mckp" or (method == "auto" and len(form.budgets) <= 1)

    def attempt(limits):
        if use_knapsack:
            return _knapsack(form, limits, gap, int(mckp_nodes))
        return _lagrangian(form, limits, gap, time_limit)

    try:
        result = attempt(list(form.budget_limits))
        policy, extra, result = _verified_fast(form, result, attempt)
    except _NoFastPolicy as exc:  # feasible or not, the exact program decides
        info["fast_path_fallback"] = f"{exc}: solving the full program"
        solution = _run_mip(form, solver, time_limit, gap, threads, verbose, info, started)
        return ILPSolution(solution.policy, _finish_info(form, solution.policy, solution.info, started))
    info.update(result.info)
    info.update(extra)
    if result.gap > gap + GAP_NOISE and method != "mckp":
        closed = _close_gap(form, result, gap, time_limit, threads, verbose, info)
        if closed is None and form.values.size > FULL_MIP_MAX_BINARIES:
            # too large for a MIP of either kind: the policy found, with the gap it proves
            info["core_fallback"] = (f"the core left {info.get('core_units', '?')} units open and the full program "
                                     f"has {form.values.size:,} binaries: returning the policy with its proven gap")
            closed = result
        if closed is None:  # the core is too large for a small MIP: the full program
            info["core_fallback"] = (f"the core left {info.get('core_units', '?')} units open: solving the full "
                                     "program instead")
            solution = _run_mip(form, solver, time_limit, gap, threads, verbose, info, started)
            return ILPSolution(solution.policy, _finish_info(form, solution.policy, solution.info, started))
        if closed.choice is not result.choice:
            incumbent = result

            def again(limits):  # the core MIP let a budget slip: its own tolerance; tighten and solve again
                retry = _close_gap(form, dataclasses.replace(incumbent, limits=limits), gap, time_limit, threads,
                                   verbose, info)
                return incumbent if retry is None else retry

            policy, extra2, closed = _verified_fast(form, closed, again)
            info["tightened"] = info.get("tightened", 0) + extra2.get("tightened", 0)
        result = closed
    objective = problem.sensitivity.loss(form.space, policy)
    bound = min(result.bound, objective)
    info.update({"objective": objective, "bound": bound, "gap": _rel(objective - bound, objective),
                 "status": "optimal" if _rel(objective - bound, objective) <= gap + GAP_NOISE else "gap"})
    return ILPSolution(policy, _finish_info(form, policy, info, started, result.multipliers))


CORE_MAX_BINARIES = 400_000  # a larger core goes to the full MIP
FULL_MIP_MAX_BINARIES = 3_000_000  # ... unless that is larger still (PuLP would take hours to build it)
GAP_NOISE = 1e-10  # relative gaps below this are rounding, not a gap ("exact" means gap 0 up to it)


def _rel(gap_abs: float, objective: float) -> float:
    return max(0.0, gap_abs) / max(abs(objective), 1e-300)


@dataclass
class _Fast:
    """What a fast path returns: one choice per unit, its value, a proven bound, the
    multipliers that prove it (one per budget), and what to report."""

    choice: np.ndarray
    objective: float
    bound: float
    multipliers: tuple
    info: dict
    limits: list

    @property
    def gap(self) -> float:
        return _rel(self.objective - self.bound, self.objective)


def _knapsack(form, limits, gap, nodes) -> _Fast:
    values = form.values
    costs = form.unit_costs[0] if form.budgets else np.zeros_like(values)
    capacity = limits[0] if form.budgets else math.inf
    try:
        sol = solve_mckp(values, costs, capacity, gap=gap, max_nodes=nodes)
    except KnapsackInfeasible:
        _raise_infeasible_single(form, 0)
    info = {"method": "mckp", "solver": "mckp", "solve_seconds": round(sol.seconds, 4), "lp_bound": sol.lp_bound,
            "core_units": sol.core_units, "nodes": sol.nodes, "variables": int(values.size),
            "constraints": int(values.shape[0]) + (1 if form.budgets else 0)}
    return _Fast(sol.choice, sol.objective, float(sol.bound), (sol.lagrange,) if form.budgets else (), info,
                 list(limits))


class _NoFastPolicy(Exception):
    """The fast path found no policy within the budgets without proving that none exists."""


def _lagrangian(form, limits, gap, time_limit) -> _Fast:
    try:
        sol = solve_lagrangian(form.values, form.unit_costs, limits, gap=gap, time_limit=time_limit)
    except JointlyInfeasible:
        _raise_infeasible_joint_fast(form)
    except RepairFailed as exc:
        raise _NoFastPolicy(str(exc)) from None
    info = {"method": "lagrangian", "solver": "lagrangian", "solve_seconds": round(sol.seconds, 4),
            "dual_evaluations": sol.evaluations, "variables": int(form.values.size),
            "constraints": int(form.values.shape[0]) + len(form.budgets)}
    return _Fast(sol.choice, sol.objective, sol.bound, sol.multipliers, info, list(limits))


def _verified_fast(form, result: _Fast, attempt):
    """Decode and check every budget with the cost models; while a sum over units let a
    budget slip by a rounding error, solve again with that budget tightened by the excess."""
    problem = form.problem
    tightened = 0
    for round_ in range(6):
        policy = decode(form, result.choice)
        costs = problem.cost_of(policy)
        over = [(b, costs[budget.cost] - budget.limit) for b, budget in enumerate(form.budgets)
                if not budget.allows(costs[budget.cost])]
        if not over:
            return policy, {"tightened": tightened}, result
        if attempt is None:
            break
        tightened += 1
        limits = list(result.limits)
        for b, excess in over:
            limits[b] -= excess + 1e-12 * abs(form.budgets[b].limit) * (10 ** round_)
        bound = result.bound  # a bound of the original program stays one
        result = attempt(limits)
        result.bound = min(result.bound, bound) if tightened else result.bound
    raise RuntimeError("ilp: a rounding error let a budget slip and re-solving with tightened limits did not "
                       "repair it; please report this problem")


def _close_gap(form, result: _Fast, gap, time_limit, threads, verbose, info) -> _Fast | None:
    """Reduced-cost fixing at the fast path's multipliers, then a MIP over the units left
    open (HiGHS, through highspy): closes the gap to ``gap``, or returns None when the core
    is too large for a small MIP."""
    values = form.values
    costs = [c for c in form.unit_costs]
    limits = result.limits
    multipliers = result.multipliers
    lower = dual_value_of(values, costs, limits, multipliers)
    upper = result.objective
    tol = gap * abs(upper)
    fixed = core(values, costs, multipliers, result.choice, upper, lower, tol=tol)
    binaries = int(fixed.allowed.sum())
    info.update({"core_units": int(fixed.units.size), "core_binaries": binaries})
    if binaries > CORE_MAX_BINARIES:
        return None
    if fixed.units.size == 0:  # nothing can improve: the incumbent is optimal within tol
        return _Fast(result.choice, result.objective, max(result.bound, upper - tol), multipliers, result.info,
                     limits)
    t0 = time.perf_counter()
    choice, core_bound, status = _solve_core(values, costs, limits, fixed, result.choice, upper, tol,
                                             time_limit, threads, verbose)
    info.update({"core_seconds": round(time.perf_counter() - t0, 4), "core_status": status,
                 "method": info.get("method", "") + "+core"})
    bound = max(result.bound, min(upper - tol, core_bound)) if core_bound is not None else result.bound
    if choice is None:
        return _Fast(result.choice, result.objective, bound, multipliers, result.info, limits)
    rows = np.arange(values.shape[0])
    objective = math.fsum(values[rows, choice])
    if objective >= upper:
        return _Fast(result.choice, result.objective, bound, multipliers, result.info, limits)
    return _Fast(choice, objective, min(bound, objective), multipliers, result.info, limits)


def dual_value_of(values, costs, limits, multipliers) -> float:
    """The Lagrangian bound sum_u min_j (values + lam . costs) - lam . limits."""
    A = np.array(values, dtype=float)
    for lam, c in zip(multipliers, costs):
        if lam:
            A += lam * c
    return math.fsum(A.min(axis=1)) - math.fsum(lam * cap for lam, cap in zip(multipliers, limits))


def _solve_core(values, costs, limits, fixed, incumbent, upper, tol, time_limit, threads, verbose):
    """The MIP over the core (one binary per allowed unit and choice): returns the full
    choice vector of a better policy (or None), a proven lower bound on the full objective
    (or None), and HiGHS' status."""
    import highspy

    units = fixed.units
    allowed = fixed.allowed
    cu, cj = np.nonzero(allowed)
    u = units[cu]
    n_var = cu.size
    k = len(costs)
    base = values[u, cj]
    low = np.full(units.size, np.inf)
    np.minimum.at(low, cu, base)
    objective = base - low[cu]
    constant = fixed.fixed_value + math.fsum(low)
    scale = max(float(np.abs(objective).max(initial=0.0)), 1e-300)
    rows_index = [cu]
    rows_value = [np.ones(n_var)]
    row_low = [np.ones(units.size)]
    row_high = [np.ones(units.size)]
    for b in range(k):
        c = costs[b][u, cj]
        cmin = np.full(units.size, np.inf)
        np.minimum.at(cmin, cu, c)
        shifted = c - cmin[cu]
        rhs = limits[b] - fixed.fixed_costs[b] - math.fsum(cmin)
        cscale = max(float(np.abs(shifted).max(initial=0.0)), abs(rhs), 1e-300)
        rows_index.append(np.full(n_var, units.size + b))
        rows_value.append(shifted / cscale)
        row_low.append(np.array([-highspy.kHighsInf]))
        row_high.append(np.array([rhs / cscale]))
    index = np.stack(rows_index, axis=1).ravel().astype(np.int32)
    value = np.stack(rows_value, axis=1).ravel()
    lp = highspy.HighsLp()
    lp.num_col_ = n_var
    lp.num_row_ = units.size + k
    lp.col_cost_ = objective / scale
    lp.col_lower_ = np.zeros(n_var)
    lp.col_upper_ = np.ones(n_var)
    lp.row_lower_ = np.concatenate(row_low)
    lp.row_upper_ = np.concatenate(row_high)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.arange(0, (k + 1) * n_var + 1, k + 1, dtype=np.int32)
    lp.a_matrix_.index_ = index
    lp.a_matrix_.value_ = value
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n_var
    with _quiet_native_stdout(not verbose):
        h = highspy.Highs()
        h.setOptionValue("output_flag", bool(verbose))
        h.setOptionValue("random_seed", 0)
        h.setOptionValue("mip_rel_gap", 0.0)
        h.setOptionValue("mip_abs_gap", max(tol, 0.0) / scale)
        h.setOptionValue("mip_feasibility_tolerance", 1e-9)
        h.setOptionValue("primal_feasibility_tolerance", 1e-9)
        # only a policy better than the incumbent is of use
        h.setOptionValue("objective_bound", (upper - constant) / scale + 1e-9)
        if time_limit is not None:
            h.setOptionValue("time_limit", float(time_limit))
        if threads is not None:
            h.setOptionValue("threads", int(threads))
        h.passModel(lp)
        start = (incumbent[u] == cj).astype(float)
        solution = highspy.HighsSolution()
        solution.col_value = start.tolist()
        solution.value_valid = True
        h.setSolution(solution)
        h.run()
    status = h.getModelStatus().name
    info = h.getInfo()
    dual = float(info.mip_dual_bound)
    bound = constant + scale * dual if math.isfinite(dual) else None
    if status in ("kInfeasible",):  # nothing better than the incumbent exists in the core
        return None, upper - tol, status
    col = np.asarray(h.getSolution().col_value, dtype=float)
    if col.size != n_var or info.primal_solution_status == 0:
        return None, bound, status
    chosen = col > 0.5
    choice = fixed.fixed.copy()
    if np.bincount(cu[chosen], minlength=units.size).min(initial=1) != 1:
        return None, bound, status
    choice[u[chosen]] = cj[chosen]
    return choice, bound, status


def _finish_info(form, policy, info, started, multipliers=None) -> dict:
    """Add what every path reports: each budget's limit, cost, slack, and whether it binds
    (a positive multiplier: without it the bound would be lower; None where the path has no
    multipliers)."""
    problem = form.problem
    costs = problem.cost_of(policy)
    report = []
    for b, budget in enumerate(form.budgets):
        binds = None if multipliers is None or b >= len(multipliers) else bool(multipliers[b] > 0)
        report.append({"spec": budget.spec, "cost": budget.cost, "limit": budget.limit, "value": costs[budget.cost],
                       "slack": budget.limit - costs[budget.cost], "binding": binds})
    info["budgets"] = report
    info["binding"] = [r["spec"] for r in report if r["binding"]]
    info["seconds"] = round(time.perf_counter() - started, 4)
    return info


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


def _raise_infeasible_joint_fast(form):
    """Several separable budgets that no policy meets together: name, for each budget, the
    cheapest cost under the others (each a knapsack-family problem of its own)."""
    from bitsearch.budget import cheapest_cost

    for b, budget in enumerate(form.budgets):
        others = [k for k in range(len(form.budgets)) if k != b]
        low = None
        if others:
            try:
                sol = solve_lagrangian(form.unit_costs[b], [form.unit_costs[k] for k in others],
                                       [form.budget_limits[k] for k in others], gap=1e-9)
                low = sol.bound + form.pinned_costs[b]
            except JointlyInfeasible:
                low = None
            except RepairFailed:  # no proof either way: the exact cheapest costs below decide
                continue
        else:
            low = cheapest_cost(form.space, form.problem.costs[budget.cost])
        if low is None or low > budget.limit:
            others_text = ", ".join(o.spec for k, o in enumerate(form.budgets) if k != b) or "no other budget"
            shown = "no policy at all" if low is None else f"at least {format_cost(low, budget.unit)}"
            raise InfeasibleBudgetError(
                f"the budgets cannot be met together: under {others_text}, the cheapest {budget.cost} is {shown}, "
                f"over the budget {budget.spec} ({format_cost(budget.limit, budget.unit)}); relax a budget",
                cost=budget.cost, limit=budget.limit, cheapest=low, unit=budget.unit)
    # the bounds were not conclusive: the exact cheapest costs, from the MIP
    _raise_infeasible_joint(form, "highs", None)


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
