"""The exportable forward (bitsearch.quant.deploy), ONNX export and onnxruntime evaluation."""

import json
import random

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bitsearch.cli import main  # noqa: E402
from bitsearch.onnx_export import (  # noqa: E402
    compare_outputs, evaluate_onnx, export_onnx, quantized_model_for_task, read_metadata, run_onnx, session,
)
from bitsearch.policy import LayerBits, Policy, save_policy  # noqa: E402
from bitsearch.quant import apply_policy, quantizable_layers  # noqa: E402
from bitsearch.quant.deploy import freeze, frozen_modules  # noqa: E402
from bitsearch.quant.learnable import learnable_modules, to_learnable  # noqa: E402
from bitsearch.quant.functional import activation_qparams, fake_quantize_activation, fake_quantize_weight  # noqa: E402
from bitsearch.tasks import evaluate_model, get_task  # noqa: E402
from helpers import assert_captured_one_line_error  # noqa: E402

TASKS = ("mnist1d-cnn", "digits-cnn", "semicircles-mlp")


def mixed_policy(model, seed, *, float_layer=None):
    """Per-kernel widths 2..8 on every other layer, layer widths on the rest, activations
    4/6/8; ``float_layer`` kept in float."""
    rng = random.Random(seed)
    bits = []
    for i, (name, module) in enumerate(quantizable_layers(model).items()):
        if name == float_layer:
            bits.append((name, LayerBits(32, None)))
        elif i % 2:
            bits.append((name, LayerBits(tuple(rng.choice((2, 3, 4, 8)) for _ in range(module.weight.shape[0])),
                                         rng.choice((4, 6, 8)))))
        else:
            bits.append((name, LayerBits(rng.choice((3, 4, 8)), rng.choice((4, 6, 8)))))
    granularity = "kernel" if any(b.per_kernel for _, b in bits) else "layer"
    return Policy(tuple(bits), granularity, {"model": {"name": "test"}})


@pytest.fixture(scope="module")
def mnist1d():
    task = get_task("mnist1d-cnn")
    return task, task.trained_model(), task.data()


# --- the frozen forward ------------------------------------------------------------------------
def test_frozen_layers_compute_the_fake_quantized_operands(mnist1d, one_thread):
    task, model, data = mnist1d
    qmodel = apply_policy(model, mixed_policy(model, 0), calibration=data.calibration).eval()
    frozen = freeze(qmodel)
    assert qmodel is not frozen and set(frozen_modules(frozen)) == set(quantizable_layers(model))
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0]))
             for n, m in frozen_modules(frozen).items()]
    with torch.no_grad():
        out = frozen(data.x_test[:256])
        ref = qmodel(data.x_test[:256])
    for h in hooks:
        h.remove()
    quant = dict(qmodel.named_modules())
    for name, layer in frozen_modules(frozen).items():
        q = quant[name]
        qparams = activation_qparams(q.act_bits, float(q.act_min), float(q.act_max))
        # input and weight exactly as the fake-quantized layer computes them
        assert torch.equal(layer.dequantized_input(seen[name]), fake_quantize_activation(seen[name], qparams))
        assert torch.equal(layer.dequantized_weight(), fake_quantize_weight(q.weight, q.weight_bits))
        assert layer.weight is None and layer.weight_int.dtype == torch.int8
    assert torch.allclose(out, ref, atol=1e-4)


def test_frozen_forward_has_no_data_dependent_branch(mnist1d):
    task, model, data = mnist1d
    frozen = freeze(apply_policy(model, mixed_policy(model, 1), calibration=data.calibration))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(frozen, (data.x_test[:4],), dynamic_shapes=({0: batch},), strict=False)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in targets) and any("dequantize_per_channel" in t for t in targets)
    assert torch.allclose(program.module()(data.x_test[:7]), frozen(data.x_test[:7]))


def test_uncalibrated_model_cannot_be_frozen(mnist1d):
    task, model, data = mnist1d
    from bitsearch.errors import QuantizationError

    with pytest.raises(QuantizationError, match="calibrat"):
        freeze(apply_policy(model, mixed_policy(model, 2)))


# --- the ONNX graph ------------------------------------------------------------------------------
def test_onnx_graph_stores_integers_per_kernel_and_keeps_float_layers(mnist1d, tmp_path, one_thread):
    task, model, data = mnist1d
    policy = mixed_policy(model, 3, float_layer="conv3")
    qmodel = apply_policy(model, policy, calibration=data.calibration).eval()
    result = export_onnx(qmodel, data.x_test[:2], tmp_path / "m.onnx", metadata={"task": task.name})
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    ops = [n.op_type for n in graph.node]
    quantized = [n for n, b in policy.bits if b.max_weight_bits < 32]
    assert ops.count("QuantizeLinear") == len(quantized) and ops.count("DequantizeLinear") == 2 * len(quantized)
    assert "conv3.weight" in inits and "conv3.weight_int" not in inits  # float layer stays float
    stored = {l.name: l.weight_storage for l in result.layers}
    for name, bits in policy.bits:
        if bits.max_weight_bits >= 32:
            continue
        init = inits[f"{name}.weight_int"]
        want = onnx.TensorProto.INT4 if bits.max_weight_bits <= 4 else onnx.TensorProto.INT8
        assert init.data_type == want and stored[name] == ("int4" if want == onnx.TensorProto.INT4 else "int8")
        values = onnx.numpy_helper.to_array(init).astype("int64")
        for k, b in enumerate(bits.kernel_bits(values.shape[0])):  # a narrow kernel keeps its own range
            qmax = 2 ** (b - 1) - 1
            assert abs(values[k]).max() == qmax, (name, k, b)
    # a DequantizeLinear per weight, axis 0 with one scale per kernel
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith(".weight_int")]
    assert len(weight_dq) == len(quantized)
    for node in weight_dq:
        axis = {a.name: a.i for a in node.attribute}.get("axis", 1)
        assert axis == 0
    # activations below 8 bits (or signed) are clipped to their own range
    clips = ops.count("Clip")
    narrow = sum(1 for _, b in policy.bits if b.act_bits is not None and b.act_bits < 8)
    assert clips >= narrow
    assert read_metadata(tmp_path / "m.onnx")["task"] == task.name


@pytest.mark.parametrize("task_name", TASKS)
def test_onnxruntime_accuracy_matches_bitsearch(task_name, tmp_path, one_thread):
    """Per built-in task: without integer-kernel bias rounding onnxruntime gives bitsearch's
    top-1 (within 0.1 pp; in practice equal).  With all its optimizations it rounds float
    biases to the accumulator grid and accumulates in int32; bitsearch's torch model with
    the same bias rounding then predicts its classes but for a few samples (measured on this
    heavy low-bit policy: 0.35% of mnist1d-cnn's test set, 0 on the size=3bit ILP policies)."""
    task = get_task(task_name)
    model, data = task.trained_model(), task.data()
    policy = mixed_policy(model, 4)
    qmodel = apply_policy(model, policy, calibration=data.calibration).eval()
    own = evaluate_model(qmodel, data.x_test, data.y_test)
    path = tmp_path / "m.onnx"
    export_onnx(qmodel, data.x_test[:2], path)
    exact = evaluate_onnx(session(path, float_bias=True), data.x_test, data.y_test)
    assert abs(exact["top1"] - own["top1"]) <= 0.001 + 1e-12
    plain = evaluate_onnx(session(path, optimization="none"), data.x_test, data.y_test)
    assert abs(plain["top1"] - own["top1"]) <= 0.001 + 1e-12
    deployed = session(path)
    rounded = freeze(qmodel, integer_bias=True)
    with torch.no_grad():
        expected = rounded(data.x_test).numpy()
    diff = compare_outputs(run_onnx(deployed, data.x_test), expected)
    assert diff["top1_disagreement"] <= 0.01, diff


@pytest.mark.parametrize("task_name", TASKS)
def test_finetuned_model_computes_in_onnxruntime_what_it_computed_in_torch(task_name, tmp_path, one_thread):
    """A fine-tuning (LSQ/PACT) model adds its biases on the int32 accumulator grid, so
    onnxruntime's integer kernels, with every optimization on, compute its predictions: the
    same top-1, and no sample predicted differently (measured: logits equal to the bit on
    these models; the float-bias difference of the post-training model is gone)."""
    task = get_task(task_name)
    model, data = task.trained_model(), task.data()
    qmodel = apply_policy(model, mixed_policy(model, 4), calibration=data.calibration).eval()
    learnable = to_learnable(qmodel).eval()
    assert any(m.bias_step() is not None for m in learnable_modules(learnable).values())
    own = evaluate_model(learnable, data.x_test, data.y_test)
    path = tmp_path / "ft.onnx"
    export_onnx(learnable, data.x_test[:2], path)
    deployed = session(path)
    assert evaluate_onnx(deployed, data.x_test, data.y_test)["top1"] == pytest.approx(own["top1"], abs=1e-12)
    with torch.no_grad():
        expected = learnable(data.x_test).numpy()
    diff = compare_outputs(run_onnx(deployed, data.x_test), expected)
    assert diff["top1_disagreement"] == 0, diff


# --- the commands --------------------------------------------------------------------------------
def test_cli_export_onnx_and_eval(mnist1d, tmp_path, capsys):
    task, model, data = mnist1d
    policy = mixed_policy(model, 5)
    from bitsearch.finetune import check_policy_for_task

    policy = check_policy_for_task(policy, task)
    src = tmp_path / "p.json"
    save_policy(policy, src)
    out = tmp_path / "p.onnx"
    assert main(["export", str(src), "--to", "onnx", "--task", task.name, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    assert main(["eval", "--onnx", str(out), "--task", task.name, "--float-bias", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(result["top1_difference_pp"]) <= 0.1
    assert result["bitsearch_fake_quant"]["top1"] == evaluate_model(
        apply_policy(model, policy, calibration=data.calibration), data.x_test, data.y_test)["top1"]
    assert main(["eval", "--onnx", str(out), "--task", task.name]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime" in text and "difference" in text


def test_cli_export_onnx_errors(mnist1d, tmp_path, capsys):
    task, model, data = mnist1d
    src = tmp_path / "p.json"
    save_policy(mixed_policy(model, 6), src)
    for argv, needle in ((["export", str(src), "--to", "onnx", "--out", str(tmp_path / "x.onnx")], "--task"),
                         (["export", str(src), "--to", "onnx", "--task", task.name], "--out"),
                         (["export", str(src), "--to", "onnx", "--task", "digits-cnn",
                           "--out", str(tmp_path / "x.onnx")], "layer"),
                         (["export", str(src), "--to", "csv", "--model", "m.pt"], "onnx only")):
        assert_captured_one_line_error(capsys, main(argv), needle)
        assert not (tmp_path / "x.onnx").exists()
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not onnx")
    assert_captured_one_line_error(capsys, main(["eval", "--onnx", str(bogus), "--task", task.name]), "bogus.onnx")


# --- latency measured in onnxruntime ---------------------------------------------------------------
def test_latency_measure_onnxruntime_writes_the_table_the_cost_model_reads(tmp_path, capsys):
    out = tmp_path / "ort.csv"
    assert main(["latency", "measure", "--runtime", "onnxruntime", "--task", "semicircles-mlp",
                 "--weight-bits", "3,4,8", "--act-bits", "8", "--repeats", "3", "--warmup", "1",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "end to end" in err and "add up" in err
    from bitsearch.cost.tables import LatencyTableCost
    from bitsearch.latency import read_template

    meta, keys = read_template(out)
    assert "onnxruntime" in meta["device"] and meta["runtime"].startswith("onnxruntime ")
    ends = json.loads(meta["end_to_end"])
    assert set(ends) == {"w4/a8", "w8/a8"} and all(v["end_to_end_ms"] > 0 for v in ends.values())
    table = LatencyTableCost.load(out)
    rows = {(k[0], k[1]): table.entries[k] for k in table.entries}
    names = {k[0] for k in keys}
    for name in names:  # widths of one storage class share a measurement
        assert rows[(name, 3)] == rows[(name, 4)] and rows[(name, 8)] > 0
    # the table drives a latency= search
    policy = tmp_path / "p.json"
    assert main(["search", "--task", "semicircles-mlp", "--searcher", "uniform", "--weight-bits", "3,4,8",
                 "--latency-table", str(out), "--budget", "latency=frac:0.5", "--out", str(policy)]) == 0
    assert "latency" in capsys.readouterr().out
    assert_captured_one_line_error(capsys, main(["latency", "measure", "--task", "semicircles-mlp", "--no-int4",
                                                 "--out", str(tmp_path / "t.csv")]), "--no-int4")
