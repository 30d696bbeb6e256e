"""Cost of a fracbits search epoch beside a float training epoch of the same model.

Float epochs and one-epoch searches alternate (so both see the same machine load), on
mnist1d-cnn, weights {2,3,4,8}, activations 8 bit, size=3bit, one thread; the ratio of
the medians is recorded in benchmarks/results/fracbits_epoch_cost.json.  Target: <= 3.

    nice python benchmarks/fracbits_epoch_cost.py [--rounds 3] [--out benchmarks/results/fracbits_epoch_cost.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bitsearch.build import ProblemOptions, SpaceOptions, problem_for_task
from bitsearch.solvers.fracbits import FracBitsSearcher

OUT = Path(__file__).parent / "results" / "fracbits_epoch_cost.json"


def float_epoch_seconds(task, repeats=2):
    """Seconds of one float training epoch of the task's model (its recipe's batch size, Adam)."""
    import torch.nn.functional as F

    data = task.data()
    model = task.trained_model()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    n, batch = len(data.x_train), task.recipe.batch_size
    times = []
    for r in range(repeats):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(r))
        start = time.perf_counter()
        for s in range(0, n, batch):
            index = order[s:s + batch]
            loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(OUT), help="the JSON file written (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {"command": "nice python benchmarks/fracbits_epoch_cost.py " + " ".join(sys.argv[1:]),
              "task": "mnist1d-cnn", "budget": "size=3bit", "threads": 1, "torch": torch.__version__}
    for granularity in ("layer", "kernel"):
        problem = problem_for_task("mnist1d-cnn", SpaceOptions(granularity=granularity, weight_bits=(2, 3, 4, 8),
                                                               act_bits=(8,)), ProblemOptions(budgets=("size=3bit",)))
        task = problem.evaluator.task
        FracBitsSearcher(epochs=1, train_samples=256).search(problem)  # warm up (imports, first calls)
        floats, searches = [], []
        for r in range(args.rounds):
            floats.append(float_epoch_seconds(task, repeats=1))
            searches.append(FracBitsSearcher(epochs=1).search(problem, seed=r).info["epoch_seconds"][0])
        ratio = statistics.median(searches) / statistics.median(floats)
        result[granularity] = {"float_epoch_seconds": [round(t, 3) for t in floats],
                               "search_epoch_seconds": [round(t, 3) for t in searches],
                               "ratio_of_medians": round(ratio, 3)}
        print(granularity, result[granularity], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
