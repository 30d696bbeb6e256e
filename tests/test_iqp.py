"""The iqp searcher and the pairwise tables it minimises (synthetic tables: no torch)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest

from bitsearch import searchers
from bitsearch.encoding import Encoding
from bitsearch.errors import ProblemFileError, SearcherUnsupportedError
from bitsearch.sensitivity import SensitivityTable
from bitsearch.sensitivity.pairwise import PairwiseTable
from bitsearch.solvers.iqp import hamming, product_variables, solve_exact, solve_local
from bitsearch.tabular import load_problem, problem_from_dict, problem_to_dict

from helpers import pairwise_problem, small_space, synthetic_pairwise, synthetic_sensitivity


def brute_force(problem):
    """The model's optimum over every policy within the budgets (and its value)."""
    space = problem.space
    encoding = Encoding(space)
    best, value = None, np.inf
    acts = [range(len(space.act_bits))] * len(space.groups()) if space.act_searched else []
    for weights in itertools.product(range(len(space.weight_bits)), repeat=encoding.n_weight_units):
        for act in itertools.product(*acts) if acts else [None]:
            policy = encoding.decode(weights, act)
            if problem.fits(policy):
                v = problem.sensitivity.predicted_loss(space, policy)
                if v < value:
                    best, value = policy, v
    return best, value


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("budgets", [("size=3bit",), ("size=2.5bit", "bops=4bit")])
def test_exact_path_finds_the_models_optimum(seed, budgets):
    problem = pairwise_problem(budgets, seed=seed, strength=3.0)
    solution = solve_exact(problem)
    _, value = brute_force(problem)
    assert solution.info["status"] == "optimal"
    assert solution.info["objective"] == pytest.approx(value, rel=1e-9, abs=1e-12)
    assert solution.info["bound"] <= value + 1e-9
    assert problem.fits(solution.policy)


def test_exact_path_with_searched_activations():
    space = small_space(act_bits=(4, 8))
    table = replace(synthetic_sensitivity(space, 5), pairwise=synthetic_pairwise(space, 5, 3.0))
    from bitsearch.problem import Problem

    problem = Problem.build(space, ("bops=4bit",), sensitivity=table)
    solution = solve_exact(problem)
    _, value = brute_force(problem)
    assert solution.info["objective"] == pytest.approx(value, rel=1e-9)


def test_interactions_change_the_answer_and_the_ilp_does_not_see_them():
    # strong interactions: the separable optimum is not the IQP's
    differs = 0
    for seed in range(6):
        problem = pairwise_problem(("size=3bit",), seed=seed, strength=5.0)
        ilp_policy = searchers.create("ilp").search(problem).policy
        iqp = searchers.create("iqp").search(problem)
        assert iqp.score >= problem.score(problem.evaluate(ilp_policy)) - 1e-12
        differs += ilp_policy.key != iqp.policy.key
    assert differs >= 1


def test_trust_region_row_limits_the_distance():
    problem = pairwise_problem(("size=3bit",), seed=1, strength=5.0)
    anchor = searchers.create("ilp").search(problem).policy
    for radius in (0, 1, 2):
        policy = solve_exact(problem, region=(anchor, radius)).policy
        assert hamming(problem.space, anchor, policy) <= radius
    assert solve_exact(problem, region=(anchor, 0)).policy.key == anchor.key


@pytest.mark.parametrize("granularity", ["layer", "kernel"])
def test_local_path_never_worse_than_its_start(granularity):
    for seed in range(4):
        problem = pairwise_problem(("size=3bit",), granularity, seed=seed, strength=3.0)
        start = searchers.create("ilp").search(problem).policy
        solution = solve_local(problem, start)
        table = problem.sensitivity
        assert table.predicted_loss(problem.space, solution.policy) <= table.predicted_loss(problem.space, start) + 1e-12
        assert problem.fits(solution.policy)


def test_local_path_close_to_exact_at_layer_granularity():
    gaps = []
    for seed in range(6):
        problem = pairwise_problem(("size=3bit",), seed=seed, strength=3.0)
        exact = solve_exact(problem).info["objective"]
        start = searchers.create("ilp").search(problem).policy
        local = solve_local(problem, start).info["objective"]
        gaps.append(local - exact)
    assert min(gaps) >= -1e-9
    assert sum(g <= 1e-9 for g in gaps) >= 3  # the local path reaches the optimum on most


def test_kernel_mean_field_equals_layerwise_terms_at_uniform_kernels():
    layer = pairwise_problem(("size=3bit",), "layer", strength=2.0)
    kernel = pairwise_problem(("size=3bit",), "kernel", strength=2.0)
    policy = searchers.create("ilp").search(layer).policy
    kernel_policy = kernel.validate(policy.to_granularity("kernel", kernel.space)
                                    if hasattr(policy, "to_granularity") else _as_kernels(policy, kernel.space))
    assert kernel.sensitivity.pairwise.interaction(kernel.space, kernel_policy) == pytest.approx(
        layer.sensitivity.pairwise.interaction(layer.space, policy))


def _as_kernels(policy, space):
    from bitsearch.policy import LayerBits, Policy

    return Policy(tuple((l.name, LayerBits((policy[l.name].weight_bits,) * l.kernels, policy[l.name].act_bits))
                        for l in space.layers), "kernel")


def test_auto_takes_the_local_path_beyond_the_exact_limit():
    problem = pairwise_problem(("size=3bit",))
    assert product_variables(problem) == 6 * 16  # 4 units (one tied pair): 6 pairs of 4x4 products
    result = searchers.create("iqp", exact_limit=10).search(problem)
    assert result.info["path"] == "local"
    assert searchers.create("iqp").search(problem).info["path"] == "mip"
    with pytest.raises(SearcherUnsupportedError, match="layer granularity"):
        searchers.create("iqp", method="mip").search(pairwise_problem(("size=3bit",), "kernel"))


def test_a_table_without_pairs_is_refused_with_a_clear_message():
    from helpers import small_problem

    with pytest.raises(SearcherUnsupportedError, match="pairwise sensitivities"):
        searchers.create("iqp").search(small_problem(("size=3bit",)))


def test_result_fields_match_the_ilps():
    problem = pairwise_problem(("size=3bit",), strength=3.0)
    iqp = searchers.create("iqp").search(problem).info
    ilp = searchers.create("ilp", method="mip").search(problem).info
    for key in ("method", "solver", "status", "objective", "bound", "gap", "variables", "constraints", "seconds"):
        assert key in iqp and key in ilp, key
    assert iqp["forward_passes"] == 0  # a synthetic table: nothing measured


# --- the table and the problem file ----------------------------------------------------------------
def test_pairwise_table_round_trips_through_json():
    problem = pairwise_problem(("size=3bit",), strength=2.0)
    table = problem.sensitivity
    again = SensitivityTable.from_dict(json.loads(table.to_json()))
    policy = searchers.create("ilp").search(problem).policy
    assert again.predicted_loss(problem.space, policy) == pytest.approx(table.predicted_loss(problem.space, policy))
    assert again.pairwise.selected == table.pairwise.selected


def test_problem_file_pairwise_block_round_trips(tmp_path):
    problem = pairwise_problem(("size=3bit",), strength=2.0)
    document = problem_to_dict(problem)
    assert len(document["pairwise"]["pairs"]) == 10  # 5 layers
    path = tmp_path / "p.json"
    path.write_text(json.dumps(document))
    loaded = load_problem(path, ["size=3bit"])
    a = searchers.create("iqp").search(problem)
    b = searchers.create("iqp").search(loaded)
    assert a.policy.key == b.policy.key
    assert a.score == pytest.approx(b.score)


def _document():
    return problem_to_dict(pairwise_problem(("size=3bit",), strength=2.0))


def test_problem_file_pairwise_errors_are_named():
    doc = _document()
    doc["pairwise"]["pairs"][0]["layers"] = ["stem", "nope"]
    del doc["pairwise"]["pairs"][1]["terms"]["2"]["8"]
    doc["pairwise"]["pairs"].append(dict(doc["pairwise"]["pairs"][2]))
    with pytest.raises(ProblemFileError) as info:
        problem_from_dict(doc, ["size=3bit"])
    message = str(info.value)
    assert "unknown layers ['nope']" in message
    assert "missing [('2', '8')]" in message
    assert "appears twice" in message
    doc = _document()
    doc["pairwise"]["pairs"][0]["layerz"] = doc["pairwise"]["pairs"][0].pop("layers")
    with pytest.raises(ProblemFileError, match="layers"):
        problem_from_dict(doc, ["size=3bit"])


def test_negative_separable_values_are_allowed_beside_pairs_only():
    doc = _document()
    doc["layers"][0]["sensitivity"]["8"][0] = -0.001  # a measured loss change can be below zero
    problem_from_dict(doc, ["size=3bit"])
    del doc["pairwise"]
    with pytest.raises(ProblemFileError, match="negative"):
        problem_from_dict(doc, ["size=3bit"])


def test_pair_terms_are_checked():
    with pytest.raises(Exception, match="shape"):
        PairwiseTable((2, 4), {("a", "b"): [[1.0, 2.0]]})
    with pytest.raises(Exception, match="itself"):
        PairwiseTable((2, 4), {("a", "a"): np.zeros((2, 2))})
