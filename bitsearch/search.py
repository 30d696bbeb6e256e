"""The searcher contract, search results, and the searcher registry.

A searcher takes its settings in the constructor and has one method::

    result = searcher.search(problem, seed=0, callback=None)

``callback(event)`` receives a :class:`SearchEvent` for progress; returning ``False``
stops the search, which then returns the best policy found so far (as
stable-baselines3 callbacks do).  The registry maps names to classes and is filled from
the entry-point group ``bitsearch.searchers``, so a package adds a searcher by declaring
an entry point alone.
"""

from __future__ import annotations

import json
import numbers
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, ClassVar, Mapping, Protocol, runtime_checkable

from ._io import atomic_write_text, dumps
from .errors import (InfeasibleBudgetError, SearcherSettingsError, SearcherUnsupportedError, UnknownSearcherError,
                     UserInputError)
from .policy import Policy
from .settings import SearcherSettings, build_settings, parse_value

ENTRY_POINT_GROUP = "bitsearch.searchers"
DEFAULT_SEED = 0


@dataclass(frozen=True)
class SearchEvent:
    """What a callback sees.  ``kind``: ``start``, ``evaluation``, ``progress``,
    ``episode`` or ``end``."""

    kind: str
    step: int = 0
    total: int | None = None
    best_score: float | None = None
    best_policy: Policy | None = None
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """One evaluated policy, in the order the search asked for it."""

    index: int
    policy: Policy
    costs: Mapping[str, float]
    metrics: Mapping[str, float]
    score: float
    seconds: float  # since the search started

    def to_dict(self) -> dict:
        return {"index": self.index, "policy_key": self.policy.key, "costs": dict(self.costs),
                "metrics": dict(self.metrics), "score": self.score, "seconds": round(self.seconds, 4)}


@dataclass
class SearchResult:
    """The best policy (with costs, metrics and search facts in its metadata), every
    policy evaluated, the time spent and the settings."""

    policy: Policy
    costs: dict[str, float]
    metrics: dict[str, float]
    score: float | None
    history: list[Evaluation]
    seconds: float
    searcher: str
    settings: dict
    seed: int
    stopped_early: bool = False
    info: dict = field(default_factory=dict)

    @property
    def evaluations(self) -> int:
        return len(self.history)

    def summary(self) -> dict:
        return {"searcher": self.searcher, "seed": self.seed, "score": self.score, "costs": self.costs,
                "metrics": self.metrics, "seconds": round(self.seconds, 4), "evaluations": self.evaluations,
                "stopped_early": self.stopped_early, "settings": self.settings}

    def save_history(self, path) -> None:
        atomic_write_text(path, dumps([e.to_dict() for e in self.history]))


@runtime_checkable
class Searcher(Protocol):
    name: ClassVar[str]

    def search(self, problem, *, seed: int | None = None,
               callback: Callable[[SearchEvent], Any] | None = None) -> SearchResult: ...


SEED_LIMIT = 2 ** 32


def check_seed(seed) -> int:
    """``seed`` as an int in ``[0, 2**32)`` (what numpy's and torch's generators take);
    None gives :data:`DEFAULT_SEED`.  Raises :class:`UserInputError` otherwise."""
    if seed is None:
        return DEFAULT_SEED
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise UserInputError(f"the seed must be an integer in [0, 2**32) (got {seed!r})")
    return int(seed)


class BaseSearcher:
    """Helper base: typed settings, the problem checks, and the run bookkeeping.

    Subclasses set ``name``, ``settings_class`` (a frozen dataclass of
    :class:`~bitsearch.settings.SearcherSettings`; the base class itself means "no
    settings"), ``granularities`` (the space granularities they support) and ``needs``,
    and implement ``_search(problem, run)``.  The constructor takes a settings instance,
    a mapping, keyword settings, or a mix (keywords win), and checks them all at once::

        RandomSearcher(samples=20)
        RandomSearcher(RandomSettings(samples=20))

    ``searcher.config`` is the typed, frozen settings instance; ``searcher.settings`` the
    same as plain JSON (what the policy records as ``search.settings``).
    """

    name: ClassVar[str] = ""
    settings_class: ClassVar[type[SearcherSettings]] = SearcherSettings
    granularities: ClassVar[tuple[str, ...]] = ("layer", "kernel")
    # what the searcher needs: "evaluator" (scores policies), "trainable" (trains the model:
    # a trainable evaluator), "sensitivity" (a table), "any" objective, or "nothing"
    needs: ClassVar[str] = "any"
    description: ClassVar[str] = ""
    # True when the seed cannot change the result (``bitsearch bench`` then runs it once)
    deterministic: ClassVar[bool] = False

    def __init__(self, settings: SearcherSettings | Mapping[str, Any] | None = None, /, **overrides):
        self.config = build_settings(self.settings_class, settings, overrides, source=f"searcher {self.name!r}")

    @property
    def settings(self) -> dict:
        """The settings as plain JSON (a fresh dict; change settings with ``config.replace``)."""
        return self.config.to_dict()

    def check(self, problem) -> None:
        """Raise :class:`SearcherUnsupportedError` when ``problem`` is one this searcher
        cannot handle (subclasses add their own conditions)."""
        if problem.space.granularity not in self.granularities:
            raise SearcherUnsupportedError(
                f"searcher {self.name!r} does not support {problem.space.granularity} granularity "
                f"(it supports {', '.join(self.granularities)})")
        message = problem.lacks(self.needs)
        if message:
            raise SearcherUnsupportedError(f"searcher {self.name!r} {message}")

    def search(self, problem, *, seed: int | None = None, callback=None) -> SearchResult:
        seed = check_seed(seed)
        self.check(problem)
        run = SearchRun(self, problem, seed, callback)
        run.emit("start", message=problem.describe())
        best = self._search(problem, run)
        return run.finish(best)

    def _search(self, problem, run: "SearchRun") -> Policy | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings.items())})"


class SearchRun:
    """Bookkeeping shared by searchers: evaluations, the best so far, the callback."""

    def __init__(self, searcher, problem, seed, callback):
        self.searcher = searcher
        self.problem = problem
        self.seed = check_seed(seed)
        self.callback = callback
        self.history: list[Evaluation] = []
        self.best: Evaluation | None = None
        self.stopped = False
        self.started = time.perf_counter()
        self.info: dict = {}
        self._cache: dict[tuple[str, str], Evaluation] = {}
        self._best_problem = problem

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def distinct_evaluations(self) -> int:
        """How many different policies this run has scored (repeats are served from its cache)."""
        return len(self._cache)

    def emit(self, kind: str, *, step: int = 0, total: int | None = None, message: str = "", **data) -> bool:
        """Send an event; returns False (and marks the run stopped) if the callback says stop."""
        if self.callback is None:
            return not self.stopped
        event = SearchEvent(kind, step, total, None if self.best is None else self.best.score,
                            None if self.best is None else self.best.policy, message, data)
        if self.callback(event) is False:
            self.stopped = True
        return not self.stopped

    def evaluate(self, policy: Policy, *, step: int | None = None, total: int | None = None,
                 problem=None) -> Evaluation:
        """Score ``policy`` (which must keep every budget) and record it.

        ``problem`` defaults to the run's problem; a searcher that changes the model
        (uniform-width) passes the problem of the model it evaluates.  A policy already
        evaluated in this run is not scored again, but is recorded again so that the
        history shows what the searcher asked for.
        """
        problem = self.problem if problem is None else problem
        cache_key = (problem.space.fingerprint, policy.key)
        cached = self._cache.get(cache_key)
        if cached is None:
            costs = problem.cost_of(policy)
            bad = problem.violations(policy, costs)
            if bad:
                raise AssertionError(f"{self.searcher.name} asked to evaluate a policy over budget: {bad}")
            metrics = problem.evaluate(policy)
            score = problem.score(metrics)
        else:
            costs, metrics, score = cached.costs, cached.metrics, cached.score
        evaluation = Evaluation(len(self.history), policy, costs, metrics, score, self.elapsed)
        self._cache.setdefault(cache_key, evaluation)
        self.history.append(evaluation)
        if self.best is None or score > self.best.score:
            self.best = evaluation
            self._best_problem = problem
        self.emit("evaluation", step=len(self.history) if step is None else step, total=total,
                  score=score, costs=dict(costs))
        return evaluation

    def finish(self, policy: Policy | None = None, problem=None) -> SearchResult:
        """Build the result.  ``policy`` defaults to the best evaluated one."""
        if policy is None:
            if self.best is None:
                raise InfeasibleBudgetError(f"{self.searcher.name} found no policy within the budgets")
            policy, problem = self.best.policy, self._best_problem
        problem = self.problem if problem is None else problem
        policy = problem.validate(policy)
        costs = problem.cost_of(policy)
        bad = problem.violations(policy, costs)
        if bad:  # a searcher bug, never a user error
            raise AssertionError(f"{self.searcher.name} returned a policy over budget: {'; '.join(bad)}")
        known = self._cache.get((problem.space.fingerprint, policy.key))
        metrics = dict(known.metrics) if known is not None else dict(problem.evaluate(policy))
        score = known.score if known is not None else problem.score(metrics)
        seconds = self.elapsed
        from . import __version__

        metric_kind = problem.metric_kind
        if metric_kind:
            metrics.setdefault("metric_kind", metric_kind)
        settings = _jsonable(self.searcher.settings)
        model = {"name": problem.space.model_name, "fingerprint": problem.space.fingerprint}
        if problem.info.get("width_mult", 1.0) != 1.0:
            model["width_mult"] = problem.info["width_mult"]
        policy = policy.with_meta(
            model=model,
            budgets=problem.budgets_dicts(),
            costs=costs,
            metrics=metrics,
            search={"searcher": self.searcher.name, "settings": settings, "seed": self.seed,
                    "seconds": round(seconds, 3), "evaluations": len(self.history),
                    "objective": problem.objective, "higher_is_better": problem.higher_is_better,
                    "bitsearch_version": __version__},
        )
        self.emit("end", step=len(self.history), message="done")
        return SearchResult(policy, costs, metrics, score, self.history, seconds, self.searcher.name,
                            settings, self.seed, self.stopped, self.info)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


# --- registry ---------------------------------------------------------------------------
_REGISTERED: dict[str, type] = {}


def register(name: str, cls: type) -> None:
    """Register a searcher class in this process (packages use the entry-point group)."""
    _REGISTERED[name] = cls


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Names of every searcher: registered in-process or declared as entry points."""
    return sorted(set(_entry_points()) | set(_REGISTERED))


def get(name: str) -> type:
    """The searcher class registered under ``name``."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    points = _entry_points()
    if name not in points:
        names = available()
        raise UnknownSearcherError(f"unknown searcher {name!r}; known searchers: {', '.join(names) or 'none'}"
                                   + ("" if names else " (is bitsearch installed? pip install -e .)"))
    try:
        cls = points[name].load()
    except (ImportError, AttributeError) as exc:
        raise UnknownSearcherError(f"searcher {name!r} is declared ({points[name].value}) but cannot be "
                                   f"loaded: {exc}") from None
    _REGISTERED[name] = cls
    return cls


def parse_settings(searcher_cls, pairs) -> dict:
    """``KEY=VALUE`` strings (``--set``) into settings for ``searcher_cls``, each value read
    as its field's type (:func:`bitsearch.settings.parse_value`); a bad name or value is a
    one-line :class:`SearcherSettingsError`.  A searcher without a settings dataclass (the
    bare protocol) gets JSON values where they parse, strings otherwise."""
    settings_class = getattr(searcher_cls, "settings_class", None)
    typed = isinstance(settings_class, type) and issubclass(settings_class, SearcherSettings)
    source = f"searcher {getattr(searcher_cls, 'name', searcher_cls.__name__)!r}"
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise SearcherSettingsError(f"--set {pair!r} does not parse: expected KEY=VALUE, e.g. samples=100")
        if typed:
            out[key] = parse_value(settings_class, key, text, source=source)
        else:
            try:
                out[key] = json.loads(text)
            except json.JSONDecodeError:
                out[key] = text
    return out


def create(name: str, **settings):
    """An instance of searcher ``name`` with ``settings``."""
    return get(name)(**settings)
