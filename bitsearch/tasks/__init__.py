"""Tasks: a model factory (at a width multiplier), data, a training recipe and a metric.

This subpackage imports torch; the core (``import bitsearch``) does not import it.

>>> from bitsearch.tasks import get_task, evaluate_model
>>> task = get_task("digits-cnn")
>>> model = task.trained_model()            # trained once, then read from the cache
>>> data = task.data()
>>> evaluate_model(model, data.x_test, data.y_test)["top1"]   # doctest: +SKIP

Built-in tasks are listed by :func:`list_tasks`; a user task is ``package.module:factory``
where ``factory()`` returns a :class:`Task` (see ``docs/tasks.md``).  Trained float weights
and generated data are cached under ``$BITSEARCH_CACHE`` (default ``~/.cache/bitsearch``).
"""

from .base import Task, TaskData, TrainRecipe, evaluate_model, scale_width, train_model
from .cache import cache_dir
from .registry import BUILTIN_TASKS, get_source, get_task, list_tasks

__all__ = ["Task", "TaskData", "TrainRecipe", "evaluate_model", "get_source", "get_task", "list_tasks", "scale_width",
           "train_model", "cache_dir", "BUILTIN_TASKS"]
