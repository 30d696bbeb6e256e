"""``uniform``: one width for every layer, the widest that keeps every budget."""

from __future__ import annotations

from bitsearch.errors import InfeasibleBudgetError
from bitsearch.policy import Policy
from bitsearch.search import BaseSearcher, SearchRun


def uniform_candidates(space):
    """(weight bits, act bits) pairs from widest to narrowest: weights first, then activations."""
    acts = [None] if space.act_bits is None else sorted(space.act_bits, reverse=True)
    if not space.act_searched:
        acts = acts[:1]
    return [(w, a) for w in reversed(space.weight_bits) for a in acts]  # choices are sorted narrowest first


def widest_uniform(problem):
    """The widest uniform policy of ``problem`` that keeps every budget, or None."""
    space = problem.space
    for w, a in uniform_candidates(space):
        policy = Policy.uniform(space, w, a)
        if problem.fits(policy):
            return policy
    return None


class UniformSearcher(BaseSearcher):
    """Every free layer at the same weight width (and activation width): the widest
    that keeps every budget.  No search; one evaluation.  The usual baseline."""

    name = "uniform"
    needs = "nothing"
    deterministic = True
    description = "the widest single weight/activation width that keeps every budget"

    def _search(self, problem, run: SearchRun):
        policy = widest_uniform(problem)
        if policy is None:
            raise InfeasibleBudgetError(
                "no uniform policy keeps every budget (a mixed policy might: try the ilp searcher)")
        run.evaluate(policy, step=1, total=1)
        return policy
