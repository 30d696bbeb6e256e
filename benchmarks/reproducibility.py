"""Does the README's main job give the same numbers on other CPUs and thread counts?

Runs, each in a fresh process and a fresh cache (the shipped float weights; no training):
the Hessian table of mnist1d-cnn (weights {2,3,4,8}), the ILP's policy at size=3bit, the
top-1 and loss of the uniform 2/3/4/8-bit policies, and a from-scratch training of
digits-cnn -- under this machine's instruction set and under the narrower ones the CPU
libraries can be told to use (ATen's kernels, MKL and oneDNN capped at AVX2, then at SSE4),
and with two torch threads instead of one.  An instruction-set cap stands in for an older
CPU: the same library code paths, the same rounding.

    python benchmarks/reproducibility.py [--out benchmarks/results/reproducibility]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = [
    ("this CPU, 1 thread", {}, 1, True),
    ("AVX2 (ATen, MKL, oneDNN capped)", {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                                         "ONEDNN_MAX_CPU_ISA": "AVX2"}, 1, True),
    ("SSE4 / no vector kernels", {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                                  "ONEDNN_MAX_CPU_ISA": "SSE41"}, 1, True),
    ("this CPU, 2 threads", {}, 2, False),
]


def job(threads: int, train: bool) -> dict:
    import torch

    import bitsearch
    from bitsearch.build import ProblemOptions, SpaceOptions, problem_for_task
    from bitsearch.policy import Policy

    torch.set_num_threads(threads)
    problem = problem_for_task("mnist1d-cnn", SpaceOptions(weight_bits=(2, 3, 4, 8)),
                               ProblemOptions(budgets=("size=3bit",), sensitivity="hessian"))
    table = json.dumps(problem.sensitivity.to_dict(), sort_keys=True)
    result = bitsearch.searchers.create("ilp").search(problem, seed=0)
    uniform = {b: problem.evaluate(Policy.uniform(problem.space, b)) for b in (2, 3, 4, 8)}
    out = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": threads,
           "table_sha256": hashlib.sha256(table.encode()).hexdigest()[:16],
           "widths": {n: result.policy[n].weight_bits for n in problem.space.names},
           "top1": result.metrics["top1"], "loss": result.metrics["loss"],
           "uniform": {str(b): {"top1": m["top1"], "loss": m["loss"]} for b, m in uniform.items()}}
    if train:
        from bitsearch.tasks import get_task

        state, _ = get_task("digits-cnn").train_fresh()
        out["digits_training_sha256"] = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())
                                                       ).hexdigest()[:16]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/reproducibility")
    parser.add_argument("--job", nargs=2, type=int, metavar=("THREADS", "TRAIN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(job(args.job[0], bool(args.job[1]))))
        return 0
    rows = []
    for label, env, threads, train in VARIANTS:
        with tempfile.TemporaryDirectory() as cache:
            run = subprocess.run([sys.executable, __file__, "--job", str(threads), str(int(train))], check=True,
                                 capture_output=True, text=True,
                                 env={**os.environ, **env, "BITSEARCH_CACHE": cache})
        rows.append({"variant": label, "env": env, **json.loads(run.stdout.strip().splitlines()[-1])})
        print(label, rows[-1]["top1"], rows[-1]["table_sha256"], file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    base = rows[0]
    lines = ["# The README's main job on other instruction sets and thread counts", "",
             "Made by `python benchmarks/reproducibility.py` (each variant a fresh process and cache; the shipped "
             "float weights of mnist1d-cnn).", "",
             "| variant | kernels | ILP widths (conv1..fc2) | ILP top-1 | ILP loss | uniform 3-bit top-1 / loss | "
             "Hessian table | digits-cnn trained from scratch |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        same = lambda key: "same" if r.get(key) == base.get(key) else "differs"  # noqa: E731
        training = "–" if "digits_training_sha256" not in r else (
            "reference" if r is base else same("digits_training_sha256") + " bits")
        u3 = r["uniform"]["3"]
        lines.append(f"| {r['variant']} | {r['capability']} | {','.join(map(str, r['widths'].values()))} | "
                     f"{100 * r['top1']:.2f}% | {r['loss']:.10f} | {100 * u3['top1']:.2f}% / {u3['loss']:.10f} | "
                     f"{'reference' if r is base else same('table_sha256') + ' bits'} | {training} |")
    lines += ["", "Top-1 counts correct answers, so rounding in the last bits of a sum changes it only when a "
              "logit margin is that small; the losses and the sensitivity table show the rounding itself. "
              "Training amplifies it (many steps), which is why the package ships the trained weights.", ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
