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


def synthetic_pairwise(space, seed=0, strength=1.0, table=None):
    """Cross-layer terms for every pair of free layers: ``c_ab * sqrt(s_a(p) * s_b(q))``,
    ``s`` the layers' separable values in ``table`` (default the synthetic one of
    ``seed``), ``c_ab`` of either sign times ``strength`` (seeded)."""
    import numpy as np

    from bitsearch.sensitivity.pairwise import PairwiseTable

    table = table or synthetic_sensitivity(space, seed)
    rng = np.random.default_rng(1000 + seed)
    free = [space.layers[i] for i in space.free_layers()]
    rows = {layer.name: np.sqrt(table.unit_table(space.with_(granularity="layer"), layer)[0]) for layer in free}
    terms = {}
    for k, a in enumerate(free):
        for b in free[k + 1:]:
            terms[(a.name, b.name)] = strength * rng.normal(0.0, 0.5) * np.outer(rows[a.name], rows[b.name])
    return PairwiseTable(space.weight_bits, terms, None, {pair: "all" for pair in terms}, {})


def pairwise_problem(budgets=("size=3bit",), granularity="layer", seed=0, strength=1.0, **space_kw):
    """:func:`small_problem` with :func:`synthetic_pairwise` terms in its table."""
    from dataclasses import replace

    from bitsearch.problem import Problem

    space = small_space(granularity, **space_kw)
    table = synthetic_sensitivity(space, seed)
    table = replace(table, pairwise=synthetic_pairwise(space, seed, strength, table))
    return Problem.build(space, budgets, sensitivity=table)
