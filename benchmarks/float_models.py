"""The float models the package ships: their test top-1 and loss, as bitsearch scores them.

    python benchmarks/float_models.py [--out benchmarks/results/float_models]

Deterministic (the shipped weights, one thread): the numbers do not depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/float_models")
    args = parser.parse_args(argv)
    from bitsearch.evaluate import Evaluator
    from bitsearch.tasks import get_task
    from bitsearch.tasks.ship import SHIPPED

    rows = []
    for name, widths in SHIPPED.items():
        task = get_task(name)
        for width in widths:
            metrics = Evaluator(task, width_mult=width).float_metrics()
            info = task.weights_info(width)
            rows.append({"task": name, "width_mult": width, "top1": metrics["top1"], "loss": metrics["loss"],
                         "key": info["key"], "file": task.shipped_weights_path(width).name,
                         "params": sum(p.numel() for p in task.build_model(width).parameters())})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# The shipped float models", "", "Made by `python benchmarks/float_models.py`: the test split of each "
             "task, scored as every policy is (one thread; the weights in `bitsearch/tasks/weights/`).", "",
             "| task | width | parameters | top-1 | loss | file |", "|---|---|---|---|---|---|"]
    lines += [f"| `{r['task']}` | x{r['width_mult']:g} | {r['params']:,} | {100 * r['top1']:.2f}% | {r['loss']:.4f} | "
              f"`{r['file']}` |" for r in rows]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
