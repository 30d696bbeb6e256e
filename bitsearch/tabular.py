"""Tabular problems: sensitivities and costs per layer and width in a JSON file (no torch).

A ``bitsearch-problem`` file holds what the ``ilp`` searcher needs without a model::

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

The JSON Schema is ``bitsearch/schemas/problem.schema.json``.  :func:`load_problem` reads
a file into a :class:`~bitsearch.problem.Problem`; :func:`write_problem` writes one from
any problem that has a sensitivity table (``--write-problem``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from . import schemas
from ._io import atomic_write_text, dumps, load_json_input
from .budget import parse_budget
from .cost import ANALYTIC, LatencyTableCost, TableCost
from .errors import ProblemFileError, UserInputError
from .problem import Problem
from .sensitivity.pairwise import PairwiseTable
from .sensitivity.table import SensitivityTable
from .space import Layer, Pin, SearchSpace, layers_fingerprint

SCHEMA = "bitsearch-problem"
SCHEMA_VERSION = 1
_LAYER_FACTS = ("kind", "macs", "kernels", "bias_params", "in_channels", "out_channels", "kernel_size", "stride",
                "groups", "in_features", "out_spatial")


def schema_path() -> Path:
    """The JSON Schema of tabular problem files, shipped in the package."""
    return schemas.schema_path("problem")


# --- reading --------------------------------------------------------------------------------
def load_problem(path: str | os.PathLike, budgets: Iterable[str] = (), *, granularity: str = "layer") -> Problem:
    """Read a ``bitsearch-problem`` file and resolve ``budgets`` against it.

    Raises :class:`~bitsearch.errors.ProblemFileError` naming every problem of a
    malformed file, and the usual budget errors (unknown cost, infeasible budget).
    """
    source = str(path)
    data = load_json_input(path, "problem", error=lambda message: ProblemFileError(f"{source}: {message}"))
    return problem_from_dict(data, budgets, granularity=granularity, source=source)


def problem_from_dict(data: Any, budgets: Iterable[str] = (), *, granularity: str = "layer",
                      source: str = "problem") -> Problem:
    """The Problem of a parsed ``bitsearch-problem`` document (see :func:`load_problem`)."""
    _check_schema(data, source)
    problems: list[str] = []
    weight_bits = tuple(int(b) for b in data["weight_bits"])
    act_bits = data.get("act_bits")
    act_bits = None if act_bits is None else tuple(int(b) for b in act_bits)
    act_searched = act_bits is not None and len(act_bits) > 1
    pinned_raw = data.get("pinned", {})
    cost_units = dict(data.get("cost_units", {}))
    per_kernel = {"latency": "max"}
    per_kernel.update(data.get("cost_per_kernel", {}))
    # beside pairwise terms the separable values are measured loss changes, which may be < 0
    measured = data.get("pairwise") is not None

    layers, weight, act, cost_values = [], {}, {}, {}
    names = [entry["name"] for entry in data["layers"]]
    seen = set()
    for name in names:
        if name in seen:
            problems.append(f"layer {name!r} appears twice")
        seen.add(name)
    cost_names = sorted({c for entry in data["layers"] for c in entry.get("costs", {})})
    for index, entry in enumerate(data["layers"]):
        name = entry["name"]
        where = f"layer {name!r}"
        pinned = name in pinned_raw
        sens = entry.get("sensitivity")
        kernels = entry.get("kernels")
        found = len(problems)
        if sens is not None:
            problems += _width_table_problems(where, "sensitivity", sens, weight_bits, "weight_bits",
                                              negative_ok=measured)
        if entry.get("act_sensitivity") is not None:
            problems += _width_table_problems(where, "act_sensitivity", entry["act_sensitivity"], act_bits or (),
                                              "act_bits")
        own_widths = set(weight_bits) | ({int(pinned_raw[name]["weight_bits"])} if pinned else set())
        for cost, table in entry.get("costs", {}).items():
            problems += _width_table_problems(where, f"cost {cost!r}", table, sorted(own_widths),
                                              "weight_bits" + (" or its pinned width" if pinned else ""))
        per_kernel_lengths = {len(v) for v in (sens or {}).values() if isinstance(v, list)}
        if sens is not None and per_kernel_lengths:
            if any(not isinstance(v, list) for v in sens.values()):
                problems.append(f"{where}: sensitivity mixes per-kernel lists and per-layer numbers")
            elif len(per_kernel_lengths) > 1:
                problems.append(f"{where}: per-kernel sensitivity lists have different lengths "
                                f"{sorted(per_kernel_lengths)}")
            elif kernels is not None and per_kernel_lengths != {kernels}:
                problems.append(f"{where}: per-kernel sensitivity lists have {per_kernel_lengths.pop()} entries "
                                f"but the layer has kernels={kernels}")
            elif kernels is None:
                kernels = per_kernel_lengths.pop()
        if len(problems) > found:
            continue  # the tables of this layer cannot be read: go on checking the other layers
        facts = {k: entry[k] for k in _LAYER_FACTS if k in entry}
        facts["kernels"] = kernels or 1
        facts.setdefault("kind", "conv2d")
        facts.setdefault("macs", 0)
        try:
            layers.append(Layer(name=name, params=int(entry["params"]), **facts))
        except (UserInputError, TypeError, ValueError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        if sens is None:
            if not pinned:
                problems.append(f"{where}: no 'sensitivity' (every layer that is not pinned needs one)")
        else:
            missing = [b for b in weight_bits if str(b) not in sens]
            if missing and not pinned:
                problems.append(f"{where}: sensitivity has no value at widths {missing} (weight_bits are "
                                f"{list(weight_bits)})")
            else:
                columns = [sens.get(str(b), np.nan) for b in weight_bits]
                if any(isinstance(v, list) for v in columns):
                    weight[name] = np.array(columns, dtype=float).T  # (kernels, widths)
                else:
                    weight[name] = np.array([columns], dtype=float)
        if act_searched and not pinned:
            table = entry.get("act_sensitivity")
            missing = [b for b in act_bits if table is None or str(b) not in table]
            if missing:
                problems.append(f"{where}: activations are searched ({list(act_bits)}) but 'act_sensitivity' "
                                f"has no value at {missing}")
            else:
                act[name] = np.array([table[str(b)] for b in act_bits], dtype=float)
        widths = [pinned_raw[name]["weight_bits"]] if pinned else list(weight_bits)
        for cost in cost_names:
            table = entry.get("costs", {}).get(cost)
            missing = [b for b in widths if table is None or str(b) not in table]
            if missing:
                problems.append(f"{where}: cost {cost!r} has no value at widths {missing}"
                                + (" (every layer must give every cost it names at every width)"
                                   if table is None else ""))
                continue
            cost_values.setdefault(cost, {})[name] = {int(b): float(v) for b, v in table.items()}
    for group in data.get("tied", []):
        unknown = [n for n in group if n not in seen]
        if unknown:
            problems.append(f"tied group {group}: unknown layers {unknown}")
    for name in pinned_raw:
        if name not in seen:
            problems.append(f"pinned layer {name!r} is not a layer of the file")
    for cost in cost_units:
        if cost not in cost_names and cost != "size":
            problems.append(f"cost_units names {cost!r}, which no layer's 'costs' gives")
    pairwise = None
    if data.get("pairwise") is not None:
        pairwise = _read_pairwise(data["pairwise"], names, weight_bits, problems)
    if problems:
        raise ProblemFileError(schemas.join(source, problems))

    model = data.get("model", {})
    pinned = tuple((n, Pin(int(p["weight_bits"]), p.get("act_bits"))) for n, p in pinned_raw.items())
    try:
        space = SearchSpace(tuple(layers), weight_bits=weight_bits, act_bits=act_bits, granularity=granularity,
                            tied=tuple(tuple(g) for g in data.get("tied", [])), pinned=pinned,
                            model_name=model.get("name", "") or Path(source).stem,
                            fingerprint=model.get("fingerprint", "") or layers_fingerprint(layers))
    except UserInputError as exc:
        raise ProblemFileError(f"{source}: {exc}") from None
    table = SensitivityTable(weight_bits, weight, act_bits if act_searched else (), act,
                             method=data.get("sensitivity_method", "table"), pairwise=pairwise)

    tables = {}
    for cost, values in cost_values.items():
        default_unit = "bit" if cost == "size" else ""
        model_ = TableCost(cost, cost_units.get(cost, default_unit), values)
        model_.per_kernel = per_kernel.get(cost, "sum")
        tables[cost] = model_
    with_macs = all(layer.macs > 0 for layer in layers)
    report = ["size"] + ([n for n in ANALYTIC if n != "size"] if with_macs else [])
    report = [n for n in report if n not in tables]
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


def _check_schema(data: Any, source: str) -> None:
    if not isinstance(data, Mapping):
        raise ProblemFileError(f"{source}: a problem file is a JSON object with schema 'bitsearch-problem'")
    if data.get("schema") != SCHEMA:
        raise ProblemFileError(f"{source}: 'schema' must be {SCHEMA!r} (got {data.get('schema')!r}); "
                               "is this a policy or a space file?")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ProblemFileError(f"{source}: 'schema_version' {data.get('schema_version')!r} is not supported "
                               f"(this bitsearch reads version {SCHEMA_VERSION})")
    found = schemas.problems(data, "problem")
    if found:
        raise ProblemFileError(schemas.join(source, found))


# --- writing --------------------------------------------------------------------------------
def problem_to_dict(problem: Problem) -> dict:
    """The ``bitsearch-problem`` document of ``problem`` (which needs a sensitivity table).

    Layer facts (params, MACs, kernels, shapes) are written so that the analytic costs
    are recomputed on loading; explicit tables (:class:`TableCost`, and measured latency
    tables when activations are not searched) are written per layer and width.
    """
    space, table = problem.space, problem.sensitivity
    if table is None:
        raise UserInputError("a problem file carries sensitivities: this problem has no sensitivity table "
                             "(pass --sensitivity METHOD)")
    pins = space.pins
    acts = [space.act_choices[0]] if not space.act_searched else None
    explicit = {}
    for name, model in problem.costs.items():
        if isinstance(model, TableCost):
            explicit[name] = (model, None)
        elif isinstance(model, LatencyTableCost):
            if acts is None:
                warnings.warn(f"cost {name!r} depends on activation widths, which are searched: a problem "
                              "file cannot hold it, so it is left out", stacklevel=2)
                continue
            explicit[name] = (model, acts[0])
        elif name not in ANALYTIC:
            warnings.warn(f"cost {name!r} ({type(model).__name__}) is not a table: left out of the problem file",
                          stacklevel=2)
    layers = []
    for layer in space.layers:
        entry: dict[str, Any] = {"name": layer.name, "params": layer.params}
        for key in _LAYER_FACTS:
            value = getattr(layer, key)
            default = {"groups": 1}.get(key, 0 if not isinstance(value, tuple) else ())
            if value != default or key in ("kind", "macs", "kernels"):
                entry[key] = list(value) if isinstance(value, tuple) else value
        if layer.name in table.weight:
            rows = table.weight[layer.name]
            sens = {}
            for column, bits in enumerate(table.weight_bits):
                if bits not in space.weight_bits:
                    continue
                sens[str(bits)] = float(rows[0, column]) if rows.shape[0] == 1 else [float(v) for v in rows[:, column]]
            entry["sensitivity"] = sens
        if space.act_searched and layer.name in table.act:
            entry["act_sensitivity"] = {str(a): float(table.act[layer.name][table.act_bits.index(a)])
                                        for a in space.act_bits}
        widths = [pins[layer.name].weight_bits] if layer.name in pins else list(space.weight_bits)
        costs = {}
        for name, (model, act) in explicit.items():
            if act is None and isinstance(model, TableCost):
                costs[name] = {str(w): model.values[layer.name][w] for w in widths}
            else:
                a = pins[layer.name].act_bits if layer.name in pins else act
                costs[name] = {str(w): model.layer_cost(layer, w, a) for w in widths}
        if costs:
            entry["costs"] = costs
        layers.append(entry)
    out: dict[str, Any] = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                           "model": {"name": space.model_name, "fingerprint": space.fingerprint}}
    if problem.task:
        out["source"] = f"task {problem.task}"
    if table.method:
        out["sensitivity_method"] = table.method
    out["weight_bits"] = list(space.weight_bits)
    out["act_bits"] = None if space.act_bits is None else list(space.act_bits)
    out["layers"] = layers
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
    """Write ``problem`` as a ``bitsearch-problem`` file (atomically)."""
    atomic_write_text(path, dumps(problem_to_dict(problem)), parents=parents)
