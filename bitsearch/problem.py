"""The Problem: a space, its cost models, its budgets, and what to optimise.

Searchers read only the Problem.  What to optimise is an evaluator (a model scored by
post-training quantization, optionally fine-tuned), a sensitivity table (estimated loss
increase per unit and width), or both.  ``problem.evaluate(policy)`` scores with the
evaluator when there is one and with the table otherwise; ``problem.score(metrics)`` turns
metrics into one number where higher is always better (minus the metric when the
evaluator's metric is lower-is-better, such as a loss or a perplexity).

What an evaluator is, is written down here as three protocols, each adding to the last:

* :class:`Evaluator` -- what every searcher may read: ``metric``, ``higher_is_better``,
  ``metric_kind`` and ``evaluate(policy)``.  A third-party evaluator needs these four only.
* :class:`ModelEvaluator` -- an evaluator with a torch model behind it: the float model,
  an example input, calibration batches, the loss of a batch, the float model's metrics,
  the scored (fake-quantized, calibrated) model of a policy, any model's metrics, and the
  batches sensitivities are estimated on.  Sensitivity estimation, the RL env's reference
  and ``bitsearch eval`` use these.
* :class:`TrainableEvaluator` -- a model evaluator that can also train: training batches
  (re-iterable, one pass per epoch), one training step, and the learning rate and weight
  decay short trainings start from.  ``fracbits``, ``bmpq`` and fine-tuned scoring use it.

:class:`bitsearch.evaluate.Evaluator` (a built-in or user task) and
:class:`bitsearch.evaluate.ModelEvaluator` (a trained model with loaders, from
:func:`bitsearch.problem_for_model`) implement all three.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Protocol, runtime_checkable

from .budget import Budget, BudgetSpec, check_feasible, format_cost, parse_budget, resolve_budget
from .cost import CostModel, make_cost_model
from .errors import UserInputError
from .policy import Policy, validate_policy
from .sensitivity.table import SensitivityTable
from .space import SearchSpace

REPORTED_COSTS = ("size", "bits", "bops", "energy", "bitfusion")


@runtime_checkable
class Evaluator(Protocol):
    """What every evaluator provides (all a searcher may read from ``problem.evaluator``).

    ``metric``: the key of :meth:`evaluate`'s dict that searchers optimise (``"top1"``,
    ``"loss"``, ``"perplexity"``...); ``higher_is_better``: its direction;
    ``metric_kind``: how policies are scored, recorded beside the metrics (``"ptq"``
    for post-training quantization with calibration, ``"ptq+ft3"`` after 3 epochs of
    fine-tuning, or anything an evaluator of your own says).  ``evaluate(policy)``
    returns the metrics of ``policy`` (numbers; the same policy, the same numbers)."""

    metric: str
    higher_is_better: bool
    metric_kind: str

    def evaluate(self, policy: Policy) -> Mapping[str, float]: ...


@runtime_checkable
class ModelEvaluator(Evaluator, Protocol):
    """An evaluator with a torch model behind it.

    ``model``: the trained float model (eval mode; never modified: every use copies it).
    ``example_input``: one batch of model inputs (a tensor, or a tuple of arguments), for
    discovery and cost counting.  ``calibration``: the inputs activation ranges are
    calibrated on (a tensor, or an iterable of batches; re-iterable).
    ``loss(model, batch)``: the training loss of one batch, a scalar tensor (the mean over
    the batch), for the Hessian and bit-gradient sensitivities.
    ``sensitivity_batches(samples, batch_size, seed)``: at most ``samples`` samples as a
    list of batches (held in memory: estimators pass over them many times).
    ``float_metrics()``: the float model's metrics.  ``quantized_model(policy)``: the model
    as :meth:`evaluate` scores it (a fresh copy).  ``score_model(model)``: the metrics of
    any model of the same architecture (e.g. one a searcher fine-tuned).
    ``cache_key``: names the trained weights (and data) for on-disk caches of sensitivity
    tables; None when unknown (nothing is cached on disk).  ``model_name`` names the model
    in policies."""

    model: Any
    model_name: str
    example_input: Any
    calibration: Any
    cache_key: str | None

    def loss(self, model, batch) -> Any: ...

    def sensitivity_batches(self, samples: int, batch_size: int, seed: int) -> list: ...

    def float_metrics(self) -> Mapping[str, float]: ...

    def quantized_model(self, policy: Policy) -> Any: ...

    def score_model(self, model) -> Mapping[str, float]: ...


@runtime_checkable
class TrainableEvaluator(ModelEvaluator, Protocol):
    """A model evaluator that can also train (what ``fracbits``, ``bmpq`` and fine-tuned
    scoring need).

    ``train_batches(seed, batch_size=None, samples=None)``: the training data as a
    re-iterable (each pass one epoch, its ``len()`` the batches per epoch), at most
    ``samples`` samples per epoch; ``batch_size`` and ``seed`` apply where the evaluator
    batches and shuffles the data itself (a user's loader keeps its own).
    ``train_step(model, batch, optimizer)``: one step (zero the gradients, compute the
    loss, back-propagate, ``optimizer.step()``), returning the loss as a float; a searcher
    may hand in a wrapped model and optimizer.  ``finetune_lr``: the learning rate short
    trainings of the quantized model use by default; ``weight_decay``: theirs.
    ``trainable``: whether there are training batches at all (an evaluator of a model
    given without a train loader has the members, but they raise)."""

    trainable: bool
    finetune_lr: float
    weight_decay: float

    def train_batches(self, seed: int, batch_size: int | None = None, samples: int | None = None) -> Any: ...

    def train_step(self, model, batch, optimizer) -> float: ...


EVALUATOR_KINDS: dict[str, type] = {"evaluator": Evaluator, "model": ModelEvaluator, "trainable": TrainableEvaluator}
WHAT_KINDS_NEED = {
    "evaluator": "an evaluator (a task with data, or problem_for_model(..., evaluate=...))",
    "model": "a model evaluator (a task with data, or problem_for_model with calibration batches)",
    "trainable": ("a trainable evaluator (a task with data, or problem_for_model(..., train_loader=...) with "
                  "an optional train_step)"),
}


def protocol_members(protocol: type) -> tuple[str, ...]:
    """The attributes and methods ``protocol`` (one of the evaluator protocols) declares."""
    names: list[str] = []
    for klass in reversed(protocol.__mro__):
        if klass.__module__ != __name__:
            continue  # Protocol, Generic, object
        names += [n for n in getattr(klass, "__annotations__", {}) if not n.startswith("_")]
        names += [n for n, v in vars(klass).items() if callable(v) and not n.startswith("_")]
    return tuple(dict.fromkeys(names))


def missing_members(evaluator, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``evaluator`` lacks (empty when it has them all).

    Looked up on the class first, so that a lazy property (a task's model, trained on
    first use) is not run by the check."""
    kind = type(evaluator)
    return [n for n in protocol_members(protocol) if not hasattr(kind, n) and not hasattr(evaluator, n)]


def check_evaluator(evaluator, kind: str = "evaluator", *, who: str = "this problem") -> None:
    """Raise :class:`UserInputError` naming what ``evaluator`` lacks to be of ``kind``
    (``evaluator``, ``model`` or ``trainable``), in one line."""
    protocol = EVALUATOR_KINDS[kind]
    if evaluator is None:
        raise UserInputError(f"{who} needs {WHAT_KINDS_NEED[kind]}; this problem has none")
    missing = missing_members(evaluator, protocol)
    if missing:
        raise UserInputError(f"{who} needs {WHAT_KINDS_NEED[kind]}; the evaluator "
                             f"({type(evaluator).__name__}) lacks {', '.join(missing)} "
                             f"(see bitsearch.problem.{protocol.__name__})")
    if kind == "evaluator":
        if not isinstance(evaluator.metric, str) or not evaluator.metric:
            raise UserInputError(f"the evaluator's metric must be a non-empty string, got {evaluator.metric!r}")
        if not isinstance(evaluator.higher_is_better, bool):
            raise UserInputError(f"the evaluator's higher_is_better must be True or False, got "
                                 f"{evaluator.higher_is_better!r}")


def evaluator_is(evaluator, kind: str) -> bool:
    """Whether ``evaluator`` has every member of the protocol ``kind``."""
    return evaluator is not None and not missing_members(evaluator, EVALUATOR_KINDS[kind])


@dataclass
class Problem:
    space: SearchSpace
    costs: Mapping[str, CostModel]
    budgets: tuple[Budget, ...] = ()
    evaluator: Evaluator | None = None
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
        if self.evaluator is not None:
            check_evaluator(self.evaluator)
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
            models[name] = make_cost_model(name, space=space)
        if latency_table:
            models["latency"] = make_cost_model("latency", latency_table=latency_table)
        models.update(cost_models or {})
        specs = [parse_budget(b) if isinstance(b, str) else b for b in budgets]
        for spec in specs:
            if spec.cost not in models:
                models[spec.cost] = make_cost_model(spec.cost, latency_table=latency_table, space=space)
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
        """The metric searchers optimise: the evaluator's (``top1``, ``loss``,
        ``perplexity``...), ``sensitivity`` (the table's estimated loss increase), or
        ``none`` (a shape-only problem: only costs can be compared)."""
        if self.evaluator is not None:
            return self.evaluator.metric
        if self.sensitivity is not None:
            return "sensitivity"
        return "none"

    @property
    def higher_is_better(self) -> bool:
        """The direction of :attr:`objective`: the evaluator's; a sensitivity is lower-is-better."""
        if self.evaluator is not None:
            return self.evaluator.higher_is_better
        return self.objective != "sensitivity"

    @property
    def metric_kind(self) -> str | None:
        """How the evaluator scores policies (``ptq``, ``ptq+ft3``...), None without one."""
        return None if self.evaluator is None else self.evaluator.metric_kind

    def evaluate(self, policy: Policy) -> dict[str, float]:
        """Metrics of ``policy``: the evaluator's (``top1``, ``loss``...) and the table's.

        A policy that does not state its scale granularity is scored with the space's."""
        metrics: dict[str, float] = {}
        if policy.scale_group is None and self.space.scale_group is not None:
            policy = replace(policy, scale_group=self.space.scale_group)
        if self.evaluator is not None:
            scored = self.evaluator.evaluate(policy)
            if self.evaluator.metric not in scored:
                raise UserInputError(f"the evaluator's metric {self.evaluator.metric!r} is not among the keys its "
                                     f"evaluate returned ({', '.join(map(str, scored)) or 'none'}); give metric= one "
                                     f"of them")
            metrics.update(scored)
        if self.sensitivity is not None:
            metrics["sensitivity"] = self.sensitivity.predicted_loss(self.space, policy)
        return metrics

    def score(self, metrics: Mapping[str, float]) -> float:
        """One number, higher is better: the objective's value, negated when it is
        lower-is-better (a loss, a perplexity, the estimated loss increase)."""
        objective = self.objective
        if objective == "none":
            return 0.0
        value = float(metrics[objective])
        return value if self.higher_is_better else -value

    # --- what searchers need ------------------------------------------------------------
    def lacks(self, needs: str) -> str:
        """Empty when this problem has what a searcher that ``needs`` (``evaluator``,
        ``trainable``, ``sensitivity``, ``any``, ``nothing``) must have; else the rest of a
        one-line message saying what is missing and how to give it.  A ``sensitivity``
        searcher on a problem with a model evaluator but no table gets one estimated here
        (Hessian, as the command line does)."""
        evaluator = self.evaluator
        if needs == "evaluator" and evaluator is None:
            return ("scores policies: it needs an evaluator (a task with data, or problem_for_model(..., "
                    "evaluate=...)); this problem has only " + ("a sensitivity table" if self.sensitivity is not None
                                                                else "costs"))
        if needs == "trainable":
            if evaluator is None or missing_members(evaluator, TrainableEvaluator) or not evaluator.trainable:
                what = ("no evaluator" if evaluator is None else
                        "a model without training data" if not missing_members(evaluator, TrainableEvaluator)
                        else f"an evaluator that cannot train ({type(evaluator).__name__})")
                return ("trains the model: it needs training batches and a training step (a task with data, or "
                        "problem_for_model(..., train_loader=..., train_step=...), train_step defaulting to "
                        f"cross-entropy on (x, y) batches); this problem has {what}")
        if needs == "sensitivity" and self.sensitivity is None:
            if evaluator is not None and not missing_members(evaluator, ModelEvaluator):
                self.ensure_sensitivity()
            else:
                return ("needs a sensitivity table: --sensitivity hessian|bitgrad|empirical on a task, a --problem "
                        "file, or problem_for_model(..., calibration=...) with a model (the table is estimated on "
                        "its calibration batches)")
        if needs == "any" and self.objective == "none":
            return ("needs something to optimise: a task with data (an evaluator), problem_for_model(..., "
                    "evaluate=...), or a sensitivity table (--sensitivity); this problem only has costs")
        return ""

    def ensure_sensitivity(self, method: str = "hessian", **settings) -> SensitivityTable:
        """The sensitivity table, estimated by ``method`` from the model evaluator when the
        problem has none yet (then kept on the problem)."""
        if self.sensitivity is None:
            check_evaluator(self.evaluator, "model", who=f"estimating {method} sensitivities")
            from . import sensitivity as sensitivity_module

            table = sensitivity_module.estimate(self.evaluator, self.space, method, **settings)
            table.check_covers(self.space)
            self.sensitivity = table
        return self.sensitivity

    def budgets_dicts(self) -> list[dict]:
        return [b.to_dict() for b in self.budgets]

    def describe(self) -> str:
        budgets = ", ".join(str(b) for b in self.budgets) or "no budget"
        return (f"{self.space.model_name or 'model'}: {len(self.space.layers)} layers, "
                f"{self.space.granularity} granularity, {self.space.num_weight_units()} weight units; {budgets}")
