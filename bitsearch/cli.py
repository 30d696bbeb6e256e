"""The ``bitsearch`` command.

Exit codes: 0 success, 2 bad input (one readable line on stderr), 1 internal error.
Subcommands beyond the core ones live in modules listed in ``COMMAND_MODULES``; each
has ``register(subparsers)`` that adds its parser with ``set_defaults(func=...)``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import import_module

from . import __version__
from .errors import UserInputError

# modules that add subcommands: register(subparsers) -> None
COMMAND_MODULES: list[str] = ["bitsearch.commands.bench", "bitsearch.commands.importer", "bitsearch.commands.latency", "bitsearch.commands.finetune"]

EPILOG = """\
examples:
  bitsearch tasks
  bitsearch inspect --task mnist1d-cnn
  bitsearch search --task mnist1d-cnn --searcher uniform --budget size=4bit --out p.json
  bitsearch search --task mnist1d-cnn --searcher ilp --budget size=3bit --weight-bits 2,3,4,8
  bitsearch eval p.json --task mnist1d-cnn
  bitsearch export p.json --to csv

budgets (COST=VALUE, repeat --budget for several):
  size=1.2MB  size=4bit (cost of the uniform 4-bit policy)  size=12.5% (of float)
  bops=3.5GBOPs  energy=2uJ  bitfusion=0.5ms  latency=0.8ms (needs --latency-table)
  latency=frac:0.5 (cheapest + 0.5 x (dearest - cheapest), as HAWQ-V3 states budgets)

exit codes: 0 success, 2 bad input, 1 internal error
"""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


class ProgressBar:
    """A tqdm bar on a terminal, silent otherwise.  Works as a search callback."""

    def __init__(self, description: str, enabled: bool | None = None):
        self.enabled = _progress_enabled() if enabled is None else enabled
        self.description = description
        self.bar = None

    def __call__(self, event):
        if not self.enabled:
            return True
        if self.bar is None and event.kind not in ("start", "end"):
            from tqdm import tqdm

            self.bar = tqdm(total=event.total, desc=self.description, file=sys.stderr, leave=False,
                            dynamic_ncols=True)
        if self.bar is not None:
            if event.total is not None and self.bar.total != event.total:
                self.bar.total = event.total
            if event.step:
                self.bar.n = event.step
            if event.best_score is not None:
                self.bar.set_postfix_str(f"best {event.best_score:.4g}", refresh=False)
            self.bar.refresh()
            if event.kind == "end":
                self.close()
        return True

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --- shared options -----------------------------------------------------------------------
def _add_space_options(p):
    g = p.add_argument_group("search space")
    g.add_argument("--granularity", choices=("layer", "kernel"), default="layer",
                   help="one weight width per layer, or per output kernel (default: layer)")
    g.add_argument("--weight-bits", default="2-8", metavar="BITS",
                   help="weight widths to choose from: a list (2,3,4,8) or a range (2-8); default 2-8")
    g.add_argument("--act-bits", default="8", metavar="BITS",
                   help="activation widths: one value fixes them (default 8), several are searched "
                        "per layer (4,8), 'none' leaves activations in float")
    g.add_argument("--pin-first-last", type=int, default=None, metavar="N",
                   help="pin the first and last layer at N bits (weights and activations)")
    g.add_argument("--width-mult", type=float, default=1.0, metavar="M",
                   help="build the task's model at this width multiplier (default 1.0)")


def _space_options(args):
    from .build import SpaceOptions
    from .space import parse_bits

    return SpaceOptions(granularity=args.granularity, weight_bits=parse_bits(args.weight_bits),
                        act_bits=parse_bits(args.act_bits, allow_none=True), pin_first_last=args.pin_first_last)


def _get_task(name):
    from .tasks import get_task

    return get_task(name)


# --- commands -------------------------------------------------------------------------------
def cmd_tasks(args):
    from .tasks import list_tasks

    rows = list_tasks()
    if args.json:
        print(json.dumps([{"name": n, "description": d} for n, d in rows], indent=2))
        return 0
    width = max(len(n) for n, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    print("\na user task: --task package.module:factory (see the README)")
    return 0


def cmd_searchers(args):
    from . import searchers

    rows = []
    for name in searchers.available():
        try:
            cls = searchers.get(name)
            rows.append({"name": name, "description": getattr(cls, "description", ""),
                         "granularities": list(getattr(cls, "granularities", ("layer", "kernel"))),
                         "needs": getattr(cls, "needs", "any"), "settings": dict(getattr(cls, "defaults", {}))})
        except UserInputError as exc:
            rows.append({"name": name, "description": f"(unavailable: {exc})", "granularities": [],
                         "needs": "", "settings": {}})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        grains = "/".join(r["granularities"])
        print(f"{r['name']:<{width}}  {r['description']}  [{grains}]")
        if r["settings"]:
            print(" " * (width + 2) + "settings: " + ", ".join(f"{k}={v!r}" for k, v in r["settings"].items()))
    return 0


def cmd_inspect(args):
    from .budget import format_cost
    from .build import space_for_task
    from .cost import ANALYTIC, make_cost_model
    from .policy import Policy

    task = _get_task(args.task)
    options = _space_options(args)
    space = space_for_task(task, options, width_mult=args.width_mult)
    models = {name: make_cost_model(name) for name in ANALYTIC}
    model = task.build_model(args.width_mult)
    total_params = sum(p.numel() for p in model.parameters())
    layer_params = sum(l.params + l.bias_params for l in space.layers)
    uniform = {}
    for w in space.weight_bits:
        policy = Policy.uniform(space, w)
        uniform[w] = {name: m.cost(space, policy) for name, m in models.items()}
    summary = {
        "task": task.name, "model": space.model_name, "fingerprint": space.fingerprint,
        "granularity": space.granularity, "weight_bits": list(space.weight_bits),
        "act_bits": None if space.act_bits is None else list(space.act_bits),
        "layers": [l.to_dict() for l in space.layers], "tied": [list(g) for g in space.tied],
        "weight_units": len(space.weight_units()), "total_params": total_params,
        "layer_params": layer_params, "total_macs": sum(l.macs for l in space.layers),
        "uniform_costs": {str(w): c for w, c in uniform.items()},
    }
    if args.write_problem:
        _write_problem(space, task, args)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{task.name}: {len(space.layers)} quantizable layers, {space.granularity} granularity, "
          f"{summary['weight_units']:,} weight units, fingerprint {space.fingerprint}")
    header = f"{'layer':<28} {'kind':<7} {'shape':<24} {'params':>11} {'MACs':>14} {'kernels':>7}"
    print(header)
    print("-" * len(header))
    for l in space.layers:
        if l.kind == "linear":
            shape = f"{l.in_features}->{l.out_channels}"
        else:
            shape = f"{l.in_channels}->{l.out_channels} k{'x'.join(map(str, l.kernel_size))}"
            if any(s != 1 for s in l.stride):
                shape += f" s{'x'.join(map(str, l.stride))}"
            if l.groups != 1:
                shape += f" g{l.groups}"
        flags = " (pinned)" if space.is_pinned(l.name) else ""
        print(f"{l.name:<28} {l.kind:<7} {shape:<24} {l.params + l.bias_params:>11,} {l.macs:>14,} "
              f"{l.kernels:>7}{flags}")
    print("-" * len(header))
    print(f"{'total':<61} {layer_params:>11,} {summary['total_macs']:>14,}")
    other = total_params - layer_params
    print(f"parameters: {layer_params:,} in these layers + {other:,} elsewhere (norms...) = {total_params:,}")
    if space.tied:
        print("tied groups (read the same tensor): " + "; ".join(" + ".join(g) for g in space.tied))
    print("\ncost of uniform policies (activations " +
          ("float" if space.act_bits is None else f"{max(space.act_bits)}-bit") + "):")
    print(f"{'bits':>4}  " + "  ".join(f"{n:>14}" for n in models))
    for w, costs in uniform.items():
        print(f"{w:>4}  " + "  ".join(f"{format_cost(costs[n], models[n].unit):>14}" for n in models))
    return 0


def _write_problem(space, task, args):
    from .errors import UserInputError as _E

    if not getattr(args, "sensitivity", None):
        raise _E("--write-problem needs --sensitivity METHOD: the problem file carries sensitivities")
    from . import sensitivity as sensitivity_module
    from .problem import Problem
    from .tabular import write_problem

    table = sensitivity_module.estimate(task, space, args.sensitivity, width_mult=args.width_mult)
    write_problem(Problem.build(space, (), sensitivity=table, task=task.name), args.write_problem)
    print(f"wrote {args.write_problem}", file=sys.stderr)


def _limit_threads(threads, apply: bool = True) -> None:
    """``--threads N``: torch's CPU threads (small models train and score faster on one
    thread than on several that share a busy machine); ``apply=False`` only checks N."""
    if threads is None:
        return
    if threads < 1:
        raise UserInputError(f"--threads must be at least 1 (got {threads})")
    if not apply:
        return
    import torch

    torch.set_num_threads(threads)


def _build_problem(args, searcher_cls):
    from .build import ProblemOptions, needs_sensitivity, problem_for_task

    if args.problem:
        if args.task:
            raise UserInputError("give --task or --problem, not both")
        from .tabular import load_problem

        return load_problem(args.problem, args.budget, granularity=args.granularity)
    if not args.task:
        raise UserInputError("give --task NAME (see 'bitsearch tasks') or --problem FILE")
    sensitivity = args.sensitivity
    if sensitivity is None and needs_sensitivity(searcher_cls):
        sensitivity = "hessian"
    options = ProblemOptions(budgets=tuple(args.budget), finetune_epochs=args.finetune_epochs,
                             width_mult=args.width_mult, latency_table=args.latency_table,
                             sensitivity=sensitivity)
    return problem_for_task(args.task, _space_options(args), options, progress=_progress_enabled())


def cmd_search(args):
    from . import searchers
    from .build import parse_settings
    from .policy import save_policy

    if not args.budget:
        raise UserInputError("give at least one --budget, e.g. --budget size=4bit")
    from .budget import parse_budget

    for text in args.budget:  # fail on a bad budget before any training
        parse_budget(text)
    cls = searchers.get(args.searcher)
    settings = parse_settings(args.set or [])
    if args.solver:
        settings["solver"] = args.solver
    if args.time_limit is not None:
        settings["time_limit"] = args.time_limit
    searcher = cls(**settings)
    _limit_threads(args.threads, apply=bool(args.task))  # a tabular problem (--problem) never imports torch
    problem = _build_problem(args, cls)
    if args.write_problem:
        from .tabular import write_problem

        write_problem(problem, args.write_problem)
    bar = ProgressBar(f"{args.searcher}")
    try:
        result = searcher.search(problem, seed=args.seed, callback=bar)
    finally:
        bar.close()
    if args.out:
        save_policy(result.policy, args.out)
    if args.json:
        print(json.dumps({**result.summary(), "policy": result.policy.to_dict(),
                          "out": args.out}, indent=2, default=str))
        return 0
    _print_result(problem, result.policy, result.metrics, result.costs)
    print(f"searcher {result.searcher} (seed {result.seed}): {result.evaluations} evaluations, "
          f"{result.seconds:.2f} s" + (" (stopped early)" if result.stopped_early else ""))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _print_result(problem, policy, metrics, costs):
    from .budget import format_cost

    space = problem.space
    for layer in space.layers:
        b = policy[layer.name]
        if b.per_kernel:
            wtxt = f"mean {b.mean_weight_bits:.2f} (min {min(b.weight_bits)}, max {max(b.weight_bits)})"
        else:
            wtxt = str(b.weight_bits)
        atxt = "float" if b.act_bits is None else str(b.act_bits)
        print(f"  {layer.name:<28} weights {wtxt:<28} acts {atxt}")
    budgets = {b.cost: b for b in problem.budgets}
    parts = []
    for name, value in costs.items():
        unit = problem.costs[name].unit
        text = f"{name} {format_cost(value, unit)}"
        if name in budgets:
            text += f" (budget {format_cost(budgets[name].limit, unit)}: kept)"
        parts.append(text)
    print("costs: " + ", ".join(parts))
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if shown:
        print("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))


def cmd_eval(args):
    _limit_threads(args.threads)
    if getattr(args, "model", None):
        from .commands.finetune import eval_saved_model

        return eval_saved_model(args)
    from .build import ProblemOptions, SpaceOptions, problem_for_task
    from .errors import PolicyError
    from .policy import load_policy, validate_policy
    from .space import parse_bits

    policy = load_policy(args.policy)
    task = _get_task(args.task)
    model_meta = policy.meta.get("model") or {}
    width_mult = float(model_meta.get("width_mult", args.width_mult))
    acts = {b.act_bits for _, b in policy.bits}
    act_bits = parse_bits(args.act_bits, allow_none=True) if args.act_bits else (
        None if acts == {None} else parse_bits("2-8"))
    space_options = SpaceOptions(granularity=policy.granularity, weight_bits=parse_bits(args.weight_bits),
                                 act_bits=act_bits)
    options = ProblemOptions(finetune_epochs=args.finetune_epochs, width_mult=width_mult,
                             latency_table=args.latency_table)
    problem = problem_for_task(task, space_options, options, progress=_progress_enabled())
    fingerprint = model_meta.get("fingerprint")
    if fingerprint and fingerprint != problem.space.fingerprint:
        raise PolicyError(f"the policy was made for model {model_meta.get('name', '?')!r} "
                          f"({fingerprint}), but task {task.name!r} gives {problem.space.fingerprint}: "
                          f"a policy for another model", args.policy)
    policy = validate_policy(policy, problem.space, source=args.policy)
    costs = problem.cost_of(policy)
    metrics = problem.evaluate(policy) if problem.evaluator is not None else {}
    kind = getattr(problem.evaluator, "metric_kind", None)
    if args.json:
        print(json.dumps({"policy": args.policy, "task": task.name, "costs": costs, "metrics": metrics,
                          "metric_kind": kind}, indent=2))
        return 0
    _print_result(problem, policy, metrics, costs)
    if kind:
        print(f"metric kind: {kind}")
    return 0


def cmd_export(args):
    from .export import export_policy
    from .policy import atomic_write_text, load_policy

    policy = load_policy(args.policy)
    text = export_policy(policy, args.to)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# --- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bitsearch", formatter_class=argparse.RawDescriptionHelpFormatter,
                    description="Mixed-precision bitwidth search: how many bits each layer (or each "
                                "output kernel) gets, under size, BOPs, energy or latency budgets.",
                    epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"bitsearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("tasks", help="list the built-in tasks")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("searchers", help="list the searchers and their settings")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_searchers)

    p = sub.add_parser("inspect", help="layers, params, MACs and the cost of uniform policies",
                       description="Show the quantizable layers of a task's model, their params and MACs, "
                                   "tied groups, and what uniform policies cost.")
    p.add_argument("--task", required=True, help="a built-in task (bitsearch tasks) or package.module:factory")
    _add_space_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--write-problem", metavar="FILE", help="also write a tabular problem file (needs --sensitivity)")
    p.add_argument("--sensitivity", metavar="METHOD", help="sensitivity estimate for --write-problem "
                                                           "(hessian, bitgrad, empirical)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("search", help="search a policy under budgets",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Search the widths of every layer (or kernel) under one or more budgets, "
                                   "and write the policy JSON.", epilog=EPILOG)
    src = p.add_argument_group("what to search")
    src.add_argument("--task", help="a built-in task (bitsearch tasks) or package.module:factory")
    src.add_argument("--problem", metavar="FILE", help="a tabular problem file (bitsearch-problem JSON); "
                                                       "runs without torch")
    src.add_argument("--searcher", required=True, help="which searcher (bitsearch searchers)")
    src.add_argument("--budget", action="append", default=[], metavar="COST=VALUE",
                     help="a budget; repeat for several (see below)")
    _add_space_options(p)
    g = p.add_argument_group("scoring and costs")
    g.add_argument("--finetune-epochs", type=int, default=0, metavar="E",
                   help="score policies after E epochs of quantization-aware fine-tuning (default 0: "
                        "post-training quantization with calibration)")
    g.add_argument("--latency-table", metavar="FILE", help="measured latency table (CSV or JSON) for latency=")
    g.add_argument("--sensitivity", metavar="METHOD",
                   help="sensitivity estimate for searchers that use one: hessian (default), bitgrad, empirical")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads for training and scoring (default: torch's choice; 1 is often "
                        "fastest for the small built-in tasks on a busy machine)")
    s = p.add_argument_group("searcher settings")
    s.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same policy (default 0)")
    s.add_argument("--solver", help="MIP solver for ilp/bmpq: highs (default) or cbc")
    s.add_argument("--time-limit", type=float, default=None, metavar="S", help="solver time limit in seconds")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any searcher setting, e.g. --set samples=200 (see bitsearch searchers)")
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="FILE", help="write the policy JSON here")
    o.add_argument("--write-problem", metavar="FILE", help="also write the problem as a tabular problem file")
    o.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="score a policy on a task",
                       description="Apply a policy to a task's model and report its costs and accuracy.")
    p.add_argument("policy", help="policy JSON file")
    p.add_argument("--task", required=True, help="the task the policy was made for")
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="E",
                   help="fine-tune E epochs at the policy's widths before scoring (default 0)")
    p.add_argument("--weight-bits", default="2-8", metavar="BITS", help="weight widths a policy may use (default 2-8)")
    p.add_argument("--act-bits", default=None, metavar="BITS",
                   help="activation widths a policy may use (default 2-8, or none when the policy's "
                        "activations are all float)")
    p.add_argument("--width-mult", type=float, default=1.0, help="model width multiplier when the policy "
                                                                  "does not name one")
    p.add_argument("--latency-table", metavar="FILE", help="also report latency from this table")
    p.add_argument("--model", metavar="FILE", help="score this fine-tuned model (from bitsearch finetune)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="convert a policy to another tool's format")
    p.add_argument("policy", help="policy JSON file")
    p.add_argument("--to", required=True, help="target format: csv, hawq (HAWQ-V3 bit_config), nncf (NNCF bitwidth_per_scope)")
    p.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    p.set_defaults(func=cmd_export)

    for module in COMMAND_MODULES:
        import_module(module).register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserInputError as exc:
        print(f"bitsearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bitsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
