"""``iqp``: the widths that minimise separable *plus pairwise* sensitivities under every budget.

The ``ilp`` searcher minimises a sum of per-unit sensitivities.  CLADO (Deng et al., DAC
2025) adds the cross-layer terms the sum misses -- ``dL_ab(p, q)``, measured by quantizing
two layers together (:mod:`bitsearch.sensitivity.interactions`) -- and solves the integer
quadratic program::

    minimise    sum_u s[u, x_u]  +  sum_{u < v} D_uv[x_u, x_v]
    subject to  every budget (linear in the one-hot choices, as in ``ilp``)

**Exact path** (``method="mip"``; what ``auto`` takes at layer granularity while the
products fit ``exact_limit``).  Each product of one-hot choices is linearised with the
local-marginal ("RLT") constraints: for a pair ``(u, v)`` there are continuous
``y[u, v, p, q] >= 0`` with ``sum_q y[u, v, p, q] = x[u, p]`` and
``sum_p y[u, v, p, q] = x[v, q]``; at binary ``x`` these force ``y`` to the product, and
their LP relaxation is much tighter than the textbook three-inequality form.  The program
is the ``ilp`` searcher's (same budget rows, same exact verification and tightened
re-solve, :func:`bitsearch.solvers.ilp.build_mip`) with the ``y`` terms added, solved by
HiGHS (or CBC) under ``time_limit`` with the proven gap reported like ``ilp``'s
(``status``, ``objective``, ``bound``, ``gap``, ``variables``, ``constraints``).

**Local path** (``method="local"``; kernel granularity, and layer granularity beyond
``exact_limit``).  Proximal linearisation: at the current policy the pairwise part is
replaced by its first-order expansion in the layers' width fractions (exact in each
layer's own widths when the others stay), plus a penalty ``lam`` for each unit that moves;
the separable problem this gives is solved exactly by ``ilp``'s solver (the knapsack path,
or its MIP for several budgets); the step is taken when the quadratic objective improves,
else ``lam`` doubles.  It starts from ``ilp``'s policy, so its objective is never worse.

**Trust region** (``trust_region=True``, the default, on a problem with a model evaluator).
Measured on ``mnist1d-cnn`` (layer-wise {2,3,4,8}), the pairwise model anchored at float
weights is exact for every single layer and pair but wrong far from float: quantizing
four conv layers at 2 bits each loses more than 4 nats alone, and the model predicts a
total near zero for the all-2-bit policy because the pairs' negative terms (the loss
saturates) are added six times; the unrestricted IQP then returns 2/2/2/2/2/2 (14% top-1)
under every budget.  So the search verifies the model with forward passes on the same
samples the table was measured on (never the evaluator's test metric): starting from
the better-measured of ``ilp``'s policy and the IQP's optimum, it re-measures the singles
and pairs around the incumbent (``reanchor``: the model is then exact for every policy
within two units of it), solves the IQP within a Hamming radius of the incumbent, and
measures the candidate -- a step that lowers the measured loss is taken (the radius grows
when the model predicted at least 3/4 of the drop), else the radius shrinks below the
rejected step's distance; it stops when the model sees nothing better within the radius,
at radius 0, or after ``rounds``.  At kernel granularity the candidates (``ilp``'s policy
and each step of the local path) are measured and the best measured is returned.  With
``trust_region=False`` the IQP's optimum is returned as is (CLADO as published).  Every
forward pass is counted and reported (``forward_passes``: the table's plus the search's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from bitsearch.errors import SearcherUnsupportedError
from bitsearch.policy import Policy
from bitsearch.search import BaseSearcher, SearchRun
from bitsearch.sensitivity.pairwise import PairwiseTable
from bitsearch.sensitivity.table import SensitivityTable
from bitsearch.settings import SearcherSettings, setting

from . import ilp
from .ilp import SOLVERS, ILPSolution, _affine, _Block

METHODS = ("auto", "mip", "local")


# --- the quadratic model on the ILP's units ---------------------------------------------------
def unit_pairs(form, matrices) -> tuple[np.ndarray, dict[tuple[int, int], np.ndarray]]:
    """The formulation's per-unit values with intra-unit pair terms folded in, and the
    pair matrices between units (over weight choices), from layer-index pair matrices."""
    values = form.values.copy()
    unit_of = {i: u for u, group in enumerate(form.groups) for i in group}
    pairs: dict[tuple[int, int], np.ndarray] = {}
    for (i, j), m in matrices.items():
        u, v = unit_of[i], unit_of[j]
        if u == v:  # tied layers always share a width: the term is on the diagonal
            diag = np.repeat(np.diag(m), form.n_a)
            values[u] += diag
            continue
        if u > v:
            u, v, m = v, u, m.T
        pairs[(u, v)] = pairs.get((u, v), 0.0) + m
    return values, pairs


def product_variables(problem) -> int:
    """How many linearised products the exact program of ``problem`` needs."""
    table = problem.sensitivity
    if table is None or table.pairwise is None:
        return 0
    n_w = len(problem.space.weight_bits)
    units = {i: u for u, group in enumerate(problem.space.groups()) for i in group}
    pairs = {tuple(sorted((units[i], units[j]))) for i, j in table.pairwise.matrices(problem.space)
             if units[i] != units[j]}
    return len(pairs) * n_w * n_w


def _extension(form, pairs, region):
    """``build_mip``'s ``extend``: the RLT variables and rows of every pair, and the
    trust-region row ``sum_u x[u, anchor_u] >= units - radius`` when ``region`` is given."""

    def extend(pulp, prob, x, binary, continuous):
        n_w, n_a = form.n_w, form.n_a
        blocks, rows = [], 0

        def marginal(u, p):
            return [(x[u][p * n_a + a], 1.0) for a in range(n_a)]

        for (u, v), m in pairs.items():
            y = [[continuous(f"y_{u}_{v}_{p}_{q}", 0, 1) for q in range(n_w)] for p in range(n_w)]
            for p in range(n_w):
                terms = [(y[p][q], 1.0) for q in range(n_w)] + [(var, -c) for var, c in marginal(u, p)]
                prob += (_affine(pulp, terms) == 0, f"rlt_{u}_{v}_row{p}")
            for q in range(n_w):
                terms = [(y[p][q], 1.0) for p in range(n_w)] + [(var, -c) for var, c in marginal(v, q)]
                prob += (_affine(pulp, terms) == 0, f"rlt_{u}_{v}_col{q}")
            rows += 2 * n_w
            blocks.append(_Block([y[p][q] for p in range(n_w) for q in range(n_w)], np.asarray(m).ravel(), 1.0))
        if region is not None:
            anchor, radius = region
            terms = [(x[u][anchor[u] * n_a + a], 1.0) for u in range(len(x)) for a in range(n_a)]
            prob += (_affine(pulp, terms) >= len(x) - radius, "trust_region")
            rows += 1
        return blocks, rows

    return extend


def solve_exact(problem, *, solver="highs", time_limit=None, gap=None, threads=None, verbose=False,
                region=None) -> ILPSolution:
    """The IQP of ``problem`` (layer granularity) by linearisation; ``region``: (anchor
    policy, radius) restricts it to policies within ``radius`` units of the anchor."""
    started = time.perf_counter()
    table = problem.sensitivity
    form = ilp.build_formulation(problem)
    matrices = table.pairwise.matrices(problem.space) if table.pairwise is not None else {}
    form.values, pairs = unit_pairs(form, matrices)
    anchor_region = None
    if region is not None:
        anchor, radius = region
        anchor_region = (_unit_weight_choices(problem.space, anchor), int(radius))
    info = {"build_seconds": round(time.perf_counter() - started, 4), "products": len(pairs) * form.n_w ** 2}
    solution = ilp._run_mip(form, solver, time_limit, 0.0 if gap is None else float(gap), threads, verbose,
                            info, started, extend=_extension(form, pairs, anchor_region),
                            objective_of=lambda policy: table.predicted_loss(problem.space, policy))
    return solution


def _unit_weight_choices(space, policy) -> list[int]:
    index = {b: k for k, b in enumerate(space.weight_bits)}
    return [index[int(policy[space.layers[group[0]].name].weight_bits)] for group in space.groups()]


def hamming(space, a: Policy, b: Policy) -> int:
    """How many weight units two policies set differently."""
    from bitsearch.encoding import Encoding

    encoding = Encoding(space)
    return int(np.sum(encoding.encode(a)[0] != encoding.encode(b)[0]))


# --- the local path -----------------------------------------------------------------------------
def _linearised_table(problem, policy, lam: float) -> SensitivityTable:
    """The separable table whose minimum is the proximal linearisation of the IQP at ``policy``."""
    space, table = problem.space, problem.sensitivity
    pairwise = table.pairwise
    fractions = pairwise.fractions(space, policy) if pairwise is not None else {}
    gradient = {i: np.zeros(len(space.weight_bits)) for i in space.free_layers()}
    unit_of = {i: u for u, group in enumerate(space.groups()) for i in group}
    diagonal = {i: np.zeros(len(space.weight_bits)) for i in space.free_layers()}
    for (i, j), m in (pairwise.matrices(space) if pairwise is not None else {}).items():
        if space.granularity == "layer" and unit_of[i] == unit_of[j]:
            diagonal[i] += np.diag(m)
            continue
        gradient[i] += m @ fractions[j]
        gradient[j] += m.T @ fractions[i]
    index = {b: k for k, b in enumerate(space.weight_bits)}
    weight = {}
    for i in space.free_layers():
        layer = space.layers[i]
        rows = table.unit_table(space, layer)  # (1 or K, widths) over space.weight_bits
        if space.granularity == "layer":
            rows = rows + gradient[i][None, :] + diagonal[i][None, :]
            if lam and i == space.groups()[unit_of[i]][0]:  # one penalty per tied group
                moved = np.full(len(space.weight_bits), lam)
                moved[index[int(policy[layer.name].weight_bits)]] = 0.0
                rows = rows + moved[None, :]
        else:
            rows = rows + gradient[i][None, :] / layer.kernels
            if lam:
                current = [index[int(b)] for b in policy[layer.name].kernel_bits(layer.kernels)]
                moved = np.full(rows.shape, lam / layer.kernels)
                moved[np.arange(layer.kernels), current] = 0.0
                rows = rows + moved
        weight[layer.name] = rows
    act = dict(table.act) if space.act_searched else {}
    return SensitivityTable(space.weight_bits, weight, table.act_bits if space.act_searched else (), act,
                            method="linearised")


def solve_local(problem, start: Policy, *, rounds: int = 30, ilp_settings: dict | None = None,
                on_step=None) -> ILPSolution:
    """Proximal linearisation from ``start`` (see the module's docstring); ``on_step(policy)``
    sees every policy the path moves to."""
    started = time.perf_counter()
    table, space = problem.sensitivity, problem.space
    settings = {"method": "auto", **(ilp_settings or {})}
    current, value = start, table.predicted_loss(space, start)
    scale = max(abs(value), abs(table.loss(space, start)), 1e-12) / max(1, len(space.weight_units()))
    lam, steps, solves, last_info = 0.0, 0, 0, {}
    for _ in range(int(rounds)):
        linear = replace(problem, sensitivity=_linearised_table(problem, current, lam))
        solution = ilp.solve(linear, **settings)
        solves += 1
        last_info = solution.info
        candidate = solution.policy
        candidate_value = table.predicted_loss(space, candidate)
        if candidate.key != current.key and candidate_value < value - 1e-12 * max(1.0, abs(value)):
            current, value, steps = candidate, candidate_value, steps + 1
            lam = 0.0
            if on_step is not None:
                on_step(current)
            continue
        if candidate.key == current.key and lam == 0.0:
            break  # a fixed point of the linearisation
        lam = scale if lam == 0.0 else 2.0 * lam
        if lam > 1e6 * scale:
            break
    info = {"method": "local", "solver": last_info.get("solver"), "status": "local", "objective": value,
            "bound": None, "gap": None, "steps": steps, "solves": solves,
            "seconds": round(time.perf_counter() - started, 4)}
    return ILPSolution(current, info)


# --- the searcher -------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class IQPSettings(SearcherSettings):
    method: str = setting("auto", choices=METHODS, help="auto: the exact MIP at layer granularity while the "
                                                         "products fit exact_limit, else the local path")
    solver: str = setting("highs", choices=SOLVERS, help="MIP solver: highs (highspy) or cbc (bundled with PuLP)")
    time_limit: float | None = setting(60.0, gt=0, help="seconds for each MIP solve, then the best policy found "
                                                        "with its proven gap (None: no limit)")
    mip_gap: float | None = setting(None, ge=0, lt=1, help="relative gap at which the MIP may stop (None: 0, exact)")
    exact_limit: int = setting(200_000, ge=0, help="most linearised products auto solves exactly")
    trust_region: bool = setting(True, help="verify the model with forward passes on the sensitivity samples "
                                            "(needs a model evaluator; False: the IQP's optimum as is, as published)")
    reanchor: bool = setting(True, help="re-measure singles and pairs around each new incumbent (layer granularity)")
    rounds: int = setting(20, ge=1, help="most trust-region steps")
    local_rounds: int = setting(30, ge=1, help="most linearisation solves of the local path")
    threads: int | None = setting(None, ge=1, help="MIP solver threads (None: the solver's default)")
    verbose: bool = setting(False, help="print the solver's log")


class IQPSearcher(BaseSearcher):
    """Minimise the separable plus pairwise sensitivities under every budget (CLADO-style IQP).

    Settings (:class:`IQPSettings`); see the module's docstring for the exact path, the
    local path and the trust region.  On a task the table is the ``pairwise`` sensitivity
    method's (``--sensitivity pairwise``, the default for this searcher); a tabular problem
    gives it as a ``pairwise`` block.
    """

    name = "iqp"
    needs = "sensitivity"
    sensitivity_method = "pairwise"  # the table this searcher asks for when none is given
    deterministic = True
    description = ("integer quadratic program over separable + pairwise (cross-layer) sensitivities (CLADO "
                   "style): exact in HiGHS, local path for large spaces, measured trust region")
    settings_class = IQPSettings

    def check(self, problem) -> None:
        if problem.sensitivity is None and problem.evaluator is not None:
            from bitsearch.problem import ModelEvaluator, missing_members

            if not missing_members(problem.evaluator, ModelEvaluator):
                problem.ensure_sensitivity(self.sensitivity_method)
        super().check(problem)
        if problem.sensitivity.pairwise is None:
            method = problem.sensitivity.method or "table"
            raise SearcherUnsupportedError(
                f"searcher 'iqp' needs pairwise sensitivities: this problem's table ({method}) has none; use "
                f"--sensitivity pairwise on a task, or a problem file with a 'pairwise' block")

    # --- solving -------------------------------------------------------------------------
    def _ilp_settings(self) -> dict:
        c = self.config
        # the ILP's gap: this searcher's mip_gap, exact (0) when it gives none
        return {"solver": c.solver, "time_limit": c.time_limit, "gap": 0.0 if c.mip_gap is None else c.mip_gap,
                "threads": c.threads,
                "verbose": c.verbose}

    def _path(self, problem) -> str:
        c = self.config
        if c.method != "auto":
            if c.method == "mip" and problem.space.granularity == "kernel":
                raise SearcherUnsupportedError("iqp: method 'mip' is for layer granularity (kernel-wise pairs are "
                                               "mean-field products of width fractions); use method 'local' or "
                                               "'auto'")
            return c.method
        if problem.space.granularity == "layer" and product_variables(problem) <= c.exact_limit:
            return "mip"
        return "local"

    def _search(self, problem, run: SearchRun):
        c = self.config
        started = time.perf_counter()
        path = self._path(problem)
        run.emit("progress", step=0, total=2, message="solving the separable ILP")
        separable = ilp.solve(problem, **self._ilp_settings())
        steps: list[Policy] = []
        if path == "mip":
            model = solve_exact(problem, **self._ilp_settings())
        else:
            model = solve_local(problem, separable.policy, rounds=c.local_rounds, ilp_settings=self._ilp_settings(),
                                on_step=steps.append)
        info = {**model.info, "path": path, "separable_objective": problem.sensitivity.predicted_loss(
            problem.space, separable.policy)}
        pairwise_info = problem.sensitivity.pairwise.info
        table_passes = int(pairwise_info.get("forward_passes", 0))
        policy = model.policy
        probe = None
        if c.trust_region and not run.stopped and _has_model(problem):
            probe = _probe_for(problem)
            run.emit("progress", step=1, total=2, message="trust region: measuring candidates")
            policy, info["trust_region"] = self._trust_region(problem, run, probe, path, separable.policy,
                                                              model.policy, steps)
        info["table_forward_passes"] = table_passes
        info["search_forward_passes"] = 0 if probe is None else probe.passes
        info["forward_passes"] = table_passes + info["search_forward_passes"]
        # objective: the table's prediction for the policy returned; bound and status: the
        # model's optimum under the budgets as the solver certified it (gap: how far the
        # returned policy is from it in the model -- large when the trust region measured
        # the model's optimum to be wrong)
        info["model_optimum"] = model.info.get("objective")
        objective = problem.sensitivity.predicted_loss(problem.space, policy)
        info["objective"] = objective
        if info.get("bound") is not None:
            info["gap"] = max(0.0, objective - info["bound"]) / max(abs(objective), 1e-300)
        info["seconds"] = round(time.perf_counter() - started, 4)
        run.info.update(info)
        run.evaluate(policy, step=2, total=2)
        return policy

    def _trust_region(self, problem, run, probe, path, separable: Policy, optimum: Policy, steps=()):
        c = self.config
        space = problem.space
        measured: dict[str, float] = {}

        def loss(policy):
            if policy.key not in measured:
                measured[policy.key] = probe.policy_loss(policy)
            return measured[policy.key]

        candidates = [separable, optimum, *steps]
        incumbent = min(candidates, key=loss)
        if path == "local":  # no exact solve to restrict: the best measured candidate
            return incumbent, {"mode": "measured candidates", "candidates": len(measured),
                               "best_measured_loss": loss(incumbent), "separable_measured_loss": loss(separable)}
        from bitsearch.sensitivity.interactions import units_of

        units = units_of(space)
        chosen = _chosen_pairs(problem.sensitivity.pairwise, units)
        radius = len(units)
        log, accepted = [], 0
        model_problem, model_of = problem, None
        for step in range(c.rounds):
            if run.stopped:
                break
            if c.reanchor and model_of != incumbent.key:
                def told(what, done, total, detail, _step=step):
                    if not run.emit("progress", step=1, total=2, message=f"trust region step {_step + 1}: "
                                                                        f"re-measuring {what} {done}/{total} ({detail})"):
                        raise _Stopped  # the callback said stop: the incumbent stands

                try:
                    anchored = _anchored_table(problem, probe, units, chosen, incumbent, progress=told)
                except _Stopped:
                    log.append({"radius": radius, "result": "stopped while re-measuring"})
                    break
                model_problem, model_of = replace(problem, sensitivity=anchored), incumbent.key
            solution = solve_exact(model_problem, region=(incumbent, radius), **self._ilp_settings())
            candidate = solution.policy
            if candidate.key == incumbent.key:
                log.append({"radius": radius, "result": "model sees nothing better"})
                break
            predicted = (model_problem.sensitivity.predicted_loss(space, incumbent)
                         - model_problem.sensitivity.predicted_loss(space, candidate))
            actual = loss(incumbent) - loss(candidate)
            distance = hamming(space, incumbent, candidate)
            entry = {"radius": radius, "distance": distance, "predicted_drop": predicted, "measured_drop": actual}
            if actual > 0:
                incumbent, accepted = candidate, accepted + 1
                if predicted > 0 and actual >= 0.75 * predicted:
                    radius = min(len(units), radius + 1)
                entry["result"] = "accepted"
            else:
                radius = min(radius, distance) - 1
                entry["result"] = "rejected"
            log.append(entry)
            run.emit("progress", step=1, total=2, message=f"trust region step {step + 1}: {entry['result']}")
            if radius < 1:
                break
        return incumbent, {"mode": "reanchored" if c.reanchor else "float model", "steps": log,
                           "accepted": accepted, "best_measured_loss": loss(incumbent),
                           "separable_measured_loss": loss(separable), "optimum_measured_loss": loss(optimum)}


class _Stopped(Exception):
    """Raised from a progress report when the search's callback asked it to stop."""


def _has_model(problem) -> bool:
    from bitsearch.problem import ModelEvaluator, missing_members

    return problem.evaluator is not None and not missing_members(problem.evaluator, ModelEvaluator)


def _probe_for(problem):
    from bitsearch.sensitivity.probe import LossProbe

    info = problem.sensitivity.pairwise.info
    return LossProbe(problem.evaluator, problem.space, samples=int(info.get("samples_asked", info.get("samples", 512))),
                     batch_size=int(info.get("batch_size", 512)), seed=int(info.get("seed", 0)))


def _chosen_pairs(pairwise: PairwiseTable, units) -> dict[tuple[int, int], str]:
    first = {unit[0]: u for u, unit in enumerate(units)}
    out = {}
    for (a, b), why in {pair: pairwise.selected.get(pair, "given") for pair in pairwise.terms}.items():
        if a in first and b in first:
            u, v = first[a], first[b]
            out[(min(u, v), max(u, v))] = why
    return out


def _anchored_table(problem, probe, units, chosen, anchor: Policy, progress=None) -> SensitivityTable:
    """Singles and pairs measured around ``anchor`` (the model is exact within two units of it);
    ``progress``: as :func:`bitsearch.sensitivity.interactions.measure_terms` takes it."""
    from bitsearch.sensitivity.interactions import measure_terms, unit_weights

    space = problem.space
    reference = {name: int(anchor[name].weight_bits) for unit in units for name in unit}
    probe.set_reference(reference)
    _, singles, terms = measure_terms(probe, space, units, chosen, progress=progress)
    weight = unit_weights(units, singles)
    pairwise = PairwiseTable(space.weight_bits, {(units[u][0], units[v][0]): m for (u, v), m in terms.items()},
                             reference, {})
    table = problem.sensitivity
    return SensitivityTable(space.weight_bits, weight, table.act_bits, table.act, method="pairwise@anchor",
                            pairwise=pairwise)

