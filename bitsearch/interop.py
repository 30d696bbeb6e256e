"""Policies to and from other tools' formats: HAWQ-V3 ``bit_config`` dictionaries and
NNCF's per-scope bitwidths.  Plain Python (no torch), except that NNCF scopes name the
class of every enclosing module, which only the model knows: :func:`to_nncf` takes them
as ``module_classes`` or builds the policy's model to read them.

**HAWQ-V3** (``bit_config.py`` of Zhen-Dong/HAWQ) keys one width per quantizer of its
quantized ResNets.  Weights: ``quant_init_block_convbn`` (the stem conv),
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

**NNCF** (``compression.initializer.precision`` with ``"type": "manual"``) lists
``[bits, scope]`` pairs in ``bitwidth_per_scope``.  A weight quantizer's scope is
``Model/Class[name]/.../NNCFConv2d[conv1]/conv2d_0|WEIGHT``; an activation quantizer's
is an operation's output (``op|OUTPUT``) or one of its inputs (``op|INPUTn``).  Export
writes a weight scope per layer, the activation width as ``compression.activations.bits``
when every layer reads the same width, and otherwise a ``layer op|INPUT0`` scope per
layer (NNCF matches those only where its quantizer setup places the activation quantizer
at that input).  Import also reads the older forms (``Model/.../NNCFConv2d[conv1]``,
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
_TV_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv(\d+)|downsample\.0)$")
_HAWQ_BLOCK = re.compile(r"^stage(\d+)\.unit(\d+)\.(?:quant_)?(convbn(\d+)|identity_convbn)$")


def _hawq_unit(name: str):
    """``(stage, unit, conv index or 0 for the shortcut)`` of a layer name, either naming,
    or the strings ``'stem'`` / ``'head'``; None when the name is not a ResNet layer."""
    if name in ("conv1", "init_block_convbn", "quant_init_block_convbn"):
        return "stem"
    if name in ("fc", "output", "quant_output"):
        return "head"
    m = _TV_BLOCK.match(name)
    if m:
        return int(m.group(1)), int(m.group(2)) + 1, int(m.group(4)) if m.group(4) else 0
    m = _HAWQ_BLOCK.match(name)
    if m:
        return int(m.group(1)), int(m.group(2)), int(m.group(4)) if m.group(4) else 0
    return None


def _weight_key(unit) -> str:
    if unit == "stem":
        return "quant_init_block_convbn"
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


def _layer_name(unit, naming: str) -> str:
    if naming == "torchvision":
        if unit == "stem":
            return "conv1"
        if unit == "head":
            return "fc"
        stage, block, conv = unit
        return f"layer{stage}.{block - 1}." + (f"conv{conv}" if conv else "downsample.0")
    if naming == "hawq":
        return _weight_key(unit).replace("quant_", "", 1) if unit in ("stem", "head") else \
            _weight_key(unit).replace(".quant_", ".")
    raise InteropError(f"unknown layer naming {naming!r}; expected 'torchvision' or 'hawq'")


def to_hawq(policy: Policy) -> str:
    """The policy as a HAWQ-V3 ``bit_config`` dictionary (JSON text; also a Python literal)."""
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
                        "(conv1, layerS.U.convK, layerS.U.downsample.0, fc, or HAWQ's stageS.unitU.convbnK names)")
    if per_kernel:
        raise InteropError(f"HAWQ-V3 gives one width per layer, but layers {', '.join(per_kernel[:8])} have "
                           "per-kernel widths; export a layer-granularity policy")
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
        config[_weight_key(unit)] = bits.max_weight_bits
        config[_act_key(unit)] = acts[_act_key(unit)]
        if isinstance(unit, tuple):
            config[f"stage{unit[0]}.unit{unit[1]}.quant_act_int32"] = HAWQ_ACCUMULATOR_BITS
        elif unit == "stem":
            config["quant_act_int32"] = HAWQ_ACCUMULATOR_BITS
    ordered = {key: config[key] for key in sorted(config, key=_hawq_key_order)}
    return json.dumps(ordered, indent=1) + "\n"


def _hawq_key_order(key: str):
    top = {"quant_input": 0, "quant_init_block_convbn": 1, "quant_act_int32": 2}
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


def read_hawq_file(path: str | Path, config_name: str | None = None) -> dict[str, int]:
    """One ``bit_config`` dict from a JSON file or a Python file like HAWQ-V3's
    ``bit_config.py`` (read as literals, never executed).  A file holding several
    configurations needs ``config_name``."""
    path = Path(path)
    return parse_hawq_text(read_text_input(path, "import", error=_file_error(path)), config_name, source=str(path))


def parse_hawq_text(text: str, config_name: str | None = None, *, source: str = "bit_config") -> dict[str, int]:
    """:func:`read_hawq_file` on the text of a file: JSON, else Python literals."""
    try:
        data = parse_json(text, _file_error(source))
    except InteropError:
        if text.lstrip().startswith(("{", "[")) and json_nesting(text) > MAX_NESTING:
            raise
        data = _python_literal_dict(text, source)
    return select_hawq_config(data, config_name, source=source)


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


def select_hawq_config(data: Any, config_name: str | None = None, *, source: str = "bit_config") -> dict[str, int]:
    if not isinstance(data, Mapping) or not data:
        raise InteropError(f"{source}: expected a non-empty dictionary of HAWQ-V3 quantizer names to bits")
    nested = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if nested:
        if config_name is None:
            if len(nested) == 1:
                config_name = next(iter(nested))
            else:
                raise InteropError(f"{source} holds {len(nested)} configurations; pick one with --config "
                                   f"(e.g. {', '.join(map(repr, list(nested)[:4]))})")
        if config_name not in nested:
            raise InteropError(f"{source}: no configuration {config_name!r}; it holds "
                               f"{', '.join(map(repr, list(nested)[:8]))}")
        data = nested[config_name]
    bad = [k for k, v in data.items() if not _is_width(v)]
    if bad:
        raise InteropError(f"{source}: widths must be integers in {IMPORT_WIDTHS.start}..{IMPORT_WIDTHS.stop - 1}; "
                           f"not for {', '.join(map(repr, bad[:8]))}")
    return {str(k): v for k, v in data.items()}


#: the widths an imported file may give (another tool's choice: wider than a search space's)
IMPORT_WIDTHS = range(1, 33)


def _is_width(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in IMPORT_WIDTHS


def from_hawq(config: Mapping[str, int], *, naming: str = "torchvision", model: Mapping | None = None) -> Policy:
    """A layer-granularity policy from a HAWQ-V3 ``bit_config`` dict.

    Every weight key becomes a layer (named per ``naming``); its act width is the
    quantizer feeding it.  Keys that are neither weights, activations feeding a layer nor
    residual accumulators are named in one :class:`InteropError`."""
    weights, acts, unknown = {}, {}, []
    for key, bits in config.items():
        if key == "quant_act_int32" or key.endswith(".quant_act_int32"):
            continue
        if key in ("quant_input", "quant_act_output") or re.match(r"^stage\d+\.unit\d+\.quant_act\d*$", key):
            acts[key] = int(bits)
            continue
        unit = _hawq_unit(key)
        if unit is None:
            unknown.append(key)
        else:
            weights[key] = (unit, int(bits))
    if unknown:
        raise _unmapped("bit_config keys", unknown, "expected HAWQ-V3 ResNet quantizer names such as "
                        "quant_init_block_convbn, stage1.unit1.quant_convbn1, stage2.unit1.quant_identity_convbn, "
                        "stage1.unit1.quant_act, quant_output")
    if not weights:
        raise InteropError("the bit_config names no weight quantizer (quant_init_block_convbn, "
                           "stageS.unitU.quant_convbnK, quant_output ...)")
    bits_out, missing_act = [], []
    used_acts = set()
    for key, (unit, w) in sorted(weights.items(), key=lambda kv: _hawq_key_order(kv[0])):
        act_key = _act_key(unit)
        if act_key not in acts:
            missing_act.append(f"{act_key} (input of {key})")
            continue
        used_acts.add(act_key)
        bits_out.append((_layer_name(unit, naming), LayerBits(w, acts[act_key])))
    if missing_act:
        raise _unmapped("layer inputs", missing_act, "the bit_config lacks the activation quantizers that feed them")
    meta = {"source": {"format": "hawq", "naming": naming}}
    orphans = sorted(set(acts) - used_acts)
    if orphans:  # quantizers whose reader the bit_config does not list: nothing to map them to
        meta["source"]["unread_activation_keys"] = orphans
    if model:
        meta["model"] = dict(model)
    return Policy(tuple(bits_out), "layer", meta)


def rename_policy(policy: Policy, naming: str) -> Policy:
    """The same widths under the other ResNet naming (``torchvision`` or ``hawq``)."""
    out, unmapped = [], []
    for name, bits in policy.bits:
        unit = _hawq_unit(name)
        if unit is None:
            unmapped.append(name)
        else:
            out.append((_layer_name(unit, naming), bits))
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


def _classes_for_policy(policy: Policy) -> tuple[dict[str, str], dict[str, str]]:
    """Module classes and layer kinds of the policy's model, built from its task."""
    name = str((policy.meta.get("model") or {}).get("name") or "")
    if not name:
        raise InteropError("NNCF scopes name the class of every module, so the model is needed, but the "
                           "policy names no model (its 'model.name' is empty); write it with --task "
                           "(bitsearch search/import --task T) so that it names its model")
    from .tasks import get_task
    from .quant.modules import layer_kind

    base, _, mult = name.partition("@x")
    task = get_task(base)
    model = task.build_model(float(mult) if mult else 1.0)
    kinds = {n: layer_kind(m) for n, m in model.named_modules() if layer_kind(m) is not None}
    return module_classes_of(model), kinds


def to_nncf(policy: Policy, *, module_classes: Mapping[str, str] | None = None,
            kinds: Mapping[str, str] | None = None) -> str:
    """An NNCF quantization config fragment with a manual precision initializer."""
    if module_classes is None or kinds is None:
        module_classes, kinds = _classes_for_policy(policy)
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
        pairs += [[bits.act_bits, nncf_scope(name, module_classes, kinds[name]) + "|INPUT0"]
                  for name, bits in policy.bits]
    compression["initializer"] = {"precision": {"type": "manual", "bitwidth_per_scope": pairs}}
    return dumps({"compression": compression})


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
              layer_order: list[str] | None = None) -> Policy:
    """A layer-granularity policy from an NNCF config (or its ``bitwidth_per_scope`` list).

    Weight scopes give the weight widths.  Activation widths: a layer's ``|INPUT0``
    scope, else ``nncf_model_input|OUTPUT`` for the first layer, else
    ``compression.activations.bits``, else ``default_act_bits``.  ``|OUTPUT`` scopes of other
    operations need the traced graph to find their reader and are named in an error."""
    pairs, compression = _find_precision(data)
    weights, inputs, model_input, unmapped = {}, {}, None, []
    for number, pair in enumerate(pairs, start=1):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or not _is_width(pair[0])
                or not isinstance(pair[1], str)):
            raise InteropError(f"bitwidth_per_scope entry {number}: expected [bits, \"scope\"] with bits in "
                               f"{IMPORT_WIDTHS.start}..{IMPORT_WIDTHS.stop - 1}, got {_short(pair)}")
        bits, scope = pair
        path, kind = parse_nncf_scope(scope)
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
                        "traced graph knows; give activation widths as layer |INPUT0 scopes or "
                        "compression.activations.bits")
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
        if name in inputs:
            act = inputs[name]
        elif i == 0 and model_input is not None:
            act = model_input
        elif global_act is not None:
            act = int(global_act)
        else:
            act = default_act_bits
        out.append((name, LayerBits(int(weights[name]), act)))
    meta = {"source": {"format": "nncf"}}
    if model:
        meta["model"] = dict(model)
    return Policy(tuple(out), "layer", meta)
