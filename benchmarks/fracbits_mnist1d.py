"""fracbits on mnist1d-cnn: accuracy beside uniform and the exhaustive optimum, and the
cost of a search epoch beside a float training epoch.

Space: layer-wise (and kernel-wise) weights {2,3,4,8}, activations fixed at 8 bits,
budget size=3bit.  Every policy is scored by the same Evaluator (post-training
quantization with calibration, test split).  fracbits runs as published (``refine=0``)
and, in separate rows, with ``--refine N`` rounds of evaluator-guided local search after
the projection (``bitsearch.solvers.refine``; 0 skips those rows).  Writes
benchmarks/results/fracbits_mnist1d.json and .md.

    nice python benchmarks/fracbits_mnist1d.py [--epochs 4] [--seeds 0 1 2] [--refine 3] [--skip-exhaustive]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from bitsearch import searchers
from bitsearch.build import ProblemOptions, SpaceOptions, problem_for_task

RESULTS = Path(__file__).parent / "results"


def float_epoch_seconds(task, repeats=2):
    """Seconds of one float training epoch of the task's model (its recipe's batch size, Adam)."""
    import torch.nn.functional as F

    data = task.data()
    model = task.trained_model()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    n, batch = len(data.x_train), task.recipe.batch_size
    times = []
    for r in range(repeats):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(r))
        start = time.perf_counter()
        for s in range(0, n, batch):
            index = order[s:s + batch]
            loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return min(times)


def run(name, problem, seed=0, **settings):
    started = time.perf_counter()
    result = searchers.create(name, **settings).search(problem, seed=seed)
    seconds = time.perf_counter() - started
    limit = problem.budgets[0].limit
    bits = {n: (b.weight_bits if not b.per_kernel else round(sum(b.weight_bits) / len(b.weight_bits), 3))
            for n, b in result.policy.bits}
    row = {"searcher": name, "granularity": problem.space.granularity, "seed": seed, "settings": settings,
           "top1": result.metrics.get("top1"), "size_over_budget": result.costs["size"] / limit,
           "fits": problem.fits(result.policy), "seconds": round(seconds, 2), "weight_bits": bits,
           "evaluations": len(result.history)}
    if name == "fracbits":
        row["epoch_seconds"] = result.info.get("epoch_seconds")
        row["relaxed_cost_ratios"] = result.info.get("relaxed_cost_ratios")
        row["learned_weight_bits"] = (result.info.get("learned_weight_bits")
                                      if problem.space.granularity == "layer" else None)
        row["refine"] = result.info.get("refine")
    print(json.dumps(row), flush=True)
    return row


def write(out, rows, command, float_top1, float_epoch):
    def median(values):
        return round(sorted(values)[len(values) // 2], 4) if values else None

    epochs = {g: [t for r in rows if r["searcher"] == "fracbits" and r["granularity"] == g
                  for t in r["epoch_seconds"]] for g in ("layer", "kernel")}
    summary = {
        "task": "mnist1d-cnn", "space": "weights {2,3,4,8}, activations 8 bit (fixed)", "budget": "size=3bit",
        "command": command,
        "machine": f"{platform.machine()} {platform.processor()}, torch {torch.__version__}, 1 thread "
                   "(2 cores shared with other jobs: timings are noisy)",
        "float_top1": float_top1, "float_epoch_seconds": round(float_epoch, 4),
        "search_epoch_seconds_median": {g: median(v) for g, v in epochs.items()},
        "rows": rows,
    }
    summary["epoch_ratio"] = {g: None if m is None else round(m / float_epoch, 3)
                              for g, m in summary["search_epoch_seconds_median"].items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    out.with_suffix(".md").write_text(out_markdown(summary))
    return summary


def out_markdown(summary):
    lines = ["# fracbits on mnist1d-cnn, size=3bit", "", f"Command: `{summary['command']}`  ",
             f"Machine: {summary['machine']}; float top-1 {summary['float_top1']:.4f}", ""]
    oracle = next((r["top1"] for r in summary["rows"] if r["searcher"] == "exhaustive"), None)

    def label(r):
        refine = r["settings"].get("refine")
        return r["searcher"] + (f" (refine={refine})" if refine else "")

    groups = {}
    for r in summary["rows"]:
        groups.setdefault((label(r), r["granularity"]), []).append(r)
    lines += ["| searcher | granularity | runs | median top-1 | gap to the exhaustive optimum (pp) | "
              "median evaluations | budget kept |", "|---|---|---|---|---|---|---|"]
    for (name, granularity), rs in groups.items():
        top1 = sorted(r["top1"] for r in rs)[len(rs) // 2]
        evals = sorted(r["evaluations"] for r in rs)[len(rs) // 2]
        gap = "-" if oracle is None else f"{100 * (oracle - top1):.2f}"
        lines.append(f"| {name} | {granularity} | {len(rs)} | {top1:.4f} | {gap} | {evals} | "
                     f"{'yes' if all(r['fits'] for r in rs) else 'NO'} |")
    lines += ["", "| searcher | granularity | seed | top-1 | size / budget | evaluations | seconds | widths |",
              "|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        widths = ", ".join(str(b) for b in r["weight_bits"].values())
        lines.append(f"| {label(r)} | {r['granularity']} | {r['seed']} | {r['top1']:.4f} | "
                     f"{r['size_over_budget']:.4f} | {r['evaluations']} | {r['seconds']} | {widths} |")
    lines += ["", "Widths: conv1..fc2; kernel-wise, each layer's mean over its kernels. The gap is to the "
              "best layer-wise policy (exhaustive); a negative gap means ahead of it, as kernel-wise policies "
              "can be."]
    med, ratio = summary["search_epoch_seconds_median"], summary["epoch_ratio"]
    lines += ["", f"Float training epoch: {summary['float_epoch_seconds']:.3f} s; search epoch (median): "
              f"layer {med['layer']} s (x{ratio['layer']}), kernel {med['kernel']} s (x{ratio['kernel']}). "
              "A rough figure: the float epoch is timed once before the runs and the search epochs during "
              "them, on a shared machine; `benchmarks/fracbits_epoch_cost.py` interleaves the two for the "
              "recorded ratio.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--refine", type=int, default=3,
                        help="rounds of local search in the refined fracbits rows (0: no such rows)")
    parser.add_argument("--skip-exhaustive", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "fracbits_mnist1d"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    options = ProblemOptions(budgets=("size=3bit",))
    rows = []
    layer = problem_for_task("mnist1d-cnn", SpaceOptions(granularity="layer", weight_bits=(2, 3, 4, 8), act_bits=(8,)),
                             options)
    kernel = problem_for_task("mnist1d-cnn", SpaceOptions(granularity="kernel", weight_bits=(2, 3, 4, 8),
                                                          act_bits=(8,)), options)
    kernel.evaluator = layer.evaluator  # the same Evaluator scores both
    task = layer.evaluator.task
    float_top1 = layer.evaluator.float_metrics()["top1"]
    float_epoch = float_epoch_seconds(task)
    command = "nice python benchmarks/fracbits_mnist1d.py " + " ".join(sys.argv[1:] if argv is None else argv)
    plan = [("uniform", layer, 0, {})]
    plan += [("fracbits", layer, seed, {"epochs": args.epochs}) for seed in args.seeds]
    plan += [("fracbits", kernel, seed, {"epochs": args.epochs}) for seed in args.seeds]
    if args.refine:
        plan += [("fracbits", problem, seed, {"epochs": args.epochs, "refine": args.refine})
                 for problem in (layer, kernel) for seed in args.seeds]
    if not args.skip_exhaustive:
        plan.append(("exhaustive", layer, 0, {}))
    summary = None
    for name, problem, seed, settings in plan:  # results are written after every run
        rows.append(run(name, problem, seed=seed, **settings))
        summary = write(Path(args.out), rows, command, float_top1, float_epoch)
    print(out_markdown(summary))
    return summary


if __name__ == "__main__":
    main()
