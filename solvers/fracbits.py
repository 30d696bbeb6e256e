"""``fracbits``: differentiable bitwidth search with fractional widths (after FracBits,
Yang & Jin).

Every weight decision unit (a layer or tied group at layer granularity, a kernel at kernel
granularity) gets a real-valued width, and so does every activation group when the space
searches activation widths.  The forward pass quantizes at the two neighbouring choices
of each width and mixes them by the fractional part (:mod:`bitsearch.quant.fractional`),
so the task loss has a gradient in every width.  The weights train alongside
(straight-through rounding), as published, when the problem's evaluator fine-tunes the
policies it scores; under post-training scoring (the default) they stay fixed, so the
widths learn from the loss of the model that is scored (``train_weights`` sets either).

**Differentiable cost.**  Each budgeted cost model is relaxed by interpolating its
``layer_cost`` linearly between the widths of the space (bilinearly in weight and
activation width when both are searched).  At kernel granularity a ``sum`` model charges
each kernel its share ``layer_cost / kernels`` at its own width; a ``max`` model (measured
latency tables) charges the layer at its widest kernel.  At integer widths the relaxed
cost equals ``CostModel.cost`` (up to float rounding).

**Penalty.**  ``penalty * |max_b cost_b / limit_b - 1|``: the binding budget is pulled to
its limit from either side, the others only matter once they bind.  The strength grows
geometrically from ``penalty_start`` to ``penalty_end`` over the search, so the task loss
shapes the allocation early and the budget dominates at the end.  The widths start, by
default, at the uniform fractional width whose relaxed cost is exactly the tightest
budget (bisection), so the search moves bits between units at the budget rather than
spending its epochs walking down to it.

**Projection.**  Rounding the learned widths can break a budget, so the integer policy
comes from a projection that keeps every budget exactly: each unit prefers the choices
near its learned width (cost ``(choice - learned)**2``); starting from the nearest choice,
a greedy walk lowers the unit with the least preference lost per budget excess removed
until every budget holds (a lowered width never costs more under the shipped cost
models; the walk ends, at worst, at the cheapest policy, which ``Problem`` has checked
against every budget), then raises units by the least preference lost per budget used
while everything still fits, so the policy ends near the budget, not far under.  Costs in
the walk are exact per-layer tables from ``CostModel.layer_cost``; the result is checked
with ``problem.fits`` (which prices it with ``CostModel.cost``), and any float-rounding
excess is walked off.  Optional fine-tuning epochs at the integer policy follow; their
test accuracy is reported in ``result.info`` (the returned policy is scored by the
problem's evaluator like every searcher's).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np

from bitsearch.budget import format_cost
from bitsearch.cost import UnitTables, unit_tables
from bitsearch.encoding import Encoding
from bitsearch.errors import InfeasibleBudgetError, SearcherSettingsError, SearcherUnsupportedError
from bitsearch.policy import Policy
from bitsearch.search import BaseSearcher, SearchRun
from bitsearch.settings import SearcherSettings, setting

from .refine import refine_policy

__all__ = ["FracBitsSearcher", "FracBitsSettings", "relaxed_cost_tables", "project_to_budget"]

PROJECTIONS = ("auto", "knapsack", "greedy")


# --- cost tables -------------------------------------------------------------------------
def relaxed_cost_tables(tables: UnitTables, b: int) -> dict[int, np.ndarray]:
    """``table[i][w, a]``: cost of free layer ``i`` under budget ``b`` at weight choice ``w``
    and activation choice ``a`` (``space.act_choices``), per kernel at kernel granularity
    for ``sum`` models (each kernel pays its share at its own width); from the problem's
    :func:`~bitsearch.cost.unit_tables`."""
    enc = tables.encoding
    share = enc.granularity == "kernel" and tables.per_kernel[b] == "sum"
    space = enc.space
    return {int(i): tables.layer_costs[b, k] / space.layers[i].kernels if share else tables.layer_costs[b, k]
            for k, i in enumerate(enc.free_layers.tolist())}


# --- projection --------------------------------------------------------------------------
class _State:
    """An integer policy as choice indices, with exact per-layer costs for each budget."""

    def __init__(self, problem, encoding: Encoding, weight_index, act_index):
        self.problem = problem
        self.space = space = problem.space
        self.encoding = encoding
        self.groups = encoding.groups
        self.w = np.array(weight_index, dtype=int)
        self.a = np.array(act_index, dtype=int)
        self.budgets = problem.budgets
        self.models = [problem.costs[b.cost] for b in self.budgets]
        units = unit_tables(problem, encoding)
        self.tables = [relaxed_cost_tables(units, b) for b in range(units.n_budgets)]
        self.fixed = units.pinned
        self.limits = units.limits
        self.kernel = space.granularity == "kernel"
        # free layer -> its weight units (indices into w), and act group
        self.layer_units = {i: np.arange(sl.start, sl.stop) for i, sl in encoding.layer_slices.items()}
        self.layer_group = {i: int(g) for i, g in enumerate(encoding.layer_group.tolist()) if g >= 0}
        self.layer_cost = {i: self._layer_cost(i, self.w, self.a) for i in space.free_layers()}
        # per unit: its activation group, and for every budget whose cost is a sum over
        # units, the unit's cost at each (weight, activation) choice
        self.unit_group = encoding.unit_group if space.act_searched else np.zeros(encoding.n_weight_units, dtype=int)
        self.separable = units.separable.tolist()
        self.unit_tables = [np.ascontiguousarray(units.costs[b].transpose(1, 2, 0))
                            if sep and encoding.n_weight_units else None
                            for b, sep in enumerate(self.separable)]

    def act_of(self, i: int, a) -> int:
        return int(a[self.layer_group[i]]) if self.space.act_searched else 0

    def _layer_cost(self, i: int, w, a) -> np.ndarray:
        """Costs of free layer ``i`` for every budget at indices ``w``, ``a``."""
        ai = self.act_of(i, a)
        units = self.layer_units[i]
        out = np.empty(len(self.budgets))
        for b, (model, tables) in enumerate(zip(self.models, self.tables)):
            column = tables[i][:, ai]
            if not self.kernel:
                out[b] = column[w[units[0]]]
            elif model.per_kernel == "sum":
                out[b] = column[w[units]].sum()
            else:
                out[b] = column[w[units].max()]
        return out

    def totals(self) -> np.ndarray:
        return self.fixed + sum(self.layer_cost.values())

    def moves(self, direction: int):
        """The one-step moves, in blocks ``(kind, indices, new, delta)``: ``indices`` a list
        of tuples of unit (or group) indices moved together, ``new`` their new choice, and
        ``delta[k, b]`` the cost change of move ``k`` for budget ``b``.

        Single weight units come in one vectorised block (kind ``"w"``); at kernel
        granularity under a ``max`` cost model, lowering moves also take every kernel of a
        layer at its widest choice together (lowering one alone may save nothing);
        kind ``"a"`` moves an activation group."""
        blocks = []
        n_w = self.encoding.n_weight_choices
        new = self.w + direction
        units = np.nonzero((new >= 0) & (new < n_w))[0]
        if len(units):
            ag = self.a[self.unit_group[units]] if self.space.act_searched else np.zeros(len(units), dtype=int)
            delta = np.empty((len(units), len(self.budgets)))
            for b, table in enumerate(self.unit_tables):
                if table is not None:
                    delta[:, b] = table[units, new[units], ag] - table[units, self.w[units], ag]
                else:
                    for k, u in enumerate(units):
                        w2 = self.w.copy()
                        w2[u] = new[u]
                        i = int(self.encoding.unit_layer[u])
                        delta[k, b] = self._layer_cost(i, w2, self.a)[b] - self.layer_cost[i][b]
            blocks.append(("w", units, new[units], delta))
        extra = []
        if direction < 0 and self.kernel and not all(self.separable):
            for i, layer_units in self.layer_units.items():
                layer_units = np.asarray(layer_units)
                widest = layer_units[self.w[layer_units] == self.w[layer_units].max()]
                if len(widest) > 1 and self.w[widest[0]] + direction >= 0:
                    w2 = self.w.copy()
                    w2[widest] += direction
                    extra.append(("g", tuple(int(u) for u in widest), self.w[widest[0]] + direction,
                                  self._layer_cost(i, w2, self.a) - self.layer_cost[i]))
        if self.space.act_searched:
            n_a = self.encoding.n_act_choices
            for j, group in enumerate(self.groups):
                a_new = self.a[j] + direction
                if 0 <= a_new < n_a:
                    a2 = self.a.copy()
                    a2[j] = a_new
                    extra.append(("a", (j,), a_new,
                                  sum(self._layer_cost(i, self.w, a2) - self.layer_cost[i] for i in group)))
        for kind, indices, a_new, delta in extra:
            blocks.append((kind, [indices], np.array([a_new]), np.asarray(delta).reshape(1, -1)))
        return blocks

    def apply(self, kind: str, indices, new: int) -> None:
        if kind in ("w", "g"):
            self.w[list(indices)] = new
            touched = sorted({i for u in indices for i in self.encoding.unit_layers[u]}) if not self.kernel \
                else sorted(set(self.encoding.unit_layer[list(indices)].tolist()))
        else:
            self.a[indices[0]] = new
            touched = self.groups[indices[0]]
        for i in touched:
            self.layer_cost[i] = self._layer_cost(i, self.w, self.a)

    def policy(self) -> Policy:
        return self.encoding.decode(self.w, self.a if self.space.act_searched else None)


def project_to_budget(problem, learned_weight_bits, learned_act_bits=None, *, fill: bool = True,
                      method: str = "auto"):
    """An integer policy near the learned fractional widths that keeps every budget.

    ``learned_weight_bits``: one real width per weight unit (``space.weight_units()``);
    ``learned_act_bits``: one per activation group when activations are searched.
    ``method``: ``knapsack`` solves the projection exactly (least total
    ``(choice - learned)**2`` within the budget) with the multiple-choice knapsack of
    ``bitsearch.solvers.mckp``, which needs one budget over costs that add up per weight
    unit and activations not searched; ``greedy`` walks widths down (and up, with
    ``fill``) one choice at a time and handles any number of budgets; ``auto`` takes the
    knapsack when it applies.  Returns ``(policy, info)``.  Raises
    :class:`InfeasibleBudgetError` when no policy keeps the budgets jointly.
    """
    if method not in PROJECTIONS:
        raise SearcherSettingsError(f"projection {method!r} is not 'auto', 'knapsack' or 'greedy'")
    space = problem.space
    encoding = Encoding(space)
    w_choices = np.asarray(space.weight_bits, dtype=float)
    learned_w = np.asarray(learned_weight_bits, dtype=float).reshape(-1)
    pref_w = (w_choices[None, :] - learned_w[:, None]) ** 2
    w0 = np.argmin(pref_w, axis=1)
    if space.act_searched:
        a_choices = np.asarray(space.act_bits, dtype=float)
        learned_a = np.asarray(learned_act_bits, dtype=float).reshape(-1)
        pref_a = (a_choices[None, :] - learned_a[:, None]) ** 2
        a0 = np.argmin(pref_a, axis=1)
    else:
        pref_a = np.zeros((0, 1))
        a0 = np.zeros(0, dtype=int)
    state = _State(problem, encoding, w0, a0)
    info = {"method": "greedy", "lowered": 0, "raised": 0, "rounding_fixes": 0}
    knapsack = len(state.budgets) == 1 and state.separable[0] and not space.act_searched and encoding.n_weight_units > 0
    if method == "knapsack" and not knapsack:
        raise SearcherUnsupportedError("the knapsack projection needs exactly one budget over a cost that adds up "
                                    "per weight unit, and activations not searched; use 'greedy'")
    if method != "greedy" and knapsack:
        from .mckp import KnapsackInfeasible, solve_mckp

        try:
            solution = solve_mckp(pref_w, state.unit_tables[0][:, :, 0], float(state.limits[0] - state.fixed[0]))
        except KnapsackInfeasible:
            pass  # the greedy walk below raises the error with the costs named
        else:
            state.w[:] = solution.choice
            state.layer_cost = {i: state._layer_cost(i, state.w, state.a) for i in space.free_layers()}
            info.update(method="knapsack", knapsack=solution.summary())

    def preference(kind, indices, new):
        """Preference lost by each move of a block (negative: closer to the learned widths)."""
        if kind == "w":
            return pref_w[indices, new] - pref_w[indices, state.w[indices]]
        if kind == "g":
            return np.array([sum(pref_w[u, new[0]] - pref_w[u, state.w[u]] for u in indices[0])])
        j = indices[0][0]
        return np.array([pref_a[j, new[0]] - pref_a[j, state.a[j]]])

    def pick(blocks, score_of):
        best, best_score = None, math.inf
        for kind, indices, new, delta in blocks:
            scores = score_of(delta, preference(kind, indices, new))
            if len(scores) == 0:
                continue
            k = int(np.argmin(scores))
            if scores[k] < best_score:
                index = (int(indices[k]),) if kind == "w" else indices[k]
                best, best_score = (kind, index, int(new[k])), scores[k]
        return best

    def lower(limits):
        while True:
            totals = state.totals()
            over = np.maximum(totals - limits, 0.0)
            if not (over > 0).any():
                return

            def score(delta, pref):
                relief = (np.minimum(np.maximum(-delta, 0.0), over) / limits).sum(axis=1)
                return np.where(relief > 0, pref / np.where(relief > 0, relief, 1.0), math.inf)

            best = pick(state.moves(-1), score)
            if best is None:
                bad = [f"{b.cost} {format_cost(c, b.unit)} > {format_cost(b.limit, b.unit)}"
                       for b, c in zip(state.budgets, totals) if c > b.limit]
                raise InfeasibleBudgetError(
                    "no policy keeps every budget jointly: narrowing no width brings "
                    + "; ".join(bad) + " down; raise a budget or allow narrower widths")
            state.apply(*best)
            info["lowered"] += 1

    def raise_(limits):
        while True:
            totals = state.totals()

            def score(delta, pref):
                fits = (totals[None, :] + delta <= limits[None, :]).all(axis=1)
                used = (np.maximum(delta, 0.0) / limits).sum(axis=1) + 1e-12
                return np.where(fits, pref / used, math.inf)

            best = pick(state.moves(+1), score)
            if best is None:
                return
            state.apply(*best)
            info["raised"] += 1

    limits = state.limits.copy()
    lower(limits)
    if fill:
        raise_(limits)
    # the walk sums per-layer tables; the reference is CostModel.cost: walk off any rounding excess
    for _ in range(64):
        policy = state.policy()
        if problem.fits(policy):
            break
        info["rounding_fixes"] += 1
        costs = problem.cost_of(policy)
        totals = np.array([costs[b.cost] for b in state.budgets])
        limits = np.where(totals > state.limits, limits - (totals - state.limits) - 1e-12 * np.abs(limits), limits)
        lower(limits)
    else:  # pragma: no cover - the loop above always converges for finite costs
        raise AssertionError("fracbits: the projection could not bring the policy within budget")
    info["weight_index"] = state.w.tolist()
    return policy, info


# --- the searcher ------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FracBitsSettings(SearcherSettings):
    epochs: int = setting(3, ge=0, help="epochs of search over the training data")
    lr: float | None = setting(None, gt=0, help="Adam learning rate of the weights (None: the evaluator's "
                                                "finetune_lr, a tenth of a task's)")
    bits_lr: float = setting(0.05, gt=0, help="Adam learning rate of the fractional widths")
    init_bits: float | None = setting(None, help="starting width (None: the uniform fractional width whose "
                                                 "relaxed cost meets the tightest budget)")
    penalty_start: float = setting(0.1, gt=0, help="budget-penalty strength at the first step (grows geometrically)")
    penalty_end: float = setting(10.0, gt=0, help="budget-penalty strength at the last step")
    batch_size: int | None = setting(None, ge=1, help="training batch size (None: the task's; a user's "
                                                      "train_loader keeps its own)")
    train_weights: bool | None = setting(None, help="train the weights along with the widths (None: when the "
                                                    "problem's evaluator fine-tunes; with post-training "
                                                    "scoring the weights stay as they are scored)")
    train_samples: int | None = setting(None, ge=1, help="training samples used per epoch (None: all)")
    finetune_epochs: int = setting(0, ge=0, help="epochs of training at the final integer policy "
                                                 "(accuracy in result.info)")
    fill: bool = setting(True, help="let the projection spend leftover budget")
    projection: str = setting("auto", choices=PROJECTIONS, help="integer projection: auto (knapsack when it "
                                                                "applies), knapsack or greedy")
    refine: int = setting(0, ge=0, help="rounds of evaluator-guided local search from the projected policy "
                                        "(0: none, as published)")
    refine_evaluations: int | None = setting(None, ge=1, help="fresh evaluations refine may spend (None: no limit)")


class FracBitsSearcher(BaseSearcher):
    """Learns a fractional width per decision unit with the weights, under a budget
    penalty, then projects to integer widths that keep every budget exactly.

    Trains through the problem's trainable evaluator (:class:`bitsearch.problem.TrainableEvaluator`:
    a task, or ``problem_for_model(..., train_loader=..., train_step=...)``): every step is
    the evaluator's ``train_step`` on the model at the current fractional widths, with the
    budget penalty added to the widths' gradients before the optimizer steps.

    Settings: :class:`FracBitsSettings` (``bitsearch searchers fracbits`` lists them); the
    projection is :func:`project_to_budget`, the optional refinement
    :mod:`bitsearch.solvers.refine`.
    """

    name = "fracbits"
    needs = "trainable"
    granularities = ("layer", "kernel")
    description = "FracBits: fractional widths learned by gradient descent, projected exactly onto the budget"
    settings_class = FracBitsSettings

    def _search(self, problem, run: SearchRun):
        import torch

        space = problem.space
        named = [b for b in space.weight_bits if isinstance(b, str)]
        if named:
            raise SearcherUnsupportedError(f"searcher 'fracbits' relaxes integer widths into each other; named "
                                           f"formats ({', '.join(named)}) are not on that line: use ilp, haq or autoq")
        if min(space.weight_bits) < 2 or (space.act_bits is not None and min(space.act_bits) < 2):
            raise SearcherUnsupportedError("searcher 'fracbits' quantizes symmetrically: widths must be >= 2 bits")
        evaluator = problem.evaluator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.seed)
            learned_w, learned_a, model, fq = self._learn(problem, run, evaluator, torch)
        policy, info = project_to_budget(problem, learned_w, learned_a, fill=self.config.fill,
                                         method=self.config.projection)
        run.info["projection"] = {k: v for k, v in info.items() if k != "weight_index"}
        run.info["learned_weight_bits"] = [round(float(b), 4) for b in learned_w]
        if learned_a is not None:
            run.info["learned_act_bits"] = [round(float(b), 4) for b in learned_a]
        if not problem.fits(policy):  # pragma: no cover - project_to_budget guarantees it
            raise AssertionError(f"fracbits: projected policy over budget: {problem.violations(policy)}")
        if self.config.refine and not run.stopped:  # scores the projected policy first
            policy, run.info["refine"] = refine_policy(problem, run, policy, self.config.refine,
                                                       max_evaluations=self.config.refine_evaluations)
        else:
            run.evaluate(policy, step=1, total=1)
        if self.config.finetune_epochs and not run.stopped:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(run.seed)
                run.info["finetuned"] = self._finetune(problem, run, evaluator, policy, model, fq, torch)
        return policy

    # --- training -------------------------------------------------------------------
    def _setup(self, problem, evaluator, torch):
        from bitsearch.quant.fractional import FractionalQuantModel, calibrate_input_ranges

        space = problem.space
        model = copy.deepcopy(evaluator.model)
        names = space.names
        pins = space.pins
        needs_range = [layer.name for layer in space.layers
                       if (pins[layer.name].act_bits if layer.name in pins else space.act_bits) is not None]
        ranges = calibrate_input_ranges(model, needs_range, evaluator.calibration) if needs_range else {}
        fq = FractionalQuantModel(model, names, space.weight_bits, space.act_bits, ranges, space.scale_group)
        return model, fq

    def _batches(self, evaluator, seed):
        """The training batches, one pass per epoch (``batch_size`` and ``train_samples`` applied)."""
        return evaluator.train_batches(seed, batch_size=self.config.batch_size,
                                       samples=self.config.train_samples)

    def _learn(self, problem, run, evaluator, torch):
        from bitsearch.training import HookedOptimizer, batch_size_of

        s = self.config
        space = problem.space
        encoding = Encoding(space)
        model, fq = self._setup(problem, evaluator, torch)
        relaxed = _RelaxedCost(problem, encoding, torch)
        wmin, wmax = float(min(space.weight_bits)), float(max(space.weight_bits))
        amin, amax = (float(min(space.act_bits)), float(max(space.act_bits))) if space.act_searched else (0, 0)

        def uniform(width):
            w = torch.full((encoding.n_weight_units,), min(max(width, wmin), wmax))
            a = torch.full((encoding.n_act_units,), min(max(width, amin), amax)) if space.act_searched else None
            return w, a

        if s.init_bits is not None:
            init = s.init_bits
        else:
            init = _width_at_budget(relaxed, uniform, min(wmin, amin) if space.act_searched else wmin,
                                    max(wmax, amax), torch)
        start_w, start_a = uniform(init)
        run.info["init_bits"] = round(init, 6)
        bits_w = torch.nn.Parameter(start_w)
        bits_a = torch.nn.Parameter(start_a) if start_a is not None else None
        layout = _Layout(space, encoding)

        train_weights = _trains_weights(s.train_weights, evaluator)
        run.info["train_weights"] = train_weights
        weights = [p for p in model.parameters()] if train_weights else []
        for p in model.parameters():
            p.requires_grad_(train_weights)
        lr = s.lr if s.lr is not None else evaluator.finetune_lr
        opt_w = torch.optim.Adam(weights, lr=lr) if weights else None
        bit_params = [bits_w] + ([bits_a] if bits_a is not None else [])
        opt_b = torch.optim.Adam(bit_params, lr=s.bits_lr)

        batches = self._batches(evaluator, run.seed)
        total_steps = max(1, s.epochs * len(batches))
        state = {"step": 0, "penalty": 0.0}

        def add_penalty():
            """Before each optimizer step: the budget penalty's gradient on the widths."""
            if problem.budgets:
                strength = s.penalty_start * (s.penalty_end / s.penalty_start) ** (
                    state["step"] / max(1, total_steps - 1))
                penalty = strength * torch.abs(torch.max(relaxed.ratios(bits_w, bits_a)) - 1.0)
                penalty.backward()
                state["penalty"] = float(penalty.detach())

        def clamp():
            with torch.no_grad():
                bits_w.clamp_(wmin, wmax)
                if bits_a is not None:
                    bits_a.clamp_(amin, amax)
            state["step"] += 1

        optimizer = HookedOptimizer([opt_w, opt_b], before_step=add_penalty, after_step=clamp)
        relaxed_model = _modules()["relaxed"](fq, layout, bits_w, bits_a)
        model.train()
        epoch_seconds = []
        for epoch in range(s.epochs):
            started = time.perf_counter()
            loss_sum = task_sum = 0.0
            seen = 0
            for batch in batches:
                task_loss = evaluator.train_step(relaxed_model, batch, optimizer)
                n = batch_size_of(batch)
                loss_sum += (task_loss + state["penalty"]) * n
                task_sum += task_loss * n
                seen += n
            epoch_seconds.append(time.perf_counter() - started)
            with torch.no_grad():
                ratios = relaxed.ratios(bits_w, bits_a).tolist()
            run.emit("progress", step=epoch + 1, total=s.epochs,
                     message=f"epoch {epoch + 1}/{s.epochs}: loss {loss_sum / max(1, seen):.4f}, "
                             f"cost/budget {max(ratios) if ratios else 0:.4f}",
                     loss=loss_sum / max(1, seen), task_loss=task_sum / max(1, seen),
                     cost_ratios=ratios, mean_weight_bits=float(bits_w.detach().mean()))
            if run.stopped:
                break
        run.info["epoch_seconds"] = [round(t, 4) for t in epoch_seconds]
        with torch.no_grad():
            run.info["relaxed_cost_ratios"] = [round(r, 6) for r in relaxed.ratios(bits_w, bits_a).tolist()]
        learned_w = bits_w.detach().numpy().astype(float)
        learned_a = None if bits_a is None else bits_a.detach().numpy().astype(float)
        model.eval()
        return learned_w, learned_a, model, fq

    def _finetune(self, problem, run, evaluator, policy, model, fq, torch):
        s = self.config
        bits = policy.as_dict()
        wbits = {name: (b.weight_bits if not b.per_kernel else tuple(b.weight_bits)) for name, b in bits.items()}
        abits = {name: b.act_bits for name, b in bits.items()}
        for p in model.parameters():
            p.requires_grad_(True)
        lr = s.lr if s.lr is not None else evaluator.finetune_lr
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        quantized = _modules()["fixed"](fq, wbits, abits)
        batches = self._batches(evaluator, run.seed + 1)
        model.train()
        for epoch in range(s.finetune_epochs):
            for batch in batches:
                evaluator.train_step(quantized, batch, optimizer)
            run.emit("progress", step=epoch + 1, total=s.finetune_epochs,
                     message=f"fine-tuning epoch {epoch + 1}/{s.finetune_epochs}", phase="finetune")
            if run.stopped:
                break
        model.eval()
        metrics = evaluator.score_model(quantized.eval())
        return {"epochs": s.finetune_epochs, **metrics}


_MODULES: dict = {}


def _modules():
    """The two module wrappers (defined on first use: importing this module needs no torch)."""
    if not _MODULES:
        from torch import nn

        class RelaxedModel(nn.Module):
            """The model at the learned fractional widths, as a module (what ``train_step``
            gets): its forward quantizes every layer at the widths' current values."""

            def __init__(self, fq, layout, bits_w, bits_a):
                super().__init__()
                self.fq, self.layout, self.bits_w, self.bits_a = fq, layout, bits_w, bits_a
                self.net = fq.model  # registered, so train() and eval() reach the model

            def forward(self, x):
                wbits, abits = self.layout.bits(self.bits_w, self.bits_a)
                return self.fq(x, wbits, abits)

        class FixedModel(nn.Module):
            """The model at fixed integer widths through the fractional quantizer (fine-tuning)."""

            def __init__(self, fq, wbits, abits):
                super().__init__()
                self.fq, self.wbits, self.abits = fq, wbits, abits
                self.net = fq.model

            def forward(self, x):
                return self.fq(x, self.wbits, self.abits)

        _MODULES.update(relaxed=RelaxedModel, fixed=FixedModel)
    return _MODULES


def _trains_weights(setting_value, evaluator) -> bool:
    """Whether the search trains the weights with the widths: as set, or (None) exactly when
    the evaluator scores a policy after fine-tuning it.  Under post-training scoring the
    policy is scored on the weights as they are; weights trained along during the search
    absorb the quantization error, so the widths would learn from a loss the scored model
    does not have (on ``digits-cnn`` the training loss at the relaxed widths falls to 0.006
    and the widths stay at the uniform start: docs/crosslayer.md, "FracBits on digits-cnn")."""
    if setting_value is not None:
        return bool(setting_value)
    return bool(getattr(evaluator, "finetune_epochs", 0))


def _width_at_budget(relaxed, uniform, low, high, torch, iterations=50):
    """The uniform fractional width whose relaxed cost meets the tightest budget (bisection;
    the widest width when even that fits, the narrowest when nothing does)."""
    with torch.no_grad():
        if not relaxed.budgets or float(relaxed.ratios(*uniform(high)).max()) <= 1.0:
            return float(high)
        if float(relaxed.ratios(*uniform(low)).max()) >= 1.0:
            return float(low)
        for _ in range(iterations):
            mid = 0.5 * (low + high)
            if float(relaxed.ratios(*uniform(mid)).max()) > 1.0:
                high = mid
            else:
                low = mid
    return float(low)


class _Layout:
    """Maps the learned width vectors onto per-layer widths for the quantized forward
    (through the encoding's layer slices and groups)."""

    def __init__(self, space, encoding: Encoding):
        self.space = space
        self.pinned = space.pins
        self.slices = encoding.layer_slices
        self.group_of = {i: int(g) for i, g in enumerate(encoding.layer_group.tolist()) if g >= 0}
        self.fixed_act = None if space.act_bits is None else space.act_bits[0]

    def bits(self, bits_w, bits_a):
        wbits, abits = {}, {}
        kernel = self.space.granularity == "kernel"
        for i, layer in enumerate(self.space.layers):
            if layer.name in self.pinned:
                pin = self.pinned[layer.name]
                wbits[layer.name] = pin.weight_bits
                abits[layer.name] = pin.act_bits
                continue
            sl = self.slices[i]
            wbits[layer.name] = bits_w[sl] if kernel else bits_w[sl.start]
            abits[layer.name] = bits_a[self.group_of[i]] if self.space.act_searched else self.fixed_act
        return wbits, abits


class _RelaxedCost:
    """The budgeted costs of a fractional policy, differentiable in the widths, as
    ratios ``cost / limit`` (one per budget)."""

    def __init__(self, problem, encoding: Encoding, torch):
        self.torch = torch
        space = problem.space
        self.space = space
        self.budgets = problem.budgets
        self.models = [problem.costs[b.cost] for b in self.budgets]
        units = unit_tables(problem, encoding)
        self.tables = [{i: torch.tensor(t, dtype=torch.float64) for i, t in relaxed_cost_tables(units, b).items()}
                       for b in range(units.n_budgets)]
        self.fixed = units.pinned.tolist()
        self.limits = [b.limit for b in self.budgets]
        self.layout = _Layout(space, encoding)
        self.weight_choices = space.weight_bits
        self.act_choices = space.act_bits if space.act_searched else None

    def _interp(self, table, w, a):
        """Bilinear interpolation of ``table[w, a]`` at fractional widths (``w`` may be a
        vector of kernel widths; ``a`` a scalar tensor or None)."""
        from bitsearch.quant.fractional import choice_interpolation

        torch = self.torch
        wlo, whi, wf = choice_interpolation(w, self.weight_choices)
        wf = wf.to(torch.float64)
        if a is None or self.act_choices is None:
            col = table[:, 0]
            return (1 - wf) * col[wlo] + wf * col[whi]
        alo, ahi, af = choice_interpolation(a, self.act_choices)
        af = af.to(torch.float64)
        low = (1 - wf) * table[wlo, alo] + wf * table[whi, alo]
        high = (1 - wf) * table[wlo, ahi] + wf * table[whi, ahi]
        return (1 - af) * low + af * high

    def costs(self, bits_w, bits_a):
        torch = self.torch
        wbits, abits = self.layout.bits(bits_w, bits_a)
        out = []
        for model, tables, fixed in zip(self.models, self.tables, self.fixed):
            total = torch.tensor(fixed, dtype=torch.float64)
            for i, table in tables.items():
                name = self.space.layers[i].name
                w = wbits[name]
                a = abits[name] if self.space.act_searched else None
                if self.space.granularity == "kernel" and model.per_kernel == "max":
                    total = total + self._interp(table, torch.max(w), a)
                else:
                    total = total + self._interp(table, w, a).sum()
            out.append(total)
        return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)

    def ratios(self, bits_w, bits_a):
        torch = self.torch
        costs = self.costs(bits_w, bits_a)
        if costs.numel() == 0:
            return torch.zeros(1, dtype=torch.float64)
        return costs / torch.tensor(self.limits, dtype=torch.float64)
