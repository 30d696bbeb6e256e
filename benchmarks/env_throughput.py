"""Throughput of QuantEnv alone and of the autoq searcher, kernel-wise on ResNet-18.

    python benchmarks/env_throughput.py [--episodes 100] [--warmup 20] [--threads 1]
                                        [--space auto|hand|discover] [--out benchmarks/results]

Writes ``env_throughput.json`` and ``env_throughput.md`` under ``--out``:

1. env alone: steps per second of ``QuantEnv.step`` over whole episodes with random
   actions (continuous and discrete, kernel-wise: 5,800 weight decisions per episode;
   layer-wise), and the time of the end of an episode (projection onto the budget,
   reference costs, scoring with the sensitivity table);
2. ``autoq`` kernel-wise on ResNet-18 in the sensitivity-reward mode (synthetic
   Hessian-like table, see ``benchmarks/synthetic.py``), budget ``size=4bit``: episodes
   per minute over the whole search (start-up included) and after the warm-up, with a
   cProfile summary of where the time goes.

The space comes from ``bitsearch.discover`` on torchvision's resnet18 when discover is
available (``--space auto``), else from the hand-written copy in ``synthetic.py``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from synthetic import hessian_like_table, resnet18_from_discover, resnet18_space  # noqa: E402


def build_space(kind: str, granularity: str):
    if kind in ("auto", "discover"):
        try:
            return resnet18_from_discover(granularity), "bitsearch.discover(torchvision resnet18)"
        except ImportError:
            if kind == "discover":
                raise
    return resnet18_space(granularity), "hand-written (benchmarks/synthetic.py)"


def env_alone(problem, action_type: str, episodes: int = 3) -> dict:
    from bitsearch.envs import QuantEnv

    env = QuantEnv(problem, action_type=action_type)
    rng = np.random.default_rng(0)
    step_seconds, finish_seconds, projected = [], [], []
    for episode in range(episodes):
        env.reset(seed=episode)
        if action_type == "continuous":
            actions = rng.uniform(0, 1, (env.n_steps, 1)).astype(np.float32)
        else:
            actions = rng.integers(0, env.action_space.n, env.n_steps)
        start = time.perf_counter()
        for t in range(env.n_steps - 1):
            env.step(actions[t])
        middle = time.perf_counter()
        _, _, done, _, info = env.step(actions[-1])
        end = time.perf_counter()
        assert done and problem.fits(info["policy"])
        step_seconds.append((middle - start) / (env.n_steps - 1))
        finish_seconds.append(end - middle)
        projected.append(bool(info["projected"]))
    return {"action_type": action_type, "steps_per_episode": env.n_steps,
            "steps_per_second": round(1.0 / float(np.median(step_seconds))),
            "episode_end_ms": round(1e3 * float(np.median(finish_seconds)), 2),
            "episodes_per_second": round(1.0 / float(np.median(step_seconds) * (env.n_steps - 1)
                                                     + np.median(finish_seconds)), 2),
            "projected": projected}


def profile_summary(profile: cProfile.Profile, limit: int = 25) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    return stream.getvalue()


def where_time_goes(profile: cProfile.Profile) -> dict:
    """Cumulative seconds of the parts that matter (a function's time includes callees)."""
    stats = pstats.Stats(profile).stats
    parts = {
        "sb3 train (gradient steps)": ("td3.py", "train"),
        "sb3 train (sac)": ("sac.py", "train"),
        "sb3 model construction": ("td3.py", "_setup_model"),
        "env episode end (projection + scoring)": ("walk.py", "finish"),
        "  projection": ("walk.py", "_project"),
        "  run.evaluate (costs, table, history)": ("search.py", "evaluate"),
        "high-level + low-level acting": ("rl.py", "act"),
        "env decisions (decide_weights)": ("walk.py", "decide_weights"),
        "replay buffer writes": ("rl.py", "add"),
        "intrinsic rewards": ("hierarchical.py", "_low_rewards"),
        "imports": ("<frozen importlib._bootstrap>", "_find_and_load"),
    }
    out = {}
    for label, (file_end, func) in parts.items():
        total = 0.0
        for (filename, _, name), (_, _, _, cumulative, _) in stats.items():
            if name == func and filename.endswith(file_end):
                total = max(total, cumulative)
        out[label] = round(total, 3)
    return out


def autoq_run(problem, episodes: int, warmup: int, threads: int) -> dict:
    from bitsearch import searchers

    searcher = searchers.create("autoq", episodes=episodes, warmup=warmup, threads=threads)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    result = searcher.search(problem, seed=0)
    profile.disable()
    seconds = time.perf_counter() - start
    curve = result.info["learning_curve"]
    assert problem.fits(result.policy)
    after = [e for e in curve if e["episode"] > warmup]
    steady = None
    if len(after) >= 2:
        steady = (len(after) - 1) / (after[-1]["seconds"] - after[0]["seconds"]) * 60.0
    return {"episodes": len(curve), "warmup": warmup, "threads": threads, "seconds": round(seconds, 2),
            "episodes_per_minute": round(len(curve) / seconds * 60.0, 1),
            "episodes_per_minute_after_warmup": None if steady is None else round(steady, 1),
            "first_episode_at_seconds": curve[0]["seconds"],
            "best_reward": curve[-1]["best_reward"],
            "reward_first_10": round(float(np.mean([e["reward"] for e in curve[:10]])), 4),
            "reward_last_10": round(float(np.mean([e["reward"] for e in curve[-10:]])), 4),
            "agent": result.info["agent"],
            "where_time_goes_seconds": where_time_goes(profile),
            "profile": profile_summary(profile)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--space", choices=("auto", "hand", "discover"), default="auto")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)

    from bitsearch.problem import Problem

    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()},
              "command": "python benchmarks/env_throughput.py " + " ".join(argv or sys.argv[1:])}
    kernel_space, source = build_space(args.space, "kernel")
    layer_space, _ = build_space(args.space, "layer")
    table = hessian_like_table(kernel_space)
    kernel_problem = Problem.build(kernel_space, ["size=4bit"], sensitivity=table)
    layer_problem = Problem.build(layer_space, ["size=4bit"], sensitivity=table)
    report["space"] = {"source": source, "layers": len(kernel_space.layers),
                       "kernels": sum(l.kernels for l in kernel_space.layers),
                       "groups": len(kernel_space.groups()), "weight_bits": list(kernel_space.weight_bits),
                       "budget": "size=4bit", "table": table.method}
    report["env_alone"] = {
        "kernel": [env_alone(kernel_problem, "continuous"), env_alone(kernel_problem, "discrete")],
        "layer": [env_alone(layer_problem, "continuous", episodes=50),
                  env_alone(layer_problem, "discrete", episodes=50)],
    }
    report["autoq_kernel_resnet18"] = autoq_run(kernel_problem, args.episodes, args.warmup, args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "env_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "env_throughput.md").write_text(render(report))
    print(render(report))


def render(report) -> str:
    lines = ["# QuantEnv and autoq throughput (ResNet-18)", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']['cpus']} CPUs, "
             f"Python {report['machine']['python']}, {report['machine']['platform']}", "",
             f"Space: {report['space']['source']}: {report['space']['layers']} layers, "
             f"{report['space']['kernels']} kernels, {report['space']['groups']} groups (tied layers together); "
             f"weight bits {report['space']['weight_bits']}; budget {report['space']['budget']}; "
             f"table {report['space']['table']}.", "", "## Env alone (random actions)", "",
             "| granularity | actions | steps/episode | steps/s | episode end (ms) | episodes/s |",
             "|---|---|---|---|---|---|"]
    for gran, rows in report["env_alone"].items():
        for row in rows:
            lines.append(f"| {gran} | {row['action_type']} | {row['steps_per_episode']} | "
                         f"{row['steps_per_second']:,} | {row['episode_end_ms']} | {row['episodes_per_second']} |")
    run = report["autoq_kernel_resnet18"]
    lines += ["", "## autoq, kernel-wise, sensitivity reward", "",
              f"{run['episodes']} episodes ({run['warmup']} warm-up), torch threads {run['threads']}: "
              f"{run['seconds']} s in all, **{run['episodes_per_minute']} episodes/min** including start-up "
              f"(first episode done at {run['first_episode_at_seconds']} s), "
              f"**{run['episodes_per_minute_after_warmup']} episodes/min** after the warm-up (training).", "",
              f"Mean reward of the first 10 episodes {run['reward_first_10']}, of the last 10 "
              f"{run['reward_last_10']}; best {run['best_reward']}.", "",
              "Where the time goes (cumulative seconds; nested rows are part of the row above):", "",
              "| part | seconds |", "|---|---|"]
    for label, seconds in run["where_time_goes_seconds"].items():
        lines.append(f"| {label} | {seconds} |")
    lines += ["", "<details><summary>cProfile, by own time</summary>", "", "```", run["profile"].strip(), "```",
              "", "</details>", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
