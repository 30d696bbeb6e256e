"""The bmpq searcher: QAT with bit-gradient sensitivities and ILP re-solves, on a small
trained task; the shared conformance suite with an evaluator."""

from __future__ import annotations

import pytest
import torch

from bitsearch.errors import SearcherSettingsError, SearcherUnsupportedError
from bitsearch.solvers.bmpq import BMPQSearcher

from task_problems import steps_problem as make_problem


FAST = {"epochs": 2, "resolve_every": 1, "steps_per_epoch": 3, "samples": 128}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_trains_resolves_and_returns_finetuned_weights(tmp_path):
    problem = make_problem(("size=3bit",))
    out = tmp_path / "bmpq.pt"
    result = BMPQSearcher(epochs=3, resolve_every=1, steps_per_epoch=4, samples=128,
                          weights_out=str(out)).search(problem, seed=1)
    info = result.info
    assert [h["epoch"] for h in info["history"]] == [0, 1, 2]  # initial solve, then after epochs 1 and 2
    assert info["epochs_run"] == 3
    assert 0.0 <= info["finetuned"]["top1"] <= 1.0
    assert set(info["state_dict"]) >= {"conv.weight", "fc1.weight", "fc2.weight"}
    saved = torch.load(out, weights_only=True)
    assert torch.equal(saved["state_dict"]["fc1.weight"], info["state_dict"]["fc1.weight"])
    assert problem.fits(result.policy)
    assert result.policy.to_dict()["search"]["searcher"] == "bmpq"


def test_several_budgets_and_searched_activations():
    problem = make_problem(("size=2.5bit", "bops=frac:0.5"), act_bits=(4, 8))
    result = BMPQSearcher(**FAST).search(problem)
    assert problem.fits(result.policy)
    assert {result.policy[n].act_bits for n in result.policy.names} <= {4, 8}


def test_needs_an_evaluator_and_checks_settings():
    from helpers import small_problem

    with pytest.raises(SearcherUnsupportedError, match="evaluator"):
        BMPQSearcher(**FAST).search(small_problem(("size=3bit",)))
    with pytest.raises(SearcherSettingsError, match="resolve_every"):
        BMPQSearcher(resolve_every=0)
    with pytest.raises(SearcherSettingsError, match="highs, cbc"):
        BMPQSearcher(solver="glpk")
