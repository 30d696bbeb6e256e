"""``bitsearch searchers``: the registered searchers and their settings."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("searchers", help="list the searchers and their settings")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_searchers)


def cmd_searchers(args) -> int:
    from .. import searchers
    from ..errors import UserInputError

    rows = []
    for name in searchers.available():
        try:
            cls = searchers.get(name)
            rows.append({"name": name, "description": getattr(cls, "description", ""),
                         "granularities": list(getattr(cls, "granularities", ("layer", "kernel"))),
                         "needs": getattr(cls, "needs", "any"), "settings": dict(getattr(cls, "defaults", {}))})
        except UserInputError as exc:
            rows.append({"name": name, "description": f"(unavailable: {exc})", "granularities": [],
                         "needs": "", "settings": {}})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        grains = "/".join(r["granularities"])
        print(f"{r['name']:<{width}}  {r['description']}  [{grains}]")
        if r["settings"]:
            print(" " * (width + 2) + "settings: " + ", ".join(f"{k}={v!r}" for k, v in r["settings"].items()))
    return 0
