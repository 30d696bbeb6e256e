"""Budget strings, their resolution, and infeasibility."""

import pytest

from bitsearch.budget import cheapest_cost, parse_budget, resolve_budget
from bitsearch.cost import BopsCost, SizeCost
from bitsearch.errors import BudgetParseError, InfeasibleBudgetError
from bitsearch.policy import Policy
from bitsearch.problem import Problem

from helpers import small_space


@pytest.mark.parametrize("text,cost,form,value", [
    ("size=1.2MB", "size", "absolute", 1.2e6 * 8),
    ("size=350KiB", "size", "absolute", 350 * 1024 * 8),
    ("size=1000", "size", "absolute", 1000),
    ("bops=3.5GBOPs", "bops", "absolute", 3.5e9),
    ("latency=0.8ms", "latency", "absolute", 0.8),
    ("latency=800us", "latency", "absolute", 0.8),
    ("energy=2uJ", "energy", "absolute", 2e6),
    ("size=4bit", "size", "bits", 4),
    ("size=2.5bit", "size", "bits", 2.5),
    ("size=12.5%", "size", "percent", 12.5),
    ("latency=frac:0.5", "latency", "frac", 0.5),
    (" SIZE = 4bit ", "size", "bits", 4),
])
def test_parse_forms(text, cost, form, value):
    spec = parse_budget(text)
    assert (spec.cost, spec.form) == (cost, form)
    assert spec.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["size", "size=", "size=abc", "size=4 parsecs", "=4bit", "size=frac:1.5",
                                  "size=-3MB", "size=40bit", "bops=12furlongs"])
def test_bad_budgets_say_what_is_expected(text):
    with pytest.raises(BudgetParseError) as info:
        parse_budget(text)
    assert "\n" not in str(info.value)


def test_resolution_forms():
    space = small_space()
    size = SizeCost()
    four = size.cost(space, Policy.uniform(space, 4))
    three = size.cost(space, Policy.uniform(space, 3))
    assert resolve_budget("size=4bit", space, size).limit == four
    assert resolve_budget("size=3.5bit", space, size).limit == pytest.approx((three + four) / 2)
    floating = sum(l.params * 32 + l.bias_params * 32 for l in space.layers)
    assert resolve_budget("size=12.5%", space, size).limit == pytest.approx(floating / 8)
    cheap, dear = size.cost(space, Policy.uniform(space, 2)), size.cost(space, Policy.uniform(space, 8))
    assert resolve_budget("size=frac:0.25", space, size).limit == pytest.approx(cheap + 0.25 * (dear - cheap))
    assert resolve_budget("size=2MB", space, size).limit == 16e6


def test_uniform_policy_meets_its_own_bit_budget_exactly():
    for granularity in ("layer", "kernel"):
        problem = Problem.build(small_space(granularity), ["size=4bit", "bops=4bit"])
        assert problem.fits(Policy.uniform(problem.space, 4))
        assert not problem.fits(Policy.uniform(problem.space, 8))


def test_infeasible_names_cheapest():
    space = small_space()
    with pytest.raises(InfeasibleBudgetError) as info:
        Problem.build(space, ["size=1.5bit"])
    cheapest = SizeCost().cost(space, Policy.uniform(space, 2))
    assert info.value.cheapest == cheapest == cheapest_cost(space, SizeCost())
    assert "cheapest policy" in str(info.value)


def test_several_budgets_and_unknown_cost():
    problem = Problem.build(small_space(), ["size=4bit", "bops=50%"])
    assert [b.cost for b in problem.budgets] == ["size", "bops"]
    from bitsearch.errors import CostModelError
    with pytest.raises(CostModelError, match="known costs"):
        Problem.build(small_space(), ["weight=4bit"])
    with pytest.raises(CostModelError, match="latency-table"):
        Problem.build(small_space(), ["latency=1ms"])


def test_bops_bit_budget_with_searched_activations_uses_same_width():
    space = small_space(act_bits=(4, 8))
    bops = BopsCost()
    assert resolve_budget("bops=4bit", space, bops).limit == bops.cost(space, Policy.uniform(space, 4, 4))
