"""bitsearch.tasks: the built-in tasks, the cache of trained weights, user tasks and their errors."""

import dataclasses
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bitsearch.errors import TaskError, UnknownTaskError, UserInputError
from bitsearch.tasks import (Task, TaskData, TrainRecipe, cache_dir, evaluate_model, get_task, list_tasks,
                             scale_width)

BUILTIN = ["digits-cnn", "mnist1d-cnn", "mnist-lenet5", "semicircles-mlp", "resnet18", "resnet50", "mobilenet_v2"]
TRAINABLE = ["digits-cnn", "mnist1d-cnn", "mnist-lenet5", "semicircles-mlp"]
SHAPE_ONLY = ["resnet18", "resnet50", "mobilenet_v2"]
CLASSES = {"digits-cnn": 10, "mnist1d-cnn": 10, "mnist-lenet5": 10, "semicircles-mlp": 2, "resnet18": 1000, "resnet50": 1000,
           "mobilenet_v2": 1000}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "tasks.md"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A cache directory of this test's own (the session cache stays untouched)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("BITSEARCH_CACHE", str(path))
    return path


def quantizable(model):
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- the catalogue and the contract ----------------------------------------------------------------
def test_list_tasks_names_every_builtin_with_a_description():
    rows = list_tasks()
    # tiny-llama (a trained model, not a Task: tests/test_tiny_llama.py) is listed among them
    assert [name for name, _ in rows if name != "tiny-llama"] == BUILTIN and "tiny-llama" in dict(rows)
    assert all(isinstance(d, str) and d and "\n" not in d for _, d in rows)


@pytest.mark.parametrize("name", BUILTIN)
def test_task_contract(name):
    task = get_task(name)
    assert isinstance(task, Task)
    assert task.name == name
    assert task.description == dict(list_tasks())[name]
    assert task.metric == "top1"
    assert task.shape_only is (name in SHAPE_ONLY)
    assert isinstance(task.input_shape, tuple) and all(isinstance(d, int) for d in task.input_shape)
    assert isinstance(task.recipe, TrainRecipe)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.recipe.epochs = 1
    x = task.example_input(3)
    assert x.shape == (3, *task.input_shape) and x.dtype == torch.float32
    assert torch.equal(x, task.example_input(3))


@pytest.mark.parametrize("name", ["digits-cnn", "mnist1d-cnn", "mnist-lenet5", "semicircles-mlp", "resnet18",
                                  "mobilenet_v2"])
def test_untrained_model_maps_inputs_to_logits(name):
    task = get_task(name)
    model = task.build_model().eval()
    # shape-only models take any image of 32x32 or more: a small one keeps the test fast
    x = task.example_input(2) if not task.shape_only else torch.zeros(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, CLASSES[name])


def test_quantizable_layer_counts():
    counts = {name: len(quantizable(get_task(name).build_model())) for name in BUILTIN}
    assert counts == {"digits-cnn": 4, "mnist1d-cnn": 6, "mnist-lenet5": 5, "semicircles-mlp": 3, "resnet18": 21, "resnet50": 54,
                      "mobilenet_v2": 53}


def test_shape_only_models_are_torchvisions():
    import torchvision

    for name, factory in (("resnet18", torchvision.models.resnet18), ("resnet50", torchvision.models.resnet50),
                          ("mobilenet_v2", torchvision.models.mobilenet_v2)):
        ours = get_task(name).build_model()
        theirs = factory(weights=None)
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
               {k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in get_task("resnet50").build_model().parameters()) == 25_557_032


# --- width multiplier ------------------------------------------------------------------------------
def test_scale_width_rounds_half_up_and_keeps_one():
    assert scale_width(32, 0.5) == 16
    assert scale_width(10, 0.25) == 3  # 2.5 rounds up
    assert scale_width(16, 1.3) == 21  # 20.8
    assert scale_width(16, 1e-6) == 1


def test_width_multiplier_scales_digits_cnn():
    task = get_task("digits-cnn")
    half, wide = task.build_model(0.5), task.build_model(1.5)
    assert (half.conv1.out_channels, half.conv2.out_channels, half.conv3.out_channels) == (8, 16, 16)
    assert half.conv2.in_channels == 8 and half.fc.in_features == 16 * 4
    assert (wide.conv1.out_channels, wide.conv2.out_channels, wide.conv3.out_channels) == (24, 48, 48)
    for model in (half, wide):
        assert model(task.example_input(2)).shape == (2, 10)


def test_width_multiplier_scales_mnist1d_cnn():
    task = get_task("mnist1d-cnn")
    base, double = task.build_model(1.0), task.build_model(2.0)
    for name in ("conv1", "conv2", "conv3", "conv4"):
        assert getattr(double, name).out_channels == 2 * getattr(base, name).out_channels
    assert double.fc1.out_features == 2 * base.fc1.out_features
    assert double.fc1.in_features == 2 * base.fc1.in_features
    assert double.fc2.out_features == base.fc2.out_features == 10  # the classes never scale
    assert double(task.example_input(2)).shape == (2, 10)


def test_width_multiplier_scales_semicircles_mlp():
    model = get_task("semicircles-mlp").build_model(0.25)
    assert (model.fc1.out_features, model.fc2.in_features, model.fc2.out_features, model.fc3.in_features) == \
           (16, 16, 16, 16)


@pytest.mark.parametrize("name", TRAINABLE)
def test_tiny_width_keeps_at_least_one_channel(name):
    task = get_task(name)
    model = task.build_model(1e-3)
    for layer in quantizable(model)[:-1]:
        module = model.get_submodule(layer)
        assert (module.out_channels if hasattr(module, "out_channels") else module.out_features) == 1
    assert model(task.example_input(2)).shape == (2, CLASSES[name])


def test_width_multiplier_scales_shape_only_models():
    resnet18 = get_task("resnet18").build_model(0.5)
    assert resnet18.conv1.out_channels == 32 and resnet18.layer4[1].conv2.out_channels == 256
    assert resnet18.fc.in_features == 256
    assert resnet18(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
    resnet50 = get_task("resnet50").build_model(0.5)
    assert resnet50.fc.in_features == 1024 and resnet50.layer1[0].conv1.out_channels == 32
    mobilenet = get_task("mobilenet_v2").build_model(0.5)
    assert mobilenet.features[0][0].out_channels == 16


def test_scaled_resnet_at_width_one_has_torchvisions_structure():
    import torchvision

    from bitsearch.tasks.vision import _scaled_resnet

    ours = _scaled_resnet("BasicBlock", [2, 2, 2, 2], 1.0)
    theirs = torchvision.models.resnet18(weights=None)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "wide", None])
def test_bad_width_multiplier_is_a_task_error(bad):
    with pytest.raises(TaskError, match="width multiplier"):
        get_task("digits-cnn").build_model(bad)


# --- data ------------------------------------------------------------------------------------------
def rows_of(x):
    return {row.numpy().tobytes() for row in x}


def check_data(data, n_train, n_test, sample_shape, classes):
    assert data.x_train.shape == (n_train, *sample_shape) and data.x_test.shape == (n_test, *sample_shape)
    assert data.y_train.shape == (n_train,) and data.y_test.shape == (n_test,)
    assert data.x_train.dtype == data.x_test.dtype == data.calibration.dtype == torch.float32
    assert data.y_train.dtype == data.y_test.dtype == torch.int64
    assert set(data.y_train.tolist()) == set(range(classes)) == set(data.y_test.tolist())
    assert data.calibration.shape == (256, *sample_shape)
    assert rows_of(data.calibration) <= rows_of(data.x_train)
    assert data.num_classes == classes


def test_digits_data():
    task = get_task("digits-cnn")
    data = task.data()
    check_data(data, 1437, 360, (1, 8, 8), 10)
    assert float(data.x_train.min()) >= 0.0 and float(data.x_train.max()) <= 1.0
    assert task.data() is data  # cached in memory


def test_semicircles_data_is_deterministic():
    from bitsearch.tasks import semicircles

    data = get_task("semicircles-mlp").data()
    check_data(data, 2000, 1000, (2,), 2)
    assert abs(float(data.y_train.float().mean()) - 0.5) < 0.01
    semicircles._arrays.cache_clear()
    again = get_task("semicircles-mlp").data()
    assert again is not data
    for field in ("x_train", "y_train", "x_test", "y_test", "calibration"):
        assert torch.equal(getattr(again, field), getattr(data, field))


def test_mnist1d_data_is_cached_on_disk():
    from bitsearch.tasks import mnist1d_cnn

    mnist1d_cnn._arrays.cache_clear()  # another test may have read them from a cache of its own
    data = get_task("mnist1d-cnn").data()
    check_data(data, 8000, 2000, (1, 40), 10)
    path = mnist1d_cnn.data_path(mnist1d_cnn.generator_settings())
    assert path.exists() and path.parent == cache_dir() / "data"
    mnist1d_cnn._arrays.cache_clear()
    again = get_task("mnist1d-cnn").data()  # read back from disk, not regenerated
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)


def test_mnist1d_settings_are_the_generators_defaults():
    from mnist1d.data import get_dataset_args

    from bitsearch.tasks import mnist1d_cnn

    defaults = get_dataset_args(as_dict=True)
    defaults.pop("url")
    assert mnist1d_cnn.SETTINGS == {**defaults, "num_samples": 10_000}


def test_mnist1d_generator_is_deterministic_and_keeps_global_rng_state():
    from bitsearch.tasks import mnist1d_cnn

    settings = dict(mnist1d_cnn.generator_settings(), num_samples=200)
    np.random.seed(123)
    random.seed(123)
    numpy_before, python_before = np.random.get_state()[1].copy(), random.getstate()
    first, second = mnist1d_cnn.generate(settings), mnist1d_cnn.generate(settings)
    assert np.array_equal(np.random.get_state()[1], numpy_before) and random.getstate() == python_before
    assert first["x_train"].shape == (160, 40) and first["x_test"].shape == (40, 40)
    for key in first:
        assert np.array_equal(first[key], second[key])


def test_mnist1d_never_downloads():
    import ast

    source = (Path(__file__).resolve().parents[1] / "bitsearch" / "tasks" / "mnist1d_cnn.py").read_text()
    names = {node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)}
    names |= {alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
              for alias in node.names}
    assert "get_dataset" not in names and "make_dataset" in names


@pytest.mark.parametrize("name", SHAPE_ONLY)
def test_shape_only_tasks_have_no_data(name):
    with pytest.raises(TaskError, match="shape-only"):
        get_task(name).data()


def test_taskdata_converts_numpy_and_picks_a_fixed_calibration_subset():
    x = np.arange(600 * 3, dtype=np.float64).reshape(600, 3)
    y = np.arange(600) % 4
    data = TaskData(x[:500], y[:500], x[500:], y[500:])
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.calibration.shape == (256, 3)
    assert rows_of(data.calibration) <= rows_of(data.x_train)
    assert torch.equal(data.calibration, TaskData(x[:500], y[:500], x[500:], y[500:]).calibration)
    small = TaskData(x[:10], y[:10], x[10:20], y[10:20])
    assert small.calibration.shape == (10, 3)
    own = TaskData(x[:10], y[:10], x[10:20], y[10:20], calibration=x[:4])
    assert own.calibration.shape == (4, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(x_train=torch.zeros(5, 2), y_train=torch.zeros(4)), "5 samples but y_train has 4"),
    (dict(y_train=torch.tensor([0.5, 1.0, 0.0, 1.0, 0.0])), "non-integer"),
    (dict(y_test=-torch.ones(3)), "negative"),
    (dict(x_test=torch.zeros(3, 7)), "shape"),
    (dict(calibration=torch.zeros(2, 9)), "calibration"),
    (dict(x_train=torch.zeros(0, 2), y_train=torch.zeros(0)), "empty"),
])
def test_taskdata_errors(kwargs, match):
    base = dict(x_train=torch.zeros(5, 2), y_train=torch.zeros(5), x_test=torch.zeros(3, 2), y_test=torch.zeros(3))
    with pytest.raises(TaskError, match=match):
        TaskData(**{**base, **kwargs})


def test_recipe_and_task_arguments_are_checked():
    with pytest.raises(TaskError, match="optimizer must be one of adamw, adam, sgd"):
        TrainRecipe(optimizer="lbfgs")
    with pytest.raises(TaskError, match="epochs"):
        TrainRecipe(epochs=-1)
    with pytest.raises(TaskError, match="input_shape"):
        Task("t", model_factory=nn.Identity, input_shape=())
    with pytest.raises(TaskError, match="model_factory"):
        Task("t", model_factory=None, input_shape=(3,))
    with pytest.raises(TaskError, match="JSON"):
        Task("t", model_factory=nn.Identity, input_shape=(3,), data_settings={"x": object()})


# --- evaluate_model and fit ------------------------------------------------------------------------
def test_evaluate_model_by_hand():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
    y = torch.tensor([0, 0, 1])
    # logits are the inputs; predictions 0, 1, 1 -> two of three right
    expected_loss = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1)) + math.log(1 + math.exp(-2))) / 3
    model.train()
    result = evaluate_model(model, x, y)
    assert result["top1"] == pytest.approx(2 / 3)
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert evaluate_model(model, x, y, batch_size=1) == pytest.approx(result)
    assert model.training  # the mode is restored
    with pytest.raises(TaskError):
        evaluate_model(model, x[:0], y[:0])


def test_evaluate_model_runs_in_eval_mode_without_grad():
    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen["training"], seen["grad"] = self.training, torch.is_grad_enabled()
            return torch.zeros(len(x), 2)

    evaluate_model(Probe().train(), torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))
    assert seen == {"training": False, "grad": False}


def tiny_task(**kwargs):
    import task_factories

    return task_factories.make_tiny(**kwargs)


def test_fit_is_deterministic_and_leaves_the_global_rng_alone():
    task = tiny_task()
    data = task.data()
    torch.manual_seed(5)
    a = task.build_model()
    b = task.build_model()
    b.load_state_dict(a.state_dict())
    state = torch.get_rng_state()
    task.fit(a, data)
    task.fit(b, data)
    assert torch.equal(torch.get_rng_state(), state)
    assert same_weights(a, b)
    assert not a.training


def test_fit_trains_only_parameters_that_require_grad():
    task = tiny_task()
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fc1.weight.requires_grad_(False)
    model.fc1.bias.requires_grad_(False)
    task.fit(model, task.data(), epochs=2, lr=0.05)
    after = model.state_dict()
    assert torch.equal(after["fc1.weight"], before["fc1.weight"]) and torch.equal(after["fc1.bias"], before["fc1.bias"])
    assert not torch.equal(after["fc2.weight"], before["fc2.weight"])


def test_fit_overrides_and_errors():
    task = tiny_task()
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task.fit(model, task.data(), epochs=0)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    with pytest.raises(TaskError, match="TaskData"):
        task.fit(model, (torch.zeros(2, 4), torch.zeros(2)))
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(TaskError, match="requires grad"):
        task.fit(model, task.data(), epochs=1)


def test_fit_improves_a_tiny_model_with_progress_bar(capsys):
    task = tiny_task(epochs=10)
    data = task.data()
    model = task.build_model()
    before = evaluate_model(model, data.x_test, data.y_test)["loss"]
    task.fit(model, data, progress=True)
    assert evaluate_model(model, data.x_test, data.y_test)["loss"] < before


# --- the cache of trained weights ------------------------------------------------------------------
def test_trained_model_is_cached_and_not_retrained(private_cache, monkeypatch):
    import task_factories

    first = tiny_task().trained_model()
    path = tiny_task().weights_path()
    assert path.exists() and path.is_relative_to(private_cache / "weights" / "tiny-mlp")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".lock"]  # no temp files
    info = tiny_task().weights_info()
    assert info["task"] == "tiny-mlp" and info["seconds"] > 0 and 0 <= info["top1"] <= 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of reading the cache")

    monkeypatch.setattr(Task, "fit", no_training)
    calls = task_factories.CALLS["data"]
    fresh = tiny_task()
    again = fresh.trained_model()
    assert same_weights(first, again) and again is not first
    assert task_factories.CALLS["data"] == calls  # reading the cache needs no data
    assert not again.training
    third = fresh.trained_model()  # from memory this time: a new module each call
    with torch.no_grad():
        third.fc1.weight.zero_()
    assert same_weights(fresh.trained_model(), first)


def test_weights_file_is_loadable_with_weights_only(private_cache):
    task = tiny_task()
    model = task.trained_model()
    payload = torch.load(task.weights_path(), map_location="cpu", weights_only=True)
    assert set(payload) == {"state_dict", "meta"}
    assert all(torch.equal(payload["state_dict"][k], v) for k, v in model.state_dict().items())


def test_cache_key_follows_recipe_width_and_data(private_cache):
    base = tiny_task()
    keys = {base.cache_key(1.0), base.cache_key(2.0), tiny_task(epochs=4).cache_key(), tiny_task(seed=1).cache_key()}
    assert len(keys) == 4
    assert base.cache_key() == tiny_task().cache_key()
    other_data = tiny_task()
    other_data.data_settings = {"samples": 301, "seed": 1}
    assert other_data.cache_key() != base.cache_key()
    assert base.weights_path(2.0) != base.weights_path(1.0)
    wide = base.trained_model(2.0)
    assert wide.fc1.out_features == 16 and base.weights_path(2.0).exists()
    assert not same_weights(tiny_task(seed=1).trained_model(), base.trained_model())


def test_training_is_reproducible_across_cache_directories(tmp_path, monkeypatch):
    monkeypatch.setenv("BITSEARCH_CACHE", str(tmp_path / "one"))
    first = tiny_task().trained_model()
    monkeypatch.setenv("BITSEARCH_CACHE", str(tmp_path / "two"))
    second = tiny_task().trained_model()
    assert same_weights(first, second)


def test_corrupt_cache_file_is_retrained(private_cache):
    task = tiny_task()
    model = task.trained_model()
    task.weights_path().write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable cached weights"):
        again = tiny_task().trained_model()
    assert same_weights(model, again)
    torch.load(task.weights_path(), weights_only=True)  # rewritten whole


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("BITSEARCH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "bitsearch"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "bitsearch"
    monkeypatch.setenv("BITSEARCH_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_shape_only_trained_model_is_seeded_and_not_cached(private_cache):
    task = get_task("resnet18")
    state = torch.get_rng_state()
    a, b = task.trained_model(), task.trained_model()
    assert torch.equal(torch.get_rng_state(), state)
    assert same_weights(a, b) and not a.training
    assert not private_cache.exists()


# --- user tasks and their errors -------------------------------------------------------------------
def test_user_task_by_factory_and_by_object():
    task = get_task("task_factories:make_tiny")
    assert isinstance(task, Task) and task.name == "tiny-mlp"
    import task_factories

    assert get_task("task_factories:TINY") is task_factories.TINY


def one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_unknown_name_lists_the_builtins():
    with pytest.raises(UnknownTaskError) as exc_info:
        get_task("imagenet-vit")
    message = one_line(exc_info)
    assert all(name in message for name in BUILTIN)
    assert "package.module:factory" in message
    with pytest.raises(UnknownTaskError, match="did you mean 'digits-cnn'"):
        get_task("digits-cnm")
    with pytest.raises(UnknownTaskError, match="colon"):
        get_task("mypkg.tasks")
    with pytest.raises(UnknownTaskError):
        get_task("")


@pytest.mark.parametrize("spec, error, match", [
    ("surely_no_such_module_xyz:make", UnknownTaskError, "no module named 'surely_no_such_module_xyz'"),
    ("task_factories:missing", UnknownTaskError, "has no attribute 'missing'"),
    ("task_factories:not_a_task", TaskError, "returned int, expected a bitsearch.tasks.Task or a bitsearch.TrainedModel"),
    ("task_factories:raises", TaskError, "RuntimeError: the data server is down"),
    ("task_factories:NOT_CALLABLE", TaskError, "is a str"),
    ("a:b:c", UnknownTaskError, "does not parse"),
    (":make", UnknownTaskError, "does not parse"),
])
def test_user_task_errors(spec, error, match):
    with pytest.raises(error, match=re.escape(match)) as exc_info:
        get_task(spec)
    assert isinstance(exc_info.value, UserInputError)  # the command turns it into exit code 2
    message = one_line(exc_info)
    if error is UnknownTaskError and "parse" not in match:
        assert "digits-cnn" in message


def test_user_module_with_a_missing_dependency_or_a_failing_import(tmp_path, monkeypatch):
    (tmp_path / "needs_missing_dep.py").write_text("import surely_not_installed_pkg_123\n")
    (tmp_path / "fails_on_import.py").write_text("raise ValueError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(TaskError, match="needs 'surely_not_installed_pkg_123'"):
            get_task("needs_missing_dep:make")
        with pytest.raises(TaskError, match="ValueError: bad config"):
            get_task("fails_on_import:make")
    finally:
        sys.modules.pop("needs_missing_dep", None)
        sys.modules.pop("fails_on_import", None)


def test_user_task_with_a_broken_model_or_data():
    with pytest.raises(TaskError, match="returned str, expected a torch.nn.Module"):
        get_task("task_factories:model_factory_returns_junk").build_model()
    with pytest.raises(TaskError, match=r"samples of shape \(4,\) but input_shape says \(5,\)"):
        get_task("task_factories:data_of_wrong_shape").data()


def test_the_documented_example_works_from_the_working_directory(tmp_path, monkeypatch, private_cache):
    text = DOCS.read_text()
    example = text.split("A complete example", 1)[1]
    code = re.search(r"```python\n(.*?)```", example, re.S).group(1)
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "mytasks_doc_example.py").write_text(code)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    try:
        task = get_task("mytasks_doc_example:make_task")
        assert task.name == "toy-mlp" and not task.shape_only
        model = task.trained_model()
        data = task.data()
        assert evaluate_model(model, data.x_test, data.y_test)["top1"] > 0.85
        assert task.build_model(0.5).fc1.out_features == 16
    finally:
        sys.modules.pop("mytasks_doc_example", None)


def test_import_bitsearch_does_not_import_the_tasks():
    code = "import sys, bitsearch; print('torch' in sys.modules, 'bitsearch.tasks' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- the built-in tasks, trained (slow: they train from scratch) -----------------------------------
@pytest.mark.parametrize("name, floor", [("digits-cnn", 0.95), ("semicircles-mlp", 0.95), ("mnist1d-cnn", 0.92),
                                         ("mnist-lenet5", 0.97)])
def test_builtin_tasks_ship_their_trained_weights(name, floor, private_cache):
    task = get_task(name)
    model = task.trained_model()
    assert not task.weights_path().exists()  # read from the package, nothing trained or cached
    data = task.data()
    assert evaluate_model(model, data.x_test, data.y_test)["top1"] >= floor
    info = task.weights_info()
    assert info["top1"] >= floor and info["key"] == task.cache_key()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits-cnn", "semicircles-mlp", "mnist-lenet5"])
def test_builtin_training_reproduces_the_shipped_weights(name):
    task = get_task(name)
    shipped = torch.load(task.shipped_weights_path(), map_location="cpu", weights_only=True)["state_dict"]
    state, _ = task.train_fresh()
    assert all(torch.equal(shipped[k], state[k]) for k in shipped)


def test_training_does_not_depend_on_the_thread_count():
    """The cached float model is the basis of every number: two machines with different
    core counts must train the same weights (train_model runs on one thread)."""
    from bitsearch.tasks.base import train_model

    task = get_task("digits-cnn")
    data = task.data()
    before = torch.get_num_threads()
    models = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = task.build_model(1.0)
            train_model(model, data.x_train[:512], data.y_train[:512], task.recipe, epochs=1)
            assert torch.get_num_threads() == threads  # restored
            models.append(model)
    finally:
        torch.set_num_threads(before)
    assert same_weights(*models)
