"""``mnist1d-cnn``: MNIST-1D generated offline, and a 1-D CNN with six quantizable layers.

The data come from the ``mnist1d`` package's own generator (``make_dataset``) with its
default settings except ``num_samples = 10000``: 8,000 training and 2,000 test series of
length 40, ten classes.  Its ``get_dataset()`` downloads a file; it is never called.
Generating takes a few seconds, so the arrays are cached on disk (``data/`` under the
cache directory), keyed by the generator's settings.  The generator seeds numpy's and
Python's global RNGs; their states are restored afterwards.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Task, TaskData, TrainRecipe, scale_width
from .._io import stable_hash
from .cache import cache_dir, cached_arrays
from .registry import describe

NAME = "mnist1d-cnn"
NUM_SAMPLES = 10_000
SEQUENCE_LENGTH = 40
RECIPE = TrainRecipe(epochs=40, lr=3e-3, batch_size=128, weight_decay=1e-4, optimizer="adamw", seed=0)


# The generator's settings, spelled out (mnist1d's defaults of get_dataset_args(), except
# num_samples) so that a change of its defaults cannot change the data unseen.  Reading them
# from mnist1d would also import matplotlib, which takes seconds.
SETTINGS = {"num_samples": NUM_SAMPLES, "train_split": 0.8, "template_len": 12, "padding": [36, 60],
            "scale_coeff": 0.4, "max_translation": 48, "corr_noise_scale": 0.25, "iid_noise_scale": 2e-2,
            "shear_scale": 0.75, "shuffle_seq": False, "final_seq_length": SEQUENCE_LENGTH, "seed": 42}


def generator_settings() -> dict:
    """The settings passed to mnist1d's generator, with the package's version (its
    templates are part of the data)."""
    from importlib import metadata

    try:
        version = metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {**SETTINGS, "padding": list(SETTINGS["padding"]), "mnist1d_version": version}


def generate(settings: dict) -> dict[str, np.ndarray]:
    """Run mnist1d's generator offline; the global numpy and Python RNG states are kept."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for key, value in settings.items():
        if key != "mnist1d_version":
            setattr(args, key, value)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        dataset = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {"x_train": dataset["x"].astype(np.float32), "y_train": dataset["y"].astype(np.int64),
            "x_test": dataset["x_test"].astype(np.float32), "y_test": dataset["y_test"].astype(np.int64)}


def data_path(settings: dict):
    return cache_dir() / "data" / f"mnist1d-{stable_hash(settings)}.npz"


@functools.lru_cache(maxsize=4)
def _arrays(settings_key: str) -> dict[str, np.ndarray]:
    import json

    settings = json.loads(settings_key)
    return cached_arrays(data_path(settings), lambda: generate(settings))


def load_data() -> TaskData:
    import json

    arrays = _arrays(json.dumps(generator_settings(), sort_keys=True))
    return TaskData(*(torch.from_numpy(arrays[key]).unsqueeze(1) if key.startswith("x") else
                      torch.from_numpy(arrays[key]) for key in ("x_train", "y_train", "x_test", "y_test")))


class Mnist1dCNN(nn.Module):
    """Four 1-D convolutions and two linear layers, ReLU between, dropout before each
    linear layer: conv1 1->16 (k5), conv2 16->32 (k3, stride 2), conv3 32->32 (k3,
    stride 2), conv4 32->32 (k3), fc1 320->128, fc2 128->10; about 140k MACs per sample.

    The layers differ strongly in how many bits they need: conv1 and conv2 are small and
    sensitive, fc1 holds most of the weights and, trained with dropout 0.5 on both sides,
    tolerates 2 bits.  Channels and hidden units scale with ``width_mult``."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        narrow, channels = scale_width(16, width_mult), scale_width(32, width_mult)
        hidden = scale_width(128, width_mult)
        self.conv1 = nn.Conv1d(1, narrow, 5, padding=2)
        self.conv2 = nn.Conv1d(narrow, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(channels, channels, 3, padding=1)
        self.fc1 = nn.Linear(channels * (SEQUENCE_LENGTH // 4), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = F.relu(self.fc1(self.dropout(torch.flatten(x, 1))))
        return self.fc2(self.dropout(x))


def make_task() -> Task:
    return Task(NAME, model_factory=Mnist1dCNN, data_factory=load_data, input_shape=(1, SEQUENCE_LENGTH),
                description=describe(NAME), recipe=RECIPE, data_settings=generator_settings())
