"""Policies as index vectors: one width index per weight unit and per activation group.

Searchers that sample, enumerate or learn work on vectors; :class:`Encoding` turns them
into :class:`~bitsearch.policy.Policy` objects and back, honouring tied groups and pins.
"""

from __future__ import annotations

import numpy as np

from .policy import LayerBits, Policy
from .space import SearchSpace


class Encoding:
    """``weights[i]`` indexes ``space.weight_bits`` for weight unit ``i``
    (``space.weight_units()``); ``acts[j]`` indexes ``space.act_bits`` for activation
    group ``j`` (``space.groups()``), present only when activations are searched."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.units = space.weight_units()
        self.groups = space.groups()
        self.n_weight_choices = len(space.weight_bits)
        self.n_act_choices = len(space.act_bits) if space.act_searched else 1
        self.n_weight_units = len(self.units)
        self.n_act_units = len(self.groups) if space.act_searched else 0
        # per free layer: which act group it belongs to; where its kernels sit in `weights`
        self._act_group_of = {}
        for j, group in enumerate(self.groups):
            for i in group:
                self._act_group_of[i] = j
        self._layer_slices = {}
        self._unit_of_layer = {}
        for u, unit in enumerate(self.units):
            for i in unit.layers:
                if unit.kernel is None:
                    self._unit_of_layer[i] = u
                elif i not in self._layer_slices:
                    self._layer_slices[i] = u
        self._fixed_act = None if space.act_bits is None else space.act_bits[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_weight_units, self.n_act_units

    def decode(self, weights, acts=None, *, meta: dict | None = None) -> Policy:
        space = self.space
        weights = np.asarray(weights, dtype=int)
        wb = np.asarray(space.weight_bits)
        pins = space.pins
        bits = []
        for i, layer in enumerate(space.layers):
            if layer.name in pins:
                pin = pins[layer.name]
                w = (pin.weight_bits,) * layer.kernels if space.granularity == "kernel" else pin.weight_bits
                bits.append((layer.name, LayerBits(w, pin.act_bits)))
                continue
            if space.act_searched:
                a = space.act_bits[int(acts[self._act_group_of[i]])]
            else:
                a = self._fixed_act
            if space.granularity == "kernel":
                start = self._layer_slices[i]
                w = tuple(int(b) for b in wb[weights[start:start + layer.kernels]])
            else:
                w = int(wb[weights[self._unit_of_layer[i]]])
            bits.append((layer.name, LayerBits(w, a)))
        return Policy(tuple(bits), space.granularity,
                      meta or {"model": {"name": space.model_name, "fingerprint": space.fingerprint}})

    def encode(self, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
        space = self.space
        index = {b: k for k, b in enumerate(space.weight_bits)}
        weights = np.zeros(self.n_weight_units, dtype=int)
        for u, unit in enumerate(self.units):
            layer = space.layers[unit.layers[0]]
            bits = policy[layer.name].kernel_bits(layer.kernels)
            weights[u] = index[bits[0 if unit.kernel is None else unit.kernel]]
        acts = np.zeros(self.n_act_units, dtype=int)
        if space.act_searched:
            a_index = {b: k for k, b in enumerate(space.act_bits)}
            for j, group in enumerate(self.groups):
                acts[j] = a_index[policy[space.layers[group[0]].name].act_bits]
        return weights, acts

    def uniform(self, weight_index: int, act_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        act_index = self.n_act_choices - 1 if act_index is None else act_index
        return (np.full(self.n_weight_units, weight_index, dtype=int),
                np.full(self.n_act_units, act_index, dtype=int))
