"""``bitsearch inspect --task T``: the quantizable layers of a task's model and what uniform
policies cost; ``--write-problem FILE`` also writes its tabular problem file."""

from __future__ import annotations

import argparse
import json
import sys

from .common import TASK_HELP, add_model_options, add_space_options, check_outputs, model_source, seed_arg, \
    source_width, space_options, whole_number_arg


EPILOG = """\
proxy validation (--validate N): draws N policies within the --budget(s) (seeded by --seed; in a space of
at most 20,000 policies uniformly among every policy within the budgets, else the random searcher's
sampler), measures each as the evaluator scores it -- its loss change on the sensitivity samples (512
training samples, the ones every table is estimated on) and the metric --, and prints for each
sensitivity method (hessian, bitgrad, empirical, pairwise; --methods to choose) the Spearman and Kendall
rank correlation of its predicted loss change with the measured one and with the metric, with a warning
where Spearman is below 0.7 (a searcher planning on that table may miss the best policy).  Tables come
from the on-disk cache when they were estimated before.  See docs/crosslayer.md.

examples:
  bitsearch inspect --task mnist1d-cnn
  bitsearch inspect --task mnist1d-cnn --weight-bits 2,3,4,8 --validate 100 --budget size=3bit
  bitsearch inspect --task digits-cnn --weight-bits 2,3,4,8 --act-bits none --validate 50 --budget size=4bit \\
      --methods hessian,pairwise --json
  bitsearch inspect --task mnist1d-cnn --write-problem p.json --sensitivity pairwise
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="layers, params, MACs and the cost of uniform policies; "
                                              "--validate N: how well each sensitivity method ranks policies",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Show the quantizable layers of a task's model, their params and MACs, "
                                          "tied groups, and what uniform policies cost; with --validate N, check "
                                          "every sensitivity method against measured losses.", epilog=EPILOG)
    p.add_argument("--task", required=True, help=TASK_HELP)
    add_model_options(p)
    add_space_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--write-problem", metavar="FILE", help="also write a tabular problem file (needs --sensitivity)")
    p.add_argument("--sensitivity", metavar="METHOD", help="sensitivity estimate for --write-problem "
                                                           "(hessian, bitgrad, empirical, pairwise)")
    v = p.add_argument_group("proxy validation")
    policies = whole_number_arg(3, "--validate takes a number of policies, 3 or more (got {text!r})")
    v.add_argument("--validate", type=policies, default=None, metavar="N",
                   help="measure N policies within the budgets and rank-correlate every sensitivity method's "
                        "predicted loss change with the measured one (see below)")
    v.add_argument("--budget", action="append", default=[], metavar="COST=VALUE",
                   help="a budget the validation's policies keep (repeat for several; none: the whole space)")
    v.add_argument("--methods", metavar="LIST", help="the sensitivity methods to check, comma-separated "
                                                     "(default: hessian,bitgrad,empirical,pairwise)")
    v.add_argument("--seed", type=seed_arg, default=None, help="seed of the policies drawn (default 0)")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> int:
    from ..budget import format_cost
    from ..build import TrainedModel, space_for_task
    from ..cost import ANALYTIC, make_cost_model
    from ..errors import UserInputError
    from ..policy import Policy

    check_outputs(("--write-problem", args.write_problem))
    validating = args.validate is not None
    if args.data and not (args.write_problem or validating):
        raise UserInputError("inspect shows the architecture and its costs: --data is read only with --write-problem "
                             "or --validate (for the sensitivities); give it to search or eval")
    if not validating:
        given = [flag for flag, value in (("--budget", args.budget), ("--methods", args.methods),
                                                  ("--seed", args.seed is not None)) if value]
        if given:
            raise UserInputError(f"{' and '.join(given)} {'go' if len(given) > 1 else 'goes'} with --validate N "
                                 f"(the proxy validation); without it inspect shows the architecture and its costs")
    methods = None
    if validating:
        from ..budget import parse_budget
        from ..validation import methods_arg

        for text in args.budget:  # fail on a bad budget before any model is loaded
            parse_budget(text)
        methods = methods_arg(args.methods)
    task = model_source(args, scoring=bool(args.write_problem or validating))
    options = space_options(args, task)
    if isinstance(task, TrainedModel):
        if source_width(task, args) != 1.0:
            raise UserInputError(f"{args.task!r} is a trained model: it cannot be rebuilt at --width-mult")
        model = task.model
        space = options.discover(model, task.example_input, model_name=task.name)
    else:
        space = space_for_task(task, options, width_mult=args.width_mult)
        model = task.build_model(args.width_mult)
    models = {name: make_cost_model(name, space=space) for name in ("size", "bits") + tuple(ANALYTIC)}
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
        "shared_inputs": [list(g) for g in space.shared_inputs], "scale_group": space.scale_group,
        "weight_units": len(space.weight_units()), "total_params": total_params,
        "layer_params": layer_params, "total_macs": sum(l.macs for l in space.layers),
        "uniform_costs": {str(w): c for w, c in uniform.items()},
    }
    if args.write_problem:
        _write_problem(space, task, args)
    validation = _validate(task, options, args, methods) if validating else None
    if args.json:
        if validation is not None:
            summary["validation"] = validation
        print(json.dumps(summary, indent=2))
        return 0
    if isinstance(task, TrainedModel) and task.description:
        print(f"{task.name}: {task.description}")
    print(f"{task.name}: {len(space.layers)} quantizable layers, {space.granularity} granularity, "
          f"{summary['weight_units']:,} weight units, fingerprint {space.fingerprint}")
    width = max(28, max(len(l.name) for l in space.layers))
    header = f"{'layer':<{width}} {'kind':<9} {'shape':<24} {'params':>11} {'MACs':>14} {'kernels':>7}"
    print(header)
    print("-" * len(header))
    for l in space.layers:
        if l.kind in ("linear", "embedding"):
            shape = f"{l.in_features}->{l.out_channels}" if l.kind == "linear" else f"{l.kernels}x{l.in_features}"
        else:
            shape = f"{l.in_channels}->{l.out_channels} k{'x'.join(map(str, l.kernel_size))}"
            if any(s != 1 for s in l.stride):
                shape += f" s{'x'.join(map(str, l.stride))}"
            if l.groups != 1:
                shape += f" g{l.groups}"
        flags = " (pinned)" if space.is_pinned(l.name) else ""
        print(f"{l.name:<{width}} {l.kind:<9} {shape:<24} {l.params + l.bias_params:>11,} {l.macs:>14,} "
              f"{l.kernels:>7}{flags}")
    print("-" * len(header))
    print(f"{'total':<{width + 35}} {layer_params:>11,} {summary['total_macs']:>14,}")
    other = total_params - layer_params
    print(f"parameters: {layer_params:,} in these layers + {other:,} elsewhere (norms...) = {total_params:,}")
    if space.tied:
        print("tied groups (read the same tensor): " + "; ".join(" + ".join(g) for g in space.tied))
    untied = [g for g in space.shared_inputs if g not in space.tied]
    if untied:
        print(f"tie candidates (read the same tensor; free, --tie-shared-inputs ties them): {len(untied)} groups, "
              "e.g. " + " + ".join(untied[0]))
    scales = "one fp32 scale per kernel" if space.scale_group is None else \
        f"one fp16 scale per {space.scale_group} weights"
    print(f"\ncost of uniform policies (activations " +
          ("float" if space.act_bits is None else f"{max(space.act_bits)}-bit") + f", {scales}):")
    print(f"{'bits':>8}  " + "  ".join(f"{n:>14}" for n in models))
    for w, costs in uniform.items():
        print(f"{w!s:>8}  " + "  ".join(f"{format_cost(costs[n], models[n].unit):>14}" for n in models))
    if validation is not None:
        from ..validation import render_validation

        print()
        budgets = ", ".join(validation["budgets"]) or "none (the whole space)"
        print(f"budgets: {budgets}")
        for line in render_validation(validation, markdown=False):
            print(line)
    return 0


def _validate(task, options, args, methods) -> dict:
    """The proxy validation of ``--validate N`` (see :mod:`bitsearch.validation`)."""
    from ..build import ProblemOptions, problem_for
    from ..progress import StepBars, progress_enabled
    from ..validation import validate

    problem = problem_for(task, options, ProblemOptions(budgets=tuple(args.budget),
                                                        width_mult=source_width(task, args)),
                          progress=progress_enabled())
    with StepBars("validation: ") as progress:
        return validate(problem, args.validate, seed=args.seed or 0, methods=methods,
                        width_mult=source_width(task, args), progress=progress)


def _write_problem(space, task, args) -> None:
    from ..errors import UserInputError

    if not getattr(args, "sensitivity", None):
        raise UserInputError("--write-problem needs --sensitivity METHOD: the problem file carries sensitivities")
    from .. import sensitivity as sensitivity_module
    from ..problem import Problem
    from ..progress import progress_enabled
    from ..tabular import write_problem

    from ..build import TrainedModel

    source = task.evaluator() if isinstance(task, TrainedModel) else task
    table = sensitivity_module.estimate(source, space, args.sensitivity, width_mult=args.width_mult,
                                        progress=progress_enabled())
    write_problem(Problem.build(space, (), sensitivity=table, task=task.name), args.write_problem, parents=False)
    print(f"wrote {args.write_problem}", file=sys.stderr)
