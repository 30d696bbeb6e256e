"""The deep-RL searchers: autoq (hierarchical) and haq (flat DDPG).

They pass the shared conformance suite (budgets kept exactly, JSON round trip, seed
determinism, the callback can stop them), record a learning curve, accept the
stable-baselines3 algorithms they document, and learn: rewards rise over the episodes.
"""

from __future__ import annotations

import numpy as np
import pytest

from bitsearch import searchers
from bitsearch.errors import SearcherSettingsError
from bitsearch.problem import Problem
from bitsearch.space import Pin

from helpers import small_problem

FAST = {"episodes": 6, "warmup": 2, "net_arch": [32, 32], "batch_size": 16}
FAST_AUTOQ = {**FAST, "low_net_arch": [16, 16], "low_batch_size": 64}


def _run(name, problem, seed=0, callback=None, **settings):
    base = FAST_AUTOQ if name == "autoq" else FAST
    return searchers.create(name, **{**base, **settings}).search(problem, seed=seed, callback=callback)


@pytest.mark.parametrize("name", ["autoq", "haq"])
@pytest.mark.parametrize("granularity", ["layer", "kernel"])
def test_learning_curve(name, granularity):
    problem = small_problem(("size=3bit",), granularity)
    result = _run(name, problem, episodes=8)
    curve = result.info["learning_curve"]
    assert [e["episode"] for e in curve] == list(range(1, 9))
    for entry in curve:
        assert {"reward", "best_reward", "value", "best_score", "projected", "noise", "seconds"} <= set(entry)
    best = [e["best_reward"] for e in curve]
    assert best == list(np.maximum.accumulate([e["reward"] for e in curve]))
    assert all(e["noise"] == 0.0 for e in curve[:2])  # warm-up: random actions
    assert curve[2]["noise"] == pytest.approx(0.5)
    assert result.evaluations == 8  # every episode's policy is in the history
    assert result.score == max(e.score for e in result.history)


@pytest.mark.parametrize("name", ["autoq", "haq"])
def test_episode_events_and_stop(name):
    problem = small_problem(("size=3bit",), "layer")
    seen = []

    def callback(event):
        if event.kind == "episode":
            seen.append(event)
            assert event.best_policy is not None and problem.fits(event.best_policy)
            assert "best_reward" in event.data and "reward" in event.data
            return event.step < 3
        return True

    result = _run(name, problem, episodes=10, callback=callback)
    assert [e.step for e in seen] == [1, 2, 3]
    assert all(e.total == 10 for e in seen)
    assert result.stopped_early
    assert len(result.info["learning_curve"]) == 3


@pytest.mark.parametrize("settings", [{"algorithm": "td3"}, {"algorithm": "sac", "low_algorithm": "sac"},
                                      {"algorithm": "ppo", "ppo_episodes": 2, "low_algorithm": "td3"},
                                      {"reward": "haq"}])
def test_autoq_algorithms(settings):
    problem = small_problem(("size=2.5bit", "bops=4bit"), "kernel", act_bits=(4, 8))
    result = _run("autoq", problem, **settings)
    assert problem.fits(result.policy)
    assert result.info["agent"]["high"] == settings.get("algorithm", "ddpg")


@pytest.mark.parametrize("settings", [{"algorithm": "td3"}, {"algorithm": "sac"}, {"reward": "autoq"}])
def test_haq_algorithms(settings):
    problem = small_problem(("size=2.5bit",), "layer", act_bits=(4, 6, 8))
    result = _run("haq", problem, **settings)
    assert problem.fits(result.policy)
    assert result.info["agent"]["decisions_per_episode"] == 2 * len(problem.space.groups())


@pytest.mark.parametrize("name,settings,message", [
    ("autoq", {"algorithm": "a2c"}, "algorithm"),
    ("autoq", {"low_algorithm": "ppo"}, "low_algorithm"),
    ("autoq", {"zeta": 2.0}, "zeta"),
    ("haq", {"algorithm": "ppo"}, "algorithm"),
    ("haq", {"episodes": 0}, "episodes"),
    ("haq", {"reward": "accuracy"}, "reward"),
])
def test_bad_settings(name, settings, message):
    with pytest.raises(SearcherSettingsError, match=message):
        _run(name, small_problem(), **settings)


def test_unknown_setting_names_the_known_ones():
    with pytest.raises(SearcherSettingsError, match="episodes"):
        searchers.create("autoq", epsiodes=3)


def test_pinned_layers_stay_pinned():
    problem = small_problem(("size=3bit",), "kernel", pinned=(("stem", Pin(8, 8)), ("fc", Pin(8, 8))))
    for name in ("autoq", "haq"):
        result = _run(name, problem)
        assert set(result.policy["stem"].weight_bits) == {8}
        assert problem.fits(result.policy)


class CountingEvaluator:
    metric = "top1"
    higher_is_better = True
    metric_kind = "synthetic"

    def __init__(self):
        self.calls = 0

    def evaluate(self, policy):
        self.calls += 1
        mean = np.mean([b.mean_weight_bits for _, b in policy.bits])
        return {"top1": float(1.0 - 0.5 * 2.0 ** -mean)}


def test_sensitivity_objective_spares_the_evaluator():
    """objective='sensitivity': rewards from the table; the evaluator scores only the
    policies that beat the best reward so far."""
    base = small_problem(("size=3bit",), "kernel")
    evaluator = CountingEvaluator()
    problem = Problem(base.space, base.costs, base.budgets, evaluator=evaluator, sensitivity=base.sensitivity)
    result = _run("autoq", problem, episodes=12, objective="sensitivity")
    improvements = len({e["best_reward"] for e in result.info["learning_curve"]})
    assert result.evaluations == improvements < 12
    assert evaluator.calls == result.evaluations
    assert "top1" in result.metrics and problem.fits(result.policy)


@pytest.mark.parametrize("name,granularity", [("autoq", "kernel"), ("haq", "layer")])
def test_rewards_rise_with_training(name, granularity):
    """After the random warm-up, the agents' episodes get better."""
    problem = small_problem(("size=3bit",), granularity)
    result = searchers.create(name, episodes=60, warmup=20).search(problem, seed=0)
    rewards = np.array([e["reward"] for e in result.info["learning_curve"]])
    assert rewards[-15:].mean() > rewards[:20].mean() + 0.1, (rewards[:20].mean(), rewards[-15:].mean())


def test_fair_share_position_spends_the_budget_left():
    """autoq's goals are offsets from this position: the width at which the rest of the
    network would spend exactly the budget left."""
    from bitsearch.envs import QuantEnv

    env = QuantEnv(small_problem(("size=3bit",), "kernel"))  # choices 2, 3, 4, 8
    env.begin()
    assert env.fair_position(0) == pytest.approx(1.5 / 4)  # exactly 3 bits everywhere
    env = QuantEnv(small_problem(("size=3.5bit",), "kernel"))
    env.begin()
    assert env.fair_position(0) == pytest.approx(2.0 / 4)  # half 3-bit, half 4-bit
    units = env.group_units[0]
    env.decide_weights(units, np.ones(units.size))  # the first layer takes 8 bits: less left for the rest
    assert env.fair_position(1) < 2.0 / 4
