"""Decision units: the Encoding's structure and cost.unit_tables, the one source every searcher plans with."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bitsearch.cost import LatencyTableCost, unit_tables
from bitsearch.encoding import Encoding
from bitsearch.problem import Problem
from bitsearch.space import Layer, Pin, SearchSpace

from helpers import small_problem, small_space

PINS = (("stem", Pin(8, 8)), ("fc", Pin(8, None)))
SPACES = [dict(granularity=g, act_bits=a, pinned=p, tied=t)
          for g in ("layer", "kernel") for a in ((8,), (4, 8), None) for p in ((), PINS) for t in (True, False)]


@pytest.mark.parametrize("options", SPACES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_the_structure_matches_the_spaces_units_and_groups(options):
    space = small_space(**options)
    enc = Encoding(space)
    units = space.weight_units()
    assert enc.n_weight_units == len(units) == space.num_decisions() - enc.n_act_units
    assert enc.unit_layer.tolist() == [u.layers[0] for u in units]
    assert enc.unit_kernel.tolist() == [-1 if u.kernel is None else u.kernel for u in units]
    assert enc.unit_layers == tuple(u.layers for u in units)
    assert enc.free_layers.tolist() == list(space.free_layers())
    assert enc.groups == space.groups()
    for g, group in enumerate(space.groups()):
        assert all(enc.layer_group[i] == g for i in group)
        assert enc.group_units[g].tolist() == [u for u, unit in enumerate(units) if unit.layers[0] in group]
    assert all(enc.layer_group[i] == -1 for i, layer in enumerate(space.layers) if space.is_pinned(layer.name))
    assert enc.unit_group.tolist() == [enc.layer_group[u.layers[0]] for u in units]
    for i in space.free_layers():  # each free layer reads its widths from its slice of units
        sl = enc.layer_slices[i]
        assert [u for u in range(sl.start, sl.stop)] == [u for u, unit in enumerate(units) if i in unit.layers]
        if space.granularity == "kernel":
            assert sl.stop - sl.start == space.layers[i].kernels
    assert set(enc.layer_slices) == set(space.free_layers())


@pytest.mark.parametrize("options", SPACES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_decode_and_encode_round_trip(options):
    space = small_space(**options)
    enc = Encoding(space)
    rng = np.random.default_rng(0)
    for _ in range(10):
        weights = rng.integers(0, enc.n_weight_choices, enc.n_weight_units)
        acts = rng.integers(0, enc.n_act_choices, enc.n_act_units)
        policy = enc.decode(weights, acts)
        back_w, back_a = enc.encode(policy)
        assert np.array_equal(back_w, weights) and np.array_equal(back_a, acts)
        for name, pin in space.pins.items():
            assert policy[name].max_weight_bits == pin.weight_bits and policy[name].act_bits == pin.act_bits


def _reference_costs(problem, enc):
    """The planning costs written out one unit at a time with CostModel.layer_cost."""
    space = problem.space
    out = np.zeros((len(problem.budgets), len(space.act_choices), enc.n_weight_units, len(space.weight_bits)))
    for b, budget in enumerate(problem.budgets):
        model = problem.costs[budget.cost]
        for a, act in enumerate(space.act_choices):
            for u, layers in enumerate(enc.unit_layers):
                for i in layers:
                    layer = space.layers[i]
                    row = np.array([model.layer_cost(layer, w, act) for w in space.weight_bits])
                    out[b, a, u] += row / layer.kernels if space.granularity == "kernel" else row
    return out


@pytest.mark.parametrize("options", SPACES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_unit_tables_are_the_cost_models_prices(options):
    space = small_space(**options)
    problem = Problem.build(space, ("size=3bit", "bops=frac:0.6", "energy=frac:0.9"))
    tables = unit_tables(problem)
    enc = tables.encoding
    assert tables.costs.shape == (3, len(space.act_choices), enc.n_weight_units, len(space.weight_bits))
    assert np.array_equal(tables.costs, _reference_costs(problem, enc))
    assert tables.costs[0, 0].flags.c_contiguous  # one (units, widths) array per budget and act choice
    for b, budget in enumerate(problem.budgets):
        model = problem.costs[budget.cost]
        pins = space.pins
        assert tables.pinned[b] == math.fsum(model.layer_cost(space.layer(n), p.weight_bits, p.act_bits)
                                             for n, p in pins.items())
        assert tables.free_limits[b] == budget.limit - tables.pinned[b]
    assert tables.separable.all()
    rng = np.random.default_rng(1)
    for _ in range(10):  # separable models: pinned + the units' planned costs is the reference cost
        weights = rng.integers(0, enc.n_weight_choices, enc.n_weight_units)
        acts = rng.integers(0, enc.n_act_choices, enc.n_act_units)
        policy = enc.decode(weights, acts)
        planned = tables.planned(weights, acts)
        exact = [problem.costs[b.cost].cost(space, policy) for b in problem.budgets]
        assert planned == pytest.approx(exact, rel=1e-12)


def test_a_latency_table_is_not_separable_per_kernel():
    space = small_space("kernel")
    rows = {(layer.name, w, 8): 0.01 * (1 + i) * w for i, layer in enumerate(space.layers) for w in space.weight_bits}
    latency = LatencyTableCost(rows, device="test")
    problem = Problem.build(space, ("latency=frac:0.5", "size=3bit"), cost_models={"latency": latency})
    tables = unit_tables(problem)
    assert tables.per_kernel == ("max", "sum") and tables.separable.tolist() == [False, True]
    k = list(tables.encoding.free_layers).index(space.index_of("fc"))
    assert tables.layer_table(0, space.index_of("fc")).ravel().tolist() == [latency.layer_cost(space.layer("fc"), w, 8)
                                                                           for w in space.weight_bits]
    assert np.array_equal(tables.layer_costs[0, k, :, 0], tables.layer_table(0, space.index_of("fc"))[:, 0])
    layer_wise = unit_tables(Problem.build(small_space("layer"), ("latency=frac:0.5",), cost_models={"latency": latency}))
    assert layer_wise.separable.tolist() == [True]


def test_the_ilp_choices_are_weight_major():
    problem = small_problem(("bops=4bit",), "layer", act_bits=(4, 8))
    tables = unit_tables(problem)
    choices = tables.unit_choice_costs(0)
    n_act = len(problem.space.act_bits)
    assert choices.shape == (tables.encoding.n_weight_units, len(problem.space.weight_bits) * n_act)
    assert choices[2, 1 * n_act + 0] == tables.costs[0, 0, 2, 1]


def test_a_million_kernels_need_no_object_per_unit(monkeypatch):
    """Encoding, unit_tables, decode and encode stay numpy at scale: no WeightUnit per kernel."""
    layers = tuple(Layer(f"conv{i}", "conv2d", params=1000 * 64 * 9, macs=1000 * 64 * 9 * 49, kernels=1000,
                         in_channels=64, out_channels=1000, kernel_size=(3, 3), stride=(1, 1), out_spatial=(7, 7))
                   for i in range(1000))
    space = SearchSpace(layers, weight_bits=(2, 3, 4, 5, 6, 7, 8), granularity="kernel")
    problem = Problem.build(space, ("size=4bit",))

    def no_units(self):
        raise AssertionError("a WeightUnit per kernel was built")

    monkeypatch.setattr(SearchSpace, "weight_units", no_units)
    enc = Encoding(space)
    tables = unit_tables(problem, enc)
    assert enc.n_weight_units == 1_000_000 and tables.costs.shape == (1, 1, 1_000_000, 7)
    weights, acts = enc.uniform(2)
    policy = enc.decode(weights, acts)
    assert np.array_equal(enc.encode(policy)[0], weights)
    assert tables.planned(weights, acts)[0] == pytest.approx(problem.budgets[0].limit, rel=1e-9)
