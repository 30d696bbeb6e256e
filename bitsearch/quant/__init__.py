"""Quantization (torch): the one place where tensors are rounded and scaled.

* :mod:`bitsearch.quant.functional` -- plain functions: per-kernel symmetric weight
  quantization with mixed widths, integer weights and scales, calibrated activation
  quantizers, straight-through estimators, the FracBits mix of two widths.
* :mod:`bitsearch.quant.modules` -- ``QuantConv1d``, ``QuantConv2d``, ``QuantLinear``:
  drop-in fake-quantized layers that quantize their input activation and their weights.
* :mod:`bitsearch.quant.apply` -- ``apply_policy`` (a fake-quantized copy of a model),
  ``set_policy`` (change widths in place), ``calibrate``, ``integer_weights``.

Example::

    qmodel = apply_policy(model, policy, calibration=x_calib)   # model is untouched
    logits = qmodel(x)
"""

from .apply import (
    apply_policy, calibrate, integer_weights, model_policy, quant_modules, quantizable_layers, set_policy,
)
from .functional import (
    MAX_BITS, MIN_BITS, ActivationQParams, IntegerWeight, activation_qparams, fake_quantize,
    fake_quantize_activation, fake_quantize_weight, fake_quantize_weight_fractional, quantize_activation_int,
    quantize_weight_int, round_ste, signed_qmax, unsigned_qmax, weight_scales,
)
from .modules import QuantConv1d, QuantConv2d, QuantLinear, QuantMixin, layer_kind, to_quant

__all__ = [
    "apply_policy", "calibrate", "integer_weights", "model_policy", "quant_modules", "quantizable_layers",
    "set_policy", "MAX_BITS", "MIN_BITS", "ActivationQParams", "IntegerWeight", "activation_qparams",
    "fake_quantize", "fake_quantize_activation", "fake_quantize_weight", "fake_quantize_weight_fractional",
    "quantize_activation_int", "quantize_weight_int", "round_ste", "signed_qmax", "unsigned_qmax",
    "weight_scales", "QuantConv1d", "QuantConv2d", "QuantLinear", "QuantMixin", "layer_kind", "to_quant",
]
