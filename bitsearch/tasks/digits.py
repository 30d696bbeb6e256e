"""``digits-cnn``: scikit-learn's 8x8 handwritten digits and a small 2-D CNN.

The 1,797 images ship with scikit-learn (no download).  Pixels are scaled from 0..16
to 0..1; a permutation seeded with 0 puts 1,437 images in the training split and 360
in the test split.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Task, TaskData, TrainRecipe, scale_width
from .registry import describe

NAME = "digits-cnn"
DATA_SETTINGS = {"source": "sklearn.datasets.load_digits", "test_fraction": 0.2, "split_seed": 0,
                 "scale": "pixels/16"}
RECIPE = TrainRecipe(epochs=30, lr=3e-3, batch_size=64, weight_decay=1e-4, optimizer="adamw", seed=0)


class DigitsCNN(nn.Module):
    """conv 1->16 (3x3), conv 16->32 (3x3), max-pool to 4x4, conv 32->32 (3x3), max-pool
    to 2x2, linear 128->10; ReLU between.  Channels scale with ``width_mult``."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 10):
        super().__init__()
        c1, c2, c3 = (scale_width(c, width_mult) for c in (16, 32, 32))
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.fc = nn.Linear(c3 * 2 * 2, num_classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc(torch.flatten(x, 1))


@functools.lru_cache(maxsize=1)
def _arrays():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(DATA_SETTINGS["split_seed"]).permutation(len(y))
    n_test = math.ceil(len(y) * DATA_SETTINGS["test_fraction"])
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_data() -> TaskData:
    x_train, y_train, x_test, y_test = _arrays()
    return TaskData(torch.from_numpy(x_train), torch.from_numpy(y_train),
                    torch.from_numpy(x_test), torch.from_numpy(y_test))


def make_task() -> Task:
    return Task(NAME, model_factory=DigitsCNN, data_factory=load_data, input_shape=(1, 8, 8),
                description=describe(NAME), recipe=RECIPE, data_settings=DATA_SETTINGS)
