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
  bitsearch export p.json --to onnx --task mnist1d-cnn --out p.onnx
  bitsearch eval --onnx p.onnx --task mnist1d-cnn                 # onnxruntime's metrics beside bitsearch's
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score a policy on a task (or an exported ONNX model in onnxruntime)",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Apply a policy to a task's model and report its costs and metrics; "
                                          "with --onnx, run an ONNX model exported by 'bitsearch export --to onnx' "
                                          "in onnxruntime and report the metrics it computes beside bitsearch's "
                                          "own fake-quantized metrics of the same policy and weights.",
                              epilog=EXAMPLES)
    p.add_argument("policy", nargs="?", help="policy JSON file (optional with --onnx: the file holds its policy)")
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
    p.add_argument("--onnx", metavar="FILE", help="score this ONNX model (from bitsearch export --to onnx) in onnxruntime")
    p.add_argument("--optimization", choices=("all", "extended", "basic", "none"), default="all",
                   help="--onnx: onnxruntime's graph optimization level (default all, what a deployment runs: "
                        "integer kernels fused from QuantizeLinear/DequantizeLinear)")
    p.add_argument("--float-bias", action="store_true",
                   help="--onnx: keep float biases (onnxruntime otherwise rounds them to the int32 accumulator grid "
                        "for its integer kernels, which moves low-bit models slightly); it then runs float kernels "
                        "and computes bitsearch's numbers")
    p.add_argument("--threads", type=threads_arg, default=None, metavar="N",
                   help="torch CPU threads, at most the machine's cores (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--verbose", action="store_true",
                   help=f"list every layer (default: a summary of the widths past {SUMMARY_PAST} layers)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    limit_threads(args.threads)
    if getattr(args, "onnx", None):
        return eval_onnx(args)
    if not args.policy:
        from ..errors import UserInputError

        raise UserInputError("give the policy JSON file (or --onnx FILE)")
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


def eval_onnx(args) -> int:
    """``bitsearch eval --onnx FILE --task T``: the accuracy onnxruntime computes."""
    from ..errors import UserInputError
    from ..build import TrainedModel
    from ..onnx_export import check_onnx_for_task, evaluate_onnx, read_metadata, runtime_module, session
    from ..policy import Policy, load_policy

    if args.model or args.finetune_epochs or args.latency_table:
        raise UserInputError("--onnx scores the exported model as it is: --model, --finetune-epochs and "
                             "--latency-table do not apply")
    meta = read_metadata(args.onnx)
    task = model_source(args)
    trained = isinstance(task, TrainedModel)
    if trained and task.evaluate is None:
        raise UserInputError(f"{args.task!r} gives no evaluate=: nothing to score the ONNX model with")
    if not trained and task.shape_only:
        raise UserInputError(f"task {task.name!r} is shape-only (no data): nothing to score the ONNX model on")
    check_onnx_for_task(meta, task, args.onnx)
    theirs = Policy.from_json(meta["policy"]) if meta.get("policy") else None
    if args.policy:
        policy = load_policy(args.policy)
        if theirs is not None and policy.as_dict() != theirs.as_dict():
            raise UserInputError(f"{args.onnx} was exported at other widths than {args.policy} gives; leave the "
                                 "policy out to score the file as it is")
    threads = args.threads if args.threads is not None else 1
    sess = session(args.onnx, threads=threads, optimization=args.optimization, float_bias=args.float_bias)
    if trained:  # the user's own evaluate, on the session as a module
        metrics = task.evaluator().score_model(runtime_module(sess))
        metric = task.metric
    else:
        data = task.data()
        metrics = evaluate_onnx(sess, data.x_test, data.y_test, threads=threads)
        metric = "top1"
    own = json.loads(meta.get("fake_quant_metrics", "{}") or "{}")
    diff_pp = None if "top1" not in own or "top1" not in metrics else 100.0 * (metrics["top1"] - float(own["top1"]))
    diff = None if metric not in own or metric not in metrics else metrics[metric] - float(own[metric])
    if args.json:
        print(json.dumps({"onnx": args.onnx, "task": task.name, "metrics": metrics,
                          "metric_kind": "onnxruntime", "optimization": args.optimization,
                          "float_bias": bool(args.float_bias),
                          "bitsearch_fake_quant": own, "top1_difference_pp": diff_pp,
                          "metric": metric, "difference": diff,
                          "quantizers": meta.get("quantizers")}, indent=2))
        return 0
    how = f"{args.optimization} optimizations" + (", float bias" if args.float_bias else "")
    print(f"onnxruntime ({how}): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if diff is not None:
        theirs = ", ".join(f"{k} {float(own[k]):.4f}" for k in metrics if k in own)
        print(f"bitsearch fake-quantized ({own.get('metric_kind')}): {theirs}; difference "
              + (f"{diff_pp:+.2f} pp" if metric == "top1" else f"{metric} {diff:+.4g}"))
    if meta.get("quantizers"):
        print(f"quantizers: {meta['quantizers']}")
    return 0
