"""The built-in analytic cost models: size, effective bits, BOPs, energy and Bit Fusion latency."""

from __future__ import annotations

import math

import numpy as np

from .. import formats
from ..errors import CostModelError
from ..space import FLOAT_BITS, Layer, SearchSpace
from .base import CostModel, effective_act_bits

# Each model's _layer_column is its layer_cost over every layer at once, written with the
# same operations in the same order on int64 / float64 arrays, so that it gives the same
# floats (tests/test_costs.py checks it); integer products stay exact in int64.


def _check_scale_group(model, space: SearchSpace) -> None:
    if space.scale_group != model.scale_group:
        raise CostModelError(f"the {model.name} cost counts {_scales(model.scale_group)} but the space has "
                             f"{_scales(space.scale_group)}: build it with scale_group={space.scale_group!r}")


def _scales(group) -> str:
    return "one scale per kernel" if group is None else f"one scale per {group} weights"


class SizeCost(CostModel):
    """Model size in bits: every weight at its width (a named format at its element bits),
    its scales -- one ``scale_bits`` scale per quantized kernel, or with ``scale_group=G``
    one fp16 scale per ``G`` weights of each kernel, or a named format's own block scales
    (:func:`bitsearch.formats.stored_bits`) -- and the bias in 32-bit float.

    A float layer (``weight_bits >= 32``) has no scales.
    """

    name = "size"
    unit = "bit"

    def __init__(self, scale_bits: int = formats.KERNEL_SCALE_BITS, scale_group: int | None = None):
        self.scale_bits = int(scale_bits)
        self.scale_group = formats.check_scale_group(scale_group)

    def validate(self, space: SearchSpace) -> None:
        _check_scale_group(self, space)

    def layer_cost(self, layer: Layer, weight_bits, act_bits: int | None) -> float:
        return float(weight_stored_bits(layer, weight_bits, self.scale_group, self.scale_bits)
                     + layer.bias_params * FLOAT_BITS)

    def _layer_column(self, space, weight_bits, act_bits):
        if self.scale_group is not None:  # group counts per layer: one layer at a time
            return CostModel._layer_column(self, space, weight_bits, act_bits)
        f = space.layer_facts()
        scales = 0 if weight_bits >= FLOAT_BITS else f["kernels"] * self.scale_bits
        return (f["params"] * weight_bits + scales + f["bias_params"] * FLOAT_BITS).astype(float)


def weight_stored_bits(layer: Layer, weight_bits, scale_group: int | None,
                       kernel_scale_bits: int = formats.KERNEL_SCALE_BITS) -> int:
    """Bits of ``layer``'s weights at ``weight_bits``, scales included (no bias)."""
    if formats.is_float(weight_bits):
        return layer.params * FLOAT_BITS
    if scale_group is None and not formats.is_named(weight_bits):
        return layer.params * int(weight_bits) + layer.kernels * kernel_scale_bits
    return formats.stored_bits(weight_bits, kernels=layer.kernels, fan_in=layer.fan_in, scale_group=scale_group)


class EffectiveBitsCost(CostModel):
    """Effective bits: the average stored bits per quantized weight, scales included, as
    NVIDIA ModelOpt states ``effective_bits`` (``bits=4.5``).

    ``sum over layers of stored weight bits (scales included) / quantized weights``: the
    layers counted are those of the space, except layers pinned to float (which are not
    quantized); biases are not weights.  A 4-bit policy with one fp16 scale per 128
    weights is 4.125 bits; nvfp4 4.5 (+32 bits per tensor).  Separable (a sum over layers
    over a fixed count), so every searcher keeps it exactly.
    """

    name = "bits"
    unit = "bit/weight"

    def __init__(self, space: SearchSpace):
        self.scale_group = space.scale_group
        pins = space.pins
        self.excluded = frozenset(n for n, p in pins.items() if formats.is_float(p.weight_bits))
        self.weights = sum(layer.params for layer in space.layers if layer.name not in self.excluded)
        self.layer_names = frozenset(space.names)

    def validate(self, space: SearchSpace) -> None:
        _check_scale_group(self, space)
        if frozenset(space.names) != self.layer_names:
            raise CostModelError("this bits cost was built for another space (other layers)")

    def layer_cost(self, layer: Layer, weight_bits, act_bits: int | None) -> float:
        if layer.name in self.excluded or self.weights == 0:  # nothing quantized: 0 bits per quantized weight
            return 0.0
        return weight_stored_bits(layer, weight_bits, self.scale_group) / self.weights


class BopsCost(CostModel):
    """Bit operations per sample: MACs x weight bits x activation bits (float: 32)."""

    name = "bops"
    unit = "BOPs"

    def layer_cost(self, layer: Layer, weight_bits, act_bits: int | None) -> float:
        return float(layer.macs * formats.element_bits(weight_bits) * effective_act_bits(act_bits))

    def _layer_column(self, space, weight_bits, act_bits):
        return (space.layer_facts()["macs"] * weight_bits * effective_act_bits(act_bits)).astype(float)


# 45 nm energies per operation, pJ (Horowitz, "Computing's energy problem", ISSCC 2014).
INT_ADD_PJ = {8: 0.03, 16: 0.05, 32: 0.1}
INT_MULT_PJ = {8: 0.2, 32: 3.1}
FP32_ADD_PJ = 0.9
FP32_MULT_PJ = 3.7
SRAM_READ_32BIT_PJ = 5.0     # 32-bit read from an 8 KB SRAM
DRAM_READ_32BIT_PJ = 640.0   # 32-bit read from DRAM
# An integer multiplier's energy grows with the product of its operand widths.  We fit
# e(w, a) = 0.2 pJ * (w * a / 64) ** p through both table points (8x8 and 32x32 bits).
_MULT_EXPONENT = math.log(INT_MULT_PJ[32] / INT_MULT_PJ[8]) / math.log(32 * 32 / 64)


def int_mult_energy(weight_bits: int, act_bits: int) -> float:
    return INT_MULT_PJ[8] * (weight_bits * act_bits / 64.0) ** _MULT_EXPONENT


def int_add_energy(bits: int) -> float:
    """Adder energy, linear between the table points 8/16/32 bits (proportional below 8)."""
    bits = min(max(bits, 1), 32)
    if bits <= 8:
        return INT_ADD_PJ[8] * bits / 8
    lo, hi = (8, 16) if bits <= 16 else (16, 32)
    t = (bits - lo) / (hi - lo)
    return INT_ADD_PJ[lo] + t * (INT_ADD_PJ[hi] - INT_ADD_PJ[lo])


class EnergyCost(CostModel):
    """Energy per sample in pJ on a 45 nm process (Horowitz, ISSCC 2014).

    Per layer: every MAC pays one multiplication at (w, a) bits and one accumulation
    at the accumulator width ``min(32, w + a + ceil(log2(fan-in)))``; every MAC reads
    its two operands (w + a bits) from an 8 KB SRAM, charged per 32 bits; every weight
    is read once from DRAM (w bits, charged per 32 bits).  With float activations the
    MAC is a fp32 multiply-add on dequantized weights.
    """

    name = "energy"
    unit = "pJ"

    def layer_cost(self, layer: Layer, weight_bits, act_bits: int | None) -> float:
        weight_bits = formats.element_bits(weight_bits)
        fan_in = max(1, layer.params // max(1, layer.kernels))
        if act_bits is None:
            compute = FP32_MULT_PJ + FP32_ADD_PJ
            operand_bits = weight_bits + FLOAT_BITS
        else:
            acc_bits = min(32, weight_bits + act_bits + math.ceil(math.log2(fan_in)))
            compute = int_mult_energy(weight_bits, act_bits) + int_add_energy(acc_bits)
            operand_bits = weight_bits + act_bits
        sram = layer.macs * operand_bits / 32.0 * SRAM_READ_32BIT_PJ
        dram = layer.params * weight_bits / 32.0 * DRAM_READ_32BIT_PJ
        return layer.macs * compute + sram + dram

    def _layer_column(self, space, weight_bits, act_bits):
        f = space.layer_facts()
        macs, params = f["macs"], f["params"]
        if act_bits is None:
            compute = np.float64(FP32_MULT_PJ + FP32_ADD_PJ)
            operand_bits = weight_bits + FLOAT_BITS
        else:
            fan_in = np.maximum(1, params // np.maximum(1, f["kernels"]))
            values, inverse = np.unique(fan_in, return_inverse=True)
            log_ceil = np.array([math.ceil(math.log2(v)) for v in values.tolist()], dtype=np.int64)[inverse]
            acc_bits = np.minimum(32, weight_bits + act_bits + log_ceil)
            adds = np.array([int_add_energy(b) for b in range(33)])
            compute = int_mult_energy(weight_bits, act_bits) + adds[acc_bits]
            operand_bits = weight_bits + act_bits
        sram = macs * operand_bits / 32.0 * SRAM_READ_32BIT_PJ
        dram = params * weight_bits / 32.0 * DRAM_READ_32BIT_PJ
        return macs * compute + sram + dram


class BitfusionCost(CostModel):
    """Latency in ms on a Bit Fusion style bit-flexible accelerator.

    Each fusion unit does ``16 / (ceil(w/2) * ceil(a/2))`` MACs per cycle (2-bit
    BitBricks); defaults follow the Bit Fusion paper: 512 fusion units at 500 MHz.
    Widths above 16 are charged as 16 (the widest the array composes), float
    activations included.
    """

    name = "bitfusion"
    unit = "ms"

    def __init__(self, fusion_units: int = 512, clock_hz: float = 500e6):
        self.fusion_units = int(fusion_units)
        self.clock_hz = float(clock_hz)

    def layer_cost(self, layer: Layer, weight_bits, act_bits: int | None) -> float:
        w = min(formats.element_bits(weight_bits), 16)
        a = min(effective_act_bits(act_bits), 16)
        cycles = layer.macs * math.ceil(w / 2) * math.ceil(a / 2) / (16.0 * self.fusion_units)
        return cycles / self.clock_hz * 1e3

    def _layer_column(self, space, weight_bits, act_bits):
        w = min(weight_bits, 16)
        a = min(effective_act_bits(act_bits), 16)
        cycles = space.layer_facts()["macs"] * math.ceil(w / 2) * math.ceil(a / 2) / (16.0 * self.fusion_units)
        return cycles / self.clock_hz * 1e3
