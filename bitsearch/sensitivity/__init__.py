"""Sensitivity estimates: the estimated loss increase of each decision unit at each width.

This package imports no torch; :func:`estimate` imports the estimators (torch) when it
is called.  Methods (see :mod:`bitsearch.sensitivity.estimators`):

* ``hessian``: Hutchinson trace of the Hessian per layer and per kernel times
  ``||Q_b(W) - W||^2`` (HAWQ-V3);
* ``bitgrad``: BMPQ's bit-gradient, the derivative of the loss with respect to a relaxed
  bit width, integrated from ``b`` to the widest width;
* ``empirical``: the measured loss increase with one layer (per kernel: one group of
  kernels) quantized alone;
* ``pairwise``: the measured single-layer losses plus cross-layer interaction terms of
  pairs of layers quantized together (CLADO), from batched forward passes (see
  :mod:`bitsearch.sensitivity.interactions`); the ``iqp`` searcher minimises both.

Results are cached on disk, under ``$BITSEARCH_CACHE/sensitivity`` (default
``~/.cache/bitsearch``), keyed by the model's trained weights, the space (layers,
widths, granularity), the method and its settings -- for tasks, and for models whose
evaluator names its weights (``cache_key``); other models' tables are computed afresh.
"""

from __future__ import annotations

import json

from .table import SensitivityTable

METHODS = ("hessian", "bitgrad", "empirical", "pairwise")
CACHE_FORMAT = 1

__all__ = ["SensitivityTable", "estimate", "METHODS", "cache_path"]


def _settings(method: str, samples, overrides: dict) -> dict:
    from .estimators import DEFAULTS

    known = DEFAULTS[method]
    unknown = sorted(set(overrides) - set(known) - {"samples"})
    if unknown:
        from ..errors import UserInputError

        raise UserInputError(f"sensitivity method {method!r} has no settings {unknown}; its settings are "
                             f"{', '.join(f'{k}={v}' for k, v in known.items())}")
    settings = dict(known)
    settings.update(overrides)
    if samples is not None:
        settings["samples"] = int(samples)
    return settings


def _source(source, width_mult: float):
    """A model evaluator for ``source``: a task (or its name) at ``width_mult``, or a model
    evaluator as it is (what :func:`bitsearch.problem_for_model` builds)."""
    from ..errors import UserInputError
    from ..problem import check_evaluator

    if isinstance(source, str):
        from ..tasks import get_task

        source = get_task(source)
    from ..tasks import Task

    if isinstance(source, Task):
        if source.shape_only:
            raise UserInputError(f"task {source.name!r} is shape-only (no data, no trained weights), so "
                                 f"sensitivities cannot be estimated on it; give a tabular problem (--problem FILE), "
                                 f"weights and data (--weights FILE --data imagefolder:DIR), or pick a trainable "
                                 f"task (bitsearch tasks)")
        from ..evaluate import Evaluator

        return Evaluator(source, width_mult=width_mult)
    check_evaluator(source, "model", who="sensitivity estimation")
    return source


def cache_path(source, space, method: str, *, width_mult: float = 1.0, seed: int = 0, **settings):
    """Where :func:`estimate` keeps the table of these arguments (None for a model whose
    evaluator has no ``cache_key``: such tables are not cached on disk)."""
    from .._io import stable_hash
    from ..tasks.cache import cache_dir, safe_name

    evaluator = _source(source, width_mult)
    weights = evaluator.cache_key
    if weights is None:
        return None
    settings = _settings(method, settings.pop("samples", None), settings)
    name = getattr(evaluator, "task", None)
    name = name.name if name is not None else evaluator.model_name
    key = stable_hash({
        "format": CACHE_FORMAT, "task": name, "weights": weights,
        "space": space.fingerprint, "granularity": space.granularity, "weight_bits": list(space.weight_bits),
        "act_bits": list(space.act_bits) if space.act_searched else None, "method": method,
        "settings": settings, "seed": int(seed)} | ({"scale_group": space.scale_group} if space.scale_group else {}))
    return cache_dir() / "sensitivity" / f"{safe_name(name)}-{method}-{key}.json"


def estimate(source, space, method: str = "hessian", *, width_mult: float = 1.0, samples: int | None = None,
             seed: int = 0, cache: bool = True, progress=False, **settings) -> SensitivityTable:
    """The sensitivity table of ``source``'s trained model over ``space`` by ``method``.

    ``source``: a Task, a task name, or a model evaluator (a task's
    :class:`~bitsearch.evaluate.Evaluator`, or the :class:`~bitsearch.evaluate.ModelEvaluator`
    of :func:`bitsearch.problem_for_model`: its calibration batches and loss are used).
    ``samples``: samples used (default 512).  Method settings: ``probes`` (hessian,
    default 64), ``groups`` (empirical per kernel, default 8), ``batch_size``.  ``cache``:
    read and write the on-disk cache (only for sources with a ``cache_key``).  ``progress``:
    True draws a bar per step of the estimate on a terminal (what the commands pass), or a
    callable ``progress(step, done, total, detail)`` is told each step (see
    :class:`bitsearch.progress.StepBars`); a table read from the cache reports nothing.
    """
    from ..errors import UserInputError

    if method not in METHODS:
        raise UserInputError(f"unknown sensitivity method {method!r}; methods: {', '.join(METHODS)}")
    evaluator = _source(source, width_mult)
    settings = _settings(method, samples, settings)
    path = cache_path(evaluator, space, method, width_mult=width_mult, seed=seed, **settings) if cache else None
    if path is not None and path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            table = SensitivityTable.from_dict(data["table"])
            table.check_covers(space)
            return table
        except Exception:  # unreadable or stale: compute again and overwrite
            pass
    from .estimators import compute

    bars = None
    if progress and not callable(progress):
        from ..progress import StepBars

        progress = bars = StepBars(f"sensitivity ({method}): ")
    try:
        table = compute(evaluator, space, method, samples=settings["samples"], seed=seed, settings=settings,
                        progress=progress or None)
    finally:
        if bars is not None:
            bars.close()
    if path is not None:
        from .._io import atomic_write_text

        record = {"schema": "bitsearch-sensitivity-cache", "format": CACHE_FORMAT, "model": evaluator.model_name,
                  "width_mult": width_mult, "space": space.fingerprint, "granularity": space.granularity,
                  "method": method, "settings": settings, "seed": seed, "table": table.to_dict()}
        try:
            atomic_write_text(path, json.dumps(record))
        except OSError:  # a read-only cache is not an error
            pass
    return table
