"""Measuring pairwise (cross-layer) sensitivities with forward passes (torch).

The decision units are the space's tied groups (a lone layer is a group of one): a group
is always quantized as a whole, so its terms are measured as a whole and kept under its
first layer's name.  Relative to the probe's reference (float weights for the
``pairwise`` sensitivity method, a policy for the ``iqp`` searcher's trust region)::

    single_u(p)    = L(u at p) - L(reference)
    term_uv(p, q)  = L(u at p, v at q) - L(u at p) - L(v at q) + L(reference)

Pairs of units: all of them when there are at most ``max_pairs``; otherwise a stated
budget of them, chosen in this order until the budget is spent: ``adjacent`` units (one
after the other in the space's order), units whose layers read the same input tensor
(``shared-input``, found with hooks on one float forward pass), then every pair among the
``top_k`` units whose single loss at the narrowest width is largest (``top-k``).  Pairs
left out are taken not to interact; the table says which pairs were measured and why.
"""

from __future__ import annotations

import time
from itertools import combinations
from typing import Mapping

import numpy as np
import torch

from ..errors import UserInputError
from .pairwise import PairwiseTable

DEFAULTS = {"samples": 512, "batch_size": 512, "pairs": "auto", "max_pairs": 400, "top_k": 8, "groups": 8}


def units_of(space) -> list[tuple[str, ...]]:
    """The decision units at layer level: one tuple of layer names per tied group."""
    return [tuple(space.layers[i].name for i in group) for group in space.groups()]


def shared_input_pairs(evaluator, space, units) -> set[tuple[int, int]]:
    """Pairs of units with layers that read the same input tensor (one float forward pass)."""
    from ..training import batch_inputs, call_model

    model = evaluator.model
    named = dict(model.named_modules())
    seen: dict[str, int] = {}
    handles = []
    for name in (n for unit in units for n in unit):
        module = named.get(name)
        if module is None:
            continue

        def hook(module, args, _name=name):
            if args and isinstance(args[0], torch.Tensor):
                seen[_name] = args[0].data_ptr()
        handles.append(module.register_forward_pre_hook(hook))
    try:
        batch = evaluator.sensitivity_batches(2, 2, 0)[0]
        with torch.no_grad():
            call_model(model.eval(), batch_inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
    unit_of = {n: u for u, unit in enumerate(units) for n in unit}
    by_input: dict[int, set[int]] = {}
    for name, pointer in seen.items():
        by_input.setdefault(pointer, set()).add(unit_of[name])
    out = set()
    for members in by_input.values():
        for u, v in combinations(sorted(members), 2):
            out.add((u, v))
    return out


def choose_pairs(units, singles: np.ndarray, *, pairs="auto", max_pairs: int = 400, top_k: int = 8,
                 shared: set | None = None) -> dict[tuple[int, int], str]:
    """Which unit pairs to measure, and why (see the module's docstring).

    ``singles``: (units, widths) single losses; ``pairs``: ``auto`` (all within
    ``max_pairs``, else the budget), ``all``, or an explicit list of (unit, unit) pairs.
    """
    n = len(units)
    if isinstance(pairs, str) and pairs not in ("auto", "all"):
        raise UserInputError(f"pairs must be 'auto', 'all' or a list of (unit, unit) index pairs (got {pairs!r})")
    every = list(combinations(range(n), 2))
    if pairs == "all" or (pairs == "auto" and len(every) <= max_pairs):
        return {p: "all" for p in every}
    if pairs != "auto":
        out = {}
        for u, v in pairs:
            if not (0 <= u < n and 0 <= v < n) or u == v:
                raise UserInputError(f"pair ({u}, {v}) does not name two different units (there are {n})")
            out[(min(u, v), max(u, v))] = "given"
        return out
    if max_pairs < 0:
        raise UserInputError(f"max_pairs must be >= 0 (got {max_pairs})")
    chosen: dict[tuple[int, int], str] = {}

    def add(pair, why):
        if len(chosen) < max_pairs and pair not in chosen:
            chosen[pair] = why

    for u in range(n - 1):
        add((u, u + 1), "adjacent")
    for pair in sorted(shared or ()):
        add(pair, "shared-input")
    if n:
        worst = np.argsort(-singles[:, 0], kind="stable")[:max(0, int(top_k))]
        for u, v in combinations(sorted(int(k) for k in worst), 2):
            add((u, v), "top-k")
    return chosen


def measure_terms(probe, space, units, chosen: Mapping[tuple[int, int], str], *, measured=None, progress=None):
    """``(base, singles, terms)`` relative to the probe's reference: ``singles[u]`` over the
    space's weight widths, ``terms[(u, v)]`` a (widths, widths) matrix for each chosen pair.
    ``measured``: ``(base, singles)`` already measured.  All forward passes go through
    ``probe`` (batched: each unit's widths, each pair's width pairs share passes).
    ``progress(step, done, total, detail)``: told as the units and then each pair are
    measured."""
    bits = list(space.weight_bits)

    def config(unit, width):
        return {name: width for name in units[unit]}

    def told(step, done, total, detail):
        if progress is not None:
            progress(step, done, total, "; ".join(filter(None, (detail, f"{probe.passes:,} forward passes"))))

    if measured is None:
        base = probe.loss({})
        single_configs = [config(u, b) for u in range(len(units)) for b in bits]
        singles = probe.losses(single_configs, progress=lambda done, total: told(
            "single units", done, total, "")).reshape(len(units), len(bits)) - base
    else:
        base, singles = measured
    terms = {}
    for k, (u, v) in enumerate(chosen):
        configs = [{**config(u, p), **config(v, q)} for p in bits for q in bits]
        joint = probe.losses(configs).reshape(len(bits), len(bits)) - base
        terms[(u, v)] = joint - singles[u][:, None] - singles[v][None, :]
        told("pairs of units", k + 1, len(chosen), f"{units[u][0]} x {units[v][0]}")
    return base, singles, terms


def unit_weights(units, singles: np.ndarray) -> dict[str, np.ndarray]:
    """The separable part of a layer-wise table from measured singles: each unit's row under
    its first layer's name, zeros for the other layers of a tied group (the group is measured
    as a whole)."""
    weight = {}
    for u, unit in enumerate(units):
        weight[unit[0]] = singles[u][None, :]
        for name in unit[1:]:
            weight[name] = np.zeros((1, singles.shape[1]))
    return weight


def pairwise_table(evaluator, space, *, samples: int, seed: int, settings: Mapping, progress=None):
    """The ``pairwise`` sensitivity table of ``evaluator``'s model over ``space``.

    The separable part (the diagonal): at layer granularity the measured singles (the
    empirical table's measurement, in the probe's setting: activations at the space's
    fixed width, not clamped at 0, so that singles and pairs add up exactly); at kernel
    granularity the ``empirical`` estimator's per-kernel table.  The pairs are measured at
    layer level with float weights as the reference.
    """
    from .probe import LossProbe
    from .table import SensitivityTable

    started = time.perf_counter()
    probe = LossProbe(evaluator, space, samples=samples, batch_size=int(settings["batch_size"]), seed=seed)
    units = units_of(space)
    base, singles, _ = measure_terms(probe, space, units, {}, progress=progress)
    shared = set()
    n_pairs = len(units) * (len(units) - 1) // 2
    if settings["pairs"] == "auto" and n_pairs > int(settings["max_pairs"]):
        shared = shared_input_pairs(evaluator, space, units)
    chosen = choose_pairs(units, singles, pairs=settings["pairs"], max_pairs=int(settings["max_pairs"]),
                          top_k=int(settings["top_k"]), shared=shared)
    _, _, measured = measure_terms(probe, space, units, chosen, measured=(base, singles), progress=progress)
    terms = {(units[u][0], units[v][0]): m for (u, v), m in measured.items()}
    selected = {(units[u][0], units[v][0]): why for (u, v), why in chosen.items()}
    info = {"reference": "float weights", "measure": "mean training loss (evaluator.loss)",
            "activations": "float" if probe.act_bits is None else f"{probe.act_bits} bits",
            "units": len(units), "pairs_measured": len(chosen), "pairs_possible": n_pairs,
            "base_loss": base, "samples_asked": int(samples), "batch_size": int(settings["batch_size"]),
            "seed": int(seed), **probe.summary(), "seconds": round(time.perf_counter() - started, 3)}
    pairwise = PairwiseTable(space.weight_bits, terms, None, selected, info)
    if space.granularity == "layer":
        weight = unit_weights(units, singles)
    else:
        from .estimators import empirical_table

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            batches = evaluator.sensitivity_batches(int(samples), int(settings["batch_size"]), int(seed))
            weight = empirical_table(evaluator.model, space, batches, groups=int(settings["groups"]),
                                     loss=evaluator.loss)
    return SensitivityTable(space.weight_bits, weight, (), {}, method="pairwise", pairwise=pairwise)
