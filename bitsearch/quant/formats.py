"""Named weight formats and per-group scales, simulated exactly (torch).

What is stored, and so what these functions reproduce value for value:

* **Per-group integer scales** (``scale_group=G``): each kernel (row, dim 0) is cut into
  groups of ``G`` consecutive weights along its input (the flattened remaining dims; a
  last, shorter group when ``G`` does not divide the row).  A group at ``b`` bits has
  the fp16 scale ``s = fp16(max|w| / (2**(b-1) - 1))`` and integers
  ``clamp(round(w / s), -qmax, qmax)``.  (Rounding the scale to fp16 can put a weight a
  hair above ``qmax``: it is clamped.)  An all-zero group gets scale 1.
* **FP8 E4M3** (``fp8_e4m3``, the OCP "fn" variant: exponent bias 7, three mantissa bits,
  no infinities, largest value 448, smallest subnormal 2**-9): ``w / s`` rounded to the
  nearest E4M3 value, ties to even, saturating at +-448, with ``s = max|w| / 448`` per
  kernel (fp32) or per group (fp16) as for integers.
* **FP4 E2M1** elements (``0, 0.5, 1, 1.5, 2, 3, 4, 6`` and their negatives, ties to even,
  saturating at 6) under two block-scale schemes:
  ``nvfp4`` -- a per-tensor fp32 scale ``g = max|W| / (448 * 6)`` and one E4M3 scale per 16
  weights, ``e4m3(max|block| / 6 / g)``; the weight is ``e2m1(w / (scale * g)) * scale * g``.
  ``mxfp4`` (OCP Microscaling v1.0) -- one E8M0 scale per 32 weights, the power of two
  ``2**(floor(log2 max|block|) - 2)`` (2 being the largest exponent of E2M1); elements
  beyond 6 after scaling saturate.

:func:`fake_quantize_choice` is the entry point every caller uses: it takes a weight, a
choice (an int width or a format name, see :mod:`bitsearch.formats`) and the scale
granularity, and returns the simulated weight (straight-through in the weight).
"""

from __future__ import annotations

import math

import torch

from .. import formats as _formats

E4M3_MAX = 448.0
E2M1_MAX = 6.0


# --- rounding to small floating-point grids -------------------------------------------------
def round_minifloat(x: torch.Tensor, *, mantissa_bits: int, min_exponent: int, max_value: float) -> torch.Tensor:
    """``x`` rounded to the nearest value of a sign-magnitude float grid, ties to even,
    saturating at ``+-max_value``: ``mantissa_bits`` explicit mantissa bits, normal
    exponents from ``min_exponent`` up (below it the grid is subnormal, evenly spaced
    down to zero).  Computed in float32; NaN stays NaN."""
    x = x.to(torch.float32)
    magnitude = x.abs()
    _, exponent = torch.frexp(magnitude)  # magnitude = m * 2**exponent, m in [0.5, 1)
    exponent = torch.clamp(exponent - 1, min=min_exponent)  # floor(log2 |x|), at least the subnormal binade
    step = torch.exp2((exponent - mantissa_bits).to(torch.float32))
    rounded = torch.round(magnitude / step) * step
    rounded = torch.clamp(rounded, max=max_value)
    return torch.copysign(rounded, x)


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """To the OCP FP8 E4M3 grid (bias 7: normals from 2**-6, subnormals k * 2**-9), ties to
    even, saturating at +-448."""
    return round_minifloat(x, mantissa_bits=3, min_exponent=-6, max_value=E4M3_MAX)


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """To the FP4 E2M1 grid (0, 0.5, 1, 1.5, 2, 3, 4, 6), ties to even, saturating at +-6."""
    return round_minifloat(x, mantissa_bits=1, min_exponent=0, max_value=E2M1_MAX)


def round_fp16(x: torch.Tensor) -> torch.Tensor:
    """To float16 and back (what a stored fp16 scale is)."""
    return x.to(torch.float16).to(torch.float32)


# --- rows and groups ----------------------------------------------------------------------------
def _rows(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)


def _grouped(rows: torch.Tensor, group: int) -> tuple[torch.Tensor, int]:
    """``rows`` [out, n] as [out, groups, group] (zero-padded at the end), and the pad."""
    out, n = rows.shape
    pad = (-n) % group
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    return rows.reshape(out, -1, group), pad


def _ungrouped(grouped: torch.Tensor, pad: int, shape) -> torch.Tensor:
    flat = grouped.reshape(grouped.shape[0], -1)
    if pad:
        flat = flat[:, :flat.shape[1] - pad]
    return flat.reshape(shape)


def _per_row_bits(bits, rows: int, device) -> torch.Tensor:
    if isinstance(bits, torch.Tensor):
        b = bits.to(device=device, dtype=torch.int64).reshape(-1)
        return b.expand(rows) if b.numel() == 1 else b
    if isinstance(bits, (list, tuple)):
        return torch.tensor([int(v) for v in bits], dtype=torch.int64, device=device)
    return torch.full((rows,), int(bits), dtype=torch.int64, device=device)


# --- the simulated formats ------------------------------------------------------------------------
def group_scales_int(weight: torch.Tensor, bits, group: int) -> torch.Tensor:
    """The fp16 scales of per-group integer quantization, shape ``[out, ceil(n / group)]``."""
    with torch.no_grad():
        grouped, _ = _grouped(_rows(weight.detach().to(torch.float32)), group)
        b = _per_row_bits(bits, grouped.shape[0], weight.device)
        qmax = (torch.exp2(b.to(torch.float32) - 1.0) - 1.0).reshape(-1, 1)
        absmax = grouped.abs().amax(dim=2)
        scale = round_fp16(absmax / qmax)
        smallest = torch.finfo(torch.float16).tiny * torch.finfo(torch.float16).eps  # smallest fp16 subnormal
        scale = torch.where(scale > 0, scale, torch.where(absmax > 0, torch.full_like(scale, smallest),
                                                          torch.ones_like(scale)))
        return scale


def quantize_int_grouped(weight: torch.Tensor, bits, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group integers (float tensor of the weight's shape, grouped) and fp16 scales."""
    w = weight.detach().to(torch.float32)
    scale = group_scales_int(w, bits, group)
    grouped, pad = _grouped(_rows(w), group)
    b = _per_row_bits(bits, grouped.shape[0], weight.device)
    qmax = (torch.exp2(b.to(torch.float32) - 1.0) - 1.0).reshape(-1, 1, 1)
    q = torch.clamp(torch.round(grouped / scale.unsqueeze(2)), -qmax, qmax)
    return _ungrouped(q, pad, weight.shape), scale


def _int_grouped(weight: torch.Tensor, bits, group: int) -> torch.Tensor:
    w = weight.detach().to(torch.float32)
    q, scale = quantize_int_grouped(w, bits, group)
    grouped, pad = _grouped(_rows(q), group)
    return _ungrouped(grouped * scale.unsqueeze(2), pad, weight.shape)


def _fp8_e4m3(weight: torch.Tensor, group: int | None) -> torch.Tensor:
    w = weight.detach().to(torch.float32)
    rows = _rows(w)
    if group is None:
        absmax = rows.abs().amax(dim=1, keepdim=True)
        scale = absmax / E4M3_MAX
        scale = torch.where(absmax > 0, torch.clamp(scale, min=torch.finfo(torch.float32).tiny),
                            torch.ones_like(scale))
        return (round_e4m3(rows / scale) * scale).reshape(weight.shape)
    grouped, pad = _grouped(rows, group)
    absmax = grouped.abs().amax(dim=2, keepdim=True)
    scale = round_fp16(absmax / E4M3_MAX)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return _ungrouped(round_e4m3(grouped / scale) * scale, pad, weight.shape)


def nvfp4_scales(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4's per-tensor fp32 scale and its E4M3 block scales (one per 16 weights of a row,
    shape ``[out, ceil(n / 16)]``), before the per-tensor scale is applied to them."""
    w = weight.detach().to(torch.float32)
    tensor_max = w.abs().max()
    global_scale = tensor_max / (E4M3_MAX * E2M1_MAX)
    if not bool(global_scale > 0):
        global_scale = torch.ones((), dtype=torch.float32)
    grouped, _ = _grouped(_rows(w), 16)
    block_scale = round_e4m3(grouped.abs().amax(dim=2) / E2M1_MAX / global_scale)
    return global_scale, block_scale


def _nvfp4(weight: torch.Tensor) -> torch.Tensor:
    w = weight.detach().to(torch.float32)
    global_scale, block_scale = nvfp4_scales(w)
    grouped, pad = _grouped(_rows(w), 16)
    scale = (block_scale * global_scale).unsqueeze(2)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.where(scale > 0, round_e2m1(grouped / safe), torch.zeros_like(grouped))
    return _ungrouped(q * scale, pad, weight.shape)


def mxfp4_scales(weight: torch.Tensor) -> torch.Tensor:
    """MXFP4's E8M0 scales, one power of two per 32 weights of a row (``[out, ceil(n / 32)]``)."""
    grouped, _ = _grouped(_rows(weight.detach().to(torch.float32)), 32)
    absmax = grouped.abs().amax(dim=2)
    _, exponent = torch.frexp(absmax)
    shared = torch.clamp(exponent - 1 - 2, min=-127, max=127)  # floor(log2 max) - emax(E2M1)
    return torch.where(absmax > 0, torch.exp2(shared.to(torch.float32)), torch.ones_like(absmax))


def _mxfp4(weight: torch.Tensor) -> torch.Tensor:
    w = weight.detach().to(torch.float32)
    scale = mxfp4_scales(w).unsqueeze(2)
    grouped, pad = _grouped(_rows(w), 32)
    return _ungrouped(round_e2m1(grouped / scale) * scale, pad, weight.shape)


def simulate(weight: torch.Tensor, choice, *, scale_group: int | None = None) -> torch.Tensor:
    """The simulated weight at ``choice`` (no gradient): a named format, or integer widths
    (an int, or one width per kernel) with per-group scales (``scale_group`` set).
    Integers with per-kernel scales are
    :func:`bitsearch.quant.functional.fake_quantize_weight`'s."""
    with torch.no_grad():
        if isinstance(choice, str):
            _formats.check_choice(choice)
            if choice == "fp8_e4m3":
                out = _fp8_e4m3(weight, scale_group)
            elif choice == "nvfp4":
                out = _nvfp4(weight)
            else:
                out = _mxfp4(weight)
        else:
            if scale_group is None:
                raise ValueError("integer widths without a scale group are quantized per kernel by "
                                 "bitsearch.quant.functional.fake_quantize_weight")
            out = _int_grouped(weight, choice, scale_group)
        return out.to(weight.dtype)


def fake_quantize_choice(weight: torch.Tensor, choice, *, scale_group: int | None = None) -> torch.Tensor:
    """``weight`` quantized at ``choice`` (an int width, one width per kernel, or a format
    name) with the scale granularity ``scale_group`` (None: one scale per kernel).
    Straight-through: the forward value is the simulated weight; the gradient to
    ``weight`` is the identity (per-kernel integers keep
    :func:`~bitsearch.quant.functional.fake_quantize_weight`'s in-range mask)."""
    from .functional import fake_quantize_weight

    if not isinstance(choice, str) and scale_group is None:
        return fake_quantize_weight(weight, choice)
    simulated = simulate(weight, choice, scale_group=scale_group)
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return simulated
    return weight + (simulated - weight).detach()


def effective_bits_of(weight: torch.Tensor, choice, *, scale_group: int | None = None) -> float:
    """Average stored bits per weight of ``weight`` at ``choice`` (see :mod:`bitsearch.formats`)."""
    rows = weight.shape[0]
    fan_in = math.prod(weight.shape[1:])
    return _formats.stored_bits(choice, kernels=rows, fan_in=fan_in, scale_group=scale_group) / (rows * fan_in)
