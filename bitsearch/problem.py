"""The Problem: a space, its cost models, its budgets, and what to optimise.

Searchers read only the Problem.  What to optimise is an evaluator (a task scored by
post-training quantization, optionally fine-tuned), a sensitivity table (estimated loss
increase per unit and width), or both.  ``problem.evaluate(policy)`` scores with the
evaluator when there is one and with the table otherwise; higher ``score`` is better.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from .budget import Budget, BudgetSpec, check_feasible, format_cost, parse_budget, resolve_budget
from .cost import CostModel, make_cost_model
from .errors import UserInputError
from .policy import Policy, validate_policy
from .sensitivity.table import SensitivityTable
from .space import SearchSpace

REPORTED_COSTS = ("size", "bops", "energy", "bitfusion")


@dataclass
class Problem:
    space: SearchSpace
    costs: Mapping[str, CostModel]
    budgets: tuple[Budget, ...] = ()
    evaluator: Any = None
    sensitivity: SensitivityTable | None = None
    task: str = ""
    info: dict = field(default_factory=dict)
    # width multiplier -> the same problem for the model built at that width (same
    # absolute budgets); set when the problem comes from a task.  Used by uniform-width.
    at_width: Callable[[float], "Problem"] | None = field(default=None, repr=False)

    def __post_init__(self):
        self.costs = dict(self.costs)
        self.budgets = tuple(self.budgets)
        for budget in self.budgets:
            if budget.cost not in self.costs:
                raise UserInputError(f"budget {budget.spec!r} names cost {budget.cost!r}, which this problem "
                                     f"does not price (it prices {', '.join(self.costs)})")
        for model in self.costs.values():
            model.validate(self.space)
        if self.sensitivity is not None:
            self.sensitivity.check_covers(self.space)
        check_feasible(self.space, self.costs, self.budgets)

    # --- construction -----------------------------------------------------------------
    @classmethod
    def build(cls, space: SearchSpace, budgets: Iterable[str | BudgetSpec] = (), *,
              evaluator=None, sensitivity: SensitivityTable | None = None,
              latency_table: str | None = None, cost_models: Mapping[str, CostModel] | None = None,
              report: Iterable[str] = REPORTED_COSTS, task: str = "") -> "Problem":
        """Resolve budget strings against ``space`` and collect the cost models they need.

        ``cost_models`` adds or overrides models (e.g. a :class:`TableCost`);
        ``report`` names the analytic costs to report beside the budgeted ones.
        """
        models: dict[str, CostModel] = {}
        for name in report:
            models[name] = make_cost_model(name)
        if latency_table:
            models["latency"] = make_cost_model("latency", latency_table=latency_table)
        models.update(cost_models or {})
        specs = [parse_budget(b) if isinstance(b, str) else b for b in budgets]
        for spec in specs:
            if spec.cost not in models:
                models[spec.cost] = make_cost_model(spec.cost, latency_table=latency_table)
        for model in models.values():
            model.validate(space)
        resolved = tuple(resolve_budget(spec, space, models[spec.cost]) for spec in specs)
        return cls(space, models, resolved, evaluator=evaluator, sensitivity=sensitivity, task=task)

    # --- costs and budgets ------------------------------------------------------------
    def cost_of(self, policy: Policy) -> dict[str, float]:
        return {name: model.cost(self.space, policy) for name, model in self.costs.items()}

    def violations(self, policy: Policy, costs: Mapping[str, float] | None = None) -> list[str]:
        costs = costs if costs is not None else self.cost_of(policy)
        return [f"{b.cost} = {format_cost(costs[b.cost], b.unit)} > {format_cost(b.limit, b.unit)} ({b.spec})"
                for b in self.budgets if not b.allows(costs[b.cost])]

    def fits(self, policy: Policy) -> bool:
        return not self.violations(policy)

    def validate(self, policy: Policy) -> Policy:
        return validate_policy(policy, self.space)

    # --- scoring ----------------------------------------------------------------------
    @property
    def objective(self) -> str:
        """``top1`` (evaluator, higher is better), ``sensitivity`` (table, lower is
        better), or ``none`` (a shape-only problem: only costs can be compared)."""
        if self.evaluator is not None:
            return getattr(self.evaluator, "metric", "top1")
        if self.sensitivity is not None:
            return "sensitivity"
        return "none"

    def evaluate(self, policy: Policy) -> dict[str, float]:
        """Metrics of ``policy``: the evaluator's (``top1``, ``loss``...) and the table's."""
        metrics: dict[str, float] = {}
        if self.evaluator is not None:
            metrics.update(self.evaluator.evaluate(policy))
        if self.sensitivity is not None:
            metrics["sensitivity"] = self.sensitivity.loss(self.space, policy)
        return metrics

    def score(self, metrics: Mapping[str, float]) -> float:
        """Higher is better: the evaluator's metric, or minus the estimated loss increase."""
        objective = self.objective
        if objective == "none":
            return 0.0
        if objective == "sensitivity":
            return -float(metrics["sensitivity"])
        return float(metrics[objective])

    def budgets_dicts(self) -> list[dict]:
        return [b.to_dict() for b in self.budgets]

    def describe(self) -> str:
        budgets = ", ".join(str(b) for b in self.budgets) or "no budget"
        return (f"{self.space.model_name or 'model'}: {len(self.space.layers)} layers, "
                f"{self.space.granularity} granularity, {len(self.space.weight_units())} weight units; {budgets}")
