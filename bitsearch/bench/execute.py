"""Executing runs, in whatever process a backend chose: build (or reuse) the problem, run
the searcher, and turn its result into the record the journal keeps."""

from __future__ import annotations

import importlib
import math
import os
import socket
import sys
import threading
import time
import traceback
from typing import Any, Iterable, Mapping, Sequence

from .. import __version__
from .._io import stable_key
from ..errors import UserInputError
from .suite import ORACLE_SEARCHER, is_problem_file

# record fields that depend on the machine, the clock or on what the cache already
# held, not on the run itself: left out when results are compared across backends
TIMING_FIELDS = ("seconds", "eval_seconds", "fresh_evaluations", "setup_seconds", "worker", "finished_at")


class CountingEvaluator:
    """Wraps an evaluator: caches its metrics by policy (shared by every run in the
    process that uses the same problem source), and counts fresh evaluations and their
    time.  Every other attribute is the wrapped evaluator's."""

    def __init__(self, inner, *, cache: bool = True, counts_into: "CountingEvaluator | None" = None):
        self._inner = inner
        self._cache: dict[str, dict] | None = {} if cache else None
        self._lock = threading.Lock()
        self._counts_into = counts_into
        self.fresh = 0
        self.seconds = 0.0

    def evaluate(self, policy):
        key = policy.key
        if self._cache is not None:
            with self._lock:
                hit = self._cache.get(key)
            if hit is not None:
                return dict(hit)
        start = time.perf_counter()
        metrics = dict(self._inner.evaluate(policy))
        with self._lock:
            if self._cache is not None:
                self._cache[key] = dict(metrics)
        self._count(time.perf_counter() - start)
        return metrics

    def _count(self, seconds: float) -> None:
        if self._counts_into is not None:
            self._counts_into._count(seconds)
            return
        with self._lock:
            self.seconds += seconds
            self.fresh += 1

    def __getattr__(self, name):
        return getattr(self._inner, name)


# per process: (source, sensitivity method, budget set) -> Problem; (source, method) ->
# table; source (or source@width) -> shared evaluator
_PROBLEMS: dict[tuple, Any] = {}
_TABLES: dict[tuple, Any] = {}
_EVALUATORS: dict[str, CountingEvaluator] = {}
_CACHE_LOCK = threading.RLock()


def clear_problem_cache() -> None:
    """Forget the problems and evaluations this process holds."""
    with _CACHE_LOCK:
        _PROBLEMS.clear()
        _TABLES.clear()
        _EVALUATORS.clear()


def _import_factory(source: str, suite_dir: str):
    module_name, _, attr = source.partition(":")
    if suite_dir and suite_dir not in sys.path:
        sys.path.insert(0, suite_dir)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserInputError(f"problem {source!r}: cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserInputError(f"problem {source!r}: module {module_name!r} has no {attr!r}") from None


def build_problem(spec: Mapping[str, Any], budgets: Sequence[str], sensitivity: str | None = None):
    """The Problem of ``spec`` under ``budgets`` (with a ``sensitivity`` table estimated
    by that method, or none), built with the same glue as the command line
    (:func:`bitsearch.build.problem_for_task`), or by a suite's problem factory."""
    from ..build import ProblemOptions, SpaceOptions

    space = spec["space"]
    scoring = spec["scoring"]
    space_options = SpaceOptions(granularity=space["granularity"], weight_bits=tuple(space["weight_bits"]),
                                 act_bits=None if space["act_bits"] is None else tuple(space["act_bits"]),
                                 pin_first_last=space.get("pin_first_last"))
    options = ProblemOptions(budgets=tuple(budgets), finetune_epochs=int(scoring["finetune_epochs"]),
                             width_mult=float(space.get("width_mult", 1.0)),
                             latency_table=scoring.get("latency_table"), sensitivity=sensitivity)
    if spec["kind"] == "problem" and is_problem_file(spec["source"]):
        from ..tabular import load_problem

        return load_problem(spec["source"], budgets, granularity=space["granularity"])
    if spec["kind"] == "problem":
        factory = _import_factory(spec["source"], spec.get("suite_dir", ""))
        problem = factory(space_options, options)
        from ..problem import Problem

        if not isinstance(problem, Problem):
            raise UserInputError(f"problem {spec['source']!r} returned {type(problem).__name__}, not a Problem")
        return problem
    from ..build import problem_for_task

    return problem_for_task(spec["source"], space_options, options, progress=bool(spec.get("progress")))


def _source_key(spec: Mapping[str, Any]) -> str:
    """What the evaluator depends on: the model, the space and how policies are scored."""
    scoring = {k: v for k, v in spec["scoring"].items() if k not in ("sensitivity", "shared_cache")}
    return stable_key(spec["kind"], spec["source"], spec["space"], scoring, spec.get("suite_dir"))


def _shared_problem(spec: Mapping[str, Any], budgets: Sequence[str], sensitivity: str | None = None):
    """A problem for ``budgets``; with ``shared_cache``, from this process's cache.

    Every problem of one source shares one evaluator (and so its cache of scored
    policies), and one sensitivity table per method: both depend on the model and the
    scoring, not on the budget.  Without ``shared_cache`` each run gets a fresh problem.
    """
    if not spec["scoring"].get("shared_cache", True):
        problem = build_problem(spec, budgets, sensitivity)
        if problem.evaluator is not None:
            problem.evaluator = CountingEvaluator(problem.evaluator, cache=False)
            _count_at_width(problem, problem.evaluator, None)
        return problem
    source = _source_key(spec)
    budgets = tuple(budgets)
    with _CACHE_LOCK:
        key = (source, sensitivity, budgets)
        if key in _PROBLEMS:
            return _PROBLEMS[key]
        table = _TABLES.get((source, sensitivity))
        if table is not None and spec["kind"] == "task":
            # estimated once per source and method: build without it, then attach it
            from dataclasses import replace

            problem = build_problem(spec, budgets, None)
            table.check_covers(problem.space)
            problem.sensitivity = table
            if "problem_options" in problem.info:
                problem.info["problem_options"] = replace(problem.info["problem_options"], sensitivity=sensitivity)
        else:
            problem = build_problem(spec, budgets, sensitivity)
            if sensitivity and problem.sensitivity is not None:
                _TABLES[(source, sensitivity)] = problem.sensitivity
        if problem.evaluator is not None:
            shared = _EVALUATORS.get(source)
            if shared is None:
                shared = _EVALUATORS[source] = CountingEvaluator(problem.evaluator)
            problem.evaluator = shared
            _count_at_width(problem, shared, source)
        _PROBLEMS[key] = problem
        return problem


def _count_at_width(problem, counter: CountingEvaluator, source: str | None) -> None:
    """Make the problems that ``problem.at_width`` builds (uniform-width's wider and
    narrower models) count their evaluations into ``counter``; with ``source``, every
    budget set shares one evaluation cache per width."""
    base = problem.at_width
    if base is None:
        return

    def at_width(mult, _base=base):
        sub = _base(mult)
        if sub.evaluator is not None:
            if source is None:
                sub.evaluator = CountingEvaluator(sub.evaluator, cache=False, counts_into=counter)
            else:
                with _CACHE_LOCK:
                    key = f"{source}@x{float(mult)!r}"
                    shared = _EVALUATORS.get(key)
                    if shared is None:
                        shared = _EVALUATORS[key] = CountingEvaluator(sub.evaluator, counts_into=counter)
                sub.evaluator = shared
        return sub

    problem.at_width = at_width


def _counter(problem) -> tuple[int, float]:
    ev = problem.evaluator
    if isinstance(ev, CountingEvaluator):
        return ev.fresh, ev.seconds
    return 0, 0.0


def execute_unit(unit: Mapping[str, Any], callback_factory=None) -> list[dict]:
    """Run every run of ``unit`` in this process; one record per run (never raises for
    a run's own failure: it is recorded as ``skipped`` for bad input, ``failed`` for a bug).

    Each record carries the policy JSON under ``policy_json``, for the parent to write.
    """
    return [execute_run(unit["problem"], run, callback_factory) for run in unit["runs"]]


def execute_run(spec: Mapping[str, Any], run: Mapping[str, Any], callback_factory=None) -> dict:
    from .. import searchers as registry

    record = {"key": run["key"], "searcher": run["searcher"], "label": run["label"],
              "settings": run["settings"], "seed": run["seed"], "deterministic": run["deterministic"],
              "oracle": run["oracle"], "variant": run["variant"], "budgets": run["budgets"],
              "model_key": run.get("model_key"),
              "budget_label": run["budget_label"], "bitsearch_version": __version__,
              "worker": f"{socket.gethostname()}:{os.getpid()}"}
    started = time.perf_counter()
    try:
        problem = _shared_problem(spec, run["budgets"], run.get("sensitivity"))
        record["setup_seconds"] = round(time.perf_counter() - started, 4)
        searcher = registry.create(run["searcher"], **run["settings"])
        fresh0, eval_s0 = _counter(problem)
        callback = callback_factory(run) if callback_factory else None
        try:
            result = searcher.search(problem, seed=run["seed"], callback=callback)
        finally:
            if callback is not None and hasattr(callback, "close"):
                callback.close()
        fresh1, eval_s1 = _counter(problem)
        record.update(_outcome(problem, result, spec.get("axis")))
        record["fresh_evaluations"] = fresh1 - fresh0
        record["eval_seconds"] = round(eval_s1 - eval_s0, 4)
        record["status"] = "ok"
    except UserInputError as exc:
        record.update(status="skipped", message=str(exc))
    except Exception as exc:  # a bug in a searcher must not take the other runs down
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        record.update(status="failed", message=f"{type(exc).__name__}: {exc}", traceback="".join(tb[-6:]))
    if "seconds" not in record:
        record["seconds"] = round(time.perf_counter() - started, 4)
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return _finite(record)


def _outcome(problem, result, axis: str | None) -> dict:
    objective = problem.objective
    higher = objective != "sensitivity"
    policy = result.policy
    metric = result.metrics.get(objective) if objective not in ("none",) else None
    # budgets: recomputed here from the problem's cost models, not taken from the searcher,
    # whenever the policy is for this problem's model (uniform-width's may be for a wider one)
    kept, costs = True, dict(result.costs)
    model = policy.meta.get("model") or {}
    if model.get("fingerprint") in (None, problem.space.fingerprint) and "width_mult" not in model:
        checked = problem.validate(policy)
        costs = problem.cost_of(checked)
        kept = not problem.violations(checked, costs)
    else:
        kept = all(b.allows(costs[b.cost]) for b in problem.budgets if b.cost in costs)
    out = {
        "objective": objective, "higher_is_better": higher,
        "metric": None if metric is None else float(metric),
        "score": result.score, "metrics": {k: v for k, v in result.metrics.items()},
        "costs": costs, "limits": problem.budgets_dicts(), "budget_kept": bool(kept),
        "evaluations": result.evaluations, "seconds": round(result.seconds, 4),
        "stopped_early": result.stopped_early, "policy_key": policy.key,
        "settings_used": result.settings, "policy_json": policy.to_json(),
    }
    if model.get("width_mult", 1.0) != 1.0:
        out["width_mult"] = model["width_mult"]
    out["policy_summary"] = policy_summary(policy)
    # best-so-far along the evaluations: (evaluation number, metric) at each improvement
    progress, best = [], None
    for ev in result.history:
        value = ev.metrics.get(objective) if objective != "none" else None
        if value is None:
            continue
        if best is None or (value > best if higher else value < best):
            best = value
            progress.append([ev.index + 1, float(value)])
    out["progress"] = progress
    curve = (result.info or {}).get("learning_curve")
    if curve:
        out["learning_curve"] = [dict(step) for step in curve]
    if run_is_exhaustive(result) and axis and objective != "none":
        out["frontier"] = pareto_front(
            [(ev.costs[axis], ev.metrics[objective]) for ev in result.history
             if axis in ev.costs and ev.metrics.get(objective) is not None], higher)
    return out


def policy_summary(policy) -> str:
    """Weight widths in layer order (``8/4/3/2/2/8``), or their mean for kernel-wise
    policies; ``@x1.25`` for a model at another width multiplier."""
    bits = [b for _, b in policy.bits]
    if any(b.per_kernel for b in bits):
        total = sum(len(b.weight_bits) for b in bits)
        mean = sum(sum(b.weight_bits) for b in bits) / total
        text = f"mean {mean:.2f} bit over {total} kernels"
    else:
        text = "/".join(str(b.weight_bits) for b in bits)
    mult = (policy.meta.get("model") or {}).get("width_mult", 1.0)
    return text + (f" @x{mult:g}" if mult != 1.0 else "")


def run_is_exhaustive(result) -> bool:
    return result.searcher == ORACLE_SEARCHER


def pareto_front(points: Iterable[tuple[float, float]], higher_is_better: bool = True) -> list[list[float]]:
    """The points no other point beats on both cost (lower) and metric, by cost."""
    best = None
    front = []
    for cost, value in sorted(points, key=lambda p: (p[0], -p[1] if higher_is_better else p[1])):
        if best is None or (value > best if higher_is_better else value < best):
            best = value
            front.append([float(cost), float(value)])
    return front


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return _finite(value.item())
        except (TypeError, ValueError):
            return value
    return value

