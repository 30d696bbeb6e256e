"""bitsearch: mixed-precision bitwidth search.

``import bitsearch`` loads numpy only.  torch, PuLP, HiGHS and stable-baselines3 are
imported by the modules that need them (``bitsearch.quant``, ``bitsearch.solvers.ilp``,
``bitsearch.agents``...).
"""

__version__ = "0.1.0"

from .build import ProblemOptions, SpaceOptions, TrainedModel, problem_for_model, problem_for_task  # noqa: E402
from .budget import Budget, BudgetSpec, parse_budget, resolve_budget  # noqa: E402
from .errors import (  # noqa: E402
    BitsearchError, BudgetParseError, InfeasibleBudgetError, PolicyError, UserInputError,
)
from .policy import LayerBits, Policy, load_policy, save_policy, validate_policy  # noqa: E402
from .problem import Problem  # noqa: E402
from .search import SearchEvent, SearchResult, Searcher  # noqa: E402
from .sensitivity.table import SensitivityTable  # noqa: E402
from .space import Layer, SearchSpace  # noqa: E402
from . import searchers  # noqa: E402

__all__ = [
    "__version__", "Budget", "BudgetSpec", "parse_budget", "resolve_budget", "BitsearchError",
    "BudgetParseError", "InfeasibleBudgetError", "PolicyError", "UserInputError", "LayerBits", "Policy",
    "load_policy", "save_policy", "validate_policy", "Problem", "SearchEvent", "SearchResult", "Searcher",
    "SensitivityTable", "Layer", "SearchSpace", "searchers", "problem_for_model", "problem_for_task",
    "TrainedModel", "SpaceOptions", "ProblemOptions",
]
