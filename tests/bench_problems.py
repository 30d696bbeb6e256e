"""Problem factories for bench tests (a suite's ``problem = "bench_problems:synthetic"``).

The synthetic problem of helpers.py, scored by a fake evaluator that turns the
sensitivity table's loss into an accuracy-like number in (0, 1].  Torch-free.

Environment knobs (inherited by subprocesses and Dask workers):
``BITSEARCH_TEST_EVAL_DELAY`` seconds slept per evaluation (to make runs slow enough to
kill one midway); ``BITSEARCH_TEST_EVAL_LOG`` a file to which every evaluation appends
one line ``pid policy_key``.
"""

from __future__ import annotations

import math
import os
import time

from bitsearch.problem import Problem

from helpers import small_space, synthetic_sensitivity


class TableAccuracy:
    """An evaluator: ``top1 = exp(-loss / scale)`` of the sensitivity table's loss."""

    metric = "top1"
    higher_is_better = True
    metric_kind = "synthetic"

    def __init__(self, space, table, scale):
        self.space = space
        self.table = table
        self.scale = scale

    def evaluate(self, policy):
        delay = float(os.environ.get("BITSEARCH_TEST_EVAL_DELAY", "0") or 0)
        if delay:
            time.sleep(delay)
        log = os.environ.get("BITSEARCH_TEST_EVAL_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()} {policy.key}\n")
        loss = self.table.loss(self.space, policy)
        return {"top1": math.exp(-loss / self.scale), "loss": loss}


def synthetic(space_options, options):
    """The 5-layer synthetic space (weights and activations from the suite's [space])."""
    space = small_space(space_options.granularity, weight_bits=space_options.weight_bits,
                        act_bits=space_options.act_bits)
    table = synthetic_sensitivity(space, seed=0)
    from bitsearch.policy import Policy

    reference = table.loss(space, Policy.uniform(space, min(space.weight_bits)))
    evaluator = TableAccuracy(space, table, scale=reference / 2)
    return Problem.build(space, options.budgets, evaluator=evaluator, task="synthetic")


class TableLoss:
    """An evaluator of a lower-is-better metric: the table's loss, as ``perplexity = exp(loss)``."""

    metric = "perplexity"
    higher_is_better = False
    metric_kind = "synthetic"

    def __init__(self, space, table, scale):
        self.space, self.table, self.scale = space, table, scale

    def evaluate(self, policy):
        loss = self.table.loss(self.space, policy) / self.scale
        return {"perplexity": math.exp(loss), "loss": loss}


def synthetic_perplexity(space_options, options):
    """The synthetic space scored by a lower-is-better metric (a perplexity)."""
    space = small_space(space_options.granularity, weight_bits=space_options.weight_bits,
                        act_bits=space_options.act_bits)
    table = synthetic_sensitivity(space, seed=0)
    from bitsearch.policy import Policy

    reference = table.loss(space, Policy.uniform(space, min(space.weight_bits)))
    return Problem.build(space, options.budgets, evaluator=TableLoss(space, table, reference / 2),
                         task="synthetic-perplexity")
