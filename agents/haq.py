"""``haq``: flat deep-RL search in the style of HAQ (Wang et al., "HAQ: Hardware-Aware
Automated Quantization with Mixed Precision", CVPR 2019).

One agent walks the network decision by decision (:class:`~bitsearch.envs.QuantEnv`
with continuous actions: per layer the activation width when it is searched, then the
weight width; at kernel granularity every kernel is a step).  As in HAQ:

* the actor maps the layer's observation to ``[0, 1]``, which the env maps onto the
  width choices; exploration adds truncated-normal noise whose sigma starts at
  ``noise`` and decays by ``noise_decay`` per episode after ``warmup`` episodes of
  uniformly random actions, during which nothing is trained;
* the reward comes only at the end of the episode, from the quantized model's accuracy
  (or the sensitivity table), and is assigned to every decision of the episode;
* after each episode the agent takes ``gradient_steps`` updates per decision;
* budgets are enforced after the episode -- here by the env's projection onto the
  budgets (the closest policy in intent), not by HAQ's layer-after-layer decrement.

Rewards are centred and scaled with the warm-up episodes' statistics (HAQ subtracts a
moving average).  The algorithm is DDPG by default (HAQ's); TD3 and SAC from
stable-baselines3 also work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitsearch.search import SearchRun

from .common import RewardNormalizer, RLSearcher, RLSettings, RunEnv, record_episode, truncated_normal
from .rl import OffPolicyLearner


@dataclass(frozen=True, kw_only=True)
class HAQSettings(RLSettings):
    """:class:`~bitsearch.agents.common.RLSettings` with HAQ's defaults."""


class HAQSearcher(RLSearcher):
    name = "haq"
    description = "flat DDPG over layers (HAQ, Wang et al. 2019), budget kept by projection"
    settings_class = HAQSettings

    def _train(self, problem, run: SearchRun):
        s = self.config
        episodes, warmup = s.episodes, s.warmup
        algorithm = s.algorithm
        wrapped = RunEnv(problem, run, s, gym=True)
        env = wrapped.env
        steps = env.n_steps
        learner = OffPolicyLearner(
            algorithm, env.observation_space.shape[0], 1, actor_lr=s.actor_lr,
            critic_lr=s.critic_lr, net_arch=s.net_arch,
            buffer_size=max(s.buffer_episodes * steps, s.batch_size), tau=s.tau,
            gamma=s.gamma, seed=run.seed)
        rng = np.random.default_rng(run.seed)
        normalize = RewardNormalizer(max(warmup, 1))
        pending = []
        for episode in range(episodes):
            wrapped.episode = episode
            exploring = episode < warmup
            sigma = s.noise * s.noise_decay ** max(0, episode - warmup)
            obs, _ = env.reset(seed=run.seed if episode == 0 else None)
            observations = np.empty((steps, obs.shape[0]), dtype=np.float32)
            next_observations = np.empty_like(observations)
            actions = np.empty(steps)
            for t in range(steps):
                observations[t] = obs
                if exploring:
                    position = float(rng.uniform())
                elif algorithm == "sac":
                    position = float((learner.act(obs[None], deterministic=False)[0, 0] + 1.0) / 2.0)
                else:
                    mean = (learner.act(obs[None])[0, 0] + 1.0) / 2.0
                    position = float(truncated_normal(rng, mean, sigma, 0.0, 1.0))
                actions[t] = 2.0 * position - 1.0
                obs, reward, done, _, info = env.step(np.array([position], dtype=np.float32))
                next_observations[t] = obs
            result = env.last_result
            dones = np.zeros(steps)
            dones[-1] = 1.0
            normalize.observe(result.reward)
            pending.append((observations, actions, next_observations, dones, result.reward))
            if normalize.ready:
                for o, a, n, d, r in pending:
                    learner.add(o, a, np.full(steps, normalize(r)), n, d)
                pending.clear()
            if not exploring:
                learner.train(s.gradient_steps * steps, s.batch_size)
            if not record_episode(run, wrapped, episode, result, noise=0.0 if exploring else sigma):
                break
        run.info["agent"] = {"algorithm": algorithm, "decisions_per_episode": steps,
                             "gradient_steps": learner.updates, "env": env.describe()}
