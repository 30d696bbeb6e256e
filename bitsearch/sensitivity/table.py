"""Sensitivity tables: estimated loss increase per decision unit and width (no torch)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .. import formats
from ..errors import UserInputError
from ..policy import Policy
from ..space import Layer, SearchSpace
from .pairwise import PairwiseTable

_LUT = 127  # the largest width, or named-format code (bitsearch.formats.CODES), the lookup tables hold


class PackedRows(Mapping):
    """``name -> (K, widths) array``, all held in one (rows, widths) array: a million kernels
    are one array, not a million.  Values are read-only views."""

    def __init__(self, names, rows: np.ndarray, counts):
        self.names = list(names)
        self.rows = rows
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.rows.flags.writeable = False

    def __getitem__(self, name):
        i = self.index[name]
        return self.rows[self.offsets[i]:self.offsets[i + 1]]

    def __contains__(self, name):
        return name in self.index

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


@dataclass(frozen=True)
class SensitivityTable:
    """``weight[layer]`` has shape ``(K, len(weight_bits))``: K = 1 for a per-layer
    estimate, K = kernels for a per-kernel one.  Entry ``[k, j]`` is the estimated loss
    increase when kernel k (or the whole layer) is quantized at ``weight_bits[j]``.
    ``act[layer]`` (optional) has shape ``(len(act_bits),)``.

    ``pairwise`` (optional): cross-layer interaction terms
    (:class:`~bitsearch.sensitivity.pairwise.PairwiseTable`); :meth:`loss` stays the
    separable sum, :meth:`predicted_loss` adds the interactions.

    The rows of every layer are held in one array (:class:`PackedRows`); build a large
    table from arrays with :meth:`from_rows`.
    """

    weight_bits: tuple[int, ...]
    weight: Mapping[str, np.ndarray]
    act_bits: tuple[int, ...] = ()
    act: Mapping[str, np.ndarray] = field(default_factory=dict)
    method: str = ""
    pairwise: "PairwiseTable | None" = None

    def __post_init__(self):
        object.__setattr__(self, "weight_bits", tuple(formats.normalize_choice(b) for b in self.weight_bits))
        object.__setattr__(self, "act_bits", tuple(int(b) for b in self.act_bits))
        if not isinstance(self.weight, PackedRows):
            names, arrays = [], []
            for name, v in self.weight.items():
                table = np.atleast_2d(np.asarray(v, dtype=float))
                if table.ndim != 2 or table.shape[1] != len(self.weight_bits):
                    raise UserInputError(f"sensitivity of {name!r} has {table.shape[-1]} widths, "
                                         f"expected {len(self.weight_bits)}")
                names.append(name)
                arrays.append(table)
            rows = np.concatenate(arrays, axis=0) if arrays else np.zeros((0, len(self.weight_bits)))
            packed = PackedRows(names, rows, [a.shape[0] for a in arrays])
            object.__setattr__(self, "weight", packed)
        elif self.weight.rows.shape[1] != len(self.weight_bits):
            raise UserInputError(f"the sensitivity rows have {self.weight.rows.shape[1]} widths, "
                                 f"expected {len(self.weight_bits)}")
        object.__setattr__(self, "act", {n: np.asarray(v, dtype=float) for n, v in self.act.items()})

    @classmethod
    def from_rows(cls, weight_bits, names, rows, counts, *, act_bits=(), act=None, method: str = "",
                  pairwise: "PairwiseTable | None" = None):
        """A table from one (rows, widths) array: layer ``names[i]`` owns ``counts[i]``
        consecutive rows (1: a per-layer estimate; its kernels: one per kernel).
        ``act``: a (layers, act widths) array or None."""
        packed = PackedRows(names, np.array(rows, dtype=float), counts)
        acts = {} if act is None else dict(zip(packed.names, np.asarray(act, dtype=float)))
        return cls(weight_bits, packed, act_bits, acts, method, pairwise)

    def _column(self, bits: int) -> int:
        try:
            return self.weight_bits.index(formats.normalize_choice(bits))
        except ValueError:
            raise UserInputError(f"the sensitivity table has no estimate at {bits} bits "
                                 f"(it covers {list(self.weight_bits)})") from None

    def check_covers(self, space: SearchSpace) -> None:
        missing_bits = [b for b in space.weight_bits if b not in self.weight_bits]
        pins = space.pins
        index = self.weight.index
        missing_layers = [l.name for l in space.layers if l.name not in index and l.name not in pins]
        problems = []
        if missing_bits:
            problems.append(f"no estimates at widths {missing_bits}")
        if missing_layers:
            problems.append(f"no estimates for layers {missing_layers[:5]}")
        if space.act_searched:
            if any(b not in self.act_bits for b in space.act_bits) or any(
                    l.name not in self.act for l in space.layers if l.name not in pins):
                problems.append("activations are searched but the table has no activation estimates")
        if problems:
            raise UserInputError("sensitivity table does not cover the space: " + "; ".join(problems))
        if self.pairwise is not None:
            self.pairwise.check_covers(space)

    def unit_table(self, space: SearchSpace, layer: Layer) -> np.ndarray:
        """Rows for the decision units of ``layer`` over ``space.weight_bits``.

        Layer granularity: one row (a per-kernel estimate is summed).  Kernel
        granularity: one row per kernel (a per-layer estimate is shared equally).
        """
        table = self.weight[layer.name][:, [self._column(b) for b in space.weight_bits]]
        if space.granularity == "layer":
            return table.sum(axis=0, keepdims=True)
        if table.shape[0] == layer.kernels:
            return table
        return np.repeat(table / layer.kernels, layer.kernels, axis=0)

    # --- arrays over a space --------------------------------------------------------------
    def _layout(self, space: SearchSpace):
        """Per layer of ``space``: its first row here and its number of rows (0: not in the
        table), and the columns of the space's widths; kept with the space."""
        def make():
            index = self.weight.index
            where = np.fromiter((index.get(layer.name, -1) for layer in space.layers), dtype=np.int64,
                                count=len(space.layers))
            present = where >= 0
            start = np.where(present, self.weight.offsets[np.maximum(where, 0)], 0)
            count = np.where(present, self.weight.counts[np.maximum(where, 0)], 0)
            lut = np.full(_LUT + 1, -1, dtype=np.int64)  # width (or a named format's code) -> column
            for j, b in enumerate(self.weight_bits):
                if formats.code(b) <= _LUT:
                    lut[formats.code(b)] = j
            return self, start, count, lut
        layout = space.cached(("sensitivity_layout", id(self)), make)
        if layout[0] is not self:
            space._cache.pop(("sensitivity_layout", id(self)), None)
            return self._layout(space)
        return layout[1:]

    def layer_rows(self, space: SearchSpace) -> np.ndarray:
        """(free layers, space widths): the estimate of each free layer (per-kernel rows
        summed), layer order; what ``unit_table`` gives at layer granularity."""
        start, count, lut = self._layout(space)
        free = np.asarray(space.free_layers(), dtype=np.int64)
        cols = np.array([self._column(b) for b in space.weight_bits], dtype=np.int64)
        rows = self.weight.rows
        s, c = start[free], count[free]
        if free.size and np.all(c == 1):
            return rows[s][:, cols]
        out = np.add.reduceat(rows[:, cols], s, axis=0) if free.size else np.zeros((0, cols.size))
        # reduceat sums up to the next start: layers must be contiguous and complete
        if free.size and not np.array_equal(np.diff(np.r_[s, s[-1] + c[-1]]), c):
            out = np.stack([rows[a:a + k][:, cols].sum(axis=0) for a, k in zip(s.tolist(), c.tolist())])
        return out

    def kernel_rows(self, space: SearchSpace) -> np.ndarray:
        """(kernels of the free layers, space widths): one row per kernel, layers in order
        (a per-layer estimate shared equally by its kernels); ``unit_table`` at kernel
        granularity, for all layers at once."""
        start, count, lut = self._layout(space)
        free = np.asarray(space.free_layers(), dtype=np.int64)
        kernels = space.layer_facts()["kernels"][free]
        cols = np.array([self._column(b) for b in space.weight_bits], dtype=np.int64)
        s, c = start[free], count[free]
        shared = c != kernels  # one row for the layer: each kernel takes its share
        rows = self.weight.rows
        per_row = np.repeat(s, c) + _ranges(c)  # the table rows, layer by layer
        out = rows[per_row][:, cols]
        if shared.any():
            divisor = np.repeat(np.where(shared, kernels, 1), c).astype(float)
            out /= divisor[:, None]
            out = np.repeat(out, np.repeat(np.where(shared, kernels, 1), c), axis=0)
        return out

    def act_rows(self, space: SearchSpace) -> np.ndarray:
        """(free layers, space act widths) activation estimates (zeros when not searched)."""
        free = space.free_layers()
        if not space.act_searched:
            return np.zeros((len(free), 1))
        cols = [self.act_bits.index(a) for a in space.act_bits]
        return np.array([self.act[space.layers[i].name][cols] for i in free], dtype=float).reshape(len(free), -1)

    def act_table(self, space: SearchSpace, layer: Layer) -> np.ndarray:
        if not space.act_searched:
            return np.zeros(1)
        return np.array([self.act[layer.name][self.act_bits.index(a)] for a in space.act_bits])

    def loss(self, space: SearchSpace, policy: Policy) -> float:
        """Estimated loss increase of ``policy`` (pinned layers are not counted): the
        correctly rounded sum of one term per kernel (per layer where a layer has one
        estimate and one width)."""
        from ..cost.base import FLOAT_ACT, policy_columns

        columns = policy_columns(space, policy)
        start, count, lut = self._layout(space)
        free = np.asarray(space.free_layers(), dtype=np.int64)
        if free.size and np.any(count[free] == 0):
            missing = [space.layers[i].name for i in free[count[free] == 0][:5].tolist()]
            raise UserInputError(f"the sensitivity table has no estimates for layers {missing}")
        rows = self.weight.rows
        widths = columns.widths
        uniform = free[widths[free] >= 0]
        terms = []
        if uniform.size:
            w = widths[uniform]
            if np.any(w > _LUT) or np.any(lut[np.minimum(w, _LUT)] < 0):
                bad = int(w[(w > _LUT) | (lut[np.minimum(w, _LUT)] < 0)][0])
                self._column(formats.from_code(bad))
            c = count[uniform]
            row_index = np.repeat(start[uniform], c) + _ranges(c)
            terms.append(rows[row_index, np.repeat(lut[w], c)])
        kernels = space.layer_facts()["kernels"]
        for i, kernel_widths in columns.mixed.items():
            if space.is_pinned(space.layers[i].name):
                continue
            if np.any(kernel_widths > _LUT) or np.any(lut[np.minimum(kernel_widths, _LUT)] < 0):
                self._column(int(kernel_widths[(kernel_widths > _LUT) | (lut[np.minimum(kernel_widths, _LUT)] < 0)][0]))
            col = lut[kernel_widths]
            k = int(kernels[i])
            if count[i] == k and k > 1:
                terms.append(rows[start[i] + np.arange(k), col])
            else:
                per_layer = rows[start[i]:start[i] + count[i]].sum(axis=0)
                terms.append(per_layer[col] / k)
        if space.act_searched:
            acts = columns.acts
            a_lut = {a: j for j, a in enumerate(self.act_bits)}
            for i in free.tolist():
                a = int(acts[i])
                name = space.layers[i].name
                if a != FLOAT_ACT and name in self.act:
                    terms.append(self.act[name][a_lut[a]:a_lut[a] + 1])
        return math.fsum(np.concatenate(terms).tolist()) if terms else 0.0

    def predicted_loss(self, space: SearchSpace, policy: Policy) -> float:
        """The separable sum plus the pairwise interactions (when the table has them)."""
        total = self.loss(space, policy)
        if self.pairwise is not None:
            total += self.pairwise.interaction(space, policy)
        return total

    # --- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {"schema": "bitsearch-sensitivity", "schema_version": 1, "method": self.method,
               "weight_bits": list(self.weight_bits), "act_bits": list(self.act_bits),
               "weight": {n: v.tolist() for n, v in self.weight.items()},
               "act": {n: v.tolist() for n, v in self.act.items()}}
        if self.pairwise is not None:
            out["pairwise"] = self.pairwise.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "SensitivityTable":
        pairwise = PairwiseTable.from_dict(data["pairwise"]) if data.get("pairwise") else None
        return cls(tuple(data["weight_bits"]), data["weight"], tuple(data.get("act_bits", ())),
                   data.get("act", {}), data.get("method", ""), pairwise)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _ranges(counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(c) for c in counts])``, vectorised."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)
