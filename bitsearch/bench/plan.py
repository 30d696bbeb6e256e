"""The plan of a bench: every run of a suite (searcher x budget set x seed x variant) with
its stable key, and the units of work the backends execute."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Iterable, Mapping, Sequence

from .._io import stable_key
from ..errors import UserInputError
from .suite import Suite, Variant, _slug, run_sensitivity

def budget_label(budgets: Sequence[str]) -> str:
    return " + ".join(budgets)


def plan_runs(suite: Suite, only: Iterable[str] | None = None, *, check: bool = True) -> list[dict]:
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
    for vi, variant in enumerate(suite.variants):
        try:
            model = model_key(variant)
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
                    runs.append({
                        "key": key, "variant": variant.label, "variant_index": vi, "budgets": list(budgets),
                        "budget_label": budget_label(budgets), "budget_index": bi, "label": entry.label,
                        "searcher": entry.name, "settings": dict(entry.settings), "seed": seed,
                        "deterministic": bool(entry.deterministic), "oracle": entry.oracle,
                        "sensitivity": sensitivity, "model_key": model,
                    })
    return runs


_MODEL_KEYS: dict[tuple, str | None] = {}


def model_key(variant: Variant) -> str | None:
    """What names the trained model a variant's runs score with: the task's weights key
    (its recipe, data, architecture...), or a problem file's digest.  Part of every run
    key, so that a changed recipe means new runs, never results of two models mixed by
    a ``--resume``.  (A problem factory's model is the factory's business.)"""
    if variant.source_kind != "task":
        return variant.digest
    cache = (variant.source, variant.width_mult)
    if cache not in _MODEL_KEYS:
        from ..tasks import get_task

        _MODEL_KEYS[cache] = get_task(variant.source).cache_key(variant.width_mult)
    return _MODEL_KEYS[cache]


def _problem_spec(suite: Suite, variant: Variant, progress: bool = False) -> dict:
    return {"kind": variant.source_kind, "source": variant.source, "space": variant.to_dict(),
            "scoring": asdict(suite.scoring), "suite_dir": suite.directory, "axis": suite.axis_cost,
            "progress": progress}


def make_units(suite: Suite, runs: Sequence[dict], *, progress: bool = False) -> list[dict]:
    """Group runs into units of work for a process.  The oracle's runs of one variant
    form one unit (every budget then shares one evaluation cache); every other run is a
    unit of its own.  The oracle goes first: it is the longest, and in-process it fills
    the cache the others read."""
    units: list[dict] = []
    oracle_units: dict[int, dict] = {}
    for run in runs:
        spec = _problem_spec(suite, suite.variants[run["variant_index"]], progress)
        if run["oracle"] and suite.scoring.shared_cache:
            unit = oracle_units.get(run["variant_index"])
            if unit is None:
                unit = oracle_units[run["variant_index"]] = {"problem": spec, "runs": []}
            unit["runs"].append(run)
        else:
            units.append({"problem": spec, "runs": [run]})
    return list(oracle_units.values()) + units



def policy_path(suite: Suite, run: Mapping[str, Any]) -> str:
    parts = ["policies"]
    if len(suite.variants) > 1:
        parts.append(suite.variants[run["variant_index"]].slug)
    parts.append(_slug(run["budget_label"]))
    name = _slug(run["label"]) + ("" if run["deterministic"] else f"-seed{run['seed']}") + ".json"
    return "/".join(parts + [name])

