"""Evaluators (torch): a policy -> the model's metrics under that policy.

A policy is scored by post-training quantization: the trained float model is copied,
fake-quantized at the policy's widths (:func:`bitsearch.quant.apply_policy`), its
activation ranges are calibrated on calibration batches, optionally fine-tuned for a few
epochs with straight-through estimators, and scored.  Results are cached by
``policy.key``, so a searcher may ask twice for free.

Two evaluators, both implementing every protocol of :mod:`bitsearch.problem`
(``Evaluator``, ``ModelEvaluator``, ``TrainableEvaluator``; the training members only
when there is something to train on):

* :class:`ModelEvaluator` -- a trained model you bring, with your loaders, your
  ``evaluate(model) -> metrics`` and your metric of either direction (what
  :func:`bitsearch.problem_for_model` builds).  Data are streamed batch by batch.
* :class:`Evaluator` -- a task (built in or ``package.module:factory``): its cached
  float model at a width multiplier, its in-memory data, its training recipe; scored by
  top-1 accuracy and cross-entropy on the test split.

Built-in tasks are scored deterministically: every forward pass of the evaluator runs on
one CPU thread (:func:`single_thread`), so that a sum is added in the same order on any
machine with the same instruction set.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable, Iterable, Mapping

from .errors import PolicyError, TaskError, UserInputError
from .policy import Policy
from .space import SearchSpace

DEFAULT_WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8)
DEFAULT_FINETUNE_LR = 1e-4  # a user model's: its training rate is not known


@contextlib.contextmanager
def single_thread(enabled: bool = True):
    """Run torch on one CPU thread inside the block (restored after).  Sums split over
    several threads are added in an order that depends on the thread count; one thread
    makes every number the same run after run and machine after machine (up to the CPU's
    instruction set)."""
    if not enabled:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def _check_int(value, name: str, low: int, problems: list) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
        problems.append(f"{name} must be an integer >= {low}, got {value!r}")


def _check_scoring(finetune_epochs, finetune_lr, calibration_samples, problems: list) -> None:
    _check_int(finetune_epochs, "finetune_epochs", 0, problems)
    if finetune_lr is not None and not (isinstance(finetune_lr, (int, float)) and finetune_lr > 0):
        problems.append(f"finetune_lr must be a positive number, got {finetune_lr!r}")
    _check_int(calibration_samples, "calibration_samples", 1, problems)


def classification_metrics(loader: Iterable, *, inputs: Callable | None = None,
                           max_samples: int | None = None) -> Callable:
    """An ``evaluate(model) -> {"top1", "loss"}`` for a classifier over ``loader``'s
    ``(x, y)`` batches, streamed batch by batch (top-1 as a fraction in [0, 1], mean
    cross-entropy), in eval mode without gradients.  ``max_samples`` stops early."""
    from .training import LoaderBatches, batch_inputs

    batches = LoaderBatches(loader, max_samples, what="the test loader", inputs=inputs or batch_inputs)

    def evaluate(model) -> dict[str, float]:
        import torch
        import torch.nn.functional as F

        from .training import batch_targets, call_model, model_device

        device = model_device(model)
        was_training = model.training
        model.eval()
        correct, loss_sum, count = 0, 0.0, 0
        try:
            with torch.no_grad():
                for batch in batches:
                    x = (inputs or batch_inputs)(batch)
                    y = batch_targets(batch).to(device)
                    logits = call_model(model, x.to(device) if isinstance(x, torch.Tensor) else x)
                    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
                        raise UserInputError(f"classification_metrics: the model gave outputs of shape "
                                             f"{tuple(logits.shape)} for {y.shape[0]} labels; expected "
                                             "(batch, classes) logits")
                    if y.numel() and int(y.max()) >= logits.shape[1]:
                        raise UserInputError(f"classification_metrics: label {int(y.max())} but the model has "
                                             f"{logits.shape[1]} outputs")
                    loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                    correct += int((logits.argmax(dim=1) == y).sum())
                    count += int(y.shape[0])
        finally:
            model.train(was_training)
        return {"top1": correct / count, "loss": loss_sum / count}

    return evaluate


class ModelEvaluator:
    """Scores policies on a trained model you bring (see :func:`bitsearch.problem_for_model`).

    ``model``: the trained float ``nn.Module`` (left untouched: policies are applied to
    copies).  ``example_input``: one batch of inputs (a tensor, or a tuple of arguments).
    ``evaluate(model) -> dict``: your metrics of a (fake-quantized) model; ``metric``: the
    key searchers optimise, ``higher_is_better`` its direction.  ``calibration``: a
    re-iterable of batches (a DataLoader) the activation ranges are calibrated on and
    sensitivities estimated on; ``calibration_samples`` caps how many of its samples
    calibrate (None: one whole pass).  ``loss(model, batch)``: the training loss of a
    batch (default: cross-entropy on ``(x, y)`` batches).  ``train_loader`` (re-iterable)
    and ``train_step(model, batch, optimizer)`` (default: ``loss``, backward, step) make
    it trainable: fine-tuned scoring (``finetune_epochs`` epochs of Adam at
    ``finetune_lr``), ``fracbits``, ``bmpq``.  ``inputs(batch)``: a batch's model inputs
    (default: the batch, or its first item).  ``name`` names the model in policies;
    ``cache_key`` (optional) names these weights and data for on-disk sensitivity caches.
    ``deterministic``: run every forward pass on one thread (slower on big models).
    """

    def __init__(self, model, example_input, *, evaluate: Callable | None, calibration: Iterable | None = None,
                 metric: str = "top1", higher_is_better: bool = True, loss: Callable | None = None,
                 train_loader: Iterable | None = None, train_step: Callable | None = None,
                 inputs: Callable | None = None, finetune_epochs: int = 0, finetune_lr: float | None = None,
                 weight_decay: float = 0.0, calibration_samples: int | None = None, name: str = "model",
                 cache_key: str | None = None, deterministic: bool = False):
        from torch import nn

        from .training import LoaderBatches, batch_inputs

        problems = []
        if not isinstance(model, nn.Module):
            problems.append(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if evaluate is not None and not callable(evaluate):
            problems.append("evaluate must be a callable(model) -> dict of metrics (e.g. "
                            "bitsearch.evaluate.classification_metrics(test_loader))")
        if not isinstance(metric, str) or not metric:
            problems.append(f"metric must be the name of a key evaluate returns, got {metric!r}")
        if not isinstance(higher_is_better, bool):
            problems.append(f"higher_is_better must be True or False, got {higher_is_better!r}")
        for what, value in (("loss", loss), ("train_step", train_step), ("inputs", inputs)):
            if value is not None and not callable(value):
                problems.append(f"{what} must be a callable, got {type(value).__name__}")
        _check_scoring(finetune_epochs, finetune_lr, calibration_samples, problems)
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            problems.append(f"weight_decay must be a number >= 0, got {weight_decay!r}")
        if finetune_epochs and train_loader is None:
            problems.append(f"finetune_epochs={finetune_epochs} needs a train_loader to fine-tune on")
        if problems:
            raise UserInputError("problem_for_model: " + "; ".join(problems))
        self._inputs = inputs or batch_inputs
        self.name = str(name)
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.cache_key = cache_key
        self._init_scoring(finetune_epochs, DEFAULT_FINETUNE_LR if finetune_lr is None else finetune_lr,
                           weight_decay, calibration_samples, deterministic)
        self._evaluate_fn = evaluate
        self._loss_fn = loss
        self._train_step_fn = train_step
        self._model = model.eval()
        self._example_input = example_input
        self._calibration_source = calibration
        self._train_loader = None if train_loader is None else LoaderBatches(train_loader, what="train_loader",
                                                                            inputs=self._inputs)

    def _init_scoring(self, finetune_epochs: int, finetune_lr: float, weight_decay: float,
                      calibration_samples: int | None, deterministic: bool) -> None:
        """What every evaluator keeps besides its model: how it scores, its counter and caches."""
        self.finetune_epochs = finetune_epochs
        self.finetune_lr = float(finetune_lr)
        self.weight_decay = float(weight_decay)
        self.calibration_samples = calibration_samples
        self.deterministic = bool(deterministic)
        self.metric_kind = "ptq" if finetune_epochs == 0 else f"ptq+ft{finetune_epochs}"
        self.evaluations = 0  # fresh (uncached) evaluations so far
        self._cache: dict[str, dict[str, float]] = {}
        self._lock = threading.RLock()
        self._float_metrics: dict[str, float] | None = None
        self._reusable = None  # the quantized copy re-set for each policy (no fine-tuning)
        self._names: tuple[str, ...] | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.model_name!r}, metric={self.metric!r}, "
                f"higher_is_better={self.higher_is_better}, metric_kind={self.metric_kind!r}, "
                f"cached={len(self._cache)})")

    # --- what is evaluated ------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.name

    @property
    def model(self):
        """The trained float model (not to be modified: every evaluation copies it)."""
        return self._model

    @property
    def example_input(self):
        return self._example_input

    @property
    def calibration(self):
        """What activation ranges are calibrated on: an iterable of model inputs (the
        calibration loader's, cut to ``calibration_samples``)."""
        if self._calibration_source is None:
            raise UserInputError(f"{self.model_name}: no calibration batches were given (calibration=): they are "
                                 "needed to calibrate activation ranges and to estimate sensitivities")
        return _Inputs(self._calibration_source, self._inputs, self.calibration_samples)

    @property
    def trainable(self) -> bool:
        """Whether there are training batches (what the training members need)."""
        return self._train_loader is not None

    def space(self, granularity: str = "layer", weight_bits: Iterable[int] = DEFAULT_WEIGHT_BITS,
              act_bits: Iterable[int] | None = (8,), pin_first_last: int | None = None) -> SearchSpace:
        """The search space of the model (see :func:`bitsearch.discover.discover`)."""
        from .discover import discover

        return discover(self.model, self.example_input, granularity=granularity, weight_bits=weight_bits,
                        act_bits=act_bits, pin_first_last=pin_first_last, model_name=self.model_name)

    # --- the batch-level members (sensitivities, training) -------------------------------
    def loss(self, model, batch):
        """The training loss of ``batch`` (a scalar tensor): yours, or cross-entropy."""
        from .training import cross_entropy_loss

        return (self._loss_fn or cross_entropy_loss)(model, batch)

    def sensitivity_batches(self, samples: int, batch_size: int, seed: int) -> list:
        """The first ``samples`` samples of the calibration loader, in its own batches
        (``batch_size`` and ``seed`` do not apply: the loader batches and orders them)."""
        from .training import take_samples

        if self._calibration_source is None:
            raise UserInputError(f"{self.model_name}: sensitivities are estimated on the calibration batches; "
                                 "give calibration= to problem_for_model")
        return take_samples(self._calibration_source, int(samples), what="calibration", inputs=self._inputs)

    def train_batches(self, seed: int, batch_size: int | None = None, samples: int | None = None):
        """The training loader as a re-iterable of epochs, at most ``samples`` samples each."""
        from .training import LoaderBatches

        if self._train_loader is None:
            raise UserInputError(f"{self.model_name}: no train_loader was given; training searchers (fracbits, "
                                 "bmpq) and fine-tuned scoring need problem_for_model(..., train_loader=...)")
        if batch_size is not None:
            raise UserInputError(f"batch_size={batch_size} applies to a task's in-memory data; "
                                 f"{self.model_name}'s train_loader sets its own batch size")
        return LoaderBatches(self._train_loader.loader, samples, what="train_loader", inputs=self._inputs)

    def train_step(self, model, batch, optimizer) -> float:
        """One training step: yours, or ``loss``, backward, ``optimizer.step()``."""
        from .training import make_train_step

        if self._train_step_fn is not None:
            value = self._train_step_fn(model, batch, optimizer)
            if hasattr(value, "detach"):
                value = value.detach()
            try:
                return float(value)
            except (TypeError, ValueError):
                raise UserInputError(f"train_step must return the loss (a number or a scalar tensor), got "
                                     f"{type(value).__name__}") from None
        return make_train_step(self.loss)(model, batch, optimizer)

    # --- scoring ------------------------------------------------------------------------
    def _score(self, model) -> dict[str, float]:
        """``evaluate(model)``, checked: a dict of numbers holding ``metric``."""
        if self._evaluate_fn is None:
            raise UserInputError(f"{self.model_name}: no evaluate= was given, so policies cannot be scored (only "
                                 "sensitivities estimated); give evaluate=callable(model) -> dict of metrics")
        raw = self._evaluate_fn(model)
        if not isinstance(raw, Mapping):
            raise UserInputError(f"evaluate must return a dict of metrics, got {type(raw).__name__}")
        metrics = {}
        for key, value in raw.items():
            try:
                metrics[str(key)] = float(value)
            except (TypeError, ValueError):
                raise UserInputError(f"evaluate returned {key!r}: {value!r}, not a number") from None
        if self.metric not in metrics:
            raise UserInputError(f"metric {self.metric!r} is not a key evaluate returns (it returns "
                                 f"{', '.join(metrics) or 'nothing'}); give metric= one of them")
        if math.isnan(metrics[self.metric]):
            raise UserInputError(f"evaluate returned {self.metric}=nan")
        return metrics

    def score_model(self, model) -> dict[str, float]:
        """The metrics of any model of this architecture (e.g. one a searcher fine-tuned)."""
        with self._lock, single_thread(self.deterministic):
            return self._score(model)

    def float_metrics(self) -> dict[str, float]:
        """The float model's metrics (computed once)."""
        with self._lock:
            if self._float_metrics is None:
                self._float_metrics = self.score_model(self.model)
            return dict(self._float_metrics)

    def _check_covers(self, policy: Policy) -> None:
        names = set(policy.names)
        missing = [name for name in self.layer_names() if name not in names]
        if missing:
            raise PolicyError([f"missing layer {name!r}" for name in missing])

    def layer_names(self) -> tuple[str, ...]:
        """The quantizable layers every policy must give widths for."""
        with self._lock:
            if self._names is None:
                self._names = self.space().names
            return self._names

    def _finetune(self, qmodel) -> None:
        """``finetune_epochs`` epochs of ``train_step`` under Adam at ``finetune_lr``."""
        import torch

        params = [p for p in qmodel.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.finetune_lr, weight_decay=self.weight_decay)
        batches = self.train_batches(seed=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            qmodel.train()
            for _ in range(self.finetune_epochs):
                for batch in batches:
                    self.train_step(qmodel, batch, optimizer)
            qmodel.eval()

    def quantized_model(self, policy: Policy):
        """The model as :meth:`evaluate` scores it: fake-quantized, calibrated, and
        fine-tuned when ``finetune_epochs`` > 0 (a fresh copy, yours to keep)."""
        from .quant import apply_policy

        self._check_covers(policy)
        with single_thread(self.deterministic):
            qmodel = apply_policy(self.model, policy, calibration=self.calibration)
            if self.finetune_epochs:
                self._finetune(qmodel)
        return qmodel.eval()

    def _scored_model(self, policy: Policy):
        """What :meth:`evaluate` runs.  Without fine-tuning the weights never change, so one
        quantized copy is kept and re-set for each policy (widths set, ranges calibrated
        afresh): the same numbers as a fresh :meth:`quantized_model`, without the copy."""
        from .quant import apply_policy, calibrate, set_policy

        if self.finetune_epochs:
            return self.quantized_model(policy)
        self._check_covers(policy)
        if self._reusable is None:
            self._reusable = apply_policy(self.model, policy)
        else:
            set_policy(self._reusable, policy)
        return calibrate(self._reusable, self.calibration).eval()

    def evaluate(self, policy: Policy) -> dict[str, float]:
        """The metrics of ``policy`` (cached by ``policy.key``)."""
        key = policy.key
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return dict(hit)
            with single_thread(self.deterministic):
                metrics = self._score(self._scored_model(policy))
            self._cache[key] = metrics
            self.evaluations += 1
            return dict(metrics)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


class _Inputs:
    """A re-iterable of model inputs over a loader of batches, cut to ``samples`` samples."""

    def __init__(self, source, inputs: Callable, samples: int | None):
        self.source, self.inputs, self.samples = source, inputs, samples

    def __iter__(self):
        import torch

        from .training import batch_size_of, cut_batch

        if isinstance(self.source, torch.Tensor):
            data = self.source if self.samples is None else self.source[:self.samples]
            yield from torch.split(data, 256)
            return
        seen = 0
        for batch in self.source:
            n = batch_size_of(batch, self.inputs)
            if self.samples is not None and seen + n > self.samples:
                batch, n = cut_batch(batch, self.samples - seen), self.samples - seen
            if n <= 0:
                break
            yield self.inputs(batch)
            seen += n
            if self.samples is not None and seen >= self.samples:
                break


class Evaluator(ModelEvaluator):
    """Scores policies on ``task`` (a Task, or a task name): its trained float model at
    ``width_mult``, calibrated on the task's calibration inputs, scored by top-1 accuracy
    and cross-entropy on its test split.

    ``finetune_epochs``: 0 for post-training quantization (``metric_kind`` ``"ptq"``), or
    a few epochs of straight-through fine-tuning of the quantized model with the task's
    recipe at ``finetune_lr`` (default: a tenth of the recipe's learning rate;
    ``metric_kind`` ``"ptq+ft{E}"``).  ``calibration_samples``: how many of the task's
    calibration inputs to calibrate on (default: all of them).  ``batch_size``: the
    evaluation batch size (it does not change the numbers).  Every forward pass runs on
    one thread (deterministic).  The model and data are loaded on first use (the
    evaluator pickles cheaply to worker processes).
    """

    metric = "top1"
    higher_is_better = True

    def __init__(self, task, *, width_mult: float = 1.0, finetune_epochs: int = 0,
                 finetune_lr: float | None = None, calibration_samples: int | None = None,
                 batch_size: int = 1024):
        if isinstance(task, str):
            from .tasks import get_task

            task = get_task(task)
        if task.shape_only:
            raise TaskError(f"task {task.name!r} is shape-only (no data, no trained weights), so policies cannot "
                            "be scored on it; use it for costs (bitsearch inspect) or pick a trainable task")
        problems: list[str] = []
        _check_scoring(finetune_epochs, finetune_lr, calibration_samples, problems)
        _check_int(batch_size, "batch_size", 1, problems)
        if problems:
            raise TaskError("Evaluator: " + "; ".join(problems))
        self.task = task
        self.width_mult = float(width_mult)
        self.name = task.name if self.width_mult == 1.0 else f"{task.name}@x{self.width_mult:g}"
        self.metric = task.metric
        self.batch_size = batch_size
        self._init_scoring(finetune_epochs, task.recipe.lr / 10.0 if finetune_lr is None else finetune_lr,
                           task.recipe.weight_decay, calibration_samples, deterministic=True)
        self._model = None
        self._data = None
        self._calibration = None
        self._cache_key: str | None = None

    def __repr__(self) -> str:
        return (f"Evaluator({self.task.name!r}, width_mult={self.width_mult:g}, metric_kind={self.metric_kind!r}, "
                f"cached={len(self._cache)})")

    # --- lazy loading ---------------------------------------------------------------------
    @property
    def model(self):
        """The trained float model (not to be modified: every evaluation copies it)."""
        self._load()
        return self._model

    @property
    def data(self):
        """The task's :class:`~bitsearch.tasks.TaskData`."""
        self._load()
        return self._data

    @property
    def calibration(self):
        """The inputs activation ranges are calibrated on (a tensor)."""
        self._load()
        return self._calibration

    @property
    def example_input(self):
        return self.task.example_input(1)

    @property
    def cache_key(self) -> str:
        """The task's weights key at this width (recipe, data, architecture)."""
        if self._cache_key is None:
            self._cache_key = self.task.cache_key(self.width_mult)
        return self._cache_key

    @property
    def trainable(self) -> bool:
        return True

    def _load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            data = self.task.data()
            calibration = data.calibration
            if self.calibration_samples is not None:
                if self.calibration_samples > len(calibration):
                    raise TaskError(f"calibration_samples={self.calibration_samples}, but task {self.task.name!r} "
                                    f"offers {len(calibration)} calibration inputs")
                calibration = calibration[:self.calibration_samples]
            model = self.task.trained_model(self.width_mult)
            model.eval()
            self._data, self._calibration, self._model = data, calibration, model

    # --- the batch-level members ------------------------------------------------------------
    def loss(self, model, batch):
        """Mean cross-entropy of ``model`` on an ``(x, y)`` batch."""
        import torch.nn.functional as F

        x, y = batch
        return F.cross_entropy(model(x), y)

    def sensitivity_batches(self, samples: int, batch_size: int, seed: int) -> list:
        """``samples`` training samples (a permutation seeded with ``seed``), in batches."""
        from .sensitivity.estimators import sample_batches

        data = self.data
        return sample_batches(data.x_train, data.y_train, int(samples), int(batch_size), seed)

    def train_batches(self, seed: int, batch_size: int | None = None, samples: int | None = None):
        """The training split shuffled afresh each pass by a generator seeded with ``seed``,
        in batches of ``batch_size`` (default: the recipe's), at most ``samples`` per epoch."""
        from .training import TensorBatches

        data = self.data
        return TensorBatches(data.x_train, data.y_train, int(batch_size or self.task.recipe.batch_size), seed,
                             samples)

    def train_step(self, model, batch, optimizer) -> float:
        from .training import make_train_step

        return make_train_step(self.loss)(model, batch, optimizer)

    # --- scoring ------------------------------------------------------------------------------
    def _score(self, model) -> dict[str, float]:
        from .tasks import evaluate_model

        data = self.data
        metrics = evaluate_model(model, data.x_test, data.y_test, batch_size=self.batch_size)
        return {"top1": float(metrics["top1"]), "loss": float(metrics["loss"])}

    def _finetune(self, qmodel) -> None:
        self.task.fit(qmodel, self.data, epochs=self.finetune_epochs, lr=self.finetune_lr)
