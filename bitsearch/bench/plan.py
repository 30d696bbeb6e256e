"""The plan of a bench: every run of a suite (variant x budget set x searcher x seed) with its
stable key, and the units of work the backends execute.

:class:`Run`, :class:`ProblemSpec` and :class:`Unit` are frozen and picklable: a unit is
all a worker process (or a Dask worker on another machine) needs to execute its runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .._io import stable_key
from ..errors import UserInputError
from .suite import Scoring, Suite, Variant, _slug, run_sensitivity


def budget_label(budgets: Sequence[str]) -> str:
    return " + ".join(budgets)


@dataclass(frozen=True)
class Run:
    """One search: a searcher with its settings and seed, under one budget set, on one variant.

    ``key`` is a stable hash of everything that changes the result (searcher, settings,
    budgets, seed, the variant, the scoring, the trained model): what the journal is keyed by."""

    key: str
    variant: str  # the variant's label
    variant_index: int
    budgets: tuple[str, ...]
    budget_index: int
    label: str
    searcher: str
    seed: int
    deterministic: bool
    oracle: bool
    sensitivity: str | None
    model_key: str | None
    settings: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def budget_label(self) -> str:
        return budget_label(self.budgets)

    @property
    def title(self) -> str:
        """``random size=3bit seed 1``: the run in a progress line."""
        return f"{self.label} {self.budget_label}" + ("" if self.deterministic else f" seed {self.seed}")

    def display(self) -> dict:
        """The fields a results row takes from the plan (JSON types)."""
        return {"key": self.key, "label": self.label, "searcher": self.searcher, "seed": self.seed,
                "deterministic": self.deterministic, "oracle": self.oracle, "variant": self.variant,
                "budgets": list(self.budgets), "budget_label": self.budget_label}


@dataclass(frozen=True)
class ProblemSpec:
    """How to build the problem of a variant: the variant, the suite's scoring, the suite's
    folder (for problem factories and files), the cost on the plots' x axis, and whether
    building may draw progress bars (only in the bench's own process)."""

    variant: Variant
    scoring: Scoring
    suite_dir: str
    axis: str
    progress: bool = False

    @property
    def source_key(self) -> str:
        """What the evaluator depends on: the model, the space and how policies are scored
        (not the budgets, not the sensitivity table)."""
        scoring = {"finetune_epochs": self.scoring.finetune_epochs, "latency_table": self.scoring.latency_table}
        return stable_key(self.variant.source_kind, self.variant.source, self.variant.to_dict(), scoring,
                          self.suite_dir)


@dataclass(frozen=True)
class Unit:
    """Runs that execute together, in one process, on one problem source."""

    problem: ProblemSpec
    runs: tuple[Run, ...]


def plan_runs(suite: Suite, only: Iterable[str] | None = None, *, check: bool = True) -> list[Run]:
    """Every run of the suite, in report order.  ``only``: labels or searcher names to
    keep (the oracle is kept while the suite asks for one).  ``check``: load every
    selected searcher and its settings now, so that a bad one fails before any run."""
    from .. import searchers as registry

    selected = list(suite.searchers)
    if only:
        wanted = {w.strip() for item in only for w in str(item).split(",") if w.strip()}
        missing = sorted(w for w in wanted if not any(w in (e.label, e.name) for e in suite.searchers))
        if missing:
            raise UserInputError(f"--only {', '.join(missing)}: not in suite {suite.name!r} (its searchers: "
                                 f"{', '.join(e.label for e in suite.searchers)})")
        selected = [e for e in suite.searchers if e.oracle or e.label in wanted or e.name in wanted]
    for entry in selected if check else ():  # fail now, before any run, on a missing searcher or bad settings
        try:
            cls = registry.get(entry.name)
        except UserInputError as exc:
            raise UserInputError(f"{suite.path}: {exc} (leave it out with --only)") from None
        try:
            cls(**entry.settings)
        except UserInputError as exc:
            raise UserInputError(f"{suite.path}: searcher {entry.label!r}: {exc}") from None
        except TypeError as exc:
            raise UserInputError(f"{suite.path}: searcher {entry.label!r}: bad settings: {exc}") from None
    runs = []
    model_keys: dict[tuple, str | None] = {}
    for vi, variant in enumerate(suite.variants):
        try:
            model = model_key(variant, model_keys)
        except UserInputError as exc:
            raise UserInputError(f"{suite.path}: {exc}") from None
        for bi, budgets in enumerate(suite.budgets):
            for entry in selected:
                seeds = suite.seeds[:1] if entry.deterministic else suite.seeds
                sensitivity = run_sensitivity(suite, entry, variant)
                scoring = dict(suite.scoring.key_dict(), sensitivity=sensitivity)
                for seed in seeds:
                    key = stable_key(entry.name, dict(entry.settings), list(budgets), seed, variant.to_dict(),
                                     scoring, model)
                    runs.append(Run(key=key, variant=variant.label, variant_index=vi, budgets=tuple(budgets),
                                    budget_index=bi, label=entry.label, searcher=entry.name, seed=seed,
                                    deterministic=bool(entry.deterministic), oracle=entry.oracle,
                                    sensitivity=sensitivity, model_key=model, settings=dict(entry.settings)))
    return runs


@dataclass(frozen=True)
class ValidationRun:
    """The proxy validation of one variant under one budget set (a suite's ``validate = N``):
    ``policies`` policies drawn with ``seed`` (the suite's first), measured, and every
    sensitivity method's ranking of them checked (:func:`bitsearch.validation.validate`).
    ``key`` is journaled like a run's."""

    key: str
    variant: str
    variant_index: int
    budgets: tuple[str, ...]
    policies: int
    seed: int

    @property
    def budget_label(self) -> str:
        return budget_label(self.budgets)


def plan_validations(suite: Suite) -> list[ValidationRun]:
    """The proxy validations of the suite, in report order (none without ``validate``)."""
    if not suite.validate:
        return []
    out = []
    model_keys: dict[tuple, str | None] = {}
    seed = suite.seeds[0]
    for vi, variant in enumerate(suite.variants):
        model = model_key(variant, model_keys)
        for budgets in suite.budgets:
            key = stable_key("validation", suite.validate, list(budgets), seed, variant.to_dict(),
                             suite.scoring.key_dict(), model)
            out.append(ValidationRun(key, variant.label, vi, tuple(budgets), suite.validate, seed))
    return out


def model_key(variant: Variant, known: dict | None = None) -> str | None:
    """What names the trained model a variant's runs score with: the task's weights key
    (its recipe, data, architecture...; a user's trained model: its ``cache_key``, or
    None), or a problem file's digest.  Part of every run
    key, so that a changed recipe means new runs, never results of two models mixed by
    a ``--resume``.  (A problem factory's model is the factory's business.)  ``known``:
    keys already computed, by (task, width multiplier)."""
    if variant.source_kind != "task":
        return variant.digest
    known = {} if known is None else known
    where = (variant.source, variant.width_mult)
    if where not in known:
        from ..tasks import Task, get_source

        source = get_source(variant.source)
        known[where] = source.cache_key(variant.width_mult) if isinstance(source, Task) else source.cache_key
    return known[where]


def problem_spec(suite: Suite, variant: Variant, progress: bool = False) -> ProblemSpec:
    return ProblemSpec(variant, suite.scoring, suite.directory, suite.axis_cost, progress)


def make_units(suite: Suite, runs: Sequence[Run], *, progress: bool = False) -> list[Unit]:
    """Group runs into units of work for a process.  The oracle's runs of one variant
    form one unit (every budget then shares one evaluation cache); every other run is a
    unit of its own.  The oracle goes first: it is the longest, and in-process it fills
    the cache the others read."""
    singles: list[Unit] = []
    oracle_runs: dict[int, list[Run]] = {}
    for run in runs:
        if run.oracle and suite.scoring.shared_cache:
            oracle_runs.setdefault(run.variant_index, []).append(run)
        else:
            singles.append(Unit(problem_spec(suite, suite.variants[run.variant_index], progress), (run,)))
    grouped = [Unit(problem_spec(suite, suite.variants[vi], progress), tuple(group))
               for vi, group in oracle_runs.items()]
    return grouped + singles


def policy_path(suite: Suite, run: Run) -> str:
    """Where a run's policy goes, relative to the bench's folder."""
    parts = ["policies"]
    if len(suite.variants) > 1:
        parts.append(suite.variants[run.variant_index].slug)
    parts.append(_slug(run.budget_label))
    name = _slug(run.label) + ("" if run.deterministic else f"-seed{run.seed}") + ".json"
    return "/".join(parts + [name])
