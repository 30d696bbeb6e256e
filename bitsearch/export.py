"""Converting policies to other tools' formats.  ``FORMATS`` maps a name to a function
``policy -> text``."""

from __future__ import annotations

import csv
import io

from .errors import UserInputError
from .interop import to_hawq, to_nncf
from .policy import Policy


def to_csv(policy: Policy) -> str:
    """One row per layer: ``layer,kernels,weight_bits,mean_weight_bits,act_bits``.

    ``weight_bits`` is an integer, or the per-kernel widths joined by ``;``.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["layer", "kernels", "weight_bits", "mean_weight_bits", "act_bits"])
    for name, bits in policy.bits:
        if bits.per_kernel:
            weight = ";".join(str(b) for b in bits.weight_bits)
            kernels = len(bits.weight_bits)
        else:
            weight, kernels = str(bits.weight_bits), ""
        act = "float" if bits.act_bits is None else bits.act_bits
        writer.writerow([name, kernels, weight, f"{bits.mean_weight_bits:.4g}", act])
    return out.getvalue()


def to_llamacpp(policy: Policy) -> str:
    """A ``--tensor-type-file`` for llama.cpp's ``llama-quantize`` (see :mod:`bitsearch.llamacpp`)."""
    from .llamacpp import to_tensor_type_file

    return to_tensor_type_file(policy)


FORMATS = {"csv": to_csv, "hawq": to_hawq, "nncf": to_nncf, "llama.cpp": to_llamacpp}


def export_policy(policy: Policy, fmt: str) -> str:
    try:
        convert = FORMATS[fmt]
    except KeyError:
        raise UserInputError(f"unknown export format {fmt!r}; known formats: {', '.join(sorted(FORMATS))}") from None
    return convert(policy)
