"""From a task name to a Problem: the glue used by the command line and the bench.

Imports torch (through the task, discovery and the evaluator) only when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from .problem import Problem
from .space import SearchSpace

DEFAULT_WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8)
DEFAULT_ACT_BITS = (8,)


@dataclass(frozen=True)
class SpaceOptions:
    """How to turn a model into a search space."""

    granularity: str = "layer"
    weight_bits: tuple[int, ...] = DEFAULT_WEIGHT_BITS
    act_bits: tuple[int, ...] | None = DEFAULT_ACT_BITS
    pin_first_last: int | None = None


@dataclass(frozen=True)
class ProblemOptions:
    """Everything besides the space: budgets, how policies are scored, which tables."""

    budgets: tuple[str, ...] = ()
    finetune_epochs: int = 0
    width_mult: float = 1.0
    latency_table: str | None = None
    sensitivity: str | None = None  # estimate a table with this method (hessian, bitgrad, empirical)
    evaluator: bool = True  # score with the task's evaluator when the task has data
    sensitivity_settings: dict = field(default_factory=dict)


def space_for_task(task, options: SpaceOptions = SpaceOptions(), *, width_mult: float = 1.0) -> SearchSpace:
    """The search space of ``task``'s model at ``width_mult``."""
    from .discover import discover

    model = task.trained_model(width_mult) if not task.shape_only else task.build_model(width_mult)
    name = task.name if width_mult == 1.0 else f"{task.name}@x{width_mult:g}"
    return discover(model, task.example_input(1), granularity=options.granularity,
                    weight_bits=options.weight_bits, act_bits=options.act_bits,
                    pin_first_last=options.pin_first_last, model_name=name)


def problem_for_task(task, space_options: SpaceOptions = SpaceOptions(),
                     options: ProblemOptions = ProblemOptions(), *, progress: bool = False,
                     budgets_from: Problem | None = None) -> Problem:
    """Build the Problem of ``task`` (a name or a Task).

    ``budgets_from``: reuse that problem's absolute budgets instead of resolving
    ``options.budgets`` (what uniform-width does when it rebuilds the model wider).
    """
    from .tasks import get_task

    if isinstance(task, str):
        task = get_task(task)
    if not task.shape_only:
        task.trained_model(options.width_mult, progress=progress)  # train once, visibly, before discovery
    space = space_for_task(task, space_options, width_mult=options.width_mult)
    evaluator = None
    if options.evaluator and not task.shape_only:
        from .evaluate import Evaluator

        evaluator = Evaluator(task, width_mult=options.width_mult, finetune_epochs=options.finetune_epochs)
    sensitivity = None
    if options.sensitivity:
        from . import sensitivity as sensitivity_module

        sensitivity = sensitivity_module.estimate(task, space, options.sensitivity,
                                                  width_mult=options.width_mult, **options.sensitivity_settings)
    if budgets_from is not None:
        problem = Problem.build(space, (), evaluator=evaluator, sensitivity=sensitivity,
                                latency_table=options.latency_table, task=task.name)
        for budget in budgets_from.budgets:
            if budget.cost not in problem.costs:
                problem.costs[budget.cost] = budgets_from.costs[budget.cost]
        problem = Problem(problem.space, problem.costs, budgets_from.budgets, evaluator=evaluator,
                          sensitivity=sensitivity, task=task.name)
    else:
        problem = Problem.build(space, options.budgets, evaluator=evaluator, sensitivity=sensitivity,
                                latency_table=options.latency_table, task=task.name)
    problem.info["width_mult"] = options.width_mult
    problem.info["space_options"] = space_options
    problem.info["problem_options"] = options

    def at_width(mult: float, _task=task, _base=problem) -> Problem:
        from dataclasses import replace

        return problem_for_task(_task, space_options, replace(options, width_mult=float(mult)),
                                progress=progress, budgets_from=_base)

    problem.at_width = at_width
    return problem


def needs_sensitivity(searcher_cls) -> bool:
    return getattr(searcher_cls, "needs", "any") == "sensitivity"


def parse_settings(pairs: Iterable[str]) -> dict:
    """``key=value`` strings into a settings dict (values parsed as JSON when they can be)."""
    import json

    from .errors import UserInputError

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserInputError(f"setting {pair!r} does not parse: expected KEY=VALUE, e.g. samples=100")
        key, value = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
