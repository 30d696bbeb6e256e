"""Planning cost arrays over a problem's decision units: one place for every searcher.

:func:`unit_tables` prices, for every budget of a problem, every free layer at every
(weight, activation) choice with ``CostModel.layer_cost``, and spreads that over the
decision units of :class:`~bitsearch.encoding.Encoding`:

* ``layer_costs[b, k, w, a]``: free layer ``encoding.free_layers[k]`` with every kernel at
  weight choice ``w`` and inputs at activation choice ``a`` (``space.act_choices``);
* ``costs[b, a, u, w]``: weight unit ``u``'s planning cost -- the sum over its layers at
  layer granularity (a tied group), a kernel's share ``layer_cost / kernels`` at kernel
  granularity.  ``costs[b, a]`` is one contiguous ``(units, widths)`` array;
* ``pinned[b]``: the pinned layers' cost, and ``limits[b]`` the budget, so
  ``free_limits = limits - pinned`` is what the units may spend;
* ``separable[b]``: whether ``pinned + sum_u costs[b, a_u, u, w_u]`` is the reference cost
  (always at layer granularity; at kernel granularity for ``per_kernel = "sum"`` models; a
  measured latency table charges a layer its widest kernel, so its unit costs only plan).

The layer costs come from :meth:`CostModel.layer_table` (every layer at once, kept with
the space: one vectorised expression for the built-in models) and numpy spreads them over
the units, so 27,000 layers or a million kernels cost a gather, not a loop.  The exact cost
of a result is still ``CostModel.cost`` and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..encoding import Encoding

__all__ = ["UnitTables", "unit_tables"]


@dataclass(frozen=True, eq=False)
class UnitTables:
    """See the module docstring; ``encoding`` is the structure the unit axis follows."""

    encoding: Encoding
    budgets: tuple
    per_kernel: tuple[str, ...]   # per budget: its cost model's per_kernel
    layer_costs: np.ndarray       # (n_budgets, n_free_layers, n_weight, n_act)
    costs: np.ndarray             # (n_budgets, n_act, n_units, n_weight)
    pinned: np.ndarray            # (n_budgets,)
    limits: np.ndarray            # (n_budgets,)
    separable: np.ndarray         # (n_budgets,) bool

    @property
    def n_budgets(self) -> int:
        return len(self.budgets)

    @property
    def free_limits(self) -> np.ndarray:
        """What the free units may spend under each budget (the limit less the pinned cost)."""
        return self.limits - self.pinned

    def layer_table(self, b: int, layer: int) -> np.ndarray:
        """``(n_weight, n_act)`` cost of layer index ``layer`` (a free layer) under budget ``b``."""
        return self.layer_costs[b, self.encoding.free_position[layer]]

    def unit_choice_costs(self, b: int) -> np.ndarray:
        """``(n_units, n_weight * n_act)``: each unit's cost at every (weight, activation)
        pair, weight-major (the ILP's choices at layer granularity)."""
        n_act, n_units, n_weight = self.costs.shape[1:]
        return self.costs[b].transpose(1, 2, 0).reshape(n_units, n_weight * n_act)

    def planned(self, weights, acts=None) -> np.ndarray:
        """``(n_budgets,)`` planning cost of index vectors (``acts`` per group, when searched)."""
        weights = np.asarray(weights, dtype=np.int64)
        enc = self.encoding
        a = np.zeros(enc.n_weight_units, dtype=np.int64) if acts is None or not enc.n_act_units \
            else np.asarray(acts, dtype=np.int64)[enc.unit_group]
        units = np.arange(enc.n_weight_units)
        return self.pinned + self.costs[:, a, units, weights].sum(axis=1)


def _raise_unpriced(space, models, layer_costs, free, acts) -> None:
    """A layer a model cannot price at some choice (a missing latency entry): its own error."""
    bad = np.argwhere(~np.isfinite(layer_costs))
    if bad.size:
        b, k, w, a = (int(v) for v in bad[0])
        models[b].layer_cost(space.layers[free[k]], space.weight_bits[w], acts[a])


def unit_tables(problem, encoding: Encoding | None = None) -> UnitTables:
    """The planning arrays of ``problem``'s budgets (see the module docstring)."""
    space = problem.space
    encoding = Encoding(space) if encoding is None else encoding
    budgets = tuple(problem.budgets)
    models = [problem.costs[b.cost] for b in budgets]
    acts = space.act_choices
    n_weight, n_act = len(space.weight_bits), len(acts)
    free = encoding.free_layers.tolist()
    layer_costs = np.zeros((len(budgets), len(free), n_weight, n_act))
    free_index = encoding.free_layers
    for b, model in enumerate(models):
        for j, a in enumerate(acts):
            layer_costs[b, :, :, j] = model.layer_table(space, space.weight_bits, a)[free_index]
    _raise_unpriced(space, models, layer_costs, free, acts)
    position = encoding.free_position
    costs = np.zeros((len(budgets), n_act, encoding.n_weight_units, n_weight))
    if encoding.granularity == "layer":
        if all(len(group) == 1 for group in encoding.groups):  # no ties: one layer per unit
            owner = np.asarray([position[group[0]] for group in encoding.groups], dtype=np.int64)
            costs[:] = layer_costs[:, owner].transpose(0, 3, 1, 2)
        else:
            for u, group in enumerate(encoding.groups):  # summed in group order: tied layers share a unit
                for i in group:
                    costs[:, :, u, :] += layer_costs[:, position[i]].transpose(0, 2, 1)
    elif encoding.n_weight_units:
        kernels = np.asarray([space.layers[i].kernels for i in free], dtype=float)
        share = layer_costs / kernels[None, :, None, None]                  # (nb, n_free, nw, na)
        owner = np.repeat(np.arange(len(free)), kernels.astype(np.int64))  # free position of each unit
        costs[:] = share.transpose(0, 3, 1, 2)[:, :, owner, :]
    pins = space.pins
    pinned = np.array([math.fsum(model.layer_cost(layer, pins[layer.name].weight_bits, pins[layer.name].act_bits)
                                 for layer in space.layers if layer.name in pins) for model in models], dtype=float)
    limits = np.array([b.limit for b in budgets], dtype=float)
    per_kernel = tuple(m.per_kernel for m in models)
    separable = np.array([encoding.granularity == "layer" or p == "sum" for p in per_kernel], dtype=bool)
    return UnitTables(encoding, budgets, per_kernel, layer_costs, np.ascontiguousarray(costs), pinned, limits,
                      separable)
