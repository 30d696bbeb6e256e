"""Converting policies to other tools' formats: :func:`export_policy` (``FORMATS`` names
them; the ONNX model itself is :mod:`bitsearch.onnx_export`)."""

from __future__ import annotations

import csv
import io

from .errors import UserInputError
from .interop import to_hawq, to_hawq_module, to_nncf
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


def to_llamacpp(policy: Policy, *, arch: str | None = None) -> str:
    """A ``--tensor-type-file`` for llama.cpp's ``llama-quantize`` (see :mod:`bitsearch.llamacpp`)."""
    from .llamacpp import DEFAULT_ARCH, to_tensor_type_file

    return to_tensor_type_file(policy, arch=arch or DEFAULT_ARCH)


FORMATS = ("csv", "hawq", "nncf", "llama.cpp")


def export_policy(policy: Policy, fmt: str, *, task=None, source: str | None = None, config_name: str | None = None,
                  hawq_json: bool = True, target_device: str | None = None, gguf_arch: str | None = None) -> str:
    """``policy`` as text in format ``fmt`` (``csv``, ``hawq``, ``nncf``, ``llama.cpp``).

    ``task`` (a Task): the layers are checked against its model first (every layer
    present, none unknown); nncf reads the module classes of its model from it (without
    it, from the task the policy names).  hawq: ``hawq_json`` gives the bare bit_config
    dictionary as JSON, otherwise a ``bit_config.py`` module (``config_name`` names its
    entry).  nncf: ``target_device`` (default TRIAL).  llama.cpp: ``gguf_arch`` (default
    llama) names the GGUF tensors."""
    if fmt not in FORMATS:
        raise UserInputError(f"unknown export format {fmt!r}; known formats: {', '.join(sorted(FORMATS + ('onnx',)))}")
    kinds = classes = producers = None
    if task is not None:
        from .finetune import check_policy_for_task
        from .interop import nncf_model_facts

        width_mult = float((policy.meta.get("model") or {}).get("width_mult", 1.0))
        policy = check_policy_for_task(policy, task, width_mult, source=source)
        if fmt == "nncf":
            classes, kinds, producers = nncf_model_facts(task, width_mult)
    if fmt == "csv":
        return to_csv(policy)
    if fmt == "hawq":
        return to_hawq(policy) if hawq_json else to_hawq_module(policy, config_name)
    if fmt == "llama.cpp":
        return to_llamacpp(policy, arch=gguf_arch)
    return to_nncf(policy, module_classes=classes, kinds=kinds, target_device=target_device, producers=producers)
