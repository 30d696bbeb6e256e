"""Cost models read from tables: measured latency per layer and (w, a), and explicit
per-width costs of tabular problems."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import LatencyTableError, ProblemFileError
from ..space import Layer, SearchSpace
from .base import CostModel

LATENCY_COLUMNS = ("layer", "weight_bits", "act_bits", "latency")


def _act_key(value) -> int | None:
    if value is None:
        return None
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


def read_latency_csv(text: str, source: str, required) -> tuple[dict[str, str], csv.DictReader]:
    """Split a latency CSV into its ``# key: value`` metadata lines (keys lower-cased) and a
    reader over its rows; raises :class:`LatencyTableError` when a ``required`` column is missing."""
    meta, body = {}, []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            key, _, value = line.lstrip("# ").partition(":")
            meta[key.strip().lower()] = value.strip()
        elif line.strip():
            body.append(line)
    reader = csv.DictReader(io.StringIO("\n".join(body)))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise LatencyTableError(f"{source}: missing columns {missing}; expected {','.join(LATENCY_COLUMNS)}")
    return meta, reader


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
                 device: str, unit: str = "ms", source: str = ""):
        if not device:
            raise LatencyTableError(f"{source or 'latency table'}: the device is not named "
                                    "(add a '# device: ...' line or a 'device' field)")
        self.entries = dict(entries)
        self.device = device
        self.unit = unit
        self.source = source

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTableCost":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise LatencyTableError(f"{path}: cannot read latency table ({exc.strerror or exc})") from None
        if path.suffix.lower() == ".json":
            return cls._from_json(text, str(path))
        return cls._from_csv(text, str(path))

    @classmethod
    def _from_csv(cls, text: str, source: str) -> "LatencyTableCost":
        meta, reader = read_latency_csv(text, source, LATENCY_COLUMNS)
        entries = {}
        for number, row in enumerate(reader, start=2):
            entries[cls._entry_key(row, source, number)] = cls._entry_value(row, source, number)
            if row.get("device") and "device" not in meta:
                meta["device"] = row["device"]
        return cls(entries, device=meta.get("device", ""), unit=meta.get("unit", "ms"), source=source)

    @classmethod
    def _from_json(cls, text: str, source: str) -> "LatencyTableCost":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LatencyTableError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or data.get("schema") != "bitsearch-latency-table":
            raise LatencyTableError(f"{source}: expected an object with schema 'bitsearch-latency-table'")
        entries = {}
        for number, row in enumerate(data.get("entries", []), start=1):
            entries[cls._entry_key(row, source, number)] = cls._entry_value(row, source, number)
        return cls(entries, device=data.get("device", ""), unit=data.get("unit", "ms"), source=source)

    @staticmethod
    def _entry_key(row, source, number):
        try:
            return (str(row["layer"]), int(row["weight_bits"]), _act_key(row["act_bits"]))
        except (KeyError, TypeError, ValueError):
            raise LatencyTableError(f"{source}: entry {number} needs layer, integer weight_bits, "
                                    f"act_bits (integer or 'float')") from None

    @staticmethod
    def _entry_value(row, source, number) -> float:
        try:
            value = float(row["latency"])
        except (KeyError, TypeError, ValueError):
            raise LatencyTableError(f"{source}: entry {number}: latency must be a number") from None
        if not value >= 0:
            raise LatencyTableError(f"{source}: entry {number}: latency {value} is negative")
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
        missing = [k for k in self.required_keys(space) if k not in self.entries]
        if missing:
            shown = ", ".join(f"{n} w{w}/a{'float' if a is None else a}" for n, w, a in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise LatencyTableError(f"{self.source or 'latency table'} ({self.device}): {len(missing)} "
                                    f"entries missing: {shown}{more}; measure them or narrow the bit choices")


class TableCost(CostModel):
    """Explicit costs per layer and weight width (tabular problems).

    ``values[layer][w]`` is the layer's cost with all weights at ``w`` bits; it does not
    depend on activations.  Kernel shares are proportional (``per_kernel = "sum"``).
    """

    def __init__(self, name: str, unit: str, values: Mapping[str, Mapping[int, float]]):
        self.name = name
        self.unit = unit
        self.values = {layer: {int(w): float(v) for w, v in table.items()} for layer, table in values.items()}

    def layer_cost(self, layer: Layer, weight_bits: int, act_bits: int | None) -> float:
        try:
            return self.values[layer.name][int(weight_bits)]
        except KeyError:
            raise ProblemFileError(f"cost {self.name!r} has no value for layer {layer.name!r} "
                                   f"at {weight_bits} bits") from None

    def validate(self, space: SearchSpace) -> None:
        pins = space.pins
        missing = []
        for layer in space.layers:
            widths = [pins[layer.name].weight_bits] if layer.name in pins else space.weight_bits
            missing += [f"{layer.name}@{w}" for w in widths if w not in self.values.get(layer.name, {})]
        if missing:
            raise ProblemFileError(f"cost {self.name!r} misses {len(missing)} values: {', '.join(missing[:5])}")
