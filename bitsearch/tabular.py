"""Tabular problems: sensitivities and costs per layer and width in a file (no torch).

Two forms hold the same problem, chosen by the file's extension: JSON (any name but
``.npz``), easy to write by hand, and ``.npz``, columnar, for problems with millions of
units.

**JSON.**  A ``bitsearch-problem`` document holds what the ``ilp`` searcher needs without a
model::

    {"schema": "bitsearch-problem", "schema_version": 1,
     "weight_bits": [4, 8],
     "layers": [{"name": "stage1.unit1.conv1", "params": 36864,
                 "sensitivity": {"4": 0.4624, "8": 0.0016},
                 "costs": {"latency": {"4": 0.2109, "8": 0.3619}}}],
     "cost_units": {"latency": "ms"},
     "tied": [["stage2.unit1.conv1", "stage2.unit1.downsample"]]}

* ``size`` is computed from ``params`` by the ``size`` cost model (weight bits, plus one
  32-bit scale per kernel and the bias in 32 bits when ``kernels``/``bias_params`` are
  given); a ``size`` entry under ``costs`` replaces it.
* every cost named under ``costs`` (each layer gives it at every width) can carry a
  budget (:class:`~bitsearch.cost.TableCost`); ``cost_units`` names its unit, and
  ``cost_per_kernel`` whether a kernel-wise layer pays its kernels' shares (``sum``) or
  its widest kernel (``max``, the default for ``latency``);
* with ``macs`` on every layer the analytic ``bops``, ``energy`` and ``bitfusion`` costs
  are available too;
* a sensitivity is a number per width, or a list with one number per kernel;
  ``act_bits`` (optional: null, one width, or several to search them, which then needs
  ``act_sensitivity``), ``pinned``, ``model`` (name and fingerprint) are optional;
* ``pairwise`` (optional, what the ``iqp`` searcher adds to the sum): cross-layer terms
  ``{"pairs": [{"layers": ["fc1", "fc2"], "terms": {"2": {"2": 0.07, "3": -0.21, ...},
  ...}}], "reference": null}`` -- ``terms[p][q]`` is the loss of the two layers at ``p`` and
  ``q`` bits together less each alone (plus the reference's), for every pair of widths;
  with it the separable values may be negative (measured loss changes).

The JSON Schema is ``bitsearch/schemas/problem.schema.json``; the loader checks files
against it (with a fast path that reads a valid file column by column, so a file of a
million rows is checked in about a second) and names every problem in one line.

**npz** (``numpy.savez``; ``U`` units, ``L`` layers, ``W`` widths).  One row per unit::

    sensitivity    (U, W) float  required: the estimate of each unit at each width
    layer          (U,)   int    optional: the layer each row belongs to (0..L-1, rows of a
                                 layer consecutive); absent: row i is layer i (U == L)

one entry per layer (when ``layer`` is absent a unit is a layer, so ``L == U``)::

    name           (L,)   str    required, unique
    params         (L,)   int    required: weight elements (what is quantized)
    kernels        (L,)   int    optional: output kernels (default: the layer's rows); a layer
                                 has one row (a per-layer estimate) or one row per kernel
    bias_params, macs, in_channels, out_channels, groups, in_features
                   (L,)   int    optional, as in the JSON form
    kind           (L,)   str    optional (default conv2d)
    kernel_size, stride, out_spatial
                   (L, D) int    optional: padded with -1 on the right
    cost.<name>    (L, W) float  optional: the layer's cost with all its weights at each width
    act_sensitivity (L, A) float optional: needed when activations are searched

and the widths, and the rest of the JSON form's top-level fields::

    weight_bits    (W,)   int    required
    header         ()     str    optional: a JSON object with the JSON form's other top-level
                                 fields (schema, schema_version, model, act_bits, cost_units,
                                 cost_per_kernel, tied, pinned, pairwise, sensitivity_method,
                                 source, note)

The same checks apply to both forms, with the same one-line messages (widths missing,
values not finite, costs negative, kernels that do not match, unknown tied or pinned
layers); :func:`load_problem` reads either into a :class:`~bitsearch.problem.Problem` and
:func:`write_problem` writes either from any problem that has a sensitivity table
(``--write-problem``).  Every check of a problem file is in this module: the JSON structure
(:func:`_structure_problems`, from the shipped schema), the npz arrays
(:func:`_npz_columns`), and what both must satisfy (:func:`_columns_problems`).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from . import schemas
from ._io import atomic_write, atomic_write_text, dumps, input_limit, load_json_input, open_input, parse_json
from .budget import parse_budget
from .cost import ANALYTIC, LatencyTableCost, TableCost
from .errors import ProblemFileError, UserInputError
from .problem import Problem
from .sensitivity.pairwise import PairwiseTable
from .sensitivity.table import SensitivityTable
from .space import KINDS, Layer, Pin, SearchSpace, layers_fingerprint

SCHEMA = "bitsearch-problem"
SCHEMA_VERSION = 1
_LAYER_FACTS = ("kind", "macs", "kernels", "bias_params", "in_channels", "out_channels", "kernel_size", "stride",
                "groups", "in_features", "out_spatial")
_INT_FACTS = ("macs", "kernels", "bias_params", "in_channels", "out_channels", "groups", "in_features")
_SHAPE_FACTS = ("kernel_size", "stride", "out_spatial")
_FACT_DEFAULTS = {"macs": 0, "bias_params": 0, "in_channels": 0, "out_channels": 0, "groups": 1, "in_features": 0}
_WIDTH_KEY = re.compile(r"^[0-9]+$")
_NPZ_ROW_ARRAYS = ("sensitivity", "layer")
_NPZ_LAYER_ARRAYS = ("name", "params", "kind", "act_sensitivity") + _INT_FACTS + _SHAPE_FACTS
_NPZ_ARRAYS = _NPZ_ROW_ARRAYS + _NPZ_LAYER_ARRAYS + ("weight_bits", "header")
_NPZ_HEADER_FIELDS = ("schema", "schema_version", "model", "source", "note", "sensitivity_method", "act_bits",
                      "cost_units", "cost_per_kernel", "tied", "pinned", "pairwise")


def schema_path() -> Path:
    """The JSON Schema of tabular problem files, shipped in the package."""
    return schemas.schema_path("problem")


def is_npz(path: str | os.PathLike) -> bool:
    """Whether ``path`` names the columnar (``.npz``) form."""
    return str(path).lower().endswith(".npz")


# --- reading --------------------------------------------------------------------------------
def load_problem(path: str | os.PathLike, budgets: Iterable[str] = (), *, granularity: str = "layer") -> Problem:
    """Read a ``bitsearch-problem`` file (JSON, or columnar ``.npz``) and resolve ``budgets``
    against it.

    Raises :class:`~bitsearch.errors.ProblemFileError` naming every problem of a
    malformed file, and the usual budget errors (unknown cost, infeasible budget).
    """
    source = str(path)
    if is_npz(path):
        columns = _npz_columns(path, source)
    else:
        columns = _json_columns(_read_json(path, source), source)
    return _problem(columns, budgets, granularity, source)


def problem_from_dict(data: Any, budgets: Iterable[str] = (), *, granularity: str = "layer",
                      source: str = "problem") -> Problem:
    """The Problem of a parsed ``bitsearch-problem`` document (see :func:`load_problem`)."""
    return _problem(_json_columns(data, source), budgets, granularity, source)


def _read_json(path, source: str):
    """The parsed document, read through the one input path (size limit, regular files
    only, nesting checked before parsing): every failure one line."""
    return load_json_input(path, "problem", error=lambda message: ProblemFileError(f"{source}: {message}"))


@dataclass
class _Columns:
    """A problem file read into arrays: what both forms give, before the shared checks.

    Layers ``L`` (``names``, ``params``, ``facts``); sensitivity rows ``R`` (``sens_counts[l]``
    consecutive rows per layer, 0 when the layer gives none; NaN where ``sens_missing``);
    costs as (L, len(cost_widths)) arrays, NaN where a layer gives no value."""

    header: dict
    weight_bits: tuple
    names: list
    params: np.ndarray
    facts: dict
    sens_rows: np.ndarray
    sens_counts: np.ndarray
    sens_missing: np.ndarray | None = None
    act_rows: np.ndarray | None = None          # (L, len(act_bits)), NaN where missing
    costs: dict = field(default_factory=dict)   # name -> (L, len(cost_widths))
    cost_given: dict = field(default_factory=dict)  # name -> (L,) bool: the layer names the cost
    cost_widths: tuple = ()
    problems: list = field(default_factory=list)  # (layer index or None, message) found while reading
    nan_is_missing: bool = True  # JSON: NaN marks a value the file does not give; npz: every value is given


# --- JSON: structure -------------------------------------------------------------------------
def _check_identity(data: Any, source: str) -> None:
    if not isinstance(data, Mapping):
        raise ProblemFileError(f"{source}: a problem file is a JSON object with schema 'bitsearch-problem'")
    if data.get("schema") != SCHEMA:
        raise ProblemFileError(f"{source}: 'schema' must be {SCHEMA!r} (got {data.get('schema')!r}); "
                               "is this a policy or a space file?")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ProblemFileError(f"{source}: 'schema_version' {data.get('schema_version')!r} is not supported "
                               f"(this bitsearch reads version {SCHEMA_VERSION})")


def _structure_problems(data: Mapping) -> list[str]:
    """Every way ``data`` breaks the shipped JSON Schema, as readable messages (empty: none).

    A valid document is recognised without a schema walk: the top-level fields one by one
    and the layers column by column (C-speed passes over all of them).  Only a document
    that fails that is checked with the schema (:func:`bitsearch.schemas.problems`, the one
    place documents meet their schemas), and of its layers only those that fail the test
    one by one, so that a bad row among a million is named in about a second."""
    layers = data.get("layers")
    header_ok = _header_looks_valid(data)
    if header_ok and _layers_look_valid(layers):
        return []
    if not isinstance(layers, list) or len(layers) <= 2_000:
        return schemas.problems(data, "problem")
    bad = [i for i, entry in enumerate(layers) if not _layers_look_valid([entry])]
    reduced = dict(data, layers=[layers[i] for i in bad]) if bad else dict(data, layers=layers[:1])
    found = schemas.problems(reduced, "problem")
    if not bad:
        return found

    def original(match):
        return f"layers[{bad[int(match.group(1))]}]"
    return [re.sub(r"layers\[(\d+)\]", original, message) for message in found]


_HEADER_KEYS = frozenset(("schema", "schema_version", "model", "source", "note", "sensitivity_method", "weight_bits",
                          "act_bits", "layers", "cost_units", "cost_per_kernel", "tied", "pinned"))


def _widths_valid(value, *, allow_none: bool = False) -> bool:
    if value is None:
        return allow_none
    return (value.__class__ is list and bool(value) and _types(value) == {int}
            and min(value) >= 1 and max(value) <= 32 and len(set(value)) == len(value))


def _header_looks_valid(data: Mapping) -> bool:
    """True only when the top-level fields (all but ``layers``) certainly satisfy the schema."""
    if not set(data) <= _HEADER_KEYS or "weight_bits" not in data or "layers" not in data:
        return False  # (a pairwise block too: the schema walk checks it, it is small)
    model = data.get("model", {})
    if not isinstance(model, dict) or not set(model) <= {"name", "fingerprint"} or \
            not _types(model.values()) <= {str}:
        return False
    for key in ("source", "note", "sensitivity_method"):
        if key in data and data[key].__class__ is not str:
            return False
    if not _widths_valid(data["weight_bits"]) or ("act_bits" in data and not _widths_valid(data["act_bits"],
                                                                                          allow_none=True)):
        return False
    for key, allowed in (("cost_units", None), ("cost_per_kernel", {"sum", "max"})):
        if key in data:
            table = data[key]
            if not isinstance(table, dict) or not _types(table.values()) <= {str}:
                return False
            if allowed is not None and not set(table.values()) <= allowed:
                return False
    tied = data.get("tied", [])
    if tied.__class__ is not list or not all(g.__class__ is list and len(g) >= 2 and _types(g) == {str}
                                             for g in tied):
        return False
    pinned = data.get("pinned", {})
    if not isinstance(pinned, dict):
        return False
    for pin in pinned.values():
        if not isinstance(pin, dict) or "weight_bits" not in pin or not set(pin) <= {"weight_bits", "act_bits"}:
            return False
        if pin["weight_bits"].__class__ is not int or not 1 <= pin["weight_bits"] <= 32:
            return False
        act = pin.get("act_bits")
        if act is not None and (act.__class__ is not int or not 1 <= act <= 32):
            return False
    return True


_MISSING = object()
_LAYER_KEYS = frozenset(("name", "params", "sensitivity", "act_sensitivity", "costs") + _LAYER_FACTS)


def _types(values) -> set:
    return set(map(type, values))


def _layers_look_valid(layers) -> bool:
    """True only when every layer entry certainly satisfies the schema (the common case),
    checked field by field over all layers at once; False sends the document to the full
    walk, which names the problems (or finds none: integral floats, say)."""
    if layers.__class__ is not list or not layers or _types(layers) != {dict}:
        return False
    keys = set().union(*layers)
    if not keys <= _LAYER_KEYS:
        return False

    def column(key):
        return [e[key] for e in layers if key in e]

    names = [e.get("name", _MISSING) for e in layers]
    if _types(names) != {str} or not all(names):
        return False
    params = [e.get("params", _MISSING) for e in layers]
    if _types(params) != {int} or min(params) < 0:
        return False
    if "kind" in keys:
        kinds = column("kind")
        if not _types(kinds) <= {str} or not set(kinds) <= set(KINDS):
            return False
    for key in _INT_FACTS:
        if key in keys:
            values = column(key)
            if _types(values) != {int} or min(values) < (1 if key in ("kernels", "groups") else 0):
                return False
    for key in _SHAPE_FACTS:
        if key in keys:
            values = column(key)
            if _types(values) != {list} or not _types(chain.from_iterable(values)) <= {int}:
                return False
    if "sensitivity" in keys and not _width_tables_valid(column("sensitivity"), lists=True):
        return False
    if "act_sensitivity" in keys and not _width_tables_valid(column("act_sensitivity"), lists=False):
        return False
    if "costs" in keys:
        costs = column("costs")
        if _types(costs) != {dict} or not _types(chain.from_iterable(c.keys() for c in costs)) <= {str}:
            return False
        if not _width_tables_valid(list(chain.from_iterable(c.values() for c in costs)), lists=False):
            return False
    return True


def _width_tables_valid(tables: list, *, lists: bool) -> bool:
    if not tables:
        return True
    if _types(tables) != {dict}:
        return False
    keys = set().union(*tables)
    if not _types(keys) <= {str} or not all(_WIDTH_KEY.match(k) for k in keys):
        return False
    values = list(chain.from_iterable(t.values() for t in tables))
    kinds = _types(values)
    if not kinds <= ({int, float, list} if lists else {int, float}):
        return False
    if list in kinds:
        nested = [v for v in values if v.__class__ is list]
        if not all(nested) or not _types(chain.from_iterable(nested)) <= {int, float}:
            return False
    return True


def _width_table_problems(where: str, what: str, table: Mapping, allowed, allowed_name: str, *,
                          negative_ok: bool = False) -> list[str]:
    """What is wrong with a width -> value table (values: numbers, or per-kernel lists of
    numbers): widths that are not among ``allowed``, or not written as plain integers,
    and values that are not finite or are negative (unless ``negative_ok``: measured loss
    changes beside pairwise terms may be); at most one problem of each kind."""
    out = []
    allowed = set(allowed)
    plain = all(k.isascii() and k.isdigit() for k in table)
    odd = [k for k in table if str(int(k)) != k] if plain else [k for k in table if not (k.isascii() and k.isdigit())]
    if odd:
        out.append(f"{where}: {what} has width keys {odd[:4]} that are not plain integers (write '4', not '04')")
    foreign = sorted({int(k) for k in table if k.isascii() and k.isdigit() and int(k) not in allowed})
    if foreign:
        out.append(f"{where}: {what} gives widths {foreign}, which are not among {allowed_name} {sorted(allowed)}")
    bad, negative = [], []
    for key, value in table.items():
        values = value if isinstance(value, list) else [value]
        try:
            array = np.asarray(values, dtype=float)
        except (TypeError, ValueError, OverflowError):
            bad.append(key)
            continue
        if not np.all(np.isfinite(array)):
            bad.append(key)
        elif np.any(array < 0):
            negative.append(key)
    if bad:
        out.append(f"{where}: {what} at width {bad[0]} is not a finite number (nan, inf or too large)")
    if negative and not negative_ok:
        out.append(f"{where}: {what} is negative at width {negative[0]} (sensitivities and costs are >= 0)")
    return out


_INT_CAP = 2 ** 62  # layer facts are held as int64 (a model with more weights is not one this tool will see)


def _integer_problems(layers) -> list[str]:
    """Layer facts too large for the arrays they are held in (one check per field)."""
    problems = []
    for key in ("params",) + _INT_FACTS:
        values = [e[key] for e in layers if key in e]
        if values and max(values) > _INT_CAP:
            i = next(i for i, e in enumerate(layers) if key in e and e[key] > _INT_CAP)
            problems.append(f"layer {layers[i]['name']!r}: {key} {layers[i][key]:.3g} is too large "
                            f"(at most 2**62)")
    for key in _SHAPE_FACTS:
        values = [v for e in layers if key in e for v in e[key]]
        if values and (max(values) > _INT_CAP or min(values) < -_INT_CAP):
            problems.append(f"{key}: a value is too large (at most 2**62)")
    return problems


def _table_problems(data: Mapping) -> list[str]:
    """Every layer's width tables checked by :func:`_width_table_problems` (widths among the
    choices and written as plain integers, values finite and not negative) -- only when a
    pass over all of them at once finds something, so a clean file of a million rows pays
    a few C-speed passes."""
    layers = data["layers"]
    weight_bits = [int(b) for b in data["weight_bits"]]
    act_bits = data.get("act_bits") or ()
    pinned_raw = data.get("pinned") or {}
    wkeys = {str(b) for b in weight_bits}
    sens = [e["sensitivity"] for e in layers if "sensitivity" in e]
    acts = [e["act_sensitivity"] for e in layers if e.get("act_sensitivity") is not None]
    costs = [(e["name"], t) for e in layers for t in e.get("costs", {}).values()]
    measured = data.get("pairwise") is not None  # beside pairwise terms sensitivities may be < 0
    clean = set().union(*sens) <= wkeys and set().union(*acts) <= {str(int(a)) for a in act_bits}
    clean = clean and all(set(t) <= wkeys or name in pinned_raw for name, t in costs)
    def values_ok(tables, negative_ok=False) -> bool:
        values = list(chain.from_iterable(t.values() for t in tables))
        flat = [v for v in values if v.__class__ is not list]
        flat += list(chain.from_iterable(v for v in values if v.__class__ is list))
        try:
            array = np.array(flat, dtype=float)
        except (TypeError, ValueError, OverflowError):
            return False
        return bool(np.all(np.isfinite(array)) and (negative_ok or not np.any(array < 0)))

    if clean and values_ok(sens, negative_ok=measured) and values_ok(chain(acts, (t for _, t in costs))):
        return []
    problems = []
    for entry in layers:
        name = entry["name"]
        where = f"layer {name!r}"
        pinned = name in pinned_raw
        if entry.get("sensitivity") is not None:
            problems += _width_table_problems(where, "sensitivity", entry["sensitivity"], weight_bits, "weight_bits",
                                              negative_ok=measured)
        if entry.get("act_sensitivity") is not None:
            problems += _width_table_problems(where, "act_sensitivity", entry["act_sensitivity"], act_bits,
                                              "act_bits")
        own = set(weight_bits) | ({int(pinned_raw[name]["weight_bits"])} if pinned else set())
        for cost, table in entry.get("costs", {}).items():
            problems += _width_table_problems(where, f"cost {cost!r}", table, sorted(own),
                                              "weight_bits" + (" or its pinned width" if pinned else ""))
    return problems


# --- JSON: columns ---------------------------------------------------------------------------
def _json_columns(data: Any, source: str) -> _Columns:
    _check_identity(data, source)
    problems = _structure_problems(data)
    if problems:
        raise ProblemFileError(_join(source, problems))
    problems = _table_problems(data) + _integer_problems(data["layers"])
    if problems:
        raise ProblemFileError(_join(source, problems))
    layers = data["layers"]
    weight_bits = tuple(int(b) for b in data["weight_bits"])
    wkeys = [str(b) for b in weight_bits]
    n = len(layers)
    names = [e["name"] for e in layers]
    params = np.array([e["params"] for e in layers], dtype=np.int64)
    keys = set().union(*layers)
    facts: dict[str, Any] = {}
    for key in _INT_FACTS:
        if key in keys:
            default = _FACT_DEFAULTS.get(key, -1)  # kernels: -1 = not given (the layer's rows)
            facts[key] = np.array([e.get(key, default) for e in layers], dtype=np.int64)
    if "kind" in keys:
        facts["kind"] = [e.get("kind", "conv2d") for e in layers]
    for key in _SHAPE_FACTS:
        if key in keys:
            facts[key] = [tuple(int(v) for v in e.get(key, ())) for e in layers]
    found: list[tuple[int | None, str]] = []
    kernels_given = facts.get("kernels")

    # sensitivity: one row per layer (numbers), or one per kernel (lists)
    sens = [e.get("sensitivity") for e in layers]
    getter = itemgetter(*wkeys) if len(wkeys) > 1 else (lambda table: (table[wkeys[0]],))
    sens_rows = None
    if None not in sens:
        try:
            sens_rows = np.array(list(map(getter, sens)), dtype=float).reshape(n, len(wkeys))
            counts = np.ones(n, dtype=np.int64)
            missing = None
        except (KeyError, TypeError, ValueError, OverflowError):
            sens_rows = None
    if sens_rows is None:
        blocks, counts, missing_blocks = [], np.zeros(n, dtype=np.int64), []
        for i, table in enumerate(sens):
            if table is None:
                continue
            where = f"layer {names[i]!r}"
            lengths = {len(v) for v in table.values() if v.__class__ is list}
            k_given = int(kernels_given[i]) if kernels_given is not None and kernels_given[i] >= 0 else None
            values = [table.get(k, math.nan) for k in wkeys]
            absent = np.array([k not in table for k in wkeys])
            if lengths:
                if any(v.__class__ is not list for v in table.values()):
                    found.append((i, f"{where}: sensitivity mixes per-kernel lists and per-layer numbers"))
                    continue
                if len(lengths) > 1:
                    found.append((i, f"{where}: per-kernel sensitivity lists have different lengths "
                                     f"{sorted(lengths)}"))
                    continue
                length = lengths.pop()
                if k_given is not None and length != k_given:
                    found.append((i, f"{where}: per-kernel sensitivity lists have {length} entries "
                                     f"but the layer has kernels={k_given}"))
                    continue
                block = np.array([v if v.__class__ is list else [math.nan] * length for v in values],
                                 dtype=float).T
            else:
                block = np.array([values], dtype=float)
            blocks.append(block)
            missing_blocks.append(np.broadcast_to(absent, block.shape))
            counts[i] = block.shape[0]
        sens_rows = np.concatenate(blocks) if blocks else np.zeros((0, len(wkeys)))
        missing = np.concatenate(missing_blocks) if missing_blocks else np.zeros((0, len(wkeys)), dtype=bool)
        if not missing.any():
            missing = None

    act_rows = None
    act_bits = data.get("act_bits")
    if act_bits is not None and "act_sensitivity" in keys:
        akeys = [str(int(a)) for a in act_bits]
        act_rows = np.array([[(e.get("act_sensitivity") or {}).get(k, math.nan) for k in akeys] for e in layers],
                            dtype=float).reshape(n, len(akeys))

    cost_names = sorted({c for e in layers for c in e.get("costs", {})}) if "costs" in keys else []
    widths = set(weight_bits)
    for pin in (data.get("pinned") or {}).values():
        widths.add(int(pin["weight_bits"]))
    costs, given = {}, {}
    for cost in cost_names:
        tables = [e.get("costs", {}).get(cost) for e in layers]
        for table in tables:
            if table:
                widths.update(int(k) for k in table)
    cost_widths = tuple(sorted(widths))
    ckeys = [str(w) for w in cost_widths]
    for cost in cost_names:
        tables = [e.get("costs", {}).get(cost) for e in layers]
        given[cost] = np.array([t is not None for t in tables])
        costs[cost] = np.array([[math.nan] * len(ckeys) if t is None else [t.get(k, math.nan) for k in ckeys]
                                for t in tables], dtype=float).reshape(n, len(ckeys))
    header = {k: v for k, v in data.items() if k != "layers"}
    return _Columns(header, weight_bits, names, params, facts, sens_rows, counts, missing, act_rows, costs, given,
                    cost_widths, found)


# --- npz: columns ----------------------------------------------------------------------------
def _npz_columns(path, source: str) -> _Columns:
    def error(message):
        return ProblemFileError(f"{source}: {message}")

    handle = open_input(path, "problem", error=error)
    try:
        try:
            unpacked = sum(info.file_size for info in zipfile.ZipFile(handle).infolist())
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise error(f"not a readable .npz archive ({exc})") from None
        limit = input_limit("problem")
        if unpacked > limit:  # a compressed archive that would unpack past the limit
            raise error(f"unpacks to {unpacked / 2 ** 20:.0f} MiB of arrays, over the {limit / 2 ** 20:.0f} MiB "
                        f"limit for problem files; raise it with BITSEARCH_MAX_PROBLEM_MB=N if the file is right")
        handle.seek(0)
        return _npz_arrays(handle, source)
    finally:
        handle.close()


# what a damaged or foreign zip archive raises while numpy reads it: zlib's error for a broken
# deflate stream, NotImplementedError for a compression method zipfile lacks, RuntimeError
# for an encrypted member
_DAMAGED_ZIP = (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError)


def _npz_arrays(handle, source: str) -> _Columns:
    try:
        archive = np.load(handle, allow_pickle=False)
    except _DAMAGED_ZIP as exc:
        raise ProblemFileError(f"{source}: not a readable .npz archive ({exc})") from None
    if not hasattr(archive, "files"):
        raise ProblemFileError(f"{source}: holds a single array, not a .npz archive of named arrays")
    with archive:
        names = set(archive.files)
        known = set(_NPZ_ARRAYS)
        unknown = sorted(n for n in names if n not in known and not n.startswith("cost."))
        missing = [n for n in ("name", "params", "sensitivity", "weight_bits") if n not in names]
        problems = []
        if unknown:
            problems.append(f"unknown arrays {unknown} (the form's arrays are {', '.join(_NPZ_ARRAYS)} "
                            f"and cost.<name>)")
        if missing:
            problems.append(f"missing arrays {missing}")
        if problems:
            raise ProblemFileError(_join(source, problems))
        try:
            arrays = {n: archive[n] for n in archive.files}
        except _DAMAGED_ZIP as exc:
            raise ProblemFileError(f"{source}: not a readable .npz archive ({exc})") from None
    header = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION}
    if "header" in arrays:
        text = arrays.pop("header")
        if text.dtype.kind not in "US" or text.shape != ():
            raise ProblemFileError(f"{source}: array 'header' must be one string (a JSON object)")
        given = parse_json(text.item() if text.dtype.kind == "U" else text.item(),
                           lambda message: ProblemFileError(f"{source}: array 'header': {message}"))
        if not isinstance(given, Mapping):
            raise ProblemFileError(f"{source}: array 'header' is not a JSON object")
        bad = sorted(set(given) - set(_NPZ_HEADER_FIELDS))
        if bad:
            raise ProblemFileError(f"{source}: header: unknown fields {bad} (it holds "
                                   f"{', '.join(_NPZ_HEADER_FIELDS)})")
        header.update(given)
    _check_identity(header, source)
    weight_bits_array = arrays["weight_bits"]
    if weight_bits_array.dtype.kind not in "iu" or weight_bits_array.ndim != 1:
        raise ProblemFileError(f"{source}: array 'weight_bits' must be a 1-D array of integers")
    header["weight_bits"] = [int(b) for b in weight_bits_array.tolist()]
    structure = _structure_problems({**header, "layers": [{"name": "-", "params": 0}]})
    if structure:
        raise ProblemFileError(_join(source, ["header: " + p if not p.startswith("weight_bits") else p
                                              for p in structure]))
    weight_bits = tuple(header["weight_bits"])

    def fail(message):
        raise ProblemFileError(f"{source}: {message}")

    def integers(name, length, what):
        value = arrays[name]
        if value.dtype.kind not in "iu" or value.ndim != 1:
            fail(f"array {name!r} must be a 1-D array of integers (got {value.dtype} with shape {value.shape})")
        if value.shape[0] != length:
            fail(f"array {name!r} has {value.shape[0]} entries, expected {length} ({what})")
        return value.astype(np.int64, copy=False)

    def numbers(name, shape, what):
        value = arrays[name]
        if value.dtype.kind not in "iuf" or value.ndim != len(shape):
            fail(f"array {name!r} must be a {len(shape)}-D array of numbers (got {value.dtype} with shape "
                 f"{value.shape})")
        if value.shape != shape:
            fail(f"array {name!r} has shape {value.shape}, expected {shape} ({what})")
        return value.astype(float, copy=False)

    def strings(name, length):
        value = arrays[name]
        if value.dtype.kind not in "US" or value.ndim != 1:
            fail(f"array {name!r} must be a 1-D array of strings (got {value.dtype} with shape {value.shape})")
        if value.shape[0] != length:
            fail(f"array {name!r} has {value.shape[0]} entries, expected {length} (one per layer)")
        if value.dtype.kind == "S":
            value = np.char.decode(value, "utf-8")
        return value.tolist()

    sens = arrays["sensitivity"]
    if sens.dtype.kind not in "iuf" or sens.ndim != 2:
        fail(f"array 'sensitivity' must be a 2-D array (units, widths) of numbers (got {sens.dtype} with shape "
             f"{sens.shape})")
    units = sens.shape[0]
    if sens.shape[1] != len(weight_bits):
        fail(f"array 'sensitivity' has {sens.shape[1]} columns, expected {len(weight_bits)} (one per weight width "
             f"{list(weight_bits)})")
    name_array = arrays["name"]
    n_layers = name_array.shape[0] if name_array.ndim == 1 else -1
    if "layer" in arrays:
        layer = integers("layer", units, "one per row of 'sensitivity'")
        if units and (layer.min() < 0 or layer.max() >= n_layers):
            fail(f"array 'layer' must index the {n_layers} layers of 'name' (0..{n_layers - 1}); "
                 f"it holds {int(layer.min())}..{int(layer.max())}")
        if units and np.any(np.diff(layer) < 0):
            fail("array 'layer' must not decrease: the rows of a layer are consecutive")
        counts = np.bincount(layer, minlength=max(n_layers, 0)).astype(np.int64)
    else:
        if n_layers != units:
            fail(f"'name' has {n_layers} entries but 'sensitivity' {units} rows: without 'layer' each row is "
                 f"one layer (give 'layer' to put several rows, one per kernel, in a layer)")
        counts = np.ones(units, dtype=np.int64)
    layer_names = strings("name", n_layers)
    params = integers("params", n_layers, "one per layer")
    facts: dict[str, Any] = {}
    for key in _INT_FACTS:
        if key in arrays:
            facts[key] = integers(key, n_layers, "one per layer")
    if "kind" in arrays:
        facts["kind"] = strings("kind", n_layers)
    for key in _SHAPE_FACTS:
        if key in arrays:
            value = arrays[key]
            if value.dtype.kind not in "iu" or value.ndim != 2 or value.shape[0] != n_layers:
                fail(f"array {key!r} must be a (layers, D) array of integers padded with -1 (got {value.dtype} "
                     f"with shape {value.shape})")
            facts[key] = [tuple(v for v in row if v >= 0) for row in value.tolist()]
    act_rows = None
    act_bits = header.get("act_bits")
    if "act_sensitivity" in arrays:
        n_act = len(act_bits) if act_bits else 0
        act_rows = numbers("act_sensitivity", (n_layers, n_act), "layers x act_bits of the header")
    costs, given = {}, {}
    for name in sorted(n for n in arrays if n.startswith("cost.")):
        cost = name[len("cost."):]
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", cost):
            fail(f"array {name!r}: {cost!r} is not a cost name (lower case letters, digits, '_' and '-')")
        costs[cost] = numbers(name, (n_layers, len(weight_bits)), "layers x weight_bits")
        given[cost] = np.ones(n_layers, dtype=bool)
    return _Columns(header, weight_bits, layer_names, params, facts, sens.astype(float, copy=False), counts, None,
                    act_rows, costs, given, weight_bits, [], nan_is_missing=False)


# --- both forms: the checks and the Problem --------------------------------------------------
def _columns_problems(c: _Columns, source: str) -> tuple[list[tuple[int | None, str]], dict]:
    """What a problem of either form must satisfy, checked on arrays; returns the problems
    (layer index or None, message) and the pinned layers."""
    found = list(c.problems)
    names = c.names
    n = len(names)
    weight_bits = c.weight_bits
    header = c.header
    pinned_raw = dict(header.get("pinned") or {})
    index: dict[str, int] = {}
    repeated: set = set()
    for i, name in enumerate(names):
        if name in index:
            if name not in repeated:  # named once, however often it repeats
                found.append((i, f"layer {name!r} appears more than once"))
                repeated.add(name)
        else:
            index[name] = i
    if not n:
        found.append((None, "the file has no layers"))
    pinned = np.zeros(n, dtype=bool)
    for name in pinned_raw:
        if name in index:
            pinned[index[name]] = True
    free = ~pinned
    # facts: what Layer would refuse
    kinds = c.facts.get("kind")
    if kinds is not None:
        for i in np.flatnonzero(~np.isin(np.array(kinds, dtype=object), KINDS)).tolist():
            found.append((i, f"layer {names[i]!r}: kind {kinds[i]!r} is not one of {', '.join(KINDS)}"))
    kernels = c.facts.get("kernels")
    low = (c.params < 0) | (c.facts["macs"] < 0 if "macs" in c.facts else False)
    if kernels is not None:
        low |= (kernels < 1) & (kernels != -1)
    for key in ("bias_params", "in_channels", "out_channels", "in_features"):
        if key in c.facts:
            low |= c.facts[key] < 0
    if "groups" in c.facts:
        low |= c.facts["groups"] < 1
    for i in np.flatnonzero(low).tolist():
        found.append((i, f"layer {names[i]!r}: kernels and groups must be >= 1 and params, macs, bias_params "
                         f">= 0"))
    # sensitivity rows per layer: one, or one per kernel
    counts = c.sens_counts
    if kernels is not None:
        wrong = (counts > 1) & (kernels > 0) & (kernels != counts)
        for i in np.flatnonzero(wrong).tolist():
            found.append((i, f"layer {names[i]!r}: {int(counts[i])} sensitivity rows (one per kernel) but the "
                             f"layer has kernels={int(kernels[i])}"))
    for i in np.flatnonzero((counts == 0) & free).tolist():
        if not any(j == i for j, _ in c.problems):
            found.append((i, f"layer {names[i]!r}: no 'sensitivity' (every layer that is not pinned needs one)"))
    row_layer = np.repeat(np.arange(n), counts)
    rows_free = free[row_layer] if n else np.zeros(0, dtype=bool)
    if c.sens_missing is not None:
        absent = c.sens_missing & rows_free[:, None]
        for i in np.unique(row_layer[absent.any(axis=1)]).tolist():
            cols = np.flatnonzero(c.sens_missing[row_layer == i].any(axis=0))
            found.append((i, f"layer {names[i]!r}: sensitivity has no value at widths "
                             f"{[weight_bits[j] for j in cols.tolist()]} (weight_bits are {list(weight_bits)})"))
        given_rows = ~c.sens_missing
    else:
        given_rows = True
    # beside pairwise terms the separable values are measured loss changes, which may be < 0
    measured = header.get("pairwise") is not None
    _value_problems(found, names, row_layer, c.sens_rows, given_rows, weight_bits, "sensitivity",
                    negative_ok=measured)
    # activations
    act_bits = header.get("act_bits")
    act_searched = act_bits is not None and len(act_bits) > 1
    if c.act_rows is not None and not c.nan_is_missing:
        _value_problems(found, names, np.arange(n), c.act_rows, True, act_bits or (), "act_sensitivity")
    if act_searched:
        rows = c.act_rows if c.act_rows is not None else np.full((n, len(act_bits)), np.nan)
        for i in np.flatnonzero(np.isnan(rows).any(axis=1) & free).tolist():
            missing = [int(act_bits[j]) for j in np.flatnonzero(np.isnan(rows[i])).tolist()]
            found.append((i, f"layer {names[i]!r}: activations are searched ({list(act_bits)}) but "
                             f"'act_sensitivity' has no value at {missing}"))
    # explicit costs: every layer gives every cost it names at every width it may take
    column = {w: j for j, w in enumerate(c.cost_widths)}
    need = np.zeros((n, len(c.cost_widths)), dtype=bool)
    need[:, [column[w] for w in weight_bits]] = True
    for name, pin in pinned_raw.items():
        if name in index:
            need[index[name]] = False
            need[index[name], column[int(pin["weight_bits"])]] = True
    for cost, table in c.costs.items():
        if c.nan_is_missing:  # JSON: NaN marks a width the file does not give
            absent = np.isnan(table) & need
            for i in np.flatnonzero(absent.any(axis=1)).tolist():
                widths = [c.cost_widths[j] for j in np.flatnonzero(absent[i]).tolist()]
                hint = "" if c.cost_given[cost][i] else " (every layer must give every cost it names at every width)"
                found.append((i, f"layer {names[i]!r}: cost {cost!r} has no value at widths {widths}{hint}"))
            present = ~np.isnan(table)
        else:  # npz: every entry is given; the ones a layer does not need are not checked
            present = need
        _value_problems(found, names, np.arange(n), table, present, c.cost_widths, f"cost {cost!r}")
    for group in header.get("tied", []) or []:
        unknown = [g for g in group if g not in index]
        if unknown:
            found.append((None, f"tied group {group}: unknown layers {unknown}"))
    for name in pinned_raw:
        if name not in index:
            found.append((None, f"pinned layer {name!r} is not a layer of the file"))
    for cost in header.get("cost_units", {}) or {}:
        if cost not in c.costs and cost != "size":
            found.append((None, f"cost_units names {cost!r}, which no layer's 'costs' gives"))
    pairwise = None
    if header.get("pairwise") is not None:
        messages: list[str] = []
        pairwise = _read_pairwise(header["pairwise"], names, weight_bits, messages)
        found += [(None, message) for message in messages]
    return found, pinned_raw, pairwise


def _value_problems(found, names, row_layer, values, given, widths, what, *, negative_ok: bool = False) -> None:
    """Per layer, the first width at which ``values`` (rows, widths) is not finite, and the
    first at which it is negative (where ``given``; unless ``negative_ok``): the JSON form's
    messages."""
    bad = ~np.isfinite(values) & given
    negative = np.isfinite(values) & (values < 0) & given & (not negative_ok)
    for mask, text in ((bad, "at width {w} is not a finite number (nan, inf or too large)"),
                       (negative, "is negative at width {w} (sensitivities and costs are >= 0)")):
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        seen = set()
        for r in rows.tolist():
            i = int(row_layer[r])
            if i in seen:
                continue
            seen.add(i)
            found.append((i, f"layer {names[i]!r}: {what} " + text.format(w=widths[int(np.argmax(mask[r]))])))


def _problem(c: _Columns, budgets: Iterable[str], granularity: str, source: str) -> Problem:
    found, pinned_raw, pairwise = _columns_problems(c, source)
    if found:
        found.sort(key=lambda item: (math.inf if item[0] is None else item[0]))
        raise ProblemFileError(_join(source, [message for _, message in found]))
    header = c.header
    names = c.names
    n = len(names)
    counts = c.sens_counts
    kernels = c.facts.get("kernels")
    if kernels is None:
        kernels = np.maximum(counts, 1)
    else:
        kernels = np.where(kernels > 0, kernels, np.maximum(counts, 1))
    facts = c.facts
    kinds = facts.get("kind") or ["conv2d"] * n
    int_facts = {key: facts[key].tolist() for key in _INT_FACTS if key in facts and key != "kernels"}
    shape_facts = {key: facts[key] for key in _SHAPE_FACTS if key in facts}
    macs = int_facts.pop("macs", None)
    params = c.params.tolist()
    kernel_list = kernels.tolist()
    extra_keys = list(int_facts) + list(shape_facts)
    extra_values = [int_facts[k] for k in int_facts] + [shape_facts[k] for k in shape_facts]
    layers = []
    try:
        for i in range(n):
            extra = {k: v[i] for k, v in zip(extra_keys, extra_values)}
            layers.append(Layer(names[i], kinds[i], params[i], 0 if macs is None else macs[i], kernel_list[i],
                                **extra))
    except (UserInputError, TypeError, ValueError) as exc:
        raise ProblemFileError(f"{source}: {exc}") from None

    weight_bits = c.weight_bits
    act_bits = header.get("act_bits")
    act_bits = None if act_bits is None else tuple(int(b) for b in act_bits)
    act_searched = act_bits is not None and len(act_bits) > 1
    model = header.get("model") or {}
    pinned = tuple((name, Pin(int(p["weight_bits"]), p.get("act_bits"))) for name, p in pinned_raw.items())
    try:
        space = SearchSpace(tuple(layers), weight_bits=weight_bits, act_bits=act_bits, granularity=granularity,
                            tied=tuple(tuple(g) for g in header.get("tied", []) or []), pinned=pinned,
                            model_name=model.get("name", "") or Path(source).stem,
                            fingerprint=model.get("fingerprint", "") or layers_fingerprint(layers),
                            scale_group=header.get("scale_group"))
    except UserInputError as exc:
        raise ProblemFileError(f"{source}: {exc}") from None
    with_rows = counts > 0
    act = None
    if act_searched and c.act_rows is not None:
        act = c.act_rows[with_rows]
    if with_rows.all():
        table_names = names
    else:
        table_names = [name for name, keep in zip(names, with_rows.tolist()) if keep]
    table = SensitivityTable.from_rows(weight_bits, table_names, c.sens_rows, counts[with_rows],
                                       act_bits=act_bits if act_searched else (), act=act,
                                       method=header.get("sensitivity_method", "table"), pairwise=pairwise)
    if act is not None:  # pinned layers carry no activation estimate
        pinned_names = set(pinned_raw)
        object.__setattr__(table, "act", {k: v for k, v in table.act.items() if k not in pinned_names})

    cost_units = dict(header.get("cost_units", {}) or {})
    per_kernel = {"latency": "max"}
    per_kernel.update(header.get("cost_per_kernel", {}) or {})
    tables = {}
    for cost, values in c.costs.items():
        default_unit = "bit" if cost == "size" else ""
        model_ = TableCost.from_arrays(cost, cost_units.get(cost, default_unit), names, c.cost_widths, values)
        model_.per_kernel = per_kernel.get(cost, "sum")
        tables[cost] = model_
    with_macs = "macs" in facts and bool(np.all(facts["macs"] > 0))
    report = ["size", "bits"] + ([name for name in ANALYTIC if name != "size"] if with_macs else [])
    report = [name for name in report if name not in tables]
    budgets = list(budgets)
    for text in budgets:
        spec = parse_budget(text)
        if spec.cost not in tables and spec.cost not in report:
            offered = sorted(set(tables) | set(report))
            hint = "; give the layers 'macs' for the analytic bops, energy and bitfusion costs" \
                if spec.cost in ANALYTIC and not with_macs else ""
            raise ProblemFileError(f"{source}: budget {text!r} names cost {spec.cost!r}, which the file does "
                                   f"not price (it prices {', '.join(offered)}){hint}")
    problem = Problem.build(space, budgets, sensitivity=table, cost_models=tables, report=report)
    problem.info["source"] = source
    return problem


def _read_pairwise(block: Mapping, names: list, weight_bits, problems: list):
    """The ``pairwise`` block as a :class:`PairwiseTable`; what is wrong goes to ``problems``."""
    known = set(names)
    order = {name: k for k, name in enumerate(names)}
    terms, selected, seen = {}, {}, set()
    widths = [str(b) for b in weight_bits]
    for k, entry in enumerate(block.get("pairs", [])):
        a, b = entry["layers"]
        where = f"pairwise.pairs[{k}] ({a}, {b})"
        unknown = [n for n in (a, b) if n not in known]
        if unknown:
            problems.append(f"{where}: unknown layers {unknown}")
            continue
        if a == b:
            problems.append(f"{where}: pairs a layer with itself")
            continue
        key = tuple(sorted((a, b), key=order.get))
        if key in seen:
            problems.append(f"{where}: the pair appears twice")
            continue
        seen.add(key)
        rows = entry["terms"]
        missing = [(p, q) for p in widths for q in widths if p not in rows or q not in rows[p]]
        extra = sorted({p for p in rows if p not in widths} | {q for p in rows for q in rows[p] if q not in widths})
        if missing or extra:
            problems.append(f"{where}: terms must give every pair of weight_bits {list(weight_bits)}"
                            + (f" (missing {missing[:3]})" if missing else f" (unknown widths {extra})"))
            continue
        matrix = np.array([[rows[p][q] for q in widths] for p in widths], dtype=float)
        if not np.all(np.isfinite(matrix)):
            problems.append(f"{where}: terms must be finite numbers")
            continue
        if key != (a, b):
            matrix = matrix.T
        terms[key] = matrix
        if "selected" in entry:
            selected[key] = entry["selected"]
    reference = block.get("reference")
    if reference is not None:
        unknown = [n for n in reference if n not in known]
        if unknown:
            problems.append(f"pairwise.reference: unknown layers {unknown}")
    try:
        return PairwiseTable(weight_bits, terms, reference, selected, block.get("info", {}))
    except UserInputError as exc:
        problems.append(f"pairwise: {exc}")
        return None


def _join(source: str, problems: list[str]) -> str:
    return schemas.join(source, problems)


# --- writing --------------------------------------------------------------------------------
def _explicit_costs(problem: Problem) -> dict:
    """The cost models a problem file holds as tables: name -> (model, act) (act None: a
    TableCost, independent of activations)."""
    space = problem.space
    acts = [space.act_choices[0]] if not space.act_searched else None
    explicit = {}
    for name, model in problem.costs.items():
        if isinstance(model, TableCost):
            explicit[name] = (model, None)
        elif isinstance(model, LatencyTableCost):
            if acts is None:
                warnings.warn(f"cost {name!r} depends on activation widths, which are searched: a problem "
                              "file cannot hold it, so it is left out", stacklevel=3)
                continue
            explicit[name] = (model, acts[0])
        elif name not in ANALYTIC and name != "bits":  # bits: recomputed from the layers' params
            warnings.warn(f"cost {name!r} ({type(model).__name__}) is not a table: left out of the problem file",
                          stacklevel=3)
    return explicit


def _explicit_table(problem: Problem, model, act, widths) -> np.ndarray:
    """(layers, widths): the cost of every layer at each width (NaN where a pinned layer
    is not priced: it only needs its pinned width)."""
    space = problem.space
    out = np.stack([model.layer_column(space, w, act) for w in widths], axis=1) if widths else \
        np.zeros((len(space.layers), 0))
    out = np.array(out)
    for name, pin in space.pinned:
        i = space.index_of(name)
        out[i] = np.nan
        out[i, widths.index(pin.weight_bits)] = model.layer_cost(space.layers[i], pin.weight_bits,
                                                                  pin.act_bits if act is not None else None)
    return out


def _header(problem: Problem, explicit: dict) -> dict:
    space, table = problem.space, problem.sensitivity
    out: dict[str, Any] = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                           "model": {"name": space.model_name, "fingerprint": space.fingerprint}}
    if problem.task:
        out["source"] = f"task {problem.task}"
    if table.method:
        out["sensitivity_method"] = table.method
    out["weight_bits"] = list(space.weight_bits)
    if space.scale_group is not None:
        out["scale_group"] = space.scale_group
    out["act_bits"] = None if space.act_bits is None else list(space.act_bits)
    if explicit:
        out["cost_units"] = {name: model.unit for name, (model, _) in explicit.items()}
        out["cost_per_kernel"] = {name: model.per_kernel for name, (model, _) in explicit.items()}
    if space.tied:
        out["tied"] = [list(g) for g in space.tied]
    if space.pinned:
        out["pinned"] = {n: {"weight_bits": p.weight_bits, "act_bits": p.act_bits} for n, p in space.pinned}
    if table.pairwise is not None:
        out["pairwise"] = _pairwise_block(table.pairwise, space)
    return out


def _needs_table(problem: Problem):
    if problem.sensitivity is None:
        raise UserInputError("a problem file carries sensitivities: this problem has no sensitivity table "
                             "(pass --sensitivity METHOD)")


def problem_to_dict(problem: Problem) -> dict:
    """The ``bitsearch-problem`` document of ``problem`` (which needs a sensitivity table).

    Layer facts (params, MACs, kernels, shapes) are written so that the analytic costs
    are recomputed on loading; explicit tables (:class:`TableCost`, and measured latency
    tables when activations are not searched) are written per layer and width.
    """
    _needs_table(problem)
    space, table = problem.space, problem.sensitivity
    pins = space.pins
    explicit = _explicit_costs(problem)
    widths_all = sorted(set(space.weight_bits) | {p.weight_bits for _, p in space.pinned})
    cost_tables = {name: _explicit_table(problem, model, act, widths_all).tolist()
                   for name, (model, act) in explicit.items()}
    keep = [j for j, bits in enumerate(table.weight_bits) if bits in space.weight_bits]
    keys = [str(table.weight_bits[j]) for j in keep]
    packed = table.weight
    all_rows = packed.rows[:, keep].tolist()
    offsets = packed.offsets.tolist()
    defaults = {key: (() if key in ("kernel_size", "stride", "out_spatial") else 1 if key == "groups" else 0)
                for key in _LAYER_FACTS}
    always = ("kind", "macs", "kernels")
    act_columns = [table.act_bits.index(a) for a in space.act_bits] if space.act_searched else []
    act_keys = [str(a) for a in space.act_bits] if space.act_searched else []
    layers = []
    for index, layer in enumerate(space.layers):
        facts = layer.__dict__
        entry: dict[str, Any] = {"name": layer.name, "params": layer.params}
        for key in _LAYER_FACTS:
            value = facts[key]
            if key in always or value != defaults[key]:
                entry[key] = list(value) if value.__class__ is tuple else value
        where = packed.index.get(layer.name)
        if where is not None:
            start, stop = offsets[where], offsets[where + 1]
            if stop - start == 1:
                entry["sensitivity"] = dict(zip(keys, all_rows[start]))
            else:
                entry["sensitivity"] = dict(zip(keys, map(list, zip(*all_rows[start:stop]))))
        if act_columns and layer.name in table.act:
            values = table.act[layer.name]
            entry["act_sensitivity"] = {k: float(values[c]) for k, c in zip(act_keys, act_columns)}
        if cost_tables:
            widths = [pins[layer.name].weight_bits] if layer.name in pins else list(space.weight_bits)
            entry["costs"] = {name: {str(w): rows[index][widths_all.index(w)] for w in widths}
                              for name, rows in cost_tables.items()}
        layers.append(entry)
    out = _header(problem, explicit)
    out["layers"] = layers
    order = ["schema", "schema_version", "model", "source", "sensitivity_method", "weight_bits", "act_bits",
             "layers", "cost_units", "cost_per_kernel", "tied", "pinned", "pairwise"]
    return {key: out[key] for key in order if key in out}


def problem_to_arrays(problem: Problem) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` form of ``problem`` (see the module docstring)."""
    _needs_table(problem)
    space, table = problem.space, problem.sensitivity
    explicit = _explicit_costs(problem)
    header = _header(problem, explicit)
    if table.pairwise is not None:
        header["pairwise"] = _pairwise_block(table.pairwise, space)
    weight_bits = header.pop("weight_bits")
    if any(p.weight_bits not in space.weight_bits for _, p in space.pinned) and explicit:
        raise UserInputError("the .npz form prices layers at the weight_bits only: a layer pinned outside them "
                             "cannot carry explicit costs there; write the JSON form")
    names = [layer.name for layer in space.layers]
    facts = space.layer_facts()
    keep = [table._column(b) for b in weight_bits]
    rows, counts = [], []
    for layer in space.layers:
        if layer.name in table.weight:
            block = table.weight[layer.name][:, keep]
        else:  # a pinned layer without estimates: a row of zeros (never counted)
            block = np.zeros((1, len(keep)))
        rows.append(block)
        counts.append(block.shape[0])
    sensitivity = np.concatenate(rows) if rows else np.zeros((0, len(keep)))
    arrays: dict[str, np.ndarray] = {
        "header": np.array(json.dumps(header)),
        "weight_bits": np.array(weight_bits, dtype=np.int64),
        "name": np.array(names, dtype=str),
        "params": facts["params"].copy(),
        "kernels": facts["kernels"].copy(),
        "sensitivity": sensitivity,
    }
    if any(c != 1 for c in counts):
        arrays["layer"] = np.repeat(np.arange(len(names), dtype=np.int64), counts)
    arrays["kind"] = np.array([layer.kind for layer in space.layers], dtype=str)
    for key in _INT_FACTS:
        if key in ("kernels",):
            continue
        values = np.fromiter((getattr(layer, key) for layer in space.layers), dtype=np.int64, count=len(names))
        if key == "macs" or np.any(values != _FACT_DEFAULTS.get(key, 0)):
            arrays[key] = values
    for key in _SHAPE_FACTS:
        shapes = [getattr(layer, key) for layer in space.layers]
        depth = max((len(s) for s in shapes), default=0)
        if depth:
            padded = np.full((len(names), depth), -1, dtype=np.int64)
            for i, shape in enumerate(shapes):
                padded[i, :len(shape)] = shape
            arrays[key] = padded
    if space.act_searched:
        arrays["act_sensitivity"] = np.array(
            [[float(table.act[n][table.act_bits.index(a)]) if n in table.act else 0.0 for a in space.act_bits]
             for n in names], dtype=float).reshape(len(names), len(space.act_bits))
    for name, (model, act) in explicit.items():
        values = _explicit_table(problem, model, act, list(weight_bits))
        arrays[f"cost.{name}"] = values
    return arrays


def _pairwise_block(pairwise: PairwiseTable, space) -> dict:
    columns = {b: pairwise.weight_bits.index(b) for b in space.weight_bits}
    pairs = []
    for (a, b), matrix in pairwise.terms.items():
        entry: dict[str, Any] = {"layers": [a, b], "terms": {
            str(p): {str(q): float(matrix[columns[p], columns[q]]) for q in space.weight_bits}
            for p in space.weight_bits}}
        if (a, b) in pairwise.selected:
            entry["selected"] = pairwise.selected[(a, b)]
        pairs.append(entry)
    block: dict[str, Any] = {"reference": None if pairwise.reference is None else dict(pairwise.reference),
                             "pairs": pairs}
    if pairwise.info:
        block["info"] = json_safe(pairwise.info)
    return block


def json_safe(value):
    """``value`` with numpy scalars turned into plain numbers (for the problem file)."""
    import json

    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def write_problem(problem: Problem, path: str | os.PathLike, *, parents: bool = True) -> None:
    """Write ``problem`` as a ``bitsearch-problem`` file (atomically): the ``.npz`` form when
    ``path`` ends in ``.npz``, JSON otherwise."""
    if is_npz(path):
        arrays = problem_to_arrays(problem)
        atomic_write(path, lambda handle: np.savez(handle, **arrays), parents=parents)
        return
    atomic_write_text(path, dumps(problem_to_dict(problem)), parents=parents)
