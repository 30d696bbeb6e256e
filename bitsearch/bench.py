"""The benchmark harness behind ``bitsearch bench``: searchers against each other.

A *suite* (a TOML file, see :data:`SUITE_FORMAT`) names the task, the search space, the
budgets, the searchers with their settings, the seeds and how policies are scored.  The
bench runs every searcher x budget set x seed (a searcher that is deterministic runs
once), optionally with the ``exhaustive`` searcher as the oracle, and writes into the
output directory:

* ``results.jsonl`` -- the journal: one line per finished run, fsync'd (see
  :mod:`bitsearch.journal`); what ``--resume`` reads;
* ``results.json`` -- the suite, every run in plan order, and the summary rows;
* ``report.md`` -- per searcher and budget: the metric's mean and spread over seeds,
  cost, regret to the oracle, search seconds, evaluations, budget kept;
* ``pareto.png`` and ``curves.png`` -- accuracy against cost, and best-so-far /
  learning curves;
* ``policies/`` -- each run's policy JSON.

Runs are executed in this process (the default), on ``--jobs N`` local processes, or on
a Dask cluster (``--scheduler tcp://host:port`` or ``local``).  Every backend runs the
same function, :func:`execute_unit`, so results do not depend on where a run ran.

``python -m bitsearch.bench table DIR`` renders the main table of a finished bench as
Markdown (and, with ``--readme FILE --name NAME``, replaces the block between
``<!-- bench-table:NAME -->`` and ``<!-- /bench-table:NAME -->`` in FILE).

This module imports only the standard library and bitsearch's core at import time;
torch (through the task), matplotlib and dask are imported when used.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import socket
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from . import __version__
from .errors import UserInputError
from .journal import Journal, stable_key
from .policy import atomic_write_text, dumps

SCHEMA = "bitsearch-bench"
SCHEMA_VERSION = 1
JOURNAL_NAME = "results.jsonl"
ORACLE_SEARCHER = "exhaustive"
DEFAULT_SENSITIVITY = "hessian"
MIN_SEEDS = 3
# record fields that depend on the machine, the clock or on what the cache already
# held, not on the run itself: left out when results are compared across backends
TIMING_FIELDS = ("seconds", "eval_seconds", "fresh_evaluations", "setup_seconds", "worker", "finished_at")

SUITE_FORMAT = """\
suite format (TOML):

  name = "mnist1d_layer"                  # optional; default: the file name
  description = "..."                     # optional
  task = "mnist1d-cnn"                    # a task (bitsearch tasks), or a list of tasks
  # problem = "mymodule:make_problem"     # instead of task: a function (space, options) -> Problem,
  #                                       #   imported from sys.path or the suite's folder
  # problem = "hawq_resnet18.json"        # or a tabular problem file (bitsearch-problem JSON, no
  #                                       #   torch): its widths and costs; [space] gives granularity
  seeds = [0, 1, 2]                       # 3 or more; deterministic searchers run once
  budgets = ["size=2.5bit", "size=3bit", ["size=4bit", "bops=4bit"]]   # a list: several at once
  oracle = true                           # run exhaustive per budget; report regret against it

  [space]
  granularity = "layer"                   # "layer" or "kernel" (or a list of both)
  weight_bits = [2, 3, 4, 8]              # a list, or a range "2-8"
  act_bits = 8                            # one width fixes them, a list searches them, "none": float
  # pin_first_last = 8                    # optional
  # width_mult = 1.0                      # optional

  [scoring]
  finetune_epochs = 0                     # 0: post-training quantization; N: N fine-tuning epochs
  # sensitivity = "hessian"               # a table for every run (default: only for searchers that
  #                                       #   need one, estimated with hessian, as bitsearch search does)
  # latency_table = "table.csv"           # for latency= budgets
  # shared_cache = true                   # runs in one process share evaluations (false: fresh)

  [[searchers]]
  name = "uniform"

  [[searchers]]
  name = "random"
  label = "random-200"                    # optional; needed when a searcher appears twice
  settings = { samples = 200 }            # constructor settings (bitsearch searchers)
  # deterministic = false                 # override the searcher's own declaration
"""

_TOP_KEYS = {"name", "description", "task", "problem", "seeds", "budgets", "oracle", "oracle_settings",
             "space", "scoring", "searchers"}
_SPACE_KEYS = {"granularity", "weight_bits", "act_bits", "pin_first_last", "width_mult"}
_SCORING_KEYS = {"finetune_epochs", "sensitivity", "latency_table", "shared_cache"}
_SEARCHER_KEYS = {"name", "label", "settings", "deterministic"}


# ==========================================================================================
# the suite
# ==========================================================================================
@dataclass(frozen=True)
class Variant:
    """One problem source and space: a task, a problem factory or a problem file, at one
    granularity."""

    source_kind: str  # "task" or "problem" (a "module:function" factory or a tabular .json file)
    source: str
    granularity: str
    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...] | None
    pin_first_last: int | None = None
    width_mult: float = 1.0
    digest: str | None = None  # sha256 of a problem file: a changed file is a new problem

    @property
    def is_file(self) -> bool:
        return self.source_kind == "problem" and is_problem_file(self.source)

    @property
    def label(self) -> str:
        return f"{self.source} · {self.granularity}"

    @property
    def slug(self) -> str:
        return _slug(f"{self.source}-{self.granularity}")

    def to_dict(self) -> dict:
        out = {self.source_kind: self.source, "granularity": self.granularity,
               "weight_bits": list(self.weight_bits),
               "act_bits": None if self.act_bits is None else list(self.act_bits),
               "pin_first_last": self.pin_first_last, "width_mult": self.width_mult}
        if self.digest:
            out["digest"] = self.digest
        return out

    def describe(self) -> str:
        if self.is_file:
            return f"problem file {self.source} ({self.granularity} granularity; widths, costs and " \
                   f"sensitivities from the file)"
        acts = "float" if self.act_bits is None else (
            str(self.act_bits[0]) if len(self.act_bits) == 1 else "{" + ",".join(map(str, self.act_bits)) + "}")
        text = (f"{self.source_kind} {self.source}, {self.granularity} granularity, weights "
                f"{{{','.join(map(str, self.weight_bits))}}}, activations {acts}")
        if self.pin_first_last:
            text += f", first/last pinned at {self.pin_first_last}"
        if self.width_mult != 1.0:
            text += f", width x{self.width_mult:g}"
        return text


@dataclass(frozen=True)
class Scoring:
    finetune_epochs: int = 0
    sensitivity: str | None = None
    latency_table: str | None = None
    shared_cache: bool = True

    def key_dict(self) -> dict:
        """What changes results (the cache only changes timings); a run's key holds its
        own sensitivity method (see :func:`run_sensitivity`)."""
        return {"finetune_epochs": self.finetune_epochs, "sensitivity": self.sensitivity,
                "latency_table": self.latency_table}

    def describe(self) -> str:
        if self.finetune_epochs:
            return f"{self.finetune_epochs} epoch(s) of quantization-aware fine-tuning, then top-1"
        return "post-training quantization with calibration"


@dataclass(frozen=True)
class SearcherEntry:
    label: str
    name: str
    settings: Mapping[str, Any]
    deterministic: bool
    oracle: bool = False
    needs_table: bool = False  # the searcher optimises a sensitivity table

    def to_dict(self) -> dict:
        return {"label": self.label, "name": self.name, "settings": dict(self.settings),
                "deterministic": self.deterministic, "oracle": self.oracle}


@dataclass(frozen=True)
class Suite:
    name: str
    path: str
    description: str
    variants: tuple[Variant, ...]
    budgets: tuple[tuple[str, ...], ...]
    searchers: tuple[SearcherEntry, ...]
    seeds: tuple[int, ...]
    scoring: Scoring
    oracle: bool

    @property
    def directory(self) -> str:
        return str(Path(self.path).resolve().parent)

    @property
    def axis_cost(self) -> str:
        """The cost on the x axis of the plots: the first budget's."""
        from .budget import parse_budget

        return parse_budget(self.budgets[0][0]).cost

    @property
    def oracle_entry(self) -> SearcherEntry | None:
        for entry in self.searchers:
            if entry.oracle:
                return entry
        return None

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "description": self.description,
                "variants": [dict(v.to_dict(), label=v.label, description=v.describe()) for v in self.variants],
                "budgets": [list(b) for b in self.budgets],
                "searchers": [s.to_dict() for s in self.searchers], "seeds": list(self.seeds),
                "scoring": asdict(self.scoring), "oracle": self.oracle}


def _suite_table(path, data: Mapping[str, Any], name: str, allowed) -> Mapping[str, Any]:
    """The suite's ``[name]`` table (empty when absent), with only ``allowed`` keys."""
    table = data.get(name, {})
    if not isinstance(table, Mapping):
        raise _suite_error(path, f"[{name}] must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _suite_error(path, f"unknown key(s) {unknown} in [{name}]; it has {sorted(allowed)}")
    return table


def _suite_error(path, message) -> UserInputError:
    return UserInputError(f"{path}: {message}")


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such suite file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: cannot read the suite: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _suite_error(path, f"not valid TOML: {exc}") from None


def load_suite(path: str | os.PathLike) -> Suite:
    """Read and check a suite file; every problem is a one-line :class:`UserInputError`."""
    path = Path(path)
    data = _load_toml(path)
    return parse_suite(data, str(path))


def parse_suite(data: Mapping[str, Any], path: str = "<suite>") -> Suite:
    from . import searchers as registry
    from .budget import parse_budget
    from .space import parse_bits

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise _suite_error(path, f"unknown key(s) {unknown}; a suite has {sorted(_TOP_KEYS)} "
                                 f"(see bitsearch bench --help)")
    # --- where problems come from
    if ("task" in data) == ("problem" in data):
        raise _suite_error(path, "give 'task' (e.g. task = \"mnist1d-cnn\") or 'problem' "
                                 "(\"module:function\"), exactly one of them")
    kind = "task" if "task" in data else "problem"
    sources = data[kind]
    sources = [sources] if isinstance(sources, str) else sources
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s for s in sources):
        raise _suite_error(path, f"'{kind}' must be a name or a list of names")
    if kind == "problem":
        bad = [s for s in sources if not is_problem_file(s) and ":" not in s]
        if bad:
            raise _suite_error(path, f"problem {bad[0]!r}: give a function as \"module:function\" or a "
                                     f"problem file \"name.json\" (bitsearch-problem JSON)")
    # --- the space
    space = _suite_table(path, data, "space", _SPACE_KEYS)
    granularities = space.get("granularity", "layer")
    granularities = [granularities] if isinstance(granularities, str) else granularities
    if not isinstance(granularities, list) or not granularities or any(
            g not in ("layer", "kernel") for g in granularities):
        raise _suite_error(path, f"[space] granularity must be \"layer\" or \"kernel\" (or a list of them), "
                                 f"not {space.get('granularity')!r}")
    try:
        weight_bits = _bits(space.get("weight_bits", "2-8"), parse_bits, allow_none=False)
        act_bits = _bits(space.get("act_bits", 8), parse_bits, allow_none=True)
    except UserInputError as exc:
        raise _suite_error(path, f"[space] {exc}") from None
    pin = space.get("pin_first_last")
    if pin is not None and (not _is_int(pin) or pin < 1):
        raise _suite_error(path, f"[space] pin_first_last must be a width in bits, not {pin!r}")
    width_mult = space.get("width_mult", 1.0)
    if not isinstance(width_mult, (int, float)) or isinstance(width_mult, bool) or width_mult <= 0:
        raise _suite_error(path, f"[space] width_mult must be a positive number, not {width_mult!r}")
    variants = []
    for source in sources:
        digest = None
        if kind == "problem" and is_problem_file(source):
            given = sorted(set(space) - {"granularity"})
            if given:
                raise _suite_error(path, f"problem file {source!r} sets its own widths: [space] may only give "
                                         f"granularity (not {given})")
            file = Path(source) if Path(source).is_absolute() else Path(path).resolve().parent / source
            try:
                digest = "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()
            except OSError:
                raise _suite_error(path, f"problem file {str(file)!r}: no such file") from None
            variants += [Variant(kind, str(file), g, (), None, None, 1.0, digest) for g in granularities]
        else:
            variants += [Variant(kind, source, g, weight_bits, act_bits, pin, float(width_mult))
                         for g in granularities]
    variants = tuple(variants)
    # --- budgets
    budgets_raw = data.get("budgets")
    if not isinstance(budgets_raw, list) or not budgets_raw:
        raise _suite_error(path, "'budgets' must be a non-empty list, e.g. budgets = [\"size=3bit\", \"size=4bit\"]")
    budgets = []
    for i, entry in enumerate(budgets_raw):
        group = [entry] if isinstance(entry, str) else entry
        if not isinstance(group, list) or not group or not all(isinstance(b, str) for b in group):
            raise _suite_error(path, f"budgets[{i}] must be a budget string or a list of them, not {entry!r}")
        for text in group:
            try:
                parse_budget(text)
            except UserInputError as exc:
                raise _suite_error(path, f"budgets[{i}]: {exc}") from None
        costs = [parse_budget(t).cost for t in group]
        if len(set(costs)) != len(costs):
            raise _suite_error(path, f"budgets[{i}] limits the same cost twice: {group}")
        budgets.append(tuple(t.strip() for t in group))
    if len(set(budgets)) != len(budgets):
        raise _suite_error(path, "'budgets' lists the same budget twice")
    # --- seeds
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not all(_is_int(s) for s in seeds):
        raise _suite_error(path, "'seeds' must be a list of integers, e.g. seeds = [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise _suite_error(path, f"'seeds' repeats a seed: {seeds}")
    if len(seeds) < MIN_SEEDS:
        raise _suite_error(path, f"give {MIN_SEEDS} or more seeds (got {seeds}): the report gives the "
                                 f"spread over seeds")
    # --- scoring
    scoring_raw = _suite_table(path, data, "scoring", _SCORING_KEYS)
    epochs = scoring_raw.get("finetune_epochs", 0)
    if not _is_int(epochs) or epochs < 0:
        raise _suite_error(path, f"[scoring] finetune_epochs must be 0 (post-training quantization) or a "
                                 f"positive number of epochs, not {epochs!r}")
    for key in ("sensitivity", "latency_table"):
        if key in scoring_raw and not isinstance(scoring_raw[key], str):
            raise _suite_error(path, f"[scoring] {key} must be a string")
    shared = scoring_raw.get("shared_cache", True)
    if not isinstance(shared, bool):
        raise _suite_error(path, "[scoring] shared_cache must be true or false")
    latency_table = scoring_raw.get("latency_table")
    if latency_table and not Path(latency_table).is_absolute():
        latency_table = str((Path(path).resolve().parent / latency_table))
    # --- searchers
    entries_raw = data.get("searchers")
    if not isinstance(entries_raw, list) or not entries_raw:
        raise _suite_error(path, "list the searchers as [[searchers]] tables, each with name = \"...\"")
    known = registry.available()
    entries: list[SearcherEntry] = []
    for i, raw in enumerate(entries_raw):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise _suite_error(path, f"searchers[{i}] needs name = \"...\" (one of {', '.join(known)})")
        unknown = sorted(set(raw) - _SEARCHER_KEYS)
        if unknown:
            raise _suite_error(path, f"searchers[{i}] ({raw['name']}): unknown key(s) {unknown}; "
                                     f"a searcher has {sorted(_SEARCHER_KEYS)}")
        name = raw["name"]
        if name not in known:
            raise _suite_error(path, f"searchers[{i}]: unknown searcher {name!r}; known searchers: "
                                     f"{', '.join(known)}")
        settings = raw.get("settings", {})
        if not isinstance(settings, Mapping):
            raise _suite_error(path, f"searchers[{i}] ({name}): settings must be a table, e.g. "
                                     f"settings = {{ samples = 100 }}")
        label = raw.get("label", name)
        if not isinstance(label, str) or not label.strip():
            raise _suite_error(path, f"searchers[{i}] ({name}): label must be a non-empty string")
        det = raw.get("deterministic")
        if det is not None and not isinstance(det, bool):
            raise _suite_error(path, f"searchers[{i}] ({name}): deterministic must be true or false")
        entries.append(SearcherEntry(label.strip(), name, dict(settings), det if det is not None else None))
    labels = [e.label for e in entries]
    dupes = sorted({l for l in labels if labels.count(l) > 1})
    if dupes:
        raise _suite_error(path, f"searcher label(s) {dupes} appear twice; give each a distinct label = \"...\"")
    oracle = data.get("oracle", False)
    if not isinstance(oracle, bool):
        raise _suite_error(path, "'oracle' must be true or false")
    oracle_settings = data.get("oracle_settings", {})
    if not isinstance(oracle_settings, Mapping):
        raise _suite_error(path, "'oracle_settings' must be a table, e.g. oracle_settings = { max_policies = 5000 }")
    if oracle:
        first = next((i for i, e in enumerate(entries) if e.name == ORACLE_SEARCHER), None)
        if first is None:
            entries.append(SearcherEntry(ORACLE_SEARCHER if ORACLE_SEARCHER not in labels else "oracle",
                                         ORACLE_SEARCHER, dict(oracle_settings), None, oracle=True))
        else:
            e = entries[first]
            entries[first] = SearcherEntry(e.label, e.name, {**oracle_settings, **e.settings}, e.deterministic,
                                           oracle=True)
    sensitivity = scoring_raw.get("sensitivity")
    scoring = Scoring(int(epochs), sensitivity, latency_table, shared)
    name = data.get("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise _suite_error(path, "'name' must be a non-empty string")
    description = data.get("description", "")
    suite = Suite(name, str(path), str(description), variants, tuple(budgets), tuple(entries),
                  tuple(int(s) for s in seeds), scoring, oracle)
    return _resolve_searchers(suite)


def _resolve_searchers(suite: Suite) -> Suite:
    """Fill in, from the searcher classes, whether each is deterministic and whether it
    needs a sensitivity table.

    A searcher that is declared but cannot be loaded (not installed yet) stays
    non-deterministic; selecting it to run is what raises.
    """
    from dataclasses import replace

    from . import searchers as registry

    entries = []
    for entry in suite.searchers:
        try:
            cls = registry.get(entry.name)
        except UserInputError:
            entries.append(replace(entry, deterministic=bool(entry.deterministic)))
            continue
        det = entry.deterministic
        if det is None:
            det = bool(getattr(cls, "deterministic", False))
        from .build import needs_sensitivity

        entries.append(replace(entry, deterministic=det, needs_table=needs_sensitivity(cls)))
    return replace(suite, searchers=tuple(entries))


def run_sensitivity(suite: Suite, entry: SearcherEntry, variant: Variant) -> str | None:
    """The sensitivity method of a run's problem: the suite's, else ``hessian`` for a
    searcher that needs a table (what ``bitsearch search`` does), else none."""
    if suite.scoring.sensitivity:
        return suite.scoring.sensitivity
    if entry.needs_table and variant.source_kind == "task":
        return DEFAULT_SENSITIVITY
    return None


def is_problem_file(source: str) -> bool:
    return source.lower().endswith(".json")


def _bits(value, parse_bits, *, allow_none):
    if isinstance(value, bool):
        raise UserInputError(f"bit widths {value!r} are not widths")
    if _is_int(value):
        return (int(value),)
    if isinstance(value, list):
        if not value or not all(_is_int(v) for v in value):
            raise UserInputError(f"bit widths must be a list of integers, not {value!r}")
        return tuple(sorted({int(v) for v in value}))
    if isinstance(value, str):
        return parse_bits(value, allow_none=allow_none)
    raise UserInputError(f"bit widths must be a list, a range string or a number, not {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ==========================================================================================
# the plan
# ==========================================================================================
def budget_label(budgets: Sequence[str]) -> str:
    return " + ".join(budgets)


def plan_runs(suite: Suite, only: Iterable[str] | None = None, *, check: bool = True) -> list[dict]:
    """Every run of the suite, in report order.  ``only``: labels or searcher names to
    keep (the oracle is kept while the suite asks for one).  ``check``: load every
    selected searcher and its settings now, so that a bad one fails before any run."""
    from . import searchers as registry

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
        from .tasks import get_task

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


# ==========================================================================================
# executing runs (in any process)
# ==========================================================================================
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
    from .build import ProblemOptions, SpaceOptions

    space = spec["space"]
    scoring = spec["scoring"]
    space_options = SpaceOptions(granularity=space["granularity"], weight_bits=tuple(space["weight_bits"]),
                                 act_bits=None if space["act_bits"] is None else tuple(space["act_bits"]),
                                 pin_first_last=space.get("pin_first_last"))
    options = ProblemOptions(budgets=tuple(budgets), finetune_epochs=int(scoring["finetune_epochs"]),
                             width_mult=float(space.get("width_mult", 1.0)),
                             latency_table=scoring.get("latency_table"), sensitivity=sensitivity)
    if spec["kind"] == "problem" and is_problem_file(spec["source"]):
        from .tabular import load_problem

        return load_problem(spec["source"], budgets, granularity=space["granularity"])
    if spec["kind"] == "problem":
        factory = _import_factory(spec["source"], spec.get("suite_dir", ""))
        problem = factory(space_options, options)
        from .problem import Problem

        if not isinstance(problem, Problem):
            raise UserInputError(f"problem {spec['source']!r} returned {type(problem).__name__}, not a Problem")
        return problem
    from .build import problem_for_task

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
    from . import searchers as registry

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


# ==========================================================================================
# backends
# ==========================================================================================
def _limit_threads(threads: int) -> None:
    """Keep N worker processes from each starting one thread per core."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _run_serial(units, progress) -> Iterator[dict]:
    factory = progress.run_callback if progress is not None else None
    for unit in units:
        for run in unit["runs"]:
            yield execute_run(unit["problem"], run, factory)


def _run_processes(units, jobs: int) -> Iterator[dict]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    threads = _threads_per_job(jobs)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_limit_threads,
                               initargs=(threads,))
    try:
        futures = [pool.submit(execute_unit, unit) for unit in units]
        for future in as_completed(futures):
            yield from future.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()  # a run in flight is simply run again on --resume
        raise
    else:
        pool.shutdown(wait=True)


def dask_client(scheduler: str, jobs: int | None):
    """A ``distributed.Client``: a LocalCluster for ``local``, else the scheduler at the address."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserInputError("the Dask backend needs dask.distributed: pip install 'bitsearch[dist]'") from None
    if scheduler == "local":
        workers = jobs or max(1, min(4, os.cpu_count() or 1))
        threads = _threads_per_job(workers)
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, env=env)
        return Client(cluster), cluster
    if not re.match(r"^(tcp|tls|ucx|inproc)://", scheduler):
        raise UserInputError(f"--scheduler {scheduler!r}: give an address like tcp://host:8786, or 'local'")
    try:
        return Client(scheduler, timeout="15s"), None
    except (OSError, TimeoutError) as exc:
        raise UserInputError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None


def _run_dask(units, scheduler: str, jobs: int | None) -> Iterator[dict]:
    from distributed import as_completed

    client, cluster = dask_client(scheduler, jobs)
    try:
        futures = [client.submit(execute_unit, unit, pure=False,
                                 key=f"bitsearch-bench-{unit['runs'][0]['key']}-{i}")
                   for i, unit in enumerate(units)]
        try:
            for future in as_completed(futures):
                yield from future.result()
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ==========================================================================================
# progress
# ==========================================================================================
def progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


class BenchProgress:
    """One bar over the runs, and (in-process) one bar inside the current run."""

    def __init__(self, total: int, done: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, desc="bench", unit="run", file=sys.stderr,
                        dynamic_ncols=True, position=0)

    def run_callback(self, run):
        from .cli import ProgressBar

        text = f"{run['label']} {run['budget_label']}" + ("" if run["deterministic"] else f" seed {run['seed']}")
        return ProgressBar(text, enabled=True)

    def finished(self, record):
        status = record["status"]
        metric = record.get("metric")
        text = f"{record['label']} {record['budget_label']} s{record['seed']}: " + (
            f"{metric:.4g}" if status == "ok" and metric is not None else status)
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.update(1)

    def close(self):
        self.bar.close()


# ==========================================================================================
# the bench
# ==========================================================================================
@dataclass
class BenchOutcome:
    out: Path
    planned: int
    resumed: int
    ran: int
    failed: int
    skipped: int
    results: dict = field(default_factory=dict)


def run_bench(suite: Suite | str | os.PathLike, out: str | os.PathLike, *, resume: bool = False,
              jobs: int = 1, scheduler: str | None = None, only: Iterable[str] | None = None,
              progress: bool | None = None, plots: bool = True, command: str | None = None) -> BenchOutcome:
    """Run (or finish) a suite into ``out``; see the module docstring."""
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    if jobs < 1:
        raise UserInputError(f"--jobs must be 1 or more, not {jobs}")
    out = Path(out)
    journal_path = out / JOURNAL_NAME
    journal = Journal(journal_path)
    if journal_path.exists() and journal_path.stat().st_size > 0 and not resume:
        raise UserInputError(f"{out} already holds a bench ({JOURNAL_NAME}); add --resume to finish it, "
                             f"or choose another --out")
    runs = plan_runs(suite, only)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "suite.json", dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                                                  "suite": suite.to_dict()}))
    if resume:
        journal.repair()
    recorded = journal.latest()
    done = {k: r for k, r in recorded.items() if r.get("status") in ("ok", "skipped")}
    todo = [r for r in runs if r["key"] not in done]
    # the report covers the selected runs and every other run of the suite already recorded
    selected = {r["key"] for r in runs}
    reported = [r for r in plan_runs(suite, check=False) if r["key"] in selected or r["key"] in recorded]
    resumed = len(runs) - len(todo)
    progress = progress_enabled() if progress is None else progress
    bar = BenchProgress(len(runs), resumed) if progress and todo else None
    ran = failed = 0
    clear_problem_cache()
    try:
        units = make_units(suite, todo, progress=bool(progress and not scheduler and jobs == 1))
        if units and (jobs > 1 or scheduler == "local"):
            prewarm(suite, progress=bool(progress))
        if scheduler:
            stream = _run_dask(units, scheduler, jobs if jobs > 1 else None)
        elif jobs > 1:
            stream = _run_processes(units, jobs)
        else:
            stream = _run_serial(units, bar)
        for record in stream:
            policy_json = record.pop("policy_json", None)
            run = next(r for r in todo if r["key"] == record["key"])
            if policy_json is not None:
                rel = policy_path(suite, run)
                atomic_write_text(out / rel, policy_json)  # before the journal line that names it
                record["policy_file"] = rel
            journal.append(record)
            ran += 1
            failed += record["status"] == "failed"
            if bar is not None:
                bar.finished(record)
    finally:
        journal.close()
        if bar is not None:
            bar.close()
        clear_problem_cache()
    commands = _previous_commands(out)
    if command and (ran or not commands):
        commands.append(command)
    results = render_outputs(suite, out, reported, commands, plots=plots)
    skipped = sum(1 for r in results["runs"] if r.get("status") == "skipped")
    return BenchOutcome(out, len(runs), resumed, ran, failed, skipped, results)


def _previous_commands(out: Path) -> list[str]:
    try:
        data = json.loads((out / "results.json").read_text(encoding="utf-8"))
        return list(data.get("commands") or ([data["command"]] if data.get("command") else []))
    except (OSError, ValueError, AttributeError):
        return []


def render_outputs(suite: Suite, out: Path, reported: Sequence[dict], commands: Sequence[str], *,
                   plots: bool = True) -> dict:
    """results.json, report.md and the plots of ``reported`` runs, from the journal in ``out``."""
    results = collect_results(suite, reported, Journal(out / JOURNAL_NAME).latest(), commands=commands)
    atomic_write_text(out / "results.json", dumps(results))
    atomic_write_text(out / "report.md", render_report(results))
    if plots:
        plot_pareto(results, out / "pareto.png")
        plot_curves(results, out / "curves.png")
    return results


def rerender(suite: Suite | str | os.PathLike, out: str | os.PathLike, *, only: Iterable[str] | None = None,
             plots: bool = True) -> dict:
    """Render a bench's outputs again from its journal, running nothing (after the report
    code changed, say); the recorded commands are kept."""
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    out = Path(out)
    recorded = Journal(out / JOURNAL_NAME).latest()
    if not recorded:
        raise UserInputError(f"{out}: no journal ({JOURNAL_NAME}) to render")
    selected = {r["key"] for r in plan_runs(suite, only, check=False)}
    reported = [r for r in plan_runs(suite, check=False) if r["key"] in selected and r["key"] in recorded]
    return render_outputs(suite, out, reported, _previous_commands(out), plots=plots)


def prewarm(suite: Suite, *, progress: bool = False) -> None:
    """Train (or load) each task's float model here, once, before local workers start:
    they then read it from the task cache instead of all training it at the same time."""
    for variant in suite.variants:
        if variant.source_kind != "task":
            continue
        from .tasks import get_task

        task = get_task(variant.source)
        if not task.shape_only:
            task.trained_model(variant.width_mult, progress=progress)


def policy_path(suite: Suite, run: Mapping[str, Any]) -> str:
    parts = ["policies"]
    if len(suite.variants) > 1:
        parts.append(suite.variants[run["variant_index"]].slug)
    parts.append(_slug(run["budget_label"]))
    name = _slug(run["label"]) + ("" if run["deterministic"] else f"-seed{run['seed']}") + ".json"
    return "/".join(parts + [name])


def _slug(text: str) -> str:
    text = text.replace(" + ", "+").replace("=", "-").replace(" · ", "-")
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "x"


# ==========================================================================================
# results and the report
# ==========================================================================================
def collect_results(suite: Suite, runs: Sequence[dict], records: Mapping[str, dict], *,
                    commands: Sequence[str] = ()) -> dict:
    """The runs of the plan with their journal records (display fields from the plan)."""
    merged = []
    for run in runs:
        record = records.get(run["key"])
        row = dict(record) if record is not None else {"status": "missing"}
        row.update({k: run[k] for k in ("key", "label", "searcher", "seed", "deterministic", "oracle",
                                        "variant", "budgets", "budget_label")})
        if row.get("status") != "failed":
            row.pop("traceback", None)
        merged.append(row)
    summary = summarize(suite, merged)
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "bitsearch_version": __version__,
            "suite": suite.to_dict(), "commands": list(commands), "axis_cost": suite.axis_cost,
            "runs": merged, "summary": summary}


def _mean(values):
    return sum(values) / len(values) if values else None


def _std(values):
    if len(values) < 2:
        return None
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def summarize(suite: Suite, runs: Sequence[dict]) -> list[dict]:
    """One row per (variant, budget set, searcher label), in plan order."""
    axis = suite.axis_cost
    order: list[tuple] = []
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        key = (run["variant"], run["budget_label"], run["label"])
        if key not in groups:
            order.append(key)
            groups[key] = []
        groups[key].append(run)
    oracle = {}
    for run in runs:
        if run.get("oracle") and run.get("status") == "ok" and run.get("metric") is not None:
            oracle[(run["variant"], run["budget_label"])] = run
    rows = []
    for key in order:
        group = groups[key]
        ok = [r for r in group if r.get("status") == "ok"]
        first = group[0]
        row = {"variant": key[0], "budget": key[1], "label": key[2], "searcher": first["searcher"],
               "deterministic": first["deterministic"], "oracle": bool(first.get("oracle")),
               "planned": len(group), "ok": len(ok),
               "skipped": sum(r.get("status") == "skipped" for r in group),
               "failed": sum(r.get("status") == "failed" for r in group),
               "missing": sum(r.get("status") == "missing" for r in group)}
        problems = [r.get("message", "") for r in group if r.get("status") in ("skipped", "failed")]
        if problems:
            row["message"] = problems[0]
        values = [r["metric"] for r in ok if r.get("metric") is not None]
        if ok:
            row["objective"] = ok[0].get("objective")
            row["higher_is_better"] = ok[0].get("higher_is_better", True)
            row["metric_mean"] = _mean(values)
            row["metric_std"] = _std(values)
            row["metric_min"] = min(values) if values else None
            row["metric_max"] = max(values) if values else None
            row["metrics"] = values
            kinds = sorted({str(r["metrics"]["metric_kind"]) for r in ok if (r.get("metrics") or {}).get("metric_kind")})
            if kinds:
                row["metric_kind"] = ", ".join(kinds)
            costs = [r["costs"].get(axis) for r in ok if r.get("costs", {}).get(axis) is not None]
            row["cost_axis"] = axis
            row["cost_mean"] = _mean(costs)
            limits = [l for l in ok[0].get("limits", []) if l["cost"] == axis]
            if limits:
                row["limit"] = limits[0]["limit"]
                row["unit"] = limits[0]["unit"]
            row["seconds_mean"] = _mean([r["seconds"] for r in ok])
            row["setup_seconds_max"] = max(r.get("setup_seconds", 0.0) for r in ok)
            row["evaluations_mean"] = _mean([r["evaluations"] for r in ok])
            row["fresh_evaluations_mean"] = _mean([r.get("fresh_evaluations", 0) for r in ok])
            row["budget_kept"] = all(r.get("budget_kept") for r in ok)
            row["budget_kept_runs"] = sum(bool(r.get("budget_kept")) for r in ok)
            best = max(ok, key=lambda r: (r.get("metric") if r.get("metric") is not None else -math.inf)
                       * (1 if row["higher_is_better"] else -1))
            row["best_policy"] = best.get("policy_summary", "")
            ref = oracle.get((key[0], key[1]))
            if ref is not None and values:
                sign = 1.0 if row["higher_is_better"] else -1.0
                regrets = [sign * (ref["metric"] - v) for v in values]
                row["regret_mean"] = _mean(regrets)
                row["oracle_metric"] = ref["metric"]
        rows.append(row)
    return rows


def _is_fraction_metric(objective: str | None) -> bool:
    return objective not in (None, "sensitivity", "loss", "none")


def format_metric(value, objective, *, signed=False, points=False) -> str:
    if value is None:
        return "–"
    if _is_fraction_metric(objective):
        text = f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
        return text + (" pp" if points else "%")
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def render_report(results: Mapping[str, Any]) -> str:
    from .budget import format_cost

    suite = results["suite"]
    runs = results["runs"]
    rows = results["summary"]
    axis = results["axis_cost"]
    n_ok = sum(r.get("status") == "ok" for r in runs)
    n_skip = sum(r.get("status") == "skipped" for r in runs)
    n_fail = sum(r.get("status") == "failed" for r in runs)
    n_missing = sum(r.get("status") == "missing" for r in runs)
    scoring = Scoring(**suite["scoring"])
    lines = [f"# bench: {suite['name']}", ""]
    if suite.get("description"):
        lines += [suite["description"].strip(), ""]
    commands = results.get("commands") or []
    lines.append(f"- suite: `{suite['path']}`" + (("; command: " if len(commands) == 1 else "; commands: ")
                                                  + ", then ".join(f"`{c}`" for c in commands) if commands else ""))
    for v in suite["variants"]:
        lines.append(f"- problem: {v['description']}")
    objectives = {r.get("objective") for r in runs if r.get("status") == "ok"}
    if objectives == {"sensitivity"}:
        how = "the problem's sensitivity table (estimated loss increase: lower is better; no evaluator)"
    elif objectives == {"none"}:
        how = "nothing (shape-only problem: only costs and seconds compare)"
    else:
        how = scoring.describe()
    lines.append(f"- scoring: {how}; seeds {', '.join(map(str, suite['seeds']))} "
                 f"(deterministic searchers run once)")
    oracle = next((s for s in suite["searchers"] if s.get("oracle")), None)
    lines.append("- oracle: " + (f"`{oracle['label']}` (every policy within each budget, same objective)"
                                 if oracle else "none"))
    lines.append(f"- runs: {n_ok} finished" + (f", {n_skip} skipped" if n_skip else "")
                 + (f", {n_fail} failed" if n_fail else "") + (f", {n_missing} not run yet" if n_missing else "")
                 + f"; bitsearch {results['bitsearch_version']}")
    lines.append("")
    multi_variant = len(suite["variants"]) > 1
    kinds = [r.get("metric_kind") for r in rows if r.get("metric_kind")]
    usual = max(set(kinds), key=kinds.count) if kinds else None
    marked = sorted({(r["label"], r["metric_kind"]) for r in rows if r.get("metric_kind") not in (None, usual)})
    current = None
    for row in rows:
        if (row["variant"], row["budget"]) != current:
            current = (row["variant"], row["budget"])
            title = f"{row['budget']}" + (f" — {row['variant']}" if multi_variant else "")
            limit = next((r for r in rows if (r["variant"], r["budget"]) == current and "limit" in r), None)
            if limit is not None:
                title += f" ({axis} ≤ {format_cost(limit['limit'], limit['unit'])})"
            objective = next((r.get("objective") for r in rows
                              if (r["variant"], r["budget"]) == current and r.get("objective")), "metric")
            lines += ["", f"## {title}", "",
                      f"| searcher | runs | {objective} mean ± std | min – max | regret to oracle | {axis} | "
                      f"of budget | search s | evaluations (fresh) | budget kept | best policy |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines.append(_report_row(row, marked={label for label, _ in marked}))
    lines += ["", " ".join(REPORT_NOTES), ""]
    for label, kind in marked:
        lines += [f"† `{label}` reports its metric as `{kind}` (its own training, e.g. the fine-tuned weights "
                  f"it returns), not as `{usual}` like the others.", ""]
    if any(r.get("status") == "failed" for r in runs):
        lines += ["## failures", ""]
        for r in runs:
            if r.get("status") == "failed":
                lines.append(f"- {r['label']} {r['budget_label']} seed {r['seed']}: {r.get('message', '')}")
        lines.append("")
    return "\n".join(lines) + "\n"


REPORT_NOTES = (
    "Columns: the metric is the problem's objective (top-1 accuracy on the task's test set after",
    "quantization with the policy, or a sensitivity table's estimated loss increase); spread is the",
    "sample standard deviation over seeds and the min – max range; regret is how far the searcher is",
    "behind the oracle (percentage points of accuracy; negative means ahead of it, which a searcher that",
    "changes the model, such as uniform-width, can be); cost is the cost the budget limits, recomputed",
    "from the policy; search seconds are the wall time of `search()`, mean over seeds (in brackets:",
    "seconds spent first building the problem, when that run was the one to build it: training or",
    "loading the model, estimating a sensitivity table); evaluations count the policies a searcher",
    "asked to score, fresh ones those not already scored in the same process (runs of one problem",
    "share an evaluation cache, so a run can be faster than it would be alone); best policy: the",
    "weight widths, layer by layer, of the best run (@xM: a model at width multiplier M).",
)


def _report_row(row, marked=frozenset()) -> str:
    label = f"`{row['label']}`" + (" (oracle)" if row.get("oracle") else "") + (" †" if row["label"] in marked else "")
    if not row["ok"]:
        why = row.get("message") or ("not run yet" if row.get("missing") else "")
        status = "skipped" if row["skipped"] else ("failed" if row["failed"] else "missing")
        return f"| {label} | 0 of {row['planned']} ({status}) | {_md(why)} | | | | | | | | |"
    objective = row.get("objective")
    runs = f"{row['ok']}" + (" (deterministic)" if row["deterministic"] else "") + (
        f" of {row['planned']}" if row["ok"] != row["planned"] else "")
    mean = format_metric(row.get("metric_mean"), objective)
    if row.get("metric_std") is not None:
        mean += " ± " + format_metric(row["metric_std"], objective).rstrip("%")
    spread = "–" if row["ok"] < 2 else (f"{format_metric(row['metric_min'], objective)} – "
                                         f"{format_metric(row['metric_max'], objective)}")
    regret = format_metric(row.get("regret_mean"), objective, signed=True, points=True) if "regret_mean" in row else "–"
    unit = row.get("unit", "")
    cost = _cost_like(row["cost_mean"], row.get("limit"), unit) if row.get("cost_mean") is not None else "–"
    share = f"{100 * row['cost_mean'] / row['limit']:.1f}%" if row.get("limit") and row.get("cost_mean") else "–"
    kept = "yes" if row["budget_kept"] else f"**NO** ({row['budget_kept_runs']} of {row['ok']})"
    evals = f"{row['evaluations_mean']:.0f} ({row['fresh_evaluations_mean']:.0f})"
    seconds = f"{row['seconds_mean']:.2f}"
    if row.get("setup_seconds_max", 0.0) >= 0.5:
        seconds += f" (+{row['setup_seconds_max']:.0f})"
    return (f"| {label} | {runs} | {mean} | {spread} | {regret} | {cost} | {share} | "
            f"{seconds} | {evals} | {kept} | {row.get('best_policy', '')} |")


_COST_SCALES = {  # the steps of budget.format_cost, largest first: (suffix, unit per suffix)
    "bit": (("GB", 8e9), ("MB", 8e6), ("KB", 8e3)),
    "BOPs": (("TBOPs", 1e12), ("GBOPs", 1e9), ("MBOPs", 1e6), ("KBOPs", 1e3)),
    "pJ": (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)),
}


def _cost_like(value: float, like: float | None, unit: str) -> str:
    """``value`` in the scale ``format_cost`` picks for ``like`` (so a column reads evenly)."""
    from .budget import format_cost

    if like is None or unit not in _COST_SCALES:
        return format_cost(value, unit)
    for suffix, scale in _COST_SCALES[unit]:
        if like >= scale:
            return f"{value / scale:.4g} {suffix}"
    return f"{value:.6g} {unit}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_table(results: Mapping[str, Any]) -> str:
    """The compact main table: searchers x budgets, metric mean ± std and regret."""
    rows = results["summary"]
    suite = results["suite"]
    variants = []
    for r in rows:
        if r["variant"] not in variants:
            variants.append(r["variant"])
    out = []
    for variant in variants:
        vrows = [r for r in rows if r["variant"] == variant]
        budgets = []
        labels = []
        for r in vrows:
            if r["budget"] not in budgets:
                budgets.append(r["budget"])
            if r["label"] not in labels:
                labels.append(r["label"])
        objective = next((r.get("objective") for r in vrows if r.get("objective")), "metric")
        kinds = [r.get("metric_kind") for r in vrows if r.get("metric_kind")]
        usual = max(set(kinds), key=kinds.count) if kinds else None
        has_oracle = any("regret_mean" in r for r in vrows)
        if len(variants) > 1:
            out += [f"**{variant}**", ""]
        out.append("| searcher | " + " | ".join(budgets) + " |")
        out.append("|---|" + "---|" * len(budgets))
        for label in labels:
            cells = []
            for b in budgets:
                row = next((r for r in vrows if r["label"] == label and r["budget"] == b), None)
                if row is None or not row["ok"]:
                    cells.append("–")
                    continue
                text = format_metric(row["metric_mean"], objective)
                if row.get("metric_std") is not None:
                    text += " ± " + format_metric(row["metric_std"], objective).rstrip("%")
                if "regret_mean" in row and not row.get("oracle"):
                    text += f" ({format_metric(row['regret_mean'], objective, signed=True, points=True)})"
                if not row["budget_kept"]:
                    text += " **over budget**"
                cells.append(text)
            name = f"`{label}`" + (" (oracle)" if any(r["label"] == label and r.get("oracle") for r in vrows) else "")
            kind = next((r.get("metric_kind") for r in vrows if r["label"] == label and r.get("metric_kind")), None)
            if kind and kind != usual:
                name += f" ({kind})"
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    seeds = ", ".join(map(str, suite["seeds"]))
    note = (f"{objective} of the quantized model, mean ± std over seeds {seeds} (deterministic searchers: "
            f"one run)" + ("; in brackets the regret to the exhaustive oracle" if has_oracle else "")
            + f". Generated by `python -m bitsearch.bench table` from `{suite['name']}`'s results.json.")
    out.append(note)
    return "\n".join(out) + "\n"


def replace_readme_block(readme: str | os.PathLike, name: str, table: str) -> None:
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    start, end = f"<!-- bench-table:{name} -->", f"<!-- /bench-table:{name} -->"
    if start not in text or end not in text:
        raise UserInputError(f"{path}: no block '{start}' ... '{end}' to fill; add those two lines where the "
                             f"table goes")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(path, head + start + "\n" + table + end + tail)


# ==========================================================================================
# plots (matplotlib, Agg)
# ==========================================================================================
def _pyplot():
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _axis_scale(unit: str, values: Sequence[float]) -> tuple[float, str]:
    top = max(values) if values else 1.0
    if unit == "bit":
        for name, scale in (("MB", 8e6), ("KB", 8e3)):
            if top >= scale:
                return scale, name
        return 1.0, "bit"
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if top >= scale:
            return scale, prefix + unit
    return 1.0, unit


def plot_pareto(results: Mapping[str, Any], path: str | os.PathLike) -> bool:
    """Metric against cost per searcher (mean ± std over seeds; seeds as dots), uniform as a
    line, the oracle's frontier as a staircase, budgets as dotted lines."""
    plt = _pyplot()
    runs = [r for r in results["runs"] if r.get("status") == "ok" and r.get("metric") is not None]
    if plt is None or not runs:
        return False
    axis = results["axis_cost"]
    variants = list(dict.fromkeys(r["variant"] for r in results["runs"]))
    labels = list(dict.fromkeys(r["label"] for r in results["runs"]))
    colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(len(variants), 1, figsize=(8, 5 * len(variants)), squeeze=False)
    for ax, variant in zip(axes[:, 0], variants):
        vruns = [r for r in runs if r["variant"] == variant and axis in r.get("costs", {})]
        limits = {l["limit"]: l["unit"] for r in vruns for l in r.get("limits", []) if l["cost"] == axis}
        unit = next(iter(limits.values()), "")
        scale, unit_name = _axis_scale(unit, [r["costs"][axis] for r in vruns] + list(limits))
        objective = vruns[0]["objective"] if vruns else "metric"
        pct = 100.0 if _is_fraction_metric(objective) else 1.0
        front = [p for r in vruns if r.get("frontier") for p in r["frontier"]]
        if front:
            merged = pareto_front([tuple(p) for p in front], vruns[0].get("higher_is_better", True))
            xs = [p[0] / scale for p in merged]
            ys = [p[1] * pct for p in merged]
            ax.step(xs, ys, where="post", color="0.3", lw=1.2, label="oracle frontier (exhaustive)", zorder=1)
        for label in labels:
            lr = [r for r in vruns if r["label"] == label]
            if not lr:
                continue
            by_budget: dict[str, list[dict]] = {}
            for r in lr:
                by_budget.setdefault(r["budget_label"], []).append(r)
            pts = []
            for group in by_budget.values():
                xs = [r["costs"][axis] / scale for r in group]
                ys = [r["metric"] * pct for r in group]
                if len(group) > 1:
                    ax.scatter(xs, ys, s=10, color=colors[label], alpha=0.35, zorder=2)
                pts.append((_mean(xs), _mean(ys), _std(ys) or 0.0))
            pts.sort()
            is_uniform = lr[0]["searcher"] == "uniform"
            if is_uniform:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color=colors[label], marker="s",
                        label=label, zorder=3)
            else:
                marker = "*" if lr[0].get("oracle") else "o"
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=marker,
                            color=colors[label], capsize=3, ms=9 if marker == "*" else 6, label=label, zorder=4)
        for limit in limits:
            ax.axvline(limit / scale, color="0.7", ls=":", lw=1, zorder=0)
        ax.set_xlabel(f"{axis} ({unit_name})")
        ax.set_ylabel(f"{objective}" + (" (%)" if pct != 1.0 else ""))
        ax.set_title(f"{results['suite']['name']}: {variant}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True


def plot_curves(results: Mapping[str, Any], path: str | os.PathLike) -> bool:
    """Best metric so far against evaluations, per budget; and each searcher's learning
    curve (``result.info["learning_curve"]``) where one reports it."""
    plt = _pyplot()
    runs = [r for r in results["runs"] if r.get("status") == "ok"]
    searching = [r for r in runs if len(r.get("progress") or []) > 0 and r.get("evaluations", 0) > 1]
    learning = [r for r in runs if r.get("learning_curve")]
    if plt is None or not (searching or learning):
        return False
    panels = list(dict.fromkeys((r["variant"], r["budget_label"]) for r in results["runs"]))
    rows = [("progress", searching)] + ([("learning", learning)] if learning else [])
    labels = list(dict.fromkeys(r["label"] for r in results["runs"]))
    colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(4.5 * len(panels), 3.6 * len(rows)), squeeze=False)
    multi = len({p[0] for p in panels}) > 1
    for i, (kind, chosen) in enumerate(rows):
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            seen = set()
            for r in chosen:
                if (r["variant"], r["budget_label"]) != panel:
                    continue
                pct = 100.0 if _is_fraction_metric(r.get("objective")) else 1.0
                label = r["label"] if r["label"] not in seen else None
                seen.add(r["label"])
                if kind == "progress":
                    pts = list(r["progress"])
                    pts.append([r["evaluations"], pts[-1][1]])
                    ax.step([p[0] for p in pts], [p[1] * pct for p in pts], where="post",
                            color=colors[r["label"]], alpha=0.8, lw=1, label=label)
                else:
                    ykey, xs, ys = _curve_xy(r["learning_curve"])
                    if ys:
                        ax.plot(xs, ys, color=colors[r["label"]], alpha=0.8, lw=1,
                                label=None if label is None else f"{label} ({ykey})")
            title = panel[1] + (f"\n{panel[0]}" if multi else "")
            ax.set_title(title, fontsize=9)
            if kind == "progress":
                ax.set_xscale("log")
                ax.set_xlabel("evaluations")
                ax.set_ylabel("best so far")
            else:
                ax.set_xlabel("episode")
                ax.set_ylabel("learning curve")
            ax.grid(alpha=0.3)
            if seen:
                ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True


def _curve_xy(curve: Sequence[Mapping[str, Any]]):
    keys = [k for k in ("reward", "score", "top1", "metric", "return") if any(k in step for step in curve)]
    if not keys:
        keys = [k for k in curve[0] if k not in ("episode", "step") and isinstance(curve[0][k], (int, float))]
    if not keys:
        return "", [], []
    ykey = keys[0]
    xs, ys = [], []
    for i, step in enumerate(curve):
        value = step.get(ykey)
        if isinstance(value, (int, float)) and value is not None:
            xs.append(step.get("episode", i))
            ys.append(float(value))
    return ykey, xs, ys


def _save_figure(fig, path) -> None:
    """Save through a temporary file and a rename, like every file the tool writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ==========================================================================================
# python -m bitsearch.bench table DIR
# ==========================================================================================
def load_results(directory: str | os.PathLike) -> dict:
    path = Path(directory)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such file (run the bench first)") from None
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}: not valid JSON: {exc}") from None
    if data.get("schema") != SCHEMA:
        raise UserInputError(f"{path}: not a bench results file (schema {data.get('schema')!r})")
    return data


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bitsearch.bench",
                                     description="Render a finished bench's main table as Markdown, or its "
                                                 "report again.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("table", help="the searchers x budgets table of DIR/results.json")
    p.add_argument("directory", help="a bench output directory (or its results.json)")
    p.add_argument("--readme", metavar="FILE", help="replace the block <!-- bench-table:NAME --> ... "
                                                    "<!-- /bench-table:NAME --> in FILE instead of printing")
    p.add_argument("--name", help="the block's NAME (default: the suite's name)")
    r = sub.add_parser("report", help="render DIR's results.json, report.md and plots again from its journal "
                                      "(runs nothing)")
    r.add_argument("suite", help="the suite file the bench ran")
    r.add_argument("directory", help="the bench output directory")
    r.add_argument("--only", action="append", metavar="SEARCHER", help="as for bitsearch bench")
    r.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "report":
        try:
            rerender(args.suite, args.directory, only=args.only, plots=not args.no_plots)
        except UserInputError as exc:
            print(f"bitsearch.bench: error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.directory}/results.json, report.md" + ("" if args.no_plots else ", pareto.png, curves.png"),
              file=sys.stderr)
        return 0
    try:
        results = load_results(args.directory)
        table = render_table(results)
        if args.readme:
            name = args.name or results["suite"]["name"]
            replace_readme_block(args.readme, name, table)
            print(f"updated {args.readme} ({name})", file=sys.stderr)
        else:
            sys.stdout.write(table)
    except UserInputError as exc:
        print(f"bitsearch.bench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
