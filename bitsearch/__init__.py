"""bitsearch: mixed-precision bitwidth search.

``import bitsearch`` imports nothing else: the names below are loaded from their modules
on first use (PEP 562), so ``bitsearch --help`` and a tabular search start in a fraction
of a second.  The core needs numpy only; torch, PuLP, HiGHS and stable-baselines3 are
imported by the modules that need them (``bitsearch.quant``, ``bitsearch.solvers.ilp``,
``bitsearch.agents``...).
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

# public name -> the module (in this package) that defines it
_EXPORTS = {
    "ProblemOptions": "build", "SpaceOptions": "build", "TrainedModel": "build",
    "problem_for_model": "build", "problem_for_task": "build",
    "Budget": "budget", "BudgetSpec": "budget", "parse_budget": "budget", "resolve_budget": "budget",
    "BitsearchError": "errors", "BudgetParseError": "errors", "InfeasibleBudgetError": "errors",
    "PolicyError": "errors", "UserInputError": "errors",
    "LayerBits": "policy", "Policy": "policy", "load_policy": "policy", "save_policy": "policy",
    "validate_policy": "policy",
    "Problem": "problem",
    "SearchEvent": "search", "SearchResult": "search", "Searcher": "search",
    "SensitivityTable": "sensitivity.table",
    "Layer": "space", "SearchSpace": "space",
}
_SUBMODULES = ("searchers",)

__all__ = ["__version__", *_EXPORTS, *_SUBMODULES]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'bitsearch' has no attribute {name!r}")
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
