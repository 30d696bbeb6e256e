"""``bitsearch bench SUITE``: run a benchmark suite (see :mod:`bitsearch.bench`)."""

from __future__ import annotations

import argparse
import shlex
import sys

DESCRIPTION = """\
Run every searcher of a suite on every budget set and seed (a deterministic searcher runs
once), score every policy with the same evaluator, and write into --out DIR:
results.jsonl (the journal: one line per finished run), results.json, report.md
(mean and spread over seeds, cost, regret to the oracle, seconds, evaluations, budget
kept), pareto.png, curves.png and policies/ (each run's policy JSON).

A bench killed at any point finishes with --resume: finished runs are read back from
the journal and not run again."""

EPILOG_TAIL = """
examples:
  bitsearch bench benchmarks/mnist1d_layer.toml --out results/mnist1d_layer
  bitsearch bench benchmarks/mnist1d_layer.toml --out results/mnist1d_layer --resume --jobs 2
  bitsearch bench benchmarks/width_vs_mixed.toml --out wvm --only uniform,uniform-width,random
  bitsearch bench suite.toml --out DIR --scheduler tcp://10.0.0.5:8786   (needs bitsearch[dist])
  python -m bitsearch.bench table DIR            # the README's table, from DIR/results.json
"""


def register(subparsers) -> None:
    from ..bench import SUITE_FORMAT

    p = subparsers.add_parser(
        "bench", help="run a benchmark suite: searchers x budgets x seeds, with report and plots",
        description=DESCRIPTION, epilog=SUITE_FORMAT + EPILOG_TAIL,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", metavar="SUITE", help="the suite file (TOML; format below)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: bench-<suite name>)")
    p.add_argument("--resume", action="store_true",
                   help="finish a bench in DIR: runs recorded in its journal are not run again")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run on N local processes (default 1: in this process); with --scheduler local, "
                        "the number of Dask workers")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a Dask cluster: tcp://host:port, or 'local' for a LocalCluster "
                        "(needs pip install 'bitsearch[dist]')")
    p.add_argument("--only", action="append", metavar="SEARCHER",
                   help="run only these searchers (labels or names, comma-separated or repeated); "
                        "the oracle still runs when the suite asks for one")
    p.add_argument("--no-plots", action="store_true", help="skip pareto.png and curves.png")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from ..bench import load_suite, run_bench

    suite = load_suite(args.suite)
    out = args.out or f"bench-{suite.name}"
    command = "bitsearch " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None
    outcome = run_bench(suite, out, resume=args.resume, jobs=args.jobs, scheduler=args.scheduler,
                        only=args.only, plots=not args.no_plots, command=command)
    parts = [f"{outcome.planned} runs"]
    if outcome.resumed:
        parts.append(f"{outcome.resumed} already in the journal")
    parts.append(f"{outcome.ran} run now")
    if outcome.skipped:
        parts.append(f"{outcome.skipped} skipped (see the report)")
    if outcome.failed:
        parts.append(f"{outcome.failed} FAILED")
    print(f"bench {suite.name}: " + ", ".join(parts))
    print(f"wrote {outcome.out}/report.md, results.json, results.jsonl"
          + ("" if args.no_plots else ", pareto.png, curves.png"))
    return 1 if outcome.failed else 0
