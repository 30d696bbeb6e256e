"""Every registered searcher passes the shipped conformance suite (bitsearch.testing).

One table, :data:`CASES`: for each registered searcher, one or more rows of fast settings,
the granularities to check, and the problem to check on.  A searcher that is registered
(an entry point of this distribution, or one registered in-process) but has no row makes
:func:`test_every_registered_searcher_has_a_row` fail: add its row here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Callable

import pytest

from bitsearch import searchers
from bitsearch.testing import SearcherConformance, check_searcher, small_problem


def _steps(budgets, granularity):
    from task_problems import steps_problem

    return steps_problem(budgets, granularity)


def _digits(budgets, granularity):
    from task_problems import task_problem

    return task_problem(budgets, granularity)


def _semicircles(budgets, granularity):
    from bitsearch.build import ProblemOptions, SpaceOptions, problem_for_task

    return problem_for_task("semicircles-mlp", SpaceOptions(granularity=granularity, weight_bits=(2, 3, 4, 8)),
                            ProblemOptions(budgets=tuple(budgets)))


def _pairwise(budgets, granularity):
    from helpers import pairwise_problem

    return pairwise_problem(budgets, granularity)


def _steps_pairwise(budgets, granularity):
    from task_problems import steps_problem

    problem = steps_problem(budgets, granularity)
    problem.ensure_sensitivity("pairwise", samples=128)
    return problem


def _llama(budgets, granularity):
    from helpers import llama_problem

    return llama_problem(budgets, granularity, scale_group=32)


def _space_at_width(result, problem):
    mult = result.policy.meta["model"].get("width_mult", 1.0)
    return problem.space if mult == 1.0 else problem.at_width(mult).space


@dataclass(frozen=True)
class Row:
    label: str
    settings: dict = field(default_factory=dict)
    granularities: tuple[str, ...] = ("layer", "kernel")
    make_problem: Callable = small_problem
    space_of: Callable | None = None
    fixtures: tuple[str, ...] = ()


RL_FAST = {"episodes": 6, "warmup": 2, "net_arch": [32, 32], "batch_size": 16}

#: searcher name -> its rows (fast settings; each row is one test class)
CASES: dict[str, tuple[Row, ...]] = {
    "uniform": (Row("Uniform"),),
    "random": (Row("Random", {"samples": 6}),),
    "exhaustive": (Row("Exhaustive", granularities=("layer",)),),
    "iqp": (Row("IQP", make_problem=_pairwise), Row("IQPTrustRegion", {"rounds": 3}, make_problem=_steps_pairwise,
                                                     fixtures=("one_thread",))),
    "ilp": (Row("ILP"), Row("ILPMip", {"method": "mip"}),
            Row("ILPCbc", {"method": "mip", "solver": "cbc"}, ("layer",))),
    "fracbits": (Row("FracBits", {"epochs": 1, "train_samples": 256}, make_problem=_digits),),
    "bmpq": (Row("BMPQ", {"epochs": 2, "resolve_every": 1, "steps_per_epoch": 3, "samples": 128},
                 make_problem=_steps, fixtures=("one_thread",)),),
    "autoq": (Row("AutoQ", {**RL_FAST, "low_net_arch": [16, 16], "low_batch_size": 64}),),
    "haq": (Row("HAQ", RL_FAST),),
    # more/output at 3 bits: the rule's narrowest policy then fits the suite's size=2.5bit
    "llamacpp-rule": (Row("LlamaCppRule", {"more": 3, "output": 3}, make_problem=_llama),),
    "uniform-width": (Row("UniformWidth", {"width_mults": (0.5, 1.0)}, ("layer",), make_problem=_semicircles,
                          space_of=_space_at_width),),
}


def _test_class(name: str, row: Row) -> type:
    body = {"searcher": name, "settings": row.settings, "granularities": row.granularities,
            "make_problem": lambda self, budgets, granularity: row.make_problem(budgets, granularity)}
    if row.space_of is not None:
        body["space_of"] = lambda self, result, problem: row.space_of(result, problem)
    cls = type(f"Test{row.label}Conformance", (SearcherConformance,), body)
    for fixture in row.fixtures:
        cls = pytest.mark.usefixtures(fixture)(cls)
    return cls


for _name, _rows in CASES.items():
    for _row in _rows:
        _cls = _test_class(_name, _row)
        globals()[_cls.__name__] = _cls


def test_every_registered_searcher_has_a_row():
    missing = sorted(set(searchers.available()) - set(CASES))
    assert not missing, f"registered searchers without a conformance row in tests/test_conformance.py: {missing}"
    unknown = sorted(set(CASES) - set(searchers.available()))
    assert not unknown, f"conformance rows for searchers that are not registered: {unknown}"


# --- a searcher from another distribution -------------------------------------------------------
THROWAWAY = '''
"""A searcher shipped by another distribution: greedy widening by score per unit of cost."""

from dataclasses import dataclass

import numpy as np

from bitsearch.encoding import Encoding
from bitsearch.errors import InfeasibleBudgetError
from bitsearch.search import BaseSearcher
from bitsearch.settings import SearcherSettings, setting


@dataclass(frozen=True, kw_only=True)
class GreedySettings(SearcherSettings):
    rounds: int = setting(20, ge=1, help="widening rounds at most")


class GreedySearcher(BaseSearcher):
    name = "throwaway-greedy"
    description = "start at the narrowest policy; widen the unit that scores best, while it fits"
    deterministic = True
    settings_class = GreedySettings

    def _search(self, problem, run):
        encoding = Encoding(problem.space)
        weights, acts = encoding.uniform(0, 0)
        current = encoding.decode(weights, acts)
        if not problem.fits(current):
            raise InfeasibleBudgetError("even the narrowest policy is over a budget")
        best = run.evaluate(current)
        for _ in range(self.config.rounds):
            step = None
            for u in np.flatnonzero(weights < encoding.n_weight_choices - 1):
                wider = weights.copy()
                wider[u] += 1
                policy = encoding.decode(wider, acts)
                if problem.fits(policy):
                    scored = run.evaluate(policy)
                    if step is None or scored.score > step[0].score:
                        step = (scored, wider)
                if run.stopped:
                    return None
            if step is None or step[0].score <= best.score:
                break
            best, weights = step
        return None
'''

SETUP = '''
from setuptools import setup

setup(name="throwaway-greedy", version="0.1", py_modules=["throwaway_greedy"],
      entry_points={"bitsearch.searchers": ["throwaway-greedy = throwaway_greedy:GreedySearcher"]})
'''


@pytest.fixture(scope="module")
def throwaway_site(tmp_path_factory):
    """A distribution that declares a searcher through the entry point, installed into a
    temporary folder (never into the environment)."""
    root = tmp_path_factory.mktemp("throwaway")
    source = root / "src"
    source.mkdir()
    (source / "throwaway_greedy.py").write_text(THROWAWAY)
    (source / "setup.py").write_text(SETUP)
    site = root / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--no-build-isolation", "--target", str(site), str(source)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"could not install the throwaway distribution: {done.stderr[-2000:]}")
    assert any(site.glob("throwaway_greedy-0.1*.dist-info/entry_points.txt"))
    return site


def test_a_searcher_from_another_distribution_passes_check_searcher(throwaway_site):
    """Registered by packaging alone, found by the registry, checked with the shipped checks
    (in a fresh interpreter that sees the temporary folder on its path)."""
    code = textwrap.dedent('''
        from bitsearch import searchers
        from bitsearch.testing import check_searcher

        assert "throwaway-greedy" in searchers.available(), searchers.available()
        cls = searchers.get("throwaway-greedy")
        assert cls.__module__ == "throwaway_greedy"
        check_searcher("throwaway-greedy", settings={"rounds": 4}, granularities=("layer", "kernel"))
        print("conforms")
    ''')
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(throwaway_site)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "conforms" in done.stdout


def test_check_searcher_catches_a_searcher_that_breaks_the_contract(throwaway_site, monkeypatch):
    """The shipped checks fail on a searcher that ignores the budget or accepts bad settings."""
    monkeypatch.syspath_prepend(str(throwaway_site))
    from throwaway_greedy import GreedySearcher  # noqa: E402 - on the path only now

    from bitsearch.encoding import Encoding

    class OverBudget(GreedySearcher):
        name = "over-budget"

        def _search(self, problem, run):
            encoding = Encoding(problem.space)
            return encoding.decode(*encoding.uniform(encoding.n_weight_choices - 1))  # the widest, never checked

    with pytest.raises(AssertionError, match="over budget"):
        check_searcher(OverBudget, skip=("settings",))


def test_the_readme_example_searcher_conforms():
    """README's "Adding a searcher" runs as written and passes the shipped checks."""
    import re
    from pathlib import Path

    from bitsearch.search import _REGISTERED, register

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Adding a searcher"):]
    section = section[:section.index("\n## ", 5)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
    register("walk", namespace["WalkSearcher"])
    try:
        exec(compile(blocks[1].split("\n\nclass ")[0], "README.md", "exec"), {})  # check_searcher("walk", ...)
    finally:
        _REGISTERED.pop("walk", None)
