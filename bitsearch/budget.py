"""Budgets: ``COST=VALUE`` limits that every searcher keeps exactly.

Forms of VALUE:

* an amount with a unit: ``size=1.2MB``, ``size=350KiB``, ``size=2e6bit``,
  ``bops=3.5GBOPs``, ``latency=0.8ms``, ``energy=12uJ`` (a bare number is in the cost's
  own unit: bit, BOPs, ms, pJ);
* ``size=4bit`` or ``size=2.5bit``: the cost of the uniform policy at that width
  (between integer widths the cost is interpolated linearly); for searched
  activations the reference uses the same width for activations;
* ``size=12.5%``: a share of the float model's cost;
* ``latency=frac:0.5``: cheapest + 0.5 x (dearest - cheapest), where cheapest and
  dearest are the uniform policies at the narrowest and widest choices (HAWQ-V3's form);
* ``bits=4.5``: effective bits, the average stored bits per quantized weight with
  scales included (NVIDIA ModelOpt's ``effective_bits``); ``bits=4.5bit`` means the same.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .errors import BudgetParseError, InfeasibleBudgetError
from .policy import LayerBits, Policy
from .space import FLOAT_BITS, SearchSpace

_SCALES = {
    "size": {"b": 8, "byte": 8, "bytes": 8,
             "kb": 8e3, "mb": 8e6, "gb": 8e9, "kib": 8 * 1024, "mib": 8 * 1024 ** 2, "gib": 8 * 1024 ** 3,
             "kbit": 1e3, "mbit": 1e6, "gbit": 1e9},
    "bops": {"bops": 1, "kbops": 1e3, "mbops": 1e6, "gbops": 1e9, "tbops": 1e12,
             "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12},
    "latency": {"ms": 1, "s": 1e3, "us": 1e-3, "µs": 1e-3},
    "bitfusion": {"ms": 1, "s": 1e3, "us": 1e-3, "µs": 1e-3},
    "energy": {"pj": 1, "nj": 1e3, "uj": 1e6, "µj": 1e6, "mj": 1e9, "j": 1e12},
}
_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"


@dataclass(frozen=True)
class BudgetSpec:
    """A parsed budget, before it is resolved against a space.

    ``form``: ``absolute`` (value in the cost's unit), ``bits`` (uniform width),
    ``percent`` (of the float model) or ``frac`` (between cheapest and dearest).
    """

    cost: str
    form: str
    value: float
    text: str


@dataclass(frozen=True)
class Budget:
    """A resolved limit: the policy's ``cost`` must be at or under ``limit`` (in ``unit``)."""

    cost: str
    limit: float
    unit: str
    spec: str

    def allows(self, value: float) -> bool:
        return value <= self.limit

    def to_dict(self) -> dict:
        return {"cost": self.cost, "limit": self.limit, "unit": self.unit, "spec": self.spec}

    @classmethod
    def from_dict(cls, data) -> "Budget":
        return cls(str(data["cost"]), float(data["limit"]), str(data.get("unit", "")),
                   str(data.get("spec", "")))

    def __str__(self) -> str:
        return f"{self.cost} <= {format_cost(self.limit, self.unit)} ({self.spec})"


def parse_budget(text: str) -> BudgetSpec:
    """Parse ``COST=VALUE``; raise :class:`BudgetParseError` with the accepted forms."""
    raw = str(text).strip()
    hint = ("expected COST=VALUE, e.g. size=1.2MB, size=4bit, size=12.5%, bits=4.5, bops=3.5GBOPs, "
            "latency=0.8ms, latency=frac:0.5")
    if "=" not in raw:
        raise BudgetParseError(f"budget {text!r} does not parse: {hint}")
    cost, value = (part.strip() for part in raw.split("=", 1))
    cost = cost.lower()
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", cost):
        raise BudgetParseError(f"budget {text!r}: {cost!r} is not a cost name; {hint}")
    low = value.lower().replace(" ", "")
    m = re.fullmatch(r"frac:(" + _NUMBER + r")", low)
    if m:
        frac = _finite(m.group(1), text)
        if not 0 <= frac <= 1:
            raise BudgetParseError(f"budget {text!r}: frac must be between 0 and 1")
        return BudgetSpec(cost, "frac", frac, raw)
    m = re.fullmatch(r"(" + _NUMBER + r")%", low)
    if m:
        pct = _finite(m.group(1), text)
        if not 0 < pct:
            raise BudgetParseError(f"budget {text!r}: a percentage must be positive")
        return BudgetSpec(cost, "percent", pct, raw)
    m = re.fullmatch(r"(" + _NUMBER + r")bits?", low)
    if m and cost == "bits":  # effective bits are bits already: 4.5bit is 4.5 bits per weight
        low = m.group(1)
        m = None
    if m:
        bits = _finite(m.group(1), text)
        if not 1 <= bits <= 32:
            raise BudgetParseError(f"budget {text!r}: 'Nbit' means the uniform N-bit policy and N must be "
                                   "between 1 and 32; give an absolute size in bytes (e.g. 1.2MB) instead")
        return BudgetSpec(cost, "bits", bits, raw)
    m = re.fullmatch(r"(" + _NUMBER + r")([a-zµ]*)", low)
    if not m:
        raise BudgetParseError(f"budget {text!r} does not parse: {hint}")
    number, unit = _finite(m.group(1), text), m.group(2)
    if number <= 0:
        raise BudgetParseError(f"budget {text!r}: the limit must be positive")
    if not unit:
        return BudgetSpec(cost, "absolute", number, raw)
    scales = _SCALES.get(cost)
    if scales is None:
        raise BudgetParseError(f"budget {text!r}: cost {cost!r} takes a plain number in its own unit, "
                               "a width (4bit), a share (12.5%) or frac:F")
    if unit not in scales:
        raise BudgetParseError(f"budget {text!r}: unit {m.group(2)!r} is not known for {cost}; "
                               f"use one of {', '.join(sorted(scales))}")
    limit = number * scales[unit]
    if not math.isfinite(limit):
        raise BudgetParseError(f"budget {text!r}: the limit is too large to be a number")
    return BudgetSpec(cost, "absolute", limit, raw)


def _finite(number: str, text: str) -> float:
    """The float of a budget's number; one too large to be finite (1e309) is an error,
    never an unlimited budget."""
    value = float(number)
    if not math.isfinite(value):
        raise BudgetParseError(f"budget {text!r}: {number} is too large to be a number (1e308 is the most)")
    return value


def uniform_cost(space: SearchSpace, model, weight_bits: int, act_bits: int | None) -> float:
    """``model.cost(space, Policy.uniform(space, weight_bits, act_bits))``, on arrays."""
    from .cost.base import uniform_columns

    columns = space.cached(("uniform_columns", int(weight_bits), act_bits),
                           lambda: uniform_columns(space, weight_bits, act_bits))
    return model.columns_cost(space, columns)


def reference_cost(space: SearchSpace, model, width: float) -> float:
    """Cost of the uniform policy at ``width`` bits, interpolated between integer widths."""
    lo, hi = math.floor(width), math.ceil(width)
    c_lo = uniform_cost(space, model, lo, _reference_act(space, lo))
    if hi == lo:
        return c_lo
    c_hi = uniform_cost(space, model, hi, _reference_act(space, hi))
    return c_lo + (width - lo) * (c_hi - c_lo)


def _reference_act(space: SearchSpace, width: int):
    if space.act_bits is None:
        return None
    if space.act_searched:
        return width
    return space.act_bits[0]


def cheapest_policy(space: SearchSpace) -> Policy:
    """The uniform policy at the narrowest weight and activation choices."""
    act = None if space.act_bits is None else min(space.act_bits)
    return Policy.uniform(space, space.weight_bits[0], act)


def dearest_policy(space: SearchSpace) -> Policy:
    """The uniform policy at the widest weight and activation choices."""
    act = None if space.act_bits is None else max(space.act_bits)
    return Policy.uniform(space, space.weight_bits[-1], act)


def float_cost(space: SearchSpace, model) -> float:
    """Cost of the float model: every layer, pinned or not, at 32-bit weights and activations."""
    from .cost.base import FLOAT_ACT, PolicyColumns

    n = len(space.layers)
    columns = PolicyColumns(np.full(n, FLOAT_BITS, dtype=np.int64), np.full(n, FLOAT_ACT, dtype=np.int64), {})
    return model.columns_cost(space, columns)


def _extreme_cost(space: SearchSpace, model, which) -> float:
    act = None if space.act_bits is None else which(space.act_bits)
    return uniform_cost(space, model, which(space.weight_bits), act)




def resolve_budget(spec: BudgetSpec | str, space: SearchSpace, model) -> Budget:
    """Turn a spec into an absolute limit for ``space`` priced by ``model``."""
    if isinstance(spec, str):
        spec = parse_budget(spec)
    if spec.form == "absolute":
        limit = spec.value
    elif spec.form == "bits":
        limit = reference_cost(space, model, spec.value)
    elif spec.form == "percent":
        limit = float_cost(space, model) * spec.value / 100.0
    else:
        cheap = _extreme_cost(space, model, min)
        dear = _extreme_cost(space, model, max)
        limit = cheap + spec.value * (dear - cheap)
    return Budget(spec.cost, float(limit), model.unit, spec.text)


def cheapest_cost(space: SearchSpace, model) -> float:
    """The lowest cost any policy of ``space`` can have under ``model``.

    Exact for every model this package ships: costs are summed per layer, tied layers
    share their activation width (and, at layer granularity, their weight width), and
    within a layer the cheapest kernel width is the cheapest layer width.
    """
    pins = space.pins
    total = [model.layer_cost(layer, pins[layer.name].weight_bits, pins[layer.name].act_bits)
             for layer in space.layers if layer.name in pins]
    tie_weights = space.granularity == "layer"
    groups = space.groups()
    single = np.array([g[0] for g in groups if len(g) == 1], dtype=np.int64)
    tied = [g for g in groups if len(g) > 1]
    # (acts, layers, widths): the cost of every layer at every choice
    tables = np.stack([model.layer_table(space, space.weight_bits, a) for a in space.act_choices])
    if single.size:
        # a lone layer: its cheapest (w, a) -- the same at either granularity
        total.extend(tables[:, single, :].min(axis=(0, 2)).tolist())
    for group in tied:
        options = []
        for t in tables:
            rows = t[list(group)]
            if tie_weights:
                options.append(min(math.fsum(rows[:, j]) for j in range(rows.shape[1])))
            else:
                options.append(math.fsum(rows.min(axis=1)))
        total.append(min(options))
    if not np.all(np.isfinite(total)):
        for a in space.act_choices:  # a layer the model cannot price: let it say why
            for i in space.free_layers():
                for w in space.weight_bits:
                    model.layer_cost(space.layers[i], w, a)
    return math.fsum(total)


def check_feasible(space: SearchSpace, models: dict, budgets) -> None:
    """Raise :class:`InfeasibleBudgetError` if a budget is below the cheapest possible cost.

    (Each budget alone; a combination of budgets that no policy meets jointly is found
    by the searchers, which raise the same error.)
    """
    for budget in budgets:
        low = cheapest_cost(space, models[budget.cost])
        if not budget.allows(low):
            raise InfeasibleBudgetError(
                f"budget {budget.spec} ({budget.cost} <= {format_cost(budget.limit, budget.unit)}) cannot be met: "
                f"the cheapest policy of this space costs {format_cost(low, budget.unit)}; "
                f"raise the budget or allow narrower widths",
                cost=budget.cost, limit=budget.limit, cheapest=low, unit=budget.unit)


def format_cost(value: float, unit: str) -> str:
    """Human form: bits as KB/MB, BOPs as G/MBOPs, pJ as uJ..."""
    if unit == "bit":
        nbytes = value / 8
        for name, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
            if nbytes >= scale:
                return f"{nbytes / scale:.4g} {name}"
        return f"{value:.6g} bit"
    if unit == "BOPs":
        for name, scale in (("TBOPs", 1e12), ("GBOPs", 1e9), ("MBOPs", 1e6), ("KBOPs", 1e3)):
            if value >= scale:
                return f"{value / scale:.4g} {name}"
        return f"{value:.6g} BOPs"
    if unit == "pJ":
        for name, scale in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
            if value >= scale:
                return f"{value / scale:.4g} {name}"
        return f"{value:.4g} pJ"
    return f"{value:.6g} {unit}".strip()
