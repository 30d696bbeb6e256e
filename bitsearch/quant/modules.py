"""Fake-quantized layers: drop-in subclasses of ``nn.Conv1d``, ``nn.Conv2d``, ``nn.Linear``
and ``nn.Embedding``.

A quantized layer holds the original layer's parameters (the same ``Parameter`` objects,
under the same names, so state dicts and optimizers see an ordinary layer), a per-kernel
``weight_bits`` buffer (int64, one width per output channel; 32 means float weights),
``act_bits`` (an int, or None for float activations) and the calibrated range of its
*input* (``act_min`` / ``act_max`` buffers).  Its forward quantizes the input activation
at ``act_bits`` and runs the layer with fake-quantized weights.

Evaluation is fast: in eval mode, when no autograd graph is needed (``torch.no_grad()``,
or weights that do not require grad), the fake-quantized weight is computed once -- with
the input's activation scale folded in, ``W (s q) = (s W) q`` -- and reused until the
weight, its widths, the activation range or the layer's mode change (the cache is keyed on
the tensors' version counters, and dropped when the layer leaves training mode; call
:meth:`QuantMixin.invalidate_cache` after writing to ``weight.data`` directly in eval
mode, which torch does not count).  The input then costs three cheap
in-place passes (scale, round, clamp).  In training mode, or when gradients are needed, the
weight and input are fake-quantized on every forward with straight-through estimators.

Besides integer widths with per-kernel scales, a layer's weights may use per-group
scales (``scale_group``) or a named format (``weight_format``: ``fp8_e4m3``, ``nvfp4``,
``mxfp4``), simulated by :mod:`bitsearch.quant.formats`; ``weight_bits`` then holds the
format's element bits.  An embedding quantizes its weight rows only (its input is token
indices: ``act_bits`` is accepted and ignored).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QuantizationError
from .functional import (
    FLOAT_BITS, ActivationQParams, IntegerWeight, activation_qparams, check_bits, fake_quantize_activation,
    fake_quantize_weight, is_float_bits, kernel_bits_tensor, quantize_weight_int, weight_bits_are_float,
)

# the layer types bitsearch quantizes, and the kind names of the search space
BASE_TYPES = ((nn.Conv1d, "conv1d"), (nn.Conv2d, "conv2d"), (nn.Linear, "linear"), (nn.Embedding, "embedding"))


class QuantMixin:
    """State and behaviour shared by the fake-quantized layers (see the module docstring)."""

    weight: nn.Parameter
    weight_bits: torch.Tensor
    act_min: torch.Tensor
    act_max: torch.Tensor

    def _init_quant(self, weight_bits=FLOAT_BITS, act_bits=None, layer_name: str = "") -> None:
        device = self.weight.device
        self.register_buffer("weight_bits", torch.full((self.weight.shape[0],), FLOAT_BITS, dtype=torch.int64,
                                                        device=device))
        self.register_buffer("act_min", torch.tensor(math.inf, device=device))
        self.register_buffer("act_max", torch.tensor(-math.inf, device=device))
        self.layer_name = layer_name
        self.act_bits: int | None = None
        self.weight_format: str | None = None
        self.scale_group: int | None = None
        self.observing = False
        self.invalidate_cache()
        self.set_bits(weight_bits, act_bits)

    # --- widths -----------------------------------------------------------------------------
    def set_bits(self, weight_bits, act_bits, scale_group: int | None | str = "keep") -> None:
        """Set the widths: ``weight_bits`` an int or one width per kernel (2..16, or 32 for
        float), or a named format (``"nvfp4"``...); ``act_bits`` 2..16, or None (or 32) for
        float activations; ``scale_group`` None (one scale per kernel) or a group size
        (``"keep"``: unchanged).  Raises ``ValueError`` for a width the quantizer does not
        support."""
        from .. import formats

        if scale_group != "keep":
            self.scale_group = formats.check_scale_group(scale_group)
        if isinstance(weight_bits, str):
            formats.check_choice(weight_bits)
            self.weight_format = weight_bits
            weight_bits = formats.element_bits(weight_bits)
        else:
            self.weight_format = None
        bits = kernel_bits_tensor(weight_bits, self.weight)
        values = set(bits.tolist())
        for b in values:
            check_bits(b, "weight")
        if len(values) > 1 and any(is_float_bits(b) for b in values):
            raise ValueError("per-kernel weight widths cannot mix float (32) and integer widths in one layer")
        check_bits(act_bits, "activation")
        with torch.no_grad():
            if not torch.equal(self.weight_bits, bits):
                self.weight_bits.copy_(bits)
        self.act_bits = None if is_float_bits(act_bits) else int(act_bits)

    @property
    def weight_is_float(self) -> bool:
        return weight_bits_are_float(self.weight_bits)

    # --- calibration ------------------------------------------------------------------------
    def reset_calibration(self) -> None:
        with torch.no_grad():
            self.act_min.fill_(math.inf)
            self.act_max.fill_(-math.inf)

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.act_min)) and bool(torch.isfinite(self.act_max))

    def observe(self, x: torch.Tensor) -> None:
        """Widen the running range ``[act_min, act_max]`` to cover ``x``."""
        with torch.no_grad():
            low, high = torch.aminmax(x.detach())
            torch.minimum(self.act_min, low.to(self.act_min.dtype), out=self.act_min)
            torch.maximum(self.act_max, high.to(self.act_max.dtype), out=self.act_max)

    def act_qparams(self) -> ActivationQParams | None:
        """The input quantizer at the current ``act_bits`` (None for float activations)."""
        act_bits = self.act_bits
        if act_bits is None:
            return None
        low, high = self._buffers["act_min"], self._buffers["act_max"]
        key = (act_bits, low._version, high._version, low.data_ptr(), high.data_ptr())
        if key != self._act_key:
            if not self.calibrated:
                raise QuantizationError(
                    f"layer {self.layer_name or type(self).__name__!r} quantizes its input at {self.act_bits} bits "
                    "but its activation range was never calibrated: pass calibration=... to apply_policy or "
                    "call bitsearch.quant.calibrate(model, batches)")
            self._act_qparams = activation_qparams(self.act_bits, float(self.act_min), float(self.act_max))
            self._act_inv_scale = self._act_qparams.inv_scale
            self._act_key = key
        return self._act_qparams

    # --- weights ----------------------------------------------------------------------------
    def invalidate_cache(self) -> None:
        """Forget the cached fake-quantized weight and activation quantizer."""
        self._weight_cache = None
        self._weight_key = None
        self._act_qparams = None
        self._act_key = None

    def train(self, mode: bool = True):
        if self.training and not mode:
            # leaving training: weights may have been changed through ``.data``, which the
            # version counters do not see
            self._weight_cache = None
            self._weight_key = None
        return super().train(mode)

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight at ``weight_bits`` (cached in eval mode when no gradient
        is needed; straight-through otherwise)."""
        if self.training or (torch.is_grad_enabled() and self.weight.requires_grad):
            return self._simulated_weight(self.weight)
        return self._eval_weight(None)

    def _simulated_weight(self, weight: torch.Tensor) -> torch.Tensor:
        if self.weight_is_float:
            return weight
        if self.weight_format is None and self.scale_group is None:
            return fake_quantize_weight(weight, self.weight_bits)
        from .formats import fake_quantize_choice

        return fake_quantize_choice(weight, self.weight_format or self.weight_bits, scale_group=self.scale_group)

    def _eval_weight(self, act_scale: float | None) -> torch.Tensor:
        """The cached fake-quantized weight, times ``act_scale`` when given (the input's
        scale folded into the weight: ``W (s q) = (s W) q``)."""
        weight, bits = self._parameters["weight"], self._buffers["weight_bits"]
        key = (weight._version, weight.data_ptr(), weight.dtype, bits._version, bits.data_ptr(), act_scale,
               self.weight_format, self.scale_group)
        if key != self._weight_key or self._weight_cache is None:
            with torch.no_grad():
                # detached: a bare Parameter assigned to an attribute would be registered as one
                w = weight.detach() if self.weight_is_float else self._simulated_weight(weight)
                if act_scale is not None:
                    w = w * torch.tensor(act_scale, dtype=w.dtype, device=w.device)
            self._weight_cache, self._weight_key = w, key
        return self._weight_cache

    def integer_weight(self) -> IntegerWeight:
        """The integer weights and per-kernel scales of this layer (for deployment)."""
        if self.weight_is_float:
            raise QuantizationError(f"layer {self.layer_name!r} keeps float weights: it has no integer form")
        if self.weight_format is not None or self.scale_group is not None:
            what = self.weight_format or f"per-group scales (groups of {self.scale_group})"
            raise QuantizationError(f"layer {self.layer_name!r} uses {what}: its integer form with per-kernel scales "
                                    "does not exist (export it to llama.cpp, or search with per-kernel scales)")
        return quantize_weight_int(self.weight, self.weight_bits)

    # --- forward ----------------------------------------------------------------------------
    def quantized_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input and the weight the layer computes with.

        Training, or gradients needed: the fake-quantized input (straight-through) and the
        fake-quantized weight.  Evaluation without gradients: the input's integers (as
        floats: ``clamp(round(x / s))``) and the cached weight times ``s`` -- the same
        product with one pass less over the activation.  Calibration: the float input
        (observed) and the quantized weight.
        """
        if self.observing:
            self.observe(x)
            return x, self.quantized_weight()
        if self.training or (torch.is_grad_enabled()
                             and (x.requires_grad or self._parameters["weight"].requires_grad)):
            if self.act_bits is not None:
                x = fake_quantize_activation(x, self.act_qparams())
            return x, self.quantized_weight()
        qparams = self.act_qparams()
        if qparams is None:
            return x, self._eval_weight(None)
        q = x * self._act_inv_scale
        q.round_()
        q.clamp_(qparams.qmin, qparams.qmax)
        return q, self._eval_weight(qparams.scale)

    @classmethod
    def from_float(cls, module, weight_bits=FLOAT_BITS, act_bits=None, layer_name: str = ""):
        """The fake-quantized twin of the float layer ``module``, sharing its parameters."""
        q = _build_on_meta(cls, module)
        q._init_quant(weight_bits, act_bits, layer_name)
        return q

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self._extra_bits_repr()

    def _extra_bits_repr(self) -> str:
        w = self.weight_format or describe_weight_bits(self.weight_bits)
        if self.scale_group is not None and self.weight_format not in ("nvfp4", "mxfp4"):
            w += f" (scale per {self.scale_group})"
        a = "float" if self.act_bits is None else str(self.act_bits)
        return f"weight_bits={w}, act_bits={a}"


def describe_weight_bits(weight_bits: torch.Tensor) -> str:
    """``float``, one width, or ``per-kernel lo..hi``: a layer's weight widths for its repr."""
    values = sorted(set(weight_bits.tolist()))
    if values == [FLOAT_BITS]:
        return "float"
    if len(values) == 1:
        return str(values[0])
    return f"per-kernel {values[0]}..{values[-1]}"


def layer_geometry(module: nn.Module) -> dict:
    """The constructor arguments of a Conv1d/Conv2d/Linear/Embedding ``module`` (without its
    weights)."""
    if isinstance(module, nn.Embedding):
        return {"num_embeddings": module.num_embeddings, "embedding_dim": module.embedding_dim,
                "padding_idx": module.padding_idx, "max_norm": module.max_norm, "norm_type": module.norm_type,
                "scale_grad_by_freq": module.scale_grad_by_freq, "sparse": module.sparse}
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    return {"in_channels": module.in_channels, "out_channels": module.out_channels,
            "kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
            "dilation": module.dilation, "groups": module.groups, "bias": module.bias is not None,
            "padding_mode": module.padding_mode}


def _build_on_meta(cls, module: nn.Module):
    """Construct ``cls`` (a subclass of ``module``'s layer type) with ``module``'s geometry,
    without allocating or initialising weights, then adopt ``module``'s."""
    with torch.device("meta"):
        q = cls(**layer_geometry(module), dtype=module.weight.dtype)
    q.weight = module.weight
    if hasattr(module, "bias"):
        q.bias = module.bias
    q.train(module.training)
    return q


class _QuantConvMixin(QuantMixin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self.quantized_operands(x)
        return self._conv_forward(x, weight, self.bias)


class QuantConv1d(_QuantConvMixin, nn.Conv1d):
    """A fake-quantized ``nn.Conv1d``."""


class QuantConv2d(_QuantConvMixin, nn.Conv2d):
    """A fake-quantized ``nn.Conv2d`` (grouped and depthwise included)."""


class QuantLinear(QuantMixin, nn.Linear):
    """A fake-quantized ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self.quantized_operands(x)
        return F.linear(x, weight, self.bias)


class QuantEmbedding(QuantMixin, nn.Embedding):
    """A fake-quantized ``nn.Embedding``: its weight rows (one kernel per token) are
    quantized; its input is token indices, so ``act_bits`` is ignored."""

    def set_bits(self, weight_bits, act_bits, scale_group="keep") -> None:
        super().set_bits(weight_bits, None, scale_group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.quantized_weight()
        return F.embedding(x, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                           self.sparse)


QUANT_CLASSES = {nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear,
                 nn.Embedding: QuantEmbedding}


def layer_kind(module: nn.Module) -> str | None:
    """``conv1d``, ``conv2d`` or ``linear`` for a layer bitsearch quantizes, else None.

    A subclass that overrides ``forward`` (a custom layer built on ``nn.Conv2d``, say) is
    not quantized: the fake-quantized replacement would change what it computes.
    """
    if isinstance(module, QuantMixin):
        for base, kind in BASE_TYPES:
            if isinstance(module, base):
                return kind
    for base, kind in BASE_TYPES:
        if isinstance(module, base):
            return kind if type(module).forward is base.forward else None
    return None


def custom_subclass(module: nn.Module) -> bool:
    """A Conv1d/Conv2d/Linear subclass with its own forward (left in float)."""
    return (not isinstance(module, QuantMixin) and layer_kind(module) is None
            and isinstance(module, tuple(base for base, _ in BASE_TYPES)))


def to_quant(module: nn.Module, weight_bits=FLOAT_BITS, act_bits=None, layer_name: str = "") -> QuantMixin:
    """The fake-quantized counterpart of a Conv1d, Conv2d or Linear ``module``."""
    for base, cls in QUANT_CLASSES.items():
        if isinstance(module, base):
            return cls.from_float(module, weight_bits, act_bits, layer_name)
    raise TypeError(f"cannot quantize a {type(module).__name__}: only Conv1d, Conv2d, Linear and Embedding")
