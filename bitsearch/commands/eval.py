"""``bitsearch eval POLICY --task T``: a policy's costs and accuracy on a task (``--model
FILE``: of a model fine-tuned by ``bitsearch finetune``)."""

from __future__ import annotations

import argparse
import json

from ..progress import limit_threads, progress_enabled
from .common import SUMMARY_PAST, TASK_HELP, add_model_options, model_source, print_result, source_width, \
    threads_arg


EXAMPLES = """\
examples:
  bitsearch eval p.json --task mnist1d-cnn
  bitsearch eval p.json --task mnist1d-cnn --finetune-epochs 3
  bitsearch eval p.json --task resnet18 --weights r18.pt --data imagefolder:images
  bitsearch eval p.json --task mnist1d-cnn --model model.pt      # a model from bitsearch finetune
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score a policy on a task",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Apply a policy to a task's model and report its costs and metrics.",
                              epilog=EXAMPLES)
    p.add_argument("policy", help="policy JSON file")
    p.add_argument("--task", required=True, help="the task the policy was made for: " + TASK_HELP)
    add_model_options(p)
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="E",
                   help="fine-tune E epochs at the policy's widths before scoring (default 0)")
    p.add_argument("--weight-bits", default="2-8", metavar="BITS",
                   help="weight widths a policy may use (default 2-8, and the named formats the policy uses)")
    p.add_argument("--scale-group", type=int, default=None, metavar="G",
                   help="score with one scale per G weights (default: the policy's scale_group, else per kernel)")
    p.add_argument("--act-bits", default=None, metavar="BITS",
                   help="activation widths a policy may use (default 2-8, or none when the policy's "
                        "activations are all float)")
    p.add_argument("--width-mult", type=float, default=1.0, help="model width multiplier when the policy "
                                                                  "does not name one")
    p.add_argument("--latency-table", metavar="FILE", help="also report latency from this table")
    p.add_argument("--model", metavar="FILE", help="score this fine-tuned model (from bitsearch finetune)")
    p.add_argument("--threads", type=threads_arg, default=None, metavar="N",
                   help="torch CPU threads, at most the machine's cores (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--verbose", action="store_true",
                   help=f"list every layer (default: a summary of the widths past {SUMMARY_PAST} layers)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    limit_threads(args.threads)
    if getattr(args, "model", None):
        if args.weights or args.data:
            from ..errors import UserInputError

            raise UserInputError("--model scores a model from bitsearch finetune on its task's data; it does not "
                                 "take --weights or --data")
        from .finetune import eval_saved_model

        return eval_saved_model(args)
    from .. import formats
    from ..build import ProblemOptions, SpaceOptions, problem_for
    from ..errors import PolicyError
    from ..policy import load_policy, validate_policy
    from ..space import parse_bits, parse_weight_choices

    policy = load_policy(args.policy)
    model_meta = policy.meta.get("model") or {}
    args.width_mult = float(model_meta.get("width_mult", args.width_mult))
    source = model_source(args)
    width_mult = source_width(source, args)
    acts = {b.act_bits for _, b in policy.bits}
    act_bits = parse_bits(args.act_bits, allow_none=True) if args.act_bits else (
        None if acts == {None} else parse_bits("2-8"))
    named = {b.weight_bits for _, b in policy.bits if formats.is_named(b.weight_bits)}
    weight_bits = formats.sort_choices(set(parse_weight_choices(args.weight_bits)) | named)
    scale_group = args.scale_group if args.scale_group is not None else policy.scale_group
    # layers the policy keeps in float were pinned there (a search never picks 32 bits): pin them, so that
    # the bits cost leaves them out as the search did
    floats = tuple((name, formats.FLOAT_BITS) for name, b in policy.bits
                   if not b.per_kernel and formats.is_float(b.weight_bits))
    space_options = SpaceOptions(granularity=policy.granularity, weight_bits=weight_bits, act_bits=act_bits,
                                 scale_group=scale_group, pins=floats)
    options = ProblemOptions(finetune_epochs=args.finetune_epochs, width_mult=width_mult,
                             latency_table=args.latency_table)
    problem = problem_for(source, space_options, options, progress=progress_enabled())
    fingerprint = model_meta.get("fingerprint")
    if fingerprint and fingerprint != problem.space.fingerprint:
        raise PolicyError(f"the policy was made for model {model_meta.get('name', '?')!r} "
                          f"({fingerprint}), but task {args.task!r} gives {problem.space.fingerprint}: "
                          f"a policy for another model", args.policy)
    policy = validate_policy(policy, problem.space, source=args.policy)
    costs = problem.cost_of(policy)
    metrics = problem.evaluate(policy) if problem.evaluator is not None else {}
    kind = problem.metric_kind
    if args.json:
        print(json.dumps({"policy": args.policy, "task": problem.task, "costs": costs, "metrics": metrics,
                          "metric_kind": kind}, indent=2))
        return 0
    print_result(problem, policy, metrics, costs, verbose=args.verbose)
    if kind:
        print(f"metric kind: {kind}")
    return 0
