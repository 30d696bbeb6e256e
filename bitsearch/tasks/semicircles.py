"""``semicircles-mlp``: two interleaved noisy half circles in the plane, and a small MLP.

Class 0 lies on the upper half of the unit circle, class 1 on a lower half circle shifted
right by 1 and down by 0.5, so each wraps into the other.  Angles are uniform, Gaussian
noise (standard deviation 0.2) is added, and the points are centred; everything comes from
a numpy generator seeded with 0.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Task, TaskData, TrainRecipe, scale_width
from .registry import describe

NAME = "semicircles-mlp"
DATA_SETTINGS = {"generator": "semicircles", "train": 2000, "test": 1000, "noise": 0.2, "seed": 0}
RECIPE = TrainRecipe(epochs=40, lr=1e-2, batch_size=64, weight_decay=0.0, optimizer="adamw", seed=0)


def make_semicircles(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points, half of each class (class 0 first, then class 1), shuffled."""
    labels = np.repeat(np.array([0, 1], dtype=np.int64), [n - n // 2, n // 2])
    angles = rng.uniform(0.0, np.pi, size=n)
    upper = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    lower = np.stack([1.0 - np.cos(angles), 0.5 - np.sin(angles)], axis=1)
    points = np.where(labels[:, None] == 0, upper, lower)
    points = points + rng.normal(0.0, noise, size=points.shape) - np.array([0.5, 0.25])
    order = rng.permutation(n)
    return points[order].astype(np.float32), labels[order]


class SemicirclesMLP(nn.Module):
    """linear 2->64, linear 64->64, linear 64->2 with ReLU between; hidden units scale
    with ``width_mult``."""

    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        hidden = scale_width(64, width_mult)
        self.fc1 = nn.Linear(2, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


@functools.lru_cache(maxsize=1)
def _arrays():
    settings = DATA_SETTINGS
    rng = np.random.default_rng(settings["seed"])
    x_train, y_train = make_semicircles(settings["train"], settings["noise"], rng)
    x_test, y_test = make_semicircles(settings["test"], settings["noise"], rng)
    return x_train, y_train, x_test, y_test


def load_data() -> TaskData:
    return TaskData(*(torch.from_numpy(a) for a in _arrays()))


def make_task() -> Task:
    return Task(NAME, model_factory=SemicirclesMLP, data_factory=load_data, input_shape=(2,),
                description=describe(NAME), recipe=RECIPE, data_settings=DATA_SETTINGS)
