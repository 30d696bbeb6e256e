"""Sensitivity tables: estimated loss increase per decision unit and width (no torch)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ..errors import UserInputError
from ..policy import Policy
from ..space import Layer, SearchSpace
from .pairwise import PairwiseTable


@dataclass(frozen=True)
class SensitivityTable:
    """``weight[layer]`` has shape ``(K, len(weight_bits))``: K = 1 for a per-layer
    estimate, K = kernels for a per-kernel one.  Entry ``[k, j]`` is the estimated loss
    increase when kernel k (or the whole layer) is quantized at ``weight_bits[j]``.
    ``act[layer]`` (optional) has shape ``(len(act_bits),)``.
    ``pairwise`` (optional): cross-layer interaction terms
    (:class:`~bitsearch.sensitivity.pairwise.PairwiseTable`); :meth:`loss` stays the
    separable sum, :meth:`predicted_loss` adds the interactions.
    """

    weight_bits: tuple[int, ...]
    weight: Mapping[str, np.ndarray]
    act_bits: tuple[int, ...] = ()
    act: Mapping[str, np.ndarray] = field(default_factory=dict)
    method: str = ""
    pairwise: "PairwiseTable | None" = None

    def __post_init__(self):
        object.__setattr__(self, "weight_bits", tuple(int(b) for b in self.weight_bits))
        object.__setattr__(self, "act_bits", tuple(int(b) for b in self.act_bits))
        weight = {n: np.atleast_2d(np.asarray(v, dtype=float)) for n, v in self.weight.items()}
        for name, table in weight.items():
            if table.shape[1] != len(self.weight_bits):
                raise UserInputError(f"sensitivity of {name!r} has {table.shape[1]} widths, "
                                     f"expected {len(self.weight_bits)}")
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "act", {n: np.asarray(v, dtype=float) for n, v in self.act.items()})

    def _column(self, bits: int) -> int:
        try:
            return self.weight_bits.index(int(bits))
        except ValueError:
            raise UserInputError(f"the sensitivity table has no estimate at {bits} bits "
                                 f"(it covers {list(self.weight_bits)})") from None

    def check_covers(self, space: SearchSpace) -> None:
        missing_bits = [b for b in space.weight_bits if b not in self.weight_bits]
        pins = space.pins
        missing_layers = [l.name for l in space.layers if l.name not in pins and l.name not in self.weight]
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

    def act_table(self, space: SearchSpace, layer: Layer) -> np.ndarray:
        if not space.act_searched:
            return np.zeros(1)
        return np.array([self.act[layer.name][self.act_bits.index(a)] for a in space.act_bits])

    def loss(self, space: SearchSpace, policy: Policy) -> float:
        """Estimated loss increase of ``policy`` (pinned layers are not counted)."""
        pins = space.pins
        terms = []
        for layer in space.layers:
            if layer.name in pins:
                continue
            bits = policy[layer.name]
            table = self.weight[layer.name]
            kernel_bits = bits.kernel_bits(layer.kernels)
            if table.shape[0] == layer.kernels and layer.kernels > 1:
                cols = [self._column(b) for b in kernel_bits]
                terms.append(float(table[np.arange(layer.kernels), cols].sum()))
            else:
                per_layer = table.sum(axis=0)
                terms.append(math.fsum(per_layer[self._column(b)] / layer.kernels for b in kernel_bits))
            if space.act_searched and layer.name in self.act and bits.act_bits is not None:
                terms.append(float(self.act[layer.name][self.act_bits.index(bits.act_bits)]))
        return math.fsum(terms)

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
