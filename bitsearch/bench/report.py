"""The results of a bench: the runs merged with their journal records, the summary rows
(mean and spread over seeds, regret to the oracle), ``report.md`` and the compact table
the README shows."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from .._io import atomic_write_text, load_json_input, read_text_input
from ..errors import UserInputError
from .plan import Run
from .suite import Scoring, Suite

SCHEMA = "bitsearch-bench"
SCHEMA_VERSION = 1

def collect_results(suite: Suite, runs: Sequence[Run], records: Mapping[str, dict], *,
                    commands: Sequence[str] = ()) -> dict:
    """The runs of the plan with their journal records (display fields from the plan)."""
    merged = []
    for run in runs:
        record = records.get(run.key)
        row = dict(record) if record is not None else {"status": "missing"}
        row.update(run.display())
        if row.get("status") != "failed":
            row.pop("traceback", None)
        merged.append(row)
    summary = summarize(suite, merged)
    results = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "bitsearch_version": __version__,
               "suite": suite.to_dict(), "commands": list(commands), "axis_cost": suite.axis_cost,
               "runs": merged, "summary": summary}
    if suite.validate:
        results["validation"] = collect_validations(suite, records)
    return results


def collect_validations(suite: Suite, records: Mapping[str, dict]) -> list[dict]:
    """The suite's proxy validations with their journal records, in report order."""
    from .plan import plan_validations

    out = []
    for validation in plan_validations(suite):
        record = dict(records.get(validation.key) or {"status": "missing"})
        record.update(key=validation.key, variant=validation.variant, budgets=list(validation.budgets),
                      budget_label=validation.budget_label)
        if record.get("status") != "failed":
            record.pop("traceback", None)
        out.append(record)
    return out


def _mean(values):
    return sum(values) / len(values) if values else None


def _std(values):
    if len(values) < 2:
        return None
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def summarize(suite: Suite, runs: Sequence[dict]) -> list[dict]:
    """One row per (variant, budget set, searcher label), in plan order."""
    axis = suite.axis_cost
    order: list[tuple] = []
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        key = (run["variant"], run["budget_label"], run["label"])
        if key not in groups:
            order.append(key)
            groups[key] = []
        groups[key].append(run)
    oracle = {}
    for run in runs:
        if run.get("oracle") and run.get("status") == "ok" and run.get("metric") is not None:
            oracle[(run["variant"], run["budget_label"])] = run
    rows = []
    for key in order:
        group = groups[key]
        ok = [r for r in group if r.get("status") == "ok"]
        first = group[0]
        row = {"variant": key[0], "budget": key[1], "label": key[2], "searcher": first["searcher"],
               "deterministic": first["deterministic"], "oracle": bool(first.get("oracle")),
               "planned": len(group), "ok": len(ok),
               "skipped": sum(r.get("status") == "skipped" for r in group),
               "failed": sum(r.get("status") == "failed" for r in group),
               "missing": sum(r.get("status") == "missing" for r in group)}
        problems = [r.get("message", "") for r in group if r.get("status") in ("skipped", "failed")]
        if problems:
            row["message"] = problems[0]
        values = [r["metric"] for r in ok if r.get("metric") is not None]
        if ok:
            row["objective"] = ok[0].get("objective")
            row["higher_is_better"] = ok[0].get("higher_is_better", True)
            row["metric_mean"] = _mean(values)
            row["metric_std"] = _std(values)
            row["metric_min"] = min(values) if values else None
            row["metric_max"] = max(values) if values else None
            row["metrics"] = values
            kinds = sorted({str(r["metrics"]["metric_kind"]) for r in ok if (r.get("metrics") or {}).get("metric_kind")})
            if kinds:
                row["metric_kind"] = ", ".join(kinds)
            costs = [r["costs"].get(axis) for r in ok if r.get("costs", {}).get(axis) is not None]
            row["cost_axis"] = axis
            row["cost_mean"] = _mean(costs)
            limits = [l for l in ok[0].get("limits", []) if l["cost"] == axis]
            if limits:
                row["limit"] = limits[0]["limit"]
                row["unit"] = limits[0]["unit"]
            row["seconds_mean"] = _mean([r["seconds"] for r in ok])
            row["setup_seconds_max"] = max(r.get("setup_seconds", 0.0) for r in ok)
            row["evaluations_mean"] = _mean([r["evaluations"] for r in ok])
            row["fresh_evaluations_mean"] = _mean([r.get("fresh_evaluations", 0) for r in ok])
            passes = [r["forward_passes"] for r in ok if r.get("forward_passes") is not None]
            if passes:
                row["forward_passes_mean"] = _mean(passes)
            row["budget_kept"] = all(r.get("budget_kept") for r in ok)
            row["budget_kept_runs"] = sum(bool(r.get("budget_kept")) for r in ok)
            best = max(ok, key=lambda r: (r.get("metric") if r.get("metric") is not None else -math.inf)
                       * (1 if row["higher_is_better"] else -1))
            row["best_policy"] = best.get("policy_summary", "")
            ref = oracle.get((key[0], key[1]))
            if ref is not None and values:
                sign = 1.0 if row["higher_is_better"] else -1.0
                regrets = [sign * (ref["metric"] - v) for v in values]
                row["regret_mean"] = _mean(regrets)
                row["oracle_metric"] = ref["metric"]
        rows.append(row)
    return rows


FRACTION_METRICS = ("top1", "top5")  # shown as percentages, regrets in percentage points


def _is_fraction_metric(objective: str | None) -> bool:
    """Whether ``objective`` is one of bitsearch's fraction metrics (top-k accuracy in [0, 1]);
    every other metric (a loss, a perplexity, your own) is shown as the number it is."""
    return objective in FRACTION_METRICS


def direction_note(higher_is_better: bool | None) -> str:
    return "" if higher_is_better in (None, True) else " (lower is better)"


def format_metric(value, objective, *, signed=False, points=False) -> str:
    if value is None:
        return "–"
    if _is_fraction_metric(objective):
        text = f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
        return text + (" pp" if points else "%")
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def render_report(results: Mapping[str, Any]) -> str:
    from ..budget import format_cost

    suite = results["suite"]
    runs = results["runs"]
    rows = results["summary"]
    axis = results["axis_cost"]
    n_ok = sum(r.get("status") == "ok" for r in runs)
    n_skip = sum(r.get("status") == "skipped" for r in runs)
    n_fail = sum(r.get("status") == "failed" for r in runs)
    n_missing = sum(r.get("status") == "missing" for r in runs)
    scoring = Scoring(**suite["scoring"])
    lines = [f"# bench: {suite['name']}", ""]
    if suite.get("description"):
        lines += [suite["description"].strip(), ""]
    commands = results.get("commands") or []
    lines.append(f"- suite: `{suite['path']}`" + (("; command: " if len(commands) == 1 else "; commands: ")
                                                  + ", then ".join(f"`{c}`" for c in commands) if commands else ""))
    for v in suite["variants"]:
        lines.append(f"- problem: {v['description']}")
    objectives = {r.get("objective") for r in runs if r.get("status") == "ok"}
    if objectives == {"sensitivity"}:
        how = "the problem's sensitivity table (estimated loss increase: lower is better; no evaluator)"
    elif objectives == {"none"}:
        how = "nothing (shape-only problem: only costs and seconds compare)"
    else:
        how = scoring.describe()
    lines.append(f"- scoring: {how}; seeds {', '.join(map(str, suite['seeds']))} "
                 f"(deterministic searchers run once)")
    oracle = next((s for s in suite["searchers"] if s.get("oracle")), None)
    lines.append("- oracle: " + (f"`{oracle['label']}` (every policy within each budget, same objective)"
                                 if oracle else "none"))
    lines.append(f"- runs: {n_ok} finished" + (f", {n_skip} skipped" if n_skip else "")
                 + (f", {n_fail} failed" if n_fail else "") + (f", {n_missing} not run yet" if n_missing else "")
                 + f"; bitsearch {results['bitsearch_version']}")
    lines.append("")
    multi_variant = len(suite["variants"]) > 1
    kinds = [r.get("metric_kind") for r in rows if r.get("metric_kind")]
    usual = max(set(kinds), key=kinds.count) if kinds else None
    marked = sorted({(r["label"], r["metric_kind"]) for r in rows if r.get("metric_kind") not in (None, usual)})
    passes = any("forward_passes_mean" in r for r in rows)
    validations = {(v["variant"], v["budget_label"]): v for v in results.get("validation") or ()}
    current = None
    for index, row in enumerate(rows):
        if (row["variant"], row["budget"]) != current:
            current = (row["variant"], row["budget"])
            title = f"{row['budget']}" + (f" — {row['variant']}" if multi_variant else "")
            limit = next((r for r in rows if (r["variant"], r["budget"]) == current and "limit" in r), None)
            if limit is not None:
                title += f" ({axis} ≤ {format_cost(limit['limit'], limit['unit'])})"
            objective = next((r.get("objective") for r in rows
                              if (r["variant"], r["budget"]) == current and r.get("objective")), "metric")
            lower = next((r.get("higher_is_better") is False for r in rows
                          if (r["variant"], r["budget"]) == current and r.get("objective")), False)
            lines += ["", f"## {title}", "",
                      f"| searcher | runs | {objective}{' (lower is better)' if lower else ''} mean ± std | min – max | regret to oracle | {axis} | "
                      f"of budget | search s | evaluations (fresh) | "
                      + ("forward passes | " if passes else "") + "budget kept | best policy |",
                      "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if passes else "")]
        lines.append(_report_row(row, marked={label for label, _ in marked}, passes=passes))
        last_of_group = index + 1 == len(rows) or (rows[index + 1]["variant"], rows[index + 1]["budget"]) != current
        if validations and last_of_group:
            lines += _validation_lines(validations.get(current))
    lines += ["", " ".join(REPORT_NOTES + (PASSES_NOTE if passes else ())), ""]
    if validations:
        lines += [" ".join(VALIDATION_NOTES), ""]
    for label, kind in marked:
        lines += [f"† `{label}` reports its metric as `{kind}` (its own training, e.g. the fine-tuned weights "
                  f"it returns), not as `{usual}` like the others.", ""]
    if any(r.get("status") == "failed" for r in runs):
        lines += ["## failures", ""]
        for r in runs:
            if r.get("status") == "failed":
                lines.append(f"- {r['label']} {r['budget_label']} seed {r['seed']}: {r.get('message', '')}")
        lines.append("")
    return "\n".join(lines) + "\n"


REPORT_NOTES = (
    "Columns: the metric is the problem's objective (top-1 accuracy on the task's test set after",
    "quantization with the policy, the metric of your own evaluator -- higher or lower is better, as it",
    "declares --, or a sensitivity table's estimated loss increase); spread is the",
    "sample standard deviation over seeds and the min – max range; regret is how far the searcher is",
    "behind the oracle, in the metric's own direction (percentage points of accuracy; negative means",
    "ahead of it, which a searcher that changes the model, such as uniform-width, can be); cost is the",
    "cost the budget limits, recomputed",
    "from the policy; search seconds are the wall time of `search()`, mean over seeds (in brackets:",
    "seconds spent first building the problem, when that run was the one to build it: training or",
    "loading the model, estimating a sensitivity table); evaluations count the policies a searcher",
    "asked to score, fresh ones those not already scored in the same process (runs of one problem",
    "share an evaluation cache, so a run can be faster than it would be alone); best policy: the",
    "weight widths, layer by layer, of the best run (@xM: a model at width multiplier M).",
)


PASSES_NOTE = (
    "Forward passes (iqp): passes of the model over the sensitivity samples (512 training samples by",
    "default) that its pairwise table and its trust region spent, each far cheaper than an evaluation",
    "(calibration and the whole test split); the exhaustive oracle's evaluations are beside them.",
)


VALIDATION_NOTES = (
    "Proxy validation (the suite's `validate = N`): N policies drawn within the budgets (seeded by the",
    "suite's first seed; uniformly among every policy in budget where the space has at most 20,000), each",
    "measured as the evaluator scores it: its loss change on the sensitivity samples and its metric; per",
    "sensitivity method, the Spearman and Kendall (tau-b) rank correlation of its predicted loss change",
    "with the measured one, and with the metric (+1: lower predicted loss, better metric). Below a",
    "Spearman correlation of 0.7 with the measured loss a searcher planning on that table may miss the",
    "best policy (docs/crosslayer.md).",
)


def _validation_lines(record: Mapping[str, Any] | None) -> list[str]:
    """The proxy validation under a budget's table: its own table, or why there is none."""
    from ..validation import render_validation

    if record is None or record.get("status") == "missing":
        return ["", "Proxy validation: not run yet."]
    if record.get("status") != "ok":
        return ["", f"Proxy validation: {record['status']}: {_md(record.get('message', ''))}"]
    return render_validation(record["validation"])


def _report_row(row, marked=frozenset(), passes: bool = False) -> str:
    label = f"`{row['label']}`" + (" (oracle)" if row.get("oracle") else "") + (" †" if row["label"] in marked else "")
    if not row["ok"]:
        why = row.get("message") or ("not run yet" if row.get("missing") else "")
        status = "skipped" if row["skipped"] else ("failed" if row["failed"] else "missing")
        return f"| {label} | 0 of {row['planned']} ({status}) | {_md(why)} | | | | | | | | |" + (" |" if passes else "")
    objective = row.get("objective")
    runs = f"{row['ok']}" + (" (deterministic)" if row["deterministic"] else "") + (
        f" of {row['planned']}" if row["ok"] != row["planned"] else "")
    mean = format_metric(row.get("metric_mean"), objective)
    if row.get("metric_std") is not None:
        mean += " ± " + format_metric(row["metric_std"], objective).rstrip("%")
    spread = "–" if row["ok"] < 2 else (f"{format_metric(row['metric_min'], objective)} – "
                                         f"{format_metric(row['metric_max'], objective)}")
    regret = format_metric(row.get("regret_mean"), objective, signed=True, points=True) if "regret_mean" in row else "–"
    unit = row.get("unit", "")
    cost = _cost_like(row["cost_mean"], row.get("limit"), unit) if row.get("cost_mean") is not None else "–"
    share = f"{100 * row['cost_mean'] / row['limit']:.1f}%" if row.get("limit") and row.get("cost_mean") else "–"
    kept = "yes" if row["budget_kept"] else f"**NO** ({row['budget_kept_runs']} of {row['ok']})"
    evals = f"{row['evaluations_mean']:.0f} ({row['fresh_evaluations_mean']:.0f})"
    seconds = f"{row['seconds_mean']:.2f}"
    if row.get("setup_seconds_max", 0.0) >= 0.5:
        seconds += f" (+{row['setup_seconds_max']:.0f})"
    fwd = ""
    if passes:
        fwd = (f"{row['forward_passes_mean']:,.0f}" if row.get("forward_passes_mean") is not None else "–") + " | "
    return (f"| {label} | {runs} | {mean} | {spread} | {regret} | {cost} | {share} | "
            f"{seconds} | {evals} | {fwd}{kept} | {row.get('best_policy', '')} |")


_COST_SCALES = {  # the steps of budget.format_cost, largest first: (suffix, unit per suffix)
    "bit": (("GB", 8e9), ("MB", 8e6), ("KB", 8e3)),
    "BOPs": (("TBOPs", 1e12), ("GBOPs", 1e9), ("MBOPs", 1e6), ("KBOPs", 1e3)),
    "pJ": (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)),
}


def _cost_like(value: float, like: float | None, unit: str) -> str:
    """``value`` in the scale ``format_cost`` picks for ``like`` (so a column reads evenly)."""
    from ..budget import format_cost

    if like is None or unit not in _COST_SCALES:
        return format_cost(value, unit)
    for suffix, scale in _COST_SCALES[unit]:
        if like >= scale:
            return f"{value / scale:.4g} {suffix}"
    return f"{value:.6g} {unit}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_table(results: Mapping[str, Any]) -> str:
    """The compact main table: searchers x budgets, metric mean ± std and regret."""
    rows = results["summary"]
    suite = results["suite"]
    variants = []
    for r in rows:
        if r["variant"] not in variants:
            variants.append(r["variant"])
    out = []
    for variant in variants:
        vrows = [r for r in rows if r["variant"] == variant]
        budgets = []
        labels = []
        for r in vrows:
            if r["budget"] not in budgets:
                budgets.append(r["budget"])
            if r["label"] not in labels:
                labels.append(r["label"])
        objective = next((r.get("objective") for r in vrows if r.get("objective")), "metric")
        higher = next((r.get("higher_is_better") for r in vrows if r.get("objective")), True)
        kinds = [r.get("metric_kind") for r in vrows if r.get("metric_kind")]
        usual = max(set(kinds), key=kinds.count) if kinds else None
        has_oracle = any("regret_mean" in r for r in vrows)
        if len(variants) > 1:
            out += [f"**{variant}**", ""]
        out.append("| searcher | " + " | ".join(budgets) + " |")
        out.append("|---|" + "---|" * len(budgets))
        for label in labels:
            cells = []
            for b in budgets:
                row = next((r for r in vrows if r["label"] == label and r["budget"] == b), None)
                if row is None or not row["ok"]:
                    cells.append("–")
                    continue
                text = format_metric(row["metric_mean"], objective)
                if row.get("metric_std") is not None:
                    text += " ± " + format_metric(row["metric_std"], objective).rstrip("%")
                if "regret_mean" in row and not row.get("oracle"):
                    text += f" ({format_metric(row['regret_mean'], objective, signed=True, points=True)})"
                if not row["budget_kept"]:
                    text += " **over budget**"
                cells.append(text)
            name = f"`{label}`" + (" (oracle)" if any(r["label"] == label and r.get("oracle") for r in vrows) else "")
            kind = next((r.get("metric_kind") for r in vrows if r["label"] == label and r.get("metric_kind")), None)
            if kind and kind != usual:
                name += f" ({kind})"
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    seeds = ", ".join(map(str, suite["seeds"]))
    note = (f"{objective}{direction_note(higher)} of the quantized model, mean ± std over seeds {seeds} "
            f"(deterministic searchers: "
            f"one run)" + ("; in brackets the regret to the exhaustive oracle" if has_oracle else "")
            + f". Generated by `bitsearch bench table` from `{suite['name']}`'s results.json.")
    out.append(note)
    return "\n".join(out) + "\n"


def replace_readme_block(readme: str | os.PathLike, name: str, table: str) -> None:
    path = Path(readme)
    text = read_text_input(path, "results", error=lambda message: UserInputError(f"{path}: {message}"))
    start, end = f"<!-- bench-table:{name} -->", f"<!-- /bench-table:{name} -->"
    if start not in text or end not in text:
        raise UserInputError(f"{path}: no block '{start}' ... '{end}' to fill; add those two lines where the "
                             f"table goes")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(path, head + start + "\n" + table + end + tail)



def load_results(directory: str | os.PathLike) -> dict:
    path = Path(directory)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        raise UserInputError(f"{path}: no such file (run the bench first)")
    data = load_json_input(path, "results", error=lambda message: UserInputError(f"{path}: {message}"))
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        schema = data.get("schema") if isinstance(data, dict) else None
        raise UserInputError(f"{path}: not a bench results file (schema {schema!r})")
    return data

