"""Proxy validation: how well each sensitivity method ranks policies by their measured loss.

Every searcher that plans on a sensitivity table (``ilp``, ``bmpq``, ``iqp``...) trusts
that the table's predicted loss change ranks policies as the quantized model does.  This
module checks it on the problem at hand:

1. ``n`` policies are drawn within the problem's budgets, seeded: at most ``enumerate_limit``
   policies in the space, uniformly without replacement among *every* policy within the
   budgets (all of them when fewer keep the budgets); in a larger space, ``n`` distinct
   policies of the ``random`` searcher's sampler (:func:`bitsearch.encoding.sample_within_budget`:
   uniform widths, then narrowed until every budget is kept).
2. Each is measured the way the evaluator scores it -- fake-quantized, activation ranges
   calibrated afresh on the evaluator's calibration inputs -- by its loss on the
   sensitivity samples (``evaluator.sensitivity_batches(samples, batch_size, seed)``: the
   samples every table is estimated on, 512 training samples by default) minus the float
   model's loss on them (the *measured loss change*), and by the evaluator's metric.
3. Each method's table (estimated, or read from the on-disk cache, with its default
   settings) predicts each policy's loss change (``SensitivityTable.predicted_loss``: the
   separable sum, plus the pair terms for ``pairwise``), and the Spearman and Kendall
   (tau-b) rank correlations between prediction and measurement are reported, and between
   prediction and the metric (direction-adjusted: +1 means the table ranks policies as the
   metric does, better metric as lower predicted loss).  A Spearman correlation with the
   measured loss below :data:`WARN_BELOW` (0.7) carries a warning.

The rank correlations are computed here in numpy (:func:`spearman`, :func:`kendall`), so
this module imports numpy only; torch is imported when policies are measured.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from .errors import UserInputError

WARN_BELOW = 0.7  # a Spearman correlation with the measured loss below this carries a warning
ENUMERATE_LIMIT = 20_000  # spaces this small are enumerated: policies drawn uniformly among every one in budget
DEFAULT_SAMPLES = 512  # the sensitivity samples (the estimators' default)
SCHEMA = "bitsearch-validation"


# --- rank correlations -----------------------------------------------------------------------------
def rankdata(values) -> np.ndarray:
    """Ranks from 1, ties given the mean of the ranks they span (as ``scipy.stats.rankdata``)."""
    x = np.asarray(values, dtype=float).ravel()
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size)
    sorted_x = x[order]
    # runs of equal values: each gets the mean of its positions (1-based)
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    mean_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _check_pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=float).ravel()
    b = np.asarray(y, dtype=float).ravel()
    if a.size != b.size:
        raise UserInputError(f"rank correlation of {a.size} values against {b.size}: give as many of each")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise UserInputError("rank correlation of values that are not finite numbers")
    return a, b


def spearman(x, y) -> float | None:
    """Spearman's rank correlation: the Pearson correlation of the (tie-averaged) ranks.
    None when fewer than two values are given or either side is constant (undefined)."""
    a, b = _check_pair(x, y)
    if a.size < 2:
        return None
    ra, rb = rankdata(a), rankdata(b)
    da, db = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float(da @ da) * float(db @ db))
    if denominator == 0.0:
        return None
    return float(np.clip(float(da @ db) / denominator, -1.0, 1.0))


def kendall(x, y, *, chunk: int = 1024) -> float | None:
    """Kendall's tau-b: ``(concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y))``
    over all ``n0 = n (n - 1) / 2`` pairs (a pair tied on one side counts in that side's
    ties, on neither concordant nor discordant).  None when undefined (fewer than two
    values, or either side constant).  Exact, in O(n^2) time and O(chunk n) memory."""
    a, b = _check_pair(x, y)
    n = a.size
    if n < 2:
        return None
    score = 0
    for start in range(0, n - 1, chunk):
        rows = np.arange(start, min(start + chunk, n - 1))
        sa = np.sign(a[None, :] - a[rows, None])
        sb = np.sign(b[None, :] - b[rows, None])
        upper = np.arange(n)[None, :] > rows[:, None]  # each pair once
        score += int(np.sum((sa * sb)[upper]))
    n0 = n * (n - 1) // 2
    ties_a = _tied_pairs(a)
    ties_b = _tied_pairs(b)
    denominator = math.sqrt(float(n0 - ties_a) * float(n0 - ties_b))
    if denominator == 0.0:
        return None
    return float(np.clip(score / denominator, -1.0, 1.0))


def _tied_pairs(x: np.ndarray) -> int:
    _, counts = np.unique(x, return_counts=True)
    return int(np.sum(counts * (counts - 1) // 2))


# --- drawing policies --------------------------------------------------------------------------------
def sample_policies(problem, n: int, seed: int = 0, *, enumerate_limit: int = ENUMERATE_LIMIT):
    """``(policies, how)``: ``n`` distinct policies within every budget of ``problem``
    (fewer when fewer exist), and a sentence saying how they were drawn."""
    from .encoding import Encoding
    from .errors import InfeasibleBudgetError

    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise UserInputError(f"validation needs 3 or more policies to rank (got {n!r})")
    space = problem.space
    encoding = Encoding(space)
    rng = np.random.default_rng(int(seed))
    total = space.num_policies()
    if total <= enumerate_limit:  # every policy, then a uniform draw among those in budget
        feasible = [policy for policy in encoding.every_policy() if problem.fits(policy)]
        if not feasible:
            raise InfeasibleBudgetError("validation: no policy of the space keeps every budget")
        among = (f"the {len(feasible):,} policies within the budgets (of {total:,})" if problem.budgets
                 else f"the {total:,} policies of the space")
        if len(feasible) <= n:
            return feasible, f"every one of {among}"
        picked = np.sort(rng.choice(len(feasible), size=n, replace=False))
        return [feasible[i] for i in picked.tolist()], f"{n:,} drawn uniformly from {among}, seed {seed}"
    from .encoding import sample_within_budget

    policies, seen = [], set()
    attempts = 0
    while len(policies) < n and attempts < 50 * n:
        attempts += 1
        policy = sample_within_budget(problem, encoding, rng)
        if policy.key not in seen:
            seen.add(policy.key)
            policies.append(policy)
    return policies, (f"{len(policies):,} distinct policies of the random searcher's sampler (uniform widths, "
                      f"narrowed until every budget is kept), seed {seed}")


# --- measuring ---------------------------------------------------------------------------------------
class LossMeter:
    """The loss change of policies on fixed samples, beside their metrics: the mean loss
    of the model as ``evaluator`` scores the policy (``evaluator.quantized_model``:
    fake-quantized, activation ranges calibrated, fine-tuned when the evaluator
    fine-tunes) on the sensitivity samples, minus the float model's on the same samples
    (torch)."""

    def __init__(self, evaluator, *, samples: int = DEFAULT_SAMPLES, batch_size: int = 512, seed: int = 0):
        from .evaluate import single_thread
        from .training import batch_size_of

        self.evaluator = evaluator
        self.deterministic = bool(getattr(evaluator, "deterministic", True))
        self.batches = evaluator.sensitivity_batches(int(samples), int(batch_size), int(seed))
        self.samples = int(sum(batch_size_of(b) for b in self.batches))
        with single_thread(self.deterministic):
            self.float_loss = self._mean_loss(evaluator.model)

    def _mean_loss(self, model) -> float:
        from .sensitivity.estimators import _mean_loss

        return _mean_loss(model, self.batches, loss=self.evaluator.loss)

    def measure(self, policy) -> tuple[float, dict]:
        """The policy's mean loss on the samples minus the float model's, and the
        evaluator's metrics, both of the one model the evaluator scores for it (quantized,
        calibrated and fine-tuned once)."""
        from .evaluate import single_thread

        qmodel = self.evaluator.quantized_model(policy)
        with single_thread(self.deterministic):
            change = self._mean_loss(qmodel) - self.float_loss
        return change, self.evaluator.score_model(qmodel)


# --- the validation ----------------------------------------------------------------------------------
def validate(problem, n: int, *, seed: int = 0, methods: Sequence[str] | None = None,
             tables: Mapping[str, object] | None = None, samples: int = DEFAULT_SAMPLES,
             table_source=None, width_mult: float = 1.0,
             progress: Callable[[str, int, int, str], None] | None = None, policies=None) -> dict:
    """The proxy validation of ``problem`` (a problem with a model evaluator and budgets):
    a JSON-ready dict (see the module's docstring and :func:`render_validation`).

    ``methods``: the sensitivity methods to check (default: every one,
    :data:`bitsearch.sensitivity.METHODS`); ``tables``: tables already estimated, by method
    (the others are estimated with their default settings, through the on-disk cache);
    ``table_source``: what the tables are estimated from (default: the problem's
    evaluator); ``samples``: the sensitivity samples the loss is measured on;
    ``progress(step, done, total, detail)``: called along the two long steps (measuring
    the policies, estimating the tables); ``policies``: the policies to measure, instead
    of drawing ``n`` (then ``n`` is their number).
    """
    from . import sensitivity as sensitivity_module
    from .bench.execute import policy_summary
    from .problem import check_evaluator

    methods = check_methods(methods)
    evaluator = problem.evaluator
    check_evaluator(evaluator, "model", who="the proxy validation (it measures losses)")
    started = time.perf_counter()
    if policies is None:
        policies, how = sample_policies(problem, n, seed)
    else:
        policies, how = list(policies), f"{len(policies):,} given policies"
    report = progress or (lambda step, done, total, detail="": None)
    meter = LossMeter(evaluator, samples=samples, seed=0)
    objective = problem.objective
    measured, metrics = [], []
    for k, policy in enumerate(policies):
        report("measuring policies", k, len(policies), "")
        change, scores = meter.measure(policy)
        measured.append(change)
        metrics.append(float(scores[objective]))
    report("measuring policies", len(policies), len(policies), "")
    badness = [-m for m in metrics] if problem.higher_is_better else list(metrics)  # lower is better, as a loss
    rows = {}
    tables = dict(tables or {})
    for k, method in enumerate(methods):
        report("sensitivity tables", k, len(methods), method)
        table = tables.get(method)
        if table is None:
            table = sensitivity_module.estimate(
                table_source if table_source is not None else evaluator, problem.space, method, width_mult=width_mult,
                progress=lambda step, done, total, detail, _m=method: report(f"{_m}: {step}", done, total, detail))
        table.check_covers(problem.space)
        predicted = [table.predicted_loss(problem.space, p) for p in policies]
        row = {"spearman": spearman(predicted, measured), "kendall": kendall(predicted, measured),
               "spearman_metric": spearman(predicted, badness), "kendall_metric": kendall(predicted, badness),
               "predicted": predicted}
        if table.pairwise is not None:
            info = table.pairwise.info
            row["forward_passes"] = info.get("forward_passes")
            row["pairs"] = f"{info.get('pairs_measured', len(table.pairwise.terms))} of " \
                           f"{info.get('pairs_possible', '?')}"
        row["warning"] = warning(method, row["spearman"])
        rows[method] = row
    report("sensitivity tables", len(methods), len(methods), "")
    return {
        "schema": SCHEMA, "schema_version": 1, "model": problem.space.model_name,
        "granularity": problem.space.granularity, "weight_bits": list(problem.space.weight_bits),
        "act_bits": None if problem.space.act_bits is None else list(problem.space.act_bits),
        "budgets": [b.spec or str(b) for b in problem.budgets], "seed": int(seed), "asked": int(n),
        "policies": len(policies), "drawn": how, "samples": meter.samples, "float_loss": meter.float_loss,
        "objective": objective, "higher_is_better": problem.higher_is_better, "threshold": WARN_BELOW,
        "loss_vs_metric": {"spearman": spearman(measured, badness), "kendall": kendall(measured, badness)},
        "methods": rows,
        "measured": [{"policy": policy_summary(p), "loss_change": m, objective: v}
                     for p, m, v in zip(policies, measured, metrics)],
        "seconds": round(time.perf_counter() - started, 3),
    }


def warning(method: str, rho: float | None) -> str | None:
    """The one-line warning for a method whose ranking is not to be trusted, else None."""
    if rho is None:
        return (f"warning: {method}: the rank correlation is undefined (its predictions, or the measured losses, "
                f"are all equal)")
    if rho < WARN_BELOW:
        return (f"warning: {method} ranks policies poorly here (Spearman {rho:.2f} < {WARN_BELOW}): a searcher "
                f"that plans on it may miss the best policy; prefer a better-ranked method, or refine with the "
                f"evaluator")
    return None


def _number(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def render_validation(result: Mapping | None, *, markdown: bool = True) -> list[str]:
    """The validation as lines: a table (Markdown, or plain text) and its warnings."""
    if not result:
        return []
    head = (f"proxy validation: {result['policies']} policies ({result['drawn']}); loss change measured on "
            f"{result['samples']} sensitivity samples; rank correlation of each method's predicted loss change "
            f"with it, and with {result['objective']}")
    columns = ["method", "Spearman (loss)", "Kendall (loss)", f"Spearman ({result['objective']})",
               f"Kendall ({result['objective']})"]
    body = [[m, _number(r["spearman"]), _number(r["kendall"]), _number(r["spearman_metric"]),
             _number(r["kendall_metric"])] for m, r in result["methods"].items()]
    lvm = result.get("loss_vs_metric") or {}
    body.append(["(measured loss)", "+1.00", "+1.00", _number(lvm.get("spearman")), _number(lvm.get("kendall"))])
    lines = []
    if markdown:
        lines += ["", f"Proxy validation ({result['policies']} policies: {result['drawn']}; loss change on "
                      f"{result['samples']} sensitivity samples):", "",
                  "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(f"`{c}`" if i == 0 and not c.startswith("(") else c for i, c in enumerate(row))
                  + " |" for row in body]
    else:
        lines.append(head)
        widths = [max(len(columns[i]), *(len(row[i]) for row in body)) for i in range(len(columns))]
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths))))
        for row in body:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    warnings = [r["warning"] for r in result["methods"].values() if r.get("warning")]
    if warnings:
        lines += ([""] if markdown else []) + [("- " if markdown else "") + w for w in warnings]
    return lines


def compact(result: Mapping) -> dict:
    """The validation without the per-policy lists (what a bench report keeps in its summary)."""
    out = {k: v for k, v in result.items() if k != "measured"}
    out["methods"] = {m: {k: v for k, v in r.items() if k != "predicted"} for m, r in result["methods"].items()}
    return out


def check_methods(methods: Sequence[str] | None, what: str = "the proxy validation's methods") -> list[str]:
    """The sensitivity methods to check, each once (None: every method); an unknown or
    empty list is a :class:`UserInputError` naming ``what``."""
    from .sensitivity import METHODS

    if methods is None:
        return list(METHODS)
    methods = [str(m).strip() for m in methods if str(m).strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        found = f"unknown method(s) {', '.join(unknown)}" if unknown else "no method given"
        raise UserInputError(f"{what}: {found}; methods: {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def methods_arg(text: str | None) -> list[str] | None:
    """``--methods hessian,empirical`` -> the methods, checked (None: every method)."""
    return None if text is None else check_methods(text.split(","), f"--methods {text!r}")


__all__ = ["rankdata", "spearman", "kendall", "sample_policies", "LossMeter", "validate", "render_validation",
           "warning", "compact", "check_methods", "methods_arg", "WARN_BELOW"]
