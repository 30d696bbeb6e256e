"""The parts of ``bitsearch.bench``: the suite schema and its help, the frozen plan, the problem
cache, and the ``bitsearch bench table|report`` forms of the command."""

from __future__ import annotations

import json
import pickle
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from bitsearch import schemas
from bitsearch.bench import ProblemCache, Unit, load_suite, parse_suite, plan_runs, run_bench, suite_format
from bitsearch.bench.execute import CountingEvaluator
from bitsearch.bench.plan import make_units
from bitsearch.bench.suite import schema_path
from bitsearch.cli import main
from bitsearch.errors import UserInputError

from helpers import assert_one_line_error
from test_bench import synthetic_suite

TESTS = Path(__file__).parent
ROOT = TESTS.parent
BASE = {"problem": "bench_problems:synthetic", "seeds": [0, 1, 2], "budgets": ["size=3bit", "size=4bit"],
        "searchers": [{"name": "uniform"}, {"name": "random", "settings": {"samples": 4}}]}


# --- the schema and the help ------------------------------------------------------------------------
def _keys(node):
    for key, sub in node.get("properties", {}).items():
        yield key, sub
        for inner in (sub, sub.get("items") or {}):
            yield from _keys(inner)


def test_the_schema_is_valid_and_the_help_shows_every_key():
    import jsonschema

    schema = json.loads(schema_path().read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    text = suite_format()
    for key, node in _keys(schema):
        if node.get("properties") or node.get("items", {}).get("properties"):
            assert f"[{key}]" in text, key  # a table ([space]) or an array of tables ([[searchers]])
        else:
            assert f"{key} = " in text, key
    assert max(len(line) for line in text.splitlines()) <= 110


def test_every_committed_suite_conforms():
    suites = sorted((ROOT / "benchmarks").glob("*.toml"))
    assert len(suites) >= 7
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        for path in suites:
            suite = load_suite(path)
            assert plan_runs(suite, check=False), path
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_structural_problems_are_named_together_on_one_line():
    data = {**BASE, "seeds": [0, 0], "oracle": "yes", "space": {"width_mult": -1, "colour": "red"}}
    with pytest.raises(UserInputError) as info:
        parse_suite(data, "s.toml")
    text = str(info.value)
    assert text.startswith("s.toml: 5 problems: ") and "\n" not in text
    for needle in ("'oracle' must be true or false", "give 3 or more seeds", "repeats a seed",
                   "unknown key(s) ['colour'] in [space]", "[space] width_mult must be a positive number, not -1"):
        assert needle in text, needle


def test_schema_messages_fall_back_to_the_tabular_wording():
    schema = {"type": "object", "required": ["layers"], "additionalProperties": False,
              "properties": {"layers": {"type": "array", "items": {"type": "object", "properties": {
                  "name": {"type": "string"}, "params": {"type": "integer"}}}}}}
    found = schemas.problems({"layers": [{"name": "conv1", "params": "x"}], "extra": 1}, schema)
    assert found == ["unknown fields ('extra' was unexpected)", "layers[0] (conv1).params: 'x' is not of type 'integer'"]
    assert schemas.problems({}, schema) == ["'layers' is missing"]
    assert schemas.join("f.json", found) == f"f.json: 2 problems: {found[0]}; {found[1]}"


def test_a_searcher_may_name_its_own_sensitivity():
    data = {**BASE, "task": "digits-cnn", "searchers": [
        {"name": "ilp", "label": "ilp (bitgrad)", "sensitivity": "bitgrad"}, {"name": "ilp"}]}
    data.pop("problem")
    runs = plan_runs(parse_suite(data, "s.toml"), check=False)
    assert {(r.label, r.sensitivity) for r in runs} == {("ilp (bitgrad)", "bitgrad"), ("ilp", "hessian")}
    assert len({r.key for r in runs}) == len(runs)  # another table: other runs
    with pytest.raises(UserInputError, match="unknown sensitivity method 'fisher'"):
        parse_suite({**data, "searchers": [{"name": "ilp", "sensitivity": "fisher"}]}, "s.toml")


# --- the plan ---------------------------------------------------------------------------------------
def test_runs_units_and_specs_are_frozen_and_picklable(tmp_path):
    suite = load_suite(synthetic_suite(tmp_path))
    runs = plan_runs(suite)
    units = make_units(suite, runs)
    assert all(isinstance(u, Unit) for u in units)
    assert pickle.loads(pickle.dumps(units)) == units
    with pytest.raises(FrozenInstanceError):
        runs[0].seed = 5
    with pytest.raises(FrozenInstanceError):
        units[0].problem.progress = True
    # the oracle's runs of a variant form one unit, first; every other run is a unit of its own
    assert [r.label for r in units[0].runs] == ["exhaustive"] * 3
    assert all(len(u.runs) == 1 for u in units[1:]) and len(units) == 1 + len(runs) - 3


# --- the problem cache --------------------------------------------------------------------------------
def _spec(**scoring):
    data = {**BASE, **({"scoring": scoring} if scoring else {})}
    suite = parse_suite(data, str(TESTS / "suite.toml"))
    runs = plan_runs(suite)
    return make_units(suite, runs)[0].problem, runs


def test_the_cache_wraps_problems_and_never_changes_what_was_built():
    from bitsearch.bench.execute import build_problem

    spec, _ = _spec()
    cache = ProblemCache()
    three, four = cache.problem(spec, ("size=3bit",)), cache.problem(spec, ("size=4bit",))
    assert cache.problem(spec, ("size=3bit",)) is three
    assert isinstance(three.evaluator, CountingEvaluator) and three.evaluator is four.evaluator
    built = build_problem(spec, ("size=3bit",))
    assert not isinstance(built.evaluator, CountingEvaluator)
    # a policy scored under one budget set is not scored again under another
    from bitsearch.policy import Policy

    policy = Policy.uniform(three.space, 3)
    three.evaluate(policy)
    four.evaluate(policy)
    assert three.evaluator.fresh == 1
    # another cache shares nothing
    assert ProblemCache().problem(spec, ("size=3bit",)).evaluator is not three.evaluator


def test_without_shared_cache_every_run_gets_a_fresh_problem():
    spec, _ = _spec(shared_cache=False)
    cache = ProblemCache()
    first, second = cache.problem(spec, ("size=3bit",)), cache.problem(spec, ("size=3bit",))
    assert first is not second and first.evaluator is not second.evaluator
    from bitsearch.policy import Policy

    policy = Policy.uniform(first.space, 3)
    first.evaluate(policy)
    first.evaluate(policy)
    assert first.evaluator.fresh == 2  # counted, not cached


# --- bitsearch bench table | report -----------------------------------------------------------------
def test_bench_table_and_report_forms(tmp_path, capsys):
    suite = synthetic_suite(tmp_path)
    run_bench(suite, tmp_path / "out", progress=False, plots=False)
    assert main(["bench", "table", str(tmp_path / "out")]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("| searcher | size=2.5bit |") and "Generated by `bitsearch bench table`" in out
    (tmp_path / "out" / "report.md").unlink()
    assert main(["bench", "report", str(suite), str(tmp_path / "out"), "--no-plots"]) == 0
    assert "## size=3bit" in (tmp_path / "out" / "report.md").read_text()
    capsys.readouterr()
    for argv, needle in ((["bench", "table"], "expected bitsearch bench table DIR"),
                         (["bench", "report", str(suite)], "expected bitsearch bench report SUITE DIR"),
                         (["bench", str(suite), str(suite)], "expected bitsearch bench SUITE"),
                         (["bench", "table", str(tmp_path / "out"), "--resume"], "--resume goes with"),
                         (["bench", str(suite), "--readme", "R.md"], "--readme goes with bitsearch bench table"),
                         (["bench", "table", str(tmp_path / "nowhere")], "no such file")):
        code = main(argv)
        _, err = capsys.readouterr()
        assert_one_line_error(code, err, needle)



def test_forward_passes_get_a_column_only_where_a_run_reports_them(tmp_path):
    from bitsearch.bench.report import render_report, summarize

    out = tmp_path / "out"
    run_bench(synthetic_suite(tmp_path, samples=2), out, progress=False, plots=False)
    results = json.loads((out / "results.json").read_text())
    assert "forward passes" not in render_report(results)
    suite = load_suite(tmp_path / "suite.toml")
    runs = results["runs"]
    for run in runs:
        if run["label"] == "uniform":
            run["forward_passes"] = 1234
    results["summary"] = summarize(suite, runs)
    report = render_report(results)
    header = next(line for line in report.splitlines() if line.startswith("| searcher |"))
    assert "| forward passes |" in header
    uniform = next(line for line in report.splitlines() if line.startswith("| `uniform` |"))
    random_row = next(line for line in report.splitlines() if line.startswith("| `random` |"))
    assert "| 1,234 |" in uniform and "| – |" in random_row
    assert uniform.count("|") == random_row.count("|") == header.count("|")
