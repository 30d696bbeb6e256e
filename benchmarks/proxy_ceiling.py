"""How close can a searcher that minimises the loss come to the oracle?  The ceiling of a loss
proxy, measured by brute force, beside what iqp reached.

    python benchmarks/proxy_ceiling.py [--tasks mnist1d-cnn,digits-cnn,mnist-lenet5]
        [--budgets size=2.5bit,size=3bit,size=4bit] [--acts 8,float]
        [--bench benchmarks/results] [--out benchmarks/results/proxy_ceiling]

iqp, ilp and fracbits minimise a predicted loss change on the sensitivity samples (512
training samples); the oracle of the crosslayer suites maximises top-1 on the test split.  This
script measures, for every policy within each budget (layer-wise weights {2,3,4,8}, activations
8 bits or float, post-training with calibration, the evaluator the suites use), the mean
cross-entropy on

* the sensitivity samples (the very samples the tables are estimated on: a searcher that
  solved its objective perfectly, with every interaction, returns this argmin),
* the whole training split,
* the test split (the oracle's own samples),

and the top-1 on the test split.  Per cell it reports the regret (oracle top-1 minus the
top-1 of each argmin) and, from ``--bench`` (the committed ``crosslayer_act8`` and
``crosslayer_float`` results), iqp's own policy and regret.  When even the test loss's argmin
misses the oracle by more than 0.5 pp, no loss-minimising search can meet a 0.5 pp regret
there: loss and top-1 disagree on the best policy.

A second table is a check on the oracle itself: the top-1 on the training samples that
neither side looked at (the training split less the sensitivity samples; the oracle picks on
the test split, iqp on the sensitivity samples), for the oracle's policy, iqp's and the best
policy there.  The oracle is the best of up to thousands of test scores, so part of its lead
over any other policy is the test split's noise; where iqp's policy scores above the
oracle's on those unseen samples, the test split alone makes the oracle's policy look the
better one.  (The float model was trained on those samples, so all score higher there; only
the comparison counts.)  The numbers are deterministic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bitsearch._io import atomic_write_text

PROXIES = ("sensitivity", "train", "test")  # the samples each loss is measured on (see the docstring)


def policy_text(policy) -> str:
    return "/".join(str(b.weight_bits) for _, b in policy.bits)


def measure_cell_policies(task: str, act: str, budget: str, progress, memo: dict) -> tuple[list[dict], dict]:
    """Every policy of ``task``'s layer-wise {2,3,4,8} space within ``budget``, measured (``memo``:
    the rows already measured under another budget, by policy)."""
    import torch

    from bitsearch.build import ProblemOptions, SpaceOptions, problem_for_task
    from bitsearch.encoding import Encoding
    from bitsearch.evaluate import single_thread
    from bitsearch.sensitivity.estimators import DEFAULTS, _mean_loss, sample_batches

    torch.set_num_threads(1)
    space = SpaceOptions(granularity="layer", weight_bits=(2, 3, 4, 8), act_bits=None if act == "float" else (int(act),))
    problem = problem_for_task(task, space, ProblemOptions(budgets=(budget,)))
    evaluator = problem.evaluator
    data = evaluator.data
    settings = DEFAULTS["pairwise"]
    sets = {"sensitivity": evaluator.sensitivity_batches(settings["samples"], settings["batch_size"], 0),
            # the whole training split in the permutation the sensitivity samples are the head of
            "train": sample_batches(data.x_train, data.y_train, len(data.x_train), 512, 0),
            "test": sample_batches(data.x_test, data.y_test, len(data.x_test), 512, 0)}
    seen = sum(len(batch[1]) for batch in sets["sensitivity"])
    assert torch.equal(torch.cat([b[0] for b in sets["train"]])[:seen], torch.cat([b[0] for b in sets["sensitivity"]]))
    within = [policy for policy in Encoding(problem.space).every_policy() if problem.fits(policy)]
    rows = []
    for i, policy in enumerate(within, start=1):
        text = policy_text(policy)
        if text in memo:
            rows.append(memo[text])
            continue
        qmodel = evaluator.quantized_model(policy)
        with single_thread(True):
            row = {name: _mean_loss(qmodel, batches, loss=evaluator.loss) for name, batches in sets.items()
                   if name != "train"}
            row["train"], row["unseen_top1"] = loss_and_unseen_top1(qmodel, sets["train"], seen)
        row["top1"] = evaluator.score_model(qmodel)["top1"]
        row["policy"] = text
        rows.append(row)
        memo[text] = row
        progress(f"{task} act={act} {budget}", i, len(within))
    meta = {"policies": len(within), "of": problem.space.num_policies(), "train_samples": len(data.x_train),
            "test_samples": len(data.x_test), "sensitivity_samples": seen, "unseen_samples": len(data.x_train) - seen}
    return rows, meta


def loss_and_unseen_top1(model, batches, seen: int) -> tuple[float, float]:
    """The mean cross-entropy over ``batches`` (every task here is a classifier, the loss its
    evaluator uses) and the top-1 on the samples after the first ``seen``, in one pass."""
    import torch
    import torch.nn.functional as F

    total, right, count = 0.0, [], 0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            total += float(F.cross_entropy(logits, y)) * len(y)
            count += len(y)
            right.append(logits.argmax(1) == y)
    return total / count, float(torch.cat(right)[seen:].float().mean())


def iqp_runs(bench: Path) -> dict:
    """``(task, act, budget) -> (policy, top1, oracle top1)`` from the committed crosslayer suites."""
    found = {}
    for act, folder in (("8", "crosslayer_act8"), ("float", "crosslayer_float")):
        path = bench / folder / "results.json"
        if not path.exists():
            continue
        runs = json.loads(path.read_text())["runs"]
        best = {}
        for run in runs:
            if run.get("oracle"):
                best[(run["variant"].split(" ")[0], run["budget_label"])] = run["metric"]
        for run in runs:
            if run["searcher"] == "iqp":
                key = (run["variant"].split(" ")[0], run["budget_label"])
                found[(key[0], act, key[1])] = (run["policy_summary"], run["metric"], best.get(key))
    return found


def summarise(rows: list[dict]) -> dict:
    oracle = max(rows, key=lambda r: r["top1"])
    unseen = max(rows, key=lambda r: r["unseen_top1"])
    cell = {"oracle": {"policy": oracle["policy"], "top1": oracle["top1"], "unseen_top1": oracle["unseen_top1"]},
            "unseen_best": {"policy": unseen["policy"], "top1": unseen["top1"], "unseen_top1": unseen["unseen_top1"]}}
    for name in PROXIES:
        pick = min(rows, key=lambda r: r[name])
        cell[name] = {"policy": pick["policy"], "top1": pick["top1"], "regret_pp": 100 * (oracle["top1"] - pick["top1"])}
    return cell


def render(cells: list[dict], command: str) -> str:
    lines = ["# The ceiling of a loss proxy (layer-wise {2,3,4,8}, post-training)", "", "```", command, "```", "",
             "Regret = the oracle's test top-1 minus the test top-1 of the policy that minimises each loss, over every "
             "policy within the budget (brute force). `sensitivity` is what iqp's objective approximates (the argmin a "
             "perfect solver of it returns); `test` uses the oracle's own samples. iqp: the committed "
             "`crosslayer_act8` / `crosslayer_float` run. See benchmarks/proxy_ceiling.py.", "",
             "| task | act | budget | policies | oracle | regret: sensitivity loss | training loss | test loss | iqp | iqp regret |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        iqp = c.get("iqp")
        iqp_cells = (f"{iqp['policy']} | {iqp['regret_pp']:+.2f} pp" if iqp else "– | –")
        lines.append(f"| {c['task']} | {c['act']} | {c['budget']} | {c['policies']} | {c['oracle']['policy']} "
                     f"{100 * c['oracle']['top1']:.2f}% | " +
                     " | ".join(f"{c[name]['regret_pp']:+.2f} pp ({c[name]['policy']})" for name in PROXIES) +
                     f" | {iqp_cells} |")
    over = [c for c in cells if c["test"]["regret_pp"] > 0.5 + 1e-9]
    lines += ["", f"Cells where even the test loss's argmin misses the oracle by more than 0.5 pp: {len(over)} of {len(cells)}"
              + (" (" + ", ".join(f"{c['task']} act={c['act']} {c['budget']}" for c in over) + ")." if over else ".")]
    unseen = {c["task"]: c["meta"]["unseen_samples"] for c in cells}
    lines += ["", "## The oracle on samples it did not pick on", "",
              "Top-1 on the training samples outside the sensitivity samples (neither the oracle, which picks on the "
              "test split, nor iqp, which measures on the sensitivity samples, saw them; "
              + ", ".join(f"{task} {n:,}" for task, n in unseen.items()) + " samples). The float model was trained on them, "
              "so every policy scores higher there than on the test split; the comparison is what counts. "
              "`iqp - oracle` above zero: iqp's policy is the better one on those samples.", "",
              "| task | act | budget | oracle's policy | iqp's policy | iqp - oracle | best there |",
              "|---|---|---|---|---|---|---|"]
    for c in cells:
        iqp, oracle = c.get("iqp") or {}, c["oracle"]
        mine = iqp.get("unseen_top1")
        lines.append(f"| {c['task']} | {c['act']} | {c['budget']} | {oracle['policy']} {100 * oracle['unseen_top1']:.2f}% | "
                     + (f"{iqp['policy']} {100 * mine:.2f}% | {100 * (mine - oracle['unseen_top1']):+.2f} pp"
                        if mine is not None else "– | –")
                     + f" | {c['unseen_best']['policy']} {100 * c['unseen_best']['unseen_top1']:.2f}% |")
    return "\n".join(lines) + "\n"


def budget_order(spec: str) -> float:
    """The widest budget first, so that the narrower ones reuse its measurements."""
    try:
        return float(spec.split("=", 1)[1].removesuffix("bit"))
    except ValueError:
        return 0.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="mnist1d-cnn,digits-cnn,mnist-lenet5")
    parser.add_argument("--budgets", default="size=2.5bit,size=3bit,size=4bit")
    parser.add_argument("--acts", default="8,float")
    parser.add_argument("--bench", default="benchmarks/results", help="where the crosslayer suites' results are")
    parser.add_argument("--out", default="benchmarks/results/proxy_ceiling")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    iqp = iqp_runs(Path(args.bench))
    started = time.perf_counter()
    last = [0.0]

    def progress(what, done, total):
        now = time.perf_counter()
        if done == total or now - last[0] > 10:
            last[0] = now
            print(f"  {what}: {done}/{total} policies ({now - started:.0f} s)", file=sys.stderr, flush=True)

    cells, measured = [], {}
    order = {b: i for i, b in enumerate(args.budgets.split(","))}
    for task in args.tasks.split(","):
        for act in args.acts.split(","):
            memo = {}
            for budget in sorted(args.budgets.split(","), key=budget_order, reverse=True):
                rows, meta = measure_cell_policies(task, act, budget, progress, memo)
                cell = {"task": task, "act": act, "budget": budget, "policies": meta["policies"], "meta": meta,
                        **summarise(rows)}
                if (task, act, budget) in iqp:
                    policy, top1, oracle = iqp[(task, act, budget)]
                    cell["iqp"] = {"policy": policy, "top1": top1,
                                   "regret_pp": 100 * ((oracle if oracle is not None else cell["oracle"]["top1"]) - top1)}
                    mine = memo.get(policy)  # within the budget, so measured
                    if mine is not None:
                        cell["iqp"]["unseen_top1"] = mine["unseen_top1"]
                cells.append(cell)
            measured[f"{task} act={act}"] = sorted(memo.values(), key=lambda r: r["policy"])
    cells.sort(key=lambda c: (args.tasks.split(",").index(c["task"]), args.acts.split(",").index(c["act"]),
                              order[c["budget"]]))
    command = "python benchmarks/proxy_ceiling.py " + " ".join(
        f"--{k} {v}" for k, v in (("tasks", args.tasks), ("budgets", args.budgets), ("acts", args.acts)))
    atomic_write_text(out / "results.json", json.dumps({"command": command, "cells": cells, "measured": measured}) + "\n")
    atomic_write_text(out / "README.md", render(cells, command))
    print((out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
