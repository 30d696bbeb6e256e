"""Sensitivity estimators: Hutchinson traces against the exact Hessian, bit-gradients
against finite differences of the relaxed width, empirical increases as measured, the
cache, errors, and the ILP end to end on a small trained task."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsearch import sensitivity
from bitsearch.discover import discover
from bitsearch.errors import UserInputError
from bitsearch.problem import Problem
from bitsearch.quant import fake_quantize_weight
from bitsearch.sensitivity import estimators
from bitsearch.solvers.ilp import ILPSearcher
from bitsearch.tasks import Task, TaskData, TrainRecipe, scale_width


def wave_data() -> TaskData:
    """Three classes of noisy 12-step series: rising, falling, or a bump."""
    generator = torch.Generator().manual_seed(3)
    n = 600
    y = torch.randint(0, 3, (n,), generator=generator)
    t = torch.linspace(-1, 1, 12)
    shapes = torch.stack([t, -t, 1 - 2 * t.abs()])
    x = shapes[y] + 0.6 * torch.randn(n, 12, generator=generator)
    x = x.unsqueeze(1)
    return TaskData(x[:400], y[:400], x[400:], y[400:])


class WaveNet(nn.Module):
    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        c = scale_width(6, width_mult)
        self.conv = nn.Conv1d(1, c, 3, padding=1)
        self.fc1 = nn.Linear(c * 12, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def make_task() -> Task:
    return Task("wave-test", model_factory=WaveNet, data_factory=wave_data, input_shape=(1, 12),
                recipe=TrainRecipe(epochs=8, lr=1e-2, batch_size=64, seed=0), data_settings={"n": 600, "seed": 3})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: threads only add overhead on a shared machine
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def task():
    return make_task()


@pytest.fixture(scope="module")
def model(task):
    return task.trained_model()


def space_of(model, granularity="layer", weight_bits=(2, 3, 4, 8), act_bits=(8,)):
    return discover(model, torch.zeros(1, 1, 12), granularity=granularity, weight_bits=weight_bits,
                    act_bits=act_bits, model_name="wave-test")


# --- hessian ------------------------------------------------------------------------------------
def exact_kernel_traces(model, name, x, y):
    """The diagonal of the Hessian of the mean loss in one layer's weight, summed per kernel."""
    weight = dict(model.named_modules())[name].weight
    key = f"{name}.weight"

    def loss_of(w):
        return F.cross_entropy(torch.func.functional_call(model, {key: w}, (x,)), y)

    hessian = torch.autograd.functional.hessian(loss_of, weight.detach().clone())
    n = weight.numel()
    diag = hessian.reshape(n, n).diagonal().reshape(weight.shape)
    return diag.reshape(weight.shape[0], -1).sum(dim=1).double().numpy()


def test_hutchinson_traces_match_the_exact_hessian(task, model):
    space = space_of(model, "kernel")
    data = task.data()
    batches = estimators.sample_batches(data.x_train, data.y_train, 128, 64, seed=0)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    modules = estimators._modules(model, space)
    traces = estimators.hutchinson_traces(model, modules, batches, probes=800, seed=0)
    for name in ("conv", "fc2"):
        exact = exact_kernel_traces(model, name, x, y)
        estimate = traces[name]
        scale = np.abs(exact).sum()
        assert np.abs(estimate - exact).sum() < 0.2 * scale, (name, estimate, exact)
        assert estimate.sum() == pytest.approx(exact.sum(), rel=0.1)
    assert all(p.requires_grad for p in model.parameters())  # parameters restored


def test_hessian_table_is_trace_times_quantization_error(task, model):
    space = space_of(model, "layer")
    table = sensitivity.estimate(task, space, "hessian", cache=False, samples=256, probes=8)
    data = task.data()
    batches = estimators.sample_batches(data.x_train, data.y_train, 256, 256, seed=0)
    modules = estimators._modules(model, space)
    torch.manual_seed(0)
    traces = estimators.hutchinson_traces(model, modules, batches, probes=8, seed=0)
    for layer in space.layers:
        w = modules[layer.name].weight
        errors = [float((fake_quantize_weight(w.detach(), b) - w.detach()).pow(2).sum()) for b in space.weight_bits]
        expected = max(traces[layer.name].sum(), 0) / layer.params * np.array(errors)
        np.testing.assert_allclose(table.weight[layer.name][0], expected, rtol=1e-5)
        assert np.all(np.diff(table.weight[layer.name][0]) <= 0)  # more bits, less loss
    kernel_table = sensitivity.estimate(task, space_of(model, "kernel"), "hessian", cache=False, samples=256, probes=8)
    assert kernel_table.weight["conv"].shape == (6, 4)
    assert np.all(kernel_table.weight["conv"] >= 0)


# --- bitgrad ------------------------------------------------------------------------------------
def test_bit_gradient_is_the_derivative_of_the_relaxed_width(task, model):
    space = space_of(model, "kernel", weight_bits=(2, 3, 4))
    data = task.data()
    batches = estimators.sample_batches(data.x_train, data.y_train, 200, 200, seed=0)
    modules = estimators._modules(model, space)
    grads = estimators.bit_gradients(model, modules, batches, [2, 3, 4])
    x, y = batches[0]
    w = modules["fc1"].weight.detach()
    q2, q3 = fake_quantize_weight(w, 2), fake_quantize_weight(w, 3)
    double = copy.deepcopy(model).double()  # float64, so that a small step is resolved
    eps = 1e-6

    def loss_with(weight):
        with torch.no_grad():
            logits = torch.func.functional_call(double, {"fc1.weight": weight}, (x.double(),))
            return float(F.cross_entropy(logits, y, reduction="sum") / len(y))

    for k in (0, 3, 7):
        mixed = q2.double().clone()
        mixed[k] = q2[k].double() + eps * (q3[k].double() - q2[k].double())  # kernel k at width 2 + eps
        finite = (loss_with(mixed) - loss_with(q2.double())) / eps
        assert grads["fc1"][k, 0] == pytest.approx(finite, rel=1e-3, abs=1e-7)


def test_bitgrad_table_integrates_to_the_widest_width(task, model):
    space = space_of(model, "layer", weight_bits=(2, 4, 8))
    table = sensitivity.estimate(task, space, "bitgrad", cache=False, samples=256)
    for layer in space.layers:
        row = table.weight[layer.name][0]
        assert row[-1] == 0.0
        assert np.all(np.diff(row) <= 0)
        assert row[0] > 0


# --- empirical ----------------------------------------------------------------------------------
def test_empirical_layer_values_are_measured_increases(task, model):
    space = space_of(model, "layer")
    table = sensitivity.estimate(task, space, "empirical", cache=False, samples=300)
    data = task.data()
    batches = estimators.sample_batches(data.x_train, data.y_train, 300, 512, seed=0)
    base = estimators._mean_loss(model, batches)
    w = dict(model.named_modules())["fc1"].weight.detach()
    quantized = estimators._mean_loss(model, batches, {"fc1.weight": fake_quantize_weight(w, 2)})
    assert table.weight["fc1"][0, 0] == pytest.approx(max(0.0, quantized - base), rel=1e-9)


def test_empirical_kernel_groups_share_the_measured_increase(task, model):
    space = space_of(model, "kernel")
    data = task.data()
    batches = estimators.sample_batches(data.x_train, data.y_train, 300, 512, seed=0)
    grouped = estimators.empirical_table(model, space, batches, groups=2)
    exact = estimators.empirical_table(model, space, batches, groups=1000)
    base = estimators._mean_loss(model, batches)
    w = dict(model.named_modules())["conv"].weight.detach()
    q = fake_quantize_weight(w, 2)
    first_half = w.clone()
    first_half[:3] = q[:3]
    increase = max(0.0, estimators._mean_loss(model, batches, {"conv.weight": first_half}) - base)
    assert grouped["conv"][:3, 0].sum() == pytest.approx(increase, rel=1e-9)
    alone = w.clone()
    alone[4] = q[4]
    single = max(0.0, estimators._mean_loss(model, batches, {"conv.weight": alone}) - base)
    assert exact["conv"][4, 0] == pytest.approx(single, rel=1e-9)


def test_searched_activations_get_an_activation_table(task, model):
    space = space_of(model, "layer", act_bits=(4, 8))
    table = sensitivity.estimate(task, space, "bitgrad", cache=False, samples=128)
    assert table.act_bits == (4, 8)
    for layer in space.layers:
        assert table.act[layer.name].shape == (2,)
        assert np.all(table.act[layer.name] >= 0)
    table.check_covers(space)


# --- estimate(): cache, errors --------------------------------------------------------------------
def test_estimate_is_cached_per_model_method_and_settings(task, model, tmp_path, monkeypatch):
    monkeypatch.setenv("BITSEARCH_CACHE", str(tmp_path))
    space = space_of(model, "layer")
    first = sensitivity.estimate(task, space, "empirical", samples=128)
    path = sensitivity.cache_path(task, space, "empirical", samples=128)
    assert path.exists() and str(path).startswith(str(tmp_path))
    record = json.loads(path.read_text())
    assert record["method"] == "empirical" and record["settings"]["samples"] == 128

    def boom(*args, **kwargs):
        raise AssertionError("computed again instead of reading the cache")

    monkeypatch.setattr(estimators, "compute", boom)
    again = sensitivity.estimate(task, space, "empirical", samples=128)
    for name in first.weight:
        np.testing.assert_array_equal(first.weight[name], again.weight[name])
    assert sensitivity.cache_path(task, space, "empirical", samples=64) != path
    assert sensitivity.cache_path(task, space, "hessian", samples=128) != path
    assert sensitivity.cache_path(task, space_of(model, "kernel"), "empirical", samples=128) != path


def test_same_seed_same_table(task, model):
    space = space_of(model, "kernel")
    a = sensitivity.estimate(task, space, "hessian", cache=False, samples=128, probes=4, seed=5)
    b = sensitivity.estimate(task, space, "hessian", cache=False, samples=128, probes=4, seed=5)
    for name in a.weight:
        np.testing.assert_array_equal(a.weight[name], b.weight[name])


def test_errors(task, model):
    space = space_of(model)
    with pytest.raises(UserInputError, match="hessian, bitgrad, empirical"):
        sensitivity.estimate(task, space, "fisher")
    with pytest.raises(UserInputError, match="probes"):
        sensitivity.estimate(task, space, "empirical", probes=3)
    shape_only = Task("shape-only-wave", model_factory=WaveNet, input_shape=(1, 12))
    with pytest.raises(UserInputError, match="shape-only"):
        sensitivity.estimate(shape_only, space, "hessian")


def test_import_of_the_package_stays_torch_free():
    import subprocess
    import sys

    code = "import sys, bitsearch.sensitivity; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_ilp_on_estimated_tables(task, model):
    for method in sensitivity.METHODS:
        space = space_of(model, "layer")
        extra = {"probes": 4} if method == "hessian" else {}
        table = sensitivity.estimate(task, space, method, cache=False, samples=200, **extra)
        problem = Problem.build(space, ["size=3bit"], sensitivity=table)
        result = ILPSearcher().search(problem)
        assert problem.fits(result.policy)
        assert result.metrics["sensitivity"] <= table.loss(space, Policy_uniform(space, 3)) + 1e-12


def Policy_uniform(space, bits):
    from bitsearch.policy import Policy

    return Policy.uniform(space, bits)
