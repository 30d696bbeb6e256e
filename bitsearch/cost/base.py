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

Searchers that need tables (the ILP, the env) read them with :func:`unit_cost_table`;
the reference cost of a policy is :meth:`CostModel.cost` and nothing else.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter

import numpy as np

from ..policy import Policy
from ..space import FLOAT_BITS, Layer, SearchSpace


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
        bits = policy.as_dict()
        return math.fsum(self.policy_layer_cost(layer, bits[layer.name]) for layer in space.layers)

    def layer_costs(self, space: SearchSpace, policy: Policy) -> dict[str, float]:
        bits = policy.as_dict()
        return {layer.name: self.policy_layer_cost(layer, bits[layer.name]) for layer in space.layers}

    def describe(self) -> str:
        return f"{self.name} [{self.unit}]"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} [{self.unit}]>"


def effective_act_bits(act_bits: int | None) -> int:
    return FLOAT_BITS if act_bits is None else int(act_bits)


def unit_cost_table(model: CostModel, space: SearchSpace, layer: Layer,
                    act_bits: int | None) -> np.ndarray:
    """Cost of one decision unit of ``layer`` at each weight choice of the space.

    At layer granularity the unit is the layer; at kernel granularity (for ``sum``
    models) it is one kernel, which pays ``layer_cost / kernels``.  Searchers use these
    tables to plan; the exact cost of their result is always taken from ``model.cost``.
    """
    full = np.array([model.layer_cost(layer, w, act_bits) for w in space.weight_bits], dtype=float)
    if space.granularity == "kernel":
        return full / layer.kernels
    return full
