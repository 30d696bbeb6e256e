"""``llamacpp-rule``: llama.cpp's Q4_K_M-style hand rule, the mix a user would pick.

``llama-quantize`` (``Q4_K_M``, ``Q5_K_M``) does not search: it stores every tensor at a
base type and gives a few tensors more bits by rule.  In widths:

* every transformer block's ``v_proj`` and ``down_proj`` get ``more`` bits (Q6_K) in
  the blocks where llama.cpp's ``use_more_bits(i, n)`` holds -- the first eighth of the
  ``n`` blocks, the last eighth, and every third block in between:
  ``i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2``;
* the output projection (``lm_head``) gets ``output`` bits (Q6_K);
* everything else (q/k/o, gate/up, the other ``down_proj``, the token embedding) stays
  at the base width.

With ``base`` unset the searcher walks the integer widths of the space from the widest
down and returns the first rule policy that keeps every budget (the largest
``Q*_K_M``-style mix that fits), as a user picking among llama.cpp's presets would.
``more`` and ``output`` are never below the base; a width the space does not offer is
replaced by the nearest wider choice (or the widest).  Pinned layers keep their pins;
tied layers share the widest width the rule gives any of them.

Layers are recognised by Hugging Face names of the Llama family
(``...layers.<i>.self_attn.v_proj``, ``...layers.<i>.mlp.down_proj``, ``lm_head``): a space
without them is refused with a one-line error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bitsearch import formats
from bitsearch.errors import InfeasibleBudgetError, SearcherSettingsError, SearcherUnsupportedError
from bitsearch.policy import Policy
from bitsearch.search import BaseSearcher, SearchRun
from bitsearch.settings import SearcherSettings, setting

BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
V_PROJ = re.compile(r"(?:^|\.)(?:v_proj|attn_v)$")
DOWN_PROJ = re.compile(r"(?:^|\.)(?:down_proj|ffn_down)$")
OUTPUT = re.compile(r"(?:^|\.)(?:lm_head|output)$")


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's rule for which blocks' ``attn_v`` / ``ffn_down`` get more bits."""
    eighth = n_layers // 8
    return i_layer < eighth or i_layer >= 7 * n_layers // 8 or (i_layer - eighth) % 3 == 2


def rule_roles(names) -> dict[str, str]:
    """Layer name -> ``more`` / ``output`` / ``base`` under the rule."""
    blocks = {}
    for name in names:
        m = BLOCK.search(name)
        if m:
            blocks[name] = int(m.group(1))
    n_layers = len(set(blocks.values()))
    roles = {}
    for name in names:
        if OUTPUT.search(name) and name not in blocks:
            roles[name] = "output"
        elif name in blocks and (V_PROJ.search(name) or DOWN_PROJ.search(name)) \
                and use_more_bits(blocks[name], n_layers):
            roles[name] = "more"
        else:
            roles[name] = "base"
    return roles


def _at_least(choices: list[int], width: int) -> int:
    wider = [c for c in choices if c >= width]
    return min(wider) if wider else max(choices)


def rule_policy(space, base: int, more: int, output: int) -> Policy:
    """The rule's policy of ``space`` at ``base`` (widths snapped to the space's integer choices)."""
    choices = sorted(c for c in space.weight_bits if not formats.is_named(c))
    roles = rule_roles(space.names)
    width = {"base": base, "more": _at_least(choices, max(base, more)), "output": _at_least(choices, max(base, output))}
    wanted = {name: width[roles[name]] for name in space.names}
    for group in space.tied:
        top = max(wanted[n] for n in group)
        for n in group:
            wanted[n] = top
    return Policy.layerwise(space, wanted)


@dataclass(frozen=True, kw_only=True)
class LlamaCppRuleSettings(SearcherSettings):
    base: int | None = setting(None, ge=2, le=16, help="the base width (none: the widest that keeps every budget)")
    more: int = setting(6, ge=2, le=16, help="bits of v_proj and down_proj in the blocks llama.cpp picks (Q6_K)")
    output: int = setting(6, ge=2, le=16, help="bits of lm_head (Q6_K)")


class LlamaCppRuleSearcher(BaseSearcher):
    """llama.cpp's Q4_K_M-style rule: a base width, ``more`` bits for ``v_proj`` and
    ``down_proj`` in the blocks llama.cpp picks, ``output`` bits for ``lm_head``; the
    widest base that keeps every budget unless ``base`` is given.  One evaluation."""

    name = "llamacpp-rule"
    settings_class = LlamaCppRuleSettings
    needs = "nothing"
    deterministic = True
    description = ("llama.cpp's Q4_K_M-style hand rule (more bits for v_proj/down_proj in chosen blocks and for "
                   "lm_head), the widest base that fits")

    def check(self, problem) -> None:
        super().check(problem)
        roles = rule_roles(problem.space.names)
        if "more" not in roles.values() and "output" not in roles.values():
            raise SearcherUnsupportedError(
                f"searcher {self.name!r} applies llama.cpp's rule to Llama-style transformers (layers named "
                "...layers.<i>.self_attn.v_proj, ...layers.<i>.mlp.down_proj, lm_head); this space has none")
        integers = [c for c in problem.space.weight_bits if not formats.is_named(c)]
        if not integers:
            raise SearcherUnsupportedError(f"searcher {self.name!r} needs integer widths among --weight-bits")
        base = self.config.base
        if base is not None and base not in integers:
            raise SearcherSettingsError(f"searcher {self.name!r}: base={base} is not among the space's widths "
                                        f"{list(problem.space.weight_bits)}")

    def _search(self, problem, run: SearchRun):
        space = problem.space
        base = self.config.base
        integers = sorted((c for c in space.weight_bits if not formats.is_named(c)), reverse=True)
        candidates = [base] if base is not None else integers
        tried = []
        for width in candidates:
            policy = rule_policy(space, width, self.config.more, self.config.output)
            costs = problem.cost_of(policy)
            if not problem.violations(policy, costs):
                run.info["base"] = width
                run.evaluate(policy, step=1, total=1)
                return policy
            tried.append((width, costs))
        cheapest = tried[-1]
        spent = ", ".join(f"{name} {value:.6g}" for name, value in cheapest[1].items() if
                          any(b.cost == name for b in problem.budgets))
        raise InfeasibleBudgetError(f"no llama.cpp-rule policy keeps every budget: the narrowest (base "
                                    f"{cheapest[0]}) costs {spent}; raise the budget or allow narrower widths")
