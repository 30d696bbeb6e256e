"""Pieces both deep-RL searchers use: the env of a search run, exploration noise, reward
normalisation, the learning curve, and a tidy process state (threads, global RNGs)."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np

from bitsearch.search import BaseSearcher, SearchRun
from bitsearch.settings import SearcherSettings, setting

from .rl import OFF_POLICY

REWARD_FORMS = ("haq", "autoq")  # as bitsearch.envs.walk.REWARD_FORMS (not imported: envs needs gymnasium)


def truncated_normal(rng: np.random.Generator, mean, sigma: float, low: float, high: float) -> np.ndarray:
    """Samples of N(mean, sigma) truncated to [low, high] (HAQ's exploration noise).

    Rejection sampling (a few rounds), then clipping of whatever is still outside.
    """
    mean = np.asarray(mean, dtype=float)
    if sigma <= 0:
        return np.clip(mean, low, high)
    out = np.atleast_1d(rng.normal(mean, sigma)).astype(float)
    for _ in range(8):
        bad = (out < low) | (out > high)
        if not bad.any():
            break
        out[bad] = rng.normal(np.broadcast_to(mean, out.shape)[bad], sigma)
    out = np.clip(out, low, high)
    return out.reshape(mean.shape) if mean.ndim else out[0]


class RewardNormalizer:
    """Centres and scales episode rewards with statistics of the first ``n`` episodes.

    HAQ subtracts a moving average of the reward from each sampled batch; fixing the
    baseline and the scale after the warm-up episodes keeps the stored targets
    stationary (a replay buffer holds rewards of many past episodes) and makes the
    critic's scale independent of the reward form (accuracy points, log ratios, or
    relative loss).
    """

    def __init__(self, n: int):
        self.n = max(1, int(n))
        self.seen: list[float] = []
        self.mean = 0.0
        self.scale = 1.0
        self.ready = False

    def observe(self, reward: float) -> None:
        if self.ready:
            return
        self.seen.append(float(reward))
        if len(self.seen) >= self.n:
            values = np.asarray(self.seen)
            self.mean = float(values.mean())
            std = float(values.std())
            self.scale = std if std > 1e-8 else max(abs(self.mean), 1.0)
            self.ready = True

    def __call__(self, reward):
        return (np.asarray(reward, dtype=float) - self.mean) / self.scale


@dataclass(frozen=True, kw_only=True)
class RLSettings(SearcherSettings):
    """Settings haq and autoq share: the episode loop, the (high-level) learner, the env
    and the run (see docs/rl.md)."""

    episodes: int = setting(300, ge=1, help="episodes (one policy each)")
    warmup: int = setting(20, ge=0, help="episodes of uniformly random actions first, without training")
    algorithm: str = setting("ddpg", choices=OFF_POLICY, help="stable-baselines3 algorithm of the agent")
    actor_lr: float = setting(1e-4, gt=0, help="actor learning rate")
    critic_lr: float = setting(1e-3, gt=0, help="critic learning rate")
    net_arch: tuple[int, ...] = setting((300, 300), ge=1, help="hidden layer sizes of actor and critic")
    batch_size: int = setting(64, ge=1, help="replay batch size")
    buffer_episodes: int = setting(128, ge=1, help="replay buffer size, in episodes")
    tau: float = setting(0.01, gt=0, le=1, help="soft target-update rate")
    gamma: float = setting(1.0, ge=0, le=1, help="discount")
    noise: float = setting(0.5, ge=0, help="exploration noise sigma after the warm-up (truncated normal)")
    noise_decay: float = setting(0.99, ge=0, le=1, help="noise factor per episode after the warm-up")
    gradient_steps: int = setting(1, ge=0, help="updates per decision after each episode")
    reward: str = setting("haq", choices=REWARD_FORMS, help="reward form: haq (accuracy points) or autoq (log ratio)")
    reward_scale: float = setting(1.0, gt=0, help="multiplies the reward")
    cost_weights: dict[str, float] = setting({}, ge=0, help="AutoQ's accuracy-guaranteed reward: cost name -> psi; "
                                                      "the reward loses psi * log(cost / limit)")
    projection_penalty: float = setting(0.0, ge=0, help="reward lost per squared width step the budget "
                                                        "projection takes away, per unit")
    objective: str = setting("auto", choices=("auto", "sensitivity"),
                             help="auto: the problem's; sensitivity: score episodes with the table")
    threads: int | None = setting(1, ge=1, help="torch threads while searching (None: leave as is)")


class RunEnv:
    """The episode walk of a search run (:class:`~bitsearch.envs.QuantWalk`), wired so that
    every episode's policy is recorded; ``gym=True`` wraps it in the gymnasium
    :class:`~bitsearch.envs.QuantEnv` (for an agent that steps one decision at a time).

    When the env's reward reads the problem's own objective, every episode goes through
    ``run.evaluate`` (recorded in the history, cached by the run).  When it reads the
    cheap sensitivity table while the problem also has an evaluator
    (``objective="sensitivity"``), the env scores with the table and only policies that
    beat the best reward so far are evaluated by the run.
    """

    def __init__(self, problem, run, settings: RLSettings, *, gym: bool = False):
        from bitsearch.envs import QuantEnv, QuantWalk

        objective = settings.objective
        self.run = run
        self.episode = 0
        self.total = settings.episodes
        self.separate = objective == "sensitivity" and problem.objective != "sensitivity"
        evaluate = None if self.separate else self._evaluate
        self.walk = QuantWalk(problem, reward=settings.reward, reward_scale=settings.reward_scale,
                              cost_weights=settings.cost_weights or None, objective=objective,
                              projection_penalty=settings.projection_penalty, evaluate=evaluate,
                              name="QuantEnv" if gym else "QuantWalk")
        self.env = QuantEnv(walk=self.walk, action_type="continuous") if gym else self.walk
        self.best_reward = -np.inf

    def _evaluate(self, policy):
        return self.run.evaluate(policy, step=self.episode + 1, total=self.total).metrics

    def after_episode(self, result) -> None:
        if result.reward > self.best_reward:
            self.best_reward = float(result.reward)
            if self.separate:
                self._evaluate(result.policy)


def record_episode(run, env: RunEnv, episode: int, result, *, noise: float, extra: dict | None = None) -> bool:
    """Append to the learning curve, send the ``episode`` event; False when stopped."""
    env.after_episode(result)
    best = run.best
    entry = {"episode": episode + 1, "reward": round(float(result.reward), 6),
             "best_reward": round(float(env.best_reward), 6), "value": float(result.value),
             "best_score": None if best is None else float(best.score), "projected": bool(result.projected),
             "intent_lost": round(float(result.intent_lost), 4), "noise": round(float(noise), 6),
             "seconds": round(run.elapsed, 4)}
    if extra:
        entry.update(extra)
    run.info.setdefault("learning_curve", []).append(entry)
    if run.stopped:
        return False
    return run.emit("episode", step=episode + 1, total=env.total, reward=entry["reward"],
                    best_reward=entry["best_reward"], value=entry["value"], projected=entry["projected"])


@contextlib.contextmanager
def tidy_process(threads: int | None):
    """Run with ``threads`` torch threads, and leave the global RNGs (which
    stable-baselines3 reseeds) and the thread count as they were."""
    import torch

    np_state = np.random.get_state()
    py_state = random.getstate()
    torch_state = torch.get_rng_state()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        np.random.set_state(np_state)
        random.setstate(py_state)
        torch.set_rng_state(torch_state)


class RLSearcher(BaseSearcher):
    """A searcher that trains an agent: :meth:`_train` runs in :func:`tidy_process` (the
    configured torch threads, the global RNGs left as they were) and the search returns the
    best evaluated policy."""

    def _search(self, problem, run: SearchRun):
        with tidy_process(self.config.threads):
            self._train(problem, run)
        return None  # the best evaluated policy

    def _train(self, problem, run: SearchRun) -> None:
        raise NotImplementedError
