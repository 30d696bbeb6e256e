"""``random``: N random policies that keep every budget; the best by the objective."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitsearch.encoding import Encoding
from bitsearch.errors import InfeasibleBudgetError
from bitsearch.search import BaseSearcher, SearchRun
from bitsearch.settings import SearcherSettings, setting


def sample_within_budget(problem, encoding: Encoding, rng: np.random.Generator, max_rounds: int = 10_000):
    """A random policy that keeps every budget.

    Widths are drawn uniformly per unit; while a budget is exceeded, a random tenth of
    the units that can still be narrowed lose one width step (activations too).  The
    loop ends at the latest at the all-narrowest policy, which keeps every budget when
    the problem is feasible.
    """
    weights = rng.integers(0, encoding.n_weight_choices, encoding.n_weight_units)
    acts = rng.integers(0, encoding.n_act_choices, encoding.n_act_units)
    for _ in range(max_rounds):
        policy = encoding.decode(weights, acts)
        if problem.fits(policy):
            return policy
        reducible = np.concatenate([np.flatnonzero(weights > 0), encoding.n_weight_units + np.flatnonzero(acts > 0)])
        if reducible.size == 0:
            break
        pick = rng.choice(reducible, size=max(1, reducible.size // 10), replace=False)
        w_pick = pick[pick < encoding.n_weight_units]
        a_pick = pick[pick >= encoding.n_weight_units] - encoding.n_weight_units
        weights[w_pick] -= 1
        acts[a_pick] -= 1
    raise InfeasibleBudgetError("random sampling found no policy within the budgets "
                                "(even the narrowest policy is over a budget)")


@dataclass(frozen=True, kw_only=True)
class RandomSettings(SearcherSettings):
    samples: int = setting(50, ge=1, help="random policies within budget to score")


class RandomSearcher(BaseSearcher):
    """Random search: ``samples`` random policies within budget, best by the objective.

    As Optuna's random sampler, it is the floor every searcher must beat.
    """

    name = "random"
    settings_class = RandomSettings
    description = "N random policies within budget, best by the evaluator"

    def _search(self, problem, run: SearchRun):
        samples = self.config.samples
        rng = np.random.default_rng(run.seed)
        encoding = Encoding(problem.space)
        for step in range(1, samples + 1):
            run.evaluate(sample_within_budget(problem, encoding, rng), step=step, total=samples)
            if run.stopped:
                break
        return None  # the best evaluated
