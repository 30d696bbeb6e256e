"""Does onnxruntime give bitsearch's accuracy?  Mixed size=3bit policies, post-training and
fine-tuned, exported to ONNX and run by onnxruntime.

    python benchmarks/onnx_accuracy.py [--tasks mnist1d-cnn,mnist-lenet5] [--epochs 5]
                                       [--out benchmarks/results/onnx_accuracy]

Per task: ``bitsearch search --searcher ilp --budget size=3bit`` layer-wise and kernel-wise;
``bitsearch finetune`` of each; every model (post-training and fine-tuned) exported with
``bitsearch export --to onnx`` and scored by ``bitsearch eval --onnx`` three ways: all
onnxruntime optimizations (integer kernels, float biases rounded to the accumulator grid),
``--float-bias`` (no bias rounding, float kernels), and bitsearch's own evaluation
(``bitsearch eval``, with ``--model`` for the fine-tuned one).  Accuracy numbers are
deterministic; they can be recorded on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bitsearch._io import atomic_write_text


def bitsearch(*argv, capture=False):
    print("+ bitsearch " + " ".join(argv), file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", "bitsearch.cli", *argv], check=True,
                          stdout=subprocess.PIPE if capture else None, text=True)
    return done.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="mnist1d-cnn,mnist-lenet5")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/onnx_accuracy")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in args.tasks.split(","):
        for granularity in ("layer", "kernel"):
            stem = out / f"{task}_{granularity}"
            policy = f"{stem}.json"
            bitsearch("search", "--task", task, "--searcher", "ilp", "--granularity", granularity,
                      "--budget", "size=3bit", "--out", policy)
            model = f"{stem}.pt"
            bitsearch("finetune", policy, "--task", task, "--epochs", str(args.epochs), "--out", model)
            for kind, extra in (("ptq", []), (f"finetuned {args.epochs} epochs", ["--model", model])):
                onnx = f"{stem}{'_ft' if extra else ''}.onnx"
                bitsearch("export", policy, "--to", "onnx", "--task", task, *extra, "--out", onnx)
                own = json.loads(bitsearch("eval", policy, "--task", task, *extra, "--json", capture=True))
                deployed = json.loads(bitsearch("eval", "--onnx", onnx, "--task", task, "--json", capture=True))
                exact = json.loads(bitsearch("eval", "--onnx", onnx, "--task", task, "--float-bias", "--json",
                                             capture=True))
                top1 = own["metrics"]["top1"]
                rows.append({"task": task, "granularity": granularity, "model": kind, "top1_bitsearch_eval": top1,
                             "top1_onnxruntime": deployed["metrics"]["top1"],
                             "top1_onnxruntime_float_bias": exact["metrics"]["top1"],
                             "diff_pp": 100 * (deployed["metrics"]["top1"] - top1),
                             "diff_pp_float_bias": 100 * (exact["metrics"]["top1"] - top1),
                             "test_samples": deployed["bitsearch_fake_quant"].get("samples")})
                Path(onnx).unlink()
            Path(model).unlink()
            Path(model + ".ckpt").unlink(missing_ok=True)  # finetune's checkpoint
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    lines = ["# onnxruntime accuracy vs bitsearch eval (size=3bit ILP policies)", "",
             "```", f"python benchmarks/onnx_accuracy.py --tasks {args.tasks} --epochs {args.epochs}", "```", "",
             "`onnxruntime`: all graph optimizations (integer QLinearConv kernels; onnxruntime rounds float biases to "
             "the int32 accumulator grid first, where a fine-tuned model's biases already are). `float bias`: the same "
             "with that rounding off (`bitsearch eval --onnx --float-bias`), float kernels. See docs/deploy.md.", "",
             "| task | granularity | model | bitsearch eval | onnxruntime | diff (pp) | onnxruntime, float bias | "
             "diff (pp) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['granularity']} | {r['model']} | {r['top1_bitsearch_eval']:.4f} | "
                     f"{r['top1_onnxruntime']:.4f} | {r['diff_pp']:+.2f} | {r['top1_onnxruntime_float_bias']:.4f} | "
                     f"{r['diff_pp_float_bias']:+.2f} |")
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
