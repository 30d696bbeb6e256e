"""The deployed form of a quantized model: fixed quantizers, integer weights, a forward
that ``torch.export`` (and so ``torch.onnx.export``) can trace.

:func:`freeze` turns a calibrated fake-quantized model (``apply_policy`` + calibration, or
the LSQ/PACT model of ``finetune``) into a copy whose quantized layers are
:class:`FrozenConv1d`, :class:`FrozenConv2d` and :class:`FrozenLinear`.  Everything that
depends on data is decided here, before export: the activation quantizer of each layer
input (its scale and integer range, from the calibrated range or the learned PACT clip)
becomes Python constants, and the weights become integers with per-kernel scales
(:func:`bitsearch.quant.functional.quantize_weight_int`, or the learned LSQ steps).  The
forward then has no branch on a tensor's value:

* input: ``quantize_per_tensor`` to the smallest integer container of its range (uint8 /
  int8 up to 8 bits, uint16 / int16 up to 16), a clamp to the layer's own range when it is
  narrower than the container's (a 4-bit unsigned input is clamped to ``[0, 15]``; a signed
  8-bit input to ``[-127, 127]``, the symmetric restricted range), ``dequantize_per_tensor``;
* weight: ``dequantize_per_channel`` of the integer weights (int8 up to 8 bits, int16 up to
  16; a kernel narrower than its layer keeps its own scale and range, never widened), or
  the float weight of a layer kept in float;
* the layer's own op (convolution or linear) in float32, bias in float (a fine-tuned layer's
  bias already on its int32 accumulator grid, see :mod:`bitsearch.quant.learnable`).

These are the ``quantized_decomposed`` ops that torch's ONNX exporter translates into
``QuantizeLinear`` / ``Clip`` / ``DequantizeLinear``.  In torch the frozen model computes
what the fake-quantized model computes: ``quantize_per_tensor`` multiplies by ``1 / scale``
(the same float32 reciprocal as :func:`~bitsearch.quant.functional.fake_quantize`) and rounds
half to even, and the dequantized weight is ``values * scales``, the fake-quantized weight
bit for bit.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QuantizationError
from .functional import (
    ActivationQParams, IntegerWeight, activation_qparams, bias_on_accumulator_grid, integer_container, replace_modules,
    signed_qmax,
)
from .modules import QuantMixin, _build_on_meta, describe_weight_bits


def _quantized_decomposed():
    """``torch.ops.quantized_decomposed`` (registered by importing torch's module that
    defines it; quiet about torch.ao's deprecation)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization.fx._decomposed  # noqa: F401
    return torch.ops.quantized_decomposed


class FrozenQuantMixin:
    """State and forward shared by the frozen layers (see the module docstring).

    Buffers: ``weight_int`` (the integers), ``weight_scale`` (float32, one per kernel) and
    ``weight_bits`` (one width per kernel); or the float ``weight`` of a layer kept in float.
    Constants: ``act`` (an :class:`ActivationQParams`, or None for a float input)."""

    def _init_frozen(self, integer: IntegerWeight | None, act: ActivationQParams | None, layer_name: str) -> None:
        self.layer_name = layer_name
        self.act = act
        if integer is None:
            self.weight_qmax = None
            self.weight_dtype = None
        else:
            self.weight = None  # the integers replace it
            qmax = int(signed_qmax(int(integer.bits.max())))
            self.weight_qmax = qmax
            self.weight_dtype = integer_container(-qmax, qmax)
            self.register_buffer("weight_int", integer.values.to(self.weight_dtype).clone())
            self.register_buffer("weight_scale", integer.scales.to(torch.float32).clone())
            self.register_buffer("weight_bits", integer.bits.to(torch.int64).clone())
        if act is None:
            self.act_dtype = None
        else:
            self.act_dtype = integer_container(act.qmin, act.qmax)

    @property
    def weight_is_float(self) -> bool:
        return self.weight_qmax is None

    @property
    def act_bits(self) -> int | None:
        """The activation width of the layer's input (None: float)."""
        if self.act is None:
            return None
        span = self.act.qmax if self.act.qmin == 0 else 2 * self.act.qmax + 1
        return int(span).bit_length()

    def dequantized_input(self, x: torch.Tensor) -> torch.Tensor:
        act = self.act
        if act is None:
            return x
        qd = _quantized_decomposed()
        info = torch.iinfo(self.act_dtype)
        q = qd.quantize_per_tensor(x, act.scale, 0, act.qmin, act.qmax, self.act_dtype)
        if (act.qmin, act.qmax) != (info.min, info.max):
            q = torch.clamp(q, act.qmin, act.qmax)
        return qd.dequantize_per_tensor(q, act.scale, 0, act.qmin, act.qmax, self.act_dtype)

    def dequantized_weight(self) -> torch.Tensor:
        if self.weight_qmax is None:
            return self.weight
        qd = _quantized_decomposed()
        return qd.dequantize_per_channel(self.weight_int, self.weight_scale, None, 0, -self.weight_qmax,
                                         self.weight_qmax, self.weight_dtype)

    def integer_weight(self) -> IntegerWeight:
        if self.weight_qmax is None:
            raise QuantizationError(f"layer {self.layer_name!r} keeps float weights: it has no integer form")
        return IntegerWeight(self.weight_int, self.weight_scale, self.weight_bits)

    @classmethod
    def build(cls, module, integer: IntegerWeight | None, act: ActivationQParams | None, layer_name: str = ""):
        """The frozen twin of ``module`` (its parameters adopted, not copied)."""
        layer = _build_on_meta(cls, module)
        layer._init_frozen(integer, act, layer_name)
        return layer

    def extra_repr(self):
        return super().extra_repr() + ", " + self._extra_frozen_repr()

    def _extra_frozen_repr(self) -> str:
        w = "float" if self.weight_qmax is None else describe_weight_bits(self.weight_bits)
        a = "float" if self.act is None else f"{self.act_bits} [{self.act.qmin}, {self.act.qmax}]"
        return f"weight_bits={w}, act_bits={a}, frozen"


class _FrozenConvMixin(FrozenQuantMixin):
    def forward(self, x):
        return self._conv_forward(self.dequantized_input(x), self.dequantized_weight(), self.bias)


class FrozenConv1d(_FrozenConvMixin, nn.Conv1d):
    """A ``Conv1d`` with fixed integer weights and a fixed input quantizer."""


class FrozenConv2d(_FrozenConvMixin, nn.Conv2d):
    """A ``Conv2d`` with fixed integer weights and a fixed input quantizer."""


class FrozenLinear(FrozenQuantMixin, nn.Linear):
    """A ``Linear`` with fixed integer weights and a fixed input quantizer."""

    def forward(self, x):
        return F.linear(self.dequantized_input(x), self.dequantized_weight(), self.bias)


FROZEN_CLASSES = ((nn.Conv1d, FrozenConv1d), (nn.Conv2d, FrozenConv2d), (nn.Linear, FrozenLinear))


def _quantizers_of(name: str, module) -> tuple[IntegerWeight | None, ActivationQParams | None]:
    """The weight integers and the input quantizer of a fake-quantized or learnable layer."""
    from .learnable import LearnableQuantMixin

    integer = None if module.weight_is_float else module.integer_weight()
    if isinstance(module, QuantMixin):
        if module.act_bits is None:
            return integer, None
        if not module.calibrated:
            raise QuantizationError(f"layer {name!r} quantizes its input at {module.act_bits} bits but was never "
                                    "calibrated: calibrate before freezing (apply_policy(..., calibration=...))")
        return integer, activation_qparams(module.act_bits, float(module.act_min), float(module.act_max))
    if isinstance(module, LearnableQuantMixin):
        if module.act_bits is None:
            return integer, None
        qmin, qmax = module.act_range()
        alpha = torch.clamp(module.act_clip.detach(), min=torch.finfo(torch.float32).tiny)
        return integer, ActivationQParams(float(alpha / qmax), qmin, qmax)
    raise TypeError(f"layer {name!r}: a {type(module).__name__} is not a quantized layer")


def frozen_modules(model: nn.Module) -> dict[str, FrozenQuantMixin]:
    return {name: m for name, m in model.named_modules() if isinstance(m, FrozenQuantMixin)}


def round_bias_to_accumulator(layer: FrozenQuantMixin) -> None:
    """Round ``layer``'s float bias, in place, to the int32 grid of its accumulator (one step
    ``s_x * s_w[k]`` per kernel): what onnxruntime does to a float bias when it fuses
    ``DequantizeLinear -> Conv/Gemm`` into an integer kernel (its ``WeightBiasQuantization``
    step).  Only for a layer with integer weights and input; with weights of few bits the
    step is coarse, so this moves the outputs visibly."""
    if layer.bias is None or layer.weight_qmax is None or layer.act is None:
        return
    with torch.no_grad():
        step = torch.tensor(layer.act.scale, dtype=torch.float32) * layer.weight_scale
        layer.bias.copy_(bias_on_accumulator_grid(layer.bias, step))


def freeze(qmodel: nn.Module, *, integer_bias: bool = False) -> nn.Module:
    """A copy of ``qmodel`` in eval mode whose quantized layers (fake-quantized, or LSQ/PACT
    from fine-tuning) are frozen: integer weights, fixed input quantizers (see the module
    docstring).  ``qmodel`` is untouched.  ``integer_bias``: round every bias as
    onnxruntime's integer kernels do (:func:`round_bias_to_accumulator`), to predict their
    numbers; a fine-tuned layer that adds its bias on that grid (``bias_step()``) is rounded
    either way, so the frozen model computes what it computed.  Raises
    :class:`QuantizationError` for a layer with quantized activations that was never
    calibrated."""
    from .learnable import LearnableQuantMixin

    _quantized_decomposed()  # registered before anything traces the forward (the exporter looks its ops up first)
    model = copy.deepcopy(qmodel)
    replacements = {}
    for name, module in model.named_modules():
        if not isinstance(module, (QuantMixin, LearnableQuantMixin)):
            continue
        integer, act = _quantizers_of(name, module)
        for base, cls in FROZEN_CLASSES:
            if isinstance(module, base):
                layer = cls.build(module, integer, act, layer_name=name)
                learned_grid = isinstance(module, LearnableQuantMixin) and module.bias_step() is not None
                if (integer_bias or learned_grid) and layer.bias is not None:
                    layer.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
                    round_bias_to_accumulator(layer)
                break
        else:  # pragma: no cover - every quantized class derives from one of the bases
            raise TypeError(f"layer {name!r}: cannot freeze a {type(module).__name__}")
        replacements[id(module)] = layer
    model = replace_modules(model, replacements)
    return model.eval()


__all__ = ["freeze", "frozen_modules", "round_bias_to_accumulator", "FrozenQuantMixin", "FrozenConv1d", "FrozenConv2d", "FrozenLinear"]
