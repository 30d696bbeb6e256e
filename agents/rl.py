"""stable-baselines3 models driven by the bitsearch agents.

The agents own their episode loop (HAQ assigns the episode's reward to every step after
the episode; the hierarchical agent decides a whole layer of kernels in one batch), so
they use stable-baselines3 for what it is good at -- the networks, the replay and
rollout buffers, and the update rules of DDPG, TD3, SAC and PPO -- and feed the buffers
themselves:

* :class:`OffPolicyLearner` (DDPG, TD3, SAC): ``act`` on a batch of observations,
  ``add`` a batch of transitions (written into the SB3 replay buffer in one go), and
  ``train(gradient_steps)`` with the algorithm's own ``train``.
* :class:`PPOLearner` (PPO): ``act`` returns actions with their values and
  log-probabilities; ``add_episode`` writes an episode into the rollout buffer; every
  ``n_steps`` decisions the algorithm's ``train`` runs on the full buffer.

Actions are in ``[-1, 1]`` (SB3's normalised space), observations are float32 vectors.
Actor and critic learning rates are set separately (as HAQ uses 1e-4 and 1e-3); SB3
keeps one schedule for both, so the learner holds its rates constant itself.
"""

from __future__ import annotations

import numpy as np

OFF_POLICY = ("ddpg", "td3", "sac")
ON_POLICY = ("ppo",)


def _spaces(obs_dim: int, act_dim: int):
    from gymnasium import spaces

    obs_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)
    act_space = spaces.Box(-1.0, 1.0, shape=(act_dim,), dtype=np.float32)
    return obs_space, act_space


def make_spaces_env(observation_space, action_space):
    """A do-nothing gymnasium env that only carries spaces: stable-baselines3 builds its
    models from an env, while the agents here drive their rollouts themselves."""
    import gymnasium as gym

    class SpacesEnv(gym.Env):
        metadata = {"render_modes": []}

        def __init__(self):
            self.observation_space = observation_space
            self.action_space = action_space

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(self.observation_space.shape, dtype=self.observation_space.dtype), {}

        def step(self, action):  # pragma: no cover - never stepped
            return (np.zeros(self.observation_space.shape, dtype=self.observation_space.dtype), 0.0, True, False,
                    {})

    return SpacesEnv()


def _quiet_logger():
    from stable_baselines3.common.logger import Logger

    return Logger(folder=None, output_formats=[])


def _fixed_rates(model, rates: dict) -> None:
    """Set per-optimizer learning rates and keep SB3's schedule from overwriting them."""
    for optimizer, rate in rates.items():
        for group in optimizer.param_groups:
            group["lr"] = float(rate)
    model._update_learning_rate = lambda optimizers: None  # rates are constant (set above)


class OffPolicyLearner:
    """A DDPG / TD3 / SAC model whose replay buffer the agent fills."""

    def __init__(self, algorithm: str, obs_dim: int, act_dim: int, *, actor_lr: float, critic_lr: float,
                 net_arch, buffer_size: int, tau: float, gamma: float, seed: int):
        import torch as th
        from stable_baselines3 import DDPG, SAC, TD3

        algorithm = algorithm.lower()
        classes = {"ddpg": DDPG, "td3": TD3, "sac": SAC}
        if algorithm not in classes:
            raise ValueError(f"off-policy algorithm {algorithm!r} is not one of {', '.join(classes)}")
        self.algorithm = algorithm
        obs_space, act_space = _spaces(obs_dim, act_dim)
        self.model = classes[algorithm](
            "MlpPolicy", make_spaces_env(obs_space, act_space), learning_rate=actor_lr,
            buffer_size=int(buffer_size), learning_starts=0, tau=tau, gamma=gamma, seed=seed, device="cpu",
            policy_kwargs={"net_arch": list(net_arch)}, verbose=0)
        self.model.set_logger(_quiet_logger())
        rates = {self.model.actor.optimizer: actor_lr, self.model.critic.optimizer: critic_lr}
        if algorithm == "sac" and getattr(self.model, "ent_coef_optimizer", None) is not None:
            rates[self.model.ent_coef_optimizer] = actor_lr
        _fixed_rates(self.model, rates)
        self._th = th
        self.buffer = self.model.replay_buffer
        self.updates = 0

    @property
    def stored(self) -> int:
        return self.buffer.size()

    def act(self, obs: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        """Actions in ``[-1, 1]`` for a batch ``(n, obs_dim)`` (SAC samples unless deterministic)."""
        th = self._th
        with th.no_grad():
            tensor = th.as_tensor(np.asarray(obs, dtype=np.float32))
            actions = self.model.policy._predict(tensor, deterministic=deterministic)
        return np.clip(actions.cpu().numpy().astype(np.float64), -1.0, 1.0)

    def add(self, obs, actions, rewards, next_obs, dones) -> None:
        """Append a batch of transitions to the replay buffer (wrapping around)."""
        buf = self.buffer
        obs = np.asarray(obs, dtype=np.float32)
        n = obs.shape[0]
        if n == 0:
            return
        actions = np.asarray(actions, dtype=np.float32).reshape(n, -1)
        rewards = np.asarray(rewards, dtype=np.float32).reshape(n)
        next_obs = np.asarray(next_obs, dtype=np.float32).reshape(obs.shape)
        dones = np.asarray(dones, dtype=np.float32).reshape(n)
        if n > buf.buffer_size:
            obs, actions, rewards, next_obs, dones = (a[-buf.buffer_size:] for a in
                                                      (obs, actions, rewards, next_obs, dones))
            n = buf.buffer_size
        idx = (buf.pos + np.arange(n)) % buf.buffer_size
        buf.observations[idx, 0] = obs
        buf.next_observations[idx, 0] = next_obs
        buf.actions[idx, 0] = actions
        buf.rewards[idx, 0] = rewards
        buf.dones[idx, 0] = dones
        if getattr(buf, "timeouts", None) is not None:
            buf.timeouts[idx, 0] = 0.0
        if buf.pos + n >= buf.buffer_size:
            buf.full = True
        buf.pos = int((buf.pos + n) % buf.buffer_size)

    def train(self, gradient_steps: int, batch_size: int) -> None:
        if gradient_steps <= 0 or self.stored == 0:
            return
        self.model.train(gradient_steps=int(gradient_steps), batch_size=int(batch_size))
        self.updates += int(gradient_steps)


class PPOLearner:
    """A PPO model whose rollout buffer the agent fills episode by episode."""

    def __init__(self, obs_dim: int, act_dim: int, *, learning_rate: float, net_arch, n_steps: int,
                 batch_size: int, n_epochs: int, gamma: float, seed: int, ent_coef: float = 0.0):
        import torch as th
        from stable_baselines3 import PPO

        obs_space, act_space = _spaces(obs_dim, act_dim)
        self.model = PPO("MlpPolicy", make_spaces_env(obs_space, act_space), learning_rate=learning_rate,
                         n_steps=int(n_steps), batch_size=int(batch_size), n_epochs=int(n_epochs), gamma=gamma,
                         gae_lambda=1.0, ent_coef=ent_coef, seed=seed, device="cpu",
                         policy_kwargs={"net_arch": list(net_arch)}, verbose=0)
        self.model.set_logger(_quiet_logger())
        self._th = th
        self.buffer = self.model.rollout_buffer
        self.updates = 0

    def act(self, obs: np.ndarray, *, deterministic: bool = False):
        """(actions clipped to [-1, 1], raw actions, values, log-probs) for a batch."""
        th = self._th
        with th.no_grad():
            tensor = th.as_tensor(np.asarray(obs, dtype=np.float32))
            actions, values, log_probs = self.model.policy(tensor, deterministic=deterministic)
        raw = actions.cpu().numpy()
        return np.clip(raw, -1.0, 1.0).astype(np.float64), raw, values, log_probs

    def add_episode(self, obs, raw_actions, rewards, values, log_probs) -> None:
        """Write one episode (its decisions in order); trains when the buffer is full."""
        th = self._th
        buf = self.buffer
        n = len(obs)
        for t in range(n):
            buf.add(np.asarray(obs[t], dtype=np.float32)[None], np.asarray(raw_actions[t])[None],
                    np.array([rewards[t]], dtype=np.float32), np.array([t == 0]), values[t].reshape(1, 1),
                    log_probs[t].reshape(1))
            if buf.full:
                done_now = t == n - 1
                last = th.zeros(1, 1) if done_now else values[t + 1].reshape(1, 1)
                buf.compute_returns_and_advantage(last_values=last, dones=np.array([done_now]))
                self.model.train()
                self.updates += 1
                buf.reset()
