"""Policies: the widths chosen for every layer, and their versioned JSON form.

A :class:`Policy` is frozen and hashable; two policies are equal when they choose the
same widths for the same layers, whatever metadata (costs, metrics, search facts) they
carry.  ``policy.key`` is a stable hash of the widths, used by caches and journals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import formats
from ._io import atomic_write_text, dumps, parse_json, read_input, stable_key
from .errors import PolicyError
from .space import SearchSpace

_PAIR = {tuple}
_STR = {str}
_first = itemgetter(0)

SCHEMA = "bitsearch-policy"
SCHEMA_VERSION = 1
# fields whose values depend on wall-clock time: left out of canonical_json()
TIMING_FIELDS = ("seconds",)


@dataclass(frozen=True)
class LayerBits:
    """Widths of one layer: ``weight_bits`` an int, a named format (``"nvfp4"``: see
    :mod:`bitsearch.formats`), or a tuple with one int per kernel; ``act_bits`` an int, or
    None for float activations."""

    weight_bits: int | str | tuple[int, ...]
    act_bits: int | None

    def __post_init__(self):
        w = self.weight_bits
        if w.__class__ is int:
            pass
        elif isinstance(w, (list, tuple)):
            w = tuple(map(int, w))
            object.__setattr__(self, "weight_bits", w)
        elif isinstance(w, str):
            object.__setattr__(self, "weight_bits", formats.normalize_choice(w))
        elif w is not None:
            object.__setattr__(self, "weight_bits", int(w))
        a = self.act_bits
        if a is not None and a.__class__ is not int:
            object.__setattr__(self, "act_bits", int(a))

    @property
    def per_kernel(self) -> bool:
        return isinstance(self.weight_bits, tuple)

    def kernel_bits(self, kernels: int) -> tuple[int, ...]:
        """The width of each kernel (an int width is repeated ``kernels`` times)."""
        if self.per_kernel:
            return self.weight_bits
        return (self.weight_bits,) * kernels

    @property
    def max_weight_bits(self) -> int:
        """The widest kernel's width (a named format's element bits)."""
        return max(self.weight_bits) if self.per_kernel else formats.element_bits(self.weight_bits)

    @property
    def mean_weight_bits(self) -> float:
        """The mean width over kernels (a named format: its bits per weight without per-kernel
        scales, e.g. 4.5 for nvfp4)."""
        if self.per_kernel:
            return sum(self.weight_bits) / len(self.weight_bits)
        return formats.nominal_bits(self.weight_bits)


@dataclass(frozen=True)
class Policy:
    """Widths for every layer, plus metadata.

    ``bits``: ordered ``(layer name, LayerBits)`` pairs (the layer order of the space).
    ``meta``: the optional JSON sections (``model``, ``budgets``, ``costs``,
    ``metrics``, ``search``); it does not take part in equality or hashing.
    ``scale_group``: the scale granularity the widths are meant with (None: one scale per
    kernel, or unstated -- :func:`validate_policy` then takes the space's; G: one fp16
    scale per G weights, see :mod:`bitsearch.formats`).
    """

    bits: tuple[tuple[str, LayerBits], ...]
    granularity: str = "layer"
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    scale_group: int | None = None
    # name -> LayerBits (built on first lookup) and arrays derived for a space (cost/)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        bits = self.bits.items() if isinstance(self.bits, Mapping) else self.bits
        if not (bits.__class__ is tuple and set(map(type, bits)) <= _PAIR and set(map(type, map(_first, bits))) <= _STR):
            bits = tuple((n if n.__class__ is str else str(n), b) for n, b in bits)  # (a tuple of pairs is kept)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "meta", dict(self.meta))

    def __getstate__(self):  # the lookups and arrays are rebuilt where they are needed
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state):
        for key, value in state.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_cache", {})

    # --- access -----------------------------------------------------------------------
    def _lookup(self) -> dict[str, LayerBits]:
        index = self._cache.get("index")
        if index is None:
            index = self._cache["index"] = dict(self.bits)
        return index

    def __getitem__(self, name: str) -> LayerBits:
        return self._lookup()[name]

    def __contains__(self, name) -> bool:
        return name in self._lookup()

    def get(self, name: str, default=None):
        return self._lookup().get(name, default)

    def as_dict(self) -> dict[str, LayerBits]:
        return dict(self._lookup())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.bits)

    @property
    def key(self) -> str:
        """A stable hash of the widths and the scale granularity (not of the metadata)."""
        key = self._cache.get("key")
        if key is None:
            key = self._cache["key"] = self._key()
        return key

    def _key(self) -> str:
        parts = [[n, list(b.weight_bits) if b.per_kernel else b.weight_bits, b.act_bits] for n, b in self.bits]
        if self.scale_group is not None:
            parts.append(["scale_group", self.scale_group])
        return stable_key(*parts, length=20)

    def with_meta(self, **sections) -> "Policy":
        meta = dict(self.meta)
        meta.update({k: v for k, v in sections.items()})
        out = replace(self, meta=meta)
        out._cache.update(self._cache)  # the same widths: lookups, key and arrays stay valid
        return out

    # --- construction -----------------------------------------------------------------
    @classmethod
    def uniform(cls, space: SearchSpace, weight_bits: int, act_bits: int | None | str = "default") -> "Policy":
        """Every free layer at ``weight_bits`` (and ``act_bits``); pinned layers as pinned.

        ``act_bits='default'`` takes the widest activation choice of the space.
        """
        return cls.layerwise(space, dict.fromkeys(space.names, weight_bits), act_bits)

    @classmethod
    def layerwise(cls, space: SearchSpace, weight_bits: Mapping[str, int],
                  act_bits: int | None | str = "default") -> "Policy":
        """Each free layer at its ``weight_bits[name]`` (every kernel of it, at kernel
        granularity) and ``act_bits``; pinned layers as pinned.

        ``act_bits='default'`` takes the widest activation choice of the space.
        """
        if act_bits == "default":
            act_bits = None if space.act_bits is None else max(space.act_bits)
        pins = space.pins
        bits = []
        for layer in space.layers:
            if layer.name in pins:
                pin = pins[layer.name]
                bits.append((layer.name, _layer_bits(space, layer.kernels, pin.weight_bits, pin.act_bits)))
            else:
                bits.append((layer.name, _layer_bits(space, layer.kernels, weight_bits[layer.name], act_bits)))
        return cls(tuple(bits), space.granularity,
                   {"model": {"name": space.model_name, "fingerprint": space.fingerprint}}, space.scale_group)

    # --- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out: dict[str, Any] = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION}
        if "model" in self.meta:
            out["model"] = self.meta["model"]
        out["granularity"] = self.granularity
        if self.scale_group is not None:
            out["scale_group"] = self.scale_group
        out["layers"] = {n: {"weight_bits": list(b.weight_bits) if b.per_kernel else b.weight_bits,
                             "act_bits": b.act_bits} for n, b in self.bits}
        for section in ("budgets", "costs", "metrics", "search"):
            if section in self.meta:
                out[section] = self.meta[section]
        for section, value in self.meta.items():
            if section not in out and section != "model":
                out[section] = value
        return out

    def to_json(self) -> str:
        return dumps(self.to_dict())

    def canonical_json(self) -> str:
        """The JSON without wall-clock fields: equal for runs with the same seed."""
        data = self.to_dict()
        search = dict(data.get("search", {}))
        for name in TIMING_FIELDS:
            search.pop(name, None)
        if "search" in data:
            data["search"] = search
        return dumps(data)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> "Policy":
        problems = []
        if not isinstance(data, Mapping):
            raise PolicyError("a policy must be a JSON object", source)
        if data.get("schema") != SCHEMA:
            problems.append(f"'schema' must be {SCHEMA!r} (got {data.get('schema')!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            problems.append(f"'schema_version' {data.get('schema_version')!r} is not supported "
                            f"(this bitsearch reads version {SCHEMA_VERSION})")
        layers = data.get("layers")
        if not isinstance(layers, Mapping):
            problems.append("'layers' must be an object mapping layer names to widths")
            raise PolicyError(problems, source)
        granularity = data.get("granularity", "layer")
        if granularity not in ("layer", "kernel"):
            problems.append(f"'granularity' {granularity!r} is not 'layer' or 'kernel'")
        scale_group = data.get("scale_group")
        if scale_group is not None and (not _is_int(scale_group) or scale_group < 1):
            problems.append(f"'scale_group' must be a positive integer (weights per scale) or absent, got "
                            f"{scale_group!r}")
        bits = []
        for name, entry in layers.items():
            if not isinstance(entry, Mapping) or "weight_bits" not in entry:
                problems.append(f"layer {name!r}: expected an object with 'weight_bits' and 'act_bits'")
                continue
            w, a = entry.get("weight_bits"), entry.get("act_bits")
            if isinstance(w, list):
                if not w or not all(_is_int(b) for b in w):
                    problems.append(f"layer {name!r}: per-kernel 'weight_bits' must be a non-empty list of integers")
                    continue
            elif isinstance(w, str):
                if w not in formats.FORMATS:
                    problems.append(f"layer {name!r}: 'weight_bits' must be an integer or a format name "
                                    f"({', '.join(formats.FORMATS)}), got {w!r}")
                    continue
            elif not _is_int(w):
                problems.append(f"layer {name!r}: 'weight_bits' must be an integer, a format name or a list of "
                                f"integers (got {w!r})")
                continue
            if a is not None and not _is_int(a):
                problems.append(f"layer {name!r}: 'act_bits' must be an integer or null (got {a!r})")
                continue
            bits.append((name, LayerBits(tuple(w) if isinstance(w, list) else w, a)))
        if problems:
            raise PolicyError(problems, source)
        meta = {k: v for k, v in data.items()
                if k not in ("schema", "schema_version", "layers", "granularity", "scale_group")}
        return cls(tuple(bits), granularity, meta, scale_group)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str | None = None) -> "Policy":
        data = parse_json(text, lambda message: PolicyError(message, source))
        return cls.from_dict(data, source=source)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layer_bits(space: SearchSpace, kernels: int, weight_bits: int, act_bits) -> LayerBits:
    if space.granularity == "kernel":
        return LayerBits((weight_bits,) * kernels, act_bits)
    return LayerBits(weight_bits, act_bits)


def validate_policy(policy: Policy, space: SearchSpace, *, source: str | None = None) -> Policy:
    """Check ``policy`` against ``space``; raise one :class:`PolicyError` naming every problem.

    Linear in the layers and kernels: a million kernels take a fraction of a second."""
    problems = []
    given = policy._lookup()
    index = space._index
    for name in given:
        if name not in index:
            problems.append(f"unknown layer {name!r} (the model's layers are {_few(space.names)})")
    pins = space.pins
    act_choices = space.act_choices
    choices = frozenset(space.weight_bits)
    kernel_space = space.granularity == "kernel"
    for layer in space.layers:
        name = layer.name
        bits = given.get(name)
        if bits is None:
            problems.append(f"missing layer {name!r}")
            continue
        w = bits.weight_bits
        per_kernel = w.__class__ is tuple
        if per_kernel and len(w) != layer.kernels:
            problems.append(f"layer {name!r}: {len(w)} per-kernel widths, but the layer has {layer.kernels} kernels")
        if name in pins:
            pin = pins[name]
            widths = set(w) if per_kernel else {w}
            if widths != {pin.weight_bits} or bits.act_bits != pin.act_bits:
                problems.append(f"layer {name!r} is pinned to weight {pin.weight_bits} / act "
                                f"{_fmt_act(pin.act_bits)} bits but the policy gives other widths")
            continue
        if per_kernel:
            widths = set(w)
            if not kernel_space and len(widths) > 1:
                problems.append(f"layer {name!r}: per-kernel widths in a layer-granularity space")
            bad = sorted(widths - choices)
        else:
            bad = [] if w in choices else [w]
        if bad:
            problems.append(f"layer {name!r}: weight bits {bad} are not among the choices "
                            f"{list(space.weight_bits)}")
        if bits.act_bits not in act_choices:
            problems.append(f"layer {name!r}: act bits {_fmt_act(bits.act_bits)} are not among "
                            f"the choices {[_fmt_act(a) for a in act_choices]}")
    if policy.scale_group is not None and policy.scale_group != space.scale_group:
        problems.append(f"the policy's widths are meant with {_scales(policy.scale_group)}, but the space has "
                        f"{_scales(space.scale_group)}"
                        + (f": pass --scale-group {policy.scale_group}" if policy.scale_group else
                           ": leave out --scale-group"))
    for group in space.tied:
        present = [given[n] for n in group if n in given]
        if len({b.act_bits for b in present}) > 1:
            problems.append(f"tied layers {list(group)} must share the activation width")
        if space.granularity == "layer" and len({b.weight_bits for b in present}) > 1:
            problems.append(f"tied layers {list(group)} must share the weight width")
    if problems:
        raise PolicyError(problems, source)
    # normalise: order of the space, and layer-granularity lists collapsed to ints
    ordered = []
    for layer in space.layers:
        b = given[layer.name]
        if not kernel_space and b.per_kernel:
            b = LayerBits(b.weight_bits[0], b.act_bits)
        ordered.append((layer.name, b))
    if tuple(ordered) == policy.bits and policy.granularity == space.granularity \
            and policy.scale_group == space.scale_group:
        return policy
    return replace(policy, bits=tuple(ordered), granularity=space.granularity, scale_group=space.scale_group)


def _scales(scale_group) -> str:
    return "one scale per kernel" if scale_group is None else f"one scale per {scale_group} weights"


def _few(names, limit=6) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _fmt_act(a) -> str:
    return "float" if a is None else str(a)


# --- files ---------------------------------------------------------------------------------
def save_policy(policy: Policy, path: str | os.PathLike, *, parents: bool = True) -> None:
    atomic_write_text(path, policy.to_json(), parents=parents)


def load_policy(path: str | os.PathLike, space: SearchSpace | None = None) -> Policy:
    """Read a policy file (a regular file within the policy size limit, see
    :mod:`bitsearch._io`); with ``space``, also check it against the space."""
    source = str(path)
    data = read_input(path, "policy", error=lambda message: PolicyError(message, source))
    policy = Policy.from_json(data, source=source)
    if space is not None:
        policy = validate_policy(policy, space, source=source)
    return policy


def schema_path() -> Path:
    """The JSON Schema of policy files, shipped in the package."""
    return Path(__file__).parent / "schemas" / "policy.schema.json"


def iter_kernel_bits(policy: Policy, space: SearchSpace) -> Iterable[tuple[str, tuple[int, ...], int | None]]:
    for layer in space.layers:
        b = policy[layer.name]
        yield layer.name, b.kernel_bits(layer.kernels), b.act_bits
