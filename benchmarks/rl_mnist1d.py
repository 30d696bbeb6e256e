"""autoq and haq on mnist1d-cnn against uniform and the exhaustive optimum (issue 5).

    python benchmarks/rl_mnist1d.py [--episodes 300] [--seeds 0 1 2] [--budget size=3bit]
                                    [--out benchmarks/results]

Layer-wise weights {2, 3, 4, 8}, activations fixed at 8 bits, post-training quantization
with calibration (the task's Evaluator).  Both agents run at most ``--episodes``
episodes per seed; the table reports the median top-1 over the seeds beside
``uniform`` and the ``exhaustive`` optimum (every one of the 4,096 policies), and the
learning curves go to ``rl_mnist1d.json``.  All runs share one Problem, so the
evaluator's cache (by policy key) serves a policy a later run asks for again: the
seconds of later runs are lower than from a cold start (the RL runs go first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", default="size=3bit")
    parser.add_argument("--searchers", nargs="+", default=["autoq", "haq"])
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)

    from bitsearch import searchers
    from bitsearch.build import ProblemOptions, SpaceOptions, problem_for_task

    started = time.perf_counter()
    problem = problem_for_task("mnist1d-cnn", SpaceOptions(granularity="layer", weight_bits=(2, 3, 4, 8),
                                                           act_bits=(8,)),
                               ProblemOptions(budgets=(args.budget,)))
    runs = []

    def record(name, seed, result, seconds):
        curve = result.info.get("learning_curve", [])
        first_best = None
        for entry in curve:
            if entry["best_score"] is not None and entry["best_score"] >= result.score:
                first_best = entry["episode"]
                break
        runs.append({"searcher": name, "seed": seed, "top1": result.metrics["top1"],
                     "size": result.costs["size"], "limit": problem.budgets[0].limit,
                     "within_budget": problem.fits(result.policy),
                     "widths": {n: b.weight_bits for n, b in result.policy.bits},
                     "evaluations": result.evaluations, "seconds": round(seconds, 1),
                     "best_found_at_episode": first_best, "settings": result.settings,
                     "learning_curve": curve})
        print(f"{name} seed {seed}: top1 {result.metrics['top1']:.4f} in {seconds:.0f} s "
              f"(best at episode {first_best})", flush=True)

    for name in args.searchers:
        for seed in args.seeds:
            start = time.perf_counter()
            result = searchers.create(name, episodes=args.episodes).search(problem, seed=seed)
            record(name, seed, result, time.perf_counter() - start)
    for name in ("uniform", "exhaustive"):
        start = time.perf_counter()
        result = searchers.create(name).search(problem, seed=0)
        record(name, 0, result, time.perf_counter() - start)

    float_top1 = problem.evaluator.float_metrics()["top1"]
    summary = {}
    for name in args.searchers + ["uniform", "exhaustive"]:
        mine = [r for r in runs if r["searcher"] == name]
        summary[name] = {"median_top1": statistics.median(r["top1"] for r in mine),
                         "top1_by_seed": {r["seed"]: r["top1"] for r in mine},
                         "all_within_budget": all(r["within_budget"] for r in mine)}
    optimum = summary["exhaustive"]["median_top1"]
    for name in summary:
        summary[name]["gap_to_optimum_pp"] = round(100 * (optimum - summary[name]["median_top1"]), 2)
    report = {"task": "mnist1d-cnn", "space": "layer-wise weights {2,3,4,8}, activations 8 bit, PTQ",
              "budget": args.budget, "limit_bits": problem.budgets[0].limit, "episodes": args.episodes,
              "seeds": args.seeds, "float_top1": float_top1, "summary": summary, "runs": runs,
              "command": "python benchmarks/rl_mnist1d.py " + " ".join(argv or sys.argv[1:]),
              "commit": _commit(), "seconds": round(time.perf_counter() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rl_mnist1d.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "rl_mnist1d.md").write_text(render(report))
    print(render(report))


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def render(report) -> str:
    lines = [f"# autoq and haq on mnist1d-cnn ({report['space']}, {report['budget']})", "",
             f"Command: `{report['command']}` (commit {report['commit']}, {report['seconds']} s in all)", "",
             f"Float model top-1 {report['float_top1']:.4f}. Budget {report['limit_bits']:.0f} bits. "
             f"At most {report['episodes']} episodes per seed, seeds {report['seeds']}.", "",
             "| searcher | median top-1 | by seed | gap to the exhaustive optimum (pp) | budget kept |",
             "|---|---|---|---|---|"]
    for name, row in report["summary"].items():
        by_seed = ", ".join(f"{v:.4f}" for v in row["top1_by_seed"].values())
        lines.append(f"| {name} | {row['median_top1']:.4f} | {by_seed} | {row['gap_to_optimum_pp']} | "
                     f"{'yes' if row['all_within_budget'] else 'NO'} |")
    lines += ["", "| searcher | seed | widths (conv1..fc2) | evaluations | best found at episode | seconds |",
              "|---|---|---|---|---|---|"]
    for run in report["runs"]:
        widths = ", ".join(str(w) for w in run["widths"].values())
        lines.append(f"| {run['searcher']} | {run['seed']} | {widths} | {run['evaluations']} | "
                     f"{run['best_found_at_episode']} | {run['seconds']} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
