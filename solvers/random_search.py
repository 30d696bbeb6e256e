"""``random``: N random policies that keep every budget; the best by the objective."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitsearch.encoding import Encoding, sample_within_budget
from bitsearch.search import BaseSearcher, SearchRun
from bitsearch.settings import SearcherSettings, setting


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
