"""The ilp searcher: HAWQ-V3's published configurations, exact optima on small spaces
(against enumeration) with tied groups, pins, searched activations, several budgets and
latency tables that charge a layer its widest kernel; budgets never exceeded;
infeasible budgets; settings; the conformance suite."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitsearch import searchers
from bitsearch.cost import LatencyTableCost
from bitsearch.encoding import Encoding
from bitsearch.errors import InfeasibleBudgetError, SearcherSettingsError, SearcherUnsupportedError
from bitsearch.problem import Problem
from bitsearch.sensitivity.table import SensitivityTable
from bitsearch.solvers.ilp import ILPSearcher, build_formulation, mckp_applies
from bitsearch.solvers.ilp import separable as separable_form
from bitsearch.space import Layer, Pin, SearchSpace
from bitsearch.tabular import load_problem

from helpers import small_problem, synthetic_sensitivity

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "hawq_v3_resnet18.json"
if not FIXTURE.exists():  # a checkout elsewhere: the fixture beside the repository
    FIXTURE = Path(os.environ.get("BITSEARCH_FIXTURES", "/work/shared/fixtures")) / "hawq_v3_resnet18.json"


# --- HAWQ-V3 -------------------------------------------------------------------------------
def hawq_problem_file(tmp_path, *, explicit_size=True) -> Path:
    """The fixture as a tabular problem: sensitivity = trace per param x ||Q_b(W) - W||^2,
    size = params x b, bops = fp32 MBOPs x (b / 32)^2, latency measured on a T4."""
    data = json.loads(FIXTURE.read_text())
    layers = []
    for layer in data["layers"]:
        costs = {"bops": {b: layer["bops_fp32_mega"] * (int(b) / 32) ** 2 for b in ("4", "8")},
                 "latency": {b: layer["latency_ms"][b] for b in ("4", "8")}}
        if explicit_size:
            costs["size"] = {b: layer["params"] * int(b) for b in ("4", "8")}
        layers.append({"name": layer["name"], "params": layer["params"],
                       "sensitivity": {b: layer["hessian_trace_per_param"] * layer["quant_error_sq"][b]
                                       for b in ("4", "8")},
                       "costs": costs})
    doc = {"schema": "bitsearch-problem", "schema_version": 1, "source": data["source"],
           "weight_bits": [4, 8], "layers": layers,
           "cost_units": {"bops": "MBOPs", "latency": "ms", **({"size": "bit"} if explicit_size else {})},
           "tied": data["tied"]}
    path = tmp_path / ("hawq.json" if explicit_size else "hawq_params.json")
    path.write_text(json.dumps(doc))
    return path


HAWQ_CASES = [(kind, frac) for kind in ("modelsize", "bops", "latency") for frac in ("0.25", "0.5", "0.75")]


@pytest.mark.skipif(not FIXTURE.exists(), reason="HAWQ-V3 fixture not found")
@pytest.mark.parametrize("method,solver", [("auto", "highs"), ("mip", "highs"), ("mip", "cbc")])
def test_hawq_v3_resnet18_reproduced(tmp_path, method, solver):
    published = json.loads(FIXTURE.read_text())["published_weight_bits"]
    names = [layer["name"] for layer in json.loads(FIXTURE.read_text())["layers"]]
    path = hawq_problem_file(tmp_path)
    for kind, frac in HAWQ_CASES:
        cost = "size" if kind == "modelsize" else kind
        problem = load_problem(path, [f"{cost}=frac:{frac}"])
        result = ILPSearcher(method=method, solver=solver, gap=0).search(problem)  # HAWQ-V3 solves exactly
        got = [result.policy[name].weight_bits for name in names]
        assert got == published[f"{kind}_{frac}"], f"{kind} {frac} ({method}/{solver})"
        assert result.info["gap"] <= 1e-9
        assert result.costs[cost] <= problem.budgets[0].limit


@pytest.mark.skipif(not FIXTURE.exists(), reason="HAWQ-V3 fixture not found")
def test_hawq_v3_size_from_params_gives_the_same_configurations(tmp_path):
    """Size from params (the size model adds a constant scale per layer): it cancels in frac budgets."""
    published = json.loads(FIXTURE.read_text())["published_weight_bits"]
    names = [layer["name"] for layer in json.loads(FIXTURE.read_text())["layers"]]
    path = hawq_problem_file(tmp_path, explicit_size=False)
    for frac in ("0.25", "0.5", "0.75"):
        problem = load_problem(path, [f"size=frac:{frac}"])
        result = ILPSearcher(gap=0).search(problem)
        assert [result.policy[n].weight_bits for n in names] == published[f"modelsize_{frac}"]


# --- exact optima against enumeration -------------------------------------------------------
def enumerate_best(problem):
    """The least sensitivity over every policy that keeps every budget (None: none does)."""
    space = problem.space
    encoding = Encoding(space)
    best = None
    for weights in itertools.product(range(encoding.n_weight_choices), repeat=encoding.n_weight_units):
        for acts in itertools.product(range(encoding.n_act_choices), repeat=encoding.n_act_units):
            policy = encoding.decode(np.array(weights), np.array(acts))
            if problem.fits(policy):
                loss = problem.sensitivity.loss(space, policy)
                if best is None or loss < best:
                    best = loss
    return best


def tiny_layers(rng, n_layers, max_kernels):
    layers = []
    for i in range(n_layers):
        kernels = int(rng.integers(1, max_kernels + 1))
        cin = int(rng.integers(1, 4))
        params = kernels * cin * 9
        layers.append(Layer(f"l{i}", "conv2d", params=params, macs=params * int(rng.integers(4, 64)),
                            kernels=kernels, in_channels=cin, out_channels=kernels, kernel_size=(3, 3),
                            bias_params=kernels))
    return tuple(layers)


def random_latency(space, rng, monotone):
    entries = {}
    for layer in space.layers:
        for w in range(1, 9):
            for a in (None, 2, 3, 4, 6, 8):
                base = layer.macs * 1e-4 * (w if monotone else rng.uniform(1, 8)) * (8 if a is None else a)
                entries[(layer.name, w, a)] = float(base * rng.uniform(0.8, 1.2))
    return LatencyTableCost(entries, device="synthetic")


def random_problem(seed, *, granularity, act_bits, tied, pinned, budgets, latency=None, shape=None):
    rng = np.random.default_rng(seed)
    n_layers, max_kernels = shape or (3, 2 if granularity == "kernel" else 4)
    layers = tiny_layers(rng, n_layers, max_kernels)
    space = SearchSpace(layers, weight_bits=(2, 4, 8), act_bits=act_bits, granularity=granularity,
                        tied=(("l0", "l1"),) if tied else (),
                        pinned=(("l2", Pin(8, None if act_bits is None else max(act_bits))),) if pinned else ())
    table = synthetic_sensitivity(space, seed=seed, act_bits=(2, 3, 4, 5, 6, 7, 8))
    models = {}
    if latency is not None:
        models["latency"] = random_latency(space, rng, monotone=latency == "monotone")
    return Problem.build(space, budgets, sensitivity=table, cost_models=models)


CASES = [
    # granularity, act_bits, tied, pinned, budgets, latency
    ("layer", (8,), True, False, ("size=frac:0.4",), None),
    ("layer", (4, 8), True, False, ("bops=frac:0.35",), None),
    ("layer", (2, 4, 8), False, True, ("size=frac:0.5", "bops=frac:0.3"), None),
    ("layer", (4, 8), True, False, ("latency=frac:0.4",), "nonmonotone"),
    ("kernel", (8,), False, False, ("size=frac:0.45",), None),
    ("kernel", (8,), True, True, ("size=frac:0.6", "bops=frac:0.4"), None),
    ("kernel", (4, 8), True, False, ("bops=frac:0.4",), None),
    ("kernel", (4, 8), False, False, ("size=frac:0.5", "energy=frac:0.5"), None),
    ("kernel", (8,), False, False, ("latency=frac:0.5",), "monotone"),
    ("kernel", (8,), False, False, ("latency=frac:0.45",), "nonmonotone"),
    ("kernel", (4, 8), True, False, ("latency=frac:0.5", "size=frac:0.6"), "nonmonotone"),
    ("kernel", None, False, True, ("bitfusion=frac:0.5",), None),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_exact_against_enumeration(case):
    granularity, act_bits, tied, pinned, budgets, latency = CASES[case]
    for seed in range(3):
        problem = random_problem(seed + 10 * case, granularity=granularity, act_bits=act_bits, tied=tied,
                                 pinned=pinned, budgets=budgets, latency=latency)
        assert problem.space.num_policies() <= 6_000
        best = enumerate_best(problem)
        separable = separable_form(build_formulation(problem))[0]
        for method, solver in (("auto", "highs"), ("lagrangian", "highs"), ("mip", "highs"), ("mip", "cbc")):
            if solver == "cbc" and seed:
                continue  # CBC runs as a subprocess: one seed per case keeps this quick
            if method == "lagrangian" and not separable:
                continue
            try:
                result = ILPSearcher(method=method, solver=solver, gap=0).search(problem)
            except InfeasibleBudgetError:
                assert best is None
                continue
            assert best is not None
            assert problem.fits(result.policy)
            assert result.metrics["sensitivity"] == pytest.approx(best, rel=1e-9, abs=1e-12), \
                (CASES[case], seed, method, solver, result.info)
            assert result.info["objective"] == pytest.approx(best, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("latency", ["monotone", "nonmonotone"])
def test_widest_kernel_pays_with_more_kernels(latency):
    """Latency tables at kernel granularity with up to 4 kernels per layer: the layer pays
    its widest kernel exactly, also when the table is not monotone in the width."""
    for seed in range(2):
        problem = random_problem(100 + seed, granularity="kernel", act_bits=(4, 8), tied=False, pinned=False,
                                 budgets=("latency=frac:0.4",), latency=latency, shape=(2, 4))
        best = enumerate_best(problem)
        result = ILPSearcher(gap=0).search(problem)
        assert result.info["method"] == "mip"
        assert result.metrics["sensitivity"] == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_cbc_is_exact_on_small_objective_differences():
    """CBC's default cutoff increment (1e-5, absolute) would stop it short on objectives
    whose alternatives differ by less; the searcher sets it so that CBC is exact."""
    rng = np.random.default_rng(0)
    layers = tiny_layers(rng, 12, 4)
    space = SearchSpace(layers, weight_bits=(2, 3, 4, 8), act_bits=(8,))
    weight = {layer.name: np.array([[1.0, 0.5, 0.25, 0.0]]) * (1 + 1e-5 * rng.random()) for layer in layers}
    table = SensitivityTable((2, 3, 4, 8), weight)
    for budget in ("bops=frac:0.4", "size=frac:0.3"):
        problem = Problem.build(space, (budget,), sensitivity=table)
        exact = ILPSearcher(method="mckp", gap=0).search(problem)
        assert exact.info["status"] == "optimal"
        for solver in ("cbc", "highs"):
            result = ILPSearcher(method="mip", solver=solver, gap=0).search(problem)
            assert result.metrics["sensitivity"] == pytest.approx(exact.metrics["sensitivity"], rel=1e-13), solver


def test_auto_picks_the_knapsack_when_it_applies():
    form = build_formulation(small_problem(("size=3bit",), "kernel"))
    assert mckp_applies(form) == (True, "")
    assert not mckp_applies(build_formulation(small_problem(("size=3bit", "bops=4bit"), "layer")))[0]
    result = ILPSearcher().search(small_problem(("size=3bit",), "kernel"))
    assert result.info["method"] == "mckp"
    result = ILPSearcher().search(small_problem(("size=3bit", "bops=4bit"), "kernel"))
    assert result.info["method"].startswith("lagrangian")
    with pytest.raises(SearcherUnsupportedError, match="does not apply"):
        ILPSearcher(method="mckp").search(small_problem(("size=3bit", "bops=4bit"), "layer"))


def test_result_reports_status_objective_gap_seconds():
    for method in ("mckp", "mip"):
        result = ILPSearcher(method=method).search(small_problem(("size=3bit",), "layer"))
        info = result.info
        for key in ("method", "solver", "status", "objective", "bound", "gap", "solve_seconds", "build_seconds"):
            assert key in info, (method, key)
        assert info["status"] == "optimal"
        assert info["bound"] <= info["objective"] + 1e-12
        assert info["objective"] == pytest.approx(result.metrics["sensitivity"], rel=1e-12)


def test_time_limit_reports_a_gap():
    result = ILPSearcher(method="mip", time_limit=30).search(small_problem(("size=2.5bit", "bops=3bit"), "kernel"))
    assert result.info["status"] in ("optimal", "time_limit")
    assert result.info["gap"] is not None and result.info["gap"] >= 0


# --- budgets are never exceeded ---------------------------------------------------------------
def test_budget_on_a_hair_is_kept(monkeypatch):
    """A limit a hair under the unconstrained optimum's cost: within solver tolerance, but the
    policy returned must keep it exactly (the searcher re-solves with a tightened limit)."""
    for granularity in ("layer", "kernel"):
        free = ILPSearcher().search(small_problem(("size=8bit",), granularity))
        base = small_problem(("size=8bit",), granularity)
        cost = base.costs["size"].cost(base.space, free.policy)
        for rel in (1e-15, 1e-12, 1e-10, 1e-8):
            problem = small_problem((f"size={cost * (1 - rel)}",), granularity)
            for method in ("mckp", "lagrangian", "mip"):
                result = ILPSearcher(method=method).search(problem)
                assert result.costs["size"] <= problem.budgets[0].limit


def test_tightening_repairs_a_solver_that_slips(monkeypatch):
    """Simulate a solver tolerance: the first solve sees its budget rows loosened by 1e-6
    (relative), so it returns the policy that is a hair over the real limit.  The searcher
    must notice (CostModel.cost), re-solve with a tightened limit, and keep the budget."""
    import bitsearch.solvers.ilp as ilp

    real = ilp._solve_mip
    calls = {"n": 0}

    def loose_first(mip, solver, name):
        calls["n"] += 1
        if calls["n"] > 1:
            return real(mip, solver, name)
        saved = [row[0].constant for row in mip.budget_rows if row is not None]
        for row in mip.budget_rows:
            if row is not None:
                row[0].constant -= 1e-6
        try:
            return real(mip, solver, name)
        finally:
            for row, constant in zip([r for r in mip.budget_rows if r is not None], saved):
                row[0].constant = constant

    for granularity in ("layer", "kernel"):
        calls["n"] = 0
        base = small_problem(("size=8bit",), granularity)
        free = ILPSearcher(method="mip", gap=0).search(base)
        limit = base.costs["size"].cost(base.space, free.policy) * (1 - 1e-9)
        monkeypatch.setattr(ilp, "_solve_mip", loose_first)
        problem = small_problem((f"size={limit!r}",), granularity)
        result = ILPSearcher(method="mip", gap=0).search(problem)
        monkeypatch.setattr(ilp, "_solve_mip", real)
        assert problem.fits(result.policy)
        assert result.info["tightened"] >= 1, granularity
        exact = ILPSearcher(method="mip", gap=0).search(problem)
        assert result.metrics["sensitivity"] == pytest.approx(exact.metrics["sensitivity"], rel=1e-9)


# --- infeasible ----------------------------------------------------------------------------------
def test_single_budget_infeasible_names_the_cheapest_cost():
    with pytest.raises(InfeasibleBudgetError) as info:
        ILPSearcher().search(small_problem(("size=1.5bit",), "layer"))
    assert info.value.cheapest > info.value.limit
    assert "cheapest" in str(info.value)


def test_budgets_infeasible_together():
    """Each budget alone can be met, not both: bops pushes weights wide, latency narrow."""
    rng = np.random.default_rng(3)
    space = SearchSpace(tiny_layers(rng, 3, 3), weight_bits=(2, 4, 8), act_bits=(8,))
    entries = {}
    for layer in space.layers:  # an inverted table: wider is faster
        for w in (2, 4, 8):
            entries[(layer.name, w, 8)] = 10.0 / w
    latency = LatencyTableCost(entries, device="inverted")
    problem = Problem.build(space, ("size=frac:0.1", "latency=frac:0.9"), sensitivity=synthetic_sensitivity(space),
                            cost_models={"latency": latency})
    with pytest.raises(InfeasibleBudgetError) as info:
        ILPSearcher().search(problem)
    message = str(info.value)
    assert "together" in message
    assert info.value.cheapest is not None and info.value.cheapest > info.value.limit


# --- settings -----------------------------------------------------------------------------------
def test_unknown_solver_lists_the_known_ones():
    with pytest.raises(SearcherSettingsError, match="highs, cbc"):
        ILPSearcher(solver="gurobi-free")
    with pytest.raises(SearcherSettingsError, match="auto, mckp, lagrangian, mip"):
        ILPSearcher(method="greedy")
    with pytest.raises(SearcherSettingsError):
        ILPSearcher(time_limit=-1)
    assert searchers.get("ilp") is ILPSearcher


def test_needs_a_sensitivity_table():
    problem = small_problem(("size=3bit",))
    problem.sensitivity = None
    with pytest.raises(SearcherUnsupportedError, match="sensitivity"):
        ILPSearcher().search(problem)


def test_import_bitsearch_does_not_import_pulp():
    code = "import bitsearch, sys; assert 'pulp' not in sys.modules and 'highspy' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr




def test_a_failed_lagrangian_repair_is_not_taken_for_infeasibility(monkeypatch):
    """The repair is a heuristic: when it finds no policy within two budgets, the exact
    program decides (found on onnxruntime latency, where int4 layers are slower than int8
    ones: size pulls widths down, latency pushes them up, and one-unit moves cycle)."""
    import bitsearch.solvers.lagrangian as lagrangian

    problem = small_problem(("size=3bit", "bops=4bit"), "layer")
    honest = ILPSearcher(method="lagrangian").search(problem)
    monkeypatch.setattr(lagrangian, "_repair", lambda *args, **kwargs: None)
    for method in ("auto", "lagrangian"):
        result = ILPSearcher(method=method).search(problem)
        assert "repair found no policy" in result.info["fast_path_fallback"]
        assert result.info["method"] == "mip" and problem.fits(result.policy)
        assert result.metrics["sensitivity"] == pytest.approx(honest.metrics["sensitivity"], rel=1e-6)
