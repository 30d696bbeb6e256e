"""User-task factories for tests/test_tasks.py (imported as ``task_factories:...``)."""

import torch
from torch import nn

from bitsearch.tasks import Task, TaskData, TrainRecipe, scale_width

CALLS = {"data": 0}


def tiny_data() -> TaskData:
    CALLS["data"] += 1
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(300, 4, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TaskData(x[:200], y[:200], x[200:], y[200:])


class TinyMLP(nn.Module):
    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        hidden = scale_width(8, width_mult)
        self.fc1 = nn.Linear(4, hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def make_tiny(epochs: int = 3, seed: int = 0) -> Task:
    return Task("tiny-mlp", model_factory=TinyMLP, data_factory=tiny_data, input_shape=(4,),
                description="a tiny two-class MLP for tests",
                recipe=TrainRecipe(epochs=epochs, lr=1e-2, batch_size=32, seed=seed),
                data_settings={"samples": 300, "seed": 1})


TINY = make_tiny()  # a Task object itself is accepted as well as a factory


def not_a_task():
    return 42


def raises():
    raise RuntimeError("the data server is down")


def model_factory_returns_junk() -> Task:
    return Task("junk-model", model_factory=lambda width_mult: "not a module", input_shape=(4,))


def data_of_wrong_shape() -> Task:
    return Task("wrong-shape", model_factory=TinyMLP, data_factory=tiny_data, input_shape=(5,))


NOT_CALLABLE = "a string"


def tiny_shape_only() -> Task:
    """The tiny MLP without data: a shape-only task (costs, latency tables), built in milliseconds."""
    return Task("tiny-shape", model_factory=TinyMLP, input_shape=(4,), description="the tiny MLP, shape only")
