"""Weight formats and scale granularity: what a weight choice stores, bit for bit.

A weight choice is either an integer width (``4``: symmetric integers in 4 bits) or the
name of a format that deployments use:

=============  ==========================================  =====================  ==========
name           elements                                    scales                 bits/weight
=============  ==========================================  =====================  ==========
``fp8_e4m3``   OCP FP8 E4M3 (bias 7, max 448, saturating)  as integer widths      8 + scales
``nvfp4``      FP4 E2M1 (0, 0.5, 1, 1.5, 2, 3, 4, 6)       one E4M3 per 16        4.5 (+32
               and one fp32 scale per tensor               weights                per tensor)
``mxfp4``      FP4 E2M1, OCP Microscaling v1.0             one E8M0 (a power of   4.25
                                                           two) per 32 weights
=============  ==========================================  =====================  ==========

Integer widths and ``fp8_e4m3`` take their scales from the space's *scale granularity*:
one fp32 scale per output kernel (``scale_group=None``, the default), or one fp16 scale
per ``scale_group`` consecutive weights along the input dimension of each kernel
(``scale_group=128``, as GPTQ/AWQ-style INT4 checkpoints store them).  ``nvfp4`` and
``mxfp4`` carry their own block scales and ignore the scale granularity.

:func:`stored_bits` is the exact number of bits a layer's weights take at a choice,
scales included; the ``size`` and ``bits`` costs are built on it.  Everything here is
plain Python: the quantizers that simulate the formats are in
:mod:`bitsearch.quant.formats`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

FLOAT_BITS = 32
KERNEL_SCALE_BITS = 32  # one fp32 scale per output kernel
GROUP_SCALE_BITS = 16   # one fp16 scale per group of weights
SCALE_GROUPS = (32, 64, 128)  # what --scale-group offers (any positive size works in the library)


@dataclass(frozen=True)
class NamedFormat:
    """A named weight format.

    ``element_bits``: bits of one stored weight.  ``block``: weights per built-in block
    scale (None: the format uses the space's scale granularity).  ``block_scale_bits``:
    bits of one block scale.  ``tensor_scale_bits``: bits stored once per tensor.
    ``ggml_type``: the ggml type a llama.cpp file stores it as (None: llama.cpp has none).
    """

    name: str
    element_bits: int
    description: str
    block: int | None = None
    block_scale_bits: int = 0
    tensor_scale_bits: int = 0
    ggml_type: str | None = None

    @property
    def nominal_bits(self) -> float:
        """Bits per weight for a long row (block scales included, per-tensor ones not)."""
        if self.block is None:
            return float(self.element_bits)
        return self.element_bits + self.block_scale_bits / self.block


FORMATS: dict[str, NamedFormat] = {
    "fp8_e4m3": NamedFormat("fp8_e4m3", 8, "OCP FP8 E4M3 (max 448, saturating), scales as integer widths"),
    "nvfp4": NamedFormat("nvfp4", 4, "FP4 E2M1 with one FP8 E4M3 scale per 16 weights and an fp32 tensor scale",
                         block=16, block_scale_bits=8, tensor_scale_bits=32, ggml_type="nvfp4"),
    "mxfp4": NamedFormat("mxfp4", 4, "OCP MXFP4: FP4 E2M1 with one E8M0 (power of two) scale per 32 weights",
                         block=32, block_scale_bits=8, ggml_type="mxfp4"),
}

# integer codes of the named formats where widths live in integer arrays (cost columns):
# far above any width, so that a code never reads as one
CODES = {name: 101 + i for i, name in enumerate(FORMATS)}
_NAMES = {code: name for name, code in CODES.items()}


def code(choice) -> int:
    """An int standing for ``choice`` in integer arrays: the width itself, or the format's code."""
    return CODES[choice] if isinstance(choice, str) else int(choice)


def from_code(value):
    """The choice an int of :func:`code` stands for."""
    value = int(value)
    return _NAMES.get(value, value)


def is_named(choice) -> bool:
    """Whether ``choice`` is a named format (a string) rather than an integer width."""
    return isinstance(choice, str)


def named_format(choice) -> NamedFormat:
    return FORMATS[choice]


def check_choice(choice) -> None:
    """Raise ``ValueError`` naming the known formats for an unknown name or a bad width."""
    if isinstance(choice, bool):
        raise ValueError(f"weight choice {choice!r} is not a width or a format name")
    if isinstance(choice, str):
        if choice not in FORMATS:
            raise ValueError(f"unknown weight format {choice!r}; known formats: {', '.join(FORMATS)} "
                             "(or an integer width)")
        return
    if not isinstance(choice, int):
        raise ValueError(f"weight choice {choice!r} is not a width or a format name")
    if not 1 <= choice <= FLOAT_BITS:
        raise ValueError(f"bit width {choice} is outside 1..{FLOAT_BITS}")


def normalize_choice(choice):
    """An int for an integer width (``"4"`` and ``4.0`` included), the name for a format."""
    if isinstance(choice, str):
        text = choice.strip().lower()
        if re.fullmatch(r"[0-9]+", text):
            return int(text)
        return text
    if isinstance(choice, float) and choice.is_integer():
        return int(choice)
    return choice


def element_bits(choice) -> int:
    """Bits of one stored weight: the width, or the format's element bits (what BOPs,
    energy and accelerator models charge a multiplier for)."""
    return FORMATS[choice].element_bits if isinstance(choice, str) else int(choice)


def nominal_bits(choice) -> float:
    """Bits per weight of a long row, without per-kernel or per-group scales."""
    return FORMATS[choice].nominal_bits if isinstance(choice, str) else float(choice)


def sort_key(choice) -> tuple:
    """Order of weight choices: by nominal bits per weight, integers before formats of
    the same bits, then by name (so ``4 < mxfp4 < nvfp4 < 8 < fp8_e4m3``)."""
    return (nominal_bits(choice), 1 if isinstance(choice, str) else 0, str(choice))


def sort_choices(choices) -> tuple:
    """The distinct choices in :func:`sort_key` order."""
    unique = {normalize_choice(c) for c in choices}
    return tuple(sorted(unique, key=sort_key))


def describe(choice) -> str:
    return choice if isinstance(choice, str) else f"{choice}-bit"


def is_float(choice) -> bool:
    return not isinstance(choice, str) and int(choice) >= FLOAT_BITS


def check_scale_group(scale_group) -> int | None:
    """``None`` (per-kernel scales) or a positive group size; raises ``ValueError``."""
    if scale_group is None:
        return None
    if isinstance(scale_group, bool) or not isinstance(scale_group, int) or scale_group < 1:
        raise ValueError(f"scale group {scale_group!r} must be a positive integer (e.g. 32, 64, 128) or None for "
                         "one scale per kernel")
    return scale_group


def scale_bits(choice, *, kernels: int, fan_in: int, scale_group: int | None) -> int:
    """Bits of the scales of one layer's weights (``kernels`` rows of ``fan_in`` weights)."""
    if is_float(choice):
        return 0
    fmt = FORMATS.get(choice) if isinstance(choice, str) else None
    if fmt is not None and fmt.block is not None:
        return kernels * math.ceil(fan_in / fmt.block) * fmt.block_scale_bits + fmt.tensor_scale_bits
    if scale_group is None:
        return kernels * KERNEL_SCALE_BITS
    return kernels * math.ceil(fan_in / scale_group) * GROUP_SCALE_BITS


def stored_bits(choice, *, kernels: int, fan_in: int, scale_group: int | None) -> int:
    """Bits the weights of one layer take at ``choice``, scales included (a float layer:
    32 bits a weight, no scales)."""
    params = kernels * fan_in
    if is_float(choice):
        return params * FLOAT_BITS
    return params * element_bits(choice) + scale_bits(choice, kernels=kernels, fan_in=fan_in,
                                                      scale_group=scale_group)


def effective_bits(choice, *, fan_in: int, scale_group: int | None) -> float:
    """Average stored bits per weight of a kernel of ``fan_in`` weights at ``choice``."""
    return stored_bits(choice, kernels=1, fan_in=fan_in, scale_group=scale_group) / fan_in


def parse_choices(text: str) -> tuple:
    """Parse ``2-8``, ``2,3,4,8`` or ``4,8,fp8_e4m3,nvfp4`` into sorted weight choices.

    Widths are read by :func:`bitsearch.space.parse_bits` (1..16); raises
    :class:`~bitsearch.errors.UserInputError` with a readable message.
    """
    from .errors import UserInputError
    from .space import parse_bits

    parts = [part.strip() for part in str(text).strip().lower().split(",")]
    names = [part for part in parts if part in FORMATS]
    others = [part for part in parts if part and part not in FORMATS]
    for part in others:
        if not re.fullmatch(r"[-0-9 ]+", part):
            raise UserInputError(f"bit widths {text!r} do not parse at {part!r}: expected a list like 2,3,4,8, a "
                                 f"range like 2-8, or format names ({', '.join(FORMATS)})")
    widths = parse_bits(",".join(others)) if others or not names else ()
    return sort_choices(tuple(widths) + tuple(names))


# --- llama.cpp ------------------------------------------------------------------------------
# the ggml type llama.cpp stores an integer width as: the k-quant of that width (Q8_0 for 8,
# which has no k-quant of its own), f16/f32 for float; 1 and 7 and 9..15 bits have none.
GGML_TYPE_OF_WIDTH = {2: "q2_K", 3: "q3_K", 4: "q4_K", 5: "q5_K", 6: "q6_K", 8: "q8_0", 16: "f16", 32: "f32"}


def ggml_type(choice) -> str | None:
    """The ggml type name (as ``llama-quantize`` spells it) nearest to ``choice``, or None."""
    if isinstance(choice, str):
        return FORMATS[choice].ggml_type
    if int(choice) >= FLOAT_BITS:
        return "f32"
    return GGML_TYPE_OF_WIDTH.get(int(choice))
