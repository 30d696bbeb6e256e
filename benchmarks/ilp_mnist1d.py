"""The ilp searcher on mnist1d-cnn with each sensitivity, beside the exhaustive oracle and
uniform widths, under one budget and one evaluator.

    python benchmarks/ilp_mnist1d.py [--budget size=3bit] [--skip-exhaustive] [--out benchmarks/results]

Layer-wise: weights {2,3,4,8}, activations fixed at 8 bits, 6 layers (4,096 policies, so
``exhaustive`` finds the best policy of the evaluator).  Kernel-wise: the same widths
per output kernel (202 kernels), where only the ILP (and uniform) can go.  Every policy
is scored by the same Evaluator: post-training quantization of the trained float model
with calibrated activations, top-1 on the 2,000 test series.  Sensitivities come from
``bitsearch.sensitivity.estimate`` (training samples only).  ``bmpq`` is run too; its
policy is scored the same way, and the accuracy of its own fine-tuned weights is given
beside.  Writes ``ilp_mnist1d.json`` and ``ilp_mnist1d.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="size=3bit")
    parser.add_argument("--skip-exhaustive", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    command = "python benchmarks/ilp_mnist1d.py " + " ".join(argv if argv is not None else sys.argv[1:])

    import torch

    torch.set_num_threads(1)
    from bitsearch import sensitivity
    from bitsearch.build import ProblemOptions, SpaceOptions, problem_for_task
    from bitsearch.searchers import create
    from bitsearch.tasks import get_task

    task = get_task("mnist1d-cnn")
    rows = []
    out = {"benchmark": "ilp_mnist1d", "command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "task": task.name, "budget": args.budget, "weight_bits": [2, 3, 4, 8], "act_bits": [8], "rows": rows}

    def record(granularity, searcher, problem, result, started, **extra):
        row = {"granularity": granularity, "searcher": searcher, "top1": result.metrics.get("top1"),
               "loss": result.metrics.get("loss"), "sensitivity": result.metrics.get("sensitivity"),
               "costs": {b.cost: result.costs[b.cost] for b in problem.budgets},
               "limit": {b.cost: b.limit for b in problem.budgets}, "evaluations": result.evaluations,
               "seconds": round(time.perf_counter() - started, 2), "policy": {
                   n: (b.weight_bits if not b.per_kernel else f"mean {b.mean_weight_bits:.2f}")
                   for n, b in result.policy.bits}, **extra}
        rows.append(row)
        print(f"{granularity:6} {searcher:22} top1 {row['top1']:.4f}  {row['seconds']:7.1f} s  {row['policy']}",
              flush=True)

    for granularity in ("layer", "kernel"):
        space_options = SpaceOptions(granularity=granularity, weight_bits=(2, 3, 4, 8), act_bits=(8,))
        problem = problem_for_task(task, space_options, ProblemOptions(budgets=(args.budget,)))
        if "float_top1" not in out:
            out["float_top1"] = problem.evaluator.float_metrics()["top1"]
        started = time.perf_counter()
        record(granularity, "uniform", problem, create("uniform").search(problem), started)
        for method in sensitivity.METHODS:
            started = time.perf_counter()
            table = sensitivity.estimate(task, problem.space, method)
            estimated = time.perf_counter() - started
            with_table = replace(problem, sensitivity=table)
            result = create("ilp").search(with_table)
            record(granularity, f"ilp ({method})", with_table, result, started,
                   estimate_seconds=round(estimated, 2), ilp_method=result.info["method"],
                   ilp_status=result.info["status"])
        started = time.perf_counter()
        result = create("bmpq", epochs=4, resolve_every=1).search(problem, seed=0)
        record(granularity, "bmpq", problem, result, started, finetuned_top1=result.info["finetuned"]["top1"],
               policies=[h["policy_key"] for h in result.info["history"]])
        if granularity == "layer" and not args.skip_exhaustive:
            started = time.perf_counter()
            record(granularity, "exhaustive", problem, create("exhaustive").search(problem), started)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ilp_mnist1d.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    (out_dir / "ilp_mnist1d.md").write_text(report(out))
    print(f"wrote {out_dir / 'ilp_mnist1d.json'} and {out_dir / 'ilp_mnist1d.md'}")


def report(out) -> str:
    lines = [f"# ilp on {out['task']}: sensitivities against the exhaustive oracle", "",
             f"Command: `{out['command']}`  ", f"Date: {out['date']}", "",
             f"Budget `{out['budget']}`, weights {out['weight_bits']}, activations {out['act_bits']} (fixed). "
             f"Every policy scored by the same evaluator: post-training quantization with calibration, top-1 on "
             f"the test split (float model: {out['float_top1']:.4f}).", "",
             "| granularity | searcher | top-1 (PTQ) | size / limit | evaluations | seconds | notes |",
             "|---|---|---:|---:|---:|---:|---|"]
    for row in out["rows"]:
        (cost, value), = row["costs"].items() if len(row["costs"]) == 1 else [(None, None)]
        ratio = f"{value / row['limit'][cost]:.4f}" if cost else "-"
        notes = []
        if "estimate_seconds" in row:
            notes.append(f"estimate {row['estimate_seconds']} s, {row['ilp_method']} {row['ilp_status']}")
        if "finetuned_top1" in row:
            notes.append(f"its fine-tuned weights: top-1 {row['finetuned_top1']:.4f}")
        if row["granularity"] == "layer":
            notes.append("bits " + ",".join(str(b) for b in row["policy"].values()))
        lines.append(f"| {row['granularity']} | {row['searcher']} | {row['top1']:.4f} | {ratio} | "
                     f"{row['evaluations']} | {row['seconds']} | {'; '.join(notes)} |")
    best = next((r for r in out["rows"] if r["searcher"] == "exhaustive"), None)
    if best:
        lines += ["", "Gap to the exhaustive optimum (layer-wise, percentage points of top-1):", ""]
        for row in out["rows"]:
            if row["granularity"] == "layer" and row["searcher"] != "exhaustive":
                lines.append(f"- {row['searcher']}: {100 * (row['top1'] - best['top1']):+.2f} pp")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
