"""Pairwise sensitivities measured with forward passes, and the probe that measures them (torch)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bitsearch import searchers  # noqa: E402
from bitsearch.sensitivity import estimate  # noqa: E402
from bitsearch.sensitivity.interactions import choose_pairs, units_of  # noqa: E402
from bitsearch.sensitivity.probe import LossProbe  # noqa: E402

from task_problems import evaluator, steps_problem  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _space(granularity="layer"):
    return evaluator().space(granularity, weight_bits=(2, 3, 4, 8), act_bits=(8,))


def test_batched_passes_equal_one_by_one():
    space = _space()
    probe = LossProbe(evaluator(), space, samples=128)
    configs = [{"conv": p, "fc1": q} for p in (2, 3, 8) for q in (2, 4)] + [{"fc2": 3}, {}]
    batched = probe.losses(configs)
    assert probe.batched and probe.calls < len(configs)
    probe.batched = False
    one_by_one = probe.losses(configs)
    np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=1e-6)


def test_passes_count_distinct_settings():
    probe = LossProbe(evaluator(), _space(), samples=64)
    probe.losses([{"conv": 2}, {"conv": 2}, {"conv": 32}, {}])  # the last two are the reference
    assert probe.passes == 2


class _TwiceLoss:
    """An evaluator whose loss calls the model twice (the probe cannot replay it)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, model, batch):
        x, y = batch
        return 0.5 * (torch.nn.functional.cross_entropy(model(x), y) + torch.nn.functional.cross_entropy(model(x), y))


def test_a_loss_that_cannot_be_replayed_is_scored_one_by_one():
    space = _space()
    plain = LossProbe(evaluator(), space, samples=64)
    odd = LossProbe(_TwiceLoss(evaluator()), space, samples=64)
    configs = [{"conv": 2}, {"conv": 3}, {"conv": 4}]
    np.testing.assert_allclose(odd.losses(configs), plain.losses(configs), atol=1e-6)
    assert not odd.batched


def test_singles_and_pairs_reproduce_every_two_layer_policy_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("BITSEARCH_CACHE", str(tmp_path))
    space = _space()
    table = estimate(evaluator(), space, "pairwise", samples=128)
    info = table.pairwise.info
    names = [layer.name for layer in space.layers]
    assert info["pairs_measured"] == 3 and info["forward_passes"] == 1 + 3 * 4 + 3 * 16
    probe = LossProbe(evaluator(), space, samples=128)
    base = probe.loss({})
    rng = np.random.default_rng(0)
    for _ in range(6):
        a, b = rng.choice(len(names), 2, replace=False)
        widths = {names[a]: int(rng.choice(space.weight_bits)), names[b]: int(rng.choice(space.weight_bits))}
        measured = probe.loss(widths) - base
        # the other layers stay float: compare with the table's own entries
        pa, pb = space.weight_bits.index(widths[names[a]]), space.weight_bits.index(widths[names[b]])
        i, j = sorted((a, b))
        key = (names[i], names[j])
        pi, pj = (pa, pb) if i == a else (pb, pa)
        predicted = table.weight[names[i]][0, pi] + table.weight[names[j]][0, pj] + table.pairwise.terms[key][pi, pj]
        assert predicted == pytest.approx(measured, abs=1e-9)
    # cached: the second estimate reads the file
    again = estimate(evaluator(), space, "pairwise", samples=128)
    assert again.pairwise.terms.keys() == table.pairwise.terms.keys()
    assert any(p.name.startswith("steps-test-pairwise") for p in (tmp_path / "sensitivity").iterdir())


def test_kernel_granularity_takes_the_empirical_diagonal():
    space = _space("kernel")
    table = estimate(evaluator(), space, "pairwise", samples=64, cache=False)
    assert table.weight["conv"].shape == (space.layer("conv").kernels, 4)
    assert len(table.pairwise.terms) == 3


def test_a_budget_of_pairs_is_chosen_in_order_and_said():
    units = [("a",), ("b",), ("c",), ("d",), ("e",)]
    singles = np.array([[5.0], [0.1], [4.0], [0.2], [3.0]])
    chosen = choose_pairs(units, singles, pairs="auto", max_pairs=6, top_k=3, shared={(1, 3)})
    assert list(chosen.items())[:5] == [((0, 1), "adjacent"), ((1, 2), "adjacent"), ((2, 3), "adjacent"),
                                        ((3, 4), "adjacent"), ((1, 3), "shared-input")]
    assert list(chosen.items())[5] == ((0, 2), "top-k")
    assert len(choose_pairs(units, singles, pairs="auto", max_pairs=10)) == 10  # all fit
    assert set(choose_pairs(units, singles, pairs=[(4, 0)])) == {(0, 4)}


def test_units_follow_tied_groups():
    from helpers import small_space

    assert units_of(small_space()) == [("stem",), ("block.conv1", "block.downsample"), ("block.conv2",), ("fc",)]


def test_trust_region_never_returns_a_worse_measured_loss_than_the_ilp():
    problem = steps_problem(("size=3bit",))
    problem.ensure_sensitivity("pairwise", samples=128)
    result = searchers.create("iqp", rounds=4).search(problem)
    region = result.info["trust_region"]
    assert region["best_measured_loss"] <= region["separable_measured_loss"] + 1e-12
    assert result.info["forward_passes"] == result.info["table_forward_passes"] + result.info["search_forward_passes"]
    assert result.info["search_forward_passes"] > 0
    plain = searchers.create("iqp", trust_region=False).search(problem)
    assert plain.info["search_forward_passes"] == 0


def test_trust_region_reports_its_re_measuring_and_stops_there_when_asked():
    problem = steps_problem(("size=3bit",))
    problem.ensure_sensitivity("pairwise", samples=128)
    messages = []

    def watch(event):
        messages.append(event.message)
        return True

    searchers.create("iqp", rounds=2).search(problem, callback=watch)
    measuring = [m for m in messages if "re-measuring" in m]
    assert any("single units" in m for m in measuring) and any("pairs of units" in m for m in measuring)
    assert "forward passes" in measuring[-1]

    def stop_while_measuring(event):
        return "re-measuring" not in event.message

    stopped = searchers.create("iqp", rounds=2).search(problem, callback=stop_while_measuring)
    assert stopped.stopped_early and problem.fits(stopped.policy)
    assert stopped.info["trust_region"]["steps"][-1]["result"] == "stopped while re-measuring"
