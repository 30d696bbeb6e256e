"""A policy as a ``--tensor-type-file`` for llama.cpp's ``llama-quantize``.

One ``pattern=type`` line per quantized tensor, e.g. ``blk\\.3\\.attn_v\\.weight=q6_K``:
the pattern is the tensor's GGUF name with its dots escaped (``llama-quantize`` reads
each pattern as a regular expression, so escaped, it matches that tensor alone), the
type is the ggml type nearest to the policy's width (:data:`bitsearch.formats.GGML_TYPE_OF_WIDTH`:
the k-quant of that width, ``q8_0`` for 8 bits, ``mxfp4`` / ``nvfp4`` for those formats).
GGUF names are produced by the ``gguf`` package's own Hugging Face -> GGUF tensor name
map for the architecture (``gguf.get_tensor_name_map``), never by hand; a layer the map
does not know is an error, and so is a width no ggml type stores (7 bits, ``fp8_e4m3``).

Use it as::

    bitsearch export policy.json --to llama.cpp --out tiny.tensor-types.txt
    llama-quantize --tensor-type-file tiny.tensor-types.txt model-f16.gguf model-mixed.gguf Q4_K_M

llama.cpp's block formats are its own (Q4_K: 4.5 bits a weight with its 6-bit block
scales, Q6_K 6.5625, Q8_0 8.5), so the file carries the policy's widths, not its
simulated scales; :func:`gguf_bits_per_weight` gives the sizes of the types written.
Needs the ``llm`` extra (``gguf``).
"""

from __future__ import annotations

import re

from . import formats
from .errors import UserInputError
from .policy import Policy

DEFAULT_ARCH = "llama"
BLOCK_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UserInputError("export --to llama.cpp needs the gguf package: pip install 'bitsearch[llm]'") from None
    return gguf


def _arch(gguf, arch: str):
    names = {name.lower(): value for value, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch.lower() not in names:
        raise UserInputError(f"unknown GGUF architecture {arch!r}; gguf knows "
                             f"{', '.join(sorted(names)[:12])}, ... ({len(names)} in all)")
    return names[arch.lower()]


def block_count(names) -> int:
    """How many transformer blocks the layer names span (the largest block index + 1)."""
    indices = [int(m.group(1)) for m in (BLOCK_INDEX.search(n) for n in names) if m]
    return max(indices) + 1 if indices else 0


def gguf_names(names, *, arch: str = DEFAULT_ARCH, n_blocks: int | None = None) -> dict[str, str]:
    """Hugging Face module name -> GGUF tensor name of its weight (``blk.3.attn_v.weight``),
    through ``gguf.get_tensor_name_map``.  Raises :class:`UserInputError` naming the layers
    the map does not know."""
    gguf = _gguf()
    names = list(names)
    blocks = block_count(names) if n_blocks is None else int(n_blocks)
    table = gguf.get_tensor_name_map(_arch(gguf, arch), blocks)
    out, unknown = {}, []
    for name in names:
        mapped = table.get_name(f"{name}.weight", try_suffixes=(".weight",))
        if mapped is None:
            unknown.append(name)
        else:
            out[name] = mapped
    if unknown:
        shown = ", ".join(unknown[:5]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 5 else "")
        raise UserInputError(f"the gguf tensor name map for {arch!r} has no GGUF name for {shown}; llama.cpp "
                             "export needs a model whose module names follow the Hugging Face layout of that "
                             "architecture")
    return out


def tensor_types(policy: Policy, *, arch: str = DEFAULT_ARCH) -> list[tuple[str, str]]:
    """``(GGUF tensor name, ggml type)`` for every layer of ``policy``, in its order.

    Raises :class:`UserInputError` for a per-kernel policy that mixes widths within a
    layer (llama.cpp stores one type per tensor) and for widths without a ggml type."""
    problems = []
    widths = {}
    for name, bits in policy.bits:
        if bits.per_kernel and len(set(bits.weight_bits)) > 1:
            problems.append(f"layer {name!r} mixes widths across its kernels (llama.cpp stores one type per tensor)")
            continue
        widths[name] = bits.weight_bits[0] if bits.per_kernel else bits.weight_bits
    no_type = sorted({w for w in widths.values() if formats.ggml_type(w) is None}, key=formats.sort_key)
    if no_type:
        have = ", ".join(f"{w}->{t}" for w, t in formats.GGML_TYPE_OF_WIDTH.items())
        problems.append(f"widths {', '.join(map(str, no_type))} have no ggml type (llama.cpp stores {have}, "
                        "mxfp4, nvfp4); search with --weight-bits among those, e.g. 2-6,8")
    if problems:
        raise UserInputError("; ".join(problems))
    mapped = gguf_names(widths, arch=arch)
    return [(mapped[name], formats.ggml_type(width)) for name, width in widths.items()]


def to_tensor_type_file(policy: Policy, *, arch: str = DEFAULT_ARCH) -> str:
    """The ``--tensor-type-file`` text of ``policy`` (one ``pattern=type`` line per tensor)."""
    return "".join(f"{re.escape(name)}={kind}\n" for name, kind in tensor_types(policy, arch=arch))


def gguf_bits_per_weight(kind: str) -> float:
    """Bits per weight of ggml type ``kind`` (block scales included), from gguf's table."""
    gguf = _gguf()
    member = gguf.GGMLQuantizationType[kind.upper()]
    block, size = gguf.GGML_QUANT_SIZES[member]
    return size * 8 / block
