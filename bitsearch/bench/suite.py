"""A bench suite: the TOML file, checked, as frozen dataclasses (:class:`Suite` and its
parts); :data:`SUITE_FORMAT` is the format, as ``bitsearch bench --help`` shows it."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from .._io import file_digest
from ..errors import UserInputError

ORACLE_SEARCHER = "exhaustive"
DEFAULT_SENSITIVITY = "hessian"
MIN_SEEDS = 3

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
        from ..budget import parse_budget

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
    from .. import searchers as registry
    from ..budget import parse_budget
    from ..space import parse_bits

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
                digest = file_digest(file)
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

    from .. import searchers as registry

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
        from ..build import needs_sensitivity

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



def _slug(text: str) -> str:
    text = text.replace(" + ", "+").replace("=", "-").replace(" · ", "-")
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "x"

