"""``bitsearch tasks``: the built-in tasks."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("tasks", help="list the built-in tasks")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_tasks)


def cmd_tasks(args) -> int:
    from ..tasks import list_tasks

    rows = list_tasks()
    if args.json:
        print(json.dumps([{"name": n, "description": d} for n, d in rows], indent=2))
        return 0
    width = max(len(n) for n, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    print("\na user task: --task package.module:factory (see the README)")
    return 0
