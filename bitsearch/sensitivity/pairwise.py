"""Pairwise (cross-layer) sensitivities: how much two layers quantized together lose beyond
what each loses alone (no torch here; the measurement is :mod:`bitsearch.sensitivity.probe`).

A separable sensitivity table says how much the loss grows when one unit is quantized at
``b`` bits, and sums those numbers over a policy.  The sum misses interactions: on
``mnist1d-cnn`` a policy with at least as many bits as another in every layer can score
several points less, because ``fc1`` at 2 bits and ``fc2`` at 3 bits hurt less together
than their sum (the quantization errors partly cancel).  CLADO (Deng et al., DAC 2025)
measures the missing second-order part directly, from forward passes::

    dL_ab(p, q) = L(a at p, b at q) - L(a at p) - L(b at q) + L(reference)

for every pair of layers ``a``, ``b`` and widths ``p``, ``q``, every other layer at the
reference (float weights, or the widths of a reference policy).  The predicted loss
change of a policy is then the separable sum plus the sum of its pairs' terms -- exact
for every policy that differs from the reference in at most two layers.

:class:`PairwiseTable` holds the ``dL_ab`` matrices for the pairs that were measured and
how they were chosen.  At kernel granularity a layer's kernels may take several widths;
a pair's term is then the mean-field ``f_a^T dL_ab f_b`` with ``f_a`` the fraction of
layer ``a``'s kernels at each width (equal to the layer-wise term when every kernel of
both layers has one width).  A :class:`~bitsearch.sensitivity.table.SensitivityTable`
carries one as ``pairwise``; its ``predicted_loss`` adds the interactions to the
separable sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import UserInputError

SELECTIONS = ("all", "adjacent", "shared-input", "top-k")


@dataclass(frozen=True)
class PairwiseTable:
    """Interaction terms of pairs of layers.

    ``terms[(a, b)]`` (``a`` before ``b`` in the space's layer order) has shape
    ``(len(weight_bits), len(weight_bits))``: entry ``[p, q]`` is ``dL_ab`` with ``a`` at
    ``weight_bits[p]`` and ``b`` at ``weight_bits[q]``.  Pairs that are not in ``terms``
    are taken not to interact.  ``reference``: the widths every other layer had while
    a pair was measured (``None``: float weights).  ``selected``: why each pair was
    measured (``all``, ``adjacent``, ``shared-input``, ``top-k``).  ``info``: how the
    terms were measured (samples, forward passes, seconds...).
    """

    weight_bits: tuple[int, ...]
    terms: Mapping[tuple[str, str], np.ndarray]
    reference: Mapping[str, int] | None = None
    selected: Mapping[tuple[str, str], str] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        bits = tuple(int(b) for b in self.weight_bits)
        object.__setattr__(self, "weight_bits", bits)
        terms = {}
        for key, value in self.terms.items():
            a, b = key
            matrix = np.asarray(value, dtype=float)
            if matrix.shape != (len(bits), len(bits)):
                raise UserInputError(f"pairwise term of ({a!r}, {b!r}) has shape {matrix.shape}, expected "
                                     f"({len(bits)}, {len(bits)}) (one row and column per width {list(bits)})")
            if not np.all(np.isfinite(matrix)):
                raise UserInputError(f"pairwise term of ({a!r}, {b!r}) holds values that are not finite numbers")
            if a == b:
                raise UserInputError(f"pairwise term of ({a!r}, {b!r}) pairs a layer with itself")
            terms[(str(a), str(b))] = matrix
        object.__setattr__(self, "terms", terms)
        object.__setattr__(self, "selected", {tuple(k): str(v) for k, v in self.selected.items()})
        if self.reference is not None:
            object.__setattr__(self, "reference", {str(k): int(v) for k, v in self.reference.items()})
        object.__setattr__(self, "info", dict(self.info))

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.terms)

    def _columns(self, space) -> list[int]:
        try:
            return [self.weight_bits.index(int(b)) for b in space.weight_bits]
        except ValueError:
            missing = [b for b in space.weight_bits if b not in self.weight_bits]
            raise UserInputError(f"the pairwise table has no terms at widths {missing} "
                                 f"(it covers {list(self.weight_bits)})") from None

    def check_covers(self, space) -> None:
        """Every pair names two layers of ``space`` (in its order) and every width is covered."""
        self._columns(space)
        names = {layer.name: i for i, layer in enumerate(space.layers)}
        problems = []
        for a, b in self.terms:
            unknown = [n for n in (a, b) if n not in names]
            if unknown:
                problems.append(f"pair ({a}, {b}) names layers the space does not have: {unknown}")
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise UserInputError(f"pairwise table does not fit the space: {shown}")

    def matrices(self, space) -> dict[tuple[int, int], np.ndarray]:
        """``(i, j) -> dL`` over ``space.weight_bits`` by layer index, ``i < j``, pinned layers left out."""
        cols = self._columns(space)
        pins = space.pins
        out: dict[tuple[int, int], np.ndarray] = {}
        for (a, b), matrix in self.terms.items():
            if a in pins or b in pins:
                continue
            i, j = space.index_of(a), space.index_of(b)
            m = matrix[np.ix_(cols, cols)]
            if i > j:
                i, j, m = j, i, m.T
            out[(i, j)] = out.get((i, j), 0.0) + m
        return out

    def fractions(self, space, policy) -> dict[int, np.ndarray]:
        """Per free layer, the fraction of its kernels at each of ``space.weight_bits``."""
        index = {b: k for k, b in enumerate(space.weight_bits)}
        out = {}
        for i in space.free_layers():
            layer = space.layers[i]
            f = np.zeros(len(space.weight_bits))
            for b in policy[layer.name].kernel_bits(layer.kernels):
                f[index[int(b)]] += 1.0
            out[i] = f / layer.kernels
        return out

    def interaction(self, space, policy) -> float:
        """The summed pair terms of ``policy`` (mean-field over kernels at kernel granularity)."""
        fractions = self.fractions(space, policy)
        return math.fsum(float(fractions[i] @ m @ fractions[j]) for (i, j), m in self.matrices(space).items())

    # --- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out: dict[str, Any] = {"weight_bits": list(self.weight_bits),
                               "reference": None if self.reference is None else dict(self.reference),
                               "pairs": [{"layers": [a, b], "terms": m.tolist(),
                                          **({"selected": self.selected[(a, b)]} if (a, b) in self.selected else {})}
                                         for (a, b), m in self.terms.items()]}
        if self.info:
            out["info"] = dict(self.info)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "PairwiseTable":
        terms, selected = {}, {}
        for entry in data["pairs"]:
            a, b = entry["layers"]
            terms[(a, b)] = entry["terms"]
            if "selected" in entry:
                selected[(a, b)] = entry["selected"]
        return cls(tuple(data["weight_bits"]), terms, data.get("reference"), selected, data.get("info", {}))


def interaction_of_bits(matrices: Mapping[tuple[int, int], np.ndarray], choice) -> float:
    """The summed pair terms of one weight-choice index per layer (``choice[i]``)."""
    return math.fsum(float(m[choice[i], choice[j]]) for (i, j), m in matrices.items())
