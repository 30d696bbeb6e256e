"""A latency search end to end in onnxruntime: table, search, export, measured latency.

    python benchmarks/onnx_latency.py [--task mnist1d-cnn] [--batch 1] [--repeats 50]
                                      [--threads 1] [--budget latency=frac:0.5]
                                      [--budget size=5bit,latency=frac:0.95] ...
                                      [--out benchmarks/results/onnx_latency]

1. ``bitsearch latency measure --runtime onnxruntime``: the per-layer table of the task at
   weights 2..8 bits, activations 8 bits (int4 storage for <= 4 bits, int8 above).
2. For each budget set: ``bitsearch search --searcher ilp --latency-table TABLE --budget ...``.
3. Each searched policy, uniform 8-bit, uniform 4-bit and the float model are exported to
   ONNX and timed end to end in onnxruntime (median of ``--repeats`` samples, alternating
   models so that load drifts hit all alike); their accuracy is computed by onnxruntime
   (all optimizations) and by bitsearch.
4. Per model: the latency the table predicts (the sum of its rows), the measured end-to-end
   latency, and their ratio: how well per-layer numbers add up.

Writes ``table.csv``, the policies, ``results.json`` and ``README.md`` under ``--out``.
Timings on a shared machine are provisional: re-run on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bitsearch._io import atomic_write_text


def run(argv):
    print("+ bitsearch " + " ".join(argv), file=sys.stderr)
    subprocess.run([sys.executable, "-m", "bitsearch.cli", *argv], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mnist1d-cnn")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", action="append", default=None,
                        help="comma-separated budgets of one search (repeat for several searches)")
    parser.add_argument("--provisional", action="store_true", help="mark the numbers provisional (shared machine)")
    parser.add_argument("--out", default="benchmarks/results/onnx_latency")
    args = parser.parse_args(argv)
    command = "python benchmarks/onnx_latency.py" + "".join(f" {a}" for a in (argv if argv is not None
                                                                              else sys.argv[1:]))
    # latency=frac:F lies between the uniform narrowest and widest policies' latencies; in
    # onnxruntime on x86 CPUs int4 layers are slower than int8 ones, so a size budget pulls the
    # widths down and a latency budget pushes them up: the pairs below make both bind, and
    # size=4.75bit alone shows what the latency budget changes
    budgets = args.budget or ["latency=frac:0.5", "size=4.75bit", "size=4.75bit,latency=frac:0.5",
                              "size=5bit,latency=frac:0.95"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "table.csv"
    run(["latency", "measure", "--runtime", "onnxruntime", "--task", args.task, "--weight-bits", "2-8",
         "--act-bits", "8", "--batch", str(args.batch), "--repeats", str(args.repeats), "--threads",
         str(args.threads), "--out", str(table)])

    import numpy as np
    import onnxruntime

    from bitsearch.cost.tables import LatencyTableCost
    from bitsearch.discover import discover
    from bitsearch.latency_ort import time_session
    from bitsearch.onnx_export import evaluate_onnx, export_onnx, quantized_model_for_task, session
    from bitsearch.policy import LayerBits, Policy, load_policy
    from bitsearch.tasks import evaluate_model, get_task

    task = get_task(args.task)
    float_model = task.trained_model().eval()
    data = task.data()
    space = discover(float_model, task.example_input(1), weight_bits=tuple(range(2, 9)), act_bits=(8,),
                     model_name=task.name)
    cost = LatencyTableCost.load(table)
    policies = {}
    skipped = []
    for i, spec in enumerate(budgets):
        path = out / f"policy_{i}.json"
        argv = ["search", "--task", args.task, "--searcher", "ilp", "--weight-bits", "2-8", "--act-bits", "8",
                "--latency-table", str(table), "--out", str(path)]
        for budget in spec.split(","):
            argv += ["--budget", budget]
        try:
            run(argv)
        except subprocess.CalledProcessError as exc:
            if exc.returncode != 2:
                raise
            skipped.append(spec)  # the budgets cannot be met on this machine's table (said above)
            continue
        policies[f"ilp {spec}"] = load_policy(path)
    for w in (8, 4):
        policies[f"uniform w{w}/a8"] = Policy(tuple((l.name, LayerBits(w, 8)) for l in space.layers), "layer",
                                             {"model": {"name": space.model_name, "fingerprint": space.fingerprint}})
    x = np.ascontiguousarray(task.example_input(args.batch).numpy(), dtype=np.float32)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, policy in policies.items():
            qmodel, meta = quantized_model_for_task(task, policy)
            path = Path(tmp) / f"{len(files)}.onnx"
            export_onnx(qmodel, task.example_input(2), path, metadata=meta)
            files[name] = path
            ort_all = evaluate_onnx(session(path), data.x_test, data.y_test)
            results[name] = {"policy": {n: [b.weight_bits, b.act_bits] for n, b in policy.bits},
                             "predicted_ms": cost.cost(space, policy),
                             "top1_bitsearch": meta["fake_quant_metrics"]["top1"],
                             "top1_onnxruntime": ort_all["top1"]}
        path = Path(tmp) / "float.onnx"
        export_onnx(float_model, task.example_input(2), path, metadata={"task": task.name})
        files["float"] = path
        results["float"] = {"policy": "float32", "predicted_ms": None,
                            "top1_bitsearch": evaluate_model(float_model, data.x_test, data.y_test)["top1"],
                            "top1_onnxruntime": evaluate_onnx(session(path), data.x_test, data.y_test)["top1"]}
        samples = {name: [] for name in files}
        for _ in range(5):  # rounds: every model timed in each, so that load drifts hit all alike
            for name, path in files.items():
                samples[name].append(time_session(path, x, repeats=max(3, args.repeats // 5), warmup=3,
                                                  threads=args.threads))
    for name, entry in results.items():
        entry["end_to_end_ms"] = statistics.median(samples[name])
        if entry["predicted_ms"] is not None:
            entry["predicted_over_measured"] = entry["predicted_ms"] / entry["end_to_end_ms"]
    meta = {"task": args.task, "batch": args.batch, "threads": args.threads, "repeats": args.repeats,
            "onnxruntime": onnxruntime.__version__, "budgets": budgets, "infeasible_here": skipped,
            "provisional": bool(args.provisional),
            "when": time.strftime("%Y-%m-%d"), "table_device": cost.device}
    atomic_write_text(out / "results.json", json.dumps({"meta": meta, "models": results}, indent=2) + "\n")
    lines = [f"# onnxruntime latency search on {args.task}" + (" (PROVISIONAL: shared, loaded machine)"
                                                             if args.provisional else ""), "",
             f"onnxruntime {onnxruntime.__version__}, batch {args.batch}, {args.threads} thread(s); table: "
             "`table.csv` (per-layer, profiled); end to end: median of 5 alternating rounds.", "",
             "```", command, "```", "",
             "| model | table predicts (ms) | measured end to end (ms) | predicted / measured | top1 bitsearch | "
             "top1 onnxruntime |", "|---|---|---|---|---|---|"]
    for name, entry in results.items():
        predicted = "" if entry["predicted_ms"] is None else f"{entry['predicted_ms']:.4f}"
        ratio = "" if entry.get("predicted_over_measured") is None else f"{entry['predicted_over_measured']:.2f}"
        lines.append(f"| {name} | {predicted} | {entry['end_to_end_ms']:.4f} | {ratio} | "
                     f"{entry['top1_bitsearch']:.4f} | {entry['top1_onnxruntime']:.4f} |")
    if skipped:
        lines += ["", "Budget sets this machine's table cannot meet (the search said why): "
                  + ", ".join(f"`{spec}`" for spec in skipped)]
    lines += ["", "Searched policies (weight bits per layer, activations 8):", ""]
    for name, entry in results.items():
        if name.startswith("ilp"):
            lines.append(f"- {name}: " + ", ".join(f"{n} {w}" for n, (w, a) in entry["policy"].items()))
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
