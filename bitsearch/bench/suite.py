"""A bench suite: the TOML file, checked, as frozen dataclasses.

The format is described in one place, the shipped JSON Schema
``bitsearch/schemas/suite.schema.json``: its keys, their types, their one-line error
messages and the example lines of ``bitsearch bench --help`` (:func:`suite_format`).
:func:`parse_suite` checks a suite against it (every structural problem named at once,
as :mod:`bitsearch.tabular` names a problem file's), then checks what a schema cannot:
budgets that parse, searchers that are registered, problem files that exist, labels
that are distinct.  The result is a :class:`Suite`: its :class:`Variant` problem
sources, its :class:`Scoring`, and a :class:`SearcherEntry` per searcher.
"""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from .. import schemas
from .._io import file_digest
from ..errors import UserInputError

ORACLE_SEARCHER = "exhaustive"
DEFAULT_SENSITIVITY = "hessian"
SCHEMA_NAME = "suite"


def schema_path() -> Path:
    """The JSON Schema of suite files, shipped in the package."""
    return schemas.schema_path(SCHEMA_NAME)


# --- the format, for --help ------------------------------------------------------------------
_COMMENT_COLUMN = 40
_WIDTH = 100


def suite_format() -> str:
    """The suite format as ``bitsearch bench --help`` shows it: an example suite, one
    commented line per key, drawn from the schema's ``x-toml`` and ``description``."""
    schema = schemas.load_schema(SCHEMA_NAME)
    lines: list[str] = []
    tables = []
    for key, node in schema["properties"].items():
        if "x-toml" in node:
            lines += _example_lines(key, node)
        else:
            tables.append((key, node))
    for key, node in tables:
        items = node.get("items")
        header = f"[[{key}]]" if items else f"[{key}]"
        body = items if items else node
        lines += [""] + _commented(header, node.get("description", ""), optional=False)
        for sub_key, sub in body.get("properties", {}).items():
            lines += _example_lines(sub_key, sub)
    return ("suite format (TOML; the JSON Schema is bitsearch/schemas/suite.schema.json):\n\n"
            + "\n".join("  " + line if line else "" for line in lines) + "\n")


def _example_lines(key: str, node: Mapping[str, Any]) -> list[str]:
    examples = node["x-toml"]
    examples = examples if isinstance(examples, list) else [examples]
    out = []
    for example in examples:
        comment = example.get("comment", node.get("description", ""))
        out += _commented(f"{key} = {example['example']}", comment, optional=bool(example.get("optional")))
    return out


def _commented(code: str, comment: str, *, optional: bool) -> list[str]:
    code = ("# " if optional else "") + code
    if not comment:
        return [code]
    column = max(_COMMENT_COLUMN, len(code) + 3)
    wrapped = textwrap.wrap(comment, _WIDTH - column - 2) or [""]
    lead = "#" if optional else " "
    out = [f"{code:<{column}}# {wrapped[0]}"]
    out += [f"{lead:<{column}}#   {more}" for more in wrapped[1:]]
    return out


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
    """How every policy of the suite is scored (``[scoring]``)."""

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
    """One ``[[searchers]]`` table: a registered searcher under a label, with its settings."""

    label: str
    name: str
    settings: Mapping[str, Any]
    deterministic: bool | None  # None until resolved from the searcher class
    oracle: bool = False
    needs_table: bool = False  # the searcher optimises a sensitivity table
    sensitivity: str | None = None  # its own sensitivity method (default: the suite's)

    def to_dict(self) -> dict:
        out = {"label": self.label, "name": self.name, "settings": dict(self.settings),
               "deterministic": self.deterministic, "oracle": self.oracle}
        if self.sensitivity:
            out["sensitivity"] = self.sensitivity
        return out


@dataclass(frozen=True)
class Suite:
    """A checked suite: where problems come from, the budget sets, the searchers, the seeds."""

    name: str
    path: str
    description: str
    variants: tuple[Variant, ...]
    budgets: tuple[tuple[str, ...], ...]
    searchers: tuple[SearcherEntry, ...]
    seeds: tuple[int, ...]
    scoring: Scoring
    oracle: bool
    validate: int = 0  # proxy validation: policies measured per variant and budget set (0: none)

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
                "scoring": asdict(self.scoring), "oracle": self.oracle} | (
                    {"validate": self.validate} if self.validate else {})


# --- reading ---------------------------------------------------------------------------------
def load_suite(path: str | os.PathLike) -> Suite:
    """Read and check a suite file; every problem is a one-line :class:`UserInputError`."""
    path = Path(path)
    return parse_suite(_load_toml(path), str(path))


def _load_toml(path: Path) -> dict:
    from .._io import parse_toml, read_text_input

    def error(message):
        return _suite_error(path, message)

    if not path.exists() and not path.is_symlink():
        raise error("no such suite file")
    return parse_toml(read_text_input(path, "suite", error=error), error)


def _suite_error(path, message) -> UserInputError:
    return UserInputError(f"{path}: {message}")


def parse_suite(data: Mapping[str, Any], path: str = "<suite>") -> Suite:
    """The :class:`Suite` of a parsed suite document (``path`` names it in messages and
    anchors its relative file names)."""
    from .. import searchers as registry

    known = registry.available()
    found = schemas.problems(data, SCHEMA_NAME, {"searchers": ", ".join(known)})
    if found:
        raise UserInputError(schemas.join(path, found))
    directory = Path(path).resolve().parent
    entries = _searchers(data, path, known)
    scoring = _scoring(data.get("scoring", {}), path, directory)
    name = data.get("name", Path(path).stem)
    validate = int(data.get("validate", 0))
    if 0 < validate < 3:
        raise _suite_error(path, f"validate = {validate}: the proxy validation ranks 3 or more policies (0: none)")
    suite = Suite(name, str(path), str(data.get("description", "")), _variants(data, path, directory),
                  _budgets(data["budgets"], path), entries, tuple(int(s) for s in data["seeds"]), scoring,
                  bool(data.get("oracle", False)), validate)
    return _resolve_searchers(suite)


def _variants(data: Mapping[str, Any], path: str, directory: Path) -> tuple[Variant, ...]:
    """One variant per problem source and granularity."""
    from ..space import parse_bits

    kind = "task" if "task" in data else "problem"
    sources = data[kind] if isinstance(data[kind], list) else [data[kind]]
    if kind == "problem":
        bad = [s for s in sources if not is_problem_file(s) and ":" not in s]
        if bad:
            raise _suite_error(path, f"problem {bad[0]!r}: give a function as \"module:function\" or a "
                                     f"problem file \"name.json\" (bitsearch-problem JSON)")
    space = data.get("space", {})
    granularities = space.get("granularity", "layer")
    granularities = granularities if isinstance(granularities, list) else [granularities]
    try:
        weight_bits = _bits(space.get("weight_bits", "2-8"), parse_bits, allow_none=False)
        act_bits = _bits(space.get("act_bits", 8), parse_bits, allow_none=True)
    except UserInputError as exc:
        raise _suite_error(path, f"[space] {exc}") from None
    pin, width_mult = space.get("pin_first_last"), float(space.get("width_mult", 1.0))
    variants = []
    for source in sources:
        if kind == "problem" and is_problem_file(source):
            given = sorted(set(space) - {"granularity"})
            if given:
                raise _suite_error(path, f"problem file {source!r} sets its own widths: [space] may only give "
                                         f"granularity (not {given})")
            file = Path(source) if Path(source).is_absolute() else directory / source
            digest = file_digest(file, "problem",
                                 error=lambda message, file=file: _suite_error(path, f"problem file {str(file)!r}: "
                                                                                      f"{message}"))
            variants += [Variant(kind, str(file), g, (), None, None, 1.0, digest) for g in granularities]
        else:
            variants += [Variant(kind, source, g, weight_bits, act_bits, pin, width_mult) for g in granularities]
    return tuple(variants)


def _budgets(raw: list, path: str) -> tuple[tuple[str, ...], ...]:
    """Budget sets: each a tuple of budget strings that parse and limit distinct costs."""
    from ..budget import parse_budget

    budgets = []
    for i, entry in enumerate(raw):
        group = [entry] if isinstance(entry, str) else entry
        costs = []
        for text in group:
            try:
                costs.append(parse_budget(text).cost)
            except UserInputError as exc:
                raise _suite_error(path, f"budgets[{i}]: {exc}") from None
        if len(set(costs)) != len(costs):
            raise _suite_error(path, f"budgets[{i}] limits the same cost twice: {group}")
        budgets.append(tuple(t.strip() for t in group))
    if len(set(budgets)) != len(budgets):
        raise _suite_error(path, "'budgets' lists the same budget twice")
    return tuple(budgets)


def _scoring(raw: Mapping[str, Any], path: str, directory: Path) -> Scoring:
    latency_table = raw.get("latency_table")
    if latency_table and not Path(latency_table).is_absolute():
        latency_table = str(directory / latency_table)
    sensitivity = raw.get("sensitivity")
    _check_method(sensitivity, path, "[scoring] sensitivity")
    return Scoring(int(raw.get("finetune_epochs", 0)), sensitivity, latency_table, raw.get("shared_cache", True))


def _check_method(method: str | None, path: str, where: str) -> None:
    from ..sensitivity import METHODS

    if method is not None and method not in METHODS:
        raise _suite_error(path, f"{where}: unknown sensitivity method {method!r}; methods: {', '.join(METHODS)}")


def _searchers(data: Mapping[str, Any], path: str, known) -> tuple[SearcherEntry, ...]:
    """The searchers, registered names only, labels distinct; the oracle appended (or
    marked) when the suite asks for one."""
    entries: list[SearcherEntry] = []
    for i, raw in enumerate(data["searchers"]):
        name = raw["name"]
        if name not in known:
            raise _suite_error(path, f"searchers[{i}]: unknown searcher {name!r}; known searchers: "
                                     f"{', '.join(known)}")
        _check_method(raw.get("sensitivity"), path, f"searchers[{i}] ({name}): sensitivity")
        entries.append(SearcherEntry(raw.get("label", name).strip(), name, dict(raw.get("settings", {})),
                                     raw.get("deterministic"), sensitivity=raw.get("sensitivity")))
    labels = [e.label for e in entries]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise _suite_error(path, f"searcher label(s) {dupes} appear twice; give each a distinct label = \"...\"")
    if data.get("oracle", False):
        oracle_settings = dict(data.get("oracle_settings", {}))
        first = next((i for i, e in enumerate(entries) if e.name == ORACLE_SEARCHER), None)
        if first is None:
            entries.append(SearcherEntry(ORACLE_SEARCHER if ORACLE_SEARCHER not in labels else "oracle",
                                         ORACLE_SEARCHER, oracle_settings, None, oracle=True))
        else:
            e = entries[first]
            entries[first] = replace(e, settings={**oracle_settings, **e.settings}, oracle=True)
    return tuple(entries)


def _resolve_searchers(suite: Suite) -> Suite:
    """Fill in, from the searcher classes, whether each is deterministic and whether it
    needs a sensitivity table.

    A searcher that is declared but cannot be loaded (not installed yet) stays
    non-deterministic; selecting it to run is what raises.
    """
    from .. import searchers as registry
    from ..build import needs_sensitivity

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
        own = entry.sensitivity or getattr(cls, "sensitivity_method", None)  # iqp: its pairwise table
        entries.append(replace(entry, deterministic=det, needs_table=needs_sensitivity(cls), sensitivity=own))
    return replace(suite, searchers=tuple(entries))


def run_sensitivity(suite: Suite, entry: SearcherEntry, variant: Variant) -> str | None:
    """The sensitivity method of a run's problem: the searcher's own, else the suite's, else
    ``hessian`` for a searcher that needs a table (what ``bitsearch search`` does), else none."""
    if entry.sensitivity:
        return entry.sensitivity
    if suite.scoring.sensitivity:
        return suite.scoring.sensitivity
    if entry.needs_table and variant.source_kind == "task":
        return DEFAULT_SENSITIVITY
    return None


def is_problem_file(source: str) -> bool:
    return source.lower().endswith(".json")


def _bits(value, parse_bits, *, allow_none):
    """Widths from a number, a list (sorted, distinct) or a string (``2-8``, ``4,8``, ``none``);
    the schema has checked the type."""
    if isinstance(value, int):
        return (int(value),)
    if isinstance(value, list):
        return tuple(sorted({int(v) for v in value}))
    return parse_bits(value, allow_none=allow_none)


def _slug(text: str) -> str:
    text = text.replace(" + ", "+").replace("=", "-").replace(" · ", "-")
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "x"
