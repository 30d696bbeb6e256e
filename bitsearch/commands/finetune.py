"""``bitsearch finetune POLICY --task T --epochs E --out model.pt``: quantization-aware
fine-tuning at a policy's widths (see :mod:`bitsearch.finetune`), and ``bitsearch eval
POLICY --task T --model model.pt``."""

from __future__ import annotations

import argparse
import json
import sys

from ..progress import limit_threads, progress_enabled
from .common import check_outputs, seed_arg, threads_arg

DESCRIPTION = """\
Fine-tune the task's model at the policy's widths: LSQ step sizes for weights, PACT
clipping for activations (both start from the post-training quantizers), biases on the
int32 accumulator grid of each integer layer (as an integer runtime adds them), AdamW under
a cyclic learning rate (8 discrete exponential levels per cycle, lr/1000 .. lr), optionally
a Lipschitz-style regularizer on the weights.  Writes the integer model (weights, scales,
activation quantizers, the policy) to --out, loadable with torch.load(weights_only=True)
and scored by 'bitsearch eval POLICY --task T --model OUT'.

A checkpoint is written after every epoch (OUT.ckpt); run the same command again after an
interruption and it resumes after the last finished epoch (--restart starts over)."""

EPILOG = """\
examples:
  bitsearch search --task mnist1d-cnn --searcher ilp --budget size=3bit --out p.json
  bitsearch finetune p.json --task mnist1d-cnn --epochs 5 --out p.pt
  bitsearch eval p.json --task mnist1d-cnn --model p.pt
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="quantization-aware fine-tuning at a policy's widths (LSQ + PACT)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policy", help="policy JSON file")
    p.add_argument("--task", required=True, help="the task the policy was made for")
    p.add_argument("--epochs", type=int, default=5, metavar="E", help="epochs of fine-tuning (default 5)")
    p.add_argument("--out", required=True, metavar="FILE", help="the fine-tuned integer model (.pt)")
    p.add_argument("--lr", type=float, default=None,
                   help="top of the cyclic learning rate (default: a tenth of the task's training rate)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the task's training batch size")
    p.add_argument("--cycle-epochs", type=float, default=None, metavar="C",
                   help="epochs per learning-rate cycle (default: all epochs, one cycle)")
    p.add_argument("--lipschitz", type=float, default=0.0, metavar="BETA",
                   help="add BETA/2 * sum ||W W^T - I||^2 to the loss (default 0: off; the study used 1e-4)")
    p.add_argument("--seed", type=seed_arg, default=0, help="random seed in [0, 2**32) (default 0)")
    p.add_argument("--width-mult", type=float, default=None, help="model width multiplier when the policy "
                                                                   "names none (default 1.0)")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="torch CPU threads, at most the machine's cores (default: torch's choice)")
    p.add_argument("--checkpoint", metavar="FILE", help="checkpoint file (default OUT.ckpt)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> int:
    from ..finetune import FinetuneSettings, finetune
    from ..policy import load_policy
    from ..tasks import get_task

    check_outputs(("--out", args.out), ("--checkpoint", args.checkpoint or f"{args.out}.ckpt"))
    policy = load_policy(args.policy)
    task = get_task(args.task)
    if task.shape_only:
        from ..errors import UserInputError

        raise UserInputError(f"task {task.name!r} is shape-only (no data): fine-tuning needs a task with data")
    width_mult = args.width_mult
    if width_mult is None:
        width_mult = float((policy.meta.get("model") or {}).get("width_mult", 1.0))
    settings = FinetuneSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                cycle_epochs=args.cycle_epochs, lipschitz=args.lipschitz, seed=args.seed,
                                width_mult=width_mult)
    limit_threads(args.threads)
    quiet = args.json
    result = finetune(task, policy, settings, out=args.out, checkpoint=args.checkpoint, resume=not args.restart,
                      progress=progress_enabled(),
                      log=None if quiet else (lambda line: print(line, file=sys.stderr)))
    summary = {"out": result.out, "task": task.name, "epochs": settings.epochs, "resumed_after_epoch":
               result.resumed_from, "top1_ptq": result.ptq["top1"], "top1": result.final["top1"],
               "loss": result.final["loss"], "history": result.history}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"post-training top1 {result.ptq['top1']:.4f} -> fine-tuned top1 {result.final['top1']:.4f} "
          f"after {settings.epochs} epochs")
    print(f"wrote {result.out}")
    return 0


def eval_saved_model(args) -> int:
    """``bitsearch eval POLICY --task T --model FILE``: score a fine-tuned model."""
    from ..errors import PolicyError
    from ..finetune import load_finetuned, read_saved, saved_policy
    from ..policy import load_policy
    from ..tasks import evaluate_model, get_task

    policy = load_policy(args.policy)
    task = get_task(args.task)
    data = read_saved(args.model)
    model = load_finetuned(args.model, task, saved=data)
    theirs = saved_policy(data)
    meta = policy.meta.get("model") or {}
    if meta.get("fingerprint") and meta["fingerprint"] != data["model"].get("fingerprint"):
        raise PolicyError(f"the policy was made for model {meta.get('name', '?')!r} ({meta['fingerprint']}), but "
                          f"{args.model} holds {data['model'].get('name')!r} ({data['model'].get('fingerprint')}): "
                          "a policy for another model", args.policy)
    if policy != theirs:
        differ = [n for n, b in theirs.bits if n not in policy.as_dict() or policy[n] != b]
        differ += [n for n in policy.names if n not in theirs.as_dict()]
        raise PolicyError(f"{args.model} was fine-tuned at other widths than this policy gives (layers "
                          f"{', '.join(differ[:6])}); evaluate it with the policy it was made with", args.policy)
    metrics = evaluate_model(model, task.data().x_test, task.data().y_test)
    at_end = data["metrics"]["final"]
    if args.json:
        print(json.dumps({"policy": args.policy, "model": args.model, "task": task.name, "metrics": metrics,
                          "metric_kind": "finetuned", "at_end_of_finetuning": at_end,
                          "post_training": data["metrics"]["ptq"]}, indent=2))
        return 0
    for name, bits in policy.bits:
        w = bits.weight_bits if not bits.per_kernel else f"mean {bits.mean_weight_bits:.2f}"
        print(f"  {name:<28} weights {str(w):<28} acts {'float' if bits.act_bits is None else bits.act_bits}")
    print(f"metrics: top1 {metrics['top1']:.4f}, loss {metrics['loss']:.4f} (fine-tuned model {args.model}; "
          f"post-training top1 {data['metrics']['ptq']['top1']:.4f})")
    return 0
