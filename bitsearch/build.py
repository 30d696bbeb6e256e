"""From what a user has to a Problem: the glue used by the library, the command line and the bench.

* :func:`problem_for_model` -- a trained ``nn.Module`` you bring, with your data loaders,
  your ``evaluate(model)`` and your metric (of either direction).  The main road.
* :class:`TrainedModel` -- the same arguments as one object: what a user factory
  (``--task mymodels:make``) may return instead of a Task.
* :func:`problem_for_task` -- a task (built in, or ``package.module:factory``): its model
  factory at a width multiplier, its data, its recipe.
* :func:`problem_for` -- either, from a name or an object (what ``--task`` resolves).

Imports torch (through the model, discovery and the evaluator) only when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .errors import UserInputError
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
    sensitivity: str | None = None  # estimate a table with this method (hessian, bitgrad, empirical, pairwise)
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

        source = task if evaluator is None or evaluator.finetune_epochs else evaluator
        sensitivity = sensitivity_module.estimate(source, space, options.sensitivity,
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


@dataclass(frozen=True)
class TrainedModel:
    """A trained model with what scoring it needs: the arguments of
    :func:`problem_for_model` besides the space and the budgets, as one object.

    A user factory (``--task mymodels:make``) may return one instead of a Task::

        def make():
            model = MyNet(); model.load_state_dict(torch.load("my.pt", weights_only=True))
            return bitsearch.TrainedModel(model, example_input=torch.zeros(1, 3, 32, 32),
                                          calibration=calib_loader, evaluate=my_eval,
                                          train_loader=train_loader)

    ``name`` names the model in policies (default ``"model"``); ``description`` is one line
    for ``bitsearch tasks``-style listings.  See :func:`problem_for_model` for the rest."""

    model: Any
    example_input: Any
    calibration: Any = None
    evaluate: Callable | None = None
    metric: str = "top1"
    higher_is_better: bool = True
    loss: Callable | None = None
    train_loader: Any = None
    train_step: Callable | None = None
    inputs: Callable | None = None
    finetune_lr: float | None = None
    weight_decay: float = 0.0
    calibration_samples: int | None = None
    name: str = "model"
    description: str = ""
    cache_key: str | None = None
    deterministic: bool = False

    def evaluator(self, *, finetune_epochs: int = 0):
        """The :class:`~bitsearch.evaluate.ModelEvaluator` of this model (without
        ``evaluate`` it can estimate sensitivities but not score policies)."""
        from .evaluate import ModelEvaluator

        return ModelEvaluator(self.model, self.example_input, evaluate=self.evaluate, calibration=self.calibration,
                              metric=self.metric, higher_is_better=self.higher_is_better, loss=self.loss,
                              train_loader=self.train_loader, train_step=self.train_step, inputs=self.inputs,
                              finetune_epochs=finetune_epochs, finetune_lr=self.finetune_lr,
                              weight_decay=self.weight_decay, calibration_samples=self.calibration_samples,
                              name=self.name, cache_key=self.cache_key, deterministic=self.deterministic)


def problem_for_model(model, example_input, *, calibration=None, evaluate: Callable | None = None,
                      metric: str = "top1", higher_is_better: bool = True, loss: Callable | None = None,
                      train_loader=None, train_step: Callable | None = None, inputs: Callable | None = None,
                      space: SpaceOptions | SearchSpace = SpaceOptions(), budgets: Iterable[str] = (),
                      finetune_epochs: int = 0, finetune_lr: float | None = None, weight_decay: float = 0.0,
                      calibration_samples: int | None = None, sensitivity: str | None = None,
                      sensitivity_settings: dict | None = None, latency_table: str | None = None,
                      name: str = "model", cache_key: str | None = None, deterministic: bool = False,
                      progress: bool = False) -> Problem:
    """The Problem of a trained model you bring; every searcher runs on it unchanged.

    ``model``: a trained ``nn.Module`` (left untouched: policies are applied to copies).
    ``example_input``: one batch (a tensor, or a tuple of arguments) for discovery and
    cost counting.  ``calibration``: any re-iterable of batches (a DataLoader), used for
    activation ranges (one pass, or ``calibration_samples`` samples) and sensitivities
    (their first ``samples``).  ``evaluate(model) -> {"top1": ..., ...}``: called on
    fake-quantized copies (e.g. :func:`bitsearch.evaluate.classification_metrics`);
    ``metric`` names the key searchers optimise and ``higher_is_better`` its direction
    (``metric="perplexity", higher_is_better=False`` works everywhere).  ``loss(model,
    batch) -> scalar tensor``: for the Hessian and bit-gradient sensitivities and for
    training (default: cross-entropy on ``(x, y)`` batches).  ``train_loader`` and
    ``train_step(model, batch, optimizer)`` (default: ``loss``, backward, step): what
    ``fracbits``, ``bmpq`` and ``finetune_epochs`` need.  ``inputs(batch)``: the model
    inputs of a batch (default: the batch, or its first item).  ``space``: how to turn
    the model into a search space (:class:`SpaceOptions`, or a ready
    :class:`SearchSpace`); ``budgets``: ``COST=VALUE`` strings.  ``sensitivity``: also
    estimate a table by that method (``hessian``, ``bitgrad``, ``empirical``) for the
    searchers that use one (``ilp``).  Nothing holds a whole data set in memory: loaders
    are read batch by batch.
    """
    trained = TrainedModel(model, example_input, calibration=calibration, evaluate=evaluate, metric=metric,
                           higher_is_better=higher_is_better, loss=loss, train_loader=train_loader,
                           train_step=train_step, inputs=inputs, finetune_lr=finetune_lr, weight_decay=weight_decay,
                           calibration_samples=calibration_samples, name=name, cache_key=cache_key,
                           deterministic=deterministic)
    options = ProblemOptions(budgets=tuple(budgets), finetune_epochs=finetune_epochs, latency_table=latency_table,
                             sensitivity=sensitivity, sensitivity_settings=dict(sensitivity_settings or {}))
    return problem_for_trained(trained, space, options, progress=progress)


def problem_for_trained(trained: TrainedModel, space_options: SpaceOptions | SearchSpace = SpaceOptions(),
                        options: ProblemOptions = ProblemOptions(), *, progress: bool = False) -> Problem:
    """The Problem of a :class:`TrainedModel` (what :func:`problem_for_model` builds)."""
    from .discover import discover

    if options.width_mult != 1.0:
        raise UserInputError(f"a trained model cannot be rebuilt at width multiplier {options.width_mult:g}: "
                             "--width-mult needs a task whose model factory takes one")
    if isinstance(space_options, SearchSpace):
        space = space_options
    elif isinstance(space_options, SpaceOptions):
        space = discover(trained.model, trained.example_input, granularity=space_options.granularity,
                         weight_bits=space_options.weight_bits, act_bits=space_options.act_bits,
                         pin_first_last=space_options.pin_first_last, model_name=trained.name)
    else:
        raise UserInputError(f"space must be SpaceOptions(...) or a SearchSpace, got {type(space_options).__name__}")
    if options.finetune_epochs and trained.evaluate is None:
        raise UserInputError("finetune_epochs needs evaluate= (fine-tuning changes how policies are scored)")
    model_evaluator = trained.evaluator(finetune_epochs=options.finetune_epochs)
    evaluator = model_evaluator if options.evaluator and trained.evaluate is not None else None
    sensitivity = None
    if options.sensitivity:
        from . import sensitivity as sensitivity_module

        source = model_evaluator if not options.finetune_epochs else trained.evaluator()
        sensitivity = sensitivity_module.estimate(source, space, options.sensitivity,
                                                  **options.sensitivity_settings)
    problem = Problem.build(space, options.budgets, evaluator=evaluator, sensitivity=sensitivity,
                            latency_table=options.latency_table, task=trained.name)
    problem.info["width_mult"] = 1.0
    problem.info["space_options"] = space_options
    problem.info["problem_options"] = options
    return problem


def resolve_source(name_or_object):
    """What ``--task`` names: a :class:`~bitsearch.tasks.Task` or a :class:`TrainedModel`
    (a built-in name, ``package.module:factory``, or either object as it is)."""
    if isinstance(name_or_object, TrainedModel):
        return name_or_object
    from .tasks import get_source

    return get_source(name_or_object)


def problem_for(source, space_options: SpaceOptions = SpaceOptions(), options: ProblemOptions = ProblemOptions(),
                *, progress: bool = False) -> Problem:
    """The Problem of a task or a trained model, given by name or as an object."""
    source = resolve_source(source)
    if isinstance(source, TrainedModel):
        return problem_for_trained(source, space_options, options, progress=progress)
    return problem_for_task(source, space_options, options, progress=progress)


def needs_sensitivity(searcher_cls) -> bool:
    return getattr(searcher_cls, "needs", "any") == "sensitivity"


def default_sensitivity(searcher_cls) -> str | None:
    """The sensitivity method estimated for a searcher that needs a table when none is
    named: its own ``sensitivity_method`` (``iqp``: ``pairwise``), else ``hessian``."""
    if not needs_sensitivity(searcher_cls):
        return None
    return getattr(searcher_cls, "sensitivity_method", None) or "hessian"
