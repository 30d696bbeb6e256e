"""Counted forward passes: the loss of the fake-quantized model at many width settings on a
fixed set of samples (torch).

:class:`LossProbe` is what the pairwise sensitivities, the ``iqp`` searcher's trust region
and the proxy validation measure with.  It builds one fake-quantized copy of the model
(:func:`bitsearch.quant.apply_policy`) with every free layer at the reference widths
(float weights by default) and activations at the space's fixed width (float when the
space leaves them in float or searches them), calibrates the activation ranges once on
the evaluator's calibration inputs, and then scores *configurations*: a mapping from a
few layers to widths (an int, 32 for float weights, or one width per kernel), every other
layer at the reference.  The loss is the evaluator's own training loss
(``evaluator.loss``) on ``evaluator.sensitivity_batches(samples, ...)``.

**Batched.**  Configurations that change the same layers are scored together: the
samples are repeated once per configuration along the batch dimension, and each changed
layer computes each repeat with its own widths, so one call of the model scores up to
``max_batch`` samples' worth of configurations -- all width pairs of a layer pair share
one pass over the network.  The per-configuration loss comes from handing each repeat's
outputs to ``evaluator.loss`` (which must call the model once, on the batch's inputs, as
every built-in loss does; otherwise the probe scores configurations one by one).

``passes`` counts the distinct configurations scored (each one forward pass over the
samples, however they were batched; a configuration asked for twice in one call is scored
once); ``calls`` counts calls of the model.  Activation ranges stay as
calibrated at the reference: the evaluator calibrates afresh for every policy, which at
8-bit activations changes the measured loss by little (on ``digits-cnn`` the Spearman
correlation between the two over all 256 policies is 1.00).
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserInputError
from ..training import batch_inputs, batch_size_of, call_model

FLOAT_WEIGHTS = 32
DEFAULT_MAX_BATCH = 8192


class _ReplayMismatch(Exception):
    """The evaluator's loss did not call the model once on the batch's inputs."""


class _Replay(nn.Module):
    """Stands in for the model inside ``evaluator.loss``: returns outputs computed before."""

    def __init__(self, output, expected):
        super().__init__()
        self.output = output
        self.expected = expected
        self.used = False

    def forward(self, *args, **kwargs):
        first = args[0] if args else (next(iter(kwargs.values())) if kwargs else None)
        if self.used or first is not self.expected:
            raise _ReplayMismatch()
        self.used = True
        return self.output


class _Chunked(nn.Module):
    """A quantized layer that computes the i-th of ``len(widths)`` equal slices of its
    input's batch at ``widths[i]``."""

    def __init__(self, layer: nn.Module, widths: Sequence, act_bits):
        super().__init__()
        self.layer = layer
        self.widths = list(widths)
        self.act_bits = act_bits

    def forward(self, x, *args, **kwargs):
        outputs = []
        for chunk, width in zip(x.chunk(len(self.widths)), self.widths):
            self.layer.set_bits(width, self.act_bits)
            outputs.append(self.layer(chunk, *args, **kwargs))
        return torch.cat(outputs)


def _repeat(value, times: int):
    if isinstance(value, torch.Tensor):
        return torch.cat([value] * times) if times > 1 else value
    if isinstance(value, tuple):
        return tuple(_repeat(v, times) for v in value)
    if isinstance(value, list):
        return [_repeat(v, times) for v in value]
    if isinstance(value, dict):
        return {k: _repeat(v, times) for k, v in value.items()}
    raise _ReplayMismatch()


def _split(value, times: int, index: int):
    if isinstance(value, torch.Tensor):
        return value.chunk(times)[index]
    if isinstance(value, tuple):
        return tuple(_split(v, times, index) for v in value)
    if isinstance(value, list):
        return [_split(v, times, index) for v in value]
    if isinstance(value, dict):
        return {k: _split(v, times, index) for k, v in value.items()}
    raise _ReplayMismatch()


def _first_tensor(inputs):
    x = inputs
    while isinstance(x, (tuple, list)) and x:
        x = x[0]
    if isinstance(x, dict) and x:
        x = next(iter(x.values()))
    return x


class LossProbe:
    """The loss of ``evaluator``'s model at width configurations, on fixed samples.

    ``evaluator``: a model evaluator (a task's, or :func:`bitsearch.problem_for_model`'s).
    ``space``: names the layers, the fixed activation width and the pins.
    ``samples``/``batch_size``/``seed``: which samples (``sensitivity_batches``).
    ``reference``: layer -> width of the layers a configuration does not name (default:
    float weights).  ``max_batch``: the most samples one batched call of the model holds.
    """

    def __init__(self, evaluator, space, *, samples: int = 512, batch_size: int = 512, seed: int = 0,
                 reference: Mapping[str, object] | None = None, max_batch: int = DEFAULT_MAX_BATCH):
        from ..quant import apply_policy, calibrate

        if samples < 1 or batch_size < 1 or max_batch < 1:
            raise UserInputError(f"samples, batch_size and max_batch must be >= 1 (got {samples}, {batch_size}, "
                                 f"{max_batch})")
        self.space = space
        self.act_bits = None if space.act_searched else space.act_choices[0]
        self.samples = int(samples)
        self.seed = int(seed)
        self.max_batch = int(max_batch)
        self.loss_fn = evaluator.loss
        pins = space.pins
        self.free = [layer.name for layer in space.layers if layer.name not in pins]
        self.reference = {name: FLOAT_WEIGHTS for name in self.free}
        if reference:
            unknown = [n for n in reference if n not in self.reference]
            if unknown:
                raise UserInputError(f"reference widths name layers that are not free layers of the space: {unknown}")
            self.reference.update(reference)
        widths = {name: (self._plain(w), self.act_bits) for name, w in self.reference.items()}
        widths.update({name: (pin.weight_bits, pin.act_bits) for name, pin in pins.items()})
        model = evaluator.model
        model.eval()
        self.qmodel = apply_policy(model, widths).eval()
        if any(a is not None for _, a in widths.values()):
            calibrate(self.qmodel, evaluator.calibration)
        self.batches = evaluator.sensitivity_batches(self.samples, int(batch_size), self.seed)
        self.sizes = [batch_size_of(b) for b in self.batches]
        self.total = float(sum(self.sizes))
        from ..quant import quant_modules

        self.layers = quant_modules(self.qmodel)
        for module in self.layers.values():  # the space's scale granularity (one scale per kernel or per group)
            module.set_bits(module.weight_format or module.weight_bits, module.act_bits, space.scale_group)
        self.passes = 0
        self.calls = 0
        self.seconds = 0.0
        self.batched = True  # False once the evaluator's loss turned out not to allow replay

    @staticmethod
    def _plain(width):
        return tuple(int(b) for b in width) if isinstance(width, (tuple, list)) else int(width)

    def set_reference(self, reference: Mapping[str, object]) -> None:
        """Move the reference (the widths of layers a configuration does not name)."""
        for name, width in reference.items():
            if name not in self.reference:
                raise UserInputError(f"{name!r} is not a free layer of the space")
            self.reference[name] = self._plain(width)
            self.layers[name].set_bits(self.reference[name], self.act_bits)

    # --- scoring --------------------------------------------------------------------------
    def loss(self, config: Mapping[str, object] | None = None) -> float:
        """The mean loss with ``config``'s layers at its widths (the rest at the reference)."""
        return float(self.losses([config or {}])[0])

    def policy_loss(self, policy) -> float:
        """The mean loss of a whole policy of the space."""
        return self.loss({name: policy[name].weight_bits for name in self.free})

    def losses(self, configs: Iterable[Mapping[str, object]], progress=None) -> np.ndarray:
        """The mean loss of each configuration (batched where they change the same layers).
        ``progress(done, total)``: told after each set of configurations that change the
        same layers."""
        configs = [{n: self._plain(w) for n, w in dict(c).items()} for c in configs]
        for config in configs:
            unknown = [n for n in config if n not in self.reference]
            if unknown:
                raise UserInputError(f"configuration names layers that are not free layers of the space: {unknown}")
        started = time.perf_counter()
        # the same setting asked twice (e.g. a layer at its reference width) is scored once
        distinct: dict[tuple, int] = {}
        where = []
        for config in configs:
            key = tuple(sorted((n, w) for n, w in config.items() if w != self.reference[n]))
            where.append(distinct.setdefault(key, len(distinct)))
        keys = list(distinct)
        values = np.empty(len(keys))
        groups: dict[tuple[str, ...], list[int]] = {}
        for k, key in enumerate(keys):
            groups.setdefault(tuple(n for n, _ in key), []).append(k)
        largest = max(self.sizes) if self.sizes else 1
        per_call = max(1, self.max_batch // largest)
        with torch.no_grad():
            for done, (changed, members) in enumerate(groups.items(), start=1):
                for start in range(0, len(members), per_call):
                    chunk = members[start:start + per_call]
                    values[chunk] = self._score([dict(keys[k]) for k in chunk], changed)
                    self.passes += len(chunk)
                if progress is not None:
                    progress(done, len(groups))
        self.seconds += time.perf_counter() - started
        return values[np.array(where, dtype=int)] if where else np.empty(0)

    def _score(self, configs, changed) -> np.ndarray:
        if not changed:
            return np.full(len(configs), self._plain_loss())
        if self.batched and len(configs) > 1:
            try:
                return self._batched(configs, changed)
            except _ReplayMismatch:
                self.batched = False
        values = []
        for config in configs:
            for name in changed:
                self.layers[name].set_bits(config.get(name, self.reference[name]), self.act_bits)
            try:
                values.append(self._plain_loss())
            finally:
                for name in changed:
                    self.layers[name].set_bits(self.reference[name], self.act_bits)
        return np.array(values)

    def _plain_loss(self) -> float:
        total = 0.0
        for batch, n in zip(self.batches, self.sizes):
            total += float(self.loss_fn(self.qmodel, batch)) * n
            self.calls += 1
        return total / self.total

    def _batched(self, configs, changed) -> np.ndarray:
        times = len(configs)
        parents = {name: self._parent(name) for name in changed}
        wrappers = {name: _Chunked(self.layers[name], [c.get(name, self.reference[name]) for c in configs],
                                   self.act_bits) for name in changed}
        totals = np.zeros(times)
        try:
            for name in changed:
                parent, attribute = parents[name]
                parent._modules[attribute] = wrappers[name]
            for batch, n in zip(self.batches, self.sizes):
                inputs = batch_inputs(batch)
                output = call_model(self.qmodel, _repeat(inputs, times))
                self.calls += 1
                expected = _first_tensor(inputs)
                for index in range(times):
                    replay = _Replay(_split(output, times, index), expected)
                    value = self.loss_fn(replay, batch)
                    if not replay.used:
                        raise _ReplayMismatch()
                    totals[index] += float(value) * n
        finally:
            for name in changed:
                parent, attribute = parents[name]
                parent._modules[attribute] = self.layers[name]
                self.layers[name].set_bits(self.reference[name], self.act_bits)
        return totals / self.total

    def _parent(self, name: str):
        layer = self.layers[name]
        registrations = sum(1 for _, m in self.qmodel.named_modules(remove_duplicate=False) if m is layer)
        if registrations != 1:
            raise _ReplayMismatch()  # a shared module: the other registration would see every repeat
        parent_name, _, attribute = name.rpartition(".")
        parent = self.qmodel.get_submodule(parent_name) if parent_name else self.qmodel
        if parent._modules.get(attribute) is not self.layers[name]:
            raise _ReplayMismatch()  # an unusually registered module: score one by one
        return parent, attribute

    def summary(self) -> dict:
        return {"forward_passes": self.passes, "model_calls": self.calls, "samples": int(self.total),
                "seconds": round(self.seconds, 3), "batched": self.batched}
