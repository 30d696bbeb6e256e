"""Scale (#13): the array paths give the same numbers as the scalar definitions, the .npz
problem form, the Lagrangian path for several budgets, and no step quadratic in the
number of units (time at 20k vs 80k units)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections import Counter

import numpy as np
import pytest

from bitsearch.cost import ANALYTIC, LatencyTableCost, TableCost, make_cost_model
from bitsearch.errors import InfeasibleBudgetError, ProblemFileError
from bitsearch.policy import LayerBits, Policy
from bitsearch.problem import Problem
from bitsearch.sensitivity.table import SensitivityTable
from bitsearch.solvers.ilp import ILPSearcher, build_formulation
from bitsearch.solvers.lagrangian import solve_lagrangian
from bitsearch.space import FLOAT_BITS, Layer, Pin, SearchSpace
from bitsearch.tabular import load_problem, problem_to_arrays, write_problem

from helpers import small_problem, small_space, synthetic_sensitivity


def random_layers(rng, n, max_kernels=6):
    layers = []
    for i in range(n):
        kernels = int(rng.integers(1, max_kernels + 1))
        fan_in = int(rng.integers(1, 3000))
        params = kernels * fan_in
        layers.append(Layer(f"l{i}", "conv2d" if i % 2 else "linear", params=params,
                            macs=params * int(rng.integers(1, 400)), kernels=kernels,
                            bias_params=int(rng.integers(0, 2)) * kernels))
    return tuple(layers)


def reference_cost(model, space, policy):
    """The scalar definition: the sum over layers of policy_layer_cost (CostModel before #13)."""
    return math.fsum(model.policy_layer_cost(layer, policy[layer.name]) for layer in space.layers)


# --- arrays give the scalar definitions' numbers -------------------------------------------------
@pytest.mark.parametrize("name", sorted(ANALYTIC))
def test_vectorised_columns_are_the_scalar_costs(name):
    rng = np.random.default_rng(1)
    space = SearchSpace(random_layers(rng, 60), weight_bits=(1, 2, 3, 4, 5, 6, 7, 8, 16), act_bits=(2, 4, 8))
    model = make_cost_model(name)
    for w in (1, 2, 3, 5, 8, 16, FLOAT_BITS):
        for a in (None, 2, 3, 8, 16):
            column = model.layer_column(space, w, a)
            expected = np.array([model.layer_cost(layer, w, a) for layer in space.layers])
            assert np.array_equal(column, expected), (name, w, a)  # the same floats, not nearly


@pytest.mark.parametrize("granularity", ["layer", "kernel"])
def test_policy_cost_and_loss_match_the_scalar_definitions(granularity):
    rng = np.random.default_rng(2)
    layers = random_layers(rng, 40)
    space = SearchSpace(layers, weight_bits=(2, 3, 4, 8), act_bits=(4, 8), granularity=granularity,
                        pinned=(("l3", Pin(8, 8)),))
    table = synthetic_sensitivity(space, seed=3)
    latency = LatencyTableCost({(l.name, w, a): float(rng.uniform(0.1, 2.0)) for l in layers
                                for w in (2, 3, 4, 8) for a in (4, 8)}, device="synthetic")
    explicit = TableCost("memory", "B", {l.name: {w: l.params * w / 8 + 3 for w in (2, 3, 4, 8)} for l in layers})
    models = [make_cost_model(n) for n in ANALYTIC] + [latency, explicit]
    for trial in range(5):
        bits = []
        for layer in layers:
            a = 8 if layer.name == "l3" else int(rng.choice([4, 8]))
            if layer.name == "l3":
                w = 8 if granularity == "layer" else (8,) * layer.kernels
            elif granularity == "kernel":
                w = tuple(int(b) for b in rng.choice([2, 3, 4, 8], size=layer.kernels))
            else:
                w = int(rng.choice([2, 3, 4, 8]))
            bits.append((layer.name, LayerBits(w, a)))
        policy = Policy(tuple(bits), granularity)
        for model in models:
            assert model.cost(space, policy) == pytest.approx(reference_cost(model, space, policy), rel=1e-15)
        # the loss: one term per kernel (per layer for a per-layer estimate at one width)
        terms = []
        for layer in layers:
            if layer.name == "l3":
                continue
            b = policy[layer.name]
            rows = table.weight[layer.name]
            cols = [table.weight_bits.index(w) for w in b.kernel_bits(layer.kernels)]
            terms += [rows[k, c] for k, c in enumerate(cols)]
            terms.append(table.act[layer.name][table.act_bits.index(b.act_bits)])
        assert table.loss(space, policy) == pytest.approx(math.fsum(terms), rel=1e-14)


def test_unit_rows_match_the_per_layer_tables():
    rng = np.random.default_rng(4)
    layers = random_layers(rng, 30)
    for granularity in ("layer", "kernel"):
        space = SearchSpace(layers, weight_bits=(2, 4, 8), granularity=granularity, pinned=(("l0", Pin(8, 8)),))
        weight = {l.name: rng.random((l.kernels if i % 3 else 1, 8)) for i, l in enumerate(layers)}
        table = SensitivityTable(range(1, 9), weight)
        stacked = np.concatenate([table.unit_table(space, space.layers[i]) for i in space.free_layers()])
        arrays = table.layer_rows(space) if granularity == "layer" else table.kernel_rows(space)
        np.testing.assert_allclose(arrays, stacked, rtol=1e-14)


def test_policy_lookups_by_name():
    names = [f"layer{i}" for i in range(50_000)]
    policy = Policy(tuple((n, LayerBits(4, 8)) for n in names))
    started = time.process_time()
    for n in names:
        assert policy[n].weight_bits == 4
    assert time.process_time() - started < 1.0  # a scan per lookup would take minutes
    assert "layer7" in policy and "nowhere" not in policy and policy.get("nowhere") is None
    with pytest.raises(KeyError):
        policy["nowhere"]


# --- the .npz form ---------------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["layer", "kernel"])
def test_npz_round_trip_gives_the_json_problem(tmp_path, granularity):
    problem = small_problem(("size=3bit",), granularity, pinned=(("fc", Pin(8, 8)),))
    for suffix in ("json", "npz"):
        write_problem(problem, tmp_path / f"p.{suffix}")
    back_json = load_problem(tmp_path / "p.json", ["size=3bit", "bops=frac:0.5"], granularity=granularity)
    back_npz = load_problem(tmp_path / "p.npz", ["size=3bit", "bops=frac:0.5"], granularity=granularity)
    assert back_npz.space == back_json.space
    assert back_npz.space.fingerprint == problem.space.fingerprint
    assert [b.limit for b in back_npz.budgets] == [b.limit for b in back_json.budgets]
    first = ILPSearcher(gap=0).search(back_json)
    second = ILPSearcher(gap=0).search(back_npz)
    assert first.policy == second.policy
    assert second.metrics["sensitivity"] == pytest.approx(first.metrics["sensitivity"], rel=1e-12)


def test_npz_keeps_explicit_costs_ties_and_searched_activations(tmp_path):
    space = small_space(act_bits=(4, 8))
    explicit = TableCost("memory", "KB", {l.name: {w: l.params * w / 8000 for w in space.weight_bits}
                                          for l in space.layers})
    problem = Problem.build(space, (), sensitivity=synthetic_sensitivity(space), cost_models={"memory": explicit})
    write_problem(problem, tmp_path / "p.npz")
    back = load_problem(tmp_path / "p.npz", ["memory=frac:0.4", "bops=frac:0.5"])
    assert back.space.tied == space.tied and back.space.act_bits == (4, 8)
    assert back.costs["memory"].unit == "KB"
    reference = Problem.build(space, ("memory=frac:0.4", "bops=frac:0.5"), sensitivity=synthetic_sensitivity(space),
                              cost_models={"memory": explicit})
    assert ILPSearcher(gap=0).search(back).policy == ILPSearcher(gap=0).search(reference).policy


def _arrays(tmp_path):
    return problem_to_arrays(small_problem(("size=3bit",), "kernel"))


def _bad_npz(tmp_path, arrays, *needles):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ProblemFileError) as info:
        load_problem(path, ["size=3bit"], granularity="kernel")
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_npz_errors_are_one_line(tmp_path):
    good = _arrays(tmp_path)
    _bad_npz(tmp_path, {k: v for k, v in good.items() if k != "params"}, "missing arrays ['params']")
    _bad_npz(tmp_path, {**good, "colour": np.zeros(3)}, "unknown arrays ['colour']")
    sens = good["sensitivity"].copy()
    sens[3, 1] = np.nan
    _bad_npz(tmp_path, {**good, "sensitivity": sens}, "finite")
    _bad_npz(tmp_path, {**good, "sensitivity": good["sensitivity"][:, :2]}, "columns")
    _bad_npz(tmp_path, {**good, "params": good["params"][:-1]}, "'params'", "one per layer")
    _bad_npz(tmp_path, {**good, "params": good["params"].astype(float)}, "integers")
    layer = good["layer"].copy()
    layer[-1] = 99
    _bad_npz(tmp_path, {**good, "layer": layer}, "'layer'")
    _bad_npz(tmp_path, {**good, "layer": layer[::-1].copy()}, "'layer'")
    kernels = good["kernels"].copy()
    kernels[0] += 1
    _bad_npz(tmp_path, {**good, "kernels": kernels}, "kernels=")
    cost = np.ones((len(good["name"]), len(good["weight_bits"])))
    cost[1, 2] = -1
    _bad_npz(tmp_path, {**good, "cost.memory": cost}, "negative")
    names = good["name"].copy()
    names[1] = names[0]
    _bad_npz(tmp_path, {**good, "name": names}, "appears more than once")
    _bad_npz(tmp_path, {**good, "header": np.array(json.dumps({"schema_version": 2}))}, "schema_version")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ProblemFileError, match="not a readable .npz"):
        load_problem(tmp_path / "junk.npz", [])
    with pytest.raises(ProblemFileError, match="no such file"):
        load_problem(tmp_path / "missing.npz", [])


def test_a_bad_row_among_many_is_named(tmp_path):
    layers = [{"name": f"r{i}", "params": 100 + i, "sensitivity": {"4": 1.0 / (i + 1), "8": 0.1 / (i + 1)}}
              for i in range(5_000)]
    layers[4321]["params"] = "many"
    layers[77]["colour"] = "red"
    doc = {"schema": "bitsearch-problem", "schema_version": 1, "weight_bits": [4, 8], "layers": layers}
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProblemFileError) as info:
        load_problem(path, [])
    message = str(info.value)
    assert "layers[4321] (r4321).params" in message and "layers[77] (r77)" in message and "colour" in message


# --- several budgets: the Lagrangian path --------------------------------------------------------------
def random_multi(seed, budgets, granularity="kernel", n_layers=6):
    rng = np.random.default_rng(seed)
    space = SearchSpace(random_layers(rng, n_layers, 5), weight_bits=(2, 3, 4, 6, 8), act_bits=(8,),
                        granularity=granularity)
    return Problem.build(space, budgets, sensitivity=synthetic_sensitivity(space, seed=seed))


@pytest.mark.parametrize("budgets", [("size=frac:0.35", "bops=frac:0.3"),
                                     ("size=frac:0.5", "bops=frac:0.4", "bitfusion=frac:0.45"),
                                     ("size=frac:0.3", "energy=frac:0.6")])
def test_lagrangian_is_exact_on_request_and_within_the_gap_by_default(budgets):
    for seed in range(4):
        for granularity in ("layer", "kernel"):
            problem = random_multi(seed, budgets, granularity)
            exact_mip = ILPSearcher(method="mip", gap=0).search(problem)
            exact = ILPSearcher(method="lagrangian", gap=0).search(problem)
            assert problem.fits(exact.policy)
            assert exact.metrics["sensitivity"] == pytest.approx(exact_mip.metrics["sensitivity"], rel=1e-9)
            default = ILPSearcher().search(problem)
            assert default.info["method"].startswith("lagrangian")
            assert problem.fits(default.policy)
            assert default.info["gap"] <= 1e-4 + 1e-12
            assert default.info["bound"] <= exact_mip.metrics["sensitivity"] * (1 + 1e-9)
            assert default.metrics["sensitivity"] <= exact_mip.metrics["sensitivity"] * (1 + 1e-4) + 1e-12
            assert {b["spec"] for b in default.info["budgets"]} == set(budgets)


def test_lagrangian_reports_which_budgets_bind():
    rng = np.random.default_rng(5)
    n, m = 400, 5
    values = np.sort(rng.random((n, m)), axis=1)[:, ::-1]
    size = np.sort(rng.random((n, m)), axis=1)
    other = size * 0.01  # never binds when its capacity is generous
    sol = solve_lagrangian(values, [size, other], [size[:, 0].sum() + 0.3 * (size[:, -1] - size[:, 0]).sum(),
                                                   other[:, -1].sum() + 1])
    assert sol.binding == (True, False)
    assert sol.costs[0] <= size[:, 0].sum() + 0.3 * (size[:, -1] - size[:, 0]).sum()
    assert sol.gap <= 1e-3


def test_budgets_that_cannot_be_met_together_on_the_fast_path():
    """Size and a cost that falls with the width (params x (10 - w)): under 'inverse' at half
    its range the widths average 5 bits or more, so size cannot be at a tenth of its range."""
    base = random_multi(0, (), "kernel")
    space = base.space
    inverse = TableCost("inverse", "", {l.name: {w: float(l.params * (10 - w)) for w in space.weight_bits}
                                        for l in space.layers})
    problem = Problem.build(space, ("size=frac:0.1", "inverse=frac:0.5"), sensitivity=base.sensitivity,
                            cost_models={"inverse": inverse})
    with pytest.raises(InfeasibleBudgetError, match="cannot be met together") as info:
        ILPSearcher().search(problem)
    assert "size=frac:0.1" in str(info.value) and "inverse=frac:0.5" in str(info.value)


# --- no step is quadratic --------------------------------------------------------------------------
def _unit_problem(tmp_path, units, form):
    """``units`` decision units: one-kernel layers in JSON (every per-layer path runs once per
    unit), or kernels of 50 layers in .npz (every per-kernel path)."""
    rng = np.random.default_rng(0)
    bits = np.arange(2, 9, dtype=float)
    noise = 1.0 / (12.0 * (2.0 ** bits - 1.0) ** 2)
    if form == "json":
        layers = [Layer(f"r{i}", "conv2d", params=int(p), macs=int(p) * 49, kernels=1)
                  for i, p in enumerate(rng.integers(50, 5000, size=units))]
        rows = rng.lognormal(0.0, 1.0, size=(units, 1)) * noise[None, :]
        counts = [1] * units
    else:
        per = units // 50
        layers = [Layer(f"l{i}", "linear", params=per * 512, macs=per * 512, kernels=per) for i in range(50)]
        rows = rng.lognormal(0.0, 1.0, size=(per * 50, 1)) * noise[None, :]
        counts = [per] * 50
    space = SearchSpace(tuple(layers), weight_bits=tuple(range(2, 9)), act_bits=(8,),
                        granularity="layer" if form == "json" else "kernel", model_name="scale")
    table = SensitivityTable.from_rows(space.weight_bits, [l.name for l in layers], rows, counts)
    path = tmp_path / f"u{units}.{form}"
    write_problem(Problem.build(space, (), sensitivity=table), path)
    return path


def _cli_steps(path, form, budgets):
    """CPU seconds of each step a user's `bitsearch search` runs (in this process)."""
    from bitsearch.commands.common import print_result
    from bitsearch.policy import load_policy, save_policy

    clock = time.process_time
    steps = Counter()
    granularity = "layer" if form == "json" else "kernel"
    t = clock()
    problem = load_problem(path, budgets, granularity=granularity)
    steps["load"] += clock() - t
    t = clock()
    result = ILPSearcher().search(problem)
    steps["search"] += clock() - t
    t = clock()
    out = path.with_suffix(".policy.json")
    save_policy(result.policy, out)
    steps["write"] += clock() - t
    t = clock()
    with contextlib.redirect_stdout(io.StringIO()):
        print_result(problem, result.policy, result.metrics, result.costs)
    steps["print"] += clock() - t
    t = clock()
    back = load_policy(out, problem.space)
    problem.cost_of(back)
    steps["read back"] += clock() - t
    return steps


@pytest.mark.parametrize("form,budgets", [("json", ["size=frac:0.3"]), ("npz", ["size=frac:0.3", "bops=frac:0.35"])])
def test_no_step_is_quadratic(tmp_path, form, budgets):
    """Each step at 80k units takes at most 10x what it takes at 20k (linear: 4x, n log n a
    little more; a quadratic step would take 16x).  CPU seconds of this process, so that
    other jobs on a loaded machine count less; a step over the limit is timed once more
    and the faster run counts."""
    small, large = (_unit_problem(tmp_path, n, form) for n in (20_000, 80_000))
    best = {"small": _cli_steps(small, form, budgets), "large": _cli_steps(large, form, budgets)}

    def over():
        return [step for step, seconds in best["large"].items()
                if seconds > 10 * max(best["small"][step], 0.02)]  # below 20 ms the clock's grain dominates

    if over():
        again = {"small": _cli_steps(small, form, budgets), "large": _cli_steps(large, form, budgets)}
        for size in best:
            best[size] = {step: min(best[size][step], again[size][step]) for step in best[size]}
    assert not over(), best


# --- start-up ----------------------------------------------------------------------------------------
def test_import_and_help_start_without_heavy_modules():
    """``import bitsearch`` loads no other module (PEP 562), and ``bitsearch --help`` neither
    numpy nor the bench harness (its suite format is built when ``bench --help`` shows it);
    the names still resolve on use."""
    import subprocess
    import sys

    code = ("import sys, bitsearch; before = set(sys.modules); "
            "from bitsearch.cli import build_parser; build_parser().format_help(); "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'jsonschema', 'torch', 'pulp') "
            "or m.startswith('bitsearch.bench')); "
            "print(sorted(m for m in before if m.startswith(('numpy', 'bitsearch.')))); print(loaded); "
            "print(bitsearch.Policy.__name__, bitsearch.searchers.get('ilp').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    before, loaded, names = out.stdout.strip().splitlines()
    assert before == "[]" and loaded == "[]", out.stdout
    assert names == "Policy ILPSearcher"


def test_spaces_and_policies_pickle_without_their_caches():
    import pickle

    problem = small_problem(("size=3bit",), "kernel")
    result = ILPSearcher().search(problem)
    problem.cost_of(result.policy)  # fills the caches
    assert problem.space._cache and result.policy._cache
    space = pickle.loads(pickle.dumps(problem.space))
    policy = pickle.loads(pickle.dumps(result.policy))
    assert space == problem.space and space._cache == {} and policy._cache == {}
    assert policy == result.policy and policy.key == result.policy.key
    back = pickle.loads(pickle.dumps(problem))
    assert back.cost_of(policy) == problem.cost_of(result.policy)
