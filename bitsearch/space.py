"""Layers and search spaces: the data every searcher reads.

A :class:`SearchSpace` says which layers are quantized, which weight widths each
decision unit may take (one unit per layer, or per output kernel), which activation
widths a layer may take (searched, fixed, or float), which layers must share a width
(``tied``) and which are pinned to fixed widths.  It round-trips through JSON.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from typing import Iterable, Mapping

from . import formats
from .errors import SpaceError

KINDS = ("conv1d", "conv2d", "linear", "embedding")
GRANULARITIES = ("layer", "kernel")
FLOAT_BITS = 32  # what cost models charge for a float operand


@dataclass(frozen=True)
class Layer:
    """One quantizable layer (a Conv1d, Conv2d, Linear or Embedding module).

    ``params`` counts the weight elements (what gets quantized); ``bias_params`` the
    bias, which stays in 32-bit.  ``macs`` are per sample.  ``kernels`` is the number of
    output channels: one kernel is the slice of weights that produces one output channel
    (for an embedding: one row, the vector of one token; its ``macs`` are 0, a lookup).
    """

    name: str
    kind: str
    params: int
    macs: int
    kernels: int
    in_channels: int = 0
    out_channels: int = 0
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    groups: int = 1
    in_features: int = 0
    out_spatial: tuple[int, ...] = ()
    bias_params: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SpaceError(f"layer {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kernels < 1 or self.params < 0 or self.macs < 0:
            raise SpaceError(f"layer {self.name!r}: kernels must be >= 1 and params, macs >= 0")
        for name in _SHAPE_FIELDS:
            value = getattr(self, name)
            if value.__class__ is not tuple or (value and set(map(type, value)) != _INT_ONLY):
                object.__setattr__(self, name, tuple(int(v) for v in value))

    @property
    def params_per_kernel(self) -> float:
        return self.params / self.kernels

    @property
    def fan_in(self) -> int:
        """Weights per kernel: the length of the rows scale groups are cut from."""
        return self.params // self.kernels

    def to_dict(self) -> dict:
        get = self.__dict__
        return {name: list(get[name]) if name in _SHAPE_FIELDS else get[name] for name in _LAYER_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Layer":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SpaceError(f"layer {data.get('name', '?')!r}: unknown fields {sorted(unknown)}")
        try:
            return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})
        except TypeError as exc:
            raise SpaceError(f"layer {data.get('name', '?')!r}: {exc}") from None


_LAYER_FIELDS = tuple(f.name for f in fields(Layer))
_SHAPE_FIELDS = ("kernel_size", "stride", "out_spatial")
_INT_ONLY = {int}


@dataclass(frozen=True)
class Pin:
    """Fixed widths for one layer: ``act_bits`` None means float activations."""

    weight_bits: int
    act_bits: int | None


@dataclass(frozen=True)
class WeightUnit:
    """One weight decision: a layer (or tied group of layers), or one kernel of a layer."""

    layers: tuple[int, ...]  # indices into SearchSpace.layers
    kernel: int | None = None  # None: the whole layer(s)


@dataclass(frozen=True)
class SearchSpace:
    """What may be chosen.

    ``act_bits``: a tuple of activation widths.  One value means activations are fixed
    at that width (not searched); several mean searched per layer; ``None`` means
    activations stay in float.
    ``tied``: groups of layer names that read the same tensor; they always share the
    activation width, and at layer granularity also the weight width.  (At kernel
    granularity each kernel is its own decision, so only activations are shared.)
    ``pinned``: layer name -> :class:`Pin`; pinned layers are not searched and may use
    widths outside the choices (e.g. first and last layer at 8 bits).
    ``weight_bits`` may mix integer widths and named formats (``fp8_e4m3``, ``nvfp4``,
    ``mxfp4``: see :mod:`bitsearch.formats`); choices are kept in order of bits per
    weight (:func:`bitsearch.formats.sort_key`), so ``weight_bits[0]`` is the narrowest
    and ``weight_bits[-1]`` the widest.  Named formats need layer granularity.
    ``scale_group``: the scale granularity of integer widths and ``fp8_e4m3``: None for
    one fp32 scale per kernel, or G for one fp16 scale per G weights along each kernel's
    input (32, 64, 128...); the ``size`` and ``bits`` costs count the scales.
    ``shared_inputs``: groups of layers found to read the same tensor (q/k/v of an
    attention block, gate/up of a SwiGLU MLP), offered as tie candidates: those in
    ``tied`` are tied, the others may take different widths.
    """

    layers: tuple[Layer, ...]
    weight_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    act_bits: tuple[int, ...] | None = (8,)
    granularity: str = "layer"
    tied: tuple[tuple[str, ...], ...] = ()
    pinned: tuple[tuple[str, Pin], ...] = ()
    model_name: str = ""
    fingerprint: str = ""
    scale_group: int | None = None
    shared_inputs: tuple[tuple[str, ...], ...] = ()
    _index: dict = field(default=None, init=False, repr=False, compare=False, hash=False)
    # derived arrays (layer facts, cost columns...), computed once per space: see cached()
    _cache: dict = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        problems = []
        choices = []
        for b in self.weight_bits:
            b = formats.normalize_choice(b)
            try:
                formats.check_choice(b)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            choices.append(b)
        object.__setattr__(self, "weight_bits", formats.sort_choices(choices))
        if self.act_bits is not None:
            object.__setattr__(self, "act_bits", tuple(sorted({int(b) for b in self.act_bits})))
        object.__setattr__(self, "tied", tuple(tuple(g) for g in self.tied))
        object.__setattr__(self, "shared_inputs", tuple(tuple(g) for g in self.shared_inputs))
        pinned = self.pinned.items() if isinstance(self.pinned, Mapping) else self.pinned
        pinned = tuple(sorted((str(n), p if isinstance(p, Pin) else Pin(*p)) for n, p in pinned))
        object.__setattr__(self, "pinned", pinned)
        if not self.layers:
            problems.append("the space has no layers")
        if not self.weight_bits:
            problems.append("no weight-bit choices")
        for bits in self.act_bits or ():
            if not 1 <= bits <= 32:
                problems.append(f"bit width {bits} is outside 1..32")
        named = [b for b in self.weight_bits if formats.is_named(b)]
        if named and self.granularity != "layer":
            problems.append(f"named formats ({', '.join(named)}) are chosen per layer (a tensor has one format): "
                            "use layer granularity")
        try:
            formats.check_scale_group(self.scale_group)
        except ValueError as exc:
            problems.append(str(exc))
        if self.act_bits is not None and not self.act_bits:
            problems.append("act_bits is empty: give widths, or None for float activations")
        if self.granularity not in GRANULARITIES:
            problems.append(f"granularity {self.granularity!r} is not 'layer' or 'kernel'")
        index = {}
        for i, layer in enumerate(self.layers):
            if layer.name in index:
                problems.append(f"layer {layer.name!r} appears twice")
            index[layer.name] = i
        seen_in_group = {}
        for group in self.tied:
            for name in group:
                if name not in index:
                    problems.append(f"tied layer {name!r} is not a layer of the space")
                elif name in seen_in_group:
                    problems.append(f"layer {name!r} is in two tied groups")
                seen_in_group[name] = group
        for name, pin in self.pinned:
            if name not in index:
                problems.append(f"pinned layer {name!r} is not a layer of the space")
            elif isinstance(pin.weight_bits, str):
                try:
                    formats.check_choice(pin.weight_bits)
                except ValueError as exc:
                    problems.append(f"pinned layer {name!r}: {exc}")
            elif isinstance(pin.weight_bits, bool) or not isinstance(pin.weight_bits, int) \
                    or not 1 <= pin.weight_bits <= 32:
                problems.append(f"pinned layer {name!r}: weight bits {pin.weight_bits!r} are not a width in 1..32")
            bits = pin.act_bits
            if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32):
                problems.append(f"pinned layer {name!r}: activation bits {bits!r} are not a width in 1..32")
        for group in self.shared_inputs:
            for name in group:
                if name not in index:
                    problems.append(f"layer {name!r} of a shared-input group is not a layer of the space")
        pinned_names = {n for n, _ in self.pinned}
        for group in self.tied:
            inside = [n for n in group if n in pinned_names]
            if inside and len(inside) != len(group):
                problems.append(f"tied group {list(group)} is partly pinned: pin all or none")
        if problems:
            raise SpaceError("; ".join(problems))
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_cache", {})

    def __getstate__(self):  # derived arrays are not pickled (a worker computes its own)
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state):
        for key, value in state.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_cache", {})

    def cached(self, key, make):
        """``make()``, computed once for this space and kept under ``key`` (the space is frozen,
        so anything derived from it alone can be kept with it)."""
        try:
            return self._cache[key]
        except KeyError:
            value = self._cache[key] = make()
            return value

    def layer_facts(self):
        """numpy arrays over the layers (in order): ``params``, ``macs``, ``kernels``,
        ``bias_params`` (int64), ``free`` (bool: not pinned) and ``kernel_start`` (the index of
        each layer's first kernel when every kernel of every layer is numbered in order;
        one entry more than there are layers).  Computed once per space."""
        def make():
            import numpy as np

            layers = self.layers
            facts = {name: np.fromiter((getattr(layer, name) for layer in layers), dtype=np.int64, count=len(layers))
                     for name in ("params", "macs", "kernels", "bias_params")}
            pins = self.pins
            facts["free"] = np.fromiter((layer.name not in pins for layer in layers), dtype=bool, count=len(layers))
            facts["kernel_start"] = np.concatenate([[0], np.cumsum(facts["kernels"])])
            for value in facts.values():
                value.flags.writeable = False
            return facts
        return self.cached("layer_facts", make)

    # --- lookups -------------------------------------------------------------------
    def layer(self, name: str) -> Layer:
        return self.layers[self._index[name]]

    def index_of(self, name: str) -> int:
        return self._index[name]

    @property
    def names(self) -> tuple[str, ...]:
        return self.cached("names", lambda: tuple(layer.name for layer in self.layers))

    @property
    def pins(self) -> dict[str, Pin]:
        return dict(self.pinned)

    @property
    def act_searched(self) -> bool:
        return self.act_bits is not None and len(self.act_bits) > 1

    @property
    def act_choices(self) -> tuple[int | None, ...]:
        """The activation widths a free layer may take (``(None,)`` for float)."""
        return (None,) if self.act_bits is None else self.act_bits

    def is_pinned(self, name: str) -> bool:
        return name in self.cached("pinned_names", lambda: frozenset(n for n, _ in self.pinned))

    def free_layers(self) -> tuple[int, ...]:
        def make():
            pins = self.pins
            return tuple(i for i, layer in enumerate(self.layers) if layer.name not in pins)
        return self.cached("free_layers", make)

    def groups(self) -> tuple[tuple[int, ...], ...]:
        """Free layers grouped by ties (each untied layer is a group of one), in layer order."""
        return self.cached("groups", self._groups)

    def _groups(self) -> tuple[tuple[int, ...], ...]:
        pins = self.pins
        group_of = {}
        for group in self.tied:
            idx = tuple(sorted(self._index[n] for n in group))
            for i in idx:
                group_of[i] = idx
        out, seen = [], set()
        for i, layer in enumerate(self.layers):
            if layer.name in pins or i in seen:
                continue
            group = group_of.get(i, (i,))
            seen.update(group)
            out.append(group)
        return tuple(out)

    def weight_units(self) -> tuple[WeightUnit, ...]:
        """The weight decisions: one per tied group (layer granularity) or per kernel."""
        if self.granularity == "layer":
            return tuple(WeightUnit(group) for group in self.groups())
        return tuple(WeightUnit((i,), k) for i in self.free_layers()
                     for k in range(self.layers[i].kernels))

    def num_weight_units(self) -> int:
        """``len(self.weight_units())``, without building them (a million kernels are cheap to count)."""
        if self.granularity == "layer":
            return len(self.groups())
        facts = self.layer_facts()
        return int(facts["kernels"][facts["free"]].sum())

    def num_decisions(self) -> int:
        """Weight units plus activation units (when activations are searched)."""
        n = self.num_weight_units()
        if self.act_searched:
            n += len(self.groups())
        return n

    def num_policies(self) -> int:
        """How many distinct policies the space holds (can be astronomically large)."""
        n = len(self.weight_bits) ** self.num_weight_units()
        if self.act_searched:
            n *= len(self.act_bits) ** len(self.groups())
        return n

    # --- derived spaces ------------------------------------------------------------
    def with_(self, **changes) -> "SearchSpace":
        return replace(self, **changes)

    # --- JSON --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema": "bitsearch-space",
            "schema_version": 1,
            "model": {"name": self.model_name, "fingerprint": self.fingerprint},
            "granularity": self.granularity,
            "weight_bits": list(self.weight_bits),
            "act_bits": None if self.act_bits is None else list(self.act_bits),
            "tied": [list(g) for g in self.tied],
            "pinned": {n: {"weight_bits": p.weight_bits, "act_bits": p.act_bits} for n, p in self.pinned},
            "layers": [layer.to_dict() for layer in self.layers],
        } | ({"scale_group": self.scale_group} if self.scale_group is not None else {}) \
          | ({"shared_inputs": [list(g) for g in self.shared_inputs]} if self.shared_inputs else {})

    @classmethod
    def from_dict(cls, data: Mapping) -> "SearchSpace":
        if data.get("schema") != "bitsearch-space":
            raise SpaceError("not a bitsearch space: 'schema' must be 'bitsearch-space'")
        if data.get("schema_version") != 1:
            raise SpaceError(f"space schema_version {data.get('schema_version')!r} is not supported (expected 1)")
        model = data.get("model") or {}
        return cls(
            layers=tuple(Layer.from_dict(d) for d in data["layers"]),
            weight_bits=tuple(data["weight_bits"]),
            act_bits=None if data.get("act_bits") is None else tuple(data["act_bits"]),
            granularity=data.get("granularity", "layer"),
            tied=tuple(tuple(g) for g in data.get("tied", ())),
            pinned=tuple((n, Pin(p["weight_bits"], p.get("act_bits"))) for n, p in data.get("pinned", {}).items()),
            model_name=model.get("name", ""),
            fingerprint=model.get("fingerprint", ""),
            scale_group=data.get("scale_group"),
            shared_inputs=tuple(tuple(g) for g in data.get("shared_inputs", ())),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "SearchSpace":
        return cls.from_dict(json.loads(text))


def layers_fingerprint(layers: Iterable[Layer]) -> str:
    """A fingerprint of the layer structure (names, kinds, shapes): ``sha256:...``.

    The digest of ``json.dumps([layer.to_dict() ...], sort_keys=True)``, written here field
    by field with the same text (a few microseconds a layer; checked against json.dumps)."""
    layers = list(layers)
    try:
        payload = "[" + ", ".join(map(_layer_json, layers)) + "]"
    except _NotPlain:
        payload = json.dumps([layer.to_dict() for layer in layers], sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()[:16]


class _NotPlain(Exception):
    pass


_SORTED_FIELDS = tuple(sorted(_LAYER_FIELDS))


def _layer_json(layer: Layer) -> str:
    """``json.dumps(layer.to_dict(), sort_keys=True)`` for a layer of plain ints and strs."""
    get = layer.__dict__
    values = []
    for name in _SORTED_FIELDS:
        value = get[name]
        kind = value.__class__
        if kind is int:
            values.append(value)
        elif kind is str:
            values.append(_encode_str(value))
        elif kind is tuple and (not value or set(map(type, value)) <= _INT_ONLY):
            values.append("[" + ", ".join(map(int.__repr__, value)) + "]")
        else:
            raise _NotPlain
    return _LAYER_TEMPLATE % tuple(values)


_encode_str = json.encoder.encode_basestring_ascii
_LAYER_TEMPLATE = "{" + ", ".join(f'"{name}": ' + ("%s" if name in _SHAPE_FIELDS or name in ("name", "kind")
                                                   else "%d") for name in _SORTED_FIELDS) + "}"


def parse_bits(text: str, *, allow_none: bool = False) -> tuple[int, ...] | None:
    """Parse ``2,3,4,8`` or ``2-8`` (or ``none`` when allowed) into a tuple of widths."""
    from .errors import UserInputError

    raw = str(text).strip().lower()
    if allow_none and raw in ("none", "float", "fp32"):
        return None
    out = set()
    try:
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = part.split("-", 1)
                lo, hi = int(lo), int(hi)
                if lo > hi:
                    raise ValueError
                out.update(range(max(lo, 0), min(hi, 17) + 1))  # widths outside 1..16 are refused below
                out.update(b for b in (lo, hi) if not 1 <= b <= 16)
            else:
                out.add(int(part))
    except ValueError:
        expected = "a list like 2,3,4,8 or a range like 2-8" + (" or 'none'" if allow_none else "")
        raise UserInputError(f"bit widths {text!r} do not parse: expected {expected}") from None
    if not out:
        raise UserInputError(f"bit widths {text!r} are empty")
    bad = sorted(b for b in out if not 1 <= b <= 16)
    if bad:
        raise UserInputError(f"bit widths {bad} are outside 1..16")
    return tuple(sorted(out))


def parse_weight_choices(text: str) -> tuple:
    """Parse weight choices: ``2-8``, ``2,3,4,8``, or widths mixed with named formats
    (``4,8,fp8_e4m3``; see :mod:`bitsearch.formats`), in order of bits per weight."""
    return formats.parse_choices(text)
