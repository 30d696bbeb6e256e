"""Evaluator (torch): a policy -> the task's metrics under that policy.

A policy is scored by post-training quantization: the task's trained float model is
copied, fake-quantized at the policy's widths (:func:`bitsearch.quant.apply_policy`),
its activation ranges are calibrated on the task's calibration inputs, optionally
fine-tuned for a few epochs with straight-through estimators using the task's own
training loop, and evaluated on the test split (top-1 accuracy and cross-entropy).
Results are cached by ``policy.key``, so a searcher may ask twice for free.  Everything
is deterministic on CPU: the same policy gives the same numbers.
"""

from __future__ import annotations

import threading
from typing import Iterable

from .errors import PolicyError, TaskError
from .policy import Policy
from .space import SearchSpace

DEFAULT_WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8)


class Evaluator:
    """Scores policies on ``task`` (a Task, or a task name).

    ``width_mult``: which width of the task's model to quantize.
    ``finetune_epochs``: 0 for post-training quantization (``metric_kind`` ``"ptq"``), or
    a few epochs of straight-through fine-tuning of the quantized model with the task's
    recipe at ``finetune_lr`` (default: a tenth of the recipe's learning rate;
    ``metric_kind`` ``"ptq+ft{E}"``).
    ``calibration_samples``: how many of the task's calibration inputs to calibrate on
    (default: all of them).
    ``batch_size``: the evaluation batch size (it does not change the numbers).
    """

    metric = "top1"

    def __init__(self, task, *, width_mult: float = 1.0, finetune_epochs: int = 0,
                 finetune_lr: float | None = None, calibration_samples: int | None = None,
                 batch_size: int = 1024):
        if isinstance(task, str):
            from .tasks import get_task

            task = get_task(task)
        if task.shape_only:
            raise TaskError(f"task {task.name!r} is shape-only (no data, no trained weights), so policies cannot "
                            "be scored on it; use it for costs (bitsearch inspect) or pick a trainable task")
        problems = []
        if not isinstance(finetune_epochs, int) or isinstance(finetune_epochs, bool) or finetune_epochs < 0:
            problems.append(f"finetune_epochs must be an integer >= 0, got {finetune_epochs!r}")
        if finetune_lr is not None and not (isinstance(finetune_lr, (int, float)) and finetune_lr > 0):
            problems.append(f"finetune_lr must be a positive number, got {finetune_lr!r}")
        if calibration_samples is not None and (not isinstance(calibration_samples, int)
                                                or isinstance(calibration_samples, bool) or calibration_samples < 1):
            problems.append(f"calibration_samples must be an integer >= 1, got {calibration_samples!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            problems.append(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if problems:
            raise TaskError("Evaluator: " + "; ".join(problems))
        self.task = task
        self.width_mult = float(width_mult)
        self.finetune_epochs = finetune_epochs
        self.finetune_lr = float(finetune_lr) if finetune_lr is not None else task.recipe.lr / 10.0
        self.calibration_samples = calibration_samples
        self.batch_size = batch_size
        self.metric_kind = "ptq" if finetune_epochs == 0 else f"ptq+ft{finetune_epochs}"
        self.evaluations = 0  # fresh (uncached) evaluations so far
        self._cache: dict[str, dict[str, float]] = {}
        self._lock = threading.RLock()
        self._model = None
        self._data = None
        self._calibration = None
        self._layer_names: tuple[str, ...] | None = None
        self._float_metrics: dict[str, float] | None = None
        self._reusable = None  # the quantized copy re-set for each policy (no fine-tuning)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (f"Evaluator({self.task.name!r}, width_mult={self.width_mult:g}, metric_kind={self.metric_kind!r}, "
                f"cached={len(self._cache)})")

    # --- what is evaluated ------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.task.name if self.width_mult == 1.0 else f"{self.task.name}@x{self.width_mult:g}"

    @property
    def model(self):
        """The trained float model (not to be modified: every evaluation copies it)."""
        self._load()
        return self._model

    @property
    def data(self):
        self._load()
        return self._data

    @property
    def calibration(self):
        """The inputs activation ranges are calibrated on."""
        self._load()
        return self._calibration

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

    def space(self, granularity: str = "layer", weight_bits: Iterable[int] = DEFAULT_WEIGHT_BITS,
              act_bits: Iterable[int] | None = (8,), pin_first_last: int | None = None) -> SearchSpace:
        """The search space of the task's model at this width (see :func:`bitsearch.discover.discover`)."""
        from .discover import discover

        return discover(self.model, self.task.example_input(1), granularity=granularity, weight_bits=weight_bits,
                        act_bits=act_bits, pin_first_last=pin_first_last, model_name=self.model_name)

    def layer_names(self) -> tuple[str, ...]:
        """The quantizable layers every policy must give widths for."""
        with self._lock:
            if self._layer_names is None:
                self._layer_names = self.space().names
            return self._layer_names

    # --- scoring ------------------------------------------------------------------------
    def float_metrics(self) -> dict[str, float]:
        """Top-1 and loss of the float model on the test split."""
        from .tasks import evaluate_model

        with self._lock:
            if self._float_metrics is None:
                data = self.data
                self._float_metrics = dict(evaluate_model(self.model, data.x_test, data.y_test,
                                                          batch_size=self.batch_size))
            return dict(self._float_metrics)

    def _check_covers(self, policy: Policy) -> None:
        names = set(policy.names)
        missing = [name for name in self.layer_names() if name not in names]
        if missing:
            raise PolicyError([f"missing layer {name!r}" for name in missing])

    def quantized_model(self, policy: Policy):
        """The model as :meth:`evaluate` scores it: fake-quantized, calibrated, and
        fine-tuned when ``finetune_epochs`` > 0 (a fresh copy, yours to keep)."""
        from .quant import apply_policy

        self._check_covers(policy)
        qmodel = apply_policy(self.model, policy, calibration=self.calibration)
        if self.finetune_epochs:
            self.task.fit(qmodel, self.data, epochs=self.finetune_epochs, lr=self.finetune_lr)
        return qmodel.eval()

    def _scored_model(self, policy: Policy):
        """What :meth:`evaluate` runs.  Without fine-tuning the weights never change, so one
        quantized copy is kept and re-set for each policy (widths set, ranges calibrated
        afresh): the same numbers as a fresh :meth:`quantized_model`, without the copy."""
        from .quant import calibrate, set_policy

        if self.finetune_epochs:
            return self.quantized_model(policy)
        self._check_covers(policy)
        if self._reusable is None:
            from .quant import apply_policy

            self._reusable = apply_policy(self.model, policy)
        else:
            set_policy(self._reusable, policy)
        return calibrate(self._reusable, self.calibration).eval()

    def evaluate(self, policy: Policy) -> dict[str, float]:
        """``{"top1": ..., "loss": ...}`` of ``policy`` on the test split (cached by ``policy.key``)."""
        from .tasks import evaluate_model

        key = policy.key
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return dict(hit)
            qmodel = self._scored_model(policy)
            data = self.data
            metrics = evaluate_model(qmodel, data.x_test, data.y_test, batch_size=self.batch_size)
            metrics = {"top1": float(metrics["top1"]), "loss": float(metrics["loss"])}
            self._cache[key] = metrics
            self.evaluations += 1
            return dict(metrics)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
