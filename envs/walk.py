"""The walk of an episode over a bitsearch :class:`~bitsearch.problem.Problem`, in plain numpy.

An episode walks the network layer by layer (tied layers together, in the order of
``space.groups()``).  For each group the agent first chooses the activation width (when
activations are searched), then the weight width of each weight unit: one per group at
layer granularity, one per output kernel at kernel granularity.  Pinned layers are not
visited.  After the last decision :meth:`QuantWalk.finish`

1. projects the requested policy onto the budgets (:mod:`bitsearch.envs.projection`:
   the closest policy in "intent" that meets every budget, checked against the
   reference cost models, so that no episode ever ends over a budget),
2. scores it (the problem's evaluator, or its sensitivity table; cached by
   ``policy.key``) and
3. returns the episode reward (HAQ's or AutoQ's form, see :meth:`QuantWalk.reward_of`).

A decision is a *position* in ``[0, 1]`` that maps onto the width choices by equal bins,
as HAQ maps ``[0, 1]`` onto its bit range (``index = min(floor(p * n), n - 1)``); the exact
value also carries intent within a bin, which the projection uses.

Two ways to walk, over the same state, projection and reward:

* a decision at a time: :meth:`QuantWalk.begin`, :meth:`QuantWalk.observation`,
  :meth:`QuantWalk.advance` -- what the gymnasium env :class:`~bitsearch.envs.QuantEnv`
  (a thin adapter) offers, and what the flat ``haq`` agent uses through it;
* a layer at a time: :meth:`QuantWalk.group_observation`, :meth:`QuantWalk.unit_features`,
  :meth:`QuantWalk.decide_act`, :meth:`QuantWalk.decide_weights`, :meth:`QuantWalk.finish`
  -- what the hierarchical ``autoq`` agent does (one batch of kernels per layer).

**Observations** (``(18,)`` float32, every column normalised over the network, as HAQ
does): :data:`OBSERVATION_FEATURES`.  The decision units are the problem's
:class:`~bitsearch.encoding.Encoding`, their planning costs :func:`bitsearch.cost.unit_tables`.
This module imports numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from bitsearch.budget import format_cost
from bitsearch.cost import unit_tables
from bitsearch.encoding import Encoding
from bitsearch.errors import InfeasibleBudgetError, UserInputError
from bitsearch.policy import Policy

from .projection import intent_loss, project

OBSERVATION_FEATURES = (
    "layer_index",        # 0: position of the layer in the network
    "is_conv",            # 1
    "is_linear",          # 2
    "depthwise",          # 3: grouped convolution with groups == in_channels
    "in_channels",        # 4: log, min-max over the network (in_features for linear)
    "out_channels",       # 5
    "kernel_size",        # 6: product of the kernel dims, log
    "stride",             # 7
    "params",             # 8: log (a tied group: summed)
    "macs",               # 9: log
    "layer_sensitivity",  # 10: log of the table's loss drop narrowest->widest (0 without a table)
    "is_act",             # 11: 1 for an activation-width decision
    "kernel_index",       # 12: kernel position in its layer (kernel granularity)
    "kernel_sensitivity", # 13: log of the unit's loss drop narrowest->widest
    "progress",           # 14: decisions taken / decisions in an episode
    "cost_spent",         # 15: max over budgets of cost so far / limit
    "budget_left",        # 16: min over budgets of (limit - spent - cheapest rest) / (dearest rest - cheapest rest)
    "previous_action",    # 17: the previous decision, as a position in [0, 1]
)
N_STATIC = 15
N_OBS = len(OBSERVATION_FEATURES)
REWARD_FORMS = ("haq", "autoq")


@dataclass
class EpisodeResult:
    """What an episode produced: the projected policy and how it scored."""

    policy: Policy
    metrics: Mapping[str, float]
    value: float              # the objective the reward reads (top1, or the table's loss)
    reward: float
    projected: bool           # the request was over a budget and was projected
    intent_lost: float        # sum of squared width steps given up by the projection
    costs: Mapping[str, float]  # reference costs of the budgeted cost models
    weight_index: np.ndarray  # width index per weight unit (encoding order)
    act_index: np.ndarray     # width index per activation group
    info: dict = field(default_factory=dict)

    def to_info(self) -> dict:
        return {"policy": self.policy, "metrics": dict(self.metrics), "value": self.value,
                "projected": self.projected, "intent_lost": self.intent_lost, "costs": dict(self.costs),
                **self.info}


class QuantWalk:
    """Bit-width decisions of a :class:`~bitsearch.problem.Problem`, walked layer by layer.

    Parameters
    ----------
    problem: the space, cost models, budgets and objective (evaluator and/or table).
    reward: ``"haq"`` or ``"autoq"`` (see :meth:`reward_of`).
    reward_scale: multiplies the reward.
    cost_weights: AutoQ's accuracy-guaranteed form: ``{cost name: psi}``; the reward
        loses ``psi * log(cost / limit)`` (or ``/ cost of the widest policy`` for a
        cost without a budget).  Default none: the budget is a hard constraint.
    objective: ``"auto"`` (the problem's: the evaluator's metric if there is one, else
        the table) or ``"sensitivity"`` (the cheap mode: the table, even when an
        evaluator exists).
    evaluate: ``policy -> metrics`` used instead of the walk's own cached scoring (a
        searcher passes its ``SearchRun`` so every episode is recorded); the caller
        then caches.
    reference: the objective value rewards are measured against (default: the float
        model's accuracy with an evaluator that reports it (``float_metrics()``), as HAQ
        uses, else the widest policy's; with a
        table, the loss of the widest uniform policy that keeps every budget).
    projection_penalty: the reward loses ``projection_penalty * intent lost / units``
        (squared width steps per unit the projection had to take away).  Without it,
        asking for more than the budget costs nothing -- the projection cuts evenly --
        and "widest everywhere" is a flat plateau an agent can get stuck on.
    name: how messages name the walk (the gymnasium env passes ``QuantEnv``).
    """

    def __init__(self, problem, *, reward: str = "haq", reward_scale: float = 1.0,
                 cost_weights: Mapping[str, float] | None = None, objective: str = "auto",
                 evaluate: Callable[[Policy], Mapping[str, float]] | None = None,
                 reference: float | None = None, projection_penalty: float = 0.0,
                 cache_size: int = 100_000, name: str = "QuantWalk"):
        if reward not in REWARD_FORMS:
            raise UserInputError(f"{name}: reward {reward!r} is not one of {', '.join(REWARD_FORMS)}")
        self.name = name
        self.problem = problem
        self.space = space = problem.space
        self.reward_form = reward
        self.reward_scale = float(reward_scale)
        self.cost_weights = dict(cost_weights or {})
        for cost in self.cost_weights:
            if cost not in problem.costs:
                raise UserInputError(f"{name}: cost_weights names {cost!r}, which the problem does not price "
                                     f"(it prices {', '.join(problem.costs)})")
        self.projection_penalty = float(projection_penalty)
        self._custom_evaluate = evaluate
        self._reference = reference
        self._cache: dict[str, Mapping[str, float]] = {}
        self._cache_size = int(cache_size)

        if objective == "auto":
            objective = problem.objective
        if objective == "none":
            raise UserInputError(f"{name} needs something to optimise: a problem with an evaluator (a task "
                                 "with data) or a sensitivity table")
        if objective == "sensitivity" and problem.sensitivity is None:
            raise UserInputError(f"{name}: objective 'sensitivity' needs a problem with a sensitivity table")
        self.objective = objective
        self.lower_is_better = objective == "sensitivity" or not problem.higher_is_better

        self.encoding = Encoding(space)
        self.n_weight_choices = len(space.weight_bits)
        self.n_act_choices = len(space.act_choices)
        self._build_structure()
        self._build_costs()
        self._build_features()
        self.episodes = 0
        self.last_result: EpisodeResult | None = None
        self.begin()

    # ------------------------------------------------------------------ structure
    def _build_structure(self):
        enc = self.encoding
        self.groups = enc.groups
        self.n_groups = len(self.groups)
        self.act_searched = self.space.act_searched
        self.n_units = enc.n_weight_units
        self.unit_layer = enc.unit_layer
        self.unit_group = enc.unit_group
        self.unit_kernel = enc.unit_kernel
        self.group_units = enc.group_units
        # the walk: per group, [its act step], its weight steps
        sizes = np.array([units.size for units in self.group_units], dtype=np.int64) + int(self.act_searched)
        self.group_first_step = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.n_steps = int(sizes.sum())
        self.step_is_act = np.zeros(self.n_steps, dtype=bool)
        self.step_index = np.zeros(self.n_steps, dtype=np.int64)
        self.step_group = np.repeat(np.arange(self.n_groups, dtype=np.int64), sizes)
        if self.act_searched:
            self.step_is_act[self.group_first_step] = True
            self.step_index[self.group_first_step] = np.arange(self.n_groups)
        if self.group_units:
            self.step_index[~self.step_is_act] = np.concatenate(self.group_units)

    def _build_costs(self):
        tables = unit_tables(self.problem, self.encoding)
        self.budgets = tables.budgets
        self.n_budgets = tables.n_budgets
        self.limits = tables.limits
        nw, na = self.n_weight_choices, self.n_act_choices
        # planning cost tables (na, nb, n_units, nw), and the pinned layers' cost
        costs = np.ascontiguousarray(tables.costs.transpose(1, 0, 2, 3))
        self._costs = costs
        self._base = tables.pinned.copy()
        # per step: cheapest / dearest planning cost of the rest (from that step on)
        unit_min = costs.min(axis=(0, 3))  # (nb, n_units)
        unit_max = costs.max(axis=(0, 3))
        step_min = np.zeros((self.n_budgets, self.n_steps))
        step_max = np.zeros((self.n_budgets, self.n_steps))
        weight_steps = ~self.step_is_act
        step_min[:, weight_steps] = unit_min[:, self.step_index[weight_steps]]
        step_max[:, weight_steps] = unit_max[:, self.step_index[weight_steps]]
        self._rest_min = np.zeros((self.n_budgets, self.n_steps + 1))
        self._rest_max = np.zeros((self.n_budgets, self.n_steps + 1))
        self._rest_min[:, :-1] = np.cumsum(step_min[:, ::-1], axis=1)[:, ::-1]
        self._rest_max[:, :-1] = np.cumsum(step_max[:, ::-1], axis=1)[:, ::-1]
        # per group and activation choice: cheapest weights of the group (for act masks)
        self._group_min = np.zeros((self.n_budgets, self.n_groups, na))
        for g, us in enumerate(self.group_units):
            if us.size:
                self._group_min[:, g, :] = costs[:, :, us, :].min(axis=3).sum(axis=2).T
        self._group_min_any = self._group_min.min(axis=2)
        # per activation choice, step and width index: cost of the rest with every weight
        # unit from that step on at that width (the "fair share" of the budget left)
        step_costs = np.zeros((na, self.n_budgets, self.n_steps, nw))
        step_costs[:, :, weight_steps, :] = costs[:, :, self.step_index[weight_steps], :]
        self._rest_at = np.zeros((na, self.n_budgets, self.n_steps + 1, nw))
        self._rest_at[:, :, :-1, :] = np.cumsum(step_costs[:, :, ::-1, :], axis=2)[:, :, ::-1, :]

    def _build_features(self):
        space, problem = self.space, self.problem
        layers = space.layers
        table = problem.sensitivity
        nw = len(space.weight_bits)
        # sensitivity per unit (n_units, nw), when there is a table
        unit_sens = None
        if table is not None:
            unit_sens = np.zeros((self.n_units, nw))
            if space.granularity == "layer":
                for u, unit_layers in enumerate(self.encoding.unit_layers):
                    for i in unit_layers:
                        unit_sens[u] += table.unit_table(space, layers[i])[0]
            else:
                for i, rows in self.encoding.layer_slices.items():
                    unit_sens[rows] = table.unit_table(space, layers[i])
        self.unit_sensitivity = unit_sens

        def raw(indices):
            first = layers[indices[0]]
            in_ch = first.in_channels or first.in_features
            depthwise = float(first.groups > 1 and first.groups == first.in_channels)
            sens = 0.0
            if unit_sens is not None:
                rows = np.flatnonzero(np.isin(self.unit_layer, indices))
                drop = unit_sens[rows, 0] - unit_sens[rows, -1]
                sens = float(drop.sum())
            return [first.kind.startswith("conv"), first.kind == "linear", depthwise,
                    math.log1p(in_ch), math.log1p(first.out_channels or first.kernels),
                    math.log1p(int(np.prod(first.kernel_size)) if first.kernel_size else 1),
                    float(max(first.stride)) if first.stride else 1.0,
                    math.log1p(sum(layers[i].params for i in indices)),
                    math.log1p(sum(layers[i].macs for i in indices)),
                    math.log(sens + 1e-30) if unit_sens is not None else 0.0]

        free = space.free_layers()
        layer_raw = {i: raw((i,)) for i in free}
        group_raw = [raw(group) for group in self.groups]
        stack = np.array(list(layer_raw.values()) + group_raw, dtype=float)
        lo, hi = stack.min(axis=0), stack.max(axis=0)

        def norm(row):
            row = np.asarray(row, dtype=float)
            span = np.where(hi - lo > 0, hi - lo, 1.0)
            out = np.where(hi - lo > 0, (row - lo) / span, np.where(row > 0, 1.0, 0.0))
            return np.clip(out, 0.0, 1.0)

        n_layers = max(1, len(layers) - 1)
        unit_drop_log = None
        if unit_sens is not None:
            drop = np.maximum(unit_sens[:, 0] - unit_sens[:, -1], 0.0)
            unit_drop_log = np.log(drop + 1e-30)
            lo_k, hi_k = unit_drop_log.min(), unit_drop_log.max()
            unit_drop_log = (unit_drop_log - lo_k) / (hi_k - lo_k) if hi_k > lo_k else np.ones_like(drop)

        static = np.zeros((self.n_steps, N_STATIC), dtype=np.float32)
        group_static = np.zeros((self.n_groups, N_STATIC), dtype=np.float32)
        for g, group in enumerate(self.groups):
            row = np.zeros(N_STATIC)
            row[0] = group[0] / n_layers
            row[1:11] = norm(group_raw[g])
            row[14] = self.group_first_step[g] / self.n_steps
            group_static[g] = row
        for t in range(self.n_steps):
            g = self.step_group[t]
            if self.step_is_act[t]:
                row = group_static[g].astype(float).copy()
                row[11] = 1.0
            else:
                u = self.step_index[t]
                i = int(self.unit_layer[u])
                row = np.zeros(N_STATIC)
                row[0] = i / n_layers
                if space.granularity == "layer":
                    row[1:11] = norm(group_raw[g])
                else:
                    row[1:11] = norm(layer_raw[i])
                    kernels = layers[i].kernels
                    row[12] = self.unit_kernel[u] / max(1, kernels - 1)
                row[13] = unit_drop_log[u] if unit_drop_log is not None else 0.0
            row[14] = t / self.n_steps
            static[t] = row
        self._static = static
        self._group_static = group_static

    # ------------------------------------------------------------------ episode state
    def begin(self) -> None:
        """Start a new episode (what the env's ``reset`` does, without an observation)."""
        self._w_pos = np.zeros(self.n_units)
        self._w_idx = np.zeros(self.n_units, dtype=np.int64)
        self._a_pos = np.ones(self.n_groups)
        self._a_idx = np.full(self.n_groups, self.n_act_choices - 1, dtype=np.int64)
        if not self.act_searched:
            self._a_idx[:] = 0
        self._spent = self._base.copy()
        self._prev = 1.0
        self._t = 0

    def _dynamic(self, t: int) -> tuple[float, float]:
        if self.n_budgets == 0:
            return 0.0, 1.0
        spent = float(np.max(self._spent / self.limits))
        rest_min, rest_max = self._rest_min[:, t], self._rest_max[:, t]
        room = (self.limits - self._spent - rest_min) / np.maximum(rest_max - rest_min, 1e-300)
        return min(spent, 1.0), float(np.clip(np.min(room), 0.0, 1.0))

    def _obs(self, t: int) -> np.ndarray:
        out = np.empty(N_OBS, dtype=np.float32)
        out[:N_STATIC] = self._static[min(t, self.n_steps - 1)]
        spent, room = self._dynamic(t)
        out[14] = min(t, self.n_steps) / self.n_steps
        out[15] = spent
        out[16] = room
        out[17] = self._prev
        return out

    # --- batched interface (agents that decide a layer at once) -------------------------
    def group_observation(self, g: int) -> np.ndarray:
        """Observation of group ``g`` as a whole (layer features, budget state, previous
        decision); the same columns as the per-step observation."""
        out = np.empty(N_OBS, dtype=np.float32)
        out[:N_STATIC] = self._group_static[g]
        spent, room = self._dynamic(int(self.group_first_step[g]))
        out[15] = spent
        out[16] = room
        out[17] = self._prev
        return out

    def fair_position(self, g: int) -> float:
        """The width position (in ``[0, 1]``) at which group ``g`` and every group after it
        would spend exactly the budget left (the tightest budget; with the activation width
        already chosen for ``g``).  Fractional positions mean a mix of two widths."""
        if self.n_budgets == 0:
            return 1.0
        t = int(self.group_first_step[g])
        curve = self._rest_at[self._a_idx[g], :, t, :]  # (nb, nw), rising with the width
        left = self.limits - self._spent
        nw = self.n_weight_choices
        best = float(nw)
        for b in range(self.n_budgets):
            row = curve[b]
            affordable = np.flatnonzero(row <= left[b])
            if affordable.size == 0:
                return 0.5 / nw
            j = int(affordable[-1])
            if j == nw - 1:
                index = float(nw)
            else:
                step = row[j + 1] - row[j]
                index = j + (left[b] - row[j]) / step if step > 0 else float(j)
            best = min(best, index)
        return float(min(max((best + 0.5) / nw, 0.0), 1.0))

    def unit_features(self, g: int) -> np.ndarray:
        """Static per-unit features of group ``g``'s weight units, ``(units, 15)``."""
        steps = self.group_first_step[g] + (1 if self.act_searched else 0) + np.arange(self.group_units[g].size)
        return self._static[steps]

    def decide_act(self, g: int, position: float) -> int:
        """Activation width of group ``g`` from a position in ``[0, 1]``; returns the index."""
        position = float(min(max(position, 0.0), 1.0))
        idx = 0
        if self.act_searched:
            idx = min(int(position * self.n_act_choices), self.n_act_choices - 1)
            self._a_idx[g] = idx
            self._a_pos[g] = position
        self._prev = position
        return idx

    def decide_weights(self, units: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Weight widths of ``units`` (all of one group) from positions in ``[0, 1]``."""
        units = np.asarray(units, dtype=np.int64)
        positions = np.clip(np.asarray(positions, dtype=float).reshape(-1), 0.0, 1.0)
        nw = self.n_weight_choices
        idx = np.minimum((positions * nw).astype(np.int64), nw - 1)
        self._w_pos[units] = positions
        self._w_idx[units] = idx
        if self.n_budgets and units.size:
            a = self._a_idx[self.unit_group[units[0]]]
            self._spent += self._costs[a][:, units, idx].sum(axis=1)
        if units.size:
            self._prev = float(positions.mean())
        return idx

    def requested_policy(self) -> Policy:
        return self.encoding.decode(self._w_idx, self._a_idx)

    # --- one decision at a time --------------------------------------------------------
    @property
    def t(self) -> int:
        """Decisions taken in this episode."""
        return self._t

    def observation(self, t: int | None = None) -> np.ndarray:
        """The observation at step ``t`` (default: the current step)."""
        return self._obs(self._t if t is None else t)

    def advance(self, position: float):
        """Take the current step's decision at ``position`` (clipped to ``[0, 1]``).
        Returns ``(observation, result)``: the next observation, and after the episode's
        last decision its :class:`EpisodeResult` (else None)."""
        t = self._t
        if t >= self.n_steps:
            raise RuntimeError("the episode has ended; begin (reset) a new one")
        position = float(min(max(position, 0.0), 1.0))
        if self.step_is_act[t]:
            self.decide_act(int(self.step_index[t]), position)
        else:
            u = int(self.step_index[t])
            nw = self.n_weight_choices
            idx = min(int(position * nw), nw - 1)
            self._w_pos[u] = position
            self._w_idx[u] = idx
            if self.n_budgets:
                self._spent += self._costs[self._a_idx[self.unit_group[u]], :, u, idx]
            self._prev = position
        self._t = t + 1
        if self._t < self.n_steps:
            return self._obs(self._t), None
        return self._obs(self.n_steps), self.finish()

    def choices_at(self, t: int | None = None) -> int:
        """How many choices step ``t`` has (activation or weight widths; default: the current step)."""
        t = min(self._t if t is None else t, self.n_steps - 1)
        return self.n_act_choices if self.step_is_act[t] else self.n_weight_choices

    def affordable(self) -> np.ndarray:
        """The current step's choices after which some completion still meets every budget
        (bool, one per choice; all False but the narrowest when none does, so an agent
        always has a move)."""
        t = min(self._t, self.n_steps - 1)
        choices = self.choices_at(t)
        if not self.n_budgets:
            return np.ones(choices, dtype=bool)
        g = int(self.step_group[t])
        if self.step_is_act[t]:
            # this group's weights at their cheapest under each act width, plus the rest
            own_any = self._group_min_any[:, g]
            total = (self._spent[:, None] + self._group_min[:, g, :]
                     + (self._rest_min[:, t + 1] - own_any)[:, None])
        else:
            u = int(self.step_index[t])
            a = self._a_idx[g]
            total = self._spent[:, None] + self._costs[a][:, u, :] + self._rest_min[:, t + 1][:, None]
        ok = np.all(total <= self.limits[:, None] * (1 + 1e-12), axis=0)[:choices]
        if not ok.any():
            ok[:] = False
            ok[0] = True
        return ok

    # ------------------------------------------------------------------ the end of an episode
    def finish(self) -> EpisodeResult:
        """Project the requested policy onto the budgets, score it, and compute the reward."""
        w_idx, a_idx, projected, lost = self._project()
        policy = self.encoding.decode(w_idx, a_idx)
        costs = self._reference_costs(policy)
        metrics = self._evaluate(policy)
        value = float(metrics[self.objective])
        reward = self.reward_of(value, policy)
        if self.projection_penalty and lost:
            reward -= self.projection_penalty * lost / max(1, self.n_units)
        self.episodes += 1
        self.last_result = EpisodeResult(policy, metrics, value, reward, projected, lost, costs, w_idx, a_idx)
        return self.last_result

    def _reference_costs(self, policy: Policy) -> dict[str, float]:
        return {b.cost: self.problem.costs[b.cost].cost(self.space, policy) for b in self.budgets}

    def _fits(self, policy: Policy) -> bool:
        return all(b.allows(self.problem.costs[b.cost].cost(self.space, policy)) for b in self.budgets)

    def _select_costs(self, a_idx: np.ndarray) -> np.ndarray:
        if self.n_act_choices == 1:
            return self._costs[0]
        a_of_unit = a_idx[self.unit_group]
        return self._costs[a_of_unit, :, np.arange(self.n_units), :].transpose(1, 0, 2)

    def _project(self):
        """(weight indices, act indices, projected?, intent lost) meeting every budget."""
        w_idx, a_idx = self._w_idx.copy(), self._a_idx.copy()
        if not self.budgets:
            return w_idx, a_idx, False, 0.0
        if self._fits(self.encoding.decode(w_idx, a_idx)):
            return w_idx, a_idx, False, 0.0
        nw = self.n_weight_choices
        x = self._w_pos * nw
        lost_acts = 0.0
        while True:
            costs = self._select_costs(a_idx)
            try:
                proj = project(x, costs, self._base, self.limits)
                break
            except ValueError:
                a_idx, step_lost = self._lower_one_act(a_idx)
                lost_acts += step_lost
        idx = proj.idx
        policy = self.encoding.decode(idx, a_idx)
        if not self._fits(policy):
            # the plan sums per-unit costs in another order than the reference: plan again
            # with a hair of margin
            idx = project(x, costs, self._base, self.limits * (1.0 - 1e-9)).idx
            policy = self.encoding.decode(idx, a_idx)
        if not self._fits(policy):
            # the reference disagrees with the plan (a non-separable cost model, e.g. a
            # latency table that charges a layer its widest kernel): lower further
            spread = np.ptp(costs.sum(axis=0), axis=1)
            mu = max(proj.multiplier, 1.0 / max(float(spread.max()), 1e-300) * 1e-3)
            for _ in range(80):
                mu *= 2.0
                idx = project(x, costs, self._base, self.limits, min_multiplier=mu).idx
                policy = self.encoding.decode(idx, a_idx)
                if self._fits(policy):
                    break
            else:
                raise InfeasibleBudgetError(
                    f"{self.name}: no policy found that keeps every budget jointly: "
                    + "; ".join(self.problem.violations(policy)))
        rows = np.arange(self.n_units)
        loss = intent_loss(x, nw)
        lost = float((loss[rows, idx] - loss[rows, self._w_idx]).sum()) + lost_acts
        return idx, a_idx, True, lost

    def _lower_one_act(self, a_idx: np.ndarray):
        """Narrow the activation of the group that saves the most (normalised) cost per
        intent lost; raise InfeasibleBudgetError when none can be narrowed."""
        best, best_ratio, best_lost = None, -math.inf, 0.0
        scale = 1.0 / np.maximum(self.limits, 1e-300)
        na = self.n_act_choices
        for g in range(self.n_groups):
            a = a_idx[g]
            if a == 0:
                continue
            saved = float(((self._group_min[:, g, a] - self._group_min[:, g, a - 1]) * scale).sum())
            x = self._a_pos[g] * na
            lost = (x - (a - 0.5)) ** 2 - (x - (a + 0.5)) ** 2
            ratio = saved / max(lost, 1e-12)
            if ratio > best_ratio:
                best, best_ratio, best_lost = g, ratio, lost
        if best is None:
            cheapest = {b.cost: format_cost(self._base[k] + self._rest_min[k, 0], b.unit)
                        for k, b in enumerate(self.budgets)}
            raise InfeasibleBudgetError(f"{self.name}: even the narrowest widths are over a budget "
                                        f"(cheapest: {cheapest})")
        a_idx = a_idx.copy()
        a_idx[best] -= 1
        return a_idx, max(best_lost, 0.0)

    # ------------------------------------------------------------------ scoring and reward
    def _evaluate(self, policy: Policy) -> Mapping[str, float]:
        if self._custom_evaluate is not None:
            metrics = self._custom_evaluate(policy)
            if self.objective not in metrics:
                metrics = {**metrics, **self._score_uncached(policy)}
            return metrics
        key = policy.key
        hit = self._cache.get(key)
        if hit is None:
            hit = self._score_uncached(policy)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def _score_uncached(self, policy: Policy) -> dict[str, float]:
        if self.objective == "sensitivity":
            return {"sensitivity": self.problem.sensitivity.predicted_loss(self.space, policy)}
        return dict(self.problem.evaluate(policy))

    @property
    def reference(self) -> float:
        """The objective value rewards are measured against (computed once): the float
        model's, when the objective is a model evaluator's metric (as HAQ measures
        against the float accuracy); else the widest uniform policy's -- with a
        lower-is-better objective, the widest that keeps every budget."""
        if self._reference is None:
            from bitsearch.problem import ModelEvaluator, missing_members

            space = self.space
            evaluator = self.problem.evaluator
            reference = None
            if self.objective != "sensitivity" and evaluator is not None \
                    and not missing_members(evaluator, ModelEvaluator):
                metrics = evaluator.float_metrics()
                if self.objective in metrics:
                    reference = float(metrics[self.objective])
            if reference is None and self.lower_is_better:
                candidates = list(reversed(space.weight_bits))  # widest first (choices are sorted)
                act = None if space.act_bits is None else max(space.act_bits)
                chosen = None
                for w in candidates:
                    policy = Policy.uniform(space, w, act)
                    if self.problem.fits(policy):
                        chosen = policy
                        break
                if chosen is None:
                    chosen = Policy.uniform(space, space.weight_bits[0],
                                            None if space.act_bits is None else min(space.act_bits))
                reference = float(self._score_uncached(chosen)[self.objective])
                if reference <= 0:
                    cheapest = Policy.uniform(space, space.weight_bits[0],
                                              None if space.act_bits is None else min(space.act_bits))
                    reference = float(self._score_uncached(cheapest)[self.objective])
            elif reference is None:
                widest = Policy.uniform(space, space.weight_bits[-1],
                                        None if space.act_bits is None else max(space.act_bits))
                reference = float(self._score_uncached(widest)[self.objective])
            if self.lower_is_better and reference <= 0:
                reference = 1.0  # the relative forms divide by it
            self._reference = reference
        return self._reference

    def reward_of(self, value: float, policy: Policy | None = None) -> float:
        """The episode reward of an objective ``value``.

        ``haq``: with a higher-is-better metric, ``0.1 x (top1 - reference)`` in percentage
        points (HAQ's ``(acc - acc_float) * 0.1``); with a lower-is-better one (a table's
        estimated loss, a loss, a perplexity), the relative reduction ``(L_ref - L) / L_ref``
        (0 at the reference, at most 1).
        ``autoq``: AutoQ's logarithmic form, ``log(top1 / reference)`` or
        ``log(L_ref / L)``, minus ``psi_c * log(cost_c / limit_c)`` for each entry of
        ``cost_weights``.  Both are multiplied by ``reward_scale``.
        """
        ref = self.reference
        if self.lower_is_better:
            if self.reward_form == "haq":
                r = (ref - value) / ref
            else:
                r = math.log(ref / max(value, ref * 1e-9))
        else:
            if self.reward_form == "haq":
                r = 10.0 * (value - ref)
            else:
                r = math.log(max(value, 1e-6) / max(ref, 1e-6))
        if self.cost_weights and policy is not None:
            limits = {b.cost: b.limit for b in self.budgets}
            for name, psi in self.cost_weights.items():
                model = self.problem.costs[name]
                norm = limits.get(name)
                if norm is None:
                    norm = model.cost(self.space, Policy.uniform(self.space, self.space.weight_bits[-1]))
                r -= float(psi) * math.log(max(model.cost(self.space, policy), 1e-300) / max(norm, 1e-300))
        return r * self.reward_scale

    # ------------------------------------------------------------------ misc
    def describe(self) -> str:
        return (f"QuantWalk({self.space.granularity}, {self.n_steps} decisions/episode, "
                f"{self.reward_form} reward on {self.objective})")
