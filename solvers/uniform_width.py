"""``uniform-width``: one weight width for the whole network, with the network's width
(channel count) as a second knob, after "One Weight Bitwidth to Rule Them All"
(Chin et al., 2020).

For every width multiplier of a grid, the model is rebuilt at that width and trained
(float weights are cached per width), then every uniform weight width that keeps the
budgets -- the same absolute limits as the original problem -- is scored by the
problem's evaluator.  The most accurate (model width, bit width) pair wins.  The policy
names the model at its width multiplier (``model.width_mult`` in the JSON).
"""

from __future__ import annotations

from dataclasses import dataclass

from bitsearch.errors import InfeasibleBudgetError, SearcherUnsupportedError
from bitsearch.policy import Policy
from bitsearch.search import BaseSearcher, SearchRun
from bitsearch.settings import SearcherSettings, setting

from .uniform import uniform_candidates


@dataclass(frozen=True, kw_only=True)
class UniformWidthSettings(SearcherSettings):
    width_mults: tuple[float, ...] = setting((0.5, 0.75, 1.0, 1.25, 1.5, 2.0), gt=0, min_items=1,
                                             help="width multipliers to rebuild, train and try")


class UniformWidthSearcher(BaseSearcher):
    name = "uniform-width"
    settings_class = UniformWidthSettings
    granularities = ("layer",)
    needs = "evaluator"
    deterministic = True
    description = "uniform bits x width multiplier grid, retrained per width (Chin et al. 2020)"

    def check(self, problem):
        super().check(problem)
        if problem.at_width is None:
            raise SearcherUnsupportedError("searcher 'uniform-width' retrains the model at several width "
                                           "multipliers: it needs a task whose model factory takes one (a built-in "
                                           "task or a Task of your own); a trained model (problem_for_model, "
                                           "--weights) cannot be rebuilt wider")

    def _search(self, problem, run: SearchRun):
        mults = sorted(set(self.config.width_mults))
        total = len(mults)
        for step, mult in enumerate(mults, start=1):
            run.emit("progress", step=step, total=total, message=f"width x{mult:g}")
            try:
                sub = problem if mult == problem.info.get("width_mult", 1.0) else problem.at_width(mult)
            except InfeasibleBudgetError:
                continue  # even the narrowest bits of this wider model are over budget
            for w, a in uniform_candidates(sub.space):
                policy = Policy.uniform(sub.space, w, a)
                if sub.fits(policy):
                    run.evaluate(policy, step=step, total=total, problem=sub)
                    if run.stopped:
                        break  # one evaluated policy is enough to return
            if run.stopped and run.best is not None:
                break
        if run.best is None:
            raise InfeasibleBudgetError("uniform-width: no (width multiplier, uniform width) pair keeps every "
                                        "budget; allow narrower widths or a smaller multiplier")
        return None
