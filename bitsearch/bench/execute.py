"""Executing runs, in whatever process a backend chose: get the problem from a
:class:`ProblemCache`, run the searcher, and turn its result into the record the journal
keeps (a JSON object: the journal's line, and a row of ``results.json``)."""

from __future__ import annotations

import importlib
import math
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

from .. import __version__
from ..errors import UserInputError
from .plan import ProblemSpec, Run, Unit, ValidationRun
from .suite import ORACLE_SEARCHER

# record fields that depend on the machine, the clock or on what the cache already
# held, not on the run itself: left out when results are compared across backends
TIMING_FIELDS = ("seconds", "eval_seconds", "fresh_evaluations", "setup_seconds", "worker", "finished_at")


class CountingEvaluator:
    """Wraps an evaluator: caches its metrics by policy (``cache=True``: shared by every run
    of a :class:`ProblemCache` that uses the same problem source), and counts fresh
    evaluations and their time (into ``counts_into`` when given).  Every other attribute is
    the wrapped evaluator's."""

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


class ProblemCache:
    """The problems the runs of one process (or one unit) share.

    Problems are built once per (source, sensitivity method, budget set); every problem of
    one source shares one :class:`CountingEvaluator` (so a policy is scored once, whatever
    the budget), one sensitivity table per method, and one evaluator per width multiplier
    for the problems ``at_width`` builds (uniform-width's wider and narrower models).  The
    problems handed out are new objects that wrap what the builder returned; nothing of it
    is changed.  A suite with ``shared_cache = false`` gets a fresh problem per run, whose
    evaluator counts but does not cache.  The cache lives as long as its owner (a backend's
    ``run``, or one unit in a worker) keeps it.
    """

    def __init__(self):
        self._problems: dict[tuple, Any] = {}
        self._tables: dict[tuple, Any] = {}
        self._evaluators: dict[str, CountingEvaluator] = {}
        self._lock = threading.RLock()

    def problem(self, spec: ProblemSpec, budgets: Sequence[str], sensitivity: str | None = None):
        """The problem of ``spec`` under ``budgets`` (with a ``sensitivity`` table by that method)."""
        if not spec.scoring.shared_cache:
            problem = build_problem(spec, budgets, sensitivity)
            counter = None if problem.evaluator is None else CountingEvaluator(problem.evaluator, cache=False)
            return self._counted(problem, counter, None)
        source, budgets = spec.source_key, tuple(budgets)
        with self._lock:
            key = (source, sensitivity, budgets)
            if key not in self._problems:
                self._problems[key] = self._build(spec, source, budgets, sensitivity)
            return self._problems[key]

    def _build(self, spec: ProblemSpec, source: str, budgets: tuple[str, ...], sensitivity: str | None):
        table = self._tables.get((source, sensitivity))
        changes: dict[str, Any] = {}
        if table is not None and spec.variant.source_kind == "task":
            # estimated once per source and method: build without it, then hand out a problem with it
            problem = build_problem(spec, budgets, None)
            changes["sensitivity"] = table
            if "problem_options" in problem.info:
                changes["info"] = dict(problem.info, problem_options=replace(problem.info["problem_options"],
                                                                             sensitivity=sensitivity))
        else:
            problem = build_problem(spec, budgets, sensitivity)
            if sensitivity and problem.sensitivity is not None:
                self._tables[(source, sensitivity)] = problem.sensitivity
        counter = None
        if problem.evaluator is not None:
            counter = self._evaluators.get(source)
            if counter is None:
                counter = self._evaluators[source] = CountingEvaluator(problem.evaluator)
        return self._counted(problem, counter, source, **changes)

    def _counted(self, problem, counter: CountingEvaluator | None, source: str | None, **changes):
        """``problem`` with ``counter`` as its evaluator, and an ``at_width`` whose problems
        count their evaluations into ``counter`` (with ``source``: sharing one cache per
        width across budget sets)."""
        if counter is not None:
            changes["evaluator"] = counter
            if problem.at_width is not None:
                changes["at_width"] = self._counted_widths(problem.at_width, counter, source)
        return replace(problem, **changes) if changes else problem

    def _counted_widths(self, base, counter: CountingEvaluator, source: str | None):
        def at_width(mult):
            sub = base(mult)
            if sub.evaluator is None:
                return sub
            if source is None:
                return replace(sub, evaluator=CountingEvaluator(sub.evaluator, cache=False, counts_into=counter))
            with self._lock:
                key = f"{source}@x{float(mult)!r}"
                shared = self._evaluators.get(key)
                if shared is None:
                    shared = self._evaluators[key] = CountingEvaluator(sub.evaluator, counts_into=counter)
            return replace(sub, evaluator=shared)

        return at_width


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


def build_problem(spec: ProblemSpec, budgets: Sequence[str], sensitivity: str | None = None):
    """The Problem of ``spec`` under ``budgets`` (with a ``sensitivity`` table estimated
    by that method, or none), built with the same glue as the command line
    (:func:`bitsearch.build.problem_for`: a task or a user's trained model), or by a suite's
    problem factory."""
    from ..build import ProblemOptions, SpaceOptions

    variant, scoring = spec.variant, spec.scoring
    space_options = SpaceOptions(granularity=variant.granularity, weight_bits=tuple(variant.weight_bits),
                                 act_bits=variant.act_bits, pin_first_last=variant.pin_first_last)
    options = ProblemOptions(budgets=tuple(budgets), finetune_epochs=int(scoring.finetune_epochs),
                             width_mult=float(variant.width_mult), latency_table=scoring.latency_table,
                             sensitivity=sensitivity)
    if variant.is_file:
        from ..tabular import load_problem

        return load_problem(variant.source, budgets, granularity=variant.granularity)
    if variant.source_kind == "problem":
        from ..problem import Problem

        problem = _import_factory(variant.source, spec.suite_dir)(space_options, options)
        if not isinstance(problem, Problem):
            raise UserInputError(f"problem {variant.source!r} returned {type(problem).__name__}, not a Problem")
        return problem
    from ..build import problem_for

    return problem_for(variant.source, space_options, options, progress=spec.progress)


def _counter(problem) -> tuple[int, float]:
    ev = problem.evaluator
    if isinstance(ev, CountingEvaluator):
        return ev.fresh, ev.seconds
    return 0, 0.0


def execute_unit(unit: Unit, cache: ProblemCache | None = None, callback_factory=None) -> list[dict]:
    """Run every run of ``unit`` in this process, sharing ``cache`` (default: a fresh one for
    this unit); one record per run (never raises for a run's own failure: it is recorded
    as ``skipped`` for bad input, ``failed`` for a bug).

    Each record carries the policy JSON under ``policy_json``, for the parent to write.
    """
    cache = ProblemCache() if cache is None else cache
    return [execute_run(unit.problem, run, cache, callback_factory) for run in unit.runs]


def execute_run(spec: ProblemSpec, run: Run, cache: ProblemCache, callback_factory=None) -> dict:
    """Run one search on the problem ``cache`` gives for ``spec``; its journal record."""
    from .. import searchers as registry

    record = {"key": run.key, "searcher": run.searcher, "label": run.label,
              "settings": dict(run.settings), "seed": run.seed, "deterministic": run.deterministic,
              "oracle": run.oracle, "variant": run.variant, "budgets": list(run.budgets),
              "model_key": run.model_key,
              "budget_label": run.budget_label, "bitsearch_version": __version__,
              "worker": f"{socket.gethostname()}:{os.getpid()}"}
    started = time.perf_counter()

    def work():
        problem = cache.problem(spec, run.budgets, run.sensitivity)
        record["setup_seconds"] = round(time.perf_counter() - started, 4)
        searcher = registry.create(run.searcher, **run.settings)
        fresh0, eval_s0 = _counter(problem)
        callback = callback_factory(run) if callback_factory else None
        try:
            result = searcher.search(problem, seed=run.seed, callback=callback)
        finally:
            if callback is not None and hasattr(callback, "close"):
                callback.close()
        fresh1, eval_s1 = _counter(problem)
        record.update(_outcome(problem, result, spec.axis))
        record["fresh_evaluations"] = fresh1 - fresh0
        record["eval_seconds"] = round(eval_s1 - eval_s0, 4)

    return _attempt(record, work, started)


def execute_validation(spec: ProblemSpec, validation: ValidationRun, cache: ProblemCache, progress=None) -> dict:
    """The proxy validation of ``spec`` under the validation's budgets (see
    :func:`bitsearch.validation.validate`); its journal record (``kind: validation``)."""
    record = {"key": validation.key, "kind": "validation", "variant": validation.variant,
              "budgets": list(validation.budgets), "budget_label": validation.budget_label,
              "policies": validation.policies, "seed": validation.seed, "bitsearch_version": __version__,
              "worker": f"{socket.gethostname()}:{os.getpid()}"}

    def work():
        from ..validation import validate

        problem = cache.problem(spec, validation.budgets)
        record["validation"] = validate(problem, validation.policies, seed=validation.seed,
                                        width_mult=float(spec.variant.width_mult), progress=progress)

    return _attempt(record, work, time.perf_counter())


def _attempt(record: dict, work, started: float) -> dict:
    """``record`` after ``work()``: status ``ok``; ``skipped`` with the message for bad
    input; ``failed`` with the message and the traceback's tail for a bug (one run's bug
    must not take the others down); its seconds and time; JSON-safe."""
    try:
        work()
        record["status"] = "ok"
    except UserInputError as exc:
        record.update(status="skipped", message=str(exc))
    except Exception as exc:
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        record.update(status="failed", message=f"{type(exc).__name__}: {exc}", traceback="".join(tb[-6:]))
    if "seconds" not in record:
        record["seconds"] = round(time.perf_counter() - started, 4)
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return _finite(record)


def _outcome(problem, result, axis: str | None) -> dict:
    objective = problem.objective
    higher = problem.higher_is_better
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
    passes = (result.info or {}).get("forward_passes")
    if isinstance(passes, (int, float)) and not isinstance(passes, bool):
        out["forward_passes"] = int(passes)  # iqp: its table's and its trust region's, beside evaluations
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

