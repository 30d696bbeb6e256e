"""Sensitivity estimation reports its progress, step by step, and the table does not depend on it."""

import numpy as np
import pytest

from bitsearch import sensitivity
from bitsearch.build import SpaceOptions, space_for_task
from bitsearch.tasks import get_task


@pytest.fixture(scope="module")
def task_and_space():
    task = get_task("semicircles-mlp")
    return task, space_for_task(task, SpaceOptions(weight_bits=(2, 4, 8), act_bits=(4, 8)))


@pytest.mark.parametrize("method, steps", [
    ("hessian", ["Hessian traces", "activation widths"]),
    ("bitgrad", ["bit gradients", "activation widths"]),
    ("empirical", ["quantizing each layer alone", "activation widths"]),
    ("pairwise", ["single units", "pairs of units", "activation widths"]),
])
def test_each_step_is_reported_to_its_end_and_changes_nothing(task_and_space, method, steps):
    task, space = task_and_space
    told = []
    table = sensitivity.estimate(task, space, method, cache=False, progress=lambda *event: told.append(event))
    assert list(dict.fromkeys(step for step, *_ in told)) == steps
    for step in steps:
        events = [(done, total) for name, done, total, _ in told if name == step]
        assert events[-1][0] == events[-1][1] > 0  # it reaches its total
        assert [done for done, _ in events] == sorted(done for done, _ in events)
    quiet = sensitivity.estimate(task, space, method, cache=False)
    for name in table.weight:
        assert np.array_equal(table.weight[name], quiet.weight[name])
    if method == "pairwise":
        assert table.pairwise.info["forward_passes"] == quiet.pairwise.info["forward_passes"]
        assert "forward passes" in told[-len(space.layers) - 1][3]  # the last pair's detail counts them
