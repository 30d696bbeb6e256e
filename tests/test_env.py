"""QuantEnv: the gymnasium contract, budgets kept exactly, the projection, determinism,
the evaluation cache, rewards, and that stable-baselines3 agents learn on it."""

from __future__ import annotations

import itertools
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import bitsearch.envs
from bitsearch.envs import ENV_ID, QuantEnv
from bitsearch.envs.projection import intent_loss, planned_costs, project
from bitsearch.errors import UserInputError
from bitsearch.policy import Policy
from bitsearch.problem import Problem
from bitsearch.sensitivity.table import SensitivityTable
from bitsearch.space import Layer, Pin, SearchSpace

from helpers import small_problem

COMBINATIONS = list(itertools.product(("layer", "kernel"), ("continuous", "discrete")))


def run_episode(env, rng, *, masked=False):
    env.reset(seed=int(rng.integers(1 << 30)))
    while True:
        if masked:
            action = int(rng.choice(np.flatnonzero(env.action_masks())))
        else:
            action = env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs)
        if terminated:
            return reward, info


# --- the gymnasium contract ---------------------------------------------------------------
@pytest.mark.parametrize("granularity,action_type", COMBINATIONS)
def test_check_env(granularity, action_type):
    env = QuantEnv(small_problem(("size=3bit",), granularity), action_type=action_type)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker's warnings count as failures
        check_env(env, skip_render_check=True)


@pytest.mark.parametrize("granularity,action_type", COMBINATIONS)
def test_check_env_searched_activations_and_pins(granularity, action_type):
    problem = small_problem(("size=3bit", "bops=5bit"), granularity, act_bits=(4, 6, 8),
                            pinned=(("stem", Pin(8, 8)),))
    env = QuantEnv(problem, action_type=action_type)
    check_env(env, skip_render_check=True)
    assert env.step_is_act.sum() == len(problem.space.groups())


def test_registered_by_entry_point_string():
    spec = gymnasium.spec(ENV_ID)
    assert spec.entry_point == "bitsearch.envs.quant_env:QuantEnv"
    env = gymnasium.make(ENV_ID, problem=small_problem(), action_type="discrete")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(bitsearch.envs.OBSERVATION_FEATURES),)
    assert isinstance(env.unwrapped, QuantEnv)


def test_import_bitsearch_does_not_import_rl_stack():
    code = ("import sys, bitsearch, bitsearch.searchers; "
            "heavy = [m for m in ('gymnasium', 'stable_baselines3', 'torch', 'sb3_contrib') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_walk_covers_every_decision_once():
    for granularity in ("layer", "kernel"):
        problem = small_problem(("size=3bit",), granularity, act_bits=(4, 8), pinned=(("fc", Pin(8, 8)),))
        env = QuantEnv(problem)
        weight_steps = env.step_index[~env.step_is_act]
        assert sorted(weight_steps.tolist()) == list(range(len(problem.space.weight_units())))
        act_steps = env.step_index[env.step_is_act]
        assert act_steps.tolist() == list(range(len(problem.space.groups())))
        # each group's activation decision comes before its weights
        for g in range(env.n_groups):
            first = env.group_first_step[g]
            assert env.step_is_act[first] and env.step_group[first] == g


def test_kernel_walk_exposes_kernels():
    problem = small_problem(("size=3bit",), "kernel")
    env = QuantEnv(problem)
    assert env.n_steps == sum(layer.kernels for layer in problem.space.layers)
    obs, _ = env.reset(seed=0)
    seen = [obs[12]]
    for _ in range(7):
        obs, *_ = env.step(env.action_space.sample())
        seen.append(obs[12])
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0  # kernel index within the stem


# --- budgets ----------------------------------------------------------------------------------
@pytest.mark.parametrize("granularity,action_type", COMBINATIONS)
def test_budget_never_exceeded(granularity, action_type):
    rng = np.random.default_rng(0)
    for budgets, kw in ((("size=3bit",), {}), (("size=2.5bit", "bops=4bit"), {}),
                        (("size=2.2bit", "bops=3bit"), {"act_bits": (2, 4, 8)}),
                        (("bops=frac:0.1",), {"act_bits": (2, 4, 8), "pinned": (("stem", Pin(8, 8)),)})):
        problem = small_problem(budgets, granularity, **kw)
        env = QuantEnv(problem, action_type=action_type)
        for _ in range(15):
            _, info = run_episode(env, rng)
            policy = info["policy"]
            for budget in problem.budgets:
                assert problem.costs[budget.cost].cost(problem.space, policy) <= budget.limit
            problem.validate(policy)


def test_all_widest_request_is_projected_onto_the_budget():
    problem = small_problem(("size=3bit",), "kernel")
    env = QuantEnv(problem, action_type="discrete")
    env.reset(seed=0)
    for _ in range(env.n_steps):
        _, reward, done, _, info = env.step(env.action_space.n - 1)
    assert done and info["projected"] and info["intent_lost"] > 0
    limit = problem.budgets[0].limit
    assert info["costs"]["size"] <= limit
    # and close to it: the projection gives back what it does not need to cut
    per_kernel_step = max(l.params_per_kernel for l in problem.space.layers) * 4
    assert limit - info["costs"]["size"] < per_kernel_step


def test_request_within_budget_is_kept_as_is():
    problem = small_problem(("size=4bit",), "layer")
    env = QuantEnv(problem, action_type="discrete")
    env.reset(seed=0)
    for _ in range(env.n_steps):
        _, _, done, _, info = env.step(1)  # 3 bits everywhere: under the 4-bit budget
    assert not info["projected"] and info["intent_lost"] == 0
    assert info["policy"] == Policy.uniform(problem.space, 3)


def test_uniform_request_at_exactly_the_budget_is_not_lowered():
    for granularity in ("layer", "kernel"):
        problem = small_problem(("size=3bit",), granularity)
        env = QuantEnv(problem, action_type="discrete")
        env.reset(seed=0)
        for _ in range(env.n_steps):
            _, _, done, _, info = env.step(1)  # choices (2, 3, 4, 8): 3 bits
        assert not info["projected"]
        assert info["costs"]["size"] == problem.budgets[0].limit


def test_budget_mask_keeps_masked_episodes_within_budget():
    rng = np.random.default_rng(1)
    for granularity in ("layer", "kernel"):
        problem = small_problem(("size=2.5bit",), granularity)
        env = QuantEnv(problem, action_type="discrete", budget_mask=True)
        for _ in range(20):
            _, info = run_episode(env, rng, masked=True)
            assert not info["projected"]  # the mask alone kept the budget
        masks = env.action_masks()
        assert masks.dtype == bool and masks.shape == (env.action_space.n,)


def test_masks_hide_choices_that_do_not_exist():
    problem = small_problem(("size=3bit",), "layer", act_bits=(4, 8))  # 4 weight widths, 2 act widths
    env = QuantEnv(problem, action_type="discrete")
    env.reset(seed=0)
    assert env.step_is_act[0]
    assert env.action_masks().tolist() == [True, True, False, False]
    env.step(1)
    assert env.action_masks().tolist() == [True, True, True, True]


def test_projection_is_close_to_the_exact_optimum():
    """On a space small enough to enumerate, the projection loses (almost) no more intent
    than the exact closest policy within budget."""
    rng = np.random.default_rng(0)
    problem = small_problem(("size=2.5bit", "bops=4bit"), "layer")
    env = QuantEnv(problem)
    costs, base, limits = env._select_costs(env._a_idx), env._base, env.limits
    nw = env.n_weight_choices
    excess, exact_total = [], []
    rows = np.arange(env.n_units)
    for _ in range(60):
        x = rng.uniform(0, nw, env.n_units)
        result = project(x, costs, base, limits)
        assert np.all(planned_costs(costs, base, result.idx) <= limits)
        request = np.minimum(x.astype(int), nw - 1)
        assert np.all(result.idx <= request)  # only lowers
        if not result.changed:
            continue
        loss = intent_loss(x, nw)
        best = min(loss[rows, list(c)].sum() for c in itertools.product(range(nw), repeat=env.n_units)
                   if np.all(planned_costs(costs, base, np.array(c)) <= limits))
        excess.append(loss[rows, result.idx].sum() - best)
        exact_total.append(best - loss[rows, request].sum())
    assert len(excess) > 20
    assert min(excess) >= -1e-9
    assert np.mean(excess) <= 0.05 * np.mean(exact_total)


def test_projection_spreads_a_cut_rather_than_flooring_one_layer():
    # four equal layers asking for 8 bits under a 4-bit budget end near 4 bits each
    layers = tuple(Layer(f"l{i}", "linear", params=1000, macs=1000, kernels=10, in_features=100,
                         out_channels=10) for i in range(4))
    space = SearchSpace(layers, weight_bits=(2, 3, 4, 5, 6, 7, 8), act_bits=(8,))
    problem = Problem.build(space, ["size=4bit"], sensitivity=_flat_table(space))
    env = QuantEnv(problem, action_type="discrete")
    env.reset(seed=0)
    for _ in range(env.n_steps):
        _, _, _, _, info = env.step(6)
    widths = [b.weight_bits for _, b in info["policy"].bits]
    assert widths == [4, 4, 4, 4]


def _flat_table(space):
    bits = tuple(space.weight_bits)
    return SensitivityTable(bits, {l.name: np.power(4.0, -np.asarray(bits, float))[None] for l in space.layers})


# --- determinism, cache, reward -----------------------------------------------------------------
@pytest.mark.parametrize("granularity,action_type", COMBINATIONS)
def test_deterministic_under_reset_seed(granularity, action_type):
    problem = small_problem(("size=3bit",), granularity)
    trajectories = []
    for _ in range(2):
        env = QuantEnv(problem, action_type=action_type)
        env.action_space.seed(7)
        obs, _ = env.reset(seed=7)
        seen = [obs]
        while True:
            obs, reward, done, _, info = env.step(env.action_space.sample())
            seen.append(obs)
            if done:
                break
        trajectories.append((np.array(seen), reward, info["policy"].key))
    assert np.array_equal(trajectories[0][0], trajectories[1][0])
    assert trajectories[0][1:] == trajectories[1][1:]


class CountingEvaluator:
    metric = "top1"
    higher_is_better = True
    metric_kind = "synthetic"

    def __init__(self, space):
        self.space = space
        self.calls = 0

    def evaluate(self, policy):
        self.calls += 1
        mean = np.mean([b.mean_weight_bits for _, b in policy.bits])
        return {"top1": float(1.0 - 0.5 * 2.0 ** -mean), "loss": float(2.0 ** -mean)}


def test_evaluations_are_cached_by_policy_key():
    problem = small_problem(("size=3bit",), "layer")
    evaluator = CountingEvaluator(problem.space)
    problem = Problem(problem.space, problem.costs, problem.budgets, evaluator=evaluator)
    env = QuantEnv(problem, action_type="discrete")
    rewards = []
    for _ in range(5):
        env.reset(seed=0)
        for _ in range(env.n_steps):
            _, reward, *_ = env.step(1)
        rewards.append(reward)
    assert len(set(rewards)) == 1
    assert evaluator.calls == 2  # the reference (widest) policy and the repeated one


def test_reward_forms_at_the_reference():
    problem = small_problem(("size=3bit",), "layer")
    for form in ("haq", "autoq"):
        env = QuantEnv(problem, reward=form, action_type="discrete")
        env.reset(seed=0)
        for _ in range(env.n_steps):
            _, reward, *_ = env.step(1)  # uniform 3 bit: the widest uniform policy within budget
        assert reward == pytest.approx(0.0, abs=1e-12)
        assert env.reward_of(env.reference / 2) > 0  # half the loss is better


def test_reward_with_an_evaluator_follows_haq():
    problem = small_problem(("size=3bit",), "layer")
    problem = Problem(problem.space, problem.costs, problem.budgets, evaluator=CountingEvaluator(problem.space))
    env = QuantEnv(problem, reward="haq")
    reference = env.reference  # top1 of the widest policy
    assert env.reward_of(reference - 0.01) == pytest.approx(-0.1)  # 0.1 per percentage point
    env = QuantEnv(problem, reward="autoq", cost_weights={"bops": 0.5})
    policy = Policy.uniform(problem.space, 3)
    bops = problem.costs["bops"].cost(problem.space, policy)
    widest = problem.costs["bops"].cost(problem.space, Policy.uniform(problem.space, 8))
    expected = np.log(0.9 / env.reference) - 0.5 * np.log(bops / widest)
    assert env.reward_of(0.9, policy) == pytest.approx(expected)


def test_bad_settings_are_user_errors():
    problem = small_problem()
    with pytest.raises(UserInputError):
        QuantEnv(problem, action_type="binary")
    with pytest.raises(UserInputError):
        QuantEnv(problem, reward="accuracy")
    with pytest.raises(UserInputError):
        QuantEnv(problem, cost_weights={"watts": 1.0})
    shape_only = Problem(problem.space, problem.costs, problem.budgets)
    with pytest.raises(UserInputError, match="optimise"):
        QuantEnv(shape_only)


# --- stable-baselines3 learns on it ---------------------------------------------------------------
def learning_problem():
    """Four equal layers, widths {2, 4, 8}, size=4bit: layer 'l0' is 100x more sensitive than
    the others, so the best policy gives it 8 bits and narrows the rest."""
    layers = tuple(Layer(f"l{i}", "conv2d", params=2304, macs=2304 * 64, kernels=16, in_channels=16,
                         out_channels=16, kernel_size=(3, 3), stride=(1, 1), out_spatial=(8, 8))
                   for i in range(4))
    space = SearchSpace(layers, weight_bits=(2, 4, 8), act_bits=(8,), model_name="learning")
    bits = np.asarray(space.weight_bits, float)
    weight = {l.name: (100.0 if l.name == "l0" else 1.0) * np.power(4.0, -bits)[None] for l in space.layers}
    return Problem.build(space, ["size=4bit"], sensitivity=SensitivityTable(space.weight_bits, weight))


class EpisodeRewards:
    """A stable-baselines3 callback that keeps the reward of every finished episode."""

    def __new__(cls):
        from stable_baselines3.common.callbacks import BaseCallback

        class _Recorder(BaseCallback):
            def __init__(self):
                super().__init__()
                self.rewards = []

            def _on_step(self):
                self.rewards.extend(info["episode"]["r"] for info in self.locals["infos"] if "episode" in info)
                return True

        return _Recorder()


def _final_policy(model, env, masked=False):
    obs, _ = env.reset(seed=0)
    while True:
        kw = {"action_masks": env.action_masks()} if masked else {}
        action, _ = model.predict(obs, deterministic=True, **kw)
        obs, reward, done, _, info = env.step(action)
        if done:
            return reward, info


def _optimum(problem):
    from bitsearch import searchers

    return searchers.create("exhaustive").search(problem).score


def test_ppo_learns(one_thread):
    """PPO on discrete actions; the projection penalty makes over-asking visible."""
    from stable_baselines3 import PPO

    problem = learning_problem()
    env = QuantEnv(problem, action_type="discrete", projection_penalty=0.2)
    model = PPO("MlpPolicy", env, n_steps=256, batch_size=64, learning_rate=1e-3, seed=0, device="cpu",
                policy_kwargs={"net_arch": [32, 32]})
    recorder = EpisodeRewards()
    model.learn(4096, callback=recorder)
    rewards = np.asarray(recorder.rewards)
    first, last = rewards[:100].mean(), rewards[-100:].mean()
    assert last > first + 2.0, (first, last)
    assert last > -0.5  # from far below the uniform 4-bit policy (reward 0) to about it or better
    reward, info = _final_policy(model, QuantEnv(problem, action_type="discrete", projection_penalty=0.2))
    assert problem.fits(info["policy"])


def test_maskable_ppo_learns(one_thread):
    """MaskablePPO with budget masks: every episode keeps the budget by itself, and the
    agent finds the optimum (8 bits for the sensitive layer)."""
    from sb3_contrib import MaskablePPO

    problem = learning_problem()
    env = QuantEnv(problem, action_type="discrete", budget_mask=True)
    model = MaskablePPO("MlpPolicy", env, n_steps=256, batch_size=64, learning_rate=1e-3, seed=0,
                        device="cpu", policy_kwargs={"net_arch": [32, 32]})
    recorder = EpisodeRewards()
    model.learn(4096, callback=recorder)
    rewards = np.asarray(recorder.rewards)
    first, last = rewards[:100].mean(), rewards[-100:].mean()
    assert last > first + 2.0, (first, last)
    reward, info = _final_policy(model, QuantEnv(problem, action_type="discrete", budget_mask=True), masked=True)
    assert not info["projected"]
    assert info["policy"]["l0"].weight_bits == 8
    assert -info["value"] == pytest.approx(_optimum(problem))
