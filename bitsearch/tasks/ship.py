"""The trained float weights the package ships, and the command that makes them.

Every number bitsearch reports on a built-in task is a number about its trained float
model, so the package carries those models (``bitsearch/tasks/weights/``, a few hundred
kilobytes each, ``torch.save`` of plain tensors read back with ``weights_only=True``): on
any machine, any torch version, the same weights.  A file is named, like the cache's, by
the task's weights key (recipe, data settings, architecture, width): change the recipe or
ask for another width multiplier and the task trains and caches its own weights instead.

Maintainers, after changing a built-in task::

    python -m bitsearch.tasks.ship            # train what is missing or stale, write the files
    python -m bitsearch.tasks.ship --check    # exit 1 if a shipped file is missing or stale
    python -m bitsearch.tasks.ship --verify   # train again and compare with the shipped files, bit for bit
"""

from __future__ import annotations

import argparse
import sys

#: task -> the width multipliers shipped (mnist1d-cnn: the grid of the uniform-width benchmark)
SHIPPED: dict[str, tuple[float, ...]] = {
    "digits-cnn": (1.0,),
    "mnist1d-cnn": (0.5, 0.75, 1.0, 1.25, 1.5, 2.0),
    "mnist-lenet5": (1.0,),
    "semicircles-mlp": (1.0,),
}


def expected_files() -> list[tuple[str, float, object]]:
    """``(task name, width, path)`` of every file that should ship."""
    from .registry import get_task

    out = []
    for name, widths in SHIPPED.items():
        task = get_task(name)
        out += [(name, width, task.shipped_weights_path(width)) for width in widths]
    return out


def stale_files() -> list[str]:
    """Shipped files no expected key names (left behind by a recipe change)."""
    from .base import SHIPPED_WEIGHTS

    wanted = {path.name for _, _, path in expected_files()}
    return sorted(p.name for p in SHIPPED_WEIGHTS.glob("*.pt") if p.name not in wanted)


def check() -> list[str]:
    """Every problem with the shipped weights, one line each (empty when all is well)."""
    import torch

    problems = []
    for name, width, path in expected_files():
        if not path.exists():
            problems.append(f"{name} x{width:g}: {path.name} is missing")
            continue
        meta = torch.load(path, map_location="cpu", weights_only=True)["meta"]
        if meta.get("key") != path.stem.rsplit("-", 1)[1] or meta.get("task") != name:
            problems.append(f"{name} x{width:g}: {path.name} records key {meta.get('key')!r}")
    problems += [f"{name} is shipped but no task's key names it" for name in stale_files()]
    return problems


def write(names=None, *, progress: bool = True) -> list[str]:
    """Train (from scratch, deterministically) every expected file that is missing and
    write it; remove stale ones.  Returns what was done, one line each."""
    import torch

    from .._io import atomic_write
    from .base import SHIPPED_WEIGHTS
    from .registry import get_task

    done = []
    SHIPPED_WEIGHTS.mkdir(parents=True, exist_ok=True)
    for name, width, path in expected_files():
        if names and name not in names or path.exists():
            continue
        state, meta = get_task(name).train_fresh(width, progress=progress)
        atomic_write(path, lambda handle: torch.save({"state_dict": state, "meta": meta}, handle))
        done.append(f"wrote {path.name}: top1 {meta['top1']:.4f}, trained in {meta['seconds']:.1f} s")
    for stale in stale_files():
        (SHIPPED_WEIGHTS / stale).unlink()
        done.append(f"removed {stale}")
    return done


def verify(names=None) -> list[str]:
    """Train every shipped model again and compare it with the shipped file, tensor by
    tensor (bit for bit); one line per model."""
    import torch

    from .registry import get_task

    lines = []
    for name, width, path in expected_files():
        if names and name not in names:
            continue
        shipped = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        state, meta = get_task(name).train_fresh(width)
        different = [k for k in shipped if not torch.equal(shipped[k], state[k])]
        verdict = "identical" if not different else f"DIFFERENT in {len(different)} tensors ({different[:3]})"
        lines.append(f"{name} x{width:g}: {verdict} (top1 {meta['top1']:.4f})")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitsearch.tasks.ship", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="*", help="only these tasks (default: every shipped one)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report missing or stale files, write nothing")
    mode.add_argument("--verify", action="store_true", help="train again and compare bit for bit")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.tasks) - set(SHIPPED))
    if unknown:
        parser.error(f"not shipped: {', '.join(unknown)} (shipped: {', '.join(SHIPPED)})")
    if args.check:
        problems = check()
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    lines = verify(args.tasks) if args.verify else write(args.tasks)
    for line in lines:
        print(line)
    return 1 if any("DIFFERENT" in line for line in lines) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
