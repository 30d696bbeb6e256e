"""The multiple-choice knapsack path: equal to the optimum (enumeration on tiny instances,
the MIP on larger ones), proven bounds, infeasibility, and the ilp searcher's use of it."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bitsearch.solvers.ilp import ILPSearcher
from bitsearch.solvers.mckp import KnapsackInfeasible, solve_mckp

from helpers import small_problem


def brute_force(values, costs, capacity):
    n, m = values.shape
    best = None
    for combo in itertools.product(range(m), repeat=n):
        idx = (np.arange(n), np.array(combo))
        if math.fsum(costs[idx]) <= capacity:  # summed as the cost models sum
            v = math.fsum(values[idx])
            if best is None or v < best:
                best = v
    return best


def random_instance(rng, n, m, kind):
    if kind == "integers":  # many ties and dominated choices
        costs = rng.integers(0, 10, size=(n, m)).astype(float)
        values = rng.integers(0, 10, size=(n, m)).astype(float)
    elif kind == "uniform":
        costs = rng.random((n, m))
        values = rng.random((n, m))
    else:  # bit widths: cost ~ params x b, value ~ c x 4^-b (the shape of real problems)
        bits = np.arange(2, 2 + m)
        costs = rng.integers(1, 60, size=(n, 1)) * bits + 32.0
        values = rng.lognormal(0, 1, size=(n, 1)) * 4.0 ** -bits
    low, high = costs.min(axis=1).sum(), costs.max(axis=1).sum()
    capacity = rng.uniform(low - 0.05 * (high - low), high)
    return values, costs, capacity


@pytest.mark.parametrize("kind", ["integers", "uniform", "bits"])
def test_equals_enumeration_on_tiny_instances(kind):
    rng = np.random.default_rng({"integers": 1, "uniform": 2, "bits": 3}[kind])
    for _ in range(300):
        n, m = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        values, costs, capacity = random_instance(rng, n, m, kind)
        best = brute_force(values, costs, capacity)
        if best is None:
            with pytest.raises(KnapsackInfeasible) as info:
                solve_mckp(values, costs, capacity)
            assert info.value.cheapest > capacity
            continue
        sol = solve_mckp(values, costs, capacity)
        assert sol.status == "optimal"
        assert sol.cost <= capacity
        assert sol.objective == pytest.approx(best, rel=1e-12, abs=1e-12)
        assert sol.bound <= best + 1e-12
        assert costs[np.arange(n), sol.choice].sum() == pytest.approx(sol.cost)


def mip_optimum(values, costs, capacity):
    """The optimum by HiGHS through highspy, exactly (gap 0)."""
    import highspy
    import scipy.sparse as sp

    n, m = values.shape
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.0)
    h.setOptionValue("mip_feasibility_tolerance", 1e-9)
    h.setOptionValue("primal_feasibility_tolerance", 1e-9)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n * m, n + 1
    shift = values.min(axis=1, keepdims=True)
    lp.col_cost_ = (values - shift).ravel()
    lp.col_lower_ = np.zeros(n * m)
    lp.col_upper_ = np.ones(n * m)
    rows = np.r_[np.repeat(np.arange(n), m), np.full(n * m, n)]
    cols = np.r_[np.arange(n * m), np.arange(n * m)]
    base = costs.min(axis=1, keepdims=True)
    a = sp.csc_matrix((np.r_[np.ones(n * m), (costs - base).ravel()], (rows, cols)), shape=(n + 1, n * m))
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
    lp.row_lower_ = np.r_[np.ones(n), -highspy.kHighsInf]
    lp.row_upper_ = np.r_[np.ones(n), capacity - base.sum()]
    lp.integrality_ = [highspy.HighsVarType.kInteger] * (n * m)
    h.passModel(lp)
    h.run()
    x = np.array(h.getSolution().col_value).reshape(n, m)
    choice = x.argmax(axis=1)
    return values[np.arange(n), choice].sum(), costs[np.arange(n), choice].sum()


@pytest.mark.parametrize("seed", range(6))
def test_equals_the_mip_optimum_on_larger_instances(seed):
    rng = np.random.default_rng(100 + seed)
    for kind in ("integers", "uniform", "bits"):
        n, m = int(rng.integers(20, 80)), int(rng.integers(3, 8))
        values, costs, capacity = random_instance(rng, n, m, kind)
        if costs.min(axis=1).sum() > capacity:
            capacity = costs.min(axis=1).sum() + 1.0
        sol = solve_mckp(values, costs, capacity)
        best, best_cost = mip_optimum(values, costs, capacity)
        assert sol.cost <= capacity
        if best_cost <= capacity:  # the MIP's answer is within its tolerance: compare when it is feasible
            assert sol.objective <= best + 1e-9 * abs(best) + 1e-12, (kind, sol.summary())
        assert sol.status == "optimal"
        assert sol.bound <= sol.objective


def test_no_budget_takes_the_best_choice_everywhere():
    rng = np.random.default_rng(5)
    values = rng.random((50, 4))
    sol = solve_mckp(values, rng.random((50, 4)), np.inf)
    assert np.array_equal(sol.choice, values.argmin(axis=1))
    assert sol.gap == 0


def test_unavailable_choices_are_never_taken():
    rng = np.random.default_rng(6)
    values, costs = rng.random((30, 5)), rng.random((30, 5))
    allowed = rng.random((30, 5)) > 0.4
    allowed[:, 0] = True
    costs_nan = np.where(allowed, costs, np.nan)
    for sol in (solve_mckp(values, costs, costs.sum() / 5, allowed=allowed),
                solve_mckp(values, costs_nan, costs.sum() / 5)):
        assert allowed[np.arange(30), sol.choice].all()


def test_node_limit_returns_a_feasible_policy_with_a_proven_bound():
    rng = np.random.default_rng(7)
    bits = np.arange(2, 9)
    costs = np.repeat(rng.integers(10, 20, size=(2000, 1)) * bits + 32.0, 1, axis=0)
    values = rng.lognormal(0, 1, size=(2000, 1)) * 4.0 ** -bits
    capacity = costs[:, 0].sum() + 0.37 * (costs[:, -1].sum() - costs[:, 0].sum())
    sol = solve_mckp(values, costs, capacity, max_nodes=10)
    assert sol.cost <= capacity
    assert sol.bound <= sol.objective
    assert sol.gap == pytest.approx((sol.objective - sol.bound) / sol.objective)
    exact = solve_mckp(values, costs, capacity)
    assert exact.bound <= sol.objective
    assert sol.bound <= exact.objective + 1e-12
    assert sol.gap < 1e-3


def test_relative_gap_setting_is_honoured():
    rng = np.random.default_rng(8)
    for _ in range(20):
        values, costs, capacity = random_instance(rng, 300, 6, "bits")
        capacity = max(capacity, costs.min(axis=1).sum())
        loose = solve_mckp(values, costs, capacity, gap=1e-3)
        exact = solve_mckp(values, costs, capacity)
        assert loose.gap <= 1e-3 + 1e-12
        assert loose.objective <= exact.objective * (1 + 1e-3) + 1e-12
        assert loose.bound <= exact.objective + 1e-12


def test_bad_input():
    with pytest.raises(ValueError):
        solve_mckp(np.zeros((3, 2)), np.zeros((3, 3)), 1.0)
    with pytest.raises(ValueError, match="no available choice"):
        solve_mckp(np.zeros((2, 2)), np.full((2, 2), np.nan), 1.0)


def test_ilp_searcher_uses_the_knapsack_and_agrees_with_the_mip():
    for granularity in ("layer", "kernel"):
        for budget in ("size=2.5bit", "size=3bit", "bops=3.5bit", "energy=frac:0.3", "bitfusion=frac:0.6"):
            problem = small_problem((budget,), granularity)
            fast = ILPSearcher().search(problem)
            mip = ILPSearcher(method="mip").search(problem)
            assert fast.info["method"] == "mckp"
            assert fast.metrics["sensitivity"] <= mip.metrics["sensitivity"] * (1 + 1e-9), (granularity, budget)
            assert problem.fits(fast.policy)
