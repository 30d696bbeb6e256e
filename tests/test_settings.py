"""Typed searcher settings: one frozen dataclass per searcher, checked once, at construction."""

from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError, dataclass

import pytest

from bitsearch import searchers
from bitsearch.cli import main
from bitsearch.errors import SearcherSettingsError, SearcherUnsupportedError, UserInputError
from bitsearch.search import check_seed
from bitsearch.settings import SearcherSettings, build_settings, parse_value, setting
from bitsearch.testing import check_settings, invalid_settings

from helpers import assert_one_line_error, small_problem


@dataclass(frozen=True, kw_only=True)
class Example(SearcherSettings):
    count: int = setting(3, ge=1, help="how many")
    rate: float = setting(0.5, gt=0, le=1, help="a rate in (0, 1]")
    limit: float | None = setting(None, gt=0, help="seconds, or None")
    mode: str = setting("fast", choices=("fast", "exact"), help="which path")
    sizes: tuple[int, ...] = setting((4, 4), ge=1, min_items=1, help="layer sizes")
    weights: dict[str, float] = setting({}, ge=0, help="name -> weight")
    verbose: bool = setting(False, help="talk")
    name: str | None = setting(None, help="a name")


# --- the machinery ---------------------------------------------------------------------------------
def test_values_are_checked_and_made_canonical():
    s = Example(count=5, rate=1, mode="EXACT", sizes=[8, 2], weights={"size": 2})
    assert (s.count, s.rate, s.mode, s.sizes, s.weights) == (5, 1.0, "exact", (8, 2), {"size": 2.0})
    assert isinstance(s.rate, float)
    with pytest.raises(FrozenInstanceError):
        s.count = 2
    assert s.to_dict() == {"count": 5, "rate": 1.0, "limit": None, "mode": "exact", "sizes": [8, 2],
                           "weights": {"size": 2.0}, "verbose": False, "name": None}
    assert json.loads(json.dumps(s.to_dict())) == s.to_dict()
    assert Example(**s.to_dict()) == s
    assert s.replace(count=9).count == 9 and s.count == 5


@pytest.mark.parametrize("field, value, words", [
    ("count", 2.5, "count must be an integer >= 1 (got 2.5)"),
    ("count", True, "count must be an integer >= 1 (got True)"),
    ("count", 0, "count must be an integer >= 1 (got 0)"),
    ("count", "3", "count must be an integer >= 1 (got '3')"),
    ("rate", math.nan, "rate must be a finite number in (0, 1] (got nan)"),
    ("rate", math.inf, "rate must be a finite number in (0, 1] (got inf)"),
    ("rate", 0, "rate must be a finite number in (0, 1] (got 0)"),
    ("limit", -1.0, "limit must be a finite number > 0 or None (got -1.0)"),
    ("mode", "slow", "mode must be one of fast, exact (got 'slow')"),
    ("sizes", [], "sizes must be a list of integers >= 1 (at least 1) (got [])"),
    ("sizes", [4, 0], "sizes must be a list of integers >= 1 (at least 1) (got [4, 0])"),
    ("weights", {"size": -1}, "weights must be a table of names to finite numbers >= 0"),
    ("verbose", 1, "verbose must be true or false (got 1)"),
])
def test_each_bad_value_is_named_in_one_line(field, value, words):
    with pytest.raises(SearcherSettingsError) as info:
        Example(**{field: value})
    assert words in str(info.value) and "\n" not in str(info.value)
    assert info.value.problems == [str(info.value).split(": ", 1)[1]]


def test_every_problem_is_named_at_once():
    with pytest.raises(SearcherSettingsError) as info:
        Example(count=0, rate=2.0, mode="x")
    assert len(info.value.problems) == 3
    assert str(info.value).startswith("Example: 3 problems: count must be")


def test_unknown_names_suggest_the_close_one():
    with pytest.raises(SearcherSettingsError, match=r"has no settings named 'cuont' \(did you mean 'count'\?\)"):
        build_settings(Example, {"cuont": 3})


@pytest.mark.parametrize("field, text, value", [
    ("count", "7", 7), ("rate", "0.25", 0.25), ("limit", "none", None), ("limit", "30", 30.0),
    ("mode", "exact", "exact"), ("sizes", "64,32", (64, 32)), ("sizes", "[64, 32]", (64, 32)),
    ("weights", '{"size": 1.5}', {"size": 1.5}), ("weights", "size:1.5,bops:2", {"size": 1.5, "bops": 2.0}),
    ("verbose", "true", True), ("verbose", "off", False), ("name", '"a b"', "a b"), ("name", "null", None),
])
def test_text_parses_by_field_type(field, text, value):
    assert parse_value(Example, field, text) == value


@pytest.mark.parametrize("field, text", [("count", "abc"), ("count", "2.5"), ("count", "1e3"), ("rate", "fast"),
                                         ("verbose", "maybe"), ("sizes", "a,b"), ("weights", "size")])
def test_text_that_does_not_parse_is_one_line(field, text):
    with pytest.raises(SearcherSettingsError) as info:
        parse_value(Example, field, text, source="searcher 'x'")
    message = str(info.value)
    assert message.startswith(f"searcher 'x': {field} must be ") and repr(text) in message


def test_describe_lists_type_default_help_and_range():
    rows = {r.name: r for r in Example.describe()}
    assert rows["count"].type == "int" and rows["count"].default == 3 and rows["count"].allowed == ">= 1"
    assert rows["rate"].allowed == "in (0, 1]" and rows["limit"].type == "float | None"
    assert rows["mode"].allowed == "one of fast, exact" and rows["sizes"].type == "tuple[int, ...]"
    assert rows["weights"].type == "dict[str, float]" and rows["verbose"].help == "talk"


def test_defaults_are_not_shared_between_instances():
    a, b = Example(), Example()
    assert a.weights == {} and a.weights is not b.weights


def test_checks_across_fields_run_once_the_fields_are_valid():
    @dataclass(frozen=True, kw_only=True)
    class Window(SearcherSettings):
        low: int = setting(1, ge=0, help="first")
        high: int = setting(4, ge=0, help="last")

        def check(self):
            if self.low > self.high:
                yield f"low ({self.low}) must not exceed high ({self.high})"

    assert Window(low=2, high=2).low == 2
    with pytest.raises(SearcherSettingsError, match=r"Window: low \(5\) must not exceed high \(4\)"):
        Window(low=5)
    with pytest.raises(SearcherSettingsError, match="low must be an integer >= 0") as info:
        Window(low=-1, high=-2)
    assert len(info.value.problems) == 2  # the field checks; the cross check waits for valid fields


def test_a_field_without_setting_is_a_declaration_error():
    @dataclass(frozen=True, kw_only=True)
    class Bad(SearcherSettings):
        count: int = 3

    with pytest.raises(TypeError, match="setting()"):
        Bad()


# --- every searcher, driven from its settings dataclass ----------------------------------------------
@pytest.mark.parametrize("name", searchers.available())
def test_every_searcher_rejects_bad_settings_at_construction(name):
    cls = searchers.get(name)
    check_settings(cls)  # every value of invalid_settings(cls.settings_class) refused, one line each
    assert len(invalid_settings(cls.settings_class)) >= 3 * len(cls.settings_class.names())


@pytest.mark.parametrize("name, settings, words", [
    ("haq", {"episodes": -1}, "searcher 'haq': episodes must be an integer >= 1 (got -1)"),
    ("autoq", {"zeta": 2.0}, "searcher 'autoq': zeta must be a finite number in [0, 1] (got 2.0)"),
    ("random", {"samples": 0}, "searcher 'random': samples must be an integer >= 1 (got 0)"),
    ("random", {"samples": 2.5}, "searcher 'random': samples must be an integer >= 1 (got 2.5)"),
    ("ilp", {"time_limit": -1}, "searcher 'ilp': time_limit must be a finite number > 0 or None (got -1)"),
    ("exhaustive", {"max_policies": 0}, "max_policies must be an integer >= 1"),
    ("uniform-width", {"width_mults": []}, "width_mults must be a list of finite numbers > 0 (at least 1)"),
    ("bmpq", {"resolve_every": 0}, "resolve_every must be an integer >= 1"),
    ("fracbits", {"bits_lr": 0}, "bits_lr must be a finite number > 0"),
])
def test_issue_examples_fail_at_construction(name, settings, words):
    with pytest.raises(SearcherSettingsError) as info:
        searchers.create(name, **settings)
    assert words in str(info.value)


def test_searchers_take_a_settings_instance_or_keywords():
    cls = searchers.get("random")
    config = cls.settings_class(samples=7)
    assert cls(config).config is config
    assert cls(config, samples=9).settings == {"samples": 9}
    assert cls({"samples": 8}).config.samples == 8
    with pytest.raises(SearcherSettingsError, match="takes RandomSettings"):
        cls(searchers.get("exhaustive").settings_class())


def test_the_policy_records_the_settings_as_plain_json():
    result = searchers.create("random", samples=3).search(small_problem(), seed=1)
    search = json.loads(result.policy.to_json())["search"]
    assert search["settings"] == {"samples": 3} == result.settings
    result = searchers.create("haq", episodes=2, warmup=1, net_arch=(8,), batch_size=4).search(small_problem())
    assert json.loads(result.policy.to_json())["search"]["settings"]["net_arch"] == [8]


def test_unsupported_problems_are_not_settings_errors():
    problem = small_problem(("size=3bit",), "kernel")
    with pytest.raises(SearcherUnsupportedError, match="more than max_policies"):
        searchers.create("exhaustive").search(problem)
    assert not issubclass(SearcherUnsupportedError, SearcherSettingsError)


@pytest.mark.parametrize("seed", [-1, 2 ** 32, 1.5, True, "3"])
def test_seeds_outside_the_generators_range_are_refused(seed):
    with pytest.raises(UserInputError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
        check_seed(seed)
    with pytest.raises(UserInputError, match="seed"):
        searchers.create("random", samples=2).search(small_problem(), seed=seed)
    assert check_seed(2 ** 32 - 1) == 2 ** 32 - 1 and check_seed(None) == 0


# --- the command line ---------------------------------------------------------------------------
@pytest.fixture
def problem_file(tmp_path):
    from bitsearch.tabular import write_problem

    path = tmp_path / "small.json"
    write_problem(small_problem(()), path)
    return path


@pytest.mark.parametrize("value", ["abc", "nan", "2.5", "0", "-3", "1e3", "true"])
def test_set_with_a_bad_value_is_one_line_and_writes_nothing(problem_file, tmp_path, capsys, value):
    out = tmp_path / "p.json"
    code = main(["search", "--problem", str(problem_file), "--searcher", "random", "--budget", "size=3bit",
                 "--set", f"samples={value}", "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, "samples must be an integer >= 1", value)
    assert not out.exists()


def test_a_bench_with_bad_settings_fails_before_its_first_run(tmp_path, capsys):
    from bitsearch.tabular import write_problem

    write_problem(small_problem(()), tmp_path / "small.json")
    suite = tmp_path / "suite.toml"
    suite.write_text('problem = "small.json"\nseeds = [0, 1, 2]\nbudgets = ["size=3bit"]\n\n'
                     '[[searchers]]\nname = "uniform"\n\n'
                     '[[searchers]]\nname = "random"\nsettings = { samples = 2.5 }\n', encoding="utf-8")
    code = main(["bench", str(suite), "--out", str(tmp_path / "out")])
    assert_one_line_error(code, capsys.readouterr().err, "samples must be an integer >= 1 (got 2.5)")
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_set_reads_each_value_as_its_settings_type(problem_file, tmp_path, capsys):
    out = tmp_path / "p.json"
    code = main(["search", "--problem", str(problem_file), "--searcher", "ilp", "--budget", "size=3bit",
                 "--set", "time_limit=none", "--set", "gap=1e-6", "--set", "verbose=false", "--set", "refine=1",
                 "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    settings = json.loads(out.read_text())["search"]["settings"]
    assert settings["time_limit"] is None and settings["gap"] == 1e-6 and settings["refine"] == 1
    for bad, words in (("temperature=3", "has no settings named 'temperature'"), ("solver", "expected KEY=VALUE"),
                       ("method=greedy", "method must be one of auto, mckp, lagrangian, mip (got 'greedy')"),
                       ("verbose=maybe", "verbose must be true or false (got 'maybe')")):
        code = main(["search", "--problem", str(problem_file), "--searcher", "ilp", "--budget", "size=3bit",
                     "--set", bad])
        assert_one_line_error(code, capsys.readouterr().err, words)


@pytest.mark.parametrize("flag, value, words", [
    ("--seed", "-1", "the seed must be an integer in [0, 2**32) (got '-1')"),
    ("--seed", str(2 ** 32), "the seed must be an integer in [0, 2**32)"),
    ("--seed", "1.5", "the seed must be an integer in [0, 2**32)"),
    ("--pin-first-last", "99", "bit widths [99] are outside 1..16"),
    ("--pin-first-last", "4,8", "give one width in bits"),
    ("--threads", "two", "--threads takes a whole number of threads (got 'two')"),
])
def test_bad_flags_are_one_line_before_any_work(problem_file, tmp_path, capsys, flag, value, words):
    out = tmp_path / "p.json"
    with pytest.raises(SystemExit) as info:
        main(["search", "--task", "mnist1d-cnn", "--searcher", "uniform", "--budget", "size=3bit", flag, value,
              "--out", str(out)])
    assert_one_line_error(info.value.code, capsys.readouterr().err, words)
    assert not out.exists()


def test_threads_beyond_the_cores_are_capped_with_a_warning(problem_file, capsys, monkeypatch):
    from bitsearch import progress
    from bitsearch.commands.common import threads_arg

    monkeypatch.setattr(progress, "available_cores", lambda: 2)
    assert threads_arg("10000") == 2
    assert capsys.readouterr().err == ("bitsearch: warning: --threads 10000 is more than the 2 CPU cores this "
                                       "process may use; using 2\n")
    assert threads_arg("2") == 2 and capsys.readouterr().err == ""
    code = main(["search", "--problem", str(problem_file), "--searcher", "uniform", "--budget", "size=3bit",
                 "--threads", "10000"])
    assert code == 0 and "using 2" in capsys.readouterr().err


def test_pins_outside_the_widths_are_refused_by_the_space():
    from bitsearch.errors import SpaceError
    from bitsearch.space import Pin

    from helpers import small_space

    with pytest.raises(SpaceError, match=r"pinned layer 'stem': weight bits 99 are not a width in 1\.\.32"):
        small_space(pinned=(("stem", Pin(99, 8)),))
    with pytest.raises(SpaceError, match="activation bits 0"):
        small_space(pinned=(("fc", Pin(8, 0)),))
    assert small_space(pinned=(("fc", Pin(8, None)),)).pins["fc"].act_bits is None


def test_a_suite_with_a_seed_out_of_range_or_a_wide_pin_is_refused(tmp_path, capsys):
    from bitsearch.tabular import write_problem

    write_problem(small_problem(()), tmp_path / "small.json")
    for head, words in (('seeds = [0, 1, -1]', "'seeds' must be a list of integers in [0, 2**32)"),
                        ('seeds = [0, 1, 2]\n[space]\npin_first_last = 99',
                         "pin_first_last must be a width in bits (1..16), not 99")):
        suite = tmp_path / "suite.toml"
        suite.write_text(f'problem = "small.json"\nbudgets = ["size=3bit"]\n{head}\n\n'
                         '[[searchers]]\nname = "uniform"\n', encoding="utf-8")
        code = main(["bench", str(suite), "--out", str(tmp_path / "out")])
        assert_one_line_error(code, capsys.readouterr().err, words)


def test_searchers_lists_type_default_and_help(capsys):
    assert main(["searchers", "ilp"]) == 0
    out = capsys.readouterr().out
    assert "time_limit" in out and "float | None" in out and "[> 0]" in out and "MIP solver" in out
    assert main(["searchers", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    samples = rows["random"]["settings"][0]
    assert samples == {"name": "samples", "type": "int", "default": 50, "help": "random policies within budget to "
                       "score", "allowed": ">= 1"}
    assert set(rows) == set(searchers.available())
    code = main(["searchers", "nope"])
    assert_one_line_error(code, capsys.readouterr().err, "unknown searcher 'nope'", "ilp")
