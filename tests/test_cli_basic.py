"""The command's contract without a model: one readable line and exit code 2 on bad input."""

import json
import subprocess
import sys

import pytest

from bitsearch.cli import main
from bitsearch.policy import Policy, save_policy

from helpers import assert_one_line_error, small_space


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_teaches():
    out = subprocess.run([sys.executable, "-m", "bitsearch.cli", "search", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0
    for needle in ("--budget", "--searcher", "size=4bit", "frac:0.5", "--weight-bits", "--act-bits"):
        assert needle in out.stdout


def test_bad_budget(capsys):
    code, _, err = run(capsys, "search", "--task", "mnist1d-cnn", "--searcher", "uniform", "--budget", "size=4parsecs")
    assert_one_line_error(code, err, "size=4parsecs")


def test_unknown_searcher(capsys):
    code, _, err = run(capsys, "search", "--task", "mnist1d-cnn", "--searcher", "annealing", "--budget", "size=4bit")
    assert_one_line_error(code, err, "unknown searcher 'annealing'", "uniform")


def test_missing_budget_and_bad_flag(capsys):
    code, _, err = run(capsys, "search", "--task", "mnist1d-cnn", "--searcher", "uniform")
    assert_one_line_error(code, err, "--budget")
    with pytest.raises(SystemExit) as info:
        main(["search", "--granularity", "channel"])
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_unknown_setting(capsys):
    code, _, err = run(capsys, "search", "--task", "mnist1d-cnn", "--searcher", "random", "--budget", "size=4bit",
                       "--set", "temperature=3")
    assert_one_line_error(code, err, "temperature", "samples")


def test_export_csv(tmp_path, capsys):
    space = small_space("kernel")
    path = tmp_path / "p.json"
    save_policy(Policy.uniform(space, 4), path)
    code, out, _ = run(capsys, "export", str(path), "--to", "csv")
    assert code == 0
    rows = out.strip().splitlines()
    assert rows[0] == "layer,kernels,weight_bits,mean_weight_bits,act_bits"
    assert rows[1].startswith("stem,8,4;4;4;4;4;4;4;4,4,8")
    code, _, err = run(capsys, "export", str(path), "--to", "tflite")  # (onnx is a format now: tests/test_onnx.py)
    assert_one_line_error(code, err, "unknown export format", "csv")


def test_malformed_policy_file(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text("{ not json")
    code, _, err = run(capsys, "export", str(path), "--to", "csv")
    assert_one_line_error(code, err, "not valid JSON")


def test_searchers_json(capsys):
    code, out, _ = run(capsys, "searchers", "--json")
    assert code == 0
    names = {row["name"] for row in json.loads(out)}
    assert {"uniform", "uniform-width", "random", "exhaustive"} <= names
