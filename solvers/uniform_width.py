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

from bitsearch.errors import InfeasibleBudgetError, SearcherSettingsError
from bitsearch.policy import Policy
from bitsearch.search import BaseSearcher, SearchRun

from .uniform import uniform_candidates


class UniformWidthSearcher(BaseSearcher):
    name = "uniform-width"
    defaults = {"width_mults": (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)}
    granularities = ("layer",)
    needs = "evaluator"
    deterministic = True
    description = "uniform bits x width multiplier grid, retrained per width (Chin et al. 2020)"

    def check(self, problem):
        super().check(problem)
        if problem.at_width is None:
            raise SearcherSettingsError("searcher 'uniform-width' retrains the model at several width "
                                        "multipliers: it needs a task whose model factory takes one (a built-in "
                                        "task or a Task of your own); a trained model (problem_for_model, "
                                        "--weights) cannot be rebuilt wider")
        mults = [float(m) for m in self.settings["width_mults"]]
        if not mults or any(m <= 0 for m in mults):
            raise SearcherSettingsError("uniform-width: width_mults must be positive numbers")

    def _search(self, problem, run: SearchRun):
        mults = sorted({float(m) for m in self.settings["width_mults"]})
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
