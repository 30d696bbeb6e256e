"""QuantEnv: the gymnasium face of :class:`~bitsearch.envs.walk.QuantWalk`.

The walk (plain numpy: the decision units, the budgets, the projection, the reward) does
the work; this adapter gives it gymnasium's spaces and API.  One step is one decision of
the walk (per layer the activation width when it is searched, then the weight width of
each weight unit; at kernel granularity every kernel is a step); the reward is 0 until
the last step, which returns the episode reward and, in ``info``, the projected policy
and its metrics.  The final observation is the last one with ``progress = 1``.

**Actions.**  ``action_type="continuous"``: ``Box(0, 1, (1,))``, a position mapped onto
the width choices by equal bins (as HAQ maps ``[0, 1]`` onto its bit range).
``action_type="discrete"``: ``Discrete(n)`` with ``n = max(#weight choices, #activation
choices)``, choice ``c`` of ``m`` being the position ``(c + 1/2) / m``; :meth:`action_masks`
(for sb3-contrib's ``MaskablePPO``) masks choices that do not exist at the current step
and, with ``budget_mask=True``, widths after which no completion can meet a budget.

**Observations**: ``Box(0, 1, (18,))``, :data:`~bitsearch.envs.walk.OBSERVATION_FEATURES`.

Everything else -- ``n_steps``, ``last_result``, ``group_units``, ``reward_of``,
``reference`` and the batched calls (``begin``, ``decide_weights``, ``finish``...) -- is the
walk's, read through the env (``env.walk`` is the walk itself).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from bitsearch.errors import UserInputError

from .walk import N_OBS, QuantWalk

ACTION_TYPES = ("continuous", "discrete")


class QuantEnv(gym.Env):
    """Bit-width decisions of a :class:`~bitsearch.problem.Problem`, one per step.

    ``QuantEnv(problem, action_type=..., budget_mask=..., **walk_options)``: the walk's
    options (``reward``, ``reward_scale``, ``cost_weights``, ``objective``, ``evaluate``,
    ``reference``, ``projection_penalty``, ``cache_size``) are those of
    :class:`~bitsearch.envs.walk.QuantWalk`; or ``QuantEnv(walk=walk, ...)`` around a walk
    built already.  ``action_type``: ``"continuous"`` (HAQ's ``[0, 1]``) or
    ``"discrete"`` (with masks); ``budget_mask``: discrete actions only, mask widths no
    completion can afford.
    """

    metadata = {"render_modes": []}

    def __init__(self, problem=None, *, action_type: str = "continuous", budget_mask: bool = False,
                 walk: QuantWalk | None = None, **walk_options):
        super().__init__()
        if action_type not in ACTION_TYPES:
            raise UserInputError(f"QuantEnv: action_type {action_type!r} is not one of {', '.join(ACTION_TYPES)}")
        if (walk is None) == (problem is None):
            raise UserInputError("QuantEnv: give a problem (and the walk's options) or a walk, not both")
        if walk is not None and walk_options:
            raise UserInputError(f"QuantEnv: a walk brings its own options; got {sorted(walk_options)} too")
        self.walk = walk if walk is not None else QuantWalk(problem, name="QuantEnv", **walk_options)
        self.action_type = action_type
        self.budget_mask = bool(budget_mask)
        w = self.walk
        if action_type == "continuous":
            self.action_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        else:
            self.action_space = spaces.Discrete(max(w.n_weight_choices, w.n_act_choices if w.act_searched else 0))
        self.observation_space = spaces.Box(0.0, 1.0, shape=(N_OBS,), dtype=np.float32)

    def __getattr__(self, name):
        # what the adapter does not define is the walk's (n_steps, last_result, reward_of...)
        if name == "walk":
            raise AttributeError(name)
        return getattr(self.walk, name)

    # --- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.walk.begin()
        return self.walk.observation(0), {}

    def _position(self, action) -> float:
        if self.action_type == "continuous":
            value = float(np.asarray(action, dtype=float).reshape(-1)[0])
            return min(max(value, 0.0), 1.0)
        n = self.walk.choices_at()
        choice = min(max(int(action), 0), n - 1)
        return (choice + 0.5) / n

    def step(self, action):
        obs, result = self.walk.advance(self._position(action))
        if result is None:
            return obs, 0.0, False, False, {}
        return obs, float(result.reward), True, False, result.to_info()

    def action_masks(self) -> np.ndarray:
        """Valid choices at the current step (for sb3-contrib's MaskablePPO)."""
        n = int(self.action_space.n) if self.action_type == "discrete" else self.walk.n_weight_choices
        mask = np.zeros(n, dtype=bool)
        choices = self.walk.choices_at()
        mask[:choices] = self.walk.affordable() if self.budget_mask else True
        return mask

    def render(self):
        return None

    def describe(self) -> str:
        w = self.walk
        return (f"QuantEnv({w.space.granularity}, {w.n_steps} steps/episode, {self.action_type} actions, "
                f"{w.reward_form} reward on {w.objective})")
