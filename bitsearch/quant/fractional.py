"""Fractional bit widths (FracBits): quantizers that are differentiable in the width.

A width ``b`` that lies between two neighbouring choices ``lo < b <= hi`` of a search
space quantizes at both and mixes them::

    Q(x, b) = (1 - f) * Q(x, lo) + f * Q(x, hi),   f = (b - lo) / (hi - lo)

When the choices are consecutive integers (2..8) this is exactly FracBits' mix of
``floor(b)`` and ``ceil(b)``; with gaps (2, 3, 4, 8) the mix runs between the two
neighbouring *choices*, so that every width the relaxation visits is one the space can
take.  ``dQ/db = (Q(x, hi) - Q(x, lo)) / (hi - lo)`` is non-zero between choices; the
rounding inside ``Q`` is straight-through for the input.  At a width equal to a choice
the mix has ``f = 0`` (or 1 at the widest choice) and ``Q`` is the integer quantizer.

The integer quantizers are the project's own (:mod:`bitsearch.quant.functional`):

* weights: symmetric, per kernel (dim 0), restricted range ``[-qmax, qmax]`` with
  ``qmax = 2**(b-1) - 1``, ``scale = max|w_k| / qmax`` (no gradient; an all-zero kernel
  gets scale 1), ``round(w * (1/scale))`` half to even;
* activations: one calibrated range ``[low, high]`` per tensor; unsigned
  ``[0, 2**b - 1]`` when ``low >= 0``, else symmetric signed.

:class:`FractionalQuantModel` runs a float model with fractional (or integer) widths
per layer, without changing the model: quantized weights go in through
``torch.func.functional_call`` and activations are quantized by forward pre-hooks at the
input of each quantized layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping, Sequence

import torch
from torch import nn

from . import functional
from .functional import FLOAT_BITS, per_kernel, weight_scales

__all__ = ["choice_interpolation", "weight_scales", "quantize_weight", "quantize_weight_fractional",
           "quantize_activation", "quantize_activation_fractional", "calibrate_input_ranges",
           "FractionalQuantModel"]

# --- where a fractional width sits among the choices -------------------------------------
def choice_interpolation(bits: torch.Tensor, choices: Sequence[int]):
    """For a float tensor of widths, the neighbouring choices and the mixing weight.

    Returns ``(lo_index, hi_index, frac)``: int64 index tensors into ``choices`` and a
    float tensor ``frac`` in [0, 1] that carries the gradient of ``bits``, such that
    ``bits == (1 - frac) * choices[lo] + frac * choices[hi]`` for ``bits`` clamped to
    ``[min(choices), max(choices)]``.  With one choice, ``frac`` is 0.
    """
    grid = torch.tensor(sorted(int(c) for c in choices), dtype=torch.float32, device=bits.device)
    b = torch.clamp(bits.to(torch.float32), float(grid[0]), float(grid[-1]))
    if grid.numel() == 1:
        zero = torch.zeros_like(b, dtype=torch.int64)
        return zero, zero, b * 0.0
    # hi = first choice strictly above b (the widest choice maps to the last interval)
    hi = torch.searchsorted(grid, b.detach(), right=True)
    hi = torch.clamp(hi, 1, grid.numel() - 1)
    lo = hi - 1
    frac = (b - grid[lo]) / (grid[hi] - grid[lo])
    return lo, hi, frac


# --- weights -----------------------------------------------------------------------------
# (``weight_scales`` is :func:`bitsearch.quant.functional.weight_scales`, imported above)
def _integer_quantizer(weight: torch.Tensor, b: torch.Tensor, scale_group: int | None) -> torch.Tensor:
    if scale_group is None:
        return functional.fake_quantize_weight(weight, b)
    from .formats import fake_quantize_choice

    return fake_quantize_choice(weight, b, scale_group=scale_group)


def quantize_weight(weight: torch.Tensor, bits, scale_group: int | None = None) -> torch.Tensor:
    """Fake-quantized weight at integer widths (an int, or one per kernel), straight-through
    in ``weight``: :func:`bitsearch.quant.functional.fake_quantize_weight` (with
    ``scale_group``: per-group scales, :mod:`bitsearch.quant.formats`).  Widths of 32 and
    more leave the weight in float."""
    b = functional.kernel_bits_tensor(bits, weight)
    if bool((b >= FLOAT_BITS).all()):
        return weight
    if bool((b < 2).any()):
        raise ValueError(f"weight widths must be at least 2 bits, got {sorted(set(b.tolist()))}")
    if bool((b >= FLOAT_BITS).any()):  # some kernels float, others not
        q = _integer_quantizer(weight, torch.clamp(b, max=functional.MAX_BITS), scale_group)
        return torch.where(per_kernel(b >= FLOAT_BITS, weight), weight, q)
    return _integer_quantizer(weight, b, scale_group)


def quantize_weight_fractional(weight: torch.Tensor, bits: torch.Tensor, choices: Sequence[int],
                               scale_group: int | None = None) -> torch.Tensor:
    """Fake-quantized weight at a fractional width: a scalar tensor for the whole layer, or
    one width per kernel.  Differentiable in ``bits`` and (straight-through) in ``weight``."""
    choices = sorted(int(c) for c in choices)
    lo, hi, frac = choice_interpolation(bits, choices)
    grid = torch.tensor(choices, dtype=torch.float32, device=weight.device)
    kernels = weight.shape[0]
    lo_bits = grid[lo].reshape(-1).expand(kernels) if lo.numel() == 1 else grid[lo]
    hi_bits = grid[hi].reshape(-1).expand(kernels) if hi.numel() == 1 else grid[hi]
    q_lo = quantize_weight(weight, lo_bits, scale_group)
    if len(choices) == 1:
        return q_lo
    q_hi = quantize_weight(weight, hi_bits, scale_group)
    f = per_kernel(frac.reshape(-1), weight) if frac.numel() > 1 else frac
    return (1.0 - f) * q_lo + f * q_hi  # exact at f = 0 and f = 1


# --- activations -------------------------------------------------------------------------
def quantize_activation(x: torch.Tensor, bits: int | None, low: float, high: float) -> torch.Tensor:
    """``x`` fake-quantized at an integer width over the calibrated range ``[low, high]``
    (:func:`bitsearch.quant.functional.activation_qparams` and
    :func:`~bitsearch.quant.functional.fake_quantize_activation`).  ``None`` or 32 and
    more: float."""
    if bits is None or int(bits) >= FLOAT_BITS:
        return x
    return functional.fake_quantize_activation(x, functional.activation_qparams(int(bits), low, high))


def quantize_activation_fractional(x: torch.Tensor, bits: torch.Tensor, choices: Sequence[int],
                                   low: float, high: float) -> torch.Tensor:
    """``x`` fake-quantized at a fractional width (a scalar tensor), differentiable in it."""
    choices = sorted(int(c) for c in choices)
    lo, hi, frac = choice_interpolation(bits, choices)
    q_lo = quantize_activation(x, choices[int(lo)], low, high)
    if len(choices) == 1:
        return q_lo
    q_hi = quantize_activation(x, choices[int(hi)], low, high)
    return (1.0 - frac) * q_lo + frac * q_hi


def calibrate_input_ranges(model: nn.Module, names: Sequence[str], x,
                           batch_size: int = 256) -> dict[str, tuple[float, float]]:
    """The (min, max) of the input of each named layer over the calibration inputs ``x``
    (a tensor, split into ``batch_size`` chunks, or an iterable of input batches; float
    model, eval mode, no gradient)."""
    modules = dict(model.named_modules())
    ranges: dict[str, list[float]] = {}
    handles = []

    def observer(name):
        def hook(module, args):
            value = args[0].detach()
            low, high = float(value.min()), float(value.max())
            if name in ranges:
                ranges[name] = [min(ranges[name][0], low), max(ranges[name][1], high)]
            else:
                ranges[name] = [low, high]
        return hook

    for name in names:
        handles.append(modules[name].register_forward_pre_hook(observer(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in (torch.split(x, batch_size) if isinstance(x, torch.Tensor) else x):
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: (low, high) for name, (low, high) in ranges.items()}


class FractionalQuantModel:
    """Runs ``model`` with per-layer weight and activation widths, without changing it.

    ``weight_choices`` / ``act_choices``: the widths the fractional relaxation mixes
    between.  ``ranges``: calibrated input range of each layer (needed for every layer
    whose activations are quantized).  Call with ``weight_bits`` (layer name -> a float
    tensor, scalar or per kernel, or an int / tuple of ints for fixed widths) and
    ``act_bits`` (layer name -> a scalar tensor, an int, or None for float).
    ``scale_group``: per-group weight scales (None: one per kernel).  An embedding's input
    (token indices) is never quantized.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], weight_choices: Sequence[int],
                 act_choices: Sequence[int] | None, ranges: Mapping[str, tuple[float, float]],
                 scale_group: int | None = None):
        self.model = model
        self.scale_group = scale_group
        self.names = tuple(names)
        self.weight_choices = tuple(sorted(int(c) for c in weight_choices))
        self.act_choices = None if act_choices is None else tuple(sorted(int(c) for c in act_choices))
        self.ranges = dict(ranges)
        modules = dict(model.named_modules())
        missing = [n for n in self.names if n not in modules or not hasattr(modules[n], "weight")]
        if missing:
            raise ValueError(f"layers {missing} are not weighted modules of the model")
        self.modules = {n: modules[n] for n in self.names}
        self._act_bits: Mapping[str, object] = {}

    def quantized_weights(self, weight_bits: Mapping[str, object]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names:
            weight = self.modules[name].weight
            bits = weight_bits[name]
            if isinstance(bits, torch.Tensor) and bits.is_floating_point():
                out[f"{name}.weight"] = quantize_weight_fractional(weight, bits, self.weight_choices, self.scale_group)
            else:
                out[f"{name}.weight"] = quantize_weight(weight, bits, self.scale_group)
        return out

    def _act_hook(self, name):
        def hook(module, args):
            bits = self._act_bits.get(name)
            if bits is None:
                return None
            low, high = self.ranges[name]
            x = args[0]
            if isinstance(bits, torch.Tensor) and bits.is_floating_point():
                x = quantize_activation_fractional(x, bits, self.act_choices, low, high)
            else:
                x = quantize_activation(x, int(bits), low, high)
            return (x,) + tuple(args[1:])
        return hook

    @contextmanager
    def _hooks(self, act_bits):
        self._act_bits = act_bits
        handles = [self.modules[n].register_forward_pre_hook(self._act_hook(n)) for n in self.names
                   if not isinstance(self.modules[n], nn.Embedding)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._act_bits = {}

    def __call__(self, x: torch.Tensor, weight_bits: Mapping[str, object],
                 act_bits: Mapping[str, object]) -> torch.Tensor:
        weights = self.quantized_weights(weight_bits)
        with self._hooks(act_bits):
            return torch.func.functional_call(self.model, weights, (x,))
