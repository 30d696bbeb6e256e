"""Quantization-aware fine-tuning (LSQ + PACT, cyclic LR), the integer model it saves, resume,
and bitsearch eval --model."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsearch.discover")
pytest.importorskip("bitsearch.tasks")
pytest.importorskip("bitsearch.quant.apply")

from bitsearch import finetune as ft  # noqa: E402
from bitsearch.cli import main  # noqa: E402
from bitsearch.policy import Policy, save_policy  # noqa: E402
from bitsearch.quant import apply_policy, fake_quantize_weight, quantize_weight_int  # noqa: E402
from bitsearch.quant.deploy import freeze  # noqa: E402
from bitsearch.quant.learnable import (  # noqa: E402
    LSQLinear, grad_scale, learnable_layer, learnable_modules, lipschitz_penalty, to_learnable,
)
from bitsearch.tasks import get_task  # noqa: E402

from helpers import assert_captured_one_line_error as one_line_error  # noqa: E402

TASK = "semicircles-mlp"  # trains in seconds
SETTINGS = ft.FinetuneSettings(epochs=2, seed=0)


def policy_for(task, weight_bits=2, act_bits=8):
    space = ft._space_of(task, 1.0)
    return Policy.uniform(space, weight_bits, act_bits)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    task = get_task(TASK)
    root = tmp_path_factory.mktemp("finetune")
    policy = policy_for(task)
    save_policy(policy, root / "policy.json")
    result = ft.finetune(task, policy, SETTINGS, out=root / "model.pt")
    return task, policy, result, root


# --- the quantizers ---------------------------------------------------------------------------
def test_cyclic_lr_levels():
    lrs = [ft.cyclic_lr(step, 80, 1.0) for step in range(160)]
    levels = sorted(set(round(v, 12) for v in lrs))
    assert len(levels) == 5  # 8 steps per cycle, symmetric: 5 distinct levels
    assert max(lrs) == pytest.approx(1.0) and min(lrs) == pytest.approx(1e-3)
    assert lrs[0] == pytest.approx(1e-3) and lrs[40] == pytest.approx(1.0) and lrs[79] == pytest.approx(10 ** -2.25)
    assert lrs[:80] == lrs[80:]  # periodic
    for a, b in zip(levels, levels[1:]):  # exponential: equal ratios between levels
        assert b / a == pytest.approx(10 ** 0.75)


def test_grad_scale_keeps_value_exactly():
    x = torch.rand(1000) * 3
    x.requires_grad_(True)
    y = grad_scale(x, 0.0137)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 0.0137))


def test_lsq_and_pact_gradients():
    torch.manual_seed(0)
    layer = learnable_layer(torch.nn.Linear(6, 4), 3, 4, act_signed=False, act_clip=0.5)
    x = torch.rand(8, 6)  # in [0, 1): about half above the clip of 0.5
    layer(x).sum().backward()
    assert layer.weight_step.grad is not None and layer.weight_step.grad.abs().sum() > 0
    assert layer.weight.grad is not None
    # PACT: d/d alpha flows only through the clipped inputs
    layer.zero_grad()
    clipped = layer.quantize_input(x)
    clipped.sum().backward()
    assert layer.act_clip.grad == pytest.approx(float((x >= 0.5).sum()))
    assert float(clipped.detach().max()) <= 0.5 + 1e-6 and float(clipped.detach().min()) >= 0


def test_learnable_starts_at_the_post_training_model():
    task = get_task(TASK)
    data = task.data()
    qmodel = apply_policy(task.trained_model(), policy_for(task, 3, 8), calibration=data.calibration)
    want = qmodel(data.x_test[:200]).detach()
    for name, module in dict(qmodel.named_modules()).items():
        if hasattr(module, "weight_bits"):
            assert torch.equal(module.quantized_weight(), fake_quantize_weight(module.weight, module.weight_bits))
    rounded = freeze(qmodel, integer_bias=True)(data.x_test[:200]).detach()
    model = to_learnable(qmodel).eval()
    learnable = dict(learnable_modules(model))
    assert learnable and all(m.bias_step() is not None for m in learnable.values())
    # it adds its biases on the int32 accumulator grid, as the integer runtime does ...
    got = model(data.x_test[:200]).detach()
    assert torch.allclose(got, rounded, atol=1e-4)
    assert not torch.allclose(got, want, atol=1e-4)  # at 3 bits the grid is coarse enough to show
    for m in learnable.values():
        step = m.bias_step()
        assert torch.equal(m.quantized_bias().detach(), torch.round(m.bias.detach() / step) * step)
    # ... and with that off, it computes the post-training model
    for m in learnable.values():
        m.integer_bias = False
    assert torch.allclose(model(data.x_test[:200]).detach(), want, atol=1e-4)
    assert any(isinstance(m, LSQLinear) for m in model.modules())


def test_bias_rounding_passes_the_gradient_straight_through():
    layer = learnable_layer(torch.nn.Linear(3, 2), 2, 8, act_clip=1.0)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.1234, -0.0567]))
    x = torch.rand(5, 3)
    layer(x).sum().backward()
    assert torch.allclose(layer.bias.grad, torch.full((2,), 5.0))
    step = layer.bias_step()
    assert torch.allclose(step, (torch.tensor(1.0) / 255) * layer.step().detach())
    assert not torch.equal(layer.quantized_bias().detach(), layer.bias.detach())


def test_lipschitz_penalty_is_zero_for_orthonormal_rows():
    layer = learnable_layer(torch.nn.Linear(4, 4), 8, None)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(4))
    model = torch.nn.Sequential(layer)
    assert float(lipschitz_penalty(model).detach()) == 0.0
    with torch.no_grad():
        layer.weight.mul_(2)
    assert float(lipschitz_penalty(model).detach()) == pytest.approx(4 * 9.0)


# --- fine-tuning and the saved model ------------------------------------------------------------
def test_finetune_recovers_accuracy_and_saves_a_weights_only_model(run):
    task, policy, result, root = run
    assert result.final["top1"] > result.ptq["top1"]
    assert [h["epoch"] for h in result.history] == [1, 2]
    saved = torch.load(root / "model.pt", weights_only=True)
    assert saved["format"] == ft.FORMAT and saved["task"] == TASK
    assert Policy.from_json(saved["policy"]) == policy
    assert saved["metrics"]["final"]["top1"] == result.final["top1"]
    for name, entry in saved["layers"].items():
        assert entry["values"].dtype == torch.int8
        assert int(entry["values"].abs().max()) <= 1  # 2-bit: -1..1
        assert entry["scales"].dtype == torch.float32 and entry["scales"].shape == entry["bits"].shape


def test_eval_model_gives_the_accuracy_at_the_end_of_finetuning(run, capsys):
    task, policy, result, root = run
    code = main(["eval", str(root / "policy.json"), "--task", TASK, "--model", str(root / "model.pt"), "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["top1"] == result.final["top1"]
    assert report["metrics"]["loss"] == result.final["loss"]


def test_apply_policy_and_finetuned_model_agree_bit_for_bit(run):
    task, policy, result, root = run
    saved = torch.load(root / "model.pt", weights_only=True)
    loaded = ft.load_finetuned(root / "model.pt", task)
    trained = dict(result.model.named_modules())
    # the fine-tuned model's float weights, through apply_policy's layers and the integer
    # quantizer with the same scales, give the saved integers
    qmodel = apply_policy(_float_twin(task, result.model), policy)
    qlayers = dict(qmodel.named_modules())
    for name, entry in saved["layers"].items():
        values, scales = entry["values"], entry["scales"]
        assert torch.equal(trained[name].integer_weight().values, values)
        assert torch.equal(trained[name].integer_weight().scales, scales)
        integer = quantize_weight_int(qlayers[name].weight, qlayers[name].weight_bits, scale=scales)
        assert torch.equal(integer.values, values)
        deq = values.float() * scales.reshape(-1, *[1] * (values.dim() - 1))
        assert torch.equal(fake_quantize_weight(qlayers[name].weight, qlayers[name].weight_bits, scale=scales), deq)
        assert torch.equal(trained[name].quantized_weight().detach(), deq)
        lq = dict(loaded.named_modules())[name]
        assert torch.equal(lq.quantized_weight().detach(), deq)


def _float_twin(task, learn_model):
    """The task's float architecture holding the fine-tuned model's float weights."""
    model = task.build_model()
    state = {k: v for k, v in learn_model.state_dict().items()
             if not k.endswith(("weight_step", "act_clip", "weight_bits", "act_bits_buffer", "act_signed"))}
    model.load_state_dict(state)
    return model


def test_resume_after_a_kill_ends_bit_for_bit_the_same(run, tmp_path):
    task, policy, result, root = run
    out = tmp_path / "model.pt"
    first = ft.finetune(task, policy, SETTINGS, out=out, stop_after=1)  # killed after epoch 1's checkpoint
    assert not out.exists() and (tmp_path / "model.pt.ckpt").exists() and len(first.history) == 1
    second = ft.finetune(task, policy, SETTINGS, out=out)
    assert second.resumed_from == 1 and second.history == result.history
    a, b = torch.load(root / "model.pt", weights_only=True), torch.load(out, weights_only=True)
    for name in a["layers"]:
        for key in ("values", "scales", "act_clip"):
            assert torch.equal(a["layers"][name][key], b["layers"][name][key]), (name, key)
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key


def test_checkpoint_from_another_policy_or_model_is_one_line_exit_2(run, tmp_path, capsys):
    task, policy, result, root = run
    out = tmp_path / "m.pt"
    ft.finetune(task, policy, ft.FinetuneSettings(epochs=2), out=out, stop_after=1)
    other = tmp_path / "other.json"
    save_policy(policy_for(task, 4, 8), other)
    code = main(["finetune", str(other), "--task", TASK, "--epochs", "2", "--out", str(out)])
    one_line_error(capsys, code, "another policy", "--restart")
    # a checkpoint of another model: the identity names another task and fingerprint
    state = torch.load(tmp_path / "m.pt.ckpt", weights_only=True)
    state["identity"] = {**state["identity"], "task": "digits-cnn", "fingerprint": "sha256:0000"}
    torch.save(state, tmp_path / "m.pt.ckpt")
    code = main(["finetune", str(root / "policy.json"), "--task", TASK, "--epochs", "2", "--out", str(out)])
    one_line_error(capsys, code, "another model")
    (tmp_path / "m.pt.ckpt").write_bytes(b"not a checkpoint")
    code = main(["finetune", str(root / "policy.json"), "--task", TASK, "--epochs", "2", "--out", str(out)])
    one_line_error(capsys, code, "not a readable")


def test_saved_model_or_policy_for_another_model_is_one_line_exit_2(run, tmp_path, capsys):
    task, policy, result, root = run
    # the model file evaluated on another task's architecture
    code = main(["eval", str(root / "policy.json"), "--task", "digits-cnn", "--model", str(root / "model.pt")])
    one_line_error(capsys, code, "another model")
    # a policy made for another model
    digits = get_task("digits-cnn")
    other = tmp_path / "digits.json"
    save_policy(policy_for(digits, 4, 8), other)
    code = main(["finetune", str(other), "--task", TASK, "--epochs", "1", "--out", str(tmp_path / "x.pt")])
    one_line_error(capsys, code, "another model")
    code = main(["eval", str(other), "--task", TASK, "--model", str(root / "model.pt")])
    one_line_error(capsys, code, "another model")
    # a policy with other widths than the model was fine-tuned at
    wider = tmp_path / "wider.json"
    save_policy(policy_for(task, 4, 8), wider)
    code = main(["eval", str(wider), "--task", TASK, "--model", str(root / "model.pt")])
    one_line_error(capsys, code, "other widths")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 10)
    code = main(["eval", str(root / "policy.json"), "--task", TASK, "--model", str(garbage)])
    one_line_error(capsys, code, "not a readable")


def test_lipschitz_regularizer_runs(run, tmp_path):
    task, policy, result, root = run
    res = ft.finetune(task, policy, ft.FinetuneSettings(epochs=1, lipschitz=1e-4), out=tmp_path / "l.pt")
    assert res.final["top1"] > 0.5
    saved = torch.load(tmp_path / "l.pt", weights_only=True)
    assert saved["settings"]["lipschitz"] == 1e-4


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(run, tmp_path):
    """A real kill: the command is SIGKILLed once its first checkpoint exists, then run again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    task, policy, result, root = run
    settings = ft.FinetuneSettings(epochs=6)
    reference = ft.finetune(task, policy, settings, out=tmp_path / "reference.pt")
    out = tmp_path / "killed.pt"
    command = [sys.executable, "-m", "bitsearch.cli", "finetune", str(root / "policy.json"), "--task", TASK,
               "--epochs", "6", "--out", str(out), "--json"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    checkpoint = tmp_path / "killed.pt.ckpt"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not out.exists()
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert 1 <= summary["resumed_after_epoch"] < 6
    assert summary["top1"] == reference.final["top1"]
    a, b = torch.load(tmp_path / "reference.pt", weights_only=True), torch.load(out, weights_only=True)
    for name in a["layers"]:
        assert torch.equal(a["layers"][name]["values"], b["layers"][name]["values"])
        assert torch.equal(a["layers"][name]["scales"], b["layers"][name]["scales"])
