"""The bmpq searcher: QAT with bit-gradient sensitivities and ILP re-solves, on a small
trained task; the shared conformance suite with an evaluator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitsearch.errors import SearcherSettingsError
from bitsearch.evaluate import Evaluator
from bitsearch.problem import Problem
from bitsearch.solvers.bmpq import BMPQSearcher
from bitsearch.tasks import Task, TaskData, TrainRecipe, scale_width

from conformance import SearcherConformance


def steps_data() -> TaskData:
    """Three classes of noisy 10-step series: a step up early, late, or never."""
    generator = torch.Generator().manual_seed(7)
    n = 480
    y = torch.randint(0, 3, (n,), generator=generator)
    t = torch.arange(10).float()
    where = torch.tensor([3.0, 7.0, 99.0])[y]
    x = (t[None, :] > where[:, None]).float() + 0.5 * torch.randn(n, 10, generator=generator)
    return TaskData(x[:320].unsqueeze(1), y[:320], x[320:].unsqueeze(1), y[320:])


class StepNet(nn.Module):
    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        c = scale_width(6, width_mult)
        self.conv = nn.Conv1d(1, c, 3, padding=1)
        self.fc1 = nn.Linear(c * 10, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


TASK = Task("steps-test", model_factory=StepNet, data_factory=steps_data, input_shape=(1, 10),
            recipe=TrainRecipe(epochs=10, lr=1e-2, batch_size=64, seed=0), data_settings={"n": 480, "seed": 7})
FAST = {"epochs": 2, "resolve_every": 1, "steps_per_epoch": 3, "samples": 128}


pytestmark = pytest.mark.usefixtures("one_thread")


_EVALUATOR = {}


def evaluator():
    if "e" not in _EVALUATOR:
        _EVALUATOR["e"] = Evaluator(TASK)
    return _EVALUATOR["e"]


def make_problem(budgets, granularity="layer", weight_bits=(2, 3, 4, 8), act_bits=(8,)):
    ev = evaluator()
    space = ev.space(granularity, weight_bits=weight_bits, act_bits=act_bits)
    return Problem.build(space, budgets, evaluator=ev)


class TestBMPQConformance(SearcherConformance):
    searcher = "bmpq"
    settings = FAST
    granularities = ("layer", "kernel")

    def make_problem(self, budgets, granularity):
        return make_problem(budgets, granularity)


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

    with pytest.raises(SearcherSettingsError, match="evaluator"):
        BMPQSearcher(**FAST).search(small_problem(("size=3bit",)))
    with pytest.raises(SearcherSettingsError, match="resolve_every"):
        BMPQSearcher(resolve_every=0)
    with pytest.raises(SearcherSettingsError, match="highs, cbc"):
        BMPQSearcher(solver="glpk")
