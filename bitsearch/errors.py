"""Typed errors of bitsearch.

Every error a user can cause derives from :class:`UserInputError`; the command line
turns those into one readable line on stderr and exit code 2.  Anything else is a bug
(exit code 1).  Messages say what was wrong, what was expected, and what to do.
"""

from __future__ import annotations


def _one_line(problems: list, source: str | None) -> str:
    """Every problem on one line: ``source: a`` or ``source: 3 problems: a; b; c``."""
    where = f"{source}: " if source else ""
    if len(problems) == 1:
        return f"{where}{problems[0]}"
    shown = "; ".join(problems[:8])
    more = f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
    return f"{where}{len(problems)} problems: {shown}{more}"


class BitsearchError(Exception):
    """Base class of every error raised on purpose by bitsearch."""


# every character str.splitlines() breaks a line at, and the other C0 controls, as escapes
_LINE_BREAKS = {c: f"\\x{c:02x}" for c in range(32) if c != 9}
_LINE_BREAKS.update({ord("\n"): "\\n", ord("\r"): "\\r", 0x7f: "\\x7f", 0x85: "\\x85",
                     0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_line_breaks(text: str) -> str:
    """``text`` with line breaks and control characters written as escapes: a message that
    quotes a name from a file (``"a\\nb"``) still prints as one line."""
    return str(text).translate(_LINE_BREAKS)


class _Problems:
    """Mixin of errors that list every problem found (``problems``), one clause each, so a
    user fixes them in one go; the message joins them on one line after ``source``."""

    def __init__(self, problems, source: str | None = None):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        super().__init__(_one_line(self.problems, source))


class UserInputError(BitsearchError):
    """Bad input: a file, a flag, a name or a number the user gave.  Exit code 2.

    Its message is always one line (:func:`escape_line_breaks`), whatever the input it quotes."""

    def __init__(self, *args):
        if args and isinstance(args[0], str):
            args = (escape_line_breaks(args[0]),) + args[1:]
        super().__init__(*args)


class InputFileError(UserInputError):
    """A file given to read that is not a readable regular file of a sane size and shape
    (a folder, a FIFO, a device, over its size limit, nested too deeply, not UTF-8...)."""


class OutputFileError(UserInputError):
    """A place given to write that the tool refuses (an existing folder, device or FIFO, a
    path under /proc or /sys, a missing folder) or cannot write (disk full, no permission)."""


class SpaceError(UserInputError):
    """A search space that is inconsistent (unknown tied layer, bad bit choices...)."""


class PolicyError(_Problems, UserInputError):
    """A policy that does not fit its space, or a malformed policy file (``problems``
    lists every problem found)."""


class BudgetParseError(UserInputError):
    """A budget string that does not parse (``size=1.2MB`` is the expected form)."""


class InfeasibleBudgetError(UserInputError):
    """No policy of the space meets the budget(s).

    ``cheapest`` is the lowest cost any policy of the space can reach for ``cost``.
    """

    def __init__(self, message: str, *, cost: str | None = None,
                 limit: float | None = None, cheapest: float | None = None,
                 unit: str | None = None):
        self.cost = cost
        self.limit = limit
        self.cheapest = cheapest
        self.unit = unit
        super().__init__(message)


class CostModelError(UserInputError):
    """An unknown cost model, or a cost model that cannot price a layer."""


class LatencyTableError(CostModelError):
    """A latency table that is malformed or misses an entry the space needs."""


class UnknownTaskError(UserInputError):
    """A task name that is neither built in nor an importable ``module:factory``."""


class UnknownSearcherError(UserInputError):
    """A searcher name that the registry does not know."""


class SearcherError(UserInputError):
    """A searcher refused to run.  Three kinds, each its own class:

    * :class:`SearcherSettingsError`: settings it does not accept (an unknown name, a
      wrong type, a value out of range).  Raised when the searcher is constructed, before
      any problem is built or any run starts.
    * :class:`SearcherUnsupportedError`: a problem it cannot handle with valid settings (a
      granularity it does not support, no evaluator or sensitivity table where it needs
      one, a space too large to enumerate).  Raised when ``search`` starts.
    * :class:`SolverTimeoutError`: a solver stopped at the time limit it was given before
      it found any policy.
    """


class SearcherSettingsError(_Problems, SearcherError):
    """Settings a searcher does not accept (``problems`` lists each bad setting)."""


class SearcherUnsupportedError(SearcherError):
    """A problem a searcher cannot handle (granularity, objective, size, cost models)."""


class SpaceTooLargeError(SearcherUnsupportedError):
    """A space too large for an enumerating searcher."""


class SolverTimeoutError(SearcherError):
    """A solver reached its time limit without any policy (raise the limit)."""


class ProblemFileError(UserInputError):
    """A tabular problem file that is malformed."""


class TaskError(UserInputError):
    """A task factory that returned something unusable."""


class QuantizationError(UserInputError):
    """A fake-quantized model used in a way it cannot be (e.g. quantized activations whose
    range was never calibrated)."""
