"""``python -m bitsearch.bench table DIR`` renders the main table of a finished bench as
Markdown (and, with ``--readme FILE --name NAME``, replaces the block between
``<!-- bench-table:NAME -->`` and ``<!-- /bench-table:NAME -->`` in FILE);
``python -m bitsearch.bench report SUITE DIR`` renders its outputs again."""

from __future__ import annotations

import sys

from ..errors import UserInputError
from . import rerender
from .report import load_results, render_table, replace_readme_block


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bitsearch.bench",
                                     description="Render a finished bench's main table as Markdown, or its "
                                                 "report again.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("table", help="the searchers x budgets table of DIR/results.json")
    p.add_argument("directory", help="a bench output directory (or its results.json)")
    p.add_argument("--readme", metavar="FILE", help="replace the block <!-- bench-table:NAME --> ... "
                                                    "<!-- /bench-table:NAME --> in FILE instead of printing")
    p.add_argument("--name", help="the block's NAME (default: the suite's name)")
    r = sub.add_parser("report", help="render DIR's results.json, report.md and plots again from its journal "
                                      "(runs nothing)")
    r.add_argument("suite", help="the suite file the bench ran")
    r.add_argument("directory", help="the bench output directory")
    r.add_argument("--only", action="append", metavar="SEARCHER", help="as for bitsearch bench")
    r.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "report":
        try:
            rerender(args.suite, args.directory, only=args.only, plots=not args.no_plots)
        except UserInputError as exc:
            print(f"bitsearch.bench: error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.directory}/results.json, report.md" + ("" if args.no_plots else ", pareto.png, curves.png"),
              file=sys.stderr)
        return 0
    try:
        results = load_results(args.directory)
        table = render_table(results)
        if args.readme:
            name = args.name or results["suite"]["name"]
            replace_readme_block(args.readme, name, table)
            print(f"updated {args.readme} ({name})", file=sys.stderr)
        else:
            sys.stdout.write(table)
    except UserInputError as exc:
        print(f"bitsearch.bench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
