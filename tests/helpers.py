"""Small problems for tests (synthetic spaces with sensitivity tables, no torch) and error assertions."""

from __future__ import annotations

# the small synthetic problems ship in bitsearch.testing (for searcher packages too)
from bitsearch.testing import conv, linear, small_layers, small_problem, small_space, synthetic_sensitivity  # noqa: F401


def assert_one_line_error(code, err, *needles):
    """A user error: exit code 2, one line on stderr, no traceback, naming every needle."""
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def assert_captured_one_line_error(capsys, code, *needles):
    """:func:`assert_one_line_error` on what ``capsys`` captured on stderr."""
    assert_one_line_error(code, capsys.readouterr().err, *needles)
