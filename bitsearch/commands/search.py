"""``bitsearch search``: search a policy under budgets and write its JSON."""

from __future__ import annotations

import argparse
import json

from ..errors import UserInputError
from ..progress import SearchProgress, limit_threads, progress_enabled
from .common import SUMMARY_PAST, TASK_HELP, add_model_options, add_space_options, check_outputs, model_source, \
    print_result, print_solve, seed_arg, source_width, space_options, threads_arg

EXAMPLES = """\
examples:
  bitsearch tasks
  bitsearch inspect --task mnist1d-cnn
  bitsearch search --task mnist1d-cnn --searcher uniform --budget size=4bit --out p.json
  bitsearch search --task mnist1d-cnn --searcher ilp --budget size=3bit --weight-bits 2,3,4,8
  bitsearch search --task resnet18 --weights r18.pt --data imagefolder:images --searcher ilp --budget size=4bit
  bitsearch search --task mymodels:make --searcher haq --budget size=3bit   # your factory (docs/tasks.md)
  bitsearch search --task tiny-llama --searcher ilp --budget bits=4.25 --scale-group 128
  bitsearch search --task tiny-llama --searcher ilp --budget bits=5 --weight-bits 4,8,fp8_e4m3,nvfp4
  bitsearch search --task tiny-llama --searcher llamacpp-rule --budget bits=5 --scale-group 128
  bitsearch eval p.json --task mnist1d-cnn
  bitsearch export p.json --to csv
  bitsearch export p.json --to llama.cpp --out tiny.tensor-types.txt
"""

BUDGETS = """\
budgets (COST=VALUE, repeat --budget for several):
  size=1.2MB  size=4bit (cost of the uniform 4-bit policy)  size=12.5% (of float)
  bops=3.5GBOPs  energy=2uJ  bitfusion=0.5ms  latency=0.8ms (needs --latency-table)
  latency=frac:0.5 (cheapest + 0.5 x (dearest - cheapest), as HAWQ-V3 states budgets)
  bits=4.5 (effective bits: stored bits per quantized weight, scales included, as ModelOpt's
            effective_bits; 4-bit with --scale-group 128 is 4.125, nvfp4 4.5)
"""

EXIT_CODES = "exit codes: 0 success, 2 bad input, 1 internal error\n"

EPILOG = EXAMPLES + "\n" + BUDGETS + "\n" + EXIT_CODES


def register(subparsers) -> None:
    p = subparsers.add_parser("search", help="search a policy under budgets",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Search the widths of every layer (or kernel) under one or more budgets, "
                                          "and write the policy JSON.", epilog=EPILOG)
    src = p.add_argument_group("what to search")
    src.add_argument("--task", help=TASK_HELP)
    src.add_argument("--problem", metavar="FILE", help="a tabular problem file: bitsearch-problem JSON, or "
                                                       "the columnar .npz form for large problems; runs "
                                                       "without torch")
    src.add_argument("--searcher", required=True, help="which searcher (bitsearch searchers)")
    src.add_argument("--budget", action="append", default=[], metavar="COST=VALUE",
                     help="a budget; repeat for several (see below)")
    add_model_options(p)
    add_space_options(p)
    g = p.add_argument_group("scoring and costs")
    g.add_argument("--finetune-epochs", type=int, default=0, metavar="E",
                   help="score policies after E epochs of quantization-aware fine-tuning (default 0: "
                        "post-training quantization with calibration)")
    g.add_argument("--latency-table", metavar="FILE", help="measured latency table (CSV or JSON) for latency=")
    g.add_argument("--sensitivity", metavar="METHOD[:K=V,...]",
                   help="sensitivity estimate for searchers that use one: hessian (the default; iqp's is "
                        "pairwise), bitgrad, empirical, pairwise, with its settings after a colon, e.g. "
                        "hessian:probes=8,samples=128 (cheaper on big models)")
    g.add_argument("--threads", type=threads_arg, default=None, metavar="N",
                   help="torch CPU threads for training and scoring, at most the machine's cores (default: "
                        "torch's choice; 1 is often fastest for the small built-in tasks on a busy machine)")
    s = p.add_argument_group("searcher settings")
    s.add_argument("--seed", type=seed_arg, default=0,
                   help="random seed in [0, 2**32); the same seed gives the same policy (default 0)")
    s.add_argument("--solver", help="MIP solver for ilp/bmpq: highs (default) or cbc")
    s.add_argument("--time-limit", type=float, default=None, metavar="S", help="solver time limit in seconds")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any searcher setting, read as the setting's type: --set samples=200, "
                        "--set net_arch=64,64, --set time_limit=none (bitsearch searchers lists them)")
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="FILE", help="write the policy JSON here (a new or regular file in an existing folder)")
    o.add_argument("--write-problem", metavar="FILE", help="also write the problem as a tabular problem file")
    o.add_argument("--json", action="store_true", help="print the result as JSON")
    o.add_argument("--verbose", action="store_true",
                   help=f"list every layer (default: a summary of the widths past {SUMMARY_PAST} layers)")
    p.set_defaults(func=cmd_search)


def cmd_search(args) -> int:
    from .. import searchers
    from ..budget import parse_budget
    from ..policy import save_policy
    from ..search import parse_settings

    check_outputs(("--out", args.out), ("--write-problem", args.write_problem))
    if not args.budget:
        raise UserInputError("give at least one --budget, e.g. --budget size=4bit")
    for text in args.budget:  # fail on a bad budget before any training
        parse_budget(text)
    cls = searchers.get(args.searcher)
    settings = parse_settings(cls, args.set or [])
    if args.solver:
        settings["solver"] = args.solver
    if args.time_limit is not None:
        settings["time_limit"] = args.time_limit
    searcher = cls(**settings)
    limit_threads(args.threads, import_torch=bool(args.task))  # a tabular problem (--problem) never imports torch
    problem = _build_problem(args, cls)
    if args.write_problem:
        from ..tabular import write_problem

        write_problem(problem, args.write_problem, parents=False)
    bar = SearchProgress(f"{args.searcher}")
    try:
        result = searcher.search(problem, seed=args.seed, callback=bar)
    finally:
        bar.close()
    if args.out:
        save_policy(result.policy, args.out, parents=False)
    if args.json:
        print(json.dumps({**result.summary(), "policy": result.policy.to_dict(),
                          "out": args.out}, indent=2, default=str))
        return 0
    print_result(problem, result.policy, result.metrics, result.costs, verbose=args.verbose)
    print_solve(result.info)
    print(f"searcher {result.searcher} (seed {result.seed}): {result.evaluations} evaluations, "
          f"{result.seconds:.2f} s" + (" (stopped early)" if result.stopped_early else ""))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def parse_sensitivity(text: str | None) -> tuple[str | None, dict]:
    """``hessian:probes=8,samples=128`` -> ``("hessian", {"probes": 8, "samples": 128})``."""
    if not text:
        return None, {}
    from ..sensitivity import METHODS
    from ..sensitivity.estimators import DEFAULTS

    method, _, rest = text.partition(":")
    if method not in METHODS:
        raise UserInputError(f"--sensitivity {text!r}: unknown method {method!r}; methods: {', '.join(METHODS)}")
    known = DEFAULTS[method]
    settings = {}
    for part in (p.strip() for p in rest.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise UserInputError(f"--sensitivity {text!r}: expected {method}:KEY=VALUE,... with KEY one of "
                                 f"{', '.join(known)} (got {part!r})")
        if not isinstance(known[key], int):  # a word setting (pairwise's pairs=auto)
            settings[key] = value.strip()
            continue
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1 or number > 10_000_000:
            raise UserInputError(f"--sensitivity {text!r}: {key} must be a whole number >= 1 (got {value!r})")
        settings[key] = number
    return method, settings


def _build_problem(args, searcher_cls):
    from ..build import ProblemOptions, default_sensitivity, problem_for

    if args.problem:
        if args.task:
            raise UserInputError("give --task or --problem, not both")
        if args.weights or args.data:
            raise UserInputError("--weights and --data go with --task (a tabular problem has no model)")
        from ..tabular import load_problem

        return load_problem(args.problem, args.budget, granularity=args.granularity)
    if not args.task:
        raise UserInputError("give --task NAME (see 'bitsearch tasks') or --problem FILE")
    sensitivity, sensitivity_settings = parse_sensitivity(args.sensitivity)
    sensitivity = sensitivity or default_sensitivity(searcher_cls)
    source = model_source(args)
    options = ProblemOptions(budgets=tuple(args.budget), finetune_epochs=args.finetune_epochs,
                             width_mult=source_width(source, args), latency_table=args.latency_table,
                             sensitivity=sensitivity, sensitivity_settings=sensitivity_settings)
    return problem_for(source, space_options(args, source), options, progress=progress_enabled())
