"""Scale of the ilp searcher: kernel-wise ResNet-50 (27,560 kernels x widths 2..8, one
size budget), the knapsack path against PuLP + HiGHS and PuLP + CBC, in one run.

    python benchmarks/ilp_scale.py [--budget size=4bit] [--repeats 3]
                                   [--highs-time-limit 600] [--cbc-time-limit 600] [--skip-cbc]
                                   [--mip-gap G] [--out benchmarks/results]

Writes ``ilp_scale.json`` and ``ilp_scale.md`` under ``--out`` (with ``--mip-gap``:
``ilp_scale_gap.*``, the MIP solvers stopping at that relative gap instead of proving 0).

The space is ``bitsearch.discover`` on torchvision's ``resnet50(weights=None)`` (54 layers:
53 convolutions and the classifier).  The sensitivity is synthetic but built the way
HAWQ-V3 builds it, per kernel: ``trace_k * ||Q_b(w_k) - w_k||^2`` where ``Q_b`` is
bitsearch's own per-kernel symmetric quantizer applied to the model's (randomly
initialised) weights, and ``trace_k``, the Hessian trace per weight, is log-normal across
layers (sigma 1.0) and across the kernels of a layer (sigma 0.5), the first and last
layer 4x more sensitive.  Seed 0, so every run solves the same problem.

Timed for each method: building the Problem (budget resolution) and the whole
``ILPSearcher.search`` (formulation, solve, decoding, the budget check with the cost
models, bookkeeping): "build included".  For the MIP the PuLP model build and the
solver time are also given apart.  The knapsack path is timed ``--repeats`` times (the
machine is shared: the minimum is the cleanest figure; the median is given too).
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

import numpy as np

HERE = Path(__file__).resolve().parent


def resnet50_space(granularity: str):
    import torch
    import torchvision

    from bitsearch.discover import discover

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random weights every run
        model = torchvision.models.resnet50(weights=None).eval()
    space = discover(model, torch.zeros(1, 3, 224, 224), granularity=granularity, weight_bits=tuple(range(2, 9)),
                     act_bits=(8,), model_name="resnet50")
    return model, space


def hawq_like_sensitivity(model, space, seed: int = 0):
    """trace_k x ||Q_b(w_k) - w_k||^2 per kernel, with bitsearch.quant's quantizer."""
    import torch

    from bitsearch.quant import fake_quantize_weight
    from bitsearch.sensitivity.table import SensitivityTable

    rng = np.random.default_rng(seed)
    modules = dict(model.named_modules())
    bits = space.weight_bits
    weight = {}
    last = len(space.layers) - 1
    for index, layer in enumerate(space.layers):
        w = modules[layer.name].weight.detach().to(torch.float32)
        errors = np.empty((layer.kernels, len(bits)))
        with torch.no_grad():
            for j, b in enumerate(bits):
                diff = fake_quantize_weight(w, b) - w
                errors[:, j] = diff.reshape(layer.kernels, -1).pow(2).sum(dim=1).double().numpy()
        trace = rng.lognormal(np.log(1e-2), 1.0) * rng.lognormal(0.0, 0.5, size=layer.kernels)
        if index in (0, last):
            trace *= 4.0
        weight[layer.name] = trace[:, None] * errors
    return SensitivityTable(bits, weight, method="synthetic-hawq")


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (CBC runs as a child)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed_search(space, table, budgets, **settings):
    from bitsearch.problem import Problem
    from bitsearch.solvers.ilp import ILPSearcher

    started, cpu_started = time.perf_counter(), _cpu_seconds()
    problem = Problem.build(space, budgets, sensitivity=table)
    problem_seconds = time.perf_counter() - started
    result = ILPSearcher(**settings).search(problem)
    total = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_started
    info = dict(result.info)
    costs = {b.cost: result.costs[b.cost] for b in problem.budgets}
    limits = {b.cost: b.limit for b in problem.budgets}
    assert all(costs[c] <= limits[c] for c in costs)
    return {"settings": settings, "seconds_total": round(total, 4), "cpu_seconds_total": round(cpu, 4),
            "load_average": round(os.getloadavg()[0], 2), "seconds_problem": round(problem_seconds, 4),
            "seconds_search": round(result.seconds, 4), "objective": result.metrics["sensitivity"],
            "info": info, "costs": costs, "limits": limits, "policy_key": result.policy.key}


def fmt(value, digits=6):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="size=4bit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--highs-time-limit", type=float, default=600.0)
    parser.add_argument("--cbc-time-limit", type=float, default=600.0)
    parser.add_argument("--skip-cbc", action="store_true")
    parser.add_argument("--skip-mip", action="store_true", help="only the knapsack path (quick check)")
    parser.add_argument("--mip-gap", type=float, default=None,
                        help="relative gap at which HiGHS/CBC may stop (default: 0, exact); the results "
                             "then go to ilp_scale_gap.json/.md")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    command = "python benchmarks/ilp_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    import pulp
    import highspy  # noqa: F401
    import torch

    torch.set_num_threads(1)  # the setup's quantization errors: threads only contend on a shared machine

    out = {"benchmark": "ilp_scale", "command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg()),
                       "pulp": pulp.__version__, "numpy": np.__version__}}
    try:
        from importlib.metadata import version

        out["machine"]["highspy"] = version("highspy")
    except Exception:  # pragma: no cover
        pass

    t0 = time.perf_counter()
    model, kspace = resnet50_space("kernel")
    table = hawq_like_sensitivity(model, kspace)
    lspace = kspace.with_(granularity="layer")
    out["setup_seconds"] = round(time.perf_counter() - t0, 2)
    out["space"] = {"model": "torchvision resnet50(weights=None)", "layers": len(kspace.layers),
                    "kernels": sum(l.kernels for l in kspace.layers), "weight_bits": list(kspace.weight_bits),
                    "act_bits": list(kspace.act_bits), "binaries_kernel_wise": len(kspace.weight_units()) * 7,
                    "sensitivity": table.method}
    print(f"resnet50: {out['space']['layers']} layers, {out['space']['kernels']} kernels "
          f"(setup {out['setup_seconds']} s)", flush=True)

    # --- kernel-wise, one size budget ----------------------------------------------------------
    budgets = [args.budget]
    kernel = {"budget": args.budget, "runs": {}}
    runs = [timed_search(kspace, table, budgets, method="mckp") for _ in range(max(1, args.repeats))]
    totals = [r["seconds_total"] for r in runs]
    cpus = [r["cpu_seconds_total"] for r in runs]
    best = runs[0]
    best.update({"seconds_total_min": min(totals), "seconds_total_median": statistics.median(totals),
                 "seconds_total_all": totals, "cpu_seconds_min": min(cpus), "cpu_seconds_all": cpus,
                 "load_averages": [r["load_average"] for r in runs]})
    kernel["runs"]["mckp"] = best
    print(f"mckp: {min(totals):.3f} s (median {statistics.median(totals):.3f}; CPU {min(cpus):.3f} s), "
          f"objective {best['objective']:.10g}, "
          f"proven gap {best['info']['gap']:.2e}", flush=True)
    auto = timed_search(kspace, table, budgets, method="auto")
    kernel["runs"]["auto"] = auto
    print(f"auto: {auto['seconds_total']:.3f} s via {auto['info']['method']}", flush=True)
    if not args.skip_mip:
        solvers = [("highs", args.highs_time_limit)] + ([] if args.skip_cbc else [("cbc", args.cbc_time_limit)])
        for solver, limit in solvers:
            run = timed_search(kspace, table, budgets, method="mip", solver=solver, time_limit=limit,
                               mip_gap=args.mip_gap)
            kernel["runs"][f"pulp+{solver}"] = run
            print(f"pulp+{solver}: {run['seconds_total']:.1f} s (PuLP model {run['info'].get('model_seconds')} s, "
                  f"solve {run['info'].get('solve_seconds')} s, status {run['info']['status']}), objective "
                  f"{run['objective']:.10g}, gap {fmt(run['info'].get('gap'), 3)}", flush=True)
    reference = kernel["runs"]["mckp"]["objective"]
    for name, run in kernel["runs"].items():
        run["objective_vs_mckp"] = (run["objective"] - reference) / abs(reference)
    out["kernel_wise"] = kernel

    # --- layer-wise: every method, a few budgets ---------------------------------------------------
    layer_rows = []
    for budget_set in ([args.budget], ["bops=frac:0.4"], [args.budget, "bops=frac:0.3"]):
        for settings in ({"method": "auto"}, {"method": "mip", "solver": "highs"}, {"method": "mip", "solver": "cbc"}):
            if args.skip_mip and settings["method"] == "mip":
                continue
            run = timed_search(lspace, table, budget_set, **settings)
            layer_rows.append({"budgets": budget_set, **run})
            print(f"layer-wise {budget_set} {settings}: {run['seconds_total']:.3f} s, {run['info']['method']}, "
                  f"objective {run['objective']:.10g}", flush=True)
    out["layer_wise"] = layer_rows

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out["mip_gap"] = args.mip_gap
    stem = "ilp_scale" if args.mip_gap is None else "ilp_scale_gap"
    (out_dir / f"{stem}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    (out_dir / f"{stem}.md").write_text(report(out))
    print(f"wrote {out_dir / (stem + '.json')} and {out_dir / (stem + '.md')}")


def report(out) -> str:
    k = out["kernel_wise"]
    lines = [
        "# ilp scale: kernel-wise ResNet-50",
        "",
        f"Command: `{out['command']}`  ",
        f"Date: {out['date']}; machine: {out['machine']['cpus']} CPUs, {out['machine']['platform']}, "
        f"Python {out['machine']['python']}, PuLP {out['machine']['pulp']}, highspy "
        f"{out['machine'].get('highspy', '?')}; load average at start "
        f"{', '.join(f'{v:.1f}' for v in out['machine']['load_average_at_start'])} (the machine is shared).",
        "",
        f"Space: {out['space']['model']}, {out['space']['layers']} layers, {out['space']['kernels']:,} kernels, "
        f"weight widths {out['space']['weight_bits'][0]}..{out['space']['weight_bits'][-1]} "
        f"({out['space']['binaries_kernel_wise']:,} binaries), activations 8-bit; sensitivity "
        f"{out['space']['sensitivity']} (trace x ||Q_b(w_k) - w_k||^2 per kernel, see the script). "
        f"Budget `{k['budget']}`. HiGHS and CBC run "
        + ("to a gap of 0 (exact) within their time limits." if out.get("mip_gap") is None else
           f"to a relative gap of {out['mip_gap']:g}, the tolerance the knapsack path is held to."),
        "",
        "Seconds are wall clock for Problem.build + ILPSearcher.search (formulation, solve, decoding, the "
        "budget check with the cost models): build included.  CPU seconds count this process and its "
        "children (CBC runs as one); on a shared machine they are the steadier figure.  The load average "
        "during each run is in the JSON.",
        "",
        "| method | wall seconds (build included) | CPU seconds | PuLP model s | solve s | status | objective | proven gap | vs mckp |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, run in k["runs"].items():
        info = run["info"]
        seconds = run.get("seconds_total_min", run["seconds_total"])
        shown = f"{seconds:.3f}" + (f" (median {run['seconds_total_median']:.3f} of {len(run['seconds_total_all'])})"
                                    if "seconds_total_median" in run else "")
        cpu = run.get("cpu_seconds_min", run["cpu_seconds_total"])
        lines.append(f"| {name} | {shown} | {cpu:.3f} | {fmt(info.get('model_seconds'), 4)} | {fmt(info.get('solve_seconds'), 4)} | "
                     f"{info.get('status')} ({info.get('method')}) | {run['objective']:.10g} | {fmt(info.get('gap'), 3)} | "
                     f"{run['objective_vs_mckp']:+.2e} |")
    lines += ["", "## Layer-wise (54 layers)", "",
              "| budgets | method | seconds | status | objective |", "|---|---|---:|---|---:|"]
    for row in out["layer_wise"]:
        info = row["info"]
        name = info["method"] if info["method"] == "mckp" else f"pulp+{info['solver']}"
        lines.append(f"| {', '.join(row['budgets'])} | {name} | {row['seconds_total']:.3f} | {info['status']} | "
                     f"{row['objective']:.10g} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
