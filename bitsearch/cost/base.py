"""The cost-model contract.

A cost model prices a whole layer at uniform widths, ``layer_cost(layer, w, a)``.
From that one number everything else follows:

* a layer-granularity policy costs ``sum_l layer_cost(l, w_l, a_l)``;
* a kernel-granularity policy, for a model that is *separable per kernel*
  (``per_kernel = "sum"``: size, BOPs, energy, bitfusion), costs for each layer
  ``sum_w (count_w / kernels) * layer_cost(l, w, a)``, where ``count_w`` is how many
  kernels have width ``w``: each kernel pays its share at its own width.  A uniform
  kernel-wise policy therefore costs exactly what the layer-wise one costs;
* for a model that is not (``per_kernel = "max"``: measured latency tables), the
  layer runs at the width of its widest kernel.

Searchers plan with the arrays of :func:`bitsearch.cost.unit_tables` (every budget over
the decision units, built on :meth:`CostModel.layer_table`); the reference cost of a
policy is :meth:`CostModel.cost` and nothing else.

Costs are computed on arrays: :meth:`CostModel.layer_column` gives the cost of every layer
of a space at one (w, a) -- through ``layer_cost`` one layer at a time by default, in one
vectorised expression for the built-in models, which give the same floats -- and is kept
with the space; :func:`policy_columns` turns a policy into arrays over the layers once.
The price of a policy is then a gather and a correctly rounded sum (``math.fsum``), linear
in the number of layers and kernels.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .. import formats
from ..errors import PolicyError
from ..policy import Policy
from ..space import FLOAT_BITS, Layer, SearchSpace

FLOAT_ACT = 0  # the code of float activations in activation arrays (real widths are >= 1)


@dataclass(frozen=True)
class PolicyColumns:
    """A policy as arrays over the layers of a space (in the space's layer order).

    ``widths[l]``: the weight width of layer ``l`` when all its kernels share one, else -1
    (a named format: its :func:`bitsearch.formats.code`);
    ``acts[l]``: its activation width (``FLOAT_ACT`` for float); ``mixed``: layer index ->
    int64 array of per-kernel widths, for the layers whose kernels differ.
    """

    widths: np.ndarray
    acts: np.ndarray
    mixed: dict

    def groups(self):
        """The distinct (width, act) pairs of the layers whose kernels share one width, and
        for each of those layers which pair it has (computed once, shared by every model)."""
        cached = self.__dict__.get("_groups")
        if cached is None:
            uniform = self.widths >= 0
            rows = None if uniform.all() else np.flatnonzero(uniform)
            keys = self.widths * 64 + self.acts if rows is None else self.widths[rows] * 64 + self.acts[rows]
            pairs, inverse = np.unique(keys, return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            bounds = np.searchsorted(inverse[order], np.arange(pairs.size + 1))
            members = [order[a:b] if rows is None else rows[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
            cached = [(int(p) // 64, int(p) % 64, m) for p, m in zip(pairs.tolist(), members)]
            object.__setattr__(self, "_groups", cached)
        return cached


def policy_columns(space: SearchSpace, policy: Policy) -> PolicyColumns:
    """The arrays of ``policy`` over ``space``'s layers, computed once per (policy, space)."""
    key = ("columns", id(space))
    cached = policy._cache.get(key)
    if cached is not None and cached[0] is space:
        return cached[1]
    lookup = policy._lookup()
    n = len(space.layers)
    widths = np.empty(n, dtype=np.int64)
    acts = np.empty(n, dtype=np.int64)
    mixed = {}
    missing = []
    for i, layer in enumerate(space.layers):
        bits = lookup.get(layer.name)
        if bits is None:
            missing.append(layer.name)
            continue
        w = bits.weight_bits
        a = bits.act_bits
        acts[i] = FLOAT_ACT if a is None else a
        if w.__class__ is tuple:
            first = w[0]
            if w.count(first) == len(w):
                widths[i] = first
            else:
                widths[i] = -1
                mixed[i] = np.array(w, dtype=np.int64)
        else:
            widths[i] = w if w.__class__ is int else formats.code(w)
    if missing:
        raise PolicyError([f"missing layer {name!r}" for name in missing])
    columns = PolicyColumns(widths, acts, mixed)
    policy._cache[key] = (space, columns)
    return columns


def uniform_columns(space: SearchSpace, weight_bits: int, act_bits: int | None) -> PolicyColumns:
    """The columns of ``Policy.uniform(space, weight_bits, act_bits)``, without the policy."""
    n = len(space.layers)
    widths = np.full(n, formats.code(weight_bits), dtype=np.int64)
    acts = np.full(n, FLOAT_ACT if act_bits is None else int(act_bits), dtype=np.int64)
    for name, pin in space.pinned:
        i = space.index_of(name)
        widths[i] = formats.code(pin.weight_bits)
        acts[i] = FLOAT_ACT if pin.act_bits is None else pin.act_bits
    return PolicyColumns(widths, acts, {})


class CostModel(ABC):
    """Prices policies.  Subclasses set ``name``, ``unit`` and implement ``layer_cost``."""

    name: str = ""
    unit: str = ""
    per_kernel: str = "sum"  # "sum": kernels pay their own share; "max": the widest kernel

    @abstractmethod
    def layer_cost(self, layer: Layer, weight_bits: int, act_bits: int | None) -> float:
        """Cost of ``layer`` with every kernel at ``weight_bits`` and inputs at ``act_bits``
        (None: float)."""

    def validate(self, space: SearchSpace) -> None:
        """Raise if some layer/width of ``space`` cannot be priced (default: all can)."""

    def policy_layer_cost(self, layer: Layer, bits) -> float:
        """Cost of one layer under a :class:`~bitsearch.policy.LayerBits`."""
        if not bits.per_kernel:
            return self.layer_cost(layer, bits.weight_bits, bits.act_bits)
        counts = Counter(bits.weight_bits)
        if len(counts) == 1:
            return self.layer_cost(layer, bits.weight_bits[0], bits.act_bits)
        if self.per_kernel == "max":
            return self.layer_cost(layer, max(counts), bits.act_bits)
        return math.fsum(count / layer.kernels * self.layer_cost(layer, w, bits.act_bits)
                         for w, count in sorted(counts.items()))

    def cost(self, space: SearchSpace, policy: Policy) -> float:
        """The cost of ``policy`` (which must name every layer of ``space``)."""
        return self.columns_cost(space, policy_columns(space, policy))

    def columns_cost(self, space: SearchSpace, columns: PolicyColumns) -> float:
        """The cost of a policy given as :class:`PolicyColumns` (see :meth:`cost`)."""
        return math.fsum(self.columns_layer_costs(space, columns))

    def layer_costs(self, space: SearchSpace, policy: Policy) -> dict[str, float]:
        values = self.columns_layer_costs(space, policy_columns(space, policy))
        return dict(zip(space.names, values.tolist()))

    def columns_layer_costs(self, space: SearchSpace, columns: PolicyColumns) -> np.ndarray:
        """The cost of every layer (float64 array, layer order): equal, float for float, to
        :meth:`policy_layer_cost` of each layer."""
        widths, acts = columns.widths, columns.acts
        out = np.empty(len(widths), dtype=float)
        for w, a, where in columns.groups():
            out[where] = self.layer_column(space, w, None if a == FLOAT_ACT else a)[where]
        if columns.mixed:
            kernels = space.layer_facts()["kernels"]
            for i, kernel_widths in columns.mixed.items():
                a = int(acts[i])
                a = None if a == FLOAT_ACT else a
                counts = np.bincount(kernel_widths)
                used = np.flatnonzero(counts)
                if self.per_kernel == "max":
                    out[i] = self.layer_column(space, int(used[-1]), a)[i]
                else:
                    k = int(kernels[i])
                    out[i] = math.fsum(int(counts[w]) / k * float(self.layer_column(space, int(w), a)[i])
                                       for w in used.tolist())
        bad = ~np.isfinite(out)
        if bad.any():  # a width some layer cannot be priced at: let layer_cost say why
            i = int(np.flatnonzero(bad)[0])
            a = int(acts[i])
            w = int(widths[i]) if widths[i] >= 0 else int(columns.mixed[i].max())
            self.layer_cost(space.layers[i], formats.from_code(w), None if a == FLOAT_ACT else a)
        return out

    # --- arrays over the layers of a space -----------------------------------------------------
    def layer_column(self, space: SearchSpace, weight_bits: int, act_bits: int | None) -> np.ndarray:
        """``layer_cost(layer, weight_bits, act_bits)`` of every layer of ``space`` (float64,
        read-only; NaN where the model cannot price a layer), computed once per space.
        ``weight_bits``: a width, a named format, or a format's :func:`bitsearch.formats.code`
        (named formats are priced one layer at a time through ``layer_cost``)."""
        width = formats.code(weight_bits)
        key = ("cost_column", id(self), width, act_bits)
        cached = space._cache.get(key)
        if cached is not None and cached[0] is self:
            return cached[1]
        choice = formats.from_code(width)
        if isinstance(choice, str):
            column = np.asarray(CostModel._layer_column(self, space, choice, act_bits), dtype=float)
        else:
            column = np.asarray(self._layer_column(space, width, act_bits), dtype=float)
        column.flags.writeable = False
        space._cache[key] = (self, column)
        return column

    def _layer_column(self, space: SearchSpace, weight_bits: int, act_bits: int | None) -> np.ndarray:
        """One layer at a time through ``layer_cost``; models override it with one expression."""
        out = np.empty(len(space.layers))
        for i, layer in enumerate(space.layers):
            try:
                out[i] = self.layer_cost(layer, weight_bits, act_bits)
            except Exception:  # noqa: BLE001 - re-raised by whoever uses the entry
                out[i] = np.nan
        return out

    def layer_table(self, space: SearchSpace, weight_bits=None, act_bits: int | None = None) -> np.ndarray:
        """(layers, widths) array: the cost of every layer at each width of ``weight_bits``
        (default: the space's choices), activations at ``act_bits``."""
        widths = space.weight_bits if weight_bits is None else tuple(weight_bits)
        return np.stack([self.layer_column(space, w, act_bits) for w in widths], axis=1) if widths else \
            np.zeros((len(space.layers), 0))

    def describe(self) -> str:
        return f"{self.name} [{self.unit}]"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} [{self.unit}]>"


def effective_act_bits(act_bits: int | None) -> int:
    return FLOAT_BITS if act_bits is None else int(act_bits)
