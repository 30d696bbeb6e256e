"""End to end on a built-in task: search -> policy file -> eval, and the errors users meet."""

import json

import jsonschema
import pytest

from bitsearch import searchers
from bitsearch.cli import main
from bitsearch.policy import schema_path

from helpers import assert_one_line_error as one_line

TASK = "semicircles-mlp"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "p.json"
    code = main(["search", "--task", TASK, "--searcher", "uniform", "--budget", "size=4bit", "--out", str(path)])
    assert code == 0
    return path


def test_search_then_eval_agree(searched, capsys):
    data = json.loads(searched.read_text())
    jsonschema.validate(data, json.loads(schema_path().read_text()))
    code, out, _ = run(capsys, "eval", str(searched), "--task", TASK, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["costs"] == data["costs"]
    assert report["metrics"]["top1"] == pytest.approx(data["metrics"]["top1"])


def _edit(searched, tmp_path, change):
    data = json.loads(searched.read_text())
    change(data["layers"])
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_policy_errors(searched, tmp_path, capsys):
    first = next(iter(json.loads(searched.read_text())["layers"]))
    cases = [
        (lambda layers: layers.update(ghost={"weight_bits": 4, "act_bits": 8}), "unknown layer 'ghost'"),
        (lambda layers: layers[first].update(weight_bits=11), "not among the choices"),
        (lambda layers: layers[first].update(weight_bits=[4, 4, 4]), "per-kernel widths"),
    ]
    for change, needle in cases:
        code, _, err = run(capsys, "eval", _edit(searched, tmp_path, change), "--task", TASK)
        one_line(code, err, needle)
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "bitsearch-policy", ')
    code, _, err = run(capsys, "eval", str(bad), "--task", TASK)
    one_line(code, err, "not valid JSON")


def test_task_and_budget_errors(tmp_path, capsys):
    out = tmp_path / "never.json"
    code, _, err = run(capsys, "search", "--task", "imagenet-vit", "--searcher", "uniform", "--budget", "size=4bit",
                       "--out", str(out))
    one_line(code, err, "imagenet-vit")
    code, _, err = run(capsys, "search", "--task", TASK, "--searcher", "uniform", "--budget", "size=1.2bit",
                       "--out", str(out))
    one_line(code, err, "cheapest")
    assert not out.exists()


def test_uniform_width_policy_names_its_width():
    from bitsearch.build import ProblemOptions, SpaceOptions, problem_for_task

    problem = problem_for_task(TASK, SpaceOptions(granularity="layer", weight_bits=(2, 3, 4, 8)),
                               ProblemOptions(budgets=("size=3bit",)))
    result = searchers.create("uniform-width", width_mults=(0.5, 1.0)).search(problem)
    model = result.policy.meta["model"]
    assert model.get("width_mult", 1.0) in (0.5, 1.0)


@pytest.mark.parametrize("task", ["digits-cnn", pytest.param("mnist1d-cnn", marks=pytest.mark.slow)])
@pytest.mark.parametrize("searcher, granularity", [("autoq", "kernel"), ("haq", "layer")])
def test_rl_searchers_end_to_end_keep_the_budget(task, searcher, granularity, tmp_path, capsys):
    """Issue 5's command lines with few episodes (mnist1d-cnn trains its float model first: slow;
    the full runs are the suite benchmarks/rl_mnist1d.toml)."""
    path = tmp_path / "p.json"
    code, out, err = run(capsys, "search", "--task", task, "--searcher", searcher, "--granularity",
                         granularity, "--budget", "size=3bit", "--set", "episodes=6", "--set", "warmup=3",
                         "--out", str(path), "--json")
    assert code == 0, err
    data = json.loads(path.read_text())
    assert data["granularity"] == granularity and data["search"]["evaluations"] >= 1
    assert data["costs"]["size"] <= data["budgets"][0]["limit"]
    code, out, _ = run(capsys, "eval", str(path), "--task", task, "--json")
    assert code == 0 and json.loads(out)["costs"]["size"] == data["costs"]["size"]


def test_threads_option(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        path = tmp_path / "p.json"
        code, _, err = run(capsys, "search", "--task", TASK, "--searcher", "uniform", "--budget", "size=4bit",
                           "--threads", "1", "--out", str(path))
        assert code == 0, err
        assert torch.get_num_threads() == 1
        code, _, err = run(capsys, "eval", str(path), "--task", TASK, "--threads", "1")
        assert code == 0, err
        for command in (["search", "--task", TASK, "--searcher", "uniform", "--budget", "size=4bit"],
                        ["eval", str(path), "--task", TASK]):
            code, _, err = run(capsys, *command, "--threads", "0")
            one_line(code, err, "--threads must be at least 1")
    finally:
        torch.set_num_threads(before)
