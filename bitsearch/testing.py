"""Conformance checks for searchers, shipped with bitsearch (as gymnasium ships ``check_env``).

A package that adds a searcher (through the ``bitsearch.searchers`` entry point) checks
it with plain functions::

    from bitsearch.testing import check_searcher
    check_searcher("my-searcher", settings={"steps": 5})

or subclasses the pytest base class :class:`SearcherConformance` (as Optuna's
``optuna.testing`` ships its sampler cases)::

    class TestMySearcher(SearcherConformance):
        searcher = "my-searcher"
        settings = {"steps": 5}
        granularities = ("layer", "kernel")

The checks: the settings dataclass rejects every bad value at construction
(:func:`check_settings`); every budget is kept exactly, with costs recomputed by fresh
cost models; the result round-trips through JSON and validates against the shipped
schema; the same seed gives the same policy; a callback can stop the search; a budget
no policy meets raises :class:`~bitsearch.errors.InfeasibleBudgetError`.  The default
problem is :func:`small_problem`, a five-layer synthetic network with a sensitivity
table (no torch).  This module imports numpy and jsonschema only (pytest when the base
class is used).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import InfeasibleBudgetError, SearcherSettingsError
from .problem import Problem
from .sensitivity.table import SensitivityTable
from .settings import SearcherSettings, _fields
from .space import Layer, SearchSpace

__all__ = ["check_searcher", "check_settings", "invalid_settings", "ConformanceCase", "CHECKS",
           "SearcherConformance", "small_problem", "small_space", "small_layers", "synthetic_sensitivity"]


# --- settings -------------------------------------------------------------------------------
def _out_of_range(kind, spec) -> list:
    """Numbers just outside a field's bounds (of the field's own type)."""
    cast = int if kind.base is int else float
    out = []
    if spec.ge is not None:
        out.append(cast(spec.ge - 1) if cast is int else spec.ge - max(1.0, abs(spec.ge)) * 0.5)
    if spec.gt is not None:
        out.append(cast(spec.gt))
    if spec.le is not None:
        out.append(cast(spec.le + 1) if cast is int else spec.le + max(1.0, abs(spec.le)) * 0.5)
    if spec.lt is not None:
        out.append(cast(spec.lt))
    return out


def _bad_values(kind, spec) -> list:
    base = kind.base
    values: list = []
    if not kind.optional and base is not object:
        values.append(None)
    if base is int:
        values += [2.5, True, "3", math.nan] + _out_of_range(kind, spec)
    elif base is float:
        values += ["x", True, math.nan] + ([math.inf] if spec.finite else []) + _out_of_range(kind, spec)
    elif base is bool:
        values += [1, "true", 0.0]
    elif base is str:
        values += [3, ["a"]] + (["no-such-choice"] if spec.choices else [])
    elif base is tuple:
        values += ["1,2", {"a": 1}] + [[v] for v in _bad_values(kind.item, spec) if v is not None][:3]
        if spec.min_items:
            values.append([])
    elif base is dict:
        values += [[1], "x"] + [{"a": v} for v in _bad_values(kind.item, spec) if v is not None][:2]
    return values


def invalid_settings(settings_class: type[SearcherSettings]) -> list[tuple[str, Any]]:
    """``(field, value)`` pairs that ``settings_class`` must refuse, derived from each
    field's type and range: wrong types, NaN and infinities, booleans for integers,
    values just outside the bounds, unknown choices, bad items of lists and tables."""
    return [(f.name, value) for f, kind, spec in _fields(settings_class) for value in _bad_values(kind, spec)]


def check_settings(searcher_cls) -> None:
    """Check a searcher class's settings dataclass: frozen, every field documented, the
    defaults valid and plain JSON, a round trip through ``to_dict``, and every value of
    :func:`invalid_settings` refused at construction with a one-line
    :class:`SearcherSettingsError` that names the field."""
    name = getattr(searcher_cls, "name", searcher_cls.__name__)
    settings_class = getattr(searcher_cls, "settings_class", None)
    assert isinstance(settings_class, type) and issubclass(settings_class, SearcherSettings), \
        f"{name}: settings_class must be a SearcherSettings dataclass (got {settings_class!r})"
    assert dataclasses.is_dataclass(settings_class) and settings_class.__dataclass_params__.frozen, \
        f"{name}: {settings_class.__name__} must be a frozen dataclass"
    for info in settings_class.describe():
        assert info.help.strip(), f"{name}: setting {info.name} has no help text"
    searcher = searcher_cls()
    plain = searcher.settings
    assert json.loads(json.dumps(plain)) == plain, f"{name}: settings are not plain JSON: {plain!r}"
    assert searcher_cls(**plain).settings == plain, f"{name}: settings do not round-trip through to_dict"
    assert searcher_cls(settings_class()).settings == plain
    for key, value in invalid_settings(settings_class):
        try:
            searcher_cls(**{key: value})
        except SearcherSettingsError as exc:
            message = str(exc)
            assert key in message and "\n" not in message, f"{name}: {key}={value!r}: unclear message {message!r}"
        else:
            raise AssertionError(f"{name}: setting {key}={value!r} was accepted at construction")
    try:
        searcher_cls(no_such_setting=1)
    except SearcherSettingsError as exc:
        assert "no_such_setting" in str(exc)
    else:
        raise AssertionError(f"{name}: an unknown setting was accepted")


# --- the default problem ------------------------------------------------------------------------
def conv(name, cin, cout, k, hw, stride=1, groups=1) -> Layer:
    """A conv2d layer with the facts discovery would record."""
    params = cout * cin // groups * k * k
    return Layer(name, "conv2d", params=params, macs=params * hw * hw, kernels=cout, in_channels=cin,
                 out_channels=cout, kernel_size=(k, k), stride=(stride, stride), groups=groups,
                 out_spatial=(hw, hw), bias_params=0)


def linear(name, fin, fout) -> Layer:
    return Layer(name, "linear", params=fin * fout, macs=fin * fout, kernels=fout, in_features=fin,
                 out_channels=fout, bias_params=fout)


def small_layers() -> tuple[Layer, ...]:
    """Five layers: a stem, a block whose conv1 and downsample read the same tensor, a classifier."""
    return (
        conv("stem", 3, 8, 3, 16),
        conv("block.conv1", 8, 12, 3, 8, stride=2),
        conv("block.conv2", 12, 12, 3, 8),
        conv("block.downsample", 8, 12, 1, 8, stride=2),
        linear("fc", 12, 10),
    )


def small_space(granularity="layer", weight_bits=(2, 3, 4, 8), act_bits=(8,), tied=True, pinned=()) -> SearchSpace:
    """The five layers of :func:`small_layers`, conv1 and downsample tied."""
    return SearchSpace(small_layers(), weight_bits=weight_bits, act_bits=act_bits, granularity=granularity,
                       tied=(("block.conv1", "block.downsample"),) if tied else (), pinned=pinned,
                       model_name="small-synthetic", fingerprint="sha256:synthetic")


def synthetic_sensitivity(space, seed=0, bits=(1, 2, 3, 4, 5, 6, 7, 8), act_bits=(2, 3, 4, 5, 6, 7, 8)):
    """Per-kernel loss increase ~ c_k * 4^-b (quantization noise falls 4x per bit), c_k random."""
    rng = np.random.default_rng(seed)
    weight, act = {}, {}
    for layer in space.layers:
        scale = rng.lognormal(0.0, 1.0, size=(layer.kernels, 1)) * layer.params_per_kernel
        weight[layer.name] = scale * np.power(4.0, -np.asarray(bits, dtype=float))[None, :]
        act[layer.name] = rng.lognormal(0.0, 0.5) * layer.macs * 1e-3 * np.power(4.0, -np.asarray(act_bits, float))
    return SensitivityTable(bits, weight, act_bits, act, method="synthetic")


def small_problem(budgets=("size=3bit",), granularity="layer", seed=0, **space_kw) -> Problem:
    """:func:`small_space` with a synthetic sensitivity table and ``budgets``."""
    space = small_space(granularity, **space_kw)
    return Problem.build(space, budgets, sensitivity=synthetic_sensitivity(space, seed))


# --- the searcher checks ------------------------------------------------------------------------
STOP_KINDS = ("evaluation", "progress", "episode")
#: budget sets every check runs (each feasible on the default problem)
BUDGET_SETS = (("size=3bit",), ("size=2.5bit", "bops=4bit"))
#: a budget below the cheapest policy of the default problem
INFEASIBLE = ("size=1.5bit",)


def _default_space_of(result, problem):
    return problem.space


@dataclasses.dataclass(frozen=True)
class ConformanceCase:
    """A searcher with its (fast) settings and the problems it is checked on.

    ``make_problem(budgets, granularity)`` builds a problem (default :func:`small_problem`);
    ``space_of(result, problem)`` is the space the result's policy lives in (another
    model width for uniform-width); ``events_after_stop`` how many progress events a
    searcher may still send after its callback said stop.
    """

    searcher: Any  # a registered name or a searcher class
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    make_problem: Callable = small_problem
    space_of: Callable = _default_space_of
    budget_sets: Sequence[Sequence[str]] = BUDGET_SETS
    infeasible: Sequence[str] = INFEASIBLE
    events_after_stop: int = 2

    @property
    def searcher_class(self):
        from . import searchers

        return searchers.get(self.searcher) if isinstance(self.searcher, str) else self.searcher

    @property
    def name(self) -> str:
        return self.searcher if isinstance(self.searcher, str) else self.searcher.name

    def run(self, problem, seed=0, callback=None, **overrides):
        searcher = self.searcher_class(**{**self.settings, **overrides})
        return searcher.search(problem, seed=seed, callback=callback)


def check_budgets_kept_exactly(case: ConformanceCase, granularity: str) -> None:
    """Every budget kept, priced by a fresh cost model; the result's costs are the exact ones."""
    from .cost import ANALYTIC, make_cost_model

    for budgets in case.budget_sets:
        problem = case.make_problem(budgets, granularity)
        result = case.run(problem)
        space = case.space_of(result, problem)
        for budget in problem.budgets:
            fresh = make_cost_model(budget.cost, space=space) if budget.cost in ANALYTIC else problem.costs[budget.cost]
            cost = fresh.cost(space, result.policy)
            assert cost <= budget.limit, f"{case.name} {budgets}: {budget.cost} {cost} > {budget.limit}"
            assert result.costs[budget.cost] == cost, f"{case.name}: result.costs[{budget.cost!r}] is not exact"
        assert result.policy.granularity == granularity


def check_json_round_trip(case: ConformanceCase, granularity: str) -> None:
    """The policy JSON validates against the shipped schema, loads back equal, and records
    the searcher, costs and budgets."""
    import jsonschema

    from .policy import Policy, schema_path, validate_policy

    problem = case.make_problem(case.budget_sets[0], granularity)
    result = case.run(problem)
    text = result.policy.to_json()
    jsonschema.validate(json.loads(text), json.loads(schema_path().read_text()))
    back = Policy.from_json(text)
    assert back == result.policy
    assert back.key == result.policy.key
    assert back.to_json() == text
    validate_policy(back, case.space_of(result, problem))
    meta = json.loads(text)
    assert meta["search"]["searcher"] == case.name
    assert meta["search"]["settings"] == result.settings
    assert meta["costs"] == result.costs
    assert meta["budgets"] == [b.to_dict() for b in problem.budgets]


def check_same_seed_same_policy(case: ConformanceCase, granularity: str) -> None:
    """Two runs with one seed give the same policy JSON (wall-clock fields aside)."""
    first = case.run(case.make_problem(case.budget_sets[0], granularity), seed=3)
    second = case.run(case.make_problem(case.budget_sets[0], granularity), seed=3)
    assert first.policy.canonical_json() == second.policy.canonical_json()


def check_callback_can_stop(case: ConformanceCase, granularity: str) -> None:
    """A callback that returns False stops the search soon, with a policy within budget."""
    problem = case.make_problem(case.budget_sets[0], granularity)
    seen = {"stopped": False, "after": 0, "events": 0}

    def callback(event):
        seen["events"] += 1
        if event.kind in STOP_KINDS:
            if seen["stopped"]:
                seen["after"] += 1
            seen["stopped"] = True
            return False
        return True

    result = case.run(problem, callback=callback)
    assert seen["events"] >= 2  # at least start and end
    if seen["stopped"]:
        assert result.stopped_early
        assert seen["after"] <= case.events_after_stop, f"{case.name}: {seen['after']} events after stop"
    assert all(b.allows(result.costs[b.cost]) for b in problem.budgets)


def check_infeasible_budget_raises(case: ConformanceCase, granularity: str) -> None:
    """A budget no policy meets raises InfeasibleBudgetError (naming the cheapest cost)."""
    try:
        case.run(case.make_problem(case.infeasible, granularity))
    except InfeasibleBudgetError as exc:
        if exc.cheapest is not None:
            assert exc.cheapest > exc.limit
    else:
        raise AssertionError(f"{case.name}: an infeasible budget {list(case.infeasible)} did not raise")


def check_settings_of(case: ConformanceCase, granularity: str) -> None:
    """:func:`check_settings` on the case's searcher class (once; granularity unused)."""
    check_settings(case.searcher_class)


#: every check, by name: ``check(case, granularity)``
CHECKS = {
    "settings": check_settings_of,
    "budgets_kept_exactly": check_budgets_kept_exactly,
    "json_round_trip": check_json_round_trip,
    "same_seed_same_policy": check_same_seed_same_policy,
    "callback_can_stop": check_callback_can_stop,
    "infeasible_budget_raises": check_infeasible_budget_raises,
}


def check_searcher(searcher, *, settings: Mapping[str, Any] | None = None, granularities=("layer",),
                   make_problem: Callable | None = None, space_of: Callable | None = None,
                   budget_sets: Sequence[Sequence[str]] = BUDGET_SETS, events_after_stop: int = 2,
                   skip: Sequence[str] = ()) -> None:
    """Run every conformance check on ``searcher`` (a registered name or a class) with
    ``settings``, at each of ``granularities``.  Raises AssertionError (or the searcher's
    own error) at the first failure; ``skip`` names checks of :data:`CHECKS` to leave out."""
    unknown = sorted(set(skip) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; the checks are {', '.join(CHECKS)}")
    case = ConformanceCase(searcher, dict(settings or {}), make_problem or small_problem,
                           space_of or _default_space_of, tuple(tuple(b) for b in budget_sets),
                           events_after_stop=events_after_stop)
    for name, check in CHECKS.items():
        if name in skip:
            continue
        for granularity in (granularities[:1] if name == "settings" else granularities):
            check(case, granularity)


class SearcherConformance:
    """pytest base class: every check of :data:`CHECKS` as a test, once per granularity.

    Subclass it in a ``Test...`` class and set ``searcher`` (a registered name or a
    class), ``settings`` (fast ones), ``granularities``; override ``make_problem`` or
    ``space_of`` when the default problem does not suit the searcher.
    """

    searcher: Any = ""
    settings: Mapping[str, Any] = {}
    granularities: tuple[str, ...] = ("layer",)
    budget_sets: tuple[tuple[str, ...], ...] = BUDGET_SETS
    events_after_stop: int = 2

    def make_problem(self, budgets, granularity):
        return small_problem(budgets, granularity)

    def space_of(self, result, problem):
        return problem.space

    def pytest_generate_tests(self, metafunc):  # pytest calls this hook on test classes too
        if "granularity" in metafunc.fixturenames:
            granularities = self.granularities[:1] if metafunc.function.__name__ == "test_settings" \
                else self.granularities
            metafunc.parametrize("granularity", granularities)

    def case(self) -> ConformanceCase:
        return ConformanceCase(self.searcher, dict(self.settings), self.make_problem, self.space_of,
                               self.budget_sets, events_after_stop=self.events_after_stop)

    def run(self, problem, seed=0, callback=None, **overrides):
        return self.case().run(problem, seed=seed, callback=callback, **overrides)


def _as_test(name: str, check):
    def test(self, granularity):
        check(self.case(), granularity)

    test.__name__ = f"test_{name}"
    test.__doc__ = check.__doc__
    return test


for _name, _check in CHECKS.items():  # one test method per check, so the class and CHECKS agree
    setattr(SearcherConformance, f"test_{_name}", _as_test(_name, _check))
