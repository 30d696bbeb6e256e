"""Evaluator-guided refinement (solvers/refine.py) and the searchers' ``refine`` setting."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from bitsearch import searchers
from bitsearch.encoding import Encoding
from bitsearch.errors import SearcherSettingsError
from bitsearch.problem import Problem
from bitsearch.search import BaseSearcher, SearchRun
from bitsearch.settings import SearcherSettings, setting
from bitsearch.solvers.refine import neighbours, refine_policy

from helpers import small_space, synthetic_sensitivity


class InteractionEvaluator:
    """Minus the table's loss, less 30% when the classifier ``fc`` is at 3 bits: an effect
    on the whole network that no additive model sees (as fc2 at 3 bits beside a 2-bit fc1
    beats fc2 at 4 or 8 bits on mnist1d-cnn)."""

    metric = "top1"
    higher_is_better = True
    metric_kind = "synthetic"

    def __init__(self, space, table):
        self.space, self.table, self.calls = space, table, 0

    def evaluate(self, policy):
        self.calls += 1
        loss = self.table.loss(self.space, policy)
        if policy["fc"].max_weight_bits == 3:
            loss *= 0.7
        return {"top1": -loss}


def problem_with_interaction(granularity="layer", budgets=("size=4bit",), **space_kw):
    space = small_space(granularity, **space_kw)
    table = synthetic_sensitivity(space, seed=1)
    return Problem.build(space, budgets, evaluator=InteractionEvaluator(space, table), sensitivity=table)


@dataclass(frozen=True, kw_only=True)
class _StartSettings(SearcherSettings):
    start: Any = setting(None, help="the policy to refine")
    rounds: int = setting(3, ge=0, help="rounds of local search")
    limit: int | None = setting(None, ge=1, help="fresh evaluations at most")


class _Start(BaseSearcher):
    """Test double: evaluates one given policy, then refines it."""

    name = "refine-test"
    settings_class = _StartSettings

    def _search(self, problem, run: SearchRun):
        c = self.config
        policy, run.info["refine"] = refine_policy(problem, run, c.start, c.rounds, max_evaluations=c.limit)
        return policy


def narrowest(problem):
    return Encoding(problem.space).decode(*Encoding(problem.space).uniform(0, 0))


def all_fitting(problem):
    enc = Encoding(problem.space)
    for combo in itertools.product(range(enc.n_weight_choices), repeat=enc.n_weight_units):
        policy = enc.decode(np.asarray(combo), np.zeros(enc.n_act_units, dtype=int))
        if problem.fits(policy):
            yield policy


def test_layer_neighbours_change_one_unit_to_every_other_width():
    space = small_space("layer", act_bits=(4, 8))
    enc = Encoding(space)
    w, a = enc.uniform(1, 0)
    moves = list(neighbours(enc, w, a))
    assert len(moves) == enc.n_weight_units * (enc.n_weight_choices - 1) + enc.n_act_units * (enc.n_act_choices - 1)
    for mw, ma in moves:
        assert int((mw != w).sum()) + int((ma != a).sum()) == 1


def test_kernel_neighbours_shift_a_whole_layer_one_step():
    space = small_space("kernel")
    enc = Encoding(space)
    w, a = enc.uniform(0, None)
    moves = list(neighbours(enc, w, a))
    layers = {unit.layers[0] for unit in enc.units}
    assert len(moves) == len(layers)  # at the narrowest width only "up" moves exist
    for mw, _ in moves:
        changed = np.flatnonzero(mw != w)
        assert len({enc.units[u].layers[0] for u in changed}) == 1
        assert np.all(mw[changed] == 1)


def test_refine_finds_the_interaction_and_keeps_the_budget():
    problem = problem_with_interaction()
    ilp = searchers.create("ilp").search(problem, seed=0)
    refined = searchers.create("ilp", refine=5).search(problem, seed=0)
    assert problem.fits(refined.policy)
    assert refined.score >= ilp.score
    best = max(all_fitting(problem), key=lambda p: problem.score(problem.evaluate(p)))
    best_score = problem.score(problem.evaluate(best))
    assert ilp.score < best_score - 1e-6  # the additive ILP misses the interaction
    assert refined.score == pytest.approx(best_score)
    info = refined.info["refine"]
    assert info["score_after"] == pytest.approx(refined.score) and info["score_before"] == pytest.approx(ilp.score)
    assert refined.policy.meta["search"]["settings"]["refine"] == 5


def test_refine_stops_at_a_local_optimum_and_never_scores_a_policy_twice():
    problem = problem_with_interaction()
    problem.evaluator.calls = 0
    result = _Start(start=narrowest(problem), rounds=50).search(problem, seed=0)
    info = result.info["refine"]
    assert info["rounds"] < 50  # it stopped because no move improved
    assert problem.evaluator.calls == info["fresh_evaluations"] == len({e.policy.key for e in result.history})
    enc = Encoding(problem.space)
    w, a = enc.encode(result.policy)
    for mw, ma in neighbours(enc, w, a):
        candidate = enc.decode(mw, ma)
        if problem.fits(candidate):
            assert problem.score(problem.evaluate(candidate)) <= result.score + 1e-12


def test_refine_respects_the_evaluation_limit_and_the_callback():
    problem = problem_with_interaction()
    limited = _Start(start=narrowest(problem), rounds=10, limit=4).search(problem, seed=0)
    assert limited.info["refine"]["fresh_evaluations"] == 4  # the start counts
    seen = []

    def stop_after_three(event):
        if event.kind == "evaluation":
            seen.append(event)
            return len(seen) < 3

    stopped = _Start(start=narrowest(problem), rounds=10).search(problem, seed=0, callback=stop_after_three)
    assert stopped.stopped_early and len(stopped.history) == 3
    assert problem.fits(stopped.policy)


def test_refine_at_kernel_granularity_keeps_the_budget():
    problem = problem_with_interaction("kernel")
    start = searchers.create("ilp").search(problem, seed=0)
    refined = searchers.create("ilp", refine=2).search(problem, seed=0)
    assert problem.fits(refined.policy) and refined.score >= start.score


@pytest.mark.parametrize("name", ["ilp", "fracbits"])
@pytest.mark.parametrize("bad", [{"refine": -1}, {"refine": 1.5}, {"refine": True}, {"refine_evaluations": 0}])
def test_bad_refine_settings_are_rejected(name, bad):
    with pytest.raises(SearcherSettingsError, match="refine"):
        searchers.create(name, **bad)
