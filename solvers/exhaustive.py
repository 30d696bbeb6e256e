"""``exhaustive``: every policy of a small space; the oracle of the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

from bitsearch.encoding import Encoding
from bitsearch.errors import InfeasibleBudgetError, SpaceTooLargeError
from bitsearch.search import BaseSearcher, SearchRun
from bitsearch.settings import SearcherSettings, setting


@dataclass(frozen=True, kw_only=True)
class ExhaustiveSettings(SearcherSettings):
    max_policies: int = setting(20_000, ge=1, help="refuse spaces holding more policies than this")


class ExhaustiveSearcher(BaseSearcher):
    """Evaluates every policy that keeps the budgets and returns the best.

    Refuses spaces with more than ``max_policies`` policies (layer-wise mnist1d-cnn over
    {2,3,4,8} has 4,096).  Policies over budget are skipped without evaluation.
    """

    name = "exhaustive"
    settings_class = ExhaustiveSettings
    deterministic = True
    description = "every policy of a small space (the oracle)"

    def check(self, problem):
        super().check(problem)
        n = problem.space.num_policies()
        limit = self.config.max_policies
        if n > limit:
            raise SpaceTooLargeError(
                f"exhaustive: the space holds {_count(n)} policies, more than max_policies={limit:,}; "
                f"use layer granularity, fewer widths, or another searcher (ilp, random)")

    def _search(self, problem, run: SearchRun):
        encoding = Encoding(problem.space)
        total = problem.space.num_policies()
        for step, policy in enumerate(encoding.every_policy(), start=1):
            if not problem.fits(policy):
                if step % 256 == 0:
                    run.emit("progress", step=step, total=total)
            else:
                run.evaluate(policy, step=step, total=total)
            if run.stopped and run.best is not None:
                return None
        if run.best is None:
            raise InfeasibleBudgetError("exhaustive: no policy of the space keeps every budget")
        return None


def _count(n: int) -> str:
    """``n`` with thousands separators, or as a power of ten past 15 digits (a kernel-wise
    space's count runs to hundreds of digits)."""
    digits = str(n)
    if len(digits) <= 15:
        return f"{n:,}"
    return f"about {digits[0]}.{digits[1]}e{len(digits) - 1}"
