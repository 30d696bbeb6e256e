"""Problems on small trained tasks (torch), shared by the conformance table and the searcher tests."""

from __future__ import annotations

import functools

import torch
from torch import nn

from bitsearch.evaluate import Evaluator
from bitsearch.problem import Problem
from bitsearch.tasks import Task, TaskData, TrainRecipe, get_task, scale_width


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


@functools.lru_cache(maxsize=None)
def evaluator():
    """The steps task's evaluator (trained once per session)."""
    return Evaluator(TASK)


def steps_problem(budgets, granularity="layer", weight_bits=(2, 3, 4, 8), act_bits=(8,)):
    ev = evaluator()
    space = ev.space(granularity, weight_bits=weight_bits, act_bits=act_bits)
    return Problem.build(space, budgets, evaluator=ev)


@functools.lru_cache(maxsize=None)
def task_evaluator(task_name):
    return Evaluator(get_task(task_name))


def task_problem(budgets, granularity="layer", task="digits-cnn", weight_bits=(2, 3, 4, 8), act_bits=(8,)):
    """A problem on a built-in task (its float model trained once per session)."""
    evaluator = task_evaluator(task)
    space = evaluator.space(granularity, weight_bits, act_bits)
    return Problem.build(space, budgets, evaluator=evaluator, task=task)
