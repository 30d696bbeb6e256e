"""The benchmark harness behind ``bitsearch bench``: searchers against each other.

A *suite* (a TOML file checked against ``bitsearch/schemas/suite.schema.json``; see
:func:`suite_format`) names the task, the search space, the budgets, the searchers with
their settings, the seeds and how policies are scored.  The bench runs every searcher x
budget set x seed (a searcher that is deterministic runs once), optionally with the
``exhaustive`` searcher as the oracle, and writes into the output directory:

* ``results.jsonl`` -- the journal: one line per finished run, fsync'd (see
  :mod:`bitsearch.journal`); what ``--resume`` reads;
* ``results.json`` -- the suite, every run in plan order, and the summary rows;
* ``report.md`` -- per searcher and budget: the metric's mean and spread over seeds,
  cost, regret to the oracle, search seconds, evaluations, budget kept;
* ``pareto.png`` and ``curves.png`` -- accuracy against cost, and best-so-far /
  learning curves;
* ``policies/`` -- each run's policy JSON.

The parts, in the order a bench uses them:

* :mod:`.suite` -- the suite file, checked, as frozen dataclasses;
* :mod:`.plan` -- every run of the suite with its stable key, grouped into units of work;
* :mod:`.execute` -- one run in any process: problem, searcher, the record it leaves;
* :mod:`.backends` -- where units run: this process, ``--jobs N`` local processes, or a
  Dask cluster (``--scheduler tcp://host:port`` or ``local``);
* :mod:`.report` -- results, the summary rows, ``report.md`` and the README table;
* :mod:`.plots` -- ``pareto.png`` and ``curves.png``.

This package imports only the standard library and bitsearch's core at import time;
torch (through the task), matplotlib, tqdm and dask are imported when used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .._io import atomic_write_text, check_output, check_output_dir, dumps, load_json_input
from ..errors import UserInputError
from ..journal import Journal
from ..progress import Bar, SearchProgress, progress_enabled
from .backends import choose_backend
from .execute import TIMING_FIELDS, ProblemCache, pareto_front
from .plan import ProblemSpec, Run, Unit, make_units, plan_runs, policy_path
from .report import (SCHEMA, SCHEMA_VERSION, collect_results, load_results, render_report, render_table,
                     replace_readme_block)
from .suite import Suite, load_suite, parse_suite, suite_format

__all__ = ["suite_format", "TIMING_FIELDS", "JOURNAL_NAME", "Suite", "Run", "Unit", "ProblemSpec", "ProblemCache",
           "BenchOutcome", "load_suite", "parse_suite", "plan_runs", "run_bench", "rerender", "load_results",
           "render_table", "replace_readme_block", "pareto_front"]

JOURNAL_NAME = "results.jsonl"


class BenchProgress:
    """One bar over the runs, and (in-process) one bar inside the current run."""

    def __init__(self, total: int, done: int):
        self.bar = Bar("bench", total, unit="run", initial=done, enabled=True, leave=True, position=0)
        self.bar.set()

    def run_callback(self, run):
        return SearchProgress(run.title, enabled=True)

    def finished(self, record):
        status = record["status"]
        metric = record.get("metric")
        text = f"{record['label']} {record['budget_label']} s{record['seed']}: " + (
            f"{metric:.4g}" if status == "ok" and metric is not None else status)
        self.bar.update(1, postfix=text)

    def close(self):
        self.bar.close()


@dataclass
class BenchOutcome:
    out: Path
    planned: int
    resumed: int
    ran: int
    failed: int
    skipped: int
    results: dict = field(default_factory=dict)
    validations: int = 0  # proxy validations run (a suite's validate = N)


def run_bench(suite: Suite | str | os.PathLike, out: str | os.PathLike, *, resume: bool = False,
              jobs: int = 1, scheduler: str | None = None, only: Iterable[str] | None = None,
              progress: bool | None = None, plots: bool = True, command: str | None = None) -> BenchOutcome:
    """Run (or finish) a suite into ``out``; see the module docstring."""
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    backend = choose_backend(jobs, scheduler)
    out = check_bench_dir(out, plots=plots)
    journal_path = out / JOURNAL_NAME
    journal = Journal(journal_path)
    if journal_path.exists() and journal_path.stat().st_size > 0 and not resume:
        raise UserInputError(f"{out} already holds a bench ({JOURNAL_NAME}); add --resume to finish it, "
                             f"or choose another --out")
    runs = plan_runs(suite, only)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "suite.json", dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                                                  "suite": suite.to_dict()}))
    if resume:
        journal.repair()
    recorded = journal.latest()
    done = {k: r for k, r in recorded.items() if r.get("status") in ("ok", "skipped")}
    todo = {r.key: r for r in runs if r.key not in done}
    # the report covers the selected runs and every other run of the suite already recorded
    selected = {r.key for r in runs}
    reported = [r for r in plan_runs(suite, check=False) if r.key in selected or r.key in recorded]
    resumed = len(runs) - len(todo)
    progress = progress_enabled() if progress is None else progress
    bar = BenchProgress(len(runs), resumed) if progress and todo else None
    ran = failed = 0
    try:
        units = make_units(suite, list(todo.values()), progress=bool(progress and backend.in_process))
        if units and backend.local_workers:
            prewarm(suite, progress=bool(progress))
        for record in backend.run(units, bar.run_callback if bar is not None else None):
            policy_json = record.pop("policy_json", None)
            if policy_json is not None:
                rel = policy_path(suite, todo[record["key"]])
                atomic_write_text(out / rel, policy_json)  # before the journal line that names it
                record["policy_file"] = rel
            journal.append(record)
            ran += 1
            failed += record["status"] == "failed"
            if bar is not None:
                bar.finished(record)
        validated = run_validations(suite, journal, recorded, progress=bool(progress))
    finally:
        journal.close()
        if bar is not None:
            bar.close()
    commands = _previous_commands(out)
    if command and (ran or not commands):
        commands.append(command)
    results = render_outputs(suite, out, reported, commands, plots=plots)
    skipped = sum(1 for r in results["runs"] if r.get("status") == "skipped")
    return BenchOutcome(out, len(runs), resumed, ran, failed, skipped, results, validated)


def run_validations(suite: Suite, journal: Journal, recorded: dict, *, progress: bool = False) -> int:
    """The suite's proxy validations (``validate = N``) not yet in the journal, in this
    process, each journaled when done (a failed one is tried again on ``--resume``); how
    many ran."""
    from ..progress import StepBars
    from .execute import execute_validation
    from .plan import plan_validations, problem_spec

    cache = ProblemCache()
    ran = 0
    for validation in plan_validations(suite):
        if (recorded.get(validation.key) or {}).get("status") in ("ok", "skipped"):
            continue
        spec = problem_spec(suite, suite.variants[validation.variant_index], progress)
        with StepBars(f"validation {validation.budget_label}: ", enabled=progress) as bars:
            journal.append(execute_validation(spec, validation, cache, progress=bars))
        ran += 1
    return ran


def check_bench_dir(out: str | os.PathLike, *, plots: bool = True) -> Path:
    """The bench's output folder, checked before any run (see
    :func:`bitsearch._io.check_output_dir`; it and its parents are created when missing),
    and every file the bench writes in it (:func:`bitsearch._io.check_output`): a run's
    results are never lost to a folder or a device where the report goes."""
    given = Path(out)
    check_output_dir(given, what="--out")
    names = ["suite.json", "results.json", "report.md"] + (["pareto.png", "curves.png"] if plots else [])
    for name in names:
        check_output(given / name, parents=True)
    journal = given / JOURNAL_NAME
    if journal.exists() and not journal.is_file():
        check_output(journal)  # raises: the journal is appended to, so it must be a regular file
    policies = given / "policies"
    if policies.exists() and not policies.is_dir():
        check_output_dir(policies)
    return given


def _previous_commands(out: Path) -> list[str]:
    try:
        data = load_json_input(out / "results.json", "results", error=UserInputError)
        return list(data.get("commands") or ([data["command"]] if data.get("command") else []))
    except (UserInputError, ValueError, AttributeError, RecursionError):
        return []


def render_outputs(suite: Suite, out: Path, reported: Sequence[dict], commands: Sequence[str], *,
                   plots: bool = True) -> dict:
    """results.json, report.md and the plots of ``reported`` runs, from the journal in ``out``."""
    results = collect_results(suite, reported, Journal(out / JOURNAL_NAME).latest(), commands=commands)
    atomic_write_text(out / "results.json", dumps(results))
    atomic_write_text(out / "report.md", render_report(results))
    if plots:
        from .plots import plot_curves, plot_pareto

        plot_pareto(results, out / "pareto.png")
        plot_curves(results, out / "curves.png")
    return results


def rerender(suite: Suite | str | os.PathLike, out: str | os.PathLike, *, only: Iterable[str] | None = None,
             plots: bool = True) -> dict:
    """Render a bench's outputs again from its journal, running nothing (after the report
    code changed, say); the recorded commands are kept."""
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    out = Path(out)
    recorded = Journal(out / JOURNAL_NAME).latest()
    if not recorded:
        raise UserInputError(f"{out}: no journal ({JOURNAL_NAME}) to render")
    selected = {r.key for r in plan_runs(suite, only, check=False)}
    reported = [r for r in plan_runs(suite, check=False) if r.key in selected and r.key in recorded]
    return render_outputs(suite, out, reported, _previous_commands(out), plots=plots)


def prewarm(suite: Suite, *, progress: bool = False) -> None:
    """Train (or load) each task's float model here, once, before local workers start:
    they then read it from the task cache instead of all training it at the same time."""
    for variant in suite.variants:
        if variant.source_kind != "task":
            continue
        from ..tasks import Task, get_source

        task = get_source(variant.source)
        if isinstance(task, Task) and not task.shape_only:
            task.trained_model(variant.width_mult, progress=progress)
