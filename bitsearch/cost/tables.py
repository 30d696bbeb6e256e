"""Cost models read from tables: measured latency per layer and (w, a), and explicit
per-width costs of tabular problems."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .._io import parse_json, read_text_input
from ..errors import LatencyTableError, ProblemFileError
from ..space import Layer, SearchSpace
from .base import CostModel

LATENCY_COLUMNS = ("layer", "weight_bits", "act_bits", "latency")


def _act_key(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, float)):
        raise ValueError(value)
    text = str(value).strip().lower()
    if text in ("", "none", "float", "fp32", "null"):
        return None
    return int(text)


def table_keys(space: SearchSpace, weight_bits: Iterable[int] | None = None,
               act_bits: Iterable[int | None] | None = None) -> list[tuple[str, int, int | None]]:
    """One key per layer and (w, a): the widths given (default: the space's choices);
    pinned layers at their pinned widths."""
    weights = tuple(weight_bits) if weight_bits is not None else space.weight_bits
    acts = tuple(act_bits) if act_bits is not None else space.act_choices
    pins = space.pins
    keys = []
    for layer in space.layers:
        if layer.name in pins:
            keys.append((layer.name, pins[layer.name].weight_bits, pins[layer.name].act_bits))
            continue
        keys += [(layer.name, w, a) for w in weights for a in acts]
    return keys


#: the widths a latency table may name (32 is a float weight)
TABLE_WIDTHS = range(1, 33)


def read_latency_csv(text: str, source: str, required) -> tuple[dict[str, str], list[tuple[int, dict]]]:
    """Split a latency CSV into its ``# key: value`` metadata lines (keys lower-cased) and its
    rows, each with its line number in the file; raises :class:`LatencyTableError` when a
    ``required`` column is missing or the CSV does not parse."""
    meta, body, numbers = {}, [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("#"):
            key, _, value = line.lstrip("# ").partition(":")
            meta[key.strip().lower()] = value.strip()
        elif line.strip():
            body.append(line)
            numbers.append(number)
    reader = csv.DictReader(io.StringIO("\n".join(body)))
    try:
        fields = reader.fieldnames or []
        missing = [c for c in required if c not in fields]
        if missing:
            raise LatencyTableError(f"{source}: missing columns {missing}; expected {','.join(LATENCY_COLUMNS)}")
        rows = []
        for row in reader:
            rows.append((numbers[min(reader.line_num, len(numbers)) - 1], row))
    except csv.Error as exc:
        line = numbers[min(max(reader.line_num, 1), len(numbers)) - 1] if numbers else 1
        raise LatencyTableError(f"{source}: line {line} is not CSV ({exc})") from None
    return meta, rows


def parse_table_key(row, source: str, where: str) -> tuple[str, int, int | None]:
    """``(layer, weight_bits, act_bits)`` of a table row; widths within 1..32 (act: or float)."""
    try:
        layer, weight, act = row["layer"], row["weight_bits"], row["act_bits"]
        if not isinstance(layer, str) or not layer.strip() or isinstance(weight, (bool, float)):
            raise ValueError
        key = (layer.strip(), int(str(weight).strip()), _act_key(act))
    except (KeyError, TypeError, ValueError):
        raise LatencyTableError(f"{source}: {where} needs layer, integer weight_bits, act_bits "
                                f"(integer or 'float')") from None
    if key[1] not in TABLE_WIDTHS or not (key[2] is None or key[2] in TABLE_WIDTHS):
        raise LatencyTableError(f"{source}: {where}: widths w{key[1]}/a{_act_text(key[2])} are outside "
                                f"{TABLE_WIDTHS.start}..{TABLE_WIDTHS.stop - 1} bits")
    return key


def _act_text(act) -> str:
    return "float" if act is None else str(act)


class LatencyTableCost(CostModel):
    """Measured latency per layer and (weight bits, act bits), with the device named.

    A kernel-wise layer runs at the width of its widest kernel.  A missing entry is an
    error (:class:`LatencyTableError`), never a silent zero.

    CSV form (``#`` lines carry metadata)::

        # device: Intel Xeon 8375C, torch 2.14 CPU kernels
        # unit: ms
        layer,weight_bits,act_bits,latency
        conv1,8,8,0.0123
        conv1,32,float,0.0310

    JSON form: ``{"schema": "bitsearch-latency-table", "schema_version": 1,
    "device": "...", "unit": "ms", "entries": [{"layer": ..., "weight_bits": ...,
    "act_bits": ..., "latency": ...}]}``.
    """

    name = "latency"
    per_kernel = "max"

    def __init__(self, entries: Mapping[tuple[str, int, int | None], float], *,
                 device: str, unit: str = "ms", source: str = "", rows: Mapping | None = None):
        if not device:
            raise LatencyTableError(f"{source or 'latency table'}: the device is not named "
                                    "(add a '# device: ...' line or a 'device' field)")
        self.entries = dict(entries)
        self.rows = dict(rows or {})  # key -> where the file gives it ("line 7", "entry 3")
        self.device = device
        self.unit = unit
        self.source = source

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTableCost":
        path = Path(path)
        text = read_text_input(path, "latency", error=lambda message: LatencyTableError(f"{path}: {message}"))
        if path.suffix.lower() == ".json":
            return cls._from_json(text, str(path))
        return cls._from_csv(text, str(path))

    @classmethod
    def _from_csv(cls, text: str, source: str) -> "LatencyTableCost":
        meta, rows = read_latency_csv(text, source, LATENCY_COLUMNS)
        device = meta.get("device") or next((row["device"] for _, row in rows
                                             if isinstance(row.get("device"), str) and row["device"]), "")
        return cls._from_rows(((f"line {number}", row) for number, row in rows), source,
                              device=device, unit=meta.get("unit", "ms"))

    @classmethod
    def _from_json(cls, text: str, source: str) -> "LatencyTableCost":
        data = parse_json(text, lambda message: LatencyTableError(f"{source}: {message}"))
        if not isinstance(data, dict) or data.get("schema") != "bitsearch-latency-table":
            raise LatencyTableError(f"{source}: expected an object with schema 'bitsearch-latency-table'")
        entries = data.get("entries", [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise LatencyTableError(f"{source}: 'entries' must be a list of objects with layer, weight_bits, "
                                    "act_bits and latency")
        for field_name in ("device", "unit"):
            if not isinstance(data.get(field_name, ""), str):
                raise LatencyTableError(f"{source}: '{field_name}' must be a string")
        return cls._from_rows(((f"entry {number}", row) for number, row in enumerate(entries, start=1)), source,
                              device=data.get("device", ""), unit=data.get("unit", "ms"))

    @classmethod
    def _from_rows(cls, rows, source: str, *, device: str, unit: str) -> "LatencyTableCost":
        """The table of ``(where, row)`` pairs: every row parsed and checked (widths, a finite
        latency >= 0), and no two rows for the same layer and widths."""
        entries, wheres = {}, {}
        for where, row in rows:
            key = parse_table_key(row, source, where)
            value = cls._entry_value(row, source, where)
            if key in entries:
                same = "the same latency" if entries[key] == value else f"{entries[key]:g} and {value:g}"
                raise LatencyTableError(f"{source}: {where} repeats layer {key[0]!r} at w{key[1]}/"
                                        f"a{_act_text(key[2])} ({wheres[key]} gives it too; {same}): keep one row")
            entries[key] = value
            wheres[key] = where
        return cls(entries, device=device, unit=unit, source=source, rows=wheres)

    @staticmethod
    def _entry_value(row, source, where) -> float:
        raw = row.get("latency")
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise LatencyTableError(f"{source}: {where} has no latency (fill the latency column)")
        try:
            if isinstance(raw, bool):
                raise TypeError
            value = float(raw)
        except (TypeError, ValueError, OverflowError):
            raise LatencyTableError(f"{source}: {where}: latency {str(raw)[:40]!r} is not a number") from None
        if math.isnan(value) or math.isinf(value):
            raise LatencyTableError(f"{source}: {where}: latency {str(raw)[:40]!r} is not a finite number")
        if value < 0:
            raise LatencyTableError(f"{source}: {where}: latency {value:g} is negative")
        return value

    def layer_cost(self, layer: Layer, weight_bits: int, act_bits: int | None) -> float:
        try:
            return self.entries[(layer.name, int(weight_bits), act_bits)]
        except KeyError:
            act = "float" if act_bits is None else act_bits
            raise LatencyTableError(f"{self.source or 'latency table'}: no entry for layer {layer.name!r} "
                                    f"at weight {weight_bits} / act {act} bits") from None

    def required_keys(self, space: SearchSpace):
        return table_keys(space)

    def validate(self, space: SearchSpace) -> None:
        names = set(space.names)
        for key in self.entries:
            if key[0] not in names:
                where = self.rows.get(key)
                raise LatencyTableError(f"{self.source or 'latency table'}: {where + ': ' if where else ''}layer "
                                        f"{key[0]!r} is not a layer of {space.model_name or 'the model'} "
                                        f"(its layers are {_few(space.names)}); a table for another model?")
        missing = [k for k in self.required_keys(space) if k not in self.entries]
        if missing:
            shown = ", ".join(f"{n} w{w}/a{'float' if a is None else a}" for n, w, a in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise LatencyTableError(f"{self.source or 'latency table'} ({self.device}): {len(missing)} "
                                    f"entries missing: {shown}{more}; measure them or narrow the bit choices")


def _few(names, limit=5) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


class TableCost(CostModel):
    """Explicit costs per layer and weight width (tabular problems).

    ``values[layer][w]`` is the layer's cost with all weights at ``w`` bits; it does not
    depend on activations.  Kernel shares are proportional (``per_kernel = "sum"``).
    Held as one (layers, widths) array (NaN where a layer has no value):
    :meth:`from_arrays` builds it from columns without a dict per layer.
    """

    def __init__(self, name: str, unit: str, values: Mapping[str, Mapping[int, float]]):
        names = list(values)
        widths = sorted({int(w) for table in values.values() for w in table})
        column = {w: j for j, w in enumerate(widths)}
        table = np.full((len(names), len(widths)), np.nan)
        for i, layer in enumerate(names):
            for w, v in values[layer].items():
                table[i, column[int(w)]] = float(v)
        self._init(name, unit, names, widths, table)

    @classmethod
    def from_arrays(cls, name: str, unit: str, names, widths, table) -> "TableCost":
        """``table[i, j]``: the cost of layer ``names[i]`` at ``widths[j]`` bits (NaN: none)."""
        model = cls.__new__(cls)
        model._init(name, unit, list(names), [int(w) for w in widths], np.array(table, dtype=float))
        return model

    def _init(self, name, unit, names, widths, table):
        self.name = name
        self.unit = unit
        self.names = names
        self.widths = tuple(widths)
        self.table = table
        self.table.flags.writeable = False
        self._row = {n: i for i, n in enumerate(names)}
        self._column = {w: j for j, w in enumerate(self.widths)}
        self._rows_for = None  # (space, rows of the space's layers in the table)

    @property
    def values(self) -> dict[str, dict[int, float]]:
        """``layer -> {width: cost}`` (built on demand from the table)."""
        rows = self.table.tolist()
        return {n: {w: v for w, v in zip(self.widths, row) if v == v} for n, row in zip(self.names, rows)}

    def layer_cost(self, layer: Layer, weight_bits: int, act_bits: int | None) -> float:
        i = self._row.get(layer.name)
        j = self._column.get(int(weight_bits))
        value = np.nan if i is None or j is None else float(self.table[i, j])
        if value != value:
            raise ProblemFileError(f"cost {self.name!r} has no value for layer {layer.name!r} "
                                   f"at {weight_bits} bits")
        return value

    def _space_rows(self, space: SearchSpace) -> np.ndarray:
        if self._rows_for is None or self._rows_for[0] is not space:
            rows = np.fromiter((self._row.get(layer.name, -1) for layer in space.layers), dtype=np.int64,
                               count=len(space.layers))
            self._rows_for = (space, rows)
        return self._rows_for[1]

    def _layer_column(self, space: SearchSpace, weight_bits: int, act_bits: int | None) -> np.ndarray:
        rows = self._space_rows(space)
        j = self._column.get(int(weight_bits))
        if j is None:
            return np.full(len(rows), np.nan)
        return np.where(rows >= 0, self.table[np.maximum(rows, 0), j], np.nan)

    def validate(self, space: SearchSpace) -> None:
        pins = space.pins
        missing = []
        for j, w in enumerate(space.weight_bits):
            column = self.layer_column(space, w, None)
            bad = np.flatnonzero(~np.isfinite(column))
            missing += [(int(i), w) for i in bad.tolist() if space.layers[i].name not in pins]
        for name, pin in space.pinned:
            i = space.index_of(name)
            if not np.isfinite(self.layer_column(space, pin.weight_bits, None)[i]):
                missing.append((i, pin.weight_bits))
        if missing:
            missing.sort()
            shown = [f"{space.layers[i].name}@{w}" for i, w in missing[:5]]
            raise ProblemFileError(f"cost {self.name!r} misses {len(missing)} values: {', '.join(shown)}")
