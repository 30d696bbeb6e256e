"""Task, TaskData, TrainRecipe and the training and evaluation loops every task shares.

A :class:`Task` bundles a model factory (taking a width multiplier), its data, a training
recipe and a metric.  Built-in tasks and user tasks are the same class: a user task is a
function returning ``Task(...)`` (see ``docs/tasks.md``).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TaskError
from .._io import atomic_write, stable_hash
from ..progress import Bar
from .cache import cache_dir, file_lock, safe_name
from ..training import model_device, seeded_training

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam", "sgd")
METRICS = ("top1",)
CALIBRATION_SIZE = 256
CALIBRATION_SEED = 0
WEIGHTS_FORMAT = 2  # bump when the layout of a weights file or the cache key changes
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"  # trained weights inside the package


def scale_width(channels: int, width_mult: float) -> int:
    """``channels`` scaled by ``width_mult``, rounded half up, at least 1."""
    return max(1, int(math.floor(channels * width_mult + 0.5)))


def check_width_mult(width_mult) -> float:
    try:
        value = float(width_mult)
    except (TypeError, ValueError):
        raise TaskError(f"width multiplier {width_mult!r} is not a number; expected a positive number "
                        "such as 0.5, 1.0 or 1.25") from None
    if not math.isfinite(value) or value <= 0:
        raise TaskError(f"width multiplier {width_mult!r} must be a positive, finite number (e.g. 0.5, 1.0, 1.25)")
    return value


@dataclass(frozen=True)
class TrainRecipe:
    """How a task trains its float model.

    Every run uses a cosine learning-rate schedule over all steps (no warm-up), shuffles
    the training set each epoch with a generator seeded by ``seed``, and initialises the
    model under ``torch.manual_seed(seed)``.  ``optimizer`` is ``adamw``, ``adam`` or
    ``sgd`` (momentum 0.9, Nesterov).
    """

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    seed: int = 0

    def __post_init__(self):
        problems = []
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 0:
            problems.append(f"epochs must be an integer >= 0, got {self.epochs!r}")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not self.lr > 0:
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            problems.append(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.weight_decay, (int, float)) or isinstance(self.weight_decay, bool) \
                or self.weight_decay < 0:
            problems.append(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if problems:
            raise TaskError("bad TrainRecipe: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


def _as_tensor(value, dtype, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as exc:
            raise TaskError(f"TaskData.{what} could not be turned into a tensor: {exc}") from None
    if dtype is torch.long and tensor.is_floating_point():
        if not torch.equal(tensor, tensor.round()):
            raise TaskError(f"TaskData.{what} holds non-integer class labels; expected integers 0..C-1")
    return tensor.to(dtype).contiguous()


@dataclass(frozen=True)
class TaskData:
    """A task's data as tensors: inputs ``x_*`` (float32, batch first) and class labels
    ``y_*`` (int64).  ``calibration`` is a fixed subset of ``x_train`` used to calibrate
    activation ranges; left out, it is the first 256 samples of a permutation of the
    training set seeded with 0.  Numpy arrays are accepted and converted.  Treat the
    tensors as read-only: tasks share them between callers."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    calibration: torch.Tensor | None = None

    def __post_init__(self):
        for name, dtype in (("x_train", torch.float32), ("y_train", torch.long),
                            ("x_test", torch.float32), ("y_test", torch.long)):
            object.__setattr__(self, name, _as_tensor(getattr(self, name), dtype, name))
        problems = []
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dim() < 2:
                problems.append(f"x_{split} must have a batch dimension and an input shape, got shape {tuple(x.shape)}")
            if y.dim() != 1:
                problems.append(f"y_{split} must be one label per sample (1-D), got shape {tuple(y.shape)}")
            if len(x) != len(y):
                problems.append(f"x_{split} has {len(x)} samples but y_{split} has {len(y)}")
            if len(x) == 0:
                problems.append(f"x_{split} is empty")
            if y.numel() and int(y.min()) < 0:
                problems.append(f"y_{split} holds negative labels; expected class indices 0..C-1")
        if not problems and self.x_train.shape[1:] != self.x_test.shape[1:]:
            problems.append(f"x_train samples have shape {tuple(self.x_train.shape[1:])} but x_test samples "
                            f"{tuple(self.x_test.shape[1:])}")
        if problems:
            raise TaskError("bad TaskData: " + "; ".join(problems))
        if self.calibration is None:
            generator = torch.Generator().manual_seed(CALIBRATION_SEED)
            order = torch.randperm(len(self.x_train), generator=generator)[:CALIBRATION_SIZE]
            object.__setattr__(self, "calibration", self.x_train[order].contiguous())
        else:
            calibration = _as_tensor(self.calibration, torch.float32, "calibration")
            if calibration.shape[1:] != self.x_train.shape[1:] or len(calibration) == 0:
                raise TaskError(f"bad TaskData: calibration must be a non-empty batch of inputs shaped like "
                                f"x_train's {tuple(self.x_train.shape[1:])}, got {tuple(calibration.shape)}")
            object.__setattr__(self, "calibration", calibration)

    @property
    def num_classes(self) -> int:
        return int(max(int(self.y_train.max()), int(self.y_test.max()))) + 1


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> dict:
    """Top-1 accuracy (a fraction in [0, 1]) and mean cross-entropy of ``model`` on
    ``(x, y)``, in eval mode and without gradients.  The model's train/eval mode is
    restored afterwards."""
    if len(x) == 0 or len(x) != len(y):
        raise TaskError(f"evaluate_model needs as many labels as inputs (at least one); got {len(x)} inputs "
                        f"and {len(y)} labels")
    if batch_size < 1:
        raise TaskError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    was_training = model.training
    model.eval()
    correct = 0
    loss_sum = 0.0
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb = x[start:start + batch_size].to(device)
                yb = y[start:start + batch_size].to(device)
                logits = model(xb)
                loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return {"top1": correct / len(x), "loss": loss_sum / len(x)}


def train_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: TrainRecipe, *,
                epochs: int | None = None, lr: float | None = None, progress: bool = False,
                description: str = "training") -> nn.Module:
    """Train ``model`` on ``(x, y)`` with cross-entropy under ``recipe`` (deterministic on CPU).

    Only parameters with ``requires_grad`` are optimised, so a fake-quantized model (frozen
    scales, straight-through weights) trains the same way.  The global torch RNG is left
    as it was.  Training runs on one CPU thread (the thread count is restored after): sums
    split over several threads add up in an order that depends on the machine, and the
    cached float model, the basis of every number bitsearch reports, must not.  The model is
    returned in eval mode."""
    epochs = recipe.epochs if epochs is None else epochs
    lr = recipe.lr if lr is None else lr
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise TaskError(f"epochs must be an integer >= 0, got {epochs!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise TaskError(f"lr must be a positive number, got {lr!r}")
    if len(x) != len(y) or len(x) == 0:
        raise TaskError(f"training needs as many labels as inputs (at least one); got {len(x)} and {len(y)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if epochs == 0:
        return model.eval()
    if not params:
        raise TaskError("the model has no parameter that requires grad: nothing to train")
    device = model_device(model)
    n = len(x)
    batch_size = min(recipe.batch_size, n)
    batches = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(batches) > 1 and batches[-1][1] - batches[-1][0] < 2:
        batches.pop()  # a last batch of one sample breaks batch norm in train mode
    steps = epochs * len(batches)

    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
    elif recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    with seeded_training(model, recipe.seed, threads=1) as generator, \
            Bar(description, epochs, unit="epoch", enabled=bool(progress)) as bar:
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            loss_sum = 0.0
            for start, stop in batches:
                index = order[start:stop]
                xb, yb = x[index].to(device), y[index].to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                if not torch.isfinite(loss):
                    raise TaskError(f"{description}: the loss became {float(loss.detach())}; lower the learning rate "
                                    f"(lr={lr})")
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += float(loss.detach()) * (stop - start)
            bar.update(1, postfix=f"loss={loss_sum / batches[-1][1]:.4f}")
    return model


class Task:
    """A model factory, its data, a training recipe and a metric.

    ``model_factory(width_mult)`` returns a fresh, untrained ``nn.Module`` whose channels or
    hidden units are scaled by ``width_mult`` (see :func:`scale_width`).  ``data_factory()``
    returns a :class:`TaskData`; a task without one is *shape-only* (cost and scale work:
    no data, no training).  ``input_shape`` is one sample's shape, without the batch
    dimension.  ``data_settings`` (JSON-able) and ``version`` enter the cache key of the
    trained weights: change one when the data or the model changes in a way the key cannot
    see (the key already covers the name, the recipe, the width multiplier, the names and
    shapes of the model's parameters and torch's major.minor version).
    """

    def __init__(self, name: str, *, model_factory: Callable[[float], nn.Module],
                 input_shape: Sequence[int], data_factory: Callable[[], TaskData] | None = None,
                 description: str = "", recipe: TrainRecipe | None = None, metric: str = "top1",
                 data_settings: Mapping[str, Any] | None = None, version: str = "1"):
        problems = []
        if not isinstance(name, str) or not name.strip():
            problems.append(f"name must be a non-empty string, got {name!r}")
        if not callable(model_factory):
            problems.append("model_factory must be a function of the width multiplier returning an nn.Module")
        if data_factory is not None and not callable(data_factory):
            problems.append("data_factory must be a function returning TaskData (or None for a shape-only task)")
        try:
            shape = tuple(int(d) for d in input_shape)
            if not shape or min(shape) < 1:
                raise ValueError
        except (TypeError, ValueError):
            shape = ()
            problems.append(f"input_shape must be a non-empty sequence of positive ints (no batch dimension), "
                            f"got {input_shape!r}")
        recipe = TrainRecipe() if recipe is None else recipe
        if not isinstance(recipe, TrainRecipe):
            problems.append(f"recipe must be a TrainRecipe, got {type(recipe).__name__}")
        if metric not in METRICS:
            problems.append(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        settings = dict(data_settings or {})
        try:
            stable_hash(settings)
        except TypeError as exc:
            problems.append(f"data_settings must be JSON-serialisable: {exc}")
        if problems:
            label = name if isinstance(name, str) else "?"
            raise TaskError(f"task {label!r}: " + "; ".join(problems))
        self.name = name
        self.description = description
        self.metric = metric
        self.input_shape = shape
        self.recipe = recipe
        self.data_settings = settings
        self.version = str(version)
        self._model_factory = model_factory
        self._data_factory = data_factory
        self._data: TaskData | None = None
        self._weights: dict[str, dict] = {}

    def __repr__(self) -> str:
        kind = "shape-only" if self.shape_only else "trainable"
        return f"Task({self.name!r}, {kind}, input_shape={self.input_shape})"

    @property
    def shape_only(self) -> bool:
        return self._data_factory is None

    # --- model --------------------------------------------------------------------------
    def build_model(self, width_mult: float = 1.0) -> nn.Module:
        """A fresh, untrained model at ``width_mult`` (initialised from the global RNG)."""
        width_mult = check_width_mult(width_mult)
        model = self._model_factory(width_mult)
        if not isinstance(model, nn.Module):
            raise TaskError(f"task {self.name!r}: the model factory returned {type(model).__name__}, "
                            "expected a torch.nn.Module")
        return model

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A deterministic batch of inputs of the right shape (standard normal, seed 0)."""
        if not isinstance(batch, int) or batch < 1:
            raise TaskError(f"batch must be an integer >= 1, got {batch!r}")
        generator = torch.Generator().manual_seed(0)
        return torch.randn((batch, *self.input_shape), generator=generator)

    # --- data ---------------------------------------------------------------------------
    def data(self) -> TaskData:
        """The task's data, built once per task object (tasks may also cache it on disk)."""
        if self.shape_only:
            raise TaskError(f"task {self.name!r} is shape-only: it has no data and is not trained; use it for "
                            "costs and scale (bitsearch inspect), or pick a trainable task "
                            "(bitsearch tasks)")
        if self._data is None:
            data = self._data_factory()
            if not isinstance(data, TaskData):
                raise TaskError(f"task {self.name!r}: the data factory returned {type(data).__name__}, "
                                "expected bitsearch.tasks.TaskData")
            if tuple(data.x_train.shape[1:]) != self.input_shape:
                raise TaskError(f"task {self.name!r}: its data has samples of shape {tuple(data.x_train.shape[1:])} "
                                f"but input_shape says {self.input_shape}")
            self._data = data
        return self._data

    # --- training -----------------------------------------------------------------------
    def fit(self, model: nn.Module, data: TaskData, *, epochs: int | None = None, lr: float | None = None,
            progress: bool = False) -> nn.Module:
        """Train ``model`` on ``data``'s training split with this task's recipe (``epochs``
        and ``lr`` override it, e.g. for a short fine-tuning of a quantized model).
        Deterministic; only parameters that require grad are optimised; returns the model
        in eval mode."""
        if not isinstance(data, TaskData):
            raise TaskError(f"fit needs a TaskData, got {type(data).__name__}")
        return train_model(model, data.x_train, data.y_train, self.recipe, epochs=epochs, lr=lr,
                           progress=progress, description=f"training {self.name}")

    def cache_key(self, width_mult: float = 1.0) -> str:
        """The hash that names this task's trained weights at ``width_mult``: its name,
        version, recipe, data settings, the width multiplier and the names and shapes of
        the model's parameters (not the torch version: weights trained once are the same
        model under any torch, which is what lets the package ship them)."""
        width_mult = check_width_mult(width_mult)
        with torch.random.fork_rng(devices=[]):
            model = self.build_model(width_mult)
        architecture = [[name, list(t.shape)] for name, t in model.state_dict().items()]
        return stable_hash({"task": self.name, "version": self.version, "recipe": self.recipe.to_dict(),
                            "width_mult": repr(width_mult), "data": self.data_settings,
                            "architecture": architecture, "format": WEIGHTS_FORMAT})

    def shipped_weights_path(self, width_mult: float = 1.0) -> Path:
        """Where the package keeps this task's trained weights at ``width_mult`` when it
        ships them (the built-in tasks at the widths their benchmarks use): the same
        name as in the cache, so a changed recipe, data or architecture never finds them."""
        width_mult = check_width_mult(width_mult)
        return SHIPPED_WEIGHTS / f"{safe_name(self.name)}-w{width_mult:g}-{self.cache_key(width_mult)}.pt"

    def weights_path(self, width_mult: float = 1.0):
        """Where the trained weights at ``width_mult`` are (or will be) cached."""
        width_mult = check_width_mult(width_mult)
        return (cache_dir() / "weights" / safe_name(self.name)
                / f"w{width_mult:g}-{self.cache_key(width_mult)}.pt")

    def trained_model(self, width_mult: float = 1.0, progress: bool = False) -> nn.Module:
        """The float model at ``width_mult`` with trained weights, in eval mode.

        The weights the package ships (the built-in tasks at their benchmark widths, so
        every machine scores the same model), else the cache (memory, then disk), else
        trained once with :meth:`fit` under the recipe's seed and cached.  A shape-only
        task returns its randomly initialised model (seeded with the recipe's seed),
        without training or caching."""
        width_mult = check_width_mult(width_mult)
        if self.shape_only:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.recipe.seed)
                return self.build_model(width_mult).eval()
        path = self.weights_path(width_mult)
        with torch.random.fork_rng(devices=[]):
            model = self.build_model(width_mult)
        state = self._weights.get(path.name)
        if state is None:
            state = self._read_shipped(width_mult, model)
        if state is None:
            state = self._read_weights(path, model)
        if state is None:
            with file_lock(path):
                state = self._read_weights(path, model)  # another process may have trained it meanwhile
                if state is None:
                    state = self._train_and_save(width_mult, path, progress)
        self._weights[path.name] = state
        model.load_state_dict(state)
        return model.eval()

    def _read_shipped(self, width_mult: float, model: nn.Module) -> dict | None:
        path = self.shipped_weights_path(width_mult)
        if not path.exists():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            meta = saved["meta"]
            key = self.cache_key(width_mult)
            if meta.get("key") != key or meta.get("task") != self.name:
                raise ValueError(f"it names {meta.get('task')!r} with key {meta.get('key')!r}, expected {key!r}")
            model.load_state_dict(saved["state_dict"])
            return saved["state_dict"]
        except Exception as exc:  # a damaged installation: train as if nothing were shipped
            warnings.warn(f"task {self.name!r}: ignoring the shipped weights {path.name} ({exc}); training instead",
                          stacklevel=3)
            return None

    def _read_weights(self, path, model: nn.Module) -> dict | None:
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
            model.load_state_dict(state)
            return state
        except Exception as exc:  # a corrupt or foreign file: retrain and overwrite it
            warnings.warn(f"task {self.name!r}: ignoring unreadable cached weights {path} ({exc}); retraining",
                          stacklevel=3)
            return None

    def _train_and_save(self, width_mult: float, path, progress: bool) -> dict:
        data = self.data()
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.recipe.seed)
            model = self.build_model(width_mult)
        self.fit(model, data, progress=progress)
        seconds = time.perf_counter() - start
        metrics = evaluate_model(model, data.x_test, data.y_test)
        log.info("trained %s at width %g in %.1f s: test top1 %.4f", self.name, width_mult, seconds,
                 metrics["top1"])
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        meta = {"task": self.name, "key": self.cache_key(width_mult), "width_mult": width_mult,
                "recipe": self.recipe.to_dict(), "torch": str(torch.__version__), "seconds": round(seconds, 3),
                "top1": metrics["top1"], "loss": metrics["loss"]}
        atomic_write(path, lambda handle: torch.save({"state_dict": state, "meta": meta}, handle))
        return state

    def train_fresh(self, width_mult: float = 1.0, progress: bool = False) -> tuple[dict, dict]:
        """Train the float model at ``width_mult`` from scratch under the recipe (no cache
        read or written); returns ``(state_dict, record)``, the record as
        :meth:`weights_info` gives it.  What ``python -m bitsearch.tasks.ship`` runs."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "weights.pt"
            self._train_and_save(check_width_mult(width_mult), path, progress)
            saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved["state_dict"], saved["meta"]

    def weights_info(self, width_mult: float = 1.0) -> dict | None:
        """The record stored beside the trained weights (key, training seconds, test
        top-1...): the shipped ones', else the cached ones', or None when they have not
        been trained yet."""
        for path in (self.shipped_weights_path(width_mult), self.weights_path(width_mult)):
            if path.exists():
                try:
                    return dict(torch.load(path, map_location="cpu", weights_only=True)["meta"])
                except Exception:
                    continue
        return None
