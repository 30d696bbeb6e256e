"""Typed searcher settings: one frozen dataclass per searcher, checked once, at construction.

A searcher declares its settings as a frozen dataclass whose fields are made with
:func:`setting` -- a default, a range and one line of help each::

    @dataclass(frozen=True, kw_only=True)
    class RandomSettings(SearcherSettings):
        samples: int = setting(50, ge=1, help="random policies within budget to score")

``RandomSettings(samples=0)`` raises :class:`~bitsearch.errors.SearcherSettingsError`
naming every bad field, one clause each ("samples must be an integer >= 1 (got 0)").
The field's annotation is its type: ``int`` (a real integer: ``2.5`` and ``True`` are
refused), ``float`` (an int is taken; finite unless ``finite=False``), ``bool``, ``str``
(with ``choices``, matched without regard to case), ``X | None``, ``tuple[X, ...]``
(a list is taken) and ``dict[str, X]``.  :meth:`SearcherSettings.to_dict` gives plain
JSON (what a policy records as ``search.settings``), :meth:`SearcherSettings.describe`
what ``bitsearch searchers`` prints, and :func:`parse_value` turns the text of
``--set KEY=VALUE`` into a value of the field's type.

Only the standard library is imported here (``import bitsearch`` stays light).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Iterable, Mapping

from .errors import SearcherSettingsError

__all__ = ["SearcherSettings", "setting", "SettingInfo", "parse_value", "build_settings"]

_SPEC_KEY = "bitsearch_setting"


@dataclass(frozen=True)
class _Spec:
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    finite: bool = True
    min_items: int = 0


def setting(default: Any = MISSING, *, help: str, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, choices: Iterable[str] | None = None,
            finite: bool = True, min_items: int = 0) -> Any:
    """A settings field: its ``default``, one line of ``help``, and what values it takes.

    ``ge``/``gt``/``le``/``lt`` bound a number (every item of a tuple); ``choices`` lists the
    strings a ``str`` field takes; ``finite=False`` lets a float be infinite (never NaN);
    ``min_items`` is the least length of a tuple.  A dict or list default is copied per
    instance (no two searchers share it).
    """
    spec = _Spec(help, ge, gt, le, lt, None if choices is None else tuple(choices), finite, min_items)
    metadata = {_SPEC_KEY: spec}
    if isinstance(default, (dict, list, set)):
        frozen = default.copy()
        return dataclasses.field(default_factory=lambda: frozen.copy(), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --- types ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Type:
    """A field's type as the checks see it: ``base`` one of int, float, bool, str, tuple,
    dict, object; ``item`` the type of a tuple's items or a dict's values."""

    base: type
    optional: bool = False
    item: "_Type | None" = None

    def label(self) -> str:
        if self.base is tuple:
            text = f"tuple[{self.item.label()}, ...]"
        elif self.base is dict:
            text = f"dict[str, {self.item.label()}]"
        elif self.base is object:
            text = "any"
        else:
            text = self.base.__name__
        return f"{text} | None" if self.optional else text


def _type_of(annotation) -> _Type:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1 or len(args) != 2:
            raise TypeError(f"a setting may be 'X | None', not {annotation}")
        return dataclasses.replace(_type_of(rest[0]), optional=True)
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"a tuple setting is written tuple[X, ...], not {annotation}")
        return _Type(tuple, item=_type_of(args[0]))
    if origin is dict:
        if args[0] is not str:
            raise TypeError(f"a dict setting has str keys, not {annotation}")
        return _Type(dict, item=_type_of(args[1]))
    if annotation is typing.Any:
        return _Type(object)
    if annotation in (int, float, bool, str):
        return _Type(annotation)
    raise TypeError(f"settings of type {annotation!r} are not supported (int, float, bool, str, "
                    f"X | None, tuple[X, ...], dict[str, X])")


@dataclass(frozen=True)
class SettingInfo:
    """One field of a settings class, as ``bitsearch searchers`` shows it."""

    name: str
    type: str
    default: Any
    help: str
    allowed: str  # "" or e.g. ">= 1", "in [0, 1)", "one of auto, mckp, mip"

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "default": _jsonable(self.default), "help": self.help,
                "allowed": self.allowed}


_FIELDS_CACHE: dict[type, tuple] = {}


def _fields(cls) -> tuple[tuple[dataclasses.Field, _Type, _Spec], ...]:
    cached = _FIELDS_CACHE.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            spec = f.metadata.get(_SPEC_KEY)
            if spec is None:
                raise TypeError(f"{cls.__name__}.{f.name} is not declared with bitsearch.settings.setting()")
            out.append((f, _type_of(hints[f.name]), spec))
        cached = _FIELDS_CACHE[cls] = tuple(out)
    return cached


# --- checks --------------------------------------------------------------------------------
def _num(value) -> str:
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def _range_text(spec: _Spec) -> str:
    low = (">=", spec.ge) if spec.ge is not None else (">", spec.gt) if spec.gt is not None else None
    high = ("<=", spec.le) if spec.le is not None else ("<", spec.lt) if spec.lt is not None else None
    if low and high:
        return f"in {'[' if low[0] == '>=' else '('}{_num(low[1])}, {_num(high[1])}{']' if high[0] == '<=' else ')'}"
    if low:
        return f"{low[0]} {_num(low[1])}"
    if high:
        return f"{high[0]} {_num(high[1])}"
    return ""


def _in_range(value, spec: _Spec) -> bool:
    return not ((spec.ge is not None and not value >= spec.ge) or (spec.gt is not None and not value > spec.gt)
                or (spec.le is not None and not value <= spec.le) or (spec.lt is not None and not value < spec.lt))


def _expected(kind: _Type, spec: _Spec, *, plural: bool = False) -> str:
    """What a value must be, in words: 'an integer >= 1', 'a finite number in [0, 1)'..."""
    rng = _range_text(spec)
    if kind.base is int:
        text = ("integers" if plural else "an integer") + (f" {rng}" if rng else "")
    elif kind.base is float:
        finite = "finite " if spec.finite else ""
        text = (f"{finite}numbers" if plural else f"a {finite}number") + (f" {rng}" if rng else "")
    elif kind.base is bool:
        text = "true or false"
    elif kind.base is str:
        text = f"one of {', '.join(spec.choices)}" if spec.choices else ("strings" if plural else "a string")
    elif kind.base is tuple:
        text = f"a list of {_expected(kind.item, spec, plural=True)}"
        if spec.min_items:
            text += f" (at least {spec.min_items})"
    elif kind.base is dict:
        text = f"a table of names to {_expected(kind.item, spec, plural=True)}"
    else:
        text = "any value"
    return f"{text} or None" if kind.optional else text


def _check(kind: _Type, spec: _Spec, value) -> tuple[bool, Any]:
    """(ok, the value in its canonical form)."""
    if value is None:
        return kind.optional or kind.base is object, None
    base = kind.base
    if base is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return False, value
        value = int(value)
        return _in_range(value, spec), value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False, value
        value = float(value)
        if math.isnan(value) or (spec.finite and math.isinf(value)):
            return False, value
        return _in_range(value, spec), value
    if base is bool:
        if type(value).__name__ in ("bool", "bool_"):  # also numpy's bool, without importing numpy
            return True, bool(value)
        return False, value
    if base is str:
        if not isinstance(value, str):
            return False, value
        if spec.choices:
            match = [c for c in spec.choices if c.lower() == value.strip().lower()]
            return bool(match), match[0] if match else value
        return True, value
    if base is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            return False, value
        items = []
        for item in value:
            ok, item = _check(kind.item, spec, item)
            if not ok:
                return False, value
            items.append(item)
        return len(items) >= spec.min_items, tuple(items)
    if base is dict:
        if not isinstance(value, Mapping):
            return False, value
        out = {}
        for key, item in value.items():
            ok, item = _check(kind.item, spec, item)
            if not ok or not isinstance(key, str):
                return False, value
            out[key] = item
        return True, out
    return True, value  # Any


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, kw_only=True)
class SearcherSettings:
    """Base of every searcher's settings dataclass (itself: a searcher without settings).

    Subclasses are ``@dataclass(frozen=True, kw_only=True)`` with every field made by
    :func:`setting`.  Construction checks every field and raises one
    :class:`SearcherSettingsError` that names every problem; the stored values are in
    canonical form (ints, floats, tuples, the canonical spelling of a choice).
    """

    def __post_init__(self):
        problems = []
        for f, kind, spec in _fields(type(self)):
            value = getattr(self, f.name)
            ok, canonical = _check(kind, spec, value)
            if not ok:
                problems.append(f"{f.name} must be {_expected(kind, spec)} (got {_shown(value)})")
            else:
                object.__setattr__(self, f.name, canonical)
        if not problems:
            problems = list(self.check())
        if problems:
            raise SearcherSettingsError(problems, source=type(self).__name__)

    def check(self) -> Iterable[str]:
        """Problems that involve several fields (one clause each); override to add some."""
        return ()

    # --- reading ---------------------------------------------------------------------------
    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f, _, _ in _fields(cls))

    @classmethod
    def describe(cls) -> list[SettingInfo]:
        """Name, type, default, help and allowed values of every field."""
        out = []
        for f, kind, spec in _fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()
            allowed = (f"one of {', '.join(spec.choices)}" if spec.choices else _range_text(spec))
            if kind.base is tuple and spec.min_items:
                allowed = ", ".join(a for a in (allowed, f"at least {spec.min_items} item"
                                                          f"{'s' if spec.min_items > 1 else ''}") if a)
            out.append(SettingInfo(f.name, kind.label(), default, spec.help, allowed))
        return out

    def to_dict(self) -> dict:
        """The settings as plain JSON values (tuples become lists), in field order."""
        return {name: _jsonable(getattr(self, name)) for name in self.names()}

    def replace(self, **changes) -> "SearcherSettings":
        """A copy with ``changes`` (checked like a new instance)."""
        return build_settings(type(self), self.to_dict(), changes)


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _unknown_message(cls, unknown: list[str], source: str) -> str:
    names = cls.names()
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, names, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    known = ", ".join(names) if names else "none"
    return f"{source} has no settings named {', '.join(hints)}; its settings are: {known} (see bitsearch searchers)"


def build_settings(cls, settings=None, overrides: Mapping[str, Any] | None = None, *,
                   source: str | None = None):
    """An instance of settings class ``cls`` from another instance, a mapping, or None,
    updated with ``overrides``.  Unknown names and bad values raise
    :class:`SearcherSettingsError` (its message starts with ``source``)."""
    source = source or cls.__name__
    if isinstance(settings, cls) and not overrides:
        return settings
    if settings is None:
        values: dict = {}
    elif isinstance(settings, SearcherSettings):
        if not isinstance(settings, cls):
            raise SearcherSettingsError(f"{source} takes {cls.__name__}, not {type(settings).__name__}")
        values = {name: getattr(settings, name) for name in cls.names()}
    elif isinstance(settings, Mapping):
        values = dict(settings)
    else:
        raise SearcherSettingsError(f"{source}: settings must be {cls.__name__} or a mapping, "
                                    f"not {type(settings).__name__}")
    values.update(overrides or {})
    bad_keys = [k for k in values if not isinstance(k, str)]
    if bad_keys:
        raise SearcherSettingsError(f"{source}: setting names must be strings (got {bad_keys[0]!r})")
    unknown = sorted(set(values) - set(cls.names()))
    if unknown:
        raise SearcherSettingsError(_unknown_message(cls, unknown, source))
    try:
        return cls(**values)
    except SearcherSettingsError as exc:
        raise SearcherSettingsError(exc.problems, source=source) from None


# --- text (the command line's --set) -------------------------------------------------------
_NONE = ("none", "null")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _parse(kind: _Type, text: str):
    """A value of ``kind`` from ``text``; raises ValueError when it does not parse."""
    text = text.strip()
    if kind.optional and text.lower() in _NONE:
        return None
    base = kind.base
    if base is int:
        value = int(text)  # "2.5", "abc", "1e3" do not parse
        return value
    if base is float:
        return float(text)  # "nan" / "inf" parse; the checks refuse them
    if base is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(text)
    if base is str:
        if len(text) >= 2 and text[0] == text[-1] == '"':
            return json.loads(text)
        return text
    if base is tuple:
        if text.startswith("["):
            items = json.loads(text)
            if not isinstance(items, list):
                raise ValueError(text)
            return tuple(items if kind.item.base is not str else [str(i) for i in items])
        parts = [p for p in (s.strip() for s in text.split(",")) if p]
        return tuple(_parse(kind.item, p) for p in parts)
    if base is dict:
        if text.startswith("{"):
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError(text)
            return value
        out = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, sep, item = part.partition(":")
            if not sep or not key.strip():
                raise ValueError(text)
            out[key.strip()] = _parse(kind.item, item)
        return out
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_value(cls, name: str, text: str, *, source: str | None = None):
    """The value of setting ``name`` of settings class ``cls`` written as ``text``
    (``--set name=text``).  Raises :class:`SearcherSettingsError` (one line) when the
    name is unknown or the text is not a value of the field's type."""
    source = source or cls.__name__
    for f, kind, spec in _fields(cls):
        if f.name == name:
            try:
                return _parse(kind, text)
            except (ValueError, json.JSONDecodeError):
                raise SearcherSettingsError(f"{source}: {name} must be {_expected(kind, spec)} "
                                            f"(got {_shown(text)})") from None
    raise SearcherSettingsError(_unknown_message(cls, [name], source))
