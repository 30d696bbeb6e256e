"""``bitsearch bench SUITE``: run a benchmark suite (see :mod:`bitsearch.bench`);
``bitsearch bench table DIR`` and ``bitsearch bench report SUITE DIR``: render a finished
bench's table, or its outputs again."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import UserInputError

USAGE = """\
bitsearch bench SUITE [--out DIR] [--resume] [--jobs N] [--scheduler ADDRESS] [--only SEARCHER] [--no-plots]
       bitsearch bench table DIR [--readme FILE [--name NAME]]
       bitsearch bench report SUITE DIR [--only SEARCHER] [--no-plots]"""

DESCRIPTION = """\
Run every searcher of a suite on every budget set and seed (a deterministic searcher runs
once), score every policy with the same evaluator, and write into --out DIR:
results.jsonl (the journal: one line per finished run), results.json, report.md
(mean and spread over seeds, cost, regret to the oracle, seconds, evaluations, budget
kept), pareto.png, curves.png and policies/ (each run's policy JSON).

A bench killed at any point finishes with --resume: finished runs are read back from
the journal and not run again.

  table DIR          print the searchers x budgets table of DIR/results.json as Markdown
                     (--readme FILE: replace the block <!-- bench-table:NAME --> ...
                     <!-- /bench-table:NAME --> in FILE instead)
  report SUITE DIR   render DIR's results.json, report.md and plots again from its
                     journal (after the report code changed, say): runs nothing"""

EPILOG_TAIL = """
examples:
  bitsearch bench benchmarks/mnist1d_layer.toml --out results/mnist1d_layer
  bitsearch bench benchmarks/mnist1d_layer.toml --out results/mnist1d_layer --resume --jobs 2
  bitsearch bench benchmarks/width_vs_mixed.toml --out wvm --only uniform,uniform-width,random
  bitsearch bench suite.toml --out DIR --scheduler tcp://10.0.0.5:8786   (needs bitsearch[dist])
  bitsearch bench table DIR                      # the README's table, from DIR/results.json
  bitsearch bench table DIR --readme README.md   # ... written into README.md's block
  bitsearch bench report benchmarks/mnist1d_layer.toml results/mnist1d_layer
"""

ACTIONS = {"table": ("DIR",), "report": ("SUITE", "DIR")}
# options that belong to one form only (dest, flag, the forms that take it)
_OPTIONS = (("out", "--out", ("run",)), ("resume", "--resume", ("run",)), ("jobs", "--jobs", ("run",)),
            ("scheduler", "--scheduler", ("run",)), ("only", "--only", ("run", "report")),
            ("no_plots", "--no-plots", ("run", "report")), ("readme", "--readme", ("table",)),
            ("name", "--name", ("table",)))


def register(subparsers) -> None:
    def epilog():
        from ..bench import suite_format

        return suite_format() + EPILOG_TAIL

    p = subparsers.add_parser(
        "bench", help="run a benchmark suite: searchers x budgets x seeds, with report and plots",
        usage=USAGE, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    if hasattr(p, "epilog_factory"):  # the suite format is built when this help is shown
        p.epilog_factory = epilog
    else:  # pragma: no cover - a plain argparse parser
        p.epilog = epilog()
    p.add_argument("what", nargs="+", metavar="SUITE | table DIR | report SUITE DIR",
                   help="the suite file (TOML; format below), or an action and its arguments")
    run = p.add_argument_group("running a suite")
    run.add_argument("--out", metavar="DIR", help="output directory, created with its parents when missing "
                                                         "(default: bench-<suite name>)")
    run.add_argument("--resume", action="store_true",
                     help="finish a bench in DIR: runs recorded in its journal are not run again")
    run.add_argument("--jobs", type=int, default=None, metavar="N",
                     help="run on N local processes (default 1: in this process); with --scheduler local, "
                          "the number of Dask workers")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="run on a Dask cluster: tcp://host:port, or 'local' for a LocalCluster "
                          "(needs pip install 'bitsearch[dist]')")
    run.add_argument("--only", action="append", metavar="SEARCHER",
                     help="run (or report) only these searchers (labels or names, comma-separated or "
                          "repeated); the oracle still runs when the suite asks for one")
    run.add_argument("--no-plots", action="store_true", help="skip pareto.png and curves.png")
    table = p.add_argument_group("bench table")
    table.add_argument("--readme", metavar="FILE", help="replace the block <!-- bench-table:NAME --> ... "
                                                        "<!-- /bench-table:NAME --> in FILE instead of printing")
    table.add_argument("--name", help="the block's NAME (default: the suite's name)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    form = args.what[0] if args.what[0] in ACTIONS else "run"
    given = args.what[1:] if form != "run" else args.what
    wanted = ACTIONS.get(form, ("SUITE",))
    if len(given) != len(wanted):
        shown = "bitsearch bench " + ("" if form == "run" else form + " ") + " ".join(wanted)
        raise UserInputError(f"expected {shown} (got {' '.join(args.what)!r}); see bitsearch bench --help")
    for dest, flag, forms in _OPTIONS:
        if form not in forms and getattr(args, dest) not in (None, False):
            where = " or ".join("bitsearch bench SUITE" if f == "run" else f"bitsearch bench {f}" for f in forms)
            raise UserInputError(f"{flag} goes with {where}")
    if form == "table":
        return _table(given[0], args.readme, args.name)
    if form == "report":
        return _report(given[0], given[1], args.only, not args.no_plots)
    return _run(given[0], args)


def _run(suite_path: str, args) -> int:
    from ..bench import load_suite, run_bench

    suite = load_suite(suite_path)
    out = args.out or f"bench-{suite.name}"
    command = "bitsearch " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None
    outcome = run_bench(suite, out, resume=args.resume, jobs=1 if args.jobs is None else args.jobs,
                        scheduler=args.scheduler, only=args.only, plots=not args.no_plots, command=command)
    parts = [f"{outcome.planned} runs"]
    if outcome.resumed:
        parts.append(f"{outcome.resumed} already in the journal")
    parts.append(f"{outcome.ran} run now")
    if outcome.skipped:
        parts.append(f"{outcome.skipped} skipped (see the report)")
    if outcome.failed:
        parts.append(f"{outcome.failed} FAILED")
    if outcome.validations:
        parts.append(f"{outcome.validations} proxy validation(s)")
    print(f"bench {suite.name}: " + ", ".join(parts))
    print(f"wrote {outcome.out}/report.md, results.json, results.jsonl"
          + ("" if args.no_plots else ", pareto.png, curves.png"))
    return 1 if outcome.failed else 0


def _table(directory: str, readme: str | None, name: str | None) -> int:
    from ..bench import load_results, render_table, replace_readme_block

    results = load_results(directory)
    table = render_table(results)
    if readme:
        name = name or results["suite"]["name"]
        replace_readme_block(readme, name, table)
        print(f"updated {readme} ({name})", file=sys.stderr)
    else:
        sys.stdout.write(table)
    return 0


def _report(suite: str, directory: str, only, plots: bool) -> int:
    from ..bench import rerender

    rerender(suite, directory, only=only, plots=plots)
    print(f"wrote {directory}/results.json, report.md" + (", pareto.png, curves.png" if plots else ""),
          file=sys.stderr)
    return 0
