"""The searcher conformance suite: every searcher passes it.

A test module subclasses :class:`SearcherConformance`, names the searcher and its
(fast) settings, and may override ``make_problem``::

    class TestRandom(SearcherConformance):
        searcher = "random"
        settings = {"samples": 8}

Checks: every budget kept exactly (costs recomputed from fresh cost models); the result
round-trips through JSON and validates against the shipped schema; the same seed gives
the same policy JSON (wall-clock fields aside); a callback can stop the search; a budget
no policy meets raises InfeasibleBudgetError.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from bitsearch import searchers
from bitsearch.cost import make_cost_model
from bitsearch.errors import InfeasibleBudgetError
from bitsearch.policy import Policy, schema_path, validate_policy

from helpers import small_problem

STOP_KINDS = ("evaluation", "progress", "episode")


class SearcherConformance:
    searcher: str = ""
    settings: dict = {}
    granularities: tuple[str, ...] = ("layer",)
    # budget sets the suite runs; each must be feasible for make_problem's space
    budget_sets: tuple[tuple[str, ...], ...] = (("size=3bit",), ("size=2.5bit", "bops=4bit"))
    # how many progress events a searcher may still send after its callback said stop
    events_after_stop: int = 2

    def make_problem(self, budgets, granularity):
        return small_problem(budgets, granularity)

    def space_of(self, result, problem):
        """The space the result's policy lives in (another model width for uniform-width)."""
        return problem.space

    def run(self, problem, seed=0, callback=None, **overrides):
        searcher = searchers.create(self.searcher, **{**self.settings, **overrides})
        return searcher.search(problem, seed=seed, callback=callback)

    # --- the checks ---------------------------------------------------------------------
    def test_budgets_kept_exactly(self, granularity):
        for budgets in self.budget_sets:
            problem = self.make_problem(budgets, granularity)
            result = self.run(problem)
            space = self.space_of(result, problem)
            for budget in problem.budgets:
                fresh = problem.costs[budget.cost]
                if budget.cost in ("size", "bops", "energy", "bitfusion"):
                    fresh = make_cost_model(budget.cost)
                cost = fresh.cost(space, result.policy)
                assert cost <= budget.limit, f"{self.searcher} {budgets}: {budget.cost} {cost} > {budget.limit}"
                assert result.costs[budget.cost] == cost
            assert result.policy.granularity == granularity

    def test_json_round_trip(self, granularity, tmp_path):
        problem = self.make_problem(self.budget_sets[0], granularity)
        result = self.run(problem)
        text = result.policy.to_json()
        jsonschema.validate(json.loads(text), json.loads(schema_path().read_text()))
        back = Policy.from_json(text)
        assert back == result.policy
        assert back.key == result.policy.key
        assert back.to_json() == text
        validate_policy(back, self.space_of(result, problem))
        meta = json.loads(text)
        assert meta["search"]["searcher"] == self.searcher
        assert meta["costs"] == result.costs
        assert meta["budgets"] == [b.to_dict() for b in problem.budgets]

    def test_same_seed_same_policy(self, granularity):
        first = self.run(self.make_problem(self.budget_sets[0], granularity), seed=3)
        second = self.run(self.make_problem(self.budget_sets[0], granularity), seed=3)
        assert first.policy.canonical_json() == second.policy.canonical_json()

    def test_callback_can_stop(self, granularity):
        problem = self.make_problem(self.budget_sets[0], granularity)
        seen = {"stopped": False, "after": 0, "events": 0}

        def callback(event):
            seen["events"] += 1
            if event.kind in STOP_KINDS:
                if seen["stopped"]:
                    seen["after"] += 1
                seen["stopped"] = True
                return False
            return True

        result = self.run(problem, callback=callback)
        assert seen["events"] >= 2  # at least start and end
        if seen["stopped"]:
            assert result.stopped_early
            assert seen["after"] <= self.events_after_stop
        assert all(b.allows(result.costs[b.cost]) for b in problem.budgets)

    def test_infeasible_budget_raises(self, granularity):
        with pytest.raises(InfeasibleBudgetError) as info:
            problem = self.make_problem(("size=1.5bit",), granularity)
            self.run(problem)
        if info.value.cheapest is not None:
            assert info.value.cheapest > info.value.limit
