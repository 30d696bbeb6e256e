"""Learnable quantizers for quantization-aware fine-tuning: LSQ step sizes for weights and
PACT clipping levels for activations.

* **Weights (LSQ, Esser et al. 2020)**: one learnable step ``s_k`` per kernel; the weight
  is ``clamp(round(w / s_k), -qmax_k, qmax_k) * s_k`` with ``qmax_k = 2**(b_k-1) - 1``,
  computed by :func:`bitsearch.quant.functional.fake_quantize` (straight-through round,
  LSQ step gradient), with the step's gradient scaled by ``1 / sqrt(n_k * qmax_k)``
  (``n_k`` weights per kernel) as LSQ prescribes.  The step starts at the max-based scale
  of :func:`~bitsearch.quant.functional.weight_scales`, so fine-tuning starts from the
  post-training model.  The integers are
  :func:`~bitsearch.quant.functional.quantize_weight_int` with ``scale=`` the learned steps:
  ``values * steps`` is the weight the layer computes with, bit for bit.
* **Activations (PACT, Choi et al. 2018)**: one learnable clipping level ``alpha`` per layer
  input.  Unsigned inputs (calibrated minimum >= 0, e.g. after a ReLU) are clipped to
  ``[0, alpha]`` and quantized on ``2**b - 1`` steps; signed inputs to ``[-alpha, alpha]`` on
  ``2**(b-1) - 1`` steps each side (the conventions of ``activation_qparams``).  The
  gradient to ``alpha`` is PACT's: 1 where the input is clipped, 0 inside.  ``alpha``
  starts at the calibrated range.
* **Bias (integer)**: a layer with integer weights and a quantized input adds its bias on the
  int32 grid of its accumulator, one step ``s_x * s_k`` per kernel (straight-through round),
  as HAWQ-V3's integer-only inference does and as onnxruntime's integer kernels
  (``QLinearConv``, ``QGemm``) round a float bias before they add it.  Fine-tuning learns
  under that rounding, so the exported model computes what the fine-tuned one computed.
  ``integer_bias = False`` (a model saved in the first fine-tuned format) adds it in float.

A learnable layer keeps the float layer's ``weight`` and ``bias`` parameters under their
names, so the rest of a state dict is unchanged; its extra state is the parameters
``weight_step`` and ``act_clip`` and the buffers ``weight_bits``, ``act_bits_buffer`` (0 for
float) and ``act_signed``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QuantizationError
from .functional import (
    IntegerWeight, bias_on_accumulator_grid, fake_quantize, kernel_bits_tensor, per_kernel, quantize_weight_int,
    replace_modules, signed_qmax, unsigned_qmax, weight_bits_are_float, weight_scales,
)
from .modules import QuantMixin, _build_on_meta, describe_weight_bits

MIN_STEP = float(torch.finfo(torch.float32).tiny)


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` forward, gradient times ``factor`` backward (LSQ's step-size gradient scale)."""
    scaled = x * factor
    return x.detach() + (scaled - scaled.detach())  # the value is x exactly: y - y is 0


class LearnableQuantMixin:
    """Shared state and forward of :class:`LSQConv1d`, :class:`LSQConv2d`, :class:`LSQLinear`."""

    weight: nn.Parameter

    def _init_learnable(self, weight_bits, act_bits, act_signed: bool, act_clip: float, layer_name: str):
        device = self.weight.device
        bits = kernel_bits_tensor(weight_bits, self.weight)
        self.register_buffer("weight_bits", bits.clone())
        self.register_buffer("act_bits_buffer", torch.tensor(0 if act_bits is None else int(act_bits),
                                                             dtype=torch.int64, device=device))
        self.register_buffer("act_signed", torch.tensor(bool(act_signed), device=device))
        with torch.no_grad():
            step = weight_scales(self.weight, bits) if not self.weight_is_float else torch.ones(bits.shape)
        self.weight_step = nn.Parameter(step.to(device=device, dtype=torch.float32))
        self.act_clip = nn.Parameter(torch.tensor(float(act_clip), dtype=torch.float32, device=device))
        self.layer_name = layer_name
        self.integer_bias = True

    # --- widths ------------------------------------------------------------------------------
    @property
    def weight_is_float(self) -> bool:
        return weight_bits_are_float(self.weight_bits)

    @property
    def act_bits(self) -> int | None:
        value = int(self.act_bits_buffer)
        return None if value == 0 else value

    # --- weights ---------------------------------------------------------------------------
    def step(self) -> torch.Tensor:
        """The per-kernel steps the layer uses (kept above the smallest normal float)."""
        return torch.clamp(self.weight_step, min=MIN_STEP)

    def quantized_weight(self) -> torch.Tensor:
        if self.weight_is_float:
            return self.weight
        qmax = signed_qmax(self.weight_bits)  # float tensor, one per kernel
        weights_per_kernel = self.weight[0].numel()
        factor = 1.0 / math.sqrt(weights_per_kernel * float(qmax.max()))
        step = grad_scale(self.step(), factor)
        qmax = per_kernel(qmax, self.weight)
        return fake_quantize(self.weight, per_kernel(step, self.weight), -qmax, qmax)

    def integer_weight(self) -> IntegerWeight:
        """Integers and the learned steps as scales: ``values * scales`` is the weight
        :meth:`quantized_weight` computes with, bit for bit."""
        if self.weight_is_float:
            raise QuantizationError(f"layer {self.layer_name!r} keeps float weights: it has no integer form")
        return quantize_weight_int(self.weight, self.weight_bits, scale=self.step().detach())

    def bias_step(self) -> torch.Tensor | None:
        """The int32 accumulator grid of the bias, one step ``s_x * s_k`` per kernel (input
        scale times weight step, in float32, as an integer runtime computes it), or None when
        the bias stays float (no bias, float weights, float input, or ``integer_bias`` off)."""
        if self.bias is None or not self.integer_bias or self.weight_is_float or self.act_bits is None:
            return None
        _, qmax = self.act_range()
        act_scale = (torch.clamp(self.act_clip, min=MIN_STEP) / qmax).detach()
        return act_scale * self.step().detach()

    def quantized_bias(self) -> torch.Tensor | None:
        """The bias the layer adds: on the accumulator grid of :meth:`bias_step` (rounded with
        a straight-through gradient, clamped to int32), as HAWQ-V3's integer-only inference
        and onnxruntime's ``QLinearConv``/``QGemm`` add it; the float bias otherwise."""
        step = self.bias_step()
        if step is None:
            return self.bias
        grid = bias_on_accumulator_grid(self.bias.detach(), step)
        return grid + (self.bias - self.bias.detach())  # the value is the grid's exactly: b - b is 0

    # --- activations -------------------------------------------------------------------------
    def act_range(self) -> tuple[int, int]:
        b = self.act_bits
        if bool(self.act_signed):
            q = signed_qmax(b)
            return -q, q
        return 0, unsigned_qmax(b)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits is None:
            return x
        alpha = torch.clamp(self.act_clip, min=MIN_STEP)
        qmin, qmax = self.act_range()
        low = -alpha if qmin < 0 else torch.zeros_like(alpha)
        clipped = torch.minimum(torch.maximum(x, low), alpha)
        scale = float((alpha / qmax).detach())
        return fake_quantize(clipped, scale, qmin, qmax)

    @classmethod
    def build(cls, module, weight_bits, act_bits, act_signed, act_clip, layer_name=""):
        """The learnable twin of ``module`` (its parameters adopted, not copied)."""
        layer = _build_on_meta(cls, module)
        layer._init_learnable(weight_bits, act_bits, act_signed, act_clip, layer_name)
        return layer

    def extra_repr(self):
        return super().extra_repr() + ", " + self._extra_learnable_repr()

    def _extra_learnable_repr(self) -> str:
        w = describe_weight_bits(self.weight_bits)
        a = "float" if self.act_bits is None else f"{self.act_bits} ({'signed' if bool(self.act_signed) else 'unsigned'})"
        bias = ", int32 bias" if self.bias_step() is not None else ""
        return f"weight_bits={w}, act_bits={a}, LSQ+PACT{bias}"


class _LSQConvMixin(LearnableQuantMixin):
    def forward(self, x):
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.quantized_bias())


class LSQConv1d(_LSQConvMixin, nn.Conv1d):
    """A ``Conv1d`` with LSQ weights and a PACT input quantizer."""


class LSQConv2d(_LSQConvMixin, nn.Conv2d):
    """A ``Conv2d`` with LSQ weights and a PACT input quantizer."""


class LSQLinear(LearnableQuantMixin, nn.Linear):
    """A ``Linear`` with LSQ weights and a PACT input quantizer."""

    def forward(self, x):
        return F.linear(self.quantize_input(x), self.quantized_weight(), self.quantized_bias())


LEARNABLE_CLASSES = ((nn.Conv1d, LSQConv1d), (nn.Conv2d, LSQConv2d), (nn.Linear, LSQLinear))


def learnable_layer(module: nn.Module, weight_bits, act_bits, *, act_signed: bool = False,
                    act_clip: float = 1.0, layer_name: str = "") -> LearnableQuantMixin:
    for base, cls in LEARNABLE_CLASSES:
        if isinstance(module, base):
            return cls.build(module, weight_bits, act_bits, act_signed, act_clip, layer_name)
    raise TypeError(f"cannot quantize a {type(module).__name__}: only Conv1d, Conv2d and Linear")


def to_learnable(qmodel: nn.Module) -> nn.Module:
    """Replace, in place, every calibrated fake-quantized layer of ``qmodel`` (from
    ``apply_policy``) by its LSQ/PACT counterpart at the same widths, starting from the
    same quantizers (max-based weight scales, calibrated activation ranges).  Returns the
    model."""
    replacements = {}
    for name, module in qmodel.named_modules():
        if not isinstance(module, QuantMixin):
            continue
        act_bits = module.act_bits
        signed, clip = False, 1.0
        if act_bits is not None:
            if not module.calibrated:
                raise QuantizationError(f"layer {name!r} was never calibrated: calibrate before fine-tuning")
            low, high = float(module.act_min), float(module.act_max)
            signed = low < 0
            clip = max(-low, high) if signed else high
            clip = clip if clip > 0 else 1.0
        replacements[id(module)] = learnable_layer(module, module.weight_bits.clone(), act_bits,
                                                   act_signed=signed, act_clip=clip, layer_name=name)
    return replace_modules(qmodel, replacements)


def learnable_modules(model: nn.Module) -> dict[str, LearnableQuantMixin]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LearnableQuantMixin)}


def lipschitz_penalty(model: nn.Module) -> torch.Tensor:
    """``sum_l ||W_l W_l^T - I||_F^2`` over the learnable layers, each weight reshaped to
    ``[out, in * kernel]`` (the regularizer of Defensive Quantization, Lin et al. 2019, that the
    holistic study of quantized networks adds to the loss against activation noise)."""
    total = None
    for module in learnable_modules(model).values():
        w = module.weight.reshape(module.weight.shape[0], -1)
        gram = w @ w.t()
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        term = ((gram - eye) ** 2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total
