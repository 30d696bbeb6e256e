"""``autoq``: hierarchical deep-RL search in the style of AutoQ (Lou et al., "AutoQ:
Automated Kernel-Wise Neural Network Quantization", ICLR 2020).

Two controllers share one episode of :class:`~bitsearch.envs.QuantEnv`:

* the **high-level controller** (HLC) acts once per layer (per tied group): from the
  layer's observation (shape, cost, sensitivity features, budget spent and left, the
  previous decision) it chooses the activation width (when activations are searched)
  and a **goal** for the layer's weights: their mean width, as a position in
  ``[0, 1]`` over the width choices.  With ``relative_goals`` (the default) the action
  is an offset (up to ``goal_range``) from the layer's fair share of the budget left --
  the width at which this layer and all later ones would spend exactly what remains --
  so that the neutral action keeps the budget and exploration starts around feasible
  policies instead of far over the budget;
* the **low-level controller** (LLC) chooses the width of every kernel of the layer
  given the goal.  One shared policy acts on all kernels of a layer **at once**: its
  observation is the kernel's features (position in the layer, sensitivity from the
  table when there is one) with the layer's features, the goal, the activation width
  and the budget left; its action is a deviation from the goal
  (``position = goal + goal_span * action``), so "meet the goal" is the action 0.
  A ResNet-18 episode (5,800 kernels) is 18 batched LLC calls, not 5,800 steps, and
  training takes ``low_gradient_steps`` updates per layer, not per kernel.

Rewards (trained together, after ``warmup`` episodes of random actions):

* extrinsic (HLC): the env's episode reward (AutoQ's logarithmic form by default,
  ``reward="haq"`` for HAQ's), assigned to every layer decision of the episode and
  centred/scaled with the warm-up statistics;
* intrinsic (LLC), per kernel: ``(1 - zeta) * goal term + zeta * credit``.  The goal
  term charges each kernel its share of the layer's goal error: when the layer's
  achieved mean width overshoots the goal, kernels above the goal lose
  ``(position - goal) / goal_span`` and kernels below gain as much, and the other way
  round when it undershoots (averaged over the layer this is exactly ``-|achieved -
  goal|``).  The credit is the kernel's part of the extrinsic reward: with a
  sensitivity table the objective is a sum over kernels, so the credit is the kernel's
  own loss saved against the goal width (a difference reward); with an evaluator it is
  the episode's normalised reward, shared.

At layer granularity a layer has one weight unit and the goal is its width (the LLC
has nothing to decide and is not built).  The budget is kept by the env's projection.

Algorithms (stable-baselines3): HLC ``ddpg`` (AutoQ's), ``td3``, ``sac`` or ``ppo``;
LLC ``ddpg``, ``td3`` or ``sac`` (its kernel decisions are one-step transitions, which
an off-policy replay buffer takes in batches).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitsearch.search import SearchRun
from bitsearch.settings import setting

from .common import REWARD_FORMS, RewardNormalizer, RLSearcher, RLSettings, RunEnv, record_episode, truncated_normal
from .rl import OFF_POLICY, OffPolicyLearner, PPOLearner

HIGH_ALGORITHMS = OFF_POLICY + ("ppo",)
LOW_EXTRA = 4  # goal, activation position, budget left, kernel's sensitivity rank in its layer


@dataclass(frozen=True, kw_only=True)
class AutoQSettings(RLSettings):
    """:class:`~bitsearch.agents.common.RLSettings` (the high-level controller's learner)
    with AutoQ's defaults, and the low-level controller's."""

    algorithm: str = setting("ddpg", choices=HIGH_ALGORITHMS, help="stable-baselines3 algorithm of the "
                                                                    "high-level (layer) controller")
    gamma: float = setting(0.0, ge=0, le=1, help="discount of the high-level controller")
    reward: str = setting("autoq", choices=REWARD_FORMS, help="reward form: autoq (log ratio) or haq "
                                                              "(accuracy points)")
    low_algorithm: str = setting("ddpg", choices=OFF_POLICY, help="algorithm of the low-level (kernel) controller "
                                                                  "(off-policy: kernel decisions go through a "
                                                                  "replay buffer)")
    low_actor_lr: float = setting(3e-4, gt=0, help="low-level actor learning rate")
    low_critic_lr: float = setting(1e-3, gt=0, help="low-level critic learning rate")
    low_net_arch: tuple[int, ...] = setting((64, 64), ge=1, help="hidden layer sizes of the low-level networks")
    low_batch_size: int = setting(256, ge=1, help="low-level replay batch size")
    low_buffer_size: int = setting(200_000, ge=1, help="low-level replay buffer size, in kernel decisions")
    low_noise: float = setting(0.05, ge=0, help="low-level exploration noise sigma, in width positions")
    low_gradient_steps: int = setting(1, ge=0, help="low-level updates per layer after each episode")
    zeta: float = setting(0.5, ge=0, le=1, help="weight of the extrinsic credit in the low-level reward")
    goal_span: float = setting(0.5, gt=0, help="how far a kernel may deviate from its layer's goal "
                                               "(width positions)")
    relative_goals: bool = setting(True, help="goals as offsets from the layer's fair share of the budget left")
    goal_range: float = setting(0.5, ge=0, help="largest offset of a relative goal")
    ppo_episodes: int = setting(8, ge=1, help="episodes per PPO update (algorithm=ppo)")


class AutoQSearcher(RLSearcher):
    name = "autoq"
    description = "hierarchical DRL (AutoQ, Lou et al. 2020): layer goals, batched kernel widths"
    settings_class = AutoQSettings

    def _train(self, problem, run: SearchRun):
        _AutoQRun(self.config, problem, run).loop()


class _AutoQRun:
    """The state of one autoq search."""

    def __init__(self, settings, problem, run: SearchRun):
        s = self.s = settings
        self.run = run
        self.wrapped = RunEnv(problem, run, s)
        env = self.env = self.wrapped.walk
        self.kernel_wise = problem.space.granularity == "kernel"
        self.high_dim = 2 if env.act_searched else 1
        self.algorithm = s.algorithm
        self.low_algorithm = s.low_algorithm
        self.rng = np.random.default_rng(run.seed)
        from bitsearch.envs.walk import N_OBS

        obs_dim = N_OBS
        groups = env.n_groups
        if self.algorithm == "ppo":
            n_steps = groups * max(1, s.ppo_episodes)
            self.high = PPOLearner(obs_dim, self.high_dim, learning_rate=s.actor_lr * 3,
                                   net_arch=s.net_arch, n_steps=n_steps,
                                   batch_size=min(s.batch_size, n_steps), n_epochs=10, gamma=1.0,
                                   seed=run.seed)
        else:
            self.high = OffPolicyLearner(
                self.algorithm, obs_dim, self.high_dim, actor_lr=s.actor_lr,
                critic_lr=s.critic_lr, net_arch=s.net_arch,
                buffer_size=max(s.buffer_episodes * groups, s.batch_size), tau=s.tau,
                gamma=s.gamma, seed=run.seed)
        self.low = None
        if self.kernel_wise:
            self.low = OffPolicyLearner(
                self.low_algorithm, obs_dim - 3 + LOW_EXTRA, 1, actor_lr=s.low_actor_lr,
                critic_lr=s.low_critic_lr, net_arch=s.low_net_arch,
                buffer_size=s.low_buffer_size, tau=s.tau, gamma=0.0, seed=run.seed + 1)
            self._prepare_kernel_features()
        self.normalize = RewardNormalizer(max(s.warmup, 1))
        self.pending_high: list = []
        self.pending_low: list = []

    def _prepare_kernel_features(self):
        env = self.env
        sens = env.unit_sensitivity
        nw = env.n_weight_choices
        self.unit_rank = np.full(env.n_units, 0.5)
        self.credit_scale = 1.0
        if sens is not None:
            drop = sens[:, 0] - sens[:, -1]
            for g, units in enumerate(env.group_units):
                if units.size > 1:
                    order = np.argsort(np.argsort(drop[units], kind="stable"), kind="stable")
                    self.unit_rank[units] = order / (units.size - 1)
            self.credit_scale = float(np.mean(np.abs(drop))) or 1.0
        self.goal_centres = (np.arange(nw) + 0.5) / nw

    # ------------------------------------------------------------------ acting
    def _high_action(self, obs, episode, sigma, exploring):
        if exploring:
            return self.rng.uniform(-1.0, 1.0, self.high_dim), None
        if self.algorithm == "ppo":
            action, raw, value, log_prob = self.high.act(obs[None])
            return action[0], (raw[0], value[0], log_prob[0])
        if self.algorithm == "sac":
            return self.high.act(obs[None], deterministic=False)[0], None
        mean = (self.high.act(obs[None])[0] + 1.0) / 2.0
        return 2.0 * truncated_normal(self.rng, mean, sigma, 0.0, 1.0) - 1.0, None

    def _low_actions(self, obs, sigma, exploring):
        """Deviations from the goal in [-1, 1]; ``sigma`` is in width-position units."""
        scale = sigma / self.s.goal_span
        if exploring:
            return truncated_normal(self.rng, np.zeros(obs.shape[0]), scale, -1.0, 1.0)
        if self.low_algorithm == "sac":
            return self.low.act(obs, deterministic=False)[:, 0]
        return truncated_normal(self.rng, self.low.act(obs)[:, 0], scale, -1.0, 1.0)

    # ------------------------------------------------------------------ one episode
    def episode(self, episode: int):
        s, env = self.s, self.env
        warmup = s.warmup
        exploring = episode < warmup and self.algorithm != "ppo"
        decay = s.noise_decay ** max(0, episode - warmup)
        sigma, low_sigma = s.noise * decay, s.low_noise * decay
        span = s.goal_span
        relative, goal_range = s.relative_goals, s.goal_range
        env.begin()
        high_obs, high_act, high_extra, low_batches = [], [], [], []
        for g in range(env.n_groups):
            obs = env.group_observation(g)
            action, extra = self._high_action(obs, episode, sigma, exploring)
            act_position = (action[0] + 1.0) / 2.0 if env.act_searched else 1.0
            env.decide_act(g, act_position)
            if relative:
                goal = float(np.clip(env.fair_position(g) + goal_range * action[-1], 0.0, 1.0))
            else:
                goal = (action[-1] + 1.0) / 2.0
            units = env.group_units[g]
            if self.kernel_wise:
                features = env.unit_features(g)
                room = obs[16]
                low_obs = np.empty((units.size, features.shape[1] + LOW_EXTRA), dtype=np.float32)
                low_obs[:, :features.shape[1]] = features
                low_obs[:, -4] = goal
                low_obs[:, -3] = act_position
                low_obs[:, -2] = room
                low_obs[:, -1] = self.unit_rank[units]
                deviation = self._low_actions(low_obs, low_sigma, exploring)
                positions = np.clip(goal + span * deviation, 0.0, 1.0)
                idx = env.decide_weights(units, positions)
                low_batches.append((units, low_obs, deviation, idx, goal))
            else:
                env.decide_weights(units, np.full(units.size, goal))
            high_obs.append(obs)
            high_act.append(action)
            high_extra.append(extra)
        result = env.finish()
        return result, (high_obs, high_act, high_extra, low_batches), (sigma, low_sigma)

    # ------------------------------------------------------------------ learning
    def _low_rewards(self, low_batches, normalized_reward):
        env, s = self.env, self.s
        zeta, span = s.zeta, s.goal_span
        sens = env.unit_sensitivity
        separable = sens is not None and env.objective == "sensitivity"
        nw = env.n_weight_choices
        out = []
        for units, low_obs, deviation, idx, goal in low_batches:
            achieved = self.goal_centres[idx]
            error = float(achieved.mean() - goal)
            goal_term = -np.sign(error) * (achieved - goal) / span
            if separable:
                goal_idx = min(int(goal * nw), nw - 1)
                credit = (sens[units, goal_idx] - sens[units, idx]) / self.credit_scale
            else:
                credit = np.full(units.size, float(normalized_reward))
            out.append((low_obs, deviation, (1.0 - zeta) * goal_term + zeta * credit))
        return out

    def learn(self, episode: int, result, trace):
        s = self.s
        high_obs, high_act, high_extra, low_batches = trace
        groups = len(high_obs)
        self.normalize.observe(result.reward)
        if self.algorithm == "ppo":
            reward = float(self.normalize(result.reward)) if self.normalize.ready else 0.0
            if self.normalize.ready and high_extra[0] is not None:
                rewards = np.zeros(groups)
                rewards[-1] = reward
                raw = [e[0] for e in high_extra]
                values = [e[1] for e in high_extra]
                log_probs = [e[2] for e in high_extra]
                self.high.add_episode(high_obs, raw, rewards, values, log_probs)
        else:
            obs = np.asarray(high_obs, dtype=np.float32)
            next_obs = np.vstack([obs[1:], obs[-1:]])
            dones = np.zeros(groups)
            dones[-1] = 1.0
            self.pending_high.append((obs, np.asarray(high_act), next_obs, dones, result.reward))
        if self.low is not None:
            self.pending_low.append((low_batches, result.reward))
        if not self.normalize.ready:
            return
        for obs, act, next_obs, dones, reward in self.pending_high:
            self.high.add(obs, act, np.full(len(obs), float(self.normalize(reward))), next_obs, dones)
        self.pending_high.clear()
        for batches, reward in self.pending_low:
            for low_obs, deviation, rewards in self._low_rewards(batches, float(self.normalize(reward))):
                self.low.add(low_obs, deviation, rewards, low_obs, np.ones(len(rewards)))
        self.pending_low.clear()
        if episode < s.warmup:
            return
        if self.algorithm != "ppo":
            self.high.train(s.gradient_steps * groups, s.batch_size)
        if self.low is not None:
            self.low.train(s.low_gradient_steps * len(low_batches), s.low_batch_size)

    def loop(self):
        episodes = self.s.episodes
        for episode in range(episodes):
            self.wrapped.episode = episode
            result, trace, (sigma, _) = self.episode(episode)
            self.learn(episode, result, trace)
            exploring = episode < self.s.warmup and self.algorithm != "ppo"
            if not record_episode(self.run, self.wrapped, episode, result, noise=0.0 if exploring else sigma):
                break
        self.run.info["agent"] = {
            "high": self.algorithm, "low": self.low_algorithm if self.low is not None else None,
            "high_decisions_per_episode": self.env.n_groups,
            "kernel_batches_per_episode": self.env.n_groups if self.low is not None else 0,
            "high_updates": self.high.updates, "low_updates": 0 if self.low is None else self.low.updates,
            "env": self.env.describe()}
