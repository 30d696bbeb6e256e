"""How much slower is evaluating a fake-quantized model than the float model?

    python benchmarks/fakequant_speed.py [--tasks digits-cnn,mnist1d-cnn,semicircles-mlp]
                                         [--resnet-batch 8] [--repeats 40] [--threads 1]
                                         [--out benchmarks/results]

For every built-in trainable task, the trained float model and its fake-quantized copy
(:func:`bitsearch.quant.apply_policy`, calibrated on the task's calibration inputs) run
the same test set in the same batches (1,024, as ``evaluate_model``) under
``torch.no_grad()`` in eval mode -- what the Evaluator does for every policy.
Run it with ``BITSEARCH_CACHE`` unset (or pointing at a cache) so tasks train once.  Two
policies: uniform 4-bit weights / 8-bit activations, and a per-kernel mix of 2..8-bit
weights (seeded).  Shape-only ResNet-18 (random weights) runs one small batch at 224x224.

Float and quantized runs alternate, and the ratio reported is the median of the
per-pair ratios (robust on a shared machine; the minimum-time ratio is given too).  The
target is a ratio of at most 1.5.  Also reported: the full ``evaluate_model`` (loss and
argmax included), the first forward (which fills the weight cache), the training-path
forward (gradients on: weights quantized on every call), and what one fresh
``Evaluator.evaluate`` costs (copy, calibration, test set).

Writes ``fakequant_speed.json`` and ``fakequant_speed.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from bitsearch._io import atomic_write_text
from bitsearch.policy import LayerBits, Policy
from bitsearch.quant import apply_policy, calibrate

TARGET = 1.5
DEFAULT_TASKS = ("digits-cnn", "mnist1d-cnn", "semicircles-mlp")


def _forward_all(model, x, batch_size=1024):
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size])


def _paired(run_float, run_quant, repeats):
    """Alternate the two, ``repeats`` times each; seconds of each run."""
    run_float()
    run_quant()
    float_s, quant_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_float()
        t1 = time.perf_counter()
        run_quant()
        t2 = time.perf_counter()
        float_s.append(t1 - t0)
        quant_s.append(t2 - t1)
    return float_s, quant_s


def _summary(float_s, quant_s) -> dict:
    ratios = [q / f for f, q in zip(float_s, quant_s)]
    return {"float_ms": round(statistics.median(float_s) * 1e3, 4),
            "quant_ms": round(statistics.median(quant_s) * 1e3, 4),
            "ratio": round(statistics.median(ratios), 3),
            "ratio_of_min": round(min(quant_s) / min(float_s), 3)}


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def mixed_kernel_policy(space, seed=0) -> Policy:
    generator = torch.Generator().manual_seed(seed)
    bits = []
    for layer in space.layers:
        widths = torch.randint(2, 9, (layer.kernels,), generator=generator).tolist()
        bits.append((layer.name, LayerBits(tuple(widths), 8)))
    return Policy(tuple(bits), "kernel")


def measure_model(model, qmodel, x, *, repeats, y=None, batch_size=1024) -> dict:
    from bitsearch.tasks import evaluate_model

    row = _summary(*_paired(lambda: _forward_all(model, x, batch_size),
                            lambda: _forward_all(qmodel, x, batch_size), repeats))
    if y is not None:
        ev = _summary(*_paired(lambda: evaluate_model(model, x, y, batch_size),
                               lambda: evaluate_model(qmodel, x, y, batch_size), repeats))
        row["evaluate_model_ratio"] = ev["ratio"]
    # the training path: gradients on, weights and inputs quantized on every call
    def grad_forward(m):
        with torch.enable_grad():
            for start in range(0, len(x), batch_size):
                m(x[start:start + batch_size])
    train_f, train_q = _paired(lambda: grad_forward(model), lambda: grad_forward(qmodel), max(3, repeats // 4))
    row["grad_path_ratio"] = _summary(train_f, train_q)["ratio"]
    return row


def task_rows(name: str, repeats: int) -> list[dict]:
    from bitsearch.evaluate import Evaluator
    from bitsearch.tasks import get_task

    task = get_task(name)
    evaluator = Evaluator(task)
    model, data = evaluator.model, evaluator.data
    layer_space = evaluator.space()
    kernel_space = evaluator.space(granularity="kernel")
    rows = []
    for label, policy in (("uniform w4/a8", Policy.uniform(layer_space, 4, 8)),
                          ("per-kernel w2..8/a8", mixed_kernel_policy(kernel_space))):
        qmodel = apply_policy(model, policy)
        setup = _once(lambda: calibrate(qmodel, evaluator.calibration))
        first = _once(lambda: _forward_all(qmodel, data.x_test))
        row = {"case": name, "policy": label, "layers": len(layer_space.layers),
               "samples": len(data.x_test), "batch": min(1024, len(data.x_test))}
        row.update(measure_model(model, qmodel, data.x_test, y=data.y_test, repeats=repeats))
        row["calibration_ms"] = round(setup * 1e3, 3)
        row["first_forward_ms"] = round(first * 1e3, 3)
        fresh = Evaluator(task)
        fresh.float_metrics()
        fresh.layer_names()
        row["evaluator_evaluate_ms"] = round(_once(lambda: fresh.evaluate(policy)) * 1e3, 3)
        rows.append(row)
    return rows


def resnet_row(batch: int, repeats: int) -> dict:
    from bitsearch.tasks import get_task

    task = get_task("resnet18")
    model = task.trained_model()  # shape-only: random weights under the recipe's seed
    x = task.example_input(batch)
    from bitsearch.discover import discover

    space = discover(model, x[:1], model_name="resnet18")
    qmodel = apply_policy(model, Policy.uniform(space, 4, 8), calibration=x)
    row = {"case": "resnet18 (shape-only)", "policy": "uniform w4/a8", "layers": len(space.layers),
           "samples": batch, "batch": batch}
    row.update(measure_model(model, qmodel, x, repeats=repeats, batch_size=batch))
    return row


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def to_markdown(report: dict) -> str:
    lines = ["# Fake-quantized vs float evaluation", "",
             f"Command: `{report['command']}`", "",
             f"{report['machine']}; torch {report['torch']}, {report['threads']} thread(s); load average "
             f"{report['load_average_start']} at start, {report['load_average_end']} at the end.", "",
             f"Ratio = median over alternating runs of (fake-quant time / float time) for the same batches, "
             f"forward only under no_grad in eval mode; target <= {TARGET}.", "",
             "| model | policy | samples | float ms | fake-quant ms | ratio | ratio of minima | evaluate_model ratio "
             "| gradients-on ratio | meets target |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in report["results"]:
        lines.append(f"| {row['case']} | {row['policy']} | {row['samples']} | {row['float_ms']:.3f} | "
                     f"{row['quant_ms']:.3f} | {row['ratio']:.2f} | {row['ratio_of_min']:.2f} | "
                     f"{_fmt(row.get('evaluate_model_ratio'))} | {row['grad_path_ratio']:.2f} | "
                     f"{'yes' if row['meets_target'] else 'no'} |")
    lines += ["", "The first `evaluate` of a fresh Evaluator (quantized copy, calibration on the calibration "
              "inputs, the whole test set):", ""]
    for row in report["results"]:
        if "evaluator_evaluate_ms" in row:
            lines.append(f"- {row['case']}, {row['policy']}: {row['evaluator_evaluate_ms']:.1f} ms "
                         f"(calibration {row['calibration_ms']:.1f} ms, "
                         f"first forward {row['first_forward_ms']:.1f} ms)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--resnet-batch", type=int, default=8, help="0 to skip ResNet-18")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/fakequant_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load_start = [round(v, 2) for v in os.getloadavg()]
    results = []
    for name in [t for t in args.tasks.split(",") if t]:
        for row in task_rows(name, args.repeats):
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.resnet_batch:
        row = resnet_row(args.resnet_batch, max(5, args.repeats // 4))
        results.append(row)
        print(json.dumps(row), flush=True)
    for row in results:
        row["meets_target"] = row["ratio"] <= TARGET
    report = {"benchmark": "fakequant_speed", "command": command.strip(), "target_ratio": TARGET,
              "created": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
              "threads": args.threads, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "load_average_start": load_start, "load_average_end": [round(v, 2) for v in os.getloadavg()],
              "results": results}
    out = Path(args.out)
    atomic_write_text(out / "fakequant_speed.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "fakequant_speed.md", to_markdown(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
