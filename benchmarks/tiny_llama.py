"""Held-out perplexity against effective bits on tiny-llama: search against llama.cpp's hand rule.

    nice python benchmarks/tiny_llama.py [--rule-bases 3,4] [--episodes 120] [--out benchmarks/results]

One space for every row: tiny-llama (6 Llama blocks, 44 layers: the token embedding, 42
attention/MLP projections and lm_head), integer weight widths 2..8 with one fp16 scale per
128 weights (``--scale-group 128``), activations in float (weight-only, as llama.cpp).
Every policy is scored by the same evaluator: held-out perplexity (lower is better) of
the fake-quantized model on 32 windows of 256 bytes of held-out standard-library modules.
Effective bits are the stored bits per quantized weight, scales included (the ``bits``
cost, ModelOpt's ``effective_bits``).

Rows: the float model; uniform 4 and 8 bits; llama.cpp's Q4_K_M-style rule
(``llamacpp-rule``: 6 bits for the v/down projections llama.cpp picks and for lm_head) at
base 3 and base 4 (Q3/Q4_K_M-like mixes); and ``ilp`` (Hessian sensitivities),
``fracbits`` and ``autoq`` at two budgets: exactly the effective bits of each rule policy
(``bits=<the rule's cost>``), so that search and rule are compared at equal effective bits.  Writes ``tiny_llama.json``, ``tiny_llama.md`` and
``tiny_llama_pareto.png``, and says from the numbers whether search beats the rule at
equal (or lower) effective bits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPACE = {"weight_bits": (2, 3, 4, 5, 6, 7, 8), "scale_group": 128, "act_bits": None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rule-bases", default="3,4",
                        help="base widths of the rule policies whose effective bits are the budgets (default 3,4)")
    parser.add_argument("--episodes", type=int, default=120, help="autoq episodes (default 120)")
    parser.add_argument("--fracbits-epochs", type=int, default=3)
    parser.add_argument("--searchers", default="ilp,fracbits,autoq")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite tiny_llama.md and the plot from an existing tiny_llama.json (no runs)")
    args = parser.parse_args(argv)
    if args.report_only:
        target = Path(args.out)
        out = json.loads((target / "tiny_llama.json").read_text())
        out["verdict"] = verdict(out["rows"], out["budgets"])
        (target / "tiny_llama.json").write_text(json.dumps(out, indent=2) + "\n")
        (target / "tiny_llama.md").write_text(markdown(out))
        plot(out["rows"], target / "tiny_llama_pareto.png")
        print(out["verdict"])
        return
    command = "python benchmarks/tiny_llama.py " + " ".join(argv if argv is not None else sys.argv[1:])

    import torch

    torch.set_num_threads(1)
    from bitsearch.build import ProblemOptions, SpaceOptions, problem_for, resolve_source
    from bitsearch.policy import LayerBits, Policy
    from bitsearch.searchers import create

    source = resolve_source("tiny-llama")
    space_options = SpaceOptions(granularity="layer", **SPACE)
    bases = [int(b) for b in args.rule_bases.split(",") if b.strip()]
    budgets = []
    rows = []
    out = {"benchmark": "tiny_llama", "command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "task": "tiny-llama", "space": {k: list(v) if isinstance(v, tuple) else v for k, v in SPACE.items()},
           "budgets": budgets, "rows": rows}

    target = Path(args.out)

    def problem(budget=None, sensitivity=None):
        options = ProblemOptions(budgets=(budget,) if budget else (), sensitivity=sensitivity)
        return problem_for(source, space_options, options)

    def record(label, budget, metrics, costs, started, evaluations=1, policy=None):
        row = {"searcher": label, "budget": budget, "perplexity": metrics["perplexity"],
               "bits_per_byte": metrics.get("bits_per_byte"), "effective_bits": costs["bits"],
               "size_bytes": costs["size"] / 8, "evaluations": evaluations,
               "seconds": round(time.perf_counter() - started, 1)}
        if policy is not None:
            row["policy"] = {n: b.weight_bits for n, b in policy.bits}
        rows.append(row)
        target.mkdir(parents=True, exist_ok=True)
        (target / "tiny_llama.json").write_text(json.dumps(out, indent=2) + "\n")  # so far, in case of a crash
        print(f"{label:16} {budget or '-':10} perplexity {row['perplexity']:.4f}  bits {row['effective_bits']:.4f}"
              f"  {row['seconds']:7.1f} s", flush=True)

    base = problem()
    started = time.perf_counter()
    floats = base.evaluator.float_metrics()
    float_policy = Policy(tuple((layer.name, LayerBits(32, None)) for layer in base.space.layers))
    record("float", None, floats, {"bits": 32.0, "size": base.costs["size"].cost(base.space, float_policy)}, started)
    for width in (4, 8):
        started = time.perf_counter()
        policy = Policy.uniform(base.space, width)
        record(f"uniform {width}", None, base.evaluate(policy), base.cost_of(policy), started, policy=policy)
    searchers = [s.strip() for s in args.searchers.split(",") if s.strip()]
    for base_width in bases:
        started = time.perf_counter()
        rule = create("llamacpp-rule", base=base_width).search(problem(), seed=0)
        budget = f"bits={rule.costs['bits']!r}"  # the rule's own effective bits, exactly
        budgets.append(budget)
        record("llamacpp-rule", budget, rule.metrics, rule.costs, started, rule.evaluations, rule.policy)
        rows[-1]["base"] = base_width
        for name in searchers:
            settings = {}
            if name == "autoq":
                settings = {"episodes": args.episodes}
            elif name == "fracbits":
                settings = {"epochs": args.fracbits_epochs}
            sensitivity = "hessian" if name == "ilp" else None
            started = time.perf_counter()
            p = problem(budget, sensitivity)
            result = create(name, **settings).search(p, seed=0)
            record(name, budget, result.metrics, result.costs, started, result.evaluations, result.policy)
    out["verdict"] = verdict(rows, budgets)
    print(out["verdict"])
    (target / "tiny_llama.json").write_text(json.dumps(out, indent=2) + "\n")
    (target / "tiny_llama.md").write_text(markdown(out))
    plot(rows, target / "tiny_llama_pareto.png")
    print(f"wrote {target / 'tiny_llama.json'}, tiny_llama.md, tiny_llama_pareto.png")


def verdict(rows, budgets) -> str:
    """Whether search beats the hand rule at equal (or lower) effective bits, per budget."""
    lines = []
    for budget in budgets:
        rule = next((r for r in rows if r["searcher"] == "llamacpp-rule" and r["budget"] == budget), None)
        if rule is None:
            continue
        budget = f"bits={rule['effective_bits']:.4f} (rule at base {rule['base']})"
        for r in rows:
            if r["budget"] != rule["budget"] or r["searcher"] == "llamacpp-rule":
                continue
            # the budget is the rule's own effective bits: a search result never has more
            at = "at fewer" if r["effective_bits"] < rule["effective_bits"] - 1e-9 else "at equal"
            better = r["perplexity"] < rule["perplexity"]
            lines.append(f"{budget}: {r['searcher']} {'beats' if better else 'does not beat'} the llama.cpp rule "
                         f"(perplexity {r['perplexity']:.4f} vs {rule['perplexity']:.4f}, {at} effective bits: "
                         f"{r['effective_bits']:.4f} vs {rule['effective_bits']:.4f})")
    return "\n".join(lines)


def markdown(out) -> str:
    lines = [f"# tiny-llama: held-out perplexity against effective bits", "",
             f"`{out['command']}` ({out['date']}); space: widths {out['space']['weight_bits']}, one fp16 scale per "
             f"{out['space']['scale_group']} weights, activations float. Perplexity on 32 held-out windows of 256 "
             "bytes (lower is better); effective bits = stored bits per quantized weight, scales included.", "",
             "| searcher | budget | perplexity | bits/byte | effective bits | size (KB) | evaluations | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in out["rows"]:
        budget = "-" if not r["budget"] else f"bits={float(r['budget'].split('=')[1]):.4f}"
        lines.append(f"| {r['searcher']} | {budget} | {r['perplexity']:.4f} | "
                     f"{r['bits_per_byte']:.4f} | {r['effective_bits']:.4f} | {r['size_bytes'] / 1e3:.1f} | "
                     f"{r['evaluations']} | {r['seconds']} |")
    lines += ["", "## Search against the hand rule", ""] + [f"- {line}" for line in out["verdict"].splitlines()]
    return "\n".join(lines) + "\n"


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"uniform 4": "s", "uniform 8": "s", "llamacpp-rule": "D", "ilp": "o", "fracbits": "^", "autoq": "v"}
    for label in dict.fromkeys(r["searcher"] for r in rows):
        if label == "float":
            continue
        pts = sorted((r["effective_bits"], r["perplexity"]) for r in rows if r["searcher"] == label)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers.get(label, "o"), linestyle="-" if
                len(pts) > 1 else "none", label=label)
    floats = [r for r in rows if r["searcher"] == "float"]
    if floats:
        ax.axhline(floats[0]["perplexity"], color="gray", linestyle="--", linewidth=1,
                   label=f"float ({floats[0]['perplexity']:.3f})")
    ax.set_xlabel("effective bits per weight (scales included)")
    ax.set_ylabel("held-out perplexity (lower is better)")
    ax.set_title("tiny-llama, weight-only, one fp16 scale per 128 weights")
    finite = [r["perplexity"] for r in rows if math.isfinite(r["perplexity"])]
    if finite:
        ax.set_ylim(min(finite) * 0.98, min(max(finite) * 1.02, min(finite) * 3))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
