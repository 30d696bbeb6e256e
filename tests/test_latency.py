"""Latency tables: the template to fill, measurement on this CPU, and a measured table driving
a latency budget in bitsearch search end to end."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("bitsearch.discover")
pytest.importorskip("bitsearch.tasks")

from bitsearch import latency  # noqa: E402
from bitsearch.cli import main  # noqa: E402
from bitsearch.cost.tables import LatencyTableCost  # noqa: E402
from bitsearch.errors import LatencyTableError  # noqa: E402

from helpers import assert_captured_one_line_error as one_line_error  # noqa: E402

TASK = "semicircles-mlp"  # templates only build the model: no training
SHAPE_TASK = ["--task", "resnet18", "--width-mult", "0.25"]  # shape-only: a search needs no training


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    path = tmp_path_factory.mktemp("latency") / "table.csv"
    assert main(["latency", "measure", *SHAPE_TASK, "--weight-bits", "4,8,16", "--act-bits", "8",
                 "--repeats", "3", "--warmup", "1", "--out", str(path)]) == 0
    return path


def test_template_rows_and_metadata(tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert main(["latency", "template", "--task", TASK, "--weight-bits", "2,4,8", "--act-bits", "4,8,none",
                 "--out", str(out)]) == 0
    meta, keys = latency.read_template(out)
    assert meta["device"].startswith("FILL IN") and meta["unit"] == "ms" and meta["model"].startswith(TASK)
    layers = list(dict.fromkeys(k[0] for k in keys))
    assert len(keys) == len(layers) * 3 * 3
    assert (layers[0], 8, None) in keys and (layers[-1], 2, 4) in keys
    # an unfilled template is refused with a clear message, never read as zeros
    with pytest.raises(LatencyTableError, match="has no latency"):
        LatencyTableCost.load(out)
    # filled in (as a user would), it is what the latency cost model reads
    text = out.read_text().replace("FILL IN: the device these latencies were measured on", "my board")
    lines = []
    for line in text.splitlines():
        if not line.startswith("#") and not line.startswith("layer,"):
            parts = line.split(",")
            parts[3] = str(0.01 * int(parts[1]))
            line = ",".join(parts)
        lines.append(line)
    out.write_text("\n".join(lines) + "\n")
    table = LatencyTableCost.load(out)
    assert table.device == "my board" and len(table.entries) == len(keys)


def test_measured_table_covers_every_row(measured):
    table = LatencyTableCost.load(measured)
    meta, keys = latency.read_template(measured)
    assert len(table.entries) == len(keys) and all(v > 0 for v in table.entries.values())
    assert "torch" in table.device and "thread" in table.device
    assert "int8" in meta["kernels"] and "below 8 bits" in meta["charged"]
    text = measured.read_text()
    for name in {k[0] for k in keys}:
        # widths below 8 pay the int8 kernel: the same number as 8 bits; 16 bits runs in float32
        assert table.entries[(name, 4, 8)] == table.entries[(name, 8, 8)]
        assert f"{name},16,8," in text and ",float32," in text


def test_measured_table_drives_a_latency_budget(measured, tmp_path, capsys):
    table = LatencyTableCost.load(measured)
    out = tmp_path / "policy.json"
    code = main(["search", *SHAPE_TASK, "--searcher", "uniform", "--weight-bits", "4,8,16",
                 "--latency-table", str(measured), "--budget", "latency=frac:0.5", "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    policy = result["policy"]
    cost = sum(table.entries[(n, b["weight_bits"], b["act_bits"])] for n, b in policy["layers"].items())
    budget = [b for b in policy["budgets"] if b["cost"] == "latency"][0]
    assert cost <= budget["limit"] + 1e-12
    assert policy["costs"]["latency"] == pytest.approx(cost)


def test_table_with_missing_rows_is_one_line_exit_2(measured, tmp_path, capsys):
    lines = measured.read_text().splitlines()
    dropped = [l for l in lines if not l.startswith("#") and not l.startswith("layer,")][2]
    short = tmp_path / "short.csv"
    short.write_text("\n".join(l for l in lines if l != dropped) + "\n")
    layer, w, a = dropped.split(",")[:3]
    code = main(["search", *SHAPE_TASK, "--searcher", "uniform", "--weight-bits", "4,8,16",
                 "--latency-table", str(short), "--budget", "latency=frac:0.5"])
    one_line_error(capsys, code, "missing", f"{layer} w{w}/a{a}")


def test_template_from_another_model_is_refused(tmp_path, capsys):
    out = tmp_path / "digits.csv"
    assert main(["latency", "template", "--task", "digits-cnn", "--weight-bits", "8", "--out", str(out)]) == 0
    capsys.readouterr()
    code = main(["latency", "measure", "--task", TASK, "--template", str(out), "--out", str(tmp_path / "x.csv")])
    one_line_error(capsys, code, "another model")


def test_int8_twin_matches_float_layer():
    import torch
    from torch import nn

    torch.manual_seed(0)
    for module, x in ((nn.Conv1d(4, 8, 3, padding=1), torch.randn(2, 4, 16)),
                      (nn.Conv2d(3, 6, 3, stride=2), torch.randn(2, 3, 9, 9)), (nn.Linear(10, 5), torch.randn(3, 10))):
        qmodule = latency.int8_module(module)
        qmodule.scale, qmodule.zero_point = 0.05, 128
        got = qmodule(latency._quantize_input(x)).dequantize()
        want = module(x)
        # int8 weights and inputs: the same layer to within quantization error
        assert torch.allclose(got, want, atol=0.1), (got - want).abs().max()
