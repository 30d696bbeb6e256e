"""The quantization arithmetic of bitsearch, as plain functions.

Every searcher, the env, the evaluator and the export call these; nothing else in the
project rounds or scales a tensor.  Conventions:

* **Weights**: symmetric, per kernel (one scale per output channel, dim 0 of the weight),
  restricted range.  A kernel ``k`` at ``b_k`` bits has ``qmax_k = 2**(b_k-1) - 1``,
  ``scale_k = max|w_k| / qmax_k`` and integer weights
  ``q = clamp(round(w * (1 / scale_k)), -qmax_k, qmax_k)``; the fake-quantized weight is
  ``q * scale_k``.  Kernels of one layer may have different widths (``bits`` is then a
  tensor with one width per kernel).  An all-zero kernel gets scale 1 (its integers are 0).
* **Activations**: one range per tensor, from calibration (running min/max).  When the
  calibrated minimum is >= 0 (after a ReLU) the quantizer is unsigned,
  ``[0, 2**b - 1]`` with ``scale = max / (2**b - 1)``; otherwise symmetric signed,
  ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` with ``scale = max(|min|, |max|) / (2**(b-1) - 1)``.
  No zero point, so integer kernels need no offset arithmetic.
* **Rounding** is round-half-to-even (``torch.round``), applied to the input multiplied by
  the float32 reciprocal of the scale (as torch's own ``fake_quantize_per_tensor_affine``
  does, so the two agree bit for bit).
* **Integers**: ``quantize_weight_int(w, b)`` times its scales equals
  ``fake_quantize_weight(w, b)`` bit for bit, so an integer export reproduces the
  simulated model exactly.
* **Gradients**: rounding uses a straight-through estimator; clamping passes no gradient
  outside the range.  :func:`fake_quantize` with a ``scale`` that requires grad gives the
  LSQ step-size gradient; :func:`fake_quantize_weight_fractional` is differentiable in the
  bit width (FracBits).  Weight scales are computed without gradient (max-based).

Widths: weights 2..16 bits (32 or more means float: left as is); activations 2..16 bits
(None, or 32 or more, means float).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_BITS = 2
MAX_BITS = 16
FLOAT_BITS = 32


# --- integer ranges ---------------------------------------------------------------------
def signed_qmax(bits):
    """``2**(bits-1) - 1``: the largest integer of a symmetric signed ``bits``-bit range
    (an int for an int, a float tensor for a tensor)."""
    if isinstance(bits, torch.Tensor):
        return torch.exp2(bits.to(torch.float32) - 1.0) - 1.0
    return (1 << (int(bits) - 1)) - 1


def unsigned_qmax(bits: int) -> int:
    """``2**bits - 1``: the largest integer of an unsigned ``bits``-bit range."""
    return (1 << int(bits)) - 1


def weight_bits_are_float(weight_bits: torch.Tensor) -> bool:
    """True when a layer's per-kernel widths (a layer never mixes float and integer kernels)
    mean float weights."""
    return int(weight_bits[0]) >= FLOAT_BITS


def integer_container(qmin: int, qmax: int) -> torch.dtype:
    """The smallest torch integer type holding ``[qmin, qmax]`` (uint8/int8, uint16/int16,
    int32): what integers of that range are stored in."""
    for dtype in ((torch.uint8, torch.uint16) if qmin >= 0 else ()) + (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return dtype
    raise ValueError(f"no integer type holds [{qmin}, {qmax}]")


def is_float_bits(bits) -> bool:
    """True for widths that mean "leave in float" (None, or 32 and more)."""
    return bits is None or int(bits) >= FLOAT_BITS


def check_bits(bits, what: str = "weight") -> None:
    """Raise ``ValueError`` unless ``bits`` is a supported width (2..16, or float)."""
    if is_float_bits(bits):
        return
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise ValueError(f"{what} bits {bits} are outside what the quantizer supports "
                         f"({MIN_BITS}..{MAX_BITS}, or {FLOAT_BITS} for float)")


# --- straight-through estimators -------------------------------------------------------
def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient backward."""
    return x + (torch.round(x) - x).detach()


class _FakeQuantizeSTE(torch.autograd.Function):
    """Fake quantization with a fixed scale: three in-place passes forward, the saved
    in-range mask backward (what torch's fused kernel computes, several times faster on
    CPU)."""

    @staticmethod
    def forward(ctx, x, scale, qmin, qmax):
        q = x * torch.reciprocal(scale)
        q.round_()
        mask = (q >= qmin) & (q <= qmax)
        q.clamp_(qmin, qmax)
        ctx.save_for_backward(mask)
        return q.mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None


def fake_quantize(x: torch.Tensor, scale, qmin, qmax) -> torch.Tensor:
    """``clamp(round(x * (1/scale)), qmin, qmax) * scale`` with a straight-through round.

    ``scale``, ``qmin`` and ``qmax`` are numbers or tensors broadcastable to ``x`` (a
    per-kernel weight passes shape ``[out, 1, ...]``); ``1/scale`` is taken in float32.
    Gradient to ``x``: 1 where ``round(x / scale)`` lies in ``[qmin, qmax]`` (bounds
    included), 0 where clamped -- as torch's fused ``fake_quantize_per_tensor_affine``,
    which gives the same numbers but is several times slower on CPU.  A ``scale`` that
    requires grad receives the LSQ gradient (``round(v) - v`` inside the range,
    ``qmin``/``qmax`` outside).
    """
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor(float(scale), dtype=torch.float32, device=x.device)
    if not torch.is_grad_enabled() or not (x.requires_grad or scale.requires_grad):
        with torch.no_grad():
            y = x * torch.reciprocal(scale)
            y.round_()
            y.clamp_(qmin, qmax)
            return y.mul_(scale)
    if not scale.requires_grad:
        return _FakeQuantizeSTE.apply(x, scale, qmin, qmax)
    q = round_ste(x * torch.reciprocal(scale))
    # torch.clamp would drop or halve the gradient at a bound: select instead
    q = torch.where(q < qmin, qmin, torch.where(q > qmax, qmax, q))
    return q * scale


# --- weights ----------------------------------------------------------------------------
def per_kernel(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``values`` of shape ``[out]`` reshaped to broadcast against ``weight``."""
    return values.reshape((-1,) + (1,) * (weight.dim() - 1))


def kernel_bits_tensor(bits, weight: torch.Tensor) -> torch.Tensor:
    """One width per kernel (dim 0 of ``weight``) as an int64 tensor on ``weight``'s device."""
    kernels = weight.shape[0]
    if isinstance(bits, torch.Tensor):
        b = bits.to(device=weight.device, dtype=torch.int64).reshape(-1)
        if b.numel() == 1:
            b = b.expand(kernels)
    elif isinstance(bits, (list, tuple)):
        b = torch.tensor([int(v) for v in bits], dtype=torch.int64, device=weight.device)
    else:
        b = torch.full((kernels,), int(bits), dtype=torch.int64, device=weight.device)
    if b.numel() != kernels:
        raise ValueError(f"{b.numel()} kernel widths for a weight with {kernels} kernels")
    return b


def weight_scales(weight: torch.Tensor, bits) -> torch.Tensor:
    """Per-kernel scales ``max|w_k| / (2**(b_k-1) - 1)`` (shape ``[out]``, no gradient).

    An all-zero kernel gets scale 1; a scale below the smallest normal float32 is raised
    to it (so its reciprocal stays finite)."""
    with torch.no_grad():
        b = kernel_bits_tensor(bits, weight)
        absmax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1).to(torch.float32)
        scale = absmax / signed_qmax(b)
        scale = torch.clamp(scale, min=torch.finfo(torch.float32).tiny)
        return torch.where(absmax > 0, scale, torch.ones_like(scale))


def fake_quantize_weight(weight: torch.Tensor, bits, *, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The fake-quantized weight (float, same shape), straight-through in ``weight``.

    ``bits``: an int for the whole layer, or one width per kernel (list or tensor).
    ``scale`` (shape ``[out]``) replaces the max-based scales, e.g. learned LSQ steps.
    """
    b = kernel_bits_tensor(bits, weight)
    if scale is None:
        scale = weight_scales(weight, b)
    qmax = per_kernel(signed_qmax(b), weight)
    return fake_quantize(weight, per_kernel(scale, weight), -qmax, qmax)


@dataclass(frozen=True)
class IntegerWeight:
    """A layer's weights as integers and per-kernel scales: ``values * scales`` (scales
    broadcast over dim 0) is the fake-quantized weight, bit for bit."""

    values: torch.Tensor  # int8 when every width is <= 8 bits, else int16
    scales: torch.Tensor  # float32, shape [out]
    bits: torch.Tensor    # int64, shape [out]

    def dequantize(self) -> torch.Tensor:
        return self.values.to(torch.float32) * per_kernel(self.scales, self.values)


def quantize_weight_int(weight: torch.Tensor, bits, *, scale: torch.Tensor | None = None) -> IntegerWeight:
    """The integer weights and scales that deployment uses (see :class:`IntegerWeight`)."""
    with torch.no_grad():
        b = kernel_bits_tensor(bits, weight)
        if scale is None:
            scale = weight_scales(weight, b)
        qmax = per_kernel(signed_qmax(b), weight)
        q = torch.clamp(torch.round(weight.detach().to(torch.float32) * torch.reciprocal(per_kernel(scale, weight))),
                        -qmax, qmax)
        dtype = torch.int8 if int(b.max()) <= 8 else torch.int16
        return IntegerWeight(q.to(dtype), scale.detach().to(torch.float32).clone(), b.clone())


def fake_quantize_weight_fractional(weight: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """FracBits: a fractional width ``b`` mixes the two neighbouring integer widths,
    ``(1 - f) * Q(w, floor b) + f * Q(w, floor b + 1)`` with ``f = b - floor b``.

    ``bits`` is a float tensor (a scalar for the layer, or one per kernel) and receives the
    gradient ``Q(w, floor b + 1) - Q(w, floor b)``; widths are clamped to 2..16.
    """
    b = bits.to(torch.float32)
    b = torch.clamp(b, float(MIN_BITS), float(MAX_BITS))
    low = torch.floor(b).detach()
    frac = b - low
    high = torch.clamp(low + 1, max=float(MAX_BITS))
    if frac.dim() > 0:
        frac = per_kernel(frac, weight)
    q_low = fake_quantize_weight(weight, low.to(torch.int64))
    q_high = fake_quantize_weight(weight, high.to(torch.int64))
    return q_low + frac * (q_high - q_low)


# --- activations ------------------------------------------------------------------------
@dataclass(frozen=True)
class ActivationQParams:
    """How one activation tensor is quantized: ``scale`` (a float32 value) and the
    integer range ``[qmin, qmax]`` (``qmin == 0``: unsigned)."""

    scale: float
    qmin: int
    qmax: int

    @property
    def inv_scale(self) -> float:
        """``1 / scale`` in float32 (what the quantizer multiplies by)."""
        return float(torch.reciprocal(torch.tensor(self.scale, dtype=torch.float32)))

    @property
    def signed(self) -> bool:
        return self.qmin < 0


def activation_qparams(bits: int, low: float, high: float) -> ActivationQParams:
    """The quantizer of an activation whose calibrated range is ``[low, high]``:
    unsigned when ``low >= 0``, symmetric signed otherwise."""
    check_bits(bits, "activation")
    low, high = float(low), float(high)
    if low >= 0:
        qmin, qmax, extent = 0, unsigned_qmax(bits), high
    else:
        qmax = signed_qmax(bits)
        qmin, extent = -qmax, max(-low, high)
    scale = extent / qmax if extent > 0 else 1.0
    scale = max(float(torch.tensor(scale, dtype=torch.float32)), float(torch.finfo(torch.float32).tiny))
    return ActivationQParams(scale, qmin, qmax)


def fake_quantize_activation(x: torch.Tensor, qparams: ActivationQParams) -> torch.Tensor:
    """``x`` fake-quantized with calibrated ``qparams`` (straight-through inside the range)."""
    return fake_quantize(x, qparams.scale, qparams.qmin, qparams.qmax)



def quantize_activation_int(x: torch.Tensor, qparams: ActivationQParams) -> torch.Tensor:
    """The integers an integer kernel sees for ``x`` (int32)."""
    with torch.no_grad():
        inv = torch.reciprocal(torch.tensor(qparams.scale, dtype=torch.float32))
        return torch.clamp(torch.round(x.to(torch.float32) * inv), qparams.qmin, qparams.qmax).to(torch.int32)


def bias_on_accumulator_grid(bias: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``bias`` rounded to the int32 accumulator grid ``step`` (one per kernel: input scale
    times weight scale), clamped to int32, as an integer kernel adds it: ``q * step``."""
    info = torch.iinfo(torch.int32)
    return torch.clamp(torch.round(bias / step), info.min, info.max) * step


# --- module surgery shared by the forward paths ----------------------------------------------
def replace_modules(model, replacements):
    """Put ``replacements[id(old)]`` wherever ``old`` is registered (a shared module may be
    registered under several parents); returns the new root (``model`` itself unless the
    root is replaced)."""
    for module in list(model.modules()):
        for child_name, child in list(module._modules.items()):
            if child is not None and id(child) in replacements:
                module._modules[child_name] = replacements[id(child)]
    return replacements.get(id(model), model)
