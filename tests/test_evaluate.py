"""Evaluator: post-training quantization with calibration, fine-tuning, caching, determinism."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from bitsearch.errors import PolicyError, TaskError  # noqa: E402
from bitsearch.evaluate import Evaluator  # noqa: E402
from bitsearch.policy import LayerBits, Policy  # noqa: E402
from bitsearch.problem import Problem  # noqa: E402
from bitsearch.tasks import Task, TaskData, TrainRecipe, scale_width  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def bumps_data() -> TaskData:
    """Three classes: a bump early, in the middle, or late in a noisy series of 16."""
    generator = torch.Generator().manual_seed(0)
    n = 900
    y = torch.randint(0, 3, (n,), generator=generator)
    t = torch.arange(16, dtype=torch.float32)
    centre = 3.0 + 4.5 * y.float() + torch.rand(n, generator=generator) * 2
    x = torch.exp(-0.5 * (t[None, :] - centre[:, None]) ** 2) * 2.0
    x = x + 0.9 * torch.randn(n, 16, generator=generator)
    x = x.unsqueeze(1)
    return TaskData(x[:600], y[:600], x[600:], y[600:])


class BumpNet(nn.Module):
    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        c = scale_width(8, width_mult)
        self.conv1 = nn.Conv1d(1, c, 3, padding=1)
        self.conv2 = nn.Conv1d(c, c, 3, stride=2, padding=1)
        self.fc = nn.Linear(c * 8, 3)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def make_task() -> Task:
    return Task("bumps-test", model_factory=BumpNet, data_factory=bumps_data, input_shape=(1, 16),
                recipe=TrainRecipe(epochs=8, lr=1e-2, batch_size=64, seed=0),
                data_settings={"n": 900, "seed": 0})


@pytest.fixture(scope="module")
def task():
    return make_task()


@pytest.fixture(scope="module")
def evaluator(task):
    return Evaluator(task)


def test_float_model_learned_the_task(evaluator):
    assert evaluator.float_metrics()["top1"] > 0.85


def test_space_comes_from_discover(evaluator):
    space = evaluator.space(weight_bits=(2, 4, 8))
    assert space.names == ("conv1", "conv2", "fc")
    assert space.model_name == "bumps-test" and space.weight_bits == (2, 4, 8)
    assert evaluator.space(granularity="kernel").fingerprint == space.fingerprint


def test_ptq_metrics_and_their_order(evaluator):
    space = evaluator.space()
    float_top1 = evaluator.float_metrics()["top1"]
    eight = evaluator.evaluate(Policy.uniform(space, 8))
    two = evaluator.evaluate(Policy.uniform(space, 2, act_bits=8))
    assert set(eight) == {"top1", "loss"} and all(isinstance(v, float) for v in eight.values())
    assert abs(eight["top1"] - float_top1) <= 0.02
    assert two["loss"] > eight["loss"]
    assert evaluator.metric == "top1" and evaluator.metric_kind == "ptq"


def test_cache_by_policy_key(evaluator):
    space = evaluator.space()
    policy = Policy.uniform(space, 3)
    first = evaluator.evaluate(policy)
    count = evaluator.evaluations
    same_widths = policy.with_meta(search={"searcher": "other"})  # metadata does not count
    assert evaluator.evaluate(same_widths) == first
    assert evaluator.evaluations == count
    evaluator.evaluate(Policy.uniform(space, 5))
    assert evaluator.evaluations == count + 1


def test_deterministic_across_evaluators(task):
    space = Evaluator(task).space(granularity="kernel")
    widths = tuple((2, 3, 4, 8)[i % 4] for i in range(8))
    policy = Policy((("conv1", LayerBits(widths, 8)), ("conv2", LayerBits(tuple(reversed(widths)), 4)),
                     ("fc", LayerBits((4, 5, 6), 8))), "kernel")
    a = Evaluator(task).evaluate(policy)
    b = Evaluator(task).evaluate(policy)
    assert a == b
    assert Policy.uniform(space, 4).granularity == "kernel"


def test_finetuning_recovers_accuracy_and_leaves_the_float_model(task):
    tuned = Evaluator(task, finetune_epochs=2)
    assert tuned.metric_kind == "ptq+ft2"
    space = tuned.space()
    before = {k: v.clone() for k, v in tuned.model.state_dict().items()}
    policy = Policy.uniform(space, 2, act_bits=8)
    ptq = Evaluator(task).evaluate(policy)
    ft = tuned.evaluate(policy)
    assert ft["loss"] < ptq["loss"]
    assert all(torch.equal(before[k], v) for k, v in tuned.model.state_dict().items())
    assert tuned.evaluate(policy) == ft  # cached, and the same again


def test_calibration_samples(task):
    few = Evaluator(task, calibration_samples=16)
    assert len(few.calibration) == 16
    few.evaluate(Policy.uniform(few.space(), 4))
    with pytest.raises(TaskError, match="calibration_samples=100000"):
        Evaluator(task, calibration_samples=100_000).evaluate(Policy.uniform(few.space(), 4))


def test_float_activations(evaluator):
    space = evaluator.space(act_bits=None)
    metrics = evaluator.evaluate(Policy.uniform(space, 8))
    assert abs(metrics["top1"] - evaluator.float_metrics()["top1"]) <= 0.02


def test_policy_missing_a_layer_is_a_policy_error(evaluator):
    partial = Policy((("conv1", LayerBits(4, 8)), ("fc", LayerBits(4, 8))))
    with pytest.raises(PolicyError, match="missing layer 'conv2'"):
        evaluator.evaluate(partial)


def test_bad_settings_and_shape_only_tasks():
    with pytest.raises(TaskError, match="finetune_epochs"):
        Evaluator(make_task(), finetune_epochs=-1)
    shape_only = Task("shape-only-test", model_factory=BumpNet, input_shape=(1, 16))
    with pytest.raises(TaskError, match="shape-only"):
        Evaluator(shape_only)


def test_problem_scores_with_the_evaluator(evaluator):
    problem = Problem.build(evaluator.space(weight_bits=(2, 4, 8)), ["size=4bit"], evaluator=evaluator)
    policy = Policy.uniform(problem.space, 4)
    assert problem.fits(policy)
    metrics = problem.evaluate(policy)
    assert problem.score(metrics) == metrics["top1"]
    assert problem.objective == "top1"


def test_reused_quantized_copy_scores_like_a_fresh_one(task):
    from bitsearch.tasks import evaluate_model

    evaluator = Evaluator(task)
    space = evaluator.space(granularity="kernel", act_bits=(4, 8))
    generator = torch.Generator().manual_seed(3)
    for act in (4, 8, 4):
        bits = tuple((layer.name, LayerBits(tuple(torch.randint(2, 9, (layer.kernels,), generator=generator).tolist()),
                                            act)) for layer in space.layers)
        policy = Policy(bits, "kernel")
        scored = evaluator.evaluate(policy)
        fresh = evaluator.quantized_model(policy)
        data = evaluator.data
        assert evaluate_model(fresh, data.x_test, data.y_test) == pytest.approx(scored, abs=1e-6)


def test_evaluator_pickles(evaluator):
    import pickle

    policy = Policy.uniform(evaluator.space(), 4)
    expected = evaluator.evaluate(policy)
    clone = pickle.loads(pickle.dumps(evaluator))
    clone.clear_cache()
    assert clone.evaluate(policy) == expected
