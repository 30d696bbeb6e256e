"""Your own trained model: a CNN trained with plain torch outside bitsearch, its weights
saved and loaded back, data read from a folder of PNG files through torchvision's
ImageFolder and a DataLoader, a metric of your own -- and every searcher runs on it."""

import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import bitsearch  # noqa: E402
from bitsearch.errors import SearcherUnsupportedError, UserInputError  # noqa: E402
from bitsearch.evaluate import ModelEvaluator, classification_metrics  # noqa: E402
from bitsearch.policy import Policy  # noqa: E402
from bitsearch.problem import Problem, TrainableEvaluator, missing_members  # noqa: E402

from own_models import SIDE, BarNet, loaders, make_user_files, trained_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """What a user arrives with: a state_dict trained outside bitsearch, and image folders."""
    return make_user_files(tmp_path_factory.mktemp("own-model"))


def my_evaluate(test_loader):
    """A metric of the user's own: accuracy in percent, and the error count."""

    def evaluate(model):
        correct = total = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        return {"accuracy": 100.0 * correct / total, "errors": total - correct}

    return evaluate


@pytest.fixture(scope="module")
def problem(user_files):
    train_loader, test_loader = loaders(user_files)
    return bitsearch.problem_for_model(
        trained_model(user_files), torch.zeros(1, 1, SIDE, SIDE), calibration=train_loader,
        evaluate=my_evaluate(test_loader), metric="accuracy", higher_is_better=True, train_loader=train_loader,
        space=bitsearch.SpaceOptions(weight_bits=(2, 3, 4, 8)), budgets=["size=3bit"], name="barnet")


def test_the_user_model_learned_its_task(problem):
    float_metrics = problem.evaluator.float_metrics()
    assert float_metrics["accuracy"] > 90.0
    assert problem.space.names == ("conv1", "conv2", "fc")
    assert problem.space.model_name == "barnet"
    assert isinstance(problem.evaluator, TrainableEvaluator)
    assert not missing_members(problem.evaluator, TrainableEvaluator)


def test_the_model_is_left_untouched(user_files, problem):
    reference = trained_model(user_files).state_dict()
    problem.evaluate(Policy.uniform(problem.space, 2))
    assert all(torch.equal(reference[k], v) for k, v in problem.evaluator.model.state_dict().items())


@pytest.mark.parametrize("name, settings", [
    ("uniform", {}),
    ("ilp", {}),
    ("fracbits", {"epochs": 1}),
    ("haq", {"episodes": 12, "warmup": 4}),
    ("autoq", {"episodes": 8, "warmup": 4}),
])
def test_every_searcher_runs_on_a_model_you_bring(problem, name, settings):
    result = bitsearch.searchers.create(name, **settings).search(problem, seed=0)
    assert problem.fits(result.policy)
    assert set(result.metrics) >= {"accuracy", "errors"}
    assert result.score == result.metrics["accuracy"]
    saved = result.policy.to_dict()
    assert saved["model"]["name"] == "barnet" and saved["metrics"]["accuracy"] == result.metrics["accuracy"]
    assert saved["metrics"]["metric_kind"] == "ptq"


def test_ilp_estimates_its_table_on_the_calibration_batches(user_files):
    train_loader, test_loader = loaders(user_files)
    problem = bitsearch.problem_for_model(
        trained_model(user_files), torch.zeros(1, 1, SIDE, SIDE), calibration=train_loader,
        evaluate=my_evaluate(test_loader), metric="accuracy", space=bitsearch.SpaceOptions(weight_bits=(2, 4, 8)),
        budgets=["size=3bit"], sensitivity="hessian", sensitivity_settings={"probes": 4, "samples": 40})
    assert problem.sensitivity is not None and problem.sensitivity.method == "hessian"
    again = bitsearch.problem_for_model(
        trained_model(user_files), torch.zeros(1, 1, SIDE, SIDE), calibration=train_loader,
        evaluate=my_evaluate(test_loader), metric="accuracy", space=bitsearch.SpaceOptions(weight_bits=(2, 4, 8)),
        budgets=["size=3bit"], sensitivity="hessian", sensitivity_settings={"probes": 4, "samples": 40})
    assert again.sensitivity.to_dict() == problem.sensitivity.to_dict()  # deterministic


def test_a_lower_is_better_metric_is_minimised(user_files):
    train_loader, test_loader = loaders(user_files)
    problem = bitsearch.problem_for_model(
        trained_model(user_files), torch.zeros(1, 1, SIDE, SIDE), calibration=train_loader,
        evaluate=classification_metrics(test_loader), metric="loss", higher_is_better=False,
        space=bitsearch.SpaceOptions(weight_bits=(2, 3, 8)), budgets=["size=3bit"])
    assert problem.objective == "loss" and not problem.higher_is_better
    exhaustive = bitsearch.searchers.create("exhaustive").search(problem, seed=0)
    losses = [e.metrics["loss"] for e in exhaustive.history]
    assert exhaustive.metrics["loss"] == min(losses)
    assert exhaustive.score == -exhaustive.metrics["loss"]
    assert exhaustive.metrics["loss"] < max(losses)
    for name, settings in (("random", {"samples": 6}), ("haq", {"episodes": 10, "warmup": 4})):
        result = bitsearch.searchers.create(name, **settings).search(problem, seed=0)
        assert result.metrics["loss"] == min(e.metrics["loss"] for e in result.history)


def test_a_metric_the_evaluator_does_not_return_is_one_line(user_files):
    train_loader, test_loader = loaders(user_files)
    with pytest.raises(UserInputError, match=r"metric 'top1' is not a key evaluate returns \(it returns "
                                             r"accuracy, errors\)") as info:
        bitsearch.problem_for_model(  # checked on the float model, before any search
            trained_model(user_files), torch.zeros(1, 1, SIDE, SIDE), calibration=train_loader,
            evaluate=my_evaluate(test_loader), metric="top1", budgets=["size=4bit"])
    assert "\n" not in str(info.value)


def test_training_searchers_say_what_they_need(user_files):
    _, test_loader = loaders(user_files)
    no_training = bitsearch.problem_for_model(
        trained_model(user_files), torch.zeros(1, 1, SIDE, SIDE), calibration=test_loader,
        evaluate=my_evaluate(test_loader), metric="accuracy", budgets=["size=4bit"])
    for name in ("fracbits", "bmpq"):
        with pytest.raises(SearcherUnsupportedError, match=rf"searcher '{name}' trains the model: it needs training "
                                                        r"batches .*train_loader=.*a model without training data"):
            bitsearch.searchers.create(name).search(no_training, seed=0)
    with pytest.raises(SearcherUnsupportedError, match="uniform-width' retrains the model at several width"):
        bitsearch.searchers.create("uniform-width").search(no_training, seed=0)
    no_metric = bitsearch.problem_for_model(trained_model(user_files), torch.zeros(1, 1, SIDE, SIDE),
                                            budgets=["size=4bit"])
    with pytest.raises(SearcherUnsupportedError, match="needs something to optimise: .*evaluate="):
        bitsearch.searchers.create("random").search(no_metric, seed=0)
    with pytest.raises(SearcherUnsupportedError, match="needs a sensitivity table"):
        bitsearch.searchers.create("ilp").search(no_metric, seed=0)


def test_a_custom_train_step_and_loss_are_used(user_files):
    train_loader, test_loader = loaders(user_files)
    calls = {"step": 0, "loss": 0}

    def loss(model, batch):
        calls["loss"] += 1
        x, y = batch
        return nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)

    def train_step(model, batch, optimizer):
        calls["step"] += 1
        optimizer.zero_grad()
        value = loss(model, batch)
        value.backward()
        optimizer.step()
        return value

    problem = bitsearch.problem_for_model(
        trained_model(user_files), torch.zeros(1, 1, SIDE, SIDE), calibration=train_loader,
        evaluate=my_evaluate(test_loader), metric="accuracy", loss=loss, train_loader=train_loader,
        train_step=train_step, space=bitsearch.SpaceOptions(weight_bits=(2, 4, 8)), budgets=["size=3bit"])
    result = bitsearch.searchers.create("fracbits", epochs=1).search(problem, seed=0)
    assert calls["step"] == len(train_loader)  # one pass of the user's loader, through the user's step
    assert problem.fits(result.policy)
    bitsearch.searchers.create("bmpq", epochs=1, samples=32).search(problem, seed=0)
    assert calls["loss"] > calls["step"]  # the bit-gradient table used the user's loss


def test_fine_tuned_scoring_uses_the_train_loader(user_files):
    train_loader, test_loader = loaders(user_files)
    ptq = bitsearch.problem_for_model(
        trained_model(user_files), torch.zeros(1, 1, SIDE, SIDE), calibration=train_loader,
        evaluate=classification_metrics(test_loader), train_loader=train_loader, budgets=["size=2bit"],
        space=bitsearch.SpaceOptions(weight_bits=(2, 8)))
    tuned = bitsearch.problem_for_model(
        trained_model(user_files), torch.zeros(1, 1, SIDE, SIDE), calibration=train_loader,
        evaluate=classification_metrics(test_loader), train_loader=train_loader, budgets=["size=2bit"],
        space=bitsearch.SpaceOptions(weight_bits=(2, 8)), finetune_epochs=3, finetune_lr=3e-3)
    policy = Policy.uniform(ptq.space, 2)
    assert tuned.evaluator.metric_kind == "ptq+ft3"
    assert tuned.evaluate(policy)["loss"] < ptq.evaluate(policy)["loss"]


def test_bad_arguments_are_one_line(user_files):
    with pytest.raises(UserInputError, match="model must be a torch.nn.Module"):
        ModelEvaluator("not a model", torch.zeros(1), evaluate=lambda m: {})
    with pytest.raises(UserInputError, match="finetune_epochs=2 needs a train_loader"):
        ModelEvaluator(BarNet(), torch.zeros(1), evaluate=lambda m: {}, finetune_epochs=2)
    with pytest.raises(UserInputError, match="one-shot iterator"):
        ModelEvaluator(BarNet(), torch.zeros(1), evaluate=lambda m: {}, train_loader=iter([]))


class HalfAnEvaluator:
    metric = "top1"

    def evaluate(self, policy):
        return {"top1": 1.0}


def test_an_evaluator_names_what_it_lacks():
    from helpers import small_space

    with pytest.raises(UserInputError, match=r"lacks higher_is_better, metric_kind .*bitsearch.problem.Evaluator"):
        Problem.build(small_space(), ["size=4bit"], evaluator=HalfAnEvaluator())


def test_problem_for_model_keeps_bitsearch_import_light():
    import subprocess
    import sys

    code = "import bitsearch, sys; bitsearch.problem_for_model; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert math.isfinite(1.0)


def test_the_readmes_own_model_example_runs(user_files, tmp_path, monkeypatch):
    """The Python call of README's "Your own model", run as it stands on a model of the user's."""
    import re
    from pathlib import Path

    import torch.nn.functional as F

    section = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = section.split("\n## Your own model\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    train_loader, test_loader = loaders(user_files)
    steps = []

    def my_loss(model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    def my_step(model, batch, optimizer):
        steps.append(1)
        optimizer.zero_grad()
        loss = my_loss(model, batch)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    names = {"model": trained_model(user_files), "example_input": torch.zeros(1, 1, SIDE, SIDE),
             "calib_loader": train_loader, "my_eval": classification_metrics(test_loader), "my_loss": my_loss,
             "train_loader": train_loader, "my_step": my_step}
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Your own model)", "exec"), names)  # noqa: S102 (the README's own example)
    problem, result = names["problem"], names["result"]
    saved = Policy.from_json((tmp_path / "p.json").read_text())
    assert problem.fits(saved) and saved.as_dict() == result.policy.as_dict()
    assert result.info["status"] == "optimal"  # on the table the ILP estimated on the calibration batches
    assert set(result.metrics) >= {"top1", "loss"}
    bitsearch.searchers.create("fracbits", epochs=1).search(problem, seed=0)
    assert steps  # fracbits trained through the README's train_step
