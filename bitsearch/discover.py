"""Discovery (torch): a model and an example input -> its :class:`SearchSpace`.

One forward pass of the example input, in eval mode and without gradients (the model's
modes and batch-norm statistics are left as they were), with a hook on every Conv1d,
Conv2d, Linear and Embedding layer, measures the MACs per sample and the output sizes.
Layers come in the order they first run.  A layer called several times is one layer
(its MACs are summed over the calls); a layer that never runs is left out, with a
warning, since quantizing it would change nothing.  Embeddings (a transformer's token
embedding) are listed like any layer, with 0 MACs: pin them to keep them out of the
search.

Groups of layers that read the same tensor -- a residual block's first convolution and
its downsample; a transformer's q/k/v projections, or its gate/up projections -- are
found by tracing the model with ``torch.fx``, or, for models fx cannot trace (Hugging
Face transformers among them), by watching which layers receive the very same input
tensor during the example pass.  They are always listed as ``shared_inputs`` (tie
candidates); they are *tied* (share widths) when ``tie_shared_inputs`` is True, and by
default when activations are quantized, since layers that read one tensor share one
activation quantizer.  With float activations (weight-only quantization, as llama.cpp and
GPTQ do it) nothing forces them to share a width, so they stay free unless asked.

MACs per sample: convolution ``out_elements x in_channels / groups x prod(kernel_size)``
(grouped and depthwise included), linear ``out_elements x in_features`` (over every
leading dimension, e.g. tokens), both divided by the example's batch size.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from typing import Iterable, Mapping

import torch
from torch import nn

from .errors import UserInputError
from .quant.modules import custom_subclass, layer_kind
from .space import Layer, Pin, SearchSpace, layers_fingerprint

DEFAULT_WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8)


class DiscoveryError(UserInputError):
    """A model (or example input) from which no search space can be built."""


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        for item in value.values():
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


class _Record:
    __slots__ = ("order", "macs", "out_spatial", "first_input")

    def __init__(self, order):
        self.order = order
        self.macs = 0
        self.out_spatial = ()
        self.first_input = None  # the input tensor of the first call (to find shared inputs)


def _call_macs(module: nn.Module, kind: str, output: torch.Tensor, batch: int) -> int:
    if kind == "embedding":
        return 0
    if kind == "linear":
        total = output.numel() * module.in_features
    else:
        total = output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return total // batch


def _measure(model: nn.Module, example_input, layers: dict[str, nn.Module], kinds: dict[str, str]):
    """Run the example once with hooks; returns name -> _Record for the layers that ran."""
    batch_tensor = _first_tensor(example_input)
    if batch_tensor is None:
        raise DiscoveryError("the example input holds no tensor: pass a batch shaped like the model's input, "
                             "e.g. torch.zeros(1, 3, 224, 224)")
    batch = int(batch_tensor.shape[0]) if batch_tensor.dim() > 0 else 1
    records: dict[str, _Record] = {}
    handles = []

    def make_hook(name):
        kind = kinds[name]
        module = layers[name]

        def hook(_module, inputs, output):
            record = records.get(name)
            if record is None:
                record = records[name] = _Record(len(records))
                if kind not in ("linear", "embedding"):
                    record.out_spatial = tuple(int(d) for d in output.shape[2:]) if output.dim() > 2 else ()
                record.first_input = inputs[0] if inputs else None
            record.macs += _call_macs(module, kind, output, batch)

        return hook

    for name, module in layers.items():
        handles.append(module.register_forward_hook(make_hook(name)))
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            _call(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return records


def _call(model: nn.Module, example_input):
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    if isinstance(example_input, dict):
        return model(**example_input)
    return model(example_input)


def _layer(name: str, kind: str, module: nn.Module, record: _Record) -> Layer:
    weight = module.weight
    if kind == "embedding":
        return Layer(name, kind, params=weight.numel(), macs=0, kernels=module.num_embeddings,
                     in_features=module.embedding_dim, out_channels=module.embedding_dim)
    bias = 0 if module.bias is None else module.bias.numel()
    if kind == "linear":
        return Layer(name, kind, params=weight.numel(), macs=record.macs, kernels=module.out_features,
                     in_features=module.in_features, out_channels=module.out_features, bias_params=bias)
    return Layer(name, kind, params=weight.numel(), macs=record.macs, kernels=module.out_channels,
                 in_channels=module.in_channels, out_channels=module.out_channels,
                 kernel_size=tuple(module.kernel_size), stride=tuple(module.stride), groups=module.groups,
                 out_spatial=record.out_spatial, bias_params=bias)


def shared_input_groups(records: dict, order) -> tuple[tuple[str, ...], ...]:
    """Groups of layers whose first call received the very same input tensor object."""
    groups: list[list[str]] = []
    seen: list[torch.Tensor] = []
    for name in order:
        tensor = records[name].first_input
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue  # token indices (an embedding's input) are not a shared activation
        for i, other in enumerate(seen):
            if other is tensor:
                groups[i].append(name)
                break
        else:
            seen.append(tensor)
            groups.append([name])
    return tuple(tuple(g) for g in groups if len(g) > 1)


def find_tied_groups(model: nn.Module, names: Iterable[str], *, warn: bool = True) -> tuple[tuple[str, ...], ...] | None:
    """Groups of the given layers whose input is the same tensor (found with torch.fx).

    Returns None (and warns, when ``warn``) when the model cannot be traced.
    """
    import torch.fx

    wanted = set(names)
    canonical = {}  # id(module) -> name from named_modules (a shared module's first name)
    for name, module in model.named_modules():
        canonical.setdefault(id(module), name)
    by_path = dict(model.named_modules(remove_duplicate=False))

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, module, qualified_name):
            return layer_kind(module) is not None or super().is_leaf_module(module, qualified_name)

    try:
        graph = Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: ask the example pass
        if warn:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"bitsearch could not trace {type(model).__name__} with torch.fx ({reason[:160]})",
                          stacklevel=3)
        return None
    readers: dict[object, list[str]] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in by_path:
            continue
        name = canonical.get(id(by_path[node.target]))
        if name not in wanted or not node.args:
            continue
        source = node.args[0]
        group = readers.setdefault(source, [])
        if name not in group:
            group.append(name)
    groups, taken = [], set()
    for group in readers.values():
        members = [n for n in group if n not in taken]
        if len(members) > 1:
            groups.append(tuple(members))
            taken.update(members)
    return tuple(groups)


def discover(model: nn.Module, example_input, *, granularity: str = "layer",
             weight_bits: Iterable = DEFAULT_WEIGHT_BITS, act_bits: Iterable[int] | None = (8,),
             pin_first_last: int | None = None, model_name: str = "", warn: bool = True,
             scale_group: int | None = None, tie_shared_inputs: bool | None = None,
             pins: Mapping[str, object] | None = None) -> SearchSpace:
    """The search space of ``model``: its Conv1d, Conv2d, Linear and Embedding layers (see
    the module docstring for how they are measured), tied groups, and optional pins.

    ``example_input``: a batch (any batch size; MACs are per sample), or a tuple / dict
    of arguments.  ``weight_bits``: widths and named formats (``4, 8, "fp8_e4m3"``).
    ``scale_group``: None for one scale per kernel, G for one per G weights.
    ``pin_first_last=8`` pins the first and the last layer to 8-bit weights and 8-bit
    activations (float activations when ``act_bits`` is None), with their tied groups.
    ``pins``: more pins, layer name (or an ``fnmatch`` pattern such as ``*embed_tokens``)
    -> weight width or format (activations as ``pin_first_last``'s), or a
    :class:`~bitsearch.space.Pin`.  ``tie_shared_inputs``: tie the layers that read one
    tensor (default: when activations are quantized).  The model is not modified.
    """
    if not isinstance(model, nn.Module):
        raise DiscoveryError(f"discover needs a torch.nn.Module, got {type(model).__name__}")
    layers, kinds, skipped = {}, {}, []
    for name, module in model.named_modules():
        kind = layer_kind(module)
        if kind is not None:
            layers[name], kinds[name] = module, kind
        elif custom_subclass(module):
            skipped.append(name)
    if warn and skipped:
        warnings.warn(f"layers {skipped} subclass Conv/Linear with their own forward; bitsearch leaves them in "
                      "float and out of the search space", stacklevel=2)
    if not layers:
        raise DiscoveryError(f"{type(model).__name__} has no Conv1d, Conv2d, Linear or Embedding layer to quantize")
    records = _measure(model, example_input, layers, kinds)
    never_ran = [name for name in layers if name not in records]
    if warn and never_ran:
        warnings.warn(f"layers {never_ran} did not run on the example input (or are used through their weights "
                      "only); they are left out of the search space", stacklevel=2)
    order = sorted(records, key=lambda n: records[n].order)
    if not order:
        raise DiscoveryError(f"none of {type(model).__name__}'s Conv1d, Conv2d, Linear or Embedding layers ran on "
                             "the example input")
    space_layers = tuple(_layer(name, kinds[name], layers[name], records[name]) for name in order)
    shared = find_tied_groups(model, order, warn=False)
    if shared is None:  # fx cannot trace it: the example pass saw which layers read one tensor
        shared = shared_input_groups(records, order)
    for record in records.values():
        record.first_input = None
    if tie_shared_inputs is None:
        tie_shared_inputs = act_bits is not None
    tied = shared if tie_shared_inputs else ()
    pinned = {}
    pin_act = None if act_bits is None else max(act_bits)
    if pin_first_last is not None:
        act = None if act_bits is None else int(pin_first_last)
        for name in (order[0], order[-1]):
            group = next((g for g in tied if name in g), (name,))
            for member in group:
                pinned[member] = Pin(int(pin_first_last), act)
    for pattern, value in (pins or {}).items():
        matched = [n for n in order if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise DiscoveryError(f"--pin {pattern}: no layer matches (layers: {', '.join(order[:6])}"
                                 f"{', ...' if len(order) > 6 else ''})")
        for name in matched:
            group = next((g for g in tied if name in g), (name,))
            for member in group:
                pinned[member] = value if isinstance(value, Pin) else Pin(value, pin_act)
    return SearchSpace(space_layers, weight_bits=tuple(weight_bits),
                       act_bits=None if act_bits is None else tuple(act_bits), granularity=granularity,
                       tied=tied, pinned=tuple(pinned.items()), model_name=model_name,
                       fingerprint=layers_fingerprint(space_layers), scale_group=scale_group,
                       shared_inputs=shared)
