"""The proxy validation (issue #15): rank correlations against scipy, the policies it draws,
and ``bitsearch inspect --validate N`` end to end on a small built-in task."""

import json
import math

import numpy as np
import pytest

from bitsearch import validation
from bitsearch.cli import main
from bitsearch.errors import UserInputError
from bitsearch.testing import small_problem

from helpers import assert_one_line_error as one_line

TASK = "semicircles-mlp"

# fixed data: distinct values, ties on one side, ties on both, a run of equal values, reversed
PAIRS = [
    ([0.1, 0.4, 0.2, 0.9, 0.5, 0.3], [1.0, 3.0, 2.0, 6.0, 5.0, 4.0]),
    ([1, 2, 2, 3, 3, 3, 4, 5], [2, 1, 4, 3, 3, 6, 8, 7]),
    ([1, 1, 2, 2, 3, 3, 4, 4, 5, 5], [5, 4, 4, 3, 3, 2, 2, 1, 1, 0]),
    ([0.5, 0.5, 0.5, 0.1, 0.9, 0.2, 0.7], [3, 1, 2, 2, 9, 0, 9]),
    ([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4]),
]


@pytest.mark.parametrize("x, y", PAIRS)
def test_rank_correlations_agree_with_scipy(x, y):
    stats = pytest.importorskip("scipy.stats")
    np.testing.assert_allclose(validation.rankdata(x), stats.rankdata(x))
    assert validation.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert validation.kendall(x, y) == pytest.approx(stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)
    # chunked pair counting gives the same tau
    assert validation.kendall(x, y, chunk=2) == pytest.approx(validation.kendall(x, y), abs=1e-15)


def test_rank_correlations_on_random_data_with_many_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, 300).astype(float)
    y = x + rng.integers(0, 4, 300)
    assert validation.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert validation.kendall(x, y, chunk=37) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_undefined_and_bad_correlations():
    assert validation.spearman([1, 1, 1], [1, 2, 3]) is None
    assert validation.kendall([1, 2, 3], [4, 4, 4]) is None
    assert validation.spearman([1], [2]) is None
    with pytest.raises(UserInputError, match="3 values against 2"):
        validation.spearman([1, 2, 3], [1, 2])
    with pytest.raises(UserInputError, match="not finite"):
        validation.kendall([1, math.nan], [1, 2])


def test_warnings_below_the_threshold_only():
    assert validation.warning("hessian", 0.95) is None
    assert validation.warning("hessian", validation.WARN_BELOW) is None
    low = validation.warning("hessian", 0.45)
    assert low.startswith("warning: hessian") and "0.45 < 0.7" in low
    assert "undefined" in validation.warning("bitgrad", None)


# --- drawing policies ---------------------------------------------------------------------------
def test_the_policies_drawn_keep_every_budget():
    problem = small_problem(("size=3bit", "bops=4bit"))
    total = problem.space.num_policies()
    every, how = validation.sample_policies(problem, total, seed=0)  # more asked than fit: every one in budget
    assert how.startswith(f"every one of the {len(every)} policies within the budgets (of {total})")
    assert 3 <= len(every) < total and all(problem.fits(p) for p in every)
    assert len({p.key for p in every}) == len(every)
    some, how = validation.sample_policies(problem, 10, seed=1)
    assert len(some) == 10 and {p.key for p in some} <= {p.key for p in every} and "seed 1" in how
    assert [p.key for p in validation.sample_policies(problem, 10, seed=1)[0]] == [p.key for p in some]
    assert [p.key for p in validation.sample_policies(problem, 10, seed=2)[0]] != [p.key for p in some]
    # above the enumeration limit: the random searcher's sampler, distinct policies, every budget kept
    drawn, how = validation.sample_policies(problem, 12, seed=0, enumerate_limit=0)
    assert len(drawn) == 12 and len({p.key for p in drawn}) == 12 and all(problem.fits(p) for p in drawn)
    assert "sampler" in how


def test_kernel_wise_policies_are_sampled_within_the_budget():
    problem = small_problem(("size=2.5bit",), granularity="kernel")
    drawn, how = validation.sample_policies(problem, 20, seed=0)
    assert len(drawn) == 20 and all(problem.fits(p) for p in drawn) and "sampler" in how


def test_the_validation_needs_a_model_and_three_policies():
    problem = small_problem()
    with pytest.raises(UserInputError, match="3 or more"):
        validation.sample_policies(problem, 2)
    with pytest.raises(UserInputError, match="model evaluator"):
        validation.validate(problem, 5)
    with pytest.raises(UserInputError, match="unknown method.*hesian"):
        validation.validate(problem, 5, methods=["hesian"])


def test_render_shows_a_warning_line_per_low_method():
    row = {"spearman": 0.9, "kendall": 0.8, "spearman_metric": 0.85, "kendall_metric": 0.7, "warning": None}
    low = dict(row, spearman=0.4, warning=validation.warning("hessian", 0.4))
    result = {"policies": 5, "drawn": "every one", "samples": 64, "objective": "top1",
              "methods": {"pairwise": row, "hessian": low}, "loss_vs_metric": {"spearman": 0.9, "kendall": 0.8}}
    for markdown in (True, False):
        lines = validation.render_validation(result, markdown=markdown)
        warned = [line for line in lines if "warning:" in line]
        assert len(warned) == 1 and "hessian" in warned[0]
        assert any("+0.40" in line and "hessian" in line for line in lines)


# --- the command --------------------------------------------------------------------------------
def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors (a bad --validate)
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_validate_json_and_text(capsys, one_thread):
    args = ["inspect", "--task", TASK, "--validate", "12", "--budget", "size=4bit", "--seed", "1"]
    code, out, _ = run(capsys, *args, "--json")
    assert code == 0
    result = json.loads(out)["validation"]
    assert result["schema"] == "bitsearch-validation" and result["budgets"] == ["size=4bit"]
    assert result["policies"] == 12 == len(result["measured"]) and result["samples"] > 0
    assert list(result["methods"]) == ["hessian", "bitgrad", "empirical", "pairwise"]
    for method, row in result["methods"].items():
        assert len(row["predicted"]) == 12
        for key in ("spearman", "kendall", "spearman_metric", "kendall_metric"):
            assert row[key] is None or -1.0 <= row[key] <= 1.0, (method, key)
        assert (row["warning"] is not None) == (row["spearman"] is None or row["spearman"] < 0.7), method
    assert result["methods"]["pairwise"]["forward_passes"] > 0
    # the correlations are those of the numbers reported
    measured = [m["loss_change"] for m in result["measured"]]
    for row in result["methods"].values():
        assert row["spearman"] == pytest.approx(validation.spearman(row["predicted"], measured))
    # the tables are now in the on-disk cache; the text output draws the same policies
    from bitsearch import sensitivity
    from bitsearch.build import space_for_task
    from bitsearch.tasks import get_task

    space = space_for_task(get_task(TASK))
    assert all(sensitivity.cache_path(TASK, space, method).exists() for method in result["methods"])
    code, out, _ = run(capsys, *args)
    assert code == 0 and "proxy validation: 12 policies" in out
    for method, row in result["methods"].items():
        line = next(l for l in out.splitlines() if l.startswith(method + " "))
        assert f"{row['spearman']:+.2f}" in line
        assert (f"warning: {method} " in out) == (row["warning"] is not None)


@pytest.mark.parametrize("argv, needle", [
    (["--validate", "2"], "3 or more"),
    (["--validate", "many"], "3 or more"),
    (["--budget", "size=4bit"], "--budget goes with --validate N"),
    (["--methods", "hessian", "--seed", "2"], "--methods and --seed go with --validate N"),
    (["--validate", "5", "--methods", "hessian,hesian"], "unknown method(s) hesian"),
    (["--validate", "5", "--budget", "size=4bjt"], "unit 'bjt'"),
    (["--validate", "5", "--budget", "size=1bit"], "cannot be met"),
])
def test_inspect_validate_bad_input(capsys, argv, needle):
    code, _, err = run(capsys, "inspect", "--task", TASK, *argv)
    one_line(code, err, needle)


# --- in a bench ---------------------------------------------------------------------------------
BENCH_SUITE = """\
name = "validated"
task = "semicircles-mlp"
seeds = [0, 1, 2]
budgets = ["size=4bit", ["size=5bit", "bops=5bit"]]
validate = 6

[space]
weight_bits = [2, 3, 8]
act_bits = 8

[[searchers]]
name = "uniform"

[[searchers]]
name = "random"
settings = { samples = 2 }
"""


def test_a_bench_with_validate_reports_it_after_each_budgets_table(tmp_path, one_thread):
    from bitsearch.bench import load_results, run_bench

    suite = tmp_path / "suite.toml"
    suite.write_text(BENCH_SUITE)
    outcome = run_bench(suite, tmp_path / "out", progress=False, plots=False)
    assert outcome.failed == 0 and outcome.validations == 2
    results = load_results(tmp_path / "out")
    assert results["suite"]["validate"] == 6
    found = results["validation"]
    assert [v["budget_label"] for v in found] == ["size=4bit", "size=5bit + bops=5bit"]
    for record in found:
        assert record["status"] == "ok" and record["kind"] == "validation"
        result = record["validation"]
        assert result["policies"] == 6 and result["budgets"] == record["budgets"] and result["seed"] == 0
        assert set(result["methods"]) == {"hessian", "bitgrad", "empirical", "pairwise"}
    report = (tmp_path / "out" / "report.md").read_text()
    sections = report.split("\n## ")[1:]
    assert [s.splitlines()[0].split(" (")[0] for s in sections] == ["size=4bit", "size=5bit + bops=5bit"]
    for section, record in zip(sections, found):
        table_end = section.index("| `random` |")
        validation_at = section.index("Proxy validation (6 policies")
        assert table_end < validation_at  # after the regret table of its budget set
        for method, row in record["validation"]["methods"].items():
            line = next(l for l in section.splitlines() if l.startswith(f"| `{method}` |"))
            assert f"{row['spearman']:+.2f}" in line
            assert (f"warning: {method} " in section) == (row["warning"] is not None)
    assert "Proxy validation (the suite's `validate = N`)" in report
    # resumed: nothing measured again, the same report
    again = run_bench(suite, tmp_path / "out", resume=True, progress=False, plots=False)
    assert again.ran == 0 and again.validations == 0
    assert (tmp_path / "out" / "report.md").read_text() == report


def test_a_bench_validation_without_a_model_is_skipped_with_its_reason(tmp_path):
    from bitsearch.bench import run_bench

    suite = tmp_path / "suite.toml"
    suite.write_text('name = "tables"\nproblem = "bench_problems:synthetic"\nseeds = [0, 1, 2]\n'
                     'budgets = ["size=3bit"]\nvalidate = 5\n\n[[searchers]]\nname = "uniform"\n')
    outcome = run_bench(suite, tmp_path / "out", progress=False, plots=False)
    assert outcome.failed == 0 and outcome.validations == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Proxy validation: skipped: the proxy validation (it measures losses) needs a model evaluator" in report


@pytest.mark.parametrize("value, needle", [("2", "validate = 2: the proxy validation ranks 3 or more policies"),
                                           ('"many"', "'validate' must be a number of policies")])
def test_a_bad_validate_key_is_one_line(tmp_path, capsys, value, needle):
    suite = tmp_path / "suite.toml"
    suite.write_text(BENCH_SUITE.replace("validate = 6", f"validate = {value}"))
    code, _, err = run(capsys, "bench", suite, "--out", tmp_path / "out")
    one_line(code, err, needle)
    assert not (tmp_path / "out").exists()
