"""Tabular problems: the file format, its schema, readable errors, writing and reading
back, and the torch-free path from a file to a policy."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import numpy as np
import pytest

from bitsearch.cost import LatencyTableCost, TableCost
from bitsearch.errors import InfeasibleBudgetError, ProblemFileError
from bitsearch.policy import Policy
from bitsearch.problem import Problem
from bitsearch.solvers.ilp import ILPSearcher
from bitsearch.space import Pin
from bitsearch.tabular import load_problem, schema_path, write_problem

from helpers import small_problem, small_space, synthetic_sensitivity

ISSUE_EXAMPLE = {
    "schema": "bitsearch-problem", "schema_version": 1,
    "weight_bits": [4, 8],
    "layers": [
        {"name": "stage1.unit1.conv1", "params": 36864,
         "sensitivity": {"4": 0.4624, "8": 0.0016},
         "costs": {"latency": {"4": 0.2109, "8": 0.3619}, "bops": {"4": 1.806, "8": 7.225}}},
        {"name": "stage2.unit1.conv1", "params": 73728,
         "sensitivity": {"4": 0.1051, "8": 0.0003},
         "costs": {"latency": {"4": 0.1364, "8": 0.1918}, "bops": {"4": 0.903, "8": 3.613}}},
        {"name": "stage2.unit1.downsample", "params": 8192,
         "sensitivity": {"4": 0.0473, "8": 0.0002},
         "costs": {"latency": {"4": 0.0253, "8": 0.0334}, "bops": {"4": 0.100, "8": 0.401}}},
        {"name": "stage2.unit1.conv2", "params": 147456,
         "sensitivity": {"4": 0.0632, "8": 0.0002},
         "costs": {"latency": {"4": 0.1917, "8": 0.3895}, "bops": {"4": 1.806, "8": 7.225}}},
    ],
    "cost_units": {"latency": "ms", "bops": "MBOPs"},
    "tied": [["stage2.unit1.conv1", "stage2.unit1.downsample"]],
}


def write(tmp_path, doc, name="problem.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_issue_example_loads_and_solves(tmp_path):
    path = write(tmp_path, ISSUE_EXAMPLE)
    problem = load_problem(path, ["latency=frac:0.5"])
    assert set(problem.costs) == {"size", "bits", "bops", "latency"}
    assert problem.costs["latency"].unit == "ms" and problem.costs["bops"].unit == "MBOPs"
    assert problem.space.tied == (("stage2.unit1.conv1", "stage2.unit1.downsample"),)
    assert problem.space.act_bits is None
    result = ILPSearcher().search(problem)
    policy = result.policy
    assert policy["stage2.unit1.conv1"].weight_bits == policy["stage2.unit1.downsample"].weight_bits
    assert result.costs["latency"] <= problem.budgets[0].limit
    # size comes from params: 4-bit everywhere is params x 4 plus one 32-bit scale per layer
    uniform4 = Policy.uniform(problem.space, 4)
    params = sum(layer["params"] for layer in ISSUE_EXAMPLE["layers"])
    assert problem.costs["size"].cost(problem.space, uniform4) == params * 4 + 4 * 32
    # every cost in 'costs' is budgetable, alone or together
    for budgets in (["bops=frac:0.3"], ["size=6bit", "latency=frac:0.6"], ["bops=12"]):
        problem = load_problem(path, budgets)
        result = ILPSearcher().search(problem)
        assert problem.fits(result.policy)


def test_schema_accepts_the_example_and_written_files(tmp_path):
    schema = json.loads(schema_path().read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(ISSUE_EXAMPLE, schema)
    out = tmp_path / "written.json"
    write_problem(small_problem(("size=3bit",), "kernel"), out)
    jsonschema.validate(json.loads(out.read_text()), schema)


def test_per_kernel_sensitivities(tmp_path):
    doc = json.loads(json.dumps(ISSUE_EXAMPLE))
    rng = np.random.default_rng(0)
    doc["layers"][3]["sensitivity"] = {"4": rng.random(6).tolist(), "8": (rng.random(6) * 1e-3).tolist()}
    path = write(tmp_path, doc)
    layer_problem = load_problem(path, ["bops=frac:0.5"])
    assert layer_problem.space.layer("stage2.unit1.conv2").kernels == 6
    kernel_problem = load_problem(path, ["bops=frac:0.5"], granularity="kernel")
    result = ILPSearcher().search(kernel_problem)
    bits = result.policy["stage2.unit1.conv2"].weight_bits
    assert isinstance(bits, tuple) and len(bits) == 6
    assert kernel_problem.fits(result.policy)


def test_searched_activations_and_pins(tmp_path):
    doc = json.loads(json.dumps(ISSUE_EXAMPLE))
    doc["act_bits"] = [4, 8]
    for i, layer in enumerate(doc["layers"]):
        layer["macs"] = layer["params"] * 56 * 56 // (i + 1)
        layer["act_sensitivity"] = {"4": 0.01 * (i + 1), "8": 0.0001}
        layer.pop("costs")
    doc["cost_units"] = {}
    doc["pinned"] = {"stage1.unit1.conv1": {"weight_bits": 8, "act_bits": 8}}
    path = write(tmp_path, doc)
    problem = load_problem(path, ["bops=frac:0.4"])
    assert problem.space.act_searched
    assert problem.space.pins == {"stage1.unit1.conv1": Pin(8, 8)}
    assert set(problem.costs) >= {"size", "bops", "energy", "bitfusion"}  # with macs: analytic costs
    result = ILPSearcher().search(problem)
    assert result.policy["stage1.unit1.conv1"].weight_bits == 8
    assert problem.fits(result.policy)


def bad(tmp_path, doc, match, budgets=("latency=frac:0.5",)):
    path = write(tmp_path, doc)
    with pytest.raises(ProblemFileError, match=match) as info:
        load_problem(path, list(budgets))
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "Traceback" not in message
    return message


def test_malformed_files_give_readable_errors(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"schema": "bitsearch-problem", ')
    with pytest.raises(ProblemFileError, match="not valid JSON"):
        load_problem(path, [])
    with pytest.raises(ProblemFileError, match="no such file"):
        load_problem(tmp_path / "missing.json", [])
    bad(tmp_path, {"schema": "bitsearch-policy", "schema_version": 1, "layers": {}}, "bitsearch-problem")
    bad(tmp_path, {**ISSUE_EXAMPLE, "schema_version": 2}, "schema_version")
    doc = json.loads(json.dumps(ISSUE_EXAMPLE))
    doc["layers"][1]["sensitivity"].pop("8")
    doc["layers"][2]["params"] = "many"
    doc["layers"][3]["colour"] = "red"
    message = bad(tmp_path, doc, "problems")
    assert "layers[2] (stage2.unit1.downsample).params" in message
    assert "colour" in message
    doc = json.loads(json.dumps(ISSUE_EXAMPLE))
    doc["layers"][1]["sensitivity"].pop("8")
    bad(tmp_path, doc, r"stage2.unit1.conv1.*no value at widths \[8\]")
    doc = json.loads(json.dumps(ISSUE_EXAMPLE))
    doc["layers"][0]["costs"].pop("latency")
    bad(tmp_path, doc, r"stage1.unit1.conv1.*cost 'latency' has no value")
    doc = json.loads(json.dumps(ISSUE_EXAMPLE))
    doc["tied"] = [["stage2.unit1.conv1", "nowhere"]]
    bad(tmp_path, doc, "unknown layers")
    doc = json.loads(json.dumps(ISSUE_EXAMPLE))
    doc["layers"][0]["kernels"] = 3
    doc["layers"][0]["sensitivity"] = {"4": [1, 2], "8": [0.1, 0.2]}
    bad(tmp_path, doc, "kernels=3")
    doc = json.loads(json.dumps(ISSUE_EXAMPLE))
    doc["layers"][1]["name"] = doc["layers"][0]["name"]
    bad(tmp_path, doc, "appears more than once")
    bad(tmp_path, ISSUE_EXAMPLE, "does not price", budgets=("energy=frac:0.5",))


def test_infeasible_budget_on_a_table(tmp_path):
    path = write(tmp_path, ISSUE_EXAMPLE)
    with pytest.raises(InfeasibleBudgetError, match="cheapest"):
        load_problem(path, ["latency=0.1ms"])


def test_write_then_load_round_trip(tmp_path):
    for granularity in ("layer", "kernel"):
        problem = small_problem(("size=3bit",), granularity)
        path = tmp_path / f"small_{granularity}.json"
        write_problem(problem, path)
        back = load_problem(path, ["size=3bit"], granularity=granularity)
        assert back.space.fingerprint == problem.space.fingerprint
        assert back.space.layers == problem.space.layers
        assert back.space.tied == problem.space.tied
        assert back.budgets[0].limit == problem.budgets[0].limit
        first = ILPSearcher().search(problem)
        second = ILPSearcher().search(back)
        assert first.policy == second.policy
        assert second.metrics["sensitivity"] == pytest.approx(first.metrics["sensitivity"], rel=1e-12)


def test_write_keeps_explicit_tables(tmp_path):
    space = small_space(act_bits=(8,))
    latency = LatencyTableCost({(layer.name, w, 8): float(w * (i + 1)) for i, layer in enumerate(space.layers)
                                for w in space.weight_bits}, device="test board", unit="ms")
    table = TableCost("memory", "KB", {layer.name: {w: layer.params * w / 8000 for w in space.weight_bits}
                                       for layer in space.layers})
    problem = Problem.build(space, ("latency=frac:0.5",), sensitivity=synthetic_sensitivity(space),
                            cost_models={"latency": latency, "memory": table})
    path = tmp_path / "tables.json"
    write_problem(problem, path)
    data = json.loads(path.read_text())
    assert data["cost_units"] == {"latency": "ms", "memory": "KB"}
    assert data["cost_per_kernel"]["latency"] == "max"
    back = load_problem(path, ["latency=frac:0.5", "memory=frac:0.7"])
    result = ILPSearcher().search(back)
    assert back.fits(result.policy)
    reference = Problem.build(space, ("latency=frac:0.5", "memory=frac:0.7"), sensitivity=synthetic_sensitivity(space),
                              cost_models={"latency": latency, "memory": table})
    assert ILPSearcher().search(reference).policy == result.policy


def test_writing_needs_a_sensitivity_table(tmp_path):
    problem = small_problem(("size=3bit",))
    problem.sensitivity = None
    with pytest.raises(Exception, match="sensitivit"):
        write_problem(problem, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_tabular_path_does_not_import_torch(tmp_path):
    path = write(tmp_path, ISSUE_EXAMPLE)
    code = f"""
import sys
from bitsearch.tabular import load_problem
from bitsearch import searchers
problem = load_problem({str(path)!r}, ["latency=frac:0.5"])
for method in ("auto", "mip"):
    result = searchers.create("ilp", method=method).search(problem)
    assert problem.fits(result.policy)
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_command_line_on_a_table_without_torch(tmp_path):
    path = write(tmp_path, ISSUE_EXAMPLE)
    out_policy = tmp_path / "p.json"
    code = ("import sys, runpy; sys.argv = ['bitsearch', 'search', '--problem', %r, '--searcher', 'ilp', "
            "'--budget', 'latency=frac:0.5', '--out', %r]\n"
            "from bitsearch.cli import main\n"
            "rc = main()\n"
            "assert 'torch' not in sys.modules\n"
            "sys.exit(rc)" % (str(path), str(out_policy)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    policy = json.loads(out_policy.read_text())
    assert policy["search"]["searcher"] == "ilp"
    assert set(policy["layers"]) == {layer["name"] for layer in ISSUE_EXAMPLE["layers"]}
