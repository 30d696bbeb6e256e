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
    """How to turn a model into a search space (the arguments of
    :func:`bitsearch.discover.discover`): ``weight_bits`` may mix widths and named formats;
    ``scale_group`` None (one scale per kernel) or G (one per G weights); ``pins``
    ``(layer name or pattern, width)`` pairs; ``tie_shared_inputs`` None (tie layers that
    read one tensor when activations are quantized), True or False."""

    granularity: str = "layer"
    weight_bits: tuple = DEFAULT_WEIGHT_BITS
    act_bits: tuple[int, ...] | None = DEFAULT_ACT_BITS
    pin_first_last: int | None = None
    scale_group: int | None = None
    tie_shared_inputs: bool | None = None
    pins: tuple[tuple[str, object], ...] = ()

    def discover(self, model, example_input, *, model_name: str = "") -> SearchSpace:
        """The search space of ``model`` under these options."""
        from .discover import discover

        return discover(model, example_input, granularity=self.granularity, weight_bits=self.weight_bits,
                        act_bits=self.act_bits, pin_first_last=self.pin_first_last, model_name=model_name,
                        scale_group=self.scale_group, tie_shared_inputs=self.tie_shared_inputs,
                        pins=dict(self.pins))


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
    model = task.trained_model(width_mult) if not task.shape_only else task.build_model(width_mult)
    name = task.name if width_mult == 1.0 else f"{task.name}@x{width_mult:g}"
    return options.discover(model, task.example_input(1), model_name=name)


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
        sensitivity = sensitivity_module.estimate(source, space, options.sensitivity, width_mult=options.width_mult,
                                                  progress=progress, **options.sensitivity_settings)
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
    if options.width_mult != 1.0:
        raise UserInputError(f"a trained model cannot be rebuilt at width multiplier {options.width_mult:g}: "
                             "--width-mult needs a task whose model factory takes one")
    if isinstance(space_options, SearchSpace):
        space = space_options
    elif isinstance(space_options, SpaceOptions):
        space = space_options.discover(trained.model, trained.example_input, model_name=trained.name)
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
        sensitivity = sensitivity_module.estimate(source, space, options.sensitivity, progress=progress,
                                                  **options.sensitivity_settings)
    if evaluator is not None:
        evaluator.float_metrics()  # a metric evaluate does not return fails here, before any search
    problem = Problem.build(space, options.budgets, evaluator=evaluator, sensitivity=sensitivity,
                            latency_table=options.latency_table, task=trained.name)
    problem.info["width_mult"] = 1.0
    problem.info["space_options"] = space_options
    problem.info["problem_options"] = options
    return problem


def load_state_dict_file(path) -> dict:
    """The state dict in ``path`` (``torch.load(..., weights_only=True)``): a mapping of
    tensors, or a checkpoint holding one under ``state_dict`` or ``model``; a
    ``module.`` prefix on every key (``DataParallel``) is dropped."""
    import os

    import torch

    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise UserInputError(f"--weights {path}: no such file")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserInputError(f"--weights {path}: not a file torch.load(weights_only=True) can read "
                             f"({type(exc).__name__}); save one with torch.save(model.state_dict(), FILE)") from None
    if isinstance(saved, dict) and not all(isinstance(v, torch.Tensor) for v in saved.values()):
        for key in ("state_dict", "model"):
            if isinstance(saved.get(key), dict):
                saved = saved[key]
                break
    if not isinstance(saved, dict) or not saved or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise UserInputError(f"--weights {path}: expected a state_dict (a mapping of parameter names to tensors, "
                             f"as torch.save(model.state_dict(), FILE) writes), got {type(saved).__name__}")
    if all(k.startswith("module.") for k in saved):
        saved = {k[len("module."):]: v for k, v in saved.items()}
    return saved


def _last_linear(model):
    from torch import nn

    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def load_weights(model, state: dict, *, source: str = "the weights"):
    """Load ``state`` into ``model`` (strictly), after giving the last linear layer (the
    classifier) the number of outputs the state dict has, when only that differs (a
    ResNet-18 trained on 10 classes into torchvision's 1,000-class architecture).
    Returns ``(model, note)``; a state dict that does not fit is one line naming the first
    differences."""
    from torch import nn

    note = ""
    last = _last_linear(model)
    weight = state.get(f"{last}.weight") if last else None
    if last and weight is not None and weight.dim() == 2:
        module = model.get_submodule(last)
        if weight.shape[1] == module.in_features and weight.shape[0] != module.out_features:
            parent_name, _, child = last.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, nn.Linear(module.in_features, int(weight.shape[0]), bias=module.bias is not None))
            note = f"{last} has {int(weight.shape[0])} outputs, as in {source}"
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} is {tuple(state[k].shape)} there but {tuple(own[k].shape)} in the model" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("; ".join(shapes[:3]) + (f" (and {len(shapes) - 3} more)" if len(shapes) > 3 else ""))
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}" + (f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}"
                         + (f" (and {len(unexpected) - 4} more)" if len(unexpected) > 4 else ""))
        raise UserInputError(f"{source} does not fit this architecture: " + "; ".join(parts))
    model.load_state_dict(state)
    return model.eval(), note


def _task_data_metrics(x, y, model) -> dict:
    from .tasks import evaluate_model

    metrics = evaluate_model(model, x, y)
    return {"top1": float(metrics["top1"]), "loss": float(metrics["loss"])}


def model_from_task(task, *, weights=None, data=None, width_mult: float = 1.0, scoring: bool = True) -> TrainedModel:
    """A task's architecture with weights you bring (``--weights FILE``: a state_dict) and
    scored on data you bring (``--data imagefolder:DIR``) or on the task's own data.

    Without ``weights`` the task's trained float model is used (so ``--data`` alone scores
    a built-in model on other images).  A shape-only task (resnet18...) needs both, unless
    ``scoring`` is False (costs only: the architecture with the state dict's classifier).
    The model is named like the task (policies for it fit the task's architecture)."""
    import functools
    import hashlib
    import os

    from ._io import stable_hash
    from .tasks.base import check_width_mult

    width_mult = check_width_mult(width_mult)
    name = task.name if width_mult == 1.0 else f"{task.name}@x{width_mult:g}"
    notes = []
    if data is not None:
        from .data import parse_data

        data = parse_data(data) if isinstance(data, str) else data  # a bad --data fails before any work
    if weights is not None:
        state = load_state_dict_file(weights)
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = task.build_model(width_mult)
        model, note = load_weights(model, state, source=f"--weights {weights}")
        notes += [note] if note else []
        with open(os.path.expanduser(str(weights)), "rb") as handle:
            weights_key = hashlib.sha256(handle.read()).hexdigest()[:16]
    elif task.shape_only:
        raise UserInputError(f"task {task.name!r} has no trained weights: give --weights FILE (a state_dict for its "
                             "architecture)" + ("" if data else " and --data imagefolder:DIR to score it on"))
    else:
        model = task.trained_model(width_mult)
        weights_key = task.cache_key(width_mult)
    if data is not None:
        from .data import image_folder_data
        from .evaluate import classification_metrics

        spec = data
        loaders = image_folder_data(spec, task.input_shape)
        last = _last_linear(model)
        outputs = model.get_submodule(last).out_features if last else None
        if outputs is not None and len(loaders.classes) > outputs:
            raise UserInputError(f"--data {spec}: {len(loaders.classes)} classes, but the model's classifier "
                                 f"({last}) has {outputs} outputs")
        notes.append(f"{len(loaders.classes)} classes from {spec.path}")
        return TrainedModel(model, task.example_input(1), calibration=loaders.calibration,
                            evaluate=classification_metrics(loaders.test), train_loader=loaders.train,
                            calibration_samples=256, name=name, description="; ".join(notes),
                            cache_key=stable_hash({"weights": weights_key, "data": loaders.digest,
                                                   "input": list(task.input_shape)}))
    if not scoring:
        return TrainedModel(model, task.example_input(1), name=name, description="; ".join(notes))
    if task.shape_only:
        raise UserInputError(f"task {task.name!r} has no data: give --data imagefolder:DIR to score it on")
    from .training import TensorBatches

    task_data = task.data()
    return TrainedModel(model, task.example_input(1), calibration=task_data.calibration,
                        evaluate=functools.partial(_task_data_metrics, task_data.x_test, task_data.y_test),
                        train_loader=TensorBatches(task_data.x_train, task_data.y_train, task.recipe.batch_size, 0),
                        finetune_lr=task.recipe.lr / 10.0, weight_decay=task.recipe.weight_decay, name=name,
                        description="; ".join(notes), deterministic=True,
                        cache_key=stable_hash({"weights": weights_key, "data": task.data_settings}))


def resolve_source(name_or_object):
    """What ``--task`` names: a :class:`~bitsearch.tasks.Task` or a :class:`TrainedModel`
    (a built-in name, ``package.module:factory``, or either object as it is)."""
    from .tasks import Task, get_source

    if isinstance(name_or_object, (TrainedModel, Task)):
        return name_or_object
    return get_source(name_or_object)


def architecture(source, width_mult: float = 1.0):
    """``(model, example_input)`` of a Task (built at ``width_mult``, one sample) or of a
    TrainedModel (its own model and batch, left untouched): what discovery and tracing read."""
    if isinstance(source, TrainedModel):
        return source.model, source.example_input
    return source.build_model(width_mult), source.example_input(1)


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
