"""The trained float weights the package ships: present for every built-in task, named by
the current recipe's key, used instead of training, ignored when the recipe changes or the
file is damaged -- and the README's main job reproduced from them, number for number."""

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bitsearch.cli import main  # noqa: E402
from bitsearch.tasks import TrainRecipe, get_task  # noqa: E402
from bitsearch.tasks import base as tasks_base  # noqa: E402
from bitsearch.tasks import ship  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BITSEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_every_builtin_ships_its_weights_under_the_current_key():
    assert ship.check() == []  # a recipe, data or architecture change without re-shipping fails here
    names = {p.name for p in tasks_base.SHIPPED_WEIGHTS.glob("*.pt")}
    assert len(names) == sum(len(w) for w in ship.SHIPPED.values())
    total = sum(p.stat().st_size for p in tasks_base.SHIPPED_WEIGHTS.glob("*.pt"))
    assert total < 3_000_000  # small enough to ship
    assert "bitsearch.tasks = weights/*.pt" in (ROOT / "setup.cfg").read_text()  # and they go into the wheel


def test_the_key_does_not_name_the_torch_version(monkeypatch):
    task = get_task("semicircles-mlp")
    key = task.cache_key()
    monkeypatch.setattr(torch, "__version__", "2.3.0")
    assert task.cache_key() == key


def test_shipped_weights_are_used_without_training(private_cache, monkeypatch):
    task = get_task("semicircles-mlp")
    monkeypatch.setattr(type(task), "fit", lambda *a, **k: pytest.fail("trained although weights ship"))
    model = task.trained_model()
    shipped = torch.load(task.shipped_weights_path(), weights_only=True)["state_dict"]
    assert all(torch.equal(v, shipped[k]) for k, v in model.state_dict().items())
    assert not (private_cache / "weights").exists()


def test_a_changed_recipe_or_width_trains_its_own(private_cache):
    task = get_task("semicircles-mlp")
    changed = type(task)(task.name, model_factory=task._model_factory, data_factory=task._data_factory,
                         input_shape=task.input_shape, recipe=TrainRecipe(epochs=2, lr=1e-2, seed=0),
                         data_settings=task.data_settings)
    assert not changed.shipped_weights_path().exists()
    changed.trained_model()
    assert changed.weights_path().exists()  # trained and cached by the user
    task.trained_model(0.5)
    assert task.weights_path(0.5).exists() and not task.shipped_weights_path(0.5).exists()


def test_damaged_shipped_weights_are_ignored_with_a_warning(private_cache, tmp_path, monkeypatch):
    task = get_task("semicircles-mlp")
    folder = tmp_path / "shipped"
    folder.mkdir()
    source = task.shipped_weights_path()
    monkeypatch.setattr(tasks_base, "SHIPPED_WEIGHTS", folder)
    saved = torch.load(source, weights_only=True)
    saved["meta"]["key"] = "0123456789abcdef"  # a file that claims another recipe
    torch.save(saved, folder / source.name)
    with pytest.warns(UserWarning, match="ignoring the shipped weights"):
        task.trained_model()
    assert task.weights_path().exists()


def test_weights_info_reads_the_shipped_record():
    info = get_task("mnist-lenet5").weights_info()
    assert info["task"] == "mnist-lenet5" and info["key"] == get_task("mnist-lenet5").cache_key()
    assert info["top1"] >= 0.97


def _readme_main_job():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- main-job -->", 1)[1].split("<!-- /main-job -->", 1)[0]
    commands = re.findall(r"^bitsearch (.+)$", text.split("## Install", 1)[1].split("<!-- main-job -->", 1)[0],
                          re.MULTILINE)
    return commands, block


def test_the_readme_main_job_gives_the_readmes_numbers(private_cache, tmp_path, capsys, monkeypatch):
    """The README's main job, run from the shipped weights in a fresh cache, ends with the
    policy and the numbers the README states (exactly: evaluation is deterministic)."""
    commands, block = _readme_main_job()
    assert [c.split()[0] for c in commands] == ["search", "eval"]
    monkeypatch.chdir(tmp_path)
    code = main(commands[0].split() + ["--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    widths = dict(re.findall(r"`(\w+)`\s+(\d)\s+bits", block))
    assert {name: b["weight_bits"] for name, b in result["policy"]["layers"].items()} == \
           {name: int(b) for name, b in widths.items()}
    top1 = float(re.search(r"top-1\s+(\d+\.\d\d)%", block).group(1))
    assert round(100 * result["metrics"]["top1"], 2) == top1
    code = main(commands[1].split() + ["--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and round(100 * report["metrics"]["top1"], 2) == top1
    float_top1 = float(re.search(r"float\s+model\s+(\d+\.\d\d)%", block).group(1))
    task = get_task("mnist1d-cnn")
    from bitsearch.evaluate import Evaluator

    assert round(100 * Evaluator(task).float_metrics()["top1"], 2) == float_top1
    uniform = float(re.search(r"uniform\s+3-bit\s+policy\s+scores\s+(\d+\.\d\d)%", block).group(1))
    code = main(["search", "--task", "mnist1d-cnn", "--searcher", "uniform", "--weight-bits", "2,3,4,8",
                 "--budget", "size=3bit", "--json"])
    assert code == 0 and round(100 * json.loads(capsys.readouterr().out)["metrics"]["top1"], 2) == uniform
    assert not (private_cache / "weights").exists()  # nothing was trained


def test_the_readmes_refine_example_holds():
    """The layer interaction the README gives as the reason for refine, on the shipped weights."""
    from bitsearch.build import ProblemOptions, SpaceOptions, problem_for_task
    from bitsearch.policy import Policy

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- refine-example -->(.*?)<!-- /refine-example -->", text, re.DOTALL).group(1)
    block = " ".join(block.split())
    mixed = re.search(r"fc2 scores (\d+\.\d\d)% at 3 bits but (\d+\.\d\d)% at 4 bits and (\d+\.\d\d)% at 8 bits",
                      block).groups()
    alone = re.search(r"(\d+\.\d\d)% at 4 bits, (\d+\.\d\d)% at 3\.", block).groups()
    problem = problem_for_task("mnist1d-cnn", SpaceOptions(weight_bits=(2, 3, 4, 8)),
                               ProblemOptions(budgets=("size=3bit",)))
    names = problem.space.names
    template = Policy.uniform(problem.space, 8).to_dict()

    def top1(widths):
        policy = Policy.from_dict({**template, "layers": {n: {"weight_bits": w, "act_bits": 8}
                                                          for n, w in zip(names, widths)}})
        return f"{100 * problem.evaluate(policy)['top1']:.2f}"

    assert tuple(top1((8, 8, 8, 4, 2, w)) for w in (3, 4, 8)) == mixed
    assert tuple(top1((8, 8, 8, 8, 8, w)) for w in (4, 3)) == alone


def test_ship_check_reports_a_missing_file(tmp_path, monkeypatch):
    folder = tmp_path / "shipped"
    shutil.copytree(tasks_base.SHIPPED_WEIGHTS, folder)
    monkeypatch.setattr(tasks_base, "SHIPPED_WEIGHTS", folder)
    victim = get_task("digits-cnn").shipped_weights_path()
    victim.unlink()
    (folder / "digits-cnn-w1-ffffffffffffffff.pt").write_bytes(b"stale")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problems = ship.check()
    assert any("digits-cnn x1" in p and "missing" in p for p in problems)
    assert any("ffffffffffffffff" in p and "no task's key names it" in p for p in problems)
    assert ship.main(["--check"]) == 1
