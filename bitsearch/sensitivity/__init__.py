"""Sensitivity estimates: the estimated loss increase of each decision unit at each width.

This package imports no torch; :func:`estimate` imports the estimators (torch) when it
is called.  Methods (see :mod:`bitsearch.sensitivity.estimators`):

* ``hessian``: Hutchinson trace of the Hessian per layer and per kernel times
  ``||Q_b(W) - W||^2`` (HAWQ-V3);
* ``bitgrad``: BMPQ's bit-gradient, the derivative of the loss with respect to a relaxed
  bit width, integrated from ``b`` to the widest width;
* ``empirical``: the measured loss increase with one layer (per kernel: one group of
  kernels) quantized alone.

Results are cached on disk, under ``$BITSEARCH_CACHE/sensitivity`` (default
``~/.cache/bitsearch``), keyed by the model's trained weights, the space (layers,
widths, granularity), the method and its settings.
"""

from __future__ import annotations

import json

from .table import SensitivityTable

METHODS = ("hessian", "bitgrad", "empirical")
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


def cache_path(task, space, method: str, *, width_mult: float = 1.0, seed: int = 0, **settings):
    """Where :func:`estimate` keeps the table of these arguments."""
    from .._io import stable_hash
    from ..tasks.cache import cache_dir, safe_name

    settings = _settings(method, settings.pop("samples", None), settings)
    key = stable_hash({
        "format": CACHE_FORMAT, "task": task.name, "weights": task.cache_key(width_mult),
        "space": space.fingerprint, "granularity": space.granularity, "weight_bits": list(space.weight_bits),
        "act_bits": list(space.act_bits) if space.act_searched else None, "method": method,
        "settings": settings, "seed": int(seed)})
    return cache_dir() / "sensitivity" / f"{safe_name(task.name)}-{method}-{key}.json"


def estimate(task, space, method: str = "hessian", *, width_mult: float = 1.0, samples: int | None = None,
             seed: int = 0, cache: bool = True, **settings) -> SensitivityTable:
    """The sensitivity table of ``task``'s trained model over ``space`` by ``method``.

    ``task``: a Task or a task name.  ``samples``: training samples used (default 512).
    Method settings: ``probes`` (hessian, default 64), ``groups`` (empirical per kernel,
    default 8), ``batch_size``.  ``cache``: read and write the on-disk cache.
    """
    from ..errors import UserInputError

    if method not in METHODS:
        raise UserInputError(f"unknown sensitivity method {method!r}; methods: {', '.join(METHODS)}")
    if isinstance(task, str):
        from ..tasks import get_task

        task = get_task(task)
    if task.shape_only:
        raise UserInputError(f"task {task.name!r} is shape-only (no data, no trained weights), so sensitivities "
                             f"cannot be estimated on it; give a tabular problem (--problem FILE) or pick a "
                             f"trainable task (bitsearch tasks)")
    settings = _settings(method, samples, settings)
    path = cache_path(task, space, method, width_mult=width_mult, seed=seed, **settings)
    if cache and path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            table = SensitivityTable.from_dict(data["table"])
            table.check_covers(space)
            return table
        except Exception:  # unreadable or stale: compute again and overwrite
            pass
    from .estimators import compute

    model = task.trained_model(width_mult)
    table = compute(model, space, task.data(), method, samples=settings["samples"], seed=seed, settings=settings)
    if cache:
        from .._io import atomic_write_text

        record = {"schema": "bitsearch-sensitivity-cache", "format": CACHE_FORMAT, "task": task.name,
                  "width_mult": width_mult, "space": space.fingerprint, "granularity": space.granularity,
                  "method": method, "settings": settings, "seed": seed, "table": table.to_dict()}
        try:
            atomic_write_text(path, json.dumps(record))
        except OSError:  # a read-only cache is not an error
            pass
    return table
