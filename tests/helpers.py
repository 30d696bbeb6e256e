"""Small problems for tests (synthetic spaces with sensitivity tables, no torch) and error assertions."""

from __future__ import annotations

# the small synthetic problems ship in bitsearch.testing (for searcher packages too)
from bitsearch.problem import Problem
from bitsearch.space import Layer, SearchSpace
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


def llama_layers(blocks=8, hidden=64, kv=32, mlp=128, vocab=96, tokens=16):
    """The layers of a Llama-style transformer with Hugging Face names (no torch)."""
    out = [Layer("model.embed_tokens", "embedding", params=vocab * hidden, macs=0, kernels=vocab,
                 in_features=hidden, out_channels=hidden)]
    shapes = (("self_attn.q_proj", hidden, hidden), ("self_attn.k_proj", hidden, kv),
              ("self_attn.v_proj", hidden, kv), ("self_attn.o_proj", hidden, hidden),
              ("mlp.gate_proj", hidden, mlp), ("mlp.up_proj", hidden, mlp), ("mlp.down_proj", mlp, hidden))
    for i in range(blocks):
        for name, fin, fout in shapes:
            out.append(Layer(f"model.layers.{i}.{name}", "linear", params=fin * fout, macs=fin * fout * tokens,
                             kernels=fout, in_features=fin, out_channels=fout))
    out.append(Layer("lm_head", "linear", params=hidden * vocab, macs=hidden * vocab * tokens, kernels=vocab,
                     in_features=hidden, out_channels=vocab))
    return tuple(out)


def llama_problem(budgets=("bits=4.5",), granularity="layer", seed=0, **space_kw):
    """A tabular Llama-style problem (synthetic sensitivities), weight-only, widths 2..8."""
    space_kw.setdefault("weight_bits", (2, 3, 4, 5, 6, 8))
    space_kw.setdefault("act_bits", None)
    space = SearchSpace(llama_layers(), granularity=granularity, **space_kw)
    return Problem.build(space, budgets, sensitivity=format_sensitivity(space, seed))


def format_sensitivity(space, seed=0):
    """A synthetic table over the space's choices, named formats included: loss increase
    ~ c_k * 4^-(bits per weight)."""
    import numpy as np

    from bitsearch import formats
    from bitsearch.sensitivity.table import SensitivityTable

    rng = np.random.default_rng(seed)
    exponents = -np.array([formats.nominal_bits(b) for b in space.weight_bits])
    weight = {layer.name: rng.lognormal(0.0, 1.0, size=(layer.kernels, 1)) * layer.params_per_kernel
              * np.power(4.0, exponents)[None, :] for layer in space.layers}
    return SensitivityTable(space.weight_bits, weight, (), {}, method="synthetic")
