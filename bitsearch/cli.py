"""The ``bitsearch`` command: one ordered table of commands.

Every command is a module of :mod:`bitsearch.commands` with ``register(subparsers)``,
which adds its parser and ``set_defaults(func=...)``; :data:`COMMANDS` lists them in the
order ``bitsearch --help`` shows them.  This module is the front end only: the library
never imports it (what both share -- progress bars, thread limits, file writing -- lives
in :mod:`bitsearch.progress` and :mod:`bitsearch._io`).

Exit codes: 0 success, 2 bad input (one readable line on stderr), 1 internal error.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from . import __version__
from .errors import UserInputError, escape_line_breaks

# (command, module in bitsearch.commands), in the order of `bitsearch --help`
COMMANDS: tuple[tuple[str, str], ...] = (
    ("tasks", "tasks"),
    ("searchers", "searchers"),
    ("inspect", "inspect"),
    ("search", "search"),
    ("eval", "eval"),
    ("export", "export"),
    ("bench", "bench"),
    ("import", "importer"),
    ("latency", "latency"),
    ("finetune", "finetune"),
)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2).

    A command whose help ends in text that is costly to build (bench's suite format, drawn
    from the shipped schema) sets ``epilog_factory``: it is called when that help is shown,
    so ``bitsearch --help`` and every other command start without it."""

    epilog_factory = None

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {escape_line_breaks(message)} (see {self.prog} --help)\n")

    def format_help(self):
        if self.epilog_factory is not None:
            self.epilog, self.epilog_factory = self.epilog_factory(), None
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    from .commands.search import EPILOG

    parser = Parser(prog="bitsearch", formatter_class=argparse.RawDescriptionHelpFormatter,
                    description="Mixed-precision bitwidth search: how many bits each layer (or each "
                                "output kernel) gets, under size, BOPs, energy or latency budgets.",
                    epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"bitsearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command, module in COMMANDS:
        import_module(f"bitsearch.commands.{module}").register(sub)
        if command not in sub.choices:  # pragma: no cover - a wiring mistake, caught by the tests
            raise RuntimeError(f"bitsearch.commands.{module} did not register the command {command!r}")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserInputError as exc:
        print(f"bitsearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bitsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
