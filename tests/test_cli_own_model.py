"""The own-model road on the command line: ``--task ARCH --weights FILE --data imagefolder:DIR``,
a user factory that returns a trained model, and the one-line errors on the way."""

import itertools
import json

import pytest

torch = pytest.importorskip("torch")

from bitsearch.bench.execute import pareto_front  # noqa: E402
from bitsearch.cli import main  # noqa: E402

from helpers import assert_one_line_error as one_line  # noqa: E402
from own_models import make_user_files  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = make_user_files(tmp_path_factory.mktemp("cli-own-model"))
    # a ResNet-18 "trained" elsewhere on 3 classes (its weights only matter for their shapes here), RGB images
    from PIL import Image
    from torchvision.models import resnet18

    torch.manual_seed(0)
    torch.save(resnet18(num_classes=3).state_dict(), root / "r18.pt")
    generator = torch.Generator().manual_seed(0)
    for label in ("ant", "bee", "fly"):
        (root / "rgb" / label).mkdir(parents=True)
        for i in range(3):
            pixels = (torch.rand(40, 48, 3, generator=generator) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels, mode="RGB").save(root / "rgb" / label / f"{i}.png")
    (root / "empty" / "some-class").mkdir(parents=True)
    for label in "abcd":
        (root / "four" / label).mkdir(parents=True)
        Image.fromarray((torch.rand(12, 12) * 255).to(torch.uint8).numpy(), mode="L").save(root / "four" / label / "0.png")
    return root


@pytest.fixture
def factories(files, monkeypatch):
    monkeypatch.setenv("BITSEARCH_TEST_OWN_MODEL", str(files))
    return files


def _search(capsys, files, *extra):
    out = files / "p.json"
    code, stdout, err = run(capsys, "search", "--budget", "size=3bit", "--weight-bits", "2,3,4,8",
                            "--out", out, "--json", *extra)
    assert code == 0, err
    return json.loads(stdout), json.loads(out.read_text())


@pytest.mark.parametrize("searcher, settings", [
    ("uniform", []),
    ("ilp", ["--sensitivity", "hessian:probes=4,samples=40"]),
    ("fracbits", ["--set", "epochs=1"]),
    ("haq", ["--set", "episodes=8", "--set", "warmup=4"]),
    ("autoq", ["--set", "episodes=6", "--set", "warmup=3"]),
])
def test_weights_and_an_image_folder_for_a_tasks_architecture(factories, capsys, searcher, settings):
    summary, policy = _search(capsys, factories, "--task", "own_models:barnet_task", "--weights",
                              factories / "barnet.pt", "--data", f"imagefolder:{factories / 'images'}",
                              "--searcher", searcher, *settings)
    budget = policy["budgets"][0]
    assert policy["costs"]["size"] <= budget["limit"]
    assert policy["model"]["name"] == "barnet" and set(policy["layers"]) == {"conv1", "conv2", "fc"}
    assert 0.0 <= summary["metrics"]["top1"] <= 1.0
    code, out, err = run(capsys, "eval", factories / "p.json", "--task", "own_models:barnet_task", "--weights",
                         factories / "barnet.pt", "--data", f"imagefolder:{factories / 'images'}", "--json")
    assert code == 0, err
    assert json.loads(out)["metrics"]["top1"] == pytest.approx(summary["metrics"]["top1"])


def test_resnet18_with_your_weights_and_images(files, capsys):
    _, policy = _search(capsys, files, "--task", "resnet18", "--weights", files / "r18.pt", "--data",
                        f"imagefolder:{files / 'rgb'}", "--searcher", "uniform")
    assert policy["model"]["name"] == "resnet18" and len(policy["layers"]) == 21
    assert policy["costs"]["size"] <= policy["budgets"][0]["limit"]
    code, out, err = run(capsys, "inspect", "--task", "resnet18", "--weights", files / "r18.pt")
    assert code == 0, err
    assert "fc has 3 outputs" in out  # the classifier takes the state dict's number of classes


@pytest.mark.slow
@pytest.mark.parametrize("searcher, settings", [
    ("ilp", ["--sensitivity", "hessian:probes=2,samples=9"]),
    ("fracbits", ["--set", "epochs=1"]),
    ("haq", ["--set", "episodes=4", "--set", "warmup=2"]),
    ("autoq", ["--set", "episodes=3", "--set", "warmup=2"]),
])
def test_every_searcher_on_resnet18_with_your_weights_and_images(files, capsys, searcher, settings):
    summary, policy = _search(capsys, files, "--task", "resnet18", "--weights", files / "r18.pt", "--data",
                              f"imagefolder:{files / 'rgb'}", "--searcher", searcher, *settings)
    assert policy["costs"]["size"] <= policy["budgets"][0]["limit"] and len(policy["layers"]) == 21
    assert 0.0 <= summary["metrics"]["top1"] <= 1.0


def test_a_factory_may_return_a_trained_model(factories, capsys):
    summary, policy = _search(capsys, factories, "--task", "own_models:barnet_trained", "--searcher", "random",
                              "--set", "samples=4")
    assert policy["model"]["name"] == "barnet" and summary["evaluations"] == 4
    code, out, err = run(capsys, "inspect", "--task", "own_models:barnet_trained")
    assert code == 0 and "barnet: BarNet from barnet.pt" in out and "conv2" in out, err


def test_one_line_errors(files, factories, capsys):
    images = f"imagefolder:{files / 'images'}"
    base = ("search", "--searcher", "uniform", "--budget", "size=4bit")
    code, _, err = run(capsys, *base, "--task", "resnet18", "--weights", files / "barnet.pt", "--data", images)
    one_line(code, err, "does not fit this architecture", "conv1.weight")
    code, _, err = run(capsys, *base, "--task", "resnet18", "--weights", files / "r18.pt", "--data",
                       f"imagefolder:{files / 'empty'}")
    one_line(code, err, "holds no images")
    code, _, err = run(capsys, *base, "--task", "own_models:wrong_metric")
    one_line(code, err, "metric 'top5' is not a key evaluate returns", "top1, loss")
    code, _, err = run(capsys, *base, "--task", "resnet18", "--weights", files / "nothing.pt", "--data", images)
    one_line(code, err, "no such file")
    code, _, err = run(capsys, *base, "--task", "resnet18", "--weights", files / "images" / "train" / "diagonal"
                       / "0000.png", "--data", images)
    one_line(code, err, "not a file torch.load(weights_only=True) can read")
    code, _, err = run(capsys, *base, "--task", "resnet18", "--weights", files / "r18.pt", "--data", "csv:foo")
    one_line(code, err, "unknown kind 'csv'")
    code, _, err = run(capsys, *base, "--task", "resnet18", "--data", images)
    one_line(code, err, "has no trained weights", "--weights FILE")
    code, _, err = run(capsys, *base, "--task", "own_models:barnet_trained", "--weights", files / "barnet.pt")
    one_line(code, err, "brings its own weights and data")
    code, _, err = run(capsys, *base, "--task", "own_models:barnet_task", "--weights", files / "barnet.pt",
                       "--data", f"imagefolder:{files / 'four'}")
    one_line(code, err, "4 classes, but the model's classifier (fc) has 3 outputs")


def test_nothing_is_written_on_error(files, capsys):
    out = files / "never.json"
    code, _, _ = run(capsys, "search", "--searcher", "uniform", "--budget", "size=4bit", "--task", "resnet18",
                     "--weights", files / "barnet.pt", "--data", f"imagefolder:{files / 'images'}", "--out", out)
    assert code == 2 and not out.exists()


def test_a_bench_suite_on_a_users_trained_model_with_a_lower_is_better_metric(factories, tmp_path, capsys):
    suite = tmp_path / "suite.toml"
    suite.write_text("""
name = "barnet_loss"
task = "own_models:barnet_loss"
seeds = [0, 1, 2]
budgets = ["size=3bit", "size=4bit"]
oracle = true

[space]
weight_bits = [2, 4, 8]

[[searchers]]
name = "uniform"

[[searchers]]
name = "random"
settings = { samples = 4 }
""")
    code, _, err = run(capsys, "bench", suite, "--out", tmp_path / "out")
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["objective"] for r in results["runs"]} == {"loss"}
    assert all(r["higher_is_better"] is False and r["score"] == -r["metric"] for r in results["runs"])
    assert all(row["regret_mean"] >= -1e-12 for row in results["summary"])
    oracle = {r["budget_label"]: r["metric"] for r in results["runs"] if r["oracle"]}
    assert all(r["metric"] >= oracle[r["budget_label"]] - 1e-12 for r in results["runs"])
    assert "loss (lower is better) mean" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "pareto.png").exists()
    fronts = [r["frontier"] for r in results["runs"] if r["oracle"]]
    assert fronts and all(len(front) >= 1 for front in fronts)
    for front in fronts:  # the oracle's frontier: dearer policies only where they lower the loss
        assert all(a[0] < b[0] and a[1] > b[1] for a, b in itertools.pairwise(front))
    assert pareto_front([(1, 0.5), (2, 0.3), (3, 0.4), (3, 0.2)], False) == [[1, 0.5], [2, 0.3], [3, 0.2]]
    assert pareto_front([(1, 0.5), (2, 0.3), (3, 0.4), (3, 0.2)], True) == [[1, 0.5]]
    first = results["runs"][0]
    policy = json.loads((tmp_path / "out" / first["policy_file"]).read_text())
    assert policy["search"]["objective"] == "loss" and policy["search"]["higher_is_better"] is False
    assert policy["metrics"]["loss"] == first["metric"]


def test_export_every_format_from_a_users_trained_model(factories, capsys):
    """The road out from the road in: csv, nncf (and back), onnx (scored by the user's own
    evaluate on the onnxruntime session) from a factory that returns a trained model, and
    onnx from a task's architecture with --weights and --data."""
    pytest.importorskip("onnxruntime")
    trained = "own_models:barnet_trained"
    summary, _ = _search(capsys, factories, "--task", trained, "--searcher", "ilp", "--sensitivity",
                         "hessian:probes=4,samples=40")
    policy = factories / "p.json"
    code, out, err = run(capsys, "export", policy, "--to", "csv", "--task", trained)
    assert code == 0, err
    assert [line.split(",")[0] for line in out.splitlines()] == ["layer", "conv1", "conv2", "fc"]
    code, _, err = run(capsys, "export", policy, "--to", "nncf", "--task", trained, "--out", factories / "n.json")
    assert code == 0, err
    code, _, err = run(capsys, "import", "--from", "nncf", factories / "n.json", "--task", trained,
                       "--out", factories / "back.json")
    assert code == 0, err
    assert json.loads((factories / "back.json").read_text())["layers"] == json.loads(policy.read_text())["layers"]
    code, _, err = run(capsys, "export", policy, "--to", "onnx", "--task", trained, "--out", factories / "m.onnx")
    assert code == 0 and "bitsearch's fake-quantized top1" in err, err
    code, out, err = run(capsys, "eval", "--onnx", factories / "m.onnx", "--task", trained, "--float-bias", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["metric"] == "top1" and abs(result["top1_difference_pp"]) <= 0.1 + 1e-9
    assert result["bitsearch_fake_quant"]["top1"] == pytest.approx(summary["metrics"]["top1"])
    arch = ("--task", "own_models:barnet_task", "--weights", factories / "barnet.pt")
    code, _, err = run(capsys, "export", policy, "--to", "onnx", *arch, "--out", factories / "m2.onnx")
    one_line(code, err, "has no data", "--data")
    assert not (factories / "m2.onnx").exists()
    images = f"imagefolder:{factories / 'images'}"
    code, _, err = run(capsys, "export", policy, "--to", "onnx", *arch, "--data", images, "--out", factories / "m2.onnx")
    assert code == 0 and f"--data {images}" in err, err
    code, out, err = run(capsys, "eval", "--onnx", factories / "m2.onnx", *arch, "--data", images)
    assert code == 0 and "difference" in out, err
    code, _, err = run(capsys, "export", policy, "--to", "onnx", "--task", trained, "--model", factories / "x.pt",
                       "--out", factories / "m3.onnx")
    one_line(code, err, "export it post-training")
    code, _, err = run(capsys, "export", policy, "--to", "csv", "--weights", factories / "barnet.pt")
    one_line(code, err, "give --task")


def test_hawq_round_trip_on_a_users_resnet(factories, capsys):
    """A user factory's own ResNet-18 exports to HAWQ-V3's bit_config and reads back."""
    task = "own_models:resnet18_shapes"
    _search(capsys, factories, "--task", task, "--searcher", "uniform")
    code, _, err = run(capsys, "export", factories / "p.json", "--to", "hawq", "--task", task,
                       "--out", factories / "bit_config.py")
    assert code == 0, err
    assert "bit_config_dict" in (factories / "bit_config.py").read_text()
    code, _, err = run(capsys, "import", "--from", "hawq", factories / "bit_config.py", "--task", task,
                       "--out", factories / "back.json")
    assert code == 0, err
    back = json.loads((factories / "back.json").read_text())
    assert back["layers"] == json.loads((factories / "p.json").read_text())["layers"]
    assert back["model"]["name"] == "my-resnet18"
