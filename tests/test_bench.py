"""``bitsearch bench``: suites, the report, resume after SIGKILL, process and Dask backends.

Most tests run on the synthetic problem of ``bench_problems.py`` (torch-free, scored by
a fake evaluator); one runs a tiny suite on the ``digits-cnn`` task.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bitsearch.bench import (TIMING_FIELDS, load_results, load_suite, parse_suite, plan_runs, render_table,
                             replace_readme_block, run_bench)
from bitsearch.errors import UserInputError
from bitsearch.journal import Journal
from bitsearch.policy import load_policy

TESTS = Path(__file__).parent
ROOT = TESTS.parent

SYNTHETIC_SUITE = """\
name = "synthetic"
problem = "bench_problems:synthetic"
seeds = [0, 1, 2]
budgets = ["size=2.5bit", "size=3bit", ["size=4bit", "bops=3bit"]]
oracle = true

[space]
weight_bits = [2, 3, 4, 8]
act_bits = 8

[scoring]
shared_cache = {shared_cache}

[[searchers]]
name = "uniform"

[[searchers]]
name = "random"
settings = {{ samples = {samples} }}
"""


def write_suite(directory: Path, text: str, name: str = "suite.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def synthetic_suite(directory: Path, *, samples=12, shared_cache=True) -> Path:
    return write_suite(directory, SYNTHETIC_SUITE.format(samples=samples,
                                                         shared_cache=str(shared_cache).lower()))


def comparable(results: dict) -> list[dict]:
    """The runs without what depends on the clock, the machine or the cache."""
    return [{k: v for k, v in run.items() if k not in TIMING_FIELDS} for run in results["runs"]]


# --- the suite file -------------------------------------------------------------------------
def test_suite_parses_and_plans(tmp_path):
    suite = load_suite(synthetic_suite(tmp_path))
    assert suite.name == "synthetic"
    assert suite.budgets == (("size=2.5bit",), ("size=3bit",), ("size=4bit", "bops=3bit"))
    assert [e.label for e in suite.searchers] == ["uniform", "random", "exhaustive"]
    assert suite.oracle_entry.name == "exhaustive"
    runs = plan_runs(suite)
    # uniform and exhaustive are deterministic: once per budget; random once per seed
    assert len(runs) == 3 * (1 + 3 + 1)
    assert len({r.key for r in runs}) == len(runs)
    # keys are stable: the same suite plans the same keys
    assert [r.key for r in plan_runs(load_suite(tmp_path / "suite.toml"))] == [r.key for r in runs]
    assert {r.label for r in plan_runs(suite, only=["random"])} == {"random", "exhaustive"}


BASE = {"problem": "bench_problems:synthetic", "seeds": [0, 1, 2], "budgets": ["size=3bit"],
        "searchers": [{"name": "uniform"}]}


@pytest.mark.parametrize("change, message", [
    ({"searchers": [{"name": "no-such-searcher"}]}, "unknown searcher 'no-such-searcher'; known searchers:"),
    ({"budgets": ["size=three bits"]}, "budgets[0]"),
    ({"budgets": []}, "'budgets' must be a non-empty list"),
    ({"budgets": None}, "'budgets' must be a non-empty list"),
    ({"seeds": [0]}, "3 or more seeds"),
    ({"seeds": None}, "'seeds' must be a list of integers"),
    ({"problem": None}, "give 'task'"),
    ({"task": "digits-cnn"}, "exactly one of them"),
    ({"searchers": None}, "[[searchers]]"),
    ({"searchers": [{"settings": {}}]}, "needs name ="),
    ({"searchers": [{"name": "random"}, {"name": "random"}]}, "appear twice"),
    ({"searchers": [{"name": "random", "setting": {}}]}, "unknown key(s) ['setting']"),
    ({"seed": 1}, "unknown key(s) ['seed']"),
    ({"space": {"granularity": "channel"}}, "granularity"),
    ({"space": {"weight_bits": "two"}}, "[space]"),
    ({"scoring": {"finetune_epochs": -1}}, "finetune_epochs"),
    ({"oracle": "yes"}, "'oracle' must be true or false"),
])
def test_malformed_suites_are_one_line_errors(change, message):
    data = {**BASE, **{k: v for k, v in change.items() if v is not None}}
    for key, value in change.items():
        if value is None:
            data.pop(key, None)
    with pytest.raises(UserInputError) as info:
        parse_suite(data, "suite.toml")
    text = str(info.value)
    assert message in text
    assert text.startswith("suite.toml: ")
    assert "\n" not in text


def test_bad_settings_fail_before_any_run(tmp_path):
    suite = parse_suite({**BASE, "searchers": [{"name": "random", "settings": {"sampels": 3}}]}, "s.toml")
    with pytest.raises(UserInputError, match="has no settings"):
        run_bench(suite, tmp_path / "out", plots=False)
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_cli_errors_are_one_line_exit_2(tmp_path):
    bad = write_suite(tmp_path, 'task = "mnist1d-cnn"\nseeds = [0, 1, 2]\nbudgets = ["size=4bit"]\n'
                                '[[searchers]]\nname = "nope"\n', "bad.toml")
    for args in ([str(bad), "--out", str(tmp_path / "o")], [str(tmp_path / "missing.toml")],
                 [str(synthetic_suite(tmp_path)), "--out", str(tmp_path / "o"), "--jobs", "0"]):
        proc = subprocess.run([sys.executable, "-m", "bitsearch.cli", "bench", *args], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(TESTS)})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_help_teaches_the_suite_format():
    proc = subprocess.run([sys.executable, "-m", "bitsearch.cli", "bench", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for needle in ("[[searchers]]", "budgets =", "seeds =", "oracle =", "finetune_epochs", "--resume",
                   "--scheduler", "--jobs", "--only"):
        assert needle in proc.stdout


# --- running, the report ----------------------------------------------------------------------
def test_bench_writes_report_results_plots_and_policies(tmp_path):
    outcome = run_bench(synthetic_suite(tmp_path), tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert outcome.planned == 15 and outcome.ran == 15 and outcome.failed == 0
    for name in ("results.jsonl", "results.json", "report.md", "pareto.png", "curves.png", "suite.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    results = load_results(out)
    runs = results["runs"]
    assert len(runs) == 15 and all(r["status"] == "ok" for r in runs)
    assert len(Journal(out / "results.jsonl").records()) == 15
    for run in runs:
        assert run["budget_kept"] is True
        policy = load_policy(out / run["policy_file"])
        assert policy.key == run["policy_key"]
        assert policy.meta["search"]["searcher"] == run["searcher"]
        assert policy.meta["search"]["seed"] == run["seed"]
    # the oracle is the best under each budget: no searcher beats it
    rows = results["summary"]
    for row in rows:
        assert row["regret_mean"] >= -1e-12, row
        if row["oracle"]:
            assert row["regret_mean"] == 0
    # deterministic searchers ran once, random three times per budget
    counts = {(r["label"], r["budget"]): r["ok"] for r in rows}
    assert counts[("uniform", "size=3bit")] == 1
    assert counts[("exhaustive", "size=3bit")] == 1
    assert counts[("random", "size=3bit")] == 3
    random_row = next(r for r in rows if r["label"] == "random" and r["budget"] == "size=2.5bit")
    assert random_row["metric_std"] is not None and random_row["metric_min"] <= random_row["metric_max"]
    # the oracle's frontier is there for the plot
    assert any(r.get("frontier") for r in runs if r["oracle"])
    report = (out / "report.md").read_text()
    assert "## size=2.5bit" in report and "## size=4bit + bops=3bit" in report
    assert "| `random` | 3 |" in report
    assert "| `uniform` | 1 (deterministic) |" in report
    assert "`exhaustive` (oracle)" in report
    assert "regret to oracle" in report and "budget kept" in report
    table = render_table(results)
    assert table.count("\n| `") == 3 and "size=2.5bit" in table


def test_a_lower_is_better_metric_through_the_bench(tmp_path):
    suite = write_suite(tmp_path, """\
        name = "perplexity"
        problem = "bench_problems:synthetic_perplexity"
        seeds = [0, 1, 2]
        budgets = ["size=2.5bit", "size=3bit"]
        oracle = true

        [space]
        weight_bits = [2, 3, 4, 8]
        act_bits = 8

        [[searchers]]
        name = "uniform"

        [[searchers]]
        name = "random"
        settings = { samples = 6 }
        """)
    run_bench(suite, tmp_path / "out", progress=False)
    results = load_results(tmp_path / "out")
    runs = results["runs"]
    assert all(r["status"] == "ok" and r["objective"] == "perplexity" and r["higher_is_better"] is False
               for r in runs)
    for run in runs:  # each searcher returned the lowest perplexity it saw; its score is minus that
        assert run["score"] == -run["metric"]
        values = [v for _, v in run["progress"]]
        assert values == sorted(values, reverse=True)  # best so far goes down
    for row in results["summary"]:
        assert row["regret_mean"] >= -1e-12, row  # nobody beats the oracle, which has the lowest value
        if row["oracle"]:
            assert row["regret_mean"] == 0
    oracle = {r["budget_label"]: r for r in runs if r["oracle"]}
    for run in runs:
        assert run["metric"] >= oracle[run["budget_label"]]["metric"] - 1e-12
    frontier = next(r["frontier"] for r in runs if r["oracle"])
    assert [v for _, v in frontier] == sorted((v for _, v in frontier), reverse=True)  # cheaper is worse
    assert any(row["regret_mean"] > 0 for row in results["summary"])  # the signs are tested, not all zeros
    report = (tmp_path / "out" / "report.md").read_text()
    assert "perplexity (lower is better) mean ± std" in report
    assert "perplexity (lower is better) of the quantized model" in render_table(results)
    assert (tmp_path / "out" / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_a_tabular_problem_file_is_a_suite_problem(tmp_path):
    from bitsearch.tabular import write_problem

    from helpers import small_problem

    write_problem(small_problem(()), tmp_path / "small.json")
    suite = write_suite(tmp_path, """\
        problem = "small.json"
        seeds = [0, 1, 2]
        budgets = ["size=2.5bit", "size=3bit"]
        oracle = true

        [[searchers]]
        name = "uniform"

        [[searchers]]
        name = "random"
        settings = { samples = 5 }
        """)
    results = run_bench(suite, tmp_path / "out", progress=False).results
    assert all(r["status"] == "ok" for r in results["runs"]) and len(results["runs"]) == 2 * 5
    for run in results["runs"]:
        assert run["objective"] == "sensitivity" and run["higher_is_better"] is False
    for row in results["summary"]:
        assert row["regret_mean"] >= 0, row  # lower is better: regret = searcher - oracle
    assert "problem file" in (tmp_path / "out" / "report.md").read_text()
    # a changed file is another problem: its runs get new keys
    before = {r.key for r in plan_runs(load_suite(suite))}
    write_problem(small_problem((), seed=1), tmp_path / "small.json")
    assert not before & {r.key for r in plan_runs(load_suite(suite))}
    with pytest.raises(UserInputError, match="sets its own widths"):
        parse_suite({**BASE, "problem": str(tmp_path / "small.json"), "space": {"weight_bits": [2, 4]}}, "s.toml")


def test_finished_bench_refuses_to_overwrite_and_resume_runs_nothing(tmp_path):
    suite = synthetic_suite(tmp_path)
    run_bench(suite, tmp_path / "out", progress=False, plots=False)
    with pytest.raises(UserInputError, match="--resume"):
        run_bench(suite, tmp_path / "out", progress=False, plots=False)
    before = (tmp_path / "out" / "results.jsonl").read_bytes()
    outcome = run_bench(suite, tmp_path / "out", resume=True, progress=False, plots=False)
    assert outcome.ran == 0 and outcome.resumed == 15
    assert (tmp_path / "out" / "results.jsonl").read_bytes() == before


def test_only_keeps_the_oracle_and_the_report_keeps_recorded_runs(tmp_path):
    suite = synthetic_suite(tmp_path)
    first = run_bench(suite, tmp_path / "out", only=["uniform"], progress=False, plots=False)
    assert {r["label"] for r in first.results["runs"]} == {"uniform", "exhaustive"}
    second = run_bench(suite, tmp_path / "out", only=["random"], resume=True, progress=False, plots=False)
    assert second.ran == 9 and second.resumed == 3  # exhaustive already recorded
    assert {r["label"] for r in second.results["runs"]} == {"uniform", "random", "exhaustive"}
    with pytest.raises(UserInputError, match="not in suite"):
        run_bench(suite, tmp_path / "out", only=["ilp"], resume=True, progress=False, plots=False)


def test_table_fills_a_readme_block(tmp_path):
    run_bench(synthetic_suite(tmp_path), tmp_path / "out", progress=False, plots=False)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- bench-table:synthetic -->\nold\n<!-- /bench-table:synthetic -->\ntail\n")
    proc = subprocess.run([sys.executable, "-m", "bitsearch.cli", "bench", "table", str(tmp_path / "out"),
                           "--readme", str(readme)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text()
    assert "old" not in text and "| `random` |" in text and text.endswith("<!-- /bench-table:synthetic -->\ntail\n")
    with pytest.raises(UserInputError, match="no block"):
        replace_readme_block(readme, "other", "x")


# --- resume after SIGKILL ---------------------------------------------------------------------------
def _bench_process(suite, out, env, *extra):
    return subprocess.Popen([sys.executable, "-m", "bitsearch.cli", "bench", str(suite), "--out", str(out),
                             "--no-plots", *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def _kill_when(proc, journal_path, lines, deadline_s=60.0):
    """SIGKILL ``proc`` (and its group) once the journal has ``lines`` complete lines."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and proc.poll() is None:
        if journal_path.exists() and journal_path.read_bytes().count(b"\n") >= lines:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the bench finished before it could be killed: " + proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_killed_bench_resumes_without_repeating_or_losing_a_run(tmp_path):
    suite = synthetic_suite(tmp_path, samples=6, shared_cache=False)
    reference = run_bench(suite, tmp_path / "reference", progress=False, plots=False).results
    planned = len(reference["runs"])

    out = tmp_path / "out"
    journal_path = out / "results.jsonl"
    log = tmp_path / "evaluations.log"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "BITSEARCH_TEST_EVAL_DELAY": "0.02",
           "BITSEARCH_TEST_EVAL_LOG": str(log)}
    # kill once after three runs, then a resumed bench at an arbitrary moment (maybe mid-write)
    _kill_when(_bench_process(suite, out, env), journal_path, 3)
    after_first = journal_path.read_bytes()
    done_first = Journal(journal_path).latest()
    assert 3 <= len(done_first) < planned
    proc = _bench_process(suite, out, env, "--resume")
    time.sleep(0.8)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    after_second = journal_path.read_bytes()
    done_second = Journal(journal_path).latest()
    # what was journaled is never rewritten: only appended to (a torn line at worst)
    complete_first = after_first[:after_first.rfind(b"\n") + 1]
    assert after_second.startswith(complete_first)
    assert set(done_first) <= set(done_second)
    # and a kill in the middle of writing a line leaves a torn line, which must be cut off
    with open(journal_path, "ab") as handle:
        handle.write(after_first[:after_first.find(b"\n") // 2])

    # finish in this process, counting its evaluations
    os.environ["BITSEARCH_TEST_EVAL_LOG"] = str(log)
    try:
        outcome = run_bench(suite, out, resume=True, progress=False, plots=False)
    finally:
        del os.environ["BITSEARCH_TEST_EVAL_LOG"]
    assert outcome.resumed == len(done_second)
    assert outcome.ran == planned - len(done_second)

    final = journal_path.read_bytes()
    complete_second = after_second[:after_second.rfind(b"\n") + 1]
    assert final.startswith(complete_second)
    records = Journal(journal_path).records()
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == planned == final.count(b"\n"), "a run was repeated or lost"
    # no finished run ran again: this process evaluated exactly what the missing runs needed
    mine = [line for line in log.read_text().splitlines() if line.split()[0] == str(os.getpid())]
    fresh_after = sum(r["fresh_evaluations"] for r in records if r["key"] not in done_second)
    assert len(mine) == fresh_after
    assert sum(r["evaluations"] for r in records) == sum(r["evaluations"] for r in reference["runs"])
    # and the results are the uninterrupted bench's
    assert comparable(load_results(out)) == comparable(reference)
    for run in load_results(out)["runs"]:
        assert load_policy(out / run["policy_file"]).key == run["policy_key"]


def test_journal_ignores_and_cuts_a_torn_line(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    journal.append({"key": "a", "value": 1})
    journal.append({"key": "b", "value": 2})
    journal.close()
    with open(tmp_path / "j.jsonl", "ab") as handle:
        handle.write(b'{"key": "c", "val')
    assert [r["key"] for r in Journal(tmp_path / "j.jsonl").records()] == ["a", "b"]
    journal = Journal(tmp_path / "j.jsonl")
    journal.append({"key": "c", "value": 3})
    journal.append({"key": "a", "value": 4})
    journal.close()
    assert [r["key"] for r in journal.records()] == ["a", "b", "c", "a"]
    assert journal.latest()["a"]["value"] == 4
    assert (tmp_path / "j.jsonl").read_text().count("\n") == 4


# --- parallel backends ---------------------------------------------------------------------------
def test_local_processes_give_the_serial_results(tmp_path):
    suite = synthetic_suite(tmp_path)
    serial = run_bench(suite, tmp_path / "serial", progress=False, plots=False).results
    parallel = run_bench(suite, tmp_path / "parallel", jobs=2, progress=False, plots=False).results
    assert comparable(parallel) == comparable(serial)


def test_dask_local_cluster_gives_the_local_results(tmp_path):
    pytest.importorskip("distributed")
    suite = synthetic_suite(tmp_path)
    local = run_bench(suite, tmp_path / "local", progress=False, plots=False).results
    dask = run_bench(suite, tmp_path / "dask", scheduler="local", jobs=2, progress=False, plots=False).results
    assert comparable(dask) == comparable(local)
    assert len({r["worker"] for r in dask["runs"]} - {r["worker"] for r in local["runs"]}) >= 1


def test_bad_scheduler_address_is_a_user_error(tmp_path):
    pytest.importorskip("distributed")
    with pytest.raises(UserInputError, match="tcp://host"):
        run_bench(synthetic_suite(tmp_path), tmp_path / "o", scheduler="nowhere:1", progress=False)


# --- a real task ---------------------------------------------------------------------------------
def _task_available(name):
    try:
        from bitsearch.tasks import get_task

        get_task(name)
    except (ImportError, UserInputError, AttributeError):
        return False
    return True


@pytest.mark.timeout(900)
def test_tiny_suite_on_digits_cnn(tmp_path):
    if not _task_available("digits-cnn"):
        pytest.skip("the digits-cnn task has not landed")
    from bitsearch.tasks import get_task

    get_task("digits-cnn").trained_model(1.0)  # trained once per test session (cached), not timed
    suite = write_suite(tmp_path, """\
        task = "digits-cnn"
        seeds = [0, 1, 2]
        budgets = ["size=3bit", "size=5bit"]
        oracle = true

        [space]
        weight_bits = [2, 8]
        act_bits = 8

        [[searchers]]
        name = "uniform"

        [[searchers]]
        name = "random"
        settings = { samples = 3 }
        """)
    start = time.monotonic()
    outcome = run_bench(suite, tmp_path / "out", progress=False)
    seconds = time.monotonic() - start
    assert outcome.failed == 0 and outcome.skipped == 0
    results = outcome.results
    assert len(results["runs"]) == 2 * (1 + 3 + 1)
    for run in results["runs"]:
        assert run["status"] == "ok"
        assert run["objective"] == "top1" and 0.0 <= run["metric"] <= 1.0
        assert run["budget_kept"]
        assert run["metrics"].get("metric_kind")
        assert load_policy(tmp_path / "out" / run["policy_file"]).meta["model"]["name"] == "digits-cnn"
    for row in results["summary"]:
        assert row["regret_mean"] >= -1e-9, row
    # uniform widths at 5 bits of a {2, 8} space: all 2-bit; the oracle does better or equal
    uniform = next(r for r in results["summary"] if r["label"] == "uniform" and r["budget"] == "size=5bit")
    assert uniform["best_policy"] == "2/2/2/2"
    report = (tmp_path / "out" / "report.md").read_text()
    for needle in ("task digits-cnn", "## size=3bit", "## size=5bit", "top1 mean ± std", "`exhaustive` (oracle)",
                   "| `random` | 3 |", "| `uniform` | 1 (deterministic) |"):
        assert needle in report, needle
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 0
    assert seconds < 60, f"the tiny digits-cnn suite took {seconds:.0f} s"


def test_import_bitsearch_bench_is_light():
    code = ("import sys, bitsearch, bitsearch.bench, bitsearch.journal, bitsearch.cli, bitsearch.commands.bench\n"
            "heavy = [m for m in ('torch', 'dask', 'distributed', 'matplotlib', 'tqdm') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
