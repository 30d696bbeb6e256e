"""The plots of a bench (matplotlib with the Agg backend, imported when drawing):
``pareto.png``, metric against cost, and ``curves.png``, best so far and learning curves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._io import atomic_write
from .execute import pareto_front
from .report import _is_fraction_metric, _mean, _std

def _pyplot():
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _axis_scale(unit: str, values: Sequence[float]) -> tuple[float, str]:
    top = max(values) if values else 1.0
    if unit == "bit":
        for name, scale in (("MB", 8e6), ("KB", 8e3)):
            if top >= scale:
                return scale, name
        return 1.0, "bit"
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if top >= scale:
            return scale, prefix + unit
    return 1.0, unit


def plot_pareto(results: Mapping[str, Any], path: str | os.PathLike) -> bool:
    """Metric against cost per searcher (mean ± std over seeds; seeds as dots), uniform as a
    line, the oracle's frontier as a staircase, budgets as dotted lines."""
    plt = _pyplot()
    runs = [r for r in results["runs"] if r.get("status") == "ok" and r.get("metric") is not None]
    if plt is None or not runs:
        return False
    axis = results["axis_cost"]
    variants = list(dict.fromkeys(r["variant"] for r in results["runs"]))
    labels = list(dict.fromkeys(r["label"] for r in results["runs"]))
    colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(len(variants), 1, figsize=(8, 5 * len(variants)), squeeze=False)
    for ax, variant in zip(axes[:, 0], variants):
        vruns = [r for r in runs if r["variant"] == variant and axis in r.get("costs", {})]
        limits = {l["limit"]: l["unit"] for r in vruns for l in r.get("limits", []) if l["cost"] == axis}
        unit = next(iter(limits.values()), "")
        scale, unit_name = _axis_scale(unit, [r["costs"][axis] for r in vruns] + list(limits))
        objective = vruns[0]["objective"] if vruns else "metric"
        pct = 100.0 if _is_fraction_metric(objective) else 1.0
        front = [p for r in vruns if r.get("frontier") for p in r["frontier"]]
        if front:
            merged = pareto_front([tuple(p) for p in front], vruns[0].get("higher_is_better", True))
            xs = [p[0] / scale for p in merged]
            ys = [p[1] * pct for p in merged]
            ax.step(xs, ys, where="post", color="0.3", lw=1.2, label="oracle frontier (exhaustive)", zorder=1)
        for label in labels:
            lr = [r for r in vruns if r["label"] == label]
            if not lr:
                continue
            by_budget: dict[str, list[dict]] = {}
            for r in lr:
                by_budget.setdefault(r["budget_label"], []).append(r)
            pts = []
            for group in by_budget.values():
                xs = [r["costs"][axis] / scale for r in group]
                ys = [r["metric"] * pct for r in group]
                if len(group) > 1:
                    ax.scatter(xs, ys, s=10, color=colors[label], alpha=0.35, zorder=2)
                pts.append((_mean(xs), _mean(ys), _std(ys) or 0.0))
            pts.sort()
            is_uniform = lr[0]["searcher"] == "uniform"
            if is_uniform:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color=colors[label], marker="s",
                        label=label, zorder=3)
            else:
                marker = "*" if lr[0].get("oracle") else "o"
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=marker,
                            color=colors[label], capsize=3, ms=9 if marker == "*" else 6, label=label, zorder=4)
        for limit in limits:
            ax.axvline(limit / scale, color="0.7", ls=":", lw=1, zorder=0)
        ax.set_xlabel(f"{axis} ({unit_name})")
        lower = bool(vruns) and vruns[0].get("higher_is_better") is False
        ax.set_ylabel(f"{objective}" + (" (%)" if pct != 1.0 else "") + (" (lower is better)" if lower else ""))
        ax.set_title(f"{results['suite']['name']}: {variant}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right" if lower else "lower right")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True


def plot_curves(results: Mapping[str, Any], path: str | os.PathLike) -> bool:
    """Best metric so far against evaluations, per budget; and each searcher's learning
    curve (``result.info["learning_curve"]``) where one reports it."""
    plt = _pyplot()
    runs = [r for r in results["runs"] if r.get("status") == "ok"]
    searching = [r for r in runs if len(r.get("progress") or []) > 0 and r.get("evaluations", 0) > 1]
    learning = [r for r in runs if r.get("learning_curve")]
    if plt is None or not (searching or learning):
        return False
    panels = list(dict.fromkeys((r["variant"], r["budget_label"]) for r in results["runs"]))
    rows = [("progress", searching)] + ([("learning", learning)] if learning else [])
    labels = list(dict.fromkeys(r["label"] for r in results["runs"]))
    colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(4.5 * len(panels), 3.6 * len(rows)), squeeze=False)
    multi = len({p[0] for p in panels}) > 1
    for i, (kind, chosen) in enumerate(rows):
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            seen = set()
            for r in chosen:
                if (r["variant"], r["budget_label"]) != panel:
                    continue
                pct = 100.0 if _is_fraction_metric(r.get("objective")) else 1.0
                label = r["label"] if r["label"] not in seen else None
                seen.add(r["label"])
                if kind == "progress":
                    pts = list(r["progress"])
                    pts.append([r["evaluations"], pts[-1][1]])
                    ax.step([p[0] for p in pts], [p[1] * pct for p in pts], where="post",
                            color=colors[r["label"]], alpha=0.8, lw=1, label=label)
                else:
                    ykey, xs, ys = _curve_xy(r["learning_curve"])
                    if ys:
                        ax.plot(xs, ys, color=colors[r["label"]], alpha=0.8, lw=1,
                                label=None if label is None else f"{label} ({ykey})")
            title = panel[1] + (f"\n{panel[0]}" if multi else "")
            ax.set_title(title, fontsize=9)
            if kind == "progress":
                ax.set_xscale("log")
                ax.set_xlabel("evaluations")
                ax.set_ylabel("best so far")
            else:
                ax.set_xlabel("episode")
                ax.set_ylabel("learning curve")
            ax.grid(alpha=0.3)
            if seen:
                ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True


def _curve_xy(curve: Sequence[Mapping[str, Any]]):
    keys = [k for k in ("reward", "score", "top1", "metric", "return") if any(k in step for step in curve)]
    if not keys:
        keys = [k for k in curve[0] if k not in ("episode", "step") and isinstance(curve[0][k], (int, float))]
    if not keys:
        return "", [], []
    ykey = keys[0]
    xs, ys = [], []
    for i, step in enumerate(curve):
        value = step.get(ykey)
        if isinstance(value, (int, float)) and value is not None:
            xs.append(step.get("episode", i))
            ys.append(float(value))
    return ykey, xs, ys


def _save_figure(fig, path) -> None:
    """Save through a temporary file and a rename, like every file the tool writes."""
    path = Path(path)
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=110, format=path.suffix.lstrip(".") or "png"))
