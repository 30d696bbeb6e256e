"""Policies to and from other tools' formats: HAWQ-V3 ``bit_config`` dictionaries and
NNCF's per-scope bitwidths.  Plain Python (no torch), except that NNCF scopes name the
class of every enclosing module and the op feeding each layer, which only the model knows:
:func:`to_nncf` takes them as arguments or builds the policy's model to read them.

**HAWQ-V3** (``bit_config.py`` of Zhen-Dong/HAWQ) keys one width per quantizer of its
quantized ResNets (:data:`HAWQ_MAPPING` is the one name table).  Weights: ``quant_init_block_convbn``
(the ResNet-18 stem conv; ``quant_init_convbn`` in ResNet-50/101),
``stageS.unitU.quant_convbnK`` (conv K of a residual unit), ``stageS.unitU.quant_identity_convbn``
(the projection shortcut) and ``quant_output`` (the classifier).  Activations, each the
input of the layers that read it: ``quant_input`` (stem input), ``stageS.unitU.quant_act``
(unit input: convbn1 and the shortcut), ``stageS.unitU.quant_actK`` (input of convbn K+1),
``quant_act_output`` (classifier input).  ``quant_act_int32`` keys (top level and per
unit) hold the 16/32-bit residual accumulators: no layer of a policy reads them; export
writes 16 as HAWQ-V3 does, import checks and skips them.

Layer names: torchvision's (``conv1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``,
``fc``) or HAWQ's own module names without the ``quant_`` prefix (``init_block_convbn``,
``stage1.unit1.convbn1``, ``stage2.unit1.identity_convbn``, ``output``), the form of
``fixtures/hawq_v3_resnet18.json``.

**NNCF 2.x** (tested with NNCF 2.19's ``NNCFConfig`` and ``create_compressed_model``; NNCF 3
removed this config format): ``compression.initializer.precision`` with ``"type": "manual"``
lists ``[bits, scope]`` pairs in ``bitwidth_per_scope``, which NNCF matches by substring
against its quantizers' insertion points and refuses when one matches none.  A weight
quantizer's scope is ``Model/Class[name]/.../NNCFConv2d[conv1]/conv2d_0|WEIGHT``; an
activation quantizer sits at the output of the op that feeds a layer
(``Model/.../ReLU[relu]/relu__1|OUTPUT``, ``/nncf_model_input_0|OUTPUT``), found by tracing
the model (:func:`nncf_input_producers`).  Export writes ``target_device`` ``TRIAL`` (the
only device whose hardware config accepts every width), a weight scope per layer, and the
activation width as ``compression.activations.bits`` when every layer reads the same width,
else one ``|OUTPUT`` scope per producer.  Import reads ``|OUTPUT`` scopes with the model
(``--task``), ``|INPUTn`` scopes, and the older forms (``Model/.../NNCFConv2d[conv1]``,
``InsertionType.NNCF_MODULE_PRE_OP ...``, ``.../ModuleDict[pre_ops]/UpdateWeight[0]/...``).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, Mapping

from ._io import MAX_NESTING, json_nesting, load_json_input, parse_json, read_text_input
from .errors import UserInputError
from ._io import dumps
from .policy import LayerBits, Policy

HAWQ_ACCUMULATOR_BITS = 16


class InteropError(UserInputError):
    """A file of another tool that cannot be read, or layers that cannot be mapped."""


def _unmapped(what: str, names, hint: str) -> InteropError:
    names = list(names)
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    return InteropError(f"{len(names)} {what} cannot be mapped: {shown}; {hint}")


# --- HAWQ-V3 -------------------------------------------------------------------------------
# The one mapping table between HAWQ-V3's quantizer names (the module names of its Q_ResNet18,
# Q_ResNet50 and Q_ResNet101 in utils/models/q_resnet.py, which quant_train.py matches
# against bit_config keys exactly, name for name) and torchvision's ResNet layer names.
# S: stage 1..4, U: unit 1.. (torchvision block U-1), K: conv 1..3.  A key HAWQ-V3's model has
# no module for is silently ignored by quant_train.py, so export writes only these keys.
HAWQ_MAPPING = (
    # HAWQ-V3 key                          torchvision layer                   what
    ("quant_init_block_convbn",            "conv1",                            "stem conv, ResNet-18 (Q_ResNet18)"),
    ("quant_init_convbn",                  "conv1",                            "stem conv, ResNet-50/101 (Q_ResNet50/101)"),
    ("stage{S}.unit{U}.quant_convbn{K}",   "layer{S}.{U-1}.conv{K}",           "conv K of a residual unit"),
    ("stage{S}.unit{U}.quant_identity_convbn", "layer{S}.{U-1}.downsample.0",  "projection shortcut"),
    ("quant_output",                       "fc",                               "classifier"),
    ("quant_input",                        "input of conv1",                   "activation"),
    ("stage{S}.unit{U}.quant_act",         "input of layer{S}.{U-1}.conv1 and .downsample.0", "activation"),
    ("stage{S}.unit{U}.quant_act{K}",      "input of layer{S}.{U-1}.conv{K+1}", "activation"),
    ("quant_act_output",                   "input of fc",                      "activation"),
    ("quant_act_int32, stage{S}.unit{U}.quant_act_int32", "(none)",            "16-bit residual accumulator"),
)
HAWQ_STEM_KEYS = {"basic": "quant_init_block_convbn", "bottleneck": "quant_init_convbn"}

_TV_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv(\d+)|downsample\.0)$")
_HAWQ_BLOCK = re.compile(r"^stage(\d+)\.unit(\d+)\.(?:quant_)?(convbn(\d+)|identity_convbn)$")
_STEM_NAMES = {"conv1": None, "init_block_convbn": "basic", "quant_init_block_convbn": "basic",
               "init_convbn": "bottleneck", "quant_init_convbn": "bottleneck"}
_HEAD_NAMES = ("fc", "output", "quant_output")


def _hawq_unit(name: str):
    """``(stage, unit, conv index or 0 for the shortcut)`` of a layer name, either naming,
    or the strings ``'stem'`` / ``'head'``; None when the name is not a ResNet layer."""
    if name in _STEM_NAMES:
        return "stem"
    if name in _HEAD_NAMES:
        return "head"
    m = _TV_BLOCK.match(name)
    if m:
        return int(m.group(1)), int(m.group(2)) + 1, int(m.group(4)) if m.group(4) else 0
    m = _HAWQ_BLOCK.match(name)
    if m:
        return int(m.group(1)), int(m.group(2)), int(m.group(4)) if m.group(4) else 0
    return None


def _block_kind(names) -> str:
    """``bottleneck`` when a unit has a third conv (ResNet-50/101) or the stem is named as
    in Q_ResNet50, else ``basic`` (ResNet-18/34)."""
    for name in names:
        if _STEM_NAMES.get(name) == "bottleneck":
            return "bottleneck"
        unit = _hawq_unit(name)
        if isinstance(unit, tuple) and unit[2] == 3:
            return "bottleneck"
    return "basic"


def _weight_key(unit, blocks: str = "basic") -> str:
    if unit == "stem":
        return HAWQ_STEM_KEYS[blocks]
    if unit == "head":
        return "quant_output"
    stage, block, conv = unit
    suffix = f"quant_convbn{conv}" if conv else "quant_identity_convbn"
    return f"stage{stage}.unit{block}.{suffix}"


def _act_key(unit) -> str:
    if unit == "stem":
        return "quant_input"
    if unit == "head":
        return "quant_act_output"
    stage, block, conv = unit
    suffix = "quant_act" if conv in (0, 1) else f"quant_act{conv - 1}"
    return f"stage{stage}.unit{block}.{suffix}"


def _layer_name(unit, naming: str, blocks: str = "basic") -> str:
    if naming == "torchvision":
        if unit == "stem":
            return "conv1"
        if unit == "head":
            return "fc"
        stage, block, conv = unit
        return f"layer{stage}.{block - 1}." + (f"conv{conv}" if conv else "downsample.0")
    if naming == "hawq":
        key = _weight_key(unit, blocks)
        return key.replace("quant_", "", 1) if unit in ("stem", "head") else key.replace(".quant_", ".")
    raise InteropError(f"unknown layer naming {naming!r}; expected 'torchvision' or 'hawq'")


def _check_resnet_shaped(names) -> None:
    """``conv1`` and ``fc`` are ResNet's stem and head only in a ResNet: a policy whose other
    layers are not residual-unit layers is another model (an error naming them)."""
    units = [_hawq_unit(n) for n in names]
    if not any(isinstance(u, tuple) for u in units):
        raise InteropError("HAWQ-V3 bit_config keys exist for ResNets only, but the policy has no residual-unit "
                           f"layer (layerS.U.convK or stageS.unitU.convbnK); its layers {', '.join(list(names)[:8])} "
                           "are another model's (see the mapping table in docs/interop.md)")


def hawq_config(policy: Policy) -> dict[str, int]:
    """The policy as a HAWQ-V3 ``bit_config`` dictionary, keys in HAWQ-V3's order (see
    :data:`HAWQ_MAPPING`); an :class:`InteropError` names every layer that does not map."""
    config: dict[str, int] = {}
    unmapped, per_kernel, entries = [], [], []
    for name, bits in policy.bits:
        unit = _hawq_unit(name)
        if unit is None:
            unmapped.append(name)
            continue
        if bits.per_kernel and len(set(bits.weight_bits)) > 1:
            per_kernel.append(name)
            continue
        entries.append((unit, bits))
    if unmapped:
        raise _unmapped("layers", unmapped, "HAWQ-V3 bit_config keys exist for ResNet layers only "
                        "(conv1, layerS.U.convK, layerS.U.downsample.0, fc, or HAWQ's stageS.unitU.convbnK names; "
                        "the mapping table is in docs/interop.md)")
    if per_kernel:
        raise InteropError(f"HAWQ-V3 gives one width per layer, but layers {', '.join(per_kernel[:8])} have "
                           "per-kernel widths; export a layer-granularity policy")
    _check_resnet_shaped(policy.names)
    blocks = _block_kind(policy.names)
    acts: dict[str, int] = {}
    for unit, bits in entries:
        if bits.act_bits is None:
            raise InteropError(f"layer {_layer_name(unit, 'torchvision')}: float activations have no "
                               "HAWQ-V3 key (every HAWQ-V3 quantizer is integer)")
        key = _act_key(unit)
        if key in acts and acts[key] != bits.act_bits:
            raise InteropError(f"HAWQ-V3 quantizes {key} once, but the policy gives its readers "
                               f"activation widths {acts[key]} and {bits.act_bits}")
        acts[key] = bits.act_bits
    for unit, bits in entries:
        config[_weight_key(unit, blocks)] = bits.max_weight_bits
        config[_act_key(unit)] = acts[_act_key(unit)]
        if isinstance(unit, tuple):
            config[f"stage{unit[0]}.unit{unit[1]}.quant_act_int32"] = HAWQ_ACCUMULATOR_BITS
        elif unit == "stem":
            config["quant_act_int32"] = HAWQ_ACCUMULATOR_BITS
    return {key: config[key] for key in sorted(config, key=_hawq_key_order)}


def to_hawq(policy: Policy) -> str:
    """The policy as a HAWQ-V3 ``bit_config`` dictionary (JSON text; also a Python literal)."""
    return json.dumps(hawq_config(policy), indent=1) + "\n"


def hawq_config_name(policy: Policy, name: str | None = None) -> str:
    """``bit_config_<arch>_<scheme>``, the key quant_train.py builds from ``--arch`` and
    ``--quant-scheme``: ``name`` when given (``bit_config_`` is prefixed when missing), else
    the policy's model (``resnet18``, ``resnet50`` ...) and the scheme ``bitsearch``."""
    if name:
        return name if name.startswith("bit_config_") else f"bit_config_{name}"
    model = str((policy.meta.get("model") or {}).get("name") or "")
    arch = re.sub(r"[^A-Za-z0-9]+", "", model.split("@")[0]).lower() or \
        ("resnet50" if _block_kind(policy.names) == "bottleneck" else "resnet18")
    return f"bit_config_{arch}_bitsearch"


def to_hawq_module(policy: Policy, name: str | None = None) -> str:
    """The policy as a ``bit_config.py`` module in HAWQ-V3's form: ``bit_config_dict = {NAME:
    {quantizer: bits}}``.  quant_train.py finds it as ``bit_config_dict["bit_config_" +
    args.arch + "_" + args.quant_scheme]``; merge the entry into HAWQ-V3's bit_config.py."""
    from . import __version__

    config = hawq_config(policy)
    key = hawq_config_name(policy, name)
    arch, _, scheme = key[len("bit_config_"):].partition("_")
    model = policy.meta.get("model") or {}
    lines = [f"# HAWQ-V3 bit_config written by bitsearch {__version__}"
             + (f" for model {model.get('name')} ({model.get('fingerprint')})" if model.get("name") else ""),
             "# Merge this entry into HAWQ-V3's bit_config.py; quant_train.py reads it with",
             f"#   --arch {arch or 'ARCH'} --quant-scheme {scheme or 'SCHEME'}",
             "bit_config_dict = {", f"    {key!r}: {{"]
    lines += [f"        {k!r}: {v}," for k, v in config.items()]
    lines += ["    },", "}", ""]
    return "\n".join(lines)


def _hawq_key_order(key: str):
    top = {"quant_input": 0, "quant_init_block_convbn": 1, "quant_init_convbn": 1, "quant_act_int32": 2}
    if key in top:
        return (top[key],)
    if key in ("quant_act_output", "quant_output"):
        return (10**6, key != "quant_act_output")
    m = re.match(r"^stage(\d+)\.unit(\d+)\.(.+)$", key)
    if not m:
        return (10**7, key)
    rank = {"quant_act": 0, "quant_convbn1": 1, "quant_act1": 2, "quant_convbn2": 3, "quant_act2": 4,
            "quant_convbn3": 5, "quant_identity_convbn": 6, "quant_act_int32": 7}.get(m.group(3), 8)
    return (3, int(m.group(1)), int(m.group(2)), rank)


def read_hawq_file(path: str | Path, config_name: str | None = None, *, arch: str | None = None) -> dict[str, int]:
    """One ``bit_config`` dict from a JSON file or a Python file like HAWQ-V3's
    ``bit_config.py`` (read as literals, never executed).  A file holding several
    configurations needs ``config_name`` (see :func:`select_hawq_config`)."""
    path = Path(path)
    return parse_hawq_text(read_text_input(path, "import", error=_file_error(path)), config_name, source=str(path),
                           arch=arch)


def parse_hawq_text(text: str, config_name: str | None = None, *, source: str = "bit_config",
                    arch: str | None = None) -> dict[str, int]:
    """:func:`read_hawq_file` on the text of a file: JSON, else Python literals."""
    try:
        data = parse_json(text, _file_error(source))
    except InteropError:
        if text.lstrip().startswith(("{", "[")) and json_nesting(text) > MAX_NESTING:
            raise
        data = _python_literal_dict(text, source)
    return select_hawq_config(data, config_name, source=source, arch=arch)


def _python_literal_dict(text: str, path) -> Any:
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise InteropError(f"{path}: neither JSON nor Python ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes; expressions nested too deeply
        raise InteropError(f"{path}: neither JSON nor Python ({str(exc) or 'too deeply nested'})") from None
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.Expr)) else None
        if isinstance(value, ast.Dict):
            try:
                return ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                raise InteropError(f"{path}: the dictionary at line {node.lineno} is not made of literals") from None
    raise InteropError(f"{path}: no dictionary found (expected a bit_config dict, as in HAWQ-V3's bit_config.py)")


def _hawq_bits(value):
    """A bit_config value as quant_train.py reads it: an int, or a tuple whose first item is
    the width (``(8, 'hook')`` adds a debugging hook in HAWQ-V3); None when neither."""
    if isinstance(value, (tuple, list)) and value and not isinstance(value[0], bool) and isinstance(value[0], int):
        return value[0]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def select_hawq_config(data: Any, config_name: str | None = None, *, source: str = "bit_config",
                       arch: str | None = None) -> dict[str, int]:
    """The one configuration of ``data``: the dict itself, or, when it holds several named
    ones (``bit_config_dict``), the one named ``config_name`` -- its full name
    (``bit_config_resnet50_bops_0.5``), without ``bit_config_``, or the scheme alone
    (``bops_0.5``) with ``arch`` (``resnet50``), as quant_train.py builds the name from
    ``--arch`` and ``--quant-scheme``.  A file with one configuration needs no name; with
    several and no name, the error lists them all."""
    if not isinstance(data, Mapping) or not data:
        raise InteropError(f"{source}: expected a non-empty dictionary of HAWQ-V3 quantizer names to bits")
    nested = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if nested:
        if config_name is None:
            if len(nested) == 1:
                config_name = next(iter(nested))
            else:
                raise InteropError(f"{source} holds {len(nested)} configurations; pick one with --config: "
                                   f"{', '.join(map(repr, nested))}")
        candidates = [config_name, f"bit_config_{config_name}"]
        if arch:
            candidates.append(f"bit_config_{arch}_{config_name}")
        found = next((c for c in candidates if c in nested), None)
        if found is None:
            raise InteropError(f"{source}: no configuration {config_name!r}; it holds {', '.join(map(repr, nested))}")
        data = nested[found]
    out, bad = {}, []
    for key, value in data.items():
        bits = _hawq_bits(value)
        if bits is None or bits not in IMPORT_WIDTHS:
            bad.append(key)
        else:
            out[str(key)] = bits
    if bad:
        raise InteropError(f"{source}: widths must be integers in {IMPORT_WIDTHS.start}..{IMPORT_WIDTHS.stop - 1} "
                           f"(or HAWQ-V3's (bits, 'hook') pairs); not for {', '.join(map(repr, bad[:8]))}")
    return out


#: the widths an imported file may give (another tool's choice: wider than a search space's)
IMPORT_WIDTHS = range(1, 33)


def _is_width(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in IMPORT_WIDTHS


def from_hawq(config: Mapping[str, int], *, naming: str = "torchvision", model: Mapping | None = None) -> Policy:
    """A layer-granularity policy from a HAWQ-V3 ``bit_config`` dict.

    Every weight key becomes a layer (named per ``naming``, see :data:`HAWQ_MAPPING`); its
    act width is the quantizer feeding it.  Keys that are neither weights, activations
    feeding a layer nor residual accumulators are named in one :class:`InteropError`;
    activation keys that no weight key reads are recorded in the policy's
    ``source.unread_activation_keys``."""
    weights, acts, unknown = {}, {}, []
    for key, value in config.items():
        bits = _hawq_bits(value)
        if bits is None:
            raise InteropError(f"bit_config key {key!r}: width {value!r} is not an integer")
        if key == "quant_act_int32" or key.endswith(".quant_act_int32"):
            continue
        if key in ("quant_input", "quant_act_output") or re.match(r"^stage\d+\.unit\d+\.quant_act\d*$", key):
            acts[key] = int(bits)
            continue
        unit = _hawq_unit(key) if key.startswith(("quant_", "stage")) else None
        if unit is None:
            unknown.append(key)
        else:
            weights[key] = (unit, int(bits))
    if unknown:
        raise _unmapped("bit_config keys", unknown, "expected HAWQ-V3 ResNet quantizer names such as "
                        "quant_init_block_convbn (ResNet-18), quant_init_convbn (ResNet-50/101), "
                        "stage1.unit1.quant_convbn1, stage2.unit1.quant_identity_convbn, stage1.unit1.quant_act, "
                        "quant_output (the mapping table is in docs/interop.md; HAWQ-V3's MobileNetV2 and "
                        "InceptionV3 quantizers have no torchvision counterpart layer for layer)")
    if not weights:
        raise InteropError("the bit_config names no weight quantizer (quant_init_block_convbn, "
                           "stageS.unitU.quant_convbnK, quant_output ...)")
    stems = [k for k in weights if weights[k][0] == "stem"]
    if len(stems) > 1:
        raise InteropError(f"the bit_config names two stems ({', '.join(stems)}): one is ResNet-18's, the other "
                           "ResNet-50's")
    blocks = _block_kind(weights)
    bits_out, missing_act = [], []
    used_acts = set()
    for key, (unit, w) in sorted(weights.items(), key=lambda kv: _hawq_key_order(kv[0])):
        act_key = _act_key(unit)
        if act_key not in acts:
            missing_act.append(f"{act_key} (input of {key})")
            continue
        used_acts.add(act_key)
        bits_out.append((_layer_name(unit, naming, blocks), LayerBits(w, acts[act_key])))
    if missing_act:
        raise _unmapped("layer inputs", missing_act, "the bit_config lacks the activation quantizers that feed them")
    meta = {"source": {"format": "hawq", "naming": naming}}
    orphans = sorted(set(acts) - used_acts)
    if orphans:  # quantizers whose reader the bit_config does not list: kept in the policy's source record
        meta["source"]["unread_activation_keys"] = orphans
    if model:
        meta["model"] = dict(model)
    return Policy(tuple(bits_out), "layer", meta)


def rename_policy(policy: Policy, naming: str) -> Policy:
    """The same widths under the other ResNet naming (``torchvision`` or ``hawq``)."""
    out, unmapped = [], []
    blocks = _block_kind(policy.names)
    for name, bits in policy.bits:
        unit = _hawq_unit(name)
        if unit is None:
            unmapped.append(name)
        else:
            out.append((_layer_name(unit, naming, blocks), bits))
    if unmapped:
        raise _unmapped("layers", unmapped, "only ResNet layer names can be renamed")
    return Policy(tuple(out), policy.granularity, policy.meta)


# --- NNCF -----------------------------------------------------------------------------------
_NNCF_CLASS = {"conv1d": "NNCFConv1d", "conv2d": "NNCFConv2d", "linear": "NNCFLinear"}
_NNCF_OP = {"conv1d": "conv1d_0", "conv2d": "conv2d_0", "linear": "linear_0"}
_SEGMENT = re.compile(r"^([A-Za-z_][\w.]*)\[([^\]]*)\]$")


def nncf_scope(path: str, module_classes: Mapping[str, str], kind: str) -> str:
    """The NNCF node name of layer ``path``: ``Model/Class[a]/Class[b]/NNCFConv2d[c]/conv2d_0``.

    ``module_classes`` maps ``""`` to the model's class and every module path to its class."""
    parts = path.split(".")
    segments = [module_classes[""]]
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        segments.append(f"{module_classes[prefix]}[{parts[i - 1]}]")
    segments.append(f"{_NNCF_CLASS[kind]}[{parts[-1]}]")
    segments.append(_NNCF_OP[kind])
    return "/".join(segments)


def module_classes_of(model) -> dict[str, str]:
    """``{"": model class, path: class}`` for every module of a torch model."""
    return {name: type(module).__name__ for name, module in model.named_modules()}


def nncf_model_facts(task, width_mult: float = 1.0) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """What an NNCF config of ``task``'s model needs: module classes, layer kinds and the
    NNCF name of the op feeding each layer (:func:`nncf_input_producers`)."""
    from .build import architecture
    from .quant.modules import layer_kind

    model, example = architecture(task, width_mult)
    kinds = {n: layer_kind(m) for n, m in model.named_modules() if layer_kind(m) is not None}
    return module_classes_of(model), kinds, nncf_input_producers(model, example)


def _classes_for_policy(policy: Policy) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Module classes, layer kinds and input producers of the policy's model, built from its task."""
    name = str((policy.meta.get("model") or {}).get("name") or "")
    if not name:
        raise InteropError("NNCF scopes name the class of every module, so the model is needed, but the "
                           "policy names no model (its 'model.name' is empty); write it with --task "
                           "(bitsearch search/import --task T) so that it names its model")
    from .tasks import get_task

    base, _, mult = name.partition("@x")
    return nncf_model_facts(get_task(base), float(mult) if mult else 1.0)


# ops through which NNCF moves an activation quantizer up to the op that produced the tensor
# (its QUANTIZATION_AGNOSTIC trait: max pooling, dropout, reshapes, padding ...)
NNCF_AGNOSTIC_OPS = frozenset({"max_pool1d", "max_pool2d", "max_pool3d", "dropout", "flatten", "view", "reshape",
                               "squeeze", "unsqueeze", "transpose", "permute", "pad", "contiguous", "threshold",
                               "expand", "repeat", "max_unpool1d", "max_unpool2d", "max_unpool3d"})
# the layer kinds whose inputs NNCF 2.x quantizes by default (Conv1d is not among them)
NNCF_INPUT_QUANTIZED_KINDS = frozenset({"conv2d", "linear"})
NNCF_MODEL_INPUT = "/nncf_model_input_0"
_NNCF_WRAPPED = {"Conv1d": "NNCFConv1d", "Conv2d": "NNCFConv2d", "Conv3d": "NNCFConv3d", "Linear": "NNCFLinear",
                 "BatchNorm1d": "NNCFBatchNorm1d", "BatchNorm2d": "NNCFBatchNorm2d", "Embedding": "NNCFEmbedding",
                 "ConvTranspose2d": "NNCFConvTranspose2d", "LayerNorm": "NNCFLayerNorm"}


def nncf_input_producers(model, example_input) -> dict[str, str]:
    """For every Conv1d/Conv2d/Linear layer of ``model``, the NNCF node whose output its
    input is, as NNCF names it (``ResNet/Sequential[layer1]/BasicBlock[0]/ReLU[relu]/relu__1``,
    ``/nncf_model_input_0`` for the model input), after skipping the ops NNCF moves
    quantizers through.  Traced with one forward pass: module scopes from forward hooks, op
    names and per-scope call counts from a torch function mode, as NNCF's tracer counts them."""
    import torch
    from torch.overrides import TorchFunctionMode

    from .quant.modules import layer_kind

    names = {id(m): n for n, m in model.named_modules()}
    stack: list[str] = []
    counts: dict[tuple[str, str], int] = {}
    producers: dict[int, tuple[str, str, list]] = {}  # id(tensor) -> (node name, op, input ids)
    keep: list = []  # keeps every traced tensor alive, so that ids are not reused
    inputs_of: dict[str, int] = {}

    def segment(module):
        name = names.get(id(module), "")
        cls = type(module).__name__
        if not name:
            return cls
        return f"{_NNCF_WRAPPED.get(cls, cls)}[{name.rsplit('.', 1)[-1]}]"

    def pre(module, args):
        stack.append(segment(module))
        name = names.get(id(module))
        if name is not None and layer_kind(module) is not None and args and isinstance(args[0], torch.Tensor):
            inputs_of.setdefault(name, id(args[0]))
            keep.append(args[0])

    def post(module, args, output):
        stack.pop()

    class Tracer(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            op = getattr(func, "__name__", str(func))
            if kwargs.get("inplace") is True and not op.endswith("_"):
                op += "_"
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            outs = [out] if isinstance(out, torch.Tensor) else [o for o in out if isinstance(o, torch.Tensor)] \
                if isinstance(out, (tuple, list)) else []
            if outs:
                scope = "/".join(stack)
                index = counts.get((scope, op), 0)
                counts[(scope, op)] = index + 1
                ins = [id(t) for t in tensors]
                for o in outs:
                    if op in NNCF_AGNOSTIC_OPS and id(o) in ins:
                        continue  # an identity (dropout in eval mode): the tensor keeps its producer
                    producers[id(o)] = (f"{scope}/{op}_{index}", op, ins)
                    keep.append(o)
            keep.extend(tensors)
            return out

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), Tracer():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    out = {}
    for layer, tensor_id in inputs_of.items():
        node = NNCF_MODEL_INPUT
        seen = 0
        while tensor_id in producers and seen < 1000:
            name, op, ins = producers[tensor_id]
            if op in NNCF_AGNOSTIC_OPS and ins:
                tensor_id, seen = ins[0], seen + 1
                continue
            node = name
            break
        out[layer] = node
    return out


NNCF_VERSION = "2.19"  # the NNCF whose NNCFConfig / create_compressed_model the export is tested with
NNCF_DEFAULT_TARGET_DEVICE = "TRIAL"
NNCF_TARGET_DEVICES = ("ANY", "CPU", "GPU", "NPU", "CPU_SPR", "TRIAL")


def to_nncf(policy: Policy, *, module_classes: Mapping[str, str] | None = None,
            kinds: Mapping[str, str] | None = None, target_device: str | None = None,
            producers: Mapping[str, str] | None = None) -> str:
    """An NNCF 2.x quantization config with a manual precision initializer.

    ``target_device`` (default ``TRIAL``): NNCF checks every width of a manual
    initializer against the device's hardware config, and only ``TRIAL`` has none (the
    others allow 8 bits, some also 4), so a mixed-precision policy needs ``TRIAL``.

    Activations: one width for all goes to ``compression.activations.bits``; mixed widths
    become ``[bits, "<producer>|OUTPUT"]`` entries, NNCF's activation quantizers, which sit
    at the output of the op that feeds a layer (``producers``: layer -> that op's NNCF node
    name, from :func:`nncf_input_producers`; built from the policy's task when missing).
    Layers that read one tensor share its quantizer, so they need one width; NNCF does not
    quantize the inputs of Conv1d layers, so their widths cannot be given (an error)."""
    device = (target_device or NNCF_DEFAULT_TARGET_DEVICE).upper()
    if device not in NNCF_TARGET_DEVICES:
        raise InteropError(f"unknown NNCF target device {target_device!r}; NNCF {NNCF_VERSION} knows "
                           f"{', '.join(NNCF_TARGET_DEVICES)}")
    if module_classes is None or kinds is None:
        module_classes, kinds, producers = _classes_for_policy(policy)
    unmapped, per_kernel = [], []
    for name, bits in policy.bits:
        if name not in kinds or any(p not in module_classes for p in _prefixes(name)):
            unmapped.append(name)
        elif bits.per_kernel and len(set(bits.weight_bits)) > 1:
            per_kernel.append(name)
    if unmapped:
        raise _unmapped("layers", unmapped, "they are not Conv1d/Conv2d/Linear modules of the policy's model")
    if per_kernel:
        raise InteropError(f"NNCF gives one width per weight quantizer, but layers {', '.join(per_kernel[:8])} "
                           "have per-kernel widths; export a layer-granularity policy")
    pairs = [[bits.max_weight_bits, nncf_scope(name, module_classes, kinds[name]) + "|WEIGHT"]
             for name, bits in policy.bits]
    acts = {bits.act_bits for _, bits in policy.bits}
    compression: dict[str, Any] = {"algorithm": "quantization",
                                   "weights": {"mode": "symmetric", "per_channel": True}}
    if None in acts and len(acts) > 1:
        raise InteropError("NNCF quantizes every activation or none: the policy mixes float and integer "
                           "activations")
    if acts == {None}:
        raise InteropError("the policy leaves activations in float; this export writes NNCF configs "
                           "with integer activations only")
    if len(acts) == 1:
        compression["activations"] = {"mode": "symmetric", "bits": next(iter(acts))}
    else:
        compression["activations"] = {"mode": "symmetric"}
        pairs += _nncf_activation_pairs(policy, producers, kinds)
    compression["initializer"] = {"precision": {"type": "manual", "bitwidth_per_scope": pairs}}
    return dumps({"target_device": device, "compression": compression})


def _nncf_activation_pairs(policy: Policy, producers, kinds) -> list:
    if producers is None:
        raise InteropError("mixed activation widths go to NNCF's activation quantizers, whose names come from "
                           "the model's traced graph: export with --task")
    by_node: dict[str, dict[str, int]] = {}
    unquantized = []
    for name, bits in policy.bits:
        if kinds.get(name) not in NNCF_INPUT_QUANTIZED_KINDS:
            unquantized.append(name)
            continue
        if name not in producers:
            raise InteropError(f"layer {name!r} never ran in the traced forward pass: its input has no NNCF name")
        by_node.setdefault(producers[name], {})[name] = bits.act_bits
    if unquantized:
        widths = {policy[n].act_bits for n in unquantized}
        raise InteropError(f"NNCF {NNCF_VERSION} does not quantize the inputs of {', '.join(unquantized[:6])} "
                           f"({'/'.join(sorted({kinds.get(n) or '?' for n in unquantized}))}), so their activation "
                           f"widths ({', '.join(map(str, sorted(widths)))}) cannot be given; export a policy with one "
                           "activation width")
    pairs = []
    for node, readers in by_node.items():
        if len(set(readers.values())) > 1:
            raise InteropError(f"NNCF quantizes {node} once, but its readers {', '.join(readers)} have activation "
                               f"widths {', '.join(map(str, readers.values()))}")
        pairs.append([next(iter(readers.values())), f"{node}|OUTPUT"])
    return pairs


def _prefixes(path: str):
    parts = path.split(".")
    return [""] + [".".join(parts[:i]) for i in range(1, len(parts))]


def parse_nncf_scope(scope: str) -> tuple[str, str]:
    """``(module path, quantizer kind)`` of an NNCF scope; kind is ``weight``, ``input``
    (``|INPUTn`` of the layer's op), ``output`` (``|OUTPUT``) or ``model_input``."""
    text = str(scope).strip()
    text = re.sub(r"^(InsertionType|TargetType)\.\w+\s+", "", text)
    kind = "weight"
    if "|" in text:
        text, suffix = text.rsplit("|", 1)
        if suffix == "WEIGHT":
            kind = "weight"
        elif suffix.startswith("INPUT"):
            kind = "input"
        elif suffix == "OUTPUT":
            kind = "output"
        else:
            raise InteropError(f"NNCF scope {scope!r}: unknown quantizer suffix |{suffix}")
    segments = [s for s in text.split("/") if s]
    if kind == "output" and segments and segments[-1].startswith("nncf_model_input"):
        return "", "model_input"
    cut = [i for i, s in enumerate(segments) if s.startswith("ModuleDict[pre_ops]")]
    if cut:
        segments = segments[:cut[0]]
    names = []
    for segment in segments[1:]:
        m = _SEGMENT.match(segment)
        if m:
            names.append(m.group(2))
    if not names:
        raise InteropError(f"NNCF scope {scope!r} names no module")
    return ".".join(names), kind


def read_nncf_file(path: str | Path) -> dict:
    path = Path(path)
    return load_json_input(path, "import", error=_file_error(path))


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _file_error(path):
    return lambda message: InteropError(f"{path}: {message}")


def _find_precision(data: Any) -> tuple[list, Mapping]:
    """``bitwidth_per_scope`` and the ``compression`` section, wherever they sit in a config."""
    if isinstance(data, list):
        return data, {}
    if not isinstance(data, Mapping):
        raise InteropError("an NNCF config must be a JSON object")
    compression = data.get("compression", data)
    if isinstance(compression, list):
        compression = next((c for c in compression if isinstance(c, Mapping)
                            and c.get("algorithm") == "quantization"), {})
    pairs = None
    if "bitwidth_per_scope" in data:
        pairs = data["bitwidth_per_scope"]
    else:
        pairs = _section(_section(_section(compression, "initializer"), "precision"), "bitwidth_per_scope")
    if not isinstance(pairs, list) or not pairs:
        raise InteropError("no compression.initializer.precision.bitwidth_per_scope list in the NNCF config")
    return pairs, compression if isinstance(compression, Mapping) else {}


def _section(mapping: Any, key: str) -> Any:
    """``mapping[key]`` where ``mapping`` is a mapping holding it (a missing or misshapen
    section reads as empty, so the caller's message says what is missing)."""
    value = mapping.get(key) if isinstance(mapping, Mapping) else None
    return {} if value is None else value


def from_nncf(data: Any, *, default_act_bits: int | None = 8, model: Mapping | None = None,
              layer_order: list[str] | None = None, producers: Mapping[str, str] | None = None) -> Policy:
    """A layer-granularity policy from an NNCF config (or its ``bitwidth_per_scope`` list).

    Weight scopes give the weight widths.  Activation widths: the ``op|OUTPUT`` quantizer
    of the op feeding a layer (``producers``: layer -> that op's NNCF name, from
    :func:`nncf_input_producers` on the model; quantizers that feed no layer, such as those
    NNCF puts on a residual add's inputs, are listed in ``source.unread_activation_scopes``),
    else a layer's ``|INPUT0`` scope, else ``nncf_model_input|OUTPUT`` for the first layer,
    else ``compression.activations.bits``, else ``default_act_bits``.  Without ``producers``
    other ops' ``|OUTPUT`` scopes cannot be placed and are named in an error."""
    pairs, compression = _find_precision(data)
    weights, inputs, model_input, unmapped = {}, {}, None, []
    readers: dict[str, list[str]] = {}
    for layer, node in (producers or {}).items():
        readers.setdefault(node, []).append(layer)
    outputs: dict[str, int] = {}
    unread: list[str] = []
    for number, pair in enumerate(pairs, start=1):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or not _is_width(pair[0])
                or not isinstance(pair[1], str)):
            raise InteropError(f"bitwidth_per_scope entry {number}: expected [bits, \"scope\"] with bits in "
                               f"{IMPORT_WIDTHS.start}..{IMPORT_WIDTHS.stop - 1}, got {_short(pair)}")
        bits, scope = pair
        path, kind = parse_nncf_scope(scope)
        if producers is not None and kind in ("output", "model_input"):
            node = re.sub(r"^(InsertionType|TargetType)\.\w+\s+", "", str(scope).strip()).rsplit("|", 1)[0]
            if node in readers:
                for layer in readers[node]:
                    outputs[layer] = bits
            else:
                unread.append(scope)
            continue
        if kind == "weight":
            weights[path] = bits
        elif kind == "input":
            inputs[path] = bits
        elif kind == "model_input":
            model_input = bits
        else:
            unmapped.append(scope)
    if unmapped:
        raise _unmapped("activation scopes", unmapped, "an operation's |OUTPUT quantizer feeds layers only the "
                        "traced graph knows: import with --task (the model is traced to place them)")
    orphans = sorted(set(inputs) - set(weights))
    if orphans:
        raise _unmapped("input scopes", orphans, "they name layers without a weight scope")
    if not weights:
        raise InteropError("the NNCF config names no weight quantizer (scopes ending in |WEIGHT)")
    global_act = _section(_section(compression, "activations"), "bits")
    global_act = None if global_act == {} else global_act
    if global_act is not None and not _is_width(global_act):
        raise InteropError(f"compression.activations.bits must be an integer in {IMPORT_WIDTHS.start}.."
                           f"{IMPORT_WIDTHS.stop - 1}, not {_short(global_act)}")
    names = list(weights)
    if layer_order:
        rank = {n: i for i, n in enumerate(layer_order)}
        names.sort(key=lambda n: rank.get(n, len(rank)))
    out = []
    for i, name in enumerate(names):
        if name in outputs:
            act = outputs[name]
        elif name in inputs:
            act = inputs[name]
        elif i == 0 and model_input is not None:
            act = model_input
        elif global_act is not None:
            act = int(global_act)
        else:
            act = default_act_bits
        out.append((name, LayerBits(int(weights[name]), act)))
    meta = {"source": {"format": "nncf"}}
    if unread:
        meta["source"]["unread_activation_scopes"] = unread
    if model:
        meta["model"] = dict(model)
    return Policy(tuple(out), "layer", meta)
