"""Turning a float model and a policy into a fake-quantized model, and calibrating it."""

from __future__ import annotations

import copy
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import PolicyError, QuantizationError
from ..policy import LayerBits, Policy, validate_policy
from .functional import IntegerWeight, replace_modules, weight_bits_are_float
from .modules import QuantMixin, layer_kind, to_quant

DEFAULT_CALIBRATION_BATCH = 256


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name (from ``named_modules``; a shared module once, under its first name) -> every
    Conv1d, Conv2d and Linear layer bitsearch can quantize, quantized or not."""
    return {name: module for name, module in model.named_modules() if layer_kind(module) is not None}


def quant_modules(model: nn.Module) -> dict[str, QuantMixin]:
    """Name -> the fake-quantized layers of ``model``."""
    return {name: module for name, module in model.named_modules() if isinstance(module, QuantMixin)}


def _policy_bits(policy: Policy | Mapping) -> dict[str, LayerBits]:
    if isinstance(policy, Policy):
        return policy.as_dict()
    out = {}
    for name, bits in dict(policy).items():
        if isinstance(bits, LayerBits):
            out[name] = bits
        elif isinstance(bits, Mapping):
            out[name] = LayerBits(bits["weight_bits"], bits.get("act_bits"))
        else:
            weight_bits, act_bits = bits
            out[name] = LayerBits(weight_bits, act_bits)
    return out


def _check_against_model(bits: Mapping[str, LayerBits], layers: Mapping[str, nn.Module]) -> None:
    problems = []
    for name, b in bits.items():
        module = layers.get(name)
        if module is None:
            known = ", ".join(list(layers)[:6]) + (f", ... ({len(layers)} in all)" if len(layers) > 6 else "")
            problems.append(f"unknown layer {name!r} (the model's quantizable layers are {known})")
            continue
        kernels = module.weight.shape[0]
        if b.per_kernel and len(b.weight_bits) != kernels:
            problems.append(f"layer {name!r}: {len(b.weight_bits)} per-kernel widths, but the layer has "
                            f"{kernels} kernels")
            continue
        try:
            _check_widths(b)
        except ValueError as exc:
            problems.append(f"layer {name!r}: {exc}")
    if problems:
        raise PolicyError(problems)


def _check_widths(b: LayerBits) -> None:
    from .. import formats
    from .functional import check_bits, is_float_bits

    if formats.is_named(b.weight_bits):
        formats.check_choice(b.weight_bits)
        check_bits(b.act_bits, "activation")
        return
    widths = set(b.weight_bits) if b.per_kernel else {b.weight_bits}
    for w in sorted(widths):
        check_bits(w, "weight")
    if len(widths) > 1 and any(is_float_bits(w) for w in widths):
        raise ValueError("per-kernel weight widths cannot mix float (32) and integer widths in one layer")
    check_bits(b.act_bits, "activation")


def set_policy(qmodel: nn.Module, policy: Policy | Mapping, *, space=None) -> nn.Module:
    """Set the widths of ``qmodel``'s quantized layers in place (no copy, no calibration).

    ``policy``: a :class:`Policy`, or a mapping from layer name to ``LayerBits`` /
    ``(weight_bits, act_bits)``.  Layers it does not name keep their widths.  Activation
    ranges stay as calibrated (calibrate again if the new weight widths should be seen).
    A :class:`Policy` also sets the layers' scale granularity (``policy.scale_group``).
    """
    if space is not None:
        if not isinstance(policy, Policy):
            policy = Policy(tuple(_policy_bits(policy).items()), space.granularity)
        policy = validate_policy(policy, space)
    bits = _policy_bits(policy)
    layers = quant_modules(qmodel)
    _check_against_model(bits, layers)
    group = policy.scale_group if isinstance(policy, Policy) else "keep"
    for name, b in bits.items():
        layers[name].set_bits(b.weight_bits, b.act_bits, group)
    return qmodel


def apply_policy(model: nn.Module, policy: Policy | Mapping, *, space=None, calibration=None,
                 batch_size: int = DEFAULT_CALIBRATION_BATCH) -> nn.Module:
    """A fake-quantized deep copy of ``model`` at ``policy``'s widths; ``model`` is untouched.

    Every layer the policy names is replaced by its quantized counterpart (same module
    path, same parameter names); layers it does not name stay float.  With ``space`` the
    policy is first checked against it (every problem in one :class:`PolicyError`);
    without, it is checked against the model (unknown layers, kernel counts, widths).
    ``calibration``: a batch of inputs (a tensor, split into ``batch_size`` chunks) or an
    iterable of batches (tensors, or tuples whose first item is the input): activation
    ranges are calibrated on it.  Without it, layers with quantized activations must be
    calibrated with :func:`calibrate` before use.  Weights use the policy's scale
    granularity (``policy.scale_group``: one scale per kernel, or per group of weights).
    """
    if space is not None:
        if not isinstance(policy, Policy):
            policy = Policy(tuple(_policy_bits(policy).items()), space.granularity)
        policy = validate_policy(policy, space)
    bits = _policy_bits(policy)
    _check_against_model(bits, quantizable_layers(model))
    qmodel = copy.deepcopy(model)
    layers = quantizable_layers(qmodel)
    replacements = {}
    group = policy.scale_group if isinstance(policy, Policy) else None
    for name, b in bits.items():
        module = layers[name]
        if not isinstance(module, QuantMixin):
            quantized = to_quant(module, layer_name=name)
            replacements[id(module)] = quantized
            module = quantized
        module.set_bits(b.weight_bits, b.act_bits, group)
        module.layer_name = name
    qmodel = replace_modules(qmodel, replacements)
    if calibration is not None:
        calibrate(qmodel, calibration, batch_size=batch_size)
    return qmodel


def _batches(data, batch_size: int):
    if isinstance(data, torch.Tensor):
        for start in range(0, len(data), batch_size):
            yield data[start:start + batch_size]
        return
    for item in data:
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, torch.Tensor):
            raise QuantizationError(f"calibration batches must be tensors (or tuples whose first item is the "
                                    f"input tensor), got {type(item).__name__}")
        yield item


def _device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def calibrate(qmodel: nn.Module, batches: torch.Tensor | Iterable, *, reset: bool = True,
              batch_size: int = DEFAULT_CALIBRATION_BATCH) -> nn.Module:
    """Calibrate the activation ranges of ``qmodel``'s quantized layers on ``batches``.

    Every quantized layer records the running min/max of its input over all batches, seen
    with quantized weights and float activations, in eval mode (batch-norm statistics are
    not touched) and without gradients.  ``reset=False`` widens the existing ranges.
    Raises :class:`QuantizationError` when there is no batch, or when a layer with
    quantized activations never ran.  Returns ``qmodel``.
    """
    layers = quant_modules(qmodel)
    if not layers:
        raise QuantizationError("the model has no quantized layer to calibrate: call apply_policy first")
    modes = {module: module.training for module in qmodel.modules()}
    device = _device(qmodel)
    count = 0
    if reset:
        for module in layers.values():
            module.reset_calibration()
    for module in layers.values():
        module.observing = True
    try:
        qmodel.eval()
        with torch.no_grad():
            for batch in _batches(batches, batch_size):
                qmodel(batch.to(device))
                count += 1
    finally:
        for module in layers.values():
            module.observing = False
        for module, mode in modes.items():
            module.training = mode
    if count == 0:
        raise QuantizationError("calibration got no batch: pass a tensor of inputs or an iterable of batches")
    missing = [name for name, module in layers.items() if module.act_bits is not None and not module.calibrated]
    if missing:
        raise QuantizationError(f"layers {missing} never ran during calibration, so their activation ranges are "
                                "unknown; check that the calibration inputs reach them")
    return qmodel


def integer_weights(qmodel: nn.Module) -> dict[str, IntegerWeight]:
    """Layer name -> integer weights and per-kernel scales, for every layer with quantized
    weights (what an integer deployment loads; they reproduce the fake-quantized weights
    bit for bit)."""
    return {name: module.integer_weight() for name, module in quant_modules(qmodel).items()
            if not weight_bits_are_float(module.weight_bits)}


def model_policy(qmodel: nn.Module, granularity: str = "layer") -> Policy:
    """The widths ``qmodel``'s quantized layers are set to, as a :class:`Policy` (kernel
    granularity when asked for, or when some layer mixes widths across its kernels)."""
    widths = {name: tuple(int(b) for b in module.weight_bits.tolist())
              for name, module in quant_modules(qmodel).items()}
    if any(len(set(w)) > 1 for w in widths.values()):
        granularity = "kernel"
    acts = {name: module.act_bits for name, module in quant_modules(qmodel).items()}
    bits = tuple((name, LayerBits(w if granularity == "kernel" else w[0], acts[name])) for name, w in widths.items())
    return Policy(bits, granularity)
