"""Scale of the ``ilp`` searcher, end to end through the command line (issue #13), side by
side with PuLP + HiGHS, in one run:

    python benchmarks/ilp_scale.py [--work DIR] [--out benchmarks/results] [--repeats 3]
                                   [--mip-time-limit 600] [--skip-pulp] [--skip-llama] [--pulp-llama]
                                   [--provisional]

Every timed step is a ``bitsearch search`` process, timed from its start to its exit
(interpreter start-up, imports, reading the problem file, the search, writing the policy
and printing the result included), with its CPU seconds and peak resident memory read from
``os.wait4``.  The cases, each a "Done when" item of the issue:

1. **rows** -- a tabular problem of 27,560 units: ResNet-50's output kernels written as rows
   (one-kernel layers) of a problem JSON, widths 2..8, one budget ``size=frac:0.25``: the
   tool against PuLP + HiGHS (build + solve at the default gap, 1e-4) on the same file:
   the goal is at least 15x faster (moonshot 50x), same or better objective.
2. **kernel-wise ResNet-50** (54 layers, 27,560 kernels, the problem written by
   ``write_problem``): two binding budgets ``size=frac:0.3 bops=frac:0.25`` under 3 s end to
   end with a proven gap of at most 1e-4; three (and ``bitfusion=frac:0.28``) under 6 s.
3. **Llama-7B-shaped** (32 blocks of q, k, v, o at 4096 rows, gate and up at 11,008, down at
   4,096: 1,359,872 output channels as units) in the ``.npz`` form: one budget
   ``size=4bit`` under 30 s and 4 GiB resident; two (and ``bitfusion=frac:0.35``: BOPs of a
   linear layer are its size again, so a second budget that binds beside size is a
   latency) under 60 s.
4. **linear growth** -- the same command at 20,000 and 80,000 units (one-kernel layers):
   the time should grow about 4x (tests/test_scale.py fails the build past 10x).
5. **start-up** -- ``python -X importtime -c "import bitsearch"`` and the wall time of
   ``import bitsearch`` and ``bitsearch --help`` against the bare interpreter (best of 10;
   the package's bytecode is compiled first, as an installed package has it).

PuLP + HiGHS runs through the same command (``--set method=mip``) and, for the rows case,
also in this process (PuLP model build + HiGHS solve, the figure the issue compares
against).  On the Llama-shaped problem PuLP would build 9.5 million binaries (hours and
tens of GiB): it runs only with ``--pulp-llama``.

Problems: the ResNet-50 space is ``bitsearch.discover`` on torchvision's
``resnet50(weights=None)`` (seeded) and its sensitivity is HAWQ-V3's form per kernel,
``trace_k * ||Q_b(w_k) - w_k||^2`` with bitsearch's quantizer (see
:func:`hawq_like_sensitivity`); the Llama-shaped one is synthetic (numpy, seeded, a Hessian
trace log-normal across layers and channels).  The files are built once into ``--work``.

The objective, bound, gap and binding budgets are deterministic; the seconds depend on the
machine: on a shared one the run is marked provisional (load average above a quarter of
the cores at the start, or ``--provisional``).  Writes ``ilp_scale.json`` and
``ilp_scale.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROWS_BUDGET = ["size=frac:0.25"]
KW_TWO = ["size=frac:0.3", "bops=frac:0.25"]
KW_THREE = ["size=frac:0.3", "bops=frac:0.25", "bitfusion=frac:0.28"]
LLAMA_ONE = ["size=4bit"]
LLAMA_TWO = ["size=4bit", "bitfusion=frac:0.35"]  # bops would be parallel to size here (macs = params)
GOALS = {"rows_speedup": 15.0, "rows_moonshot": 50.0, "kw_two_seconds": 3.0, "kw_three_seconds": 6.0,
         "gap": 1e-4, "llama_one_seconds": 30.0, "llama_one_rss_gib": 4.0, "llama_two_seconds": 60.0}


# --- problems ---------------------------------------------------------------------------------------
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
    """trace_k x ||Q_b(w_k) - w_k||^2 per kernel, with bitsearch.quant's quantizer; the trace
    per weight log-normal across layers (sigma 1.0) and kernels (sigma 0.5), the first and
    last layer 4x more sensitive."""
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


def rows_problem(space, table):
    """The same kernels as one-kernel layers (a row each): params and MACs per kernel."""
    from bitsearch.problem import Problem
    from bitsearch.sensitivity.table import SensitivityTable
    from bitsearch.space import Layer, SearchSpace, layers_fingerprint

    layers, names = [], []
    for layer in space.layers:
        for k in range(layer.kernels):
            names.append(f"{layer.name}[{k}]")
            layers.append(Layer(names[-1], layer.kind, params=layer.params // layer.kernels,
                                macs=layer.macs // layer.kernels, kernels=1))
    rows = np.concatenate([table.weight[layer.name] for layer in space.layers])
    rows_space = SearchSpace(tuple(layers), weight_bits=space.weight_bits, act_bits=space.act_bits,
                             model_name="resnet50-kernels-as-rows", fingerprint=layers_fingerprint(layers))
    rows_table = SensitivityTable.from_rows(space.weight_bits, names, rows, [1] * len(names), method=table.method)
    return Problem.build(rows_space, (), sensitivity=rows_table)


def llama_problem(blocks: int = 32, hidden: int = 4096, intermediate: int = 11008, seed: int = 0):
    """A Llama-7B-shaped problem per output channel (``blocks`` x q, k, v, o, gate, up, down)."""
    from bitsearch.problem import Problem
    from bitsearch.sensitivity.table import SensitivityTable
    from bitsearch.space import Layer, SearchSpace, layers_fingerprint

    rng = np.random.default_rng(seed)
    bits = np.arange(2, 9, dtype=float)
    noise = 1.0 / (12.0 * (2.0 ** bits - 1.0) ** 2)
    layers, rows = [], []
    shapes = (("self_attn.q_proj", hidden, hidden), ("self_attn.k_proj", hidden, hidden),
              ("self_attn.v_proj", hidden, hidden), ("self_attn.o_proj", hidden, hidden),
              ("mlp.gate_proj", intermediate, hidden), ("mlp.up_proj", intermediate, hidden),
              ("mlp.down_proj", hidden, intermediate))
    for block in range(blocks):
        for name, out_features, in_features in shapes:
            layers.append(Layer(f"model.layers.{block}.{name}", "linear", params=out_features * in_features,
                                macs=out_features * in_features, kernels=out_features, in_features=in_features,
                                out_channels=out_features))
            trace = rng.lognormal(0.0, 1.0) * rng.lognormal(0.0, 0.7, size=out_features)
            spread = rng.lognormal(0.0, 0.4, size=out_features)
            rows.append((trace * in_features * spread ** 2 * 1e-7)[:, None] * noise[None, :])
    space = SearchSpace(tuple(layers), weight_bits=tuple(range(2, 9)), act_bits=(16,), granularity="kernel",
                        model_name="llama-7b-shaped", fingerprint=layers_fingerprint(layers))
    table = SensitivityTable.from_rows(space.weight_bits, [l.name for l in layers], np.concatenate(rows),
                                       [l.kernels for l in layers], method="synthetic-hessian")
    return Problem.build(space, (), sensitivity=table)


def units_problem(units: int, seed: int = 0):
    """``units`` one-kernel layers with a Hessian-like table (the growth check)."""
    from bitsearch.problem import Problem
    from bitsearch.sensitivity.table import SensitivityTable
    from bitsearch.space import Layer, SearchSpace, layers_fingerprint

    rng = np.random.default_rng(seed)
    bits = np.arange(2, 9, dtype=float)
    noise = 1.0 / (12.0 * (2.0 ** bits - 1.0) ** 2)
    layers = [Layer(f"r{i}", "conv2d", params=int(p), macs=int(p) * 49, kernels=1)
              for i, p in enumerate(rng.integers(50, 5000, size=units))]
    rows = rng.lognormal(0.0, 1.0, size=(units, 1)) * noise[None, :]
    space = SearchSpace(tuple(layers), weight_bits=tuple(range(2, 9)), act_bits=(8,), model_name=f"units-{units}",
                        fingerprint=layers_fingerprint(layers))
    table = SensitivityTable.from_rows(space.weight_bits, [l.name for l in layers], rows, [1] * units)
    return Problem.build(space, (), sensitivity=table)


def build_files(work: Path, skip_llama: bool) -> dict:
    """Write the problem files once (not timed); returns their paths and facts."""
    from bitsearch.tabular import write_problem

    work.mkdir(parents=True, exist_ok=True)
    files = {"kw": work / "resnet50_kernel.json", "rows": work / "resnet50_rows.json",
             "llama": work / "llama7b_shaped.npz", "u20k": work / "units_20000.json", "u80k": work / "units_80000.json"}
    facts = {}
    if not (files["kw"].exists() and files["rows"].exists()):
        import torch

        torch.set_num_threads(1)
        model, space = resnet50_space("kernel")
        table = hawq_like_sensitivity(model, space)
        from bitsearch.problem import Problem

        write_problem(Problem.build(space, (), sensitivity=table), files["kw"])
        write_problem(rows_problem(space, table), files["rows"])
    if not skip_llama and not files["llama"].exists():
        write_problem(llama_problem(), files["llama"])
    for key, units in (("u20k", 20_000), ("u80k", 80_000)):
        if not files[key].exists():
            write_problem(units_problem(units), files[key])
    for key, path in files.items():
        if path.exists():
            facts[key] = {"path": str(path), "bytes": path.stat().st_size}
    return {"files": files, "facts": facts}


# --- running the command ------------------------------------------------------------------------------
def bitsearch_command() -> list[str]:
    script = shutil.which("bitsearch")
    return [script] if script else [sys.executable, "-m", "bitsearch.cli"]


_OBJECTIVE = re.compile(r"^objective (\S+), bound (\S+), proven gap (\S+) \((\w[\w+]*)(?:, (\w+))?\)$", re.M)
_BINDING = re.compile(r"^binding budgets: (.*)$", re.M)
_COSTS = re.compile(r"^costs: (.*)$", re.M)


def run_cli(args: list[str], *, cwd: Path) -> dict:
    """One ``bitsearch`` process: wall seconds, CPU seconds, peak RSS, and what it printed
    about the solve (objective, bound, gap, method, status, binding budgets)."""
    command = bitsearch_command() + args
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # read the pipes while waiting (a large output would otherwise fill them), then reap with wait4
    import threading

    chunks = {"out": [], "err": []}
    readers = [threading.Thread(target=lambda s=stream, k=key: chunks[k].append(s.read()))
               for key, stream in (("out", process.stdout), ("err", process.stderr))]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    for reader in readers:
        reader.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    out, err = "".join(chunks["out"]), "".join(chunks["err"])
    record = {"command": " ".join(["bitsearch"] + args), "returncode": process.returncode,
              "wall_seconds": round(wall, 3), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
              "max_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    if process.returncode != 0:
        record["stderr"] = err.strip()[-2000:]
        return record
    m = _OBJECTIVE.search(out)
    if m:
        record.update({"objective": float(m.group(1)), "bound": float(m.group(2)), "gap": float(m.group(3)),
                       "method": m.group(4), "status": m.group(5)})
    m = _BINDING.search(out)
    if m:
        record["binding"] = [] if m.group(1).startswith("none") else [b.strip() for b in m.group(1).split(",")]
    m = _COSTS.search(out)
    if m:
        record["costs"] = m.group(1)
    return record


def repeated(args: list[str], repeats: int, cwd: Path) -> dict:
    runs = [run_cli(args, cwd=cwd) for _ in range(max(1, repeats))]
    best = dict(min(runs, key=lambda r: r["wall_seconds"]))
    best["wall_seconds_all"] = [r["wall_seconds"] for r in runs]
    best["wall_seconds_median"] = statistics.median(best["wall_seconds_all"])
    best["max_rss_mib_all"] = [r["max_rss_mib"] for r in runs]
    return best


def search_args(path: Path, budgets: list[str], out: Path, *extra: str, kernel: bool = False) -> list[str]:
    args = ["search", "--problem", str(path), "--searcher", "ilp", "--out", str(out)]
    if kernel:
        args += ["--granularity", "kernel"]
    for budget in budgets:
        args += ["--budget", budget]
    return args + list(extra)


def pulp_in_process(path: Path, budgets: list[str], time_limit: float | None) -> dict:
    """PuLP model build + HiGHS solve at the default gap, in this process, after loading."""
    from bitsearch.solvers import ilp
    from bitsearch.tabular import load_problem

    problem = load_problem(path, budgets)
    form = ilp.build_formulation(problem)
    started = time.perf_counter()
    mip = ilp.build_mip(form)
    built = time.perf_counter()
    solver = ilp._make_solver("highs", time_limit=time_limit, mip_gap=ilp.DEFAULT_GAP, threads=None, verbose=False)
    outcome = ilp._solve_mip(mip, solver, "highs")
    solved = time.perf_counter()
    policy = ilp.decode(form, outcome.unit_choice, outcome.group_act)
    objective = problem.sensitivity.loss(problem.space, policy)
    return {"build_seconds": round(built - started, 3), "solve_seconds": round(solved - built, 3),
            "build_and_solve_seconds": round(solved - started, 3), "status": outcome.status,
            "objective": objective, "bound": outcome.bound, "variables": mip.variables}


# --- start-up ------------------------------------------------------------------------------------------
def best_wall(command: list[str], repeats: int = 10) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - started)
    return round(best, 4)


def startup() -> dict:
    import bitsearch  # a PEP 562 package: this imports nothing else

    package = Path(bitsearch.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package), str(ROOT / "solvers")],
                   stdout=subprocess.DEVNULL, check=False)  # an installed package has its bytecode
    trace = subprocess.run([sys.executable, "-X", "importtime", "-c", "import bitsearch"], capture_output=True,
                           text=True).stderr
    line = [l for l in trace.splitlines() if l.rstrip().endswith("| bitsearch")]
    cumulative = int(line[-1].split("|")[1]) if line else None
    heavy = [name for name in ("numpy", "torch", "pulp", "highspy", "jsonschema")
             if re.search(rf"\| +{name}$", trace, re.M)]
    return {"importtime_bitsearch_cumulative_us": cumulative, "importtime_heavy_modules": heavy,
            "python_pass_seconds": best_wall([sys.executable, "-c", "pass"]),
            "import_bitsearch_seconds": best_wall([sys.executable, "-c", "import bitsearch"]),
            "bitsearch_help_seconds": best_wall(bitsearch_command() + ["--help"]),
            "importtime": trace}


# --- the report -------------------------------------------------------------------------------------------
def check(value, goal, lower_is_better=True):
    if value is None:
        return "-"
    return "yes" if (value <= goal if lower_is_better else value >= goal) else "NO"


def report(out: dict) -> str:
    c = out["cases"]
    provisional = out["provisional"]
    lines = ["# ilp scale: end to end through the command line (issue #13)", ""]
    if provisional:
        lines += ["**PROVISIONAL**: measured on a shared machine (load average "
                  f"{', '.join(f'{v:.1f}' for v in out['machine']['load_average_at_start'])} on "
                  f"{out['machine']['cpus']} cores at the start); the seconds are noisy. The objective, bound, gap "
                  "and binding budgets are deterministic. Record the timings with: "
                  f"`{out['record_command']}` on a quiet machine.", ""]
    lines += [f"Command: `{out['command']}`  ",
              f"Date: {out['date']}; {out['machine']['cpus']} CPUs, {out['machine']['platform']}, Python "
              f"{out['machine']['python']}, numpy {out['machine']['numpy']}, PuLP {out['machine'].get('pulp', '?')}, "
              f"highspy {out['machine'].get('highspy', '?')}.", "",
              "Seconds are wall clock of the whole `bitsearch search` process (start-up, reading the file, the "
              "search, writing the policy, printing), best of the repeats; RSS is the process's peak.", "",
              "| Done when | goal | measured | met |", "|---|---|---|---|"]
    rows = c.get("rows", {})
    ours = rows.get("ilp", {})
    pulp = rows.get("pulp_in_process", {})
    pulp_cli = rows.get("pulp_cli", {})
    if ours:
        speed = rows.get("speedup_vs_pulp_build_solve")
        lines.append(f"| 27,560-unit tabular problem, one budget: faster than PuLP+HiGHS build+solve | >= 15x "
                     f"(moonshot 50x), objective same or better | {ours['wall_seconds']:.2f} s vs "
                     f"{pulp.get('build_and_solve_seconds', float('nan')):.2f} s: "
                     f"{speed if speed is None else f'{speed:.1f}x'}; objective {ours.get('objective')} vs "
                     f"{pulp.get('objective', '-')} | "
                     f"{check(speed, GOALS['rows_speedup'], False)}"
                     f"{'' if speed is None or speed < 50 else ' (moonshot too)'} |")
    for key, label, goal in (("kw_two", "kernel-wise ResNet-50, two binding budgets", GOALS["kw_two_seconds"]),
                             ("kw_three", "kernel-wise ResNet-50, three budgets", GOALS["kw_three_seconds"])):
        run = c.get(key, {}).get("ilp")
        if run:
            ok_gap = run.get("gap") is not None and run["gap"] <= GOALS["gap"]
            met = check(run["wall_seconds"], goal) if ok_gap else "NO (gap)"
            lines.append(f"| {label} | < {goal:g} s, proven gap <= 1e-4 | {run['wall_seconds']:.2f} s, gap "
                         f"{run.get('gap')}, binding {', '.join(run.get('binding', [])) or '-'} | {met} |")
    for key, label, goal in (("llama_one", "1.36M-unit Llama-7B-shaped .npz, one budget", GOALS["llama_one_seconds"]),
                             ("llama_two", "1.36M-unit Llama-7B-shaped .npz, two budgets",
                              GOALS["llama_two_seconds"])):
        run = c.get(key, {}).get("ilp")
        if run:
            extra = f", < {GOALS['llama_one_rss_gib']:g} GiB resident" if key == "llama_one" else ""
            rss = run["max_rss_mib"] / 1024
            met = check(run["wall_seconds"], goal)
            if key == "llama_one" and rss > GOALS["llama_one_rss_gib"]:
                met = "NO (memory)"
            lines.append(f"| {label} | < {goal:g} s{extra} | {run['wall_seconds']:.2f} s, {rss:.2f} GiB, gap "
                         f"{run.get('gap')} | {met} |")
    growth = c.get("growth")
    if growth:
        lines.append(f"| linear growth: 20k vs 80k units | about 4x (a test fails past 10x) | "
                     f"{growth['u20k']['wall_seconds']:.2f} s -> {growth['u80k']['wall_seconds']:.2f} s: "
                     f"{growth['ratio']:.2f}x (CPU {growth['cpu_ratio']:.2f}x) | {check(growth['ratio'], 10.0)} |")
    s = out.get("startup")
    if s:
        lines.append(f"| `import bitsearch` and `bitsearch --help` under 0.2 s | < 0.2 s | import "
                     f"{s['import_bitsearch_seconds']:.3f} s, --help {s['bitsearch_help_seconds']:.3f} s (bare "
                     f"python {s['python_pass_seconds']:.3f} s); importtime cumulative "
                     f"{s['importtime_bitsearch_cumulative_us']} us, heavy modules imported: "
                     f"{', '.join(s['importtime_heavy_modules']) or 'none'} | "
                     f"{check(max(s['import_bitsearch_seconds'], s['bitsearch_help_seconds']), 0.2)} |")
    lines += ["", "## Every run", "", "| case | method | wall s (all) | CPU s | RSS MiB | objective | bound | gap | "
              "binding |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, case in c.items():
        if name == "growth":
            continue
        for key in ("ilp", "pulp_cli"):
            run = case.get(key)
            if not run:
                continue
            if run.get("returncode"):
                lines.append(f"| {name} | {key} | failed: {run.get('stderr', '')[:200]} | | | | | | |")
                continue
            walls = ", ".join(f"{v:.2f}" for v in run.get("wall_seconds_all", [run["wall_seconds"]]))
            lines.append(f"| {name} ({', '.join(case['budgets'])}) | {run.get('method', key)} | {walls} | "
                         f"{run['cpu_seconds']:.2f} | {run['max_rss_mib']:.0f} | {run.get('objective')} | "
                         f"{run.get('bound')} | {run.get('gap')} | {', '.join(run.get('binding', []))} |")
        if case.get("pulp_in_process"):
            p = case["pulp_in_process"]
            lines.append(f"| {name} | PuLP build + HiGHS solve (in process, default gap) | "
                         f"{p['build_and_solve_seconds']:.2f} (build {p['build_seconds']:.2f}, solve "
                         f"{p['solve_seconds']:.2f}) | | | {p['objective']} | {p['bound']} | | |")
        if case.get("pulp_skipped"):
            lines.append(f"| {name} | PuLP + HiGHS | not run: {case['pulp_skipped']} | | | | | | |")
    lines.append("")
    return "\n".join(lines)


def child(argv) -> None:
    """Work done in a child process, so that the measuring process stays small: a process's
    peak RSS (``wait4``) counts the pages of the parent it was forked from."""
    if argv[0] == "build":
        built = build_files(Path(argv[1]), argv[2] == "skip-llama")
        print(json.dumps(built["facts"]))
    elif argv[0] == "pulp":
        path, limit, budgets = Path(argv[1]), float(argv[2]), argv[3:]
        print(json.dumps(pulp_in_process(path, budgets, limit), default=str))


def in_child(*argv) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *map(str, argv)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child {argv[0]} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bitsearch-ilp-scale"),
                        help="where the problem files are built, once (about 110 MB; default: the temp folder)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--repeats", type=int, default=3, help="runs of each bitsearch command (the best counts)")
    parser.add_argument("--mip-time-limit", type=float, default=600.0, help="seconds for PuLP + HiGHS")
    parser.add_argument("--skip-pulp", action="store_true", help="only the tool (a quick check)")
    parser.add_argument("--skip-llama", action="store_true", help="leave out the 1.36M-unit problem")
    parser.add_argument("--pulp-llama", action="store_true", help="also run PuLP + HiGHS on the 1.36M-unit problem")
    parser.add_argument("--provisional", action="store_true", help="mark the timings provisional")
    args = parser.parse_args(argv)
    command = "python benchmarks/ilp_scale.py " + " ".join(argv)
    load = list(os.getloadavg())
    cpus = os.cpu_count() or 1
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": cpus,
               "load_average_at_start": load, "numpy": np.__version__}
    try:
        from importlib.metadata import version

        machine["pulp"] = version("pulp")
        machine["highspy"] = version("highspy")
    except Exception:  # pragma: no cover
        pass
    out = {"benchmark": "ilp_scale", "command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": machine, "goals": GOALS, "cases": {},
           "provisional": bool(args.provisional or load[0] > 0.25 * cpus),
           "record_command": "python benchmarks/ilp_scale.py --repeats 3"}
    work = Path(args.work)
    t0 = time.perf_counter()
    out["files"] = in_child("build", work, "skip-llama" if args.skip_llama else "llama")
    files = {key: Path(value["path"]) for key, value in out["files"].items()}
    out["setup_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"problem files ready in {work} ({out['setup_seconds']} s)", flush=True)
    policies = work / "policies"
    policies.mkdir(exist_ok=True)
    limit = str(args.mip_time_limit)

    def case(name, path, budgets, *, kernel=False, pulp=True, in_process=False):
        record = {"problem": str(path), "budgets": budgets}
        record["ilp"] = repeated(search_args(path, budgets, policies / f"{name}.json", kernel=kernel), args.repeats,
                                 work)
        print(f"{name}: ilp {record['ilp'].get('wall_seconds')} s, gap {record['ilp'].get('gap')}, "
              f"binding {record['ilp'].get('binding')}", flush=True)
        if pulp and not args.skip_pulp:
            record["pulp_cli"] = run_cli(search_args(path, budgets, policies / f"{name}_pulp.json", "--set",
                                                     "method=mip", "--time-limit", limit, kernel=kernel), cwd=work)
            print(f"{name}: pulp+highs {record['pulp_cli'].get('wall_seconds')} s, objective "
                  f"{record['pulp_cli'].get('objective')}", flush=True)
            if in_process:
                record["pulp_in_process"] = in_child("pulp", path, args.mip_time_limit, *budgets)
                print(f"{name}: pulp build+solve in process "
                      f"{record['pulp_in_process']['build_and_solve_seconds']} s", flush=True)
        elif not pulp:
            record["pulp_skipped"] = ("PuLP would build 9.5 million binaries (hours, tens of GiB); "
                                      "--pulp-llama runs it")
        out["cases"][name] = record
        return record

    rows = case("rows", files["rows"], ROWS_BUDGET, in_process=True)
    if rows.get("pulp_in_process") and rows["ilp"].get("wall_seconds"):
        rows["speedup_vs_pulp_build_solve"] = rows["pulp_in_process"]["build_and_solve_seconds"] / \
            rows["ilp"]["wall_seconds"]
    if rows.get("pulp_cli") and rows["ilp"].get("wall_seconds") and not rows["pulp_cli"].get("returncode"):
        rows["speedup_vs_pulp_cli"] = rows["pulp_cli"]["wall_seconds"] / rows["ilp"]["wall_seconds"]
    case("kw_two", files["kw"], KW_TWO, kernel=True)
    case("kw_three", files["kw"], KW_THREE, kernel=True)
    if not args.skip_llama:
        case("llama_one", files["llama"], LLAMA_ONE, kernel=True, pulp=args.pulp_llama)
        case("llama_two", files["llama"], LLAMA_TWO, kernel=True, pulp=args.pulp_llama)
    growth = {key: repeated(search_args(files[key], ["size=frac:0.3"], policies / f"{key}.json"), args.repeats, work)
              for key in ("u20k", "u80k")}
    growth["ratio"] = growth["u80k"]["wall_seconds"] / growth["u20k"]["wall_seconds"]
    growth["cpu_ratio"] = growth["u80k"]["cpu_seconds"] / growth["u20k"]["cpu_seconds"]
    out["cases"]["growth"] = growth
    print(f"growth 20k -> 80k: {growth['ratio']:.2f}x wall, {growth['cpu_ratio']:.2f}x CPU", flush=True)
    out["startup"] = startup()
    print(f"start-up: import {out['startup']['import_bitsearch_seconds']} s, --help "
          f"{out['startup']['bitsearch_help_seconds']} s", flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ilp_scale.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    (out_dir / "ilp_scale.md").write_text(report(out))
    print(f"wrote {out_dir / 'ilp_scale.json'} and {out_dir / 'ilp_scale.md'}")


if __name__ == "__main__":
    main()
