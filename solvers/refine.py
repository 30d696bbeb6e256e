"""Evaluator-guided refinement of a policy: a best-improvement local search.

Searchers that optimise a surrogate (FracBits' relaxed training loss, the ILP's additive
sensitivities) cannot see interactions between layers: on mnist1d-cnn at ``size=3bit``,
with ``fc1`` at 2 bits, ``fc2`` scores 0.885 top-1 at 3 bits and 0.8445 at 4 bits, although
alone ``fc2`` loses accuracy monotonically as it narrows.  :func:`refine_policy` spends a
few evaluations of the problem's own objective around the surrogate's answer:

- a *move* changes one decision: at layer granularity a weight unit (a layer or a tied
  group) to any other width; at kernel granularity every kernel of one layer one width
  step up or down (clipped at the ends); where activations are searched, one activation
  group to any other width;
- every move that keeps every budget is scored with ``run.evaluate`` (cached by policy
  key, so a policy is never scored twice); the best one is taken if it improves on the
  current policy; a round repeats this from the new policy;
- it stops after ``rounds`` rounds, when no move improves, when ``max_evaluations`` fresh
  scores are spent, or when the run's callback stops it.

It is an addition to the papers' methods, off by default (``refine=0``) in the searchers
that offer it, and its evaluations are counted in the result like any searcher's.
"""

from __future__ import annotations

import numpy as np

from bitsearch.encoding import Encoding
from bitsearch.policy import Policy
from bitsearch.search import SearchRun

__all__ = ["refine_policy", "neighbours"]


def neighbours(encoding: Encoding, weights: np.ndarray, acts: np.ndarray):
    """Yield ``(weights, acts)`` index vectors one move away (see the module docstring)."""
    space = encoding.space
    n_w = encoding.n_weight_choices
    if space.granularity == "kernel":
        for units in encoding.layer_slices.values():  # a layer's kernels, one step together
            index = np.arange(units.start, units.stop)
            for step in (1, -1):
                moved = np.clip(weights[index] + step, 0, n_w - 1)
                if np.array_equal(moved, weights[index]):
                    continue
                w = weights.copy()
                w[index] = moved
                yield w, acts
    else:
        for u in range(encoding.n_weight_units):
            for choice in range(n_w):
                if choice != weights[u]:
                    w = weights.copy()
                    w[u] = choice
                    yield w, acts
    for j in range(encoding.n_act_units):
        for choice in range(encoding.n_act_choices):
            if choice != acts[j]:
                a = acts.copy()
                a[j] = choice
                yield weights, a


def refine_policy(problem, run: SearchRun, policy: Policy, rounds: int, *,
                  max_evaluations: int | None = None) -> tuple[Policy, dict]:
    """Improve ``policy`` (which keeps every budget) by at most ``rounds`` rounds of
    best-improvement moves scored with ``run.evaluate``.  Returns ``(policy, info)``; the
    policy returned is the best one seen, ``info`` says how many rounds and fresh
    evaluations were spent and the score before and after."""
    encoding = Encoding(problem.space)
    start_fresh = run.distinct_evaluations
    current = run.evaluate(policy)
    info = {"rounds": 0, "moves_scored": 0, "score_before": current.score}
    weights, acts = encoding.encode(current.policy)
    for _ in range(max(0, int(rounds))):
        best = None
        for w, a in neighbours(encoding, weights, acts):
            if max_evaluations is not None and run.distinct_evaluations - start_fresh >= max_evaluations:
                break
            candidate = encoding.decode(w, a)
            if not problem.fits(candidate):
                continue
            evaluation = run.evaluate(candidate)
            info["moves_scored"] += 1
            if best is None or evaluation.score > best[0].score:
                best = (evaluation, w, a)
            if run.stopped:
                break
        info["rounds"] += 1
        if best is None or best[0].score <= current.score or run.stopped:
            if best is not None and best[0].score > current.score:
                current = best[0]
            break
        current, weights, acts = best
    info["score_after"] = current.score
    info["fresh_evaluations"] = run.distinct_evaluations - start_fresh
    return current.policy, info
