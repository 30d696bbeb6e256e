"""Decision units, and policies as index vectors over them.

The one description of a space's decisions that every searcher plans with:

* **weight units** -- at layer granularity one per tied group (``space.groups()``), at
  kernel granularity one per output kernel of each free layer, in layer order;
* **activation groups** -- one per tied group, present only when activations are searched.

:class:`Encoding` holds that structure as numpy arrays (``unit_layer``, ``unit_kernel``,
``unit_group``, ``group_units``, ``layer_slices``...; no Python object per unit, so a
million kernels cost a few arrays) and turns index vectors into
:class:`~bitsearch.policy.Policy` objects and back, honouring tied groups and pins:
``weights[u]`` indexes ``space.weight_bits`` for weight unit ``u``, ``acts[g]`` indexes
``space.act_bits`` for activation group ``g``.  The planning cost arrays over these units
come from :func:`bitsearch.cost.unit_tables`.
"""

from __future__ import annotations

import itertools
from functools import cached_property
from typing import Iterator

import numpy as np

from .policy import LayerBits, Policy
from .space import SearchSpace, WeightUnit


class Encoding:
    """The decision units of ``space`` and the index-vector form of its policies.

    Public arrays (all ``int64``; ``n_layers = len(space.layers)``):

    ``free_layers`` ``(n_free,)``: the layers that are searched (not pinned), in order.
    ``free_position`` ``(n_layers,)``: each layer's position in ``free_layers``; -1 when pinned.
    ``unit_layer`` ``(n_units,)``: the (first) layer of each weight unit.
    ``unit_kernel`` ``(n_units,)``: the kernel of a kernel unit in its layer; -1 at layer granularity.
    ``unit_group`` ``(n_units,)``: the activation group (tied group) of each weight unit.
    ``layer_group`` ``(n_layers,)``: the group of each layer; -1 for a pinned layer.
    ``group_units``: per group, the weight units of its layers, in order.
    ``layer_slices``: free layer -> the slice of weight units its widths come from (its
    kernels at kernel granularity; its group's single unit at layer granularity).
    ``unit_layers``: per weight unit, every layer it decides (a tied group at layer granularity).
    """

    def __init__(self, space: SearchSpace):
        self.space = space
        self.granularity = space.granularity
        self.groups = space.groups()
        self.n_weight_choices = len(space.weight_bits)
        self.n_act_choices = len(space.act_bits) if space.act_searched else 1
        n_layers = len(space.layers)
        self.free_layers = np.asarray(space.free_layers(), dtype=np.int64)
        self.free_position = np.full(n_layers, -1, dtype=np.int64)
        self.free_position[self.free_layers] = np.arange(self.free_layers.size)
        layer_group = np.full(n_layers, -1, dtype=np.int64)
        for g, group in enumerate(self.groups):
            layer_group[list(group)] = g
        self.layer_group = layer_group
        if self.granularity == "layer":
            self.unit_layer = np.asarray([group[0] for group in self.groups], dtype=np.int64)
            self.unit_kernel = np.full(len(self.groups), -1, dtype=np.int64)
            self.unit_group = np.arange(len(self.groups), dtype=np.int64)
            self.layer_slices = {int(i): slice(g, g + 1) for g, group in enumerate(self.groups) for i in group}
            self.group_units = [np.array([g], dtype=np.int64) for g in range(len(self.groups))]
        else:
            kernels = np.asarray([space.layers[i].kernels for i in self.free_layers], dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(kernels)])
            self.unit_layer = np.repeat(self.free_layers, kernels)
            self.unit_kernel = np.arange(int(starts[-1]), dtype=np.int64) - np.repeat(starts[:-1], kernels)
            self.unit_group = layer_group[self.unit_layer]
            self.layer_slices = {int(i): slice(int(starts[k]), int(starts[k + 1]))
                                 for k, i in enumerate(self.free_layers)}
            self.group_units = [np.concatenate([np.arange(self.layer_slices[i].start, self.layer_slices[i].stop,
                                                          dtype=np.int64) for i in group])
                                for group in self.groups]
        self.n_weight_units = len(self.unit_layer)
        self.n_act_units = len(self.groups) if space.act_searched else 0
        self._fixed_act = None if space.act_bits is None else space.act_bits[0]

    # --- structure ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.n_weight_units, self.n_act_units

    @cached_property
    def unit_layers(self) -> tuple[tuple[int, ...], ...]:
        """Per weight unit, the layers it decides (one per kernel unit, a group at layer granularity)."""
        if self.granularity == "layer":
            return tuple(self.groups)
        return tuple((int(i),) for i in self.unit_layer)

    @cached_property
    def units(self) -> tuple[WeightUnit, ...]:
        """The units as :class:`~bitsearch.space.WeightUnit` objects (``space.weight_units()``)."""
        return self.space.weight_units()

    # --- policies -------------------------------------------------------------------------
    def every_policy(self) -> Iterator[Policy]:
        """Every policy of the space, the weight choices varying slowest (the exhaustive
        searcher's order); ``space.num_policies()`` of them."""
        for weights in itertools.product(range(self.n_weight_choices), repeat=self.n_weight_units):
            chosen = np.array(weights)
            for acts in itertools.product(range(self.n_act_choices), repeat=self.n_act_units):
                yield self.decode(chosen, np.array(acts))

    def decode(self, weights, acts=None, *, meta: dict | None = None) -> Policy:
        space = self.space
        weights = np.asarray(weights, dtype=np.int64)
        choices = space.weight_bits
        named = any(isinstance(c, str) for c in choices)  # named formats: layer granularity, indexed as a tuple
        widths = None if named else np.asarray(choices, dtype=np.int64)[weights]
        pins = space.pins
        kernel = self.granularity == "kernel"
        bits = []
        for i, layer in enumerate(space.layers):
            if layer.name in pins:
                pin = pins[layer.name]
                w = (pin.weight_bits,) * layer.kernels if kernel else pin.weight_bits
                bits.append((layer.name, LayerBits(w, pin.act_bits)))
                continue
            a = space.act_bits[int(acts[self.layer_group[i]])] if space.act_searched else self._fixed_act
            sl = self.layer_slices[i]
            if named:
                w = choices[int(weights[sl.start])]
            else:
                w = tuple(widths[sl].tolist()) if kernel else int(widths[sl.start])
            bits.append((layer.name, LayerBits(w, a)))
        return Policy(tuple(bits), space.granularity,
                      meta or {"model": {"name": space.model_name, "fingerprint": space.fingerprint}},
                      space.scale_group)

    def encode(self, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
        space = self.space
        weights = np.zeros(self.n_weight_units, dtype=np.int64)
        if self.granularity == "layer":  # a unit takes the width of its group's first layer
            index = {b: k for k, b in enumerate(space.weight_bits)}  # widths and named formats
            for u, i in enumerate(self.unit_layer.tolist()):
                weights[u] = index[policy[space.layers[i].name].kernel_bits(1)[0]]
        else:
            lookup = np.full(max(space.weight_bits) + 1, -1, dtype=np.int64)
            lookup[list(space.weight_bits)] = np.arange(self.n_weight_choices)
            for i, sl in self.layer_slices.items():
                layer = space.layers[i]
                weights[sl] = lookup[np.asarray(policy[layer.name].kernel_bits(layer.kernels), dtype=np.int64)]
        acts = np.zeros(self.n_act_units, dtype=np.int64)
        if space.act_searched:
            a_index = {b: k for k, b in enumerate(space.act_bits)}
            for j, group in enumerate(self.groups):
                acts[j] = a_index[policy[space.layers[group[0]].name].act_bits]
        return weights, acts

    def uniform(self, weight_index: int, act_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        act_index = self.n_act_choices - 1 if act_index is None else act_index
        return (np.full(self.n_weight_units, weight_index, dtype=np.int64),
                np.full(self.n_act_units, act_index, dtype=np.int64))


def sample_within_budget(problem, encoding: Encoding, rng: np.random.Generator, max_rounds: int = 10_000) -> Policy:
    """A random policy that keeps every budget of ``problem`` (the ``random`` searcher's
    draw, and the proxy validation's in large spaces).

    Widths are drawn uniformly per unit; while a budget is exceeded, a random tenth of
    the units that can still be narrowed lose one width step (activations too).  The
    loop ends at the latest at the all-narrowest policy, which keeps every budget when
    the problem is feasible.
    """
    from .errors import InfeasibleBudgetError

    weights = rng.integers(0, encoding.n_weight_choices, encoding.n_weight_units)
    acts = rng.integers(0, encoding.n_act_choices, encoding.n_act_units)
    for _ in range(max_rounds):
        policy = encoding.decode(weights, acts)
        if problem.fits(policy):
            return policy
        reducible = np.concatenate([np.flatnonzero(weights > 0), encoding.n_weight_units + np.flatnonzero(acts > 0)])
        if reducible.size == 0:
            break
        pick = rng.choice(reducible, size=max(1, reducible.size // 10), replace=False)
        w_pick = pick[pick < encoding.n_weight_units]
        a_pick = pick[pick >= encoding.n_weight_units] - encoding.n_weight_units
        weights[w_pick] -= 1
        acts[a_pick] -= 1
    raise InfeasibleBudgetError("random sampling found no policy within the budgets "
                                "(even the narrowest policy is over a budget)")
